//! The records writer's own SQLite connection, for the common commit.
//!
//! Through sqlx every statement is a hand-off to the connection's worker
//! thread and back, and the multi-row statement is rebuilt (and its binds
//! copied) for every commit: under load that cost the writer and the worker
//! thread about as much CPU as SQLite's own work, most of it waking threads
//! (benches/README.md, "Design decisions in force"). This connection is used on the writer's
//! own thread, synchronously — the thread exists for the writer alone — with
//! one prepared statement per table reused for every row.
//!
//! It is a second writing connection beside sqlx's single writer, so the
//! writer holds that writer (acquired from its pool, unused) for the whole
//! transaction: within the broker there is still one writer at a time, and
//! read-then-write transactions on sqlx's writer never find their snapshot
//! overtaken. Other processes (the command line) wait on SQLite's lock as
//! before.

use std::path::Path;
use std::time::Duration;

use kakehashi_interfaces::audit::Hash;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::store::records::rows::PreparedRow;
use crate::store::records::table::to_i64;

/// Why a commit through this connection did not happen. Either way nothing
/// was written: the transaction is rolled back as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DirectError {
    /// The stored head is not the one this writer committed last (another
    /// process appended or purged): the caller re-reads it under the lock.
    #[error("the records head moved")]
    HeadMoved,
    /// The lookup generation is not the one the rows' answers were read
    /// under: a person code or copy changed since; the caller answers those
    /// queries again.
    #[error("the lookup generation changed")]
    LookupChanged,
    /// SQLite refused or failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file is not in WAL mode, which the store always sets: not the
    /// broker's database, or changed behind its back.
    #[error("the database is in journal mode {0}, not WAL")]
    NotWal(String),
}

/// Moves the head only if it still is the old one; no row changed then
/// means someone else moved it.
const MOVE_HEAD: &str =
    "UPDATE records_head SET seq = ?3, hash = ?4 WHERE id = 1 AND seq = ?1 AND hash = ?2";

/// `head` (`INSERT INTO t (a, b, …) `) completed with one numbered
/// placeholder per column it lists.
fn with_values(head: &str) -> String {
    let columns = head.matches(',').count() + 1;
    let marks: Vec<String> = (1..=columns).map(|i| format!("?{i}")).collect();
    format!("{head}VALUES ({})", marks.join(", "))
}

/// A connection to the broker's SQLite file, owned by the records writer.
pub(crate) struct DirectWriter {
    conn: Connection,
    /// One row of the writer's own column list ([`crate::records::writer`]), so the
    /// two paths cannot disagree on column order.
    insert_record: String,
    insert_result: String,
}

