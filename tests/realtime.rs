//! Realtime reads (spec §3) over real sockets with the sandbox as upstream: one Mono realtime
//! call per account and endpoint per window, shared by every concurrent caller.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mono_proxy::sandbox::{Fault, SandboxConfig};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BALANCE: &str = "/v2/accounts/acc1/balance";
const TRANSACTIONS: &str = "/v2/accounts/acc1/transactions";

/// A bound for whole tests that fire many calls: they finish in time or fail.
const TEST_BOUND: Duration = Duration::from_secs(30);

/// Polling every 100 ms, no webhook: jobs are learned by polling.
const POLLING: &str = "[jobs]\npoll_interval = \"100ms\"";
/// No polling: job records change only when the test makes them.
const NO_POLL: &str = "[jobs]\npoll = false";

/// Sends one realtime GET on an already-open connection (HTTP/1 or an h2 stream).
///
/// HTTP/1 gets an origin-form target and a `Host` header, as apps send; h2 needs the scheme
/// and authority, which hyper sends as `:scheme` / `:authority`.
async fn realtime_on<S>(sender: &mut S, addr: SocketAddr, path: &str) -> Reply
where
    S: SendOne,
{
    let uri = if S::H2 {
        format!("http://{addr}{path}")
    } else {
        path.to_string()
    };
    let req = Request::get(uri)
        .header(http::header::HOST, addr.to_string())
        .header("x-realtime", "true")
        .body(Empty::<Bytes>::new())
        .expect("request");
    sender.send_one(req).await
}

/// Either kind of hyper client connection.
trait SendOne {
    const H2: bool;
    async fn send_one(&mut self, req: Request<Empty<Bytes>>) -> Reply;
}

impl SendOne for http1::SendRequest<Empty<Bytes>> {
    const H2: bool = false;
    async fn send_one(&mut self, req: Request<Empty<Bytes>>) -> Reply {
        self.ready().await.expect("connection ready");
        Reply::read(self.send_request(req).await.expect("response"))
            .await
            .expect("body")
    }
}

impl SendOne for http2::SendRequest<Empty<Bytes>> {
    const H2: bool = true;
    async fn send_one(&mut self, req: Request<Empty<Bytes>>) -> Reply {
        self.ready().await.expect("connection ready");
        Reply::read(self.send_request(req).await.expect("response"))
            .await
            .expect("body")
    }
}

/// One HTTP/1 keep-alive connection to `addr`.
async fn h1_connection(addr: SocketAddr) -> http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// One h2c (prior knowledge) connection to `addr`; it multiplexes every stream we open.
async fn h2_connection(addr: SocketAddr) -> http2::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// A TCP relay in front of `upstream` that holds every chunk coming back for `delay`.
///
/// The sandbox answers an injected status fault at once; the relay makes that answer slow so
/// concurrent callers are sure to join the flight before it fails. It runs until the test ends.
async fn slow_relay(upstream: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = inbound.into_split();
                let (mut from_upstream, mut to_upstream) = outbound.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_client, &mut to_upstream).await;
                });
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = from_upstream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    if to_client.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Fires `n` realtime calls for `path` at once, each on its own connection.
async fn concurrent_realtime(proxy: &TestProxy, path: &str, n: usize) -> Vec<Reply> {
    let addr = proxy.running.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let path = path.to_string();
        tasks.spawn(async move {
            let mut conn = h1_connection(addr).await;
            realtime_on(&mut conn, addr, &path).await
        });
    }
    let mut replies = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        replies.push(r.expect("call task"));
    }
    replies
}

fn realtime_calls(sb: &mono_proxy::sandbox::RunningSandbox) -> u64 {
    sb.sandbox.count("balance_realtime") + sb.sandbox.count("balance_realtime_repeat")
}

