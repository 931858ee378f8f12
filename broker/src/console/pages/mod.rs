//! The console's pages: server-rendered HTML on the console listener for
//! people working in a browser, Japanese first with English.
//!
//! - [`login`]: user id and password, a new password when the one in force
//!   is temporary, TOTP enrolment (QR code and the otpauth URI as text), the
//!   TOTP code, logout;
//! - [`approvals`]: the operator's queue, a query's values, approve, reject
//!   with a reason, the decision with its record number;
//! - [`audit`]: the auditor's record search, export download, operation
//!   log and checkpoint key;
//! - [`admin`]: the administrator's orgs, users and flow-list versions;
//! - [`i18n`]: the ja/en labels, JST, numbers.
//!
//! Every page is a row of the console's endpoint table
//! (`console/endpoints.rs`) with the same access as its JSON equivalent,
//! and calls the same library functions ([`crate::people`],
//! [`crate::approvals`]) and writes the same operation-log entries. Forms
//! post plain `application/x-www-form-urlencoded` bodies, work without
//! JavaScript and answer with a 303 redirect; the stack reads a form and
//! checks its hidden `csrf` field before the page runs. Templates
//! (minijinja, HTML auto-escaping on), the stylesheet and the script are
//! compiled into the binary: no CDN, no internet.

pub mod admin;
mod approvals;
mod audit;
pub mod i18n;
mod login;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use kakehashi_interfaces::{ErrorBody, ErrorCode};
use minijinja::value::{Serde, Value};
use minijinja::{context, Environment, UndefinedBehavior};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::approvals as decide;
use crate::console::endpoints::Call;
use crate::console::Console;
use crate::edge::http::{self as edge, Body};
use crate::edge::layers::BodyCap;
use crate::error::BrokerError;
use crate::exchange::endpoints::endpoint_error;
use crate::oplog::{OpAction, OpEntry, OpResult};
use crate::people::{session as cookies, PeopleError, Role, SessionView, Stage};

use i18n::{text, Lang};

/// The Content-Security-Policy of every page: nothing inline, nothing from
/// elsewhere, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The cookie holding the login form's CSRF token before any session
/// exists (checked against the form's `csrf` field). `__Host-` as the
/// session cookie, so that no sibling subdomain can plant a token of its own.
pub const LOGIN_COOKIE: &str = "__Host-kakehashi_login";

/// The form field every page form carries its CSRF token in.
pub const CSRF_FIELD: &str = "csrf";

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("password.html", include_str!("templates/password.html")),
    ("totp.html", include_str!("templates/totp.html")),
    ("approvals.html", include_str!("templates/approvals.html")),
    ("approval.html", include_str!("templates/approval.html")),
    ("home.html", include_str!("templates/home.html")),
    ("records.html", include_str!("templates/records.html")),
    ("export.html", include_str!("templates/export.html")),
    ("oplog.html", include_str!("templates/oplog.html")),
    ("keys.html", include_str!("templates/keys.html")),
    ("error.html", include_str!("templates/error.html")),
];

/// A page endpoint of the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `GET /`: to the login step due, or the person's home.
    Root,
    /// `GET /login`
    Login,
    /// `POST /login`: user id and password.
    LoginSubmit,
    /// `GET /login/password`
    Password,
    /// `POST /login/password`
    PasswordSubmit,
    /// `GET /login/totp`: the code form, with the QR code while enrolling.
    Totp,
    /// `POST /login/totp`
    TotpSubmit,
    /// `POST /logout`
    Logout,
    /// `GET /approvals`: the org's queue.
    Queue,
    /// `GET /approvals/{query_id}`: one query with the values to release.
    Detail,
    /// `POST /approvals/{query_id}/approve`
    Approve,
    /// `POST /approvals/{query_id}/reject`
    Reject,
    /// `GET /records`: the auditor's record search.
    Records,
    /// `POST /records/export`: an export of the search's selection.
    RecordsExport,
    /// `GET /operation-log`: the operation log with filters.
    OperationLog,
    /// `GET /keys`: the checkpoint key and the offline verification command.
    Keys,
    /// The administrator's pages (orgs, users, flow-list versions).
    Admin(admin::AdminPage),
    /// `GET /static/console.css`
    Css,
    /// `GET /static/console.js`
    Js,
}

