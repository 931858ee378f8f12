//! Every endpoint of the console listener, in one table, and the stack a
//! request goes through to reach one:
//!
//! ```text
//! observe → route → rate limit (per address) → body cap → session → access (stage, role) → CSRF → endpoint
//! ```
//!
//! To add an endpoint: a variant of [`Endpoint`], a row in [`TABLE`] with
//! the roles that may call it, and an arm in [`run`] calling its file.

use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::ErrorCode;

use crate::console::access::{Access, Denied, ADMINISTRATORS, AUDITORS, OPERATORS};
use crate::console::pages::admin::AdminPage;
use crate::console::pages::{self, Page};
use crate::console::{admin, approvals, audit, flows, records, session, Console, ConsoleConn};
use crate::edge::http::{self as edge, Body};
use crate::edge::layers::{self, BodyCap, Refused, Stop};
use crate::edge::refusal::Reason;
use crate::edge::route::{BodyLimit, Params, Route};
use crate::error::BrokerError;
use crate::exchange::{endpoints::endpoint_error, ops};
use crate::people::SessionView;

/// The console's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /healthz`
    Healthz,
    /// `GET /readyz`
    Readyz,
    /// `GET /metrics`
    Metrics,
    /// `GET /api/keys`: the keys that verify records and exports offline.
    Keys,
    /// `POST /api/session`: log in with user id and password.
    Login,
    /// `GET /api/session`: who is logged in, at which stage.
    SessionShow,
    /// `DELETE /api/session`: log out.
    Logout,
    /// `POST /api/session/password`: change the password.
    PasswordChange,
    /// `POST /api/session/totp/enrolment`: a new TOTP secret (QR code).
    TotpEnrol,
    /// `POST /api/session/totp`: a TOTP code (confirms enrolment or login).
    Totp,
    /// `GET /api/approvals`: the org's pending sensitive queries.
    Approvals,
    /// `GET /api/approvals/{query_id}`: one, with the values to release.
    Approval,
    /// `POST /api/approvals/{query_id}/approve`
    Approve,
    /// `POST /api/approvals/{query_id}/reject`
    Reject,
    /// `GET /api/operation-log`: search the operation log.
    OperationLog,
    /// `GET /api/users`: the users (administrators).
    Users,
    /// `GET /api/records`: search provision records (auditors).
    Records,
    /// `POST /api/records/export`: make an export that verifies offline
    /// (a `POST`: it writes the operation log and keeps files).
    RecordsExport,
    /// `GET /api/records/export/{id}/{file}`: download one of its files.
    RecordsDownload,
    /// `GET /api/flow-lists`: every flow-list version.
    FlowLists,
    /// `GET /api/flow-lists/{version}`: one, with its diff from the one in force.
    FlowList,
    /// `POST /api/flow-lists`: propose a version.
    FlowListPropose,
    /// `POST /api/flow-lists/{version}/approve`: a second administrator approves.
    FlowListApprove,
    /// An HTML page for people in a browser (`console/pages`).
    Page(Page),
    /// Administrators' changes to users and orgs (`console/admin.rs`).
    Admin(admin::Api),
}

impl Endpoint {
    /// The `route` label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Healthz => "console_healthz",
            Endpoint::Readyz => "console_readyz",
            Endpoint::Metrics => "console_metrics",
            Endpoint::Keys => "console_keys",
            Endpoint::Login => "console_login",
            Endpoint::SessionShow => "console_session",
            Endpoint::Logout => "console_logout",
            Endpoint::PasswordChange => "console_password",
            Endpoint::TotpEnrol => "console_totp_enrolment",
            Endpoint::Totp => "console_totp",
            Endpoint::Approvals => "console_approvals",
            Endpoint::Approval => "console_approval",
            Endpoint::Approve => "console_approve",
            Endpoint::Reject => "console_reject",
            Endpoint::OperationLog => "console_operation_log",
            Endpoint::Users => "console_users",
            Endpoint::Records => "console_records",
            Endpoint::RecordsExport => "console_records_export",
            Endpoint::RecordsDownload => "console_records_download",
            Endpoint::FlowLists => "console_flow_lists",
            Endpoint::FlowList => "console_flow_list",
            Endpoint::FlowListPropose => "console_flow_list_propose",
            Endpoint::FlowListApprove => "console_flow_list_approve",
            Endpoint::Page(page) => page.name(),
            Endpoint::Admin(api) => api.name(),
        }
    }
}

