//! Evidence that holds (docs/evidence.md): each attack on the provision
//! records, made the way a database writer can make it, and the mechanism
//! that detects it — the sealer's state file (a real broker refuses at start
//! and at its next checkpoint), and the real `kakehashi-broker records
//! verify` (the chain, the sealer's state, the checkpoint log, and the age
//! of records no checkpoint covers) — on SQLite and PostgreSQL.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use http::StatusCode;
use kakehashi_broker::records::{
    sealer_state, Finding, Outcome, RecordDraft, RecordLog, RecordsConfig, Verdict,
};
use kakehashi_broker::store::Pools;
use kakehashi_interfaces::OrgId;
use kakehashi_tests::binaries::workspace_binary;
use kakehashi_tests::{both_backends, Backend, BrokerOptions, TestBroker};
use tempfile::TempDir;

/// A broker whose sealer signs only when told, holding 20 records sealed at
/// 10 and 20; the checkpoint log lives in `outside` (other storage).
struct Case {
    broker: TestBroker,
    backend: Backend,
    outside: TempDir,
}

fn org(id: &str) -> Result<OrgId> {
    Ok(OrgId::new(id)?)
}

fn draft(i: u64) -> Result<RecordDraft> {
    Ok(RecordDraft {
        query_id: format!("q-{i:05}"),
        permit_id: Some(format!("p-{i:05}")),
        flow_id: Some("F0001".into()),
        flow_list_version: Some(3),
        procedure: Some("child_allowance".into()),
        requester: org("city-saitama")?,
        provider: Some(org("city-kawagoe")?),
        items: vec!["income.total".into(), "tax.resident".into()],
        requester_person_code: Some(format!("RQ{i:05}")),
        provider_person_code: Some(format!("PV{i:05}")),
        outcome: if i.is_multiple_of(2) {
            Outcome::Provided
        } else {
            Outcome::Denied {
                reason: "not_on_flow_list".into(),
            }
        },
        approver: None,
    })
}

/// What `records verify --json` said.
struct Verified {
    ok: bool,
    json: serde_json::Value,
    output: String,
}

impl Verified {
    /// `chain:<failure>` for the chain's own failures, else the damage kind.
    fn kind(&self) -> String {
        let damage = &self.json["damage"];
        match damage["kind"].as_str() {
            Some("chain") => match &damage["failure"] {
                serde_json::Value::String(s) => format!("chain:{s}"),
                serde_json::Value::Object(o) => {
                    format!("chain:{}", o.keys().next().cloned().unwrap_or_default())
                }
                other => format!("chain:{other}"),
            },
            Some(kind) => kind.to_string(),
            None => "intact".into(),
        }
    }

    fn seq(&self) -> u64 {
        self.json["seq"].as_u64().unwrap_or(0)
    }

    /// Fails unless verification failed at `seq` with `kind`, and said so.
    fn failed(&self, seq: u64, kind: &str) -> Result<()> {
        if self.ok || self.kind() != kind || self.seq() != seq {
            bail!(
                "expected a failure at {seq} ({kind}), got ok={} {} at {}: {}",
                self.ok,
                self.kind(),
                self.seq(),
                self.output
            );
        }
        if !self.output.contains(&format!("sequence {seq}")) {
            bail!("the message does not name sequence {seq}: {}", self.output);
        }
        Ok(())
    }

    fn passed(&self) -> Result<()> {
        if !self.ok {
            bail!("verification failed: {}", self.output);
        }
        Ok(())
    }
}

impl Case {
    async fn new(backend: Backend) -> Result<Option<Case>> {
        Case::recorded(backend, None).await
    }

