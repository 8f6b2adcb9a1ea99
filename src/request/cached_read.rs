//! Cached read (spec §4): a fresh hit, or one collapsed upstream fetch, or stale on error; with
//! the request's own cache directives (RFC 9111 §5.2.1) and Mono's 429 cooldowns honoured.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::Response;

use crate::body::Body;
use crate::cache::{CachedBody, Freshness, Groups};
use crate::error::ProxyError;
use crate::headers::{bool_value, set_cache_status, CacheResult, X_HAS_NEW_DATA};
use crate::inflight::Filled;
use crate::request::context::AccountRead;
use crate::request::{cooldown, fill, limits};
use crate::state::State;
use crate::telemetry::SPANS;

/// Answers a cached read: hit → answer; miss → fill (collapsed); failure → stale if allowed.
pub async fn serve(
    state: &Arc<State>,
    read: &AccountRead,
) -> Result<(Response<Body>, CacheResult), ProxyError> {
    let directives = read.directives;
    if directives.no_store {
        let _permit = limits::upstream_permit(state, read.limiter.as_deref())?;
        return Box::pin(fill::bypass(state, read)).await;
    }
    let data = read.kind().is_some();
    let mut stale = None;
    let held = {
        let _phase = tracing::trace_span!(target: SPANS, "cache lookup").entered();
        state.cache.lookup(&read.account_key(), read.path_key())
    };
    if let Some(body) = held {
        // Read once: freshness, the request's max-age and the `Age` header all want it.
        let age = body.stored_at.elapsed();
        match state.cache.freshness_at(&body, age) {
            Freshness::Fresh(ttl) if directives.accepts(age.as_secs()) => {
                return Ok((
                    respond_aged(&body, CacheResult::Hit, Some(ttl), data, age),
                    CacheResult::Hit,
                ))
            }
            // Fresh, but the app asked for a newer answer: refetched below.
            Freshness::Fresh(_) => {}
            // Soft-purged: answered stale at once while one refresh replaces it.
            Freshness::Purged if !directives.no_cache && directives.max_age.is_none() => {
                revalidate(state, read);
                return Ok((
                    respond(&body, CacheResult::Stale, Some(0), data),
                    CacheResult::Stale,
                ));
            }
            Freshness::Purged => stale = Some((body, 0)),
            Freshness::Stale(past) => stale = Some((body, past)),
            Freshness::Expired => {}
        }
    }
    if directives.only_if_cached {
        return Err(ProxyError::NotCached);
    }
    // Boxed: the miss's future is large, and a hit should not carry (or move) it.
    Box::pin(miss(state, read, stale)).await
}

/// A miss, or a stored answer the request refused: one collapsed fill, with `stale` (the body
/// held and how far past its freshness) served if Mono cannot answer.
async fn miss(
    state: &Arc<State>,
    read: &AccountRead,
    stale: Option<(Arc<CachedBody>, i64)>,
) -> Result<(Response<Body>, CacheResult), ProxyError> {
    let directives = read.directives;
    let data = read.kind().is_some();
    // A miss that goes through the shared tier learns of a fleet cooldown from its lookup
    // (one round trip); any other asks Redis here.
    let refetch = directives.no_cache || directives.max_age.is_some();
    let via_lookup = state.config.load().cache.shared && !read.route.personal_data && !refetch;
    if let Some(left) = cooldown::held_back(
        state,
        &read.tenant.id,
        read.route.name,
        &read.account,
        !via_lookup,
    )
    .await
    {
        // Mono asked us to wait: what we hold, even stale, beats a 429.
        if let Some((body, past)) = stale {
            return Ok((
                respond(&body, CacheResult::Stale, Some(-past), data),
                CacheResult::Stale,
            ));
        }
        return Err(ProxyError::CoolingDown(left));
    }
    // The client's own concurrency limit: what we hold, even stale, beats a 429 here too.
    let permit = match limits::upstream_permit(state, read.limiter.as_deref()) {
        Ok(permit) => permit,
        Err(e) => {
            return match stale {
                Some((body, past)) => Ok((
                    respond(&body, CacheResult::Stale, Some(-past), data),
                    CacheResult::Stale,
                )),
                None => Err(e),
            }
        }
    };
    let (filled, led) = fill::collapsed(state, read, refetch, permit).await;
    let result = match (led, refetch) {
        (true, false) => CacheResult::Miss,
        (true, true) => CacheResult::Refetched,
        (false, _) => CacheResult::Collapsed,
    };
    match (filled, stale) {
        (Ok(Filled::Stored(body)), _) => {
            let ttl = body.ttl.as_secs() as i64;
            Ok((respond(&body, result, Some(ttl), data), result))
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
            Ok((respond(&body, result, Some(ttl), data), result))
        }
        (Ok(Filled::Uncacheable(f)), Some((body, past)))
            if f.status.is_server_error() || f.status == http::StatusCode::TOO_MANY_REQUESTS =>
        {
            Ok((
                respond(&body, CacheResult::Stale, Some(-past), data),
                CacheResult::Stale,
            ))
        }
        (Ok(Filled::Uncacheable(f)), _) => {
            let mut resp = f.to_response();
            set_cache_status(resp.headers_mut(), result, None);
            Ok((resp, result))
        }
        (Err(e), Some((body, past))) => {
            tracing::warn!(error = %e, account = %read.account, "upstream failed; serving stale");
            Ok((
                respond(&body, CacheResult::Stale, Some(-past), data),
                CacheResult::Stale,
            ))
        }
        (Err(e), None) => Err(e),
    }
}

