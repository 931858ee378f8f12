//! The console listener from the load generator's side: server-authenticated
//! TLS (no client certificate), a person's session cookie and CSRF token
//! carried the way a browser carries them, and an operator's login
//! (password, the first-time password change and TOTP enrolment, a TOTP code).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use kakehashi_benches::client::Target;

/// A TLS client config that trusts `ca` for the console's server
/// certificate and presents no client certificate (people log in instead).
pub fn tls(ca: &Path) -> Result<TlsConnector> {
    let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.with_context(|| format!("parse {}", ca.display()))?)
            .with_context(|| format!("trust {}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A logged-in person's cookie and CSRF token; several connections may share it.
#[derive(Clone, Default)]
pub struct Session {
    cookie: Option<String>,
    csrf: Option<String>,
}

impl Session {
    /// Takes a new cookie or CSRF token from a response, as a browser does.
    fn update(&mut self, reply: &ConsoleReply) {
        if let Some(set) = &reply.set_cookie {
            let pair = set.split(';').next().unwrap_or("").to_string();
            self.cookie = pair
                .split_once('=')
                .filter(|(_, v)| !v.is_empty())
                .map(|_| pair.clone());
        }
        if let Ok(v) = serde_json::from_slice::<Value>(&reply.body) {
            if let Some(token) = v.get("csrf_token").and_then(Value::as_str) {
                self.csrf = Some(token.to_string());
            }
        }
    }
}

/// A console response: status, the `Set-Cookie` header if any, whole body.
pub struct ConsoleReply {
    /// HTTP status.
    pub status: StatusCode,
    /// `Set-Cookie`, if sent.
    pub set_cookie: Option<String>,
    /// Body bytes.
    pub body: Bytes,
}

impl ConsoleReply {
    /// The body as JSON (an error if it is not).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).context("the console's answer is not JSON")
    }

    /// The error code of a refusal, if the body carries one.
    pub fn error_code(&self) -> Option<String> {
        self.json()
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string))
    }

    /// Status and error code, for messages (never the body of a success).
    pub fn describe(&self) -> String {
        match self.error_code() {
            Some(code) => format!("{} {code}", self.status),
            None => self.status.to_string(),
        }
    }
}

/// One HTTP/1.1 keep-alive connection to the console listener.
pub struct ConsoleConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    authority: Arc<str>,
    driver: JoinHandle<()>,
}

impl ConsoleConn {
    /// TCP connect (from `source` when given: a loopback address other than
    /// 127.0.0.1 stands for another client), TLS and HTTP handshake.
    pub async fn connect(
        target: &Target,
        tls: &TlsConnector,
        source: Option<IpAddr>,
    ) -> Result<ConsoleConn> {
        let socket = match target.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip, 0))
                .with_context(|| format!("bind {ip}"))?;
        }
        let tcp = socket
            .connect(target.addr)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
        tcp.set_nodelay(true)?;
        let stream = tls
            .connect(target.server_name.clone(), tcp)
            .await
            .context("TLS handshake with the console")?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(ConsoleConn {
            sender,
            authority: Arc::from(target.authority.as_str()),
            driver,
        })
    }

    /// True while the peer has not closed the connection.
    pub fn is_open(&self) -> bool {
        !self.driver.is_finished()
    }

    /// One request with the session's cookie and CSRF token (if any) and a
    /// JSON body (if any); the session takes a new cookie or token from the answer.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&mut Session>,
    ) -> Result<ConsoleReply> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &*self.authority);
        if let Some(s) = session.as_deref() {
            if let Some(cookie) = &s.cookie {
                builder = builder.header(http::header::COOKIE, cookie);
            }
            if let Some(csrf) = &s.csrf {
                builder = builder.header("x-csrf-token", csrf);
            }
        }
        let bytes = match body {
            Some(v) => {
                builder = builder.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = builder.body(Full::new(bytes))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(req).await?;
        let status = response.status();
        let set_cookie = response
            .headers()
            .get(http::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.into_body().collect().await?.to_bytes();
        let reply = ConsoleReply {
            status,
            set_cookie,
            body,
        };
        if let Some(s) = session {
            s.update(&reply);
        }
        Ok(reply)
    }
}

impl Drop for ConsoleConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// An operator's credentials as the benchmark keeps them between runs.
#[derive(Clone, Serialize, Deserialize)]
pub struct Operator {
    /// The personal user id.
    pub user_id: String,
    /// The password in force (the temporary one until the first login).
    pub password: String,
    /// The enrolled TOTP secret, base32 as in the otpauth URI.
    #[serde(default)]
    pub totp_secret: Option<String>,
    /// The last TOTP step used: the broker accepts each step once, so the
    /// next login waits for a later one.
    #[serde(default)]
    pub last_totp_step: u64,
}

impl Operator {
    /// Reads a state file written by [`Operator::save`].
    pub fn load(path: &Path) -> Result<Operator> {
        let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is not an operator state file", path.display()))
    }

    /// Writes the state file, readable by its owner only (it holds a
    /// password and a TOTP secret).
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("create {}", tmp.display()))?;
        file.write_all(&serde_json::to_vec(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
    }

    fn totp_code(&self, step: u64) -> Result<String> {
        let encoded = self
            .totp_secret
            .clone()
            .context("no TOTP secret enrolled")?;
        let secret = totp_rs::Secret::Encoded(encoded)
            .to_bytes()
            .map_err(|e| anyhow!("the TOTP secret is not base32: {e:?}"))?;
        let totp = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, secret);
        Ok(totp.generate(step * TOTP_STEP_SECS))
    }
}

