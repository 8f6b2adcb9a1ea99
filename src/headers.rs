//! Header rules shared by every path: hop-by-hop removal, request ids, cache-status synthesis.

use std::cell::RefCell;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies still see.
pub const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The request id header, generated when absent, forwarded and echoed back.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Mono's secret key header.
pub const MONO_SEC_KEY: HeaderName = HeaderName::from_static("mono-sec-key");
/// Mono's webhook secret header.
pub const MONO_WEBHOOK_SECRET: HeaderName = HeaderName::from_static("mono-webhook-secret");
/// RFC 9211 cache status.
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// Short cache result for humans.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// Realtime job id.
pub const X_JOB_ID: HeaderName = HeaderName::from_static("x-job-id");
/// Realtime job status.
pub const X_JOB_STATUS: HeaderName = HeaderName::from_static("x-job-status");
/// Whether the last sync brought new data.
pub const X_HAS_NEW_DATA: HeaderName = HeaderName::from_static("x-has-new-data");
/// Request header carrying a client token.
pub const X_PROXY_TOKEN: HeaderName = HeaderName::from_static("x-mono-proxy-token");
/// Request header asking Mono for a realtime read.
pub const X_REALTIME: HeaderName = HeaderName::from_static("x-realtime");

/// Removes hop-by-hop headers and every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One walk over the few headers a message has, instead of a failed lookup per hop-by-hop
    // name: most messages carry none of them (this runs twice on every passthrough).
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request headers the summary event and the trace read, found in one walk over the map:
/// a lookup each would hash each name, and a request carries only a handful of headers.
#[derive(Default)]
pub struct Noted<'a> {
    /// The first `x-request-id`.
    pub request_id: Option<&'a HeaderValue>,
    /// The first `traceparent`.
    pub traceparent: Option<&'a HeaderValue>,
    /// The first `tracestate`.
    pub tracestate: Option<&'a HeaderValue>,
    /// The first `user-agent`.
    pub user_agent: Option<&'a HeaderValue>,
    /// The first `content-length`.
    pub content_length: Option<&'a HeaderValue>,
}

impl<'a> Noted<'a> {
    /// Walks `headers` once.
    pub fn scan(headers: &'a HeaderMap) -> Noted<'a> {
        let mut noted = Noted::default();
        for (name, value) in headers {
            let slot = match name.as_str() {
                "x-request-id" => &mut noted.request_id,
                "traceparent" => &mut noted.traceparent,
                "tracestate" => &mut noted.tracestate,
                "user-agent" => &mut noted.user_agent,
                "content-length" => &mut noted.content_length,
                _ => continue,
            };
            // The first value, as `HeaderMap::get` gives.
            slot.get_or_insert(value);
        }
        noted
    }
}

/// A `Content-Length` value as a number.
pub fn declared_length(value: Option<&HeaderValue>) -> Option<u64> {
    value?.to_str().ok()?.parse().ok()
}

/// The client's `x-request-id` (`value`) when it is sane, else a new one.
pub fn request_id(value: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = value {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic) {
            return v.clone();
        }
    }
    new_request_id()
}

/// A fresh random request id.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    let s = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("uuid is a valid header value")
}

/// How a cached-path response was produced, for `Cache-Status` and `x-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Served from a fresh entry.
    Hit,
    /// Served from a fresh entry another replica stored in the shared (Redis) tier.
    SharedHit,
    /// Fetched from the upstream (and stored when cacheable).
    Miss,
    /// Served from an expired entry because the upstream failed.
    Stale,
    /// Answered from another call's result (realtime window or single flight).
    Collapsed,
    /// Fetched because the request's directives refused the stored answer (`no-cache`,
    /// `max-age`), then stored.
    Refetched,
    /// Fetched and not stored, as the request asked (`no-store`).
    Bypassed,
}

impl CacheResult {
    /// The `x-cache` value and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit | CacheResult::SharedHit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Collapsed => "COLLAPSED",
            CacheResult::Refetched | CacheResult::Bypassed => "MISS",
        }
    }

    /// The lowercase metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit | CacheResult::SharedHit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Collapsed => "collapsed",
            CacheResult::Refetched => "refetch",
            CacheResult::Bypassed => "bypass",
        }
    }
}

