//! Real Redis servers of four kinds for the Redis-store tests: TLS, ACL, Cluster and Sentinel.
//!
//! Each kind runs private `redis-server` processes on free 127.0.0.1 ports, with their files
//! (certificates, configs, logs, node tables) in a temporary directory that lives as long as the
//! value. Processes are killed on drop. Every wait is bounded by [`READY_TIMEOUT`] and panics with
//! what it last saw plus the tail of each server's log.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use super::free_port;

/// How long any one wait (a server becoming ready, a failover) may take before it panics.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one `redis-cli` invocation may take before it is killed.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// What to install when a Redis binary is missing.
const INSTALL_HINT: &str = "Install it (Debian/Ubuntu: `apt-get install redis-server redis-tools \
                            redis-sentinel`, macOS: `brew install redis`).";

/// What one `redis-cli` run printed.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Whether `redis-cli` exited with status 0 (an error *reply* still exits 0; a failed
    /// connection or TLS handshake does not).
    pub ok: bool,
    /// Standard output (replies, one per line, as `redis-cli` prints them when not on a TTY).
    pub stdout: String,
    /// Standard error (connection and TLS errors).
    pub stderr: String,
}

impl CliOutput {
    /// Stdout and stderr together, for assertion messages.
    pub fn both(&self) -> String {
        format!("stdout: {:?}, stderr: {:?}", self.stdout, self.stderr)
    }
}

/// Runs `redis-cli ARGS...` (killed after 10 s); panics when `redis-cli` cannot be started.
pub fn redis_cli(args: &[&str]) -> CliOutput {
    let mut child = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-cli ({e}); it ships with Redis (Debian/Ubuntu package \
                 `redis-tools`). {INSTALL_HINT}"
            )
        });
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let mut stderr = stderr.join().unwrap_or_default();
    if status.is_none() {
        stderr.push_str("\n(redis-cli killed after 10 s)");
    }
    CliOutput {
        ok: status.is_some_and(|s| s.success()),
        stdout,
        stderr,
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// `n` distinct free loopback ports.
fn free_ports(n: usize) -> Vec<u16> {
    let mut seen = HashSet::new();
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let port = free_port();
        if seen.insert(port) {
            ports.push(port);
        }
    }
    ports
}