const fn row(
    method: Method,
    path: &'static str,
    access: Access,
    body: BodyLimit,
    endpoint: Endpoint,
) -> Route<Endpoint, Access> {
    Route {
        method,
        path,
        caller: access,
        body,
        endpoint,
    }
}

/// The small JSON bodies people endpoints take (a POST without fields may
/// still carry `{}`, as browsers' fetch calls do).
const SMALL: BodyLimit = BodyLimit::Bytes(4 * 1024);
use Access::{LoggingIn, Public, Roles};
use BodyLimit::Empty;

/// The console listener's endpoints: method, path, who, body, endpoint.
pub const TABLE: &[Route<Endpoint, Access>] = &[
    row(Method::GET, "/healthz", Public, Empty, Endpoint::Healthz),
    row(Method::GET, "/readyz", Public, Empty, Endpoint::Readyz),
    row(Method::GET, "/metrics", Public, Empty, Endpoint::Metrics),
    row(Method::GET, "/api/keys", Public, Empty, Endpoint::Keys),
    row(Method::POST, "/api/session", Public, SMALL, Endpoint::Login),
    row(
        Method::GET,
        "/api/session",
        LoggingIn,
        Empty,
        Endpoint::SessionShow,
    ),
    row(
        Method::DELETE,
        "/api/session",
        LoggingIn,
        Empty,
        Endpoint::Logout,
    ),
    row(
        Method::POST,
        "/api/session/password",
        LoggingIn,
        SMALL,
        Endpoint::PasswordChange,
    ),
    row(
        Method::POST,
        "/api/session/totp/enrolment",
        LoggingIn,
        SMALL,
        Endpoint::TotpEnrol,
    ),
    row(
        Method::POST,
        "/api/session/totp",
        LoggingIn,
        SMALL,
        Endpoint::Totp,
    ),
    row(
        Method::GET,
        "/api/approvals",
        Roles(OPERATORS),
        Empty,
        Endpoint::Approvals,
    ),
    row(
        Method::GET,
        "/api/approvals/{query_id}",
        Roles(OPERATORS),
        Empty,
        Endpoint::Approval,
    ),
    row(
        Method::POST,
        "/api/approvals/{query_id}/approve",
        Roles(OPERATORS),
        SMALL,
        Endpoint::Approve,
    ),
    row(
        Method::POST,
        "/api/approvals/{query_id}/reject",
        Roles(OPERATORS),
        SMALL,
        Endpoint::Reject,
    ),
    row(
        Method::GET,
        "/api/operation-log",
        Roles(AUDITORS),
        Empty,
        Endpoint::OperationLog,
    ),
    row(
        Method::GET,
        "/api/records",
        Roles(AUDITORS),
        Empty,
        Endpoint::Records,
    ),
    row(
        Method::POST,
        "/api/records/export",
        Roles(AUDITORS),
        SMALL,
        Endpoint::RecordsExport,
    ),
    row(
        Method::GET,
        "/api/records/export/{id}/{file}",
        Roles(AUDITORS),
        Empty,
        Endpoint::RecordsDownload,
    ),
    row(
        Method::GET,
        "/api/users",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::Users,
    ),
    row(
        Method::GET,
        "/api/flow-lists",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::FlowLists,
    ),
    row(
        Method::GET,
        "/api/flow-lists/{version}",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::FlowList,
    ),
    row(
        Method::POST,
        "/api/flow-lists",
        Roles(ADMINISTRATORS),
        BodyLimit::Configured,
        Endpoint::FlowListPropose,
    ),
    row(
        Method::POST,
        "/api/flow-lists/{version}/approve",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::FlowListApprove,
    ),
    // Administrators' changes to users and orgs (`console/admin.rs`).
    row(
        Method::POST,
        "/api/users",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::UserAdd),
    ),
    row(
        Method::POST,
        "/api/users/{user_id}/reset",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::UserReset),
    ),
    row(
        Method::POST,
        "/api/users/{user_id}/disable",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::UserDisable),
    ),
    row(
        Method::POST,
        "/api/users/{user_id}/enable",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::UserEnable),
    ),
    row(
        Method::POST,
        "/api/users/{user_id}/grant",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::UserGrant),
    ),
    row(
        Method::POST,
        "/api/users/{user_id}/revoke",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::UserRevoke),
    ),
    row(
        Method::GET,
        "/api/orgs",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::Admin(admin::Api::Orgs),
    ),
    row(
        Method::POST,
        "/api/orgs",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::OrgAdd),
    ),
    row(
        Method::POST,
        "/api/orgs/{org}/suspend",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::OrgSuspend),
    ),
    row(
        Method::POST,
        "/api/orgs/{org}/activate",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::OrgActivate),
    ),
    row(
        Method::POST,
        "/api/orgs/{org}/pin",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Admin(admin::Api::OrgPin),
    ),
    // The pages people use in a browser: the same access as their API
    // equivalents; forms carry their CSRF token in the `csrf` field.
    row(Method::GET, "/", Public, Empty, Endpoint::Page(Page::Root)),
    row(
        Method::GET,
        "/login",
        Public,
        Empty,
        Endpoint::Page(Page::Login),
    ),
    row(
        Method::POST,
        "/login",
        Public,
        SMALL,
        Endpoint::Page(Page::LoginSubmit),
    ),
    row(
        Method::GET,
        "/login/password",
        LoggingIn,
        Empty,
        Endpoint::Page(Page::Password),
    ),
    row(
        Method::POST,
        "/login/password",
        LoggingIn,
        SMALL,
        Endpoint::Page(Page::PasswordSubmit),
    ),
    row(
        Method::GET,
        "/login/totp",
        LoggingIn,
        Empty,
        Endpoint::Page(Page::Totp),
    ),
    row(
        Method::POST,
        "/login/totp",
        LoggingIn,
        SMALL,
        Endpoint::Page(Page::TotpSubmit),
    ),
    row(
        Method::POST,
        "/logout",
        LoggingIn,
        SMALL,
        Endpoint::Page(Page::Logout),
    ),
    row(
        Method::GET,
        "/approvals",
        Roles(OPERATORS),
        Empty,
        Endpoint::Page(Page::Queue),
    ),
    row(
        Method::GET,
        "/approvals/{query_id}",
        Roles(OPERATORS),
        Empty,
        Endpoint::Page(Page::Detail),
    ),
    row(
        Method::POST,
        "/approvals/{query_id}/approve",
        Roles(OPERATORS),
        SMALL,
        Endpoint::Page(Page::Approve),
    ),
    row(
        Method::POST,
        "/approvals/{query_id}/reject",
        Roles(OPERATORS),
        SMALL,
        Endpoint::Page(Page::Reject),
    ),
    // The auditor's pages (`console/pages/audit.rs`).
    row(
        Method::GET,
        "/records",
        Roles(AUDITORS),
        Empty,
        Endpoint::Page(Page::Records),
    ),
    row(
        Method::POST,
        "/records/export",
        Roles(AUDITORS),
        SMALL,
        Endpoint::Page(Page::RecordsExport),
    ),
    row(
        Method::GET,
        "/operation-log",
        Roles(AUDITORS),
        Empty,
        Endpoint::Page(Page::OperationLog),
    ),
    row(
        Method::GET,
        "/keys",
        Roles(AUDITORS),
        Empty,
        Endpoint::Page(Page::Keys),
    ),
    // The administrator's pages (`console/pages/admin.rs`).
    row(
        Method::GET,
        "/orgs",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::Page(Page::Admin(AdminPage::Orgs)),
    ),
    row(
        Method::POST,
        "/orgs",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::OrgAdd)),
    ),
    row(
        Method::POST,
        "/orgs/{org}/suspend",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::OrgSuspend)),
    ),
    row(
        Method::POST,
        "/orgs/{org}/activate",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::OrgActivate)),
    ),
    row(
        Method::POST,
        "/orgs/{org}/pin",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::OrgPin)),
    ),
    row(
        Method::GET,
        "/users",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::Page(Page::Admin(AdminPage::Users)),
    ),
    row(
        Method::POST,
        "/users",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::UserAdd)),
    ),
    row(
        Method::GET,
        "/users/{user_id}",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::Page(Page::Admin(AdminPage::User)),
    ),
    row(
        Method::POST,
        "/users/{user_id}/reset",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::UserReset)),
    ),
    row(
        Method::POST,
        "/users/{user_id}/disable",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::UserDisable)),
    ),
    row(
        Method::POST,
        "/users/{user_id}/enable",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::UserEnable)),
    ),
    row(
        Method::POST,
        "/users/{user_id}/grant",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::UserGrant)),
    ),
    row(
        Method::POST,
        "/users/{user_id}/revoke",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::UserRevoke)),
    ),
    row(
        Method::GET,
        "/flows",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::Page(Page::Admin(AdminPage::Flows)),
    ),
    row(
        Method::POST,
        "/flows",
        Roles(ADMINISTRATORS),
        BodyLimit::Configured,
        Endpoint::Page(Page::Admin(AdminPage::FlowPropose)),
    ),
    row(
        Method::GET,
        "/flows/{version}",
        Roles(ADMINISTRATORS),
        Empty,
        Endpoint::Page(Page::Admin(AdminPage::Flow)),
    ),
    row(
        Method::POST,
        "/flows/{version}/approve",
        Roles(ADMINISTRATORS),
        SMALL,
        Endpoint::Page(Page::Admin(AdminPage::FlowApprove)),
    ),
    row(
        Method::GET,
        "/static/console.css",
        Public,
        Empty,
        Endpoint::Page(Page::Css),
    ),
    row(
        Method::GET,
        "/static/console.js",
        Public,
        Empty,
        Endpoint::Page(Page::Js),
    ),
];

