//! `kakehashi flows` and `kakehashi query` for one person.

use std::time::Duration;

use kakehashi_client::interfaces::{FlowListView, Party};
use kakehashi_client::{Client, Query, QueryOutcome};
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

/// `kakehashi query --person …`: one query, printed as a table or JSON.
pub async fn run_single(client: &Client, args: &QueryArgs, query: Query) -> Result<Exit, CliError> {
    let mut outcome = client.query(&query).await?;
    if args.wait > 0 {
        if let QueryOutcome::Pending(pending) = outcome {
            eprintln!(
                "query {} is pending approval by {}; waiting up to {}s",
                pending.query_id, query.provider, args.wait
            );
            outcome = client.wait(pending, Duration::from_secs(args.wait)).await?;
        }
    }
    let exit = if matches!(outcome, QueryOutcome::Provided(_)) {
        Exit::Ok
    } else {
        Exit::Partial
    };
    if args.json {
        let value = match &outcome {
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
                "provider": query.provider,
                "permit_id": p.permit.claims.permit_id,
                "expires_at": p.expires_at.unix_timestamp(),
            }),
            other => json!({
                "query_id": other.query_id(),
                "status": other.status().as_str(),
                "provider": query.provider,
            }),
        };
        super::print_json(&value)?;
        return Ok(exit);
    }
    match &outcome {
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
                "query {}: pending approval by an operator of {}",
                p.query_id, query.provider
            );
            eprintln!("the answer can only be opened by this process (the reply key is not stored); use --wait SECS to wait for it");
        }
        other => println!("query {}: {}", other.query_id(), other.status()),
    }
    Ok(exit)
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
