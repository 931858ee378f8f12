//! Provision records (情報提供等記録): the pure half of their tamper evidence.
//!
//! The broker stores records and signs checkpoints; this module defines, with
//! no IO of its own, exactly what is hashed and signed and how a run of records
//! is checked against signed checkpoints. The client (`kakehashi audit verify`)
//! and third parties verify an auditor export with it, offline, without broker
//! code.
//!
//! # Canonical encoding of a record (version 1)
//!
//! Integers are big-endian. `str` is a `u32` byte length followed by UTF-8
//! bytes; `opt<T>` is `0x00` (absent) or `0x01` followed by `T`.
//!
//! ```text
//! u8        version = 1
//! u64       seq
//! str       at                       fixed-width RFC 3339 UTC, as stored
//! str       query_id
//! opt<str>  permit_id
//! opt<str>  flow_id
//! opt<u64>  flow_list_version
//! opt<str>  procedure
//! str       requester
//! opt<str>  provider
//! u32       number of items, then one str per item (stored order)
//! opt<[32]> requester person commitment
//! opt<[32]> provider person commitment
//! u8        outcome tag, then its fields:
//!             1 provided, 2 pending, 3 approved, 4 rejected, 6 expired: none
//!             5 denied: str reason
//!             7 export: str actor, str filter, u64 count
//!             8 purge:  str before, u64 first_seq, u64 cut_seq, u64 count,
//!                       str cut_hash (64 lowercase hex), str actor
//! opt<str>  approver
//! ```
//!
//! # Hashes and signatures
//!
//! ```text
//! commitment(code) = SHA-256("kakehashi/records/v1/person\0" ‖ salt[16] ‖ str code)
//! leaf_n           = SHA-256("kakehashi/records/v1/leaf\0"   ‖ canonical(record_n))
//! hash_n           = SHA-256("kakehashi/records/v1/chain\0"  ‖ hash_{n-1} ‖ leaf_n)
//! hash_0           = 32 zero bytes (or the cut hash of the latest purge)
//! checkpoint       = Ed25519 over "kakehashi/records/v1/checkpoint\0"
//!                    ‖ u64 seq ‖ hash_seq[32] ‖ str at ‖ str key_id
//! key_id           = first 16 lowercase hex digits of SHA-256(public key)
//! ```
//!
//! Person codes enter the hash only through salted commitments, so an export
//! can prove a record's integrity without carrying the (linkable) code, and
//! the leaf indirection lets an export prove the chain across records it does
//! not show, by carrying only their leaf hashes.
//!
//! Order comes from `seq` alone; `at` is recorded, never checked for
//! monotonicity (a clock stepping backwards breaks nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Version byte at the start of every canonical encoding.
pub const ENCODING_VERSION: u8 = 1;
/// Length of the random salt of a person-code commitment.
pub const SALT_LEN: usize = 16;
/// Hash before the first record.
pub const GENESIS_HASH: Hash = [0; 32];

const PERSON_TAG: &[u8] = b"kakehashi/records/v1/person\0";
const LEAF_TAG: &[u8] = b"kakehashi/records/v1/leaf\0";
const CHAIN_TAG: &[u8] = b"kakehashi/records/v1/chain\0";
const CHECKPOINT_TAG: &[u8] = b"kakehashi/records/v1/checkpoint\0";

/// What happened to a query (or which housekeeping act a record logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The answer was provided.
    Provided,
    /// Sensitive items await the provider's approval.
    Pending,
    /// The provider approved a pending query.
    Approved,
    /// The provider rejected a pending query.
    Rejected,
    /// The broker refused the query.
    Denied {
        /// Stable error code, e.g. `not_on_flow_list`.
        reason: String,
    },
    /// A pending query or result expired.
    Expired,
    /// An auditor export (R16).
    Export {
        /// Who exported.
        actor: String,
        /// The filter, described without person codes.
        filter: String,
        /// Records written.
        count: u64,
    },
    /// A retention purge (R15); verification of what remains starts at its cut.
    Purge {
        /// Records older than this were due (fixed-width RFC 3339 UTC).
        before: String,
        /// First purged sequence number.
        first_seq: u64,
        /// Last purged sequence number: the chain continues from here.
        cut_seq: u64,
        /// Records deleted.
        count: u64,
        /// Chain hash at `cut_seq`, lowercase hex.
        cut_hash: String,
        /// Who purged (OS user or `retention-task`).
        actor: String,
    },
    /// Personal data erased at the end of their own retention periods (R15):
    /// identity-confirmation data (basic four facts) older than one year, and
    /// persons — their copies, codes and Individual Number — five years after
    /// loss of eligibility. Counts only; never a code or a value.
    Erasure {
        /// Identity-confirmation data confirmed before this were erased
        /// (fixed-width RFC 3339 UTC).
        confirmed_before: String,
        /// Persons who lost eligibility before this day were erased (YYYY-MM-DD).
        lost_before: String,
        /// Sets of basic four facts erased.
        identity_confirmations: u64,
        /// Persons erased.
        persons: u64,
        /// Deposited copies erased.
        copies: u64,
        /// Who erased (OS user or `retention-task`).
        actor: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportDetail {
    actor: String,
    filter: String,
    count: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureDetail {
    confirmed_before: String,
    lost_before: String,
    identity_confirmations: u64,
    persons: u64,
    copies: u64,
    actor: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeDetail {
    before: String,
    first_seq: u64,
    cut_seq: u64,
    count: u64,
    cut_hash: String,
    actor: String,
}

impl Outcome {
    /// The outcome's name as stored and exported (`provided`, `denied` …).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Provided => "provided",
            Outcome::Pending => "pending",
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Denied { .. } => "denied",
            Outcome::Expired => "expired",
            Outcome::Export { .. } => "export",
            Outcome::Purge { .. } => "purge",
            Outcome::Erasure { .. } => "erasure",
        }
    }

    fn tag(&self) -> u8 {
        match self {
            Outcome::Provided => 1,
            Outcome::Pending => 2,
            Outcome::Approved => 3,
            Outcome::Rejected => 4,
            Outcome::Denied { .. } => 5,
            Outcome::Expired => 6,
            Outcome::Export { .. } => 7,
            Outcome::Purge { .. } => 8,
            Outcome::Erasure { .. } => 9,
        }
    }

    /// Splits into the flat columns used in storage and exports:
    /// name, denial reason, and a JSON detail for export and purge records.
    pub fn to_parts(&self) -> (&'static str, Option<String>, Option<serde_json::Value>) {
        let detail = match self {
            Outcome::Export {
                actor,
                filter,
                count,
            } => serde_json::to_value(ExportDetail {
                actor: actor.clone(),
                filter: filter.clone(),
                count: *count,
            })
            .ok(),
            Outcome::Purge {
                before,
                first_seq,
                cut_seq,
                count,
                cut_hash,
                actor,
            } => serde_json::to_value(PurgeDetail {
                before: before.clone(),
                first_seq: *first_seq,
                cut_seq: *cut_seq,
                count: *count,
                cut_hash: cut_hash.clone(),
                actor: actor.clone(),
            })
            .ok(),
            Outcome::Erasure {
                confirmed_before,
                lost_before,
                identity_confirmations,
                persons,
                copies,
                actor,
            } => serde_json::to_value(ErasureDetail {
                confirmed_before: confirmed_before.clone(),
                lost_before: lost_before.clone(),
                identity_confirmations: *identity_confirmations,
                persons: *persons,
                copies: *copies,
                actor: actor.clone(),
            })
            .ok(),
            _ => None,
        };
        let reason = match self {
            Outcome::Denied { reason } => Some(reason.clone()),
            _ => None,
        };
        (self.name(), reason, detail)
    }

    /// The inverse of [`Outcome::to_parts`].
    pub fn from_parts(
        name: &str,
        reason: Option<String>,
        detail: Option<serde_json::Value>,
    ) -> Result<Outcome, String> {
        let simple = |o: Outcome| {
            if reason.is_some() || detail.is_some() {
                Err(format!("outcome {name} carries no reason or detail"))
            } else {
                Ok(o)
            }
        };
        match name {
            "provided" => simple(Outcome::Provided),
            "pending" => simple(Outcome::Pending),
            "approved" => simple(Outcome::Approved),
            "rejected" => simple(Outcome::Rejected),
            "expired" => simple(Outcome::Expired),
            "denied" => match (reason, detail) {
                (Some(reason), None) => Ok(Outcome::Denied { reason }),
                _ => Err("outcome denied needs a reason and no detail".into()),
            },
            "erasure" => {
                if reason.is_some() {
                    return Err("outcome erasure carries no reason".into());
                }
                let detail = detail.ok_or("outcome erasure needs its detail")?;
                let d: ErasureDetail =
                    serde_json::from_value(detail).map_err(|e| format!("erasure detail: {e}"))?;
                Ok(Outcome::Erasure {
                    confirmed_before: d.confirmed_before,
                    lost_before: d.lost_before,
                    identity_confirmations: d.identity_confirmations,
                    persons: d.persons,
                    copies: d.copies,
                    actor: d.actor,
                })
            }
            "export" | "purge" => {
                if reason.is_some() {
                    return Err(format!("outcome {name} carries no reason"));
                }
                let detail = detail.ok_or_else(|| format!("outcome {name} needs its detail"))?;
                if name == "export" {
                    let d: ExportDetail = serde_json::from_value(detail)
                        .map_err(|e| format!("export detail: {e}"))?;
                    Ok(Outcome::Export {
                        actor: d.actor,
                        filter: d.filter,
                        count: d.count,
                    })
                } else {
                    let d: PurgeDetail =
                        serde_json::from_value(detail).map_err(|e| format!("purge detail: {e}"))?;
                    Ok(Outcome::Purge {
                        before: d.before,
                        first_seq: d.first_seq,
                        cut_seq: d.cut_seq,
                        count: d.count,
                        cut_hash: d.cut_hash,
                        actor: d.actor,
                    })
                }
            }
            other => Err(format!("unknown outcome {other:?}")),
        }
    }
}

/// One provision record as it is hashed: person codes appear only as salted
/// commitments. Never holds item values or an Individual Number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Gap-free sequence number, assigned when committed; the only order.
    pub seq: u64,
    /// UTC time, fixed-width RFC 3339 with microseconds.
    pub at: String,
    /// The query this record is about (or an id of the export/purge).
    pub query_id: String,
    /// Provision permit id, if one was issued.
    pub permit_id: Option<String>,
    /// Flow of the flow list that allowed (or was asked for) the query.
    pub flow_id: Option<String>,
    /// Version of the flow list in force.
    pub flow_list_version: Option<u64>,
    /// Administrative procedure code.
    pub procedure: Option<String>,
    /// Requesting org id.
    pub requester: String,
    /// Providing org id.
    pub provider: Option<String>,
    /// Item codes asked for (never their values).
    pub items: Vec<String>,
    /// Commitment to the requester's person code.
    pub requester_person: Option<Hash>,
    /// Commitment to the provider's person code.
    pub provider_person: Option<Hash>,
    /// What happened.
    pub outcome: Outcome,
    /// Who approved or rejected, if anyone.
    pub approver: Option<String>,
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Strings over 4 GiB cannot occur in a record (inputs are validated and
    // bounded long before); saturating keeps the function total.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_opt_str(out: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s);
        }
    }
}

