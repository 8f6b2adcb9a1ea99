//! A local simulator of the Mono API endpoints the proxy touches, for tests, benches and demos.
//!
//! The sandbox answers `/v2/accounts/{id}` (details, balance, transactions, jobs) with
//! deterministic seed data, follows Mono's realtime header contract (jobs that finish after
//! [`SandboxConfig::job_delay`], the 5-minute window that repeats the last job's headers),
//! sends Mono's two webhooks when a job ends, checks `mono-sec-key`, injects faults, and counts
//! every call so tests can assert how many requests reached "Mono".
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
//!   `{"kind":"latency","ms":200}`, `{"kind":"reset"}`, `{"kind":"hang"}` or `{"kind":"none"}`;
//!   `times` and `route` (see [`FaultSpec::route`]) are optional on every kind;
//! - `GET /__sandbox/requests` → `[{"method","path","query","headers":[[name,value]…],"body"}]`
//!   with `mono-sec-key` values shown as `[redacted]`;
//! - `POST /__sandbox/balance` with `{"account":"abc","balance":100,"staged":true}`
//!   ([`Sandbox::stage_balance`] when staged, else [`Sandbox::set_balance`]);
//! - `POST /__sandbox/finish-jobs` → [`Sandbox::finish_jobs_now`].
//!
//! All answer 200 `{"status":"ok"}` (or the requested JSON), 400 with Mono's failed envelope
//! on a bad body, 404 for unknown control paths.

mod handler;
mod seed;
mod webhook;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use seed::Account;

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
/// How long shutdown waits for in-flight requests before dropping connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every counter name the sandbox keeps; [`Sandbox::counts`] always lists all of them.
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
    "echo",
    "other",
    "not_found",
    "unauthorized",
    "faulted",
    "webhooks_sent",
    "webhooks_failed",
];

/// Settings for one sandbox instance.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The only `mono-sec-key` accepted.
    pub secret_key: String,
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

/// A failure the sandbox injects in front of API routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then answer normally.
    Latency(Duration),
    /// Answer this status with Mono's failed envelope.
    Status(u16),
    /// Drop the connection without a response.
    Reset,
    /// Never answer (until the sandbox shuts down).
    Hang,
}

impl Fault {
    /// This fault on every API request until cleared.
    pub fn always(self) -> FaultSpec {
        FaultSpec {
            fault: self,
            times: None,
            route: None,
        }
    }

    /// This fault on the next `n` API requests only.
    pub fn times(self, n: u32) -> FaultSpec {
        self.always().times(n)
    }
}

/// A fault with its limits: how many requests it hits and which route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    /// What happens.
    pub fault: Fault,
    /// `Some(n)`: only the next `n` matching requests; `None`: until cleared.
    pub times: Option<u32>,
    /// Only requests whose path starts with this (when it starts with `/`) or whose route
    /// name equals it (`details`, `balance`, `transactions`, `job`, `echo`, `other`,
    /// `not_found`); `None` matches every API request.
    pub route: Option<String>,
}

impl FaultSpec {
    /// Limits the fault to the next `n` matching requests.
    pub fn times(mut self, n: u32) -> FaultSpec {
        self.times = Some(n);
        self
    }

    /// Limits the fault to a route name or path prefix (see [`FaultSpec::route`]).
    pub fn route(mut self, route: impl Into<String>) -> FaultSpec {
        self.route = Some(route.into());
        self
    }
}

impl From<Fault> for FaultSpec {
    fn from(fault: Fault) -> FaultSpec {
        fault.always()
    }
}

/// Which data a realtime job syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// `GET …/balance` with `x-realtime: true`.
    Balance,
    /// `GET …/transactions` with `x-realtime: true`.
    Transactions,
}

impl JobKind {
    /// Mono's job name, e.g. `jobs.accounts.sync_balance`.
    pub fn job_name(self) -> &'static str {
        match self {
            JobKind::Balance => "jobs.accounts.sync_balance",
            JobKind::Transactions => "jobs.accounts.sync_statement",
        }
    }

    /// Mono's job `type`: `balance` or `statement`.
    pub fn job_type(self) -> &'static str {
        match self {
            JobKind::Balance => "balance",
            JobKind::Transactions => "statement",
        }
    }

    /// The route word: `balance` or `transactions`.
    pub fn route(self) -> &'static str {
        match self {
            JobKind::Balance => "balance",
            JobKind::Transactions => "transactions",
        }
    }
}

