//! Where a running proxy's config comes from: the file and `--listen` resolved at start, read
//! again by a reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{config_path, Config, ConfigErrors, Env};

/// Where a running proxy's config comes from, so a reload reads the same place again.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The config file resolved at start (`None`: defaults and environment only).
    pub file: Option<PathBuf>,
    /// The `--listen` given on the command line, which beats the file's.
    pub listen: Option<SocketAddr>,
}

impl Origin {
    /// The origin of a config named by `flag` / the environment, resolved now: a later change
    /// of the working directory or of `MONO_PROXY_CONFIG` does not move it.
    pub fn resolve(flag: Option<&Path>, listen: Option<SocketAddr>, env: &dyn Env) -> Origin {
        Origin {
            file: config_path(flag, env).map(|(p, _)| p),
            listen,
        }
    }

    /// Reads, parses and validates the config again, and requires its secrets to be readable.
    pub fn load(&self, env: &dyn Env) -> Result<Config, ConfigErrors> {
        let text = match &self.file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", path.display())]))?,
            None => String::new(),
        };
        let mut config = Config::parse_runnable(&text, env)?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        Ok(config)
    }
}
