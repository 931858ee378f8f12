//! `kakehashi-bench compare`: Kakehashi on SQLite, Kakehashi on PostgreSQL
//! and nginx (the floor of any mutual-TLS gateway: a fixed response after
//! the same handshake) on this machine, one after the other, driven by the
//! same generator at the same concurrency; one table with ratios to nginx
//! and to the crypto floor, and the targets checked.

use crate::workdir::WorkDir;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kakehashi_broker::store::create_database;
use serde::Serialize;

use crate::background;
use crate::client::{tls_connector, Identity, Protocol, Target};
use crate::floor::{self, Fixture, Floor};
use crate::idle::{self, IdleReport};
use crate::load::{self, QueryPlan, RunConfig, Scenario, Workload};
use crate::report::{Machine, RunReport, ServerMem};
use crate::rss;
use crate::setup;

/// The sample orgs `kakehashi-broker dev` issues certificates for.
pub(crate) const ORGS: &[(&str, &str, &str)] = &[
    ("union-saitama", "union", "埼玉県後期高齢者医療広域連合"),
    ("city-saitama", "municipality", "さいたま市"),
    ("city-kawagoe", "municipality", "川越市"),
    ("agency-pension", "agency", "年金機構"),
];

/// Limits high enough that the broker's rate limiting never shapes the load.
const BENCH_LIMITS: &str = "[limits]\nper_org_per_second = 1000000\nper_org_burst = 1000000\n\
per_address_per_second = 1000000\nper_address_burst = 1000000\nmax_connections = 10000\n";

/// What to compare and for how long.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// `kakehashi-broker` binary.
    pub broker_bin: PathBuf,
    /// Measured seconds per scenario per target.
    pub secs: u64,
    /// Unmeasured warm-up seconds before each run.
    pub warmup: u64,
    /// Unmeasured seconds at half rate before a half-rate run.
    pub half_warmup: u64,
    /// Connections (64 in the issue).
    pub connections: usize,
    /// HTTP version.
    pub protocol: Protocol,
    /// Persons registered for the query scenario.
    pub persons: u64,
    /// PostgreSQL base URL (a fresh database is created in it); `None` skips PostgreSQL.
    pub postgres_url: Option<String>,
    /// nginx binary; `None` skips nginx.
    pub nginx: Option<PathBuf>,
    /// Idle connections for the memory figure (0 skips).
    pub idle: usize,
    /// Work directory to keep (a temporary one otherwise).
    pub workdir: Option<PathBuf>,
    /// Before each run, wait up to this long for the machine to be quiet.
    pub wait_quiet: Duration,
}

/// One target check of the issue.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is checked.
    pub name: String,
    /// The measured value, in words.
    pub measured: String,
    /// The goal, in words.
    pub goal: String,
    /// Met?
    pub pass: bool,
}

/// Everything a compare run produced.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// The machine.
    pub machine: Machine,
    /// Connections and protocol used.
    pub connections: usize,
    /// HTTP version.
    pub protocol: Protocol,
    /// Measured seconds per run.
    pub secs: u64,
    /// The crypto floor.
    pub floor: Floor,
    /// Every load run.
    pub runs: Vec<RunReport>,
    /// Idle-connection memory figures.
    pub idle: Vec<IdleReport>,
    /// The issue's targets.
    pub targets: Vec<TargetCheck>,
    /// Targets that were skipped and why.
    pub notes: Vec<String>,
}

