//! Cached reads (spec §4) over real sockets with the sandbox as upstream.

mod support;

use std::time::Duration;

use mono_proxy::sandbox::{Fault, SandboxConfig};
use support::*;

#[tokio::test]
async fn miss_then_hit_makes_one_upstream_call() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let first = proxy.get("/v2/accounts/acc1/balance", &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = proxy.get("/v2/accounts/acc1/balance", &[]).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert!(second.header("age").is_some());
    assert!(second
        .header("cache-status")
        .unwrap()
        .starts_with("mono-proxy; hit"));
    assert_eq!(first.body, second.body);
    assert_eq!(sb.sandbox.count("balance"), 1);
}

/// Fetches `/v2/accounts/{id}/balance` under `base` for every id, `tasks` keep-alive clients at
/// once, asserting each answer is a 200; `key` is sent as `mono-sec-key` (sandbox direct).
async fn fetch_balances(base: &str, ids: Vec<String>, tasks: usize, key: Option<&'static str>) {
    let ids = std::sync::Arc::new(ids);
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let ids = std::sync::Arc::clone(&ids);
        let base = base.to_string();
        set.spawn(async move {
            let client = client();
            for id in ids.iter().skip(t).step_by(tasks) {
                let mut req = http::Request::get(format!("{base}/v2/accounts/{id}/balance"));
                if let Some(key) = key {
                    req = req.header("mono-sec-key", key);
                }
                let req = req
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let resp = client.request(req).await.expect("request");
                let status = resp.status();
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .expect("body")
                    .to_bytes();
                assert_eq!(status, 200, "{id}: {}", String::from_utf8_lossy(&body));
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("fetch task");
    }
}

/// GETs `path` until `done` holds for the reply (bounded by `timeout`, via `eventually`);
/// returns the last reply and whether `done` held.
async fn get_until(
    proxy: &TestProxy,
    path: &str,
    timeout: Duration,
    done: impl Fn(&Reply) -> bool,
) -> (Reply, bool) {
    let last = std::sync::Arc::new(std::sync::Mutex::new(None));
    let ok = eventually(timeout, || {
        let last = std::sync::Arc::clone(&last);
        let reply = proxy.get(path, &[]);
        let done = &done;
        async move {
            let r = reply.await;
            let ok = done(&r);
            *last.lock().unwrap() = Some(r);
            ok
        }
    })
    .await;
    let reply = last.lock().unwrap().take().expect("at least one reply");
    (reply, ok)
}

fn balance_of(reply: &Reply) -> i64 {
    reply.json()["data"]["balance"]
        .as_i64()
        .unwrap_or_else(|| panic!("no balance: {}", reply.text()))
}

#[tokio::test(start_paused = true)]
async fn entry_refetches_after_ttl_expiry() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[cache]\nttl = \"1s\"")
        .start()
        .await;
    let first = proxy.get("/v2/accounts/ttl1/balance", &[]).await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    tokio::time::advance(Duration::from_millis(900)).await;
    let hit = proxy.get("/v2/accounts/ttl1/balance", &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"), "fresh for 1 s");
    assert_eq!(sb.sandbox.count("balance"), 1);
    tokio::time::advance(Duration::from_millis(200)).await;
    let refetched = proxy.get("/v2/accounts/ttl1/balance", &[]).await;
    assert_eq!(
        refetched.header("x-cache"),
        Some("MISS"),
        "refetched after its 1 s TTL"
    );
    assert_eq!(sb.sandbox.count("balance"), 2);
}

#[tokio::test]
async fn not_found_answers_are_never_cached() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    for _ in 0..2 {
        let r = proxy.get("/v2/accounts/missing-1/balance", &[]).await;
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.header("x-cache"), Some("MISS"));
    }
    assert_eq!(sb.sandbox.count("balance"), 2);
}

#[tokio::test]
async fn server_error_is_not_cached_and_next_get_refetches() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    sb.sandbox.set_fault_spec(Some(Fault::Status(500).times(1)));
    let failed = proxy.get("/v2/accounts/err1/balance", &[]).await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    let next = proxy.get("/v2/accounts/err1/balance", &[]).await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.header("x-cache"), Some("MISS"));
    assert_eq!(sb.sandbox.count("total"), 2);
    let hit = proxy.get("/v2/accounts/err1/balance", &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(sb.sandbox.count("total"), 2);
}