    /// [`Case::new`], with records 1 to 10 recorded at `first_ten_at` when
    /// given (long expired, for a lawful purge).
    async fn recorded(
        backend: Backend,
        first_ten_at: Option<time::OffsetDateTime>,
    ) -> Result<Option<Case>> {
        let outside = tempfile::tempdir()?;
        let records = RecordsConfig {
            checkpoint_interval_ms: 3_600_000,
            purge_interval_secs: 0,
            person_index_interval_ms: 0,
            checkpoint_log: Some(outside.path().join("checkpoints.jsonl")),
            ..RecordsConfig::default()
        };
        let Some(broker) = TestBroker::start_with(BrokerOptions {
            backend,
            records,
            ..BrokerOptions::default()
        })
        .await?
        else {
            return Ok(None);
        };
        let case = Case {
            broker,
            backend,
            outside,
        };
        let log = case.log();
        for i in 1..=20 {
            match first_ten_at.filter(|_| i <= 10) {
                Some(at) => log.append_with_clock(draft(i)?, at).await?,
                None => log.append(draft(i)?).await?,
            };
            if i == 10 {
                assert_eq!(log.seal().await?, Some(10));
            }
        }
        assert_eq!(log.seal().await?, Some(20));
        let storage = match (
            &case.broker.config.storage.sqlite,
            &case.broker.config.storage.postgres_url,
        ) {
            (Some(path), _) => format!("sqlite = {:?}", path.display().to_string()),
            (_, Some(url)) => format!("postgres_url = {url:?}"),
            _ => bail!("no storage"),
        };
        // Two configs for the command line: the checkpoint interval decides
        // how old an unsealed record may be (twice the interval).
        for (name, interval) in [("long.toml", 3_600_000), ("short.toml", 100)] {
            std::fs::write(
                case.outside.path().join(name),
                format!(
                    "[listen]\naddress = \"127.0.0.1:0\"\n[tls]\ncert = \"none.crt\"\nkey = \"none.key\"\nclient_ca = [\"none.crt\"]\n[storage]\n{storage}\n[keys]\ndir = {:?}\n[records]\ncheckpoint_interval_ms = {interval}\n",
                    case.broker.config.keys.dir.display().to_string()
                ),
            )?;
        }
        Ok(Some(case))
    }

    fn log(&self) -> std::sync::Arc<RecordLog> {
        self.broker.broker.state().records.clone()
    }

    fn pools(&self) -> Pools {
        self.broker.store.pools()
    }

    fn checkpoint_log(&self) -> PathBuf {
        self.outside.path().join("checkpoints.jsonl")
    }

    fn state_file(&self) -> PathBuf {
        self.broker.config.keys.dir.join(sealer_state::STATE_FILE)
    }

    async fn exec(&self, sql: &str) -> Result<()> {
        kakehashi_tests::sql_exec(&self.pools(), sql).await
    }

    async fn count(&self, sql: &str) -> Result<i64> {
        kakehashi_tests::sql_count(&self.pools(), sql).await
    }

    /// `kakehashi-broker records --config … <args>` as a real subprocess.
    fn broker_cli(&self, config: &str, args: &[&str]) -> Result<std::process::Output> {
        let config = self.outside.path().join(config);
        Ok(
            Command::new(workspace_binary("kakehashi-broker", "kakehashi-broker")?)
                .arg("records")
                .arg("--config")
                .arg(&config)
                .args(args)
                .env("KAKEHASHI_LOG", "error")
                .output()?,
        )
    }

