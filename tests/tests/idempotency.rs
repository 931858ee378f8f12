//! `Idempotency-Key` on `POST /v1/queries`: a retry gets the same query and
//! makes no second provision record; another body under a used key is
//! refused; a refusal is repeated, not recorded again.

use anyhow::Result;
use http::{Method, StatusCode};
use kakehashi_interfaces::QueryResponse;
use kakehashi_tests::cli::{CliUser, PLAIN};
use kakehashi_tests::exchange::{exchange_broker, query_body, scenario};
use kakehashi_tests::{sql_count, sql_exec, Backend, TestBroker};

async fn records(broker: &TestBroker) -> Result<i64> {
    sql_count(&broker.store.pools(), "SELECT COUNT(*) FROM records").await
}

async fn a_retry_under_the_same_key_is_the_same_query(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker(backend).await? else {
        return Ok(());
    };
    let mut s = scenario(&broker, 2).await?;
    let (body, _keys) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.union_codes[0],
        &["local_tax.income"],
    );
    let key = [("Idempotency-Key", "9b2f0c6e-0d7a-4c55-8d52-1f3f1b2d7a10")];
    let before = records(&broker).await?;
    let first = s
        .union
        .request_with(Method::POST, "/v1/queries", body.clone(), &key)
        .await?;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.json());
    let retried = s
        .union
        .request_with(Method::POST, "/v1/queries", body.clone(), &key)
        .await?;
    assert_eq!(retried.status, StatusCode::OK, "{:?}", retried.json());
    let first: QueryResponse = serde_json::from_slice(&first.body)?;
    let retried: QueryResponse = serde_json::from_slice(&retried.body)?;
    assert_eq!(first.query_id, retried.query_id);
    assert_eq!(first.envelope, retried.envelope, "the same sealed answer");
    assert_eq!(first.permit, retried.permit);
    assert_eq!(records(&broker).await?, before + 1, "one provision record");

    // A node that committed the query and died before noting the outcome
    // left the claim unfinished; long after, a retry reads that query back
    // instead of asking again.
    sql_exec(
        &broker.store.pools(),
        "UPDATE query_keys SET done = 0, claimed_at = '2000-01-01T00:00:00.000000Z'",
    )
    .await?;
    let late = s
        .union
        .request_with(Method::POST, "/v1/queries", body.clone(), &key)
        .await?;
    assert_eq!(late.status, StatusCode::OK, "{:?}", late.json());
    let late: QueryResponse = serde_json::from_slice(&late.body)?;
    assert_eq!(late.query_id, first.query_id, "the committed query");
    assert_eq!(records(&broker).await?, before + 1, "still one record");

    // Another query under the used key: refused, nothing recorded.
    let (other, _) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.union_codes[1],
        &["local_tax.income"],
    );
    let conflict = s
        .union
        .request_with(Method::POST, "/v1/queries", other, &key)
        .await?;
    assert_eq!(conflict.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        conflict.error_code().as_deref(),
        Some("idempotency_key_reused")
    );
    assert_eq!(records(&broker).await?, before + 1);

    // Keys are the requester's own: the city using the same key value
    // makes its own query.
    let (city_body, _) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.city_codes[0],
        &["local_tax.income"],
    );
    let city = s
        .city
        .request_with(Method::POST, "/v1/queries", city_body, &key)
        .await?;
    assert_ne!(city.status, StatusCode::CONFLICT);

    // A refusal is repeated under its key and recorded once.
    let (unknown, _) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        "00000000000000000000000000000000",
        &["local_tax.income"],
    );
    let denied_key = [("Idempotency-Key", "denied-1")];
    let recorded = records(&broker).await?;
    for _ in 0..2 {
        let denied = s
            .union
            .request_with(Method::POST, "/v1/queries", unknown.clone(), &denied_key)
            .await?;
        assert_eq!(denied.error_code().as_deref(), Some("unknown_person"));
    }
    assert_eq!(records(&broker).await?, recorded + 1);

    // Without a key every POST is a new query.
    s.union.post("/v1/queries", body.clone()).await?;
    s.union.post("/v1/queries", body).await?;
    assert_eq!(records(&broker).await?, recorded + 3);
    Ok(())
}

