//! `kakehashi query collect` and `kakehashi query get <id>`: open the answers
//! of pending queries with the reply keys kept in the profile's store.
//!
//! A kept key is wiped once its query is decided: answer opened (and
//! printed, or written to its batch results file), rejected, or expired. A
//! key whose expiry passed while the broker still says `pending` (its sweep
//! has not run yet) is wiped too.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kakehashi_client::interfaces::QueryId;
use kakehashi_client::{
    Client, ClientError, ErrorCode, KeptQuery, PendingEntry, PendingStore, QueryOutcome,
};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::args::{CollectArgs, GetArgs};
use super::fail::{CliError, Exit};
use super::personal_files::{self, Locked};
use super::query_cmd::{exit_for, outcome_json, print_expired, print_outcome};

/// What became of one kept query.
enum Settled {
    /// The broker's answer, opened where provided.
    Outcome(Box<QueryOutcome>),
    /// The broker does not know the query any more (404): it expired and
    /// was deleted.
    Gone(QueryId),
    /// Still pending at the broker, but past the expiry it announced.
    PastExpiry(QueryId),
}

impl Settled {
    fn is_pending(&self) -> bool {
        matches!(self, Settled::Outcome(o) if matches!(**o, QueryOutcome::Pending(_)))
    }

    fn is_provided(&self) -> bool {
        matches!(self, Settled::Outcome(o) if matches!(**o, QueryOutcome::Provided(_)))
    }

    fn status(&self) -> &'static str {
        match self {
            Settled::Outcome(o) => o.status().as_str(),
            Settled::Gone(_) | Settled::PastExpiry(_) => "expired",
        }
    }

    /// The fields a pending batch line gets; `None` while still pending.
    fn line_update(&self) -> Option<Map<String, Value>> {
        let mut m = Map::new();
        m.insert("status".into(), self.status().into());
        let outcome = match self {
            Settled::Outcome(o) => Some(&**o),
            _ => None,
        };
        match outcome {
            Some(QueryOutcome::Pending(_)) => return None,
            Some(QueryOutcome::Provided(a)) => {
                let values: Map<String, Value> = a
                    .items
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_json()))
                    .collect();
                m.insert("values".into(), Value::Object(values));
                m.insert("missing".into(), json!(a.missing));
            }
            Some(QueryOutcome::Rejected {
                reason: Some(reason),
                ..
            }) => {
                m.insert("reason".into(), reason.as_str().into());
            }
            _ => {}
        }
        Some(m)
    }

    fn print(&self, entry: &PendingEntry, json: bool) -> Result<(), CliError> {
        match self {
            Settled::Outcome(o) => print_outcome(o, &entry.provider, json),
            Settled::Gone(id) | Settled::PastExpiry(id) => {
                if json {
                    super::print_json(&self.json(entry))
                } else {
                    print_expired(id, matches!(self, Settled::Gone(_)));
                    Ok(())
                }
            }
        }
    }

    fn json(&self, entry: &PendingEntry) -> Value {
        match self {
            Settled::Outcome(o) => outcome_json(o, &entry.provider),
            Settled::Gone(id) | Settled::PastExpiry(id) => json!({
                "query_id": id,
                "status": "expired",
                "provider": entry.provider,
            }),
        }
    }
}

/// Failures that say the broker cannot be asked at all: stop asking.
fn is_connection(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Transport { .. } | ClientError::Tls { .. } | ClientError::Timeout { .. }
    )
}

/// Asks the broker about one kept query, waiting up to `wait` while pending.
async fn settle(
    client: &Client,
    kept: KeptQuery,
    wait: Duration,
    now: OffsetDateTime,
) -> Result<Settled, ClientError> {
    let query_id = kept.entry.query_id.clone();
    let past_expiry = kept.entry.is_expired(now);
    match client.resume(kept, wait).await {
        Ok(QueryOutcome::Pending(_)) if past_expiry => Ok(Settled::PastExpiry(query_id)),
        Ok(outcome) => Ok(Settled::Outcome(Box::new(outcome))),
        Err(ClientError::Refused {
            code: ErrorCode::NotFound,
            ..
        }) => Ok(Settled::Gone(query_id)),
        Err(e) => Err(e),
    }
}