/// A job's state as Mono reports it in `x-job-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Still syncing.
    Processing,
    /// Synced successfully.
    Finished,
    /// Sync failed (see [`SandboxJob::reauth_required`]).
    Failed,
}

impl JobState {
    /// Lowercase wire value: `processing`, `finished` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Processing => "processing",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
        }
    }
}

/// A realtime job the sandbox started.
#[derive(Debug, Clone)]
pub struct SandboxJob {
    /// `jobs.accounts_` followed by 16 hex characters.
    pub id: String,
    /// Account id the job syncs.
    pub account: String,
    /// Balance or transactions.
    pub kind: JobKind,
    /// Current status.
    pub status: JobState,
    /// True once a finished sync changed the account's data.
    pub has_new_data: bool,
    /// True when the job failed because the user must re-authorise.
    pub reauth_required: bool,
    /// When the job started; the realtime window counts from here.
    pub started_at: Instant,
    /// When the job finished or failed.
    pub ended_at: Option<Instant>,
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

#[derive(Default)]
struct World {
    accounts: HashMap<String, Account>,
    jobs: HashMap<String, SandboxJob>,
    /// Last job per (account, kind), for the realtime window.
    last_job: HashMap<(String, JobKind), String>,
}

impl World {
    fn account(&mut self, id: &str) -> &mut Account {
        self.accounts
            .entry(id.to_owned())
            .or_insert_with(|| Account::seed(id))
    }
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

    /// Serves plain HTTP/1.1 and h2c on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        self.serve_with(listener, None, shutdown).await
    }

