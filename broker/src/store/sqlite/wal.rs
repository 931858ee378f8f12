//! SQLite WAL checkpoints off the commit path.
//!
//! By default SQLite checkpoints inside the commit that grows the WAL past
//! 1,000 pages: that commit then copies ~4 MB into the database file and
//! fsyncs it while every query waiting on it waits too — the tail of the
//! query latency. Here a connection of its own checkpoints in the background
//! (`PASSIVE`: it never blocks the writer or readers), and the writer's own
//! automatic checkpoint stays only as a safety net at [`WRITER_AUTOCHECKPOINT`].

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

/// WAL pages (4 KiB) at which the writer checkpoints by itself, should the
/// background task fall behind or not run (command-line tools).
pub const WRITER_AUTOCHECKPOINT: u32 = 16_384;

/// Checkpoints every `every` until `stop` changes.
pub(crate) async fn checkpoint_task(
    options: SqliteConnectOptions,
    mut stop: watch::Receiver<bool>,
    every: Duration,
) {
    let mut conn = match options.connect().await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::error!(error = %e, "WAL checkpointer could not connect; the writer checkpoints itself");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
        // Returns (busy, frames in the WAL, frames copied); a busy or
        // partial checkpoint simply continues at the next tick.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
        }
    }
    let _ = conn.close().await;
}
