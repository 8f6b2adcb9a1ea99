//! Route rules, the endpoints apps call besides balance and transactions, the official SDK's
//! unversioned paths, request cache directives (RFC 9111 §5.2.1), Mono's own no-store, 429
//! cooldowns on every route, and the BVN guard. Real sockets, the sandbox as Mono.

mod support;

use std::time::Duration;

use http::Method;
use mono_proxy::sandbox::{CannedReply, Fault};
use serde_json::json;
use support::*;

/// Finishes `account`'s sync through a webhook naming the job.
async fn finish_sync(p: &TestProxy, job_id: &str) {
    let hook = p
        .webhook(&json!({
            "event": "mono.accounts.jobs.update",
            "data": {"id": job_id, "status": "finished"}
        }))
        .await;
    assert_eq!(hook.status, 200, "{}", hook.text());
}

#[tokio::test]
async fn account_details_are_cached_and_dropped_when_a_sync_finishes() {
    let sb = slow_jobs().await;
    let p = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll = false")
        .start()
        .await;
    let path = "/v2/accounts/det1";
    let first = p.get(path, &[]).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = p.get(path, &[]).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert!(second.header("cache-status").unwrap().contains("hit"));
    assert_eq!(second.header("age"), Some("0"));
    // Details carry no x-has-new-data: that header is for balance and transactions.
    assert_eq!(second.header("x-has-new-data"), None);
    assert_eq!(second.body, first.body);
    assert_eq!(sb.sandbox.count("details"), 1);

    let job = p.realtime("/v2/accounts/det1/balance").await;
    let job_id = job.header("x-job-id").expect("a job").to_string();
    finish_sync(&p, &job_id).await;
    assert_eq!(p.get(path, &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(sb.sandbox.count("details"), 2);
}

#[tokio::test]
async fn identity_income_and_statements_are_not_cached_by_default() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    for (path, counter) in [
        ("/v2/accounts/pd1/identity", "identity"),
        ("/v2/accounts/pd1/income", "income"),
        ("/v2/accounts/pd1/statement", "statements"),
    ] {
        for _ in 0..2 {
            let r = p.get(path, &[]).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            assert_eq!(r.header("x-cache"), None, "{path}");
        }
        assert_eq!(sb.sandbox.count(counter), 2, "{path}");
    }
    let metrics = p.metrics().await;
    assert!(
        metrics.contains("route=\"identity\""),
        "no per-route label: {metrics}"
    );
}

#[tokio::test]
async fn a_configured_route_caches_personal_data_only_when_told_and_keeps_it_across_syncs() {
    let sb = slow_jobs().await;
    let refused = ProxyBuilder::for_sandbox(&sb)
        .toml(
            "[jobs]\npoll = false\n[[route]]\nname = \"identity\"\npath = \"/v2/accounts/{id}/identity\"\nttl = \"1h\"\npersonal_data = true",
        )
        .start()
        .await;
    refused.get("/v2/accounts/cp1/identity", &[]).await;
    refused.get("/v2/accounts/cp1/identity", &[]).await;
    assert_eq!(
        sb.sandbox.count("identity"),
        2,
        "personal data cached without consent"
    );

    let p = ProxyBuilder::for_sandbox(&sb)
        .toml(
            "[jobs]\npoll = false\n[[route]]\nname = \"identity\"\npath = \"/v2/accounts/{id}/identity\"\nttl = \"1h\"\ninvalidate_on_sync = false\npersonal_data = true\ncache_personal_data = true",
        )
        .start()
        .await;
    let path = "/v2/accounts/cp2/identity";
    assert_eq!(p.get(path, &[]).await.header("x-cache"), Some("MISS"));
    let hit = p.get(path, &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    let ttl = hit.header("cache-status").unwrap();
    assert!(
        ttl.contains("ttl=3599") || ttl.contains("ttl=3600"),
        "{ttl}"
    );
    let job = p.realtime("/v2/accounts/cp2/balance").await;
    finish_sync(&p, job.header("x-job-id").unwrap()).await;
    assert_eq!(p.get(path, &[]).await.header("x-cache"), Some("HIT"));
    assert_eq!(
        p.get("/v2/accounts/cp2/balance", &[])
            .await
            .header("x-cache"),
        Some("MISS")
    );
    assert_eq!(sb.sandbox.count("identity"), 3);
}

#[tokio::test]
async fn the_sdks_unversioned_paths_are_cached_through_https_proxy() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let addr = p.running.addr;
    // mono-node through HTTPS_PROXY: absolute-form targets naming Mono's host, its key sent.
    let send = |target: &'static str| async move {
        raw(
            addr,
            &format!("GET https://api.withmono.com{target} HTTP/1.1"),
            &[
                "Host: api.withmono.com",
                "mono-sec-key: whatever-the-app-had",
            ],
        )
        .await
    };
    let t = "/accounts/node1/transactions?paginate=true&";
    let first = send(t).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(
        first.head.to_lowercase().contains("x-cache: miss"),
        "{}",
        first.head
    );
    let second = send(t).await;
    assert_eq!(second.status, 200);
    assert!(
        second.head.to_lowercase().contains("x-cache: hit"),
        "{}",
        second.head
    );
    assert_eq!(second.body, first.body);
    assert_eq!(sb.sandbox.count("node_transactions"), 1);

    let d = "/accounts/node1";
    assert!(send(d).await.head.to_lowercase().contains("x-cache: miss"));
    assert!(send(d).await.head.to_lowercase().contains("x-cache: hit"));
    assert_eq!(sb.sandbox.count("node_details"), 1);
    // Their own entries: the v2 shapes differ.
    assert_eq!(
        p.get("/v2/accounts/node1", &[]).await.header("x-cache"),
        Some("MISS")
    );
}

