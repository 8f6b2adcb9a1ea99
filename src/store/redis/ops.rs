//! The store operations against Redis, each falling back to the embedded store on failure.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::keys::VERSION;
use super::keys::{decode_record, encode_record, lease_claimed_at, Event, JobRef, StoredNote};
use super::scripts::{CLAIM, PUT, RELEASE, SEED, SWAP};
use super::{Inner, OpError, RedisStore};
use crate::clock::now_ms;
use crate::store::{
    apply_update, Broadcast, Claim, JobRecord, JobUpdate, OwnedRecord, RecordKey, StoreError,
    StoreResult, Transition, RECORD_RETENTION,
};

/// A waiter re-reads Redis this often in case a "record stored" message was missed.
const WAIT_REREAD: Duration = Duration::from_millis(250);
/// Optimistic job updates retry this many times when another replica wrote in between.
const UPDATE_ATTEMPTS: usize = 8;
/// An unanswered claim is retried after this long, doubling up to `CLAIM_RETRY_MAX`.
const CLAIM_RETRY_MIN: Duration = Duration::from_millis(20);
const CLAIM_RETRY_MAX: Duration = Duration::from_millis(200);
/// A record put that Redis does not answer is tried this many times.
const PUT_ATTEMPTS: u32 = 4;

impl RedisStore {
    /// The record of a key: Redis's, unless the local copy started later (Redis lost it in a
    /// restart, or a job started here during an outage). Written through to the local copy.
    pub async fn get(&self, key: &RecordKey) -> StoreResult<Option<JobRecord>> {
        let s = &*self.inner;
        let read = s
            .cmd::<Option<String>>("get", redis::cmd("GET").arg(s.keys.record(key)))
            .await;
        match read {
            Ok(text) => {
                let remote = text.as_deref().and_then(decode_record).map(|s| s.record);
                let record = newest(remote, s.local.get(key));
                if let Some(r) = &record {
                    s.local.put(key, r);
                }
                Ok(record)
            }
            Err(failure) => s.fallback(failure, || s.local.get(key)),
        }
    }

    /// Claims the window for `key` in one script that also honours a stored record whose window
    /// is open. An unanswered attempt is retried with the same lease value (so a claim that did
    /// land is recognised as ours) until `budget` runs out; its outcome is never guessed.
    pub async fn claim(
        &self,
        key: &RecordKey,
        lease: Duration,
        budget: Duration,
    ) -> StoreResult<Claim> {
        let s = &*self.inner;
        let (lk, rk) = (s.keys.lease(key), s.keys.record(key));
        let value = format!("{}{}", s.owner(), now_ms());
        let lease_ms = (lease.as_millis() as u64).max(1);
        let window_ms = s.window.as_millis() as u64;
        let deadline = Instant::now() + budget;
        let mut backoff = CLAIM_RETRY_MIN;
        let mut unanswered = None;
        loop {
            let mut call = CLAIM.key(&lk);
            call.key(&rk)
                .arg(&value)
                .arg(lease_ms)
                .arg(window_ms)
                .arg(now_ms());
            match s.script::<(i64, String)>("claim", &call).await {
                Ok((1, _)) => return Ok(Claim::Won),
                Ok((2, text)) => {
                    if let Some(stored) = decode_record(&text) {
                        s.local.put(key, &stored.record);
                        return Ok(Claim::Windowed(stored.record));
                    }
                    // A record of another version holds the window: wait for it like a lease.
                    return Ok(Claim::Lost);
                }
                Ok(_) => return Ok(Claim::Lost),
                Err(OpError::Slow(reason)) => {
                    if Instant::now() + backoff >= deadline {
                        return Err(StoreError::ClaimUnknown(reason));
                    }
                    unanswered = Some(reason);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(CLAIM_RETRY_MAX);
                }
                // An earlier attempt may have landed: Redis going down now does not make this
                // caller the only one. Nor does an error reply: the window is not known.
                Err(OpError::Down(reason)) if unanswered.is_some() => {
                    return Err(StoreError::ClaimUnknown(reason));
                }
                Err(OpError::Refused(reason)) => return Err(StoreError::ClaimUnknown(reason)),
                // Down from the start: fail open, the local single flight made this caller the
                // only one here (and the caller checked the local record first).
                Err(failure) => return s.fallback(failure, || Claim::Won),
            }
        }
    }

