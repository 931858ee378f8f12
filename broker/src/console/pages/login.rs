//! The login pages: user id and password, a new password when the one in
//! force is temporary, TOTP enrolment (QR code, and the otpauth URI and key
//! as text for people who cannot scan), the TOTP code, logout. Each calls
//! what its JSON equivalent (`console/session.rs`) calls and writes the same
//! operation-log entries.

use base64::Engine;
use http::{Response, StatusCode};
use kakehashi_interfaces::people::{LoginEvent, Password, TotpCode, UserId};
use kakehashi_interfaces::ErrorCode;
use minijinja::context;
use minijinja::value::{Serde, Value};
use serde::Serialize;

use super::i18n::{self, text, Lang};
use super::{next_step, redirect, status_of, with_cookie, Cx};
use crate::edge::http::Body;
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpResult};
use crate::people::{session as cookies, PeopleError, SessionView, Stage};

/// `GET /`.
pub(super) async fn root(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let presented = cx.call.token.is_some();
    let Some(session) = cx.current_session().await? else {
        return Ok(if presented {
            // A cookie whose session ended: say so once, and forget it.
            with_cookie(redirect("/login?from=expired"), &cookies::clear_cookie())
        } else {
            redirect("/login")
        });
    };
    match next_step(&session) {
        "/" => {
            let frame = cx
                .view
                .frame("home_title", Some(&session), None, None)
                .await;
            let own = context! { last => last_logins(cx.lang(), &session) };
            Ok(cx.view.page(StatusCode::OK, "home.html", &frame, own))
        }
        next => Ok(redirect(next)),
    }
}

/// The previous successful and failed logins, as a page shows them.
pub(super) fn last_logins(lang: Lang, session: &SessionView) -> Value {
    let show = |event: &Option<LoginEvent>| {
        event.as_ref().map(|e| {
            let at = i18n::jst_of(e.at);
            match e.from {
                Some(ip) => format!("{at} ({} {ip})", text(lang, "from")),
                None => at,
            }
        })
    };
    context! {
        login => show(&session.last_login),
        failed => show(&session.last_failed_login),
    }
}

/// `GET /login`.
pub(super) async fn login_page(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    if let Some(session) = cx.current_session().await? {
        return Ok(redirect(next_step(&session)));
    }
    let notice = match cx.param("from").as_deref() {
        Some("expired") => Some(cx.t("session_expired")),
        Some("logout") => Some(cx.t("logged_out")),
        _ => None,
    };
    Ok(cx.login_form(StatusCode::OK, "", notice, None).await)
}

/// `POST /login`: as `POST /api/session`, with the same log entries.
pub(super) async fn login_submit(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let form = cx.form()?;
    let typed = form.get("user_id").trim();
    let Ok(user_id) = UserId::new(typed) else {
        let error = Some(cx.t("bad_user_id").to_string());
        return Ok(cx
            .login_form(StatusCode::BAD_REQUEST, typed, None, error)
            .await);
    };
    let Ok(password) = Password::new(form.get("password")) else {
        let error = Some(cx.t("password_missing").to_string());
        return Ok(cx
            .login_form(StatusCode::BAD_REQUEST, typed, None, error)
            .await);
    };
    let console = cx.console();
    let outcome = console
        .people
        .login(&console.state.keys, &user_id, &password, Some(cx.source()))
        .await;
    let actor = user_id.as_str();
    match outcome {
        Ok(done) => {
            let mut log = cx.entry(actor, OpAction::LoginSucceeded, OpResult::Success);
            log.org = Some(done.session.org.clone());
            log.detail = Some(format!(
                "password accepted; next: {}",
                stage_name(done.session.stage)
            ));
            cx.log(log).await?;
            let cookie = cookies::set_cookie(&done.token);
            Ok(with_cookie(redirect(next_step(&done.session)), &cookie))
        }
        Err(e) => {
            let action = if e.is_lock() {
                OpAction::AccountLocked
            } else {
                OpAction::LoginFailed
            };
            let actor = e.login_actor(&user_id);
            cx.log(cx.entry(actor, action, OpResult::Refused(e.code())))
                .await?;
            let code = e.code();
            if code == ErrorCode::Internal {
                return Err(e.into());
            }
            let error = Some(i18n::message(cx.lang(), &e.public_message()));
            Ok(cx.login_form(status_of(code), typed, None, error).await)
        }
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::PasswordChange => "password_change",
        Stage::TotpEnrolment => "totp_enrolment",
        Stage::Totp => "totp",
        Stage::Full => "full",
    }
}

