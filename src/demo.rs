//! `mono-proxy demo`: the sandbox, the proxy and a tiny webhook-receiving "app" in one process.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::{collect_limited, Body};
use crate::config::Config;
use crate::sandbox::{Sandbox, SandboxConfig};

const DEMO_KEY: &str = "test_sk_demo";
const DEMO_WEBHOOK_SECRET: &str = "demo-webhook-secret";

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The demo's own listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {source} (try `mono-proxy demo --listen 127.0.0.1:0`)")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A loopback listener or the sandbox failed.
    #[error("demo: {0}")]
    Io(#[from] std::io::Error),
    /// The built-in config was refused (a bug).
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigErrors),
    /// The proxy did not start.
    #[error(transparent)]
    Start(#[from] crate::app::StartError),
}

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(listen: SocketAddr) -> Result<(), DemoError> {
    let proxy_listener = TcpListener::bind(listen)
        .await
        .map_err(|source| DemoError::Listen {
            addr: listen,
            source,
        })?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_listener = TcpListener::bind("127.0.0.1:0").await?;
    let admin_addr = admin_listener.local_addr()?;
    let app_listener = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app_listener.local_addr()?;
    tokio::spawn(run_app(app_listener));

    let sandbox = Sandbox::new(SandboxConfig {
        secret_key: DEMO_KEY.into(),
        job_delay: Duration::from_secs(3),
        webhook_url: Some(format!("http://{proxy_addr}/webhooks/mono")),
        webhook_secret: Some(DEMO_WEBHOOK_SECRET.into()),
        sync_changes_data: true,
        ..SandboxConfig::default()
    })
    .spawn()
    .await?;

    let text = format!(
        r#"
        public_base_url = "http://{proxy_addr}"
        [upstream]
        base_url = "http://{sandbox}"
        [realtime]
        window = "60s"
        [jobs]
        poll_interval = "2s"
        [webhook]
        forward_to = ["http://{app_addr}/webhooks/mono"]
        "#,
        sandbox = sandbox.addr
    );
    let env = [
        ("MONO_SEC_KEY", DEMO_KEY),
        ("MONO_WEBHOOK_SECRET", DEMO_WEBHOOK_SECRET),
    ];
    let config = Config::parse_runnable(&text, &env)?;
    let running = crate::app::start(config, proxy_listener, admin_listener).await?;

    let p = format!("http://{proxy_addr}");
    println!(
        r#"
mono-proxy demo: proxy {p}  ->  sandbox http://{sb} (a local Mono simulator)
admin: http://{admin_addr}/metrics   webhooks are relayed to a demo app on {app_addr}

Try (no key needed: the proxy injects it):
  curl -i {p}/v2/accounts/demo123/balance                         # MISS, then HIT
  curl -i {p}/v2/accounts/demo123/balance                         # HIT with Age
  curl -i -H 'x-realtime: true' {p}/v2/accounts/demo123/balance   # realtime job starts
  curl -i -H 'x-realtime: true' {p}/v2/accounts/demo123/balance   # COLLAPSED: no second Mono call
  # ~3 s later the sandbox finishes the job and sends webhooks -> proxy -> demo app (printed below)
  curl -i {p}/v2/accounts/demo123/balance                         # refetched, x-has-new-data: true
  curl -i '{p}/v2/accounts/demo123/transactions?paginate=true&'   # pagination links point at the proxy
  curl -s http://{admin_addr}/metrics | grep mono_proxy_realtime

Ctrl-C to stop.
"#,
        sb = sandbox.addr
    );
    crate::lifecycle::terminated().await;
    running.stop().await?;
    sandbox.stop().await?;
    Ok(())
}

/// The demo "app": prints each webhook the proxy relays to it.
async fn run_app(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<Incoming>| async move {
                let body = collect_limited(req.into_body(), 1 << 20)
                    .await
                    .unwrap_or_default();
                println!("app received webhook: {}", String::from_utf8_lossy(&body));
                Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
