//! Provision records (R14–R18, R23) against real SQLite files and real
//! PostgreSQL databases: tamper evidence, export, purge, group commit,
//! disclosure, and a kill -9 in the middle of appending.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kakehashi_broker::cli::records::{ExportArgs, RecordsCommand};
use kakehashi_broker::records::{
    self, ExportFormat, Outcome, RecordDraft, RecordLog, RecordsConfig, Verdict,
};
use kakehashi_broker::store::{self, Pools, Store};
use kakehashi_interfaces::audit::{self, FailureKind};
use kakehashi_interfaces::{ErrorCode, OrgId};
use kakehashi_tests::{both_backends, sql_column, storage_config, Backend};
use tempfile::TempDir;

/// A store, its key directory and a broker.toml naming both.
struct Env {
    dir: TempDir,
    store: Arc<dyn Store>,
    config_path: PathBuf,
}

impl Env {
    async fn new(backend: Backend) -> Result<Option<Env>> {
        let dir = tempfile::tempdir()?;
        let Some(storage) = storage_config(backend, dir.path()).await? else {
            return Ok(None);
        };
        let storage_line = match (&storage.sqlite, &storage.postgres_url) {
            (Some(path), _) => format!("sqlite = {:?}", path.display().to_string()),
            (_, Some(url)) => format!("postgres_url = {url:?}"),
            _ => bail!("no storage"),
        };
        let config_path = dir.path().join("broker.toml");
        std::fs::write(
            &config_path,
            format!(
                "[listen]\naddress = \"127.0.0.1:0\"\n[tls]\ncert = \"none.crt\"\nkey = \"none.key\"\nclient_ca = [\"none.crt\"]\n[storage]\n{storage_line}\n[keys]\ndir = {:?}\n",
                dir.path().join("keys").display().to_string()
            ),
        )?;
        let store = store::open(&storage).await?;
        Ok(Some(Env {
            dir,
            store,
            config_path,
        }))
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn pools(&self) -> Pools {
        self.store.pools()
    }

    /// A log whose sealer only signs when told (tests decide where checkpoints fall).
    async fn log(&self) -> Result<Arc<RecordLog>> {
        Ok(RecordLog::open(self.pools(), &self.keys(), quiet()).await?)
    }

    async fn verify(&self) -> Result<Verdict> {
        let keys = kakehashi_broker::keys::trusted_keys(&self.keys())?;
        Ok(records::verify_store(&self.pools(), &keys).await?)
    }

    async fn exec(&self, sql: &str) -> Result<()> {
        kakehashi_tests::sql_exec(&self.pools(), sql).await
    }

    async fn count(&self, sql: &str) -> Result<i64> {
        kakehashi_tests::sql_count(&self.pools(), sql).await
    }

    async fn seqs(&self) -> Result<Vec<i64>> {
        sql_column(&self.pools(), "SELECT seq FROM records ORDER BY seq").await
    }
}

fn quiet() -> RecordsConfig {
    RecordsConfig {
        checkpoint_interval_ms: 3_600_000,
        purge_interval_secs: 0,
        person_index_interval_ms: 0,
        ..RecordsConfig::default()
    }
}

fn org(id: &str) -> OrgId {
    OrgId::new(id).expect("valid org id")
}

/// A record of query `i`: saitama asks kawagoe, or kawaguchi asks the pension agency.
fn draft(i: u64) -> RecordDraft {
    let (requester, provider) = if i % 3 == 2 {
        ("city-kawaguchi", "agency-pension")
    } else {
        ("city-saitama", "city-kawagoe")
    };
    let outcome = match i % 6 {
        0 => Outcome::Provided,
        1 => Outcome::Denied {
            reason: "not_on_flow_list".into(),
        },
        2 => Outcome::Pending,
        3 => Outcome::Approved,
        4 => Outcome::Rejected,
        _ => Outcome::Expired,
    };
    RecordDraft {
        query_id: format!("q-{i:05}"),
        permit_id: Some(format!("p-{i:05}")),
        flow_id: Some(
            if i.is_multiple_of(2) {
                "F0001"
            } else {
                "F0002"
            }
            .into(),
        ),
        flow_list_version: Some(3),
        procedure: Some("child_allowance".into()),
        requester: org(requester),
        provider: Some(org(provider)),
        items: vec!["income.total".into(), "tax.resident".into()],
        requester_person_code: Some(format!("RQSECRET{i:05}")),
        provider_person_code: Some(format!("PVSECRET{i:05}")),
        approver: matches!(outcome, Outcome::Approved | Outcome::Rejected)
            .then(|| "staff-kawagoe-1".into()),
        outcome,
    }
}

/// 20 records with checkpoints at 10 and 20; the log is closed afterwards.
async fn sealed_twenty(env: &Env) -> Result<()> {
    let log = env.log().await?;
    for i in 1..=20 {
        log.append(draft(i)).await?;
        if i == 10 {
            assert_eq!(log.seal().await?, Some(10));
        }
    }
    log.close().await;
    match env.verify().await? {
        Verdict::Intact(s) => {
            assert_eq!((s.records, s.checkpoints, s.sealed_seq), (20, 2, 20));
        }
        Verdict::Broken(f) => bail!("fresh chain broken: {f}"),
    }
    Ok(())
}

async fn expect_broken(env: &Env, seq: u64) -> Result<FailureKind> {
    match env.verify().await? {
        Verdict::Broken(f) => {
            assert_eq!(f.seq, seq, "wrong sequence named: {f}");
            Ok(f.kind)
        }
        Verdict::Intact(s) => bail!("tampering not detected: {s:?}"),
    }
}

// ---------------------------------------------------------------- tampering

async fn edited_field_is_named(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    sealed_twenty(&env).await?;
    env.exec("UPDATE records SET items = 'income.total' WHERE seq = 7")
        .await?;
    assert_eq!(expect_broken(&env, 7).await?, FailureKind::HashMismatch);
    // The CLI says so too, and fails.
    let cli = kakehashi_broker::cli::records::run(
        Some(&env.config_path),
        RecordsCommand::Verify {
            json: false,
            checkpoint_log: None,
            tsa_cert: None,
        },
    )
    .await;
    assert!(cli.is_err(), "records verify passed a tampered store");
    Ok(())
}
both_backends!(edited_field_is_named: edit_sqlite, edit_postgres);

async fn deleted_row_is_named(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    sealed_twenty(&env).await?;
    env.exec("DELETE FROM records WHERE seq = 5").await?;
    assert_eq!(expect_broken(&env, 5).await?, FailureKind::Missing);
    Ok(())
}
both_backends!(deleted_row_is_named: delete_sqlite, delete_postgres);

/// The sealer re-checks the chain from the head it signed last before it
/// signs: a row edited before its checkpoint makes it refuse (and verify
/// names it), and so does a rewritten head row.
async fn edits_before_the_checkpoint_are_not_blessed(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    for i in 1..=8 {
        log.append(draft(i)).await?;
    }
    env.exec("UPDATE records SET items = 'income.total' WHERE seq = 6")
        .await?;
    // The sealer re-checks the chain from its last signed head (here: the
    // start) before signing, so it refuses and names the edited record.
    let refused = log.seal().await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("fail verification at sequence 6")),
        "sealed a chain with an edited record: {refused:?}"
    );
    assert_eq!(expect_broken(&env, 6).await?, FailureKind::HashMismatch);

    log.append(draft(9)).await?;
    env.exec("UPDATE records_head SET hash = records.hash FROM records WHERE records.seq = 3 AND records_head.id = 1")
        .await?;
    let refused = log.seal().await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("differs from what was committed")),
        "sealed a head that was rewritten behind the writer"
    );
    log.close().await;
    Ok(())
}
both_backends!(edits_before_the_checkpoint_are_not_blessed: unblessed_sqlite, unblessed_postgres);

