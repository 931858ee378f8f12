//! What the CLI writes, and when it must not (client fixes): a pending
//! answer whose reply key could not be kept is not written, and the error
//! names the query; a refusal of the whole org stops the batch without
//! writing lines; a rerun by another person asks again instead of colliding
//! with the first run's idempotency keys; a results file in use is refused
//! by `query collect` and by a second batch; files of personal data are
//! created 0600; a huge `--wait` waits instead of panicking; a results file
//! that fills up stops the batch, and the rerun reads the answers back. Real broker,
//! real `kakehashi` subprocesses.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kakehashi_client::interfaces::{OrgId, OrgStatus};
use kakehashi_tests::cli::{mode, CliUser, Run, PLAIN, SENSITIVE};
use kakehashi_tests::exchange::{exchange_broker, exchange_broker_with, scenario};
use kakehashi_tests::{sql_count, Backend};

fn result_lines(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

/// The query ids (`q_…`) a text names.
fn query_ids(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("q_") && w.len() > 10)
        .map(str::to_string)
        .collect()
}

fn persons_csv(path: &Path, persons: &[&str]) -> Result<()> {
    let mut text = String::from("person\n");
    for p in persons {
        text.push_str(p);
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// A terminal user's batch: the user (with a profile named after its org),
/// the input file and where the results go.
struct Batch {
    user: CliUser,
    profile: &'static str,
    input: PathBuf,
    out: PathBuf,
}

impl Batch {
    /// A user with a profile of `org` on `broker`, an input file of
    /// `persons` and `results.jsonl` for the results.
    async fn new(
        broker: &kakehashi_tests::TestBroker,
        org: &'static str,
        persons: &[String],
    ) -> Result<Batch> {
        let user = CliUser::new()?;
        user.add_profile(broker, org).await?;
        let input = user.files.path().join("persons.csv");
        let codes: Vec<&str> = persons.iter().map(String::as_str).collect();
        persons_csv(&input, &codes)?;
        let out = user.files.path().join("results.jsonl");
        Ok(Batch {
            user,
            profile: org,
            input,
            out,
        })
    }

    /// `query --batch INPUT …FLAGS --out OUT` (OUT last: it may not be
    /// UTF-8), as `KAKEHASHI_USER=user_id` when given.
    fn command(&self, flags: &[&str], user_id: Option<&str>) -> Result<tokio::process::Command> {
        let input = self.input.display().to_string();
        let mut args = vec!["--profile", self.profile, "query", "--batch", &input];
        args.extend(flags);
        args.push("--out");
        let mut cmd = self.user.command(&args)?;
        cmd.arg(&self.out);
        if let Some(id) = user_id {
            cmd.env("KAKEHASHI_USER", id);
        }
        Ok(cmd)
    }

    /// Runs [`Batch::command`].
    async fn run(&self, flags: &[&str], user_id: Option<&str>) -> Result<Run> {
        self.user.run_command(self.command(flags, user_id)?).await
    }
}

/// `cmd` run with files it writes limited to `bytes` (rounded down to
/// 512-byte blocks, `ulimit -f`), SIGXFSZ ignored: a write past the limit
/// fails (EFBIG) as on a full disk instead of killing the process.
fn with_file_size_limit(cmd: &tokio::process::Command, bytes: u64) -> tokio::process::Command {
    let inner = cmd.as_std();
    let mut limited = tokio::process::Command::new("sh");
    limited
        .arg("-c")
        .arg(format!(
            "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
            bytes / 512
        ))
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(value) => limited.env(key, value),
            None => limited.env_remove(key),
        };
    }
    limited
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    limited
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_org_stops_the_batch_and_writes_no_line() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 5).await?;
    // An org no connection has used yet, so that no admission cache
    // remembers it active.
    broker
        .store
        .set_org_status(&OrgId::new("agency-pension")?, OrgStatus::Suspended)
        .await?;
    let b = Batch::new(&broker, "agency-pension", &s.union_codes).await?;
    let out = &b.out;

    let run = b.run(&PLAIN, None).await?;
    assert_eq!(
        run.code, 7,
        "a refusal of the org has its own exit: {run:?}"
    );
    assert!(
        run.stderr.contains("org_suspended") && run.stderr.contains("refuses this org"),
        "{run:?}"
    );
    assert!(run.stderr.contains(" — "), "says what to do: {run:?}");
    // In Japanese and English.
    assert!(
        run.stderr.contains("エラー / error: ")
            && run
                .stderr
                .contains("この組織はブローカーで停止されています"),
        "{run:?}"
    );
    assert!(
        result_lines(out)?.is_empty(),
        "no person is marked refused for what concerns the org"
    );

    // Once the org is active again, the rerun asks every person.
    broker
        .store
        .set_org_status(&OrgId::new("agency-pension")?, OrgStatus::Active)
        .await?;
    // The broker caches org status for up to 2 s; twenty reruns half a
    // second apart outlast it however long each run takes.
    let mut reruns = 0;
    loop {
        let run = b.run(&PLAIN, None).await?;
        if run.code != 7 {
            break;
        }
        reruns += 1;
        if reruns == 20 {
            bail!("the org stayed refused: {run:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lines = result_lines(out)?;
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["code"] != "org_suspended"),
        "{lines:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_line_whose_key_cannot_be_kept_is_not_written() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 2).await?;
    let user = CliUser::new()?;
    user.add_profile(&broker, "union-saitama").await?;
    // Row 1 plain (provided), row 2 sensitive (pending).
    let input = user.files.path().join("persons.csv");
    std::fs::write(
        &input,
        format!(
            "person,flow,procedure,items\n{},F-0120,premium-calculation,local_tax.income\n{},,,\n",
            s.union_codes[0], s.union_codes[1]
        ),
    )?;
    // A results file whose name is not UTF-8: the store cannot name it in
    // a kept key, so keeping the reply key of a pending line fails.
    use std::os::unix::ffi::OsStrExt;
    let out = user
        .files
        .path()
        .join(OsStr::from_bytes(b"results-\xff.jsonl"));
    let mut flags = vec!["--concurrency", "1"];
    flags.extend(SENSITIVE);
    let b = Batch {
        user,
        profile: "union-saitama",
        input,
        out,
    };
    let out = &b.out;

    let run = b.run(&flags, None).await?;
    assert_eq!(
        run.code, 8,
        "not 2 (\"nothing was sent\"): the query was made: {run:?}"
    );
    assert!(!run.stderr.contains("nothing was sent"), "{run:?}");
    assert!(
        run.stderr.contains("was made") && run.stderr.contains("cannot be opened"),
        "{run:?}"
    );
    let ids = query_ids(&run.stderr);
    assert_eq!(ids.len(), 1, "the message names the query: {run:?}");
    let lines = result_lines(out)?;
    assert_eq!(
        lines.len(),
        1,
        "only the provided line is written: {lines:?}"
    );
    assert_eq!(lines[0]["status"], "provided");

    // The broker has the query, pending.
    let mut union = broker.client("union-saitama").await?;
    let id = ids.iter().next().context("query id")?;
    let polled = union.get(&format!("/v1/queries/{id}")).await?;
    assert_eq!(polled.json()?["status"], "pending", "{polled:?}");

    // A rerun asks that person again, under the same keys: the same query.
    let again = b.run(&flags, None).await?;
    assert_eq!(again.code, 8, "{again:?}");
    assert!(again.stderr.contains("1 already in"), "{again:?}");
    assert_eq!(
        query_ids(&again.stderr),
        ids,
        "the same query, not a new one"
    );
    assert_eq!(result_lines(out)?.len(), 1);
    Ok(())
}

fn query_args<'a>(person: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--profile", "union-saitama", "query", "--person", person];
    args.extend(flags);
    args
}

