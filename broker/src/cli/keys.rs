//! `kakehashi-broker keys`: status and rotation of the broker's keys
//! (docs/keys.md). Every change is logged in the operation log as
//! `host:<login name>` (R17).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use clap::Subcommand;

use crate::config::Config;
use crate::error::BrokerError;
use crate::keys::files::{self, Secret};
use crate::keys::registry::{self, Role};
use crate::keys::{activation_delay, dir_ids, seal_raw, unwrap_data_key, SEALER_FILE};
use crate::oplog::HostLog;
use crate::oplog::OpAction;
use crate::store::{self, timestamp, Pools};

/// Margin for clocks that differ between the broker and permit verifiers.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Data keys re-wrapped between two progress lines.
const PROGRESS_EVERY: usize = 1_000;

/// What to do with the keys.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Show the key ids the database records, this key directory's files,
    /// the data keys, and whether a node with this directory may start.
    Status,
    /// A new permit signing key: published at once, signing on every node
    /// once all have re-read the keys; the old key stays published until
    /// every permit it signed has expired.
    RotatePermit,
    /// Retire permit keys whose permits have all expired: they are no
    /// longer published and their files here are removed.
    RetirePermit,
    /// A new checkpoint key (records-sealer.pem); the old one's public half
    /// is kept as records-sealer-ID.pub so old checkpoints still verify.
    /// Each node signs with the new key from its next checkpoint after the
    /// file reaches it; no restart.
    RotateSealer,
    /// A new key-encryption key; every data key is re-wrapped under it in
    /// one transaction. Older kek files can be removed afterwards.
    RotateKek,
    /// Make a new data key now (otherwise made every `[keys] data_key_days`).
    NewDataKey,
}

fn refused(message: String) -> BrokerError {
    BrokerError::refused(kakehashi_interfaces::ErrorCode::InvalidInput, message)
}

fn later(by: Duration) -> String {
    let by = time::Duration::try_from(by).unwrap_or(time::Duration::ZERO);
    timestamp(time::OffsetDateTime::now_utc() + by)
}

/// Runs a `keys` command against the config's database and key directory.
pub async fn run(config: &Path, command: KeysCommand) -> Result<(), BrokerError> {
    let config = Config::load(config)?;
    let dir = config.keys.dir.clone();
    if !dir.join(files::LOOKUP_FILE).exists() {
        return Err(refused(format!(
            "the key directory {} holds no keys yet: start the broker once, or point --config \
             at a node's broker.toml",
            dir.display()
        )));
    }
    let store = store::open(&config.storage).await?;
    let pools = store.pools();
    if let KeysCommand::Status = command {
        return status(&config, &pools).await;
    }
    // Rotating from a directory that is not the cluster's would record keys
    // no node has.
    registry::check_and_record(&pools, &dir_ids(&dir)?)
        .await
        .map_err(|e| {
            BrokerError::Config(format!(
                "{e}; rotate keys from a node whose key directory matches the database"
            ))
        })?;
    let log = HostLog::open(pools.clone(), &dir).await?;
    match command {
        KeysCommand::Status => Ok(()),
        KeysCommand::RotatePermit => rotate_permit(&config, &pools, &log).await,
        KeysCommand::RetirePermit => retire_permit(&config, &pools, &log).await,
        KeysCommand::RotateSealer => rotate_sealer(&config, &pools, &log).await,
        KeysCommand::RotateKek => rotate_kek(&config, &pools, &log).await,
        KeysCommand::NewDataKey => new_data_key(&config, &pools, &log).await,
    }
}

async fn rotate_permit(config: &Config, pools: &Pools, log: &HostLog) -> Result<(), BrokerError> {
    let dir = &config.keys.dir;
    let rows = registry::rows(pools).await?;
    let old = registry::active(&rows, Role::Permit).map(|r| r.key_id.clone());
    let (key, pem) = files::new_signing_pem()?;
    let id = files::public_id(&key.verifying_key());
    let path = dir.join(files::permit_file_name(&id));
    files::write_secret_file(&path, pem.as_bytes())?;
    let delay = activation_delay(&config.keys);
    let from = later(delay);
    // The last permit of the old key is signed at most one re-read after
    // the new key's start, and is valid for the permit lifetime.
    let until = later(
        delay
            + Duration::from_secs(config.keys.reload_interval_secs.max(1))
            + Duration::from_secs(config.exchange.permit_ttl_secs)
            + CLOCK_SKEW,
    );
    // On an error the new file stays: the database may have recorded the
    // key even so (a commit whose answer was lost), and an unrecorded spare
    // file is never used.
    let result = registry::rotate(pools, Role::Permit, &id, &from, Some(&until)).await;
    let old = old.unwrap_or_else(|| "none".into());
    let detail =
        format!("rotate-permit old={old} new={id} signs_from={from} old_published_until={until}");
    log.outcome(
        OpAction::KeysChanged,
        None,
        Some(format!("permit key {id}")),
        Some(detail),
        result,
    )
    .await?;
    println!("許可証の署名鍵を更新しました / permit signing key rotated: {old} -> {id}");
    println!("  new key file: {}", path.display());
    println!(
        "  published now; permits are signed with it from {from} on every node that has the file"
    );
    println!("  the old key {old} stays published until {until}; then run `kakehashi-broker keys retire-permit`");
    println!(
        "  nodes on other machines need the new file before then: copy the key directory to them"
    );
    Ok(())
}

