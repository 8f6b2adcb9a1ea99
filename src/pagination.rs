//! Rewrites Mono's absolute pagination links (`meta.next`, `meta.previous`) to the proxy's URL.

use bytes::Bytes;
use serde_json::Value;

/// Which link prefixes are rewritten, and to what.
#[derive(Debug, Clone)]
pub struct Rewrite {
    from: Vec<String>,
    to: String,
}

impl Rewrite {
    /// Links starting with any of `from` (origins without a trailing slash) are moved to `to`.
    pub fn new(from: Vec<String>, to: &str) -> Rewrite {
        Rewrite {
            from,
            to: to.trim_end_matches('/').to_string(),
        }
    }

    fn link(&self, link: &str) -> Option<String> {
        self.from.iter().find_map(|origin| {
            let rest = link.strip_prefix(origin.as_str())?;
            (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
                .then(|| format!("{}{rest}", self.to))
        })
    }
}

/// Returns the body with its pagination links rewritten; untouched bytes when there are none.
pub fn rewrite(body: Bytes, rw: &Rewrite) -> Bytes {
    let Ok(text) = std::str::from_utf8(&body) else {
        return body;
    };
    if !text.contains("\"meta\"") || !rw.from.iter().any(|f| text.contains(f.as_str())) {
        return body;
    }
    let Ok(mut doc) = serde_json::from_str::<Value>(text) else {
        return body;
    };
    let mut changed = false;
    if let Some(meta) = doc.get_mut("meta").and_then(Value::as_object_mut) {
        for field in ["next", "previous"] {
            if let Some(Value::String(link)) = meta.get_mut(field) {
                if let Some(new) = rw.link(link) {
                    *link = new;
                    changed = true;
                }
            }
        }
    }
    if !changed {
        return body;
    }
    match serde_json::to_vec(&doc) {
        Ok(v) => Bytes::from(v),
        Err(_) => body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_move_to_the_proxy_and_nothing_else_changes() {
        let rw = Rewrite::new(
            vec!["https://api.withmono.com".into()],
            "http://127.0.0.1:8080/",
        );
        let body = Bytes::from_static(
            br#"{"status":"successful","data":[{"narration":"https://api.withmono.com/x"}],"meta":{"total":3,"page":2,"previous":"https://api.withmono.com/v2/accounts/a/transactions?page=1","next":null}}"#,
        );
        let out = rewrite(body, &rw);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["meta"]["previous"],
            "http://127.0.0.1:8080/v2/accounts/a/transactions?page=1"
        );
        assert_eq!(v["meta"]["next"], Value::Null);
        assert_eq!(v["data"][0]["narration"], "https://api.withmono.com/x");
        let keys: Vec<_> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["status", "data", "meta"]);
    }

    #[test]
    fn foreign_links_are_left_alone() {
        let rw = Rewrite::new(vec!["https://api.withmono.com".into()], "http://p");
        let body = Bytes::from_static(br#"{"meta":{"next":"https://api.withmono.com.evil/x"}}"#);
        assert_eq!(rewrite(body.clone(), &rw), body);
    }
}