fn put_opt_hash(out: &mut Vec<u8>, h: &Option<Hash>) {
    match h {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            out.extend_from_slice(h);
        }
    }
}

impl Record {
    /// The canonical encoding (see the module documentation).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(ENCODING_VERSION);
        put_u64(&mut out, self.seq);
        put_str(&mut out, &self.at);
        put_str(&mut out, &self.query_id);
        put_opt_str(&mut out, &self.permit_id);
        put_opt_str(&mut out, &self.flow_id);
        match self.flow_list_version {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_u64(&mut out, v);
            }
        }
        put_opt_str(&mut out, &self.procedure);
        put_str(&mut out, &self.requester);
        put_opt_str(&mut out, &self.provider);
        let items = u32::try_from(self.items.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&items.to_be_bytes());
        for item in &self.items {
            put_str(&mut out, item);
        }
        put_opt_hash(&mut out, &self.requester_person);
        put_opt_hash(&mut out, &self.provider_person);
        out.push(self.outcome.tag());
        match &self.outcome {
            Outcome::Denied { reason } => put_str(&mut out, reason),
            Outcome::Export {
                actor,
                filter,
                count,
            } => {
                put_str(&mut out, actor);
                put_str(&mut out, filter);
                put_u64(&mut out, *count);
            }
            Outcome::Purge {
                before,
                first_seq,
                cut_seq,
                count,
                cut_hash,
                actor,
            } => {
                put_str(&mut out, before);
                put_u64(&mut out, *first_seq);
                put_u64(&mut out, *cut_seq);
                put_u64(&mut out, *count);
                put_str(&mut out, cut_hash);
                put_str(&mut out, actor);
            }
            Outcome::Erasure {
                confirmed_before,
                lost_before,
                identity_confirmations,
                persons,
                copies,
                actor,
            } => {
                put_str(&mut out, confirmed_before);
                put_str(&mut out, lost_before);
                put_u64(&mut out, *identity_confirmations);
                put_u64(&mut out, *persons);
                put_u64(&mut out, *copies);
                put_str(&mut out, actor);
            }
            _ => {}
        }
        put_opt_str(&mut out, &self.approver);
        out
    }

    /// `leaf = SHA-256(leaf tag ‖ canonical bytes)`.
    pub fn leaf_hash(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(LEAF_TAG);
        h.update(self.canonical_bytes());
        h.finalize().into()
    }
}

/// Salted commitment to a person code: `SHA-256(tag ‖ salt ‖ str code)`.
pub fn person_commitment(salt: &[u8; SALT_LEN], code: &str) -> Hash {
    let mut buf = Vec::with_capacity(PERSON_TAG.len() + SALT_LEN + 4 + code.len());
    buf.extend_from_slice(PERSON_TAG);
    buf.extend_from_slice(salt);
    put_str(&mut buf, code);
    Sha256::digest(&buf).into()
}

/// `hash_n = SHA-256(chain tag ‖ hash_{n-1} ‖ leaf_n)`.
pub fn chain_hash(prev: &Hash, leaf: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update(CHAIN_TAG);
    h.update(prev);
    h.update(leaf);
    h.finalize().into()
}

