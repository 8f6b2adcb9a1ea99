//! The request pipeline: classify → authorize → (cache | realtime | jobs | webhook | passthrough)
//! → upstream → respond. Infallible: every failure becomes a response in Mono's envelope.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::ClientKeyPolicy;
use crate::error::ProxyError;
use crate::headers::{self, CacheResult, MONO_SEC_KEY, REQUEST_ID, X_PROXY_TOKEN};
use crate::route::{self, Route};
use crate::state::{State, Tenant};
use crate::webhook::secret_matches;
use crate::{cache, jobs, realtime, webhook};

/// The proxy as a hyper service: a cheap clone over the shared state.
#[derive(Clone)]
pub struct Proxy {
    state: Arc<State>,
    activity: Arc<Activity>,
}

/// What one connection is doing, so the server can close connections that send nothing.
#[derive(Default)]
pub struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
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
}

/// Counts a request as in flight until its answer is ready (or it is cancelled).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
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
        }
    }

    /// The service for one new connection, with its own activity counters.
    pub fn for_connection(&self) -> (Proxy, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        let proxy = Proxy {
            state: Arc::clone(&self.state),
            activity: Arc::clone(&activity),
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
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(Arc::clone(&self.activity));
        Box::pin(async move {
            let resp = handle(state, req).await;
            drop(guard);
            Ok(resp)
        })
    }
}

/// What the pipeline produced, for the summary log line and metrics.
struct Outcome {
    class: &'static str,
    cache: Option<CacheResult>,
    error: Option<&'static str>,
}

/// Answers one request and records it (one summary event, one metric).
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let request_id = headers::request_id(req.headers());
    let method = req.method().clone();
    let uri = req.uri().clone();
    let mut outcome = Outcome {
        class: "invalid",
        cache: None,
        error: None,
    };
    let mut resp = match pipeline(&state, req, &request_id, &mut outcome).await {
        Ok(resp) => resp,
        Err(e) => {
            outcome.error = Some(e.kind());
            if e.status().is_server_error() {
                tracing::warn!(request_id = ?request_id, error = %e, "request failed");
            }
            e.into_response()
        }
    };
    resp.headers_mut().insert(REQUEST_ID, request_id.clone());
    let status = resp.status().as_u16();
    let cache_label = outcome.cache.map_or("none", CacheResult::label);
    state.metrics.request(outcome.class, cache_label, status);
    tracing::info!(
        target: "mono_proxy::access",
        request_id = request_id.to_str().unwrap_or("-"),
        method = %method,
        path = uri.path(),
        class = outcome.class,
        status,
        cache = cache_label,
        error = outcome.error.unwrap_or(""),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// classify → authorize → the class's phase.
async fn pipeline(
    state: &Arc<State>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let route = classify(state, &req)?;
    outcome.class = route.class();
    if route == Route::Webhook {
        return webhook::serve(state, req).await;
    }
    let tenant = authorize(state, &req)?;
    let query = req.uri().query();
    let (resp, result) = match &route {
        Route::Cached { account, kind } => {
            cache::serve(state, &tenant, account, *kind, query, request_id).await?
        }
        Route::Realtime { account, kind } => {
            realtime::serve(state, &tenant, account, *kind, query, request_id).await?
        }
        Route::JobStatus { account, job_id } => {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            jobs::serve(state, &tenant, account, job_id, pq, request_id).await?
        }
        Route::Webhook | Route::Passthrough => {
            return passthrough(state, &tenant, req, request_id).await;
        }
    };
    outcome.cache = Some(result);
    Ok(resp)
}

/// Decides the request class and refuses what must never be forwarded.
fn classify(state: &State, req: &Request<Incoming>) -> Result<Route, ProxyError> {
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
    route::classify(
        req.method(),
        uri,
        req.headers(),
        &state.config.webhook.path,
        &state.config.upstream.accept_hosts,
    )
}

/// Decides whose key the request uses: a client token's tenant, or the default one.
fn authorize(state: &State, req: &Request<Incoming>) -> Result<Tenant, ProxyError> {
    let secrets = state.secrets.load();
    let h = req.headers();
    if secrets.clients.is_empty() {
        if state.config.upstream.client_key == ClientKeyPolicy::Reject
            && h.contains_key(MONO_SEC_KEY)
        {
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
    secrets
        .clients
        .iter()
        .find(|c| secret_matches(presented, c.token.expose()))
        .map(|c| c.tenant.clone())
        .ok_or(ProxyError::Unauthorized("invalid client token"))
}

/// Passthrough: forwarded as-is with the key injected, streamed both ways, never cached.
async fn passthrough(
    state: &Arc<State>,
    tenant: &Tenant,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let limit = state.config.server.max_request_body;
    let (mut parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::PayloadTooLarge(limit));
    }
    parts.headers.remove(X_PROXY_TOKEN);
    if !state.secrets.load().clients.is_empty() {
        // The client token may travel as a bearer token; it is ours, not Mono's.
        parts.headers.remove(header::AUTHORIZATION);
    }
    state
        .upstream
        .prepare(&mut parts, &tenant.key, request_id)?;
    let body = if hyper::body::Body::is_end_stream(&body) {
        Body::empty()
    } else {
        Body::limited(body, limit)
    };
    let resp = state
        .timed_send(
            "passthrough",
            Request::from_parts(parts, body),
            state.config.upstream.timeout,
        )
        .await?;
    let (parts, body) = resp.into_parts();
    Ok(Response::from_parts(parts, Body::Stream(body)))
}
