//! `GET /v1/persons/{code}/records`: who received which data about one of
//! the union's insured persons, and when (R18).

use kakehashi_interfaces::{ErrorCode, OrgId, PersonCode};

use crate::error::BrokerError;
use crate::records::DisclosureEntry;
use crate::state::AppState;

/// Every record about the person, whichever orgs exchanged it, found through
/// each org's own code. Other orgs' codes are never returned.
pub async fn for_person(
    state: &AppState,
    org: &OrgId,
    person_code: &str,
) -> Result<Vec<DisclosureEntry>, BrokerError> {
    PersonCode::new(person_code).map_err(BrokerError::from)?;
    let pools = state.store.pools();
    let Some(person) = crate::identity::resolve(&pools, org, person_code).await? else {
        return Err(BrokerError::refused(
            ErrorCode::UnknownPerson,
            "this org has no person with that code",
        ));
    };
    // A linking org's code names the number, so its records also hold its
    // exchanges with other insurers that registered the same number: those
    // are the other insurers' partitions (R2), not this union's to list.
    let others = crate::identity::other_insurers(&pools, &person).await?;
    let theirs = |e: &DisclosureEntry| {
        others
            .iter()
            .any(|o| e.requester == o.as_str() || e.provider.as_deref() == Some(o.as_str()))
    };
    let mut entries = Vec::new();
    for (holder, code) in crate::identity::all_codes(&pools, &person).await? {
        let found = state.records.disclosure(&holder, &code).await?;
        entries.extend(found.into_iter().filter(|e| holder == *org || !theirs(e)));
    }
    entries.sort_by_key(|e| e.seq);
    entries.dedup_by_key(|e| e.seq);
    Ok(entries)
}
