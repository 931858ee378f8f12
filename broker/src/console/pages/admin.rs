//! The administrator's pages (R8, R20): orgs (add, suspend, activate, pin
//! a certificate), users (add with a temporary password shown once, reset,
//! disable, enable, roles, the Individual-Number privilege) and flow-list
//! versions (the list, the difference between two versions, propose, and
//! approve by a second administrator).
//!
//! Every change calls what its JSON equivalent calls
//! ([`crate::console::admin`], [`crate::flow_changes`]) and so writes the
//! same operation-log entry. A change answers with a redirect to the page it
//! was made on, carrying a notice signed with the session's CSRF token (a
//! crafted link cannot show a false one); a refused change shows the same
//! page again with the broker's message in the person's language.

use hmac::{Hmac, Mac};
use http::{Response, StatusCode};
use kakehashi_interfaces::people::{Grant, UserId, UserView};
use kakehashi_interfaces::{ErrorCode, OrgId, OrgKind, OrgStatus};
use minijinja::context;
use minijinja::value::{Serde, Value};
use serde::Serialize;
use sha2::Sha256;

use super::audit::NavLink;
use super::i18n::{self, Lang};
use super::{redirect, role_key, status_of, Cx};
use crate::console::admin::{self as change, Admin};
use crate::edge::http::Body;
use crate::error::BrokerError;
use crate::flow_changes::{self, FlowChange, FlowDiff, VersionStatus, VersionView};
use crate::oplog::{OpAction, OpEntry, OpResult};
use crate::people::{session as cookies, NewUser, Role, SessionView, Stage};
use crate::store::{NewOrg, OrgRecord};

/// The administrator's page endpoints (rows of the console's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminPage {
    /// `GET /orgs`
    Orgs,
    /// `POST /orgs`
    OrgAdd,
    /// `POST /orgs/{org}/suspend`
    OrgSuspend,
    /// `POST /orgs/{org}/activate`
    OrgActivate,
    /// `POST /orgs/{org}/pin`
    OrgPin,
    /// `GET /users`
    Users,
    /// `POST /users`
    UserAdd,
    /// `GET /users/{user_id}`
    User,
    /// `POST /users/{user_id}/reset`
    UserReset,
    /// `POST /users/{user_id}/disable`
    UserDisable,
    /// `POST /users/{user_id}/enable`
    UserEnable,
    /// `POST /users/{user_id}/grant`
    UserGrant,
    /// `POST /users/{user_id}/revoke`
    UserRevoke,
    /// `GET /flows` (`?from=N&to=M`: their difference)
    Flows,
    /// `POST /flows`
    FlowPropose,
    /// `GET /flows/{version}`
    Flow,
    /// `POST /flows/{version}/approve`
    FlowApprove,
}

impl AdminPage {
    /// The `route` label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            AdminPage::Orgs => "console_page_orgs",
            AdminPage::OrgAdd => "console_page_org_add",
            AdminPage::OrgSuspend => "console_page_org_suspend",
            AdminPage::OrgActivate => "console_page_org_activate",
            AdminPage::OrgPin => "console_page_org_pin",
            AdminPage::Users => "console_page_users",
            AdminPage::UserAdd => "console_page_user_add",
            AdminPage::User => "console_page_user",
            AdminPage::UserReset => "console_page_user_reset",
            AdminPage::UserDisable => "console_page_user_disable",
            AdminPage::UserEnable => "console_page_user_enable",
            AdminPage::UserGrant => "console_page_user_grant",
            AdminPage::UserRevoke => "console_page_user_revoke",
            AdminPage::Flows => "console_page_flows",
            AdminPage::FlowPropose => "console_page_flow_propose",
            AdminPage::Flow => "console_page_flow",
            AdminPage::FlowApprove => "console_page_flow_approve",
        }
    }

    /// Whether the page takes a form (every POST does).
    pub fn takes_form(self) -> bool {
        !matches!(
            self,
            AdminPage::Orgs
                | AdminPage::Users
                | AdminPage::User
                | AdminPage::Flows
                | AdminPage::Flow
        )
    }
}

/// The templates of these pages.
pub(super) const TEMPLATES: &[(&str, &str)] = &[
    ("orgs.html", include_str!("templates/orgs.html")),
    ("users.html", include_str!("templates/users.html")),
    ("user.html", include_str!("templates/user.html")),
    ("temporary.html", include_str!("templates/temporary.html")),
    ("flows.html", include_str!("templates/flows.html")),
    ("flow.html", include_str!("templates/flow.html")),
];

/// Serves one of the administrator's pages.
pub(super) async fn serve(page: AdminPage, cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    match page {
        AdminPage::Orgs => orgs_page(cx, StatusCode::OK, None).await,
        AdminPage::OrgAdd => org_add(cx).await,
        AdminPage::OrgSuspend => org_status(cx, OrgStatus::Suspended).await,
        AdminPage::OrgActivate => org_status(cx, OrgStatus::Active).await,
        AdminPage::OrgPin => org_pin(cx).await,
        AdminPage::Users => users_page(cx, StatusCode::OK, None).await,
        AdminPage::UserAdd => user_add(cx).await,
        AdminPage::User => user_page(cx, StatusCode::OK, None).await,
        AdminPage::UserReset => user_reset(cx).await,
        AdminPage::UserDisable => user_disabled(cx, true).await,
        AdminPage::UserEnable => user_disabled(cx, false).await,
        AdminPage::UserGrant => user_grant(cx, true).await,
        AdminPage::UserRevoke => user_grant(cx, false).await,
        AdminPage::Flows => flows_page(cx, StatusCode::OK, None, None).await,
        AdminPage::FlowPropose => flow_propose(cx).await,
        AdminPage::Flow => flow_page(cx, StatusCode::OK, None).await,
        AdminPage::FlowApprove => flow_approve(cx).await,
    }
}

