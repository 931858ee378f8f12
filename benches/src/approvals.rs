//! `kakehashi-bench approvals`: N sensitive queries pending, each with its
//! requester waiting on `GET /v1/queries/{id}?wait=60`; an operator of the
//! provider logs in on the console and approves them one after another or
//! at a fixed rate. For each query: the time from sending the approve call
//! to the waiting GET returning `provided` (issue 23: p99 ≤ 50 ms with
//! 1,000 queries waiting). Every answer is opened with its reply key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http::{Method, StatusCode};
use kakehashi_benches::client::{tls_connector, Conn, Identity, Protocol, Target};
use kakehashi_benches::compare::{self, TargetCheck};
use kakehashi_benches::report::{Latency, Machine, ServerMem};
use kakehashi_benches::{rss, setup};
use kakehashi_interfaces::envelope::{open_answer, EnvelopeContext};
use kakehashi_interfaces::{
    DepositReport, OrgId, QueryResponse, QueryStatus, RegistrationReport, ReplyKeyPair,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::console::{self, ConsoleArgs, ConsoleConn, Operator, Session};

/// The goal for the approve → answered latency.
const GOAL_P99_MS: f64 = 50.0;
/// The flow, procedure and items of a query that needs an operator's approval.
const FLOW: &str = "F-0121";
const PROCEDURE: &str = "benefit-reduction";
const ITEMS: [&str; 2] = ["local_tax.income", "welfare.public_assistance"];
/// Environment variable holding the `--operator`'s password.
const PASSWORD_ENV: &str = "KAKEHASHI_BENCH_PASSWORD";
/// Longest a 429 (rate limit) is retried, once a second.
const MAX_THROTTLED_TRIES: u32 = 60;

/// `kakehashi-bench approvals`.
#[derive(Args)]
pub struct ApprovalsArgs {
    #[command(flatten)]
    target: crate::TargetArgs,
    #[command(flatten)]
    console: ConsoleArgs,
    /// The provider org: its operator approves; its certificate (in --pki)
    /// links the persons and deposits their copies.
    #[arg(long, default_value = "city-saitama")]
    provider: String,
    /// Provider certificate (overrides --pki/--provider).
    #[arg(long)]
    provider_cert: Option<PathBuf>,
    /// Provider key (overrides --pki/--provider).
    #[arg(long)]
    provider_key: Option<PathBuf>,
    /// Sensitive queries made pending, each with a requester waiting on it.
    #[arg(long, default_value_t = 1000)]
    pending: usize,
    /// HTTP version of the waiting requests: http1 holds one connection per
    /// waiting request; http2 multiplexes them over --connections.
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    /// Connections the waiting requests share (http2 only).
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Approvals per second; 0 sends each when the previous one is answered.
    /// The default stays under the console's per-address limit (50/s).
    #[arg(long, default_value_t = 40.0)]
    approve_rate: f64,
    /// Operator state kept between runs (user id, password, TOTP secret;
    /// mode 0600): read when it exists, written after a first login.
    #[arg(long)]
    operator_state: Option<PathBuf>,
    /// When there is no state file yet: add a new operator of --provider
    /// with `kakehashi-broker users --config FILE add` on this broker.
    #[arg(long)]
    broker_config: Option<PathBuf>,
    /// `kakehashi-broker` binary (default: next to this one).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Otherwise: this operator, its password (temporary or current) in
    /// $KAKEHASHI_BENCH_PASSWORD.
    #[arg(long, conflicts_with = "broker_config")]
    operator: Option<String>,
    /// Seed of the persons' Individual Numbers (default: from the clock, so
    /// every run registers new persons).
    #[arg(long)]
    seed: Option<u64>,
    /// Before approving, wait up to this many seconds for the machine to be
    /// quiet (other builds distort the numbers).
    #[arg(long, default_value_t = 0)]
    wait_quiet: u64,
    /// Server pid for its CPU and RSS (default: the process listening on --url's port).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one `approvals` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ApprovalsReport {
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Pending queries with a requester waiting.
    pub pending: usize,
    /// HTTP version of the waiting requests.
    pub protocol: Protocol,
    /// Connections the waiting requests used.
    pub connections: usize,
    /// Approvals offered per second (`None`: one after another).
    pub approve_rate: Option<f64>,
    /// Approve calls answered `approved`.
    pub approved: u64,
    /// Waiting requests that returned `provided` (their latency recorded).
    pub provided: u64,
    /// Answers opened with the reply key and found to carry the items.
    pub opened: u64,
    /// Seconds from the first approve call to the last waiting request answered.
    pub seconds: f64,
    /// Approve call sent → waiting GET returned `provided`.
    pub wake_ms: Latency,
    /// The approve call itself (sent → answered).
    pub approve_call_ms: Latency,
    /// 429 answers retried (the org's or the console's rate limits).
    pub throttled: u64,
    /// Failed approvals or waits.
    pub errors: u64,
    /// The first error messages.
    pub error_samples: Vec<String>,
    /// The broker's CPU and memory while approving.
    pub server: Option<ServerMem>,
    /// The target.
    pub target: TargetCheck,
}

/// A pending query and the key its answer is sealed to.
struct Pending {
    id: String,
    keys: ReplyKeyPair,
}

/// State the waiting requests and the approver share.
struct Shared {
    base: Instant,
    /// When the approve call of query k was sent: µs after `base`, plus 1 (0: not yet).
    sent_at: Vec<AtomicU64>,
    /// Waiting requests in flight right now.
    waiting: AtomicUsize,
    throttled: AtomicU64,
    give_up: Instant,
    pending: Vec<Pending>,
    context: (OrgId, OrgId),
    target: Target,
    tls: TlsConnector,
}

impl Shared {
    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }
}