/// The header a state-changing call carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// One request past the edge, as an endpoint sees it.
pub struct Call<'a> {
    /// The console.
    pub console: &'a Console,
    /// The connection.
    pub conn: &'a ConsoleConn,
    /// The session id presented (cookie), if any.
    pub token: Option<String>,
    /// The session, for every endpoint but the public ones.
    pub session: Option<SessionView>,
    /// Path placeholders.
    pub params: Params,
    /// The body the endpoint may read.
    pub body: BodyCap,
    /// The request id.
    pub request_id: &'a str,
    /// A page's form, read (and its CSRF field checked) by the stack.
    pub form: Option<pages::Form>,
}

impl Call<'_> {
    /// The session; endpoints behind a session are reached with one.
    pub fn session(&self) -> Result<&SessionView, BrokerError> {
        self.session
            .as_ref()
            .ok_or_else(|| BrokerError::Internal("a session endpoint ran without one".into()))
    }

    /// The session id presented.
    pub fn token(&self) -> Result<&str, BrokerError> {
        self.token
            .as_deref()
            .ok_or_else(|| BrokerError::Internal("a session endpoint ran without its id".into()))
    }

    /// Reads the body within the endpoint's cap and the body timeout.
    pub async fn read_body(&self, req: Request<Incoming>) -> Result<bytes::Bytes, BrokerError> {
        edge::read_body(
            req.into_body(),
            self.body.declared,
            self.body.max,
            self.console.state.config.limits.body_read_timeout(),
        )
        .await
    }
}

