//! The `kakehashi` CLI as a user runs it: a subprocess against a real broker
//! (issue: client). Every command; every failure says what went wrong, what
//! to do, and exits non-zero.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kakehashi_tests::cli::{CliUser as User, Run, PLAIN};
use kakehashi_tests::exchange::{exchange_broker, individual_number, scenario};
use kakehashi_tests::{Backend, TestBroker};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn assert_fails(run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, code, "exit code; stderr: {}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks {needle:?}: {}",
            run.stderr
        );
    }
    assert!(
        run.stderr.contains(" — "),
        "the error says what to do: {}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_and_whoami() -> Result<()> {
    let broker = TestBroker::start().await?;
    let user = User::new()?;
    user.add_profile(&broker, "city-saitama").await?;
    user.add_profile(&broker, "union-saitama").await?;

    // The config holds canonical paths only, never key material.
    let config = std::fs::read_to_string(user.home.path().join("config.toml"))?;
    assert!(config.contains("current = \"city-saitama\""), "{config}");
    assert!(!config.contains("PRIVATE KEY"), "{config}");
    let key_path = std::fs::canonicalize(user.path("union-saitama.key"))?;
    assert!(config.contains(&key_path.display().to_string()), "{config}");

    let list = user.run(&["profile", "list"]).await?.ok()?;
    let current_line = list
        .stdout
        .lines()
        .find(|l| l.starts_with('*'))
        .unwrap_or_default();
    assert!(current_line.contains("city-saitama"), "{}", list.stdout);

    let me = user.run(&["whoami", "--json"]).await?.ok()?;
    let me: serde_json::Value = serde_json::from_str(&me.stdout)?;
    assert_eq!(me["org_id"], "city-saitama");
    assert_eq!(me["kind"], "municipality");

    user.run(&["profile", "use", "union-saitama"]).await?.ok()?;
    let me = user.run(&["whoami"]).await?.ok()?;
    assert!(me.stdout.contains("union-saitama"), "{}", me.stdout);

    // --profile and KAKEHASHI_PROFILE override the current profile.
    let me = user
        .run(&["--profile", "city-saitama", "whoami"])
        .await?
        .ok()?;
    assert!(
        me.stdout.contains("org:         city-saitama"),
        "{}",
        me.stdout
    );
    let out = user
        .command(&["whoami"])?
        .env("KAKEHASHI_PROFILE", "city-saitama")
        .output()
        .await?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("org:         city-saitama"));

    // Completions are generated for the shells asked for.
    for shell in ["bash", "zsh", "fish"] {
        let script = user.run(&["completions", shell]).await?.ok()?;
        assert!(script.stdout.contains("kakehashi"), "{shell}");
    }
    let help = user.run(&["--help"]).await?.ok()?;
    assert!(help.stdout.contains("Exit codes:") && help.stdout.contains("Examples:"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_and_connection_errors_are_explained() -> Result<()> {
    let broker = TestBroker::start().await?;
    let user = User::new()?;

    // No profiles at all.
    let run = user.run(&["whoami"]).await?;
    assert_fails(&run, 2, &["no profiles yet", "kakehashi profile add"]);

    user.add_profile(&broker, "city-saitama").await?;

    // An unknown profile names the known ones.
    let run = user.run(&["--profile", "nope", "whoami"]).await?;
    assert_fails(
        &run,
        2,
        &["unknown profile \"nope\"", "city-saitama", "profile list"],
    );
    let run = user.run(&["profile", "use", "nope"]).await?;
    assert_fails(&run, 2, &["unknown profile \"nope\""]);

    // A profile whose key file has gone since it was added.
    let cert = broker.pki.org_cert("city-kawagoe")?;
    kakehashi_certs::write_issued(user.files.path(), "city-kawagoe", &cert, true)?;
    let url = format!("https://127.0.0.1:{}", broker.addr().port());
    let ca = broker.pki.path("ca.crt").display().to_string();
    let key = user.path("city-kawagoe.key");
    user.run(&[
        "profile",
        "add",
        "kawagoe",
        "--broker",
        &url,
        "--ca",
        &ca,
        "--cert",
        &user.path("city-kawagoe.crt"),
        "--key",
        &key,
    ])
    .await?
    .ok()?;
    let canonical_key = std::fs::canonicalize(&key)?.display().to_string();
    std::fs::remove_file(&key)?;
    let run = user.run(&["--profile", "kawagoe", "whoami"]).await?;
    assert_fails(
        &run,
        2,
        &[
            &format!("cannot read key file {canonical_key}: No such file or directory"),
            "kakehashi profile list",
        ],
    );

    // Adding a profile with a missing file is refused at once.
    let run = user
        .run(&[
            "profile",
            "add",
            "x",
            "--broker",
            &url,
            "--ca",
            &ca,
            "--cert",
            &user.path("none.crt"),
            "--key",
            &user.path("none.key"),
        ])
        .await?;
    assert_fails(&run, 2, &["none.crt"]);
    let run = user
        .run(&[
            "profile",
            "add",
            "x",
            "--broker",
            "http://127.0.0.1:1",
            "--ca",
            &ca,
            "--cert",
            &ca,
            "--key",
            &ca,
        ])
        .await?;
    assert_fails(&run, 2, &["https://"]);

    // An unreachable broker (a port nobody listens on).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let closed_port = closed.local_addr()?.port();
    drop(closed);
    let ck = user.path("city-saitama.key");
    let cc = user.path("city-saitama.crt");
    user.run(&[
        "profile",
        "add",
        "down",
        "--broker",
        &format!("https://127.0.0.1:{closed_port}"),
        "--ca",
        &ca,
        "--cert",
        &cc,
        "--key",
        &ck,
    ])
    .await?
    .ok()?;
    let run = user.run(&["--profile", "down", "whoami"]).await?;
    assert_fails(
        &run,
        3,
        &[
            "cannot reach the broker",
            "Connection refused",
            "broker is running",
        ],
    );

    // A certificate the broker refuses: its org is not registered.
    user.add_profile(&broker, "city-nowhere").await?;
    let run = user.run(&["--profile", "city-nowhere", "whoami"]).await?;
    assert_fails(&run, 4, &["unknown_org", "register"]);

    // A certificate from a CA the broker does not trust: refused in TLS.
    let other = kakehashi_tests::TestPki::new()?;
    let foreign = other.org_cert("city-saitama")?;
    kakehashi_certs::write_issued(user.files.path(), "foreign", &foreign, true)?;
    user.run(&[
        "profile",
        "add",
        "foreign",
        "--broker",
        &url,
        "--ca",
        &ca,
        "--cert",
        &user.path("foreign.crt"),
        "--key",
        &user.path("foreign.key"),
    ])
    .await?
    .ok()?;
    let run = user.run(&["--profile", "foreign", "whoami"]).await?;
    assert_fails(&run, 3, &["TLS", "does not trust the CA"]);

    // A CA file that does not match the broker's server certificate.
    user.run(&[
        "profile",
        "add",
        "wrongca",
        "--broker",
        &url,
        "--ca",
        &other.path("ca.crt").display().to_string(),
        "--cert",
        &cc,
        "--key",
        &ck,
    ])
    .await?
    .ok()?;
    let run = user.run(&["--profile", "wrongca", "whoami"]).await?;
    assert_fails(&run, 3, &["server certificate is not trusted"]);

    // Usage errors exit 2 as well.
    let run = user.run(&["query", "--person", "U1234567890"]).await?;
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--flow"), "{}", run.stderr);
    Ok(())
}

/// A user with profiles for the union and city-saitama on an exchange broker.
async fn exchange_user(broker: &TestBroker) -> Result<User> {
    let user = User::new()?;
    user.add_profile(broker, "union-saitama").await?;
    user.add_profile(broker, "city-saitama").await?;
    Ok(user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_and_one_query() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 3).await?;
    let user = exchange_user(&broker).await?;

    let flows = user
        .run(&["--profile", "union-saitama", "flows"])
        .await?
        .ok()?;
    assert!(
        flows.stdout.contains("F-0120") && flows.stdout.contains("premium-calculation"),
        "{}",
        flows.stdout
    );
    assert!(
        flows.stdout.contains("welfare.public_assistance*"),
        "sensitive items are marked: {}",
        flows.stdout
    );
    let json = user
        .run(&["--profile", "union-saitama", "flows", "--json"])
        .await?
        .ok()?;
    let view: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert!(view["flows"].as_array().is_some_and(|f| !f.is_empty()));

    let person = s.union_codes[1].as_str();
    let base = [
        "--profile",
        "union-saitama",
        "query",
        "--flow",
        "F-0120",
        "--procedure",
        "premium-calculation",
        "--provider",
        "city-saitama",
        "--person",
        person,
        "--item",
        "local_tax.income",
        "--item",
        "local_tax.taxable_status",
    ];
    let table = user.run(&base).await?.ok()?;
    assert!(
        table.stdout.contains("provided by city-saitama"),
        "{}",
        table.stdout
    );
    let income_row = table
        .stdout
        .lines()
        .find(|l| l.starts_with("local_tax.income"))
        .unwrap_or_default();
    assert!(income_row.ends_with("2000001"), "{}", table.stdout);
    assert!(table.stdout.contains("課税"), "{}", table.stdout);

    let mut with_json = base.to_vec();
    with_json.push("--json");
    let out = user.run(&with_json).await?.ok()?;
    let answer: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(answer["status"], "provided");
    assert_eq!(answer["items"]["local_tax.income"], 2_000_001);

    // Refused: the flow is out of force; exit 4 with the reason and a hint.
    let run = user
        .run(&[
            "--profile",
            "union-saitama",
            "query",
            "--flow",
            "F-0099",
            "--procedure",
            "legacy-transfer",
            "--provider",
            "city-saitama",
            "--person",
            person,
            "--item",
            "local_tax.income",
        ])
        .await?;
    assert_fails(&run, 4, &["flow_not_in_force", "kakehashi flows"]);

    // Sensitive items stay pending: exit 1, and --wait gives up after its time.
    let pending = user
        .run(&[
            "--profile",
            "union-saitama",
            "query",
            "--flow",
            "F-0121",
            "--procedure",
            "benefit-reduction",
            "--provider",
            "city-saitama",
            "--person",
            person,
            "--item",
            "welfare.public_assistance",
            "--wait",
            "1",
        ])
        .await?;
    assert_eq!(pending.code, 1, "{pending:?}");
    assert!(pending.stdout.contains("pending"), "{pending:?}");
    Ok(())
}

/// Writes a batch CSV of 1,000 rows with four kinds of outcome:
/// 800 provided, 50 pending (sensitive), 100 unknown persons, 50 out-of-force flow.
/// A batch file asking the default flow about each of `codes`.
fn persons_csv(path: &Path, codes: &[String]) -> Result<()> {
    let mut csv = String::from("person\n");
    for code in codes {
        csv.push_str(code);
        csv.push('\n');
    }
    std::fs::write(path, csv)?;
    Ok(())
}

fn mixed_batch(path: &Path, union_codes: &[String]) -> Result<()> {
    let mut csv = String::from("person,flow,procedure,items\n");
    for code in &union_codes[..800] {
        csv.push_str(&format!("{code},,,\n"));
    }
    for code in &union_codes[..50] {
        csv.push_str(&format!(
            "{code},F-0121,benefit-reduction,welfare.public_assistance\n"
        ));
    }
    for i in 0..100 {
        csv.push_str(&format!("nobody-{i:08},,,\n"));
    }
    for code in &union_codes[50..100] {
        csv.push_str(&format!("{code},F-0099,legacy-transfer,local_tax.income\n"));
    }
    std::fs::write(path, csv)?;
    Ok(())
}

fn result_lines(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path)?;
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn count_by<'a>(lines: &'a [serde_json::Value], field: &str) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        *counts
            .entry(line[field].as_str().unwrap_or("-"))
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_a_thousand_with_mixed_outcomes() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 800).await?;
    let user = exchange_user(&broker).await?;
    let input = user.files.path().join("persons.csv");
    let out = user.files.path().join("results.jsonl");
    mixed_batch(&input, &s.union_codes)?;
    let (input_s, out_s) = (input.display().to_string(), out.display().to_string());

    let mut args = vec![
        "--profile",
        "union-saitama",
        "query",
        "--batch",
        &input_s,
        "--out",
        &out_s,
    ];
    args.extend(PLAIN);
    let run = user.run(&args).await?;
    assert_eq!(run.code, 1, "some were refused or pending: {run:?}");
    for needle in [
        "provided  800",
        "pending   50",
        "refused   150",
        "unknown_person 100",
        "flow_not_in_force 50",
    ] {
        assert!(
            run.stderr.contains(needle),
            "summary lacks {needle:?}: {}",
            run.stderr
        );
    }

    let lines = result_lines(&out)?;
    assert_eq!(lines.len(), 1000);
    let by_status = count_by(&lines, "status");
    assert_eq!(by_status.get("provided"), Some(&800));
    assert_eq!(by_status.get("pending"), Some(&50));
    assert_eq!(by_status.get("refused"), Some(&150));
    let provided = lines
        .iter()
        .find(|l| l["person"] == s.union_codes[7].as_str() && l["status"] == "provided")
        .context("person 7 provided")?;
    assert_eq!(provided["values"]["local_tax.income"], 2_000_007);

    // A rerun has nothing left to do and asks the broker nothing.
    let again = user.run(&args).await?;
    assert!(again.stderr.contains("1000 already in"), "{}", again.stderr);
    assert_eq!(result_lines(&out)?.len(), 1000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_batch_resumes_without_repeating() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 1000).await?;
    let user = exchange_user(&broker).await?;
    let input = user.files.path().join("persons.csv");
    let out = user.files.path().join("results.jsonl");
    persons_csv(&input, &s.union_codes)?;
    let (input_s, out_s) = (input.display().to_string(), out.display().to_string());
    let mut args = vec![
        "--profile",
        "union-saitama",
        "query",
        "--batch",
        &input_s,
        "--out",
        &out_s,
        "--concurrency",
        "4",
    ];
    args.extend(PLAIN);

    // Kill the process (SIGKILL, no chance to clean up) once some results are in.
    let mut child = user.command(&args)?.spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = std::fs::read_to_string(&out)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if done >= 100 {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the batch made no progress");
        }
        if let Some(status) = child.try_wait()? {
            bail!("the batch ended before it was interrupted: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await?;
    let before = std::fs::read(&out)?;
    let first_run: Vec<serde_json::Value> = before
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    assert!(
        first_run.len() >= 100 && first_run.len() < 1000,
        "{}",
        first_run.len()
    );
    // Simulate a write torn by the kill: half a line at the end.
    let mut torn = before.clone();
    if torn.last() == Some(&b'\n') {
        torn.extend_from_slice(br#"{"line":999,"person":"#);
    }
    std::fs::write(&out, &torn)?;

    let run = user.run(&args).await?.ok()?;
    assert!(
        run.stderr.contains("incomplete last line"),
        "{}",
        run.stderr
    );
    let lines = result_lines(&out)?;
    assert_eq!(lines.len(), 1000, "one line per person");
    let persons: HashSet<&str> = lines.iter().filter_map(|l| l["person"].as_str()).collect();
    assert_eq!(persons.len(), 1000, "no person twice");
    // The finished lines of the first run are kept as they were, not asked again.
    let query_ids: Vec<&str> = first_run
        .iter()
        .filter_map(|l| l["query_id"].as_str())
        .collect();
    for (old, new) in first_run.iter().zip(&lines) {
        assert_eq!(old, new);
    }
    assert_eq!(query_ids.len(), first_run.len());
    assert!(lines.iter().all(|l| l["status"] == "provided"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persons_register_with_malformed_lines() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let user = exchange_user(&broker).await?;
    let numbers: Vec<String> = (100..106).map(individual_number).collect();
    let mut bad_check = numbers[5].clone();
    let last = bad_check.pop().and_then(|c| c.to_digit(10)).unwrap_or(0);
    bad_check.push(char::from_digit((last + 1) % 10, 10).unwrap_or('0'));
    let csv = format!(
        "name,sex,birth_date,address,individual_number\n\
         山田 花子,female,1948-04-01,埼玉県さいたま市浦和区1-1,{n0}\n\
         山田 太郎,male,1947-05-02,埼玉県さいたま市浦和区1-1,{n1}\n\
         佐藤 一郎,male,1950-13-01,埼玉県川越市1-1,{n2}\n\
         鈴木 次郎,x,1950-01-01,埼玉県川越市1-1,{n3}\n\
         高橋 三郎,male,1950-01-01,{n4}\n\
         田中 四郎,male,1950-01-01,埼玉県川越市1-1,{bad_check}\n\
         伊藤 五郎,unknown,1949-12-31,埼玉県川越市2-2,{n4}\n",
        n0 = numbers[0],
        n1 = numbers[1],
        n2 = numbers[2],
        n3 = numbers[3],
        n4 = numbers[4],
    );
    let input = user.files.path().join("insured.csv");
    std::fs::write(&input, csv)?;
    let input_s = input.display().to_string();
    let run = user
        .run(&[
            "--profile",
            "union-saitama",
            "persons",
            "register",
            &input_s,
            "--batch-size",
            "2",
        ])
        .await?;
    assert_eq!(run.code, 1, "some lines refused: {run:?}");
    assert!(
        run.stdout.contains("applied 3 lines (3 new"),
        "{}",
        run.stdout
    );

    let conf = std::fs::read_to_string(format!("{input_s}.confirmation.csv"))?;
    let rows: Vec<&str> = conf.lines().collect();
    assert_eq!(rows[0], "line,reason,message");
    let lines: Vec<&str> = rows[1..]
        .iter()
        .filter_map(|r| r.split(',').next())
        .collect();
    assert_eq!(lines, ["4", "5", "6", "7"], "{conf}");
    assert!(
        conf.contains("birth_date") && conf.contains("sex") && conf.contains("fields"),
        "{conf}"
    );
    assert!(conf.contains("missing_individual_number"), "{conf}");

    let codes = std::fs::read_to_string(format!("{input_s}.codes.csv"))?;
    let code_lines: Vec<&str> = codes
        .lines()
        .skip(1)
        .filter_map(|r| r.split(',').next())
        .collect();
    assert_eq!(code_lines, ["2", "3", "8"], "{codes}");
    // Branch numbers are written as the contract spells them: 8 digits.
    for row in codes.lines().skip(1) {
        let branch = row.split(',').nth(2).unwrap_or("");
        assert!(
            branch.len() == 8 && branch.bytes().all(|b| b.is_ascii_digit()),
            "{codes}"
        );
    }

    // No Individual Number appears anywhere the user can see.
    for number in numbers.iter().chain([&bad_check]) {
        for (what, text) in [
            ("stdout", &run.stdout),
            ("stderr", &run.stderr),
            ("confirmation list", &conf),
            ("codes", &codes),
        ] {
            assert!(
                !text.contains(number.as_str()),
                "{what} shows an Individual Number"
            );
        }
    }

    // Registering the same file again updates, creates nothing new.
    let again = user
        .run(&[
            "--profile",
            "union-saitama",
            "persons",
            "register",
            &input_s,
        ])
        .await?;
    assert!(
        again
            .stdout
            .contains("applied 3 lines (0 new, 3 already registered)"),
        "{again:?}"
    );

    // A city links the same file with --out: its outputs are named after
    // --out, and the union's confirmation list stays as it was.
    let city_out = user.files.path().join("city-codes.csv");
    let city = user
        .run(&[
            "--profile",
            "city-saitama",
            "persons",
            "register",
            &input_s,
            "--out",
            &city_out.display().to_string(),
        ])
        .await?;
    assert!(city_out.exists(), "{city:?}");
    assert!(
        user.files
            .path()
            .join("city-codes.csv.confirmation.csv")
            .exists(),
        "{city:?}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{input_s}.confirmation.csv"))?,
        conf,
        "the union's confirmation list was overwritten"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_deposit_applies_good_lines_only() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 4).await?;
    let user = exchange_user(&broker).await?;
    let c = &s.city_codes;
    let jsonl = format!(
        "{{\"person\":\"{c0}\",\"items\":{{\"local_tax.income\":3100000}}}}\n\
         not json at all\n\
         \n\
         {{\"person\":\"{c1}\",\"items\":{{\"local_tax.income\":3200000,\"secret.item\":1}}}}\n\
         {{\"person\":\"nobody-000000\",\"items\":{{\"local_tax.income\":5}}}}\n\
         {{\"person\":\"{c2}\",\"items\":{{\"local_tax.income\":3300000}}}}\n",
        c0 = c[0],
        c1 = c[1],
        c2 = c[2],
    );
    let input = user.files.path().join("copies.jsonl");
    std::fs::write(&input, jsonl)?;
    let input_s = input.display().to_string();
    let conf_s = user.path("conf.csv");
    let run = user
        .run(&[
            "--profile",
            "city-saitama",
            "copies",
            "deposit",
            &input_s,
            "--confirmation-list",
            &conf_s,
            "--batch-size",
            "2",
        ])
        .await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("applied 2 persons"), "{}", run.stdout);
    let conf = std::fs::read_to_string(&conf_s)?;
    let lines: Vec<&str> = conf
        .lines()
        .skip(1)
        .filter_map(|r| r.split(',').next())
        .collect();
    assert_eq!(lines, ["2", "4", "5"], "{conf}");
    assert!(
        conf.contains("item_not_allowed") && conf.contains("unknown_person"),
        "{conf}"
    );
    assert!(
        !conf.contains("3200000") && !run.stdout.contains("3100000"),
        "values are not echoed"
    );

    // Good lines applied; the refused line changed nothing, not even its allowed item.
    let ask = |person: &str| {
        vec![
            "--profile".to_string(),
            "union-saitama".into(),
            "query".into(),
            "--json".into(),
            "--flow".into(),
            "F-0120".into(),
            "--procedure".into(),
            "premium-calculation".into(),
            "--provider".into(),
            "city-saitama".into(),
            "--person".into(),
            person.into(),
            "--item".into(),
            "local_tax.income".into(),
        ]
    };
    let value = |run: Run| -> Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&run.ok()?.stdout)?;
        Ok(v["items"]["local_tax.income"].clone())
    };
    let args0 = ask(&s.union_codes[0]);
    let args1 = ask(&s.union_codes[1]);
    let args2 = ask(&s.union_codes[2]);
    assert_eq!(value(user.run(&strs(&args0)).await?)?, 3_100_000);
    assert_eq!(
        value(user.run(&strs(&args1)).await?)?,
        2_000_001,
        "half of a refused line was applied"
    );
    assert_eq!(value(user.run(&strs(&args2)).await?)?, 3_300_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_honours_rate_limits() -> Result<()> {
    let broker = kakehashi_tests::exchange::exchange_broker_with(Backend::Sqlite, |opts| {
        opts.limits.per_org_per_second = 100;
        opts.limits.per_org_burst = 20;
    })
    .await?
    .context("sqlite broker")?;
    let s = scenario(&broker, 200).await?;
    let user = exchange_user(&broker).await?;
    let input = user.files.path().join("persons.csv");
    persons_csv(&input, &s.union_codes)?;
    let (input_s, out_s) = (input.display().to_string(), user.path("results.jsonl"));
    let mut args = vec![
        "--profile",
        "union-saitama",
        "query",
        "--batch",
        &input_s,
        "--out",
        &out_s,
        "--concurrency",
        "32",
    ];
    args.extend(PLAIN);
    let run = user.run(&args).await?;
    assert_eq!(
        run.code, 0,
        "every query ends provided after waiting out 429s: {run:?}"
    );
    assert!(
        broker.refusals("rate_limited_org") > 0,
        "the broker did throttle the batch"
    );
    assert_eq!(result_lines(Path::new(&out_s))?.len(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn person_records_and_audit_verify() -> Result<()> {
    use kakehashi_broker::records::{ExportFilter, ExportRequest};
    use kakehashi_interfaces::audit::ExportFormat;

    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 2).await?;
    let user = exchange_user(&broker).await?;
    let person = s.union_codes[0].as_str();
    let query = |flow: &'static str, procedure: &'static str| {
        vec![
            "--profile",
            "union-saitama",
            "query",
            "--flow",
            flow,
            "--procedure",
            procedure,
            "--provider",
            "city-saitama",
            "--person",
            person,
            "--item",
            "local_tax.income",
        ]
    };
    user.run(&query("F-0120", "premium-calculation"))
        .await?
        .ok()?;
    let refused = user.run(&query("F-0099", "legacy-transfer")).await?;
    assert_eq!(refused.code, 4);

    // R18: the union sees both, as a table and as JSON; person codes never appear.
    let table = user
        .run(&["--profile", "union-saitama", "person-records", person])
        .await?
        .ok()?;
    let rows: Vec<&str> = table.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{}", table.stdout);
    assert!(
        rows[0].contains("city-saitama") && rows[0].contains("provided"),
        "{}",
        table.stdout
    );
    assert!(
        rows[1].contains("denied (flow_not_in_force)"),
        "{}",
        table.stdout
    );
    assert!(!table.stdout.contains(&s.city_codes[0]));
    let json = user
        .run(&[
            "--profile",
            "union-saitama",
            "person-records",
            person,
            "--json",
        ])
        .await?
        .ok()?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&json.stdout)?;
    assert_eq!(entries.len(), 2);
    // Only the union may ask.
    let run = user
        .run(&[
            "--profile",
            "city-saitama",
            "person-records",
            &s.city_codes[0],
        ])
        .await?;
    assert_fails(&run, 4, &["forbidden"]);
    let run = user
        .run(&["--profile", "union-saitama", "person-records", "bad code"])
        .await?;
    assert_eq!(run.code, 2, "{run:?}");

    // R16: an auditor export verifies offline; a changed one does not.
    let records = &broker.broker.state().records;
    records.seal().await?;
    let csv = user.files.path().join("records.csv");
    records
        .export(&ExportRequest {
            filter: ExportFilter::default(),
            format: ExportFormat::Csv,
            out: csv.clone(),
            actor: "auditor-test".into(),
        })
        .await?;
    let csv_s = csv.display().to_string();
    let key_id = records.sealer_key_id().to_string();
    let public_key = records.sealer_public_key_hex();
    let trusted = format!("verified against trusted key {key_id}");
    // Nothing pinned, nothing given: consistent, but anyone could have signed it.
    let run = user.run(&["audit", "verify", &csv_s]).await?;
    assert_fails(&run, 6, &["self-consistent, key not trusted", &key_id]);
    assert!(run.stdout.contains("consistent: "), "{}", run.stdout);
    assert!(!run.stdout.contains("verified against"), "{}", run.stdout);
    // A key (or its id) given on the command line is trusted; another is not.
    let ok = user
        .run(&["audit", "verify", &csv_s, "--trusted-key", &public_key])
        .await?
        .ok()?;
    assert!(ok.stdout.contains(&trusted), "{}", ok.stdout);
    user.run(&["audit", "verify", &csv_s, "--trusted-key-id", &key_id])
        .await?
        .ok()?;
    let run = user
        .run(&[
            "audit",
            "verify",
            &csv_s,
            "--trusted-key-id",
            "0000000000000000",
        ])
        .await?;
    assert_fails(&run, 6, &["self-consistent, key not trusted"]);

    // The broker publishes its checkpoint keys to registered orgs; the
    // profile pins them only when asked.
    let union = ["--profile", "union-saitama"];
    let listed = user
        .run(&[&union[..], &["audit", "keys"]].concat())
        .await?
        .ok()?;
    assert!(
        listed.stdout.contains(&key_id) && listed.stdout.contains(&public_key),
        "{}",
        listed.stdout
    );
    assert!(listed.stdout.contains("current"), "{}", listed.stdout);
    let run = user
        .run(&[&union[..], &["audit", "verify", &csv_s]].concat())
        .await?;
    assert_eq!(run.code, 6, "not pinned yet: {run:?}");
    user.run(&[&union[..], &["audit", "keys", "--pin"]].concat())
        .await?
        .ok()?;
    let ok = user
        .run(&[&union[..], &["audit", "verify", &csv_s]].concat())
        .await?
        .ok()?;
    assert!(ok.stdout.contains(&trusted), "{}", ok.stdout);

    // An export whose records were edited, re-chained and re-signed with
    // another key is self-consistent — and not trusted, by either verifier.
    let jsonl = user.files.path().join("records.jsonl");
    records
        .export(&ExportRequest {
            filter: ExportFilter::default(),
            format: ExportFormat::Jsonl,
            out: jsonl.clone(),
            actor: "auditor-test".into(),
        })
        .await?;
    let forged = user.files.path().join("forged.jsonl");
    kakehashi_tests::audit::forge_jsonl_export(
        &jsonl,
        &forged,
        &ed25519_dalek::SigningKey::from_bytes(&[42; 32]),
        |row| {
            if row.outcome == "provided" {
                row.provider = Some("city-kawagoe".into());
            }
        },
    )?;
    let (jsonl_s, forged_s) = (jsonl.display().to_string(), forged.display().to_string());
    assert!(std::fs::read_to_string(&forged)?.contains("city-kawagoe"));
    let run = user
        .run(&[&union[..], &["audit", "verify", &forged_s]].concat())
        .await?;
    assert_fails(&run, 6, &["self-consistent, key not trusted"]);
    let ok = user
        .run(&[&union[..], &["audit", "verify", &jsonl_s]].concat())
        .await?
        .ok()?;
    assert!(ok.stdout.contains(&trusted), "{}", ok.stdout);
    // The export carries the log's latest checkpoint; a verified export's
    // is kept in the profile, for `audit witness`.
    let bundle = std::fs::read_to_string(kakehashi_interfaces::audit::bundle_path_for(&jsonl))?;
    let latest: serde_json::Value = bundle
        .lines()
        .map(serde_json::from_str::<serde_json::Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|l| l["type"] == "latest")
        .context("the bundle has no latest line")?;
    let kept = std::fs::read_to_string(user.home.path().join("checkpoints/union-saitama.json"))?;
    assert!(
        kept.contains(latest["head_hash"].as_str().unwrap_or("none")),
        "{kept}"
    );
    let broker_cli = |args: &[&str]| -> Result<Run> {
        let out = std::process::Command::new(kakehashi_tests::binaries::workspace_binary(
            "kakehashi-broker",
            "kakehashi-broker",
        )?)
        .args(args)
        .env("KAKEHASHI_LOG", "error")
        .output()?;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    };
    let run = broker_cli(&[
        "records",
        "verify-export",
        &forged_s,
        "--trusted-key",
        &public_key,
    ])?;
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stdout.contains("self-consistent, key not trusted"),
        "{run:?}"
    );
    let run = broker_cli(&["records", "verify-export", &jsonl_s])?;
    assert_eq!(run.code, 6, "no trusted key given: {run:?}");
    let run = broker_cli(&[
        "records",
        "verify-export",
        &jsonl_s,
        "--trusted-key",
        &public_key,
    ])?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&trusted), "{run:?}");

    let original = std::fs::read_to_string(&csv)?;
    let tampered = user.files.path().join("tampered.csv");
    std::fs::write(
        &tampered,
        original.replacen("city-saitama", "city-kawagoe", 1),
    )?;
    std::fs::copy(
        kakehashi_interfaces::audit::bundle_path_for(&csv),
        kakehashi_interfaces::audit::bundle_path_for(&tampered),
    )?;
    let run = user
        .run(&["audit", "verify", &tampered.display().to_string()])
        .await?;
    assert_fails(&run, 1, &["verification FAILED"]);
    let run = broker_cli(&[
        "records",
        "verify-export",
        &tampered.display().to_string(),
        "--trusted-key",
        &public_key,
    ])?;
    assert_eq!(run.code, 1, "altered, not re-chained: {run:?}");
    assert!(run.stderr.contains("does NOT verify"), "{run:?}");
    let run = user
        .run(&["audit", "verify", &user.path("none.csv")])
        .await?;
    assert_fails(&run, 2, &["none.csv"]);

    // Without its seal (the last bundle line) the export's records still
    // verify, but both verifiers say withheld records would not show.
    let unsealed = user.files.path().join("unsealed.jsonl");
    std::fs::copy(&jsonl, &unsealed)?;
    let bundle = std::fs::read_to_string(kakehashi_interfaces::audit::bundle_path_for(&jsonl))?;
    let last = bundle.lines().last().context("an empty bundle")?;
    assert!(last.starts_with(r#"{"type":"seal""#), "{last}");
    std::fs::write(
        kakehashi_interfaces::audit::bundle_path_for(&unsealed),
        &bundle[..bundle.len() - last.len() - 1],
    )?;
    let unsealed_s = unsealed.display().to_string();
    let run = user
        .run(&[&union[..], &["audit", "verify", &unsealed_s]].concat())
        .await?;
    assert_fails(
        &run,
        6,
        &["not sealed", "withheld", "export the period again"],
    );
    assert!(run.stdout.contains("sealed by key: none"), "{run:?}");
    let run = broker_cli(&[
        "records",
        "verify-export",
        &unsealed_s,
        "--trusted-key",
        &public_key,
    ])?;
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stdout.contains("NOT sealed"), "{run:?}");
    assert!(
        !run.stdout.contains("export verified against trusted key"),
        "{run:?}"
    );
    assert!(run.stderr.contains("no seal line"), "{run:?}");
    Ok(())
}

