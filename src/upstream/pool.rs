//! The connections to Mono, driven by the request that uses them.
//!
//! hyper-util's pooled client runs every HTTP/1 connection in a task of its own and spawns one
//! more task per call to return the connection to its pool: a passthrough then hops between
//! three tasks (and often both worker threads) per request, which measured a quarter of its CPU.
//! Here an HTTP/1 connection is polled by whoever holds it: the request's own task while the
//! head is in flight, then the response body (polled by the client's connection task) until the
//! body ends, when it goes back to the idle list. A connection ALPN makes h2 is multiplexed and
//! so runs in a spawned task, shared by every call, as hyper-util does.
//!
//! An idle connection is polled by nobody: a close by Mono is noticed when it is next taken,
//! and a request that was never written on a reused connection is retried on another, as
//! hyper-util's `retry_canceled_requests` does.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower_service::Service as _;

use super::conn_waker::ConnWaker;

/// The byte stream of one upstream connection (TLS or plain).
type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// What a connect error is.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a request body sent through the pool must be.
pub trait RequestBody: HttpBody<Data = Bytes, Error = BoxError> + Send + Unpin + 'static {}

impl<B: HttpBody<Data = Bytes, Error = BoxError> + Send + Unpin + 'static> RequestBody for B {}

/// Why a call through the pool failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (refused, TLS, connect timeout).
    #[error("connect error")]
    Connect(#[source] BoxError),
    /// The connection failed while the request or the response head was in flight.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// Mono closed the connection before answering.
    #[error("the upstream closed the connection before answering")]
    Closed,
}

/// An idle (or in-use) HTTP/1 connection: the sender and the connection future it needs polled.
struct H1<B: RequestBody> {
    send: http1::SendRequest<B>,
    conn: http1::Connection<Io, B>,
    idle_since: Instant,
    /// What the connection is polled with, and its steering handle (the same `Arc`, kept
    /// built so that a poll does not clone it).
    waker: Waker,
    wakes: Arc<ConnWaker>,
}

impl<B: RequestBody> H1<B> {
    /// Polls the connection for the task of `cx`; `true` when it has ended.
    fn drive(&mut self, cx: &Context<'_>) -> bool {
        self.wakes.register(cx.waker());
        Pin::new(&mut self.conn)
            .poll(&mut Context::from_waker(&self.waker))
            .is_ready()
    }

    /// Polls the connection once without a waker; `false` when it has ended (Mono closed it).
    fn alive_and_ready(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut self.conn).poll(&mut cx).is_ready() {
            return false;
        }
        self.send.is_ready()
    }
}

/// The upstream's connections: idle HTTP/1 ones (newest last) and the shared h2 one.
pub struct Pool<B: RequestBody> {
    connector: HttpsConnector<HttpConnector>,
    // Boxed: each moves between this list and a body as a pointer, not ~1.8 KB.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<H1<B>>>>,
    h2: Mutex<Option<http2::SendRequest<B>>>,
    /// Held while connecting when the upstream may speak h2, so the calls waiting share one
    /// handshake (as hyper-util's pool does) instead of making one each.
    connecting: tokio::sync::Mutex<()>,
    /// The upstream is known to speak HTTP/1 (plain `http://`, or ALPN chose it): each call
    /// then connects on its own, as HTTP/1 needs a connection per call in flight.
    h1_only: AtomicBool,
    max_idle: usize,
    idle_timeout: Duration,
}

