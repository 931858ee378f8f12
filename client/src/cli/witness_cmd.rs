//! `kakehashi audit keys` (the broker's checkpoint keys, pinned in the
//! profile) and `kakehashi audit witness` (the broker's records held
//! against the checkpoints the profile kept).

use kakehashi_client::witness::{self, WitnessReport};
use kakehashi_client::{Client, ClientConfig};

use super::args::KeysArgs;
use super::fail::{CliError, Exit};
use super::table;

/// `kakehashi audit keys [--pin [--key-id ID]… | --pin-key HEX…]`.
pub async fn keys(chosen: Option<&str>, args: KeysArgs) -> Result<Exit, CliError> {
    let path = super::profile_cmd::config_path()?;
    let (name, _) = super::profile_cmd::resolve(chosen)?;
    let mut config = ClientConfig::load(&path)?;
    let Some(profile) = config.profiles.get_mut(&name) else {
        return Err(CliError::usage(format!("unknown profile {name:?}")));
    };
    if !args.pin_keys.is_empty() {
        let keys = super::records_cmd::parse_keys(&args.pin_keys, "--pin-key")?;
        for key in &keys {
            let id = kakehashi_client::interfaces::audit::key_id(key);
            if profile.pin_record_key(key) {
                println!("鍵 {id} を固定しました / pinned key {id} in profile {name}");
            } else {
                println!("鍵 {id} は固定済みです / key {id} is already pinned in profile {name}");
            }
        }
        config.save(&path)?;
        return Ok(Exit::Ok);
    }
    let client = Client::connect(profile).await?;
    let published = client.record_keys().await?;
    if args.pin {
        for id in &args.key_ids {
            if !published.keys.iter().any(|k| k.key_id.as_str() == id) {
                return Err(
                    CliError::usage(format!("the broker publishes no record key {id}"))
                        .hint("see `kakehashi audit keys` for the published ids"),
                );
            }
        }
        for k in &published.keys {
            if !args.key_ids.is_empty() && !args.key_ids.iter().any(|i| i == k.key_id.as_str()) {
                continue;
            }
            let key = k
                .verifying_key()
                .map_err(kakehashi_client::ClientError::from)?;
            let id = &k.key_id;
            if profile.pin_record_key(&key) {
                println!(
                    "鍵 {id} を固定しました / pinned key {id} ({}) in profile {name}",
                    k.public_key
                );
            } else {
                println!("鍵 {id} は固定済みです / key {id} is already pinned in profile {name}");
            }
        }
        config.save(&path)?;
        eprintln!(
            "note: compare the pinned key ids with the broker operator's (the console's keys page) before relying on them"
        );
        return Ok(Exit::Ok);
    }
    let pinned = profile.trusted_record_keys()?;
    if args.json {
        let list: Vec<serde_json::Value> = published
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key_id": k.key_id,
                    "public_key": k.public_key,
                    "current": k.current,
                    "pinned": pinned.get(k.key_id.as_str()).is_some_and(|p| p.to_bytes() == k.public_key.0),
                })
            })
            .collect();
        super::print_json(&list)?;
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = published
        .keys
        .iter()
        .map(|k| {
            let is_pinned = pinned
                .get(k.key_id.as_str())
                .is_some_and(|p| p.to_bytes() == k.public_key.0);
            vec![
                k.key_id.to_string(),
                if k.current { "current" } else { "older" }.to_string(),
                if is_pinned { "yes" } else { "no" }.to_string(),
                k.public_key.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["KEY ID", "USE", "PINNED", "PUBLIC KEY"], &rows)
    );
    if rows.iter().any(|r| r[2] == "no") {
        eprintln!("note: pin them with `kakehashi audit keys --pin` after comparing the ids with the broker's operator");
    }
    Ok(Exit::Ok)
}

/// `kakehashi audit witness`.
pub async fn witness(chosen: Option<&str>, json: bool) -> Result<Exit, CliError> {
    let (name, profile) = super::profile_cmd::resolve(chosen)?;
    let pinned = profile.trusted_record_keys()?;
    if pinned.is_empty() {
        return Err(CliError::usage(format!(
            "profile {name} pins no record keys: a witness needs the broker's keys"
        ))
        .hint("pin them with `kakehashi audit keys --pin`, comparing the ids with the broker's operator"));
    }
    let book = super::checkpoint_book(&name, &profile)?;
    let client = Client::connect(&profile).await?;
    let report = witness::witness(&client, &book, &pinned).await?;
    if json {
        super::print_json(&report)?;
    }
    match report {
        WitnessReport::Consistent {
            checked,
            from_seq,
            current,
            links,
        } => {
            if !json {
                println!(
                    "一致: 記録は保持したチェックポイント {checked} 件を引き継いでいます / consistent: the broker's records extend the {checked} kept checkpoint(s) from sequence {from_seq} to its current checkpoint {} (key {}, {links} hashes checked)",
                    current.seq, current.key_id
                );
            }
            Ok(Exit::Ok)
        }
        WitnessReport::Mismatch {
            kept_seq,
            seen_on,
            finding,
        } => Err(CliError {
            exit: Exit::Partial,
            message: format!(
                "不一致: 記録が改ざんされた可能性があります / MISMATCH at kept checkpoint {kept_seq} (seen {seen_on}): {finding}"
            ),
            hint: Some(format!(
                "keep {} as evidence and report it to the broker's operator and your auditor",
                book.path().display()
            )),
        }),
    }
}
