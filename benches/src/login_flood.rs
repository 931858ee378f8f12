//! `kakehashi-bench login-flood`: the exchange's `POST /v1/queries` at half
//! its full rate (as `compare` measures it: the closed-loop rate halved,
//! offered in open loop), in windows without and with a flood of
//! wrong-password logins against the console (100 a second by default).
//! Issue 23: the flood must not raise the exchange's p99 by more than 20 %.
//!
//! The flood logs in as user ids that do not exist, each once: the broker
//! checks a dummy hash for them so the answer takes as long as a real
//! check, and counts the failure under a keyed hash of the id as it counts
//! a user's (in memory on SQLite, a row on PostgreSQL), so every attempt
//! costs one Argon2id verification, and no id is tried often enough to be
//! locked.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use kakehashi_benches::client::{tls_connector, Protocol, Target};
use kakehashi_benches::compare::TargetCheck;
use kakehashi_benches::load::{self, Measured, QueryPlan, RunConfig, Scenario, Workload};
use kakehashi_benches::report::{Latency, Machine, RunReport, ServerMem};
use kakehashi_benches::rss;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::approvals::{command_line, latency};
use crate::console::{self, ConsoleArgs, ConsoleConn};

/// The goal: p99 with the flood ≤ this × p99 without.
const GOAL_RATIO: f64 = 1.2;

/// `kakehashi-bench login-flood`.
#[derive(Args)]
pub struct LoginFloodArgs {
    #[command(flatten)]
    target: crate::TargetArgs,
    #[command(flatten)]
    persons: crate::PersonArgs,
    #[command(flatten)]
    console: ConsoleArgs,
    /// Keep-alive connections of the exchange load.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// HTTP version of the exchange load.
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    /// Closed-loop seconds that find the full query rate (half of it is the load).
    #[arg(long, default_value_t = 20.0)]
    full_secs: f64,
    /// Offer this many queries per second instead of half the measured full rate.
    #[arg(long)]
    half_rate: Option<f64>,
    /// Measured seconds per window.
    #[arg(long, default_value_t = 20.0)]
    secs: f64,
    /// Unmeasured seconds at half rate before each window (a flood runs through them).
    #[arg(long, default_value_t = 10.0)]
    warmup: f64,
    /// Pairs of windows, each without and then with the flood.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Wrong-password logins per second.
    #[arg(long, default_value_t = 100.0)]
    flood_rate: f64,
    /// Console connections the flood uses.
    #[arg(long, default_value_t = 128)]
    flood_connections: usize,
    /// Loopback addresses the flood comes from (127.0.0.2, 127.0.0.3, …; 0:
    /// the default source). The console admits 50 requests/s per address, so
    /// from one address most of a 100/s flood is refused before any hash;
    /// several addresses make every attempt reach the password check.
    #[arg(long, default_value_t = 8)]
    flood_sources: u8,
    /// Open one answer envelope in this many with the private key.
    #[arg(long, default_value_t = 100)]
    open_every: u64,
    /// Reply key pairs generated before the run and used in turn.
    #[arg(long, default_value_t = 1024)]
    key_pool: usize,
    /// Before each window, wait up to this many seconds for the machine to
    /// be quiet (other builds distort the numbers; "oth CPU" shows them).
    #[arg(long, default_value_t = 0)]
    wait_quiet: u64,
    /// Server pid (default: the process listening on --url's port).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What the flood did during one window (its warm-up included).
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    /// Logins offered per second.
    pub offered_rate: f64,
    /// Seconds the flood ran.
    pub seconds: f64,
    /// Attempts sent.
    pub sent: u64,
    /// Answers by kind (`401 unauthenticated` = the password was checked).
    pub answers: BTreeMap<String, u64>,
    /// Latency of the login answers.
    pub latency_ms: Latency,
}

impl FloodReport {
    fn text(&self) -> String {
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!(
            "login flood: {} sent in {:.1} s ({:.1}/s offered {:.0}/s; {}), answered in p50 {:.1} ms, p99 {:.1} ms",
            self.sent,
            self.seconds,
            self.sent as f64 / self.seconds.max(1e-9),
            self.offered_rate,
            answers.join(", "),
            self.latency_ms.p50,
            self.latency_ms.p99
        )
    }
}

/// One measured half-rate window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// 1-based round.
    pub round: u32,
    /// Whether the flood ran.
    pub flood_on: bool,
    /// The exchange's load run.
    pub run: RunReport,
    /// The flood, when on.
    pub flood: Option<FloodReport>,
}

