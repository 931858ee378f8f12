//! The broker's keys across nodes and their rotation (docs/keys.md): a node
//! with other key files than the database has seen is refused at start,
//! naming the file; `kakehashi-broker keys rotate-*` (real subprocesses)
//! rotate the permit, checkpoint and key-encryption keys while brokers
//! serve, and what was signed or encrypted before still verifies and
//! decrypts.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kakehashi_broker::RunningBroker;
use kakehashi_interfaces::records::RecordKeySet;
use kakehashi_interfaces::{PermitKeySet, QueryResponse, QueryStatus};
use kakehashi_tests::cluster::{Cluster, ClusterOptions};
use kakehashi_tests::exchange::{exchange_broker_with, income_of, query_body, scenario, Scenario};
use kakehashi_tests::{sql_count, Backend, TestBroker, TestClient};

/// Re-read the keys every second, so rotations reach the broker in a test's time.
const RELOAD_SECS: u64 = 1;

fn broker_binary() -> Result<PathBuf> {
    kakehashi_tests::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")
}

/// A SQLite broker with the sample flows that re-reads its keys every
/// second and checkpoints often, and a broker.toml naming its database and
/// key directory for the host commands.
async fn broker() -> Result<(TestBroker, PathBuf)> {
    // Built before any connection opens (a no-op when up to date), so no
    // client idles out while the host command is built.
    broker_binary()?;
    let mut broker = exchange_broker_with(Backend::Sqlite, |o| {
        o.records.checkpoint_interval_ms = 100;
    })
    .await?
    .context("sqlite broker")?;
    broker.config.keys.reload_interval_secs = RELOAD_SECS;
    // The flow list was stored at the first start; its file is gone.
    broker.config.exchange.flow_list = None;
    let broker = broker.restart().await?;
    let toml = broker.data.path().join("broker.toml");
    let sqlite = broker
        .config
        .storage
        .sqlite
        .clone()
        .context("sqlite path")?;
    std::fs::write(
        &toml,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[tls]\ncert = \"none.crt\"\nkey = \"none.key\"\n\
             client_ca = [\"none.crt\"]\n[storage]\nsqlite = {:?}\n[keys]\ndir = {:?}\n\
             reload_interval_secs = {RELOAD_SECS}\n",
            sqlite.display().to_string(),
            broker.config.keys.dir.display().to_string(),
        ),
    )?;
    Ok((broker, toml))
}

/// `kakehashi-broker <args…>` as an administrator runs it.
async fn host(args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = tokio::process::Command::new(broker_binary()?);
    cmd.args(args).env("KAKEHASHI_LOG", "error");
    Ok(tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("the host command did not finish in 120 s")??)
}

/// `kakehashi-broker keys --config <toml> <action>`, which must succeed; its stdout.
async fn keys(toml: &Path, action: &str) -> Result<String> {
    let toml = toml.display().to_string();
    let out = host(&["keys", "--config", &toml, action]).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "keys {action} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// Asks the city for one person's income; the answer and its reply key.
async fn provided(
    union: &mut TestClient,
    person: &str,
) -> Result<(QueryResponse, kakehashi_interfaces::ReplyKeyPair)> {
    let (body, keys) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        person,
        &["local_tax.income"],
    );
    let response = union.post("/v1/queries", body).await?;
    let answer: QueryResponse = serde_json::from_slice(&response.body)
        .with_context(|| String::from_utf8_lossy(&response.body).into_owned())?;
    if answer.status != QueryStatus::Provided {
        bail!("not provided: {:?}", answer.status);
    }
    Ok((answer, keys))
}

async fn permit_keys(client: &mut TestClient) -> Result<PermitKeySet> {
    Ok(serde_json::from_slice(
        &client.get("/v1/permit-keys").await?.body,
    )?)
}

fn key_ids(set: &PermitKeySet) -> Vec<String> {
    set.keys.iter().map(|k| k.key_id.to_string()).collect()
}

/// Polls `check` every 100 ms until it holds, for at most `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!("{what} did not happen within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces a hex key file with another random key.
fn replace_hex_key(path: &Path) -> Result<()> {
    std::fs::remove_file(path)?;
    std::fs::write(path, hex::encode(rand::random::<[u8; 32]>()))?;
    Ok(())
}