enum Outcome {
    Provided { micros: u64 },
    Failed(String),
}

fn histogram() -> Result<Histogram<u64>> {
    // 1 µs .. 10 min at 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// Percentiles of a histogram of microseconds, in milliseconds.
pub fn latency(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        mean: h.mean() / 1000.0,
        p50: ms(0.5),
        p90: ms(0.9),
        p99: ms(0.99),
        p999: ms(0.999),
        max: h.max() as f64 / 1000.0,
    }
}

/// The whole command line, for the report.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Runs the benchmark and prints (and optionally writes) the report.
pub async fn run(args: ApprovalsArgs) -> Result<()> {
    if args.pending == 0 {
        bail!("--pending must be at least 1");
    }
    let approve_rate = match args.approve_rate {
        0.0 => None,
        r if r > 0.0 && r.is_finite() => Some(r),
        _ => bail!("--approve-rate must be 0 or a positive number"),
    };
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
    let requester = args.target.identity()?;
    let provider = crate::identity(
        args.target.pki.as_deref(),
        &args.provider,
        &args.target.ca,
        &args.provider_cert,
        &args.provider_key,
    )
    .context("the provider's certificate")?;

    // The operator first: wrong credentials fail the run before any setup.
    let mut operator = operator(&args)?;
    let (mut session, changed) = console::log_in(&console_target, &console_tls, &mut operator)
        .await
        .with_context(|| format!("log {} in", operator.user_id))?;
    match &args.operator_state {
        // Saved after every login: the TOTP step used must not be used again.
        Some(path) => {
            operator.save(path)?;
            if changed {
                eprintln!(
                    "operator {}: password changed and TOTP enrolled; kept in {} for later runs",
                    operator.user_id,
                    path.display()
                );
            }
        }
        None if changed => eprintln!(
            "operator {}: password changed and TOTP enrolled (not kept: no --operator-state)",
            operator.user_id
        ),
        None => {}
    }

    let started = std::time::Instant::now();
    let persons = args.pending.min(setup::MAX_BATCH_LINES);
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let union_tls = tls_connector(&requester, Protocol::Http1, true)?;
    let (requester_id, provider_id, codes) =
        register(&target, &union_tls, &provider, persons, seed).await?;
    let pending = make_pending(&target, &union_tls, &codes, &provider_id, args.pending).await?;
    eprintln!(
        "setup: {persons} persons registered, linked and deposited; {} queries pending, in {:.1} s",
        pending.len(),
        started.elapsed().as_secs_f64()
    );

    let tls = tls_connector(&requester, args.protocol, true)?;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        sent_at: (0..pending.len()).map(|_| AtomicU64::new(0)).collect(),
        waiting: AtomicUsize::new(0),
        throttled: AtomicU64::new(0),
        // Generous: the approvals themselves take N / rate seconds.
        give_up: Instant::now()
            + Duration::from_secs(120)
            + Duration::from_secs_f64(args.pending as f64 / approve_rate.unwrap_or(20.0)),
        pending,
        context: (
            OrgId::new(requester_id).map_err(|e| anyhow!("{e}"))?,
            OrgId::new(provider_id).map_err(|e| anyhow!("{e}"))?,
        ),
        target: target.clone(),
        tls,
    });
    // Quiet first, then the requests that wait (they wait at most 60 s).
    crate::login_flood::wait_quiet(args.wait_quiet).await;
    let (waiters, connections) = start_waiting(&shared, args.protocol, args.connections).await?;
    settle(&shared).await?;
    eprintln!(
        "{} requesters waiting on {connections} connection(s); approving {}",
        shared.pending.len(),
        match approve_rate {
            Some(r) => format!("at {r:.0}/s"),
            None => "one after another".into(),
        }
    );

    let pids = crate::server_pids(&target, args.broker_pid);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sampler = rss::sample(pids.clone().unwrap_or_default(), stop_rx);
    let approving = Instant::now();
    let approver = approve_all(
        &shared,
        &console_target,
        &console_tls,
        &mut session,
        approve_rate,
    )
    .await;
    let results = collect(waiters).await?;
    let seconds = approving.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let sampled = sampler.await.unwrap_or_default();
    let approver = approver?;

    let mut wake = histogram()?;
    let mut errors = approver.errors;
    let mut samples = approver.samples;
    let mut provided = 0u64;
    for outcome in results {
        match outcome {
            Outcome::Provided { micros } => {
                provided += 1;
                wake.saturating_record(micros.max(1));
            }
            Outcome::Failed(msg) => {
                errors += 1;
                if samples.len() < 5 && !samples.contains(&msg) {
                    samples.push(msg);
                }
            }
        }
    }
    let wake_ms = latency(&wake);
    let pass = errors == 0 && provided == shared.pending.len() as u64 && wake_ms.p99 <= GOAL_P99_MS;
    let report = ApprovalsReport {
        machine,
        command,
        pending: shared.pending.len(),
        protocol: args.protocol,
        connections,
        approve_rate,
        approved: approver.approved,
        provided,
        opened: provided,
        seconds,
        wake_ms,
        approve_call_ms: latency(&approver.hist),
        throttled: shared.throttled.load(Ordering::Relaxed),
        errors,
        error_samples: samples,
        server: pids.map(|p| ServerMem::new(p, sampled)),
        target: TargetCheck {
            name: format!(
                "approve → waiting GET answered, {} queries waiting",
                shared.pending.len()
            ),
            measured: format!(
                "p99 {:.2} ms ({provided} answered, {errors} errors)",
                wake_ms.p99
            ),
            goal: format!("p99 ≤ {GOAL_P99_MS:.0} ms, every waiting request answered"),
            pass,
        },
    };
    print!("{}", report.text());
    if let Some(path) = &args.json {
        crate::write_json(path, &report)?;
    }
    Ok(())
}

