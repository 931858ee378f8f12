//! The broker's key directory and secrets at rest.
//!
//! - key-encryption keys (`kek-<id>.key`, 32 random bytes, hex) wrap data keys;
//! - data keys (AES-256-GCM) live wrapped in the `data_keys` table and encrypt
//!   copies, Individual Numbers and facts; every ciphertext names its data key,
//!   so keys rotate without re-encrypting everything;
//! - a lookup key (`lookup.key`) keys the HMAC used to find Individual Numbers;
//! - permit signing keys (`permit-<id>.pem`, Ed25519 PKCS#8).
//!
//! Files are created with mode 0600 in a 0700 directory and never logged.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac};
use kakehashi_interfaces::ErrorCode;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::BrokerError;
use crate::store::{now_rfc3339, Pools};

const CIPHER_MAGIC: &[u8; 2] = b"K1";
const NONCE_LEN: usize = 12;

/// A 32-byte secret that is wiped on drop and never printed.
#[derive(Clone)]
struct Secret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl Secret {
    fn random() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Secret(bytes)
    }
}

/// All keys of a running broker.
pub struct Keyring {
    dir: PathBuf,
    kek_id: String,
    keks: HashMap<String, Secret>,
    lookup: Secret,
    permit_key_id: String,
    permit_key: SigningKey,
    data_key_id: String,
    data_keys: RwLock<HashMap<String, Secret>>,
    pools: Pools,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("dir", &self.dir)
            .field("kek_id", &self.kek_id)
            .field("permit_key_id", &self.permit_key_id)
            .field("data_key_id", &self.data_key_id)
            .finish_non_exhaustive()
    }
}

fn key_err(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Config(format!("key directory: {what}: {e}"))
}

fn write_secret_file(path: &Path, contents: &[u8]) -> Result<(), BrokerError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BrokerError::io(format!("create {}", path.display()), e))?;
    file.write_all(contents)
        .and_then(|_| file.sync_all())
        .map_err(|e| BrokerError::io(format!("write {}", path.display()), e))
}

fn read_hex_secret(path: &Path) -> Result<Secret, BrokerError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| BrokerError::io(format!("read {}", path.display()), e))?,
    );
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), bytes.as_mut())
        .map_err(|_| key_err(&path.display().to_string(), "not 32 hex-encoded bytes"))?;
    Ok(Secret(bytes))
}

fn load_or_create_hex(path: &Path) -> Result<Secret, BrokerError> {
    if !path.exists() {
        let secret = Secret::random();
        write_secret_file(path, hex::encode(secret.0.as_ref()).as_bytes())?;
    }
    read_hex_secret(path)
}

