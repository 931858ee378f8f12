//! The files of the key directory: reading, creating and naming them.
//! Secrets are read into zeroizing buffers and never printed; files are
//! created with mode 0600 (written in full, then renamed into place).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use kakehashi_interfaces::audit::TrustedKeys;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::BrokerError;

/// The lookup key (HMAC of Individual Numbers): one per database, never rotated.
pub const LOOKUP_FILE: &str = "lookup.key";
/// The permit signing key made at the first start.
pub const FIRST_PERMIT_FILE: &str = "permit-signing.pem";
/// The active checkpoint (sealer) key of the records and the operation log.
pub const SEALER_FILE: &str = "records-sealer.pem";

/// A 32-byte secret that is wiped on drop and never printed.
#[derive(Clone)]
pub(crate) struct Secret(pub(crate) Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl Secret {
    pub(crate) fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Secret(bytes)
    }

    /// The id of a symmetric key: a hash of the key, which reveals nothing of it.
    pub(crate) fn id(&self) -> String {
        key_id_of(self.0.as_ref())
    }
}

/// First 16 hex digits of SHA-256 of `bytes`.
pub(crate) fn key_id_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// The id of a signing key (of its public half).
pub(crate) fn public_id(key: &VerifyingKey) -> String {
    key_id_of(key.as_bytes())
}

pub(crate) fn key_err(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Config(format!("key directory: {what}: {e}"))
}

/// Creates the key directory with mode 0700 when missing.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), BrokerError> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| BrokerError::io(format!("create key directory {}", dir.display()), e))?;
    }
    Ok(())
}

/// Writes a new file (mode 0600) whole or not at all; refuses to overwrite
/// one. The contents go to a temporary name first (`.tmp-…`, which no key
/// listing reads), are flushed, and are then linked under `path` — which
/// fails if `path` exists — and the directory is flushed, so a crash leaves
/// either no file or the whole file, never a truncated key.
pub(crate) fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), BrokerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = dir.join(format!(".tmp-{}", hex::encode(rand::random::<[u8; 8]>())));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(contents).and_then(|_| file.sync_all()))
        .and_then(|_| std::fs::hard_link(&temporary, path));
    // The temporary name goes whatever happened.
    let _ = std::fs::remove_file(&temporary);
    written
        .and_then(|_| std::fs::File::open(dir)?.sync_all())
        .map_err(|e| BrokerError::io(format!("write {}", path.display()), e))
}

pub(crate) fn read_hex_secret(path: &Path) -> Result<Secret, BrokerError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| BrokerError::io(format!("read {}", path.display()), e))?,
    );
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), bytes.as_mut())
        .map_err(|_| key_err(&file_name(path), "not 32 hex-encoded bytes"))?;
    Ok(Secret(bytes))
}

pub(crate) fn load_or_create_hex(path: &Path) -> Result<Secret, BrokerError> {
    if !path.exists() {
        let secret = Secret::random();
        write_secret_file(
            path,
            Zeroizing::new(hex::encode(secret.0.as_ref())).as_bytes(),
        )?;
    }
    read_hex_secret(path)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A new Ed25519 key as PKCS#8 PEM.
pub(crate) fn new_signing_pem() -> Result<(SigningKey, Zeroizing<String>), BrokerError> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| key_err("new signing key", e))?;
    Ok((key, pem))
}

/// Reads an Ed25519 PKCS#8 PEM file.
pub(crate) fn read_signing_key(path: &Path) -> Result<SigningKey, BrokerError> {
    let pem = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| BrokerError::io(format!("read {}", path.display()), e))?,
    );
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| key_err(&file_name(path), e))
}

/// Loads the Ed25519 key at `path`, creating it (and the directory) first
/// when missing.
pub(crate) fn load_or_create_signing_key(path: &Path) -> Result<SigningKey, BrokerError> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    if !path.exists() {
        let (_, pem) = new_signing_pem()?;
        write_secret_file(path, pem.as_bytes())?;
    }
    read_signing_key(path)
}

