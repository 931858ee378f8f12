//! Dates and instants on the wire.
//!
//! * Calendar dates (`birth_date`, `valid_from`, `valid_until`) are
//!   `time::Date` carried as `YYYY-MM-DD`, years 0001–9999, strictly parsed.
//! * Instants (`issued_at`, `expires_at`) are `time::OffsetDateTime` carried
//!   as RFC 3339 text. The broker always emits UTC (`Z`) with whole seconds.

use crate::InvalidInput;
use serde::{Deserialize, Deserializer, Serializer};
use time::{Date, Month, OffsetDateTime, UtcOffset};

/// Japan Standard Time: UTC+9, no daylight saving.
pub const JST: UtcOffset = time::macros::offset!(+9);

/// The day `now` falls on in Japan (UTC+9): dates such as a flow's days in
/// force or a loss of eligibility are days of the Japanese calendar.
pub fn japanese_day(now: OffsetDateTime) -> Date {
    now.checked_to_offset(JST)
        .map_or(now.date(), |jst| jst.date())
}

/// Parses `YYYY-MM-DD` strictly: exactly ten characters, a real calendar
/// date, year 0001–9999 (no signs, no week dates, no trailing text).
pub fn parse_date(s: &str) -> Result<Date, InvalidInput> {
    let bad = || InvalidInput::new("date", "must be a calendar date YYYY-MM-DD");
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let (year, month, day) = match (num(0..4), num(5..7), num(8..10)) {
        (Some(y), Some(m), Some(d)) if y >= 1 => (y, m, d),
        _ => return Err(bad()),
    };
    let month = u8::try_from(month)
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or_else(bad)?;
    let day = u8::try_from(day).map_err(|_| bad())?;
    let year = i32::try_from(year).map_err(|_| bad())?;
    Date::from_calendar_date(year, month, day).map_err(|_| bad())
}

/// Formats a date as `YYYY-MM-DD`.
pub fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Formats an instant in the canonical form used in signed bytes:
/// UTC, whole seconds, `YYYY-MM-DDTHH:MM:SSZ`. Sub-second digits are dropped.
pub fn format_canonical(t: OffsetDateTime) -> String {
    let t = in_utc(t);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_date(t.date()),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `t` in UTC with the sub-second part removed: the form every instant the
/// broker signs or sends takes.
pub fn canonical(t: OffsetDateTime) -> OffsetDateTime {
    let t = in_utc(t);
    t.replace_nanosecond(0).unwrap_or(t)
}

/// `t` in UTC; an instant whose UTC year would pass ±9999 (only an offset
/// at the very end of the range does that) is clamped to that end instead
/// of panicking.
fn in_utc(t: OffsetDateTime) -> OffsetDateTime {
    match t.checked_to_offset(UtcOffset::UTC) {
        Some(utc) => utc,
        None if t.year() > 0 => time::PrimitiveDateTime::MAX.assume_utc(),
        None => time::PrimitiveDateTime::MIN.assume_utc(),
    }
}

/// `#[serde(with = "crate::datetime::date")]` for `time::Date` as `YYYY-MM-DD`.
pub mod date {
    use super::*;

    /// Serializes as `YYYY-MM-DD`.
    pub fn serialize<S: Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_date(*d))
    }

    /// Deserializes from `YYYY-MM-DD`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let s = String::deserialize(d)?;
        parse_date(&s).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "crate::datetime::date_option")]` for `Option<time::Date>`.
pub mod date_option {
    use super::*;

    /// Serializes `Some` as `YYYY-MM-DD` and `None` as null.
    pub fn serialize<S: Serializer>(d: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_date(*d)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes `YYYY-MM-DD` or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| parse_date(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn dates() {
        assert_eq!(parse_date("2024-02-29"), Ok(date!(2024 - 02 - 29)));
        assert!(parse_date("2023-02-29").is_err());
        assert!(parse_date("2023-13-01").is_err());
        assert!(parse_date("2023-00-01").is_err());
        assert!(parse_date("0000-01-01").is_err());
        assert!(parse_date("2023-1-01").is_err());
        assert!(parse_date("2023-01-01T00:00:00Z").is_err());
        assert!(parse_date("+023-01-01").is_err());
        assert!(parse_date("２０２３-01-01").is_err());
        assert_eq!(format_date(date!(0987 - 03 - 04)), "0987-03-04");
    }

    #[test]
    fn canonical_instants() {
        let t = datetime!(2025-04-01 09:30:15.75 +09:00);
        assert_eq!(format_canonical(t), "2025-04-01T00:30:15Z");
        assert_eq!(canonical(t), datetime!(2025-04-01 00:30:15 UTC));
        // Past the last representable UTC instant: clamped, not a panic.
        let end = datetime!(9999-12-31 23:30:00 -01:00);
        assert_eq!(format_canonical(end), "9999-12-31T23:59:59Z");
    }
}