    /// `records verify --json`: with the one-hour interval (`short`: 100 ms,
    /// so records older than 200 ms must be sealed), and with the checkpoint
    /// log when `with_log`.
    fn verify(&self, short: bool, with_log: bool) -> Result<Verified> {
        let log = self.checkpoint_log().display().to_string();
        let mut args = vec!["verify", "--json"];
        if with_log {
            args.extend(["--checkpoint-log", log.as_str()]);
        }
        let out = self.broker_cli(if short { "short.toml" } else { "long.toml" }, &args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let output = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let json = serde_json::from_str(&stdout)
            .with_context(|| format!("records verify printed no JSON: {output}"))?;
        Ok(Verified {
            ok: out.status.success(),
            json,
            output,
        })
    }

    /// What the stored chain says on its own, without the sealer's state
    /// and the checkpoint log.
    async fn chain_alone(&self) -> Result<Verdict> {
        let keys = kakehashi_broker::keys::trusted_keys(&self.broker.config.keys.dir)?;
        Ok(kakehashi_broker::records::verify_store(&self.pools(), &keys).await?)
    }

    /// Recomputes every stored chain hash from `from` on, with the public
    /// construction (as anyone with the database can), and moves the head
    /// row to the last record.
    async fn rechain_from(&self, from: u64) -> Result<()> {
        kakehashi_tests::audit::rechain_from(&self.pools(), from).await?;
        Ok(())
    }

    /// Deletes record `seq` and renumbers the ones after it (sequences must
    /// stay gap-free), then re-chains from there.
    async fn delete_and_rechain(&self, seq: u64) -> Result<()> {
        self.exec(&format!(
            "DELETE FROM records WHERE seq = {seq};
             UPDATE records SET seq = -(seq - 1) WHERE seq > {seq};
             UPDATE records SET seq = -seq WHERE seq < 0;"
        ))
        .await?;
        self.rechain_from(seq).await
    }

    /// Stops and starts the broker on the same database and key directory.
    async fn restart(self) -> Result<Case> {
        let Case {
            broker,
            backend,
            outside,
        } = self;
        Ok(Case {
            broker: broker.restart().await?,
            backend,
            outside,
        })
    }

    fn refusal(&self) -> Option<kakehashi_broker::records::Refusal> {
        self.log().sealer_refusal()
    }

    /// The broker refuses queries with `unavailable`, `/readyz` fails and
    /// the metric names the finding's kind and first bad sequence.
    async fn refuses_queries(&self, kind: &str, seq: u64) -> Result<()> {
        let mut client = self.broker.client("city-saitama").await?;
        let ready = client.get("/readyz").await?;
        assert_ne!(
            ready.status,
            StatusCode::OK,
            "/readyz passed while refusing"
        );
        let posted = client.post("/v1/queries", "{}").await?;
        assert_eq!(
            posted.error_code().as_deref(),
            Some("unavailable"),
            "a query was not refused: {:?}",
            posted.status
        );
        let metrics = self.broker.broker.state().metrics.encode();
        let sample = format!("kakehashi_records_sealer_refusal{{kind=\"{kind}\"}} {seq}");
        assert!(
            metrics.lines().any(|l| l == sample),
            "no metric line {sample:?}"
        );
        Ok(())
    }

    async fn ready(&self) -> Result<bool> {
        let mut client = self.broker.client("city-saitama").await?;
        Ok(client.get("/readyz").await?.status == StatusCode::OK)
    }
}

// ------------------------------------------------------------ the baseline

/// An untouched log verifies against everything; every checkpoint is in
/// the log and the state file; an unsealed record older than twice the
/// checkpoint interval fails verification (it used to pass as "unsealed").
async fn intact_and_unsealed(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    let v = case.verify(true, true)?;
    v.passed()?;
    assert_eq!(v.json["checkpoint_log_entries"], 2);
    assert_eq!(v.json["sealer_state_seq"], 20);
    let log = std::fs::read_to_string(case.checkpoint_log())?;
    assert_eq!(log.lines().count(), 2, "one line per checkpoint");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(case.state_file())?.permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the state file is private");
    assert!(case.ready().await?);

    // One record nobody sealed: young, it passes; older than twice the
    // interval, it fails.
    case.log().append(draft(21)?).await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    case.verify(false, true)?.passed()?;
    case.verify(true, true)?.failed(21, "unsealed")?;
    Ok(())
}
both_backends!(intact_and_unsealed: intact_sqlite, intact_postgres);

// --------------------------------------- attacks the chain alone detects

/// Edit, delete, swap: `records verify` names the record from the chain.
/// They lie before the sealer's signed head and leave it in place, so the
/// broker (which guards only that what it signs extends its last head)
/// keeps running: detecting them is verification's job.
async fn edit_delete_swap(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    case.exec("UPDATE records SET items = 'income.total' WHERE seq = 7")
        .await?;
    case.verify(false, true)?.failed(7, "chain:hash_mismatch")?;
    case.exec("UPDATE records SET items = 'income.total tax.resident' WHERE seq = 7")
        .await?;
    case.verify(false, true)?.passed()?;

    case.exec(
        "UPDATE records SET seq = -1 WHERE seq = 4;
         UPDATE records SET seq = 4 WHERE seq = 9;
         UPDATE records SET seq = 9 WHERE seq = -1;",
    )
    .await?;
    case.verify(false, true)?.failed(4, "chain:hash_mismatch")?;

    case.exec("DELETE FROM records WHERE seq = 2").await?;
    case.verify(false, true)?.failed(2, "chain:missing")?;
    let case = case.restart().await?;
    assert_eq!(case.refusal(), None);
    assert!(case.ready().await?);
    Ok(())
}
both_backends!(edit_delete_swap: edit_delete_swap_sqlite, edit_delete_swap_postgres);

// ---------------------------- attacks the sealer's state detects as well

/// Insert (renumbering the rest): the chain names it, and the record the
/// sealer signed last no longer has its hash, so a restarted broker refuses.
async fn insert(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    let columns = "recorded_at, query_id, permit_id, flow_id, flow_list_version, procedure_code, \
         requester, provider, items, requester_code, requester_salt, provider_code, provider_salt, \
         outcome, reason, approver, detail, hash";
    let columns = match backend {
        Backend::Sqlite => columns.to_string(),
        Backend::Postgres => format!("{columns}, part_month"),
    };
    case.exec(&format!(
        "UPDATE records SET seq = -seq WHERE seq >= 12;
         UPDATE records SET seq = 1 - seq WHERE seq < 0;
         INSERT INTO records (seq, {columns}) SELECT 12, {columns} FROM records WHERE seq = 3;
         UPDATE records_head SET seq = 21;"
    ))
    .await?;
    case.verify(false, true)?
        .failed(12, "chain:hash_mismatch")?;
    let case = case.restart().await?;
    let refusal = case.refusal().context("the broker did not notice")?;
    assert_eq!((refusal.seq, refusal.finding.name()), (12, "rechained"));
    case.refuses_queries("rechained", 12).await?;
    Ok(())
}
both_backends!(insert: insert_sqlite, insert_postgres);

/// Truncate the tail and rewind the head: the chain (its checkpoint at 20
/// is left) and the sealer's state both name 16; the broker refuses.
async fn truncate_tail(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    case.exec(
        "DELETE FROM records WHERE seq > 15;
         UPDATE records_head SET seq = 15, hash = (SELECT hash FROM records WHERE seq = 15);",
    )
    .await?;
    case.verify(false, true)?.failed(16, "chain:truncated")?;
    // Deleting the checkpoint too leaves the chain content; the sealer's
    // state and the checkpoint log are not.
    case.exec("DELETE FROM record_checkpoints WHERE seq > 15")
        .await?;
    assert!(case.chain_alone().await?.is_intact());
    case.verify(false, false)?.failed(16, "rewound")?;
    let case = case.restart().await?;
    let refusal = case.refusal().context("the broker did not notice")?;
    assert_eq!(
        refusal.finding,
        Finding::Rewound {
            signed: 20,
            head: 15
        }
    );
    case.refuses_queries("rewound", 16).await?;
    Ok(())
}
both_backends!(truncate_tail: truncate_sqlite, truncate_postgres);

/// Delete records the running writer committed but no checkpoint covers
/// yet and set the head back: the next checkpoint refuses (the writer knows
/// what it committed), rather than signing the shorter history.
async fn truncate_unsealed_tail(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    let log = case.log();
    for i in 21..=25 {
        log.append(draft(i)?).await?;
    }
    case.exec(
        "DELETE FROM records WHERE seq > 22;
         UPDATE records_head SET seq = 22, hash = (SELECT hash FROM records WHERE seq = 22);",
    )
    .await?;
    let refused = log.seal().await;
    assert!(refused.is_err(), "signed a head behind what was committed");
    assert_eq!(
        case.count("SELECT COUNT(*) FROM record_checkpoints WHERE seq > 20")
            .await?,
        0
    );
    let refusal = case.refusal().context("no refusal")?;
    assert_eq!(
        (refusal.seq, refusal.finding),
        (23, Finding::CommittedRewritten)
    );
    case.refuses_queries("committed_rewritten", 23).await?;
    Ok(())
}
both_backends!(truncate_unsealed_tail: truncate_unsealed_sqlite, truncate_unsealed_postgres);

/// A purge record (as a purge appends it) stating a cut at `cut_seq`.
fn purge_record(cut_seq: u64, cut_hash: &str) -> Result<RecordDraft> {
    Ok(RecordDraft::new(
        "purge-forged",
        org(kakehashi_broker::records::SYSTEM_ORG)?,
        Outcome::Purge {
            before: "2019-01-01T00:00:00.000000Z".into(),
            first_seq: 1,
            cut_seq,
            count: cut_seq,
            cut_hash: cut_hash.into(),
            actor: "retention-task".into(),
        },
    ))
}

/// Delete everything signed and set the cut there, with a purge record
/// confirming it, as a purge would: the chain alone verifies from the
/// forged cut. No lawful purge takes records signed two seconds ago, so the
/// sealer refuses instead of checking on from the cut, and `records verify`
/// names the head its state file says was signed, and when.
async fn purge_forged_past_the_signed_head(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    let signed = sealer_state::read(&case.broker.config.keys.dir)?.context("no sealer state")?;
    let signed_at = signed.checkpoint.context("no checkpoint")?.at;
    case.exec(
        "UPDATE records_head SET cut_seq = 20, cut_hash = (SELECT hash FROM records WHERE seq = 20);
         DELETE FROM record_checkpoints;
         DELETE FROM records WHERE seq <= 20;",
    )
    .await?;
    let log = case.log();
    log.append(purge_record(20, &signed.head_hash)?).await?;
    assert!(
        case.chain_alone().await?.is_intact(),
        "the forgery is sound"
    );

    let v = case.verify(false, false)?;
    v.failed(20, "purged_unexpired")?;
    assert_eq!(v.json["damage"]["signed_at"], signed_at.as_str());
    assert!(
        v.output.contains(&format!("signed at {signed_at}")),
        "the message does not say when 20 was signed: {}",
        v.output
    );
    // The checkpoint log's lines all lie at or before the cut: it adds nothing.
    case.verify(false, true)?.failed(20, "purged_unexpired")?;

    assert!(log.seal().await.is_err(), "sealed after a forged purge");
    let refusal = case.refusal().context("no refusal")?;
    assert_eq!(
        (refusal.seq, refusal.finding),
        (20, Finding::PurgedUnexpired { signed: 20 })
    );
    case.refuses_queries("purged_unexpired", 20).await?;
    Ok(())
}
both_backends!(purge_forged_past_the_signed_head: forged_purge_sqlite, forged_purge_postgres);

/// A lawful purge of records recorded in 2018 passes `records verify` (the
/// sealer signs the purge record at once, past the cut), and so does a
/// state file that names a head at the cut signed in 2018, before the
/// retention period began (a node that signed nothing since); the same
/// head signed today is a forged purge.
async fn purge_lawful_passes_verify(backend: Backend) -> Result<()> {
    let old = time::macros::datetime!(2018-01-15 10:00 UTC);
    let Some(case) = Case::recorded(backend, Some(old)).await? else {
        return Ok(());
    };
    let report = case.log().purge_expired("ops-tanaka").await?;
    assert_eq!((report.cut_seq, report.purge_record_seq), (10, Some(21)));
    let v = case.verify(false, true)?;
    v.passed()?;
    assert_eq!(v.json["sealer_state_seq"], 21);
    assert_eq!(case.refusal(), None);

    // The head at the cut, as the checkpoint log has it (its first line).
    let log = std::fs::read_to_string(case.checkpoint_log())?;
    let line: serde_json::Value =
        serde_json::from_str(log.lines().next().context("empty checkpoint log")?)?;
    assert_eq!(line["seq"], 10);
    let at_cut = |at: &str| -> Result<sealer_state::SealerState> {
        Ok(sealer_state::SealerState {
            seq: 10,
            head_hash: line["head_hash"].as_str().context("head_hash")?.into(),
            checkpoint: Some(sealer_state::StateCheckpoint {
                at: at.into(),
                key_id: line["key_id"].as_str().context("key_id")?.into(),
                signature: line["signature"].as_str().context("signature")?.into(),
            }),
            accepted: None,
        })
    };
    let keys = &case.broker.config.keys.dir;
    sealer_state::accept(keys, &at_cut("2018-01-15T10:00:02.000000Z")?)?;
    case.verify(false, false)?.passed()?;
    let today = line["at"].as_str().context("at")?;
    sealer_state::accept(keys, &at_cut(today)?)?;
    case.verify(false, false)?.failed(10, "purged_unexpired")?;
    Ok(())
}
both_backends!(purge_lawful_passes_verify: lawful_purge_sqlite, lawful_purge_postgres);

/// Delete a record and re-chain, checkpoints kept: the checkpoints name
/// it; the running broker's next checkpoint refuses (its signed head at 20
/// is gone), and answers no more queries.
async fn delete_and_rechain(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    case.delete_and_rechain(5).await?;
    assert_eq!(case.count("SELECT MAX(seq) FROM records").await?, 19);
    let v = case.verify(false, false)?;
    assert!(!v.ok && v.kind().starts_with("chain:"), "{}", v.output);
    // The broker is running: its writer appends after the forged head,
    // and the next checkpoint finds the chain no longer leads from 20.
    let log = case.log();
    log.append(draft(99)?).await?;
    let refused = log.seal().await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not the head the sealer signed")),
        "sealed a re-chained log: {refused:?}"
    );
    assert_eq!(
        case.count("SELECT COUNT(*) FROM record_checkpoints WHERE seq > 20")
            .await?,
        0
    );
    let refusal = case.refusal().context("no refusal")?;
    assert_eq!(refusal.finding.name(), "rechained");
    case.refuses_queries("rechained", refusal.seq).await?;
    Ok(())
}
both_backends!(delete_and_rechain: rechain_sqlite, rechain_postgres);