/// Makes a directory immutable (even to root) while it lives; `None` where
/// the file system or the process's capabilities do not allow it.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        let guard = Immutable(dir.to_path_buf());
        // Root ignores modes, not this flag; make sure it holds here.
        let probe = dir.join("probe");
        if !ok || std::fs::write(&probe, b"").is_ok() {
            let _ = std::fs::remove_file(&probe);
            return None;
        }
        Some(guard)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_query_whose_key_cannot_be_kept_names_the_query() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 1).await?;
    let user = CliUser::new()?;
    user.add_profile(&broker, "union-saitama").await?;
    let person = s.union_codes[0].as_str();
    // A plain query makes the profile's store.
    user.run(&query_args(person, &PLAIN)).await?.ok()?;
    let store = kakehashi_client::PendingStore::dir_for(user.home.path(), "union-saitama");
    let Some(_frozen) = Immutable::set(&store) else {
        // Not a quiet pass: this machine cannot run the test (chattr +i
        // needs root on a file system with the immutable flag).
        if std::env::var("KAKEHASHI_SKIP_CHATTR").as_deref() == Ok("1") {
            eprintln!("NOT RUN: cannot make {} immutable here", store.display());
            return Ok(());
        }
        anyhow::bail!(
            "cannot make {} immutable here (chattr +i); run as root on ext4, or set KAKEHASHI_SKIP_CHATTR=1 to skip this test knowingly",
            store.display()
        );
    };
    let run = user.run(&query_args(person, &SENSITIVE)).await?;
    assert_eq!(run.code, 8, "{run:?}");
    assert!(!run.stderr.contains("nothing was sent"), "{run:?}");
    assert!(
        run.stderr.contains("was made") && run.stderr.contains("cannot be opened"),
        "{run:?}"
    );
    let ids = query_ids(&run.stderr);
    assert_eq!(ids.len(), 1, "{run:?}");
    let mut union = broker.client("union-saitama").await?;
    let id = ids.iter().next().context("query id")?;
    let polled = union.get(&format!("/v1/queries/{id}")).await?;
    assert_eq!(polled.json()?["status"], "pending", "{polled:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_by_another_person_asks_again_instead_of_conflicting() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 3).await?;
    let b = Batch::new(&broker, "union-saitama", &s.union_codes).await?;
    let out = &b.out;
    let ids_of = |lines: &[serde_json::Value]| -> BTreeSet<String> {
        lines
            .iter()
            .filter_map(|l| l["query_id"].as_str().map(str::to_string))
            .collect()
    };

    let first = b.run(&PLAIN, Some("kawada.op")).await?;
    assert_eq!(first.code, 0, "{first:?}");
    let first_ids = ids_of(&result_lines(out)?);
    assert_eq!(first_ids.len(), 3);

    // The answers were given but never written (the run was interrupted):
    // the same person's rerun reads them back ...
    std::fs::write(out, "")?;
    let same = b.run(&PLAIN, Some("kawada.op")).await?;
    assert_eq!(same.code, 0, "{same:?}");
    assert_eq!(ids_of(&result_lines(out)?), first_ids, "read back");

    // ... and another person's rerun asks again: its request carries
    // another requested_by, so it must not reuse the first run's keys
    // (the broker would refuse it as a conflict).
    std::fs::write(out, "")?;
    let other = b.run(&PLAIN, Some("ueda.op")).await?;
    assert_eq!(other.code, 0, "{other:?}");
    let lines = result_lines(out)?;
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l["status"] == "provided"), "{lines:?}");
    assert!(ids_of(&lines).is_disjoint(&first_ids), "new queries");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_in_use_is_refused() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 2).await?;
    let b = Batch::new(&broker, "union-saitama", &s.union_codes).await?;
    let (user, out) = (&b.user, &b.out);
    let run = b.run(&SENSITIVE, None).await?;
    assert_eq!(run.code, 1, "pending: {run:?}");
    let out_s = out.display().to_string();
    let collect = [
        "--profile",
        "union-saitama",
        "query",
        "collect",
        "--batch",
        &out_s,
    ];

    // Another process (a batch, as far as the CLI can tell) holds the file.
    let held = std::fs::OpenOptions::new().read(true).open(out)?;
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive)?;
    let refused = user.run(&collect).await?;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("in use") && refused.stderr.contains(" — "),
        "{refused:?}"
    );
    let second = b.run(&SENSITIVE, None).await?;
    assert_eq!(second.code, 2, "a second batch on the file: {second:?}");
    assert!(second.stderr.contains("in use"), "{second:?}");
    drop(held);
    let collected = user.run(&collect).await?;
    assert_eq!(collected.code, 1, "still pending: {collected:?}");
    assert!(
        collected.stderr.contains("still pending 2"),
        "{collected:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_personal_data_are_private() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 1).await?;
    // Whatever the umask says.
    let b = Batch::new(&broker, "union-saitama", &s.union_codes[..1]).await?;
    let (user, out) = (&b.user, &b.out);
    let run = b.run(&PLAIN, None).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(mode(out)?, 0o600, "results file");
    // A results file others may read (made by hand, or widened since) is
    // narrowed before answers are added to it.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644))?;
    }
    let again = b.run(&PLAIN, None).await?;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(mode(out)?, 0o600, "results file narrowed");

    // Person codes and the confirmation list.
    let insured = user.files.path().join("insured.csv");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/sample/insured.csv");
    std::fs::copy(sample, &insured)?;
    let insured_s = insured.display().to_string();
    let registered = user
        .run(&[
            "--profile",
            "union-saitama",
            "persons",
            "register",
            &insured_s,
        ])
        .await?;
    assert!(matches!(registered.code, 0 | 1), "{registered:?}");
    for suffix in [".codes.csv", ".confirmation.csv"] {
        let path = user.files.path().join(format!("insured.csv{suffix}"));
        assert_eq!(mode(&path)?, 0o600, "{}", path.display());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_wait_waits_instead_of_panicking() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 1).await?;
    let user = CliUser::new()?;
    user.add_profile(&broker, "union-saitama").await?;
    let mut args = vec![
        "--profile",
        "union-saitama",
        "query",
        "--person",
        s.union_codes[0].as_str(),
        "--wait",
        "18446744073709551615",
    ];
    args.extend(SENSITIVE);
    let mut child = user.command(&args)?.spawn()?;
    // Still waiting after a few seconds: it neither panicked nor gave up.
    let exited = tokio::time::timeout(Duration::from_secs(4), child.wait()).await;
    if let Ok(status) = exited {
        let out = child.wait_with_output().await?;
        bail!(
            "exited ({:?}) instead of waiting: {}",
            status?,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.start_kill()?;
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("waiting up to 18446744073709551615s"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_that_fills_up_stops_the_batch_and_a_rerun_reads_the_answers_back(
) -> Result<()> {
    // Permits short-lived, so that the rerun comes after they expired.
    let Some(broker) = exchange_broker_with(Backend::Sqlite, |opts| {
        opts.exchange.permit_ttl_secs = 2;
    })
    .await?
    else {
        return Ok(());
    };
    let s = scenario(&broker, 5).await?;
    let b = Batch::new(&broker, "union-saitama", &s.union_codes).await?;
    let (user, out) = (&b.user, &b.out);
    let provided = "SELECT COUNT(*) FROM records WHERE outcome = 'provided'";

    // Room for about one line: the results file fills up as a disk would.
    let cmd = b.command(&PLAIN, None)?;
    let full = user.run_command(with_file_size_limit(&cmd, 512)).await?;
    assert_eq!(full.code, 1, "answered but not all written: {full:?}");
    assert!(
        full.stderr.contains("cannot write results file")
            && full.stderr.contains("finished lines not written")
            && full.stderr.contains("結果ファイルに書けなくなった"),
        "{full:?}"
    );
    assert!(
        !full.stderr.contains("nothing was sent"),
        "queries were sent: {full:?}"
    );
    let written = std::fs::read_to_string(out)?;
    let whole = written
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        .count();
    assert!(whole < 5, "the limit stopped the writes: {written}");
    assert_eq!(sql_count(&broker.store.pools(), provided).await?, 5);

    // With room again, the rerun finishes the file without asking again,
    // after the first answers' permits expired: a permit read back is
    // checked as of when it was issued.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rerun = b.run(&PLAIN, None).await?;

    assert_eq!(rerun.code, 0, "{rerun:?}");
    let lines = result_lines(out)?;
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines.iter().all(|l| l["status"] == "provided"), "{lines:?}");
    assert_eq!(
        sql_count(&broker.store.pools(), provided).await?,
        5,
        "the answers were read back, not asked for again"
    );
    Ok(())
}
