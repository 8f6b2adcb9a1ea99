//! The request pipeline: classify → authorize → (cached read | realtime | job status | webhook |
//! passthrough) → upstream → respond. Infallible: every failure becomes a response in Mono's
//! envelope, and every request ends in one summary event and one metric.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::{ClientKeyPolicy, Config};
use crate::error::ProxyError;
use crate::headers::{
    self, declared_length, CacheResult, Noted, MONO_SEC_KEY, REQUEST_ID, X_PROXY_TOKEN,
};
use crate::limits::ClientLimiter;
use crate::recent_errors::RecentError;
use crate::request::context::{AccountRead, JobRead};
use crate::request::directives::Directives;
use crate::request::passthrough::Named;
use crate::request::{cached_read, job_status, limits, passthrough, realtime, webhook};
use crate::route::{self, Class, Rules};
use crate::state::State;
use crate::telemetry::{self, Trace, SPANS};
use crate::tenant::Tenant;
use tracing::Instrument;

/// The proxy as a hyper service: a cheap clone over the shared state.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<State>,
    activity: Arc<Activity>,
    /// The connection's client address (access log).
    peer: Option<SocketAddr>,
}

/// What one connection is doing, so the server can close connections that send nothing, or
/// only part of a request head.
#[derive(Default)]
pub struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// Socket reads that brought bytes, so far.
    reads: AtomicU64,
    /// `reads` when the last request began: more since then, and no new request, is a head
    /// still arriving.
    reads_at_start: AtomicU64,
    /// The connection speaks HTTP/2, whose frames (pings, window updates) are no request head.
    h2: AtomicBool,
}

impl Activity {
    /// Requests started on the connection so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Notes a socket read that brought bytes.
    pub fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether bytes came after the last request began on an HTTP/1 connection: the next
    /// request's head has started arriving.
    pub fn head_pending(&self) -> bool {
        !self.h2.load(Ordering::Relaxed)
            && self.reads.load(Ordering::Relaxed) != self.reads_at_start.load(Ordering::Relaxed)
    }
}

/// Counts a request as in flight until its answer is ready (or it is cancelled).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Proxy {
    /// A service over `state`.
    pub fn new(state: Arc<State>) -> Proxy {
        Proxy {
            state,
            activity: Arc::default(),
            peer: None,
        }
    }

    /// The service for one new connection from `peer`, with its own activity counters.
    pub fn for_connection(&self, peer: SocketAddr) -> (Proxy, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        let proxy = Proxy {
            state: Arc::clone(&self.state),
            activity: Arc::clone(&activity),
            peer: Some(peer),
        };
        (proxy, activity)
    }
}

impl hyper::service::Service<Request<Incoming>> for Proxy {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let state = Arc::clone(&self.state);
        let activity = &self.activity;
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity
            .reads_at_start
            .store(activity.reads.load(Ordering::Relaxed), Ordering::Relaxed);
        if req.version() == Version::HTTP_2 {
            activity.h2.store(true, Ordering::Relaxed);
        }
        let guard = Busy(Arc::clone(&self.activity));
        let peer = self.peer;
        Box::pin(async move {
            let resp = handle(state, req, peer).await;
            drop(guard);
            Ok(resp)
        })
    }
}

/// What the pipeline produced, for the summary event and metrics.
struct Summary {
    class: &'static str,
    route: &'static str,
    /// The client's configured name, or `anonymous` (no tokens configured, none valid, or
    /// Mono's webhooks).
    client: &'static str,
    cache: Option<CacheResult>,
    error: Option<&'static str>,
}

