//! Two-person flow-list changes (R8) with real brokers and real databases:
//! a proposal is not in force, its proposer cannot approve it, a second
//! administrator's approval reaches the running broker within seconds
//! without a restart, every version is kept with its proposer and approver,
//! and the host CLI (the real `kakehashi-broker` binary) refuses one person
//! in both roles.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http::StatusCode;
use kakehashi_broker::flow_changes::{
    self, FlowChange, FlowDiff, VersionStatus, VersionView, CONFIG_ACTOR,
};
use kakehashi_broker::policy::SAMPLE_FLOW_LIST;
use kakehashi_broker::store::Pools;
use kakehashi_interfaces::ErrorCode;
use kakehashi_tests::exchange::{opened_items, query_body, scenario};
use kakehashi_tests::{both_backends, sql_count, Backend, BrokerOptions, TestBroker, TestClient};

/// A flow only the proposals below add: the union asks a municipality for
/// income under a procedure of its own.
const NEW_FLOW: &str = r#"
[[flow]]
flow_id = "F-0500"
procedure = "premium-reassessment"
requester = { kind = "union" }
provider = { kind = "municipality" }
items = ["local_tax.income"]
legal_basis = "番号法 別表 第80項 (保険料の再算定)"
valid_from = "2016-01-01"
"#;

/// Longest wait for an approval to reach a running broker.
const PICKUP: Duration = Duration::from_secs(3);

fn with_new_flow() -> String {
    format!("{SAMPLE_FLOW_LIST}{NEW_FLOW}")
}

fn not_run(test: &str, backend: Backend) {
    eprintln!(
        "NOTE: {test} on {backend:?} NOT RUN: {} is not set",
        kakehashi_tests::PG_ENV
    );
}

/// A broker whose `[exchange] flow_list` file stays on disk (for restarts).
struct FlowBroker {
    broker: TestBroker,
    flows_file: PathBuf,
    _dir: tempfile::TempDir,
}

async fn flow_broker(backend: Backend) -> Result<Option<FlowBroker>> {
    let dir = tempfile::tempdir()?;
    let flows_file = dir.path().join("flows.toml");
    std::fs::write(&flows_file, SAMPLE_FLOW_LIST)?;
    let mut opts = BrokerOptions {
        backend,
        ..BrokerOptions::default()
    };
    opts.exchange.flow_list = Some(flows_file.clone());
    Ok(TestBroker::start_with(opts)
        .await?
        .map(|broker| FlowBroker {
            broker,
            flows_file,
            _dir: dir,
        }))
}

/// The union asks city-saitama for one person's income under `F-0500`:
/// the opened value, or the refusal's error code.
async fn reassessment(union: &mut TestClient, union_code: &str) -> Result<Result<i64, String>> {
    let (body, keys) = query_body(
        "F-0500",
        "premium-reassessment",
        "city-saitama",
        union_code,
        &["local_tax.income"],
    );
    let response = union.post("/v1/queries", body).await?;
    if response.status != StatusCode::OK {
        return Ok(Err(response.error_code().unwrap_or_default()));
    }
    let items = opened_items(&response.body, &keys)?;
    items["local_tax.income"]
        .as_i64()
        .map(Ok)
        .context("no income in the answer")
}

/// Asks until the flow is allowed; how long that took.
async fn answered_within(
    union: &mut TestClient,
    union_code: &str,
    limit: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        match reassessment(union, union_code).await? {
            Ok(income) => {
                assert_eq!(income, 2_000_000);
                return Ok(started.elapsed());
            }
            Err(code) if code == "not_on_flow_list" && started.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(code) => bail!("not answered after {:?}: {code}", started.elapsed()),
        }
    }
}

fn refusal(
    result: Result<impl std::fmt::Debug, kakehashi_broker::BrokerError>,
) -> (ErrorCode, String) {
    match result {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => (e.code(), e.public_message()),
    }
}

async fn versions(pools: &Pools) -> Result<Vec<VersionView>> {
    Ok(flow_changes::list(pools).await?)
}

// ------------------------------------------------- proposal → approval

