//! The sealer key as a running process holds it: read at start, and read
//! again when `records-sealer.pem` changes on disk (`kakehashi-broker keys
//! rotate-sealer`, or a rotated key directory copied in), so a rotation
//! takes effect at the next checkpoint without a restart. The provision
//! records and the operation log each hold one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use ed25519_dalek::SigningKey;
use kakehashi_interfaces::audit::TrustedKeys;

use super::files::{load_or_create_sealer, trusted_keys, SEALER_FILE};
use crate::error::BrokerError;

/// The sealer key and the keys a verifier trusts with it: every sealer key
/// of the key directory (the current one and the earlier ones kept as
/// `records-sealer-<id>.pub`).
pub struct SealerKeys {
    /// Signs checkpoints (and operation-log entries).
    pub key: SigningKey,
    /// Its id.
    pub key_id: String,
    /// Every key whose checkpoints are valid, the current one included.
    pub trusted: TrustedKeys,
}

impl SealerKeys {
    /// Reads (or on first use creates) the sealer key in `dir`, and the
    /// keys trusted beside it.
    pub fn load(dir: &Path) -> Result<SealerKeys, BrokerError> {
        let key = load_or_create_sealer(dir)?;
        let mut trusted = trusted_keys(dir)?;
        let key_id = trusted.add(key.verifying_key());
        Ok(SealerKeys {
            key,
            key_id,
            trusted,
        })
    }
}

/// What tells one version of the key file from another: a rotation
/// renames a new file into place, so its inode changes, and a copied-in
/// file changes its time or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: meta.ino(),
        len: meta.len(),
        modified: meta.modified().ok(),
    })
}

/// A process's sealer keys, replaced when the key file changes.
pub struct Sealer {
    dir: PathBuf,
    held: RwLock<(Arc<SealerKeys>, Option<Stamp>)>,
}

impl Sealer {
    /// Reads the keys in `dir` (creating the sealer key on first use).
    pub fn open(dir: &Path) -> Result<Sealer, BrokerError> {
        let keys = SealerKeys::load(dir)?;
        Ok(Sealer {
            held: RwLock::new((Arc::new(keys), stamp(&dir.join(SEALER_FILE)))),
            dir: dir.to_path_buf(),
        })
    }

    /// The keys in force.
    pub fn current(&self) -> Arc<SealerKeys> {
        match self.held.read() {
            Ok(held) => held.0.clone(),
            Err(poisoned) => poisoned.into_inner().0.clone(),
        }
    }

    /// Reads the keys again if the key file changed since they were read;
    /// the new key's id when it is another key. A file that is missing or
    /// unreadable meanwhile leaves the keys in force (and is read again at
    /// the next call).
    pub fn refresh(&self) -> Option<String> {
        let now = stamp(&self.dir.join(SEALER_FILE))?;
        let (before, seen) = match self.held.read() {
            Ok(held) => (held.0.key_id.clone(), held.1),
            Err(_) => return None,
        };
        if seen == Some(now) {
            return None;
        }
        let keys = match SealerKeys::load(&self.dir) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "the sealer key file changed but cannot be read; signing with the key in force");
                return None;
            }
        };
        let changed = (keys.key_id != before).then(|| keys.key_id.clone());
        if let Ok(mut held) = self.held.write() {
            *held = (Arc::new(keys), Some(now));
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::Sealer;

    #[test]
    fn a_key_renamed_into_place_is_used_from_the_next_refresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::open(dir.path()).expect("open");
        let first = sealer.current().key_id.clone();
        assert_eq!(sealer.refresh(), None, "nothing changed");

        // As `keys rotate-sealer` does: the old public key kept, a new key
        // written beside and renamed into place.
        let old = sealer.current().key.verifying_key();
        std::fs::write(
            dir.path().join(format!("records-sealer-{first}.pub")),
            hex::encode(old.as_bytes()),
        )
        .expect("keep the old key");
        let other = tempfile::tempdir().expect("tempdir");
        let new = Sealer::open(other.path()).expect("a second key");
        std::fs::rename(
            other.path().join(super::SEALER_FILE),
            dir.path().join(super::SEALER_FILE),
        )
        .expect("rename into place");

        let second = sealer.refresh().expect("a new key");
        assert_eq!(second, new.current().key_id);
        assert_ne!(second, first);
        let keys = sealer.current();
        assert_eq!(keys.key_id, second);
        assert!(
            keys.trusted.get(&first).is_some(),
            "the old key stays trusted"
        );
        assert!(keys.trusted.get(&second).is_some());
        assert_eq!(sealer.refresh(), None, "read once");
    }
}
