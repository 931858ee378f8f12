//! Person registration (R3): the union sends the basic four facts and the
//! Individual Number of each insured person, as JSON Lines to
//! `POST /v1/persons`, and gets back each person's code and branch number,
//! plus a confirmation list (確認リスト) of lines that were not applied.

use crate::ids::{BranchNumber, PersonCode};
use crate::individual_number::IndividualNumber;
use crate::InvalidInput;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::Date;

/// The longest name or address, in characters.
pub const MAX_TEXT_CHARS: usize = 200;

/// Sex (性別) as recorded in the resident register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sex {
    /// 男.
    Male,
    /// 女.
    Female,
    /// Not recorded or not known (不明).
    Unknown,
}

/// The basic four facts (基本4情報). `Debug` shows none of them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "BasicFactsWire")]
pub struct BasicFacts {
    /// Full name, 1–200 characters, no control characters.
    pub name: String,
    /// Sex.
    pub sex: Sex,
    /// Date of birth, `YYYY-MM-DD`.
    #[serde(with = "crate::datetime::date")]
    #[schemars(with = "crate::schema::DateString")]
    pub birth_date: Date,
    /// Address, 1–200 characters, no control characters.
    pub address: String,
}

impl std::fmt::Debug for BasicFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BasicFacts(****)")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicFactsWire {
    name: String,
    sex: Sex,
    #[serde(with = "crate::datetime::date")]
    birth_date: Date,
    address: String,
}

/// Checks a name or address: 1–200 characters, not blank, no control
/// characters (they would corrupt CSV exports and terminal output).
fn check_text(field: &'static str, s: &str) -> Result<(), InvalidInput> {
    let chars = s.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS || s.trim().is_empty() {
        return Err(InvalidInput::new(
            field,
            "must be 1-200 characters and not blank",
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl BasicFacts {
    /// Validates the four facts.
    pub fn new(
        name: String,
        sex: Sex,
        birth_date: Date,
        address: String,
    ) -> Result<Self, InvalidInput> {
        check_text("name", &name)?;
        check_text("address", &address)?;
        Ok(Self {
            name,
            sex,
            birth_date,
            address,
        })
    }
}

impl TryFrom<BasicFactsWire> for BasicFacts {
    type Error = InvalidInput;
    fn try_from(w: BasicFactsWire) -> Result<Self, Self::Error> {
        Self::new(w.name, w.sex, w.birth_date, w.address)
    }
}

/// One JSON Lines line of `POST /v1/persons`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonRegistration {
    /// The basic four facts.
    pub basic: BasicFacts,
    /// The person's Individual Number; stored by the broker, never returned.
    pub individual_number: IndividualNumber,
    /// The day the person lost eligibility with this insurer (資格喪失日);
    /// absent while insured. Each registration line states the person's
    /// current state, so a line without it restores eligibility. The broker
    /// keeps the person's copies five years after this day (R15), then erases
    /// them. Only an insurer reports it; on another org's link line it is
    /// refused.
    #[serde(
        default,
        with = "crate::datetime::date_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<crate::schema::DateString>")]
    pub eligibility_lost_on: Option<Date>,
}

/// One applied registration line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisteredPerson {
    /// The line of the batch (1-based).
    pub line: u64,
    /// The registering org's code for this person.
    pub person_code: PersonCode,
    /// The insured branch number; present when the registering org is an
    /// insurer (the union), absent when another org only links its records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_number: Option<BranchNumber>,
    /// Whether the person was new (false: already registered, facts updated).
    pub created: bool,
}

/// Why a batch line was not applied. Shared by registration and deposit
/// reports; new reasons may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineReason {
    /// The line is not valid JSON or fails validation.
    InvalidInput,
    /// The line has no valid Individual Number where one is required.
    MissingIndividualNumber,
    /// The person is already linked to a different Individual Number (R3):
    /// not applied, to be checked by a person.
    IndividualNumberConflict,
    /// No person with this code or number is known.
    UnknownPerson,
    /// The org may not deposit or register this item.
    ItemNotAllowed,
    /// The same person appears more than once in the batch where that is not allowed.
    DuplicateInBatch,
}

impl LineReason {
    /// The snake_case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LineReason::InvalidInput => "invalid_input",
            LineReason::MissingIndividualNumber => "missing_individual_number",
            LineReason::IndividualNumberConflict => "individual_number_conflict",
            LineReason::UnknownPerson => "unknown_person",
            LineReason::ItemNotAllowed => "item_not_allowed",
            LineReason::DuplicateInBatch => "duplicate_in_batch",
        }
    }
}

impl std::fmt::Display for LineReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A batch line that was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LineIssue {
    /// The line of the batch (1-based, counting blank lines).
    pub line: u64,
    /// Stable reason code.
    pub reason: LineReason,
    /// Human-readable explanation; never contains item values or Individual Numbers.
    pub message: String,
}

/// The answer to `POST /v1/persons`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationReport {
    /// Lines applied, in line order.
    pub applied: Vec<RegisteredPerson>,
    /// Lines not applied (確認リスト), in line order.
    pub confirmation_list: Vec<LineIssue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts() {
        let ok = r#"{"name":"山田 太郎","sex":"male","birth_date":"1950-04-01","address":"埼玉県さいたま市浦和区1-1"}"#;
        let f: BasicFacts = serde_json::from_str(ok).unwrap();
        assert_eq!(f.sex, Sex::Male);
        assert!(!format!("{f:?}").contains("山田"));
        for bad in [
            ok.replace("山田 太郎", ""),
            ok.replace("山田 太郎", "   "),
            ok.replace("山田 太郎", "a\\u0007b"),
            ok.replace("山田 太郎", &"あ".repeat(201)),
            ok.replace("1950-04-01", "1950-02-30"),
            ok.replace("male", "m"),
            ok.replace('}', ",\"extra\":1}"),
        ] {
            assert!(serde_json::from_str::<BasicFacts>(&bad).is_err(), "{bad}");
        }
        assert!(
            serde_json::from_str::<BasicFacts>(&ok.replace("山田 太郎", &"あ".repeat(200))).is_ok()
        );
    }
}
