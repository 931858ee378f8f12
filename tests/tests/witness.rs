//! Every org is a witness (issue: evidence that holds): each answer carries
//! the broker's latest signed checkpoint, the `kakehashi` CLI keeps the
//! checkpoints a profile has seen, and `kakehashi audit witness` holds the
//! broker's current log against them — a history rewritten before a
//! checkpoint the org has seen is detected by that org, even when the
//! rewritten log is signed with the broker's own key. Real broker, real
//! CLI subprocesses, SQLite and PostgreSQL.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http::StatusCode;
use kakehashi_tests::cli::{CliUser, PLAIN};
use kakehashi_tests::exchange::{exchange_broker, scenario};
use kakehashi_tests::{both_backends, Backend, Protocol, TestBroker, TestClient};

/// One org's `kakehashi` home with a profile for it.
struct Org(CliUser);

impl std::ops::Deref for Org {
    type Target = CliUser;
    fn deref(&self) -> &CliUser {
        &self.0
    }
}

impl Org {
    async fn new(broker: &TestBroker, org: &str) -> Result<Org> {
        let user = CliUser::new()?;
        user.add_profile(broker, org).await?;
        Ok(Org(user))
    }

    fn book(&self) -> PathBuf {
        self.home
            .path()
            .join("checkpoints")
            .join("union-saitama.json")
    }

    /// Sequences of the checkpoints the profile keeps.
    fn kept(&self) -> Result<Vec<u64>> {
        let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(self.book())?)?;
        Ok(kept["checkpoints"]
            .as_array()
            .context("checkpoints")?
            .iter()
            .filter_map(|k| k["checkpoint"]["seq"].as_u64())
            .collect())
    }
}

/// Seals the head and waits until answers carry that checkpoint.
async fn sealed(broker: &TestBroker) -> Result<u64> {
    let records = &broker.broker.state().records;
    let seq = records.seal().await?.context("nothing to seal")?;
    for _ in 0..100 {
        if records.latest_checkpoint().is_some_and(|c| c.seq >= seq) {
            return Ok(seq);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("answers do not carry checkpoint {seq} after 10 s")
}

async fn a_rewritten_history_is_caught_by_an_org_that_saw_it(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker(backend).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 3).await?;
    let org = Org::new(&broker, "union-saitama").await?;
    let query = |person: &str| {
        ["--profile", "union-saitama", "query", "--person", person]
            .into_iter()
            .chain(PLAIN)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let run_query = |person: String| {
        let args = query(&person);
        let org = &org;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            org.run(&args).await?.ok()
        }
    };
    run_query(s.union_codes[0].clone()).await?;
    let first = sealed(&broker).await?;
    // The answer carries the checkpoint; the profile keeps it.
    run_query(s.union_codes[1].clone()).await?;
    assert!(org.kept()?.contains(&first), "{:?}", org.kept()?);

    // Without pinned keys a witness proves nothing, and says so.
    let union = ["--profile", "union-saitama"];
    let run = org
        .run(&[&union[..], &["audit", "witness"]].concat())
        .await?;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("audit keys --pin"), "{run:?}");
    org.run(&[&union[..], &["audit", "keys", "--pin"]].concat())
        .await?
        .ok()?;

    // An untouched log extends what the org saw.
    let ok = org
        .run(&[&union[..], &["audit", "witness"]].concat())
        .await?
        .ok()?;
    assert!(ok.stdout.contains("consistent"), "{}", ok.stdout);
    run_query(s.union_codes[2].clone()).await?;
    let seen = sealed(&broker).await?;
    run_query(s.union_codes[0].clone()).await?;
    assert!(org.kept()?.contains(&seen), "{:?}", org.kept()?);
    let ok = org
        .run(&[&union[..], &["audit", "witness", "--json"]].concat())
        .await?
        .ok()?;
    let report: serde_json::Value = serde_json::from_str(&ok.stdout)?;
    assert_eq!(report["result"], "consistent", "{report}");
    let witnessed = report["current"]["seq"].as_u64().context("current seq")?;
    assert!(witnessed >= seen, "{report}");

    // Someone who can write the database and holds the sealer key rewrites
    // record 1 (before every checkpoint the org saw), re-chains the rest,
    // replaces the checkpoints and signs the new head with the broker's key.
    let pools = broker.store.pools();
    kakehashi_tests::sql_exec(
        &pools,
        "UPDATE records SET items = 'local_tax.income local_tax.everything' WHERE seq = 1",
    )
    .await?;
    let (head_seq, head) = kakehashi_tests::audit::rechain_from(&pools, 1).await?;
    kakehashi_tests::sql_exec(&pools, "DELETE FROM record_checkpoints").await?;
    kakehashi_tests::audit::sign_with_sealer_key(&pools, &broker.config.keys.dir, head_seq, head)
        .await?;
    let records = &broker.broker.state().records;
    for _ in 0..100 {
        if records
            .latest_checkpoint()
            .is_some_and(|c| c.head_hash.0 == head)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        records.latest_checkpoint().map(|c| c.head_hash.0),
        Some(head),
        "the broker publishes the forged checkpoint"
    );

    // The rewritten log is signed with the very key the org pinned — and
    // still does not extend the head the org kept.
    let run = org
        .run(&[&union[..], &["audit", "witness"]].concat())
        .await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("MISMATCH"), "{run:?}");
    assert!(run.stderr.contains("rewritten"), "{run:?}");
    assert!(
        run.stderr.contains(&format!("kept checkpoint {witnessed}")),
        "names the checkpoint the log contradicts: {run:?}"
    );
    Ok(())
}

