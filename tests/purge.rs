//! `POST /purge` on the admin listener: soft purges answered STALE while one refresh runs, hard
//! purges, route and whole-cache scopes, realtime windows reset only when asked, and the same
//! purge on every replica of a fleet sharing a real redis-server.

mod support;

use std::time::Duration;

use http::Method;
use mono_proxy::sandbox::Fault;
use serde_json::{json, Value};
use support::*;

/// `POST /purge` with `order`.
async fn purge(p: &TestProxy, order: Value) -> Reply {
    send(
        Method::POST,
        &p.admin("/purge"),
        &[("content-type", "application/json")],
        order.to_string(),
    )
    .await
}

fn cache_of(r: &Reply) -> &str {
    r.header("x-cache").unwrap_or_default()
}

/// Whether the answer came from the shared tier (another replica's fetch).
fn from_shared_tier(r: &Reply) -> bool {
    r.header("cache-status")
        .unwrap_or_default()
        .contains("detail=shared")
}

#[tokio::test]
async fn a_soft_purge_answers_stale_while_one_refresh_runs_then_hits_again() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let path = "/v2/accounts/soft1/balance";
    let first = p.get(path, &[]).await;
    assert_eq!(cache_of(&first), "MISS");
    assert_eq!(cache_of(&p.get(path, &[]).await), "HIT");
    // The refresh will take a while: every read meanwhile gets the purged body at once.
    sb.sandbox.set_fault_spec(Some(
        Fault::Latency(Duration::from_millis(1500)).route("balance"),
    ));
    let answer = purge(&p, json!({"account": "soft1"})).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let a = answer.json();
    assert_eq!(a["mode"], "soft");
    assert_eq!(a["purged_here"], 1);
    assert_eq!(a["window_reset"], false);
    assert!(a["note"].as_str().unwrap().contains("window"));
    let view = get(&p.admin("/accounts/soft1"), &[]).await.json();
    assert_eq!(view["tenants"][0]["cached"][0]["state"], "purged", "{view}");
    for _ in 0..5 {
        let r = p.get(path, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(cache_of(&r), "STALE", "{:?}", r.headers);
        assert!(r.header("cache-status").unwrap().contains("fwd=stale"));
        assert_eq!(r.body, first.body);
        assert_eq!(r.header("x-has-new-data"), Some("false"));
    }
    // One refresh for all of them; once it lands, hits again.
    let refreshed = eventually(Duration::from_secs(10), || async {
        cache_of(&p.get(path, &[]).await) == "HIT"
    })
    .await;
    assert!(refreshed, "the refresh never replaced the purged body");
    sb.sandbox.set_fault_spec(None);
    assert_eq!(sb.sandbox.count("balance"), 2);
}

#[tokio::test]
async fn a_hard_purge_drops_bodies_by_account_route_or_all() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let paths = [
        "/v2/accounts/hard1/balance",
        "/v2/accounts/hard1/transactions",
        "/v2/accounts/hard2/balance",
    ];
    for path in paths {
        assert_eq!(cache_of(&p.get(path, &[]).await), "MISS");
    }
    let r = purge(&p, json!({"route": "transactions", "hard": true})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["mode"].clone(), r.json()["purged_here"].clone()),
        (json!("hard"), json!(1))
    );
    assert_eq!(cache_of(&p.get(paths[0], &[]).await), "HIT");
    assert_eq!(cache_of(&p.get(paths[1], &[]).await), "MISS");
    let r = purge(&p, json!({"account": "hard2", "hard": true})).await;
    assert_eq!(r.json()["purged_here"], 1);
    assert_eq!(cache_of(&p.get(paths[0], &[]).await), "HIT");
    assert_eq!(cache_of(&p.get(paths[2], &[]).await), "MISS");
    let r = purge(&p, json!({"all": true, "hard": true})).await;
    assert_eq!(r.json()["purged_here"], 3);
    for path in paths {
        assert_eq!(cache_of(&p.get(path, &[]).await), "MISS", "{path}");
    }
    assert_eq!(sb.sandbox.count("balance"), 5);
}

#[tokio::test]
async fn a_purge_order_that_is_not_one_is_refused_and_purges_nothing() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb).start().await;
    let path = "/v2/accounts/keep1/balance";
    p.get(path, &[]).await;
    for bad in [
        json!({}),
        json!({"all": false}),
        json!({"account": "keep1", "route": "balance"}),
        json!({"route": "no_such_route"}),
        json!({"all": true, "window": true}),
        json!({"account": "not an id!"}),
        json!({"acount": "keep1"}),
        json!({"account": "keep1", "hard": "yes"}),
        json!(["keep1"]),
    ] {
        let r = purge(&p, bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{bad}");
    }
    let r = send(Method::POST, &p.admin("/purge"), &[], "not json").await;
    assert_eq!(r.status, 400);
    let r = get(&p.admin("/purge"), &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(cache_of(&p.get(path, &[]).await), "HIT");
}

#[tokio::test]
async fn a_realtime_window_is_reset_only_when_asked() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll = false")
        .start()
        .await;
    let path = "/v2/accounts/win1/balance";
    let calls =
        || sb.sandbox.count("balance_realtime") + sb.sandbox.count("balance_realtime_repeat");
    assert_eq!(p.realtime(path).await.status, 200);
    assert_eq!(calls(), 1);
    let kept = purge(&p, json!({"account": "win1", "hard": true})).await;
    assert_eq!(kept.json()["window_reset"], false);
    assert_eq!(p.realtime(path).await.status, 200);
    assert_eq!(
        calls(),
        1,
        "a purge without \"window\" must not cost a billable call"
    );
    let view = get(&p.admin("/accounts/win1"), &[]).await.json();
    assert_eq!(
        view["tenants"][0]["realtime"]["balance"]["in_window"], true,
        "{view}"
    );
    let reset = purge(&p, json!({"account": "win1", "window": true})).await;
    assert_eq!(reset.status, 200, "{}", reset.text());
    let r = reset.json();
    assert_eq!(r["window_reset"], true);
    assert_eq!(r["windows_forgotten"], 1);
    assert!(r["note"].as_str().unwrap().contains("billable"));
    assert_eq!(p.realtime(path).await.status, 200);
    assert_eq!(calls(), 2);
}

