//! The batch endpoints: `POST /v1/persons` (register or link) and
//! `POST /v1/copies` (deposit), both JSON Lines. Good lines apply, bad lines
//! come back with their line number and reason; nothing of a bad line is
//! stored.

use std::collections::BTreeMap;

use kakehashi_interfaces::copies::{CopyDeposit, DepositReport};
use kakehashi_interfaces::person::{
    LineIssue, LineReason, PersonRegistration, RegisteredPerson, RegistrationReport,
};
use kakehashi_interfaces::{parse_jsonl, ErrorCode, OrgKind};
use zeroize::Zeroizing;

use crate::copies;
use crate::error::BrokerError;
use crate::identity::{self, PersonInput, Registered};
use crate::state::AppState;
use crate::store::OrgRecord;

fn too_many(max: usize) -> BrokerError {
    BrokerError::refused(
        ErrorCode::InvalidInput,
        format!("a batch may hold at most {max} lines; split the file"),
    )
}

fn issue(line: u64, reason: LineReason, message: impl Into<String>) -> LineIssue {
    LineIssue {
        line,
        reason,
        message: message.into(),
    }
}

/// Whether a line failed because its Individual Number is missing or invalid
/// (serde names the field, or the number's own validation speaks).
fn names_individual_number(e: &kakehashi_interfaces::InvalidInput) -> bool {
    e.field == "individual_number"
        || e.reason.contains("individual_number")
        || e.reason.contains("12 digits")
        || e.reason.contains("ASCII digits")
        || e.reason.contains("check digit")
}

/// `POST /v1/persons`: the union registers insured persons; other orgs link
/// their own records by Individual Number and receive their own codes —
/// for every valid number, whether or not an insurer registered it
/// ([`identity::link_batch`]).
pub async fn persons(
    state: &AppState,
    org: &OrgRecord,
    body: &[u8],
) -> Result<RegistrationReport, BrokerError> {
    let lines = parse_jsonl::<PersonRegistration>(body);
    if lines.len() > state.config.exchange.max_batch_lines {
        return Err(too_many(state.config.exchange.max_batch_lines));
    }
    let mut report = RegistrationReport {
        applied: Vec::new(),
        confirmation_list: Vec::new(),
    };
    let mut good: Vec<(u64, PersonRegistration)> = Vec::new();
    for (line, parsed) in lines {
        match parsed {
            Ok(p) => good.push((line, p)),
            Err(e) if names_individual_number(&e) => report.confirmation_list.push(issue(
                line,
                LineReason::MissingIndividualNumber,
                "the line has no valid Individual Number; it was not applied",
            )),
            Err(e) => {
                report
                    .confirmation_list
                    .push(issue(line, LineReason::InvalidInput, e.reason))
            }
        }
    }
    let pools = state.store.pools();
    if org.kind == OrgKind::Union {
        let facts: Vec<Zeroizing<Vec<u8>>> = good
            .iter()
            .map(|(_, p)| serde_json::to_vec(&p.basic).map(Zeroizing::new))
            .collect::<Result<_, _>>()
            .map_err(|e| BrokerError::encoding("JSON", e))?;
        let inputs: Vec<PersonInput<'_>> = good
            .iter()
            .zip(&facts)
            .map(|((_, p), f)| PersonInput {
                number: p.individual_number.expose(),
                facts: f,
                eligibility_lost_on: p
                    .eligibility_lost_on
                    .map(kakehashi_interfaces::datetime::format_date),
            })
            .collect();
        let outcomes = identity::register_batch(&pools, &state.keys, &org.id, &inputs).await?;
        for ((line, _), outcome) in good.iter().zip(outcomes) {
            match outcome {
                Registered::Applied { code, branch_number, created } => report.applied.push(RegisteredPerson {
                    line: *line,
                    person_code: code.parse().map_err(BrokerError::from)?,
                    branch_number: Some(branch_number.parse().map_err(BrokerError::from)?),
                    created,
                }),
                Registered::NumberConflict => report.confirmation_list.push(issue(
                    *line,
                    LineReason::IndividualNumberConflict,
                    "a person with the same basic four facts is linked to a different Individual Number; check and correct",
                )),
            }
        }
    } else {
        // Eligibility is the insurer's to state; a link line claiming it
        // would otherwise be silently ignored.
        good.retain(|(line, p)| {
            if p.eligibility_lost_on.is_none() {
                return true;
            }
            report.confirmation_list.push(issue(
                *line,
                LineReason::InvalidInput,
                "eligibility_lost_on: only the insurer reports loss of eligibility; the line was not applied",
            ));
            false
        });
        let numbers: Vec<&str> = good
            .iter()
            .map(|(_, p)| p.individual_number.expose())
            .collect();
        // Every valid number gets the org's code, registered by an insurer
        // or not (R5): the answer must not tell another org's registrations.
        // `created` is always false for a link, for the same reason.
        let codes = identity::link_batch(&pools, &state.keys, &org.id, &numbers).await?;
        for ((line, _), code) in good.iter().zip(codes) {
            report.applied.push(RegisteredPerson {
                line: *line,
                person_code: code.parse().map_err(BrokerError::from)?,
                branch_number: None,
                created: false,
            });
        }
    }
    report.confirmation_list.sort_by_key(|i| i.line);
    Ok(report)
}

/// `POST /v1/copies`: a provider deposits item values per person, by its own codes.
pub async fn copies(
    state: &AppState,
    org: &OrgRecord,
    body: &[u8],
) -> Result<DepositReport, BrokerError> {
    let lines = parse_jsonl::<CopyDeposit>(body);
    if lines.len() > state.config.exchange.max_batch_lines {
        return Err(too_many(state.config.exchange.max_batch_lines));
    }
    let flows = state.flows();
    let providable = flows.providable_items(&org.id, org.kind);
    let pools = state.store.pools();
    let mut rejected = Vec::new();
    let mut good: BTreeMap<String, (u64, Zeroizing<Vec<u8>>)> = BTreeMap::new();
    for (line, parsed) in lines {
        let deposit = match parsed {
            Ok(d) => d,
            Err(e) => {
                rejected.push(issue(line, LineReason::InvalidInput, e.reason));
                continue;
            }
        };
        if let Some(item) = deposit
            .items
            .keys()
            .find(|i| !providable.contains(i.as_str()))
        {
            rejected.push(issue(
                line,
                LineReason::ItemNotAllowed,
                format!("no flow lets this org provide item `{item}`"),
            ));
            continue;
        }
        if identity::resolve(&pools, &org.id, deposit.person.as_str())
            .await?
            .is_none()
        {
            rejected.push(issue(
                line,
                LineReason::UnknownPerson,
                "this org has no person with that code",
            ));
            continue;
        }
        let json = serde_json::to_vec(&deposit.items)
            .map_err(|e| BrokerError::encoding("copy items", e))?;
        // A later line for the same person in one batch wins, like a later deposit.
        good.insert(deposit.person.to_string(), (line, Zeroizing::new(json)));
    }
    let entries: Vec<(String, Zeroizing<Vec<u8>>)> = good
        .into_iter()
        .map(|(code, (_, json))| (code, json))
        .collect();
    let replaced = copies::deposit_batch(&pools, &state.keys, &org.id, &entries).await?;
    rejected.sort_by_key(|i| i.line);
    Ok(DepositReport {
        applied: entries.len() as u64,
        replaced: replaced.iter().filter(|r| **r).count() as u64,
        rejected,
    })
}
