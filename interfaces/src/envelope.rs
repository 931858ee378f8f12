//! The sealed envelope (R12): answers are encrypted end to end to a key the
//! requester made for this one query, so the broker, its logs and its
//! database only ever hold ciphertext.
//!
//! Construction: HPKE (RFC 9180) base mode (mode 0) with
//! DHKEM(X25519, HKDF-SHA256) (kem_id 0x0020), HKDF-SHA256 (kdf_id 0x0001)
//! and AES-256-GCM (aead_id 0x0002); one single-shot `Seal` per envelope
//! (sequence number 0).
//!
//! Both the HPKE `info` and the AEAD `aad` are the [`EnvelopeContext`] bytes
//!
//! ```text
//! "kakehashi/envelope/v1" 0x00 query_id 0x00 requester 0x00 provider
//! ```
//!
//! (ASCII; the ids cannot contain 0x00, so the layout is unambiguous). Binding
//! them means an envelope moved to another query, requester or provider does
//! not open. `enc` (32 bytes) and the ciphertext (plaintext length + 16-byte
//! tag) travel as base64url without padding.

use crate::copies::ItemValue;
use crate::ids::{FlowId, ItemCode, QueryId};
use crate::org::OrgId;
use crate::{b64, InvalidInput};
use hpke::kem::Kem as _;
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use rand_core::{CryptoRng, OsRng, RngCore};
use schemars::gen::SchemaGenerator;
use schemars::schema::Schema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// The suite name carried in every envelope.
pub const SUITE: &str = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM";
/// RFC 9180 KEM id of DHKEM(X25519, HKDF-SHA256).
pub const KEM_ID: u16 = 0x0020;
/// RFC 9180 KDF id of HKDF-SHA256.
pub const KDF_ID: u16 = 0x0001;
/// RFC 9180 AEAD id of AES-256-GCM.
pub const AEAD_ID: u16 = 0x0002;
/// The domain tag at the start of the context bytes.
pub const CONTEXT_TAG: &str = "kakehashi/envelope/v1";

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm256;

/// Why sealing or opening failed. Deliberately coarse: a wrong key, a wrong
/// context and a modified ciphertext are indistinguishable to the opener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// `enc` or the ciphertext has the wrong shape.
    #[error("the envelope is malformed")]
    Malformed,
    /// The reply key cannot be used (a low-order X25519 point).
    #[error("the reply key is not a usable X25519 public key")]
    UnusableKey,
    /// Authentication failed: another key, another context, or altered bytes.
    #[error("the envelope does not open with this key and context")]
    OpenFailed,
    /// The plaintext is not a valid answer payload.
    #[error("the envelope's content is not a valid answer")]
    InvalidPayload,
    /// The answer names another query or provider than the context.
    #[error("the answer does not belong to this query")]
    ContextMismatch,
}

/// The requester's X25519 public key for one query: 32 bytes, carried as
/// base64url without padding (43 characters).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReplyPublicKey([u8; 32]);

impl ReplyPublicKey {
    /// Wraps raw key bytes; the all-zero key is refused (it can never yield a
    /// usable shared secret and usually signals an uninitialised buffer).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, InvalidInput> {
        if bytes == [0u8; 32] {
            return Err(InvalidInput::new(
                "reply_key",
                "must not be the all-zero key",
            ));
        }
        Ok(Self(bytes))
    }

    /// Parses the base64url (no padding) form.
    pub fn from_base64url(s: &str) -> Result<Self, InvalidInput> {
        let bytes = b64::decode_array::<32>(s).ok_or_else(|| {
            InvalidInput::new(
                "reply_key",
                "must be 32 bytes as base64url without padding (43 characters)",
            )
        })?;
        Self::from_bytes(bytes)
    }

    /// The base64url (no padding) form.
    pub fn to_base64url(&self) -> String {
        b64::encode(&self.0)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex SHA-256 of the 32 raw bytes: what a permit binds.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0))
    }
}