/// Fires `calls` realtime calls for `path` over `conns` keep-alive HTTP/1 connections, all
/// connections at once, each carrying its share one after another.
async fn pooled_realtime(addr: SocketAddr, path: &str, conns: usize, calls: usize) -> Vec<Reply> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..conns {
        let share = calls / conns + usize::from(i < calls % conns);
        let path = path.to_string();
        tasks.spawn(async move {
            let mut conn = h1_connection(addr).await;
            let mut replies = Vec::with_capacity(share);
            for _ in 0..share {
                replies.push(realtime_on(&mut conn, addr, &path).await);
            }
            replies
        });
    }
    let mut replies = Vec::with_capacity(calls);
    while let Some(r) = tasks.join_next().await {
        replies.extend(r.expect("call task"));
    }
    replies
}

/// Asserts every reply is a 200 carrying one and the same `x-job-id`, led by exactly one caller.
fn assert_one_flight(replies: &[Reply]) {
    for r in replies {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let job_ids: HashSet<_> = replies.iter().map(|r| r.header("x-job-id")).collect();
    assert_eq!(job_ids.len(), 1, "one job id for all: {job_ids:?}");
    assert!(
        job_ids.iter().all(Option::is_some),
        "every answer has x-job-id"
    );
    let misses = replies
        .iter()
        .filter(|r| r.header("x-cache") == Some("MISS"))
        .count();
    assert_eq!(misses, 1, "exactly one caller led the flight");
}

// 1,000 callers on 1,000 HTTP/1 sockets need 2,000 descriptors in this process (client and
// server side), more than a default `ulimit -n` of 1024, and h2 is blocked (see
// `realtime_calls_over_h2_share_one_flight`): so 250 keep-alive connections carry 4 calls each.
// The first 250 overlap the 300 ms flight; the rest arrive during or after it. Every one must be
// answered without a second upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_realtime_calls_make_one_upstream_call() {
    let sb = sandbox(sandbox_config()).await;
    sb.sandbox
        .set_fault_spec(Some(Fault::Latency(Duration::from_millis(300)).times(1)));
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;

    let replies = tokio::time::timeout(
        TEST_BOUND,
        pooled_realtime(proxy.running.addr, BALANCE, 250, 1000),
    )
    .await
    .expect("1,000 realtime calls finish within the bound");
    assert_eq!(replies.len(), 1000);
    assert_one_flight(&replies);
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
    assert!(
        proxy.running.state.inflight.realtime.is_empty(),
        "no flight left open"
    );
}

// Over h2 every request carries `:authority` (the proxy's own address), which hyper exposes as
// an absolute URI; the proxy must serve it like origin-form, not as a foreign proxy target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_calls_over_h2_share_one_flight() {
    let sb = sandbox(sandbox_config()).await;
    sb.sandbox
        .set_fault_spec(Some(Fault::Latency(Duration::from_millis(300)).times(1)));
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;
    let addr = proxy.running.addr;
    let h2 = h2_connection(addr).await;

    let replies = tokio::time::timeout(TEST_BOUND, async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            let mut h2 = h2.clone();
            tasks.spawn(async move { realtime_on(&mut h2, addr, BALANCE).await });
        }
        let mut replies = Vec::with_capacity(1000);
        while let Some(r) = tasks.join_next().await {
            replies.push(r.expect("call task"));
        }
        replies
    })
    .await
    .expect("1,000 h2 realtime calls finish within the bound");
    assert_one_flight(&replies);
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
}

