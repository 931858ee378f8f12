//! What auditors and administrators read: `GET /api/keys` (the keys that
//! verify records and exports offline, R16), `GET /api/operation-log`
//! (R17) and `GET /api/users`.

use http::{Response, StatusCode};
use serde::Serialize;

use crate::console::endpoints::Call;
use crate::edge::http::{self as edge, Body};
use crate::error::BrokerError;
use crate::oplog::{OpAction, OpEntry, OpFilter, OpResult};
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
    let key_id = state.records.sealer_key_id().to_string();
    Keys {
        verify_command: format!("kakehashi audit verify export.csv --trusted-key-id {key_id}"),
        record_keys: vec![RecordKey {
            key_id,
            algorithm: "ed25519",
            public_key_hex: state.records.sealer_public_key_hex(),
        }],
        permit_keys: state.keys.permit_key_set(),
    }
}

/// Most entries on one page of the operation log.
const PAGE: usize = 100;

/// `GET /api/operation-log?action=…&actor=…&before=SEQ&limit=N`.
pub async fn operation_log(
    call: &Call<'_>,
    query: Option<&str>,
) -> Result<Response<Body>, BrokerError> {
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
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "action" => filter.action = Some(value.parse().map_err(|_| invalid("action"))?),
            "actor" => filter.actor = Some(value.to_string()),
            "before" => before = Some(value.parse().map_err(|_| invalid("before"))?),
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| invalid("limit"))?
                    .clamp(1, 1000)
            }
            _ => return Err(invalid(key)),
        }
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
    Ok(edge::json(
        StatusCode::OK,
        &serde_json::json!({ "entries": entries, "next_before": next_before }),
    ))
}

/// `GET /api/users`: every user, without hashes or secrets.
pub async fn users(call: &Call<'_>) -> Result<Response<Body>, BrokerError> {
    let users = call.console.people.list().await?;
    Ok(edge::json(
        StatusCode::OK,
        &kakehashi_interfaces::people::UserList { users },
    ))
}