/// Edit, re-chain and delete every checkpoint: the chain alone is content
/// (what `records verify` used to say). The sealer's state names it, so
/// does the checkpoint log; and without the state file, the age rule.
/// The running broker refuses at its next checkpoint.
async fn rechain_and_delete_checkpoints(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    case.exec("UPDATE records SET items = 'income.total' WHERE seq = 5")
        .await?;
    case.rechain_from(5).await?;
    case.exec("DELETE FROM record_checkpoints").await?;
    assert!(case.chain_alone().await?.is_intact(), "the attack is sound");
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;

    // The sealer's state: the hash at 20 is not the one it signed; no
    // checkpoint is left to narrow it down, so from 1.
    case.verify(false, false)?.failed(1, "rechained")?;
    let v = case.verify(false, true)?;
    v.failed(1, "rechained")?;
    // The checkpoint log alone (the state file moved away as well).
    let moved = case.outside.path().join("state.moved");
    std::fs::rename(case.state_file(), &moved)?;
    let v = case.verify(false, true)?;
    v.failed(1, "rechained")?;
    assert_eq!(v.json["damage"]["kept_in"], "checkpoint_log");
    // Neither: only the age of the unsealed records is left, and it fails.
    case.verify(true, false)?.failed(1, "unsealed")?;
    case.verify(false, false)?.passed()?;
    std::fs::rename(&moved, case.state_file())?;

    // The running broker's writer knows the hash it committed at 20.
    let refused = case.log().seal().await;
    assert!(refused.is_err(), "sealed a re-chained log");
    assert_eq!(
        case.count("SELECT COUNT(*) FROM record_checkpoints")
            .await?,
        0
    );
    let refusal = case.refusal().context("no refusal")?;
    assert_eq!(
        (refusal.seq, refusal.finding),
        (20, Finding::CommittedRewritten)
    );
    case.refuses_queries("committed_rewritten", 20).await?;
    Ok(())
}
both_backends!(rechain_and_delete_checkpoints: rechain_nocp_sqlite, rechain_nocp_postgres);

