//! `kakehashi-broker flows …`: propose, approve, list and show flow-list
//! versions on the host; every change logged as `host:<login name>` (R17).

use std::path::Path;

use clap::Subcommand;
use serde::Serialize;

use crate::config::Config;
use crate::error::BrokerError;
use crate::flow_changes::*;
use crate::oplog::{host_actor, HostLog, OpAction};
use crate::policy::{parse_flow_list, FlowIndex};
use crate::store::{self, Pools};

/// `kakehashi-broker flows …` subcommands.
#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Propose a flow-list TOML file (`[[flow]]` tables) as a new version; it
    /// is in force once a different administrator approves it.
    Propose {
        /// The TOML file.
        file: std::path::PathBuf,
        /// The proposer: a user id or host:NAME (default host:$USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Approve a proposed version (the approver must not be its proposer);
    /// running brokers use it within seconds.
    Approve {
        /// The version to approve (see `flows list`).
        version: u64,
        /// The approver: a user id or host:NAME (default host:$USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
    },
    /// Propose a file as host:$USER; with --approve-as, approve it at once
    /// by that second administrator (one step for two named people).
    Load {
        /// The TOML file.
        file: std::path::PathBuf,
        /// The second administrator who approves it (not host:$USER).
        #[arg(long, value_name = "NAME")]
        approve_as: Option<String>,
    },
    /// List every version with its status, proposer and approver.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Flows added, removed or changed from version A to version B.
    Diff {
        /// The earlier version.
        from: u64,
        /// The later version.
        to: u64,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print the flow list in force with its version, proposer and approver.
    Show,
}

fn read_file(file: &Path) -> Result<String, BrokerError> {
    std::fs::read_to_string(file)
        .map_err(|e| BrokerError::io(format!("cannot read {}", file.display()), e))
}

fn json<T: Serialize>(value: &T) -> Result<String, BrokerError> {
    serde_json::to_string_pretty(value).map_err(|e| BrokerError::encoding("flow-list view", e))
}

fn short(sha: &str) -> &str {
    sha.get(..16).unwrap_or(sha)
}

/// Runs a `flows` subcommand against the broker configured in `config`.
/// Proposals and approvals are logged in the operation log (R17) as the
/// host's login user, with the name they were made as.
pub async fn run(config_path: &Path, command: FlowsCommand) -> Result<(), BrokerError> {
    let config = Config::load(config_path)?;
    let store = store::open(&config.storage).await?;
    let pools = store.pools();
    let approve_hint = |version: u64| {
        format!(
            "  kakehashi-broker flows --config {} approve {version} --as <別の管理者 / another administrator>",
            config_path.display()
        )
    };
    match command {
        FlowsCommand::Propose { file, actor } => {
            let proposer = match actor {
                Some(a) => a,
                None => host_actor()?,
            };
            let text = read_file(&file)?;
            let log = HostLog::open(pools.clone(), &config.keys.dir).await?;
            let proposed = propose_logged(&log, &pools, &text, &proposer).await?;
            print_proposed(&proposed, &proposer);
            println!("{}", approve_hint(proposed.version));
        }
        FlowsCommand::Approve { version, actor } => {
            let approver = match actor {
                Some(a) => a,
                None => host_actor()?,
            };
            let log = HostLog::open(pools.clone(), &config.keys.dir).await?;
            let approved = approve_logged(&log, &pools, version, &approver).await?;
            print_approved(&approved, &approver);
        }
        FlowsCommand::Load { file, approve_as } => {
            let proposer = host_actor()?;
            let text = read_file(&file)?;
            let log = HostLog::open(pools.clone(), &config.keys.dir).await?;
            if let Some(approver) = &approve_as {
                // Refused (and logged as a refused approval) before
                // anything is stored.
                let checked = check_actor(approver, "approver").and_then(|()| {
                    if same_actor(approver, &proposer) {
                        Err(self_approval())
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = checked {
                    let detail = Some(format!("as={approver}"));
                    log.outcome::<()>(OpAction::FlowListApproved, None, None, detail, Err(e))
                        .await?;
                }
            }
            let proposed = propose_logged(&log, &pools, &text, &proposer).await?;
            print_proposed(&proposed, &proposer);
            match approve_as {
                Some(approver) => {
                    let approved =
                        approve_logged(&log, &pools, proposed.version, &approver).await?;
                    print_approved(&approved, &approver);
                }
                None => println!("{}", approve_hint(proposed.version)),
            }
        }
        FlowsCommand::List { json: as_json } => {
            let versions = list(&pools).await?;
            if as_json {
                println!("{}", json(&versions)?);
            } else {
                print_versions(&versions);
            }
        }
        FlowsCommand::Diff {
            from,
            to,
            json: as_json,
        } => {
            let changes = diff(&pools, from, to).await?;
            if as_json {
                println!("{}", json(&changes)?);
            } else {
                print_diff(from, to, &changes);
            }
        }
        FlowsCommand::Show => show(&pools).await?,
    }
    Ok(())
}

async fn propose_logged(
    log: &HostLog,
    pools: &Pools,
    text: &str,
    proposer: &str,
) -> Result<Proposed, BrokerError> {
    let result = propose(pools, text, proposer).await;
    let (target, detail) = match &result {
        Ok(p) => (
            Some(p.version.to_string()),
            format!("as={proposer} sha256={}", p.sha256),
        ),
        Err(_) => (None, format!("as={proposer}")),
    };
    log.outcome(
        OpAction::FlowListProposed,
        None,
        target,
        Some(detail),
        result,
    )
    .await
}

async fn approve_logged(
    log: &HostLog,
    pools: &Pools,
    version: u64,
    approver: &str,
) -> Result<Approved, BrokerError> {
    let result = approve(pools, version, approver).await;
    log.outcome(
        OpAction::FlowListApproved,
        None,
        Some(version.to_string()),
        Some(format!("as={approver}")),
        result,
    )
    .await
}

fn print_proposed(p: &Proposed, proposer: &str) {
    println!(
        "照会許可用照合リストの版 {v} を {proposer} として提案しました。別の管理者が承認するまで有効になりません。\n\
         proposed flow-list version {v} as {proposer} (sha256 {sha}); it is not in force until a different administrator approves it:",
        v = p.version,
        sha = p.sha256
    );
}

fn print_approved(a: &Approved, approver: &str) {
    println!(
        "照会許可用照合リストの版 {v} を {approver} として承認しました。稼働中のブローカーは数秒以内にこの版を使います。\n\
         approved flow-list version {v} as {approver} (sha256 {sha}); it is in force, and running brokers use it within {secs} seconds",
        v = a.version,
        sha = a.sha256,
        secs = RELOAD_INTERVAL.as_secs() + 1
    );
}

fn status_name(s: VersionStatus) -> &'static str {
    match s {
        VersionStatus::Proposed => "proposed",
        VersionStatus::InForce => "in_force",
        VersionStatus::Superseded => "superseded",
    }
}

fn print_versions(versions: &[VersionView]) {
    println!(
        "{:>7}  {:<10}  {:<24}  {:<27}  {:<24}  {:<27}  SHA256",
        "VERSION", "STATUS", "PROPOSED_BY", "PROPOSED_AT", "APPROVED_BY", "APPROVED_AT"
    );
    for v in versions {
        println!(
            "{:>7}  {:<10}  {:<24}  {:<27}  {:<24}  {:<27}  {}",
            v.version,
            status_name(v.status),
            v.proposed_by,
            v.proposed_at,
            v.approved_by.as_deref().unwrap_or("-"),
            v.approved_at.as_deref().unwrap_or("-"),
            short(&v.sha256)
        );
    }
}

fn print_diff(from: u64, to: u64, changes: &[FlowDiff]) {
    if changes.is_empty() {
        println!("版 {from} と版 {to} の間に違いはありません / versions {from} and {to} allow the same flows");
        return;
    }
    for c in changes {
        match c.change {
            FlowChange::Added => println!("+ {}  added", c.flow_id),
            FlowChange::Removed => println!("- {}  removed", c.flow_id),
            FlowChange::Changed => {
                println!("~ {}  changed: {}", c.flow_id, c.fields.join(", "))
            }
        }
    }
}

async fn show(pools: &Pools) -> Result<(), BrokerError> {
    let version = in_force_version(pools).await?;
    if version == 0 {
        println!("flow list version 0 (承認された版はありません / no version approved: no query is allowed)");
        return Ok(());
    }
    let detail = get(pools, version).await?;
    let view = &detail.view;
    println!(
        "flow list version {} (in force; proposed by {} at {}, approved by {} at {}; sha256 {})",
        view.version,
        view.proposed_by,
        view.proposed_at,
        view.approved_by.as_deref().unwrap_or("-"),
        view.approved_at.as_deref().unwrap_or("-"),
        short(&view.sha256)
    );
    let index = FlowIndex::new(version, parse_flow_list(&detail.text)?);
    for rule in index.rules() {
        let sensitive = if rule.sensitive_items.is_empty() {
            String::new()
        } else {
            format!(
                "  (sensitive: {})",
                rule.sensitive_items
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        println!(
            "{:<8} {:<22} items: {}{}",
            rule.flow_id,
            rule.procedure,
            rule.items.iter().cloned().collect::<Vec<_>>().join(", "),
            sensitive
        );
    }
    Ok(())
}
