//! `kakehashi-bench cluster`: one broker node against two on the same
//! PostgreSQL database, on the same machine (issue 25). On a 2-core machine
//! two nodes cannot double the rate; the point is that they do not lose
//! throughput or correctness.
//!
//! The store first takes `--fill-secs` of unmeasured load through one node:
//! a store minutes old answers faster than one that has grown (the records
//! insert took 250–300 µs per batch statement in the first minute against
//! 390–420 µs two minutes later, in `pg_stat_statements`), so without the
//! fill the first run is the fastest whatever it measures. The query
//! scenario then runs for `--secs` through one node, two (the connections
//! split between them), one, two, one: the two kinds alternate and are
//! centred on the same moment, so drift of the machine and of the store
//! cancels in the ratio, two nodes' mean rate over one node's. Each run
//! starts after `VACUUM (ANALYZE)` and `CHECKPOINT` ([`settle`]). Afterwards
//! `kakehashi-broker records verify` must accept the one chain both nodes
//! wrote.
//!
//! `--separate-databases` gives the second node a database of its own, set
//! up and filled the same way: the nodes then share the machine and the
//! database server but not the records chain, which separates the cost of
//! a second process from that of the shared chain.

use crate::workdir::WorkDir;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::background::{CommitBuckets, Commits, Metrics};
use crate::client::{tls_connector, Identity, Protocol, Target};
use crate::compare::{add_orgs, broker_config, drop_database, free_port, run_tool, Server};
use crate::load::{self, QueryPlan, RunConfig, Scenario, Workload};
use crate::report::Machine;
use crate::rss;
use crate::setup::{self, Codes};
use kakehashi_broker::store::create_database;

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
    /// Unmeasured seconds of load through one node before the first run.
    pub fill_secs: u64,
    /// Two-node runs, each between two one-node runs ([`phases`]).
    pub pairs: usize,
    /// Give the second node a database of its own (set up and filled the
    /// same way): the nodes then share only the machine and the database
    /// server, not the records chain, which bounds what the chain's
    /// sharing costs.
    pub separate_databases: bool,
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
    /// Answered queries per record commit, all nodes together (`None` when
    /// a node's `/metrics` did not answer): each commit is one lock of the
    /// shared head, one transaction and one WAL flush.
    pub rows_per_commit: Option<f64>,
}

impl ClusterRun {
    /// A run through `nodes` nodes, nothing counted yet.
    pub fn of(nodes: usize) -> ClusterRun {
        ClusterRun {
            nodes,
            queries_per_sec: 0.0,
            p99_ms: 0.0,
            errors: 0,
            busy_cores: 0.0,
            machine_us_per_query: 0.0,
            brokers_us_per_query: 0.0,
            rows_per_commit: None,
        }
    }
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    /// Where it ran.
    pub machine: Machine,
    /// The runs, in the order of [`phases`]: one node, then two and one.
    pub runs: Vec<ClusterRun>,
    /// Two nodes' mean rate over one node's mean rate.
    pub ratio: f64,
    /// Each two-node run's rate over the mean of the one-node runs either
    /// side of it: their spread is the bench's own noise.
    pub pair_ratios: Vec<f64>,
    /// What `records verify` said at the end.
    pub verify: String,
}

impl ClusterReport {
    /// The report as text.
    pub fn text(&self) -> String {
        let mut out = format!("machine: {}\n", self.machine.text());
        for r in &self.runs {
            out.push_str(&format!(
                "{} node(s): {:>8.0} queries/s   p99 {:>6.2} ms   errors {}   busy cores {:.2}   CPU per query {:.0} µs (brokers {:.0})   rows per commit {}\n",
                r.nodes,
                r.queries_per_sec,
                r.p99_ms,
                r.errors,
                r.busy_cores,
                r.machine_us_per_query,
                r.brokers_us_per_query,
                per_commit(r.rows_per_commit),
            ));
        }
        out.push_str(&format!(
            "two nodes / one node (means): {:.2}\n",
            self.ratio
        ));
        if let Some((low, median, high)) = spread(&self.pair_ratios) {
            out.push_str(&format!(
                "each two-node run / the one-node runs beside it: {low:.2}–{high:.2}, median {median:.2} (two-node runs: {})\n",
                self.pair_ratios.len()
            ));
        }
        out.push_str(&format!("records verify: {}\n", self.verify));
        out
    }
}

