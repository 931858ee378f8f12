//! `GET /v1/record-keys` (the keys that sign provision-record checkpoints,
//! for orgs and auditors to pin) and `GET /v1/record-chain?from=A&to=B`
//! (leaf hashes between two heads and the latest signed checkpoint, for an
//! org to witness that the log still extends a checkpoint it kept).

use kakehashi_interfaces::records::{RecordChain, RecordKeySet};
use kakehashi_interfaces::ErrorCode;

use crate::edge::http as edge;
use crate::error::BrokerError;
use crate::state::AppState;

/// `GET /v1/record-keys`: the current sealer key and the older ones still
/// trusted — the same keys as the console's `GET /api/keys`.
pub fn keys(state: &AppState) -> RecordKeySet {
    state.records.record_keys()
}

/// `GET /v1/record-chain?from=A&to=B`.
pub async fn chain(state: &AppState, query: Option<&str>) -> Result<RecordChain, BrokerError> {
    let invalid = |what: &str| {
        BrokerError::refused(
            ErrorCode::InvalidInput,
            format!("query parameter {what} must be a sequence number"),
        )
    };
    let mut from = None;
    let mut to = None;
    for (key, value) in edge::query_pairs(query) {
        match key.as_str() {
            "from" => from = Some(value.parse::<u64>().map_err(|_| invalid("from"))?),
            "to" => to = Some(value.parse::<u64>().map_err(|_| invalid("to"))?),
            _ => {
                return Err(BrokerError::refused(
                    ErrorCode::InvalidInput,
                    "query parameters are from and to",
                ))
            }
        }
    }
    let from = from.ok_or_else(|| invalid("from"))?;
    if to.is_some_and(|to| to < from) {
        return Err(BrokerError::refused(
            ErrorCode::InvalidInput,
            "to must not be before from",
        ));
    }
    state.records.chain(from, to).await
}