/// Key id of a sealer key: first 16 hex digits of SHA-256 of the public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A signed statement "the chain up to `seq` ends in `head_hash`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Last sequence number covered.
    pub seq: u64,
    /// Chain hash at `seq`.
    pub head_hash: Hash,
    /// When it was signed (informative; never checked for order).
    pub at: String,
    /// Which sealer key signed it.
    pub key_id: String,
    /// Ed25519 signature over [`Checkpoint::signing_bytes`].
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// The bytes a sealer signs.
    pub fn signing_bytes(seq: u64, head_hash: &Hash, at: &str, key_id: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_TAG.len() + 8 + 32 + 64);
        out.extend_from_slice(CHECKPOINT_TAG);
        put_u64(&mut out, seq);
        out.extend_from_slice(head_hash);
        put_str(&mut out, at);
        put_str(&mut out, key_id);
        out
    }

    /// Signs a checkpoint.
    pub fn sign(seq: u64, head_hash: Hash, at: String, key: &SigningKey) -> Checkpoint {
        let key_id = key_id(&key.verifying_key());
        let signature = key
            .sign(&Self::signing_bytes(seq, &head_hash, &at, &key_id))
            .to_bytes();
        Checkpoint {
            seq,
            head_hash,
            at,
            key_id,
            signature,
        }
    }

    /// Checks the signature against the trusted keys.
    pub fn verify(&self, keys: &TrustedKeys) -> Result<(), FailureKind> {
        let key = keys
            .get(&self.key_id)
            .ok_or_else(|| FailureKind::UnknownKey {
                checkpoint: self.seq,
                key_id: self.key_id.clone(),
            })?;
        let bytes = Self::signing_bytes(self.seq, &self.head_hash, &self.at, &self.key_id);
        key.verify_strict(&bytes, &Signature::from_bytes(&self.signature))
            .map_err(|_| FailureKind::BadSignature {
                checkpoint: self.seq,
            })
    }
}

/// Sealer public keys a verifier trusts, by key id.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl TrustedKeys {
    /// No keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts a key; returns its id.
    pub fn add(&mut self, key: VerifyingKey) -> String {
        let id = key_id(&key);
        self.keys.insert(id.clone(), key);
        id
    }

    /// The key with this id.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    /// Ids of all trusted keys.
    pub fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Why a chain failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A sequence number is absent.
    #[error("record is missing (deleted)")]
    Missing,
    /// A sequence number appears twice, out of order, or before the purge cut.
    #[error("record is out of order, duplicated or before the purge cut (inserted or reordered)")]
    Unexpected,
    /// The recomputed chain hash differs from the stored one.
    #[error("record does not match its stored chain hash (edited, inserted or reordered)")]
    HashMismatch,
    /// The recomputed chain does not reach a signed head.
    #[error("records from here up to checkpoint {checkpoint} do not reproduce its signed head hash (altered)")]
    CheckpointMismatch {
        /// The checkpoint that failed.
        checkpoint: u64,
    },
    /// A checkpoint covers records that no longer exist.
    #[error("record is missing: checkpoint {checkpoint} covers it (tail truncated)")]
    Truncated {
        /// The checkpoint that covers the missing records.
        checkpoint: u64,
    },
    /// The stored head claims more records than exist.
    #[error("record is missing: the stored head is at {head} (tail truncated)")]
    HeadAhead {
        /// The stored head sequence.
        head: u64,
    },
    /// A record lies beyond the stored head.
    #[error("record lies beyond the stored head (inserted)")]
    BeyondHead,
    /// A checkpoint's signature is invalid.
    #[error("checkpoint {checkpoint} has an invalid signature")]
    BadSignature {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// A checkpoint was signed by a key that is not trusted.
    #[error("checkpoint {checkpoint} is signed by untrusted key {key_id}")]
    UnknownKey {
        /// The checkpoint.
        checkpoint: u64,
        /// Its key id.
        key_id: String,
    },
    /// A checkpoint arrived for a sequence already passed.
    #[error("checkpoint {checkpoint} is out of order")]
    CheckpointOrder {
        /// The checkpoint.
        checkpoint: u64,
    },
    /// The purge record does not state the cut the chain starts from.
    #[error("the purge record disagrees with the chain's starting point")]
    AnchorMismatch,
    /// Records before this one are gone, but no purge record says so.
    #[error("earlier records were removed without a purge record")]
    AnchorUnconfirmed,
    /// The records after `proven` are not covered by any checkpoint.
    #[error("record is not covered by a signed checkpoint")]
    Unsealed,
    /// A stored record cannot be decoded.
    #[error("record cannot be decoded: {0}")]
    Malformed(String),
}

/// The first bad sequence number and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("sequence {seq}: {kind}")]
pub struct ChainFailure {
    /// First sequence number that fails.
    pub seq: u64,
    /// What is wrong.
    pub kind: FailureKind,
}

impl ChainFailure {
    /// A failure at `seq`.
    pub fn new(seq: u64, kind: FailureKind) -> Self {
        Self { seq, kind }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    /// The chain starts after this sequence (0, or the latest purge cut).
    pub anchor_seq: u64,
    /// Last record checked (equals `anchor_seq` when empty).
    pub last_seq: u64,
    /// Chain hash at `last_seq`, hex.
    pub head_hash: String,
    /// Records checked.
    pub records: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Highest sequence covered by a valid checkpoint.
    pub sealed_seq: u64,
    /// Key ids that signed the checkpoints checked.
    pub key_ids: Vec<String>,
}

/// Checks records, in sequence order, against signed checkpoints, streaming
/// (constant memory). Feed each record, then the checkpoints at its sequence.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    keys: TrustedKeys,
    anchor_seq: u64,
    anchor_hash: Hash,
    require_purge_record: bool,
    anchor_confirmed: bool,
    next_seq: u64,
    prev: Hash,
    sealed_seq: u64,
    records: u64,
    checkpoints: u64,
    keys_used: BTreeSet<String>,
}

impl ChainVerifier {
    /// Verifies a whole store whose chain starts after `anchor_seq` with
    /// `anchor_hash` (0 and [`GENESIS_HASH`], or the latest purge cut, which
    /// must then be confirmed by a purge record in the chain).
    pub fn new(keys: TrustedKeys, anchor_seq: u64, anchor_hash: Hash) -> Self {
        Self::build(keys, anchor_seq, anchor_hash, anchor_seq > 0)
    }

    /// Verifies a segment of a chain starting after `start_seq` whose hash is
    /// `start_hash` (as in an export bundle); no purge record is required.
    pub fn segment(keys: TrustedKeys, start_seq: u64, start_hash: Hash) -> Self {
        Self::build(keys, start_seq, start_hash, false)
    }

    fn build(keys: TrustedKeys, anchor_seq: u64, anchor_hash: Hash, require: bool) -> Self {
        Self {
            keys,
            anchor_seq,
            anchor_hash,
            require_purge_record: require,
            anchor_confirmed: false,
            next_seq: anchor_seq + 1,
            prev: anchor_hash,
            sealed_seq: anchor_seq,
            records: 0,
            checkpoints: 0,
            keys_used: BTreeSet::new(),
        }
    }

    /// Trusts one more key (export bundles carry their sealers' keys).
    pub fn trust(&mut self, key: VerifyingKey) -> String {
        self.keys.add(key)
    }

    /// Last sequence pushed (the anchor when none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Chain hash at [`ChainVerifier::last_seq`].
    pub fn head_hash(&self) -> Hash {
        self.prev
    }

    /// Highest sequence covered by a valid checkpoint (or the anchor).
    pub fn sealed_seq(&self) -> u64 {
        self.sealed_seq
    }

    fn position(&self, seq: u64) -> Result<(), ChainFailure> {
        if seq < self.next_seq {
            Err(ChainFailure::new(seq, FailureKind::Unexpected))
        } else if seq > self.next_seq {
            Err(ChainFailure::new(self.next_seq, FailureKind::Missing))
        } else {
            Ok(())
        }
    }

