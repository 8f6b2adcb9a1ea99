//! Many apps, one proxy: every request is attributed to the client that made it, in metrics and
//! in the access log, with labels bounded by the configured names.

mod support;

use serde_json::json;
use support::receiver::Receiver;
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

/// Two Mono apps besides the default one, each with its own key, webhook secret and target.
async fn two_apps(
    sb: &mono_proxy::sandbox::RunningSandbox,
    a: &Receiver,
    b: &Receiver,
    d: &Receiver,
) -> TestProxy {
    let toml = format!(
        "[jobs]\npoll = false\n[webhook]\nforward_to = [\"{}\"]\n\
         [[clients]]\nname = \"alpha\"\ntoken_env = \"TOKEN_ALPHA\"\nsecret_key_env = \"KEY_ALPHA\"\n\
         webhook_secret_env = \"HOOK_ALPHA\"\nforward_to = [\"{}\"]\n\
         [[clients]]\nname = \"beta\"\ntoken_env = \"TOKEN_BETA\"\nsecret_key_env = \"KEY_BETA\"\n\
         webhook_secret_env = \"HOOK_BETA\"\nforward_to = [\"{}\"]",
        d.url(),
        a.url(),
        b.url()
    );
    ProxyBuilder::for_sandbox(sb)
        .toml(&toml)
        .env("TOKEN_ALPHA", "tok-alpha")
        .env("TOKEN_BETA", "tok-beta")
        .env("KEY_ALPHA", "test_sk_alpha")
        .env("KEY_BETA", "test_sk_beta")
        .env("HOOK_ALPHA", "hook-alpha-secret")
        .env("HOOK_BETA", "hook-beta-secret")
        .start()
        .await
}

