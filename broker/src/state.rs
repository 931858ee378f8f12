//! Shared state of a running broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::admission::OrgDirectory;
use crate::config::Config;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything a request handler may use.
pub struct AppState {
    /// The loaded configuration.
    pub config: Config,
    /// The storage backend.
    pub store: Arc<dyn Store>,
    /// Org admission with a short cache.
    pub directory: OrgDirectory,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Rate limiters.
    pub limits: Arc<RateLimits>,
    shutting_down: AtomicBool,
}

impl AppState {
    /// State for `config` over `store`.
    pub fn new(config: Config, store: Arc<dyn Store>) -> Self {
        let limits = Arc::new(RateLimits::new(&config.limits));
        Self {
            directory: OrgDirectory::new(store.clone(), std::time::Duration::from_secs(2)),
            metrics: Metrics::new(),
            limits,
            store,
            config,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// True once shutdown began (`/readyz` turns 503 so balancers drain us).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}
