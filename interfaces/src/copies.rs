//! Deposited copies (副本, R9): a provider's item values per person, sent as
//! JSON Lines to `POST /v1/copies`.

use crate::ids::{ItemCode, PersonCode};
use crate::person::LineIssue;
use crate::InvalidInput;
use schemars::gen::SchemaGenerator;
use schemars::schema::{InstanceType, Metadata, Schema, SchemaObject, SingleOrVec};
use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

pub use crate::json::parse_jsonl;

/// The longest text value an item may hold, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// The most items one deposit line may carry.
pub const MAX_ITEMS_PER_DEPOSIT: usize = 256;

/// The value of one data item: a JSON string, number or boolean. Never
/// printed by `Debug` (it is personal data); null, arrays and objects are
/// refused so that every item is one scalar a provider can vouch for.
#[derive(Clone, PartialEq, Eq)]
pub enum ItemValue {
    /// Text, at most [`MAX_TEXT_CHARS`] characters.
    Text(String),
    /// A finite JSON number (integer or decimal), kept exactly as serde_json
    /// reads it.
    Number(serde_json::Number),
    /// A flag.
    Bool(bool),
}

impl ItemValue {
    /// A text value, checked against [`MAX_TEXT_CHARS`].
    pub fn text(s: impl Into<String>) -> Result<Self, InvalidInput> {
        let s = s.into();
        if s.chars().count() > MAX_TEXT_CHARS {
            return Err(InvalidInput::new(
                "items",
                "a text value is longer than 4096 characters",
            ));
        }
        Ok(Self::Text(s))
    }

    /// The value as a `serde_json::Value`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ItemValue::Text(s) => serde_json::Value::String(s.clone()),
            ItemValue::Number(n) => serde_json::Value::Number(n.clone()),
            ItemValue::Bool(b) => serde_json::Value::Bool(*b),
        }
    }
}

impl std::fmt::Debug for ItemValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ItemValue(****)")
    }
}

impl From<i64> for ItemValue {
    fn from(n: i64) -> Self {
        ItemValue::Number(n.into())
    }
}

impl From<bool> for ItemValue {
    fn from(b: bool) -> Self {
        ItemValue::Bool(b)
    }
}

impl From<&str> for ItemValue {
    /// Text without the length check; for literals in code and tests.
    fn from(s: &str) -> Self {
        ItemValue::Text(s.to_string())
    }
}

impl Serialize for ItemValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ItemValue::Text(s) => serializer.serialize_str(s),
            ItemValue::Number(n) => n.serialize(serializer),
            ItemValue::Bool(b) => serializer.serialize_bool(*b),
        }
    }
}

