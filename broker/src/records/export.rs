//! Auditor export (R16): records by period, org, flow or person as CSV (UTF-8
//! with BOM) or JSON Lines, without person codes, with a verification bundle.
//!
//! Streamed: rows are written as the database returns them, so memory stays
//! constant for millions of records. The bundle proves each exported record
//! against a signed checkpoint: a segment starts at the chain hash before the
//! record and lists, up to the next checkpoint, the exported rows (with their
//! person-code commitments) and the leaf hashes of records not exported.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use kakehashi_interfaces::audit::{
    self, BundleLine, ExportFormat, ExportRow, Outcome, TrustedKeys,
};
use kakehashi_interfaces::{ErrorCode, OrgId};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::db::{to_hash, to_i64, CheckpointRow, RecordView};
use super::writeback::WritebackFile;
use super::{system_org, RecordDraft, RecordLog};
use crate::error::BrokerError;
use crate::store::record_source::{prepare_read, read_in_order, Sourced};

/// Which records to export. All given conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Recorded at or after this instant.
    pub from: Option<time::OffsetDateTime>,
    /// Recorded before this instant.
    pub to: Option<time::OffsetDateTime>,
    /// Requester or provider is this org.
    pub org: Option<OrgId>,
    /// Flow id.
    pub flow: Option<String>,
    /// Requester's or provider's person code (used to select, never written).
    pub person: Option<String>,
}

impl ExportFilter {
    /// The filter in words, without the person code.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = self.from {
            parts.push(format!("from={}", crate::store::timestamp(f)));
        }
        if let Some(t) = self.to {
            parts.push(format!("to={}", crate::store::timestamp(t)));
        }
        if let Some(o) = &self.org {
            parts.push(format!("org={o}"));
        }
        if let Some(f) = &self.flow {
            parts.push(format!("flow={f}"));
        }
        if self.person.is_some() {
            parts.push("person=(given)".into());
        }
        if parts.is_empty() {
            "all".into()
        } else {
            parts.join(" ")
        }
    }
}

/// An export to make.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// Which records.
    pub filter: ExportFilter,
    /// CSV or JSON Lines.
    pub format: ExportFormat,
    /// Data file (created, never overwritten); the bundle goes next to it.
    pub out: PathBuf,
    /// Who exports (recorded).
    pub actor: String,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    /// Records written.
    pub rows: u64,
    /// The data file.
    pub data: PathBuf,
    /// The verification bundle.
    pub bundle: PathBuf,
    /// Segments in the bundle.
    pub segments: u64,
    /// Records up to this sequence were considered (a signed checkpoint).
    pub sealed_seq: u64,
    /// Sequence of the record of this export.
    pub export_record_seq: u64,
}

/// Counts and hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn create_private(path: &Path) -> Result<std::fs::File, BrokerError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BrokerError::io(format!("create {}", path.display()), e))
}

/// Which records an export writes; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub(super) struct Matcher {
    /// Recorded at or after (fixed-width UTC text).
    pub(super) from: Option<String>,
    /// Recorded before.
    pub(super) to: Option<String>,
    /// Requester or provider.
    pub(super) org: Option<String>,
    pub(super) flow: Option<String>,
    /// Outcome name.
    pub(super) outcome: Option<String>,
    /// A person code (selects, never written).
    pub(super) person: Option<String>,
    /// When set, `person` is this org's own code and matches only on the
    /// side this org took part in, never another org's code column (R4).
    pub(super) person_org: Option<String>,
}

impl Matcher {
    fn new(f: &ExportFilter) -> Self {
        Self {
            from: f.from.map(crate::store::timestamp),
            to: f.to.map(crate::store::timestamp),
            org: f.org.as_ref().map(|o| o.as_str().to_string()),
            flow: f.flow.clone(),
            outcome: None,
            person: f.person.clone(),
            person_org: None,
        }
    }