/// Serves one request of the console listener.
pub async fn handle(
    console: Arc<Console>,
    conn: Arc<ConsoleConn>,
    req: Request<Incoming>,
) -> Response<Body> {
    let found = layers::route(TABLE, req.method(), req.uri().path());
    let name = found
        .as_ref()
        .map_or("console_other", |(r, _)| r.endpoint.name());
    let state = console.state.clone();
    // A person's browser is answered with pages, refusals included.
    let page = pages::PageRequest::of(
        &req,
        found
            .as_ref()
            .is_ok_and(|(r, _)| matches!(r.endpoint, Endpoint::Page(_))),
    );
    layers::observe(&state.metrics, name, async |request_id: &str| {
        let who = conn.peer.ip().to_string();
        let mut response = match stack(&console, &conn, found, req, request_id).await {
            Ok(response) => response,
            Err(Stop::Refused(refused)) => refused.respond(&state.metrics, request_id, &who),
            Err(Stop::Failed(e)) => endpoint_error(&state, &e, request_id, &who),
        };
        if page.is_page() {
            response = pages::as_page(&console, &page, response).await;
        }
        // Nothing a person sees on the console is cached or framed.
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            header::HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::X_FRAME_OPTIONS,
            header::HeaderValue::from_static("DENY"),
        );
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            header::HeaderValue::from_static("max-age=31536000"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            header::HeaderValue::from_static("no-referrer"),
        );
        response
    })
    .await
}

