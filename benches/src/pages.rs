//! `kakehashi-bench pages`: staff of each role (operator, auditor,
//! administrator) logged in once each, then `-c` concurrent staff, each
//! from its own loopback address as a person at their own browser, open
//! the console's pages for `--secs` seconds. Per page: the largest body,
//! requests, p50/p99/max, against issue 24's bounds (HTML ≤ 100 KB, p99 ≤
//! 20 ms with 20 concurrent staff).
//!
//! A person is a closed loop: open a page, read it for a think time, open
//! the next. Think times are drawn from an exponential distribution with
//! mean `--think-ms` and the staff start at random moments, so requests
//! arrive as from people working independently (a Poisson-like stream),
//! not in lockstep. `--rate R` instead sends R requests/s per worker on
//! one shared clock, a stress test far beyond what staff do.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;

use crate::console::{self, ConsoleArgs, ConsoleConn, Operator, Session};
use kakehashi_benches::client::Target;
use kakehashi_benches::report::Machine;

/// Issue 24's bounds.
const MAX_BYTES: usize = 100 * 1024;
const MAX_P99_MS: f64 = 20.0;

/// The console's GET pages by role, from `broker/src/console/endpoints.rs`
/// (`TABLE`, rows of `Endpoint::Page`). `{user_id}` is the administrator's
/// own id, `{version}` the flow-list version of `--flow-version`,
/// `{query_id}` the query of `--query-id` or one made through `--url`
/// (skipped without either). A path that answers 404 is skipped with a
/// note; `--page ROLE:PATH` adds more.
const PAGES: &[(&str, &str)] = &[
    ("public", "/login"),
    ("public", "/static/console.css"),
    ("public", "/static/console.js"),
    ("operator", "/"),
    ("operator", "/approvals"),
    ("operator", "/approvals/{query_id}"),
    ("auditor", "/"),
    ("auditor", "/records"),
    ("auditor", "/operation-log"),
    ("auditor", "/keys"),
    ("administrator", "/"),
    ("administrator", "/orgs"),
    ("administrator", "/users"),
    ("administrator", "/users/{user_id}"),
    ("administrator", "/flows"),
    ("administrator", "/flows/{version}"),
];

const ROLES: [&str; 3] = ["operator", "auditor", "administrator"];

