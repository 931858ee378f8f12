//! Auditor search and downloads (R16): records by period, org, flow,
//! outcome and — for the org's own code only — person, newest first, a page
//! at a time; and the same selection as a verifiable export held in memory
//! or written to the caller's files, for the console to serve.
//!
//! Rows are [`ExportRow`]s: the export's view of a record, which carries no
//! person code of any org (R4, R16: 機関別符号等を除いた範囲). The SQL never
//! selects the code columns; a person code given as a filter selects records
//! only through the code column of the viewer's own org.
//!
//! # Plans
//!
//! Pages are keyset-paged by sequence number (`before_seq`), so a page costs
//! the same at the millionth record as at the first. Every condition is
//! answered by an index (migration `0106_record_search.sql`); nothing scans
//! the records:
//! - The newest page walks the primary key backwards.
//! - Org, flow and outcome each have an index of `(column, seq)`; an org is
//!   requester or provider, so it is two walks merged. With several of them
//!   SQLite walks the index with the fewest entries in range (counted up to
//!   [`PROBE_CAP`] each, with `INDEXED BY` so the choice is ours); PostgreSQL
//!   chooses from its statistics.
//! - A person code: SQLite's side index (`store/sqlite/person_index.rs`) and the records
//!   past its mark; on PostgreSQL the code indexes of migration 0100.
//! - A period: on PostgreSQL the month partitions it touches (records are
//!   partitioned by the month of the same timestamp, so pruning is exact);
//!   on SQLite, the lowest and highest sequence numbers recorded on each day
//!   of the period (an index of `(day, seq)`, one probe per day that has
//!   records) bound the walk. Order stays by sequence, never by time (R23):
//!   the bounds cover a record whose clock stepped back too, and the exact
//!   time condition is checked on every row. Where a period starts or ends
//!   inside a day (a month on PostgreSQL), the first and last pages also
//!   step over that day's (month's) records outside it.
//!
//! [`RecordLog::explain_search`] returns the plans of the statements a
//! search runs (`EXPLAIN QUERY PLAN` / `EXPLAIN`).

use std::io::Write;

use kakehashi_interfaces::audit::{ExportFormat, ExportRow};
use kakehashi_interfaces::{ErrorCode, OrgId};
use serde::Serialize;
use sqlx::FromRow;

use super::db::{self, to_i64};
use super::export::{format_name, Caps, Matcher, Progress};
use super::RecordLog;
use crate::error::BrokerError;
use crate::store::backend::{SearchDialect, Stmt};
use crate::store::FromBackendRow;

/// The most rows one page holds.
pub const MAX_PAGE_SIZE: usize = 200;

/// Rows a download may hold unless the console sets another limit.
pub const DEFAULT_MAX_EXPORT_ROWS: u64 = 1_000_000;

/// Bytes of a download's data file and bundle together unless the console
/// sets another limit.
pub const DEFAULT_MAX_EXPORT_BYTES: u64 = 512 * 1024 * 1024;

/// The most index entries SQLite counts for one candidate index when it
/// chooses which to walk (index entries only, no rows: about 5 ms each).
pub const PROBE_CAP: i64 = 50_000;

/// A walk over more index entries than this (SQLite) first gathers the
/// next candidate's entries, when all of them were counted, and reads
/// only the rows found in both: below it, reading each row is cheaper.
const SEMI_JOIN_FROM: i64 = 2_000;

/// Outcome names a search accepts (the table in `kakehashi_interfaces::audit`).
pub const OUTCOME_NAMES: [&str; 9] = [
    "provided", "pending", "approved", "rejected", "denied", "expired", "export", "purge",
    "erasure",
];

/// The longest flow id, outcome or person code a filter accepts.
const MAX_TEXT: usize = 4096;

/// Matching sequence numbers fetched per statement when counting.
const COUNT_CHUNK: i64 = 10_000;

/// Sequence numbers from the person index fetched per statement.
const IN_CHUNK: usize = 256;

/// Which records to find. Every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchFilter {
    /// Recorded at or after this instant (UTC).
    pub from: Option<time::OffsetDateTime>,
    /// Recorded before this instant (UTC).
    pub until: Option<time::OffsetDateTime>,
    /// The requester or the provider is this org.
    pub org: Option<OrgId>,
    /// Flow id of the flow list.
    pub flow: Option<String>,
    /// Outcome name, one of [`OUTCOME_NAMES`].
    pub outcome: Option<String>,
    /// The viewer org's own person code: matches records where the viewer
    /// org took part under this code, never another org's code column.
    pub person: Option<String>,
}

