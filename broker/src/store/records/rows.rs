//! The rows the records writer commits: a provision record to append
//! ([`NewRow`], from the pipeline's [`RecordDraft`], with the query's
//! stored result when there is one), numbered and hash-linked by
//! `records::writer` ([`Prepared`]), and what a purge or an erasure
//! deletes in the same transaction ([`PurgePlan`]). They are defined here,
//! below `records/`, because every backend's [`super::Committer`] binds
//! them; what to write and in which order is decided in `records/`.

use kakehashi_interfaces::audit::{Hash, Outcome, SALT_LEN};
use kakehashi_interfaces::OrgId;

use crate::store::lookup_generation::LookupStamp;
use crate::store::timestamp;

/// What the query pipeline records. Codes are validated upstream; item
/// values and Individual Numbers never come here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDraft {
    /// Query id.
    pub query_id: String,
    /// Provision permit id, if one was issued.
    pub permit_id: Option<String>,
    /// Flow id of the flow list.
    pub flow_id: Option<String>,
    /// Version of the flow list in force.
    pub flow_list_version: Option<u64>,
    /// Procedure code.
    pub procedure: Option<String>,
    /// Requesting org.
    pub requester: OrgId,
    /// Providing org.
    pub provider: Option<OrgId>,
    /// Item codes (never values).
    pub items: Vec<String>,
    /// The requester's person code (its own per-org code).
    pub requester_person_code: Option<String>,
    /// The provider's person code.
    pub provider_person_code: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// Who approved or rejected, if anyone.
    pub approver: Option<String>,
}

impl RecordDraft {
    /// A draft for `query_id` by `requester` with everything else empty.
    pub fn new(query_id: impl Into<String>, requester: OrgId, outcome: Outcome) -> Self {
        Self {
            query_id: query_id.into(),
            permit_id: None,
            flow_id: None,
            flow_list_version: None,
            procedure: None,
            requester,
            provider: None,
            items: Vec::new(),
            requester_person_code: None,
            provider_person_code: None,
            outcome,
            approver: None,
        }
    }
}

/// A draft with what the writer needs besides a sequence number.
pub(crate) struct NewRow {
    pub at: String,
    pub part_month: i32,
    pub draft: RecordDraft,
    pub requester_salt: Option<[u8; SALT_LEN]>,
    pub provider_salt: Option<[u8; SALT_LEN]>,
    /// A query result committed in the same transaction as its record, so an
    /// answer and its record are durable together with one shared fsync.
    pub result: Option<OwnedResult>,
    /// The stamp of the query's answer, read from memory without asking the
    /// database ([`crate::lookups::LookupStamp`]): the row commits only if
    /// the database's lookup generation is still the stamp's (checked inside
    /// the commit's transaction), else its query is answered again.
    pub lookup_stamp: Option<LookupStamp>,
}

impl NewRow {
    pub fn new(draft: RecordDraft, at: time::OffsetDateTime) -> NewRow {
        let salt = |code: &Option<String>| code.as_ref().map(|_| rand::random::<[u8; SALT_LEN]>());
        NewRow {
            at: crate::store::timestamp(at),
            part_month: super::table::month_key(at),
            requester_salt: salt(&draft.requester_person_code),
            provider_salt: salt(&draft.provider_person_code),
            draft,
            result: None,
            lookup_stamp: None,
        }
    }
}

/// A deletion and the records that state it, committed in one transaction
/// by the writer: a crash leaves both or neither.
pub(crate) struct PurgePlan {
    /// What is deleted.
    pub deletes: Deletes,
    /// The `purge` or `erasure` record, or the `expired` records, appended
    /// in the same transaction.
    pub records: Vec<NewRow>,
}

/// What a [`PurgePlan`] deletes.
pub(crate) enum Deletes {
    /// The oldest provision records (R15 purge).
    Records {
        /// The cut the head row must still have (else another purge ran).
        expected_cut: u64,
        /// New cut: records up to here are deleted.
        cut_seq: u64,
        /// Chain hash at the new cut (verified before).
        cut_hash: Hash,
    },
    /// Personal data past their own periods (R15 erasure).
    PersonalData {
        /// The periods' cut-offs.
        cutoffs: crate::store::erasure::Cutoffs,
        /// The counts counted before (the record states them); other
        /// counts roll the transaction back.
        counts: crate::store::erasure::Counts,
    },
    /// Queries that expired unanswered (R13), turned into tombstones: their
    /// values at rest go, and each gets its `expired` record. Every one must
    /// still be pending or deciding and expired, or nothing is committed (so
    /// two sweeps never record one query twice).
    ExpiredQueries {
        /// The query ids.
        ids: Vec<String>,
        /// Expired before this instant (fixed-width RFC 3339).
        cut: String,
        /// When the tombstones go (fixed-width RFC 3339).
        tombstone_until: String,
    },
}

/// Rows with their sequence numbers, chain hashes and outcome columns.
pub(crate) struct Prepared<'a> {
    pub rows: Vec<PreparedRow<'a>>,
    /// The head after the last row.
    pub head: (u64, Hash),
}

/// A row with its sequence number, chain hash, and outcome, reason and
/// detail columns.
pub(crate) type PreparedRow<'a> = (
    &'a NewRow,
    u64,
    Hash,
    &'static str,
    Option<String>,
    Option<String>,
);

/// A result to store, committed with its provision record
/// ([`crate::records::RecordLog::append_answer`]).
#[derive(Debug, Clone)]
pub struct OwnedResult {
    /// Query id.
    pub id: String,
    /// Requesting org.
    pub requester: String,
    /// Providing org.
    pub provider: String,
    /// `provided` or `pending`.
    pub status: String,
    /// Permit JSON.
    pub permit: String,
    /// Envelope JSON (provided).
    pub envelope: Option<String>,
    /// Selected values encrypted at rest (pending).
    pub pending_cipher: Option<Vec<u8>>,
    /// Creation time, fixed-width RFC 3339.
    pub created_at: String,
    /// Expiry, fixed-width RFC 3339.
    pub expires_at: String,
}

impl OwnedResult {
    /// A result expiring at `expires_at`.
    pub fn new(
        id: &str,
        requester: &OrgId,
        provider: &OrgId,
        status: &str,
        permit: String,
        expires_at: time::OffsetDateTime,
    ) -> Self {
        Self {
            id: id.to_string(),
            requester: requester.to_string(),
            provider: provider.to_string(),
            status: status.to_string(),
            permit,
            envelope: None,
            pending_cipher: None,
            created_at: crate::store::now_rfc3339(),
            expires_at: timestamp(expires_at),
        }
    }
}

/// The head of the multi-row insert the record writer runs; values are
/// id, requester, provider, status, permit, envelope, pending_cipher,
/// created_at, expires_at in that order.
pub const QUERY_INSERT_HEAD: &str =
    "INSERT INTO queries (id, requester, provider, status, permit, envelope, pending_cipher, created_at, expires_at) ";
