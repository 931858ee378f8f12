//! `kakehashi-broker records …` and `kakehashi-broker purge`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::{Args, Subcommand};
use kakehashi_interfaces::audit::{self, ExportFormat};
use kakehashi_interfaces::{ErrorCode, OrgId};

use super::{ExportFilter, ExportRequest, Outcome, RecordDraft, RecordLog, RecordsConfig, Verdict};
use crate::config::Config;
use crate::error::BrokerError;
use crate::store;

/// `records` subcommands.
#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Verify every stored record against the hash chain and the signed
    /// checkpoints; on failure, name the first bad sequence number (exit 1).
    Verify {
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Export records for auditors, without person codes, with a
    /// verification bundle FILE.bundle.jsonl. The export itself is recorded.
    Export(ExportArgs),
    /// Verify an export offline (no database, no config needed).
    VerifyExport {
        /// The exported data file.
        file: PathBuf,
        /// The bundle (default FILE.bundle.jsonl).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Require checkpoints signed by this sealer key id (repeatable).
        #[arg(long = "key-id")]
        key_ids: Vec<String>,
    },
    /// Append synthetic records concurrently, printing each sequence number
    /// as soon as it is committed (crash tests).
    #[command(hide = true)]
    Stress {
        /// Records to append.
        #[arg(long)]
        count: u64,
        /// Concurrent appenders.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

/// `records export` options.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// First day (YYYY-MM-DD, UTC) or instant (RFC 3339), inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// Last day (YYYY-MM-DD, UTC, inclusive) or instant (RFC 3339, exclusive).
    #[arg(long)]
    pub to: Option<String>,
    /// Only records where this org is requester or provider.
    #[arg(long)]
    pub org: Option<String>,
    /// Only records of this flow.
    #[arg(long)]
    pub flow: Option<String>,
    /// Only records with this person code on either side (never printed).
    #[arg(long, env = "KAKEHASHI_EXPORT_PERSON", hide_env_values = true)]
    pub person: Option<String>,
    /// csv (UTF-8 with BOM, for Excel) or jsonl.
    #[arg(long, default_value = "csv")]
    pub format: ExportFormat,
    /// Data file to create (never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Who exports (recorded); default the OS user.
    #[arg(long)]
    pub actor: Option<String>,
}

/// `purge` options.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// Purge records before this day (YYYY-MM-DD, UTC) or instant (RFC 3339);
    /// default and latest allowed: now minus the retention period.
    #[arg(long)]
    pub before: Option<String>,
    /// Retention period in years (default 7).
    #[arg(long)]
    pub retention_years: Option<u32>,
    /// Only provision records: skip the erasure of identity-confirmation
    /// data and of persons past their period after loss of eligibility.
    #[arg(long)]
    pub records_only: bool,
    /// Who purges (recorded); default the OS user.
    #[arg(long)]
    pub actor: Option<String>,
}

fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn invalid(msg: String) -> BrokerError {
    BrokerError::refused(ErrorCode::InvalidInput, msg)
}

/// A day (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 instant; `true` when it was a day.
fn parse_when(s: &str) -> Result<(time::OffsetDateTime, bool), BrokerError> {
    let day = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(s, &day) {
        return Ok((date.midnight().assume_utc(), true));
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| (t, false))
        .map_err(|_| invalid(format!("{s:?} is neither YYYY-MM-DD nor an RFC 3339 time")))
}

