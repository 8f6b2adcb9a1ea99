//! Realtime reads (spec §3): one Mono realtime call per account and endpoint per window.
//!
//! Inside the window the answer comes from the job record; concurrent calls share one detached
//! upstream call; a 429 is remembered; failures store nothing so the next call may try again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::body::Body;
use crate::cache::{self, account_key, Filled, Freshness};
use crate::error::ProxyError;
use crate::headers::{
    bool_value, header_bool, set_cache_status, CacheResult, X_HAS_NEW_DATA, X_JOB_ID, X_JOB_STATUS,
};
use crate::route::{account_target, path_key, Kind};
use crate::singleflight::{Join, Outcome};
use crate::state::{State, Tenant};
use crate::store::{now_ms, Broadcast, Claim, JobRecord, JobStatus, RecordKey};

/// A realtime answer, buffered so every waiter of a flight gets the same bytes.
#[derive(Debug, Clone)]
pub struct RealtimeAnswer {
    /// Status to answer with.
    pub status: StatusCode,
    /// Headers to answer with (Mono's, or synthesized from the record).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Whether this answer came from a realtime call to Mono.
    pub forwarded: bool,
    /// The normalised path and query it answers (`transactions?limit=2&page=2`): a flight is
    /// per endpoint, so a waiter that asked for another page must not take this body.
    pub path: String,
}