/// A step of the login refused in a way that ends the session (locked,
/// expired): back to the login form with the reason.
async fn ended(cx: &Cx<'_, '_>, e: &PeopleError) -> Response<Body> {
    let error = Some(i18n::message(cx.lang(), &e.public_message()));
    let response = cx.login_form(status_of(e.code()), "", None, error).await;
    with_cookie(response, &cookies::clear_cookie())
}

fn ends_session(e: &PeopleError) -> bool {
    matches!(
        e.code(),
        ErrorCode::AccountLocked | ErrorCode::SessionRequired
    )
}

/// `GET /login/password`.
pub(super) async fn password_page(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    if !matches!(session.stage, Stage::PasswordChange | Stage::Full) {
        return Ok(redirect(next_step(session)));
    }
    Ok(password_form(cx, session, StatusCode::OK, None).await)
}

async fn password_form(
    cx: &Cx<'_, '_>,
    session: &SessionView,
    status: StatusCode,
    error: Option<String>,
) -> Response<Body> {
    let frame = cx
        .view
        .frame(
            "password_title",
            Some(session),
            Some("/login/password"),
            None,
        )
        .await;
    let own = context! {
        user_id => session.user_id.as_str(),
        first => session.stage == Stage::PasswordChange,
        error => error,
    };
    cx.view.page(status, "password.html", &frame, own)
}

/// `POST /login/password`: as `POST /api/session/password`.
pub(super) async fn password_submit(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let form = cx.form()?;
    if !matches!(session.stage, Stage::PasswordChange | Stage::Full) {
        return Ok(redirect(next_step(session)));
    }
    let refuse = |key: &'static str| {
        password_form(
            cx,
            session,
            StatusCode::BAD_REQUEST,
            Some(cx.t(key).to_string()),
        )
    };
    let (Ok(current), Ok(new)) = (
        Password::new(form.get("current_password")),
        Password::new(form.get("new_password")),
    ) else {
        return Ok(refuse("password_missing").await);
    };
    if form.get("new_password") != form.get("confirm_password") {
        return Ok(refuse("password_mismatch").await);
    }
    let outcome = cx
        .console()
        .people
        .change_password(cx.call.token()?, &current, &new, Some(cx.source()))
        .await;
    let result = match &outcome {
        Ok(_) => OpResult::Success,
        Err(e) => OpResult::Refused(e.code()),
    };
    cx.log(cx.entry(session.user_id.as_str(), OpAction::PasswordChanged, result))
        .await?;
    match outcome {
        Ok(next) => Ok(redirect(next_step(&next))),
        Err(e) if e.code() == ErrorCode::Internal => Err(e.into()),
        Err(e) if ends_session(&e) => Ok(ended(cx, &e).await),
        Err(e) => {
            let error = Some(i18n::message(cx.lang(), &e.public_message()));
            Ok(password_form(cx, session, status_of(e.code()), error).await)
        }
    }
}

/// The enrolment in progress, as the page shows it.
async fn enrolment(cx: &Cx<'_, '_>) -> Result<Enrolment, BrokerError> {
    let console = cx.console();
    let answer = console
        .people
        .enrolment(&console.state.keys, cx.call.token()?)
        .await?;
    let secret = answer
        .otpauth_uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .unwrap_or("")
        .to_string();
    Ok(Enrolment {
        qr: format!(
            "data:image/svg+xml;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(answer.qr_svg.as_bytes())
        ),
        uri: answer.otpauth_uri.clone(),
        secret,
    })
}

/// What the TOTP page shows while enrolling: the QR code, the URI and the
/// key as text (for people who cannot scan). No `Debug`: it is the secret.
#[derive(Serialize)]
pub(super) struct Enrolment {
    pub(super) qr: String,
    pub(super) uri: String,
    pub(super) secret: String,
}

