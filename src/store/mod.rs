//! Job records and the realtime window behind one handle: in process, or shared in Redis.
//!
//! The request path only sees [`Store`]; which backend sits behind it is a config switch. Both
//! answer the same operations with the same meaning; the Redis one also degrades to an embedded
//! [`MemoryStore`] when Redis is unreachable (see [`redis`]).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::config::{Backend, CacheConfig, StoreConfig};
use crate::error::ProxyError;
use crate::metrics::StoreLatency;
use crate::purges::PurgeScope;

mod memory;
pub mod record;
pub mod redis;

pub use memory::{MemoryStore, RECORD_RETENTION};
pub use record::{
    apply_update, JobRecord, JobStatus, JobUpdate, OwnedRecord, RecordKey, Transition,
};
pub use redis::{RedisStore, StoreOpenError};

/// Outcome of claiming the right to make a realtime call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This replica makes the call.
    Won,
    /// Another replica is making it; wait for its record.
    Lost,
    /// A record covering the window is already stored: answer from it.
    Windowed(JobRecord),
}

/// Where a body lives in the shared cache tier: a tenant's account and the normalised path.
#[derive(Debug, Clone, Copy)]
pub struct BodyKey<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// Account id.
    pub account: &'a str,
    /// The path within the account (`balance`, `transactions?page=2`).
    pub path: &'a str,
    /// The route's name (whose 429 cooldown the lookup also reads).
    pub route: &'a str,
}

/// A cached body as the shared tier holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBody {
    /// The body bytes as served.
    pub body: Bytes,
    /// The upstream `Content-Type`.
    pub content_type: Option<String>,
    /// When it was fetched (unix ms, the fetching replica's clock).
    pub stored_at_ms: u64,
}

/// What the shared tier said about an in-process miss.
#[derive(Debug)]
pub enum SharedLookup {
    /// A fresh body: no upstream call.
    Hit(SharedBody),
    /// Nobody holds it: this replica fetches for the fleet, then calls [`Store::shared_fill`].
    Fill(FillTicket),
    /// Another replica is fetching it: wait with [`Store::shared_wait`].
    Wait,
    /// Mono's 429 cooldown for the route and account is in force until this unix ms.
    CoolingDown(u64),
    /// No shared tier now (in process, turned off, Redis degraded or slow): fetch as usual.
    Off,
}

/// The right to fill a shared entry, with the account's invalidation generation at lookup time:
/// the body is stored only if no sync invalidated the account meanwhile.
#[derive(Debug)]
pub struct FillTicket {
    pub(crate) generation: String,
}

/// Who handles one step of a webhook delivery (applying it, or relaying it to one target) when
/// a Mono retry may land on any replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepClaim {
    /// This replica does it, then reports [`Store::step_done`] or [`Store::step_failed`].
    Mine,
    /// Done already, here or on another replica.
    Done,
    /// Another replica is doing it now.
    Busy,
}

/// A message every replica applies to its local state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Broadcast {
    /// A sync finished: drop the account's cached bodies.
    Invalidate {
        /// Account id (all tenants).
        account: String,
        /// Mono's `meta.has_new_data`, when it said.
        has_new_data: Option<bool>,
        /// The one tenant it applies to (a webhook of one app's key); all when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
    },
    /// A realtime job started: `x-has-new-data` resets for the account.
    JobStarted {
        /// Tenant id.
        tenant: String,
        /// Account id.
        account: String,
    },
    /// An operator purged cached bodies: the same purge applies here.
    Purge {
        /// What it covers.
        scope: PurgeScope,
        /// Dropped (true) or marked stale (false).
        hard: bool,
    },
    /// An operator reset an account's realtime windows: every replica forgets its copies.
    ForgetWindow {
        /// Account id (all tenants).
        account: String,
    },
    /// Mono answered 429: calls for the tenant, route and account wait until `until_ms`.
    Cooldown {
        /// Tenant id.
        tenant: String,
        /// Route name.
        route: String,
        /// Account id (empty for a route without one).
        account: String,
        /// Unix ms.
        until_ms: u64,
    },
}

/// Health of the store, for `/readyz` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreStatus {
    /// In process: always available.
    Local,
    /// Shared store reachable.
    Shared,
    /// Shared store unreachable; the reason.
    Degraded(String),
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The shared store is unreachable and the proxy runs fail-closed.
    #[error("shared store unavailable: {0}")]
    Unavailable(String),
    /// A realtime claim went unanswered: it may have been taken, so no call is made.
    #[error("shared store did not confirm the realtime claim: {0}")]
    ClaimUnknown(String),
}

impl From<StoreError> for ProxyError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ProxyError::Unavailable("shared state store unavailable"),
            StoreError::ClaimUnknown(_) => ProxyError::Unavailable(
                "the shared state store did not confirm the realtime window; retry",
            ),
        }
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// The store the request path uses: one of the two backends.
pub enum Store {
    /// One replica: everything in process.
    Memory(MemoryStore),
    /// Several replicas sharing state through Redis.
    Redis(RedisStore),
}

