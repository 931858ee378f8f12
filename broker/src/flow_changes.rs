//! Two-person flow-list changes (R8, 兼務の禁止): proposals, approvals, the
//! history of every version, diffs between versions, the task that puts a
//! newly approved version in force on every running broker, and the
//! `kakehashi-broker flows …` host commands.
//!
//! A version is first *proposed* (who, when, the text and its SHA-256,
//! validated like every flow list: [`crate::policy::parse_flow_list`]). It
//! is in force only once a *different* administrator *approves* it; the
//! version in force is the highest approved one, so it only ever moves
//! forward. Every version stays stored with its proposer and approver.
//!
//! Two actors are not people: `host:config` stores the list named by
//! `[exchange] flow_list` in broker.toml (and the dev environment's sample)
//! as proposed and approved at once — the configuration file is itself the
//! reviewed artefact, changed through the host's own two-person change
//! process, so the broker takes it as approved; and `host:migration` stands
//! for the versions stored before approvals existed. Neither may be named
//! as a proposer or approver.
//!
//! Every writing transaction first updates the one row of
//! `flow_list_writer` to itself: writers on all brokers and host commands
//! sharing a database take turns, so a check ("is a later version
//! approved?") and the write that depends on it cannot interleave with
//! another writer's.

use std::collections::BTreeMap;
use std::time::Duration;

use kakehashi_interfaces::ErrorCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::BrokerError;
use crate::oplog::validate_actor;
use crate::policy::{parse_flow_list, FlowRule};
use crate::store::{now_rfc3339, Pools};

/// The actor of a flow list taken from the configuration file (or the dev
/// environment's sample): proposed and approved at once.
pub const CONFIG_ACTOR: &str = "host:config";

/// The actor of versions stored before proposals and approvals existed.
pub const MIGRATION_ACTOR: &str = "host:migration";

/// How often a running broker checks which version is in force.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Largest flow-list text accepted, in bytes (the sample is ~3 KB; a
/// national list of some thousand rows stays well below).
pub const MAX_FLOW_LIST_BYTES: usize = 1 << 20;

/// First statement of every writing transaction: takes the writers' turn.
const TAKE_TURN: &str = "UPDATE flow_list_writer SET id = id WHERE id = 1";

/// The cheap check the reloader runs every [`RELOAD_INTERVAL`].
const IN_FORCE_VERSION: &str = "SELECT MAX(version) FROM flow_lists WHERE approved_at IS NOT NULL";

const IN_FORCE_ROW: &str = "SELECT version, sha256 FROM flow_lists \
     WHERE approved_at IS NOT NULL ORDER BY version DESC LIMIT 1";

const INSERT: &str = "INSERT INTO flow_lists \
     (version, sha256, body, loaded_at, proposed_by, proposed_at, approved_by, approved_at) \
     VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM flow_lists), $1, $2, $3, $4, $3, $5, $6) \
     RETURNING version";

const VIEW_COLUMNS: &str = "version, sha256, proposed_by, proposed_at, approved_by, approved_at";

/// A stored proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// The new version's number.
    pub version: u64,
    /// SHA-256 of its text (lowercase hex).
    pub sha256: String,
}

/// An approval: the version is now in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approved {
    /// The version approved, now in force.
    pub version: u64,
    /// SHA-256 of its text (lowercase hex).
    pub sha256: String,
}

/// Where a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Waiting for a second administrator's approval.
    Proposed,
    /// The highest approved version: the one queries are checked against.
    InForce,
    /// Approved once and replaced by a later version, or proposed and
    /// overtaken by a later approved version (it can no longer be approved).
    Superseded,
}

/// One version as listed: who proposed and approved it, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    /// Version number (1, 2, …).
    pub version: u64,
    /// SHA-256 of the text (lowercase hex).
    pub sha256: String,
    /// Where it stands.
    pub status: VersionStatus,
    /// User id or `host:<name>`.
    pub proposed_by: String,
    /// RFC 3339 UTC.
    pub proposed_at: String,
    /// User id or `host:<name>`; absent while proposed.
    pub approved_by: Option<String>,
    /// RFC 3339 UTC; absent while proposed.
    pub approved_at: Option<String>,
}

