//! The auditor's pages (R16, R17): record search with keyset paging, an
//! export of the search's selection downloaded through the browser (CSV
//! with BOM for Excel, or JSON Lines, with its verification bundle), the
//! operation log with filters, and the checkpoint key with the command that
//! verifies a download offline. Each calls what its JSON equivalent calls
//! (`console/records.rs`, `console/audit.rs`) and so writes the same
//! operation-log entries and keeps the same scope: the auditor's own org (the
//! union's auditors read the whole operation log).
//!
//! Dates people type are JST days; an end date includes its whole day.
//! Nothing shown carries a person code; an Individual Number anywhere in
//! shown text is replaced unless the person holds the privilege (R5).

use http::{Response, StatusCode};
use kakehashi_interfaces::audit::ExportRow;
use kakehashi_interfaces::ErrorCode;
use minijinja::context;
use minijinja::value::{Serde, Value};
use serde::Serialize;

use super::i18n::{self, text, Lang};
use super::Cx;
use crate::console::{audit as api_audit, records as api_records};
use crate::edge::http::Body;
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpRecord, OpResult};
use crate::people::{Role, SessionView, Stage};

/// The auditor pages' labels: key, Japanese, English (read through
/// [`i18n::table`] and [`i18n::text`] with the other pages' labels).
pub(super) const MESSAGES: &[(&str, &str, &str)] = &[
    ("nav_label", "画面", "Pages"),
    ("nav_records", "提供記録の検索", "Record search"),
    ("nav_oplog", "操作ログ", "Operation log"),
    ("nav_keys", "検証用の鍵", "Verification key"),
    ("records_title", "提供記録の検索", "Record search"),
    (
        "records_intro",
        "自団体が照会元または提供元である提供記録を、新しい順に表示します。個人の符号は表示されません。",
        "Provision records your org took part in as requester or provider, newest first. No person code is shown.",
    ),
    ("filters", "検索条件（日付は日本時間）", "Filters (dates in JST)"),
    ("from_date", "開始日", "From"),
    ("until_date", "終了日（当日を含む）", "To (inclusive)"),
    // Browsers draw a date field in their own locale's order
    // (mm/dd/yyyy in an English Chromium): the expected form is stated.
    (
        "date_hint",
        "例: 2026-12-01（年-月-日）",
        "e.g. 2026-12-01 (year-month-day)",
    ),
    ("counterpart", "相手団体ID", "Other org id"),
    ("counterpart_hint", "例: city-saitama", "e.g. city-saitama"),
    ("flow_id", "フローID", "Flow id"),
    ("flow_hint", "例: F-0121", "e.g. F-0121"),
    ("outcome", "結果", "Outcome"),
    ("any", "すべて", "Any"),
    ("person_code", "個人の符号（自団体）", "Person code (your org's)"),
    ("person_hint", "自団体の符号のみ一致・ログに残りません", "Your org's code only; not logged"),
    (
        "number_not_allowed",
        "個人番号は検索条件にできません（個人番号を扱う権限がありません）",
        "An Individual Number cannot be a filter (you do not hold the Individual-Number privilege)",
    ),
    ("search", "検索", "Search"),
    ("clear", "条件をクリア", "Clear filters"),
    ("results", "検索結果", "Results"),
    (
        "rows_shown",
        "このページに {n} 件（{size} 件ずつ表示）",
        "{n} on this page ({size} per page)",
    ),
    (
        "no_records",
        "条件に合う提供記録はありません。",
        "No provision record matches.",
    ),
    ("paging", "ページ移動", "Pages"),
    ("first_page", "最新のページへ", "Newest page"),
    ("next_page", "次のページ（より古い記録）", "Next page (older)"),
    ("last_page", "これが最後のページです。", "This is the last page."),
    ("col_seq", "記録番号", "Record"),
    ("col_at", "日時（日本時間）", "Time (JST)"),
    ("col_flow_proc", "フロー / 手続", "Flow / procedure"),
    ("col_parties", "照会元 → 提供元", "Requester → provider"),
    ("col_items_short", "項目", "Items"),
    ("col_outcome", "結果", "Outcome"),
    ("col_reason", "理由", "Reason"),
    ("col_approver", "承認者", "Approver"),
    ("col_query_id", "照会ID", "Query id"),
    ("outcome_provided", "提供", "provided"),
    ("outcome_pending", "承認待ち", "pending"),
    ("outcome_approved", "承認・提供", "approved"),
    ("outcome_rejected", "却下", "rejected"),
    ("outcome_denied", "拒否", "denied"),
    ("outcome_expired", "期限切れ", "expired"),
    ("outcome_export", "記録の出力", "export"),
    ("outcome_purge", "保存期間経過による削除", "purge"),
    ("outcome_erasure", "消去", "erasure"),
    ("export_title", "記録の出力", "Export"),
    (
        "export_intro",
        "上の検索条件（期間・フロー・結果・個人の符号）に合う自団体の記録を、オフラインで検証できるファイルとして出力します。出力も提供記録に残ります。",
        "Exports your org's records matching the filters above (period, flow, outcome, person code) as files that verify offline. The export itself is recorded.",
    ),
    (
        "export_counterpart_note",
        "相手団体の条件は出力には使われません（出力は自団体の記録全体が対象です）。",
        "The other-org filter does not apply to exports (they cover your own org's records).",
    ),
    ("format", "形式", "Format"),
    (
        "format_csv",
        "CSV（Excel で開けます。UTF-8 BOM 付き）",
        "CSV (opens in Excel; UTF-8 with BOM)",
    ),
    ("format_jsonl", "JSON Lines（1行に1件）", "JSON Lines (one record a line)"),
    ("make_export", "出力する", "Export"),
    ("export_done_title", "出力しました", "Export ready"),
    (
        "export_done",
        "{n} 件を出力しました（出力の提供記録番号: {r}）。",
        "{n} records exported (the export's record number: {r}).",
    ),
    (
        "export_files",
        "次の2つのファイルを同じフォルダに保存してください（10分間ダウンロードできます）。",
        "Save both files into one folder (they can be downloaded for 10 minutes).",
    ),
    ("data_file", "データ", "Data"),
    ("bundle_file", "検証用バンドル", "Verification bundle"),
    ("verify_howto", "オフラインでの検証", "Verify offline"),
    (
        "verify_intro",
        "保存したフォルダで次のコマンドを実行します。終了コード 0 なら改ざんはありません。",
        "Run this in the folder you saved them to; exit code 0 means intact.",
    ),
    ("back_to_search", "検索に戻る", "Back to the search"),
    ("oplog_title", "操作ログ", "Operation log"),
    (
        "oplog_intro",
        "ログイン、承認、検索、設定変更など、人が行った操作の記録です（新しい順）。パスワード・確認コード・個人番号は記録されません。",
        "What people did — logins, approvals, searches, changes — newest first. Passwords, codes and Individual Numbers are never logged.",
    ),
    ("actor", "操作者（利用者ID）", "Actor (user id)"),
    ("action", "操作", "Action"),
    ("col_actor", "操作者", "Actor"),
    ("col_org_short", "団体", "Org"),
    ("col_action", "操作", "Action"),
    ("col_target", "対象", "Target"),
    ("col_result", "結果", "Result"),
    ("col_source", "接続元", "Source"),
    ("col_detail", "詳細", "Detail"),
    ("result_success", "成功", "done"),
    ("result_refused", "拒否", "refused"),
    (
        "no_entries",
        "条件に合う操作はありません。",
        "No operation matches.",
    ),
    (
        "entries_shown",
        "このページに {n} 件",
        "{n} on this page",
    ),
    ("keys_title", "検証用の鍵", "Verification key"),
    (
        "keys_intro",
        "提供記録のチェックポイントはこの鍵で署名されています。出力したファイルは、この公開鍵を信頼する鍵として指定して、インターネットなしで検証できます。",
        "The provision records' checkpoints are signed with this key. Verify a downloaded export offline by naming this public key as the trusted key.",
    ),
    ("key_id", "鍵ID", "Key id"),
    ("algorithm", "方式", "Algorithm"),
    ("public_key", "公開鍵（16進）", "Public key (hex)"),
    (
        "verify_command_intro",
        "出力したファイル（と同じフォルダの .bundle.jsonl）を検証するコマンド（ファイル名は保存したものに置き換えてください）:",
        "The command that verifies a downloaded export (with its .bundle.jsonl beside it; use the name you saved it under):",
    ),
    (
        "pin_intro",
        "端末のプロファイルに鍵を固定すると、以後は鍵を指定せずに検証できます（表示される鍵IDがこの画面の鍵IDと同じことを確かめてください）:",
        "Pin the key in a terminal's profile to verify without naming it afterwards (check that the key id it shows is the one on this page):",
    ),
    ("act_login_succeeded", "ログイン", "login"),
    ("act_login_failed", "ログイン失敗", "login failed"),
    ("act_account_locked", "アカウントのロック", "account locked"),
    ("act_logout", "ログアウト", "logout"),
    ("act_session_expired", "セッションの期限切れ", "session expired"),
    ("act_totp_enrolled", "認証アプリの登録", "TOTP enrolled"),
    ("act_totp_failed", "確認コードの誤り", "wrong TOTP code"),
    ("act_password_changed", "パスワード変更", "password changed"),
    ("act_approve", "承認", "approve"),
    ("act_reject", "却下", "reject"),
    ("act_records_search", "提供記録の検索", "record search"),
    ("act_records_export", "提供記録の出力", "record export"),
    ("act_oplog_search", "操作ログの閲覧", "operation-log search"),
    ("act_user_added", "利用者の追加", "user added"),
    ("act_user_reset", "パスワードの再発行", "user reset"),
    ("act_user_disabled", "利用者の無効化", "user disabled"),
    ("act_user_enabled", "利用者の再有効化", "user enabled"),
    ("act_role_granted", "役割の付与", "role granted"),
    ("act_role_revoked", "役割の取消", "role revoked"),
    (
        "act_number_privilege_granted",
        "個人番号権限の付与",
        "Individual-Number privilege granted",
    ),
    (
        "act_number_privilege_revoked",
        "個人番号権限の取消",
        "Individual-Number privilege revoked",
    ),
    ("act_flow_list_proposed", "フロー一覧の提案", "flow list proposed"),
    ("act_flow_list_approved", "フロー一覧の承認", "flow list approved"),
    ("act_org_added", "団体の登録", "org added"),
    ("act_org_suspended", "団体の停止", "org suspended"),
    ("act_org_activated", "団体の再開", "org activated"),
    ("act_org_pinned", "団体の証明書の固定", "org pinned"),
    (
        "act_records_head_accepted",
        "提供記録の末尾の承認",
        "records head accepted",
    ),
    ("act_keys_changed", "鍵の更新", "keys changed"),
];

