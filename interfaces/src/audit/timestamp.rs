//! Trusted time for checkpoints: RFC 3161 time-stamp tokens.
//!
//! When the broker is configured with a Time-Stamp Authority (`[records]
//! tsa_url`), each checkpoint it signs is sent to the TSA and the token it
//! returns is kept with the checkpoint. The token proves that the checkpoint
//! existed at the token's `genTime`, by the TSA's clock and under the TSA's
//! key, which the broker's operators do not hold.
//!
//! The message imprint is SHA-256 over the checkpoint's signing bytes
//! ([`Checkpoint::signing_bytes`]: sequence, head hash, signing time and key
//! id), so a token belongs to exactly one checkpoint: [`checkpoint_digest`].
//!
//! Verification ([`verify_token`]) is offline and takes the TSA certificate
//! the verifier trusts ([`TsaCertificate`]): the token must be a CMS
//! SignedData whose content is a TSTInfo; its message imprint must be
//! SHA-256 of the checkpoint's signing bytes; it must have exactly one
//! signer, identified by the certificate's issuer and serial number or its
//! subject key identifier when the token names one; the signed attributes
//! must state the TSTInfo content type and, as `messageDigest`, SHA-256 of
//! the TSTInfo; and the signature over the signed attributes must verify
//! with the certificate's public key. Supported: ECDSA P-256 with SHA-256
//! and RSA PKCS#1 v1.5 with SHA-256. The certificate must allow time
//! stamping (extended key usage `id-kp-timeStamping`). The certificate's
//! own chain and validity period are the verifier's to judge: it is trusted
//! because the verifier chose it.
//!
//! Nothing here does IO: the broker sends [`request`] to the TSA and reads
//! the answer with [`token_from_response`].

use cms::cert::x509::ext::pkix::ExtendedKeyUsage;
use cms::cert::IssuerAndSerialNumber;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use const_oid::db::{rfc5280, rfc5911, rfc5912};
use const_oid::ObjectIdentifier;
use der::asn1::{Int, OctetString};
use der::{Decode, DecodePem, Encode};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_tsp::{MessageImprint, TimeStampReq, TimeStampResp, TspVersion, TstInfo};

use super::{Checkpoint, Hash};

/// `id-ct-TSTInfo` (RFC 3161 §2.4.2), the content type of a token.
const ID_CT_TST_INFO: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.16.1.4");

/// The HTTP content type of a request (RFC 3161 §3.4).
pub const REQUEST_CONTENT_TYPE: &str = "application/timestamp-query";

/// The HTTP content type of a response (RFC 3161 §3.4).
pub const RESPONSE_CONTENT_TYPE: &str = "application/timestamp-reply";

/// Why a token, a TSA response or a TSA certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    /// The token (or response) is not the DER structure RFC 3161 defines.
    #[error("the time-stamp token is malformed: {0}")]
    Malformed(String),
    /// The TSA answered with a status other than granted.
    #[error("the TSA refused the request (status {0})")]
    NotGranted(String),
    /// The token time-stamps another hash algorithm than SHA-256.
    #[error("the time-stamp token's message imprint is not SHA-256")]
    NotSha256,
    /// The token time-stamps another digest than the checkpoint's.
    #[error("the time-stamp token belongs to another checkpoint (its message imprint is not this checkpoint's digest)")]
    ImprintMismatch,
    /// The response does not carry the nonce of the request.
    #[error("the TSA's response does not carry the request's nonce")]
    NonceMismatch,
    /// The signed attributes do not bind the TSTInfo.
    #[error("the time-stamp token's signed attributes do not match its TSTInfo ({0})")]
    AttributesMismatch(&'static str),
    /// The token names a signer other than the trusted certificate.
    #[error("the time-stamp token is signed by another TSA than the trusted certificate names")]
    OtherSigner,
    /// The signature does not verify with the trusted certificate's key.
    #[error("the time-stamp token's signature does not verify with the trusted TSA certificate")]
    BadSignature,
    /// An algorithm outside ECDSA P-256/SHA-256 and RSA PKCS#1 v1.5/SHA-256.
    #[error("unsupported algorithm in the time-stamp token or TSA certificate: {0}")]
    Unsupported(String),
    /// The TSA certificate is unreadable or not for time stamping.
    #[error("TSA certificate: {0}")]
    Certificate(String),
}

fn malformed(what: &str) -> impl Fn(der::Error) -> TimestampError + '_ {
    move |e| TimestampError::Malformed(format!("{what}: {e}"))
}

/// A token as text (standard base64 of the DER), as JSON carries it.
pub fn encode_token(token: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(token)
}

/// A token from [`encode_token`]'s text; text that is not base64 becomes an
/// empty token, which every check refuses as malformed.
pub fn decode_token(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap_or_default()
}

