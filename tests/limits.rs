//! Per-client limits (`[[clients]]` `rate`/`burst`, `max_concurrent_upstream`, `quota`): over a
//! limit a client gets 429 in Mono's envelope with `Retry-After` and the RateLimit headers, and
//! nothing reaches Mono; other clients are untouched; Redis makes the limits fleet-wide.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const TOKEN: &str = "x-mono-proxy-token";

/// Two clients on the default key: `limited` with `limits` (TOML lines), `calm` with none.
fn clients(limits: &str) -> String {
    format!(
        "[[clients]]\nname = \"limited\"\ntoken_env = \"TOKEN_LIMITED\"\n{limits}\n\
         [[clients]]\nname = \"calm\"\ntoken_env = \"TOKEN_CALM\""
    )
}

fn builder(sb: &mono_proxy::sandbox::RunningSandbox, toml: &str) -> ProxyBuilder {
    ProxyBuilder::for_sandbox(sb)
        .toml(toml)
        .env("TOKEN_LIMITED", "tok-limited")
        .env("TOKEN_CALM", "tok-calm")
}

/// A 429 from a client limit: Mono's envelope, a whole-second Retry-After and both headers.
fn assert_limited(r: &Reply, policy: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    let body = r.json();
    assert_envelope(&body);
    assert!(
        body["message"].as_str().unwrap().contains("limited"),
        "names the client: {body}"
    );
    let wait: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(wait >= 1, "Retry-After {wait}");
    assert_eq!(
        r.header("ratelimit-policy"),
        Some(policy),
        "{:?}",
        r.headers
    );
    let name = policy.split(';').next().unwrap();
    assert_eq!(
        r.header("ratelimit"),
        Some(format!("{name};r=0;t={wait}").as_str())
    );
}

#[tokio::test]
async fn a_flooding_client_gets_429s_and_the_other_client_is_unaffected() {
    let sb = sandbox(sandbox_config()).await;
    let p = builder(&sb, &clients("rate = 5\nburst = 5")).start().await;
    // Identity is never cached: every allowed call reaches the sandbox.
    let path = "/v2/accounts/flood1/identity";
    let before = sb.sandbox.count("total");
    let started = Instant::now();
    let (mut ok, mut limited) = (0u64, 0u64);
    for i in 0..40 {
        let r = p.get(path, &[(TOKEN, "tok-limited")]).await;
        if r.status == 429 {
            assert_limited(&r, "\"rate\";q=5;w=1");
            limited += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.text());
            ok += 1;
        }
        // The other app, interleaved: never refused.
        if i % 4 == 0 {
            let calm = p.get(path, &[(TOKEN, "tok-calm")]).await;
            assert_eq!(calm.status, 200, "{}", calm.text());
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst, plus what the rate earned back while the loop ran.
    let earned = 5 + (elapsed * 5.0).ceil() as u64;
    assert!(ok >= 5 && ok <= earned, "{ok} allowed in {elapsed:.2} s");
    assert!(limited >= 40 - earned, "{limited} refused");
    // Refused calls never reached Mono: the sandbox saw the allowed ones and the calm app's.
    assert_eq!(sb.sandbox.count("total") - before, ok + 10);
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "mono_proxy_client_limited_total{client=\"limited\",limit=\"rate\"}"
        ),
        limited as f64,
        "{m}"
    );
    assert!(!m.contains("client=\"calm\",limit"), "{m}");

    // Waiting what Retry-After says is enough.
    let mut refused = None;
    for _ in 0..200 {
        let r = p.get(path, &[(TOKEN, "tok-limited")]).await;
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a 429 within 200 calls at 5/s");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(p.get(path, &[(TOKEN, "tok-limited")]).await.status, 200);
}

