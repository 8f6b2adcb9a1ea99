//! Passthrough: forwarded as-is with the key injected, streamed both ways, never cached;
//! Mono's 429 cooldowns honoured on named routes, and billable lookups checked first.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{collect_limited, Body, BrokenBody, CollectError};
use crate::error::ProxyError;
use crate::headers::{header_bool, X_PROXY_TOKEN, X_REALTIME};
use crate::limits::ClientLimiter;
use crate::request::{cooldown, guards, limits};
use crate::state::State;
use crate::telemetry::Trace;
use crate::tenant::Tenant;

/// The route and account a forwarded request names, for its 429 cooldown.
#[derive(Debug, Clone, Copy)]
pub struct Named<'a> {
    /// Route name.
    pub route: &'static str,
    /// Account id (empty when the route has none).
    pub account: &'a str,
}

/// Whose call a passthrough is, and what it names.
#[derive(Clone, Copy)]
pub struct To<'a> {
    /// Whose key it uses.
    pub tenant: &'a Tenant,
    /// The client's limits, when it has any.
    pub limiter: Option<&'a ClientLimiter>,
    /// The route and account, for Mono's 429 cooldowns.
    pub named: Option<Named<'a>>,
    /// The request's trace.
    pub trace: &'a Trace,
}

/// Forwards a request the proxy does not cache, within the request-body limit.
pub async fn serve(
    state: &Arc<State>,
    to: To<'_>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let To {
        tenant,
        limiter,
        named,
        trace,
    } = to;
    if let Some(n) = named {
        if let Some(left) = cooldown::held_back(state, &tenant.id, n.route, n.account, true).await {
            return Err(ProxyError::CoolingDown(left));
        }
    }
    let limit = state.config.load().server.max_request_body;
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::PayloadTooLarge(limit));
    }
    parts.headers.remove(X_PROXY_TOKEN);
    if !state.secrets.load().clients.is_empty() {
        // The client token may travel as a bearer token; it is ours, not Mono's.
        parts.headers.remove(header::AUTHORIZATION);
    }
    state
        .upstream
        .prepare(&mut parts, &tenant.key, request_id)?;
    let body = if guards::guarded(&parts.method, parts.uri.path()) {
        let bytes = collect_limited(body, limit).await.map_err(|e| match e {
            CollectError::TooLarge => ProxyError::PayloadTooLarge(limit),
            CollectError::Read(_) => ProxyError::BadRequest(BrokenBody.to_string()),
        })?;
        guards::check(parts.uri.path(), &bytes)?;
        Body::full(bytes)
    } else if hyper::body::Body::is_end_stream(&body) {
        Body::empty()
    } else {
        Body::limited(body, limit)
    };
    // Held until Mono's answer head is in; spent only once the request is sure to be sent.
    let _permit = limits::upstream_permit(state, limiter)?;
    // A realtime read forwarded as sent (a route not marked realtime) is billed like one.
    let realtime = parts.method == Method::GET && header_bool(&parts.headers, &X_REALTIME);
    if realtime || guards::billable_lookup(&parts.method, parts.uri.path()) {
        limits::spend(state, limiter).await?;
    }
    let resp = state
        .upstream
        .send(
            "passthrough",
            Request::from_parts(parts, body),
            state.config.load().upstream.timeout,
            trace,
        )
        .await?;
    if let (Some(n), StatusCode::TOO_MANY_REQUESTS) = (named, resp.status()) {
        cooldown::cool_down(state, &tenant.id, n.route, n.account, resp.headers()).await;
    }
    Ok(resp)
}
