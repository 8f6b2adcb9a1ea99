//! The shared handles of the request path, assembled once: config, upstream client, cache
//! storage, flights, store, poll queue, webhook memory, secrets and metrics.
//!
//! This is the floor the request classes stand on; it imports nothing from them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::cache::ResponseCache;
use crate::config::{Config, Origin};
use crate::cooldowns::Cooldowns;
use crate::deliveries::Deliveries;
use crate::inflight::InFlight;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::pagination::Rewrite;
use crate::polls::{PollQueue, PollReceiver};
use crate::purges::Purges;
use crate::recent_errors::RecentErrors;
use crate::routes::Routes;
use crate::store::{Store, StoreOpenError};
use crate::tenant::{Secrets, SecretsError};
use crate::upstream::{Upstream, UpstreamSetupError};

/// Why the state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A secret is missing or unreadable.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The upstream client cannot be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    /// The store cannot be set up.
    #[error(transparent)]
    Store(#[from] StoreOpenError),
}

/// Everything the request path shares; cheap to reach through `Arc<State>`.
pub struct State {
    /// Validated config; swapped whole by a reload.
    pub config: ArcSwap<Config>,
    /// Where the config was read from, so a reload reads the same place (`None`: built from a
    /// value, nothing to re-read).
    pub origin: Option<Origin>,
    /// Pooled upstream client.
    pub upstream: Upstream,
    /// Secrets, swapped on rotation.
    pub secrets: ArcSwap<Secrets>,
    /// The route table; swapped by a reload.
    pub routes: ArcSwap<Routes>,
    /// Mono 429 cooldowns in force.
    pub cooldowns: Cooldowns,
    /// Per-client rate, quota and concurrency limits; swapped by a reload.
    pub limiters: ArcSwap<Limiters>,
    /// The last requests that failed (admin `/stats`).
    pub recent_errors: RecentErrors,
    /// Response cache storage.
    pub cache: ResponseCache,
    /// Cache fills and realtime calls in flight.
    pub inflight: InFlight,
    /// Job records and the realtime window.
    pub store: Store,
    /// Processing jobs handed to the poller.
    pub polls: PollQueue,
    /// Webhook delivery memory (idempotence and per-target progress).
    pub deliveries: Deliveries,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Pagination link rewriting; swapped by a reload.
    pub pagination: ArcSwap<Rewrite>,
    /// Purges the admin API ordered: what a shared body must be newer than to be adopted.
    pub purges: Purges,
    /// Set on SIGTERM: `/readyz` fails while in-flight requests drain.
    pub draining: AtomicBool,
    /// Held by a config or secret reload, so two never interleave.
    pub reloading: Mutex<()>,
}

impl State {
    /// Builds the state: reads secrets, builds the upstream client, connects the store. Also
    /// returns the poll queue's receiving end, for the poller task.
    pub async fn new(
        config: Config,
        origin: Option<Origin>,
    ) -> Result<(Arc<State>, PollReceiver), StateError> {
        let secrets = Secrets::load(&config)?;
        let metrics = Arc::new(Metrics::new(config.realtime.cost_per_call));
        let upstream = Upstream::new(&config.upstream, Arc::clone(&metrics))?;
        let store = Store::open(
            &config.store,
            &config.cache,
            config.realtime.window,
            metrics.store_latency(),
        )
        .await?;
        let (polls, poll_rx) = PollQueue::new(config.jobs.poll);
        let routes = Routes::new(&config.routes, &config.cache);
        let state = Arc::new(State {
            limiters: ArcSwap::from_pointee(Limiters::new(&config.clients)),
            recent_errors: RecentErrors::default(),
            cache: ResponseCache::new(&config.cache, routes.max_ttl()),
            routes: ArcSwap::from_pointee(routes),
            origin,
            purges: Purges::default(),
            cooldowns: Cooldowns::new(config.upstream.max_cooldown),
            inflight: InFlight::default(),
            polls,
            deliveries: Deliveries::new(config.webhook.memory, most_targets(&config)),
            secrets: ArcSwap::from_pointee(secrets),
            upstream,
            store,
            metrics,
            pagination: ArcSwap::from_pointee(pagination_rewrite(&config)),
            draining: AtomicBool::new(false),
            reloading: Mutex::new(()),
            config: ArcSwap::from_pointee(config),
        });
        Ok((state, poll_rx))
    }

    /// Re-reads secret files; the old secrets stay in force if the new ones cannot be read.
    pub fn reload_secrets(&self) -> Result<(), SecretsError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match Secrets::load(&self.config.load()) {
            Ok(s) => {
                self.secrets.store(Arc::new(s));
                self.metrics.secret_reload("ok");
                Ok(())
            }
            Err(e) => {
                self.metrics.secret_reload("error");
                Err(e)
            }
        }
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The most relay targets any app's webhooks have (the delivery memory weighs events by it).
fn most_targets(config: &Config) -> usize {
    config
        .clients
        .iter()
        .map(|c| c.forward_to.len())
        .chain([config.webhook.forward_to.len()])
        .max()
        .unwrap_or(0)
}

/// Mono's origins (and the configured upstream's) become the proxy's public base URL.
pub fn pagination_rewrite(config: &Config) -> Rewrite {
    let base = config.upstream.base_url.to_string();
    let mut origins = vec![
        "https://api.withmono.com".to_string(),
        "http://api.withmono.com".to_string(),
        base.trim_end_matches('/').to_string(),
    ];
    origins.dedup();
    Rewrite::new(origins, &config.public_base_url)
}