#[tokio::test]
async fn a_node_with_other_key_files_than_the_database_has_seen_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let config = broker.config.clone();
    let store = broker.store.clone();
    broker.broker.shutdown().await;
    let dir = config.keys.dir.clone();
    let saved = tempfile::tempdir()?;
    for name in ["lookup.key", "records-sealer.pem"] {
        std::fs::copy(dir.join(name), saved.path().join(name))?;
    }

    // Another lookup key: Individual Numbers would no longer be found.
    replace_hex_key(&dir.join("lookup.key"))?;
    let refused = RunningBroker::start(config.clone(), store.clone())
        .await
        .err()
        .context("a broker with another lookup.key started")?;
    let message = format!("{refused:#}");
    assert!(
        message.contains("lookup.key differs from the key the database was first used with")
            && message.contains("copy the key directory from a running node"),
        "{message}"
    );
    std::fs::copy(saved.path().join("lookup.key"), dir.join("lookup.key"))?;

    // Another checkpoint key.
    std::fs::remove_file(dir.join("records-sealer.pem"))?;
    kakehashi_broker::keys::load_or_create_sealer(&dir)?;
    let refused = RunningBroker::start(config.clone(), store.clone())
        .await
        .err()
        .context("a broker with another records-sealer.pem started")?;
    let message = format!("{refused:#}");
    assert!(
        message.contains("records-sealer.pem differs from the checkpoint key the database records"),
        "{message}"
    );
    // The message names ids, never key material.
    let pem = std::fs::read_to_string(dir.join("records-sealer.pem"))?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!message.contains(&body), "the refusal shows the key");

    // With the directory's own files back, it starts.
    std::fs::remove_file(dir.join("records-sealer.pem"))?;
    std::fs::copy(
        saved.path().join("records-sealer.pem"),
        dir.join("records-sealer.pem"),
    )?;
    let broker = RunningBroker::start(config, store).await?;
    broker.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rotate_permit_while_serving_keeps_earlier_permits_verifiable() -> Result<()> {
    let (broker, toml) = broker().await?;
    let mut s = scenario(&broker, 3).await?;
    let (before, before_keys) = provided(&mut s.union, &s.union_codes[0]).await?;
    let old_id = before.permit.claims.key_id.to_string();
    assert_eq!(
        key_ids(&permit_keys(&mut s.union).await?),
        vec![old_id.clone()]
    );

    let out = keys(&toml, "rotate-permit").await?;
    assert!(out.contains(&old_id), "{out}");
    let new_id = out
        .lines()
        .find_map(|l| l.split("-> ").nth(1))
        .map(|id| id.trim().to_string())
        .context("rotate-permit names the new key")?;
    assert_ne!(new_id, old_id);

    // The new key is published on the next re-read, before it signs.
    let started = Instant::now();
    while !key_ids(&permit_keys(&mut s.union).await?).contains(&new_id) {
        if started.elapsed() > Duration::from_secs(5) {
            bail!("the new key {new_id} is not published");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Then permits carry the new key id.
    let started = Instant::now();
    let (after, after_keys) = loop {
        let (answer, keys) = provided(&mut s.union, &s.union_codes[1]).await?;
        if answer.permit.claims.key_id.as_str() == new_id {
            break (answer, keys);
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!("permits are still signed with {old_id}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Both keys are published, and both permits verify as a client checks them.
    let set = permit_keys(&mut s.union).await?;
    let ids = key_ids(&set);
    assert!(ids.contains(&old_id) && ids.contains(&new_id), "{ids:?}");
    let now = time::OffsetDateTime::now_utc();
    before
        .permit
        .verify_for(&set, &before_keys.public(), now)
        .context("a permit signed before the rotation")?;
    after
        .permit
        .verify_for(&set, &after_keys.public(), now)
        .context("a permit signed after the rotation")?;

    // The old key cannot be retired while its permits are valid.
    let out = keys(&toml, "retire-permit").await?;
    assert!(
        out.contains(&format!("permit key {old_id} still verifies permits until")),
        "{out}"
    );
    assert!(key_ids(&permit_keys(&mut s.union).await?).contains(&old_id));

    let status = keys(&toml, "status").await?;
    assert!(status.contains(&format!("{new_id} active")), "{status}");
    assert!(status.contains(&format!("{old_id} previous")), "{status}");
    assert!(status.contains("starts on this database"), "{status}");
    let logged = sql_count(
        &broker.store.pools(),
        "SELECT COUNT(*) FROM operation_log WHERE action = 'keys_changed'",
    )
    .await?;
    assert_eq!(logged, 1, "the rotation is in the operation log");
    broker.broker.shutdown().await;
    Ok(())
}

async fn record_keys(client: &mut TestClient) -> Result<RecordKeySet> {
    Ok(serde_json::from_slice(
        &client.get("/v1/record-keys").await?.body,
    )?)
}

/// The published checkpoint key ids, the current key first.
async fn record_key_ids(client: &mut TestClient) -> Result<Vec<String>> {
    Ok(record_keys(client)
        .await?
        .keys
        .iter()
        .map(|k| k.key_id.to_string())
        .collect())
}

async fn checkpoint_keys(broker: &TestBroker) -> Result<i64> {
    sql_count(
        &broker.store.pools(),
        "SELECT COUNT(DISTINCT key_id) FROM record_checkpoints",
    )
    .await
}

/// `records verify` on the host passes and names both checkpoint keys.
async fn verify_names_both_keys(toml: &Path, old_id: &str, new_id: &str) -> Result<()> {
    let toml = toml.display().to_string();
    let verify = host(&["records", "verify", "--config", &toml]).await?;
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        stdout.contains(old_id) && stdout.contains(new_id),
        "{stdout}"
    );
    Ok(())
}

#[tokio::test]
async fn rotate_sealer_keeps_old_checkpoints_trusted() -> Result<()> {
    let (broker, toml) = broker().await?;
    let mut s = scenario(&broker, 2).await?;
    provided(&mut s.union, &s.union_codes[0]).await?;
    let old = record_keys(&mut s.union).await?;
    assert_eq!(old.keys.len(), 1);
    let old_id = old.keys[0].key_id.to_string();
    eventually(Duration::from_secs(5), "a checkpoint", || async {
        Ok(checkpoint_keys(&broker).await? == 1)
    })
    .await?;

    let out = keys(&toml, "rotate-sealer").await?;
    assert!(out.contains(&old_id), "{out}");
    assert!(broker
        .config
        .keys
        .dir
        .join(format!("records-sealer-{old_id}.pub"))
        .exists());

    // The node restarts (one at a time in a cluster) and signs with the new key.
    let broker = broker.restart().await?;
    let mut union = broker.client("union-saitama").await?;
    provided(&mut union, &s.union_codes[1]).await?;
    eventually(
        Duration::from_secs(5),
        "a checkpoint by the new key",
        || async { Ok(checkpoint_keys(&broker).await? == 2) },
    )
    .await?;

    let ids = record_key_ids(&mut union).await?;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&old_id));
    assert_ne!(ids[0], old_id, "the current key is listed first");

    verify_names_both_keys(&toml, &old_id, &ids[0]).await?;
    broker.broker.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_running_broker_signs_with_a_rotated_sealer_key_without_a_restart() -> Result<()> {
    let (broker, toml) = broker().await?;
    let mut s = scenario(&broker, 2).await?;
    provided(&mut s.union, &s.union_codes[0]).await?;
    let old_id = record_keys(&mut s.union).await?.keys[0].key_id.to_string();
    eventually(Duration::from_secs(5), "a checkpoint", || async {
        Ok(checkpoint_keys(&broker).await? == 1)
    })
    .await?;

    keys(&toml, "rotate-sealer").await?;
    // No restart: the next checkpoint reads the key file again.
    provided(&mut s.union, &s.union_codes[1]).await?;
    eventually(
        Duration::from_secs(5),
        "a checkpoint by the new key, the broker still running",
        || async { Ok(checkpoint_keys(&broker).await? == 2) },
    )
    .await?;
    let ids = record_key_ids(&mut s.union).await?;
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_ne!(ids[0], old_id, "the new key is listed first");
    assert_eq!(ids[1], old_id, "the old key stays published");
    assert_eq!(broker.broker.state().records.sealer_key_id(), ids[0]);
    // Key ids are hex digits, safe in the statement's text.
    let newest_by_new_key = sql_count(
        &broker.store.pools(),
        &format!(
            "SELECT COUNT(*) FROM record_checkpoints WHERE key_id = '{}' \
             AND seq = (SELECT MAX(seq) FROM record_checkpoints)",
            ids[0]
        ),
    )
    .await?;
    assert_eq!(
        newest_by_new_key, 1,
        "the newest checkpoint is the new key's"
    );

    verify_names_both_keys(&toml, &old_id, &ids[0]).await?;
    broker.broker.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn rotate_kek_rewraps_every_data_key_and_old_copies_still_decrypt() -> Result<()> {
    let (broker, toml) = broker().await?;
    let mut s: Scenario = scenario(&broker, 2).await?;
    keys(&toml, "new-data-key").await?;
    let pools = broker.store.pools();
    assert_eq!(
        sql_count(&pools, "SELECT COUNT(*) FROM data_keys").await?,
        2
    );
    let dir = broker.config.keys.dir.clone();
    let kek_files = |dir: &Path| -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("kek-"))
            .collect();
        names.sort();
        Ok(names)
    };
    let before = kek_files(&dir)?;

    let out = keys(&toml, "rotate-kek").await?;
    assert!(out.contains("2 data keys re-wrapped"), "{out}");
    assert_eq!(
        sql_count(&pools, "SELECT COUNT(DISTINCT kek_id) FROM data_keys").await?,
        1
    );
    let after = kek_files(&dir)?;
    assert_eq!(after.len(), before.len() + 1);

    // The serving broker still answers from the copies it holds.
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[0]).await?,
        Ok(2_000_000.into())
    );

    // The old key-encryption key removed, a restarted broker still decrypts
    // the copies deposited before the rotation.
    for old in &before {
        std::fs::remove_file(dir.join(old))?;
    }
    let broker = broker.restart().await?;
    let mut union = broker.client("union-saitama").await?;
    assert_eq!(
        income_of(&mut union, &s.union_codes[1]).await?,
        Ok(2_000_001.into())
    );
    let status = keys(&toml, "status").await?;
    assert!(status.contains("starts on this database"), "{status}");
    broker.broker.shutdown().await;
    Ok(())
}