impl SearchFilter {
    /// The filter in words, without the person code (for the export's
    /// bundle header and its provision record).
    pub fn describe(&self, viewer_org: &OrgId) -> String {
        let mut parts = Vec::new();
        if let Some(f) = self.from {
            parts.push(format!("from={}", crate::store::timestamp(f)));
        }
        if let Some(u) = self.until {
            parts.push(format!("to={}", crate::store::timestamp(u)));
        }
        if let Some(o) = &self.org {
            parts.push(format!("org={o}"));
        }
        if let Some(f) = &self.flow {
            parts.push(format!("flow={f}"));
        }
        if let Some(o) = &self.outcome {
            parts.push(format!("outcome={o}"));
        }
        if self.person.is_some() {
            parts.push(format!("person=(given, code of {viewer_org})"));
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Which page: the `size` newest matching records with a sequence number
/// below `before_seq` (all of them when `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Only records with a lower sequence number; the previous page's
    /// [`SearchPage::next_before_seq`].
    pub before_seq: Option<u64>,
    /// Rows on the page, 1 to [`MAX_PAGE_SIZE`].
    pub size: usize,
}

impl PageRequest {
    /// The newest page.
    pub fn newest(size: usize) -> Self {
        Self {
            before_seq: None,
            size,
        }
    }

    /// The page after one that ended at `before_seq`.
    pub fn before(before_seq: u64, size: usize) -> Self {
        Self {
            before_seq: Some(before_seq),
            size,
        }
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::newest(50)
    }
}

/// One page of a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchPage {
    /// Matching records, highest sequence number first, without person codes.
    pub rows: Vec<ExportRow>,
    /// `before_seq` of the next page; `None` when this is the last.
    pub next_before_seq: Option<u64>,
}

/// One statement a search ran and its plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExplainedStatement {
    /// The SQL, with `$N` placeholders.
    pub sql: String,
    /// The plan, one line per node (`EXPLAIN QUERY PLAN` on SQLite,
    /// `EXPLAIN` on PostgreSQL).
    pub plan: Vec<String>,
}

/// Bounds on one download, so a browser's export cannot exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportLimits {
    /// Refuse a selection of more records than this.
    pub max_rows: u64,
    /// Stop when the data file and bundle together grow past this many bytes
    /// (the bundle also lists records between the matching ones).
    pub max_bytes: u64,
}

impl Default for ExportLimits {
    fn default() -> Self {
        Self {
            max_rows: DEFAULT_MAX_EXPORT_ROWS,
            max_bytes: DEFAULT_MAX_EXPORT_BYTES,
        }
    }
}

/// A download to make for an auditor.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    /// The auditor's org: a person code in the filter is this org's code.
    pub viewer_org: OrgId,
    /// Which records.
    pub filter: SearchFilter,
    /// CSV (UTF-8 with BOM) or JSON Lines.
    pub format: ExportFormat,
    /// Who exports: the auditor's user id (recorded).
    pub actor: String,
    /// Bounds on its size.
    pub limits: ExportLimits,
}

/// What a download wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadSummary {
    /// Records in the data file.
    pub rows: u64,
    /// Segments in the bundle.
    pub segments: u64,
    /// Records up to this sequence were considered (a signed checkpoint).
    pub sealed_seq: u64,
    /// Sequence of the provision record of this export.
    pub export_record_seq: u64,
    /// A name to save the data file under (`records-20260401T090000Z.csv`).
    pub data_file_name: String,
    /// The bundle's name beside it, where `kakehashi audit verify DATA`
    /// looks for it (`DATA.bundle.jsonl`).
    pub bundle_file_name: String,
}

/// A download held in memory: the data file and the bundle that verifies it.
#[derive(Debug, Clone)]
pub struct Download {
    /// The data file (CSV starts with the UTF-8 byte order mark).
    pub data: Vec<u8>,
    /// The verification bundle (JSON Lines).
    pub bundle: Vec<u8>,
    /// Counts and names.
    pub summary: DownloadSummary,
}

/// A filter checked and turned into the values the SQL binds.
struct Prepared {
    viewer: String,
    from: Option<String>,
    until: Option<String>,
    /// First and last UTC day of the period (`YYYY-MM-DD`), SQLite's bounds.
    first_day: Option<String>,
    last_day: Option<String>,
    /// First and last month of the period (`yyyymm`), PostgreSQL's partitions.
    first_month: Option<i32>,
    last_month: Option<i32>,
    org: Option<String>,
    flow: Option<String>,
    outcome: Option<String>,
    person: Option<String>,
}

fn invalid(message: String) -> BrokerError {
    BrokerError::refused(ErrorCode::InvalidInput, message)
}

fn checked_text(what: &str, value: &Option<String>) -> Result<Option<String>, BrokerError> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() || v.len() > MAX_TEXT || v.chars().any(char::is_control) => {
            Err(invalid(format!(
                "{what} が正しくありません（1〜{MAX_TEXT} バイト、制御文字なし） / \
                 {what} must be 1 to {MAX_TEXT} bytes without control characters"
            )))
        }
        Some(v) => Ok(Some(v.clone())),
    }
}

fn checked_instant(what: &str, at: Option<time::OffsetDateTime>) -> Result<(), BrokerError> {
    // Stored times are fixed-width text with a four-digit year; outside
    // these years text order would not be time order.
    let Some(at) = at else { return Ok(()) };
    match at.checked_to_offset(time::UtcOffset::UTC) {
        Some(utc) if (1970..=9999).contains(&utc.year()) => Ok(()),
        _ => Err(invalid(format!(
            "{what} の年は 1970〜9999 にしてください / the year of {what} must be 1970 to 9999"
        ))),
    }
}

