//! Offline verification: a run of records checked against signed
//! checkpoints ([`ChainVerifier`]), and an auditor export checked against
//! its bundle ([`verify_export`]).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::export::read_csv_record;
use super::{
    bundle_path_for, chain_hash, key_id, BundleLine, ChainFailure, Checkpoint, ExportFormat,
    ExportRow, FailureKind, Hash, Outcome, Record, TrustedKeys, BUNDLE_FORMAT, CSV_COLUMNS,
    UTF8_BOM,
};

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
    /// `anchor_hash` (0 and [`GENESIS_HASH`](super::GENESIS_HASH), or the
    /// latest purge cut, which must then be confirmed by a purge record in
    /// the chain).
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
            // Saturating: an anchor at u64::MAX then accepts no record
            // (callers refuse such anchors before).
            next_seq: anchor_seq.saturating_add(1),
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

    /// The sequence the chain starts after.
    pub fn anchor_seq(&self) -> u64 {
        self.anchor_seq
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
    /// The export is sealed by a key the caller does not trust.
    #[error("the export is sealed by key {key_id}, which is not among the trusted key ids")]
    UntrustedSealKey {
        /// The seal's key id.
        key_id: String,
    },
    /// The data file's hash differs from the bundle's.
    #[error("data file was changed: its SHA-256 differs from the bundle's")]
    DataHash,
    /// A checkpoint's time-stamp token is malformed or belongs to another
    /// checkpoint.
    #[error("checkpoint {checkpoint}: {error}")]
    Timestamp {
        /// The checkpoint's sequence.
        checkpoint: u64,
        /// What is wrong with its token.
        error: super::TimestampError,
    },
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
    /// The public key (hex) of every key id above, of the latest
    /// checkpoint's key and of the seal's: a verifier trusts the export only when each is a
    /// key it pinned, never because the bundle carries it.
    pub public_keys: std::collections::BTreeMap<String, String>,
    /// The log's latest checkpoint when the export was made, if the bundle
    /// names it (its signature checks against its key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<crate::records::SignedCheckpoint>,
    /// The filter the export states.
    pub filter: String,
    /// When it was made.
    pub created_at: String,
    /// Checkpoints (and the latest one) that carry a time-stamp token, each
    /// token's imprint checked against its checkpoint; its TSA signature is
    /// checked by [`ExportReport::verify_timestamps`].
    pub timestamps: Vec<CheckpointTimestamp>,
    /// Sequences of checkpoints without a time-stamp token.
    pub untimestamped: Vec<u64>,
    /// The id of the key whose seal covers the bundle; `None` for a bundle
    /// without a seal line, from which rows could have been withheld
    /// (turned into leaves) or whose filter could have been changed without
    /// a trace.
    pub sealed_by: Option<String>,
}

/// A checkpoint's time-stamp token in an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointTimestamp {
    /// The checkpoint's sequence.
    pub seq: u64,
    /// The `genTime` the token states (not yet checked against a TSA).
    pub gen_time: String,
    #[serde(skip)]
    digest: Hash,
    #[serde(skip)]
    token: Vec<u8>,
}

/// A checkpoint whose time-stamp token verified against the trusted TSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedTimestamp {
    /// The checkpoint's sequence.
    pub seq: u64,
    /// The TSA's time for it.
    pub gen_time: String,
}

/// A checkpoint whose time-stamp token fails against the trusted TSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("checkpoint {seq}: {error}")]
pub struct TimestampFailure {
    /// The checkpoint's sequence.
    pub seq: u64,
    /// What is wrong.
    #[serde(serialize_with = "display")]
    pub error: super::TimestampError,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A checkpoint's token: its imprint checked, its genTime read.
fn timestamp_of(cp: &Checkpoint) -> Result<Option<CheckpointTimestamp>, ExportError> {
    let Some(token) = &cp.timestamp else {
        return Ok(None);
    };
    let digest = super::checkpoint_digest(cp);
    let info = super::check_imprint(token, &digest).map_err(|error| ExportError::Timestamp {
        checkpoint: cp.seq,
        error,
    })?;
    Ok(Some(CheckpointTimestamp {
        seq: cp.seq,
        gen_time: info.gen_time,
        digest,
        token: token.clone(),
    }))
}

/// Whether an export that verified is evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "trust", rename_all = "snake_case")]
pub enum ExportTrust {
    /// Every key that signed a checkpoint of the export, or its seal, is
    /// trusted, and the export is sealed.
    Trusted {
        /// Those keys' ids.
        key_ids: Vec<String>,
    },
    /// The export is self-consistent, but not every checkpoint or seal key
    /// is trusted (or none signed it): anyone could have re-chained and
    /// signed it.
    NotTrusted {
        /// Ids of the keys that are not trusted.
        untrusted: Vec<String>,
    },
    /// Every key is trusted, but the bundle has no seal line: the records it
    /// shows are genuine, but some could have been withheld or its filter
    /// changed.
    Unsealed {
        /// The checkpoint keys' ids.
        key_ids: Vec<String>,
    },
}

impl ExportReport {
    /// Verifies every checkpoint's time-stamp token against the trusted TSA
    /// certificate; the TSA's time of each, or the first that fails.
    /// Checkpoints without a token are in [`ExportReport::untimestamped`].
    pub fn verify_timestamps(
        &self,
        tsa: &super::TsaCertificate,
    ) -> Result<Vec<VerifiedTimestamp>, TimestampFailure> {
        self.timestamps
            .iter()
            .map(|t| {
                super::verify_token(&t.token, &t.digest, tsa)
                    .map(|info| VerifiedTimestamp {
                        seq: t.seq,
                        gen_time: info.gen_time,
                    })
                    .map_err(|error| TimestampFailure { seq: t.seq, error })
            })
            .collect()
    }

