//! A local simulator of the Mono API endpoints the proxy touches, for tests, benches and demos.
//!
//! The sandbox answers `/v2/accounts/{id}` (details, balance, transactions, jobs) with
//! deterministic seed data, follows Mono's realtime header contract (jobs that finish after
//! [`SandboxConfig::job_delay`], the 5-minute window that repeats the last job's headers),
//! sends Mono's two webhooks when a job ends, checks `mono-sec-key`, injects faults, and counts
//! every call so tests can assert how many requests reached "Mono".
//!
//! It also answers the other reads proxy route rules name, each with its own counter (see
//! [`COUNTERS`]): the unversioned `/accounts/{id}`, `…/transactions` and `…/identity` the
//! mono-node SDK calls (v1 bodies, no envelope); v2 `identity`, `income`, `statement`,
//! `earnings` and `assets`; and `POST /v2/lookup/bvn/initiate`.
//!
//! Special account ids: `reauth…` (jobs fail with `reauth_required`), `fail…` (jobs fail),
//! `missing…` (every route answers 404). Any other id matching `[A-Za-z0-9._-]{1,64}` exists.
//!
//! Control routes need no key, are not counted and are never faulted (for the CLI and the
//! load bench):
//! - `GET /__sandbox/counts` → `{"total": 3, "balance": 1, …}` (every name in [`COUNTERS`]);
//! - `POST /__sandbox/reset` → zeroes counters, forgets recorded requests, clears the fault;
//!   `?windows=true` also forgets the realtime windows;
//! - `POST /__sandbox/fault` with `{"kind":"status","status":503,"times":2}`,
//!   `{"kind":"latency","ms":200}`, `{"kind":"reset"}`, `{"kind":"hang"}`,
//!   `{"kind":"reply","status":200,"headers":[["content-type","text/html"]],"body":"<html>…"}`
//!   (answered verbatim), `{"kind":"headers","headers":[["cache-control","private"]]}` (the
//!   normal answer plus these headers, see [`Fault::Headers`]) or `{"kind":"none"}`; `times`
//!   and `route` (see [`FaultSpec::route`]) are optional on every kind;
//! - `GET /__sandbox/requests` → `[{"method","path","query","headers":[[name,value]…],"body"}]`
//!   with `mono-sec-key` values shown as `[redacted]`;
//! - `POST /__sandbox/balance` with `{"account":"abc","balance":100,"staged":true}`
//!   ([`Sandbox::stage_balance`] when staged, else [`Sandbox::set_balance`]);
//! - `POST /__sandbox/finish-jobs` → [`Sandbox::finish_jobs_now`].
//!
//! All answer 200 `{"status":"ok"}` (or the requested JSON), 400 with Mono's failed envelope
//! on a bad body, 404 for unknown control paths.
//!
//! This file holds the handle ([`Sandbox`], a cheap clone over shared state), its config,
//! counters and recorded requests. The rest, one job a file: `model` (accounts, jobs, the
//! realtime window), `fault` (injected failures), `server` (plain and TLS listeners),
//! `handler` (the Mono API routes), `node` (the v1 routes' bodies), `products` (identity,
//! income, statement, earnings, assets, BVN lookup), `control` (the `/__sandbox/*` routes),
//! `reply` (Mono's envelope and JSON replies), `seed` (deterministic account data),
//! `webhook` (job webhooks).

mod control;
mod fault;
mod handler;
mod model;
mod node;
mod products;
mod reply;
mod seed;
mod server;
mod webhook;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use fault::{CannedReply, Fault, FaultSpec};
pub use model::{JobKind, JobState, SandboxJob};
pub use server::self_signed_cert;

use model::World;

/// Default accepted `mono-sec-key`.
pub const DEFAULT_SECRET_KEY: &str = "test_sk_sandbox";
/// Default time a realtime job takes before it finishes.
pub const DEFAULT_JOB_DELAY: Duration = Duration::from_secs(2);
/// Mono's realtime window: one realtime job per account and kind per 5 minutes.
pub const DEFAULT_SANDBOX_WINDOW: Duration = Duration::from_secs(300);
/// How many API requests [`Sandbox::requests`] keeps.
pub const MAX_RECORDED_REQUESTS: usize = 1000;
/// Recorded request bodies are cut to this many bytes so the log stays bounded.
pub const MAX_RECORDED_BODY: usize = 256 * 1024;
/// Larger request bodies are refused with 413.
pub const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

