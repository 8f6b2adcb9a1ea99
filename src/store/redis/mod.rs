//! Shared state in Redis: the realtime window, job records and invalidations across replicas.
//!
//! The connection forms (one server, Cluster, Sentinel; TLS) are in `connect.rs`, the key
//! layout in `keys.rs`, the atomic multi-key changes in `scripts.rs`, the record operations in
//! `ops.rs`, the shared cache tier in `shared.rs`, webhook delivery memory in `deliveries.rs` and
//! the background tasks (health ping, pub/sub) in `tasks.rs`.
//!
//! Failure semantics: every operation has a short timeout. On a broken connection, or two health
//! pings in a row without an answer, the store turns degraded: it logs once, counts the error,
//! and answers from an embedded [`MemoryStore`] (fail open) or with [`StoreError::Unavailable`]
//! (fail closed) until a ping finds Redis again, then puts back the open windows it holds. While
//! degraded no operation waits on Redis, so an outage costs requests nothing. A timeout is slow,
//! not down: reads fall back to the local copy for that call, waiters read again, and a claim is
//! retried (its outcome is never guessed), because one slow answer under a burst must not push
//! every replica onto local state, where each may call Mono on its own.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::{FromRedisValue, RedisResult};
use tokio::sync::{broadcast, watch, Notify};

use crate::config::{redact_url, url_password, CacheConfig, SecretError, StoreConfig};
use crate::metrics::StoreLatency;
use crate::store::{Broadcast, MemoryStore, StoreError, StoreResult, StoreStatus};

mod connect;
mod deliveries;
mod keys;
mod limits;
mod ops;
mod scripts;
mod shared;
mod tasks;

use connect::{Connector, Link, Timeouts};
use keys::Keys;

/// `open` waits at most this long for a first answer before starting degraded.
const CONNECT_BUDGET: Duration = Duration::from_secs(1);
/// Connection attempts give up after this long at least.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Broadcasts buffered per local subscriber.
const BROADCAST_CAPACITY: usize = 1024;

/// Why the Redis store could not even be set up: a bad URL, an unreadable file, or a Redis that
/// refused our certificate check or credentials. An unreachable Redis is not this: the proxy
/// starts degraded and recovers when Redis comes.
#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    /// The URL does not parse as a Redis connection.
    #[error("[store] redis {url}: {source}")]
    BadUrl {
        /// The URL with its password redacted.
        url: String,
        /// What the redis client said.
        source: redis::RedisError,
    },
    /// A TLS file named in `[store]` cannot be read.
    #[error("[store] {key} {}: {source}", path.display())]
    File {
        /// The config key.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What reading it returned.
        source: std::io::Error,
    },
    /// The password file cannot be read.
    #[error("[store] password_file: {0}")]
    Password(#[from] SecretError),
    /// Redis answered, but the TLS handshake or the login failed: a config problem that
    /// waiting will not fix.
    #[error("[store] redis at {url} refused the connection: {reason}")]
    Refused {
        /// What was connected to, passwords redacted.
        url: String,
        /// Why, with any password scrubbed, and a hint.
        reason: String,
    },
}

/// Shared by the store handle and its background tasks.
struct Inner {
    /// Where each operation's time is recorded.
    latency: StoreLatency,
    /// The connection; `None` until a first connection (Sentinel found no master yet).
    link: ArcSwapOption<Link>,
    /// Makes connections (again, when a Sentinel master moves).
    connector: Connector,
    /// Connection timeouts.
    timeouts: Timeouts,
    keys: Keys,
    timeout: Duration,
    fail_open: bool,
    /// The realtime window: claims and re-seeding honour it inside Redis.
    window: Duration,
    /// This replica's id: lease values and messages carry it.
    replica: String,
    /// Fallback in an outage, and a write-through copy of recent records.
    local: MemoryStore,
    /// Fast check for the request path.
    degraded: AtomicBool,
    /// A record put failed: Redis is missing something this replica holds (re-seeded later).
    unsynced: AtomicBool,
    /// A write was refused with READONLY: the endpoint now leads to a replica (a managed
    /// failover moved the primary's DNS name, or Sentinel promoted another): connect afresh.
    relink: AtomicBool,
    /// Why the store is degraded (set once per outage).
    reason: Mutex<Option<String>>,
    /// Failed Redis operations since start.
    errors: AtomicU64,
    /// Other replicas' broadcasts.
    events: broadcast::Sender<Broadcast>,
    /// Redis keys of records just stored (wakes `wait_record`).
    stored: broadcast::Sender<Arc<str>>,
    /// Never scrubbed into logs.
    password: Option<String>,
    /// Dropped with the store: background tasks end.
    _shutdown: watch::Sender<()>,
    /// Asks the health task to ping now (an operation timed out).
    check: Arc<Notify>,
    /// The shared cache tier's settings; `None` when `[cache] shared = false`.
    shared: Option<shared::Tier>,
}

