//! Test harness: real brokers on 127.0.0.1:0 with certificates from the certs
//! crate, real SQLite files and real PostgreSQL databases, and a small mutual-TLS
//! HTTP client speaking HTTP/1.1 or HTTP/2.
//!
//! PostgreSQL tests read `KAKEHASHI_TEST_PG_URL` (set by `scripts/test`). When
//! it is set and the server is unreachable they fail; when it is unset they
//! print that they were not run.
#![forbid(unsafe_code)]

pub mod audit;
pub mod binaries;
pub mod cli;
pub mod cluster;
pub mod console;
pub mod exchange;
pub mod pause_proxy;
pub mod pg_instance;
pub mod tsa;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kakehashi_broker::config::{
    ExchangeConfig, KeysConfig, LimitsConfig, ListenConfig, StorageConfig, TlsConfig,
};
use kakehashi_broker::store::{self, NewOrg, Store};
use kakehashi_broker::{Config, RunningBroker};
use kakehashi_certs::{Ca, IssuedCert, OrgCertOptions, Validity};
use kakehashi_interfaces::{OrgId, OrgKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Environment variable naming the PostgreSQL server for tests.
pub const PG_ENV: &str = "KAKEHASHI_TEST_PG_URL";

/// A test PKI in a temporary directory: CA, server certificate, CRL.
pub struct TestPki {
    /// Directory holding everything (kept until drop).
    pub dir: TempDir,
    /// The CA.
    pub ca: Ca,
}

impl TestPki {
    /// A fresh CA with a server certificate for 127.0.0.1/localhost and an empty CRL.
    pub fn new() -> Result<TestPki> {
        let dir = tempfile::tempdir()?;
        let ca = Ca::generate("Kakehashi test CA")?;
        ca.save(dir.path(), false)?;
        kakehashi_certs::write_crl(dir.path())?;
        let server = ca.issue_server(&["localhost", "127.0.0.1"], Validity::days_from_now(30))?;
        kakehashi_certs::write_issued(dir.path(), "server", &server, false)?;
        Ok(TestPki { dir, ca })
    }

    /// Path of a file in the PKI directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A valid client certificate for `org`.
    pub fn org_cert(&self, org: &str) -> Result<IssuedCert> {
        self.org_cert_with(org, &OrgCertOptions::default())
    }

    /// A client certificate for `org` with chosen options.
    pub fn org_cert_with(&self, org: &str, opts: &OrgCertOptions) -> Result<IssuedCert> {
        Ok(self.ca.issue_org(org, opts)?)
    }

    /// Revokes a certificate and rewrites the CRL the broker reads.
    pub fn revoke(&self, cert: &IssuedCert) -> Result<()> {
        kakehashi_certs::revoke(self.dir.path(), &cert.serial_hex)?;
        Ok(())
    }
}

/// Reads `<pki>/<org>.crt` and `.key` as written by `kakehashi-broker dev`.
pub fn load_org_cert(pki: &Path, org: &str) -> Result<IssuedCert> {
    let cert_pem = std::fs::read_to_string(pki.join(format!("{org}.crt")))?;
    let key_pem = std::fs::read_to_string(pki.join(format!("{org}.key")))?;
    let info = kakehashi_certs::inspect_pem(&cert_pem)?;
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?.to_vec();
    Ok(IssuedCert {
        cert_pem,
        key_pem,
        cert_der,
        serial_hex: info.serial_hex,
        fingerprint_sha256: info.fingerprint_sha256,
    })
}

/// Which storage a test broker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A fresh database on the server named by `KAKEHASHI_TEST_PG_URL`.
    Postgres,
}

/// Set to `1` to run the suite without PostgreSQL: its variants then say,
/// on stderr where no test harness hides it, that they did not run.
pub const SKIP_PG_ENV: &str = "KAKEHASHI_SKIP_PG";

