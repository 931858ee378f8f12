//! Persons and per-organisation codes (符号, R2–R5).
//!
//! Persons are kept per insurer (医療保険者等ごとに区分管理): a union
//! registers its insured persons with the basic four facts and the
//! Individual Number, and gets a person of its own per number — with its own
//! facts, eligibility, insured branch number (unique within the insurer) and
//! code. A second insurer registering the same number neither finds nor
//! changes the first one's person.
//!
//! Other orgs (municipalities, agencies) *link* their own records by the
//! Individual Number and get their own code for the number. A linking org's
//! code names the number, not one insurer's person: a query names its
//! provider, and the broker maps the requester's code to the provider's code
//! for the same number — the provider's own person if the provider is an
//! insurer, its link if not. So a municipality asking union A about a number
//! that unions A and B both registered reaches union A's person, and each
//! union asking the municipality reaches the municipality's one record.
//!
//! Linking answers alike whether or not any insurer registered the number
//! (R5, no oracle): a valid number always gets the org's code. A link is in
//! force, though, only while some insurer has registered the number; until
//! then queries about it answer as about a person the provider holds nothing
//! about (`no_copy`).
//!
//! Codes are random, so two orgs' codes for one person cannot be linked by
//! either org; the Individual Number is stored only encrypted, found through
//! a keyed hash that every code also carries (so the mapping is one join).

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
            // The insurer's own person: another insurer's person with the
            // same number is another partition's, never found here.
            let existing: Option<(String, String)> = sqlx::query_as(
                "SELECT id, branch_number FROM persons WHERE insurer = $1 AND number_hash = $2",
            )
            .bind(insurer.as_str())
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
            let code = insurer_code_tx!(&mut *tx, insurer, &person_id, number_hash, &now);
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

/// The insurer's code for its own person, created on first use (inside a
/// transaction). A code the insurer already holds for the number without a
/// person (a link made before persons were kept per insurer) becomes its
/// person's, so the insurer keeps one code per number.
macro_rules! insurer_code_tx {
    ($tx:expr, $org:expr, $person:expr, $number_hash:expr, $now:expr) => {{
        let found: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT code, person_id FROM person_codes WHERE org_id = $1 AND number_hash = $2",
        )
        .bind($org.as_str())
        .bind($number_hash)
        .fetch_optional($tx)
        .await?;
        match found {
            Some((code, person)) => {
                if person.as_deref() != Some($person.as_str()) {
                    sqlx::query(
                        "UPDATE person_codes SET person_id = $1 WHERE org_id = $2 AND code = $3",
                    )
                    .bind($person)
                    .bind($org.as_str())
                    .bind(&code)
                    .execute($tx)
                    .await?;
                }
                code
            }
            None => {
                let code = random_code();
                sqlx::query(
                    "INSERT INTO person_codes (org_id, code, person_id, number_hash, created_at)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind($org.as_str())
                .bind(&code)
                .bind($person)
                .bind($number_hash)
                .bind($now)
                .execute($tx)
                .await?;
                code
            }
        }
    }};
}
use insurer_code_tx;