impl Prepared {
    fn new(viewer: &OrgId, f: &SearchFilter) -> Result<Prepared, BrokerError> {
        checked_instant("from", f.from)?;
        checked_instant("until", f.until)?;
        if let (Some(from), Some(until)) = (f.from, f.until) {
            if from >= until {
                return Err(invalid(
                    "期間の開始は終了より前にしてください / the period must start before it ends"
                        .into(),
                ));
            }
        }
        let outcome = checked_text("outcome", &f.outcome)?;
        if let Some(o) = &outcome {
            if !OUTCOME_NAMES.contains(&o.as_str()) {
                return Err(invalid(format!(
                    "結果 {o:?} はありません（{}） / unknown outcome {o:?} (one of {})",
                    OUTCOME_NAMES.join(", "),
                    OUTCOME_NAMES.join(", ")
                )));
            }
        }
        // The last instant before `until` decides its day and month: a
        // period ending at midnight does not reach into the next day.
        let last = f.until.map(|u| u - time::Duration::microseconds(1));
        let day = |t: time::OffsetDateTime| {
            let mut s = crate::store::timestamp(t);
            s.truncate(10);
            s
        };
        Ok(Prepared {
            viewer: viewer.as_str().to_string(),
            from: f.from.map(crate::store::timestamp),
            until: f.until.map(crate::store::timestamp),
            first_day: f.from.map(day),
            last_day: last.map(day),
            first_month: f.from.map(db::month_key),
            last_month: last.map(db::month_key),
            org: f.org.as_ref().map(|o| o.as_str().to_string()),
            flow: checked_text("flow", &f.flow)?,
            outcome,
            person: checked_text("person", &f.person)?,
        })
    }

    fn has_period(&self) -> bool {
        self.from.is_some() || self.until.is_some()
    }

    /// The export's matcher for the same selection.
    fn matcher(&self) -> Matcher {
        Matcher {
            from: self.from.clone(),
            to: self.until.clone(),
            org: self.org.clone(),
            flow: self.flow.clone(),
            outcome: self.outcome.clone(),
            person: self.person.clone(),
            person_org: self.person.as_ref().map(|_| self.viewer.clone()),
        }
    }
}

/// Rows a search reads: never a person code or its salt.
trait Found: Send + Unpin + FromBackendRow {
    const COLUMNS: &'static str;
    fn seq(&self) -> i64;
}

#[derive(Debug, FromRow)]
struct FoundRow {
    seq: i64,
    recorded_at: String,
    query_id: String,
    permit_id: Option<String>,
    flow_id: Option<String>,
    flow_list_version: Option<i64>,
    procedure_code: Option<String>,
    requester: String,
    provider: Option<String>,
    items: String,
    outcome: String,
    reason: Option<String>,
    approver: Option<String>,
    detail: Option<String>,
}

impl Found for FoundRow {
    const COLUMNS: &'static str = "seq, recorded_at, query_id, permit_id, flow_id, \
         flow_list_version, procedure_code, requester, provider, items, outcome, reason, \
         approver, detail";
    fn seq(&self) -> i64 {
        self.seq
    }
}

impl FoundRow {
    /// The export's view of the row, as stored (a malformed detail is shown
    /// as its text; `records verify` is where damage is judged).
    fn into_export_row(self) -> ExportRow {
        ExportRow {
            seq: u64::try_from(self.seq).unwrap_or(0),
            at: self.recorded_at,
            query_id: self.query_id,
            permit_id: self.permit_id,
            flow_id: self.flow_id,
            flow_list_version: self.flow_list_version.and_then(|v| u64::try_from(v).ok()),
            procedure: self.procedure_code,
            requester: self.requester,
            provider: self.provider,
            items: db::split_items(&self.items),
            outcome: self.outcome,
            reason: self.reason,
            approver: self.approver,
            detail: self
                .detail
                .map(|d| serde_json::from_str(&d).unwrap_or(serde_json::Value::String(d))),
        }
    }
}

#[derive(Debug, FromRow)]
struct FoundSeq {
    seq: i64,
}

impl Found for FoundSeq {
    const COLUMNS: &'static str = "seq";
    fn seq(&self) -> i64 {
        self.seq
    }
}

/// The condition a walk starts from: what its index is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    /// The primary key alone.
    Seq,
    Requester,
    Provider,
    Flow,
    Outcome,
    /// The viewer org as requester under the person code.
    PersonRequester,
    /// The viewer org as provider under the person code.
    PersonProvider,
}

impl Lead {
    /// The index the walk follows (migration 0106); `None`: the primary key.
    fn index(self) -> Option<&'static str> {
        match self {
            Lead::Seq => None,
            Lead::Requester | Lead::PersonRequester => Some("records_search_requester"),
            Lead::Provider | Lead::PersonProvider => Some("records_search_provider"),
            Lead::Flow => Some("records_search_flow"),
            Lead::Outcome => Some("records_search_outcome"),
        }
    }
}

/// Which walks answer a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Seq,
    Org,
    Flow,
    Outcome,
}

/// Runs a search's statements, keeping their plans when asked to.
struct Searcher<'a> {
    log: &'a RecordLog,
    dialect: SearchDialect,
    explained: Option<Vec<ExplainedStatement>>,
}

impl<'a> Searcher<'a> {
    fn new(log: &'a RecordLog) -> Self {
        Self {
            log,
            dialect: log.pools.backend().search_dialect(),
            explained: None,
        }
    }

    async fn run<T>(&mut self, st: &Stmt) -> Result<Vec<T>, BrokerError>
    where
        T: Send + Unpin + FromBackendRow,
    {
        if let Some(out) = self.explained.as_mut() {
            out.push(ExplainedStatement {
                sql: st.sql.clone(),
                plan: self.log.pools.backend().explain(st).await?,
            });
        }
        crate::store::fetch_all(&self.log.pools, st).await
    }

