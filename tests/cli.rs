//! The real `mono-proxy` binary: config checking, refusing to start without a key, graceful
//! SIGTERM, the demo, and keeping the secret out of its output.

mod support;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use http::Method;
use mono_proxy::sandbox::Fault;
use support::*;
use tokio::process::{Child, Command};

/// Request headers as name/value pairs.
type Headers<'a> = &'a [(&'a str, &'a str)];

/// Longest any one process step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(20);

/// The binary with no `MONO_*` or `RUST_LOG` inherited from the test's environment.
fn mono_proxy(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("MONO_") || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd.current_dir(dir).stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// A running binary whose stdout and stderr go to files (no pipe can fill and stall it).
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: Command, dir: &Path) -> Proc {
        let out = dir.join("stdout.log");
        let err = dir.join("stderr.log");
        cmd.stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
        let child = cmd.spawn().expect("mono-proxy starts");
        Proc { child, out, err }
    }

    fn output(&self) -> String {
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        format!("--- stdout ---\n{out}\n--- stderr ---\n{err}")
    }

    /// Sends SIGTERM through `kill(1)` (the crate does not depend on libc).
    async fn terminate(&self) {
        let pid = self.child.id().expect("still running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    async fn wait(&mut self) -> ExitStatus {
        match tokio::time::timeout(STEP, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("mono-proxy did not exit within {STEP:?}\n{}", self.output()),
        }
    }
}

/// Waits until something accepts TCP connections on `addr`.
async fn listening(addr: SocketAddr, proc: &Proc) {
    let up = eventually(STEP, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "nothing listens on {addr}\n{}", proc.output());
}

/// Writes a proxy config in `dir` and returns its path.
/// Runs `mono-proxy check --config <config>` with the test key, bounded in time.
async fn check(dir: &Path, config: &Path) -> std::process::Output {
    let mut cmd = mono_proxy(dir);
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .env("MONO_SEC_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::time::timeout(STEP, cmd.output())
        .await
        .expect("check finishes")
        .expect("check runs")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("proxy-test.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_config(listen: SocketAddr, admin: SocketAddr, base_url: &str) -> String {
    format!(
        "listen = \"{listen}\"\nadmin_listen = \"{admin}\"\n\n[upstream]\nbase_url = \"{base_url}\"\n\n[server]\ndrain_timeout = \"10s\"\n"
    )
}

/// The binary running in front of `sb` on free loopback ports, once it listens; its directory
/// (kept until dropped), the process, and its proxy and admin addresses.
async fn running_proxy(
    sb: &mono_proxy::sandbox::RunningSandbox,
) -> (tempfile::TempDir, Proc, SocketAddr, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let config = write_config(dir.path(), &run_config(listen, admin, &sb.base_url(false)));
    let mut cmd = mono_proxy(dir.path());
    cmd.arg("--config").arg(&config).env("MONO_SEC_KEY", KEY);
    let proc = Proc::spawn(cmd, dir.path());
    listening(listen, &proc).await;
    (dir, proc, listen, admin)
}

/// Runs a command to its end, bounded by [`STEP`].
async fn finished(cmd: &mut Command) -> std::process::Output {
    tokio::time::timeout(STEP, cmd.output())
        .await
        .expect("the command finishes in time")
        .expect("the command runs")
}

async fn bounded_get(url: &str, headers: &[(&str, &str)]) -> Reply {
    tokio::time::timeout(STEP, get(url, headers))
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer within {STEP:?}"))
}

#[tokio::test]
async fn check_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "listen = \"127.0.0.1:18080\"\n\n[upstream]\nbase_url = \"ftp://api.withmono.com\"\ntimeout = \"soon\"\nbogus_key = 1\n",
    );
    let out = check(dir.path(), &config).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("bogus_key"), "unknown key named: {text}");
    assert!(text.contains("timeout"), "bad duration named: {text}");
    assert!(text.contains("base_url"), "bad base_url named: {text}");
    assert!(text.contains("3 configuration problem"), "{text}");

    // The same file fixed passes.
    let good = write_config(
        dir.path(),
        "listen = \"127.0.0.1:18080\"\n\n[upstream]\nbase_url = \"https://api.withmono.com\"\ntimeout = \"10s\"\n",
    );
    let out = check(dir.path(), &good).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_proxy_refuses_to_start_without_a_secret_key() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    // A config with everything but the key, so the only missing thing is MONO_SEC_KEY.
    let config = write_config(dir.path(), &run_config(listen, admin, "http://127.0.0.1:9"));
    for args in [
        vec![],
        vec!["--config".to_string(), config.display().to_string()],
    ] {
        let mut cmd = mono_proxy(dir.path());
        cmd.args(&args).env("MONO_PROXY_LISTEN", listen.to_string());
        let mut proc = Proc::spawn(cmd, dir.path());
        let status = proc.wait().await;
        let output = proc.output();
        assert!(
            !status.success(),
            "{args:?}: started without a key\n{output}"
        );
        assert!(output.contains("MONO_SEC_KEY"), "{args:?}: {output}");
    }
}

