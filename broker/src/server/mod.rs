//! A running broker: the exchange listener, the console listener (when
//! `[console] listen` is set) and the background tasks, assembled in one
//! place and stopped together.
//!
//! - [`node`]: this node's part in a cluster (its roles, its share of the
//!   rate limits, the work its roles run);
//! - [`changes`]: changes made on other nodes or by host commands, acted on.

pub mod changes;
pub mod node;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{Role, Roles};
use crate::config::Config;
use crate::console::Console;
use crate::edge::listener::{self, Edge, TlsSource};
use crate::edge::tls;
use crate::error::BrokerError;
use crate::exchange::Exchange;
use crate::state::AppState;
use crate::store::Store;
use node::Node;

/// A broker serving on its sockets.
pub struct RunningBroker {
    local_addr: SocketAddr,
    console_addr: Option<SocketAddr>,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    oplog: Option<Arc<crate::oplog::OperationLog>>,
    node: Node,
}

async fn bind(address: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| BrokerError::io(format!("cannot listen on {address} ({what})"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| BrokerError::io(format!("{what} listener address"), e))?;
    Ok((listener, local))
}

impl RunningBroker {
    /// Binds the configured addresses (port 0 picks a free port) and starts serving.
    pub async fn start(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<RunningBroker, BrokerError> {
        // Refuse bad TLS material before binding anything.
        tls::server_config(&config.tls)?;
        if config.console.listen.is_some() {
            tls::console_server_config(&config.tls)?;
        }
        let (exchange_listener, local_addr) = bind(config.listen.address, "exchange").await?;
        let console_listener = match config.console.listen {
            Some(address) => Some(bind(address, "console").await?),
            None => None,
        };
        let state = Arc::new(AppState::open(config, store).await?);
        state.limits.spawn_pruner(Duration::from_secs(60));
        // Work that must happen once across nodes follows this node's roles
        // (all of them on SQLite): the sweeper and retention here, the
        // records' checkpoints and purge inside the record log.
        let node = Node::start(&state);
        let (stop, stopped) = watch::channel(false);
        node::spawn_role_task(
            &state,
            node.roles().clone(),
            Role::Sweeper,
            Duration::from_secs(state.config.exchange.sweep_interval_secs.max(1)),
            stopped.clone(),
            |state| async move {
                if let Err(e) = crate::exchange::sweep_once(&state).await {
                    tracing::error!(error = %e, "sweeping expired results failed");
                }
                let now = time::OffsetDateTime::now_utc();
                if let Err(e) =
                    crate::people::sweep(&state.store.pools(), &state.config.people, now).await
                {
                    tracing::error!(error = %e, "sweeping expired sessions and login failures failed");
                }
            },
        );
        changes::spawn_flow_reloader(&state);
        crate::retention::spawn_task(
            state.store.pools(),
            Arc::downgrade(&state.records),
            state.config.retention.clone(),
            node.roles().clone(),
            stopped.clone(),
        );

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(listener::accept_loop(
            exchange_listener,
            tls_source(&state.config, tls::server_config),
            Arc::new(Exchange {
                state: state.clone(),
            }),
            Edge {
                limits: state.config.limits.clone(),
                metrics: state.metrics.clone(),
                name: "exchange",
            },
            stopped.clone(),
        )));
        tracing::info!(address = %local_addr, backend = state.store.backend(), "exchange listener ready");

        let mut console_addr = None;
        let mut oplog = None;
        if let Some((console_listener, address)) = console_listener {
            let console = Console::start(state.clone()).await?;
            oplog = Some(console.oplog.clone());
            let mut limits = state.config.limits.clone();
            limits.max_body_bytes = state.config.console.max_body_bytes;
            tasks.push(tokio::spawn(listener::accept_loop(
                console_listener,
                tls_source(&state.config, tls::console_server_config),
                Arc::new(console),
                Edge {
                    limits,
                    metrics: state.metrics.clone(),
                    name: "console",
                },
                stopped,
            )));
            tracing::info!(%address, "console listener ready");
            console_addr = Some(address);
        }
        Ok(RunningBroker {
            local_addr,
            console_addr,
            state,
            stop,
            tasks,
            oplog,
            node,
        })
    }

    /// The exchange listener's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The console listener's bound address, when it has one.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// The shared state (metrics, store).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// The cluster roles this node holds (all of them on SQLite).
    pub fn roles(&self) -> &Arc<Roles> {
        self.node.roles()
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), returns.
    pub async fn shutdown(self) {
        self.state.begin_shutdown();
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // The final checkpoints are signed once no request can append any more.
        if let Some(oplog) = &self.oplog {
            oplog.close().await;
        }
        self.state.records.close().await;
        // Roles go last: the sealer's final checkpoint is signed above.
        self.node.leave().await;
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

/// The TLS files of `config`, built by `build` and re-read when they change.
fn tls_source(
    config: &Config,
    build: fn(&crate::config::TlsConfig) -> Result<Arc<rustls::ServerConfig>, BrokerError>,
) -> TlsSource {
    let for_build = config.tls.clone();
    let for_stamps = config.tls.clone();
    TlsSource {
        build: Box::new(move || build(&for_build)),
        stamps: Box::new(move || tls::file_stamps(&for_stamps)),
        reload_every: Duration::from_secs(config.tls.reload_interval_secs),
    }
}

/// Returns on SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
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
