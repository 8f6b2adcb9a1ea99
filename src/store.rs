//! Job records and the realtime window behind one interface: in process, or shared in Redis.
//!
//! The request path only sees [`JobStore`]; which backend sits behind it is a config switch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::ProxyError;
use crate::route::Kind;

pub mod redis;

/// Status of a Mono sync job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Still running.
    Processing,
    /// Completed successfully.
    Finished,
    /// Failed (possibly needing reauthorisation).
    Failed,
}

impl JobStatus {
    /// Parses Mono's value in any case (`FINISHED` = `finished`).
    pub fn parse(s: &str) -> Option<JobStatus> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("processing") {
            Some(JobStatus::Processing)
        } else if s.eq_ignore_ascii_case("finished") {
            Some(JobStatus::Finished)
        } else if s.eq_ignore_ascii_case("failed") {
            Some(JobStatus::Failed)
        } else {
            None
        }
    }

    /// Lowercase value as sent in `x-job-status`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Processing => "processing",
            JobStatus::Finished => "finished",
            JobStatus::Failed => "failed",
        }
    }

    /// Finished and failed never change again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobStatus::Processing)
    }
}

/// What the proxy knows about the last realtime job of an (account, endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Mono's job id (`x-job-id`).
    pub job_id: String,
    /// Account id.
    pub account: String,
    /// Endpoint the job was started from.
    pub kind: Kind,
    /// Current status.
    pub status: JobStatus,
    /// When the realtime call that started it was made (unix ms): anchors the window.
    pub started_at: u64,
    /// Last change (unix ms).
    pub updated_at: u64,
    /// Whether the sync brought new data, once known.
    pub has_new_data: Option<bool>,
    /// The account must be reauthorised.
    pub reauth_required: bool,
}

/// Key of a record: tenant, account, endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordKey {
    /// Tenant id (a hash of the secret key, never the key).
    pub tenant: Arc<str>,
    /// Account id.
    pub account: String,
    /// Endpoint.
    pub kind: Kind,
}

impl RecordKey {
    /// `tenant:account:kind`, for flights and store keys.
    pub fn flat(&self) -> String {
        format!("{}:{}:{}", self.tenant, self.account, self.kind.as_str())
    }
}

/// A change to a job learned from a webhook, a poll or a job-status response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUpdate {
    /// New status.
    pub status: JobStatus,
    /// `has_new_data` when the source says.
    pub has_new_data: Option<bool>,
    /// Reauthorisation required.
    pub reauth_required: bool,
}

/// The result of applying an update to a record.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The record after the update.
    pub record: JobRecord,
    /// The tenant of the record.
    pub tenant: Arc<str>,
    /// Whether anything changed (false when the update was already applied).
    pub changed: bool,
}

