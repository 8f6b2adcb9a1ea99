//! The client-facing server: HTTP/1.1 and HTTP/2 on one port, bounded, with a timed drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::service::{Activity, Proxy};
use crate::state::State;

/// Resolves when a connection should be closed for sending nothing: no request within `first`
/// of opening (before any parser timeout applies: HTTP/1-vs-2 detection and h2 have none), or
/// none for `idle` since the last one ended. A request in flight keeps the connection open.
async fn idle_watchdog(activity: &Activity, first: Duration, idle: Duration) {
    let mut seen = 0;
    let mut limit = first;
    loop {
        tokio::time::sleep(limit).await;
        let started = activity.started();
        if started == seen && activity.in_flight() == 0 {
            return;
        }
        seen = started;
        limit = idle;
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
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
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
                _ = idle_watchdog(&activity, first, idle) => {
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