    fn advance(
        &mut self,
        seq: u64,
        leaf: &Hash,
        stored: Option<&Hash>,
    ) -> Result<Hash, ChainFailure> {
        let hash = chain_hash(&self.prev, leaf);
        if stored.is_some_and(|s| s != &hash) {
            return Err(ChainFailure::new(seq, FailureKind::HashMismatch));
        }
        self.prev = hash;
        self.next_seq = seq + 1;
        self.records += 1;
        Ok(hash)
    }

    /// Adds the next record; `stored` is the chain hash stored with it, if any.
    pub fn push_record(
        &mut self,
        record: &Record,
        stored: Option<&Hash>,
    ) -> Result<Hash, ChainFailure> {
        self.position(record.seq)?;
        if let Outcome::Purge {
            cut_seq, cut_hash, ..
        } = &record.outcome
        {
            if self.require_purge_record && *cut_seq == self.anchor_seq {
                if *cut_hash != hex::encode(self.anchor_hash) {
                    return Err(ChainFailure::new(record.seq, FailureKind::AnchorMismatch));
                }
                self.anchor_confirmed = true;
            }
        }
        self.advance(record.seq, &record.leaf_hash(), stored)
    }

    /// Adds the next record known only by its leaf hash (a record an export
    /// does not show).
    pub fn push_leaf(
        &mut self,
        seq: u64,
        leaf: &Hash,
        stored: Option<&Hash>,
    ) -> Result<Hash, ChainFailure> {
        self.position(seq)?;
        self.advance(seq, leaf, stored)
    }

    /// Checks a checkpoint at the last pushed sequence. Checkpoints at or
    /// before the anchor are ignored (their records were purged); one beyond
    /// the last record means the tail was truncated.
    pub fn push_checkpoint(&mut self, cp: &Checkpoint) -> Result<(), ChainFailure> {
        if cp.seq <= self.anchor_seq {
            return Ok(());
        }
        let last = self.last_seq();
        if cp.seq > last {
            return Err(ChainFailure::new(
                last + 1,
                FailureKind::Truncated { checkpoint: cp.seq },
            ));
        }
        if cp.seq < last {
            return Err(ChainFailure::new(
                cp.seq,
                FailureKind::CheckpointOrder { checkpoint: cp.seq },
            ));
        }
        cp.verify(&self.keys)
            .map_err(|kind| ChainFailure::new(cp.seq, kind))?;
        if cp.head_hash != self.prev {
            return Err(ChainFailure::new(
                self.sealed_seq + 1,
                FailureKind::CheckpointMismatch { checkpoint: cp.seq },
            ));
        }
        self.sealed_seq = cp.seq;
        self.checkpoints += 1;
        self.keys_used.insert(cp.key_id.clone());
        Ok(())
    }

    /// Ends a whole-store verification. `stored_head` is the head sequence the
    /// store claims (it must equal the last record). An unsealed tail (records
    /// after the last checkpoint) is allowed and reported.
    pub fn finish(self, stored_head: Option<u64>) -> Result<ChainSummary, ChainFailure> {
        let last = self.last_seq();
        if let Some(head) = stored_head {
            if head > last {
                return Err(ChainFailure::new(last + 1, FailureKind::HeadAhead { head }));
            }
            if head < last {
                return Err(ChainFailure::new(head + 1, FailureKind::BeyondHead));
            }
        }
        if self.require_purge_record && !self.anchor_confirmed {
            return Err(ChainFailure::new(
                self.anchor_seq + 1,
                FailureKind::AnchorUnconfirmed,
            ));
        }
        Ok(self.summary())
    }

    /// Ends a segment: every record pushed must be covered by a checkpoint.
    pub fn finish_sealed(self) -> Result<ChainSummary, ChainFailure> {
        if self.sealed_seq < self.last_seq() {
            return Err(ChainFailure::new(
                self.sealed_seq + 1,
                FailureKind::Unsealed,
            ));
        }
        Ok(self.summary())
    }

    fn summary(&self) -> ChainSummary {
        ChainSummary {
            anchor_seq: self.anchor_seq,
            last_seq: self.last_seq(),
            head_hash: hex::encode(self.prev),
            records: self.records,
            checkpoints: self.checkpoints,
            sealed_seq: self.sealed_seq,
            key_ids: self.keys_used.iter().cloned().collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Auditor export (R16): the data file and its verification bundle.
// ---------------------------------------------------------------------------

/// Format name in the first line of a bundle.
pub const BUNDLE_FORMAT: &str = "kakehashi-records-bundle/1";

/// Columns of the CSV export, in order.
pub const CSV_COLUMNS: [&str; 14] = [
    "seq",
    "at",
    "query_id",
    "permit_id",
    "flow_id",
    "flow_list_version",
    "procedure",
    "requester",
    "provider",
    "items",
    "outcome",
    "reason",
    "approver",
    "detail",
];

/// UTF-8 byte order mark written at the start of CSV exports (Excel in Japan).
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Data file format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// UTF-8 CSV with BOM and CRLF line ends.
    Csv,
    /// JSON Lines.
    Jsonl,
}

impl std::str::FromStr for ExportFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "csv" => Ok(ExportFormat::Csv),
            "jsonl" => Ok(ExportFormat::Jsonl),
            other => Err(format!("unknown format {other:?} (csv or jsonl)")),
        }
    }
}

/// One exported record: every canonical field except person codes, whose
/// commitments travel in the bundle instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRow {
    /// Sequence number.
    pub seq: u64,
    /// UTC time.
    pub at: String,
    /// Query id.
    pub query_id: String,
    /// Permit id.
    pub permit_id: Option<String>,
    /// Flow id.
    pub flow_id: Option<String>,
    /// Flow-list version in force.
    pub flow_list_version: Option<u64>,
    /// Procedure code.
    pub procedure: Option<String>,
    /// Requesting org.
    pub requester: String,
    /// Providing org.
    pub provider: Option<String>,
    /// Item codes.
    pub items: Vec<String>,
    /// Outcome name.
    pub outcome: String,
    /// Denial reason code.
    pub reason: Option<String>,
    /// Approver.
    pub approver: Option<String>,
    /// Export and purge details.
    pub detail: Option<serde_json::Value>,
}

impl ExportRow {
    /// The exported form of a record.
    pub fn from_record(r: &Record) -> ExportRow {
        let (outcome, reason, detail) = r.outcome.to_parts();
        ExportRow {
            seq: r.seq,
            at: r.at.clone(),
            query_id: r.query_id.clone(),
            permit_id: r.permit_id.clone(),
            flow_id: r.flow_id.clone(),
            flow_list_version: r.flow_list_version,
            procedure: r.procedure.clone(),
            requester: r.requester.clone(),
            provider: r.provider.clone(),
            items: r.items.clone(),
            outcome: outcome.to_string(),
            reason,
            approver: r.approver.clone(),
            detail,
        }
    }

    /// Rebuilds the hashed record, given the person-code commitments.
    pub fn into_record(
        self,
        requester_person: Option<Hash>,
        provider_person: Option<Hash>,
    ) -> Result<Record, String> {
        let outcome = Outcome::from_parts(&self.outcome, self.reason, self.detail)?;
        Ok(Record {
            seq: self.seq,
            at: self.at,
            query_id: self.query_id,
            permit_id: self.permit_id,
            flow_id: self.flow_id,
            flow_list_version: self.flow_list_version,
            procedure: self.procedure,
            requester: self.requester,
            provider: self.provider,
            items: self.items,
            requester_person,
            provider_person,
            outcome,
            approver: self.approver,
        })
    }