/// Starts the one refresh of a soft-purged body, unless one is running, Mono asked us to wait,
/// or the client has no upstream permit left (the stale answer needs none). An answer with
/// nothing to store (other than a 5xx or 429) drops the purged body instead of serving it on.
fn revalidate(state: &Arc<State>, read: &AccountRead) {
    let (tenant, route) = (&read.tenant.id, read.route.name);
    if state.inflight.fills.is_running(&read.fill_key())
        || state
            .cooldowns
            .remaining(tenant, route, &read.account)
            .is_some()
    {
        return;
    }
    // Asked of the limiter itself: a client without a permit still gets its 200 STALE, which
    // is no refusal to count.
    let permit = match read
        .limiter
        .as_deref()
        .map(crate::limits::ClientLimiter::upstream_permit)
    {
        None => None,
        Some(Ok(permit)) => permit,
        Some(Err(_)) => return,
    };
    let (state, mut read) = (Arc::clone(state), read.clone());
    read.trace = read.trace.detached();
    tokio::spawn(async move {
        match fill::collapsed(&state, &read, false, permit).await.0 {
            // Mono answered, but with nothing to store (gone, not a 200, not storable): the
            // purged body is not served on. A 5xx or 429 keeps it, as stale-if-error does.
            Ok(Filled::Uncacheable(f))
                if !f.status.is_server_error()
                    && f.status != http::StatusCode::TOO_MANY_REQUESTS =>
            {
                let path = read.path_key();
                let keys = [read.account_key()];
                state.cache.purge(Groups::Keys(&keys), &|p| p == path, true);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, account = %read.account, "refresh after a purge failed; still serving stale");
            }
        }
    });
}

/// Builds the response for a cached body; `data` (balance and transactions) adds
/// `x-has-new-data`.
pub fn respond(
    body: &CachedBody,
    result: CacheResult,
    ttl: Option<i64>,
    data: bool,
) -> Response<Body> {
    respond_aged(body, result, ttl, data, body.stored_at.elapsed())
}

/// [`respond`] for a body whose age the caller has read.
fn respond_aged(
    body: &CachedBody,
    result: CacheResult,
    ttl: Option<i64>,
    data: bool,
    age: std::time::Duration,
) -> Response<Body> {
    let mut resp = Response::new(Body::full(body.body.clone()));
    // Sized for what is added here and by the service (x-request-id): no regrowth per hit.
    *resp.headers_mut() = http::HeaderMap::with_capacity(8);
    let h = resp.headers_mut();
    if let Some(ct) = body.content_type() {
        h.insert(header::CONTENT_TYPE, ct);
    }
    set_cache_status(h, result, ttl);
    if matches!(
        result,
        CacheResult::Hit | CacheResult::SharedHit | CacheResult::Stale
    ) {
        h.insert(header::AGE, HeaderValue::from(age.as_secs()));
    }
    if data {
        h.insert(X_HAS_NEW_DATA, bool_value(body.has_new_data));
    }
    resp
}
