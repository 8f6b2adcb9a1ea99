//! Passthrough: forwarded as-is with the key injected, streamed both ways, never cached.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::ProxyError;
use crate::headers::X_PROXY_TOKEN;
use crate::state::State;
use crate::tenant::Tenant;

/// Forwards a request the proxy does not cache, within the request-body limit.
pub async fn serve(
    state: &Arc<State>,
    tenant: &Tenant,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let limit = state.config.server.max_request_body;
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
    let body = if hyper::body::Body::is_end_stream(&body) {
        Body::empty()
    } else {
        Body::limited(body, limit)
    };
    let resp = state
        .upstream
        .send(
            "passthrough",
            Request::from_parts(parts, body),
            state.config.upstream.timeout,
        )
        .await?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::Stream(body)))
}