/// `GET /login/totp`: while enrolling, the secret being enrolled (the same
/// one on every showing until a code confirms it; the first showing makes
/// it), else the code form.
pub(super) async fn totp_page(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    match session.stage {
        Stage::TotpEnrolment => {
            let enrolment = enrolment(cx).await?;
            Ok(totp_form(cx, session, StatusCode::OK, Some(&enrolment), None).await)
        }
        Stage::Totp => Ok(totp_form(cx, session, StatusCode::OK, None, None).await),
        _ => Ok(redirect(next_step(session))),
    }
}

async fn totp_form(
    cx: &Cx<'_, '_>,
    session: &SessionView,
    status: StatusCode,
    enrolment: Option<&Enrolment>,
    error: Option<String>,
) -> Response<Body> {
    let enrolling = session.stage == Stage::TotpEnrolment;
    let title = if enrolling {
        "totp_enrol_title"
    } else {
        "totp_title"
    };
    let frame = cx
        .view
        .frame(title, Some(session), Some("/login/totp"), None)
        .await;
    let own = context! {
        enrolling => enrolling,
        enrolment => enrolment.map(|e| Value::from(Serde(e))),
        error => error,
    };
    cx.view.page(status, "totp.html", &frame, own)
}

/// `POST /login/totp`: as `POST /api/session/totp`.
pub(super) async fn totp_submit(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let form = cx.form()?;
    if !matches!(session.stage, Stage::TotpEnrolment | Stage::Totp) {
        return Ok(redirect(next_step(session)));
    }
    let Ok(code) = TotpCode::new(form.get("code").trim()) else {
        let error = Some(cx.t("totp_code_format").to_string());
        let enrolment = match session.stage {
            Stage::TotpEnrolment => Some(enrolment(cx).await?),
            _ => None,
        };
        return Ok(totp_form(
            cx,
            session,
            StatusCode::BAD_REQUEST,
            enrolment.as_ref(),
            error,
        )
        .await);
    };
    let console = cx.console();
    let outcome = console
        .people
        .confirm_totp(
            &console.state.keys,
            cx.call.token()?,
            &code,
            Some(cx.source()),
        )
        .await;
    let actor = session.user_id.as_str();
    match &outcome {
        Ok(_) => {
            if session.stage == Stage::TotpEnrolment {
                cx.log(cx.entry(actor, OpAction::TotpEnrolled, OpResult::Success))
                    .await?;
            }
            let mut log = cx.entry(actor, OpAction::LoginSucceeded, OpResult::Success);
            log.detail = Some("login complete (password and TOTP)".into());
            cx.log(log).await?;
        }
        Err(e) => {
            let action = match e {
                PeopleError::Locked { .. } => OpAction::AccountLocked,
                _ => OpAction::TotpFailed,
            };
            cx.log(cx.entry(actor, action, OpResult::Refused(e.code())))
                .await?;
        }
    }
    match outcome {
        // The full session has a new id: the one used until now has ended.
        Ok(done) => Ok(with_cookie(
            redirect(next_step(&done.session)),
            &cookies::set_cookie(&done.token),
        )),
        Err(e) if e.code() == ErrorCode::Internal => Err(e.into()),
        Err(e) if ends_session(&e) => Ok(ended(cx, &e).await),
        Err(e) => {
            let error = Some(i18n::message(cx.lang(), &e.public_message()));
            // While enrolling, the code to scan stays on the page.
            let enrolment = match session.stage {
                Stage::TotpEnrolment => Some(enrolment(cx).await?),
                _ => None,
            };
            Ok(totp_form(cx, session, status_of(e.code()), enrolment.as_ref(), error).await)
        }
    }
}

/// `POST /logout`: as `DELETE /api/session`.
pub(super) async fn logout(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    cx.console().people.logout(cx.call.token()?).await?;
    cx.log(cx.entry(
        session.user_id.as_str(),
        OpAction::Logout,
        OpResult::Success,
    ))
    .await?;
    Ok(with_cookie(
        redirect("/login?from=logout"),
        &cookies::clear_cookie(),
    ))
}
