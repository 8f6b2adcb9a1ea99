//! Many apps, one proxy: every request is attributed to the client that made it, in metrics and
//! in the access log, with labels bounded by the configured names.

mod support;

use support::*;

const CLIENTS: &str = "[[clients]]\nname = \"billing\"\ntoken_env = \"TOKEN_BILLING\"\n\
    [[clients]]\nname = \"ledger\"\ntoken_env = \"TOKEN_LEDGER\"";

#[tokio::test]
async fn requests_are_attributed_to_their_client_and_labels_stay_bounded() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb)
        .toml(CLIENTS)
        .env("TOKEN_BILLING", "tok-billing-1")
        .env("TOKEN_LEDGER", "tok-ledger-1")
        .start()
        .await;
    let path = "/v2/accounts/att1/balance";
    for _ in 0..3 {
        let r = p
            .get(path, &[("x-mono-proxy-token", "tok-billing-1")])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = p
        .get(path, &[("authorization", "Bearer tok-ledger-1")])
        .await;
    assert_eq!(r.status, 200);
    // 1,000 distinct bad tokens: refused, and all under one label.
    for i in 0..1000 {
        let token = format!("bad-token-{i}");
        let r = p.get(path, &[("x-mono-proxy-token", token.as_str())]).await;
        assert_eq!(r.status, 401);
    }
    let metrics = p.metrics().await;
    let requests: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("mono_proxy_requests_total{"))
        .collect();
    let total = |client: &str| -> f64 {
        requests
            .iter()
            .filter(|l| l.contains(&format!("client=\"{client}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(total("billing"), 3.0, "{metrics}");
    assert_eq!(total("ledger"), 1.0, "{metrics}");
    assert_eq!(total("anonymous"), 1000.0, "{metrics}");
    assert!(requests.len() <= 6, "labels grew: {requests:#?}");
    assert!(
        !metrics.contains("bad-token"),
        "a token reached the metrics"
    );
}
