//! Own retention periods of personal data (R15, seed 004 II-6 ②保管期間):
//! - identity-confirmation data (本人確認項目, the basic four facts) are kept
//!   at most one year after they were last confirmed by a registration;
//! - a person who lost eligibility is kept, with every provider's copies
//!   (副本), every org's code and the Individual Number, for five years after
//!   the day of the loss, then erased.
//!
//! Provision records have their own seven-year period ([`crate::records`]);
//! they hold codes, never facts or numbers, so erasing a person leaves them
//! intact. Each erasure that deleted anything appends an `erasure` record
//! with the counts, in the same transaction as the deletion. The cut-offs
//! are a pure function of the clock and the configuration.

use std::sync::Weak;
use std::time::Duration;

use kakehashi_interfaces::audit::Outcome;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::watch;

pub use crate::config::RetentionConfig;
use crate::error::BrokerError;
use crate::records::{Deletes, RecordDraft, RecordLog};
use crate::store::erasure::count_due;
pub use crate::store::erasure::Cutoffs;
use crate::store::Pools;

/// What one erasure deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErasureReport {
    /// The cut-off for identity-confirmation data.
    pub confirmed_before: String,
    /// The cut-off day for persons who lost eligibility.
    pub lost_before: String,
    /// Sets of basic four facts erased.
    pub identity_confirmations: u64,
    /// Persons erased (with their codes and Individual Number).
    pub persons: u64,
    /// Copies erased, over all providers.
    pub copies: u64,
    /// Codes erased: those of the persons erased, of every org, and linking
    /// codes whose number no insurer keeps, last linked before the
    /// identity-confirmation cut-off (the `erasure` record states it too).
    pub codes: u64,
    /// The `erasure` provision record, when anything was erased.
    pub record_seq: Option<u64>,
}

/// Erases what is due now and, when anything was, appends an `erasure`
/// record naming the cut-offs, the counts and `actor`: the deletion and its
/// record commit in one transaction of the records writer, so a crash
/// leaves both or neither, and the record states exactly what was deleted.
pub async fn erase(
    pools: &Pools,
    records: &RecordLog,
    config: &RetentionConfig,
    now: OffsetDateTime,
    actor: &str,
) -> Result<ErasureReport, BrokerError> {
    let cutoffs = Cutoffs::at(now, config);
    // A registration between counting and deleting changes the counts and
    // rolls the erasure back; try again a few times.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let counts = count_due(pools, &cutoffs).await?;
        let (identity_confirmations, persons, copies, codes) = counts;
        let mut report = ErasureReport {
            confirmed_before: cutoffs.confirmed_before.clone(),
            lost_before: cutoffs.lost_before.clone(),
            identity_confirmations,
            persons,
            copies,
            codes,
            record_seq: None,
        };
        if identity_confirmations + persons + copies + codes == 0 {
            return Ok(report);
        }
        let draft = RecordDraft::new(
            format!("erasure-{}", hex::encode(rand::random::<[u8; 8]>())),
            crate::records::system_org()?,
            Outcome::Erasure {
                confirmed_before: report.confirmed_before.clone(),
                lost_before: report.lost_before.clone(),
                identity_confirmations,
                persons,
                copies,
                codes: Some(codes),
                actor: actor.to_string(),
            },
        );
        let deletes = Deletes::PersonalData {
            cutoffs: cutoffs.clone(),
            counts,
        };
        match records.delete_with_record(deletes, draft).await {
            Ok(seq) => {
                report.record_seq = Some(seq);
                tracing::info!(
                    identity_confirmations,
                    persons,
                    copies,
                    codes,
                    record = seq,
                    "personal data erased at the end of their retention periods"
                );
                // The erasure stands once committed; what the database
                // keeps of the deleted rows elsewhere is cleared after, and
                // a failure there is only logged (the next erasure, or
                // autovacuum and WAL reuse, clears it).
                if let Err(e) = pools.backend().after_erasure().await {
                    tracing::warn!(error = %e, "the database's copies of erased rows were not cleared at once");
                }
                return Ok(report);
            }
            Err(e) if attempt < 3 => {
                tracing::warn!(error = %e, attempt, "erasure not committed; counting again");
            }
            Err(e) => {
                return Err(BrokerError::refused(
                    kakehashi_interfaces::ErrorCode::Unavailable,
                    format!("erasure failed: {e}"),
                ))
            }
        }
    }
}

/// Runs [`erase`] every `interval_secs` (after `first_delay_secs`) until
/// `stop` changes or the record log is gone; in a cluster only while this
/// node holds the retention role.
pub fn spawn_task(
    pools: Pools,
    records: Weak<RecordLog>,
    config: RetentionConfig,
    roles: std::sync::Arc<crate::cluster::Roles>,
    mut stop: watch::Receiver<bool>,
) {
    if config.interval_secs == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut wait = Duration::from_secs(config.first_delay_secs);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            wait = Duration::from_secs(config.interval_secs);
            let Some(log) = records.upgrade() else { return };
            if !roles.holds(crate::cluster::Role::Retention) {
                continue;
            }
            if let Err(e) = erase(
                &pools,
                &log,
                &config,
                OffsetDateTime::now_utc(),
                "retention-task",
            )
            .await
            {
                tracing::error!(error = %e, "erasure of expired personal data failed");
            }
        }
    });
}
