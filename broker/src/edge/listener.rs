//! A listener: TCP accept under a connection limit, the TLS handshake with a
//! timeout (its files re-read when they change, so a new CRL or certificate
//! takes effect without a restart), HTTP/1.1 and HTTP/2 with a header
//! timeout, and graceful shutdown. What a listener serves is a [`Service`]:
//! the exchange and the console are two.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::config::LimitsConfig;
use crate::edge::http::Body;
use crate::edge::refusal::Reason;
use crate::error::BrokerError;
use crate::metrics::Metrics;

/// What one listener serves.
pub trait Service: Send + Sync + 'static {
    /// What the service knows about a connection once TLS is done.
    type Conn: Send + Sync + 'static;

    /// Identifies a connection after its handshake, or refuses it.
    /// `closer` ends the connection once the response in flight is sent
    /// (a connection whose certificate or org is refused is not kept).
    fn connection(
        &self,
        peer: SocketAddr,
        tls: &rustls::ServerConnection,
        closer: Closer,
    ) -> Result<Self::Conn, Reason>;

    /// Serves one request of an identified connection.
    fn call(
        self: Arc<Self>,
        conn: Arc<Self::Conn>,
        req: Request<Incoming>,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// Ends one connection gracefully: the responses in flight are sent, then
/// HTTP/1.1 closes and HTTP/2 sends GOAWAY.
#[derive(Debug, Clone)]
pub struct Closer(Arc<watch::Sender<bool>>);

impl Closer {
    /// Asks the connection to close after what is in flight.
    pub fn close(&self) {
        self.0.send_replace(true);
    }
}

/// Where a listener's TLS configuration comes from, and how to tell that
/// its files changed.
pub struct TlsSource {
    /// Builds the server configuration from the files.
    pub build: Box<dyn Fn() -> Result<Arc<ServerConfig>, BrokerError> + Send + Sync>,
    /// A stamp of the files (modification times); a new stamp means reload.
    pub stamps: Box<dyn Fn() -> Vec<Option<std::time::SystemTime>> + Send + Sync>,
    /// How often the stamp is compared.
    pub reload_every: Duration,
}

/// Everything an accept loop needs besides its service.
pub struct Edge {
    /// Connection and timeout limits.
    pub limits: LimitsConfig,
    /// Where refusals and open connections are counted.
    pub metrics: Arc<Metrics>,
    /// Which listener this is, for logs.
    pub name: &'static str,
}

/// Accepts connections on `listener` until `stopped` turns true, then waits
/// (up to the grace period) for the requests in flight.
pub async fn accept_loop<S: Service>(
    listener: TcpListener,
    tls: TlsSource,
    service: Arc<S>,
    edge: Edge,
    mut stopped: watch::Receiver<bool>,
) {
    let edge = Arc::new(edge);
    let mut acceptor = match (tls.build)() {
        Ok(config) => TlsAcceptor::from(config),
        Err(e) => {
            tracing::error!(listener = edge.name, error = %e, "TLS configuration unusable; not serving");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(edge.limits.max_connections));
    let mut stamps = (tls.stamps)();
    let mut checked = Instant::now();
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = edge.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(&edge, Reason::ConnectionLimit, peer);
            drop(tcp);
            continue;
        };
        if checked.elapsed() >= tls.reload_every {
            checked = Instant::now();
            let now = (tls.stamps)();
            if now != stamps {
                stamps = now;
                match (tls.build)() {
                    Ok(config) => {
                        acceptor = TlsAcceptor::from(config);
                        tracing::info!(
                            listener = edge.name,
                            "reloaded TLS certificate, trust anchors and CRLs"
                        );
                    }
                    // Keep serving with the old material rather than stop.
                    Err(e) => {
                        tracing::error!(listener = edge.name, error = %e, "TLS files changed but could not be loaded; keeping the previous ones")
                    }
                }
            }
        }
        let _ = tcp.set_nodelay(true);
        let service = service.clone();
        let acceptor = acceptor.clone();
        let stopped = stopped.clone();
        let edge = edge.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _counted = OpenConnection::count(&edge.metrics);
            serve_connection(tcp, peer, acceptor, service, &edge, stopped).await;
        });
    }
    drop(listener);
    // Every open connection holds a slot: all slots back means all closed.
    let all = u32::try_from(edge.limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(edge.limits.shutdown_grace(), slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            listener = edge.name,
            "grace period ended with connections still open"
        );
    }
}

/// One open connection in `kakehashi_open_connections`, taken off again
/// when the connection's task ends however it ends (a panic unwinding
/// included).
struct OpenConnection<'m>(&'m Metrics);

impl<'m> OpenConnection<'m> {
    fn count(metrics: &'m Metrics) -> Self {
        metrics.connection_delta(1);
        OpenConnection(metrics)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connection_delta(-1);
    }
}

fn refuse(edge: &Edge, reason: Reason, peer: SocketAddr) {
    edge.metrics.refusal(reason.as_str());
    tracing::warn!(listener = edge.name, reason = reason.as_str(), %peer, "refused connection");
}

async fn serve_connection<S: Service>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    service: Arc<S>,
    edge: &Edge,
    mut stopped: watch::Receiver<bool>,
) {
    let limits = &edge.limits;
    let stream = match tokio::time::timeout(limits.handshake_timeout(), acceptor.accept(tcp)).await
    {
        Err(_) => return refuse(edge, Reason::HandshakeTimeout, peer),
        Ok(Err(e)) => return refuse(edge, crate::edge::tls::handshake_refusal_reason(&e), peer),
        Ok(Ok(stream)) => stream,
    };
    let (closer, mut closing) = watch::channel(false);
    let conn = match service.connection(peer, stream.get_ref().1, Closer(Arc::new(closer))) {
        Ok(conn) => Arc::new(conn),
        Err(reason) => return refuse(edge, reason, peer),
    };
    let handler = service_fn(move |req| {
        let service = service.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(service.call(conn, req).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Without a timer hyper ignores this timeout; it is what cuts off slow-header clients.
        .header_read_timeout(limits.header_read_timeout())
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    let connection = builder.serve_connection(TokioIo::new(stream), handler);
    tokio::pin!(connection);
    // Shutdown of the listener, or this connection's closer: finish what is
    // in flight, then close.
    let mut ending = *stopped.borrow() || *closing.borrow();
    if ending {
        connection.as_mut().graceful_shutdown();
    }
    let served = loop {
        tokio::select! {
            served = connection.as_mut() => break served,
            _ = stopped.changed(), if !ending => {
                ending = true;
                connection.as_mut().graceful_shutdown();
            }
            // A service that keeps no closer never closes this way.
            Ok(()) = closing.changed(), if !ending => {
                ending = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = served {
        let text = e.to_string();
        if text.contains("timeout") || text.contains("timed out") {
            edge.metrics.refusal(Reason::HeaderTimeout.as_str());
            tracing::warn!(listener = edge.name, reason = "header_timeout", %peer, "closed slow connection");
        } else {
            tracing::debug!(listener = edge.name, %peer, error = %text, "connection ended with an error");
        }
    }
}
