//! What a sync changes, whoever reports it: job updates from webhooks, polls and job-status
//! reads; the invalidation a finished sync triggers; a new job's bookkeeping; and the same
//! events arriving from other replicas.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::broadcast;

use crate::headers::new_request_id;
use crate::request::context::{account_key, route_of, AccountRead};
use crate::request::fill;
use crate::route::Kind;
use crate::state::State;
use crate::store::{Broadcast, JobRecord, JobStatus, JobUpdate, RecordKey, StoreResult};
use crate::telemetry::Trace;

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
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
    })
}

/// Applies a job update from any source; a sync that just finished invalidates the account of
/// the record's tenant. `account` is used when the job is unknown to us but the source named
/// the account. With a `tenant` (a webhook from one app's Mono key) only that tenant's records
/// and caches are touched: another app's job is none of its business.
pub async fn apply(
    state: &Arc<State>,
    job_id: &str,
    update: &JobUpdate,
    account: Option<&str>,
    tenant: Option<&str>,
) {
    if let Some(scope) = tenant {
        match state.store.job(job_id).await {
            Ok(Some((owner, _))) if &*owner != scope => {
                tracing::warn!(job_id, "a webhook named another app's job; ignored");
                return;
            }
            _ => {}
        }
    }
    match state.store.update_job(job_id, update).await {
        Ok(Some(t)) => {
            if t.changed {
                tracing::info!(job_id, status = t.record.status.as_str(), account = %t.record.account, "job updated");
                if t.record.status == JobStatus::Finished {
                    let owner = Some(&*t.tenant);
                    invalidate(state, &t.record.account, update.has_new_data, owner).await;
                }
            }
        }
        Ok(None) => {
            if let (Some(account), JobStatus::Finished) = (account, update.status) {
                invalidate(state, account, update.has_new_data, tenant).await;
            }
        }
        Err(e) => {
            state.metrics.store_error("update_job");
            tracing::warn!(error = %e, job_id, "could not apply job update");
        }
    }
}

/// Older events name no job: apply to the account's processing jobs of `tenant` (every tenant
/// when `None`), and invalidate on success even when none was known.
pub async fn apply_to_account(
    state: &Arc<State>,
    account: &str,
    update: &JobUpdate,
    tenant: Option<&str>,
) -> StoreResult<()> {
    let tenants = scope(state, tenant);
    let mut invalidated = false;
    for owner in &tenants {
        for kind in [Kind::Balance, Kind::Transactions] {
            let key = RecordKey::new(owner, account, kind);
            if let Some(rec) = state.store.get(&key).await? {
                if rec.status == JobStatus::Processing {
                    apply(state, &rec.job_id, update, None, Some(owner)).await;
                    invalidated |= update.status == JobStatus::Finished;
                }
            }
        }
    }
    if update.status == JobStatus::Finished && !invalidated {
        invalidate(state, account, update.has_new_data, tenant).await;
    }
    Ok(())
}

/// The tenants a change applies to: one, or every tenant in force.
fn scope(state: &State, tenant: Option<&str>) -> Vec<Arc<str>> {
    match tenant {
        Some(t) => vec![t.into()],
        None => state.secrets.load().tenant_ids(),
    }
}

/// A sync finished: drop the account's cached bodies in the shared tier, here, and on every
/// replica, in that order.
pub async fn invalidate(
    state: &Arc<State>,
    account: &str,
    has_new_data: Option<bool>,
    tenant: Option<&str>,
) {
    let tenants = scope(state, tenant);
    // The shared tier goes first: a miss here or on any replica after its copy is dropped must
    // not find the pre-sync body in Redis and adopt it again.
    if state.config.load().cache.shared {
        state.store.shared_invalidate(&tenants, account).await;
    }
    invalidate_local(state, &tenants, account, has_new_data);
    let msg = Broadcast::Invalidate {
        account: account.to_string(),
        has_new_data,
        tenant: tenant.map(str::to_string),
    };
    if let Err(e) = state.store.publish(&msg).await {
        state.metrics.store_error("publish");
        tracing::warn!(error = %e, "could not broadcast invalidation");
    }
    let balance = state
        .routes
        .load()
        .by_name("balance")
        .filter(|r| r.cached())
        .cloned();
    let target = format!("/v2/accounts/{account}/balance").parse();
    if let (true, Some(route), Ok(target)) =
        (state.config.load().cache.refresh_ahead, balance, target)
    {
        let state = Arc::clone(state);
        let tenant = state.secrets.load().default.clone();
        let read = AccountRead::new(
            tenant,
            account.to_string(),
            route,
            "",
            target,
            new_request_id(),
        )
        .with_trace(Trace::root());
        tokio::spawn(async move {
            if let (Err(e), _) = fill::fill(&state, &read).await {
                tracing::debug!(error = %e, "refresh-ahead fetch failed");
            }
        });
    }
}