// ---------------------------------------------------------------------------
// Labels (ja, en): the administrator's pages read them as `a.key`

const MESSAGES: &[(&str, &str, &str)] = &[
    ("nav_orgs", "団体", "Orgs"),
    ("nav_users", "利用者", "Users"),
    ("nav_flows", "フローリスト", "Flow list"),
    ("orgs_title", "団体の管理", "Organisations"),
    (
        "bad_org_id",
        "団体IDの形式が正しくありません（英小文字で始まり、英小文字・数字・「-」の3〜64文字）",
        "The org id is malformed (3 to 64 of a-z, 0-9 and '-', starting with a letter)",
    ),
    ("bad_kind", "種別を選んでください", "Choose a kind"),
    ("no_role", "役割を1つ以上選んでください", "Choose at least one role"),
    (
        "orgs_caption",
        "登録されている団体（証明書で接続する機関）",
        "Registered organisations (they connect with certificates)",
    ),
    ("col_org_id", "団体ID", "Org id"),
    ("col_kind", "種別", "Kind"),
    ("col_name", "名称", "Name"),
    ("col_status", "状態", "Status"),
    ("col_pin", "証明書の固定", "Certificate pin"),
    ("col_actions", "操作", "Actions"),
    ("kind_union", "広域連合", "Union"),
    ("kind_municipality", "市区町村", "Municipality"),
    ("kind_agency", "情報保有機関", "Agency"),
    ("status_active", "有効", "Active"),
    ("status_suspended", "停止中", "Suspended"),
    ("not_pinned", "固定なし", "not pinned"),
    ("suspend", "停止する", "Suspend"),
    ("activate", "再開する", "Activate"),
    ("pin", "固定する", "Pin"),
    ("unpin", "固定を解除", "Clear pin"),
    (
        "fingerprint_label",
        "証明書のSHA-256フィンガープリント（16進数64桁）",
        "Certificate SHA-256 fingerprint (64 hex digits)",
    ),
    (
        "fingerprint_optional",
        "証明書のSHA-256フィンガープリント（任意）",
        "Certificate SHA-256 fingerprint (optional)",
    ),
    ("org_add_title", "団体の登録", "Register an organisation"),
    (
        "org_id_hint",
        "証明書の SAN URI urn:kakehashi:org:<団体ID> と同じもの",
        "As in its certificate's SAN URI urn:kakehashi:org:<id>",
    ),
    ("register", "登録する", "Register"),
    (
        "orgs_read_only",
        "団体の登録・停止・固定は広域連合の管理者が行います。",
        "Only an administrator of the union registers, suspends and pins organisations.",
    ),
    ("users_title", "利用者の管理", "Users"),
    (
        "users_caption",
        "あなたが管理する利用者（パスワードや鍵は表示しません）",
        "The users you manage (no passwords or keys are shown)",
    ),
    ("col_user", "利用者ID", "User id"),
    ("col_org", "団体", "Org"),
    ("col_roles", "役割", "Roles"),
    ("col_number", "個人番号の閲覧", "Individual Numbers"),
    ("col_state", "状態", "State"),
    ("col_last_login", "前回のログイン", "Last login"),
    ("state_active", "有効", "Active"),
    ("state_disabled", "無効", "Disabled"),
    ("state_locked", "ロック中", "Locked"),
    ("state_temporary", "仮パスワード", "Temporary password"),
    ("allowed", "可", "allowed"),
    ("not_allowed", "不可", "not allowed"),
    ("user_add_title", "利用者の追加", "Add a user"),
    (
        "user_id_hint",
        "個人ごとのID（英小文字・数字・「.」「_」「-」の3〜64文字）",
        "A personal id (3 to 64 of a-z, 0-9, '.', '_' and '-')",
    ),
    ("roles_legend", "役割（1つ以上）", "Roles (at least one)"),
    (
        "number_privilege",
        "個人番号を閲覧できる",
        "May see Individual Numbers",
    ),
    ("add", "追加する", "Add"),
    ("user_title", "利用者", "User"),
    ("back_to_users", "利用者の一覧へ戻る", "Back to the users"),
    ("reset_title", "パスワードの再発行", "Reset the password"),
    (
        "reset_note",
        "新しい仮パスワードを発行し、認証アプリの登録とロックを解除し、ログイン中のセッションを終了します。",
        "Issues a new temporary password, clears the authenticator and any lock, and ends the user's sessions.",
    ),
    ("reset", "再発行する", "Reset"),
    ("account_title", "アカウント", "Account"),
    ("disable", "無効にする", "Disable"),
    ("enable", "有効にする", "Enable"),
    ("privileges_title", "役割と権限", "Roles and privileges"),
    ("col_privilege", "役割・権限", "Role or privilege"),
    ("col_held", "付与", "Held"),
    ("grant", "付与する", "Grant"),
    ("revoke", "取り消す", "Revoke"),
    ("yes", "あり", "yes"),
    ("no", "なし", "no"),
    ("temporary_title", "仮パスワード", "Temporary password"),
    (
        "temporary_note",
        "この仮パスワードは今回だけ表示されます。本人に安全な方法で伝えてください。初回ログイン時に変更が必要です。",
        "This temporary password is shown only this once. Give it to the person securely; they must change it at their first login.",
    ),
    ("temporary_for", "利用者", "User"),
    ("flows_title", "フローリストの版", "Flow-list versions"),
    (
        "flows_caption",
        "フローリストの全ての版（提案者と承認者）",
        "Every flow-list version, with who proposed and approved it",
    ),
    ("col_version", "版", "Version"),
    ("col_proposed_by", "提案者", "Proposed by"),
    ("col_proposed_at", "提案日時", "Proposed at"),
    ("col_approved_by", "承認者", "Approved by"),
    ("col_approved_at", "承認日時", "Approved at"),
    ("col_sha", "SHA-256（先頭12桁）", "SHA-256 (first 12)"),
    ("flow_proposed", "承認待ち", "Awaiting approval"),
    ("flow_in_force", "適用中", "In force"),
    ("flow_superseded", "置き換え済み", "Superseded"),
    ("no_versions", "版はまだありません。", "There are no versions yet."),
    ("diff_title", "版の比較", "Compare versions"),
    ("diff_from", "比較元の版", "From version"),
    ("diff_to", "比較先の版", "To version"),
    ("compare", "比較する", "Compare"),
    (
        "diff_result",
        "版 {a} から版 {b} への変更",
        "Changes from version {a} to version {b}",
    ),
    ("diff_none", "フローの違いはありません。", "No flow differs."),
    ("col_flow_id", "フローID", "Flow id"),
    ("col_change", "変更", "Change"),
    ("col_fields", "変わった項目", "Fields changed"),
    ("change_added", "追加", "added"),
    ("change_removed", "削除", "removed"),
    ("change_changed", "変更", "changed"),
    ("propose_title", "新しい版の提案", "Propose a new version"),
    (
        "propose_label",
        "フローリスト（TOML形式。`flows load` と同じ形式。現在の最新版を表示しています）",
        "The flow list (TOML, as `flows load` takes it; the latest version is shown)",
    ),
    (
        "propose_note",
        "提案した版は、別の管理者が承認すると適用されます。提案者自身は承認できません。",
        "A proposed version is in force once another administrator approves it; the proposer cannot approve it.",
    ),
    ("propose", "提案する", "Propose"),
    ("flow_title", "フローリストの版", "Flow-list version"),
    ("back_to_flows", "版の一覧へ戻る", "Back to the versions"),
    (
        "diff_from_in_force",
        "適用中の版 {a} からの変更",
        "Changes from the version in force ({a})",
    ),
    ("text_title", "内容", "Text"),
    ("approve_title", "承認", "Approval"),
    (
        "approve_flow_note",
        "承認すると、この版が直ちに適用されます（他のブローカーにも数秒で反映されます）。",
        "Approving puts this version in force at once (other brokers follow within seconds).",
    ),
    ("approve", "承認する", "Approve"),
    ("done_org_added", "団体 {x} を登録しました。", "Registered org {x}."),
    ("done_org_suspended", "団体 {x} を停止しました。この団体からの接続は拒否されます。", "Suspended org {x}: its connections are refused."),
    ("done_org_activated", "団体 {x} を再開しました。", "Activated org {x}."),
    ("done_org_pinned", "団体 {x} の証明書を固定しました。", "Pinned the certificate of org {x}."),
    ("done_org_unpinned", "団体 {x} の証明書の固定を解除しました。", "Cleared the certificate pin of org {x}."),
    ("done_user_disabled", "利用者 {x} を無効にしました。", "Disabled user {x}."),
    ("done_user_enabled", "利用者 {x} を有効にしました。", "Enabled user {x}."),
    ("done_user_granted", "利用者 {x} に付与しました。", "Granted to user {x}."),
    ("done_user_revoked", "利用者 {x} から取り消しました。", "Revoked from user {x}."),
    ("done_flow_proposed", "版 {x} を提案しました。別の管理者の承認を待っています。", "Proposed version {x}; it awaits another administrator's approval."),
    ("done_flow_approved", "版 {x} を承認しました。適用中です。", "Approved version {x}; it is in force."),
];

