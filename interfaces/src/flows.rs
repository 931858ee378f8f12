//! The authorised-flow list (照会許可用照合リスト, R6) as the broker shows it to
//! an org at `GET /v1/flows`.

use crate::ids::{FlowId, ItemCode, ProcedureCode};
use crate::org::{OrgId, OrgKind};
use crate::InvalidInput;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeSet;
use time::Date;

/// The most items one flow may name.
pub const MAX_FLOW_ITEMS: usize = 64;
/// The longest legal basis text, in characters.
pub const MAX_LEGAL_BASIS_CHARS: usize = 500;

/// One side of a flow: a named org, or every org of a kind.
///
/// Written `{"org": "city-saitama"}` or `{"kind": "municipality"}` in JSON, and
/// `{ org = "city-saitama" }` / `{ kind = "municipality" }` in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(untagged, deny_unknown_fields)]
pub enum Party {
    /// Exactly this org.
    Org {
        /// The org.
        org: OrgId,
    },
    /// Every org of this kind.
    Kind {
        /// The kind.
        kind: OrgKind,
    },
}

impl Party {
    /// Whether `org` of `kind` is this party.
    pub fn matches(&self, org: &OrgId, kind: OrgKind) -> bool {
        match self {
            Party::Org { org: o } => o == org,
            Party::Kind { kind: k } => *k == kind,
        }
    }
}

/// Reads both forms through one struct so that the error says what is wrong
/// ("exactly one of org, kind") instead of serde's "did not match any variant".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartyWire {
    #[serde(default)]
    org: Option<OrgId>,
    #[serde(default)]
    kind: Option<OrgKind>,
}

impl<'de> Deserialize<'de> for Party {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match PartyWire::deserialize(deserializer)? {
            PartyWire {
                org: Some(org),
                kind: None,
            } => Ok(Party::Org { org }),
            PartyWire {
                org: None,
                kind: Some(kind),
            } => Ok(Party::Kind { kind }),
            _ => Err(serde::de::Error::custom(
                "a party has exactly one of `org` or `kind`",
            )),
        }
    }
}

/// One authorised flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "FlowEntryWire")]
pub struct FlowEntry {
    /// The row of the law's table this flow implements.
    pub flow_id: FlowId,
    /// The procedure (事務手続) the flow serves.
    pub procedure: ProcedureCode,
    /// Who may ask.
    pub requester: Party,
    /// Who answers.
    pub provider: Party,
    /// The items that may be asked for: 1–64, no duplicates.
    pub items: Vec<ItemCode>,
    /// Items never answered automatically (自動応答不可); a subset of `items`.
    pub sensitive_items: Vec<ItemCode>,
    /// The legal basis, as text (1–500 characters).
    pub legal_basis: String,
    /// First day in force.
    #[serde(with = "crate::datetime::date")]
    #[schemars(with = "crate::schema::DateString")]
    pub valid_from: Date,
    /// Last day in force (inclusive); open-ended when absent.
    #[serde(
        default,
        with = "crate::datetime::date_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<crate::schema::DateString>")]
    pub valid_until: Option<Date>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowEntryWire {
    flow_id: FlowId,
    procedure: ProcedureCode,
    requester: Party,
    provider: Party,
    items: Vec<ItemCode>,
    #[serde(default)]
    sensitive_items: Vec<ItemCode>,
    legal_basis: String,
    #[serde(with = "crate::datetime::date")]
    valid_from: Date,
    #[serde(default, with = "crate::datetime::date_option")]
    valid_until: Option<Date>,
}

impl TryFrom<FlowEntryWire> for FlowEntry {
    type Error = InvalidInput;
    fn try_from(w: FlowEntryWire) -> Result<Self, Self::Error> {
        let entry = FlowEntry {
            flow_id: w.flow_id,
            procedure: w.procedure,
            requester: w.requester,
            provider: w.provider,
            items: w.items,
            sensitive_items: w.sensitive_items,
            legal_basis: w.legal_basis,
            valid_from: w.valid_from,
            valid_until: w.valid_until,
        };
        entry.validate()?;
        Ok(entry)
    }
}

