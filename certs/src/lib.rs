#![forbid(unsafe_code)]
//! Kakehashi PKI: a small certificate authority for development and pilot
//! deployments.
//!
//! It issues server certificates for brokers, client certificates for
//! organisations (the org id travels as the SAN URI
//! `urn:kakehashi:org:<id>`), keeps a revocation list beside the CA, and
//! inspects certificates. All keys are ECDSA P-256.
//!
//! Files written by this crate: `ca.crt` / `*.crt` / `ca.crl` with mode 0644,
//! `ca.key` / `*.key` with mode 0600 (set when the file is created, so the key
//! is never readable by others, not even briefly).

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{Duration, UtcOffset};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

pub use time::OffsetDateTime;

/// The URI prefix of the SAN that names an org in its client certificate.
pub const ORG_URI_PREFIX: &str = "urn:kakehashi:org:";

/// File names inside a CA directory.
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const CA_CRL_FILE: &str = "ca.crl";
const REVOKED_FILE: &str = "revoked.json";

/// How long a CA certificate is valid.
const CA_VALIDITY_DAYS: i64 = 3650;
/// How long a CRL written by [`revoke`] / [`write_crl`] is valid.
const CRL_VALIDITY_DAYS: i64 = 7;

/// Errors from the PKI library.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file already exists and overwriting was not allowed.
    #[error("{} already exists", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The directory holds no CA (`ca.crt` or `ca.key` is missing).
    #[error("no CA in {}: {} is missing", dir.display(), missing.display())]
    NoCa {
        /// The CA directory.
        dir: PathBuf,
        /// The missing file.
        missing: PathBuf,
    },
    /// An org id does not follow the org id rules.
    #[error("invalid org id {org_id:?}: {reason}")]
    InvalidOrgId {
        /// The rejected id.
        org_id: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A server name is neither an IP address nor a usable DNS name.
    #[error("invalid server name {0:?}: {1}")]
    InvalidName(String, &'static str),
    /// A serial number is not hexadecimal or too long.
    #[error("invalid serial number {0:?}: expected 1-20 bytes of hex (colons allowed)")]
    InvalidSerial(String),
    /// A validity window or CRL time cannot be used.
    #[error("invalid validity: {0}")]
    InvalidValidity(String),
    /// Input is not a (usable) certificate, key or CRL.
    #[error("{0}")]
    Parse(String),
    /// Certificate or CRL generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// `revoked.json` could not be read or written.
    #[error("{}: {source}", path.display())]
    Json {
        /// The revocation state file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A certificate validity window.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago (tolerates clock skew between hosts) until
    /// `days` days from now.
    pub fn days_from_now(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::minutes(5),
            // Saturating, so a silly `days` gives an error at issue time
            // (year out of range) instead of a panic here.
            not_after: now.saturating_add(Duration::seconds(days.saturating_mul(86_400))),
        }
    }

    /// A window that ended yesterday (began 30 days ago); for tests.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
        }
    }

    /// A window that starts tomorrow and ends in 30 days; for tests.
    pub fn not_yet_valid() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now + Duration::days(1),
            not_after: now + Duration::days(30),
        }
    }

    fn check(&self) -> Result<(), CertError> {
        check_time(self.not_before)?;
        check_time(self.not_after)?;
        if self.not_after <= self.not_before {
            return Err(CertError::InvalidValidity(
                "not_after must be later than not_before".into(),
            ));
        }
        Ok(())
    }
}

/// X.509 times must be expressible as GeneralizedTime; rcgen panics otherwise.
fn check_time(t: OffsetDateTime) -> Result<(), CertError> {
    let year = t.to_offset(UtcOffset::UTC).year();
    if (0..=9999).contains(&year) {
        Ok(())
    } else {
        Err(CertError::InvalidValidity(format!(
            "year {year} is outside 0000-9999"
        )))
    }
}

/// A newly issued certificate and its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The new private key (ECDSA P-256), PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// Serial number, lowercase hex without colons.
    pub serial_hex: String,
    /// Lowercase hex SHA-256 over the DER certificate.
    pub fingerprint_sha256: String,
}

