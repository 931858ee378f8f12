//! Shared state of a running broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::edge::admission::OrgDirectory;
use crate::edge::limits::RateLimits;
use crate::error::BrokerError;
use crate::keys::Keyring;
use crate::metrics::Metrics;
use crate::policy::{self, FlowIndex};
use crate::records::{RecordDraft, RecordLog};
use crate::store::Store;

/// Everything a request handler may use.
pub struct AppState {
    /// The loaded configuration.
    pub config: Config,
    /// The storage backend.
    pub store: Arc<dyn Store>,
    /// Org admission with a short cache.
    pub directory: OrgDirectory,
    /// The client-certificate trust in force, for open connections.
    pub trust: crate::edge::standing::Trust,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Rate limiters.
    pub limits: Arc<RateLimits>,
    /// The query path's batched person/copy reads.
    pub lookups: crate::lookups::Lookups,
    /// Keys: at-rest encryption, lookup hashes, permit signing.
    pub keys: Keyring,
    /// The provision record log (R14).
    pub records: Arc<RecordLog>,
    /// Ids of pending queries just approved or rejected: wakes the
    /// requesters waiting on `GET /v1/queries/{id}?wait=` at once.
    pub decisions: tokio::sync::broadcast::Sender<String>,
    /// How long an exchange request's work may take before it answers
    /// `unavailable` (the backend's [`crate::store::Backend::request_bound`]).
    pub request_bound: Option<std::time::Duration>,
    flows: RwLock<Arc<FlowIndex>>,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Opens keys and the flow list for `config` over `store`.
    pub async fn open(config: Config, store: Arc<dyn Store>) -> Result<Self, BrokerError> {
        let pools = store.pools();
        let keys = Keyring::open_with(&config.keys, pools.clone()).await?;
        // The configured file is stored as proposed and approved by
        // `host:config` when it changed: broker.toml is the reviewed
        // artefact (flow_changes). People's versions go through
        // propose/approve; the highest approved one is in force.
        if let Some(path) = &config.exchange.flow_list {
            let text = std::fs::read_to_string(path)
                .map_err(|e| BrokerError::io(format!("flow list {}", path.display()), e))?;
            crate::flow_changes::store_configured(&pools, &text).await?;
        }
        let flows = policy::load_current(&pools).await?;
        tracing::info!(version = flows.version, "flow list in force");
        let metrics = Arc::new(Metrics::new());
        let records = RecordLog::open_observed(
            pools.clone(),
            &config.keys.dir,
            config.records.clone(),
            Some(metrics.commits()),
        )
        .await?;
        let limits = Arc::new(RateLimits::new(&config.limits));
        let backend = pools.backend();
        let (org_cache_ttl, request_bound) = (
            backend.org_cache_ttl(),
            backend.request_bound(config.storage.statement_timeout()),
        );
        drop(backend);
        Ok(Self {
            trust: crate::edge::standing::Trust::open(&config.tls)?,
            directory: OrgDirectory::new(store.clone(), org_cache_ttl),
            lookups: crate::lookups::Lookups::start(pools.clone(), metrics.lookups()),
            metrics,
            limits,
            keys,
            records,
            decisions: tokio::sync::broadcast::channel(1024).0,
            request_bound,
            flows: RwLock::new(Arc::new(flows)),
            store,
            config,
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The flow list in force.
    pub fn flows(&self) -> Arc<FlowIndex> {
        self.flows
            .read()
            .map(|f| f.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Re-reads the version in force and reloads the flow index when it
    /// changed; the new version, or `None` when it is unchanged.
    pub async fn reload_flows_if_changed(&self) -> Result<Option<u64>, BrokerError> {
        let in_force = crate::flow_changes::in_force_version(&self.store.pools()).await?;
        // The version in force only moves forward (see `flow_changes::approve`).
        if in_force <= self.flows().version {
            return Ok(None);
        }
        self.reload_flows().await.map(Some)
    }

    /// Re-reads the flow list in force (the highest approved version) from
    /// the store; returns the version held afterwards. Called after an
    /// approval and by the reloader task (`flow_changes`).
    pub async fn reload_flows(&self) -> Result<u64, BrokerError> {
        let index = policy::load_current(&self.store.pools()).await?;
        let mut flows = self
            .flows
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The version in force only moves forward: a slower reload that
        // read an older version must not replace a newer one.
        if index.version >= flows.version {
            *flows = Arc::new(index);
        }
        Ok(flows.version)
    }

    /// Appends a provision record and waits until it is committed: nothing is
    /// answered before its record is durable.
    pub async fn record(&self, draft: RecordDraft) -> Result<u64, BrokerError> {
        self.records.append(draft).await
    }

    /// True once shutdown began (`/readyz` turns 503 so balancers drain us).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}
