//! `kakehashi-bench`: load generator for any mutual-TLS HTTPS endpoint, and
//! the side-by-side comparison of Kakehashi with nginx.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use kakehashi_benches::client::{tls_connector, Identity, Protocol, Target};
use kakehashi_benches::compare::{self, CompareOptions};
use kakehashi_benches::floor::{self, Fixture};
use kakehashi_benches::idle;
use kakehashi_benches::load::{self, QueryPlan, RunConfig, Scenario, Workload};
use kakehashi_benches::report::{RunReport, ServerMem};
use kakehashi_benches::rss;
use kakehashi_benches::setup::{self, Codes};

mod approvals;
mod console;
mod login_flood;
mod national;
mod pages;
mod search_scale;

#[derive(Parser)]
#[command(
    name = "kakehashi-bench",
    version,
    about = "Load generator and benchmarks for the Kakehashi broker",
    after_help = "Examples:\n  \
kakehashi-bench run --url https://127.0.0.1:7443 --pki kakehashi-dev/pki --scenario whoami --secs 20\n  \
kakehashi-bench run --url https://127.0.0.1:7443 --pki kakehashi-dev/pki --scenario query --codes codes.json --rate 500\n  \
kakehashi-bench idle --url https://127.0.0.1:7443 --pki kakehashi-dev/pki --connections 1000\n  \
kakehashi-bench crypto-floor\n  \
kakehashi-bench approvals --url https://127.0.0.1:7443 --pki kakehashi-dev/pki --broker-config kakehashi-dev/broker.toml\n  \
kakehashi-bench login-flood --url https://127.0.0.1:7443 --pki kakehashi-dev/pki --codes codes.json\n  \
kakehashi-bench pages --console-url https://127.0.0.1:7444 --pki kakehashi-dev/pki --broker-config kakehashi-dev/broker.toml --people-state people.json\n  \
kakehashi-bench search-scale --records 1000000 --postgres-url \"$(scripts/postgres-up)\"\n  \
kakehashi-bench national --postgres-url \"$(scripts/postgres-up)\"\n  \
kakehashi-bench cluster --postgres-url \"$(scripts/postgres-up)\"\n  \
kakehashi-bench compare --postgres-url \"$(scripts/postgres-up)\" --json compare.json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive one scenario against an endpoint and report throughput, latency and server RSS.
    Run(RunArgs),
    /// Register persons, link them at the provider, deposit copies; write their codes.
    Setup(SetupArgs),
    /// Hold K idle connections open and report the server's memory with them.
    Idle(IdleArgs),
    /// Time the per-query cryptography directly and print the crypto floor.
    CryptoFloor {
        /// Seconds of measurement per operation.
        #[arg(long, default_value_t = 1.0)]
        secs_per_op: f64,
        /// Also write JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Kakehashi on SQLite and PostgreSQL vs nginx, one table (about 5 minutes).
    Compare(CompareArgs),
    /// Pending sensitive queries with their requesters waiting; an operator
    /// approves them; approve → waiting request answered, p50–max.
    Approvals(approvals::ApprovalsArgs),
    /// The exchange at half rate without and with a flood of wrong-password
    /// logins on the console; its p99 in both and their ratio.
    LoginFlood(login_flood::LoginFloodArgs),
    /// Staff of each role fetch every console page they may see, 20 at a
    /// time; per page its size and p50/p99/max against 100 KB and 20 ms.
    Pages(pages::PagesArgs),
    /// Fill a record store (10 million by default) through the record log
    /// and time the auditor's searches' first page, with their plans.
    SearchScale(search_scale::SearchScaleArgs),
    /// A seven-year store of 10 million records on PostgreSQL: disclosure of
    /// one person, a month's export, the purge of the oldest month, verify.
    National(national::NationalArgs),
    /// One broker node against two on the same PostgreSQL database (query
    /// scenario after an unmeasured fill: one node, then `--pairs` times two
    /// and one); the ratio of the means, each two-node run against its
    /// neighbours, and `records verify`.
    Cluster(ClusterArgs),
}

/// Where to connect and as whom.
#[derive(Args, Clone)]
struct TargetArgs {
    /// The endpoint, e.g. https://127.0.0.1:7443.
    #[arg(long)]
    url: String,
    /// A `kakehashi-broker dev` pki directory: ca.crt and ORG.crt/.key.
    #[arg(long)]
    pki: Option<PathBuf>,
    /// The org to act as (its files in --pki).
    #[arg(long, default_value = "union-saitama")]
    org: String,
    /// CA certificate (overrides --pki).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate (overrides --pki/--org).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (overrides --pki/--org).
    #[arg(long)]
    key: Option<PathBuf>,
}