/// One link of the top bar's page navigation.
#[derive(Debug, Serialize)]
pub(super) struct NavLink {
    pub(super) id: &'static str,
    pub(super) href: &'static str,
    pub(super) label: &'static str,
    pub(super) current: bool,
}

/// The auditor's pages, for the navigation of a logged-in auditor.
pub(super) fn nav(lang: Lang, session: &SessionView, here: &str) -> Vec<NavLink> {
    if session.stage != Stage::Full || !session.privileges.has(Role::Auditor) {
        return Vec::new();
    }
    let path = here.split_once('?').map_or(here, |(p, _)| p);
    [
        ("records", "/records", "nav_records"),
        ("oplog", "/operation-log", "nav_oplog"),
        ("keys", "/keys", "nav_keys"),
    ]
    .into_iter()
    .map(|(id, href, key)| NavLink {
        id,
        href,
        label: text(lang, key),
        current: path == href || (href == "/records" && path.starts_with("/records/")),
    })
    .collect()
}

/// `text` as a person without the Individual-Number privilege may see it,
/// in the page's language.
pub(super) fn hide_numbers(lang: Lang, text_in: &str, privileged: bool) -> String {
    crate::console::masking::hide_numbers(text_in, privileged, text(lang, "number_hidden"))
}

/// A JST date as the end of a period: the next day's start, so the day
/// itself is included. Anything else (an RFC 3339 instant) passes as given.
fn inclusive_end(date: &str) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    match time::Date::parse(date, &format) {
        Ok(day) => day
            .next_day()
            .and_then(|next| next.format(&format).ok())
            .unwrap_or_else(|| date.to_string()),
        Err(_) => date.to_string(),
    }
}

