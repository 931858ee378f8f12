//! The operator's pages (R11): the org's approval queue, a query with the
//! values approval would release, approve, reject with a reason, and the
//! decision shown with its record number. Each calls what its JSON
//! equivalent (`console/approvals.rs`) calls and writes the same
//! operation-log entry.

use hmac::{Hmac, Mac};
use http::{Response, StatusCode};
use kakehashi_interfaces::copies::ItemValue;
use kakehashi_interfaces::query::RejectionReason;
use kakehashi_interfaces::QueryId;
use minijinja::context;
use minijinja::value::{Serde, Value};
use serde::Serialize;
use sha2::Sha256;

use super::i18n::{self, text, Lang};
use super::login::last_logins;
use super::{count_text, redirect, Cx};
use crate::approvals::{self as decide, Decision, PendingSummary};
use crate::edge::http::Body;
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpEntry, OpResult};
use crate::people::{session as cookies, SessionView};

/// One row of the queue, as the page shows it.
#[derive(Debug, Serialize)]
pub(super) struct Row {
    pub(super) query_id: String,
    pub(super) href: String,
    pub(super) requester: String,
    pub(super) flow_id: String,
    pub(super) procedure: String,
    pub(super) items: Vec<String>,
    pub(super) asked_at: String,
    pub(super) age: String,
    pub(super) expires_at: String,
}

fn row(lang: Lang, p: &PendingSummary) -> Row {
    Row {
        href: format!("/approvals/{}", p.query_id),
        query_id: p.query_id.clone(),
        requester: p.requester.clone(),
        flow_id: p.flow_id.clone(),
        procedure: p.procedure.clone(),
        items: p.items.clone(),
        asked_at: i18n::jst(&p.asked_at),
        age: i18n::age(lang, p.age_secs),
        expires_at: i18n::jst(&p.expires_at),
    }
}