impl Store {
    /// Opens the configured backend for realtime windows of `window` (and, with Redis, the
    /// shared cache tier `cache` asks for); Redis starts degraded (and recovers) when it is down.
    pub async fn open(
        cfg: &StoreConfig,
        cache: &CacheConfig,
        window: Duration,
        latency: StoreLatency,
    ) -> Result<Store, StoreOpenError> {
        Ok(match cfg.backend {
            Backend::Memory => Store::Memory(MemoryStore::new()),
            Backend::Redis => Store::Redis(RedisStore::open(cfg, cache, window, latency).await?),
        })
    }

    /// The record of a key.
    pub async fn get(&self, key: &RecordKey) -> StoreResult<Option<JobRecord>> {
        match self {
            Store::Memory(m) => Ok(m.get(key)),
            Store::Redis(r) => r.get(key).await,
        }
    }

    /// Claims the right to make the realtime call for `key`, for at most `lease`. A claim whose
    /// outcome is unknown (Redis too slow to answer) is retried for up to `budget`, never
    /// guessed: guessing "won" could make a second call inside the window.
    pub async fn claim(
        &self,
        key: &RecordKey,
        lease: Duration,
        budget: Duration,
    ) -> StoreResult<Claim> {
        match self {
            // One process: the local single flight already makes this caller the only one.
            Store::Memory(_) => Ok(Claim::Won),
            Store::Redis(r) => r.claim(key, lease, budget).await,
        }
    }

    /// Forgets the realtime window of `key` on every replica (record and lease): the next
    /// realtime read calls Mono. Returns whether a record was held.
    pub async fn forget_window(&self, key: &RecordKey) -> StoreResult<bool> {
        match self {
            Store::Memory(m) => Ok(m.forget(key)),
            Store::Redis(r) => r.forget_window(key).await,
        }
    }

    /// Forgets this replica's own copy of the record of `key` (another replica reset the
    /// window); without this a local copy would answer, and later seed the record back.
    pub fn forget_local(&self, key: &RecordKey) {
        match self {
            Store::Memory(m) => {
                m.forget(key);
            }
            Store::Redis(r) => r.forget_local(key),
        }
    }

