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
use crate::upstream::Fetched;

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

/// The fill itself: a plain GET; a 200 is stored, anything else passed on.
async fn fetch_and_store(state: &State, read: &AccountRead) -> Result<Filled, ProxyError> {
    let req = state
        .upstream
        .get(&read.target(), &read.tenant.key, &read.request_id, false)?;
    let fetched = state
        .upstream
        .fetch("cached", req, state.config.upstream.timeout)
        .await?;
    if fetched.status != StatusCode::OK {
        return Ok(Filled::Uncacheable(Arc::new(fetched)));
    }
    let body = crate::pagination::rewrite(fetched.body, &state.pagination);
    let ct = fetched.headers.get(header::CONTENT_TYPE).cloned();
    let stored = state
        .cache
        .store(&read.account_key(), read.path_key(), body.clone(), ct);
    match stored {
        Ok(stored) => Ok(Filled::Stored(stored)),
        Err(why) => {
            state.metrics.not_stored("cached", why.label());
            tracing::warn!(account = %read.account, reason = why.label(), "mono answered 200 with a body outside its JSON envelope; passed through, not cached");
            Ok(Filled::Uncacheable(Arc::new(Fetched { body, ..fetched })))
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
