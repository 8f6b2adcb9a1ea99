//! The shared test harness: a sandbox upstream, a proxy in front of it, a client, and Redis.
//!
//! Everything runs on 127.0.0.1 with ports picked by the OS. Each assertion is meant to be one
//! line: helpers return a [`Reply`] holding status, headers and body.
#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mono_proxy::app::Running;
use mono_proxy::config::Config;
use mono_proxy::sandbox::{RunningSandbox, Sandbox, SandboxConfig};
use serde_json::Value;
use tokio::net::TcpListener;
pub mod binary;
pub mod receiver;
pub mod redis_kinds;

/// The key the sandbox accepts and the proxy injects.
pub const KEY: &str = "test_sk_sandbox";
/// The webhook secret used by tests.
pub const WEBHOOK_SECRET: &str = "whsec-test";

/// What a call returned.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Reads a whole response into a `Reply`.
    pub async fn read(resp: http::Response<hyper::body::Incoming>) -> Result<Reply, String> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain HTTP/1 client (no proxy settings, no pooling surprises across tests).
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request; panics on a transport error.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    try_send(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// Sends one request, returning transport errors.
pub async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(body.into()))
        .map_err(|e| e.to_string())?;
    let resp = client().request(req).await.map_err(|e| format!("{e:?}"))?;
    Reply::read(resp).await
}

/// GET with headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// A sandbox with fast jobs (200 ms) and the given tweaks.
pub fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        job_delay: Duration::from_millis(200),
        ..SandboxConfig::default()
    }
}

/// Starts a sandbox on 127.0.0.1:0.
pub async fn sandbox(cfg: SandboxConfig) -> RunningSandbox {
    Sandbox::new(cfg).spawn().await.expect("sandbox starts")
}

/// A sandbox whose jobs stay `processing` for a minute: syncs finish when a test says so
/// (a webhook, or `finish_jobs_now`).
pub async fn slow_jobs() -> RunningSandbox {
    sandbox(SandboxConfig {
        job_delay: Duration::from_secs(60),
        ..sandbox_config()
    })
    .await
}

/// Builds a proxy config the way an operator would: TOML text plus environment.
pub struct ProxyBuilder {
    upstream: String,
    toml: String,
    env: Vec<(String, String)>,
}

impl ProxyBuilder {
    /// A proxy in front of `upstream` (a base URL), with the test key and webhook secret.
    pub fn new(upstream: &str) -> ProxyBuilder {
        ProxyBuilder {
            upstream: upstream.to_string(),
            toml: String::new(),
            env: vec![
                ("MONO_SEC_KEY".into(), KEY.into()),
                ("MONO_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
            ],
        }
    }

    /// A proxy in front of a running sandbox.
    pub fn for_sandbox(sb: &RunningSandbox) -> ProxyBuilder {
        ProxyBuilder::new(&sb.base_url(false))
    }

    /// Adds TOML: top-level keys first, then `[section]` tables.
    pub fn toml(mut self, text: &str) -> ProxyBuilder {
        self.toml.push_str(text);
        self.toml.push('\n');
        self
    }

    /// Sets an environment variable for config loading.
    pub fn env(mut self, name: &str, value: &str) -> ProxyBuilder {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The full config text.
    pub fn text(&self) -> String {
        let mut text = self.toml.clone();
        if !text.contains("[upstream]") {
            text.push_str(&format!("\n[upstream]\nbase_url = \"{}\"\n", self.upstream));
        } else {
            text = text.replacen(
                "[upstream]",
                &format!("[upstream]\nbase_url = \"{}\"", self.upstream),
                1,
            );
        }
        text
    }

    /// Parses the config (panicking with every problem).
    pub fn config(&self) -> Config {
        Config::parse_runnable(&self.text(), &self.env)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{}", self.text()))
    }

    /// Starts the proxy in process on 127.0.0.1:0 with a `public_base_url` of its real address.
    pub async fn start(self) -> TestProxy {
        self.try_start()
            .await
            .unwrap_or_else(|e| panic!("proxy starts: {e}"))
    }

    /// Like [`ProxyBuilder::start`], returning why the start failed instead of panicking.
    pub async fn try_start(self) -> Result<TestProxy, String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = listener.local_addr().unwrap();
        let mut config = self.config();
        if !self.toml.contains("public_base_url") {
            config.public_base_url = format!("http://{addr}");
        }
        let running = mono_proxy::app::start(config, listener, admin)
            .await
            .map_err(|e| e.to_string())?;
        Ok(TestProxy { running })
    }
}

/// A proxy running in this process.
pub struct TestProxy {
    pub running: Running,
}

impl TestProxy {
    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    /// Admin URL.
    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.admin_addr)
    }

    /// GET through the proxy.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        get(&self.url(path), headers).await
    }

    /// A realtime GET through the proxy.
    pub async fn realtime(&self, path: &str) -> Reply {
        self.get(path, &[("x-realtime", "true")]).await
    }

    /// The metrics text.
    pub async fn metrics(&self) -> String {
        get(&self.admin("/metrics"), &[]).await.text()
    }

    /// Delivers a webhook with the test secret.
    pub async fn webhook(&self, body: &Value) -> Reply {
        send(
            Method::POST,
            &self.url("/webhooks/mono"),
            &[
                ("mono-webhook-secret", WEBHOOK_SECRET),
                ("content-type", "application/json"),
            ],
            body.to_string(),
        )
        .await
    }

    /// The `store` field of `/readyz` (`ok`, `degraded`, `memory`).
    pub async fn store_state(&self) -> String {
        let reply = get(&self.admin("/readyz"), &[]).await;
        reply.json()["store"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Stops the proxy, draining in-flight requests.
    pub async fn stop(self) {
        self.running.stop().await.expect("clean stop");
    }
}

/// The value of a metric line that starts with `prefix` (labels included), 0 when absent.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 20 ms until it is true or `timeout` passes; returns the last result.
/// On tokio's clock, so a test on paused time waits in virtual time.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The compiled `mono-proxy` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mono-proxy"))
}