/// Outcome of claiming the right to make a realtime call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica makes the call.
    Won,
    /// Another replica is making it; wait for its record.
    Lost,
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
    },
    /// A realtime job started: `x-has-new-data` resets for the account.
    JobStarted {
        /// Tenant id.
        tenant: String,
        /// Account id.
        account: String,
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

/// Why a store operation failed (fail-closed mode only; fail-open falls back silently).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The shared store is unreachable and the proxy runs fail-closed.
    #[error("shared store unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for ProxyError {
    fn from(_: StoreError) -> Self {
        ProxyError::Unavailable("shared state store unavailable")
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A job record with the tenant that owns it.
pub type OwnedRecord = (Arc<str>, JobRecord);

/// Job records, the realtime window and cross-replica broadcasts.
pub trait JobStore: Send + Sync + 'static {
    /// The record of a key.
    fn get<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, StoreResult<Option<JobRecord>>>;
    /// Claims the right to make the realtime call for `key`, for at most `lease`.
    fn claim<'a>(
        &'a self,
        key: &'a RecordKey,
        lease: Duration,
    ) -> BoxFuture<'a, StoreResult<Claim>>;
    /// Gives a claim back (the call failed; the next caller may try).
    fn release<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, StoreResult<()>>;
    /// Stores a record for `ttl` and indexes it by job id.
    fn put<'a>(
        &'a self,
        key: &'a RecordKey,
        record: &'a JobRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>>;
    /// Waits up to `timeout` for another replica's claimed call to store its record.
    fn wait_record<'a>(
        &'a self,
        key: &'a RecordKey,
        timeout: Duration,
    ) -> BoxFuture<'a, StoreResult<Option<JobRecord>>>;
    /// The record holding `job_id`.
    fn job<'a>(&'a self, job_id: &'a str) -> BoxFuture<'a, StoreResult<Option<OwnedRecord>>>;
    /// Applies an update to the record holding `job_id`; terminal states never change.
    fn update_job<'a>(
        &'a self,
        job_id: &'a str,
        update: &'a JobUpdate,
    ) -> BoxFuture<'a, StoreResult<Option<Transition>>>;
    /// Remembers a 429 for `key` until `until_ms` (unix ms).
    fn set_rate_limit<'a>(
        &'a self,
        key: &'a RecordKey,
        until_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>>;
    /// The 429 deadline of `key`, if one is in force.
    fn rate_limit<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, StoreResult<Option<u64>>>;
    /// Sends a message to every other replica.
    fn publish<'a>(&'a self, msg: &'a Broadcast) -> BoxFuture<'a, StoreResult<()>>;
    /// Messages from other replicas; `None` for a single-process store.
    fn subscribe(&self) -> Option<broadcast::Receiver<Broadcast>>;
    /// Current health.
    fn status(&self) -> StoreStatus;
    /// Shared-store operations that failed since start (timeouts included); 0 in process.
    fn errors(&self) -> u64 {
        0
    }
}

/// Milliseconds since the unix epoch (records are shared between machines, so wall clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long records are kept: well past the window so terminal jobs answer locally.
pub const RECORD_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Records kept in memory at most.
const MAX_RECORDS: u64 = 500_000;

/// The single-process store.
pub struct MemoryStore {
    records: moka::sync::Cache<RecordKey, JobRecord>,
    jobs: moka::sync::Cache<String, RecordKey>,
    rate_limits: moka::sync::Cache<RecordKey, u64>,
    /// Serialises read-modify-write updates so an update is applied once.
    updates: Mutex<()>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore {
            records: moka::sync::Cache::builder()
                .max_capacity(MAX_RECORDS)
                .time_to_live(RECORD_RETENTION)
                .build(),
            jobs: moka::sync::Cache::builder()
                .max_capacity(MAX_RECORDS)
                .time_to_live(RECORD_RETENTION)
                .build(),
            rate_limits: moka::sync::Cache::builder()
                .max_capacity(MAX_RECORDS)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            updates: Mutex::new(()),
        }
    }

    /// Synchronous record lookup.
    pub fn get_now(&self, key: &RecordKey) -> Option<JobRecord> {
        self.records.get(key)
    }

    /// Synchronous insert.
    pub fn put_now(&self, key: &RecordKey, record: &JobRecord) {
        self.records.insert(key.clone(), record.clone());
        self.jobs.insert(record.job_id.clone(), key.clone());
    }

    /// Synchronous job lookup.
    pub fn job_now(&self, job_id: &str) -> Option<OwnedRecord> {
        let key = self.jobs.get(job_id)?;
        let record = self.records.get(&key)?;
        (record.job_id == job_id).then(|| (key.tenant.clone(), record))
    }

    /// Synchronous update; see [`JobStore::update_job`].
    pub fn update_now(&self, job_id: &str, update: &JobUpdate) -> Option<Transition> {
        let _guard = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let key = self.jobs.get(job_id)?;
        let mut record = self.records.get(&key)?;
        if record.job_id != job_id {
            return None;
        }
        let next = apply_update(&record, update);
        let changed = next != record;
        if changed {
            record = next;
            self.records.insert(key.clone(), record.clone());
        }
        Some(Transition {
            record,
            tenant: key.tenant.clone(),
            changed,
        })
    }

    /// Synchronous 429 memory.
    pub fn set_rate_limit_now(&self, key: &RecordKey, until_ms: u64) {
        self.rate_limits.insert(key.clone(), until_ms);
    }

    /// Synchronous 429 lookup.
    pub fn rate_limit_now(&self, key: &RecordKey) -> Option<u64> {
        self.rate_limits.get(key).filter(|until| *until > now_ms())
    }
}