async fn inserted_row_is_named(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    sealed_twenty(&env).await?;
    // Make room at 12 (as an attacker must: sequences are gap-free) and put a
    // copy of record 3 there.
    let columns = "recorded_at, query_id, permit_id, flow_id, flow_list_version, procedure_code, \
         requester, provider, items, requester_code, requester_salt, provider_code, provider_salt, \
         outcome, reason, approver, detail, hash";
    let columns = match backend {
        Backend::Sqlite => columns.to_string(),
        Backend::Postgres => format!("{columns}, part_month"),
    };
    env.exec(&format!(
        "UPDATE records SET seq = -seq WHERE seq >= 12;
         UPDATE records SET seq = 1 - seq WHERE seq < 0;
         INSERT INTO records (seq, {columns}) SELECT 12, {columns} FROM records WHERE seq = 3;
         UPDATE records_head SET seq = 21;"
    ))
    .await?;
    assert_eq!(env.seqs().await?, (1..=21).collect::<Vec<_>>());
    assert_eq!(expect_broken(&env, 12).await?, FailureKind::HashMismatch);
    Ok(())
}
both_backends!(inserted_row_is_named: insert_sqlite, insert_postgres);

/// PostgreSQL's key includes the partition month, so a second row with the
/// same sequence can be stored; verification still names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicated_row_is_named_postgres() -> Result<()> {
    let Some(env) = Env::new(Backend::Postgres).await? else {
        return Ok(());
    };
    sealed_twenty(&env).await?;
    env.exec(
        "INSERT INTO records (seq, part_month, recorded_at, query_id, permit_id, flow_id, \
         flow_list_version, procedure_code, requester, provider, items, requester_code, \
         requester_salt, provider_code, provider_salt, outcome, reason, approver, detail, hash) \
         SELECT seq, 190001, recorded_at, query_id, permit_id, flow_id, flow_list_version, \
         procedure_code, requester, provider, items, requester_code, requester_salt, \
         provider_code, provider_salt, outcome, reason, approver, detail, hash \
         FROM records WHERE seq = 5",
    )
    .await?;
    assert_eq!(expect_broken(&env, 5).await?, FailureKind::Unexpected);
    Ok(())
}

/// Autovacuum passes over the tables every answer writes to are paced
/// (migration 0101): on `queries`, on the default partition, and on every
/// month partition the writer creates, for past months as for this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autovacuum_is_paced_on_the_append_only_tables_postgres() -> Result<()> {
    let Some(env) = Env::new(Backend::Postgres).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    log.append_with_clock(draft(1), at("2018-01-15T10:00:00Z"))
        .await?;
    log.append(draft(2)).await?;
    let paced = |tables: &str| {
        format!(
            "SELECT COUNT(*) FROM pg_class WHERE relname IN ({tables}) \
             AND 'autovacuum_vacuum_cost_delay=10' = ANY(reloptions)"
        )
    };
    assert_eq!(
        env.count(&paced("'queries', 'records_default'")).await?,
        2,
        "queries and the default partition keep autovacuum's default pace"
    );
    // The 2018 month, the month after it, this month and the next.
    let this = time::OffsetDateTime::now_utc();
    let next = this
        .replace_day(1)?
        .saturating_add(time::Duration::days(32));
    let months = format!(
        "'records_y2018m01', 'records_y2018m02', 'records_y{}m{:02}', 'records_y{}m{:02}'",
        this.year(),
        u8::from(this.month()),
        next.year(),
        u8::from(next.month())
    );
    assert_eq!(
        env.count(&paced(&months)).await?,
        4,
        "a month partition was created without the pacing"
    );
    // A database from before the migration: its partitions were made without
    // the setting, and the migration paces them.
    env.exec(
        "CREATE TABLE records_y2019m01 PARTITION OF records FOR VALUES FROM (201901) TO (201902)",
    )
    .await?;
    assert_eq!(env.count(&paced("'records_y2019m01'")).await?, 0);
    env.exec(include_str!(
        "../../broker/migrations/postgres/0101_vacuum_pacing.sql"
    ))
    .await?;
    assert_eq!(
        env.count(&paced("'records_y2019m01'")).await?,
        1,
        "the migration left an older partition at autovacuum's default pace"
    );
    Ok(())
}

async fn swapped_rows_are_named(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    sealed_twenty(&env).await?;
    env.exec(
        "UPDATE records SET seq = -1 WHERE seq = 4;
         UPDATE records SET seq = 4 WHERE seq = 9;
         UPDATE records SET seq = 9 WHERE seq = -1;",
    )
    .await?;
    assert_eq!(expect_broken(&env, 4).await?, FailureKind::HashMismatch);
    Ok(())
}
both_backends!(swapped_rows_are_named: swap_sqlite, swap_postgres);

async fn truncated_tail_is_named(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    sealed_twenty(&env).await?;
    // A careful attacker also rewinds the head; the checkpoint at 20 remains.
    env.exec(
        "DELETE FROM records WHERE seq > 15;
         UPDATE records_head SET seq = 15, hash = (SELECT hash FROM records WHERE seq = 15);",
    )
    .await?;
    assert_eq!(
        expect_broken(&env, 16).await?,
        FailureKind::Truncated { checkpoint: 20 }
    );
    Ok(())
}
both_backends!(truncated_tail_is_named: truncate_sqlite, truncate_postgres);

async fn recomputed_chain_is_caught_by_the_checkpoint(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    sealed_twenty(&env).await?;
    // Rewrite record 14 and every stored hash after it, consistently: only
    // the signed checkpoint at 20 can tell, and it names the unproven range.
    let stored13: Vec<u8> = sql_column(&env.pools(), "SELECT hash FROM records WHERE seq = 13")
        .await?
        .into_iter()
        .next()
        .context("record 13")?;
    let mut prev: audit::Hash = stored13.as_slice().try_into()?;
    // Recompute the rest from an export of the store itself (no codes needed:
    // the commitments are in the bundle).
    let out = env.dir.path().join("all.jsonl");
    export(&env, ExportFormat::Jsonl, &out, None, None).await?;
    let bundle = std::fs::read_to_string(audit::bundle_path_for(&out))?;
    let data = std::fs::read_to_string(&out)?;
    let commitments: Vec<audit::BundleLine> = bundle
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let mut script = String::new();
    for (line, entry) in data.lines().zip(
        commitments
            .iter()
            .filter(|l| matches!(l, audit::BundleLine::Row { .. })),
    ) {
        let row: audit::ExportRow = serde_json::from_str(line)?;
        if row.seq <= 13 || row.seq > 20 {
            continue;
        }
        let audit::BundleLine::Row { rc, pc, .. } = entry else {
            unreachable!()
        };
        let hash = |h: &Option<String>| -> Result<Option<audit::Hash>> {
            h.as_deref().map(hex_to_hash).transpose()
        };
        let mut record = row
            .into_record(hash(rc)?, hash(pc)?)
            .map_err(anyhow::Error::msg)?;
        if record.seq == 14 {
            record.items = vec!["income.total".into()];
            script.push_str("UPDATE records SET items = 'income.total' WHERE seq = 14;\n");
        }
        prev = audit::chain_hash(&prev, &record.leaf_hash());
        let hex: String = prev.iter().map(|b| format!("{b:02x}")).collect();
        script.push_str(&match backend {
            Backend::Sqlite => format!(
                "UPDATE records SET hash = X'{hex}' WHERE seq = {};\n",
                record.seq
            ),
            Backend::Postgres => format!(
                "UPDATE records SET hash = decode('{hex}', 'hex') WHERE seq = {};\n",
                record.seq
            ),
        });
    }
    env.exec(&script).await?;
    assert_eq!(
        expect_broken(&env, 11).await?,
        FailureKind::CheckpointMismatch { checkpoint: 20 }
    );
    Ok(())
}
both_backends!(recomputed_chain_is_caught_by_the_checkpoint: recompute_sqlite, recompute_postgres);

fn hex_to_hash(h: &str) -> Result<audit::Hash> {
    let bytes: Vec<u8> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16))
        .collect::<Result<_, _>>()?;
    Ok(bytes.as_slice().try_into()?)
}