impl DirectWriter {
    /// Opens the database file (already created and migrated by the store)
    /// with the settings of sqlx's writer: WAL, `synchronous = FULL` so a
    /// committed record survives power loss, the same busy timeout.
    pub fn open(path: &Path) -> Result<DirectWriter, DirectError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DirectError::NotWal(mode));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            super::wal::WRITER_AUTOCHECKPOINT,
        )?;
        Ok(DirectWriter {
            conn,
            insert_record: with_values(crate::store::records::INSERT_HEAD_SQLITE),
            insert_result: with_values(crate::store::records::rows::QUERY_INSERT_HEAD),
        })
    }

    /// Appends `rows` (numbered and hashed after `old`) and their results,
    /// and moves the head from `old` to the last row — all or nothing, in
    /// one `BEGIN IMMEDIATE` transaction. With `generation`, only if the
    /// lookup generation is still that number (the rows' answers came from
    /// memory under it), read inside the transaction, as PostgreSQL's
    /// one-statement commit does.
    pub fn commit_at(
        &mut self,
        rows: &[PreparedRow<'_>],
        old: (u64, &Hash),
        generation: Option<i64>,
    ) -> Result<(), DirectError> {
        let Some((_, last_seq, last_hash, ..)) = rows.last() else {
            return Ok(());
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Under the write lock no change can come between this read and
        // the commit: the rows commit only with the answers they describe.
        if let Some(expected) = generation {
            let now: i64 = tx
                .prepare_cached(crate::store::lookup_generation::GENERATION_SQL)?
                .query_row([], |r| r.get(0))?;
            if now != expected {
                return Err(DirectError::LookupChanged);
            }
        }
        // The head first: a stale one is refused before any row is written.
        let moved = tx.prepare_cached(MOVE_HEAD)?.execute(params![
            to_i64(old.0),
            &old.1[..],
            to_i64(*last_seq),
            &last_hash[..],
        ])?;
        if moved != 1 {
            // Dropping the transaction rolls it back.
            return Err(DirectError::HeadMoved);
        }
        {
            let mut record = tx.prepare_cached(&self.insert_record)?;
            let mut result = tx.prepare_cached(&self.insert_result)?;
            for (row, seq, hash, outcome, reason, detail) in rows {
                let d = &row.draft;
                record.execute(params![
                    to_i64(*seq),
                    row.at.as_str(),
                    d.query_id.as_str(),
                    d.permit_id.as_deref(),
                    d.flow_id.as_deref(),
                    d.flow_list_version.map(to_i64),
                    d.procedure.as_deref(),
                    d.requester.as_str(),
                    d.provider.as_ref().map(|p| p.as_str()),
                    d.items.join(" "),
                    d.requester_person_code.as_deref(),
                    row.requester_salt.as_ref().map(|s| &s[..]),
                    d.provider_person_code.as_deref(),
                    row.provider_salt.as_ref().map(|s| &s[..]),
                    *outcome,
                    reason.as_deref(),
                    d.approver.as_deref(),
                    detail.as_deref(),
                    &hash[..],
                ])?;
                if let Some(r) = &row.result {
                    result.execute(params![
                        r.id.as_str(),
                        r.requester.as_str(),
                        r.provider.as_str(),
                        r.status.as_str(),
                        r.permit.as_str(),
                        r.envelope.as_deref(),
                        r.pending_cipher.as_deref(),
                        r.created_at.as_str(),
                        r.expires_at.as_str(),
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::writer::prepare;
    use crate::records::{Outcome, RecordDraft};
    use crate::store::records::rows::NewRow;
    use kakehashi_interfaces::OrgId;

    #[test]
    fn a_statement_has_one_placeholder_per_column() {
        assert_eq!(
            with_values("INSERT INTO t (a, b, c) "),
            "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?3)"
        );
        assert!(with_values(crate::store::records::INSERT_HEAD_SQLITE).ends_with("?18, ?19)"));
        assert!(with_values(crate::store::records::rows::QUERY_INSERT_HEAD).ends_with("?8, ?9)"));
    }

    fn rows(n: usize) -> Vec<NewRow> {
        (0..n)
            .map(|i| {
                let requester = OrgId::new("city-direct").expect("org id");
                let mut draft = RecordDraft::new(format!("q-{i}"), requester, Outcome::Provided);
                draft.items = vec!["income.total".into()];
                draft.requester_person_code = Some(format!("RQ{i:04}"));
                NewRow::new(draft, time::OffsetDateTime::now_utc())
            })
            .collect()
    }

    fn stored(conn: &Connection) -> (i64, i64, Vec<u8>) {
        let count = conn
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
            .expect("count");
        let (seq, hash) = conn
            .query_row("SELECT seq, hash FROM records_head WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .expect("head");
        (count, seq, hash)
    }

    /// A fresh broker database and the writer's own connection to it; the
    /// directory lives as long as the returned guard.
    async fn fresh_direct() -> (tempfile::TempDir, DirectWriter) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.db");
        // The store creates and migrates the file, as in the broker.
        crate::store::SqliteStore::open(&path).await.expect("store");
        let direct = DirectWriter::open(&path).expect("open");
        (dir, direct)
    }

    #[tokio::test]
    async fn commits_after_the_stored_head_and_refuses_a_stale_one_writing_nothing() {
        let (_dir, mut direct) = fresh_direct().await;

        let genesis = (0u64, [0u8; 32]);
        let first = rows(3);
        let refs: Vec<&NewRow> = first.iter().collect();
        let prepared = prepare(&refs, genesis);
        direct
            .commit_at(&prepared.rows, (genesis.0, &genesis.1), None)
            .expect("commit after the genesis head");
        let (count, seq, hash) = stored(&direct.conn);
        assert_eq!((count, seq), (3, 3));
        assert_eq!(
            hash,
            prepared.head.1.to_vec(),
            "the head is the last row's chain hash"
        );

        // Another writer's view: the head moved past genesis, so a commit
        // still expecting genesis must fail whole.
        let second = rows(2);
        let refs: Vec<&NewRow> = second.iter().collect();
        let stale = prepare(&refs, genesis);
        let refused = direct.commit_at(&stale.rows, (genesis.0, &genesis.1), None);
        assert!(
            matches!(refused, Err(DirectError::HeadMoved)),
            "{refused:?}"
        );
        assert_eq!(
            stored(&direct.conn),
            (3, 3, prepared.head.1.to_vec()),
            "nothing written"
        );

        // After the real head it goes on, gap-free.
        let next = prepare(&refs, prepared.head);
        direct
            .commit_at(&next.rows, (prepared.head.0, &prepared.head.1), None)
            .expect("commit after the stored head");
        assert_eq!(stored(&direct.conn), (5, 5, next.head.1.to_vec()));
    }

    /// Rows answered from memory under a lookup generation commit only
    /// while the database still has it; otherwise nothing is written.
    #[tokio::test]
    async fn commits_only_under_the_lookup_generation_its_answers_were_read_under() {
        let (_dir, mut direct) = fresh_direct().await;
        direct
            .conn
            .execute("UPDATE lookup_generation SET n = 7 WHERE id = 1", [])
            .expect("set");

        let genesis = (0u64, [0u8; 32]);
        let batch = rows(2);
        let refs: Vec<&NewRow> = batch.iter().collect();
        let prepared = prepare(&refs, genesis);
        let stale = direct.commit_at(&prepared.rows, (genesis.0, &genesis.1), Some(6));
        assert!(
            matches!(stale, Err(DirectError::LookupChanged)),
            "{stale:?}"
        );
        assert_eq!(
            stored(&direct.conn),
            (0, 0, genesis.1.to_vec()),
            "nothing written"
        );

        direct
            .commit_at(&prepared.rows, (genesis.0, &genesis.1), Some(7))
            .expect("commit under the current generation");
        assert_eq!(stored(&direct.conn), (2, 2, prepared.head.1.to_vec()));
    }
}
