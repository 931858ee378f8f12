//! `broker.toml`: where the broker listens, its TLS material, storage and limits.
//!
//! Every section is defined here, below everything that reads it; a module
//! whose section it is re-exports it (`records::RecordsConfig`) and keeps
//! what it makes of the values (`people::PeopleConfig::lock_policy`).
//!
//! Relative paths are resolved against the directory of the config file, so a
//! dev directory can be moved as a whole.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::BrokerError;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The exchange listener.
    pub listen: ListenConfig,
    /// Server certificate, trust anchors and CRLs.
    pub tls: TlsConfig,
    /// Where state lives.
    pub storage: StorageConfig,
    /// Limits against slow, large and flooding clients (R21).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The broker's key directory (key-encryption keys, signing keys).
    #[serde(default)]
    pub keys: KeysConfig,
    /// Queries, results and the flow list.
    #[serde(default)]
    pub exchange: ExchangeConfig,
    /// Provision records: checkpoints, retention.
    #[serde(default)]
    pub records: RecordsConfig,
    /// Own retention periods of identity-confirmation data and copies (R15).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The console listener for people (operators, auditors, administrators).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Accounts: password hashing, session timeouts, lockout (R19).
    #[serde(default)]
    pub people: PeopleConfig,
}

/// The legal retention period of provision records, in years (R15, seed
/// 004: 情報提供等記録は7年間保存).
pub const LEGAL_RETENTION_YEARS: u32 = 7;

/// Most records one purge step deletes row by row unless configured
/// ([`RecordsConfig::purge_step_records`]). Every record commit waits while
/// a step deletes. On PostgreSQL (`kakehashi-bench national --records
/// 3000000`, 2 vCPUs) 28 637 rows went in 0.51 s in 2 steps of up to
/// 20 000, and in 0.45 s in 6 steps of up to 5 000: 75 ms a step with its
/// verification, so commits wait well under 0.1 s at a time.
pub const PURGE_STEP_RECORDS: u64 = 5_000;

