//! The reply-key store: the private reply keys of pending queries, kept on
//! disk so that an answer approved later can be opened by another process.
//!
//! A query for a sensitive item answers `pending`; its answer is sealed later
//! to the reply key sent with the query (R11, R12). The store keeps that
//! key, encrypted, next to the profiles file:
//!
//! ```text
//! $KAKEHASHI_HOME/pending/<profile>/      mode 0700
//!     store.key                           mode 0600: 32 random bytes (hex), made on first use
//!     <query_id>.pending                  mode 0600: one pending query (JSON)
//! ```
//!
//! Each `.pending` file holds what the query was (query id, profile, broker,
//! requester, provider, flow, procedure, items, when it was asked and when it
//! expires) in the clear, and the reply private key and the requester's own
//! person code sealed with AES-256-GCM under `store.key`, with every one of
//! those fields as associated data: a file moved to another profile, or
//! edited, does not open. No item value is ever written here.
//!
//! A store whose directory or files are readable or writable by anyone but
//! the owner is refused. A kept key is wiped (overwritten, then removed) when
//! its answer has been opened, rejected or expired.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use kakehashi_interfaces::envelope::ReplyKeyPair;
use kakehashi_interfaces::{FlowId, ItemCode, OrgId, PersonCode, ProcedureCode, QueryId};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::calls::{PendingQuery, Query};
use crate::error::ClientError;

/// Directory under the config directory that holds one store per profile.
pub const STORE_DIR: &str = "pending";
/// File name of a store's encryption key.
pub const KEY_FILE: &str = "store.key";
/// Extension of a kept pending query's file.
pub const ENTRY_EXT: &str = "pending";

const FORMAT_VERSION: u32 = 1;
const AAD_TAG: &[u8] = b"kakehashi/pending-reply-key/v1";
const NONCE_LEN: usize = 12;
const SECRET_LEN: usize = 32;

/// What the store knows about one pending query without opening its key.
/// Holds no personal data: no person code, no item value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingEntry {
    /// The broker's id of the query.
    pub query_id: QueryId,
    /// The profile that asked.
    pub profile: String,
    /// The broker URL the query was sent to.
    pub broker: String,
    /// The org that asked (the profile's org when asked).
    pub requester: OrgId,
    /// The org asked.
    pub provider: OrgId,
    /// The flow the query was made under.
    pub flow_id: FlowId,
    /// The procedure it serves.
    pub procedure: ProcedureCode,
    /// The items asked for.
    pub items: Vec<ItemCode>,
    /// When the pending answer arrived (whole seconds, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub asked_at: OffsetDateTime,
    /// When the broker gives up waiting for approval (whole seconds, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The results file of the batch that asked, if a batch asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
}

impl PendingEntry {
    /// Whether the broker's expiry of the pending query has passed at `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires_at <= now
    }

    /// The associated data the sealed key is bound to: every field, each
    /// length-prefixed so that no two entries share the bytes.
    fn aad(&self) -> Vec<u8> {
        let items: Vec<&str> = self.items.iter().map(ItemCode::as_str).collect();
        let items = items.join(",");
        let fields: [&[u8]; 12] = [
            &FORMAT_VERSION.to_be_bytes(),
            self.query_id.as_str().as_bytes(),
            self.profile.as_bytes(),
            self.broker.as_bytes(),
            self.requester.as_str().as_bytes(),
            self.provider.as_str().as_bytes(),
            self.flow_id.as_str().as_bytes(),
            self.procedure.as_str().as_bytes(),
            items.as_bytes(),
            &self.asked_at.unix_timestamp().to_be_bytes(),
            &self.expires_at.unix_timestamp().to_be_bytes(),
            self.batch.as_deref().unwrap_or_default().as_bytes(),
        ];
        let mut out = AAD_TAG.to_vec();
        for field in fields {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }
}

/// One `.pending` file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    version: u32,
    entry: PendingEntry,
    /// AES-GCM nonce, hex.
    nonce: String,
    /// AES-256-GCM of `secret (32 bytes) || person code`, hex.
    sealed: String,
}