// ------------------------------------------------------------------- export

async fn export(
    env: &Env,
    format: ExportFormat,
    out: &Path,
    org: Option<&str>,
    person: Option<&str>,
) -> Result<()> {
    kakehashi_broker::cli::records::run(
        Some(&env.config_path),
        RecordsCommand::Export(ExportArgs {
            from: None,
            to: None,
            org: org.map(str::to_string),
            flow: None,
            person: person.map(str::to_string),
            format,
            out: out.to_path_buf(),
            actor: Some("auditor-sato".into()),
        }),
    )
    .await?;
    Ok(())
}

async fn exports_hide_codes_and_verify_offline(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    for i in 1..=30 {
        log.append(draft(i)).await?;
    }
    log.close().await;

    // Everything, as CSV for Excel.
    let csv = env.dir.path().join("all.csv");
    export(&env, ExportFormat::Csv, &csv, None, None).await?;
    let bytes = std::fs::read(&csv)?;
    assert!(
        bytes.starts_with(b"\xEF\xBB\xBF\"seq\",\"at\""),
        "no BOM/header"
    );
    let text = String::from_utf8(bytes.clone())?;
    let bundle = std::fs::read_to_string(audit::bundle_path_for(&csv))?;
    assert!(!text.contains("SECRET"), "a person code was exported");
    assert!(!bundle.contains("SECRET"), "a person code is in the bundle");
    assert_eq!(text.lines().count(), 31);
    let report = audit::verify_export_files(&csv, None, &[])?;
    assert_eq!(report.rows, 30);
    // The CLI agrees (no config needed).
    let done = kakehashi_broker::cli::records::run(
        None,
        RecordsCommand::VerifyExport {
            file: csv.clone(),
            bundle: None,
            trusted_keys: Vec::new(),
            key_ids: report.key_ids.clone(),
            tsa_cert: None,
        },
    )
    .await?;
    assert_eq!(done, kakehashi_broker::cli::records::Done::Ok);

    // One changed byte in one line fails verification.
    let line_start = text
        .match_indices("\r\n")
        .nth(4)
        .map(|(i, _)| i + 2)
        .context("line 5")?;
    let at = line_start
        + text[line_start..]
            .find("city-kawagoe")
            .context("provider")?;
    let mut changed = bytes.clone();
    changed[at + 5] = b'K';
    let tampered = env.dir.path().join("tampered.csv");
    std::fs::write(&tampered, &changed)?;
    std::fs::copy(
        audit::bundle_path_for(&csv),
        audit::bundle_path_for(&tampered),
    )?;
    let err =
        audit::verify_export_files(&tampered, None, &[]).expect_err("changed export verified");
    assert!(matches!(err, audit::ExportError::Chain(_)), "{err}");
    // Also a byte that no canonical field sees (an empty last field unquoted).
    assert!(bytes.ends_with(b",\"\"\r\n"));
    let mut restyled = bytes[..bytes.len() - 4].to_vec();
    restyled.extend_from_slice(b"\r\n");
    std::fs::write(&tampered, &restyled)?;
    assert!(matches!(
        audit::verify_export_files(&tampered, None, &[]),
        Err(audit::ExportError::DataHash)
    ));
    // A removed line fails too.
    let without: String = text
        .split_inclusive("\r\n")
        .enumerate()
        .filter(|(i, _)| *i != 7)
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&tampered, without)?;
    assert!(matches!(
        audit::verify_export_files(&tampered, None, &[]),
        Err(audit::ExportError::Data(_))
    ));

    // By org, as JSON Lines: only that org's records.
    let jsonl = env.dir.path().join("kawaguchi.jsonl");
    export(
        &env,
        ExportFormat::Jsonl,
        &jsonl,
        Some("city-kawaguchi"),
        None,
    )
    .await?;
    let rows: Vec<audit::ExportRow> = std::fs::read_to_string(&jsonl)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rows.len(), 10);
    assert!(rows.iter().all(
        |r| r.requester == "city-kawaguchi" || r.provider.as_deref() == Some("city-kawaguchi")
    ));
    let report = audit::verify_export_files(&jsonl, None, &[])?;
    assert_eq!(report.rows, 10);
    assert!(report.sealed_by.is_some(), "the broker sealed the export");
    // Whoever holds it withholds one of the org's records (its row turned
    // into a leaf, count and data hash fixed): the chain still verifies,
    // the seal does not.
    let withheld = env.dir.path().join("withheld.jsonl");
    kakehashi_tests::audit::withhold_jsonl_row(&jsonl, &withheld, rows[3].seq, true)?;
    let err = audit::verify_export_files(&withheld, None, &[])
        .expect_err("an export with a withheld record verified");
    assert!(
        err.to_string().contains("changed after it was sealed"),
        "{err}"
    );
    // Without the seal nothing shows it but that it is unsealed.
    kakehashi_tests::audit::withhold_jsonl_row(&jsonl, &withheld, rows[3].seq, false)?;
    let report = audit::verify_export_files(&withheld, None, &[])?;
    assert_eq!((report.rows, report.sealed_by), (9, None));

    // By person: selected by a code, which is printed nowhere.
    let person = env.dir.path().join("person.jsonl");
    export(
        &env,
        ExportFormat::Jsonl,
        &person,
        None,
        Some("PVSECRET00017"),
    )
    .await?;
    let text = std::fs::read_to_string(&person)?;
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"q-00017\"") && !text.contains("SECRET"));
    assert!(!std::fs::read_to_string(audit::bundle_path_for(&person))?.contains("SECRET"));
    audit::verify_export_files(&person, None, &[])?;

    // Every export was itself recorded, with its actor, and the chain holds.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM records WHERE outcome = 'export'")
            .await?,
        3
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM records WHERE outcome = 'export' AND detail LIKE '%auditor-sato%' AND detail NOT LIKE '%SECRET%'")
            .await?,
        3
    );
    assert!(env.verify().await?.is_intact());
    // Exports never overwrite a file.
    assert!(export(&env, ExportFormat::Csv, &csv, None, None)
        .await
        .is_err());
    Ok(())
}
both_backends!(exports_hide_codes_and_verify_offline: export_sqlite, export_postgres);

/// Appends the records of `range`, 500 at a time concurrently, and seals
/// after every 7 000th, so segments end inside a reading slice.
async fn append_many(log: &Arc<RecordLog>, range: std::ops::RangeInclusive<u64>) -> Result<()> {
    let mut appends = tokio::task::JoinSet::new();
    for i in range {
        let appender = log.clone();
        appends.spawn(async move { appender.append(draft(i)).await });
        if i % 500 == 0 {
            while let Some(done) = appends.join_next().await {
                done??;
            }
            if i % 7_000 == 0 {
                log.seal().await?;
            }
        }
    }
    while let Some(done) = appends.join_next().await {
        done??;
    }
    Ok(())
}

