//! `kakehashi person-records` (R18) and `kakehashi audit verify` (R16).

use std::path::Path;

use kakehashi_client::interfaces::audit::{self, DisclosureEntry, ExportError};

use super::fail::{CliError, Exit};
use super::table;

/// Prints a person's disclosure list: one row per record, oldest first.
pub fn print_person_records(records: &[DisclosureEntry]) {
    if records.is_empty() {
        println!("no records: nobody has received data about this person");
        return;
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let outcome = match &r.reason {
                Some(reason) => format!("{} ({reason})", r.outcome),
                None => r.outcome.clone(),
            };
            vec![
                r.seq.to_string(),
                r.at.clone(),
                r.requester.clone(),
                dash(&r.provider),
                dash(&r.flow_id),
                r.items.join(" "),
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