/// A `redis-server` process with its log file; killed on drop.
struct Server {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    /// Starts `redis-server ARGS...` in `dir`, logging to `dir/<name>.log`.
    fn spawn(name: &str, dir: &Path, args: &[&str]) -> Server {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("create the redis log file");
        let err = out.try_clone().expect("clone the redis log file");
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server for {name} ({e}). {INSTALL_HINT}")
            });
        Server {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// Panics (with the log tail) when the process has exited.
    fn assert_running(&mut self, waiting_for: &str) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.child = None;
            panic!(
                "{} exited ({status}) while waiting for {waiting_for}.\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// The last lines of the log, labelled.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!(
            "--- last lines of {} ({}) ---\n{tail}",
            self.name,
            self.log.display()
        )
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ready` every 50 ms until it returns `Ok`, for at most [`READY_TIMEOUT`]; panics early
/// when one of `servers` exits, and on timeout with the last error and the servers' logs.
fn wait_until(
    what: &str,
    servers: &mut [&mut Server],
    mut ready: impl FnMut() -> Result<(), String>,
) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        for server in servers.iter_mut() {
            server.assert_running(what);
        }
        let last = match ready() {
            Ok(()) => return,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let logs: Vec<String> = servers.iter().map(|s| s.log_tail()).collect();
            panic!(
                "{what}: not ready within {} s (last check: {last}).\n{}",
                READY_TIMEOUT.as_secs(),
                logs.join("\n")
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `Ok` when a `redis-cli` reply (stdout) is exactly `PONG`.
fn pong(out: &CliOutput) -> Result<(), String> {
    if out.ok && out.stdout.trim() == "PONG" {
        Ok(())
    } else {
        Err(out.both())
    }
}

/// Common `redis-server` flags: loopback only, no persistence.
const NO_PERSISTENCE: [&str; 6] = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

/// Writes `text` to `dir/name` and returns the path.
fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A `redis-server` that speaks only TLS (`rediss://`), with certificates from a private CA.
///
/// The server certificate is valid for `127.0.0.1` (IP SAN) and `localhost`. The plain-text port is
/// off (`--port 0`).
pub struct TlsRedis {
    /// `rediss://127.0.0.1:PORT`.
    pub url: String,
    /// The TLS port.
    pub port: u16,
    /// PEM of the CA that signed the server and client certificates.
    pub ca_file: PathBuf,
    /// PEM of an unrelated CA that signed nothing here (verification against it must fail).
    pub wrong_ca_file: PathBuf,
    /// PEM client certificate signed by `ca_file` (required when started with client auth).
    pub client_cert: PathBuf,
    /// PEM (PKCS#8) private key of `client_cert`.
    pub client_key: PathBuf,
    /// Whether the server requires a client certificate (`--tls-auth-clients yes`).
    pub require_client_cert: bool,
    server: Server,
    _dir: TempDir,
}

impl TlsRedis {
    /// Generates the certificates and starts the server; returns once a TLS `PING` (with the
    /// right CA, and the client certificate when required) answers `PONG`.
    pub fn start(require_client_cert: bool) -> TlsRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = TestCerts::generate();
        let ca_file = write_file(dir.path(), "ca.pem", &certs.ca);
        let wrong_ca_file = write_file(dir.path(), "wrong-ca.pem", &certs.wrong_ca);
        let server_cert = write_file(dir.path(), "server.pem", &certs.server_cert);
        let server_key = write_file(dir.path(), "server-key.pem", &certs.server_key);
        let client_cert = write_file(dir.path(), "client.pem", &certs.client_cert);
        let client_key = write_file(dir.path(), "client-key.pem", &certs.client_key);

        let port = free_port();
        let port_text = port.to_string();
        let mut args = vec![
            "--port",
            "0",
            "--tls-port",
            &port_text,
            "--tls-cert-file",
            path_str(&server_cert),
            "--tls-key-file",
            path_str(&server_key),
            "--tls-ca-cert-file",
            path_str(&ca_file),
            "--tls-auth-clients",
            if require_client_cert { "yes" } else { "no" },
            "--dir",
            path_str(dir.path()),
        ];
        args.extend(NO_PERSISTENCE);
        let mut server = Server::spawn(&format!("tls-redis-{port}"), dir.path(), &args);

        let client = (client_cert.as_path(), client_key.as_path());
        wait_until(
            &format!(
                "TLS redis on 127.0.0.1:{port} (redis-server must be built with TLS; \
                 Debian's is)"
            ),
            &mut [&mut server],
            || pong(&tls_cli(port, &ca_file, Some(client), &["PING"])),
        );
        TlsRedis {
            url: format!("rediss://127.0.0.1:{port}"),
            port,
            ca_file,
            wrong_ca_file,
            client_cert,
            client_key,
            require_client_cert,
            server,
            _dir: dir,
        }
    }

    /// Runs `redis-cli --tls` against this server with the right CA (and the client certificate),
    /// returning its stdout with the trailing newline removed; panics when `redis-cli` fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_with(&self.ca_file, true, args);
        assert!(
            out.ok,
            "redis-cli --tls -p {} {args:?}: {}",
            self.port,
            out.both()
        );
        out.stdout.trim_end().to_string()
    }

    /// Runs `redis-cli --tls --cacert CA [--cert --key] -p PORT ARGS...` with the given CA file,
    /// with or without the client certificate; never panics on a failed handshake.
    pub fn cli_with(&self, ca: &Path, with_client_cert: bool, args: &[&str]) -> CliOutput {
        let client = (self.client_cert.as_path(), self.client_key.as_path());
        tls_cli(self.port, ca, with_client_cert.then_some(client), args)
    }
}