impl FlowEntry {
    /// Checks the rules deserialization enforces; for entries built in code.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.items.is_empty() || self.items.len() > MAX_FLOW_ITEMS {
            return Err(InvalidInput::new("items", "must name 1 to 64 items"));
        }
        let items: BTreeSet<&ItemCode> = self.items.iter().collect();
        if items.len() != self.items.len() {
            return Err(InvalidInput::new("items", "must not repeat an item"));
        }
        let sensitive: BTreeSet<&ItemCode> = self.sensitive_items.iter().collect();
        if sensitive.len() != self.sensitive_items.len() {
            return Err(InvalidInput::new(
                "sensitive_items",
                "must not repeat an item",
            ));
        }
        if !sensitive.is_subset(&items) {
            return Err(InvalidInput::new(
                "sensitive_items",
                "must only name items of the flow",
            ));
        }
        let chars = self.legal_basis.chars().count();
        if chars == 0
            || chars > MAX_LEGAL_BASIS_CHARS
            || self.legal_basis.trim().is_empty()
            || self.legal_basis.chars().any(char::is_control)
        {
            return Err(InvalidInput::new(
                "legal_basis",
                "must be 1-500 characters, not blank, without control characters",
            ));
        }
        if self
            .valid_until
            .is_some_and(|until| until < self.valid_from)
        {
            return Err(InvalidInput::new(
                "valid_until",
                "must not be before valid_from",
            ));
        }
        Ok(())
    }

    /// Whether the flow is in force on `day` (both ends inclusive).
    pub fn in_force(&self, day: Date) -> bool {
        let before_end = match self.valid_until {
            Some(until) => day <= until,
            None => true,
        };
        day >= self.valid_from && before_end
    }

    /// Whether `item` is flagged sensitive in this flow.
    pub fn is_sensitive(&self, item: &ItemCode) -> bool {
        self.sensitive_items.contains(item)
    }
}

/// `GET /v1/flows`: the flows in which the calling org is requester or provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowListView {
    /// The version of the flow list in force (R8); recorded with every query.
    pub version: u64,
    /// The flows.
    pub flows: Vec<FlowEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const OK: &str = r#"{"flow_id":"row-1","procedure":"premium.assessment","requester":{"kind":"union"},"provider":{"org":"city-saitama"},"items":["local_tax.income","local_tax.deductions"],"sensitive_items":["local_tax.deductions"],"legal_basis":"番号法 別表第二 第80項","valid_from":"2024-04-01"}"#;

    #[test]
    fn parses_and_checks() {
        let f: FlowEntry = serde_json::from_str(OK).unwrap();
        assert_eq!(
            f.requester,
            Party::Kind {
                kind: OrgKind::Union
            }
        );
        assert!(f
            .provider
            .matches(&OrgId::new("city-saitama").unwrap(), OrgKind::Municipality));
        assert!(f.in_force(date!(2024 - 04 - 01)));
        assert!(!f.in_force(date!(2024 - 03 - 31)));
        assert!(f.is_sensitive(&ItemCode::new("local_tax.deductions").unwrap()));
        let back: FlowEntry = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        for bad in [
            OK.replace("[\"local_tax.deductions\"]", "[\"other.item\"]"),
            OK.replace("\"local_tax.income\",", "\"local_tax.deductions\","),
            OK.replace(
                "{\"kind\":\"union\"}",
                "{\"kind\":\"union\",\"org\":\"city-x\"}",
            ),
            OK.replace("{\"kind\":\"union\"}", "{}"),
            OK.replace("{\"kind\":\"union\"}", "{\"kind\":\"union\",\"x\":1}"),
            OK.replace(
                "\"2024-04-01\"",
                "\"2024-04-01\",\"valid_until\":\"2024-03-01\"",
            ),
            OK.replace("番号法 別表第二 第80項", " "),
            OK.replace('}', ",\"x\":1}"),
        ] {
            assert!(serde_json::from_str::<FlowEntry>(&bad).is_err(), "{bad}");
        }
    }
}