/// A kept pending query with its key opened: what [`crate::Client::resume`]
/// needs to open the answer. Its `Debug` output hides the key and the person.
pub struct KeptQuery {
    /// What was asked.
    pub entry: PendingEntry,
    pub(crate) person: PersonCode,
    pub(crate) keys: ReplyKeyPair,
}

impl KeptQuery {
    /// The query's reply key pair (to open an envelope by other means).
    pub fn keys(&self) -> &ReplyKeyPair {
        &self.keys
    }

    /// The query as asked (including the requester's code of the person).
    pub fn query(&self) -> Query {
        Query {
            flow_id: self.entry.flow_id.clone(),
            procedure: self.entry.procedure.clone(),
            provider: self.entry.provider.clone(),
            person: self.person.clone(),
            items: self.entry.items.clone(),
        }
    }
}

impl std::fmt::Debug for KeptQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptQuery")
            .field("entry", &self.entry)
            .field("person", &"****")
            .field("keys", &self.keys)
            .finish()
    }
}

/// The pieces of a pending query that are kept.
struct Parts<'a> {
    query_id: &'a QueryId,
    query: &'a Query,
    keys: &'a ReplyKeyPair,
    requester: &'a OrgId,
    expires_at: OffsetDateTime,
}

/// What [`PendingStore::scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Readable entries, oldest first.
    pub entries: Vec<PendingEntry>,
    /// Files that could not be read, with the reason.
    pub unreadable: Vec<ClientError>,
}

/// The reply-key store of one profile.
pub struct PendingStore {
    dir: PathBuf,
    profile: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for PendingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingStore")
            .field("dir", &self.dir)
            .field("profile", &self.profile)
            .field("key", &"****")
            .finish()
    }
}

