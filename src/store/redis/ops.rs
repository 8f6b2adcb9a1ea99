//! The store operations against Redis, each falling back to the embedded store on failure.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::keys::VERSION;
use super::keys::{decode_record, encode_record, lease_claimed_at, Event, JobRef, StoredNote};
use super::scripts::{PUT, RELEASE, SWAP};
use super::RedisStore;
use crate::clock::now_ms;
use crate::store::{
    apply_update, Broadcast, Claim, JobRecord, JobUpdate, OwnedRecord, RecordKey, StoreError,
    StoreResult, Transition, RECORD_RETENTION,
};

/// A waiter re-reads Redis this often in case a "record stored" message was missed.
const WAIT_REREAD: Duration = Duration::from_millis(250);
/// Optimistic job updates retry this many times when another replica wrote in between.
const UPDATE_ATTEMPTS: usize = 8;

impl RedisStore {
    /// The record of a key (written through to the local copy).
    pub async fn get(&self, key: &RecordKey) -> StoreResult<Option<JobRecord>> {
        let s = &*self.inner;
        let read = s
            .cmd::<Option<String>>("get", redis::cmd("GET").arg(s.keys.record(key)))
            .await;
        match read {
            Ok(text) => {
                let record = text.as_deref().and_then(decode_record).map(|s| s.record);
                if let Some(r) = &record {
                    s.local.put(key, r);
                }
                Ok(record)
            }
            Err(reason) => s.fallback(reason, || s.local.get(key)),
        }
    }