impl std::fmt::Debug for ReplyPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyPublicKey({})", self.to_base64url())
    }
}

impl TryFrom<String> for ReplyPublicKey {
    type Error = InvalidInput;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::from_base64url(&s)
    }
}

impl From<ReplyPublicKey> for String {
    fn from(k: ReplyPublicKey) -> String {
        k.to_base64url()
    }
}

impl std::str::FromStr for ReplyPublicKey {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64url(s)
    }
}

impl JsonSchema for ReplyPublicKey {
    fn schema_name() -> String {
        "ReplyPublicKey".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        crate::schema::string_schema(
            "X25519 public key (32 bytes) as base64url without padding",
            "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$",
        )
    }
}

/// A requester's key pair for one query. The private half is wiped on drop
/// and never printed.
pub struct ReplyKeyPair {
    secret: Zeroizing<[u8; 32]>,
    public: ReplyPublicKey,
}

impl ReplyKeyPair {
    /// A fresh key pair from the OS random generator.
    pub fn generate() -> Self {
        let mut ikm = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(ikm.as_mut());
        Self::derive(ikm.as_ref())
    }

    /// RFC 9180 `DeriveKeyPair(ikm)` for DHKEM(X25519, HKDF-SHA256).
    /// Deterministic: for tests and test vectors, not for production keys.
    pub fn derive(ikm: &[u8]) -> Self {
        let (sk, _) = Kem::derive_keypair(ikm);
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&sk.to_bytes());
        Self::from_secret_bytes(*secret)
    }

    /// Rebuilds a key pair from its 32 private bytes (X25519 clamping applies).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = Zeroizing::new(bytes);
        // 32 bytes always deserialize; the fallback only keeps this total.
        let public = match <Kem as hpke::Kem>::PrivateKey::from_bytes(secret.as_ref()) {
            Ok(sk) => {
                let mut pk = [0u8; 32];
                pk.copy_from_slice(&Kem::sk_to_pk(&sk).to_bytes());
                pk
            }
            Err(_) => [0u8; 32],
        };
        Self {
            secret,
            public: ReplyPublicKey(public),
        }
    }

    /// The 32 private bytes, for a client that must keep the key while it
    /// waits for a pending answer. Wiped when the returned value is dropped.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.secret.clone()
    }

    /// The public half, sent as `reply_key`.
    pub fn public(&self) -> ReplyPublicKey {
        self.public.clone()
    }
}

impl std::fmt::Debug for ReplyKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyKeyPair")
            .field("public", &self.public)
            .field("secret", &"****")
            .finish()
    }
}

/// What an envelope is bound to. Its [`bytes`](Self::bytes) are both the
/// HPKE `info` and the AEAD `aad`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvelopeContext {
    /// The query the answer belongs to.
    pub query_id: QueryId,
    /// The org that asked (and holds the private key).
    pub requester: OrgId,
    /// The org whose data is inside.
    pub provider: OrgId,
}

impl EnvelopeContext {
    /// `"kakehashi/envelope/v1" 0x00 query_id 0x00 requester 0x00 provider`.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            CONTEXT_TAG.len()
                + 3
                + self.query_id.as_str().len()
                + self.requester.as_str().len()
                + self.provider.as_str().len(),
        );
        out.extend_from_slice(CONTEXT_TAG.as_bytes());
        for part in [
            self.query_id.as_str(),
            self.requester.as_str(),
            self.provider.as_str(),
        ] {
            out.push(0);
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// The one suite this version speaks; any other value is refused on input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub enum EnvelopeSuite {
    /// HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
    #[default]
    #[serde(rename = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM")]
    X25519Sha256Aes256Gcm,
}

/// An HPKE-sealed answer as it travels and is stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "SealedEnvelopeWire")]
pub struct SealedEnvelope {
    /// Always `DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM`.
    pub suite: EnvelopeSuite,
    /// The encapsulated key (32 bytes), base64url without padding.
    pub enc: String,
    /// The AEAD ciphertext including its 16-byte tag, base64url without padding.
    pub ciphertext: String,
}