    /// The sequence range a selection can lie in, below `before`; `None`
    /// when nothing can match.
    async fn range(
        &mut self,
        p: &Prepared,
        before: Option<u64>,
    ) -> Result<Option<(i64, i64)>, BrokerError> {
        let mut lo = 0;
        let mut hi = match before {
            Some(b) => to_i64(b).saturating_sub(1),
            None => i64::MAX,
        };
        if p.has_period() {
            match self.day_bounds(p).await? {
                Some((l, u)) => {
                    lo = l;
                    hi = hi.min(u);
                }
                None => return Ok(None),
            }
        }
        Ok((lo <= hi && hi > 0).then_some((lo, hi)))
    }

    /// The lowest and highest sequence numbers recorded on the days of the
    /// period: one probe of `(day, seq)` per day that has records, found by
    /// skipping from day to day through the same index (migration 0106 on
    /// SQLite, 0113 on PostgreSQL, where each probe reads only the day's
    /// month partition).
    async fn day_bounds(&mut self, p: &Prepared) -> Result<Option<(i64, i64)>, BrokerError> {
        const DAY: &str = "substr(recorded_at, 1, 10)";
        let months_split = self.dialect.month_partitions;
        let ix = format!("records{}", self.dialect.hint(Some("records_search_day")));
        let first_day = p.first_day.as_deref().unwrap_or("0000-01-01");
        let last_day = p.last_day.as_deref().unwrap_or("9999-12-31");
        let mut st = Stmt::default();
        // PostgreSQL: the period's months for the skips, and each day's own
        // month for its two probes (pruned as the day is known).
        let months = |st: &mut Stmt| {
            if months_split {
                if let Some(m) = p.first_month {
                    st.push(" AND part_month >= ");
                    st.int(i64::from(m));
                }
                if let Some(m) = p.last_month {
                    st.push(" AND part_month <= ");
                    st.int(i64::from(m));
                }
            }
        };
        let day_month = if months_split {
            " AND part_month = CAST(substr(d.day, 1, 4) || substr(d.day, 6, 2) AS INTEGER)".into()
        } else {
            String::new()
        };
        st.push(&format!(
            "WITH RECURSIVE d(day) AS (SELECT MIN({DAY}) FROM {ix} WHERE {DAY} >= "
        ));
        st.text(first_day);
        st.push(&format!(" AND {DAY} <= "));
        st.text(last_day);
        months(&mut st);
        st.push(&format!(
            " UNION ALL SELECT (SELECT MIN({DAY}) FROM {ix} WHERE {DAY} > d.day AND {DAY} <= "
        ));
        st.text(last_day);
        months(&mut st);
        st.push(&format!(
            ") FROM d WHERE d.day IS NOT NULL) \
             SELECT MIN((SELECT MIN(seq) FROM {ix} WHERE {DAY} = d.day{day_month}"
        ));
        months(&mut st);
        st.push(&format!(
            ")), MAX((SELECT MAX(seq) FROM {ix} WHERE {DAY} = d.day{day_month}"
        ));
        months(&mut st);
        st.push(")) FROM d WHERE d.day IS NOT NULL");
        let rows: Vec<(Option<i64>, Option<i64>)> = self.run(&st).await?;
        Ok(match rows.first() {
            Some((Some(lo), Some(hi))) => Some((*lo, *hi)),
            _ => None,
        })
    }

    /// Up to `limit` matching rows with `lo <= seq <= hi`, highest first.
    async fn matching<T: Found>(
        &mut self,
        p: &Prepared,
        (lo, hi): (i64, i64),
        limit: i64,
    ) -> Result<Vec<T>, BrokerError> {
        if lo > hi || limit <= 0 {
            return Ok(Vec::new());
        }
        if p.person.is_some() {
            return self.person_matching(p, lo, hi, limit).await;
        }
        let (driver, semi) = self.choose(p, lo, hi).await?;
        let walk = Walk {
            dialect: self.dialect,
            columns: T::COLUMNS,
            lo,
            hi,
            limit,
            semi,
        };
        if let (false, Some(semi)) = (walk.dialect.names_indexes, semi) {
            return self.intersected(walk, p, [driver, semi]).await;
        }
        let mut st = Stmt::default();
        match (driver, semi) {
            (Driver::Org, _) => walk.union(&mut st, p, [Lead::Requester, Lead::Provider]),
            (Driver::Flow, _) => walk.branch(&mut st, p, Lead::Flow),
            (Driver::Outcome, _) => walk.branch(&mut st, p, Lead::Outcome),
            (Driver::Seq, _) => walk.branch(&mut st, p, Lead::Seq),
        }
        Ok(newest_first(self.run(&st).await?, limit))
    }

