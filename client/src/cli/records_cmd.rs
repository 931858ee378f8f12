//! `kakehashi person-records` (R18) and `kakehashi audit verify` (R16).

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use kakehashi_client::interfaces::audit::{
    self, DisclosureEntry, ExportError, ExportTrust, TrustedKeys,
};

use super::args::VerifyArgs;
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

/// Parses `--trusted-key` / `--pin-key` values: Ed25519 public keys, hex.
pub fn parse_keys(texts: &[String], flag: &str) -> Result<Vec<VerifyingKey>, CliError> {
    texts
        .iter()
        .map(|text| {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut bytes)
                .ok()
                .and_then(|()| VerifyingKey::from_bytes(&bytes).ok())
                .ok_or_else(|| {
                    CliError::usage(format!("{flag} {text:?} is not an Ed25519 public key"))
                        .hint("give the 64 hex digits of public_key from GET /v1/record-keys or the console's keys page")
                })
        })
        .collect()
}

/// `kakehashi audit verify`: checks an export offline, and whether the keys
/// that signed it are trusted (pinned in the profile, or given).
pub fn verify(chosen: Option<&str>, args: &VerifyArgs) -> Result<Exit, CliError> {
    let VerifyArgs {
        file,
        bundle,
        trusted_keys,
        trusted_key_ids: trusted_ids,
        tsa_cert,
        json,
    } = args;
    let (file, bundle, tsa_cert, json) = (
        file.as_path(),
        bundle.as_deref(),
        tsa_cert.as_deref(),
        *json,
    );
    let tsa = tsa_cert.map(read_tsa_cert).transpose()?;
    // An auditor without a profile gives the key on the command line.
    let profile = match super::profile_cmd::resolve(chosen) {
        Ok(found) => Some(found),
        Err(_) if chosen.is_none() => None,
        Err(e) => return Err(e),
    };
    let mut trusted = match &profile {
        Some((_, p)) => p.trusted_record_keys()?,
        None => TrustedKeys::new(),
    };
    for key in parse_keys(trusted_keys, "--trusted-key")? {
        trusted.add(key);
    }
    let report = match audit::verify_export_files(file, bundle, &[]) {
        Ok(report) => report,
        Err(ExportError::Io { context, source }) => return Err(CliError::usage(format!(
            "cannot read the export: {context}: {source}"
        ))
        .hint("give the data file written by `kakehashi-broker records export`; its bundle FILE.bundle.jsonl must be beside it (or use --bundle)")),
        Err(e) => return Err(CliError {
            exit: Exit::Partial,
            message: format!("検証に失敗しました / verification FAILED for {}: {e}", file.display()),
            hint: Some(
                "the export was altered, truncated or is not the one the bundle describes; export it again and report the difference to your auditor".into(),
            ),
        }),
    };
    let stamped = match &tsa {
        Some(cert) => Some(report.verify_timestamps(cert).map_err(|f| CliError {
            exit: Exit::Partial,
            message: format!(
                "タイムスタンプの検証に失敗しました / time-stamp verification FAILED for {}: {f} (TSA {})",
                file.display(),
                cert.subject()
            ),
            hint: Some(
                "the token does not belong to this checkpoint or was not issued by this TSA; check that --tsa-cert is your broker's TSA and report the difference to your auditor".into(),
            ),
        })?),
        None => None,
    };
    let trust = report.trust(&trusted, trusted_ids);
    if json {
        super::print_json(
            &serde_json::json!({ "report": report, "trust": trust, "timestamps_verified": stamped }),
        )?;
    } else {
        println!(
            "整合: {} 行、{} 区間、署名付きチェックポイント {} 件 / consistent: {} rows in {} segments, {} signed checkpoints",
            report.rows, report.segments, report.checkpoints, report.rows, report.segments, report.checkpoints
        );
        println!("export filter: {}", report.filter);
        println!("exported at:   {}", report.created_at);
        println!("signed by key: {}", report.key_ids.join(", "));
        println!(
            "sealed by key: {}",
            report.sealed_by.as_deref().unwrap_or("none (no seal line)")
        );
        print_timestamps(&report, stamped.as_deref(), tsa.as_ref());
    }
    match trust {
        ExportTrust::Trusted { key_ids } => {
            if !json {
                println!(
                    "信頼する鍵 {0} で検証済み / verified against trusted key {0}",
                    key_ids.join(", ")
                );
            }
            // The export's latest checkpoint is one more this org has seen.
            if let (Some((name, p)), Some(latest)) = (&profile, &report.latest) {
                if let Err(e) = super::checkpoint_book(name, p)?.observe(latest) {
                    eprintln!("warning: {}", CliError::from(e));
                }
            }
            Ok(Exit::Ok)
        }
        ExportTrust::Unsealed { key_ids } => Err(CliError {
            exit: Exit::NotTrusted,
            message: format!(
                "封印がありません / not sealed: checkpoints signed by trusted key {}, but {}",
                key_ids.join(", "),
                audit::UNSEALED_EXPORT
            ),
            hint: Some(
                "export the period again from the broker (records are kept seven years); its export carries a seal".into(),
            ),
        }),
        ExportTrust::NotTrusted { untrusted } => Err(CliError {
            exit: Exit::NotTrusted,
            message: format!(
                "自己整合的ですが、鍵は信頼されていません / self-consistent, key not trusted: {}",
                if untrusted.is_empty() {
                    "no checkpoint in the export is signed".to_string()
                } else {
                    format!("key {} is neither pinned nor given", untrusted.join(", "))
                }
            ),
            hint: Some(
                "anyone can re-chain records and sign them; pin the broker's keys (`kakehashi audit keys --pin`, comparing the ids with the broker's operator) or pass --trusted-key".into(),
            ),
        }),
    }
}

/// Reads `--tsa-cert`.
fn read_tsa_cert(path: &Path) -> Result<audit::TsaCertificate, CliError> {
    let pem = std::fs::read(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the TSA certificate {}: {e}",
            path.display()
        ))
    })?;
    audit::TsaCertificate::from_pem(&pem).map_err(|e| {
        CliError::usage(format!("{}: {e}", path.display()))
            .hint("give the PEM certificate of the Time-Stamp Authority your broker uses ([records] tsa_cert)")
    })
}

/// The time-stamp lines of `audit verify`'s report.
fn print_timestamps(
    report: &audit::ExportReport,
    stamped: Option<&[audit::VerifiedTimestamp]>,
    tsa: Option<&audit::TsaCertificate>,
) {
    match (stamped, tsa) {
        (Some(stamped), Some(cert)) => {
            for t in stamped {
                println!(
                    "時刻認証済み / time-stamped: checkpoint {} at {} by TSA {}",
                    t.seq,
                    t.gen_time,
                    cert.subject()
                );
            }
            if !report.untimestamped.is_empty() {
                println!(
                    "タイムスタンプなし / no timestamp: checkpoint {} (signed while the TSA failed, or its token was removed)",
                    report
                        .untimestamped
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        _ if !report.timestamps.is_empty() => println!(
            "{} checkpoints carry time-stamp tokens whose imprints match; give --tsa-cert to verify the TSA's signatures",
            report.timestamps.len()
        ),
        _ => {}
    }
}