impl std::fmt::Debug for SealedEnvelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ciphertext is harmless but long; its size is what a reader needs.
        f.debug_struct("SealedEnvelope")
            .field("suite", &self.suite)
            .field("enc", &self.enc)
            .field("ciphertext_chars", &self.ciphertext.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedEnvelopeWire {
    suite: EnvelopeSuite,
    enc: String,
    ciphertext: String,
}

impl TryFrom<SealedEnvelopeWire> for SealedEnvelope {
    type Error = InvalidInput;
    fn try_from(w: SealedEnvelopeWire) -> Result<Self, Self::Error> {
        if b64::decode_array::<32>(&w.enc).is_none() {
            return Err(InvalidInput::new(
                "enc",
                "must be 32 bytes as base64url without padding",
            ));
        }
        let ciphertext_ok = matches!(b64::decode(&w.ciphertext), Some(c) if c.len() >= 16);
        if !ciphertext_ok {
            return Err(InvalidInput::new(
                "ciphertext",
                "must be base64url without padding of at least 16 bytes",
            ));
        }
        Ok(Self {
            suite: w.suite,
            enc: w.enc,
            ciphertext: w.ciphertext,
        })
    }
}

/// The plaintext of an answer envelope, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerPayload {
    /// The query answered; must equal the envelope context's.
    pub query_id: QueryId,
    /// The flow the answer was given under.
    pub flow_id: FlowId,
    /// The org whose data this is; must equal the envelope context's.
    pub provider: OrgId,
    /// The values of the permitted items the provider holds. An item asked for
    /// but absent from the provider's copy is simply not present.
    pub items: BTreeMap<ItemCode, ItemValue>,
}

/// HPKE single-shot seal with a caller-chosen RNG (the RNG supplies ikmE).
pub(crate) fn hpke_seal<R: RngCore + CryptoRng>(
    recipient: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Result<([u8; 32], Vec<u8>), EnvelopeError> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| EnvelopeError::UnusableKey)?;
    let (enc, ct) =
        hpke::single_shot_seal::<Aead, Kdf, Kem, R>(&OpModeS::Base, &pk, info, plaintext, aad, rng)
            .map_err(|e| match e {
                hpke::HpkeError::EncapError => EnvelopeError::UnusableKey,
                _ => EnvelopeError::Malformed,
            })?;
    let mut enc_bytes = [0u8; 32];
    enc_bytes.copy_from_slice(&enc.to_bytes());
    Ok((enc_bytes, ct))
}

/// HPKE single-shot open.
pub(crate) fn hpke_open(
    secret: &[u8; 32],
    enc: &[u8],
    info: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret)
        .map_err(|_| EnvelopeError::OpenFailed)?;
    let enc =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| EnvelopeError::Malformed)?;
    hpke::single_shot_open::<Aead, Kdf, Kem>(&OpModeR::Base, &sk, &enc, info, ciphertext, aad)
        .map_err(|_| EnvelopeError::OpenFailed)
}

/// Seals `plaintext` to `recipient`, bound to `context`.
pub fn seal(
    recipient: &ReplyPublicKey,
    context: &EnvelopeContext,
    plaintext: &[u8],
) -> Result<SealedEnvelope, EnvelopeError> {
    let bound = context.bytes();
    let (enc, ct) = hpke_seal(recipient.as_bytes(), &bound, &bound, plaintext, &mut OsRng)?;
    Ok(SealedEnvelope {
        suite: EnvelopeSuite::X25519Sha256Aes256Gcm,
        enc: b64::encode(&enc),
        ciphertext: b64::encode(&ct),
    })
}