    /// Which index to walk, and which second index to check its entries
    /// against before rows are read. The candidates' entries in range are
    /// counted (up to [`PROBE_CAP`] each, from the indexes alone); when the
    /// fewest are still many and the next candidate's were all counted,
    /// both are read from their indexes first, so a combination that
    /// matches little reads few rows instead of every row of the walk:
    /// SQLite walks the smaller index testing each entry against the other's
    /// sequence numbers, PostgreSQL intersects the two (it would test each
    /// entry only after reading its row). Otherwise SQLite walks the
    /// candidate with the fewest entries, and PostgreSQL gets the org's two
    /// walks when there is an org, or one statement whose indexes its
    /// planner picks.
    async fn choose(
        &mut self,
        p: &Prepared,
        lo: i64,
        hi: i64,
    ) -> Result<(Driver, Option<Driver>), BrokerError> {
        let mut candidates = Vec::new();
        if p.org.is_some() {
            candidates.push(Driver::Org);
        }
        if p.flow.is_some() {
            candidates.push(Driver::Flow);
        }
        if p.outcome.is_some() {
            candidates.push(Driver::Outcome);
        }
        let first = candidates.first().copied().unwrap_or(Driver::Seq);
        if candidates.len() < 2 {
            return Ok((first, None));
        }
        let names_indexes = self.dialect.names_indexes;
        let dialect = self.dialect;
        let mut counted = Vec::new();
        for driver in candidates {
            let mut st = Stmt::default();
            let probe = |st: &mut Stmt, ix: &str, column: &str, value: &str| {
                let hint = dialect.hint(Some(ix));
                st.push(&format!(
                    "(SELECT COUNT(*) FROM (SELECT 1 FROM records{hint} WHERE {column} = "
                ));
                st.text(value);
                st.push(" AND seq >= ");
                st.int(lo);
                st.push(" AND seq <= ");
                st.int(hi);
                // In index order, so that no planner counts by a scan.
                st.push(" ORDER BY seq DESC LIMIT ");
                st.int(PROBE_CAP);
                st.push(") AS c)");
            };
            st.push("SELECT ");
            match (driver, &p.org, &p.flow, &p.outcome) {
                (Driver::Org, Some(org), _, _) => {
                    probe(&mut st, "records_search_requester", "requester", org);
                    st.push(" + ");
                    probe(&mut st, "records_search_provider", "provider", org);
                }
                (Driver::Flow, _, Some(flow), _) => {
                    probe(&mut st, "records_search_flow", "flow_id", flow)
                }
                (Driver::Outcome, _, _, Some(outcome)) => {
                    probe(&mut st, "records_search_outcome", "outcome", outcome)
                }
                _ => continue,
            }
            let count: Vec<(i64,)> = self.run(&st).await?;
            let count = count.first().map_or(0, |c| c.0);
            // Below the cap every entry was counted (the org's two counts
            // add up, so both were under it too).
            counted.push((count, count < PROBE_CAP, driver));
        }
        // Stable: equal counts keep the order org, flow, outcome.
        counted.sort_by_key(|c| c.0);
        let Some(&(lead_count, _, lead)) = counted.first() else {
            return Ok((Driver::Seq, None));
        };
        let semi = counted
            .get(1)
            .filter(|(_, complete, _)| *complete && lead_count > SEMI_JOIN_FROM)
            .map(|c| c.2);
        Ok(match semi {
            None if !names_indexes => (first, None),
            _ => (lead, semi),
        })
    }

