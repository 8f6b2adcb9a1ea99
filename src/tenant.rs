//! Whose Mono key a request uses: tenants, client tokens and the secrets in force.
//!
//! Cache entries and job records are keyed by tenant, so apps with their own Mono keys never
//! share them. The secrets are read here at start and again on rotation.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{Config, Secret, SecretError};

/// Why the secrets could not be read (at start, or on a rotation that is then refused).
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// No Mono key is configured.
    #[error("no Mono secret key: set MONO_SEC_KEY or upstream.secret_key_file")]
    NoKey,
    /// A client table has no token.
    #[error("client {0}: no token")]
    NoToken(String),
    /// A configured secret could not be read.
    #[error("{what}: {source}")]
    Unreadable {
        /// Which secret (`upstream.secret_key_file`, `client NAME: token`, …).
        what: String,
        /// Why, without the secret's value.
        source: SecretError,
    },
}

/// Whose Mono key a request uses; cache entries and job records never cross tenants.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// A stable, non-reversible id: the first 8 bytes of SHA-256 of the key, in hex.
    pub id: Arc<str>,
    /// The key injected upstream.
    pub key: Secret,
}

impl Tenant {
    /// The tenant of a key.
    pub fn new(key: Secret) -> Tenant {
        let digest = Sha256::digest(key.expose().as_bytes());
        let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Tenant { id: id.into(), key }
    }
}

/// An app allowed in by token, and the tenant its requests use.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    /// Name for logs.
    pub name: Arc<str>,
    /// The same name as a metric label (a bounded set: the configured names).
    pub label: &'static str,
    /// The token it presents.
    pub token: Secret,
    /// Its tenant.
    pub tenant: Tenant,
    /// With its own Mono key: the webhook secret its Mono app sends.
    pub webhook: Option<Secret>,
    /// With its own Mono key: where its webhooks are relayed.
    pub forward_to: Vec<http::Uri>,
}

/// The Mono app a webhook came from, told by its secret.
#[derive(Debug, Clone, Copy)]
pub enum WebhookApp<'a> {
    /// The default key's app (`MONO_WEBHOOK_SECRET`, `[webhook] forward_to`).
    Default,
    /// A client's own Mono app.
    Client(&'a ClientAuth),
}

/// The secrets in force now; swapped whole on rotation.
#[derive(Debug)]
pub struct Secrets {
    /// The default tenant (`MONO_SEC_KEY` / `secret_key_file`).
    pub default: Tenant,
    /// Client tokens, when configured.
    pub clients: Vec<ClientAuth>,
    /// The webhook secret Mono sends.
    pub webhook: Option<Secret>,
    /// The admin listener's bearer token.
    pub admin: Option<Secret>,
}

impl Secrets {
    /// Reads every configured secret source.
    pub fn load(config: &Config) -> Result<Secrets, SecretsError> {
        let unreadable = |what: &str| {
            let what = what.to_string();
            move |source| SecretsError::Unreadable { what, source }
        };
        let key = config
            .upstream
            .secret_key
            .read()
            .map_err(unreadable("upstream.secret_key_file"))?
            .ok_or(SecretsError::NoKey)?;
        let default = Tenant::new(key);
        let mut clients = Vec::new();
        for c in &config.clients {
            let token = c
                .token
                .read()
                .map_err(unreadable(&format!("client {}: token", c.name)))?
                .ok_or_else(|| SecretsError::NoToken(c.name.clone()))?;
            let tenant = match c
                .secret_key
                .read()
                .map_err(unreadable(&format!("client {}: secret key", c.name)))?
            {
                Some(k) => Tenant::new(k),
                None => default.clone(),
            };
            let webhook = c
                .webhook_secret
                .read()
                .map_err(unreadable(&format!("client {}: webhook secret", c.name)))?;
            clients.push(ClientAuth {
                name: c.name.as_str().into(),
                label: crate::labels::intern(&c.name),
                token,
                tenant,
                webhook,
                forward_to: c.forward_to.clone(),
            });
        }
        let webhook = config
            .webhook
            .secret
            .read()
            .map_err(unreadable("webhook.secret_file"))?;
        let admin = config
            .admin
            .token
            .read()
            .map_err(unreadable("admin.token_file"))?;
        Ok(Secrets {
            default,
            clients,
            webhook,
            admin,
        })
    }

    /// Every tenant id in force (for invalidations that name only an account).
    pub fn tenant_ids(&self) -> Vec<Arc<str>> {
        let mut ids = vec![self.default.id.clone()];
        for c in &self.clients {
            if !ids.contains(&c.tenant.id) {
                ids.push(c.tenant.id.clone());
            }
        }
        ids
    }

    /// The client whose token was presented, compared in constant time.
    pub fn client(&self, presented: &[u8]) -> Option<&ClientAuth> {
        self.clients.iter().find(|c| c.token.matches(presented))
    }

    /// Whether a presented webhook secret is the configured one (false when none is).
    pub fn webhook_matches(&self, presented: &[u8]) -> bool {
        self.webhook.as_ref().is_some_and(|s| s.matches(presented))
    }

    /// Whether any webhook secret is configured (the default one or an app's).
    pub fn any_webhook_secret(&self) -> bool {
        self.webhook.is_some() || self.clients.iter().any(|c| c.webhook.is_some())
    }

    /// The app whose webhook secret `presented` is. Every secret is compared, in constant time,
    /// whichever matches: the time taken says nothing about which app, if any, it was.
    pub fn webhook_app(&self, presented: &[u8]) -> Option<WebhookApp<'_>> {
        let mut found = None;
        if self.webhook_matches(presented) {
            found = Some(WebhookApp::Default);
        }
        for c in &self.clients {
            let matched = c.webhook.as_ref().is_some_and(|s| s.matches(presented));
            if matched && found.is_none() {
                found = Some(WebhookApp::Client(c));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_named_by_a_hash_never_the_key() {
        let t = Tenant::new(Secret::new("live_sk_abc"));
        assert_eq!(t.id.len(), 16);
        assert!(!t.id.contains("abc"));
        assert_eq!(Tenant::new(Secret::new("live_sk_abc")).id, t.id);
    }
}
