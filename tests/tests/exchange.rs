//! The query pipeline end to end (issue: query pipeline): real TLS, both backends.

use anyhow::Result;
use http::StatusCode;
use kakehashi_interfaces::envelope::{open_answer, EnvelopeContext};
use kakehashi_interfaces::{PermitKeySet, QueryResponse, QueryStatus, ReplyKeyPair};
use kakehashi_tests::exchange::{
    exchange_broker, income_of, individual_number, opened_items, post_ok, query_body,
    registration_line, scenario,
};
use kakehashi_tests::Backend;
use serde_json::json;

async fn permitted_query_is_sealed_to_the_requester(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker(backend).await? else {
        return Ok(());
    };
    let mut s = scenario(&broker, 3).await?;
    let (body, keys) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.union_codes[1],
        &["local_tax.income"],
    );
    let response = s.union.post("/v1/queries", body).await?;
    assert_eq!(
        response.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let answer: QueryResponse = serde_json::from_slice(&response.body)?;
    assert_eq!(answer.status, QueryStatus::Provided);
    let envelope = answer
        .envelope
        .clone()
        .expect("provided answers carry an envelope");

    let context = EnvelopeContext {
        query_id: answer.query_id.clone(),
        requester: "union-saitama".parse()?,
        provider: "city-saitama".parse()?,
    };
    let payload = open_answer(&keys, &context, &envelope)?;
    let items: serde_json::Value = serde_json::to_value(&payload.items)?;
    assert_eq!(
        items,
        json!({"local_tax.income": 2_000_001}),
        "exactly the permitted item and its value"
    );

    // Nobody else's key opens it, nor the right key under another context.
    assert!(open_answer(&ReplyKeyPair::generate(), &context, &envelope).is_err());
    let wrong_context = EnvelopeContext {
        requester: "city-kawagoe".parse()?,
        ..context.clone()
    };
    assert!(open_answer(&keys, &wrong_context, &envelope).is_err());

    // The permit verifies against the broker's published keys and binds the reply key.
    let key_set: PermitKeySet =
        serde_json::from_slice(&s.union.get("/v1/permit-keys").await?.body)?;
    answer
        .permit
        .verify_for(&key_set, &keys.public(), time::OffsetDateTime::now_utc())?;
    assert_eq!(
        answer.permit.claims.requester_person_code.as_str(),
        s.union_codes[1]
    );
    // The provider's code is bound by a salted commitment, never sent to the
    // requester (R4); the broker can open it for the provider side.
    assert!(
        !String::from_utf8_lossy(&response.body).contains(s.city_codes[1].as_str()),
        "the requester received the provider's person code"
    );
    let salt = kakehashi_broker::exchange::pipeline::provider_person_salt(
        &broker.broker.state().keys,
        &answer.permit.claims.permit_id,
    )?;
    assert!(answer
        .permit
        .claims
        .binds_provider_person(&salt, &s.city_codes[1]));

    // The requester can fetch it again; the provider cannot see the requester's result.
    let again: QueryResponse = serde_json::from_slice(
        &s.union
            .get(&format!("/v1/queries/{}", answer.query_id))
            .await?
            .body,
    )?;
    assert_eq!(again.envelope, Some(envelope));
    let other = s
        .city
        .get(&format!("/v1/queries/{}", answer.query_id))
        .await?;
    assert_eq!(other.status, StatusCode::NOT_FOUND);

    // Operators see the query route and its group commit in /metrics.
    let metrics = String::from_utf8(s.union.get("/metrics").await?.body.to_vec())?;
    assert!(
        metrics.contains("kakehashi_requests_total{route=\"query\",status=\"200\"} 1"),
        "{metrics}"
    );
    let commits =
        kakehashi_tests::metric_value(&metrics, "kakehashi_record_commit_rows_sum").unwrap_or(0.0);
    assert!(
        commits >= 1.0,
        "the query's record was group-committed: {metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn permitted_query_is_sealed_to_the_requester_sqlite() -> Result<()> {
    permitted_query_is_sealed_to_the_requester(Backend::Sqlite).await
}

#[tokio::test]
async fn permitted_query_is_sealed_to_the_requester_postgres() -> Result<()> {
    permitted_query_is_sealed_to_the_requester(Backend::Postgres).await
}

/// Runs one query that must be refused with `code`.
async fn refused(
    flow: &str,
    procedure: &str,
    asker: &str,
    provider: &str,
    person: PersonPick,
    items: &[&str],
    code: &str,
) -> Result<()> {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(broker) = exchange_broker(backend).await? else {
            continue;
        };
        let s = scenario(&broker, 2).await?;
        let person = match person {
            PersonPick::Union => s.union_codes[0].clone(),
            PersonPick::City => s.city_codes[0].clone(),
            PersonPick::Unknown => "00000000000000000000000000000000".to_string(),
        };
        let mut client = broker.client(asker).await?;
        let (body, _) = query_body(flow, procedure, provider, &person, items);
        let response = client.post("/v1/queries", body).await?;
        assert!(
            response.status.is_client_error(),
            "{backend:?}: {}",
            response.status
        );
        assert_eq!(
            response.error_code().as_deref(),
            Some(code),
            "{backend:?}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let message = response.json()?["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!message.is_empty());
        assert!(
            !message.contains(&person),
            "the error echoes the person code"
        );
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum PersonPick {
    Union,
    City,
    Unknown,
}

#[tokio::test]
async fn query_not_on_the_flow_list_is_refused() -> Result<()> {
    refused(
        "F-9999",
        "premium-calculation",
        "union-saitama",
        "city-saitama",
        PersonPick::Union,
        &["local_tax.income"],
        "not_on_flow_list",
    )
    .await
}

#[tokio::test]
async fn wrong_requester_is_refused() -> Result<()> {
    // A municipality may not use the union's income flow.
    refused(
        "F-0120",
        "premium-calculation",
        "city-kawagoe",
        "city-saitama",
        PersonPick::Union,
        &["local_tax.income"],
        "not_on_flow_list",
    )
    .await
}

#[tokio::test]
async fn flow_outside_its_validity_is_refused() -> Result<()> {
    refused(
        "F-0099",
        "legacy-transfer",
        "union-saitama",
        "city-saitama",
        PersonPick::Union,
        &["local_tax.income"],
        "flow_not_in_force",
    )
    .await
}

#[tokio::test]
async fn item_not_allowed_is_refused() -> Result<()> {
    refused(
        "F-0120",
        "premium-calculation",
        "union-saitama",
        "city-saitama",
        PersonPick::Union,
        &["local_tax.income", "resident.address"],
        "item_not_allowed",
    )
    .await
}

#[tokio::test]
async fn unknown_person_is_refused() -> Result<()> {
    refused(
        "F-0120",
        "premium-calculation",
        "union-saitama",
        "city-saitama",
        PersonPick::Unknown,
        &["local_tax.income"],
        "unknown_person",
    )
    .await
}

#[tokio::test]
async fn quoting_another_orgs_person_code_is_refused() -> Result<()> {
    // The union quotes the city's code for the person: codes are per org.
    refused(
        "F-0120",
        "premium-calculation",
        "union-saitama",
        "city-saitama",
        PersonPick::City,
        &["local_tax.income"],
        "unknown_person",
    )
    .await
}

#[tokio::test]
async fn tampered_permit_fails_verification() -> Result<()> {
    let broker = exchange_broker(Backend::Sqlite).await?.expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let (body, keys) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.union_codes[0],
        &["local_tax.income"],
    );
    let answer: QueryResponse =
        serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
    let key_set: PermitKeySet =
        serde_json::from_slice(&s.union.get("/v1/permit-keys").await?.body)?;
    let now = time::OffsetDateTime::now_utc();
    answer.permit.verify_for(&key_set, &keys.public(), now)?;

    let mut more_items = answer.permit.clone();
    more_items
        .claims
        .items
        .push("local_tax.taxable_status".parse()?);
    assert!(
        more_items.verify(&key_set, now).is_err(),
        "added item accepted"
    );

    let mut other_person = answer.permit.clone();
    other_person.claims.provider_person_commitment =
        kakehashi_interfaces::permit::provider_person_commitment(&[0; 32], &s.city_codes[0]);
    other_person.claims.requester_person_code = "ffffffffffffffffffffffffffffffff".parse()?;
    assert!(
        other_person.verify(&key_set, now).is_err(),
        "changed person accepted"
    );

    // Another reply key than the one the permit binds.
    assert!(answer
        .permit
        .verify_for(&key_set, &ReplyKeyPair::generate().public(), now)
        .is_err());
    Ok(())
}

#[tokio::test]
async fn sensitive_items_wait_as_pending() -> Result<()> {
    let broker = exchange_broker(Backend::Sqlite).await?.expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let (body, _) = query_body(
        "F-0121",
        "benefit-reduction",
        "city-saitama",
        &s.union_codes[0],
        &["welfare.public_assistance"],
    );
    let response = s.union.post("/v1/queries", body).await?;
    assert_eq!(response.status, StatusCode::OK);
    let answer: QueryResponse = serde_json::from_slice(&response.body)?;
    assert_eq!(answer.status, QueryStatus::Pending);
    assert!(
        answer.envelope.is_none(),
        "a sensitive answer left before approval"
    );
    let polled: QueryResponse = serde_json::from_slice(
        &s.union
            .get(&format!("/v1/queries/{}?wait=1", answer.query_id))
            .await?
            .body,
    )?;
    assert_eq!(polled.status, QueryStatus::Pending);
    Ok(())
}

#[tokio::test]
async fn registration_confirmation_list() -> Result<()> {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(broker) = exchange_broker(backend).await? else {
            continue;
        };
        let mut union = broker.client("union-saitama").await?;
        let first = individual_number(1);
        let report = post_ok(
            &mut union,
            "/v1/persons",
            &[registration_line("山田 花子", &first)],
        )
        .await?;
        assert_eq!(report["applied"][0]["created"], true);
        assert_eq!(report["applied"][0]["branch_number"], "00000001");

        let mut bad_check = individual_number(2);
        let last = bad_check.pop().and_then(|c| c.to_digit(10)).unwrap_or(0);
        bad_check.push(char::from_digit((last + 1) % 10, 10).unwrap_or('0'));
        let lines = vec![
            registration_line("田中 一郎", &individual_number(3)),                                   // 1: applied
            registration_line("山田 花子", &individual_number(4)),                                   // 2: same facts, other number
            json!({"basic": {"name": "佐藤 次郎", "sex": "male", "birth_date": "1950-01-01", "address": "川越市"}}).to_string(), // 3: no number
            registration_line("鈴木 三郎", &bad_check),                                             // 4: bad check digit
            "{not json".to_string(),                                                                 // 5
            registration_line("山田 花子", &first),                                                  // 6: same person again
        ];
        let report = post_ok(&mut union, "/v1/persons", &lines).await?;
        let applied: Vec<u64> = report["applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["line"].as_u64().unwrap())
            .collect();
        assert_eq!(applied, [1, 6], "{backend:?}: {report}");
        assert_eq!(report["applied"][1]["created"], false);
        assert_eq!(report["applied"][1]["branch_number"], "00000001");
        let reasons: Vec<(u64, String)> = report["confirmation_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["line"].as_u64().unwrap(),
                    i["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            reasons,
            [
                (2, "individual_number_conflict".to_string()),
                (3, "missing_individual_number".to_string()),
                (4, "missing_individual_number".to_string()),
                (5, "invalid_input".to_string()),
            ],
            "{backend:?}"
        );
        let text = report.to_string();
        for n in [&first, &individual_number(3), &individual_number(4)] {
            assert!(
                !text.contains(n.as_str()),
                "the report echoes an Individual Number"
            );
        }

        // A city links any valid number, registered or not, so the answer
        // tells nothing about the union's registrations (R5).
        let mut city = broker.client("city-saitama").await?;
        let linked = post_ok(
            &mut city,
            "/v1/persons",
            &[
                registration_line("山田 花子", &first),
                registration_line("x", &individual_number(99)),
            ],
        )
        .await?;
        assert_eq!(linked["applied"].as_array().map(Vec::len), Some(2));
        assert_eq!(linked["confirmation_list"], json!([]));
        assert_ne!(
            linked["applied"][0]["person_code"], report["applied"][1]["person_code"],
            "two orgs share a code"
        );
    }
    Ok(())
}

#[tokio::test]
async fn malformed_queries_are_invalid_input_and_store_nothing() -> Result<()> {
    let broker = exchange_broker(Backend::Sqlite).await?.expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let (good, _) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.union_codes[0],
        &["local_tax.income"],
    );
    let mut unknown_field: serde_json::Value = serde_json::from_str(&good)?;
    unknown_field["individual_number"] = json!(individual_number(0));
    let mut bad_key: serde_json::Value = serde_json::from_str(&good)?;
    bad_key["reply_key"] = json!("AAAA");
    let mut no_items: serde_json::Value = serde_json::from_str(&good)?;
    no_items["items"] = json!([]);
    for body in [
        "{".to_string(),
        "[]".to_string(),
        unknown_field.to_string(),
        bad_key.to_string(),
        no_items.to_string(),
    ] {
        let response = s.union.post("/v1/queries", body.clone()).await?;
        assert_eq!(response.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(response.error_code().as_deref(), Some("invalid_input"));
        assert!(!String::from_utf8_lossy(&response.body).contains(&individual_number(0)));
    }
    let pools = broker.store.pools();
    let count: i64 = kakehashi_broker::on_pool!(&pools, read, |pool| { sqlx_count(pool).await? });
    assert_eq!(count, 0, "a refused query stored a result");
    Ok(())
}

async fn sqlx_count<'e, E>(pool: E) -> Result<i64>
where
    E: sqlx::Executor<'e>,
    i64: sqlx::Type<E::Database> + for<'r> sqlx::Decode<'r, E::Database>,
    for<'q> <E::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, E::Database>,
    usize: sqlx::ColumnIndex<<E::Database as sqlx::Database>::Row>,
{
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM queries")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

#[tokio::test]
async fn answers_are_deleted_when_they_expire() -> Result<()> {
    let broker = kakehashi_tests::exchange::exchange_broker_with(Backend::Sqlite, |opts| {
        // Long enough that the first read comes before it on a busy machine.
        opts.exchange.result_ttl_secs = 3;
        opts.exchange.sweep_interval_secs = 1;
    })
    .await?
    .expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let (body, _) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.union_codes[0],
        &["local_tax.income"],
    );
    let answer: QueryResponse =
        serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
    let path = format!("/v1/queries/{}", answer.query_id);
    assert_eq!(s.union.get(&path).await?.status, StatusCode::OK);
    let mut gone = false;
    for _ in 0..80 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        // The requester is told it expired (410), not that it never was.
        if s.union.get(&path).await?.status == StatusCode::GONE {
            gone = true;
            break;
        }
    }
    assert!(gone, "an expired answer was still served");
    // The sweep deletes the sealed answer and keeps a tombstone without it.
    let pools = broker.broker.state().store.pools();
    let sql = format!(
        "SELECT COUNT(*) FROM queries WHERE id = '{}' AND envelope IS NULL AND status = 'expired'",
        answer.query_id
    );
    let mut swept = false;
    for _ in 0..30 {
        if kakehashi_tests::sql_count(&pools, &sql).await? == 1 {
            swept = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(swept, "the expired answer's envelope was kept");
    assert_eq!(s.union.get(&path).await?.status, StatusCode::GONE);
    Ok(())
}

#[tokio::test]
async fn union_lists_who_received_data_about_a_person() -> Result<()> {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(broker) = exchange_broker(backend).await? else {
            continue;
        };
        let mut s = scenario(&broker, 2).await?;
        let (body, _) = query_body(
            "F-0120",
            "premium-calculation",
            "city-saitama",
            &s.union_codes[0],
            &["local_tax.income"],
        );
        assert_eq!(
            s.union.post("/v1/queries", body).await?.status,
            StatusCode::OK
        );
        let (body, _) = query_body(
            "F-0120",
            "premium-calculation",
            "city-saitama",
            &s.union_codes[0],
            &["resident.address"],
        );
        assert_eq!(
            s.union.post("/v1/queries", body).await?.status,
            StatusCode::FORBIDDEN
        );
        // Another person's query does not show up.
        let (body, _) = query_body(
            "F-0120",
            "premium-calculation",
            "city-saitama",
            &s.union_codes[1],
            &["local_tax.income"],
        );
        assert_eq!(
            s.union.post("/v1/queries", body).await?.status,
            StatusCode::OK
        );

        let response = s
            .union
            .get(&format!("/v1/persons/{}/records", s.union_codes[0]))
            .await?;
        assert_eq!(
            response.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        let entries = response.json()?;
        let entries = entries.as_array().expect("a list");
        assert_eq!(entries.len(), 2, "{backend:?}: {entries:?}");
        assert_eq!(entries[0]["requester"], "union-saitama");
        assert_eq!(entries[0]["provider"], "city-saitama");
        assert_eq!(entries[0]["items"], json!(["local_tax.income"]));
        assert_eq!(entries[0]["outcome"], "provided");
        assert_eq!(entries[1]["outcome"], "denied");
        let text = response.json()?.to_string();
        for code in s.union_codes.iter().chain(&s.city_codes) {
            assert!(
                !text.contains(code.as_str()),
                "a person code is in the disclosure"
            );
        }
        // Only the union may list.
        let city = s
            .city
            .get(&format!("/v1/persons/{}/records", s.city_codes[0]))
            .await?;
        assert_eq!(city.status, StatusCode::FORBIDDEN);
    }
    Ok(())
}

/// Concurrent queries share one database read (lookups are batched): each
/// still gets its own person's answer, and a code the requester does not
/// have is refused for that query alone.
async fn concurrent_queries_get_their_own_answers(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker(backend).await? else {
        return Ok(());
    };
    let s = scenario(&broker, 8).await?;
    let mut tasks = Vec::new();
    for i in 0..16usize {
        let mut client = broker.client("union-saitama").await?;
        // Even: the union's own code for person i/2; odd: the city's code.
        let person = if i % 2 == 0 {
            s.union_codes[i / 2].clone()
        } else {
            s.city_codes[i / 2].clone()
        };
        tasks.push(tokio::spawn(async move {
            let (body, keys) = query_body(
                "F-0120",
                "premium-calculation",
                "city-saitama",
                &person,
                &["local_tax.income"],
            );
            let response = client.post("/v1/queries", body).await?;
            anyhow::Ok((i, response, keys))
        }));
    }
    for task in tasks {
        let (i, response, keys) = task.await??;
        let body = String::from_utf8_lossy(&response.body).to_string();
        if i % 2 == 1 {
            assert_eq!(response.status, StatusCode::NOT_FOUND, "{body}");
            assert!(body.contains("unknown_person"), "{body}");
            continue;
        }
        assert_eq!(response.status, StatusCode::OK, "{body}");
        assert_eq!(
            opened_items(&response.body, &keys)?,
            json!({"local_tax.income": 2_000_000 + (i / 2) as u64}),
            "query {i} got another person's answer"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_queries_get_their_own_answers_sqlite() -> Result<()> {
    concurrent_queries_get_their_own_answers(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_queries_get_their_own_answers_postgres() -> Result<()> {
    concurrent_queries_get_their_own_answers(Backend::Postgres).await
}

/// Runs SQL as another writer would: on SQLite a connection of its own to the
/// database file (as a second process has), on PostgreSQL another session.
async fn write_elsewhere(broker: &kakehashi_tests::TestBroker, sql: &str) -> Result<()> {
    use sqlx::Connection;
    match broker.config.storage.target()? {
        kakehashi_broker::config::StorageTarget::Sqlite(path) => {
            let mut conn =
                sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
            sqlx::raw_sql(sql).execute(&mut conn).await?;
            conn.close().await?;
        }
        kakehashi_broker::config::StorageTarget::Postgres(_) => {
            kakehashi_tests::sql_exec(&broker.store.pools(), sql).await?;
        }
    }
    Ok(())
}

/// Answers follow the data they come from, however it changed since the last
/// query about the person (the query path keeps what it read in memory): a
/// new deposit through the API, and a copy or a person code
/// removed by another writer of the database.
async fn answers_follow_changes_to_codes_and_copies(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker(backend).await? else {
        return Ok(());
    };
    let mut s = scenario(&broker, 3).await?;
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[1]).await?,
        Ok(json!(2_000_001))
    );
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[2]).await?,
        Ok(json!(2_000_002))
    );
    // Asked again with nothing changed: answered from memory.
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[1]).await?,
        Ok(json!(2_000_001))
    );
    let hits_after_repeat = lookup_cache_metric(&mut s.union, "hits").await?;
    assert!(hits_after_repeat >= 1.0, "hits: {hits_after_repeat}");

    // The city deposits a newer copy: the next answer carries it.
    let newer = json!({"person": s.city_codes[1], "items": {"local_tax.income": 3_100_000}});
    post_ok(&mut s.city, "/v1/copies", &[newer.to_string()]).await?;
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[1]).await?,
        Ok(json!(3_100_000))
    );

    // Another writer removes that copy: the provider holds nothing now.
    write_elsewhere(
        &broker,
        &format!(
            "DELETE FROM copies WHERE person_code = '{}'",
            s.city_codes[1]
        ),
    )
    .await?;
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[1]).await?,
        Err("no_copy".to_string())
    );

    // Another writer removes the union's code for person 2: unknown to it now.
    write_elsewhere(
        &broker,
        &format!(
            "DELETE FROM person_codes WHERE code = '{}'",
            s.union_codes[2]
        ),
    )
    .await?;
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[2]).await?,
        Err("unknown_person".to_string())
    );
    // Person 0, untouched, is answered as before.
    assert_eq!(
        income_of(&mut s.union, &s.union_codes[0]).await?,
        Ok(json!(2_000_000))
    );
    // Each change emptied the cache (operators see it in /metrics).
    let resets = lookup_cache_metric(&mut s.union, "resets").await?;
    assert!(resets >= 3.0, "resets: {resets}");
    Ok(())
}

