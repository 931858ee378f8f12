//! Deposited copies (副本, R9): each provider's item values per person, in its
//! own partition (rows keyed by provider), encrypted at rest and bound to
//! provider and person code. A newer deposit for a person replaces the older.

use std::collections::BTreeMap;

use kakehashi_interfaces::OrgId;
use zeroize::Zeroizing;

use crate::error::BrokerError;
use crate::keys::Keyring;
use crate::store::{now_rfc3339, Pools};

fn context(provider: &OrgId, person_code: &str) -> Vec<u8> {
    format!("copy|{provider}|{person_code}").into_bytes()
}

/// One person's copy as JSON text: `{item: value, …}`. Kept zeroized in memory.
pub type CopyJson = Zeroizing<Vec<u8>>;

/// Replaces the copies of several persons in one transaction. Returns, per
/// entry, whether an older copy was replaced.
pub async fn deposit_batch(
    pools: &Pools,
    keys: &Keyring,
    provider: &OrgId,
    entries: &[(String, CopyJson)],
) -> Result<Vec<bool>, BrokerError> {
    let now = now_rfc3339();
    let sealed: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(code, json)| Ok((code.as_str(), keys.encrypt(json, &context(provider, code))?)))
        .collect::<Result<_, BrokerError>>()?;
    let replaced = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        let mut replaced = Vec::with_capacity(sealed.len());
        for (code, cipher) in &sealed {
            let deleted =
                sqlx::query("DELETE FROM copies WHERE provider = $1 AND person_code = $2")
                    .bind(provider.as_str())
                    .bind(*code)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            sqlx::query("INSERT INTO copies (provider, person_code, cipher, deposited_at) VALUES ($1, $2, $3, $4)")
                .bind(provider.as_str())
                .bind(*code)
                .bind(cipher)
                .bind(&now)
                .execute(&mut *tx)
                .await?;
            replaced.push(deleted > 0);
        }
        tx.commit().await?;
        replaced
    });
    Ok(replaced)
}

/// The query path's one read: maps the requester's code to the provider's
/// code and fetches the provider's copy in a single statement (one round trip
/// to the database instead of two on the hot path).
pub async fn read_for_query(
    pools: &Pools,
    keys: &Keyring,
    requester: &OrgId,
    requester_code: &str,
    provider: &OrgId,
) -> Result<
    (
        crate::identity::MappedCode,
        Option<BTreeMap<String, serde_json::Value>>,
    ),
    BrokerError,
> {
    use crate::identity::MappedCode;
    let row: Option<(Option<String>, Option<Vec<u8>>)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as(
            "SELECT p.code, c.cipher FROM person_codes r
             LEFT JOIN person_codes p ON p.person_id = r.person_id AND p.org_id = $3
             LEFT JOIN copies c ON c.provider = $3 AND c.person_code = p.code
             WHERE r.org_id = $1 AND r.code = $2",
        )
        .bind(requester.as_str())
        .bind(requester_code)
        .bind(provider.as_str())
        .fetch_optional(pool)
        .await?
    });
    Ok(match row {
        None => (MappedCode::UnknownToRequester, None),
        Some((None, _)) => (MappedCode::NotLinkedByProvider, None),
        Some((Some(code), None)) => (MappedCode::Provider(code), None),
        Some((Some(code), Some(cipher))) => {
            let plain = keys.decrypt(&cipher, &context(provider, &code))?;
            let map = serde_json::from_slice(&plain)
                .map_err(|_| BrokerError::Config("a stored copy is not valid JSON".into()))?;
            (MappedCode::Provider(code), Some(map))
        }
    })
}
