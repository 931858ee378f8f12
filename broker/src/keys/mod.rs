//! The broker's key directory and secrets at rest (docs/keys.md).
//!
//! - key-encryption keys (`kek-<stamp>.key`, 32 random bytes, hex) wrap data
//!   keys; the one the database records as active wraps new data keys;
//! - data keys (AES-256-GCM) live wrapped in the `data_keys` table and encrypt
//!   copies, Individual Numbers and facts; every ciphertext names its data key,
//!   so keys rotate without re-encrypting everything;
//! - a lookup key (`lookup.key`) keys the HMAC used to find Individual Numbers;
//! - permit signing keys (`permit-signing.pem`, `permit-<id>.pem`, Ed25519 PKCS#8);
//! - the checkpoint key (`records-sealer.pem`, [`crate::records`]).
//!
//! The database records the ids of these keys ([`registry`]); a node whose
//! files differ is refused at start. A running broker re-reads the directory
//! and the records every `[keys] reload_interval_secs`, so rotated permit
//! keys, key-encryption keys and data keys reach it without a restart.
//! Files are created with mode 0600 in a 0700 directory and never logged.

pub(crate) mod files;
pub mod registry;
pub mod sealer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use kakehashi_interfaces::ErrorCode;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::KeysConfig;
use crate::error::BrokerError;
use crate::store::{now_rfc3339, timestamp, Pools};

use files::{key_err, Secret};
pub use files::{load_or_create_sealer, trusted_keys, FIRST_PERMIT_FILE, LOOKUP_FILE, SEALER_FILE};
pub use registry::Role;
pub use sealer::{Sealer, SealerKeys};

const CIPHER_MAGIC: &[u8; 2] = b"K1";
const NONCE_LEN: usize = 12;

/// How long after it is made a new data key or permit key is first used:
/// long enough for every node to have re-read the keys twice, so no node
/// meets a ciphertext or permit of a key it has not loaded.
pub fn activation_delay(settings: &KeysConfig) -> Duration {
    Duration::from_secs(settings.reload_interval_secs.max(1) * 2 + 1)
}

/// The data keys a node holds, and the one it encrypts with.
#[derive(Default)]
struct DataKeys {
    keys: HashMap<String, Secret>,
    active: String,
    /// `created_at` of every key held.
    made: HashMap<String, String>,
}

/// The permit keys in force on this node.
struct PermitKeys {
    signer_id: String,
    signer: SigningKey,
    published: Vec<(String, VerifyingKey)>,
}

struct Inner {
    dir: PathBuf,
    settings: KeysConfig,
    lookup: Secret,
    keks: RwLock<HashMap<String, Secret>>,
    data: RwLock<DataKeys>,
    permits: RwLock<Arc<PermitKeys>>,
    pools: Pools,
}

/// All keys of a running broker.
pub struct Keyring {
    inner: Arc<Inner>,
    reloader: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Keyring {
    fn drop(&mut self) {
        if let Some(task) = self.reloader.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("dir", &self.inner.dir)
            .field("permit_key_id", &self.permit_signer().0)
            .finish_non_exhaustive()
    }
}

/// What a key directory holds, as ids (for the start check and `keys status`).
pub fn dir_ids(dir: &Path) -> Result<registry::DirIds, BrokerError> {
    let keks = files::keks(dir)?;
    let sealer = files::read_signing_key(&dir.join(SEALER_FILE))?;
    let trusted = trusted_keys(dir)?;
    Ok(registry::DirIds {
        lookup: files::read_hex_secret(&dir.join(LOOKUP_FILE))?.id(),
        permits: files::permit_keys(dir)?.into_keys().collect(),
        newest_kek: keks.last().map(|(_, id, _)| id.clone()).unwrap_or_default(),
        keks: keks.into_iter().map(|(_, id, _)| id).collect(),
        sealer: files::public_id(&sealer.verifying_key()),
        sealer_trusted: trusted.ids(),
    })
}

impl Keyring {
    /// Loads the key directory (creating keys on first start) and the data
    /// keys, with the default `[keys]` settings.
    pub async fn open(dir: &Path, pools: Pools) -> Result<Keyring, BrokerError> {
        let settings = KeysConfig {
            dir: dir.to_path_buf(),
            ..KeysConfig::default()
        };
        Self::open_with(&settings, pools).await
    }

