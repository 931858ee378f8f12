//! The authorised-flow list (照会許可用照合リスト, R6): parsing and
//! validation, the pure check of a query against the list in force, and
//! loading the version in force.
//!
//! `check` is a pure function over an in-memory [`FlowIndex`]; loading is
//! IO kept at the bottom of this file. Proposing and approving versions
//! (two people, R8) is [`crate::flow_changes`].

use std::collections::{BTreeSet, HashMap};

use kakehashi_interfaces::{ErrorCode, OrgId, OrgKind};
use serde::{Deserialize, Serialize};
use time::Date;

use crate::error::BrokerError;
use crate::store::Pools;

/// Who may be requester or provider of a flow: one org, or every org of a kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Party {
    /// A specific org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<OrgId>,
    /// Any org of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<OrgKind>,
}

impl Party {
    fn matches(&self, id: &OrgId, kind: OrgKind) -> bool {
        match (&self.org, self.kind) {
            (Some(org), _) => org == id,
            (None, Some(k)) => k == kind,
            (None, None) => false,
        }
    }

    fn validate(&self, field: &str) -> Result<(), String> {
        match (&self.org, self.kind) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(format!("{field} needs exactly one of `org` or `kind`")),
        }
    }
}

/// One row of the flow list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowRule {
    /// Flow id (the row of the law's table).
    pub flow_id: String,
    /// Procedure (事務手続) the flow serves.
    pub procedure: String,
    /// Who may ask.
    pub requester: Party,
    /// Who answers.
    pub provider: Party,
    /// Data items that may be asked for.
    pub items: BTreeSet<String>,
    /// Items never answered automatically (自動応答不可).
    #[serde(default)]
    pub sensitive_items: BTreeSet<String>,
    /// Legal basis (e.g. 番号法 別表 row).
    pub legal_basis: String,
    /// First day in force (inclusive), `"YYYY-MM-DD"`.
    #[serde(with = "day")]
    pub valid_from: Date,
    /// Last day in force (inclusive); open-ended if absent.
    #[serde(default, with = "day::option", skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<Date>,
}

/// Dates as `"YYYY-MM-DD"` text (TOML's native dates would need a special type).
mod day {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Date;

    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]");

    pub fn serialize<S: Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.format(FORMAT).map_err(serde::ser::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Date, D::Error> {
        let text = String::deserialize(d)?;
        Date::parse(&text, FORMAT)
            .map_err(|_| serde::de::Error::custom("expected a date \"YYYY-MM-DD\""))
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Date>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Date>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// The TOML file: `[[flow]]` tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowListFile {
    /// The rows.
    #[serde(default)]
    pub flow: Vec<FlowRule>,
}

/// Parses and validates a flow list; every problem names its flow.
pub fn parse_flow_list(text: &str) -> Result<Vec<FlowRule>, BrokerError> {
    let file: FlowListFile = toml::from_str(text)
        .map_err(|e| BrokerError::refused(ErrorCode::InvalidInput, format!("flow list: {e}")))?;
    let mut seen = BTreeSet::new();
    for rule in &file.flow {
        let bad = |msg: String| {
            BrokerError::refused(
                ErrorCode::InvalidInput,
                format!("flow {}: {msg}", rule.flow_id),
            )
        };
        validate_code(&rule.flow_id).map_err(|m| bad(format!("flow_id {m}")))?;
        validate_code(&rule.procedure).map_err(|m| bad(format!("procedure {m}")))?;
        for item in rule.items.iter().chain(&rule.sensitive_items) {
            validate_item(item).map_err(|m| bad(format!("item {m}")))?;
        }
        rule.requester.validate("requester").map_err(bad)?;
        rule.provider.validate("provider").map_err(bad)?;
        if rule.items.is_empty() {
            return Err(bad("allows no items".into()));
        }
        if !rule.sensitive_items.is_subset(&rule.items) {
            return Err(bad("sensitive_items must be a subset of items".into()));
        }
        if rule
            .valid_until
            .is_some_and(|until| until < rule.valid_from)
        {
            return Err(bad("valid_until is before valid_from".into()));
        }
        if !seen.insert(rule.flow_id.clone()) {
            return Err(bad("appears twice".into()));
        }
    }
    Ok(file.flow)
}

fn validate_code(s: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err("must be 1-64 characters of A-Z a-z 0-9 . _ -".into())
    }
}

