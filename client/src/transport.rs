//! Mutual-TLS HTTP transport with connection reuse and retries.
//!
//! hyper-util's legacy pool needs a `tower_service::Service` connector, and
//! that crate is not a dependency of this workspace; so the transport keeps
//! its own connections with hyper's `client::conn`: one shared HTTP/2
//! connection when the broker negotiates `h2` (every request multiplexed on
//! it), else a small pool of idle HTTP/1.1 connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{BrokerAddress, Profile};
use crate::error::ClientError;

/// Timeouts, retries and limits of a [`crate::Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest wait for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Longest wait for one request's full response (long-polls add their wait).
    pub request_timeout: Duration,
    /// Attempts per call, first one included. Only idempotent calls are
    /// retried after a broken connection; any call after 429/503.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with jitter.
    pub initial_backoff: Duration,
    /// Longest `Retry-After` honoured; a longer one ends the retries.
    pub max_retry_wait: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
    /// Idle HTTP/1.1 connections kept for reuse.
    pub max_idle_http1: usize,
}

/// Being throttled is not a failure of the call: a 429/503 may be retried this
/// many times more often than a transport error.
const THROTTLE_ATTEMPT_FACTOR: u32 = 3;

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_retry_wait: Duration::from_secs(30),
            max_response_bytes: 64 * 1024 * 1024,
            max_idle_http1: 32,
        }
    }
}

type Body = Full<Bytes>;

/// A request before it is sent.
pub(crate) struct Call {
    pub method: Method,
    pub path: String,
    pub body: Bytes,
    pub content_type: Option<&'static str>,
    /// Safe to send twice.
    pub idempotent: bool,
    /// Extra time on top of the request timeout (long-polls).
    pub extra_time: Duration,
    /// `Idempotency-Key`: the broker answers a repeat with what the first
    /// got, so the call may be sent again after a timeout.
    pub idempotency_key: Option<String>,
}

impl Call {
    pub fn get(path: impl Into<String>) -> Call {
        Call {
            method: Method::GET,
            path: path.into(),
            body: Bytes::new(),
            content_type: None,
            idempotent: true,
            extra_time: Duration::ZERO,
            idempotency_key: None,
        }
    }

    pub fn post(path: impl Into<String>, body: Bytes, content_type: &'static str) -> Call {
        Call {
            method: Method::POST,
            path: path.into(),
            body,
            content_type: Some(content_type),
            idempotent: false,
            extra_time: Duration::ZERO,
            idempotency_key: None,
        }
    }

    /// This call under an `Idempotency-Key`: safe to send again.
    pub fn with_idempotency_key(mut self, key: String) -> Call {
        self.idempotency_key = Some(key);
        self.idempotent = true;
        self
    }
}

/// A whole response.
pub(crate) struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RawResponse {
    /// `Retry-After` in seconds (the broker never sends the date form).
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    }
}

/// Whether a 409 says the first request under the key is still running
/// (rather than that the key was used for another request).
fn in_flight(resp: &RawResponse) -> bool {
    serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| {
            v.get("message")?
                .as_str()
                .map(|m| m.contains("being answered"))
        })
        .unwrap_or(false)
}

/// Where a connection task leaves the error that ended it.
type ErrorSlot = Arc<Mutex<Option<Cause>>>;

/// A connection failure in words, and whether TLS was its cause.
#[derive(Clone)]
struct Cause {
    message: String,
    tls: bool,
}

enum Sender {
    /// Shared: clones multiplex on one connection.
    H2(http2::SendRequest<Body>),
    /// Owned by one request at a time, then returned to the idle pool.
    H1(http1::SendRequest<Body>),
}

struct Conn {
    sender: Sender,
    /// Error seen by this connection's task, to explain a request that failed with it.
    error: ErrorSlot,
}

/// What went wrong with one attempt, and whether the request surely was not sent.
struct AttemptError {
    error: ClientError,
    not_sent: bool,
}