// Hand-written so that debug output never contains the private key.
impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .field("fingerprint_sha256", &self.fingerprint_sha256)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Options for [`Ca::issue_org`].
#[derive(Debug, Clone)]
pub struct OrgCertOptions {
    /// Validity window.
    pub validity: Validity,
    /// Include the clientAuth EKU. `false` gives a serverAuth-only
    /// certificate, which the broker must reject; for tests.
    pub client_auth_eku: bool,
}

impl Default for OrgCertOptions {
    fn default() -> Self {
        OrgCertOptions {
            validity: Validity::days_from_now(365),
            client_auth_eku: true,
        }
    }
}

/// A CA certificate plus its signing key.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    /// rcgen needs its own `Certificate` as issuer; for a loaded CA it is
    /// rebuilt from the stored certificate (same subject, key and key id),
    /// while `cert_pem`/`cert_der` stay the bytes on disk.
    issuer: rcgen::Certificate,
    key: KeyPair,
}

// Hand-written so that debug output never contains the private key.
impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint_sha256", &fingerprint_sha256(&self.cert_der))
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a self-signed CA: P-256 key, 10 years, basicConstraints CA
    /// (path length 0: it signs only end-entity certificates), key usage
    /// keyCertSign and cRLSign.
    pub fn generate(common_name: &str) -> Result<Ca, CertError> {
        if common_name.trim().is_empty() {
            return Err(CertError::InvalidName(
                common_name.to_string(),
                "CA common name must not be empty",
            ));
        }
        let key = KeyPair::generate()?;
        let validity = Validity::days_from_now(CA_VALIDITY_DAYS);
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: cert,
            key,
        })
    }

    /// Loads a CA from its PEM certificate and PEM private key; checks that
    /// the certificate is a CA and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, CertError> {
        let cert_der = first_cert_der(cert_pem)?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CertError::Parse(format!("CA certificate does not parse: {e}")))?;
        if !x509.is_ca() {
            return Err(CertError::Parse(format!(
                "{} is not a CA certificate (no basicConstraints CA:true)",
                x509.subject()
            )));
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CertError::Parse(format!("CA private key does not parse: {e}")))?;
        // A mismatched pair would sign certificates nobody can verify.
        if x509.public_key().raw != key.public_key_der().as_slice() {
            return Err(CertError::Parse(
                "CA private key does not match the CA certificate".into(),
            ));
        }
        let params = CertificateParams::from_ca_cert_der(&cert_der.clone().into())?;
        let issuer = params.self_signed(&key)?;
        let cert_pem = first_cert_block(cert_pem)
            .ok_or_else(|| CertError::Parse("no PEM CERTIFICATE block found".into()))?;
        Ok(Ca {
            cert_pem,
            cert_der,
            issuer,
            key,
        })
    }

    /// Loads `dir/ca.crt` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<Ca, CertError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    CertError::NoCa {
                        dir: dir.to_path_buf(),
                        missing: path,
                    }
                } else {
                    CertError::Io { path, source }
                }
            })
        };
        let cert = read(CA_CERT_FILE)?;
        let key = read(CA_KEY_FILE)?;
        Ca::from_pem(&cert, &key)
    }

    /// Writes `dir/ca.crt` (0644) and `dir/ca.key` (0600), creating `dir`
    /// if needed. Without `overwrite`, refuses if either file exists.
    pub fn save(&self, dir: &Path, overwrite: bool) -> Result<(), CertError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        write_pair(
            &dir.join(CA_CERT_FILE),
            &self.cert_pem,
            &dir.join(CA_KEY_FILE),
            &self.key.serialize_pem(),
            overwrite,
        )
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a server certificate. Each name becomes an IP SAN if it parses
    /// as an IP address, else a DNS SAN; EKU serverAuth; CN = first name.
    pub fn issue_server(
        &self,
        names: &[&str],
        validity: Validity,
    ) -> Result<IssuedCert, CertError> {
        let first = names.first().ok_or_else(|| {
            CertError::InvalidName(String::new(), "at least one server name is required")
        })?;
        let sans = names
            .iter()
            .map(|name| san_for_server_name(name))
            .collect::<Result<Vec<_>, _>>()?;
        self.issue(
            first,
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            validity,
        )
    }

    /// Issues an org client certificate: SAN URI `urn:kakehashi:org:<org_id>`,
    /// CN = org id, EKU clientAuth (or serverAuth only when
    /// `opts.client_auth_eku` is false).
    pub fn issue_org(&self, org_id: &str, opts: &OrgCertOptions) -> Result<IssuedCert, CertError> {
        validate_org_id(org_id)?;
        let uri = format!("{ORG_URI_PREFIX}{org_id}");
        let san = SanType::URI(uri.try_into()?);
        let eku = if opts.client_auth_eku {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        };
        self.issue(org_id, vec![san], vec![eku], opts.validity)
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
        validity: Validity,
    ) -> Result<IssuedCert, CertError> {
        validity.check()?;
        let key = KeyPair::generate()?;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.subject_alt_names = sans;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(serial.clone());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = eku;
        // AKI lets verifiers pick the right CA key, e.g. after CA rotation.
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let cert_der = cert.der().to_vec();
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint_sha256: fingerprint_sha256(&cert_der),
            serial_hex: hex::encode(serial.to_bytes()),
            cert_der,
        })
    }

    /// A CRL signed by this CA listing `revoked_serials_hex`, with
    /// `this_update` one minute ago and `next_update` as given.
    ///
    /// A `next_update` in the past (to make an expired CRL for tests) moves
    /// `this_update` to one day before it, as a CRL must start before it ends.
    pub fn crl_pem(
        &self,
        revoked_serials_hex: &[String],
        next_update: OffsetDateTime,
        crl_number: u64,
    ) -> Result<String, CertError> {
        let this_update = this_update_for(next_update);
        let entries = revoked_serials_hex
            .iter()
            .map(|s| {
                Ok(RevokedEntry {
                    serial_hex: normalize_serial(s)?,
                    revoked_at: this_update,
                })
            })
            .collect::<Result<Vec<_>, CertError>>()?;
        self.crl_from_entries(&entries, this_update, next_update, crl_number)
    }

    fn crl_from_entries(
        &self,
        entries: &[RevokedEntry],
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        crl_number: u64,
    ) -> Result<String, CertError> {
        check_time(this_update)?;
        check_time(next_update)?;
        let revoked_certs = entries
            .iter()
            .map(|e| {
                check_time(e.revoked_at)?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial_bytes(&e.serial_hex)?),
                    // A revocation recorded "in the future" (clock skew) would
                    // look odd to verifiers; clamp to the CRL issue time.
                    revocation_time: e.revoked_at.min(this_update),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CertError>>()?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: self.issuer.params().key_identifier_method.clone(),
        };
        Ok(params.signed_by(&self.issuer, &self.key)?.pem()?)
    }
}