impl Page {
    /// The `route` label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Page::Root => "console_page_root",
            Page::Login => "console_page_login",
            Page::LoginSubmit => "console_page_login_submit",
            Page::Password => "console_page_password",
            Page::PasswordSubmit => "console_page_password_submit",
            Page::Totp => "console_page_totp",
            Page::TotpSubmit => "console_page_totp_submit",
            Page::Logout => "console_page_logout",
            Page::Queue => "console_page_approvals",
            Page::Detail => "console_page_approval",
            Page::Approve => "console_page_approve",
            Page::Reject => "console_page_reject",
            Page::Records => "console_page_records",
            Page::RecordsExport => "console_page_records_export",
            Page::OperationLog => "console_page_operation_log",
            Page::Keys => "console_page_keys",
            Page::Admin(page) => page.name(),
            Page::Css => "console_static_css",
            Page::Js => "console_static_js",
        }
    }

    /// Whether the page takes a form (and so its CSRF token in the form's
    /// `csrf` field rather than a header).
    pub fn takes_form(self) -> bool {
        matches!(
            self,
            Page::LoginSubmit
                | Page::PasswordSubmit
                | Page::TotpSubmit
                | Page::Logout
                | Page::Approve
                | Page::Reject
                | Page::RecordsExport
        ) || matches!(self, Page::Admin(page) if page.takes_form())
    }

    /// Whether anyone may open it (no session needed).
    pub fn is_public(self) -> bool {
        matches!(
            self,
            Page::Root | Page::Login | Page::LoginSubmit | Page::Css | Page::Js
        )
    }
}

/// The fields of a page's form. Values (passwords among them) are wiped
/// when the form is dropped; `Debug` shows field names only.
pub struct Form(Vec<(String, Zeroizing<String>)>);

impl Form {
    /// Parses an `application/x-www-form-urlencoded` body.
    pub fn parse(bytes: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
                .collect(),
        )
    }

    /// The first value of field `name`, or "" when absent.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Reads a form body within the endpoint's cap and the body timeout,
/// leaving the request (without its body) to the page.
pub async fn read_form(
    req: &mut Request<Incoming>,
    cap: BodyCap,
    timeout: Duration,
) -> Result<Form, BrokerError> {
    let too_large = || {
        BrokerError::refused(
            ErrorCode::PayloadTooLarge,
            format!(
                "フォームが大きすぎます / the form is larger than {} bytes",
                cap.max
            ),
        )
    };
    if cap.declared.is_some_and(|len| len > cap.max) {
        return Err(too_large());
    }
    let limit = usize::try_from(cap.max).unwrap_or(usize::MAX);
    let read = Limited::new(req.body_mut(), limit).collect();
    let bytes = match tokio::time::timeout(timeout, read).await {
        Err(_) => {
            return Err(BrokerError::refused(
                ErrorCode::InvalidInput,
                "フォームを時間内に受信できませんでした / the form was not received in time",
            ))
        }
        Ok(Ok(collected)) => Zeroizing::new(collected.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(_)) => {
            return Err(BrokerError::refused(
                ErrorCode::InvalidInput,
                "フォームを読み取れませんでした / the form could not be read",
            ))
        }
    };
    Ok(Form::parse(&bytes))
}

/// The value of cookie `name` in the request (every `Cookie` header: HTTP/2
/// clients may send one per cookie).
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name && !value.is_empty()).then_some(value)
        })
}

/// Whether a form's token is the one the login page set in its cookie
/// (login forms come before any session exists).
pub fn login_csrf_matches(headers: &HeaderMap, form: &Form) -> bool {
    cookie(headers, LOGIN_COOKIE)
        .is_some_and(|expected| cookies::csrf_matches(expected, form.get(CSRF_FIELD)))
}

/// What a request for a page looked like, kept before the stack consumes
/// it, so that a refusal of the stack can be shown as a page. No `Debug`:
/// it holds the session cookie.
#[derive(Clone)]
pub struct PageRequest {
    lang: Lang,
    path: String,
    query: Option<String>,
    token: Option<String>,
    page: bool,
}

