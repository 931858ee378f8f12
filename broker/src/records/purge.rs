//! Retention purge (R15): deletes the oldest records, leaving a signed purge
//! record from whose cut hash verification of the rest starts.

use kakehashi_interfaces::audit::{Hash, Outcome};
use kakehashi_interfaces::ErrorCode;
use serde::Serialize;
use tokio::sync::oneshot;

use std::sync::atomic::Ordering;

use super::verify::{self, Verdict, WalkPlan, WalkProgress};
use super::writer::Job;
use super::{db, system_org, RecordDraft, RecordLog};
use crate::config::LEGAL_RETENTION_YEARS;
use crate::error::BrokerError;
use crate::store::records::rows::{Deletes, NewRow, PurgePlan};

/// The retention period a purge uses: `requested` on the command line, else
/// the configured one. Shorter than the legal period is refused unless the
/// configuration itself says so (a reviewed decision, not a flag typed at
/// the prompt); zero is always refused.
pub fn retention_years(configured: u32, requested: Option<u32>) -> Result<u32, BrokerError> {
    let years = requested.unwrap_or(configured);
    if years == 0 {
        return Err(BrokerError::refused(
            ErrorCode::InvalidInput,
            "a retention period of 0 years would delete every provision record; refused",
        ));
    }
    if years < LEGAL_RETENTION_YEARS && years < configured {
        return Err(BrokerError::refused(
            ErrorCode::InvalidInput,
            format!(
                "provision records are kept {LEGAL_RETENTION_YEARS} years by law and {configured} \
                 by the configuration; --retention-years {years} is shorter and is refused \
                 (set [records] retention_years in the configuration if this is intended)"
            ),
        ));
    }
    Ok(years)
}

/// The latest `before` a purge may use at `now` when records are kept
/// `years`: now minus the retention period (the Unix epoch for a period
/// longer than the calendar reaches back).
pub fn retention_cutoff(now: time::OffsetDateTime, years: u32) -> time::OffsetDateTime {
    let now = now.to_offset(time::UtcOffset::UTC);
    match crate::store::erasure::years_before(now.date(), years) {
        Some(day) => now.replace_date(day),
        None => time::OffsetDateTime::UNIX_EPOCH,
    }
}

/// What a purge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Records older than this were due (fixed-width RFC 3339 UTC).
    pub before: String,
    /// First deleted sequence (0 when nothing was due).
    pub first_seq: u64,
    /// Last deleted sequence: the remaining chain starts after it.
    pub cut_seq: u64,
    /// Records deleted.
    pub count: u64,
    /// Sequence of the last purge record (none when nothing was due): the
    /// remaining chain is verified from its cut.
    pub purge_record_seq: Option<u64>,
    /// Purge records appended, one per step of the purge.
    pub purge_records: u64,
}

impl RecordLog {
    /// Deletes and appends the record that states the deletion in one
    /// transaction of the writer (after the appends queued before it);
    /// answers the record's sequence number.
    pub(crate) async fn delete_with_record(
        &self,
        deletes: Deletes,
        draft: RecordDraft,
    ) -> Result<u64, String> {
        self.delete_with_records(deletes, vec![draft]).await
    }

