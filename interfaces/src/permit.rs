//! The provision permit (情報提供許可証, R7).
//!
//! For every query that passes the flow list the broker signs a permit with
//! Ed25519 binding requester, provider, flow, procedure, items, the person
//! and the SHA-256 of the requester's reply key. A provider (or its online
//! agent) answers only against a permit that verifies with a key from
//! `GET /v1/permit-keys`.
//!
//! The person is bound by the requester's code in clear and by a salted
//! commitment to the provider's code (R4: no message to an org carries
//! another org's code). The requester receives the permit, so it must not
//! learn the provider's code; the commitment binds it all the same:
//!
//! ```text
//! provider_person_commitment = lowercase hex SHA-256(
//!     field("kakehashi/permit/provider-person/v1") || salt || field(provider_person_code))
//! ```
//!
//! `salt` is 32 bytes that only the broker can make (a keyed hash of the
//! permit id), shown to the provider side with its own code; the same code
//! gives a different commitment in every permit, so permits held by
//! different orgs cannot be matched to link their codes.
//!
//! The signature covers [`PermitClaims::signing_bytes`], a fixed binary
//! layout, not the JSON: JSON has many spellings of one value, the layout
//! has one, so any implementation can rebuild it from the parsed claims.
//!
//! ```text
//! field(s)   = u32-BE byte length of s || UTF-8 bytes of s
//! signing    = field("kakehashi/permit/v2")
//!           || field(permit_id) || field(query_id) || field(key_id)
//!           || field(requester) || field(provider)
//!           || field(flow_id) || field(procedure)
//!           || u32-BE number of items || field(item) for each item, sorted
//!              by byte value
//!           || field(requester_person_code)
//!           || field(provider_person_commitment)   (64 lowercase hex chars)
//!           || field(reply_key_sha256)             (64 lowercase hex chars)
//!           || field(issued_at) || field(expires_at)
//!              (UTC, whole seconds: YYYY-MM-DDTHH:MM:SSZ)
//! ```

use crate::datetime::{canonical, format_canonical};
use crate::envelope::ReplyPublicKey;
use crate::error::ErrorCode;
use crate::ids::{FlowId, ItemCode, KeyId, PermitId, PersonCode, ProcedureCode, QueryId};
use crate::org::OrgId;
use crate::{b64, InvalidInput};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use time::{Duration, OffsetDateTime};

/// The domain tag at the start of the signed bytes.
pub const PERMIT_TAG: &str = "kakehashi/permit/v2";
/// The domain tag of the provider-person commitment.
pub const PROVIDER_PERSON_TAG: &str = "kakehashi/permit/provider-person/v1";
/// Bytes of the salt of the provider-person commitment.
pub const PROVIDER_PERSON_SALT_LEN: usize = 32;
/// How far in the future `issued_at` may be before a permit counts as not
/// yet valid: tolerates small clock differences between broker nodes and
/// provider agents (R23 keeps clocks synchronised, not identical).
pub const CLOCK_SKEW: Duration = Duration::seconds(30);
/// The most items a permit may name.
pub const MAX_PERMIT_ITEMS: usize = 64;

/// Why a permit did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PermitError {
    /// No key with the permit's key id in the key set.
    #[error("the permit names an unknown signing key")]
    UnknownKeyId,
    /// The key set entry is not a valid Ed25519 public key.
    #[error("the signing key is malformed")]
    MalformedKey,
    /// The signature does not verify over the claims.
    #[error("the permit signature does not verify")]
    BadSignature,
    /// `expires_at` has passed.
    #[error("the permit has expired")]
    Expired,
    /// `issued_at` is in the future.
    #[error("the permit is not yet valid")]
    NotYetValid,
    /// The permit was issued for another reply key.
    #[error("the permit was issued for another reply key")]
    ReplyKeyMismatch,
}

impl PermitError {
    /// The error code a refusal for this reason is sent with.
    pub fn error_code(self) -> ErrorCode {
        ErrorCode::InvalidPermit
    }
}

