//! `kakehashi-broker records …` and `kakehashi-broker purge`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::{Args, Subcommand};
use kakehashi_interfaces::audit::{self, ExportFormat};
use kakehashi_interfaces::{ErrorCode, OrgId};

use crate::config::Config;
use crate::error::BrokerError;
use crate::records::sealer_state::{self, Acceptance, SealerState};
use crate::records::{
    EvidenceVerdict, ExportFilter, ExportRequest, Outcome, RecordDraft, RecordLog, RecordsConfig,
    Verdict,
};
use crate::store;

/// `records` subcommands.
#[derive(Debug, Subcommand)]
pub enum RecordsCommand {
    /// Verify every stored record against the hash chain, the signed
    /// checkpoints, the sealer's state file and the checkpoint log; fail
    /// (exit 1) naming the first bad sequence number and the kind of damage,
    /// also when a record older than twice the checkpoint interval is not
    /// covered by a checkpoint signed by a trusted key.
    Verify {
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
        /// Hold the database against this checkpoint log (default: the
        /// configured `[records] checkpoint_log`, if any).
        #[arg(long, value_name = "FILE")]
        checkpoint_log: Option<PathBuf>,
        /// Verify the checkpoints' RFC 3161 time-stamp tokens against this
        /// TSA certificate (PEM; default the configured `[records]
        /// tsa_cert`, if any). Checkpoints without a token are reported,
        /// not failed.
        #[arg(long, value_name = "FILE")]
        tsa_cert: Option<PathBuf>,
    },
    /// After investigating why the sealer refuses (its log and `records
    /// verify` name the first bad sequence), accept the database's current
    /// head as the one to extend: the sealer signs again and the broker
    /// answers queries again. Logged in the operation log.
    AcceptHead {
        /// Why (kept in the sealer's state file and the operation log).
        #[arg(long)]
        reason: String,
    },
    /// Export records for auditors, without person codes, with a
    /// verification bundle FILE.bundle.jsonl. The export itself is recorded.
    Export(ExportArgs),
    /// Verify an export offline (no database needed). It is "verified
    /// against trusted key K" (exit 0) only when every checkpoint is signed by
    /// a trusted key: one given with --trusted-key or --key-id, or, with
    /// --config, one of the key directory's sealer keys. A self-consistent
    /// export signed by another key exits 6, as does one without a seal line
    /// (whose records are genuine, but some could have been withheld); an
    /// altered one exits 1.
    VerifyExport {
        /// The exported data file.
        file: PathBuf,
        /// The bundle (default FILE.bundle.jsonl).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Trust this sealer public key (64 hex digits, from
        /// `GET /v1/record-keys` or the console's keys page; repeatable).
        #[arg(long = "trusted-key", value_name = "HEX")]
        trusted_keys: Vec<String>,
        /// Trust the sealer key with this id (repeatable; a full key is the
        /// stronger pin).
        #[arg(long = "key-id")]
        key_ids: Vec<String>,
        /// Verify the checkpoints' RFC 3161 time-stamp tokens against this
        /// TSA certificate (PEM); a token that fails is a failure (exit 1).
        #[arg(long, value_name = "FILE")]
        tsa_cert: Option<PathBuf>,
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
    /// Retention period in years; default `[records] retention_years` of the
    /// configuration (7). A period shorter than both the legal seven years
    /// and the configured one is refused.
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

/// How a `records` subcommand that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// As asked.
    Ok,
    /// `verify-export`: the export is self-consistent but no checkpoint in
    /// it is signed by a trusted key (exit status [`EXIT_NOT_TRUSTED`]).
    NotTrusted,
}

/// Runs a `records` subcommand. `config` is needed by all but `verify-export`.
pub async fn run(config: Option<&Path>, command: RecordsCommand) -> Result<Done, BrokerError> {
    if let RecordsCommand::VerifyExport {
        file,
        bundle,
        trusted_keys,
        key_ids,
        tsa_cert,
    } = &command
    {
        return verify_export(
            config,
            file,
            bundle.as_deref(),
            trusted_keys,
            key_ids,
            tsa_cert.as_deref(),
        );
    }
    run_on_store(config, command).await.map(|()| Done::Ok)
}

/// The progress of a long walk on standard error: a bar on a terminal, a
/// line every [`PROGRESS_LINE_EVERY`] otherwise (logs of a scheduled run).
struct ShownProgress {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// What a progress display says is under way.
const VERIFYING: &str = "検証中 / verifying";
const PURGING: &str = "削除中 / purging";

/// How often a progress line is written when standard error is not a terminal.
const PROGRESS_LINE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

fn show_progress(
    progress: Arc<crate::records::WalkProgress>,
    doing: &'static str,
) -> ShownProgress {
    use std::io::IsTerminal;
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{doing} {{wide_bar}} {{human_pos}}/{{human_len}} 件 ({{per_sec}}, 残り {{eta}})"
                ))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let tick = if terminal {
            std::time::Duration::from_millis(200)
        } else {
            PROGRESS_LINE_EVERY
        };
        let started = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = &mut stopped => break,
            }
            let (done, total) = (
                progress.done.load(Ordering::Relaxed),
                progress.total.load(Ordering::Relaxed),
            );
            match &bar {
                Some(bar) => {
                    bar.set_length(total);
                    bar.set_position(done);
                }
                None => eprintln!(
                    "{doing}: {done} / {total} 件 ({:.0} 秒)",
                    started.elapsed().as_secs_f64()
                ),
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    });
    ShownProgress { stop, task }
}

