//! `kakehashi flows` and `kakehashi query` for one person.

use std::time::Duration;

use kakehashi_client::interfaces::{FlowListView, OrgId, Party, QueryId};
use kakehashi_client::{Client, PendingStore, Query, QueryOutcome};
use serde_json::json;

use super::args::QueryArgs;
use super::fail::{CliError, Exit};
use super::table;

fn party(p: &Party) -> String {
    match p {
        Party::Org { org } => org.to_string(),
        Party::Kind { kind } => format!("any {}", kind.as_str()),
    }
}

/// Prints the flow list view as a table; sensitive items are marked with `*`.
pub fn print_flows(view: &FlowListView) {
    if view.flows.is_empty() {
        println!("no flows for this org (flow list version {})", view.version);
        return;
    }
    let rows: Vec<Vec<String>> = view
        .flows
        .iter()
        .map(|f| {
            let items: Vec<String> = f
                .items
                .iter()
                .map(|i| {
                    if f.is_sensitive(i) {
                        format!("{i}*")
                    } else {
                        i.to_string()
                    }
                })
                .collect();
            let until = f
                .valid_until
                .map(|d| d.to_string())
                .unwrap_or_else(|| "…".to_string());
            vec![
                f.flow_id.to_string(),
                f.procedure.to_string(),
                party(&f.requester),
                party(&f.provider),
                items.join(" "),
                format!("{}..{until}", f.valid_from),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "FLOW",
                "PROCEDURE",
                "REQUESTER",
                "PROVIDER",
                "ITEMS",
                "VALID"
            ],
            &rows
        )
    );
    println!(
        "flow list version {}; * = sensitive (answered only after the provider's approval)",
        view.version
    );
}

/// The query the flags describe, or a usage error naming what is missing.
pub fn query_from_flags(args: &QueryArgs, person: &str) -> Result<Query, CliError> {
    let mut missing = Vec::new();
    if args.flow.is_none() {
        missing.push("--flow");
    }
    if args.procedure.is_none() {
        missing.push("--procedure");
    }
    if args.provider.is_none() {
        missing.push("--provider");
    }
    if args.items.is_empty() {
        missing.push("--item");
    }
    if !missing.is_empty() {
        return Err(CliError::usage(format!("missing {}", missing.join(", ")))
            .hint("see `kakehashi flows` for the flows, procedures, providers and items this org may use"));
    }
    Query::parse(
        args.flow.as_deref().unwrap_or_default(),
        args.procedure.as_deref().unwrap_or_default(),
        args.provider.as_deref().unwrap_or_default(),
        person,
        &args.items,
    )
    .map_err(|e| CliError::usage(e.to_string()).hint("correct the arguments"))
}

/// `kakehashi query --person …`: one query, printed as a table or JSON. A
/// pending answer's reply key is kept in `store` until the answer is opened.
pub async fn run_single(
    client: &Client,
    store: &PendingStore,
    args: &QueryArgs,
    query: Query,
) -> Result<Exit, CliError> {
    let mut outcome = client.query(&query).await?;
    let mut kept = None;
    let mut unkept = None;
    if let QueryOutcome::Pending(pending) = &outcome {
        // Kept before waiting, so that a process killed while waiting loses nothing.
        match store.save(pending, client.broker(), None) {
            Ok(_) => kept = Some(pending.query_id.clone()),
            // The broker has the query: this is no "nothing was sent" error.
            Err(e) => {
                let err = CliError::key_not_kept(&pending.query_id, &e, false);
                if args.wait == 0 {
                    return Err(err);
                }
                // The key is still in memory: an answer decided while
                // waiting can be opened all the same.
                eprintln!("warning: {}", err.message);
                unkept = Some(err);
            }
        }
    }
    if args.wait > 0 {
        if let QueryOutcome::Pending(pending) = outcome {
            eprintln!(
                "query {} is pending approval by {}; waiting up to {}s",
                pending.query_id, query.provider, args.wait
            );
            outcome = match client.wait(pending, Duration::from_secs(args.wait)).await {
                Ok(o) => o,
                Err(e) => match unkept {
                    // What matters more is that the answer is lost.
                    Some(lost) => {
                        eprintln!("{}: {}", super::fail::ERROR, CliError::from(e));
                        return Err(lost);
                    }
                    None => return Err(e.into()),
                },
            };
        }
    }
    if let (QueryOutcome::Pending(_), Some(err)) = (&outcome, unkept) {
        return Err(err);
    }
    print_outcome(&outcome, &query.provider, args.json)?;
    match (&outcome, kept) {
        (QueryOutcome::Pending(p), _) if !args.json => {
            eprintln!(
                "the reply key is kept, encrypted, in {}; once approved, open the answer with `kakehashi query get {}` or `kakehashi query collect`",
                store.path_of(&p.query_id).display(),
                p.query_id
            );
        }
        (QueryOutcome::Pending(_), _) => {}
        // Decided while waiting: the kept key is no longer needed.
        (_, Some(query_id)) => {
            store.wipe(&query_id)?;
        }
        (_, None) => {}
    }
    Ok(exit_for(&outcome))
}

