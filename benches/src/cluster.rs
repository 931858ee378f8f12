//! `kakehashi-bench cluster`: one broker node against two on the same
//! PostgreSQL database, on the same machine (issue 25). On a 2-core machine
//! two nodes cannot double the rate; the point is that they do not lose
//! throughput or correctness. The query scenario runs for `--secs` through
//! one node, then through two (the connections split between them), then
//! through one again, so drift of the machine shows; the ratio is two nodes'
//! rate over the mean of the two one-node runs. Each run starts right after
//! a `CHECKPOINT`: otherwise the checkpoint that the WAL of the first run
//! sets off (about 20 MB/s against `max_wal_size` 1 GB) falls in the
//! second, and its writes and the full-page images after it are charged
//! to whichever run it falls in. Afterwards
//! `kakehashi-broker records verify` must accept the one chain both nodes
//! wrote.

use crate::workdir::WorkDir;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::client::{tls_connector, Identity, Protocol, Target};
use crate::compare::{broker_config, free_port, run_tool, url_with_database, Server, ORGS};
use crate::load::{self, QueryPlan, RunConfig, Scenario, Workload};
use crate::report::Machine;
use crate::rss;
use crate::setup::{self, Codes};

/// Options of the cluster scenario.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `kakehashi-broker` binary.
    pub broker_bin: PathBuf,
    /// PostgreSQL base URL; a fresh database is made and dropped.
    pub postgres_url: String,
    /// Connections in total (split between the nodes).
    pub connections: usize,
    /// Measured seconds per run.
    pub secs: u64,
    /// Unmeasured seconds at the start of each run.
    pub warmup: u64,
    /// Persons registered for the queries.
    pub persons: u64,
    /// Keep configs and logs here.
    pub workdir: Option<PathBuf>,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRun {
    /// Nodes the load went through.
    pub nodes: usize,
    /// Correct answers per second, all nodes together.
    pub queries_per_sec: f64,
    /// Slowest node's p99, ms.
    pub p99_ms: f64,
    /// Errors (wrong answers, transport errors).
    pub errors: u64,
    /// Cores the whole machine kept busy (brokers, PostgreSQL, the load).
    pub busy_cores: f64,
    /// CPU time of the whole machine per answered query, µs.
    pub machine_us_per_query: f64,
    /// CPU time of the broker processes per answered query, µs.
    pub brokers_us_per_query: f64,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// Where it ran.
    pub machine: Machine,
    /// one node, two nodes, one node.
    pub runs: Vec<ClusterRun>,
    /// Two nodes' rate over the mean one-node rate.
    pub ratio: f64,
    /// What `records verify` said at the end.
    pub verify: String,
}

impl ClusterReport {
    /// The report as text.
    pub fn text(&self) -> String {
        let mut out = format!("machine: {}\n", self.machine.text());
        for r in &self.runs {
            out.push_str(&format!(
                "{} node(s): {:>8.0} queries/s   p99 {:>6.2} ms   errors {}   busy cores {:.2}   CPU per query {:.0} µs (brokers {:.0})\n",
                r.nodes,
                r.queries_per_sec,
                r.p99_ms,
                r.errors,
                r.busy_cores,
                r.machine_us_per_query,
                r.brokers_us_per_query
            ));
        }
        out.push_str(&format!(
            "two nodes / one node: {:.2}\nrecords verify: {}\n",
            self.ratio, self.verify
        ));
        out
    }
}

/// Drives the query scenario through `targets` (served by the processes
/// `nodes`) at once, the connections split evenly; the rates are summed,
/// and the CPU time spent is counted over the whole run, warm-up included.
async fn drive(
    targets: &[Target],
    nodes: &[u32],
    pki: &Path,
    codes: &Codes,
    opts: &ClusterOptions,
) -> Result<ClusterRun> {
    let (wall, busy, brokers) = (
        std::time::Instant::now(),
        rss::machine_busy_seconds(),
        rss::cpu_seconds_sum(nodes),
    );
    let identity = Identity::from_pki(pki, "union-saitama");
    let tls = tls_connector(&identity, Protocol::Http1, true)?;
    let per = (opts.connections / targets.len()).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let workload = Arc::new(Workload::new(
            Scenario::Query,
            Some(QueryPlan::new(codes, 1024, 100)?),
        )?);
        let config = RunConfig {
            target: target.clone(),
            tls: tls.clone(),
            protocol: Protocol::Http1,
            connections: per,
            streams: 1,
            duration: Some(Duration::from_secs(opts.secs)),
            count: None,
            warmup: Duration::from_secs(opts.warmup),
            rate: None,
        };
        tasks.spawn(load::run(workload, config));
    }
    let mut run = ClusterRun {
        nodes: targets.len(),
        queries_per_sec: 0.0,
        p99_ms: 0.0,
        errors: 0,
        busy_cores: 0.0,
        machine_us_per_query: 0.0,
        brokers_us_per_query: 0.0,
    };
    // Answered queries over the whole run, warm-up included, to set against
    // the CPU time of the whole run.
    let mut answered = 0.0;
    while let Some(done) = tasks.join_next().await {
        let m = done.context("load task")??;
        let rate = m.ok as f64 / m.window.as_secs_f64().max(1e-9);
        run.queries_per_sec += rate;
        answered += rate * (opts.secs + opts.warmup) as f64;
        run.p99_ms = run
            .p99_ms
            .max(m.hist.value_at_quantile(0.99) as f64 / 1000.0);
        run.errors += m.errors;
        if let Some(sample) = m.error_samples.first() {
            eprintln!("  error: {sample}");
        }
    }
    let secs = wall.elapsed().as_secs_f64().max(1e-9);
    run.busy_cores = (rss::machine_busy_seconds() - busy) / secs;
    run.machine_us_per_query = run.busy_cores * secs / answered.max(1.0) * 1e6;
    run.brokers_us_per_query = (rss::cpu_seconds_sum(nodes) - brokers) / answered.max(1.0) * 1e6;
    eprintln!(
        "{} node(s): {:.0} queries/s, p99 {:.2} ms, {} errors, busy cores {:.2}, CPU per query {:.0} µs (brokers {:.0})",
        run.nodes,
        run.queries_per_sec,
        run.p99_ms,
        run.errors,
        run.busy_cores,
        run.machine_us_per_query,
        run.brokers_us_per_query
    );
    Ok(run)
}