/// Two replicas on one real redis-server with the shared tier.
async fn fleet(sb: &mono_proxy::sandbox::RunningSandbox, url: &str) -> (TestProxy, TestProxy) {
    let prefix = format!("purge-{}", uuid::Uuid::new_v4().simple());
    let toml = format!(
        "[store]\nbackend = \"redis\"\nredis_url = \"{url}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n[cache]\nshared = true\n[jobs]\npoll = false"
    );
    let a = ProxyBuilder::for_sandbox(sb).toml(&toml).start().await;
    let b = ProxyBuilder::for_sandbox(sb).toml(&toml).start().await;
    (a, b)
}

#[tokio::test]
async fn a_purge_reaches_every_replica_and_the_shared_tier() {
    let r = TestRedis::start();
    let sb = sandbox(sandbox_config()).await;
    let (a, b) = fleet(&sb, &r.url).await;
    let bal = "/v2/accounts/fleet1/balance";
    let txn = "/v2/accounts/fleet2/transactions";
    assert_eq!(cache_of(&a.get(bal, &[]).await), "MISS");
    assert_eq!(cache_of(&a.get(txn, &[]).await), "MISS");
    assert!(from_shared_tier(&b.get(bal, &[]).await));
    assert!(from_shared_tier(&b.get(txn, &[]).await));
    assert_eq!(sb.sandbox.count("total"), 2);

    // A hard purge of everything on A: B drops its copies, and nobody adopts what Redis held.
    let answer = purge(&a, json!({"all": true, "hard": true})).await;
    assert_eq!(answer.json()["fleet"], true, "{}", answer.text());
    let dropped = eventually(Duration::from_secs(5), || async {
        cache_of(&b.get(bal, &[]).await) != "HIT"
    })
    .await;
    assert!(
        dropped,
        "B kept serving its copy after the fleet-wide purge"
    );
    assert_eq!(sb.sandbox.count("balance"), 2, "B refetched once");
    // B replaced the shared body: A adopts the new one instead of fetching again.
    assert!(from_shared_tier(&a.get(bal, &[]).await));
    assert_eq!(sb.sandbox.count("balance"), 2);

    // A soft purge of one account on B: A answers STALE until its one refresh lands.
    sb.sandbox.set_fault_spec(Some(
        Fault::Latency(Duration::from_millis(1500)).route("transactions"),
    ));
    assert_eq!(cache_of(&a.get(txn, &[]).await), "MISS");
    let before = sb.sandbox.count("transactions");
    let answer = purge(&b, json!({"account": "fleet2"})).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let stale = eventually(Duration::from_secs(5), || async {
        cache_of(&a.get(txn, &[]).await) == "STALE"
    })
    .await;
    assert!(stale, "A never saw B's soft purge");
    let refreshed = eventually(Duration::from_secs(10), || async {
        cache_of(&a.get(txn, &[]).await) == "HIT"
    })
    .await;
    assert!(refreshed);
    sb.sandbox.set_fault_spec(None);
    assert_eq!(sb.sandbox.count("transactions"), before + 1);

    // A window reset on B holds on A too: A's own copy of the record is forgotten.
    let calls =
        || sb.sandbox.count("balance_realtime") + sb.sandbox.count("balance_realtime_repeat");
    let rt = "/v2/accounts/fleet3/balance";
    assert_eq!(a.realtime(rt).await.status, 200);
    assert_eq!(b.realtime(rt).await.status, 200);
    assert_eq!(a.realtime(rt).await.status, 200);
    assert_eq!(calls(), 1);
    let reset = purge(&b, json!({"account": "fleet3", "window": true})).await;
    assert_eq!(reset.json()["window_reset"], true, "{}", reset.text());
    let forgotten = eventually(Duration::from_secs(5), || async {
        let view = get(&a.admin("/accounts/fleet3"), &[]).await.json();
        view["tenants"][0]["realtime"]["balance"].is_null()
    })
    .await;
    assert!(forgotten, "A still holds the window B reset");
    assert_eq!(a.realtime(rt).await.status, 200);
    assert_eq!(calls(), 2);
}
