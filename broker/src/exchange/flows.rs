//! `GET /v1/flows` (the flow-list rows an org takes part in) and
//! `GET /v1/permit-keys` (the keys that verify permits offline).

use kakehashi_interfaces::flows::{FlowEntry, FlowListView, Party};
use kakehashi_interfaces::PermitKeySet;

use crate::policy::FlowRule;
use crate::state::AppState;
use crate::store::OrgRecord;

fn party(p: &crate::policy::Party) -> Option<Party> {
    match (&p.org, p.kind) {
        (Some(org), _) => Some(Party::Org { org: org.clone() }),
        (None, Some(kind)) => Some(Party::Kind { kind }),
        _ => None,
    }
}

fn entry(rule: &FlowRule) -> Option<FlowEntry> {
    Some(FlowEntry {
        flow_id: rule.flow_id.parse().ok()?,
        procedure: rule.procedure.parse().ok()?,
        requester: party(&rule.requester)?,
        provider: party(&rule.provider)?,
        items: rule.items.iter().filter_map(|i| i.parse().ok()).collect(),
        sensitive_items: rule
            .sensitive_items
            .iter()
            .filter_map(|i| i.parse().ok())
            .collect(),
        legal_basis: rule.legal_basis.clone(),
        valid_from: rule.valid_from,
        valid_until: rule.valid_until,
    })
}

/// `GET /v1/flows`: the rows this org takes part in.
pub fn flow_view(state: &AppState, org: &OrgRecord) -> FlowListView {
    let flows = state.flows();
    FlowListView {
        version: flows.version,
        flows: flows
            .for_org(&org.id, org.kind)
            .into_iter()
            .filter_map(entry)
            .collect(),
    }
}

/// `GET /v1/permit-keys`: the broker's permit verifying keys.
pub fn permit_keys(state: &AppState) -> PermitKeySet {
    state.keys.permit_key_set()
}