/// Opens an envelope with the requester's key pair and the expected context.
pub fn open(
    keys: &ReplyKeyPair,
    context: &EnvelopeContext,
    envelope: &SealedEnvelope,
) -> Result<Vec<u8>, EnvelopeError> {
    let enc = b64::decode_array::<32>(&envelope.enc).ok_or(EnvelopeError::Malformed)?;
    let ct = b64::decode(&envelope.ciphertext).ok_or(EnvelopeError::Malformed)?;
    let bound = context.bytes();
    hpke_open(&keys.secret, &enc, &bound, &bound, &ct)
}

/// Serialises `payload` as JSON and seals it. Refuses a payload whose query or
/// provider differs from the context, so a mix-up fails at the sender.
pub fn seal_answer(
    recipient: &ReplyPublicKey,
    context: &EnvelopeContext,
    payload: &AnswerPayload,
) -> Result<SealedEnvelope, EnvelopeError> {
    if payload.query_id != context.query_id || payload.provider != context.provider {
        return Err(EnvelopeError::ContextMismatch);
    }
    let mut json = ZeroizingBuf::with_capacity(1024);
    serde_json::to_writer(&mut json, payload).map_err(|_| EnvelopeError::InvalidPayload)?;
    seal(recipient, context, &json.0)
}

/// A write buffer for plaintext that never leaves a copy behind: a `Vec`
/// grown by `write` reallocates and frees the old block unzeroed, where
/// `Zeroizing` cannot reach it. This one moves to a larger block itself and
/// lets the old one be zeroized as it is dropped.
struct ZeroizingBuf(Zeroizing<Vec<u8>>);

impl ZeroizingBuf {
    fn with_capacity(capacity: usize) -> ZeroizingBuf {
        ZeroizingBuf(Zeroizing::new(Vec::with_capacity(capacity)))
    }
}