/// Arguments of `pages`.
#[derive(clap::Args)]
pub struct PagesArgs {
    #[command(flatten)]
    console: ConsoleArgs,
    /// A `kakehashi-broker dev` pki directory (its ca.crt signs the console's certificate).
    #[arg(long)]
    pki: Option<PathBuf>,
    /// CA certificate (overrides --pki).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The staff's credentials kept between runs (JSON by role: user id,
    /// password, TOTP secret; mode 0600): read when it exists, written after
    /// every login (a TOTP step is accepted once).
    #[arg(long)]
    people_state: Option<PathBuf>,
    /// For a role without credentials in --people-state: add a new user of
    /// that role with `kakehashi-broker users --config FILE add` on this broker.
    #[arg(long)]
    broker_config: Option<PathBuf>,
    /// `kakehashi-broker` binary (default: next to this one).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// The operator's org.
    #[arg(long, default_value = "city-saitama")]
    operator_org: String,
    /// The auditor's org.
    #[arg(long, default_value = "union-saitama")]
    auditor_org: String,
    /// The administrator's org.
    #[arg(long, default_value = "union-saitama")]
    admin_org: String,
    /// Concurrent staff (workers), each on its own connection and loopback address.
    #[arg(long, short = 'c', default_value_t = 20)]
    concurrency: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Mean think time of a person between one page's answer and the next
    /// request, ms (exponentially distributed); 0 sends each request when
    /// the previous one is answered.
    #[arg(long, default_value_t = 1000.0)]
    think_ms: f64,
    /// Instead of think times: requests per second per worker, all workers
    /// on the same clock (stress; the console admits 50/s per address).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Another page, `ROLE:PATH` (role: public, operator, auditor, administrator).
    #[arg(long = "page", value_name = "ROLE:PATH")]
    pages: Vec<String>,
    /// Only the pages given with --page.
    #[arg(long)]
    only_listed: bool,
    /// Flow-list version for `/flows/{version}`.
    #[arg(long, default_value = "1")]
    flow_version: String,
    /// Query id for `/approvals/{query_id}`; without one, and without
    /// `--url`, that page is skipped.
    #[arg(long)]
    query_id: Option<String>,
    /// The exchange listener of a dev broker (with `--pki`): without
    /// `--query-id`, one pending sensitive query is made there (the union
    /// asks `city-saitama`, whose operator sees it) for `/approvals/{query_id}`.
    #[arg(long)]
    url: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One page's figures.
#[derive(Serialize)]
pub struct PageResult {
    /// Role fetching it.
    pub role: String,
    /// Path.
    pub path: String,
    /// Largest body, bytes.
    pub max_bytes: usize,
    /// Answered 200.
    pub requests: u64,
    /// Answered otherwise, or failed.
    pub errors: u64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// ≤ 100 KB, p99 ≤ 20 ms, no errors.
    pub pass: bool,
}

/// A page left out, and why.
#[derive(Serialize)]
pub struct Skipped {
    /// Role.
    pub role: String,
    /// Path.
    pub path: String,
    /// Why.
    pub note: String,
}

/// The whole report.
#[derive(Serialize)]
pub struct PagesReport {
    /// Where it ran.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Workers.
    pub concurrency: usize,
    /// Seconds measured.
    pub secs: u64,
    /// Mean think time, ms (closed loop; with `rate` 0).
    pub think_ms: f64,
    /// Requests per second per worker (0: closed loop with think times).
    pub rate: f64,
    /// Requests per second, all workers.
    pub throughput: f64,
    /// Each page.
    pub pages: Vec<PageResult>,
    /// Every page's requests together: median, ms.
    pub all_p50_ms: f64,
    /// Every page's requests together: 99th percentile, ms.
    pub all_p99_ms: f64,
    /// Load average (1 min) of the machine at the end.
    pub loadavg: Option<f64>,
    /// Pages left out.
    pub skipped: Vec<Skipped>,
}

#[derive(Default, Serialize, Deserialize)]
struct People {
    #[serde(flatten)]
    by_role: BTreeMap<String, Operator>,
}

fn load_people(path: Option<&Path>) -> Result<People> {
    match path {
        Some(p) if p.exists() => {
            let text = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a people state file", p.display()))
        }
        _ => Ok(People::default()),
    }
}

/// Written readable by its owner only (passwords and TOTP secrets).
fn save_people(path: &Path, people: &People) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(&serde_json::to_vec(people)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// `kakehashi-broker users --config CONFIG add ID --org ORG --role ROLE`;
/// the temporary password it prints once (its stdout never goes into an
/// error message).
fn add_user(bin: &Path, config: &Path, user_id: &str, org: &str, role: &str) -> Result<String> {
    let out = Command::new(bin)
        .arg("users")
        .arg("--config")
        .arg(config)
        .args(["add", user_id, "--org", org, "--role", role])
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "kakehashi-broker users add failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.split_once("temporary password:")
                .map(|(_, p)| p.trim().to_string())
        })
        .filter(|p| !p.is_empty())
        .context("kakehashi-broker users add printed no temporary password")
}