/// One version with its text, for a reviewer to read before approving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDetail {
    /// Status, proposer, approver.
    #[serde(flatten)]
    pub view: VersionView,
    /// The flow-list TOML exactly as proposed.
    pub text: String,
}

/// How one flow differs between two versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowChange {
    /// Only in the later version.
    Added,
    /// Only in the earlier version.
    Removed,
    /// In both, with different fields.
    Changed,
}

/// One flow's difference between two versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowDiff {
    /// The flow id.
    pub flow_id: String,
    /// Added, removed or changed.
    pub change: FlowChange,
    /// For `changed`: the fields that differ (`procedure`, `requester`,
    /// `provider`, `items`, `sensitive_items`, `legal_basis`, `valid_from`,
    /// `valid_until`); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

type ViewRow = (i64, String, String, String, Option<String>, Option<String>);

fn refused(code: ErrorCode, message: String) -> BrokerError {
    BrokerError::refused(code, message)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn no_version(version: u64) -> BrokerError {
    refused(
        ErrorCode::NotFound,
        format!("版 {version} はありません / there is no flow-list version {version}"),
    )
}

fn stored_version(version: u64) -> Result<i64, BrokerError> {
    i64::try_from(version).map_err(|_| no_version(version))
}

/// Checks a proposer's or approver's name: a user id or `host:<name>`,
/// never one of the two actors that are not people.
pub(crate) fn check_actor(actor: &str, role: &str) -> Result<(), BrokerError> {
    validate_actor(actor).map_err(|e| {
        refused(
            ErrorCode::InvalidInput,
            format!("{role}: {}", e.public_message()),
        )
    })?;
    if [CONFIG_ACTOR, MIGRATION_ACTOR]
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(actor))
    {
        return Err(refused(
            ErrorCode::InvalidInput,
            format!(
                "{actor} は人ではないため{role}になれません / {actor} names the configuration or the migration, not a person; it cannot be the {role}"
            ),
        ));
    }
    Ok(())
}

/// True when two actors name the same person (user ids compare without case).
pub(crate) fn same_actor(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

pub(crate) fn self_approval() -> BrokerError {
    refused(
        ErrorCode::Forbidden,
        "提案者自身は承認できません / the proposer cannot approve their own version".into(),
    )
}

/// Validates a flow-list text exactly as every version is validated and
/// returns its SHA-256 (lowercase hex).
fn checked_text(text: &str) -> Result<String, BrokerError> {
    if text.len() > MAX_FLOW_LIST_BYTES {
        return Err(refused(
            ErrorCode::InvalidInput,
            format!(
                "flow list: {} bytes, more than the {MAX_FLOW_LIST_BYTES} accepted",
                text.len()
            ),
        ));
    }
    parse_flow_list(text)?;
    Ok(hex::encode(Sha256::digest(text.as_bytes())))
}

/// Proposes `text` as a new version by `proposer` (a user id or
/// `host:<name>`). It is not in force until a different administrator
/// approves it ([`approve`]). Refused (`conflict`) when the text is the
/// version in force, or already proposed and waiting.
pub async fn propose(pools: &Pools, text: &str, proposer: &str) -> Result<Proposed, BrokerError> {
    check_actor(proposer, "proposer")?;
    let sha = checked_text(text)?;
    let now = now_rfc3339();
    let version: i64 = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        sqlx::query(TAKE_TURN).execute(&mut *tx).await?;
        let in_force: Option<(i64, String)> = sqlx::query_as(IN_FORCE_ROW)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((v, s)) = &in_force {
            if *s == sha {
                return Err(refused(
                    ErrorCode::Conflict,
                    format!(
                        "この内容は現在有効な版 {v} と同じです。何も提案していません / the text is the same as version {v}, which is in force; nothing was proposed"
                    ),
                ));
            }
        }
        let waiting: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM flow_lists \
             WHERE sha256 = $1 AND approved_at IS NULL AND version > $2 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(&sha)
        .bind(in_force.as_ref().map_or(0, |(v, _)| *v))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(v) = waiting {
            return Err(refused(
                ErrorCode::Conflict,
                format!(
                    "この内容は版 {v} として提案済みで、承認を待っています / the text is already proposed as version {v}, waiting for approval"
                ),
            ));
        }
        let version: i64 = sqlx::query_scalar(INSERT)
            .bind(&sha)
            .bind(text)
            .bind(&now)
            .bind(proposer)
            .bind(None::<String>)
            .bind(None::<String>)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        version
    });
    Ok(Proposed {
        version: to_u64(version),
        sha256: sha,
    })
}