fn validate_item(s: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` must be 1-64 characters of a-z 0-9 . _ starting with a letter"
        ))
    }
}

/// The flow list in force, indexed by flow id.
#[derive(Debug, Clone, Default)]
pub struct FlowIndex {
    /// Version number in the store (0 = empty list, nothing allowed).
    pub version: u64,
    by_id: HashMap<String, FlowRule>,
}

impl FlowIndex {
    /// Indexes validated rules.
    pub fn new(version: u64, rules: Vec<FlowRule>) -> Self {
        let by_id = rules.into_iter().map(|r| (r.flow_id.clone(), r)).collect();
        Self { version, by_id }
    }

    /// Every rule, sorted by flow id.
    pub fn rules(&self) -> Vec<&FlowRule> {
        let mut rules: Vec<&FlowRule> = self.by_id.values().collect();
        rules.sort_by(|a, b| a.flow_id.cmp(&b.flow_id));
        rules
    }

    /// The rule for a flow id.
    pub fn get(&self, flow_id: &str) -> Option<&FlowRule> {
        self.by_id.get(flow_id)
    }

    /// Rules in which `org` may take part, as requester or provider, sorted by id.
    pub fn for_org(&self, id: &OrgId, kind: OrgKind) -> Vec<&FlowRule> {
        let mut rules: Vec<&FlowRule> = self
            .by_id
            .values()
            .filter(|r| r.requester.matches(id, kind) || r.provider.matches(id, kind))
            .collect();
        rules.sort_by(|a, b| a.flow_id.cmp(&b.flow_id));
        rules
    }

    /// Items `provider` may be asked for under some flow (for deposit checks).
    pub fn providable_items(&self, id: &OrgId, kind: OrgKind) -> BTreeSet<&str> {
        self.by_id
            .values()
            .filter(|r| r.provider.matches(id, kind))
            .flat_map(|r| r.items.iter().map(String::as_str))
            .collect()
    }
}

/// An org as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct OrgRef<'a> {
    /// Org id.
    pub id: &'a OrgId,
    /// Org kind.
    pub kind: OrgKind,
}

/// The parts of a query the flow list judges.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// Flow id quoted by the requester.
    pub flow_id: &'a str,
    /// Procedure quoted by the requester.
    pub procedure: &'a str,
    /// Items asked for.
    pub items: &'a [&'a str],
}

/// A query the flow list allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The rule that allows it.
    pub rule: &'a FlowRule,
    /// True if any asked item is sensitive: the answer waits for approval.
    pub needs_approval: bool,
}

/// Why the flow list refuses a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No row covers this flow, procedure, requester and provider.
    NotOnFlowList(&'static str),
    /// The row exists but is not in force today.
    FlowNotInForce,
    /// An asked item is not allowed by the row.
    ItemNotAllowed(String),
}

impl Denial {
    /// The interface error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Denial::NotOnFlowList(_) => ErrorCode::NotOnFlowList,
            Denial::FlowNotInForce => ErrorCode::FlowNotInForce,
            Denial::ItemNotAllowed(_) => ErrorCode::ItemNotAllowed,
        }
    }

    /// As a refusal for the client.
    pub fn to_error(&self) -> BrokerError {
        let message = match self {
            Denial::NotOnFlowList(why) => format!("the flow list does not allow this query: {why}"),
            Denial::FlowNotInForce => "the flow is not in force on this date".to_string(),
            Denial::ItemNotAllowed(item) => format!("item `{item}` is not allowed by this flow"),
        };
        BrokerError::refused(self.code(), message)
    }
}

/// The day an instant falls on in Japan, and Japan Standard Time: the flow
/// list's first and last days in force are days of the Japanese calendar, so
/// a flow ending on 31 March is not in force at 00:30 JST on 1 April (still
/// 31 March in UTC). Defined with the wire's dates, for every layer.
pub use kakehashi_interfaces::datetime::{japanese_day, JST};

/// Checks a query against the flow list in force on `today`.
pub fn check<'a>(
    index: &'a FlowIndex,
    requester: OrgRef<'_>,
    provider: OrgRef<'_>,
    asked: Asked<'_>,
    today: Date,
) -> Result<Decision<'a>, Denial> {
    let rule = index
        .get(asked.flow_id)
        .ok_or(Denial::NotOnFlowList("unknown flow id"))?;
    if rule.procedure != asked.procedure {
        return Err(Denial::NotOnFlowList(
            "the procedure does not match the flow",
        ));
    }
    if !rule.requester.matches(requester.id, requester.kind) {
        return Err(Denial::NotOnFlowList(
            "this org may not ask under this flow",
        ));
    }
    if !rule.provider.matches(provider.id, provider.kind) {
        return Err(Denial::NotOnFlowList(
            "the provider does not answer under this flow",
        ));
    }
    if today < rule.valid_from || rule.valid_until.is_some_and(|until| today > until) {
        return Err(Denial::FlowNotInForce);
    }
    if let Some(item) = asked.items.iter().find(|item| !rule.items.contains(**item)) {
        return Err(Denial::ItemNotAllowed((*item).to_string()));
    }
    let needs_approval = asked
        .items
        .iter()
        .any(|item| rule.sensitive_items.contains(*item));
    Ok(Decision {
        rule,
        needs_approval,
    })
}

/// Loads the flow list in force: the highest approved version (an empty
/// index if none was ever approved).
pub async fn load_current(pools: &Pools) -> Result<FlowIndex, BrokerError> {
    let latest: Option<(i64, String)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT version, body FROM flow_lists WHERE approved_at IS NOT NULL \
             ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
    });
    match latest {
        None => Ok(FlowIndex::default()),
        Some((version, body)) => Ok(FlowIndex::new(
            u64::try_from(version).unwrap_or(0),
            parse_flow_list(&body)?,
        )),
    }
}

/// The realistic sample list the dev environment loads.
pub const SAMPLE_FLOW_LIST: &str = include_str!("../sample/flows.toml");

#[cfg(test)]
mod tests {
    #[test]
    fn the_day_in_force_is_the_day_in_japan() {
        use time::macros::{date, datetime};
        assert_eq!(
            super::japanese_day(datetime!(2031-03-31 15:30 UTC)),
            date!(2031 - 04 - 01)
        );
        assert_eq!(
            super::japanese_day(datetime!(2031-03-31 14:59 UTC)),
            date!(2031 - 03 - 31)
        );
    }

    use super::*;
    use time::macros::date;

    fn index() -> FlowIndex {
        FlowIndex::new(1, parse_flow_list(SAMPLE_FLOW_LIST).unwrap())
    }

    fn org(s: &str) -> OrgId {
        OrgId::new(s).unwrap()
    }

    #[test]
    fn sample_list_allows_the_union_to_ask_a_city_for_income() {
        let index = index();
        let union = org("union-saitama");
        let city = org("city-saitama");
        let d = check(
            &index,
            OrgRef {
                id: &union,
                kind: OrgKind::Union,
            },
            OrgRef {
                id: &city,
                kind: OrgKind::Municipality,
            },
            Asked {
                flow_id: "F-0120",
                procedure: "premium-calculation",
                items: &["local_tax.income"],
            },
            date!(2026 - 11 - 23),
        )
        .unwrap();
        assert!(!d.needs_approval);
    }

    #[test]
    fn denials_name_their_reason() {
        let index = index();
        let union = org("union-saitama");
        let city = org("city-saitama");
        let u = OrgRef {
            id: &union,
            kind: OrgKind::Union,
        };
        let c = OrgRef {
            id: &city,
            kind: OrgKind::Municipality,
        };
        let today = date!(2026 - 11 - 23);
        let ask = |flow, proc_, items| Asked {
            flow_id: flow,
            procedure: proc_,
            items,
        };
        assert!(matches!(
            check(
                &index,
                u,
                c,
                ask("F-9999", "premium-calculation", &["local_tax.income"]),
                today
            ),
            Err(Denial::NotOnFlowList(_))
        ));
        // Wrong requester: a city may not ask a city under the union's flow.
        assert!(matches!(
            check(
                &index,
                c,
                c,
                ask("F-0120", "premium-calculation", &["local_tax.income"]),
                today
            ),
            Err(Denial::NotOnFlowList(_))
        ));
        assert_eq!(
            check(
                &index,
                u,
                c,
                ask("F-0120", "premium-calculation", &["resident.address"]),
                today
            ),
            Err(Denial::ItemNotAllowed("resident.address".into()))
        );
        assert_eq!(
            check(
                &index,
                u,
                c,
                ask("F-0120", "premium-calculation", &["local_tax.income"]),
                date!(2010 - 01 - 01)
            ),
            Err(Denial::FlowNotInForce)
        );
        assert!(matches!(
            check(
                &index,
                u,
                c,
                ask("F-0120", "other-procedure", &["local_tax.income"]),
                today
            ),
            Err(Denial::NotOnFlowList(_))
        ));
    }

    #[test]
    fn sensitive_items_need_approval() {
        let index = index();
        let union = org("union-saitama");
        let city = org("city-saitama");
        let d = check(
            &index,
            OrgRef {
                id: &union,
                kind: OrgKind::Union,
            },
            OrgRef {
                id: &city,
                kind: OrgKind::Municipality,
            },
            Asked {
                flow_id: "F-0121",
                procedure: "benefit-reduction",
                items: &["welfare.public_assistance"],
            },
            date!(2026 - 11 - 23),
        )
        .unwrap();
        assert!(d.needs_approval);
    }

    #[test]
    fn bad_lists_are_refused_with_the_flow_named() {
        let bad = SAMPLE_FLOW_LIST.replace(
            "sensitive_items = [\"welfare.public_assistance\"]",
            "sensitive_items = [\"x.y\"]",
        );
        let err = parse_flow_list(&bad).unwrap_err().to_string();
        assert!(err.contains("F-0121"), "{err}");
        assert!(parse_flow_list("[[flow]]\nflow_id = 1").is_err());
    }
}
