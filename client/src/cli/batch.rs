//! `kakehashi query --batch persons.csv --out results.jsonl`: many queries,
//! bounded concurrency, resumable.
//!
//! The out file is the resume state: one JSON line per finished person,
//! written with one `write` and never rewritten. On start the persons already
//! in it are skipped; a torn last line (the process was killed mid-write) is
//! cut off and that person is asked again. Failures that say nothing about
//! the person (overload, lost connection) are not written, so a rerun tries
//! them again.
//!
//! A pending answer's reply key is kept in the profile's store, naming this
//! results file, so that `kakehashi query collect --batch` can complete the
//! line once the provider's operator decides. A pending line whose key
//! could not be kept is not written: its answer could never be opened, and
//! a rerun asks again under the same keys and keeps the key then.
//!
//! Refusals that are about this org rather than the person (suspended,
//! unknown, certificate not accepted, not allowed) stop the batch without
//! writing the line: otherwise every remaining person would be marked
//! refused in seconds, and a rerun would skip them all.
//!
//! The batch holds an advisory lock on the results file while it runs, so
//! that `kakehashi query collect` does not rewrite it under the batch.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kakehashi_client::interfaces::QueryId;
use kakehashi_client::{
    Client, ClientError, ErrorCode, PendingStore, Query, QueryKeys, QueryOutcome,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::args::QueryArgs;
use super::fail::{refusal_hint, CliError, Exit};
use super::personal_files;

/// What identifies one finished query in the out file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Key {
    person: String,
    flow: String,
    procedure: String,
    provider: String,
    items: Vec<String>,
}

struct Job {
    line: u64,
    key: Key,
}

/// How one job ended.
enum Done {
    /// Finished: written to the out file.
    Finished {
        status: String,
        /// The reason code of a refusal.
        code: Option<String>,
        line: String,
        /// A kept reply key the line makes unneeded (decided while
        /// waiting): wiped once the line is on disk, not before, so that a
        /// crash in between loses nothing.
        wipe: Option<QueryId>,
    },
    /// Not finished: not written, tried again on a rerun.
    Failed { reason: String, fatal: bool },
    /// Answered pending, but the reply key could not be kept: not written
    /// (a rerun repeats the request under the same keys and keeps the key
    /// then). Stops the batch: later pending answers would be lost the
    /// same way.
    KeyNotKept { query_id: QueryId, reason: String },
    /// The broker refuses this org as a whole: not written; stops the
    /// batch.
    OrgRefused {
        code: ErrorCode,
        message: String,
        request_id: String,
    },
}

/// Consecutive connection failures after which the batch stops instead of
/// burning through the remaining persons.
const MAX_CONSECUTIVE_CONNECTION_FAILURES: u32 = 3;

fn split_items(s: &str) -> Vec<String> {
    let mut items: Vec<String> = s
        .split(|c: char| c == ';' || c == ',' || c.is_whitespace())
        .filter(|i| !i.is_empty())
        .map(str::to_string)
        .collect();
    items.sort();
    items.dedup();
    items
}