/// The library on its own against a server that speaks only HTTP/1.1 and
/// first answers 503 with `Retry-After`: it waits, retries, and reuses one
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_retries_after_503_and_reuses_an_http1_connection() -> Result<()> {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Full;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let pki = kakehashi_tests::TestPki::new()?;
    let server_chain = vec![CertificateDer::from_pem_file(pki.path("server.crt"))?];
    let server_key = PrivateKeyDer::from_pem_file(pki.path("server.key"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(server_chain, server_key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (connections, requests) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (conns, reqs) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let (acceptor, reqs) = (acceptor.clone(), reqs.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let n = reqs.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            http::Response::builder()
                                .status(503)
                                .header("retry-after", "1")
                                .body(Full::new(Bytes::from_static(
                                    br#"{"code":"unavailable","message":"starting","request_id":"r1"}"#,
                                )))
                        } else {
                            http::Response::builder().body(Full::new(Bytes::from_static(
                                br#"{"org_id":"city-saitama","kind":"municipality","name":"x","certificate_fingerprint":"00"}"#,
                            )))
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let cert = pki.org_cert("city-saitama")?;
    let files = tempfile::tempdir()?;
    kakehashi_certs::write_issued(files.path(), "org", &cert, false)?;
    let profile = kakehashi_client::Profile::new(
        format!("https://localhost:{port}"),
        pki.path("ca.crt"),
        files.path().join("org.crt"),
        files.path().join("org.key"),
    );
    let client = kakehashi_client::Client::connect(&profile).await?;
    let started = std::time::Instant::now();
    let me = client.whoami().await?;
    assert_eq!(me.org_id.as_str(), "city-saitama");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After was not honoured"
    );
    client.whoami().await?;
    client.whoami().await?;
    assert_eq!(requests.load(Ordering::SeqCst), 4);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one connection reused"
    );

    // With retries off, the 503 comes back typed, with its Retry-After.
    requests.store(0, Ordering::SeqCst);
    let options = kakehashi_client::ClientOptions {
        max_attempts: 1,
        ..Default::default()
    };
    let once = kakehashi_client::Client::connect_with(&profile, options).await?;
    match once.whoami().await {
        Err(kakehashi_client::ClientError::Refused {
            code,
            retry_after,
            request_id,
            ..
        }) => {
            assert_eq!(code, kakehashi_client::ErrorCode::Unavailable);
            assert_eq!(retry_after, Some(Duration::from_secs(1)));
            assert_eq!(request_id, "r1");
        }
        other => bail!("expected a typed 503, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_stops_when_the_broker_goes_away() -> Result<()> {
    let Some(broker) = exchange_broker(Backend::Sqlite).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 600).await?;
    let user = exchange_user(&broker).await?;
    let input = user.files.path().join("persons.csv");
    persons_csv(&input, &s.union_codes)?;
    let (input_s, out) = (
        input.display().to_string(),
        user.files.path().join("r.jsonl"),
    );
    let out_s = out.display().to_string();
    let mut args = vec![
        "--profile",
        "union-saitama",
        "query",
        "--batch",
        &input_s,
        "--out",
        &out_s,
        "--concurrency",
        "2",
    ];
    args.extend(PLAIN);
    let child = user.command(&args)?.spawn()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(&out)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < 50
    {
        if tokio::time::Instant::now() > deadline {
            bail!("the batch made no progress");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let TestBroker {
        broker: running, ..
    } = broker;
    running.shutdown().await;
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("stopped after repeated failures"),
        "{stderr}"
    );
    assert!(stderr.contains("rerun the same command"), "{stderr}");
    let lines = result_lines(&out)?;
    assert!(lines.len() >= 50 && lines.len() < 600, "{}", lines.len());
    assert!(
        lines.iter().all(|l| l["status"] == "provided"),
        "failures are not written"
    );
    Ok(())
}
