//! Fleet bench of the shared cache tier: two replicas sharing one Redis, real sockets.
//!
//! `cargo bench --bench fleet` starts `mono-proxy sandbox` (latency 0), a private `redis-server`
//! on a free port (or uses `REDIS_URL`; without `redis-server` installed, 127.0.0.1:6379), and
//! three proxies as child processes: replicas A and B with `[store] backend = "redis"` and
//! `[cache] shared = true` under a prefix unique to the run, and C with the in-process store (the
//! same miss without the tier). It prints, from one run:
//!
//! 1. latency p50/p99 of cached balance reads on B over one keep-alive HTTP/1 connection,
//!    sequential, the kinds interleaved request by request so they share the machine's noise:
//!    in-process hit, shared-tier hit (A read the account first; every answer is checked for
//!    `Cache-Status: …; detail=shared`), upstream miss (Redis LOOKUP + sandbox + FILL), the same
//!    miss on C, and Redis round trips from this process: PING written by hand on a blocking
//!    socket (the floor), PING and one EVALSHA of the LOOKUP script's hit branch (GET + PTTL of
//!    a stored body) through the redis crate, and PING over a `ConnectionManager` timed inside a
//!    task of a 2-worker runtime (a replica's kind of connection and runtime). The client runs on
//!    a single-threaded runtime so that its own wake-ups add as little as possible to every
//!    timing;
//! 2. Redis operations per request, K requests of each kind: the server's count (`INFO
//!    commandstats` before and after, minus `INFO`, which is the replicas' health ping), and what
//!    the proxy sends (client round trips) versus what its scripts run inside Redis, read from
//!    `MONITOR` (lines naming this run's prefix, `[… lua]` for script calls);
//! 3. Redis memory: `MEMORY USAGE` of sampled keys of each kind after that traffic, and the
//!    growth of `used_memory` per account while A filled the tier.
//!
//! Bounded in count and time. Environment knobs (defaults): `FLEET_N=2000` (accounts per latency
//! kind), `FLEET_WARMUP=200`, `FLEET_K=200` (requests per operation count), `FLEET_SECS=20`
//! (bound of each phase), `REDIS_URL` (an external Redis; its keys under the run's prefix are
//! deleted at the end). Loopback only; children are killed on exit and on panic.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{HeaderValue, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use redis::aio::MultiplexedConnection;
use tempfile::NamedTempFile;
use tokio::sync::{mpsc, oneshot};

use support::{env_u64, free_addr, percentile, spawn_redis_server, BoxError, Children};

/// The key the sandbox accepts by default (the proxies get it through `MONO_SEC_KEY`).
const SANDBOX_KEY: &str = "test_sk_sandbox";
/// What replica A expects in `mono-webhook-secret`.
const WEBHOOK_SECRET: &str = "fleet-bench-webhook-secret";
/// The hit branch of the proxy's LOOKUP script (`src/store/redis/scripts.rs`), timed from here:
/// a body lives for its TTL only, so any remaining life is a hit.
const LOOKUP_HIT: &str = r"
local b = redis.call('GET', KEYS[1])
if b then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then return {1, b, tostring(left)} end
end
return {0, '', '0'}
";

fn main() {
    support::bench_main("fleet", run);
}

/// The knobs of one run.
#[derive(Clone, Copy)]
struct Settings {
    n: usize,
    warmup: usize,
    k: usize,
    secs: Duration,
}

/// Where everything listens.
struct Fleet {
    a: SocketAddr,
    b: SocketAddr,
    c: SocketAddr,
    b_admin: SocketAddr,
    redis_url: String,
    prefix: String,
}

