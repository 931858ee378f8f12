//! R1 on open connections: a certificate revoked by a new CRL, or one that
//! expires while a keep-alive connection is open, stops being served at the
//! next request, and the connection is closed.
//!
//! The handshake verifies a certificate once. Afterwards each request asks
//! [`PeerCertificate::recheck`], which costs a comparison of two numbers
//! unless something changed: the [`Trust`] in force carries a generation
//! that grows whenever the trust anchors or CRL files are re-read, and a
//! connection remembers the generation it was last verified under. Only a
//! new generation re-runs the verification (a signature check), once per
//! connection. Expiry is a comparison with the `notAfter` read at the
//! handshake.
//!
//! [`decide`] is the decision, without clocks or files.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Instant, SystemTime};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use crate::config::TlsConfig;
use crate::edge::refusal::Reason;
use crate::edge::tls;
use crate::error::BrokerError;

/// The client-certificate verifier in force and its generation.
pub struct Trust {
    config: TlsConfig,
    generation: AtomicU64,
    verifier: RwLock<Arc<dyn ClientCertVerifier>>,
    files: Mutex<Vec<Option<SystemTime>>>,
    opened: Instant,
    /// When the files are next looked at, in ms since `opened`: a request
    /// before then reads one atomic and takes no lock.
    next_look_ms: AtomicU64,
}

impl Trust {
    /// Reads the trust anchors and CRLs of `config`.
    pub fn open(config: &TlsConfig) -> Result<Trust, BrokerError> {
        Ok(Trust {
            verifier: RwLock::new(tls::client_verifier(config)?),
            files: Mutex::new(tls::file_stamps(config)),
            opened: Instant::now(),
            next_look_ms: AtomicU64::new(0),
            generation: AtomicU64::new(1),
            config: config.clone(),
        })
    }

    /// The generation in force, after re-reading the files if they changed
    /// (looked at no more often than `[tls] reload_interval_secs`, as the
    /// listener does for new connections).
    pub fn current(&self) -> u64 {
        self.reload_if_changed();
        self.generation.load(Ordering::Acquire)
    }

    fn reload_if_changed(&self) {
        let now_ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now_ms < self.next_look_ms.load(Ordering::Relaxed) {
            return;
        }
        // One request re-reads; the others go on with what is in force.
        let Ok(mut files) = self.files.try_lock() else {
            return;
        };
        let every_ms = self.config.reload_interval_secs.saturating_mul(1000);
        self.next_look_ms
            .store(now_ms.saturating_add(every_ms), Ordering::Relaxed);
        let stamps = tls::file_stamps(&self.config);
        if stamps == *files {
            return;
        }
        match tls::client_verifier(&self.config) {
            Ok(verifier) => {
                if let Ok(mut slot) = self.verifier.write() {
                    *slot = verifier;
                    *files = stamps;
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    tracing::info!(
                        "trust anchors and CRLs re-read; open connections are checked again"
                    );
                }
            }
            // As the listener does: keep the previous material rather than stop.
            Err(e) => {
                tracing::error!(error = %e, "TLS files changed but could not be loaded; open connections keep the previous trust");
            }
        }
    }

    fn verify(&self, chain: &[CertificateDer<'static>], now: UnixTime) -> Result<(), Reason> {
        let verifier = match self.verifier.read() {
            Ok(v) => v.clone(),
            Err(_) => return Err(Reason::InternalError),
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Reason::NoClientCertificate);
        };
        verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
            .map_err(|e| tls::certificate_refusal_reason(&e))
    }
}

/// What the broker keeps of a connection's certificate to check it again.
pub struct PeerCertificate {
    chain: Vec<CertificateDer<'static>>,
    /// `notAfter`, seconds since the Unix epoch.
    not_after: u64,
    verified_under: AtomicU64,
    refused: OnceLock<Reason>,
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("not_after", &self.not_after)
            .field("refused", &self.refused.get())
            .finish_non_exhaustive()
    }
}

impl PeerCertificate {
    /// The chain the client presented, verified at the handshake under
    /// trust generation `generation`.
    pub fn new(chain: &[CertificateDer<'_>], generation: u64) -> PeerCertificate {
        let not_after = chain
            .first()
            .and_then(|leaf| x509_parser::parse_x509_certificate(leaf.as_ref()).ok())
            .map(|(_, cert)| cert.validity().not_after.timestamp().max(0) as u64)
            // Unreadable here though the handshake accepted it: expire at
            // once rather than serve a certificate we cannot date.
            .unwrap_or(0);
        PeerCertificate {
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            not_after,
            verified_under: AtomicU64::new(generation),
            refused: OnceLock::new(),
        }
    }

    /// Whether the certificate may still be served now. Once refused, a
    /// connection stays refused.
    pub fn recheck(&self, trust: &Trust) -> Result<(), Reason> {
        if let Some(reason) = self.refused.get() {
            return Err(*reason);
        }
        let now = UnixTime::now();
        let generation = trust.current();
        let verdict = decide(
            self.not_after,
            now.as_secs(),
            self.verified_under.load(Ordering::Acquire),
            generation,
            || trust.verify(&self.chain, now),
        );
        match verdict {
            Ok(()) => {
                self.verified_under.store(generation, Ordering::Release);
                Ok(())
            }
            Err(reason) => Err(*self.refused.get_or_init(|| reason)),
        }
    }
}

/// Whether a certificate verified under generation `verified_under` may be
/// served at `now` while `current` is in force: expired certificates are
/// refused; a new generation runs `verify` again.
pub fn decide(
    not_after: u64,
    now: u64,
    verified_under: u64,
    current: u64,
    verify: impl FnOnce() -> Result<(), Reason>,
) -> Result<(), Reason> {
    if now > not_after {
        return Err(Reason::CertificateExpired);
    }
    if verified_under == current {
        return Ok(());
    }
    verify()
}

/// The message a client reads when its open connection is refused.
pub fn refusal_message(reason: Reason) -> &'static str {
    match reason {
        Reason::CertificateExpired => {
            "the client certificate expired while the connection was open; the connection is closed"
        }
        Reason::CertificateRevoked => {
            "the client certificate has been revoked; the connection is closed"
        }
        Reason::CrlExpired | Reason::RevocationUnknown => {
            "the certificate's revocation status cannot be determined (CRL out of date); the connection is closed"
        }
        _ => "the client certificate is no longer accepted; the connection is closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unchanged_trust_does_not_verify_again() {
        let verified = decide(100, 50, 3, 3, || panic!("verified again"));
        assert_eq!(verified, Ok(()));
    }

    #[test]
    fn a_new_trust_generation_verifies_again() {
        assert_eq!(
            decide(100, 50, 3, 4, || Err(Reason::CertificateRevoked)),
            Err(Reason::CertificateRevoked)
        );
        assert_eq!(decide(100, 50, 3, 4, || Ok(())), Ok(()));
    }

    #[test]
    fn expiry_wins_without_verifying() {
        assert_eq!(
            decide(100, 101, 3, 3, || panic!("verified")),
            Err(Reason::CertificateExpired)
        );
        // The last second of validity is still valid.
        assert_eq!(decide(100, 100, 3, 3, || Ok(())), Ok(()));
    }
}