impl PageRequest {
    /// Notes the request; `endpoint_is_page` when its route is a page.
    pub fn of<B>(req: &Request<B>, endpoint_is_page: bool) -> PageRequest {
        let headers = req.headers();
        // A path no row has, asked for by a browser's navigation, gets a page too.
        let browser = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
        PageRequest {
            lang: Lang::of(headers),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            token: cookie(headers, cookies::SESSION_COOKIE).map(str::to_string),
            page: endpoint_is_page || (browser && !req.uri().path().starts_with("/api/")),
        }
    }

    /// Whether the answer is for a person's browser.
    pub fn is_page(&self) -> bool {
        self.page
    }
}

/// Shows a JSON refusal of the stack (no session, wrong role, stale form,
/// unknown path …) as a page in the person's language; a missing session
/// goes to `/`, which leads to the login step due. Other answers pass.
pub async fn as_page(
    console: &Console,
    request: &PageRequest,
    response: Response<Body>,
) -> Response<Body> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || !is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let Ok(error) = serde_json::from_slice::<ErrorBody>(&bytes) else {
        return Response::from_parts(parts, Body::new(bytes));
    };
    if error.code == ErrorCode::SessionRequired {
        return redirect("/");
    }
    // Who is logged in, for the top bar (not while throttled: no extra work then).
    let session = match (&request.token, error.code) {
        (_, ErrorCode::RateLimited) | (None, _) => None,
        (Some(token), _) => console.people.authenticate(token).await.ok(),
    };
    let here = match &request.query {
        Some(q) => format!("{}?{q}", request.path),
        None => request.path.clone(),
    };
    let view = View {
        console,
        lang: request.lang,
        here: &here,
    };
    let mut page = view
        .error_page(
            status,
            &error.code,
            &error.message,
            &error.request_id,
            session.as_ref(),
        )
        .await;
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            page.headers_mut().insert(name.clone(), value.clone());
        }
    }
    page
}

/// Serves a page. Its errors are shown as a page, never as JSON.
pub async fn serve(page: Page, call: &Call<'_>, req: Request<Incoming>) -> Response<Body> {
    let (parts, _body) = req.into_parts();
    let here = match parts.uri.query() {
        Some(q) => format!("{}?{q}", parts.uri.path()),
        None => parts.uri.path().to_string(),
    };
    let cx = Cx {
        call,
        view: View {
            console: call.console,
            lang: Lang::of(&parts.headers),
            here: &here,
        },
        headers: &parts.headers,
        query: parts.uri.query().unwrap_or(""),
    };
    if parts.method == Method::GET {
        if let Some(switched) = cx.switch_language() {
            return switched;
        }
    }
    let result = match page {
        Page::Css => Ok(edge::text(StatusCode::OK, CSS, "text/css; charset=utf-8")),
        Page::Js => Ok(edge::text(
            StatusCode::OK,
            JS,
            "text/javascript; charset=utf-8",
        )),
        Page::Root => login::root(&cx).await,
        Page::Login => login::login_page(&cx).await,
        Page::LoginSubmit => login::login_submit(&cx).await,
        Page::Password => login::password_page(&cx).await,
        Page::PasswordSubmit => login::password_submit(&cx).await,
        Page::Totp => login::totp_page(&cx).await,
        Page::TotpSubmit => login::totp_submit(&cx).await,
        Page::Logout => login::logout(&cx).await,
        Page::Queue => approvals::queue(&cx).await,
        Page::Detail => approvals::detail(&cx).await,
        Page::Approve => approvals::approve(&cx).await,
        Page::Reject => approvals::reject(&cx).await,
        Page::Records => audit::records(&cx).await,
        Page::RecordsExport => audit::export(&cx).await,
        Page::OperationLog => audit::operation_log(&cx).await,
        Page::Keys => audit::keys(&cx).await,
        Page::Admin(page) => admin::serve(page, &cx).await,
    };
    match result {
        Ok(response) => response,
        Err(e) => cx.failed(&e).await,
    }
}