/// How one Redis operation failed.
#[derive(Debug)]
enum OpError {
    /// Redis is unreachable, or the store already knows it is down.
    Down(String),
    /// No answer in time: the command may or may not have run.
    Slow(String),
    /// Redis answered with an error; the connection is fine, so the store stays healthy.
    Refused(String),
}

impl OpError {
    fn reason(self) -> String {
        match self {
            OpError::Down(r) | OpError::Slow(r) | OpError::Refused(r) => r,
        }
    }
}

impl Inner {
    /// The current connection.
    fn link(&self) -> Result<Link, OpError> {
        match self.link.load().as_deref() {
            Some(link) => Ok(link.clone()),
            None => Err(OpError::Down(
                self.reason().unwrap_or_else(|| "not connected yet".into()),
            )),
        }
    }

    /// Runs one Redis operation under the timeout; skipped while degraded.
    async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, OpError> {
        if self.degraded.load(Ordering::Acquire) {
            let reason = self.reason().unwrap_or_else(|| "redis unreachable".into());
            return Err(OpError::Down(reason));
        }
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.timeout, fut).await;
        self.latency.observe(op, started.elapsed());
        match result {
            Ok(Ok(v)) => Ok(v),
            // The connection's own response timeout: as slow as ours, not down.
            Ok(Err(e)) if e.is_timeout() => Err(self.slow(op)),
            Ok(Err(e)) if is_connection_error(&e) => {
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly) {
                    self.relink.store(true, Ordering::Release);
                    self.check.notify_one();
                }
                Err(OpError::Down(self.fail(op, &e.to_string())))
            }
            Ok(Err(e)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let reason = self.scrub(format!("{op}: {e}"));
                tracing::warn!(op, error = %reason, "redis refused an operation");
                Err(OpError::Refused(reason))
            }
            Err(_) => Err(self.slow(op)),
        }
    }

    /// Slow is not down: the operation falls back (or retries) on its own and the health ping
    /// decides whether Redis is gone.
    fn slow(&self, op: &'static str) -> OpError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.check.notify_one();
        tracing::debug!(op, timeout = ?self.timeout, "redis operation timed out");
        OpError::Slow(format!("{op}: timed out after {:?}", self.timeout))
    }

    /// The text with the Redis password replaced.
    fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text,
        }
    }

    /// One command under [`Inner::run`].
    async fn cmd<T: FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, OpError> {
        let mut conn = self.link()?;
        self.run(op, cmd.query_async(&mut conn)).await
    }

    /// One pipeline under [`Inner::run`].
    async fn pipe<T: FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
    ) -> Result<T, OpError> {
        let mut conn = self.link()?;
        self.run(op, pipe.query_async(&mut conn)).await
    }

    /// One script under [`Inner::run`] (loaded again by the client if Redis forgot it).
    async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        call: &redis::ScriptInvocation<'_>,
    ) -> Result<T, OpError> {
        let mut conn = self.link()?;
        self.run(op, call.invoke_async(&mut conn)).await
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts a failure and turns degraded, logging once per outage.
    fn fail(&self, op: &str, why: &str) -> String {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let reason = self.scrub(format!("{op}: {why}"));
        let mut current = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.is_none() {
            *current = Some(reason.clone());
            self.degraded.store(true, Ordering::Release);
            if self.fail_open {
                tracing::warn!(reason = %reason, "redis unreachable; serving from local state until it returns");
            } else {
                tracing::warn!(reason = %reason, "redis unreachable; answering 503 until it returns (fail_open = false)");
            }
        }
        reason
    }

    /// Clears the degraded state, logging once.
    fn recover(&self) {
        let mut current = self
            .reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.take().is_some() {
            self.degraded.store(false, Ordering::Release);
            tracing::info!("redis reachable again; shared state restored");
        }
    }

    /// The local answer (fail open) or the outage (fail closed).
    fn fallback<T>(&self, failure: OpError, local: impl FnOnce() -> T) -> StoreResult<T> {
        if self.fail_open {
            Ok(local())
        } else {
            Err(StoreError::Unavailable(failure.reason()))
        }
    }

    /// `<replica>:`, the prefix of our lease values.
    fn owner(&self) -> String {
        format!("{}:", self.replica)
    }
}