async fn retire_permit(config: &Config, pools: &Pools, log: &HostLog) -> Result<(), BrokerError> {
    let dir = &config.keys.dir;
    let rows = registry::rows(pools).await?;
    let now = timestamp(time::OffsetDateTime::now_utc());
    let mut retired = Vec::new();
    let mut waiting = Vec::new();
    for row in rows
        .iter()
        .filter(|r| r.is(Role::Permit) && r.state == "previous")
    {
        match &row.retire_after {
            Some(until) if until.as_str() > now.as_str() => {
                waiting.push((row.key_id.clone(), until.clone()))
            }
            _ => retired.push(row.key_id.clone()),
        }
    }
    for (id, until) in &waiting {
        println!("permit key {id} still verifies permits until {until}; retire it after then");
    }
    // Files of keys retired now, or earlier from another node's directory.
    let gone: Vec<String> = rows
        .iter()
        .filter(|r| r.is(Role::Permit) && r.state == "retired")
        .map(|r| r.key_id.clone())
        .chain(retired.iter().cloned())
        .collect();
    if retired.is_empty() {
        let removed = remove_permit_files(dir, &gone)?;
        if waiting.is_empty() && removed.is_empty() {
            println!("no permit key to retire");
        }
        return Ok(());
    }
    let mut result = Ok(());
    for id in &retired {
        result = result.and(registry::retire(pools, Role::Permit, id).await);
    }
    let result = result.and_then(|_| remove_permit_files(dir, &gone));
    let detail = format!("retire-permit keys={}", retired.join(","));
    let removed = log
        .outcome(
            OpAction::KeysChanged,
            None,
            Some(format!("permit keys {}", retired.join(","))),
            Some(detail),
            result,
        )
        .await?;
    println!(
        "許可証の旧署名鍵を廃止しました / retired permit keys: {}",
        retired.join(", ")
    );
    for name in removed {
        println!("  removed {name}");
    }
    Ok(())
}

