//! Full reload (SIGHUP, `POST /reload`): the config is read again from where it came from and
//! validated whole; on any problem nothing changes. On success routes, TTLs, clients, limits,
//! secrets, webhook targets and the log filter apply to the next request, while connections,
//! the cache (of tenants still configured), flights and realtime windows stay. What is built
//! once at start (listeners, the store, the upstream pool, the poller) keeps its old value and
//! is reported as needing a restart.

use std::sync::Arc;

use serde::Serialize;

use crate::config::{self, Config, ConfigErrors, ProcessEnv, SecretSource};
use crate::routes::Routes;
use crate::state::{pagination_rewrite, State};
use crate::tenant::Secrets;

/// What a successful reload did.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// Top-level sections whose effective value changed (`route`, `clients`, `cache`, …).
    pub changed: Vec<String>,
    /// Settings that changed in the file but apply only after a restart; their old values stay.
    pub restart_required: Vec<&'static str>,
    /// Whether the file's log filter changed and was applied (a `PUT /log` filter stays
    /// otherwise).
    pub log_filter_applied: bool,
}

/// Reads, validates and applies the config again; on error nothing has changed. Reloads (and
/// secret reloads) run one at a time, so two cannot interleave their swaps.
pub fn reload(state: &State, why: &str) -> Result<Reloaded, ConfigErrors> {
    let _one_at_a_time = state
        .reloading
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let result = apply(state);
    match &result {
        Ok(r) => {
            state.metrics.secret_reload("ok");
            tracing::info!(reason = why, changed = ?r.changed, restart_required = ?r.restart_required, "config reloaded");
            for setting in &r.restart_required {
                tracing::warn!(
                    setting,
                    "changed in the config file, but applies only after a restart"
                );
            }
        }
        Err(e) => {
            state.metrics.secret_reload("error");
            tracing::error!(reason = why, problems = ?e.0, "config reload refused; the running config stays");
        }
    }
    result
}

fn apply(state: &State) -> Result<Reloaded, ConfigErrors> {
    let Some(origin) = &state.origin else {
        return Err(ConfigErrors(vec![
            "this proxy was started from a config value, not a file: there is nothing to re-read"
                .into(),
        ]));
    };
    let mut new = origin.load(&ProcessEnv)?;
    let old = state.config.load_full();
    let restart_required = keep_restart_only(&old, &mut new);
    // The new file was checked against its own admin_listen; the one in force may be wider.
    if !new.admin_listen.ip().is_loopback() && new.admin.token == SecretSource::None {
        return Err(ConfigErrors(vec![format!(
            "admin_listen {} (in force until a restart) is beyond loopback: the admin token cannot be removed before the listener moves",
            new.admin_listen
        )]));
    }
    let secrets = Secrets::load(&new).map_err(|e| ConfigErrors(vec![e.to_string()]))?;
    let log_filter_applied = new.log.filter != old.log.filter;
    if log_filter_applied {
        if let Err(e) = crate::logging::set_filter(&new.log.filter) {
            // Validation accepted it, so only a process without a reloadable subscriber (tests)
            // gets here: the rest still applies.
            tracing::debug!(error = %e, "log filter not applied");
        }
    }
    let changed = changed_sections(&old, &new);
    // Everything below is infallible: the reload applies whole.
    let routes = Routes::new(&new.routes, &new.cache);
    state.cache.set_lifetimes(&new.cache, routes.max_ttl());
    let tenants = secrets.tenant_ids();
    state.cache.retain_groups(&|group| {
        tenants.iter().any(|t| {
            group
                .strip_prefix(&**t)
                .is_some_and(|rest| rest.starts_with(':'))
        })
    });
    state
        .limiters
        .store(Arc::new(state.limiters.load().reloaded(&new.clients)));
    state.pagination.store(Arc::new(pagination_rewrite(&new)));
    state.metrics.set_cost_per_call(new.realtime.cost_per_call);
    state.routes.store(Arc::new(routes));
    state.secrets.store(Arc::new(secrets));
    state.config.store(Arc::new(new));
    Ok(Reloaded {
        changed,
        restart_required,
        log_filter_applied,
    })
}

/// The top-level sections whose effective value differs (secrets redacted alike on both sides).
fn changed_sections(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = (config::to_json(old), config::to_json(new));
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return Vec::new();
    };
    new.iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Settings built into the running proxy at start: a new value is reported and the old one
/// kept, so the effective config says what is actually in force.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! keep {
        ($name:literal, $($field:ident).+) => {
            if !same(&old.$($field).+, &new.$($field).+) {
                changed.push($name);
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    keep!("listen", listen);
    keep!("admin_listen", admin_listen);
    keep!("server", server);
    keep!("store", store);
    if old.upstream.base_url != new.upstream.base_url {
        changed.push("upstream.base_url");
        new.upstream.base_url = old.upstream.base_url.clone();
    }
    keep!("upstream.ca_file", upstream.ca_file);
    keep!("upstream.connect_timeout", upstream.connect_timeout);
    keep!("upstream.pool_idle_timeout", upstream.pool_idle_timeout);
    keep!(
        "upstream.pool_max_idle_per_host",
        upstream.pool_max_idle_per_host
    );
    keep!("upstream.max_response_bytes", upstream.max_response_bytes);
    keep!("upstream.max_cooldown", upstream.max_cooldown);
    keep!("realtime.window", realtime.window);
    keep!("cache.max_bytes", cache.max_bytes);
    keep!("cache.shared", cache.shared);
    keep!("cache.shared_max_entry", cache.shared_max_entry);
    keep!("jobs", jobs);
    keep!("webhook.memory", webhook.memory);
    keep!("log.format", log.format);
    keep!("telemetry", telemetry);
    changed
}

/// Equal as the effective config shows them (every config type serializes; not all compare).
fn same<T: Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}