/// Every counter name the sandbox keeps; [`Sandbox::counts`] always lists all of them.
///
/// Route counters are also the names faults match on ([`FaultSpec::route`]). `other` counts
/// every endpoint without a core counter, as it always has, so it also counts the account
/// reads `node_details` … `assets` (one call bumps both); `bvn_initiate` was `not_found`
/// before it had a route and is counted only under its own name. `connections` counts accepted
/// TCP connections and `tls_handshakes` completed TLS handshakes, so a bench can tell a pooled
/// upstream client from one that reconnects per call.
pub const COUNTERS: &[&str] = &[
    "total",
    "balance",
    "transactions",
    "details",
    "balance_realtime",
    "transactions_realtime",
    "balance_realtime_repeat",
    "transactions_realtime_repeat",
    "job",
    "node_details",
    "node_transactions",
    "node_identity",
    "identity",
    "income",
    "statements",
    "earnings",
    "assets",
    "bvn_initiate",
    "echo",
    "other",
    "not_found",
    "unauthorized",
    "faulted",
    "webhooks_sent",
    "webhooks_failed",
    "connections",
    "tls_handshakes",
];

/// Settings for one sandbox instance.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The `mono-sec-key` accepted.
    pub secret_key: String,
    /// More keys accepted, one per further Mono app (they share the sandbox's accounts).
    pub extra_keys: Vec<String>,
    /// How long a realtime job runs before it finishes.
    pub job_delay: Duration,
    /// Mono's realtime window (5 minutes).
    pub window: Duration,
    /// Added to every API response (not control routes).
    pub latency: Duration,
    /// `http://` URL webhooks are POSTed to when jobs end.
    pub webhook_url: Option<String>,
    /// Sent as the `mono-webhook-secret` header on webhooks.
    pub webhook_secret: Option<String>,
    /// When true every successful sync raises the balance by 100, so syncs have new data.
    pub sync_changes_data: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            secret_key: DEFAULT_SECRET_KEY.to_owned(),
            extra_keys: Vec::new(),
            job_delay: DEFAULT_JOB_DELAY,
            window: DEFAULT_SANDBOX_WINDOW,
            latency: Duration::ZERO,
            webhook_url: None,
            webhook_secret: None,
            sync_changes_data: false,
        }
    }
}

/// One API request as the sandbox received it (body cut to [`MAX_RECORDED_BODY`]).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// First value of a header (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The Mono simulator: a cheap-to-clone handle over shared state.
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: SandboxConfig,
    world: Mutex<World>,
    counts: Mutex<BTreeMap<String, u64>>,
    requests: Mutex<VecDeque<RecordedRequest>>,
    fault: Mutex<Option<FaultSpec>>,
    webhook_client: Client<HttpConnector, Full<Bytes>>,
}

impl Sandbox {
    /// Creates a sandbox; nothing listens until [`Sandbox::serve`] runs.
    pub fn new(cfg: SandboxConfig) -> Sandbox {
        let webhook_client = Client::builder(TokioExecutor::new()).build_http();
        Sandbox {
            shared: Arc::new(Shared {
                cfg,
                world: Mutex::new(World::default()),
                counts: Mutex::new(COUNTERS.iter().map(|c| (c.to_string(), 0)).collect()),
                requests: Mutex::new(VecDeque::with_capacity(MAX_RECORDED_REQUESTS)),
                fault: Mutex::new(None),
                webhook_client,
            }),
        }
    }

    /// The configuration this sandbox runs with.
    pub fn config(&self) -> &SandboxConfig {
        &self.shared.cfg
    }

    /// How many times a counter was bumped (0 for unknown names); see [`COUNTERS`].
    pub fn count(&self, route: &str) -> u64 {
        lock(&self.shared.counts).get(route).copied().unwrap_or(0)
    }

    /// All counters by name.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.counts).clone()
    }

    /// Sets every counter back to 0.
    pub fn reset_counts(&self) {
        for v in lock(&self.shared.counts).values_mut() {
            *v = 0;
        }
    }

    /// The last [`MAX_RECORDED_REQUESTS`] API requests, oldest first (control routes excluded).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    fn bump(&self, counter: &str) {
        *lock(&self.shared.counts)
            .entry(counter.to_owned())
            .or_insert(0) += 1;
    }

    fn record(&self, req: RecordedRequest) {
        let mut log = lock(&self.shared.requests);
        if log.len() == MAX_RECORDED_REQUESTS {
            log.pop_front();
        }
        log.push_back(req);
    }
}

/// A sandbox serving on a loopback port in the background; dropping it stops the server.
pub struct RunningSandbox {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// The sandbox handle, for counts, faults and jobs.
    pub sandbox: Sandbox,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl RunningSandbox {
    /// `http://127.0.0.1:PORT` (or `https://` when asked), without a trailing slash.
    pub fn base_url(&self, https: bool) -> String {
        let scheme = if https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(err) => Err(io::Error::other(err)),
        }
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Locks a mutex, carrying on after a panic elsewhere: counters and logs stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