// ---------------------------------------------------------------------------
// Rendering

fn environment() -> Result<&'static Environment<'static>, BrokerError> {
    static ENV: OnceLock<Result<Environment<'static>, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // Printing a value the page did not provide is a bug, not an empty string.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        for (name, source) in TEMPLATES.iter().chain(admin::TEMPLATES) {
            env.add_template(name, source).map_err(|e| e.to_string())?;
        }
        Ok(env)
    })
    .as_ref()
    .map_err(|e| BrokerError::Internal(format!("console templates: {e}")))
}

fn render(name: &str, ctx: Value) -> Result<String, BrokerError> {
    environment()?
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| BrokerError::Internal(format!("rendering {name}: {e}")))
}

/// An HTML response under the pages' Content-Security-Policy.
fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut response = edge::text(status, body, "text/html; charset=utf-8");
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    response
}

/// `303 See Other` to a path of the console.
fn redirect(to: &str) -> Response<Body> {
    let mut response = edge::text(StatusCode::SEE_OTHER, Bytes::new(), "text/plain");
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn with_cookie(mut response: Response<Body>, cookie: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The top bar and what every page shares. No `Debug`: it holds the CSRF
/// token.
#[derive(Serialize)]
struct Frame {
    lang: &'static str,
    title: String,
    switch_ja: String,
    switch_en: String,
    user: Option<Who>,
    csrf: String,
    pending: Option<String>,
    /// The pages of the person's roles, for the top bar.
    nav: Vec<audit::NavLink>,
}

#[derive(Debug, Serialize)]
struct Who {
    user_id: String,
    org: String,
    org_name: Option<String>,
    roles: String,
}

/// How pages are drawn for one request: the console, the language, and the
/// address of the page (for the language switch).
struct View<'v> {
    console: &'v Console,
    lang: Lang,
    here: &'v str,
}

impl View<'_> {
    fn t(&self, key: &'static str) -> &'static str {
        text(self.lang, key)
    }

    /// The language switch's link: this page's address with `lang` set.
    fn switch_link(&self, lang: Lang, here: &str) -> String {
        let (path, query) = here.split_once('?').unwrap_or((here, ""));
        // Only a path of this console: `//host` or `/\host` (an error page
        // for a path a stranger made up) would lead off it.
        let path = if path.starts_with('/') && !path.starts_with("//") && !path.starts_with("/\\") {
            path
        } else {
            "/"
        };
        let mut kept = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k != "lang" {
                kept.append_pair(&k, &v);
            }
        }
        kept.append_pair("lang", lang.code());
        format!("{path}?{}", kept.finish())
    }

    /// The frame for a page titled `title_key`; `here` overrides the
    /// address the language switch returns to (pages drawn for a POST).
    async fn frame(
        &self,
        title_key: &'static str,
        session: Option<&SessionView>,
        here: Option<&str>,
        known_pending: Option<usize>,
    ) -> Frame {
        let here = here.unwrap_or(self.here);
        let mut frame = Frame {
            lang: self.lang.code(),
            title: self.t(title_key).to_string(),
            switch_ja: self.switch_link(Lang::Ja, here),
            switch_en: self.switch_link(Lang::En, here),
            user: None,
            csrf: String::new(),
            pending: None,
            nav: Vec::new(),
        };
        let Some(session) = session else {
            return frame;
        };
        let org_name = match self.console.state.store.get_org(&session.org).await {
            Ok(Some(org)) if org.name != session.org.as_str() => Some(org.name),
            _ => None,
        };
        let roles: Vec<&str> = session
            .privileges
            .roles
            .iter()
            .map(|r| self.t(role_key(*r)))
            .collect();
        frame.user = Some(Who {
            user_id: session.user_id.to_string(),
            org: session.org.to_string(),
            org_name,
            roles: roles.join(if self.lang == Lang::Ja { "、" } else { ", " }),
        });
        frame.csrf = session.csrf.clone();
        frame.nav.extend(audit::nav(self.lang, session, here));
        frame.nav.extend(admin::nav(self.lang, session, here));
        if session.stage == Stage::Full && session.privileges.has(Role::Operator) {
            let count = match known_pending {
                Some(n) => Some(n),
                None => decide::queue(&self.console.state, &session.org)
                    .await
                    .ok()
                    .map(|q| q.len()),
            };
            frame.pending = count.map(count_text);
        }
        frame
    }

    /// Renders `template` with the frame and the page's own values.
    fn page(
        &self,
        status: StatusCode,
        template: &str,
        frame: &Frame,
        own: Value,
    ) -> Response<Body> {
        let ctx = context! {
            f => Value::from(Serde(frame)),
            t => i18n::table_value(self.lang),
            ..own
        };
        match render(template, ctx) {
            Ok(body) => html(status, body),
            Err(e) => {
                tracing::error!(error = %e, "console page did not render");
                html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "<!doctype html><title>500</title><p>内部エラー / internal error</p>".into(),
                )
            }
        }
    }

    async fn error_page(
        &self,
        status: StatusCode,
        code: &ErrorCode,
        message: &str,
        request_id: &str,
        session: Option<&SessionView>,
    ) -> Response<Body> {
        let frame = self.frame("error_title", session, None, None).await;
        let own = context! {
            heading => i18n::error_title(self.lang, code.as_str()),
            message => i18n::message(self.lang, message),
            request_id => request_id,
        };
        self.page(status, "error.html", &frame, own)
    }
}

