//! Typed reads out of one TOML table: a bad value becomes a problem and a default, never a return.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::{Table, Value};

use super::secret::{Secret, SecretSource};

/// Reads typed fields out of one TOML table, collecting problems and flagging unknown keys.
pub(super) struct Fields<'t, 'e> {
    prefix: String,
    table: Option<&'t Table>,
    known: Vec<&'static str>,
    errors: &'e mut Vec<String>,
}

impl<'t, 'e> Fields<'t, 'e> {
    /// A reader over `table` (absent: every field takes its default), naming keys `<prefix>.<key>`.
    pub(super) fn new(prefix: &str, table: Option<&'t Table>, errors: &'e mut Vec<String>) -> Self {
        Fields {
            prefix: prefix.to_string(),
            table,
            known: Vec::new(),
            errors,
        }
    }

    fn name(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'t Value> {
        self.known.push(key);
        self.table.and_then(|t| t.get(key))
    }

    /// Counts `keys` as known without reading them (they are read elsewhere, e.g. sections).
    pub(super) fn allow(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }

    /// Records a problem with `key`, named in full.
    pub(super) fn problem(&mut self, key: &str, msg: impl fmt::Display) {
        let name = self.name(key);
        self.errors.push(format!("{name}: {msg}"));
    }

    /// A string, or `None` when absent or not a string.
    pub(super) fn string(&mut self, key: &'static str) -> Option<String> {
        match self.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.problem(
                    key,
                    format!("expected a string, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// A humantime duration above zero, e.g. `"300s"`.
    pub(super) fn duration(&mut self, key: &'static str, default: Duration) -> Duration {
        let Some(text) = self.string(key) else {
            return default;
        };
        match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problem(key, "must be greater than zero");
                default
            }
            Err(e) => {
                self.problem(
                    key,
                    format!("invalid duration {text:?} ({e}); use e.g. \"300s\" or \"5m\""),
                );
                default
            }
        }
    }

    /// A humantime duration that may be zero (`"0s"` turns something off); `None` when unset.
    pub(super) fn optional_duration(&mut self, key: &'static str) -> Option<Duration> {
        let text = self.string(key)?;
        match humantime::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(
                    key,
                    format!("invalid duration {text:?} ({e}); use e.g. \"300s\" or \"0s\""),
                );
                None
            }
        }
    }

    /// A byte size above zero, e.g. `"256MiB"`.
    pub(super) fn size(&mut self, key: &'static str, default: u64) -> u64 {
        let Some(text) = self.string(key) else {
            return default;
        };
        match text.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() > 0 => b.as_u64(),
            Ok(_) => {
                self.problem(key, "must be greater than zero");
                default
            }
            Err(_) => {
                self.problem(
                    key,
                    format!("invalid size {text:?}; use e.g. \"256MiB\" or \"1MB\""),
                );
                default
            }
        }
    }

    /// `true` or `false`.
    pub(super) fn bool(&mut self, key: &'static str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(other) => {
                let t = other.type_str();
                self.problem(key, format!("expected true or false, found {t}"));
                default
            }
        }
    }

    /// A whole number above zero.
    pub(super) fn count(&mut self, key: &'static str, default: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(Value::Integer(n)) if *n > 0 => *n as u64,
            Some(other) => {
                let t = other.to_string();
                self.problem(key, format!("expected a whole number above 0, found {t}"));
                default
            }
        }
    }

    /// A number of at least zero (integers accepted).
    pub(super) fn float(&mut self, key: &'static str) -> Option<f64> {
        match self.get(key)? {
            Value::Float(f) if *f >= 0.0 => Some(*f),
            Value::Integer(n) if *n >= 0 => Some(*n as f64),
            other => {
                let t = other.to_string();
                self.problem(key, format!("expected a number of at least 0, found {t}"));
                None
            }
        }
    }

    /// An array of strings; items that are not strings are problems and skipped.
    pub(super) fn strings(&mut self, key: &'static str) -> Option<Vec<String>> {
        match self.get(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            let t = other.type_str();
                            self.problem(key, format!("expected strings, found {t}"));
                        }
                    }
                }
                Some(out)
            }
            other => {
                let t = other.type_str();
                self.problem(key, format!("expected an array of strings, found {t}"));
                None
            }
        }
    }

    /// The environment's value when set, else the file's. The file's key is read either way:
    /// skipping it would leave it "unknown" and refuse a valid file whenever the env overrides it.
    pub(super) fn env_or_string(
        &mut self,
        key: &'static str,
        env: Option<String>,
    ) -> Option<String> {
        let file = self.string(key);
        env.or(file)
    }

    /// One of a fixed set of words (environment first); the first option is the default.
    pub(super) fn choice<T: Clone>(
        &mut self,
        key: &'static str,
        env: Option<String>,
        options: &[(&str, T)],
    ) -> T {
        let default = options[0].1.clone();
        let Some(text) = self.env_or_string(key, env) else {
            return default;
        };
        if let Some((_, value)) = options.iter().find(|(word, _)| *word == text) {
            return value.clone();
        }
        let words: Vec<String> = options.iter().map(|(w, _)| format!("{w:?}")).collect();
        let expected = words.join(" or ");
        self.problem(key, format!("expected {expected}, found {text:?}"));
        default
    }

    /// A socket address (environment first).
    pub(super) fn addr(
        &mut self,
        key: &'static str,
        env: Option<String>,
        default: &str,
    ) -> SocketAddr {
        let text = self
            .env_or_string(key, env)
            .unwrap_or_else(|| default.to_string());
        match text.parse() {
            Ok(a) => a,
            Err(_) => {
                self.problem(
                    key,
                    format!("invalid socket address {text:?}; use e.g. \"127.0.0.1:8080\""),
                );
                default.parse().expect("default address parses")
            }
        }
    }

    /// A secret given either by an environment variable or by `<key>` naming a file.
    pub(super) fn secret(
        &mut self,
        file_key: &'static str,
        env_value: Option<String>,
    ) -> SecretSource {
        let file = self.string(file_key);
        match (env_value, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    file_key,
                    "both the environment variable and the file are set; choose one",
                );
                SecretSource::None
            }
            (Some(v), None) => SecretSource::Value(Secret::new(v)),
            (None, Some(f)) => SecretSource::File(PathBuf::from(f)),
            (None, None) => SecretSource::None,
        }
    }

    /// Reports every key of the table that was neither read nor allowed.
    pub(super) fn finish(self) {
        if let Some(table) = self.table {
            for key in table.keys() {
                if !self.known.contains(&key.as_str()) {
                    let name = self.name(key);
                    self.errors.push(format!("{name}: unknown key"));
                }
            }
        }
    }
}

