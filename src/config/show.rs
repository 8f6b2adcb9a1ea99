//! The effective config as text for people (`mono-proxy check --print`, admin `GET /config`),
//! secrets redacted: every config type derives `Serialize` with the helpers below.

use std::path::Path;
use std::time::Duration;

use http::{Method, Uri};
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use super::{redact_url, Config, SecretSource};

/// What a secret's value is replaced with.
const REDACTED: &str = "[redacted]";

/// The config as TOML, in the file's own shape (secrets redacted).
pub fn to_toml(config: &Config) -> String {
    toml::to_string(config).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
}

/// The config as JSON (secrets redacted).
pub fn to_json(config: &Config) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

impl Serialize for SecretSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SecretSource::None => s.serialize_str("none"),
            SecretSource::Value(_) => s.serialize_str(REDACTED),
            SecretSource::File(p) => s.serialize_str(&format!("{REDACTED} (file {})", p.display())),
        }
    }
}

pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

pub(super) fn opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => duration(d, s),
        None => s.serialize_str("default"),
    }
}

pub(super) fn uri<S: Serializer>(u: &Uri, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(&u.to_string()))
}

pub(super) fn uris<S: Serializer>(us: &[Uri], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(us.len()))?;
    for u in us {
        seq.serialize_element(&redact_url(&u.to_string()))?;
    }
    seq.end()
}

pub(super) fn url<S: Serializer>(u: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(u))
}

pub(super) fn opt_url<S: Serializer>(u: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => url(u, s),
        None => s.serialize_str("none"),
    }
}

pub(super) fn urls<S: Serializer>(us: &[String], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(us.len()))?;
    for u in us {
        seq.serialize_element(&redact_url(u))?;
    }
    seq.end()
}

pub(super) fn methods<S: Serializer>(ms: &[Method], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(ms.len()))?;
    for m in ms {
        seq.serialize_element(m.as_str())?;
    }
    seq.end()
}

pub(super) fn opt_path<S: Serializer>(
    p: &Option<impl AsRef<Path>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.as_ref().display().to_string()),
        None => s.serialize_str("none"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_config_shows_settings_and_never_secrets() {
        let c = Config::parse(
            "[store]\nbackend = \"redis\"\nredis_url = \"redis://u:hunter2@h:6379/0\"\n\
             [admin]\ntoken = \"admin-token-0123456789abcdef\"\n\
             [[clients]]\nname = \"billing\"\ntoken_env = \"T\"\nrate = 5\n\
             [[route]]\nname = \"identity\"\npath = \"/v2/accounts/{id}/identity\"\nttl = \"1m\"",
            &[
                ("MONO_SEC_KEY", "live_sk_topsecret"),
                ("T", "client-tok-secret"),
            ],
        )
        .unwrap();
        for text in [to_toml(&c), to_json(&c).to_string()] {
            for secret in [
                "topsecret",
                "hunter2",
                "admin-token-0123",
                "client-tok-secret",
            ] {
                assert!(!text.contains(secret), "{secret} in:\n{text}");
            }
            for shown in [
                "billing",
                "identity",
                "1m",
                "redis://u:***@h:6379/0",
                "[redacted]",
            ] {
                assert!(text.contains(shown), "{shown} missing in:\n{text}");
            }
        }
        // The TOML is TOML.
        let parsed: toml::Table = to_toml(&c).parse().unwrap();
        assert!(parsed.contains_key("upstream") && parsed.contains_key("clients"));
    }
}
