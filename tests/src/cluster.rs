//! Several `kakehashi-broker serve` processes on one PostgreSQL database,
//! as an operator runs them: one config per node (same TLS files, key
//! directory, flow list and database; only the listeners differ).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kakehashi_broker::store::{self, NewOrg, Store};
use kakehashi_interfaces::OrgId;
use tempfile::TempDir;

use crate::{fresh_pg_database, pg_base_url, BrokerOptions, Protocol, TestClient, TestPki};

/// What differs between clusters under test.
pub struct ClusterOptions {
    /// How many nodes.
    pub nodes: usize,
    /// Extra lines of `[exchange]` (e.g. `pending_ttl_secs = 3`).
    pub exchange: String,
    /// Extra lines of `[records]`.
    pub records: String,
    /// Extra lines of `[limits]`.
    pub limits: String,
    /// Extra lines of `[storage]` (e.g. `statement_timeout_ms = 1000`).
    pub storage: String,
    /// A database to use (e.g. of a private server) instead of a fresh one
    /// on the shared test server; the test's own store connects here.
    pub database: Option<String>,
    /// The URL the nodes use for the same database, when it differs (e.g.
    /// through a proxy); `database` otherwise.
    pub node_database: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            exchange: String::new(),
            // Checkpoints soon after each change, so a test sees them.
            records: "checkpoint_interval_ms = 200\n".into(),
            limits: String::new(),
            storage: String::new(),
            database: None,
            node_database: None,
        }
    }
}

/// One broker process of a cluster.
pub struct ClusterNode {
    child: Option<Child>,
    /// Exchange listener.
    pub addr: SocketAddr,
    /// Console listener.
    pub console: SocketAddr,
    /// Its config file.
    pub config: PathBuf,
    /// Its log (stderr).
    pub log: PathBuf,
}