/// What a permit grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "PermitClaimsWire")]
pub struct PermitClaims {
    /// The permit's id.
    pub permit_id: PermitId,
    /// The query it was issued for.
    pub query_id: QueryId,
    /// The broker key that signed it (see `GET /v1/permit-keys`).
    pub key_id: KeyId,
    /// The org that asked.
    pub requester: OrgId,
    /// The org that answers.
    pub provider: OrgId,
    /// The flow the query passed.
    pub flow_id: FlowId,
    /// The procedure.
    pub procedure: ProcedureCode,
    /// The items permitted: 1–64, no duplicates (sorted when signed).
    pub items: Vec<ItemCode>,
    /// The person, by the requester's code.
    pub requester_person_code: PersonCode,
    /// The same person at the provider: lowercase hex
    /// `SHA-256(field("kakehashi/permit/provider-person/v1") || salt ||
    /// field(provider_person_code))`, with a 32-byte salt per permit that
    /// only the broker and the provider side know. The provider's code
    /// itself is never sent to the requester.
    pub provider_person_commitment: String,
    /// Lowercase hex SHA-256 of the 32 raw bytes of the query's reply key.
    pub reply_key_sha256: String,
    /// When the permit was issued (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "crate::schema::DateTimeString")]
    pub issued_at: OffsetDateTime,
    /// When it stops being valid (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "crate::schema::DateTimeString")]
    pub expires_at: OffsetDateTime,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermitClaimsWire {
    permit_id: PermitId,
    query_id: QueryId,
    key_id: KeyId,
    requester: OrgId,
    provider: OrgId,
    flow_id: FlowId,
    procedure: ProcedureCode,
    items: Vec<ItemCode>,
    requester_person_code: PersonCode,
    provider_person_commitment: String,
    reply_key_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

impl TryFrom<PermitClaimsWire> for PermitClaims {
    type Error = InvalidInput;
    fn try_from(w: PermitClaimsWire) -> Result<Self, Self::Error> {
        let claims = PermitClaims {
            permit_id: w.permit_id,
            query_id: w.query_id,
            key_id: w.key_id,
            requester: w.requester,
            provider: w.provider,
            flow_id: w.flow_id,
            procedure: w.procedure,
            items: w.items,
            requester_person_code: w.requester_person_code,
            provider_person_commitment: w.provider_person_commitment,
            reply_key_sha256: w.reply_key_sha256,
            issued_at: w.issued_at,
            expires_at: w.expires_at,
        };
        claims.validate()?;
        Ok(claims)
    }
}

fn push_field(out: &mut Vec<u8>, s: &str) {
    // Every field is far below 4 GiB (ids ≤ 64 bytes); saturate rather than panic.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Whether `s` is 64 lowercase hex characters (a SHA-256 in hex).
fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The commitment a permit carries for the provider's person code:
/// lowercase hex `SHA-256(field(PROVIDER_PERSON_TAG) || salt || field(code))`.
pub fn provider_person_commitment(salt: &[u8; PROVIDER_PERSON_SALT_LEN], code: &str) -> String {
    let mut h = Sha256::new();
    let mut tag = Vec::with_capacity(4 + PROVIDER_PERSON_TAG.len());
    push_field(&mut tag, PROVIDER_PERSON_TAG);
    h.update(&tag);
    h.update(salt);
    let mut field = Vec::with_capacity(4 + code.len());
    push_field(&mut field, code);
    h.update(&field);
    hex::encode(h.finalize())
}

impl PermitClaims {
    /// Checks the rules deserialization enforces; for claims built in code.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.items.is_empty() || self.items.len() > MAX_PERMIT_ITEMS {
            return Err(InvalidInput::new("items", "must name 1 to 64 items"));
        }
        let unique: BTreeSet<&ItemCode> = self.items.iter().collect();
        if unique.len() != self.items.len() {
            return Err(InvalidInput::new("items", "must not repeat an item"));
        }
        if !is_sha256_hex(&self.reply_key_sha256) {
            return Err(InvalidInput::new(
                "reply_key_sha256",
                "must be 64 lowercase hex characters",
            ));
        }
        if !is_sha256_hex(&self.provider_person_commitment) {
            return Err(InvalidInput::new(
                "provider_person_commitment",
                "must be 64 lowercase hex characters",
            ));
        }
        Ok(())
    }

    /// Whether the permit binds `code` as the provider's person code, given
    /// the commitment's `salt` (the provider side's check; the requester has
    /// no salt).
    pub fn binds_provider_person(&self, salt: &[u8; PROVIDER_PERSON_SALT_LEN], code: &str) -> bool {
        provider_person_commitment(salt, code) == self.provider_person_commitment
    }

    /// The bytes the signature covers (layout in the module documentation).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        push_field(&mut out, PERMIT_TAG);
        for s in [
            self.permit_id.as_str(),
            self.query_id.as_str(),
            self.key_id.as_str(),
            self.requester.as_str(),
            self.provider.as_str(),
            self.flow_id.as_str(),
            self.procedure.as_str(),
        ] {
            push_field(&mut out, s);
        }
        let mut items: Vec<&str> = self.items.iter().map(ItemCode::as_str).collect();
        items.sort_unstable();
        let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for item in items {
            push_field(&mut out, item);
        }
        push_field(&mut out, self.requester_person_code.as_str());
        push_field(&mut out, &self.provider_person_commitment);
        push_field(&mut out, &self.reply_key_sha256);
        push_field(&mut out, &format_canonical(self.issued_at));
        push_field(&mut out, &format_canonical(self.expires_at));
        out
    }
}

