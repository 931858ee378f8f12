//! `kakehashi-broker oplog …`: search, verify and checkpoint the operation
//! log on the host.

use std::path::Path;

use clap::Subcommand;
use kakehashi_interfaces::{ErrorCode, OrgId};

use crate::config::Config;
use crate::error::BrokerError;
use crate::oplog::{HostLog, OpAction, OpFilter, OpRecord, OpResult, OpResultFilter, OpVerdict};
use crate::store;

/// `oplog` subcommands.
#[derive(Debug, Subcommand)]
pub enum OplogCommand {
    /// Verify every entry against the hash chain, the entry signatures, the
    /// signed checkpoints and the sealer's state file; on failure name the
    /// first bad sequence number and the kind of damage (exit 1).
    Verify {
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show entries, newest first (the reading is itself logged).
    Show {
        /// From this day (YYYY-MM-DD, UTC) or instant (RFC 3339), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Up to this day (YYYY-MM-DD, UTC, inclusive) or instant (RFC 3339, exclusive).
        #[arg(long)]
        until: Option<String>,
        /// Only this actor (user id, or `host:<login name>`).
        #[arg(long)]
        actor: Option<String>,
        /// Only entries concerning this org.
        #[arg(long)]
        org: Option<String>,
        /// Only this action (e.g. login_failed, org_suspended).
        #[arg(long)]
        action: Option<String>,
        /// Only `success` or `refused`.
        #[arg(long)]
        result: Option<String>,
        /// Most entries shown (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only entries before this sequence number (the next page).
        #[arg(long)]
        before: Option<u64>,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn invalid(message: String) -> BrokerError {
    BrokerError::refused(ErrorCode::InvalidInput, message)
}

/// A day (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 instant; `true` when a day.
fn parse_when(s: &str) -> Result<(time::OffsetDateTime, bool), BrokerError> {
    let day = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(s, &day) {
        return Ok((date.midnight().assume_utc(), true));
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t, false))
        .map_err(|_| invalid(format!("{s:?} is neither YYYY-MM-DD nor an RFC 3339 time")))
}

/// Runs an `oplog` subcommand against the database and key directory of
/// the broker.toml at `config`.
pub async fn run(config: &Path, command: OplogCommand) -> Result<(), BrokerError> {
    let config = Config::load(config)?;
    let store = store::open(&config.storage).await?;
    let pools = store.pools();
    match command {
        OplogCommand::Verify { json } => {
            let verdict = crate::oplog::verify_store(&pools, &config.keys.dir).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&verdict)
                        .map_err(|e| BrokerError::encoding("JSON", e))?
                );
            }
            match verdict {
                OpVerdict::Intact(s) => {
                    if !json {
                        println!(
                            "操作ログは完全です (operation log intact): {} entries, {} checkpoints verified, sealed up to {}, {} unsealed; sealer key ids: {}",
                            s.entries,
                            s.checkpoints,
                            s.sealed_seq,
                            s.last_seq - s.sealed_seq,
                            s.key_ids.join(", ")
                        );
                    }
                    Ok(())
                }
                OpVerdict::Broken(f) => Err(BrokerError::refused(
                    ErrorCode::Internal,
                    format!(
                        "操作ログの検証に失敗しました (operation log fails verification): first bad sequence {}, kind {}: {}",
                        f.seq,
                        f.damage.name(),
                        f.damage
                    ),
                )),
            }
        }
        OplogCommand::Show {
            since,
            until,
            actor,
            org,
            action,
            result,
            limit,
            before,
            json,
        } => {
            // Validated before the log is opened: a refused search is not an action.
            let filter = OpFilter {
                since: since
                    .as_deref()
                    .map(parse_when)
                    .transpose()?
                    .map(|(t, _)| t),
                until: until
                    .as_deref()
                    .map(parse_when)
                    .transpose()?
                    // A day is inclusive: up to the next midnight.
                    .map(|(t, day)| if day { t + time::Duration::days(1) } else { t }),
                actor,
                org: org.map(OrgId::new).transpose()?,
                action: action.as_deref().map(str::parse).transpose()?,
                result: match result.as_deref() {
                    None => None,
                    Some("success") => Some(OpResultFilter::Success),
                    Some("refused") => Some(OpResultFilter::Refused),
                    Some(_) => return Err(invalid("--result is success or refused".into())),
                },
            };
            let log = HostLog::open(pools, &config.keys.dir).await?;
            let found = log.log.search(&filter, limit, before).await;
            let summary = describe(&filter, before);
            log.outcome(
                OpAction::OplogSearch,
                None,
                None,
                Some(summary),
                found.as_ref().map(|_| ()).map_err(clone_error),
            )
            .await?;
            let found = found?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&found)
                        .map_err(|e| BrokerError::encoding("JSON", e))?
                );
            } else {
                print_table(&found);
            }
            Ok(())
        }
    }
}

/// A refusal keeps its code for the log; the message stays with the original.
fn clone_error(e: &BrokerError) -> BrokerError {
    BrokerError::refused(e.code(), e.public_message())
}

/// The filter as a short detail for the log entry of a search.
fn describe(filter: &OpFilter, before: Option<u64>) -> String {
    let mut parts = Vec::new();
    if let Some(t) = filter.since {
        parts.push(format!("since={}", crate::store::timestamp(t)));
    }
    if let Some(t) = filter.until {
        parts.push(format!("until={}", crate::store::timestamp(t)));
    }
    if let Some(a) = &filter.actor {
        parts.push(format!("actor={a}"));
    }
    if let Some(o) = &filter.org {
        parts.push(format!("org={o}"));
    }
    if let Some(a) = filter.action {
        parts.push(format!("action={a}"));
    }
    if let Some(r) = filter.result {
        parts.push(format!("result={r:?}").to_lowercase());
    }
    if let Some(b) = before {
        parts.push(format!("before={b}"));
    }
    parts.join(" ")
}

fn print_table(found: &[OpRecord]) {
    println!(
        "{:>6}  {:<27}  {:<20}  {:<16}  {:<24}  {:<20}  {:<22}  {:<15}  DETAIL",
        "SEQ", "AT", "ACTOR", "ORG", "ACTION", "TARGET", "RESULT", "SOURCE"
    );
    for r in found {
        let result = match r.result {
            OpResult::Success => "success".to_string(),
            OpResult::Refused(code) => format!("refused:{}", code.as_str()),
        };
        println!(
            "{:>6}  {:<27}  {:<20}  {:<16}  {:<24}  {:<20}  {:<22}  {:<15}  {}",
            r.seq,
            r.at,
            r.actor,
            r.org.as_deref().unwrap_or("-"),
            r.action.as_str(),
            r.target.as_deref().unwrap_or("-"),
            result,
            r.source.as_deref().unwrap_or("-"),
            r.detail.as_deref().unwrap_or("")
        );
    }
}