/// `redis-cli --tls --cacert CA [--cert C --key K] -h 127.0.0.1 -p PORT ARGS...`.
fn tls_cli(port: u16, ca: &Path, client: Option<(&Path, &Path)>, args: &[&str]) -> CliOutput {
    let port = port.to_string();
    let mut all = vec!["--tls", "--cacert", path_str(ca)];
    if let Some((cert, key)) = client {
        all.extend(["--cert", path_str(cert), "--key", path_str(key)]);
    }
    all.extend(["-h", "127.0.0.1", "-p", &port]);
    all.extend(args);
    redis_cli(&all)
}

/// PEM texts of the test PKI.
struct TestCerts {
    ca: String,
    wrong_ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl TestCerts {
    fn generate() -> TestCerts {
        let ca = test_ca("mono-proxy test CA");
        let wrong_ca = test_ca("mono-proxy unrelated CA");

        let mut server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .expect("server cert params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server.use_authority_key_identifier_extension = true;
        let server_key = KeyPair::generate().expect("server key");
        let server_cert = server
            .signed_by(&server_key, &ca)
            .expect("sign the server cert");

        let mut client = CertificateParams::new(vec!["mono-proxy-test-client".to_string()])
            .expect("client cert params");
        client
            .distinguished_name
            .push(DnType::CommonName, "mono-proxy test client");
        client.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        client.use_authority_key_identifier_extension = true;
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = client
            .signed_by(&client_key, &ca)
            .expect("sign the client cert");

        TestCerts {
            ca: ca.pem(),
            wrong_ca: wrong_ca.pem(),
            server_cert: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        }
    }
}

/// A self-signed CA named `name`.
fn test_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA cert")
}

// ---------------------------------------------------------------------------------------------
// ACL
// ---------------------------------------------------------------------------------------------

/// A `redis-server` that requires authentication: the `default` user has `default_password`
/// (`requirepass`), and an ACL user `user` (`proxy`) has `password` and full rights.
pub struct AclRedis {
    /// The plain-text port.
    pub port: u16,
    /// The ACL user's name (`proxy`).
    pub user: String,
    /// The ACL user's password (random).
    pub password: String,
    /// The `default` user's password (`requirepass`, random, different from `password`).
    pub default_password: String,
    server: Server,
    _dir: TempDir,
}

impl AclRedis {
    /// Starts the server; returns once `AUTH proxy <password>` + `PING` answers `PONG`.
    pub fn start() -> AclRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let user = "proxy".to_string();
        let password = uuid::Uuid::new_v4().simple().to_string();
        let default_password = uuid::Uuid::new_v4().simple().to_string();
        let port_text = port.to_string();
        let secret = format!(">{password}");
        // `--user` takes the rule words as separate arguments: redis-server quotes each argument,
        // so one argument "proxy on >pw ..." would be read as a user name containing spaces.
        let mut args = vec![
            "--port",
            &port_text,
            "--requirepass",
            &default_password,
            "--user",
            &user,
            "on",
            &secret,
            "~*",
            "&*",
            "+@all",
            "--dir",
            path_str(dir.path()),
        ];
        args.extend(NO_PERSISTENCE);
        let mut server = Server::spawn(&format!("acl-redis-{port}"), dir.path(), &args);
        wait_until(
            &format!("ACL redis on 127.0.0.1:{port}"),
            &mut [&mut server],
            || {
                pong(&redis_cli(&[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port_text,
                    "--user",
                    &user,
                    "--pass",
                    &password,
                    "--no-auth-warning",
                    "PING",
                ]))
            },
        );
        AclRedis {
            port,
            user,
            password,
            default_password,
            server,
            _dir: dir,
        }
    }

    /// `redis://proxy:PASSWORD@127.0.0.1:PORT` (the ACL user).
    pub fn url_with_user(&self) -> String {
        format!(
            "redis://{}:{}@127.0.0.1:{}",
            self.user, self.password, self.port
        )
    }

    /// `redis://:DEFAULT_PASSWORD@127.0.0.1:PORT` (password only: the `default` user).
    pub fn url_with_default_password(&self) -> String {
        format!("redis://:{}@127.0.0.1:{}", self.default_password, self.port)
    }

