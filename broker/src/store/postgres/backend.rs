//! PostgreSQL's side of [`Backend`]: a database shared by several nodes,
//! records in month partitions, a planner that chooses its own indexes.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;

use super::records::PgCommitter;
use crate::error::BrokerError;
use crate::store::backend::{Backend, CommitTiming, SearchDialect, Stmt};
use crate::store::records::table::to_i64;
use crate::store::records::Committer;
use crate::store::{Pools, Snapshot};

/// The least time between two commits' starts on PostgreSQL unless
/// configured: commits that come sooner wait for the rest of it, so more
/// queries share each WAL flush.
pub const COMMIT_INTERVAL_US: u64 = 1_000;

/// The PostgreSQL backend over its pool.
pub(crate) struct PgBackend<'a>(pub &'a PgPool);

impl PgBackend<'_> {
    /// A statement of `($1 at, $2 after, $3 upto`, then each of `months`,
    /// then `text` when given`)` that answers one sequence number, or none
    /// (no row, or a NULL aggregate).
    async fn seq_between(
        &self,
        sql: &str,
        (at, after, upto): (&str, u64, u64),
        months: &[i32],
        text: Option<&str>,
    ) -> Result<Option<u64>, BrokerError> {
        let mut query = sqlx::query_scalar(sql)
            .bind(at)
            .bind(to_i64(after))
            .bind(to_i64(upto));
        for month in months {
            query = query.bind(*month);
        }
        if let Some(text) = text {
            query = query.bind(text);
        }
        let row: Option<Option<i64>> = query.fetch_optional(self.0).await?;
        Ok(row.flatten().and_then(|s| u64::try_from(s).ok()))
    }
}

/// The month partition key of a fixed-width UTC timestamp (`2026-12-01T…`
/// is 202612); `None` if the text is not one.
fn text_month_key(at: &str) -> Option<i32> {
    let year: i32 = at.get(0..4)?.parse().ok()?;
    let month: i32 = at.get(5..7)?.parse().ok()?;
    Some(year * 100 + month)
}

/// The last month partition that can hold a record from before `at`: the
/// month before when `at` is the first instant of its month (a month's
/// export ends there), else `at`'s own.
fn last_month_before(at: &str) -> Option<i32> {
    let key = text_month_key(at)?;
    if at.get(8..) != Some("01T00:00:00.000000Z") {
        return Some(key);
    }
    Some(if key % 100 == 1 {
        key - 100 + 11
    } else {
        key - 1
    })
}