    /// Claims the window for `key` with `SET NX PX`.
    pub async fn claim(&self, key: &RecordKey, lease: Duration) -> StoreResult<Claim> {
        let s = &*self.inner;
        let lk = s.keys.lease(key);
        let value = format!("{}{}", s.owner(), now_ms());
        let ms = (lease.as_millis() as u64).max(1);
        let set = s
            .cmd::<Option<String>>(
                "claim",
                redis::cmd("SET")
                    .arg(&lk)
                    .arg(&value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await;
        match set {
            Ok(Some(_)) => Ok(Claim::Won),
            Ok(None) => Ok(Claim::Lost),
            // Fail open: the local single flight already made this caller the only one here.
            Err(reason) => s.fallback(reason, || Claim::Won),
        }
    }

    /// Deletes our lease so another replica may claim at once.
    pub async fn release(&self, key: &RecordKey) -> StoreResult<()> {
        let s = &*self.inner;
        let done = s
            .script::<i64>("release", RELEASE.key(s.keys.lease(key)).arg(s.owner()))
            .await;
        match done {
            Ok(_) => Ok(()),
            Err(reason) => s.fallback(reason, || ()),
        }
    }

    /// Stores the record and its index, shortens our lease to the window, wakes waiters.
    pub async fn put(&self, key: &RecordKey, record: &JobRecord, ttl: Duration) -> StoreResult<()> {
        let s = &*self.inner;
        s.local.put(key, record);
        let rk = s.keys.record(key);
        let value = encode_record(&key.tenant, record);
        let index = JobRef::encode(key);
        let retention = ttl.max(RECORD_RETENTION).as_millis() as u64;
        let window_left = (record.started_at + ttl.as_millis() as u64)
            .saturating_sub(now_ms())
            .max(1);
        let note = serde_json::to_string(&StoredNote {
            v: VERSION,
            from: s.replica.clone(),
            key: rk.clone(),
        })
        .unwrap_or_default();
        let mut call = PUT.key(&rk);
        call.key(s.keys.job(&record.job_id))
            .key(s.keys.lease(key))
            .arg(&value)
            .arg(&index)
            .arg(retention)
            .arg(s.owner())
            .arg(window_left)
            .arg(s.keys.stored())
            .arg(&note);
        let done = s.script::<i64>("put", &call).await;
        match done {
            Ok(_) => Ok(()),
            Err(reason) => {
                // Replicas that lost the claim wait for this record; let them claim instead of
                // waiting out the lease. (Skipped while degraded: the lease expires on its own.)
                if let Err(e) = self.release(key).await {
                    tracing::debug!(error = %e, "could not give back the claim after a failed put");
                }
                s.fallback(reason, || ())
            }
        }
    }

    /// Waits for the record of the replica holding the lease: a record started at or after the
    /// lease was claimed. Woken by the stored channel, re-reading every [`WAIT_REREAD`] anyway.
    pub async fn wait_record(
        &self,
        key: &RecordKey,
        timeout: Duration,
    ) -> StoreResult<Option<JobRecord>> {
        let s = &*self.inner;
        // Subscribe before the first read so a record stored in between still wakes us.
        let mut wake = s.stored.subscribe();
        let rk: Arc<str> = s.keys.record(key).into();
        let lk = s.keys.lease(key);
        let deadline = Instant::now() + timeout;
        let mut claimed_at: Option<u64> = None;
        loop {
            let read = s
                .pipe::<(Option<String>, Option<String>)>(
                    "wait_record",
                    redis::pipe().cmd("GET").arg(&*rk).cmd("GET").arg(&lk),
                )
                .await;
            let (record, lease) = match read {
                Ok(r) => r,
                Err(reason) => return s.fallback(reason, || s.local.get(key)),
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
                        s.local.put(key, r);
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
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await;
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
        let s = &*self.inner;
        let index = s
            .cmd::<Option<String>>("job", redis::cmd("GET").arg(s.keys.job(job_id)))
            .await?;
        let Some(key) = index.as_deref().and_then(JobRef::decode) else {
            return Ok(None);
        };
        let text = s
            .cmd::<Option<String>>("job", redis::cmd("GET").arg(s.keys.record(&key)))
            .await?;
        let Some(text) = text else { return Ok(None) };
        // A newer job of the same key replaced the record: this job is no longer known.
        match decode_record(&text).filter(|s| s.record.job_id == job_id) {
            Some(s) => Ok(Some((key, text, s.record))),
            None => Ok(None),
        }
    }

    /// The record holding `job_id`, with its tenant.
    pub async fn job(&self, job_id: &str) -> StoreResult<Option<OwnedRecord>> {
        let s = &*self.inner;
        match self.load_job(job_id).await {
            Ok(Some((key, _, record))) => {
                s.local.put(&key, &record);
                Ok(Some((key.tenant, record)))
            }
            Ok(None) => Ok(None),
            Err(reason) => s.fallback(reason, || s.local.job(job_id)),
        }
    }

    /// Read, apply, compare-and-set; retried when another replica wrote in between.
    pub async fn update_job(
        &self,
        job_id: &str,
        update: &JobUpdate,
    ) -> StoreResult<Option<Transition>> {
        let s = &*self.inner;
        for _ in 0..UPDATE_ATTEMPTS {
            let (key, old, record) = match self.load_job(job_id).await {
                Ok(Some(found)) => found,
                Ok(None) => return Ok(None),
                Err(reason) => return s.fallback(reason, || s.local.update_job(job_id, update)),
            };
            let next = apply_update(&record, update);
            if next == record {
                s.local.put(&key, &record);
                return Ok(Some(Transition {
                    record,
                    tenant: key.tenant,
                    changed: false,
                }));
            }
            let new = encode_record(&key.tenant, &next);
            let swapped = s
                .script::<i64>(
                    "update_job",
                    SWAP.key(s.keys.record(&key)).arg(&old).arg(&new),
                )
                .await;
            match swapped {
                Ok(1) => {
                    s.local.put(&key, &next);
                    return Ok(Some(Transition {
                        record: next,
                        tenant: key.tenant,
                        changed: true,
                    }));
                }
                // Another replica wrote in between: read again.
                Ok(_) => {}
                Err(reason) => return s.fallback(reason, || s.local.update_job(job_id, update)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "job {job_id} changed under {UPDATE_ATTEMPTS} concurrent updates"
        )))
    }

    /// Remembers a 429 fleet-wide until `until_ms`.
    pub async fn set_rate_limit(&self, key: &RecordKey, until_ms: u64) -> StoreResult<()> {
        let s = &*self.inner;
        s.local.set_rate_limit(key, until_ms);
        let left = until_ms.saturating_sub(now_ms());
        if left == 0 {
            return Ok(());
        }
        let rl = s.keys.rate_limit(key);
        let done = s
            .cmd::<()>(
                "set_rate_limit",
                redis::cmd("SET").arg(&rl).arg(until_ms).arg("PX").arg(left),
            )
            .await;
        match done {
            Ok(()) => Ok(()),
            Err(reason) => s.fallback(reason, || ()),
        }
    }

    /// The fleet-wide 429 deadline of `key`, if one is in force.
    pub async fn rate_limit(&self, key: &RecordKey) -> StoreResult<Option<u64>> {
        let s = &*self.inner;
        let read = s
            .cmd::<Option<u64>>("rate_limit", redis::cmd("GET").arg(s.keys.rate_limit(key)))
            .await;
        match read {
            Ok(until) => Ok(until.filter(|u| *u > now_ms())),
            Err(reason) => s.fallback(reason, || s.local.rate_limit(key)),
        }
    }

    /// Sends a message to every other replica.
    pub async fn publish(&self, msg: &Broadcast) -> StoreResult<()> {
        let s = &*self.inner;
        let event = serde_json::to_string(&Event {
            v: VERSION,
            from: s.replica.clone(),
            msg: msg.clone(),
        })
        .unwrap_or_default();
        let done = s
            .cmd::<i64>(
                "publish",
                redis::cmd("PUBLISH").arg(s.keys.events()).arg(&event),
            )
            .await;
        match done {
            Ok(_) => Ok(()),
            // Fail open: this replica applied it locally; the others miss it for this outage.
            Err(reason) => s.fallback(reason, || ()),
        }
    }
}
