//! The admin listener: the status page (`/`), `/healthz`, `/readyz` (why not ready, as JSON),
//! `/metrics`, `/stats`, `/config`, `/log`, `/accounts/{id}`, and the controls `POST /purge`
//! and `POST /reload`.

use std::future::Future;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{collect_limited, Body};
use crate::error::json_response;
use crate::logging::{self, FilterError};
use crate::purge::PurgeError;
use crate::state::State;
use crate::store::StoreStatus;

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let state = Arc::clone(&state);
        let conn = builder
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, std::convert::Infallible>(answer(&state, req).await) }
                }),
            )
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

/// Routes one admin request.
pub async fn answer(state: &State, req: Request<Incoming>) -> Response<Body> {
    // Probes need no secret, and the page at / is static: it asks for the token itself.
    let open = matches!(req.uri().path(), "/healthz" | "/readyz" | "/");
    if !open && !authorized(state, &req) {
        let mut resp = json_response(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"admin token required: Authorization: Bearer <[admin] token>"}"#.into(),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mono-proxy admin\""),
        );
        return resp;
    }
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    let path = req.uri().path().to_string();
    match (path.as_str(), read) {
        ("/", true) => crate::status::page(),
        ("/healthz", true) => json_response(StatusCode::OK, r#"{"status":"ok"}"#.into()),
        ("/readyz", true) => readiness(state),
        ("/stats", true) => {
            json_response(StatusCode::OK, crate::stats::snapshot(state).to_string())
        }
        ("/config", true) => json_response(
            StatusCode::OK,
            crate::config::to_json(&state.config.load()).to_string(),
        ),
        ("/metrics", true) => metrics(state),
        ("/log", true) => match logging::filter() {
            Some(f) => json_response(StatusCode::OK, json!({ "filter": f }).to_string()),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                &FilterError::NotReloadable.to_string(),
            ),
        },
        ("/log", false) if req.method() == Method::PUT => put_log(req).await,
        ("/purge", false) if req.method() == Method::POST => purge(state, req).await,
        ("/reload", false) if req.method() == Method::POST => reload(state),
        (p, true) if p.starts_with("/accounts/") => {
            let id = &p["/accounts/".len()..];
            if !crate::route::is_valid_id(id) {
                return error(StatusCode::BAD_REQUEST, "not an account id");
            }
            json_response(
                StatusCode::OK,
                crate::account_view::view(state, id).await.to_string(),
            )
        }
        ("/" | "/healthz" | "/readyz" | "/stats" | "/config" | "/metrics", false) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "GET only")
        }
        ("/log", false) => error(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT"),
        ("/purge" | "/reload", _) => error(StatusCode::METHOD_NOT_ALLOWED, "POST only"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Largest admin request body (a log filter, a purge).
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// `PUT /log` with a tracing filter as the body: applied to every later event.
async fn put_log(req: Request<Incoming>) -> Response<Body> {
    let body = match collect_limited(req.into_body(), MAX_ADMIN_BODY).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the filter must be UTF-8 text");
    };
    match logging::set_filter(text) {
        Ok(()) => json_response(StatusCode::OK, json!({ "filter": text.trim() }).to_string()),
        Err(e @ FilterError::NotReloadable) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// `POST /purge` with a JSON order.
async fn purge(state: &State, req: Request<Incoming>) -> Response<Body> {
    let body = match collect_limited(req.into_body(), MAX_ADMIN_BODY).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match crate::purge::run(state, &body).await {
        Ok(answer) => json_response(StatusCode::OK, answer.to_string()),
        Err(e @ PurgeError::BadOrder(_)) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ PurgeError::Window(_)) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

/// `POST /reload`: what changed, or every problem found (and nothing changed).
fn reload(state: &State) -> Response<Body> {
    match crate::reload::reload(state, "POST /reload") {
        Ok(done) => json_response(
            StatusCode::OK,
            json!({ "reloaded": true, "changed": done.changed, "restart_required": done.restart_required, "log_filter_applied": done.log_filter_applied }).to_string(),
        ),
        Err(e) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "reloaded": false, "error": "the config was not reloaded; the running config stays", "problems": e.0 }).to_string(),
        ),
    }
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, json!({ "error": message }).to_string())
}

/// The OpenMetrics exposition; gauges that mirror state are read now, so never stale.
fn metrics(state: &State) -> Response<Body> {
    let degraded = matches!(state.store.status(), StoreStatus::Degraded(_));
    state.metrics.set_store_degraded(degraded);
    state.metrics.sync_store_errors(state.store.errors());
    let text = state
        .metrics
        .encode(state.cache.entry_count(), state.cache.weighted_size());
    let mut resp = Response::new(Body::full(text));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// Whether the request may use the admin API: no token configured, or its bearer token
/// (compared in constant time).
fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let secrets = state.secrets.load();
    let Some(token) = &secrets.admin else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|presented| token.matches(presented))
}

/// Ready unless draining or the shared store is down in fail-closed mode; says why as JSON.
fn readiness(state: &State) -> Response<Body> {
    let mut reasons: Vec<String> = Vec::new();
    if state.is_draining() {
        reasons.push("draining: shutting down".into());
    }
    let store = state.store.status();
    let store_label = match &store {
        StoreStatus::Local => "memory".to_string(),
        StoreStatus::Shared => "ok".to_string(),
        StoreStatus::Degraded(why) => {
            if !state.config.load().store.fail_open {
                reasons.push(format!("store degraded (fail-closed): {why}"));
            }
            format!("degraded: {why}")
        }
    };
    let ready = reasons.is_empty();
    let body = serde_json::json!({
        "ready": ready,
        "reasons": reasons,
        "store": store_label,
        "draining": state.is_draining(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, body.to_string())
}