fn run() -> Result<(), BoxError> {
    let settings = Settings {
        n: env_u64("FLEET_N", 2000).clamp(10, 20_000) as usize,
        warmup: env_u64("FLEET_WARMUP", 200).clamp(1, 5_000) as usize,
        k: env_u64("FLEET_K", 200).clamp(10, 2_000) as usize,
        secs: Duration::from_secs(env_u64("FLEET_SECS", 20).clamp(1, 120)),
    };
    let bin = env!("CARGO_BIN_EXE_mono-proxy");
    let mut children = Children(Vec::new());

    let (redis_url, private) = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => (url, false),
        _ => match spawn_redis_server(&mut children, "redis-server")? {
            Some(addr) => (format!("redis://{addr}"), true),
            None => ("redis://127.0.0.1:6379".to_string(), false),
        },
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // As long as the default prefix `mono-proxy`, so that key sizes are those of a deployment.
    let prefix = format!(
        "fleet{:05x}",
        (stamp as u64 ^ u64::from(std::process::id()).wrapping_mul(2_654_435_761)) & 0xf_ffff
    );

    let sandbox = free_addr()?;
    children.spawn(
        "sandbox",
        Command::new(bin)
            .arg("sandbox")
            .arg("--listen")
            .arg(sandbox.to_string())
            .arg("--latency")
            .arg("0ms")
            .env("MONO_SANDBOX_KEY", SANDBOX_KEY)
            .env("RUST_LOG", "warn"),
    )?;
    children.wait_listening("sandbox", sandbox)?;

    let store = format!(
        "[store]\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\nprefix = \"{prefix}\"\n\
         timeout = \"1s\"\n[cache]\nttl = \"1h\"\nshared = true\n"
    );
    let memory = "[store]\nbackend = \"memory\"\n[cache]\nttl = \"1h\"\n".to_string();
    let mut configs = Vec::new();
    let mut replica =
        |name: &'static str, extra: &str| -> Result<(SocketAddr, SocketAddr), BoxError> {
            let (listen, admin) = (free_addr()?, free_addr()?);
            let mut file = tempfile::Builder::new()
                .prefix("mono-proxy-fleet-")
                .suffix(".toml")
                .tempfile()?;
            let toml = format!(
                "listen = \"{listen}\"\nadmin_listen = \"{admin}\"\n\
             [upstream]\nbase_url = \"http://{sandbox}\"\n\
             [jobs]\npoll = false\n[log]\nfilter = \"warn\"\n{extra}"
            );
            file.write_all(toml.as_bytes())?;
            let mut cmd = Command::new(bin);
            cmd.arg("--config")
                .arg(file.path())
                .env("MONO_SEC_KEY", SANDBOX_KEY)
                .env("MONO_WEBHOOK_SECRET", WEBHOOK_SECRET);
            for (k, _) in std::env::vars() {
                if k.starts_with("MONO_PROXY_") {
                    cmd.env_remove(k);
                }
            }
            children.spawn(name, &mut cmd)?;
            children.wait_listening(name, listen)?;
            configs.push(file);
            Ok((listen, admin))
        };
    let (a, _) = replica("replica A", &store)?;
    let (b, b_admin) = replica("replica B", &store)?;
    let (c, _) = replica("replica C", &memory)?;
    let _configs: Vec<NamedTempFile> = configs;
    // Let every replica finish its first health ping and subscribe.
    std::thread::sleep(Duration::from_millis(600));

    let fleet = Fleet {
        a,
        b,
        c,
        b_admin,
        redis_url,
        prefix,
    };
    // One thread: the client side of every timing pays no cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A runtime shaped like a replica's on this machine, for one of the Redis probes.
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(measure(&fleet, settings, workers.handle().clone()));
    drop(workers);
    if !private {
        // An external Redis keeps nothing of this run.
        match rt.block_on(delete_prefix(&fleet.redis_url, &fleet.prefix)) {
            Ok(n) => eprintln!("fleet: deleted {n} keys under {}:*", fleet.prefix),
            Err(e) => eprintln!("fleet: deleting keys under {}:*: {e}", fleet.prefix),
        }
    }
    drop(rt);
    drop(children);
    let report = result?;
    report.print(&fleet, settings, private);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One keep-alive HTTP/1 connection to one replica.
struct Conn {
    sender: Sender,
    host: HeaderValue,
}

/// An account id as long as Mono's (24 characters): `tag` then the number, zero-padded.
fn id(tag: &str, i: usize) -> String {
    format!("{tag}{i:0>width$}", width = 24 - tag.len())
}

/// What one answer said.
struct Reply {
    status: StatusCode,
    cache_status: String,
    x_cache: String,
    /// Whether an `Age` header came with it.
    age: bool,
    latency: Duration,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, BoxError> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("fleet: client connection: {e}");
            }
        });
        Ok(Conn {
            sender,
            host: HeaderValue::from_str(&addr.to_string())?,
        })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: Bytes,
    ) -> Result<Reply, BoxError> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.clone());
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(Full::new(body))?;
        let started = Instant::now();
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        body.collect().await?;
        let latency = started.elapsed();
        let text = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        Ok(Reply {
            status: parts.status,
            cache_status: text("cache-status"),
            x_cache: text("x-cache"),
            age: parts.headers.contains_key("age"),
            latency,
        })
    }

    async fn balance(&mut self, account: &str) -> Result<Reply, BoxError> {
        let path = format!("/v2/accounts/{account}/balance");
        self.send(Method::GET, &path, &[], Bytes::new()).await
    }

    async fn realtime(&mut self, account: &str) -> Result<Reply, BoxError> {
        let path = format!("/v2/accounts/{account}/balance");
        self.send(Method::GET, &path, &[("x-realtime", "true")], Bytes::new())
            .await
    }

    /// Mono's "account updated, sync finished with new data": drops the account's bodies.
    async fn account_updated(&mut self, account: &str, event: &str) -> Result<Reply, BoxError> {
        let body = serde_json::json!({
            "event": "mono.events.account_updated",
            "event_id": event,
            "data": {
                "account": {"_id": account},
                "meta": {"sync_status": "SUCCESSFUL", "has_new_data": true}
            }
        });
        self.send(
            Method::POST,
            "/webhooks/mono",
            &[
                ("mono-webhook-secret", WEBHOOK_SECRET),
                ("content-type", "application/json"),
            ],
            Bytes::from(body.to_string()),
        )
        .await
    }

    async fn get_text(&mut self, path: &str) -> Result<String, BoxError> {
        self.sender.ready().await?;
        let req = Request::get(path)
            .header(HOST, self.host.clone())
            .body(Full::new(Bytes::new()))?;
        let body = self.sender.send_request(req).await?.into_body();
        Ok(String::from_utf8_lossy(&body.collect().await?.to_bytes()).into_owned())
    }
}

fn is_in_process_hit(r: &Reply) -> bool {
    r.status == StatusCode::OK
        && r.x_cache == "HIT"
        && r.cache_status.starts_with("mono-proxy; hit; ttl=")
}

fn is_shared_hit(r: &Reply) -> bool {
    r.status == StatusCode::OK && r.x_cache == "HIT" && r.cache_status.contains("detail=shared")
}

