//! Sensitive answers wait for an operator of the provider org (R11): the
//! people API on the console listener, end to end with real brokers, real
//! TLS and real databases.

use std::time::{Duration, Instant};

use anyhow::Result;
use http::{Method, StatusCode};
use kakehashi_broker::people::Role;
use kakehashi_interfaces::query::{QueryResponse, QueryStatus};
use kakehashi_tests::console::{add_person, expect_ok, ConsoleClient};
use kakehashi_tests::exchange::{exchange_broker_with, opened_items, query_body, scenario};
use kakehashi_tests::{sql_count, Backend, TestBroker};
use serde_json::json;

async fn console_broker(backend: Backend, pending_ttl_secs: u64) -> Result<Option<TestBroker>> {
    exchange_broker_with(backend, |opts| {
        opts.console.listen = Some("127.0.0.1:0".parse().expect("address"));
        opts.exchange.pending_ttl_secs = pending_ttl_secs;
        opts.exchange.sweep_interval_secs = 1;
    })
    .await
}

/// The union asks city-saitama about public assistance: a sensitive item.
fn sensitive_query(union_code: &str) -> (String, kakehashi_interfaces::ReplyKeyPair) {
    query_body(
        "F-0121",
        "benefit-reduction",
        "city-saitama",
        union_code,
        &["local_tax.income", "welfare.public_assistance"],
    )
}

#[tokio::test]
async fn an_operator_of_the_provider_approves_and_the_waiting_requester_opens_the_answer(
) -> Result<()> {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(broker) = console_broker(backend, 3600).await? else {
            continue;
        };
        let mut s = scenario(&broker, 1).await?;
        let (body, keys) = sensitive_query(&s.union_codes[0]);
        let pending: QueryResponse =
            serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
        assert_eq!(pending.status, QueryStatus::Pending);
        assert!(pending.envelope.is_none());
        let query_id = pending.query_id.to_string();

        let mut operator =
            add_person(&broker, "kawada.op", "city-saitama", &[Role::Operator]).await?;
        let mut console = ConsoleClient::connect(&broker).await?;
        let session = console.log_in(&mut operator, 0).await?;
        assert_eq!(session["stage"], "full");

        // The queue shows the query, and no person code of either org.
        let queue = console.call(Method::GET, "/api/approvals", None).await?;
        expect_ok(&queue)?;
        let text = String::from_utf8_lossy(&queue.body).to_string();
        assert_eq!(queue.json()?["count"], 1, "{text}");
        assert_eq!(queue.json()?["pending"][0]["query_id"], query_id.as_str());
        assert_eq!(queue.json()?["pending"][0]["requester"], "union-saitama");
        for code in s.union_codes.iter().chain(&s.city_codes) {
            assert!(
                !text.contains(code.as_str()),
                "a person code in the queue: {text}"
            );
        }
        // The detail shows the values approval would release.
        let detail = console
            .call(Method::GET, &format!("/api/approvals/{query_id}"), None)
            .await?;
        expect_ok(&detail)?;
        assert_eq!(detail.json()?["values"]["welfare.public_assistance"], false);
        assert_eq!(detail.json()?["values"]["local_tax.income"], 2_000_000);

        // The requester waits; the approval wakes it at once.
        let mut waiter = broker.client("union-saitama").await?;
        let path = format!("/v1/queries/{query_id}?wait=30");
        let waiting = tokio::spawn(async move {
            let started = Instant::now();
            let response = waiter.get(&path).await;
            (started.elapsed(), response)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let approved = console
            .call(
                Method::POST,
                &format!("/api/approvals/{query_id}/approve"),
                None,
            )
            .await?;
        expect_ok(&approved)?;
        assert_eq!(approved.json()?["decision"], "approved");
        let (waited, answer) = waiting.await?;
        let answer = answer?;
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            waited < Duration::from_secs(4),
            "the waiting requester was not woken by the approval ({waited:?})"
        );
        let items = opened_items(&answer.body, &keys)?;
        assert_eq!(items["welfare.public_assistance"], false);
        assert_eq!(items["local_tax.income"], 2_000_000);

        // A decision is made once.
        let again = console
            .call(
                Method::POST,
                &format!("/api/approvals/{query_id}/approve"),
                None,
            )
            .await?;
        assert_eq!(again.status, StatusCode::CONFLICT, "{:?}", again.body);

        // One `approved` record, naming the operator.
        let pools = broker.broker.state().store.pools();
        let sql = format!(
            "SELECT COUNT(*) FROM records WHERE query_id = '{query_id}' AND outcome = 'approved' AND approver = 'kawada.op'"
        );
        assert_eq!(sql_count(&pools, &sql).await?, 1, "{backend:?}");
        // And the operation log has the login and the approval.
        let oplog = |action: &str| {
            format!("SELECT COUNT(*) FROM operation_log WHERE actor = 'kawada.op' AND action = '{action}' AND result = 'success'")
        };
        assert_eq!(sql_count(&pools, &oplog("approve")).await?, 1);
        assert!(sql_count(&pools, &oplog("login_succeeded")).await? >= 1);
        broker.broker.state().records.seal().await?;
        assert!(broker.broker.state().records.verify().await.is_ok());
    }
    Ok(())
}

