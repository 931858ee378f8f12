//! The operation log (操作ログ, R17) against real SQLite files and real
//! PostgreSQL databases: one gap-free chain under concurrent appends from
//! several stores, search, the damage `verify` names for each kind of
//! tampering, no secret in any stored column, and the host CLI (`orgs
//! suspend` logged as `host:<user>`, `oplog verify` failing after an edit)
//! through the real binary.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use kakehashi_broker::oplog::{
    self, chain_hash, OpAction, OpDamage, OpEntry, OpFilter, OpRecord, OpResult, OpResultFilter,
    OpVerdict, OperationLog, OplogOptions,
};
use kakehashi_broker::store::{self, NewOrg, Pools, Store};
use kakehashi_interfaces::{ErrorCode, OrgId, OrgKind};
use kakehashi_tests::{both_backends, storage_config, Backend};
use tempfile::TempDir;

/// Says so where it cannot be missed: a passing test's output is captured,
/// but a direct write to stderr is not.
fn not_run(test: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! oplog::{test}: PostgreSQL variant NOT RUN — {} is not set (scripts/test sets it) !!!\n",
        kakehashi_tests::PG_ENV
    );
}

/// A store, its key directory and a broker.toml naming both.
struct Env {
    dir: TempDir,
    store: Arc<dyn Store>,
    config_path: PathBuf,
    backend: Backend,
}

