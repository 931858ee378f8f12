//! The cryptographic work of one query, operation by operation, with the
//! broker's own code paths: HPKE seal of the answer, Ed25519 permit
//! signature, AES-256-GCM open of the deposited copy (the broker's Keyring on
//! a temporary SQLite store) and the provision record's hashes. Shared by the
//! criterion benches and `kakehashi-bench crypto-floor`.
//!
//! The **crypto floor** is the query rate the machine's cores could reach if
//! that work were all a query cost: no TLS, HTTP, JSON or database.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use ed25519_dalek::SigningKey;
use kakehashi_broker::keys::Keyring;
use kakehashi_broker::policy::{self, Asked, FlowIndex, OrgRef};
use kakehashi_broker::store::{SqliteStore, Store};
use kakehashi_interfaces::audit::{self, Outcome, Record};
use kakehashi_interfaces::envelope::{open_answer, seal_answer};
use kakehashi_interfaces::permit::{sign, PermitClaims, SignedPermit};
use kakehashi_interfaces::{
    AnswerPayload, EnvelopeContext, FlowId, ItemCode, ItemValue, KeyId, OrgId, OrgKind, PermitId,
    PermitKeySet, PermitPublicKey, PersonCode, ProcedureCode, QueryId, ReplyKeyPair,
    SealedEnvelope,
};
use serde::Serialize;
use time::OffsetDateTime;

/// Inputs shaped like one `F-0120` query, and the broker's keyring.
pub struct Fixture {
    _dir: tempfile::TempDir,
    /// The broker's keyring on a temporary store.
    pub keyring: Keyring,
    /// The sample flow list.
    pub flows: FlowIndex,
    reply: ReplyKeyPair,
    context: EnvelopeContext,
    payload: AnswerPayload,
    claims: PermitClaims,
    signing_key: SigningKey,
    key_set: PermitKeySet,
    copy_plain: Vec<u8>,
    copy_context: Vec<u8>,
    copy_cipher: Vec<u8>,
    record: Record,
    salt: [u8; audit::SALT_LEN],
    requester: OrgId,
    provider: OrgId,
    today: time::Date,
}

fn id<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T> {
    r.map_err(|e| anyhow!("{e}"))
}

impl Fixture {
    /// Opens a keyring on a fresh SQLite store in a temporary directory.
    pub async fn new() -> Result<Fixture> {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let store = SqliteStore::open(&dir.path().join("floor.db"))
            .await
            .map_err(|e| anyhow!("open SQLite store: {e}"))?;
        let keyring = Keyring::open(&dir.path().join("keys"), store.pools())
            .await
            .map_err(|e| anyhow!("open keyring: {e}"))?;
        let flows = FlowIndex::new(
            1,
            policy::parse_flow_list(policy::SAMPLE_FLOW_LIST).map_err(|e| anyhow!("{e}"))?,
        );
        let requester = id(OrgId::new("union-saitama"))?;
        let provider = id(OrgId::new("city-saitama"))?;
        let query_id = QueryId::random();
        let reply = ReplyKeyPair::generate();
        let item = id(ItemCode::new("local_tax.income"))?;
        let context = EnvelopeContext {
            query_id: query_id.clone(),
            requester: requester.clone(),
            provider: provider.clone(),
        };
        let payload = AnswerPayload {
            query_id: query_id.clone(),
            flow_id: id(FlowId::new("F-0120"))?,
            provider: provider.clone(),
            items: BTreeMap::from([(item.clone(), ItemValue::Number(2_000_000u64.into()))]),
        };
        let (key_id, signing_key) = keyring.permit_signer();
        let key_id = id(KeyId::new(key_id))?;
        let signing_key = signing_key.clone();
        let key_set = PermitKeySet {
            keys: vec![PermitPublicKey::new(
                key_id.clone(),
                &signing_key.verifying_key(),
            )],
        };
        let now = OffsetDateTime::now_utc();
        let requester_code = "u-7Q2M9X4K1B6N3P8R";
        let provider_code = "c-5T1W8Z3D6F9H2J4L";
        let claims = PermitClaims {
            permit_id: PermitId::random(),
            query_id: query_id.clone(),
            key_id,
            requester: requester.clone(),
            provider: provider.clone(),
            flow_id: id(FlowId::new("F-0120"))?,
            procedure: id(ProcedureCode::new("premium-calculation"))?,
            items: vec![item],
            requester_person_code: id(PersonCode::new(requester_code))?,
            provider_person_commitment: kakehashi_interfaces::permit::provider_person_commitment(
                &[7; kakehashi_interfaces::permit::PROVIDER_PERSON_SALT_LEN],
                provider_code,
            ),
            reply_key_sha256: reply.public().sha256_hex(),
            issued_at: now,
            expires_at: now + time::Duration::hours(1),
        };
        // The deposited copy as the broker stores it: JSON under the data key,
        // bound to provider and person code (see broker/src/copies.rs).
        let copy_plain =
            br#"{"local_tax.income":2000000,"local_tax.taxable_status":"\u8ab2\u7a0e"}"#.to_vec();
        let copy_context = format!("copy|{provider}|{provider_code}").into_bytes();
        let copy_cipher = keyring
            .encrypt(&copy_plain, &copy_context)
            .map_err(|e| anyhow!("encrypt: {e}"))?;
        let record = Record {
            seq: 123_456,
            at: "2026-11-23T09:50:55.614263Z".to_string(),
            query_id: query_id.to_string(),
            permit_id: Some(claims.permit_id.to_string()),
            flow_id: Some("F-0120".to_string()),
            flow_list_version: Some(1),
            procedure: Some("premium-calculation".to_string()),
            requester: requester.to_string(),
            provider: Some(provider.to_string()),
            items: vec!["local_tax.income".to_string()],
            requester_person: None,
            provider_person: None,
            outcome: Outcome::Provided,
            approver: None,
        };
        Ok(Fixture {
            _dir: dir,
            keyring,
            flows,
            reply,
            context,
            payload,
            claims,
            signing_key,
            key_set,
            copy_plain,
            copy_context,
            copy_cipher,
            record,
            salt: [7u8; audit::SALT_LEN],
            requester,
            provider,
            today: now.date(),
        })
    }

