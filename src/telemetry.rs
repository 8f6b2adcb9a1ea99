//! Traces: the W3C trace context every request carries on to Mono (`traceparent`,
//! `tracestate`), and, when `[telemetry] otlp_endpoint` is set, the spans of each request's
//! phases exported over OTLP/HTTP (protobuf).
//!
//! Phase spans are `TRACE` spans under the target [`SPANS`]: only the exporting layer enables
//! them, so with export off no subscriber is interested and building one costs a relaxed load.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;
use crate::headers::Noted;

/// The target of the phase spans (request, classify, cache lookup, upstream call, …).
pub const SPANS: &str = "mono_proxy::span";

/// W3C `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// W3C's limit on `tracestate` (512 characters).
const MAX_TRACESTATE: usize = 512;

/// Set once spans are exported.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (and so worth reading contexts from).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
}

/// The trace one request belongs to, carried to every upstream call it causes: the caller's
/// (`traceparent`), or one started here. Also where those calls note what Mono answered, for
/// the request's access log line (a fill runs detached, but carries the leader's trace).
#[derive(Debug, Clone, Default)]
pub struct Trace {
    trace_id: u128,
    /// The span upstream calls hang from: the request's span when exporting, else the caller's.
    parent_id: u64,
    sampled: bool,
    state: Option<HeaderValue>,
    /// Where this request's upstream calls note Mono's answer; none for background work.
    seen: Option<Arc<Seen>>,
}

/// The last upstream answer of a request: status (0: none) and time, in µs.
#[derive(Debug, Default)]
struct Seen {
    status: AtomicU64,
    micros: AtomicU64,
}

impl Trace {
    /// The trace of a request whose span is `span`: with spans exported, the span joins the
    /// caller's trace (`traceparent`) and the trace is the span's; else the caller's trace,
    /// else a new one. The caller's `tracestate` goes with the caller's trace only.
    pub fn of_request(noted: &Noted<'_>, span: &Span) -> Trace {
        let caller = noted
            .traceparent
            .and_then(|v| parse_traceparent(v.as_bytes()))
            .map(|(trace_id, parent_id, flags)| Trace {
                trace_id,
                parent_id,
                sampled: flags & 1 == 1,
                // W3C's limit: a longer list may be dropped whole.
                state: noted
                    .tracestate
                    .filter(|v| v.len() <= MAX_TRACESTATE)
                    .cloned(),
                seen: None,
            });
        let mut trace = match caller {
            Some(caller) if exporting() => {
                let _ = span.set_parent(caller.context());
                match Trace::of_span(span) {
                    Some(own) => Trace {
                        state: caller.state,
                        ..own
                    },
                    None => caller,
                }
            }
            Some(caller) => caller,
            None if exporting() => Trace::of_span(span).unwrap_or_else(Trace::root),
            None => Trace::root(),
        };
        trace.seen = Some(Arc::default());
        trace
    }

    /// The trace an exported span is in, with the span as the parent of what follows.
    fn of_span(span: &Span) -> Option<Trace> {
        let sc = span_context(span)?;
        Some(Trace {
            trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
            parent_id: u64::from_be_bytes(sc.span_id().to_bytes()),
            sampled: sc.is_sampled(),
            state: None,
            seen: None,
        })
    }

    /// A trace started here, for work no request carries.
    pub fn root() -> Trace {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        Trace {
            trace_id: (u128::from(hi) << 64) | u128::from(lo),
            ..Trace::default()
        }
    }

    /// The same trace for work the request does not wait for (a refresh in the background):
    /// what that work sees of Mono is not the request's to log.
    pub fn detached(&self) -> Trace {
        Trace {
            seen: None,
            ..self.clone()
        }
    }

    /// Notes an upstream answer (its status, 0 for none, and how long it took).
    pub fn saw_upstream(&self, status: u16, took: Duration) {
        if let Some(seen) = &self.seen {
            seen.micros
                .store(took.as_micros() as u64, Ordering::Relaxed);
            seen.status.store(u64::from(status), Ordering::Relaxed);
        }
    }