/// Links an org's own records to Individual Numbers, in one transaction:
/// the org's code for each number, created on first use.
///
/// Every valid number gets a code, whether or not an insurer has registered
/// it, so the answer tells the org nothing about other orgs' registrations
/// (R5). The link is in force while some insurer has registered the number
/// (see [`crate::lookups::find_all`]).
pub async fn link_batch(
    pools: &Pools,
    keys: &Keyring,
    org: &OrgId,
    numbers: &[&str],
) -> Result<Vec<String>, BrokerError> {
    let at = time::OffsetDateTime::now_utc();
    let now = crate::store::timestamp(at);
    let day_ago = crate::store::timestamp(at - time::Duration::days(1));
    let hashes: Vec<Vec<u8>> = numbers
        .iter()
        .map(|n| keys.lookup_hash(NUMBER_DOMAIN, n.as_bytes()))
        .collect();
    let codes = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let mut codes = Vec::with_capacity(hashes.len());
        for hash in &hashes {
            // Insert-or-keep in one statement: a concurrent link of the same
            // number (PostgreSQL) waits for the other's commit, then keeps it.
            // Linking again marks the code linked today, at most once a day
            // (a nightly re-link of every resident writes no row twice).
            let created: Option<(String,)> = sqlx::query_as(
                "INSERT INTO person_codes (org_id, code, person_id, number_hash, created_at, linked_at)
                 VALUES ($1, $2, NULL, $3, $4, $4)
                 ON CONFLICT (org_id, number_hash) DO UPDATE SET linked_at = excluded.linked_at
                 WHERE person_codes.linked_at < $5
                 RETURNING code",
            )
            .bind(org.as_str())
            .bind(random_code())
            .bind(hash)
            .bind(&now)
            .bind(&day_ago)
            .fetch_optional(&mut *tx)
            .await?;
            let code = match created {
                Some((code,)) => code,
                None => {
                    let (code,): (String,) = sqlx::query_as(
                        "SELECT code FROM person_codes WHERE org_id = $1 AND number_hash = $2",
                    )
                    .bind(org.as_str())
                    .bind(hash)
                    .fetch_one(&mut *tx)
                    .await?;
                    code
                }
            };
            codes.push(code);
        }
        tx.commit().await?;
        codes
    });
    Ok(codes)
}

/// What an org's code names: an insurer's own person, or (a linking org's
/// code) an Individual Number by its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeTarget {
    /// The insurer's person; `None` for a linking org's code.
    pub person_id: Option<String>,
    /// The keyed hash of the Individual Number.
    pub number_hash: Vec<u8>,
}

/// What an org means by its code; `None` if the code is not that org's.
pub async fn resolve(
    pools: &Pools,
    org: &OrgId,
    code: &str,
) -> Result<Option<CodeTarget>, BrokerError> {
    let row: Option<(Option<String>, Vec<u8>)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT person_id, number_hash FROM person_codes WHERE org_id = $1 AND code = $2",
        )
        .bind(org.as_str())
        .bind(code)
        .fetch_optional(pool)
        .await?
    });
    Ok(row.map(|(person_id, number_hash)| CodeTarget {
        person_id,
        number_hash,
    }))
}

/// How a requester's person code maps to the provider's (see
/// [`crate::copies::read_for_query`], which maps and reads in one statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappedCode {
    /// The provider's code for the person.
    Provider(String),
    /// The requester has no such code (or quoted another org's code).
    UnknownToRequester,
    /// The provider has never linked this person, so holds nothing about
    /// them — or the link is not in force yet: no insurer has registered
    /// the number.
    NotLinkedByProvider,
}

/// The codes under which orgs know the person or number `target` names, for
/// the union's disclosure listing (R18): the insurer's own code and every
/// linking org's code for the number. Another insurer's code for the same
/// number is another partition's and never listed (R2).
pub async fn all_codes(
    pools: &Pools,
    target: &CodeTarget,
) -> Result<Vec<(OrgId, String)>, BrokerError> {
    let rows: Vec<(String, String)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT org_id, code FROM person_codes
             WHERE (person_id IS NULL AND number_hash = $1) OR person_id = $2
             ORDER BY org_id",
        )
        .bind(&target.number_hash)
        .bind(target.person_id.as_deref())
        .fetch_all(pool)
        .await?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(org, code)| Some((OrgId::new(org).ok()?, code)))
        .collect())
}

/// The insurers other than the one `target` belongs to that registered the
/// same number: their exchanges are theirs (R2), even where a linking org's
/// code would find them.
pub async fn other_insurers(pools: &Pools, target: &CodeTarget) -> Result<Vec<OrgId>, BrokerError> {
    let rows: Vec<(String,)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT insurer FROM persons
             WHERE number_hash = $1 AND ($2 IS NULL OR id <> $2)
             ORDER BY insurer",
        )
        .bind(&target.number_hash)
        .bind(target.person_id.as_deref())
        .fetch_all(pool)
        .await?
    });
    Ok(rows
        .into_iter()
        .filter_map(|(org,)| OrgId::new(org).ok())
        .collect())
}