#[tokio::test]
async fn second_realtime_call_in_window_is_collapsed_and_learns_the_job_finished_by_polling() {
    let sb = sandbox(sandbox_config()).await; // jobs finish after 200 ms, no webhook
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(POLLING).start().await;

    let first = proxy.realtime(BALANCE).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-cache"), Some("MISS"));
    assert_eq!(first.header("x-job-status"), Some("processing"));
    let job_id = first.header("x-job-id").expect("x-job-id").to_string();

    let second = proxy.realtime(BALANCE).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-job-id"), Some(job_id.as_str()));
    assert_eq!(second.header("x-cache"), Some("COLLAPSED"));

    let finished = eventually(Duration::from_secs(10), || async {
        proxy.realtime(BALANCE).await.header("x-job-status") == Some("finished")
    })
    .await;
    assert!(finished, "the collapsed answer never said finished");
    let last = proxy.realtime(BALANCE).await;
    assert_eq!(last.header("x-job-id"), Some(job_id.as_str()));
    assert_eq!(last.header("x-cache"), Some("COLLAPSED"));
    assert!(last.json()["data"].is_object(), "{}", last.text());
    assert!(sb.sandbox.count("job") >= 1, "the poller asked Mono");
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
}

#[tokio::test(start_paused = true)]
async fn realtime_call_after_the_window_reaches_upstream_again() {
    let sb = sandbox(SandboxConfig {
        window: Duration::from_millis(500),
        ..sandbox_config()
    })
    .await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[realtime]\nwindow = \"1s\"")
        .toml(NO_POLL)
        .start()
        .await;

    let first = proxy.realtime(BALANCE).await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let first_job = first.header("x-job-id").expect("x-job-id").to_string();
    tokio::time::advance(Duration::from_millis(900)).await;
    assert_eq!(
        proxy.realtime(BALANCE).await.header("x-cache"),
        Some("COLLAPSED"),
        "still inside the 1 s window"
    );
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);

    tokio::time::advance(Duration::from_millis(200)).await;
    let again = proxy.realtime(BALANCE).await;
    assert_eq!(again.header("x-cache"), Some("MISS"), "{}", again.text());
    assert_eq!(again.status, 200);
    let second_job = again.header("x-job-id").expect("x-job-id");
    assert_ne!(second_job, first_job, "a new job after the window");
    assert_eq!(sb.sandbox.count("balance_realtime"), 2);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
}

#[tokio::test]
async fn balance_and_transactions_have_independent_windows() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;

    let balance = proxy.realtime(BALANCE).await;
    assert_eq!(balance.header("x-cache"), Some("MISS"));
    let tx = proxy.realtime(TRANSACTIONS).await;
    assert_eq!(tx.status, 200, "{}", tx.text());
    assert_eq!(
        tx.header("x-cache"),
        Some("MISS"),
        "own window for transactions"
    );
    assert_ne!(balance.header("x-job-id"), tx.header("x-job-id"));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("transactions_realtime"), 1);

    let balance2 = proxy.realtime(BALANCE).await;
    let tx2 = proxy.realtime(TRANSACTIONS).await;
    assert_eq!(balance2.header("x-cache"), Some("COLLAPSED"));
    assert_eq!(tx2.header("x-cache"), Some("COLLAPSED"));
    assert_eq!(balance2.header("x-job-id"), balance.header("x-job-id"));
    assert_eq!(tx2.header("x-job-id"), tx.header("x-job-id"));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("transactions_realtime"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_5xx_on_the_leader_reaches_every_waiter_and_stores_nothing() {
    let sb = sandbox(sandbox_config()).await;
    // Slow answers (300 ms) so all 20 callers are waiting when the 503 comes back.
    let relay = slow_relay(sb.addr, Duration::from_millis(300)).await;
    let proxy = ProxyBuilder::new(&format!("http://{relay}"))
        .toml(NO_POLL)
        .start()
        .await;
    sb.sandbox.set_fault_spec(Some(Fault::Status(503).times(1)));

    let replies = tokio::time::timeout(TEST_BOUND, concurrent_realtime(&proxy, BALANCE, 20))
        .await
        .expect("calls finish within the bound");
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
    assert!(replies.iter().all(|r| r.header("x-job-id").is_none()));
    assert_eq!(sb.sandbox.count("faulted"), 1, "one upstream call for 20");
    assert_eq!(sb.sandbox.count("balance_realtime"), 0);

    // No record was stored: the next call goes upstream and starts the job.
    let next = proxy.realtime(BALANCE).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.header("x-cache"), Some("MISS"));
    assert!(next.header("x-job-id").is_some());
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeout_on_the_leader_reaches_every_waiter_and_stores_nothing() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[upstream]\nrealtime_timeout = \"300ms\"")
        .toml(NO_POLL)
        .start()
        .await;
    sb.sandbox.set_fault_spec(Some(Fault::Hang.times(1)));

    let replies = tokio::time::timeout(TEST_BOUND, concurrent_realtime(&proxy, BALANCE, 20))
        .await
        .expect("calls finish within the bound");
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 504), "{statuses:?}");
    assert_eq!(
        replies[0].json()["status"],
        "failed",
        "Mono's error envelope"
    );
    assert_eq!(sb.sandbox.count("faulted"), 1, "one upstream call for 20");

    let next = proxy.realtime(BALANCE).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.header("x-cache"), Some("MISS"));
    assert!(next.header("x-job-id").is_some());
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_get_the_answer_when_the_leaders_client_hangs_up() {
    let sb = sandbox(SandboxConfig {
        latency: Duration::from_millis(500),
        ..sandbox_config()
    })
    .await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;
    let addr = proxy.running.addr;

    // The leader's client gives up after 100 ms: its connection is dropped mid-flight.
    let mut leader_conn = h1_connection(addr).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        realtime_on(&mut leader_conn, addr, BALANCE),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the leader's call should still be running"
    );
    drop(leader_conn);

    let replies = tokio::time::timeout(TEST_BOUND, concurrent_realtime(&proxy, BALANCE, 9))
        .await
        .expect("calls finish within the bound");
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-cache"), Some("COLLAPSED"));
    }
    let job_ids: HashSet<_> = replies.iter().map(|r| r.header("x-job-id")).collect();
    assert_eq!(job_ids.len(), 1, "{job_ids:?}");
    assert!(job_ids.iter().all(Option::is_some));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
}

