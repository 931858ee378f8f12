//! The provision record log as an org sees it (R16): the keys that sign its
//! checkpoints (`GET /v1/record-keys`), the latest signed checkpoint that
//! every answer and export carries, and the chain between two heads
//! (`GET /v1/record-chain`), with which an org that kept a checkpoint holds
//! the broker's current log against it — as Certificate Transparency's
//! gossip does. Only hashes travel; never a record's content.
//!
//! What is hashed and signed is specified in [`crate::audit`].

use ed25519_dalek::VerifyingKey;
use schemars::gen::SchemaGenerator;
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audit::{self, Checkpoint, FailureKind, Hash, TrustedKeys};
use crate::InvalidInput;

/// The most chain links one `GET /v1/record-chain` returns; a client asks
/// again from where the answer ended.
pub const MAX_CHAIN_LINKS: u64 = 10_000;

/// Lowercase hex of exactly `N` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hex<const N: usize>(pub [u8; N]);

impl<const N: usize> Hex<N> {
    /// Parses lowercase (or uppercase) hex of exactly `N` bytes.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        let mut out = [0u8; N];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| InvalidInput::new("hex", format!("must be {N} bytes as hex")))?;
        Ok(Self(out))
    }
}

impl<const N: usize> std::fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> Serialize for Hex<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Hex<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl<const N: usize> JsonSchema for Hex<N> {
    fn schema_name() -> String {
        format!("Hex{N}")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        crate::schema::string_schema(
            &format!("{N} bytes as {} hex digits", 2 * N),
            &format!("^[0-9a-fA-F]{{{}}}$", 2 * N),
        )
    }
}

/// A checkpoint key's id: the first 16 lowercase hex digits of SHA-256 of
/// its public key ([`audit::key_id`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RecordKeyId(String);

impl RecordKeyId {
    /// Validates an id: 16 lowercase hex digits.
    pub fn new(s: &str) -> Result<Self, InvalidInput> {
        if s.len() == 16 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            Ok(Self(s.to_string()))
        } else {
            Err(InvalidInput::new(
                "key_id",
                "must be 16 lowercase hex digits",
            ))
        }
    }

    /// The id of a key.
    pub fn of(key: &VerifyingKey) -> Self {
        Self(audit::key_id(key))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RecordKeyId {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(&s)
    }
}

impl From<RecordKeyId> for String {
    fn from(k: RecordKeyId) -> String {
        k.0
    }
}

impl std::fmt::Display for RecordKeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for RecordKeyId {
    fn schema_name() -> String {
        "RecordKeyId".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        crate::schema::string_schema(
            "Id of a checkpoint key: the first 16 lowercase hex digits of SHA-256 of its public key",
            "^[0-9a-f]{16}$",
        )
    }
}

/// One key that signs (or signed) provision-record checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "RecordKeyWire")]
pub struct RecordKey {
    /// The id checkpoints and export bundles name.
    pub key_id: RecordKeyId,
    /// Always `ed25519`.
    pub algorithm: crate::permit::PermitAlgorithm,
    /// The 32-byte Ed25519 public key, hex.
    pub public_key: Hex<32>,
    /// True for the key that signs new checkpoints; older keys the broker
    /// still trusts (their checkpoints remain valid) are false.
    pub current: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordKeyWire {
    key_id: RecordKeyId,
    algorithm: crate::permit::PermitAlgorithm,
    public_key: Hex<32>,
    current: bool,
}

impl TryFrom<RecordKeyWire> for RecordKey {
    type Error = InvalidInput;
    fn try_from(w: RecordKeyWire) -> Result<Self, Self::Error> {
        let key = RecordKey {
            key_id: w.key_id,
            algorithm: w.algorithm,
            public_key: w.public_key,
            current: w.current,
        };
        let verifying = key.verifying_key()?;
        if RecordKeyId::of(&verifying) != key.key_id {
            return Err(InvalidInput::new("key_id", "is not the id of public_key"));
        }
        Ok(key)
    }
}

impl RecordKey {
    /// The entry for a key.
    pub fn new(key: &VerifyingKey, current: bool) -> Self {
        Self {
            key_id: RecordKeyId::of(key),
            algorithm: crate::permit::PermitAlgorithm::Ed25519,
            public_key: Hex(key.to_bytes()),
            current,
        }
    }

    /// The Ed25519 key.
    pub fn verifying_key(&self) -> Result<VerifyingKey, InvalidInput> {
        VerifyingKey::from_bytes(&self.public_key.0)
            .map_err(|_| InvalidInput::new("public_key", "is not an Ed25519 public key"))
    }
}

/// `GET /v1/record-keys`: the keys whose checkpoints the broker stands by.
/// Pin them (`kakehashi audit keys --pin`) and verify exports and witness the
/// log against the pinned keys, never against a key a file carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordKeySet {
    /// The current key first, then older trusted keys by id.
    pub keys: Vec<RecordKey>,
}

impl RecordKeySet {
    /// The keys as a verifier's trusted set (keys that do not decode are left out).
    pub fn trusted(&self) -> TrustedKeys {
        let mut keys = TrustedKeys::new();
        for k in &self.keys {
            if let Ok(v) = k.verifying_key() {
                keys.add(v);
            }
        }
        keys
    }
}