/// Builds values by hand so that no error message ever contains the value
/// (serde's defaults would echo it, e.g. "invalid type: string \"…\"").
struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = ItemValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string, number or boolean")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<ItemValue, E> {
        Ok(ItemValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ItemValue, E> {
        Ok(ItemValue::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ItemValue, E> {
        Ok(ItemValue::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ItemValue, E> {
        serde_json::Number::from_f64(v)
            .map(ItemValue::Number)
            .ok_or_else(|| E::custom("an item value must be a finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ItemValue, E> {
        ItemValue::text(v).map_err(|e| E::custom(e.reason))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<ItemValue, E> {
        ItemValue::text(v).map_err(|e| E::custom(e.reason))
    }

    fn visit_unit<E: de::Error>(self) -> Result<ItemValue, E> {
        Err(E::custom(
            "an item value must be a string, number or boolean, not null",
        ))
    }

    fn visit_none<E: de::Error>(self) -> Result<ItemValue, E> {
        self.visit_unit()
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<ItemValue, A::Error> {
        Err(de::Error::custom(
            "an item value must be a string, number or boolean, not an array",
        ))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<ItemValue, A::Error> {
        Err(de::Error::custom(
            "an item value must be a string, number or boolean, not an object",
        ))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<ItemValue, E> {
        Err(E::custom(
            "an item value must be a string, number or boolean",
        ))
    }
}

impl<'de> Deserialize<'de> for ItemValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

impl JsonSchema for ItemValue {
    fn schema_name() -> String {
        "ItemValue".to_string()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        SchemaObject {
            metadata: Some(Box::new(Metadata {
                description: Some(
                    "One item value: a string (at most 4096 characters), a finite number or a boolean".to_string(),
                ),
                ..Default::default()
            })),
            instance_type: Some(SingleOrVec::Vec(vec![
                InstanceType::String,
                InstanceType::Number,
                InstanceType::Boolean,
            ])),
            ..Default::default()
        }
        .into()
    }
}

/// One JSON Lines line of `POST /v1/copies`: the provider's current values
/// for one person, replacing any earlier copy of that person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "CopyDepositWire")]
pub struct CopyDeposit {
    /// The person, by the depositing org's own code.
    pub person: PersonCode,
    /// Item values, 1 to 256 items.
    pub items: BTreeMap<ItemCode, ItemValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyDepositWire {
    person: PersonCode,
    items: BTreeMap<ItemCode, ItemValue>,
}

impl TryFrom<CopyDepositWire> for CopyDeposit {
    type Error = InvalidInput;
    fn try_from(w: CopyDepositWire) -> Result<Self, Self::Error> {
        if w.items.is_empty() || w.items.len() > MAX_ITEMS_PER_DEPOSIT {
            return Err(InvalidInput::new("items", "must hold 1 to 256 items"));
        }
        if let Some(item) = w
            .items
            .iter()
            .find_map(|(k, v)| holds_a_number(v).then_some(k))
        {
            return Err(InvalidInput::new(
                "items",
                format!(
                    "項目 {item} の値に個人番号とみられる12桁の数字（検査用数字が合うもの）があります。個人番号は連携しません。個人番号でなければ、日付に区切りを入れるなど書き方を変えてください / the value of item {item} holds what looks like an Individual Number (12 digits whose check digit matches); the exchange never carries Individual Numbers (R4); if it is not one, write the value another way (e.g. a date with separators)"
                ),
            ));
        }
        Ok(Self {
            person: w.person,
            items: w.items,
        })
    }
}

/// Whether a deposited value holds an Individual Number however it is
/// written (in text, as [`crate::individual_number::spans_in`] finds them
/// for masking; or as a twelve-digit number). A deposit is where a number
/// would enter the exchange and travel on in answers, so it stops there.
fn holds_a_number(value: &ItemValue) -> bool {
    match value {
        ItemValue::Text(s) => !crate::individual_number::spans_in(s).is_empty(),
        // Whole numbers of 12 digits, also written as a decimal
        // (`123456789018.0`). Not 11 (a number whose leading zero a
        // spreadsheet took): one in eleven of all 11-digit values, such as
        // international phone numbers, would be refused with them.
        ItemValue::Number(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..1e12).contains(f))
                    .map(|f| f as u64)
            })
            .filter(|w| (100_000_000_000..1_000_000_000_000).contains(w))
            .is_some_and(|w| {
                crate::individual_number::IndividualNumber::new(&w.to_string()).is_ok()
            }),
        ItemValue::Bool(_) => false,
    }
}

/// The answer to `POST /v1/copies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DepositReport {
    /// Persons whose copy was stored (new or replacing an earlier one). When
    /// one batch names a person twice, the later line wins and counts once.
    pub applied: u64,
    /// How many of `applied` replaced an earlier copy.
    pub replaced: u64,
    /// Lines not applied, with the reason; the rest of the batch still applies.
    pub rejected: Vec<LineIssue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deposit(items: &str) -> Result<CopyDeposit, String> {
        let line = format!(r#"{{"person":"P-000001","items":{items}}}"#);
        serde_json::from_str(&line).map_err(|e| e.to_string())
    }

    #[test]
    fn a_value_holding_an_individual_number_is_refused_without_echoing_it() {
        for items in [
            r#"{"resident.note":"番号 123456789018 を記入"}"#,
            r#"{"resident.note":"1234-5678-9018"}"#,
            r#"{"resident.note":"１２３４５６７８９０１８"}"#,
            r#"{"resident.number":123456789018}"#,
            r#"{"resident.number":123456789018.0}"#,
        ] {
            let err = deposit(items).expect_err(items);
            assert!(err.contains("Individual Number"), "{err}");
            assert!(err.contains("resident."), "names the item: {err}");
            for shown in ["123456789018", "9018", "１２３４"] {
                assert!(!err.contains(shown), "echoes the value: {err}");
            }
        }
    }

    #[test]
    fn values_that_are_not_an_individual_number_are_kept() {
        for items in [
            // Twelve digits whose check digit does not match.
            r#"{"resident.note":"123456789012"}"#,
            r#"{"local_tax.income":3500000}"#,
            r#"{"local_tax.income":3500000.5}"#,
            // Eleven digits are not taken for a number that lost its zero.
            r#"{"resident.phone":12345678903}"#,
            r#"{"resident.phone":"090-1234-5678"}"#,
            r#"{"welfare.public_assistance":true}"#,
        ] {
            assert!(deposit(items).is_ok(), "{items}");
        }
    }
}
