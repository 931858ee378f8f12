//! The console listener's people API as a person meets it: login with a
//! temporary password, TOTP enrolment and replay, lockout, timeouts, CSRF,
//! and the role × endpoint table walked whole (R19, R20).

use std::time::Duration;

use anyhow::Result;
use http::{Method, StatusCode};
use kakehashi_broker::console::access::Access;
use kakehashi_broker::console::endpoints::{Endpoint, TABLE};
use kakehashi_broker::people::Role;
use kakehashi_tests::console::{add_person, expect_ok, logged_in, totp_code, ConsoleClient};
use kakehashi_tests::exchange::exchange_broker_with;
use kakehashi_tests::{both_backends, sql_count, Backend, BrokerOptions, TestBroker};
use serde_json::json;

async fn console_broker(adjust: impl FnOnce(&mut BrokerOptions)) -> Result<TestBroker> {
    let broker = exchange_broker_with(Backend::Sqlite, |opts| {
        opts.console.listen = Some("127.0.0.1:0".parse().expect("address"));
        adjust(opts);
    })
    .await?;
    broker.ok_or_else(|| anyhow::anyhow!("sqlite broker"))
}

fn filled(path: &str) -> String {
    path.replace("{query_id}", "q_aaaaaaaaaaaaaaaaaaaaaaaaaa")
        .replace("{version}", "1")
}

#[tokio::test]
async fn every_endpoint_refuses_every_role_it_does_not_list() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    let mut sessions = Vec::new();
    for (id, role) in [
        ("table.op", Role::Operator),
        ("table.aud", Role::Auditor),
        ("table.adm", Role::Administrator),
    ] {
        // Of the union: its administrators are the ones no org rule narrows
        // further (the flow list, orgs), so a 403 here is the role table's.
        let mut person = add_person(&broker, id, "union-saitama", &[role]).await?;
        let mut console = ConsoleClient::connect(&broker).await?;
        console.log_in(&mut person, 0).await?;
        sessions.push((role, console));
    }
    let mut anonymous = ConsoleClient::connect(&broker).await?;
    let mut checked = 0;
    for route in TABLE {
        // The HTML pages answer a browser (a redirect to the login, forms
        // rather than JSON): tests/tests/console_browser.rs walks their rows.
        if matches!(route.endpoint, Endpoint::Page(_)) {
            continue;
        }
        let path = filled(route.path);
        let body = (route.method == Method::POST).then(|| json!({}));
        if route.caller != Access::Public {
            let r = anonymous
                .call(route.method.clone(), &path, body.clone())
                .await?;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{} {path}",
                route.method
            );
            assert_eq!(r.error_code().as_deref(), Some("session_required"));
        }
        let Access::Roles(allowed) = route.caller else {
            continue;
        };
        for (role, console) in sessions.iter_mut() {
            let r = console
                .call(route.method.clone(), &path, body.clone())
                .await?;
            if allowed.contains(role) {
                assert_ne!(r.status, StatusCode::FORBIDDEN, "{role:?} {path}");
            } else {
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{role:?} {} {path}",
                    route.method
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2 * 3, "the table has role-limited endpoints");
    assert!(broker.refusals("role_not_allowed") >= checked);
    Ok(())
}

#[tokio::test]
async fn a_temporary_password_must_be_changed_before_anything_else() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    let person = add_person(&broker, "temp.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    let first = console.password(&person.user_id, &person.password).await?;
    expect_ok(&first)?;
    assert_eq!(first.json()?["stage"], "password_change");
    // Work is refused until the login is finished.
    let r = console.call(Method::GET, "/api/approvals", None).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // A short password is refused with the rule named; the old one cannot be kept.
    let short = console
        .call(
            Method::POST,
            "/api/session/password",
            Some(json!({"current_password": person.password, "new_password": "short"})),
        )
        .await?;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    let text = String::from_utf8_lossy(&short.body).to_string();
    assert!(
        text.contains("12") || text.contains("new_password"),
        "{text}"
    );
    let same = console
        .call(
            Method::POST,
            "/api/session/password",
            Some(json!({"current_password": person.password, "new_password": person.password})),
        )
        .await?;
    assert_eq!(same.status, StatusCode::BAD_REQUEST);
    let changed = console
        .call(
            Method::POST,
            "/api/session/password",
            Some(json!({"current_password": person.password, "new_password": "川越の新しい合言葉-2026"})),
        )
        .await?;
    expect_ok(&changed)?;
    assert_eq!(changed.json()?["stage"], "totp_enrolment");
    let enrol = console
        .call(Method::POST, "/api/session/totp/enrolment", None)
        .await?;
    expect_ok(&enrol)?;
    let answer = enrol.json()?;
    assert!(answer["otpauth_uri"]
        .as_str()
        .unwrap_or("")
        .starts_with("otpauth://totp/"));
    assert!(answer["qr_svg"].as_str().unwrap_or("").contains("<svg"));
    Ok(())
}