/// Records read in more than one slice (PostgreSQL reads 16 384 sequence
/// numbers per statement), several checkpoints among them, and a record
/// with details (an earlier export) that the export writes another way.
async fn a_long_export_reads_in_slices_and_verifies(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    append_many(&log, 1..=20_000).await?;
    log.close().await;
    let early = env.dir.path().join("early.csv");
    export(&env, ExportFormat::Csv, &early, Some("city-none"), None).await?;
    let log = env.log().await?;
    append_many(&log, 20_001..=40_000).await?;
    log.close().await;
    let total = 40_001;

    // Everything, as CSV: every row proven against a signed checkpoint.
    let all = env.dir.path().join("all.csv");
    export(&env, ExportFormat::Csv, &all, None, None).await?;
    let report = audit::verify_export_files(&all, None, &[])?;
    assert_eq!(report.rows, total);
    // One run of exported records: one segment, carrying every checkpoint.
    assert_eq!(report.segments, 1);
    assert!(
        report.checkpoints >= 5,
        "{} checkpoints",
        report.checkpoints
    );
    let text = std::fs::read_to_string(&all)?;
    assert_eq!(text.lines().count() as u64, total + 1);
    assert!(
        text.contains("\"export\""),
        "the export record is not exported"
    );
    assert!(!text.contains("SECRET"), "a person code was exported");

    // One org's records, as CSV: the others go in the bundle as leaves.
    let one = env.dir.path().join("kawaguchi.csv");
    export(&env, ExportFormat::Csv, &one, Some("city-kawaguchi"), None).await?;
    let report = audit::verify_export_files(&one, None, &[])?;
    assert_eq!(
        report.rows,
        (1..=40_000u64).filter(|i| i % 3 == 2).count() as u64
    );
    // Every checkpoint after its first record goes along: closing a segment
    // or inside one.
    assert!(
        report.checkpoints >= 5,
        "{} checkpoints",
        report.checkpoints
    );
    let bundle = std::fs::read_to_string(audit::bundle_path_for(&one))?;
    assert!(bundle.contains("\"type\":\"leaf\""));
    assert!(env.verify().await?.is_intact());
    Ok(())
}
both_backends!(a_long_export_reads_in_slices_and_verifies: long_export_sqlite, long_export_postgres);

/// An auditor's CSV export of `filter` into the test's directory.
fn csv_request(env: &Env, name: &str, filter: records::ExportFilter) -> records::ExportRequest {
    records::ExportRequest {
        filter,
        format: ExportFormat::Csv,
        out: env.dir.path().join(name),
        actor: "auditor-sato".into(),
    }
}

/// A period that ended before the latest checkpoint is proven by the
/// checkpoints already signed: its export signs none. A period reaching
/// past the latest checkpoint seals the head first. Both verify offline.
async fn a_past_period_is_proven_by_the_checkpoints_already_signed(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    for i in 1..=30 {
        log.append_with_clock(draft(i), at("2025-01-10T10:00:00Z"))
            .await?;
    }
    log.seal().await?;
    for i in 31..=35 {
        log.append(draft(i)).await?;
    }
    let checkpoints = "SELECT COUNT(*) FROM record_checkpoints";
    let signed = env.count(checkpoints).await?;
    let export = |name: &str, to: time::OffsetDateTime| {
        let filter = records::ExportFilter {
            from: Some(at("2025-01-01T00:00:00Z")),
            to: Some(to),
            ..records::ExportFilter::default()
        };
        csv_request(&env, name, filter)
    };

    let january = export("january.csv", at("2025-02-01T00:00:00Z"));
    let summary = log.export(&january).await?;
    assert_eq!((summary.rows, summary.sealed_seq), (30, 30));
    assert_eq!(
        env.count(checkpoints).await?,
        signed,
        "a checkpoint was signed"
    );
    assert_eq!(
        audit::verify_export_files(&january.out, None, &[])?.rows,
        30
    );

    // To tomorrow: the five records after the checkpoint and the record of
    // the first export are sealed before they are exported.
    let tomorrow = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    let until_now = export("until-now.csv", tomorrow);
    let summary = log.export(&until_now).await?;
    assert_eq!(summary.rows, 36);
    assert!(summary.sealed_seq >= 36, "sealed at {}", summary.sealed_seq);
    assert_eq!(env.count(checkpoints).await?, signed + 1);
    assert_eq!(
        audit::verify_export_files(&until_now.out, None, &[])?.rows,
        36
    );
    log.close().await;
    assert!(env.verify().await?.is_intact());
    Ok(())
}
both_backends!(
    a_past_period_is_proven_by_the_checkpoints_already_signed: past_period_sqlite,
    past_period_postgres
);

/// A store that signs a checkpoint after every record (a quiet union's,
/// where queries come seconds apart): a run of exported records is one
/// segment, proven by the checkpoint where the run ends and carrying those
/// inside it, and a run of other records ends a segment at the first
/// checkpoint.
async fn a_checkpoint_per_record_leaves_one_segment_per_run(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    for i in 1..=60 {
        log.append(draft(i)).await?;
        log.seal().await?;
    }
    assert_eq!(
        env.count("SELECT COUNT(*) FROM record_checkpoints").await?,
        60
    );
    let request = |name: &str, of: Option<&str>| {
        let filter = records::ExportFilter {
            org: of.map(org),
            ..records::ExportFilter::default()
        };
        csv_request(&env, name, filter)
    };
    let all = request("all.csv", None);
    let summary = log.export(&all).await?;
    assert_eq!((summary.rows, summary.segments), (60, 1));
    let report = audit::verify_export_files(&all.out, None, &[])?;
    assert_eq!((report.rows, report.segments), (60, 1));
    // Every checkpoint goes along, for its time.
    let bundle = std::fs::read_to_string(audit::bundle_path_for(&all.out))?;
    assert_eq!(bundle.matches("\"type\":\"checkpoint\"").count(), 60);
    assert_eq!(report.checkpoints, 60);

    // Kawaguchi asks every third query: each of its records is a run of
    // its own, ended by the checkpoint right after it.
    let one = request("kawaguchi.csv", Some("city-kawaguchi"));
    let summary = log.export(&one).await?;
    assert_eq!((summary.rows, summary.segments), (20, 20));
    let report = audit::verify_export_files(&one.out, None, &[])?;
    assert_eq!((report.rows, report.segments), (20, 20));
    let bundle = std::fs::read_to_string(audit::bundle_path_for(&one.out))?;
    assert!(
        !bundle.contains("\"type\":\"leaf\""),
        "a leaf where a checkpoint ends the run"
    );
    log.close().await;
    Ok(())
}
both_backends!(
    a_checkpoint_per_record_leaves_one_segment_per_run: dense_checkpoints_sqlite,
    dense_checkpoints_postgres
);

// -------------------------------------------------------------------- purge

fn at(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .expect("valid time")
}

async fn purge_leaves_a_verifiable_rest(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    // Ten records from early 2018 (long expired), three from now.
    for i in 1..=6 {
        log.append_with_clock(draft(i), at("2018-01-15T10:00:00Z"))
            .await?;
    }
    log.seal().await?;
    for i in 7..=10 {
        log.append_with_clock(draft(i), at("2018-02-10T10:00:00Z"))
            .await?;
    }
    for i in 11..=13 {
        log.append(draft(i)).await?;
    }
    if backend == Backend::Postgres {
        assert_eq!(
            env.count("SELECT COUNT(*) FROM pg_class WHERE relname IN ('records_y2018m01', 'records_y2018m02')")
                .await?,
            2
        );
    }

    // Not inside the retention period.
    let refused = log
        .purge(time::OffsetDateTime::now_utc(), "ops-tanaka")
        .await
        .expect_err("purged young records");
    assert_eq!(refused.code(), ErrorCode::InvalidInput);

    let report = log.purge(at("2018-06-01T00:00:00Z"), "ops-tanaka").await?;
    assert_eq!(
        (report.first_seq, report.cut_seq, report.count),
        (1, 10, 10)
    );
    // One step on SQLite; on PostgreSQL one per month partition dropped.
    let (steps, last) = match backend {
        Backend::Sqlite => (1, 14),
        Backend::Postgres => (2, 15),
    };
    assert_eq!(
        (report.purge_records, report.purge_record_seq),
        (steps, Some(last))
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM records WHERE seq <= 10")
            .await?,
        0
    );
    assert_eq!(
        env.count(&format!("SELECT COUNT(*) FROM records WHERE seq = {last} AND outcome = 'purge' AND detail LIKE '%\"cut_seq\":10%'"))
            .await?,
        1
    );
    if backend == Backend::Postgres {
        assert_eq!(
            env.count("SELECT COUNT(*) FROM pg_class WHERE relname LIKE 'records_y2018m%'")
                .await?,
            0,
            "expired partitions were not dropped"
        );
    }
    match env.verify().await? {
        Verdict::Intact(s) => {
            assert_eq!((s.anchor_seq, s.last_seq, s.records), (10, last, 3 + steps))
        }
        Verdict::Broken(f) => bail!("purge broke the chain: {f}"),
    }
    // Nothing more is due; the log goes on, and so does the chain.
    assert_eq!(log.purge_expired("retention-task").await?.count, 0);
    log.append(draft(15)).await?;
    log.close().await;
    assert!(env.verify().await?.is_intact());
    // An export of what remains verifies from the cut.
    let out = env.dir.path().join("rest.csv");
    export(&env, ExportFormat::Csv, &out, None, None).await?;
    assert_eq!(
        audit::verify_export_files(&out, None, &[])?.rows,
        3 + steps + 1
    );

    // Deleting the oldest remaining record is not a purge.
    env.exec("DELETE FROM records WHERE seq = 11").await?;
    assert_eq!(expect_broken(&env, 11).await?, FailureKind::Missing);
    Ok(())
}
both_backends!(purge_leaves_a_verifiable_rest: purge_sqlite, purge_postgres);

