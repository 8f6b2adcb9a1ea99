//! The real `mono-proxy` binary as tests run it: its own process, config file and output
//! files, and one keep-alive connection to it.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::TcpStream;

use super::{bin, eventually, free_addr, try_send, Reply};

/// Longest a binary gets to come up.
pub const WAIT: Duration = Duration::from_secs(20);

/// One HTTP/1.1 keep-alive connection: every request on it reuses the same socket, and a
/// request fails if the server closed it.
pub struct KeepAlive {
    pub sender: SendRequest<Full<Bytes>>,
    pub host: String,
}

impl KeepAlive {
    pub async fn open(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        KeepAlive {
            sender,
            host: addr.to_string(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", &self.host)
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        Reply::read(resp).await
    }
}

/// The running `mono-proxy` binary, with its output captured to files; killed on drop.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: TempDir,
}

impl Binary {
    /// Writes `toml` (sections only) under fresh listen addresses and runs the binary with
    /// exactly `env` as its environment.
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = free_addr();
        let admin = free_addr();
        let config = dir.path().join("proxy.toml");
        std::fs::write(
            &config,
            format!("listen = \"{addr}\"\nadmin_listen = \"{admin}\"\n{toml}\n"),
        )
        .expect("write config");
        let out = File::create(dir.path().join("stdout")).expect("stdout file");
        let err = File::create(dir.path().join("stderr")).expect("stderr file");
        let child = Command::new(bin())
            .arg("--config")
            .arg(&config)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn mono-proxy");
        let mut b = Binary {
            child,
            addr,
            admin,
            dir,
        };
        let url = b.admin_url("/healthz");
        let up = eventually(WAIT, || {
            let url = url.clone();
            async move { matches!(try_send(Method::GET, &url, &[], Bytes::new()).await, Ok(r) if r.status == 200) }
        })
        .await;
        if !up {
            let _ = b.child.kill();
            let _ = b.child.wait();
            panic!("mono-proxy did not come up:\n{}", b.stderr());
        }
        b
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit.
    pub async fn exited(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mono-proxy did not exit:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn output(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        self.output("stderr")
    }

    pub fn stdout(&self) -> String {
        self.output("stdout")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
