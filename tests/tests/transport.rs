//! The exchange listener's edge (issue: foundation): mutual TLS, org admission,
//! limits. Every refusal must be visible as a counted reason.

use std::time::Duration;

use anyhow::Result;
use http::{Method, StatusCode, Version};
use kakehashi_broker::config::LimitsConfig;
use kakehashi_certs::{OrgCertOptions, Validity};
use kakehashi_interfaces::{OrgId, OrgStatus};
use kakehashi_tests::{BrokerOptions, Protocol, TestBroker, TestClient, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Waits until the broker has counted a refusal with `reason`.
async fn expect_refusal(broker: &TestBroker, reason: &'static str) {
    for _ in 0..100 {
        if broker.refusals(reason) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no refusal counted with reason {reason}");
}

/// Connects with `cert` and expects the exchange to be unusable.
async fn connect_and_fail(
    broker: &TestBroker,
    ca_pem: &str,
    cert: Option<&kakehashi_certs::IssuedCert>,
) {
    let outcome = async {
        let mut client = TestClient::connect(broker.addr(), ca_pem, cert, Protocol::Http1).await?;
        client.get("/v1/whoami").await
    }
    .await;
    assert!(
        outcome.is_err(),
        "the broker answered a refused certificate: {outcome:?}"
    );
}

#[tokio::test]
async fn registered_org_is_identified_over_http1_and_http2() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cert = broker.pki.org_cert("city-saitama")?;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let mut client = TestClient::connect(
            broker.addr(),
            broker.pki.ca.cert_pem(),
            Some(&cert),
            protocol,
        )
        .await?;
        let response = client.get("/v1/whoami").await?;
        assert_eq!(response.status, StatusCode::OK);
        let expected = if protocol == Protocol::Http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        assert_eq!(response.version, expected);
        let body = response.json()?;
        assert_eq!(body["org_id"], "city-saitama");
        assert_eq!(body["kind"], "municipality");
        assert_eq!(body["certificate_fingerprint"], cert.fingerprint_sha256);
    }
    Ok(())
}

#[tokio::test]
async fn no_client_certificate_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    connect_and_fail(&broker, broker.pki.ca.cert_pem(), None).await;
    expect_refusal(&broker, "no_client_certificate").await;
    Ok(())
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let other = TestPki::new()?;
    let cert = other.org_cert("city-saitama")?;
    connect_and_fail(&broker, broker.pki.ca.cert_pem(), Some(&cert)).await;
    expect_refusal(&broker, "unknown_ca").await;
    Ok(())
}

#[tokio::test]
async fn expired_certificate_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cert = broker.pki.org_cert_with(
        "city-saitama",
        &OrgCertOptions {
            validity: Validity::expired(),
            ..OrgCertOptions::default()
        },
    )?;
    connect_and_fail(&broker, broker.pki.ca.cert_pem(), Some(&cert)).await;
    expect_refusal(&broker, "certificate_expired").await;
    Ok(())
}

#[tokio::test]
async fn not_yet_valid_certificate_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cert = broker.pki.org_cert_with(
        "city-saitama",
        &OrgCertOptions {
            validity: Validity::not_yet_valid(),
            ..OrgCertOptions::default()
        },
    )?;
    connect_and_fail(&broker, broker.pki.ca.cert_pem(), Some(&cert)).await;
    expect_refusal(&broker, "certificate_not_yet_valid").await;
    Ok(())
}

#[tokio::test]
async fn revoked_certificate_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cert = broker.pki.org_cert("city-saitama")?;
    let mut client = TestClient::connect(
        broker.addr(),
        broker.pki.ca.cert_pem(),
        Some(&cert),
        Protocol::Http1,
    )
    .await?;
    assert_eq!(client.get("/v1/whoami").await?.status, StatusCode::OK);

    // The broker notices the new CRL without a restart.
    broker.pki.revoke(&cert)?;
    connect_and_fail(&broker, broker.pki.ca.cert_pem(), Some(&cert)).await;
    expect_refusal(&broker, "certificate_revoked").await;
    // Another certificate of the same org still works.
    let fresh = broker.pki.org_cert("city-saitama")?;
    let mut client = TestClient::connect(
        broker.addr(),
        broker.pki.ca.cert_pem(),
        Some(&fresh),
        Protocol::Http1,
    )
    .await?;
    assert_eq!(client.get("/v1/whoami").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn certificate_without_client_auth_eku_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cert = broker.pki.org_cert_with(
        "city-saitama",
        &OrgCertOptions {
            client_auth_eku: false,
            ..OrgCertOptions::default()
        },
    )?;
    connect_and_fail(&broker, broker.pki.ca.cert_pem(), Some(&cert)).await;
    expect_refusal(&broker, "certificate_wrong_purpose").await;
    Ok(())
}

