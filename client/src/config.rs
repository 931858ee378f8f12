//! Profiles: which broker to talk to and with which certificate.
//!
//! The config file (`config.toml`) holds paths and public keys — never a
//! private key. Relative paths in a hand-written file are resolved against
//! the file's directory. `record_keys` are the broker's checkpoint keys the
//! user pinned (`kakehashi audit keys --pin`): exports and the witness check
//! are trusted against them only.
//!
//! ```toml
//! current = "city-saitama"
//!
//! [profiles.city-saitama]
//! broker = "https://127.0.0.1:17443"
//! ca = "/home/me/kk-dev/pki/ca.crt"
//! cert = "/home/me/kk-dev/pki/city-saitama.crt"
//! key = "/home/me/kk-dev/pki/city-saitama.key"
//! # server_name = "broker.example.lg.jp"   # optional TLS name override
//!
//! [[profiles.city-saitama.record_keys]]       # pinned checkpoint keys
//! key_id = "fe812c12f3ab4ce6"
//! public_key = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kakehashi_interfaces::audit::TrustedKeys;
use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// Environment variable naming the config directory (holds `config.toml`).
pub const HOME_ENV: &str = "KAKEHASHI_HOME";
/// Environment variable naming the profile to use instead of `current`.
pub const PROFILE_ENV: &str = "KAKEHASHI_PROFILE";
/// File name of the config inside the config directory.
pub const CONFIG_FILE: &str = "config.toml";

/// One broker identity: the broker URL and the org's TLS files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `https://host:port` of the broker's exchange listener.
    pub broker: String,
    /// PEM file of the CA(s) that signed the broker's server certificate.
    pub ca: PathBuf,
    /// PEM file of the org's client certificate (chain allowed).
    pub cert: PathBuf,
    /// PEM file of the org's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// TLS server name to verify instead of the URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The broker's provision-record checkpoint keys, pinned by the user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub record_keys: Vec<PinnedKey>,
}

/// A checkpoint key pinned in a profile (public; only its id and key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedKey {
    /// Its id (first 16 hex digits of SHA-256 of the key).
    pub key_id: kakehashi_interfaces::records::RecordKeyId,
    /// The Ed25519 public key, hex.
    pub public_key: kakehashi_interfaces::records::Hex<32>,
}

/// A parsed broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Profile {
    /// A profile from a broker URL and three file paths (kept as given).
    pub fn new(
        broker: impl Into<String>,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Profile {
        Profile {
            broker: broker.into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            server_name: None,
            record_keys: Vec::new(),
        }
    }

    /// Parses and checks the broker URL: `https://host[:port]`, no path.
    pub fn broker_address(&self) -> Result<BrokerAddress, ClientError> {
        parse_broker_url(&self.broker)
    }

    /// The same profile with every path made absolute and canonical, checking
    /// that the files exist.
    pub fn canonicalized(&self) -> Result<Profile, ClientError> {
        let canon = |what: &str, p: &Path| {
            std::fs::canonicalize(p).map_err(|e| {
                ClientError::config(format!("cannot use {what} file {}: {e}", p.display()))
            })
        };
        Ok(Profile {
            broker: self.broker.clone(),
            ca: canon("CA", &self.ca)?,
            cert: canon("certificate", &self.cert)?,
            key: canon("key", &self.key)?,
            server_name: self.server_name.clone(),
            record_keys: self.record_keys.clone(),
        })
    }

    /// The pinned checkpoint keys as a verifier's trusted set. A pinned key
    /// whose id is not its key's is refused: the file was edited by hand.
    pub fn trusted_record_keys(&self) -> Result<TrustedKeys, ClientError> {
        let mut keys = TrustedKeys::new();
        for pin in &self.record_keys {
            let key = ed25519_dalek::VerifyingKey::from_bytes(&pin.public_key.0)
                .ok()
                .filter(|k| kakehashi_interfaces::audit::key_id(k) == pin.key_id.as_str())
                .ok_or_else(|| {
                    ClientError::config(format!(
                        "pinned record key {} is not a valid key with that id; pin it again with `kakehashi audit keys --pin`",
                        pin.key_id
                    ))
                })?;
            keys.add(key);
        }
        Ok(keys)
    }

    /// Pins a key (once).
    pub fn pin_record_key(&mut self, key: &ed25519_dalek::VerifyingKey) -> bool {
        let pin = PinnedKey {
            key_id: kakehashi_interfaces::records::RecordKeyId::of(key),
            public_key: kakehashi_interfaces::records::Hex(key.to_bytes()),
        };
        if self.record_keys.contains(&pin) {
            return false;
        }
        self.record_keys.push(pin);
        true
    }

    fn resolved_against(mut self, base: &Path) -> Profile {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        self
    }
}

fn parse_broker_url(url: &str) -> Result<BrokerAddress, ClientError> {
    let bad = |why: &str| {
        ClientError::config(format!(
            "broker URL {url:?} {why}; expected https://host:port"
        ))
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(bad("must start with https://"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path"));
    }
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() || authority.as_str().contains('@') {
        return Err(bad("has no usable host"));
    }
    Ok(BrokerAddress {
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(443),
    })
}

/// The profiles file: named profiles and the current one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name of the profile used when none is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// Checks a profile name: 1–64 characters of letters, digits, `-`, `_`, `.`.
pub fn validate_profile_name(name: &str) -> Result<(), ClientError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ClientError::config(format!(
            "profile name {name:?} is not allowed; use 1-64 letters, digits, '-', '_' or '.'"
        )))
    }
}