    /// PostgreSQL: the sequence numbers in range of both candidates, each
    /// set read from its index alone (both were counted below the cap),
    /// intersected here; then the rows of the newest of them, a chunk at a
    /// time, with the whole filter checked on each. Its planner, given the
    /// intersection in SQL, still walks one index reading every row.
    async fn intersected<T: Found>(
        &mut self,
        walk: Walk<'static>,
        p: &Prepared,
        [first, second]: [Driver; 2],
    ) -> Result<Vec<T>, BrokerError> {
        let mut sets = Vec::new();
        for driver in [first, second] {
            let mut st = Stmt::default();
            walk.seqs(&mut st, p, driver);
            let found: Vec<FoundSeq> = self.run(&st).await?;
            sets.push(found.into_iter().map(|f| f.seq).collect::<Vec<_>>());
        }
        let other: std::collections::HashSet<i64> =
            sets.pop().unwrap_or_default().into_iter().collect();
        let mut both: Vec<i64> = sets
            .pop()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| other.contains(s))
            .collect();
        both.sort_unstable_by(|a, b| b.cmp(a));
        both.dedup();
        let rows = self.rows_by_seq(&both, walk.limit, walk.dialect, p).await?;
        Ok(newest_first(rows, walk.limit))
    }

    /// A person code: the records where the viewer org took part under it.
    /// SQLite's side index lists those up to its mark; the rest (everything
    /// on PostgreSQL) are found by two walks, the viewer as requester and as
    /// provider, each with the code of that side in its condition
    /// (PostgreSQL answers it from the code indexes of migration 0100).
    async fn person_matching<T: Found>(
        &mut self,
        p: &Prepared,
        lo: i64,
        hi: i64,
        limit: i64,
    ) -> Result<Vec<T>, BrokerError> {
        let code = p.person.as_deref().unwrap_or_default();
        let (mark, indexed) = match &self.log.person_index {
            Some(index) => {
                let found = index.lookup(&p.viewer, code).await?;
                (to_i64(found.mark), found.seqs)
            }
            _ => (0, Vec::new()),
        };
        let dialect = self.dialect;
        let mut rows: Vec<T> = Vec::new();
        let tail_lo = lo.max(mark.saturating_add(1));
        if tail_lo <= hi {
            let mut st = Stmt::default();
            let walk = Walk {
                dialect,
                columns: T::COLUMNS,
                lo: tail_lo,
                hi,
                limit,
                semi: None,
            };
            walk.union(&mut st, p, [Lead::PersonRequester, Lead::PersonProvider]);
            rows = newest_first(self.run(&st).await?, limit);
        }
        // Indexed records, newest first; each is checked against the whole
        // filter again (the index is derived data).
        let mut candidates = indexed
            .into_iter()
            .filter(|s| *s >= lo && *s <= hi.min(mark))
            .collect::<Vec<_>>();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        candidates.dedup();
        // The walks above may have found the page already.
        let want = limit
            .saturating_sub(i64::try_from(rows.len()).unwrap_or(i64::MAX))
            .max(0);
        rows.extend(self.rows_by_seq(&candidates, want, dialect, p).await?);
        Ok(newest_first(rows, limit))
    }

    /// The rows of `seqs` (newest first, found in an index) that match the
    /// whole filter, read `IN_CHUNK` at a time until `limit` are found (the
    /// indexes are derived data: each row is checked again).
    async fn rows_by_seq<T: Found>(
        &mut self,
        seqs: &[i64],
        limit: i64,
        dialect: SearchDialect,
        p: &Prepared,
    ) -> Result<Vec<T>, BrokerError> {
        let want = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut rows: Vec<T> = Vec::new();
        for chunk in seqs.chunks(IN_CHUNK) {
            if rows.len() >= want {
                break;
            }
            let mut st = Stmt::default();
            // Sequence numbers read from our own indexes as integers.
            let list = chunk
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            st.push(&format!(
                "SELECT {} FROM records WHERE seq IN ({list})",
                T::COLUMNS
            ));
            residual(&mut st, dialect, p, Lead::Seq);
            st.push(" ORDER BY seq DESC");
            rows.extend(self.run::<T>(&st).await?);
        }
        Ok(rows)
    }

    /// How many records match, counting no further than `cap + 1`.
    async fn count_upto(&mut self, p: &Prepared, cap: u64) -> Result<u64, BrokerError> {
        let Some((lo, mut hi)) = self.range(p, None).await? else {
            return Ok(0);
        };
        let mut counted = 0u64;
        loop {
            let want = i64::try_from(cap.saturating_sub(counted).saturating_add(1))
                .unwrap_or(i64::MAX)
                .min(COUNT_CHUNK);
            let found: Vec<FoundSeq> = self.matching(p, (lo, hi), want).await?;
            counted += found.len() as u64;
            match found.last() {
                Some(last) if (found.len() as i64) >= want && counted <= cap => {
                    hi = last.seq - 1;
                }
                _ => return Ok(counted),
            }
        }
    }
}

/// Sorts highest sequence first, drops repeats (a record whose requester
/// and provider are the same org comes from both walks) and keeps `limit`.
fn newest_first<T: Found>(mut rows: Vec<T>, limit: i64) -> Vec<T> {
    rows.sort_by_key(|r| std::cmp::Reverse(r.seq()));
    rows.dedup_by_key(|r| r.seq());
    rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    rows
}

/// How one statement walks the records: the bounds, the row limit and the
/// second index its entries are checked against, if any.
struct Walk<'c> {
    dialect: SearchDialect,
    columns: &'c str,
    lo: i64,
    hi: i64,
    limit: i64,
    /// Where the planner walks named indexes: the candidate whose sequence
    /// numbers in range are gathered
    /// from its own index first; an entry of the walk not among them is
    /// passed over without its row being read.
    semi: Option<Driver>,
}