#[tokio::test]
async fn trailing_ampersand_and_parameter_order_share_one_entry() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let a = proxy
        .get("/v2/accounts/q1/transactions?paginate=true&", &[])
        .await;
    let b = proxy
        .get("/v2/accounts/q1/transactions?paginate=true", &[])
        .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(b.header("x-cache"), Some("HIT"));
    assert_eq!(sb.sandbox.count("transactions"), 1);

    let c = proxy.get("/v2/accounts/q2/transactions?a=1&b=2", &[]).await;
    let d = proxy.get("/v2/accounts/q2/transactions?b=2&a=1", &[]).await;
    assert_eq!(c.header("x-cache"), Some("MISS"));
    assert_eq!(d.header("x-cache"), Some("HIT"));
    assert_eq!(sb.sandbox.count("transactions"), 2);
}

#[tokio::test]
async fn different_pages_are_cached_apart() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let p1 = proxy.get("/v2/accounts/pg/transactions?page=1", &[]).await;
    let p2 = proxy.get("/v2/accounts/pg/transactions?page=2", &[]).await;
    assert_eq!(p1.header("x-cache"), Some("MISS"));
    assert_eq!(p2.header("x-cache"), Some("MISS"));
    assert_ne!(p1.json()["data"], p2.json()["data"]);
    assert_eq!(sb.sandbox.count("transactions"), 2);
}

#[tokio::test]
async fn cache_stays_within_max_bytes_when_ten_times_that_passes_through() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[cache]\nmax_bytes = \"64KiB\"")
        .start()
        .await;
    let ids: Vec<String> = (0..3200).map(|i| format!("bound{i}")).collect();
    let sample = proxy.get("/v2/accounts/bound0/balance", &[]).await;
    let passed = sample.body.len() * ids.len();
    assert!(passed >= 10 * 64 * 1024, "only {passed} bytes would pass");
    fetch_balances(&proxy.url(""), ids, 16, None).await;
    assert_eq!(sb.sandbox.count("balance"), 3200);
    let text = proxy.metrics().await;
    let held = metric(&text, "mono_proxy_cache_bytes");
    assert!(held > 0.0, "nothing cached: {text}");
    assert!(
        held <= 64.0 * 1024.0,
        "cache holds {held} bytes, over its 64 KiB bound"
    );
}

#[tokio::test]
async fn has_new_data_is_false_before_any_sync() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let miss = proxy.get("/v2/accounts/nd0/balance", &[]).await;
    let hit = proxy.get("/v2/accounts/nd0/balance", &[]).await;
    assert_eq!(miss.header("x-has-new-data"), Some("false"));
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("x-has-new-data"), Some("false"));
}

/// Starts a realtime sync of `account` and waits until a plain GET misses again (the finished
/// job invalidated the account); returns that first post-sync reply.
async fn sync_and_refetch(proxy: &TestProxy, account: &str) -> Reply {
    let path = format!("/v2/accounts/{account}/balance");
    let rt = proxy.realtime(&path).await;
    assert_eq!(rt.status, 200, "{}", rt.text());
    assert!(rt.header("x-job-id").is_some(), "no job started");
    let (miss, found) = get_until(proxy, &path, Duration::from_secs(15), |r| {
        r.header("x-cache") == Some("MISS")
    })
    .await;
    assert!(found, "the finished sync never invalidated {account}");
    miss
}

#[tokio::test]
async fn has_new_data_is_true_after_a_sync_that_changed_the_balance() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll_interval = \"100ms\"")
        .start()
        .await;
    let before = proxy.get("/v2/accounts/nd1/balance", &[]).await;
    assert_eq!(before.header("x-has-new-data"), Some("false"));
    assert_ne!(balance_of(&before), 999);
    sb.sandbox.stage_balance("nd1", 999);
    let after = sync_and_refetch(&proxy, "nd1").await;
    assert_eq!(after.header("x-has-new-data"), Some("true"));
    assert_eq!(balance_of(&after), 999);
    let hit = proxy.get("/v2/accounts/nd1/balance", &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("x-has-new-data"), Some("true"));
}

#[tokio::test]
async fn has_new_data_is_false_after_a_sync_that_changed_nothing() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll_interval = \"100ms\"")
        .start()
        .await;
    let before = proxy.get("/v2/accounts/nd2/balance", &[]).await;
    let after = sync_and_refetch(&proxy, "nd2").await;
    assert_eq!(after.header("x-has-new-data"), Some("false"));
    assert_eq!(balance_of(&after), balance_of(&before));
}

#[tokio::test(start_paused = true)]
async fn stale_entry_is_served_when_upstream_fails_after_ttl() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[cache]\nttl = \"1s\"\nmax_stale = \"1h\"")
        .start()
        .await;
    let first = proxy.get("/v2/accounts/st1/balance", &[]).await;
    assert_eq!(first.status, 200);
    // Hits never reach upstream, so arming the fault now only bites once the entry expires.
    sb.sandbox.set_fault(Some(Fault::Status(503)));
    assert_eq!(
        proxy
            .get("/v2/accounts/st1/balance", &[])
            .await
            .header("x-cache"),
        Some("HIT")
    );
    tokio::time::advance(Duration::from_millis(1100)).await;
    let r = proxy.get("/v2/accounts/st1/balance", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-cache"), Some("STALE"));
    assert!(
        r.header("cache-status").unwrap().contains("fwd=stale"),
        "{:?}",
        r.header("cache-status")
    );
    assert_eq!(r.body, first.body);
    assert!(sb.sandbox.count("faulted") >= 1);
}