    /// The flow-list decision for the sample query.
    pub fn flow_check(&self) -> bool {
        let items = ["local_tax.income"];
        policy::check(
            &self.flows,
            OrgRef {
                id: &self.requester,
                kind: OrgKind::Union,
            },
            OrgRef {
                id: &self.provider,
                kind: OrgKind::Municipality,
            },
            Asked {
                flow_id: "F-0120",
                procedure: "premium-calculation",
                items: &items,
            },
            self.today,
        )
        .is_ok()
    }

    /// The flow-list decision for a flow that is not on the list.
    pub fn flow_check_refused(&self) -> bool {
        let items = ["local_tax.income"];
        policy::check(
            &self.flows,
            OrgRef {
                id: &self.requester,
                kind: OrgKind::Union,
            },
            OrgRef {
                id: &self.provider,
                kind: OrgKind::Municipality,
            },
            Asked {
                flow_id: "F-9999",
                procedure: "premium-calculation",
                items: &items,
            },
            self.today,
        )
        .is_err()
    }

    /// The keyed hash used to find Individual Numbers (registration path).
    pub fn lookup_hash(&self) -> Vec<u8> {
        self.keyring
            .lookup_hash("individual_number", b"123456789018")
    }

    /// HPKE-seals the answer to the reply key.
    pub fn seal(&self) -> Result<SealedEnvelope> {
        seal_answer(&self.reply.public(), &self.context, &self.payload)
            .map_err(|e| anyhow!("seal: {e}"))
    }

    /// Opens a sealed answer (the requester's side).
    pub fn open(&self, envelope: &SealedEnvelope) -> Result<AnswerPayload> {
        open_answer(&self.reply, &self.context, envelope).map_err(|e| anyhow!("open: {e}"))
    }

    /// Signs the permit.
    pub fn sign(&self) -> SignedPermit {
        sign(&self.signing_key, self.claims.clone())
    }

    /// Verifies a permit (the provider's side).
    pub fn verify(&self, permit: &SignedPermit) -> Result<()> {
        permit
            .verify(&self.key_set, OffsetDateTime::now_utc())
            .map_err(|e| anyhow!("verify: {e}"))
    }