impl Walk<'_> {
    /// One walk: `SELECT … FROM records [index] WHERE lead AND lo <= seq <=
    /// hi [AND +seq IN (second index)] AND the rest ORDER BY seq DESC LIMIT
    /// limit`.
    fn branch(&self, st: &mut Stmt, p: &Prepared, lead: Lead) {
        let hint = self.dialect.hint(lead.index());
        st.push(&format!(
            "SELECT {} FROM records{hint} WHERE ",
            self.columns
        ));
        let none = String::new();
        match lead {
            Lead::Seq => {}
            Lead::Requester | Lead::Provider => {
                st.push(if lead == Lead::Requester {
                    "requester = "
                } else {
                    "provider = "
                });
                st.text(p.org.as_ref().unwrap_or(&none));
                st.push(" AND ");
            }
            Lead::Flow => {
                st.push("flow_id = ");
                st.text(p.flow.as_ref().unwrap_or(&none));
                st.push(" AND ");
            }
            Lead::Outcome => {
                st.push("outcome = ");
                st.text(p.outcome.as_ref().unwrap_or(&none));
                st.push(" AND ");
            }
            Lead::PersonRequester | Lead::PersonProvider => {
                let side = if lead == Lead::PersonRequester {
                    "requester"
                } else {
                    "provider"
                };
                st.push(&format!("{side} = "));
                st.text(&p.viewer);
                st.push(&format!(" AND {side}_code = "));
                st.text(p.person.as_ref().unwrap_or(&none));
                st.push(" AND ");
            }
        }
        st.push("seq >= ");
        st.int(self.lo);
        st.push(" AND seq <= ");
        st.int(self.hi);
        if self.dialect.names_indexes {
            if let Some(semi) = self.semi {
                self.semi_join(st, p, semi);
            }
        }
        residual(st, self.dialect, p, lead);
        st.push(" ORDER BY seq DESC LIMIT ");
        st.int(self.limit);
    }

    /// ` AND +seq IN (…)`: the sequence numbers in range of the second
    /// candidate, read from its index alone. The `+` keeps SQLite walking
    /// the lead index in order and testing each entry's sequence number
    /// (which the index holds) before it reads the row.
    fn semi_join(&self, st: &mut Stmt, p: &Prepared, semi: Driver) {
        let one = |st: &mut Stmt, ix: &str, column: &str, value: &str| {
            st.push(&format!(
                "SELECT seq FROM records{} WHERE {column} = ",
                self.dialect.hint(Some(ix))
            ));
            st.text(value);
            st.push(" AND seq >= ");
            st.int(self.lo);
            st.push(" AND seq <= ");
            st.int(self.hi);
        };
        match (semi, &p.org, &p.flow, &p.outcome) {
            (Driver::Org, Some(org), _, _) => {
                st.push(" AND +seq IN (");
                one(st, "records_search_requester", "requester", org);
                st.push(" UNION ALL ");
                one(st, "records_search_provider", "provider", org);
                st.push(")");
            }
            (Driver::Flow, _, Some(flow), _) => {
                st.push(" AND +seq IN (");
                one(st, "records_search_flow", "flow_id", flow);
                st.push(")");
            }
            (Driver::Outcome, _, _, Some(outcome)) => {
                st.push(" AND +seq IN (");
                one(st, "records_search_outcome", "outcome", outcome);
                st.push(")");
            }
            _ => {}
        }
    }

    /// `SELECT seq …` of one candidate in range, from its index alone.
    fn seqs(&self, st: &mut Stmt, p: &Prepared, driver: Driver) {
        let one = |st: &mut Stmt, column: &str, value: &str| {
            st.push(&format!("(SELECT seq FROM records WHERE {column} = "));
            st.text(value);
            st.push(" AND seq >= ");
            st.int(self.lo);
            st.push(" AND seq <= ");
            st.int(self.hi);
            // In index order, so that no planner reads them by a scan.
            st.push(" ORDER BY seq DESC)");
        };
        match (driver, &p.org, &p.flow, &p.outcome) {
            (Driver::Org, Some(org), _, _) => {
                st.push("(");
                one(st, "requester", org);
                st.push(" UNION ");
                one(st, "provider", org);
                st.push(")");
            }
            (Driver::Flow, _, Some(flow), _) => one(st, "flow_id", flow),
            (Driver::Outcome, _, _, Some(outcome)) => one(st, "outcome", outcome),
            // Not a candidate of this search: nothing narrows.
            _ => {
                st.push("SELECT seq FROM records WHERE seq >= ");
                st.int(self.lo);
                st.push(" AND seq <= ");
                st.int(self.hi);
            }
        }
    }

    /// Two walks whose rows are merged afterwards ([`newest_first`]).
    fn union(&self, st: &mut Stmt, p: &Prepared, [first, second]: [Lead; 2]) {
        st.push("SELECT * FROM (");
        self.branch(st, p, first);
        st.push(") AS a UNION ALL SELECT * FROM (");
        self.branch(st, p, second);
        st.push(") AS b");
    }
}

/// The conditions the walk's own index does not answer, checked per row.
fn residual(st: &mut Stmt, dialect: SearchDialect, p: &Prepared, lead: Lead) {
    if let Some(from) = &p.from {
        st.push(" AND recorded_at >= ");
        st.text(from);
    }
    if let Some(until) = &p.until {
        st.push(" AND recorded_at < ");
        st.text(until);
    }
    if dialect.month_partitions {
        // Prunes the month partitions outside the period.
        if let Some(m) = p.first_month {
            st.push(" AND part_month >= ");
            st.int(i64::from(m));
        }
        if let Some(m) = p.last_month {
            st.push(" AND part_month <= ");
            st.int(i64::from(m));
        }
    }
    if let Some(org) = &p.org {
        if !matches!(lead, Lead::Requester | Lead::Provider) {
            st.push(" AND (requester = ");
            st.text(org);
            st.push(" OR provider = ");
            st.text(org);
            st.push(")");
        }
    }
    if let Some(flow) = &p.flow {
        if lead != Lead::Flow {
            st.push(" AND flow_id = ");
            st.text(flow);
        }
    }
    if let Some(outcome) = &p.outcome {
        if lead != Lead::Outcome {
            st.push(" AND outcome = ");
            st.text(outcome);
        }
    }
    if let Some(code) = &p.person {
        if !matches!(lead, Lead::PersonRequester | Lead::PersonProvider) {
            st.push(" AND ((requester = ");
            st.text(&p.viewer);
            st.push(" AND requester_code = ");
            st.text(code);
            st.push(") OR (provider = ");
            st.text(&p.viewer);
            st.push(" AND provider_code = ");
            st.text(code);
            st.push("))");
        }
    }
}

fn check_page(page: PageRequest) -> Result<(), BrokerError> {
    if page.size == 0 || page.size > MAX_PAGE_SIZE {
        return Err(invalid(format!(
            "1 ページの件数は 1〜{MAX_PAGE_SIZE} にしてください / page size must be 1 to {MAX_PAGE_SIZE}"
        )));
    }
    Ok(())
}

