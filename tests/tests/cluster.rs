//! Three `kakehashi-broker serve` processes on one PostgreSQL database
//! (issue 25): one gap-free provision-record chain whichever node answers,
//! background work on exactly one node and taken over when it dies,
//! changes made on one node acted on by every node within a second, and
//! `kill -9` of a node under load losing no answered query's record.
//!
//! PostgreSQL only: these fail unless `KAKEHASHI_TEST_PG_URL` is set, or
//! say loudly that they did not run with `KAKEHASHI_SKIP_PG=1`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http::{Method, StatusCode};
use kakehashi_broker::cluster::TAKEOVER;
use kakehashi_broker::people::{NewUser, People, PeopleConfig, Role};
use kakehashi_interfaces::people::UserId;
use kakehashi_interfaces::{OrgId, QueryResponse, QueryStatus};
use kakehashi_tests::cluster::{Cluster, ClusterOptions};
use kakehashi_tests::console::{expect_ok, ConsoleClient, Person};
use kakehashi_tests::exchange::{opened_items, query_body, scenario_with, Scenario};
use kakehashi_tests::{sql_count, TestClient};

/// One cluster at a time: the timing assertions should not measure the
/// other tests' load on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything a change must reach every node within.
const WITHIN: Duration = Duration::from_secs(1);

async fn scenario(cluster: &Cluster, persons: u64) -> Result<Scenario> {
    scenario_with(
        cluster.client(0, "union-saitama").await?,
        cluster.client(0, "city-saitama").await?,
        persons,
    )
    .await
}

/// The union asks city-saitama for a person's income: the query id of an
/// answer it opened, or the refusal's error code.
async fn ask(client: &mut TestClient, union_code: &str) -> Result<Result<String, String>> {
    let (body, keys) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        union_code,
        &["local_tax.income"],
    );
    let response = client.post("/v1/queries", body).await?;
    if response.status != StatusCode::OK {
        return Ok(Err(response.error_code().unwrap_or_default()));
    }
    let items = opened_items(&response.body, &keys)?;
    if !items["local_tax.income"].is_number() {
        bail!("an answer without the income: {items}");
    }
    let answer: QueryResponse = serde_json::from_slice(&response.body)?;
    Ok(Ok(answer.query_id.to_string()))
}

