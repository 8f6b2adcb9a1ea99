//! Full reload of the real binary (`POST /reload`, SIGHUP): under traffic no request fails, the
//! cache and connections stay, new TTLs, clients and the log filter apply to the next request;
//! a bad file is refused whole; a changed listener is reported as needing a restart.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use mono_proxy::sandbox::RunningSandbox;
use serde_json::Value;
use support::binary::{Binary, KeepAlive, WAIT};
use support::*;

/// The config file the binary was started with.
fn config_file(proxy: &Binary) -> std::path::PathBuf {
    proxy.dir.path().join("proxy.toml")
}

/// Rewrites the config file: the binary's listen lines, then `toml`.
fn rewrite(proxy: &Binary, toml: &str) {
    std::fs::write(
        config_file(proxy),
        format!(
            "listen = \"{}\"\nadmin_listen = \"{}\"\n{toml}\n",
            proxy.addr, proxy.admin
        ),
    )
    .expect("rewrite config");
}

fn upstream(sb: &RunningSandbox) -> String {
    format!("[upstream]\nbase_url = \"{}\"", sb.base_url(false))
}

async fn post_reload(proxy: &Binary) -> Reply {
    send(Method::POST, &proxy.admin_url("/reload"), &[], "").await
}

async fn effective(proxy: &Binary) -> Value {
    get(&proxy.admin_url("/config"), &[]).await.json()
}