/// Drives the query scenario through `targets` (served by the processes
/// `nodes`) at once, the connections split evenly; the rates are summed,
/// and the CPU time spent is counted over the whole run, warm-up included.
async fn drive(
    targets: &[(Target, &Codes)],
    nodes: &[u32],
    pki: &Path,
    opts: &ClusterOptions,
    secs: u64,
) -> Result<ClusterRun> {
    let identity = Identity::from_pki(pki, "union-saitama");
    let tls = tls_connector(&identity, Protocol::Http1, true)?;
    let metrics: Vec<Metrics> = targets
        .iter()
        .map(|(target, _)| Metrics {
            target: target.clone(),
            tls: tls.clone(),
        })
        .collect();
    let commits_before = commit_histograms(&metrics).await;
    let (wall, busy, brokers) = (
        std::time::Instant::now(),
        rss::machine_busy_seconds(),
        rss::cpu_seconds_sum(nodes),
    );
    let per = (opts.connections / targets.len()).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (target, codes) in targets {
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
            duration: Some(Duration::from_secs(secs)),
            count: None,
            warmup: Duration::from_secs(opts.warmup),
            rate: None,
        };
        tasks.spawn(load::run(workload, config));
    }
    let mut run = ClusterRun::of(targets.len());
    // Answered queries over the whole run, warm-up included, to set against
    // the CPU time of the whole run.
    let mut answered = 0.0;
    while let Some(done) = tasks.join_next().await {
        let m = done.context("load task")??;
        let rate = m.ok as f64 / m.window.as_secs_f64().max(1e-9);
        run.queries_per_sec += rate;
        answered += rate * (secs + opts.warmup) as f64;
        run.p99_ms = run
            .p99_ms
            .max(m.hist.value_at_quantile(0.99) as f64 / 1000.0);
        run.errors += m.errors;
        if let Some(sample) = m.error_samples.first() {
            eprintln!("  error: {sample}");
        }
    }
    let wall_secs = wall.elapsed().as_secs_f64().max(1e-9);
    run.busy_cores = (rss::machine_busy_seconds() - busy) / wall_secs;
    run.machine_us_per_query = run.busy_cores * wall_secs / answered.max(1.0) * 1e6;
    run.brokers_us_per_query = (rss::cpu_seconds_sum(nodes) - brokers) / answered.max(1.0) * 1e6;
    let commits_after = commit_histograms(&metrics).await;
    run.rows_per_commit = commits_before
        .zip(commits_after)
        .and_then(|(before, after)| {
            before
                .iter()
                .zip(&after)
                .map(|(b, a)| Commits::between(b, a).map(|c| c.commits))
                .sum::<Option<u64>>()
        })
        .filter(|&commits| commits > 0)
        .map(|commits| answered / commits as f64);
    eprintln!(
        "{} node(s): {:.0} queries/s, p99 {:.2} ms, {} errors, busy cores {:.2}, CPU per query {:.0} µs (brokers {:.0}), rows per commit {}",
        run.nodes,
        run.queries_per_sec,
        run.p99_ms,
        run.errors,
        run.busy_cores,
        run.machine_us_per_query,
        run.brokers_us_per_query,
        per_commit(run.rows_per_commit),
    );
    Ok(run)
}

/// Every node's record-commit histogram; `None` if one did not answer.
async fn commit_histograms(nodes: &[Metrics]) -> Option<Vec<CommitBuckets>> {
    let mut all = Vec::with_capacity(nodes.len());
    for node in nodes {
        all.push(node.commit_buckets().await?);
    }
    Some(all)
}

fn per_commit(rows: Option<f64>) -> String {
    rows.map_or_else(|| "unknown".to_string(), |r| format!("{r:.1}"))
}

/// Nodes per measured run, in order: one node, then `pairs` times two nodes
/// and one. The kinds alternate and are centred on the same moment, so
/// drift that is linear in time cancels in the ratio.
pub fn phases(pairs: usize) -> Vec<usize> {
    std::iter::once(1)
        .chain((0..pairs.max(1)).flat_map(|_| [2, 1]))
        .collect()
}

/// Each two-node run's rate over the mean of the one-node runs just before
/// and after it, in order.
pub fn pair_ratios(runs: &[ClusterRun]) -> Vec<f64> {
    runs.windows(3)
        .filter(|w| w[0].nodes == 1 && w[1].nodes == 2 && w[2].nodes == 1)
        .map(|w| {
            w[1].queries_per_sec / ((w[0].queries_per_sec + w[2].queries_per_sec) / 2.0).max(1e-9)
        })
        .collect()
}