/// The decision just made, carried to the queue in the redirect and signed
/// with the session's CSRF token, so a crafted link cannot show a false one.
fn decided_signature(csrf: &str, query_id: &str, decision: &str, record: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(csrf.as_bytes()) else {
        return String::new();
    };
    for part in ["kakehashi/console/decided", query_id, decision, record] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn decided_notice(cx: &Cx<'_, '_>, session: &SessionView) -> Option<String> {
    let query_id = cx.param("done")?;
    let decision = cx.param("decision")?;
    let record = cx.param("record")?;
    let signature = cx.param("sig")?;
    let expected = decided_signature(&session.csrf, &query_id, &decision, &record);
    if !cookies::csrf_matches(&expected, &signature) || record.parse::<u64>().is_err() {
        return None;
    }
    let key = match decision.as_str() {
        "approved" => "decided_approved",
        "rejected" => "decided_rejected",
        _ => return None,
    };
    Some(
        cx.t(key)
            .replace("{q}", &query_id)
            .replace("{r}", &i18n::number(&record)),
    )
}

/// `GET /approvals`: the org's queue, oldest first (`?sort=newest` turns it).
pub(super) async fn queue(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let mut pending = decide::queue(&cx.console().state, &session.org).await?;
    let newest = cx.param("sort").as_deref() == Some("newest");
    pending.sort_by_key(|p| std::cmp::Reverse(p.age_secs));
    if newest {
        pending.reverse();
    }
    let frame = cx
        .view
        .frame("queue_title", Some(session), None, Some(pending.len()))
        .await;
    let rows: Vec<Row> = pending.iter().map(|p| row(cx.lang(), p)).collect();
    let own = context! {
        rows => Value::from(Serde(&rows)),
        count => cx.t("queue_count").replace("{n}", &count_text(pending.len())),
        newest => newest,
        notice => decided_notice(cx, session),
        last => last_logins(cx.lang(), session),
    };
    Ok(cx.view.page(StatusCode::OK, "approvals.html", &frame, own))
}

/// One value as the operator reads it: numbers with separators, flags in
/// words (with the value itself), an Individual Number only to a person
/// holding the privilege.
fn shown_value(lang: Lang, value: &ItemValue, number_privilege: bool) -> String {
    match value {
        ItemValue::Text(s) => {
            crate::console::masking::hide_numbers(s, number_privilege, text(lang, "number_hidden"))
        }
        ItemValue::Number(n) => i18n::number(&n.to_string()),
        ItemValue::Bool(true) => format!("{} (true)", text(lang, "yes")),
        ItemValue::Bool(false) => format!("{} (false)", text(lang, "no")),
    }
}

async fn detail_page(
    cx: &Cx<'_, '_>,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let query_id = cx.call.params.get("query_id");
    let detail = decide::detail(&cx.console().state, &session.org, query_id).await?;
    let values: Vec<(String, String)> = detail
        .values
        .iter()
        .map(|(item, value)| {
            (
                item.to_string(),
                shown_value(cx.lang(), value, session.privileges.number_privilege),
            )
        })
        .collect();
    let here = format!("/approvals/{}", detail.summary.query_id);
    let frame = cx
        .view
        .frame("detail_title", Some(session), Some(&here), None)
        .await;
    let own = context! {
        q => Value::from(Serde(row(cx.lang(), &detail.summary))),
        values => values,
        error => error,
    };
    Ok(cx.view.page(status, "approval.html", &frame, own))
}

/// `GET /approvals/{query_id}`.
pub(super) async fn detail(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    detail_page(cx, StatusCode::OK, None).await
}

/// `POST /approvals/{query_id}/approve`.
pub(super) async fn approve(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    decide_and_log(cx, Decision::Approve).await
}

/// `POST /approvals/{query_id}/reject` with the form field `reason`.
pub(super) async fn reject(cx: &Cx<'_, '_>) -> Result<Response<Body>, BrokerError> {
    let form = cx.form()?;
    match RejectionReason::new(form.get("reason")) {
        Ok(reason) => decide_and_log(cx, Decision::Reject(reason)).await,
        Err(_) => {
            let message = cx.t("reason_rule").to_string();
            detail_page(cx, StatusCode::BAD_REQUEST, Some(message)).await
        }
    }
}

/// Decides as `POST /api/approvals/{query_id}/…` does, with the same log
/// entry, then shows the queue with the decision and its record number.
async fn decide_and_log(
    cx: &Cx<'_, '_>,
    decision: Decision,
) -> Result<Response<Body>, BrokerError> {
    let session = cx.session()?;
    let query_id = cx.call.params.get("query_id");
    let action = match decision {
        Decision::Approve => OpAction::Approve,
        Decision::Reject(_) => OpAction::Reject,
    };
    let outcome = decide::decide(
        &cx.console().state,
        &session.org,
        query_id,
        session.user_id.as_str(),
        decision,
    )
    .await;
    let mut log = OpEntry::new(session.user_id.as_str(), action, OpResult::of(&outcome));
    log.org = Some(session.org.clone());
    log.source = Some(cx.source().to_string());
    // A query id is the broker's random id; anything else typed in the path
    // is not logged as a target.
    if QueryId::new(query_id).is_ok() {
        log.target = Some(query_id.to_string());
    }
    if let Ok(decided) = &outcome {
        log.detail = Some(format!("record {}", decided.record_seq));
    }
    cx.log(log).await?;
    let decided = outcome?;
    let record = decided.record_seq.to_string();
    let signature = decided_signature(&session.csrf, &decided.query_id, &decided.decision, &record);
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("done", &decided.query_id)
        .append_pair("decision", &decided.decision)
        .append_pair("record", &record)
        .append_pair("sig", &signature)
        .finish();
    Ok(redirect(&format!("/approvals?{query}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_individual_number_is_shown_only_with_the_privilege() {
        let number = ItemValue::Text("123456789018".into());
        assert_eq!(
            shown_value(Lang::Ja, &number, false),
            text(Lang::Ja, "number_hidden")
        );
        assert_eq!(shown_value(Lang::Ja, &number, true), "123456789018");
        let income = ItemValue::Number(serde_json::Number::from(2_000_000));
        assert_eq!(shown_value(Lang::En, &income, false), "2,000,000");
        assert_eq!(
            shown_value(Lang::Ja, &ItemValue::Bool(false), false),
            "いいえ (false)"
        );
    }

    #[test]
    fn a_decision_notice_needs_the_session_signature() {
        let a = decided_signature("token-a", "q_1", "approved", "7");
        assert_eq!(a.len(), 64);
        assert_ne!(a, decided_signature("token-b", "q_1", "approved", "7"));
        assert_ne!(a, decided_signature("token-a", "q_1", "approved", "8"));
        assert_ne!(a, decided_signature("token-a", "q_1", "rejected", "7"));
    }
}
