//! The `setup` step of the `query` scenario: the union registers P persons,
//! the provider city links the same persons and deposits local-tax copies,
//! and the union's codes are kept for the run (in a JSON file).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use kakehashi_interfaces::individual_number::check_digit;
use kakehashi_interfaces::{DepositReport, RegistrationReport, WhoAmI};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::{tls_connector, Conn, Identity, Protocol, Target};

/// The broker accepts at most this many lines per batch request.
pub const MAX_BATCH_LINES: usize = 10_000;

/// What a run needs to know about the registered persons.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Codes {
    /// The requester (union) org id.
    pub requester: String,
    /// The provider (city) org id.
    pub provider: String,
    /// The requester's person codes.
    pub requester_codes: Vec<String>,
    /// The provider's codes for the same persons, in the same order.
    pub provider_codes: Vec<String>,
}

impl Codes {
    /// Reads a codes file written by [`Codes::save`].
    pub fn load(path: &Path) -> Result<Codes> {
        let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let codes: Codes = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a codes file", path.display()))?;
        if codes.requester_codes.is_empty() {
            bail!("{}: no person codes", path.display());
        }
        Ok(codes)
    }

    /// Writes the codes as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_vec(self)?)
            .with_context(|| format!("write {}", path.display()))
    }
}

/// A valid Individual Number for person `i` of run `seed` (check digit computed).
/// Multiplying by 7,919 (coprime to 10^11) is a bijection mod 10^11, so
/// different (seed, i) with i < 10^6 give different numbers and setup can run
/// again on one database with another seed.
pub fn individual_number(seed: u64, i: u64) -> String {
    let n = (seed % 100_000) * 1_000_000 + (i % 1_000_000);
    let first11 = format!("{:011}", (n * 7_919 + 12_345_678_901) % 100_000_000_000);
    let check = check_digit(&first11).unwrap_or(0);
    format!("{first11}{check}")
}

fn registration_line(seed: u64, i: u64) -> String {
    json!({
        "basic": {
            "name": format!("負荷試験 {seed}-{i}"),
            "sex": "female",
            "birth_date": "1948-04-01",
            "address": "埼玉県さいたま市浦和区高砂3-15-1",
        },
        "individual_number": individual_number(seed, i),
    })
    .to_string()
}

async fn post(conn: &mut Conn, path: &str, lines: &[String]) -> Result<Bytes> {
    let reply = conn
        .send(Method::POST, path, Bytes::from(lines.join("\n")))
        .await
        .with_context(|| format!("POST {path}"))?;
    if reply.status != StatusCode::OK {
        bail!(
            "POST {path}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    Ok(reply.body)
}

/// The org the broker sees behind a connection.
pub async fn whoami(conn: &mut Conn) -> Result<WhoAmI> {
    let reply = conn.send(Method::GET, "/v1/whoami", Bytes::new()).await?;
    if reply.status != StatusCode::OK {
        bail!(
            "GET /v1/whoami: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
    }
    serde_json::from_slice(&reply.body).context("GET /v1/whoami: unexpected body")
}

/// Codes of the applied lines of one batch, by 1-based line number.
fn codes_by_line(report: &RegistrationReport, lines: usize, who: &str) -> Result<Vec<String>> {
    if !report.confirmation_list.is_empty() {
        bail!(
            "{who}: {} lines were not applied, e.g. {:?}",
            report.confirmation_list.len(),
            report.confirmation_list.first()
        );
    }
    let mut codes = vec![String::new(); lines];
    for p in &report.applied {
        let slot = usize::try_from(p.line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| codes.get_mut(l))
            .with_context(|| format!("{who}: report names line {} of {lines}", p.line))?;
        *slot = p.person_code.to_string();
    }
    if codes.iter().any(String::is_empty) {
        bail!("{who}: the report does not cover every line");
    }
    Ok(codes)
}

/// Registers `persons` persons as `requester`, links them as `provider`,
/// deposits the provider's copies, and returns both orgs' codes.
pub async fn run(
    target: &Target,
    requester: &Identity,
    provider: &Identity,
    persons: u64,
    seed: u64,
) -> Result<Codes> {
    let started = Instant::now();
    let union_tls = tls_connector(requester, Protocol::Http1, true)?;
    let city_tls = tls_connector(provider, Protocol::Http1, true)?;
    // A fresh connection per step: a batch can take longer than the broker's
    // idle keep-alive allowance, which would close a connection kept waiting.
    let connect = |tls| async move {
        Conn::connect(target, tls, Protocol::Http1)
            .await
            .context("connect for setup")
    };
    let requester_id = whoami(&mut connect(&union_tls).await?)
        .await?
        .org_id
        .to_string();
    let provider_id = whoami(&mut connect(&city_tls).await?)
        .await?
        .org_id
        .to_string();

    let mut codes = Codes {
        requester: requester_id,
        provider: provider_id,
        requester_codes: Vec::new(),
        provider_codes: Vec::new(),
    };
    let mut start = 0u64;
    while start < persons {
        let end = (start + MAX_BATCH_LINES as u64).min(persons);
        let lines: Vec<String> = (start..end).map(|i| registration_line(seed, i)).collect();
        let registered: RegistrationReport = serde_json::from_slice(
            &post(&mut connect(&union_tls).await?, "/v1/persons", &lines).await?,
        )?;
        let union_codes = codes_by_line(&registered, lines.len(), "registration")?;
        let linked: RegistrationReport = serde_json::from_slice(
            &post(&mut connect(&city_tls).await?, "/v1/persons", &lines).await?,
        )?;
        let city_codes = codes_by_line(&linked, lines.len(), "linking")?;
        let copies: Vec<String> = city_codes
            .iter()
            .enumerate()
            .map(|(k, code)| {
                json!({"person": code, "items": {
                    "local_tax.income": 2_000_000 + start + k as u64,
                    "local_tax.taxable_status": "課税",
                }})
                .to_string()
            })
            .collect();
        let deposit: DepositReport = serde_json::from_slice(
            &post(&mut connect(&city_tls).await?, "/v1/copies", &copies).await?,
        )?;
        if deposit.applied != copies.len() as u64 {
            bail!(
                "deposit applied {} of {} copies: {:?}",
                deposit.applied,
                copies.len(),
                deposit.rejected.first()
            );
        }
        codes.requester_codes.extend(union_codes);
        codes.provider_codes.extend(city_codes);
        start = end;
    }
    eprintln!(
        "setup: {persons} persons registered by {}, linked and deposited by {} in {:.1} s",
        codes.requester,
        codes.provider,
        started.elapsed().as_secs_f64()
    );
    Ok(codes)
}
