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
/// code and fetches the provider's copy, batched with concurrent queries'
/// reads into one statement ([`crate::lookups`]), then opens the copy.
/// Returns the stamp the answer holds under, too, when it came from memory
/// unconfirmed (its record must be committed under it);
/// `fresh` asks for an answer confirmed first. `None`: a copy from memory
/// did not open, so it may be one the database no longer holds — answer
/// again, confirmed, before calling it a fault.
pub async fn read_for_query(
    lookups: &crate::lookups::Lookups,
    keys: &Keyring,
    requester: &OrgId,
    requester_code: &str,
    provider: &OrgId,
    fresh: bool,
) -> Result<
    Option<(
        crate::identity::MappedCode,
        Option<BTreeMap<String, serde_json::Value>>,
        Option<crate::lookups::LookupStamp>,
    )>,
    BrokerError,
> {
    use crate::identity::MappedCode;
    use crate::lookups::{Found, Lookup};
    let (found, generation) = lookups
        .find(
            Lookup {
                requester: requester.as_str().to_string(),
                requester_code: requester_code.to_string(),
                provider: provider.as_str().to_string(),
            },
            fresh,
        )
        .await?;
    let (mapped, copy) = match found {
        Found::UnknownToRequester => (MappedCode::UnknownToRequester, None),
        Found::NotLinkedByProvider => (MappedCode::NotLinkedByProvider, None),
        Found::Provider { code, cipher: None } => (MappedCode::Provider(code), None),
        Found::Provider {
            code,
            cipher: Some(cipher),
        } => {
            let opened = keys
                .decrypt(&cipher, &context(provider, &code))
                .and_then(|plain| {
                    serde_json::from_slice(&plain)
                        .map_err(|_| BrokerError::Corrupt("a stored copy is not valid JSON".into()))
                });
            match opened {
                Ok(map) => (MappedCode::Provider(code), Some(map)),
                // A copy from memory may be one the database no longer
                // holds: ask again, confirmed, before calling it a fault.
                Err(_) if generation.is_some() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    };
    Ok(Some((mapped, copy, generation)))
}
