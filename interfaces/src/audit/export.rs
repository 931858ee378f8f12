//! The auditor export (R16): the data file (CSV or JSON Lines, one row per
//! exported record, without person codes) and the verification bundle
//! beside it, and how each is written and read.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::{Checkpoint, Hash, Outcome, Record};

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
    /// Export, purge and erasure details.
    pub detail: Option<serde_json::Value>,
}

impl ExportRow {
    /// The exported form of a record.
    pub fn from_record(r: &Record) -> ExportRow {
        ExportRow::from_owned(r.clone())
    }

    /// The exported form of a record, moving its fields (an export's hot
    /// loop: no copy of every text per row).
    pub fn from_owned(r: Record) -> ExportRow {
        let (outcome, reason, detail) = r.outcome.to_parts();
        ExportRow {
            seq: r.seq,
            at: r.at,
            query_id: r.query_id,
            permit_id: r.permit_id,
            flow_id: r.flow_id,
            flow_list_version: r.flow_list_version,
            procedure: r.procedure,
            requester: r.requester,
            provider: r.provider,
            items: r.items,
            outcome: outcome.to_string(),
            reason,
            approver: r.approver,
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
        write_csv_record(w, fields, &mut String::with_capacity(256))
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

/// Writes one data line of a CSV export, the [`CSV_COLUMNS`] in order
/// (every field quoted, CRLF), in one write through `line`, which it
/// clears first: a long export reuses one buffer for all its lines.
pub fn write_csv_record<W: Write>(
    w: &mut W,
    fields: [&str; 14],
    line: &mut String,
) -> std::io::Result<()> {
    line.clear();
    push_csv_line(line, fields.into_iter());
    w.write_all(line.as_bytes())
}

fn write_csv_line<'a, W: Write>(
    w: &mut W,
    fields: impl Iterator<Item = &'a str>,
) -> std::io::Result<()> {
    let mut line = String::new();
    push_csv_line(&mut line, fields);
    w.write_all(line.as_bytes())
}

/// First characters that make a spreadsheet program read a cell as a
/// formula (`=`, `+`, `-`, `@`, tab, CR), and the quote that marks one
/// kept as text. A field starting with one of them is written with a leading
/// `'`, which the reader ([`read_csv_record`]) takes off again: an auditor
/// opening an export in Excel sees a cell like `=HYPERLINK(…)`
/// as text, and the verifier sees the value as it was recorded.
const FORMULA_STARTS: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

fn push_csv_line<'a>(line: &mut String, fields: impl Iterator<Item = &'a str>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push('"');
        if field.starts_with(FORMULA_STARTS) {
            line.push('\'');
        }
        if field.contains('"') {
            line.push_str(&field.replace('"', "\"\""));
        } else {
            line.push_str(field);
        }
        line.push('"');
    }
    line.push_str("\r\n");
}

/// A field as recorded: without the `'` that [`FORMULA_STARTS`] put before
/// it. Only a `'` followed by one of them is taken off, so a value like
/// `'abc` in an export without escaped cells reads as written.
fn as_recorded(field: String) -> String {
    match field.strip_prefix('\'') {
        Some(rest) if rest.starts_with(FORMULA_STARTS) => rest.to_string(),
        _ => field,
    }
}

