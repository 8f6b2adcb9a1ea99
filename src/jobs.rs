//! Job tracking (spec §5): job-status reads, the poller, and applying updates from any source.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Response, StatusCode};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::body::Body;
use crate::cache::account_key;
use crate::error::{json_response, timestamp, ProxyError};
use crate::headers::{new_request_id, set_cache_status, CacheResult};
use crate::route::Kind;
use crate::state::{State, Tenant};
use crate::store::{Broadcast, JobRecord, JobStatus, JobUpdate};

/// Longest pause between two polls of one job.
const MAX_POLL_DELAY: Duration = Duration::from_secs(60);

/// Follows `processing` jobs until they end, a bounded number at a time.
pub struct Poller {
    permits: Arc<Semaphore>,
    active: Mutex<HashSet<String>>,
}

impl Poller {
    /// A poller running at most `concurrency` polls at once.
    pub fn new(concurrency: usize) -> Poller {
        Poller {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            active: Mutex::new(HashSet::new()),
        }
    }

    /// Starts following a processing job unless polling is off or it is followed already.
    pub fn track(&self, state: &Arc<State>, tenant: &Tenant, record: &JobRecord) {
        if !state.config.jobs.poll || record.status.is_terminal() {
            return;
        }
        let fresh = self
            .active
            .lock()
            .map(|mut a| a.insert(record.job_id.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let weak = Arc::downgrade(state);
        let tenant = tenant.clone();
        let record = record.clone();
        tokio::spawn(async move {
            poll_job(&weak, &tenant, &record).await;
            if let Some(state) = weak.upgrade() {
                if let Ok(mut a) = state.poller.active.lock() {
                    a.remove(&record.job_id);
                }
            }
        });
    }

    /// Jobs being followed now.
    pub fn active(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0)
    }
}

async fn poll_job(weak: &Weak<State>, tenant: &Tenant, record: &JobRecord) {
    let Some(state) = weak.upgrade() else { return };
    let mut delay = state.config.jobs.poll_interval;
    let deadline = Instant::now() + state.config.jobs.poll_deadline;
    let target = format!("/v2/accounts/{}/jobs/{}", record.account, record.job_id);
    drop(state);
    loop {
        tokio::time::sleep(delay).await;
        // Hold no strong reference while sleeping, so a stopped proxy can be dropped.
        let Some(state) = weak.upgrade() else { return };
        if Instant::now() >= deadline {
            state.metrics.poll("deadline");
            tracing::info!(job_id = %record.job_id, "job still processing at the poll deadline; giving up");
            return;
        }
        if let Ok(Some((_, current))) = state.store.job(&record.job_id).await {
            if current.status.is_terminal() {
                return;
            }
        }
        let Ok(_permit) = state.poller.permits.clone().acquire_owned().await else {
            return;
        };
        let rid = new_request_id();
        let req = match state.upstream.get(&target, &tenant.key, &rid, false) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build job poll");
                return;
            }
        };
        match state
            .timed_fetch("job_poll", req, state.config.upstream.timeout)
            .await
        {
            Ok(f) if f.status.is_success() => {
                if let Some(update) = parse_job_status(&f.body) {
                    apply(&state, &record.job_id, &update, None).await;
                    if update.status.is_terminal() {
                        state.metrics.poll("terminal");
                        return;
                    }
                }
                state.metrics.poll("processing");
            }
            Ok(f) if f.status == StatusCode::NOT_FOUND => {
                state.metrics.poll("not_found");
                return;
            }
            Ok(_) | Err(_) => state.metrics.poll("error"),
        }
        delay = (delay * 3 / 2).min(MAX_POLL_DELAY);
    }
}

/// Reads Mono's job-status envelope: `data.job_status`, `data.reauth_required`.
pub fn parse_job_status(body: &[u8]) -> Option<JobUpdate> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?;
    let status = JobStatus::parse(data.get("job_status")?.as_str()?)?;
    Some(JobUpdate {
        status,
        has_new_data: None,
        reauth_required: data
            .get("reauth_required")
            .and_then(|r| r.as_bool())
            .unwrap_or(false),
    })
}

/// Applies a job update from any source; a sync that just finished invalidates the account.
/// `account` is used when the job is unknown to us but the source named the account.
pub async fn apply(state: &Arc<State>, job_id: &str, update: &JobUpdate, account: Option<&str>) {
    match state.store.update_job(job_id, update).await {
        Ok(Some(t)) => {
            if t.changed {
                tracing::info!(job_id, status = t.record.status.as_str(), account = %t.record.account, "job updated");
                if t.record.status == JobStatus::Finished {
                    invalidate(state, &t.record.account, update.has_new_data).await;
                }
            }
        }
        Ok(None) => {
            if let (Some(account), JobStatus::Finished) = (account, update.status) {
                invalidate(state, account, update.has_new_data).await;
            }
        }
        Err(e) => {
            state.metrics.store_error("update_job");
            tracing::warn!(error = %e, job_id, "could not apply job update");
        }
    }
}