/// The store of the chosen profile, if anything was ever kept for it.
fn existing_store(profile: &str) -> Result<Option<PendingStore>, CliError> {
    Ok(PendingStore::open_existing(&super::config_dir()?, profile)?)
}

/// Notes the first failure; reports every one on stderr.
fn note_failure(first: &mut Option<Exit>, query_id: &QueryId, e: CliError) {
    eprintln!("{}: query {query_id}: {e}", super::fail::ERROR);
    first.get_or_insert(e.exit);
}

/// `kakehashi query collect`: every kept query of the profile.
pub async fn collect(chosen: Option<&str>, args: &CollectArgs) -> Result<Exit, CliError> {
    if let Some(file) = &args.batch {
        return collect_batch(chosen, file).await;
    }
    let (name, profile) = super::profile_cmd::resolve(chosen)?;
    let Some(store) = existing_store(&name)? else {
        return nothing_pending(&name, args.json);
    };
    let scan = store.scan()?;
    let mut failure = None;
    for e in scan.unreadable {
        eprintln!("{}: {}", super::fail::ERROR, CliError::from(e));
        failure.get_or_insert(Exit::Usage);
    }
    if scan.entries.is_empty() {
        if let Some(exit) = failure {
            return Ok(exit);
        }
        return nothing_pending(&name, args.json);
    }
    let now = OffsetDateTime::now_utc();
    let client = match Client::connect(&profile).await {
        Ok(c) => super::witnessing(c, &name, &profile)?,
        Err(e) => return Err(give_up(&store, now, e)),
    };
    let mut json_out = Vec::new();
    let mut pending = 0u64;
    let mut not_provided = false;
    let mut batch_updates: BTreeMap<String, Vec<(PendingEntry, Settled)>> = BTreeMap::new();
    // Wiped only once the answers are printed.
    let mut to_wipe = Vec::new();
    let mut stopped = None;
    for entry in scan.entries {
        if entry.broker != client.broker() {
            eprintln!(
                "note: query {} was asked at {}, this profile now uses {}; not asked",
                entry.query_id,
                entry.broker,
                client.broker()
            );
            not_provided = true;
            if entry.is_expired(now) {
                to_wipe.push(entry.query_id);
            }
            continue;
        }
        let kept = match store.open_entry(&entry.query_id) {
            Ok(Some(kept)) => kept,
            // Collected by another process meanwhile.
            Ok(None) => continue,
            Err(e) => {
                note_failure(&mut failure, &entry.query_id, e.into());
                continue;
            }
        };
        let settled = match settle(&client, kept, Duration::ZERO, now).await {
            Ok(s) => s,
            Err(e) if is_connection(&e) => {
                // What was decided so far is still printed and written below.
                stopped = Some(e);
                break;
            }
            Err(e) => {
                note_failure(&mut failure, &entry.query_id, e.into());
                continue;
            }
        };
        if settled.is_pending() {
            pending += 1;
        } else if !settled.is_provided() {
            not_provided = true;
        }
        if args.json {
            json_out.push(settled.json(&entry));
        } else if !settled.is_pending() {
            settled.print(&entry, false)?;
        }
        if settled.is_pending() {
            continue;
        }
        match entry.batch.clone() {
            // Wiped once the line is written to its results file.
            Some(file) => batch_updates
                .entry(file)
                .or_default()
                .push((entry, settled)),
            None => to_wipe.push(entry.query_id),
        }
    }
    if args.json {
        super::print_json(&json_out)?;
    } else if pending > 0 {
        println!("承認待ち: {pending} 件");
        println!("still pending approval: {pending}");
    }
    for query_id in &to_wipe {
        if let Err(e) = store.wipe(query_id) {
            note_failure(&mut failure, query_id, e.into());
        }
    }
    finish_batches(&store, batch_updates, &mut failure);
    if let Some(e) = stopped {
        return Err(give_up(&store, now, e));
    }
    Ok(failure.unwrap_or(if pending > 0 || not_provided {
        Exit::Partial
    } else {
        Exit::Ok
    }))
}

fn nothing_pending(profile: &str, json: bool) -> Result<Exit, CliError> {
    if json {
        super::print_json(&Vec::<Value>::new())?;
    } else {
        println!("承認待ちの照会はありません（プロファイル {profile}）");
        println!("no pending queries for profile {profile}");
    }
    Ok(Exit::Ok)
}