/// Lowest, median and highest of `values`; `None` when empty.
fn spread(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (first, last) = (*sorted.first()?, *sorted.last()?);
    let mid = sorted.len() / 2;
    let median = if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    };
    Some((first, median, last))
}

/// A node's config file (its own port; the key directory `keys`, which
/// the nodes of one database share) and its listener.
fn node_config(work: &Path, n: usize, url: &str, keys: &str) -> Result<(PathBuf, SocketAddr)> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let path = work.join(format!("node-{n}.toml"));
    std::fs::write(
        &path,
        broker_config(addr, &format!("postgres_url = \"{url}\""), keys),
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

/// A node of the bench: its config and listener.
struct Node {
    config: PathBuf,
    addr: SocketAddr,
}

impl Node {
    fn new(work: &Path, n: usize, url: &str, keys: &str) -> Result<Node> {
        let (config, addr) = node_config(work, n, url, keys)?;
        Ok(Node { config, addr })
    }

    async fn target(&self) -> Result<Target> {
        Target::parse(&format!("https://{}", self.addr)).await
    }

    /// `records verify` of the node's database, its last line.
    fn verify(&self, opts: &ClusterOptions) -> Result<String> {
        let out = run_tool(
            Command::new(&opts.broker_bin)
                .args(["records", "verify", "--config"])
                .arg(&self.config),
            "kakehashi-broker records verify",
        )?;
        Ok(out.lines().last().unwrap_or_default().trim().to_string())
    }
}

/// Registers the bench's persons through `node` (started for it).
async fn register(
    opts: &ClusterOptions,
    work: &Path,
    node: &Node,
    n: usize,
) -> Result<(Server, Codes)> {
    let pki = work.join("dev").join("pki");
    let server = start(opts, work, &node.config, node.addr, n).await?;
    let codes = setup::run(
        &node.target().await?,
        &Identity::from_pki(&pki, "union-saitama"),
        &Identity::from_pki(&pki, "city-saitama"),
        opts.persons,
        1,
    )
    .await?;
    Ok((server, codes))
}

/// Unmeasured load through `node` alone, for `opts.fill_secs`.
async fn fill(
    opts: &ClusterOptions,
    pki: &Path,
    node: (Target, &Codes),
    pid: u32,
    what: &str,
) -> Result<()> {
    if opts.fill_secs > 0 {
        eprintln!("fill of {what} ({} s, not measured):", opts.fill_secs);
        drive(&[node], &[pid], pki, opts, opts.fill_secs).await?;
    }
    Ok(())
}

async fn measure(opts: &ClusterOptions, work: &Path, urls: &[String]) -> Result<ClusterReport> {
    let pki = work.join("dev").join("pki");
    let node1 = Node::new(work, 1, &urls[0], "pg-keys")?;
    // With a database of its own, the second node has its own keys too.
    let (url2, keys2) = match urls.get(1) {
        Some(url) => (url, "pg-keys-2"),
        None => (&urls[0], "pg-keys"),
    };
    let node2 = Node::new(work, 2, url2, keys2)?;
    add_orgs(&opts.broker_bin, &node1.config)?;
    let (server1, codes1) = register(opts, work, &node1, 1).await?;
    let target1 = node1.target().await?;
    let codes2 = if opts.separate_databases {
        // The second database gets the same persons and the same fill, so
        // both stores are alike when the runs begin.
        add_orgs(&opts.broker_bin, &node2.config)?;
        let (server2, codes2) = register(opts, work, &node2, 2).await?;
        let target2 = node2.target().await?;
        fill(
            opts,
            &pki,
            (target2, &codes2),
            server2.pid(),
            "node 2's database",
        )
        .await?;
        server2.stop();
        codes2
    } else {
        codes1.clone()
    };
    fill(
        opts,
        &pki,
        (target1.clone(), &codes1),
        server1.pid(),
        "the database through node 1",
    )
    .await?;
    let mut runs = Vec::new();
    for nodes in phases(opts.pairs) {
        // The second node runs only for its runs, so a one-node run has
        // nothing else of the broker's on the machine.
        let server2 = match nodes {
            2 => Some(start(opts, work, &node2.config, node2.addr, 2).await?),
            _ => None,
        };
        let mut targets = vec![(target1.clone(), &codes1)];
        let mut pids = vec![server1.pid()];
        if let Some(server2) = &server2 {
            targets.push((node2.target().await?, &codes2));
            pids.push(server2.pid());
        }
        urls.iter().try_for_each(|url| settle(url))?;
        runs.push(drive(&targets, &pids, &pki, opts, opts.secs).await?);
        if let Some(server2) = server2 {
            server2.stop();
        }
    }
    server1.stop();

    let mut verify = node1.verify(opts)?;
    if opts.separate_databases {
        verify = format!("node 1: {verify}; node 2: {}", node2.verify(opts)?);
    }
    let mean = |n: usize| {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|r| r.nodes == n)
            .map(|r| r.queries_per_sec)
            .collect();
        rates.iter().sum::<f64>() / rates.len().max(1) as f64
    };
    Ok(ClusterReport {
        machine: Machine::detect(),
        ratio: mean(2) / mean(1).max(1e-9),
        pair_ratios: pair_ratios(&runs),
        runs,
        verify,
    })
}