#[tokio::test]
async fn a_used_totp_code_is_refused_and_logged() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    let mut person = add_person(&broker, "replay.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut person, 0).await?;
    // Log in again with the very code that confirmed the enrolment.
    let used = totp_code(&person, 0)?;
    let mut again = ConsoleClient::connect(&broker).await?;
    let wrong = again
        .password(&person.user_id, "まちがったパスワードです")
        .await?;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    expect_ok(&again.password(&person.user_id, &person.password).await?)?;
    let r = again
        .call(
            Method::POST,
            "/api/session/totp",
            Some(json!({"code": used})),
        )
        .await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    let r = again.call(Method::GET, "/api/approvals", None).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let pools = broker.broker.state().store.pools();
    let failed = "SELECT COUNT(*) FROM operation_log WHERE actor = 'replay.op' AND action = 'totp_failed' AND result = 'refused'";
    assert_eq!(sql_count(&pools, failed).await?, 1);
    // The next code works.
    let next = totp_code(&person, 1)?;
    let r = again
        .call(
            Method::POST,
            "/api/session/totp",
            Some(json!({"code": next})),
        )
        .await?;
    expect_ok(&r)?;
    assert_eq!(r.json()?["stage"], "full");
    // The last failed login is shown after login.
    assert!(
        r.json()?["last_failed_login"]["at"].is_string(),
        "{:?}",
        r.json()?
    );
    Ok(())
}

#[tokio::test]
async fn after_five_wrong_passwords_the_account_is_locked() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    let person = add_person(&broker, "lock.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    for attempt in 1..=4 {
        let r = console
            .password(&person.user_id, "まちがったパスワードです")
            .await?;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    // The fifth failure locks the account and says until when.
    let r = console
        .password(&person.user_id, "まちがったパスワードです")
        .await?;
    assert_eq!(r.status, StatusCode::LOCKED, "{:?}", r.body);
    // Locked now: even the right password is refused.
    let r = console.password(&person.user_id, &person.password).await?;
    assert_eq!(r.status, StatusCode::LOCKED, "{:?}", r.body);
    assert_eq!(r.error_code().as_deref(), Some("account_locked"));
    let pools = broker.broker.state().store.pools();
    let sql = |action: &str| {
        format!(
            "SELECT COUNT(*) FROM operation_log WHERE actor = 'lock.op' AND action = '{action}'"
        )
    };
    assert_eq!(sql_count(&pools, &sql("login_failed")).await?, 4);
    assert_eq!(sql_count(&pools, &sql("account_locked")).await?, 2);
    // No operation-log row holds a password.
    let leaks = "SELECT COUNT(*) FROM operation_log WHERE COALESCE(detail, '') LIKE '%パスワードです%' OR COALESCE(target, '') LIKE '%パスワードです%'";
    assert_eq!(sql_count(&pools, leaks).await?, 0);
    Ok(())
}

/// What someone without the password sees of an answer: status, error
/// code, the body's fields and the message with its digits (the lock's
/// time) blanked.
fn answer_shape(r: &kakehashi_tests::TestResponse) -> Result<(StatusCode, Vec<String>, String)> {
    let body = r.json()?;
    let fields = body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let message = body
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    Ok((r.status, fields, message))
}