/// The operator to log in: from the state file, a new user added on the
/// host, or `--operator` with its password in the environment.
fn operator(args: &ApprovalsArgs) -> Result<Operator> {
    if let Some(path) = &args.operator_state {
        if path.exists() {
            return Operator::load(path);
        }
    }
    if let Some(config) = &args.broker_config {
        let bin = match &args.broker_bin {
            Some(b) => b.clone(),
            None => compare::default_broker_bin()?,
        };
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let user_id = format!("bench-op-{unix}");
        let password = add_operator(&bin, config, &user_id, &args.provider)?;
        eprintln!(
            "operator {user_id} added to {} with the host CLI",
            args.provider
        );
        return Ok(Operator {
            user_id,
            password,
            totp_secret: None,
            last_totp_step: 0,
        });
    }
    if let Some(user_id) = &args.operator {
        let password = std::env::var(PASSWORD_ENV)
            .map_err(|_| anyhow!("--operator needs its password in ${PASSWORD_ENV}"))?;
        return Ok(Operator {
            user_id: user_id.clone(),
            password,
            totp_secret: None,
            last_totp_step: 0,
        });
    }
    bail!("no operator: give --operator-state (an existing file), --broker-config, or --operator")
}

/// `kakehashi-broker users --config CONFIG add ID --org ORG --role operator`;
/// the temporary password it prints once. Its stdout never goes into an
/// error message (it holds the password).
fn add_operator(bin: &Path, config: &Path, user_id: &str, org: &str) -> Result<String> {
    let out = Command::new(bin)
        .arg("users")
        .arg("--config")
        .arg(config)
        .args(["add", user_id, "--org", org, "--role", "operator"])
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

async fn post_ok(conn: &mut Conn, path: &str, body: String) -> Result<Bytes> {
    let reply = conn.send(Method::POST, path, Bytes::from(body)).await?;
    if reply.status != StatusCode::OK {
        bail!(
            "POST {path}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    Ok(reply.body)
}

/// Person codes by line of a registration report.
fn codes_by_line(report: &RegistrationReport, lines: usize, who: &str) -> Result<Vec<String>> {
    if !report.confirmation_list.is_empty() {
        bail!(
            "{who}: {} lines were not applied (give another --seed)",
            report.confirmation_list.len()
        );
    }
    let mut codes = vec![String::new(); lines];
    for p in &report.applied {
        let slot = usize::try_from(p.line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| codes.get_mut(l))
            .with_context(|| format!("{who}: report names line {} of {lines}", p.line))?;
        *slot = p.person_code.to_string();
    }
    if codes.iter().any(String::is_empty) {
        bail!("{who}: the report does not cover every line");
    }
    Ok(codes)
}

/// Registers `persons` persons as the requester, links them as the provider
/// and deposits copies with the sensitive item; returns both org ids and the
/// requester's codes.
async fn register(
    target: &Target,
    union_tls: &TlsConnector,
    provider: &Identity,
    persons: usize,
    seed: u64,
) -> Result<(String, String, Vec<String>)> {
    let city_tls = tls_connector(provider, Protocol::Http1, true)?;
    let mut union = Conn::connect(target, union_tls, Protocol::Http1).await?;
    let mut city = Conn::connect(target, &city_tls, Protocol::Http1).await?;
    let requester_id = setup::whoami(&mut union).await?.org_id.to_string();
    let provider_id = setup::whoami(&mut city).await?.org_id.to_string();
    let lines: Vec<String> = (0..persons as u64)
        .map(|i| {
            json!({
                "basic": {
                    "name": format!("承認試験 {seed}-{i}"),
                    "sex": "male",
                    "birth_date": "1950-10-01",
                    "address": "埼玉県さいたま市浦和区常盤6-4-4",
                },
                "individual_number": setup::individual_number(seed, i),
            })
            .to_string()
        })
        .collect();
    let registered: RegistrationReport =
        serde_json::from_slice(&post_ok(&mut union, "/v1/persons", lines.join("\n")).await?)?;
    let union_codes = codes_by_line(&registered, lines.len(), "registration")?;
    let linked: RegistrationReport =
        serde_json::from_slice(&post_ok(&mut city, "/v1/persons", lines.join("\n")).await?)?;
    let city_codes = codes_by_line(&linked, lines.len(), "linking")?;
    let copies: Vec<String> = city_codes
        .iter()
        .enumerate()
        .map(|(k, code)| {
            json!({"person": code, "items": {
                "local_tax.income": 1_800_000 + k as u64,
                "local_tax.taxable_status": "課税",
                "welfare.public_assistance": k % 7 == 0,
            }})
            .to_string()
        })
        .collect();
    let deposit: DepositReport =
        serde_json::from_slice(&post_ok(&mut city, "/v1/copies", copies.join("\n")).await?)?;
    if deposit.applied != copies.len() as u64 {
        bail!(
            "deposit applied {} of {} copies",
            deposit.applied,
            copies.len()
        );
    }
    Ok((requester_id, provider_id, union_codes))
}

/// Makes `n` sensitive queries, over 16 connections; each must answer `pending`.
async fn make_pending(
    target: &Target,
    tls: &TlsConnector,
    codes: &[String],
    provider: &str,
    n: usize,
) -> Result<Vec<Pending>> {
    let next = Arc::new(AtomicUsize::new(0));
    let codes = Arc::new(codes.to_vec());
    let mut set = JoinSet::new();
    for _ in 0..16.min(n) {
        let (target, tls, next, codes) = (target.clone(), tls.clone(), next.clone(), codes.clone());
        let provider = provider.to_string();
        set.spawn(async move {
            let mut conn = Conn::connect(&target, &tls, Protocol::Http1).await?;
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(made);
                }
                let keys = ReplyKeyPair::generate();
                let body = json!({
                    "flow_id": FLOW,
                    "procedure": PROCEDURE,
                    "provider": provider,
                    "person": codes[i % codes.len()],
                    "items": ITEMS,
                    "reply_key": keys.public().to_base64url(),
                })
                .to_string();
                let mut tries = 0;
                let reply = loop {
                    if !conn.is_open() {
                        conn = Conn::connect(&target, &tls, Protocol::Http1).await?;
                    }
                    let reply = conn
                        .send(Method::POST, "/v1/queries", Bytes::from(body.clone()))
                        .await?;
                    if reply.status == StatusCode::TOO_MANY_REQUESTS && tries < MAX_THROTTLED_TRIES
                    {
                        tries += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    break reply;
                };
                if reply.status != StatusCode::OK {
                    bail!(
                        "POST /v1/queries: {} {}",
                        reply.status,
                        String::from_utf8_lossy(&reply.body).chars().take(200).collect::<String>()
                    );
                }
                let response: QueryResponse = serde_json::from_slice(&reply.body)
                    .context("POST /v1/queries: not a QueryResponse")?;
                if response.status != QueryStatus::Pending {
                    bail!(
                        "a query of {FLOW} answered {} instead of pending (is the item sensitive in the flow list?)",
                        response.status
                    );
                }
                made.push((i, Pending {
                    id: response.query_id.to_string(),
                    keys,
                }));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(joined) = set.join_next().await {
        all.extend(joined.context("pending task")??);
    }
    // In the order they were asked: the approver goes oldest first.
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, p)| p).collect())
}

/// One pending sensitive query for a page that shows one: one person
/// registered by `union-saitama` of the dev `pki`, linked and deposited by
/// `city-saitama`, then asked for under the sensitive flow. Returns its id.
pub async fn one_pending(url: &str, pki: &std::path::Path) -> Result<String> {
    let target = Target::parse(url).await?;
    let requester = crate::identity(Some(pki), "union-saitama", &None, &None, &None)?;
    let provider = crate::identity(Some(pki), "city-saitama", &None, &None, &None)?;
    let tls = tls_connector(&requester, Protocol::Http1, true)?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (_, provider_id, codes) = register(&target, &tls, &provider, 1, seed).await?;
    let pending = make_pending(&target, &tls, &codes, &provider_id, 1).await?;
    pending
        .first()
        .map(|p| p.id.clone())
        .context("no pending query was made")
}

/// Starts one waiting task per pending query; returns them and the
/// number of connections they use.
async fn start_waiting(
    shared: &Arc<Shared>,
    protocol: Protocol,
    connections: usize,
) -> Result<(JoinSet<Outcome>, usize)> {
    let mut set = JoinSet::new();
    match protocol {
        Protocol::Http1 => {
            // One connection per waiting request, opened by the task itself
            // right before its request (an idle connection is closed by the
            // broker's header-read timeout); 64 handshakes at a time.
            let handshakes = Arc::new(Semaphore::new(64));
            for k in 0..shared.pending.len() {
                let (shared, handshakes) = (shared.clone(), handshakes.clone());
                set.spawn(async move {
                    let conn = {
                        let _permit = handshakes.acquire().await;
                        Conn::connect(&shared.target, &shared.tls, Protocol::Http1).await
                    };
                    match conn {
                        Ok(conn) => wait_for(&shared, k, conn, Protocol::Http1).await,
                        Err(e) => Outcome::Failed(format!("connect: {e:#}")),
                    }
                });
            }
            Ok((set, shared.pending.len()))
        }
        Protocol::Http2 => {
            let connections = connections.clamp(1, shared.pending.len());
            let mut conns = Vec::with_capacity(connections);
            for _ in 0..connections {
                conns.push(Conn::connect(&shared.target, &shared.tls, Protocol::Http2).await?);
            }
            for k in 0..shared.pending.len() {
                let stream = conns[k % connections]
                    .clone_stream()
                    .context("an h2 connection without streams")?;
                let shared = shared.clone();
                set.spawn(async move { wait_for(&shared, k, stream, Protocol::Http2).await });
            }
            Ok((set, connections))
        }
    }
}

/// Waits on query `k` until it is `provided`, asking again when a wait
/// ends while it is still pending.
async fn wait_for(shared: &Shared, k: usize, mut conn: Conn, protocol: Protocol) -> Outcome {
    let pending = &shared.pending[k];
    let path = format!("/v1/queries/{}?wait=60", pending.id);
    let mut failures = 0;
    let mut throttled = 0;
    loop {
        if Instant::now() >= shared.give_up {
            return Outcome::Failed("still pending when the run gave up".into());
        }
        shared.waiting.fetch_add(1, Ordering::Relaxed);
        let result = conn.send(Method::GET, &path, Bytes::new()).await;
        shared.waiting.fetch_sub(1, Ordering::Relaxed);
        let done = Instant::now();
        let reply = match result {
            Ok(reply) => reply,
            Err(e) => {
                failures += 1;
                if failures > 3 || protocol == Protocol::Http2 {
                    return Outcome::Failed(format!("GET: {e:#}"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                match Conn::connect(&shared.target, &shared.tls, protocol).await {
                    Ok(c) => conn = c,
                    Err(e) => return Outcome::Failed(format!("reconnect: {e:#}")),
                }
                continue;
            }
        };
        if reply.status == StatusCode::TOO_MANY_REQUESTS && throttled < MAX_THROTTLED_TRIES {
            throttled += 1;
            shared.throttled.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if reply.status != StatusCode::OK {
            return Outcome::Failed(format!(
                "GET: {} {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
                    .chars()
                    .take(160)
                    .collect::<String>()
            ));
        }
        let response: QueryResponse = match serde_json::from_slice(&reply.body) {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("GET: not a QueryResponse: {e}")),
        };
        match response.status {
            QueryStatus::Pending => continue,
            QueryStatus::Provided => {}
            other => return Outcome::Failed(format!("status {other}")),
        }
        let sent = shared.sent_at[k].load(Ordering::Acquire);
        if sent == 0 {
            return Outcome::Failed("provided before its approval was sent".into());
        }
        let micros = shared.micros(done).saturating_sub(sent - 1);
        // After the clock: proof that the answer is the approved one.
        return match open(shared, pending, &response) {
            Ok(()) => Outcome::Provided { micros },
            Err(e) => Outcome::Failed(format!("{}: {e:#}", pending.id)),
        };
    }
}

/// Opens the sealed answer with the query's reply key; it must carry both items.
fn open(shared: &Shared, pending: &Pending, response: &QueryResponse) -> Result<()> {
    let envelope = response
        .envelope
        .as_ref()
        .context("provided without an envelope")?;
    let context = EnvelopeContext {
        query_id: response.query_id.clone(),
        requester: shared.context.0.clone(),
        provider: shared.context.1.clone(),
    };
    let payload = open_answer(&pending.keys, &context, envelope)
        .map_err(|e| anyhow!("the envelope does not open: {e}"))?;
    for item in ITEMS {
        if !payload.items.keys().any(|k| k.as_str() == item) {
            bail!("the opened answer lacks {item}");
        }
    }
    Ok(())
}

/// Waits until every waiting request has been in flight for a second
/// (throttled ones are retried), at most 90 s.
async fn settle(shared: &Shared) -> Result<()> {
    let n = shared.pending.len();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut all_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if shared.waiting.load(Ordering::Relaxed) >= n {
            let since = *all_since.get_or_insert(now);
            if now - since >= Duration::from_secs(1) {
                return Ok(());
            }
        } else {
            all_since = None;
        }
        if now >= deadline {
            bail!(
                "only {} of {n} requesters were waiting after 90 s",
                shared.waiting.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct ApproverStats {
    approved: u64,
    errors: u64,
    samples: Vec<String>,
    hist: Histogram<u64>,
}

/// Approves every pending query in order, on a fresh console connection
/// with the logged-in session.
async fn approve_all(
    shared: &Shared,
    target: &Target,
    tls: &TlsConnector,
    session: &mut Session,
    rate: Option<f64>,
) -> Result<ApproverStats> {
    let mut conn = ConsoleConn::connect(target, tls, None).await?;
    let mut stats = ApproverStats {
        approved: 0,
        errors: 0,
        samples: Vec::new(),
        hist: histogram()?,
    };
    let start = Instant::now();
    for (k, pending) in shared.pending.iter().enumerate() {
        if let Some(rate) = rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
        }
        let path = format!("/api/approvals/{}/approve", pending.id);
        let mut tries = 0;
        let problem = loop {
            if !conn.is_open() {
                conn = ConsoleConn::connect(target, tls, None).await?;
            }
            let sent = Instant::now();
            shared.sent_at[k].store(shared.micros(sent) + 1, Ordering::Release);
            let reply = match conn.call(Method::POST, &path, None, Some(session)).await {
                Ok(r) => r,
                Err(e) if tries < 3 => {
                    tries += 1;
                    eprintln!("note: approve {}: {e:#}; again", pending.id);
                    continue;
                }
                Err(e) => break Some(format!("approve: {e:#}")),
            };
            let answered = Instant::now();
            if reply.status == StatusCode::TOO_MANY_REQUESTS && tries < MAX_THROTTLED_TRIES {
                tries += 1;
                shared.throttled.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            if reply.status != StatusCode::OK {
                let problem = format!("approve: {}", reply.describe());
                if matches!(
                    reply.status,
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                ) {
                    bail!("{problem} (the operator's session ended or lacks the role)");
                }
                break Some(problem);
            }
            if reply.json()?["decision"] != "approved" {
                break Some("approve: the decision is not `approved`".into());
            }
            let micros = u64::try_from((answered - sent).as_micros()).unwrap_or(u64::MAX);
            stats.hist.saturating_record(micros.max(1));
            stats.approved += 1;
            break None;
        };
        if let Some(msg) = problem {
            stats.errors += 1;
            if stats.samples.len() < 3 {
                stats.samples.push(msg);
            }
        }
    }
    Ok(stats)
}

/// Every waiting task's outcome, or fails after the run's deadline.
async fn collect(mut set: JoinSet<Outcome>) -> Result<Vec<Outcome>> {
    let mut all = Vec::with_capacity(set.len());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(joined)) => all.push(joined.context("waiting task")?),
            Ok(None) => return Ok(all),
            Err(_) => {
                set.abort_all();
                bail!(
                    "{} waiting requests unanswered 90 s after the approvals ended",
                    set.len()
                );
            }
        }
    }
}

impl ApprovalsReport {
    /// A few lines for people.
    pub fn text(&self) -> String {
        let line = |l: &Latency| {
            format!(
                "p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
                l.p50, l.p90, l.p99, l.max, l.mean
            )
        };
        let mut out = format!(
            "approvals: {} sensitive queries pending, each with its requester waiting on GET ?wait=60 ({}, {} connection{}); approved {}\n  \
             machine: {}\n  command: {}\n  \
             approved {} in {:.1} s; waiting requests answered `provided` {} (every answer opened with its reply key)\n  \
             approve sent → waiting GET returned, ms: {}\n  \
             the approve call itself, ms:             {}\n",
            self.pending,
            match self.protocol {
                Protocol::Http1 => "HTTP/1.1",
                Protocol::Http2 => "h2",
            },
            self.connections,
            if self.connections == 1 { "" } else { "s" },
            match self.approve_rate {
                Some(r) => format!("at {r:.0}/s"),
                None => "one after another".into(),
            },
            self.machine.text(),
            self.command,
            self.approved,
            self.seconds,
            self.provided,
            line(&self.wake_ms),
            line(&self.approve_call_ms),
        );
        if self.throttled > 0 {
            out.push_str(&format!("  429 answers retried: {}\n", self.throttled));
        }
        if self.errors > 0 {
            out.push_str(&format!(
                "  errors: {} (e.g. {:?})\n",
                self.errors, self.error_samples
            ));
        }
        if let Some(s) = &self.server {
            out.push_str(&format!(
                "  server while approving: CPU {:.2} cores, RSS peak {:.1} MiB (pid {:?})\n",
                s.cpu_cores,
                s.peak_rss_kib as f64 / 1024.0,
                s.pids
            ));
        }
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