impl TargetArgs {
    fn identity(&self) -> Result<Identity> {
        identity(
            self.pki.as_deref(),
            &self.org,
            &self.ca,
            &self.cert,
            &self.key,
        )
    }
}

fn identity(
    pki: Option<&Path>,
    org: &str,
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> Result<Identity> {
    let from_pki = pki.map(|p| Identity::from_pki(p, org));
    let pick = |explicit: &Option<PathBuf>, fallback: Option<PathBuf>, what: &str| {
        explicit
            .clone()
            .or(fallback)
            .ok_or_else(|| anyhow!("give --{what} or --pki"))
    };
    Ok(Identity {
        ca: pick(ca, from_pki.as_ref().map(|i| i.ca.clone()), "ca")?,
        cert: pick(cert, from_pki.as_ref().map(|i| i.cert.clone()), "cert")?,
        key: pick(key, from_pki.as_ref().map(|i| i.key.clone()), "key")?,
    })
}

/// Who provides, and how many persons to register (query scenario).
#[derive(Args, Clone)]
struct PersonArgs {
    /// The provider org (its certificate in --pki) that links persons and deposits copies.
    #[arg(long, default_value = "city-saitama")]
    provider: String,
    /// Provider certificate (overrides --pki/--provider).
    #[arg(long)]
    provider_cert: Option<PathBuf>,
    /// Provider key (overrides --pki/--provider).
    #[arg(long)]
    provider_key: Option<PathBuf>,
    /// Persons to register.
    #[arg(long, default_value_t = 10_000)]
    persons: u64,
    /// Seed of the Individual Numbers (another seed registers other persons).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Codes file: read by `run` when it exists, written by `setup` (and by `run` after an automatic setup).
    #[arg(long)]
    codes: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    persons: PersonArgs,
    /// What each request does.
    #[arg(long, value_enum, default_value = "whoami")]
    scenario: Scenario,
    /// Keep-alive connections (handshake: concurrent connect loops).
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// HTTP version.
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    /// Requests in flight per h2 connection.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20.0, conflicts_with = "count")]
    secs: f64,
    /// Send exactly this many requests instead of running for --secs.
    #[arg(long)]
    count: Option<u64>,
    /// Unmeasured seconds at the start.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop: offer this many requests per second in total (latency from the due time).
    #[arg(long)]
    rate: Option<f64>,
    /// Open one answer envelope in this many with the private key (query).
    #[arg(long, default_value_t = 100)]
    open_every: u64,
    /// Reply key pairs generated before the run and used in turn.
    #[arg(long, default_value_t = 1024)]
    key_pool: usize,
    /// Server pid for RSS (default: the process listening on the URL's port, if local).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Name in the report.
    #[arg(long)]
    label: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct SetupArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    persons: PersonArgs,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Connections to hold.
    #[arg(long, short = 'c', default_value_t = 1000)]
    connections: usize,
    /// Seconds to hold them before measuring.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// Server pid (default: the process listening on the URL's port).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Also write JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct CompareArgs {
    /// Measured seconds per scenario per target.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Unmeasured warm-up seconds before each run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Unmeasured seconds at half rate before the half-rate run is measured:
    /// the steady state at that rate, not the first seconds after the
    /// full-rate run (PostgreSQL's autovacuum of what that run inserted can
    /// still fall in the window: benches/README.md, "Design decisions in force").
    #[arg(long, default_value_t = 30)]
    half_warmup: u64,
    /// Connections for every scenario.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// HTTP version of the keep-alive scenarios (handshake always uses HTTP/1.1).
    #[arg(long, value_enum, default_value = "http1")]
    protocol: Protocol,
    /// Persons registered for the query scenario.
    #[arg(long, default_value_t = 10_000)]
    persons: u64,
    /// PostgreSQL base URL (scripts/postgres-up prints one); a fresh database is created per run.
    #[arg(long)]
    postgres_url: Option<String>,
    /// Skip nginx.
    #[arg(long)]
    no_nginx: bool,
    /// Idle connections held for the memory figure (0 skips).
    #[arg(long, default_value_t = 1000)]
    idle: usize,
    /// `kakehashi-broker` binary (default: next to this one).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Keep the work directory (configs, logs, databases) here.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Also write the whole report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Before each run, wait up to this many seconds for the machine to be quiet
    /// (other builds distort the numbers; the table shows their CPU as "oth CPU").
    #[arg(long, default_value_t = 0)]
    wait_quiet: u64,
}

#[derive(Args)]
struct ClusterArgs {
    /// PostgreSQL base URL (scripts/postgres-up prints one); a fresh database is created and dropped.
    #[arg(long)]
    postgres_url: String,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Unmeasured warm-up seconds before each run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Unmeasured seconds of load through one node before the first run, so
    /// no run measures a store only minutes old.
    #[arg(long, default_value_t = 20)]
    fill_secs: u64,
    /// Give the second node a database of its own, set up and filled the
    /// same way: the nodes then share the machine and the database server
    /// but not the records chain (what the chain's sharing costs).
    #[arg(long)]
    separate_databases: bool,
    /// Two-node runs, each between two one-node runs (2: one, two, one,
    /// two, one). More of them, shorter, average out a noisy machine.
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    /// Connections in total, split between the nodes.
    #[arg(long, short = 'c', default_value_t = 64)]
    connections: usize,
    /// Persons registered for the queries.
    #[arg(long, default_value_t = 10_000)]
    persons: u64,
    /// `kakehashi-broker` binary (default: next to this one).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Keep configs and logs here.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("write {}", path.display()))
}

fn server_pids(target: &Target, explicit: Option<u32>) -> Option<Vec<u32>> {
    if let Some(pid) = explicit {
        return Some(vec![pid]);
    }
    if !target.addr.ip().is_loopback() {
        return None;
    }
    match rss::pids_listening_on(target.addr.port()) {
        Ok(pids) => Some(pids),
        Err(e) => {
            eprintln!("note: no server RSS: {e:#}");
            None
        }
    }
}

async fn codes_for(args: &PersonArgs, target_args: &TargetArgs, target: &Target) -> Result<Codes> {
    if let Some(path) = &args.codes {
        if path.exists() {
            return Codes::load(path);
        }
    }
    let requester = target_args.identity()?;
    let provider = identity(
        target_args.pki.as_deref(),
        &args.provider,
        &target_args.ca,
        &args.provider_cert,
        &args.provider_key,
    )
    .context("the provider's certificate")?;
    let codes = setup::run(target, &requester, &provider, args.persons, args.seed).await?;
    if let Some(path) = &args.codes {
        codes.save(path)?;
        eprintln!("setup: codes written to {}", path.display());
    }
    Ok(codes)
}

async fn run(args: RunArgs) -> Result<()> {
    let target = Target::parse(&args.target.url).await?;
    let identity = args.target.identity()?;
    let plan = match args.scenario {
        Scenario::Query | Scenario::Refused => {
            let codes = codes_for(&args.persons, &args.target, &target).await?;
            Some(QueryPlan::new(&codes, args.key_pool, args.open_every)?)
        }
        Scenario::Whoami | Scenario::Handshake => None,
    };
    let handshake = args.scenario == Scenario::Handshake;
    let tls = tls_connector(&identity, args.protocol, !handshake)?;
    let workload = Arc::new(Workload::new(args.scenario, plan)?);
    let secs =
        Duration::try_from_secs_f64(args.secs).map_err(|_| anyhow!("--secs: not a duration"))?;
    let warmup = Duration::try_from_secs_f64(args.warmup)
        .map_err(|_| anyhow!("--warmup: not a duration"))?;
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number");
    }
    let config = RunConfig {
        target: target.clone(),
        tls,
        protocol: args.protocol,
        connections: args.connections.max(1),
        streams: args.streams.max(1),
        duration: if args.count.is_some() {
            None
        } else {
            Some(secs)
        },
        count: args.count,
        warmup: if args.count.is_some() {
            Duration::ZERO
        } else {
            warmup
        },
        rate: args.rate,
    };
    let pids = server_pids(&target, args.broker_pid);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Without a pid the sampler still measures the machine's CPU.
    let sampler = rss::sample(pids.clone().unwrap_or_default(), stop_rx);
    let client_cpu = rss::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let client_wall = std::time::Instant::now();
    let measured = load::run(workload.clone(), config).await;
    let client_cpu = (rss::cpu_seconds(std::process::id()).unwrap_or(0.0) - client_cpu)
        / client_wall.elapsed().as_secs_f64().max(1e-9);
    let _ = stop_tx.send(true);
    let sampled = sampler.await.unwrap_or_default();
    let measured = measured?;
    let server = pids.map(|pids| ServerMem::new(pids, sampled));
    let mut report = RunReport::new(
        args.label.as_deref().unwrap_or(&target.url),
        &target.url,
        args.scenario,
        args.protocol,
        args.connections,
        if args.protocol == Protocol::Http2 {
            args.streams
        } else {
            1
        },
        args.rate,
        &measured,
        workload.opened(),
        server,
    );
    report.set_cpu(client_cpu, &sampled);
    print!("{}", report.text());
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    if report.ok == 0 {
        bail!("no request succeeded");
    }
    Ok(())
}

