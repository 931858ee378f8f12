//! `kakehashi-bench national`: a union's whole seven-year record store on
//! PostgreSQL (issue 25: about 10 million insured persons, records kept seven
//! years). Fills the store through the broker's own record log, spread over
//! seven years and two months ending now, then times what a national-size
//! store must still do quickly:
//!
//! - disclosure of one person's records (R18), ≤ 50 ms;
//! - the export of one month, ≥ 300 000 rows/s, in constant memory (the
//!   process's resident memory is sampled during a one-month and a
//!   six-month export);
//! - the purge of the oldest month, one partition drop, ≤ 1 s (while a
//!   whole month of the store lies outside the retention period);
//! - verification of the whole chain, with its rate;
//! - the bytes stored per record (table, indexes and TOAST of every
//!   partition).

use kakehashi_benches::workdir::WorkDir;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use kakehashi_benches::report::Machine;
use kakehashi_broker::records::{
    ExportFilter, ExportFormat, ExportRequest, RecordLog, RecordsConfig,
};
use kakehashi_broker::store::{Pools, Store};
use kakehashi_interfaces::OrgId;

use crate::search_scale;

/// Seven years and two months (`search-scale --days 2619` fills the same
/// span): the oldest month lies wholly outside the
/// retention period, so it can be purged.
const DAYS: u64 = 7 * 365 + 2 + 62;

/// Arguments of `national`.
#[derive(clap::Args)]
pub struct NationalArgs {
    /// Records to fill.
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// PostgreSQL base URL (`scripts/postgres-up` prints one).
    #[arg(long)]
    postgres_url: String,
    /// Reuse this database (filled by an earlier run) instead of a fresh one.
    #[arg(long)]
    database: Option<String>,
    /// Work directory (record keys, exports); default: a temporary one.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Concurrent appenders while filling.
    #[arg(long, default_value_t = 256)]
    appenders: usize,
    /// Persons whose disclosure is timed.
    #[arg(long, default_value_t = 50)]
    persons: u64,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The purge of the oldest month.
#[derive(Serialize)]
pub struct PurgeResult {
    /// Records deleted.
    pub count: u64,
    /// Seconds the purge took (verification of the range, drop, purge record).
    pub secs: f64,
    /// Month partitions before the purge.
    pub partitions_before: u64,
    /// Month partitions after the purge.
    pub partitions_after: u64,
    /// Purge records written: one per step (a partition dropped, or at
    /// most `purge_step_records` rows deleted).
    pub steps: u64,
}

/// One export.
#[derive(Serialize)]
pub struct ExportResult {
    /// Months exported.
    pub months: u32,
    /// Rows written.
    pub rows: u64,
    /// Seconds.
    pub secs: f64,
    /// Rows per second.
    pub rows_per_sec: f64,
    /// Peak resident memory during the export above the resident memory before it, MiB.
    pub rss_growth_mib: f64,
}

/// The report.
#[derive(Serialize)]
pub struct NationalReport {
    /// Where it ran.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Records in the store.
    pub records: u64,
    /// Fill seconds (0 when reused).
    pub fill_secs: f64,
    /// Disclosure: median and slowest, ms; records per person found.
    pub disclosure_median_ms: f64,
    /// Slowest disclosure, ms.
    pub disclosure_max_ms: f64,
    /// Records a disclosed person had (median).
    pub disclosure_rows: usize,
    /// Exports.
    pub exports: Vec<ExportResult>,
    /// Purge of the oldest month; none when no whole month of the store
    /// lies outside the retention period (a reused store, purged before).
    pub purge: Option<PurgeResult>,
    /// Purge of the next 25 days after it, row by row in steps (the daily
    /// purge of a month not yet wholly expired); none when not due.
    pub row_purge: Option<PurgeResult>,
    /// Whole-chain verification, seconds.
    pub verify_secs: f64,
    /// Records verified per second.
    pub verify_rate: f64,
    /// Bytes per record: table, indexes and TOAST of every partition.
    pub bytes_per_record: f64,
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples this process's resident memory every 20 ms until dropped.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(resident_kib()));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(resident_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

fn month_start(year: i32, month: u8) -> Result<time::OffsetDateTime> {
    let month = time::Month::try_from(month).context("month")?;
    Ok(time::Date::from_calendar_date(year, month, 1)
        .context("date")?
        .midnight()
        .assume_utc())
}

/// The first instant of the month `k` months after the one holding `t`.
fn months_after(t: time::OffsetDateTime, k: i32) -> Result<time::OffsetDateTime> {
    let index = t.year() * 12 + i32::from(u8::from(t.month())) - 1 + k;
    month_start(
        index.div_euclid(12),
        u8::try_from(index.rem_euclid(12) + 1)?,
    )
}

async fn partitions(pools: &Pools) -> Result<u64> {
    let Pools::Postgres(pool) = pools else {
        bail!("PostgreSQL only");
    };
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_inherits WHERE inhparent = 'records'::regclass",
    )
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Purges what was recorded before `before` and times it; `None` (said on
/// standard output) when that is inside the retention period.
async fn timed_purge(
    log: &RecordLog,
    pools: &Pools,
    before: time::OffsetDateTime,
    what: &str,
) -> Result<Option<PurgeResult>> {
    if before > log.retention_cutoff(time::OffsetDateTime::now_utc()) {
        println!(
            "purge of {what}: not all of it lies outside the retention period any more \
             (purged by earlier runs); NOT measured — fill a fresh store to measure it"
        );
        return Ok(None);
    }
    let partitions_before = partitions(pools).await?;
    let t = Instant::now();
    let report = log.purge(before, "national-bench").await?;
    let secs = t.elapsed().as_secs_f64();
    let partitions_after = partitions(pools).await?;
    println!(
        "purge of {what} (before {}): {} records in {secs:.2} s, {} steps; partitions {partitions_before} → {partitions_after}",
        report.before, report.count, report.purge_records
    );
    Ok(Some(PurgeResult {
        count: report.count,
        secs,
        partitions_before,
        partitions_after,
        steps: report.purge_records,
    }))
}

/// When the oldest stored record was recorded.
async fn oldest_recorded_at(pools: &Pools) -> Result<time::OffsetDateTime> {
    let Pools::Postgres(pool) = pools else {
        bail!("PostgreSQL only");
    };
    let at: String = sqlx::query_scalar("SELECT recorded_at FROM records ORDER BY seq LIMIT 1")
        .fetch_one(pool)
        .await?;
    time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("recorded_at {at:?}"))
}

async fn bytes_per_record(pools: &Pools, records: u64) -> Result<f64> {
    let Pools::Postgres(pool) = pools else {
        bail!("PostgreSQL only");
    };
    let bytes: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(pg_total_relation_size(inhrelid)), 0)::BIGINT
         FROM pg_inherits WHERE inhparent = 'records'::regclass",
    )
    .fetch_one(pool)
    .await?;
    Ok(bytes as f64 / records.max(1) as f64)
}

