//! Shared state in Redis (spec §7): two replicas, one window; broadcasts; outages and recovery.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// A prefix of its own per test, so tests sharing one Redis never see each other's keys.
fn prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A proxy in front of `sb` sharing state through `r` under `prefix`; `extra` goes in `[store]`.
async fn replica(
    sb: &mono_proxy::sandbox::RunningSandbox,
    r: &TestRedis,
    prefix: &str,
    extra: &str,
    more: &str,
) -> TestProxy {
    ProxyBuilder::for_sandbox(sb)
        .toml(&format!(
            "[store]\nbackend = \"redis\"\nredis_url = \"{}\"\nprefix = \"{prefix}\"\n{extra}\n{more}",
            r.url
        ))
        .start()
        .await
}

/// Realtime calls spread over replicas, all started at once; the replies in order.
async fn concurrent_realtime(replicas: &[&TestProxy], path: &str, n: usize) -> Vec<Reply> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = replicas[i % replicas.len()].url(path);
            tokio::spawn(async move { get(&url, &[("x-realtime", "true")]).await })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for t in tasks {
        replies.push(t.await.expect("call task"));
    }
    replies
}

// A generous per-operation timeout (default 50 ms): a loaded two-core machine must not turn a
// slow answer into a local fallback and a second upstream call. Outages are still seen at once:
// a stopped Redis refuses connections, it does not go slow.
const TIMEOUT: &str = "timeout = \"1s\"";

#[tokio::test]
async fn two_replicas_make_one_realtime_call_for_200_concurrent_calls() {
    let r = TestRedis::start();
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();
    // The default per-operation timeout (50 ms), under a burst on two shared cores: a claim
    // whose answer comes late is retried, never taken for a win.
    let a = replica(&sb, &r, &p, "", "").await;
    let b = replica(&sb, &r, &p, "", "").await;
    assert_eq!(a.store_state().await, "ok");

    let replies = concurrent_realtime(&[&a, &b], "/v2/accounts/acc-many/balance", 200).await;

    let job = replies[0].header("x-job-id").map(str::to_string);
    assert!(job.is_some(), "no x-job-id: {:?}", replies[0].headers);
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-job-id"), job.as_deref());
    }
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
}

#[tokio::test]
async fn webhook_on_one_replica_updates_job_status_and_drops_cache_on_the_other() {
    let r = TestRedis::start();
    let sb = slow_jobs().await;
    let p = prefix();
    let a = replica(&sb, &r, &p, TIMEOUT, "[jobs]\npoll = false").await;
    let b = replica(&sb, &r, &p, TIMEOUT, "[jobs]\npoll = false").await;
    let path = "/v2/accounts/acc-hook/balance";

    let started = a.realtime(path).await;
    assert_eq!(started.status, 200, "{}", started.text());
    assert_eq!(started.header("x-job-status"), Some("processing"));
    let job_id = started.header("x-job-id").expect("x-job-id").to_string();

    // B shares the window: it answers from A's record without a realtime call of its own.
    let on_b = b.realtime(path).await;
    assert_eq!(on_b.header("x-job-id"), Some(job_id.as_str()));
    assert_eq!(on_b.header("x-job-status"), Some("processing"));
    assert_eq!(b.get(path, &[]).await.header("x-cache"), Some("HIT"));

    let hook = a
        .webhook(&json!({
            "event": "mono.accounts.jobs.update",
            "data": {"id": job_id, "status": "finished"}
        }))
        .await;
    assert_eq!(hook.status, 200, "{}", hook.text());

    let dropped = eventually(Duration::from_secs(10), || async {
        b.get(path, &[]).await.header("x-cache") == Some("MISS")
    })
    .await;
    assert!(
        dropped,
        "B kept serving its cached balance after A's webhook"
    );
    let after = b.realtime(path).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.header("x-job-id"), Some(job_id.as_str()));
    assert_eq!(after.header("x-job-status"), Some("finished"));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
}

#[tokio::test]
async fn redis_outage_serves_locally_and_sharing_returns_after_restart() {
    let mut r = TestRedis::private();
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();
    let a = replica(&sb, &r, &p, TIMEOUT, "").await;
    let b = replica(&sb, &r, &p, TIMEOUT, "").await;
    let shared = a.realtime("/v2/accounts/acc-before/balance").await;
    assert_eq!(shared.status, 200);
    let on_b = b.realtime("/v2/accounts/acc-before/balance").await;
    assert_eq!(on_b.header("x-job-id"), shared.header("x-job-id"));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);

    r.stop();
    for proxy in [&a, &b] {
        let rt = proxy.realtime("/v2/accounts/acc-outage/balance").await;
        assert_eq!(rt.status, 200, "{}", rt.text());
        assert!(rt.header("x-job-id").is_some());
        let plain = proxy.get("/v2/accounts/acc-outage/balance", &[]).await;
        assert_eq!(plain.status, 200, "{}", plain.text());
        let degraded = eventually(Duration::from_secs(10), || async {
            proxy.store_state().await.starts_with("degraded")
        })
        .await;
        assert!(degraded, "readyz store: {}", proxy.store_state().await);
    }
    // Fail open: still ready.
    assert_eq!(get(&a.admin("/readyz"), &[]).await.status, 200);

    r.restart();
    shared_again(&[&a, &b]).await;
    let before = sb.sandbox.count("balance_realtime");
    let repeats = sb.sandbox.count("balance_realtime_repeat");
    let replies = concurrent_realtime(&[&a, &b], "/v2/accounts/acc-after/balance", 20).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("x-job-id"), replies[0].header("x-job-id"));
    }
    assert_eq!(sb.sandbox.count("balance_realtime") - before, 1);
    // The sandbox counts a second realtime call inside Mono's window as a repeat.
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), repeats);
}

