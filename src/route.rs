//! Request classification, the first phase: which of the five paths through the proxy a
//! request takes.
//!
//! Validation happens here, before anything is forwarded: a request that names a bad id, uses
//! dot-segments or points at a foreign authority never reaches the upstream.

use std::sync::Arc;

use http::{HeaderMap, Method, Uri};

pub use crate::api::{is_valid_id, Kind, FORWARDED_METHODS, MAX_ID_LEN};
use crate::error::ProxyError;
use crate::routes::{Route, Routes, Segments};

/// The class of a request (spec §2), with its route and the validated ids it carries.
#[derive(Debug, Clone)]
pub enum Class {
    /// `GET` on a realtime route with `x-realtime: true`.
    Realtime {
        /// The route (balance or transactions).
        route: Arc<Route>,
        /// Account id.
        account: String,
    },
    /// `GET` on a cached route.
    Cached {
        /// The route.
        route: Arc<Route>,
        /// Account id (empty for a route without `{id}`).
        account: String,
        /// Other placeholders' values, for the cache key.
        params: String,
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
    /// Anything else: forwarded as-is (named by its route when one matches).
    Passthrough {
        /// The matching route, if any.
        route: Option<Arc<Route>>,
        /// The account it names, when the route has `{id}`.
        account: Option<String>,
    },
}

impl Class {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Class::Realtime { .. } => "realtime",
            Class::Cached { .. } => "cached",
            Class::JobStatus { .. } => "job_status",
            Class::Webhook => "webhook",
            Class::Passthrough { .. } => "passthrough",
        }
    }

    /// The route name for logs and metrics: a configured or built-in name, `jobs`, `webhook`,
    /// or `other`.
    pub fn route_name(&self) -> &'static str {
        match self {
            Class::Realtime { route, .. } | Class::Cached { route, .. } => route.name,
            Class::Passthrough {
                route: Some(route), ..
            } => route.name,
            Class::JobStatus { .. } => "jobs",
            Class::Webhook => "webhook",
            Class::Passthrough { route: None, .. } => "other",
        }
    }
}

/// [`FORWARDED_METHODS`] as an `Allow` header value.
const ALLOW_FORWARDED: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

/// Where a request is sent and what it may be: the parts of the config classification reads.
pub struct Rules<'a> {
    /// The webhook path.
    pub webhook_path: &'a str,
    /// Authorities accepted in absolute-form targets.
    pub accept_hosts: &'a [String],
    /// The route table.
    pub routes: &'a Routes,
}

/// Classifies a request, refusing what must never be forwarded.
pub fn classify(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    rules: &Rules<'_>,
) -> Result<Class, ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed {
            message: "CONNECT tunnels are not supported: point the client's Mono base URL at this proxy instead",
            allow: ALLOW_FORWARDED,
        });
    }
    // Method tokens are case-sensitive: `get` is an unknown method, not GET.
    if !FORWARDED_METHODS.contains(method) {
        return Err(ProxyError::MethodNotAllowed {
            message: "only GET, HEAD, POST, PUT, PATCH and DELETE are forwarded to Mono",
            allow: ALLOW_FORWARDED,
        });
    }
    check_authority(uri, rules.accept_hosts)?;
    let path = uri.path();
    let segments = check_path(path)?;
    let realtime = realtime_flag(headers)?;

    if path == rules.webhook_path {
        return if method == Method::POST {
            Ok(Class::Webhook)
        } else {
            Err(ProxyError::MethodNotAllowed {
                message: "the webhook path accepts POST only",
                allow: "POST",
            })
        };
    }

    // Account paths name an account id: a bad one is refused, never forwarded. (A path longer
    // than any route is checked by the same rule, split afresh.)
    let split;
    let parts = match &segments {
        Some(s) => s.as_slice(),
        None => {
            split = path.split('/').skip(1).take(5).collect::<Vec<_>>();
            &split[..]
        }
    };
    if let ["v2", "accounts", account, rest @ ..] = parts {
        if !account.is_empty() {
            validate_id("account id", account)?;
            if let ["jobs", job_id] = rest {
                validate_id("job id", job_id)?;
                if method == Method::GET {
                    return Ok(Class::JobStatus {
                        account: account.to_string(),
                        job_id: job_id.to_string(),
                    });
                }
            }
        }
    }

    let Some(m) = segments.and_then(|s| rules.routes.find_in(method, &s)) else {
        return Ok(Class::Passthrough {
            route: None,
            account: None,
        });
    };
    let account = m.account.unwrap_or_default().to_string();
    if method == Method::GET && realtime && m.route.realtime {
        return Ok(Class::Realtime {
            route: m.route,
            account,
        });
    }
    // An explicit realtime request on a route that does not collapse it goes to Mono as sent.
    if method == Method::GET && m.route.cached() && !realtime {
        return Ok(Class::Cached {
            route: m.route,
            account,
            params: m.params,
        });
    }
    Ok(Class::Passthrough {
        route: Some(m.route),
        account: m.account.map(str::to_string),
    })
}