async fn stack(
    console: &Console,
    conn: &ConsoleConn,
    found: Result<(&'static Route<Endpoint, Access>, Params), Refused>,
    mut req: Request<Incoming>,
    request_id: &str,
) -> Result<Response<Body>, Stop> {
    let (route, params) = found?;
    layers::rate_limit(&console.limits, None, conn.peer.ip())?;
    let state = &console.state;
    let body = layers::body_cap(
        req.headers(),
        route.body.max_bytes(state.config.console.max_body_bytes),
    )?;
    let form_page = matches!(route.endpoint, Endpoint::Page(page) if page.takes_form());
    if route.body != BodyLimit::Empty {
        let accepted: &[&str] = if form_page {
            &["application/x-www-form-urlencoded"]
        } else {
            &["application/json"]
        };
        layers::content_type(&req, accepted)?;
    }
    // Every `Cookie` header: browsers speaking HTTP/2 send one per cookie.
    let token =
        pages::cookie(req.headers(), crate::people::session::SESSION_COOKIE).map(str::to_string);
    let session = if route.caller.needs_session() {
        Some(authenticate(console, conn, token.as_deref()).await?)
    } else {
        None
    };
    if let Some(session) = &session {
        let roles: Vec<_> = session.privileges.roles.iter().copied().collect();
        route
            .caller
            .admits(session.stage, &roles)
            .map_err(|denied| match denied {
                Denied::LoginUnfinished => Refused::new(
                    Reason::SessionRequired,
                    ErrorCode::SessionRequired,
                    "ログインが完了していません（パスワード変更または確認コードが必要です） / the login is not finished: change the password or enter the TOTP code first",
                ),
                Denied::Role => Refused::new(
                    Reason::RoleNotAllowed,
                    ErrorCode::Forbidden,
                    "この操作の権限がありません / your roles do not allow this",
                ),
            })?;
    }
    // A page's form is read here, so that its CSRF field is checked with
    // every other state-changing call before any endpoint runs.
    let form = if form_page {
        let timeout = state.config.limits.body_read_timeout();
        Some(pages::read_form(&mut req, body, timeout).await?)
    } else {
        None
    };
    csrf(&req, session.as_ref(), form.as_ref())?;
    let call = Call {
        console,
        conn,
        token,
        session,
        params,
        body,
        request_id,
        form,
    };
    Ok(run(route.endpoint, &call, req).await?)
}

/// Every state-changing call proves it comes from the console's own page
/// (the cookie alone could be sent by another site's form): a JSON call in
/// the `X-CSRF-Token` header, a page's form in its `csrf` field, and the
/// login form, before any session exists, with the token its page set in
/// a cookie.
fn csrf(
    req: &Request<Incoming>,
    session: Option<&SessionView>,
    form: Option<&pages::Form>,
) -> Result<(), Refused> {
    if req.method() == Method::GET {
        return Ok(());
    }
    let proven = match (session, form) {
        (Some(session), Some(form)) => session.csrf_matches(form.get(pages::CSRF_FIELD)),
        (Some(session), None) => session.csrf_matches(
            req.headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        ),
        (None, Some(form)) => pages::login_csrf_matches(req.headers(), form),
        // The public JSON login: no session yet to act for.
        (None, None) => true,
    };
    if proven {
        return Ok(());
    }
    let message = match form {
        Some(_) => "このフォームは古いか、このコンソールのものではありません。ページを読み込み直してください / the form is stale or not from this console; reload the page and send it again",
        None => "CSRFトークンがありません、または一致しません / missing or wrong CSRF token (header X-CSRF-Token)",
    };
    Err(Refused::new(
        Reason::CsrfMismatch,
        ErrorCode::Forbidden,
        message,
    ))
}

/// The session a cookie names, or `session_required`.
async fn authenticate(
    console: &Console,
    conn: &ConsoleConn,
    token: Option<&str>,
) -> Result<SessionView, Stop> {
    let missing = || {
        Refused::new(
            Reason::SessionRequired,
            ErrorCode::SessionRequired,
            "ログインしてください / log in first (no session, or it timed out)",
        )
    };
    let Some(token) = token else {
        return Err(missing().into());
    };
    match console.people.authenticate(token).await {
        Ok(session) => {
            // An org suspended is suspended for its people too: its
            // operators decide nothing, its auditors read nothing, its
            // administrators change nothing (as on the exchange).
            let org = console
                .state
                .directory
                .lookup(&session.org)
                .await
                .map_err(Stop::from)?;
            if org.is_some_and(|o| o.status != kakehashi_interfaces::OrgStatus::Active) {
                return Err(Refused::new(
                    Reason::OrgSuspended,
                    ErrorCode::OrgSuspended,
                    "所属団体が利用停止中です / your org is suspended; ask the broker's administrator",
                )
                .into());
            }
            Ok(session)
        }
        Err(e) => {
            let error = BrokerError::from(e);
            if error.code() == ErrorCode::Internal {
                return Err(error.into());
            }
            let _ = conn;
            let mut refused = missing();
            refused.code = error.code();
            refused.message = error.public_message();
            Err(refused.into())
        }
    }
}

/// Runs an endpoint.
async fn run(
    endpoint: Endpoint,
    call: &Call<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    let state = &call.console.state;
    match endpoint {
        Endpoint::Healthz => Ok(ops::healthz()),
        Endpoint::Readyz => Ok(ops::readyz(state, call.request_id).await),
        Endpoint::Metrics => Ok(ops::metrics(state)),
        Endpoint::Keys => Ok(edge::json(StatusCode::OK, &audit::keys(state))),
        Endpoint::Login => session::login(call, req).await,
        Endpoint::SessionShow => Ok(edge::json(StatusCode::OK, &call.session()?.answer())),
        Endpoint::Logout => session::logout(call).await,
        Endpoint::PasswordChange => session::change_password(call, req).await,
        Endpoint::TotpEnrol => session::enrol(call).await,
        Endpoint::Totp => session::totp(call, req).await,
        Endpoint::Approvals => approvals::queue(call).await,
        Endpoint::Approval => approvals::detail(call).await,
        Endpoint::Approve => approvals::approve(call).await,
        Endpoint::Reject => approvals::reject(call, req).await,
        Endpoint::OperationLog => audit::operation_log(call, req.uri().query()).await,
        Endpoint::Users => admin::users(call).await,
        Endpoint::Records => records::search(call, req.uri().query()).await,
        Endpoint::RecordsExport => records::export(call, req.uri().query()).await,
        Endpoint::RecordsDownload => records::download(call).await,
        Endpoint::FlowLists => flows::list(call).await,
        Endpoint::FlowList => flows::show(call).await,
        Endpoint::FlowListPropose => flows::propose(call, req).await,
        Endpoint::FlowListApprove => flows::approve(call).await,
        Endpoint::Page(page) => Ok(pages::serve(page, call, req).await),
        Endpoint::Admin(api) => admin::run(api, call, req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_exactly_one_row_and_a_distinct_name() {
        crate::edge::route::assert_well_formed(TABLE, Endpoint::name);
    }

    #[test]
    fn only_health_keys_and_login_are_public() {
        for route in TABLE {
            let public = matches!(
                route.endpoint,
                Endpoint::Healthz
                    | Endpoint::Readyz
                    | Endpoint::Metrics
                    | Endpoint::Keys
                    | Endpoint::Login
            ) || matches!(route.endpoint, Endpoint::Page(page) if page.is_public());
            assert_eq!(public, route.caller == Public, "{}", route.path);
        }
    }

    #[test]
    fn people_paths_live_under_api_and_never_under_the_exchange_prefix() {
        for route in TABLE {
            assert!(!route.path.starts_with("/v1/"), "{}", route.path);
        }
        for route in crate::exchange::endpoints::TABLE {
            assert!(!route.path.starts_with("/api/"), "{}", route.path);
        }
    }

    /// The published contract (JSON Schema, interfaces README) lists every
    /// people endpoint the broker serves, and nothing else.
    #[test]
    fn the_schema_lists_exactly_the_console_table() {
        crate::edge::route::assert_published(
            TABLE,
            "/api/",
            &kakehashi_interfaces::schema::CONSOLE_ENDPOINTS,
        );
    }

    #[test]
    fn any_role_constant_covers_every_role() {
        assert_eq!(
            crate::console::access::ANY_ROLE.len(),
            kakehashi_interfaces::people::Role::ALL.len()
        );
    }
}