/// `records verify` through the host command of node `i`'s config.
fn assert_chain_verifies(cluster: &Cluster, i: usize) -> Result<()> {
    let out = cluster.host_command(i, "records", &["verify"])?;
    assert!(
        out.status.success(),
        "records verify failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Sequence numbers run 1..=count with no gap and no repeat.
async fn assert_gap_free(cluster: &Cluster) -> Result<i64> {
    let pools = cluster.store.pools();
    let count = sql_count(&pools, "SELECT COUNT(*) FROM records").await?;
    let distinct = sql_count(&pools, "SELECT COUNT(DISTINCT seq) FROM records").await?;
    let max = sql_count(&pools, "SELECT COALESCE(MAX(seq), 0) FROM records").await?;
    let min = sql_count(&pools, "SELECT COALESCE(MIN(seq), 0) FROM records").await?;
    assert_eq!((min, max), (1, count), "sequence numbers have a gap");
    assert_eq!(distinct, count, "a sequence number is used twice");
    Ok(count)
}

/// Waits until a checkpoint covers sequence `seq`; how long that took.
async fn checkpoint_reaches(cluster: &Cluster, seq: i64, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    let pools = cluster.store.pools();
    loop {
        let sealed = sql_count(
            &pools,
            "SELECT COALESCE(MAX(seq), 0) FROM record_checkpoints",
        )
        .await?;
        if sealed >= seq {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("no checkpoint reached {seq} within {limit:?} (sealed {sealed})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn host_ok(out: std::process::Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "host command failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_through_three_nodes_make_one_gap_free_chain_sealed_by_one_node() -> Result<()> {
    let _one = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(ClusterOptions::default()).await? else {
        return Ok(());
    };
    let s = scenario(&cluster, 12).await?;
    let codes = Arc::new(s.union_codes.clone());
    // Three clients per node, all at once.
    let mut workers = Vec::new();
    for node in 0..3 {
        for w in 0..3 {
            let mut client = cluster.client(node, "union-saitama").await?;
            let codes = codes.clone();
            workers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for k in 0..15 {
                    let code = &codes[(k + w * 5 + node) % codes.len()];
                    match ask(&mut client, code).await? {
                        Ok(id) => ids.push(id),
                        Err(code) => bail!("node {} refused a query: {code}", node + 1),
                    }
                }
                Ok::<_, anyhow::Error>(ids)
            }));
        }
    }
    let mut answered = HashSet::new();
    for worker in workers {
        answered.extend(worker.await??);
    }
    assert_eq!(answered.len(), 135);
    let pools = cluster.store.pools();
    assert_eq!(
        sql_count(
            &pools,
            "SELECT COUNT(DISTINCT query_id) FROM records WHERE outcome = 'provided'"
        )
        .await?,
        135,
        "every answer has its record"
    );
    let head = assert_gap_free(&cluster).await?;
    checkpoint_reaches(&cluster, head, Duration::from_secs(5)).await?;
    assert_chain_verifies(&cluster, 2)?;
    // The first node took every role; the others none.
    for role in ["sealer", "sweeper", "retention"] {
        assert_eq!(cluster.holders_of(role), vec![0], "holders of {role}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_role_holder_is_killed_another_node_seals_and_expires_exactly_once() -> Result<()>
{
    let _one = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(ClusterOptions {
        exchange: "pending_ttl_secs = 3\nsweep_interval_secs = 1\n".into(),
        ..ClusterOptions::default()
    })
    .await?
    else {
        return Ok(());
    };
    let s = scenario(&cluster, 4).await?;
    for role in ["sealer", "sweeper", "retention"] {
        assert_eq!(cluster.holders_of(role), vec![0], "holders of {role}");
    }
    // Sensitive queries wait for approval; nobody approves them.
    let mut union = cluster.client(1, "union-saitama").await?;
    let mut pending = Vec::new();
    for code in &s.union_codes {
        let (body, _) = query_body(
            "F-0121",
            "benefit-reduction",
            "city-saitama",
            code,
            &["local_tax.income", "welfare.public_assistance"],
        );
        let answer: QueryResponse =
            serde_json::from_slice(&union.post("/v1/queries", body).await?.body)?;
        assert_eq!(answer.status, QueryStatus::Pending);
        pending.push(answer.query_id.to_string());
    }
    let created = Instant::now();

    cluster.kill(0)?;
    let killed = Instant::now();
    // Every role finds a new holder, exactly one each.
    loop {
        let held: Vec<Vec<usize>> = ["sealer", "sweeper", "retention"]
            .iter()
            .map(|r| {
                cluster
                    .holders_of(r)
                    .into_iter()
                    .filter(|i| *i != 0)
                    .collect()
            })
            .collect();
        if held.iter().all(|h| h.len() == 1) {
            break;
        }
        assert!(
            held.iter().all(|h| h.len() <= 1),
            "a role held by two nodes: {held:?}"
        );
        if killed.elapsed() > TAKEOVER + Duration::from_secs(1) {
            bail!("roles not taken over within {TAKEOVER:?}: {held:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed();
    eprintln!("cluster: roles taken over {takeover:?} after kill -9 of their holder (stated: {TAKEOVER:?})");
    assert!(takeover <= TAKEOVER, "takeover took {takeover:?}");

    // Checkpoints resume: a new answer is sealed by the new sealer.
    let mut client = cluster.client(2, "union-saitama").await?;
    ask(&mut client, &s.union_codes[0])
        .await?
        .map_err(|c| anyhow::anyhow!("refused: {c}"))?;
    let head = sql_count(&cluster.store.pools(), "SELECT MAX(seq) FROM records").await?;
    let sealed = checkpoint_reaches(&cluster, head, Duration::from_secs(3)).await?;
    eprintln!("cluster: a record appended after the takeover was sealed within {sealed:?}");

    // The pending queries expire on the new sweeper: one `expired` record each.
    let pools = cluster.store.pools();
    let expired_sql = "SELECT COUNT(*) FROM records WHERE outcome = 'expired'";
    loop {
        let n = sql_count(&pools, expired_sql).await?;
        if n >= 4 {
            break;
        }
        if created.elapsed() > Duration::from_secs(3) + TAKEOVER + Duration::from_secs(3) {
            bail!("only {n} of 4 pending queries expired");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "cluster: pending queries (3 s) recorded expired {:?} after they were asked",
        created.elapsed()
    );
    // Two more sweeps on each remaining node: still one record per query.
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_eq!(sql_count(&pools, expired_sql).await?, 4);
    for id in &pending {
        assert_eq!(
            sql_count(
                &pools,
                &format!(
                    "SELECT COUNT(*) FROM records WHERE outcome = 'expired' AND query_id = '{id}'"
                )
            )
            .await?,
            1
        );
    }
    // The requester hears `expired` (410) from any node.
    let mut waiter = cluster.client(2, "union-saitama").await?;
    let status = waiter.get(&format!("/v1/queries/{}", pending[0])).await?;
    assert_eq!(status.status, StatusCode::GONE);
    assert_eq!(status.error_code().as_deref(), Some("expired"));
    assert_gap_free(&cluster).await?;
    assert_chain_verifies(&cluster, 1)?;
    Ok(())
}

/// Polls `check` on every node's fresh client until it holds on all of
/// them; the time that took.
async fn on_every_node<F, Fut>(cluster: &Cluster, org: &str, mut check: F) -> Result<Duration>
where
    F: FnMut(TestClient) -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    let mut done = [false; 3];
    while !done.iter().all(|d| *d) {
        for (i, d) in done.iter_mut().enumerate() {
            if !*d {
                *d = check(cluster.client(i, org).await?).await?;
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            bail!("not on every node after 5 s: {done:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

async fn refused_with(mut client: TestClient, code: &str) -> Result<bool> {
    Ok(client.get("/v1/whoami").await?.error_code().as_deref() == Some(code))
}

/// An operator logged in on node 1 (added as `user`), and the console
/// client that carries their session.
async fn operator_on_node_1(cluster: &Cluster, user: &str) -> Result<ConsoleClient> {
    let ca = cluster.pki.ca.cert_pem().to_string();
    let people = People::new(cluster.store.pools(), PeopleConfig::default())?;
    let password = people
        .add_user(NewUser {
            user_id: UserId::new(user)?,
            org: OrgId::new("city-saitama")?,
            roles: [Role::Operator].into_iter().collect(),
            number_privilege: false,
        })
        .await?;
    let mut operator = Person {
        user_id: user.into(),
        password: password.expose().to_string(),
        totp_secret: None,
    };
    let mut console = ConsoleClient::connect_to(cluster.nodes[0].console, &ca).await?;
    console.log_in(&mut operator, 0).await?;
    Ok(console)
}

/// A sensitive query asked on node 2 and long-polled there; `console`'s
/// operator approves it on node 1. How long after the approval the
/// long-poll answered; fails unless it opened to the approved values.
async fn approval_wakes_node_2(
    cluster: &Cluster,
    s: &Scenario,
    console: &mut ConsoleClient,
) -> Result<Duration> {
    let (body, keys) = query_body(
        "F-0121",
        "benefit-reduction",
        "city-saitama",
        &s.union_codes[0],
        &["local_tax.income", "welfare.public_assistance"],
    );
    let mut union = cluster.client(1, "union-saitama").await?;
    let pending: QueryResponse =
        serde_json::from_slice(&union.post("/v1/queries", body).await?.body)?;
    assert_eq!(pending.status, QueryStatus::Pending);
    let query_id = pending.query_id.to_string();
    let path = format!("/v1/queries/{query_id}?wait=20");
    let woken = Arc::new(Mutex::new(None::<Instant>));
    let woken_at = woken.clone();
    let waiting = tokio::spawn(async move {
        let response = union.get(&path).await;
        if let Ok(mut at) = woken_at.lock() {
            *at = Some(Instant::now());
        }
        response
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let decided = Instant::now();
    let approved = console
        .call(
            Method::POST,
            &format!("/api/approvals/{query_id}/approve"),
            None,
        )
        .await?;
    expect_ok(&approved)?;
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    let latency = woken
        .lock()
        .ok()
        .and_then(|w| *w)
        .context("not woken")?
        .saturating_duration_since(decided);
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        opened_items(&answer.body, &keys)?["welfare.public_assistance"],
        false
    );
    Ok(latency)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_made_on_one_node_hold_on_every_node_within_a_second() -> Result<()> {
    let _one = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(ClusterOptions::default()).await? else {
        return Ok(());
    };
    let s = scenario(&cluster, 1).await?;
    let ca = cluster.pki.ca.cert_pem().to_string();

    // An approval on node 1 wakes the requester long-polling on node 2.
    let mut console = operator_on_node_1(&cluster, "kawada.op").await?;
    let latency = approval_wakes_node_2(&cluster, &s, &mut console).await?;
    eprintln!(
        "cluster: an approval asked of node 1 woke the long-poll on node 2 after {latency:?}"
    );
    assert!(latency < WITHIN, "woken after {latency:?}");

    // A user disabled by the host command: the session, carried to node 3,
    // ends there at once.
    console.move_to(cluster.nodes[2].console, &ca).await?;
    expect_ok(&console.call(Method::GET, "/api/approvals", None).await?)?;
    host_ok(cluster.host_command(0, "users", &["disable", "kawada.op"])?)?;
    let disabled = Instant::now();
    let refused = console.call(Method::GET, "/api/approvals", None).await?;
    assert!(
        refused.status == StatusCode::UNAUTHORIZED || refused.status == StatusCode::FORBIDDEN,
        "a disabled user's session still works on another node: {}",
        refused.status
    );
    eprintln!(
        "cluster: a disabled user was refused on node 3 {:?} after the host command",
        disabled.elapsed()
    );

    // A flow-list version approved by the host command is in force on every node.
    let before = cluster
        .client(2, "union-saitama")
        .await?
        .get("/v1/flows")
        .await?
        .json()?["version"]
        .as_u64()
        .context("flows version")?;
    let file = cluster.dir.path().join("flows-next.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n# reviewed again\n",
            kakehashi_broker::policy::SAMPLE_FLOW_LIST
        ),
    )?;
    let file = file.to_str().context("utf-8 path")?;
    host_ok(cluster.host_command(
        0,
        "flows",
        &["load", file, "--approve-as", "host:second-admin"],
    )?)?;
    let took = on_every_node(&cluster, "union-saitama", |mut c| async move {
        let v = c.get("/v1/flows").await?.json()?["version"].as_u64();
        Ok(v.is_some_and(|v| v > before))
    })
    .await?;
    eprintln!("cluster: an approved flow-list version was in force on every node after {took:?}");
    assert!(took < WITHIN, "flow list reached every node after {took:?}");

    // Every node has admitted both orgs below, so their records are cached.
    for org in ["city-kawagoe", "agency-pension"] {
        on_every_node(&cluster, org, |mut c| async move {
            Ok(c.get("/v1/whoami").await?.status == StatusCode::OK)
        })
        .await?;
    }

    // An org suspended by the host command is refused on every node.
    host_ok(cluster.host_command(0, "orgs", &["suspend", "city-kawagoe"])?)?;
    let took = on_every_node(&cluster, "city-kawagoe", |c| {
        refused_with(c, "org_suspended")
    })
    .await?;
    eprintln!("cluster: a suspension held on every node after {took:?}");
    assert!(
        took < WITHIN,
        "suspension reached every node after {took:?}"
    );

    // A pin to another certificate: this one is refused on every node.
    let other = "ab".repeat(32);
    host_ok(cluster.host_command(0, "orgs", &["pin", "agency-pension", &other])?)?;
    let took = on_every_node(&cluster, "agency-pension", |c| {
        refused_with(c, "certificate_pin_mismatch")
    })
    .await?;
    eprintln!("cluster: a pin change held on every node after {took:?}");
    assert!(took < WITHIN, "pin reached every node after {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listening_connection_gone_silent_is_replaced_and_approvals_still_wake() -> Result<()> {
    let _one = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(ClusterOptions::default()).await? else {
        return Ok(());
    };
    let s = scenario(&cluster, 1).await?;
    let mut console = operator_on_node_1(&cluster, "kawada.op").await?;
    // Every node's listening connection stops answering without closing
    // (its server process stopped): as after a failover that moved the
    // address, or a host gone without a word.
    let kakehashi_broker::store::Pools::Postgres(pool) = cluster.store.pools() else {
        bail!("a cluster runs on PostgreSQL");
    };
    let pool = &pool;
    let listeners: Vec<i32> = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
         WHERE application_name = 'kakehashi-listener' AND datname = current_database()",
    )
    .fetch_all(pool)
    .await?;
    assert_eq!(listeners.len(), cluster.nodes.len(), "one listener a node");
    let stopped = Stopped::new(&listeners)?;
    // Each node notices within two heartbeats and listens again.
    let replaced = Instant::now();
    loop {
        let fresh: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'kakehashi-listener' AND datname = current_database()
               AND NOT (pid = ANY($1))",
        )
        .bind(&listeners)
        .fetch_one(pool)
        .await?;
        if fresh == i64::try_from(cluster.nodes.len())? {
            break;
        }
        if replaced.elapsed() > Duration::from_secs(5) {
            bail!(
                "{fresh} of the nodes listen again after {:?}",
                replaced.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "cluster: every node listened again {:?} after its listening connection went silent",
        replaced.elapsed()
    );
    let latency = approval_wakes_node_2(&cluster, &s, &mut console).await?;
    eprintln!(
        "cluster: with the silent connections replaced, an approval woke node 2 after {latency:?}"
    );
    assert!(latency < WITHIN, "woken after {latency:?}");
    drop(stopped);
    Ok(())
}

/// Server processes stopped with SIGSTOP, continued on drop (also when a
/// test fails), so the database can shut down.
struct Stopped(Vec<i32>);

impl Stopped {
    fn new(pids: &[i32]) -> Result<Stopped> {
        let stopped = Stopped(pids.to_vec());
        for pid in pids {
            let status = std::process::Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -STOP {pid} failed (the tests run as the database's owner or root)");
            }
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_node_under_load_loses_no_answered_record() -> Result<()> {
    let _one = SERIAL.lock().await;
    // The load is as fast as the nodes go: no org limit (shared among the
    // nodes) may refuse it.
    let Some(mut cluster) = Cluster::start(ClusterOptions {
        limits: "per_org_per_second = 1000000\nper_org_burst = 1000000\n".into(),
        ..ClusterOptions::default()
    })
    .await?
    else {
        return Ok(());
    };
    let s = scenario(&cluster, 8).await?;
    let codes = Arc::new(s.union_codes.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let retries = Arc::new(AtomicU64::new(0));
    let addrs: Vec<_> = cluster.nodes.iter().map(|n| n.addr).collect();
    let ca = cluster.pki.ca.cert_pem().to_string();
    let cert = cluster.pki.org_cert("union-saitama")?;
    let mut workers = Vec::new();
    for w in 0..6usize {
        let (codes, stop, answered, retries, addrs, ca, cert) = (
            codes.clone(),
            stop.clone(),
            answered.clone(),
            retries.clone(),
            addrs.clone(),
            ca.clone(),
            cert.clone(),
        );
        workers.push(tokio::spawn(async move {
            // Each client starts on its own node and, when that node fails
            // it, retries on the next, as a client behind a balancer does.
            let mut node = w % 3;
            let mut client: Option<TestClient> = None;
            let mut k = w;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    match TestClient::connect(
                        addrs[node],
                        &ca,
                        Some(&cert),
                        kakehashi_tests::Protocol::Http1,
                    )
                    .await
                    {
                        Ok(c) => client = Some(c),
                        Err(_) => {
                            node = (node + 1) % 3;
                            retries.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let Some(c) = client.as_mut() else { continue };
                k += 1;
                match ask(c, &codes[k % codes.len()]).await {
                    Ok(Ok(id)) => {
                        if let Ok(mut a) = answered.lock() {
                            a.push(id);
                        }
                    }
                    Ok(Err(code)) => bail!("a live node refused a query: {code}"),
                    Err(_) => {
                        client = None;
                        node = (node + 1) % 3;
                        retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let before_kill = answered.lock().map(|a| a.len()).unwrap_or(0);
    cluster.kill(1)?;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    let answered = answered.lock().map(|a| a.clone()).unwrap_or_default();
    eprintln!(
        "cluster: {} answers ({before_kill} before kill -9 of node 2), {} retries on another node",
        answered.len(),
        retries.load(Ordering::Relaxed)
    );
    assert!(
        answered.len() > before_kill + 10,
        "load did not go on after the kill"
    );
    assert!(retries.load(Ordering::Relaxed) > 0, "no client was cut off");
    // Every answer a client received has its record.
    let recorded: Vec<(String,)> = match cluster.store.pools() {
        kakehashi_broker::store::Pools::Postgres(pool) => {
            sqlx::query_as("SELECT query_id FROM records WHERE outcome = 'provided'")
                .fetch_all(&pool)
                .await?
        }
        _ => bail!("a cluster runs on PostgreSQL"),
    };
    let recorded: HashSet<String> = recorded.into_iter().map(|(id,)| id).collect();
    let missing: Vec<&String> = answered
        .iter()
        .filter(|id| !recorded.contains(*id))
        .collect();
    assert!(missing.is_empty(), "answers without a record: {missing:?}");
    let head = assert_gap_free(&cluster).await?;
    checkpoint_reaches(&cluster, head, Duration::from_secs(5)).await?;
    assert_chain_verifies(&cluster, 0)?;
    Ok(())
}

/// The HAProxy configuration of `docs/cluster.md`, pointed at `cluster`'s
/// nodes and listening on `exchange` and `console` (loopback).
fn haproxy_config(cluster: &Cluster, exchange: u16, console: u16) -> Result<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cluster.md"))?;
    let section = doc
        .split("### HAProxy")
        .nth(1)
        .context("docs/cluster.md has no HAProxy section")?;
    let mut config = section
        .split("```")
        .nth(1)
        .context("the HAProxy section has no configuration block")?
        .to_string();
    for (i, node) in cluster.nodes.iter().enumerate() {
        config = config
            .replace(&format!("10.0.0.1{}:7443", i + 1), &node.addr.to_string())
            .replace(
                &format!("10.0.0.1{}:7444", i + 1),
                &node.console.to_string(),
            );
    }
    config = config
        .replace("bind :443\n", &format!("bind 127.0.0.1:{exchange}\n"))
        .replace("bind :8443\n", &format!("bind 127.0.0.1:{console}\n"));
    if config.contains("10.0.0.") || !config.contains(&format!("127.0.0.1:{exchange}")) {
        bail!("the documented HAProxy configuration no longer has the expected shape:\n{config}");
    }
    Ok(config)
}

/// Asks through the balancer on a new connection each time (so the
/// balancer chooses a node each time), retrying on a broken connection.
async fn ask_through(
    balancer: std::net::SocketAddr,
    cluster: &Cluster,
    cert: &kakehashi_certs::IssuedCert,
    code: &str,
) -> Result<(String, u32)> {
    let mut retries = 0;
    loop {
        let attempt = async {
            let mut c = TestClient::connect(
                balancer,
                cluster.pki.ca.cert_pem(),
                Some(cert),
                kakehashi_tests::Protocol::Http1,
            )
            .await?;
            ask(&mut c, code).await
        };
        match attempt.await {
            Ok(Ok(id)) => return Ok((id, retries)),
            Ok(Err(code)) => bail!("refused through the balancer: {code}"),
            Err(_) if retries < 5 => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn through_the_documented_haproxy_clients_reach_the_nodes_left_after_kill_9() -> Result<()> {
    let Some(haproxy) = [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .into_iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists()) else {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! haproxy is not installed: the load-balancer test did NOT run (apt-get install haproxy) !!!\n"
        );
        return Ok(());
    };
    let _one = SERIAL.lock().await;
    let Some(mut cluster) = Cluster::start(ClusterOptions::default()).await? else {
        return Ok(());
    };
    let s = scenario(&cluster, 4).await?;
    let (exchange, console) = (kakehashi_tests::free_port()?, kakehashi_tests::free_port()?);
    let config = cluster.dir.path().join("haproxy.cfg");
    std::fs::write(&config, haproxy_config(&cluster, exchange, console)?)?;
    let mut proxy = std::process::Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _proxy = Kill(&mut proxy);
    let balancer: std::net::SocketAddr = format!("127.0.0.1:{exchange}").parse()?;
    let started = Instant::now();
    while tokio::net::TcpStream::connect(balancer).await.is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("haproxy did not start listening");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cert = cluster.pki.org_cert("union-saitama")?;
    let mut answered = Vec::new();
    for k in 0..12 {
        answered.push(
            ask_through(balancer, &cluster, &cert, &s.union_codes[k % 4])
                .await?
                .0,
        );
    }
    cluster.kill(0)?;
    let mut retries = 0;
    for k in 0..24 {
        let (id, r) = ask_through(balancer, &cluster, &cert, &s.union_codes[k % 4]).await?;
        answered.push(id);
        retries += r;
    }
    eprintln!("cluster: 36 answers through haproxy, {retries} retried after kill -9 of node 1");
    let pools = cluster.store.pools();
    for id in &answered {
        assert_eq!(
            sql_count(
                &pools,
                &format!(
                    "SELECT COUNT(*) FROM records WHERE outcome = 'provided' AND query_id = '{id}'"
                )
            )
            .await?,
            1
        );
    }
    let head = assert_gap_free(&cluster).await?;
    checkpoint_reaches(&cluster, head, TAKEOVER + Duration::from_secs(3)).await?;
    assert_chain_verifies(&cluster, 1)?;
    Ok(())
}

/// Issue "cluster" 6: an org flooding every node at once is held to its
/// configured rate across the cluster (each node takes its share of the
/// nodes alive), not to N times it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_limit_holds_across_the_nodes_not_n_times_over() -> Result<()> {
    let _one = SERIAL.lock().await;
    let Some(cluster) = Cluster::start(ClusterOptions {
        limits: "per_org_per_second = 30\nper_org_burst = 30\n".into(),
        ..ClusterOptions::default()
    })
    .await?
    else {
        return Ok(());
    };
    // Every node has counted the others (one lease round, 1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let window = Duration::from_secs(3);
    let mut floods = Vec::new();
    for i in 0..cluster.nodes.len() {
        let mut client = cluster.client(i, "city-saitama").await?;
        floods.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut admitted = 0u32;
            while started.elapsed() < window {
                if client.get("/v1/whoami").await?.status == StatusCode::OK {
                    admitted += 1;
                }
            }
            anyhow::Ok(admitted)
        }));
    }
    let mut admitted = 0;
    for flood in floods {
        admitted += flood.await??;
    }
    // The configured limit over the window: 30/s for 3 s plus a burst of
    // 30 (= 120), and the rounding up of each node's share (3 × (10 × 3 +
    // 10) = 120 as well); three independent nodes would admit 360.
    assert!(
        admitted <= 130,
        "{admitted} requests admitted in 3 s against a cluster limit of 30/s (burst 30)"
    );
    assert!(
        admitted >= 60,
        "only {admitted} admitted: the limit is too strict"
    );
    Ok(())
}