/// Approves proposed `version` by `approver`, who must not be its
/// proposer (`forbidden`); the version is then in force. Refused
/// (`conflict`) when it is already approved, or superseded by a later
/// approved version; `not_found` when there is no such version. The
/// approval is announced, so running brokers on PostgreSQL reload it at
/// once (`cluster::changes`), and every broker within [`RELOAD_INTERVAL`]
/// in any case; the caller's own broker at once with `AppState::reload_flows`.
pub async fn approve(pools: &Pools, version: u64, approver: &str) -> Result<Approved, BrokerError> {
    check_actor(approver, "approver")?;
    let stored = stored_version(version)?;
    let now = now_rfc3339();
    let sha: String = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        sqlx::query(TAKE_TURN).execute(&mut *tx).await?;
        let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT sha256, body, proposed_by, approved_by FROM flow_lists WHERE version = $1",
        )
        .bind(stored)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((sha, body, proposed_by, approved_by)) = row else {
            return Err(no_version(version));
        };
        if let Some(by) = approved_by {
            return Err(refused(
                ErrorCode::Conflict,
                format!("版 {version} は {by} が承認済みです / version {version} is already approved (by {by})"),
            ));
        }
        let in_force: Option<i64> = sqlx::query_scalar(IN_FORCE_VERSION)
            .fetch_one(&mut *tx)
            .await?;
        if let Some(later) = in_force.filter(|v| *v > stored) {
            return Err(refused(
                ErrorCode::Conflict,
                format!(
                    "版 {version} はより新しい版 {later} に置き換えられています / version {version} is superseded: the later version {later} is in force"
                ),
            ));
        }
        if same_actor(&proposed_by, approver) {
            return Err(self_approval());
        }
        // Validation rules may have tightened since the proposal: what
        // goes into force must load.
        parse_flow_list(&body)?;
        sqlx::query(
            "UPDATE flow_lists SET approved_by = $1, approved_at = $2 \
             WHERE version = $3 AND approved_at IS NULL",
        )
        .bind(approver)
        .bind(&now)
        .bind(stored)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        sha
    });
    // Every node re-reads the version in force now rather than at its next check.
    crate::cluster::changes::announce(pools, &crate::cluster::changes::Announcement::Flows).await;
    Ok(Approved {
        version,
        sha256: sha,
    })
}

/// Stores a flow list that comes from the configuration file (or the dev
/// environment's sample) as proposed and approved by [`CONFIG_ACTOR`]:
/// the configuration is the reviewed artefact. Nothing is stored when the
/// text is the version in force, nor when it is the configuration's own
/// latest version and a later version approved by administrators is in
/// force (an unchanged file at restart does not undo their change).
/// Returns the version in force afterwards.
pub async fn store_configured(pools: &Pools, text: &str) -> Result<u64, BrokerError> {
    let sha = checked_text(text)?;
    let now = now_rfc3339();
    let (version, stored): (i64, bool) = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        sqlx::query(TAKE_TURN).execute(&mut *tx).await?;
        let in_force: Option<(i64, String)> = sqlx::query_as(IN_FORCE_ROW)
            .fetch_optional(&mut *tx)
            .await?;
        let last_configured: Option<String> = sqlx::query_scalar(
            "SELECT sha256 FROM flow_lists WHERE proposed_by = $1 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(CONFIG_ACTOR)
        .fetch_optional(&mut *tx)
        .await?;
        let version = match in_force {
            Some((v, s)) if s == sha => (v, false),
            Some((v, _)) if last_configured.as_deref() == Some(sha.as_str()) => {
                tracing::info!(
                    version = v,
                    "the configured flow list is unchanged; the later approved version stays in force"
                );
                (v, false)
            }
            _ => {
                let v = sqlx::query_scalar(INSERT)
                    .bind(&sha)
                    .bind(text)
                    .bind(&now)
                    .bind(CONFIG_ACTOR)
                    .bind(Some(CONFIG_ACTOR))
                    .bind(Some(&now))
                    .fetch_one(&mut *tx)
                    .await?;
                (v, true)
            }
        };
        tx.commit().await?;
        version
    });
    if stored {
        // A node started with a changed file: the others take it now too.
        crate::cluster::changes::announce(pools, &crate::cluster::changes::Announcement::Flows)
            .await;
    }
    Ok(to_u64(version))
}