#[tokio::test]
async fn a_retry_under_the_same_key_is_the_same_query_sqlite() -> Result<()> {
    a_retry_under_the_same_key_is_the_same_query(Backend::Sqlite).await
}

#[tokio::test]
async fn a_retry_under_the_same_key_is_the_same_query_postgres() -> Result<()> {
    a_retry_under_the_same_key_is_the_same_query(Backend::Postgres).await
}

#[tokio::test]
async fn a_malformed_key_is_refused_before_anything_runs() -> Result<()> {
    let broker = exchange_broker(Backend::Sqlite).await?.expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let (body, _) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.union_codes[0],
        &["local_tax.income"],
    );
    let before = records(&broker).await?;
    let long = "k".repeat(256);
    for bad in ["", "two words", long.as_str()] {
        let r = s
            .union
            .request_with(
                Method::POST,
                "/v1/queries",
                body.clone(),
                &[("Idempotency-Key", bad)],
            )
            .await?;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "key {bad:?}");
        let message = r.json()?["message"].as_str().unwrap_or("").to_string();
        assert!(message.contains("Idempotency-Key"), "{message}");
    }
    assert_eq!(records(&broker).await?, before);
    Ok(())
}

/// Issue "Contract" 11: a JSON Lines refusal names the file's line, the
/// field and the rule (not serde's "line 1" of a one-line document).
#[tokio::test]
async fn a_bad_json_lines_line_is_named_by_its_line_field_and_rule() -> Result<()> {
    let broker = exchange_broker(Backend::Sqlite).await?.expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let good = serde_json::json!({"person": s.city_codes[0], "items": {"local_tax.income": 1}});
    let empty = serde_json::json!({"person": s.city_codes[0], "items": {}});
    let body = format!("{good}\n\n{empty}\n");
    let report = s.city.post("/v1/copies", body).await?.json()?;
    assert_eq!(report["applied"], 1, "{report}");
    let rejected = &report["rejected"][0];
    assert_eq!(rejected["line"], 3, "{report}");
    let message = rejected["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("items: must hold 1 to 256 items"),
        "{message}"
    );
    assert!(!message.contains("line "), "{message}");
    Ok(())
}

/// The client's batch sends each line under a key derived from the line:
/// answers lost in an interruption are read back on the rerun, not asked
/// (and recorded) again.
#[tokio::test]
async fn a_rerun_batch_reads_back_answers_it_lost() -> Result<()> {
    let broker = exchange_broker(Backend::Sqlite).await?.expect("sqlite");
    let s = scenario(&broker, 5).await?;
    let user = CliUser::new()?;
    user.add_profile(&broker, "union-saitama").await?;
    let persons = format!("person\n{}\n", s.union_codes.join("\n"));
    std::fs::write(user.path("persons.csv"), persons)?;
    let (input, out) = (user.path("persons.csv"), user.path("results.jsonl"));
    let mut batch = vec![
        "--profile",
        "union-saitama",
        "query",
        "--batch",
        &input,
        "--out",
        &out,
    ];
    batch.extend(PLAIN);
    user.run(&batch).await?.ok()?;
    let results = std::path::PathBuf::from(&out);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&results)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 5);
    let recorded = records(&broker).await?;

    // Three answers lost: the results file keeps two lines.
    let kept: Vec<String> = lines[..2].iter().map(|l| l.to_string()).collect();
    std::fs::write(&results, format!("{}\n", kept.join("\n")))?;
    user.run(&batch).await?.ok()?;
    let reread: Vec<serde_json::Value> = std::fs::read_to_string(&results)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(reread.len(), 5);
    let ids = |v: &[serde_json::Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|l| format!("{}:{}", l["line"], l["query_id"]))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(&reread), ids(&lines), "the same queries, read back");
    assert!(reread.iter().all(|l| l["status"] == "provided"));
    assert_eq!(records(&broker).await?, recorded, "no query asked twice");
    Ok(())
}