fn is_miss(r: &Reply) -> bool {
    r.status == StatusCode::OK && r.x_cache == "MISS" && r.cache_status.contains("fwd=miss")
}

// ---------------------------------------------------------------------------------------------
// Redis

/// The address of a `redis://host:port` URL (for the raw-socket round trip).
fn redis_addr(url: &str) -> Result<SocketAddr, BoxError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => {
            use std::net::ToSocketAddrs;
            Ok((host.as_str(), *port)
                .to_socket_addrs()?
                .next()
                .ok_or("redis host resolves to nothing")?)
        }
        other => Err(format!("the raw round trip needs plain TCP, not {other:?}").into()),
    }
}

/// `INFO <section>` as text.
async fn info(conn: &mut MultiplexedConnection, section: &str) -> Result<String, BoxError> {
    Ok(redis::cmd("INFO")
        .arg(section)
        .query_async::<String>(conn)
        .await?)
}

fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// `INFO commandstats`: calls per command name.
async fn commandstats(conn: &mut MultiplexedConnection) -> Result<BTreeMap<String, u64>, BoxError> {
    let text = info(conn, "commandstats").await?;
    let mut stats = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        stats.insert(name.to_ascii_lowercase(), calls);
    }
    Ok(stats)
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Commands seen by `MONITOR` that name this run's prefix, by (inside a script?, command).
type Seen = BTreeMap<(bool, String), u64>;

/// A `MONITOR` connection counting this run's commands; `mark` returns the counts so far, in
/// the server's order (every command before the marker is counted).
struct Monitor {
    marks: mpsc::Sender<oneshot::Sender<Seen>>,
    conn: MultiplexedConnection,
    prefix: String,
    next: u64,
}

impl Monitor {
    async fn start(client: &redis::Client, prefix: &str) -> Result<Monitor, BoxError> {
        let monitor = client.get_async_monitor().await?;
        let conn = client.get_multiplexed_async_connection().await?;
        let (marks, mut waiting) = mpsc::channel::<oneshot::Sender<Seen>>(16);
        let marker = format!("\"{prefix}:mark:");
        let needle = prefix.to_string();
        tokio::spawn(async move {
            let mut lines = monitor.into_on_message::<String>();
            let mut seen = Seen::new();
            while let Some(line) = lines.next().await {
                if !line.contains(&needle) {
                    continue;
                }
                if line.contains(&marker) {
                    if let Some(reply) = waiting.recv().await {
                        let _ = reply.send(seen.clone());
                    }
                    continue;
                }
                // `<time> [<db> <client address>|lua] "<command>" "<arg>" …`
                let Some((source, rest)) = line.split_once("] ") else {
                    continue;
                };
                let lua = source.ends_with(" lua");
                let command = rest.split('"').nth(1).unwrap_or("?").to_ascii_lowercase();
                *seen.entry((lua, command)).or_insert(0) += 1;
            }
        });
        Ok(Monitor {
            marks,
            conn,
            prefix: prefix.to_string(),
            next: 0,
        })
    }

    async fn mark(&mut self) -> Result<Seen, BoxError> {
        let (tx, rx) = oneshot::channel();
        self.marks.send(tx).await?;
        self.next += 1;
        redis::cmd("ECHO")
            .arg(format!("{}:mark:{}", self.prefix, self.next))
            .query_async::<String>(&mut self.conn)
            .await?;
        Ok(tokio::time::timeout(Duration::from_secs(5), rx).await??)
    }
}

fn diff_seen(after: &Seen, before: &Seen) -> Seen {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Keys matching `pattern` (all counted, the first `sample` kept), bounded in time.
async fn scan(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    sample: usize,
    budget: Duration,
) -> Result<(u64, Vec<String>), BoxError> {
    let deadline = Instant::now() + budget;
    let (mut cursor, mut found, mut kept) = (0u64, 0u64, Vec::new());
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        found += keys.len() as u64;
        for k in keys {
            if kept.len() < sample {
                kept.push(k);
            }
        }
        cursor = next;
        if cursor == 0 || Instant::now() >= deadline {
            return Ok((found, kept));
        }
    }
}

async fn delete_prefix(url: &str, prefix: &str) -> Result<u64, BoxError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let (mut cursor, mut deleted) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(&mut conn)
                .await?;
        }
        cursor = next;
        if cursor == 0 || Instant::now() >= deadline {
            return Ok(deleted);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The measurement

/// The kinds timed side by side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    InProcess,
    Shared,
    Miss,
    MissNoTier,
    RawPing,
    Ping,
    Lookup,
    ManagerPing,
}

const KINDS: [Kind; 8] = [
    Kind::InProcess,
    Kind::Shared,
    Kind::Miss,
    Kind::MissNoTier,
    Kind::RawPing,
    Kind::Ping,
    Kind::Lookup,
    Kind::ManagerPing,
];

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::InProcess => "in-process hit (B holds the account)",
            Kind::Shared => "shared-tier hit (A read it first)",
            Kind::Miss => "upstream miss (LOOKUP + sandbox + FILL)",
            Kind::MissNoTier => "upstream miss, replica C without the tier",
            Kind::RawPing => "Redis PING (bench, blocking socket)",
            Kind::Ping => "Redis PING (bench, redis crate)",
            Kind::Lookup => "Redis EVALSHA LOOKUP hit (redis crate)",
            Kind::ManagerPing => "Redis PING (ConnectionManager, 2 workers)",
        }
    }
}