/// A child process we started, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Server {
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Result<Server> {
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Server {
            name: name.to_string(),
            child,
            log,
        })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `addr` accepts TCP connections.
    pub(crate) async fn wait_listening(&mut self, addr: SocketAddr) -> Result<()> {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before listening:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{} did not listen on {addr} within 60 s:\n{}",
            self.name,
            self.log_tail()
        )
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first: the broker finishes in-flight requests and signs its
        // last checkpoint; nginx does a fast shutdown.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub(crate) fn free_port() -> Result<u16> {
    // The OS picks a free port; it is released at once for the server to bind.
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs a tool to completion; its stdout, or an error with its output.
pub(crate) fn run_tool(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Adds the bench's orgs ([`ORGS`]) to the database `config` names, with
/// `kakehashi-broker orgs add`.
pub(crate) fn add_orgs(broker_bin: &Path, config: &Path) -> Result<()> {
    for (id, kind, name) in ORGS {
        run_tool(
            Command::new(broker_bin)
                .arg("orgs")
                .arg("--config")
                .arg(config)
                .args(["add", id, "--kind", kind, "--name", name]),
            "kakehashi-broker orgs add",
        )?;
    }
    Ok(())
}

/// Drops database `db`, closing its connections. A cleanup: on failure the
/// database stays (named after the bench, `kk_bench_*` or `kk_cluster_*`)
/// to be dropped by hand; `scripts/drop-test-databases` sweeps only the
/// tests' `kk_test_*`.
pub(crate) fn drop_database(base: &str, db: &str) {
    let _ = run_tool(
        Command::new("psql")
            .args([base, "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")),
        "psql DROP DATABASE",
    );
}

pub(crate) fn broker_config(listen: SocketAddr, storage: &str, keys: &str) -> String {
    format!(
        "[listen]\naddress = \"{listen}\"\n\n[tls]\ncert = \"dev/pki/server.crt\"\nkey = \"dev/pki/server.key\"\n\
client_ca = [\"dev/pki/ca.crt\"]\ncrls = [\"dev/pki/ca.crl\"]\n\n[storage]\n{storage}\n\n[keys]\ndir = \"{keys}\"\n\n\
[exchange]\nflow_list = \"dev/flows.toml\"\n\n{BENCH_LIMITS}"
    )
}

fn nginx_config(dir: &Path, pki: &Path, listen: SocketAddr, protocol: Protocol) -> String {
    let d = dir.display();
    let p = pki.display();
    let h2 = if protocol == Protocol::Http2 {
        " http2"
    } else {
        ""
    };
    format!(
        r#"# nginx as the floor of a mutual-TLS gateway: same certificates, fixed response.
worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen {listen} ssl{h2};
        ssl_certificate {p}/server.crt;
        ssl_certificate_key {p}/server.key;
        ssl_client_certificate {p}/ca.crt;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        location = /v1/whoami {{
            default_type application/json;
            return 200 '{{"org_id":"x"}}';
        }}
    }}
}}
"#
    )
}

struct Ctx<'a> {
    opts: &'a CompareOptions,
    pki: PathBuf,
    runs: Vec<RunReport>,
    idle: Vec<IdleReport>,
    /// The database of the PostgreSQL target while it is driven.
    pg_url: Option<String>,
}