impl<B: RequestBody> Pool<B> {
    /// A pool over `connector`, keeping at most `max_idle` idle HTTP/1 connections, each for at
    /// most `idle_timeout`; `tls` when the upstream is `https://` (and so may choose h2).
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        max_idle: usize,
        idle_timeout: Duration,
        tls: bool,
    ) -> Arc<Pool<B>> {
        Arc::new(Pool {
            connector,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            h1_only: AtomicBool::new(!tls),
            max_idle,
            idle_timeout,
        })
    }

    /// Sends `req` (absolute URI) and returns the answer's head; the body streams after,
    /// driving its connection.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<B>,
    ) -> Result<Response<UpstreamBody<B>>, PoolError> {
        if let Some(h2) = self.shared_h2() {
            return send_h2(h2, req).await;
        }
        // hyper writes the target as given: HTTP/1 wants origin-form.
        let absolute = std::mem::take(req.uri_mut());
        *req.uri_mut() = origin_form(&absolute);
        while let Some(h1) = self.take_idle() {
            match self.send_h1(h1, req).await {
                Ok(resp) => return Ok(resp),
                // Never written: Mono had closed the idle connection. Another one may do.
                Err(Unsent::Retry(back, e)) => {
                    tracing::debug!(error = %e, "pooled upstream connection was closed; retrying");
                    req = *back;
                }
                Err(Unsent::Failed(e)) => return Err(e),
            }
        }
        // Boxed: connecting (TLS, h2 handshake) is rare and its future is several KB.
        let connected = if self.h1_only.load(Ordering::Relaxed) {
            Box::pin(self.connect(&absolute)).await?
        } else {
            let one = self.connecting.lock().await;
            if let Some(h2) = self.shared_h2() {
                // Another call connected while this one waited.
                drop(one);
                *req.uri_mut() = absolute;
                return send_h2(h2, req).await;
            }
            // ALPN chose HTTP/1 while this one waited: no handshake to share.
            let _one = (!self.h1_only.load(Ordering::Relaxed)).then_some(one);
            Box::pin(self.connect(&absolute)).await?
        };
        match connected {
            Connected::H1(h1) => match self.send_h1(h1, req).await {
                Ok(resp) => Ok(resp),
                Err(Unsent::Retry(_, e)) => Err(e.into()),
                Err(Unsent::Failed(e)) => Err(e),
            },
            Connected::H2(h2) => {
                *req.uri_mut() = absolute;
                send_h2(h2, req).await
            }
        }
    }

    /// The h2 connection when one is open.
    fn shared_h2(&self) -> Option<http2::SendRequest<B>> {
        let mut h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        match &*h2 {
            Some(send) if !send.is_closed() => Some(send.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    /// The newest idle HTTP/1 connection still open and within the idle timeout.
    fn take_idle(&self) -> Option<Box<H1<B>>> {
        loop {
            let mut h1 = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()?;
            if h1.idle_since.elapsed() < self.idle_timeout && h1.alive_and_ready() {
                return Some(h1);
            }
        }
    }

    /// Takes back a connection whose answer has been read whole.
    fn put_idle(&self, mut h1: Box<H1<B>>) {
        // Polled by nobody while idle: it must not keep (or wake) the last task.
        h1.wakes.clear();
        if !h1.alive_and_ready() {
            return;
        }
        h1.idle_since = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The oldest sit first: the ones past their time, or past the count, go.
        let expired = idle
            .iter()
            .take_while(|c| c.idle_since.elapsed() >= self.idle_timeout)
            .count();
        let kept = idle.len() - expired;
        // Room for this one: at most `max_idle` stay (config keeps it above 0; none at 0).
        let over = (kept + 1).saturating_sub(self.max_idle).min(kept);
        idle.drain(..expired + over);
        if self.max_idle > 0 {
            idle.push(h1);
        }
    }

    /// Opens a connection; h2 (by ALPN) is spawned and shared, HTTP/1 is returned to drive.
    async fn connect(&self, uri: &Uri) -> Result<Connected<B>, PoolError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(PoolError::Connect)?;
        let io = connector
            .call(uri.clone())
            .await
            .map_err(PoolError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                }
            });
            *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = Some(send.clone());
            self.h1_only.store(false, Ordering::Relaxed);
            return Ok(Connected::H2(send));
        }
        self.h1_only.store(true, Ordering::Relaxed);
        let (send, conn) = http1::handshake(io).await?;
        let (wakes, waker) = ConnWaker::new();
        Ok(Connected::H1(Box::new(H1 {
            send,
            conn,
            idle_since: Instant::now(),
            waker,
            wakes,
        })))
    }

    /// Writes `req` on `h1`, driving the connection until the answer's head is in.
    async fn send_h1(
        self: &Arc<Self>,
        mut h1: Box<H1<B>>,
        req: Request<B>,
    ) -> Result<Response<UpstreamBody<B>>, Unsent<B>> {
        let mut answer = std::pin::pin!(h1.send.try_send_request(req));
        let mut ended = false;
        // The answer is only ever completed by the connection's own poll, here, so it is asked
        // with a waker that does nothing: a task that wakes itself is re-queued as a yield,
        // which makes tokio wake a parked sibling worker to steal it (a futex and a context
        // switch per call). The connection is polled with its `ConnWaker`, which reaches the task.
        let head = poll_fn(|cx| {
            if !ended {
                ended = h1.drive(cx);
            }
            match answer
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            {
                Poll::Ready(r) => Poll::Ready(r.map_err(Unsent::from)),
                // The connection is over, so its dispatcher has answered every call it held.
                Poll::Pending if ended => Poll::Ready(Err(Unsent::Failed(PoolError::Closed))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        let (parts, body) = head.into_parts();
        let mut body = UpstreamBody {
            body,
            conn: (!ended).then_some(h1),
            pool: Some(Arc::clone(self)),
        };
        if body.body.is_end_stream() {
            body.release();
        }
        Ok(Response::from_parts(parts, body))
    }
}

/// A new connection, by the protocol ALPN chose.
enum Connected<B: RequestBody> {
    H1(Box<H1<B>>),
    H2(http2::SendRequest<B>),
}

/// Why an HTTP/1 call did not get its head: retryable when the request was never written.
enum Unsent<B> {
    Retry(Box<Request<B>>, hyper::Error),
    Failed(PoolError),
}

impl<B> From<hyper::client::conn::TrySendError<Request<B>>> for Unsent<B> {
    fn from(mut e: hyper::client::conn::TrySendError<Request<B>>) -> Unsent<B> {
        match e.take_message() {
            Some(req) => Unsent::Retry(Box::new(req), e.into_error()),
            None => Unsent::Failed(e.into_error().into()),
        }
    }
}

async fn send_h2<B: RequestBody>(
    mut h2: http2::SendRequest<B>,
    req: Request<B>,
) -> Result<Response<UpstreamBody<B>>, PoolError> {
    h2.ready().await?;
    let (parts, body) = h2.send_request(req).await?.into_parts();
    Ok(Response::from_parts(
        parts,
        UpstreamBody {
            body,
            conn: None,
            pool: None,
        },
    ))
}

/// `/path?query` of an absolute URI.
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()))
}