/// The filters of the record search as the page's form has them.
#[derive(Debug, Default, Serialize)]
struct RecordFilters {
    from: String,
    until: String,
    org: String,
    flow: String,
    outcome: String,
    person: String,
    size: String,
}

impl RecordFilters {
    fn read(get: impl Fn(&str) -> Option<String>) -> RecordFilters {
        let field = |name: &str| get(name).map(|v| v.trim().to_string()).unwrap_or_default();
        RecordFilters {
            from: field("from"),
            until: field("until"),
            org: field("org"),
            flow: field("flow"),
            outcome: field("outcome"),
            person: field("person"),
            size: field("size"),
        }
    }

    /// The query string of the JSON API for these filters (the end date
    /// made inclusive); `with_org` false for an export.
    fn api_query(&self, with_org: bool, extra: &[(&str, &str)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let until = inclusive_end(&self.until);
        let pairs = [
            ("from", self.from.as_str()),
            ("until", until.as_str()),
            ("org", if with_org { self.org.as_str() } else { "" }),
            ("flow", self.flow.as_str()),
            ("outcome", self.outcome.as_str()),
            ("person", self.person.as_str()),
        ];
        for (k, v) in pairs.iter().chain(extra) {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }

    /// The page's own link for these filters, `before` a sequence number.
    fn page_link(&self, before: Option<u64>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let before = before.map(|b| b.to_string()).unwrap_or_default();
        for (k, v) in [
            ("from", self.from.as_str()),
            ("until", self.until.as_str()),
            ("org", self.org.as_str()),
            ("flow", self.flow.as_str()),
            ("outcome", self.outcome.as_str()),
            ("person", self.person.as_str()),
            ("size", self.size.as_str()),
            ("before", before.as_str()),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        let q = q.finish();
        if q.is_empty() {
            "/records".into()
        } else {
            format!("/records?{q}")
        }
    }
}

/// One record as the search page shows it.
#[derive(Debug, Serialize)]
struct RecordRow {
    seq: String,
    at: String,
    flow: String,
    requester: String,
    provider: String,
    items: Vec<String>,
    outcome: String,
    outcome_code: String,
    reason: String,
    approver: String,
    query_id: String,
}

fn outcome_label(lang: Lang, outcome: &str) -> String {
    let key = match outcome {
        "provided" => "outcome_provided",
        "pending" => "outcome_pending",
        "approved" => "outcome_approved",
        "rejected" => "outcome_rejected",
        "denied" => "outcome_denied",
        "expired" => "outcome_expired",
        "export" => "outcome_export",
        "purge" => "outcome_purge",
        "erasure" => "outcome_erasure",
        other => return other.to_string(),
    };
    text(lang, key).to_string()
}

fn record_row(lang: Lang, r: &ExportRow, privileged: bool) -> RecordRow {
    let shown = |s: &str| hide_numbers(lang, s, privileged);
    let opt = |s: &Option<String>| s.as_deref().map(shown).unwrap_or_default();
    let flow = match (&r.flow_id, &r.procedure) {
        (Some(f), Some(p)) => format!("{f} / {p}"),
        (Some(f), None) => f.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => String::new(),
    };
    RecordRow {
        seq: i18n::number(&r.seq.to_string()),
        at: i18n::jst(&r.at),
        flow: shown(&flow),
        requester: shown(&r.requester),
        provider: opt(&r.provider),
        items: r.items.iter().map(|i| shown(i)).collect(),
        outcome: outcome_label(lang, &r.outcome),
        outcome_code: r.outcome.clone(),
        reason: opt(&r.reason),
        approver: opt(&r.approver),
        query_id: shown(&r.query_id),
    }
}

/// The outcomes of the search form's list: code, label.
fn outcome_choices(lang: Lang) -> Vec<(&'static str, String)> {
    crate::records::OUTCOME_NAMES
        .iter()
        .map(|o| (*o, outcome_label(lang, o)))
        .collect()
}

/// A refusal of bad input is shown on the form; anything else is the
/// error page.
fn input_error(lang: Lang, e: BrokerError) -> Result<String, BrokerError> {
    if e.code() == ErrorCode::InvalidInput {
        Ok(i18n::message(lang, &e.public_message()))
    } else {
        Err(e)
    }
}

/// `GET /records?from&until&org&flow&outcome&person&size&before`.
pub(super) async fn records(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let lang = cx.lang();
    let privileged = session.privileges.number_privilege;
    let mut filters = RecordFilters::read(|name| cx.param(name));
    let before = cx.param("before").filter(|b| !b.is_empty());
    // A number typed by someone without the privilege is neither searched
    // for nor shown back (not even in the page's links).
    let refused_number = hide_numbers(lang, &filters.person, privileged) != filters.person;
    if refused_number {
        filters.person.clear();
    }
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if !filters.size.is_empty() {
        extra.push(("size", &filters.size));
    }
    if let Some(before) = &before {
        extra.push(("before", before));
    }
    let query = filters.api_query(true, &extra);
    let (status, found, error) = if refused_number {
        (
            StatusCode::BAD_REQUEST,
            None,
            Some(cx.t("number_not_allowed").to_string()),
        )
    } else {
        match api_records::search_page(cx.call, Some(&query)).await {
            Ok(page) => (StatusCode::OK, Some(page), None),
            Err(e) => (StatusCode::BAD_REQUEST, None, Some(input_error(lang, e)?)),
        }
    };
    let size = filters
        .size
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=crate::records::MAX_PAGE_SIZE).contains(n))
        .unwrap_or(50);
    let rows: Vec<RecordRow> = found
        .as_ref()
        .map(|p| {
            p.rows
                .iter()
                .map(|r| record_row(lang, r, privileged))
                .collect()
        })
        .unwrap_or_default();
    let next = found
        .as_ref()
        .and_then(|p| p.next_before_seq)
        .map(|b| filters.page_link(Some(b)));
    let shown_count = cx
        .t("rows_shown")
        .replace("{n}", &i18n::number(&rows.len().to_string()))
        .replace("{size}", &i18n::number(&size.to_string()));
    let here = filters.page_link(before.as_deref().and_then(|b| b.parse().ok()));
    let frame = cx
        .view
        .frame("records_title", Some(session), Some(&here), None)
        .await;
    let own = context! {
        filters => Value::from(Serde(&filters)),
        outcomes => outcome_choices(lang),
        rows => Value::from(Serde(&rows)),
        searched => found.is_some(),
        count => shown_count,
        next => next,
        paged => before.is_some(),
        first => filters.page_link(None),
        error => error,
    };
    Ok(cx.view.page(status, "records.html", &frame, own))
}

/// One file of an export, as the export page links it.
#[derive(Debug, Serialize)]
struct FileLink {
    id: &'static str,
    label: &'static str,
    name: String,
    url: String,
}

/// `POST /records/export` with the search's filters and `format`.
pub(super) async fn export(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let lang = cx.lang();
    let form = cx.form()?;
    let filters = RecordFilters::read(|name| Some(form.get(name).to_string()));
    let format = match form.get("format") {
        "jsonl" => "jsonl",
        _ => "csv",
    };
    let query = filters.api_query(false, &[("format", format)]);
    let made = api_records::make_export(cx.call, Some(&query)).await?;
    let labels = ["data_file", "bundle_file"];
    let files: Vec<FileLink> = made
        .files
        .iter()
        .zip(["download-data", "download-bundle"])
        .zip(labels)
        .map(|((f, id), label)| FileLink {
            id,
            label: cx.t(label),
            name: f.name.clone(),
            url: f.url.clone(),
        })
        .collect();
    let back = filters.page_link(None);
    let frame = cx
        .view
        .frame("export_done_title", Some(session), Some(&back), None)
        .await;
    let own = context! {
        done => cx
            .t("export_done")
            .replace("{n}", &i18n::number(&made.rows.to_string()))
            .replace("{r}", &i18n::number(&made.export_record_seq.to_string())),
        files => Value::from(Serde(&files)),
        verify_command => hide_numbers(lang, &made.verify_command, false),
        back => back,
    };
    Ok(cx.view.page(StatusCode::OK, "export.html", &frame, own))
}

/// One operation-log entry as the page shows it.
#[derive(Debug, Serialize)]
struct OpRow {
    seq: String,
    at: String,
    actor: String,
    org: String,
    action: String,
    action_code: &'static str,
    target: String,
    result: String,
    refused: bool,
    source: String,
    detail: String,
}

fn action_key(action: OpAction) -> &'static str {
    match action {
        OpAction::LoginSucceeded => "act_login_succeeded",
        OpAction::LoginFailed => "act_login_failed",
        OpAction::AccountLocked => "act_account_locked",
        OpAction::Logout => "act_logout",
        OpAction::SessionExpired => "act_session_expired",
        OpAction::TotpEnrolled => "act_totp_enrolled",
        OpAction::TotpFailed => "act_totp_failed",
        OpAction::PasswordChanged => "act_password_changed",
        OpAction::Approve => "act_approve",
        OpAction::Reject => "act_reject",
        OpAction::RecordsSearch => "act_records_search",
        OpAction::RecordsExport => "act_records_export",
        OpAction::OplogSearch => "act_oplog_search",
        OpAction::UserAdded => "act_user_added",
        OpAction::UserReset => "act_user_reset",
        OpAction::UserDisabled => "act_user_disabled",
        OpAction::UserEnabled => "act_user_enabled",
        OpAction::RoleGranted => "act_role_granted",
        OpAction::RoleRevoked => "act_role_revoked",
        OpAction::NumberPrivilegeGranted => "act_number_privilege_granted",
        OpAction::NumberPrivilegeRevoked => "act_number_privilege_revoked",
        OpAction::FlowListProposed => "act_flow_list_proposed",
        OpAction::FlowListApproved => "act_flow_list_approved",
        OpAction::OrgAdded => "act_org_added",
        OpAction::OrgSuspended => "act_org_suspended",
        OpAction::OrgActivated => "act_org_activated",
        OpAction::OrgPinned => "act_org_pinned",
        OpAction::RecordsHeadAccepted => "act_records_head_accepted",
        OpAction::KeysChanged => "act_keys_changed",
    }
}