/// Sets `Cache-Status` (RFC 9211) and `x-cache`; `ttl` is the freshness left in seconds.
pub fn set_cache_status(headers: &mut HeaderMap, result: CacheResult, ttl: Option<i64>) {
    if let Some(v) = cache_status_value(result, ttl) {
        headers.insert(CACHE_STATUS, v);
    }
    headers.insert(X_CACHE, HeaderValue::from_static(result.as_str()));
}

/// The `Cache-Status` value of `result` with `ttl` seconds of freshness left.
pub fn cache_status_value(result: CacheResult, ttl: Option<i64>) -> Option<HeaderValue> {
    let base = match result {
        CacheResult::Hit => "mono-proxy; hit",
        CacheResult::SharedHit => "mono-proxy; hit; detail=shared",
        CacheResult::Miss => "mono-proxy; fwd=miss",
        CacheResult::Stale => "mono-proxy; fwd=stale",
        CacheResult::Collapsed => "mono-proxy; hit; collapsed",
        CacheResult::Refetched => "mono-proxy; fwd=request; stored",
        CacheResult::Bypassed => "mono-proxy; fwd=request; detail=no-store",
    };
    match ttl {
        Some(t) => with_ttl(base, t).ok(),
        None => Some(HeaderValue::from_static(base)),
    }
}

