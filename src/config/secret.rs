//! Secrets in the config: values that never print, and where they come from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    pub fn read(&self) -> Result<Option<Secret>, String> {
        match self {
            SecretSource::None => Ok(None),
            SecretSource::Value(s) => Ok(Some(s.clone())),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(format!("{} is empty", path.display()));
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