#[tokio::test]
async fn fail_closed_answers_503_while_redis_is_down_and_recovers() {
    let mut r = TestRedis::private();
    let sb = sandbox(sandbox_config()).await;
    let a = replica(
        &sb,
        &r,
        &prefix(),
        "fail_open = false\ntimeout = \"1s\"",
        "",
    )
    .await;
    assert_eq!(a.realtime("/v2/accounts/acc-fc1/balance").await.status, 200);

    r.stop();
    let refused = eventually(Duration::from_secs(10), || async {
        a.realtime("/v2/accounts/acc-fc2/balance").await.status == 503
    })
    .await;
    assert!(refused, "fail-closed proxy kept answering without redis");
    let reply = a.realtime("/v2/accounts/acc-fc2/balance").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["status"], "failed");
    let ready = get(&a.admin("/readyz"), &[]).await;
    assert_eq!(ready.status, 503, "{}", ready.text());

    r.restart();
    let recovered = eventually(Duration::from_secs(20), || async {
        a.realtime("/v2/accounts/acc-fc2/balance").await.status == 200
    })
    .await;
    assert!(
        recovered,
        "fail-closed proxy did not recover after redis returned"
    );
}

#[tokio::test]
async fn proxy_starts_with_redis_down_and_shares_once_it_comes_up() {
    let mut r = TestRedis::private();
    r.stop();
    let sb = sandbox(sandbox_config()).await;
    let a = replica(&sb, &r, &prefix(), TIMEOUT, "").await;
    assert!(a.store_state().await.starts_with("degraded"));
    let rt = a.realtime("/v2/accounts/acc-cold/balance").await;
    assert_eq!(rt.status, 200, "{}", rt.text());

    r.restart();
    let back = eventually(Duration::from_secs(20), || async {
        a.store_state().await == "ok"
    })
    .await;
    assert!(back, "readyz store: {}", a.store_state().await);
}

/// Waits until every replica reports its shared store healthy again.
async fn shared_again(replicas: &[&TestProxy]) {
    for proxy in replicas {
        let back = eventually(Duration::from_secs(20), || async {
            proxy.store_state().await == "ok"
        })
        .await;
        assert!(back, "readyz store: {}", proxy.store_state().await);
    }
}

/// Realtime calls for every account, `per` on each replica, all at once; every reply must be a 200.
async fn burst(replicas: &[&TestProxy], accounts: &[String], per: usize, phase: &str) {
    let mut tasks = Vec::new();
    for account in accounts {
        for proxy in replicas {
            for _ in 0..per {
                let url = proxy.url(&format!("/v2/accounts/{account}/balance"));
                tasks.push(tokio::spawn(async move {
                    get(&url, &[("x-realtime", "true")]).await
                }));
            }
        }
    }
    for t in tasks {
        let reply = t.await.expect("call task");
        assert_eq!(reply.status, 200, "{phase}: {}", reply.text());
        assert!(reply.header("x-job-id").is_some(), "{phase}: no x-job-id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realtime_window_survives_redis_pausing_restarting_empty_and_vanishing() {
    let mut r = TestRedis::private();
    let sb = sandbox(sandbox_config()).await;
    let p = prefix();
    // The default per-operation timeout (50 ms): a claim Redis does not answer in time under a
    // burst must be retried or waited on, never answered with a second upstream call.
    let a = replica(&sb, &r, &p, "", "[jobs]\npoll = false").await;
    let b = replica(&sb, &r, &p, "", "[jobs]\npoll = false").await;
    let accounts: Vec<String> = (0..120).map(|i| format!("fault{i:03}")).collect();
    // Every realtime call that reached "Mono": new jobs plus repeats inside Mono's window.
    let calls =
        || sb.sandbox.count("balance_realtime") + sb.sandbox.count("balance_realtime_repeat");

    burst(&[&a, &b], &accounts, 2, "healthy").await;
    assert_eq!(calls(), 120, "one call per account while healthy");

    r.pause();
    burst(&[&a, &b], &accounts, 1, "redis paused").await;
    r.resume();
    burst(&[&a, &b], &accounts, 1, "redis resumed").await;
    assert_eq!(calls(), 120, "a paused redis let a replica call again");

    r.restart(); // SIGKILL, then an empty redis on the same port
    burst(&[&a, &b], &accounts, 1, "redis restarted empty").await;
    shared_again(&[&a, &b]).await;
    burst(&[&a, &b], &accounts, 1, "after re-seeding").await;
    assert_eq!(calls(), 120, "an empty redis let a replica call again");

    r.stop();
    burst(&[&a, &b], &accounts, 1, "redis unreachable").await;
    assert_eq!(
        calls(),
        120,
        "an unreachable redis let a replica call again"
    );
    r.restart();
    shared_again(&[&a, &b]).await;
    burst(&[&a, &b], &accounts, 1, "redis back").await;

    assert_eq!(
        calls(),
        120,
        "exactly one upstream realtime call per account per window"
    );
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
    let errors = metric(&a.metrics().await, "mono_proxy_store_errors_total");
    assert!(errors > 0.0, "the faults never reached the store");
}
