//! Secrets in the config: values that never print, where they come from, URLs without passwords.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret value whose `Debug` and `Display` never print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret string.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is sent or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when `presented` equals the secret, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        // Hashing first makes both sides the same length, so the comparison's time does not
        // reveal the secret's length either.
        let a = Sha256::digest(presented);
        let b = Sha256::digest(self.0.as_bytes());
        a.ct_eq(&b).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why a configured secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The secret file.
        path: PathBuf,
        /// What reading it returned.
        source: std::io::Error,
    },
    /// The file holds only whitespace.
    #[error("{} is empty", path.display())]
    Empty {
        /// The secret file.
        path: PathBuf,
    },
}

/// Where a secret comes from: a value given by the environment, or a file re-read on reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Not configured.
    None,
    /// A value from the environment.
    Value(Secret),
    /// A file holding the secret (trailing whitespace trimmed), re-read on SIGHUP or change.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret now; `Ok(None)` when none is configured.
    pub fn read(&self) -> Result<Option<Secret>, SecretError> {
        match self {
            SecretSource::None => Ok(None),
            SecretSource::Value(s) => Ok(Some(s.clone())),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
                    path: path.clone(),
                    source,
                })?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(SecretError::Empty { path: path.clone() });
                }
                Ok(Some(Secret::new(value)))
            }
        }
    }

    /// The file behind the secret, if any (watched for rotation).
    pub fn file(&self) -> Option<&Path> {
        match self {
            SecretSource::File(p) => Some(p),
            _ => None,
        }
    }
}

/// The URL with any password in its userinfo replaced by `***`, safe to echo in messages and logs.
///
/// Works on any text, not only valid URLs: the URLs worth redacting are often the malformed
/// ones an operator is being told about. When the text is ambiguous it hides more, never less.
pub fn redact_url(url: &str) -> String {
    match password_span(url) {
        Some((from, to)) => format!("{}***{}", &url[..from], &url[to..]),
        None => url.to_string(),
    }
}

/// The password in a URL's userinfo (found as [`redact_url`] finds it), to scrub it from text
/// that others produced, such as a client library's error message.
pub fn url_password(url: &str) -> Option<&str> {
    password_span(url)
        .map(|(from, to)| &url[from..to])
        .filter(|p| !p.is_empty())
}

/// Byte range of the password: after the userinfo's first `:`, up to the last `@`; or, with no
/// userinfo password, the value of a `pass=` / `password=` query parameter (the form the redis
/// client reads for unix-socket URLs).
fn password_span(url: &str) -> Option<(usize, usize)> {
    userinfo_password_span(url).or_else(|| query_password_span(url))
}

/// The value of the first `pass=` or `password=` parameter after `?`, up to `&` or `#`.
fn query_password_span(url: &str) -> Option<(usize, usize)> {
    let q = url.find('?')? + 1;
    let mut at = q;
    for param in url[q..].split('&') {
        for name in ["pass=", "password="] {
            // Bytes, not a str slice: the text may be anything, multi-byte characters included.
            let head = param.as_bytes().get(..name.len());
            if head.is_some_and(|h| h.eq_ignore_ascii_case(name.as_bytes())) {
                let from = at + name.len();
                let end = url[from..].find(['&', '#']).map_or(url.len(), |i| from + i);
                return Some((from, end));
            }
        }
        at += param.len() + 1;
    }
    None
}

fn userinfo_password_span(url: &str) -> Option<(usize, usize)> {
    // The last `@` ends the userinfo: a password pasted unencoded may itself hold `@`, `/` or `#`.
    let at = url.rfind('@')?;
    let start = userinfo_start(&url[..at]);
    let colon = url[start..at].find(':')?;
    Some((start + colon + 1, at))
}

