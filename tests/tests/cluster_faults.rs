//! Database faults under a three-node cluster (issue 25, item 4), the role
//! metric, and `kakehashi-broker dev --nodes 3`:
//!
//! - PostgreSQL restarted under load: `/readyz` 503 and `unavailable` while
//!   it is down (no hang, no 500), every node serves again by itself (pool,
//!   role-lease session, LISTEN), nothing answered is lost, the chain
//!   verifies. On a private PostgreSQL started by the test, never the
//!   shared one.
//! - PostgreSQL crashed under load (killed, then started again): WAL
//!   still in the server's memory is lost, and no answer given may have
//!   its record there; every node serves again by itself.
//! - A network pause to the database longer than the statement timeout:
//!   requests fail with `unavailable` within a bound, nothing is
//!   half-written, the nodes serve again after it without a restart.
//! - `kakehashi_cluster_role` on `/metrics` moves to another node when the
//!   holder is killed.
//! - `dev --nodes 3 --postgres-url` prints three listeners that answer.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http::StatusCode;
use kakehashi_broker::cluster::TAKEOVER;
use kakehashi_interfaces::QueryResponse;
use kakehashi_tests::cluster::{role_gauge, Cluster, ClusterOptions};
use kakehashi_tests::exchange::{opened_items, query_body, scenario_with, Scenario};
use kakehashi_tests::pause_proxy::PauseProxy;
use kakehashi_tests::pg_instance::PgInstance;
use kakehashi_tests::{Protocol, TestClient};
use sqlx::PgPool;

/// One cluster at a time: the timing assertions should not measure another
/// cluster's load on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ROLES: [&str; 3] = ["sealer", "sweeper", "retention"];

/// The statement timeout the fault tests configure (`[storage]`).
const STATEMENT_TIMEOUT: Duration = Duration::from_millis(1_000);

/// No request may take longer than this while the database is away: the
/// broker's own bound (twice the statement timeout) and some slack for a
/// small, loaded machine.
const ANSWER_BOUND: Duration = Duration::from_millis(2 * 1_000 + 1_500);

fn fault_options(database: String, node_database: Option<String>) -> ClusterOptions {
    ClusterOptions {
        // The load runs as fast as the nodes go: no org limit refuses it.
        limits: "per_org_per_second = 1000000\nper_org_burst = 1000000\n".into(),
        storage: format!("statement_timeout_ms = {}\n", STATEMENT_TIMEOUT.as_millis()),
        database: Some(database),
        node_database,
        ..ClusterOptions::default()
    }
}

async fn scenario(cluster: &Cluster, persons: u64) -> Result<Scenario> {
    scenario_with(
        cluster.client(0, "union-saitama").await?,
        cluster.client(0, "city-saitama").await?,
        persons,
    )
    .await
}

/// What one query got: an answer's query id, or the status and error code.
enum Outcome {
    Answered(String),
    Refused(StatusCode, String),
}

async fn ask(client: &mut TestClient, union_code: &str) -> Result<Outcome> {
    let (body, keys) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        union_code,
        &["local_tax.income"],
    );
    let response = client.post("/v1/queries", body).await?;
    if response.status != StatusCode::OK {
        return Ok(Outcome::Refused(
            response.status,
            response.error_code().unwrap_or_else(|| "(no code)".into()),
        ));
    }
    let items = opened_items(&response.body, &keys)?;
    if !items["local_tax.income"].is_number() {
        bail!("an answer without the income: {items}");
    }
    let answer: QueryResponse = serde_json::from_slice(&response.body)?;
    Ok(Outcome::Answered(answer.query_id.to_string()))
}

/// Load through every node: what was answered, what was refused (by status
/// and code), and the longest any request took while `watch` was set.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    watch: AtomicBool,
    answered: Mutex<Vec<String>>,
    refused: Mutex<BTreeMap<String, u64>>,
    slowest_watched: Mutex<Duration>,
}

impl Load {
    fn answered(&self) -> usize {
        self.answered.lock().map(|a| a.len()).unwrap_or(0)
    }
}