/// Re-chain, delete the checkpoints and restart: the restarted broker signs
/// nothing and refuses, until an administrator runs the logged
/// `records accept-head`; the checkpoint log still holds the old history.
async fn rechain_delete_checkpoints_restart(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    case.exec("UPDATE records SET items = 'income.total' WHERE seq = 15")
        .await?;
    case.rechain_from(15).await?;
    case.exec("DELETE FROM record_checkpoints").await?;
    let case = case.restart().await?;
    let refusal = case.refusal().context("the restarted broker signed on")?;
    assert_eq!(refusal.finding, Finding::Rechained { signed: 20 });
    case.refuses_queries("rechained", refusal.seq).await?;
    assert!(case.log().seal().await.is_err());
    assert_eq!(
        case.count("SELECT COUNT(*) FROM record_checkpoints")
            .await?,
        0,
        "the broker signed the forged head"
    );

    let set_aside = sealer_state::read(&case.broker.config.keys.dir)?.context("no sealer state")?;
    let accepted = case.broker_cli(
        "long.toml",
        &["accept-head", "--reason", "restored after incident 42"],
    )?;
    assert!(
        accepted.status.success(),
        "accept-head: {}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert_eq!(
        case.count(
            "SELECT COUNT(*) FROM operation_log WHERE action = 'records_head_accepted' \
             AND result = 'success'"
        )
        .await?,
        1,
        "accept-head is not in the operation log"
    );
    // The head it set aside stays on record with its hash, in the log and
    // in the state file's acceptance.
    assert_eq!(
        case.count(&format!(
            "SELECT COUNT(*) FROM operation_log WHERE action = 'records_head_accepted' \
             AND detail LIKE '%previous={}:{}%'",
            set_aside.seq, set_aside.head_hash
        ))
        .await?,
        1
    );
    let acceptance = sealer_state::read(&case.broker.config.keys.dir)?
        .and_then(|s| s.accepted)
        .context("no acceptance kept")?;
    assert_eq!(
        (acceptance.previous_seq, acceptance.previous_hash),
        (Some(set_aside.seq), Some(set_aside.head_hash))
    );
    // The running broker picks the acceptance up at its next checkpoint.
    assert_eq!(case.log().seal().await?, Some(20));
    assert_eq!(case.refusal(), None);
    assert!(case.ready().await?);
    case.verify(false, false)?.passed()?;
    // The checkpoint log remembers what was signed before: the checkpoint
    // at 10 (deleted) and the head at 20 (re-chained).
    let v = case.verify(false, true)?;
    v.failed(10, "checkpoint_missing")?;
    Ok(())
}
both_backends!(rechain_delete_checkpoints_restart: restart_sqlite, restart_postgres);