    /// Holds the keys that signed the export's checkpoints and seal against
    /// the verifier's, and says whether it is sealed: a key is trusted when `keys` holds that very public key
    /// (pinned, or given in full), or when its id is among `ids` (a 64-bit
    /// id; a full key is the stronger pin).
    pub fn trust(&self, keys: &TrustedKeys, ids: &[String]) -> ExportTrust {
        let trusted = |id: &str, public_key: &str| {
            ids.iter().any(|i| i == id)
                || keys
                    .get(id)
                    .is_some_and(|k| hex::encode(k.as_bytes()) == public_key)
        };
        let untrusted: Vec<String> = self
            .public_keys
            .iter()
            .filter(|(id, pk)| !trusted(id, pk))
            .map(|(id, _)| id.clone())
            .collect();
        let key_ids = || self.public_keys.keys().cloned().collect();
        if !untrusted.is_empty() || self.public_keys.is_empty() {
            ExportTrust::NotTrusted { untrusted }
        } else if self.sealed_by.is_none() {
            ExportTrust::Unsealed { key_ids: key_ids() }
        } else {
            ExportTrust::Trusted { key_ids: key_ids() }
        }
    }
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

fn parse_signature(s: &str, line: usize) -> Result<[u8; 64], ExportError> {
    crate::records::Hex::<64>::parse(s)
        .map(|sig| sig.0)
        .map_err(|_| ExportError::Bundle {
            line,
            reason: "signature is not 64 hex bytes".into(),
        })
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
    let mut lines = BundleLines {
        inner: bundle,
        line: 0,
        hasher: Sha256::new(),
        crlf: false,
    };
    let mut next_line = |expect: &str| -> Result<(usize, BundleLine), ExportError> {
        lines.next()?.ok_or_else(|| ExportError::Bundle {
            line: 0,
            reason: format!("bundle ends early; expected {expect}"),
        })
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
    let mut public_keys = std::collections::BTreeMap::new();
    let mut latest: Option<crate::records::SignedCheckpoint> = None;
    let mut highest_checkpoint = 0u64;
    let mut segments_end = 0u64;
    let mut timestamps: Vec<CheckpointTimestamp> = Vec::new();
    let mut untimestamped: Vec<u64> = Vec::new();
    let mut note_timestamp = |cp: &Checkpoint| -> Result<(), ExportError> {
        if timestamps.iter().any(|t| t.seq == cp.seq) || untimestamped.contains(&cp.seq) {
            return Ok(());
        }
        match timestamp_of(cp)? {
            Some(t) => timestamps.push(t),
            None => untimestamped.push(cp.seq),
        }
        Ok(())
    };
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
                    segments_end = s.last_seq;
                }
                // Record sequences stay below i64::MAX (they are counted
                // from 1); and each segment starts where the one before it
                // ended or later, so no record is shown twice.
                if start_seq >= i64::MAX as u64 {
                    return Err(ExportError::Bundle {
                        line,
                        reason: format!("start_seq {start_seq} is beyond any record"),
                    });
                }
                if start_seq < segments_end {
                    return Err(ExportError::Bundle {
                        line,
                        reason: format!(
                            "segment starting after {start_seq} overlaps the one before (ending at {segments_end})"
                        ),
                    });
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
                timestamp,
            } => {
                let v = segment.as_mut().ok_or_else(no_segment)?;
                let pk = bundle_key(&public_key, &kid, line)?;
                if !trusted_key_ids.is_empty() && !trusted_key_ids.contains(&kid) {
                    return Err(ExportError::UntrustedKey {
                        checkpoint: seq,
                        key_id: kid,
                    });
                }
                let sig = parse_signature(&signature, line)?;
                v.trust(pk);
                let cp = Checkpoint {
                    seq,
                    head_hash: parse_hash(&head_hash, line, "head_hash")?,
                    at,
                    key_id: kid.clone(),
                    signature: sig,
                    timestamp: timestamp.as_deref().map(super::decode_token),
                };
                v.push_checkpoint(&cp)?;
                // A key counts (and is carried to later segments) only once
                // a checkpoint of this segment verified under it; one at or
                // before the segment's start is not checked at all.
                if v.sealed_seq() != seq || seq <= v.anchor_seq() {
                    return Err(ExportError::Bundle {
                        line,
                        reason: format!("checkpoint {seq} does not seal this segment's records"),
                    });
                }
                keys.add(pk);
                public_keys.insert(kid.clone(), public_key.to_ascii_lowercase());
                note_timestamp(&cp)?;
                highest_checkpoint = highest_checkpoint.max(seq);
                key_ids.insert(kid);
            }
            BundleLine::Latest {
                seq,
                head_hash,
                at,
                key_id: kid,
                public_key,
                signature,
                timestamp,
            } => {
                if latest.is_some() {
                    return Err(ExportError::Bundle {
                        line,
                        reason: "second latest line".into(),
                    });
                }
                if let Some(done) = segment.take() {
                    let s = done.finish_sealed()?;
                    checkpoints += s.checkpoints;
                }
                if seq < highest_checkpoint {
                    return Err(ExportError::Bundle {
                        line,
                        reason: format!(
                            "the latest checkpoint {seq} precedes checkpoint {highest_checkpoint}"
                        ),
                    });
                }
                let pk = bundle_key(&public_key, &kid, line)?;
                let cp = crate::records::SignedCheckpoint {
                    seq,
                    head_hash: crate::records::Hex(parse_hash(&head_hash, line, "head_hash")?),
                    at,
                    key_id: crate::records::RecordKeyId::new(&kid).map_err(|e| {
                        ExportError::Bundle {
                            line,
                            reason: e.to_string(),
                        }
                    })?,
                    signature: crate::records::Hex(parse_signature(&signature, line)?),
                    timestamp,
                };
                let mut own = TrustedKeys::new();
                own.add(pk);
                cp.verify(&own)
                    .map_err(|kind| ChainFailure::new(seq, kind))?;
                note_timestamp(&cp.to_checkpoint())?;
                public_keys.insert(kid, public_key.to_ascii_lowercase());
                latest = Some(cp);
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
                let sealed_by = read_seal(&mut lines, trusted_key_ids, &mut public_keys)?;
                return Ok(ExportReport {
                    rows,
                    segments,
                    checkpoints,
                    key_ids: key_ids.into_iter().collect(),
                    public_keys,
                    latest,
                    filter,
                    created_at,
                    timestamps,
                    untimestamped,
                    sealed_by,
                });
            }
            BundleLine::Seal { .. } => {
                return Err(ExportError::Bundle {
                    line,
                    reason: "seal before the end line".into(),
                })
            }
        }
    }
}