#[tokio::test]
async fn a_reload_under_traffic_fails_no_request_keeps_the_cache_and_applies_the_new_ttl() {
    let sb = sandbox(sandbox_config()).await;
    let base = upstream(&sb);
    let proxy = Binary::start(
        &format!("{base}\n[cache]\nttl = \"300s\""),
        &[("MONO_SEC_KEY", KEY)],
    )
    .await;
    let mut conn = KeepAlive::open(proxy.addr).await;
    let warm = conn.get("/v2/accounts/rl0/balance").await.unwrap();
    assert_eq!(warm.header("x-cache"), Some("MISS"));

    // Four keep-alive clients read 20 accounts until told to stop (bounded by count too).
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = tokio::task::JoinSet::new();
    for t in 0..4 {
        let (stop, addr) = (Arc::clone(&stop), proxy.addr);
        traffic.spawn(async move {
            let mut conn = KeepAlive::open(addr).await;
            let mut statuses = Vec::new();
            for i in 0..2_000 {
                if stop.load(Ordering::Relaxed) && i > 10 {
                    break;
                }
                let path = format!("/v2/accounts/rl{}/balance", (t * 5 + i) % 20);
                statuses.push(conn.get(&path).await.map(|r| r.status.as_u16()));
            }
            statuses
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    rewrite(&proxy, &format!("{base}\n[cache]\nttl = \"7s\""));
    let reloaded = post_reload(&proxy).await;
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    let r = reloaded.json();
    assert_eq!(r["reloaded"], true);
    assert!(
        r["changed"].as_array().unwrap().contains(&"cache".into()),
        "{r}"
    );
    assert_eq!(r["restart_required"], serde_json::json!([]), "{r}");
    // And once more by signal, while the traffic goes on.
    rewrite(&proxy, &format!("{base}\n[cache]\nttl = \"9s\""));
    proxy.signal("HUP");
    let applied = eventually(WAIT, || async {
        effective(&proxy).await["cache"]["ttl"] == "9s"
    })
    .await;
    assert!(applied, "SIGHUP did not reload:\n{}", proxy.stderr());
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    while let Some(statuses) = traffic.join_next().await {
        for s in statuses.expect("traffic task") {
            assert_eq!(s, Ok(200), "a request failed during the reload");
            total += 1;
        }
    }
    assert!(total > 40, "too little traffic to mean anything: {total}");

    // The connection opened before both reloads still serves, the cache stayed, and a new
    // fill takes the new TTL.
    let kept = conn
        .get("/v2/accounts/rl0/balance")
        .await
        .expect("same connection");
    assert_eq!(kept.header("x-cache"), Some("HIT"), "the cache was dropped");
    let fresh = conn.get("/v2/accounts/rl-new/balance").await.unwrap();
    assert_eq!(fresh.header("x-cache"), Some("MISS"));
    let status = fresh.header("cache-status").unwrap();
    assert!(status.contains("ttl=9"), "{status}");
}

#[tokio::test]
async fn a_bad_file_is_refused_whole_and_a_new_listener_needs_a_restart() {
    let sb = sandbox(sandbox_config()).await;
    let base = upstream(&sb);
    let proxy = Binary::start(
        &format!("{base}\n[log]\nformat = \"json\"\nfilter = \"info\""),
        &[("MONO_SEC_KEY", KEY)],
    )
    .await;
    let before = effective(&proxy).await;
    // Two problems at once, and a change that would be valid on its own.
    rewrite(
        &proxy,
        &format!("{base}\n[cache]\nttl = \"1s\"\ntttl = 3\n[realtime]\nwindow = \"soon\""),
    );
    let refused = post_reload(&proxy).await;
    assert_eq!(refused.status, 422, "{}", refused.text());
    let r = refused.json();
    assert_eq!(r["reloaded"], false);
    let problems = r["problems"].to_string();
    assert!(
        problems.contains("tttl") && problems.contains("window"),
        "{r}"
    );
    assert_eq!(
        effective(&proxy).await,
        before,
        "a refused reload changed something"
    );
    proxy.signal("HUP");
    let logged = eventually(WAIT, || async {
        proxy.stderr().contains("config reload refused")
    })
    .await;
    assert!(logged, "{}", proxy.stderr());
    assert_eq!(effective(&proxy).await, before);
    assert_eq!(
        proxy_get(&proxy, "/v2/accounts/bad1/balance").await,
        200,
        "the old config must keep serving"
    );

    // A new listener address is reported and not applied; the log filter is applied.
    let moved = free_addr();
    std::fs::write(
        config_file(&proxy),
        format!(
            "listen = \"{moved}\"\nadmin_listen = \"{}\"\n{base}\n[log]\nformat = \"json\"\nfilter = \"warn,mono_proxy=debug\"\n",
            proxy.admin
        ),
    )
    .unwrap();
    let r = post_reload(&proxy).await.json();
    assert_eq!(r["reloaded"], true, "{r}");
    assert_eq!(r["restart_required"], serde_json::json!(["listen"]), "{r}");
    assert_eq!(r["log_filter_applied"], true, "{r}");
    assert_eq!(effective(&proxy).await["listen"], proxy.addr.to_string());
    let filter = get(&proxy.admin_url("/log"), &[]).await.json();
    assert_eq!(filter["filter"], "warn,mono_proxy=debug");
    assert_eq!(proxy_get(&proxy, "/v2/accounts/bad1/balance").await, 200);
}

#[tokio::test]
async fn clients_and_their_limits_apply_to_the_next_request_after_a_reload() {
    let sb = sandbox(sandbox_config()).await;
    let base = upstream(&sb);
    let proxy = Binary::start(&base, &[("MONO_SEC_KEY", KEY)]).await;
    assert_eq!(proxy_get(&proxy, "/v2/accounts/cl1/balance").await, 200);
    let token_file = proxy.dir.path().join("ledger.token");
    std::fs::write(&token_file, "ledger-token-0123456789").unwrap();
    rewrite(
        &proxy,
        &format!(
            "{base}\n[[clients]]\nname = \"ledger\"\ntoken_file = \"{}\"\nrate = 1\nburst = 2",
            token_file.display()
        ),
    );
    let reply = post_reload(&proxy).await;
    let r = reply.json();
    assert_eq!(reply.status, 200, "{r}");
    assert!(
        r["changed"].as_array().unwrap().contains(&"clients".into()),
        "{r}"
    );
    assert_eq!(proxy_get(&proxy, "/v2/accounts/cl1/balance").await, 401);
    let url = proxy.url("/v2/accounts/cl1/balance");
    let auth = [("x-mono-proxy-token", "ledger-token-0123456789")];
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&url, &auth).await.status.as_u16());
    }
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "the new rate limit did not apply: {statuses:?}"
    );
}

async fn proxy_get(proxy: &Binary, path: &str) -> u16 {
    get(&proxy.url(path), &[]).await.status.as_u16()
}