    /// The last upstream answer noted: status (0 when none came) and ms, if a call was made.
    pub fn upstream(&self) -> Option<(u16, f64)> {
        let seen = self.seen.as_ref()?;
        let micros = seen.micros.load(Ordering::Relaxed);
        let status = seen.status.load(Ordering::Relaxed) as u16;
        (micros > 0 || status > 0).then(|| (status, micros as f64 / 1000.0))
    }

    /// The trace id as 32 hex digits (logs).
    pub fn id(&self) -> TraceIdText {
        TraceIdText(self.trace_id)
    }

    /// The context a span started away from the request (a detached fill, a job poll) takes
    /// as its parent, so it stays in the request's trace.
    pub fn context(&self) -> Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let state = self
            .state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(self.trace_id),
            SpanId::from(self.parent_id),
            flags,
            true,
            state,
        ))
    }

    /// Makes `span` a child of this trace's request span, when spans are exported.
    pub fn adopt(&self, span: &Span) {
        if exporting() && self.parent_id != 0 {
            let _ = span.set_parent(self.context());
        }
    }

    /// Sets `traceparent` (and the caller's `tracestate`) on an upstream call made under
    /// `span`: the span's own id when exported, else a new id for this hop.
    pub fn inject(&self, span: &Span, headers: &mut HeaderMap) {
        let (trace_id, span_id, sampled) = match Trace::of_span(span) {
            // Exported: the call's own span, in the trace that span is in.
            Some(own) => (own.trace_id, own.parent_id, own.sampled),
            // Not exported: the caller's parent goes on unchanged (the proxy adds no span to
            // its trace); a trace started here gets an id for the hop.
            None => {
                let trace_id = if self.trace_id == 0 {
                    Trace::root().trace_id
                } else {
                    self.trace_id
                };
                let span_id = match self.parent_id {
                    0 => uuid::Uuid::new_v4().as_u64_pair().0 | 1,
                    id => id,
                };
                (trace_id, span_id, self.sampled)
            }
        };
        // `00-<trace>-<span>-<flags>`, written by hand: `format!` of a u128 as hex costs more
        // than the rest of the header work of a passthrough.
        let mut value = [b'-'; 55];
        value[..2].copy_from_slice(b"00");
        hex_into(&mut value[3..35], trace_id);
        hex_into(&mut value[36..52], u128::from(span_id));
        value[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            headers.insert(TRACEPARENT.clone(), v);
        }
        match &self.state {
            Some(state) => headers.insert(TRACESTATE.clone(), state.clone()),
            None => headers.remove(&TRACESTATE),
        };
    }
}

/// Writes the low `out.len()` nibbles of `v` as lowercase hex, most significant first.
fn hex_into(out: &mut [u8], mut v: u128) {
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Names an exported span once its name is known (`GET balance` once the route is): a span
/// already started keeps the name it began with otherwise.
pub fn rename(span: &Span, name: String) {
    if exporting() {
        span.context().span().update_name(name);
    }
}

/// The exported context of `span`, when spans are exported and it has one.
pub fn span_context(span: &Span) -> Option<SpanContext> {
    if !exporting() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Links `span` to another span (a waiter to the call it waited on).
pub fn link(span: &Span, to: SpanContext) {
    if exporting() {
        span.add_link(to);
    }
}

/// A trace id printed as 32 lowercase hex digits, without allocating.
#[derive(Debug, Clone, Copy)]
pub struct TraceIdText(u128);

impl fmt::Display for TraceIdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2): version 00 exactly, a later
/// version with at least those fields; all-zero ids and version ff are invalid.
fn parse_traceparent(v: &[u8]) -> Option<(u128, u64, u8)> {
    let text = v.trim_ascii();
    if text.len() < 55 {
        return None;
    }
    let version = lower_hex(&text[..2])?;
    if version == 0xff || (version == 0 && text.len() != 55) {
        return None;
    }
    if version != 0 && text.get(55).is_some_and(|b| *b != b'-') {
        return None;
    }
    if text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
        return None;
    }
    let trace_id = lower_hex(&text[3..35])?;
    let parent_id = lower_hex(&text[36..52])? as u64;
    let flags = lower_hex(&text[53..55])? as u8;
    (trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags))
}