#[tokio::test(start_paused = true)]
async fn stale_entry_is_served_when_upstream_resets_after_ttl() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[cache]\nttl = \"1s\"\nmax_stale = \"1h\"")
        .start()
        .await;
    let first = proxy.get("/v2/accounts/st3/balance", &[]).await;
    assert_eq!(first.status, 200);
    sb.sandbox.set_fault(Some(Fault::Reset));
    tokio::time::advance(Duration::from_millis(1100)).await;
    let r = proxy.get("/v2/accounts/st3/balance", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-cache"), Some("STALE"));
    assert_eq!(r.body, first.body);
}

#[tokio::test(start_paused = true)]
async fn upstream_error_passes_through_once_past_max_stale() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[cache]\nttl = \"1s\"\nmax_stale = \"1s\"")
        .start()
        .await;
    let first = proxy.get("/v2/accounts/st2/balance", &[]).await;
    assert_eq!(first.status, 200);
    sb.sandbox.set_fault(Some(Fault::Status(503)));
    tokio::time::advance(Duration::from_millis(1500)).await;
    let stale = proxy.get("/v2/accounts/st2/balance", &[]).await;
    assert_eq!(stale.header("x-cache"), Some("STALE"), "within max_stale");
    tokio::time::advance(Duration::from_millis(600)).await;
    let r = proxy.get("/v2/accounts/st2/balance", &[]).await;
    assert_eq!(
        r.status,
        503,
        "a 2.1 s old entry was still served: {}",
        r.text()
    );
    assert_eq!(r.json()["status"], "failed");
    assert_ne!(r.header("x-cache"), Some("STALE"));
}

#[tokio::test]
async fn pagination_links_point_at_the_proxy_and_can_be_followed() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let base = proxy.url("");
    let p1 = proxy.get("/v2/accounts/x/transactions", &[]).await;
    assert_eq!(p1.status, 200, "{}", p1.text());
    let next = p1.json()["meta"]["next"]
        .as_str()
        .unwrap_or_else(|| panic!("no meta.next: {}", p1.text()))
        .to_string();
    assert!(next.starts_with(&format!("{base}/")), "{next}");
    let p2 = get(&next, &[]).await;
    assert_eq!(p2.status, 200, "{}", p2.text());
    assert_eq!(p2.json()["meta"]["page"], 2);
    let previous = p2.json()["meta"]["previous"]
        .as_str()
        .unwrap_or_else(|| panic!("no meta.previous: {}", p2.text()))
        .to_string();
    assert!(previous.starts_with(&format!("{base}/")), "{previous}");
    assert!(!p2.text().contains("api.withmono.com/v2"), "{}", p2.text());
}

#[tokio::test]
async fn hundred_concurrent_misses_make_one_upstream_call() {
    let sb = sandbox(SandboxConfig {
        latency: Duration::from_millis(200),
        ..sandbox_config()
    })
    .await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let url = proxy.url("/v2/accounts/herd/balance");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let url = url.clone();
        set.spawn(async move { get(&url, &[]).await });
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.push(r.expect("task"));
    }
    assert_eq!(sb.sandbox.count("balance"), 1);
    assert!(replies.iter().all(|r| r.status == 200));
    assert!(replies.iter().all(|r| r.body == replies[0].body));
    let misses = replies
        .iter()
        .filter(|r| r.header("x-cache") == Some("MISS"))
        .count();
    assert_eq!(misses, 1);
}

const TENANTS: &str = "[[clients]]\nname = \"a\"\ntoken_env = \"TOKEN_A\"\n\
    [[clients]]\nname = \"b\"\ntoken_env = \"TOKEN_B\"\nsecret_key_env = \"KEY_B\"";

#[tokio::test]
async fn one_tenant_never_gets_another_tenants_cached_body() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(TENANTS)
        .env("TOKEN_A", "ta")
        .env("TOKEN_B", "tb")
        .env("KEY_B", "test_sk_other")
        .start()
        .await;
    let path = "/v2/accounts/shared/balance";
    let a = proxy.get(path, &[("x-mono-proxy-token", "ta")]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a2 = proxy.get(path, &[("x-mono-proxy-token", "ta")]).await;
    assert_eq!(a2.header("x-cache"), Some("HIT"));
    let b = proxy.get(path, &[("x-mono-proxy-token", "tb")]).await;
    assert_eq!(b.status, 401, "{}", b.text());
    assert_ne!(b.body, a.body);
    assert_eq!(
        sb.sandbox.count("unauthorized"),
        1,
        "B never reached upstream"
    );
    assert_eq!(sb.sandbox.count("balance"), 1);
}

