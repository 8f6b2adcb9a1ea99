//! Shared state in Redis: the realtime window, job records and invalidations across replicas.
//!
//! Layout (every key and message is versioned so a later format can live beside this one):
//!
//! | key | value |
//! |---|---|
//! | `<prefix>:v1:<tenant>:lease:<account>:<kind>` | `<replica>:<claimed unix ms>`, `SET NX PX` |
//! | `<prefix>:v1:<tenant>:rec:<account>:<kind>` | the job record as JSON, `"v":1` |
//! | `<prefix>:v1:job:<job_id>` | `{"v":1,"tenant","account","kind"}`: where the record lives |
//! | `<prefix>:v1:<tenant>:rl:<account>:<kind>` | 429 deadline (unix ms), `PX` until then |
//!
//! Channels: `<prefix>:v1:events` carries [`Broadcast`]s, `<prefix>:v1:stored` says a record was
//! stored so replicas that lost a claim wake at once (a bounded re-read covers lost messages).
//!
//! Every operation has a short timeout. On a connection error the store turns degraded: it logs
//! once, counts the error, and answers from an embedded [`MemoryStore`] (fail open) or with
//! [`StoreError::Unavailable`] (fail closed) until a background ping finds Redis again. While
//! degraded no operation waits on Redis, so an outage costs requests nothing. A timeout falls back
//! for that one operation and asks the health task to ping at once: one slow answer under a burst
//! must not push every replica onto local state (and into duplicate realtime calls) for a while.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

use crate::config::StoreConfig;
use crate::route::Kind;
use crate::store::{
    apply_update, now_ms, Broadcast, Claim, JobRecord, JobStore, JobUpdate, MemoryStore,
    OwnedRecord, RecordKey, StoreError, StoreResult, StoreStatus, Transition, RECORD_RETENTION,
};

/// Version of the key layout and of every stored value and message.
const VERSION: u32 = 1;
/// A waiter re-reads Redis this often in case a "record stored" message was missed.
const WAIT_REREAD: Duration = Duration::from_millis(250);
/// The health task pings Redis this often.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// A health ping may take this long at least (it runs in the background, nobody waits on it).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// `connect` waits at most this long for a first answer before starting degraded.
const CONNECT_BUDGET: Duration = Duration::from_secs(1);
/// Connection attempts give up after this long at least.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Optimistic job updates retry this many times when another replica wrote in between.
const UPDATE_ATTEMPTS: usize = 8;
/// Pub/sub reconnection backoff bounds.
const SUBSCRIBE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const SUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Broadcasts buffered per local subscriber.
const BROADCAST_CAPACITY: usize = 1024;

/// Deletes the lease only while it is still ours (ARGV[1] = `<replica>:`).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Stores the record and its job index, shortens our lease to the rest of the window (so the
/// next window can be claimed when this one ends), and announces the record.
/// KEYS: record, job index, lease. ARGV: record JSON, index JSON, retention ms, `<replica>:`,
/// window left ms, stored channel, stored message.
static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local v = redis.call('GET', KEYS[3])
if v and string.sub(v, 1, string.len(ARGV[4])) == ARGV[4] then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"#,
    )
});

/// Compare-and-set of a record, keeping its expiry. KEYS: record. ARGV: expected, new.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"#,
    )
});

/// Loads the scripts so their first use is one round trip (Redis forgets them on restart).
async fn load_scripts(conn: &mut ConnectionManager) -> RedisResult<()> {
    for script in [&*RELEASE, &*PUT, &*SWAP] {
        script.load_async(conn).await?;
    }
    Ok(())
}

