//! The upstream client: rustls, HTTP/1.1 and h2 by ALPN, key injection, timeouts, and the
//! metrics of every call made to Mono. Calls to Mono go through [`pool`], whose HTTP/1
//! connections are driven by the request using them; webhook relays (any host) through
//! hyper-util's pooled client.

mod conn_waker;
pub mod pool;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::{collect_limited, Body, CollectError};
use crate::config::{Secret, UpstreamConfig};
use crate::error::ProxyError;
use crate::headers::{strip_hop_by_hop, MONO_SEC_KEY, REQUEST_ID};
use crate::metrics::Metrics;
use crate::telemetry::{Trace, SPANS};
use tracing::{Instrument, Span};

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// `ca_file` cannot be read.
    #[error("cannot read ca_file {path}: {source}")]
    CaFileUnreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `ca_file` holds something that is not a usable certificate.
    #[error("ca_file {path}: {reason}")]
    CaFileInvalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the TLS settings.
    #[error("tls setup: {0}")]
    Tls(#[from] rustls::Error),
    /// `base_url` names no host usable in `Host`.
    #[error("upstream base_url has no usable host")]
    NoHost,
}

/// A response read fully into memory (for the cache and for answers shared by waiters).
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Upstream status.
    pub status: StatusCode,
    /// Upstream end-to-end headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Fetched {
    /// Turns the buffered answer into a response (bytes shared, not copied).
    pub fn to_response(&self) -> Response<Body> {
        let mut resp = Response::new(Body::full(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp
    }
}

/// The upstream origin and the pooled clients that reach it and the relay targets.
#[derive(Clone)]
pub struct Upstream {
    /// Mono's connections.
    pool: Arc<pool::Pool<Body>>,
    /// Relay targets' connections.
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    max_response_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// Builds the client from config: webpki roots plus the optional `ca_file`; every call
    /// made through it is counted in `metrics`.
    pub fn new(
        cfg: &UpstreamConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, UpstreamSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &cfg.ca_file {
            let invalid = |reason: String| UpstreamSetupError::CaFileInvalid {
                path: path.clone(),
                reason,
            };
            let pem =
                std::fs::read(path).map_err(|source| UpstreamSetupError::CaFileUnreadable {
                    path: path.clone(),
                    source,
                })?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| invalid(e.to_string()))?;
                roots.add(cert).map_err(|e| invalid(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(invalid("holds no certificate".into()));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let pool = pool::Pool::new(
            connector.clone(),
            cfg.pool_max_idle_per_host,
            cfg.pool_idle_timeout,
            cfg.base_url.scheme() == Some(&Scheme::HTTPS),
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(connector);
        let scheme = cfg.base_url.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = cfg
            .base_url
            .authority()
            .cloned()
            .ok_or(UpstreamSetupError::NoHost)?;
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|_| UpstreamSetupError::NoHost)?;
        Ok(Upstream {
            pool,
            client,
            scheme,
            authority,
            host,
            max_response_bytes: cfg.max_response_bytes,
            metrics,
        })
    }

    /// The upstream URI for a path and query; the origin always comes from config.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, ProxyError> {
        let pq: PathAndQuery = path_and_query
            .parse()
            .map_err(|_| ProxyError::BadRequest("invalid request target".into()))?;
        self.uri_of(pq)
    }

    /// The upstream URI for a path and query already parsed (a client's, not parsed again).
    fn uri_of(&self, pq: PathAndQuery) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::Internal(format!("building upstream uri: {e}")))
    }

    /// Rewrites a client request head for the upstream: target, `Host`, key, hop-by-hop, id.
    pub fn prepare(
        &self,
        parts: &mut Parts,
        key: &Secret,
        request_id: &HeaderValue,
    ) -> Result<(), ProxyError> {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = self.uri_of(pq)?;
        // The upstream speaks whatever version ALPN picks; the client's version does not carry over.
        parts.version = http::Version::HTTP_11;
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        headers.remove(header::HOST);
        headers.insert(header::HOST, self.host.clone());
        headers.insert(MONO_SEC_KEY, key_value(key)?);
        headers.insert(REQUEST_ID, request_id.clone());
        Ok(())
    }

    /// A bodiless GET to the upstream carrying the key and request id.
    pub fn get(
        &self,
        path_and_query: &str,
        key: &Secret,
        request_id: &HeaderValue,
        realtime: bool,
    ) -> Result<Request<Body>, ProxyError> {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri(path_and_query)?;
        let h = req.headers_mut();
        h.insert(header::HOST, self.host.clone());
        h.insert(MONO_SEC_KEY, key_value(key)?);
        h.insert(REQUEST_ID, request_id.clone());
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if realtime {
            h.insert("x-realtime", HeaderValue::from_static("true"));
        }
        Ok(req)
    }

    /// Sends a request for a request class and returns the response head within `timeout`,
    /// counting the call in metrics; the body streams after.
    pub async fn send(
        &self,
        class: &'static str,
        req: Request<Body>,
        timeout: Duration,
        trace: &Trace,
    ) -> Result<Response<Body>, ProxyError> {
        let started = Instant::now();
        let result = self.call(req, timeout, trace, true).await;
        self.record(class, result.as_ref().map(Response::status), started, trace);
        result
    }

    /// Counts one call to Mono under its request class, with its status or error kind, and
    /// notes it in the request's trace for the access log.
    fn record(
        &self,
        class: &'static str,
        status: Result<StatusCode, &ProxyError>,
        started: Instant,
        trace: &Trace,
    ) {
        let took = started.elapsed();
        let (code, error) = match status {
            Ok(s) => (s.as_u16(), ""),
            // The client's body was too large or broken: the upstream did nothing wrong.
            Err(ProxyError::PayloadTooLarge(_) | ProxyError::BadRequest(_)) => return,
            Err(e) => (0, e.kind()),
        };
        trace.saw_upstream(code, took);
        self.metrics.upstream(class, code, error, took);
    }

    /// Sends a request that is not a call to Mono (a webhook relay): not counted as one, and
    /// its path (which may be a receiver's secret) stays out of the span.
    pub async fn relay(
        &self,
        req: Request<Body>,
        timeout: Duration,
        trace: &Trace,
    ) -> Result<Response<Body>, ProxyError> {
        self.call(req, timeout, trace, false).await
    }

    /// Sends one request (to Mono, or a relay) under an `upstream call` span, carrying the
    /// request's trace.
    async fn call(
        &self,
        mut req: Request<Body>,
        timeout: Duration,
        trace: &Trace,
        mono: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let span = tracing::trace_span!(
            target: SPANS,
            "upstream call",
            otel.kind = "client",
            http.request.method = %req.method(),
            server.address = req.uri().host().unwrap_or_default(),
            url.path = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        if mono {
            span.record("url.path", req.uri().path());
        }
        // A call made away from its request (a detached fill, a job poll) joins its trace.
        if Span::current().is_none() {
            trace.adopt(&span);
        }
        trace.inject(&span, req.headers_mut());
        let started = Instant::now();
        let sent = async {
            if mono {
                let resp = self.pool.send(req).await.map_err(Box::new)?;
                Ok(resp.map(Body::Upstream))
            } else {
                let resp = self.client.request(req).await.map_err(Box::new)?;
                Ok(resp.map(Body::Stream))
            }
        };
        let sent: Result<Result<Response<Body>, Box<dyn std::error::Error + Send + Sync>>, _> =
            tokio::time::timeout(timeout, sent)
                .instrument(span.clone())
                .await;
        let result = match sent {
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout.as_millis() as u64)),
            Ok(Err(e)) => Err(classify_client_error(&*e, started.elapsed(), timeout)),
            Ok(Ok(mut resp)) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
        };
        match &result {
            Ok(resp) => span.record("http.response.status_code", resp.status().as_u16()),
            Err(e) => span.record("error.type", e.kind()),
        };
        result
    }

    /// Sends a request for a request class and reads the whole answer within `timeout`,
    /// counting the call in metrics.
    pub async fn fetch(
        &self,
        class: &'static str,
        req: Request<Body>,
        timeout: Duration,
        trace: &Trace,
    ) -> Result<Fetched, ProxyError> {
        let started = Instant::now();
        let result = self.fetch_whole(req, timeout, trace).await;
        self.record(class, result.as_ref().map(|r| r.status), started, trace);
        result
    }

    async fn fetch_whole(
        &self,
        req: Request<Body>,
        timeout: Duration,
        trace: &Trace,
    ) -> Result<Fetched, ProxyError> {
        let limit = self.max_response_bytes;
        let work = async {
            let resp = self.call(req, timeout, trace, true).await?;
            let (parts, body) = resp.into_parts();
            let body = collect_limited(body, limit).await.map_err(|e| match e {
                CollectError::TooLarge => {
                    ProxyError::BadUpstream(format!("response body larger than {limit} bytes"))
                }
                CollectError::Read(e) => ProxyError::UpstreamUnreachable(e),
            })?;
            let mut headers = parts.headers;
            headers.remove(header::CONTENT_LENGTH);
            Ok(Fetched {
                status: parts.status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamTimeout(timeout.as_millis() as u64)),
        }
    }
}

/// The key as a sensitive header value (kept out of HPACK tables and `Debug`).
fn key_value(key: &Secret) -> Result<HeaderValue, ProxyError> {
    let mut v = HeaderValue::from_str(key.expose())
        .map_err(|_| ProxyError::Internal("the secret key is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn classify_client_error(
    e: &(dyn std::error::Error + 'static),
    elapsed: Duration,
    timeout: Duration,
) -> ProxyError {
    let mut source = Some(e);
    while let Some(s) = source {
        // The client's own body passed the limit or broke mid-stream: its fault, not Mono's.
        if let Some(too_large) = s.downcast_ref::<crate::body::TooLarge>() {
            return ProxyError::PayloadTooLarge(too_large.0);
        }
        if let Some(broken) = s.downcast_ref::<crate::body::BrokenBody>() {
            return ProxyError::BadRequest(broken.to_string());
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProxyError::UpstreamTimeout(elapsed.min(timeout).as_millis() as u64);
            }
        }
        source = s.source();
    }
    // The chain may name hosts and addresses, never headers, so it is safe to report.
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    ProxyError::UpstreamUnreachable(msg)
}