#[tokio::test]
async fn no_cache_refetches_collapsed_and_stores_the_new_answer() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let path = "/v2/accounts/nc1/balance";
    assert_eq!(p.get(path, &[]).await.header("x-cache"), Some("MISS"));
    let fresh = p.get(path, &[("cache-control", "no-cache")]).await;
    assert_eq!(fresh.status, 200);
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    assert!(fresh
        .header("cache-status")
        .unwrap()
        .contains("fwd=request"));
    assert_eq!(sb.sandbox.count("balance"), 2);
    let pragma = p.get(path, &[("pragma", "no-cache")]).await;
    assert_eq!(pragma.header("x-cache"), Some("MISS"));
    assert_eq!(sb.sandbox.count("balance"), 3);
    // The refetched answer is what the next plain read gets.
    let hit = p.get(path, &[]).await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.body, pragma.body);

    // Concurrent refetches make one call.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = p.url(path);
            tokio::spawn(async move { get(&url, &[("cache-control", "no-cache")]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(sb.sandbox.count("balance"), 4);
}

#[tokio::test]
async fn no_store_passes_through_and_stores_nothing() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let path = "/v2/accounts/ns1/balance";
    for _ in 0..2 {
        let r = p.get(path, &[("cache-control", "no-store")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-cache"), Some("MISS"));
        assert!(r.header("cache-status").unwrap().contains("no-store"));
    }
    assert_eq!(sb.sandbox.count("balance"), 2);
    assert_eq!(p.get(path, &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(sb.sandbox.count("balance"), 3);
}

#[tokio::test]
async fn max_age_bounds_the_age_of_a_cached_answer() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let path = "/v2/accounts/ma1/transactions";
    assert_eq!(p.get(path, &[]).await.header("x-cache"), Some("MISS"));
    let young = p.get(path, &[("cache-control", "max-age=600")]).await;
    assert_eq!(young.header("x-cache"), Some("HIT"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let old = p.get(path, &[("cache-control", "max-age=0")]).await;
    assert_eq!(old.header("x-cache"), Some("MISS"));
    assert_eq!(sb.sandbox.count("transactions"), 2);
}

#[tokio::test]
async fn only_if_cached_answers_504_when_nothing_is_stored() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let path = "/v2/accounts/oc1/balance";
    let none = p.get(path, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(none.status, 504, "{}", none.text());
    assert_envelope(&none.json());
    assert_eq!(sb.sandbox.count("balance"), 0);
    p.get(path, &[]).await;
    let stored = p.get(path, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.header("x-cache"), Some("HIT"));
    assert_eq!(sb.sandbox.count("balance"), 1);
}

#[tokio::test]
async fn the_bvn_guard_refuses_what_mono_would_fail_and_bill() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let url = p.url("/v2/lookup/bvn/initiate");
    let json_ct = [("content-type", "application/json")];
    for bad in [
        json!({"bvn": "1234567890"}),
        json!({"bvn": "123456789012"}),
        json!({"bvn": "1234567890x"}),
        json!({"bvn": 12345678901_u64}),
        json!({"scope": "identity"}),
    ] {
        let r = send(Method::POST, &url, &json_ct, bad.to_string()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        let body = r.json();
        assert_envelope(&body);
        assert!(body["message"].as_str().unwrap().contains("bvn"), "{body}");
    }
    assert_eq!(sb.sandbox.count("bvn_initiate"), 0);
    let ok = send(
        Method::POST,
        &url,
        &json_ct,
        json!({"bvn": "22212345678", "scope": "identity"}).to_string(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(sb.sandbox.count("bvn_initiate"), 1);
}

#[tokio::test]
async fn the_realtime_leaders_answer_carries_x_has_new_data() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let leader = p.realtime("/v2/accounts/hnd1/transactions").await;
    assert_eq!(leader.status, 200);
    assert_eq!(leader.header("x-cache"), Some("MISS"));
    assert!(
        matches!(leader.header("x-has-new-data"), Some("true" | "false")),
        "{:?}",
        leader.headers
    );
}

#[tokio::test]
async fn monos_no_store_and_private_answers_are_not_stored() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    for (value, account) in [("no-store", "mns1"), ("private, max-age=60", "mns2")] {
        sb.sandbox.set_fault_spec(Some(
            Fault::headers(&[("cache-control", value)]).route("balance"),
        ));
        let path = format!("/v2/accounts/{account}/balance");
        for _ in 0..2 {
            let r = p.get(&path, &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("x-cache"), Some("MISS"), "{value}");
        }
    }
    assert_eq!(sb.sandbox.count("balance"), 4);
    sb.sandbox.set_fault_spec(None);
    let metrics = p.metrics().await;
    assert!(
        metric(
            &metrics,
            "mono_proxy_responses_not_stored_total{class=\"cached\",reason=\"no_store\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "mono_proxy_responses_not_stored_total{class=\"cached\",reason=\"private\"}"
        ) >= 2.0,
        "{metrics}"
    );
}

/// Mono's 429 with `Retry-After` on `route` of the sandbox, until cleared.
fn mono_429(route: &str, retry_after: &str) -> mono_proxy::sandbox::FaultSpec {
    let body = r#"{"status":"failed","message":"Too many requests","data":null}"#;
    Fault::Reply(
        CannedReply::new(429, body)
            .header("content-type", "application/json")
            .header("retry-after", retry_after),
    )
    .route(route)
}

#[tokio::test]
async fn a_429_on_any_route_holds_that_account_back_locally() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    sb.sandbox.set_fault_spec(Some(mono_429("identity", "30")));
    let first = p.get("/v2/accounts/cd1/identity", &[]).await;
    assert_eq!(first.status, 429);
    assert_eq!(sb.sandbox.count("faulted"), 1);
    sb.sandbox.set_fault_spec(None);
    // Mono would answer now, but the proxy holds the account back: nothing goes upstream.
    let held = p.get("/v2/accounts/cd1/identity", &[]).await;
    assert_eq!(held.status, 429, "{}", held.text());
    assert_envelope(&held.json());
    let wait: u64 = held.header("retry-after").unwrap().parse().unwrap();
    assert!((28..=30).contains(&wait), "{wait}");
    assert_eq!(sb.sandbox.count("identity"), 0);
    // Other accounts and routes are not held back.
    assert_eq!(p.get("/v2/accounts/cd2/identity", &[]).await.status, 200);
    assert_eq!(p.get("/v2/accounts/cd1/income", &[]).await.status, 200);

    // A cached route: the miss that met the 429 starts the cooldown for the next misses.
    sb.sandbox
        .set_fault_spec(Some(mono_429("node_transactions", "20")));
    assert_eq!(p.get("/accounts/cd3/transactions", &[]).await.status, 429);
    sb.sandbox.set_fault_spec(None);
    let held = p.get("/accounts/cd3/transactions", &[]).await;
    assert_eq!(held.status, 429);
    assert_eq!(sb.sandbox.count("node_transactions"), 0);
}

#[tokio::test]
async fn a_cooldown_is_shared_by_the_replicas_of_a_fleet() {
    let r = TestRedis::start();
    let sb = sandbox(sandbox_config()).await;
    let store = format!(
        "[store]\nbackend = \"redis\"\nredis_url = \"{}\"\nprefix = \"cd-{}\"\ntimeout = \"1s\"",
        r.url,
        uuid::Uuid::new_v4().simple()
    );
    let a = ProxyBuilder::for_sandbox(&sb).toml(&store).start().await;
    let b = ProxyBuilder::for_sandbox(&sb).toml(&store).start().await;
    sb.sandbox.set_fault_spec(Some(mono_429("income", "60")));
    assert_eq!(a.get("/v2/accounts/fl1/income", &[]).await.status, 429);
    sb.sandbox.set_fault_spec(None);
    let held = eventually(Duration::from_secs(5), || async {
        b.get("/v2/accounts/fl1/income", &[]).await.status == 429
    })
    .await;
    assert!(held, "replica B called Mono during A's cooldown");
    assert_eq!(sb.sandbox.count("income"), 0);
    assert_eq!(b.get("/v2/accounts/fl2/income", &[]).await.status, 200);
}

#[tokio::test]
async fn during_a_cooldown_a_stale_copy_beats_a_429() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb)
        .toml("[cache]\nttl = \"1s\"\nmax_stale = \"1h\"")
        .start()
        .await;
    let path = "/v2/accounts/st1/balance";
    assert_eq!(p.get(path, &[]).await.header("x-cache"), Some("MISS"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sb.sandbox.set_fault_spec(Some(mono_429("balance", "30")));
    let met = p.get(path, &[]).await;
    assert_eq!(met.status, 200, "{}", met.text());
    assert_eq!(met.header("x-cache"), Some("STALE"));
    sb.sandbox.set_fault_spec(None);
    let held = p.get(path, &[]).await;
    assert_eq!(held.header("x-cache"), Some("STALE"));
    assert_eq!(sb.sandbox.count("balance"), 1);
    // An account with nothing stored gets the 429 itself.
    sb.sandbox.set_fault_spec(Some(mono_429("balance", "30")));
    assert_eq!(p.get("/v2/accounts/st2/balance", &[]).await.status, 429);
}