/// Key and channel names under `<prefix>:v1`.
#[derive(Debug, Clone)]
struct Keys {
    base: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        Keys {
            base: format!("{prefix}:v{VERSION}"),
        }
    }

    fn scoped(&self, what: &str, key: &RecordKey) -> String {
        format!(
            "{}:{}:{what}:{}:{}",
            self.base,
            key.tenant,
            key.account,
            key.kind.as_str()
        )
    }

    fn lease(&self, key: &RecordKey) -> String {
        self.scoped("lease", key)
    }

    fn record(&self, key: &RecordKey) -> String {
        self.scoped("rec", key)
    }

    fn rate_limit(&self, key: &RecordKey) -> String {
        self.scoped("rl", key)
    }

    fn job(&self, job_id: &str) -> String {
        format!("{}:job:{job_id}", self.base)
    }

    fn events(&self) -> String {
        format!("{}:events", self.base)
    }

    fn stored(&self) -> String {
        format!("{}:stored", self.base)
    }
}

/// A record as stored in Redis.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRecord {
    v: u32,
    tenant: String,
    #[serde(flatten)]
    record: JobRecord,
}

/// Where the record of a job lives.
#[derive(Debug, Serialize, Deserialize)]
struct JobRef {
    v: u32,
    tenant: String,
    account: String,
    kind: Kind,
}

/// A broadcast on the events channel, with the replica that sent it.
#[derive(Debug, Serialize, Deserialize)]
struct Event {
    v: u32,
    from: String,
    msg: Broadcast,
}

/// "A record was stored under `key`" on the stored channel.
#[derive(Debug, Serialize, Deserialize)]
struct StoredNote {
    v: u32,
    from: String,
    key: String,
}

fn encode_record(tenant: &str, record: &JobRecord) -> String {
    let stored = StoredRecord {
        v: VERSION,
        tenant: tenant.to_string(),
        record: record.clone(),
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

/// A stored record of this version; anything else reads as absent.
fn decode_record(text: &str) -> Option<StoredRecord> {
    match serde_json::from_str::<StoredRecord>(text) {
        Ok(r) if r.v == VERSION => Some(r),
        Ok(r) => {
            tracing::debug!(v = r.v, "ignoring a record of another version");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "ignoring an unreadable record in redis");
            None
        }
    }
}

/// The claim time of a lease value `<replica>:<unix ms>`.
fn lease_claimed_at(value: &str) -> Option<u64> {
    value.rsplit_once(':')?.1.parse().ok()
}

/// The URL with its password replaced, for logs.
fn redact_url(url: &str) -> String {
    match url_password(url) {
        Some(p) => url.replacen(&format!(":{p}@"), ":***@", 1),
        None => url.to_string(),
    }
}

/// The password in `scheme://user:password@host…`, if any.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split('/').next()?.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_string())
}

/// Shared by the store handle and its background tasks.
struct Inner {
    conn: ConnectionManager,
    keys: Keys,
    timeout: Duration,
    fail_open: bool,
    /// This replica's id: lease values and messages carry it.
    replica: String,
    /// Fallback in an outage, and a write-through copy of recent records.
    local: MemoryStore,
    /// Fast check for the request path.
    degraded: AtomicBool,
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
}

