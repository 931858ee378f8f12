//! Checkpoints: a sealer's Ed25519 signature over a chain's head, the key
//! ids that name sealer keys, and the set of keys a verifier trusts.

use std::collections::BTreeMap;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::encoding::{put_str, put_u64};
use super::{FailureKind, Hash};

const CHECKPOINT_TAG: &[u8] = b"kakehashi/records/v1/checkpoint\0";

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
    /// The RFC 3161 time-stamp token (DER) over the checkpoint's digest
    /// ([`super::checkpoint_digest`]), when a TSA answered; not covered by
    /// the signature, it proves itself ([`super::verify_token`]).
    pub timestamp: Option<Vec<u8>>,
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
            timestamp: None,
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