/// Runs a `records` subcommand. `config` is needed by all but `verify-export`.
pub async fn run(config: Option<&Path>, command: RecordsCommand) -> Result<(), BrokerError> {
    if let RecordsCommand::VerifyExport {
        file,
        bundle,
        key_ids,
    } = &command
    {
        let report = audit::verify_export_files(file, bundle.as_deref(), key_ids)
            .map_err(|e| invalid(format!("the export does NOT verify: {e}")))?;
        println!(
            "export verified: {} records in {} segments against {} signed checkpoints; filter: {}; made {}; sealer key ids: {}",
            report.rows,
            report.segments,
            report.checkpoints,
            report.filter,
            report.created_at,
            report.key_ids.join(", ")
        );
        return Ok(());
    }
    let path = config.ok_or_else(|| BrokerError::Config("--config is required".into()))?;
    let config = Config::load(path)?;
    let store = store::open(&config.storage).await?;
    let pools = store.pools();
    match command {
        RecordsCommand::VerifyExport { .. } => Ok(()),
        RecordsCommand::Verify { json } => {
            let keys = super::trusted_keys(&config.keys.dir)?;
            let verdict = super::verify_store(&pools, &keys).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&verdict)
                        .map_err(|e| BrokerError::encoding("JSON", e))?
                );
            }
            match verdict {
                Verdict::Intact(s) => {
                    if !json {
                        println!(
                            "provision records intact: {} records ({}..={}), {} checkpoints verified, sealed up to {}, {} unsealed; sealer key ids: {}",
                            s.records,
                            s.anchor_seq + 1,
                            s.last_seq,
                            s.checkpoints,
                            s.sealed_seq,
                            s.last_seq - s.sealed_seq,
                            s.key_ids.join(", ")
                        );
                    }
                    Ok(())
                }
                Verdict::Broken(f) => Err(BrokerError::refused(
                    ErrorCode::Internal,
                    format!("provision records fail verification at {f}"),
                )),
            }
        }
        RecordsCommand::Export(args) => {
            let filter = ExportFilter {
                from: args
                    .from
                    .as_deref()
                    .map(parse_when)
                    .transpose()?
                    .map(|(t, _)| t),
                to: args
                    .to
                    .as_deref()
                    .map(parse_when)
                    .transpose()?
                    // A day is inclusive: up to the next midnight.
                    .map(|(t, day)| if day { t + time::Duration::days(1) } else { t }),
                org: args.org.map(OrgId::new).transpose()?,
                flow: args.flow,
                person: args.person,
            };
            let log = open_log(&config, pools, RecordsConfig::default()).await?;
            let result = log
                .export(&ExportRequest {
                    filter,
                    format: args.format,
                    out: args.out,
                    actor: args.actor.unwrap_or_else(os_user),
                })
                .await;
            log.close().await;
            let s = result?;
            println!(
                "exported {} records to {} (bundle {}); recorded as record {}",
                s.rows,
                s.data.display(),
                s.bundle.display(),
                s.export_record_seq
            );
            Ok(())
        }
        RecordsCommand::Stress { count, concurrency } => {
            let log = open_log(&config, pools, RecordsConfig::default()).await?;
            let result = stress(&log, count, concurrency).await;
            log.close().await;
            result
        }
    }
}

/// Runs `purge`.
pub async fn purge(config: &Path, args: PurgeArgs) -> Result<(), BrokerError> {
    let config = Config::load(config)?;
    let store = store::open(&config.storage).await?;
    let mut records = RecordsConfig::default();
    if let Some(years) = args.retention_years {
        records.retention_years = years;
    }
    let log = open_log(&config, store.pools(), records).await?;
    let actor = args.actor.unwrap_or_else(os_user);
    let result = match args.before.as_deref().map(parse_when).transpose() {
        Ok(Some((before, _))) => log.purge(before, &actor).await,
        Ok(None) => log.purge_expired(&actor).await,
        Err(e) => Err(e),
    };
    let erased = match (&result, args.records_only) {
        (Ok(_), false) => Some(
            crate::retention::erase(
                &store.pools(),
                &log,
                &config.retention,
                time::OffsetDateTime::now_utc(),
                &actor,
            )
            .await,
        ),
        _ => None,
    };
    log.close().await;
    let r = result?;
    match r.purge_record_seq {
        Some(seq) => println!(
            "purged {} records ({}..={}) recorded before {}; purge record {}",
            r.count, r.first_seq, r.cut_seq, r.before, seq
        ),
        None => println!("nothing recorded before {} to purge", r.before),
    }
    if let Some(e) = erased.transpose()? {
        match e.record_seq {
            Some(seq) => println!(
                "erased {} identity confirmations (confirmed before {}), {} persons and {} copies \
                 (eligibility lost before {}); erasure record {seq}",
                e.identity_confirmations, e.confirmed_before, e.persons, e.copies, e.lost_before
            ),
            None => println!(
                "no identity confirmations before {} and no persons whose eligibility was lost before {} to erase",
                e.confirmed_before, e.lost_before
            ),
        }
    }
    Ok(())
}

/// The log for a one-shot command: no retention task of its own.
async fn open_log(
    config: &Config,
    pools: store::Pools,
    mut records: RecordsConfig,
) -> Result<Arc<RecordLog>, BrokerError> {
    records.purge_interval_secs = 0;
    records.person_index_interval_ms = 0;
    RecordLog::open(pools, &config.keys.dir, records).await
}

/// Appends `count` synthetic records from `concurrency` tasks, printing each
/// sequence number on stdout once its append returned (i.e. committed).
pub async fn stress(
    log: &Arc<RecordLog>,
    count: u64,
    concurrency: usize,
) -> Result<(), BrokerError> {
    let next = Arc::new(AtomicU64::new(0));
    let requester = OrgId::new("city-stress")?;
    let provider = OrgId::new("agency-stress")?;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (log, next) = (log.clone(), next.clone());
        let (requester, provider) = (requester.clone(), provider.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), BrokerError>(());
                }
                let mut draft =
                    RecordDraft::new(format!("stress-{i}"), requester.clone(), Outcome::Provided);
                draft.provider = Some(provider.clone());
                draft.items = vec!["income.total".into()];
                draft.requester_person_code = Some(format!("RQ{i:08}"));
                draft.provider_person_code = Some(format!("PV{i:08}"));
                let seq = log.append(draft).await?;
                // A closed stdout (the parent was killed) is not our failure.
                let _ = writeln!(std::io::stdout().lock(), "{seq}");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| BrokerError::Internal(format!("stress task: {e}")))??;
    }
    Ok(())
}