fn this_update_for(next_update: OffsetDateTime) -> OffsetDateTime {
    let now = OffsetDateTime::now_utc() - Duration::minutes(1);
    if next_update > now {
        now
    } else {
        next_update.saturating_sub(Duration::days(1))
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san_for_server_name(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*');
    if !valid {
        return Err(CertError::InvalidName(
            name.to_string(),
            "expected an IP address or a DNS name (a-z, 0-9, '-', '.', '*')",
        ));
    }
    Ok(SanType::DnsName(name.to_ascii_lowercase().try_into()?))
}

/// Checks the org id rules: 3-64 characters of `a-z`, `0-9` and `-`, starting
/// with a letter and not ending with `-` (same rules as
/// `kakehashi_interfaces::OrgId`).
fn validate_org_id(org_id: &str) -> Result<(), CertError> {
    let fail = |reason| {
        Err(CertError::InvalidOrgId {
            org_id: org_id.to_string(),
            reason,
        })
    };
    if !(3..=64).contains(&org_id.len()) {
        return fail("must be 3-64 characters long");
    }
    if !org_id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return fail("only a-z, 0-9 and '-' are allowed");
    }
    if !org_id.starts_with(|c: char| c.is_ascii_lowercase()) {
        return fail("must start with a letter");
    }
    if org_id.ends_with('-') {
        return fail("must not end with '-'");
    }
    Ok(())
}

/// 16 random bytes, high bit clear (a positive INTEGER without padding) and
/// second-highest bit set (no leading zero byte, so the hex is always 32
/// characters and matches what parsers print).
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    let path = Path::new("/dev/urandom");
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err(path))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Lowercases, drops colons and leading zero bytes, so a serial typed from
/// `openssl x509 -serial` output compares equal to ours.
fn normalize_serial(input: &str) -> Result<String, CertError> {
    Ok(hex::encode(serial_bytes(input)?))
}