impl ShownProgress {
    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run_on_store(config: Option<&Path>, command: RecordsCommand) -> Result<(), BrokerError> {
    let path = config.ok_or_else(|| BrokerError::Config("--config is required".into()))?;
    let config = Config::load(path)?;
    let store = store::open(&config.storage).await?;
    let pools = store.pools();
    match command {
        RecordsCommand::VerifyExport { .. } => Ok(()),
        RecordsCommand::Verify {
            json,
            checkpoint_log,
            tsa_cert,
        } => {
            let tsa_cert = tsa_cert
                .or_else(|| config.records.tsa_cert.clone())
                .map(|path| crate::records::load_tsa_cert(&path))
                .transpose()?;
            let keys = crate::keys::trusted_keys(&config.keys.dir)?;
            let interval = std::time::Duration::from_millis(config.records.checkpoint_interval_ms);
            let options = crate::records::EvidenceOptions {
                checkpoint_log: checkpoint_log.or_else(|| config.records.checkpoint_log.clone()),
                max_unsealed_age: interval * 2,
                now: time::OffsetDateTime::now_utc(),
                retention_years: config.records.retention_years,
                tsa_cert,
                progress: Some(Arc::new(crate::records::WalkProgress::default())),
            };
            let shown = options
                .progress
                .clone()
                .map(|p| show_progress(p, VERIFYING));
            let verdict =
                crate::records::verify_evidence(&pools, &keys, &config.keys.dir, &options).await;
            if let Some(shown) = shown {
                shown.finish().await;
            }
            let verdict = verdict?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&verdict)
                        .map_err(|e| BrokerError::encoding("JSON", e))?
                );
            }
            match verdict {
                EvidenceVerdict::Intact(e) => {
                    if !json {
                        let s = &e.chain;
                        let state = e
                            .sealer_state_seq
                            .map_or("no sealer state".to_string(), |seq| {
                                format!("sealer state at {seq}")
                            });
                        let log = e
                            .checkpoint_log_entries
                            .map_or("no checkpoint log given".to_string(), |n| {
                                format!("{n} checkpoint-log entries agree")
                            });
                        println!(
                            "provision records intact: {} records ({}..={}), {} checkpoints verified, sealed up to {}, {} unsealed (younger than {} ms); {state}; {log}; sealer key ids: {}",
                            s.records,
                            s.anchor_seq + 1,
                            s.last_seq,
                            s.checkpoints,
                            s.sealed_seq,
                            s.last_seq - s.sealed_seq,
                            2 * config.records.checkpoint_interval_ms,
                            s.key_ids.join(", ")
                        );
                        print_timestamps(&e.timestamps);
                    }
                    Ok(())
                }
                EvidenceVerdict::Broken(f) => Err(BrokerError::refused(
                    ErrorCode::Internal,
                    format!(
                        "provision records fail verification at {f} [{}]",
                        f.damage.name()
                    ),
                )),
            }
        }
        RecordsCommand::AcceptHead { reason } => accept_head(&config, &pools, reason).await,
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
            let log = open_log(&config, pools, config.records.clone()).await?;
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
            let log = open_log(&config, pools, config.records.clone()).await?;
            let result = stress(&log, count, concurrency).await;
            log.close().await;
            result
        }
    }
}