/// Reads the persons CSV into jobs, flags giving the defaults.
fn read_jobs(path: &Path, args: &QueryArgs) -> Result<Vec<Job>, CliError> {
    let file = File::open(path).map_err(|e| CliError::file("read batch file", path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(file);
    let bad = |e: csv::Error| {
        CliError::usage(format!(
            "batch file {} is not valid CSV: {e}",
            path.display()
        ))
        .hint("the first line must be a header with at least the column `person`")
    };
    let headers = reader.headers().map_err(bad)?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let Some(person_col) = col("person") else {
        return Err(CliError::usage(format!(
            "batch file {} has no `person` column",
            path.display()
        ))
        .hint("the header needs `person` and may have `flow`, `procedure`, `provider`, `items`"));
    };
    let (flow_col, proc_col, prov_col, items_col) =
        (col("flow"), col("procedure"), col("provider"), col("items"));
    let default_items: Vec<String> = {
        let mut v = args.items.clone();
        v.sort();
        v.dedup();
        v
    };
    let mut jobs = Vec::new();
    let mut seen = HashSet::new();
    for record in reader.records() {
        let record = record.map_err(bad)?;
        let line = record.position().map_or(0, |p| p.line());
        let field = |c: Option<usize>, default: &Option<String>| {
            c.and_then(|c| record.get(c))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .or_else(|| default.clone())
        };
        let person = record.get(person_col).unwrap_or_default().to_string();
        let items = items_col
            .and_then(|c| record.get(c))
            .filter(|v| !v.is_empty())
            .map(split_items)
            .unwrap_or_else(|| default_items.clone());
        let (Some(flow), Some(procedure), Some(provider)) = (
            field(flow_col, &args.flow),
            field(proc_col, &args.procedure),
            field(prov_col, &args.provider),
        ) else {
            return Err(CliError::usage(format!(
                "{} line {line}: no flow, procedure or provider (neither in the file nor as --flow, --procedure, --provider)",
                path.display()
            ))
            .hint("give the missing flags, or add the columns to the file; see `kakehashi flows`"));
        };
        if items.is_empty() {
            return Err(CliError::usage(format!(
                "{} line {line}: no items (neither an `items` column nor --item)",
                path.display()
            )));
        }
        let key = Key {
            person,
            flow,
            procedure,
            provider,
            items,
        };
        // The same person asked the same thing twice is asked once.
        if seen.insert(key.clone()) {
            jobs.push(Job { line, key });
        }
    }
    Ok(jobs)
}

/// Keys already in the out file (`file`, open on `path`, locked); cuts off
/// a torn last line.
fn read_finished(file: &mut File, path: &Path) -> Result<HashSet<Key>, CliError> {
    let mut finished = HashSet::new();
    file.rewind()
        .map_err(|e| CliError::file("read results file", path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| CliError::file("read results file", path, e))?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let key: Key = serde_json::from_slice(line).map_err(|_| {
            CliError::usage(format!(
                "results file {} line {} is not a result line",
                path.display(),
                n + 1
            ))
            .hint("give --out a results file written by `kakehashi query --batch`, or a new file")
        })?;
        finished.insert(key);
    }
    if complete < bytes.len() {
        // The last write was cut short; that person is asked again.
        file.set_len(complete as u64).map_err(|e| {
            CliError::usage(format!(
                "cannot cut the torn last line of {}: {e}",
                path.display()
            ))
        })?;
        eprintln!(
            "note: ignored an incomplete last line in {} (that person is asked again)",
            path.display()
        );
    }
    Ok(finished)
}

/// What a refusal says about a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// About this person or query: the line is final, written `refused`.
    Final,
    /// Passing (overload, a broker error, an idempotency key whose first
    /// request is still in flight): not written, so a rerun tries again.
    Retry,
    /// About this org, the same for every line: the batch stops.
    Org,
}

/// What a refused line says: the broker's message, or for an idempotency
/// key used before, or a query read back after it expired, what it means
/// in a batch. A line's keys come from the
/// results file, the line and everything it asks, so the same keys with
/// another body mean a request this client did not make from this line
/// (another client's results file of the same name and secret); only
/// another results file gives new keys.
fn line_message(code: ErrorCode, message: String) -> String {
    match code {
        ErrorCode::IdempotencyKeyReused => "this line's idempotency key was used before for \
             another query; its first query stands in the provision records. To ask the line, \
             run the batch with a new results file"
            .to_string(),
        // A rerun reads the same query back under the same keys for as long
        // as the broker keeps them (days after the result itself is
        // deleted), so "ask again" needs other keys.
        ErrorCode::Expired => format!(
            "{message}. この行を照会し直すには新しい結果ファイルで実行してください / \
             to ask the line again, run the batch with a new results file"
        ),
        _ => message,
    }
}

fn refusal(code: ErrorCode) -> Refusal {
    match code {
        ErrorCode::RateLimited
        | ErrorCode::Unavailable
        | ErrorCode::Internal
        | ErrorCode::RequestTimeout
        | ErrorCode::Conflict => Refusal::Retry,
        ErrorCode::OrgSuspended
        | ErrorCode::UnknownOrg
        | ErrorCode::CertificatePinMismatch
        | ErrorCode::Unauthenticated
        | ErrorCode::Forbidden => Refusal::Org,
        _ => Refusal::Final,
    }
}

/// Where pending answers' reply keys go.
struct Keeper {
    store: PendingStore,
    /// The results file, as the kept keys name it.
    results: PathBuf,
    /// Makes each line's query keys: a rerun sends the same request under
    /// the same idempotency key, so a query whose answer was lost in an
    /// interruption is read back, not asked (and recorded) again.
    secret: zeroize::Zeroizing<[u8; 32]>,
}

impl Keeper {
    fn query_keys(&self, line: u64, key: &Key) -> QueryKeys {
        let mut context = self.results.as_os_str().as_encoded_bytes().to_vec();
        for part in [
            line.to_string().as_str(),
            &key.person,
            &key.flow,
            &key.procedure,
            &key.provider,
        ] {
            context.push(0);
            context.extend_from_slice(part.as_bytes());
        }
        for item in &key.items {
            context.push(0);
            context.extend_from_slice(item.as_bytes());
        }
        QueryKeys::derived(self.secret.as_slice(), &context)
    }
}

async fn run_job(client: &Client, keeper: &Keeper, job: &Job, wait: u64) -> Done {
    let k = &job.key;
    let base = json!({
        "line": job.line,
        "person": k.person,
        "flow": k.flow,
        "procedure": k.procedure,
        "provider": k.provider,
        "items": k.items,
    });
    let finished = |status: &str, extra: serde_json::Value| {
        let code = extra
            .get("code")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        let mut v = base.clone();
        if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
            obj.insert("status".into(), status.into());
            for (k, val) in more {
                obj.insert(k.clone(), val.clone());
            }
        }
        Done::Finished {
            status: status.to_string(),
            code,
            line: v.to_string(),
            wipe: None,
        }
    };
    let query = match Query::parse(&k.flow, &k.procedure, &k.provider, &k.person, &k.items) {
        Ok(q) => q,
        Err(e) => {
            return finished(
                "refused",
                json!({"code": "invalid_input", "message": e.to_string()}),
            )
        }
    };
    let mut outcome = client
        .query_keyed(&query, keeper.query_keys(job.line, k))
        .await;
    let mut kept = None;
    let mut unkept = None;
    if let Ok(QueryOutcome::Pending(pending)) = &outcome {
        match keeper
            .store
            .save(pending, client.broker(), Some(&keeper.results))
        {
            Ok(_) => kept = Some(pending.query_id.clone()),
            Err(e) => unkept = Some((pending.query_id.clone(), e.to_string())),
        }
    }
    if wait > 0 {
        if let Ok(QueryOutcome::Pending(pending)) = outcome {
            // Waited for even without a kept key: the key is in memory, so
            // an answer decided meanwhile opens and the line is final.
            outcome = client.wait(pending, Duration::from_secs(wait)).await;
        }
    }
    let decided = matches!(&outcome, Ok(o) if !matches!(o, QueryOutcome::Pending(_)));
    if let (false, Some((query_id, reason))) = (decided, unkept) {
        // A pending line without its key could never be completed.
        return Done::KeyNotKept { query_id, reason };
    }
    let mut done = settle_job(outcome, finished);
    if let (true, Done::Finished { wipe, .. }) = (decided, &mut done) {
        // Decided while waiting: the line says so and the key is not needed.
        *wipe = kept;
    }
    done
}