/// The record after an update: terminal states stay as they are, flags only accumulate.
pub fn apply_update(record: &JobRecord, update: &JobUpdate) -> JobRecord {
    let mut next = record.clone();
    if record.status.is_terminal() && record.status != update.status {
        return next;
    }
    next.status = update.status;
    if update.has_new_data.is_some() {
        next.has_new_data = update.has_new_data;
    }
    next.reauth_required |= update.reauth_required;
    if next != *record {
        next.updated_at = now_ms();
    }
    next
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl JobStore for MemoryStore {
    fn get<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, StoreResult<Option<JobRecord>>> {
        ready(Ok(self.get_now(key)))
    }

    fn claim<'a>(
        &'a self,
        _key: &'a RecordKey,
        _lease: Duration,
    ) -> BoxFuture<'a, StoreResult<Claim>> {
        // One process: the local single flight already makes this caller the only one.
        ready(Ok(Claim::Won))
    }

    fn release<'a>(&'a self, _key: &'a RecordKey) -> BoxFuture<'a, StoreResult<()>> {
        ready(Ok(()))
    }

    fn put<'a>(
        &'a self,
        key: &'a RecordKey,
        record: &'a JobRecord,
        _ttl: Duration,
    ) -> BoxFuture<'a, StoreResult<()>> {
        self.put_now(key, record);
        ready(Ok(()))
    }

    fn wait_record<'a>(
        &'a self,
        key: &'a RecordKey,
        _timeout: Duration,
    ) -> BoxFuture<'a, StoreResult<Option<JobRecord>>> {
        ready(Ok(self.get_now(key)))
    }

    fn job<'a>(&'a self, job_id: &'a str) -> BoxFuture<'a, StoreResult<Option<OwnedRecord>>> {
        ready(Ok(self.job_now(job_id)))
    }

    fn update_job<'a>(
        &'a self,
        job_id: &'a str,
        update: &'a JobUpdate,
    ) -> BoxFuture<'a, StoreResult<Option<Transition>>> {
        ready(Ok(self.update_now(job_id, update)))
    }

    fn set_rate_limit<'a>(
        &'a self,
        key: &'a RecordKey,
        until_ms: u64,
    ) -> BoxFuture<'a, StoreResult<()>> {
        self.set_rate_limit_now(key, until_ms);
        ready(Ok(()))
    }

    fn rate_limit<'a>(&'a self, key: &'a RecordKey) -> BoxFuture<'a, StoreResult<Option<u64>>> {
        ready(Ok(self.rate_limit_now(key)))
    }

    fn publish<'a>(&'a self, _msg: &'a Broadcast) -> BoxFuture<'a, StoreResult<()>> {
        ready(Ok(()))
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Broadcast>> {
        None
    }

    fn status(&self) -> StoreStatus {
        StoreStatus::Local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: JobStatus) -> JobRecord {
        JobRecord {
            job_id: "j1".into(),
            account: "a".into(),
            kind: Kind::Balance,
            status,
            started_at: 1,
            updated_at: 1,
            has_new_data: None,
            reauth_required: false,
        }
    }

    #[test]
    fn terminal_states_never_change() {
        let done = record(JobStatus::Finished);
        let update = JobUpdate {
            status: JobStatus::Failed,
            has_new_data: None,
            reauth_required: true,
        };
        assert_eq!(apply_update(&done, &update), done);
    }

    #[test]
    fn applying_an_update_twice_changes_nothing_more() {
        let store = MemoryStore::new();
        let key = RecordKey {
            tenant: "t".into(),
            account: "a".into(),
            kind: Kind::Balance,
        };
        store.put_now(&key, &record(JobStatus::Processing));
        let update = JobUpdate {
            status: JobStatus::Finished,
            has_new_data: Some(true),
            reauth_required: false,
        };
        assert!(store.update_now("j1", &update).unwrap().changed);
        assert!(!store.update_now("j1", &update).unwrap().changed);
        assert_eq!(store.get_now(&key).unwrap().status, JobStatus::Finished);
        assert!(store.update_now("unknown", &update).is_none());
    }
}
