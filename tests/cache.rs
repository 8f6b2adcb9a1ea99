//! Cached reads (spec §4) over real sockets with the sandbox as upstream.

mod support;

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