/// `kakehashi_lookup_cache_<what>_total` from /metrics.
async fn lookup_cache_metric(client: &mut kakehashi_tests::TestClient, what: &str) -> Result<f64> {
    let text = String::from_utf8(client.get("/metrics").await?.body.to_vec())?;
    let name = format!("kakehashi_lookup_cache_{what}_total");
    kakehashi_tests::metric_value(&text, &name)
        .ok_or_else(|| anyhow::anyhow!("no {name} in /metrics"))
}

#[tokio::test]
async fn answers_follow_changes_to_codes_and_copies_sqlite() -> Result<()> {
    answers_follow_changes_to_codes_and_copies(Backend::Sqlite).await
}

#[tokio::test]
async fn answers_follow_changes_to_codes_and_copies_postgres() -> Result<()> {
    answers_follow_changes_to_codes_and_copies(Backend::Postgres).await
}

/// Instants on the wire are UTC, whole seconds (interfaces/README.md).
#[tokio::test]
async fn instants_on_the_wire_are_whole_seconds() -> Result<()> {
    let broker = exchange_broker(Backend::Sqlite).await?.expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let (body, _) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        &s.union_codes[0],
        &["local_tax.income"],
    );
    let answer = s.union.post("/v1/queries", body).await?.json()?;
    let expires = answer["expires_at"].as_str().unwrap_or("");
    assert!(
        expires.ends_with('Z') && !expires.contains('.'),
        "{expires}"
    );
    let path = format!("/v1/persons/{}/records", s.union_codes[0]);
    let entries = s.union.get(&path).await?.json()?;
    let at = entries[0]["at"].as_str().unwrap_or("");
    assert!(
        at.ends_with('Z') && !at.contains('.') && at.len() == 20,
        "{at}"
    );
    Ok(())
}