/// Latencies of one kind, and how many answers were what the kind promises.
#[derive(Default)]
struct Timed {
    lat_us: Vec<u32>,
    verified: u64,
    wrong: u64,
    /// Answers with an `Age` header (HTTP kinds).
    aged: u64,
    /// The first wrong answer, to say what went wrong.
    example: Option<String>,
}

impl Timed {
    fn push(&mut self, latency: Duration, ok: bool, what: impl FnOnce() -> String) {
        self.lat_us
            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        if ok {
            self.verified += 1;
        } else {
            self.wrong += 1;
            if self.example.is_none() {
                self.example = Some(what());
            }
        }
    }

    fn p(&self, q: f64) -> u32 {
        let mut sorted = self.lat_us.clone();
        sorted.sort_unstable();
        percentile(&sorted, q)
    }
}

/// Redis operations of K requests of one kind.
struct Ops {
    name: &'static str,
    requests: u64,
    /// Answers that were not what the kind promises.
    wrong: u64,
    /// `INFO commandstats` difference, without `info`.
    server: BTreeMap<String, u64>,
    /// `MONITOR` lines of this run (`None` without MONITOR).
    seen: Option<Seen>,
    elapsed: Duration,
}

/// One kind of key: how many, and their mean size.
struct KeyMemory {
    name: &'static str,
    pattern: String,
    found: u64,
    sampled: usize,
    usage: f64,
    value: f64,
    value_unit: &'static str,
}

struct Report {
    redis_version: String,
    timed: Vec<(Kind, Timed)>,
    loop_elapsed: Duration,
    a_fill: (u64, u64, Duration),
    used_memory_per_account: f64,
    idle: (Duration, BTreeMap<String, u64>),
    ops: Vec<Ops>,
    after_realtime: (u64, u64, u64),
    memory: Vec<KeyMemory>,
    b_metrics: Vec<String>,
}