async fn approval_reaches_the_running_broker(backend: Backend) -> Result<()> {
    let Some(fb) = flow_broker(backend).await? else {
        not_run("approval_reaches_the_running_broker", backend);
        return Ok(());
    };
    let broker = &fb.broker;
    let pools = broker.store.pools();
    let mut s = scenario(broker, 1).await?;
    let code = s.union_codes[0].clone();

    let proposed = flow_changes::propose(&pools, &with_new_flow(), "admin.sato").await?;
    assert_eq!(proposed.version, 2);
    // Not in force: not now, nor after the reloader had its turn.
    assert_eq!(
        reassessment(&mut s.union, &code).await?,
        Err("not_on_flow_list".to_string())
    );
    tokio::time::sleep(flow_changes::RELOAD_INTERVAL + Duration::from_millis(700)).await;
    assert_eq!(
        reassessment(&mut s.union, &code).await?,
        Err("not_on_flow_list".to_string())
    );
    assert_eq!(broker.broker.state().flows().version, 1);

    // The proposer cannot approve, however the name is written.
    for me in ["admin.sato", "Admin.Sato"] {
        let (code, message) = refusal(flow_changes::approve(&pools, 2, me).await);
        assert_eq!(code, ErrorCode::Forbidden);
        assert!(
            message.starts_with("提案者自身は承認できません"),
            "{message}"
        );
        assert!(message.contains("the proposer cannot approve"), "{message}");
    }
    // Nor can the configuration's own name be borrowed.
    let (code_, _) = refusal(flow_changes::approve(&pools, 2, CONFIG_ACTOR).await);
    assert_eq!(code_, ErrorCode::InvalidInput);
    assert_eq!(
        reassessment(&mut s.union, &code).await?,
        Err("not_on_flow_list".to_string())
    );

    // A second administrator approves; the running broker (no restart, no
    // reload called here) answers under the new flow within seconds.
    let approved = flow_changes::approve(&pools, 2, "admin.suzuki").await?;
    assert_eq!(approved.version, 2);
    assert_eq!(approved.sha256, proposed.sha256);
    let took = answered_within(&mut s.union, &code, PICKUP).await?;
    eprintln!("approval in force on the running broker after {took:?}");
    assert!(took <= PICKUP, "took {took:?}");
    assert_eq!(broker.broker.state().flows().version, 2);
    // The version in force is recorded with the answer.
    let recorded = sql_count(
        &pools,
        "SELECT COUNT(*) FROM records WHERE flow_id = 'F-0500' AND flow_list_version = 2 AND outcome = 'provided'",
    )
    .await?;
    assert_eq!(recorded, 1);

    // A second approval, and proposing what is in force, are refused.
    let (code_, message) = refusal(flow_changes::approve(&pools, 2, "admin.tanaka").await);
    assert_eq!(code_, ErrorCode::Conflict);
    assert!(message.contains("already approved"), "{message}");
    let (code_, message) =
        refusal(flow_changes::propose(&pools, &with_new_flow(), "admin.tanaka").await);
    assert_eq!(code_, ErrorCode::Conflict);
    assert!(
        message.contains("version 2, which is in force"),
        "{message}"
    );
    let (code_, _) = refusal(flow_changes::approve(&pools, 99, "admin.tanaka").await);
    assert_eq!(code_, ErrorCode::NotFound);

    // Every version is kept with who proposed and approved it.
    let list = versions(&pools).await?;
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].proposed_by, CONFIG_ACTOR);
    assert_eq!(list[0].approved_by.as_deref(), Some(CONFIG_ACTOR));
    assert_eq!(list[0].status, VersionStatus::Superseded);
    assert_eq!(list[1].proposed_by, "admin.sato");
    assert_eq!(list[1].approved_by.as_deref(), Some("admin.suzuki"));
    assert_eq!(list[1].status, VersionStatus::InForce);
    assert!(list[1].approved_at.as_deref() >= Some(list[1].proposed_at.as_str()));
    assert_eq!(flow_changes::get(&pools, 2).await?.text, with_new_flow());

    // An unchanged configuration file at restart does not undo the
    // administrators' version; a changed one is stored by host:config.
    let FlowBroker {
        broker,
        flows_file,
        _dir,
    } = fb;
    let broker = broker.restart().await?;
    assert_eq!(broker.broker.state().flows().version, 2);
    assert_eq!(versions(&pools).await?.len(), 2);
    let edited = SAMPLE_FLOW_LIST.replace("F-0099", "F-0098");
    std::fs::write(&flows_file, &edited)?;
    let broker = broker.restart().await?;
    assert_eq!(broker.broker.state().flows().version, 3);
    let list = versions(&pools).await?;
    assert_eq!(list[2].proposed_by, CONFIG_ACTOR);
    assert_eq!(list[2].status, VersionStatus::InForce);
    assert_eq!(list[1].status, VersionStatus::Superseded);
    broker.broker.shutdown().await;
    Ok(())
}
both_backends!(approval_reaches_the_running_broker: approval_reaches_the_running_broker_sqlite, approval_reaches_the_running_broker_postgres);

