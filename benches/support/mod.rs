//! What the whole-proxy benches share: child processes started and reaped by PID, free loopback
//! ports, and readings of a process from `/proc`.
#![allow(dead_code)]

use std::error::Error;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The error type of the benches.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The key the sandbox accepts by default (the proxy gets it through `MONO_SEC_KEY`).
pub const SANDBOX_KEY: &str = "test_sk_sandbox";

/// How long a child gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A number from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Kills (by PID, through `Child`) and reaps every child when dropped, also on panic.
pub struct Children(pub Vec<(&'static str, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (name, child) in &mut self.0 {
            if let Err(e) = child.kill() {
                eprintln!("load: killing {name} (pid {}): {e}", child.id());
            }
            let _ = child.wait();
        }
    }
}

impl Children {
    /// Starts a child whose stderr shows through (its warnings are worth seeing).
    pub fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<u32, BoxError> {
        self.start(name, cmd.stderr(Stdio::inherit()))
    }

    /// Starts a child whose output is dropped (a proxy logging every request at `info`).
    pub fn spawn_quiet(&mut self, name: &'static str, cmd: &mut Command) -> Result<u32, BoxError> {
        self.start(name, cmd.stderr(Stdio::null()))
    }

    fn start(&mut self, name: &'static str, cmd: &mut Command) -> Result<u32, BoxError> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawning {name}: {e}"))?;
        let pid = child.id();
        self.0.push((name, child));
        Ok(pid)
    }

    /// Waits (bounded) until `addr` accepts connections, failing early if the child exited.
    pub fn wait_listening(&mut self, name: &str, addr: SocketAddr) -> Result<(), BoxError> {
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            for (n, child) in &mut self.0 {
                if *n == name {
                    if let Some(status) = child.try_wait()? {
                        return Err(format!("{name} exited during start: {status}").into());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("{name} did not listen on {addr} within {START_TIMEOUT:?}").into())
    }
}

/// A loopback port nobody holds right now.
pub fn free_addr() -> Result<SocketAddr, BoxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// utime + stime of a process, in ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes the command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Where cargo puts build output: `CARGO_TARGET_DIR`, else `<crate>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// The value at quantile `q` (0..=1) of sorted samples, nearest rank; 0 when empty.
pub fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Starts a private `redis-server` (no persistence, loopback only) on a free port as a child.
/// `Ok(None)` when no `redis-server` binary is installed.
pub fn spawn_redis_server(
    children: &mut Children,
    name: &'static str,
) -> Result<Option<SocketAddr>, BoxError> {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        return Ok(None);
    }
    let addr = free_addr()?;
    children.spawn_quiet(
        name,
        Command::new("redis-server")
            .arg("--port")
            .arg(addr.port().to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir()),
    )?;
    children.wait_listening(name, addr)?;
    Ok(Some(addr))
}

/// `N cores (CPU model)` of this machine, for the report's header.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("{cores} cores ({cpu})")
}

/// A bench's `main`: runs `run` under `cargo bench` (which passes `--bench`), skips under
/// `cargo test --all-targets`, and turns an error into exit status 1.
pub fn bench_main(name: &str, run: fn() -> Result<(), BoxError>) {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: skipped (run it with `cargo bench --bench {name}`)");
        return;
    }
    if let Err(e) = run() {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}

/// Starts `mono-proxy sandbox` on a free port with `latency_ms` per call.
pub fn spawn_sandbox(
    children: &mut Children,
    name: &'static str,
    latency_ms: u64,
) -> Result<SocketAddr, BoxError> {
    let addr = free_addr()?;
    children.spawn(
        name,
        Command::new(env!("CARGO_BIN_EXE_mono-proxy"))
            .arg("sandbox")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--latency")
            .arg(format!("{latency_ms}ms"))
            .env("MONO_SANDBOX_KEY", SANDBOX_KEY)
            .env("RUST_LOG", "warn"),
    )?;
    children.wait_listening(name, addr)?;
    Ok(addr)
}

/// Starts the proxy in front of `upstream` (`http://` unless `upstream_toml` says otherwise),
/// with long TTLs and windows so nothing expires mid-run; its address, pid and config file.
pub fn spawn_proxy(
    children: &mut Children,
    name: &'static str,
    sandbox: SocketAddr,
    upstream_toml: &str,
) -> Result<(SocketAddr, u32, tempfile::NamedTempFile), BoxError> {
    let proxy = free_addr()?;
    let admin = free_addr()?;
    let mut config = tempfile::Builder::new()
        .prefix("mono-proxy-load-")
        .suffix(".toml")
        .tempfile()?;
    let upstream = if upstream_toml.is_empty() {
        format!("base_url = \"http://{sandbox}\"\n")
    } else {
        upstream_toml.to_string()
    };
    let toml = format!(
        "listen = \"{proxy}\"\nadmin_listen = \"{admin}\"\n\
         [upstream]\n{upstream}\
         [realtime]\nwindow = \"1h\"\n\
         [cache]\nttl = \"1h\"\nmax_bytes = \"1GiB\"\n\
         [log]\nfilter = \"warn\"\n"
    );
    std::io::Write::write_all(&mut config, toml.as_bytes())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mono-proxy"));
    cmd.arg("--config").arg(config.path());
    cmd.env("MONO_SEC_KEY", SANDBOX_KEY);
    for (k, _) in std::env::vars() {
        if k.starts_with("MONO_PROXY_") {
            cmd.env_remove(k);
        }
    }
    let pid = children.spawn(name, &mut cmd)?;
    children.wait_listening(name, proxy)?;
    Ok((proxy, pid, config))
}