impl Ctx<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn drive(
        &mut self,
        name: &str,
        target: &Target,
        pids: &[u32],
        scenario: Scenario,
        plan: Option<QueryPlan>,
        secs: u64,
        rate: Option<f64>,
    ) -> Result<RunReport> {
        let identity = Identity::from_pki(&self.pki, "union-saitama");
        let protocol = if scenario == Scenario::Handshake {
            Protocol::Http1
        } else {
            self.opts.protocol
        };
        let tls = tls_connector(&identity, protocol, scenario != Scenario::Handshake)?;
        let workload = Arc::new(Workload::new(scenario, plan)?);
        let config = RunConfig {
            target: target.clone(),
            tls,
            protocol,
            connections: self.opts.connections,
            streams: 1,
            duration: Some(Duration::from_secs(secs)),
            count: None,
            warmup: Duration::from_secs(match rate {
                Some(_) => self.opts.half_warmup,
                None => self.opts.warmup,
            }),
            rate,
        };
        if !self.opts.wait_quiet.is_zero() {
            let busy = rss::wait_quiet(self.opts.wait_quiet).await;
            if busy >= 0.25 {
                eprintln!(
                    "note: the machine is busy ({busy:.2} cores used by others); measuring anyway"
                );
            }
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sampler = rss::sample(pids.to_vec(), stop_rx);
        let client_cpu = rss::cpu_seconds(std::process::id()).unwrap_or(0.0);
        let client_wall = std::time::Instant::now();
        // Half-rate runs: what else happened in the measured window (it
        // starts after the warm-up) — disk writes, database maintenance.
        let window = match rate {
            Some(_) => Some(background::Window::start(
                Duration::from_secs(self.opts.half_warmup),
                self.pg_url.clone(),
                Some(background::Metrics {
                    target: target.clone(),
                    tls: tls_connector(&identity, Protocol::Http1, true)?,
                }),
            )),
            None => None,
        };
        let measured = load::run(workload.clone(), config).await;
        let background = match window {
            Some(window) => window.finish().await,
            None => None,
        };
        let client_cpu = (rss::cpu_seconds(std::process::id()).unwrap_or(0.0) - client_cpu)
            / client_wall.elapsed().as_secs_f64().max(1e-9);
        let _ = stop_tx.send(true);
        let sampled = sampler.await.unwrap_or_default();
        let measured = measured.with_context(|| format!("{name} {}", scenario.name()))?;
        let server = ServerMem::new(pids.to_vec(), sampled);
        let label = match rate {
            Some(_) => format!("{name}@half"),
            None => name.to_string(),
        };
        let mut report = RunReport::new(
            &label,
            &target.url,
            scenario,
            protocol,
            self.opts.connections,
            1,
            rate,
            &measured,
            workload.opened(),
            Some(server),
        );
        report.set_cpu(client_cpu, &sampled);
        report.background = background;
        eprint!("{}", report.text());
        self.runs.push(report.clone());
        Ok(report)
    }

    async fn idle(&mut self, name: &str, target: &Target, pids: &[u32]) -> Result<()> {
        if self.opts.idle == 0 {
            return Ok(());
        }
        let identity = Identity::from_pki(&self.pki, "union-saitama");
        let tls = tls_connector(&identity, Protocol::Http1, true)?;
        let report = idle::hold(
            name,
            target,
            &tls,
            Protocol::Http1,
            self.opts.idle,
            Duration::from_secs(3),
            Some(pids),
        )
        .await?;
        eprint!("{}", report.text());
        self.idle.push(report);
        Ok(())
    }

    /// Idle test on the fresh process, then setup and the four load runs.
    async fn kakehashi(
        &mut self,
        name: &str,
        config: &Path,
        addr: SocketAddr,
        log: PathBuf,
    ) -> Result<()> {
        eprintln!("== {name}");
        let mut server = Server::spawn(
            name,
            Command::new(&self.opts.broker_bin)
                .arg("serve")
                .arg("--config")
                .arg(config),
            log,
        )?;
        server.wait_listening(addr).await?;
        let pids = vec![server.child.id()];
        let target = Target::parse(&format!("https://{addr}")).await?;
        self.idle(name, &target, &pids).await?;

        let codes = setup::run(
            &target,
            &Identity::from_pki(&self.pki, "union-saitama"),
            &Identity::from_pki(&self.pki, "city-saitama"),
            self.opts.persons,
            1,
        )
        .await?;
        let secs = self.opts.secs;
        self.drive(name, &target, &pids, Scenario::Whoami, None, secs, None)
            .await?;
        self.drive(name, &target, &pids, Scenario::Handshake, None, secs, None)
            .await?;
        let plan = || QueryPlan::new(&codes, 1024, 100);
        let max = self
            .drive(
                name,
                &target,
                &pids,
                Scenario::Query,
                Some(plan()?),
                secs,
                None,
            )
            .await?;
        if max.throughput > 0.0 {
            self.drive(
                name,
                &target,
                &pids,
                Scenario::Query,
                Some(plan()?),
                (secs / 2).max(5),
                Some(max.throughput / 2.0),
            )
            .await?;
        }
        server.stop();
        Ok(())
    }
}

fn find_run<'a>(runs: &'a [RunReport], target: &str, scenario: Scenario) -> Option<&'a RunReport> {
    runs.iter()
        .find(|r| r.target == target && r.scenario == scenario && r.rate.is_none())
}