/// Absolute-form targets (`HTTPS_PROXY` clients) must name an accepted authority.
fn check_authority(uri: &Uri, accept_hosts: &[String]) -> Result<(), ProxyError> {
    let Some(authority) = uri.authority() else {
        return Ok(());
    };
    match uri.scheme_str() {
        Some("http" | "https") => {}
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

/// Refuses dot-segments, empty segments and encoded `.`, `/` or `\` rather than normalising
/// them: an upstream or middlebox that normalises `//v2/…` would serve what we never classified.
/// One pass over the bytes, which also splits the path for route matching (`None`: longer than
/// any route).
fn check_path(path: &str) -> Result<Option<Segments<'_>>, ProxyError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(ProxyError::BadRequest("the path must start with /".into()));
    }
    // One scan both refuses and splits: a `str::split` on top of it cost a memchr set-up per
    // segment (~560 instructions a request by callgrind, 3% of a cache hit).
    let mut segments = Some(Segments::new());
    let mut start = 1;
    for i in 1..=bytes.len() {
        match bytes.get(i) {
            Some(b'\\') => return Err(bad_path()),
            Some(b'%') => {
                let code = bytes.get(i + 1..i + 3).unwrap_or_default();
                if code.eq_ignore_ascii_case(b"2e")
                    || code.eq_ignore_ascii_case(b"2f")
                    || code.eq_ignore_ascii_case(b"5c")
                {
                    return Err(bad_path());
                }
            }
            Some(b'/') | None => {
                let last = i == bytes.len();
                // Byte offsets of '/' and the end: always char boundaries.
                let part = &path[start..i];
                if part.is_empty() && !last {
                    return Err(ProxyError::BadRequest(
                        "empty path segments (//) are not allowed".into(),
                    ));
                }
                if part == "." || part == ".." {
                    return Err(bad_path());
                }
                if segments.as_mut().is_some_and(|s| !s.push(part)) {
                    segments = None;
                }
                start = i + 1;
            }
            Some(_) => {}
        }
    }
    Ok(segments)
}

fn bad_path() -> ProxyError {
    ProxyError::BadRequest("dot-segments and encoded '.', '/' or '\\' are not allowed".into())
}

