//! `GET /` on the admin listener: one self-contained status page (inline style and script, no
//! external resource) that draws `/stats` every two seconds, under a Content-Security-Policy
//! that allows exactly its own inline script and style, by hash, and requests to its origin.

use std::sync::LazyLock;

use base64::Engine;
use http::{header, HeaderValue, Response};
use sha2::{Digest, Sha256};

use crate::body::Body;

const TEMPLATE: &str = include_str!("status/page.html");
const SCRIPT: &str = include_str!("status/page.js");
const STYLE: &str = include_str!("status/page.css");

/// The page and its policy, built once.
static PAGE: LazyLock<(String, HeaderValue)> = LazyLock::new(|| {
    let page = TEMPLATE
        .replace("{{STYLE}}", STYLE)
        .replace("{{SCRIPT}}", SCRIPT);
    let csp = format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256(SCRIPT),
        sha256(STYLE)
    );
    let csp = HeaderValue::try_from(csp).expect("a CSP of ASCII hashes is a valid header");
    (page, csp)
});

fn sha256(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The status page, with its security headers.
pub fn page() -> Response<Body> {
    let (html, csp) = &*PAGE;
    let mut resp = Response::new(Body::full(html.clone()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_its_policy_names_its_inline_code() {
        let resp = page();
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            csp.contains(&sha256(SCRIPT)) && csp.contains(&sha256(STYLE)),
            "{csp}"
        );
        assert!(csp.starts_with("default-src 'none'"));
        let (html, _) = &*PAGE;
        assert!(html.contains(SCRIPT) && html.contains(STYLE));
        assert!(!html.contains("{{"), "a placeholder was left");
        for external in ["http://", "https://", "src=\"", "<link"] {
            let found = html.replace("http://www.w3.org/2000/svg", "");
            assert!(!found.contains(external), "external resource: {external}");
        }
    }
}