    fn matches(&self, r: &RecordView<'_>) -> bool {
        // Fixed-width UTC timestamps compare as text.
        self.from.as_deref().is_none_or(|f| r.recorded_at >= f)
            && self.to.as_deref().is_none_or(|t| r.recorded_at < t)
            && self
                .org
                .as_deref()
                .is_none_or(|o| r.requester == o || r.provider == Some(o))
            && self.flow.as_deref().is_none_or(|f| r.flow_id == Some(f))
            && self.outcome.as_deref().is_none_or(|o| r.outcome == o)
            && self
                .person
                .as_deref()
                .is_none_or(|p| match self.person_org.as_deref() {
                    Some(org) => {
                        (r.requester == org && r.requester_code == Some(p))
                            || (r.provider == Some(org) && r.provider_code == Some(p))
                    }
                    None => r.requester_code == Some(p) || r.provider_code == Some(p),
                })
    }
}

/// The most an export may write before it stops with `payload_too_large`
/// (a download is held in memory or spooled before it is served).
#[derive(Debug, Clone, Copy)]
pub(super) struct Caps {
    /// Data rows.
    pub(super) rows: u64,
    /// Bytes of the data file and the bundle together.
    pub(super) bytes: u64,
}

impl Caps {
    /// The error an export over its caps stops with.
    pub(super) fn exceeded(&self) -> BrokerError {
        BrokerError::refused(
            ErrorCode::PayloadTooLarge,
            format!(
                "エクスポートが上限（{} 件、{} MiB）を超えます。期間を絞ってください / \
                 the export exceeds its limit ({} records, {} MiB); narrow the period",
                self.rows,
                self.bytes >> 20,
                self.rows,
                self.bytes >> 20
            ),
        )
    }
}

/// A period the latest checkpoint already proves: the checkpoint's
/// sequence, and the period's last record (asked to find that out).
#[derive(Debug, Clone, Copy)]
pub(super) struct Covered {
    seq: u64,
    last_match: Option<u64>,
}

/// What an export in progress has written so far.
#[derive(Debug, Default)]
pub(super) struct Progress {
    pub(super) rows: u64,
    pub(super) segments: u64,
}

fn io(what: &str) -> impl Fn(std::io::Error) -> BrokerError + '_ {
    move |e| BrokerError::io(what.to_string(), e)
}

/// `csv` or `jsonl`, as export records name the format.
pub(super) fn format_name(format: ExportFormat) -> &'static str {
    match format {
        ExportFormat::Csv => "csv",
        ExportFormat::Jsonl => "jsonl",
    }
}

impl RecordLog {
    /// Writes an export and its bundle (`OUT.bundle.jsonl`), then appends a
    /// record of the export (actor, filter, count) — also when it failed
    /// part-way, with what was written.
    pub async fn export(&self, req: &ExportRequest) -> Result<ExportSummary, BrokerError> {
        let bundle = audit::bundle_path_for(&req.out);
        let file = |path| -> Result<_, BrokerError> {
            Ok(BufWriter::with_capacity(
                256 * 1024,
                WritebackFile::new(create_private(path)?),
            ))
        };
        let (mut data_file, mut bundle_file) = (file(&req.out)?, file(&bundle)?);
        let filter = req.filter.describe();
        let mut progress = Progress::default();
        let result = match self
            .write_export(
                &Matcher::new(&req.filter),
                req.format,
                &filter,
                &mut data_file,
                &mut bundle_file,
                &mut progress,
                None,
            )
            .await
        {
            Ok(sealed) => sync_both(data_file, bundle_file).await.map(|()| sealed),
            Err(e) => Err(e),
        };
        let export_record_seq = self
            .record_export(
                &req.actor,
                &filter,
                req.format,
                result.is_err(),
                progress.rows,
            )
            .await?;
        let sealed_seq = result?;
        Ok(ExportSummary {
            rows: progress.rows,
            data: req.out.clone(),
            bundle,
            segments: progress.segments,
            sealed_seq,
            export_record_seq,
        })
    }