    /// Writes one CSV line (every field quoted, CRLF), in one write.
    pub fn write_csv<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let seq = self.seq.to_string();
        let version = self.flow_list_version.map(|v| v.to_string());
        let items = self.items.join(" ");
        let detail = self.detail.as_ref().map(|d| d.to_string());
        let fields: [&str; 14] = [
            &seq,
            &self.at,
            &self.query_id,
            self.permit_id.as_deref().unwrap_or(""),
            self.flow_id.as_deref().unwrap_or(""),
            version.as_deref().unwrap_or(""),
            self.procedure.as_deref().unwrap_or(""),
            &self.requester,
            self.provider.as_deref().unwrap_or(""),
            &items,
            &self.outcome,
            self.reason.as_deref().unwrap_or(""),
            self.approver.as_deref().unwrap_or(""),
            detail.as_deref().unwrap_or(""),
        ];
        let mut line = String::with_capacity(256);
        push_csv_line(&mut line, fields.into_iter());
        w.write_all(line.as_bytes())
    }

    /// Writes one JSON line.
    pub fn write_jsonl<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, self)?;
        w.write_all(b"\n")
    }

    /// Parses the fields of one CSV line. Empty optional fields are absent.
    pub fn from_csv_fields(fields: &[String]) -> Result<ExportRow, String> {
        if fields.len() != CSV_COLUMNS.len() {
            return Err(format!(
                "expected {} fields, found {}",
                CSV_COLUMNS.len(),
                fields.len()
            ));
        }
        let opt = |i: usize| (!fields[i].is_empty()).then(|| fields[i].clone());
        let num = |i: usize| -> Result<Option<u64>, String> {
            opt(i)
                .map(|s| {
                    s.parse::<u64>()
                        .map_err(|_| format!("{} is not a number", CSV_COLUMNS[i]))
                })
                .transpose()
        };
        Ok(ExportRow {
            seq: num(0)?.ok_or("seq is empty")?,
            at: fields[1].clone(),
            query_id: fields[2].clone(),
            permit_id: opt(3),
            flow_id: opt(4),
            flow_list_version: num(5)?,
            procedure: opt(6),
            requester: fields[7].clone(),
            provider: opt(8),
            items: fields[9]
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            outcome: fields[10].clone(),
            reason: opt(11),
            approver: opt(12),
            detail: opt(13)
                .map(|d| serde_json::from_str(&d).map_err(|e| format!("detail: {e}")))
                .transpose()?,
        })
    }
}

/// Writes the BOM and the header line of a CSV export.
pub fn write_csv_header<W: Write>(w: &mut W) -> std::io::Result<()> {
    w.write_all(UTF8_BOM)?;
    write_csv_line(w, CSV_COLUMNS.iter().copied())
}

fn write_csv_line<'a, W: Write>(
    w: &mut W,
    fields: impl Iterator<Item = &'a str>,
) -> std::io::Result<()> {
    let mut line = String::new();
    push_csv_line(&mut line, fields);
    w.write_all(line.as_bytes())
}

fn push_csv_line<'a>(line: &mut String, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push('"');
        if field.contains('"') {
            line.push_str(&field.replace('"', "\"\""));
        } else {
            line.push_str(field);
        }
        line.push('"');
    }
    line.push_str("\r\n");
}

/// Reads one RFC 4180 record (quoted fields may span lines); `None` at end.
fn read_csv_record<R: BufRead>(r: &mut R) -> Result<Option<Vec<String>>, String> {
    let mut buf = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            break;
        }
        // An even number of quotes means no quoted field is still open.
        if buf.iter().filter(|&&b| b == b'"').count() % 2 == 0 {
            break;
        }
    }
    let text = String::from_utf8(buf).map_err(|_| "line is not UTF-8".to_string())?;
    let line = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quoted field".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(Some(fields));
                }
                Some(',') => fields.push(field),
                Some(_) => return Err("text after a closing quote".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(Some(fields));
                    }
                    Some(',') => break,
                    Some('"') => return Err("quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// One line of a verification bundle (JSON Lines, next to the data file).
///
/// A bundle is a header, then segments: each starts at the chain hash before
/// its first exported record, lists every sequence up to a signed checkpoint
/// (`row` for a record in the data file, with its person-code commitments;
/// `leaf` for a record not exported, by leaf hash only), and ends at that
/// checkpoint. The last line counts the rows and hashes the data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BundleLine {
    /// First line.
    Header {
        /// [`BUNDLE_FORMAT`].
        format: String,
        /// Format of the data file.
        data_format: ExportFormat,
        /// When the export was made.
        created_at: String,
        /// The filter, described without person codes.
        filter: String,
    },
    /// A segment starts after `start_seq`, whose chain hash is `start_hash`.
    Segment {
        /// Sequence before the segment's first record.
        start_seq: u64,
        /// Chain hash at `start_seq`, hex.
        start_hash: String,
    },
    /// An exported record (the next line of the data file).
    Row {
        /// Its sequence.
        seq: u64,
        /// Requester person-code commitment, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rc: Option<String>,
        /// Provider person-code commitment, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pc: Option<String>,
    },
    /// A record inside the segment that is not exported.
    Leaf {
        /// Its sequence.
        seq: u64,
        /// Its leaf hash, hex.
        leaf: String,
    },
    /// A signed checkpoint at the last listed sequence.
    Checkpoint {
        /// Covered sequence.
        seq: u64,
        /// Signed chain hash, hex.
        head_hash: String,
        /// Signing time.
        at: String,
        /// Key id.
        key_id: String,
        /// Ed25519 public key, hex.
        public_key: String,
        /// Signature, hex.
        signature: String,
    },
    /// Last line.
    End {
        /// Rows in the data file.
        rows: u64,
        /// SHA-256 of the whole data file, hex.
        data_sha256: String,
    },
}

impl BundleLine {
    /// The bundle line for a checkpoint signed by `public_key`.
    pub fn checkpoint(cp: &Checkpoint, public_key: &VerifyingKey) -> BundleLine {
        BundleLine::Checkpoint {
            seq: cp.seq,
            head_hash: hex::encode(cp.head_hash),
            at: cp.at.clone(),
            key_id: cp.key_id.clone(),
            public_key: hex::encode(public_key.as_bytes()),
            signature: hex::encode(cp.signature),
        }
    }

    /// Writes the line (JSON and `\n`).
    pub fn write<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, self)?;
        w.write_all(b"\n")
    }
}

/// The bundle path for a data file: `FILE.bundle.jsonl`.
pub fn bundle_path_for(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".bundle.jsonl");
    PathBuf::from(name)
}

/// Why an export failed verification.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A file could not be read.
    #[error("{context}: {source}")]
    Io {
        /// Which file.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The bundle is malformed.
    #[error("bundle line {line}: {reason}")]
    Bundle {
        /// 1-based line number in the bundle.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The data file does not match the bundle's list of rows.
    #[error("data file: {0}")]
    Data(String),
    /// The chain does not verify.
    #[error("chain broken at {0}")]
    Chain(#[from] ChainFailure),
    /// A checkpoint was signed by a key the caller does not trust.
    #[error(
        "checkpoint {checkpoint} is signed by key {key_id}, which is not among the trusted key ids"
    )]
    UntrustedKey {
        /// The checkpoint.
        checkpoint: u64,
        /// Its key id.
        key_id: String,
    },
    /// The data file's hash differs from the bundle's.
    #[error("data file was changed: its SHA-256 differs from the bundle's")]
    DataHash,
}