impl RealtimeAnswer {
    fn into_response(self, result: CacheResult) -> Response<Body> {
        let mut resp = Response::new(Body::full(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        set_cache_status(resp.headers_mut(), result, None);
        resp
    }
}

/// Realtime read: window → 429 memory → single flight → (claim → upstream | other replica).
pub async fn serve(
    state: &Arc<State>,
    tenant: &Tenant,
    account: &str,
    kind: Kind,
    query: Option<&str>,
    request_id: &HeaderValue,
) -> Result<(Response<Body>, CacheResult), ProxyError> {
    let key = RecordKey {
        tenant: tenant.id.clone(),
        account: account.to_string(),
        kind,
    };
    // Inside the window, or held back after a 429: answer from the record, never from Mono.
    let record = state.store.get(&key).await?;
    let windowed = record.as_ref().is_some_and(|r| in_window(state, r));
    if windowed || state.store.rate_limit(&key).await?.is_some() {
        state.metrics.realtime(if windowed {
            "collapsed"
        } else {
            "rate_limited"
        });
        let Some(rec) = record else {
            return cache::serve(state, tenant, account, kind, query, request_id).await;
        };
        let answer = from_record(state, tenant, &rec, kind, query, request_id).await?;
        return Ok((
            answer.into_response(CacheResult::Collapsed),
            CacheResult::Collapsed,
        ));
    }

    let (waiter, led) = match state.realtime.join(&key.flat()) {
        Join::Leader(leader, waiter) => {
            let state = Arc::clone(state);
            let tenant = tenant.clone();
            let key = key.clone();
            let query = query.map(str::to_string);
            let request_id = request_id.clone();
            // Detached: the client that started the call may hang up; its waiters may not.
            tokio::spawn(async move {
                let result = lead(&state, &tenant, &key, query.as_deref(), &request_id).await;
                leader.finish(result);
            });
            (waiter, true)
        }
        Join::Follower(waiter) => (waiter, false),
    };
    // The leader bounds itself: a realtime call, or waiting on another replica and then one
    // plain fetch. Waiters allow for all of it so they hear the leader's own outcome.
    let upstream = &state.config.upstream;
    let timeout = upstream.realtime_timeout + upstream.timeout + Duration::from_secs(2);
    let mut answer = match waiter.wait(timeout).await {
        Outcome::Done(result) => result?,
        Outcome::LeaderLost => {
            return Err(ProxyError::Internal(
                "the realtime call was abandoned".into(),
            ))
        }
        Outcome::TimedOut => return Err(ProxyError::UpstreamTimeout(timeout.as_millis() as u64)),
    };
    if answer.status.is_success() && answer.path != path_key(kind, query) {
        // Same job, another page: answer from the record the flight stored, with this
        // caller's own body (held, or one collapsed plain fetch).
        match state.store.get(&key).await? {
            Some(rec) => answer = from_record(state, tenant, &rec, kind, query, request_id).await?,
            None => return cache::serve(state, tenant, account, kind, query, request_id).await,
        }
    }
    let result = if led && answer.forwarded {
        state.metrics.realtime("forwarded");
        CacheResult::Miss
    } else {
        state.metrics.realtime("collapsed");
        CacheResult::Collapsed
    };
    Ok((answer.into_response(result), result))
}

fn in_window(state: &State, record: &JobRecord) -> bool {
    let window = state.config.realtime.window.as_millis() as u64;
    now_ms().saturating_sub(record.started_at) < window
}

/// The flight leader: claim the window (shared store), then make the one realtime call.
async fn lead(
    state: &Arc<State>,
    tenant: &Tenant,
    key: &RecordKey,
    query: Option<&str>,
    request_id: &HeaderValue,
) -> Result<RealtimeAnswer, ProxyError> {
    // A flight that finished between this caller's record read and its join has stored its
    // record already (records are stored before a flight ends): answer from it rather than
    // calling Mono a second time inside the window.
    if let Some(rec) = state.store.get(key).await?.filter(|r| in_window(state, r)) {
        return from_record(state, tenant, &rec, key.kind, query, request_id).await;
    }
    let lease = state.config.upstream.realtime_timeout + Duration::from_secs(5);
    if state.store.claim(key, lease).await? == Claim::Lost {
        let wait = state.config.upstream.realtime_timeout;
        return match state.store.wait_record(key, wait).await? {
            Some(rec) => from_record(state, tenant, &rec, key.kind, query, request_id).await,
            None => Err(ProxyError::UpstreamTimeout(wait.as_millis() as u64)),
        };
    }
    let result = forward(state, tenant, key, query, request_id).await;
    if !matches!(&result, Ok((_, true))) {
        if let Err(e) = state.store.release(key).await {
            tracing::warn!(error = %e, "could not release realtime claim");
        }
    }
    result.map(|(answer, _)| answer)
}

/// Makes the realtime call; returns the answer and whether a record was stored.
async fn forward(
    state: &Arc<State>,
    tenant: &Tenant,
    key: &RecordKey,
    query: Option<&str>,
    request_id: &HeaderValue,
) -> Result<(RealtimeAnswer, bool), ProxyError> {
    let target = account_target(&key.account, key.kind, query);
    let started_at = now_ms();
    let req = state.upstream.get(&target, &tenant.key, request_id, true)?;
    let timeout = state.config.upstream.realtime_timeout;
    let fetched = state.timed_fetch("realtime", req, timeout).await?;

    if fetched.status == StatusCode::TOO_MANY_REQUESTS {
        let wait = retry_after(&fetched.headers).unwrap_or(state.config.realtime.window);
        state
            .store
            .set_rate_limit(key, now_ms() + wait.as_millis() as u64)
            .await?;
        tracing::warn!(account = %key.account, kind = key.kind.as_str(), wait_s = wait.as_secs(), "mono answered 429; holding realtime calls back");
    }
    let job_id = fetched
        .headers
        .get(X_JOB_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let body = crate::pagination::rewrite(fetched.body, &state.pagination);
    let mut answer = RealtimeAnswer {
        status: fetched.status,
        headers: fetched.headers,
        body,
        forwarded: true,
        path: path_key(key.kind, query).into_owned(),
    };
    let Some(job_id) = job_id.filter(|_| answer.status.is_success()) else {
        return Ok((answer, false));
    };
    let status = answer
        .headers
        .get(X_JOB_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(JobStatus::parse)
        .unwrap_or(JobStatus::Processing);
    let record = JobRecord {
        job_id,
        account: key.account.clone(),
        kind: key.kind,
        status,
        started_at,
        updated_at: now_ms(),
        has_new_data: header_bool(&answer.headers, &X_HAS_NEW_DATA).then_some(true),
        reauth_required: false,
    };
    let akey = account_key(tenant, &key.account);
    // A new job starts: x-has-new-data resets for the account here and on every replica.
    state.cache.job_started(&akey);
    if answer.status == StatusCode::OK {
        let ct = answer.headers.get(header::CONTENT_TYPE).cloned();
        let pkey = path_key(key.kind, query);
        state.cache.store(&akey, &pkey, answer.body.clone(), ct);
    }
    state
        .store
        .put(key, &record, state.config.realtime.window)
        .await?;
    let msg = Broadcast::JobStarted {
        tenant: tenant.id.to_string(),
        account: key.account.clone(),
    };
    if let Err(e) = state.store.publish(&msg).await {
        tracing::warn!(error = %e, "could not broadcast job start");
    }
    state.poller.track(state, tenant, &record);
    // Mono's own headers pass through; normalise the status value's case for apps.
    answer.headers.insert(
        X_JOB_STATUS,
        HeaderValue::from_static(record.status.as_str()),
    );
    Ok((answer, true))
}

/// The answer inside the window: the record's current status and the freshest body held.
async fn from_record(
    state: &Arc<State>,
    tenant: &Tenant,
    record: &JobRecord,
    kind: Kind,
    query: Option<&str>,
    request_id: &HeaderValue,
) -> Result<RealtimeAnswer, ProxyError> {
    let akey = account_key(tenant, &record.account);
    let pkey = path_key(kind, query);
    let held = state
        .cache
        .lookup(&akey, &pkey)
        .filter(|b| state.cache.freshness(b) != Freshness::Expired);
    let body = match held {
        Some(b) => b,
        None => {
            let (filled, _) = cache::fill(
                state,
                tenant,
                &akey,
                &pkey,
                &record.account,
                kind,
                query,
                request_id,
            )
            .await;
            match filled? {
                Filled::Stored(b) => b,
                Filled::Uncacheable(f) => {
                    return Ok(RealtimeAnswer {
                        status: f.status,
                        headers: f.headers.clone(),
                        body: f.body.clone(),
                        forwarded: false,
                        path: pkey.into_owned(),
                    })
                }
            }
        }
    };
    let mut headers = HeaderMap::new();
    if let Some(ct) = &body.content_type {
        headers.insert(header::CONTENT_TYPE, ct.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&record.job_id) {
        headers.insert(X_JOB_ID, v);
    }
    headers.insert(
        X_JOB_STATUS,
        HeaderValue::from_static(record.status.as_str()),
    );
    let has_new = record.has_new_data.unwrap_or(body.has_new_data);
    headers.insert(X_HAS_NEW_DATA, bool_value(has_new));
    Ok(RealtimeAnswer {
        status: StatusCode::OK,
        headers,
        body: body.body.clone(),
        forwarded: false,
        path: pkey.into_owned(),
    })
}

/// `Retry-After` in seconds (the HTTP-date form falls back to the window).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(120)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