fn key_id_of(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

impl Keyring {
    /// Loads the key directory (creating keys on first start) and the active data key.
    pub async fn open(dir: &Path, pools: Pools) -> Result<Keyring, BrokerError> {
        create_private_dir(dir)?;

        // Key-encryption keys: every kek-*.key file; the newest (by name order of
        // creation stamp) is active. The first start creates one.
        let mut keks = HashMap::new();
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| BrokerError::io(format!("read {}", dir.display()), e))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with("kek-") && name.ends_with(".key"))
            .collect();
        names.sort();
        if names.is_empty() {
            let name = format!(
                "kek-{}.key",
                time::OffsetDateTime::now_utc().unix_timestamp()
            );
            write_secret_file(
                &dir.join(&name),
                hex::encode(Secret::random().0.as_ref()).as_bytes(),
            )?;
            names.push(name);
        }
        let mut kek_id = String::new();
        for name in &names {
            let secret = read_hex_secret(&dir.join(name))?;
            kek_id = key_id_of(secret.0.as_ref());
            keks.insert(kek_id.clone(), secret);
        }

        let lookup = load_or_create_hex(&dir.join("lookup.key"))?;

        let permit_path = dir.join("permit-signing.pem");
        if !permit_path.exists() {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .map_err(|e| key_err("permit key", e))?;
            write_secret_file(&permit_path, pem.as_bytes())?;
        }
        let pem = Zeroizing::new(
            std::fs::read_to_string(&permit_path)
                .map_err(|e| BrokerError::io(format!("read {}", permit_path.display()), e))?,
        );
        let permit_key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| key_err("permit key", e))?;
        let permit_key_id = key_id_of(permit_key.verifying_key().as_bytes());

        let mut ring = Keyring {
            dir: dir.to_path_buf(),
            kek_id,
            keks,
            lookup,
            permit_key_id,
            permit_key,
            data_key_id: String::new(),
            data_keys: RwLock::new(HashMap::new()),
            pools,
        };
        ring.load_data_keys().await?;
        Ok(ring)
    }

    async fn load_data_keys(&mut self) -> Result<(), BrokerError> {
        let rows: Vec<(String, String, Vec<u8>)> = crate::on_pool!(&self.pools, read, |pool| {
            sqlx::query_as("SELECT id, kek_id, wrapped FROM data_keys ORDER BY created_at, id")
                .fetch_all(pool)
                .await?
        });
        let mut keys = HashMap::new();
        let mut newest = None;
        for (id, kek_id, wrapped) in rows {
            let kek = self.keks.get(&kek_id).ok_or_else(|| {
                key_err(
                    "data key",
                    format!("wrapped by unknown key-encryption key {kek_id}"),
                )
            })?;
            let plain = open_raw(kek, &wrapped, id.as_bytes())?;
            let bytes: [u8; 32] = plain
                .as_slice()
                .try_into()
                .map_err(|_| key_err("data key", "wrong length"))?;
            keys.insert(id.clone(), Secret(Zeroizing::new(bytes)));
            newest = Some(id);
        }
        let id = match newest {
            Some(id) => id,
            None => {
                let secret = Secret::random();
                let id = format!("dk-{}", hex::encode(rand::random::<[u8; 6]>()));
                let kek = self
                    .keks
                    .get(&self.kek_id)
                    .ok_or_else(|| key_err("kek", "active key missing"))?;
                let wrapped = seal_raw(kek, secret.0.as_ref(), id.as_bytes())?;
                crate::on_pool!(&self.pools, write, |pool| {
                    sqlx::query("INSERT INTO data_keys (id, kek_id, wrapped, created_at) VALUES ($1, $2, $3, $4)")
                        .bind(&id)
                        .bind(&self.kek_id)
                        .bind(&wrapped)
                        .bind(now_rfc3339())
                        .execute(pool)
                        .await
                        .map(|_| ())?
                });
                keys.insert(id.clone(), secret);
                id
            }
        };
        self.data_key_id = id;
        if let Ok(mut map) = self.data_keys.write() {
            *map = keys;
        }
        Ok(())
    }

    /// Encrypts `plain` at rest under the active data key. `context` binds the
    /// ciphertext to its row (e.g. provider and person code), so ciphertexts
    /// cannot be swapped between rows unnoticed.
    pub fn encrypt(&self, plain: &[u8], context: &[u8]) -> Result<Vec<u8>, BrokerError> {
        let keys = self
            .data_keys
            .read()
            .map_err(|_| key_err("data keys", "lock poisoned"))?;
        let key = keys
            .get(&self.data_key_id)
            .ok_or_else(|| key_err("data key", "active key missing"))?;
        let id = self.data_key_id.as_bytes();
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
        let keys = self
            .data_keys
            .read()
            .map_err(|_| key_err("data keys", "lock poisoned"))?;
        let key = keys
            .get(id)
            .ok_or_else(|| key_err("ciphertext", format!("unknown data key {id}")))?;
        open_raw(key, body, context)
    }

    /// Keyed hash for looking up secrets without storing them in clear.
    pub fn lookup_hash(&self, domain: &str, value: &[u8]) -> Vec<u8> {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(self.lookup.0.as_ref()) else {
            return Vec::new();
        };
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        mac.finalize().into_bytes().to_vec()
    }

    /// The permit signing key and its id.
    pub fn permit_signer(&self) -> (&str, &SigningKey) {
        (&self.permit_key_id, &self.permit_key)
    }

    /// The published verifying keys for permits (`GET /v1/permit-keys`).
    pub fn permit_key_set(&self) -> kakehashi_interfaces::PermitKeySet {
        let keys = kakehashi_interfaces::KeyId::new(self.permit_key_id.clone())
            .map(|id| {
                vec![kakehashi_interfaces::PermitPublicKey::new(
                    id,
                    &self.permit_key.verifying_key(),
                )]
            })
            .unwrap_or_default();
        kakehashi_interfaces::PermitKeySet { keys }
    }

    /// The directory the keys live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn create_private_dir(dir: &Path) -> Result<(), BrokerError> {
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

fn seal_raw(key: &Secret, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, BrokerError> {
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
