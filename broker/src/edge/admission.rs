//! Who may use the exchange: the org named in a verified certificate must be
//! registered, active and, if pinned, presenting the pinned certificate.
//!
//! `admit` is a pure decision; [`OrgDirectory`] caches store lookups for a few
//! seconds so a suspension takes effect quickly without a query per request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kakehashi_interfaces::{ErrorCode, OrgId, OrgStatus};

use crate::edge::refusal::Reason;
use crate::edge::tls::PeerIdentity;
use crate::error::BrokerError;
use crate::store::{OrgRecord, Store};

/// Why an authenticated TLS peer was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate carries no `urn:kakehashi:org:` SAN.
    NoOrgInCertificate,
    /// No org with that id is registered.
    UnknownOrg,
    /// The org is suspended.
    Suspended,
    /// The org is pinned to another certificate.
    PinMismatch,
}

impl Refusal {
    /// The reason counted in logs and metrics.
    pub fn reason(self) -> Reason {
        match self {
            Refusal::NoOrgInCertificate => Reason::NoOrgInCertificate,
            Refusal::UnknownOrg => Reason::UnknownOrg,
            Refusal::Suspended => Reason::OrgSuspended,
            Refusal::PinMismatch => Reason::CertificatePinMismatch,
        }
    }

    /// The error sent to the client.
    pub fn to_error(self) -> BrokerError {
        let (code, message) = match self {
            Refusal::NoOrgInCertificate => (
                ErrorCode::Unauthenticated,
                "the client certificate names no org (expected a SAN URI urn:kakehashi:org:<id>)",
            ),
            Refusal::UnknownOrg => (
                ErrorCode::UnknownOrg,
                "the org in the client certificate is not registered with this broker",
            ),
            Refusal::Suspended => (
                ErrorCode::OrgSuspended,
                "the org is suspended; ask the broker's administrator",
            ),
            Refusal::PinMismatch => (
                ErrorCode::CertificatePinMismatch,
                "this certificate is not the one registered for the org",
            ),
        };
        BrokerError::refused(code, message)
    }
}

/// Decides whether `identity` may use the exchange given its org's record.
pub fn admit(identity: &PeerIdentity, record: Option<&OrgRecord>) -> Result<(), Refusal> {
    if identity.org_id.is_none() {
        return Err(Refusal::NoOrgInCertificate);
    }
    let record = record.ok_or(Refusal::UnknownOrg)?;
    if record.status != OrgStatus::Active {
        return Err(Refusal::Suspended);
    }
    if let Some(pin) = &record.cert_fingerprint {
        if !pin.eq_ignore_ascii_case(&identity.fingerprint) {
            return Err(Refusal::PinMismatch);
        }
    }
    Ok(())
}

/// A short-lived cache of org records in front of the store.
pub struct OrgDirectory {
    store: Arc<dyn Store>,
    ttl: Duration,
    cache: RwLock<HashMap<OrgId, (Instant, Option<OrgRecord>)>>,
}

impl OrgDirectory {
    /// A directory whose entries live for `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// The org's record, from cache if fresh.
    pub async fn lookup(&self, id: &OrgId) -> Result<Option<OrgRecord>, BrokerError> {
        if let Ok(cache) = self.cache.read() {
            if let Some((at, record)) = cache.get(id) {
                if at.elapsed() < self.ttl {
                    return Ok(record.clone());
                }
            }
        }
        let record = self.store.get_org(id).await?;
        if let Ok(mut cache) = self.cache.write() {
            // Bounded: unknown ids are cached too, so cap the map.
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(id.clone(), (Instant::now(), record.clone()));
        }
        Ok(record)
    }

    /// Admits or refuses a peer.
    pub async fn admit(&self, identity: &PeerIdentity) -> Result<OrgRecord, AdmitError> {
        let Some(org_id) = &identity.org_id else {
            return Err(AdmitError::Refused(Refusal::NoOrgInCertificate));
        };
        let record = self.lookup(org_id).await.map_err(AdmitError::Store)?;
        admit(identity, record.as_ref()).map_err(AdmitError::Refused)?;
        record.ok_or(AdmitError::Refused(Refusal::UnknownOrg))
    }
}

/// Admission failed: a refusal, or the store could not be asked.
#[derive(Debug)]
pub enum AdmitError {
    /// The peer is not admitted.
    Refused(Refusal),
    /// The store failed.
    Store(BrokerError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_interfaces::OrgKind;

    fn identity(org: Option<&str>, fp: &str) -> PeerIdentity {
        PeerIdentity {
            org_id: org.map(|o| OrgId::new(o).unwrap()),
            fingerprint: fp.into(),
        }
    }

    fn record(status: OrgStatus, pin: Option<&str>) -> OrgRecord {
        OrgRecord {
            id: OrgId::new("city-a").unwrap(),
            kind: OrgKind::Municipality,
            name: "A".into(),
            status,
            cert_fingerprint: pin.map(str::to_string),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn decisions() {
        let id = identity(Some("city-a"), "ab");
        assert_eq!(admit(&id, Some(&record(OrgStatus::Active, None))), Ok(()));
        assert_eq!(
            admit(&id, Some(&record(OrgStatus::Active, Some("AB")))),
            Ok(())
        );
        assert_eq!(admit(&id, None), Err(Refusal::UnknownOrg));
        assert_eq!(
            admit(&id, Some(&record(OrgStatus::Suspended, None))),
            Err(Refusal::Suspended)
        );
        assert_eq!(
            admit(&id, Some(&record(OrgStatus::Active, Some("cd")))),
            Err(Refusal::PinMismatch)
        );
        assert_eq!(
            admit(
                &identity(None, "ab"),
                Some(&record(OrgStatus::Active, None))
            ),
            Err(Refusal::NoOrgInCertificate)
        );
    }
}