impl Env {
    async fn new(backend: Backend, test: &str) -> Result<Option<Env>> {
        let dir = tempfile::tempdir()?;
        let Some(storage) = storage_config(backend, dir.path()).await? else {
            not_run(test);
            return Ok(None);
        };
        let storage_line = match (&storage.sqlite, &storage.postgres_url) {
            (Some(path), _) => format!("sqlite = {:?}", path.display().to_string()),
            (_, Some(url)) => format!("postgres_url = {url:?}"),
            _ => bail!("no storage"),
        };
        let config_path = dir.path().join("broker.toml");
        std::fs::write(
            &config_path,
            format!(
                "[listen]\naddress = \"127.0.0.1:0\"\n[tls]\ncert = \"none.crt\"\nkey = \"none.key\"\nclient_ca = [\"none.crt\"]\n[storage]\n{storage_line}\n[keys]\ndir = {:?}\n",
                dir.path().join("keys").display().to_string()
            ),
        )?;
        let store = store::open(&storage).await?;
        Ok(Some(Env {
            dir,
            store,
            config_path,
            backend,
        }))
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn pools(&self) -> Pools {
        self.store.pools()
    }

    /// A second store on the same database: its own pools and writer
    /// connection, as another broker process has.
    async fn second_store(&self) -> Result<Arc<dyn Store>> {
        let config = kakehashi_broker::Config::load(&self.config_path)?;
        Ok(store::open(&config.storage).await?)
    }

    /// A log whose checkpoints fall only where the test calls for them.
    async fn log_on(&self, pools: Pools) -> Result<Arc<OperationLog>> {
        Ok(OperationLog::open_with(
            pools,
            &self.keys(),
            OplogOptions {
                checkpoint_interval: std::time::Duration::ZERO,
            },
        )
        .await?)
    }

    async fn log(&self) -> Result<Arc<OperationLog>> {
        self.log_on(self.pools()).await
    }

    async fn verify(&self) -> Result<OpVerdict> {
        Ok(oplog::verify_store(&self.pools(), &self.keys()).await?)
    }

    async fn exec(&self, sql: &str) -> Result<()> {
        kakehashi_tests::sql_exec(&self.pools(), sql).await
    }

    async fn count(&self, sql: &str) -> Result<i64> {
        kakehashi_tests::sql_count(&self.pools(), sql).await
    }

    /// Drops the append-only triggers, as a database writer rewriting
    /// history would.
    async fn drop_guards(&self) -> Result<()> {
        let on = |table: &str| match self.backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" ON {table}"),
        };
        let mut sql = String::new();
        for (trigger, table) in [
            ("operation_log_no_update", "operation_log"),
            ("operation_log_no_delete", "operation_log"),
            (
                "operation_log_checkpoints_no_update",
                "operation_log_checkpoints",
            ),
            (
                "operation_log_checkpoints_no_delete",
                "operation_log_checkpoints",
            ),
        ] {
            sql.push_str(&format!("DROP TRIGGER {trigger}{};\n", on(table)));
        }
        self.exec(&sql).await
    }

    async fn stored_hash(&self, seq: i64) -> Result<Vec<u8>> {
        let sql = "SELECT hash FROM operation_log WHERE seq = $1";
        Ok(match self.pools() {
            Pools::Sqlite { read, .. } => {
                sqlx::query_scalar(sql).bind(seq).fetch_one(&read).await?
            }
            Pools::Postgres(pool) => sqlx::query_scalar(sql).bind(seq).fetch_one(&pool).await?,
        })
    }

    async fn set_hash(&self, table_sql: &str, seq: i64, hash: &[u8]) -> Result<()> {
        match self.pools() {
            Pools::Sqlite { write, .. } => {
                sqlx::query(table_sql)
                    .bind(hash.to_vec())
                    .bind(seq)
                    .execute(&write)
                    .await?;
            }
            Pools::Postgres(pool) => {
                sqlx::query(table_sql)
                    .bind(hash.to_vec())
                    .bind(seq)
                    .execute(&pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Every entry, oldest first.
    async fn all(&self) -> Result<Vec<OpRecord>> {
        let mut all =
            oplog::search(&self.pools(), &OpFilter::default(), oplog::MAX_PAGE, None).await?;
        all.reverse();
        Ok(all)
    }
}

fn org(id: &str) -> OrgId {
    OrgId::new(id).expect("valid org id")
}

/// A plausible entry for task `t`, number `i`.
fn entry(t: usize, i: usize) -> OpEntry {
    let (action, result) = match i % 4 {
        0 => (OpAction::LoginSucceeded, OpResult::Success),
        1 => (
            OpAction::LoginFailed,
            OpResult::Refused(ErrorCode::Unauthenticated),
        ),
        2 => (OpAction::Approve, OpResult::Success),
        _ => (OpAction::Logout, OpResult::Success),
    };
    OpEntry {
        org: Some(org(if t.is_multiple_of(2) {
            "city-kawagoe"
        } else {
            "city-saitama"
        })),
        target: (action == OpAction::Approve).then(|| format!("q-{t:03}-{i:03}")),
        source: Some(format!("192.0.2.{}", t % 250 + 1)),
        ..OpEntry::new(format!("staff-{t:03}"), action, result)
    }
}

async fn expect_broken(env: &Env, seq: u64, damage: OpDamage) -> Result<()> {
    match env.verify().await? {
        OpVerdict::Broken(f) => {
            assert_eq!(
                (f.seq, &f.damage),
                (seq, &damage),
                "wrong failure named: {f}"
            );
            Ok(())
        }
        OpVerdict::Intact(s) => bail!("tampering not detected: {s:?}"),
    }
}

// ------------------------------------------------------------- concurrency

async fn concurrent_appends_keep_one_chain(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend, "concurrent_appends_keep_one_chain").await? else {
        return Ok(());
    };
    let other = env.second_store().await?;
    let logs = [env.log().await?, env.log_on(other.pools()).await?];
    const TASKS: usize = 48;
    const EACH: usize = 5;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        // Half the tasks write through the second store (another process).
        let log = logs[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                seqs.push(log.append(entry(t, i)).await?);
                if i == 2 {
                    log.checkpoint().await?;
                }
            }
            anyhow::Ok(seqs)
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await??);
    }
    seqs.sort_unstable();
    let n = (TASKS * EACH) as u64;
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "sequence numbers not gap-free"
    );
    logs[0].checkpoint().await?;
    match env.verify().await? {
        OpVerdict::Intact(s) => {
            assert_eq!((s.entries, s.last_seq, s.sealed_seq), (n, n, n));
            assert!(s.checkpoints >= 2, "{s:?}");
        }
        OpVerdict::Broken(f) => bail!("concurrent appends broke the chain: {f}"),
    }
    // The stored times follow the sequence (taken under the head lock).
    let all = env.all().await?;
    assert!(all.windows(2).all(|w| w[0].at <= w[1].at));
    for log in &logs {
        log.close().await;
    }
    // Appends after close are refused, storing nothing.
    let refused = logs[0].append(entry(0, 0)).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::Unavailable);
    assert_eq!(
        env.count("SELECT COUNT(*) FROM operation_log").await?,
        n as i64
    );
    Ok(())
}
both_backends!(concurrent_appends_keep_one_chain: concurrent_sqlite, concurrent_postgres);

