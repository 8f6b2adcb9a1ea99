//! Starting and stopping a whole proxy (server + admin) on already-bound listeners.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::state::State;
use crate::{admin, server};

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

/// Builds the state and serves `listener` and `admin` until [`Running::stop`].
pub async fn start(
    config: Config,
    listener: TcpListener,
    admin: TcpListener,
) -> Result<Running, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    if !addr.ip().is_loopback() && config.clients.is_empty() {
        tracing::warn!(listen = %addr, "listening beyond loopback without [[clients]] tokens: anything that can connect can spend the Mono key");
    }
    let state = State::new(config).await?;
    let (stop, rx) = watch::channel(false);
    let server = tokio::spawn(server::run(listener, Arc::clone(&state), stopped(rx)));
    // The admin listener outlives the drain so /readyz can say "draining".
    let admin = tokio::spawn(admin::run(
        admin,
        Arc::clone(&state),
        std::future::pending(),
    ));
    tracing::info!(listen = %addr, admin = %admin_addr, upstream = %state.config.upstream.base_url, "mono-proxy started");
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
pub async fn bind_and_start(config: Config) -> Result<Running, String> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|e| format!("cannot listen on {} (admin): {e}", config.admin_listen))?;
    start(config, listener, admin).await
}
