//! Realtime reads (spec §3): one Mono realtime call per account and endpoint per window.
//!
//! Inside the window the answer comes from the job record; concurrent calls share one detached
//! upstream call; a 429 is remembered; failures store nothing so the next call may try again.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::body::Body;
use crate::cache::{self, Freshness};
use crate::clock::now_ms;
use crate::error::ProxyError;
use crate::headers::{
    bool_value, header_bool, retry_after, CacheResult, X_HAS_NEW_DATA, X_JOB_ID, X_JOB_STATUS,
};
use crate::inflight::{Filled, RealtimeAnswer};
use crate::request::context::AccountRead;
use crate::request::{cached_read, fill, limits, sync};
use crate::route::is_valid_id;
use crate::singleflight::Outcome;
use crate::state::State;
use crate::store::{Claim, JobRecord, JobStatus, RecordKey};
use crate::telemetry::{self, SPANS};
use crate::upstream::Fetched;
use tracing::{Instrument, Span};

/// Realtime read: window → 429 memory → single flight → (claim → upstream | other replica).
pub async fn serve(
    state: &Arc<State>,
    read: &AccountRead,
) -> Result<(Response<Body>, CacheResult), ProxyError> {
    let key = realtime_key(read)?;
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
            return cached_read::serve(state, read).await;
        };
        let answer = from_record(state, read, &rec).await?;
        return Ok((
            answer.into_response(CacheResult::Collapsed),
            CacheResult::Collapsed,
        ));
    }

    // The leader bounds itself: a realtime call, or waiting on another replica and then one
    // plain fetch. Waiters allow for all of it so they hear the leader's own outcome.
    let upstream = &state.config.load().upstream;
    let timeout = upstream.realtime_timeout + upstream.timeout + Duration::from_secs(2);
    let mut retried = false;
    let (outcome, led) = loop {
        // The permit goes with the call if this caller leads it: held until Mono answers,
        // even if the caller hangs up.
        let permit = limits::upstream_permit(state, read.limiter.as_deref())?;
        let flight = key.flat();
        let leader_key = telemetry::exporting().then(|| flight.clone());
        let call = move || {
            let (state, read) = (Arc::clone(state), read.clone());
            // Detached from the caller's task: the span joins the caller's trace by hand.
            let span = tracing::trace_span!(target: SPANS, "realtime call");
            read.trace.adopt(&span);
            async move {
                let _permit = permit;
                let _led =
                    leader_key.and_then(|k| state.inflight.leaders.lead(k, &Span::current()));
                lead(&state, &read).await
            }
            .instrument(span)
        };
        let wait = tracing::trace_span!(target: SPANS, "single-flight wait", flight = "realtime", led = tracing::field::Empty);
        if Span::current().is_none() {
            read.trace.adopt(&wait);
        }
        let leader = state.inflight.leaders.leader(&flight);
        let (outcome, led) = state
            .inflight
            .realtime
            .lead_or_follow(&flight, timeout, call)
            .instrument(wait.clone())
            .await;
        wait.record("led", led);
        if let (false, Some(leader)) = (led, leader) {
            telemetry::link(&wait, leader);
        }
        // A flight led by another client that its own limit refused says nothing of this
        // caller's: it tries again, leading with its own limits.
        if let Outcome::Done(Err(ProxyError::Limited(d))) = &outcome {
            let own = read.limiter.as_ref().is_some_and(|l| l.client == d.client);
            if !led && !own && !retried {
                retried = true;
                continue;
            }
        }
        break (outcome, led);
    };
    let mut answer = match outcome {
        Outcome::Done(result) => result?,
        Outcome::LeaderLost => {
            return Err(ProxyError::Internal(
                "the realtime call was abandoned".into(),
            ))
        }
        Outcome::TimedOut => return Err(ProxyError::UpstreamTimeout(timeout.as_millis() as u64)),
    };
    if answer.status.is_success() && answer.path != read.path_key() {
        // Same job, another page: answer from the record the flight stored, with this
        // caller's own body (held, or one collapsed plain fetch).
        match state.store.get(&key).await? {
            Some(rec) => answer = from_record(state, read, &rec).await?,
            None => return cached_read::serve(state, read).await,
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

/// The record key of a realtime read; classification only makes realtime reads of routes that
/// have one.
fn realtime_key(read: &AccountRead) -> Result<RecordKey, ProxyError> {
    read.record_key().ok_or_else(|| {
        ProxyError::Internal("a realtime read of a route without balance or transactions".into())
    })
}

fn in_window(state: &State, record: &JobRecord) -> bool {
    let window = state.config.load().realtime.window.as_millis() as u64;
    now_ms().saturating_sub(record.started_at) < window
}

/// The flight leader: claim the window (shared store), then make the one realtime call.
async fn lead(state: &Arc<State>, read: &AccountRead) -> Result<RealtimeAnswer, ProxyError> {
    let key = realtime_key(read)?;
    // A flight that finished between this caller's record read and its join has stored its
    // record already (records are stored before a flight ends): answer from it rather than
    // calling Mono a second time inside the window.
    if let Some(rec) = state.store.get(&key).await?.filter(|r| in_window(state, r)) {
        return from_record(state, read, &rec).await;
    }
    let realtime_timeout = state.config.load().upstream.realtime_timeout;
    let lease = realtime_timeout + Duration::from_secs(5);
    // The one billable call, spent from the leader's client quota before the window is
    // claimed, so a client over its quota never holds the fleet's window; given back when
    // another replica's call or record answers instead.
    let spent = limits::spend(state, read.limiter.as_deref()).await?;
    let claim = match state
        .store
        .claim(&key, lease, realtime_timeout)
        .instrument(tracing::trace_span!(target: SPANS, "store claim"))
        .await
    {
        Ok(claim) => claim,
        Err(e) => {
            limits::refund(state, spent).await;
            return Err(e.into());
        }
    };
    match claim {
        Claim::Won => {}
        Claim::Windowed(rec) => {
            limits::refund(state, spent).await;
            return from_record(state, read, &rec).await;
        }
        Claim::Lost => {
            limits::refund(state, spent).await;
            return match state.store.wait_record(&key, realtime_timeout).await? {
                Some(rec) => from_record(state, read, &rec).await,
                None => Err(ProxyError::UpstreamTimeout(
                    realtime_timeout.as_millis() as u64
                )),
            };
        }
    }
    let result = forward(state, read).await;
    if !matches!(&result, Ok((_, true))) {
        if let Err(e) = state.store.release(&key).await {
            tracing::warn!(error = %e, "could not release realtime claim");
        }
    }
    result.map(|(answer, _)| answer)
}

/// Makes the realtime call; returns the answer and whether it started a job (stored a record).
async fn forward(
    state: &Arc<State>,
    read: &AccountRead,
) -> Result<(RealtimeAnswer, bool), ProxyError> {
    let started_at = now_ms();
    let req = state
        .upstream
        .get(read.target(), &read.tenant.key, &read.request_id, true)?;
    let fetched = state
        .upstream
        .fetch(
            "realtime",
            req,
            state.config.load().upstream.realtime_timeout,
            &read.trace,
        )
        .await?;
    if fetched.status == StatusCode::TOO_MANY_REQUESTS {
        hold_back(state, read, &fetched.headers).await?;
    }
    let record = started_job(state, &fetched, read, started_at);
    let body = crate::pagination::rewrite(fetched.body, &state.pagination.load());
    let mut answer = RealtimeAnswer {
        status: fetched.status,
        headers: fetched.headers,
        body,
        forwarded: true,
        path: read.path_key().to_string(),
    };
    let Some(record) = record else {
        return Ok((answer, false));
    };
    let held = (answer.status == StatusCode::OK).then(|| {
        let ct = answer.headers.get(header::CONTENT_TYPE).cloned();
        (answer.body.clone(), ct)
    });
    sync::job_started(state, read, &record, held).await?;
    // Mono's own headers pass through; normalise the status value's case for apps.
    answer.headers.insert(
        X_JOB_STATUS,
        HeaderValue::from_static(record.status.as_str()),
    );
    // Every balance and transactions answer says whether there is new data; a job that just
    // started has found none yet unless Mono says otherwise.
    if answer.status.is_success() && !answer.headers.contains_key(X_HAS_NEW_DATA) {
        answer.headers.insert(
            X_HAS_NEW_DATA,
            bool_value(record.has_new_data.unwrap_or(false)),
        );
    }
    Ok((answer, true))
}

/// A 429 from Mono: remember it for the key so calls hold back until `Retry-After` (an unusable
/// one means the window), never longer than `max_retry_after`.
async fn hold_back(
    state: &State,
    read: &AccountRead,
    headers: &HeaderMap,
) -> Result<(), ProxyError> {
    let realtime = &state.config.load().realtime;
    let now = UNIX_EPOCH + Duration::from_millis(now_ms());
    let wait = retry_after(headers, now)
        .unwrap_or(realtime.window)
        .min(realtime.max_retry_after);
    state
        .store
        .set_rate_limit(&realtime_key(read)?, now_ms() + wait.as_millis() as u64)
        .await?;
    tracing::warn!(account = %read.account, route = read.route.name, wait_s = wait.as_secs(), "mono answered 429; holding realtime calls back");
    Ok(())
}

/// The job a realtime answer started: a 2xx in Mono's JSON envelope carrying a valid `x-job-id`.
/// Anything else starts none: it is passed through once and the next call may try again.
fn started_job(
    state: &State,
    fetched: &Fetched,
    read: &AccountRead,
    started_at: u64,
) -> Option<JobRecord> {
    if !fetched.status.is_success() {
        return None;
    }
    let content_type = fetched.headers.get(header::CONTENT_TYPE);
    if let Err(why) = cache::storable(content_type, &fetched.body, read.route.enveloped) {
        state.metrics.not_stored("realtime", why.label());
        tracing::warn!(account = %read.account, reason = why.label(), "mono answered a realtime call with a body outside its JSON envelope; no job recorded");
        return None;
    }
    let job_id = fetched
        .headers
        .get(X_JOB_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())?;
    if !is_valid_id(job_id) {
        state.metrics.not_stored("realtime", "bad_job_id");
        tracing::warn!(account = %read.account, len = job_id.len(), "mono sent an x-job-id that is not a valid id; passed through, not tracked");
        return None;
    }
    let status = fetched
        .headers
        .get(X_JOB_STATUS)
        .and_then(|v| v.to_str().ok())
        .and_then(JobStatus::parse)
        .unwrap_or(JobStatus::Processing);
    Some(JobRecord {
        job_id: job_id.to_string(),
        account: read.account.clone(),
        kind: read.kind()?,
        status,
        started_at,
        updated_at: now_ms(),
        has_new_data: header_bool(&fetched.headers, &X_HAS_NEW_DATA).then_some(true),
        reauth_required: false,
    })
}

/// The answer inside the window: the record's current status and the freshest body held.
async fn from_record(
    state: &Arc<State>,
    read: &AccountRead,
    record: &JobRecord,
) -> Result<RealtimeAnswer, ProxyError> {
    let held = state
        .cache
        .lookup(&read.account_key(), read.path_key())
        .filter(|b| {
            // A soft-purged body is what the operator asked to replace: fetched again here.
            !matches!(
                state.cache.freshness(b),
                Freshness::Expired | Freshness::Purged
            )
        });
    let body = match held {
        Some(b) => b,
        None => match fill::fill(state, read).await.0? {
            Filled::Stored(b) | Filled::Shared(b) => b,
            Filled::Uncacheable(f) => {
                return Ok(RealtimeAnswer {
                    status: f.status,
                    headers: f.headers.clone(),
                    body: f.body.clone(),
                    forwarded: false,
                    path: read.path_key().to_string(),
                })
            }
        },
    };
    let mut headers = HeaderMap::new();
    if let Some(ct) = body.content_type() {
        headers.insert(header::CONTENT_TYPE, ct);
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
        path: read.path_key().to_string(),
    })
}