    /// Loads the key directory of `settings` (creating keys on first
    /// start), checks it against the key ids the database recorded
    /// (recording them on the first start), loads the data keys, and
    /// starts re-reading both every `reload_interval_secs`.
    pub async fn open_with(settings: &KeysConfig, pools: Pools) -> Result<Keyring, BrokerError> {
        let dir = settings.dir.as_path();
        files::create_private_dir(dir)?;
        if files::keks(dir)?.is_empty() {
            files::write_secret_file(
                &dir.join(files::new_kek_name(dir)?),
                Zeroizing::new(hex::encode(Secret::random().0.as_ref())).as_bytes(),
            )?;
        }
        let lookup = files::load_or_create_hex(&dir.join(LOOKUP_FILE))?;
        if files::permit_keys(dir)?.is_empty() {
            files::load_or_create_signing_key(&dir.join(FIRST_PERMIT_FILE))?;
        }
        load_or_create_sealer(dir)?;
        registry::check_and_record(&pools, &dir_ids(dir)?).await?;

        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            settings: settings.clone(),
            lookup,
            keks: RwLock::new(HashMap::new()),
            data: RwLock::new(DataKeys::default()),
            permits: RwLock::new(Arc::new(PermitKeys {
                signer_id: String::new(),
                signer: SigningKey::from_bytes(&[0; 32]),
                published: Vec::new(),
            })),
            pools,
        });
        inner.reload(true).await?;
        let reloader = Some(tokio::spawn(reload_task(Arc::downgrade(&inner))));
        Ok(Keyring { inner, reloader })
    }

    /// Re-reads the key directory and the key records now (also done on a
    /// timer).
    pub async fn reload(&self) -> Result<(), BrokerError> {
        self.inner.reload(false).await
    }

    /// Encrypts `plain` at rest under the active data key. `context` binds the
    /// ciphertext to its row (e.g. provider and person code), so ciphertexts
    /// cannot be swapped between rows unnoticed.
    pub fn encrypt(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, BrokerError> {
        let data = self
            .inner
            .data
            .read()
            .map_err(|_| key_err("data keys", "lock poisoned"))?;
        let key = data
            .keys
            .get(&data.active)
            .ok_or_else(|| key_err("data key", "active key missing"))?;
        let id = data.active.as_bytes();
        let body = seal_raw(key, plain, context)?;
        let mut out = Vec::with_capacity(3 + id.len() + body.len());
        out.extend_from_slice(CIPHER_MAGIC);
        out.push(u8::try_from(id.len()).map_err(|_| key_err("data key", "id too long"))?);
        out.extend_from_slice(id);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts a value written by [`Keyring::encrypt`] with the same context.
    pub fn decrypt(
        &self,
        cipher: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, BrokerError> {
        let corrupt = || key_err("ciphertext", "malformed or not written by this broker");
        if cipher.len() < 3 || &cipher[..2] != CIPHER_MAGIC {
            return Err(corrupt());
        }
        let id_len = usize::from(cipher[2]);
        let id = cipher.get(3..3 + id_len).ok_or_else(corrupt)?;
        let body = cipher.get(3 + id_len..).ok_or_else(corrupt)?;
        let id = std::str::from_utf8(id).map_err(|_| corrupt())?;
        let data = self
            .inner
            .data
            .read()
            .map_err(|_| key_err("data keys", "lock poisoned"))?;
        let key = data
            .keys
            .get(id)
            .ok_or_else(|| key_err("ciphertext", format!("unknown data key {id}")))?;
        open_raw(key, body, context)
    }

    /// Keyed hash for looking up secrets without storing them in clear.
    pub fn lookup_hash(&self, domain: &str, value: &[u8]) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.inner.lookup.0.as_ref())
        else {
            return Vec::new();
        };
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        mac.finalize().into_bytes().to_vec()
    }

    /// The permit signing key in force and its id.
    pub fn permit_signer(&self) -> (String, SigningKey) {
        let permits = self.permits();
        (permits.signer_id.clone(), permits.signer.clone())
    }

    fn permits(&self) -> Arc<PermitKeys> {
        self.inner
            .permits
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The published verifying keys for permits (`GET /v1/permit-keys`):
    /// the key in force, a newly rotated-in key before it signs, and an
    /// older key until every permit it signed has expired.
    pub fn permit_key_set(&self) -> kakehashi_interfaces::PermitKeySet {
        let keys = self
            .permits()
            .published
            .iter()
            .filter_map(|(id, key)| {
                kakehashi_interfaces::KeyId::new(id.clone())
                    .ok()
                    .map(|id| kakehashi_interfaces::PermitPublicKey::new(id, key))
            })
            .collect();
        kakehashi_interfaces::PermitKeySet { keys }
    }

    /// The id of the data key new ciphertexts are written under.
    pub fn data_key_id(&self) -> String {
        self.inner
            .data
            .read()
            .map(|d| d.active.clone())
            .unwrap_or_default()
    }

    /// The directory the keys live in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

async fn reload_task(inner: std::sync::Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) => Duration::from_secs(i.settings.reload_interval_secs.max(1)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.reload(false).await {
            tracing::warn!(error = %e, "re-reading the key directory failed; the keys in use stay");
        }
    }
}

/// Whether `made` (a stored timestamp) lies at least `age` before `now`.
fn older_than(made: &str, now: time::OffsetDateTime, age: Duration) -> bool {
    let age = time::Duration::try_from(age).unwrap_or(time::Duration::MAX);
    now.checked_sub(age)
        .is_some_and(|cutoff| made <= timestamp(cutoff).as_str())
}

impl Inner {
    /// Reads the files and records. At open (`first`) every data key must
    /// unwrap; later a key that does not (its kek file has not reached this
    /// node yet) is skipped with a warning and the keys held stay.
    async fn reload(&self, first: bool) -> Result<(), BrokerError> {
        let dir = &self.dir;
        let rows = registry::rows(&self.pools).await?;
        let now = time::OffsetDateTime::now_utc();
        let now_text = timestamp(now);

        // Key-encryption keys: every file; the active one is the one the
        // database records, when this node has it.
        let mut keks = HashMap::new();
        let mut newest = String::new();
        for (_, id, secret) in files::keks(dir)? {
            newest = id.clone();
            keks.insert(id, secret);
        }
        let active_kek = registry::active(&rows, Role::Kek)
            .map(|r| r.key_id.clone())
            .filter(|id| keks.contains_key(id));

        // Data keys: every stored one this node can unwrap.
        let stored: Vec<(String, String, Vec<u8>, String)> =
            crate::on_pool!(&self.pools, read, |pool| {
                sqlx::query_as(
                    "SELECT id, kek_id, wrapped, created_at FROM data_keys ORDER BY created_at, id",
                )
                .fetch_all(pool)
                .await?
            });
        let held: Vec<String> = self
            .data
            .read()
            .map(|d| d.keys.keys().cloned().collect())
            .unwrap_or_default();
        let mut fresh = Vec::new();
        for (id, kek_id, wrapped, made) in &stored {
            if held.contains(id) {
                continue;
            }
            let unwrapped = keks
                .get(kek_id)
                .ok_or_else(|| {
                    key_err(
                        "data key",
                        format!(
                            "{id} is wrapped by the key-encryption key {kek_id}, which no kek-*.key \
                             file holds; copy the key directory from a running node"
                        ),
                    )
                })
                .and_then(|kek| unwrap_data_key(kek, wrapped, id));
            match unwrapped {
                Ok(secret) => fresh.push((id.clone(), secret, made.clone())),
                Err(e) if first => return Err(e),
                Err(e) => tracing::warn!(error = %e, "a new data key could not be loaded yet"),
            }
        }
        let delay = activation_delay(&self.settings);
        if stored.is_empty() {
            // The first start: a data key usable at once.
            let kek_id = active_kek.clone().unwrap_or(newest.clone());
            let kek = keks
                .get(&kek_id)
                .ok_or_else(|| key_err("kek", "active key missing"))?;
            let (id, secret) = insert_data_key(&self.pools, &kek_id, kek).await?;
            fresh.push((id, secret, now_rfc3339()));
        } else if let (Some(days), Some(kek_id)) = (
            Some(self.settings.data_key_days).filter(|d| *d > 0),
            active_kek.as_ref(),
        ) {
            // On schedule: a new data key when the newest is older than
            // `data_key_days` (one node makes it; a second made by a race is
            // harmless, the newer of the two is used).
            let newest_made = stored.last().map(|s| s.3.as_str()).unwrap_or("");
            if older_than(
                newest_made,
                now,
                Duration::from_secs(u64::from(days) * 86_400),
            ) {
                if let Some(kek) = keks.get(kek_id) {
                    let (id, secret) = insert_data_key(&self.pools, kek_id, kek).await?;
                    tracing::info!(data_key = %id, "made the scheduled new data key");
                    fresh.push((id, secret, now_rfc3339()));
                }
            }
        }
        if let Ok(mut map) = self.keks.write() {
            *map = keks;
        }
        {
            let mut data = self
                .data
                .write()
                .map_err(|_| key_err("data keys", "lock poisoned"))?;
            for (id, secret, made) in fresh {
                data.keys.insert(id.clone(), secret);
                data.made.insert(id, made);
            }
            // The newest key every node has had time to load; on the first
            // start (or when all are young) the newest held.
            let mut by_age: Vec<(&String, &String)> = data.made.iter().collect();
            by_age.sort_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)));
            let settled = by_age
                .iter()
                .rev()
                .find(|(_, made)| older_than(made, now, delay))
                .or(by_age.last())
                .map(|(id, _)| (*id).clone());
            if let Some(id) = settled {
                if id != data.active && !data.active.is_empty() {
                    tracing::info!(data_key = %id, "new data is encrypted under a newer data key");
                }
                data.active = id;
            }
        }

        // Permit keys: sign with the newest recorded key whose time has
        // come and whose file is here; publish every recorded key still in
        // use (a rotated-in key before it signs, an older one until its
        // permits have expired).
        let files = files::permit_keys(dir)?;
        let mut recorded: Vec<&registry::KeyRow> = rows
            .iter()
            .filter(|r| r.is(Role::Permit) && r.in_use())
            .collect();
        recorded.sort_by(|a, b| a.active_from.cmp(&b.active_from));
        let signer_id = recorded
            .iter()
            .rev()
            .filter(|r| {
                r.active_from
                    .as_deref()
                    .is_none_or(|t| t <= now_text.as_str())
            })
            .find(|r| files.contains_key(&r.key_id))
            .map(|r| r.key_id.clone())
            // Any file only before the database records a permit key (the
            // first start); never an unrecorded or retired one after.
            .or_else(|| {
                rows.iter()
                    .all(|r| !r.is(Role::Permit))
                    .then(|| files.keys().next().cloned())
                    .flatten()
            })
            .ok_or_else(|| {
                key_err(
                    "permit key",
                    "no permit-*.pem file here holds a permit key the database records as in use; \
                     copy the key directory from a running node",
                )
            })?;
        if let Some(active) = registry::active(&rows, Role::Permit) {
            if !files.contains_key(&active.key_id) {
                tracing::warn!(
                    key_id = %active.key_id,
                    "the permit key the database records as active is not in this node's key \
                     directory; permits are signed with an older key until it is copied here"
                );
            }
        }
        let mut published: Vec<(String, VerifyingKey)> = files
            .iter()
            .filter(|(id, _)| {
                *id == &signer_id
                    || recorded.iter().any(|r| {
                        &r.key_id == *id
                            && (r.state == "active"
                                || r.retire_after
                                    .as_deref()
                                    .is_none_or(|t| t > now_text.as_str()))
                    })
            })
            .map(|(id, f)| (id.clone(), f.key.verifying_key()))
            .collect();
        // The key in force first.
        published.sort_by_key(|(id, _)| id != &signer_id);
        let signer = files
            .get(&signer_id)
            .map(|f| f.key.clone())
            .ok_or_else(|| key_err("permit key", "signing key missing"))?;
        let changed = self
            .permits
            .read()
            .map(|p| p.signer_id != signer_id)
            .unwrap_or(true);
        if changed && !first {
            tracing::info!(key_id = %signer_id, "permits are signed with a rotated-in key");
        }
        if let Ok(mut permits) = self.permits.write() {
            *permits = Arc::new(PermitKeys {
                signer_id,
                signer,
                published,
            });
        }
        Ok(())
    }
}

