//! What auditors read of the provision records (R16): `GET /api/records`
//! (search, newest first, paged; `org` narrows to exchanges with another org) and `POST /api/records/export` (a download
//! that verifies offline), both scoped to the auditor's own org — records
//! where it was requester or provider — and both written to the operation
//! log. No person code of any org is ever in a page or an export.
//!
//! An export is two files made in one run (the data and the bundle the
//! offline verifier reads beside it), so the export call answers with two
//! links; the files stay in memory for [`DOWNLOAD_TTL`], for the person who
//! made them only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Response, StatusCode};
use kakehashi_interfaces::audit::ExportRow;
use kakehashi_interfaces::ErrorCode;
use serde::Serialize;
use time::OffsetDateTime;

use crate::console::endpoints::Call;
use crate::console::masking;
use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpEntry, OpResult};
use crate::records::{
    DownloadRequest, ExportFormat, ExportLimits, PageRequest, SearchFilter, SearchPage,
};

/// How long an export's files can be downloaded.
pub const DOWNLOAD_TTL: Duration = Duration::from_secs(10 * 60);
/// Exports kept at once (the oldest goes first); each holds up to the
/// export byte limit in memory.
const MAX_KEPT: usize = 4;
/// Exports one person keeps at once: a person making export after export
/// replaces their own, not another auditor's waiting download.
const MAX_KEPT_PER_PERSON: usize = 2;
/// Records in one export made through the console (larger ones: narrow the
/// period, or use `kakehashi-broker records export` on the host).
const CONSOLE_EXPORT_ROWS: u64 = 1_000_000;
/// Bytes of one export made through the console (data and bundle).
const CONSOLE_EXPORT_BYTES: u64 = 256 * 1024 * 1024;

/// The kept exports (`(id, owner, made)`) to drop so that `owner` can keep
/// one more: first `owner`'s own oldest beyond `per_person - 1`, then the
/// oldest of anyone's beyond `total - 1`.
fn make_room<'a, T: Ord + Copy>(
    held: &[(&'a str, &str, T)],
    owner: &str,
    total: usize,
    per_person: usize,
) -> Vec<&'a str> {
    let mut by_age: Vec<&(&str, &str, T)> = held.iter().collect();
    by_age.sort_by_key(|(_, _, made)| *made);
    let mut gone = Vec::new();
    let own = by_age.iter().filter(|(_, o, _)| *o == owner).count();
    let mut own_excess = (own + 1).saturating_sub(per_person.max(1));
    for (id, o, _) in &by_age {
        if own_excess > 0 && *o == owner {
            gone.push(*id);
            own_excess -= 1;
        }
    }
    let mut left = held.len() - gone.len();
    for (id, _, _) in &by_age {
        if left < total.max(1) {
            break;
        }
        if !gone.contains(id) {
            gone.push(*id);
            left -= 1;
        }
    }
    gone
}

/// Exports waiting to be downloaded.
#[derive(Default)]
pub struct Downloads {
    kept: Mutex<HashMap<String, Kept>>,
}