/// The version in force (0 when none was ever approved): one cheap query.
pub async fn in_force_version(pools: &Pools) -> Result<u64, BrokerError> {
    let version: Option<i64> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_scalar(IN_FORCE_VERSION).fetch_one(pool).await?
    });
    Ok(version.map_or(0, to_u64))
}

fn status_of(version: i64, approved: bool, in_force: i64) -> VersionStatus {
    match (approved, version.cmp(&in_force)) {
        (true, std::cmp::Ordering::Equal) => VersionStatus::InForce,
        (false, std::cmp::Ordering::Greater) => VersionStatus::Proposed,
        _ => VersionStatus::Superseded,
    }
}

fn view_of(row: ViewRow, in_force: i64) -> VersionView {
    let (version, sha256, proposed_by, proposed_at, approved_by, approved_at) = row;
    VersionView {
        version: to_u64(version),
        sha256,
        status: status_of(version, approved_at.is_some(), in_force),
        proposed_by,
        proposed_at,
        approved_by,
        approved_at,
    }
}

/// Every version, oldest first, with its status, proposer and approver.
pub async fn list(pools: &Pools) -> Result<Vec<VersionView>, BrokerError> {
    let rows: Vec<ViewRow> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(&format!(
            "SELECT {VIEW_COLUMNS} FROM flow_lists ORDER BY version"
        ))
        .fetch_all(pool)
        .await?
    });
    let in_force = rows
        .iter()
        .filter(|r| r.5.is_some())
        .map(|r| r.0)
        .max()
        .unwrap_or(0);
    Ok(rows.into_iter().map(|r| view_of(r, in_force)).collect())
}

/// One version with its text; `not_found` when there is none.
pub async fn get(pools: &Pools, version: u64) -> Result<VersionDetail, BrokerError> {
    let stored = stored_version(version)?;
    let (row, body, in_force): (Option<ViewRow>, Option<String>, Option<i64>) =
        crate::on_pool!(pools, read, |pool| {
            // One snapshot for the row, its text and the version in force.
            let mut tx = pool.begin().await?;
            let row: Option<ViewRow> = sqlx::query_as(&format!(
                "SELECT {VIEW_COLUMNS} FROM flow_lists WHERE version = $1"
            ))
            .bind(stored)
            .fetch_optional(&mut *tx)
            .await?;
            let body: Option<String> =
                sqlx::query_scalar("SELECT body FROM flow_lists WHERE version = $1")
                    .bind(stored)
                    .fetch_optional(&mut *tx)
                    .await?;
            let in_force: Option<i64> = sqlx::query_scalar(IN_FORCE_VERSION)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            (row, body, in_force)
        });
    match (row, body) {
        (Some(row), Some(text)) => Ok(VersionDetail {
            view: view_of(row, in_force.unwrap_or(0)),
            text,
        }),
        _ => Err(no_version(version)),
    }
}

/// The rules of one stored version.
async fn rules_of(pools: &Pools, version: u64) -> Result<Vec<FlowRule>, BrokerError> {
    let text = get(pools, version).await?.text;
    parse_flow_list(&text).map_err(|e| {
        BrokerError::Corrupt(format!(
            "stored flow-list version {version} does not validate: {e}"
        ))
    })
}