/// The connection holder shared by all clones of a client.
pub(crate) struct Transport {
    broker: String,
    authority: String,
    addr: BrokerAddress,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    options: ClientOptions,
    /// Held while connecting, so that concurrent callers share one new h2 connection.
    h2: tokio::sync::Mutex<Option<Conn>>,
    h1_idle: Mutex<Vec<Conn>>,
}

impl Transport {
    pub fn new(profile: &Profile, options: ClientOptions) -> Result<Transport, ClientError> {
        let addr = profile.broker_address()?;
        let tls = crate::tls::client_config(profile)?;
        let name = profile
            .server_name
            .clone()
            .unwrap_or_else(|| addr.host.clone());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|_| ClientError::config(format!("{name:?} is not a valid TLS server name")))?;
        let authority = if addr.host.contains(':') {
            format!("[{}]:{}", addr.host, addr.port)
        } else {
            format!("{}:{}", addr.host, addr.port)
        };
        Ok(Transport {
            broker: profile.broker.trim_end_matches('/').to_string(),
            authority,
            addr,
            server_name,
            connector: TlsConnector::from(tls),
            options,
            h2: tokio::sync::Mutex::new(None),
            h1_idle: Mutex::new(Vec::new()),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Opens a connection now, so that configuration and TLS problems show early.
    pub async fn warm_up(&self) -> Result<(), ClientError> {
        let mut attempt = 1;
        loop {
            match self.checkout().await {
                Ok(conn) => {
                    self.checkin(conn);
                    return Ok(());
                }
                Err(e) if e.not_sent && attempt < self.options.max_attempts.min(3) => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.error),
            }
        }
    }

    /// Sends a call with the retry policy; 429/503 after the last attempt come back as responses.
    pub async fn execute(&self, call: &Call) -> Result<RawResponse, ClientError> {
        let max = self.options.max_attempts.max(1);
        // max_attempts = 1 means no retries at all, throttled or not.
        let throttle_max = if max == 1 {
            1
        } else {
            max.saturating_mul(THROTTLE_ATTEMPT_FACTOR)
        };
        let mut attempt = 1;
        loop {
            match self.attempt(call).await {
                Ok(resp)
                    if matches!(
                        resp.status,
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                    ) && attempt < throttle_max =>
                {
                    // The broker refused before doing anything, so even a POST may be repeated.
                    // Jitter on top of Retry-After keeps many waiting workers from
                    // coming back in the same instant and being throttled again.
                    let wait = resp
                        .retry_after()
                        .map(|w| w + self.backoff(1))
                        .unwrap_or_else(|| self.backoff(attempt));
                    if wait > self.options.max_retry_wait {
                        return Ok(resp);
                    }
                    tracing::debug!(status = %resp.status, wait_ms = wait.as_millis() as u64, "broker asked to retry");
                    tokio::time::sleep(wait).await;
                }
                // A repeat under an idempotency key while the first is
                // still being answered: wait for it rather than fail.
                Ok(resp)
                    if resp.status == StatusCode::CONFLICT
                        && call.idempotency_key.is_some()
                        && in_flight(&resp)
                        && attempt < max =>
                {
                    tracing::debug!(
                        attempt,
                        "the first request under this idempotency key is still being answered"
                    );
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    let transient = matches!(
                        e.error,
                        ClientError::Transport { .. } | ClientError::Timeout { .. }
                    );
                    if !(transient && (e.not_sent || call.idempotent) && attempt < max) {
                        return Err(e.error);
                    }
                    tracing::debug!(error = %e.error, attempt, "retrying");
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
            }
            attempt += 1;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .options
            .initial_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(8));
        // Up to +50% jitter so that many clients do not retry in step.
        let jitter = u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng) % 512);
        base + base.mul_f64(jitter as f64 / 1024.0)
    }

    async fn attempt(&self, call: &Call) -> Result<RawResponse, AttemptError> {
        let limit = self.options.request_timeout + call.extra_time;
        let what = format!("{} {}", call.method, strip_query(&call.path));
        match tokio::time::timeout(limit, self.attempt_inner(call)).await {
            Ok(r) => r,
            Err(_) => Err(AttemptError {
                error: ClientError::Timeout { what, after: limit },
                not_sent: false,
            }),
        }
    }