/// A loopback port for a process the test starts to listen on, taken
/// below the kernel's ephemeral range (32768 and up on Linux): a port that
/// `bind(":0")` hands out may be taken by an outgoing connection before the
/// process binds it, and then that process fails with "Address already in
/// use". A counter keeps the ports of one test run apart, starting where
/// the process id says, and each is checked free before it is handed out.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(FIRST + (start + n) % COUNT)?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!(
        "no free loopback port between {FIRST} and {}",
        FIRST + COUNT
    )
}

/// The PostgreSQL base URL; `None` only when `KAKEHASHI_SKIP_PG=1` asks to
/// run without it (said loudly). Unset otherwise: the test fails, so a
/// green run means the PostgreSQL variants ran.
pub fn pg_base_url() -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(SKIP_PG_ENV).as_deref() == Ok("1") => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! PostgreSQL variant NOT RUN: {SKIP_PG_ENV}=1 and {PG_ENV} is not set !!!\n"
            );
            None
        }
        _ => panic!(
            "{PG_ENV} is not set: run scripts/test (it starts PostgreSQL), or set {SKIP_PG_ENV}=1 to run without the PostgreSQL variants"
        ),
    }
}

/// Creates a fresh, uniquely named database and returns its URL.
pub async fn fresh_pg_database(base: &str) -> Result<String> {
    let (_, url) = kakehashi_broker::store::create_database(base, "kk_test")
        .await
        .with_context(|| format!("{PG_ENV} is set but no database could be made there"))?;
    Ok(url)
}

/// Storage settings for a backend (SQLite under `dir`).
pub async fn storage_config(backend: Backend, dir: &Path) -> Result<Option<StorageConfig>> {
    Ok(match backend {
        Backend::Sqlite => Some(StorageConfig {
            sqlite: Some(dir.join("kakehashi.db")),
            postgres_url: None,
            max_connections: 8,
            statement_timeout_ms: 5_000,
        }),
        Backend::Postgres => match pg_base_url() {
            None => None,
            Some(base) => Some(StorageConfig {
                sqlite: None,
                postgres_url: Some(fresh_pg_database(&base).await?),
                max_connections: 8,
                statement_timeout_ms: 5_000,
            }),
        },
    })
}

/// A broker under test, with its PKI and storage.
pub struct TestBroker {
    /// The PKI (CA, server cert).
    pub pki: TestPki,
    /// The running broker.
    pub broker: RunningBroker,
    /// The store, for arranging and inspecting state.
    pub store: Arc<dyn Store>,
    /// The config it runs with.
    pub config: Config,
    /// Scratch directory (SQLite file, keys).
    pub data: TempDir,
}

/// Options for [`TestBroker::start_with`].
pub struct BrokerOptions {
    /// Storage backend.
    pub backend: Backend,
    /// Limits; defaults are generous.
    pub limits: LimitsConfig,
    /// Orgs registered before start: (id, kind).
    pub orgs: Vec<(&'static str, OrgKind)>,
    /// Exchange settings (flow list, expiry).
    pub exchange: ExchangeConfig,
    /// Provision-record settings.
    pub records: kakehashi_broker::records::RecordsConfig,
    /// Own retention periods of personal data (R15).
    pub retention: kakehashi_broker::retention::RetentionConfig,
    /// The console listener (off unless `listen` is set).
    pub console: kakehashi_broker::config::ConsoleConfig,
    /// Accounts, sessions, lockout.
    pub people: kakehashi_broker::people::PeopleConfig,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            limits: LimitsConfig::default(),
            orgs: vec![
                ("union-saitama", OrgKind::Union),
                ("city-saitama", OrgKind::Municipality),
                ("city-kawagoe", OrgKind::Municipality),
                ("agency-pension", OrgKind::Agency),
            ],
            exchange: ExchangeConfig::default(),
            records: kakehashi_broker::records::RecordsConfig::default(),
            retention: kakehashi_broker::retention::RetentionConfig::default(),
            console: kakehashi_broker::config::ConsoleConfig::default(),
            people: kakehashi_broker::people::PeopleConfig::default(),
        }
    }
}

