//! The operation-log sealer's memory outside the database (its key is the
//! provision records', [`crate::keys::Sealer`]): the state file holding the
//! last head it signed, so a checkpoint deleted from the database together with the
//! entries after it is still noticed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chain::SignedHead;
use crate::error::BrokerError;

/// File in the key directory holding the last operation-log head this
/// host's sealer signed (JSON, mode 0600, replaced atomically).
pub const STATE_FILE: &str = "oplog-sealer.state";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    seq: u64,
    head_hash: String,
}

fn state_path(key_dir: &Path) -> PathBuf {
    key_dir.join(STATE_FILE)
}

/// The last head this host's sealer signed, if it ever signed one.
pub(crate) fn read_state(key_dir: &Path) -> Result<Option<SignedHead>, BrokerError> {
    let path = state_path(key_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BrokerError::io(format!("read {}", path.display()), e)),
    };
    let bad = |what: &str| {
        BrokerError::Config(format!(
            "operation-log sealer state {} is unreadable ({what}); it is never rewritten by hand",
            path.display()
        ))
    };
    let state: StateFile = serde_json::from_str(&text).map_err(|_| bad("not its JSON"))?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(&state.head_hash, &mut hash).map_err(|_| bad("hash"))?;
    Ok(Some(SignedHead {
        seq: state.seq,
        hash,
    }))
}

/// Remembers `head` as signed: written to a temporary file, fsynced and
/// renamed over the state file, so a crash leaves the old state or the
/// new one. Never moves the state backwards.
pub(crate) fn write_state(key_dir: &Path, head: SignedHead) -> Result<(), BrokerError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Logs of one process sharing a key directory take turns; between
    // processes a race can only leave an older head, which is stored too.
    static ONE_WRITER: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_WRITER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if read_state(key_dir)?.is_some_and(|s| s.seq >= head.seq) {
        return Ok(());
    }
    let path = state_path(key_dir);
    let tmp = key_dir.join(format!(
        "{STATE_FILE}.{}-{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let text = serde_json::to_string(&StateFile {
        seq: head.seq,
        head_hash: hex::encode(head.hash),
    })
    .map_err(|e| BrokerError::Config(e.to_string()))?;
    let io = |what: &str, p: &Path, e| BrokerError::io(format!("{what} {}", p.display()), e);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", &tmp, e))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename", &path, e))?;
    std::fs::File::open(key_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io("sync", key_dir, e))?;
    Ok(())
}
