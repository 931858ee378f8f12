//! What auditors and administrators read: `GET /api/keys` (the keys that
//! verify records and exports offline, R16), `GET /api/operation-log`
//! (R17).

use http::{Response, StatusCode};
use serde::Serialize;

use crate::console::endpoints::Call;
use crate::console::masking;
use crate::console::records;
use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpEntry, OpFilter, OpRecord, OpResult};
use crate::state::AppState;

/// A key that verifies provision records' checkpoints.
#[derive(Debug, Serialize)]
pub struct RecordKey {
    /// Its id, as checkpoints and exports name it.
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: &'static str,
    /// The public key, lowercase hex.
    pub public_key_hex: String,
}

/// `GET /api/keys`.
#[derive(Debug, Serialize)]
pub struct Keys {
    /// Keys that sign record checkpoints.
    pub record_keys: Vec<RecordKey>,
    /// Keys that sign provision permits.
    pub permit_keys: kakehashi_interfaces::PermitKeySet,
    /// The command that verifies a downloaded export offline.
    pub verify_command: String,
}

/// The published keys.
pub fn keys(state: &AppState) -> Keys {
    Keys {
        verify_command: verify_command("export.csv", &state.records.sealer_public_key_hex()),
        // The same keys as the exchange's `GET /v1/record-keys`: the current
        // one first, then older ones still trusted.
        record_keys: state
            .records
            .record_keys()
            .keys
            .into_iter()
            .map(|k| RecordKey {
                key_id: k.key_id.to_string(),
                algorithm: "ed25519",
                public_key_hex: k.public_key.to_string(),
            })
            .collect(),
        permit_keys: state.keys.permit_key_set(),
    }
}

/// The command that verifies export `file` offline against the current
/// checkpoint key, named by its full public key (the client's README form;
/// a stronger pin than the key's id).
pub fn verify_command(file: &str, public_key_hex: &str) -> String {
    format!("kakehashi audit verify {file} --trusted-key {public_key_hex}")
}

/// Most entries on one page of the operation log.
const PAGE: usize = 100;

/// `GET /api/operation-log?action=…&actor=…&from=…&until=…&before=SEQ&limit=N`.
pub async fn operation_log(
    call: &Call<'_>,
    query: Option<&str>,
) -> Result<Response<Body>, BrokerError> {
    let privileged = call.session()?.privileges.number_privilege;
    let (mut entries, next_before) = operation_log_page(call, query).await?;
    if !privileged {
        // As the operation-log page shows them (R5).
        let hide = |s: &mut String| *s = masking::hide_numbers(s, false, masking::HIDDEN);
        for e in &mut entries {
            hide(&mut e.actor);
            for text in [&mut e.org, &mut e.target, &mut e.source, &mut e.detail] {
                text.iter_mut().for_each(hide);
            }
        }
    }
    Ok(edge::json(
        StatusCode::OK,
        &serde_json::json!({ "entries": entries, "next_before": next_before }),
    ))
}

/// One page of the operation log, newest first, and the `before` of the
/// next page; the reading itself is logged (the JSON search and the
/// operation-log page). `from`/`until` are RFC 3339 or a JST date.
pub(crate) async fn operation_log_page(
    call: &Call<'_>,
    query: Option<&str>,
) -> Result<(Vec<OpRecord>, Option<u64>), BrokerError> {
    let session = call.session()?;
    let mut filter = OpFilter::default();
    let mut before = None;
    let mut limit = PAGE;
    let invalid = |what: &str| {
        BrokerError::refused(
            kakehashi_interfaces::ErrorCode::InvalidInput,
            format!("query parameter {what} is not valid"),
        )
    };
    for (key, value) in edge::query_pairs(query) {
        match key.as_str() {
            "action" => filter.action = Some(value.parse().map_err(|_| invalid("action"))?),
            "actor" => filter.actor = Some(value),
            "from" => filter.since = Some(records::instant("from", &value)?),
            "until" => filter.until = Some(records::instant("until", &value)?),
            "before" => before = Some(value.parse().map_err(|_| invalid("before"))?),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| invalid("limit"))?
                    .clamp(1, 1000)
            }
            _ => return Err(invalid(&key)),
        }
    }
    // An auditor reads what concerns their own org; the union's auditors,
    // whose org runs the broker, read it all (host commands included).
    let own = call.console.state.directory.lookup(&session.org).await?;
    if !own.is_some_and(|o| o.kind == kakehashi_interfaces::OrgKind::Union) {
        filter.org = Some(session.org.clone());
    }
    let outcome = call.console.oplog.search(&filter, limit, before).await;
    let mut log = OpEntry::new(
        session.user_id.as_str(),
        OpAction::OplogSearch,
        OpResult::of(&outcome),
    );
    log.org = Some(session.org.clone());
    log.source = Some(call.conn.peer.ip().to_string());
    call.console.log(log).await?;
    let entries = outcome?;
    let next_before = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok((entries, next_before))
}