/// Reads one RFC 4180 record (quoted fields may span lines); `None` at end.
pub(super) fn read_csv_record<R: BufRead>(r: &mut R) -> Result<Option<Vec<String>>, String> {
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
                    fields.push(as_recorded(field));
                    return Ok(Some(fields));
                }
                Some(',') => fields.push(as_recorded(field)),
                Some(_) => return Err("text after a closing quote".into()),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(as_recorded(field));
                        return Ok(Some(fields));
                    }
                    Some(',') => break,
                    Some('"') => return Err("quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(as_recorded(field));
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
        /// RFC 3161 time-stamp token, standard base64 of the DER; absent
        /// when the checkpoint has none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<String>,
    },
    /// The latest signed checkpoint of the whole log when the export was
    /// made (at or after every checkpoint above), so the auditor's org can
    /// keep it as a witness; optional, once, before the end line.
    Latest {
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
        /// RFC 3161 time-stamp token, standard base64 of the DER; absent
        /// when the checkpoint has none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timestamp: Option<String>,
    },
    /// The line that ends the listing.
    End {
        /// Rows in the data file.
        rows: u64,
        /// SHA-256 of the whole data file, hex.
        data_sha256: String,
    },
    /// Last line, after the end line: the broker's signature over the
    /// bundle's bytes before it ([`BundleLine::seal`]). A bundle without it
    /// verifies as [`super::ExportTrust::Unsealed`].
    Seal {
        /// SHA-256 of the bundle from its first byte to the end line's `\n`, hex.
        bundle_sha256: String,
        /// Key id.
        key_id: String,
        /// Ed25519 public key, hex.
        public_key: String,
        /// Signature over [`super::export_seal_bytes`], hex.
        signature: String,
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
            timestamp: cp.timestamp.as_deref().map(super::encode_token),
        }
    }

    /// The bundle line naming the log's latest checkpoint.
    pub fn latest(cp: &Checkpoint, public_key: &VerifyingKey) -> BundleLine {
        BundleLine::Latest {
            seq: cp.seq,
            head_hash: hex::encode(cp.head_hash),
            at: cp.at.clone(),
            key_id: cp.key_id.clone(),
            public_key: hex::encode(public_key.as_bytes()),
            signature: hex::encode(cp.signature),
            timestamp: cp.timestamp.as_deref().map(super::encode_token),
        }
    }

    /// Writes the line (JSON and `\n`).
    pub fn write<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        serde_json::to_writer(&mut *w, self)?;
        w.write_all(b"\n")
    }

    /// Writes the line [`BundleLine::Row`] writes, without building it: one
    /// per exported record, so the hot line of a long export.
    pub fn write_row<W: Write>(
        w: &mut W,
        seq: u64,
        rc: Option<&Hash>,
        pc: Option<&Hash>,
    ) -> std::io::Result<()> {
        write_hashes_line(
            w,
            br#"{"type":"row","seq":"#,
            seq,
            [(&br#","rc":""#[..], rc), (&br#","pc":""#[..], pc)],
        )
    }

    /// Writes the line [`BundleLine::Leaf`] writes, without building it: one
    /// per record that links a segment to its closing checkpoint.
    pub fn write_leaf<W: Write>(w: &mut W, seq: u64, leaf: &Hash) -> std::io::Result<()> {
        write_hashes_line(
            w,
            br#"{"type":"leaf","seq":"#,
            seq,
            [(&br#","leaf":""#[..], Some(leaf)), (&b""[..], None)],
        )
    }
}

/// A bundle line of a sequence number and up to two named hashes, as serde
/// writes it: its fields are a number and hex digits, which JSON never
/// escapes.
fn write_hashes_line<W: Write>(
    w: &mut W,
    start: &[u8],
    seq: u64,
    hashes: [(&[u8], Option<&Hash>); 2],
) -> std::io::Result<()> {
    // The longest line: its start, 20 digits, two named hashes, its end.
    const LONGEST: usize = 21 + 20 + 2 * (9 + 64 + 1) + 2;
    let mut line = [0u8; LONGEST];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        line[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(start);
    put(itoa::Buffer::new().format(seq).as_bytes());
    for (name, hash) in hashes {
        if let Some(hash) = hash {
            let mut digits = [0u8; 64];
            // Cannot fail: the buffer is exactly twice the hash.
            let _ = hex::encode_to_slice(hash, &mut digits);
            put(name);
            put(&digits);
            put(b"\"");
        }
    }
    put(b"}\n");
    w.write_all(&line[..at])
}

/// The bundle path for a data file: `FILE.bundle.jsonl`.
pub fn bundle_path_for(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".bundle.jsonl");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn cells_a_spreadsheet_would_run_are_written_as_text_and_read_as_recorded() {
        let values = [
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1",
            "-2",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "'quoted",
            "''",
            "'",
            "plain",
            "a=b",
            "",
        ];
        let mut out = Vec::new();
        write_csv_line(&mut out, values.into_iter()).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        for cell in text.trim_end().split("\",\"") {
            let cell = cell.trim_start_matches('"');
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell:?} would be run as a formula"
            );
        }
        assert!(text.starts_with("\"'=HYPERLINK("), "{text}");
        assert_eq!(read_csv_record(&mut &out[..]).unwrap().unwrap(), values);
        // An export without escaped cells reads as written.
        let old = b"\"'abc\",\"plain\"\r\n";
        assert_eq!(
            read_csv_record(&mut &old[..]).unwrap().unwrap(),
            vec!["'abc", "plain"]
        );
    }

    #[test]
    fn row_and_leaf_lines_written_directly_are_the_lines_serde_writes() {
        let (a, b) = ([0x0f; 32], std::array::from_fn(|i| (i * 37 + 5) as u8));
        for seq in [0, 7, u64::MAX] {
            for (rc, pc) in [
                (None, None),
                (Some(&a), None),
                (None, Some(&b)),
                (Some(&a), Some(&b)),
            ] {
                let mut direct = Vec::new();
                BundleLine::write_row(&mut direct, seq, rc, pc).unwrap();
                let mut serde = Vec::new();
                BundleLine::Row {
                    seq,
                    rc: rc.map(hex::encode),
                    pc: pc.map(hex::encode),
                }
                .write(&mut serde)
                .unwrap();
                assert_eq!(
                    String::from_utf8(direct).unwrap(),
                    String::from_utf8(serde).unwrap()
                );
            }
            let mut direct = Vec::new();
            BundleLine::write_leaf(&mut direct, seq, &b).unwrap();
            let mut serde = Vec::new();
            BundleLine::Leaf {
                seq,
                leaf: hex::encode(b),
            }
            .write(&mut serde)
            .unwrap();
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }
}