/// Five wrong passwords tell nobody whether a user id exists: a person in
/// use, a disabled person and an id nobody has get the same answers, four
/// times "wrong user id or password" and then "locked until …" for the
/// lock's full time; the id nobody has is kept neither in the database nor
/// in the operation log.
async fn an_unknown_user_id_answers_as_a_real_one(backend: Backend) -> Result<()> {
    let Some(broker) = exchange_broker_with(backend, |opts| {
        opts.console.listen = Some("127.0.0.1:0".parse().expect("address"));
    })
    .await?
    else {
        return Ok(());
    };
    let person = add_person(&broker, "probe.op", "city-saitama", &[Role::Operator]).await?;
    add_person(&broker, "probe.gone", "city-saitama", &[Role::Operator]).await?;
    let pools = broker.broker.state().store.pools();
    kakehashi_broker::people::People::new(
        pools.clone(),
        kakehashi_broker::people::PeopleConfig::default(),
    )?
    .disable(&kakehashi_interfaces::people::UserId::new("probe.gone")?)
    .await?;
    let ids = ["probe.op", "probe.gone", "nobody.here"];
    let mut console = ConsoleClient::connect(&broker).await?;
    for attempt in 1..=6 {
        let started = time::OffsetDateTime::now_utc();
        let mut shapes = Vec::new();
        for id in ids {
            let r = console.password(id, "まちがったパスワードです").await?;
            let shape = answer_shape(&r)?;
            if attempt < 5 {
                assert_eq!(
                    r.status,
                    StatusCode::UNAUTHORIZED,
                    "{id}, attempt {attempt}"
                );
                assert_eq!(r.error_code().as_deref(), Some("unauthenticated"));
            } else {
                assert_eq!(r.status, StatusCode::LOCKED, "{id}, attempt {attempt}");
                assert_eq!(r.error_code().as_deref(), Some("account_locked"));
                // Locked for the full 15 minutes, Japanese first.
                let message = r.json()?["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                assert!(message.starts_with("連続して失敗したため"), "{message}");
                let until = message
                    .split("locked until ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .unwrap_or_default();
                let until = time::OffsetDateTime::parse(
                    until,
                    &time::format_description::well_known::Rfc3339,
                )?;
                let lock = until - started;
                assert!(
                    lock > time::Duration::minutes(14)
                        && lock <= time::Duration::minutes(15) + time::Duration::seconds(5),
                    "{id}: locked for {lock}"
                );
            }
            shapes.push(shape);
        }
        assert_eq!(
            shapes[1], shapes[0],
            "disabled vs in use, attempt {attempt}"
        );
        assert_eq!(shapes[2], shapes[0], "unknown vs in use, attempt {attempt}");
    }
    // Locked: the right password of the person is refused the same way.
    let r = console.password(&person.user_id, &person.password).await?;
    assert_eq!(r.status, StatusCode::LOCKED);
    // The id nobody has is counted only under a keyed hash (in the
    // database several nodes share; in memory on SQLite, one node), and the
    // operation log names it as the unknown id.
    let stored = sql_count(&pools, "SELECT COUNT(*) FROM unknown_login_failures").await?;
    let expected = match backend {
        Backend::Postgres => 1,
        Backend::Sqlite => 0,
    };
    assert_eq!(stored, expected);
    let kept = "SELECT COUNT(*) FROM operation_log WHERE actor = 'nobody.here' \
        OR COALESCE(detail, '') LIKE '%nobody.here%' OR COALESCE(target, '') LIKE '%nobody.here%'";
    assert_eq!(sql_count(&pools, kept).await?, 0);
    let locks = "SELECT COUNT(*) FROM operation_log WHERE actor = 'unknown-user-id' \
        AND action = 'account_locked'";
    assert_eq!(sql_count(&pools, locks).await?, 2);
    Ok(())
}

both_backends!(an_unknown_user_id_answers_as_a_real_one:
    an_unknown_user_id_answers_as_a_real_one_sqlite,
    an_unknown_user_id_answers_as_a_real_one_postgres);

#[tokio::test]
async fn an_idle_session_ends_and_logout_ends_it_at_once() -> Result<()> {
    let broker = console_broker(|opts| {
        opts.people.idle_timeout_secs = 2;
    })
    .await?;
    let mut person = add_person(&broker, "idle.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut person, 0).await?;
    expect_ok(&console.call(Method::GET, "/api/approvals", None).await?)?;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = console.call(Method::GET, "/api/approvals", None).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    let mut fresh = ConsoleClient::connect(&broker).await?;
    fresh.log_in(&mut person, 1).await?;
    let out = fresh.call(Method::DELETE, "/api/session", None).await?;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let r = fresh.call(Method::GET, "/api/session", None).await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn the_console_answers_with_headers_that_keep_pages_private() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    let r = console.call(Method::GET, "/api/keys", None).await?;
    expect_ok(&r)?;
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(
            r.headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name}"
        );
    }
    assert!(r.headers.get("strict-transport-security").is_some());
    let keys = r.json()?;
    let key_id = keys["record_keys"][0]["key_id"].as_str().unwrap_or("");
    assert_eq!(key_id, broker.broker.state().records.sealer_key_id());
    let public_key = keys["record_keys"][0]["public_key_hex"]
        .as_str()
        .unwrap_or("");
    assert_eq!(
        public_key,
        broker.broker.state().records.sealer_public_key_hex()
    );
    assert!(keys["verify_command"]
        .as_str()
        .unwrap_or("")
        .ends_with(&format!(" --trusted-key {public_key}")));
    Ok(())
}

#[tokio::test]
async fn a_flow_list_version_needs_a_second_administrator() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    let mut a = logged_in(
        &broker,
        "flow.adm1",
        "union-saitama",
        &[Role::Administrator],
    )
    .await?;
    let mut b = logged_in(
        &broker,
        "flow.adm2",
        "union-saitama",
        &[Role::Administrator],
    )
    .await?;

    // The sample list with one more flow: the union asks agency-pension.
    let text = format!(
        "{}\n[[flow]]\nflow_id = \"F-0999\"\nprocedure = \"pension-check\"\nrequester = {{ kind = \"union\" }}\nprovider = {{ org = \"agency-pension\" }}\nitems = [\"pension.amount\"]\nsensitive_items = []\nlegal_basis = \"試験用\"\nvalid_from = \"2016-01-01\"\n",
        kakehashi_broker::policy::SAMPLE_FLOW_LIST
    );
    let proposed = a
        .call(
            Method::POST,
            "/api/flow-lists",
            Some(json!({ "text": text })),
        )
        .await?;
    expect_ok(&proposed)?;
    let version = proposed.json()?["version"].as_u64().unwrap_or(0);
    let before = broker.broker.state().flows().version;
    assert!(version > before);

    let shown = b
        .call(Method::GET, &format!("/api/flow-lists/{version}"), None)
        .await?;
    expect_ok(&shown)?;
    assert_eq!(shown.json()?["diff_from_in_force"][0]["flow_id"], "F-0999");

    // The proposer cannot approve their own version; nothing changes.
    let own = a
        .call(
            Method::POST,
            &format!("/api/flow-lists/{version}/approve"),
            None,
        )
        .await?;
    assert_eq!(own.status, StatusCode::FORBIDDEN, "{:?}", own.body);
    assert_eq!(broker.broker.state().flows().version, before);

    let approved = b
        .call(
            Method::POST,
            &format!("/api/flow-lists/{version}/approve"),
            None,
        )
        .await?;
    expect_ok(&approved)?;
    assert_eq!(broker.broker.state().flows().version, version);

    let pools = broker.broker.state().store.pools();
    for (actor, action) in [
        ("flow.adm1", "flow_list_proposed"),
        ("flow.adm2", "flow_list_approved"),
    ] {
        let sql = format!(
            "SELECT COUNT(*) FROM operation_log WHERE actor = '{actor}' AND action = '{action}' AND result = 'success'"
        );
        assert_eq!(sql_count(&pools, &sql).await?, 1, "{action}");
    }
    Ok(())
}