both_backends!(
    a_rewritten_history_is_caught_by_an_org_that_saw_it: witness_sqlite,
    witness_postgres
);

/// The record keys and the chain are for registered orgs only, like every
/// exchange endpoint; a registered org reads them.
#[tokio::test]
async fn record_endpoints_refuse_unregistered_orgs() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cert = broker.pki.org_cert("city-nowhere")?;
    for path in ["/v1/record-keys", "/v1/record-chain?from=0"] {
        // A refused certificate is not served again on its connection.
        let mut stranger = TestClient::connect(
            broker.addr(),
            broker.pki.ca.cert_pem(),
            Some(&cert),
            Protocol::Http1,
        )
        .await?;
        let r = stranger.get(path).await?;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.error_code().as_deref(), Some("unknown_org"), "{path}");
    }
    let mut member = broker.client("city-saitama").await?;
    let r = member.get("/v1/record-keys").await?;
    assert_eq!(r.status, StatusCode::OK);
    let keys: kakehashi_interfaces::RecordKeySet = serde_json::from_slice(&r.body)?;
    let records = &broker.broker.state().records;
    assert_eq!(keys.keys[0].key_id.as_str(), records.sealer_key_id());
    assert_eq!(
        keys.keys[0].public_key.to_string(),
        records.sealer_public_key_hex()
    );
    assert!(keys.keys[0].current);
    // No checkpoint yet: nothing to witness.
    let r = member.get("/v1/record-chain?from=0").await?;
    assert_eq!(
        r.error_code().as_deref(),
        Some("not_found"),
        "{:?}",
        r.json()
    );
    let r = member.get("/v1/record-chain?from=x").await?;
    assert_eq!(r.error_code().as_deref(), Some("invalid_input"));
    Ok(())
}

