//! The terminal keeps its reply keys (issue 23, item 4): a pending answer's
//! reply key is kept, encrypted, in the profile's directory, and
//! `kakehashi query collect` / `query get` in a new process find it again.
//! Real broker, real `kakehashi` subprocesses.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kakehashi_client::interfaces::{QueryId, QueryResponse};
use kakehashi_client::PendingStore;
use kakehashi_tests::cli::{mode, SENSITIVE};
use kakehashi_tests::exchange::{exchange_broker_with, scenario};
use kakehashi_tests::{both_backends, Backend, TestBroker};
use tempfile::TempDir;

/// Seconds a pending query waits for approval before the broker deletes it.
const PENDING_TTL_SECS: u64 = 10;

fn cli_binary() -> Result<PathBuf> {
    kakehashi_tests::binaries::workspace_binary("kakehashi-client", "kakehashi")
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A user's environment: a config home and a directory for files.
struct User {
    home: TempDir,
    files: TempDir,
}

impl User {
    async fn new(broker: &TestBroker) -> Result<User> {
        let user = User {
            home: tempfile::tempdir()?,
            files: tempfile::tempdir()?,
        };
        let org = "union-saitama";
        let cert = broker.pki.org_cert(org)?;
        kakehashi_certs::write_issued(user.files.path(), org, &cert, true)?;
        let url = format!("https://127.0.0.1:{}", broker.addr().port());
        let ca = broker.pki.path("ca.crt").display().to_string();
        let crt = user.path(&format!("{org}.crt"));
        let key = user.path(&format!("{org}.key"));
        let run = user
            .run(&[
                "profile", "add", org, "--broker", &url, "--ca", &ca, "--cert", &crt, "--key", &key,
            ])
            .await?;
        if run.code != 0 {
            bail!("profile add: {run:?}");
        }
        Ok(user)
    }

    async fn run(&self, args: &[&str]) -> Result<Run> {
        let mut cmd = tokio::process::Command::new(cli_binary()?);
        cmd.args(args)
            .env("KAKEHASHI_HOME", self.home.path())
            .env_remove("KAKEHASHI_PROFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .context("the CLI did not finish in 300 s")??;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    fn path(&self, name: &str) -> String {
        self.files.path().join(name).display().to_string()
    }

    fn store_dir(&self) -> PathBuf {
        PendingStore::dir_for(self.home.path(), "union-saitama")
    }

    fn store(&self) -> Result<PendingStore> {
        PendingStore::open_existing(self.home.path(), "union-saitama")?
            .context("the profile's reply-key store exists")
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The asked-about files in the store directory, besides the store key.
fn kept_files(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.retain(|n| n != "store.key");
    names.sort();
    Ok(names)
}

fn result_lines(path: &str) -> Result<Vec<serde_json::Value>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

async fn pending_keys_survive_the_process_and_go_when_expired(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker_with(backend, |o| {
        o.exchange.pending_ttl_secs = PENDING_TTL_SECS;
        o.exchange.sweep_interval_secs = 1;
    })
    .await?
    else {
        return Ok(());
    };
    let s = scenario(&broker, 3).await?;
    let user = User::new(&broker).await?;
    let person = s.union_codes[0].as_str();

    // 1. A sensitive query answers pending; its reply key is kept.
    let mut args = vec!["--profile", "union-saitama", "query", "--person", person];
    args.extend(SENSITIVE);
    args.push("--json");
    let asked = user.run(&args).await?;
    assert_eq!(asked.code, 1, "pending exits 1: {asked:?}");
    let answer: serde_json::Value = serde_json::from_str(&asked.stdout)?;
    assert_eq!(answer["status"], "pending", "{asked:?}");
    let query_id = QueryId::new(answer["query_id"].as_str().context("query id")?)?;

    let dir = user.store_dir();
    let entry_path = dir.join(format!("{query_id}.pending"));
    assert_eq!(mode(&dir)?, 0o700, "store directory");
    assert_eq!(mode(&dir.join("store.key"))?, 0o600, "store key");
    assert_eq!(mode(&entry_path)?, 0o600, "kept key file");

    // The kept key is the query's key (the permit binds its public half) ...
    let kept = user.store()?.open_entry(&query_id)?.context("kept key")?;
    let mut union = broker.client("union-saitama").await?;
    let polled: QueryResponse =
        serde_json::from_slice(&union.get(&format!("/v1/queries/{query_id}")).await?.body)?;
    assert_eq!(
        polled.permit.claims.reply_key_sha256,
        kept.keys().public().sha256_hex(),
        "the kept key is the one the answer will be sealed to"
    );
    // ... and the file holds it only encrypted, with no personal data.
    let bytes = std::fs::read(&entry_path)?;
    let secret = kept.keys().secret_bytes();
    assert!(!contains(&bytes, secret.as_ref()), "raw private key");
    assert!(
        !contains(&bytes, hex(secret.as_ref()).as_bytes()),
        "hex private key"
    );
    assert!(!contains(&bytes, person.as_bytes()), "person code");
    for number in &s.numbers {
        assert!(!contains(&bytes, number.as_bytes()), "Individual Number");
    }
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains(query_id.as_str()) && text.contains("welfare.public_assistance"),
        "{text}"
    );

    // 2. A batch keeps the key of each pending line; its provided line is final.
    let input = user.path("persons.csv");
    std::fs::write(
        &input,
        format!(
            "person,flow,procedure,items\n{},F-0120,premium-calculation,local_tax.income\n{},,,\n{},,,\n",
            s.union_codes[0], s.union_codes[1], s.union_codes[2]
        ),
    )?;
    let out = user.path("results.jsonl");
    let mut args = vec![
        "--profile",
        "union-saitama",
        "query",
        "--batch",
        &input,
        "--out",
        &out,
    ];
    args.extend(SENSITIVE);
    let batch = user.run(&args).await?;
    assert_eq!(batch.code, 1, "{batch:?}");
    let lines = result_lines(&out)?;
    assert_eq!(lines.len(), 3);
    let pending_ids: Vec<String> = lines
        .iter()
        .filter(|l| l["status"] == "pending")
        .map(|l| l["query_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(pending_ids.len(), 2, "{lines:?}");
    let provided_line = std::fs::read_to_string(&out)?
        .lines()
        .find(|l| l.contains("\"provided\""))
        .context("provided line")?
        .to_string();
    // A second batch file, completed by a plain `collect`.
    let input_b = user.path("persons-b.csv");
    std::fs::write(&input_b, format!("person\n{}\n", s.union_codes[2]))?;
    let out_b = user.path("results-b.jsonl");
    let mut args = vec![
        "--profile",
        "union-saitama",
        "query",
        "--batch",
        &input_b,
        "--out",
        &out_b,
    ];
    args.extend(SENSITIVE);
    assert_eq!(user.run(&args).await?.code, 1);
    assert_eq!(kept_files(&dir)?.len(), 4, "one kept key per pending query");
    let pending_b: Vec<String> = result_lines(&out_b)?
        .iter()
        .filter(|l| l["status"] == "pending")
        .map(|l| l["query_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(pending_b.len(), 1);

    // 3. New processes find the keys; nothing is decided yet.
    let collect = user
        .run(&["--profile", "union-saitama", "query", "collect"])
        .await?;
    assert_eq!(collect.code, 1, "still pending exits 1: {collect:?}");
    assert!(
        collect.stdout.contains("still pending approval: 4")
            && collect.stdout.contains("承認待ち: 4 件"),
        "{collect:?}"
    );
    let got = user
        .run(&[
            "--profile",
            "union-saitama",
            "query",
            "get",
            query_id.as_str(),
            "--wait",
            "1",
        ])
        .await?;
    assert_eq!(got.code, 1, "{got:?}");
    assert!(got.stdout.contains("pending approval"), "{got:?}");
    let before = std::fs::read(&out)?;
    let completed = user
        .run(&[
            "--profile",
            "union-saitama",
            "query",
            "collect",
            "--batch",
            &out,
        ])
        .await?;
    assert_eq!(completed.code, 1, "{completed:?}");
    assert!(
        completed.stderr.contains("still pending 2"),
        "{completed:?}"
    );
    assert_eq!(
        std::fs::read(&out)?,
        before,
        "nothing decided, nothing rewritten"
    );
    assert_eq!(kept_files(&dir)?.len(), 4);

    // An unknown query id: no key kept, a clear usage error.
    let unknown = user
        .run(&["--profile", "union-saitama", "query", "get", "q_unknown"])
        .await?;
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(
        unknown
            .stderr
            .contains("no reply key is kept for query q_unknown")
            && unknown.stderr.contains(" — "),
        "{unknown:?}"
    );

    // 4. A store others could read is refused, before anything is sent.
    set_mode(&entry_path, 0o644)?;
    let refused = user
        .run(&[
            "--profile",
            "union-saitama",
            "query",
            "get",
            query_id.as_str(),
        ])
        .await?;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("0644") && refused.stderr.contains("chmod 600"),
        "{refused:?}"
    );
    set_mode(&entry_path, 0o600)?;
    set_mode(&dir, 0o755)?;
    let mut args = vec!["--profile", "union-saitama", "query", "--person", person];
    args.extend(SENSITIVE);
    let refused = user.run(&args).await?;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("wider than 0700") && refused.stderr.contains("chmod 700"),
        "{refused:?}"
    );
    set_mode(&dir, 0o700)?;
    assert_eq!(kept_files(&dir)?.len(), 4, "the refused query kept nothing");

    // 5. The broker deletes the unapproved queries after pending_ttl.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(PENDING_TTL_SECS + 60);
    loop {
        let r = union.get(&format!("/v1/queries/{query_id}")).await?;
        if r.status != http::StatusCode::OK {
            assert!(
                matches!(r.status.as_u16(), 404 | 410),
                "gone as not_found or expired: {r:?}"
            );
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the broker did not delete the pending query");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Every pending query, the second batch's too: a collect before the
    // broker expired one of them would find it still pending.
    for id in pending_ids.iter().chain(&pending_b) {
        while union.get(&format!("/v1/queries/{id}")).await?.status == http::StatusCode::OK {
            if tokio::time::Instant::now() > deadline {
                bail!("the broker did not delete the batch's pending queries");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // The batch's pending lines become expired; the other line is untouched.
    let completed = user
        .run(&[
            "--profile",
            "union-saitama",
            "query",
            "collect",
            "--batch",
            &out,
        ])
        .await?;
    assert_eq!(completed.code, 1, "expired is not provided: {completed:?}");
    assert!(
        completed.stderr.contains("completed 2 of 2 pending lines")
            && completed.stderr.contains("expired 2"),
        "{completed:?}"
    );
    let text = std::fs::read_to_string(&out)?;
    assert!(text.lines().any(|l| l == provided_line), "{text}");
    let lines = result_lines(&out)?;
    assert_eq!(lines.len(), 3);
    for id in &pending_ids {
        let line = lines
            .iter()
            .find(|l| l["query_id"] == id.as_str())
            .context("line of a pending query")?;
        assert_eq!(line["status"], "expired", "{line}");
    }
    assert_eq!(kept_files(&dir)?.len(), 2, "the batch's keys are wiped");

    // A plain collect says expired, completes the other batch file, wipes the keys.
    let collect = user
        .run(&["--profile", "union-saitama", "query", "collect"])
        .await?;
    assert_eq!(collect.code, 1, "{collect:?}");
    assert!(
        collect
            .stdout
            .contains(&format!("query {query_id}: expired"))
            && collect
                .stdout
                .contains(&format!("照会 {query_id}: 期限切れです")),
        "{collect:?}"
    );
    assert!(!entry_path.exists(), "the kept key is wiped");
    assert_eq!(kept_files(&dir)?, Vec::<String>::new());
    assert_eq!(result_lines(&out_b)?[0]["status"], "expired");

    let again = user
        .run(&["--profile", "union-saitama", "query", "collect"])
        .await?;
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        again
            .stdout
            .contains("no pending queries for profile union-saitama"),
        "{again:?}"
    );
    let gone = user
        .run(&[
            "--profile",
            "union-saitama",
            "query",
            "get",
            query_id.as_str(),
        ])
        .await?;
    assert_eq!(gone.code, 2, "{gone:?}");
    Ok(())
}

both_backends!(
    pending_keys_survive_the_process_and_go_when_expired:
        pending_keys_survive_the_process_and_go_when_expired_sqlite,
        pending_keys_survive_the_process_and_go_when_expired_postgres
);

/// The whole path of a sensitive answer through real processes: a
/// municipality-side terminal (here the union's) asks, the provider's
/// operator logs in with password and TOTP and approves one query and
/// rejects another through the console API, and `kakehashi query collect`
/// in a new client process opens exactly the approved values and shows the
/// rejection's reason.
async fn an_approved_answer_opens_in_a_new_client_process(backend: Backend) -> Result<()> {
    use http::Method;
    use kakehashi_broker::people::Role;
    use kakehashi_tests::console::{add_person, expect_ok, ConsoleClient};
    let Some(broker) = exchange_broker_with(backend, |o| {
        o.console.listen = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await?
    else {
        return Ok(());
    };
    let s = scenario(&broker, 2).await?;
    let user = User::new(&broker).await?;
    let mut ids = Vec::new();
    for person in &s.union_codes {
        let mut args = vec!["--profile", "union-saitama", "query", "--person", person];
        args.extend(SENSITIVE);
        args.push("--json");
        let asked = user.run(&args).await?;
        assert_eq!(asked.code, 1, "pending exits 1: {asked:?}");
        let answer: serde_json::Value = serde_json::from_str(&asked.stdout)?;
        ids.push(answer["query_id"].as_str().context("query id")?.to_string());
    }

    let mut operator = add_person(&broker, "e2e.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut operator, 0).await?;
    let approve = console
        .call(
            Method::POST,
            &format!("/api/approvals/{}/approve", ids[0]),
            None,
        )
        .await?;
    expect_ok(&approve)?;
    let reason = "申請書の提出を確認できないため";
    let reject = console
        .call(
            Method::POST,
            &format!("/api/approvals/{}/reject", ids[1]),
            Some(serde_json::json!({ "reason": reason })),
        )
        .await?;
    expect_ok(&reject)?;

    let collected = user
        .run(&["--profile", "union-saitama", "query", "collect", "--json"])
        .await?;
    // One rejected: not every decided query was provided.
    assert_eq!(collected.code, 1, "{collected:?}");
    let opened: serde_json::Value = serde_json::from_str(&collected.stdout)?;
    let approved = opened
        .as_array()
        .and_then(|all| all.iter().find(|a| a["query_id"] == ids[0].as_str()))
        .context("the approved answer")?;
    assert_eq!(approved["status"], "provided", "{collected:?}");
    // Exactly what the city deposited for the person (false), nothing more.
    assert_eq!(
        approved["items"],
        serde_json::json!({"welfare.public_assistance": false}),
        "{collected:?}"
    );
    let text = format!("{}{}", collected.stdout, collected.stderr);
    assert!(
        text.contains(reason),
        "the rejection's reason: {collected:?}"
    );
    // Both keys are wiped: nothing is left to collect.
    assert!(kept_files(&user.store_dir())?.is_empty());
    Ok(())
}

both_backends!(
    an_approved_answer_opens_in_a_new_client_process:
        an_approved_answer_opens_in_a_new_client_process_sqlite,
        an_approved_answer_opens_in_a_new_client_process_postgres
);