impl TestBroker {
    /// A SQLite broker with the sample orgs.
    pub async fn start() -> Result<TestBroker> {
        Self::start_with(BrokerOptions::default())
            .await?
            .context("sqlite broker always starts")
    }

    /// A broker with options; `Ok(None)` when the PostgreSQL variant is not configured.
    pub async fn start_with(opts: BrokerOptions) -> Result<Option<TestBroker>> {
        init_logging();
        let pki = TestPki::new()?;
        let data = tempfile::tempdir()?;
        let Some(storage) = storage_config(opts.backend, data.path()).await? else {
            return Ok(None);
        };
        let config = Config {
            listen: ListenConfig {
                address: "127.0.0.1:0".parse()?,
            },
            tls: TlsConfig {
                cert: pki.path("server.crt"),
                key: pki.path("server.key"),
                client_ca: vec![pki.path("ca.crt")],
                crls: vec![pki.path("ca.crl")],
                allow_tls12: false,
                reload_interval_secs: 0,
            },
            storage,
            limits: opts.limits,
            keys: KeysConfig {
                dir: data.path().join("keys"),
                ..KeysConfig::default()
            },
            exchange: opts.exchange,
            records: opts.records,
            retention: opts.retention,
            console: opts.console,
            people: opts.people,
        };
        let store = store::open(&config.storage).await?;
        for (id, kind) in &opts.orgs {
            store
                .add_org(&NewOrg {
                    id: OrgId::new(*id)?,
                    kind: *kind,
                    name: format!("{id} (test)"),
                    cert_fingerprint: None,
                })
                .await?;
        }
        let broker = RunningBroker::start(config.clone(), store.clone()).await?;
        Ok(Some(TestBroker {
            pki,
            broker,
            store,
            config,
            data,
        }))
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        self.broker.local_addr()
    }

    /// A connected HTTP/1.1 client for `org` with a fresh valid certificate.
    pub async fn client(&self, org: &str) -> Result<TestClient> {
        let cert = self.pki.org_cert(org)?;
        TestClient::connect(
            self.addr(),
            self.pki.ca.cert_pem(),
            Some(&cert),
            Protocol::Http1,
        )
        .await
    }

    /// How many refusals with this reason the broker counted.
    pub fn refusals(&self, reason: &'static str) -> u64 {
        self.broker.state().metrics.refusal_count(reason)
    }

    /// Restarts the listener with the current config (e.g. after a CRL change).
    pub async fn restart(self) -> Result<TestBroker> {
        let TestBroker {
            pki,
            broker,
            store,
            config,
            data,
        } = self;
        broker.shutdown().await;
        let broker = RunningBroker::start(config.clone(), store.clone()).await?;
        Ok(TestBroker {
            pki,
            broker,
            store,
            config,
            data,
        })
    }
}

/// HTTP version for a test client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (ALPN http/1.1).
    Http1,
    /// HTTP/2 (ALPN h2).
    Http2,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response as the test sees it.
#[derive(Debug)]
pub struct TestResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Whole body.
    pub body: Bytes,
    /// Negotiated HTTP version.
    pub version: http::Version,
}

impl TestResponse {
    /// Body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `code` of an error body.
    pub fn error_code(&self) -> Option<String> {
        self.json().ok()?.get("code")?.as_str().map(str::to_string)
    }
}

/// A mutual-TLS client on one connection.
pub struct TestClient {
    sender: Sender,
}

/// rustls client config trusting `ca_pem`, presenting `cert` if given.
pub fn client_tls(
    ca_pem: &str,
    cert: Option<&IssuedCert>,
    protocol: Protocol,
) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(cert) => {
            let chain = vec![CertificateDer::from(cert.cert_der.clone())];
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
        Protocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok(config)
}

