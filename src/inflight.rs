//! Work in flight that concurrent requests share: cache fills and realtime calls.
//!
//! The tables live here, below the request classes, with the values their waiters receive, so
//! the state can hold them without knowing the classes that lead and join the flights.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry::trace::SpanContext;

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};

use crate::body::Body;
use crate::cache::CachedBody;
use crate::error::ProxyError;
use crate::headers::{set_cache_status, CacheResult};
use crate::singleflight::Flights;
use crate::telemetry;
use crate::upstream::Fetched;

/// What a fill (an upstream fetch for a cache miss) produced, shared by its waiters.
#[derive(Debug, Clone)]
pub enum Filled {
    /// A 200, now cached.
    Stored(Arc<CachedBody>),
    /// A body another replica fetched, taken from the shared tier and now cached here.
    Shared(Arc<CachedBody>),
    /// Anything else, passed through uncached.
    Uncacheable(Arc<Fetched>),
}

/// A realtime answer, buffered so every waiter of a flight gets the same bytes.
#[derive(Debug, Clone)]
pub struct RealtimeAnswer {
    /// Status to answer with.
    pub status: StatusCode,
    /// Headers to answer with (Mono's, or synthesized from the record).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Whether this answer came from a realtime call to Mono.
    pub forwarded: bool,
    /// The normalised path and query it answers (`transactions?limit=2&page=2`): a flight is
    /// per endpoint, so a waiter that asked for another page must not take this body.
    pub path: String,
}

impl RealtimeAnswer {
    /// The answer as a response labelled with how it was produced.
    pub fn into_response(self, result: CacheResult) -> Response<Body> {
        let mut resp = Response::new(Body::full(self.body));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        set_cache_status(resp.headers_mut(), result, None);
        resp
    }
}

/// The flights in progress, keyed by what they fetch.
#[derive(Default)]
pub struct InFlight {
    /// Cache fills, keyed by `tenant:account/path`.
    pub fills: Arc<Flights<String, Result<Filled, ProxyError>>>,
    /// Realtime calls, keyed by `tenant:account:kind`.
    pub realtime: Arc<Flights<String, Result<RealtimeAnswer, ProxyError>>>,
    /// The span of each flight's leader, while spans are exported, so a waiter's span links
    /// to the call it waited on.
    pub leaders: Leaders,
}

/// A leader's entry in [`Leaders`], removed on drop unless a later leader replaced it.
pub struct Led<'a> {
    leaders: &'a Leaders,
    key: String,
    span_id: opentelemetry::trace::SpanId,
}

impl Drop for Led<'_> {
    fn drop(&mut self) {
        let mut map = self.leaders.map();
        if map
            .get(&self.key)
            .is_some_and(|cx| cx.span_id() == self.span_id)
        {
            map.remove(&self.key);
        }
    }
}

/// The exported span leading each flight, by flight key.
#[derive(Default)]
pub struct Leaders(Mutex<HashMap<String, SpanContext>>);

impl Leaders {
    /// The leader of `key` is `span` for as long as the returned guard lives (dropped with the
    /// leader's work, however it ends); nothing when `span` is not exported.
    pub fn lead<'a>(&'a self, key: String, span: &tracing::Span) -> Option<Led<'a>> {
        let cx = telemetry::span_context(span)?;
        let span_id = cx.span_id();
        self.map().insert(key.clone(), cx);
        Some(Led {
            leaders: self,
            key,
            span_id,
        })
    }

    /// The span leading the flight of `key` now, if known (looked up before joining it).
    pub fn leader(&self, key: &str) -> Option<SpanContext> {
        if !telemetry::exporting() {
            return None;
        }
        self.map().get(key).cloned()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, SpanContext>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