/// An org that saw checkpoint S, and a database brought back to K < S:
/// either the tail cut (records, checkpoints and head after K) with the
/// broker restarted on it, or an older backup restored with the sealer's
/// state and every checkpoint removed, after which the broker goes on
/// recording and signs a new, longer history with its own key. Either way
/// `kakehashi audit witness` names the checkpoint the org kept.
async fn a_database_brought_back_is_caught_by_an_org_that_saw_more(
    backend: Backend,
    restore_backup: bool,
) -> Result<()> {
    let Some(broker) = exchange_broker(backend).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 3).await?;
    let org = Org::new(&broker, "union-saitama").await?;
    let union = ["--profile", "union-saitama"];
    let query = |person: String| {
        let org = &org;
        async move {
            org.run(&[
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
                &person,
                "--item",
                "local_tax.income",
            ])
            .await
        }
    };
    query(s.union_codes[0].clone()).await?.ok()?;
    let backup = sealed(&broker).await?;
    query(s.union_codes[1].clone()).await?.ok()?;
    query(s.union_codes[2].clone()).await?.ok()?;
    let seen = sealed(&broker).await?;
    assert!(seen > backup);
    // The answer carries checkpoint `seen`; the profile keeps it and
    // witnesses it against the untouched log.
    query(s.union_codes[0].clone()).await?.ok()?;
    assert!(org.kept()?.contains(&seen), "{:?}", org.kept()?);
    org.run(&[&union[..], &["audit", "keys", "--pin"]].concat())
        .await?
        .ok()?;
    org.run(&[&union[..], &["audit", "witness"]].concat())
        .await?
        .ok()?;

    let pools = broker.store.pools();
    kakehashi_tests::sql_exec(
        &pools,
        &format!(
            "DELETE FROM records WHERE seq > {backup};
             DELETE FROM record_checkpoints WHERE seq > {backup};
             UPDATE records_head SET seq = {backup},
                 hash = (SELECT hash FROM records WHERE seq = {backup});"
        ),
    )
    .await?;
    if restore_backup {
        // Whoever restored it also removed what the sealer remembered and
        // the checkpoints, so the broker starts as on a fresh database.
        kakehashi_tests::sql_exec(&pools, "DELETE FROM record_checkpoints").await?;
        std::fs::remove_file(
            broker
                .config
                .keys
                .dir
                .join(kakehashi_broker::records::sealer_state::STATE_FILE),
        )?;
    }
    // The flow list the broker was started with is gone; restart with a copy.
    let mut broker = broker;
    let flows = tempfile::tempdir()?;
    let flow_list = flows.path().join("flows.toml");
    std::fs::write(&flow_list, kakehashi_broker::policy::SAMPLE_FLOW_LIST)?;
    broker.config.exchange.flow_list = Some(flow_list);
    // The org's profile names the broker's port.
    broker.config.listen.address = broker.addr();
    let broker = broker.restart().await?;
    if restore_backup {
        // The broker records new queries past `seen` and signs them with
        // its own key: a different history under the same key.
        let records = broker.broker.state().records.clone();
        let union_code = s.union_codes[1].clone();
        let mut client = broker.client("union-saitama").await?;
        for _ in 0..(seen - backup + 2) {
            kakehashi_tests::exchange::income_of(&mut client, &union_code)
                .await?
                .map_err(|code| anyhow::anyhow!("query refused: {code}"))?;
        }
        let resealed = sealed(&broker).await?;
        assert!(resealed > seen, "{resealed} > {seen}");
        assert!(records.sealer_refusal().is_none());
    }
    let run = org
        .run(&[&union[..], &["audit", "witness"]].concat())
        .await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("MISMATCH"), "{run:?}");
    assert!(
        run.stderr.contains(&format!("kept checkpoint {seen}")),
        "names the checkpoint the log contradicts: {run:?}"
    );
    Ok(())
}

async fn a_cut_tail_is_caught_by_a_witness(backend: Backend) -> Result<()> {
    a_database_brought_back_is_caught_by_an_org_that_saw_more(backend, false).await
}
both_backends!(
    a_cut_tail_is_caught_by_a_witness: truncated_sqlite,
    truncated_postgres
);

async fn an_older_backup_is_caught_by_a_witness(backend: Backend) -> Result<()> {
    a_database_brought_back_is_caught_by_an_org_that_saw_more(backend, true).await
}
both_backends!(
    an_older_backup_is_caught_by_a_witness: backup_sqlite,
    backup_postgres
);