/// Whether an error means Redis could not be reached (rather than that it answered "no"). A
/// demoted master (READONLY), a cluster without quorum, or a master Sentinel has not yet
/// replaced count as unreachable: the data cannot be written there.
fn is_connection_error(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
            )
        )
}

/// Whether a failed first connection is a config problem (credentials, certificates) that no
/// amount of waiting fixes, with a hint naming the setting to check.
fn config_problem(e: &redis::RedisError) -> Option<&'static str> {
    let text = e.to_string();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
        || text.contains("NOPERM")
    {
        return Some("check the user and password (URL, password_file or MONO_PROXY_REDIS_PASSWORD) and the ACL");
    }
    if text.contains("certificate")
        || text.contains("Certificate")
        || text.contains("CertificateRequired")
    {
        return Some("the TLS handshake failed: check [store] ca_file (the CA that signed the server's certificate) and client_cert / client_key");
    }
    None
}

/// The Redis-backed store (spec §7): a cheap handle over the connection and its tasks.
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// Connects to Redis as the shared store; never blocks startup for more than about a second
    /// and starts degraded when Redis is down (it recovers by itself). Refuses to start when
    /// Redis answers but rejects the certificates or the credentials.
    pub async fn open(
        cfg: &StoreConfig,
        cache: &CacheConfig,
        window: Duration,
        latency: StoreLatency,
    ) -> Result<RedisStore, StoreOpenError> {
        let shown = cfg
            .urls()
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(", ");
        let secret = cfg.password.read()?;
        let password = secret.as_ref().map(|s| s.expose().to_string()).or_else(|| {
            cfg.urls()
                .iter()
                .find_map(|u| url_password(u))
                .map(str::to_string)
        });
        let connector = Connector::new(cfg, secret.as_ref())?;
        // Each operation bounds itself with `cfg.timeout`; the connection's own response
        // timeout only catches what nothing else waits on, and must not cut the health ping
        // (which allows itself longer) short.
        let timeouts = Timeouts {
            connect: cfg.timeout.max(MIN_CONNECT_TIMEOUT),
            response: cfg.timeout.max(tasks::HEALTH_TIMEOUT),
        };
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (stored, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (shutdown, shutdown_rx) = watch::channel(());
        let inner = Arc::new(Inner {
            latency,
            link: ArcSwapOption::empty(),
            connector,
            timeouts,
            keys: Keys::new(&cfg.prefix),
            timeout: cfg.timeout,
            fail_open: cfg.fail_open,
            window,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            local: MemoryStore::new(),
            degraded: AtomicBool::new(false),
            unsynced: AtomicBool::new(false),
            relink: AtomicBool::new(false),
            reason: Mutex::new(None),
            errors: AtomicU64::new(0),
            events,
            stored,
            password,
            _shutdown: shutdown,
            check: Arc::default(),
            shared: cache.shared.then(|| shared::Tier::new(cache)),
        });

        let first = tokio::time::timeout(CONNECT_BUDGET, async {
            let link = inner.connector.connect(timeouts).await?;
            inner.link.store(Some(Arc::new(link.clone())));
            let mut conn = link;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            scripts::load_scripts(&mut conn).await
        })
        .await;
        match first {
            Ok(Ok(())) => {
                tracing::info!(redis = %cfg.describe(), replica = %inner.replica, "shared store: redis");
            }
            Ok(Err(e)) => {
                if let Some(hint) = config_problem(&e) {
                    return Err(StoreOpenError::Refused {
                        url: shown,
                        reason: inner.scrub(format!("{e}; {hint}")),
                    });
                }
                inner.fail("connect", &e.to_string());
            }
            Err(_) => {
                inner.fail("connect", &format!("no answer within {CONNECT_BUDGET:?}"));
            }
        }
        tasks::spawn(&inner, shutdown_rx);
        Ok(RedisStore { inner })
    }

    /// Other replicas' broadcasts, as they arrive.
    pub fn subscribe(&self) -> broadcast::Receiver<Broadcast> {
        self.inner.events.subscribe()
    }

    /// Reachable, or degraded and why.
    pub fn status(&self) -> StoreStatus {
        match self.inner.reason() {
            Some(why) => StoreStatus::Degraded(why),
            None => StoreStatus::Shared,
        }
    }

    /// Redis operations that failed (timeouts included) since start.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }
}