/// Answers one request and records it (one summary event, one metric, one span when spans are
/// exported).
pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Response<Body> {
    let started = Instant::now();
    let noted = Noted::scan(req.headers());
    let request_id = headers::request_id(noted.request_id);
    let method = req.method().clone();
    let uri = req.uri().clone();
    let version = req.version();
    let span = tracing::trace_span!(
        target: SPANS,
        "request",
        otel.kind = "server",
        http.request.method = %method,
        url.path = uri.path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        mono_proxy.cache = tracing::field::Empty,
        mono_proxy.client = tracing::field::Empty,
    );
    let trace = Trace::of_request(&noted, &span);
    let user_agent = noted.user_agent.cloned();
    // The declared length; 0 for no body, -1 for one streamed without a length.
    let bytes_in = match declared_length(noted.content_length) {
        Some(n) => n as i64,
        None if hyper::body::Body::is_end_stream(req.body()) => 0,
        None => -1,
    };
    let mut summary = Summary {
        class: "invalid",
        route: "other",
        client: ANONYMOUS,
        cache: None,
        error: None,
    };
    // Instrumenting moves the whole pipeline future (several KB) into a wrapper: only when
    // the span is exported, and then boxed so the move is a pointer's.
    let answered = if span.is_disabled() {
        pipeline(&state, req, &request_id, &trace, &mut summary).await
    } else {
        Box::pin(pipeline(&state, req, &request_id, &trace, &mut summary))
            .instrument(span.clone())
            .await
    };
    let mut resp = match answered {
        Ok(resp) => resp,
        Err(e) => {
            summary.error = Some(e.kind());
            if e.status().is_server_error() {
                tracing::warn!(request_id = ?request_id, error = %e, "request failed");
            }
            e.into_response()
        }
    };
    resp.headers_mut().insert(REQUEST_ID, request_id.clone());
    let status = resp.status().as_u16();
    if let Some(kind) = summary.error {
        state.recent_errors.push(RecentError {
            at: crate::error::timestamp(),
            status,
            kind,
            class: summary.class,
            route: summary.route,
            client: summary.client,
        });
    }
    let cache_label = summary.cache.map_or("none", CacheResult::label);
    let took = started.elapsed();
    state.metrics.request(
        summary.class,
        summary.route,
        summary.client,
        cache_label,
        status,
        took,
    );
    if !span.is_disabled() {
        telemetry::rename(&span, format!("{method} {}", summary.route));
        span.record("http.route", summary.route);
        span.record("http.response.status_code", status);
        span.record("mono_proxy.cache", cache_label);
        span.record("mono_proxy.client", summary.client);
    }
    let (upstream_status, upstream_ms) = trace.upstream().unwrap_or((0, 0.0));
    // Exact for buffered answers and declared lengths; -1 for a body streamed without one.
    let bytes_out = hyper::body::Body::size_hint(resp.body())
        .exact()
        .or_else(|| declared_length(resp.headers().get(header::CONTENT_LENGTH)))
        .map_or(-1, |n| n as i64);
    tracing::info!(
        target: "mono_proxy::access",
        request_id = request_id.to_str().unwrap_or("-"),
        trace_id = %trace.id(),
        peer = %Peer(peer),
        protocol = ?version,
        method = %method,
        path = uri.path(),
        class = summary.class,
        route = summary.route,
        client = summary.client,
        status,
        cache = cache_label,
        error = summary.error.unwrap_or(""),
        bytes_in,
        bytes_out,
        upstream_status,
        upstream_ms,
        duration_ms = took.as_secs_f64() * 1000.0,
        user_agent = user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
        "request"
    );
    resp
}

/// A client address for the log, `-` when unknown, without allocating.
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("-"),
        }
    }
}

/// classify → authorize → the class's step. Every class but the cached read is boxed, so a
/// cache hit's future (allocated and moved per request) stays small.
async fn pipeline(
    state: &Arc<State>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    trace: &Trace,
    summary: &mut Summary,
) -> Result<Response<Body>, ProxyError> {
    // The config is read once for the request's own decisions: cheaper, and a reload cannot
    // split one request between two configs.
    let (class, policy) = {
        let _phase = tracing::trace_span!(target: SPANS, "classify").entered();
        let config = state.config.load();
        (classify(state, &config, &req)?, Policy::of(&config))
    };
    summary.class = class.label();
    summary.route = class.route_name();
    let query = req.uri().query();
    let target = || {
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    };
    let (resp, result) = match class {
        // Mono authenticates its webhooks with their own secret; no client token applies.
        Class::Webhook => return Box::pin(webhook::serve(state, req, trace)).await,
        Class::Passthrough { route, account } => {
            let tenant = authorize(state, policy.client_key, &req, summary)?;
            let limiter = limit(state, summary.client).await?;
            let named = route.as_ref().map(|r| Named {
                route: r.name,
                account: account.as_deref().unwrap_or_default(),
            });
            let to = passthrough::To {
                tenant: &tenant,
                limiter: limiter.as_deref(),
                named,
                trace,
            };
            return Box::pin(passthrough::serve(state, to, req, request_id)).await;
        }
        Class::Cached {
            route,
            account,
            params,
        } => {
            let tenant = authorize(state, policy.client_key, &req, summary)?;
            let limiter = limit(state, summary.client).await?;
            let directives = if policy.request_directives {
                Directives::parse(req.headers())
            } else {
                Directives::default()
            };
            // Set in place: the context is a few hundred bytes, and each `with_*` call moved it.
            let mut read = AccountRead::new(
                tenant,
                account,
                route,
                &params,
                target(),
                request_id.clone(),
            );
            read.directives = directives;
            read.limiter = limiter;
            read.trace = trace.clone();
            cached_read::serve(state, &read).await?
        }
        Class::Realtime { route, account } => {
            let tenant = authorize(state, policy.client_key, &req, summary)?;
            let limiter = limit(state, summary.client).await?;
            let mut read =
                AccountRead::new(tenant, account, route, "", target(), request_id.clone());
            read.limiter = limiter;
            read.trace = trace.clone();
            Box::pin(realtime::serve(state, &read)).await?
        }
        Class::JobStatus { account, job_id } => {
            let tenant = authorize(state, policy.client_key, &req, summary)?;
            limit(state, summary.client).await?;
            let read = JobRead {
                tenant,
                account,
                job_id,
                query: query.map(str::to_string),
                request_id: request_id.clone(),
                trace: trace.clone(),
            };
            Box::pin(job_status::serve(state, &read)).await?
        }
    };
    summary.cache = Some(result);
    Ok(resp)
}

