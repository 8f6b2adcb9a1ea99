//! Request classification: which of the five paths through the proxy a request takes.
//!
//! Validation happens here, before anything is forwarded: a request that names a bad id, uses
//! dot-segments or points at a foreign authority never reaches the upstream.

use std::borrow::Cow;

use http::{HeaderMap, Method, Uri};

use crate::error::ProxyError;

/// The two account endpoints the proxy caches and collapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `/v2/accounts/{id}/balance`
    Balance,
    /// `/v2/accounts/{id}/transactions`
    Transactions,
}

impl Kind {
    /// The path segment and label of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Balance => "balance",
            Kind::Transactions => "transactions",
        }
    }
}

/// The class of a request (spec §2), with the validated ids it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET` balance/transactions with `x-realtime: true`.
    Realtime {
        /// Account id.
        account: String,
        /// Endpoint.
        kind: Kind,
    },
    /// `GET` balance/transactions without realtime.
    Cached {
        /// Account id.
        account: String,
        /// Endpoint.
        kind: Kind,
    },
    /// `GET /v2/accounts/{id}/jobs/{job_id}`.
    JobStatus {
        /// Account id.
        account: String,
        /// Job id.
        job_id: String,
    },
    /// `POST` on the webhook path.
    Webhook,
    /// Anything else: forwarded as-is.
    Passthrough,
}

impl Route {
    /// A short label for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            Route::Realtime { .. } => "realtime",
            Route::Cached { .. } => "cached",
            Route::JobStatus { .. } => "job_status",
            Route::Webhook => "webhook",
            Route::Passthrough => "passthrough",
        }
    }
}

/// Longest account or job id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Classifies a request, refusing what must never be forwarded.
pub fn classify(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    webhook_path: &str,
    accept_hosts: &[String],
) -> Result<Route, ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed(
            "CONNECT tunnels are not supported: point the client's Mono base URL at this proxy instead",
        ));
    }
    check_authority(uri, accept_hosts)?;
    let path = uri.path();
    check_path(path)?;
    let realtime = realtime_flag(headers)?;

    if path == webhook_path {
        return if method == Method::POST {
            Ok(Route::Webhook)
        } else {
            Err(ProxyError::MethodNotAllowed(
                "the webhook path accepts POST only",
            ))
        };
    }

    let mut segments = path.split('/').skip(1);
    if segments.next() != Some("v2") || segments.next() != Some("accounts") {
        return Ok(Route::Passthrough);
    }
    let Some(account) = segments.next() else {
        return Ok(Route::Passthrough);
    };
    if account.is_empty() {
        return Ok(Route::Passthrough);
    }
    validate_id("account id", account)?;
    let rest: [Option<&str>; 3] = [segments.next(), segments.next(), segments.next()];
    if method != Method::GET {
        return Ok(Route::Passthrough);
    }
    let account = account.to_string();
    Ok(match rest {
        [Some("balance"), None, _] => account_route(account, Kind::Balance, realtime),
        [Some("transactions"), None, _] => account_route(account, Kind::Transactions, realtime),
        [Some("jobs"), Some(job_id), None] => {
            validate_id("job id", job_id)?;
            Route::JobStatus {
                account,
                job_id: job_id.to_string(),
            }
        }
        _ => Route::Passthrough,
    })
}

fn account_route(account: String, kind: Kind, realtime: bool) -> Route {
    if realtime {
        Route::Realtime { account, kind }
    } else {
        Route::Cached { account, kind }
    }
}