async fn main_async(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Approvals(args) => approvals::run(args).await,
        Command::LoginFlood(args) => login_flood::run(args).await,
        Command::Pages(args) => pages::run(args).await,
        Command::SearchScale(args) => search_scale::run(args).await,
        Command::National(args) => national::run(args).await,
        Command::Cluster(args) => {
            let broker_bin = match args.broker_bin {
                Some(b) => b,
                None => compare::default_broker_bin()?,
            };
            let opts = kakehashi_benches::cluster::ClusterOptions {
                broker_bin,
                postgres_url: args.postgres_url,
                connections: args.connections.max(2),
                secs: args.secs.max(1),
                warmup: args.warmup,
                fill_secs: args.fill_secs,
                separate_databases: args.separate_databases,
                pairs: args.pairs,
                persons: args.persons.max(1),
                workdir: args.workdir,
            };
            let report = kakehashi_benches::cluster::run(&opts).await?;
            print!("{}", report.text());
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(())
        }
        Command::Setup(args) => {
            if args.persons.codes.is_none() {
                bail!("setup needs --codes FILE to write the codes to");
            }
            let target = Target::parse(&args.target.url).await?;
            codes_for(&args.persons, &args.target, &target)
                .await
                .map(drop)
        }
        Command::Idle(args) => {
            let target = Target::parse(&args.target.url).await?;
            let tls = tls_connector(&args.target.identity()?, Protocol::Http1, true)?;
            let pids = server_pids(&target, args.broker_pid);
            let hold = Duration::try_from_secs_f64(args.hold)
                .map_err(|_| anyhow!("--hold: not a duration"))?;
            let report = idle::hold(
                &target.url,
                &target,
                &tls,
                Protocol::Http1,
                args.connections,
                hold,
                pids.as_deref(),
            )
            .await?;
            print!("{}", report.text());
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(())
        }
        Command::CryptoFloor { secs_per_op, json } => {
            let per_op = Duration::try_from_secs_f64(secs_per_op)
                .map_err(|_| anyhow!("--secs-per-op: not a duration"))?;
            let fixture = Fixture::new().await?;
            let floor = floor::measure(&fixture, per_op)?;
            print!("{}", floor.text());
            if let Some(path) = &json {
                write_json(path, &floor)?;
            }
            Ok(())
        }
        Command::Compare(args) => {
            let broker_bin = match args.broker_bin {
                Some(b) => b,
                None => compare::default_broker_bin()?,
            };
            if !broker_bin.is_file() {
                bail!(
                    "{} not found: cargo build --release -p kakehashi-broker",
                    broker_bin.display()
                );
            }
            let opts = CompareOptions {
                broker_bin,
                secs: args.secs.max(1),
                warmup: args.warmup,
                half_warmup: args.half_warmup,
                connections: args.connections.max(1),
                protocol: args.protocol,
                persons: args.persons.max(1),
                postgres_url: args.postgres_url,
                nginx: if args.no_nginx {
                    None
                } else {
                    compare::find_nginx()
                },
                idle: args.idle,
                workdir: args.workdir,
                wait_quiet: Duration::from_secs(args.wait_quiet),
            };
            let report = compare::run(&opts).await?;
            println!();
            print!("{}", report.text());
            if let Some(path) = &args.json {
                write_json(path, &report)?;
            }
            Ok(())
        }
    }
}

/// The same allocator as the broker: with glibc's, allocation was ~12 % of
/// the generator's CPU, taken from the cores the broker is measured on.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kakehashi-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_async(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kakehashi-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