fn validate_id(what: &str, id: &str) -> Result<(), ProxyError> {
    if is_valid_id(id) {
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
    for value in headers.get_all(&crate::headers::X_REALTIME) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(method: &str, target: &str, realtime: Option<&str>) -> Result<Class, ProxyError> {
        let mut headers = HeaderMap::new();
        if let Some(v) = realtime {
            headers.insert("x-realtime", v.parse().unwrap());
        }
        let hosts = vec!["api.withmono.com".to_string(), "127.0.0.1:9".to_string()];
        let routes = Routes::new(&[], &crate::cache::tests_config());
        let rules = Rules {
            webhook_path: "/webhooks/mono",
            accept_hosts: &hosts,
            routes: &routes,
        };
        classify(
            &method.parse().unwrap(),
            &target.parse().unwrap(),
            &headers,
            &rules,
        )
    }

    /// `(class, route, account)` of a request.
    fn shape(c: &Class) -> (&'static str, &'static str, String) {
        let account = match c {
            Class::Realtime { account, .. }
            | Class::Cached { account, .. }
            | Class::JobStatus { account, .. } => account.clone(),
            Class::Passthrough { account, .. } => account.clone().unwrap_or_default(),
            Class::Webhook => String::new(),
        };
        (c.label(), c.route_name(), account)
    }

    #[test]
    fn classes_follow_the_spec_table() {
        let c = |m, p, rt| shape(&class_of(m, p, rt).unwrap());
        let s = |a: &'static str, b: &'static str, acc: &str| (a, b, acc.to_string());
        assert_eq!(
            c("GET", "/v2/accounts/abc/balance", Some("TRUE")),
            s("realtime", "balance", "abc")
        );
        assert_eq!(
            c("GET", "/v2/accounts/abc/transactions?page=2", None),
            s("cached", "transactions", "abc")
        );
        assert_eq!(
            c("GET", "/v2/accounts/abc/jobs/jobs.accounts_1", None),
            s("job_status", "jobs", "abc")
        );
        assert_eq!(
            c("POST", "/webhooks/mono", None),
            s("webhook", "webhook", "")
        );
        assert_eq!(
            c("GET", "/v2/accounts/abc", None),
            s("cached", "account", "abc")
        );
        assert_eq!(
            c("GET", "/accounts/abc/transactions", None),
            s("cached", "node_transactions", "abc")
        );
        assert_eq!(
            c("GET", "/v2/accounts/abc/identity", None),
            s("passthrough", "identity", "abc")
        );
        // An explicit realtime request on a route that does not collapse goes to Mono as sent.
        assert_eq!(
            c("GET", "/v2/accounts/abc", Some("true")),
            s("passthrough", "account", "abc")
        );
        for p in [
            "/v1/x",
            "/v3/accounts/a",
            "/accounts/abc/balance",
            "/account/auth",
        ] {
            assert_eq!(c("GET", p, None), s("passthrough", "other", ""), "{p}");
        }
        assert_eq!(
            c("POST", "/v2/accounts/abc/balance", None),
            s("passthrough", "other", "")
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
            assert_eq!(class_of("GET", p, None).unwrap_err().status(), 400, "{p}");
        }
        let long = format!("/v2/accounts/{}/balance", "a".repeat(MAX_ID_LEN + 1));
        assert_eq!(class_of("GET", &long, None).unwrap_err().status(), 400);
        assert_eq!(
            class_of("GET", "/v2/accounts/abc/balance", Some("yes"))
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            class_of("GET", "/v2/accounts/abc/jobs/..", None)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn absolute_form_only_for_accepted_hosts() {
        assert!(class_of(
            "GET",
            "https://api.withmono.com/v2/accounts/a/balance",
            None
        )
        .is_ok());
        assert!(class_of(
            "GET",
            "http://API.withmono.com:443/v2/accounts/a/balance",
            None
        )
        .is_err());
        assert!(class_of(
            "GET",
            "https://api.withmono.com:443/v2/accounts/a/balance",
            None
        )
        .is_ok());
        assert!(class_of("GET", "http://127.0.0.1:9/v2/x", None).is_ok());
        assert_eq!(
            class_of("GET", "https://evil.example/v2/x", None)
                .unwrap_err()
                .status(),
            403
        );
        assert_eq!(
            class_of("CONNECT", "api.withmono.com:443", None)
                .unwrap_err()
                .status(),
            405
        );
    }

    #[test]
    fn only_the_methods_mono_uses_are_forwarded() {
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(class_of(m, "/v2/accounts/x/identity", None).is_ok(), "{m}");
        }
        for m in [
            "TRACE", "OPTIONS", "get", "Post", "FOO", "PROPFIND", "CONNECT",
        ] {
            let e = class_of(m, "/v2/accounts/x/identity", None).unwrap_err();
            assert_eq!(e.status(), 405, "{m}");
            let resp = e.into_response();
            assert_eq!(
                resp.headers()["allow"],
                "GET, HEAD, POST, PUT, PATCH, DELETE"
            );
        }
        let e = class_of("GET", "/webhooks/mono", None).unwrap_err();
        assert_eq!(e.into_response().headers()["allow"], "POST");
    }

    #[test]
    fn empty_path_segments_are_refused() {
        for p in [
            "//v2/accounts/x/balance",
            "/v2//accounts/x/balance",
            "/v2/accounts/x//balance",
            "/v2/accounts/x/balance//",
        ] {
            assert_eq!(class_of("GET", p, None).unwrap_err().status(), 400, "{p}");
        }
    }
}