    /// Gives a claim back (the call failed; the next caller may try).
    pub async fn release(&self, key: &RecordKey) -> StoreResult<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.release(key).await,
        }
    }

    /// Stores a record for the window `ttl` and indexes it by job id.
    pub async fn put(&self, key: &RecordKey, record: &JobRecord, ttl: Duration) -> StoreResult<()> {
        match self {
            Store::Memory(m) => {
                m.put(key, record);
                Ok(())
            }
            Store::Redis(r) => r.put(key, record, ttl).await,
        }
    }

    /// Waits up to `timeout` for another replica's claimed call to store its record.
    pub async fn wait_record(
        &self,
        key: &RecordKey,
        timeout: Duration,
    ) -> StoreResult<Option<JobRecord>> {
        match self {
            Store::Memory(m) => Ok(m.get(key)),
            Store::Redis(r) => r.wait_record(key, timeout).await,
        }
    }

    /// The record holding `job_id`, with its tenant.
    pub async fn job(&self, job_id: &str) -> StoreResult<Option<OwnedRecord>> {
        match self {
            Store::Memory(m) => Ok(m.job(job_id)),
            Store::Redis(r) => r.job(job_id).await,
        }
    }

    /// Applies an update to the record holding `job_id`; terminal states never change.
    pub async fn update_job(
        &self,
        job_id: &str,
        update: &JobUpdate,
    ) -> StoreResult<Option<Transition>> {
        match self {
            Store::Memory(m) => Ok(m.update_job(job_id, update)),
            Store::Redis(r) => r.update_job(job_id, update).await,
        }
    }

    /// Remembers a 429 for `key` until `until_ms` (unix ms).
    pub async fn set_rate_limit(&self, key: &RecordKey, until_ms: u64) -> StoreResult<()> {
        match self {
            Store::Memory(m) => {
                m.set_rate_limit(key, until_ms);
                Ok(())
            }
            Store::Redis(r) => r.set_rate_limit(key, until_ms).await,
        }
    }

    /// The 429 deadline of `key`, if one is in force.
    pub async fn rate_limit(&self, key: &RecordKey) -> StoreResult<Option<u64>> {
        match self {
            Store::Memory(m) => Ok(m.rate_limit(key)),
            Store::Redis(r) => r.rate_limit(key).await,
        }
    }

    /// Records a route's 429 cooldown for the fleet (nothing to do in process: the caller's
    /// own table holds it).
    pub async fn set_cooldown(&self, tenant: &str, route: &str, account: &str, until_ms: u64) {
        if let Store::Redis(r) = self {
            r.set_cooldown(tenant, route, account, until_ms).await;
        }
    }

    /// A fleet-wide cooldown another replica recorded, if one is in force.
    pub async fn cooldown(&self, tenant: &str, route: &str, account: &str) -> Option<u64> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => r.cooldown(tenant, route, account).await,
        }
    }

    /// Whether replicas share this store (Redis): limits are then fleet-wide.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// One fleet-wide GCRA step of a client's rate limit: `Ok`, or the µs to wait; `None` in
    /// process or when Redis cannot say (the caller's local limiter decides).
    pub async fn rate_step(
        &self,
        client: &str,
        interval_us: u64,
        burst: u32,
    ) -> Option<Result<(), u64>> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => r.rate_step(client, interval_us, burst).await,
        }
    }

    /// Spends one fleet-wide billable call of a client's quota for `period`: whether it was
    /// within it and the calls spent; `None` in process or when Redis cannot say.
    pub async fn quota_spend(
        &self,
        client: &str,
        period: &str,
        calls: u64,
        expire_at_ms: u64,
    ) -> Option<(bool, u64)> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => r.quota_spend(client, period, calls, expire_at_ms).await,
        }
    }

    /// Gives back one fleet-wide call of `period` not made after all (nothing in process).
    pub async fn quota_refund(&self, client: &str, period: &str) {
        if let Store::Redis(r) = self {
            r.quota_refund(client, period).await;
        }
    }

    /// Sends a message to every other replica (nothing to do in process).
    pub async fn publish(&self, msg: &Broadcast) -> StoreResult<()> {
        match self {
            Store::Memory(_) => Ok(()),
            Store::Redis(r) => r.publish(msg).await,
        }
    }

    /// Messages from other replicas; `None` for the in-process store.
    pub fn subscribe(&self) -> Option<broadcast::Receiver<Broadcast>> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => Some(r.subscribe()),
        }
    }

    /// Looks a body up in the shared tier after an in-process miss, taking the fleet's fill
    /// lease (for `lease`) when nobody holds the body.
    pub async fn shared_lookup(&self, key: &BodyKey<'_>, lease: Duration) -> SharedLookup {
        match self {
            Store::Memory(_) => SharedLookup::Off,
            Store::Redis(r) => r.shared_lookup(key, lease).await,
        }
    }

    /// Waits up to `timeout` for another replica's fill; `None` when it stored nothing in time.
    pub async fn shared_wait(&self, key: &BodyKey<'_>, timeout: Duration) -> Option<SharedBody> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => r.shared_wait(key, timeout).await,
        }
    }

    /// Ends a fill: stores `body` (when given, not too large, and the account was not
    /// invalidated since the lookup) fresh for `ttl`, gives the lease back and wakes the waiting
    /// replicas. `indexed` bodies are dropped when a sync of the account finishes.
    pub async fn shared_fill(
        &self,
        key: &BodyKey<'_>,
        ticket: FillTicket,
        body: Option<&SharedBody>,
        ttl: Duration,
        indexed: bool,
    ) {
        if let Store::Redis(r) = self {
            r.shared_fill(key, Some(ticket), body, ttl, indexed).await;
        }
    }

    /// A ticket for a fetch that did not take the fill lease (a refetch the app asked for):
    /// the account's invalidation generation now. `None` without a shared tier.
    pub async fn shared_ticket(&self, key: &BodyKey<'_>) -> Option<FillTicket> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => r.shared_ticket(key).await,
        }
    }

    /// Drops an account's shared bodies for each tenant (a sync finished).
    pub async fn shared_invalidate(&self, tenants: &[std::sync::Arc<str>], account: &str) {
        if let Store::Redis(r) = self {
            r.shared_invalidate(tenants, account).await;
        }
    }

    /// Claims one step (`apply`, or a relay target) of webhook event `event` for this replica,
    /// for at most `lease`.
    pub async fn step_claim(&self, event: &str, step: &str, lease: Duration) -> StepClaim {
        match self {
            // One process: the delivery memory's lock already serialises retries.
            Store::Memory(_) => StepClaim::Mine,
            Store::Redis(r) => r.step_claim(event, step, lease).await,
        }
    }

    /// Records a step done, fleet-wide.
    pub async fn step_done(&self, event: &str, step: &str) {
        if let Store::Redis(r) = self {
            r.step_done(event, step).await;
        }
    }

    /// Gives a failed step back so a retry (on any replica) does it again.
    pub async fn step_failed(&self, event: &str, step: &str) {
        if let Store::Redis(r) = self {
            r.step_failed(event, step).await;
        }
    }

    /// Current health.
    pub fn status(&self) -> StoreStatus {
        match self {
            Store::Memory(_) => StoreStatus::Local,
            Store::Redis(r) => r.status(),
        }
    }

    /// Shared-store operations that failed since start (timeouts included); 0 in process.
    pub fn errors(&self) -> u64 {
        match self {
            Store::Memory(_) => 0,
            Store::Redis(r) => r.errors(),
        }
    }
}
