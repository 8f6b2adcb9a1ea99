//! Typed proxy errors and their one mapping to Mono's error envelope and status.

use std::time::SystemTime;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::Body;
use crate::limits::Policy;

/// Everything that can go wrong while answering a request, labelled by who failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The client sent something we refuse to forward.
    #[error("{0}")]
    BadRequest(String),
    /// A missing or wrong client token or webhook secret.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A target the proxy will not serve (foreign authority: not an open proxy).
    #[error("{0}")]
    Forbidden(String),
    /// A method the proxy will not forward (CONNECT, TRACE, anything Mono's API does not use).
    #[error("{message}")]
    MethodNotAllowed {
        /// What to do instead.
        message: &'static str,
        /// The `Allow` header: the methods that are served on this target.
        allow: &'static str,
    },
    /// A request body over the configured limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// The upstream could not be reached or broke the connection.
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out after {0} ms")]
    UpstreamTimeout(u64),
    /// The upstream answered something unusable.
    #[error("bad upstream response: {0}")]
    BadUpstream(String),
    /// The proxy is shutting down, overloaded or its shared store is down in fail-closed mode.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A bug or an invariant broken inside the proxy.
    #[error("internal error: {0}")]
    Internal(String),
    /// `Cache-Control: only-if-cached` and nothing usable is stored.
    #[error("only-if-cached: no stored response for this request")]
    NotCached,
    /// Mono answered 429 on this route and account: calls wait here until the cooldown ends.
    #[error("too many requests: mono asked to wait {} s before calling this endpoint again", .0.as_millis().div_ceil(1000).max(1))]
    CoolingDown(std::time::Duration),
    /// One of the client's own limits (`rate`, `quota`, `max_concurrent_upstream`) refused it.
    #[error("{}", .0.message())]
    Limited(crate::limits::Denied),
    /// A request field that would make Mono fail (and bill) a lookup.
    #[error("{field}: {message}")]
    InvalidField {
        /// The JSON field.
        field: &'static str,
        /// What is wrong with it.
        message: &'static str,
    },
}

impl ProxyError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) | ProxyError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::CoolingDown(_) | ProxyError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UpstreamUnreachable(_) | ProxyError::BadUpstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::InvalidField { .. } => "invalid_field",
            ProxyError::NotCached => "not_cached",
            ProxyError::CoolingDown(_) => "cooling_down",
            ProxyError::Limited(d) => match d.policy {
                Policy::Rate(_) => "rate_limited",
                Policy::Quota { .. } => "quota_exceeded",
                Policy::Concurrency { .. } => "concurrency_limited",
            },
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::PayloadTooLarge(_) => "payload_too_large",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::BadUpstream(_) => "bad_upstream",
            ProxyError::Unavailable(_) => "unavailable",
            ProxyError::Internal(_) => "internal",
        }
    }

    /// The error as a response in Mono's envelope.
    pub fn into_response(self) -> Response<Body> {
        let mut resp = envelope(self.status(), &self.to_string());
        match self {
            ProxyError::Unavailable(_) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::CoolingDown(left) => {
                // Rounded up: a client that waits what it is told must not arrive early.
                let secs = left.as_millis().div_ceil(1000).max(1) as u64;
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ProxyError::Limited(denied) => {
                let h = resp.headers_mut();
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(denied.retry_after_secs()),
                );
                for (name, value) in denied.headers() {
                    h.insert(name, value);
                }
            }
            // RFC 9110 §15.5.6: a 405 names the methods that are allowed.
            ProxyError::MethodNotAllowed { allow, .. } => {
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

/// The current time as Mono writes it: RFC 3339 with milliseconds, UTC.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// A response in Mono's envelope: `{"status":"failed","message":…,"timestamp":…,"data":null}`.
pub fn envelope(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "status": "failed",
        "message": message,
        "timestamp": timestamp(),
        "data": null,
    });
    json_response(status, body.to_string())
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_status() {
        assert_eq!(
            ProxyError::UpstreamTimeout(5).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::UpstreamUnreachable("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::BadRequest("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ProxyError::PayloadTooLarge(1).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[test]
    fn timestamp_has_millis_and_zulu() {
        let ts = timestamp();
        assert!(ts.ends_with('Z') && ts.contains('.'), "{ts}");
    }
}