    /// Encrypts the copy at rest (deposit path).
    pub fn encrypt(&self) -> Result<Vec<u8>> {
        self.keyring
            .encrypt(&self.copy_plain, &self.copy_context)
            .map_err(|e| anyhow!("encrypt: {e}"))
    }

    /// Decrypts the copy at rest (query path).
    pub fn decrypt(&self) -> Result<usize> {
        self.keyring
            .decrypt(&self.copy_cipher, &self.copy_context)
            .map(|p| p.len())
            .map_err(|e| anyhow!("decrypt: {e}"))
    }

    /// The record's canonical encoding.
    pub fn record_encode(&self) -> Vec<u8> {
        self.record.canonical_bytes()
    }

    /// What the record writer hashes per query: two person commitments, the
    /// leaf hash over the canonical encoding, and the chain hash.
    pub fn record_hash(&self) -> audit::Hash {
        let mut record = self.record.clone();
        record.requester_person = Some(audit::person_commitment(&self.salt, "u-7Q2M9X4K1B6N3P8R"));
        record.provider_person = Some(audit::person_commitment(&self.salt, "c-5T1W8Z3D6F9H2J4L"));
        let leaf = record.leaf_hash();
        audit::chain_hash(&[1u8; 32], &leaf)
    }

    /// All the per-query cryptography once: seal + sign + at-rest open + record hashes.
    pub fn query_crypto(&self) -> Result<()> {
        black_box(self.decrypt()?);
        black_box(self.sign());
        black_box(self.seal()?);
        black_box(self.record_hash());
        Ok(())
    }
}

/// Time of one operation, measured directly.
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    /// Operation.
    pub name: String,
    /// Mean wall time per call, microseconds.
    pub micros: f64,
}

/// The crypto floor.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// The per-query operations.
    pub ops: Vec<OpTime>,
    /// Their sum, microseconds.
    pub per_query_micros: f64,
    /// All of them in one call (checks the sum), microseconds.
    pub combined_micros: f64,
    /// Cores assumed (`available_parallelism`).
    pub cores: usize,
    /// `cores / combined` in queries per second.
    pub queries_per_second: f64,
}

/// Mean time of `f` over at least `min` of wall time (after a warm-up).
fn time_op(min: Duration, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..200 {
        f()?;
    }
    let mut n = 0u64;
    let started = Instant::now();
    while started.elapsed() < min || n < 1000 {
        for _ in 0..100 {
            f()?;
        }
        n += 100;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / n as f64)
}

/// Times each per-query operation on one thread and derives the floor for
/// every core of the machine.
pub fn measure(fixture: &Fixture, per_op: Duration) -> Result<Floor> {
    let f = fixture;
    let ops = vec![
        OpTime {
            name: "hpke_seal".into(),
            micros: time_op(per_op, || f.seal().map(|e| drop(black_box(e))))?,
        },
        OpTime {
            name: "permit_sign".into(),
            micros: time_op(per_op, || {
                black_box(f.sign());
                Ok(())
            })?,
        },
        OpTime {
            name: "at_rest_open".into(),
            micros: time_op(per_op, || {
                f.decrypt().map(|n| {
                    black_box(n);
                })
            })?,
        },
        OpTime {
            name: "record_hash".into(),
            micros: time_op(per_op, || {
                black_box(f.record_hash());
                Ok(())
            })?,
        },
    ];
    let per_query_micros = ops.iter().map(|o| o.micros).sum();
    let combined_micros = time_op(per_op, || f.query_crypto())?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Ok(Floor {
        ops,
        per_query_micros,
        combined_micros,
        cores,
        queries_per_second: cores as f64 * 1e6 / combined_micros,
    })
}

impl Floor {
    /// For people.
    pub fn text(&self) -> String {
        let mut out = String::from("crypto floor (per query, one core):\n");
        for op in &self.ops {
            out.push_str(&format!("  {:<14} {:>8.1} µs\n", op.name, op.micros));
        }
        out.push_str(&format!(
            "  {:<14} {:>8.1} µs (measured together: {:.1} µs)\n  floor: {} cores / {:.1} µs = {:.0} queries/s\n",
            "sum",
            self.per_query_micros,
            self.combined_micros,
            self.cores,
            self.combined_micros,
            self.queries_per_second
        ));
        out
    }
}
