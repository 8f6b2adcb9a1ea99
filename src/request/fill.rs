//! The fill behind a cache miss: one flight per key in this replica, then the shared tier (a
//! body another replica fetched, or a fleet-wide fill to wait for), else one upstream fetch whose
//! answer is stored here and handed to the tier; and the fetches that bypass storage.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use tokio::sync::OwnedSemaphorePermit;

use crate::body::Body;
use crate::error::ProxyError;
use crate::headers::{set_cache_status, CacheResult};
use crate::inflight::Filled;
use crate::request::context::AccountRead;
use crate::request::cooldown;
use crate::singleflight::Outcome;
use crate::state::State;
use crate::store::{BodyKey, SharedBody, SharedLookup};
use crate::telemetry::{self, SPANS};
use crate::upstream::Fetched;
use tracing::{Instrument, Span};

/// Lookups of the shared tier per fill at most (each but the last ended by a fill elsewhere
/// that stored nothing).
const SHARED_ROUNDS: usize = 3;

/// One upstream fetch per (tenant, account, path) however many callers miss at once.
/// Returns the fill's result and whether this caller led it.
pub async fn fill(state: &Arc<State>, read: &AccountRead) -> (Result<Filled, ProxyError>, bool) {
    collapsed(state, read, false, None).await
}

/// [`fill`], or with `refetch` a fetch that skips the shared tier (the app asked for a newer
/// answer than any stored): collapsed with concurrent refetches only, since a fill already
/// running may have started before the app asked. A client's upstream `permit` goes with the
/// fetch if this caller leads it, so it is held until Mono answers even if the caller hangs up.
pub async fn collapsed(
    state: &Arc<State>,
    read: &AccountRead,
    refetch: bool,
    permit: Option<OwnedSemaphorePermit>,
) -> (Result<Filled, ProxyError>, bool) {
    let timeout = state.config.load().upstream.timeout + Duration::from_secs(1);
    let mut key = read.fill_key();
    if refetch {
        key.push_str("#refetch");
    }
    let leader_key = telemetry::exporting().then(|| key.clone());
    let call = move || {
        let (state, read) = (Arc::clone(state), read.clone());
        // Detached from the caller's task: the span joins the caller's trace by hand.
        let span = tracing::trace_span!(target: SPANS, "cache fill");
        read.trace.adopt(&span);
        async move {
            let _permit = permit;
            let _led = leader_key.and_then(|k| state.inflight.leaders.lead(k, &Span::current()));
            fetch_and_store(&state, &read, refetch).await
        }
        .instrument(span)
    };
    let wait = tracing::trace_span!(target: SPANS, "single-flight wait", flight = "fill", led = tracing::field::Empty);
    if Span::current().is_none() {
        read.trace.adopt(&wait);
    }
    let leader = state.inflight.leaders.leader(&key);
    let (outcome, led) = state
        .inflight
        .fills
        .lead_or_follow(&key, timeout, call)
        .instrument(wait.clone())
        .await;
    wait.record("led", led);
    if let (false, Some(leader)) = (led, leader) {
        telemetry::link(&wait, leader);
    }
    let result = match outcome {
        Outcome::Done(r) => r,
        Outcome::LeaderLost => Err(ProxyError::Internal("the cache fill was abandoned".into())),
        Outcome::TimedOut => Err(ProxyError::UpstreamTimeout(timeout.as_millis() as u64)),
    };
    (result, led)
}