/// A permit with its Ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "SignedPermitWire")]
pub struct SignedPermit {
    /// What the permit grants.
    pub claims: PermitClaims,
    /// Ed25519 signature (64 bytes) over `claims.signing_bytes()`, base64url without padding.
    pub signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedPermitWire {
    claims: PermitClaims,
    signature: String,
}

impl TryFrom<SignedPermitWire> for SignedPermit {
    type Error = InvalidInput;
    fn try_from(w: SignedPermitWire) -> Result<Self, Self::Error> {
        if b64::decode_array::<64>(&w.signature).is_none() {
            return Err(InvalidInput::new(
                "signature",
                "must be 64 bytes as base64url without padding",
            ));
        }
        Ok(Self {
            claims: w.claims,
            signature: w.signature,
        })
    }
}

/// Signs `claims` with the broker's permit key. The claims are first put in
/// canonical form (items sorted; times in UTC, whole seconds) so that the
/// JSON sent says exactly what was signed. `claims.key_id` must name `key`.
pub fn sign(key: &SigningKey, mut claims: PermitClaims) -> SignedPermit {
    claims.items.sort();
    claims.items.dedup();
    claims.issued_at = canonical(claims.issued_at);
    claims.expires_at = canonical(claims.expires_at);
    let signature = key.sign(&claims.signing_bytes());
    SignedPermit {
        claims,
        signature: b64::encode(&signature.to_bytes()),
    }
}

impl SignedPermit {
    /// Checks the signature against `keys` and the validity period against
    /// `now` (`issued_at - CLOCK_SKEW <= now < expires_at`).
    pub fn verify(&self, keys: &PermitKeySet, now: OffsetDateTime) -> Result<(), PermitError> {
        let key = keys
            .get(&self.claims.key_id)
            .ok_or(PermitError::UnknownKeyId)?;
        let verifying = key.verifying_key()?;
        let sig = b64::decode_array::<64>(&self.signature).ok_or(PermitError::BadSignature)?;
        verifying
            .verify_strict(&self.claims.signing_bytes(), &Signature::from_bytes(&sig))
            .map_err(|_| PermitError::BadSignature)?;
        if now < self.claims.issued_at - CLOCK_SKEW {
            return Err(PermitError::NotYetValid);
        }
        if now >= self.claims.expires_at {
            return Err(PermitError::Expired);
        }
        Ok(())
    }

    /// [`verify`](Self::verify), and that the permit was issued for `reply_key`.
    pub fn verify_for(
        &self,
        keys: &PermitKeySet,
        reply_key: &ReplyPublicKey,
        now: OffsetDateTime,
    ) -> Result<(), PermitError> {
        self.verify(keys, now)?;
        if self.claims.reply_key_sha256 != reply_key.sha256_hex() {
            return Err(PermitError::ReplyKeyMismatch);
        }
        Ok(())
    }
}

/// The signature algorithm of a permit key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PermitAlgorithm {
    /// Ed25519 (RFC 8032), verified strictly (no weak keys, canonical signatures).
    Ed25519,
}