/// RFC 6238 time step.
const TOTP_STEP_SECS: u64 = 30;

fn unix_now() -> Result<std::time::Duration> {
    Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?)
}

/// The first step after `last` the broker accepts now (it accepts one step
/// either side of the current one), waiting for it when it is further ahead.
async fn usable_step(last: u64) -> Result<u64> {
    let now = unix_now()?;
    let current = now.as_secs() / TOTP_STEP_SECS;
    let step = current.max(last + 1);
    if step > current + 1 {
        // Sleep until `step - 1` is the current step.
        let at = std::time::Duration::from_secs((step - 1) * TOTP_STEP_SECS);
        tokio::time::sleep(at.saturating_sub(now)).await;
    }
    Ok(step)
}

/// A new password of 37 characters (policy: at least 12, not one of the last five).
fn new_password() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("bench-{hex}")
}

/// The `secret=` parameter of an otpauth URI.
fn secret_of(uri: &str) -> Result<String> {
    uri.split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .map(str::to_string)
        .context("otpauth URI without a secret")
}

fn stage(reply: &ConsoleReply, step: &str) -> Result<String> {
    if reply.status != StatusCode::OK {
        bail!("{step}: {}", reply.describe());
    }
    Ok(reply.json()?["stage"].as_str().unwrap_or("").to_string())
}

/// Logs `operator` in: password; the first time also a new password and
/// TOTP enrolment (`operator` then holds the new password and secret, and
/// the returned flag is true); then a TOTP code. A code's step is accepted
/// once: the code is of the first step after the last one used, waiting for
/// it when needed (two runs within one step).
pub async fn log_in(
    target: &Target,
    tls: &TlsConnector,
    operator: &mut Operator,
) -> Result<(Session, bool)> {
    // A refused code counts towards the lockout: one attempt, with a step
    // the broker has not seen used. Waited for first: the broker closes a
    // connection left idle between two requests.
    let step = usable_step(operator.last_totp_step).await?;
    let conn = &mut ConsoleConn::connect(target, tls, None).await?;
    let mut session = Session::default();
    let mut changed = false;
    let first = conn
        .call(
            Method::POST,
            "/api/session",
            Some(&json!({"user_id": operator.user_id, "password": operator.password})),
            Some(&mut session),
        )
        .await?;
    let mut next = stage(&first, "login")?;
    if next == "password_change" {
        let password = new_password();
        let reply = conn
            .call(
                Method::POST,
                "/api/session/password",
                Some(&json!({"current_password": operator.password, "new_password": password})),
                Some(&mut session),
            )
            .await?;
        next = stage(&reply, "password change")?;
        operator.password = password;
        changed = true;
    }
    if next == "totp_enrolment" {
        let reply = conn
            .call(
                Method::POST,
                "/api/session/totp/enrolment",
                None,
                Some(&mut session),
            )
            .await?;
        if reply.status != StatusCode::OK {
            bail!("TOTP enrolment: {}", reply.describe());
        }
        let uri = reply.json()?["otpauth_uri"]
            .as_str()
            .unwrap_or("")
            .to_string();
        operator.totp_secret = Some(secret_of(&uri)?);
        changed = true;
        next = "totp".into();
    }
    if next != "totp" {
        bail!("login: unexpected stage {next:?}");
    }
    let code = operator.totp_code(step)?;
    let reply = conn
        .call(
            Method::POST,
            "/api/session/totp",
            Some(&json!({"code": code})),
            Some(&mut session),
        )
        .await?;
    if reply.status != StatusCode::OK {
        bail!("TOTP code refused: {}", reply.describe());
    }
    operator.last_totp_step = step;
    Ok((session, changed))
}

/// Where the console is and how to trust it.
#[derive(clap::Args, Clone)]
pub struct ConsoleArgs {
    /// The console listener, e.g. https://127.0.0.1:7444.
    #[arg(long, default_value = "https://127.0.0.1:7444")]
    pub console_url: String,
    /// CA certificate of the console's server certificate (default: ca.crt in --pki, or --ca).
    #[arg(long)]
    pub console_ca: Option<PathBuf>,
}

impl ConsoleArgs {
    /// The CA file: `--console-ca`, else the exchange's `--ca`, else `<pki>/ca.crt`.
    pub fn ca(&self, ca: Option<&Path>, pki: Option<&Path>) -> Result<PathBuf> {
        self.console_ca
            .clone()
            .or_else(|| ca.map(Path::to_path_buf))
            .or_else(|| pki.map(|p| p.join("ca.crt")))
            .context("give --console-ca, --ca or --pki")
    }
}
