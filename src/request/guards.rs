//! Billable-call guards: requests Mono would fail (and bill) are answered here instead.

use bytes::Bytes;
use http::Method;
use serde_json::Value;

use crate::error::ProxyError;

/// Mono's BVN lookup: a failed lookup is billed, so a BVN that cannot exist never leaves.
pub const BVN_INITIATE: &str = "/v2/lookup/bvn/initiate";

/// Whether a request's body must be read and checked before it is forwarded.
pub fn guarded(method: &Method, path: &str) -> bool {
    method == Method::POST && path == BVN_INITIATE
}

/// Whether a call is a billable lookup (`/v{n}/lookup/…` or mono-node's `/lookup/…`, GET or
/// POST), spent from the client's quota; the bank list (`lookup/banks`) is free. Realtime
/// calls are counted where they are made.
pub fn billable_lookup(method: &Method, path: &str) -> bool {
    if method != Method::POST && method != Method::GET {
        return false;
    }
    let mut segments = path.split('/').skip(1);
    let mut first = segments.next();
    if first.is_some_and(|v| {
        v.len() > 1 && v.starts_with('v') && v[1..].bytes().all(|b| b.is_ascii_digit())
    }) {
        first = segments.next();
    }
    first == Some("lookup")
        && segments
            .next()
            .is_some_and(|what| !what.is_empty() && what != "banks")
}

/// Checks a guarded request's body: `bvn` must be a string of exactly 11 digits.
pub fn check(path: &str, body: &Bytes) -> Result<(), ProxyError> {
    if path != BVN_INITIATE {
        return Ok(());
    }
    let invalid = ProxyError::InvalidField {
        field: "bvn",
        message: "must be a string of exactly 11 digits; nothing was sent to Mono",
    };
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Err(ProxyError::BadRequest(
            "the body must be a JSON object with a bvn field; nothing was sent to Mono".into(),
        ));
    };
    match json.get("bvn") {
        Some(Value::String(bvn)) if bvn.len() == 11 && bvn.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(())
        }
        _ => Err(invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_are_billable_except_the_bank_list() {
        for (m, p) in [
            (Method::POST, "/v2/lookup/bvn/initiate"),
            (Method::POST, "/v2/lookup/account-number"),
            (Method::GET, "/v3/lookup/cac"),
            (Method::POST, "/lookup/bvn/initiate"),
        ] {
            assert!(billable_lookup(&m, p), "{m} {p}");
        }
        for (m, p) in [
            (Method::GET, "/v3/lookup/banks"),
            (Method::GET, "/v2/accounts/abc/identity"),
            (Method::DELETE, "/v2/lookup/bvn"),
            (Method::GET, "/v2/lookup"),
            (Method::GET, "/v2/lookup/"),
            (Method::GET, "/vx/lookup/bvn"),
        ] {
            assert!(!billable_lookup(&m, p), "{m} {p}");
        }
    }

    #[test]
    fn only_eleven_digit_bvns_pass() {
        let ok = Bytes::from_static(br#"{"bvn":"22212345678","scope":"identity"}"#);
        assert!(check(BVN_INITIATE, &ok).is_ok());
        for bad in [
            &br#"{"bvn":"2221234567"}"#[..],
            br#"{"bvn":"222123456789"}"#,
            br#"{"bvn":"2221234567a"}"#,
            br#"{"bvn":22212345678}"#,
            br#"{"scope":"identity"}"#,
        ] {
            let e = check(BVN_INITIATE, &Bytes::from_static(bad)).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().starts_with("bvn:"), "{e}");
        }
        assert_eq!(
            check(BVN_INITIATE, &Bytes::from_static(b"not json"))
                .unwrap_err()
                .status(),
            400
        );
        assert!(check("/v2/other", &Bytes::new()).is_ok());
    }
}