#[tokio::test]
async fn a_rejection_reaches_the_requester_with_its_reason() -> Result<()> {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(broker) = console_broker(backend, 3600).await? else {
            continue;
        };
        let mut s = scenario(&broker, 1).await?;
        let (body, _keys) = sensitive_query(&s.union_codes[0]);
        let pending: QueryResponse =
            serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
        let query_id = pending.query_id.to_string();
        let mut operator =
            add_person(&broker, "mori.op", "city-saitama", &[Role::Operator]).await?;
        let mut console = ConsoleClient::connect(&broker).await?;
        console.log_in(&mut operator, 0).await?;

        let empty = console
            .call(
                Method::POST,
                &format!("/api/approvals/{query_id}/reject"),
                Some(json!({"reason": "  "})),
            )
            .await?;
        assert_eq!(empty.status, StatusCode::BAD_REQUEST);
        let reason = "照会の根拠となる申請書が確認できません";
        let rejected = console
            .call(
                Method::POST,
                &format!("/api/approvals/{query_id}/reject"),
                Some(json!({"reason": reason})),
            )
            .await?;
        expect_ok(&rejected)?;
        let answer: QueryResponse =
            serde_json::from_slice(&s.union.get(&format!("/v1/queries/{query_id}")).await?.body)?;
        assert_eq!(answer.status, QueryStatus::Rejected);
        assert_eq!(
            answer.reason.map(|r| r.to_string()),
            Some(reason.to_string())
        );
        assert!(answer.envelope.is_none());
        let pools = broker.broker.state().store.pools();
        let sql = format!(
            "SELECT COUNT(*) FROM records WHERE query_id = '{query_id}' AND outcome = 'rejected' AND approver = 'mori.op'"
        );
        assert_eq!(sql_count(&pools, &sql).await?, 1, "{backend:?}");
        // The values are gone from the broker once decided.
        let sql = format!(
            "SELECT COUNT(*) FROM queries WHERE id = '{query_id}' AND pending_cipher IS NOT NULL"
        );
        assert_eq!(sql_count(&pools, &sql).await?, 0);
    }
    Ok(())
}