fn serial_bytes(input: &str) -> Result<Vec<u8>, CertError> {
    let bad = || CertError::InvalidSerial(input.to_string());
    let mut digits: String = input
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if let Some(rest) = digits.strip_prefix("0x") {
        digits = rest.to_string();
    }
    if digits.is_empty() {
        return Err(bad());
    }
    if digits.len() % 2 == 1 {
        digits.insert(0, '0');
    }
    let bytes = hex::decode(&digits).map_err(|_| bad())?;
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    let bytes = bytes[start..].to_vec();
    // RFC 5280 caps serials at 20 octets.
    if bytes.len() > 20 {
        return Err(bad());
    }
    Ok(bytes)
}

/// The first `-----BEGIN CERTIFICATE-----` block of a PEM text, verbatim;
/// drops any chain or key that came along.
fn first_cert_block(pem: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find(BEGIN)?;
    let len = pem[start..].find(END)? + END.len();
    Some(format!("{}\n", &pem[start..start + len]))
}

/// The DER of the first `CERTIFICATE` block in a PEM text.
fn first_cert_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let mut labels = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| CertError::Parse(format!("not a PEM certificate: {e}")))?;
        if block.label == "CERTIFICATE" {
            return Ok(block.contents);
        }
        labels.push(block.label);
    }
    Err(CertError::Parse(if labels.is_empty() {
        "no PEM CERTIFICATE block found".into()
    } else {
        format!(
            "no PEM CERTIFICATE block found (found: {})",
            labels.join(", ")
        )
    }))
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::Parse(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(CertError::Parse(
            "not an X.509 certificate: trailing data after the certificate".into(),
        ));
    }
    Ok(cert)
}

fn org_id_of(cert: &X509Certificate<'_>) -> Result<Option<String>, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(format!("bad subjectAltName extension: {e}")))?;
    let mut found: Option<String> = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            if let Some(id) = uri.strip_prefix(ORG_URI_PREFIX) {
                validate_org_id(id)?;
                // Two org URIs would make the identity ambiguous; never
                // pick one silently.
                if found.as_deref().is_some_and(|f| f != id) {
                    return Err(CertError::Parse(
                        "certificate names more than one org".into(),
                    ));
                }
                found = Some(id.to_string());
            }
        }
    }
    Ok(found)
}

/// The org id from a certificate's `urn:kakehashi:org:` SAN URI, if any.
/// Errors if the id breaks the org id rules or the certificate names two orgs.
pub fn org_id_from_der(der: &[u8]) -> Result<Option<String>, CertError> {
    org_id_of(&parse_cert(der)?)
}

/// Lowercase hex SHA-256 of `der`.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// What [`inspect_pem`] / [`inspect_der`] report about a certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    /// Subject DN, e.g. `CN=city-saitama`.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Org id from a SAN URI with [`ORG_URI_PREFIX`].
    pub org_id: Option<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ip_addresses: Vec<String>,
    /// Serial number, lowercase hex without colons.
    pub serial_hex: String,
    /// Start of validity, RFC 3339 UTC.
    pub not_before: String,
    /// End of validity, RFC 3339 UTC.
    pub not_after: String,
    /// Lowercase hex SHA-256 of the DER certificate.
    pub fingerprint_sha256: String,
    /// Has the clientAuth EKU.
    pub client_auth: bool,
    /// Has the serverAuth EKU.
    pub server_auth: bool,
    /// basicConstraints CA:true.
    pub is_ca: bool,
}