fn op_row(lang: Lang, e: &OpRecord, privileged: bool) -> OpRow {
    let shown = |s: &Option<String>| {
        s.as_deref()
            .map(|s| hide_numbers(lang, s, privileged))
            .unwrap_or_default()
    };
    let (result, refused) = match e.result {
        OpResult::Success => (text(lang, "result_success").to_string(), false),
        OpResult::Refused(code) => (
            format!("{} ({})", text(lang, "result_refused"), code.as_str()),
            true,
        ),
    };
    OpRow {
        seq: i18n::number(&e.seq.to_string()),
        at: i18n::jst(&e.at),
        actor: hide_numbers(lang, &e.actor, privileged),
        org: shown(&e.org),
        action: text(lang, action_key(e.action)).to_string(),
        action_code: e.action.as_str(),
        target: shown(&e.target),
        result,
        refused,
        source: shown(&e.source),
        detail: shown(&e.detail),
    }
}

/// The operation log's filters as the page's form has them.
#[derive(Debug, Default, Serialize)]
struct OpFilters {
    from: String,
    until: String,
    actor: String,
    action: String,
}

impl OpFilters {
    fn link(&self, before: Option<u64>) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        let before = before.map(|b| b.to_string()).unwrap_or_default();
        for (k, v) in [
            ("from", self.from.as_str()),
            ("until", self.until.as_str()),
            ("actor", self.actor.as_str()),
            ("action", self.action.as_str()),
            ("before", before.as_str()),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        let q = q.finish();
        if q.is_empty() {
            "/operation-log".into()
        } else {
            format!("/operation-log?{q}")
        }
    }
}

