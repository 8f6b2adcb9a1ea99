//! Serving the sandbox: plain HTTP/1.1 + h2c or TLS, one task per connection, graceful stop.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{RunningSandbox, Sandbox};

/// How long shutdown waits for in-flight requests before dropping connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// A TLS handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Sandbox {
    /// Serves plain HTTP/1.1 and h2c on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        self.serve_with(listener, None, shutdown).await
    }

    /// Serves HTTPS (ALPN `h2` and `http/1.1`) with a PEM chain and key until `shutdown` resolves.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        cert_pem: &str,
        key_pem: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let acceptor = tls_acceptor(cert_pem, key_pem)?;
        self.serve_with(listener, Some(acceptor), shutdown).await
    }

    /// Binds `127.0.0.1:0` and serves plain HTTP in a background task.
    pub async fn spawn(self) -> io::Result<RunningSandbox> {
        self.spawn_inner(None).await
    }

    /// Binds `127.0.0.1:0` and serves HTTPS with the given PEM chain and key in a background task.
    pub async fn spawn_tls(self, cert_pem: &str, key_pem: &str) -> io::Result<RunningSandbox> {
        let acceptor = tls_acceptor(cert_pem, key_pem)?;
        self.spawn_inner(Some(acceptor)).await
    }

    async fn spawn_inner(self, tls: Option<TlsAcceptor>) -> io::Result<RunningSandbox> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let sandbox = self.clone();
        let task = tokio::spawn(async move {
            // A dropped sender also means stop.
            let shutdown = async move {
                let _ = rx.await;
            };
            sandbox.serve_with(listener, tls, shutdown).await
        });
        Ok(RunningSandbox {
            addr,
            sandbox: self,
            shutdown: Some(tx),
            task,
        })
    }

    async fn serve_with(
        self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let addr = listener.local_addr()?;
        tracing::info!(%addr, tls = tls.is_some(), "sandbox listening");
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        let graceful = GracefulShutdown::new();
        // Connection tasks live in a JoinSet so shutdown can drop hanging ones.
        let mut connections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(err) => {
                            // Usually fd exhaustion: back off instead of spinning.
                            tracing::warn!(error = %err, "sandbox accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(error = %err, "sandbox could not set nodelay");
                    }
                    self.bump("connections");
                    let conn = Connection {
                        sandbox: self.clone(),
                        builder: builder.clone(),
                        watcher: graceful.watcher(),
                        peer,
                    };
                    match tls.clone() {
                        None => connections.spawn(conn.serve(stream)),
                        Some(acceptor) => connections.spawn(async move {
                            let handshake = tokio::time::timeout(
                                TLS_HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            );
                            match handshake.await {
                                Ok(Ok(stream)) => {
                                    conn.sandbox.bump("tls_handshakes");
                                    conn.serve(stream).await;
                                }
                                Ok(Err(err)) => {
                                    tracing::debug!(client.addr = %peer, error = %err, "sandbox tls handshake failed");
                                }
                                Err(_) => {
                                    tracing::debug!(client.addr = %peer, "sandbox tls handshake timed out");
                                }
                            }
                        }),
                    };
                }
                // Reap finished connections so the set does not grow without bound.
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(err) = done {
                        if err.is_panic() {
                            tracing::error!(error = %err, "sandbox connection task panicked");
                        }
                    }
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!(%addr, "sandbox shutting down");
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("sandbox shutdown grace elapsed, dropping open connections");
        }
        connections.shutdown().await;
        Ok(())
    }
}

/// One accepted connection and what it needs to be served.
struct Connection {
    sandbox: Sandbox,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    peer: std::net::SocketAddr,
}

impl Connection {
    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let sandbox = self.sandbox;
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let sandbox = sandbox.clone();
            async move { sandbox.handle(req).await }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        if let Err(err) = self.watcher.watch(conn).await {
            // Injected resets land here too, so this is debug, not an error.
            tracing::debug!(client.addr = %self.peer, error = %err, "sandbox connection ended with error");
        }
    }
}

/// Builds a rustls acceptor (ring provider, ALPN h2 + http/1.1) from PEM text.
fn tls_acceptor(cert_pem: &str, key_pem: &str) -> io::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no certificate found in the PEM chain",
        ));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "no private key found in the PEM",
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A self-signed certificate for `hosts` (DNS names or IP addresses): `(cert_pem, key_pem)`.
///
/// # Panics
/// If a host is not a valid DNS name or IP address (e.g. contains non-ASCII characters).
pub fn self_signed_cert(hosts: &[&str]) -> (String, String) {
    let names: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    let certified = rcgen::generate_simple_self_signed(names)
        .expect("self-signed certificate hosts must be DNS names or IP addresses");
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_cert_is_pem() {
        let (cert, key) = self_signed_cert(&["localhost", "127.0.0.1"]);
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        assert!(tls_acceptor(&cert, &key).is_ok());
        assert!(tls_acceptor("", &key).is_err());
    }
}