/// `[records]` settings. Defaults suit production.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsConfig {
    /// How often the sealer signs a checkpoint when there are new records.
    pub checkpoint_interval_ms: u64,
    /// Records are kept this many years, then purged (R15: seven).
    pub retention_years: u32,
    /// How often the retention purge runs; 0 disables the task.
    pub purge_interval_secs: u64,
    /// Delay before the first retention purge after start.
    pub purge_first_delay_secs: u64,
    /// Most records one purge transaction deletes row by row: a purge
    /// holds the head of the chain (every record commit waits) while it
    /// deletes, so a long range is purged in steps of at most this many,
    /// each with its own purge record. A whole month partition on
    /// PostgreSQL is dropped in one step whatever its size.
    pub purge_step_records: u64,
    /// Most records committed in one transaction.
    pub max_batch: usize,
    /// Appends queued beyond this wait (back-pressure).
    pub queue_capacity: usize,
    /// How often the SQLite person index (for disclosure) catches up; 0
    /// disables the task (disclosures then scan more records).
    pub person_index_interval_ms: u64,
    /// How often a background connection checkpoints the SQLite WAL into the
    /// database file, so no commit has to; 0 leaves it to the writer.
    pub wal_checkpoint_interval_ms: u64,
    /// How long a group commit waits for queries under way to join it
    /// (microseconds; only while some are; 0 never waits). Under load it
    /// makes commits several times larger, so each query pays a fraction of
    /// a commit; an answer waits at most this much longer. Unset: 1,000 on
    /// SQLite, where a commit costs the broker's own CPU; 0 on PostgreSQL,
    /// whose commits cost the database's round trip and fsync (its own
    /// `commit_delay` is there for that).
    pub commit_delay_us: Option<u64>,
    /// The least time between the starts of two group commits while queries
    /// are under way (microseconds; 0 never waits): a commit that comes
    /// sooner waits for the rest, so that when the load falls commits do
    /// not become smaller and more frequent and each cost more queries' CPU.
    /// At full rate commits take longer than this and never wait. Unset:
    /// 1,000 on PostgreSQL (at half rate it halves the commits and frees
    /// ~0.25 of two cores; benches/README.md, "Design decisions in force"); 0 on SQLite,
    /// which has `commit_delay_us`.
    pub commit_interval_us: Option<u64>,
    /// A file every signed checkpoint is also appended to (JSON Lines,
    /// fsynced), kept on other storage than the database and the key
    /// directory (WORM, another host); `records verify --checkpoint-log`
    /// holds the database against it. Unset: no log (a warning at start).
    pub checkpoint_log: Option<PathBuf>,
    /// An RFC 3161 Time-Stamp Authority (`http://host[:port]/path`) that
    /// time-stamps every checkpoint signed (the token is stored with it, in
    /// exports, answers and the checkpoint log). A TSA that fails costs
    /// that checkpoint its token only (a warning and a metric); the next
    /// checkpoint asks again. Unset: checkpoints carry no token.
    pub tsa_url: Option<String>,
    /// The TSA's certificate (PEM) trusted for verification: the sealer
    /// checks each token against it before storing it, and `records verify`
    /// checks the stored tokens against it.
    pub tsa_cert: Option<PathBuf>,
    /// How long the sealer waits for the TSA per checkpoint.
    pub tsa_timeout_ms: u64,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_ms: 2_000,
            retention_years: 7,
            purge_interval_secs: 24 * 3600,
            purge_first_delay_secs: 300,
            purge_step_records: PURGE_STEP_RECORDS,
            max_batch: 1024,
            queue_capacity: 65_536,
            person_index_interval_ms: 1_000,
            wal_checkpoint_interval_ms: 250,
            commit_delay_us: None,
            commit_interval_us: None,
            checkpoint_log: None,
            tsa_url: None,
            tsa_cert: None,
            tsa_timeout_ms: 5_000,
        }
    }
}

/// `[retention]` settings. Defaults are the periods of R15.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Identity-confirmation data are erased this many days after their last
    /// confirmation (R15: at most one year).
    pub identity_confirmation_days: u32,
    /// Persons and their copies are erased this many years after the day
    /// they lost eligibility (R15: up to five).
    pub copies_after_loss_years: u32,
    /// How often the erasure runs; 0 disables the task.
    pub interval_secs: u64,
    /// Delay before the first run after start.
    pub first_delay_secs: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            identity_confirmation_days: 365,
            copies_after_loss_years: 5,
            interval_secs: 24 * 3600,
            first_delay_secs: 300,
        }
    }
}

/// Settings of the people service (`[people]`); every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleConfig {
    /// Password hashes computed at once (default: half the cores, at least 1).
    pub hash_workers: usize,
    /// Password hashes waiting for a worker; more are refused at once (`busy`).
    pub hash_queue: usize,
    /// A session ends this many seconds after its last use (default 900).
    pub idle_timeout_secs: u64,
    /// A session ends this many seconds after login (default 28 800).
    pub session_lifetime_secs: u64,
    /// Consecutive failures that lock an account (default 5).
    pub lockout_failures: u32,
    /// How long a lock lasts, in seconds (default 900).
    pub lockout_secs: u64,
}

impl Default for PeopleConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PeopleConfig {
            hash_workers: (cores / 2).max(1),
            hash_queue: 32,
            idle_timeout_secs: 15 * 60,
            session_lifetime_secs: 8 * 60 * 60,
            lockout_failures: 5,
            lockout_secs: 15 * 60,
        }
    }
}

