//! TLS for both listeners: the exchange's server config with mandatory
//! client certificates (trust anchors + CRLs, expired CRLs enforced), the
//! console's server-authenticated config (people log in with a password and
//! TOTP instead), the mapping of handshake failures to refusal reasons, and
//! org identity from the peer certificate.

use std::path::Path;
use std::sync::Arc;

use kakehashi_interfaces::OrgId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;
use crate::edge::refusal::Reason;
use crate::error::BrokerError;

/// The org identity a verified client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Org id from the SAN URI `urn:kakehashi:org:<id>`; `None` if absent.
    pub org_id: Option<OrgId>,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
}

/// The verifier of client certificates from `[tls]`: the trust anchors
/// and the CRLs in force. The handshake uses it, and so does the re-check
/// of open connections after the files change.
pub fn client_verifier(tls: &TlsConfig) -> Result<Arc<dyn ClientCertVerifier>, BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for path in &tls.client_ca {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .map_err(|e| BrokerError::Tls(format!("trust anchor {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(BrokerError::Tls(
            "no client trust anchors configured".into(),
        ));
    }
    let mut crls = Vec::new();
    for path in &tls.crls {
        crls.extend(read_crls(path)?);
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        // An out-of-date CRL could hide a revocation: refuse rather than trust it.
        .enforce_revocation_expiration()
        .build()
        .map_err(|e| BrokerError::Tls(format!("client verifier: {e}")))
}

/// Builds the rustls server config from `[tls]`.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = client_verifier(tls)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls))
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&tls.cert)?, read_key(&tls.key)?)
        .map_err(|e| BrokerError::Tls(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The console listener's config: the same server certificate, no client
/// certificate (people authenticate with a password and TOTP), HTTP/1.1
/// and HTTP/2.
pub fn console_server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls))
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(read_certs(&tls.cert)?, read_key(&tls.key)?)
        .map_err(|e| BrokerError::Tls(format!("server certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];
static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn versions(tls: &TlsConfig) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls.allow_tls12 {
        &TLS13_AND_12
    } else {
        &TLS13_ONLY
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| BrokerError::Tls(format!("{}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| BrokerError::Tls(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, BrokerError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| BrokerError::Tls(format!("{}: no usable private key ({e})", path.display())))
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, BrokerError> {
    let bytes =
        std::fs::read(path).map_err(|e| BrokerError::io(format!("CRL {}", path.display()), e))?;
    if bytes.starts_with(b"-----BEGIN") {
        let crls: Result<Vec<_>, _> =
            CertificateRevocationListDer::pem_slice_iter(&bytes).collect();
        crls.map_err(|e| BrokerError::Tls(format!("CRL {}: {e}", path.display())))
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// Modification times of every TLS file, to notice a new CRL or certificate.
pub fn file_stamps(tls: &TlsConfig) -> Vec<Option<std::time::SystemTime>> {
    std::iter::once(&tls.cert)
        .chain(std::iter::once(&tls.key))
        .chain(&tls.client_ca)
        .chain(&tls.crls)
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Extracts the org identity from the leaf certificate the client presented.
pub fn peer_identity(leaf: &CertificateDer<'_>) -> PeerIdentity {
    let fingerprint = hex::encode(Sha256::digest(leaf.as_ref()));
    let org_id = kakehashi_certs::org_id_from_der(leaf.as_ref())
        .ok()
        .flatten()
        .and_then(|id| OrgId::new(id).ok());
    PeerIdentity {
        org_id,
        fingerprint,
    }
}

/// Why a TLS handshake was refused, as a stable metric label.
pub fn handshake_refusal_reason(err: &std::io::Error) -> Reason {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                Reason::HandshakeAborted
            }
            _ => Reason::HandshakeFailed,
        };
    };
    certificate_refusal_reason(tls)
}

/// Why a client certificate was refused, as a stable label: at the
/// handshake, or when an open connection is checked again.
pub fn certificate_refusal_reason(tls: &rustls::Error) -> Reason {
    match tls {
        rustls::Error::NoCertificatesPresented => Reason::NoClientCertificate,
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                Reason::CertificateExpired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Reason::CertificateNotYetValid
            }
            CertificateError::Revoked => Reason::CertificateRevoked,
            // A same-named CA with another key shows up as a bad signature: both
            // mean "not issued by a trust anchor".
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Reason::UnknownCa,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Reason::CertificateWrongPurpose
            }
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => Reason::CrlExpired,
            CertificateError::UnknownRevocationStatus => Reason::RevocationUnknown,
            _ => Reason::CertificateInvalid,
        },
        rustls::Error::PeerIncompatible(_) => Reason::TlsIncompatible,
        _ => Reason::HandshakeFailed,
    }
}