/// The cut of every purge record in the log, in order.
async fn purge_cuts(env: &Env) -> Result<Vec<u64>> {
    let sql = "SELECT detail FROM records WHERE outcome = 'purge' ORDER BY seq";
    let details: Vec<String> = sql_column(&env.pools(), sql).await?;
    details
        .iter()
        .map(|d| {
            let detail: serde_json::Value = serde_json::from_str(d)?;
            detail["cut_seq"]
                .as_u64()
                .context("a purge record without cut_seq")
        })
        .collect()
}

/// A log purging in steps of 4, holding the records of each run appended
/// at its clock (`None`: now).
async fn stepped_log(
    env: &Env,
    runs: &[(std::ops::RangeInclusive<u64>, Option<&str>)],
) -> Result<Arc<RecordLog>> {
    let log = RecordLog::open(
        env.pools(),
        &env.keys(),
        RecordsConfig {
            purge_step_records: 4,
            ..quiet()
        },
    )
    .await?;
    for (range, clock) in runs {
        for i in range.clone() {
            match clock {
                Some(t) => log.append_with_clock(draft(i), at(t)).await?,
                None => log.append(draft(i)).await?,
            };
        }
    }
    Ok(log)
}

/// A purge holds the head of the chain while it deletes, so every record
/// commit waits for it: a long run goes in steps of at most
/// `purge_step_records` rows, each with its own purge record, and on
/// PostgreSQL a past month wholly in the run is dropped in one step.
async fn a_long_purge_goes_in_steps(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = stepped_log(
        &env,
        &[
            (1..=6, Some("2018-01-15T10:00:00Z")),
            (7..=10, Some("2018-01-25T10:00:00Z")),
            (11..=16, Some("2018-02-10T10:00:00Z")),
            (17..=18, None),
        ],
    )
    .await?;

    // Part of a month: row by row, four at a time.
    let report = log.purge(at("2018-01-20T00:00:00Z"), "ops-tanaka").await?;
    assert_eq!((report.first_seq, report.cut_seq, report.count), (1, 6, 6));
    assert_eq!(
        (report.purge_records, report.purge_record_seq),
        (2, Some(20))
    );
    assert_eq!(purge_cuts(&env).await?, [4, 6]);
    assert_eq!(env.seqs().await?.first(), Some(&7));

    // The rest: SQLite deletes rows in steps; PostgreSQL drops January's
    // partition (four rows left) and February's (six rows, more than a
    // step) whole. A display follows it record by record.
    let progress = records::WalkProgress::default();
    let report = log
        .purge_showing(at("2018-06-01T00:00:00Z"), "ops-tanaka", &progress)
        .await?;
    let shown = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((shown(&progress.done), shown(&progress.total)), (10, 10));
    assert_eq!(
        (report.first_seq, report.cut_seq, report.count),
        (7, 16, 10)
    );
    let steps: &[u64] = match backend {
        Backend::Sqlite => &[10, 14, 16],
        Backend::Postgres => &[10, 16],
    };
    assert_eq!(report.purge_records, steps.len() as u64);
    let cuts: Vec<u64> = [4, 6].iter().chain(steps).copied().collect();
    assert_eq!(purge_cuts(&env).await?, cuts);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM records WHERE seq <= 16")
            .await?,
        0
    );
    if backend == Backend::Postgres {
        assert_eq!(
            env.count("SELECT COUNT(*) FROM pg_class WHERE relname LIKE 'records_y2018m%'")
                .await?,
            0,
            "expired partitions were not dropped"
        );
    }
    log.close().await;
    match env.verify().await? {
        Verdict::Intact(s) => assert_eq!(
            (s.anchor_seq, s.records),
            (16, 2 + cuts.len() as u64),
            "the rest verifies from the last purge's cut"
        ),
        Verdict::Broken(f) => bail!("a stepped purge broke the chain: {f}"),
    }
    Ok(())
}
both_backends!(a_long_purge_goes_in_steps: stepped_purge_sqlite, stepped_purge_postgres);

/// Months follow the clock, not the sequence: after a clock set back across
/// a month's end, a month's partition holds records with other months'
/// records between them, and dropping it is not one bounded step.
async fn a_month_out_of_sequence_is_not_one_step(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = stepped_log(
        &env,
        &[
            (1..=4, Some("2018-01-15T10:00:00Z")),
            (5..=6, Some("2018-02-10T10:00:00Z")),
            (7..=7, Some("2018-01-31T23:59:00Z")),
            (8..=8, None),
        ],
    )
    .await?;
    let report = log.purge(at("2018-06-01T00:00:00Z"), "ops-tanaka").await?;
    assert_eq!((report.first_seq, report.cut_seq), (1, 7));
    // PostgreSQL: January (1–4 and 7) is not one unit while February (5–6)
    // lies between; four rows, then February dropped, then January.
    let steps: &[u64] = match backend {
        Backend::Sqlite => &[4, 7],
        Backend::Postgres => &[4, 6, 7],
    };
    assert_eq!(purge_cuts(&env).await?, steps);
    log.close().await;
    assert!(env.verify().await?.is_intact());
    Ok(())
}
both_backends!(
    a_month_out_of_sequence_is_not_one_step: out_of_sequence_purge_sqlite,
    out_of_sequence_purge_postgres
);

// ------------------------------------------------------------ group commit

async fn concurrent_appends_are_gap_free(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = RecordLog::open(
        env.pools(),
        &env.keys(),
        RecordsConfig {
            checkpoint_interval_ms: 100,
            purge_interval_secs: 0,
            ..RecordsConfig::default()
        },
    )
    .await?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.spawn(async move { log.append(draft(i)).await });
    }
    let mut seqs = Vec::new();
    while let Some(seq) = tasks.join_next().await {
        seqs.push(seq??);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>());
    assert_eq!(env.seqs().await?, (1..=200).collect::<Vec<i64>>());
    // The sealer signs the new head within its interval, without being asked.
    let mut sealed = 0;
    for _ in 0..50 {
        sealed = env
            .count("SELECT COALESCE(MAX(seq), 0) FROM record_checkpoints")
            .await?;
        if sealed == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sealed, 200);
    match env.verify().await? {
        Verdict::Intact(s) => assert_eq!((s.records, s.sealed_seq), (200, 200)),
        Verdict::Broken(f) => bail!("{f}"),
    }
    // Closing commits what is queued and refuses the rest.
    log.close().await;
    let refused = log
        .append(draft(999))
        .await
        .expect_err("append after close");
    assert_eq!(refused.code(), ErrorCode::Unavailable);
    Ok(())
}
both_backends!(concurrent_appends_are_gap_free: group_commit_sqlite, group_commit_postgres);

/// The total rows and the number of commits the writer reported.
fn commit_totals(metrics: &kakehashi_broker::metrics::Metrics) -> (f64, f64) {
    let text = metrics.encode();
    let value = |name| kakehashi_tests::metric_value(&text, name).unwrap_or(-1.0);
    (
        value("kakehashi_record_commit_rows_sum"),
        value("kakehashi_record_commit_rows_count"),
    )
}