struct Kept {
    owner: String,
    made: Instant,
    files: Vec<(String, &'static str, bytes::Bytes)>,
}

/// One file of an export, as the export call lists it.
#[derive(Debug, Serialize)]
pub struct ExportFile {
    /// Save it under this name (the bundle is found beside the data by it).
    pub name: String,
    /// Where to download it (same session).
    pub url: String,
}

/// `POST /api/records/export`'s answer.
#[derive(Debug, Serialize)]
pub struct ExportMade {
    /// Records exported.
    pub rows: u64,
    /// The export's own provision record.
    pub export_record_seq: u64,
    /// The data file and its bundle; save both in one folder.
    pub files: Vec<ExportFile>,
    /// The command that verifies the download offline.
    pub verify_command: String,
}

fn invalid(message: impl Into<String>) -> BrokerError {
    BrokerError::refused(ErrorCode::InvalidInput, message)
}

/// An instant: RFC 3339, or a date `YYYY-MM-DD` meaning that day's start in
/// Japan (people think in JST; records stay UTC).
/// The instant is returned in UTC, and only for the years 1970 to 9999
/// in UTC: an offset can carry `9999-12-31T23:30:00-01:00` past what a
/// stored (fixed-width, four-digit-year) time can say.
pub(crate) fn instant(name: &str, text: &str) -> Result<OffsetDateTime, BrokerError> {
    let at = match OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        Ok(at) => at,
        Err(_) => {
            let format = time::macros::format_description!("[year]-[month]-[day]");
            let date = time::Date::parse(text, &format).map_err(|_| {
                invalid(format!(
                    "{name}: 日付は YYYY-MM-DD または RFC 3339 で指定してください / must be YYYY-MM-DD or RFC 3339"
                ))
            })?;
            date.midnight().assume_offset(crate::policy::JST)
        }
    };
    match at.checked_to_offset(time::UtcOffset::UTC) {
        Some(utc) if (1970..=9999).contains(&utc.year()) => Ok(utc),
        _ => Err(invalid(format!(
            "{name}: 年は 1970〜9999 にしてください / the year must be 1970 to 9999"
        ))),
    }
}

/// The filter and paging of a search or export query string, scoped to
/// `viewer`'s own records.
fn filter(call: &Call<'_>, query: Option<&str>) -> Result<(SearchFilter, Params), BrokerError> {
    let session = call.session()?;
    let mut filter = SearchFilter {
        org: Some(session.org.clone()),
        ..SearchFilter::default()
    };
    let mut params = Params::default();
    for (name, value) in edge::query_pairs(query) {
        if value.is_empty() {
            continue;
        }
        match name.as_str() {
            "from" => filter.from = Some(instant("from", &value)?),
            "until" => filter.until = Some(instant("until", &value)?),
            "flow" => filter.flow = Some(value),
            "outcome" => filter.outcome = Some(value),
            "person" => filter.person = Some(value),
            "org" => {
                params.counterpart = Some(
                    kakehashi_interfaces::OrgId::new(value)
                        .map_err(|_| invalid("org: must be an org id such as city-saitama"))?,
                )
            }
            "before" => {
                params.before = Some(
                    value
                        .parse()
                        .map_err(|_| invalid("before: must be a sequence number"))?,
                )
            }
            "size" => {
                params.size = value
                    .parse()
                    .map_err(|_| invalid("size: must be 1 to 200"))?
            }
            "format" => {
                params.format = match value.as_str() {
                    "csv" => ExportFormat::Csv,
                    "jsonl" => ExportFormat::Jsonl,
                    _ => return Err(invalid("format: must be csv or jsonl")),
                }
            }
            other => return Err(invalid(format!("unknown query parameter {other}"))),
        }
    }
    Ok((filter, params))
}

struct Params {
    /// The other org of the records (the scope stays the auditor's own).
    counterpart: Option<kakehashi_interfaces::OrgId>,
    before: Option<u64>,
    size: usize,
    format: ExportFormat,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            counterpart: None,
            before: None,
            size: 50,
            format: ExportFormat::Csv,
        }
    }
}

fn log_entry(
    call: &Call<'_>,
    action: OpAction,
    result: OpResult,
    detail: String,
) -> Result<OpEntry, BrokerError> {
    let session = call.session()?;
    let mut entry = OpEntry::new(session.user_id.as_str(), action, result);
    entry.org = Some(session.org.clone());
    entry.source = Some(call.conn.peer.ip().to_string());
    // The filter's description names no person code (the code stays out of the log).
    entry.detail = Some(detail.chars().take(crate::oplog::MAX_TEXT_CHARS).collect());
    Ok(entry)
}

/// `GET /api/records?from&until&flow&outcome&person&before&size`.
pub async fn search(call: &Call<'_>, query: Option<&str>) -> Result<Response<Body>, BrokerError> {
    let privileged = call.session()?.privileges.number_privilege;
    let mut page = search_page(call, query).await?;
    for row in &mut page.rows {
        hide_numbers_in_row(row, privileged);
    }
    Ok(edge::json(
        StatusCode::OK,
        &serde_json::json!({ "rows": page.rows, "next_before": page.next_before_seq }),
    ))
}

