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
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::error::BrokerError;
use crate::records::{Deletes, RecordDraft, RecordLog};
use crate::store::Pools;

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

/// The same day `years` years before `day`; 29 February falls back to the
/// 28th, so nothing is kept longer than its period. `None` out of range.
pub fn years_before(day: time::Date, years: u32) -> Option<time::Date> {
    let year = day
        .year()
        .saturating_sub(i32::try_from(years).unwrap_or(i32::MAX));
    day.replace_year(year)
        .or_else(|_| day.replace_day(28).and_then(|d| d.replace_year(year)))
        .ok()
}

/// What is due at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutoffs {
    /// Facts confirmed before this instant are due (fixed-width RFC 3339).
    pub confirmed_before: String,
    /// Persons who lost eligibility before this day are due (`YYYY-MM-DD`).
    pub lost_before: String,
}

impl Cutoffs {
    /// The cut-offs at `now`. A loss on 29 February counts from 28 February
    /// in a year without one, so nothing is kept longer than the period.
    pub fn at(now: OffsetDateTime, config: &RetentionConfig) -> Cutoffs {
        let now = now.to_offset(time::UtcOffset::UTC);
        let confirmed = now - time::Duration::days(i64::from(config.identity_confirmation_days));
        let lost =
            years_before(now.date(), config.copies_after_loss_years).unwrap_or(time::Date::MIN);
        Cutoffs {
            confirmed_before: crate::store::timestamp(confirmed),
            lost_before: kakehashi_interfaces::datetime::format_date(lost),
        }
    }
}

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
    /// The `erasure` provision record, when anything was erased.
    pub record_seq: Option<u64>,
}

/// The persons whose period after loss of eligibility has passed.
const DUE_PERSONS: &str =
    "SELECT id FROM persons WHERE eligibility_lost_on IS NOT NULL AND eligibility_lost_on < $1";

/// The statements of one erasure: what is due at the cut-offs (`$1` the
/// loss cut-off, `$2` the confirmation cut-off), counted and deleted.
/// Children go first, so the foreign keys hold on both backends.
pub struct ErasureSql {
    /// Counts facts, persons and copies due, in one statement.
    pub count: String,
    /// Deletes the copies of the persons due.
    pub copies: String,
    /// Deletes facts confirmed before the cut-off and those of persons due.
    pub facts: String,
    /// Deletes the codes that go with the persons due.
    pub codes: String,
    /// Deletes the persons due.
    pub persons: String,
}

impl ErasureSql {
    /// The statements.
    pub fn new() -> ErasureSql {
        // The codes that go with the persons due: each one's insurer code,
        // and a linking org's code for the number (it names the number, not
        // one insurer's person) once no insurer keeps a person with it.
        let due_codes = format!(
            "SELECT org_id, code FROM person_codes c
             WHERE c.person_id IN ({DUE_PERSONS})
                OR (c.person_id IS NULL
                    AND c.number_hash IN (SELECT number_hash FROM persons WHERE id IN ({DUE_PERSONS}))
                    AND NOT EXISTS (SELECT 1 FROM persons k
                                    WHERE k.number_hash = c.number_hash AND k.id NOT IN ({DUE_PERSONS})))"
        );
        let facts_due = format!("confirmed_at < $2 OR person_id IN ({DUE_PERSONS})");
        ErasureSql {
            count: format!(
                "SELECT (SELECT COUNT(*) FROM person_facts WHERE {facts_due}),
                        (SELECT COUNT(*) FROM persons WHERE id IN ({DUE_PERSONS})),
                        (SELECT COUNT(*) FROM copies WHERE (provider, person_code) IN ({due_codes}))"
            ),
            copies: format!("DELETE FROM copies WHERE (provider, person_code) IN ({due_codes})"),
            facts: format!("DELETE FROM person_facts WHERE {facts_due}"),
            codes: format!("DELETE FROM person_codes WHERE (org_id, code) IN ({due_codes})"),
            persons: format!("DELETE FROM persons WHERE id IN ({DUE_PERSONS})"),
        }
    }
}

impl Default for ErasureSql {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts what is due at `cutoffs`: (identity confirmations, persons, copies).
pub async fn count_due(pools: &Pools, cutoffs: &Cutoffs) -> Result<(u64, u64, u64), BrokerError> {
    let sql = ErasureSql::new();
    let (facts, persons, copies): (i64, i64, i64) = crate::on_pool!(pools, write, |pool| {
        sqlx::query_as(&sql.count)
            .bind(&cutoffs.lost_before)
            .bind(&cutoffs.confirmed_before)
            .fetch_one(pool)
            .await?
    });
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok((n(facts), n(persons), n(copies)))
}

/// Deletes what is due at `$cutoffs` inside the transaction `$tx` (used as
/// `&mut *tx`) and evaluates to the counts (identity confirmations,
/// persons, copies). A macro so each backend's transaction type expands
/// its own copy; the records writer runs it with the `erasure` record.
macro_rules! erase_in_tx {
    ($tx:expr, $cutoffs:expr) => {{
        let sql = $crate::retention::ErasureSql::new();
        let cutoffs: &$crate::retention::Cutoffs = $cutoffs;
        let copies = sqlx::query(&sql.copies)
            .bind(&cutoffs.lost_before)
            .execute($tx)
            .await?
            .rows_affected();
        let facts = sqlx::query(&sql.facts)
            .bind(&cutoffs.lost_before)
            .bind(&cutoffs.confirmed_before)
            .execute($tx)
            .await?
            .rows_affected();
        sqlx::query(&sql.codes)
            .bind(&cutoffs.lost_before)
            .execute($tx)
            .await?;
        let persons = sqlx::query(&sql.persons)
            .bind(&cutoffs.lost_before)
            .execute($tx)
            .await?
            .rows_affected();
        (facts, persons, copies)
    }};
}
pub(crate) use erase_in_tx;

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
        let (identity_confirmations, persons, copies) = counts;
        let mut report = ErasureReport {
            confirmed_before: cutoffs.confirmed_before.clone(),
            lost_before: cutoffs.lost_before.clone(),
            identity_confirmations,
            persons,
            copies,
            record_seq: None,
        };
        if identity_confirmations + persons + copies == 0 {
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
                    record = seq,
                    "personal data erased at the end of their retention periods"
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn cutoffs_follow_the_periods() {
        let c = Cutoffs::at(datetime!(2026-11-23 10:00 UTC), &RetentionConfig::default());
        assert_eq!(c.confirmed_before, "2025-11-23T10:00:00.000000Z");
        assert_eq!(c.lost_before, "2021-11-23");
    }

    #[test]
    fn a_leap_day_counts_back_to_the_28th() {
        let c = Cutoffs::at(datetime!(2028-02-29 00:00 UTC), &RetentionConfig::default());
        assert_eq!(c.lost_before, "2023-02-28");
        // 2027-03-01 is 365 days before; the leap day makes it so.
        assert_eq!(c.confirmed_before, "2027-03-01T00:00:00.000000Z");
    }

    #[test]
    fn local_time_is_taken_as_utc() {
        let c = Cutoffs::at(
            datetime!(2026-11-24 08:00 +09:00),
            &RetentionConfig::default(),
        );
        assert_eq!(c.lost_before, "2021-11-23");
        assert_eq!(c.confirmed_before, "2025-11-23T23:00:00.000000Z");
    }
}