#[tokio::test]
async fn a_429_from_mono_holds_realtime_calls_back_for_the_window() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;
    sb.sandbox.set_fault_spec(Some(Fault::Status(429).times(1)));

    let limited = proxy.realtime(BALANCE).await;
    assert_eq!(limited.status, 429, "Mono's 429 passes through");
    assert_eq!(sb.sandbox.count("faulted"), 1);

    for _ in 0..3 {
        let r = proxy.realtime(BALANCE).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["data"].is_object(), "{}", r.text());
    }
    assert_eq!(realtime_calls(&sb), 0, "no realtime call while held back");
    assert_eq!(sb.sandbox.count("faulted"), 1);
    assert_eq!(
        sb.sandbox.count("balance"),
        1,
        "one plain fetch, then the cache"
    );
    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "mono_proxy_realtime_calls_total{outcome=\"rate_limited\"}"
        ) >= 3.0,
        "{m}"
    );
}

#[tokio::test]
async fn realtime_header_is_case_insensitive_and_answers_are_labelled() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;

    let leader = proxy.get(BALANCE, &[("X-Realtime", "TRUE")]).await;
    assert_eq!(leader.status, 200, "{}", leader.text());
    assert_eq!(leader.header("x-cache"), Some("MISS"));
    assert!(leader.header("x-job-id").is_some(), "Mono's x-job-id");
    assert_eq!(leader.header("x-job-status"), Some("processing"));
    assert_eq!(
        sb.sandbox.count("balance_realtime"),
        1,
        "counted as realtime"
    );

    let collapsed = proxy.get(BALANCE, &[("x-realtime", "True")]).await;
    assert_eq!(collapsed.status, 200);
    assert_eq!(collapsed.header("x-cache"), Some("COLLAPSED"));
    let cache_status = collapsed.header("cache-status").expect("Cache-Status");
    assert!(cache_status.contains("collapsed"), "{cache_status}");
    assert_eq!(collapsed.header("x-job-id"), leader.header("x-job-id"));
    assert_eq!(collapsed.header("x-job-status"), Some("processing"));
    assert_eq!(collapsed.header("x-has-new-data"), Some("false"));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);

    let bad = proxy.get(BALANCE, &[("x-realtime", "yes")]).await;
    assert_eq!(bad.status, 400);
}