/// A signed statement "the record chain up to `seq` ends in `head_hash`":
/// a checkpoint on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    /// Last record sequence covered.
    pub seq: u64,
    /// Chain hash at `seq`.
    pub head_hash: Hex<32>,
    /// When it was signed, as signed (fixed-width RFC 3339 UTC).
    pub at: String,
    /// Which key signed it.
    pub key_id: RecordKeyId,
    /// Ed25519 signature over the checkpoint's signing bytes (specified
    /// with the record format).
    pub signature: Hex<64>,
    /// The RFC 3161 time-stamp token over SHA-256 of the signing bytes, DER
    /// in standard base64, when the broker's TSA answered (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl SignedCheckpoint {
    /// The wire form of a checkpoint.
    pub fn from_checkpoint(cp: &Checkpoint) -> Result<Self, InvalidInput> {
        Ok(Self {
            seq: cp.seq,
            head_hash: Hex(cp.head_hash),
            at: cp.at.clone(),
            key_id: RecordKeyId::new(&cp.key_id)?,
            signature: Hex(cp.signature),
            timestamp: cp.timestamp.as_deref().map(audit::encode_token),
        })
    }

    /// The checkpoint.
    pub fn to_checkpoint(&self) -> Checkpoint {
        Checkpoint {
            seq: self.seq,
            head_hash: self.head_hash.0,
            at: self.at.clone(),
            key_id: self.key_id.as_str().to_string(),
            signature: self.signature.0,
            timestamp: self.timestamp.as_deref().map(audit::decode_token),
        }
    }

    /// Checks the signature against trusted keys.
    pub fn verify(&self, keys: &TrustedKeys) -> Result<(), FailureKind> {
        self.to_checkpoint().verify(keys)
    }
}

/// One record of the chain, by its leaf hash only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainLink {
    /// The record's sequence number.
    pub seq: u64,
    /// Its leaf hash (SHA-256 over the record's canonical encoding).
    pub leaf: Hex<32>,
}

/// `GET /v1/record-chain?from=A&to=B`: the leaf hashes of the records after
/// `from` up to `to` (at most 10,000; never past the latest checkpoint), and
/// the latest signed checkpoint. From a head hash kept for `from`, chaining
/// the leaves (`hash = SHA-256("kakehashi/records/v1/chain\0" ‖ hash ‖ leaf)`)
/// reproduces the head at each later sequence; at `checkpoint.seq` it must
/// be the signed head, or the log was rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordChain {
    /// The chain starts after this sequence.
    pub from: u64,
    /// The chain hash the broker now stores at `from` (informative: a
    /// witness chains from the head it kept, not from this).
    pub from_hash: Hex<32>,
    /// Leaves of `from + 1 ..= from + links.len()`, in order.
    pub links: Vec<ChainLink>,
    /// The latest signed checkpoint.
    pub checkpoint: SignedCheckpoint,
}

impl RecordChain {
    /// Chains `links` onto `start` (the head at `from`); the head at the last
    /// link, or the first link out of sequence.
    pub fn chain_from(&self, start: Hash) -> Result<(u64, Hash), u64> {
        let mut head = start;
        let mut seq = self.from;
        for link in &self.links {
            if link.seq != seq + 1 {
                return Err(seq + 1);
            }
            head = audit::chain_hash(&head, &link.leaf.0);
            seq = link.seq;
        }
        Ok((seq, head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn keys_and_checkpoints_round_trip_and_validate() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let entry = RecordKey::new(&key.verifying_key(), true);
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(serde_json::from_str::<RecordKey>(&json).unwrap(), entry);
        // An id that is not the key's is refused.
        let other = RecordKey::new(&SigningKey::from_bytes(&[8; 32]).verifying_key(), true);
        let forged = json.replace(entry.key_id.as_str(), other.key_id.as_str());
        assert!(serde_json::from_str::<RecordKey>(&forged).is_err());
        assert!(serde_json::from_str::<Hex<32>>("\"00\"").is_err());

        let cp = Checkpoint::sign(3, [1; 32], "2026-04-01T09:00:01.000000Z".into(), &key);
        let wire = SignedCheckpoint::from_checkpoint(&cp).unwrap();
        let back: SignedCheckpoint =
            serde_json::from_str(&serde_json::to_string(&wire).unwrap()).unwrap();
        assert_eq!(back.to_checkpoint(), cp);
        let keys = RecordKeySet { keys: vec![entry] }.trusted();
        assert!(back.verify(&keys).is_ok());
        let mut bad = back.clone();
        bad.seq = 4;
        assert!(bad.verify(&keys).is_err());
    }

    #[test]
    fn a_chain_reproduces_the_head_only_from_the_right_start() {
        let leaves = [[1u8; 32], [2; 32], [3; 32]];
        let mut head = audit::GENESIS_HASH;
        let mut links = Vec::new();
        for (i, leaf) in leaves.iter().enumerate() {
            head = audit::chain_hash(&head, leaf);
            links.push(ChainLink {
                seq: i as u64 + 1,
                leaf: Hex(*leaf),
            });
        }
        let key = SigningKey::from_bytes(&[7; 32]);
        let cp = Checkpoint::sign(3, head, "t".into(), &key);
        let chain = RecordChain {
            from: 0,
            from_hash: Hex(audit::GENESIS_HASH),
            links,
            checkpoint: SignedCheckpoint::from_checkpoint(&cp).unwrap(),
        };
        assert_eq!(chain.chain_from(audit::GENESIS_HASH), Ok((3, head)));
        assert_ne!(chain.chain_from([9; 32]).map(|(_, h)| h), Ok(head));
        let mut gap = chain.clone();
        gap.links.remove(1);
        assert_eq!(gap.chain_from(audit::GENESIS_HASH), Err(2));
    }
}