/// One permit-verification key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "PermitPublicKeyWire")]
pub struct PermitPublicKey {
    /// The id permits name in `claims.key_id`.
    pub key_id: KeyId,
    /// Always `ed25519`.
    pub algorithm: PermitAlgorithm,
    /// The 32-byte Ed25519 public key, base64url without padding.
    pub public_key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermitPublicKeyWire {
    key_id: KeyId,
    algorithm: PermitAlgorithm,
    public_key: String,
}

impl TryFrom<PermitPublicKeyWire> for PermitPublicKey {
    type Error = InvalidInput;
    fn try_from(w: PermitPublicKeyWire) -> Result<Self, Self::Error> {
        let key = PermitPublicKey {
            key_id: w.key_id,
            algorithm: w.algorithm,
            public_key: w.public_key,
        };
        key.verifying_key().map_err(|_| {
            InvalidInput::new(
                "public_key",
                "must be an Ed25519 public key (32 bytes, base64url)",
            )
        })?;
        Ok(key)
    }
}

impl PermitPublicKey {
    /// The published form of a verifying key.
    pub fn new(key_id: KeyId, key: &VerifyingKey) -> Self {
        Self {
            key_id,
            algorithm: PermitAlgorithm::Ed25519,
            public_key: b64::encode(key.as_bytes()),
        }
    }

    /// The Ed25519 key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, PermitError> {
        let bytes = b64::decode_array::<32>(&self.public_key).ok_or(PermitError::MalformedKey)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| PermitError::MalformedKey)
    }
}

/// `GET /v1/permit-keys`: every key a valid permit may be signed with
/// (several during a rotation).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PermitKeySet {
    /// The keys.
    pub keys: Vec<PermitPublicKey>,
}