/// Entries on one page of the operation log page.
const OPLOG_PAGE: &str = "50";

/// `GET /operation-log?from&until&actor&action&before`.
pub(super) async fn operation_log(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let lang = cx.lang();
    let privileged = session.privileges.number_privilege;
    let field = |name: &str| {
        cx.param(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let mut filters = OpFilters {
        from: field("from"),
        until: field("until"),
        actor: field("actor"),
        action: field("action"),
    };
    let before = field("before");
    let refused_number = hide_numbers(lang, &filters.actor, privileged) != filters.actor;
    if refused_number {
        filters.actor.clear();
    }
    let until = inclusive_end(&filters.until);
    let query = {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("from", filters.from.as_str()),
            ("until", until.as_str()),
            ("actor", filters.actor.as_str()),
            ("action", filters.action.as_str()),
            ("before", before.as_str()),
            ("limit", OPLOG_PAGE),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    };
    let (status, found, error) = if refused_number {
        (
            StatusCode::BAD_REQUEST,
            None,
            Some(cx.t("number_not_allowed").to_string()),
        )
    } else {
        match api_audit::operation_log_page(cx.call, Some(&query)).await {
            Ok(page) => (StatusCode::OK, Some(page), None),
            Err(e) => (StatusCode::BAD_REQUEST, None, Some(input_error(lang, e)?)),
        }
    };
    let rows: Vec<OpRow> = found
        .as_ref()
        .map(|(entries, _)| {
            entries
                .iter()
                .map(|e| op_row(lang, e, privileged))
                .collect()
        })
        .unwrap_or_default();
    let next = found
        .as_ref()
        .and_then(|(_, next)| *next)
        .map(|b| filters.link(Some(b)));
    let actions: Vec<(&'static str, &'static str)> = OpAction::ALL
        .iter()
        .map(|a| (a.as_str(), text(lang, action_key(*a))))
        .collect();
    let count = cx
        .t("entries_shown")
        .replace("{n}", &i18n::number(&rows.len().to_string()));
    let here = filters.link(before.parse().ok());
    let frame = cx
        .view
        .frame("oplog_title", Some(session), Some(&here), None)
        .await;
    let own = context! {
        filters => Value::from(Serde(&filters)),
        actions => actions,
        rows => Value::from(Serde(&rows)),
        searched => found.is_some(),
        count => count,
        next => next,
        paged => !before.is_empty(),
        first => filters.link(None),
        error => error,
    };
    Ok(cx.view.page(status, "oplog.html", &frame, own))
}

/// `GET /keys`: the checkpoint key(s) and the offline verification command.
pub(super) async fn keys(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let keys = api_audit::keys(&cx.console().state);
    let frame = cx.view.frame("keys_title", Some(session), None, None).await;
    let own = context! {
        keys => Value::from(Serde(&keys.record_keys)),
        verify_command => keys.verify_command,
    };
    Ok(cx.view.page(StatusCode::OK, "keys.html", &frame, own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_individual_number_is_hidden_without_the_privilege_wherever_it_is() {
        let hidden = text(Lang::Ja, "number_hidden");
        let text_in = "person=123456789018 seq 1234 other 123456789012";
        let shown = hide_numbers(Lang::Ja, text_in, false);
        assert!(!shown.contains("123456789018"), "{shown}");
        assert!(shown.contains(hidden), "{shown}");
        // Not a valid number (check digit): left as it is.
        assert!(shown.contains("123456789012"), "{shown}");
        assert!(shown.contains("seq 1234"), "{shown}");
        assert_eq!(hide_numbers(Lang::Ja, text_in, true), text_in);
        assert_eq!(
            hide_numbers(Lang::En, "日本語 F-0121", false),
            "日本語 F-0121"
        );
    }

    fn draw(lang: Lang, template: &str, own: Value) -> String {
        let frame = super::super::Frame {
            lang: lang.code(),
            title: "t".into(),
            switch_ja: "/records?lang=ja".into(),
            switch_en: "/records?lang=en".into(),
            user: Some(super::super::Who {
                user_id: "aoki.audit".into(),
                org: "union-saitama".into(),
                org_name: None,
                roles: text(lang, "role_auditor").into(),
            }),
            csrf: "tok".into(),
            pending: None,
            nav: vec![NavLink {
                id: "records",
                href: "/records",
                label: text(lang, "nav_records"),
                current: true,
            }],
        };
        let ctx = context! {
            f => Value::from(Serde(&frame)),
            t => i18n::table_value(lang),
            ..own
        };
        super::super::render(template, ctx).unwrap()
    }

    /// Every auditor page renders in both languages with what its handler
    /// gives it, and what a person typed comes back escaped.
    #[test]
    fn the_auditor_pages_render_in_both_languages_and_escape_what_people_typed() {
        let typed = "<script>alert(1)</script>";
        let filters = RecordFilters {
            flow: typed.into(),
            org: "city-saitama".into(),
            ..RecordFilters::default()
        };
        let row = ExportRow {
            seq: 1_234_567,
            at: "2026-12-05T15:00:00Z".into(),
            query_id: "q_1".into(),
            permit_id: None,
            flow_id: Some("F-0120".into()),
            flow_list_version: Some(1),
            procedure: Some("premium-calculation".into()),
            requester: "union-saitama".into(),
            provider: Some("city-saitama".into()),
            items: vec!["local_tax.income".into()],
            outcome: "provided".into(),
            reason: None,
            approver: None,
            detail: None,
        };
        let entry = OpRecord {
            seq: 7,
            at: "2026-12-05T15:00:00.000000Z".into(),
            actor: "aoki.audit".into(),
            org: Some("union-saitama".into()),
            action: OpAction::TotpFailed,
            target: None,
            result: OpResult::Refused(ErrorCode::InvalidInput),
            source: Some("127.0.0.1".into()),
            detail: Some(typed.into()),
        };
        for lang in [Lang::Ja, Lang::En] {
            let rows = vec![record_row(lang, &row, false)];
            assert_eq!(rows[0].seq, "1,234,567");
            assert_eq!(rows[0].at, "2026-12-06 00:00:00 JST");
            let page = draw(
                lang,
                "records.html",
                context! {
                    filters => Value::from(Serde(&filters)),
                    outcomes => outcome_choices(lang),
                    rows => Value::from(Serde(&rows)),
                    searched => true,
                    count => "1",
                    next => Some("/records?before=1"),
                    paged => true,
                    first => "/records",
                    error => Some(typed),
                },
            );
            assert!(!page.contains(typed) && page.contains("&lt;script&gt;"));
            assert!(page.contains("id=\"nav-records\"") && page.contains("1,234,567"));
            assert!(page.contains("id=\"export-org-note\""));
            let files = vec![FileLink {
                id: "download-data",
                label: text(lang, "data_file"),
                name: "records.csv".into(),
                url: "/api/records/export/ab/records.csv".into(),
            }];
            draw(
                lang,
                "export.html",
                context! {
                    done => "3", files => Value::from(Serde(&files)),
                    verify_command => "kakehashi audit verify records.csv --trusted-key ab",
                    back => "/records",
                },
            );
            let ops = vec![op_row(lang, &entry, false)];
            let page = draw(
                lang,
                "oplog.html",
                context! {
                    filters => Value::from(Serde(OpFilters::default())),
                    actions => vec![("totp_failed", "x")],
                    rows => Value::from(Serde(&ops)),
                    searched => true,
                    count => "1",
                    next => None::<String>,
                    paged => false,
                    first => "/operation-log",
                    error => None::<String>,
                },
            );
            assert!(!page.contains(typed) && page.contains("invalid_input"));
            let keys = vec![api_audit::RecordKey {
                key_id: "k1".into(),
                algorithm: "ed25519",
                public_key_hex: "ab".into(),
            }];
            draw(
                lang,
                "keys.html",
                context! { keys => Value::from(Serde(&keys)), verify_command => "kakehashi audit verify" },
            );
        }
    }

    #[test]
    fn an_end_date_includes_its_whole_day() {
        assert_eq!(inclusive_end("2026-12-31"), "2027-01-01");
        assert_eq!(inclusive_end("2025-02-28"), "2025-03-01");
        assert_eq!(inclusive_end(""), "");
        assert_eq!(
            inclusive_end("2026-12-06T00:00:00Z"),
            "2026-12-06T00:00:00Z"
        );
    }

    #[test]
    fn filters_become_the_api_query_and_page_links() {
        let f = RecordFilters {
            from: "2026-12-01".into(),
            until: "2026-12-05".into(),
            org: "city-saitama".into(),
            flow: "F-0121".into(),
            outcome: String::new(),
            person: "ab cd".into(),
            size: "2".into(),
        };
        assert_eq!(
            f.api_query(true, &[("before", "9")]),
            "from=2026-12-01&until=2026-12-06&org=city-saitama&flow=F-0121&person=ab+cd&before=9"
        );
        assert!(!f.api_query(false, &[]).contains("org="));
        assert_eq!(
            f.page_link(Some(1234)),
            "/records?from=2026-12-01&until=2026-12-05&org=city-saitama&flow=F-0121&person=ab+cd&size=2&before=1234"
        );
        assert_eq!(RecordFilters::default().page_link(None), "/records");
    }

    #[test]
    fn every_action_and_outcome_has_a_label_in_both_languages() {
        for action in OpAction::ALL {
            for lang in [Lang::Ja, Lang::En] {
                let key = action_key(*action);
                assert_ne!(text(lang, key), key, "{action}");
            }
        }
        for outcome in crate::records::OUTCOME_NAMES {
            assert_ne!(outcome_label(Lang::Ja, outcome), outcome);
        }
    }
}