#[tokio::test]
async fn sigterm_drains_the_request_in_flight_and_exits_zero() {
    let sb = sandbox(sandbox_config()).await;
    let (_dir, mut proc, listen, admin) = running_proxy(&sb).await;
    let health = bounded_get(&format!("http://{admin}/healthz"), &[]).await;
    assert_eq!(health.status, 200, "{}", proc.output());

    sb.sandbox
        .set_fault(Some(Fault::Latency(Duration::from_secs(1))));
    let url = format!("http://{listen}/v2/echo/slow");
    let in_flight = tokio::spawn(async move { bounded_get(&url, &[]).await });
    let reached = eventually(STEP, || async { sb.sandbox.count("total") == 1 }).await;
    assert!(
        reached,
        "the slow request reached the sandbox\n{}",
        proc.output()
    );
    proc.terminate().await;

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), proc.output());
    assert_eq!(reply.json()["path"], "/v2/echo/slow");
    let status = proc.wait().await;
    assert!(status.success(), "exit {status:?}\n{}", proc.output());
}

#[tokio::test]
async fn demo_serves_a_balance_through_the_proxy_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let mut cmd = mono_proxy(dir.path());
    cmd.arg("demo").arg("--listen").arg(listen.to_string());
    let mut proc = Proc::spawn(cmd, dir.path());
    listening(listen, &proc).await;
    let reply = bounded_get(&format!("http://{listen}/v2/accounts/demo123/balance"), &[]).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), proc.output());
    assert!(reply.text().contains("\"balance\""), "{}", reply.text());
    assert_eq!(reply.header("x-cache"), Some("MISS"));
    let again = bounded_get(&format!("http://{listen}/v2/accounts/demo123/balance"), &[]).await;
    assert_eq!(again.header("x-cache"), Some("HIT"));
    assert!(
        proc.output().contains(&format!("http://{listen}")),
        "the demo prints where to send requests\n{}",
        proc.output()
    );
    proc.terminate().await;
    let status = proc.wait().await;
    assert!(status.success(), "exit {status:?}\n{}", proc.output());
}