/// Waiter latency: 200 callers on 200 connections released together against a 50 ms upstream.
/// Run: `cargo test --release --test realtime -- --ignored --nocapture measure_waiter_latency`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run explicitly"]
async fn measure_waiter_latency() {
    const N: usize = 200;
    let sb = sandbox(SandboxConfig {
        latency: Duration::from_millis(50),
        ..sandbox_config()
    })
    .await;
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;
    let addr = proxy.running.addr;

    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        conns.push(h1_connection(addr).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in conns {
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            let r = realtime_on(&mut conn, addr, BALANCE).await;
            (r, Instant::now())
        });
    }
    let mut done = Vec::with_capacity(N);
    while let Some(r) = tasks.join_next().await {
        done.push(r.expect("call task"));
    }
    assert!(done.iter().all(|(r, _)| r.status == 200));
    let leaders: Vec<_> = done
        .iter()
        .filter(|(r, _)| r.header("x-cache") == Some("MISS"))
        .collect();
    assert_eq!(leaders.len(), 1, "one leader");
    let leader_at = leaders[0].1;
    let mut lags: Vec<f64> = done
        .iter()
        .filter(|(r, _)| r.header("x-cache") != Some("MISS"))
        .map(|(_, at)| {
            if *at >= leader_at {
                at.duration_since(leader_at).as_secs_f64() * 1000.0
            } else {
                -(leader_at.duration_since(*at).as_secs_f64() * 1000.0)
            }
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    let p50 = lags[lags.len() / 2];
    let max = lags[lags.len() - 1];
    let min = lags[0];
    println!(
        "waiter latency over {} waiters (ms, waiter done - leader done): p50 {p50:.3}, max {max:.3}, min {min:.3}; upstream realtime calls {}",
        lags.len(),
        sb.sandbox.count("balance_realtime") + sb.sandbox.count("balance_realtime_repeat")
    );
}

// The flight is per (account, endpoint): a caller asking for another transactions page while
// the realtime call for page 1 runs shares that call, but must get its own page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_asking_for_another_page_gets_its_own_page() {
    let sb = sandbox(sandbox_config()).await;
    sb.sandbox
        .set_fault_spec(Some(Fault::Latency(Duration::from_millis(500)).times(1)));
    let proxy = ProxyBuilder::for_sandbox(&sb).toml(NO_POLL).start().await;
    let addr = proxy.running.addr;

    let leader = tokio::spawn(async move {
        let mut conn = h1_connection(addr).await;
        realtime_on(&mut conn, addr, "/v2/accounts/acc1/transactions?limit=2").await
    });
    let joined = eventually(Duration::from_secs(10), || async {
        !proxy.running.state.inflight.realtime.is_empty()
    })
    .await;
    assert!(joined, "the leader's flight never started");
    let page2 = proxy
        .realtime("/v2/accounts/acc1/transactions?limit=2&page=2")
        .await;
    let page1 = leader.await.expect("leader task");

    assert_eq!(page1.status, 200, "{}", page1.text());
    assert_eq!(page2.status, 200, "{}", page2.text());
    assert_eq!(page1.json()["meta"]["page"], 1, "{}", page1.text());
    assert_eq!(page2.json()["meta"]["page"], 2, "{}", page2.text());
    assert_ne!(page1.json()["data"], page2.json()["data"]);
    assert_eq!(page2.header("x-job-id"), page1.header("x-job-id"));
    assert_eq!(sb.sandbox.count("transactions_realtime"), 1);
    assert_eq!(sb.sandbox.count("transactions_realtime_repeat"), 0);
}