async fn hook(p: &TestProxy, secret: &str, body: &serde_json::Value) -> Reply {
    send(
        http::Method::POST,
        &p.url("/webhooks/mono"),
        &[
            ("mono-webhook-secret", secret),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn each_apps_webhooks_touch_only_its_records_and_reach_only_its_targets() {
    let sb = sandbox(mono_proxy::sandbox::SandboxConfig {
        job_delay: std::time::Duration::from_secs(60),
        extra_keys: vec!["test_sk_alpha".into(), "test_sk_beta".into()],
        ..sandbox_config()
    })
    .await;
    let (ra, rb, rd) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let p = two_apps(&sb, &ra, &rb, &rd).await;
    // Each Mono app has its own accounts (and so its own jobs).
    let (pa, pb) = ("/v2/accounts/app-a1/balance", "/v2/accounts/app-b1/balance");
    let alpha = [("x-mono-proxy-token", "tok-alpha"), ("x-realtime", "true")];
    let beta = [("x-mono-proxy-token", "tok-beta"), ("x-realtime", "true")];
    let ja = p.get(pa, &alpha).await;
    let jb = p.get(pb, &beta).await;
    assert_eq!(ja.status, 200, "{}", ja.text());
    assert_eq!(jb.status, 200, "{}", jb.text());
    let (ja, jb) = (
        ja.header("x-job-id").unwrap(),
        jb.header("x-job-id").unwrap(),
    );
    assert_ne!(ja, jb);

    // Alpha's app names beta's job: not alpha's to change. Relayed to alpha's target only.
    let finish = |job: &str| json!({"event": "mono.accounts.jobs.update", "data": {"id": job, "status": "finished"}});
    assert_eq!(hook(&p, "hook-alpha-secret", &finish(jb)).await.status, 200);
    let beta_now = p.get(pb, &beta).await;
    assert_eq!(beta_now.header("x-job-status"), Some("processing"));

    let plain_beta = p.get(pb, &[("x-mono-proxy-token", "tok-beta")]).await;
    assert_eq!(plain_beta.header("x-cache"), Some("HIT"));

    // Its own job: finished, and alpha's cached balance is dropped.
    assert_eq!(hook(&p, "hook-alpha-secret", &finish(ja)).await.status, 200);
    let plain_alpha = p.get(pa, &[("x-mono-proxy-token", "tok-alpha")]).await;
    assert_eq!(plain_alpha.header("x-cache"), Some("MISS"));
    let alpha_now = p.get(pa, &alpha).await;
    assert_eq!(alpha_now.header("x-job-status"), Some("finished"));
    // An account event from alpha's app for beta's account changes nothing of beta's.
    let updated = json!({"event": "mono.events.account_updated",
        "data": {"account": {"_id": "app-b1"}, "meta": {"sync_status": "SUCCESSFUL"}}});
    assert_eq!(hook(&p, "hook-alpha-secret", &updated).await.status, 200);
    let still = p.get(pb, &[("x-mono-proxy-token", "tok-beta")]).await;
    assert_eq!(still.header("x-cache"), Some("HIT"));
    assert_eq!(
        p.get(pb, &beta).await.header("x-job-status"),
        Some("processing")
    );
    assert_eq!((ra.count(), rb.count(), rd.count()), (3, 0, 0));

    // Beta's app reaches beta's target; an unknown secret is refused.
    assert_eq!(hook(&p, "hook-beta-secret", &finish(jb)).await.status, 200);
    assert_eq!((ra.count(), rb.count(), rd.count()), (3, 1, 0));
    assert_eq!(hook(&p, "someone-elses", &finish(jb)).await.status, 401);
    // The default app's secret still works, for the default targets.
    let default = hook(&p, WEBHOOK_SECRET, &json!({"event": "mono.events.other"})).await;
    assert_eq!(default.status, 200);
    assert_eq!((ra.count(), rb.count(), rd.count()), (3, 1, 1));
}

#[tokio::test]
async fn an_apps_webhook_settings_need_its_own_key() {
    let sb = sandbox(sandbox_config()).await;
    let text = ProxyBuilder::for_sandbox(&sb)
        .toml("[[clients]]\nname = \"gamma\"\ntoken_env = \"TOKEN_G\"\nwebhook_secret_env = \"HOOK_G\"")
        .env("TOKEN_G", "t")
        .env("HOOK_G", "h")
        .text();
    let env = [("MONO_SEC_KEY", KEY), ("TOKEN_G", "t"), ("HOOK_G", "h")];
    let e = mono_proxy::config::Config::parse_runnable(&text, &env).unwrap_err();
    assert!(e.to_string().contains("secret_key_env"), "{e}");
}

#[tokio::test]
async fn admin_stats_show_each_client_its_limits_and_the_hit_ratio() {
    let sb = sandbox(sandbox_config()).await;
    let p = ProxyBuilder::for_sandbox(&sb)
        .toml(
            "[realtime]\ncost_per_call = 0.5\n\
             [[clients]]\nname = \"billing\"\ntoken_env = \"TOKEN_BILLING\"\n\
             rate = 2\nburst = 2\nquota = \"50/month\"\n\
             [[clients]]\nname = \"ledger\"\ntoken_env = \"TOKEN_LEDGER\"",
        )
        .env("TOKEN_BILLING", "tok-billing-1")
        .env("TOKEN_LEDGER", "tok-ledger-1")
        .start()
        .await;
    let path = "/v2/accounts/stats1/balance";
    let billing = [("x-mono-proxy-token", "tok-billing-1")];
    let ledger = [("x-mono-proxy-token", "tok-ledger-1")];
    for _ in 0..4 {
        p.get(path, &ledger).await;
    }
    // Billing's third call at once is over its burst of 2.
    let statuses = [
        p.get(path, &billing).await.status,
        p.get(path, &billing).await.status,
        p.get(path, &billing).await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 429]);
    let rt = [
        ("x-mono-proxy-token", "tok-ledger-1"),
        ("x-realtime", "true"),
    ];
    assert_eq!(p.get("/v2/accounts/stats2/balance", &rt).await.status, 200);
    assert_eq!(p.get("/v2/accounts/stats2/balance", &rt).await.status, 200);

    let stats = get(&p.admin("/stats"), &[]).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.header("content-type"), Some("application/json"));
    let s = stats.json();
    assert_eq!(s["requests"]["total"], 9.0, "{s:#}");
    assert_eq!(s["requests"]["by_client"]["ledger"], 6.0, "{s:#}");
    assert_eq!(s["requests"]["by_client"]["billing"], 3.0, "{s:#}");
    assert_eq!(s["requests"]["by_route"]["balance"], 9.0, "{s:#}");
    // Cached reads: 1 miss, then 3 + 2 hits (the 429 never reached the cache).
    assert_eq!(s["cache"]["reads"], 6.0, "{s:#}");
    assert_eq!(s["cache"]["hits"], 5.0, "{s:#}");
    let ratio = s["cache"]["hit_ratio"].as_f64().unwrap();
    assert!((ratio - 5.0 / 6.0).abs() < 1e-9, "{s:#}");
    assert_eq!(s["realtime"]["calls"]["forwarded"], 1.0, "{s:#}");
    assert_eq!(s["realtime"]["calls"]["collapsed"], 1.0, "{s:#}");
    assert_eq!(s["realtime"]["saved_cost"], 0.5, "{s:#}");
    let b = &s["clients"]["billing"];
    assert_eq!(b["requests"], 3.0, "{s:#}");
    assert_eq!(b["limited"]["rate"], 1.0, "{s:#}");
    assert_eq!(b["limits"]["rate"], 2.0, "{s:#}");
    assert_eq!(b["limits"]["quota"], "50/month", "{s:#}");
    assert_eq!(
        s["clients"]["ledger"]["limits"]["rate"],
        serde_json::Value::Null
    );
    assert_eq!(s["clients"]["anonymous"]["requests"], 0.0, "{s:#}");
    assert!(s["upstream"]["p50_ms"].as_f64().unwrap() > 0.0, "{s:#}");
    assert_eq!(s["store"]["backend"], "memory");
    assert!(!stats.text().contains("tok-"), "a token reached /stats");
}
