//! Values shared by the module's tests.

use ed25519_dalek::SigningKey;

use super::{chain_hash, person_commitment, Hash, Outcome, Record, TrustedKeys, GENESIS_HASH};

/// A record with every field present (its hashes are pinned in `record.rs`).
pub(super) fn sample() -> Record {
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

/// Records 1 to `n`, each with its chain hash from [`GENESIS_HASH`].
pub(super) fn chain(n: u64) -> Vec<(Record, Hash)> {
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

/// A sealer key and the trusted keys that hold it.
pub(super) fn sealer() -> (SigningKey, TrustedKeys) {
    let key = SigningKey::from_bytes(&[7; 32]);
    let mut keys = TrustedKeys::new();
    keys.add(key.verifying_key());
    (key, keys)
}