/// The whole `login-flood` run.
#[derive(Debug, Clone, Serialize)]
pub struct LoginFloodReport {
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// The closed-loop run that found the full rate (absent with --half-rate).
    pub full: Option<RunReport>,
    /// Queries offered per second in every window.
    pub half_rate: f64,
    /// The windows in the order they ran.
    pub windows: Vec<Window>,
    /// Latency of all windows without the flood together.
    pub without_ms: Latency,
    /// Latency of all windows with the flood together.
    pub with_ms: Latency,
    /// p99 with / p99 without.
    pub ratio: f64,
    /// The target.
    pub target: TargetCheck,
}

/// Runs the benchmark and prints (and optionally writes) the report.
pub async fn run(args: LoginFloodArgs) -> Result<()> {
    if !(args.flood_rate > 0.0 && args.flood_rate.is_finite()) {
        bail!("--flood-rate must be a positive number");
    }
    if args.half_rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--half-rate must be a positive number");
    }
    let secs =
        Duration::try_from_secs_f64(args.secs).map_err(|_| anyhow!("--secs: not a duration"))?;
    let warmup = Duration::try_from_secs_f64(args.warmup)
        .map_err(|_| anyhow!("--warmup: not a duration"))?;
    let full_secs = Duration::try_from_secs_f64(args.full_secs)
        .map_err(|_| anyhow!("--full-secs: not a duration"))?;
    let machine = Machine::detect();
    let command = command_line();
    eprintln!("machine: {}", machine.text());

    let target = Target::parse(&args.target.url).await?;
    let console_target = Target::parse(&args.console.console_url).await?;
    let console_tls = console::tls(
        &args
            .console
            .ca(args.target.ca.as_deref(), args.target.pki.as_deref())?,
    )?;
    let sources = flood_sources(&console_target, args.flood_sources);
    // The console answers before anything is measured.
    ConsoleConn::connect(
        &console_target,
        &console_tls,
        sources.first().copied().flatten(),
    )
    .await
    .context("the console listener")?;

    let codes = crate::codes_for(&args.persons, &args.target, &target).await?;
    let tls = tls_connector(&args.target.identity()?, args.protocol, true)?;
    let pids = crate::server_pids(&target, args.broker_pid).unwrap_or_default();
    let config = |rate: Option<f64>, duration: Duration, warmup: Duration| RunConfig {
        target: target.clone(),
        tls: tls.clone(),
        protocol: args.protocol,
        connections: args.connections.max(1),
        streams: 1,
        duration: Some(duration),
        count: None,
        warmup,
        rate,
    };
    let workload = || -> Result<Arc<Workload>> {
        Ok(Arc::new(Workload::new(
            Scenario::Query,
            Some(QueryPlan::new(&codes, args.key_pool, args.open_every)?),
        )?))
    };
    let mut drive = Driver {
        target: &target,
        pids: &pids,
        args: &args,
    };

    let (full, half_rate) = match args.half_rate {
        Some(rate) => (None, rate),
        None => {
            eprintln!(
                "== full rate (closed loop, {} connections)",
                args.connections
            );
            let report = drive
                .window(
                    "full rate",
                    workload()?,
                    config(None, full_secs, Duration::from_secs(2)),
                )
                .await?;
            eprint!("{}", report.text());
            if report.throughput <= 0.0 {
                bail!("no query succeeded at full rate");
            }
            // Refusals mean the broker's rate limits set the pace, not its
            // capacity: half of that is not the half rate the target means.
            if report.errors > report.ok / 100 {
                bail!(
                    "{} of the full-rate queries were refused (e.g. {:?}): serve the broker with \
                     [limits] lifted (benches/README.md), or give --half-rate",
                    report.errors,
                    report.error_samples.first()
                );
            }
            let half = report.throughput / 2.0;
            (Some(report), half)
        }
    };

    let mut windows = Vec::new();
    let mut without = histogram()?;
    let mut with = histogram()?;
    for round in 1..=args.rounds.max(1) {
        for flood_on in [false, true] {
            eprintln!(
                "== round {round}: half rate {half_rate:.0}/s {} the login flood",
                if flood_on { "with" } else { "without" }
            );
            wait_quiet(args.wait_quiet).await;
            let flood = if flood_on {
                Some(Flood::start(
                    &console_target,
                    &console_tls,
                    args.flood_rate,
                    args.flood_connections.max(1),
                    &sources,
                    round,
                ))
            } else {
                None
            };
            let label = if flood_on {
                "with flood"
            } else {
                "without flood"
            };
            let measured = drive
                .measure(label, workload()?, config(Some(half_rate), secs, warmup))
                .await;
            let flood = match flood {
                Some(f) => Some(f.stop().await?),
                None => None,
            };
            let (measured, run) = measured?;
            eprint!("{}", run.text());
            if let Some(f) = &flood {
                eprintln!("  {}", f.text());
            }
            let merged = if flood_on { &mut with } else { &mut without };
            merged
                .add(&measured.hist)
                .map_err(|e| anyhow!("merge histograms: {e}"))?;
            windows.push(Window {
                round,
                flood_on,
                run,
                flood,
            });
        }
    }

    let without_ms = latency(&without);
    let with_ms = latency(&with);
    let ratio = with_ms.p99 / without_ms.p99.max(1e-9);
    let errors: u64 = windows.iter().map(|w| w.run.errors).sum();
    let report = LoginFloodReport {
        machine,
        command,
        full,
        half_rate,
        without_ms,
        with_ms,
        ratio,
        target: TargetCheck {
            name: format!(
                "exchange p99 at half rate ({half_rate:.0}/s) with {:.0} wrong-password logins/s",
                args.flood_rate
            ),
            measured: format!(
                "p99 {:.2} ms with, {:.2} ms without = {ratio:.2} ×{}",
                with_ms.p99,
                without_ms.p99,
                if errors > 0 {
                    format!("; {errors} query errors")
                } else {
                    String::new()
                }
            ),
            goal: format!("≤ {GOAL_RATIO:.2} × without"),
            pass: ratio <= GOAL_RATIO && errors == 0,
        },
        windows,
    };
    print!("{}", report.text());
    if let Some(path) = &args.json {
        crate::write_json(path, &report)?;
    }
    Ok(())
}