#[tokio::test]
async fn concurrent_upstream_calls_are_capped_per_client() {
    let sb = sandbox(mono_proxy::sandbox::SandboxConfig {
        latency: Duration::from_millis(400),
        ..sandbox_config()
    })
    .await;
    let p = builder(&sb, &clients("max_concurrent_upstream = 2"))
        .start()
        .await;
    // Cached before the permits are taken: the hits below must not need one.
    let warm = p
        .get("/v2/accounts/conc0/balance", &[(TOKEN, "tok-limited")])
        .await;
    assert_eq!(warm.status, 200);
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let url = p.url(&format!("/v2/accounts/conc{i}/identity"));
            tokio::spawn(async move { get(&url, &[(TOKEN, "tok-limited")]).await })
        })
        .collect();
    let calm: Vec<_> = (0..3)
        .map(|i| {
            let url = p.url(&format!("/v2/accounts/calm{i}/identity"));
            tokio::spawn(async move { get(&url, &[(TOKEN, "tok-calm")]).await })
        })
        .collect();
    // While slow calls hold both permits, cache hits are still served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hits: Vec<_> = (0..4)
        .map(|_| {
            let url = p.url("/v2/accounts/conc0/balance");
            tokio::spawn(async move { get(&url, &[(TOKEN, "tok-limited")]).await })
        })
        .collect();
    for h in hits {
        let r = h.await.unwrap();
        assert_eq!((r.status.as_u16(), r.header("x-cache")), (200, Some("HIT")));
    }
    let mut statuses = Vec::new();
    for c in calls {
        let r = c.await.unwrap();
        if r.status == 429 {
            assert_limited(&r, "\"concurrency\";q=2;qu=\"concurrent-requests\"");
        }
        statuses.push(r.status.as_u16());
    }
    for c in calm {
        assert_eq!(c.await.unwrap().status, 200);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    // Permits come back with the answers.
    let after = p
        .get("/v2/accounts/conc9/identity", &[(TOKEN, "tok-limited")])
        .await;
    assert_eq!(after.status, 200);
}

fn prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

fn with_redis(r: &TestRedis, prefix: &str, limits: &str) -> String {
    format!(
        "[store]\nbackend = \"redis\"\nredis_url = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n{}",
        r.url,
        clients(limits)
    )
}