/// Makes a data key, stores it wrapped under `kek`, and returns it; only
/// while `kek_id` is the active key-encryption key (its row is taken first,
/// as `keys rotate-kek` takes it), so no data key is left wrapped under a
/// kek that a rotation just replaced.
pub(crate) async fn insert_data_key(
    pools: &Pools,
    kek_id: &str,
    kek: &Secret,
) -> Result<(String, Secret), BrokerError> {
    let secret = Secret::random();
    let id = format!("dk-{}", hex::encode(rand::random::<[u8; 6]>()));
    let wrapped = seal_raw(kek, secret.0.as_ref(), id.as_bytes())?;
    let active = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let active = sqlx::query(
            "UPDATE key_ids SET state = state WHERE role = 'kek' AND key_id = $1 AND state = 'active'",
        )
        .bind(kek_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if active {
            sqlx::query(
                "INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&id)
            .bind(kek_id)
            .bind(&wrapped)
            .bind(now_rfc3339())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        active
    });
    if !active {
        return Err(BrokerError::refused(
            kakehashi_interfaces::ErrorCode::Unavailable,
            format!(
                "the key-encryption key {kek_id} is no longer the active one (rotated); the data \
                 key is made under the new one once this node has its file"
            ),
        ));
    }
    Ok((id, secret))
}

pub(crate) fn unwrap_data_key(
    kek: &Secret,
    wrapped: &[u8],
    id: &str,
) -> Result<Secret, BrokerError> {
    let plain = open_raw(kek, wrapped, id.as_bytes())?;
    let bytes: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| key_err("data key", "wrong length"))?;
    Ok(Secret(Zeroizing::new(bytes)))
}