/// Drops an account's cached bodies for `tenants` in this replica, on the routes a sync
/// invalidates.
fn invalidate_local(
    state: &State,
    tenants: &[Arc<str>],
    account: &str,
    has_new_data: Option<bool>,
) {
    let routes = state.routes.load();
    let drops = |path_key: &str| routes.invalidates(route_of(path_key));
    for tenant in tenants {
        state
            .cache
            .invalidate(&account_key(tenant, account), has_new_data, &drops);
    }
}

/// A realtime call started a job: `x-has-new-data` resets for the account here and on every
/// replica, the call's 200 body is held, the record opens the window, and the poller follows
/// the job. The body is cached before the record is stored, so a caller that finds the record
/// finds the body too instead of fetching it again.
pub async fn job_started(
    state: &Arc<State>,
    read: &AccountRead,
    record: &JobRecord,
    body: Option<(Bytes, Option<HeaderValue>)>,
) -> StoreResult<()> {
    let akey = read.account_key();
    state.cache.job_started(&akey);
    if let Some((body, content_type)) = body.filter(|_| read.route.cached()) {
        // The caller checked the body is storable; a refusal here only means it is not cached.
        let how = read.route.storing(std::time::Duration::ZERO);
        if let Err(why) = state
            .cache
            .store(&akey, read.path_key(), body, content_type, how)
        {
            tracing::debug!(reason = why.label(), "realtime body not cached");
        }
    }
    let key = RecordKey::new(&read.tenant.id, &read.account, record.kind);
    state
        .store
        .put(&key, record, state.config.load().realtime.window)
        .await?;
    let msg = Broadcast::JobStarted {
        tenant: read.tenant.id.to_string(),
        account: read.account.clone(),
    };
    if let Err(e) = state.store.publish(&msg).await {
        tracing::warn!(error = %e, "could not broadcast job start");
    }
    state.polls.track(&read.tenant, record, &read.trace);
    Ok(())
}

/// Applies other replicas' broadcasts to this replica's cache for as long as the state lives.
pub async fn listen(weak: Weak<State>, mut rx: broadcast::Receiver<Broadcast>) {
    loop {
        let msg = match rx.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "missed store broadcasts");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(state) = weak.upgrade() else { return };
        match msg {
            Broadcast::Invalidate {
                account,
                has_new_data,
                tenant,
            } => {
                let tenants = scope(&state, tenant.as_deref());
                invalidate_local(&state, &tenants, &account, has_new_data);
            }
            Broadcast::JobStarted { tenant, account } => {
                state
                    .cache
                    .job_started(&account_key(&tenant.into(), &account));
            }
            Broadcast::Purge { scope, hard } => {
                let tenants = state.secrets.load().tenant_ids();
                let n = scope.apply_here(&state.cache, &state.purges, &tenants, hard);
                tracing::info!(
                    ?scope,
                    hard,
                    purged = n,
                    "purge from another replica applied"
                );
            }
            Broadcast::ForgetWindow { account } => {
                for tenant in state.secrets.load().tenant_ids() {
                    for kind in [Kind::Balance, Kind::Transactions] {
                        state
                            .store
                            .forget_local(&RecordKey::new(&tenant, &account, kind));
                    }
                }
            }
            Broadcast::Cooldown {
                tenant,
                route,
                account,
                until_ms,
            } => state.cooldowns.set(&tenant, &route, &account, until_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_status_envelope_parses_in_any_case() {
        let u = parse_job_status(
            br#"{"status":"successful","data":{"id":"j","job_status":"FAILED","reauth_required":true}}"#,
        )
        .unwrap();
        assert_eq!(u.status, JobStatus::Failed);
        assert!(u.reauth_required);
        assert!(parse_job_status(b"not json").is_none());
    }
}
