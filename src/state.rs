//! Shared state behind the service: config, upstream client, cache, store, secrets, metrics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Request;
use sha2::{Digest, Sha256};

use crate::body::Body;
use crate::cache::{Filled, ResponseCache};
use crate::config::{Backend, Config, Secret};
use crate::error::ProxyError;
use crate::jobs::Poller;
use crate::metrics::Metrics;
use crate::pagination::Rewrite;
use crate::realtime::RealtimeAnswer;
use crate::singleflight::Flights;
use crate::store::{JobStore, MemoryStore};
use crate::upstream::{Fetched, Upstream};
use crate::webhook::Deliveries;

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
    /// The token it presents.
    pub token: Secret,
    /// Its tenant.
    pub tenant: Tenant,
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
}

impl Secrets {
    /// Reads every configured secret source.
    pub fn load(config: &Config) -> Result<Secrets, String> {
        let key = config
            .upstream
            .secret_key
            .read()
            .map_err(|e| e.to_string())?
            .ok_or("no Mono secret key: set MONO_SEC_KEY or upstream.secret_key_file")?;
        let default = Tenant::new(key);
        let mut clients = Vec::new();
        for c in &config.clients {
            let token = c
                .token
                .read()
                .map_err(|e| format!("client {}: {e}", c.name))?
                .ok_or_else(|| format!("client {}: no token", c.name))?;
            let tenant = match c.secret_key.read().map_err(|e| e.to_string())? {
                Some(k) => Tenant::new(k),
                None => default.clone(),
            };
            clients.push(ClientAuth {
                name: c.name.as_str().into(),
                token,
                tenant,
            });
        }
        let webhook = config.webhook.secret.read().map_err(|e| e.to_string())?;
        Ok(Secrets {
            default,
            clients,
            webhook,
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
}

/// Everything the request path shares; cheap to reach through `Arc<State>`.
pub struct State {
    /// Validated config.
    pub config: Config,
    /// Pooled upstream client.
    pub upstream: Upstream,
    /// Secrets, swapped on rotation.
    pub secrets: ArcSwap<Secrets>,
    /// Response cache.
    pub cache: ResponseCache,
    /// Cache fills in flight.
    pub fills: Arc<Flights<String, Result<Filled, ProxyError>>>,
    /// Realtime calls in flight.
    pub realtime: Arc<Flights<String, Result<RealtimeAnswer, ProxyError>>>,
    /// Job records and the realtime window.
    pub store: Arc<dyn JobStore>,
    /// Job poller.
    pub poller: Poller,
    /// Webhook delivery memory (idempotence and per-target progress).
    pub deliveries: Deliveries,
    /// Metrics.
    pub metrics: Metrics,
    /// Pagination link rewriting.
    pub pagination: Rewrite,
    /// Set on SIGTERM: `/readyz` fails while in-flight requests drain.
    pub draining: AtomicBool,
}

impl State {
    /// Builds the state: reads secrets, builds the upstream client, connects the store.
    pub async fn new(config: Config) -> Result<Arc<State>, String> {
        let secrets = Secrets::load(&config)?;
        let upstream = Upstream::new(&config.upstream)?;
        let metrics = Metrics::new(config.realtime.cost_per_call);
        let store: Arc<dyn JobStore> = match config.store.backend {
            Backend::Memory => Arc::new(MemoryStore::new()),
            Backend::Redis => crate::store::redis::RedisStore::connect(&config.store).await?,
        };
        let base = config.upstream.base_url.to_string();
        let mut origins = vec![
            "https://api.withmono.com".to_string(),
            "http://api.withmono.com".to_string(),
            base.trim_end_matches('/').to_string(),
        ];
        origins.dedup();
        let pagination = Rewrite::new(origins, &config.public_base_url);
        let state = Arc::new(State {
            cache: ResponseCache::new(&config.cache),
            fills: Arc::default(),
            realtime: Arc::default(),
            poller: Poller::new(config.jobs.poll_concurrency),
            deliveries: Deliveries::new(),
            secrets: ArcSwap::from_pointee(secrets),
            upstream,
            store,
            metrics,
            pagination,
            draining: AtomicBool::new(false),
            config,
        });
        crate::jobs::spawn_broadcast_listener(&state);
        Ok(state)
    }

    /// Re-reads secret files; the old secrets stay in force if the new ones cannot be read.
    pub fn reload_secrets(&self) -> Result<(), String> {
        match Secrets::load(&self.config) {
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

    /// Sends upstream, recording the call in metrics; the response body streams after.
    pub async fn timed_send(
        &self,
        class: &'static str,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, ProxyError> {
        let started = Instant::now();
        let result = self.upstream.send(req, timeout).await;
        self.record_upstream(class, result.as_ref().map(|r| r.status()), started);
        result
    }

    /// Fetches a whole response upstream, recording the call in metrics.
    pub async fn timed_fetch(
        &self,
        class: &'static str,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<Fetched, ProxyError> {
        let started = Instant::now();
        let result = self.upstream.fetch(req, timeout).await;
        self.record_upstream(class, result.as_ref().map(|r| r.status), started);
        result
    }

    fn record_upstream(
        &self,
        class: &'static str,
        status: Result<http::StatusCode, &ProxyError>,
        started: Instant,
    ) {
        let label = match status {
            Ok(s) => s.as_str().to_string(),
            // The client's body was too large: the upstream did nothing wrong.
            Err(ProxyError::PayloadTooLarge(_)) => return,
            Err(e) => e.kind().to_string(),
        };
        self.metrics.upstream(class, &label, started.elapsed());
    }
}
