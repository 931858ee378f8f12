//! `kakehashi-bench search-scale`: the auditor's record search over a large
//! provision-record store (issue 24: the first page in ≤ 200 ms over 10
//! million records on SQLite and PostgreSQL, by an index plan). The store is
//! filled through the broker's own record log (hash chain, group commit,
//! SQLite's person-code side index, PostgreSQL's month partitions), spread
//! evenly over `--days` days ending now; then each typical search's first
//! page is timed and its statements' plans are printed and checked for a
//! full scan of the records table.

use kakehashi_benches::workdir::WorkDir;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use kakehashi_benches::report::Machine;
use kakehashi_broker::records::{
    ExplainedStatement, Outcome, PageRequest, RecordDraft, RecordLog, RecordsConfig, SearchFilter,
};
use kakehashi_broker::store::{PgStore, Pools, SqliteStore, Store};
use kakehashi_interfaces::OrgId;

/// The bound on a first page.
const LIMIT_MS: f64 = 200.0;

/// The auditor's org: the viewer of every search, and the org whose person
/// codes the person search uses.
const VIEWER: &str = "union-saitama";

/// Orgs taking part, by weight: record `i` has requester `ORGS[i % 4]` and
/// provider `ORGS[(i + 1) % 4]`; every 1000th record's requester is `RARE_ORG`.
const ORGS: [&str; 4] = [
    "city-saitama",
    "union-saitama",
    "city-kawagoe",
    "agency-pension",
];
const RARE_ORG: &str = "town-ogano";

/// Flows: `F0001`–`F0020` in turn; every 10 000th record is `RARE_FLOW`.
const FLOWS: u64 = 20;
const RARE_FLOW: &str = "F0999";

/// Which databases to fill and search.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite only.
    Sqlite,
    /// PostgreSQL only (needs --postgres-url).
    Postgres,
    /// Both.
    Both,
}