#[tokio::test]
async fn unregistered_org_is_refused_with_401() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut client = broker.client("city-unknown").await?;
    let response = client.get("/v1/whoami").await?;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.error_code().as_deref(), Some("unknown_org"));
    assert!(response.json()?["request_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(broker.refusals("unknown_org"), 1);
    Ok(())
}

#[tokio::test]
async fn suspended_org_is_refused_and_reactivation_restores_it() -> Result<()> {
    let broker = TestBroker::start().await?;
    let org = OrgId::new("city-kawagoe")?;
    broker
        .store
        .set_org_status(&org, OrgStatus::Suspended)
        .await?;
    let mut client = broker.client("city-kawagoe").await?;
    let response = client.get("/v1/whoami").await?;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.error_code().as_deref(), Some("org_suspended"));
    assert_eq!(broker.refusals("org_suspended"), 1);

    // A refused connection is closed: the client reconnects.
    assert!(
        client.get("/v1/whoami").await.is_err(),
        "a connection refused for its org stayed open"
    );

    broker.store.set_org_status(&org, OrgStatus::Active).await?;
    tokio::time::sleep(Duration::from_millis(2100)).await; // directory cache TTL
    let mut client = broker.client("city-kawagoe").await?;
    assert_eq!(client.get("/v1/whoami").await?.status, StatusCode::OK);
    Ok(())
}

/// Asserts that `client`'s connection refuses its next request with
/// `reason` and is closed afterwards.
async fn refused_then_closed(
    broker: &TestBroker,
    client: &mut TestClient,
    code: &str,
    reason: &'static str,
) -> Result<()> {
    let response = client.get("/v1/whoami").await?;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.error_code().as_deref(), Some(code));
    expect_refusal(broker, reason).await;
    let mut closed = false;
    for _ in 0..50 {
        if client.get("/v1/whoami").await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the refused connection was kept open");
    Ok(())
}

#[tokio::test]
async fn revocation_reaches_connections_already_open_over_http1_and_http2() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cert = broker.pki.org_cert("city-saitama")?;
    let mut h1 = TestClient::connect(
        broker.addr(),
        broker.pki.ca.cert_pem(),
        Some(&cert),
        Protocol::Http1,
    )
    .await?;
    let mut h2 = TestClient::connect(
        broker.addr(),
        broker.pki.ca.cert_pem(),
        Some(&cert),
        Protocol::Http2,
    )
    .await?;
    assert_eq!(h1.get("/v1/whoami").await?.status, StatusCode::OK);
    assert_eq!(h2.get("/v1/whoami").await?.status, StatusCode::OK);

    // Revoked while both keep-alive connections are open: the next request
    // on each is refused and the connection closed.
    broker.pki.revoke(&cert)?;
    refused_then_closed(&broker, &mut h1, "unauthenticated", "certificate_revoked").await?;
    refused_then_closed(&broker, &mut h2, "unauthenticated", "certificate_revoked").await?;
    Ok(())
}

#[tokio::test]
async fn suspension_reaches_a_connection_already_open() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut client = broker.client("city-kawagoe").await?;
    assert_eq!(client.get("/v1/whoami").await?.status, StatusCode::OK);
    broker
        .store
        .set_org_status(&OrgId::new("city-kawagoe")?, OrgStatus::Suspended)
        .await?;
    tokio::time::sleep(Duration::from_millis(2100)).await; // directory cache TTL
    let response = client.get("/v1/whoami").await?;
    assert_eq!(response.error_code().as_deref(), Some("org_suspended"));
    assert!(
        client.get("/v1/whoami").await.is_err(),
        "a connection refused for its org stayed open"
    );
    Ok(())
}