    /// Appends the record of an export (R16: exports are themselves
    /// recorded): who, the filter in words, the format, the rows written and
    /// whether it failed part-way.
    pub(super) async fn record_export(
        &self,
        actor: &str,
        filter: &str,
        format: ExportFormat,
        failed: bool,
        rows: u64,
    ) -> Result<u64, BrokerError> {
        let mut filter = format!("{filter} format={}", format_name(format));
        if failed {
            filter.push_str(" (failed)");
        }
        self.append(RecordDraft::new(
            format!("export-{}", hex::encode(rand::random::<[u8; 8]>())),
            system_org()?,
            Outcome::Export {
                actor: actor.to_string(),
                filter,
                count: rows,
            },
        ))
        .await
    }

    /// The latest checkpoint when it covers every record `matcher` can
    /// select: a period that ended before it, in a log that is not refusing
    /// to seal. Then an export need not seal the head (a commit and a file
    /// sync, 7–30 ms of a month's export).
    async fn covering_checkpoint(&self, matcher: &Matcher) -> Result<Option<Covered>, BrokerError> {
        let (Some(to), Some(cp)) = (&matcher.to, self.latest_checkpoint()) else {
            return Ok(None);
        };
        if self.is_refusing() {
            // Sealing reports why.
            return Ok(None);
        }
        let head = super::db::read_head(&self.pools).await?;
        if cp.seq < head.cut_seq || cp.seq > head.seq {
            return Ok(None);
        }
        let last_match = self
            .pools
            .backend()
            .last_seq_before(to, matcher.from.as_deref(), head.cut_seq, head.seq)
            .await?;
        Ok(last_match
            .is_none_or(|last| last <= cp.seq)
            .then_some(Covered {
                seq: cp.seq,
                last_match,
            }))
    }

