//! The client-facing server: HTTP/1.1 and HTTP/2 on one port, bounded, with a timed drain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

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

/// What the HTTP/2 client preface starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a new connection speaks, told from its first bytes without taking them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    Http1,
    Http2,
    /// Fewer bytes than the preface, all of them a prefix of it: told apart as more arrive.
    NotYet,
}

/// Peeks at the first bytes a client sent (waiting for some) to pick the protocol.
///
/// hyper-util's own detection reads the first 24 bytes itself and hands them back to hyper
/// through a rewind buffer; hyper's read buffer then holds 24 bytes when it asks for 8 KiB more,
/// and grows to 16 KiB, a large allocation and an 8 KiB copy on every new connection. A peek
/// leaves the bytes in the socket, so hyper's first read takes the whole request head.
async fn sniff(stream: &TcpStream) -> std::io::Result<Speaks> {
    let mut first = [0u8; H2_PREFACE.len()];
    let n = stream.peek(&mut first).await?;
    Ok(speaks(&first[..n]))
}

/// The protocol `first` (a connection's first bytes) is the start of.
fn speaks(first: &[u8]) -> Speaks {
    if first.is_empty() || !H2_PREFACE.starts_with(first) {
        // Nothing at all is a client hanging up: hyper's HTTP/1 side closes it quietly.
        Speaks::Http1
    } else if first.len() == H2_PREFACE.len() {
        Speaks::Http2
    } else {
        Speaks::NotYet
    }
}

/// The connection builders: one per protocol once known, and hyper-util's detecting one for a
/// connection whose first bytes do not tell yet.
struct Protocols {
    detect: auto::Builder<TokioExecutor>,
    http1: auto::Builder<TokioExecutor>,
    http2: auto::Builder<TokioExecutor>,
}

impl Protocols {
    fn new(detect: auto::Builder<TokioExecutor>) -> Self {
        Protocols {
            http1: detect.clone().http1_only(),
            http2: detect.clone().http2_only(),
            detect,
        }
    }

    fn builder(&self, speaks: Speaks) -> &auto::Builder<TokioExecutor> {
        match speaks {
            Speaks::Http1 => &self.http1,
            Speaks::Http2 => &self.http2,
            Speaks::NotYet => &self.detect,
        }
    }
}

/// Serves one accepted connection until it ends, or until `closing` turns true and it has
/// finished its requests in flight (hyper's graceful shutdown). One that has sent nothing yet
/// when the proxy starts closing is dropped at once.
async fn serve(
    stream: TcpStream,
    activity: Arc<Activity>,
    service: Proxy,
    protocols: Arc<Protocols>,
    mut closing: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let speaks = tokio::select! {
        speaks = sniff(&stream) => speaks?,
        _ = closing.wait_for(|c| *c) => return Ok(()),
    };
    let stream = Counted { stream, activity };
    let conn = protocols
        .builder(speaks)
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => return result,
        _ = closing.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
    }
    conn.await
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
    let protocols = Arc::new(Protocols::new(builder));
    // Every connection holds a receiver: the drain below ends when the last one is dropped.
    let (closing, _) = watch::channel(false);
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
        let conn = serve(
            stream,
            Arc::clone(&activity),
            service,
            Arc::clone(&protocols),
            closing.subscribe(),
        );
        let state = Arc::clone(&state);
        state.metrics.connection_opened();
        let (first, idle) = (cfg.header_read_timeout, cfg.idle_timeout);
        // Boxed once here: the connection's future is kilobytes, and spawning moves a future
        // through several layers (and tokio's task cell) by value.
        tokio::spawn(Box::pin(async move {
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
        }));
    }

    drop(listener);
    state
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        timeout_s = cfg.drain_timeout.as_secs(),
        "stopped accepting; draining"
    );
    closing.send_replace(true);
    tokio::select! {
        _ = closing.closed() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(cfg.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_the_protocol_or_say_to_wait() {
        assert_eq!(speaks(b"GET / HTTP/1.1\r\n"), Speaks::Http1);
        assert_eq!(speaks(b"POST"), Speaks::Http1);
        assert_eq!(speaks(b"PRI * HTTP/1.1\r\n"), Speaks::Http1);
        assert_eq!(speaks(b""), Speaks::Http1);
        assert_eq!(speaks(H2_PREFACE), Speaks::Http2);
        assert_eq!(speaks(b"P"), Speaks::NotYet);
        assert_eq!(speaks(b"PRI * HTTP/2.0\r\n"), Speaks::NotYet);
    }
}