/// A record as a person without the Individual-Number privilege may see it
/// in the JSON search: its texts masked as the record-search page masks
/// them, and its detail's (hashes excepted, which are not written by
/// people).
fn hide_numbers_in_row(row: &mut ExportRow, privileged: bool) {
    if privileged {
        return;
    }
    let hide = |s: &mut String| *s = masking::hide_numbers(s, false, masking::HIDDEN);
    hide(&mut row.query_id);
    hide(&mut row.requester);
    row.items.iter_mut().for_each(hide);
    for text in [
        &mut row.flow_id,
        &mut row.procedure,
        &mut row.provider,
        &mut row.reason,
        &mut row.approver,
    ] {
        text.iter_mut().for_each(hide);
    }
    if let Some(detail) = &mut row.detail {
        hide_numbers_in_json(detail);
    }
}

fn hide_numbers_in_json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => *s = masking::hide_numbers(s, false, masking::HIDDEN),
        serde_json::Value::Array(items) => items.iter_mut().for_each(hide_numbers_in_json),
        serde_json::Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                if !key.ends_with("hash") {
                    hide_numbers_in_json(field);
                }
            }
        }
        _ => {}
    }
}

/// One page of a search of the auditor's own org's records, written to
/// the operation log (the JSON search and the record-search page).
pub(crate) async fn search_page(
    call: &Call<'_>,
    query: Option<&str>,
) -> Result<SearchPage, BrokerError> {
    let session = call.session()?;
    let (mut filter, params) = filter(call, query)?;
    // With another org named, the index walk follows it and the page keeps
    // only the records the auditor's own org took part in (a page may then
    // hold fewer rows than asked; `next_before` goes on).
    if let Some(counterpart) = &params.counterpart {
        filter.org = Some(counterpart.clone());
    }
    let page = match params.before {
        Some(before) => PageRequest::before(before, params.size),
        None => PageRequest::newest(params.size),
    };
    let outcome: Result<SearchPage, BrokerError> = call
        .console
        .state
        .records
        .search(&session.org, &filter, page)
        .await;
    let entry = log_entry(
        call,
        OpAction::RecordsSearch,
        OpResult::of(&outcome),
        filter.describe(&session.org),
    )?;
    call.console.log(entry).await?;
    let mut page = outcome?;
    let own = session.org.as_str();
    page.rows
        .retain(|r| r.requester == own || r.provider.as_deref() == Some(own));
    Ok(page)
}

/// `POST /api/records/export?format=csv|jsonl&from&until&flow&outcome&person`
/// (no body; the CSRF header as every state-changing call).
pub async fn export(call: &Call<'_>, query: Option<&str>) -> Result<Response<Body>, BrokerError> {
    Ok(edge::json(StatusCode::OK, &make_export(call, query).await?))
}

/// Makes an export of the auditor's own org's records, written to the
/// operation log, and keeps its files for this person to download (the
/// JSON export and the export page).
pub(crate) async fn make_export(
    call: &Call<'_>,
    query: Option<&str>,
) -> Result<ExportMade, BrokerError> {
    let session = call.session()?;
    let (filter, params) = filter(call, query)?;
    if params.counterpart.is_some() {
        return Err(invalid(
            "org: 出力は自団体の記録全体が対象です。期間・フロー・結果で絞ってください / exports cover the auditor's own org; narrow them by period, flow or outcome",
        ));
    }
    let detail = filter.describe(&session.org);
    let request = DownloadRequest {
        viewer_org: session.org.clone(),
        filter,
        format: params.format,
        actor: session.user_id.as_str().to_string(),
        limits: ExportLimits {
            max_rows: CONSOLE_EXPORT_ROWS,
            max_bytes: CONSOLE_EXPORT_BYTES,
        },
    };
    let outcome = call.console.state.records.export_to_bytes(&request).await;
    let entry = log_entry(
        call,
        OpAction::RecordsExport,
        OpResult::of(&outcome),
        detail,
    )?;
    call.console.log(entry).await?;
    let download = outcome?;
    let id = hex::encode(rand::random::<[u8; 16]>());
    let data_type = match params.format {
        ExportFormat::Csv => "text/csv; charset=utf-8",
        ExportFormat::Jsonl => "application/x-ndjson",
    };
    let summary = &download.summary;
    let files = vec![
        (
            summary.data_file_name.clone(),
            data_type,
            bytes::Bytes::from(download.data),
        ),
        (
            summary.bundle_file_name.clone(),
            "application/x-ndjson",
            bytes::Bytes::from(download.bundle),
        ),
    ];
    let made = ExportMade {
        rows: summary.rows,
        export_record_seq: summary.export_record_seq,
        files: files
            .iter()
            .map(|(name, _, _)| ExportFile {
                name: name.clone(),
                url: format!("/api/records/export/{id}/{name}"),
            })
            .collect(),
        verify_command: crate::console::audit::verify_command(
            &summary.data_file_name,
            &call.console.state.records.sealer_public_key_hex(),
        ),
    };
    call.console
        .downloads
        .keep(id, session.user_id.as_str(), files);
    Ok(made)
}