/// Which flows version `to` adds, removes or changes against version
/// `from` (either order), sorted by flow id.
pub async fn diff(pools: &Pools, from: u64, to: u64) -> Result<Vec<FlowDiff>, BrokerError> {
    let before = rules_of(pools, from).await?;
    let after = rules_of(pools, to).await?;
    Ok(diff_rules(&before, &after))
}

/// The fields in which two rules of one flow differ.
fn changed_fields(a: &FlowRule, b: &FlowRule) -> Vec<String> {
    let checks = [
        ("procedure", a.procedure != b.procedure),
        ("requester", a.requester != b.requester),
        ("provider", a.provider != b.provider),
        ("items", a.items != b.items),
        ("sensitive_items", a.sensitive_items != b.sensitive_items),
        ("legal_basis", a.legal_basis != b.legal_basis),
        ("valid_from", a.valid_from != b.valid_from),
        ("valid_until", a.valid_until != b.valid_until),
    ];
    checks
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Flows added, removed or changed from `before` to `after`, by flow id.
pub fn diff_rules(before: &[FlowRule], after: &[FlowRule]) -> Vec<FlowDiff> {
    let before: BTreeMap<&str, &FlowRule> =
        before.iter().map(|r| (r.flow_id.as_str(), r)).collect();
    let after: BTreeMap<&str, &FlowRule> = after.iter().map(|r| (r.flow_id.as_str(), r)).collect();
    let mut ids: Vec<&str> = before.keys().chain(after.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| {
            let (change, fields) = match (before.get(id), after.get(id)) {
                (None, Some(_)) => (FlowChange::Added, Vec::new()),
                (Some(_), None) => (FlowChange::Removed, Vec::new()),
                (Some(a), Some(b)) => {
                    let fields = changed_fields(a, b);
                    if fields.is_empty() {
                        return None;
                    }
                    (FlowChange::Changed, fields)
                }
                (None, None) => return None,
            };
            Some(FlowDiff {
                flow_id: id.to_string(),
                change,
                fields,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::SAMPLE_FLOW_LIST;

    fn rules(text: &str) -> Vec<FlowRule> {
        parse_flow_list(text).unwrap()
    }

    #[test]
    fn diff_names_added_removed_and_changed_flows_with_their_fields() {
        let before = rules(SAMPLE_FLOW_LIST);
        let changed = SAMPLE_FLOW_LIST
            .replace(
                "items = [\"local_tax.income\", \"welfare.public_assistance\"]",
                "items = [\"local_tax.income\", \"welfare.public_assistance\", \"household.members\"]",
            )
            .replace("flow_id = \"F-0099\"", "flow_id = \"F-0098\"");
        let after = rules(&changed);
        let d = diff_rules(&before, &after);
        assert_eq!(
            d,
            vec![
                FlowDiff {
                    flow_id: "F-0098".into(),
                    change: FlowChange::Added,
                    fields: vec![]
                },
                FlowDiff {
                    flow_id: "F-0099".into(),
                    change: FlowChange::Removed,
                    fields: vec![]
                },
                FlowDiff {
                    flow_id: "F-0121".into(),
                    change: FlowChange::Changed,
                    fields: vec!["items".into()]
                },
            ]
        );
        assert!(diff_rules(&before, &before).is_empty());
    }

    #[test]
    fn status_follows_the_highest_approved_version() {
        assert_eq!(status_of(3, true, 3), VersionStatus::InForce);
        assert_eq!(status_of(2, true, 3), VersionStatus::Superseded);
        assert_eq!(status_of(2, false, 3), VersionStatus::Superseded);
        assert_eq!(status_of(4, false, 3), VersionStatus::Proposed);
        assert_eq!(status_of(1, false, 0), VersionStatus::Proposed);
    }

    #[test]
    fn actors_that_are_not_people_cannot_propose_or_approve() {
        assert!(check_actor("admin-tanaka", "approver").is_ok());
        assert!(check_actor("host:suzuki", "approver").is_ok());
        for bad in ["host:config", "HOST:Migration", "", "host:", "two words"] {
            let e = check_actor(bad, "approver").unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidInput, "{bad:?}");
        }
        assert!(same_actor("Admin-Tanaka", "admin-tanaka"));
        assert!(!same_actor("host:tanaka", "tanaka"));
    }
}