    /// Writes the records `matcher` selects to `data` and the bundle that
    /// proves them to `bundle`; returns the sealed sequence the export
    /// covers. Both writers are flushed, not synced. With `caps`, stops with
    /// `payload_too_large` as soon as either is exceeded.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_export<D: Write, B: Write>(
        &self,
        matcher: &Matcher,
        format: ExportFormat,
        filter: &str,
        data: D,
        bundle: B,
        progress: &mut Progress,
        caps: Option<Caps>,
    ) -> Result<u64, BrokerError> {
        // Everything exported must be covered by a checkpoint: seal the head,
        // unless the latest checkpoint already covers the period (the
        // log's latest checkpoint travels with the export, for witnesses).
        self.refresh_latest_checkpoint().await;
        let covered = self.covering_checkpoint(matcher).await?;
        let sealed = match &covered {
            Some(c) => Some(c.seq),
            None => self.seal().await?,
        };
        let latest = self.latest_checkpoint();
        let trusted = self.trusted();
        let mut snap = self.long_reads.backend().snapshot().await?;
        let head = snap.head().await?;
        let hi = sealed.unwrap_or(head.cut_seq);

        let mut data = HashingWriter {
            inner: data,
            hasher: Sha256::new(),
            written: 0,
        };
        // The bundle is hashed too: its seal signs the hash.
        let mut bundle = HashingWriter {
            inner: bundle,
            hasher: Sha256::new(),
            written: 0,
        };
        let over = |rows: u64, data: &HashingWriter<D>, bundle: &HashingWriter<B>| {
            caps.filter(|c| rows > c.rows || data.written + bundle.written > c.bytes)
        };
        BundleLine::Header {
            format: audit::BUNDLE_FORMAT.into(),
            data_format: format,
            created_at: crate::store::now_rfc3339(),
            filter: filter.to_string(),
        }
        .write(&mut bundle)
        .map_err(io("write bundle"))?;
        if format == ExportFormat::Csv {
            audit::write_csv_header(&mut data).map_err(io("write export"))?;
        }

        // Narrow the scan with the time index; order (and so the range) is by
        // sequence, and the first/last sequences recorded in the period bound
        // it exactly. Both are asked on connections of their own while the
        // snapshot's prepares its long read.
        let backend = self.pools.backend();
        let (lo, last_match, ()) = tokio::try_join!(
            async {
                match &matcher.from {
                    Some(from) => backend.first_seq_at_or_after(from, head.cut_seq, hi).await,
                    None => Ok(Some(head.cut_seq + 1)),
                }
            },
            async {
                match (&covered, &matcher.to) {
                    (Some(c), _) => Ok(c.last_match),
                    (None, Some(to)) => {
                        backend
                            .last_seq_before(to, matcher.from.as_deref(), head.cut_seq, hi)
                            .await
                    }
                    (None, None) => Ok(Some(hi)),
                }
            },
            prepare_read(&mut snap),
        )?;
        if let (Some(lo), Some(last_match)) = (lo, last_match) {
            if lo <= last_match && lo <= hi {
                let mut prev = if lo - 1 == head.cut_seq {
                    head.cut_hash
                } else {
                    snap.stored_hash(lo - 1).await?.ok_or_else(|| {
                        BrokerError::refused(
                            ErrorCode::Internal,
                            format!("record {} is missing; run records verify", lo - 1),
                        )
                    })?
                };
                // The reading (the database's rows as they arrive) runs on a
                // task of its own, with the snapshot, and the writing below
                // on this one: on a multi-threaded runtime they run on two
                // cores, and while one chunk is formatted the next is read.
                let (tx, rx) = mpsc::channel(ITEMS_AHEAD);
                let mut in_segment = false;
                let mut line = String::with_capacity(256);
                let (pools, cut_seq) = (self.long_reads.clone(), head.cut_seq);
                let reading = tokio::spawn(async move {
                    read_in_order(&pools, &mut snap, to_i64(lo), to_i64(hi), cut_seq, tx).await;
                });
                let writing = async {
                    // Owned here, so the reading half stops once writing ends.
                    let mut rx = rx;
                    let mut last_seq: Option<u64> = None;
                    let mut closing: Option<CheckpointRow> = None;
                    while let Some(chunk) = rx.recv().await {
                        for item in chunk? {
                            let stored = match item {
                                Sourced::Checkpoint(cp_row) => {
                                    // A checkpoint right after a record of the
                                    // open segment may end it; the next record
                                    // decides.
                                    if in_segment && u64::try_from(cp_row.seq).ok() == last_seq {
                                        closing = Some(cp_row);
                                    }
                                    continue;
                                }
                                Sourced::Record(stored) => stored,
                            };
                            let view = stored.view()?;
                            let seq = u64::try_from(view.seq).unwrap_or(0);
                            let matches = seq <= last_match && matcher.matches(&view);
                            // A segment ends at a checkpoint only where the
                            // run of exported records does; inside a run the
                            // checkpoint goes along (with its time-stamp
                            // token), its signature left to the offline
                            // verifier. (A store that signs a checkpoint
                            // every few records would otherwise cost a
                            // segment and a signature check per record.)
                            if let Some(cp_row) = closing.take() {
                                if matches {
                                    carry(&cp_row, &trusted, &mut bundle)?;
                                } else if close_at(&cp_row, &trusted, &mut bundle)? {
                                    in_segment = false;
                                }
                            }
                            if !in_segment && last_seq.is_some_and(|s| s >= last_match) {
                                return Ok(());
                            }
                            last_seq = Some(seq);
                            if matches && !in_segment {
                                BundleLine::Segment {
                                    start_seq: seq - 1,
                                    start_hash: hex::encode(prev),
                                }
                                .write(&mut bundle)
                                .map_err(io("write bundle"))?;
                                in_segment = true;
                                progress.segments += 1;
                            }
                            let hash = to_hash(view.hash, "record hash")?;
                            if in_segment {
                                if write_in_segment(
                                    &view,
                                    seq,
                                    matches,
                                    format,
                                    &mut data,
                                    &mut bundle,
                                    &mut line,
                                )? {
                                    progress.rows += 1;
                                }
                                if let Some(caps) = over(progress.rows, &data, &bundle) {
                                    return Err(caps.exceeded());
                                }
                            }
                            prev = hash;
                        }
                    }
                    // The read ended on a checkpoint after the segment's last
                    // record.
                    if let Some(cp_row) = closing.take() {
                        if close_at(&cp_row, &trusted, &mut bundle)? {
                            in_segment = false;
                        }
                    }
                    Ok::<(), BrokerError>(())
                };
                let written = writing.await;
                // The writing half dropped its receiver: the reading half
                // ends at its next hand-over, and its snapshot with it. A
                // reading half that did not end by itself may have left
                // rows unread: the export is not complete then.
                let read = reading.await;
                written?;
                read.map_err(|e| {
                    BrokerError::Internal(format!("an export's reading half failed: {e}"))
                })?;
                if in_segment {
                    return Err(BrokerError::refused(
                        ErrorCode::Internal,
                        "the export's last records are not covered by a trusted checkpoint; run records verify",
                    ));
                }
            }
        }

        data.flush().map_err(io("write export"))?;
        let data_sha256 = hex::encode(data.hasher.finalize_reset());
        if let Some(cp) = latest.filter(|cp| cp.seq >= hi) {
            if let Some(key) = self.trusted_key(cp.key_id.as_str()) {
                BundleLine::latest(&cp.to_checkpoint(), &key)
                    .write(&mut bundle)
                    .map_err(io("write bundle"))?;
            }
        }
        BundleLine::End {
            rows: progress.rows,
            data_sha256,
        }
        .write(&mut bundle)
        .map_err(io("write bundle"))?;
        // Sealed by the key that signs checkpoints (read again if it was
        // rotated on disk): what the bundle lists and leaves out, and the
        // filter it states, are the broker's word (interfaces::audit,
        // "Auditor export").
        self.refresh_sealer();
        let bundle_sha256 = bundle.hasher.finalize_reset().into();
        BundleLine::seal(&bundle_sha256, &self.sealer.current().key)
            .write(&mut bundle)
            .map_err(io("write bundle"))?;
        bundle.flush().map_err(io("write bundle"))?;
        if let Some(caps) = over(progress.rows, &data, &bundle) {
            return Err(caps.exceeded());
        }
        Ok(hi)
    }
}

