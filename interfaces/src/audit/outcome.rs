//! What happened to a query, or which housekeeping act a record logs: the
//! [`Outcome`] of a record, its tag in the canonical encoding and its
//! flat storage and export form (name, reason, detail).

use serde::{Deserialize, Serialize};

use super::encoding::{put_str, put_u64};

/// What happened to a query (or which housekeeping act a record logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The answer was provided.
    Provided,
    /// Sensitive items await the provider's approval.
    Pending,
    /// The provider approved a pending query.
    Approved,
    /// The provider rejected a pending query.
    Rejected,
    /// The broker refused the query.
    Denied {
        /// Stable error code, e.g. `not_on_flow_list`.
        reason: String,
    },
    /// A pending query or result expired.
    Expired,
    /// An auditor export (R16).
    Export {
        /// Who exported.
        actor: String,
        /// The filter, described without person codes.
        filter: String,
        /// Records written.
        count: u64,
    },
    /// A retention purge (R15); verification of what remains starts at its cut.
    Purge {
        /// Records older than this were due (fixed-width RFC 3339 UTC).
        before: String,
        /// First purged sequence number.
        first_seq: u64,
        /// Last purged sequence number: the chain continues from here.
        cut_seq: u64,
        /// Records deleted.
        count: u64,
        /// Chain hash at `cut_seq`, lowercase hex.
        cut_hash: String,
        /// Who purged (OS user or `retention-task`).
        actor: String,
    },
    /// Personal data erased at the end of their own retention periods (R15):
    /// identity-confirmation data (basic four facts) older than one year, and
    /// persons — their copies, codes and Individual Number — five years after
    /// loss of eligibility. Counts only; never a code or a value.
    Erasure {
        /// Identity-confirmation data confirmed before this were erased
        /// (fixed-width RFC 3339 UTC).
        confirmed_before: String,
        /// Persons who lost eligibility before this day were erased (YYYY-MM-DD).
        lost_before: String,
        /// Sets of basic four facts erased.
        identity_confirmations: u64,
        /// Persons erased.
        persons: u64,
        /// Deposited copies erased.
        copies: u64,
        /// Person codes erased, of every org: those of the persons erased,
        /// and linking codes whose number no insurer keeps, last linked
        /// before the identity-confirmation cut-off. Absent from erasure
        /// records of brokers that did not count them; present, the outcome
        /// has its own tag (10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        codes: Option<u64>,
        /// Who erased (OS user or `retention-task`).
        actor: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportDetail {
    actor: String,
    filter: String,
    count: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureDetail {
    confirmed_before: String,
    lost_before: String,
    identity_confirmations: u64,
    persons: u64,
    copies: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    codes: Option<u64>,
    actor: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeDetail {
    before: String,
    first_seq: u64,
    cut_seq: u64,
    count: u64,
    cut_hash: String,
    actor: String,
}

impl Outcome {
    /// The outcome's name as stored and exported (`provided`, `denied` …).
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Provided => "provided",
            Outcome::Pending => "pending",
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Denied { .. } => "denied",
            Outcome::Expired => "expired",
            Outcome::Export { .. } => "export",
            Outcome::Purge { .. } => "purge",
            Outcome::Erasure { .. } => "erasure",
        }
    }

    /// The tag that starts the outcome in the canonical encoding (the table
    /// "Outcomes" of the module documentation).
    pub(super) fn tag(&self) -> u8 {
        match self {
            Outcome::Provided => 1,
            Outcome::Pending => 2,
            Outcome::Approved => 3,
            Outcome::Rejected => 4,
            Outcome::Denied { .. } => 5,
            Outcome::Expired => 6,
            Outcome::Export { .. } => 7,
            Outcome::Purge { .. } => 8,
            Outcome::Erasure { codes: None, .. } => 9,
            Outcome::Erasure { codes: Some(_), .. } => 10,
        }
    }

    /// Appends the tag and the outcome's fields to a canonical encoding.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.tag());
        match self {
            Outcome::Denied { reason } => put_str(out, reason),
            Outcome::Export {
                actor,
                filter,
                count,
            } => {
                put_str(out, actor);
                put_str(out, filter);
                put_u64(out, *count);
            }
            Outcome::Purge {
                before,
                first_seq,
                cut_seq,
                count,
                cut_hash,
                actor,
            } => {
                put_str(out, before);
                put_u64(out, *first_seq);
                put_u64(out, *cut_seq);
                put_u64(out, *count);
                put_str(out, cut_hash);
                put_str(out, actor);
            }
            Outcome::Erasure {
                confirmed_before,
                lost_before,
                identity_confirmations,
                persons,
                copies,
                codes,
                actor,
            } => {
                put_str(out, confirmed_before);
                put_str(out, lost_before);
                put_u64(out, *identity_confirmations);
                put_u64(out, *persons);
                put_u64(out, *copies);
                // Only under tag 10, so an encoding reads one way.
                if let Some(codes) = codes {
                    put_u64(out, *codes);
                }
                put_str(out, actor);
            }
            Outcome::Provided
            | Outcome::Pending
            | Outcome::Approved
            | Outcome::Rejected
            | Outcome::Expired => {}
        }
    }

    /// Splits into the flat columns used in storage and exports:
    /// name, denial reason, and a JSON detail for export, purge and erasure
    /// records.
    pub fn to_parts(&self) -> (&'static str, Option<String>, Option<serde_json::Value>) {
        let detail = match self {
            Outcome::Export {
                actor,
                filter,
                count,
            } => serde_json::to_value(ExportDetail {
                actor: actor.clone(),
                filter: filter.clone(),
                count: *count,
            })
            .ok(),
            Outcome::Purge {
                before,
                first_seq,
                cut_seq,
                count,
                cut_hash,
                actor,
            } => serde_json::to_value(PurgeDetail {
                before: before.clone(),
                first_seq: *first_seq,
                cut_seq: *cut_seq,
                count: *count,
                cut_hash: cut_hash.clone(),
                actor: actor.clone(),
            })
            .ok(),
            Outcome::Erasure {
                confirmed_before,
                lost_before,
                identity_confirmations,
                persons,
                copies,
                codes,
                actor,
            } => serde_json::to_value(ErasureDetail {
                confirmed_before: confirmed_before.clone(),
                lost_before: lost_before.clone(),
                identity_confirmations: *identity_confirmations,
                persons: *persons,
                copies: *copies,
                codes: *codes,
                actor: actor.clone(),
            })
            .ok(),
            _ => None,
        };
        let reason = match self {
            Outcome::Denied { reason } => Some(reason.clone()),
            _ => None,
        };
        (self.name(), reason, detail)
    }

    /// The inverse of [`Outcome::to_parts`].
    pub fn from_parts(
        name: &str,
        reason: Option<String>,
        detail: Option<serde_json::Value>,
    ) -> Result<Outcome, String> {
        let simple = |o: Outcome| {
            if reason.is_some() || detail.is_some() {
                Err(format!("outcome {name} carries no reason or detail"))
            } else {
                Ok(o)
            }
        };
        match name {
            "provided" => simple(Outcome::Provided),
            "pending" => simple(Outcome::Pending),
            "approved" => simple(Outcome::Approved),
            "rejected" => simple(Outcome::Rejected),
            "expired" => simple(Outcome::Expired),
            "denied" => match (reason, detail) {
                (Some(reason), None) => Ok(Outcome::Denied { reason }),
                _ => Err("outcome denied needs a reason and no detail".into()),
            },
            "erasure" => {
                if reason.is_some() {
                    return Err("outcome erasure carries no reason".into());
                }
                let detail = detail.ok_or("outcome erasure needs its detail")?;
                let d: ErasureDetail =
                    serde_json::from_value(detail).map_err(|e| format!("erasure detail: {e}"))?;
                Ok(Outcome::Erasure {
                    confirmed_before: d.confirmed_before,
                    lost_before: d.lost_before,
                    identity_confirmations: d.identity_confirmations,
                    persons: d.persons,
                    copies: d.copies,
                    codes: d.codes,
                    actor: d.actor,
                })
            }
            "export" | "purge" => {
                if reason.is_some() {
                    return Err(format!("outcome {name} carries no reason"));
                }
                let detail = detail.ok_or_else(|| format!("outcome {name} needs its detail"))?;
                if name == "export" {
                    let d: ExportDetail = serde_json::from_value(detail)
                        .map_err(|e| format!("export detail: {e}"))?;
                    Ok(Outcome::Export {
                        actor: d.actor,
                        filter: d.filter,
                        count: d.count,
                    })
                } else {
                    let d: PurgeDetail =
                        serde_json::from_value(detail).map_err(|e| format!("purge detail: {e}"))?;
                    Ok(Outcome::Purge {
                        before: d.before,
                        first_seq: d.first_seq,
                        cut_seq: d.cut_seq,
                        count: d.count,
                        cut_hash: d.cut_hash,
                        actor: d.actor,
                    })
                }
            }
            other => Err(format!("unknown outcome {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_parts_round_trip() {
        for o in [
            Outcome::Provided,
            Outcome::Expired,
            Outcome::Denied {
                reason: "item_not_allowed".into(),
            },
            Outcome::Export {
                actor: "auditor".into(),
                filter: "org=x".into(),
                count: 3,
            },
            Outcome::Purge {
                before: "2019-01-01T00:00:00.000000Z".into(),
                first_seq: 1,
                cut_seq: 9,
                count: 9,
                cut_hash: "ab".repeat(32),
                actor: "retention-task".into(),
            },
            Outcome::Erasure {
                confirmed_before: "2025-01-01T00:00:00.000000Z".into(),
                lost_before: "2020-01-01".into(),
                identity_confirmations: 4,
                persons: 2,
                copies: 3,
                codes: None,
                actor: "retention-task".into(),
            },
            Outcome::Erasure {
                confirmed_before: "2025-01-01T00:00:00.000000Z".into(),
                lost_before: "2020-01-01".into(),
                identity_confirmations: 0,
                persons: 0,
                copies: 1,
                codes: Some(1),
                actor: "retention-task".into(),
            },
        ] {
            let (name, reason, detail) = o.to_parts();
            assert_eq!(Outcome::from_parts(name, reason, detail).unwrap(), o);
        }
        assert!(Outcome::from_parts("provided", Some("x".into()), None).is_err());
        assert!(Outcome::from_parts("nonsense", None, None).is_err());
    }
}