/// `[console]`: the listener people use (server-authenticated TLS with the
/// broker's certificate; a password and TOTP instead of a client
/// certificate). Without `listen` there is no console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address of the console listener, e.g. `127.0.0.1:7444`.
    pub listen: Option<SocketAddr>,
    /// Largest request body a people endpoint takes; exports and searches
    /// are GETs, so small bodies suffice.
    pub max_body_bytes: u64,
    /// Sustained requests per second per client address.
    pub per_address_per_second: u32,
    /// Burst allowance per client address.
    pub per_address_burst: u32,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: None,
            max_body_bytes: 64 * 1024,
            per_address_per_second: 50,
            per_address_burst: 200,
        }
    }
}

/// `[exchange]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeConfig {
    /// A flow-list TOML file loaded at start; stored as a new version when it changed.
    pub flow_list: Option<PathBuf>,
    /// How long a provided answer stays fetchable before it is deleted (R13).
    pub result_ttl_secs: u64,
    /// How long a pending (sensitive) query waits for approval before it expires.
    pub pending_ttl_secs: u64,
    /// Validity of a provision permit.
    pub permit_ttl_secs: u64,
    /// How often expired results are swept.
    pub sweep_interval_secs: u64,
    /// Most lines accepted in one persons or copies batch.
    pub max_batch_lines: usize,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        Self {
            flow_list: None,
            result_ttl_secs: 24 * 3600,
            pending_ttl_secs: 7 * 24 * 3600,
            permit_ttl_secs: 3600,
            sweep_interval_secs: 60,
            max_batch_lines: 10_000,
        }
    }
}

/// `[listen]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address of the exchange listener, e.g. `127.0.0.1:7443`.
    pub address: SocketAddr,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Trust anchors for client certificates (PEM files; each may hold several).
    pub client_ca: Vec<PathBuf>,
    /// Certificate revocation lists (PEM or DER). Expired CRLs are enforced.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// Also accept TLS 1.2 (off by default: TLS 1.3 only).
    #[serde(default)]
    pub allow_tls12: bool,
    /// How often the broker checks its certificate, trust anchors and CRLs for
    /// changes and reloads them (a revocation takes effect without a restart).
    #[serde(default = "default_reload")]
    pub reload_interval_secs: u64,
}

fn default_reload() -> u64 {
    30
}

/// `[storage]`: exactly one of `sqlite` or `postgres_url`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// SQLite database file (created if missing).
    pub sqlite: Option<PathBuf>,
    /// PostgreSQL URL, e.g. `postgres://kakehashi@localhost/kakehashi`.
    pub postgres_url: Option<String>,
    /// Maximum pooled connections.
    #[serde(default = "default_pool")]
    pub max_connections: u32,
    /// PostgreSQL: the longest one statement may run (server-side
    /// `statement_timeout`; also the wait for a pooled connection and for
    /// `/readyz`'s probe). An exchange request whose database work takes
    /// longer than twice this answers `unavailable` (docs/cluster.md).
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout_ms: u64,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold the database password.
        f.debug_struct("StorageConfig")
            .field("sqlite", &self.sqlite)
            .field("postgres_url", &self.postgres_url.as_ref().map(|_| "…"))
            .field("max_connections", &self.max_connections)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .finish()
    }
}

fn default_pool() -> u32 {
    16
}

fn default_statement_timeout() -> u64 {
    5_000
}

impl StorageConfig {
    /// [`StorageConfig::statement_timeout_ms`] as a duration (at least 100 ms).
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.statement_timeout_ms.max(100))
    }
}

/// Which backend a [`StorageConfig`] selects.
#[derive(Debug, Clone)]
pub enum StorageTarget {
    /// Embedded SQLite file.
    Sqlite(PathBuf),
    /// PostgreSQL server.
    Postgres(String),
}

impl StorageConfig {
    /// The selected backend, or an error if none or both are configured.
    pub fn target(&self) -> Result<StorageTarget, BrokerError> {
        match (&self.sqlite, &self.postgres_url) {
            (Some(p), None) => Ok(StorageTarget::Sqlite(p.clone())),
            (None, Some(u)) => Ok(StorageTarget::Postgres(u.clone())),
            _ => Err(BrokerError::Config(
                "[storage] needs exactly one of `sqlite` or `postgres_url`".into(),
            )),
        }
    }
}

