//! Collapse bench: many simultaneous cold reads of one account, against the proxy and against
//! the least a hyper server can do for them, side by side in one run.
//!
//! `cargo bench --bench collapse` starts `mono-proxy sandbox` (its latency per call is the
//! leader's fetch) and the proxy in front of it as child processes, and a floor in this process:
//! bare hyper on a runtime of its own (two workers, like the proxy's), where every request for a
//! path waits on one tokio `watch` that a sleep of the same latency fills. A round opens `N`
//! connections to one target, then sends one `GET` (`Connection: close`) on each at once and
//! reads each answer to its end, timing each from its own send. Rounds alternate between the
//! floor and the proxy, each on a fresh account.
//!
//! Printed per target: the median over rounds of the fastest, median and slowest answer, and of
//! the median's and the slowest's distance from the fastest (the leader's time: no answer can
//! come before the one fetch), plus the proxy's upstream calls per round (1 when collapsed).
//! Knobs: `COLLAPSE_N=200`, `COLLAPSE_ROUNDS=15`, `COLLAPSE_LATENCY_MS=50`. Loopback only; every
//! round is bounded by `N` requests and 20 s.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use support::{env_u64, spawn_proxy, spawn_sandbox, BoxError, Children};

/// What the floor answers: a balance the size of the sandbox's.
const BALANCE: &[u8] = br#"{"status":"successful","message":"Request was succesfully completed","timestamp":"2024-07-05T12:20:59.336Z","data":{"id":"666b166ce06be73","name":"Samuel Olamide","account_number":"0200000043","balance":53769,"currency":"NGN"}}"#;
/// A round that takes longer than this has failed.
const ROUND_BOUND: Duration = Duration::from_secs(20);

fn main() {
    support::bench_main("collapse", run);
}

fn run() -> Result<(), BoxError> {
    let n = env_u64("COLLAPSE_N", 200).clamp(1, 2000) as usize;
    let rounds = env_u64("COLLAPSE_ROUNDS", 15).clamp(1, 100) as usize;
    let latency = Duration::from_millis(env_u64("COLLAPSE_LATENCY_MS", 50).clamp(1, 5000));

    let mut children = Children(Vec::new());
    let sandbox = spawn_sandbox(&mut children, "sandbox", latency.as_millis() as u64)?;
    let (proxy, _, _config) = spawn_proxy(&mut children, "proxy", sandbox, "")?;
    let floor = spawn_floor(latency)?;

    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (mut at_floor, mut at_proxy, mut calls) = (Vec::new(), Vec::new(), Vec::new());
    client.block_on(async {
        // One call first, so that the proxy's upstream connection is open before round one.
        burst(proxy, "/v2/accounts/666b166ce06b000/balance", 1).await?;
        for round in 0..rounds {
            at_floor.push(burst(floor, &format!("/floor/{round}"), n).await?);
            let before = sandbox_total(sandbox).await?;
            let path = format!("/v2/accounts/666b166ce{round:06}/balance");
            at_proxy.push(burst(proxy, &path, n).await?);
            calls.push(sandbox_total(sandbox).await? - before);
        }
        Ok::<_, BoxError>(())
    })?;

    println!(
        "\ncollapse: {n} simultaneous GETs of one cold account, {rounds} rounds per target, \
         upstream {} ms; {}",
        latency.as_millis(),
        support::machine()
    );
    println!("median over rounds, ms:\n");
    println!("| target | fastest | p50 | slowest | p50 - fastest | slowest - fastest | upstream calls per round |");
    println!("|---|---|---|---|---|---|---|");
    print_row("floor: bare hyper, one watch", &at_floor, "-");
    calls.sort_unstable();
    let calls = format!("{} to {}", calls[0], calls[calls.len() - 1]);
    print_row("mono-proxy (cached read)", &at_proxy, &calls);
    Ok(())
}

/// What one round saw: every answer's latency, sorted (ms).
struct Round(Vec<f64>);

impl Round {
    fn at(&self, q: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * q).round() as usize]
    }
}

fn print_row(name: &str, rounds: &[Round], calls: &str) {
    let median = |f: &dyn Fn(&Round) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {calls} |",
        median(&|r| r.at(0.0)),
        median(&|r| r.at(0.5)),
        median(&|r| r.at(1.0)),
        median(&|r| r.at(0.5) - r.at(0.0)),
        median(&|r| r.at(1.0) - r.at(0.0)),
    );
}

/// `n` connections opened first, then one `GET path` on each, released together; every one
/// must be answered 2xx.
async fn burst(addr: SocketAddr, path: &str, n: usize) -> Result<Round, BoxError> {
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: collapse-bench\r\nConnection: close\r\n\r\n"
    ));
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        conns.push(s);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut tasks = Vec::with_capacity(n);
    for mut s in conns {
        let (barrier, request) = (Arc::clone(&barrier), Arc::clone(&request));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let started = Instant::now();
            s.write_all(request.as_bytes()).await?;
            let mut answer = Vec::with_capacity(1024);
            s.read_to_end(&mut answer).await?;
            let took = started.elapsed();
            if !answer.starts_with(b"HTTP/1.1 2") {
                let head = String::from_utf8_lossy(&answer[..answer.len().min(80)]).to_string();
                return Err(format!("not a 2xx answer: {head}").into());
            }
            Ok::<_, BoxError>(took.as_secs_f64() * 1e3)
        }));
    }
    barrier.wait().await;
    let all = async {
        let mut lat = Vec::with_capacity(n);
        for t in tasks {
            lat.push(t.await??);
        }
        Ok::<_, BoxError>(lat)
    };
    let mut lat = tokio::time::timeout(ROUND_BOUND, all)
        .await
        .map_err(|_| format!("a round of {n} took over {ROUND_BOUND:?}"))??;
    lat.sort_by(f64::total_cmp);
    Ok(Round(lat))
}

/// The floor: bare hyper where the first request for a path starts one `latency` wait and every
/// request for it (that one included) is answered when it ends. Runs on its own two workers
/// until the bench exits.
fn spawn_floor(latency: Duration) -> Result<SocketAddr, BoxError> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("floor listener");
            let flights: Arc<Mutex<HashMap<String, watch::Receiver<bool>>>> = Arc::default();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // Out of descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let flights = Arc::clone(&flights);
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let mut done = join(&flights, req.uri().path(), latency);
                        async move {
                            let _ = done.wait_for(|d| *d).await;
                            let mut resp =
                                hyper::Response::new(Full::new(Bytes::from_static(BALANCE)));
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    Ok(addr)
}

/// The floor's flight for `path`: joined if one is waiting, else started.
fn join(
    flights: &Mutex<HashMap<String, watch::Receiver<bool>>>,
    path: &str,
    latency: Duration,
) -> watch::Receiver<bool> {
    let mut map = flights
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(rx) = map.get(path) {
        return rx.clone();
    }
    let (tx, rx) = watch::channel(false);
    map.insert(path.to_string(), rx.clone());
    tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        tx.send_replace(true);
    });
    rx
}

/// The sandbox's `total` counter (API calls that reached "Mono").
async fn sandbox_total(sandbox: SocketAddr) -> Result<u64, BoxError> {
    let mut s = TcpStream::connect(sandbox).await?;
    s.write_all(
        format!("GET /__sandbox/counts HTTP/1.1\r\nHost: {sandbox}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tokio::time::timeout(ROUND_BOUND, s.read_to_string(&mut answer)).await??;
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let counts: serde_json::Value = serde_json::from_str(body)?;
    counts["total"]
        .as_u64()
        .ok_or_else(|| format!("no total in the sandbox's counts: {body}").into())
}