/// Where the userinfo begins: after `scheme://`, or at the very start when there is no such
/// prefix (so in `redis:/user:pass@h` the "scheme" counts as the user and `/user:pass` is hidden).
fn userinfo_start(before_at: &str) -> usize {
    let Some(i) = before_at.find("://") else {
        return 0;
    };
    let scheme = &before_at[..i];
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if is_scheme {
        i + 3
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_of_a_url_is_found_for_scrubbing() {
        assert_eq!(url_password("redis://u:p/w@h:1/0"), Some("p/w"));
        assert_eq!(url_password("redis://:s3cret@h"), Some("s3cret"));
        assert_eq!(url_password("redis://u:@h"), None);
        assert_eq!(url_password("redis://h:6379/0"), None);
    }

    #[test]
    fn secret_matches_only_the_same_bytes() {
        let s = Secret::new("s3cret");
        assert!(s.matches(b"s3cret"));
        assert!(!s.matches(b"s3cre"));
        assert!(!s.matches(b"s3cret "));
        assert!(!s.matches(b""));
    }

    #[test]
    fn unreadable_and_empty_secret_files_say_which_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = SecretSource::File(missing.clone()).read().unwrap_err();
        assert!(matches!(err, SecretError::Read { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("cannot read {}: ", missing.display())),
            "{shown}"
        );

        let blank = dir.path().join("blank");
        std::fs::write(&blank, " \n").unwrap();
        let err = SecretSource::File(blank.clone()).read().unwrap_err();
        assert_eq!(err.to_string(), format!("{} is empty", blank.display()));

        let good = dir.path().join("good");
        std::fs::write(&good, "k\n").unwrap();
        let read = SecretSource::File(good).read().unwrap().unwrap();
        assert_eq!(read.expose(), "k");
    }

    #[test]
    fn redact_url_hides_the_password_of_well_formed_urls() {
        assert_eq!(
            redact_url("redis://user:pass@h:6379/0"),
            "redis://user:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://:pass@h"), "redis://:***@h");
        assert_eq!(redact_url("http://user:pass@h"), "http://user:***@h");
    }

    #[test]
    fn redact_url_hides_the_password_of_malformed_urls() {
        // (input, pieces of its password that must not show)
        for (url, hidden) in [
            ("redis:/user:pass@h", &["pass"][..]),
            ("user:pass@h", &["pass"]),
            ("user:/pass@h", &["pass"]),
            ("u:x://pass@h", &["x:", "pass"]),
            ("redis://user:pa@ss@h", &["pa@", "ss"]),
            ("redis://user:pa/ss@h/0", &["pa/", "ss"]),
            ("redis://user:pa#ss@h", &["pa#", "ss"]),
        ] {
            let shown = redact_url(url);
            for piece in hidden {
                assert!(!shown.contains(piece), "{url} shown as {shown}");
            }
            assert!(shown.contains(":***@"), "{url} shown as {shown}");
        }
        assert_eq!(redact_url("user:pass@h"), "user:***@h");
        assert_eq!(redact_url("redis:/user:pass@h"), "redis:***@h");
    }

    #[test]
    fn redact_url_leaves_urls_without_a_password_alone() {
        for url in [
            "redis://h:6379/0",
            "https://api.withmono.com",
            "redis://user@h",
            "not a url",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn unix_socket_urls_hide_their_password_parameter() {
        assert_eq!(
            redact_url("redis+unix:///run/redis.sock?db=1&pass=s3cret&x=y"),
            "redis+unix:///run/redis.sock?db=1&pass=***&x=y"
        );
        assert_eq!(
            redact_url("unix:///run/redis.sock?PASSWORD=s3cret"),
            "unix:///run/redis.sock?PASSWORD=***"
        );
        assert_eq!(url_password("unix:///s?pass=abc#x"), Some("abc"));
        assert_eq!(redact_url("redis://h:6379/0?db=1"), "redis://h:6379/0?db=1");
        // Any text, multi-byte characters included, without a panic.
        assert_eq!(
            redact_url("unix:///s?é=1&pässword=x"),
            "unix:///s?é=1&pässword=x"
        );
        assert_eq!(redact_url("unix:///s?é&pass=x"), "unix:///s?é&pass=***");
    }
}
