//! Trusted time (issue: evidence that holds, item 5): with `[records]
//! tsa_url` every checkpoint is time-stamped by an RFC 3161 TSA — here a
//! real one, `openssl ts -reply` behind an HTTP responder — and the token
//! travels with the checkpoint into the database, the checkpoint log,
//! answers and exports, where `records verify`, `records verify-export` and
//! `kakehashi audit verify` check it offline against the TSA's certificate.
//! A TSA that is down costs checkpoints their tokens, never sealing or
//! answers. SQLite and PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use kakehashi_broker::records::{
    ExportFilter, ExportFormat, ExportRequest, Outcome, RecordDraft, RecordsConfig,
};
use kakehashi_interfaces::audit::{self, TimestampError, TsaCertificate};
use kakehashi_interfaces::OrgId;
use kakehashi_tests::binaries::workspace_binary;
use kakehashi_tests::cli::CliUser;
use kakehashi_tests::exchange::{exchange_broker_with, income_of, scenario};
use kakehashi_tests::tsa::{TestTsa, TsaKey};
use kakehashi_tests::{both_backends, Backend, BrokerOptions, TestBroker};

fn draft(i: u64) -> Result<RecordDraft> {
    let mut d = RecordDraft::new(
        format!("q-{i:05}"),
        OrgId::new("city-saitama")?,
        Outcome::Provided,
    );
    d.provider = Some(OrgId::new("city-kawagoe")?);
    d.items = vec!["income.total".into()];
    Ok(d)
}

/// `kakehashi-broker records …` as a real subprocess: (success, stdout + stderr).
fn broker_cli(args: &[&str]) -> Result<(bool, String)> {
    let (ok, stdout, stderr) = broker_cli_split(args)?;
    Ok((ok, format!("{stdout}{stderr}")))
}

/// [`broker_cli`] with stdout and stderr apart.
fn broker_cli_split(args: &[&str]) -> Result<(bool, String, String)> {
    let out = Command::new(workspace_binary("kakehashi-broker", "kakehashi-broker")?)
        .arg("records")
        .args(args)
        .env("KAKEHASHI_LOG", "error")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A config file for the `records` commands on `broker`'s store and keys.
fn config_file(broker: &TestBroker, dir: &Path) -> Result<PathBuf> {
    let storage = match (
        &broker.config.storage.sqlite,
        &broker.config.storage.postgres_url,
    ) {
        (Some(path), _) => format!("sqlite = {:?}", path.display().to_string()),
        (_, Some(url)) => format!("postgres_url = {url:?}"),
        _ => bail!("no storage"),
    };
    let path = dir.join("broker.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[tls]\ncert = \"none.crt\"\nkey = \"none.key\"\nclient_ca = [\"none.crt\"]\n[storage]\n{storage}\n[keys]\ndir = {:?}\n[records]\ncheckpoint_interval_ms = 3600000\n",
            broker.config.keys.dir.display().to_string()
        ),
    )?;
    Ok(path)
}

/// Rewrites the export bundle with the tokens of the checkpoints at `a` and `b` swapped.
fn swap_bundle_tokens(bundle: &Path, a: u64, b: u64) -> Result<()> {
    let text = std::fs::read_to_string(bundle)?;
    let mut lines: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let find = |lines: &[serde_json::Value], seq: u64| {
        lines
            .iter()
            .position(|l| l["type"] == "checkpoint" && l["seq"] == seq)
            .with_context(|| format!("no checkpoint line {seq} in the bundle"))
    };
    let (ia, ib) = (find(&lines, a)?, find(&lines, b)?);
    let ta = lines[ia]["timestamp"].clone();
    let tb = lines[ib]["timestamp"].clone();
    assert!(ta.is_string() && tb.is_string(), "both carry tokens");
    lines[ia]["timestamp"] = tb;
    lines[ib]["timestamp"] = ta;
    let out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(bundle, out.join("\n") + "\n")?;
    Ok(())
}