/// Waits up to `secs` for the machine to be quiet, saying so when it is not.
pub async fn wait_quiet(secs: u64) {
    if secs == 0 {
        return;
    }
    let busy = rss::wait_quiet(Duration::from_secs(secs)).await;
    if busy >= 0.25 {
        eprintln!("note: the machine is busy ({busy:.2} cores used by others); measuring anyway");
    }
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// The flood's source addresses: `n` loopback addresses from 127.0.0.2 for
/// a loopback console, else the default source.
fn flood_sources(console: &Target, n: u8) -> Vec<Option<IpAddr>> {
    if n == 0 || !console.addr.ip().is_loopback() || !console.addr.is_ipv4() {
        return vec![None];
    }
    (0..n.min(250))
        .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))))
        .collect()
}

struct Driver<'a> {
    target: &'a Target,
    pids: &'a [u32],
    args: &'a LoginFloodArgs,
}

impl Driver<'_> {
    /// One load run with the server's CPU and the generator's, as `run` reports them.
    async fn measure(
        &mut self,
        label: &str,
        workload: Arc<Workload>,
        config: RunConfig,
    ) -> Result<(Measured, RunReport)> {
        let rate = config.rate;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sampler = rss::sample(self.pids.to_vec(), stop_rx);
        let client_cpu = rss::cpu_seconds(std::process::id()).unwrap_or(0.0);
        let client_wall = std::time::Instant::now();
        let measured = load::run(workload.clone(), config).await;
        let client_cpu = (rss::cpu_seconds(std::process::id()).unwrap_or(0.0) - client_cpu)
            / client_wall.elapsed().as_secs_f64().max(1e-9);
        let _ = stop_tx.send(true);
        let sampled = sampler.await.unwrap_or_default();
        let measured = measured.with_context(|| format!("{label}: the query load"))?;
        let server = (!self.pids.is_empty()).then(|| ServerMem::new(self.pids.to_vec(), sampled));
        let mut report = RunReport::new(
            label,
            &self.target.url,
            Scenario::Query,
            self.args.protocol,
            self.args.connections,
            1,
            rate,
            &measured,
            workload.opened(),
            server,
        );
        report.set_cpu(client_cpu, &sampled);
        Ok((measured, report))
    }

    async fn window(
        &mut self,
        label: &str,
        workload: Arc<Workload>,
        config: RunConfig,
    ) -> Result<RunReport> {
        Ok(self.measure(label, workload, config).await?.1)
    }
}

/// What one flood worker saw.
struct FloodStats {
    sent: u64,
    answers: BTreeMap<String, u64>,
    hist: Histogram<u64>,
}

/// A running flood of wrong-password logins.
struct Flood {
    stop: Arc<AtomicBool>,
    started: Instant,
    rate: f64,
    workers: JoinSet<Result<FloodStats>>,
}