impl Inner {
    /// Runs one Redis operation under the timeout; skipped while degraded.
    async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, String> {
        if self.degraded.load(Ordering::Acquire) {
            return Err(self.reason().unwrap_or_else(|| "redis unreachable".into()));
        }
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(op, &e.to_string())),
            Err(_) => {
                // Slow is not down: fall back for this call only and let the ping decide.
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.check.notify_one();
                tracing::debug!(op, timeout = ?self.timeout, "redis operation timed out");
                Err(format!("{op}: timed out after {:?}", self.timeout))
            }
        }
    }

    fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a failure and turns degraded, logging once per outage.
    fn fail(&self, op: &str, why: &str) -> String {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut reason = format!("{op}: {why}");
        if let Some(p) = &self.password {
            reason = reason.replace(p.as_str(), "***");
        }
        let mut current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
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
        let mut current = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if current.take().is_some() {
            self.degraded.store(false, Ordering::Release);
            tracing::info!("redis reachable again; shared state restored");
        }
    }

    /// The local answer (fail open) or the outage (fail closed).
    fn fallback<T>(&self, reason: String, local: impl FnOnce() -> T) -> StoreResult<T> {
        if self.fail_open {
            Ok(local())
        } else {
            Err(StoreError::Unavailable(reason))
        }
    }

    /// `<replica>:`, the prefix of our lease values.
    fn owner(&self) -> String {
        format!("{}:", self.replica)
    }

    async fn get(&self, key: &RecordKey) -> StoreResult<Option<JobRecord>> {
        let rk = self.keys.record(key);
        let mut conn = self.conn.clone();
        let read = self
            .run("get", async {
                redis::cmd("GET")
                    .arg(&rk)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await;
        match read {
            Ok(text) => {
                let record = text.as_deref().and_then(decode_record).map(|s| s.record);
                if let Some(r) = &record {
                    self.local.put_now(key, r);
                }
                Ok(record)
            }
            Err(reason) => self.fallback(reason, || self.local.get_now(key)),
        }
    }

    async fn claim(&self, key: &RecordKey, lease: Duration) -> StoreResult<Claim> {
        let lk = self.keys.lease(key);
        let value = format!("{}{}", self.owner(), now_ms());
        let ms = (lease.as_millis() as u64).max(1);
        let mut conn = self.conn.clone();
        let set = self
            .run("claim", async {
                redis::cmd("SET")
                    .arg(&lk)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await;
        match set {
            Ok(Some(_)) => Ok(Claim::Won),
            Ok(None) => Ok(Claim::Lost),
            // Fail open: the local single flight already made this caller the only one here.
            Err(reason) => self.fallback(reason, || Claim::Won),
        }
    }

    async fn release(&self, key: &RecordKey) -> StoreResult<()> {
        let lk = self.keys.lease(key);
        let owner = self.owner();
        let mut conn = self.conn.clone();
        let done = self
            .run("release", async {
                RELEASE
                    .key(&lk)
                    .arg(&owner)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(reason) => self.fallback(reason, || ()),
        }
    }

    async fn put(&self, key: &RecordKey, record: &JobRecord, ttl: Duration) -> StoreResult<()> {
        self.local.put_now(key, record);
        let rk = self.keys.record(key);
        let value = encode_record(&key.tenant, record);
        let index = serde_json::to_string(&JobRef {
            v: VERSION,
            tenant: key.tenant.to_string(),
            account: key.account.clone(),
            kind: key.kind,
        })
        .unwrap_or_default();
        let retention = ttl.max(RECORD_RETENTION).as_millis() as u64;
        let window_left = (record.started_at + ttl.as_millis() as u64)
            .saturating_sub(now_ms())
            .max(1);
        let note = serde_json::to_string(&StoredNote {
            v: VERSION,
            from: self.replica.clone(),
            key: rk.clone(),
        })
        .unwrap_or_default();
        let mut conn = self.conn.clone();
        let done = self
            .run("put", async {
                PUT.key(&rk)
                    .key(self.keys.job(&record.job_id))
                    .key(self.keys.lease(key))
                    .arg(&value)
                    .arg(&index)
                    .arg(retention)
                    .arg(self.owner())
                    .arg(window_left)
                    .arg(self.keys.stored())
                    .arg(&note)
                    .invoke_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(reason) => {
                // Replicas that lost the claim wait for this record; let them claim instead of
                // waiting out the lease. (Skipped while degraded: the lease expires on its own.)
                if let Err(e) = self.release(key).await {
                    tracing::debug!(error = %e, "could not give back the claim after a failed put");
                }
                self.fallback(reason, || ())
            }
        }
    }

    /// Waits for the record of the replica holding the lease: a record started at or after the
    /// lease was claimed. Woken by the stored channel, re-reading every [`WAIT_REREAD`] anyway.
    async fn wait_record(
        &self,
        key: &RecordKey,
        timeout: Duration,
    ) -> StoreResult<Option<JobRecord>> {
        // Subscribe before the first read so a record stored in between still wakes us.
        let mut wake = self.stored.subscribe();
        let rk: Arc<str> = self.keys.record(key).into();
        let lk = self.keys.lease(key);
        let deadline = Instant::now() + timeout;
        let mut claimed_at: Option<u64> = None;
        loop {
            let mut conn = self.conn.clone();
            let read = self
                .run("wait_record", async {
                    redis::pipe()
                        .cmd("GET")
                        .arg(&*rk)
                        .cmd("GET")
                        .arg(&lk)
                        .query_async::<(Option<String>, Option<String>)>(&mut conn)
                        .await
                })
                .await;
            let (record, lease) = match read {
                Ok(r) => r,
                Err(reason) => return self.fallback(reason, || self.local.get_now(key)),
            };
            let record = record.as_deref().and_then(decode_record).map(|s| s.record);
            let lease_at = lease.as_deref().and_then(lease_claimed_at);
            if lease_at.is_some() {
                claimed_at = lease_at;
            }
            match (claimed_at, lease_at) {
                // The claimant's clock set both times: its record starts after its claim.
                (Some(t), _) if record.as_ref().is_some_and(|r| r.started_at >= t) => {
                    if let Some(r) = &record {
                        self.local.put_now(key, r);
                    }
                    return Ok(record);
                }
                // The claim we waited on was given back: its call failed, no record is coming.
                (Some(_), None) => return Ok(None),
                // Never saw a claim: it ended before we looked; the record is the latest word.
                (None, None) => return Ok(record),
                _ => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let nap = WAIT_REREAD.min(deadline - now);
            let _ = tokio::time::timeout(nap, async {
                loop {
                    match wake.recv().await {
                        Ok(k) if k == rk => return,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            })
            .await;
        }
    }

    /// The record holding `job_id`, with its key and raw JSON (for compare-and-set).
    async fn load_job(
        &self,
        job_id: &str,
    ) -> Result<Option<(RecordKey, String, JobRecord)>, String> {
        let jk = self.keys.job(job_id);
        let mut conn = self.conn.clone();
        let index = self
            .run("job", async {
                redis::cmd("GET")
                    .arg(&jk)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await?;
        let Some(jref) = index
            .as_deref()
            .and_then(|t| serde_json::from_str::<JobRef>(t).ok())
            .filter(|j| j.v == VERSION)
        else {
            return Ok(None);
        };
        let key = RecordKey {
            tenant: jref.tenant.into(),
            account: jref.account,
            kind: jref.kind,
        };
        let rk = self.keys.record(&key);
        let mut conn = self.conn.clone();
        let text = self
            .run("job", async {
                redis::cmd("GET")
                    .arg(&rk)
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .await?;
        let Some(text) = text else { return Ok(None) };
        // A newer job of the same key replaced the record: this job is no longer known.
        match decode_record(&text).filter(|s| s.record.job_id == job_id) {
            Some(s) => Ok(Some((key, text, s.record))),
            None => Ok(None),
        }
    }

    async fn job(&self, job_id: &str) -> StoreResult<Option<OwnedRecord>> {
        match self.load_job(job_id).await {
            Ok(Some((key, _, record))) => {
                self.local.put_now(&key, &record);
                Ok(Some((key.tenant, record)))
            }
            Ok(None) => Ok(None),
            Err(reason) => self.fallback(reason, || self.local.job_now(job_id)),
        }
    }

    /// Read, apply, compare-and-set; retried when another replica wrote in between.
    async fn update_job(
        &self,
        job_id: &str,
        update: &JobUpdate,
    ) -> StoreResult<Option<Transition>> {
        for _ in 0..UPDATE_ATTEMPTS {
            let (key, old, record) = match self.load_job(job_id).await {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(None),
                Err(reason) => {
                    return self.fallback(reason, || self.local.update_now(job_id, update))
                }
            };
            let next = apply_update(&record, update);
            if next == record {
                self.local.put_now(&key, &record);
                return Ok(Some(Transition {
                    record,
                    tenant: key.tenant,
                    changed: false,
                }));
            }
            let new = encode_record(&key.tenant, &next);
            let rk = self.keys.record(&key);
            let mut conn = self.conn.clone();
            let swapped = self
                .run("update_job", async {
                    SWAP.key(&rk)
                        .arg(&old)
                        .arg(&new)
                        .invoke_async::<i64>(&mut conn)
                        .await
                })
                .await;
            match swapped {
                Ok(1) => {
                    self.local.put_now(&key, &next);
                    return Ok(Some(Transition {
                        record: next,
                        tenant: key.tenant,
                        changed: true,
                    }));
                }
                Ok(_) => continue,
                Err(reason) => {
                    return self.fallback(reason, || self.local.update_now(job_id, update))
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "job {job_id} changed under {UPDATE_ATTEMPTS} concurrent updates"
        )))
    }

    async fn set_rate_limit(&self, key: &RecordKey, until_ms: u64) -> StoreResult<()> {
        self.local.set_rate_limit_now(key, until_ms);
        let left = until_ms.saturating_sub(now_ms());
        if left == 0 {
            return Ok(());
        }
        let rl = self.keys.rate_limit(key);
        let mut conn = self.conn.clone();
        let done = self
            .run("set_rate_limit", async {
                redis::cmd("SET")
                    .arg(&rl)
                    .arg(until_ms)
                    .arg("PX")
                    .arg(left)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await;
        match done {
            Ok(()) => Ok(()),
            Err(reason) => self.fallback(reason, || ()),
        }
    }

    async fn rate_limit(&self, key: &RecordKey) -> StoreResult<Option<u64>> {
        let rl = self.keys.rate_limit(key);
        let mut conn = self.conn.clone();
        let read = self
            .run("rate_limit", async {
                redis::cmd("GET")
                    .arg(&rl)
                    .query_async::<Option<u64>>(&mut conn)
                    .await
            })
            .await;
        match read {
            Ok(until) => Ok(until.filter(|u| *u > now_ms())),
            Err(reason) => self.fallback(reason, || self.local.rate_limit_now(key)),
        }
    }

    async fn publish(&self, msg: &Broadcast) -> StoreResult<()> {
        let event = serde_json::to_string(&Event {
            v: VERSION,
            from: self.replica.clone(),
            msg: msg.clone(),
        })
        .unwrap_or_default();
        let channel = self.keys.events();
        let mut conn = self.conn.clone();
        let done = self
            .run("publish", async {
                redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&event)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await;
        match done {
            Ok(_) => Ok(()),
            // Fail open: this replica applied it locally; the others miss it for this outage.
            Err(reason) => self.fallback(reason, || ()),
        }
    }

    fn status(&self) -> StoreStatus {
        match self.reason() {
            Some(why) => StoreStatus::Degraded(why),
            None => StoreStatus::Shared,
        }
    }
}

/// The Redis-backed store (spec §7).
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl RedisStore {
    /// Connects to Redis as the shared store; never blocks startup for more than about a second
    /// and starts degraded when Redis is down (it recovers by itself).
    pub async fn connect(cfg: &StoreConfig) -> Result<Arc<dyn JobStore>, String> {
        Ok(RedisStore::open(cfg).await?)
    }

    /// [`RedisStore::connect`] returning the concrete type (for its counters).
    pub async fn open(cfg: &StoreConfig) -> Result<Arc<RedisStore>, String> {
        let shown = redact_url(&cfg.redis_url);
        let client = Client::open(cfg.redis_url.as_str())
            .map_err(|e| format!("store.redis_url {shown}: {e}"))?;
        let manager = ConnectionManagerConfig::new()
            .set_response_timeout(Some(cfg.timeout))
            .set_connection_timeout(Some(cfg.timeout.max(MIN_CONNECT_TIMEOUT)))
            .set_number_of_retries(3)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(|e| format!("redis {shown}: {e}"))?;
        let keys = Keys::new(&cfg.prefix);
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (stored, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (shutdown, shutdown_rx) = watch::channel(());
        let inner = Arc::new(Inner {
            conn,
            keys,
            timeout: cfg.timeout,
            fail_open: cfg.fail_open,
            replica: uuid::Uuid::new_v4().simple().to_string(),
            local: MemoryStore::new(),
            degraded: AtomicBool::new(false),
            reason: Mutex::new(None),
            errors: AtomicU64::new(0),
            events,
            stored,
            password: url_password(&cfg.redis_url),
            _shutdown: shutdown,
            check: Arc::default(),
        });

        let mut conn = inner.conn.clone();
        match tokio::time::timeout(
            CONNECT_BUDGET,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => {
                tracing::info!(redis = %shown, prefix = %cfg.prefix, replica = %inner.replica, "shared store: redis");
                if let Ok(Err(e)) =
                    tokio::time::timeout(CONNECT_BUDGET, load_scripts(&mut conn)).await
                {
                    tracing::warn!(error = %e, "could not preload redis scripts");
                }
            }
            Ok(Err(e)) => {
                inner.fail("connect", &e.to_string());
            }
            Err(_) => {
                inner.fail("connect", &format!("no answer within {CONNECT_BUDGET:?}"));
            }
        }

        tokio::spawn(subscriber(
            client,
            inner.keys.clone(),
            inner.replica.clone(),
            inner.events.clone(),
            inner.stored.clone(),
            shutdown_rx.clone(),
        ));
        tokio::spawn(health(
            Arc::downgrade(&inner),
            Arc::clone(&inner.check),
            shutdown_rx,
        ));
        Ok(Arc::new(RedisStore { inner }))
    }

    /// Redis operations that failed (timeouts included) since start.
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// This replica's id, carried by its leases and messages.
    pub fn replica_id(&self) -> &str {
        &self.inner.replica
    }
}

/// Pings Redis: turns the store degraded when it stops answering, healthy when it answers again.
/// Holds the store only weakly between pings, so dropping the store ends it.
async fn health(weak: Weak<Inner>, check: Arc<Notify>, mut shutdown: watch::Receiver<()>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = check.notified() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let mut conn = inner.conn.clone();
        let budget = inner.timeout.max(HEALTH_TIMEOUT);
        let ping =
            tokio::time::timeout(budget, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        match ping {
            Ok(Ok(_)) => {
                if inner.degraded.load(Ordering::Acquire) {
                    // A restarted Redis has forgotten the scripts.
                    let _ = tokio::time::timeout(budget, load_scripts(&mut conn)).await;
                }
                inner.recover();
            }
            Ok(Err(e)) => {
                if !inner.degraded.load(Ordering::Acquire) {
                    inner.fail("ping", &e.to_string());
                }
            }
            Err(_) => {
                if !inner.degraded.load(Ordering::Acquire) {
                    inner.fail("ping", &format!("no answer within {budget:?}"));
                }
            }
        }
    }
}

/// Feeds other replicas' messages to local subscribers, on its own pub/sub connection,
/// reconnecting with backoff until the store is dropped.
async fn subscriber(
    client: Client,
    keys: Keys,
    replica: String,
    events: broadcast::Sender<Broadcast>,
    stored: broadcast::Sender<Arc<str>>,
    mut shutdown: watch::Receiver<()>,
) {
    let (events_channel, stored_channel) = (keys.events(), keys.stored());
    let mut backoff = SUBSCRIBE_BACKOFF_MIN;
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[events_channel.as_str(), stored_channel.as_str()])
                .await?;
            RedisResult::Ok(pubsub)
        };
        let attempt = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(CONNECT_BUDGET, connect) => r,
        };
        match attempt {
            Ok(Ok(mut pubsub)) => {
                backoff = SUBSCRIBE_BACKOFF_MIN;
                tracing::debug!("subscribed to shared store events");
                let mut messages = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.changed() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let payload = msg.get_payload_bytes();
                    if msg.get_channel_name() == events_channel {
                        match serde_json::from_slice::<Event>(payload) {
                            // Our own messages were applied locally before they were sent.
                            Ok(e) if e.v == VERSION && e.from != replica => {
                                let _ = events.send(e.msg);
                            }
                            Ok(_) => {}
                            Err(e) => tracing::debug!(error = %e, "ignoring an unreadable event"),
                        }
                    } else if let Ok(note) = serde_json::from_slice::<StoredNote>(payload) {
                        if note.v == VERSION {
                            let _ = stored.send(note.key.into());
                        }
                    }
                }
                tracing::debug!("shared store events connection closed; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to shared store events"),
            Err(_) => tracing::debug!("subscribing to shared store events timed out"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(SUBSCRIBE_BACKOFF_MAX);
    }
}

impl JobStore for RedisStore {
    fn get<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, StoreResult<Option<JobRecord>>> {
        Box::pin(self.inner.get(key))
    }

    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<Claim>> {
        Box::pin(self.inner.claim(key, lease))
    }

    fn release<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.inner.release(key))
    }

    fn put<'a>(
        &'a self,
        key: &'a RecordKey,
        record: &'a JobRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.inner.put(key, record, ttl))
    }

    fn wait_record<'a>(
        &'a self,
        key: &'a RecordKey,
        timeout: Duration,
    ) -> BoxFuture<'a, StoreResult<Option<JobRecord>>> {
        Box::pin(self.inner.wait_record(key, timeout))
    }

    fn job<'a>(&'a self, job_id: &'a str) -> BoxFuture<'a, StoreResult<Option<OwnedRecord>>> {
        Box::pin(self.inner.job(job_id))
    }

    fn update_job<'a>(
        &'a self,
        job_id: &'a str,
        update: &'a JobUpdate,
    ) -> BoxFuture<'a, StoreResult<Option<Transition>>> {
        Box::pin(self.inner.update_job(job_id, update))
    }

    fn set_rate_limit<'a>(
        &'a self,
        key: &'a RecordKey,
        until_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.inner.set_rate_limit(key, until_ms))
    }

    fn rate_limit<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        Box::pin(self.inner.rate_limit(key))
    }

    fn publish<'a>(&'a self, msg: &'a Broadcast) -> BoxFuture<'a, StoreResult<()>> {
        Box::pin(self.inner.publish(msg))
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Broadcast>> {
        Some(self.inner.events.subscribe())
    }

    fn status(&self) -> StoreStatus {
        self.inner.status()
    }

    fn errors(&self) -> u64 {
        RedisStore::errors(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobStatus;

    fn key() -> RecordKey {
        RecordKey {
            tenant: "0123abcd".into(),
            account: "acc1".into(),
            kind: Kind::Balance,
        }
    }

    #[test]
    fn keys_are_versioned_and_scoped_by_prefix_and_tenant() {
        let k = Keys::new("mono-proxy");
        assert_eq!(k.lease(&key()), "mono-proxy:v1:0123abcd:lease:acc1:balance");
        assert_eq!(k.record(&key()), "mono-proxy:v1:0123abcd:rec:acc1:balance");
        assert_eq!(
            k.rate_limit(&key()),
            "mono-proxy:v1:0123abcd:rl:acc1:balance"
        );
        assert_eq!(k.job("j1"), "mono-proxy:v1:job:j1");
        assert_eq!(k.events(), "mono-proxy:v1:events");
        assert_eq!(k.stored(), "mono-proxy:v1:stored");
    }

    #[test]
    fn records_carry_their_version_and_other_versions_read_as_absent() {
        let record = JobRecord {
            job_id: "j1".into(),
            account: "acc1".into(),
            kind: Kind::Transactions,
            status: JobStatus::Processing,
            started_at: 5,
            updated_at: 6,
            has_new_data: Some(true),
            reauth_required: false,
        };
        let text = encode_record("t1", &record);
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["tenant"], "t1");
        assert_eq!(json["kind"], "transactions");
        let back = decode_record(&text).unwrap();
        assert_eq!(back.record, record);
        let other = text.replacen("\"v\":1", "\"v\":2", 1);
        assert!(decode_record(&other).is_none());
        assert!(decode_record("not json").is_none());
    }

    #[test]
    fn lease_values_name_the_claim_time() {
        assert_eq!(
            lease_claimed_at("abc123:1700000000000"),
            Some(1_700_000_000_000)
        );
        assert_eq!(lease_claimed_at("garbage"), None);
    }

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(url_password("redis://host:6379/0"), None);
    }
}