#[tokio::test]
async fn requests_without_a_valid_client_token_never_reach_upstream() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(TENANTS)
        .env("TOKEN_A", "ta")
        .env("TOKEN_B", "tb")
        .env("KEY_B", "test_sk_other")
        .start()
        .await;
    let path = "/v2/accounts/shared/balance";
    let ok = proxy.get(path, &[("x-mono-proxy-token", "ta")]).await;
    assert_eq!(ok.status, 200);
    let none = proxy.get(path, &[]).await;
    assert_eq!(none.status, 401, "{}", none.text());
    let wrong = proxy.get(path, &[("x-mono-proxy-token", "tc")]).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(wrong.json()["status"], "failed");
    assert_eq!(sb.sandbox.count("total"), 1);
}

// The binary's allocator, so the measurement sees what the proxy really costs; jemalloc's own
// statistics count the live heap, not just RSS.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Bytes the allocator holds for live allocations now.
fn live_heap() -> i64 {
    // jemalloc refreshes its statistics only when the epoch advances.
    tikv_jemalloc_ctl::epoch::advance().expect("jemalloc epoch");
    tikv_jemalloc_ctl::stats::allocated::read().expect("jemalloc stats") as i64
}

/// This process's resident set size in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

/// Memory per cached balance entry (a figure to report, not a pass/fail check).
/// Run: `cargo test --release --test cache -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: run explicitly with --release --ignored --nocapture"]
async fn measure_memory_per_entry() {
    const N: usize = 100_000;
    const TASKS: usize = 64;
    let ids = |prefix: &str| -> Vec<String> { (0..N).map(|i| format!("{prefix}{i:06}")).collect() };

    // Phase 1: the sandbox alone, to learn what its own per-account state costs.
    let warm: Vec<String> = ids("w").into_iter().take(1000).collect();
    let direct = sandbox(sandbox_config()).await;
    let direct_url = direct.base_url(false);
    fetch_balances(&direct_url, warm.clone(), TASKS, Some(KEY)).await;
    let (before, heap_before) = (rss_bytes(), live_heap());
    fetch_balances(&direct_url, ids("m"), TASKS, Some(KEY)).await;
    let sandbox_growth = rss_bytes().saturating_sub(before);
    let sandbox_heap = live_heap() - heap_before;

    // Phase 2: the proxy in front of the same sandbox, whose accounts already exist, so the
    // growth now is the proxy's alone (plus allocator noise).
    let proxy = ProxyBuilder::for_sandbox(&direct).start().await;
    fetch_balances(&proxy.url(""), warm, TASKS, None).await;
    let (before, heap_before) = (rss_bytes(), live_heap());
    fetch_balances(&proxy.url(""), ids("m"), TASKS, None).await;
    let proxy_growth = rss_bytes().saturating_sub(before);
    let proxy_heap = live_heap() - heap_before;
    let text = proxy.metrics().await;
    let weighed = metric(&text, "mono_proxy_cache_bytes");
    let entries = metric(&text, "mono_proxy_cache_accounts");
    let body_len = proxy
        .get("/v2/accounts/m000000/balance", &[])
        .await
        .body
        .len();

    // Cross-check: what dropping the proxy's state gives back is what it held.
    let state = std::sync::Arc::clone(&proxy.running.state);
    proxy.stop().await;
    let heap_before_drop = live_heap();
    drop(state);
    let released = heap_before_drop - live_heap();
    let per = |b: u64| b as f64 / N as f64;
    println!("entries cached: {entries}, body bytes: {body_len}");
    println!(
        "rss growth, sandbox alone (first sight of each account): {:>6.0} B/account",
        per(sandbox_growth)
    );
    println!(
        "rss growth, proxy alone (accounts already seeded):       {:>6.0} B/entry",
        per(proxy_growth)
    );
    println!(
        "live heap growth, sandbox alone:                         {:>6.0} B/account",
        per(sandbox_heap.max(0) as u64)
    );
    println!(
        "live heap growth, proxy alone:                           {:>6.0} B/entry",
        per(proxy_heap.max(0) as u64)
    );
    println!(
        "heap released when the proxy's state drops:             {:>6.0} B/entry",
        per(released.max(0) as u64)
    );
    println!(
        "mono_proxy_cache_bytes / N (weigher's estimate):         {:>6.0} B/entry",
        per(weighed as u64)
    );
    drop(direct);
}