/// A record log with these `[records]` settings whose commits are counted.
async fn counted_log(
    env: &Env,
    config: RecordsConfig,
) -> Result<(Arc<RecordLog>, kakehashi_broker::metrics::Metrics)> {
    let metrics = kakehashi_broker::metrics::Metrics::new();
    let log =
        RecordLog::open_observed(env.pools(), &env.keys(), config, Some(metrics.commits())).await?;
    Ok((log, metrics))
}

/// Drafts 0, 1 and 2: a lone append commits within `bound`; then a commit
/// with a query under way is still waiting after `peek` (`why` says for
/// what), and that query joins it: three rows in two commits.
async fn lone_then_joined(
    log: &Arc<RecordLog>,
    metrics: &kakehashi_broker::metrics::Metrics,
    bound: std::time::Duration,
    peek: std::time::Duration,
    why: &str,
) -> Result<()> {
    let started = std::time::Instant::now();
    log.append(draft(0)).await?;
    assert!(
        started.elapsed() < bound,
        "a lone append waited {:?}",
        started.elapsed()
    );

    let coming = log.expect_append();
    let first = tokio::spawn({
        let log = log.clone();
        async move { log.append(draft(1)).await }
    });
    tokio::time::sleep(peek).await;
    assert!(!first.is_finished(), "{why}");
    drop(coming);
    log.append(draft(2)).await?;
    first.await??;
    assert_eq!(
        commit_totals(metrics),
        (3.0, 2.0),
        "the lone append alone, then both in one commit"
    );
    Ok(())
}

/// `commit_delay_us`: a commit waits for a query under way so both share it;
/// with nothing under way nobody waits.
async fn a_commit_waits_for_queries_under_way(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let delay = std::time::Duration::from_millis(400);
    let config = RecordsConfig {
        commit_delay_us: Some(u64::try_from(delay.as_micros())?),
        ..quiet()
    };
    let (log, metrics) = counted_log(&env, config).await?;
    lone_then_joined(
        &log,
        &metrics,
        delay,
        std::time::Duration::from_millis(100),
        "the commit waits for the query under way",
    )
    .await?;
    assert_eq!(env.seqs().await?, vec![1, 2, 3]);
    Ok(())
}
both_backends!(a_commit_waits_for_queries_under_way: commit_delay_sqlite, commit_delay_postgres);

/// `commit_interval_us`: while queries are under way a commit waits for
/// what is left of the interval since the previous one began, and no more:
/// one that comes after the interval commits at once.
async fn commits_are_paced_by_the_interval(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let interval = std::time::Duration::from_secs(1);
    let config = RecordsConfig {
        commit_delay_us: Some(0),
        commit_interval_us: Some(u64::try_from(interval.as_micros())?),
        ..quiet()
    };
    let (log, metrics) = counted_log(&env, config).await?;
    // Nothing under way: no wait, interval or not. Right after that commit,
    // with a query under way: it waits for the rest of the interval, and
    // the query joins it.
    lone_then_joined(
        &log,
        &metrics,
        interval,
        std::time::Duration::from_millis(200),
        "the commit waits for the interval",
    )
    .await?;

    // Once the interval has passed, a commit does not wait, even with a
    // query under way.
    tokio::time::sleep(interval + std::time::Duration::from_millis(200)).await;
    let coming = log.expect_append();
    let started = std::time::Instant::now();
    log.append(draft(3)).await?;
    assert!(
        started.elapsed() < interval,
        "waited {:?} after the interval had passed",
        started.elapsed()
    );
    drop(coming);
    assert_eq!(commit_totals(&metrics), (4.0, 3.0));
    assert_eq!(env.seqs().await?, vec![1, 2, 3, 4]);
    Ok(())
}
both_backends!(commits_are_paced_by_the_interval: commit_interval_sqlite, commit_interval_postgres);

/// Two writers on one store (two broker nodes on PostgreSQL, or the command
/// line appending an export record beside a running broker): each commits on
/// the head it last wrote, so every turn of the other one moves the head
/// behind its back. The stale commit must be refused whole and retried under
/// the head lock — never fork the chain or leave a gap.
async fn a_head_moved_by_another_writer_is_caught(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let a = env.log().await?;
    let b = env.log().await?;
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(a.append(draft(2 * i)).await?);
        seqs.push(b.append(draft(2 * i + 1)).await?);
    }
    // And both at once.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 20..80 {
        let log = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { log.append(draft(i)).await });
    }
    while let Some(seq) = tasks.join_next().await {
        seqs.push(seq??);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=80).collect::<Vec<u64>>());
    assert_eq!(env.seqs().await?, (1..=80).collect::<Vec<i64>>());
    b.close().await;
    match env.verify().await? {
        Verdict::Intact(s) => assert_eq!(s.records, 80),
        Verdict::Broken(f) => bail!("two writers broke the chain: {f}"),
    }
    // A head changed without a new row is seen only by the head guard (no
    // sequence number collides): the writer must not overwrite it with the
    // head it remembers, but append after the stored one, so the verifier
    // names the break instead of it being papered over.
    assert_eq!(a.append(draft(80)).await?, 81);
    env.exec("UPDATE records_head SET hash = cut_hash").await?;
    assert_eq!(a.append(draft(81)).await?, 82);
    a.close().await;
    expect_broken(&env, 82).await?;
    Ok(())
}
both_backends!(a_head_moved_by_another_writer_is_caught: two_writers_sqlite, two_writers_postgres);

/// Under load the head moves between the sealer reading it and signing: the
/// sealer then signs the position its own writer committed (known, not read
/// back), and leaves the rest for the next seal, which re-checks it from the
/// rows. Here another writer's records past that position are tampered with:
/// the first seal must still succeed at the known position, the second must
/// walk and refuse, and a changed record at the known position is refused.
async fn a_busy_log_seals_what_its_writer_committed(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let a = env.log().await?;
    let b = env.log().await?;
    for i in 1..=8 {
        a.append(draft(i)).await?;
    }
    b.append(draft(9)).await?;
    b.append(draft(10)).await?;
    env.exec("UPDATE records SET items = 'income.total' WHERE seq = 9")
        .await?;
    assert_eq!(a.seal().await?, Some(8), "signs its writer's position");
    let walked = a.seal().await;
    assert!(
        walked
            .as_ref()
            .is_err_and(|e| e.to_string().contains("fail verification at sequence 9")),
        "the tail past the writer's position must be re-checked: {walked:?}"
    );

    a.append(draft(11)).await?; // the writer's position: 11
    b.append(draft(12)).await?;
    env.exec("UPDATE records SET hash = (SELECT hash FROM records WHERE seq = 3) WHERE seq = 11")
        .await?;
    let refused = a.seal().await;
    assert!(
        refused.is_err_and(|e| e
            .to_string()
            .contains("at 11 differs from what was committed")),
        "sealed a record rewritten behind the writer"
    );
    a.close().await;
    b.close().await;
    Ok(())
}
both_backends!(a_busy_log_seals_what_its_writer_committed: busy_seal_sqlite, busy_seal_postgres);

// --------------------------------------------------------- time, disclosure

async fn a_clock_stepping_back_breaks_nothing(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    let now = time::OffsetDateTime::now_utc();
    let a = log.append_with_clock(draft(1), now).await?;
    let b = log
        .append_with_clock(draft(2), now - time::Duration::hours(1))
        .await?;
    let c = log.append_with_clock(draft(3), now).await?;
    assert_eq!((a, b, c), (1, 2, 3), "order comes from the sequence");
    log.close().await;
    assert!(env.verify().await?.is_intact());
    Ok(())
}
both_backends!(a_clock_stepping_back_breaks_nothing: clock_sqlite, clock_postgres);