    /// Serves HTTPS (ALPN `h2` and `http/1.1`) with a PEM chain and key until `shutdown` resolves.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        cert_pem: &str,
        key_pem: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let acceptor = tls_acceptor(cert_pem, key_pem)?;
        self.serve_with(listener, Some(acceptor), shutdown).await
    }

    /// Binds `127.0.0.1:0` and serves plain HTTP in a background task.
    pub async fn spawn(self) -> io::Result<RunningSandbox> {
        self.spawn_inner(None).await
    }

    /// Binds `127.0.0.1:0` and serves HTTPS with the given PEM chain and key in a background task.
    pub async fn spawn_tls(self, cert_pem: &str, key_pem: &str) -> io::Result<RunningSandbox> {
        let acceptor = tls_acceptor(cert_pem, key_pem)?;
        self.spawn_inner(Some(acceptor)).await
    }

    async fn spawn_inner(self, tls: Option<TlsAcceptor>) -> io::Result<RunningSandbox> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sandbox = self.clone();
        let task = tokio::spawn(async move {
            // A dropped sender also means stop.
            let shutdown = async move {
                let _ = rx.await;
            };
            sandbox.serve_with(listener, tls, shutdown).await
        });
        Ok(RunningSandbox {
            addr,
            sandbox: self,
            shutdown: Some(tx),
            task,
        })
    }

    async fn serve_with(
        self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, tls = tls.is_some(), "sandbox listening");
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let graceful = GracefulShutdown::new();
        // Connection tasks live in a JoinSet so shutdown can drop hanging ones.
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(err) => {
                            // Usually fd exhaustion: back off instead of spinning.
                            tracing::warn!(error = %err, "sandbox accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(error = %err, "sandbox could not set nodelay");
                    }
                    let conn = Connection {
                        sandbox: self.clone(),
                        builder: builder.clone(),
                        watcher: graceful.watcher(),
                        peer,
                    };
                    match tls.clone() {
                        None => connections.spawn(conn.serve(stream)),
                        Some(acceptor) => connections.spawn(async move {
                            let handshake = tokio::time::timeout(
                                TLS_HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            );
                            match handshake.await {
                                Ok(Ok(stream)) => conn.serve(stream).await,
                                Ok(Err(err)) => {
                                    tracing::debug!(client.addr = %peer, error = %err, "sandbox tls handshake failed");
                                }
                                Err(_) => {
                                    tracing::debug!(client.addr = %peer, "sandbox tls handshake timed out");
                                }
                            }
                        }),
                    };
                }
                // Reap finished connections so the set does not grow without bound.
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(err) = done {
                        if err.is_panic() {
                            tracing::error!(error = %err, "sandbox connection task panicked");
                        }
                    }
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!(%addr, "sandbox shutting down");
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("sandbox shutdown grace elapsed, dropping open connections");
        }
        connections.shutdown().await;
        Ok(())
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

    /// Injects `fault` on every API request until cleared; `None` clears.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.set_fault_spec(fault.map(Fault::always));
    }

    /// Injects a fault limited by count and/or route; `None` clears.
    pub fn set_fault_spec(&self, spec: Option<FaultSpec>) {
        if let Some(spec) = &spec {
            tracing::info!(fault = ?spec.fault, times = ?spec.times, route = ?spec.route, "sandbox fault set");
        }
        *lock(&self.shared.fault) = spec;
    }

    /// The fault currently armed, if any.
    pub fn fault(&self) -> Option<FaultSpec> {
        lock(&self.shared.fault).clone()
    }

    /// Stages a balance that the next successful sync of `account` applies (so it has new data).
    pub fn stage_balance(&self, account: &str, balance: i64) {
        lock(&self.shared.world).account(account).staged_balance = Some(balance);
    }

    /// Changes the balance right away, without a sync.
    pub fn set_balance(&self, account: &str, balance: i64) {
        lock(&self.shared.world)
            .account(account)
            .apply_balance(balance);
    }

    /// The account's current balance (seeding the account if needed).
    pub fn balance(&self, account: &str) -> i64 {
        lock(&self.shared.world).account(account).balance
    }

    /// A job by id.
    pub fn job(&self, job_id: &str) -> Option<SandboxJob> {
        lock(&self.shared.world).jobs.get(job_id).cloned()
    }

    /// All jobs started so far.
    pub fn jobs(&self) -> Vec<SandboxJob> {
        lock(&self.shared.world).jobs.values().cloned().collect()
    }

    /// Ends every processing job now, as if its delay had elapsed (webhooks are sent when a
    /// tokio runtime is available).
    pub fn finish_jobs_now(&self) {
        let ids: Vec<String> = lock(&self.shared.world)
            .jobs
            .values()
            .filter(|j| j.status == JobState::Processing)
            .map(|j| j.id.clone())
            .collect();
        for id in ids {
            self.end_job(&id);
        }
    }

    /// Forgets all realtime windows, so the next realtime call starts a new job.
    pub fn clear_windows(&self) {
        lock(&self.shared.world).last_job.clear();
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

    /// Takes one use of the armed fault if it matches this request.
    fn take_fault(&self, route: &str, path: &str) -> Option<Fault> {
        let mut armed = lock(&self.shared.fault);
        let spec = armed.as_mut()?;
        if let Some(want) = &spec.route {
            let hit = if want.starts_with('/') {
                path.starts_with(want.as_str())
            } else {
                want == route
            };
            if !hit {
                return None;
            }
        }
        let fault = spec.fault.clone();
        if let Some(left) = spec.times.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                *armed = None;
            }
        }
        Some(fault)
    }

    /// Starts a realtime job or reports the one inside the window; returns the job and
    /// whether it is new.
    fn realtime(&self, account: &str, kind: JobKind) -> (SandboxJob, bool) {
        let mut world = lock(&self.shared.world);
        world.account(account);
        let key = (account.to_owned(), kind);
        if let Some(job) = world.last_job.get(&key).and_then(|id| world.jobs.get(id)) {
            if job.started_at.elapsed() < self.shared.cfg.window {
                return (job.clone(), false);
            }
        }
        let job = SandboxJob {
            id: format!("jobs.accounts_{}", seed::random_hex16()),
            account: account.to_owned(),
            kind,
            status: JobState::Processing,
            has_new_data: false,
            reauth_required: false,
            started_at: Instant::now(),
            ended_at: None,
        };
        world.last_job.insert(key, job.id.clone());
        world.jobs.insert(job.id.clone(), job.clone());
        drop(world);
        tracing::debug!(job.id = %job.id, account = %account, kind = kind.route(), "sandbox job started");
        let sandbox = self.clone();
        let id = job.id.clone();
        let delay = self.shared.cfg.job_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            sandbox.end_job(&id);
        });
        (job, true)
    }

    /// Finishes or fails a processing job by its account's kind and sends the webhooks.
    fn end_job(&self, job_id: &str) {
        let mut world = lock(&self.shared.world);
        let Some(job) = world.jobs.get(job_id).cloned() else {
            return;
        };
        if job.status != JobState::Processing {
            return;
        }
        let (status, reauth, has_new_data) = if job.account.starts_with("reauth") {
            (JobState::Failed, true, false)
        } else if job.account.starts_with("fail") {
            (JobState::Failed, false, false)
        } else {
            let bump = self.shared.cfg.sync_changes_data;
            let account = world.account(&job.account);
            let target = account
                .staged_balance
                .take()
                .or(bump.then_some(account.balance + 100));
            let changed = target.is_some_and(|b| account.apply_balance(b));
            (JobState::Finished, false, changed)
        };
        let account = world.account(&job.account).clone();
        let Some(job) = world.jobs.get_mut(job_id) else {
            return;
        };
        job.status = status;
        job.reauth_required = reauth;
        job.has_new_data = has_new_data;
        job.ended_at = Some(Instant::now());
        let job = job.clone();
        drop(world);
        tracing::debug!(job.id = %job.id, status = status.as_str(), has_new_data, "sandbox job ended");
        if self.shared.cfg.webhook_url.is_none() {
            return;
        }
        let events = webhook::job_events(&job, &account);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let sandbox = self.clone();
                rt.spawn(async move { sandbox.send_webhooks(events).await });
            }
            Err(_) => {
                tracing::warn!(job.id = %job.id, "no tokio runtime, sandbox webhooks skipped")
            }
        }
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

