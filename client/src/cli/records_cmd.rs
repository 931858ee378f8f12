//! `kakehashi person-records` (R18) and `kakehashi audit verify` (R16).

use std::path::Path;

use kakehashi_client::interfaces::audit::{self, ExportError};

use super::fail::{CliError, Exit};
use super::table;

fn text(v: &serde_json::Value, field: &str) -> String {
    match &v[field] {
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// Prints a person's disclosure list: one row per record, oldest first.
pub fn print_person_records(records: &[serde_json::Value]) {
    if records.is_empty() {
        println!("no records: nobody has received data about this person");
        return;
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let mut outcome = text(r, "outcome");
            if let Some(reason) = r["reason"].as_str() {
                outcome = format!("{outcome} ({reason})");
            }
            vec![
                text(r, "seq"),
                text(r, "at"),
                text(r, "requester"),
                text(r, "provider"),
                text(r, "flow_id"),
                text(r, "items"),
                outcome,
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "SEQ",
                "TIME (UTC)",
                "REQUESTER",
                "PROVIDER",
                "FLOW",
                "ITEMS",
                "OUTCOME"
            ],
            &rows
        )
    );
}

/// `kakehashi audit verify`: checks an export offline.
pub fn verify(
    file: &Path,
    bundle: Option<&Path>,
    trusted: &[String],
    json: bool,
) -> Result<Exit, CliError> {
    match audit::verify_export_files(file, bundle, trusted) {
        Ok(report) => {
            if json {
                super::print_json(&report)?;
            } else {
                println!(
                    "intact: {} rows in {} segments, {} signed checkpoints",
                    report.rows, report.segments, report.checkpoints
                );
                println!("export filter: {}", report.filter);
                println!("exported at:   {}", report.created_at);
                println!("signed by key: {}", report.key_ids.join(", "));
                if trusted.is_empty() {
                    eprintln!("note: compare the key id(s) above with the broker's published sealer key id, or pass --trusted-key-id");
                }
            }
            Ok(Exit::Ok)
        }
        Err(ExportError::Io { context, source }) => Err(CliError::usage(format!(
            "cannot read the export: {context}: {source}"
        ))
        .hint("give the data file written by `kakehashi-broker records export`; its bundle FILE.bundle.jsonl must be beside it (or use --bundle)")),
        Err(e) => Err(CliError {
            exit: Exit::Partial,
            message: format!("verification FAILED for {}: {e}", file.display()),
            hint: Some(
                "the export was altered, truncated or is not the one the bundle describes; export it again and report the difference to your auditor".into(),
            ),
        }),
    }
}