/// The digest a checkpoint's token time-stamps: SHA-256 of its signing bytes.
pub fn checkpoint_digest(cp: &Checkpoint) -> Hash {
    Sha256::digest(Checkpoint::signing_bytes(
        cp.seq,
        &cp.head_hash,
        &cp.at,
        &cp.key_id,
    ))
    .into()
}

fn sha256_imprint(digest: &Hash) -> Result<MessageImprint, TimestampError> {
    Ok(MessageImprint {
        hash_algorithm: spki::AlgorithmIdentifier {
            oid: rfc5912::ID_SHA_256,
            parameters: Some(der::asn1::Any::null()),
        },
        hashed_message: OctetString::new(digest.to_vec()).map_err(malformed("imprint"))?,
    })
}

/// A DER `TimeStampReq` for `digest` with `nonce` (no policy, no
/// certificate requested: verifiers hold the TSA certificate themselves).
pub fn request(digest: &Hash, nonce: u64) -> Result<Vec<u8>, TimestampError> {
    let req = TimeStampReq {
        version: TspVersion::V1,
        message_imprint: sha256_imprint(digest)?,
        req_policy: None,
        nonce: Some(nonce_int(nonce)?),
        cert_req: false,
        extensions: None,
    };
    req.to_der().map_err(malformed("request"))
}

fn nonce_int(nonce: u64) -> Result<Int, TimestampError> {
    // DER: the shortest two's complement form, positive whatever the top bit.
    let bytes = nonce.to_be_bytes();
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    let mut minimal = Vec::with_capacity(9);
    if bytes[start] & 0x80 != 0 {
        minimal.push(0);
    }
    minimal.extend_from_slice(&bytes[start..]);
    Int::new(&minimal).map_err(malformed("nonce"))
}

/// The DER token of a TSA's DER `TimeStampResp` to [`request`]`(digest,
/// nonce)`: the status must be granted, the token's imprint `digest` and its
/// nonce `nonce`. Its signature is not checked here ([`verify_token`]).
pub fn token_from_response(
    response: &[u8],
    digest: &Hash,
    nonce: u64,
) -> Result<Vec<u8>, TimestampError> {
    let resp = TimeStampResp::from_der(response).map_err(malformed("response"))?;
    use cmpv2::status::PkiStatus;
    if !matches!(
        resp.status.status,
        PkiStatus::Accepted | PkiStatus::GrantedWithMods
    ) {
        return Err(TimestampError::NotGranted(format!(
            "{:?}",
            resp.status.status
        )));
    }
    let token = resp
        .time_stamp_token
        .ok_or_else(|| TimestampError::Malformed("a granted response without a token".into()))?;
    let der = token.to_der().map_err(malformed("token"))?;
    let parsed = Parsed::new(&der)?;
    parsed.check_imprint(digest)?;
    if parsed.tst.nonce.as_ref() != Some(&nonce_int(nonce)?) {
        return Err(TimestampError::NonceMismatch);
    }
    Ok(der)
}

/// What a token states, once its imprint matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// The TSA's time, RFC 3339 UTC (`genTime`).
    pub gen_time: String,
    /// The token's serial number, hex.
    pub serial: String,
    /// The TSA's policy OID.
    pub policy: String,
}

/// A token taken apart.
struct Parsed {
    signed: SignedData,
    tst_der: Vec<u8>,
    tst: TstInfo,
}

impl Parsed {
    fn new(token: &[u8]) -> Result<Parsed, TimestampError> {
        let info = ContentInfo::from_der(token).map_err(malformed("token"))?;
        if info.content_type != rfc5911::ID_SIGNED_DATA {
            return Err(TimestampError::Malformed(
                "the token is not CMS SignedData".into(),
            ));
        }
        let signed: SignedData = info.content.decode_as().map_err(malformed("SignedData"))?;
        if signed.encap_content_info.econtent_type != ID_CT_TST_INFO {
            return Err(TimestampError::Malformed(
                "the token's content is not a TSTInfo".into(),
            ));
        }
        let tst_der = signed
            .encap_content_info
            .econtent
            .as_ref()
            .ok_or_else(|| TimestampError::Malformed("the token has no TSTInfo".into()))?
            .decode_as::<OctetString>()
            .map_err(malformed("TSTInfo"))?
            .into_bytes();
        let tst = TstInfo::from_der(&tst_der).map_err(malformed("TSTInfo"))?;
        Ok(Parsed {
            signed,
            tst_der,
            tst,
        })
    }

    fn check_imprint(&self, digest: &Hash) -> Result<(), TimestampError> {
        let imprint = &self.tst.message_imprint;
        if imprint.hash_algorithm.oid != rfc5912::ID_SHA_256 {
            return Err(TimestampError::NotSha256);
        }
        if imprint.hashed_message.as_bytes() != digest.as_slice() {
            return Err(TimestampError::ImprintMismatch);
        }
        Ok(())
    }

