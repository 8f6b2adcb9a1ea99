//! Cached read (spec §4): a fresh hit, or one collapsed upstream fetch, or stale on error.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::Body;
use crate::cache::{CachedBody, Freshness};
use crate::error::ProxyError;
use crate::headers::{bool_value, set_cache_status, CacheResult, X_HAS_NEW_DATA};
use crate::inflight::Filled;
use crate::request::context::AccountRead;
use crate::singleflight::Outcome;
use crate::state::State;
use crate::store::{BodyKey, SharedBody, SharedLookup};
use crate::upstream::Fetched;

/// Lookups of the shared tier per fill at most (each but the last ended by a fill elsewhere
/// that stored nothing).
const SHARED_ROUNDS: usize = 3;

/// Answers a cached read: hit → answer; miss → fill (collapsed); failure → stale if allowed.
pub async fn serve(
    state: &Arc<State>,
    read: &AccountRead,
) -> Result<(Response<Body>, CacheResult), ProxyError> {
    let mut stale = None;
    if let Some(body) = state.cache.lookup(&read.account_key(), read.path_key()) {
        match state.cache.freshness(&body) {
            Freshness::Fresh(ttl) => {
                return Ok((
                    respond(&body, CacheResult::Hit, Some(ttl)),
                    CacheResult::Hit,
                ))
            }
            Freshness::Stale(past) => stale = Some((body, past)),
            Freshness::Expired => {}
        }
    }
    let (filled, led) = fill(state, read).await;
    let result = if led {
        CacheResult::Miss
    } else {
        CacheResult::Collapsed
    };
    match (filled, stale) {
        (Ok(Filled::Stored(body)), _) => {
            let ttl = state.cache.ttl().as_secs() as i64;
            Ok((respond(&body, result, Some(ttl)), result))
        }
        (Ok(Filled::Shared(body)), _) => {
            let result = if led {
                CacheResult::SharedHit
            } else {
                CacheResult::Collapsed
            };
            let ttl = match state.cache.freshness(&body) {
                Freshness::Fresh(ttl) => ttl,
                _ => 0,
            };
            Ok((respond(&body, result, Some(ttl)), result))
        }
        (Ok(Filled::Uncacheable(f)), Some((body, past))) if f.status.is_server_error() => Ok((
            respond(&body, CacheResult::Stale, Some(-past)),
            CacheResult::Stale,
        )),
        (Ok(Filled::Uncacheable(f)), _) => {
            let mut resp = f.to_response();
            set_cache_status(resp.headers_mut(), result, None);
            Ok((resp, result))
        }
        (Err(e), Some((body, past))) => {
            tracing::warn!(error = %e, account = %read.account, "upstream failed; serving stale");
            Ok((
                respond(&body, CacheResult::Stale, Some(-past)),
                CacheResult::Stale,
            ))
        }
        (Err(e), None) => Err(e),
    }
}

/// One upstream fetch per (tenant, account, path) however many callers miss at once.
/// Returns the fill's result and whether this caller led it.
pub async fn fill(state: &Arc<State>, read: &AccountRead) -> (Result<Filled, ProxyError>, bool) {
    let timeout = state.config.upstream.timeout + Duration::from_secs(1);
    let fill = || {
        let (state, read) = (Arc::clone(state), read.clone());
        async move { fetch_and_store(&state, &read).await }
    };
    let (outcome, led) = state
        .inflight
        .fills
        .lead_or_follow(&read.fill_key(), timeout, fill)
        .await;
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
async fn fetch_and_store(state: &State, read: &AccountRead) -> Result<Filled, ProxyError> {
    let key = BodyKey {
        tenant: &read.tenant.id,
        account: &read.account,
        path: read.path_key(),
    };
    // The fleet's lease lasts as long as one fetch may: past it, the waiters fetch themselves.
    let lease = state.config.upstream.timeout + Duration::from_secs(1);
    let deadline = tokio::time::Instant::now() + lease;
    let mut ticket = None;
    // A wait that ends without a body (that fill failed, or was not cacheable) looks again: the
    // lease is free, so one of the waiting replicas takes it instead of all fetching at once.
    for _ in 0..SHARED_ROUNDS {
        match state.store.shared_lookup(&key, lease).await {
            SharedLookup::Hit(shared) => {
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
            SharedLookup::Fill(t) => {
                state.metrics.shared_cache("fill");
                ticket = Some(t);
                break;
            }
            SharedLookup::Off => {
                if state.config.cache.shared {
                    state.metrics.shared_cache("skipped");
                }
                break;
            }
        }
    }
    let (filled, shared) = fetch(state, read).await;
    if let Some(ticket) = ticket {
        // Also when nothing was stored: the lease goes back and the waiters wake.
        if shared
            .as_ref()
            .is_some_and(|b| b.body.len() as u64 > state.config.cache.shared_max_entry)
        {
            state.metrics.shared_cache("too_large");
        }
        state.store.shared_fill(&key, ticket, shared.as_ref()).await;
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
        .get(&read.target(), &read.tenant.key, &read.request_id, false)
    {
        Ok(req) => req,
        Err(e) => return (Err(e), None),
    };
    let fetched = match state
        .upstream
        .fetch("cached", req, state.config.upstream.timeout)
        .await
    {
        Ok(f) => f,
        Err(e) => return (Err(e), None),
    };
    if fetched.status != StatusCode::OK {
        return (Ok(Filled::Uncacheable(Arc::new(fetched))), None);
    }
    let raw = fetched.body.clone();
    let body = crate::pagination::rewrite(fetched.body, &state.pagination);
    let ct = fetched.headers.get(header::CONTENT_TYPE).cloned();
    let stored = state.cache.store(
        &read.account_key(),
        read.path_key(),
        body.clone(),
        ct.clone(),
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
    let body = crate::pagination::rewrite(shared.body, &state.pagination);
    let ct = shared
        .content_type
        .and_then(|v| HeaderValue::from_str(&v).ok());
    match state
        .cache
        .store_aged(&read.account_key(), read.path_key(), body, ct, age)
    {
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

/// Builds the response for a cached body.
pub fn respond(body: &CachedBody, result: CacheResult, ttl: Option<i64>) -> Response<Body> {
    let mut resp = Response::new(Body::full(body.body.clone()));
    // Sized for what is added here and by the service (x-request-id): no regrowth per hit.
    *resp.headers_mut() = http::HeaderMap::with_capacity(8);
    let h = resp.headers_mut();
    if let Some(ct) = &body.content_type {
        h.insert(header::CONTENT_TYPE, ct.clone());
    }
    set_cache_status(h, result, ttl);
    if matches!(result, CacheResult::Hit | CacheResult::Stale) {
        h.insert(
            header::AGE,
            HeaderValue::from(body.stored_at.elapsed().as_secs()),
        );
    }
    h.insert(X_HAS_NEW_DATA, bool_value(body.has_new_data));
    resp
}