/// `[limits]` (R21). Defaults are safe for a production listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Time allowed to complete the TLS handshake.
    pub handshake_timeout_ms: u64,
    /// Time allowed to send a request's headers.
    pub header_read_timeout_ms: u64,
    /// Time allowed to read a request body.
    pub body_read_timeout_ms: u64,
    /// Largest accepted request body.
    pub max_body_bytes: u64,
    /// Open connections beyond this are closed at once.
    pub max_connections: usize,
    /// Sustained requests per second per org.
    pub per_org_per_second: u32,
    /// Burst allowance per org.
    pub per_org_burst: u32,
    /// Sustained requests per second per client address.
    pub per_address_per_second: u32,
    /// Burst allowance per client address.
    pub per_address_burst: u32,
    /// Time given to in-flight requests at shutdown.
    pub shutdown_grace_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            max_body_bytes: 8 * 1024 * 1024,
            max_connections: 4096,
            per_org_per_second: 500,
            per_org_burst: 1000,
            per_address_per_second: 2000,
            per_address_burst: 4000,
            shutdown_grace_ms: 15_000,
        }
    }
}

impl LimitsConfig {
    /// Handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// Header read timeout as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }
    /// Body read timeout as a duration.
    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
    /// Shutdown grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// `[keys]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct KeysConfig {
    /// Directory holding the broker's own keys; created with mode 0700.
    pub dir: PathBuf,
    /// A new data key is made when the newest is this many days old
    /// (0: only by `kakehashi-broker keys new-data-key`). Old data keys
    /// stay, so existing ciphertexts still decrypt (docs/keys.md).
    pub data_key_days: u32,
    /// How often a running broker re-reads the key directory and the key
    /// records in the database, picking up rotated keys (docs/keys.md).
    pub reload_interval_secs: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            dir: "keys".into(),
            data_key_days: 30,
            reload_interval_secs: 10,
        }
    }
}

/// The longest `[records] commit_delay_us` or `commit_interval_us` accepted.
pub const MAX_COMMIT_DELAY_US: u64 = 1_000_000;