// ------------------------------------------------------------------ search

async fn search_filters_and_pages(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend, "search_filters_and_pages").await? else {
        return Ok(());
    };
    let log = env.log().await?;
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    for i in 0..40 {
        log.append(entry(i % 4, i)).await?;
    }
    let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let find = |filter: OpFilter| {
        let log = log.clone();
        async move { log.search(&filter, 1000, None).await }
    };
    let failed = find(OpFilter {
        action: Some(OpAction::LoginFailed),
        ..OpFilter::default()
    })
    .await?;
    assert_eq!(failed.len(), 10);
    assert!(failed.iter().all(|r| r.action == OpAction::LoginFailed
        && r.result == OpResult::Refused(ErrorCode::Unauthenticated)));
    // Newest first.
    assert!(failed.windows(2).all(|w| w[0].seq > w[1].seq));
    let by_actor = find(OpFilter {
        actor: Some("staff-001".into()),
        org: Some(org("city-saitama")),
        ..OpFilter::default()
    })
    .await?;
    assert_eq!(by_actor.len(), 10);
    assert!(by_actor.iter().all(|r| r.actor == "staff-001"));
    let refused = find(OpFilter {
        result: Some(OpResultFilter::Refused),
        ..OpFilter::default()
    })
    .await?;
    assert_eq!(refused.len(), 10);
    let success = find(OpFilter {
        result: Some(OpResultFilter::Success),
        ..OpFilter::default()
    })
    .await?;
    assert_eq!(success.len(), 30);
    let in_period = find(OpFilter {
        since: Some(before),
        until: Some(after),
        ..OpFilter::default()
    })
    .await?;
    assert_eq!(in_period.len(), 40);
    let future = find(OpFilter {
        since: Some(after),
        ..OpFilter::default()
    })
    .await?;
    assert!(future.is_empty());
    // Keyset pages: 15 + 15 + 10, no entry twice, none left out.
    let mut seen = BTreeSet::new();
    let mut cursor = None;
    let mut pages = Vec::new();
    loop {
        let page = log.search(&OpFilter::default(), 15, cursor).await?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.seq);
        pages.push(page.len());
        for r in page {
            assert!(seen.insert(r.seq));
        }
    }
    assert_eq!(pages, vec![15, 15, 10]);
    assert_eq!(seen, (1..=40).collect());
    log.close().await;
    Ok(())
}
both_backends!(search_filters_and_pages: search_sqlite, search_postgres);

// --------------------------------------------------------------- tampering

/// Ten entries, checkpoints at 4 and 10, the log closed.
async fn sealed_ten(backend: Backend, test: &str) -> Result<Option<Env>> {
    let Some(env) = Env::new(backend, test).await? else {
        return Ok(None);
    };
    let log = env.log().await?;
    for i in 0..10 {
        log.append(entry(i % 3, i)).await?;
        if i == 3 {
            assert_eq!(log.checkpoint().await?, Some(4));
        }
    }
    assert_eq!(log.checkpoint().await?, Some(10));
    log.close().await;
    match env.verify().await? {
        OpVerdict::Intact(s) => {
            assert_eq!((s.entries, s.checkpoints, s.sealed_seq), (10, 2, 10))
        }
        OpVerdict::Broken(f) => bail!("fresh log broken: {f}"),
    }
    Ok(Some(env))
}