async fn export(
    log: &RecordLog,
    dir: &std::path::Path,
    from: time::OffsetDateTime,
    months: u32,
) -> Result<ExportResult> {
    let to = months_after(from, i32::try_from(months)?)?;
    let out = dir.join(format!("export-{months}m-{}.csv", rand::random::<u32>()));
    let before = resident_kib();
    let rss = RssPeak::start();
    let t = Instant::now();
    let summary = log
        .export(&ExportRequest {
            filter: ExportFilter {
                from: Some(from),
                to: Some(to),
                ..ExportFilter::default()
            },
            format: ExportFormat::Csv,
            out: out.clone(),
            actor: "national-bench".into(),
        })
        .await?;
    let secs = t.elapsed().as_secs_f64();
    let peak = rss.finish();
    let _ = std::fs::remove_file(&summary.bundle);
    let _ = std::fs::remove_file(&out);
    let result = ExportResult {
        months,
        rows: summary.rows,
        secs,
        rows_per_sec: summary.rows as f64 / secs.max(1e-9),
        rss_growth_mib: peak.saturating_sub(before) as f64 / 1024.0,
    };
    println!(
        "export of {months} month(s): {} rows in {secs:.2} s = {:.0} rows/s; resident memory +{:.1} MiB at peak",
        result.rows, result.rows_per_sec, result.rss_growth_mib
    );
    Ok(result)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs `national`.
pub async fn run(args: NationalArgs) -> Result<()> {
    let machine = Machine::detect();
    eprintln!("machine: {}", machine.text());
    let dir = WorkDir::new(args.workdir.as_deref(), "kakehashi-national-")?;
    let dir = dir.path();
    let (store, name) = match &args.database {
        Some(name) => (
            search_scale::open_pg(&args.postgres_url, name).await?,
            name.clone(),
        ),
        None => search_scale::fresh_pg(&args.postgres_url).await?,
    };
    eprintln!("postgres: database {name}");
    let pools = store.pools();
    search_scale::pg_partitions(&pools, DAYS).await?;
    let config = RecordsConfig {
        max_batch: 1024,
        purge_interval_secs: 0,
        // A checkpoint about every 2 000 records while filling at ~20 000
        // records/s: as at 1 000 queries/s with the default 2 s interval, the
        // busiest load the union is sized for. (At the default interval the
        // fill would sign one every ~40 000, and an export of a period
        // would read and hash up to that many records past its end, to the
        // checkpoint that proves it.)
        checkpoint_interval_ms: 100,
        ..RecordsConfig::default()
    };
    // The key directory's name is search-scale's, so a store it filled
    // (`search-scale --days 2619 --backend postgres --workdir W`) is reused
    // with its sealer key.
    let log = Arc::new(RecordLog::open(pools.clone(), &dir.join("keys-pg"), config).await?);
    let have = search_scale::count(&pools).await?;
    let fill_secs = if have == 0 {
        eprintln!(
            "filling {} records over {DAYS} days ({} appenders)",
            args.records, args.appenders
        );
        search_scale::fill(&log, args.records, DAYS, args.appenders).await?
    } else {
        eprintln!("{have} records there already; not filling");
        0.0
    };
    if let (Pools::Postgres(pool), true) = (&pools, fill_secs > 0.0) {
        search_scale::vacuum_analyze(pool).await?;
    }
    let records = search_scale::count(&pools).await?;
    let bytes_per_record = bytes_per_record(&pools, records).await?;
    println!(
        "{records} records; {bytes_per_record:.0} bytes per record stored (table, indexes, TOAST)"
    );

    // Disclosure (R18): one person's records, by the union's own code.
    let union = OrgId::new("union-saitama")?;
    let mut times = Vec::new();
    let mut found = Vec::new();
    let step = (records / 8 / args.persons.max(1)).max(1);
    for k in 0..args.persons {
        let person = k * step + step / 2;
        let code = search_scale::person_code(union.as_str(), person);
        let t = Instant::now();
        let rows = log.disclosure(&union, &code).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        found.push(rows.len() as f64);
    }
    let disclosure_max_ms = times.iter().copied().fold(0.0, f64::max);
    let disclosure_median_ms = median(&mut times);
    let disclosure_rows = median(&mut found) as usize;
    println!(
        "disclosure of one person ({} persons): median {disclosure_median_ms:.1} ms, max {disclosure_max_ms:.1} ms, {disclosure_rows} records each",
        args.persons
    );

    // Exports: a month a year ago, and six months from there.
    let year_ago = months_after(time::OffsetDateTime::now_utc(), -12)?;
    let mut exports = vec![export(&log, dir, year_ago, 1).await?];
    exports.push(export(&log, dir, year_ago, 6).await?);

    // Purge of the oldest month still stored (a rerun purges the next one,
    // while it lies wholly outside the retention period), then of the next
    // 25 days: rows of a month not wholly due, deleted in steps.
    let oldest = oldest_recorded_at(&pools).await?;
    let before = months_after(oldest, 1)?;
    let purge = timed_purge(&log, &pools, before, "the oldest month").await?;
    let row_purge = match purge {
        Some(_) => {
            let before = before + time::Duration::days(25);
            timed_purge(&log, &pools, before, "25 days more").await?
        }
        None => None,
    };

    let t = Instant::now();
    let verdict = log.verify().await?;
    let verify_secs = t.elapsed().as_secs_f64();
    if !verdict.is_intact() {
        bail!("the chain does not verify: {verdict:?}");
    }
    let verify_rate = records as f64 / verify_secs.max(1e-9);
    println!("verify of the whole chain: {verify_secs:.1} s ({verify_rate:.0} records/s)");
    log.close().await;

    let report = NationalReport {
        machine,
        command: crate::approvals::command_line(),
        records,
        fill_secs,
        disclosure_median_ms,
        disclosure_max_ms,
        disclosure_rows,
        exports,
        purge,
        row_purge,
        verify_secs,
        verify_rate,
        bytes_per_record,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