/// The broker cannot be asked: keys past their expiry are wiped anyway (the
/// broker deletes those queries), then the connection error is returned.
fn give_up(store: &PendingStore, now: OffsetDateTime, e: ClientError) -> CliError {
    match store.wipe_expired(now) {
        Ok(wiped) if !wiped.is_empty() => eprintln!(
            "note: wiped the reply keys of {} queries past their expiry",
            wiped.len()
        ),
        Ok(_) => {}
        Err(e) => eprintln!("{}: {}", super::fail::ERROR, CliError::from(e)),
    }
    e.into()
}

/// Writes decided queries into the batch results files that asked them,
/// then wipes their keys. A file that cannot be rewritten, or that a
/// running batch holds, keeps its keys, so that the next collect writes it.
fn finish_batches(
    store: &PendingStore,
    updates: BTreeMap<String, Vec<(PendingEntry, Settled)>>,
    failure: &mut Option<Exit>,
) {
    for (file, settled) in updates {
        let path = PathBuf::from(&file);
        let by_id: HashMap<String, Map<String, Value>> = settled
            .iter()
            .filter_map(|(e, s)| Some((e.query_id.to_string(), s.line_update()?)))
            .collect();
        let result = match personal_files::lock_results(&path, false) {
            Ok(Locked::File(mut locked)) => complete_lines(&path, &mut locked, &by_id).map(Some),
            Ok(Locked::Missing) => Ok(None),
            Ok(Locked::Busy) => {
                // Not a usage error: the answers wait, with their keys,
                // for the next collect.
                eprintln!("{}: {}", super::fail::ERROR, personal_files::busy(&path));
                failure.get_or_insert(Exit::Partial);
                continue;
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(written) => {
                match written {
                    Some(n) if n > 0 => {
                        eprintln!("note: completed {n} pending line(s) of {file}")
                    }
                    Some(_) => {}
                    None => eprintln!(
                        "note: the batch results file {file} is gone; its pending lines were not completed"
                    ),
                }
                for (entry, _) in &settled {
                    if let Err(e) = store.wipe(&entry.query_id) {
                        note_failure(failure, &entry.query_id, e.into());
                    }
                }
            }
            Err(e) => {
                eprintln!("{}: {e}", super::fail::ERROR);
                failure.get_or_insert(e.exit);
            }
        }
    }
}

/// `kakehashi query get <id>`: one kept query.
pub async fn get(chosen: Option<&str>, args: &GetArgs) -> Result<Exit, CliError> {
    let query_id = QueryId::new(args.query_id.as_str()).map_err(|e| {
        CliError::usage(e.to_string()).hint("give the query id a pending answer came with")
    })?;
    let (name, profile) = super::profile_cmd::resolve(chosen)?;
    let kept = match existing_store(&name)? {
        Some(store) => store.open_entry(&query_id)?.map(|k| (store, k)),
        None => None,
    };
    let Some((store, kept)) = kept else {
        return Err(CliError::usage(format!(
            "no reply key is kept for query {query_id} in profile {name}"
        ))
        .hint("its answer was opened already, or it expired, or another profile or computer asked it; see `kakehashi query collect`"));
    };
    let entry = kept.entry.clone();
    let now = OffsetDateTime::now_utc();
    let client = match Client::connect(&profile).await {
        Ok(c) => super::witnessing(c, &name, &profile)?,
        Err(e) => return Err(give_up(&store, now, e)),
    };
    if args.wait > 0 {
        eprintln!(
            "query {query_id}: waiting up to {}s for the decision of {}",
            args.wait, entry.provider
        );
    }
    let settled = match settle(&client, kept, Duration::from_secs(args.wait), now).await {
        Ok(s) => s,
        Err(e) if is_connection(&e) => return Err(give_up(&store, now, e)),
        Err(e) => return Err(e.into()),
    };
    settled.print(&entry, args.json)?;
    let exit = match &settled {
        Settled::Outcome(o) => exit_for(o),
        _ => Exit::Partial,
    };
    if settled.is_pending() {
        return Ok(exit);
    }
    let mut failure = None;
    match entry.batch.clone() {
        Some(file) => {
            let mut updates = BTreeMap::new();
            updates.insert(file, vec![(entry, settled)]);
            finish_batches(&store, updates, &mut failure);
        }
        None => {
            store.wipe(&query_id)?;
        }
    }
    Ok(failure.unwrap_or(exit))
}

/// `kakehashi query collect --batch FILE`: completes the file's pending lines.
async fn collect_batch(chosen: Option<&str>, file: &Path) -> Result<Exit, CliError> {
    // Held from the first read to the rewrite, so that no batch appends in
    // between; refused at once while a batch runs on the file.
    let mut locked = personal_files::lock_existing(file)?;
    let ids = pending_ids(&mut locked, file)?;
    if ids.is_empty() {
        eprintln!(
            "nothing to complete: no pending lines in {}",
            file.display()
        );
        return Ok(Exit::Ok);
    }
    let (name, profile) = super::profile_cmd::resolve(chosen)?;
    let store = existing_store(&name)?;
    let mut kept = Vec::new();
    let mut no_key = 0u64;
    let mut failure = None;
    for id in &ids {
        let found = match (&store, QueryId::new(id.as_str())) {
            (Some(store), Ok(query_id)) => match store.open_entry(&query_id) {
                Ok(found) => found,
                Err(e) => {
                    note_failure(&mut failure, &query_id, e.into());
                    continue;
                }
            },
            _ => None,
        };
        match found {
            Some(k) => kept.push(k),
            None => no_key += 1,
        }
    }
    let mut tally: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut updates = HashMap::new();
    let mut decided = Vec::new();
    let mut stopped = None;
    if let (Some(store), false) = (&store, kept.is_empty()) {
        let now = OffsetDateTime::now_utc();
        let client = match Client::connect(&profile).await {
            Ok(c) => super::witnessing(c, &name, &profile)?,
            Err(e) => return Err(give_up(store, now, e)),
        };
        for k in kept {
            let query_id = k.entry.query_id.clone();
            match settle(&client, k, Duration::ZERO, now).await {
                Ok(settled) => {
                    *tally.entry(settled.status()).or_default() += 1;
                    if let Some(update) = settled.line_update() {
                        updates.insert(query_id.to_string(), update);
                        decided.push(query_id);
                    }
                }
                Err(e) if is_connection(&e) => {
                    // What was decided so far is still written below.
                    stopped = Some(e);
                    break;
                }
                Err(e) => note_failure(&mut failure, &query_id, e.into()),
            }
        }
    }
    let written = if updates.is_empty() {
        0
    } else {
        complete_lines(file, &mut locked, &updates)?
    };
    drop(locked);
    if let Some(store) = &store {
        for query_id in &decided {
            store.wipe(query_id)?;
        }
    }
    let count = |s: &str| tally.get(s).copied().unwrap_or(0);
    eprintln!(
        "completed {written} of {} pending lines in {}: provided {}, rejected {}, expired {}; still pending {}; no kept reply key {no_key}",
        ids.len(),
        file.display(),
        count("provided"),
        count("rejected"),
        count("expired"),
        count("pending"),
    );
    if count("pending") > 0 {
        eprintln!("承認待ち: {} 件", count("pending"));
    }
    if no_key > 0 {
        eprintln!(
            "note: {no_key} pending lines have no reply key in profile {name}: asked by another profile or computer, or already wiped; their answers cannot be opened here"
        );
    }
    if let (Some(e), Some(store)) = (stopped, &store) {
        return Err(give_up(store, OffsetDateTime::now_utc(), e));
    }
    let all_provided = no_key == 0 && count("provided") == ids.len() as u64;
    Ok(failure.unwrap_or(if all_provided {
        Exit::Ok
    } else {
        Exit::Partial
    }))
}

/// Reads the whole of `file` (open on `path`) from its start.
fn read_all(file: &mut File, path: &Path) -> Result<Vec<u8>, CliError> {
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| CliError::file("read results file", path, e))?;
    Ok(bytes)
}

