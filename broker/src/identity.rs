//! Persons and per-organisation codes (符号, R3–R4).
//!
//! The union registers insured persons with the basic four facts and the
//! Individual Number; the broker assigns an insured branch number unique per
//! insurer and a random code per org. Other orgs link their own records by the
//! Individual Number once and get their own code. Codes are random, so two
//! orgs' codes for one person cannot be linked by either org; the Individual
//! Number is stored only encrypted, found through a keyed hash.

use kakehashi_interfaces::OrgId;

use crate::error::BrokerError;
use crate::keys::Keyring;
use crate::store::{now_rfc3339, Pools};

/// One registration line, already validated by `interfaces`.
pub struct PersonInput<'a> {
    /// The Individual Number's 12 digits.
    pub number: &'a str,
    /// The basic four facts, canonically serialized (for encryption and matching).
    pub facts: &'a [u8],
    /// The day eligibility was lost (`YYYY-MM-DD`); `None` while insured.
    pub eligibility_lost_on: Option<String>,
}

/// What happened to one registration line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Applied: the org's code and the branch number.
    Applied {
        /// The registering org's person code.
        code: String,
        /// Insured branch number (8 digits, unique per insurer).
        branch_number: String,
        /// False if the person existed and was updated.
        created: bool,
    },
    /// Not applied: a person with the same four facts is linked to another number.
    NumberConflict,
}

/// Domain tags keep the keyed hashes of different secrets apart.
const NUMBER_DOMAIN: &str = "individual-number";
const FACTS_DOMAIN: &str = "basic-facts";