/// A node: its config file (same database and keys, its own port) and process.
fn node_config(work: &Path, n: usize, url: &str) -> Result<(PathBuf, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let path = work.join(format!("node-{n}.toml"));
    std::fs::write(
        &path,
        broker_config(addr, &format!("postgres_url = \"{url}\""), "pg-keys"),
    )?;
    Ok((path, addr))
}

async fn start(
    opts: &ClusterOptions,
    work: &Path,
    config: &Path,
    addr: SocketAddr,
    n: usize,
) -> Result<Server> {
    let mut server = Server::spawn(
        &format!("node-{n}"),
        Command::new(&opts.broker_bin)
            .arg("serve")
            .arg("--config")
            .arg(config),
        work.join(format!("node-{n}.log")),
    )?;
    server.wait_listening(addr).await?;
    Ok(server)
}

async fn measure(opts: &ClusterOptions, work: &Path, url: &str) -> Result<ClusterReport> {
    let pki = work.join("dev").join("pki");
    let (config1, addr1) = node_config(work, 1, url)?;
    let (config2, addr2) = node_config(work, 2, url)?;
    for (id, kind, name) in ORGS {
        run_tool(
            Command::new(&opts.broker_bin)
                .arg("orgs")
                .arg("--config")
                .arg(&config1)
                .args(["add", id, "--kind", kind, "--name", name]),
            "kakehashi-broker orgs add",
        )?;
    }
    let node1 = start(opts, work, &config1, addr1, 1).await?;
    let target1 = Target::parse(&format!("https://{addr1}")).await?;
    let codes = setup::run(
        &target1,
        &Identity::from_pki(&pki, "union-saitama"),
        &Identity::from_pki(&pki, "city-saitama"),
        opts.persons,
        1,
    )
    .await?;
    let one = [node1.pid()];
    checkpoint(url)?;
    let mut runs = vec![drive(std::slice::from_ref(&target1), &one, &pki, &codes, opts).await?];
    let node2 = start(opts, work, &config2, addr2, 2).await?;
    let target2 = Target::parse(&format!("https://{addr2}")).await?;
    let both = [node1.pid(), node2.pid()];
    checkpoint(url)?;
    runs.push(drive(&[target1.clone(), target2], &both, &pki, &codes, opts).await?);
    node2.stop();
    checkpoint(url)?;
    runs.push(drive(std::slice::from_ref(&target1), &one, &pki, &codes, opts).await?);
    node1.stop();

    let verify = run_tool(
        Command::new(&opts.broker_bin)
            .args(["records", "verify", "--config"])
            .arg(&config1),
        "kakehashi-broker records verify",
    )?;
    let one = (runs[0].queries_per_sec + runs[2].queries_per_sec) / 2.0;
    Ok(ClusterReport {
        machine: Machine::detect(),
        ratio: runs[1].queries_per_sec / one.max(1e-9),
        runs,
        verify: verify.lines().last().unwrap_or_default().trim().to_string(),
    })
}

/// Writes every dirty page of the database server out now, so the run that
/// follows starts where the others did (needs a superuser or
/// `pg_checkpoint`, as `scripts/postgres-up`'s role is).
fn checkpoint(url: &str) -> Result<()> {
    run_tool(
        Command::new("psql").args([url, "-v", "ON_ERROR_STOP=1", "-qc", "CHECKPOINT"]),
        "psql CHECKPOINT",
    )
    .map(drop)
}

/// Runs the cluster scenario on a fresh database, dropped afterwards.
pub async fn run(opts: &ClusterOptions) -> Result<ClusterReport> {
    let work = WorkDir::new(opts.workdir.as_deref(), "kakehashi-cluster-")?;
    let work = work.path();
    run_tool(
        Command::new(&opts.broker_bin)
            .args(["dev", "--no-serve", "--listen", "127.0.0.1:7443", "--dir"])
            .arg(work.join("dev")),
        "kakehashi-broker dev --no-serve",
    )?;
    let db = format!("kk_cluster_{}", std::process::id());
    run_tool(
        Command::new("psql")
            .args([opts.postgres_url.as_str(), "-v", "ON_ERROR_STOP=1", "-qc"])
            .arg(format!("CREATE DATABASE {db}")),
        "psql CREATE DATABASE",
    )?;
    let url = url_with_database(&opts.postgres_url, &db);
    let result = measure(opts, work, &url).await;
    let _ = run_tool(
        Command::new("psql")
            .args([opts.postgres_url.as_str(), "-qc"])
            .arg(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")),
        "psql DROP DATABASE",
    );
    let report = result?;
    if report.runs.iter().any(|r| r.errors > 0) {
        bail!("errors during the runs:\n{}", report.text());
    }
    Ok(report)
}