/// The query ids of a results file's pending lines, in file order.
fn pending_ids(file: &mut File, path: &Path) -> Result<Vec<String>, CliError> {
    let bytes = read_all(file, path)?;
    let mut ids = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        if let Some(id) = pending_line_id(line) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The query id of a pending result line; `None` for any other line.
fn pending_line_id(line: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(line).ok()?;
    if value.get("status")?.as_str()? != "pending" {
        return None;
    }
    Some(value.get("query_id")?.as_str()?.to_string())
}

/// Rewrites a results file with the pending lines named in `updates`
/// completed, atomically (temporary file in the same directory, synced,
/// then renamed over it; mode 0600). Every other byte is kept as it was.
/// `locked` is the file open on `path` under its lock
/// ([`personal_files::lock_results`]), held until the new file is in place.
/// Returns the number of lines changed; the file is not touched when that
/// is 0.
fn complete_lines(
    path: &Path,
    locked: &mut File,
    updates: &HashMap<String, Map<String, Value>>,
) -> Result<usize, CliError> {
    let bytes = read_all(locked, path)?;
    let mut out = Vec::with_capacity(bytes.len() + updates.len() * 64);
    let mut changed = 0;
    for chunk in bytes.split_inclusive(|b| *b == b'\n') {
        let (line, newline) = match chunk.strip_suffix(b"\n") {
            Some(line) => (line, true),
            None => (chunk, false),
        };
        let update = newline
            .then(|| pending_line_id(line))
            .flatten()
            .and_then(|id| updates.get(&id));
        let completed = update.and_then(|fields| {
            let mut value: Value = serde_json::from_slice(line).ok()?;
            let obj = value.as_object_mut()?;
            for (k, v) in fields {
                obj.insert(k.clone(), v.clone());
            }
            Some(value.to_string())
        });
        match completed {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
                changed += 1;
            }
            None => out.extend_from_slice(chunk),
        }
    }
    if changed == 0 {
        return Ok(0);
    }
    let dir = personal_files::parent_dir(path);
    let (tmp, mut file) = personal_files::create_temp_beside(path)
        .map_err(|e| CliError::file("rewrite results file", path, e))?;
    let result = (|| {
        file.write_all(&out)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself reaches the disk with the directory.
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        Ok::<(), std::io::Error>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::file("rewrite results file", path, e));
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_pending_lines_change_and_the_rest_stays_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let provided =
            r#"{"items":["a"],"line":2,"person":"P1","status":"provided","values":{"a":1}}"#;
        let pending_a =
            r#"{"items":["s"],"line":3,"person":"P2","query_id":"q_a","status":"pending"}"#;
        let pending_b =
            r#"{"items":["s"],"line":4,"person":"P3","query_id":"q_b","status":"pending"}"#;
        let odd = r#"{ "line": 5, "status": "refused",   "code": "unknown_person" }"#;
        let torn = r#"{"line":6,"person":"P4","query_id":"q_c","sta"#;
        let text = format!("{provided}\n{pending_a}\n{odd}\n{pending_b}\n{torn}");
        std::fs::write(&path, &text).unwrap();
        let mut locked = personal_files::lock_existing(&path).unwrap();
        assert_eq!(pending_ids(&mut locked, &path).unwrap(), ["q_a", "q_b"]);

        let mut updates = HashMap::new();
        let mut fields = Map::new();
        fields.insert("status".into(), "rejected".into());
        fields.insert("reason".into(), "根拠法令の範囲外".into());
        updates.insert("q_b".to_string(), fields);
        updates.insert("q_zz".to_string(), Map::new());
        assert_eq!(complete_lines(&path, &mut locked, &updates).unwrap(), 1);
        drop(locked);

        let after = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = after.split('\n').collect();
        assert_eq!(lines[0], provided);
        assert_eq!(lines[1], pending_a);
        assert_eq!(lines[2], odd);
        let b: Value = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(b["status"], "rejected");
        assert_eq!(b["reason"], "根拠法令の範囲外");
        assert_eq!(b["person"], "P3");
        assert_eq!(b["query_id"], "q_b");
        assert_eq!(lines[4], torn, "a torn last line is left alone");
        let mut locked = personal_files::lock_existing(&path).unwrap();
        assert_eq!(pending_ids(&mut locked, &path).unwrap(), ["q_a"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the rewritten file is private");
        }

        // Nothing named: the file is not rewritten.
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(
            complete_lines(&path, &mut locked, &HashMap::new()).unwrap(),
            0
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }
}