/// These pages' labels as a template value (`a.key`), built once per
/// language.
fn labels(lang: Lang) -> Value {
    static TABLES: std::sync::OnceLock<[Value; 2]> = std::sync::OnceLock::new();
    let table = |lang: Lang| -> std::collections::BTreeMap<&'static str, &'static str> {
        MESSAGES
            .iter()
            .map(|(k, ja, en)| (*k, if lang == Lang::Ja { *ja } else { *en }))
            .collect()
    };
    let [ja, en] = TABLES.get_or_init(|| {
        [
            Value::from(minijinja::value::Serde(table(Lang::Ja))),
            Value::from(minijinja::value::Serde(table(Lang::En))),
        ]
    });
    if lang == Lang::Ja {
        ja.clone()
    } else {
        en.clone()
    }
}

fn label(lang: Lang, key: &str) -> &'static str {
    type ByKey = std::collections::HashMap<&'static str, (&'static str, &'static str)>;
    static BY_KEY: std::sync::OnceLock<ByKey> = std::sync::OnceLock::new();
    BY_KEY
        .get_or_init(|| {
            let mut map = ByKey::new();
            for (k, ja, en) in MESSAGES {
                map.entry(*k).or_insert((*ja, *en));
            }
            map
        })
        .get(key)
        .map_or("", |(ja, en)| if lang == Lang::Ja { ja } else { en })
}

// ---------------------------------------------------------------------------
// What every page here shares