/// An upstream answer's body; over HTTP/1 it also drives its connection, which goes back to
/// the pool once the body has been read whole (and is closed if the body is dropped before).
pub struct UpstreamBody<B: RequestBody> {
    body: Incoming,
    /// Boxed: a connection is ~1.8 KB, and bodies are moved about.
    conn: Option<Box<H1<B>>>,
    pool: Option<Arc<Pool<B>>>,
}

impl<B: RequestBody> std::fmt::Debug for UpstreamBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("body", &self.body)
            .field("pooled", &self.conn.is_some())
            .finish()
    }
}

impl<B: RequestBody> UpstreamBody<B> {
    /// Hands the connection back to the pool: the body has been read whole.
    fn release(&mut self) {
        if let (Some(h1), Some(pool)) = (self.conn.take(), self.pool.take()) {
            pool.put_idle(h1);
        }
    }
}

impl<B: RequestBody> HttpBody for UpstreamBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        // Over HTTP/1 the body is fed only by its connection's poll, here: asked with a waker
        // that does nothing, as the answer's head is (see `send_h1`), and with the connection's
        // wakes held, as reading a chunk wakes the connection (see `conn_waker`). Over h2 a
        // task of its own feeds it, so it gets the real one.
        let mut quiet = Context::from_waker(Waker::noop());
        let mut drove = false;
        loop {
            let Some(h1) = this.conn.as_mut() else {
                return Pin::new(&mut this.body).poll_frame(cx);
            };
            h1.wakes.hold();
            let polled = Pin::new(&mut this.body).poll_frame(&mut quiet);
            let woke = h1.wakes.release();
            if let Poll::Ready(frame) = polled {
                match &frame {
                    None => this.release(),
                    Some(Ok(_)) if this.body.is_end_stream() => this.release(),
                    Some(Ok(_)) => {}
                    Some(Err(_)) => this.conn = None,
                }
                // The connection wants polling and this poll ends: the next one must come.
                if woke && this.conn.is_some() {
                    cx.waker().wake_by_ref();
                }
                return Poll::Ready(frame);
            }
            if drove {
                if woke {
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
            drove = true;
            if h1.drive(cx) {
                // Over: dropping it ends the body, which says so on the next poll.
                this.conn = None;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