async fn measure(
    fleet: &Fleet,
    s: Settings,
    workers: tokio::runtime::Handle,
) -> Result<Report, BoxError> {
    let client = redis::Client::open(fleet.redis_url.as_str())?;
    let mut redis_conn = client.get_multiplexed_async_connection().await?;
    let redis_version = info_field(&info(&mut redis_conn, "server").await?, "redis_version")
        .unwrap_or_else(|| "?".into());

    // Phase 1: A fills the tier with the accounts B will find there (warm-up ones too).
    let used0 = info_field(&info(&mut redis_conn, "memory").await?, "used_memory")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let mut names: Vec<String> = (0..s.warmup).map(|i| id("ws", i)).collect();
    names.extend((0..s.n).map(|i| id("s", i)));
    let a_fill = fill(fleet.a, &names, 4, s.secs).await?;
    let used1 = info_field(&info(&mut redis_conn, "memory").await?, "used_memory")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    let used_memory_per_account = (used1 - used0) / (a_fill.0 as f64).max(1.0);
    eprintln!(
        "fleet: A filled {} accounts ({} not a miss) in {:.2}s",
        a_fill.0,
        a_fill.1,
        a_fill.2.as_secs_f64()
    );

    // The body key of an account, from one stored by A (the tenant id is the proxy's).
    let (_, some) = scan(
        &mut redis_conn,
        &format!("{}:v2:{{*:{}}}:body:*", fleet.prefix, id("s", 0)),
        1,
        s.secs,
    )
    .await?;
    let template = some
        .first()
        .ok_or("no body of the first account in redis after A's fill")?
        .clone();
    let first = id("s", 0);
    let body_key = move |account: &str| template.replace(&first, account);
    let lookup = redis::Script::new(LOOKUP_HIT);
    let manager = {
        let client = client.clone();
        workers
            .spawn(async move { redis::aio::ConnectionManager::new(client).await })
            .await??
    };
    // RESP by hand on a blocking socket: the round trip without any client library or runtime.
    // Only over plain TCP without credentials; otherwise that probe is left out.
    let mut raw = match redis_addr(&fleet.redis_url) {
        Ok(addr) if !fleet.redis_url.contains('@') => {
            let raw = std::net::TcpStream::connect(addr)?;
            raw.set_nodelay(true)?;
            Some(raw)
        }
        Ok(_) => None,
        Err(e) => {
            eprintln!("fleet: no raw round trip: {e}");
            None
        }
    };

    // Phase 2: the kinds interleaved, request by request, on one connection each.
    let mut b = Conn::open(fleet.b).await?;
    let mut c = Conn::open(fleet.c).await?;
    let mut timed: Vec<(Kind, Timed)> = KINDS.iter().map(|k| (*k, Timed::default())).collect();
    let mut loop_elapsed = Duration::ZERO;
    for (round, (count, tag)) in [(s.warmup, "w"), (s.n, "")].into_iter().enumerate() {
        let measured = round == 1;
        let mut held: Vec<String> = Vec::with_capacity(count);
        let mut scratch: Vec<(Kind, Timed)> =
            KINDS.iter().map(|k| (*k, Timed::default())).collect();
        let started = Instant::now();
        let deadline = started + s.secs;
        let mut mix = 0x9E37_79B9_7F4A_7C15_u64;
        for i in 0..count {
            if Instant::now() >= deadline {
                eprintln!("fleet: latency round stopped at {i} of {count} (FLEET_SECS)");
                break;
            }
            let shared = id(&format!("{tag}s"), i);
            for step in 0..KINDS.len() {
                let kind = KINDS[(i + step) % KINDS.len()];
                let slot = &mut scratch.iter_mut().find(|(k, _)| *k == kind).unwrap().1;
                match kind {
                    Kind::InProcess => {
                        // An account B adopted earlier in this round (the shared read of this
                        // iteration may come later in the rotation).
                        let Some(account) = held.get(mix as usize % held.len().max(1)) else {
                            continue;
                        };
                        mix = mix.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let r = b.balance(account).await?;
                        slot.aged += u64::from(r.age);
                        slot.push(r.latency, is_in_process_hit(&r), || {
                            format!("{account}: {} {}", r.status, r.cache_status)
                        });
                    }
                    Kind::Shared => {
                        let r = b.balance(&shared).await?;
                        slot.aged += u64::from(r.age);
                        slot.push(r.latency, is_shared_hit(&r), || {
                            format!("{shared}: {} {}", r.status, r.cache_status)
                        });
                        held.push(shared.clone());
                    }
                    Kind::Miss => {
                        let account = id(&format!("{tag}m"), i);
                        let r = b.balance(&account).await?;
                        slot.push(r.latency, is_miss(&r), || {
                            format!("{account}: {} {}", r.status, r.cache_status)
                        });
                    }
                    Kind::MissNoTier => {
                        let account = id(&format!("{tag}c"), i);
                        let r = c.balance(&account).await?;
                        slot.push(r.latency, is_miss(&r), || {
                            format!("{account}: {} {}", r.status, r.cache_status)
                        });
                    }
                    Kind::RawPing => {
                        let Some(raw) = raw.as_mut() else { continue };
                        let t = Instant::now();
                        raw.write_all(b"PING\r\n")?;
                        let mut pong = [0u8; 7];
                        raw.read_exact(&mut pong)?;
                        slot.push(t.elapsed(), &pong == b"+PONG\r\n", || {
                            String::from_utf8_lossy(&pong).into_owned()
                        });
                    }
                    Kind::Ping => {
                        let t = Instant::now();
                        let pong = redis::cmd("PING")
                            .query_async::<String>(&mut redis_conn)
                            .await?;
                        slot.push(t.elapsed(), pong == "PONG", || pong.clone());
                    }
                    Kind::ManagerPing => {
                        // Timed inside a task of a 2-worker runtime, over the proxy's kind of
                        // connection: what one Redis call costs inside a replica.
                        let mut manager = manager.clone();
                        let (took, pong) = workers
                            .spawn(async move {
                                let t = Instant::now();
                                let pong =
                                    redis::cmd("PING").query_async::<String>(&mut manager).await;
                                (t.elapsed(), pong)
                            })
                            .await?;
                        let pong = pong?;
                        slot.push(took, pong == "PONG", || pong.clone());
                    }
                    Kind::Lookup => {
                        let key = body_key(&shared);
                        let t = Instant::now();
                        let (state, raw, _): (i64, Vec<u8>, String) =
                            lookup.key(&key).invoke_async(&mut redis_conn).await?;
                        slot.push(t.elapsed(), state == 1 && !raw.is_empty(), || {
                            format!("{key}: state {state}")
                        });
                    }
                }
            }
        }
        if measured {
            timed = scratch;
            loop_elapsed = started.elapsed();
        }
    }

    // Phase 3: what Redis sees while the replicas idle (their health pings).
    let idle_start = commandstats(&mut redis_conn).await?;
    let idle_for = Duration::from_secs(2);
    tokio::time::sleep(idle_for).await;
    let idle_end = commandstats(&mut redis_conn).await?;
    let mut idle = diff(&idle_end, &idle_start);
    // The two INFO commandstats of this bench.
    if let Some(v) = idle.get_mut("info") {
        *v = v.saturating_sub(1);
    }

    // Phase 4: Redis operations per request, K of each kind, fresh accounts.
    // MONITOR may be refused (an ACL): the server counts are still made.
    let mut monitor = match Monitor::start(&client, &fleet.prefix).await {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("fleet: no MONITOR, so no split of round trips and script calls: {e}");
            None
        }
    };
    let mut a = Conn::open(fleet.a).await?;
    let k = s.k;
    let mut ops = Vec::new();
    // A's cached reads after B's realtime calls: (shared hits, misses, other).
    let mut after_realtime = (0u64, 0u64, 0u64);
    let rt: Vec<String> = (0..k).map(|i| id("rt", i)).collect();
    let cold: Vec<String> = (0..k).map(|i| id("cold", i)).collect();
    let sh: Vec<String> = (0..k).map(|i| id("sh", i)).collect();

    let phases: [(&'static str, Action, &[String], bool); 6] = [
        (
            "realtime call (x-realtime, new account)",
            Action::Realtime,
            &rt,
            false,
        ),
        (
            "cached read, cold (miss in both tiers)",
            Action::Read(is_miss),
            &cold,
            false,
        ),
        (
            "cached read, shared-tier hit",
            Action::Read(is_shared_hit),
            &sh,
            true,
        ),
        (
            "cached read, in-process hit",
            Action::Read(is_in_process_hit),
            &sh,
            false,
        ),
        (
            "webhook account_updated (invalidation)",
            Action::Webhook,
            &sh,
            false,
        ),
        (
            "cached read after invalidation (miss)",
            Action::Read(is_miss),
            &sh,
            false,
        ),
    ];
    for (name, action, accounts, a_first) in phases {
        if a_first {
            let (_, wrong, _) = fill(fleet.a, accounts, 1, s.secs).await?;
            if wrong > 0 {
                eprintln!("fleet: {wrong} of A's reads before \"{name}\" were not misses");
            }
        }
        if matches!(action, Action::Read(_)) && name.contains("after invalidation") {
            // B drops its copies on A's broadcasts (pub/sub): give it a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let conn = if matches!(action, Action::Webhook) {
            &mut a
        } else {
            &mut b
        };
        let phase = Phase {
            name,
            action,
            accounts,
            bound: s.secs,
            prefix: &fleet.prefix,
        };
        ops.push(count_ops(&phase, conn, &mut redis_conn, monitor.as_mut()).await?);
        if matches!(action, Action::Realtime) {
            // Is the body B's realtime call fetched in the tier? A reads the same accounts.
            for account in &rt {
                let r = a.balance(account).await?;
                if is_shared_hit(&r) {
                    after_realtime.0 += 1;
                } else if is_miss(&r) {
                    after_realtime.1 += 1;
                } else {
                    after_realtime.2 += 1;
                }
            }
        }
    }

    // Phase 5: memory of each kind of key after that traffic.
    let p = &fleet.prefix;
    let mut memory = Vec::new();
    for (name, pattern, unit) in [
        (
            "body (cached balance)",
            format!("{p}:v2:{{*}}:body:*"),
            "B value",
        ),
        ("bodies (set)", format!("{p}:v2:{{*}}:bodies"), "members"),
        (
            "gen (after an invalidation)",
            format!("{p}:v2:{{*}}:gen"),
            "B value",
        ),
        (
            "fill lease (transient)",
            format!("{p}:v2:{{*}}:fill:*"),
            "B value",
        ),
        (
            "rec (realtime job record)",
            format!("{p}:v2:{{*}}:rec:*"),
            "B value",
        ),
        ("job index", format!("{p}:v2:job:*"), "B value"),
        (
            "lease (realtime claim)",
            format!("{p}:v2:{{*}}:lease:*"),
            "B value",
        ),
        (
            "evt (webhook step memory)",
            format!("{p}:v2:evt:*"),
            "B value",
        ),
    ] {
        memory.push(key_memory(&mut redis_conn, name, pattern, unit, s.secs).await?);
    }

    let mut admin = Conn::open(fleet.b_admin).await?;
    let b_metrics = admin
        .get_text("/metrics")
        .await?
        .lines()
        .filter(|l| l.starts_with("mono_proxy_shared_cache_total"))
        .map(str::to_string)
        .collect();

    Ok(Report {
        redis_version,
        timed,
        loop_elapsed,
        a_fill,
        used_memory_per_account,
        idle: (idle_for, idle),
        ops,
        after_realtime,
        memory,
        b_metrics,
    })
}

