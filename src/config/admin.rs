//! `[admin]`: the admin listener's bearer token, required beyond loopback.

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::Table;

use serde::Serialize;

use super::fields::Fields;
use super::{Env, Secret, SecretSource};

/// The admin listener's access control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    /// `Authorization: Bearer …` required on every admin endpoint but `/healthz`, `/readyz`
    /// and the static page at `/`; none when unset.
    pub token: SecretSource,
}

/// Reads `[admin]`: `token`, or `token_file`, or `MONO_PROXY_ADMIN_TOKEN`, at most one; beyond
/// loopback one is required.
pub(super) fn admin(
    table: Option<&Table>,
    admin_listen: SocketAddr,
    env: &dyn Env,
    errors: &mut Vec<String>,
) -> AdminConfig {
    let mut f = Fields::new("admin", table, errors);
    let sources = [
        f.string("token")
            .map(|t| SecretSource::Value(Secret::new(t))),
        f.string("token_file")
            .map(|p| SecretSource::File(PathBuf::from(p))),
        env.var("MONO_PROXY_ADMIN_TOKEN")
            .map(|t| SecretSource::Value(Secret::new(t))),
    ];
    let mut given = sources.into_iter().flatten();
    let token = given.next().unwrap_or(SecretSource::None);
    if given.next().is_some() {
        f.problem(
            "token",
            "set one of token, token_file or MONO_PROXY_ADMIN_TOKEN",
        );
    }
    if let SecretSource::Value(s) = &token {
        if s.expose().trim().len() < 16 {
            f.problem(
                "token",
                "use at least 16 characters (e.g. `openssl rand -hex 24`)",
            );
        }
    }
    if !admin_listen.ip().is_loopback() && token == SecretSource::None {
        f.problem(
            "token",
            format!("admin_listen {admin_listen} is beyond loopback: set [admin] token or token_file (or MONO_PROXY_ADMIN_TOKEN), or listen on 127.0.0.1"),
        );
    }
    f.finish();
    AdminConfig { token }
}