impl PermitKeySet {
    /// The key with this id.
    pub fn get(&self, key_id: &KeyId) -> Option<&PermitPublicKey> {
        self.keys.iter().find(|k| &k.key_id == key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ReplyKeyPair;
    use rand_core::OsRng;
    use time::macros::datetime;

    struct Fixture {
        key: SigningKey,
        keys: PermitKeySet,
        reply: ReplyKeyPair,
        claims: PermitClaims,
    }

    fn fixture() -> Fixture {
        let key = SigningKey::generate(&mut OsRng);
        let key_id = KeyId::new("permit-1").unwrap();
        let keys = PermitKeySet {
            keys: vec![PermitPublicKey::new(key_id.clone(), &key.verifying_key())],
        };
        let reply = ReplyKeyPair::generate();
        let claims = PermitClaims {
            permit_id: PermitId::new("p_1").unwrap(),
            query_id: QueryId::new("q_1").unwrap(),
            key_id,
            requester: OrgId::new("union-saitama").unwrap(),
            provider: OrgId::new("city-kawagoe").unwrap(),
            flow_id: FlowId::new("row-80").unwrap(),
            procedure: ProcedureCode::new("premium.assessment").unwrap(),
            items: vec![
                ItemCode::new("local_tax.income").unwrap(),
                ItemCode::new("local_tax.deductions").unwrap(),
            ],
            requester_person_code: PersonCode::new("U0000001").unwrap(),
            provider_person_commitment: provider_person_commitment(&SALT, "K0000001"),
            reply_key_sha256: reply.public().sha256_hex(),
            issued_at: datetime!(2025-04-01 09:00:00.5 +09:00),
            expires_at: datetime!(2025-04-01 09:05:00 +09:00),
        };
        Fixture {
            key,
            keys,
            reply,
            claims,
        }
    }

    const NOW: OffsetDateTime = datetime!(2025-04-01 00:01:00 UTC);
    const SALT: [u8; PROVIDER_PERSON_SALT_LEN] = [7; PROVIDER_PERSON_SALT_LEN];

    #[test]
    fn the_provider_person_is_bound_but_not_revealed() {
        let f = fixture();
        let permit = sign(&f.key, f.claims);
        let json = serde_json::to_string(&permit).unwrap();
        assert!(!json.contains("K0000001"), "{json}");
        assert!(permit.claims.binds_provider_person(&SALT, "K0000001"));
        assert!(!permit.claims.binds_provider_person(&SALT, "K0000002"));
        let other_salt = [8; PROVIDER_PERSON_SALT_LEN];
        assert!(!permit.claims.binds_provider_person(&other_salt, "K0000001"));
        // Pinned: implementations in other languages check against this.
        assert_eq!(provider_person_commitment(&SALT, "K0000001"), {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&35u32.to_be_bytes());
            bytes.extend_from_slice(b"kakehashi/permit/provider-person/v1");
            bytes.extend_from_slice(&[7; 32]);
            bytes.extend_from_slice(&8u32.to_be_bytes());
            bytes.extend_from_slice(b"K0000001");
            hex::encode(Sha256::digest(&bytes))
        });
    }

    #[test]
    fn round_trip() {
        let f = fixture();
        let permit = sign(&f.key, f.claims.clone());
        assert_eq!(permit.claims.issued_at, datetime!(2025-04-01 00:00:00 UTC));
        assert_eq!(permit.claims.items[0].as_str(), "local_tax.deductions");
        permit.verify(&f.keys, NOW).unwrap();
        permit.verify_for(&f.keys, &f.reply.public(), NOW).unwrap();
        let json = serde_json::to_string(&permit).unwrap();
        assert!(json.contains("\"2025-04-01T00:00:00Z\""), "{json}");
        let back: SignedPermit = serde_json::from_str(&json).unwrap();
        assert_eq!(back, permit);
        back.verify(&f.keys, NOW).unwrap();
        let keys_json = serde_json::to_string(&f.keys).unwrap();
        assert_eq!(
            serde_json::from_str::<PermitKeySet>(&keys_json).unwrap(),
            f.keys
        );
    }

    #[test]
    fn signing_bytes_layout() {
        let f = fixture();
        let bytes = sign(&f.key, f.claims).claims.signing_bytes();
        assert_eq!(&bytes[..4], &19u32.to_be_bytes());
        assert_eq!(&bytes[4..23], PERMIT_TAG.as_bytes());
        assert_eq!(&bytes[23..27], &3u32.to_be_bytes());
        assert_eq!(&bytes[27..30], b"p_1");
        let tail = b"\x00\x00\x00\x142025-04-01T00:00:00Z\x00\x00\x00\x142025-04-01T00:05:00Z";
        assert!(bytes.ends_with(tail));
        // The item count precedes the sorted items.
        let needle =
            b"\x00\x00\x00\x02\x00\x00\x00\x14local_tax.deductions\x00\x00\x00\x10local_tax.income";
        assert!(bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn every_tampered_field_fails() {
        let f = fixture();
        let permit = sign(&f.key, f.claims.clone());
        let other_item = ItemCode::new("local_tax.other").unwrap();
        type Tamper = Box<dyn Fn(&mut PermitClaims)>;
        let tampers: Vec<(&str, Tamper)> = vec![
            (
                "permit_id",
                Box::new(|c| c.permit_id = PermitId::new("p_2").unwrap()),
            ),
            (
                "query_id",
                Box::new(|c| c.query_id = QueryId::new("q_2").unwrap()),
            ),
            (
                "requester",
                Box::new(|c| c.requester = OrgId::new("city-x").unwrap()),
            ),
            (
                "provider",
                Box::new(|c| c.provider = OrgId::new("city-y").unwrap()),
            ),
            (
                "flow_id",
                Box::new(|c| c.flow_id = FlowId::new("row-81").unwrap()),
            ),
            (
                "procedure",
                Box::new(|c| c.procedure = ProcedureCode::new("other").unwrap()),
            ),
            (
                "items+",
                Box::new(move |c| c.items.push(other_item.clone())),
            ),
            (
                "items-",
                Box::new(|c| {
                    c.items.pop();
                }),
            ),
            (
                "requester_person_code",
                Box::new(|c| c.requester_person_code = PersonCode::new("U0000002").unwrap()),
            ),
            (
                "provider_person_commitment",
                Box::new(|c| {
                    c.provider_person_commitment = provider_person_commitment(&SALT, "K0000002")
                }),
            ),
            (
                "reply_key_sha256",
                Box::new(|c| c.reply_key_sha256 = "0".repeat(64)),
            ),
            (
                "issued_at",
                Box::new(|c| c.issued_at -= Duration::seconds(1)),
            ),
            (
                "expires_at",
                Box::new(|c| c.expires_at += Duration::seconds(1)),
            ),
        ];
        for (name, tamper) in tampers {
            let mut bad = permit.clone();
            tamper(&mut bad.claims);
            assert_eq!(
                bad.verify(&f.keys, NOW),
                Err(PermitError::BadSignature),
                "{name}"
            );
        }
        // Reordering items does not change what is granted, so it still verifies.
        let mut reordered = permit.clone();
        reordered.claims.items.reverse();
        reordered.verify(&f.keys, NOW).unwrap();
        let mut sig = b64::decode(&permit.signature).unwrap();
        sig[10] ^= 1;
        let bad = SignedPermit {
            signature: b64::encode(&sig),
            ..permit.clone()
        };
        assert_eq!(bad.verify(&f.keys, NOW), Err(PermitError::BadSignature));
    }

    #[test]
    fn keys_and_times() {
        let f = fixture();
        let permit = sign(&f.key, f.claims.clone());
        let mut renamed = permit.clone();
        renamed.claims.key_id = KeyId::new("permit-2").unwrap();
        assert_eq!(renamed.verify(&f.keys, NOW), Err(PermitError::UnknownKeyId));

        let other = SigningKey::generate(&mut OsRng);
        let wrong_keys = PermitKeySet {
            keys: vec![PermitPublicKey::new(
                f.claims.key_id.clone(),
                &other.verifying_key(),
            )],
        };
        assert_eq!(
            permit.verify(&wrong_keys, NOW),
            Err(PermitError::BadSignature)
        );

        assert_eq!(
            permit.verify(&f.keys, datetime!(2025-04-01 00:05:00 UTC)),
            Err(PermitError::Expired)
        );
        permit
            .verify(&f.keys, datetime!(2025-04-01 00:04:59 UTC))
            .unwrap();
        assert_eq!(
            permit.verify(&f.keys, datetime!(2025-03-31 23:59:29 UTC)),
            Err(PermitError::NotYetValid)
        );
        permit
            .verify(&f.keys, datetime!(2025-03-31 23:59:30 UTC))
            .unwrap();

        let stranger = ReplyKeyPair::generate();
        assert_eq!(
            permit.verify_for(&f.keys, &stranger.public(), NOW),
            Err(PermitError::ReplyKeyMismatch)
        );
    }

    #[test]
    fn wire_checks() {
        let f = fixture();
        let json = serde_json::to_value(sign(&f.key, f.claims)).unwrap();
        let mut v = json.clone();
        v["claims"]["reply_key_sha256"] = "ABC".into();
        assert!(serde_json::from_value::<SignedPermit>(v).is_err());
        let mut v = json.clone();
        v["signature"] = "AAAA".into();
        assert!(serde_json::from_value::<SignedPermit>(v).is_err());
        let mut v = json.clone();
        v["claims"]["provider_person_commitment"] = "K0000001".into();
        assert!(serde_json::from_value::<SignedPermit>(v).is_err());
        let mut v = json.clone();
        v["claims"]["provider_person_code"] = "K0000001".into();
        assert!(serde_json::from_value::<SignedPermit>(v).is_err());
        let mut v = json.clone();
        v["claims"]["items"] = serde_json::json!(["a", "a"]);
        assert!(serde_json::from_value::<SignedPermit>(v).is_err());
        let mut v = json.clone();
        v["claims"]["extra"] = 1.into();
        assert!(serde_json::from_value::<SignedPermit>(v).is_err());
        let bad_key = r#"{"keys":[{"key_id":"k","algorithm":"ed25519","public_key":"AAAA"}]}"#;
        assert!(serde_json::from_str::<PermitKeySet>(bad_key).is_err());
        let rsa = r#"{"keys":[{"key_id":"k","algorithm":"rsa","public_key":"AAAA"}]}"#;
        assert!(serde_json::from_str::<PermitKeySet>(rsa).is_err());
    }
}