/// A cluster under test; every process is killed on drop.
pub struct Cluster {
    /// The PKI the nodes trust.
    pub pki: TestPki,
    /// Configs, keys, flow list, logs.
    pub dir: TempDir,
    /// The database URL.
    pub url: String,
    /// The nodes, in start order.
    pub nodes: Vec<ClusterNode>,
    /// The database, for arranging and inspecting state.
    pub store: Arc<dyn Store>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn quoted(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl Cluster {
    /// Starts `opts.nodes` nodes on a fresh database with the sample orgs
    /// and flow list; `None` when PostgreSQL is skipped (`pg_base_url`).
    /// The first node starts alone (it creates the shared key directory and
    /// takes every role), the others once it answers.
    pub async fn start(opts: ClusterOptions) -> Result<Option<Cluster>> {
        crate::init_logging();
        let url = match &opts.database {
            Some(url) => url.clone(),
            None => {
                let Some(base) = pg_base_url() else {
                    return Ok(None);
                };
                fresh_pg_database(&base).await?
            }
        };
        let node_url = opts.node_database.clone().unwrap_or_else(|| url.clone());
        // Built before the clock starts (a no-op when up to date).
        crate::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")?;
        let started = Instant::now();
        let pki = TestPki::new()?;
        let dir = tempfile::tempdir()?;
        let flows = dir.path().join("flows.toml");
        std::fs::write(&flows, kakehashi_broker::policy::SAMPLE_FLOW_LIST)?;
        let storage = kakehashi_broker::config::StorageConfig {
            sqlite: None,
            postgres_url: Some(url.clone()),
            max_connections: 4,
            statement_timeout_ms: 5_000,
        };
        let store = store::open(&storage).await?;
        for (id, kind) in BrokerOptions::default().orgs {
            store
                .add_org(&NewOrg {
                    id: OrgId::new(id)?,
                    kind,
                    name: format!("{id} (test)"),
                    cert_fingerprint: None,
                })
                .await?;
        }
        let mut nodes = Vec::new();
        for i in 0..opts.nodes.max(1) {
            let addr: SocketAddr = format!("127.0.0.1:{}", crate::free_port()?).parse()?;
            let console: SocketAddr = format!("127.0.0.1:{}", crate::free_port()?).parse()?;
            let config = dir.path().join(format!("node-{}.toml", i + 1));
            let text = format!(
                "[listen]\naddress = \"{addr}\"\n\n[console]\nlisten = \"{console}\"\n\n\
                 [tls]\ncert = {}\nkey = {}\nclient_ca = [{}]\ncrls = [{}]\nreload_interval_secs = 0\n\n\
                 [storage]\npostgres_url = {:?}\nmax_connections = 8\n{}\n\n\
                 [keys]\ndir = {}\n\n[exchange]\nflow_list = {}\n{}\n\n[records]\n{}\n\n[limits]\n{}\n",
                quoted(&pki.path("server.crt")),
                quoted(&pki.path("server.key")),
                quoted(&pki.path("ca.crt")),
                quoted(&pki.path("ca.crl")),
                node_url,
                opts.storage,
                quoted(&dir.path().join("keys")),
                quoted(&flows),
                opts.exchange,
                opts.records,
                opts.limits,
            );
            std::fs::write(&config, text)?;
            nodes.push(ClusterNode {
                child: None,
                addr,
                console,
                log: dir.path().join(format!("node-{}.log", i + 1)),
                config,
            });
        }
        let mut cluster = Cluster {
            pki,
            dir,
            url,
            nodes,
            store,
        };
        cluster.spawn(0)?;
        cluster.wait_ready(0).await?;
        for i in 1..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 1..cluster.nodes.len() {
            cluster.wait_ready(i).await?;
        }
        eprintln!(
            "cluster: {} nodes ready after {:?}",
            cluster.nodes.len(),
            started.elapsed()
        );
        Ok(Some(cluster))
    }

    /// Starts node `i`'s process (again).
    pub fn spawn(&mut self, i: usize) -> Result<()> {
        let bin = crate::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")?;
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&node.config)
            .env(
                "KAKEHASHI_LOG",
                "warn,kakehashi_broker::cluster=info,kakehashi_broker::server=info",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `i` answers `/readyz` over mutual TLS.
    pub async fn wait_ready(&self, i: usize) -> Result<()> {
        let started = Instant::now();
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                let mut c = self.client(i, "city-saitama").await?;
                c.get("/readyz").await
            })
            .await;
            if let Ok(Ok(r)) = attempt {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "node {} did not become ready; its log:\n{}",
                    i + 1,
                    self.log(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A mutual-TLS client of `org` connected to node `i`.
    pub async fn client(&self, i: usize, org: &str) -> Result<TestClient> {
        let cert = self.pki.org_cert(org)?;
        TestClient::connect(
            self.nodes[i].addr,
            self.pki.ca.cert_pem(),
            Some(&cert),
            Protocol::Http1,
        )
        .await
    }

    /// `kill -9` node `i`: no shutdown, no final checkpoint, no goodbye.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let mut child = self.nodes[i]
            .child
            .take()
            .with_context(|| format!("node {} is not running", i + 1))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Node `i`'s log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Whether node `i`'s process runs (it was not killed).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Node `i`'s `/metrics` text.
    pub async fn metrics(&self, i: usize) -> Result<String> {
        let mut c = self.client(i, "city-saitama").await?;
        let r = c.get("/metrics").await?;
        if r.status != 200 {
            bail!("node {} answered /metrics with {}", i + 1, r.status);
        }
        Ok(String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The running nodes whose `/metrics` say they hold `role`
    /// (`kakehashi_cluster_role{role="…"} 1`); nodes that do not answer
    /// within a second count as not holding it.
    pub async fn role_holders(&self, role: &str) -> Vec<usize> {
        let mut holders = Vec::new();
        for i in 0..self.nodes.len() {
            if !self.is_running(i) {
                continue;
            }
            let text = tokio::time::timeout(Duration::from_secs(1), self.metrics(i)).await;
            if let Ok(Ok(text)) = text {
                if role_gauge(&text, role) == Some(1) {
                    holders.push(i);
                }
            }
        }
        holders
    }

    /// Which nodes' logs say they took `role` (e.g. `"sealer"`).
    pub fn holders_of(&self, role: &str) -> Vec<usize> {
        let wanted = format!("role=\"{role}\"");
        let alt = format!("role={role}");
        (0..self.nodes.len())
            .filter(|i| {
                self.log(*i).lines().any(|l| {
                    l.contains("this node took the role")
                        && (l.contains(&wanted) || l.contains(&alt))
                })
            })
            .collect()
    }

    /// Runs `kakehashi-broker ARGS --config <node i's config>`-style host
    /// commands: `args` go first, then `--config` and the file.
    pub fn host_command(
        &self,
        i: usize,
        command: &str,
        args: &[&str],
    ) -> Result<std::process::Output> {
        let bin = crate::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")?;
        Ok(Command::new(bin)
            .arg(command)
            .arg("--config")
            .arg(&self.nodes[i].config)
            .args(args)
            .env("KAKEHASHI_LOG", "error")
            .output()?)
    }
}

/// The value of `kakehashi_cluster_role{role="<role>"}` in Prometheus text.
pub fn role_gauge(text: &str, role: &str) -> Option<i64> {
    let sample = format!("kakehashi_cluster_role{{role=\"{role}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&sample))
        .and_then(|v| v.trim().parse().ok())
}
