//! The rustls client configuration of a profile: trust anchors, client
//! certificate and key, ALPN. Errors name the file and never its contents.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Profile;
use crate::error::ClientError;

fn read_file(what: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "No such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        ClientError::config(format!(
            "cannot read {what} file {}: {reason}",
            path.display()
        ))
    })
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ClientError::config(format!(
                "{what} file {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ClientError::config(format!(
            "{what} file {} holds no certificate (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    let pem = read_file("key", path)?;
    // The pem error names the section, never the key bytes.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ClientError::config(format!(
            "key file {} holds no usable private key: {e}",
            path.display()
        ))
    })
}

/// Builds the rustls config for a profile: TLS 1.3 and 1.2 (the broker
/// decides), ALPN h2 then http/1.1.
pub(crate) fn client_config(profile: &Profile) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs("CA", &profile.ca)? {
        roots.add(cert).map_err(|e| {
            ClientError::config(format!(
                "CA file {} holds an unusable certificate: {e}",
                profile.ca.display()
            ))
        })?;
    }
    let chain = read_certs("certificate", &profile.cert)?;
    let key = read_key(&profile.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::config(format!("TLS setup: {e}")))?
        .with_root_certificates(roots);
    let mut config = builder.with_client_auth_cert(chain, key).map_err(|e| {
        ClientError::config(format!(
            "certificate {} and key {} cannot be used together: {e}",
            profile.cert.display(),
            profile.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Explains a rustls error in the words of someone running the client.
pub(crate) fn explain(err: &rustls::Error) -> String {
    match err {
        rustls::Error::AlertReceived(alert) => explain_alert(&format!("{alert:?}")),
        rustls::Error::InvalidCertificate(e) => {
            format!("the broker's server certificate is not trusted: {e:?} (check the profile's CA file and the broker URL's host name)")
        }
        other => other.to_string(),
    }
}

/// Explains a TLS alert the broker sent, by its rustls name (e.g. `UnknownCA`).
pub(crate) fn explain_alert(name: &str) -> String {
    let what = match name {
        "UnknownCA" => "it does not trust the CA that issued this client certificate",
        // A CA with the trusted CA's name but another key fails the signature check.
        "DecryptError" => {
            "it could not verify this client certificate's signature (it does not trust the CA that signed it)"
        }
        "CertificateExpired" => "this client certificate has expired or is not yet valid",
        "CertificateRevoked" => "this client certificate has been revoked",
        "CertificateRequired" => "it requires a client certificate",
        "BadCertificate" | "UnsupportedCertificate" | "CertificateUnknown" => {
            "it does not accept this client certificate"
        }
        "AccessDenied" => "access was denied",
        "ProtocolVersion" => "no common TLS version (the broker may require TLS 1.3)",
        "HandshakeFailure" => "no common TLS parameters",
        _ => "it sent a TLS alert",
    };
    format!("the broker refused the connection: {what} (TLS alert {name})")
}

/// Recognises a rustls error that reached us only as text (HTTP/2 keeps
/// just the message of I/O errors).
pub(crate) fn explain_text(message: &str) -> Option<String> {
    const ALERT: &str = "received fatal alert: ";
    if let Some(i) = message.find(ALERT) {
        let name: String = message[i + ALERT.len()..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        return Some(explain_alert(&name));
    }
    if message.contains("invalid peer certificate") {
        return Some(format!(
            "the broker's server certificate is not trusted ({message}); check the profile's CA file and the broker URL's host name"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn alerts_in_text_are_recognised() {
        let m = super::explain_text("connection error: received fatal alert: UnknownCA").unwrap();
        assert!(m.contains("does not trust the CA"), "{m}");
        assert!(super::explain_text("connection reset by peer").is_none());
    }
}