async fn checkpoints_carry_tokens_that_verify(backend: Backend) -> Result<()> {
    let tsa = TestTsa::start(TsaKey::P256).await?;
    let other_tsa = TestTsa::start(TsaKey::Rsa).await?;
    let records = RecordsConfig {
        checkpoint_interval_ms: 3_600_000,
        purge_interval_secs: 0,
        person_index_interval_ms: 0,
        tsa_url: Some(tsa.url()),
        tsa_cert: Some(tsa.cert_path()),
        ..RecordsConfig::default()
    };
    let Some(broker) = TestBroker::start_with(BrokerOptions {
        backend,
        records,
        ..BrokerOptions::default()
    })
    .await?
    else {
        return Ok(());
    };
    let log = broker.broker.state().records.clone();
    for i in 1..=10 {
        log.append(draft(i)?).await?;
        if i == 5 {
            assert_eq!(log.seal().await?, Some(5));
        }
    }
    assert_eq!(log.seal().await?, Some(10));
    assert!(tsa.requests() >= 2, "the TSA was asked for each checkpoint");
    let pools = broker.store.pools();
    assert_eq!(
        kakehashi_tests::sql_count(
            &pools,
            "SELECT COUNT(*) FROM record_checkpoints WHERE tsa_token IS NOT NULL"
        )
        .await?,
        2
    );
    // Answers carry the latest checkpoint, token included.
    let latest = log.latest_checkpoint().context("a latest checkpoint")?;
    assert_eq!(latest.seq, 10);
    let token = audit::decode_token(latest.timestamp.as_deref().context("a token")?);
    let cert = TsaCertificate::from_pem(&std::fs::read(tsa.cert_path())?)?;
    let info = audit::verify_token(
        &token,
        &audit::checkpoint_digest(&latest.to_checkpoint()),
        &cert,
    )?;
    assert!(info.gen_time.starts_with("20"), "{info:?}");

    let dir = tempfile::tempdir()?;
    let config = config_file(&broker, dir.path())?;
    let config = config.display().to_string();
    let tsa_pem = tsa.cert_path().display().to_string();
    let other_pem = other_tsa.cert_path().display().to_string();

    // records verify: the tokens verify against the TSA's certificate …
    let (ok, out) = broker_cli(&["--config", &config, "verify", "--tsa-cert", &tsa_pem])?;
    assert!(ok, "{out}");
    assert!(
        out.contains("time-stamp tokens: 2 checkpoints verified against the TSA certificate"),
        "{out}"
    );
    // … and not against another TSA's.
    let (ok, out) = broker_cli(&["--config", &config, "verify", "--tsa-cert", &other_pem])?;
    assert!(!ok, "{out}");
    assert!(out.contains("time-stamp token of checkpoint 5"), "{out}");
    assert!(out.contains("another TSA"), "{out}");

    // An export carries the tokens; both offline verifiers accept them and
    // show the TSA's time.
    let export = dir.path().join("export.jsonl");
    log.export(&ExportRequest {
        filter: ExportFilter::default(),
        format: ExportFormat::Jsonl,
        out: export.clone(),
        actor: "auditor".into(),
    })
    .await?;
    let export_path = export.display().to_string();
    let key = log.sealer_public_key_hex();
    let user = CliUser::new()?;
    let run = user
        .run(&[
            "audit",
            "verify",
            &export_path,
            "--trusted-key",
            &key,
            "--tsa-cert",
            &tsa_pem,
        ])
        .await?;
    assert_eq!(run.code, 0, "{run:?}");
    for seq in [5, 10] {
        assert!(
            run.stdout
                .contains(&format!("time-stamped: checkpoint {seq} at 20")),
            "{run:?}"
        );
    }
    let (ok, out) = broker_cli(&[
        "verify-export",
        &export_path,
        "--trusted-key",
        &key,
        "--tsa-cert",
        &tsa_pem,
    ])?;
    assert!(ok, "{out}");
    assert!(out.contains("checkpoint 5 time-stamped by TSA"), "{out}");

    // (c) Verified against another TSA's certificate: refused, naming the checkpoint.
    let run = user
        .run(&[
            "audit",
            "verify",
            &export_path,
            "--trusted-key",
            &key,
            "--tsa-cert",
            &other_pem,
        ])
        .await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("time-stamp verification FAILED"),
        "{run:?}"
    );
    assert!(run.stderr.contains("checkpoint 5"), "{run:?}");

    // (b) A checkpoint whose token belongs to another digest, in the export:
    // caught even without the TSA's certificate.
    swap_bundle_tokens(&audit::bundle_path_for(&export), 5, 10)?;
    let run = user
        .run(&["audit", "verify", &export_path, "--trusted-key", &key])
        .await?;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("checkpoint 5") && run.stderr.contains("another checkpoint"),
        "{run:?}"
    );
    let (ok, out) = broker_cli(&["verify-export", &export_path, "--trusted-key", &key])?;
    assert!(!ok && out.contains("another checkpoint"), "{out}");

    // … and in the database.
    kakehashi_tests::sql_exec(
        &pools,
        "UPDATE record_checkpoints SET tsa_token = \
         (SELECT tsa_token FROM record_checkpoints WHERE seq = 10) WHERE seq = 5",
    )
    .await?;
    for with_cert in [false, true] {
        let mut args = vec!["--config", config.as_str(), "verify", "--json"];
        if with_cert {
            args.extend(["--tsa-cert", tsa_pem.as_str()]);
        }
        let (ok, out, err) = broker_cli_split(&args)?;
        assert!(!ok, "{out}{err}");
        let json: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("{out}{err}"))?;
        assert_eq!(json["verdict"], "broken", "{json}");
        assert_eq!(json["seq"], 5, "{json}");
        assert_eq!(json["damage"]["kind"], "timestamp", "{json}");
        assert!(
            json["damage"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("another checkpoint")),
            "{json}"
        );
    }
    Ok(())
}
both_backends!(checkpoints_carry_tokens_that_verify: verify_sqlite, verify_postgres);