    /// Forgets the realtime window of `key` for the whole fleet: its record and whoever's
    /// lease (an operator's order, not a failed call). Returns whether a record was held.
    pub async fn forget_window(&self, key: &RecordKey) -> StoreResult<bool> {
        let s = &*self.inner;
        let local = s.local.forget(key);
        let del = redis::cmd("DEL")
            .arg(s.keys.record(key))
            .arg(s.keys.lease(key))
            .to_owned();
        match s.cmd::<i64>("forget_window", &del).await {
            Ok(n) => Ok(n > 0 || local),
            Err(failure) => Err(StoreError::Unavailable(failure.reason())),
        }
    }

    /// Forgets only this replica's copy of the record of `key`.
    pub fn forget_local(&self, key: &RecordKey) {
        self.inner.local.forget(key);
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

    /// Stores the record and its index, shortens our lease to the window, wakes waiters. A slow
    /// Redis gets a few more tries; the claim is never given back after a call was made (that
    /// would let another replica call inside the window), and a record Redis never got is put
    /// back by the re-seed when Redis recovers.
    pub async fn put(&self, key: &RecordKey, record: &JobRecord, ttl: Duration) -> StoreResult<()> {
        let s = &*self.inner;
        s.local.put(key, record);
        let rk = s.keys.record(key);
        let value = encode_record(&key.tenant, record);
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
        call.key(s.keys.lease(key))
            .arg(&value)
            .arg(retention)
            .arg(s.owner())
            .arg(window_left)
            .arg(s.keys.stored())
            .arg(&note);
        let mut attempts = 0;
        loop {
            attempts += 1;
            // The index and the record go out together: two round trips would be one too many
            // on the realtime leader's path, and the index is harmless before the record.
            let (put, index) =
                tokio::join!(s.script::<i64>("put", &call), index_job(s, key, record));
            match put.and(index) {
                Ok(_) => return Ok(()),
                Err(OpError::Slow(_)) if attempts < PUT_ATTEMPTS => {
                    tokio::time::sleep(CLAIM_RETRY_MIN * attempts).await;
                }
                Err(failure) => {
                    s.unsynced.store(true, Ordering::Release);
                    return s.fallback(failure, || ());
                }
            }
        }
    }

    /// Waits for the record of the replica holding the lease: a record started at or after the
    /// lease was claimed. Woken by the stored channel, re-reading every `WAIT_REREAD` anyway.
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
        let mut first = true;
        loop {
            if !first {
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
            first = false;
            let read = s
                .pipe::<(Option<String>, Option<String>)>(
                    "wait_record",
                    redis::pipe().cmd("GET").arg(&*rk).cmd("GET").arg(&lk),
                )
                .await;
            let (record, lease) = match read {
                Ok(r) => r,
                // Slow: the record may be there already; read again after the nap.
                Err(OpError::Slow(_)) => continue,
                Err(failure) => return s.fallback(failure, || s.local.get(key)),
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
        }
    }

    /// The record holding `job_id`, with its key and raw JSON (for compare-and-set).
    async fn load_job(
        &self,
        job_id: &str,
    ) -> Result<Option<(RecordKey, String, JobRecord)>, OpError> {
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

    /// The record holding `job_id`, with its tenant; the local copy when Redis lost it.
    pub async fn job(&self, job_id: &str) -> StoreResult<Option<OwnedRecord>> {
        let s = &*self.inner;
        match self.load_job(job_id).await {
            Ok(Some((key, _, record))) => {
                s.local.put(&key, &record);
                Ok(Some((key.tenant, record)))
            }
            Ok(None) => Ok(s.local.job(job_id)),
            Err(failure) => s.fallback(failure, || s.local.job(job_id)),
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
                // Redis lost it (a restart): the local copy is updated and put back.
                Ok(None) => return Ok(self.update_local(job_id, update).await),
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

    /// The fleet-wide 429 deadline of `key` (or this replica's, if later), if one is in force.
    pub async fn rate_limit(&self, key: &RecordKey) -> StoreResult<Option<u64>> {
        let s = &*self.inner;
        let read = s
            .cmd::<Option<u64>>("rate_limit", redis::cmd("GET").arg(s.keys.rate_limit(key)))
            .await;
        match read {
            Ok(until) => {
                let remote = until.filter(|u| *u > now_ms());
                Ok(remote.max(s.local.rate_limit(key)))
            }
            Err(failure) => s.fallback(failure, || s.local.rate_limit(key)),
        }
    }

    /// Records a route's 429 cooldown fleet-wide until `until_ms` (best effort: the broadcast
    /// and this replica's own table hold it too).
    pub async fn set_cooldown(&self, tenant: &str, route: &str, account: &str, until_ms: u64) {
        let s = &*self.inner;
        let left = until_ms.saturating_sub(now_ms());
        if left == 0 {
            return;
        }
        let set = redis::cmd("SET")
            .arg(s.keys.cooldown(tenant, account, route))
            .arg(until_ms)
            .arg("PX")
            .arg(left)
            .to_owned();
        if let Err(e) = s.cmd::<()>("set_cooldown", &set).await {
            tracing::debug!(error = %e.reason(), "cooldown not recorded in redis");
        }
    }

    /// The fleet-wide cooldown deadline of a route of an account, if one is in force.
    pub async fn cooldown(&self, tenant: &str, route: &str, account: &str) -> Option<u64> {
        let s = &*self.inner;
        let get = redis::cmd("GET")
            .arg(s.keys.cooldown(tenant, account, route))
            .to_owned();
        match s.cmd::<Option<u64>>("cooldown", &get).await {
            Ok(until) => until.filter(|u| *u > now_ms()),
            // Unknown: the local table (fed by broadcasts) decides.
            Err(_) => None,
        }
    }

    /// Applies an update to the local copy of a job Redis no longer holds, and puts the record
    /// back into Redis so the other replicas see it again.
    async fn update_local(&self, job_id: &str, update: &JobUpdate) -> Option<Transition> {
        let s = &*self.inner;
        let t = s.local.update_job(job_id, update)?;
        let key = RecordKey::new(&t.tenant, &t.record.account, t.record.kind);
        if let Err(e) = seed(s, &key, &t.record).await {
            tracing::debug!(error = %e.reason(), job_id, "could not put a lost record back");
        }
        Some(t)
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

/// The later-started of two records for one key (Redis's on a tie: its status may be newer).
fn newest(remote: Option<JobRecord>, local: Option<JobRecord>) -> Option<JobRecord> {
    match (remote, local) {
        (Some(r), Some(l)) if l.started_at > r.started_at => Some(l),
        (Some(r), _) => Some(r),
        (None, l) => l,
    }
}

/// The [`SEED`] script call for one record.
fn seed_call<'a>(s: &Inner, key: &RecordKey, record: &JobRecord) -> redis::ScriptInvocation<'a> {
    let retention = s.window.max(RECORD_RETENTION).as_millis() as u64;
    let mut call = SEED.key(s.keys.record(key));
    call.key(s.keys.lease(key))
        .arg(encode_record(&key.tenant, record))
        .arg(record.started_at)
        .arg(retention)
        .arg(format!("{}{}", s.owner(), record.started_at))
        .arg(s.window.as_millis() as u64)
        .arg(now_ms());
    call
}

/// Puts one record back into Redis unless Redis holds a better one (see [`SEED`]), and its job
/// index when it did.
async fn seed(s: &Inner, key: &RecordKey, record: &JobRecord) -> Result<i64, OpError> {
    let written = s.script::<i64>("seed", &seed_call(s, key, record)).await?;
    if written == 1 {
        index_job(s, key, record).await?;
    }
    Ok(written)
}

/// Points the job id at its record. A key of its own (the job id is its hash tag): webhooks name
/// the job alone, and on a cluster the record and the index live on different nodes.
async fn index_job(s: &Inner, key: &RecordKey, record: &JobRecord) -> Result<(), OpError> {
    let retention = s.window.max(RECORD_RETENTION).as_millis() as u64;
    s.cmd::<()>(
        "index_job",
        redis::cmd("SET")
            .arg(s.keys.job(&record.job_id))
            .arg(JobRef::encode(key))
            .arg("PX")
            .arg(retention),
    )
    .await
}

/// After Redis comes back (or turns out to have restarted empty), puts back every record this
/// replica holds whose window is still open, so no replica claims inside it. Returns how many
/// were written.
pub(super) async fn reseed(s: &Inner) -> Result<usize, OpError> {
    let since = now_ms().saturating_sub(s.window.as_millis() as u64);
    let mut written = 0;
    for (key, record) in s.local.records_since(since) {
        written += usize::from(seed(s, &key, &record).await? == 1);
    }
    s.unsynced.store(false, Ordering::Release);
    Ok(written)
}