impl Config {
    /// Reads and validates a config file, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Config, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            BrokerError::Config(format!("cannot read config {}: {e}", path.display()))
        })?;
        let mut config = Self::parse(&text)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.storage.target()?;
        Ok(config)
    }

    /// Parses config text without touching the file system.
    pub fn parse(text: &str) -> Result<Config, BrokerError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // The message and the line, never the line's text: it may be a
            // `postgres_url` with a password in it.
            let line = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| before.matches('\n').count() + 1);
            BrokerError::Config(match line {
                Some(line) => format!("line {line}: {}", e.message()),
                None => e.message().to_string(),
            })
        })?;
        for (name, value) in [
            ("commit_delay_us", config.records.commit_delay_us),
            ("commit_interval_us", config.records.commit_interval_us),
        ] {
            if value.is_some_and(|us| us > MAX_COMMIT_DELAY_US) {
                // Every answer under load may wait this long for its commit.
                return Err(BrokerError::Config(format!(
                    "[records] {name} must be at most {MAX_COMMIT_DELAY_US} (one second)"
                )));
            }
        }
        config.check_periods()?;
        // R15's own bounds: personal data are kept no longer than this.
        if config.retention.identity_confirmation_days > 365 {
            return Err(BrokerError::Config(
                "[retention] identity_confirmation_days must be at most 365 (R15: one year)".into(),
            ));
        }
        if config.retention.copies_after_loss_years > 5 {
            return Err(BrokerError::Config(
                "[retention] copies_after_loss_years must be at most 5 (R15)".into(),
            ));
        }
        if config.records.purge_step_records == 0 {
            return Err(BrokerError::Config(
                "[records] purge_step_records must be at least 1".into(),
            ));
        }
        if config.records.retention_years == 0 {
            return Err(BrokerError::Config(format!(
                "[records] retention_years must be at least 1 (the legal period is {} years)",
                LEGAL_RETENTION_YEARS
            )));
        }
        Ok(config)
    }

    /// Refuses a period longer than [`MAX_PERIOD_SECS`]: added to the
    /// current time it would pass the last instant the broker can store
    /// (the year 9999), and every query, login or timer using it would
    /// fail. No setting needs more than ten years (retention is counted in
    /// years apart, `[records] retention_years`).
    fn check_periods(&self) -> Result<(), BrokerError> {
        const DAY: u64 = 24 * 3600;
        let periods: [(&str, &str, u64); 20] = [
            ("exchange", "result_ttl_secs", self.exchange.result_ttl_secs),
            (
                "exchange",
                "pending_ttl_secs",
                self.exchange.pending_ttl_secs,
            ),
            ("exchange", "permit_ttl_secs", self.exchange.permit_ttl_secs),
            (
                "exchange",
                "sweep_interval_secs",
                self.exchange.sweep_interval_secs,
            ),
            ("people", "idle_timeout_secs", self.people.idle_timeout_secs),
            (
                "people",
                "session_lifetime_secs",
                self.people.session_lifetime_secs,
            ),
            ("people", "lockout_secs", self.people.lockout_secs),
            (
                "records",
                "checkpoint_interval_ms",
                self.records.checkpoint_interval_ms / 1000,
            ),
            (
                "records",
                "purge_interval_secs",
                self.records.purge_interval_secs,
            ),
            (
                "records",
                "purge_first_delay_secs",
                self.records.purge_first_delay_secs,
            ),
            (
                "records",
                "person_index_interval_ms",
                self.records.person_index_interval_ms / 1000,
            ),
            (
                "records",
                "wal_checkpoint_interval_ms",
                self.records.wal_checkpoint_interval_ms / 1000,
            ),
            (
                "retention",
                "identity_confirmation_days",
                u64::from(self.retention.identity_confirmation_days).saturating_mul(DAY),
            ),
            (
                "retention",
                "copies_after_loss_years",
                u64::from(self.retention.copies_after_loss_years).saturating_mul(365 * DAY),
            ),
            ("retention", "interval_secs", self.retention.interval_secs),
            (
                "retention",
                "first_delay_secs",
                self.retention.first_delay_secs,
            ),
            ("tls", "reload_interval_secs", self.tls.reload_interval_secs),
            (
                "keys",
                "reload_interval_secs",
                self.keys.reload_interval_secs,
            ),
            (
                "keys",
                "data_key_days",
                u64::from(self.keys.data_key_days).saturating_mul(DAY),
            ),
            (
                "storage",
                "statement_timeout_ms",
                self.storage.statement_timeout_ms / 1000,
            ),
        ];
        for (section, name, secs) in periods {
            if secs > MAX_PERIOD_SECS {
                return Err(BrokerError::Config(format!(
                    "[{section}] {name} must be at most ten years"
                )));
            }
        }
        Ok(())
    }

    /// Makes every relative path absolute with respect to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        self.tls.client_ca.iter_mut().for_each(fix);
        self.tls.crls.iter_mut().for_each(fix);
        if let Some(p) = self.storage.sqlite.as_mut() {
            fix(p);
        }
        fix(&mut self.keys.dir);
        if let Some(p) = self.exchange.flow_list.as_mut() {
            fix(p);
        }
    }
}

