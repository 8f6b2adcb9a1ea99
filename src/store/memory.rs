//! The single-process store: job records, their job-id index and 429 deadlines in moka caches.

use std::sync::Mutex;
use std::time::Duration;

use crate::clock::now_ms;
use crate::store::record::{
    apply_update, JobRecord, JobUpdate, OwnedRecord, RecordKey, Transition,
};

/// How long records are kept: well past the window so terminal jobs answer locally.
pub const RECORD_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Records kept in memory at most.
const MAX_RECORDS: u64 = 500_000;
/// 429 deadlines are capped well below this, so entries never need to outlive it.
const RATE_LIMIT_RETENTION: Duration = Duration::from_secs(3600);

/// Job records in process: the whole store for one replica, the fallback for Redis.
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
                .time_to_live(RATE_LIMIT_RETENTION)
                .build(),
            updates: Mutex::new(()),
        }
    }

    /// The record of a key.
    pub fn get(&self, key: &RecordKey) -> Option<JobRecord> {
        self.records.get(key)
    }

    /// Stores a record and indexes it by job id. The job it replaces leaves the index: a
    /// replaced job is no longer known here, and its entry would only hold memory for a day.
    pub fn put(&self, key: &RecordKey, record: &JobRecord) {
        if let Some(old) = self.records.get(key) {
            if old.job_id != record.job_id {
                self.jobs.invalidate(&old.job_id);
            }
        }
        self.records.insert(key.clone(), record.clone());
        self.jobs.insert(record.job_id.clone(), key.clone());
    }

    /// Forgets the record of `key` (an operator reset its window); whether one was held.
    pub fn forget(&self, key: &RecordKey) -> bool {
        let record = self.records.remove(key);
        if let Some(r) = &record {
            self.jobs.invalidate(&r.job_id);
        }
        record.is_some()
    }

    /// Jobs indexed now.
    #[cfg(test)]
    fn indexed_jobs(&self) -> u64 {
        self.jobs.run_pending_tasks();
        self.jobs.entry_count()
    }

    /// The record holding `job_id`, with its tenant.
    pub fn job(&self, job_id: &str) -> Option<OwnedRecord> {
        let key = self.jobs.get(job_id)?;
        let record = self.records.get(&key)?;
        (record.job_id == job_id).then(|| (key.tenant.clone(), record))
    }

    /// Applies an update to the record holding `job_id`; terminal states never change.
    pub fn update_job(&self, job_id: &str, update: &JobUpdate) -> Option<Transition> {
        let _guard = self
            .updates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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

    /// Remembers a 429 for `key` until `until_ms` (unix ms).
    pub fn set_rate_limit(&self, key: &RecordKey, until_ms: u64) {
        self.rate_limits.insert(key.clone(), until_ms);
    }

    /// The 429 deadline of `key`, if one is in force.
    pub fn rate_limit(&self, key: &RecordKey) -> Option<u64> {
        self.rate_limits.get(key).filter(|until| *until > now_ms())
    }

    /// Records started at or after `since_ms` (to re-seed a shared store that lost them).
    pub fn records_since(&self, since_ms: u64) -> Vec<(RecordKey, JobRecord)> {
        self.records
            .iter()
            .filter(|(_, r)| r.started_at >= since_ms)
            .map(|(k, r)| ((*k).clone(), r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;
    use crate::store::record::{sample, JobStatus};

    #[test]
    fn applying_an_update_twice_changes_nothing_more() {
        let store = MemoryStore::new();
        let key = RecordKey::new(&"t".into(), "a", Kind::Balance);
        store.put(&key, &sample(JobStatus::Processing));
        let update = JobUpdate {
            status: JobStatus::Finished,
            has_new_data: Some(true),
            reauth_required: false,
        };
        assert!(store.update_job("j1", &update).unwrap().changed);
        assert!(!store.update_job("j1", &update).unwrap().changed);
        assert_eq!(store.get(&key).unwrap().status, JobStatus::Finished);
        assert!(store.update_job("unknown", &update).is_none());
    }

    #[test]
    fn a_replaced_job_leaves_the_index() {
        let store = MemoryStore::new();
        let key = RecordKey::new(&"t".into(), "a", Kind::Balance);
        for i in 0..100 {
            let mut r = sample(JobStatus::Finished);
            r.job_id = format!("j{i}");
            store.put(&key, &r);
        }
        assert_eq!(store.indexed_jobs(), 1);
        assert!(store.job("j98").is_none());
        assert!(store.job("j99").is_some());
    }
}