/// Logs in one person per role in `roles`, adding users where needed.
async fn log_in_all(
    args: &PagesArgs,
    target: &Target,
    tls: &TlsConnector,
    roles: &[&str],
) -> Result<(BTreeMap<String, Session>, BTreeMap<String, String>)> {
    let mut people = load_people(args.people_state.as_deref())?;
    let mut sessions = BTreeMap::new();
    let mut ids = BTreeMap::new();
    for role in roles {
        if !people.by_role.contains_key(*role) {
            let Some(config) = &args.broker_config else {
                bail!("no {role} in --people-state: give --broker-config to add one");
            };
            let bin = match &args.broker_bin {
                Some(b) => b.clone(),
                None => kakehashi_benches::compare::default_broker_bin()?,
            };
            let org = match *role {
                "operator" => &args.operator_org,
                "auditor" => &args.auditor_org,
                _ => &args.admin_org,
            };
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let user_id = format!("bench-pages-{role}-{unix}");
            let password = add_user(&bin, config, &user_id, org, role)?;
            eprintln!("{role} {user_id} added to {org} with the host CLI");
            people.by_role.insert(
                role.to_string(),
                Operator {
                    user_id,
                    password,
                    totp_secret: None,
                    last_totp_step: 0,
                },
            );
        }
        let Some(person) = people.by_role.get_mut(*role) else {
            continue;
        };
        let (session, changed) = console::log_in(target, tls, person)
            .await
            .with_context(|| format!("log {} in", person.user_id))?;
        if changed {
            eprintln!(
                "{role} {}: password changed and TOTP enrolled",
                person.user_id
            );
        }
        ids.insert(role.to_string(), person.user_id.clone());
        sessions.insert(role.to_string(), session);
        // Saved after every login: the TOTP step used must not be used again.
        if let Some(path) = &args.people_state {
            save_people(path, &people)?;
        }
    }
    Ok((sessions, ids))
}

/// Per-worker tallies of one page.
struct Tally {
    hist: Histogram<u64>,
    max_bytes: usize,
    errors: u64,
}

impl Tally {
    fn new() -> Result<Tally> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            max_bytes: 0,
            errors: 0,
        })
    }
}

/// The worker's source address: 127.0.0.(10 + w) for a loopback IPv4
/// console (one address per person, as the console limits per address).
fn source(target: &Target, w: usize) -> Option<IpAddr> {
    match target.addr.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let last = u8::try_from(10 + w % 240).unwrap_or(10);
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        }
        _ => None,
    }
}

/// How a worker paces its requests.
#[derive(Clone, Copy)]
enum Pace {
    /// A person: a think time (exponential, this mean) after each answer.
    Think(Duration),
    /// Stress: one request per interval on a clock shared by all workers.
    Rate(Duration),
}

/// An exponentially distributed think time of mean `mean`.
fn think(mean: Duration) -> Duration {
    let u: f64 = rand::random();
    // 1 - u lies in (0, 1]: its logarithm is finite.
    mean.mul_f64(-(1.0 - u).ln()).min(mean * 20)
}

async fn worker(
    w: usize,
    target: Target,
    tls: TlsConnector,
    pages: Vec<(String, String, Option<Session>)>,
    until: Instant,
    pace: Pace,
) -> Result<Vec<Tally>> {
    let mut tallies = Vec::new();
    for _ in &pages {
        tallies.push(Tally::new()?);
    }
    let src = source(&target, w);
    let mut conn: Option<ConsoleConn> = None;
    let mut sessions: Vec<Option<Session>> = pages.iter().map(|p| p.2.clone()).collect();
    let mut next = Instant::now();
    let mut k = w % pages.len().max(1);
    if let Pace::Think(mean) = pace {
        // People start at different moments.
        tokio::time::sleep(mean.mul_f64(rand::random::<f64>())).await;
    }
    while Instant::now() < until {
        match pace {
            Pace::Rate(iv) => {
                tokio::time::sleep_until(next.into()).await;
                next += iv;
            }
            Pace::Think(_) => {}
        }
        if Instant::now() >= until {
            break;
        }
        if conn.as_ref().is_none_or(|c| !c.is_open()) {
            conn = Some(ConsoleConn::connect(&target, &tls, src).await?);
        }
        let Some(c) = conn.as_mut() else { continue };
        let path = &pages[k].1;
        let started = Instant::now();
        let reply = c.call(Method::GET, path, None, sessions[k].as_mut()).await;
        let micros = started.elapsed().as_micros() as u64;
        let t = &mut tallies[k];
        match reply {
            Ok(r) if r.status == StatusCode::OK => {
                t.hist.record(micros.max(1))?;
                t.max_bytes = t.max_bytes.max(r.body.len());
            }
            Ok(_) => t.errors += 1,
            Err(_) => {
                t.errors += 1;
                conn = None;
            }
        }
        // The next page: any other, as people move between pages.
        k = if pages.len() > 1 {
            (k + 1 + rand::random::<usize>() % (pages.len() - 1)) % pages.len()
        } else {
            0
        };
        if let Pace::Think(mean) = pace {
            if !mean.is_zero() {
                tokio::time::sleep(think(mean)).await;
            }
        }
    }
    Ok(tallies)
}