impl Flood {
    /// Starts `connections` workers; attempt k is due at start + k / rate
    /// and is sent by whichever worker is free (open loop).
    fn start(
        target: &Target,
        tls: &TlsConnector,
        rate: f64,
        connections: usize,
        sources: &[Option<IpAddr>],
        round: u32,
    ) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let run = std::process::id();
        let mut workers = JoinSet::new();
        for w in 0..connections {
            let (target, tls, stop, next) =
                (target.clone(), tls.clone(), stop.clone(), next.clone());
            let source = sources[w % sources.len()];
            workers.spawn(async move {
                let mut stats = FloodStats {
                    sent: 0,
                    answers: BTreeMap::new(),
                    hist: histogram()?,
                };
                let mut conn: Option<ConsoleConn> = None;
                while !stop.load(Ordering::Relaxed) {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep_until(started + Duration::from_secs_f64(k as f64 / rate))
                        .await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if !conn.as_ref().is_some_and(ConsoleConn::is_open) {
                        conn = None;
                        match ConsoleConn::connect(&target, &tls, source).await {
                            Ok(c) => conn = Some(c),
                            Err(_) => {
                                *stats.answers.entry("connect failed".into()).or_insert(0) += 1;
                                // A console that refuses connections is not hammered.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    // An id nobody has, tried once: a dummy hash is checked and
                    // the failure counted, never up to a lock.
                    let body = json!({
                        "user_id": format!("flood-{run}-{round}-{k}"),
                        "password": format!("not-the-password-{k}"),
                    });
                    let sent = Instant::now();
                    stats.sent += 1;
                    let kind = match c
                        .call(Method::POST, "/api/session", Some(&body), None)
                        .await
                    {
                        Ok(reply) => {
                            let micros =
                                u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            stats.hist.saturating_record(micros.max(1));
                            answer_kind(reply.status, &reply.body)
                        }
                        Err(_) => {
                            conn = None;
                            "transport error".to_string()
                        }
                    };
                    *stats.answers.entry(kind).or_insert(0) += 1;
                }
                Ok(stats)
            });
        }
        Flood {
            stop,
            started,
            rate,
            workers,
        }
    }

    /// Stops the flood and sums what its workers saw.
    async fn stop(mut self) -> Result<FloodReport> {
        self.stop.store(true, Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        let mut sent = 0;
        let mut answers = BTreeMap::new();
        let mut hist = histogram()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match tokio::time::timeout_at(deadline, self.workers.join_next()).await {
                Ok(Some(joined)) => {
                    let stats = joined.context("flood worker")??;
                    sent += stats.sent;
                    for (k, v) in stats.answers {
                        *answers.entry(k).or_insert(0) += v;
                    }
                    hist.add(&stats.hist)
                        .map_err(|e| anyhow!("merge histograms: {e}"))?;
                }
                Ok(None) => break,
                Err(_) => {
                    self.workers.abort_all();
                    bail!("the login flood did not stop within 30 s");
                }
            }
        }
        Ok(FloodReport {
            offered_rate: self.rate,
            seconds,
            sent,
            answers,
            latency_ms: latency(&hist),
        })
    }
}

/// How the console answered a login: 401 means the password was checked;
/// 429 is either the hashing queue being full or the per-address limit.
fn answer_kind(status: StatusCode, body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = value["code"].as_str().unwrap_or("");
    let message = value["message"].as_str().unwrap_or("");
    match status {
        StatusCode::UNAUTHORIZED => "401 wrong password (hashed)".into(),
        StatusCode::TOO_MANY_REQUESTS if message.contains("too many logins") => {
            "429 hashing queue full".into()
        }
        StatusCode::TOO_MANY_REQUESTS => "429 per-address limit".into(),
        other => format!("{} {code}", other.as_u16()),
    }
}

impl LoginFloodReport {
    /// A few lines for people.
    pub fn text(&self) -> String {
        let mut out = format!(
            "login-flood: POST /v1/queries at half rate ({:.0}/s{}) without and with wrong-password logins on the console\n  \
             machine: {}\n  command: {}\n",
            self.half_rate,
            match &self.full {
                Some(f) => format!(", full rate {:.0}/s", f.throughput),
                None => String::new(),
            },
            self.machine.text(),
            self.command,
        );
        for w in &self.windows {
            let l = &w.run.latency_ms;
            out.push_str(&format!(
                "  round {} {:<13} {:>6.0} q/s  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms  errors {}  srv CPU {:.2}  gen CPU {:.2}  oth CPU {:.2}\n",
                w.round,
                if w.flood_on { "with flood" } else { "without flood" },
                w.run.throughput,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                w.run.errors,
                w.run.server.as_ref().map(|s| s.cpu_cores).unwrap_or(0.0),
                w.run.client_cpu_cores,
                w.run.other_cpu_cores,
            ));
            if let Some(f) = &w.flood {
                out.push_str(&format!("    {}\n", f.text()));
            }
        }
        out.push_str(&format!(
            "  all windows without: p50 {:.2}  p99 {:.2} ms; with: p50 {:.2}  p99 {:.2} ms; ratio of p99 {:.2}\n",
            self.without_ms.p50, self.without_ms.p99, self.with_ms.p50, self.with_ms.p99, self.ratio
        ));
        out.push_str(&format!(
            "  [{}] {}: {} (goal {})\n",
            if self.target.pass { "PASS" } else { "FAIL" },
            self.target.name,
            self.target.measured,
            self.target.goal
        ));
        out
    }
}