async fn disclosure_lists_one_persons_records(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    let log = env.log().await?;
    for i in 1..=9 {
        log.append(draft(i)).await?;
    }
    // The same person, asked about again by saitama under its code RQSECRET00004.
    let mut again = draft(10);
    again.requester_person_code = Some("RQSECRET00004".into());
    log.append(again).await?;

    let saitama = log
        .disclosure(&org("city-saitama"), "RQSECRET00004")
        .await?;
    assert_eq!(
        saitama.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 10]
    );
    assert!(saitama
        .iter()
        .all(|e| e.requester == "city-saitama" && e.role == "requester"));
    assert_eq!(saitama[0].items, vec!["income.total", "tax.resident"]);
    let json = serde_json::to_string(&saitama)?;
    assert!(!json.contains("SECRET"), "codes disclosed: {json}");
    // The provider's view under its own code.
    let kawagoe = log
        .disclosure(&org("city-kawagoe"), "PVSECRET00004")
        .await?;
    assert_eq!(kawagoe.len(), 1);
    assert_eq!(kawagoe[0].role, "provider");
    // Another org's code finds nothing.
    assert!(log
        .disclosure(&org("city-kawagoe"), "RQSECRET00004")
        .await?
        .is_empty());
    log.close().await;
    Ok(())
}
both_backends!(disclosure_lists_one_persons_records: disclosure_sqlite, disclosure_postgres);

/// The last statement of each connection of the log's pool for `read`
/// (PostgreSQL's `pg_stat_activity`).
async fn planned_connections(env: &Env, read: store::PlannedRead) -> Result<Vec<String>> {
    let Pools::Postgres(pool) = env.pools() else {
        bail!("planned pools are PostgreSQL's");
    };
    Ok(sqlx::query_scalar(
        "SELECT query FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = $1",
    )
    .bind(read.application_name())
    .fetch_all(&pool)
    .await?)
}

/// Waits until the connections for `read` are gone (after the log is
/// closed and dropped: sqlx's close may miss a connection still on its way
/// back to the pool, and dropping the pool closes it).
async fn planned_connections_closed(env: &Env, read: store::PlannedRead) -> Result<()> {
    for _ in 0..40 {
        if planned_connections(env, read).await?.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    bail!("{read:?} connections left open after the log was closed and dropped")
}

/// On PostgreSQL the log plans the disclosure statement on connections of
/// their own as it opens (`store/postgres/planned.rs`): a statement over
/// every month partition costs tens of milliseconds to plan on a new
/// connection, and no disclosure should pay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disclosure_is_planned_before_it_is_asked_postgres() -> Result<()> {
    let Some(env) = Env::new(Backend::Postgres).await? else {
        return Ok(());
    };
    let read = store::PlannedRead::Disclosure;
    assert!(planned_connections(&env, read).await?.is_empty());
    let log = env.log().await?;
    // Every connection of the pool ran the statement as it opened.
    let opened = planned_connections(&env, read).await?;
    assert!(
        !opened.is_empty(),
        "the log opened no disclosure connection"
    );
    let planned = |q: &String| q.contains("(requester = $1 AND requester_code = $2)");
    assert!(
        opened.iter().all(planned),
        "a disclosure connection opened without planning the statement: {opened:?}"
    );
    for i in 1..=4 {
        log.append(draft(i)).await?;
    }
    for _ in 0..5 {
        let found = log
            .disclosure(&org("city-saitama"), "RQSECRET00004")
            .await?;
        assert_eq!(found.len(), 1);
    }
    // No connection was opened for them (each would have planned anew).
    assert_eq!(planned_connections(&env, read).await?.len(), opened.len());
    log.close().await;
    drop(log);
    planned_connections_closed(&env, read).await
}

/// Exports read on a connection of their own that planned the slice
/// statements over every month partition as the log opened, not on the
/// request path's pool; the connection plans them again while idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn export_reads_on_a_planned_connection_postgres() -> Result<()> {
    let Some(env) = Env::new(Backend::Postgres).await? else {
        return Ok(());
    };
    let read = store::PlannedRead::Long;
    let log = env.log().await?;
    let planned = planned_connections(&env, read).await?;
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert!(
        planned[0].contains("FROM record_checkpoints WHERE seq >= $1 AND seq <= $2"),
        "the long reads' connection opened without planning: {planned:?}"
    );
    for i in 1..=6 {
        log.append(draft(i)).await?;
    }
    let summary = log
        .export(&csv_request(&env, "all.csv", Default::default()))
        .await?;
    assert_eq!(summary.rows, 6);
    // The export ran there: the one connection has moved on, and no other
    // was opened.
    let after = planned_connections(&env, read).await?;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(
        after, planned,
        "the export did not read on the planned connection"
    );
    // The idle connection runs its statements again every few seconds, so
    // a plan that a partition made or dropped invalidated is made there,
    // not in the next export.
    let mut replanned = false;
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if planned_connections(&env, read).await? == planned {
            replanned = true;
            break;
        }
    }
    assert!(
        replanned,
        "the long reads' connection was not planned again"
    );
    log.close().await;
    drop(log);
    planned_connections_closed(&env, read).await
}

/// Entries in the SQLite side index, by a query on its file.
async fn side_index_count(env: &Env, sql: &str) -> Result<i64> {
    let file = env.dir.path().join("kakehashi.db.person-index");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", file.display())).await?;
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await?;
    pool.close().await;
    Ok(n)
}

#[tokio::test]
async fn sqlite_person_index_follows_the_records() -> Result<()> {
    let env = Env::new(Backend::Sqlite).await?.context("sqlite")?;
    let log = env.log().await?;
    let saitama = org("city-saitama");
    // Sequences of the records disclosed to saitama for its code RQSECRET00001.
    let disclosed = || async {
        let entries = log.disclosure(&saitama, "RQSECRET00001").await?;
        anyhow::Ok(entries.iter().map(|e| e.seq).collect::<Vec<_>>())
    };
    // Three records old enough to purge, then eight of today.
    for i in 1..=3 {
        log.append_with_clock(draft(i), at("2015-01-15T10:00:00Z"))
            .await?;
    }
    for i in 4..=10 {
        log.append(draft(i)).await?;
    }
    let mut again = draft(11);
    again.requester = saitama.clone();
    again.requester_person_code = Some("RQSECRET00001".into());
    log.append(again).await?;

    // Nothing indexed yet: the scan past the mark finds everything.
    assert_eq!(disclosed().await?, vec![1, 11]);
    assert_eq!(log.catch_up_person_index().await?, 11);
    assert_eq!(side_index_count(&env, "SELECT seq FROM mark").await?, 11);
    assert_eq!(disclosed().await?, vec![1, 11]);
    // The provider's side is indexed too, under the provider's own code.
    let to_provider = log
        .disclosure(&org("city-kawagoe"), "PVSECRET00004")
        .await?;
    assert_eq!(
        to_provider.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(
        side_index_count(
            &env,
            "SELECT COUNT(*) FROM entries WHERE org = 'city-kawagoe' AND code = 'PVSECRET00004'"
        )
        .await?,
        1
    );
    // A record after the mark is found by the scan.
    let mut later = draft(12);
    later.requester = saitama.clone();
    later.requester_person_code = Some("RQSECRET00001".into());
    log.append(later).await?;
    assert_eq!(disclosed().await?, vec![1, 11, 12]);

    // The index is derived: an entry whose record no longer carries the code
    // is not disclosed.
    env.exec("UPDATE records SET requester_code = 'RQSECRET09999' WHERE seq = 11")
        .await?;
    assert_eq!(disclosed().await?, vec![1, 12]);
    env.exec("UPDATE records SET requester_code = 'RQSECRET00001' WHERE seq = 11")
        .await?;

    // A database replaced under the index (its record at the mark differs)
    // makes the indexer rebuild from the first record.
    assert_eq!(log.catch_up_person_index().await?, 1);
    env.exec("UPDATE records SET hash = zeroblob(32) WHERE seq = 12")
        .await?;
    assert_eq!(log.catch_up_person_index().await?, 12);
    env.exec("DELETE FROM records WHERE seq = 12").await?;
    // The head rewound whole (sequence and hash), as in the replaced
    // database: the sealer re-checks the chain before it signs.
    env.exec("UPDATE records_head SET seq = 11, hash = (SELECT hash FROM records WHERE seq = 11)")
        .await?;
    assert_eq!(log.catch_up_person_index().await?, 11, "mark past the head");
    assert_eq!(disclosed().await?, vec![1, 11]);

    // A retention purge drops the entries of the deleted records, on a
    // broker restarted on the replaced database (this one's writer knows it
    // committed 12 and refuses to seal the shorter history).
    assert!(
        log.seal().await.is_err(),
        "sealed a head behind its own commit"
    );
    log.close().await;
    let log = env.log().await?;
    log.seal().await?;
    let purged = log.purge(at("2018-01-01T00:00:00Z"), "ops-tanaka").await?;
    assert_eq!(purged.cut_seq, 3);
    log.catch_up_person_index().await?;
    assert_eq!(
        side_index_count(&env, "SELECT COUNT(*) FROM entries WHERE seq <= 3").await?,
        0
    );
    assert!(side_index_count(&env, "SELECT COUNT(*) FROM entries").await? > 0);
    let left = log.disclosure(&saitama, "RQSECRET00001").await?;
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![11]);
    log.close().await;
    Ok(())
}

