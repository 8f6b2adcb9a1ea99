//! Mono's JSON envelope and the reply and body helpers both route sets share.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde::Serialize;

use super::seed;

/// Every sandbox reply: a buffered JSON body.
pub(super) type Resp = Response<Full<Bytes>>;

/// Mono's envelope; `meta` only on lists (pages of transactions, statements).
#[derive(Serialize)]
struct MonoEnvelope<'a, T: Serialize, M: Serialize> {
    status: &'a str,
    message: &'a str,
    timestamp: &'a str,
    data: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<M>,
}

/// Mono's pagination `meta` on transactions: links are absolute Mono URLs.
#[derive(Serialize)]
pub(super) struct PageMeta {
    pub(super) total: usize,
    pub(super) page: usize,
    pub(super) previous: Option<String>,
    pub(super) next: Option<String>,
}

/// First value of `name` in a raw query string (no percent-decoding; values here are plain).
pub(super) fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Reads a body up to `limit` bytes; too large → 413, broken → 400.
pub(super) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Resp> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(failed(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large",
        )),
        Err(err) => {
            tracing::debug!(error = %err, "sandbox could not read request body");
            Err(failed(
                StatusCode::BAD_REQUEST,
                "Could not read request body",
            ))
        }
    }
}

/// Mono's failed envelope with `data: null`.
pub(super) fn failed(status: StatusCode, message: &str) -> Resp {
    mono_envelope(status, message, &seed::now_rfc3339(), (), None)
}

/// Mono's envelope around `data`; `status` says `successful` or `failed` from the code.
pub(super) fn mono_envelope<T: Serialize>(
    status: StatusCode,
    message: &str,
    timestamp: &str,
    data: T,
    meta: Option<PageMeta>,
) -> Resp {
    mono_envelope_meta(status, message, timestamp, data, meta)
}

/// [`mono_envelope`] with any `meta` document (a statement's `{"count": n}`, say).
pub(super) fn mono_envelope_meta<T: Serialize, M: Serialize>(
    status: StatusCode,
    message: &str,
    timestamp: &str,
    data: T,
    meta: Option<M>,
) -> Resp {
    let kind = if status.is_success() {
        "successful"
    } else {
        "failed"
    };
    let env = MonoEnvelope {
        status: kind,
        message,
        timestamp,
        data,
        meta,
    };
    json_reply(status, &env)
}

/// A 200 with `value` as JSON (control answers and echo, which Mono does not wrap).
pub(super) fn json_ok<T: Serialize + ?Sized>(value: &T) -> Resp {
    json_reply(StatusCode::OK, value)
}

/// `value` as JSON with `status`; a value that will not serialize becomes an empty 500.
pub(super) fn json_reply<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Resp {
    let (status, body) = match serde_json::to_vec(value) {
        Ok(body) => (status, body),
        Err(err) => {
            tracing::error!(error = %err, "sandbox could not serialize a response");
            (StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found() {
        assert_eq!(query_param("page=2&limit=5", "limit"), Some("5"));
        assert_eq!(query_param("paginate", "paginate"), Some(""));
        assert_eq!(query_param("", "page"), None);
    }
}