/// Runs `pages`.
pub async fn run(args: PagesArgs) -> Result<()> {
    if args.concurrency == 0 || args.secs == 0 {
        bail!("-c and --secs must be at least 1");
    }
    let pace = match args.rate {
        0.0 if args.think_ms >= 0.0 && args.think_ms.is_finite() => {
            Pace::Think(Duration::from_secs_f64(args.think_ms / 1000.0))
        }
        0.0 => bail!("--think-ms must be 0 or a positive number"),
        r if r > 0.0 && r.is_finite() => Pace::Rate(Duration::from_secs_f64(1.0 / r)),
        _ => bail!("--rate must be 0 or a positive number"),
    };
    let machine = Machine::detect();
    eprintln!("machine: {}", machine.text());
    let target = Target::parse(&args.console.console_url).await?;
    let tls = console::tls(&args.console.ca(args.ca.as_deref(), args.pki.as_deref())?)?;

    let mut wanted: Vec<(String, String)> = if args.only_listed {
        Vec::new()
    } else {
        PAGES
            .iter()
            .map(|(r, p)| (r.to_string(), p.to_string()))
            .collect()
    };
    for spec in &args.pages {
        let (role, path) = spec
            .split_once(':')
            .filter(|(r, p)| (*r == "public" || ROLES.contains(r)) && p.starts_with('/'))
            .with_context(|| format!("--page {spec:?}: expected ROLE:/path"))?;
        wanted.push((role.to_string(), path.to_string()));
    }
    let roles: Vec<&str> = ROLES
        .iter()
        .copied()
        .filter(|r| wanted.iter().any(|(w, _)| w == r))
        .collect();
    let (sessions, ids) = log_in_all(&args, &target, &tls, &roles).await?;
    let query_id = match (&args.query_id, &args.url, &args.pki) {
        (Some(q), _, _) => Some(q.clone()),
        (None, Some(url), Some(pki)) => {
            let id = crate::approvals::one_pending(url, pki).await?;
            eprintln!("a pending query made for /approvals/{{query_id}}: {id}");
            Some(id)
        }
        (None, Some(_), None) => bail!("--url needs --pki (the dev broker's certificates)"),
        (None, None, _) => None,
    };

    // Placeholders, then one probe per page: what does not answer 200 is
    // left out with a note (a page not built yet answers 404).
    let mut skipped = Vec::new();
    let mut pages: Vec<(String, String, Option<Session>)> = Vec::new();
    let mut probe = ConsoleConn::connect(&target, &tls, source(&target, 0)).await?;
    for (role, path) in wanted {
        let mut p = path.clone();
        if p.contains("{query_id}") {
            match &query_id {
                Some(q) => p = p.replace("{query_id}", q),
                None => {
                    skipped.push(Skipped {
                        role,
                        path,
                        note: "no --query-id or --url".into(),
                    });
                    continue;
                }
            }
        }
        p = p.replace("{version}", &args.flow_version);
        if let Some(id) = ids.get("administrator") {
            p = p.replace("{user_id}", id);
        }
        let mut session = sessions.get(&role).cloned();
        if !probe.is_open() {
            probe = ConsoleConn::connect(&target, &tls, source(&target, 0)).await?;
        }
        let reply = probe.call(Method::GET, &p, None, session.as_mut()).await?;
        if reply.status != StatusCode::OK {
            let note = format!("answers {}", reply.status);
            eprintln!("skipped {role} {p}: {note}");
            skipped.push(Skipped {
                role,
                path: p,
                note,
            });
            continue;
        }
        pages.push((role, p, session));
    }
    drop(probe);
    if pages.is_empty() {
        bail!("no page answers 200");
    }

    eprintln!(
        "{} pages, {} staff, {} s, {}",
        pages.len(),
        args.concurrency,
        args.secs,
        match pace {
            Pace::Rate(_) => format!("{} requests/s per worker", args.rate),
            Pace::Think(_) => format!("think time {} ms on average", args.think_ms),
        }
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(args.secs);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        tasks.spawn(worker(
            w,
            target.clone(),
            tls.clone(),
            pages.clone(),
            until,
            pace,
        ));
    }
    let mut merged: Vec<Tally> = Vec::new();
    for _ in &pages {
        merged.push(Tally::new()?);
    }
    while let Some(done) = tasks.join_next().await {
        for (m, t) in merged.iter_mut().zip(done??) {
            m.hist.add(&t.hist)?;
            m.max_bytes = m.max_bytes.max(t.max_bytes);
            m.errors += t.errors;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let ms = |v: u64| v as f64 / 1000.0;
    let mut results = Vec::new();
    let mut total = 0;
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for ((role, path, _), t) in pages.iter().zip(&merged) {
        total += t.hist.len();
        all.add(&t.hist)?;
        let p99 = ms(t.hist.value_at_quantile(0.99));
        results.push(PageResult {
            role: role.clone(),
            path: path.clone(),
            max_bytes: t.max_bytes,
            requests: t.hist.len(),
            errors: t.errors,
            p50_ms: ms(t.hist.value_at_quantile(0.5)),
            p99_ms: p99,
            max_ms: ms(t.hist.max()),
            pass: t.max_bytes <= MAX_BYTES && p99 <= MAX_P99_MS && t.errors == 0,
        });
    }
    let report = PagesReport {
        machine,
        command: crate::approvals::command_line(),
        concurrency: args.concurrency,
        secs: args.secs,
        think_ms: args.think_ms,
        rate: args.rate,
        throughput: total as f64 / elapsed,
        pages: results,
        all_p50_ms: ms(all.value_at_quantile(0.5)),
        all_p99_ms: ms(all.value_at_quantile(0.99)),
        loadavg: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok()),
        skipped,
    };
    print(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    let failed = report.pages.iter().filter(|p| !p.pass).count();
    if failed > 0 {
        bail!(
            "{failed} page(s) over {MAX_BYTES} bytes, over {MAX_P99_MS} ms at p99, or with errors"
        );
    }
    Ok(())
}

fn print(r: &PagesReport) {
    let pace = if r.rate > 0.0 {
        format!("{} requests/s per worker", r.rate)
    } else {
        format!("think time {} ms on average", r.think_ms)
    };
    println!(
        "{} staff, {pace}, {} s, {:.1} requests/s in all, load average {}",
        r.concurrency,
        r.secs,
        r.throughput,
        r.loadavg.map_or("?".into(), |l| format!("{l:.2}"))
    );
    println!(
        "{:<14} {:<28} {:>9} {:>8} {:>6} {:>8} {:>8} {:>8}  result",
        "role", "page", "bytes", "requests", "errors", "p50 ms", "p99 ms", "max ms"
    );
    for p in &r.pages {
        println!(
            "{:<14} {:<28} {:>9} {:>8} {:>6} {:>8.2} {:>8.2} {:>8.2}  {}",
            p.role,
            p.path,
            p.max_bytes,
            p.requests,
            p.errors,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            if p.pass { "PASS" } else { "FAIL" }
        );
    }
    println!(
        "{:<14} {:<28} {:>9} {:>8} {:>6} {:>8.2} {:>8.2}",
        "all",
        "",
        "",
        r.pages.iter().map(|p| p.requests).sum::<u64>(),
        r.pages.iter().map(|p| p.errors).sum::<u64>(),
        r.all_p50_ms,
        r.all_p99_ms
    );
    for s in &r.skipped {
        println!("skipped: {} {} ({})", s.role, s.path, s.note);
    }
}
