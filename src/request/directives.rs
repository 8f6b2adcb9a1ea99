//! The request's own cache directives (RFC 9111 §5.2.1): what the app allows the cache to do.

use http::header::{CACHE_CONTROL, PRAGMA};
use http::HeaderMap;

/// The directives of a request that change how a cached read is answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-cache` (or `Pragma: no-cache`): fetch afresh, then store.
    pub no_cache: bool,
    /// `no-store`: fetch, and store nothing.
    pub no_store: bool,
    /// `max-age=N`: a stored answer only if its age is at most N seconds.
    pub max_age: Option<u64>,
    /// `only-if-cached`: a stored answer or 504, never Mono.
    pub only_if_cached: bool,
}

impl Directives {
    /// Reads `Cache-Control` (every field line, comma-separated, any case); `Pragma: no-cache`
    /// counts only when there is no `Cache-Control` (RFC 9111 §5.4).
    pub fn parse(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        let (mut any, mut pragma_no_cache) = (false, false);
        // One walk over the headers instead of two lookups: this runs on every hit.
        for (name, value) in headers {
            if name == CACHE_CONTROL {
                any = true;
                if let Ok(text) = value.to_str() {
                    d.read(text);
                }
            } else if name == PRAGMA {
                pragma_no_cache |= value.to_str().is_ok_and(|v| {
                    v.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                });
            }
        }
        if !any {
            d.no_cache = pragma_no_cache;
        }
        d
    }

    /// Adds the directives of one `Cache-Control` field line.
    fn read(&mut self, text: &str) {
        for part in text.split(',') {
            let (name, arg) = match part.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (part.trim(), None),
            };
            if name.eq_ignore_ascii_case("no-cache") {
                self.no_cache = true;
            } else if name.eq_ignore_ascii_case("no-store") {
                self.no_store = true;
            } else if name.eq_ignore_ascii_case("only-if-cached") {
                self.only_if_cached = true;
            } else if name.eq_ignore_ascii_case("max-age") {
                // An invalid value is ignored rather than read as "anything goes".
                if let Some(n) = arg.and_then(|a| a.parse::<u64>().ok()) {
                    self.max_age = Some(self.max_age.map_or(n, |m| m.min(n)));
                }
            }
        }
    }

    /// Whether a stored answer of `age_secs` may be used.
    pub fn accepts(&self, age_secs: u64) -> bool {
        !self.no_cache && !self.no_store && self.max_age.is_none_or(|max| age_secs <= max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Directives {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Directives::parse(&h)
    }

    #[test]
    fn directives_are_read_in_any_case_and_across_lines() {
        assert_eq!(parse(&[]), Directives::default());
        let d = parse(&[
            ("cache-control", "No-Cache, max-age=\"30\""),
            ("cache-control", "max-age=10"),
        ]);
        assert!(d.no_cache);
        assert_eq!(d.max_age, Some(10));
        assert!(parse(&[("cache-control", "no-store")]).no_store);
        assert!(parse(&[("cache-control", "only-if-cached")]).only_if_cached);
        assert_eq!(parse(&[("cache-control", "max-age=abc")]).max_age, None);
        assert!(parse(&[("pragma", "no-cache")]).no_cache);
        // Cache-Control present: Pragma is ignored.
        assert!(!parse(&[("pragma", "no-cache"), ("cache-control", "max-age=5")]).no_cache);
    }

    #[test]
    fn max_age_bounds_the_age_of_an_answer() {
        let d = parse(&[("cache-control", "max-age=60")]);
        assert!(d.accepts(60));
        assert!(!d.accepts(61));
        assert!(Directives::default().accepts(1_000_000));
        assert!(!parse(&[("cache-control", "no-cache")]).accepts(0));
    }
}