/// What a successful export verification covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportReport {
    /// Data rows checked.
    pub rows: u64,
    /// Segments checked.
    pub segments: u64,
    /// Checkpoints checked.
    pub checkpoints: u64,
    /// Sealer key ids that signed them (compare with the broker's published id).
    pub key_ids: Vec<String>,
    /// The filter the export states.
    pub filter: String,
    /// When it was made.
    pub created_at: String,
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn parse_hash(s: &str, line: usize, what: &str) -> Result<Hash, ExportError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| ExportError::Bundle {
        line,
        reason: format!("{what} is not 32 hex bytes"),
    })?;
    Ok(out)
}

/// Verifies an export (data file and bundle) offline. With `trusted_key_ids`
/// non-empty, every checkpoint must be signed by one of those keys; otherwise
/// the report names the key ids for the auditor to compare with the broker's.
pub fn verify_export<D: Read, B: BufRead>(
    data: D,
    bundle: B,
    trusted_key_ids: &[String],
) -> Result<ExportReport, ExportError> {
    let mut lines = bundle.lines().enumerate();
    let mut next_line = |expect: &str| -> Result<(usize, BundleLine), ExportError> {
        match lines.next() {
            None => Err(ExportError::Bundle {
                line: 0,
                reason: format!("bundle ends early; expected {expect}"),
            }),
            Some((i, text)) => {
                let text = text.map_err(|e| ExportError::Io {
                    context: "read bundle".into(),
                    source: e,
                })?;
                let parsed = serde_json::from_str(&text).map_err(|e| ExportError::Bundle {
                    line: i + 1,
                    reason: e.to_string(),
                })?;
                Ok((i + 1, parsed))
            }
        }
    };

    let (format, filter, created_at) = match next_line("a header")? {
        (
            _,
            BundleLine::Header {
                format,
                data_format,
                created_at,
                filter,
            },
        ) if format == BUNDLE_FORMAT => (data_format, filter, created_at),
        (line, _) => {
            return Err(ExportError::Bundle {
                line,
                reason: format!("first line must be a {BUNDLE_FORMAT} header"),
            })
        }
    };

    let mut data = BufReader::with_capacity(
        64 * 1024,
        HashingReader {
            inner: data,
            hasher: Sha256::new(),
        },
    );
    if format == ExportFormat::Csv {
        let start = data.fill_buf().map_err(|e| ExportError::Io {
            context: "read data file".into(),
            source: e,
        })?;
        if start.starts_with(UTF8_BOM) {
            data.consume(UTF8_BOM.len());
        }
        let header = read_csv_record(&mut data).map_err(ExportError::Data)?;
        if header.as_deref() != Some(&CSV_COLUMNS.map(str::to_string)[..]) {
            return Err(ExportError::Data(
                "the CSV header is not the export header".into(),
            ));
        }
    }
    let mut data_line = 0u64;
    let mut next_row =
        |data: &mut BufReader<HashingReader<D>>| -> Result<Option<ExportRow>, ExportError> {
            data_line += 1;
            let bad = |reason: String| ExportError::Data(format!("row {data_line}: {reason}"));
            match format {
                ExportFormat::Csv => match read_csv_record(data).map_err(bad)? {
                    None => Ok(None),
                    Some(fields) => ExportRow::from_csv_fields(&fields).map(Some).map_err(bad),
                },
                ExportFormat::Jsonl => {
                    let mut line = String::new();
                    let n = data.read_line(&mut line).map_err(|e| bad(e.to_string()))?;
                    if n == 0 {
                        return Ok(None);
                    }
                    serde_json::from_str(&line)
                        .map(Some)
                        .map_err(|e| bad(e.to_string()))
                }
            }
        };

    let mut segment: Option<ChainVerifier> = None;
    let mut keys = TrustedKeys::new();
    let mut rows = 0u64;
    let mut segments = 0u64;
    let mut checkpoints = 0u64;
    let mut key_ids = BTreeSet::new();
    loop {
        let (line, entry) = next_line("the end line")?;
        let no_segment = || ExportError::Bundle {
            line,
            reason: "entry outside a segment".into(),
        };
        match entry {
            BundleLine::Header { .. } => {
                return Err(ExportError::Bundle {
                    line,
                    reason: "second header".into(),
                })
            }
            BundleLine::Segment {
                start_seq,
                start_hash,
            } => {
                if let Some(done) = segment.take() {
                    let s = done.finish_sealed()?;
                    checkpoints += s.checkpoints;
                }
                let start = parse_hash(&start_hash, line, "start_hash")?;
                segment = Some(ChainVerifier::segment(keys.clone(), start_seq, start));
                segments += 1;
            }
            BundleLine::Row { seq, rc, pc } => {
                let v = segment.as_mut().ok_or_else(no_segment)?;
                let row = next_row(&mut data)?
                    .ok_or_else(|| ExportError::Data(format!("record {seq} is missing")))?;
                if row.seq != seq {
                    return Err(ExportError::Data(format!(
                        "found record {} where the bundle lists record {seq} (a row was removed, added or moved)",
                        row.seq
                    )));
                }
                let rc = rc.map(|h| parse_hash(&h, line, "rc")).transpose()?;
                let pc = pc.map(|h| parse_hash(&h, line, "pc")).transpose()?;
                let record = row
                    .into_record(rc, pc)
                    .map_err(|e| ExportError::Data(format!("record {seq}: {e}")))?;
                v.push_record(&record, None)?;
                rows += 1;
            }
            BundleLine::Leaf { seq, leaf } => {
                let v = segment.as_mut().ok_or_else(no_segment)?;
                v.push_leaf(seq, &parse_hash(&leaf, line, "leaf")?, None)?;
            }
            BundleLine::Checkpoint {
                seq,
                head_hash,
                at,
                key_id: kid,
                public_key,
                signature,
            } => {
                let v = segment.as_mut().ok_or_else(no_segment)?;
                let pk = VerifyingKey::from_bytes(&parse_hash(&public_key, line, "public_key")?)
                    .map_err(|_| ExportError::Bundle {
                        line,
                        reason: "public_key is not an Ed25519 key".into(),
                    })?;
                if key_id(&pk) != kid {
                    return Err(ExportError::Bundle {
                        line,
                        reason: "key_id does not match public_key".into(),
                    });
                }
                if !trusted_key_ids.is_empty() && !trusted_key_ids.contains(&kid) {
                    return Err(ExportError::UntrustedKey {
                        checkpoint: seq,
                        key_id: kid,
                    });
                }
                let mut sig = [0u8; 64];
                hex::decode_to_slice(&signature, &mut sig).map_err(|_| ExportError::Bundle {
                    line,
                    reason: "signature is not 64 hex bytes".into(),
                })?;
                keys.add(pk);
                v.trust(pk);
                v.push_checkpoint(&Checkpoint {
                    seq,
                    head_hash: parse_hash(&head_hash, line, "head_hash")?,
                    at,
                    key_id: kid.clone(),
                    signature: sig,
                })?;
                key_ids.insert(kid);
            }
            BundleLine::End {
                rows: stated,
                data_sha256,
            } => {
                if let Some(done) = segment.take() {
                    let s = done.finish_sealed()?;
                    checkpoints += s.checkpoints;
                }
                if let Some(extra) = next_row(&mut data)? {
                    return Err(ExportError::Data(format!(
                        "record {} is not listed in the bundle (added)",
                        extra.seq
                    )));
                }
                if stated != rows {
                    return Err(ExportError::Bundle {
                        line,
                        reason: format!("states {stated} rows, lists {rows}"),
                    });
                }
                std::io::copy(&mut data, &mut std::io::sink()).map_err(|e| ExportError::Io {
                    context: "read data file".into(),
                    source: e,
                })?;
                let digest = hex::encode(data.into_inner().hasher.finalize());
                if digest != data_sha256 {
                    return Err(ExportError::DataHash);
                }
                return Ok(ExportReport {
                    rows,
                    segments,
                    checkpoints,
                    key_ids: key_ids.into_iter().collect(),
                    filter,
                    created_at,
                });
            }
        }
    }
}

