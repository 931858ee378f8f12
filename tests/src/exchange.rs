//! Helpers for exchange scenarios: a broker with the sample flow list, persons
//! registered by the union and linked by a city, copies deposited.

use anyhow::{bail, Context, Result};
use http::StatusCode;
use kakehashi_interfaces::envelope::{open_answer, EnvelopeContext};
use kakehashi_interfaces::individual_number::check_digit;
use kakehashi_interfaces::{QueryResponse, RegistrationReport, ReplyKeyPair};
use serde_json::json;

use crate::{Backend, BrokerOptions, TestBroker, TestClient};

/// A valid Individual Number derived from `seed` (the check digit computed).
pub fn individual_number(seed: u64) -> String {
    let first11 = format!(
        "{:011}",
        12_345_678_901u64.wrapping_add(seed.wrapping_mul(7_919)) % 100_000_000_000
    );
    let check = check_digit(&first11).unwrap_or(0);
    format!("{first11}{check}")
}

/// One JSON Lines registration line.
pub fn registration_line(name: &str, number: &str) -> String {
    json!({
        "basic": {"name": name, "sex": "female", "birth_date": "1948-04-01", "address": "埼玉県さいたま市浦和区高砂3-15-1"},
        "individual_number": number,
    })
    .to_string()
}

/// A registration line stating that the person lost eligibility on `lost_on`.
pub fn registration_line_lost(name: &str, number: &str, lost_on: &str) -> String {
    let mut line: serde_json::Value =
        serde_json::from_str(&registration_line(name, number)).unwrap_or_default();
    line["eligibility_lost_on"] = json!(lost_on);
    line.to_string()
}

/// A broker with the sample flow list on `backend`; `None` when PostgreSQL is not configured.
pub async fn exchange_broker(backend: Backend) -> Result<Option<TestBroker>> {
    exchange_broker_with(backend, |_| {}).await
}

/// [`exchange_broker`] with options adjusted by `adjust` (limits, expiry …).
pub async fn exchange_broker_with(
    backend: Backend,
    adjust: impl FnOnce(&mut BrokerOptions),
) -> Result<Option<TestBroker>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("flows.toml");
    std::fs::write(&path, kakehashi_broker::policy::SAMPLE_FLOW_LIST)?;
    let mut opts = BrokerOptions {
        backend,
        ..BrokerOptions::default()
    };
    opts.exchange.flow_list = Some(path);
    adjust(&mut opts);
    let broker = TestBroker::start_with(opts).await?;
    // The flow list was stored at start; the temp file may go.
    drop(dir);
    Ok(broker)
}

/// A scenario: the union and a city know the same persons by their own codes.
pub struct Scenario {
    /// Union client.
    pub union: TestClient,
    /// city-saitama client.
    pub city: TestClient,
    /// The union's codes, in registration order.
    pub union_codes: Vec<String>,
    /// city-saitama's codes for the same persons.
    pub city_codes: Vec<String>,
    /// The Individual Numbers used (to search for leaks).
    pub numbers: Vec<String>,
}

/// Posts JSON Lines and expects 200.
pub async fn post_ok(
    client: &mut TestClient,
    path: &str,
    lines: &[String],
) -> Result<serde_json::Value> {
    let response = client.post(path, lines.join("\n")).await?;
    if response.status != StatusCode::OK {
        bail!(
            "{path}: {} {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    response.json()
}

/// Registers `n` persons with the union, links them at city-saitama and
/// deposits the city's local-tax copies (income = 2,000,000 + i yen).
pub async fn scenario(broker: &TestBroker, n: u64) -> Result<Scenario> {
    let union = broker.client("union-saitama").await?;
    let city = broker.client("city-saitama").await?;
    scenario_with(union, city, n).await
}

/// [`scenario`] over given clients (e.g. to a broker running as a subprocess).
pub async fn scenario_with(
    mut union: TestClient,
    mut city: TestClient,
    n: u64,
) -> Result<Scenario> {
    let numbers: Vec<String> = (0..n).map(individual_number).collect();
    let lines: Vec<String> = numbers
        .iter()
        .enumerate()
        .map(|(i, num)| registration_line(&format!("被保険者 {i}"), num))
        .collect();
    let report: RegistrationReport =
        serde_json::from_value(post_ok(&mut union, "/v1/persons", &lines).await?)?;
    if !report.confirmation_list.is_empty() {
        bail!("registration refused lines: {:?}", report.confirmation_list);
    }
    let union_codes: Vec<String> = report
        .applied
        .iter()
        .map(|p| p.person_code.to_string())
        .collect();
    let linked: RegistrationReport =
        serde_json::from_value(post_ok(&mut city, "/v1/persons", &lines).await?)?;
    let city_codes: Vec<String> = linked
        .applied
        .iter()
        .map(|p| p.person_code.to_string())
        .collect();
    let copies: Vec<String> = city_codes
        .iter()
        .enumerate()
        .map(|(i, code)| {
            json!({"person": code, "items": {
                "local_tax.income": 2_000_000 + i as u64,
                "local_tax.taxable_status": "課税",
                "welfare.public_assistance": false,
            }})
            .to_string()
        })
        .collect();
    let deposit = post_ok(&mut city, "/v1/copies", &copies).await?;
    if deposit["applied"] != json!(n) {
        bail!("deposit: {deposit}");
    }
    Ok(Scenario {
        union,
        city,
        union_codes,
        city_codes,
        numbers,
    })
}

/// A query body and the key pair whose public half it carries.
pub fn query_body(
    flow: &str,
    procedure: &str,
    provider: &str,
    person: &str,
    items: &[&str],
) -> (String, ReplyKeyPair) {
    let keys = ReplyKeyPair::generate();
    let body = json!({
        "flow_id": flow,
        "procedure": procedure,
        "provider": provider,
        "person": person,
        "items": items,
        "reply_key": keys.public().to_base64url(),
    });
    (body.to_string(), keys)
}

/// Reads every file under `dir` (recursively) into one byte vector.
pub fn all_bytes_under(dir: &std::path::Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(all_bytes_under(&path)?);
        } else {
            out.extend(std::fs::read(&path)?);
        }
    }
    Ok(out)
}

/// The union asks the city for one person's income (`F-0120`): the value it
/// opens with the query's reply key, or the refusal's error code.
pub async fn income_of(
    union: &mut TestClient,
    union_code: &str,
) -> Result<Result<serde_json::Value, String>> {
    let (body, keys) = query_body(
        "F-0120",
        "premium-calculation",
        "city-saitama",
        union_code,
        &["local_tax.income"],
    );
    let response = union.post("/v1/queries", body).await?;
    if response.status != StatusCode::OK {
        return Ok(Err(response.error_code().unwrap_or_default()));
    }
    Ok(Ok(
        opened_items(&response.body, &keys)?["local_tax.income"].clone()
    ))
}

/// The items of a union-saitama ← city-saitama answer (a `QueryResponse`
/// body), opened with the query's reply key.
pub fn opened_items(body: &[u8], keys: &ReplyKeyPair) -> Result<serde_json::Value> {
    let answer: QueryResponse = serde_json::from_slice(body)?;
    let context = EnvelopeContext {
        query_id: answer.query_id.clone(),
        requester: "union-saitama".parse()?,
        provider: "city-saitama".parse()?,
    };
    let envelope = answer
        .envelope
        .ok_or_else(|| anyhow::anyhow!("a provided answer without an envelope"))?;
    let payload = open_answer(keys, &context, &envelope)?;
    Ok(serde_json::to_value(&payload.items)?)
}
