//! The client-facing server: HTTP/1.1 and HTTP/2 on one port, bounded, with a timed drain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::service::{Activity, Proxy};
use crate::state::State;

/// Resolves when a connection should be closed for sending nothing or too little: no request
/// within `head` of opening, an HTTP/1 request head still incomplete a whole `head` after it
/// began arriving (the slowloris guard; closed within two `head`s), or no request for `idle`.
/// A request in flight keeps the connection open.
///
/// This replaces hyper's own header timer, which arms and drops a timer on every request of a
/// keep-alive connection (and so also closed idle ones after `head`): here one timer per
/// connection looks at counters the connection keeps anyway.
async fn watchdog(activity: &Activity, head: Duration, idle: Duration) {
    let tick = head.min(idle);
    let (mut seen, mut quiet, mut pending) = (0, Duration::ZERO, false);
    loop {
        tokio::time::sleep(tick).await;
        let started = activity.started();
        if started != seen || activity.in_flight() > 0 {
            (seen, quiet, pending) = (started, Duration::ZERO, false);
            continue;
        }
        quiet += tick;
        if started == 0 || quiet >= idle || (pending && activity.head_pending()) {
            return;
        }
        pending = activity.head_pending();
    }
}

/// A client socket that notes each read that brought bytes in its connection's [`Activity`].
struct Counted {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Serves `listener` until `shutdown` resolves, then drains in-flight requests for at most
/// `server.drain_timeout` before returning.
pub async fn run(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let cfg = state.config.load().server.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The header timeout is the watchdog's (below), one timer per connection.
        .header_read_timeout(None)
        // A client may shut its write side once its request is sent (`curl --no-buffer`, some
        // SDK transports): keep the connection to answer it instead of dropping the request.
        .half_close(true)
        .max_buf_size(cfg.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes.try_into().unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let proxy = Proxy::new(Arc::clone(&state));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    tokio::pin!(shutdown);

    loop {
        // Over the cap, connections wait in the listen backlog rather than being accepted.
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let (service, activity) = proxy.for_connection(peer);
        let stream = Counted {
            stream,
            activity: Arc::clone(&activity),
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let state = Arc::clone(&state);
        state.metrics.connection_opened();
        let (first, idle) = (cfg.header_read_timeout, cfg.idle_timeout);
        tokio::spawn(async move {
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(client.addr = %peer, error = %e, "connection ended with an error");
                    }
                }
                _ = watchdog(&activity, first, idle) => {
                    tracing::debug!(client.addr = %peer, "closing a connection that sent no request in time");
                }
            }
            state.metrics.connection_closed();
            drop(permit);
        });
    }

    drop(listener);
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        timeout_s = cfg.drain_timeout.as_secs(),
        "stopped accepting; draining"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(cfg.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
    Ok(())
}