/// `<base>; ttl=<t>` built on the stack: this runs on every cache hit.
fn with_ttl(base: &str, ttl: i64) -> Result<HeaderValue, header::InvalidHeaderValue> {
    let mut buf = [0u8; 64];
    let mut n = 0;
    for part in [base.as_bytes(), b"; ttl="] {
        buf[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    if ttl < 0 {
        buf[n] = b'-';
        n += 1;
    }
    let mut digits = [0u8; 20];
    let mut d = digits.len();
    let mut v = ttl.unsigned_abs();
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let tail = &digits[d..];
    buf[n..n + tail.len()].copy_from_slice(tail);
    n += tail.len();
    HeaderValue::from_bytes(&buf[..n])
}

/// `Cache-Status` of a fresh hit with `ttl` seconds left, and its `Age`: the two values every
/// hit writes. Each thread keeps the values of the small numbers it has written (below
/// 4096), so a hit clones one instead of formatting and allocating it.
pub fn hit_values(ttl: Option<i64>, age: u64) -> (Option<HeaderValue>, HeaderValue) {
    thread_local! {
        static STATUS: RefCell<Vec<Option<HeaderValue>>> = const { RefCell::new(Vec::new()) };
        static AGE: RefCell<Vec<Option<HeaderValue>>> = const { RefCell::new(Vec::new()) };
    }
    let status = match ttl {
        Some(t @ 0..) => kept(&STATUS, t as u64, || {
            cache_status_value(CacheResult::Hit, Some(t))
        }),
        _ => cache_status_value(CacheResult::Hit, ttl),
    };
    let age = kept(&AGE, age, || Some(HeaderValue::from(age))).unwrap_or_else(|| age.into());
    (status, age)
}

/// Numbers below this have their header values kept per thread (about 40 bytes each, grown as
/// needed): more than any route's freshness plus its stale window in practice.
const NUMBERS_KEPT: u64 = 4096;

/// `table`'s value for `n`, made and kept on first use; made afresh when `n` is too large or the
/// thread is tearing down.
fn kept(
    table: &'static std::thread::LocalKey<RefCell<Vec<Option<HeaderValue>>>>,
    n: u64,
    make: impl Fn() -> Option<HeaderValue>,
) -> Option<HeaderValue> {
    if n >= NUMBERS_KEPT {
        return make();
    }
    let at = n as usize;
    table
        .try_with(|values| {
            let mut values = values.try_borrow_mut().ok()?;
            if values.len() <= at {
                values.resize(at + 1, None);
            }
            if values[at].is_none() {
                values[at] = make();
            }
            values[at].clone()
        })
        .ok()
        .flatten()
        .or_else(make)
}

/// `Retry-After` (RFC 9110 §10.2.3) as a wait from `now`: delay-seconds or an HTTP date (a date
/// already past is no wait). `None` when absent or unreadable.
pub fn retry_after(headers: &HeaderMap, now: std::time::SystemTime) -> Option<std::time::Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// `true`/`false` as a header value.
pub fn bool_value(b: bool) -> HeaderValue {
    HeaderValue::from_static(if b { "true" } else { "false" })
}

/// Reads a boolean header case-insensitively; missing means `false` (spec §3.6).
pub fn header_bool(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get(name)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn request_id_is_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, "abc-123".parse().unwrap());
        assert_eq!(request_id(Noted::scan(&h).request_id), "abc-123");
        h.insert(REQUEST_ID, "has space".parse().unwrap());
        assert_eq!(request_id(Noted::scan(&h).request_id).len(), 32);
        assert_eq!(request_id(None).len(), 32);
    }

    #[test]
    fn one_walk_notes_the_first_of_each_header() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "proxy".parse().unwrap());
        h.append(REQUEST_ID, "first".parse().unwrap());
        h.append(REQUEST_ID, "second".parse().unwrap());
        h.insert(header::USER_AGENT, "mono-node/1".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        h.insert("traceparent", "tp".parse().unwrap());
        h.insert("tracestate", "ts".parse().unwrap());
        let noted = Noted::scan(&h);
        assert_eq!(noted.request_id.unwrap(), "first");
        assert_eq!(noted.user_agent.unwrap(), "mono-node/1");
        assert_eq!(declared_length(noted.content_length), Some(12));
        assert_eq!(noted.traceparent.unwrap(), "tp");
        assert_eq!(noted.tracestate.unwrap(), "ts");
        let none = HeaderMap::new();
        let noted = Noted::scan(&none);
        assert!(noted.request_id.is_none() && noted.user_agent.is_none());
        assert_eq!(declared_length(noted.content_length), None);
    }

    #[test]
    fn a_hits_kept_values_are_the_values_made_afresh() {
        for (ttl, age) in [
            (Some(42), 3),
            (Some(42), 3),
            (Some(0), 0),
            (Some(-5), 9),
            (None, 1),
        ] {
            let (status, age_value) = hit_values(ttl, age);
            assert_eq!(status, cache_status_value(CacheResult::Hit, ttl));
            assert_eq!(age_value, HeaderValue::from(age));
        }
        let big = NUMBERS_KEPT + 1;
        let (status, age) = hit_values(Some(big as i64), big);
        assert_eq!(
            status.unwrap(),
            format!("mono-proxy; hit; ttl={big}").as_str()
        );
        assert_eq!(age, big.to_string().as_str());
    }

    #[test]
    fn cache_status_says_what_happened() {
        let mut h = HeaderMap::new();
        set_cache_status(&mut h, CacheResult::Hit, Some(42));
        assert_eq!(h[CACHE_STATUS], "mono-proxy; hit; ttl=42");
        assert_eq!(h[X_CACHE], "HIT");
        set_cache_status(&mut h, CacheResult::Stale, Some(-7));
        assert_eq!(h[CACHE_STATUS], "mono-proxy; fwd=stale; ttl=-7");
        set_cache_status(&mut h, CacheResult::Hit, Some(0));
        assert_eq!(h[CACHE_STATUS], "mono-proxy; hit; ttl=0");
        set_cache_status(&mut h, CacheResult::Miss, Some(i64::MIN));
        assert!(h[CACHE_STATUS]
            .to_str()
            .unwrap()
            .ends_with("ttl=-9223372036854775808"));
        set_cache_status(&mut h, CacheResult::Collapsed, None);
        assert!(h[CACHE_STATUS].to_str().unwrap().contains("collapsed"));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_400); // Wed, 21 Oct 2015 07:26:40 GMT
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static(" 120 "));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(80)));
        let later = now + Duration::from_secs(3600);
        assert_eq!(retry_after(&h, later), Some(Duration::ZERO));
        for garbage in ["soon", "-5", "1.5", ""] {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static(garbage));
            assert_eq!(retry_after(&h, SystemTime::now()), None, "{garbage:?}");
        }
    }
}