fn store_err(path: &Path, message: impl Into<String>) -> ClientError {
    ClientError::KeyStore {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

impl PendingStore {
    /// The store directory of `profile` under the config directory
    /// (the directory of `config.toml`).
    pub fn dir_for(config_dir: &Path, profile: &str) -> PathBuf {
        config_dir.join(STORE_DIR).join(profile)
    }

    /// Opens the store of `profile`, creating the directory (0700) and the
    /// store key (0600) on first use. Refuses a store with wider permissions.
    pub fn open(config_dir: &Path, profile: &str) -> Result<PendingStore, ClientError> {
        crate::config::validate_profile_name(profile)?;
        let dir = Self::dir_for(config_dir, profile);
        create_private_dir(&config_dir.join(STORE_DIR))?;
        create_private_dir(&dir)?;
        check_private(&dir, true)?;
        let key_path = dir.join(KEY_FILE);
        if !key_path.exists() {
            create_key(&dir, &key_path)?;
        }
        let key = read_key(&key_path)?;
        Ok(PendingStore {
            dir,
            profile: profile.to_string(),
            key,
        })
    }

    /// A secret for `purpose`, derived from the store key: the same store
    /// gives the same secret, and nobody without the key can make it.
    pub fn derived_secret(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"kakehashi-client store secret v1\0");
        h.update(purpose.as_bytes());
        h.update([0]);
        h.update(self.key.as_slice());
        Zeroizing::new(h.finalize().into())
    }

    /// Opens the store of `profile` if it exists; `None` when nothing was
    /// ever kept for this profile. Creates nothing.
    pub fn open_existing(
        config_dir: &Path,
        profile: &str,
    ) -> Result<Option<PendingStore>, ClientError> {
        crate::config::validate_profile_name(profile)?;
        let dir = Self::dir_for(config_dir, profile);
        match std::fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_err(&dir, format!("cannot read: {e}"))),
            Ok(_) => {}
        }
        check_private(&dir, true)?;
        let key_path = dir.join(KEY_FILE);
        if !key_path.exists() {
            return Ok(None);
        }
        let key = read_key(&key_path)?;
        Ok(Some(PendingStore {
            dir,
            profile: profile.to_string(),
            key,
        }))
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The profile this store belongs to.
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// The file that keeps the reply key of `query_id`.
    pub fn path_of(&self, query_id: &QueryId) -> PathBuf {
        self.dir.join(format!("{query_id}.{ENTRY_EXT}"))
    }

    /// Keeps the reply key of a pending query, asked at `broker`, by the
    /// batch writing `batch` if a batch asked. Written atomically, mode 0600.
    pub fn save(
        &self,
        pending: &PendingQuery,
        broker: &str,
        batch: Option<&Path>,
    ) -> Result<PendingEntry, ClientError> {
        self.save_parts(
            Parts {
                query_id: &pending.query_id,
                query: pending.query(),
                keys: &pending.keys,
                requester: &pending.requester,
                expires_at: pending.expires_at,
            },
            broker,
            batch,
        )
    }

    fn save_parts(
        &self,
        parts: Parts<'_>,
        broker: &str,
        batch: Option<&Path>,
    ) -> Result<PendingEntry, ClientError> {
        let batch = match batch {
            None => None,
            Some(p) => Some(
                p.to_str()
                    .ok_or_else(|| {
                        store_err(p, "the results file's path is not UTF-8; use another name")
                    })?
                    .to_string(),
            ),
        };
        let whole_seconds = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
        let query = parts.query;
        let entry = PendingEntry {
            query_id: parts.query_id.clone(),
            profile: self.profile.clone(),
            broker: broker.to_string(),
            requester: parts.requester.clone(),
            provider: query.provider.clone(),
            flow_id: query.flow_id.clone(),
            procedure: query.procedure.clone(),
            items: query.items.clone(),
            asked_at: whole_seconds(OffsetDateTime::now_utc()),
            expires_at: whole_seconds(parts.expires_at),
            batch,
        };
        let mut plain = Zeroizing::new(Vec::with_capacity(SECRET_LEN + 64));
        plain.extend_from_slice(parts.keys.secret_bytes().as_ref());
        plain.extend_from_slice(query.person.as_str().as_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let path = self.path_of(&entry.query_id);
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_slice(),
                    aad: &entry.aad(),
                },
            )
            .map_err(|_| store_err(&path, "cannot encrypt the reply key"))?;
        let file = EntryFile {
            version: FORMAT_VERSION,
            entry: entry.clone(),
            nonce: hex::encode(nonce),
            sealed: hex::encode(sealed),
        };
        let mut text = serde_json::to_vec_pretty(&file)
            .map_err(|e| store_err(&path, format!("cannot encode: {e}")))?;
        text.push(b'\n');
        write_private_atomically(&self.dir, &path, &text)?;
        Ok(entry)
    }

    /// Every kept pending query (metadata only; nothing is decrypted),
    /// oldest first; files that cannot be read are reported separately.
    pub fn scan(&self) -> Result<Scan, ClientError> {
        let mut scan = Scan::default();
        let listing = std::fs::read_dir(&self.dir)
            .map_err(|e| store_err(&self.dir, format!("cannot list: {e}")))?;
        for item in listing {
            let item = item.map_err(|e| store_err(&self.dir, format!("cannot list: {e}")))?;
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some(ENTRY_EXT) {
                continue;
            }
            match read_entry_file(&path) {
                Ok(file) => scan.entries.push(file.entry),
                Err(e) => scan.unreadable.push(e),
            }
        }
        scan.entries.sort_by(|a, b| {
            (a.asked_at, a.query_id.as_str()).cmp(&(b.asked_at, b.query_id.as_str()))
        });
        Ok(scan)
    }

    /// The kept query `query_id` with its key opened; `None` if no key is
    /// kept for it. Fails if the file was altered, belongs to another
    /// profile, or does not open with this store's key.
    pub fn open_entry(&self, query_id: &QueryId) -> Result<Option<KeptQuery>, ClientError> {
        let path = self.path_of(query_id);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        let file = read_entry_file(&path)?;
        let entry = file.entry;
        if &entry.query_id != query_id || entry.profile != self.profile {
            return Err(store_err(
                &path,
                "names another query or profile than its place in the store; it was moved or altered and is not used",
            ));
        }
        let nonce = hex::decode(&file.nonce)
            .ok()
            .filter(|n| n.len() == NONCE_LEN)
            .ok_or_else(|| store_err(&path, "the nonce is not 12 bytes of hex"))?;
        let sealed =
            hex::decode(&file.sealed).map_err(|_| store_err(&path, "the sealed key is not hex"))?;
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &entry.aad(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| {
                store_err(
                    &path,
                    "does not open with this profile's store key (the file was altered, or store.key was replaced); its answer cannot be opened",
                )
            })?;
        if plain.len() <= SECRET_LEN {
            return Err(store_err(&path, "the sealed key is too short"));
        }
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        secret.copy_from_slice(&plain[..SECRET_LEN]);
        let person = std::str::from_utf8(&plain[SECRET_LEN..])
            .ok()
            .and_then(|p| PersonCode::new(p).ok())
            .ok_or_else(|| store_err(&path, "the sealed person code is not valid"))?;
        Ok(Some(KeptQuery {
            entry,
            person,
            keys: ReplyKeyPair::from_secret_bytes(*secret),
        }))
    }

    /// Wipes the kept key of `query_id`: overwrites the file, then removes
    /// it. `false` if none was kept.
    pub fn wipe(&self, query_id: &QueryId) -> Result<bool, ClientError> {
        wipe_file(&self.path_of(query_id))
    }

    /// Wipes every kept key whose expiry passed at `now` (the broker has
    /// deleted, or is about to delete, those queries). Returns their ids.
    pub fn wipe_expired(&self, now: OffsetDateTime) -> Result<Vec<QueryId>, ClientError> {
        let mut wiped = Vec::new();
        for entry in self.scan()?.entries {
            if entry.is_expired(now) && self.wipe(&entry.query_id)? {
                wiped.push(entry.query_id);
            }
        }
        Ok(wiped)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_ref()))
    }
}