impl std::io::Write for ZeroizingBuf {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let needed = self.0.len() + bytes.len();
        if needed > self.0.capacity() {
            let mut larger = Zeroizing::new(Vec::with_capacity(needed.max(2 * self.0.capacity())));
            larger.extend_from_slice(&self.0);
            // The old block is zeroized here, as it is dropped.
            self.0 = larger;
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens an answer envelope and checks that it answers this query from this
/// provider.
pub fn open_answer(
    keys: &ReplyKeyPair,
    context: &EnvelopeContext,
    envelope: &SealedEnvelope,
) -> Result<AnswerPayload, EnvelopeError> {
    let plain = Zeroizing::new(open(keys, context, envelope)?);
    let payload: AnswerPayload =
        serde_json::from_slice(&plain).map_err(|_| EnvelopeError::InvalidPayload)?;
    if payload.query_id != context.query_id || payload.provider != context.provider {
        return Err(EnvelopeError::ContextMismatch);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zeroizing_buffer_keeps_every_byte_across_growth() {
        use std::io::Write as _;
        let mut buf = ZeroizingBuf::with_capacity(4);
        let chunks: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; usize::from(i) + 1]).collect();
        for chunk in &chunks {
            buf.write_all(chunk).unwrap();
        }
        assert_eq!(*buf.0, chunks.concat());
        assert!(buf.0.capacity() >= buf.0.len());
    }

    fn hx(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    // RFC 9180 test vectors (CFRG test-vectors.json), as carried in
    // aws-lc `crypto/hpke/hpke_test_vectors.txt`.
    const INFO: &str = "4f6465206f6e2061204772656369616e2055726e";
    const PT: &str = "4265617574792069732074727574682c20747275746820626561757479";

    // Mode 0, kem_id 0x0020, kdf_id 0x0001, aead_id 0x0002 (this suite).
    // That file lists skRm/skEm, not ikmR/ikmE.
    const SK_RM: &str = "497b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320333d";
    const PK_RM: &str = "430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c";
    const ENC: &str = "6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256";
    /// (aad, ciphertext) of sequence numbers 0, 1 and 2.
    const ENCRYPTIONS: [(&str, &str); 3] = [
        (
            "436f756e742d30",
            "e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a",
        ),
        (
            "436f756e742d31",
            "2c43aff25343fdbff864506f0818b9d87df84ea01b1a2144d23b4d40c26bf655fdf197fe40297a8aebeed5cc2d",
        ),
        (
            "436f756e742d32",
            "e0a8f2cf92ff61215edbb8c55dc31fe9e2eb42a5685867bb6854211542099f9e940c4b41c192bc390835b1a5f7",
        ),
    ];

    // RFC 9180 A.1.1: mode 0, kem_id 0x0020, kdf_id 0x0001, aead_id 0x0001.
    // Same KEM and KDF as ours, and it has ikmR/ikmE, so it checks
    // DeriveKeyPair and the "RNG yields ikmE" seal path.
    const A11_IKM_R: &str = "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037";
    const A11_SK_RM: &str = "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8";
    const A11_PK_RM: &str = "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d";
    const A11_IKM_E: &str = "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234";
    const A11_PK_EM: &str = "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431";
    const A11_CT0: &str = "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a";

    /// An RNG that yields fixed bytes, to make HPKE's ephemeral key ikmE.
    struct FixedRng(Vec<u8>);
    impl RngCore for FixedRng {
        fn next_u32(&mut self) -> u32 {
            let mut b = [0u8; 4];
            self.fill_bytes(&mut b);
            u32::from_le_bytes(b)
        }
        fn next_u64(&mut self) -> u64 {
            let mut b = [0u8; 8];
            self.fill_bytes(&mut b);
            u64::from_le_bytes(b)
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            assert!(dest.len() <= self.0.len(), "fixed RNG exhausted");
            let rest = self.0.split_off(dest.len());
            dest.copy_from_slice(&self.0);
            self.0 = rest;
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for FixedRng {}

    #[test]
    fn rfc9180_derive_key_pair() {
        let kp = ReplyKeyPair::derive(&hx(A11_IKM_R));
        assert_eq!(hex::encode(*kp.secret_bytes()), A11_SK_RM);
        assert_eq!(hex::encode(kp.public().as_bytes()), A11_PK_RM);
        let eph = ReplyKeyPair::derive(&hx(A11_IKM_E));
        assert_eq!(hex::encode(eph.public().as_bytes()), A11_PK_EM);
        // This suite's recipient key: skRm gives pkRm.
        let kp = ReplyKeyPair::from_secret_bytes(hx(SK_RM).try_into().unwrap());
        assert_eq!(hex::encode(kp.public().as_bytes()), PK_RM);
    }

    #[test]
    fn rfc9180_open_vector_encryptions() {
        let kp = ReplyKeyPair::from_secret_bytes(hx(SK_RM).try_into().unwrap());
        // Sequence 0 is a single-shot open, the path `open` uses.
        let (aad, ct) = ENCRYPTIONS[0];
        let pt = hpke_open(&kp.secret_bytes(), &hx(ENC), &hx(INFO), &hx(aad), &hx(ct)).unwrap();
        assert_eq!(hex::encode(pt), PT);
        // Later sequence numbers need the receiver context, which `open` never
        // uses, but they check this suite's key schedule and nonces end to end.
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(&kp.secret_bytes()[..]).unwrap();
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&hx(ENC)).unwrap();
        let mut ctx =
            hpke::setup_receiver::<Aead, Kdf, Kem>(&OpModeR::Base, &sk, &enc, &hx(INFO)).unwrap();
        for (aad, ct) in ENCRYPTIONS {
            assert_eq!(hex::encode(ctx.open(&hx(ct), &hx(aad)).unwrap()), PT);
        }
        // Wrong aad or info fails.
        assert!(hpke_open(
            &kp.secret_bytes(),
            &hx(ENC),
            &hx(INFO),
            &hx(ENCRYPTIONS[1].0),
            &hx(ct)
        )
        .is_err());
        assert!(hpke_open(&kp.secret_bytes(), &hx(ENC), b"", &hx(aad), &hx(ct)).is_err());
    }

    #[test]
    fn rfc9180_seal_with_ikm_e_reproduces_vector() {
        // A.1.1 end to end through the same seal path (generic over the AEAD).
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&hx(A11_PK_RM)).unwrap();
        let mut rng = FixedRng(hx(A11_IKM_E));
        let (enc, ct) = hpke::single_shot_seal::<hpke::aead::AesGcm128, Kdf, Kem, _>(
            &OpModeS::Base,
            &pk,
            &hx(INFO),
            &hx(PT),
            &hx(ENCRYPTIONS[0].0),
            &mut rng,
        )
        .unwrap();
        assert_eq!(hex::encode(enc.to_bytes()), A11_PK_EM);
        assert_eq!(hex::encode(ct), A11_CT0);
        // Our suite: enc is pk(DeriveKeyPair(ikmE)) and the result opens.
        let recipient: [u8; 32] = hx(PK_RM).try_into().unwrap();
        let mut rng = FixedRng(hx(A11_IKM_E));
        let (enc, ct) = hpke_seal(
            &recipient,
            &hx(INFO),
            &hx(ENCRYPTIONS[0].0),
            &hx(PT),
            &mut rng,
        )
        .unwrap();
        assert_eq!(hex::encode(enc), A11_PK_EM);
        let sk: [u8; 32] = hx(SK_RM).try_into().unwrap();
        assert_eq!(
            hex::encode(hpke_open(&sk, &enc, &hx(INFO), &hx(ENCRYPTIONS[0].0), &ct).unwrap()),
            PT
        );
    }

    fn context() -> EnvelopeContext {
        EnvelopeContext {
            query_id: QueryId::new("q_test").unwrap(),
            requester: OrgId::new("city-a").unwrap(),
            provider: OrgId::new("agency-b").unwrap(),
        }
    }

    #[test]
    fn context_bytes_layout() {
        assert_eq!(
            context().bytes(),
            b"kakehashi/envelope/v1\0q_test\0city-a\0agency-b".to_vec()
        );
    }

    #[test]
    fn round_trip_and_refusals() {
        let kp = ReplyKeyPair::generate();
        let ctx = context();
        let env = seal(&kp.public(), &ctx, b"hello").unwrap();
        assert_eq!(open(&kp, &ctx, &env).unwrap(), b"hello");

        let other = ReplyKeyPair::generate();
        assert_eq!(open(&other, &ctx, &env), Err(EnvelopeError::OpenFailed));

        let mut c = ctx.clone();
        c.query_id = QueryId::new("q_other").unwrap();
        assert_eq!(open(&kp, &c, &env), Err(EnvelopeError::OpenFailed));
        let mut c = ctx.clone();
        c.requester = OrgId::new("city-x").unwrap();
        assert_eq!(open(&kp, &c, &env), Err(EnvelopeError::OpenFailed));
        let mut c = ctx.clone();
        c.provider = OrgId::new("agency-x").unwrap();
        assert_eq!(open(&kp, &c, &env), Err(EnvelopeError::OpenFailed));

        let mut ct = b64::decode(&env.ciphertext).unwrap();
        for i in [0, ct.len() / 2, ct.len() - 1] {
            ct[i] ^= 0x01;
            let bad = SealedEnvelope {
                ciphertext: b64::encode(&ct),
                ..env.clone()
            };
            assert_eq!(open(&kp, &ctx, &bad), Err(EnvelopeError::OpenFailed));
            ct[i] ^= 0x01;
        }
        let mut enc = b64::decode(&env.enc).unwrap();
        enc[0] ^= 0x01;
        let bad = SealedEnvelope {
            enc: b64::encode(&enc),
            ..env.clone()
        };
        assert_eq!(open(&kp, &ctx, &bad), Err(EnvelopeError::OpenFailed));
    }

    #[test]
    fn answers() {
        let kp = ReplyKeyPair::generate();
        let ctx = context();
        let mut items = BTreeMap::new();
        items.insert(
            ItemCode::new("local_tax.income").unwrap(),
            ItemValue::from(3_200_000i64),
        );
        items.insert(
            ItemCode::new("name.kana").unwrap(),
            ItemValue::from("ヤマダ タロウ"),
        );
        let payload = AnswerPayload {
            query_id: ctx.query_id.clone(),
            flow_id: FlowId::new("row-1").unwrap(),
            provider: ctx.provider.clone(),
            items,
        };
        let env = seal_answer(&kp.public(), &ctx, &payload).unwrap();
        assert_eq!(open_answer(&kp, &ctx, &env).unwrap(), payload);

        // An answer larger than the buffer's first block arrives whole.
        let mut large = payload.clone();
        large.items.insert(
            ItemCode::new("address.line").unwrap(),
            ItemValue::from("埼玉県さいたま市浦和区高砂三丁目".repeat(40).as_str()),
        );
        let env = seal_answer(&kp.public(), &ctx, &large).unwrap();
        assert!(b64::decode(&env.ciphertext).unwrap().len() > 1024);
        assert_eq!(open_answer(&kp, &ctx, &env).unwrap(), large);

        let mut wrong = payload.clone();
        wrong.provider = OrgId::new("agency-x").unwrap();
        assert_eq!(
            seal_answer(&kp.public(), &ctx, &wrong),
            Err(EnvelopeError::ContextMismatch)
        );

        // A sender that bypasses seal_answer's check is caught by open_answer.
        let json = serde_json::to_vec(&wrong).unwrap();
        let env = seal(&kp.public(), &ctx, &json).unwrap();
        assert_eq!(
            open_answer(&kp, &ctx, &env),
            Err(EnvelopeError::ContextMismatch)
        );
        let env = seal(&kp.public(), &ctx, b"not json").unwrap();
        assert_eq!(
            open_answer(&kp, &ctx, &env),
            Err(EnvelopeError::InvalidPayload)
        );
    }

    #[test]
    fn keys() {
        let kp = ReplyKeyPair::generate();
        let debug = format!("{kp:?}");
        assert!(!debug.contains(&b64::encode(&kp.secret_bytes()[..])));
        assert!(!debug.contains(&hex::encode(*kp.secret_bytes())));
        let again = ReplyKeyPair::from_secret_bytes(*kp.secret_bytes());
        assert_eq!(again.public(), kp.public());
        let s = kp.public().to_base64url();
        assert_eq!(s.len(), 43);
        assert_eq!(s.parse::<ReplyPublicKey>().unwrap(), kp.public());
        assert!(ReplyPublicKey::from_base64url(&format!("{s}=")).is_err());
        assert!(ReplyPublicKey::from_base64url(&s[..42]).is_err());
        assert!(ReplyPublicKey::from_bytes([0u8; 32]).is_err());
        // A low-order point passes the shape check but cannot be sealed to.
        let mut one = [0u8; 32];
        one[0] = 1;
        let low = ReplyPublicKey::from_bytes(one).unwrap();
        assert_eq!(
            seal(&low, &context(), b"x").map(|_| ()),
            Err(EnvelopeError::UnusableKey)
        );
    }

    #[test]
    fn envelope_shape_is_checked() {
        let ok = r#"{"suite":"DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM","enc":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","ciphertext":"AAAAAAAAAAAAAAAAAAAAAA"}"#;
        assert!(serde_json::from_str::<SealedEnvelope>(ok).is_ok());
        for bad in [
            ok.replace("AES-256-GCM", "AES-128-GCM"),
            ok.replace("\"enc\":\"A", "\"enc\":\""),
            ok.replace(
                "\"ciphertext\":\"AAAAAAAAAAAAAAAAAAAAAA\"",
                "\"ciphertext\":\"AAAA\"",
            ),
            ok.replace('}', ",\"x\":1}"),
        ] {
            assert!(
                serde_json::from_str::<SealedEnvelope>(&bad).is_err(),
                "{bad}"
            );
        }
    }
}