/// The administrator's pages, for the navigation of a logged-in administrator.
pub(super) fn nav(lang: Lang, session: &SessionView, here: &str) -> Vec<NavLink> {
    if session.stage != Stage::Full || !session.privileges.has(Role::Administrator) {
        return Vec::new();
    }
    let path = here.split_once('?').map_or(here, |(p, _)| p);
    [
        ("orgs", "/orgs", "nav_orgs"),
        ("users", "/users", "nav_users"),
        ("flows", "/flows", "nav_flows"),
    ]
    .into_iter()
    .map(|(id, href, key)| NavLink {
        id,
        href,
        label: label(lang, key),
        current: path == href || path.starts_with(&format!("{href}/")),
    })
    .collect()
}

fn admin<'a>(cx: &'a Cx<'_, '_>) -> Result<Admin<'a>, BrokerError> {
    Ok(Admin {
        console: cx.console(),
        session: cx.session()?,
        source: cx.source(),
    })
}

/// A done notice's signature: the session's CSRF token keys it.
fn signature(csrf: &str, done: &str, target: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(csrf.as_bytes()) else {
        return String::new();
    };
    for part in ["kakehashi/console/admin-done", done, target] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// A redirect to `path` that shows notice `done` about `target` there.
fn done(session: &SessionView, path: &str, done: &str, target: &str) -> Response<Body> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("done", done)
        .append_pair("x", target)
        .append_pair("sig", &signature(&session.csrf, done, target))
        .finish();
    redirect(&format!("{path}?{query}"))
}

/// The notice a redirect carried, when its signature holds.
fn notice(cx: &Cx<'_, '_>, session: &SessionView) -> Option<String> {
    let done = cx.param("done")?;
    let target = cx.param("x")?;
    let sig = cx.param("sig")?;
    if !cookies::csrf_matches(&signature(&session.csrf, &done, &target), &sig) {
        return None;
    }
    let key = format!("done_{done}");
    let text = label(cx.lang(), &key);
    (!text.is_empty()).then(|| text.replace("{x}", &target))
}

/// A form field typed wrong, with the page's own message (already in the
/// person's language).
fn typed_wrong(lang: Lang, key: &str) -> BrokerError {
    typed_wrong_text(label(lang, key))
}

fn typed_wrong_text(message: &str) -> BrokerError {
    BrokerError::refused(ErrorCode::InvalidInput, message.to_string())
}

/// A refused change shown on its page again (a fault stays a fault).
fn shown(cx: &Cx<'_, '_>, e: BrokerError) -> Result<(StatusCode, String), BrokerError> {
    if e.code() == ErrorCode::Internal {
        return Err(e);
    }
    Ok((
        status_of(e.code()),
        i18n::message(cx.lang(), &e.public_message()),
    ))
}

async fn render(
    cx: &Cx<'_, '_>,
    status: StatusCode,
    title: &'static str,
    template: &str,
    here: Option<&str>,
    own: Value,
) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let mut frame = cx.view.frame("app_name", Some(session), here, None).await;
    frame.title = label(cx.lang(), title).to_string();
    let own = context! { a => labels(cx.lang()), ..own };
    Ok(cx.view.page(status, template, &frame, own))
}

fn kind_label(lang: Lang, kind: OrgKind) -> &'static str {
    label(
        lang,
        match kind {
            OrgKind::Union => "kind_union",
            OrgKind::Municipality => "kind_municipality",
            OrgKind::Agency => "kind_agency",
        },
    )
}

// ---------------------------------------------------------------------------
// Orgs

#[derive(Debug, Serialize)]
struct OrgRow {
    id: String,
    kind: &'static str,
    name: String,
    active: bool,
    status: &'static str,
    pin: Option<String>,
}

fn org_row(lang: Lang, o: &OrgRecord) -> OrgRow {
    let active = o.status == OrgStatus::Active;
    OrgRow {
        id: o.id.to_string(),
        kind: kind_label(lang, o.kind),
        name: o.name.clone(),
        active,
        status: label(
            lang,
            if active {
                "status_active"
            } else {
                "status_suspended"
            },
        ),
        pin: o.cert_fingerprint.clone(),
    }
}