    /// [`Self::delete_with_record`] with any number of records; answers the
    /// first one's sequence number (0 when none was appended).
    pub(crate) async fn delete_with_records(
        &self,
        deletes: Deletes,
        drafts: Vec<RecordDraft>,
    ) -> Result<u64, String> {
        let now = time::OffsetDateTime::now_utc();
        let records = drafts
            .into_iter()
            .map(|draft| Ok(NewRow::new(draft.normalize()?, now)))
            .collect::<Result<Vec<_>, BrokerError>>()
            .map_err(|e| e.to_string())?;
        let plan = PurgePlan { deletes, records };
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job::Purge {
                plan: Box::new(plan),
                done,
            })
            .await
            .map_err(|_| super::unavailable().to_string())?;
        wait.await.map_err(|_| super::unavailable().to_string())?
    }

    /// The latest `before` a purge may use now: now minus the retention period.
    pub fn retention_cutoff(&self, now: time::OffsetDateTime) -> time::OffsetDateTime {
        retention_cutoff(now, self.config.retention_years)
    }

    /// Purges records older than the retention period.
    pub async fn purge_expired(&self, actor: &str) -> Result<PurgeReport, BrokerError> {
        let before = self.retention_cutoff(time::OffsetDateTime::now_utc());
        self.purge(before, actor).await
    }

    /// [`Self::purge`], counting the records due in `progress.total` and
    /// those deleted so far in `progress.done`, step by step (for a
    /// progress display of a long purge).
    pub async fn purge_showing(
        &self,
        before: time::OffsetDateTime,
        actor: &str,
        progress: &WalkProgress,
    ) -> Result<PurgeReport, BrokerError> {
        self.purge_with(before, actor, Some(progress)).await
    }

    /// Deletes the longest run of oldest records recorded before `before`
    /// (order is by sequence: a later record with an earlier clock time stops
    /// the run rather than being picked out). Refuses a `before` inside the
    /// retention period. The run is purged in steps ([`Self::purge_step`]),
    /// each verified first — a tampered range is never purged — and deleted
    /// together with the appending of its purge record (range, count, cut
    /// hash) in one transaction; the last is sealed at once. A step deletes
    /// at most `purge_step_records` records row by row, so record commits
    /// wait for a bounded time; on PostgreSQL a past month wholly inside the
    /// run is one step that drops its partition.
    ///
    /// A step that fails leaves the steps before it done (each is whole);
    /// the next purge goes on from there.
    pub async fn purge(
        &self,
        before: time::OffsetDateTime,
        actor: &str,
    ) -> Result<PurgeReport, BrokerError> {
        self.purge_with(before, actor, None).await
    }

    async fn purge_with(
        &self,
        before: time::OffsetDateTime,
        actor: &str,
        progress: Option<&WalkProgress>,
    ) -> Result<PurgeReport, BrokerError> {
        let cutoff = self.retention_cutoff(time::OffsetDateTime::now_utc());
        if before > cutoff {
            return Err(BrokerError::refused(
                ErrorCode::InvalidInput,
                format!(
                    "records are kept {} years: the latest allowed purge date is {}",
                    self.config.retention_years,
                    crate::store::timestamp(cutoff)
                ),
            ));
        }
        let before_text = crate::store::timestamp(before);
        let nothing = |cut| PurgeReport {
            before: before_text.clone(),
            first_seq: 0,
            cut_seq: cut,
            count: 0,
            purge_record_seq: None,
            purge_records: 0,
        };
        // A checkpoint at the head, so the range to purge is covered by one.
        let Some(sealed) = self.seal().await? else {
            return Ok(nothing(0));
        };
        let head = db::read_head(&self.pools).await?;
        let cut = match self
            .pools
            .backend()
            .first_young_seq(&before_text, head.cut_seq, sealed)
            .await?
        {
            Some(first_young) => first_young - 1,
            None => sealed,
        };
        if cut <= head.cut_seq {
            return Ok(nothing(head.cut_seq));
        }
        let mut report = PurgeReport {
            first_seq: head.cut_seq + 1,
            ..nothing(head.cut_seq)
        };
        if let Some(p) = progress {
            p.total.store(cut - head.cut_seq, Ordering::Relaxed);
        }
        let mut from = (head.cut_seq, head.cut_hash);
        while from.0 < cut {
            let step_cut = match self.pools.backend().whole_unit_end(from.0, cut).await? {
                Some(end) => end,
                None => cut.min(from.0.saturating_add(self.config.purge_step_records.max(1))),
            };
            let step = self
                .purge_step(from, step_cut, sealed, &before_text, actor)
                .await;
            let (seq, cut_hash) = match step {
                Ok(done) => done,
                Err(e) if report.purge_records > 0 => {
                    tracing::warn!(
                        purged_to = report.cut_seq,
                        due_to = cut,
                        error = %e,
                        "provision records purged only in part"
                    );
                    // The steps done are signed; the step's error is the answer.
                    if let Err(seal) = self.seal().await {
                        tracing::warn!(error = %seal, "the purge records written were not sealed at once");
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            report.cut_seq = step_cut;
            report.count += step_cut - from.0;
            report.purge_record_seq = Some(seq);
            report.purge_records += 1;
            if let Some(p) = progress {
                p.done.store(report.count, Ordering::Relaxed);
            }
            from = (step_cut, cut_hash);
        }
        // Sign the purge records now rather than within the next interval.
        self.seal().await?;
        tracing::info!(
            first_seq = report.first_seq,
            cut_seq = report.cut_seq,
            count = report.count,
            purge_records = report.purge_records,
            last_purge_record = report.purge_record_seq,
            "provision records purged"
        );
        Ok(report)
    }

    /// One step of a purge: verifies the records after `from` (the current
    /// cut and its hash) up to the first checkpoint covering `cut`, then
    /// deletes them up to `cut` with the purge record that says so.
    /// Answers the purge record's sequence number and the new cut's hash.
    async fn purge_step(
        &self,
        from: (u64, Hash),
        cut: u64,
        sealed: u64,
        before: &str,
        actor: &str,
    ) -> Result<(u64, Hash), BrokerError> {
        let covered = db::first_checkpoint_from(&self.pools, cut)
            .await?
            .unwrap_or(sealed);
        let walk = verify::walk(
            &self.pools,
            self.trusted(),
            WalkPlan {
                start_seq: from.0,
                start_hash: from.1,
                end_seq: covered,
                whole_store: false,
                capture: Some(cut),
                progress: None,
            },
        )
        .await?;
        let cut_hash = match (walk.verdict, walk.captured) {
            (Verdict::Intact(_), Some(hash)) => hash,
            (Verdict::Broken(f), _) => {
                return Err(BrokerError::refused(
                    ErrorCode::Internal,
                    format!("refusing to purge: provision records fail verification at {f}"),
                ))
            }
            (Verdict::Intact(_), None) => {
                return Err(BrokerError::refused(
                    ErrorCode::Internal,
                    format!("refusing to purge: record {cut} was not found"),
                ))
            }
        };
        let first_seq = from.0 + 1;
        let count = cut - from.0;
        let draft = RecordDraft::new(
            format!("purge-{}", hex::encode(rand::random::<[u8; 8]>())),
            system_org()?,
            Outcome::Purge {
                before: before.to_string(),
                first_seq,
                cut_seq: cut,
                count,
                cut_hash: hex::encode(cut_hash),
                actor: actor.to_string(),
            },
        );
        let seq = self
            .delete_with_record(
                Deletes::Records {
                    expected_cut: from.0,
                    cut_seq: cut,
                    cut_hash,
                },
                draft,
            )
            .await
            .map_err(|e| {
                BrokerError::refused(ErrorCode::Unavailable, format!("purge failed: {e}"))
            })?;
        tracing::debug!(
            first_seq,
            cut_seq = cut,
            count,
            purge_record = seq,
            "purge step"
        );
        Ok((seq, cut_hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_decides_a_period_shorter_than_the_law() {
        assert_eq!(retention_years(7, None).ok(), Some(7));
        assert_eq!(retention_years(7, Some(10)).ok(), Some(10));
        assert!(retention_years(7, Some(6)).is_err());
        assert!(retention_years(7, Some(0)).is_err());
        // Configured below the legal period: the configuration says so.
        assert_eq!(retention_years(5, None).ok(), Some(5));
        assert_eq!(retention_years(5, Some(5)).ok(), Some(5));
        assert!(retention_years(5, Some(4)).is_err());
        assert!(retention_years(0, None).is_err());
    }
}