/// A request that takes longer than this is a hang, not an answer.
const HANG: Duration = Duration::from_secs(20);

type Workers = Vec<tokio::task::JoinHandle<Result<()>>>;

fn start_load(
    cluster: &Cluster,
    codes: Arc<Vec<String>>,
    workers: usize,
) -> Result<(Arc<Load>, Workers)> {
    let load = Arc::new(Load::default());
    let addrs: Vec<_> = cluster.nodes.iter().map(|n| n.addr).collect();
    let ca = cluster.pki.ca.cert_pem().to_string();
    let cert = cluster.pki.org_cert("union-saitama")?;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (load, codes, addrs, ca, cert) = (
            load.clone(),
            codes.clone(),
            addrs.clone(),
            ca.clone(),
            cert.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let node = w % addrs.len();
            let mut client: Option<TestClient> = None;
            let mut k = w;
            while !load.stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    match TestClient::connect(addrs[node], &ca, Some(&cert), Protocol::Http1).await
                    {
                        Ok(c) => client = Some(c),
                        Err(e) => bail!("node {} refused a connection: {e}", node + 1),
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                k += 1;
                let watched = load.watch.load(Ordering::Relaxed);
                let started = Instant::now();
                let outcome = tokio::time::timeout(HANG, ask(c, &codes[k % codes.len()])).await;
                let took = started.elapsed();
                if watched || load.watch.load(Ordering::Relaxed) {
                    if let Ok(mut s) = load.slowest_watched.lock() {
                        *s = (*s).max(took);
                    }
                }
                match outcome {
                    Err(_) => bail!("a query to node {} hung for {HANG:?}", node + 1),
                    Ok(Ok(Outcome::Answered(id))) => {
                        if let Ok(mut a) = load.answered.lock() {
                            a.push(id);
                        }
                    }
                    Ok(Ok(Outcome::Refused(status, code))) => {
                        if let Ok(mut r) = load.refused.lock() {
                            *r.entry(format!("{} {code}", status.as_u16())).or_default() += 1;
                        }
                        // Not a busy loop against a database that is away.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // A broken connection: a new one to the same node.
                    Ok(Err(_)) => client = None,
                }
            }
            Ok(())
        }));
    }
    Ok((load, tasks))
}

/// A pool of the test's own on the database (the cluster's store may hold
/// connections from before a restart).
async fn inspect(url: &str) -> Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?)
}

async fn count(pool: &PgPool, sql: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(pool).await?)
}