/// Two nodes on PostgreSQL sharing a key directory, re-reading keys every second.
async fn two_nodes() -> Result<Option<Cluster>> {
    let Some(mut cluster) = Cluster::start(ClusterOptions {
        nodes: 2,
        ..ClusterOptions::default()
    })
    .await?
    else {
        return Ok(None);
    };
    // A rolling restart into a faster key re-read.
    for i in 0..cluster.nodes.len() {
        let text = std::fs::read_to_string(&cluster.nodes[i].config)?;
        let text = text.replacen(
            "[keys]\n",
            &format!("[keys]\nreload_interval_secs = {RELOAD_SECS}\n"),
            1,
        );
        std::fs::write(&cluster.nodes[i].config, text)?;
        cluster.kill(i)?;
        cluster.spawn(i)?;
        cluster.wait_ready(i).await?;
    }
    Ok(Some(cluster))
}

fn stdout_of(out: &std::process::Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout)
}

#[tokio::test]
async fn two_postgres_nodes_rotate_keys_while_serving() -> Result<()> {
    let Some(cluster) = two_nodes().await? else {
        return Ok(());
    };
    let mut s = kakehashi_tests::exchange::scenario_with(
        cluster.client(0, "union-saitama").await?,
        cluster.client(0, "city-saitama").await?,
        2,
    )
    .await?;
    let mut union_b = cluster.client(1, "union-saitama").await?;
    let (before, before_keys) = provided(&mut s.union, &s.union_codes[0]).await?;
    let old_id = before.permit.claims.key_id.to_string();

    // Rotation from node 1's host: node 2 publishes the new key and then
    // signs with it; node 1's earlier permit still verifies at node 2.
    let out = stdout_of(&cluster.host_command(0, "keys", &["rotate-permit"])?)?;
    let new_id = out
        .lines()
        .find_map(|l| l.split("-> ").nth(1))
        .map(|id| id.trim().to_string())
        .context("rotate-permit names the new key")?;
    let started = Instant::now();
    let (after, after_keys) = loop {
        let (answer, keys) = provided(&mut union_b, &s.union_codes[1]).await?;
        if answer.permit.claims.key_id.as_str() == new_id {
            break (answer, keys);
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!("node 2 still signs with {old_id}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let set = permit_keys(&mut union_b).await?;
    let now = time::OffsetDateTime::now_utc();
    before.permit.verify_for(&set, &before_keys.public(), now)?;
    after.permit.verify_for(&set, &after_keys.public(), now)?;

    // The key-encryption key, with both nodes serving.
    let out = stdout_of(&cluster.host_command(0, "keys", &["rotate-kek"])?)?;
    assert!(out.contains("data keys re-wrapped"), "{out}");
    assert_eq!(
        income_of(&mut union_b, &s.union_codes[0]).await?,
        Ok(2_000_000.into())
    );
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[1]).await?,
        Ok(2_000_001.into())
    );

    // A third node started with another lookup key is refused, naming the file.
    let other = cluster.dir.path().join("other-keys");
    std::fs::create_dir(&other)?;
    for entry in std::fs::read_dir(cluster.dir.path().join("keys"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), other.join(entry.file_name()))?;
        }
    }
    replace_hex_key(&other.join("lookup.key"))?;
    let text = std::fs::read_to_string(&cluster.nodes[1].config)?;
    let keys_line = format!(
        "dir = {:?}",
        cluster.dir.path().join("keys").display().to_string()
    );
    assert!(text.contains(&keys_line));
    let node3 = cluster.dir.path().join("node-3.toml");
    std::fs::write(
        &node3,
        text.replace(
            &keys_line,
            &format!("dir = {:?}", other.display().to_string()),
        )
        .replace(&cluster.nodes[1].addr.to_string(), "127.0.0.1:0")
        .replace(&cluster.nodes[1].console.to_string(), "127.0.0.1:0"),
    )?;
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(broker_binary()?)
            .arg("serve")
            .arg("--config")
            .arg(&node3)
            .env("KAKEHASHI_LOG", "error")
            .output(),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("lookup.key differs"), "{stderr}");

    // Both nodes still serve after the rotations.
    for i in 0..2 {
        cluster.wait_ready(i).await?;
    }
    Ok(())
}