/// Exit code of one query's outcome: 0 provided, 1 anything else.
pub fn exit_for(outcome: &QueryOutcome) -> Exit {
    if matches!(outcome, QueryOutcome::Provided(_)) {
        Exit::Ok
    } else {
        Exit::Partial
    }
}

/// The JSON object `kakehashi query --json` prints for an outcome.
pub fn outcome_json(outcome: &QueryOutcome, provider: &OrgId) -> serde_json::Value {
    match outcome {
        QueryOutcome::Provided(a) => json!({
            "query_id": a.query_id,
            "status": "provided",
            "provider": a.provider,
            "flow_id": a.flow_id,
            "permit_id": a.permit.claims.permit_id,
            "items": a.items.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect::<serde_json::Map<_, _>>(),
            "missing": a.missing,
        }),
        QueryOutcome::Pending(p) => json!({
            "query_id": p.query_id,
            "status": "pending",
            "provider": provider,
            "permit_id": p.permit.claims.permit_id,
            "expires_at": p.expires_at.unix_timestamp(),
        }),
        QueryOutcome::Rejected { query_id, reason } => json!({
            "query_id": query_id,
            "status": "rejected",
            "provider": provider,
            "reason": reason,
        }),
        QueryOutcome::Expired { query_id } => json!({
            "query_id": query_id,
            "status": "expired",
            "provider": provider,
        }),
    }
}

/// Prints an outcome as `kakehashi query` does: a table of the items, or
/// what became of the query; JSON with `json`.
pub fn print_outcome(outcome: &QueryOutcome, provider: &OrgId, json: bool) -> Result<(), CliError> {
    if json {
        return super::print_json(&outcome_json(outcome, provider));
    }
    match outcome {
        QueryOutcome::Provided(a) => {
            println!(
                "query {}: provided by {} under flow {} (permit {})",
                a.query_id, a.provider, a.flow_id, a.permit.claims.permit_id
            );
            let mut rows: Vec<Vec<String>> = a
                .items
                .iter()
                .map(|(k, v)| vec![k.to_string(), display_value(&v.to_json())])
                .collect();
            rows.extend(
                a.missing
                    .iter()
                    .map(|k| vec![k.to_string(), "(no value held)".to_string()]),
            );
            print!("{}", table::render(&["ITEM", "VALUE"], &rows));
        }
        QueryOutcome::Pending(p) => {
            println!(
                "query {}: pending approval by an operator of {provider}",
                p.query_id
            );
        }
        QueryOutcome::Rejected { query_id, reason } => {
            let (ja, en) = match reason {
                Some(r) => (r.as_str(), r.as_str()),
                None => ("記載なし", "none given"),
            };
            println!("照会 {query_id}: {provider} の担当者が提供を却下しました（理由: {ja}）");
            println!("query {query_id}: rejected by an operator of {provider} (reason: {en})");
        }
        QueryOutcome::Expired { query_id } => print_expired(query_id, false),
    }
    Ok(())
}

/// The two lines (Japanese, English) saying that a query expired;
/// `not_found` when the broker no longer knows it at all.
pub fn print_expired(query_id: &QueryId, not_found: bool) {
    if not_found {
        println!("照会 {query_id}: 期限切れです（ブローカーから削除され、見つかりません）");
        println!("query {query_id}: expired: the broker no longer holds it (not found)");
    } else {
        println!(
            "照会 {query_id}: 期限切れです（期限内に承認されず、ブローカーから削除されました）"
        );
        println!("query {query_id}: expired (not decided in time; the broker deleted it)");
    }
}

/// A JSON scalar as a table cell: strings without quotes, control characters escaped.
pub fn display_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().collect()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        other => other.to_string(),
    }
}
