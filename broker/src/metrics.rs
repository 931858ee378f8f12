//! Prometheus metrics: requests, refusals by reason, latencies.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    kind: &'static str,
}

/// Group-commit observations the records writer reports: rows per commit
/// and how long each commit took (the fsync is inside); and what the
/// records sealer found when it refuses to sign.
#[derive(Clone)]
pub struct CommitMetrics {
    rows: Histogram,
    seconds: Histogram,
    sealer: Family<FindingLabels, Gauge>,
    timestamps: Family<TimestampLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimestampLabels {
    result: &'static str,
}

impl CommitMetrics {
    /// One committed transaction of `rows` records.
    pub fn observe(&self, rows: usize, elapsed: Duration) {
        self.rows.observe(rows as f64);
        self.seconds.observe(elapsed.as_secs_f64());
    }

    /// A checkpoint was time-stamped by the TSA, or signed without a token
    /// because the TSA failed.
    pub fn checkpoint_timestamp(&self, stamped: bool) {
        let result = if stamped { "stamped" } else { "failed" };
        self.timestamps
            .get_or_create(&TimestampLabels { result })
            .inc();
    }

    /// The sealer refuses: the kind of finding and the first bad sequence
    /// (the gauge's value); `None` when it signs again.
    pub fn sealer_refusal(&self, finding: Option<(&'static str, u64)>) {
        self.sealer.clear();
        if let Some((kind, seq)) = finding {
            self.sealer
                .get_or_create(&FindingLabels { kind })
                .set(i64::try_from(seq).unwrap_or(i64::MAX));
        }
    }
}

/// What the query path's lookup cache reports: lookups answered
/// from memory, lookups read from the database, and times the cache was
/// emptied because person codes or copies changed.
#[derive(Clone, Default)]
pub struct LookupMetrics {
    hits: Counter,
    misses: Counter,
    resets: Counter,
}

impl LookupMetrics {
    /// One batch: `hits` answered from memory, `misses` read, `reset` if the
    /// cache was emptied first.
    pub fn observe(&self, hits: usize, misses: usize, reset: bool) {
        self.hits.inc_by(hits as u64);
        self.misses.inc_by(misses as u64);
        if reset {
            self.resets.inc();
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

/// Which cluster roles this node holds (`kakehashi_cluster_role{role=…}`,
/// 1 held, 0 not), kept by [`crate::cluster::Roles`].
#[derive(Clone, Default, Debug)]
pub struct RoleMetrics {
    roles: Family<RoleLabels, Gauge>,
}

impl RoleMetrics {
    /// This node now holds `role` (or no longer does).
    pub fn set(&self, role: &'static str, held: bool) {
        self.roles
            .get_or_create(&RoleLabels { role })
            .set(i64::from(held));
    }
}

/// The broker's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    latency: LatencyFamily,
    connections: Gauge,
    commits: CommitMetrics,
    lookups: LookupMetrics,
    roles: RoleMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kakehashi");
        let requests = Family::<RequestLabels, Counter>::default();
        let refusals = Family::<RefusalLabels, Counter>::default();
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        let connections = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "refusals",
            "Refused connections and requests, by reason",
            refusals.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, by route",
            latency.clone(),
        );
        registry.register(
            "open_connections",
            "Open exchange connections",
            connections.clone(),
        );
        let commits = CommitMetrics {
            rows: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            seconds: latency_histogram(),
            sealer: Family::default(),
            timestamps: Family::default(),
        };
        registry.register(
            "records_checkpoint_timestamps",
            "Checkpoints time-stamped by the TSA (result=stamped) and signed without a token \
             because the TSA failed (result=failed)",
            commits.timestamps.clone(),
        );
        registry.register(
            "records_sealer_refusal",
            "While the records sealer refuses to sign (the stored chain does not extend the \
             head it signed last; queries are refused): the first bad sequence, by kind of finding",
            commits.sealer.clone(),
        );
        registry.register(
            "record_commit_rows",
            "Provision records per group-commit transaction",
            commits.rows.clone(),
        );
        registry.register(
            "record_commit_seconds",
            "Duration of each group-commit transaction, fsync included",
            commits.seconds.clone(),
        );
        let lookups = LookupMetrics::default();
        registry.register(
            "lookup_cache_hits",
            "Query-path lookups answered from memory",
            lookups.hits.clone(),
        );
        registry.register(
            "lookup_cache_misses",
            "Query-path lookups read from the database",
            lookups.misses.clone(),
        );
        registry.register(
            "lookup_cache_resets",
            "Times the lookup cache was emptied because person codes or copies changed",
            lookups.resets.clone(),
        );
        let roles = RoleMetrics::default();
        registry.register(
            "cluster_role",
            "Whether this node holds the cluster role (sealer, sweeper, retention): 1 held, 0 not",
            roles.roles.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            refusals,
            latency,
            connections,
            commits,
            lookups,
            roles,
        }
    }

    /// Counts one answered request.
    pub fn request(&self, route: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.latency
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one refusal. Every refusal is also logged by the caller.
    pub fn refusal(&self, reason: &'static str) {
        self.refusals.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// How many refusals with this reason so far.
    pub fn refusal_count(&self, reason: &'static str) -> u64 {
        self.refusals.get_or_create(&RefusalLabels { reason }).get()
    }

    /// A connection opened (+1) or closed (-1).
    pub fn connection_delta(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// The records writer's handle for group-commit observations.
    pub fn commits(&self) -> CommitMetrics {
        self.commits.clone()
    }

    /// The lookup task's handle for cache observations.
    pub fn lookups(&self) -> LookupMetrics {
        self.lookups.clone()
    }

    /// The cluster's handle for which roles this node holds.
    pub fn roles(&self) -> RoleMetrics {
        self.roles.clone()
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}