/// `records-YYYYMMDDTHHMMSSZ.csv` (or `.jsonl`) and its bundle's name.
fn file_names(format: ExportFormat) -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let stamp = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let data = format!(
        "records-{}.{}",
        now.format(&stamp).unwrap_or_else(|_| "export".into()),
        format_name(format)
    );
    let bundle = format!("{data}.bundle.jsonl");
    (data, bundle)
}

impl RecordLog {
    /// One page of records matching `filter`, newest (highest sequence)
    /// first, as the export shows them: without any org's person code. A
    /// person code in the filter is `viewer_org`'s own code and matches only
    /// where `viewer_org` took part under it. Which records an auditor may
    /// see at all (for instance only its own org's) is the caller's to put
    /// into `filter.org`.
    pub async fn search(
        &self,
        viewer_org: &OrgId,
        filter: &SearchFilter,
        page: PageRequest,
    ) -> Result<SearchPage, BrokerError> {
        check_page(page)?;
        let p = Prepared::new(viewer_org, filter)?;
        Searcher::new(self).page(&p, page).await
    }

    /// The statements [`RecordLog::search`] runs for this request, each with
    /// its plan (it runs them too, so later statements get the values the
    /// earlier ones found). SQLite's side index of person codes is read by
    /// its own primary key and is not listed.
    pub async fn explain_search(
        &self,
        viewer_org: &OrgId,
        filter: &SearchFilter,
        page: PageRequest,
    ) -> Result<Vec<ExplainedStatement>, BrokerError> {
        check_page(page)?;
        let p = Prepared::new(viewer_org, filter)?;
        let mut searcher = Searcher::new(self);
        searcher.explained = Some(Vec::new());
        searcher.page(&p, page).await?;
        Ok(searcher.explained.unwrap_or_default())
    }

    /// Writes the records `req.filter` selects as an export to `data` and
    /// its verification bundle to `bundle` (the same code path as `records
    /// export`), then appends the export's own provision record naming
    /// `req.actor` — also when it failed part-way. Both writers are flushed;
    /// a file is the caller's to sync.
    ///
    /// A selection of more than `req.limits.max_rows` records is refused
    /// before anything is written or recorded; an export whose data and
    /// bundle outgrow `req.limits.max_bytes` stops with
    /// `payload_too_large`. Both messages ask to narrow the period.
    ///
    /// Like `records export`, it reads every record from the first match to
    /// the last (the bundle proves the chain across those not exported), so
    /// its time follows the length of the period more than the matches.
    pub async fn export_to_writers<D: Write, B: Write>(
        &self,
        req: &DownloadRequest,
        data: D,
        bundle: B,
    ) -> Result<DownloadSummary, BrokerError> {
        let p = Prepared::new(&req.viewer_org, &req.filter)?;
        let actor = checked_text("actor", &Some(req.actor.clone()))?.unwrap_or_default();
        if req.limits.max_rows == 0 || req.limits.max_bytes == 0 {
            return Err(invalid("export limits must be above zero".into()));
        }
        let caps = Caps {
            rows: req.limits.max_rows,
            bytes: req.limits.max_bytes,
        };
        if Searcher::new(self).count_upto(&p, caps.rows).await? > caps.rows {
            return Err(caps.exceeded());
        }
        let (data_file_name, bundle_file_name) = file_names(req.format);
        let filter = req.filter.describe(&req.viewer_org);
        let mut progress = Progress::default();
        let result = self
            .write_export(
                &p.matcher(),
                req.format,
                &filter,
                data,
                bundle,
                &mut progress,
                Some(caps),
            )
            .await;
        let export_record_seq = self
            .record_export(&actor, &filter, req.format, result.is_err(), progress.rows)
            .await?;
        let sealed_seq = result?;
        Ok(DownloadSummary {
            rows: progress.rows,
            segments: progress.segments,
            sealed_seq,
            export_record_seq,
            data_file_name,
            bundle_file_name,
        })
    }

    /// [`RecordLog::export_to_writers`] into memory: the data file and its
    /// bundle, at most `req.limits.max_bytes` together.
    pub async fn export_to_bytes(&self, req: &DownloadRequest) -> Result<Download, BrokerError> {
        let (mut data, mut bundle) = (Vec::new(), Vec::new());
        let summary = self.export_to_writers(req, &mut data, &mut bundle).await?;
        Ok(Download {
            data,
            bundle,
            summary,
        })
    }
}

impl Searcher<'_> {
    async fn page(&mut self, p: &Prepared, page: PageRequest) -> Result<SearchPage, BrokerError> {
        let Some(range) = self.range(p, page.before_seq).await? else {
            return Ok(SearchPage {
                rows: Vec::new(),
                next_before_seq: None,
            });
        };
        let size = page.size.min(MAX_PAGE_SIZE);
        // One more than the page shows: whether there is a next page.
        let mut rows: Vec<FoundRow> = self
            .matching(p, range, i64::try_from(size).unwrap_or(0) + 1)
            .await?;
        let next_before_seq = if rows.len() > size {
            rows.truncate(size);
            rows.last().and_then(|r| u64::try_from(r.seq).ok())
        } else {
            None
        };
        Ok(SearchPage {
            rows: rows.into_iter().map(FoundRow::into_export_row).collect(),
            next_before_seq,
        })
    }
}
