//! `kakehashi profile …`: the profiles file.

use std::path::PathBuf;

use kakehashi_client::{ClientConfig, Profile};

use super::args::ProfileCommand;
use super::fail::{CliError, Exit};
use super::table;

/// The config file path, from KAKEHASHI_HOME or the default.
pub fn config_path() -> Result<PathBuf, CliError> {
    Ok(ClientConfig::default_path()?)
}

/// The profile to use: `--profile`/KAKEHASHI_PROFILE, else the current one.
pub fn resolve(chosen: Option<&str>) -> Result<(String, Profile), CliError> {
    let path = config_path()?;
    if !path.exists() {
        return Err(CliError::usage(format!(
            "no profiles yet (no config file {})",
            path.display()
        ))
        .hint("add one with `kakehashi profile add NAME --broker URL --ca FILE --cert FILE --key FILE`"));
    }
    let config = ClientConfig::load(&path)?;
    let (name, profile) = config
        .profile(chosen)
        .map_err(|e| CliError::from(e).hint("see `kakehashi profile list`"))?;
    Ok((name.to_string(), profile.clone()))
}

pub fn run(cmd: ProfileCommand, chosen: Option<&str>) -> Result<Exit, CliError> {
    let path = config_path()?;
    match cmd {
        ProfileCommand::Add {
            name,
            broker,
            ca,
            cert,
            key,
            server_name,
            make_current,
            replace,
        } => {
            let mut config = ClientConfig::load_or_default(&path)?;
            if let Some(old) = config.profiles.get(&name).filter(|_| !replace) {
                return Err(CliError::usage(format!(
                    "a profile named {name} already exists (broker {}, certificate {})",
                    old.broker,
                    old.cert.display()
                ))
                .hint("choose another name, or add --replace to replace it"));
            }
            let mut profile = Profile::new(broker, ca, cert, key);
            profile.server_name = server_name;
            // Check the URL before touching files, so the message is about the URL.
            profile.broker_address()?;
            let mut profile = profile
                .canonicalized()
                .map_err(|e| CliError::from(e).hint("give the path of an existing file"))?;
            // Re-adding a profile for the same broker keeps its pinned record keys.
            if let Some(old) = config
                .profiles
                .get(&name)
                .filter(|o| o.broker == profile.broker)
            {
                profile.record_keys = old.record_keys.clone();
            }
            config.insert(&name, profile)?;
            if make_current {
                config.set_current(&name)?;
            }
            config.save(&path)?;
            let current = config.current.as_deref() == Some(name.as_str());
            println!(
                "profile {name} saved in {}{}",
                path.display(),
                if current { " (current)" } else { "" }
            );
            Ok(Exit::Ok)
        }
        ProfileCommand::List(flags) => {
            let config = ClientConfig::load_or_default(&path)?;
            let active = chosen.map(str::to_string).or(config.current.clone());
            if flags.json {
                let list: Vec<serde_json::Value> = config
                    .profiles
                    .iter()
                    .map(|(name, p)| {
                        serde_json::json!({
                            "name": name,
                            "current": active.as_deref() == Some(name.as_str()),
                            "broker": p.broker,
                            "ca": p.ca,
                            "cert": p.cert,
                            "key": p.key,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
                return Ok(Exit::Ok);
            }
            if config.profiles.is_empty() {
                println!(
                    "no profiles in {}; add one with `kakehashi profile add`",
                    path.display()
                );
                return Ok(Exit::Ok);
            }
            let rows: Vec<Vec<String>> = config
                .profiles
                .iter()
                .map(|(name, p)| {
                    let mark = if active.as_deref() == Some(name.as_str()) {
                        "*"
                    } else {
                        ""
                    };
                    vec![
                        mark.to_string(),
                        name.clone(),
                        p.broker.clone(),
                        p.ca.display().to_string(),
                        p.cert.display().to_string(),
                        p.key.display().to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table::render(&["", "NAME", "BROKER", "CA", "CERT", "KEY"], &rows)
            );
            println!("(config: {})", path.display());
            Ok(Exit::Ok)
        }
        ProfileCommand::Use { name } => {
            let mut config = ClientConfig::load_or_default(&path)?;
            config
                .set_current(&name)
                .map_err(|e| CliError::from(e).hint("see `kakehashi profile list`"))?;
            config.save(&path)?;
            println!("current profile: {name}");
            Ok(Exit::Ok)
        }
        ProfileCommand::Remove { name } => {
            let mut config = ClientConfig::load_or_default(&path)?;
            if config.profiles.remove(&name).is_none() {
                return Err(CliError::usage(format!("unknown profile {name:?}"))
                    .hint("see `kakehashi profile list`"));
            }
            if config.current.as_deref() == Some(name.as_str()) {
                config.current = None;
            }
            config.save(&path)?;
            println!("profile {name} removed (its files were left alone)");
            Ok(Exit::Ok)
        }
    }
}