/// Inspects the first certificate in a PEM text.
pub fn inspect_pem(pem: &str) -> Result<CertInfo, CertError> {
    inspect_der(&first_cert_der(pem)?)
}

/// Inspects a DER certificate.
pub fn inspect_der(der: &[u8]) -> Result<CertInfo, CertError> {
    let cert = parse_cert(der)?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(format!("bad subjectAltName extension: {e}")))?;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        match name {
            GeneralName::DNSName(d) => dns_names.push(d.to_string()),
            GeneralName::IPAddress(raw) => ip_addresses.push(ip_to_string(raw)),
            _ => {}
        }
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|e| CertError::Parse(format!("bad extendedKeyUsage extension: {e}")))?;
    let (client_auth, server_auth) = eku
        .map(|e| (e.value.client_auth, e.value.server_auth))
        .unwrap_or((false, false));
    let validity = cert.validity();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        org_id: org_id_of(&cert)?,
        dns_names,
        ip_addresses,
        serial_hex: hex::encode(cert.serial.to_bytes_be()),
        not_before: rfc3339(validity.not_before.to_datetime())?,
        not_after: rfc3339(validity.not_after.to_datetime())?,
        fingerprint_sha256: fingerprint_sha256(der),
        client_auth,
        server_auth,
        is_ca: cert.is_ca(),
    })
}

fn ip_to_string(raw: &[u8]) -> String {
    match raw.len() {
        4 => {
            let mut b = [0u8; 4];
            b.copy_from_slice(raw);
            IpAddr::from(b).to_string()
        }
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(raw);
            IpAddr::from(b).to_string()
        }
        _ => format!("<invalid: {}>", hex::encode(raw)),
    }
}

fn rfc3339(t: OffsetDateTime) -> Result<String, CertError> {
    t.to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|e| CertError::Parse(format!("time not representable in RFC 3339: {e}")))
}

/// Writes a private key with mode 0600 from the moment the file exists.
/// Without `overwrite`, refuses ([`CertError::Exists`]) if `path` exists.
pub fn write_private_key(path: &Path, pem: &str, overwrite: bool) -> Result<(), CertError> {
    write_file(path, pem, 0o600, overwrite)
}

/// Writes a public file (certificate, CRL) with mode 0644.
/// Without `overwrite`, refuses ([`CertError::Exists`]) if `path` exists.
pub fn write_public(path: &Path, pem: &str, overwrite: bool) -> Result<(), CertError> {
    write_file(path, pem, 0o644, overwrite)?;
    // The creation mode is reduced by the umask; certificates must stay
    // readable by the services that use them.
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(io_err(path))
}

fn write_file(path: &Path, contents: &str, mode: u32, overwrite: bool) -> Result<(), CertError> {
    if !overwrite {
        // create_new makes the existence check and the creation one step.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    CertError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    CertError::Io {
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
        return file
            .write_all(contents.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| {
                // Don't leave a truncated file that would block the retry.
                let _ = fs::remove_file(path);
                CertError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            });
    }
    // Replace via a fresh temporary file and rename: the old file's mode is
    // not inherited and readers never see a half-written file.
    let name = path
        .file_name()
        .ok_or_else(|| CertError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(contents.as_bytes())?;
            f.sync_all()
        })
        .map_err(io_err(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a public file and a key, checking both before writing either so
/// that a refused overwrite changes nothing.
fn write_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
    overwrite: bool,
) -> Result<(), CertError> {
    if !overwrite {
        for path in [key_path, cert_path] {
            // symlink_metadata: a dangling symlink counts as "exists" too.
            if path.symlink_metadata().is_ok() {
                return Err(CertError::Exists {
                    path: path.to_path_buf(),
                });
            }
        }
    }
    write_private_key(key_path, key_pem, overwrite)?;
    write_public(cert_path, cert_pem, overwrite)
}

/// Writes a cert+key pair as `<dir>/<stem>.crt` and `<dir>/<stem>.key`,
/// creating `dir` if needed. Without `overwrite`, refuses if either exists.
pub fn write_issued(
    dir: &Path,
    stem: &str,
    issued: &IssuedCert,
    overwrite: bool,
) -> Result<(), CertError> {
    if stem.is_empty() || stem.contains('/') || stem.starts_with('.') {
        return Err(CertError::InvalidName(
            stem.to_string(),
            "file stem must be a plain file name",
        ));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_pair(
        &dir.join(format!("{stem}.crt")),
        &issued.cert_pem,
        &dir.join(format!("{stem}.key")),
        &issued.key_pem,
        overwrite,
    )
}

/// One line of `revoked.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RevokedEntry {
    serial_hex: String,
    #[serde(with = "time::serde::rfc3339")]
    revoked_at: OffsetDateTime,
}

fn read_revoked(ca_dir: &Path) -> Result<Vec<RevokedEntry>, CertError> {
    let path = ca_dir.join(REVOKED_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| CertError::Json { path, source }),
        // No revocations yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(CertError::Io { path, source }),
    }
}