/// The error of an export that met a record it cannot read.
fn malformed(seq: u64, e: String) -> BrokerError {
    BrokerError::refused(
        ErrorCode::Internal,
        format!("record {seq} is malformed ({e}); run records verify"),
    )
}

/// Writes a CSV export's line and bundle row for a record it selected
/// straight from the stored columns, and returns whether it did: most
/// records have no detail and a plain item list, and for them the line is
/// the one [`ExportRow::write_csv`] writes, without an [`audit::Record`]
/// and an [`ExportRow`] built and dropped for each (a fifth of a PostgreSQL
/// export's time). The rest take that way.
fn write_csv_direct<D: Write, B: Write>(
    view: &RecordView<'_>,
    seq: u64,
    data: &mut D,
    bundle: &mut B,
    line: &mut String,
) -> Result<bool, BrokerError> {
    if !view.items_are_canonical() {
        return Ok(false);
    }
    let Some(checked) = view.checked().map_err(|e| malformed(seq, e))? else {
        return Ok(false);
    };
    let (version, rc, pc) = (
        checked.flow_list_version,
        checked.requester_person,
        checked.provider_person,
    );
    let (mut seq_digits, mut version_digits) = (itoa::Buffer::new(), itoa::Buffer::new());
    audit::write_csv_record(
        data,
        [
            seq_digits.format(seq),
            view.recorded_at,
            view.query_id,
            view.permit_id.unwrap_or(""),
            view.flow_id.unwrap_or(""),
            version.map_or("", |v| version_digits.format(v)),
            view.procedure_code.unwrap_or(""),
            view.requester,
            view.provider.unwrap_or(""),
            view.items,
            view.outcome,
            view.reason.unwrap_or(""),
            view.approver.unwrap_or(""),
            "",
        ],
        line,
    )
    .map_err(io("write export"))?;
    BundleLine::write_row(bundle, seq, rc.as_ref(), pc.as_ref()).map_err(io("write bundle"))?;
    Ok(true)
}