    fn info(&self) -> TokenInfo {
        let at = self.tst.gen_time.to_unix_duration();
        let gen_time = i64::try_from(at.as_nanos())
            .ok()
            .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(n.into()).ok())
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| format!("{}s after the epoch", at.as_secs()));
        TokenInfo {
            gen_time,
            serial: hex::encode(self.tst.serial_number.as_bytes()),
            policy: self.tst.policy.to_string(),
        }
    }
}

/// Checks only that `token` is a TSTInfo token whose imprint is `digest`
/// (no signature check: a verifier without the TSA's certificate still
/// sees a token moved from another checkpoint).
pub fn check_imprint(token: &[u8], digest: &Hash) -> Result<TokenInfo, TimestampError> {
    let parsed = Parsed::new(token)?;
    parsed.check_imprint(digest)?;
    Ok(parsed.info())
}

/// A TSA certificate a verifier trusts.
#[derive(Debug, Clone)]
pub struct TsaCertificate {
    cert: Certificate,
    key: TsaKey,
}

#[derive(Debug, Clone)]
enum TsaKey {
    P256(p256::ecdsa::VerifyingKey),
    Rsa(rsa::pkcs1v15::VerifyingKey<Sha256>),
}

impl TsaCertificate {
    /// Reads a PEM certificate (the first one if several).
    pub fn from_pem(pem: &[u8]) -> Result<TsaCertificate, TimestampError> {
        let cert = Certificate::from_pem(pem)
            .map_err(|e| TimestampError::Certificate(format!("not a PEM certificate: {e}")))?;
        Self::new(cert)
    }

    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<TsaCertificate, TimestampError> {
        let cert = Certificate::from_der(der)
            .map_err(|e| TimestampError::Certificate(format!("not a DER certificate: {e}")))?;
        Self::new(cert)
    }

    fn new(cert: Certificate) -> Result<TsaCertificate, TimestampError> {
        let tbs = &cert.tbs_certificate;
        let time_stamping = tbs
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == rfc5280::ID_CE_EXT_KEY_USAGE)
            .filter_map(|e| ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok())
            .any(|eku| eku.0.contains(&rfc5280::ID_KP_TIME_STAMPING));
        if !time_stamping {
            return Err(TimestampError::Certificate(
                "it does not allow time stamping (extendedKeyUsage timeStamping)".into(),
            ));
        }
        let spki = &tbs.subject_public_key_info;
        let bits = spki.subject_public_key.raw_bytes();
        let key =
            match spki.algorithm.oid {
                rfc5912::ID_EC_PUBLIC_KEY => {
                    let curve = spki
                        .algorithm
                        .parameters
                        .as_ref()
                        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
                    if curve != Some(rfc5912::SECP_256_R_1) {
                        return Err(TimestampError::Unsupported(
                            "an EC key on another curve than P-256".into(),
                        ));
                    }
                    TsaKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(bits).map_err(
                        |_| TimestampError::Certificate("its P-256 public key is invalid".into()),
                    )?)
                }
                rfc5912::RSA_ENCRYPTION => {
                    use rsa::pkcs1::DecodeRsaPublicKey;
                    let key = rsa::RsaPublicKey::from_pkcs1_der(bits).map_err(|_| {
                        TimestampError::Certificate("its RSA public key is invalid".into())
                    })?;
                    TsaKey::Rsa(rsa::pkcs1v15::VerifyingKey::new(key))
                }
                other => {
                    return Err(TimestampError::Unsupported(format!(
                        "public key algorithm {other}"
                    )))
                }
            };
        Ok(TsaCertificate { cert, key })
    }

    /// The certificate's subject, for messages.
    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    /// SHA-256 of the certificate (DER), hex: names it in reports.
    pub fn fingerprint(&self) -> String {
        self.cert
            .to_der()
            .map(|der| hex::encode(Sha256::digest(der)))
            .unwrap_or_default()
    }

    fn is_signer(&self, sid: &SignerIdentifier) -> bool {
        let tbs = &self.cert.tbs_certificate;
        match sid {
            SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer,
                serial_number,
            }) => *issuer == tbs.issuer && *serial_number == tbs.serial_number,
            SignerIdentifier::SubjectKeyIdentifier(ski) => tbs
                .extensions
                .iter()
                .flatten()
                .filter(|e| e.extn_id == rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER)
                .filter_map(|e| OctetString::from_der(e.extn_value.as_bytes()).ok())
                .any(|own| own.as_bytes() == ski.0.as_bytes()),
        }
    }

    fn verify(
        &self,
        algorithm: &ObjectIdentifier,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), TimestampError> {
        use rsa::signature::Verifier;
        match (&self.key, *algorithm) {
            (TsaKey::P256(key), rfc5912::ECDSA_WITH_SHA_256 | rfc5912::ID_EC_PUBLIC_KEY) => {
                let sig = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|_| TimestampError::BadSignature)?;
                key.verify(message, &sig)
                    .map_err(|_| TimestampError::BadSignature)
            }
            (TsaKey::Rsa(key), rfc5912::SHA_256_WITH_RSA_ENCRYPTION | rfc5912::RSA_ENCRYPTION) => {
                let sig = rsa::pkcs1v15::Signature::try_from(signature)
                    .map_err(|_| TimestampError::BadSignature)?;
                key.verify(message, &sig)
                    .map_err(|_| TimestampError::BadSignature)
            }
            (_, other) => Err(TimestampError::Unsupported(format!(
                "signature algorithm {other} with this TSA certificate's key"
            ))),
        }
    }
}