/// Runs the whole comparison.
pub async fn run(opts: &CompareOptions) -> Result<CompareReport> {
    let machine = Machine::detect();
    eprintln!("machine: {}", machine.text());
    let work = WorkDir::new(opts.workdir.as_deref(), "kakehashi-bench-")?;
    let work = work.path();
    let mut notes = Vec::new();

    eprintln!("== crypto floor");
    let fixture = Fixture::new().await?;
    let floor = floor::measure(&fixture, Duration::from_secs(1))?;
    drop(fixture);
    eprint!("{}", floor.text());

    // One dev environment (CA, certificates, SQLite database with the sample orgs).
    let dev = work.join("dev");
    run_tool(
        Command::new(&opts.broker_bin)
            .args(["dev", "--no-serve", "--listen", "127.0.0.1:7443", "--dir"])
            .arg(&dev),
        "kakehashi-broker dev --no-serve",
    )?;
    let pki = dev.join("pki");
    let mut ctx = Ctx {
        opts,
        pki: pki.clone(),
        runs: Vec::new(),
        idle: Vec::new(),
        pg_url: None,
    };

    // Kakehashi on SQLite: the dev database, which already has the orgs.
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let config = work.join("sqlite.toml");
    std::fs::write(
        &config,
        broker_config(addr, "sqlite = \"dev/kakehashi.db\"", "dev/keys"),
    )?;
    ctx.kakehashi("kakehashi-sqlite", &config, addr, work.join("sqlite.log"))
        .await?;

    // Kakehashi on PostgreSQL: a fresh database, orgs registered with the CLI.
    match &opts.postgres_url {
        Some(base) => {
            let (db, url) = create_database(base, "kk_bench").await?;
            ctx.pg_url = Some(url.clone());
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let config = work.join("postgres.toml");
            std::fs::write(
                &config,
                broker_config(addr, &format!("postgres_url = \"{url}\""), "pg-keys"),
            )?;
            add_orgs(&opts.broker_bin, &config)?;
            let result = ctx
                .kakehashi(
                    "kakehashi-postgres",
                    &config,
                    addr,
                    work.join("postgres.log"),
                )
                .await;
            ctx.pg_url = None;
            drop_database(base, &db);
            result?;
        }
        None => notes
            .push("PostgreSQL skipped (no --postgres-url; scripts/postgres-up prints one)".into()),
    }

    // nginx: fixed response behind the same mutual TLS.
    match &opts.nginx {
        Some(bin) => {
            eprintln!("== nginx");
            let dir = work.join("nginx");
            std::fs::create_dir_all(&dir)?;
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(&dir, &pki, addr, opts.protocol))?;
            let mut server = Server::spawn(
                "nginx",
                Command::new(bin).arg("-p").arg(&dir).arg("-c").arg(&conf),
                dir.join("stdout.log"),
            )?;
            server.wait_listening(addr).await?;
            // Master and both workers hold the socket; their memory is summed.
            let pids = rss::pids_listening_on(addr.port())?;
            let target = Target::parse(&format!("https://{addr}")).await?;
            ctx.idle("nginx", &target, &pids).await?;
            ctx.drive(
                "nginx",
                &target,
                &pids,
                Scenario::Whoami,
                None,
                opts.secs,
                None,
            )
            .await?;
            ctx.drive(
                "nginx",
                &target,
                &pids,
                Scenario::Handshake,
                None,
                opts.secs,
                None,
            )
            .await?;
            server.stop();
        }
        None => notes.push("nginx skipped (not installed: apt-get install -y nginx-light)".into()),
    }

    let targets = check_targets(&ctx.runs, &ctx.idle, &floor, &mut notes);
    Ok(CompareReport {
        machine,
        connections: opts.connections,
        protocol: opts.protocol,
        secs: opts.secs,
        floor,
        runs: ctx.runs,
        idle: ctx.idle,
        targets,
        notes,
    })
}

fn check_targets(
    runs: &[RunReport],
    idle: &[IdleReport],
    floor: &Floor,
    notes: &mut Vec<String>,
) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    for (scenario, goal) in [(Scenario::Whoami, 0.8), (Scenario::Handshake, 1.0)] {
        let Some(nginx) = find_run(runs, "nginx", scenario) else {
            notes.push(format!("{}: no nginx run to compare with", scenario.name()));
            continue;
        };
        for name in ["kakehashi-sqlite", "kakehashi-postgres"] {
            if let Some(k) = find_run(runs, name, scenario) {
                let ratio = k.throughput / nginx.throughput.max(1e-9);
                checks.push(TargetCheck {
                    name: format!("{} {name}", scenario.name()),
                    measured: format!(
                        "{:.0}/s = {:.2} × nginx ({:.0}/s)",
                        k.throughput, ratio, nginx.throughput
                    ),
                    goal: format!("≥ {goal:.2} × nginx"),
                    pass: ratio >= goal,
                });
            }
        }
    }
    for (name, goal) in [("kakehashi-sqlite", 0.5), ("kakehashi-postgres", 0.35)] {
        if let Some(k) = find_run(runs, name, Scenario::Query) {
            let ratio = k.throughput / floor.queries_per_second.max(1e-9);
            checks.push(TargetCheck {
                name: format!("query {name}"),
                measured: format!(
                    "{:.0}/s = {:.1}% of the crypto floor ({:.0}/s)",
                    k.throughput,
                    ratio * 100.0,
                    floor.queries_per_second
                ),
                goal: format!("≥ {:.0}% of the crypto floor", goal * 100.0),
                pass: ratio >= goal,
            });
        }
    }
    for r in runs.iter().filter(|r| r.rate.is_some()) {
        checks.push(TargetCheck {
            name: format!("p99 {} at half rate ({})", r.scenario.name(), r.target),
            measured: format!(
                "p99 {:.2} ms at {:.0}/s offered ({:.0}/s answered){}",
                r.latency_ms.p99,
                r.rate.unwrap_or(0.0),
                r.throughput,
                r.background
                    .as_ref()
                    .map(|b| format!("; during it: {}", b.text()))
                    .unwrap_or_default()
            ),
            goal: "≤ 10 ms".into(),
            pass: r.latency_ms.p99 <= 10.0 && r.errors == 0,
        });
    }
    for i in idle.iter().filter(|i| i.target.starts_with("kakehashi")) {
        if let Some(with) = i.with {
            let mb = with.rss_kib as f64 * 1024.0 / 1e6;
            checks.push(TargetCheck {
                name: format!("RSS with {} open connections ({})", i.requested, i.target),
                measured: format!("{mb:.1} MB ({} open)", i.still_open),
                goal: "≤ 150 MB".into(),
                pass: mb <= 150.0 && i.still_open == i.requested,
            });
        }
    }
    checks
}