/// `accounts` read through `addr` over `conns` connections: (read, not a miss, elapsed).
async fn fill(
    addr: SocketAddr,
    accounts: &[String],
    conns: usize,
    bound: Duration,
) -> Result<(u64, u64, Duration), BoxError> {
    let started = Instant::now();
    let deadline = started + bound;
    let mut tasks = Vec::new();
    for c in 0..conns {
        let mine: Vec<String> = accounts.iter().skip(c).step_by(conns).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let (mut read, mut wrong) = (0u64, 0u64);
            for account in mine {
                if Instant::now() >= deadline {
                    break;
                }
                let r = conn.balance(&account).await?;
                read += 1;
                wrong += u64::from(!is_miss(&r));
            }
            Ok::<_, BoxError>((read, wrong))
        }));
    }
    let (mut read, mut wrong) = (0, 0);
    for t in tasks {
        let (r, w) = t.await??;
        read += r;
        wrong += w;
    }
    Ok((read, wrong, started.elapsed()))
}

/// What one request of an operation-count phase is.
#[derive(Clone, Copy)]
enum Action {
    /// A realtime read (expects a forwarded call: 200, `x-cache: MISS`).
    Realtime,
    /// A cached read, checked by the function.
    Read(fn(&Reply) -> bool),
    /// A webhook that invalidates the account (expects 200).
    Webhook,
}

/// K requests of one kind.
struct Phase<'a> {
    name: &'static str,
    action: Action,
    accounts: &'a [String],
    bound: Duration,
    prefix: &'a str,
}

/// Runs the phase's request for each account in order, counting Redis operations around it.
async fn count_ops(
    phase: &Phase<'_>,
    conn: &mut Conn,
    redis_conn: &mut MultiplexedConnection,
    mut monitor: Option<&mut Monitor>,
) -> Result<Ops, BoxError> {
    let name = phase.name;
    let before = commandstats(redis_conn).await?;
    let seen0 = match monitor.as_mut() {
        Some(m) => Some(m.mark().await?),
        None => None,
    };
    let started = Instant::now();
    let (mut requests, mut wrong) = (0u64, 0u64);
    for account in phase.accounts {
        if started.elapsed() >= phase.bound {
            eprintln!("fleet: {name}: stopped at {requests} (FLEET_SECS)");
            break;
        }
        requests += 1;
        let ok = match phase.action {
            Action::Realtime => {
                let r = conn.realtime(account).await?;
                r.status == StatusCode::OK && r.x_cache == "MISS"
            }
            Action::Read(check) => check(&conn.balance(account).await?),
            Action::Webhook => {
                let event = format!("{}-evt-{account}", phase.prefix);
                conn.account_updated(account, &event).await?.status == StatusCode::OK
            }
        };
        wrong += u64::from(!ok);
    }
    let elapsed = started.elapsed();
    let seen1 = match monitor.as_mut() {
        Some(m) => Some(m.mark().await?),
        None => None,
    };
    let after = commandstats(redis_conn).await?;
    let mut server = diff(&after, &before);
    // INFO is the replicas' health ping (and this bench's INFO commandstats), ECHO the marks.
    server.remove("info");
    server.remove("echo");
    if wrong > 0 {
        eprintln!("fleet: {name}: {wrong} of {requests} answers were not what this kind promises");
    }
    Ok(Ops {
        name,
        requests,
        wrong,
        server,
        seen: match (seen1, seen0) {
            (Some(after), Some(before)) => Some(diff_seen(&after, &before)),
            _ => None,
        },
        elapsed,
    })
}