    /// `redis://127.0.0.1:PORT` (no credentials: every command gets `NOAUTH`).
    pub fn url_without_password(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

/// A Redis Cluster of `masters` master nodes, no replicas, all 16384 slots assigned.
///
/// Each node's cluster bus uses its own free port (`--cluster-port`), so node ports may be
/// anywhere (the default bus port, port + 10000, often falls outside 1..=65535).
pub struct RedisCluster {
    /// `redis://127.0.0.1:PORT` for each node.
    pub nodes: Vec<String>,
    /// Each node's client port.
    pub ports: Vec<u16>,
    servers: Vec<Server>,
    _dir: TempDir,
}

impl RedisCluster {
    /// Starts `masters` (at least 3, as `redis-cli --cluster create` requires) nodes, creates
    /// the cluster and returns once every node reports `cluster_state:ok`, all slots covered
    /// and knows all the nodes.
    pub fn start(masters: usize) -> RedisCluster {
        assert!(
            masters >= 3,
            "RedisCluster::start({masters}): `redis-cli --cluster create` needs at least 3 masters"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let all = free_ports(masters * 2);
        let (ports, bus_ports) = all.split_at(masters);
        let mut servers = Vec::with_capacity(masters);
        for (&port, &bus) in ports.iter().zip(bus_ports) {
            let port_text = port.to_string();
            let bus_text = bus.to_string();
            let node_dir = dir.path().join(format!("node-{port}"));
            fs::create_dir(&node_dir).expect("node dir");
            let nodes_conf = dir.path().join(format!("nodes-{port}.conf"));
            let mut args = vec![
                "--port",
                &port_text,
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus_text,
                "--cluster-config-file",
                path_str(&nodes_conf),
                "--cluster-node-timeout",
                "2000",
                "--dir",
                path_str(&node_dir),
            ];
            args.extend(NO_PERSISTENCE);
            servers.push(Server::spawn(
                &format!("cluster-node-{port}"),
                dir.path(),
                &args,
            ));
        }
        let mut cluster = RedisCluster {
            nodes: ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
            ports: ports.to_vec(),
            servers,
            _dir: dir,
        };

        for &port in &cluster.ports {
            let port_text = port.to_string();
            let mut refs: Vec<&mut Server> = cluster.servers.iter_mut().collect();
            wait_until(&format!("cluster node 127.0.0.1:{port}"), &mut refs, || {
                pong(&redis_cli(&["-h", "127.0.0.1", "-p", &port_text, "PING"]))
            });
        }

        let addrs: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = redis_cli(&create);
        assert!(
            out.ok && !out.stdout.contains("[ERR]"),
            "redis-cli --cluster create failed: {}",
            out.both()
        );

        let known = format!("cluster_known_nodes:{masters}");
        let ports = cluster.ports.clone();
        for port in ports {
            let port_text = port.to_string();
            let mut refs: Vec<&mut Server> = cluster.servers.iter_mut().collect();
            wait_until(
                &format!("cluster_state:ok on 127.0.0.1:{port}"),
                &mut refs,
                || {
                    let out = redis_cli(&["-h", "127.0.0.1", "-p", &port_text, "CLUSTER", "INFO"]);
                    let info = out.stdout.replace('\r', "");
                    let ok = info.lines().any(|l| l == "cluster_state:ok")
                        && info.lines().any(|l| l == "cluster_slots_ok:16384")
                        && info.lines().any(|l| l == known);
                    if ok {
                        Ok(())
                    } else {
                        Err(out.both())
                    }
                },
            );
        }
        cluster
    }

    /// Runs `redis-cli -c -p <first port> ARGS...` (following redirects) and returns its stdout
    /// with the trailing newline removed; panics when `redis-cli` fails.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.ports[0].to_string();
        let mut all = vec!["-c", "-h", "127.0.0.1", "-p", &port];
        all.extend(args);
        let out = redis_cli(&all);
        assert!(out.ok, "redis-cli {all:?}: {}", out.both());
        out.stdout.trim_end().to_string()
    }

    /// `KEYS pattern` on every node (each holds only its own slots), concatenated.
    pub fn keys_on_all(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for port in &self.ports {
            let port_text = port.to_string();
            let out = redis_cli(&["-h", "127.0.0.1", "-p", &port_text, "KEYS", pattern]);
            assert!(out.ok, "redis-cli -p {port} KEYS {pattern}: {}", out.both());
            keys.extend(
                out.stdout
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        keys
    }
}

// ---------------------------------------------------------------------------------------------
// Sentinel
// ---------------------------------------------------------------------------------------------

/// A master, one replica and one Sentinel (quorum 1) watching them as `master_name`.
///
/// Sentinel marks the master down after 1 s, so [`SentinelSet::kill_master`] followed by
/// [`SentinelSet::wait_for_failover`] promotes the replica within a few seconds.
pub struct SentinelSet {
    /// The name Sentinel knows the master by (`mymaster`).
    pub master_name: String,
    /// `redis://127.0.0.1:SENTINEL_PORT` for each Sentinel (one).
    pub sentinel_urls: Vec<String>,
    /// The original master's port.
    pub master_port: u16,
    /// The replica's port (the master after a failover).
    pub replica_port: u16,
    /// The Sentinel's port.
    pub sentinel_port: u16,
    master: Server,
    replica: Server,
    sentinel: Server,
    _dir: TempDir,
}

impl SentinelSet {
    /// Starts master, replica and Sentinel; returns once the replica's link is up, Sentinel
    /// names the master and lists the replica as healthy.
    pub fn start() -> SentinelSet {
        SentinelSet::start_with_password(None)
    }

    /// Like [`SentinelSet::start`], with `requirepass` on the master and the replica (the
    /// sentinel itself has none, as in most deployments).
    pub fn start_with_password(password: Option<&str>) -> SentinelSet {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut auth_args: Vec<&str> = Vec::new();
        let mut cli_auth: Vec<&str> = Vec::new();
        if let Some(pw) = password {
            auth_args.extend(["--requirepass", pw, "--masterauth", pw]);
            cli_auth.extend(["-a", pw, "--no-auth-warning"]);
        }
        let name = "mymaster".to_string();
        let ports = free_ports(3);
        let (master_port, replica_port, sentinel_port) = (ports[0], ports[1], ports[2]);
        let (mp, rp) = (master_port.to_string(), replica_port.to_string());

        let master_dir = dir.path().join("master");
        let replica_dir = dir.path().join("replica");
        let sentinel_dir = dir.path().join("sentinel");
        for d in [&master_dir, &replica_dir, &sentinel_dir] {
            fs::create_dir(d).expect("create a data dir");
        }

        // No 5 s wait before the first (diskless) full sync of the replica.
        let mut args = vec![
            "--port",
            &mp,
            "--repl-diskless-sync-delay",
            "0",
            "--dir",
            path_str(&master_dir),
        ];
        args.extend(NO_PERSISTENCE);
        args.extend(&auth_args);
        let mut master = Server::spawn(&format!("master-{master_port}"), dir.path(), &args);
        wait_until(
            &format!("master on 127.0.0.1:{master_port}"),
            &mut [&mut master],
            || {
                let mut cmd = vec!["-h", "127.0.0.1", "-p", &mp];
                cmd.extend(&cli_auth);
                cmd.push("PING");
                pong(&redis_cli(&cmd))
            },
        );

        let mut args = vec![
            "--port",
            &rp,
            "--replicaof",
            "127.0.0.1",
            &mp,
            "--dir",
            path_str(&replica_dir),
        ];
        args.extend(NO_PERSISTENCE);
        args.extend(&auth_args);
        let mut replica = Server::spawn(&format!("replica-{replica_port}"), dir.path(), &args);
        wait_until(
            &format!("replica on 127.0.0.1:{replica_port} (master_link_status:up)"),
            &mut [&mut master, &mut replica],
            || {
                let mut cmd = vec!["-h", "127.0.0.1", "-p", &rp];
                cmd.extend(&cli_auth);
                cmd.extend(["INFO", "replication"]);
                let out = redis_cli(&cmd);
                if out
                    .stdout
                    .replace('\r', "")
                    .lines()
                    .any(|l| l == "master_link_status:up")
                {
                    Ok(())
                } else {
                    Err(out.both())
                }
            },
        );

        // Sentinel rewrites its config file, so it lives in the (writable) temp dir.
        let auth_pass = password
            .map(|pw| format!("sentinel auth-pass {name} {pw}\n"))
            .unwrap_or_default();
        let conf = write_file(
            dir.path(),
            "sentinel.conf",
            &format!(
                "port {sentinel_port}\n\
                 bind 127.0.0.1\n\
                 dir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 1\n\
                 {auth_pass}",
                sentinel_dir.display()
            ),
        );
        let mut sentinel = Server::spawn(
            &format!("sentinel-{sentinel_port}"),
            dir.path(),
            &[path_str(&conf), "--sentinel"],
        );

        wait_until(
            &format!(
                "sentinel on 127.0.0.1:{sentinel_port} knowing master {master_port} and \
                 replica {replica_port}"
            ),
            &mut [&mut master, &mut replica, &mut sentinel],
            || {
                match sentinel_master_port(sentinel_port, &name) {
                    Ok(p) if p == master_port => {}
                    Ok(p) => return Err(format!("sentinel names master port {p}")),
                    Err(e) => return Err(e),
                }
                sentinel_replica_healthy(sentinel_port, &name, replica_port)
            },
        );
        SentinelSet {
            master_name: name,
            sentinel_urls: vec![format!("redis://127.0.0.1:{sentinel_port}")],
            master_port,
            replica_port,
            sentinel_port,
            master,
            replica,
            sentinel,
            _dir: dir,
        }
    }

    /// SIGKILLs the original master process (no clean shutdown); Sentinel notices after 1 s.
    pub fn kill_master(&mut self) {
        self.master.kill();
    }

    /// Polls Sentinel until it names the replica as master (at most 20 s); returns its port.
    pub fn wait_for_failover(&self) -> u16 {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            last = match sentinel_master_port(self.sentinel_port, &self.master_name) {
                Ok(p) if p == self.replica_port => return p,
                Ok(p) => format!("sentinel still names port {p}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "sentinel did not fail over to the replica (port {}) within {} s (last: {last}).\n{}\n{}",
            self.replica_port,
            READY_TIMEOUT.as_secs(),
            self.sentinel.log_tail(),
            self.replica.log_tail()
        );
    }

    /// The master port Sentinel currently names (`SENTINEL get-master-addr-by-name`).
    pub fn current_master_port(&self) -> u16 {
        sentinel_master_port(self.sentinel_port, &self.master_name)
            .unwrap_or_else(|e| panic!("sentinel get-master-addr-by-name: {e}"))
    }
}

/// `redis-cli -h 127.0.0.1 -p SENTINEL_PORT ARGS...`.
fn sentinel_cli(sentinel_port: u16, args: &[&str]) -> CliOutput {
    let port = sentinel_port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend(args);
    redis_cli(&all)
}

/// The master port Sentinel names for `name`, or what it said instead.
fn sentinel_master_port(sentinel_port: u16, name: &str) -> Result<u16, String> {
    let out = sentinel_cli(
        sentinel_port,
        &["SENTINEL", "get-master-addr-by-name", name],
    );
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    match lines.as_slice() {
        [_ip, port] => port.parse().map_err(|_| out.both()),
        _ => Err(out.both()),
    }
}

/// `Ok` when `SENTINEL replicas NAME` lists `replica_port` with flags `slave` and link `ok`.
fn sentinel_replica_healthy(
    sentinel_port: u16,
    name: &str,
    replica_port: u16,
) -> Result<(), String> {
    let out = sentinel_cli(sentinel_port, &["SENTINEL", "replicas", name]);
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    let field = |key: &str| {
        lines
            .chunks(2)
            .find(|kv| kv.len() == 2 && kv[0] == key)
            .map(|kv| kv[1])
    };
    let port = replica_port.to_string();
    if field("port") == Some(port.as_str())
        && field("flags") == Some("slave")
        && field("master-link-status") == Some("ok")
    {
        Ok(())
    } else {
        Err(format!("sentinel replicas: {}", out.both()))
    }
}