fn create_private_dir(dir: &Path) -> Result<(), ClientError> {
    if dir.exists() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(|e| store_err(dir, format!("cannot create the directory: {e}")))
}

/// Refuses a directory or file that is a symbolic link, or that anyone but
/// its owner may read or write.
fn check_private(path: &Path, is_dir: bool) -> Result<(), ClientError> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| store_err(path, format!("cannot read: {e}")))?;
    let kind_ok = if is_dir {
        meta.file_type().is_dir()
    } else {
        meta.file_type().is_file()
    };
    if !kind_ok {
        return Err(store_err(
            path,
            format!(
                "is not a {} (a symbolic link or something else); refusing to use it",
                if is_dir { "directory" } else { "regular file" }
            ),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let (want, fix) = if is_dir {
                ("0700", format!("chmod 700 {}", path.display()))
            } else {
                ("0600", format!("chmod 600 {}", path.display()))
            };
            return Err(store_err(
                path,
                format!(
                    "has permissions {mode:04o}, wider than {want}: others could read or replace the reply keys of pending queries; refusing to use it — check who had access, then run `{fix}`"
                ),
            ));
        }
    }
    Ok(())
}

fn private_file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

fn temp_name(dir: &Path, stem: &str) -> PathBuf {
    let mut tag = [0u8; 8];
    OsRng.fill_bytes(&mut tag);
    dir.join(format!(".{stem}.tmp-{}", hex::encode(tag)))
}