// ------------------------------------------- superseded, pending, diff

async fn versions_are_kept_and_compared(backend: Backend) -> Result<()> {
    let Some(fb) = flow_broker(backend).await? else {
        not_run("versions_are_kept_and_compared", backend);
        return Ok(());
    };
    let pools = fb.broker.store.pools();

    // v2 adds a flow; v3 changes F-0121's items instead.
    let v2 = flow_changes::propose(&pools, &with_new_flow(), "admin.sato").await?;
    let changed = SAMPLE_FLOW_LIST.replace(
        "items = [\"local_tax.income\", \"welfare.public_assistance\"]",
        "items = [\"local_tax.income\", \"welfare.public_assistance\", \"household.members\"]",
    );
    let v3 = flow_changes::propose(&pools, &changed, "host:ito").await?;
    assert_eq!((v2.version, v3.version), (2, 3));
    // The same text again while it waits is refused, naming the version.
    let (code, message) = refusal(flow_changes::propose(&pools, &changed, "admin.mori").await);
    assert_eq!(code, ErrorCode::Conflict);
    assert!(
        message.contains("already proposed as version 3"),
        "{message}"
    );
    // An invalid list is refused with its flow named, and nothing stored.
    let bad = changed.replace(
        "sensitive_items = [\"welfare.public_assistance\"]",
        "sensitive_items = [\"x.y\"]",
    );
    let (code, message) = refusal(flow_changes::propose(&pools, &bad, "admin.mori").await);
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(message.contains("F-0121"), "{message}");
    assert_eq!(versions(&pools).await?.len(), 3);

    flow_changes::approve(&pools, 3, "admin.sato").await?;
    fb.broker.broker.state().reload_flows().await?;
    assert_eq!(fb.broker.broker.state().flows().version, 3);
    // v2 was overtaken by a later approved version: it cannot be approved.
    let (code, message) = refusal(flow_changes::approve(&pools, 2, "admin.suzuki").await);
    assert_eq!(code, ErrorCode::Conflict);
    assert!(message.contains("superseded"), "{message}");

    let list = versions(&pools).await?;
    let by_version: Vec<(u64, VersionStatus, &str, Option<&str>)> = list
        .iter()
        .map(|v| {
            (
                v.version,
                v.status,
                v.proposed_by.as_str(),
                v.approved_by.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        by_version,
        vec![
            (
                1,
                VersionStatus::Superseded,
                CONFIG_ACTOR,
                Some(CONFIG_ACTOR)
            ),
            (2, VersionStatus::Superseded, "admin.sato", None),
            (3, VersionStatus::InForce, "host:ito", Some("admin.sato")),
        ]
    );

    let diff = flow_changes::diff(&pools, 1, 3).await?;
    assert_eq!(
        diff,
        vec![FlowDiff {
            flow_id: "F-0121".into(),
            change: FlowChange::Changed,
            fields: vec!["items".into()],
        }]
    );
    let diff = flow_changes::diff(&pools, 2, 3).await?;
    let named: Vec<(&str, FlowChange)> = diff
        .iter()
        .map(|d| (d.flow_id.as_str(), d.change))
        .collect();
    assert_eq!(
        named,
        vec![
            ("F-0121", FlowChange::Changed),
            ("F-0500", FlowChange::Removed)
        ]
    );
    let (code, _) = refusal(flow_changes::diff(&pools, 1, 7).await);
    assert_eq!(code, ErrorCode::NotFound);
    fb.broker.broker.shutdown().await;
    Ok(())
}
both_backends!(versions_are_kept_and_compared: versions_are_kept_and_compared_sqlite, versions_are_kept_and_compared_postgres);

// ------------------------------------------------------- the host CLI

/// A broker.toml naming the running test broker's database and keys.
fn host_config(broker: &TestBroker, dir: &Path) -> Result<PathBuf> {
    let storage = match (
        &broker.config.storage.sqlite,
        &broker.config.storage.postgres_url,
    ) {
        (Some(path), _) => format!("sqlite = {:?}", path.to_str().context("utf-8 path")?),
        (None, Some(url)) => format!("postgres_url = {url:?}"),
        (None, None) => bail!("the test broker has no storage"),
    };
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\
         [tls]\ncert = \"server.crt\"\nkey = \"server.key\"\nclient_ca = [\"ca.crt\"]\n\
         [storage]\n{storage}\n\
         [keys]\ndir = {:?}\n",
        broker.config.keys.dir.to_str().context("utf-8 path")?
    );
    let path = dir.join("broker.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn flows_cli(config: &Path, user: &str, args: &[&str]) -> Result<Output> {
    let bin = kakehashi_tests::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")?;
    Ok(std::process::Command::new(bin)
        .arg("flows")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("USER", user)
        .env("KAKEHASHI_LOG", "warn")
        .output()?)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn host_cli_needs_two_people(backend: Backend) -> Result<()> {
    // Built first: a build while the clients below wait would let the
    // broker close their idle connections.
    kakehashi_tests::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")?;
    let Some(fb) = flow_broker(backend).await? else {
        not_run("host_cli_needs_two_people", backend);
        return Ok(());
    };
    let broker = &fb.broker;
    let pools = broker.store.pools();
    let dir = tempfile::tempdir()?;
    let config = host_config(broker, dir.path())?;
    let file = dir.path().join("proposed.toml");
    std::fs::write(&file, with_new_flow())?;
    let file = file.to_str().context("utf-8 path")?;
    let mut s = scenario(broker, 1).await?;
    let code = s.union_codes[0].clone();

    // One person cannot be both proposer and approver: refused, nothing stored.
    for same in ["host:ops-tanaka", "HOST:OPS-TANAKA"] {
        let out = flows_cli(&config, "ops-tanaka", &["load", file, "--approve-as", same])?;
        assert!(!out.status.success(), "{}", text(&out.stdout));
        let stderr = text(&out.stderr);
        assert!(stderr.contains("提案者自身は承認できません"), "{stderr}");
        assert!(stderr.contains("forbidden"), "{stderr}");
    }
    assert_eq!(versions(&pools).await?.len(), 1);

    // `load` without --approve-as proposes and says how to approve.
    let out = flows_cli(&config, "ops-tanaka", &["load", file])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("approve 2 --as"), "{stdout}");
    assert!(stdout.contains("not in force"), "{stdout}");
    let out = flows_cli(&config, "ops-tanaka", &["approve", "2"])?;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("提案者自身は承認できません"));
    let out = flows_cli(&config, "ops-tanaka", &["show"])?;
    assert!(
        text(&out.stdout).contains("flow list version 1"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        reassessment(&mut s.union, &code).await?,
        Err("not_on_flow_list".to_string())
    );
    let out = flows_cli(&config, "ops-tanaka", &["diff", "1", "2"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("+ F-0500  added"),
        "{}",
        text(&out.stdout)
    );

    // Another administrator approves from the host; the running broker uses it.
    let out = flows_cli(
        &config,
        "ops-tanaka",
        &["approve", "2", "--as", "admin.suzuki"],
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    answered_within(&mut s.union, &code, PICKUP).await?;
    let out = flows_cli(&config, "ops-tanaka", &["show"])?;
    let shown = text(&out.stdout);
    assert!(
        shown.contains("flow list version 2") && shown.contains("F-0500"),
        "{shown}"
    );
    assert!(shown.contains("approved by admin.suzuki"), "{shown}");

    // One step by two named people.
    let next = dir.path().join("next.toml");
    std::fs::write(&next, with_new_flow().replace("F-0099", "F-0098"))?;
    let next = next.to_str().context("utf-8 path")?;
    let out = flows_cli(
        &config,
        "ops-ito",
        &["load", next, "--approve-as", "admin.mori"],
    )?;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = flows_cli(&config, "ops-tanaka", &["list", "--json"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<VersionView> = serde_json::from_slice(&out.stdout)?;
    let people: Vec<(&str, Option<&str>, VersionStatus)> = listed
        .iter()
        .map(|v| (v.proposed_by.as_str(), v.approved_by.as_deref(), v.status))
        .collect();
    assert_eq!(
        people,
        vec![
            (CONFIG_ACTOR, Some(CONFIG_ACTOR), VersionStatus::Superseded),
            (
                "host:ops-tanaka",
                Some("admin.suzuki"),
                VersionStatus::Superseded
            ),
            ("host:ops-ito", Some("admin.mori"), VersionStatus::InForce),
        ]
    );
    // Proposals and approvals, refused ones included, are in the operation log.
    let logged = |sql: &'static str| {
        let pools = pools.clone();
        async move { sql_count(&pools, sql).await }
    };
    assert_eq!(
        logged("SELECT COUNT(*) FROM operation_log WHERE action = 'flow_list_proposed' AND result = 'success'").await?,
        2
    );
    assert_eq!(
        logged("SELECT COUNT(*) FROM operation_log WHERE action = 'flow_list_approved' AND result = 'success'").await?,
        2
    );
    assert_eq!(
        logged("SELECT COUNT(*) FROM operation_log WHERE action = 'flow_list_approved' AND result = 'refused'").await?,
        3
    );
    fb.broker.broker.shutdown().await;
    Ok(())
}
both_backends!(host_cli_needs_two_people: host_cli_needs_two_people_sqlite, host_cli_needs_two_people_postgres);

// ------------------------------------------------------------ migration

/// The database as it was before migration 0105: two loaded versions.
const BEFORE_0105: &str = "
CREATE TABLE flow_lists (
    version BIGINT PRIMARY KEY NOT NULL,
    sha256 TEXT NOT NULL,
    body TEXT NOT NULL,
    loaded_at TEXT NOT NULL
);";

async fn old_database(backend: Backend, dir: &Path) -> Result<Option<Pools>> {
    Ok(match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(dir.join("old.db"))
                .create_if_missing(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            Some(Pools::Sqlite {
                write: pool.clone(),
                read: pool,
            })
        }
        Backend::Postgres => match kakehashi_tests::pg_base_url() {
            None => None,
            Some(base) => {
                let url = kakehashi_tests::fresh_pg_database(&base).await?;
                Some(Pools::Postgres(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(2)
                        .connect(&url)
                        .await?,
                ))
            }
        },
    })
}

async fn migration_keeps_loaded_versions(backend: Backend) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(pools) = old_database(backend, dir.path()).await? else {
        not_run("migration_keeps_loaded_versions", backend);
        return Ok(());
    };
    kakehashi_tests::sql_exec(&pools, BEFORE_0105).await?;
    let second = with_new_flow().replace('\'', "''");
    kakehashi_tests::sql_exec(
        &pools,
        &format!(
            "INSERT INTO flow_lists VALUES (1, 'aa', '{}', '2026-01-05T09:00:00.000000Z');
             INSERT INTO flow_lists VALUES (2, 'bb', '{second}', '2026-02-01T09:00:00.000000Z');",
            SAMPLE_FLOW_LIST.replace('\'', "''")
        ),
    )
    .await?;
    let migration = match backend {
        Backend::Sqlite => {
            include_str!("../../broker/migrations/sqlite/0105_flow_list_approval.sql")
        }
        Backend::Postgres => {
            include_str!("../../broker/migrations/postgres/0105_flow_list_approval.sql")
        }
    };
    kakehashi_tests::sql_exec(&pools, migration).await?;

    // Both loaded versions count as approved; the highest is in force.
    let list = versions(&pools).await?;
    let seen: Vec<(u64, VersionStatus, &str, Option<&str>, &str)> = list
        .iter()
        .map(|v| {
            (
                v.version,
                v.status,
                v.proposed_by.as_str(),
                v.approved_by.as_deref(),
                v.proposed_at.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                1,
                VersionStatus::Superseded,
                flow_changes::MIGRATION_ACTOR,
                Some(flow_changes::MIGRATION_ACTOR),
                "2026-01-05T09:00:00.000000Z"
            ),
            (
                2,
                VersionStatus::InForce,
                flow_changes::MIGRATION_ACTOR,
                Some(flow_changes::MIGRATION_ACTOR),
                "2026-02-01T09:00:00.000000Z"
            ),
        ]
    );
    assert_eq!(
        kakehashi_broker::policy::load_current(&pools)
            .await?
            .version,
        2
    );
    // Proposals continue the numbering, and the table itself refuses a
    // proposer approving their own version.
    let proposed = flow_changes::propose(&pools, SAMPLE_FLOW_LIST, "admin.sato").await?;
    assert_eq!(proposed.version, 3);
    let own = kakehashi_tests::sql_exec(
        &pools,
        "UPDATE flow_lists SET approved_by = 'admin.sato', approved_at = 'x' WHERE version = 3",
    )
    .await;
    assert!(
        own.is_err(),
        "the table let a proposer approve their own version"
    );
    assert_eq!(
        kakehashi_broker::policy::load_current(&pools)
            .await?
            .version,
        2
    );
    Ok(())
}
both_backends!(migration_keeps_loaded_versions: migration_keeps_loaded_versions_sqlite, migration_keeps_loaded_versions_postgres);
