//! Pools of their own whose connections plan their statement as they open.
//!
//! Two reads cover every month partition of `records` (about 85 over seven
//! years, each with its indexes): a disclosure (R18: a person's records,
//! found by the code indexes of migration 0100) and the long reads in
//! sequence order (export, verification: sequence numbers do not prune
//! the months). A new PostgreSQL connection loads each partition's catalog
//! entries and plans such a statement in 35–55 ms; a used one plans it in
//! 8–13 ms; a disclosure then runs in 2 ms (`EXPLAIN (ANALYZE, SUMMARY)` in
//! `psql` on the national bench's 10-million-record store). So each read
//! has a pool whose connections plan its statement once, generically
//! (`plan_cache_mode = force_generic_plan`; disclosures also without
//! sequential scans, [`Read::settings`]), before they are handed out, and
//! keep the plan. A month partition made or dropped (about once a
//! month each, on any node) invalidates the plans; [`keep_planned`] makes
//! them again on the idle connections within seconds, rather than the next
//! read. The pools also keep exports from taking the request path's
//! connections. Re-measure with `kakehashi-bench national`.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;

use crate::error::BrokerError;
use crate::store::records::table::PERSON_RECORDS;

/// A read with a pool of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// One person's records (R18), asked for by people one at a time: two
    /// connections, both planned from the start (with one, a disclosure
    /// right after another found none idle, since sqlx returns a connection
    /// on a task of its own, and planned anew).
    Disclosure,
    /// Exports and verification: one connection planned from the start, up
    /// to four at once (a fifth waits for one, as long as the acquire
    /// timeout, then is refused as `unavailable`).
    Long,
}

impl Read {
    /// The pool's connections' `application_name`, as PostgreSQL's
    /// `pg_stat_activity` shows them.
    pub const fn application_name(self) -> &'static str {
        match self {
            Read::Disclosure => "kakehashi-disclosure",
            Read::Long => "kakehashi-long-reads",
        }
    }

    /// Planner settings of the pool's connections besides the generic plan.
    /// A disclosure must find a person's records through the code indexes
    /// in every month partition. A partition never analyzed yet (a new
    /// month, until autovacuum's first `ANALYZE` about a minute in) looks
    /// empty to the planner, which then plans it a sequential scan, and the
    /// generic plan keeps that scan while the month fills: on a 300 000-row
    /// partition not yet analyzed a disclosure took 53.7 ms so, against 3.1
    /// ms through the code indexes with sequential scans off (PostgreSQL 15
    /// on the 2-vCPU VM of benches/README; R18 asks ≤ 50 ms). Re-measure
    /// with `EXPLAIN (ANALYZE)` of the prepared disclosure right after
    /// filling a new partition, with `enable_seqscan` on and off.
    fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Read::Disclosure => &[
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
            ],
            Read::Long => &[("plan_cache_mode", "force_generic_plan")],
        }
    }

    /// Connections opened at the start and kept, and at most.
    fn connections(self) -> (u32, u32) {
        match self {
            Read::Disclosure => (2, 2),
            Read::Long => (1, 4),
        }
    }

    /// Plans the read's statements by running them on arguments that match
    /// nothing.
    async fn plan(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        match self {
            Read::Disclosure => {
                sqlx::query(PERSON_RECORDS)
                    .bind("")
                    .bind("")
                    .bind(i64::MAX)
                    .execute(conn)
                    .await?;
            }
            Read::Long => super::record_source::plan(conn).await?,
        }
        Ok(())
    }
}

/// Opens `read`'s pool beside `shared` (same server and settings) with its
/// first connections planned.
pub(crate) async fn open(shared: &PgPool, read: Read) -> Result<PgPool, BrokerError> {
    let options = (*shared.connect_options())
        .clone()
        .application_name(read.application_name())
        .options(read.settings().iter().copied());
    let (min, max) = read.connections();
    let pool = PgPoolOptions::new()
        // The reaper opens a planned connection in place of each it retires.
        .min_connections(min)
        .max_connections(max)
        .test_before_acquire(false)
        .acquire_timeout(shared.options().get_acquire_timeout())
        // Every new connection (at open, later ones, and those after a
        // restart of the database) plans before it is handed out.
        .after_connect(move |conn, _| Box::pin(async move { read.plan(conn).await }))
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// How often [`keep_planned`] runs the statements again.
const REPLAN_EVERY: Duration = Duration::from_secs(5);

/// Keeps the pools' plans made until `stop`: every [`REPLAN_EVERY`], each
/// idle connection a pool keeps open runs its read's statements again.
/// PostgreSQL makes a plan that DDL invalidated (a partition made or
/// dropped, ~40 ms on the national store) at its next execution: here,
/// rather than in the next read. A valid plan runs in a few milliseconds.
/// A connection busy with a read is left to it; one the database dropped is
/// found here and replaced.
pub(crate) async fn keep_planned(pools: Vec<(PgPool, Read)>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REPLAN_EVERY) => {}
            _ = stop.changed() => return,
        }
        for (pool, read) in &pools {
            // Held until all are planned, so none is taken twice.
            let mut idle = Vec::new();
            while let Some(conn) = pool.try_acquire() {
                idle.push(conn);
            }
            for conn in &mut idle {
                if let Err(e) = read.plan(conn).await {
                    // A connection the database dropped (a restart) fails
                    // here rather than in a read; the pool then opens a
                    // planned one in its place.
                    tracing::debug!(error = %e, read = ?read, "planned connection not re-planned");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{open, Read};
    use crate::store::records::table::PERSON_RECORDS;

    /// A disclosure's plan reads every month partition through the code
    /// indexes, a month made and never analyzed included: no sequential
    /// scan of records anywhere in it.
    #[tokio::test]
    async fn a_disclosure_reads_a_new_month_through_the_code_indexes_postgres() {
        let Some(shared) =
            crate::store::test_databases::fresh_postgres_pool("disclosure_plan").await
        else {
            return;
        };
        super::super::partitions::ensure(&shared, 209907)
            .await
            .expect("a new month's partitions");
        let pool = open(&shared, Read::Disclosure)
            .await
            .expect("the disclosure pool");
        let plan: Vec<String> =
            sqlx::query_scalar(&format!("EXPLAIN (COSTS OFF) {PERSON_RECORDS}"))
                .bind("city-x")
                .bind("a-code")
                .bind(0_i64)
                .fetch_all(&pool)
                .await
                .expect("the disclosure's plan");
        let plan = plan.join("\n");
        assert!(
            plan.contains("records_y2099m07"),
            "the new month is read:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan"),
            "a sequential scan in the disclosure's plan:\n{plan}"
        );
    }
}