#[tokio::test]
async fn a_certificate_expiring_during_a_connection_is_refused_then() -> Result<()> {
    let broker = TestBroker::start().await?;
    let now = time::OffsetDateTime::now_utc();
    let cert = broker.pki.org_cert_with(
        "city-saitama",
        &OrgCertOptions {
            validity: Validity {
                not_before: now - time::Duration::minutes(5),
                not_after: now + time::Duration::seconds(3),
            },
            ..OrgCertOptions::default()
        },
    )?;
    let mut client = TestClient::connect(
        broker.addr(),
        broker.pki.ca.cert_pem(),
        Some(&cert),
        Protocol::Http1,
    )
    .await?;
    assert_eq!(client.get("/v1/whoami").await?.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    refused_then_closed(
        &broker,
        &mut client,
        "unauthenticated",
        "certificate_expired",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn fingerprint_pin_mismatch_is_refused() -> Result<()> {
    let broker = TestBroker::start().await?;
    let pinned = broker.pki.org_cert("union-saitama")?;
    let other = broker.pki.org_cert("union-saitama")?;
    broker
        .store
        .set_org_pin(
            &OrgId::new("union-saitama")?,
            Some(&pinned.fingerprint_sha256),
        )
        .await?;
    let ca = broker.pki.ca.cert_pem();
    let mut wrong = TestClient::connect(broker.addr(), ca, Some(&other), Protocol::Http1).await?;
    let response = wrong.get("/v1/whoami").await?;
    assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.error_code().as_deref(),
        Some("certificate_pin_mismatch")
    );
    assert_eq!(broker.refusals("certificate_pin_mismatch"), 1);

    let mut right = TestClient::connect(broker.addr(), ca, Some(&pinned), Protocol::Http1).await?;
    assert_eq!(right.get("/v1/whoami").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn body_over_the_limit_gets_413() -> Result<()> {
    let broker = TestBroker::start_with(BrokerOptions {
        limits: LimitsConfig {
            max_body_bytes: 1024,
            ..LimitsConfig::default()
        },
        ..BrokerOptions::default()
    })
    .await?
    .expect("sqlite");
    let mut client = broker.client("city-saitama").await?;
    let response = client
        .request(Method::POST, "/v1/queries", vec![b'x'; 4096])
        .await?;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.error_code().as_deref(), Some("payload_too_large"));
    assert_eq!(broker.refusals("body_too_large"), 1);
    Ok(())
}

#[tokio::test]
async fn slow_header_client_is_cut_off() -> Result<()> {
    let broker = TestBroker::start_with(BrokerOptions {
        limits: LimitsConfig {
            header_read_timeout_ms: 1500,
            ..LimitsConfig::default()
        },
        ..BrokerOptions::default()
    })
    .await?
    .expect("sqlite");
    let cert = broker.pki.org_cert("city-saitama")?;
    let mut tls = kakehashi_tests::connect_tls(
        broker.addr(),
        broker.pki.ca.cert_pem(),
        Some(&cert),
        Protocol::Http1,
    )
    .await?;
    let request =
        b"GET /v1/whoami HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let started = std::time::Instant::now();
    let mut closed = false;
    for byte in request {
        if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
            closed = true;
            break;
        }
        // Is the server already done with us?
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1000), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(!text.contains("200 OK"), "a slow client was served");
                closed = true;
                break;
            }
            Err(_) => {} // still open; send the next byte a second later
        }
    }
    assert!(
        closed,
        "the connection stayed open for the whole slow request"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    expect_refusal(&broker, "header_timeout").await;
    Ok(())
}

#[tokio::test]
async fn flooding_org_gets_429_while_another_org_is_served() -> Result<()> {
    let broker = TestBroker::start_with(BrokerOptions {
        limits: LimitsConfig {
            per_org_per_second: 2,
            per_org_burst: 5,
            ..LimitsConfig::default()
        },
        ..BrokerOptions::default()
    })
    .await?
    .expect("sqlite");
    let mut flooder = broker.client("city-saitama").await?;
    let mut limited = 0;
    let mut retry_after = None;
    for _ in 0..40 {
        let r = flooder.get("/v1/whoami").await?;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            limited += 1;
            assert_eq!(r.error_code().as_deref(), Some("rate_limited"));
            retry_after = r.headers.get(http::header::RETRY_AFTER).cloned();
        }
    }
    assert!(
        limited >= 30,
        "only {limited} of 40 flood requests were limited"
    );
    let retry: u64 = retry_after.expect("Retry-After").to_str()?.parse()?;
    assert!(retry >= 1);

    let mut neighbour = broker.client("city-kawagoe").await?;
    for _ in 0..5 {
        assert_eq!(neighbour.get("/v1/whoami").await?.status, StatusCode::OK);
    }
    assert!(broker.refusals("rate_limited_org") >= 30);
    Ok(())
}

#[tokio::test]
async fn health_and_metrics_are_served() -> Result<()> {
    let broker = TestBroker::start().await?;
    let mut client = broker.client("city-saitama").await?;
    assert_eq!(client.get("/healthz").await?.status, StatusCode::OK);
    assert_eq!(client.get("/readyz").await?.status, StatusCode::OK);
    client.get("/v1/whoami").await?;
    let metrics = client.get("/metrics").await?;
    let text = String::from_utf8(metrics.body.to_vec())?;
    assert!(
        text.contains("kakehashi_requests_total{route=\"whoami\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("kakehashi_request_duration_seconds"));
    Ok(())
}

#[tokio::test]
async fn expired_crl_refuses_certificates_it_covers() -> Result<()> {
    let broker = TestBroker::start().await?;
    let cert = broker.pki.org_cert("city-saitama")?;
    let mut client = TestClient::connect(
        broker.addr(),
        broker.pki.ca.cert_pem(),
        Some(&cert),
        Protocol::Http1,
    )
    .await?;
    assert_eq!(client.get("/v1/whoami").await?.status, StatusCode::OK);

    // A CRL whose next update has passed: revocation status is unknown, so refuse.
    let stale = broker.pki.ca.crl_pem(
        &[],
        time::OffsetDateTime::now_utc() - time::Duration::days(1),
        99,
    )?;
    std::fs::write(broker.pki.path("ca.crl"), stale)?;
    connect_and_fail(&broker, broker.pki.ca.cert_pem(), Some(&cert)).await;
    expect_refusal(&broker, "crl_expired").await;
    Ok(())
}

#[tokio::test]
async fn metrics_and_health_answer_no_unregistered_org() -> Result<()> {
    let broker = TestBroker::start().await?;
    // A certificate from the trusted CA, for an org nobody registered.
    let cert = broker.pki.org_cert("city-nowhere")?;
    for path in ["/metrics", "/healthz", "/readyz"] {
        // A refused connection is closed: one connection per try.
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
    Ok(())
}