async fn edited_action_is_named(backend: Backend) -> Result<()> {
    let Some(env) = sealed_ten(backend, "edited_action_is_named").await? else {
        return Ok(());
    };
    // The tables refuse changes as they stand.
    assert!(env
        .exec("UPDATE operation_log SET action = 'logout' WHERE seq = 7")
        .await
        .is_err());
    assert!(env
        .exec("DELETE FROM operation_log WHERE seq = 7")
        .await
        .is_err());
    assert!(env.verify().await?.is_intact());
    // A database writer who drops the guards is caught.
    env.drop_guards().await?;
    env.exec("UPDATE operation_log SET action = 'login_succeeded' WHERE seq = 6")
        .await?;
    expect_broken(&env, 6, OpDamage::Edited).await?;
    // The sealer re-checks the tail before signing it and refuses an edited one.
    let log = env.log().await?;
    assert_eq!(log.append(entry(0, 0)).await?, 11);
    env.exec("UPDATE operation_log SET detail = 'x' WHERE seq = 11")
        .await?;
    assert!(log.checkpoint().await.is_err(), "tampered tail sealed");
    expect_broken(&env, 6, OpDamage::Edited).await?;
    Ok(())
}
both_backends!(edited_action_is_named: edit_sqlite, edit_postgres);

async fn deleted_entry_is_named(backend: Backend) -> Result<()> {
    let Some(env) = sealed_ten(backend, "deleted_entry_is_named").await? else {
        return Ok(());
    };
    env.drop_guards().await?;
    env.exec("DELETE FROM operation_log WHERE seq = 5").await?;
    expect_broken(&env, 5, OpDamage::Deleted).await?;
    Ok(())
}
both_backends!(deleted_entry_is_named: delete_sqlite, delete_postgres);

async fn rechained_edit_is_named(backend: Backend) -> Result<()> {
    let Some(env) = sealed_ten(backend, "rechained_edit_is_named").await? else {
        return Ok(());
    };
    env.drop_guards().await?;
    env.exec("UPDATE operation_log SET actor = 'intruder' WHERE seq = 6")
        .await?;
    // Recompute every hash from 6 on and move the head, as anyone can
    // without the key (the construction is public).
    let mut prev: [u8; 32] = env
        .stored_hash(5)
        .await?
        .try_into()
        .map_err(|_| anyhow::anyhow!("hash length"))?;
    for r in env.all().await?.into_iter().filter(|r| r.seq >= 6) {
        prev = chain_hash(&prev, &r.leaf_hash());
        env.set_hash(
            "UPDATE operation_log SET hash = $1 WHERE seq = $2",
            r.seq as i64,
            &prev,
        )
        .await?;
    }
    env.set_hash(
        "UPDATE operation_log_head SET hash = $1 WHERE id = 1 AND seq = $2",
        10,
        &prev,
    )
    .await?;
    expect_broken(&env, 6, OpDamage::Rechained).await?;
    // Deleting the checkpoints and the sealer's state too does not help.
    env.exec("DELETE FROM operation_log_checkpoints").await?;
    std::fs::remove_file(env.keys().join(oplog::STATE_FILE))?;
    expect_broken(&env, 6, OpDamage::Rechained).await?;
    Ok(())
}
both_backends!(rechained_edit_is_named: rechain_sqlite, rechain_postgres);