/// `GET /api/records/export/{id}/{file}`: one file of an export this person made.
pub async fn download(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    let (name, content_type, bytes) = call
        .console
        .downloads
        .take(call.params.get("id"), call.params.get("file"), session.user_id.as_str())
        .ok_or_else(|| {
            BrokerError::refused(
                ErrorCode::NotFound,
                "このダウンロードはありません（10分で消えます） / no such download (they last 10 minutes); export again",
            )
        })?;
    let mut response = edge::text(StatusCode::OK, bytes, content_type);
    // The name is the broker's own (records-<time>.csv …): no quoting needed.
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

impl Downloads {
    fn keep(&self, id: String, owner: &str, files: Vec<(String, &'static str, bytes::Bytes)>) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.retain(|_, k| k.made.elapsed() < DOWNLOAD_TTL);
            let held: Vec<(&str, &str, Instant)> = kept
                .iter()
                .map(|(id, k)| (id.as_str(), k.owner.as_str(), k.made))
                .collect();
            let gone: Vec<String> = make_room(&held, owner, MAX_KEPT, MAX_KEPT_PER_PERSON)
                .into_iter()
                .map(str::to_string)
                .collect();
            for id in gone {
                kept.remove(&id);
            }
            kept.insert(
                id,
                Kept {
                    owner: owner.to_string(),
                    made: Instant::now(),
                    files,
                },
            );
        }
    }

    fn take(
        &self,
        id: &str,
        file: &str,
        owner: &str,
    ) -> Option<(String, &'static str, bytes::Bytes)> {
        let kept = self.kept.lock().ok()?;
        let export = kept.get(id)?;
        if export.owner != owner || export.made.elapsed() >= DOWNLOAD_TTL {
            return None;
        }
        export
            .files
            .iter()
            .find(|(name, _, _)| name == file)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::make_room;

    #[test]
    fn a_person_replaces_their_own_export_before_anyone_elses() {
        // (id, owner, made): older first.
        let held = [("a1", "aki", 1), ("b1", "ben", 2), ("a2", "aki", 3)];
        assert_eq!(make_room(&held, "aki", 4, 2), vec!["a1"]);
        assert_eq!(make_room(&held, "ben", 4, 2), Vec::<&str>::new());
        let full = [
            ("a1", "aki", 1),
            ("b1", "ben", 2),
            ("c1", "cho", 3),
            ("d1", "dai", 4),
        ];
        // Nothing of the newcomer's own: the oldest of anyone's goes.
        assert_eq!(make_room(&full, "eri", 4, 2), vec!["a1"]);
        // Their own goes first even when it is not the oldest.
        let full = [
            ("a1", "aki", 1),
            ("b1", "ben", 2),
            ("c1", "cho", 3),
            ("c2", "cho", 4),
        ];
        assert_eq!(make_room(&full, "cho", 4, 2), vec!["c1"]);
        assert_eq!(make_room::<u8>(&[], "aki", 4, 2), Vec::<&str>::new());
    }
}
