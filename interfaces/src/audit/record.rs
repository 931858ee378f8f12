//! The record as it is hashed: its fields, its canonical encoding, its leaf
//! hash and the salted commitments that stand for person codes.

use sha2::{Digest, Sha256};

use super::encoding::{put_opt_hash, put_opt_str, put_opt_u64, put_str, put_u64};
use super::Outcome;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Version byte at the start of every canonical encoding.
pub const ENCODING_VERSION: u8 = 1;
/// Length of the random salt of a person-code commitment.
pub const SALT_LEN: usize = 16;

const PERSON_TAG: &[u8] = b"kakehashi/records/v1/person\0";
const LEAF_TAG: &[u8] = b"kakehashi/records/v1/leaf\0";

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

impl Record {
    /// The record's fields, borrowed.
    pub fn fields(&self) -> RecordFields<'_> {
        RecordFields {
            seq: self.seq,
            at: &self.at,
            query_id: &self.query_id,
            permit_id: self.permit_id.as_deref(),
            flow_id: self.flow_id.as_deref(),
            flow_list_version: self.flow_list_version,
            procedure: self.procedure.as_deref(),
            requester: &self.requester,
            provider: self.provider.as_deref(),
            items: Items::List(&self.items),
            requester_person: self.requester_person.as_ref(),
            provider_person: self.provider_person.as_ref(),
            outcome: &self.outcome,
            approver: self.approver.as_deref(),
        }
    }

    /// The canonical encoding (see the module documentation).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.fields().canonical_bytes()
    }

    /// `leaf = SHA-256(leaf tag ‖ canonical bytes)`.
    pub fn leaf_hash(&self) -> Hash {
        self.fields().leaf_hash()
    }
}

/// A record's item codes: a list, or the list's stored form (the codes
/// joined by single spaces, none empty).
#[derive(Debug, Clone, Copy)]
pub enum Items<'a> {
    /// One string per code.
    List(&'a [String]),
    /// The codes joined by single spaces; empty pieces are skipped.
    Spaced(&'a str),
}

impl<'a> Items<'a> {
    fn each(self) -> impl Iterator<Item = &'a str> {
        let (list, spaced) = match self {
            Items::List(list) => (Some(list.iter().map(String::as_str)), None),
            Items::Spaced(s) => (None, Some(s.split(' ').filter(|c| !c.is_empty()))),
        };
        list.into_iter()
            .flatten()
            .chain(spaced.into_iter().flatten())
    }
}

/// A record's hashed fields, borrowed (see [`Record`] for each): what is
/// encoded and hashed, for a caller holding the fields elsewhere — a stored
/// row read in place — that should not build a [`Record`] to hash it.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct RecordFields<'a> {
    pub seq: u64,
    pub at: &'a str,
    pub query_id: &'a str,
    pub permit_id: Option<&'a str>,
    pub flow_id: Option<&'a str>,
    pub flow_list_version: Option<u64>,
    pub procedure: Option<&'a str>,
    pub requester: &'a str,
    pub provider: Option<&'a str>,
    pub items: Items<'a>,
    pub requester_person: Option<&'a Hash>,
    pub provider_person: Option<&'a Hash>,
    pub outcome: &'a Outcome,
    pub approver: Option<&'a str>,
}

impl RecordFields<'_> {
    /// The canonical encoding (see the module documentation).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(ENCODING_VERSION);
        put_u64(&mut out, self.seq);
        put_str(&mut out, self.at);
        put_str(&mut out, self.query_id);
        put_opt_str(&mut out, self.permit_id);
        put_opt_str(&mut out, self.flow_id);
        put_opt_u64(&mut out, self.flow_list_version);
        put_opt_str(&mut out, self.procedure);
        put_str(&mut out, self.requester);
        put_opt_str(&mut out, self.provider);
        let items = u32::try_from(self.items.each().count()).unwrap_or(u32::MAX);
        out.extend_from_slice(&items.to_be_bytes());
        for item in self.items.each() {
            put_str(&mut out, item);
        }
        put_opt_hash(&mut out, self.requester_person);
        put_opt_hash(&mut out, self.provider_person);
        self.outcome.encode(&mut out);
        put_opt_str(&mut out, self.approver);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::audit::fixtures::sample;
    use crate::audit::{chain_hash, GENESIS_HASH};

    #[test]
    fn the_stored_item_form_encodes_as_the_list() {
        for items in [vec![], vec!["income.total".to_string()], sample().items] {
            let r = Record {
                items: items.clone(),
                ..sample()
            };
            let joined = items.join(" ");
            let spaced = RecordFields {
                items: Items::Spaced(&joined),
                ..r.fields()
            };
            assert_eq!(spaced.canonical_bytes(), r.canonical_bytes(), "{items:?}");
            assert_eq!(spaced.leaf_hash(), r.leaf_hash());
        }
        // A different list is a different leaf.
        let r = sample();
        let fewer = RecordFields {
            items: Items::Spaced("income.total"),
            ..r.fields()
        };
        assert_ne!(fewer.leaf_hash(), r.leaf_hash());
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
        let erasure = |persons, copies, codes| Outcome::Erasure {
            confirmed_before: "2025-11-23T00:00:00.000000Z".into(),
            lost_before: "2021-11-23".into(),
            identity_confirmations: 1,
            persons,
            copies,
            codes,
            actor: "retention-task".into(),
        };
        v(&|r| r.outcome = erasure(1, 2, None));
        v(&|r| r.outcome = erasure(2, 1, None));
        v(&|r| r.outcome = erasure(1, 2, Some(0)));
        v(&|r| r.outcome = erasure(1, 2, Some(3)));
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
}