fn role_key(role: Role) -> &'static str {
    match role {
        Role::Operator => "role_operator",
        Role::Auditor => "role_auditor",
        Role::Administrator => "role_administrator",
    }
}

fn count_text(n: usize) -> String {
    let shown = i18n::number(&n.to_string());
    if i64::try_from(n).is_ok_and(|n| n >= decide::MAX_LISTED) {
        format!("{shown}+")
    } else {
        shown
    }
}

// ---------------------------------------------------------------------------
// One request to a page

struct Cx<'c, 'a> {
    call: &'c Call<'a>,
    view: View<'c>,
    headers: &'c HeaderMap,
    query: &'c str,
}

impl Cx<'_, '_> {
    fn lang(&self) -> Lang {
        self.view.lang
    }

    fn t(&self, key: &'static str) -> &'static str {
        self.view.t(key)
    }

    fn console(&self) -> &Console {
        self.call.console
    }

    fn source(&self) -> std::net::IpAddr {
        self.call.conn.peer.ip()
    }

    fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The form the stack read (and checked) for a form page.
    fn form(&self) -> Result<&Form, BrokerError> {
        self.call
            .form
            .as_ref()
            .ok_or_else(|| BrokerError::Internal("a form page ran without its form".into()))
    }

    /// `?lang=ja|en` on any page: remembered in the `lang` cookie, then the
    /// same page without the parameter.
    fn switch_language(&self) -> Option<Response<Body>> {
        let wanted = self.param("lang")?;
        let path = self
            .view
            .here
            .split_once('?')
            .map_or(self.view.here, |(p, _)| p);
        // Only a path of this console (never `//host`, which browsers read as another site).
        let path = if path.starts_with('/') && !path.starts_with("//") {
            path
        } else {
            "/"
        };
        let mut kept = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form_urlencoded::parse(self.query.as_bytes()) {
            if k != "lang" {
                kept.append_pair(&k, &v);
            }
        }
        let rest = kept.finish();
        let target = if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{rest}")
        };
        let response = redirect(&target);
        Some(match Lang::from_code(&wanted) {
            Some(lang) => with_cookie(
                response,
                &format!(
                    "{}={}; Path=/; Max-Age=31536000; Secure; HttpOnly; SameSite=Strict",
                    i18n::LANG_COOKIE,
                    lang.code()
                ),
            ),
            None => response,
        })
    }

    /// The session of a page behind a session (the stack checked it).
    fn session(&self) -> Result<&SessionView, BrokerError> {
        self.call.session()
    }