/// One accepted connection and what it needs to be served.
struct Connection {
    sandbox: Sandbox,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
}

impl Connection {
    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let sandbox = self.sandbox;
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let sandbox = sandbox.clone();
            async move { sandbox.handle(req).await }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        if let Err(err) = self.watcher.watch(conn).await {
            // Injected resets land here too, so this is debug, not an error.
            tracing::debug!(client.addr = %self.peer, error = %err, "sandbox connection ended with error");
        }
    }
}

/// Builds a rustls acceptor (ring provider, ALPN h2 + http/1.1) from PEM text.
fn tls_acceptor(cert_pem: &str, key_pem: &str) -> io::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no certificate found in the PEM chain",
        ));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "no private key found in the PEM",
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A self-signed certificate for `hosts` (DNS names or IP addresses): `(cert_pem, key_pem)`.
///
/// # Panics
/// If a host is not a valid DNS name or IP address (e.g. contains non-ASCII characters).
pub fn self_signed_cert(hosts: &[&str]) -> (String, String) {
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let certified = rcgen::generate_simple_self_signed(names)
        .expect("self-signed certificate hosts must be DNS names or IP addresses");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// Locks a mutex, carrying on after a panic elsewhere: counters and logs stay usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_works_without_a_runtime_for_inspection() {
        let sb = Sandbox::new(SandboxConfig {
            webhook_url: Some("http://127.0.0.1:9/hooks".to_owned()),
            ..SandboxConfig::default()
        });
        sb.stage_balance("abc", 5);
        sb.finish_jobs_now();
        assert_eq!(sb.count("total"), 0);
        assert_eq!(sb.counts().len(), COUNTERS.len());
        assert_ne!(sb.balance("abc"), 5, "staged balance waits for a sync");
    }

    #[test]
    fn limited_fault_expires_and_route_filter_applies() {
        let sb = Sandbox::new(SandboxConfig::default());
        sb.set_fault_spec(Some(Fault::Reset.times(2).route("/v2/accounts/a/")));
        assert_eq!(sb.take_fault("balance", "/v2/accounts/b/balance"), None);
        assert_eq!(
            sb.take_fault("balance", "/v2/accounts/a/balance"),
            Some(Fault::Reset)
        );
        assert_eq!(
            sb.take_fault("balance", "/v2/accounts/a/balance"),
            Some(Fault::Reset)
        );
        assert_eq!(sb.take_fault("balance", "/v2/accounts/a/balance"), None);
        assert_eq!(sb.fault(), None);
    }

    #[test]
    fn self_signed_cert_is_pem() {
        let (cert, key) = self_signed_cert(&["localhost", "127.0.0.1"]);
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        assert!(tls_acceptor(&cert, &key).is_ok());
        assert!(tls_acceptor("", &key).is_err());
    }
}