/// A bundle's lines, parsed, with the SHA-256 of the bytes read so far (a
/// seal signs the bundle's bytes, not its parsed lines).
struct BundleLines<B> {
    inner: B,
    line: usize,
    hasher: Sha256,
    /// Whether a line ended in CRLF (brokers write LF): a copy converted on
    /// the way fails its seal, and the error says why.
    crlf: bool,
}

impl<B: BufRead> BundleLines<B> {
    /// The next line and its 1-based number; `None` at the end of the file.
    fn next(&mut self) -> Result<Option<(usize, BundleLine)>, ExportError> {
        let mut text = String::new();
        let n = self
            .inner
            .read_line(&mut text)
            .map_err(|e| ExportError::Io {
                context: "read bundle".into(),
                source: e,
            })?;
        if n == 0 {
            return Ok(None);
        }
        self.hasher.update(text.as_bytes());
        self.crlf |= text.ends_with("\r\n");
        self.line += 1;
        let parsed = serde_json::from_str(text.trim_end_matches(['\n', '\r'])).map_err(|e| {
            ExportError::Bundle {
                line: self.line,
                reason: e.to_string(),
            }
        })?;
        Ok(Some((self.line, parsed)))
    }
}

/// Reads what follows the end line: nothing (an unsealed bundle), or a seal
/// over every byte before it and then nothing. The seal's key must be among
/// `trusted_key_ids` when any are given, and joins `public_keys`; returns
/// its id.
fn read_seal<B: BufRead>(
    lines: &mut BundleLines<B>,
    trusted_key_ids: &[String],
    public_keys: &mut std::collections::BTreeMap<String, String>,
) -> Result<Option<String>, ExportError> {
    let digest: Hash = lines.hasher.clone().finalize().into();
    let Some((line, next)) = lines.next()? else {
        return Ok(None);
    };
    let BundleLine::Seal {
        bundle_sha256,
        key_id: kid,
        public_key,
        signature,
    } = next
    else {
        return Err(ExportError::Bundle {
            line,
            reason: "only a seal line may follow the end line".into(),
        });
    };
    if parse_hash(&bundle_sha256, line, "bundle_sha256")? != digest {
        let why = if lines.crlf {
            "; its lines end in CRLF, as a copy that converts line ends makes them: use the file as the broker wrote it"
        } else {
            ""
        };
        return Err(ExportError::Bundle {
            line,
            reason: format!(
                "the bundle was changed after it was sealed (its SHA-256 differs from the seal's){why}"
            ),
        });
    }
    let key = bundle_key(&public_key, &kid, line)?;
    if !trusted_key_ids.is_empty() && !trusted_key_ids.contains(&kid) {
        return Err(ExportError::UntrustedSealKey { key_id: kid });
    }
    let sig = parse_signature(&signature, line)?;
    if !super::seal::verify_seal(&digest, &key, &sig) {
        return Err(ExportError::Bundle {
            line,
            reason: "the seal's signature does not verify".into(),
        });
    }
    if lines.next()?.is_some() {
        return Err(ExportError::Bundle {
            line: line + 1,
            reason: "a line after the seal".into(),
        });
    }
    public_keys.insert(kid.clone(), public_key.to_ascii_lowercase());
    Ok(Some(kid))
}