    /// The session a public page's request carries, if it is still valid.
    async fn current_session(&self) -> Result<Option<SessionView>, BrokerError> {
        let Some(token) = self.call.token.as_deref() else {
            return Ok(None);
        };
        match self.console().people.authenticate(token).await {
            Ok(session) => Ok(Some(session)),
            Err(e) => internal_or_none(e),
        }
    }

    async fn log(&self, entry: OpEntry) -> Result<u64, BrokerError> {
        self.console().log(entry).await
    }

    /// An operation-log entry about `actor`'s own session, as the JSON
    /// endpoints write it.
    fn entry(&self, actor: &str, action: OpAction, result: OpResult) -> OpEntry {
        let mut entry = OpEntry::new(actor, action, result);
        entry.source = Some(self.source().to_string());
        if let Some(session) = &self.call.session {
            entry.org = Some(session.org.clone());
        }
        entry
    }

    /// An error of a page, counted and logged as every console error is,
    /// shown as a page in the person's language.
    async fn failed(&self, e: &BrokerError) -> Response<Body> {
        let who = self.source().to_string();
        let json = endpoint_error(&self.console().state, e, self.call.request_id, &who);
        self.view
            .error_page(
                json.status(),
                &e.code(),
                &e.public_message(),
                self.call.request_id,
                self.call.session.as_ref(),
            )
            .await
    }

    /// The login form, with a notice or an error, and its CSRF cookie.
    async fn login_form(
        &self,
        status: StatusCode,
        user_id: &str,
        notice: Option<&str>,
        error: Option<String>,
    ) -> Response<Body> {
        // The token already in the browser is kept, so two open login tabs both work.
        let token = match cookie(self.headers, LOGIN_COOKIE) {
            Some(t) if cookies::token_hash(t).is_some() => t.to_string(),
            _ => cookies::new_csrf_token(),
        };
        let mut frame = self
            .view
            .frame("login_title", None, Some("/login"), None)
            .await;
        frame.csrf = token.clone();
        let own = context! { user_id => user_id, notice => notice, error => error };
        let response = self.view.page(status, "login.html", &frame, own);
        with_cookie(
            response,
            &format!("{LOGIN_COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict"),
        )
    }
}

/// `None` for a session that ended or was refused; a fault stays an error.
fn internal_or_none(e: PeopleError) -> Result<Option<SessionView>, BrokerError> {
    let e = BrokerError::from(e);
    if e.code() == ErrorCode::Internal {
        Err(e)
    } else {
        Ok(None)
    }
}

fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Where a session goes next: the login step due, or the person's home.
fn next_step(session: &SessionView) -> &'static str {
    match session.stage {
        Stage::PasswordChange => "/login/password",
        Stage::TotpEnrolment | Stage::Totp => "/login/totp",
        Stage::Full if session.privileges.has(Role::Operator) => "/approvals",
        Stage::Full => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        let env = environment().unwrap();
        for (name, _) in TEMPLATES {
            env.get_template(name).unwrap();
        }
    }

    fn frame(lang: Lang, user: bool) -> Frame {
        Frame {
            lang: lang.code(),
            title: "t".into(),
            switch_ja: "/x?lang=ja".into(),
            switch_en: "/x?lang=en".into(),
            user: user.then(|| Who {
                user_id: "kawada.op".into(),
                org: "city-saitama".into(),
                org_name: Some("さいたま市".into()),
                roles: "承認担当者".into(),
            }),
            csrf: "tok".into(),
            pending: user.then(|| "1".into()),
            nav: Vec::new(),
        }
    }

    fn draw(lang: Lang, template: &str, user: bool, own: Value) -> String {
        let ctx = context! {
            f => Value::from(Serde(frame(lang, user))),
            t => i18n::table_value(lang),
            ..own
        };
        render(template, ctx).unwrap()
    }

    /// Every template renders in both languages with what its handler
    /// gives it (a label missing from the table fails here), and what a
    /// person typed comes back escaped by the engine.
    #[test]
    fn every_page_renders_in_both_languages_and_escapes_what_people_typed() {
        let typed = "<script>alert(1)</script>";
        let enrolment = login::Enrolment {
            qr: "data:image/svg+xml;base64,AAAA".into(),
            uri: "otpauth://totp/Kakehashi:a?secret=ABC&issuer=Kakehashi".into(),
            secret: "ABC".into(),
        };
        let q = approvals::Row {
            query_id: "q_1".into(),
            href: "/approvals/q_1".into(),
            requester: "union-saitama".into(),
            flow_id: "F-0121".into(),
            procedure: "p".into(),
            items: vec!["local_tax.income".into()],
            asked_at: "2025-04-01 09:00:00 JST".into(),
            age: "1分".into(),
            expires_at: "2025-04-02 09:00:00 JST".into(),
        };
        let last = context! { login => Some("2025-04-01 09:00:00 JST"), failed => None::<String> };
        for lang in [Lang::Ja, Lang::En] {
            let login = draw(
                lang,
                "login.html",
                false,
                context! { user_id => typed, notice => None::<String>, error => Some(typed) },
            );
            assert!(!login.contains(typed), "{login}");
            assert!(login.contains("&lt;script&gt;"), "{login}");
            assert!(login.contains(&format!("<html lang=\"{}\"", lang.code())));
            draw(
                lang,
                "password.html",
                true,
                context! { user_id => "a.b", first => true, error => None::<String> },
            );
            let totp = draw(
                lang,
                "totp.html",
                true,
                context! { enrolling => true, enrolment => Value::from(Serde(&enrolment)), error => None::<String> },
            );
            // The engine escapes `/` too (`&#x2f;`); the browser shows the URI as it is.
            assert!(
                totp.contains("Kakehashi:a?secret=ABC&amp;issuer=Kakehashi"),
                "{totp}"
            );
            draw(
                lang,
                "totp.html",
                true,
                context! { enrolling => false, enrolment => None::<String>, error => Some("x") },
            );
            let queue = draw(
                lang,
                "approvals.html",
                true,
                context! { rows => Value::from(Serde(vec![&q])), count => "1", newest => false, notice => Some(typed), last => last.clone() },
            );
            assert!(queue.contains("q_1") && !queue.contains(typed));
            draw(
                lang,
                "approvals.html",
                true,
                context! { rows => Value::from(Serde(Vec::<approvals::Row>::new())), count => "0", newest => true, notice => None::<String>, last => last.clone() },
            );
            let detail = draw(
                lang,
                "approval.html",
                true,
                context! { q => Value::from(Serde(&q)), values => vec![("local_tax.income", typed)], error => None::<String> },
            );
            assert!(!detail.contains(typed));
            draw(lang, "home.html", true, context! { last => last.clone() });
            draw(
                lang,
                "error.html",
                false,
                context! { heading => "h", message => typed, request_id => "r" },
            );
        }
    }

    #[test]
    fn no_template_has_inline_script_or_style() {
        for (name, source) in TEMPLATES {
            let lower = source.to_ascii_lowercase();
            assert!(!lower.contains("<style"), "{name}");
            assert!(!lower.contains(" style="), "{name}");
            // No inline event handler (` onclick=` …).
            let handler = lower.split(|c: char| c.is_whitespace()).any(|word| {
                word.strip_prefix("on").is_some_and(|rest| {
                    let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
                    !name.is_empty() && rest[name.len()..].starts_with('=')
                })
            });
            assert!(!handler, "{name}: an inline event handler");
            for script in lower.split("<script").skip(1) {
                assert!(
                    script.trim_start().starts_with("src="),
                    "{name}: inline script"
                );
            }
        }
    }

    #[test]
    fn form_fields_decode_and_debug_hides_values() {
        let form = Form::parse(b"user_id=a.b&password=%E7%A7%98+x&csrf=t");
        assert_eq!(form.get("password"), "秘 x");
        assert_eq!(form.get("missing"), "");
        let shown = format!("{form:?}");
        assert!(!shown.contains("秘"), "{shown}");
    }

    #[test]
    fn cookies_are_found_in_any_cookie_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, "lang=en".parse().unwrap());
        headers.append(
            header::COOKIE,
            "a=1; __Host-kakehashi_login=xyz".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, LOGIN_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "lang"), Some("en"));
        assert_eq!(cookie(&headers, "nope"), None);
    }
}
