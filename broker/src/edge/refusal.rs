//! Why the edge refused a connection or a request before any endpoint ran:
//! one enum, so logs, the `kakehashi_refusals_total{reason}` metric and the
//! README's list cannot drift apart. Endpoints' own refusals are counted
//! under their error code ([`kakehashi_interfaces::ErrorCode`]).

/// A refusal at the transport edge (TLS, admission, limits, body cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The connection limit (`[limits] max_connections`) was reached.
    ConnectionLimit,
    /// The TLS handshake did not finish in time.
    HandshakeTimeout,
    /// The peer closed the connection during the handshake.
    HandshakeAborted,
    /// The handshake failed for another reason.
    HandshakeFailed,
    /// No client certificate was presented.
    NoClientCertificate,
    /// The client certificate was not issued by a trust anchor.
    UnknownCa,
    /// The client certificate has expired.
    CertificateExpired,
    /// The client certificate is not valid yet.
    CertificateNotYetValid,
    /// The client certificate is on a CRL in force.
    CertificateRevoked,
    /// The certificate is not for client authentication.
    CertificateWrongPurpose,
    /// A CRL covering the certificate has expired.
    CrlExpired,
    /// The certificate's revocation status cannot be determined.
    RevocationUnknown,
    /// The certificate is invalid for another reason.
    CertificateInvalid,
    /// The peer's TLS offers nothing the broker accepts.
    TlsIncompatible,
    /// The request headers did not arrive in time.
    HeaderTimeout,
    /// The certificate names no org.
    NoOrgInCertificate,
    /// The org is not registered.
    UnknownOrg,
    /// The org is suspended.
    OrgSuspended,
    /// The org is pinned to another certificate.
    CertificatePinMismatch,
    /// The org's request rate is over its limit.
    RateLimitedOrg,
    /// The client address's request rate is over its limit.
    RateLimitedAddress,
    /// The declared body is larger than the endpoint takes.
    BodyTooLarge,
    /// No endpoint has this path.
    NotFound,
    /// The path exists, but not with this method.
    MethodNotAllowed,
    /// The body's content type is not the one the endpoint takes.
    UnsupportedMediaType,
    /// A people endpoint was called without a valid session.
    SessionRequired,
    /// A state-changing people call came without the session's CSRF token.
    CsrfMismatch,
    /// The caller's role may not use the endpoint.
    RoleNotAllowed,
    /// An unexpected failure inside the broker.
    InternalError,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 29] = [
        Reason::ConnectionLimit,
        Reason::HandshakeTimeout,
        Reason::HandshakeAborted,
        Reason::HandshakeFailed,
        Reason::NoClientCertificate,
        Reason::UnknownCa,
        Reason::CertificateExpired,
        Reason::CertificateNotYetValid,
        Reason::CertificateRevoked,
        Reason::CertificateWrongPurpose,
        Reason::CrlExpired,
        Reason::RevocationUnknown,
        Reason::CertificateInvalid,
        Reason::TlsIncompatible,
        Reason::HeaderTimeout,
        Reason::NoOrgInCertificate,
        Reason::UnknownOrg,
        Reason::OrgSuspended,
        Reason::CertificatePinMismatch,
        Reason::RateLimitedOrg,
        Reason::RateLimitedAddress,
        Reason::BodyTooLarge,
        Reason::NotFound,
        Reason::MethodNotAllowed,
        Reason::UnsupportedMediaType,
        Reason::SessionRequired,
        Reason::CsrfMismatch,
        Reason::RoleNotAllowed,
        Reason::InternalError,
    ];

    /// The stable label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConnectionLimit => "connection_limit",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HandshakeAborted => "handshake_aborted",
            Reason::HandshakeFailed => "handshake_failed",
            Reason::NoClientCertificate => "no_client_certificate",
            Reason::UnknownCa => "unknown_ca",
            Reason::CertificateExpired => "certificate_expired",
            Reason::CertificateNotYetValid => "certificate_not_yet_valid",
            Reason::CertificateRevoked => "certificate_revoked",
            Reason::CertificateWrongPurpose => "certificate_wrong_purpose",
            Reason::CrlExpired => "crl_expired",
            Reason::RevocationUnknown => "revocation_unknown",
            Reason::CertificateInvalid => "certificate_invalid",
            Reason::TlsIncompatible => "tls_incompatible",
            Reason::HeaderTimeout => "header_timeout",
            Reason::NoOrgInCertificate => "no_org_in_certificate",
            Reason::UnknownOrg => "unknown_org",
            Reason::OrgSuspended => "org_suspended",
            Reason::CertificatePinMismatch => "certificate_pin_mismatch",
            Reason::RateLimitedOrg => "rate_limited_org",
            Reason::RateLimitedAddress => "rate_limited_address",
            Reason::BodyTooLarge => "body_too_large",
            Reason::NotFound => "not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::SessionRequired => "session_required",
            Reason::CsrfMismatch => "csrf_mismatch",
            Reason::RoleNotAllowed => "role_not_allowed",
            Reason::InternalError => "internal_error",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README lists every reason the edge can count, between the
    /// markers `<!-- refusal-reasons -->` and `<!-- /refusal-reasons -->`.
    #[test]
    fn the_readme_lists_exactly_the_edge_reasons() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("<!-- refusal-reasons -->")
            .expect("README has the refusal-reasons marker");
        let end = readme
            .find("<!-- /refusal-reasons -->")
            .expect("README has the closing refusal-reasons marker");
        let listed: std::collections::BTreeSet<&str> =
            readme[start..end].split('`').skip(1).step_by(2).collect();
        let code: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            listed, code,
            "README's refusal list differs from edge::refusal::Reason"
        );
    }

    #[test]
    fn labels_are_unique() {
        let labels: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