#[async_trait]
impl Backend for PgBackend<'_> {
    /// Other nodes change orgs too; a change is also announced to every
    /// node, so this is only the bound after a lost announcement.
    fn org_cache_ttl(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn shared(&self) -> Option<std::sync::Arc<dyn crate::store::backend::SharedDatabase>> {
        Some(std::sync::Arc::new(super::shared::PgShared(self.0.clone())))
    }

    /// Twice the statement timeout: a database behind a network pause
    /// answers nothing at all, and the server's own timeout is not heard
    /// until the network is back.
    fn request_bound(&self, statement_timeout: Duration) -> Option<Duration> {
        Some(statement_timeout * 2)
    }

    fn commit_timing(&self) -> CommitTiming {
        CommitTiming {
            delay_us: 0,
            interval_us: COMMIT_INTERVAL_US,
        }
    }

    /// On its own thread the writer gets a small pool of its own: a
    /// connection's socket belongs to the runtime that opened it.
    fn committer(&self, own_thread: bool) -> Box<dyn Committer> {
        let shared = Pools::Postgres(self.0.clone());
        let pool = match own_thread.then(|| shared.own(2)) {
            Some(Pools::Postgres(own)) => own,
            _ => self.0.clone(),
        };
        Box::new(PgCommitter::new(pool))
    }

    /// PostgreSQL checkpoints and vacuums by itself.
    fn spawn_upkeep(
        &self,
        _: tokio::sync::watch::Receiver<bool>,
        _: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        None
    }

    async fn open_records(&self) -> Result<(), BrokerError> {
        let month = crate::store::records::table::month_key(time::OffsetDateTime::now_utc());
        super::partitions::ensure(self.0, month).await
    }

    /// A vacuum of the erased tables takes the dead row versions out of
    /// their pages and indexes now, not when autovacuum comes by (their
    /// space is then free for reuse; the bytes stay until overwritten). It
    /// may take longer than the statement timeout, so it runs on a
    /// connection of its own without one, closed after.
    async fn after_erasure(&self) -> Result<(), BrokerError> {
        let mut conn = self.0.acquire().await?.detach();
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut conn)
            .await?;
        // Not waiting long behind DDL or another vacuum of these tables (a
        // vacuum that cannot start is left to autovacuum).
        sqlx::query("SET lock_timeout = '5s'")
            .execute(&mut conn)
            .await?;
        sqlx::query("VACUUM copies, person_codes, person_facts, persons")
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    async fn snapshot(&self) -> Result<Snapshot, BrokerError> {
        let mut tx = self.0.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(Snapshot::Postgres(tx))
    }

    /// The month of `at` bounds the partitions read: without it the plan
    /// walks every older month's primary key to its end (1.9 s over 10
    /// million records, `kakehashi-bench national`).
    async fn first_seq_at_or_after(
        &self,
        at: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError> {
        self.seq_between(
            "SELECT MIN(seq) FROM records WHERE recorded_at >= $1 AND seq > $2 AND seq <= $3
             AND part_month >= $4",
            (at, after, upto),
            &[text_month_key(at).unwrap_or(i32::MIN)],
            None,
        )
        .await
    }

    async fn first_young_seq(
        &self,
        at: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError> {
        self.seq_between(
            "SELECT seq FROM records WHERE seq > $2 AND seq <= $3 AND recorded_at >= $1
             ORDER BY seq LIMIT 1",
            (at, after, upto),
            &[],
            None,
        )
        .await
    }

    /// A past month's partition whose last record is at or before `upto`:
    /// the purge drops it whole, in one step however many records it holds.
    async fn whole_unit_end(&self, after: u64, upto: u64) -> Result<Option<u64>, BrokerError> {
        let next = after.saturating_add(1);
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM records r JOIN pg_class c ON c.oid = r.tableoid
             WHERE r.seq = $1",
        )
        .bind(to_i64(next))
        .fetch_optional(self.0)
        .await?;
        let Some(month) = holder
            .as_deref()
            .and_then(super::partitions::partition_month)
        else {
            return Ok(None);
        };
        let current = crate::store::records::table::month_key(time::OffsetDateTime::now_utc());
        if month >= current {
            return Ok(None);
        }
        // The name is built from the month key: an identifier cannot be bound.
        let name = super::partitions::partition_name(month);
        let last: Option<i64> = sqlx::query_scalar(&format!("SELECT MAX(seq) FROM {name}"))
            .fetch_one(self.0)
            .await?;
        let Some(end) = last
            .and_then(|s| u64::try_from(s).ok())
            .filter(|&end| end >= next && end <= upto)
        else {
            return Ok(None);
        };
        // Months follow the clock, not the sequence: after a clock set back
        // across a month's end, records of other months lie between, and
        // the step would delete those row by row, unbounded.
        // Outside the month's partition bounds [month, next month), so that
        // partition (all its rows lie in the range) is pruned, not read:
        // each other month costs a probe of its index.
        let others: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM records WHERE seq > $1 AND seq <= $2
                            AND (part_month < $3 OR part_month >= $4))",
        )
        .bind(to_i64(after))
        .bind(to_i64(end))
        .bind(month)
        .bind(super::partitions::next_month(month))
        .fetch_one(self.0)
        .await?;
        Ok((!others).then_some(end))
    }

    /// Only the months that can hold such records are planned and read:
    /// up to the last before `at`, and from that of `since`. Over 89 months
    /// the plan of every older month took 37 ms and reading the next
    /// month's primary key, none of whose records come before `at`, 28 ms
    /// (`EXPLAIN ANALYZE` on the `kakehashi-bench national` store).
    async fn last_seq_before(
        &self,
        at: &str,
        since: Option<&str>,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, BrokerError> {
        // Without `since`, every month up to the last and every time: an
        // empty text is before every stored one.
        self.seq_between(
            "SELECT MAX(seq) FROM records WHERE recorded_at < $1 AND seq > $2
             AND seq <= $3 AND part_month <= $4 AND part_month >= $5
             AND recorded_at >= $6",
            (at, after, upto),
            &[
                last_month_before(at).unwrap_or(i32::MAX),
                since.and_then(text_month_key).unwrap_or(i32::MIN),
            ],
            Some(since.unwrap_or("")),
        )
        .await
    }

    fn search_dialect(&self) -> SearchDialect {
        SearchDialect {
            names_indexes: false,
            month_partitions: true,
            // PostgreSQL takes no index hints.
            index_hint: |_| String::new(),
        }
    }

    async fn explain(&self, st: &Stmt) -> Result<Vec<String>, BrokerError> {
        let sql = format!("EXPLAIN {}", st.sql);
        let rows: Vec<(String,)> = crate::store::fetch_all(
            &Pools::Postgres(self.0.clone()),
            &Stmt {
                sql,
                args: st.args.clone(),
            },
        )
        .await?;
        Ok(rows.into_iter().map(|(line,)| line).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_month_before_an_instant_skips_a_month_that_only_begins_there() {
        assert_eq!(
            last_month_before("2026-01-01T00:00:00.000000Z"),
            Some(202512)
        );
        assert_eq!(
            last_month_before("2026-03-01T00:00:00.000000Z"),
            Some(202602)
        );
        assert_eq!(
            last_month_before("2026-03-01T00:00:00.000001Z"),
            Some(202603)
        );
        assert_eq!(
            last_month_before("2026-03-17T09:30:00.000000Z"),
            Some(202603)
        );
        assert_eq!(last_month_before("no time"), None);
    }

    #[test]
    fn a_stored_timestamp_names_its_partition() {
        let at = crate::store::timestamp(time::macros::datetime!(2026-11-30 23:59:59 UTC));
        assert_eq!(text_month_key(&at), Some(202611));
        assert_eq!(text_month_key("2019-01-01"), Some(201901));
        assert_eq!(text_month_key("yesterday"), None);
        assert_eq!(text_month_key(""), None);
    }
}