/// The client's `rate` spent on this request; its limiter, for the class's upstream permits
/// and quota (`None`: a client with no limits, or no client).
async fn limit(
    state: &State,
    client: &'static str,
) -> Result<Option<Arc<ClientLimiter>>, ProxyError> {
    let Some(limiter) = state.limiters.load().get(client).cloned() else {
        return Ok(None);
    };
    Box::pin(limits::admit(state, &limiter)).await?;
    Ok(Some(limiter))
}

/// Decides the request class and refuses what must never be forwarded.
fn classify(state: &State, config: &Config, req: &Request<Incoming>) -> Result<Class, ProxyError> {
    check_host(req)?;
    // Every HTTP/2 request carries `:authority` (the proxy's own address, what `Host` is in
    // HTTP/1), so hyper puts one in every h2 URI. Only an HTTP/1 target with an authority is
    // absolute-form (`HTTPS_PROXY` clients); checking h2's would refuse all h2 traffic with 403.
    // The upstream origin comes from config either way, so ignoring it cannot redirect anything.
    let origin_form;
    let uri = if req.version() >= Version::HTTP_2 && req.method() != Method::CONNECT {
        origin_form = Uri::from(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        &origin_form
    } else {
        req.uri()
    };
    let routes = state.routes.load();
    let rules = Rules {
        webhook_path: &config.webhook.path,
        accept_hosts: &config.upstream.accept_hosts,
        routes: &routes,
    };
    route::classify(req.method(), uri, req.headers(), &rules)
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`, and no request carries two.
/// A proxy that picks one of two Hosts disagrees with whoever picks the other.
fn check_host(req: &Request<Incoming>) -> Result<(), ProxyError> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() == Version::HTTP_11) {
        return Err(ProxyError::BadRequest(
            "an HTTP/1.1 request needs exactly one Host header".into(),
        ));
    }
    Ok(())
}

/// The settings a request's steps read after classification.
#[derive(Clone, Copy)]
struct Policy {
    client_key: ClientKeyPolicy,
    request_directives: bool,
}

impl Policy {
    fn of(config: &Config) -> Policy {
        Policy {
            client_key: config.upstream.client_key,
            request_directives: config.cache.request_directives,
        }
    }
}

/// The client label of requests no configured client made.
const ANONYMOUS: &str = "anonymous";

/// Decides whose key the request uses: a client token's tenant, or the default one; and who
/// asked, for the log and metrics.
fn authorize(
    state: &State,
    client_key: ClientKeyPolicy,
    req: &Request<Incoming>,
    summary: &mut Summary,
) -> Result<Tenant, ProxyError> {
    let _phase = tracing::trace_span!(target: SPANS, "authorize").entered();
    let secrets = state.secrets.load();
    let h = req.headers();
    if secrets.clients.is_empty() {
        if client_key == ClientKeyPolicy::Reject && h.contains_key(MONO_SEC_KEY) {
            return Err(ProxyError::BadRequest(
                "do not send mono-sec-key to the proxy: it injects the key itself".into(),
            ));
        }
        return Ok(secrets.default.clone());
    }
    // SDKs always send mono-sec-key, so an app may carry its proxy token there.
    let presented = h
        .get(X_PROXY_TOKEN)
        .map(HeaderValue::as_bytes)
        .or_else(|| {
            h.get(header::AUTHORIZATION)
                .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        })
        .or_else(|| h.get(MONO_SEC_KEY).map(HeaderValue::as_bytes));
    let Some(presented) = presented else {
        return Err(ProxyError::Unauthorized("a client token is required"));
    };
    let client = secrets
        .client(presented)
        .ok_or(ProxyError::Unauthorized("invalid client token"))?;
    summary.client = client.label;
    Ok(client.tenant.clone())
}