/// An older backup restored under a newer sealer state (the database as it
/// was when 10 records were sealed): self-consistent, but behind what was
/// signed. A missing state file over a database with checkpoints is a
/// finding too.
async fn older_backup_and_missing_state(backend: Backend) -> Result<()> {
    let Some(case) = Case::new(backend).await? else {
        return Ok(());
    };
    case.exec(
        "DELETE FROM records WHERE seq > 10;
         DELETE FROM record_checkpoints WHERE seq > 10;
         UPDATE records_head SET seq = 10, hash = (SELECT hash FROM records WHERE seq = 10);",
    )
    .await?;
    assert!(case.chain_alone().await?.is_intact(), "the backup is sound");
    case.verify(false, false)?.failed(11, "rewound")?;
    let v = case.verify(false, true)?;
    assert!(!v.ok && v.kind() == "rewound", "{}", v.output);
    let case = case.restart().await?;
    let refusal = case.refusal().context("the broker did not notice")?;
    assert_eq!(
        refusal.finding,
        Finding::Rewound {
            signed: 20,
            head: 10
        }
    );
    case.refuses_queries("rewound", 11).await?;

    // The state file removed as well: still a finding, since checkpoints exist.
    std::fs::remove_file(case.state_file())?;
    case.verify(false, false)?.failed(1, "state_missing")?;
    let case = case.restart().await?;
    let refusal = case.refusal().context("the broker did not notice")?;
    assert_eq!(refusal.finding, Finding::StateMissing);
    case.refuses_queries("state_missing", 1).await?;
    Ok(())
}
both_backends!(older_backup_and_missing_state: backup_sqlite, backup_postgres);