/// The next CRL number: one more than the current `ca.crl`'s, so every
/// re-issue is monotonic (RFC 5280 5.2.3) without extra state.
fn next_crl_number(ca_dir: &Path) -> Result<u64, CertError> {
    let path = ca_dir.join(CA_CRL_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(1),
        Err(source) => return Err(CertError::Io { path, source }),
    };
    let bad = |why: String| {
        CertError::Parse(format!(
            "{}: {why}; delete it and run `kakehashi-certs crl` to start over",
            path.display()
        ))
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|e| bad(format!("not a PEM CRL: {e}")))?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&pem.contents).map_err(|e| bad(format!("not a CRL: {e}")))?;
    let current = crl
        .crl_number()
        .map(|n| n.to_u64_digits())
        .unwrap_or_default();
    match current.as_slice() {
        [] => Ok(1),
        [n] => n
            .checked_add(1)
            .ok_or_else(|| bad("CRL number overflow".into())),
        _ => Err(bad("CRL number too large".into())),
    }
}

fn issue_crl_file(ca_dir: &Path, ca: &Ca, entries: &[RevokedEntry]) -> Result<PathBuf, CertError> {
    let number = next_crl_number(ca_dir)?;
    let this_update = OffsetDateTime::now_utc() - Duration::minutes(1);
    let next_update = this_update + Duration::days(CRL_VALIDITY_DAYS) + Duration::minutes(1);
    let pem = ca.crl_from_entries(entries, this_update, next_update, number)?;
    let path = ca_dir.join(CA_CRL_FILE);
    write_public(&path, &pem, true)?;
    Ok(path)
}

/// Revokes `serial_hex` (colons and upper case accepted): records it in
/// `ca_dir/revoked.json` (once per serial) and re-issues `ca_dir/ca.crl` with
/// the next CRL number, valid for 7 days. Returns the CRL path.
pub fn revoke(ca_dir: &Path, serial_hex: &str) -> Result<PathBuf, CertError> {
    let serial = normalize_serial(serial_hex)?;
    let ca = Ca::load(ca_dir)?;
    let mut entries = read_revoked(ca_dir)?;
    if !entries.iter().any(|e| e.serial_hex == serial) {
        entries.push(RevokedEntry {
            serial_hex: serial,
            revoked_at: OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .map_err(|e| {
                    CertError::InvalidValidity(format!("cannot truncate current time: {e}"))
                })?,
        });
        let path = ca_dir.join(REVOKED_FILE);
        let json = serde_json::to_string_pretty(&entries).map_err(|source| CertError::Json {
            path: path.clone(),
            source,
        })?;
        write_public(&path, &(json + "\n"), true)?;
    }
    issue_crl_file(ca_dir, &ca, &entries)
}

/// Re-issues `ca_dir/ca.crl` from `ca_dir/revoked.json` (a missing or empty
/// list gives an empty CRL). Returns the CRL path.
pub fn write_crl(ca_dir: &Path) -> Result<PathBuf, CertError> {
    let ca = Ca::load(ca_dir)?;
    let entries = read_revoked(ca_dir)?;
    for e in &entries {
        // Catch hand edits before they end up in a signed CRL.
        serial_bytes(&e.serial_hex)?;
    }
    issue_crl_file(ca_dir, &ca, &entries)
}

#[cfg(test)]
mod tests;