async fn orgs_page(
    cx: &Cx<'_, '_>,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response<Body>, BrokerError> {
    let admin = admin(cx)?;
    let rows: Vec<OrgRow> = admin
        .orgs()
        .await?
        .iter()
        .map(|o| org_row(cx.lang(), o))
        .collect();
    let kinds: Vec<(&str, &str)> = [OrgKind::Municipality, OrgKind::Agency, OrgKind::Union]
        .into_iter()
        .map(|k| (k.as_str(), kind_label(cx.lang(), k)))
        .collect();
    let own = context! {
        rows => Value::from(Serde(&rows)),
        kinds => kinds,
        manages => admin.is_union().await?,
        notice => notice(cx, admin.session),
        error => error,
    };
    render(cx, status, "orgs_title", "orgs.html", Some("/orgs"), own).await
}

async fn org_add(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let form = cx.form()?;
    let lang = cx.lang();
    let parsed = (|| {
        let id = OrgId::new(form.get("id").trim()).map_err(|_| typed_wrong(lang, "bad_org_id"))?;
        let kind: OrgKind = form
            .get("kind")
            .parse()
            .map_err(|_| typed_wrong(lang, "bad_kind"))?;
        let typed_pin = form.get("fingerprint").trim();
        let cert_fingerprint = if typed_pin.is_empty() {
            None
        } else {
            Some(change::fingerprint(typed_pin)?)
        };
        Ok::<_, BrokerError>(NewOrg {
            id,
            kind,
            name: form.get("name").trim().to_string(),
            cert_fingerprint,
        })
    })();
    let outcome = match parsed {
        Ok(new) => admin(cx)?.add_org(new).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(org) => Ok(done(cx.session()?, "/orgs", "org_added", org.id.as_str())),
        Err(e) => {
            let (status, message) = shown(cx, e)?;
            orgs_page(cx, status, Some(message)).await
        }
    }
}

fn org_param(cx: &Cx<'_, '_>) -> Result<OrgId, BrokerError> {
    Ok(OrgId::new(cx.call.params.get("org"))?)
}

async fn org_status(cx: &Cx<'_, '_>, status: OrgStatus) -> Result<Response<Body>, BrokerError> {
    let outcome = match org_param(cx) {
        Ok(id) => admin(cx)?.set_org_status(&id, status).await,
        Err(e) => Err(e),
    };
    let key = match status {
        OrgStatus::Suspended => "org_suspended",
        OrgStatus::Active => "org_activated",
    };
    match outcome {
        Ok(org) => Ok(done(cx.session()?, "/orgs", key, org.id.as_str())),
        Err(e) => {
            let (status, message) = shown(cx, e)?;
            orgs_page(cx, status, Some(message)).await
        }
    }
}

async fn org_pin(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let form = cx.form()?;
    let clear = form.get("clear") == "1";
    let outcome = match (org_param(cx), clear) {
        (Err(e), _) => Err(e),
        (Ok(id), true) => admin(cx)?.set_org_pin(&id, None).await,
        (Ok(id), false) => match change::fingerprint(form.get("fingerprint")) {
            Ok(fp) => admin(cx)?.set_org_pin(&id, Some(&fp)).await,
            Err(e) => Err(e),
        },
    };
    let key = if clear { "org_unpinned" } else { "org_pinned" };
    match outcome {
        Ok(org) => Ok(done(cx.session()?, "/orgs", key, org.id.as_str())),
        Err(e) => {
            let (status, message) = shown(cx, e)?;
            orgs_page(cx, status, Some(message)).await
        }
    }
}

// ---------------------------------------------------------------------------
// Users

#[derive(Debug, Serialize)]
struct UserRow {
    user_id: String,
    href: String,
    org: String,
    roles: String,
    number: &'static str,
    state: String,
    disabled: bool,
    last_login: String,
}

fn roles_text(lang: Lang, roles: impl Iterator<Item = Role>) -> String {
    let names: Vec<&str> = roles.map(|r| i18n::text(lang, role_key(r))).collect();
    names.join(if lang == Lang::Ja { "、" } else { ", " })
}

fn user_row(lang: Lang, u: &UserView) -> UserRow {
    let mut state = vec![label(
        lang,
        if u.disabled {
            "state_disabled"
        } else if u.locked_until.is_some() {
            "state_locked"
        } else {
            "state_active"
        },
    )];
    if u.temporary_password {
        state.push(label(lang, "state_temporary"));
    }
    UserRow {
        user_id: u.user_id.to_string(),
        href: format!("/users/{}", u.user_id),
        org: u.org.to_string(),
        roles: roles_text(lang, u.roles.iter().copied()),
        number: label(
            lang,
            if u.number_privilege {
                "allowed"
            } else {
                "not_allowed"
            },
        ),
        state: state.join(if lang == Lang::Ja { "、" } else { ", " }),
        disabled: u.disabled,
        last_login: u.last_login.as_ref().map_or_else(
            || i18n::text(lang, "none_yet").to_string(),
            |e| i18n::jst_of(e.at),
        ),
    }
}

async fn users_page(
    cx: &Cx<'_, '_>,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response<Body>, BrokerError> {
    let admin = admin(cx)?;
    let rows: Vec<UserRow> = admin
        .users()
        .await?
        .iter()
        .map(|u| user_row(cx.lang(), u))
        .collect();
    // The orgs a new user may belong to: every org for the union, else one's own.
    let orgs: Vec<String> = if admin.is_union().await? {
        admin
            .orgs()
            .await?
            .iter()
            .map(|o| o.id.to_string())
            .collect()
    } else {
        vec![admin.session.org.to_string()]
    };
    let roles: Vec<(&str, &str)> = Role::ALL
        .iter()
        .map(|r| (r.as_str(), i18n::text(cx.lang(), role_key(*r))))
        .collect();
    let own = context! {
        rows => Value::from(Serde(&rows)),
        orgs => orgs,
        roles => roles,
        notice => notice(cx, admin.session),
        error => error,
    };
    render(cx, status, "users_title", "users.html", Some("/users"), own).await
}

async fn user_add(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let form = cx.form()?;
    let lang = cx.lang();
    let parsed = (|| {
        let user_id = UserId::new(form.get("user_id").trim())
            .map_err(|_| typed_wrong_text(i18n::text(lang, "bad_user_id")))?;
        let org =
            OrgId::new(form.get("org").trim()).map_err(|_| typed_wrong(lang, "bad_org_id"))?;
        let roles: std::collections::BTreeSet<Role> = form
            .0
            .iter()
            .filter(|(k, _)| k == "role")
            .map(|(_, v)| v.parse::<Role>())
            .collect::<Result<_, _>>()
            .map_err(|_| typed_wrong(lang, "no_role"))?;
        if roles.is_empty() {
            return Err(typed_wrong(lang, "no_role"));
        }
        Ok::<_, BrokerError>(NewUser {
            user_id,
            org,
            roles,
            number_privilege: form.get("number_privilege") == "1",
        })
    })();
    let user_id = parsed.as_ref().map(|n| n.user_id.to_string()).ok();
    let outcome = match parsed {
        Ok(new) => admin(cx)?.add_user(new).await,
        Err(e) => Err(e),
    };
    match (outcome, user_id) {
        (Ok(password), Some(user_id)) => temporary_page(cx, &user_id, password.expose()).await,
        (Ok(_), None) => Err(BrokerError::Internal(
            "a user was added without an id".into(),
        )),
        (Err(e), _) => {
            let (status, message) = shown(cx, e)?;
            users_page(cx, status, Some(message)).await
        }
    }
}

/// The temporary password, shown this once (the page is never cached).
async fn temporary_page(
    cx: &Cx<'_, '_>,
    user_id: &str,
    password: &str,
) -> Result<Response<Body>, BrokerError> {
    let here = format!("/users/{user_id}");
    let own = context! { user_id => user_id, href => here.clone(), password => password };
    render(
        cx,
        StatusCode::OK,
        "temporary_title",
        "temporary.html",
        Some(&here),
        own,
    )
    .await
}

fn user_param(cx: &Cx<'_, '_>) -> Result<UserId, BrokerError> {
    Ok(UserId::new(cx.call.params.get("user_id"))?)
}

#[derive(Debug, Serialize)]
struct Privilege {
    name: &'static str,
    label: &'static str,
    held: bool,
}

async fn user_page(
    cx: &Cx<'_, '_>,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response<Body>, BrokerError> {
    let admin = admin(cx)?;
    let user = admin.managed_user(&user_param(cx)?).await?;
    let mut privileges: Vec<Privilege> = Role::ALL
        .iter()
        .map(|r| Privilege {
            name: r.as_str(),
            label: i18n::text(cx.lang(), role_key(*r)),
            held: user.roles.contains(r),
        })
        .collect();
    privileges.push(Privilege {
        name: "number_privilege",
        label: label(cx.lang(), "number_privilege"),
        held: user.number_privilege,
    });
    let here = format!("/users/{}", user.user_id);
    let own = context! {
        u => Value::from(Serde(user_row(cx.lang(), &user))),
        privileges => Value::from(Serde(&privileges)),
        notice => notice(cx, admin.session),
        error => error,
    };
    render(cx, status, "user_title", "user.html", Some(&here), own).await
}

async fn user_reset(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let user_id = user_param(cx)?;
    match admin(cx)?.reset(&user_id).await {
        Ok(password) => temporary_page(cx, user_id.as_str(), password.expose()).await,
        Err(e) => {
            let (status, message) = shown(cx, e)?;
            user_page(cx, status, Some(message)).await
        }
    }
}

async fn user_disabled(cx: &Cx<'_, '_>, disabled: bool) -> Result<Response<Body>, BrokerError> {
    let user_id = user_param(cx)?;
    match admin(cx)?.set_disabled(&user_id, disabled).await {
        Ok(user) => {
            let key = if disabled {
                "user_disabled"
            } else {
                "user_enabled"
            };
            let path = format!("/users/{}", user.user_id);
            Ok(done(cx.session()?, &path, key, user.user_id.as_str()))
        }
        Err(e) => {
            let (status, message) = shown(cx, e)?;
            user_page(cx, status, Some(message)).await
        }
    }
}

fn grant_field(typed: &str) -> Result<Grant, BrokerError> {
    if typed == "number_privilege" {
        return Ok(Grant::NumberPrivilege);
    }
    Ok(Grant::Role(typed.parse::<Role>()?))
}

async fn user_grant(cx: &Cx<'_, '_>, on: bool) -> Result<Response<Body>, BrokerError> {
    let user_id = user_param(cx)?;
    let outcome = match grant_field(cx.form()?.get("privilege")) {
        Ok(grant) => admin(cx)?.set_grant(&user_id, grant, on).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(user) => {
            let key = if on { "user_granted" } else { "user_revoked" };
            let path = format!("/users/{}", user.user_id);
            Ok(done(cx.session()?, &path, key, user.user_id.as_str()))
        }
        Err(e) => {
            let (status, message) = shown(cx, e)?;
            user_page(cx, status, Some(message)).await
        }
    }
}

// ---------------------------------------------------------------------------
// Flow-list versions

#[derive(Debug, Serialize)]
struct VersionRow {
    version: u64,
    href: String,
    status: &'static str,
    proposed: bool,
    proposed_by: String,
    proposed_at: String,
    approved_by: String,
    approved_at: String,
    sha: String,
}

fn version_row(lang: Lang, v: &VersionView) -> VersionRow {
    VersionRow {
        version: v.version,
        href: format!("/flows/{}", v.version),
        status: label(
            lang,
            match v.status {
                VersionStatus::Proposed => "flow_proposed",
                VersionStatus::InForce => "flow_in_force",
                VersionStatus::Superseded => "flow_superseded",
            },
        ),
        proposed: v.status == VersionStatus::Proposed,
        proposed_by: v.proposed_by.clone(),
        proposed_at: i18n::jst(&v.proposed_at),
        approved_by: v.approved_by.clone().unwrap_or_else(|| "—".into()),
        approved_at: v
            .approved_at
            .as_deref()
            .map_or_else(|| "—".into(), i18n::jst),
        sha: v.sha256.chars().take(12).collect(),
    }
}

#[derive(Debug, Serialize)]
struct DiffRow {
    flow_id: String,
    change: &'static str,
    fields: String,
}

fn diff_rows(lang: Lang, diff: &[FlowDiff]) -> Vec<DiffRow> {
    diff.iter()
        .map(|d| DiffRow {
            flow_id: d.flow_id.clone(),
            change: label(
                lang,
                match d.change {
                    FlowChange::Added => "change_added",
                    FlowChange::Removed => "change_removed",
                    FlowChange::Changed => "change_changed",
                },
            ),
            fields: d.fields.join(", "),
        })
        .collect()
}

fn version_number(text: &str) -> Result<u64, BrokerError> {
    text.trim().parse().map_err(|_| {
        BrokerError::refused(
            ErrorCode::InvalidInput,
            "版は番号（1, 2, …）で指定してください / version: must be a whole number (1, 2, …)",
        )
    })
}

async fn flows_page(
    cx: &Cx<'_, '_>,
    status: StatusCode,
    error: Option<String>,
    typed: Option<String>,
) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let pools = cx.console().state.store.pools();
    let versions = flow_changes::list(&pools).await?;
    let rows: Vec<VersionRow> = versions.iter().map(|v| version_row(cx.lang(), v)).collect();
    let latest = versions.iter().map(|v| v.version).max();
    // The comparison asked for (`?from=&to=`), else none.
    let (from, to) = (cx.param("from"), cx.param("to"));
    let mut compared = None;
    let mut error = error;
    if let (Some(a), Some(b)) = (&from, &to) {
        let outcome = match (version_number(a), version_number(b)) {
            (Ok(a), Ok(b)) => flow_changes::diff(&pools, a, b).await.map(|d| (a, b, d)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match outcome {
            Ok((a, b, diff)) => {
                let heading = label(cx.lang(), "diff_result")
                    .replace("{a}", &a.to_string())
                    .replace("{b}", &b.to_string());
                compared = Some(
                    context! { heading => heading, rows => Value::from(Serde(diff_rows(cx.lang(), &diff))) },
                );
            }
            Err(e) => error = Some(shown(cx, e)?.1),
        }
    }
    // The propose form starts from the latest version's text.
    let text = match (typed, latest) {
        (Some(typed), _) => typed,
        (None, Some(v)) => flow_changes::get(&pools, v).await?.text,
        (None, None) => String::new(),
    };
    let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
    let default_from = numbers.iter().rev().nth(1).or(numbers.last()).copied();
    let own = context! {
        rows => Value::from(Serde(&rows)),
        numbers => numbers,
        from => from.and_then(|f| f.parse::<u64>().ok()).or(default_from),
        to => to.and_then(|t| t.parse::<u64>().ok()).or(latest),
        compared => compared,
        text => text,
        notice => notice(cx, session),
        error => error,
    };
    render(cx, status, "flows_title", "flows.html", Some("/flows"), own).await
}

async fn flow_propose(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let text = cx.form()?.get("text").replace("\r\n", "\n");
    let outcome = match admin(cx)?.may_change_flow_lists().await {
        Ok(()) => {
            flow_changes::propose(
                &cx.console().state.store.pools(),
                &text,
                session.user_id.as_str(),
            )
            .await
        }
        Err(e) => Err(e),
    };
    let mut log = OpEntry::new(
        session.user_id.as_str(),
        OpAction::FlowListProposed,
        OpResult::of(&outcome),
    );
    log.org = Some(session.org.clone());
    log.source = Some(cx.source().to_string());
    if let Ok(proposed) = &outcome {
        log.target = Some(format!("version {}", proposed.version));
    }
    cx.log(log).await?;
    match outcome {
        Ok(proposed) => {
            let version = proposed.version.to_string();
            Ok(done(
                session,
                &format!("/flows/{version}"),
                "flow_proposed",
                &version,
            ))
        }
        Err(e) => {
            let (status, message) = shown(cx, e)?;
            flows_page(cx, status, Some(message), Some(text)).await
        }
    }
}

async fn flow_page(
    cx: &Cx<'_, '_>,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let pools = cx.console().state.store.pools();
    let version = version_number(cx.call.params.get("version"))?;
    let detail = flow_changes::get(&pools, version).await?;
    let in_force = flow_changes::in_force_version(&pools).await?;
    let diff = if in_force == 0 || in_force == version {
        None
    } else {
        let rows = diff_rows(
            cx.lang(),
            &flow_changes::diff(&pools, in_force, version).await?,
        );
        let heading = label(cx.lang(), "diff_from_in_force").replace("{a}", &in_force.to_string());
        Some(context! { heading => heading, rows => Value::from(Serde(rows)) })
    };
    let row = version_row(cx.lang(), &detail.view);
    let here = row.href.clone();
    let own = context! {
        v => Value::from(Serde(&row)),
        sha256 => detail.view.sha256.clone(),
        text => detail.text,
        diff => diff,
        notice => notice(cx, session),
        error => error,
    };
    render(cx, status, "flow_title", "flow.html", Some(&here), own).await
}

/// As `POST /api/flow-lists/{version}/approve`: a second administrator puts
/// the version in force (the proposer's own approval is refused).
async fn flow_approve(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let version = version_number(cx.call.params.get("version"))?;
    let state = &cx.console().state;
    let outcome = match admin(cx)?.may_approve_flow_list(version).await {
        Ok(()) => {
            flow_changes::approve(&state.store.pools(), version, session.user_id.as_str()).await
        }
        Err(e) => Err(e),
    };
    let mut log = OpEntry::new(
        session.user_id.as_str(),
        OpAction::FlowListApproved,
        OpResult::of(&outcome),
    );
    log.org = Some(session.org.clone());
    log.source = Some(cx.source().to_string());
    log.target = Some(format!("version {version}"));
    cx.log(log).await?;
    match outcome {
        Ok(approved) => {
            state.reload_flows().await?;
            let version = approved.version.to_string();
            Ok(done(
                session,
                &format!("/flows/{version}"),
                "flow_approved",
                &version,
            ))
        }
        Err(e) => {
            let (status, message) = shown(cx, e)?;
            flow_page(cx, status, Some(message)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_has_both_languages_and_one_key() {
        let mut keys = std::collections::BTreeSet::new();
        for (key, ja, en) in MESSAGES {
            assert!(keys.insert(*key), "{key} twice");
            assert!(!ja.is_empty() && !en.is_empty(), "{key}");
            assert_ne!(ja, en, "{key} is not translated");
        }
    }

    #[test]
    fn a_notice_needs_the_session_signature() {
        let a = signature("token-a", "org_suspended", "city-x");
        assert_ne!(a, signature("token-b", "org_suspended", "city-x"));
        assert_ne!(a, signature("token-a", "org_activated", "city-x"));
        assert_ne!(a, signature("token-a", "org_suspended", "city-y"));
    }

    /// Every template renders in both languages with what its handler
    /// gives it (a label missing from the table fails here), escapes what
    /// people typed, and has no inline script or style (CSP).
    #[test]
    fn every_page_renders_in_both_languages_without_inline_script() {
        use super::super::{i18n, render as draw, Frame, Who};
        let typed = "<script>alert(1)</script>";
        for (name, source) in TEMPLATES {
            let lower = source.to_ascii_lowercase();
            assert!(
                !lower.contains("<style") && !lower.contains(" style="),
                "{name}"
            );
            assert!(!lower.contains("<script"), "{name}");
            assert!(
                !lower.contains(" onclick=") && !lower.contains(" onsubmit="),
                "{name}"
            );
        }
        let org = OrgRow {
            id: "city-x".into(),
            kind: "k",
            name: typed.into(),
            active: true,
            status: "s",
            pin: Some("ab".repeat(32)),
        };
        let user = UserRow {
            user_id: "a.b".into(),
            href: "/users/a.b".into(),
            org: "city-x".into(),
            roles: "r".into(),
            number: "n",
            state: "s".into(),
            disabled: false,
            last_login: "l".into(),
        };
        let version = VersionRow {
            version: 2,
            href: "/flows/2".into(),
            status: "s",
            proposed: true,
            proposed_by: "a.b".into(),
            proposed_at: "t".into(),
            approved_by: "—".into(),
            approved_at: "—".into(),
            sha: "abc".into(),
        };
        let diff = vec![DiffRow {
            flow_id: "F-1".into(),
            change: "c",
            fields: "items".into(),
        }];
        for lang in [Lang::Ja, Lang::En] {
            let frame = Frame {
                lang: lang.code(),
                title: "t".into(),
                switch_ja: "/x?lang=ja".into(),
                switch_en: "/x?lang=en".into(),
                user: Some(Who {
                    user_id: "a.b".into(),
                    org: "union-x".into(),
                    org_name: None,
                    roles: "r".into(),
                }),
                csrf: "tok".into(),
                pending: None,
                nav: Vec::new(),
            };
            let page = |template: &str, own: Value| {
                let ctx = context! {
                    f => Value::from(Serde(&frame)),
                    t => i18n::table_value(lang),
                    a => labels(lang),
                    ..own
                };
                draw(template, ctx).unwrap()
            };
            for manages in [true, false] {
                let orgs = page(
                    "orgs.html",
                    context! { rows => Value::from(Serde(vec![&org])), kinds => vec![("union", "u")], manages => manages, notice => Some(typed), error => Some(typed) },
                );
                assert!(orgs.contains("city-x") && !orgs.contains(typed), "{orgs}");
                assert_eq!(orgs.contains("suspend-city-x"), manages);
            }
            page(
                "users.html",
                context! { rows => Value::from(Serde(vec![&user])), orgs => vec!["city-x"], roles => vec![("operator", "o")], notice => None::<String>, error => None::<String> },
            );
            let privileges = vec![Privilege {
                name: "operator",
                label: "o",
                held: true,
            }];
            page(
                "user.html",
                context! { u => Value::from(Serde(&user)), privileges => Value::from(Serde(&privileges)), notice => None::<String>, error => Some("e") },
            );
            let shown = page(
                "temporary.html",
                context! { user_id => "a.b", href => "/users/a.b", password => "Temp-1234-abcd" },
            );
            assert!(shown.contains("Temp-1234-abcd"));
            let compared = context! { heading => "h", rows => Value::from(Serde(&diff)) };
            page(
                "flows.html",
                context! { rows => Value::from(Serde(vec![&version])), numbers => vec![1, 2], from => 1, to => 2, compared => Some(compared.clone()), text => typed, notice => None::<String>, error => None::<String> },
            );
            page(
                "flows.html",
                context! { rows => Value::from(Serde(Vec::<VersionRow>::new())), numbers => Vec::<u64>::new(), from => None::<u64>, to => None::<u64>, compared => None::<Value>, text => "", notice => None::<String>, error => None::<String> },
            );
            let flow = page(
                "flow.html",
                context! { v => Value::from(Serde(&version)), sha256 => "ab", text => typed, diff => Some(compared), notice => None::<String>, error => Some("e") },
            );
            assert!(flow.contains("id=\"approve\"") && !flow.contains(typed));
        }
    }

    #[test]
    fn privileges_parse_from_the_form() {
        assert_eq!(
            grant_field("number_privilege").unwrap(),
            Grant::NumberPrivilege
        );
        assert_eq!(grant_field("auditor").unwrap(), Grant::Role(Role::Auditor));
        assert!(grant_field("root").is_err());
    }
}