fn settle_job(
    outcome: Result<QueryOutcome, ClientError>,
    finished: impl Fn(&str, serde_json::Value) -> Done,
) -> Done {
    match outcome {
        Ok(QueryOutcome::Provided(a)) => {
            let values: serde_json::Map<String, serde_json::Value> = a
                .items
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_json()))
                .collect();
            finished(
                "provided",
                json!({"query_id": a.query_id, "values": values, "missing": a.missing}),
            )
        }
        Ok(QueryOutcome::Rejected {
            query_id,
            reason: Some(reason),
        }) => finished("rejected", json!({"query_id": query_id, "reason": reason})),
        Ok(other) => finished(
            other.status().as_str(),
            json!({"query_id": other.query_id()}),
        ),
        Err(ClientError::Refused {
            code,
            message,
            request_id,
            ..
        }) if refusal(code) != Refusal::Retry => match refusal(code) {
            Refusal::Org => Done::OrgRefused {
                code,
                message,
                request_id,
            },
            _ => finished(
                "refused",
                json!({"code": code, "message": line_message(code, message), "request_id": request_id}),
            ),
        },
        Err(e) => Done::Failed {
            fatal: matches!(e, ClientError::Tls { .. } | ClientError::Config { .. }),
            reason: match &e {
                ClientError::Refused { code, .. } => code.to_string(),
                ClientError::Transport { .. } | ClientError::Timeout { .. } => {
                    "connection".to_string()
                }
                ClientError::Tls { .. } => "tls".to_string(),
                ClientError::Permit { .. } => "permit_check".to_string(),
                ClientError::Envelope { .. } => "envelope".to_string(),
                _ => "error".to_string(),
            } + &format!(": {e}"),
        },
    }
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<String, u64>,
    refusals: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
}

