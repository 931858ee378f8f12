//! Provision-record benchmarks (numbers quoted in benches/README.md):
//! - appends per second with group commit vs one transaction per record
//!   (same durability: SQLite WAL + synchronous=FULL; PostgreSQL
//!   synchronous_commit=on), 64 concurrent appenders;
//! - auditor export rows per second of a sealed store vs `sqlite3 -csv` on
//!   the same table in the same state;
//! - bytes stored per record.
//!
//! `cargo bench -p kakehashi-benches --bench records`
//! Environment: `RECORDS_BENCH_APPENDS` (default 20000),
//! `RECORDS_BENCH_EXPORT_ROWS` (default 200000), `KAKEHASHI_TEST_PG_URL`
//! (adds the PostgreSQL rows; `scripts/postgres-up` prints one).
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use kakehashi_broker::records::{
    ExportFilter, ExportFormat, ExportRequest, Outcome, RecordDraft, RecordLog, RecordsConfig,
};
use kakehashi_broker::store::{PgStore, Pools, SqliteStore, Store};
use kakehashi_interfaces::OrgId;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn draft(i: u64, requester: &OrgId, provider: &OrgId) -> RecordDraft {
    let mut d = RecordDraft::new(format!("q-{i:010}"), requester.clone(), Outcome::Provided);
    d.permit_id = Some(format!("p-{i:010}"));
    d.flow_id = Some("F0042".into());
    d.flow_list_version = Some(7);
    d.procedure = Some("child_allowance".into());
    d.provider = Some(provider.clone());
    d.items = vec!["income.total".into(), "tax.resident".into()];
    d.requester_person_code = Some(format!("RQ{i:014}"));
    d.provider_person_code = Some(format!("PV{i:014}"));
    d
}

fn config(max_batch: usize) -> RecordsConfig {
    RecordsConfig {
        max_batch,
        purge_interval_secs: 0,
        ..RecordsConfig::default()
    }
}

/// Appends `n` records from `concurrency` tasks; returns records per second.
async fn append_rate(log: &Arc<RecordLog>, n: u64, concurrency: usize) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let requester = OrgId::new("city-saitama")?;
    let provider = OrgId::new("city-kawagoe")?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (log, next, rq, pv) = (
            log.clone(),
            next.clone(),
            requester.clone(),
            provider.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), kakehashi_broker::BrokerError>(());
                }
                log.append(draft(i, &rq, &pv)).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn fresh_pg(base: &str) -> Result<PgStore> {
    let (_, url) = kakehashi_broker::store::create_database(base, "kk_bench").await?;
    Ok(PgStore::open(&url, 16).await?)
}

async fn appends(name: &str, pools: Pools, keys: &Path, n: u64) -> Result<()> {
    let group = RecordLog::open(pools.clone(), keys, config(1024)).await?;
    let grouped = append_rate(&group, n, 64).await?;
    group.close().await;
    // One transaction (one fsync) per record: a tenth of the records suffice.
    let single = RecordLog::open(pools, keys, config(1)).await?;
    let one_by_one = append_rate(&single, (n / 10).max(100), 64).await?;
    single.close().await;
    println!(
        "{name:<10} appends/s  group commit {grouped:>9.0}   one tx per record {one_by_one:>7.0}   ({:.1}x)",
        grouped / one_by_one
    );
    Ok(())
}

fn sqlite_bytes(db: &Path, rows: u64) -> Result<(f64, f64)> {
    let sum_in = |file: &Path, names: &str| -> Result<f64> {
        let out = std::process::Command::new("sqlite3")
            .arg(file)
            .arg(format!(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN ({names})"
            ))
            .output()
            .context("sqlite3 (apt-get install sqlite3)")?;
        Ok(String::from_utf8(out.stdout)?.trim().parse::<f64>()?)
    };
    let sum = |names: &str| sum_in(db, names);
    let table = sum("'records'")?;
    // The person-code index lives in a side file (store/sqlite/person_index.rs).
    let mut side = db.as_os_str().to_owned();
    side.push(".person-index");
    let all = sum("'records','records_recorded_at'")? + sum_in(Path::new(&side), "'entries'")?;
    Ok((table / rows as f64, all / rows as f64))
}

async fn pg_bytes(pools: &Pools, rows: u64) -> Result<(f64, f64)> {
    let Pools::Postgres(pool) = pools else {
        anyhow::bail!("not postgres")
    };
    let (table, all): (i64, i64) = sqlx::query_as(
        "SELECT SUM(pg_relation_size(inhrelid))::bigint, SUM(pg_total_relation_size(inhrelid))::bigint
         FROM pg_inherits WHERE inhparent = 'records'::regclass",
    )
    .fetch_one(pool)
    .await?;
    Ok((table as f64 / rows as f64, all as f64 / rows as f64))
}

const VISIBLE: &str = "seq, recorded_at, query_id, permit_id, flow_id, flow_list_version, \
     procedure_code, requester, provider, items, outcome, reason, approver, detail";

