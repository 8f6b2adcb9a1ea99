//! Request classification, the first phase: which of the five paths through the proxy a
//! request takes.
//!
//! Validation happens here, before anything is forwarded: a request that names a bad id, uses
//! dot-segments or points at a foreign authority never reaches the upstream.

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
pub enum Class {
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

impl Class {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Class::Realtime { .. } => "realtime",
            Class::Cached { .. } => "cached",
            Class::JobStatus { .. } => "job_status",
            Class::Webhook => "webhook",
            Class::Passthrough => "passthrough",
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
) -> Result<Class, ProxyError> {
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
            Ok(Class::Webhook)
        } else {
            Err(ProxyError::MethodNotAllowed(
                "the webhook path accepts POST only",
            ))
        };
    }

    let mut segments = path.split('/').skip(1);
    if segments.next() != Some("v2") || segments.next() != Some("accounts") {
        return Ok(Class::Passthrough);
    }
    let Some(account) = segments.next() else {
        return Ok(Class::Passthrough);
    };
    if account.is_empty() {
        return Ok(Class::Passthrough);
    }
    validate_id("account id", account)?;
    let rest: [Option<&str>; 3] = [segments.next(), segments.next(), segments.next()];
    if method != Method::GET {
        return Ok(Class::Passthrough);
    }
    let account = account.to_string();
    Ok(match rest {
        [Some("balance"), None, _] => account_class(account, Kind::Balance, realtime),
        [Some("transactions"), None, _] => account_class(account, Kind::Transactions, realtime),
        [Some("jobs"), Some(job_id), None] => {
            validate_id("job id", job_id)?;
            Class::JobStatus {
                account,
                job_id: job_id.to_string(),
            }
        }
        _ => Class::Passthrough,
    })
}

fn account_class(account: String, kind: Kind, realtime: bool) -> Class {
    if realtime {
        Class::Realtime { account, kind }
    } else {
        Class::Cached { account, kind }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(method: &str, target: &str, realtime: Option<&str>) -> Result<Class, ProxyError> {
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
            class_of("GET", "/v2/accounts/abc/balance", Some("TRUE")).unwrap(),
            Class::Realtime {
                account: "abc".into(),
                kind: Kind::Balance
            }
        );
        assert_eq!(
            class_of("GET", "/v2/accounts/abc/transactions?page=2", None).unwrap(),
            Class::Cached {
                account: "abc".into(),
                kind: Kind::Transactions
            }
        );
        assert_eq!(
            class_of("GET", "/v2/accounts/abc/jobs/jobs.accounts_1", None).unwrap(),
            Class::JobStatus {
                account: "abc".into(),
                job_id: "jobs.accounts_1".into()
            }
        );
        assert_eq!(
            class_of("POST", "/webhooks/mono", None).unwrap(),
            Class::Webhook
        );
        for p in [
            "/v1/x",
            "/v3/accounts/a",
            "/accounts/abc/balance",
            "/account/auth",
            "/v2/accounts/abc/identity",
        ] {
            assert_eq!(class_of("GET", p, None).unwrap(), Class::Passthrough, "{p}");
        }
        assert_eq!(
            class_of("POST", "/v2/accounts/abc/balance", None).unwrap(),
            Class::Passthrough
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
}