/// A batch read and checked, before anything is sent.
pub struct Prepared {
    out: PathBuf,
    /// The results file's canonical path, named by kept reply keys.
    out_canonical: PathBuf,
    out_file: File,
    todo: VecDeque<Job>,
}

impl Prepared {
    /// Whether every query is already in the results file.
    pub fn is_done(&self) -> bool {
        self.todo.is_empty()
    }
}

/// Reads the persons CSV and the results so far; cuts a torn last line.
pub fn prepare(args: &QueryArgs) -> Result<Prepared, CliError> {
    let (Some(input), Some(out)) = (args.batch.as_deref(), args.out.as_deref()) else {
        return Err(CliError::usage("--batch needs --out"));
    };
    let jobs = read_jobs(input, args)?;
    // Locked before it is read, and held until the batch ends.
    let mut out_file = personal_files::lock_or_create(out)?;
    let finished = read_finished(&mut out_file, out)?;
    let total = jobs.len();
    let todo: VecDeque<Job> = jobs
        .into_iter()
        .filter(|j| !finished.contains(&j.key))
        .collect();
    let skipped = total - todo.len();
    let out_canonical =
        std::fs::canonicalize(out).map_err(|e| CliError::file("open results file", out, e))?;
    eprintln!(
        "{total} queries in {}; {skipped} already in {}; {} to do",
        input.display(),
        out.display(),
        todo.len()
    );
    Ok(Prepared {
        out: out.to_path_buf(),
        out_canonical,
        out_file,
        todo,
    })
}