/// [`verify_export`] on files; the bundle defaults to [`bundle_path_for`].
pub fn verify_export_files(
    data: &Path,
    bundle: Option<&Path>,
    trusted_key_ids: &[String],
) -> Result<ExportReport, ExportError> {
    let bundle = bundle
        .map(Path::to_path_buf)
        .unwrap_or_else(|| bundle_path_for(data));
    let open = |p: &Path| {
        std::fs::File::open(p).map_err(|e| ExportError::Io {
            context: format!("open {}", p.display()),
            source: e,
        })
    };
    verify_export(open(data)?, BufReader::new(open(&bundle)?), trusted_key_ids)
}

/// One line of a person's disclosure (R18): who received which items, when.
/// Carries no person code of any org. The answer of
/// `GET /v1/persons/{code}/records` is a JSON array of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DisclosureEntry {
    /// Record sequence number.
    pub seq: u64,
    /// UTC time.
    pub at: String,
    /// Query id.
    pub query_id: String,
    /// Org that asked (and, when provided, received).
    pub requester: String,
    /// Org that held the data.
    pub provider: Option<String>,
    /// Flow id.
    pub flow_id: Option<String>,
    /// Procedure code.
    pub procedure: Option<String>,
    /// Item codes.
    pub items: Vec<String>,
    /// Outcome name (`provided`, `denied` …).
    pub outcome: String,
    /// Denial reason code.
    pub reason: Option<String>,
    /// Whether the asking org knows the person as `requester` or `provider`.
    pub role: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            seq: 42,
            at: "2026-11-23T09:50:55.614263Z".into(),
            query_id: "q-7f3a".into(),
            permit_id: Some("p-19c2".into()),
            flow_id: Some("F0042".into()),
            flow_list_version: Some(7),
            procedure: Some("child_allowance".into()),
            requester: "city-saitama".into(),
            provider: Some("city-kawagoe".into()),
            items: vec!["income.total".into(), "tax.resident".into()],
            requester_person: Some(person_commitment(&[1; 16], "RQ-0001")),
            provider_person: Some(person_commitment(&[2; 16], "PV-0001")),
            outcome: Outcome::Provided,
            approver: None,
        }
    }

    #[test]
    fn canonical_encoding_is_stable() {
        let r = sample();
        // Pinned: changing the encoding breaks every stored chain and export.
        assert_eq!(
            hex::encode(r.leaf_hash()),
            "04cefead82305e8ec7133efa9f4dca396c5c9899d35cbb162f0ffd5d1a603449"
        );
        assert_eq!(
            hex::encode(chain_hash(&GENESIS_HASH, &r.leaf_hash())),
            "1e6b42d584286f2b70e78d9057795308a845052d8b4d35f21e0af7e0e1f8621b"
        );
        let bytes = r.canonical_bytes();
        assert_eq!(bytes[0], ENCODING_VERSION);
        assert_eq!(&bytes[1..9], &42u64.to_be_bytes());
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = sample();
        let h = base.leaf_hash();
        let mut variants: Vec<Record> = Vec::new();
        let mut v = |f: &dyn Fn(&mut Record)| {
            let mut r = base.clone();
            f(&mut r);
            variants.push(r);
        };
        v(&|r| r.seq = 43);
        v(&|r| r.at = "2026-11-23T09:50:55.614264Z".into());
        v(&|r| r.query_id = "q-7f3b".into());
        v(&|r| r.permit_id = None);
        v(&|r| r.flow_id = Some("F0043".into()));
        v(&|r| r.flow_list_version = Some(8));
        v(&|r| r.flow_list_version = None);
        v(&|r| r.procedure = None);
        v(&|r| r.requester = "city-kawaguchi".into());
        v(&|r| r.provider = None);
        v(&|r| {
            r.items.pop();
        });
        v(&|r| r.items.reverse());
        v(&|r| r.requester_person = Some(person_commitment(&[1; 16], "RQ-0002")));
        v(&|r| r.requester_person = Some(person_commitment(&[3; 16], "RQ-0001")));
        v(&|r| r.provider_person = None);
        v(&|r| r.outcome = Outcome::Pending);
        v(&|r| {
            r.outcome = Outcome::Denied {
                reason: "not_on_flow_list".into(),
            }
        });
        v(&|r| r.approver = Some("staff-1".into()));
        let erasure = |persons, copies| Outcome::Erasure {
            confirmed_before: "2025-11-23T00:00:00.000000Z".into(),
            lost_before: "2021-11-23".into(),
            identity_confirmations: 1,
            persons,
            copies,
            actor: "retention-task".into(),
        };
        v(&|r| r.outcome = erasure(1, 2));
        v(&|r| r.outcome = erasure(2, 1));
        // Moving a byte between adjacent fields must not collide.
        v(&|r| {
            r.query_id = "q-7f3ap".into();
            r.permit_id = Some("-19c2".into());
        });
        let mut seen = BTreeSet::new();
        seen.insert(h);
        for r in &variants {
            assert!(seen.insert(r.leaf_hash()), "collision for {r:?}");
        }
    }

    #[test]
    fn outcome_parts_round_trip() {
        for o in [
            Outcome::Provided,
            Outcome::Expired,
            Outcome::Denied {
                reason: "item_not_allowed".into(),
            },
            Outcome::Export {
                actor: "auditor".into(),
                filter: "org=x".into(),
                count: 3,
            },
            Outcome::Purge {
                before: "2019-01-01T00:00:00.000000Z".into(),
                first_seq: 1,
                cut_seq: 9,
                count: 9,
                cut_hash: "ab".repeat(32),
                actor: "retention-task".into(),
            },
            Outcome::Erasure {
                confirmed_before: "2025-01-01T00:00:00.000000Z".into(),
                lost_before: "2020-01-01".into(),
                identity_confirmations: 4,
                persons: 2,
                copies: 3,
                actor: "retention-task".into(),
            },
        ] {
            let (name, reason, detail) = o.to_parts();
            assert_eq!(Outcome::from_parts(name, reason, detail).unwrap(), o);
        }
        assert!(Outcome::from_parts("provided", Some("x".into()), None).is_err());
        assert!(Outcome::from_parts("nonsense", None, None).is_err());
    }

    fn chain(n: u64) -> Vec<(Record, Hash)> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let mut r = sample();
                r.seq = seq;
                prev = chain_hash(&prev, &r.leaf_hash());
                (r, prev)
            })
            .collect()
    }

    fn sealer() -> (SigningKey, TrustedKeys) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut keys = TrustedKeys::new();
        keys.add(key.verifying_key());
        (key, keys)
    }

    #[test]
    fn verifier_names_the_first_bad_sequence() {
        let (key, keys) = sealer();
        let records = chain(6);
        let cp = Checkpoint::sign(6, records[5].1, "t".into(), &key);

        let mut v = ChainVerifier::new(keys.clone(), 0, GENESIS_HASH);
        for (r, h) in &records {
            v.push_record(r, Some(h)).unwrap();
        }
        v.push_checkpoint(&cp).unwrap();
        let s = v.finish(Some(6)).unwrap();
        assert_eq!((s.records, s.checkpoints, s.sealed_seq), (6, 1, 6));

        // Edited content, stored hash untouched.
        let mut v = ChainVerifier::new(keys.clone(), 0, GENESIS_HASH);
        let mut edited = records.clone();
        edited[2].0.items = vec!["income.total".into()];
        let err = edited
            .iter()
            .try_for_each(|(r, h)| v.push_record(r, Some(h)).map(|_| ()))
            .unwrap_err();
        assert_eq!(err, ChainFailure::new(3, FailureKind::HashMismatch));

        // Edited content with recomputed hashes: only the checkpoint notices.
        let mut v = ChainVerifier::new(keys.clone(), 0, GENESIS_HASH);
        for (r, _) in &edited {
            v.push_record(r, None).unwrap();
        }
        assert_eq!(
            v.push_checkpoint(&cp).unwrap_err(),
            ChainFailure::new(1, FailureKind::CheckpointMismatch { checkpoint: 6 })
        );

        // Deleted record.
        let mut v = ChainVerifier::new(keys.clone(), 0, GENESIS_HASH);
        v.push_record(&records[0].0, Some(&records[0].1)).unwrap();
        assert_eq!(
            v.push_record(&records[2].0, Some(&records[2].1))
                .unwrap_err(),
            ChainFailure::new(2, FailureKind::Missing)
        );

        // Truncated tail.
        let mut v = ChainVerifier::new(keys.clone(), 0, GENESIS_HASH);
        for (r, h) in &records[..4] {
            v.push_record(r, Some(h)).unwrap();
        }
        assert_eq!(
            v.push_checkpoint(&cp).unwrap_err(),
            ChainFailure::new(5, FailureKind::Truncated { checkpoint: 6 })
        );

        // Forged signature and unknown key.
        let mut bad = cp.clone();
        bad.signature[0] ^= 1;
        assert!(matches!(
            bad.verify(&keys),
            Err(FailureKind::BadSignature { .. })
        ));
        let other = Checkpoint::sign(
            6,
            records[5].1,
            "t".into(),
            &SigningKey::from_bytes(&[8; 32]),
        );
        assert!(matches!(
            other.verify(&keys),
            Err(FailureKind::UnknownKey { .. })
        ));
    }

    #[test]
    fn a_purged_prefix_needs_its_purge_record() {
        let (_, keys) = sealer();
        let records = chain(5);
        // Records 1..=2 purged; record 5 is the purge record.
        let mut purge = records[4].0.clone();
        purge.outcome = Outcome::Purge {
            before: "b".into(),
            first_seq: 1,
            cut_seq: 2,
            count: 2,
            cut_hash: hex::encode(records[1].1),
            actor: "a".into(),
        };
        let mut v = ChainVerifier::new(keys.clone(), 2, records[1].1);
        for (r, _) in &records[2..4] {
            v.push_record(r, None).unwrap();
        }
        v.push_record(&purge, None).unwrap();
        v.finish(None).unwrap();

        let mut v = ChainVerifier::new(keys, 2, records[1].1);
        for (r, _) in &records[2..5] {
            v.push_record(r, None).unwrap();
        }
        assert_eq!(
            v.finish(None).unwrap_err(),
            ChainFailure::new(3, FailureKind::AnchorUnconfirmed)
        );
    }

    fn export(
        records: &[(Record, Hash)],
        pick: &[u64],
        format: ExportFormat,
        key: &SigningKey,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut data = Vec::new();
        let mut bundle = Vec::new();
        BundleLine::Header {
            format: BUNDLE_FORMAT.into(),
            data_format: format,
            created_at: "now".into(),
            filter: "test".into(),
        }
        .write(&mut bundle)
        .unwrap();
        if format == ExportFormat::Csv {
            write_csv_header(&mut data).unwrap();
        }
        let first = pick[0];
        let start = if first == 1 {
            GENESIS_HASH
        } else {
            records[first as usize - 2].1
        };
        BundleLine::Segment {
            start_seq: first - 1,
            start_hash: hex::encode(start),
        }
        .write(&mut bundle)
        .unwrap();
        let mut n = 0;
        for (r, _) in &records[first as usize - 1..] {
            if pick.contains(&r.seq) {
                let row = ExportRow::from_record(r);
                match format {
                    ExportFormat::Csv => row.write_csv(&mut data).unwrap(),
                    ExportFormat::Jsonl => row.write_jsonl(&mut data).unwrap(),
                }
                BundleLine::Row {
                    seq: r.seq,
                    rc: r.requester_person.map(hex::encode),
                    pc: r.provider_person.map(hex::encode),
                }
                .write(&mut bundle)
                .unwrap();
                n += 1;
            } else {
                BundleLine::Leaf {
                    seq: r.seq,
                    leaf: hex::encode(r.leaf_hash()),
                }
                .write(&mut bundle)
                .unwrap();
            }
        }
        let (last, head) = records.last().map(|(r, h)| (r.seq, *h)).unwrap();
        let cp = Checkpoint::sign(last, head, "t".into(), key);
        BundleLine::checkpoint(&cp, &key.verifying_key())
            .write(&mut bundle)
            .unwrap();
        BundleLine::End {
            rows: n,
            data_sha256: hex::encode(Sha256::digest(&data)),
        }
        .write(&mut bundle)
        .unwrap();
        (data, bundle)
    }

    #[test]
    fn exports_verify_offline_and_detect_changes() {
        let (key, _) = sealer();
        let mut records = chain(5);
        // Quotes, commas and a newline survive CSV.
        records[2].0.query_id = "q,\"odd\"\nline".into();
        records[3].0.outcome = Outcome::Export {
            actor: "監査 太郎".into(),
            filter: "org=x".into(),
            count: 1,
        };
        let mut prev = GENESIS_HASH;
        for (r, h) in records.iter_mut() {
            prev = chain_hash(&prev, &r.leaf_hash());
            *h = prev;
        }
        for format in [ExportFormat::Csv, ExportFormat::Jsonl] {
            let (data, bundle) = export(&records, &[2, 3, 4], format, &key);
            let report = verify_export(&data[..], &bundle[..], &[]).unwrap();
            assert_eq!(
                (report.rows, report.segments, report.checkpoints),
                (3, 1, 1)
            );
            let kid = key_id(&key.verifying_key());
            assert!(verify_export(&data[..], &bundle[..], &[kid]).is_ok());
            assert!(matches!(
                verify_export(&data[..], &bundle[..], &["0000000000000000".into()]),
                Err(ExportError::UntrustedKey { .. })
            ));
            // Any one changed byte is caught.
            let text = String::from_utf8(data.clone()).unwrap();
            let at = text.find("city-saitama").unwrap();
            let mut changed = data.clone();
            changed[at] = b'C';
            assert!(verify_export(&changed[..], &bundle[..], &[]).is_err());
        }
    }

    #[test]
    fn csv_reader_handles_quotes() {
        let mut out = Vec::new();
        write_csv_line(&mut out, ["a", "b,\"c\"", "x\r\ny", ""].into_iter()).unwrap();
        out.extend_from_slice(b"plain,,\"q\"\n");
        let mut r = &out[..];
        assert_eq!(
            read_csv_record(&mut r).unwrap().unwrap(),
            vec!["a", "b,\"c\"", "x\r\ny", ""]
        );
        assert_eq!(
            read_csv_record(&mut r).unwrap().unwrap(),
            vec!["plain", "", "q"]
        );
        assert_eq!(read_csv_record(&mut r).unwrap(), None);
    }
}
