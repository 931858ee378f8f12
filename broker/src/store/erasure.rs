//! The erasure of personal data past their own retention periods
//! ([`crate::retention`], R15): the cut-offs, a pure function of the clock
//! and `[retention]`, and the statements that count and delete what is due
//! (the same text on both backends; the records writer runs the deletion
//! in the transaction of its `erasure` record, [`erase_in_tx`]).

use time::OffsetDateTime;

use crate::config::RetentionConfig;
use crate::error::BrokerError;
use crate::store::Pools;

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
    /// The day of a loss is a Japanese day, so the years are counted back
    /// from today in Japan (in UTC the day would change at 09:00 JST, and a
    /// copy be kept up to nine hours past its period).
    pub fn at(now: OffsetDateTime, config: &RetentionConfig) -> Cutoffs {
        let now = now.to_offset(time::UtcOffset::UTC);
        let confirmed = now - time::Duration::days(i64::from(config.identity_confirmation_days));
        let today = kakehashi_interfaces::datetime::japanese_day(now);
        let lost = years_before(today, config.copies_after_loss_years).unwrap_or(time::Date::MIN);
        Cutoffs {
            confirmed_before: crate::store::timestamp(confirmed),
            lost_before: kakehashi_interfaces::datetime::format_date(lost),
        }
    }
}

/// The persons whose period after loss of eligibility has passed.
const DUE_PERSONS: &str =
    "SELECT id FROM persons WHERE eligibility_lost_on IS NOT NULL AND eligibility_lost_on < $1";

/// The statements of one erasure: what is due at the cut-offs (`$1` the
/// loss cut-off, `$2` the confirmation cut-off), counted and deleted.
/// Children go first, so the foreign keys hold on both backends.
pub struct ErasureSql {
    /// Counts facts, persons, copies and codes due, in one statement.
    pub count: String,
    /// Deletes the copies of the persons due, and those of linking codes
    /// whose number no insurer keeps, last linked before the confirmation
    /// cut-off.
    pub copies: String,
    /// Deletes facts confirmed before the cut-off and those of persons due.
    pub facts: String,
    /// Deletes the codes that go with the persons due, and the linking
    /// codes whose number no insurer keeps, last linked before the
    /// confirmation cut-off.
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
        // Also a linking org's code whose number no insurer keeps, last
        // linked before the confirmation cut-off: it answers nothing (every
        // flow has the insurer on one side) and is identity data.
        let due_codes = format!(
            "SELECT org_id, code FROM person_codes c
             WHERE c.person_id IN ({DUE_PERSONS})
                OR (c.person_id IS NULL
                    AND c.number_hash IN (SELECT number_hash FROM persons WHERE id IN ({DUE_PERSONS}))
                    AND NOT EXISTS (SELECT 1 FROM persons k
                                    WHERE k.number_hash = c.number_hash AND k.id NOT IN ({DUE_PERSONS})))
             UNION
             SELECT org_id, code FROM person_codes c
             WHERE c.person_id IS NULL AND c.linked_at < $2 AND c.created_at < $2
               AND NOT EXISTS (SELECT 1 FROM persons k WHERE k.number_hash = c.number_hash)"
        );
        let facts_due = format!("confirmed_at < $2 OR person_id IN ({DUE_PERSONS})");
        ErasureSql {
            count: format!(
                "SELECT (SELECT COUNT(*) FROM person_facts WHERE {facts_due}),
                        (SELECT COUNT(*) FROM persons WHERE id IN ({DUE_PERSONS})),
                        (SELECT COUNT(*) FROM copies WHERE (provider, person_code) IN ({due_codes})),
                        (SELECT COUNT(*) FROM ({due_codes}) due)"
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

/// What an erasure deletes: (identity confirmations, persons, copies,
/// codes).
pub type Counts = (u64, u64, u64, u64);

/// Counts what is due at `cutoffs`.
pub async fn count_due(pools: &Pools, cutoffs: &Cutoffs) -> Result<Counts, BrokerError> {
    let sql = ErasureSql::new();
    let (facts, persons, copies, codes): (i64, i64, i64, i64) =
        crate::on_pool!(pools, write, |pool| {
            sqlx::query_as(&sql.count)
                .bind(&cutoffs.lost_before)
                .bind(&cutoffs.confirmed_before)
                .fetch_one(pool)
                .await?
        });
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok((n(facts), n(persons), n(copies), n(codes)))
}

/// Deletes what is due at `$cutoffs` inside the transaction `$tx` (used as
/// `&mut *tx`) and evaluates to the [`Counts`] (identity confirmations,
/// persons, copies, codes). A macro so each backend's transaction type expands
/// its own copy; the records writer runs it with the `erasure` record.
macro_rules! erase_in_tx {
    ($tx:expr, $cutoffs:expr) => {{
        let sql = $crate::store::erasure::ErasureSql::new();
        let cutoffs: &$crate::store::erasure::Cutoffs = $cutoffs;
        let copies = sqlx::query(&sql.copies)
            .bind(&cutoffs.lost_before)
            .bind(&cutoffs.confirmed_before)
            .execute($tx)
            .await?
            .rows_affected();
        let facts = sqlx::query(&sql.facts)
            .bind(&cutoffs.lost_before)
            .bind(&cutoffs.confirmed_before)
            .execute($tx)
            .await?
            .rows_affected();
        let codes = sqlx::query(&sql.codes)
            .bind(&cutoffs.lost_before)
            .bind(&cutoffs.confirmed_before)
            .execute($tx)
            .await?
            .rows_affected();
        let persons = sqlx::query(&sql.persons)
            .bind(&cutoffs.lost_before)
            .execute($tx)
            .await?
            .rows_affected();
        (facts, persons, copies, codes)
    }};
}
pub(crate) use erase_in_tx;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetentionConfig;
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
    fn the_years_after_a_loss_are_counted_from_the_day_in_japan() {
        // 08:00 in Japan on the 24th is still the 23rd in UTC.
        let c = Cutoffs::at(
            datetime!(2026-11-24 08:00 +09:00),
            &RetentionConfig::default(),
        );
        assert_eq!(c.lost_before, "2021-11-24");
        assert_eq!(c.confirmed_before, "2025-11-23T23:00:00.000000Z");
        let c = Cutoffs::at(
            datetime!(2026-11-23 23:59 +09:00),
            &RetentionConfig::default(),
        );
        assert_eq!(c.lost_before, "2021-11-23");
    }
}