/// The longest period any setting may give: ten years, in seconds.
pub const MAX_PERIOD_SECS: u64 = 10 * 366 * 24 * 3600;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listen]
        address = "127.0.0.1:7443"
        [tls]
        cert = "pki/server.crt"
        key = "pki/server.key"
        client_ca = ["pki/ca.crt"]
        [storage]
        sqlite = "kakehashi.db"
    "#;

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let mut c = Config::parse(MINIMAL).unwrap();
        c.resolve_paths(Path::new("/srv/k"));
        assert_eq!(c.tls.cert, PathBuf::from("/srv/k/pki/server.crt"));
        assert!(!c.tls.allow_tls12);
        assert_eq!(c.limits.max_body_bytes, 8 * 1024 * 1024);
        assert!(matches!(c.storage.target(), Ok(StorageTarget::Sqlite(_))));
    }

    #[test]
    fn a_commit_wait_past_one_second_is_refused() {
        type Field = fn(&Config) -> Option<u64>;
        let fields: [(&str, u64, u64, Field); 2] = [
            ("commit_delay_us", 2_500, 5_000_000, |c| {
                c.records.commit_delay_us
            }),
            ("commit_interval_us", 500, 1_000_001, |c| {
                c.records.commit_interval_us
            }),
        ];
        for (key, fine, too_long, field) in fields {
            let with = |us: u64| Config::parse(&format!("{MINIMAL}\n[records]\n{key} = {us}"));
            assert_eq!(field(&with(fine).unwrap()), Some(fine), "{key}");
            let err = with(too_long).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{key} must be at most 1000000")),
                "{err}"
            );
            assert_eq!(field(&Config::parse(MINIMAL).unwrap()), None, "{key}");
        }
    }

    #[test]
    fn a_purge_step_holds_at_least_one_record() {
        let with =
            |n: u64| Config::parse(&format!("{MINIMAL}\n[records]\npurge_step_records = {n}"));
        assert_eq!(with(500).unwrap().records.purge_step_records, 500);
        assert_eq!(
            Config::parse(MINIMAL).unwrap().records.purge_step_records,
            PURGE_STEP_RECORDS
        );
        let err = with(0).unwrap_err().to_string();
        assert!(
            err.contains("purge_step_records must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn a_period_past_ten_years_is_refused_by_name() {
        for (section, key) in [
            ("exchange", "result_ttl_secs"),
            ("exchange", "pending_ttl_secs"),
            ("exchange", "permit_ttl_secs"),
            ("people", "lockout_secs"),
            ("people", "session_lifetime_secs"),
            ("keys", "data_key_days"),
        ] {
            let with = |v: u64| Config::parse(&format!("{MINIMAL}\n[{section}]\n{key} = {v}"));
            let fine = if key.ends_with("_days") { 3650 } else { 3600 };
            assert!(with(fine).is_ok(), "{key}");
            let err = with(u64::from(u32::MAX)).unwrap_err().to_string();
            assert!(
                err.contains(&format!("[{section}] {key} must be at most ten years")),
                "{err}"
            );
        }
    }

    #[test]
    fn personal_data_are_kept_no_longer_than_r15_allows() {
        for (key, fine, too_long) in [
            ("identity_confirmation_days", 365, 366),
            ("copies_after_loss_years", 5, 6),
        ] {
            let with = |v: u32| Config::parse(&format!("{MINIMAL}\n[retention]\n{key} = {v}"));
            assert!(with(fine).is_ok(), "{key}");
            let err = with(too_long).unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn a_config_error_names_the_line_but_never_shows_it() {
        let bad = MINIMAL.replace(
            "sqlite = \"kakehashi.db\"",
            "postgres_url = \"postgres://kk:s3cret-pw@db/kk\" oops",
        );
        let err = Config::parse(&bad).unwrap_err().to_string();
        assert!(err.contains("line 9"), "{err}");
        assert!(
            !err.contains("s3cret-pw"),
            "the error shows the line's text"
        );
    }

    #[test]
    fn unknown_keys_and_double_storage_are_refused() {
        assert!(Config::parse(&format!("{MINIMAL}\n[extra]\nx=1")).is_err());
        let both = MINIMAL.replace(
            "sqlite = \"kakehashi.db\"",
            "sqlite = \"a\"\npostgres_url = \"postgres://x\"",
        );
        let c = Config::parse(&both).unwrap();
        assert!(c.storage.target().is_err());
    }
}