#[tokio::test]
async fn an_auditor_searches_exports_and_the_download_verifies_offline() -> Result<()> {
    use kakehashi_tests::exchange::{query_body, scenario};
    let broker = console_broker(|_| {}).await?;
    let mut s = scenario(&broker, 2).await?;
    for code in &s.union_codes {
        let (body, _) = query_body(
            "F-0120",
            "premium-calculation",
            "city-saitama",
            code,
            &["local_tax.income"],
        );
        assert_eq!(
            s.union.post("/v1/queries", body).await?.status,
            StatusCode::OK
        );
    }
    let mut auditor = add_person(&broker, "audit.union", "union-saitama", &[Role::Auditor]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut auditor, 0).await?;

    let page = console
        .call(Method::GET, "/api/records?outcome=provided&size=1", None)
        .await?;
    expect_ok(&page)?;
    let first = page.json()?;
    assert_eq!(first["rows"].as_array().map(Vec::len), Some(1));
    let before = first["next_before"].as_u64().unwrap_or(0);
    assert!(before > 0, "{first}");
    let next = console
        .call(
            Method::GET,
            &format!("/api/records?outcome=provided&size=1&before={before}"),
            None,
        )
        .await?;
    assert_eq!(next.json()?["rows"].as_array().map(Vec::len), Some(1));
    // Narrowed to exchanges with another org: the city, and a city that never took part.
    let with_city = console
        .call(
            Method::GET,
            "/api/records?org=city-saitama&outcome=provided",
            None,
        )
        .await?;
    assert_eq!(with_city.json()?["rows"].as_array().map(Vec::len), Some(2));
    let with_kawagoe = console
        .call(Method::GET, "/api/records?org=city-kawagoe", None)
        .await?;
    assert_eq!(
        with_kawagoe.json()?["rows"].as_array().map(Vec::len),
        Some(0)
    );
    // No person code of either org in what an auditor sees.
    let text = format!("{first}{}", String::from_utf8_lossy(&next.body));
    for code in s.union_codes.iter().chain(&s.city_codes) {
        assert!(!text.contains(code.as_str()), "{text}");
    }

    // Making an export writes the operation log and keeps files: not a GET,
    // which a link or an image on another page could send.
    let refused = console
        .call(Method::GET, "/api/records/export?format=csv", None)
        .await?;
    assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED);
    let made = console
        .call(Method::POST, "/api/records/export?format=csv", None)
        .await?;
    expect_ok(&made)?;
    let made = made.json()?;
    let dir = tempfile::tempdir()?;
    let data_path = download_export(&mut console, &made, dir.path()).await?;
    verify_offline(&broker, &data_path)?;
    // Another person cannot fetch this auditor's download.
    let url = made["files"][0]["url"].as_str().unwrap_or("").to_string();
    let mut other = add_person(&broker, "audit.other", "union-saitama", &[Role::Auditor]).await?;
    let mut other_console = ConsoleClient::connect(&broker).await?;
    other_console.log_in(&mut other, 0).await?;
    let r = other_console.call(Method::GET, &url, None).await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Searches and exports are themselves logged (R16, R17).
    let pools = broker.broker.state().store.pools();
    for action in ["records_search", "records_export"] {
        let sql = format!(
            "SELECT COUNT(*) FROM operation_log WHERE actor = 'audit.union' AND action = '{action}'"
        );
        assert!(sql_count(&pools, &sql).await? >= 1, "{action}");
    }
    Ok(())
}