/// Writes `bytes` to a fresh 0600 temporary file in `dir`, syncs it and
/// renames it to `path`, so that a reader sees the old file or the new one.
fn write_private_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = temp_name(dir, stem);
    let result = (|| {
        let mut file = private_file_options().open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(store_err(path, format!("cannot write: {e}")));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Makes the store key: written to a temporary file, then linked into place
/// so that two processes starting at once end up with one key.
fn create_key(dir: &Path, key_path: &Path) -> Result<(), ClientError> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut());
    let text = Zeroizing::new(format!("{}\n", hex::encode(key.as_ref())));
    let tmp = temp_name(dir, KEY_FILE);
    let result = (|| {
        let mut file = private_file_options().open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        match std::fs::hard_link(&tmp, key_path) {
            Ok(()) => {}
            // Another process made it first; its key is the one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_dir(dir)
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| store_err(key_path, format!("cannot create the store key: {e}")))
}

fn read_key(key_path: &Path) -> Result<Zeroizing<[u8; 32]>, ClientError> {
    check_private(key_path, false)?;
    let text = Zeroizing::new(
        std::fs::read_to_string(key_path)
            .map_err(|e| store_err(key_path, format!("cannot read the store key: {e}")))?,
    );
    let bytes = Zeroizing::new(hex::decode(text.trim()).map_err(|_| {
        store_err(
            key_path,
            "is not a store key (64 hex characters); the kept reply keys cannot be opened",
        )
    })?);
    if bytes.len() != 32 {
        return Err(store_err(
            key_path,
            "is not a store key (64 hex characters); the kept reply keys cannot be opened",
        ));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

fn read_entry_file(path: &Path) -> Result<EntryFile, ClientError> {
    check_private(path, false)?;
    let bytes = std::fs::read(path).map_err(|e| store_err(path, format!("cannot read: {e}")))?;
    let file: EntryFile = serde_json::from_slice(&bytes).map_err(|e| {
        store_err(
            path,
            format!(
                "is not a kept pending query (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    if file.version != FORMAT_VERSION {
        return Err(store_err(
            path,
            format!(
                "has format version {}, this client reads {FORMAT_VERSION}",
                file.version
            ),
        ));
    }
    Ok(file)
}

/// Overwrites a file with zeros and removes it; `false` if it was not there.
fn wipe_file(path: &Path) -> Result<bool, ClientError> {
    let len = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => meta.len(),
        Ok(_) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(store_err(path, format!("cannot read: {e}"))),
    };
    if len > 0 {
        let overwrite = OpenOptions::new().write(true).open(path).and_then(|mut f| {
            f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(0)])?;
            f.sync_all()
        });
        match overwrite {
            Ok(()) => {}
            // Removed meanwhile by another process: already wiped.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(store_err(path, format!("cannot wipe: {e}"))),
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(store_err(path, format!("cannot remove: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pending query as [`crate::Client::query`] would return it.
    struct Pending {
        query_id: QueryId,
        query: Query,
        keys: ReplyKeyPair,
        requester: OrgId,
        expires_at: OffsetDateTime,
    }

    impl Pending {
        fn query(&self) -> &Query {
            &self.query
        }
    }

    fn pending(query_id: &str, expires_in: i64) -> Pending {
        Pending {
            query_id: QueryId::new(query_id).unwrap(),
            query: Query::parse(
                "F-0121",
                "benefit-reduction",
                "city-saitama",
                "U0000000042",
                &["welfare.public_assistance"],
            )
            .unwrap(),
            keys: ReplyKeyPair::generate(),
            requester: OrgId::new("union-saitama").unwrap(),
            expires_at: OffsetDateTime::now_utc() + time::Duration::seconds(expires_in),
        }
    }

    impl PendingStore {
        fn save_test(&self, p: &Pending, broker: &str) -> Result<PendingEntry, ClientError> {
            self.save_parts(
                Parts {
                    query_id: &p.query_id,
                    query: &p.query,
                    keys: &p.keys,
                    requester: &p.requester,
                    expires_at: p.expires_at,
                },
                broker,
                None,
            )
        }
    }

    #[test]
    fn round_trip_keeps_the_key_and_never_writes_it_in_the_clear() {
        let home = tempfile::tempdir().unwrap();
        let store = PendingStore::open(home.path(), "union-saitama").unwrap();
        let p = pending("q_roundtrip", 600);
        let secret = p.keys.secret_bytes();
        let entry = store.save_test(&p, "https://127.0.0.1:1").unwrap();
        assert_eq!(entry.items[0].as_str(), "welfare.public_assistance");

        let bytes = std::fs::read(store.path_of(&p.query_id)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!bytes.windows(32).any(|w| w == secret.as_ref()));
        assert!(!text.contains(&hex::encode(secret.as_ref())));
        assert!(!text.contains("U0000000042"), "the person code is sealed");
        assert!(text.contains("q_roundtrip") && text.contains("city-saitama"));

        // Another store object (another process) opens it.
        let again = PendingStore::open_existing(home.path(), "union-saitama")
            .unwrap()
            .unwrap();
        let kept = again.open_entry(&p.query_id).unwrap().unwrap();
        assert_eq!(kept.keys.public(), p.keys.public());
        assert_eq!(kept.query(), *p.query());
        assert_eq!(kept.entry, entry);
        assert!(!format!("{kept:?}").contains("U0000000042"));
        let scan = again.scan().unwrap();
        assert_eq!(scan.entries, vec![entry]);
        assert!(scan.unreadable.is_empty());
        assert!(again
            .open_entry(&QueryId::new("q_other").unwrap())
            .unwrap()
            .is_none());
    }

    #[cfg(unix)]
    #[test]
    fn files_are_owner_only_and_wider_permissions_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let set = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let home = tempfile::tempdir().unwrap();
        let store = PendingStore::open(home.path(), "p").unwrap();
        let p = pending("q_perm", 600);
        store.save_test(&p, "https://h:1").unwrap();
        let entry_path = store.path_of(&p.query_id);
        assert_eq!(mode(store.dir()), 0o700);
        assert_eq!(mode(&store.dir().join(KEY_FILE)), 0o600);
        assert_eq!(mode(&entry_path), 0o600);

        set(&entry_path, 0o644);
        let err = store.open_entry(&p.query_id).unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        assert_eq!(store.scan().unwrap().unreadable.len(), 1);
        set(&entry_path, 0o600);

        set(&store.dir().join(KEY_FILE), 0o640);
        let err = PendingStore::open(home.path(), "p").unwrap_err();
        assert!(matches!(err, ClientError::KeyStore { .. }));
        assert!(err.to_string().contains("wider than 0600"), "{err}");
        set(&store.dir().join(KEY_FILE), 0o600);

        set(store.dir(), 0o755);
        let err = PendingStore::open_existing(home.path(), "p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("0755") && err.contains("chmod 700"), "{err}");
        set(store.dir(), 0o700);
        assert!(store.open_entry(&p.query_id).unwrap().is_some());
    }

    #[test]
    fn a_wrong_key_or_an_edited_file_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let store = PendingStore::open(home.path(), "a").unwrap();
        let p = pending("q_wrongkey", 600);
        store.save_test(&p, "https://h:1").unwrap();
        let path = store.path_of(&p.query_id);
        let original = std::fs::read_to_string(&path).unwrap();

        // Edited metadata (another provider) no longer opens.
        std::fs::write(&path, original.replace("city-saitama", "city-kawagoe")).unwrap();
        let err = store.open_entry(&p.query_id).unwrap_err().to_string();
        assert!(err.contains("does not open"), "{err}");

        // The same file under another profile's store (another key) does not open.
        std::fs::write(&path, &original).unwrap();
        let other = PendingStore::open(home.path(), "b").unwrap();
        std::fs::copy(&path, other.path_of(&p.query_id)).unwrap();
        let err = other.open_entry(&p.query_id).unwrap_err().to_string();
        assert!(err.contains("another query or profile"), "{err}");

        // A replaced store key does not open it either.
        let key_path = store.dir().join(KEY_FILE);
        std::fs::remove_file(&key_path).unwrap();
        let fresh = PendingStore::open(home.path(), "a").unwrap();
        let err = fresh.open_entry(&p.query_id).unwrap_err().to_string();
        assert!(err.contains("does not open"), "{err}");
    }

    #[test]
    fn wipe_removes_the_file_and_expired_entries_go() {
        let home = tempfile::tempdir().unwrap();
        let store = PendingStore::open(home.path(), "w").unwrap();
        let live = pending("q_live", 600);
        let old = pending("q_old", -5);
        store.save_test(&live, "https://h:1").unwrap();
        store.save_test(&old, "https://h:1").unwrap();
        assert_eq!(store.scan().unwrap().entries.len(), 2);

        let wiped = store.wipe_expired(OffsetDateTime::now_utc()).unwrap();
        assert_eq!(wiped, vec![old.query_id.clone()]);
        assert!(!store.path_of(&old.query_id).exists());

        assert!(store.wipe(&live.query_id).unwrap());
        assert!(!store.path_of(&live.query_id).exists());
        assert!(!store.wipe(&live.query_id).unwrap(), "already gone");
        assert!(store.open_entry(&live.query_id).unwrap().is_none());
        // Only the store key is left; no temporary files.
        let left: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(KEY_FILE)]);
    }

    #[test]
    fn a_missing_store_is_not_created_by_reading() {
        let home = tempfile::tempdir().unwrap();
        assert!(PendingStore::open_existing(home.path(), "none")
            .unwrap()
            .is_none());
        assert!(!home.path().join(STORE_DIR).exists());
        assert!(PendingStore::open(home.path(), "../x").is_err());
    }
}
