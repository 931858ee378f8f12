//! The exchange listener: TCP accept, connection limit, TLS handshake with a
//! timeout, HTTP/1.1 and HTTP/2 with a header timeout, graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::BrokerError;
use crate::routes::{self, ConnInfo};
use crate::state::AppState;
use crate::store::Store;
use crate::tls;

/// A broker serving on a socket.
pub struct RunningBroker {
    local_addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningBroker {
    /// Binds the configured address (port 0 picks a free port) and starts serving.
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<RunningBroker, BrokerError> {
        let tls_config = tls::server_config(&config.tls)?;
        let listener = TcpListener::bind(config.listen.address)
            .await
            .map_err(|e| {
                BrokerError::io(format!("cannot listen on {}", config.listen.address), e)
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| BrokerError::io("listener address", e))?;
        let state = Arc::new(AppState::open(config, store).await?);
        state.limits.spawn_pruner(Duration::from_secs(60));
        crate::exchange::spawn_sweeper(&state);
        let (stop, stopped) = watch::channel(false);
        crate::retention::spawn_task(
            state.store.pools(),
            Arc::downgrade(&state.records),
            state.config.retention.clone(),
            stopped.clone(),
        );
        let task = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(tls_config),
            state.clone(),
            stopped,
        ));
        tracing::info!(address = %local_addr, backend = state.store.backend(), "exchange listener ready");
        Ok(RunningBroker {
            local_addr,
            state,
            stop,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The shared state (metrics, store).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), returns.
    pub async fn shutdown(self) {
        self.state.begin_shutdown();
        let _ = self.stop.send(true);
        let _ = self.task.await;
        // The final checkpoint is signed once no request can append any more.
        self.state.records.close().await;
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), BrokerError> {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing in-flight requests");
        self.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    mut acceptor: TlsAcceptor,
    state: Arc<AppState>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.limits.max_connections));
    let reload_every = Duration::from_secs(state.config.tls.reload_interval_secs);
    let mut stamps = tls::file_stamps(&state.config.tls);
    let mut checked = std::time::Instant::now();
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.metrics.refusal("connection_limit");
            tracing::warn!(reason = "connection_limit", %peer, "refused connection");
            drop(tcp);
            continue;
        };
        if checked.elapsed() >= reload_every {
            checked = std::time::Instant::now();
            let now = tls::file_stamps(&state.config.tls);
            if now != stamps {
                stamps = now;
                match tls::server_config(&state.config.tls) {
                    Ok(config) => {
                        acceptor = TlsAcceptor::from(config);
                        tracing::info!("reloaded TLS certificate, trust anchors and CRLs");
                    }
                    // Keep serving with the old material rather than stop.
                    Err(e) => {
                        tracing::error!(error = %e, "TLS files changed but could not be loaded; keeping the previous ones")
                    }
                }
            }
        }
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            state.metrics.connection_delta(1);
            serve_connection(tcp, peer, acceptor, &state, watcher).await;
            state.metrics.connection_delta(-1);
        });
    }
    drop(listener);
    let grace = state.config.limits.shutdown_grace();
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period ended with connections still open");
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    state: &Arc<AppState>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let limits = &state.config.limits;
    let stream = match tokio::time::timeout(limits.handshake_timeout(), acceptor.accept(tcp)).await
    {
        Err(_) => {
            state.metrics.refusal("handshake_timeout");
            tracing::warn!(reason = "handshake_timeout", %peer, "refused connection");
            return;
        }
        Ok(Err(e)) => {
            let reason = tls::handshake_refusal_reason(&e);
            state.metrics.refusal(reason);
            tracing::warn!(reason, %peer, "refused TLS handshake");
            return;
        }
        Ok(Ok(stream)) => stream,
    };
    let Some(identity) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(tls::peer_identity)
    else {
        // Unreachable with a mandatory client verifier; refuse rather than assume.
        state.metrics.refusal("no_client_certificate");
        return;
    };
    let conn = Arc::new(ConnInfo { peer, identity });
    let service_state = state.clone();
    let service = service_fn(move |req| {
        let state = service_state.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(routes::handle(state, conn, req).await) }
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
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        let text = e.to_string();
        if text.contains("timeout") || text.contains("timed out") {
            state.metrics.refusal("header_timeout");
            tracing::warn!(reason = "header_timeout", %peer, "closed slow connection");
        } else {
            tracing::debug!(%peer, error = %text, "connection ended with an error");
        }
    }
}
