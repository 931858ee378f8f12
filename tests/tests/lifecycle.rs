//! The broker binary as users run it: `dev` on a fresh directory, then SIGTERM
//! with a request in flight — the request completes and the process exits 0.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kakehashi_certs::IssuedCert;
use kakehashi_interfaces::{QueryResponse, QueryStatus};
use kakehashi_tests::exchange::{query_body, scenario_with};
use kakehashi_tests::{Protocol, TestClient};

/// The broker binary of this build (built on first use).
fn broker_binary() -> Result<PathBuf> {
    kakehashi_tests::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")
}

struct Broker {
    child: Child,
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_dev() -> Result<Broker> {
    let dir = tempfile::tempdir()?;
    let port = kakehashi_tests::free_port()?;
    let child = Command::new(broker_binary()?)
        .args(["dev", "--dir"])
        .arg(dir.path().join("dev"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--console-listen",
            &format!("127.0.0.1:{}", kakehashi_tests::free_port()?),
        ])
        .env("KAKEHASHI_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let addr = format!("127.0.0.1:{port}").parse()?;
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("dev broker did not start listening");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Broker { child, dir, addr })
}

fn org_cert(broker: &Broker, org: &str) -> Result<IssuedCert> {
    kakehashi_tests::load_org_cert(&broker.dir.path().join("dev/pki"), org)
}

async fn client(broker: &Broker, org: &str) -> Result<TestClient> {
    let ca = std::fs::read_to_string(broker.dir.path().join("dev/pki/ca.crt"))?;
    TestClient::connect(
        broker.addr,
        &ca,
        Some(&org_cert(broker, org)?),
        Protocol::Http1,
    )
    .await
}

#[tokio::test]
async fn dev_environment_serves_and_sigterm_finishes_in_flight_requests() -> Result<()> {
    let mut broker = start_dev().await?;
    let dev = broker.dir.path().join("dev");
    for file in [
        "broker.toml",
        "flows.toml",
        "pki/ca.crt",
        "pki/ca.crl",
        "pki/server.crt",
        "pki/union-saitama.key",
        "kakehashi.db",
    ] {
        assert!(dev.join(file).exists(), "dev did not create {file}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dev.join("pki/city-saitama.key"))?
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Ready client profiles for every sample org, in the client's own format.
    let profiles = kakehashi_client::config::ClientConfig::load(&dev.join("profiles/config.toml"))?;
    assert_eq!(profiles.profiles.len(), 4);
    let (_, union) = profiles.profile(Some("union-saitama"))?;
    assert!(union.key.is_absolute() && union.key.exists());
    assert_eq!(union.broker, format!("https://{}", broker.addr));

    let mut whoami = client(&broker, "agency-pension").await?;
    assert_eq!(
        whoami.get("/v1/whoami").await?.json()?["org_id"],
        "agency-pension"
    );

    let mut s = scenario_with(
        client(&broker, "union-saitama").await?,
        client(&broker, "city-saitama").await?,
        1,
    )
    .await?;
    let (body, _) = query_body(
        "F-0121",
        "benefit-reduction",
        "city-saitama",
        &s.union_codes[0],
        &["welfare.public_assistance"],
    );
    let pending: QueryResponse =
        serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
    assert_eq!(pending.status, QueryStatus::Pending);

    // A long-poll of 3 s is in flight when SIGTERM arrives.
    let path = format!("/v1/queries/{}?wait=3", pending.query_id);
    let in_flight = tokio::spawn(async move { s.union.get(&path).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = Command::new("kill")
        .args(["-TERM", &broker.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let response = in_flight.await??;
    assert_eq!(response.status, 200, "the in-flight request was cut off");

    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = broker.child.try_wait()? {
            break exit;
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("broker did not exit after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "broker exited with {exit}");
    // New connections are refused once it stopped.
    assert!(tokio::net::TcpStream::connect(broker.addr).await.is_err());
    Ok(())
}

fn broker_cli(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(broker_binary()?)
        .args(args)
        .env("KAKEHASHI_LOG", "error")
        .output()?)
}

#[tokio::test]
async fn orgs_and_flows_are_managed_from_the_command_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = dir.path().join("dev");
    let dev_str = dev.to_str().context("utf-8 path")?;
    let out = broker_cli(&["dev", "--dir", dev_str, "--no-serve"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dev.join("broker.toml");
    let config = config.to_str().context("utf-8 path")?;

    let out = broker_cli(&[
        "orgs",
        "--config",
        config,
        "add",
        "city-kawaguchi",
        "--kind",
        "municipality",
        "--name",
        "川口市",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = broker_cli(&[
        "orgs",
        "--config",
        config,
        "add",
        "city-kawaguchi",
        "--kind",
        "municipality",
        "--name",
        "x",
    ])?;
    assert!(!again.status.success(), "a duplicate org was registered");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already registered"));
    let bad = broker_cli(&[
        "orgs",
        "--config",
        config,
        "add",
        "City Kawaguchi",
        "--kind",
        "municipality",
        "--name",
        "x",
    ])?;
    assert!(!bad.status.success());

    let out = broker_cli(&["orgs", "--config", config, "suspend", "city-kawaguchi"])?;
    assert!(out.status.success());
    let list = broker_cli(&["orgs", "--config", config, "list", "--json"])?;
    let orgs: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    let kawaguchi = orgs
        .as_array()
        .and_then(|a| a.iter().find(|o| o["id"] == "city-kawaguchi"))
        .context("listed")?;
    assert_eq!(kawaguchi["status"], "suspended");
    assert_eq!(kawaguchi["name"], "川口市");
    assert_eq!(orgs.as_array().map(Vec::len), Some(5));
    assert!(
        broker_cli(&["orgs", "--config", config, "activate", "city-nowhere"])?
            .status
            .code()
            != Some(0)
    );

    let show = broker_cli(&["flows", "--config", config, "show"])?;
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("flow list version 1") && text.contains("F-0120"),
        "{text}"
    );
    let bad_list = dir.path().join("bad.toml");
    std::fs::write(&bad_list, "[[flow]]\nflow_id = \"F-1\"\nprocedure = \"p\"\nrequester = { kind = \"union\" }\nprovider = { kind = \"union\" }\nitems = []\nlegal_basis = \"x\"\nvalid_from = \"2020-01-01\"\n")?;
    let load = broker_cli(&[
        "flows",
        "--config",
        config,
        "load",
        bad_list.to_str().context("utf-8")?,
    ])?;
    assert!(!load.status.success());
    assert!(
        String::from_utf8_lossy(&load.stderr).contains("F-1"),
        "the error names the bad flow"
    );
    let show = broker_cli(&["flows", "--config", config, "show"])?;
    assert!(
        String::from_utf8_lossy(&show.stdout).contains("flow list version 1"),
        "a refused list changed the version"
    );
    Ok(())
}

/// Starts `kakehashi-broker serve --config <config>` and waits for its port.
async fn serve(config: &std::path::Path, addr: std::net::SocketAddr) -> Result<Child> {
    let child = Command::new(broker_binary()?)
        .args(["serve", "--config"])
        .arg(config)
        .env("KAKEHASHI_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            bail!("broker did not start listening");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(child)
}

/// Drives concurrent queries, kills the broker with SIGKILL mid-load, and
/// checks that every query the client saw answered has its provision record
/// and that the records verify after a restart.
async fn kill_nine_loses_no_answered_query(backend: kakehashi_tests::Backend) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = dir.path().join("dev");
    let console = format!("127.0.0.1:{}", kakehashi_tests::free_port()?);
    let out = broker_cli(&[
        "dev",
        "--dir",
        dev.to_str().context("utf-8")?,
        "--console-listen",
        &console,
        "--no-serve",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = kakehashi_tests::free_port()?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut text = std::fs::read_to_string(dev.join("broker.toml"))?
        .replace("127.0.0.1:7443", &addr.to_string());
    if backend == kakehashi_tests::Backend::Postgres {
        let Some(base) = kakehashi_tests::pg_base_url() else {
            return Ok(());
        };
        let url = kakehashi_tests::fresh_pg_database(&base).await?;
        text = text.replace(
            "sqlite = \"kakehashi.db\"",
            &format!("postgres_url = \"{url}\""),
        );
    }
    text.push_str("\n[limits]\nper_org_per_second = 100000\nper_org_burst = 100000\n");
    let config = dev.join("crash.toml");
    std::fs::write(&config, text)?;
    let config_str = config.to_str().context("utf-8")?;
    if backend == kakehashi_tests::Backend::Postgres {
        for (id, kind) in [("union-saitama", "union"), ("city-saitama", "municipality")] {
            let out = broker_cli(&[
                "orgs", "--config", config_str, "add", id, "--kind", kind, "--name", id,
            ])?;
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let mut child = serve(&config, addr).await?;
    let ca = std::fs::read_to_string(dev.join("pki/ca.crt"))?;
    let cert = |org: &str| kakehashi_tests::load_org_cert(&dev.join("pki"), org);
    let union_cert = cert("union-saitama")?;
    let s = scenario_with(
        TestClient::connect(addr, &ca, Some(&union_cert), Protocol::Http1).await?,
        TestClient::connect(addr, &ca, Some(&cert("city-saitama")?), Protocol::Http1).await?,
        40,
    )
    .await?;

    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut drivers = Vec::new();
    for worker in 0..12 {
        let mut client = TestClient::connect(addr, &ca, Some(&union_cert), Protocol::Http1).await?;
        let codes = s.union_codes.clone();
        let answered = answered.clone();
        drivers.push(tokio::spawn(async move {
            for i in 0.. {
                let code = &codes[(worker * 7 + i) % codes.len()];
                let (body, _) = query_body(
                    "F-0120",
                    "premium-calculation",
                    "city-saitama",
                    code,
                    &["local_tax.income"],
                );
                let Ok(response) = client.post("/v1/queries", body).await else {
                    break;
                };
                if response.status == 200 {
                    if let Ok(answer) = serde_json::from_slice::<QueryResponse>(&response.body) {
                        if let Ok(mut seen) = answered.lock() {
                            seen.push(answer.query_id.to_string());
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill()?; // SIGKILL
    child.wait()?;
    for d in drivers {
        let _ = d.await;
    }
    let answered = answered.lock().map(|a| a.clone()).unwrap_or_default();
    assert!(
        answered.len() > 20,
        "too few queries answered before the kill: {}",
        answered.len()
    );

    // Restart on the same store: every answered query has its record, and the chain verifies.
    let mut child = serve(&config, addr).await?;
    let config_loaded = kakehashi_broker::Config::load(&config)?;
    let store = kakehashi_broker::store::open(&config_loaded.storage).await?;
    let pools = store.pools();
    let recorded: Vec<(String,)> = kakehashi_broker::on_pool!(&pools, read, |pool| {
        sqlx::query_as("SELECT query_id FROM records WHERE outcome = 'provided'")
            .fetch_all(pool)
            .await?
    });
    let recorded: std::collections::HashSet<String> = recorded.into_iter().map(|(q,)| q).collect();
    let missing: Vec<&String> = answered.iter().filter(|q| !recorded.contains(*q)).collect();
    assert!(
        missing.is_empty(),
        "{} answered queries have no record (of {})",
        missing.len(),
        answered.len()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait()?;
    let verify = broker_cli(&["records", "--config", config_str, "verify"])?;
    assert!(
        verify.status.success(),
        "records verify failed: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn kill_nine_loses_no_answered_query_sqlite() -> Result<()> {
    kill_nine_loses_no_answered_query(kakehashi_tests::Backend::Sqlite).await
}

#[tokio::test]
async fn kill_nine_loses_no_answered_query_postgres() -> Result<()> {
    kill_nine_loses_no_answered_query(kakehashi_tests::Backend::Postgres).await
}

#[tokio::test]
async fn purge_from_the_command_line_erases_lapsed_persons() -> Result<()> {
    let mut broker = start_dev().await?;
    let union = client(&broker, "union-saitama").await?;
    let city = client(&broker, "city-saitama").await?;
    let mut s = scenario_with(union, city, 2).await?;
    let lapsed = kakehashi_tests::exchange::registration_line_lost(
        "被保険者 1",
        &s.numbers[1],
        "2019-03-31",
    );
    kakehashi_tests::exchange::post_ok(&mut s.union, "/v1/persons", &[lapsed]).await?;
    Command::new("kill")
        .args(["-TERM", &broker.child.id().to_string()])
        .status()?;
    let exit = broker.child.wait()?;
    assert!(exit.success(), "broker exited with {exit}");

    let config_path = broker.dir.path().join("dev/broker.toml");
    let config = config_path.to_str().context("utf-8 path")?;
    let loaded = kakehashi_broker::Config::load(&config_path)?;
    let store = kakehashi_broker::store::open(&loaded.storage).await?;
    let pools = store.pools();
    let records = "SELECT COUNT(*) FROM records";
    let recorded = kakehashi_tests::sql_count(&pools, records).await?;

    // Shorter than the law and the configuration: refused, nothing deleted.
    for years in ["0", "3"] {
        let out = broker_cli(&["purge", "--config", config, "--retention-years", years])?;
        assert!(
            !out.status.success(),
            "--retention-years {years} was accepted"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("refused"), "{stderr}");
        assert_eq!(kakehashi_tests::sql_count(&pools, records).await?, recorded);
    }
    // The configured period is the one in force: with seven years a purge of
    // what is two years old is refused; a configuration that keeps records
    // one year allows it.
    let two_years_ago = (time::OffsetDateTime::now_utc() - time::Duration::days(731))
        .date()
        .to_string();
    let early = [
        "purge",
        "--config",
        config,
        "--before",
        &two_years_ago,
        "--records-only",
    ];
    assert!(!broker_cli(&early)?.status.success());
    let text = std::fs::read_to_string(&config_path)?;
    std::fs::write(
        &config_path,
        format!("{text}\n[records]\nretention_years = 1\n"),
    )?;
    let out = broker_cli(&early)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&config_path, &text)?;

    // An erasure whose record cannot be written deletes nothing: the
    // deletion and its record are one transaction.
    let lapsed = "SELECT COUNT(*) FROM persons WHERE eligibility_lost_on IS NOT NULL";
    assert_eq!(kakehashi_tests::sql_count(&pools, lapsed).await?, 1);
    kakehashi_tests::sql_exec(
        &pools,
        "CREATE TRIGGER no_erasure_record BEFORE INSERT ON records \
         WHEN NEW.outcome = 'erasure' BEGIN SELECT RAISE(ABORT, 'records disk full'); END",
    )
    .await?;
    let out = broker_cli(&["purge", "--config", config])?;
    assert!(
        !out.status.success(),
        "an erasure without its record succeeded"
    );
    assert_eq!(kakehashi_tests::sql_count(&pools, lapsed).await?, 1);
    kakehashi_tests::sql_exec(&pools, "DROP TRIGGER no_erasure_record").await?;

    // A records purge that is refused (here: before the retention period
    // ends) does not keep personal data past its own periods: the erasure
    // runs all the same, and the command fails for the purge.
    let out = broker_cli(&[
        "purge",
        "--config",
        config,
        "--actor",
        "ops-suzuki",
        "--before",
        &two_years_ago,
    ])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the early purge was accepted");
    assert!(
        stderr.contains("the records purge failed") && stderr.contains("records are kept 7 years"),
        "{stderr}"
    );
    assert!(
        stdout.contains("erased 1 identity confirmations")
            && stdout.contains("1 persons and 1 copies"),
        "{stdout}"
    );
    assert_eq!(kakehashi_tests::sql_count(&pools, lapsed).await?, 0);
    let verify = broker_cli(&["records", "--config", config, "verify"])?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let again = broker_cli(&["purge", "--config", config])?;
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no identity confirmations"),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    Ok(())
}