/// (d) The TSA is down: checkpoints are still signed (without tokens), every
/// checkpoint asks again, queries are answered, and `records verify` says
/// "no timestamp" without failing.
async fn a_tsa_that_is_down_blocks_nothing(backend: Backend) -> Result<()> {
    let mut tsa = TestTsa::start(TsaKey::P256).await?;
    let url = tsa.url();
    tsa.stop().await;
    let Some(broker) = exchange_broker_with(backend, |o| {
        o.records.tsa_url = Some(url);
        o.records.tsa_timeout_ms = 2_000;
        o.records.checkpoint_interval_ms = 3_600_000;
    })
    .await?
    else {
        return Ok(());
    };
    let mut s = scenario(&broker, 3).await?;
    let log = broker.broker.state().records.clone();
    for code in &s.union_codes.clone() {
        assert!(
            income_of(&mut s.union, code).await?.is_ok(),
            "a query is answered while the TSA is down"
        );
        let started = std::time::Instant::now();
        assert!(log.seal().await?.is_some(), "sealed without the TSA");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let pools = broker.store.pools();
    assert!(
        kakehashi_tests::sql_count(&pools, "SELECT COUNT(*) FROM record_checkpoints").await? >= 3
    );
    assert_eq!(
        kakehashi_tests::sql_count(
            &pools,
            "SELECT COUNT(*) FROM record_checkpoints WHERE tsa_token IS NOT NULL"
        )
        .await?,
        0
    );
    let metrics = broker.broker.state().metrics.encode();
    let failed = metrics
        .lines()
        .find(|l| l.contains("records_checkpoint_timestamps_total{result=\"failed\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no failed-timestamp metric in\n{metrics}"))?;
    assert!(failed >= 3.0, "each checkpoint asked again: {failed}");

    // Verification says "no timestamp" and passes: the Ed25519 checkpoints
    // still hold the chain.
    let other = TestTsa::start(TsaKey::P256).await?;
    let dir = tempfile::tempdir()?;
    let config = config_file(&broker, dir.path())?.display().to_string();
    let pem = other.cert_path().display().to_string();
    let (ok, out) = broker_cli(&["--config", &config, "verify", "--tsa-cert", &pem])?;
    assert!(ok, "{out}");
    assert!(out.contains("no timestamp on"), "{out}");
    Ok(())
}
both_backends!(a_tsa_that_is_down_blocks_nothing: down_sqlite, down_postgres);

/// The pure verifier on tokens the real `openssl ts` made: ECDSA P-256 and
/// RSA, right digest, another digest, another TSA, a tampered token.
#[tokio::test]
async fn the_verifier_checks_real_openssl_tokens() -> Result<()> {
    let digest = [0x5au8; 32];
    let other_digest = [0xa5u8; 32];
    let ec = TestTsa::start(TsaKey::P256).await?;
    let rsa = TestTsa::start(TsaKey::Rsa).await?;
    let ec_cert = TsaCertificate::from_pem(&std::fs::read(ec.cert_path())?)?;
    let rsa_cert = TsaCertificate::from_pem(&std::fs::read(rsa.cert_path())?)?;
    for (tsa, cert, other) in [(&ec, &ec_cert, &rsa_cert), (&rsa, &rsa_cert, &ec_cert)] {
        let token = tsa.token_for(&digest).await?;
        let info = audit::verify_token(&token, &digest, cert)?;
        let year = time::OffsetDateTime::now_utc().year().to_string();
        assert!(info.gen_time.starts_with(&year), "{info:?}");
        assert_eq!(
            audit::verify_token(&token, &other_digest, cert),
            Err(TimestampError::ImprintMismatch)
        );
        assert_eq!(
            audit::check_imprint(&token, &other_digest),
            Err(TimestampError::ImprintMismatch)
        );
        assert_eq!(
            audit::verify_token(&token, &digest, other),
            Err(TimestampError::OtherSigner)
        );
        // The signature's last byte changed: the signed attributes no
        // longer verify (or the signature no longer parses).
        let mut tampered = token.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 0x01;
        }
        assert!(audit::verify_token(&tampered, &digest, cert).is_err());
        // The genTime inside the TSTInfo changed: messageDigest catches it.
        let gen = info.gen_time.as_bytes()[..4].to_vec();
        if let Some(at) = token.windows(4).position(|w| w == gen.as_slice()) {
            let mut moved = token.clone();
            moved[at + 3] = if moved[at + 3] == b'9' {
                b'0'
            } else {
                moved[at + 3] + 1
            };
            assert!(audit::verify_token(&moved, &digest, cert).is_err());
        }
    }
    // A certificate that is not for time stamping is refused as a TSA's.
    let not_tsa = std::fs::read(ec.cert_path().with_file_name("ca.pem"))?;
    assert!(matches!(
        TsaCertificate::from_pem(&not_tsa),
        Err(TimestampError::Certificate(_))
    ));
    Ok(())
}
