//! Shared state of a running broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::admission::OrgDirectory;
use crate::config::Config;
use crate::error::BrokerError;
use crate::keys::Keyring;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::policy::{self, FlowIndex};
use crate::records::{DisclosureEntry, RecordDraft, RecordLog};
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
    /// The query path's batched person/copy reads.
    pub lookups: crate::lookups::Lookups,
    /// Keys: at-rest encryption, lookup hashes, permit signing.
    pub keys: Keyring,
    /// The provision record log (R14).
    pub records: Arc<RecordLog>,
    flows: RwLock<Arc<FlowIndex>>,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Opens keys and the flow list for `config` over `store`.
    pub async fn open(config: Config, store: Arc<dyn Store>) -> Result<Self, BrokerError> {
        let pools = store.pools();
        let keys = Keyring::open(&config.keys.dir, pools.clone()).await?;
        if let Some(path) = &config.exchange.flow_list {
            let text = std::fs::read_to_string(path)
                .map_err(|e| BrokerError::io(format!("flow list {}", path.display()), e))?;
            let version = policy::store_version(&pools, &text).await?;
            tracing::info!(version, path = %path.display(), "flow list in force");
        }
        let flows = policy::load_current(&pools).await?;
        let metrics = Metrics::new();
        let records = RecordLog::open_observed(
            pools.clone(),
            &config.keys.dir,
            config.records.clone(),
            Some(metrics.commits()),
        )
        .await?;
        let limits = Arc::new(RateLimits::new(&config.limits));
        Ok(Self {
            directory: OrgDirectory::new(store.clone(), std::time::Duration::from_secs(2)),
            lookups: crate::lookups::Lookups::start(pools.clone(), metrics.lookups()),
            metrics,
            limits,
            keys,
            records,
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

    /// Re-reads the flow list in force from the store.
    pub async fn reload_flows(&self) -> Result<u64, BrokerError> {
        let index = policy::load_current(&self.store.pools()).await?;
        let version = index.version;
        if let Ok(mut flows) = self.flows.write() {
            *flows = Arc::new(index);
        }
        Ok(version)
    }

    /// Appends a provision record and waits until it is committed: nothing is
    /// answered before its record is durable.
    pub async fn record(&self, draft: RecordDraft) -> Result<u64, BrokerError> {
        self.records.append(draft).await
    }

    /// Who received which data about one of `org`'s persons, and when (R18):
    /// every record about the person, whichever orgs exchanged it, found
    /// through each org's own code. Other orgs' codes are never returned.
    pub async fn disclosure(
        &self,
        org: &kakehashi_interfaces::OrgId,
        person_code: &str,
    ) -> Result<Vec<DisclosureEntry>, BrokerError> {
        kakehashi_interfaces::PersonCode::new(person_code).map_err(BrokerError::from)?;
        let pools = self.store.pools();
        let Some(person) = crate::identity::resolve(&pools, org, person_code).await? else {
            return Err(BrokerError::refused(
                kakehashi_interfaces::ErrorCode::UnknownPerson,
                "this org has no person with that code",
            ));
        };
        let mut entries = Vec::new();
        for (holder, code) in crate::identity::all_codes(&pools, &person).await? {
            entries.extend(self.records.disclosure(&holder, &code).await?);
        }
        entries.sort_by_key(|e| e.seq);
        entries.dedup_by_key(|e| e.seq);
        Ok(entries)
    }

    /// True once shutdown began (`/readyz` turns 503 so balancers drain us).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}
