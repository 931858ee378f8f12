//! [`HostLog`]: how host commands (`orgs`, `users`, `flows`, `keys` …) log
//! what the person at the host did.

use std::path::Path;
use std::sync::Arc;

use kakehashi_interfaces::OrgId;

use super::{host_actor, OpAction, OpEntry, OpResult, OperationLog, OplogOptions};
use crate::error::BrokerError;
use crate::store::Pools;

/// The operation log as a host command uses it: the actor is the host's
/// login user ([`host_actor`]), known before anything is done, and every
/// entry is sealed by a checkpoint before the command ends.
pub struct HostLog {
    pub(crate) log: Arc<OperationLog>,
    actor: String,
}

impl HostLog {
    /// Opens the log for a host command (no background task).
    pub async fn open(pools: Pools, keys_dir: &Path) -> Result<HostLog, BrokerError> {
        let actor = host_actor()?;
        let log = OperationLog::open_with(
            pools,
            keys_dir,
            OplogOptions {
                checkpoint_interval: std::time::Duration::ZERO,
            },
        )
        .await?;
        Ok(HostLog { log, actor })
    }

    /// `host:<login name>`.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Logs what a host command did and how it ended, seals it, and hands
    /// the command's outcome back. When the change was made but the entry
    /// could not be stored, that is the error. A target or detail that
    /// fails validation is left out rather than losing the entry.
    pub async fn outcome<T>(
        &self,
        action: OpAction,
        org: Option<&OrgId>,
        target: Option<String>,
        detail: Option<String>,
        outcome: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let full = OpEntry {
            org: org.cloned(),
            target,
            detail,
            ..OpEntry::new(self.actor.clone(), action, OpResult::of(&outcome))
        };
        let entry = match full.clone().validate() {
            Ok(entry) => entry,
            Err(_) => OpEntry {
                target: None,
                detail: None,
                ..full
            },
        };
        let logged = match self.log.append(entry).await {
            Ok(_) => self.log.checkpoint().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = logged {
            let done = match &outcome {
                Ok(_) => "the change was made".to_string(),
                Err(refused) => format!("the command was refused ({})", refused.code().as_str()),
            };
            return Err(BrokerError::refused(
                e.code(),
                format!("{done}, but its operation-log entry could not be written: {e}"),
            ));
        }
        outcome
    }

    /// [`HostLog::outcome`] for an action on an org: the org is both the
    /// entry's org and its target.
    pub async fn org_outcome<T>(
        &self,
        action: OpAction,
        org: &OrgId,
        detail: Option<String>,
        outcome: Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        self.outcome(action, Some(org), Some(org.to_string()), detail, outcome)
            .await
    }
}