async fn key_memory(
    conn: &mut MultiplexedConnection,
    name: &'static str,
    pattern: String,
    value_unit: &'static str,
    budget: Duration,
) -> Result<KeyMemory, BoxError> {
    let (found, keys) = scan(conn, &pattern, 100, budget).await?;
    let (mut usage, mut value) = (0u64, 0u64);
    for key in &keys {
        usage += redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async::<Option<u64>>(conn)
            .await?
            .unwrap_or(0);
        let kind: String = redis::cmd("TYPE").arg(key).query_async(conn).await?;
        value += if kind == "set" {
            redis::cmd("SCARD")
                .arg(key)
                .query_async::<u64>(conn)
                .await?
        } else {
            redis::cmd("STRLEN")
                .arg(key)
                .query_async::<u64>(conn)
                .await?
        };
    }
    let n = keys.len().max(1) as f64;
    Ok(KeyMemory {
        name,
        pattern,
        found,
        sampled: keys.len(),
        usage: usage as f64 / n,
        value: value as f64 / n,
        value_unit,
    })
}

// ---------------------------------------------------------------------------------------------
// The report

/// `3 get, 2 set` for a count map, per request.
fn per_request<'a>(counts: impl Iterator<Item = (&'a str, u64)>, requests: u64) -> String {
    let parts: Vec<String> = counts
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{} {name}", ratio(n, requests)))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// `n / d` with two decimals unless whole.
fn ratio(n: u64, d: u64) -> String {
    let v = n as f64 / d.max(1) as f64;
    if (v - v.round()).abs() < 0.005 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Report {
    fn timed(&self, kind: Kind) -> &Timed {
        &self.timed.iter().find(|(k, _)| *k == kind).unwrap().1
    }

    fn print(&self, fleet: &Fleet, s: Settings, private: bool) {
        let redis_where = if private {
            "a private redis-server"
        } else {
            "an external Redis (other clients' commands may show in the server counts)"
        };
        println!(
            "\nmono-proxy fleet bench: {} | Redis {} ({redis_where}) | sandbox latency 0 | \
             replicas A, B: [store] redis, [cache] shared, prefix {} | C: memory store",
            support::machine(),
            self.redis_version,
            fleet.prefix
        );

        println!(
            "\n### Latency on replica B: one keep-alive HTTP/1 connection, sequential, {} rounds \
             of the {} kinds interleaved, one of each per round in rotating order ({:.1}s; {} \
             warm-up rounds discarded; single-threaded client)\n",
            self.timed(Kind::Shared).lat_us.len(),
            KINDS.len(),
            self.loop_elapsed.as_secs_f64(),
            s.warmup
        );
        println!(
            "| {:<44} | {:>8} | {:>8} | {:>7} | {:>7} |",
            "kind", "requests", "verified", "p50 µs", "p99 µs"
        );
        println!(
            "|{:-<46}|{:->10}|{:->10}|{:->9}|{:->9}|",
            "", "", "", "", ""
        );
        for (kind, t) in &self.timed {
            println!(
                "| {:<44} | {:>8} | {:>8} | {:>7} | {:>7} |",
                kind.label(),
                t.lat_us.len(),
                t.verified,
                t.p(0.50),
                t.p(0.99)
            );
            if let Some(e) = &t.example {
                eprintln!("fleet: {}: {} wrong, e.g. {e}", kind.label(), t.wrong);
            }
        }
        let (hit, shared, miss, plain, raw, ping, lookup, managed) = (
            self.timed(Kind::InProcess).p(0.5),
            self.timed(Kind::Shared).p(0.5),
            self.timed(Kind::Miss).p(0.5),
            self.timed(Kind::MissNoTier).p(0.5),
            self.timed(Kind::RawPing).p(0.5),
            self.timed(Kind::Ping).p(0.5),
            self.timed(Kind::Lookup).p(0.5),
            self.timed(Kind::ManagerPing).p(0.5),
        );
        let gap = i64::from(shared) - i64::from(hit);
        println!();
        println!(
            "answers with an Age header: in-process hits {} of {}, shared hits {} of {}",
            self.timed(Kind::InProcess).aged,
            self.timed(Kind::InProcess).lat_us.len(),
            self.timed(Kind::Shared).aged,
            self.timed(Kind::Shared).lat_us.len()
        );
        println!(
            "shared hit p50 / in-process hit p50 = {:.2}x ({shared} vs {hit} µs)",
            f64::from(shared) / f64::from(hit.max(1))
        );
        println!(
            "shared hit p50 - in-process hit p50 = {gap} µs = one Redis round trip (raw PING p50 \
             {raw} µs) {:+} µs, or one round trip as a replica makes it (ConnectionManager on 2 \
             workers, {managed} µs) {:+} µs; through the redis crate on one thread: PING {ping} \
             µs, LOOKUP hit {lookup} µs",
            gap - i64::from(raw),
            gap - i64::from(managed)
        );
        let tier = i64::from(miss) - i64::from(plain);
        println!(
            "upstream miss p50 with the tier - without (C) = {tier} µs = 2 round trips (LOOKUP + \
             FILL): 2 x {raw} µs raw {:+} µs, 2 x {managed} µs as a replica makes them {:+} µs",
            tier - 2 * i64::from(raw),
            tier - 2 * i64::from(managed)
        );
        println!(
            "replica A filled {} accounts in {:.2}s ({} answers not a miss); Redis used_memory \
             grew {:.0} B per account",
            self.a_fill.0,
            self.a_fill.2.as_secs_f64(),
            self.a_fill.1,
            self.used_memory_per_account
        );

        let (idle_for, idle) = &self.idle;
        let info = idle.get("info").copied().unwrap_or(0);
        let other: u64 = idle
            .iter()
            .filter(|(k, _)| *k != "info")
            .map(|(_, v)| v)
            .sum();
        println!(
            "\n### Redis operations per request ({} requests per row, fresh accounts, sequential)\n\n\
             Idle over {:.0}s: {info} INFO (health pings, {:.1}/s) and {other} other commands; INFO \
             is left out below.\n",
            s.k,
            idle_for.as_secs_f64(),
            info as f64 / idle_for.as_secs_f64()
        );
        println!(
            "| {:<40} | {:>5} | {:>5} | {:>13} | {:>13} | {:>12} | {:<34} | {:<60} |",
            "requests of",
            "n",
            "wrong",
            "server cmds/r",
            "round trips/r",
            "in scripts/r",
            "the proxy sends (per request)",
            "inside its scripts (per request)"
        );
        println!(
            "|{:-<42}|{:->7}|{:->7}|{:->15}|{:->15}|{:->14}|{:-<36}|{:-<62}|",
            "", "", "", "", "", "", "", ""
        );
        for o in &self.ops {
            let server: u64 = o.server.values().sum();
            let (client, lua, sends, inside) = match &o.seen {
                Some(seen) => {
                    let side = |lua: bool| {
                        seen.iter()
                            .filter(move |((l, _), _)| *l == lua)
                            .map(|((_, c), n)| (c.as_str(), *n))
                    };
                    (
                        ratio(side(false).map(|(_, n)| n).sum(), o.requests),
                        ratio(side(true).map(|(_, n)| n).sum(), o.requests),
                        per_request(side(false), o.requests),
                        per_request(side(true), o.requests),
                    )
                }
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            println!(
                "| {:<40} | {:>5} | {:>5} | {:>13} | {:>13} | {:>12} | {:<34} | {:<60} |",
                o.name,
                o.requests,
                o.wrong,
                ratio(server, o.requests),
                client,
                lua,
                sends,
                inside
            );
            eprintln!(
                "fleet: {}: {:.2}s; server commandstats: {:?}",
                o.name,
                o.elapsed.as_secs_f64(),
                o.server
            );
        }

        println!(
            "\n### Redis memory after that traffic (MEMORY USAGE … SAMPLES 0, mean of up to 100 \
             keys of each kind)\n"
        );
        println!(
            "| {:<30} | {:>6} | {:>7} | {:>16} | {:>14} |",
            "key", "found", "sampled", "MEMORY USAGE B", "value"
        );
        println!(
            "|{:-<32}|{:->8}|{:->9}|{:->18}|{:->16}|",
            "", "", "", "", ""
        );
        for m in &self.memory {
            let value = if m.sampled == 0 {
                "-".to_string()
            } else {
                format!("{:.1} {}", m.value, m.value_unit)
            };
            let usage = if m.sampled == 0 {
                "-".to_string()
            } else {
                format!("{:.1}", m.usage)
            };
            println!(
                "| {:<30} | {:>6} | {:>7} | {:>16} | {:>14} |",
                m.name, m.found, m.sampled, usage, value
            );
            eprintln!("fleet: {} = {}", m.name, m.pattern);
        }
        let usage = |name: &str| {
            self.memory
                .iter()
                .find(|m| m.name.starts_with(name))
                .filter(|m| m.sampled > 0)
                .map_or(0.0, |m| m.usage)
        };
        let account = usage("body") + usage("bodies");
        println!(
            "\nper cached account: body + bodies = {account:.0} B; with gen (after an \
             invalidation) {:.0} B; used_memory growth while A filled: {:.0} B per account",
            account + usage("gen"),
            self.used_memory_per_account
        );
        println!(
            "per realtime account: rec + job index + lease = {:.0} B",
            usage("rec") + usage("job") + usage("lease")
        );
        let (hits, misses, other) = self.after_realtime;
        println!(
            "\nA's cached reads of the {} accounts B had just read with x-realtime: {hits} shared \
             hits, {misses} misses (fetched upstream again), {other} other",
            hits + misses + other
        );
        if !self.b_metrics.is_empty() {
            println!("\nreplica B at the end:");
            for l in &self.b_metrics {
                println!("    {l}");
            }
        }
    }
}