/// Ends the open segment at `cp_row` when a trusted key signed it: writes
/// its checkpoint line and returns true; false (the segment stays open) for
/// a checkpoint not signed by a trusted key.
fn close_at<B: Write>(
    cp_row: &CheckpointRow,
    trusted: &TrustedKeys,
    bundle: &mut B,
) -> Result<bool, BrokerError> {
    if cp_row.to_checkpoint().verify(trusted).is_err() {
        return Ok(false);
    }
    carry(cp_row, trusted, bundle)
}

/// Writes the line of a checkpoint, when a trusted key's id and key are on
/// it (returns whether it did). Inside a segment its signature is checked by
/// whoever verifies the export, as every checkpoint line's is; where it
/// ends a segment, [`close_at`] checks it first.
fn carry<B: Write>(
    cp_row: &CheckpointRow,
    trusted: &TrustedKeys,
    bundle: &mut B,
) -> Result<bool, BrokerError> {
    let Some(key) = trusted.get(&cp_row.key_id) else {
        return Ok(false);
    };
    if key.as_bytes().as_slice() != cp_row.public_key.as_slice() {
        return Ok(false);
    }
    BundleLine::checkpoint(&cp_row.to_checkpoint(), key)
        .write(bundle)
        .map_err(io("write bundle"))?;
    Ok(true)
}

/// Writes one record of an open segment: its data line and `row` line when
/// it is exported (returns true), else its `leaf` line. A record without
/// detail goes from its stored columns; the rest (and JSON Lines) are
/// decoded into an [`audit::Record`] first. Records that only link a
/// segment to the checkpoint that closes it cost a fifth of a month's
/// export when each was decoded (`kakehashi-bench national`).
fn write_in_segment<D: Write, B: Write>(
    view: &RecordView<'_>,
    seq: u64,
    exported: bool,
    format: ExportFormat,
    data: &mut D,
    bundle: &mut B,
    line: &mut String,
) -> Result<bool, BrokerError> {
    if exported {
        if format == ExportFormat::Csv && write_csv_direct(view, seq, data, bundle, line)? {
            return Ok(true);
        }
    } else if let Some(checked) = view.checked().map_err(|e| malformed(seq, e))? {
        let leaf = view.fields(&checked).leaf_hash();
        BundleLine::write_leaf(bundle, seq, &leaf).map_err(io("write bundle"))?;
        return Ok(false);
    }
    let (record, _) = view.to_row().into_record().map_err(|e| malformed(seq, e))?;
    if !exported {
        BundleLine::write_leaf(bundle, seq, &record.leaf_hash()).map_err(io("write bundle"))?;
        return Ok(false);
    }
    let (rc, pc) = (record.requester_person, record.provider_person);
    let out = ExportRow::from_owned(record);
    match format {
        ExportFormat::Csv => out.write_csv(data),
        ExportFormat::Jsonl => out.write_jsonl(data),
    }
    .map_err(io("write export"))?;
    BundleLine::write_row(bundle, seq, rc.as_ref(), pc.as_ref()).map_err(io("write bundle"))?;
    Ok(true)
}

/// Chunks read ahead of the writing: the reading half keeps going while
/// the writing half formats one.
const ITEMS_AHEAD: usize = 8;

/// Flushes both files' buffers and syncs the two side by side, each waiting
/// for its journal commit.
async fn sync_both(
    data: BufWriter<WritebackFile>,
    bundle: BufWriter<WritebackFile>,
) -> Result<(), BrokerError> {
    let on_its_own = |file: BufWriter<WritebackFile>, what: &'static str| {
        let file = file.into_inner().map_err(|e| io(what)(e.into_error()))?;
        Ok::<_, BrokerError>(tokio::task::spawn_blocking(move || {
            file.finish().map_err(io(what))
        }))
    };
    let (a, b) = (
        on_its_own(data, "sync export")?,
        on_its_own(bundle, "sync bundle")?,
    );
    let (a, b) = tokio::join!(a, b);
    for synced in [a, b] {
        synced.map_err(|e| BrokerError::Internal(format!("an export's sync failed: {e}")))??;
    }
    Ok(())
}