async fn deleted_checkpoint_is_named(backend: Backend) -> Result<()> {
    let Some(env) = sealed_ten(backend, "deleted_checkpoint_is_named").await? else {
        return Ok(());
    };
    env.drop_guards().await?;
    // The newest: only the sealer's state file remembers it.
    env.exec("DELETE FROM operation_log_checkpoints WHERE seq = 10")
        .await?;
    expect_broken(&env, 10, OpDamage::CheckpointMissing).await?;
    let log = env.log().await?;
    assert!(
        log.checkpoint().await.is_err(),
        "sealed over a deleted checkpoint"
    );
    log.close().await;

    let Some(env) = sealed_ten(backend, "deleted_checkpoint_is_named").await? else {
        return Ok(());
    };
    env.drop_guards().await?;
    // One in the middle: the next checkpoint names it.
    env.exec("DELETE FROM operation_log_checkpoints WHERE seq = 4")
        .await?;
    expect_broken(&env, 4, OpDamage::CheckpointMissing).await?;
    // A forged one (a flipped signature byte) is named as forged.
    env.exec("INSERT INTO operation_log_checkpoints (seq, head_hash, prev_seq, signed_at, key_id, signature) \
               SELECT 4, head_hash, 0, signed_at, key_id, signature FROM operation_log_checkpoints WHERE seq = 10")
        .await?;
    expect_broken(&env, 4, OpDamage::CheckpointForged).await?;
    Ok(())
}
both_backends!(deleted_checkpoint_is_named: checkpoint_sqlite, checkpoint_postgres);

// ----------------------------------------------------------------- secrets

/// Everything a console request around each action might carry; none of it
/// may reach the log.
struct Secrets {
    password: &'static str,
    new_password: &'static str,
    totp_secret: &'static str,
    totp_code: &'static str,
    item_value: &'static str,
    individual_number: &'static str,
}

const SECRETS: Secrets = Secrets {
    password: "Tr0ub4dor&3-kakehashi",
    new_password: "correct-horse-battery-staple-42",
    totp_secret: "JBSWY3DPEHPK3PXPKAKEHASHI",
    totp_code: "492039",
    item_value: "年収4321000円",
    individual_number: "123456789018",
};

impl Secrets {
    fn all(&self) -> [&'static str; 6] {
        [
            self.password,
            self.new_password,
            self.totp_secret,
            self.totp_code,
            self.item_value,
            self.individual_number,
        ]
    }
}

/// A console request as the people endpoints receive it.
struct Request {
    user_id: &'static str,
    org: &'static str,
    client: &'static str,
    password: &'static str,
    totp_code: &'static str,
    query_id: &'static str,
    released_values: Vec<&'static str>,
}

