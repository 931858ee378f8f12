//! An export's seal: the broker's Ed25519 signature over the SHA-256 of its
//! bundle, from the header to the end line. The bundle lists every exported
//! row and every record left out (as a leaf), states the filter, and carries
//! the data file's hash; sealed, none of these can be changed afterwards.
//! Without the seal, whoever holds an export could turn a row into a leaf
//! (withhold a record), fix the row count and the data file's hash, and the
//! chain would still verify.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use super::{key_id, BundleLine, Hash};

const EXPORT_SEAL_TAG: &[u8] = b"kakehashi/records/v1/export\0";

/// What a verifier says of an export without a seal line whose records
/// verified against trusted keys.
pub const UNSEALED_EXPORT: &str =
    "the export has no seal line, so records could have been withheld from it \
     (a row turned into a leaf keeps the chain whole) or its filter changed";

/// The bytes a broker signs to seal an export whose bundle, up to and
/// including the end line's `\n`, has SHA-256 `bundle_sha256`.
pub fn export_seal_bytes(bundle_sha256: &Hash) -> Vec<u8> {
    let mut out = Vec::with_capacity(EXPORT_SEAL_TAG.len() + 32);
    out.extend_from_slice(EXPORT_SEAL_TAG);
    out.extend_from_slice(bundle_sha256);
    out
}

impl BundleLine {
    /// The seal line of a bundle whose lines before it hash to
    /// `bundle_sha256`, signed by `key`.
    pub fn seal(bundle_sha256: &Hash, key: &SigningKey) -> BundleLine {
        let public = key.verifying_key();
        BundleLine::Seal {
            bundle_sha256: hex::encode(bundle_sha256),
            key_id: key_id(&public),
            public_key: hex::encode(public.as_bytes()),
            signature: hex::encode(key.sign(&export_seal_bytes(bundle_sha256)).to_bytes()),
        }
    }
}

/// Appends the seal by `key` to a bundle held whole in memory.
pub fn append_seal(bundle: &mut Vec<u8>, key: &SigningKey) -> std::io::Result<()> {
    let digest: Hash = Sha256::digest(&bundle[..]).into();
    BundleLine::seal(&digest, key).write(bundle)
}

/// Checks a seal's signature by `key` over `bundle_sha256`.
pub(super) fn verify_seal(bundle_sha256: &Hash, key: &VerifyingKey, signature: &[u8; 64]) -> bool {
    key.verify_strict(
        &export_seal_bytes(bundle_sha256),
        &Signature::from_bytes(signature),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_verifies_only_for_its_own_digest_and_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let digest = [3u8; 32];
        let BundleLine::Seal {
            bundle_sha256,
            key_id: kid,
            signature,
            ..
        } = BundleLine::seal(&digest, &key)
        else {
            panic!("a seal line");
        };
        assert_eq!(bundle_sha256, hex::encode(digest));
        assert_eq!(kid, key_id(&key.verifying_key()));
        let mut sig = [0u8; 64];
        hex::decode_to_slice(&signature, &mut sig).unwrap();
        assert!(verify_seal(&digest, &key.verifying_key(), &sig));
        assert!(!verify_seal(&[4u8; 32], &key.verifying_key(), &sig));
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(!verify_seal(&digest, &other, &sig));
    }
}
