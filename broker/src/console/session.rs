//! Logging in and out: `POST /api/session` (user id + password),
//! `POST /api/session/password`, `POST /api/session/totp/enrolment`,
//! `POST /api/session/totp`, `DELETE /api/session`. The rules (password
//! policy, TOTP, lockout, timeouts) live in [`crate::people`]; this file
//! maps them to HTTP and writes each step to the operation log (R17).

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use kakehashi_interfaces::people::{
    LoginRequest, PasswordChangeRequest, SessionStage, TotpRequest,
};

use crate::console::endpoints::Call;
use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpEntry, OpResult};
use crate::people::{session as cookies, PeopleError, SessionView};

/// An operation-log entry about `actor`'s own session.
fn entry(call: &Call<'_>, actor: &str, action: OpAction, result: OpResult) -> OpEntry {
    let mut entry = OpEntry::new(actor, action, result);
    entry.source = Some(call.conn.peer.ip().to_string());
    if let Some(session) = &call.session {
        entry.org = Some(session.org.clone());
    }
    entry
}

fn refused(e: &PeopleError) -> OpResult {
    OpResult::Refused(e.code())
}

/// `POST /api/session`.
pub async fn login(call: &Call<'_>, req: Request<Incoming>) -> Result<Response<Body>, BrokerError> {
    let body = call.read_body(req).await?;
    let login: LoginRequest = edge::parse_json(&body)?;
    let console = call.console;
    let outcome = console
        .people
        .login(
            &console.state.keys,
            &login.user_id,
            &login.password,
            Some(call.conn.peer.ip()),
        )
        .await;
    let actor = login.user_id.as_str();
    match outcome {
        Ok(done) => {
            let mut log = entry(call, actor, OpAction::LoginSucceeded, OpResult::Success);
            log.org = Some(done.session.org.clone());
            // The password step alone is not a login; say which step is next.
            log.detail = Some(format!(
                "password accepted; next: {}",
                stage_name(done.session.stage)
            ));
            console.log(log).await?;
            let mut response = edge::json(StatusCode::OK, &done.session.answer());
            let cookie = cookies::set_cookie(&done.token);
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            Ok(response)
        }
        Err(e) => {
            let action = if e.is_lock() {
                OpAction::AccountLocked
            } else {
                OpAction::LoginFailed
            };
            let actor = e.login_actor(&login.user_id);
            console.log(entry(call, actor, action, refused(&e))).await?;
            Err(e.into())
        }
    }
}

fn stage_name(stage: SessionStage) -> &'static str {
    match stage {
        SessionStage::PasswordChange => "password_change",
        SessionStage::TotpEnrolment => "totp_enrolment",
        SessionStage::Totp => "totp",
        SessionStage::Full => "full",
    }
}

/// `DELETE /api/session`.
pub async fn logout(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    call.console.people.logout(call.token()?).await?;
    call.console
        .log(entry(
            call,
            session.user_id.as_str(),
            OpAction::Logout,
            OpResult::Success,
        ))
        .await?;
    let mut response = edge::text(StatusCode::NO_CONTENT, "", "text/plain");
    if let Ok(value) = HeaderValue::from_str(&cookies::clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `POST /api/session/password`.
pub async fn change_password(
    call: &Call<'_>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    let body = call.read_body(req).await?;
    let change: PasswordChangeRequest = edge::parse_json(&body)?;
    let outcome = call
        .console
        .people
        .change_password(
            call.token()?,
            &change.current_password,
            &change.new_password,
            Some(call.conn.peer.ip()),
        )
        .await;
    answer(call, session, OpAction::PasswordChanged, outcome).await
}

/// `POST /api/session/totp/enrolment`.
pub async fn enrol(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let enrolment = call
        .console
        .people
        .begin_enrolment(&call.console.state.keys, call.token()?)
        .await?;
    Ok(edge::json(StatusCode::OK, &enrolment))
}

/// `POST /api/session/totp`: confirms an enrolment or finishes a login.
pub async fn totp(call: &Call<'_>, req: Request<Incoming>) -> Result<Response<Body>, BrokerError> {
    let session = call.session()?;
    let body = call.read_body(req).await?;
    let code: TotpRequest = edge::parse_json(&body)?;
    let outcome = call
        .console
        .people
        .confirm_totp(
            &call.console.state.keys,
            call.token()?,
            &code.code,
            Some(call.conn.peer.ip()),
        )
        .await;
    let actor = session.user_id.as_str();
    match &outcome {
        Ok(_) => {
            if session.stage == SessionStage::TotpEnrolment {
                call.console
                    .log(entry(
                        call,
                        actor,
                        OpAction::TotpEnrolled,
                        OpResult::Success,
                    ))
                    .await?;
            }
            let mut log = entry(call, actor, OpAction::LoginSucceeded, OpResult::Success);
            log.detail = Some("login complete (password and TOTP)".into());
            call.console.log(log).await?;
        }
        Err(e) => {
            let action = match e {
                PeopleError::Locked { .. } => OpAction::AccountLocked,
                _ => OpAction::TotpFailed,
            };
            call.console
                .log(entry(call, actor, action, refused(e)))
                .await?;
        }
    }
    let done = outcome?;
    // The full session has a new id: the one used until now has ended.
    let mut response = edge::json(StatusCode::OK, &done.session.answer());
    if let Ok(value) = HeaderValue::from_str(&cookies::set_cookie(&done.token)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Logs a session step's outcome and answers it.
async fn answer(
    call: &Call<'_>,
    session: &SessionView,
    action: OpAction,
    outcome: Result<SessionView, PeopleError>,
) -> Result<Response<Body>, BrokerError> {
    let result = match &outcome {
        Ok(_) => OpResult::Success,
        Err(e) => refused(e),
    };
    call.console
        .log(entry(call, session.user_id.as_str(), action, result))
        .await?;
    Ok(edge::json(StatusCode::OK, &outcome?.answer()))
}