/// Absolute-form targets (`HTTPS_PROXY` clients) must name an accepted authority.
fn check_authority(uri: &Uri, accept_hosts: &[String]) -> Result<(), ProxyError> {
    let Some(authority) = uri.authority() else {
        return Ok(());
    };
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(ProxyError::BadRequest(
                "absolute-form targets must use http or https".into(),
            ))
        }
    }
    let full = authority.as_str().to_ascii_lowercase();
    if full.contains('@') {
        return Err(ProxyError::Forbidden(
            "credentials in the target are refused".into(),
        ));
    }
    let host = authority.host().to_ascii_lowercase();
    let default_port = matches!(
        (uri.scheme_str(), authority.port_u16()),
        (_, None) | (Some("https"), Some(443)) | (Some("http"), Some(80))
    );
    let accepted = accept_hosts
        .iter()
        .any(|h| *h == full || (default_port && *h == host));
    if accepted {
        Ok(())
    } else {
        Err(ProxyError::Forbidden(format!(
            "{host} is not an upstream this proxy serves"
        )))
    }
}

/// Refuses dot-segments and encoded `.`, `/` or `\` rather than normalising them.
fn check_path(path: &str) -> Result<(), ProxyError> {
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest("the path must start with /".into()));
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(bad_path()),
            b'%' => {
                let code = bytes.get(i + 1..i + 3).unwrap_or_default();
                if code.eq_ignore_ascii_case(b"2e")
                    || code.eq_ignore_ascii_case(b"2f")
                    || code.eq_ignore_ascii_case(b"5c")
                {
                    return Err(bad_path());
                }
            }
            _ => {}
        }
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(bad_path());
    }
    Ok(())
}

fn bad_path() -> ProxyError {
    ProxyError::BadRequest("dot-segments and encoded '.', '/' or '\\' are not allowed".into())
}