#[tokio::test]
async fn only_an_operator_of_the_provider_org_decides() -> Result<()> {
    let broker = console_broker(Backend::Sqlite, 3600)
        .await?
        .expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let (body, _) = sensitive_query(&s.union_codes[0]);
    let pending: QueryResponse =
        serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
    let approve = format!("/api/approvals/{}/approve", pending.query_id);

    // No session.
    let mut anonymous = ConsoleClient::connect(&broker).await?;
    let r = anonymous.call(Method::POST, &approve, None).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code().as_deref(), Some("session_required"));

    // Another org's operator does not see it.
    let mut other = add_person(&broker, "kawagoe.op", "city-kawagoe", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut other, 0).await?;
    let r = console.call(Method::POST, &approve, None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let queue = console.call(Method::GET, "/api/approvals", None).await?;
    assert_eq!(queue.json()?["count"], 0);

    // The provider's auditor and administrator may not approve.
    for (id, role) in [
        ("saitama.aud", Role::Auditor),
        ("saitama.adm", Role::Administrator),
    ] {
        let mut person = add_person(&broker, id, "city-saitama", &[role]).await?;
        let mut console = ConsoleClient::connect(&broker).await?;
        console.log_in(&mut person, 0).await?;
        let r = console.call(Method::POST, &approve, None).await?;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role:?}");
    }

    // The provider's operator without the CSRF token is refused; with it, decides.
    let mut operator = add_person(&broker, "saitama.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut operator, 0).await?;
    console.drop_csrf();
    let r = console.call(Method::POST, &approve, None).await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(broker.refusals("csrf_mismatch"), 1);
    let session = console.call(Method::GET, "/api/session", None).await?;
    expect_ok(&session)?;
    let r = console.call(Method::POST, &approve, None).await?;
    expect_ok(&r)?;

    // An org certificate reaches no people endpoint, and a session no exchange endpoint.
    let r = s.city.get("/api/approvals").await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = console.call(Method::GET, "/v1/whoami", None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn a_pending_query_nobody_decides_answers_expired_410() -> Result<()> {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(broker) = console_broker(backend, 1).await? else {
            continue;
        };
        let mut s = scenario(&broker, 1).await?;
        let (body, _) = sensitive_query(&s.union_codes[0]);
        let pending: QueryResponse =
            serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
        let path = format!("/v1/queries/{}", pending.query_id);
        let mut status = StatusCode::OK;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            status = s.union.get(&path).await?.status;
            if status != StatusCode::OK {
                break;
            }
        }
        assert_eq!(status, StatusCode::GONE, "{backend:?}");
        let r = s.union.get(&path).await?;
        assert_eq!(r.error_code().as_deref(), Some("expired"));
        // The sweep (every second) leaves one `expired` record, deletes the
        // values and keeps the tombstone that still answers 410.
        let pools = broker.broker.state().store.pools();
        let sql = format!(
            "SELECT COUNT(*) FROM records WHERE query_id = '{}' AND outcome = 'expired'",
            pending.query_id
        );
        for _ in 0..50 {
            if sql_count(&pools, &sql).await? > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(sql_count(&pools, &sql).await?, 1);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(sql_count(&pools, &sql).await?, 1, "one expired record only");
        assert_eq!(s.union.get(&path).await?.status, StatusCode::GONE);
        let sql = "SELECT COUNT(*) FROM queries WHERE pending_cipher IS NOT NULL";
        assert_eq!(sql_count(&pools, sql).await?, 0);
    }
    Ok(())
}

#[tokio::test]
async fn two_sweeps_at_once_record_each_expired_query_once() -> Result<()> {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        // The sweeper role sweeps at start and then not for an hour: the
        // test runs the sweeps itself, two at once, as two nodes whose
        // roles overlapped for a moment would.
        let Some(broker) = exchange_broker_with(backend, |opts| {
            opts.exchange.pending_ttl_secs = 1;
            opts.exchange.sweep_interval_secs = 3600;
        })
        .await?
        else {
            continue;
        };
        let mut s = scenario(&broker, 1).await?;
        let mut ids = Vec::new();
        for _ in 0..12 {
            let (body, _) = sensitive_query(&s.union_codes[0]);
            let pending: QueryResponse =
                serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
            assert_eq!(pending.status, QueryStatus::Pending);
            ids.push(pending.query_id.to_string());
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let state = broker.broker.state();
        let (a, b) = tokio::join!(
            kakehashi_broker::exchange::sweep_once(state),
            kakehashi_broker::exchange::sweep_once(state)
        );
        let (a, b) = (a?, b?);
        assert_eq!(
            a + b,
            ids.len(),
            "{backend:?}: each expired query swept once ({a} + {b})"
        );
        let pools = state.store.pools();
        for id in &ids {
            let sql = format!(
                "SELECT COUNT(*) FROM records WHERE query_id = '{id}' AND outcome = 'expired'"
            );
            assert_eq!(
                sql_count(&pools, &sql).await?,
                1,
                "{backend:?}: one expired record for {id}"
            );
        }
        assert_eq!(
            sql_count(
                &pools,
                "SELECT COUNT(*) FROM queries WHERE status = 'expired'"
            )
            .await?,
            i64::try_from(ids.len())?,
            "{backend:?}: every expired query is a tombstone"
        );
        assert_eq!(kakehashi_broker::exchange::sweep_once(state).await?, 0);
        for id in &ids {
            let r = s.union.get(&format!("/v1/queries/{id}")).await?;
            assert_eq!(r.status, StatusCode::GONE, "{backend:?}");
        }
        // Each record says what was asked (R14), and the person's
        // disclosure lists them (R18).
        let described = "SELECT COUNT(*) FROM records WHERE outcome = 'expired' AND flow_id = 'F-0121' AND procedure_code = 'benefit-reduction' AND provider_code IS NOT NULL";
        assert_eq!(
            sql_count(&pools, described).await?,
            i64::try_from(ids.len())?
        );
        let disclosure = s
            .union
            .get(&format!("/v1/persons/{}/records", s.union_codes[0]))
            .await?;
        assert_eq!(disclosure.status, StatusCode::OK, "{backend:?}");
        let text = String::from_utf8_lossy(&disclosure.body);
        assert_eq!(
            text.matches("\"expired\"").count(),
            ids.len(),
            "{backend:?}: {text}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_decision_claimed_at_the_last_moment_is_not_expired_under_it() -> Result<()> {
    use kakehashi_broker::results::{self, StoredDecision};
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(broker) = exchange_broker_with(backend, |opts| {
            opts.exchange.pending_ttl_secs = 3;
            opts.exchange.sweep_interval_secs = 3600;
        })
        .await?
        else {
            continue;
        };
        let mut s = scenario(&broker, 1).await?;
        let (body, _) = sensitive_query(&s.union_codes[0]);
        let pending: QueryResponse =
            serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
        let id = pending.query_id.to_string();
        let state = broker.broker.state();
        let pools = state.store.pools();
        // An operator claims it just before it expires; its record is still
        // being appended when the expiry passes and the sweeper runs.
        assert!(results::claim(&pools, &id, &"city-saitama".parse()?).await?);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(
            kakehashi_broker::exchange::sweep_once(state).await?,
            0,
            "{backend:?}"
        );
        let expired =
            format!("SELECT COUNT(*) FROM records WHERE query_id = '{id}' AND outcome = 'expired'");
        assert_eq!(sql_count(&pools, &expired).await?, 0, "{backend:?}");
        let later = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
        let rejected = StoredDecision::Rejected {
            reason: "対象外"
        };
        results::decide(&pools, &id, &rejected, "kawada.op", later).await?;
        let r = s.union.get(&format!("/v1/queries/{id}")).await?;
        assert_eq!(r.status, StatusCode::OK, "{backend:?}");
        assert_eq!(r.json()?["status"], "rejected", "{backend:?}");
        // A decision whose claim was lost (the query expired) is refused,
        // not reported as made.
        let (body, _) = sensitive_query(&s.union_codes[0]);
        let pending: QueryResponse =
            serde_json::from_slice(&s.union.post("/v1/queries", body).await?.body)?;
        let lost = pending.query_id.to_string();
        assert!(results::claim(&pools, &lost, &"city-saitama".parse()?).await?);
        kakehashi_tests::sql_exec(
            &pools,
            &format!("UPDATE queries SET status = 'expired' WHERE id = '{lost}'"),
        )
        .await?;
        let refused = results::decide(&pools, &lost, &rejected, "kawada.op", later).await;
        assert_eq!(
            refused.map_err(|e| e.code()).err(),
            Some(kakehashi_interfaces::ErrorCode::Expired),
            "{backend:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_reply_key_no_seal_takes_is_a_recorded_denial_on_either_path() -> Result<()> {
    use kakehashi_interfaces::ReplyPublicKey;
    let Some(broker) = console_broker(Backend::Sqlite, 3600).await? else {
        anyhow::bail!("SQLite always runs");
    };
    let mut s = scenario(&broker, 1).await?;
    // u = 1: a point of low order, whose shared secret is all zeros.
    let mut low_order = [0u8; 32];
    low_order[0] = 1;
    let key = ReplyPublicKey::from_bytes(low_order)?.to_base64url();
    let pools = broker.broker.state().store.pools();
    for (flow, procedure, items) in [
        ("F-0120", "premium-calculation", vec!["local_tax.income"]),
        (
            "F-0121",
            "benefit-reduction",
            vec!["local_tax.income", "welfare.public_assistance"],
        ),
    ] {
        let (body, _) = query_body(flow, procedure, "city-saitama", &s.union_codes[0], &items);
        let mut body: serde_json::Value = serde_json::from_str(&body)?;
        body["reply_key"] = json!(key);
        let r = s.union.post("/v1/queries", body.to_string()).await?;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{flow}: {:?}", r.body);
        assert_eq!(r.error_code().as_deref(), Some("invalid_input"), "{flow}");
        let denied = format!(
            "SELECT COUNT(*) FROM records WHERE flow_id = '{flow}' AND outcome LIKE 'denied%'"
        );
        assert_eq!(
            sql_count(&pools, &denied).await?,
            1,
            "{flow}: no denial record"
        );
    }
    // Nothing waits for an operator.
    let pending = "SELECT COUNT(*) FROM queries WHERE status = 'pending'";
    assert_eq!(sql_count(&pools, pending).await?, 0);
    Ok(())
}

#[tokio::test]
async fn the_person_who_asked_cannot_approve_their_own_orgs_answer() -> Result<()> {
    // A flow where city-saitama asks itself for a sensitive item.
    let dir = tempfile::tempdir()?;
    let flows = dir.path().join("flows.toml");
    std::fs::write(
        &flows,
        format!(
            "{}\n[[flow]]\nflow_id = \"F-0900\"\nprocedure = \"own-check\"\nrequester = {{ org = \"city-saitama\" }}\nprovider = {{ org = \"city-saitama\" }}\nitems = [\"welfare.public_assistance\"]\nsensitive_items = [\"welfare.public_assistance\"]\nlegal_basis = \"試験用\"\nvalid_from = \"2016-01-01\"\n",
            kakehashi_broker::policy::SAMPLE_FLOW_LIST
        ),
    )?;
    let broker = exchange_broker_with(Backend::Sqlite, |opts| {
        opts.console.listen = Some("127.0.0.1:0".parse().expect("address"));
        opts.exchange.flow_list = Some(flows.clone());
    })
    .await?
    .expect("sqlite");
    let mut s = scenario(&broker, 1).await?;
    let (body, _) = query_body(
        "F-0900",
        "own-check",
        "city-saitama",
        &s.city_codes[0],
        &["welfare.public_assistance"],
    );
    let mut body: serde_json::Value = serde_json::from_str(&body)?;
    // Without saying who asks, nobody could be kept from approving their own.
    let r = s.city.post("/v1/queries", body.to_string()).await?;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    body["requested_by"] = json!("self.op");
    let pending: QueryResponse =
        serde_json::from_slice(&s.city.post("/v1/queries", body.to_string()).await?.body)?;
    assert_eq!(pending.status, QueryStatus::Pending);
    let approve = format!("/api/approvals/{}/approve", pending.query_id);

    let mut asker = add_person(&broker, "self.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut asker, 0).await?;
    let r = console.call(Method::POST, &approve, None).await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);

    let mut colleague = add_person(&broker, "other.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut colleague, 0).await?;
    expect_ok(&console.call(Method::POST, &approve, None).await?)?;
    Ok(())
}
