//! PostgreSQL's month partitions of `records`: made ahead of use, dropped
//! whole by a purge (R15: purging the oldest month is one partition drop).

use crate::error::BrokerError;

/// The month key after `key` (yyyymm).
pub(crate) fn next_month(key: i32) -> i32 {
    if key % 100 >= 12 {
        (key / 100 + 1) * 100 + 1
    } else {
        key + 1
    }
}

/// Partition name for a month key (`records_y2026m11`).
pub(crate) fn partition_name(key: i32) -> String {
    format!("records_y{:04}m{:02}", key / 100, key % 100)
}

/// Month key of a partition name, if it is one of ours.
pub(crate) fn partition_month(name: &str) -> Option<i32> {
    let rest = name.strip_prefix("records_y")?;
    let (year, month) = rest.split_once('m')?;
    if year.len() != 4 || month.len() != 2 {
        return None;
    }
    let (year, month): (i32, i32) = (year.parse().ok()?, month.parse().ok()?);
    (1..=12).contains(&month).then_some(year * 100 + month)
}

/// Storage parameters of every month partition: autovacuum's passes over
/// these append-only rows rest 10 ms per 200 cost units instead of 2 ms, so
/// their page writes do not crowd the record commits' WAL flushes (the
/// reason, with its measurements, is in migration 0101_vacuum_pacing.sql).
const PARTITION_STORAGE: &str = "autovacuum_vacuum_cost_delay = 10";

/// Creates the partitions for `month` and the month after, if missing.
/// Several nodes may race: an advisory lock serialises them. A month whose
/// rows already fell into the default partition cannot get its own
/// partition; that is logged and the rows stay in the default.
pub(crate) async fn ensure(pool: &sqlx::PgPool, month: i32) -> Result<(), BrokerError> {
    for key in [month, next_month(month)] {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('kakehashi.records.partitions'))")
            .execute(&mut *tx)
            .await?;
        // Identifiers cannot be bound; the name is built from two integers.
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF records FOR VALUES FROM ({key}) TO ({}) \
             WITH ({PARTITION_STORAGE})",
            partition_name(key),
            next_month(key)
        );
        match sqlx::query(&sql).execute(&mut *tx).await {
            Ok(_) => tx.commit().await?,
            Err(e) => {
                tracing::warn!(month = key, error = %e, "records partition not created; rows use the default partition");
                tx.rollback().await?;
            }
        }
    }
    Ok(())
}

/// Drops the month partitions a purge up to `cut` empties: only our
/// monthly partitions of past months, and only when every row in them is
/// at or before the cut. Runs inside the purge's transaction.
pub(crate) async fn drop_purged(
    conn: &mut sqlx::PgConnection,
    cut: i64,
) -> Result<(), sqlx::Error> {
    let parts: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'records'::regclass",
    )
    .fetch_all(&mut *conn)
    .await?;
    let current = crate::store::records::table::month_key(time::OffsetDateTime::now_utc());
    for (name,) in parts {
        let Some(month) = partition_month(&name) else {
            continue;
        };
        if month >= current {
            continue;
        }
        let (max,): (Option<i64>,) = sqlx::query_as(&format!("SELECT MAX(seq) FROM {name}"))
            .fetch_one(&mut *conn)
            .await?;
        if max.is_none_or(|m| m <= cut) {
            // The drop waits for every read of `records` under way while
            // the head is held (commits wait too): bounded, a long export
            // fails this step instead, and the next purge tries again.
            sqlx::query("SET LOCAL lock_timeout = '2s'")
                .execute(&mut *conn)
                .await?;
            sqlx::query(&format!("DROP TABLE {name}"))
                .execute(&mut *conn)
                .await?;
            tracing::info!(partition = %name, "records partition dropped by purge");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_keys_and_partition_names() {
        assert_eq!(next_month(202612), 202701);
        assert_eq!(next_month(202601), 202602);
        assert_eq!(partition_name(202603), "records_y2026m03");
        assert_eq!(partition_month("records_y2026m03"), Some(202603));
        assert_eq!(partition_month("records_default"), None);
        assert_eq!(partition_month("records_y2026m13"), None);
        assert_eq!(
            crate::store::records::table::month_key(
                time::macros::datetime!(2026-11-30 23:59:59 UTC)
            ),
            202611
        );
    }
}