/// Arguments of `search-scale`.
#[derive(clap::Args)]
pub struct SearchScaleArgs {
    /// Records to fill.
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// The records are spread evenly over this many days ending now.
    #[arg(long, default_value_t = 365)]
    days: u64,
    /// Which databases.
    #[arg(long, value_enum, default_value = "both")]
    backend: Backend,
    /// PostgreSQL base URL (`scripts/postgres-up` prints one); a fresh database is created.
    #[arg(long)]
    postgres_url: Option<String>,
    /// An existing database on that server to search (filled by an earlier
    /// run, which printed its name) instead of a fresh one; drop it with
    /// `dropdb` when done.
    #[arg(long, value_name = "NAME")]
    postgres_db: Option<String>,
    /// Work directory (SQLite database, record keys); default: a temporary one, removed at the end.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Concurrent appenders while filling (group commit puts their records in one transaction).
    #[arg(long, default_value_t = 256)]
    appenders: usize,
    /// Rows on a page.
    #[arg(long, default_value_t = 50)]
    page_size: usize,
    /// Timed runs of each search after its first (the first is reported on its own).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One search on one backend.
#[derive(Serialize)]
pub struct SearchResult {
    /// What it selects, in words.
    pub name: String,
    /// Rows on the first page.
    pub rows: usize,
    /// The first run, ms.
    pub first_ms: f64,
    /// Median of the later runs, ms.
    pub median_ms: f64,
    /// Slowest run, ms.
    pub max_ms: f64,
    /// No full scan of the records table in any plan.
    pub index_only: bool,
    /// Every run ≤ 200 ms and no full scan.
    pub pass: bool,
    /// The statements and their plans.
    pub plans: Vec<ExplainedStatement>,
}

/// One backend's fill and searches.
#[derive(Serialize)]
pub struct BackendReport {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Records in the store.
    pub records: u64,
    /// Days they span.
    pub days: u64,
    /// Seconds the fill took (0: the store was filled before).
    pub fill_secs: f64,
    /// Records appended per second.
    pub fill_rate: f64,
    /// Seconds to bring SQLite's person-code side index up to date after the fill.
    pub person_index_secs: f64,
    /// The searches.
    pub searches: Vec<SearchResult>,
}

/// The whole report.
#[derive(Serialize)]
pub struct SearchScaleReport {
    /// Where it ran.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Each backend.
    pub backends: Vec<BackendReport>,
}

fn draft(i: u64) -> Result<RecordDraft> {
    let requester = if i % 1000 == 999 {
        RARE_ORG
    } else {
        ORGS[(i % 4) as usize]
    };
    let provider = ORGS[((i + 1) % 4) as usize];
    let outcome = match i % 100 {
        0 => Outcome::Rejected,
        n if n % 25 == 1 => Outcome::Denied {
            reason: "not_on_flow_list".into(),
        },
        _ => Outcome::Provided,
    };
    let mut d = RecordDraft::new(format!("q-{i:012}"), OrgId::new(requester)?, outcome);
    d.permit_id = Some(format!("p-{i:012}"));
    d.flow_id = Some(if i % 10_000 == 9_999 {
        RARE_FLOW.to_string()
    } else {
        format!("F{:04}", i % FLOWS + 1)
    });
    d.flow_list_version = Some(7);
    d.procedure = Some("child_allowance".into());
    d.provider = Some(OrgId::new(provider)?);
    d.items = vec!["income.total".into(), "tax.resident".into()];
    // A person appears in about eight records: the code of record i is
    // that of person i / 8 (each org has its own code for the same person).
    let person = i / 8;
    d.requester_person_code = Some(person_code(requester, person));
    d.provider_person_code = Some(person_code(provider, person));
    Ok(d)
}

pub(crate) fn person_code(org: &str, person: u64) -> String {
    let tag: String = org.chars().take(2).collect::<String>().to_uppercase();
    format!("{tag}{person:014}")
}

/// Appends `n` records spread over `days` days ending now; progress every tenth.
pub(crate) async fn fill(log: &Arc<RecordLog>, n: u64, days: u64, appenders: usize) -> Result<f64> {
    let end = time::OffsetDateTime::now_utc();
    let span = Duration::from_secs(days.max(1) * 86_400);
    let start_at = end - span;
    let step_ns = span.as_nanos() as f64 / n.max(1) as f64;
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..appenders.max(1) {
        let (log, next, done) = (log.clone(), next.clone(), done.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let at = start_at + Duration::from_nanos((i as f64 * step_ns) as u64);
                log.append_with_clock(draft(i)?, at).await?;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % (n / 10).max(1) == 0 {
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "  {d} records in {secs:.0} s ({:.0}/s)",
                        d as f64 / secs.max(1e-9)
                    );
                }
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A full scan of a records table in a plan line: SQLite's `SCAN records`
/// without an index, PostgreSQL's `Seq Scan on records…` — except on an
/// empty partition (the next month's, the default one), which the planner
/// estimates at cost 0 and rightly reads without an index.
fn full_scan(line: &str) -> bool {
    let l = line.trim();
    let sqlite = l.starts_with("SCAN records") && !l.contains("INDEX");
    let pg = l.contains("Seq Scan on records") && !l.contains("(cost=0.00..0.00 ");
    sqlite || pg
}

fn days_ago(n: i64) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    now - time::Duration::days(n)
}

/// The auditor's typical searches: (name, filter).
fn searches() -> Result<Vec<(String, SearchFilter)>> {
    let last30 = SearchFilter {
        from: Some(days_ago(30)),
        until: Some(days_ago(-1)),
        ..SearchFilter::default()
    };
    let older = SearchFilter {
        from: Some(days_ago(210)),
        until: Some(days_ago(180)),
        ..SearchFilter::default()
    };
    let with = |f: &SearchFilter, g: &dyn Fn(&mut SearchFilter)| {
        let mut f = f.clone();
        g(&mut f);
        f
    };
    Ok(vec![
        ("period: last 30 days".into(), last30.clone()),
        ("period: 30 days, 180–210 days ago".into(), older.clone()),
        (
            "period + org city-kawagoe".into(),
            with(&last30, &|f| f.org = OrgId::new("city-kawagoe").ok()),
        ),
        (
            format!("period + org {RARE_ORG} (0.1%)"),
            with(&older, &|f| f.org = OrgId::new(RARE_ORG).ok()),
        ),
        (
            "period + flow F0007 (5%)".into(),
            with(&older, &|f| f.flow = Some("F0007".into())),
        ),
        (
            format!("period + flow {RARE_FLOW} (0.01%)"),
            with(&older, &|f| f.flow = Some(RARE_FLOW.into())),
        ),
        (
            "period + outcome rejected (1%)".into(),
            with(&older, &|f| f.outcome = Some("rejected".into())),
        ),
        (
            "period + org + flow + outcome (none match)".into(),
            with(&older, &|f| {
                f.org = OrgId::new("city-kawagoe").ok();
                f.flow = Some("F0003".into());
                f.outcome = Some("denied".into());
            }),
        ),
        (
            "person code of the union, no period".into(),
            SearchFilter::default(),
        ),
        ("person code of the union + period".into(), older.clone()),
    ])
}

/// A person code of the union from the middle of the store (records where
/// the union took part: requester when i % 4 == 1, provider when i % 4 == 0).
fn union_person(n: u64) -> String {
    let i = (n / 2) - (n / 2) % 4 + 1;
    person_code(VIEWER, i / 8)
}

async fn run_searches(
    log: &RecordLog,
    n: u64,
    page_size: usize,
    runs: usize,
) -> Result<Vec<SearchResult>> {
    let viewer = OrgId::new(VIEWER)?;
    let page = PageRequest::newest(page_size);
    let mut out = Vec::new();
    for (name, mut filter) in searches()? {
        if name.starts_with("person code") {
            filter.person = Some(union_person(n));
        }
        let t = Instant::now();
        let first = log.search(&viewer, &filter, page).await?;
        let first_ms = t.elapsed().as_secs_f64() * 1000.0;
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            log.search(&viewer, &filter, page).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        let median_ms = times.get(times.len() / 2).copied().unwrap_or(first_ms);
        let max_ms = times.last().copied().unwrap_or(first_ms).max(first_ms);
        let plans = log.explain_search(&viewer, &filter, page).await?;
        let index_only = !plans.iter().flat_map(|p| &p.plan).any(|l| full_scan(l));
        let pass = index_only && max_ms <= LIMIT_MS;
        println!(
            "  {name:<40} rows {:>3}  first {first_ms:>7.1} ms  median {median_ms:>7.1} ms  max {max_ms:>7.1} ms  {}  {}",
            first.rows.len(),
            if index_only { "index" } else { "FULL SCAN" },
            if pass { "PASS" } else { "FAIL" }
        );
        for st in &plans {
            println!(
                "      {}",
                st.sql.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            for line in &st.plan {
                println!("        {line}");
            }
        }
        out.push(SearchResult {
            name,
            rows: first.rows.len(),
            first_ms,
            median_ms,
            max_ms,
            index_only,
            pass,
            plans,
        });
    }
    Ok(out)
}

fn config() -> RecordsConfig {
    RecordsConfig {
        max_batch: 1024,
        purge_interval_secs: 0,
        ..RecordsConfig::default()
    }
}

pub(crate) async fn count(pools: &Pools) -> Result<u64> {
    let n: i64 = match pools {
        Pools::Sqlite { read, .. } => {
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM records")
                .fetch_one(read)
                .await?
        }
        Pools::Postgres(pool) => {
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM records")
                .fetch_one(pool)
                .await?
        }
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// PostgreSQL: the month partitions of the whole span, as the writer
/// creates them month by month in service (same names and storage).
pub(crate) async fn pg_partitions(pools: &Pools, days: u64) -> Result<()> {
    let Pools::Postgres(pool) = pools else {
        return Ok(());
    };
    let key = |t: time::OffsetDateTime| t.year() * 100 + i32::from(u8::from(t.month()));
    let next = |k: i32| {
        if k % 100 >= 12 {
            (k / 100 + 1) * 100 + 1
        } else {
            k + 1
        }
    };
    let mut k = key(days_ago(i64::try_from(days).unwrap_or(i64::MAX) + 1));
    let last = next(key(time::OffsetDateTime::now_utc()));
    while k <= last {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS records_y{:04}m{:02} PARTITION OF records \
             FOR VALUES FROM ({k}) TO ({}) WITH (autovacuum_vacuum_cost_delay = 10)",
            k / 100,
            k % 100,
            next(k)
        );
        sqlx::query(&sql).execute(pool).await?;
        k = next(k);
    }
    Ok(())
}

/// A fresh database on the server of `base`, and its name.
pub(crate) async fn fresh_pg(base: &str) -> Result<(PgStore, String)> {
    let (name, _) = kakehashi_broker::store::create_database(base, "kk_search").await?;
    Ok((open_pg(base, &name).await?, name))
}

/// Opens database `name` on the server of `base`.
pub(crate) async fn open_pg(base: &str, name: &str) -> Result<PgStore> {
    let url = kakehashi_broker::store::url_with_database(base, name);
    Ok(PgStore::open(&url, 16).await?)
}

async fn one(
    backend: &str,
    pools: Pools,
    keys: &std::path::Path,
    args: &SearchScaleArgs,
) -> Result<BackendReport> {
    pg_partitions(&pools, args.days).await?;
    let log = RecordLog::open(pools.clone(), keys, config()).await?;
    let have = count(&pools).await?;
    let (fill_secs, records) = if have >= args.records {
        eprintln!("{backend}: {have} records there already; not filling");
        (0.0, have)
    } else if have == 0 {
        eprintln!(
            "{backend}: filling {} records over {} days ({} appenders)",
            args.records, args.days, args.appenders
        );
        let secs = fill(&log, args.records, args.days, args.appenders).await?;
        (secs, args.records)
    } else {
        bail!("{backend}: the store holds {have} records, fewer than --records; use a fresh --workdir")
    };
    let t = Instant::now();
    log.catch_up_person_index().await?;
    let person_index_secs = t.elapsed().as_secs_f64();
    match &pools {
        Pools::Postgres(pool) => vacuum_analyze(pool).await?,
        Pools::Sqlite { write, .. } => {
            sqlx::query("ANALYZE").execute(write).await?;
        }
    }
    let fill_rate = if fill_secs > 0.0 {
        records as f64 / fill_secs
    } else {
        0.0
    };
    println!(
        "{backend}: {records} records over {} days; fill {fill_secs:.0} s ({fill_rate:.0}/s); person index catch-up {person_index_secs:.1} s",
        args.days
    );
    let searches = run_searches(&log, records, args.page_size, args.runs).await?;
    log.close().await;
    Ok(BackendReport {
        backend: backend.into(),
        records,
        days: args.days,
        fill_secs,
        fill_rate,
        person_index_secs,
        searches,
    })
}

/// `VACUUM ANALYZE records` on a filled store. It takes minutes at 10 M,
/// past the store's statement timeout (which is for requests, not
/// maintenance), so the timeout is lifted on its connection only.
pub(crate) async fn vacuum_analyze(pool: &sqlx::PgPool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::query("VACUUM ANALYZE records")
        .execute(&mut *conn)
        .await?;
    sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Runs `search-scale`.
pub async fn run(args: SearchScaleArgs) -> Result<()> {
    if args.records < 1000 {
        bail!("--records must be at least 1000");
    }
    let machine = Machine::detect();
    eprintln!("machine: {}", machine.text());
    let dir = WorkDir::new(args.workdir.as_deref(), "kakehashi-search-")?;
    let dir = dir.path();
    let mut backends = Vec::new();
    if args.backend != Backend::Postgres {
        let store = SqliteStore::open(&dir.join("records.db")).await?;
        backends.push(one("sqlite", store.pools(), &dir.join("keys"), &args).await?);
    }
    if args.backend != Backend::Sqlite {
        let base = args
            .postgres_url
            .as_deref()
            .context("PostgreSQL needs --postgres-url (scripts/postgres-up prints one)")?;
        let (store, name) = match &args.postgres_db {
            Some(name) => {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    bail!("--postgres-db {name:?}: letters, digits and _ only");
                }
                (open_pg(base, name).await?, name.clone())
            }
            None => fresh_pg(base).await?,
        };
        eprintln!("postgres: database {name}");
        backends.push(one("postgres", store.pools(), &dir.join("keys-pg"), &args).await?);
    }
    let report = SearchScaleReport {
        machine,
        command: crate::approvals::command_line(),
        backends,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    let failed = report
        .backends
        .iter()
        .flat_map(|b| &b.searches)
        .filter(|s| !s.pass)
        .count();
    if failed > 0 {
        bail!("{failed} search(es) over {LIMIT_MS} ms or with a full scan");
    }
    println!("all searches PASS (≤ {LIMIT_MS} ms, index plans)");
    Ok(())
}