#[tokio::test]
async fn the_secret_key_never_appears_in_the_output() {
    // Split so the source never holds a string shaped like a real key.
    const NEEDLE: &str = concat!("test_sk_", "needle0123456789");
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let (_refusing, port) = refusing_port();
    let down = format!("http://127.0.0.1:{port}");
    let config = write_config(dir.path(), &run_config(listen, admin, &down));
    let mut cmd = mono_proxy(dir.path());
    cmd.arg("--config")
        .arg(&config)
        .env("MONO_SEC_KEY", NEEDLE)
        .env("MONO_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("RUST_LOG", "debug");
    let mut proc = Proc::spawn(cmd, dir.path());
    listening(listen, &proc).await;

    let base = format!("http://{listen}");
    let calls: [(&str, Headers<'_>, u16); 6] = [
        ("/v2/accounts/acc1/balance", &[], 502),
        ("/v2/accounts/acc1/balance", &[("x-realtime", "true")], 502),
        ("/v2/accounts/acc1/jobs/job_1", &[], 502),
        ("/v2/echo", &[("mono-sec-key", "app_key")], 502),
        ("/v2/accounts/a%20b/balance", &[], 400),
        ("/v2/accounts/acc1/balance", &[("x-realtime", "maybe")], 400),
    ];
    for (path, headers, expected) in calls {
        let reply = bounded_get(&format!("{base}{path}"), headers).await;
        assert_eq!(reply.status, expected, "{path}: {}", reply.text());
        assert!(!reply.text().contains(NEEDLE), "{path}: {}", reply.text());
    }
    let hook = tokio::time::timeout(
        STEP,
        send(
            Method::POST,
            &format!("{base}/webhooks/mono"),
            &[("mono-webhook-secret", "wrong")],
            "{}",
        ),
    )
    .await
    .expect("webhook answered");
    assert_eq!(hook.status, 401);
    let metrics = bounded_get(&format!("http://{admin}/metrics"), &[]).await;
    assert!(!metrics.text().contains(NEEDLE));

    proc.terminate().await;
    let status = proc.wait().await;
    let output = proc.output();
    assert!(status.success(), "exit {status:?}\n{output}");
    // The run was logged at debug (so the check below looked at real output).
    assert!(output.contains("upstream"), "{output}");
    assert!(output.contains("DEBUG"), "{output}");
    assert!(!output.contains(NEEDLE), "the secret leaked:\n{output}");
    assert!(
        !output.contains("needle0123456789"),
        "part of the secret leaked"
    );
}

#[tokio::test]
async fn credentials_in_a_bad_redis_url_never_reach_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    for url in [
        "http://user:hunter2@127.0.0.1:1",
        "redis:/user:hunter2@127.0.0.1:1",
        "user:hunter2@127.0.0.1:1",
    ] {
        let text = format!(
            "{}\n[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\n",
            run_config(listen, admin, "http://127.0.0.1:9")
        );
        let config = write_config(dir.path(), &text);
        let out = check(dir.path(), &config).await;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{url}: {printed}");
        assert!(printed.contains("store.redis_url"), "{url}: {printed}");
        assert!(!printed.contains("hunter2"), "{url}: {printed}");

        // Start-up refuses the same file the same way.
        let mut cmd = mono_proxy(dir.path());
        cmd.arg("--config").arg(&config).env("MONO_SEC_KEY", KEY);
        let mut proc = Proc::spawn(cmd, dir.path());
        assert!(!proc.wait().await.success());
        let output = proc.output();
        assert!(output.contains("store.redis_url"), "{url}: {output}");
        assert!(!output.contains("hunter2"), "{url}: {output}");
    }
}

#[tokio::test]
async fn a_redis_password_never_appears_in_the_log_of_a_running_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    // Nothing listens on port 1: the store starts degraded and says why.
    let text = format!(
        "{}\n[store]\nbackend = \"redis\"\nredis_url = \"redis://user:hunter2@127.0.0.1:1/0\"\n",
        run_config(listen, admin, "http://127.0.0.1:9")
    );
    let config = write_config(dir.path(), &text);
    let mut cmd = mono_proxy(dir.path());
    cmd.arg("--config")
        .arg(&config)
        .env("MONO_SEC_KEY", KEY)
        .env("RUST_LOG", "trace");
    let mut proc = Proc::spawn(cmd, dir.path());
    listening(listen, &proc).await;
    let ready = bounded_get(&format!("http://{admin}/readyz"), &[]).await;
    assert!(ready.text().contains("degraded"), "{}", ready.text());
    assert!(!ready.text().contains("hunter2"), "{}", ready.text());
    proc.terminate().await;
    proc.wait().await;
    let output = proc.output();
    assert!(output.contains("redis"), "{output}");
    assert!(!output.contains("hunter2"), "{output}");
}