fn random_code() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn random_id() -> String {
    format!("pr-{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// Registers a batch of insured persons for `insurer` in one transaction.
/// Each input yields its own outcome; a conflicting line changes nothing.
pub async fn register_batch(
    pools: &Pools,
    keys: &Keyring,
    insurer: &OrgId,
    inputs: &[PersonInput<'_>],
) -> Result<Vec<Registered>, BrokerError> {
    let now = now_rfc3339();
    let prepared: Vec<_> = inputs
        .iter()
        .map(|input| {
            let number_hash = keys.lookup_hash(NUMBER_DOMAIN, input.number.as_bytes());
            let facts_hash = keys.lookup_hash(FACTS_DOMAIN, input.facts);
            (input, number_hash, facts_hash)
        })
        .collect();
    let outcomes = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let mut outcomes = Vec::with_capacity(prepared.len());
        for (input, number_hash, facts_hash) in &prepared {
            let existing: Option<(String, String)> =
                sqlx::query_as("SELECT id, branch_number FROM persons WHERE number_hash = $1")
                    .bind(number_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            let (person_id, branch_number, created) = match existing {
                Some((id, branch)) => {
                    // Same number: the facts may have changed (e.g. a move),
                    // and eligibility may have been lost or regained.
                    sqlx::query("UPDATE persons SET eligibility_lost_on = $1, updated_at = $2 WHERE id = $3")
                        .bind(&input.eligibility_lost_on)
                        .bind(&now)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    (id, branch, false)
                }
                None => {
                    // Identity-confirmation data are erased after a year
                    // (R15), so this catches conflicts within that year.
                    let same_facts: Option<(String,)> = sqlx::query_as(
                        "SELECT person_id FROM person_facts WHERE insurer = $1 AND facts_hash = $2 LIMIT 1",
                    )
                    .bind(insurer.as_str())
                    .bind(facts_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if same_facts.is_some() {
                        outcomes.push(Registered::NumberConflict);
                        continue;
                    }
                    // A counter, not MAX(branch_number): an erased person's
                    // branch number is never given to someone else.
                    let (next,): (i64,) = sqlx::query_as(
                        "INSERT INTO branch_counters (insurer, last) VALUES ($1, 1)
                         ON CONFLICT (insurer) DO UPDATE SET last = branch_counters.last + 1
                         RETURNING last",
                    )
                    .bind(insurer.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                    let branch = format!("{next:08}");
                    let id = random_id();
                    let number_cipher =
                        keys.encrypt(input.number.as_bytes(), format!("number|{id}").as_bytes())?;
                    sqlx::query(
                        "INSERT INTO persons (id, insurer, branch_number, number_hash, number_cipher, eligibility_lost_on, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                    )
                    .bind(&id)
                    .bind(insurer.as_str())
                    .bind(&branch)
                    .bind(number_hash)
                    .bind(&number_cipher)
                    .bind(&input.eligibility_lost_on)
                    .bind(&now)
                    .execute(&mut *tx)
                    .await?;
                    (id, branch, true)
                }
            };
            // Every registration re-confirms the facts and restarts their year.
            let facts_cipher =
                keys.encrypt(input.facts, format!("facts|{person_id}").as_bytes())?;
            sqlx::query(
                "INSERT INTO person_facts (person_id, insurer, facts_hash, facts_cipher, confirmed_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (person_id) DO UPDATE SET facts_hash = excluded.facts_hash,
                     facts_cipher = excluded.facts_cipher, confirmed_at = excluded.confirmed_at",
            )
            .bind(&person_id)
            .bind(insurer.as_str())
            .bind(facts_hash)
            .bind(&facts_cipher)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
            let code = ensure_code_tx!(&mut *tx, insurer, &person_id, &now);
            outcomes.push(Registered::Applied {
                code,
                branch_number,
                created,
            });
        }
        tx.commit().await?;
        outcomes
    });
    Ok(outcomes)
}

/// The org's code for a person, created on first use (inside a transaction).
macro_rules! ensure_code_tx {
    ($tx:expr, $org:expr, $person:expr, $now:expr) => {{
        let found: Option<(String,)> = sqlx::query_as("SELECT code FROM person_codes WHERE org_id = $1 AND person_id = $2")
            .bind($org.as_str())
            .bind($person)
            .fetch_optional($tx)
            .await?;
        match found {
            Some((code,)) => code,
            None => {
                let code = random_code();
                sqlx::query("INSERT INTO person_codes (org_id, code, person_id, created_at) VALUES ($1, $2, $3, $4)")
                    .bind($org.as_str())
                    .bind(&code)
                    .bind($person)
                    .bind($now)
                    .execute($tx)
                    .await?;
                code
            }
        }
    }};
}
use ensure_code_tx;

/// Links an org's own records to registered persons by Individual Number, in
/// one transaction; `None` for a number no insurer has registered.
pub async fn link_batch(
    pools: &Pools,
    keys: &Keyring,
    org: &OrgId,
    numbers: &[&str],
) -> Result<Vec<Option<String>>, BrokerError> {
    let now = now_rfc3339();
    let hashes: Vec<Vec<u8>> = numbers
        .iter()
        .map(|n| keys.lookup_hash(NUMBER_DOMAIN, n.as_bytes()))
        .collect();
    let codes = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let mut codes = Vec::with_capacity(hashes.len());
        for hash in &hashes {
            let person: Option<(String,)> =
                sqlx::query_as("SELECT id FROM persons WHERE number_hash = $1")
                    .bind(hash)
                    .fetch_optional(&mut *tx)
                    .await?;
            match person {
                Some((person_id,)) => {
                    codes.push(Some(ensure_code_tx!(&mut *tx, org, &person_id, &now)))
                }
                None => codes.push(None),
            }
        }
        tx.commit().await?;
        codes
    });
    Ok(codes)
}

/// The person an org means by its code; `None` if the code is not that org's.
pub async fn resolve(
    pools: &Pools,
    org: &OrgId,
    code: &str,
) -> Result<Option<String>, BrokerError> {
    let row: Option<(String,)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as("SELECT person_id FROM person_codes WHERE org_id = $1 AND code = $2")
            .bind(org.as_str())
            .bind(code)
            .fetch_optional(pool)
            .await?
    });
    Ok(row.map(|(p,)| p))
}

/// How a requester's person code maps to the provider's (see
/// [`crate::copies::read_for_query`], which maps and reads in one statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappedCode {
    /// The provider's code for the person.
    Provider(String),
    /// The requester has no such code (or quoted another org's code).
    UnknownToRequester,
    /// The provider has never linked this person, so holds nothing about them.
    NotLinkedByProvider,
}

/// The insurer's code for a person known to `org` by `code` (for union-side lookups).
pub async fn code_at(
    pools: &Pools,
    person_id: &str,
    org: &OrgId,
) -> Result<Option<String>, BrokerError> {
    let row: Option<(String,)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as("SELECT code FROM person_codes WHERE org_id = $1 AND person_id = $2")
            .bind(org.as_str())
            .bind(person_id)
            .fetch_optional(pool)
            .await?
    });
    Ok(row.map(|(c,)| c))
}

/// Every org's code for one person (for the union's disclosure listing, R18).
pub async fn all_codes(
    pools: &Pools,
    person_id: &str,
) -> Result<Vec<(OrgId, String)>, BrokerError> {
    let rows: Vec<(String, String)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as("SELECT org_id, code FROM person_codes WHERE person_id = $1 ORDER BY org_id")
            .bind(person_id)
            .fetch_all(pool)
            .await?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(org, code)| Some((OrgId::new(org).ok()?, code)))
        .collect())
}
