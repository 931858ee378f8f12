//! The checkpoint log: every checkpoint the sealer signs is also appended,
//! one JSON object a line, to a file the operators keep on other storage
//! (WORM, another host), so a database rewritten together with its
//! checkpoints is still held against what was signed.

use std::io::{BufRead, Write};
use std::path::Path;

use kakehashi_interfaces::audit::Checkpoint;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// Last sequence covered.
    pub seq: u64,
    /// Chain hash there, hex.
    pub head_hash: String,
    /// When it was signed.
    pub at: String,
    /// Which key signed it.
    pub key_id: String,
    /// Ed25519 signature, hex.
    pub signature: String,
    /// RFC 3161 time-stamp token, standard base64 of the DER, when the TSA
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl LogLine {
    fn of(cp: &Checkpoint) -> LogLine {
        LogLine {
            seq: cp.seq,
            head_hash: hex::encode(cp.head_hash),
            at: cp.at.clone(),
            key_id: cp.key_id.clone(),
            signature: hex::encode(cp.signature),
            timestamp: cp
                .timestamp
                .as_deref()
                .map(kakehashi_interfaces::audit::encode_token),
        }
    }

    /// The checkpoint, if its fields decode.
    pub fn to_checkpoint(&self) -> Option<Checkpoint> {
        let mut head_hash = [0u8; 32];
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&self.head_hash, &mut head_hash).ok()?;
        hex::decode_to_slice(&self.signature, &mut signature).ok()?;
        Some(Checkpoint {
            seq: self.seq,
            head_hash,
            at: self.at.clone(),
            key_id: self.key_id.clone(),
            signature,
            timestamp: self
                .timestamp
                .as_deref()
                .map(kakehashi_interfaces::audit::decode_token),
        })
    }
}

/// Appends `cp` (O_APPEND, created 0600 if absent) and fsyncs the file.
pub fn append(path: &Path, cp: &Checkpoint) -> Result<(), BrokerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut line =
        serde_json::to_string(&LogLine::of(cp)).map_err(|e| BrokerError::encoding("JSON", e))?;
    line.push('\n');
    let io =
        |what: &str, e| BrokerError::io(format!("{what} checkpoint log {}", path.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io("open", e))?;
    // One write: concurrent appenders (nodes sharing the file) never
    // interleave within a line.
    file.write_all(line.as_bytes())
        .and_then(|_| file.sync_data())
        .map_err(|e| io("append to", e))
}

/// The log's length now: read no further than this, so lines appended after
/// a verification took its database snapshot are not held against it.
pub fn len(path: &Path) -> Result<Option<u64>, BrokerError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BrokerError::io(
            format!("read checkpoint log {}", path.display()),
            e,
        )),
    }
}

/// Reads the first `limit` bytes of the log line by line: each checkpoint
/// with its line number (from 1), or the number of a line that is not one.
/// A last line without its newline (a crash during the append) is skipped.
pub struct Reader {
    lines: std::io::BufReader<std::io::Take<std::fs::File>>,
    number: u64,
    line: String,
}

impl Reader {
    /// Opens the log for reading up to `limit` bytes.
    pub fn open(path: &Path, limit: u64) -> Result<Reader, BrokerError> {
        use std::io::Read;
        let file = std::fs::File::open(path)
            .map_err(|e| BrokerError::io(format!("read checkpoint log {}", path.display()), e))?;
        Ok(Reader {
            lines: std::io::BufReader::new(file.take(limit)),
            number: 0,
            line: String::new(),
        })
    }

    /// The next line, if any.
    pub fn next_line(&mut self) -> Result<Option<(u64, Option<Checkpoint>)>, BrokerError> {
        self.line.clear();
        let n = self
            .lines
            .read_line(&mut self.line)
            .map_err(|e| BrokerError::io("read checkpoint log".to_string(), e))?;
        if n == 0 || !self.line.ends_with('\n') {
            return Ok(None);
        }
        self.number += 1;
        let parsed = serde_json::from_str::<LogLine>(self.line.trim_end())
            .ok()
            .and_then(|l| l.to_checkpoint());
        Ok(Some((self.number, parsed)))
    }
}