/// A sync finished: drop the account's cached bodies here and on every replica.
pub async fn invalidate(state: &Arc<State>, account: &str, has_new_data: Option<bool>) {
    invalidate_local(state, account, has_new_data);
    let msg = Broadcast::Invalidate {
        account: account.to_string(),
        has_new_data,
    };
    if let Err(e) = state.store.publish(&msg).await {
        state.metrics.store_error("publish");
        tracing::warn!(error = %e, "could not broadcast invalidation");
    }
    if state.config.cache.refresh_ahead {
        let state = Arc::clone(state);
        let account = account.to_string();
        tokio::spawn(async move {
            let tenant = state.secrets.load().default.clone();
            let akey = account_key(&tenant, &account);
            let rid = new_request_id();
            let (result, _) = crate::cache::fill(
                &state,
                &tenant,
                &akey,
                Kind::Balance.as_str(),
                &account,
                Kind::Balance,
                None,
                &rid,
            )
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "refresh-ahead fetch failed");
            }
        });
    }
}

fn invalidate_local(state: &State, account: &str, has_new_data: Option<bool>) {
    let secrets = state.secrets.load();
    for tenant in secrets.tenant_ids() {
        let mut key = String::with_capacity(tenant.len() + 1 + account.len());
        key.push_str(&tenant);
        key.push(':');
        key.push_str(account);
        state.cache.invalidate(&key, has_new_data);
    }
}

/// Applies other replicas' broadcasts to this replica's cache for as long as the state lives.
pub fn spawn_broadcast_listener(state: &Arc<State>) {
    let Some(mut rx) = state.store.subscribe() else {
        return;
    };
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        loop {
            let msg = match rx.recv().await {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed store broadcasts");
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some(state) = weak.upgrade() else { return };
            match msg {
                Broadcast::Invalidate {
                    account,
                    has_new_data,
                } => invalidate_local(&state, &account, has_new_data),
                Broadcast::JobStarted { tenant, account } => {
                    state.cache.job_started(&format!("{tenant}:{account}"));
                }
            }
        }
    });
}

/// Job status (spec §5): terminal jobs answered locally, others fetched and learned from.
pub async fn serve(
    state: &Arc<State>,
    tenant: &Tenant,
    account: &str,
    job_id: &str,
    path_and_query: &str,
    request_id: &HeaderValue,
) -> Result<(Response<Body>, CacheResult), ProxyError> {
    // Only the tenant (and account) that started a job may read it locally or update it.
    let mut ours = true;
    if let Some((owner, record)) = state.store.job(job_id).await? {
        ours = owner == tenant.id && record.account == account;
        if ours && record.status.is_terminal() {
            let mut resp = json_response(StatusCode::OK, job_envelope(&record));
            set_cache_status(resp.headers_mut(), CacheResult::Hit, None);
            return Ok((resp, CacheResult::Hit));
        }
    }
    let req = state
        .upstream
        .get(path_and_query, &tenant.key, request_id, false)?;
    let fetched = state
        .timed_fetch("job_status", req, state.config.upstream.timeout)
        .await?;
    if ours && fetched.status.is_success() {
        if let Some(update) = parse_job_status(&fetched.body) {
            apply(state, job_id, &update, None).await;
        }
    }
    let mut resp = fetched.to_response();
    set_cache_status(resp.headers_mut(), CacheResult::Miss, None);
    Ok((resp, CacheResult::Miss))
}

/// Mono's job-status envelope for a record.
pub fn job_envelope(record: &JobRecord) -> String {
    let (name, kind) = match record.kind {
        Kind::Balance => ("jobs.accounts.sync_balance", "balance"),
        Kind::Transactions => ("jobs.accounts.sync_statement", "statement"),
    };
    serde_json::json!({
        "status": "successful",
        "message": "Job execution completed",
        "timestamp": timestamp(),
        "data": {
            "id": record.job_id,
            "job_status": record.status.as_str(),
            "name": name,
            "account": record.account,
            "type": kind,
            "synced": record.status == JobStatus::Finished,
            "reauth_required": record.reauth_required,
        }
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_status_parses_in_any_case() {
        let u = parse_job_status(
            br#"{"status":"successful","data":{"id":"j","job_status":"FAILED","reauth_required":true}}"#,
        )
        .unwrap();
        assert_eq!(u.status, JobStatus::Failed);
        assert!(u.reauth_required);
        assert!(parse_job_status(b"not json").is_none());
    }
}