/// Waits until `/readyz` of every node is `want` (each node probed on its
/// own, so one slow probe does not delay the others); how long each took.
async fn every_node_ready_is(
    cluster: &Cluster,
    want: StatusCode,
    limit: Duration,
) -> Result<Vec<Duration>> {
    let started = Instant::now();
    let ca = cluster.pki.ca.cert_pem().to_string();
    let cert = cluster.pki.org_cert("city-saitama")?;
    let mut probes = tokio::task::JoinSet::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let (addr, ca, cert) = (node.addr, ca.clone(), cert.clone());
        probes.spawn(async move {
            loop {
                let probe = async {
                    let mut c =
                        TestClient::connect(addr, &ca, Some(&cert), Protocol::Http1).await?;
                    anyhow::Ok(c.get("/readyz").await?.status)
                };
                let got = tokio::time::timeout(ANSWER_BOUND, probe).await;
                if matches!(got, Ok(Ok(status)) if status == want) {
                    return (i, Some(started.elapsed()));
                }
                if started.elapsed() > limit {
                    return (i, None);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let mut took = vec![None; cluster.nodes.len()];
    while let Some(done) = probes.join_next().await {
        let (i, t) = done?;
        took[i] = t;
    }
    if took.iter().any(Option::is_none) {
        bail!("/readyz not {want} on every node within {limit:?}: {took:?}");
    }
    Ok(took.into_iter().flatten().collect())
}

/// Waits until every node answers a query; how long each took.
async fn every_node_answers(
    cluster: &Cluster,
    code: &str,
    limit: Duration,
) -> Result<Vec<Duration>> {
    let started = Instant::now();
    let mut took = vec![None; cluster.nodes.len()];
    while took.iter().any(Option::is_none) {
        for (i, t) in took.iter_mut().enumerate() {
            if t.is_some() {
                continue;
            }
            let attempt = tokio::time::timeout(ANSWER_BOUND, async {
                let mut c = cluster.client(i, "union-saitama").await?;
                ask(&mut c, code).await
            })
            .await;
            if let Ok(Ok(Outcome::Answered(_))) = attempt {
                *t = Some(started.elapsed());
            }
        }
        if started.elapsed() > limit {
            bail!("not every node answered within {limit:?}: {took:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(took.into_iter().flatten().collect())
}

/// Waits until each role has exactly one holder among the running nodes
/// (by their `/metrics`), failing at once if two hold one; how long it took.
async fn one_holder_each(cluster: &Cluster, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let mut holders = Vec::new();
        for role in ROLES {
            holders.push(cluster.role_holders(role).await);
        }
        if let Some(h) = holders.iter().find(|h| h.len() > 1) {
            bail!("a role held by two nodes at once: {h:?} ({holders:?})");
        }
        if holders.iter().all(|h| h.len() == 1) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("roles without a holder after {limit:?}: {holders:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every answer has its `provided` record, sequence numbers run 1..=n, each
/// record with a query has its stored query and each stored query its
/// record, the checkpoints reach the head and `records verify` accepts the
/// chain.
async fn assert_nothing_lost(cluster: &Cluster, pool: &PgPool, answered: &[String]) -> Result<()> {
    let recorded: Vec<(String,)> =
        sqlx::query_as("SELECT query_id FROM records WHERE outcome = 'provided'")
            .fetch_all(pool)
            .await?;
    let recorded: HashSet<String> = recorded.into_iter().map(|(id,)| id).collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(missing.is_empty(), "answers without a record: {missing:?}");
    let n = count(pool, "SELECT COUNT(*) FROM records").await?;
    let (min, max, distinct) = (
        count(pool, "SELECT COALESCE(MIN(seq), 0) FROM records").await?,
        count(pool, "SELECT COALESCE(MAX(seq), 0) FROM records").await?,
        count(pool, "SELECT COUNT(DISTINCT seq) FROM records").await?,
    );
    assert_eq!(
        (min, max, distinct),
        (1, n, n),
        "the sequence has a gap or a repeat"
    );
    let half_queries = count(
        pool,
        "SELECT COUNT(*) FROM queries q WHERE NOT EXISTS
           (SELECT 1 FROM records r WHERE r.query_id = q.id)",
    )
    .await?;
    assert_eq!(half_queries, 0, "stored queries without their record");
    let half_records = count(
        pool,
        "SELECT COUNT(*) FROM records r WHERE r.outcome = 'provided' AND NOT EXISTS
           (SELECT 1 FROM queries q WHERE q.id = r.query_id)",
    )
    .await?;
    assert_eq!(
        half_records, 0,
        "provided records without their stored result"
    );
    let started = Instant::now();
    loop {
        let sealed = count(pool, "SELECT COALESCE(MAX(seq), 0) FROM record_checkpoints").await?;
        if sealed >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("no checkpoint reached the head {n} (sealed {sealed})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = cluster.host_command(0, "records", &["verify"])?;
    assert!(
        out.status.success(),
        "records verify failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "faults: {} answers, {n} records, gap-free, sealed, verified",
        answered.len()
    );
    Ok(())
}

/// Only `503 unavailable` was refused, if anything.
fn assert_only_unavailable(load: &Load) -> Result<()> {
    let refused = load.refused.lock().map(|r| r.clone()).unwrap_or_default();
    eprintln!("faults: refusals under load: {refused:?}");
    for code in refused.keys() {
        if code != "503 unavailable" {
            bail!("a refusal other than 503 unavailable: {refused:?}");
        }
    }
    Ok(())
}

/// The connections each node must have again: its role-lease session
/// (`application_name = kakehashi-node`) and its change listener.
async fn node_sessions(pool: &PgPool) -> Result<(i64, i64)> {
    let leases = count(
        pool,
        "SELECT COUNT(*) FROM pg_stat_activity
         WHERE application_name = 'kakehashi-node' AND datname = current_database()",
    )
    .await?;
    let listeners = count(
        pool,
        "SELECT COUNT(*) FROM pg_stat_activity
         WHERE query ILIKE 'LISTEN%' AND datname = current_database()",
    )
    .await?;
    Ok((leases, listeners))
}

async fn sessions_come_back(pool: &PgPool, nodes: i64, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let (leases, listeners) = node_sessions(pool).await?;
        if leases == nodes && listeners == nodes {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("after {limit:?}: {leases} role-lease sessions and {listeners} listeners of {nodes} nodes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A flow-list version approved on node 1 is in force on every node
/// sooner than their periodic re-read (2 s): the announcement reached
/// each node's listener.
async fn announcement_reaches_every_node(cluster: &Cluster) -> Result<Duration> {
    let before = cluster
        .client(2, "union-saitama")
        .await?
        .get("/v1/flows")
        .await?
        .json()?["version"]
        .as_u64()
        .context("flows version")?;
    let file = cluster.dir.path().join(format!("flows-{before}.toml"));
    std::fs::write(
        &file,
        format!(
            "{}\n# reviewed {before}\n",
            kakehashi_broker::policy::SAMPLE_FLOW_LIST
        ),
    )?;
    let out = cluster.host_command(
        0,
        "flows",
        &[
            "load",
            file.to_str().context("utf-8")?,
            "--approve-as",
            "host:second-admin",
        ],
    )?;
    if !out.status.success() {
        bail!(
            "flows load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let started = Instant::now();
    let mut done = vec![false; cluster.nodes.len()];
    while !done.iter().all(|d| *d) {
        for (i, d) in done.iter_mut().enumerate() {
            if !*d {
                let v = cluster
                    .client(i, "union-saitama")
                    .await?
                    .get("/v1/flows")
                    .await?
                    .json()?["version"]
                    .as_u64();
                *d = v.is_some_and(|v| v > before);
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            bail!("a new flow-list version not in force on every node: {done:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

/// A private PostgreSQL, three nodes on it, the load running through them
/// and the answers given so far (before the test's fault).
type Loaded = (PgInstance, Cluster, Scenario, Arc<Load>, Workers, usize);

/// Starts a private PostgreSQL and three nodes on it, and runs the load
/// through them for 1.5 s.
async fn under_load() -> Result<Loaded> {
    let pg = PgInstance::start().await?;
    let Some(cluster) = Cluster::start(fault_options(pg.url(), None)).await? else {
        bail!("a cluster on a private PostgreSQL always starts");
    };
    let s = scenario(&cluster, 8).await?;
    let (load, workers) = start_load(&cluster, Arc::new(s.union_codes.clone()), 6)?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = load.answered();
    Ok((pg, cluster, s, load, workers, before))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_restart_under_load_loses_nothing_and_every_node_comes_back() -> Result<()> {
    let _one = SERIAL.lock().await;
    let (mut pg, cluster, s, load, workers, before) = under_load().await?;

    load.watch.store(true, Ordering::Relaxed);
    let down = Instant::now();
    pg.stop().await?;
    eprintln!("faults: PostgreSQL stopped (fast) in {:?}", down.elapsed());
    let not_ready = every_node_ready_is(
        &cluster,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(5),
    )
    .await?;
    eprintln!("faults: /readyz 503 on each node {not_ready:?} after the stop began");
    // A query asked of each node while the database is down: `unavailable`, in time.
    for i in 0..cluster.nodes.len() {
        let asked = Instant::now();
        let mut c = cluster.client(i, "union-saitama").await?;
        match tokio::time::timeout(ANSWER_BOUND, ask(&mut c, &s.union_codes[0])).await {
            Ok(Ok(Outcome::Refused(StatusCode::SERVICE_UNAVAILABLE, code)))
                if code == "unavailable" => {}
            Ok(Ok(Outcome::Refused(status, code))) => {
                bail!(
                    "node {} answered {status} {code} while the database was down",
                    i + 1
                )
            }
            Ok(Ok(Outcome::Answered(_))) => bail!("node {} answered with the database down", i + 1),
            Ok(Err(e)) => bail!("node {} broke the connection: {e}", i + 1),
            Err(_) => bail!("node {} did not answer within {ANSWER_BOUND:?}", i + 1),
        }
        eprintln!(
            "faults: node {} answered 503 unavailable in {:?} with the database down",
            i + 1,
            asked.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_millis(3_000).saturating_sub(down.elapsed())).await;
    pg.start_again().await?;
    let up = Instant::now();
    eprintln!("faults: PostgreSQL down for {:?}", down.elapsed());

    let ready = every_node_ready_is(&cluster, StatusCode::OK, Duration::from_secs(15)).await?;
    eprintln!("faults: /readyz 200 on each node {ready:?} after PostgreSQL was back");
    let answering =
        every_node_answers(&cluster, &s.union_codes[1], Duration::from_secs(15)).await?;
    eprintln!("faults: each node answered a query {answering:?} after PostgreSQL was back");
    load.watch.store(false, Ordering::Relaxed);
    let pool = inspect(&pg.url()).await?;
    sessions_come_back(&pool, 3, Duration::from_secs(10)).await?;
    eprintln!(
        "faults: every node's role-lease session and listener were back by {:?} after PostgreSQL",
        up.elapsed()
    );
    one_holder_each(&cluster, TAKEOVER + Duration::from_secs(3)).await?;
    eprintln!(
        "faults: each role had one holder again by {:?} after PostgreSQL was back",
        up.elapsed()
    );
    let heard = announcement_reaches_every_node(&cluster).await?;
    eprintln!("faults: a flow-list approval reached every node {heard:?} after the host command");
    assert!(
        heard < Duration::from_secs(1),
        "the change listener did not come back: {heard:?}"
    );

    tokio::time::sleep(Duration::from_millis(1_000)).await;
    load.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    let slowest = load.slowest_watched.lock().map(|s| *s).unwrap_or_default();
    eprintln!(
        "faults: the slowest query answer from the stop until every node answered: {slowest:?}"
    );
    assert!(
        slowest <= ANSWER_BOUND,
        "a query took {slowest:?} while the database was away"
    );
    assert!(
        load.answered() > before + 10,
        "the load did not go on after the restart"
    );
    assert_only_unavailable(&load)?;
    let answered = load.answered.lock().map(|a| a.clone()).unwrap_or_default();
    assert_nothing_lost(&cluster, &pool, &answered).await?;
    Ok(())
}

/// A crash loses what was in the server's memory: a query is answered only
/// once its record's commit is written out of it, so no answer given may
/// be lost. With three nodes writing, every commit takes the head lock, and
/// the crash comes in the middle of some of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_crash_under_load_loses_no_answered_record() -> Result<()> {
    let _one = SERIAL.lock().await;
    let (mut pg, cluster, s, load, workers, before) = under_load().await?;
    pg.crash().await?;
    eprintln!("faults: PostgreSQL crashed after {before} answers");
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.start_again().await?;
    let ready = every_node_ready_is(&cluster, StatusCode::OK, Duration::from_secs(20)).await?;
    eprintln!("faults: /readyz 200 on each node {ready:?} after PostgreSQL recovered");
    every_node_answers(&cluster, &s.union_codes[1], Duration::from_secs(15)).await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    load.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    assert!(
        load.answered() > before + 10,
        "the load did not go on after the crash"
    );
    assert_only_unavailable(&load)?;
    let pool = inspect(&pg.url()).await?;
    let answered = load.answered.lock().map(|a| a.clone()).unwrap_or_default();
    assert_nothing_lost(&cluster, &pool, &answered).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_network_pause_longer_than_the_statement_timeout_fails_cleanly_and_heals() -> Result<()> {
    let _one = SERIAL.lock().await;
    let pg = PgInstance::start().await?;
    let proxy = PauseProxy::start(pg.addr()).await?;
    let Some(cluster) =
        Cluster::start(fault_options(pg.url(), Some(pg.url_via(proxy.addr)))).await?
    else {
        bail!("a cluster on a private PostgreSQL always starts");
    };
    let s = scenario(&cluster, 8).await?;
    let (load, workers) = start_load(&cluster, Arc::new(s.union_codes.clone()), 6)?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before = load.answered();

    let pause = Duration::from_secs(4);
    assert!(pause > STATEMENT_TIMEOUT * 2);
    load.watch.store(true, Ordering::Relaxed);
    proxy.pause();
    let paused = Instant::now();
    let not_ready = every_node_ready_is(
        &cluster,
        StatusCode::SERVICE_UNAVAILABLE,
        Duration::from_secs(3),
    )
    .await?;
    eprintln!("faults: /readyz 503 on each node {not_ready:?} into the pause");
    let during = load.answered();
    tokio::time::sleep(pause.saturating_sub(paused.elapsed())).await;
    proxy.resume();
    let resumed = Instant::now();
    eprintln!(
        "faults: the network to PostgreSQL paused for {:?}",
        paused.elapsed()
    );

    let ready = every_node_ready_is(&cluster, StatusCode::OK, Duration::from_secs(15)).await?;
    eprintln!("faults: /readyz 200 on each node {ready:?} after the pause");
    let answering =
        every_node_answers(&cluster, &s.union_codes[1], Duration::from_secs(15)).await?;
    eprintln!("faults: each node answered a query {answering:?} after the pause");
    load.watch.store(false, Ordering::Relaxed);
    one_holder_each(&cluster, Duration::from_secs(10)).await?;
    eprintln!(
        "faults: each role had one holder by {:?} after the pause ended",
        resumed.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    load.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    let slowest = load.slowest_watched.lock().map(|s| *s).unwrap_or_default();
    eprintln!(
        "faults: {} answered before the pause, {} by its 503s, the slowest answer during and after it {slowest:?}",
        before, during
    );
    assert!(
        slowest <= ANSWER_BOUND,
        "a query took {slowest:?} during the pause"
    );
    assert!(
        load.answered() > during + 10,
        "the load did not go on after the pause"
    );
    assert_only_unavailable(&load)?;
    let refused = load
        .refused
        .lock()
        .map(|r| r.values().sum::<u64>())
        .unwrap_or(0);
    assert!(refused > 0, "no query was refused during a {pause:?} pause");
    let answered = load.answered.lock().map(|a| a.clone()).unwrap_or_default();
    let pool = inspect(&pg.url()).await?;
    assert_nothing_lost(&cluster, &pool, &answered).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_role_metric_moves_to_another_node_when_the_holder_is_killed() -> Result<()> {
    let _one = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(ClusterOptions::default()).await? else {
        return Ok(());
    };
    // The first node took every role; the others show 0 for each.
    for role in ROLES {
        assert_eq!(
            cluster.role_holders(role).await,
            vec![0],
            "holders of {role}"
        );
        for i in 1..3 {
            assert_eq!(
                role_gauge(&cluster.metrics(i).await?, role),
                Some(0),
                "node {} {role}",
                i + 1
            );
        }
    }
    cluster.kill(0)?;
    let killed = Instant::now();
    one_holder_each(&cluster, TAKEOVER + Duration::from_secs(1)).await?;
    let took = killed.elapsed();
    eprintln!("faults: kakehashi_cluster_role moved to the other nodes {took:?} after kill -9 (stated: {TAKEOVER:?})");
    assert!(took <= TAKEOVER, "the role metric moved after {took:?}");
    for role in ROLES {
        let holders = cluster.role_holders(role).await;
        assert!(
            holders.len() == 1 && holders[0] != 0,
            "holders of {role}: {holders:?}"
        );
    }
    Ok(())
}

/// Ports `first..first + n` all free on loopback.
fn consecutive_free_ports(n: u16) -> Result<u16> {
    for _ in 0..200 {
        let first: u16 = 20_000 + rand::random::<u16>() % 40_000;
        let all_free =
            (first..first + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return Ok(first);
        }
    }
    bail!("no {n} consecutive free ports")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_with_three_nodes_prints_three_listeners_that_answer_and_stops_cleanly() -> Result<()> {
    let _one = SERIAL.lock().await;
    let Some(base) = kakehashi_tests::pg_base_url() else {
        return Ok(());
    };
    let url = kakehashi_tests::fresh_pg_database(&base).await?;
    let bin = kakehashi_tests::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")?;
    let work = tempfile::tempdir()?;
    let dir = work.path().join("kakehashi-dev");
    let first = consecutive_free_ports(6)?;
    let mut child = tokio::process::Command::new(bin)
        .arg("dev")
        .arg("--dir")
        .arg(&dir)
        .arg("--nodes")
        .arg("3")
        .arg("--postgres-url")
        .arg(&url)
        .arg("--listen")
        .arg(format!("127.0.0.1:{first}"))
        .arg("--console-listen")
        .arg(format!("127.0.0.1:{}", first + 3))
        .env("KAKEHASHI_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut exchanges = Vec::new();
    let mut printed = String::new();
    let started = Instant::now();
    while exchanges.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .with_context(|| format!("dev printed no three nodes within 60 s:\n{printed}"))??
            .with_context(|| format!("dev ended before printing three nodes:\n{printed}"))?;
        printed.push_str(&line);
        printed.push('\n');
        // "  node N: exchange https://ADDR  console https://ADDR  (config)"
        if let Some(rest) = line.trim_start().strip_prefix("node ") {
            if let Some(addr) = rest
                .split_once("exchange https://")
                .and_then(|(_, a)| a.split_whitespace().next())
            {
                exchanges.push(addr.parse::<std::net::SocketAddr>()?);
            }
        }
    }
    // Keep reading what it prints, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let expected: Vec<std::net::SocketAddr> = (first..first + 3)
        .map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    assert_eq!(
        exchanges, expected,
        "listeners on consecutive ports:\n{printed}"
    );

    let pki = dir.join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt"))?;
    let cert_pem = std::fs::read_to_string(pki.join("city-saitama.crt"))?;
    let key_pem = std::fs::read_to_string(pki.join("city-saitama.key"))?;
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    let cert = kakehashi_certs::IssuedCert {
        cert_pem,
        key_pem,
        cert_der: der.to_vec(),
        serial_hex: String::new(),
        fingerprint_sha256: String::new(),
    };
    for (i, addr) in exchanges.iter().enumerate() {
        // The other nodes start after the first is up: wait for each.
        let answer = loop {
            let attempt = async {
                let mut c = TestClient::connect(*addr, &ca, Some(&cert), Protocol::Http1).await?;
                c.get("/v1/whoami").await
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(r)) => break r,
                _ if started.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => bail!(
                    "node {} at {addr} does not answer: {:?}",
                    i + 1,
                    other.map(|r| r.map(|r| r.status))
                ),
            }
        };
        assert_eq!(answer.status, StatusCode::OK, "node {} whoami", i + 1);
        assert_eq!(answer.json()?["org_id"], "city-saitama", "node {}", i + 1);
    }
    eprintln!(
        "faults: dev --nodes 3 answered on {exchanges:?} {:?} after it started",
        started.elapsed()
    );

    // SIGTERM: every node stops, the command exits successfully.
    let pid = child.id().context("dev pid")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("dev did not stop within 30 s of SIGTERM")??;
    assert!(exit.success(), "dev exited with {exit}");
    for addr in &exchanges {
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "a node still listens on {addr} after dev stopped"
        );
    }
    Ok(())
}