/// Brings the database to the same state before every run: nothing left
/// for autovacuum (`VACUUM`: otherwise its vacuum of the growing `queries`
/// table and records partition runs in some runs and not others, and an
/// `ANALYZE` cancels it half done), statistics current (`ANALYZE`: a month
/// partition planned while empty is scanned whole by the disclosure pool's
/// re-plan every 5 s until it is first analyzed), and every dirty page
/// written out (`CHECKPOINT`: otherwise the checkpoint one run's WAL sets
/// off, at about 20 MB/s against `max_wal_size` 1 GB, falls in the next
/// run with the full-page images after it). Needs a superuser or
/// `pg_checkpoint`, as `scripts/postgres-up`'s role is.
fn settle(url: &str) -> Result<()> {
    run_tool(
        Command::new("psql").args([
            url,
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            "VACUUM (ANALYZE)",
            "-c",
            "CHECKPOINT",
        ]),
        "psql VACUUM (ANALYZE); CHECKPOINT",
    )
    .map(drop)
}

/// Runs the cluster scenario on a fresh database (two with
/// `separate_databases`), dropped afterwards.
pub async fn run(opts: &ClusterOptions) -> Result<ClusterReport> {
    let work = WorkDir::new(opts.workdir.as_deref(), "kakehashi-cluster-")?;
    let work = work.path();
    run_tool(
        Command::new(&opts.broker_bin)
            .args(["dev", "--no-serve", "--listen", "127.0.0.1:7443", "--dir"])
            .arg(work.join("dev")),
        "kakehashi-broker dev --no-serve",
    )?;
    let (mut dbs, mut urls) = (Vec::new(), Vec::new());
    let result = async {
        for _ in 0..if opts.separate_databases { 2 } else { 1 } {
            let (db, url) = create_database(&opts.postgres_url, "kk_cluster").await?;
            dbs.push(db);
            urls.push(url);
        }
        measure(opts, work, &urls).await
    }
    .await;
    for db in &dbs {
        drop_database(&opts.postgres_url, db);
    }
    let report = result?;
    if report.runs.iter().any(|r| r.errors > 0) {
        bail!("errors during the runs:\n{}", report.text());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::{pair_ratios, phases, spread, ClusterRun};

    fn run(nodes: usize, queries_per_sec: f64) -> ClusterRun {
        ClusterRun {
            queries_per_sec,
            ..ClusterRun::of(nodes)
        }
    }

    #[test]
    fn runs_alternate_one_node_and_two_starting_and_ending_with_one() {
        assert_eq!(phases(2), [1, 2, 1, 2, 1]);
        assert_eq!(phases(4), [1, 2, 1, 2, 1, 2, 1, 2, 1]);
        assert_eq!(phases(0), [1, 2, 1], "at least one two-node run");
    }

    #[test]
    fn each_two_node_run_is_set_against_the_one_node_runs_beside_it() {
        let runs = [
            run(1, 100.0),
            run(2, 90.0),
            run(1, 80.0),
            run(2, 60.0),
            run(1, 40.0),
        ];
        let ratios = pair_ratios(&runs);
        assert_eq!(ratios.len(), 2);
        assert!((ratios[0] - 1.0).abs() < 1e-9, "90 against (100 + 80) / 2");
        assert!((ratios[1] - 1.0).abs() < 1e-9, "60 against (80 + 40) / 2");
        assert_eq!(spread(&[0.5, 0.25, 1.0, 0.75]), Some((0.25, 0.625, 1.0)));
        assert_eq!(spread(&[0.9, 0.7, 1.0]), Some((0.7, 0.9, 1.0)));
        assert_eq!(spread(&[]), None);
    }
}