/// Ids: bounded, `[A-Za-z0-9._-]`, never `.` or `..`.
fn validate_id(what: &str, id: &str) -> Result<(), ProxyError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProxyError::BadRequest(format!(
            "invalid {what}: use 1 to {MAX_ID_LEN} of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// `x-realtime`: `true`/`false` in any case; anything else is refused.
fn realtime_flag(headers: &HeaderMap) -> Result<bool, ProxyError> {
    let mut flag = None;
    for value in headers.get_all("x-realtime") {
        let v = value.as_bytes().trim_ascii();
        let this = if v.eq_ignore_ascii_case(b"true") {
            true
        } else if v.eq_ignore_ascii_case(b"false") {
            false
        } else {
            return Err(ProxyError::BadRequest(
                "x-realtime must be true or false".into(),
            ));
        };
        if flag.is_some_and(|f| f != this) {
            return Err(ProxyError::BadRequest(
                "conflicting x-realtime headers".into(),
            ));
        }
        flag = Some(this);
    }
    Ok(flag.unwrap_or(false))
}

/// Normalizes a query for cache keys: pairs sorted, empty pairs and trailing `&` dropped.
pub fn normalize_query(query: Option<&str>) -> String {
    let Some(q) = query else {
        return String::new();
    };
    let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    if pairs.is_empty() {
        return String::new();
    }
    // Stable and by name only: repeated parameters keep their order (`page=2&page=1` differs
    // from `page=1&page=2` to an upstream that reads the first), other orders do not matter.
    pairs.sort_by(|a, b| param_name(a).cmp(param_name(b)));
    pairs.join("&")
}

fn param_name(pair: &str) -> &str {
    pair.split_once('=').map_or(pair, |(name, _)| name)
}

/// The upstream target of an account endpoint, with the client's query as sent.
pub fn account_target(account: &str, kind: Kind, query: Option<&str>) -> String {
    let mut target = format!("/v2/accounts/{account}/{}", kind.as_str());
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(q);
    }
    target
}

/// The cache path key of an account endpoint: `balance` or `transactions?page=2`.
/// Borrowed when there is no query, so the common hit allocates nothing for it.
pub fn path_key(kind: Kind, query: Option<&str>) -> Cow<'static, str> {
    let q = normalize_query(query);
    if q.is_empty() {
        Cow::Borrowed(kind.as_str())
    } else {
        Cow::Owned(format!("{}?{q}", kind.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, target: &str, realtime: Option<&str>) -> Result<Route, ProxyError> {
        let mut headers = HeaderMap::new();
        if let Some(v) = realtime {
            headers.insert("x-realtime", v.parse().unwrap());
        }
        let hosts = vec!["api.withmono.com".to_string(), "127.0.0.1:9".to_string()];
        classify(
            &method.parse().unwrap(),
            &target.parse().unwrap(),
            &headers,
            "/webhooks/mono",
            &hosts,
        )
    }

    #[test]
    fn classes_follow_the_spec_table() {
        assert_eq!(
            route("GET", "/v2/accounts/abc/balance", Some("TRUE")).unwrap(),
            Route::Realtime {
                account: "abc".into(),
                kind: Kind::Balance
            }
        );
        assert_eq!(
            route("GET", "/v2/accounts/abc/transactions?page=2", None).unwrap(),
            Route::Cached {
                account: "abc".into(),
                kind: Kind::Transactions
            }
        );
        assert_eq!(
            route("GET", "/v2/accounts/abc/jobs/jobs.accounts_1", None).unwrap(),
            Route::JobStatus {
                account: "abc".into(),
                job_id: "jobs.accounts_1".into()
            }
        );
        assert_eq!(
            route("POST", "/webhooks/mono", None).unwrap(),
            Route::Webhook
        );
        for p in [
            "/v1/x",
            "/v3/accounts/a",
            "/accounts/abc/balance",
            "/account/auth",
            "/v2/accounts/abc/identity",
        ] {
            assert_eq!(route("GET", p, None).unwrap(), Route::Passthrough, "{p}");
        }
        assert_eq!(
            route("POST", "/v2/accounts/abc/balance", None).unwrap(),
            Route::Passthrough
        );
    }

    #[test]
    fn bad_input_is_refused() {
        for p in [
            "/v2/accounts/a%20b/balance",
            "/v2/accounts/../balance",
            "/v2/accounts/./balance",
            "/v2/accounts/%2e%2e/balance",
            "/v2/accounts/a%2fb/balance",
            "/v1/../v2",
        ] {
            assert_eq!(route("GET", p, None).unwrap_err().status(), 400, "{p}");
        }
        let long = format!("/v2/accounts/{}/balance", "a".repeat(MAX_ID_LEN + 1));
        assert_eq!(route("GET", &long, None).unwrap_err().status(), 400);
        assert_eq!(
            route("GET", "/v2/accounts/abc/balance", Some("yes"))
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            route("GET", "/v2/accounts/abc/jobs/..", None)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn absolute_form_only_for_accepted_hosts() {
        assert!(route(
            "GET",
            "https://api.withmono.com/v2/accounts/a/balance",
            None
        )
        .is_ok());
        assert!(route(
            "GET",
            "http://API.withmono.com:443/v2/accounts/a/balance",
            None
        )
        .is_err());
        assert!(route(
            "GET",
            "https://api.withmono.com:443/v2/accounts/a/balance",
            None
        )
        .is_ok());
        assert!(route("GET", "http://127.0.0.1:9/v2/x", None).is_ok());
        assert_eq!(
            route("GET", "https://evil.example/v2/x", None)
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            route("CONNECT", "api.withmono.com:443", None)
                .unwrap_err()
                .status(),
            405
        );
    }

    #[test]
    fn query_normalization_sorts_and_drops_empty_pairs() {
        assert_eq!(normalize_query(Some("paginate=true&")), "paginate=true");
        assert_eq!(normalize_query(Some("b=2&&a=1&")), "a=1&b=2");
        assert_eq!(path_key(Kind::Balance, Some("&")), "balance");
        assert_eq!(normalize_query(Some("page=2&page=1")), "page=2&page=1");
        assert_ne!(
            normalize_query(Some("page=2&page=1")),
            normalize_query(Some("page=1&page=2"))
        );
        assert_ne!(
            path_key(Kind::Transactions, Some("page=1")),
            path_key(Kind::Transactions, Some("page=2"))
        );
    }
}