/// The value of lowercase hex digits (the spec's only form; at most 32 of them).
fn lower_hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u128::from(d))
    })
}

/// The span exporter's pipeline: flushed and stopped by [`Exporter::shutdown`].
pub struct Exporter {
    provider: SdkTracerProvider,
    /// How long the last export may take at shutdown.
    flush: Duration,
}

impl Exporter {
    /// Builds the OTLP/HTTP exporter of `cfg` (its endpoint must be set). The exporter's calls
    /// run on the current tokio runtime.
    pub fn new(
        cfg: &TelemetryConfig,
    ) -> Result<(Exporter, opentelemetry_sdk::trace::Tracer), TelemetryError> {
        let endpoint = cfg
            .otlp_endpoint
            .clone()
            .ok_or_else(|| TelemetryError::Exporter("no otlp_endpoint".into()))?;
        let client = OnRuntime::new(cfg.export_timeout);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .with_timeout(cfg.export_timeout)
            .with_http_client(client)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(cfg.export_interval)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                cfg.sampling_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("mono-proxy");
        EXPORTING.store(true, Ordering::Relaxed);
        let flush = cfg.export_timeout + Duration::from_secs(1);
        Ok((Exporter { provider, flush }, tracer))
    }

    /// Sends what is still buffered and stops exporting.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(self.flush) {
            tracing::debug!(error = %e, "span exporter shutdown");
        }
    }
}

/// The OTLP client: hyper (with rustls for `https` collectors) driven on the proxy's tokio
/// runtime, because the batch processor calls it from a thread of its own, outside any runtime.
#[derive(Debug, Clone)]
struct OnRuntime {
    inner: opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    runtime: tokio::runtime::Handle,
}

impl OnRuntime {
    fn new(timeout: Duration) -> OnRuntime {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        OnRuntime {
            inner: opentelemetry_http::hyper::HyperClient::new(connector, timeout, None),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl HttpClient for OnRuntime {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let inner = self.inner.clone();
        let call = self
            .runtime
            .spawn(async move { inner.send_bytes(request).await });
        Box::pin(async move { call.await.map_err(|e| Box::new(e) as HttpError)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_follows_the_w3c_rules() {
        let ok = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, p, f) = parse_traceparent(ok).unwrap();
        assert_eq!(format!("{t:032x}"), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(format!("{p:016x}"), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[test]
    fn an_upstream_call_keeps_the_trace_and_gets_its_own_span_id() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        incoming.insert(&TRACESTATE, HeaderValue::from_static("vendor=x"));
        let trace = Trace::of_request(&Noted::scan(&incoming), &Span::none());
        assert_eq!(trace.id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut out = HeaderMap::new();
        trace.inject(&Span::none(), &mut out);
        let sent = out.get(&TRACEPARENT).unwrap().to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert!(sent.ends_with("-01"));
        assert!(
            sent.contains("-00f067aa0ba902b7-"),
            "not exporting, the caller's parent goes on unchanged: {sent}"
        );
        assert_eq!(out.get(&TRACESTATE).unwrap(), "vendor=x");
        // A caller's tracestate without a valid traceparent belongs to no trace sent on.
        let mut orphan = HeaderMap::new();
        orphan.insert(&TRACEPARENT, HeaderValue::from_static("00-bad"));
        orphan.insert(&TRACESTATE, HeaderValue::from_static("vendor=x"));
        let mut out = HeaderMap::new();
        Trace::of_request(&Noted::scan(&orphan), &Span::none()).inject(&Span::none(), &mut out);
        assert!(out.get(&TRACESTATE).is_none());
        assert!(out.get(&TRACEPARENT).is_some());
        let root = Trace::of_request(&Noted::default(), &Span::none());
        assert_ne!(root.id().to_string(), Trace::root().id().to_string());
    }
}