/// The key a bundle line carries, checked against the id it states.
fn bundle_key(public_key: &str, kid: &str, line: usize) -> Result<VerifyingKey, ExportError> {
    let pk =
        VerifyingKey::from_bytes(&parse_hash(public_key, line, "public_key")?).map_err(|_| {
            ExportError::Bundle {
                line,
                reason: "public_key is not an Ed25519 key".into(),
            }
        })?;
    if key_id(&pk) != kid {
        return Err(ExportError::Bundle {
            line,
            reason: "key_id does not match public_key".into(),
        });
    }
    Ok(pk)
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

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::audit::fixtures::{chain, sealer};
    use crate::audit::{write_csv_header, GENESIS_HASH};

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

    /// `bundle` with its seal by `key` appended.
    fn sealed(mut bundle: Vec<u8>, key: &SigningKey) -> Vec<u8> {
        crate::audit::append_seal(&mut bundle, key).unwrap();
        bundle
    }

    #[test]
    fn a_sealed_export_shows_a_withheld_row_and_an_unsealed_one_says_it_cannot() {
        let (key, _) = sealer();
        let records = chain(5);
        let mut pinned = TrustedKeys::new();
        pinned.add(key.verifying_key());
        let kid = key_id(&key.verifying_key());
        for format in [ExportFormat::Csv, ExportFormat::Jsonl] {
            let (data, bundle) = export(&records, &[2, 3, 4], format, &key);
            let bundle = sealed(bundle, &key);
            let report = verify_export(&data[..], &bundle[..], &[]).unwrap();
            assert_eq!(report.sealed_by.as_deref(), Some(kid.as_str()));
            assert_eq!(
                report.trust(&pinned, &[]),
                ExportTrust::Trusted {
                    key_ids: vec![kid.clone()]
                }
            );
            let seal_line = &bundle[bundle[..bundle.len() - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .unwrap()
                + 1..];

            // Whoever holds the export turns record 3 into a leaf, drops its
            // row and fixes the row count and the data file's hash: the
            // chain still verifies, but not the seal.
            let (fewer, withheld) = export(&records, &[2, 4], format, &key);
            let mut forged = withheld.clone();
            forged.extend_from_slice(seal_line);
            assert!(matches!(
                verify_export(&fewer[..], &forged[..], &[]),
                Err(ExportError::Bundle { reason, .. }) if reason.contains("changed after it was sealed")
            ));
            // A copy whose line ends were converted fails, saying so.
            let crlf = String::from_utf8(bundle.clone())
                .unwrap()
                .replace('\n', "\r\n");
            assert!(matches!(
                verify_export(&data[..], crlf.as_bytes(), &[]),
                Err(ExportError::Bundle { reason, .. }) if reason.contains("CRLF")
            ));
            // A changed filter is caught the same way.
            let refiltered = String::from_utf8(bundle.clone())
                .unwrap()
                .replace("\"filter\":\"test\"", "\"filter\":\"org=city-x\"");
            assert!(matches!(
                verify_export(&data[..], refiltered.as_bytes(), &[]),
                Err(ExportError::Bundle { reason, .. }) if reason.contains("changed after it was sealed")
            ));
            // With the seal taken off it verifies, but says what it cannot
            // show.
            let report = verify_export(&fewer[..], &withheld[..], &[]).unwrap();
            assert_eq!(report.sealed_by, None);
            assert_eq!(
                report.trust(&pinned, &[]),
                ExportTrust::Unsealed {
                    key_ids: vec![kid.clone()]
                }
            );
            // Sealed by a key nobody pinned: not trusted, and refused when
            // the trusted ids are given.
            let stranger = SigningKey::from_bytes(&[9; 32]);
            let resealed = sealed(export(&records, &[2, 3, 4], format, &key).1, &stranger);
            assert!(matches!(
                verify_export(&data[..], &resealed[..], std::slice::from_ref(&kid)),
                Err(ExportError::UntrustedSealKey { key_id: sealer_id }) if sealer_id == key_id(&stranger.verifying_key())
            ));
            let report = verify_export(&data[..], &resealed[..], &[]).unwrap();
            assert!(matches!(
                report.trust(&pinned, &[]),
                ExportTrust::NotTrusted { untrusted } if untrusted == vec![key_id(&stranger.verifying_key())]
            ));
            // Nothing but a seal may follow the end line, and nothing it.
            for tail in [
                &b"{\"type\":\"end\",\"rows\":0,\"data_sha256\":\"00\"}\n"[..],
                b"\n",
            ] {
                let mut extra = bundle.clone();
                extra.extend_from_slice(tail);
                assert!(verify_export(&data[..], &extra[..], &[]).is_err());
                let mut extra = withheld.clone();
                extra.extend_from_slice(tail);
                assert!(verify_export(&fewer[..], &extra[..], &[]).is_err());
            }
        }
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
            let bundle = sealed(bundle, &key);
            let report = verify_export(&data[..], &bundle[..], &[]).unwrap();
            assert_eq!(
                (report.rows, report.segments, report.checkpoints),
                (3, 1, 1)
            );
            let kid = key_id(&key.verifying_key());
            // Trusted only against the very key, or its id given explicitly.
            let mut pinned = TrustedKeys::new();
            pinned.add(key.verifying_key());
            assert_eq!(
                report.trust(&pinned, &[]),
                ExportTrust::Trusted {
                    key_ids: vec![kid.clone()]
                }
            );
            assert_eq!(
                report.trust(&TrustedKeys::new(), std::slice::from_ref(&kid)),
                ExportTrust::Trusted {
                    key_ids: vec![kid.clone()]
                }
            );
            let mut other = TrustedKeys::new();
            other.add(SigningKey::from_bytes(&[9; 32]).verifying_key());
            assert_eq!(
                report.trust(&other, &[]),
                ExportTrust::NotTrusted {
                    untrusted: vec![kid.clone()]
                }
            );
            assert!(verify_export(&data[..], &bundle[..], &[kid]).is_ok());
            assert!(matches!(
                verify_export(&data[..], &bundle[..], &["0000000000000000".into()]),
                Err(ExportError::UntrustedKey { .. })
            ));
            // A segment said to start after u64::MAX (so that the next
            // sequence wraps to 0 and no checkpoint is ever checked) is
            // refused, as is one overlapping the segment before.
            let bundle_text = String::from_utf8(bundle.clone()).unwrap();
            let wrapped =
                bundle_text.replace("\"start_seq\":1,", &format!("\"start_seq\":{},", u64::MAX));
            assert_ne!(wrapped, bundle_text);
            assert!(matches!(
                verify_export(&data[..], wrapped.as_bytes(), &[]),
                Err(ExportError::Bundle { reason, .. }) if reason.contains("beyond any record")
            ));
            // Any one changed byte is caught.
            let text = String::from_utf8(data.clone()).unwrap();
            let at = text.find("city-saitama").unwrap();
            let mut changed = data.clone();
            changed[at] = b'C';
            assert!(verify_export(&changed[..], &bundle[..], &[]).is_err());
        }
    }
}