/// A free loopback port (bound then released; fine for tests on one machine).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A loopback port that refuses connections for as long as the guard lives: bound, never
/// listening, so no other test's server can take it between picking and use (as it could a
/// `free_port`, and did: a sandbox answered where a test expected nothing).
pub fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("a loopback port");
    let port = socket.local_addr().expect("its address").port();
    (socket, port)
}

/// A free loopback address.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A Redis for the shared-state tests: `REDIS_URL` when set, else a private `redis-server`.
pub struct TestRedis {
    pub url: String,
    pub port: Option<u16>,
    child: Option<Child>,
}

impl TestRedis {
    /// Uses `REDIS_URL`, or starts `redis-server` on a free port (stopped on drop).
    pub fn start() -> TestRedis {
        if let Ok(url) = std::env::var("REDIS_URL") {
            if !url.is_empty() {
                return TestRedis {
                    url,
                    port: None,
                    child: None,
                };
            }
        }
        TestRedis::private()
    }

    /// Always a private `redis-server` (for tests that stop and restart it).
    pub fn private() -> TestRedis {
        let port = free_port();
        let child = spawn_redis(port);
        let url = format!("redis://127.0.0.1:{port}");
        wait_for_port(port);
        TestRedis {
            url,
            port: Some(port),
            child: Some(child),
        }
    }

    /// Stops a private Redis (simulating an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes a private Redis (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused Redis (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("only a private redis").id();
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {pid}");
    }

    /// Restarts a private Redis on the same port.
    pub fn restart(&mut self) {
        let port = self.port.expect("only a private redis can restart");
        self.stop();
        self.child = Some(spawn_redis(port));
        wait_for_port(port);
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_redis(port: u16) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}). Install it (Debian/Ubuntu: `apt-get install redis-server`, \
                 macOS: `brew install redis`) or set REDIS_URL to a running Redis."
            )
        })
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not listen on 127.0.0.1:{port} within 10 s");
}

/// Asserts Mono's failed envelope: `status`, a message, a timestamp, `data: null`.
pub fn assert_envelope(body: &Value) {
    assert_eq!(body["status"], "failed", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["timestamp"].as_str().is_some(), "{body}");
    assert!(body["data"].is_null(), "{body}");
}

/// A raw HTTP/1.1 exchange: what the proxy answered to exactly these bytes.
pub struct Raw {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Raw {
    /// The body as JSON (panics with the answer when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not json ({e}): {}\n{}", self.head, self.body))
    }
}

/// Sends `request_line` plus `headers` verbatim (no client normalisation, `Connection: close`)
/// and reads the answer.
pub async fn raw(addr: SocketAddr, request_line: &str, headers: &[&str]) -> Raw {
    let mut text = format!("{request_line}\r\n");
    for h in headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str("Connection: close\r\n\r\n");
    raw_bytes(addr, text.as_bytes(), false).await
}

/// Writes `bytes` as they are, optionally shuts the write side (a half-close), and reads the
/// answer until the proxy closes; bounded so a hang fails.
pub async fn raw_bytes(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        if half_close {
            stream.shutdown().await.expect("half-close");
        }
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer to {:?}", String::from_utf8_lossy(bytes)));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Raw {
        status,
        head: head.to_string(),
        body,
    }
}

/// Decodes a chunked body (enough for the short answers these tests read).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    for _ in 0..10_000 {
        let Some((size, after)) = rest.split_once("\r\n") else {
            break;
        };
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}