// Each store has a key directory of its own: the sealer's state file beside
// its key remembers the head it signed in that store, and refuses another.
async fn run() -> Result<()> {
    let appends_n = env_u64("RECORDS_BENCH_APPENDS", 20_000);
    let export_n = env_u64("RECORDS_BENCH_EXPORT_ROWS", 200_000);
    let dir = tempfile::tempdir()?;
    println!("provision records: {appends_n} appends, {export_n} rows exported");

    // Appends, SQLite then PostgreSQL.
    let db = dir.path().join("appends.db");
    let store = SqliteStore::open(&db).await?;
    appends(
        "sqlite",
        store.pools(),
        &dir.path().join("keys-sqlite"),
        appends_n,
    )
    .await?;
    let pg_base = std::env::var("KAKEHASHI_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if let Some(base) = &pg_base {
        let pg = fresh_pg(base).await?;
        appends(
            "postgres",
            pg.pools(),
            &dir.path().join("keys-pg"),
            appends_n,
        )
        .await?;
    }

    // Export rate and size, SQLite.
    let db = dir.path().join("export.db");
    let store = SqliteStore::open(&db).await?;
    let log = RecordLog::open(
        store.pools(),
        &dir.path().join("keys-sqlite-export"),
        config(1024),
    )
    .await?;
    append_rate(&log, export_n, 64).await?;
    // Index now, so the background indexer does not run during the export.
    log.catch_up_person_index().await?;
    // A store at rest: its records sealed by a checkpoint, as the sealer
    // keeps them every `checkpoint_interval_ms`. Right after a burst of
    // appends the export's own seal first re-checks every record since the
    // last checkpoint, a cost of the burst, not of the export's rows.
    let sealing = Instant::now();
    log.seal().await?;
    let sealing = sealing.elapsed();
    let out = dir.path().join("export.csv");
    let start = Instant::now();
    let summary = log
        .export(&ExportRequest {
            filter: ExportFilter::default(),
            format: ExportFormat::Csv,
            out: out.clone(),
            actor: "bench".into(),
        })
        .await?;
    let ours = summary.rows as f64 / start.elapsed().as_secs_f64();
    let export_bytes = std::fs::metadata(&out)?.len() + std::fs::metadata(&summary.bundle)?.len();
    // `sqlite3 -csv` of the same columns, timed on the same database in the
    // same state (the log still open, its write-ahead log as the export
    // found it), and again once the log is closed and the write-ahead log
    // folded into the database file (its best case).
    let sqlite3 = |what: &str| -> Result<f64> {
        let start = Instant::now();
        let status = std::process::Command::new("sqlite3")
            .arg("-csv")
            .arg(&db)
            .arg(format!("SELECT {VISIBLE} FROM records ORDER BY seq"))
            .stdout(std::fs::File::create(
                dir.path().join(format!("sqlite3-{what}.csv")),
            )?)
            .status()
            .context("sqlite3 (apt-get install sqlite3)")?;
        anyhow::ensure!(status.success(), "sqlite3 failed");
        Ok(summary.rows as f64 / start.elapsed().as_secs_f64())
    };
    let theirs = sqlite3("open")?;
    log.close().await;
    let closed = sqlite3("closed")?;
    println!(
        "sqlite     export rows/s  records export (CSV+bundle, hashing) {ours:>9.0}   sqlite3 -csv {theirs:>9.0} (x{:.2}; {closed:.0} once closed, x{:.2})   ({} bytes per row with bundle)",
        ours / theirs,
        ours / closed,
        export_bytes / summary.rows.max(1)
    );
    println!(
        "sqlite     seal of the appends before the export: {} ms",
        sealing.as_millis()
    );
    let (table, all) = sqlite_bytes(&db, export_n + 1)?;
    println!("sqlite     bytes/record  table {table:.0}   with indexes {all:.0}");

    if let Some(base) = &pg_base {
        let pg = fresh_pg(base).await?;
        let log =
            RecordLog::open(pg.pools(), &dir.path().join("keys-pg-export"), config(1024)).await?;
        append_rate(&log, export_n, 64).await?;
        log.seal().await?;
        let out = dir.path().join("export-pg.csv");
        let start = Instant::now();
        let summary = log
            .export(&ExportRequest {
                filter: ExportFilter::default(),
                format: ExportFormat::Csv,
                out,
                actor: "bench".into(),
            })
            .await?;
        let ours = summary.rows as f64 / start.elapsed().as_secs_f64();
        log.close().await;
        if let Pools::Postgres(pool) = pg.pools() {
            sqlx::query("VACUUM ANALYZE records").execute(&pool).await?;
        }
        let (table, all) = pg_bytes(&pg.pools(), export_n + 1).await?;
        println!("postgres   export rows/s  {ours:>9.0}");
        println!("postgres   bytes/record  table {table:.0}   with indexes {all:.0}");
    }
    Ok(())
}

/// The broker binary's allocator (`broker/src/main.rs`), so the record log
/// runs here as it runs in `kakehashi-broker`: with glibc's, the export's
/// rows, allocated on its reading thread and freed on its writing one, made
/// it about a third slower.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