/// The fill itself. With the shared tier, Redis is asked first: a body another replica fetched
/// is taken as is; a fill already running elsewhere is waited for (bounded); otherwise this
/// replica fetches for the whole fleet and hands the body to the tier.
/// With `refetch` the shared tier is not read (the app wants a newer answer than any stored)
/// but the new answer is handed to it.
pub async fn fetch_and_store(
    state: &State,
    read: &AccountRead,
    refetch: bool,
) -> Result<Filled, ProxyError> {
    let key = BodyKey {
        tenant: &read.tenant.id,
        account: &read.account,
        path: read.path_key(),
        route: read.route.name,
    };
    // The fleet's lease lasts as long as one fetch may: past it, the waiters fetch themselves.
    let lease = state.config.load().upstream.timeout + Duration::from_secs(1);
    let deadline = tokio::time::Instant::now() + lease;
    let mut ticket = None;
    // A wait that ends without a body (that fill failed, or was not cacheable) looks again: the
    // lease is free, so one of the waiting replicas takes it instead of all fetching at once.
    // Personal data (identity, BVN) is never written to Redis, whatever the route's caching.
    let shared_tier = state.config.load().cache.shared && !read.route.personal_data;
    let rounds = if refetch || !shared_tier {
        0
    } else {
        SHARED_ROUNDS
    };
    if refetch && shared_tier {
        // A refetch takes no lease but must not store what a sync finishing meanwhile made
        // stale: it carries the generation it started under.
        ticket = state.store.shared_ticket(&key).await;
    }
    for _ in 0..rounds {
        match state.store.shared_lookup(&key, lease).await {
            SharedLookup::Hit(shared) => {
                if state
                    .purges
                    .covers(&read.account, read.route.name, shared.stored_at_ms)
                {
                    // Stored before an operator's purge: fetched again, and replaced for all
                    // unless a sync moved the account's generation meanwhile.
                    state.metrics.shared_cache("purged");
                    ticket = state.store.shared_ticket(&key).await;
                    break;
                }
                if let Some(filled) = adopt(state, read, shared) {
                    state.metrics.shared_cache("hit");
                    return Ok(filled);
                }
                break;
            }
            SharedLookup::Wait => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match state.store.shared_wait(&key, left).await {
                    Some(shared) => {
                        if let Some(filled) = adopt(state, read, shared) {
                            state.metrics.shared_cache("waited");
                            return Ok(filled);
                        }
                        break;
                    }
                    None if left.is_zero() || tokio::time::Instant::now() >= deadline => {
                        state.metrics.shared_cache("wait_timeout");
                        break;
                    }
                    None => {}
                }
            }
            SharedLookup::CoolingDown(until_ms) => {
                let (tenant, route) = (&read.tenant.id, read.route.name);
                state.cooldowns.set(tenant, route, &read.account, until_ms);
                if let Some(left) = state.cooldowns.remaining(tenant, route, &read.account) {
                    return Err(ProxyError::CoolingDown(left));
                }
                break;
            }
            SharedLookup::Fill(t) => {
                state.metrics.shared_cache("fill");
                ticket = Some(t);
                break;
            }
            SharedLookup::Off => {
                if state.config.load().cache.shared {
                    state.metrics.shared_cache("skipped");
                }
                break;
            }
        }
    }
    let (filled, shared) = fetch(state, read).await;
    if shared
        .as_ref()
        .is_some_and(|b| b.body.len() as u64 > state.config.load().cache.shared_max_entry)
    {
        state.metrics.shared_cache("too_large");
    }
    let ttl = read.route.ttl;
    let indexed = read.route.invalidate_on_sync;
    if let Some(ticket) = ticket {
        // Also when nothing was stored: the lease goes back and the waiters wake.
        state
            .store
            .shared_fill(&key, ticket, shared.as_ref(), ttl, indexed)
            .await;
    }
    filled
}

/// A plain GET: a 200 is stored (and returned as Mono sent it, for the shared tier), anything
/// else passed on.
async fn fetch(
    state: &State,
    read: &AccountRead,
) -> (Result<Filled, ProxyError>, Option<SharedBody>) {
    let req = match state
        .upstream
        .get(read.target(), &read.tenant.key, &read.request_id, false)
    {
        Ok(req) => req,
        Err(e) => return (Err(e), None),
    };
    let fetched = match state
        .upstream
        .fetch(
            "cached",
            req,
            state.config.load().upstream.timeout,
            &read.trace,
        )
        .await
    {
        Ok(f) => f,
        Err(e) => return (Err(e), None),
    };
    cool_down_on_429(state, read, &fetched).await;
    if fetched.status != StatusCode::OK {
        return (Ok(Filled::Uncacheable(Arc::new(fetched))), None);
    }
    let body = crate::pagination::rewrite(fetched.body.clone(), &state.pagination.load());
    if let Some(why) = forbids_storing(&fetched.headers) {
        state.metrics.not_stored("cached", why);
        let passed = Fetched { body, ..fetched };
        return (Ok(Filled::Uncacheable(Arc::new(passed))), None);
    }
    let raw = fetched.body.clone();
    let ct = fetched.headers.get(header::CONTENT_TYPE).cloned();
    let stored = state.cache.store(
        &read.account_key(),
        read.path_key(),
        body.clone(),
        ct.clone(),
        read.route.storing(Duration::ZERO),
    );
    match stored {
        Ok(stored) => {
            let shared = SharedBody {
                body: raw,
                content_type: ct.and_then(|v| v.to_str().ok().map(str::to_string)),
                stored_at_ms: crate::clock::now_ms(),
            };
            (Ok(Filled::Stored(stored)), Some(shared))
        }
        Err(why) => {
            state.metrics.not_stored("cached", why.label());
            tracing::warn!(account = %read.account, reason = why.label(), "mono answered 200 with a body outside its JSON envelope; passed through, not cached");
            (
                Ok(Filled::Uncacheable(Arc::new(Fetched { body, ..fetched }))),
                None,
            )
        }
    }
}