pub(crate) fn seal_raw(key: &Secret, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, BrokerError> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.0.as_ref()));
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| key_err("encrypt", "AES-GCM failed"))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_raw(key: &Secret, body: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, BrokerError> {
    if body.len() < NONCE_LEN + 16 {
        return Err(key_err("ciphertext", "too short"));
    }
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.0.as_ref()));
    let (nonce, ct) = body.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| {
            BrokerError::refused(
                ErrorCode::Internal,
                "stored data failed its integrity check",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SQLite store and key settings under `dir`: data keys every 30
    /// days, no reload of the keyring's own while a test runs.
    async fn fresh(dir: &std::path::Path) -> (crate::store::SqliteStore, Pools, KeysConfig) {
        let store = crate::store::SqliteStore::open(&dir.join("k.db"))
            .await
            .expect("store");
        let pools = crate::store::Store::pools(&store);
        let settings = KeysConfig {
            dir: dir.join("keys"),
            data_key_days: 30,
            reload_interval_secs: 3_600,
        };
        (store, pools, settings)
    }

    async fn data_keys(pools: &Pools) -> Vec<String> {
        crate::on_pool!(pools, read, |pool| {
            sqlx::query_scalar("SELECT id FROM data_keys ORDER BY created_at, id")
                .fetch_all(pool)
                .await
                .expect("data keys")
        })
    }

    /// Sets when data keys were made: `id` or, with `None`, every one.
    async fn made_days_ago(pools: &Pools, id: Option<&str>, days: i64) {
        let at = timestamp(time::OffsetDateTime::now_utc() - time::Duration::days(days));
        crate::on_pool!(pools, write, |pool| {
            sqlx::query("UPDATE data_keys SET created_at = $1 WHERE $2 IS NULL OR id = $2")
                .bind(&at)
                .bind(id)
                .execute(pool)
                .await
                .expect("backdate");
        })
    }

    /// A data key is made only under the key-encryption key in force: once
    /// a rotation has put another in force, one made under the old is
    /// refused (it would be left wrapped under a kek whose file goes).
    #[tokio::test]
    async fn a_data_key_is_not_made_under_a_kek_no_longer_active() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, pools, settings) = fresh(dir.path()).await;
        Keyring::open_with(&settings, pools.clone())
            .await
            .expect("open");
        let (_, old_id, old) = files::keks(&settings.dir)
            .expect("keks")
            .into_iter()
            .next()
            .expect("one kek");
        insert_data_key(&pools, &old_id, &old)
            .await
            .expect("made under the active kek");
        // A rotation puts another kek in force.
        crate::on_pool!(&pools, write, |pool| {
            sqlx::query("UPDATE key_ids SET state = 'previous' WHERE role = 'kek'")
                .execute(pool)
                .await
                .expect("rotate");
        });
        let before = data_keys(&pools).await;
        let refused = insert_data_key(&pools, &old_id, &old).await;
        assert!(
            matches!(&refused, Err(e) if e.to_string().contains("no longer the active one")),
            "{:?}",
            refused.map(|(id, _)| id)
        );
        assert_eq!(data_keys(&pools).await, before, "nothing stored");
    }

    /// A key file is written whole under its name or not at all, 0600, and
    /// never over another.
    #[test]
    fn a_key_file_is_written_whole_and_never_over_another() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kek-1.key");
        files::write_secret_file(&path, b"first").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(files::write_secret_file(&path, b"second").is_err());
        assert_eq!(std::fs::read(&path).expect("read"), b"first", "overwritten");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["kek-1.key".to_string()],
            "a temporary file was left"
        );
    }

    /// `[keys] data_key_days`: once the newest data key is older than that,
    /// a reload makes a new one; new data is encrypted under it once every
    /// node has had time to load it, and what the old key encrypted still
    /// opens. With 0 the schedule is off.
    #[tokio::test]
    async fn a_new_data_key_is_made_on_schedule_and_old_ciphertexts_still_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_store, pools, settings) = fresh(dir.path()).await;
        let ring = Keyring::open_with(&settings, pools.clone())
            .await
            .expect("open");
        let first = ring.data_key_id();
        let old = ring
            .encrypt(b"income 3,200,000", b"copy|city-a|P1")
            .expect("seal");

        // Young: nothing new.
        ring.reload().await.expect("reload");
        assert_eq!(data_keys(&pools).await, vec![first.clone()]);

        // The newest is 31 days old (a node started then): a reload makes
        // a second one, which does not encrypt yet (other nodes may not
        // hold it).
        made_days_ago(&pools, None, 31).await;
        let ring = Keyring::open_with(&settings, pools.clone())
            .await
            .expect("open");
        ring.reload().await.expect("reload");
        let keys = data_keys(&pools).await;
        assert_eq!(keys.len(), 2, "no scheduled data key: {keys:?}");
        assert_eq!(keys[0], first);
        let second = keys[1].clone();
        assert_eq!(ring.data_key_id(), first);
        // The new one is young: no third.
        ring.reload().await.expect("reload");
        assert_eq!(data_keys(&pools).await.len(), 2);

        // Past the activation delay the new key encrypts; both open.
        made_days_ago(&pools, Some(&second), 1).await;
        let ring = Keyring::open_with(&settings, pools.clone())
            .await
            .expect("open");
        ring.reload().await.expect("reload");
        assert_eq!(data_keys(&pools).await.len(), 2);
        assert_eq!(ring.data_key_id(), second);
        let new = ring
            .encrypt(b"income 3,300,000", b"copy|city-a|P1")
            .expect("seal");
        assert_eq!(
            &ring.decrypt(&old, b"copy|city-a|P1").expect("old opens")[..],
            b"income 3,200,000"
        );
        assert_eq!(
            &ring.decrypt(&new, b"copy|city-a|P1").expect("new opens")[..],
            b"income 3,300,000"
        );

        // With the schedule off, an old newest key stays the newest.
        made_days_ago(&pools, None, 400).await;
        let off = KeysConfig {
            data_key_days: 0,
            ..settings
        };
        let ring = Keyring::open_with(&off, pools.clone()).await.expect("open");
        ring.reload().await.expect("reload");
        assert_eq!(data_keys(&pools).await.len(), 2);
    }

    #[tokio::test]
    async fn at_rest_round_trip_and_context_binding() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("k.db"))
            .await
            .unwrap();
        let pools = crate::store::Store::pools(&store);
        let ring = Keyring::open(&dir.path().join("keys"), pools.clone())
            .await
            .unwrap();
        let c = ring
            .encrypt(b"income 3,200,000", b"copy|city-a|P1")
            .unwrap();
        assert!(!c.windows(7).any(|w| w == b"income "));
        assert_eq!(
            &ring.decrypt(&c, b"copy|city-a|P1").unwrap()[..],
            b"income 3,200,000"
        );
        assert!(ring.decrypt(&c, b"copy|city-a|P2").is_err());
        let mut flipped = c.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(ring.decrypt(&flipped, b"copy|city-a|P1").is_err());

        // A restart finds the same keys and opens old ciphertexts.
        let again = Keyring::open(&dir.path().join("keys"), pools)
            .await
            .unwrap();
        assert_eq!(
            &again.decrypt(&c, b"copy|city-a|P1").unwrap()[..],
            b"income 3,200,000"
        );
        assert_eq!(ring.lookup_hash("n", b"1"), again.lookup_hash("n", b"1"));
        assert_eq!(ring.permit_signer().0, again.permit_signer().0);

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("keys/lookup.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
