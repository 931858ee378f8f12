//! Which records concern a person (R18 disclosure), on PostgreSQL.
//!
//! PostgreSQL finds them with plain indexes on the codes (migration 0100).
//! The cost is in planning: the statement covers every month partition
//! (about 85 over seven years, each with its indexes), and on the national
//! bench's 10-million-record store PostgreSQL planned it in 35–55 ms on a
//! new connection and 8–13 ms on a used one, against 2 ms to run it
//! (`EXPLAIN (ANALYZE, SUMMARY)` in `psql`). Disclosures therefore run on a
//! small pool of their own whose connections plan the statement once,
//! generically (`plan_cache_mode = force_generic_plan`), as they open, and
//! keep that plan: a disclosure then takes 2–3 ms in the database.
//! Re-measure with `kakehashi-bench national` (its disclosure line).

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::error::BrokerError;
use crate::store::records::table::PERSON_RECORDS;

/// The disclosure pool's connections' `application_name`, as PostgreSQL's
/// `pg_stat_activity` shows them.
pub const APPLICATION_NAME: &str = "kakehashi-disclosure";

/// Connections of the disclosure pool: disclosures are asked for by people,
/// one at a time, not by terminals at load.
const CONNECTIONS: u32 = 2;

/// Opens the disclosure pool beside `shared` (same server and settings) with
/// its connections planned, so no disclosure plans.
pub(crate) async fn open(shared: &PgPool) -> Result<PgPool, BrokerError> {
    let options = (*shared.connect_options())
        .clone()
        .application_name(APPLICATION_NAME)
        .options([("plan_cache_mode", "force_generic_plan")]);
    let pool = PgPoolOptions::new()
        // All of them open, and planned, from the start; the reaper opens
        // a planned one in place of each it retires. With fewer, a
        // disclosure right after another found none idle (a returned
        // connection goes back on a task of its own) and planned anew.
        .min_connections(CONNECTIONS)
        .max_connections(CONNECTIONS)
        .test_before_acquire(false)
        .acquire_timeout(shared.options().get_acquire_timeout())
        // Every new connection (at open, and after a restart of the
        // database) plans before it is handed out; the arguments match
        // nothing, so it reads no row.
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::query(PERSON_RECORDS)
                    .bind("")
                    .bind("")
                    .bind(i64::MAX)
                    .execute(conn)
                    .await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok(pool)
}