/// Opens a TLS connection (handshake done, nothing sent).
pub async fn connect_tls(
    addr: SocketAddr,
    ca_pem: &str,
    cert: Option<&IssuedCert>,
    protocol: Protocol,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let config = client_tls(ca_pem, cert, protocol)?;
    let tcp = TcpStream::connect(addr).await?;
    let connector = TlsConnector::from(Arc::new(config));
    Ok(connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

impl TestClient {
    /// Connects and completes the TLS and HTTP handshakes.
    pub async fn connect(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&IssuedCert>,
        protocol: Protocol,
    ) -> Result<TestClient> {
        let tls = connect_tls(addr, ca_pem, cert, protocol).await?;
        let io = TokioIo::new(tls);
        let sender = match protocol {
            Protocol::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Sender::H1(sender)
            }
            Protocol::Http2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Sender::H2(sender)
            }
        };
        Ok(TestClient { sender })
    }

    /// Sends one request.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<TestResponse> {
        self.request_with(method, path, body, &[]).await
    }

    /// Sends one request with extra headers.
    pub async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<TestResponse> {
        let uri = match &self.sender {
            Sender::H1(_) => path.to_string(),
            Sender::H2(_) => format!("https://localhost{path}"),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if matches!(self.sender, Sender::H1(_)) {
            builder = builder.header(http::header::HOST, "localhost");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::new(body.into()))?;
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = response.status();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(TestResponse {
            status,
            headers,
            body,
            version,
        })
    }

    /// GET a path.
    pub async fn get(&mut self, path: &str) -> Result<TestResponse> {
        self.request(Method::GET, path, Bytes::new()).await
    }

    /// POST a body.
    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Result<TestResponse> {
        self.request(Method::POST, path, body).await
    }
}

/// Installs a test log subscriber once (logs go to the test's captured output).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KAKEHASHI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Two `#[tokio::test]`s running `suite(Backend)` on SQLite and on
/// PostgreSQL: `both_backends!(suite: suite_sqlite, suite_postgres);`.
#[macro_export]
macro_rules! both_backends {
    ($suite:ident: $sqlite:ident, $pg:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $sqlite() -> ::anyhow::Result<()> {
            $suite($crate::Backend::Sqlite).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $pg() -> ::anyhow::Result<()> {
            $suite($crate::Backend::Postgres).await
        }
    };
}

/// Runs SQL text (one or more statements) on the store's writer, to arrange
/// or tamper with state the way an operator with database access could.
pub async fn sql_exec(pools: &store::Pools, sql: &str) -> Result<()> {
    match pools {
        store::Pools::Sqlite { write, .. } => {
            sqlx::raw_sql(sql).execute(write).await?;
        }
        store::Pools::Postgres(pool) => {
            sqlx::raw_sql(sql).execute(pool).await?;
        }
    }
    Ok(())
}

/// The single integer a query such as `SELECT COUNT(*) …` returns.
pub async fn sql_count(pools: &store::Pools, sql: &str) -> Result<i64> {
    Ok(match pools {
        store::Pools::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_one(read).await?,
        store::Pools::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    })
}

/// The first column of every row a query returns, on either backend
/// (sequence numbers, stored texts, blobs).
pub async fn sql_column<T>(pools: &store::Pools, sql: &str) -> Result<Vec<T>>
where
    T: Send
        + Unpin
        + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>,
{
    Ok(match pools {
        store::Pools::Sqlite { read, .. } => sqlx::query_scalar(sql).fetch_all(read).await?,
        store::Pools::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await?,
    })
}

/// The value of the unlabelled sample `name` (e.g.
/// `kakehashi_record_commit_rows_sum`) in Prometheus text, if present.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (sample, value) = line.split_once(' ')?;
        if sample == name {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn a_metric_is_read_by_its_whole_name() {
        let text = "# HELP x\nkakehashi_a_total 3\nkakehashi_a_total_more 9\nkakehashi_b 2.5\n";
        assert_eq!(metric_value(text, "kakehashi_a_total"), Some(3.0));
        assert_eq!(metric_value(text, "kakehashi_b"), Some(2.5));
        assert_eq!(metric_value(text, "kakehashi_a"), None);
    }
}