/// The table `[name]` of `root`; absent or not a table (a problem) gives `None`.
pub(super) fn section<'t>(
    root: &'t Table,
    name: &str,
    errors: &mut Vec<String>,
) -> Option<&'t Table> {
    match root.get(name)? {
        Value::Table(t) => Some(t),
        other => {
            errors.push(format!(
                "[{name}]: expected a table, found {}",
                other.type_str()
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;

    use crate::config::tests::NO_ENV;

    #[test]
    fn sizes_and_durations_parse() {
        let c = Config::parse(
            "[cache]\nmax_bytes = \"1MiB\"\nttl = \"5m\"\n[realtime]\nwindow = \"2s\"",
            &NO_ENV,
        )
        .unwrap();
        assert_eq!(c.cache.max_bytes, 1024 * 1024);
        assert_eq!(c.cache.ttl, Duration::from_secs(300));
        assert_eq!(c.realtime.window, Duration::from_secs(2));
    }

    #[test]
    fn a_word_outside_the_choices_names_them_all() {
        let errs = Config::parse(
            "[store]\nbackend = \"disk\"\n[upstream]\nclient_key = \"keep\"",
            &[("MONO_PROXY_LOG_FORMAT", "xml")],
        )
        .unwrap_err()
        .0;
        for expected in [
            "upstream.client_key: expected \"strip\" or \"reject\", found \"keep\"",
            "store.backend: expected \"memory\" or \"redis\", found \"disk\"",
            "log.format: expected \"text\" or \"json\", found \"xml\"",
        ] {
            assert!(errs.iter().any(|e| e == expected), "{expected} in {errs:?}");
        }
    }
}