/// Runs the prepared batch.
pub async fn execute(
    client: Client,
    store: PendingStore,
    prepared: Prepared,
    args: &QueryArgs,
) -> Result<Exit, CliError> {
    let Prepared {
        out,
        out_canonical,
        mut out_file,
        todo,
    } = prepared;
    let keeper = Arc::new(Keeper {
        secret: store.derived_secret("batch query keys"),
        store,
        results: out_canonical,
    });
    let out = out.as_path();
    let bar = ProgressBar::with_draw_target(Some(todo.len() as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta} {msg}")
    {
        bar.set_style(style);
    }

    let queue = Arc::new(Mutex::new(todo));
    let stop = Arc::new(AtomicBool::new(false));
    let conn_failures = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Done>(usize::from(args.concurrency) * 2);
    for _ in 0..args.concurrency {
        let (client, keeper, queue, stop, failures, tx) = (
            client.clone(),
            keeper.clone(),
            queue.clone(),
            stop.clone(),
            conn_failures.clone(),
            tx.clone(),
        );
        let wait = args.wait;
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let job = match queue.lock() {
                    Ok(mut q) => q.pop_front(),
                    Err(_) => None,
                };
                let Some(job) = job else { break };
                let done = run_job(&client, &keeper, &job, wait).await;
                match &done {
                    Done::Failed { fatal: true, .. }
                    | Done::KeyNotKept { .. }
                    | Done::OrgRefused { .. } => stop.store(true, Ordering::SeqCst),
                    Done::Failed { reason, .. } if reason.starts_with("connection") => {
                        if failures.fetch_add(1, Ordering::SeqCst) + 1
                            >= MAX_CONSECUTIVE_CONNECTION_FAILURES
                        {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                    _ => failures.store(0, Ordering::SeqCst),
                }
                if tx.send(done).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    let mut tally = Tally::default();
    let mut interrupted = false;
    let mut write_error = None;
    // Answers received but not written once the results file failed.
    let mut unwritten = 0u64;
    let mut key_not_kept = None;
    let mut org_refused = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let done = tokio::select! {
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                stop.store(true, Ordering::SeqCst);
                note(&bar, "interrupted: finishing the queries in flight; rerun the same command to continue");
                continue;
            }
            done = rx.recv() => done,
        };
        let Some(done) = done else { break };
        match done {
            Done::Finished {
                status,
                code,
                line,
                wipe,
            } => {
                if write_error.is_none() {
                    // One write per line, so that a kill leaves at most one torn line.
                    let mut bytes = line.into_bytes();
                    bytes.push(b'\n');
                    match out_file.write_all(&bytes) {
                        Ok(()) => {
                            if let Some(query_id) = wipe {
                                // Only once the line is on disk: until then the
                                // kept key is the way back to the answer. A key
                                // left by a failed wipe goes with the next collect.
                                if out_file.sync_data().is_ok() {
                                    let _ = keeper.store.wipe(&query_id);
                                }
                            }
                        }
                        Err(e) => {
                            write_error = Some(e);
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
                if write_error.is_some() {
                    unwritten += 1;
                }
                if let Some(code) = code {
                    *tally.refusals.entry(code).or_default() += 1;
                }
                *tally.by_status.entry(status).or_default() += 1;
            }
            Done::KeyNotKept { query_id, reason } => {
                *tally.failures.entry("reply_key".into()).or_default() += 1;
                note(
                    &bar,
                    &format!("{}: query {query_id}: the reply key of a pending answer cannot be kept (line not written): {reason}", super::fail::ERROR),
                );
                key_not_kept.get_or_insert((query_id, reason));
            }
            Done::OrgRefused {
                code,
                message,
                request_id,
            } => {
                *tally.failures.entry(code.to_string()).or_default() += 1;
                if org_refused.is_none() {
                    note(
                        &bar,
                        &format!("{}: the broker refused this org: {code}: {message} (request id {request_id})", super::fail::ERROR),
                    );
                    org_refused = Some((code, message, request_id));
                }
            }
            Done::Failed { reason, .. } => {
                let short = reason.split(':').next().unwrap_or("error").to_string();
                *tally.failures.entry(short).or_default() += 1;
                note(
                    &bar,
                    &format!("not done (will be retried on a rerun): {reason}"),
                );
            }
        }
        bar.set_message(summary_line(&tally));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = out_file.sync_data();

    eprintln!("{}", report(&tally, out));
    let failed: u64 = tally.failures.values().sum();
    let left = queue.lock().map(|q| q.len()).unwrap_or(0);
    if let Some(e) = write_error {
        // Queries were sent and answered: not a usage error ("nothing was
        // sent"). Their answers are not lost while the broker keeps them: a
        // rerun sends each under the same idempotency key and reads it back,
        // and the reply keys of pending ones stay kept until their line is
        // on disk.
        return Err(CliError {
            exit: Exit::Partial,
            message: format!(
                "結果ファイルに書けなくなったため止めました。終わった {unwritten} 行は書けていません（未着手 {left} 件） / cannot write results file {}: {e}; stopped with {unwritten} finished lines not written and {left} not started",
                out.display()
            ),
            hint: Some("空き容量か権限を直してから同じコマンドを再実行してください。送信済みの照会は、ブローカーが結果を保持している間（既定24時間）は再度照会せず回答を読み戻します / free disk space or fix permissions, then rerun the same command: queries already sent are read back, not asked again, while the broker keeps their results (24 h by default)".into()),
        });
    }
    if let Some((query_id, reason)) = key_not_kept {
        let mut err = CliError::key_not_kept(&query_id, reason, true);
        err.message
            .push_str(&format!("; stopped with {left} queries not started"));
        return Err(err);
    }
    if let Some((code, message, request_id)) = org_refused {
        return Err(CliError {
            exit: Exit::OrgRefused,
            message: format!(
                "ブローカーがこの組織の照会をすべて拒否しているため、一括照会を止めました（{code}）。未完了の行は書いていません / the broker refuses this org as a whole ({code}: {message}; request id {request_id}), so the batch stopped with {left} queries not started; the lines not done were not written to {}",
                out.display()
            ),
            hint: Some(format!(
                "{}; then rerun the same command to continue",
                refusal_hint(code)
            )),
        });
    }
    if stop.load(Ordering::SeqCst) && !interrupted {
        let cause =
            if tally.failures.contains_key("tls") || tally.failures.contains_key("connection") {
                Exit::Connection
            } else {
                Exit::Internal
            };
        return Err(CliError {
            exit: cause,
            message: format!(
                "stopped after repeated failures with {left} queries not started; the finished ones are in {}",
                out.display()
            ),
            hint: Some("fix the cause shown above, then rerun the same command to continue".into()),
        });
    }
    if interrupted {
        return Err(CliError {
            exit: Exit::Partial,
            message: format!("interrupted with {left} queries not started"),
            hint: Some(format!(
                "rerun the same command to continue; finished queries are in {}",
                out.display()
            )),
        });
    }
    let provided = tally.by_status.get("provided").copied().unwrap_or(0);
    let finished: u64 = tally.by_status.values().sum();
    Ok(if failed == 0 && provided == finished {
        Exit::Ok
    } else {
        Exit::Partial
    })
}

/// A line above the progress bar, or plainly on stderr when there is no bar.
fn note(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn summary_line(t: &Tally) -> String {
    let mut parts: Vec<String> = t
        .by_status
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let failed: u64 = t.failures.values().sum();
    if failed > 0 {
        parts.push(format!("failed {failed}"));
    }
    parts.join(", ")
}

/// The end-of-run summary: counts by status, refusals by reason.
fn report(t: &Tally, out: &Path) -> String {
    let mut s = String::from("summary of this run:\n");
    for status in ["provided", "pending", "rejected", "expired", "refused"] {
        let n = t.by_status.get(status).copied().unwrap_or(0);
        s.push_str(&format!("  {status:<9} {n}"));
        if status == "refused" && !t.refusals.is_empty() {
            let reasons: Vec<String> = t
                .refusals
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            s.push_str(&format!("  ({})", reasons.join(", ")));
        }
        s.push('\n');
    }
    let failed: u64 = t.failures.values().sum();
    if failed > 0 {
        let reasons: Vec<String> = t.failures.iter().map(|(r, n)| format!("{r} {n}")).collect();
        s.push_str(&format!(
            "  {:<9} {failed}  ({}; not written, a rerun tries them again)\n",
            "failed",
            reasons.join(", ")
        ));
    }
    s.push_str(&format!("results: {}", out.display()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_split_sorted_and_deduplicated() {
        assert_eq!(split_items("b;a a,c"), ["a", "b", "c"]);
        assert!(split_items(" ; ").is_empty());
    }

    #[test]
    fn refusals_about_the_org_stop_and_passing_ones_are_retried() {
        for code in [
            ErrorCode::OrgSuspended,
            ErrorCode::UnknownOrg,
            ErrorCode::CertificatePinMismatch,
            ErrorCode::Unauthenticated,
            ErrorCode::Forbidden,
        ] {
            assert_eq!(refusal(code), Refusal::Org, "{code}");
        }
        for code in [
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::Conflict,
        ] {
            assert_eq!(refusal(code), Refusal::Retry, "{code}");
        }
        for code in [
            ErrorCode::IdempotencyKeyReused,
            ErrorCode::UnknownPerson,
            ErrorCode::NoCopy,
            ErrorCode::FlowNotInForce,
        ] {
            assert_eq!(refusal(code), Refusal::Final, "{code}");
        }
    }

    #[test]
    fn a_reused_key_tells_the_batch_user_what_to_do() {
        let line = line_message(ErrorCode::IdempotencyKeyReused, "use a new key".into());
        assert!(line.contains("new results file"), "{line}");
        let line = line_message(ErrorCode::Expired, "the result was deleted".into());
        assert!(
            line.starts_with("the result was deleted") && line.contains("new results file"),
            "{line}"
        );
        assert_eq!(line_message(ErrorCode::NoCopy, "no copy".into()), "no copy");
    }

    #[test]
    fn torn_last_line_is_cut_and_finished_keys_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let line = r#"{"line":2,"person":"P0000001","flow":"F","procedure":"p","provider":"city-x","items":["a"],"status":"provided"}"#;
        std::fs::write(&path, format!("{line}\n{{\"line\":3,\"per")).unwrap();
        let mut file = personal_files::lock_or_create(&path).unwrap();
        let keys = read_finished(&mut file, &path).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys.iter().any(|k| k.person == "P0000001"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{line}\n"));

        drop(file);
        std::fs::write(&path, "not json\n").unwrap();
        let mut file = personal_files::lock_or_create(&path).unwrap();
        let err = read_finished(&mut file, &path).unwrap_err();
        assert_eq!(err.exit, Exit::Usage);
        let none = dir.path().join("none");
        let mut file = personal_files::lock_or_create(&none).unwrap();
        assert!(read_finished(&mut file, &none).unwrap().is_empty());
    }
}