/// The time-stamp part of `records verify`'s report.
fn print_timestamps(t: &crate::records::TimestampSummary) {
    if t.stamped > 0 {
        println!(
            "time-stamp tokens: {} checkpoints {} (TSA time {} .. {})",
            t.stamped,
            if t.verified_against_tsa {
                "verified against the TSA certificate"
            } else {
                "with matching imprints, TSA signatures not checked (give --tsa-cert)"
            },
            t.first_gen_time.as_deref().unwrap_or("-"),
            t.last_gen_time.as_deref().unwrap_or("-"),
        );
    }
    if t.missing > 0 && (t.verified_against_tsa || t.stamped > 0) {
        println!(
            "warning: no timestamp on {} checkpoints (first: {}): signed while the TSA failed, \
             before one was configured, or their tokens were removed",
            t.missing,
            t.missing_seqs
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Exit status of `records verify-export` for an export that is
/// self-consistent but not signed by a trusted key (the client's
/// `kakehashi audit verify` uses the same).
pub const EXIT_NOT_TRUSTED: i32 = 6;

/// `records verify-export`: [`Done::NotTrusted`] when the export is
/// self-consistent but its keys are not trusted.
fn verify_export(
    config: Option<&Path>,
    file: &Path,
    bundle: Option<&Path>,
    trusted_keys: &[String],
    key_ids: &[String],
    tsa_cert: Option<&Path>,
) -> Result<Done, BrokerError> {
    let config = config.map(Config::load).transpose()?;
    let mut trusted = match &config {
        Some(config) => crate::keys::trusted_keys(&config.keys.dir)?,
        None => audit::TrustedKeys::new(),
    };
    let tsa_cert = tsa_cert
        .map(Path::to_path_buf)
        .or_else(|| config.as_ref().and_then(|c| c.records.tsa_cert.clone()))
        .map(|path| crate::records::load_tsa_cert(&path))
        .transpose()?;
    for text in trusted_keys {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .ok()
            .and_then(|()| ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok())
            .map(|key| trusted.add(key))
            .ok_or_else(|| {
                invalid(format!(
                    "--trusted-key {text:?} is not an Ed25519 public key (64 hex digits)"
                ))
            })?;
    }
    let report = audit::verify_export_files(file, bundle, &[])
        .map_err(|e| invalid(format!("the export does NOT verify: {e}")))?;
    let summary = format!(
        "{} records in {} segments against {} signed checkpoints; filter: {}; made {}",
        report.rows, report.segments, report.checkpoints, report.filter, report.created_at
    );
    match &tsa_cert {
        Some(cert) => {
            let stamped = report.verify_timestamps(cert).map_err(|f| {
                invalid(format!(
                    "the export does NOT verify: time-stamp token of {f} (TSA {})",
                    cert.subject()
                ))
            })?;
            for t in &stamped {
                println!(
                    "checkpoint {} time-stamped by TSA {} at {}",
                    t.seq,
                    cert.subject(),
                    t.gen_time
                );
            }
            if !report.untimestamped.is_empty() {
                println!(
                    "warning: no timestamp on checkpoint {} (signed while the TSA failed, or its token was removed)",
                    report
                        .untimestamped
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        None if !report.timestamps.is_empty() => println!(
            "{} checkpoints carry time-stamp tokens whose imprints match; give --tsa-cert to verify the TSA's signatures",
            report.timestamps.len()
        ),
        None => {}
    }
    match report.trust(&trusted, key_ids) {
        audit::ExportTrust::Trusted { key_ids } => {
            println!(
                "export verified against trusted key {}: {summary}",
                key_ids.join(", ")
            );
            Ok(Done::Ok)
        }
        audit::ExportTrust::Unsealed { key_ids } => {
            println!(
                "export self-consistent, checkpoints signed by trusted key {}, NOT sealed: {summary}",
                key_ids.join(", ")
            );
            eprintln!("error: {}", audit::UNSEALED_EXPORT);
            Ok(Done::NotTrusted)
        }
        audit::ExportTrust::NotTrusted { untrusted } => {
            println!("export self-consistent, key not trusted: {summary}");
            eprintln!(
                "error: the export is self-consistent, but {} — anyone can re-chain records and sign them; \
                 pass the broker's published key with --trusted-key (GET /v1/record-keys) or --config",
                if untrusted.is_empty() {
                    "no checkpoint in it is signed".to_string()
                } else {
                    format!("key {} is not trusted", untrusted.join(", "))
                }
            );
            Ok(Done::NotTrusted)
        }
    }
}

/// `records accept-head`: the stored head becomes the one the sealer must
/// extend. The chain's own verdict is printed (accepting a head does not
/// repair history: `records verify` keeps naming damage before it).
async fn accept_head(
    config: &Config,
    pools: &store::Pools,
    reason: String,
) -> Result<(), BrokerError> {
    use crate::oplog::HostLog;
    use crate::oplog::OpAction;
    if reason.trim().is_empty() {
        return Err(invalid("--reason must say why the head is accepted".into()));
    }
    let log = HostLog::open(pools.clone(), &config.keys.dir).await?;
    let keys = crate::keys::trusted_keys(&config.keys.dir)?;
    let previous = sealer_state::read(&config.keys.dir)?;
    let head = crate::store::records::table::read_head(pools).await?;
    let verdict = crate::records::verify_store(pools, &keys).await?;
    let accepted = SealerState {
        seq: head.seq,
        head_hash: hex::encode(head.hash),
        checkpoint: None,
        accepted: Some(Acceptance {
            at: store::now_rfc3339(),
            actor: log.actor().to_string(),
            reason: reason.clone(),
            previous_seq: previous.as_ref().map(|s| s.seq),
            previous_hash: previous.as_ref().map(|s| s.head_hash.clone()),
        }),
    };
    let result = sealer_state::accept(&config.keys.dir, &accepted);
    // Both heads with their hashes: the one set aside is gone from the state
    // file after this, and may be gone from the database.
    let detail = format!(
        "head={}:{} previous={} chain={} reason={}",
        accepted.seq,
        accepted.head_hash,
        previous
            .as_ref()
            .map_or("none".to_string(), |s| format!("{}:{}", s.seq, s.head_hash)),
        match &verdict {
            Verdict::Intact(_) => "intact".to_string(),
            Verdict::Broken(f) => format!("broken at {}", f.seq),
        },
        reason
    );
    log.outcome(
        OpAction::RecordsHeadAccepted,
        None,
        Some(format!("records head {}", head.seq)),
        Some(detail),
        result,
    )
    .await?;
    println!(
        "accepted the provision records' head at {} (the sealer had signed up to {}); the sealer signs from it again",
        head.seq,
        previous.map_or("nothing".to_string(), |s| s.seq.to_string())
    );
    match verdict {
        Verdict::Intact(_) => println!("the stored chain verifies on its own"),
        Verdict::Broken(f) => println!(
            "the stored chain still fails at {f}: accepting the head does not repair it, and `records verify` keeps naming it"
        ),
    }
    Ok(())
}

/// Runs `purge`.
pub async fn purge(config: &Path, args: PurgeArgs) -> Result<(), BrokerError> {
    let config = Config::load(config)?;
    let store = store::open(&config.storage).await?;
    let mut records = config.records.clone();
    records.retention_years = crate::records::purge::retention_years(
        config.records.retention_years,
        args.retention_years,
    )?;
    let log = open_log(&config, store.pools(), records).await?;
    let actor = args.actor.unwrap_or_else(os_user);
    let progress = Arc::new(crate::records::WalkProgress::default());
    let shown = show_progress(progress.clone(), PURGING);
    let result = match args.before.as_deref().map(parse_when).transpose() {
        Ok(before) => {
            let before = before.map_or_else(
                || log.retention_cutoff(time::OffsetDateTime::now_utc()),
                |(before, _)| before,
            );
            log.purge_showing(before, &actor, &progress).await
        }
        Err(e) => Err(e),
    };
    shown.finish().await;
    // Personal data is erased at the end of its own periods whether or not
    // the records purge went through (as the broker's own erasure runs on
    // its own timer): a refused purge must not keep it longer.
    let erased = if args.records_only {
        None
    } else {
        Some(
            crate::retention::erase(
                &store.pools(),
                &log,
                &config.retention,
                time::OffsetDateTime::now_utc(),
                &actor,
            )
            .await,
        )
    };
    log.close().await;
    match &result {
        Ok(r) => match r.purge_record_seq {
            Some(seq) => println!(
                "purged {} records ({}..={}) recorded before {}; purge record {}",
                r.count, r.first_seq, r.cut_seq, r.before, seq
            ),
            None => println!("nothing recorded before {} to purge", r.before),
        },
        Err(_) if erased.is_some() => eprintln!(
            "the records purge failed (the reason follows); the erasure of personal data ran on its own:"
        ),
        Err(_) => {}
    }
    let erased = match (erased, &result) {
        // Both failed: the erasure's reason here, the purge's as the error.
        (Some(Err(e)), Err(_)) => {
            eprintln!("the erasure of personal data failed too: {e}");
            None
        }
        (erased, _) => erased.transpose()?,
    };
    if let Some(e) = erased {
        match e.record_seq {
            Some(seq) => println!(
                "erased {} identity confirmations (confirmed before {}), {} persons and {} copies \
                 (eligibility lost before {}) and {} person codes; erasure record {seq}",
                e.identity_confirmations, e.confirmed_before, e.persons, e.copies, e.lost_before, e.codes
            ),
            None => println!(
                "no identity confirmations before {} and no persons whose eligibility was lost before {} to erase",
                e.confirmed_before, e.lost_before
            ),
        }
    }
    result.map(|_| ())
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