fn names(dir: &Path) -> Result<Vec<String>, BrokerError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| BrokerError::io(format!("read {}", dir.display()), e))?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Every `kek-*.key` file, in name order (the stamp in the name orders
/// them by creation): (file name, id, key).
pub(crate) fn keks(dir: &Path) -> Result<Vec<(String, String, Secret)>, BrokerError> {
    let mut out = Vec::new();
    for name in names(dir)? {
        if name.starts_with("kek-") && name.ends_with(".key") {
            let secret = read_hex_secret(&dir.join(&name))?;
            out.push((name, secret.id(), secret));
        }
    }
    Ok(out)
}

/// A file name for a new key-encryption key, after every existing one.
pub(crate) fn new_kek_name(dir: &Path) -> Result<String, BrokerError> {
    let existing = keks(dir)?;
    let mut stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    loop {
        let name = format!("kek-{stamp}.key");
        if existing.iter().all(|(n, _, _)| n.as_str() < name.as_str()) {
            return Ok(name);
        }
        stamp += 1;
    }
}

/// One permit signing key file.
pub(crate) struct PermitFile {
    pub(crate) path: PathBuf,
    pub(crate) key: SigningKey,
}

/// Every permit signing key file (`permit-signing.pem`, `permit-<id>.pem`), by id.
pub(crate) fn permit_keys(dir: &Path) -> Result<BTreeMap<String, PermitFile>, BrokerError> {
    let mut out = BTreeMap::new();
    for name in names(dir)? {
        if name.starts_with("permit-") && name.ends_with(".pem") {
            let path = dir.join(&name);
            let key = read_signing_key(&path)?;
            out.insert(public_id(&key.verifying_key()), PermitFile { path, key });
        }
    }
    Ok(out)
}

/// The file name of a rotated-in permit key.
pub(crate) fn permit_file_name(id: &str) -> String {
    format!("permit-{id}.pem")
}

/// The file an older checkpoint key's public half is kept in.
pub(crate) fn retired_sealer_file_name(id: &str) -> String {
    format!("records-sealer-{id}.pub")
}

/// Loads the sealer key (the provision records' checkpoints and the
/// operation log's entries), creating the directory (0700) and the key
/// (0600) on first use. The broker and a host command may both create it at
/// once: the second uses the first's, and a key read while the other is
/// still writing it (one write, then fsync) is read again.
pub fn load_or_create_sealer(dir: &Path) -> Result<SigningKey, BrokerError> {
    let path = dir.join(SEALER_FILE);
    create_private_dir(dir)?;
    if !path.exists() {
        let (_, pem) = new_signing_pem()?;
        match write_secret_file(&path, pem.as_bytes()) {
            Ok(()) => {}
            Err(_) if path.exists() => {}
            Err(e) => return Err(e),
        }
    }
    let mut last = None;
    for _ in 0..5 {
        match read_signing_key(&path) {
            Ok(key) => return Ok(key),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(last.unwrap_or_else(|| key_err(SEALER_FILE, "unreadable")))
}

/// The sealer public keys a verifier trusts: every `records-sealer*.pem`
/// (private, PKCS#8) and `records-sealer*.pub` (hex public key) in the key
/// directory. Keys stored in the database are never trusted: whoever can
/// edit the records could add their own.
pub fn trusted_keys(key_dir: &Path) -> Result<TrustedKeys, BrokerError> {
    let mut keys = TrustedKeys::new();
    let entries = match std::fs::read_dir(key_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
        Err(e) => return Err(BrokerError::io(format!("read {}", key_dir.display()), e)),
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !name.starts_with("records-sealer") {
            continue;
        }
        let path = entry.path();
        let read = || {
            std::fs::read_to_string(&path)
                .map(Zeroizing::new)
                .map_err(|e| BrokerError::io(format!("read {}", path.display()), e))
        };
        if name.ends_with(".pem") {
            let key = SigningKey::from_pkcs8_pem(&read()?).map_err(|e| key_err(&name, e))?;
            keys.add(key.verifying_key());
        } else if name.ends_with(".pub") {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(read()?.trim(), &mut bytes)
                .map_err(|_| key_err(&name, "not 32 hex-encoded bytes"))?;
            keys.add(VerifyingKey::from_bytes(&bytes).map_err(|e| key_err(&name, e))?);
        }
    }
    Ok(keys)
}