/// Takes a body from the shared tier into this replica's cache, with the age it has.
fn adopt(state: &State, read: &AccountRead, shared: SharedBody) -> Option<Filled> {
    let age = Duration::from_millis(crate::clock::now_ms().saturating_sub(shared.stored_at_ms));
    let body = crate::pagination::rewrite(shared.body, &state.pagination.load());
    let ct = shared
        .content_type
        .and_then(|v| HeaderValue::from_str(&v).ok());
    match state.cache.store(
        &read.account_key(),
        read.path_key(),
        body,
        ct,
        read.route.storing(age),
    ) {
        Ok(stored) => Some(Filled::Shared(stored)),
        Err(why) => {
            tracing::debug!(
                reason = why.label(),
                "ignoring an unusable shared cache entry"
            );
            None
        }
    }
}

/// A Mono 429 starts the cooldown of the read's tenant, route and account.
async fn cool_down_on_429(state: &State, read: &AccountRead, fetched: &Fetched) {
    if fetched.status == StatusCode::TOO_MANY_REQUESTS {
        let (tenant, route) = (&read.tenant.id, read.route.name);
        cooldown::cool_down(state, tenant, route, &read.account, &fetched.headers).await;
    }
}

/// Mono's `Cache-Control: no-store` or `private` on an answer: it is passed on, never stored
/// (here or in the shared tier). The reason, for the metric.
fn forbids_storing(headers: &HeaderMap) -> Option<&'static str> {
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for part in text.split(',') {
            let name = part.split('=').next().unwrap_or_default().trim();
            if name.eq_ignore_ascii_case("no-store") {
                return Some("no_store");
            }
            if name.eq_ignore_ascii_case("private") {
                return Some("private");
            }
        }
    }
    None
}

/// `Cache-Control: no-store` from the app: one plain fetch, nothing stored or read from the
/// cache, Mono's answer passed on.
pub async fn bypass(
    state: &State,
    read: &AccountRead,
) -> Result<(Response<Body>, CacheResult), ProxyError> {
    if let Some(left) =
        cooldown::held_back(state, &read.tenant.id, read.route.name, &read.account, true).await
    {
        return Err(ProxyError::CoolingDown(left));
    }
    let req = state
        .upstream
        .get(read.target(), &read.tenant.key, &read.request_id, false)?;
    let fetched = state
        .upstream
        .fetch(
            "cached",
            req,
            state.config.load().upstream.timeout,
            &read.trace,
        )
        .await?;
    cool_down_on_429(state, read, &fetched).await;
    let body = crate::pagination::rewrite(fetched.body.clone(), &state.pagination.load());
    let mut resp = Fetched { body, ..fetched }.to_response();
    set_cache_status(resp.headers_mut(), CacheResult::Bypassed, None);
    Ok((resp, CacheResult::Bypassed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_store_and_private_answers_are_not_stored() {
        let mut h = HeaderMap::new();
        assert_eq!(forbids_storing(&h), None);
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        assert_eq!(forbids_storing(&h), None);
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("Private, max-age=60"),
        );
        assert_eq!(forbids_storing(&h), Some("private"));
        h.append(header::CACHE_CONTROL, HeaderValue::from_static("NO-STORE"));
        assert_eq!(forbids_storing(&h), Some("private"));
        h.remove(header::CACHE_CONTROL);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        assert_eq!(forbids_storing(&h), Some("no_store"));
    }
}