fn remove_permit_files(dir: &Path, ids: &[String]) -> Result<Vec<String>, BrokerError> {
    let mut removed = Vec::new();
    for (id, file) in files::permit_keys(dir)? {
        if ids.contains(&id) {
            std::fs::remove_file(&file.path)
                .map_err(|e| BrokerError::io(format!("remove {}", file.path.display()), e))?;
            removed.push(
                file.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
    }
    Ok(removed)
}

/// Where `rotate-sealer` writes the new checkpoint key before it replaces
/// `records-sealer.pem`.
const STAGED_SEALER_FILE: &str = "records-sealer-next.pem";

async fn rotate_sealer(config: &Config, pools: &Pools, log: &HostLog) -> Result<(), BrokerError> {
    let dir = &config.keys.dir;
    let active = dir.join(SEALER_FILE);
    let old = files::read_signing_key(&active)?;
    let old_id = files::public_id(&old.verifying_key());
    let kept = dir.join(files::retired_sealer_file_name(&old_id));
    if !kept.exists() {
        files::write_secret_file(
            &kept,
            hex::encode(old.verifying_key().as_bytes()).as_bytes(),
        )?;
    }
    let (key, pem) = files::new_signing_pem()?;
    let id = files::public_id(&key.verifying_key());
    // Staged under a name every node's trust already reads
    // (`records-sealer*.pem`), so the directory stays acceptable between
    // the database's record of the new key and the rename below, and after
    // a crash between the two (then finish with `mv`).
    let staged = dir.join(STAGED_SEALER_FILE);
    let _ = std::fs::remove_file(&staged);
    files::write_secret_file(&staged, pem.as_bytes())?;
    let now = timestamp(time::OffsetDateTime::now_utc());
    let mut result = registry::rotate(pools, Role::Sealer, &id, &now, None).await;
    if result.is_ok() {
        result = std::fs::rename(&staged, &active).map_err(|e| {
            BrokerError::io(
                format!(
                    "rename {} into {} (the database records the new key: move it by hand)",
                    staged.display(),
                    active.display()
                ),
                e,
            )
        });
    }
    let detail = format!("rotate-sealer old={old_id} new={id}");
    log.outcome(
        OpAction::KeysChanged,
        None,
        Some(format!("checkpoint key {id}")),
        Some(detail),
        result,
    )
    .await?;
    println!("チェックポイント鍵を更新しました / checkpoint key rotated: {old_id} -> {id}");
    println!(
        "  the old public key stays trusted as {}, so older checkpoints still verify",
        kept.display()
    );
    println!(
        "  copy the key directory to every node; each signs with the new key from its next \
         checkpoint after the copy arrives, without a restart"
    );
    Ok(())
}

async fn rotate_kek(config: &Config, pools: &Pools, log: &HostLog) -> Result<(), BrokerError> {
    let dir = &config.keys.dir;
    let keks: HashMap<String, Secret> = files::keks(dir)?
        .into_iter()
        .map(|(_, id, secret)| (id, secret))
        .collect();
    let new = Secret::random();
    let new_id = new.id();
    let name = files::new_kek_name(dir)?;
    let path = dir.join(&name);
    files::write_secret_file(
        &path,
        zeroize::Zeroizing::new(hex::encode(new.0.as_ref())).as_bytes(),
    )?;
    // On an error the new file stays: the re-wrap may have committed even
    // so (its answer lost), and then every data key needs it.
    let result = rewrap_all(pools, &keks, &new, &new_id).await;
    let count = result.as_ref().map_or(0, |n| *n);
    let detail = format!("rotate-kek new={new_id} data_keys={count}");
    log.outcome(
        OpAction::KeysChanged,
        None,
        Some(format!("key-encryption key {new_id}")),
        Some(detail),
        result.map(|_| ()),
    )
    .await?;
    println!(
        "鍵暗号化鍵を更新しました / key-encryption key rotated: {count} data keys re-wrapped under {new_id} ({name})"
    );
    let unused = unused_keks(pools, dir, &new_id).await?;
    println!(
        "  copy {name} to every node; once each has it (`kakehashi-broker keys status` there), \
         these files wrap no data key any more and can be removed: {}",
        if unused.is_empty() {
            "none".to_string()
        } else {
            unused.join(", ")
        }
    );
    Ok(())
}

/// The kek files here, other than `keep`'s, that wrap no stored data key.
async fn unused_keks(pools: &Pools, dir: &Path, keep: &str) -> Result<Vec<String>, BrokerError> {
    let used: Vec<String> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_scalar("SELECT DISTINCT kek_id FROM data_keys")
            .fetch_all(pool)
            .await?
    });
    Ok(files::keks(dir)?
        .into_iter()
        .filter(|(_, id, _)| id != keep && !used.contains(id))
        .map(|(name, _, _)| name)
        .collect())
}