/// Downloads every file of an export `made` into `dir`; the CSV's path.
async fn download_export(
    console: &mut ConsoleClient,
    made: &serde_json::Value,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let mut data_path = None;
    for file in made["files"].as_array().cloned().unwrap_or_default() {
        let name = file["name"].as_str().unwrap_or("").to_string();
        let url = file["url"].as_str().unwrap_or("").to_string();
        let got = console.call(Method::GET, &url, None).await?;
        expect_ok(&got)?;
        let path = dir.join(&name);
        std::fs::write(&path, &got.body)?;
        if name.ends_with(".csv") {
            // Opens in Excel with Japanese intact.
            assert!(got.body.starts_with(&[0xEF, 0xBB, 0xBF]), "CSV without BOM");
            data_path = Some(path);
        }
    }
    data_path.ok_or_else(|| anyhow::anyhow!("no CSV in {made}"))
}

/// `kakehashi audit verify` of a downloaded export, against the broker's
/// checkpoint key, succeeds.
fn verify_offline(broker: &TestBroker, data_path: &std::path::Path) -> Result<()> {
    let key_id = broker.broker.state().records.sealer_key_id().to_string();
    let client = kakehashi_tests::binaries::workspace_binary("kakehashi-client", "kakehashi")?;
    let out = std::process::Command::new(client)
        .args(["audit", "verify"])
        .arg(data_path)
        .args(["--trusted-key-id", &key_id])
        .output()?;
    assert!(
        out.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn instants_beyond_the_year_9999_are_refused_not_a_dropped_connection() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    // Before any login: a path that looks like an instant ends up, in the
    // 404 page, shown in JST, where 9999-12-31T23:59:59Z is the year 10000.
    let mut console = ConsoleClient::connect(&broker).await?;
    let r = console.page("/9999-12-31T23:59:59Z").await?;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let page = String::from_utf8_lossy(&r.body);
    assert!(page.contains("9999-12-31 23:59:59 UTC"), "{page}");

    let mut auditor = add_person(&broker, "audit.union", "union-saitama", &[Role::Auditor]).await?;
    console.log_in(&mut auditor, 0).await?;
    for path in [
        "/api/records?from=9999-12-31T23:30:00-01:00",
        "/api/records?until=-9999-01-01",
        "/api/records/export?format=csv&until=9999-12-31T23:30:00-01:00",
        "/api/operation-log?from=9999-12-31T23:30:00-01:00",
        "/api/operation-log?until=-9999-01-01",
    ] {
        let method = if path.starts_with("/api/records/export") {
            Method::POST
        } else {
            Method::GET
        };
        let r = console.call(method, path, None).await?;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.error_code().as_deref(), Some("invalid_input"), "{path}");
    }
    for path in [
        "/records?from=9999-12-31T23:30:00-01:00",
        "/operation-log?until=-9999-01-01",
    ] {
        let r = console.page(path).await?;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
    }
    // The broker still answers.
    expect_ok(&console.call(Method::GET, "/api/records", None).await?)?;
    Ok(())
}