impl CompareReport {
    /// The table and the target checks.
    pub fn text(&self) -> String {
        let nginx = |s: Scenario| find_run(&self.runs, "nginx", s).map(|r| r.throughput);
        let mut out = format!(
            "Kakehashi vs nginx — {} connections, {}, {} s per run; {}\n\n",
            self.connections,
            match self.protocol {
                Protocol::Http1 => "HTTP/1.1",
                Protocol::Http2 => "h2",
            },
            self.secs,
            self.machine.text()
        );
        out.push_str(&format!(
            "| {:<9} | {:<23} | {:>8} | {:>7} | {:>7} | {:>8} | {:>6} | {:>7} | {:>7} | {:>7} | {:>7} | {:<16} |\n",
            "scenario", "target", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "RSS MiB", "srv CPU", "gen CPU", "oth CPU", "ratio"
        ));
        out.push_str(&format!(
            "|{:-<11}|{:-<25}|{:->10}|{:->9}|{:->9}|{:->10}|{:->8}|{:->9}|{:->9}|{:->9}|{:->9}|{:-<18}|\n",
            "", "", "", "", "", "", "", "", "", "", "", ""
        ));
        for r in &self.runs {
            let ratio = match (r.scenario, r.rate) {
                (Scenario::Query, None) => {
                    format!(
                        "{:.1}% of floor",
                        100.0 * r.throughput / self.floor.queries_per_second.max(1e-9)
                    )
                }
                (_, Some(rate)) => format!("offered {rate:.0}/s"),
                (s, None) => match nginx(s) {
                    Some(n) if r.target != "nginx" => {
                        format!("{:.2} × nginx", r.throughput / n.max(1e-9))
                    }
                    _ => String::new(),
                },
            };
            out.push_str(&format!(
                "| {:<9} | {:<23} | {:>8.0} | {:>7.2} | {:>7.2} | {:>8.2} | {:>6} | {:>7.1} | {:>7.2} | {:>7.2} | {:>7.2} | {:<16} |\n",
                r.scenario.name(),
                r.target,
                r.throughput,
                r.latency_ms.p50,
                r.latency_ms.p99,
                r.latency_ms.p999,
                r.errors,
                r.server.as_ref().map(|s| s.peak_rss_kib as f64 / 1024.0).unwrap_or(0.0),
                r.server.as_ref().map(|s| s.cpu_cores).unwrap_or(0.0),
                r.client_cpu_cores,
                r.other_cpu_cores,
                ratio
            ));
        }
        out.push_str(&format!(
            "\ncrypto floor: {:.1} µs of cryptography per query ({}) → {:.0} queries/s on {} cores\n",
            self.floor.combined_micros,
            self.floor
                .ops
                .iter()
                .map(|o| format!("{} {:.1}", o.name, o.micros))
                .collect::<Vec<_>>()
                .join(", "),
            self.floor.queries_per_second,
            self.floor.cores
        ));
        for i in &self.idle {
            if let (Some(b), Some(w)) = (i.before, i.with) {
                out.push_str(&format!(
                    "idle: {:<20} {} connections: RSS {:.1} → {:.1} MiB ({:.1} KiB per connection, {} still open)\n",
                    i.target,
                    i.opened,
                    b.rss_kib as f64 / 1024.0,
                    w.rss_kib as f64 / 1024.0,
                    i.per_connection_kib().unwrap_or(0.0),
                    i.still_open
                ));
            }
        }
        out.push_str("\ntargets:\n");
        for t in &self.targets {
            out.push_str(&format!(
                "  [{}] {}: {} (goal {})\n",
                if t.pass { "PASS" } else { "FAIL" },
                t.name,
                t.measured,
                t.goal
            ));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }
}

/// The first `nginx` on PATH or in /usr/sbin.
pub fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// `kakehashi-broker` next to this binary (both live in target/release).
pub fn default_broker_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", exe.display()))?;
    Ok(dir.join("kakehashi-broker"))
}