/// Re-wraps every data key under `new` and records it as the active kek,
/// in one transaction; progress on stderr.
async fn rewrap_all(
    pools: &Pools,
    keks: &HashMap<String, Secret>,
    new: &Secret,
    new_id: &str,
) -> Result<usize, BrokerError> {
    let now = timestamp(time::OffsetDateTime::now_utc());
    let count = crate::on_pool!(pools, write, |pool| {
        let mut tx = pool.begin().await?;
        // The active kek's row first: a data key being made under it
        // (`keys::insert_data_key` takes the same row) either commits
        // before the data keys are read here, or waits and finds the kek
        // no longer active, so none is left wrapped under the old one.
        sqlx::query("UPDATE key_ids SET state = state WHERE role = 'kek' AND state = 'active'")
            .execute(&mut *tx)
            .await?;
        let rows: Vec<(String, String, Vec<u8>)> =
            sqlx::query_as("SELECT id, kek_id, wrapped FROM data_keys ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        let total = rows.len();
        for (done, (id, kek_id, wrapped)) in rows.into_iter().enumerate() {
            let kek = keks.get(&kek_id).ok_or_else(|| {
                files::key_err(
                    "data key",
                    format!(
                        "{id} is wrapped by the key-encryption key {kek_id}, which no kek-*.key \
                         file here holds; nothing was changed"
                    ),
                )
            })?;
            let secret = unwrap_data_key(kek, &wrapped, &id)?;
            let rewrapped = seal_raw(new, secret.0.as_ref(), id.as_bytes())?;
            sqlx::query("UPDATE data_keys SET kek_id = $1, wrapped = $2 WHERE id = $3")
                .bind(new_id)
                .bind(&rewrapped)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            if (done + 1) % PROGRESS_EVERY == 0 || done + 1 == total {
                eprintln!("re-wrapped {}/{total} data keys", done + 1);
            }
        }
        sqlx::query(
            "UPDATE key_ids SET state = 'retired' WHERE role = 'kek' AND state <> 'active'",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE key_ids SET state = 'previous' WHERE role = 'kek' AND state = 'active'",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO key_ids (role, key_id, state, recorded_at, active_from) \
             VALUES ('kek', $1, 'active', $2, $2)",
        )
        .bind(new_id)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        total
    });
    Ok(count)
}

async fn new_data_key(config: &Config, pools: &Pools, log: &HostLog) -> Result<(), BrokerError> {
    let dir = &config.keys.dir;
    let rows = registry::rows(pools).await?;
    let kek_id = registry::active(&rows, Role::Kek)
        .map(|r| r.key_id.clone())
        .ok_or_else(|| refused("the database records no key-encryption key".into()))?;
    let keks = files::keks(dir)?;
    let kek = keks
        .iter()
        .find(|(_, id, _)| *id == kek_id)
        .map(|(_, _, secret)| secret)
        .ok_or_else(|| files::key_err("kek", format!("no kek-*.key file holds {kek_id}")))?;
    let result = crate::keys::insert_data_key(pools, &kek_id, kek).await;
    let id = result.as_ref().map_or(String::new(), |(id, _)| id.clone());
    log.outcome(
        OpAction::KeysChanged,
        None,
        Some(format!("data key {id}")),
        Some(format!("new-data-key id={id} kek={kek_id}")),
        result.map(|_| ()),
    )
    .await?;
    let from = later(activation_delay(&config.keys));
    println!("データ鍵を作成しました / new data key {id}: new data is encrypted under it from about {from}");
    Ok(())
}

async fn status(config: &Config, pools: &Pools) -> Result<(), BrokerError> {
    let dir = &config.keys.dir;
    let ids = dir_ids(dir)?;
    let rows = registry::rows(pools).await?;
    println!("key directory {}", dir.display());
    for role in Role::ALL {
        let here: Vec<String> = match role {
            Role::Lookup => vec![ids.lookup.clone()],
            Role::Permit => ids.permits.clone(),
            Role::Kek => ids.keks.clone(),
            Role::Sealer => ids.sealer_trusted.clone(),
        };
        let recorded: Vec<String> = rows
            .iter()
            .filter(|r| r.is(role))
            .map(|r| {
                let mut text = format!("{} {}", r.key_id, r.state);
                if let Some(t) = r.active_from.as_ref().filter(|_| role == Role::Permit) {
                    text.push_str(&format!(" signs from {t}"));
                }
                if let Some(t) = &r.retire_after {
                    text.push_str(&format!(" published until {t}"));
                }
                if !here.contains(&r.key_id) {
                    text.push_str(" (no file here)");
                }
                text
            })
            .collect();
        println!(
            "{:<7} recorded: {}",
            role.as_str(),
            if recorded.is_empty() {
                "none yet".to_string()
            } else {
                recorded.join("; ")
            }
        );
        let extra = match role {
            Role::Sealer => format!(
                "records-sealer.pem {}; trusted {}",
                ids.sealer,
                here.join(", ")
            ),
            _ => here.join(", "),
        };
        println!("{:<7} here:     {extra}", "");
    }
    let data: Vec<(String, String, String)> = crate::on_pool!(pools, read, |pool| {
        sqlx::query_as("SELECT id, kek_id, created_at FROM data_keys ORDER BY created_at, id")
            .fetch_all(pool)
            .await?
    });
    let mut per_kek: HashMap<&str, usize> = HashMap::new();
    for (_, kek, _) in &data {
        *per_kek.entry(kek.as_str()).or_default() += 1;
    }
    let mut per_kek: Vec<String> = per_kek
        .iter()
        .map(|(k, n)| format!("{n} under kek {k}"))
        .collect();
    per_kek.sort();
    println!(
        "data keys: {} ({}); newest {}; a new one every {} days",
        data.len(),
        per_kek.join(", "),
        data.last().map_or("none", |(id, _, _)| id.as_str()),
        config.keys.data_key_days
    );
    match registry::mismatch(&rows, &ids) {
        None => println!("check: a node with this key directory starts on this database"),
        Some(message) => println!("check: a node with this key directory is refused: {message}"),
    }
    Ok(())
}