#[tokio::test]
async fn an_individual_number_in_the_operation_log_is_hidden_from_auditors_without_the_privilege(
) -> Result<()> {
    use kakehashi_broker::people::{People, PeopleConfig};
    use kakehashi_interfaces::people::{Grant, UserId};
    let broker = console_broker(|_| {}).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    // What a person typed as a user id nobody has (a password in the
    // wrong field, or an Individual Number) is not kept in the log.
    for typed in ["correcthorse42", "987654321018"] {
        let r = console.password(typed, "まちがったパスワードです").await?;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let pools = broker.broker.state().store.pools();
    let kept = "SELECT COUNT(*) FROM operation_log WHERE actor LIKE '%correcthorse42%' OR actor LIKE '%987654321018%' OR COALESCE(target, '') LIKE '%987654321018%'";
    assert_eq!(sql_count(&pools, kept).await?, 0);
    let unknown = "SELECT COUNT(*) FROM operation_log WHERE actor = 'unknown-user-id' AND action = 'login_failed'";
    assert_eq!(sql_count(&pools, unknown).await?, 2);

    // A user whose id is a valid Individual Number fails a login: their id
    // is in the log, as an auditor's JSON search shows it only to an
    // auditor holding the privilege.
    let number = "123456789018";
    add_person(&broker, number, "union-saitama", &[Role::Operator]).await?;
    let r = console.password(number, "まちがったパスワードです").await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let mut plain = add_person(&broker, "audit.plain", "union-saitama", &[Role::Auditor]).await?;
    let mut holder = add_person(&broker, "audit.number", "union-saitama", &[Role::Auditor]).await?;
    People::new(pools.clone(), PeopleConfig::default())?
        .grant(&UserId::new("audit.number")?, Grant::NumberPrivilege)
        .await?;
    for (person, sees) in [(&mut plain, false), (&mut holder, true)] {
        let mut console = ConsoleClient::connect(&broker).await?;
        console.log_in(person, 0).await?;
        let r = console
            .call(Method::GET, "/api/operation-log?action=login_failed", None)
            .await?;
        expect_ok(&r)?;
        let text = String::from_utf8_lossy(&r.body);
        assert_eq!(text.contains(number), sees, "{}: {text}", person.user_id);
        assert_eq!(
            text.contains("表示する権限がありません"),
            !sees,
            "{}: {text}",
            person.user_id
        );
    }
    Ok(())
}

#[tokio::test]
async fn org_rules_hold_on_the_console_as_on_the_exchange() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    let mut union = logged_in(
        &broker,
        "rules.union",
        "union-saitama",
        &[Role::Administrator],
    )
    .await?;
    let mut city = logged_in(
        &broker,
        "rules.city",
        "city-saitama",
        &[Role::Administrator],
    )
    .await?;
    let mut auditor = logged_in(&broker, "rules.caud", "city-saitama", &[Role::Auditor]).await?;
    let mut kawagoe = logged_in(&broker, "rules.kaud", "city-kawagoe", &[Role::Auditor]).await?;

    // The flow list governs every org: a city's administrator neither
    // proposes nor approves a version.
    let text = format!(
        "{}\n# a city's idea\n",
        kakehashi_broker::policy::SAMPLE_FLOW_LIST
    );
    let before = broker.broker.state().flows().version;
    let r = city
        .call(
            Method::POST,
            "/api/flow-lists",
            Some(json!({ "text": text })),
        )
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    let proposed = union
        .call(
            Method::POST,
            "/api/flow-lists",
            Some(json!({ "text": text })),
        )
        .await?;
    expect_ok(&proposed)?;
    let version = proposed.json()?["version"].as_u64().unwrap_or(0);
    let r = city
        .call(
            Method::POST,
            &format!("/api/flow-lists/{version}/approve"),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(broker.broker.state().flows().version, before);

    // An administrator the proposer added (and so whose temporary password
    // the proposer knew) does not approve the proposer's version.
    let added = union
        .call(
            Method::POST,
            "/api/users",
            Some(json!({"user_id": "rules.made", "org": "union-saitama", "roles": ["administrator"]})),
        )
        .await?;
    expect_ok(&added)?;
    let mut made = kakehashi_tests::console::Person {
        user_id: "rules.made".into(),
        password: added.json()?["temporary_password"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        totp_secret: None,
    };
    let mut second = ConsoleClient::connect(&broker).await?;
    second.log_in(&mut made, 0).await?;
    let r = second
        .call(
            Method::POST,
            &format!("/api/flow-lists/{version}/approve"),
            None,
        )
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    assert_eq!(broker.broker.state().flows().version, before);

    // Nobody grants themselves a role or the Individual-Number privilege.
    for grant in [
        json!({"role": "auditor"}),
        json!({"number_privilege": true}),
    ] {
        let r = city
            .call(
                Method::POST,
                "/api/users/rules.city/grant",
                Some(grant.clone()),
            )
            .await?;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{grant}: {:?}", r.body);
    }
    // Nor resets another administrator's password (whoever resets learns
    // the temporary one); the host command does.
    let r = union
        .call(Method::POST, "/api/users/rules.city/reset", None)
        .await?;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{:?}", r.body);
    // Another administrator may grant.
    let r = union
        .call(
            Method::POST,
            "/api/users/rules.city/grant",
            Some(json!({"role": "auditor"})),
        )
        .await?;
    expect_ok(&r)?;

    // An auditor reads the operation log of their own org only.
    let seen = auditor
        .call(Method::GET, "/api/operation-log?limit=1000", None)
        .await?;
    expect_ok(&seen)?;
    let entries = seen.json()?["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!entries.is_empty());
    for e in &entries {
        assert_eq!(e["org"], "city-saitama", "{e}");
    }

    // The people of a suspended org are refused, as its systems are.
    let r = union
        .call(Method::POST, "/api/orgs/city-kawagoe/suspend", None)
        .await?;
    expect_ok(&r)?;
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let r = kawagoe
        .call(Method::GET, "/api/operation-log", None)
        .await?;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{:?}", r.body);
    assert_eq!(r.error_code().as_deref(), Some("org_suspended"));
    Ok(())
}

#[tokio::test]
async fn an_error_page_for_a_made_up_path_links_only_within_the_console() -> Result<()> {
    let broker = console_broker(|_| {}).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    for path in ["//evil.example/", "/\\evil.example/"] {
        let r = console.page(path).await?;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        let page = String::from_utf8_lossy(&r.body);
        let links: Vec<String> = page
            .split("href=\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(|link| link.replace("&#x2f;", "/").replace("&#x5c;", "\\"))
            .collect();
        assert!(links.iter().any(|l| l == "/?lang=en"), "{path}: {links:?}");
        for link in &links {
            assert!(
                !link.starts_with("//") && !link.starts_with("/\\"),
                "{path}: {link}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_session_in_use_still_ends_at_its_absolute_lifetime() -> Result<()> {
    let broker = console_broker(|opts| {
        opts.people.session_lifetime_secs = 3;
    })
    .await?;
    let mut person = add_person(&broker, "life.op", "city-saitama", &[Role::Operator]).await?;
    let mut console = ConsoleClient::connect(&broker).await?;
    console.log_in(&mut person, 0).await?;
    let started = std::time::Instant::now();
    // Used every half second: the idle timeout never strikes, the lifetime does.
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = console.call(Method::GET, "/api/approvals", None).await?;
        if started.elapsed() < Duration::from_millis(2500) {
            assert_eq!(r.status, StatusCode::OK);
        } else if started.elapsed() > Duration::from_millis(3500) {
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            break;
        }
    }
    Ok(())
}