    async fn attempt_inner(&self, call: &Call) -> Result<RawResponse, AttemptError> {
        let mut conn = self.checkout().await?;
        let mut builder = Request::builder()
            .method(call.method.clone())
            .header(
                header::USER_AGENT,
                concat!("kakehashi-client/", env!("CARGO_PKG_VERSION")),
            )
            .header(header::ACCEPT, "application/json");
        builder = match &conn.sender {
            Sender::H2(_) => builder.uri(format!("https://{}{}", self.authority, call.path)),
            Sender::H1(_) => builder
                .uri(call.path.as_str())
                .header(header::HOST, self.authority.as_str()),
        };
        if let Some(key) = &call.idempotency_key {
            builder = builder.header("idempotency-key", key.as_str());
        }
        if let Some(ct) = call.content_type {
            builder = builder.header(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        let request = builder
            .body(Full::new(call.body.clone()))
            .map_err(|e| AttemptError {
                error: ClientError::config(format!("cannot build request {}: {e}", call.path)),
                not_sent: true,
            })?;
        let sent = match &mut conn.sender {
            Sender::H2(s) => s.send_request(request).await,
            Sender::H1(s) => s.send_request(request).await,
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                // A broken connection must not be handed out again.
                self.forget(&conn).await;
                return Err(AttemptError {
                    not_sent: e.is_canceled(),
                    error: self.request_error(&e, &conn.error).await,
                });
            }
        };
        let status = response.status();
        // The broker closes a connection once it has refused its certificate
        // or org: no further request goes on it, or it would race the close
        // (GOAWAY) and could wait out the request timeout.
        let closing = status == StatusCode::UNAUTHORIZED;
        if closing {
            self.forget(&conn).await;
        }
        let headers = response.headers().clone();
        let body = Limited::new(response.into_body(), self.options.max_response_bytes)
            .collect()
            .await
            .map_err(|e| AttemptError {
                error: ClientError::Transport {
                    broker: self.broker.clone(),
                    message: format!("response body broken or too large: {e}"),
                },
                not_sent: false,
            })?
            .to_bytes();
        if !closing {
            self.checkin(conn);
        }
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// Takes an h2 `conn` out of use: the shared connection is dropped if it
    /// is still this one (a newer one another caller made stays). An HTTP/1.1
    /// connection is out of use already while a request holds it.
    async fn forget(&self, conn: &Conn) {
        if matches!(conn.sender, Sender::H2(_)) {
            let mut shared = self.h2.lock().await;
            if shared
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(&c.error, &conn.error))
            {
                *shared = None;
            }
        }
    }

    fn checkin(&self, conn: Conn) {
        if let Sender::H1(s) = &conn.sender {
            if !s.is_closed() {
                if let Ok(mut idle) = self.h1_idle.lock() {
                    if idle.len() < self.options.max_idle_http1 {
                        idle.push(conn);
                    }
                }
            }
        }
    }

    /// The shared h2 connection if it is still open.
    fn shared_h2(slot: &Option<Conn>) -> Option<Conn> {
        match slot {
            Some(Conn {
                sender: Sender::H2(s),
                error,
            }) if !s.is_closed() => Some(Conn {
                sender: Sender::H2(s.clone()),
                error: error.clone(),
            }),
            _ => None,
        }
    }

    /// An idle HTTP/1.1 connection that is ready for a request.
    async fn idle_h1(&self) -> Option<Conn> {
        loop {
            let mut conn = self.h1_idle.lock().ok()?.pop()?;
            if let Sender::H1(s) = &mut conn.sender {
                // Right after a response the connection may need a moment to
                // become ready again; a closed one is dropped.
                if !s.is_closed()
                    && matches!(
                        tokio::time::timeout(Duration::from_secs(1), s.ready()).await,
                        Ok(Ok(()))
                    )
                {
                    return Some(conn);
                }
            }
        }
    }

    async fn checkout(&self) -> Result<Conn, AttemptError> {
        if let Some(conn) = Self::shared_h2(&*self.h2.lock().await) {
            return Ok(conn);
        }
        if let Some(conn) = self.idle_h1().await {
            return Ok(conn);
        }
        // One caller connects while the others wait, so that they share a new
        // h2 connection instead of each opening one.
        let mut h2 = self.h2.lock().await;
        if let Some(conn) = Self::shared_h2(&h2) {
            return Ok(conn);
        }
        let conn = self.connect().await?;
        *h2 = match &conn.sender {
            Sender::H2(s) => Some(Conn {
                sender: Sender::H2(s.clone()),
                error: conn.error.clone(),
            }),
            Sender::H1(_) => None,
        };
        Ok(conn)
    }

    async fn connect(&self) -> Result<Conn, AttemptError> {
        let limit = self.options.connect_timeout;
        let not_sent = |error| AttemptError {
            error,
            not_sent: true,
        };
        let tcp = tokio::time::timeout(
            limit,
            TcpStream::connect((self.addr.host.as_str(), self.addr.port)),
        )
        .await
        .map_err(|_| {
            not_sent(ClientError::Timeout {
                what: format!("connecting to {}", self.broker),
                after: limit,
            })
        })?
        .map_err(|e| {
            not_sent(ClientError::Transport {
                broker: self.broker.clone(),
                message: e.to_string(),
            })
        })?;
        let _ = tcp.set_nodelay(true);
        let tls =
            tokio::time::timeout(limit, self.connector.connect(self.server_name.clone(), tcp))
                .await
                .map_err(|_| {
                    not_sent(ClientError::Timeout {
                        what: format!("TLS handshake with {}", self.broker),
                        after: limit,
                    })
                })?
                .map_err(|e| not_sent(self.io_error(&e)))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let error: ErrorSlot = Arc::new(Mutex::new(None));
        let slot = error.clone();
        let remember = move |e: hyper::Error| {
            if let Ok(mut s) = slot.lock() {
                *s = Some(describe_chain(&e));
            }
        };
        if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| not_sent(self.hyper_error(&e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    remember(e);
                }
            });
            Ok(Conn {
                sender: Sender::H2(sender),
                error,
            })
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| not_sent(self.hyper_error(&e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    remember(e);
                }
            });
            Ok(Conn {
                sender: Sender::H1(sender),
                error,
            })
        }
    }

    fn io_error(&self, e: &std::io::Error) -> ClientError {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return ClientError::Tls {
                broker: self.broker.clone(),
                message: crate::tls::explain(tls),
            };
        }
        ClientError::Transport {
            broker: self.broker.clone(),
            message: e.to_string(),
        }
    }

    fn hyper_error(&self, e: &hyper::Error) -> ClientError {
        self.classify(describe_chain(e))
    }

    /// Explains a failed request, preferring the cause its connection task saw:
    /// TLS 1.3 refuses a client certificate with an alert after the handshake,
    /// which the request itself may only see as "connection closed".
    async fn request_error(&self, e: &hyper::Error, slot: &ErrorSlot) -> ClientError {
        if find_rustls(e).is_some() {
            return self.hyper_error(e);
        }
        for _ in 0..10 {
            if let Some(seen) = slot.lock().ok().and_then(|s| s.clone()) {
                return self.classify(seen);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.hyper_error(e)
    }

    fn classify(&self, cause: Cause) -> ClientError {
        let broker = self.broker.clone();
        let message = cause.message;
        if cause.tls {
            ClientError::Tls { broker, message }
        } else {
            ClientError::Transport { broker, message }
        }
    }
}

fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

/// The rustls error somewhere in an error's source chain (including inside io::Error).
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // io::Error::source skips the wrapped error itself.
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls);
            }
        }
        cur = err.source();
    }
    None
}

fn describe_chain(e: &(dyn std::error::Error + 'static)) -> Cause {
    if let Some(tls) = find_rustls(e) {
        return Cause {
            message: crate::tls::explain(tls),
            tls: true,
        };
    }
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    let message = parts.join(": ");
    match crate::tls::explain_text(&message) {
        Some(message) => Cause { message, tls: true },
        None => Cause {
            message,
            tls: false,
        },
    }
}