/// Verifies `token` for `digest` against the trusted TSA certificate (see
/// the module documentation for every check); what it states when it holds.
pub fn verify_token(
    token: &[u8],
    digest: &Hash,
    tsa: &TsaCertificate,
) -> Result<TokenInfo, TimestampError> {
    let parsed = Parsed::new(token)?;
    parsed.check_imprint(digest)?;
    let signers = parsed.signed.signer_infos.0.as_slice();
    let [signer] = signers else {
        return Err(TimestampError::Malformed(format!(
            "a token has exactly one signer; this one has {}",
            signers.len()
        )));
    };
    if signer.digest_alg.oid != rfc5912::ID_SHA_256 {
        return Err(TimestampError::Unsupported(format!(
            "digest algorithm {}",
            signer.digest_alg.oid
        )));
    }
    if !tsa.is_signer(&signer.sid) {
        return Err(TimestampError::OtherSigner);
    }
    let attrs = signer
        .signed_attrs
        .as_ref()
        .ok_or(TimestampError::AttributesMismatch("no signed attributes"))?;
    // Each attribute once, with one value (RFC 5652 §11).
    let single = |oid: ObjectIdentifier, what: &'static str| {
        let mut found = attrs.iter().filter(|a| a.oid == oid);
        match (found.next(), found.next()) {
            (Some(a), None) if a.values.len() == 1 => Ok(a.values.get(0).cloned()),
            _ => Err(TimestampError::AttributesMismatch(what)),
        }
    };
    let content_type = single(rfc5911::ID_CONTENT_TYPE, "contentType")?
        .and_then(|v| v.decode_as::<ObjectIdentifier>().ok());
    if content_type != Some(ID_CT_TST_INFO) {
        return Err(TimestampError::AttributesMismatch("contentType"));
    }
    let message_digest = single(rfc5911::ID_MESSAGE_DIGEST, "messageDigest")?
        .and_then(|v| v.decode_as::<OctetString>().ok());
    let tst_digest = Sha256::digest(&parsed.tst_der);
    if message_digest.as_ref().map(OctetString::as_bytes) != Some(tst_digest.as_slice()) {
        return Err(TimestampError::AttributesMismatch("messageDigest"));
    }
    // The signature covers the DER of the attributes as a SET OF (RFC 5652
    // §5.4), which is how the SET type encodes them.
    let signed_bytes = attrs.to_der().map_err(malformed("signed attributes"))?;
    tsa.verify(
        &signer.signature_algorithm.oid,
        &signed_bytes,
        signer.signature.as_bytes(),
    )?;
    Ok(parsed.info())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_states_the_digest_and_nonce() {
        let digest = [7u8; 32];
        for nonce in [0, 1, 0x7f, 0x80, 0x1234, u64::MAX] {
            let der = request(&digest, nonce).unwrap();
            let req = TimeStampReq::from_der(&der).unwrap();
            assert_eq!(req.message_imprint.hashed_message.as_bytes(), &digest);
            assert_eq!(req.message_imprint.hash_algorithm.oid, rfc5912::ID_SHA_256);
            let sent = req.nonce.unwrap();
            // DER: minimal, positive.
            assert!(sent.as_bytes()[0] & 0x80 == 0);
            assert!(
                sent.as_bytes().len() == 1
                    || sent.as_bytes()[0] != 0
                    || sent.as_bytes()[1] & 0x80 != 0
            );
            assert_eq!(sent, nonce_int(nonce).unwrap());
            assert!(!req.cert_req);
        }
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(matches!(
            check_imprint(b"not a token", &[0; 32]),
            Err(TimestampError::Malformed(_))
        ));
        assert!(token_from_response(&[0x30, 0x03, 0x02, 0x01, 0x00], &[0; 32], 1).is_err());
        assert!(TsaCertificate::from_pem(
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"
        )
        .is_err());
    }
}