/// Records in the main database file itself, read from a copy of that file
/// alone: what a checkpoint has moved out of the WAL (none if the copy has no
/// records table yet).
async fn records_in_main_file(env: &Env) -> Result<i64> {
    let copy = env.dir.path().join("main-file-only.db");
    std::fs::copy(env.dir.path().join("kakehashi.db"), &copy)?;
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&copy)
        .read_only(true);
    let mut conn = sqlx::ConnectOptions::connect(&options).await?;
    let has_table: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'records'")
            .fetch_one(&mut conn)
            .await?;
    // Any other failure to read the copy fails the test rather than
    // passing for "nothing checkpointed".
    let n = if has_table == 0 {
        0
    } else {
        sqlx::query_scalar("SELECT COUNT(*) FROM records")
            .fetch_one(&mut conn)
            .await?
    };
    sqlx::Connection::close(conn).await?;
    std::fs::remove_file(&copy)?;
    Ok(n)
}

#[tokio::test]
async fn sqlite_wal_is_checkpointed_in_the_background() -> Result<()> {
    for interval in [50, 0] {
        let Some(env) = Env::new(Backend::Sqlite).await? else {
            return Ok(());
        };
        let config = RecordsConfig {
            wal_checkpoint_interval_ms: interval,
            ..quiet()
        };
        let log = RecordLog::open(env.pools(), &env.keys(), config).await?;
        for i in 0..200 {
            log.append(draft(i)).await?;
        }
        let mut in_file = 0;
        for _ in 0..40 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            in_file = records_in_main_file(&env).await?;
            if in_file == 200 {
                break;
            }
        }
        if interval > 0 {
            assert_eq!(
                in_file, 200,
                "the checkpointer did not move the WAL into the file"
            );
        } else {
            // Without it the writer leaves a small WAL alone (it checkpoints
            // only far past SQLite's default), so the file lags.
            assert!(in_file < 200, "the writer checkpointed a small WAL itself");
        }
        log.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_person_index_spans_buckets() -> Result<()> {
    let env = Env::new(Backend::Sqlite).await?.context("sqlite")?;
    let log = env.log().await?;
    // More records than one bucket of the side index holds (4,096).
    let with_code = |i: u64| {
        let mut d = draft(1);
        d.query_id = format!("q-{i:05}");
        d.requester_person_code = Some(format!("RQ{i:08}"));
        d
    };
    // Person 3 is asked about first, among the crowd, and last.
    assert_eq!(log.append(with_code(3)).await?, 1);
    let mut appenders = tokio::task::JoinSet::new();
    for task in 0..64u64 {
        let log = log.clone();
        appenders.spawn(async move {
            for i in (task..10_000).step_by(64) {
                log.append(with_code(i)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = appenders.join_next().await {
        done??;
    }
    assert_eq!(log.append(with_code(3)).await?, 10_002);
    assert_eq!(log.catch_up_person_index().await?, 10_002);
    let saitama = org("city-saitama");
    let person3 = log.disclosure(&saitama, "RQ00000003").await?;
    let seqs: Vec<u64> = person3.iter().map(|e| e.seq).collect();
    assert_eq!((seqs.len(), seqs[0], seqs[2]), (3, 1, 10_002), "{seqs:?}");
    for i in [9_000u64, 9_999] {
        let found = log.disclosure(&saitama, &format!("RQ{i:08}")).await?;
        assert_eq!(found.len(), 1, "q-{i:05}");
        assert_eq!(found[0].query_id, format!("q-{i:05}"));
    }
    log.close().await;
    Ok(())
}

// ------------------------------------------------------------------- crash

const STRESS_CONFIG: &str = "KAKEHASHI_RECORDS_STRESS_CONFIG";

/// Not a test on its own: the child process of the crash test (the test
/// binary re-runs itself with this one test selected and the variable set).
/// It runs exactly what `kakehashi-broker records stress` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_child_process() -> Result<()> {
    let Ok(config) = std::env::var(STRESS_CONFIG) else {
        return Ok(());
    };
    kakehashi_broker::cli::records::run(
        Some(Path::new(&config)),
        RecordsCommand::Stress {
            count: 10_000_000,
            concurrency: 64,
        },
    )
    .await?;
    Ok(())
}

async fn kill_9_loses_no_acknowledged_record(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend).await? else {
        return Ok(());
    };
    for round in 0..2 {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "stress_child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STRESS_CONFIG, &env.config_path)
            .env("KAKEHASHI_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(seq) = line.trim().parse::<u64>() {
                    let _ = tx.send(seq);
                }
            }
        });
        // Let it get well into appending, then kill it without warning.
        let mut acknowledged = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while acknowledged.len() < 2000 && std::time::Instant::now() < deadline {
            if let Ok(seq) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
                acknowledged.push(seq);
            }
        }
        child.kill()?; // SIGKILL
        let status = child.wait()?;
        assert!(!status.success(), "the child finished before it was killed");
        let _ = reader.join();
        acknowledged.extend(rx.try_iter());
        assert!(
            acknowledged.len() >= 2000,
            "round {round}: only {} acknowledged",
            acknowledged.len()
        );

        // Every acknowledged record is there, sequences are gap-free, and
        // the chain (with its unsealed tail) verifies.
        // A commit the child sent just before the kill may still land:
        // PostgreSQL finishes a statement before it notices its client is
        // gone. Read once the store has stopped changing.
        let mut seqs = env.seqs().await?;
        for _ in 0..50 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let again = env.seqs().await?;
            if again == seqs {
                break;
            }
            seqs = again;
        }
        let stored: std::collections::BTreeSet<i64> = seqs.into_iter().collect();
        let max = *stored.last().context("no records")?;
        assert_eq!(stored.len() as i64, max, "gaps after the crash");
        for seq in &acknowledged {
            assert!(
                stored.contains(&(*seq as i64)),
                "acknowledged record {seq} lost"
            );
        }
        match env.verify().await? {
            Verdict::Intact(s) => assert_eq!(s.last_seq, max as u64),
            Verdict::Broken(f) => bail!("chain broken by the crash: {f}"),
        }
        eprintln!(
            "round {round}: {} acknowledged before kill -9, {} stored, all present",
            acknowledged.len(),
            stored.len()
        );
    }
    // A restarted log continues the chain and seals the crashed tail.
    let log = env.log().await?;
    log.append(draft(1)).await?;
    log.close().await;
    match env.verify().await? {
        Verdict::Intact(s) => assert_eq!(s.sealed_seq, s.last_seq),
        Verdict::Broken(f) => bail!("{f}"),
    }
    Ok(())
}
both_backends!(kill_9_loses_no_acknowledged_record: crash_sqlite, crash_postgres);