/// The entry a people endpoint logs for `action` of `req`: built from the
/// fields the entry has, which are never the secrets.
fn entry_for(action: OpAction, req: &Request) -> OpEntry {
    // The request's secrets are in scope, as they are in a handler.
    let _in_hand = (req.password, req.totp_code, &req.released_values);
    let (target, detail, result) = match action {
        OpAction::LoginFailed | OpAction::TotpFailed => {
            (None, None, OpResult::Refused(ErrorCode::Unauthenticated))
        }
        OpAction::AccountLocked => (None, None, OpResult::Refused(ErrorCode::AccountLocked)),
        OpAction::Approve => (Some(req.query_id.to_string()), None, OpResult::Success),
        OpAction::Reject => (
            Some(req.query_id.to_string()),
            Some("reason=not_eligible".into()),
            OpResult::Success,
        ),
        OpAction::RecordsSearch | OpAction::RecordsExport | OpAction::OplogSearch => (
            None,
            Some("since=2026-01-01 org=city-kawagoe".into()),
            OpResult::Success,
        ),
        OpAction::UserAdded
        | OpAction::UserReset
        | OpAction::UserDisabled
        | OpAction::NumberPrivilegeGranted
        | OpAction::NumberPrivilegeRevoked => (Some("kawagoe-op2".into()), None, OpResult::Success),
        OpAction::RoleGranted | OpAction::RoleRevoked => (
            Some("kawagoe-op2".into()),
            Some("role=operator".into()),
            OpResult::Success,
        ),
        OpAction::FlowListProposed | OpAction::FlowListApproved => {
            (Some("version=8".into()), None, OpResult::Success)
        }
        OpAction::OrgAdded
        | OpAction::OrgSuspended
        | OpAction::OrgActivated
        | OpAction::OrgPinned => (Some("city-kawaguchi".into()), None, OpResult::Success),
        _ => (None, None, OpResult::Success),
    };
    OpEntry {
        org: Some(org(req.org)),
        target,
        source: Some(req.client.into()),
        detail,
        ..OpEntry::new(req.user_id, action, result)
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Every cell of every operation-log table, as bytes.
async fn every_cell(env: &Env) -> Result<Vec<Vec<u8>>> {
    let mut cells = Vec::new();
    for table in [
        "operation_log",
        "operation_log_checkpoints",
        "operation_log_head",
    ] {
        let columns: Vec<(String, String)> =
            match env.pools() {
                Pools::Sqlite { read, .. } => {
                    sqlx::query_as(&format!(
                        "SELECT name, type FROM pragma_table_info('{table}')"
                    ))
                    .fetch_all(&read)
                    .await?
                }
                Pools::Postgres(pool) => sqlx::query_as(
                    "SELECT column_name::text, data_type::text FROM information_schema.columns \
                     WHERE table_name = $1 AND table_schema = current_schema()",
                )
                .bind(table)
                .fetch_all(&pool)
                .await?,
            };
        assert!(columns.len() >= 3, "no columns found for {table}");
        for (column, kind) in columns {
            let hex: Vec<Option<String>> = match env.pools() {
                Pools::Sqlite { read, .. } => {
                    sqlx::query_scalar(&format!("SELECT hex({column}) FROM {table}"))
                        .fetch_all(&read)
                        .await?
                }
                Pools::Postgres(pool) => {
                    let expr = if kind == "bytea" {
                        format!("encode({column}, 'hex')")
                    } else {
                        format!("encode(convert_to({column}::text, 'UTF8'), 'hex')")
                    };
                    sqlx::query_scalar(&format!("SELECT {expr} FROM {table}"))
                        .fetch_all(&pool)
                        .await?
                }
            };
            for cell in hex.into_iter().flatten() {
                cells.push(unhex(&cell).context("cell hex")?);
            }
        }
    }
    Ok(cells)
}

async fn stored_rows_hold_no_secrets(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend, "stored_rows_hold_no_secrets").await? else {
        return Ok(());
    };
    let log = env.log().await?;
    let req = Request {
        user_id: "kawagoe-op1",
        org: "city-kawagoe",
        client: "198.51.100.23",
        password: SECRETS.password,
        totp_code: SECRETS.totp_code,
        query_id: "q-7f3a9c",
        released_values: vec![SECRETS.item_value, SECRETS.individual_number],
    };
    for action in OpAction::ALL {
        log.append(entry_for(*action, &req)).await?;
    }
    // Host commands too.
    log.append(OpEntry {
        org: Some(org("city-kawaguchi")),
        target: Some("city-kawaguchi".into()),
        ..OpEntry::new("host:root", OpAction::OrgSuspended, OpResult::Success)
    })
    .await?;
    log.close().await;
    let stored = env.all().await?;
    let actions: BTreeSet<OpAction> = stored.iter().map(|r| r.action).collect();
    assert_eq!(
        actions.len(),
        OpAction::ALL.len(),
        "an action was not logged"
    );
    let cells = every_cell(&env).await?;
    // Ten columns of every entry are never empty here (NULLs are not cells).
    assert!(cells.len() >= 10 * stored.len(), "too few cells read");
    // The dump does see what was logged (so the search below can fail).
    assert!(cells.iter().any(|c| c.windows(8).any(|w| w == b"q-7f3a9c")));
    for secret in SECRETS.all() {
        let bytes = secret.as_bytes();
        assert!(
            !cells
                .iter()
                .any(|c| c.windows(bytes.len()).any(|w| w == bytes)),
            "a secret ({} bytes) is stored in the operation log",
            bytes.len()
        );
    }
    Ok(())
}
both_backends!(stored_rows_hold_no_secrets: secrets_sqlite, secrets_postgres);

// ----------------------------------------------------------- the host CLI

fn broker_cli(env: &Env, user: Option<&str>, args: &[&str]) -> Result<Output> {
    let bin = kakehashi_tests::binaries::workspace_binary("kakehashi-broker", "kakehashi-broker")?;
    let mut cmd = std::process::Command::new(bin);
    cmd.args([args[0], "--config"])
        .arg(&env.config_path)
        .args(&args[1..])
        .env("KAKEHASHI_LOG", "warn");
    match user {
        Some(user) => cmd.env("USER", user),
        None => cmd.env_remove("USER"),
    };
    Ok(cmd.output()?)
}

async fn host_commands_are_logged(backend: Backend) -> Result<()> {
    let Some(env) = Env::new(backend, "host_commands_are_logged").await? else {
        return Ok(());
    };
    env.store
        .add_org(&NewOrg {
            id: org("city-kawagoe"),
            kind: OrgKind::Municipality,
            name: "川越市".into(),
            cert_fingerprint: None,
        })
        .await?;
    let out = broker_cli(
        &env,
        Some("ops-tanaka"),
        &["orgs", "suspend", "city-kawagoe"],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A refused command is logged as refused.
    let out = broker_cli(&env, None, &["orgs", "activate", "city-nowhere"])?;
    assert!(!out.status.success());

    let all = env.all().await?;
    let suspended = all
        .iter()
        .find(|r| r.action == OpAction::OrgSuspended)
        .context("no org_suspended entry")?;
    assert_eq!(suspended.actor, "host:ops-tanaka");
    assert_eq!(suspended.org.as_deref(), Some("city-kawagoe"));
    assert_eq!(suspended.target.as_deref(), Some("city-kawagoe"));
    assert_eq!(suspended.result, OpResult::Success);
    let refused = all
        .iter()
        .find(|r| r.action == OpAction::OrgActivated)
        .context("no org_activated entry")?;
    assert_eq!(refused.actor, "host:root");
    assert_eq!(refused.result, OpResult::Refused(ErrorCode::NotFound));
    // The commands sealed what they logged.
    match env.verify().await? {
        OpVerdict::Intact(s) => assert_eq!((s.entries, s.sealed_seq), (2, 2)),
        OpVerdict::Broken(f) => bail!("host commands left a broken log: {f}"),
    }

    // `oplog show` finds it (and logs the reading).
    let out = broker_cli(
        &env,
        Some("ops-tanaka"),
        &["oplog", "show", "--action", "org_suspended", "--json"],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Vec<OpRecord> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].actor, "host:ops-tanaka");
    let searches = env
        .count("SELECT COUNT(*) FROM operation_log WHERE action = 'oplog_search'")
        .await?;
    assert_eq!(searches, 1);

    // `oplog verify` passes, then fails after an edit, naming it.
    let out = broker_cli(&env, None, &["oplog", "verify"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.drop_guards().await?;
    env.exec("UPDATE operation_log SET action = 'org_activated' WHERE seq = 1")
        .await?;
    let out = broker_cli(&env, None, &["oplog", "verify"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "oplog verify passed an edited log");
    assert!(
        stderr.contains("first bad sequence 1") && stderr.contains("kind edited"),
        "{stderr}"
    );
    let out = broker_cli(&env, None, &["oplog", "verify", "--json"])?;
    assert!(!out.status.success());
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(verdict["verdict"], "broken");
    assert_eq!(
        (verdict["seq"].as_u64(), verdict["kind"].as_str()),
        (Some(1), Some("edited"))
    );
    Ok(())
}
both_backends!(host_commands_are_logged: host_sqlite, host_postgres);
