//! Starting and stopping a whole proxy: the state, the servers on already-bound listeners, and
//! the background tasks beside them (poller, broadcast listener, secret watcher).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Origin};
use crate::request::{poller, sync};
use crate::state::{State, StateError};
use crate::{admin, lifecycle, server};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `proxy` or `admin`.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A bound listener has no local address.
    #[error("listener address: {0}")]
    Listener(std::io::Error),
    /// The shared state could not be built.
    #[error(transparent)]
    State(#[from] StateError),
}

/// A running proxy: its addresses, its state, and the means to stop it.
pub struct Running {
    /// Proxy address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin_addr: SocketAddr,
    /// Shared state (for tests and signal handlers).
    pub state: Arc<State>,
    stop: watch::Sender<bool>,
    server: JoinHandle<std::io::Result<()>>,
    admin: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Turns not-ready, stops accepting, drains, and waits for both listeners to end.
    pub async fn stop(self) -> std::io::Result<()> {
        self.begin_shutdown();
        self.wait().await
    }

    /// Marks the proxy draining and tells the server to stop accepting.
    pub fn begin_shutdown(&self) {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
    }

    /// Waits until the server has drained; the admin listener stops after it.
    pub async fn wait(self) -> std::io::Result<()> {
        let served = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        };
        self.admin.abort();
        let _ = self.admin.await;
        served
    }
}

/// Builds the state, starts the background tasks and serves `listener` and `admin` until
/// [`Running::stop`].
pub async fn start(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
) -> Result<Running, StartError> {
    launch(config, None, listener, admin).await
}

/// [`start`] for a config read from `origin`, which `POST /reload` and SIGHUP read again.
pub async fn start_from(
    config: Config,
    origin: Origin,
    listener: TcpListener,
    admin: TcpListener,
) -> Result<Running, StartError> {
    launch(config, Some(origin), listener, admin).await
}

async fn launch(
    config: Config,
    origin: Option<Origin>,
    listener: TcpListener,
    admin: TcpListener,
) -> Result<Running, StartError> {
    let addr = listener.local_addr().map_err(StartError::Listener)?;
    let admin_addr = admin.local_addr().map_err(StartError::Listener)?;
    if !addr.ip().is_loopback() && config.clients.is_empty() {
        tracing::warn!(listen = %addr, "listening beyond loopback without [[clients]] tokens: anything that can connect can spend the Mono key");
    }
    let (state, polls) = State::new(config, origin).await?;
    // Background tasks hold the state weakly: they end when the proxy is dropped.
    tokio::spawn(poller::run(Arc::downgrade(&state), polls));
    if let Some(broadcasts) = state.store.subscribe() {
        tokio::spawn(sync::listen(Arc::downgrade(&state), broadcasts));
    }
    lifecycle::watch(&state);

    let (stop, rx) = watch::channel(false);
    let server = tokio::spawn(server::run(listener, Arc::clone(&state), stopped(rx)));
    // The admin listener outlives the drain so /readyz can say "draining".
    let admin = tokio::spawn(admin::run(
        admin,
        Arc::clone(&state),
        std::future::pending(),
    ));
    tracing::info!(listen = %addr, admin = %admin_addr, upstream = %state.config.load().upstream.base_url, "mono-proxy started");
    Ok(Running {
        addr,
        admin_addr,
        state,
        stop,
        server,
        admin,
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Binds the configured listeners and starts.
pub async fn bind_and_start(config: Config, origin: Option<Origin>) -> Result<Running, StartError> {
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, what, source })
    };
    let listener = bind(config.listen, "proxy").await?;
    let admin = bind(config.admin_listen, "admin").await?;
    launch(config, origin, listener, admin).await
}