/// `mono-proxy healthcheck [--ready]` with `config`, bounded in time.
async fn healthcheck(dir: &Path, config: &Path, ready: bool) -> std::process::Output {
    let mut cmd = mono_proxy(dir);
    cmd.arg("healthcheck").arg("--config").arg(config);
    if ready {
        cmd.arg("--ready");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    tokio::time::timeout(STEP, cmd.output())
        .await
        .expect("healthcheck finishes")
        .expect("healthcheck runs")
}

#[tokio::test]
async fn healthcheck_probes_the_admin_listener_the_config_names() {
    let sb = sandbox(sandbox_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let config = write_config(dir.path(), &run_config(listen, admin, &sb.base_url(false)));

    // Nothing runs yet: unhealthy, one line, exit 1.
    let down = healthcheck(dir.path(), &config, false).await;
    assert_eq!(down.status.code(), Some(1));
    let line = String::from_utf8_lossy(&down.stdout);
    assert!(line.starts_with("unhealthy"), "{line}");
    assert_eq!(line.trim().lines().count(), 1, "{line}");

    let mut cmd = mono_proxy(dir.path());
    cmd.arg("--config").arg(&config).env("MONO_SEC_KEY", KEY);
    let mut proc = Proc::spawn(cmd, dir.path());
    listening(admin, &proc).await;
    for ready in [false, true] {
        // No key in the probe's environment: it needs none.
        let up = healthcheck(dir.path(), &config, ready).await;
        let line = String::from_utf8_lossy(&up.stdout);
        assert!(up.status.success(), "{line}\n{}", proc.output());
        assert!(line.starts_with("healthy"), "{line}");
    }
    // The environment names the admin port, as in the container image.
    let mut env_only = mono_proxy(dir.path());
    env_only
        .arg("healthcheck")
        .env(
            "MONO_PROXY_ADMIN_LISTEN",
            format!("0.0.0.0:{}", admin.port()),
        )
        // Beyond loopback the config needs an admin token; the probe itself sends none.
        .env("MONO_PROXY_ADMIN_TOKEN", "admin-token-for-the-probe-test")
        .stdout(Stdio::piped());
    let out = finished(&mut env_only).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    proc.terminate().await;
    assert!(proc.wait().await.success());
}

#[tokio::test]
async fn check_print_shows_the_effective_config_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[store]\nbackend = \"redis\"\nredis_url = \"redis://app:hunter2@127.0.0.1:6379\"\n\
         [[clients]]\nname = \"billing\"\ntoken_env = \"TOKEN_B\"\nquota = \"100/day\"\n",
    );
    let mut cmd = mono_proxy(dir.path());
    cmd.args(["check", "--print", "--config"])
        .arg(&config)
        .env("MONO_SEC_KEY", KEY)
        .env("TOKEN_B", "client-token-secret")
        .env("MONO_PROXY_LISTEN", "127.0.0.1:18080")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = finished(&mut cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    // Stdout is the config alone, as TOML, with defaults and the environment applied.
    let t: toml::Table = printed.parse().unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(t["listen"].as_str(), Some("127.0.0.1:18080"));
    assert_eq!(t["cache"]["ttl"].as_str(), Some("5m"));
    assert_eq!(
        t["clients"][0]["limits"]["quota"]["calls"].as_integer(),
        Some(100)
    );
    assert_eq!(t["upstream"]["secret_key"].as_str(), Some("[redacted]"));
    for secret in [KEY, "hunter2", "client-token-secret"] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
}

#[tokio::test]
async fn the_log_filter_changes_at_run_time_through_the_admin_api() {
    let sb = sandbox(sandbox_config()).await;
    let (_dir, mut proc, listen, admin) = running_proxy(&sb).await;
    let log_url = format!("http://{admin}/log");
    let now = bounded_get(&log_url, &[]).await;
    assert_eq!(now.json()["filter"], "info", "{}", proc.output());
    let access_lines = |p: &Proc| p.output().matches("mono_proxy::access").count();
    let balance = format!("http://{listen}/v2/accounts/logs1/balance");
    assert_eq!(bounded_get(&balance, &[]).await.status, 200);
    let before = access_lines(&proc);
    assert!(before >= 1, "{}", proc.output());

    // Access events are at info: a warn filter silences them, at once, without a restart.
    let put = |body: &'static str| {
        let url = log_url.clone();
        async move { send(Method::PUT, &url, &[], body.to_string()).await }
    };
    let set = put("warn").await;
    assert_eq!(set.status, 200, "{}", set.text());
    assert_eq!(bounded_get(&log_url, &[]).await.json()["filter"], "warn");
    assert_eq!(bounded_get(&balance, &[]).await.status, 200);
    assert_eq!(access_lines(&proc), before, "{}", proc.output());
    // A bad filter is refused and the one in force stays.
    let bad = put("mono_proxy=[[[").await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bounded_get(&log_url, &[]).await.json()["filter"], "warn");
    assert_eq!(put("info").await.status, 200);
    assert_eq!(bounded_get(&balance, &[]).await.status, 200);
    let back = eventually(STEP, || async { access_lines(&proc) > before }).await;
    assert!(back, "{}", proc.output());
    proc.terminate().await;
    assert!(proc.wait().await.success());
}