impl ClientConfig {
    /// The default config file: `$KAKEHASHI_HOME/config.toml`, else
    /// `$XDG_CONFIG_HOME/kakehashi/config.toml`, else
    /// `$HOME/.config/kakehashi/config.toml`.
    pub fn default_path() -> Result<PathBuf, ClientError> {
        let non_empty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if let Some(dir) = non_empty(HOME_ENV) {
            return Ok(PathBuf::from(dir).join(CONFIG_FILE));
        }
        if let Some(dir) = non_empty("XDG_CONFIG_HOME") {
            return Ok(PathBuf::from(dir).join("kakehashi").join(CONFIG_FILE));
        }
        if let Some(home) = non_empty("HOME") {
            return Ok(PathBuf::from(home)
                .join(".config")
                .join("kakehashi")
                .join(CONFIG_FILE));
        }
        Err(ClientError::config(format!(
            "cannot find a config directory: set {HOME_ENV} or HOME"
        )))
    }

    /// Reads a config file; relative profile paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<ClientConfig, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let mut config: ClientConfig = toml::from_str(&text).map_err(|e| {
            ClientError::config(format!(
                "config file {} is not valid: {}",
                path.display(),
                e.message()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.profiles = std::mem::take(&mut config.profiles)
            .into_iter()
            .map(|(name, p)| (name, p.resolved_against(base)))
            .collect();
        Ok(config)
    }

    /// Like [`ClientConfig::load`], but a missing file is an empty config.
    pub fn load_or_default(path: &Path) -> Result<ClientConfig, ClientError> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(ClientConfig::default())
        }
    }

    /// The TOML text of this config.
    pub fn to_toml(&self) -> Result<String, ClientError> {
        toml::to_string_pretty(self)
            .map_err(|e| ClientError::config(format!("cannot encode the config: {e}")))
    }

    /// Writes the config atomically (temporary file, then rename), creating the directory.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let text = format!(
            "# Kakehashi client profiles. Paths and public keys only; private keys stay where they are.\n{}",
            self.to_toml()?
        );
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| {
            ClientError::config(format!(
                "cannot create config directory {}: {e}",
                dir.display()
            ))
        })?;
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                ClientError::config(format!("cannot write config file {}: {e}", path.display()))
            })
    }

    /// Adds or replaces a profile; the first profile added becomes current.
    pub fn insert(&mut self, name: &str, profile: Profile) -> Result<(), ClientError> {
        validate_profile_name(name)?;
        profile.broker_address()?;
        self.profiles.insert(name.to_string(), profile);
        if self.current.is_none() {
            self.current = Some(name.to_string());
        }
        Ok(())
    }

    /// Makes `name` the current profile.
    pub fn set_current(&mut self, name: &str) -> Result<(), ClientError> {
        if !self.profiles.contains_key(name) {
            return Err(self.unknown(name));
        }
        self.current = Some(name.to_string());
        Ok(())
    }

    /// The profile `name`, or the current one when `name` is `None`.
    pub fn profile(&self, name: Option<&str>) -> Result<(&str, &Profile), ClientError> {
        let name = match name.or(self.current.as_deref()) {
            Some(n) => n,
            None => return Err(ClientError::config(
                "no profile chosen and no current profile; add one with `kakehashi profile add`",
            )),
        };
        self.profiles
            .get_key_value(name)
            .map(|(k, p)| (k.as_str(), p))
            .ok_or_else(|| self.unknown(name))
    }

    fn unknown(&self, name: &str) -> ClientError {
        let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        ClientError::config(format!("unknown profile {name:?} (known: {known})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let p = |u: &str| Profile::new(u, "a", "b", "c").broker_address();
        assert_eq!(
            p("https://127.0.0.1:17443").unwrap(),
            BrokerAddress {
                host: "127.0.0.1".into(),
                port: 17443
            }
        );
        assert_eq!(p("https://broker.example/").unwrap().port, 443);
        assert_eq!(p("https://[::1]:9").unwrap().host, "::1");
        assert!(p("http://host:1").is_err());
        assert!(p("https://host:1/v1").is_err());
        assert!(p("host:1").is_err());
    }

    #[test]
    fn round_trip_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join(CONFIG_FILE);
        let mut config = ClientConfig::default();
        config
            .insert("a", Profile::new("https://h:1", "/ca", "/c", "/k"))
            .unwrap();
        config
            .insert("b", Profile::new("https://h:2", "pki/ca.crt", "c", "k"))
            .unwrap();
        assert_eq!(config.current.as_deref(), Some("a"));
        config.save(&path).unwrap();
        let loaded = ClientConfig::load(&path).unwrap();
        assert_eq!(loaded.profile(None).unwrap().1.ca, PathBuf::from("/ca"));
        assert_eq!(
            loaded.profile(Some("b")).unwrap().1.ca,
            dir.path().join("sub").join("pki/ca.crt")
        );
        let err = loaded.profile(Some("zz")).unwrap_err().to_string();
        assert!(
            err.contains("unknown profile \"zz\"") && err.contains("a, b"),
            "{err}"
        );
        assert!(validate_profile_name("bad name").is_err());
    }

    #[test]
    fn invalid_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "profiles = 3").unwrap();
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