#[tokio::test]
async fn a_quota_of_billable_calls_is_shared_by_two_replicas() {
    let r = TestRedis::start();
    let sb = sandbox(sandbox_config()).await;
    let toml = with_redis(&r, &prefix(), "quota = \"3/day\"");
    let a = builder(&sb, &toml).start().await;
    let b = builder(&sb, &toml).start().await;
    let realtime = [(TOKEN, "tok-limited"), ("x-realtime", "true")];
    for (i, replica) in [&a, &b, &a].into_iter().enumerate() {
        let reply = replica
            .get(&format!("/v2/accounts/quota{i}/balance"), &realtime)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(sb.sandbox.count("balance_realtime"), 3);
    // The fourth billable call, on either replica: refused until the UTC day ends.
    for replica in [&b, &a] {
        let reply = replica.get("/v2/accounts/quota9/balance", &realtime).await;
        assert_limited(&reply, "\"quota\";q=3;w=86400");
        let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!(wait <= 86_400, "{wait}");
    }
    // A lookup is billable too: refused before anything is sent.
    let lookup = send(
        http::Method::POST,
        &b.url("/v2/lookup/bvn/initiate"),
        &[(TOKEN, "tok-limited"), ("content-type", "application/json")],
        json!({"bvn": "22212345678", "scope": "identity"}).to_string(),
    )
    .await;
    assert_limited(&lookup, "\"quota\";q=3;w=86400");
    assert_eq!(sb.sandbox.count("bvn_initiate"), 0);
    // A realtime read on a route not marked realtime is forwarded as sent: billed all the same.
    let node = a.get("/accounts/quota5/transactions", &realtime).await;
    assert_limited(&node, "\"quota\";q=3;w=86400");
    assert_eq!(sb.sandbox.count("balance_realtime"), 3);
    // What costs nothing is still served: a realtime read inside its window, a cached read.
    let windowed = b.get("/v2/accounts/quota0/balance", &realtime).await;
    assert_eq!(windowed.status, 200, "{}", windowed.text());
    assert_eq!(
        b.get("/v2/accounts/quota1/balance", &[(TOKEN, "tok-limited")])
            .await
            .status,
        200
    );
    // Another client's quota is its own.
    let calm = a
        .get(
            "/v2/accounts/quota9/balance",
            &[(TOKEN, "tok-calm"), ("x-realtime", "true")],
        )
        .await;
    assert_eq!(calm.status, 200, "{}", calm.text());
}

#[tokio::test]
async fn a_rate_is_fleet_wide_and_falls_back_to_local_limits_when_redis_is_down() {
    let mut r = TestRedis::private();
    let sb = sandbox(sandbox_config()).await;
    // One request per 2 s sustained, 6 at once: the loops below take far less than 2 s.
    let toml = with_redis(&r, &prefix(), "rate = 0.5\nburst = 6\nquota = \"2/day\"");
    let a = builder(&sb, &toml).start().await;
    let b = builder(&sb, &toml).start().await;
    let path = "/v2/accounts/fleet1/balance";
    let limited = [(TOKEN, "tok-limited")];
    let realtime = [(TOKEN, "tok-limited"), ("x-realtime", "true")];
    for i in 0..2 {
        let rt = a
            .get(&format!("/v2/accounts/fleet-rt{i}/balance"), &realtime)
            .await;
        assert_eq!(rt.status, 200, "{}", rt.text());
    }
    for _ in 0..4 {
        assert_eq!(a.get(path, &limited).await.status, 200);
    }
    // The burst was spent on A: B refuses too.
    assert_limited(&b.get(path, &limited).await, "\"rate\";q=6;w=12");

    r.stop();
    // Redis is down: A decides alone, starting from the quota the fleet had spent.
    let rt = a.get("/v2/accounts/fleet-rt9/balance", &realtime).await;
    assert_limited(&rt, "\"quota\";q=2;w=86400");
    assert_eq!(sb.sandbox.count("balance_realtime"), 2);
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..10 {
        match a.get(path, &limited).await.status.as_u16() {
            200 => ok += 1,
            429 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    // A's own rate limiter: its burst of 6, one spent by the realtime call above.
    assert!((5..=6).contains(&ok), "{ok} allowed");
    assert_eq!(ok + refused, 10);
    let m = a.metrics().await;
    let fallbacks = |limit: &str| {
        metric(
            &m,
            &format!("mono_proxy_client_limit_local_fallbacks_total{{limit=\"{limit}\"}}"),
        )
    };
    assert!(fallbacks("rate") >= 11.0, "{m}");
    assert!(fallbacks("quota") >= 1.0, "{m}");
    assert_eq!(
        b.get(path, &[(TOKEN, "tok-calm")]).await.status,
        200,
        "a client without limits is served while Redis is down"
    );
}

#[tokio::test]
async fn limits_are_checked_at_start() {
    let sb = sandbox(sandbox_config()).await;
    for (limits, names) in [
        ("rate = 0", "rate"),
        ("burst = 3", "burst"),
        ("rate = -2", "rate"),
        ("quota = \"10/week\"", "quota"),
        ("quota = \"0/day\"", "quota"),
        ("max_concurrent_upstream = 0", "max_concurrent_upstream"),
    ] {
        let b = builder(&sb, &clients(limits));
        let env = [
            ("MONO_SEC_KEY", KEY),
            ("TOKEN_LIMITED", "a"),
            ("TOKEN_CALM", "b"),
        ];
        let e = mono_proxy::config::Config::parse_runnable(&b.text(), &env).unwrap_err();
        assert!(
            e.to_string().contains(&format!("clients[0].{names}")),
            "{limits}: {e}"
        );
    }
}

#[tokio::test]
async fn a_client_over_its_quota_never_fails_another_clients_realtime_read() {
    let sb = sandbox(mono_proxy::sandbox::SandboxConfig {
        latency: Duration::from_millis(100),
        ..sandbox_config()
    })
    .await;
    let p = builder(&sb, &clients("quota = \"1/day\"")).start().await;
    let limited = [(TOKEN, "tok-limited"), ("x-realtime", "true")];
    let calm = [(TOKEN, "tok-calm"), ("x-realtime", "true")];
    assert_eq!(
        p.get("/v2/accounts/share0/balance", &limited).await.status,
        200
    );
    // Both apps at once on one account (one flight): whoever leads, the calm app is answered.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let url = p.url("/v2/accounts/share1/balance");
            let token = if i % 2 == 0 {
                "tok-limited"
            } else {
                "tok-calm"
            };
            tokio::spawn(async move {
                (
                    token,
                    get(&url, &[(TOKEN, token), ("x-realtime", "true")]).await,
                )
            })
        })
        .collect();
    for c in calls {
        let (token, r) = c.await.unwrap();
        if token == "tok-calm" || r.status != 429 {
            assert_eq!(r.status, 200, "{token}: {}", r.text());
        } else {
            assert_limited(&r, "\"quota\";q=1;w=86400");
        }
    }
    assert_eq!(sb.sandbox.count("balance_realtime"), 2);
    // Inside the window the answer costs nothing: served to the limited app too.
    assert_eq!(
        p.get("/v2/accounts/share1/balance", &limited).await.status,
        200
    );
    assert_eq!(
        p.get("/v2/accounts/share1/balance", &calm).await.status,
        200
    );
}
