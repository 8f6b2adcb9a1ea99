//! Operations (spec §10): metrics, JSON logs, readiness during drain, key rotation, no secret
//! in any output. The proxy runs in process or as the real binary, the sandbox as upstream.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use mono_proxy::config::Config;
use mono_proxy::sandbox::{Fault, SandboxConfig};
use serde_json::{json, Value};
use support::*;
use tokio::net::TcpListener;

use support::binary::{Binary, KeepAlive, WAIT};

/// A proxy in process whose default key comes from `key_file` (no `MONO_SEC_KEY`).
async fn proxy_with_key_file(
    sb: &mono_proxy::sandbox::RunningSandbox,
    key_file: &Path,
) -> TestProxy {
    let text = format!(
        "[upstream]\nbase_url = \"{}\"\nsecret_key_file = \"{}\"\n",
        sb.base_url(false),
        key_file.display()
    );
    let config = Config::parse_runnable(&text, &[("MONO_WEBHOOK_SECRET", WEBHOOK_SECRET)])
        .unwrap_or_else(|e| panic!("config: {e}"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = mono_proxy::app::start(config, listener, admin)
        .await
        .expect("proxy starts");
    TestProxy { running }
}

#[tokio::test]
async fn request_store_and_relay_latencies_build_info_and_process_metrics_move_under_traffic() {
    let sb = sandbox(sandbox_config()).await;
    let redis = TestRedis::start();
    let target = receiver::Receiver::start().await;
    let prefix = format!("ops-{}", uuid::Uuid::new_v4().simple());
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&format!(
            "[store]\nbackend = \"redis\"\nredis_url = \"{}\"\nprefix = \"{prefix}\"\ntimeout = \"1s\"\n[webhook]\nforward_to = [\"{}\"]",
            redis.url,
            target.url()
        ))
        .start()
        .await;
    let before = proxy.metrics().await;
    let timed = r#"mono_proxy_request_duration_seconds_count{class="cached",route="balance"}"#;
    assert_eq!(metric(&before, timed), 0.0);
    assert_eq!(
        metric(&before, r#"mono_proxy_build_info{version=""#),
        1.0,
        "{before}"
    );
    for _ in 0..3 {
        assert_eq!(
            proxy.get("/v2/accounts/lat1/balance", &[]).await.status,
            200
        );
    }
    assert_eq!(
        proxy.realtime("/v2/accounts/lat1/balance").await.status,
        200
    );
    let hook = proxy
        .webhook(
            &json!({"event": "mono.events.account_updated", "data": {"account": {"_id": "lat1"}}}),
        )
        .await;
    assert_eq!(hook.status, 200, "{}", hook.text());
    let after = proxy.metrics().await;
    assert_eq!(metric(&after, timed), 3.0, "{after}");
    assert!(
        metric(
            &after,
            r#"mono_proxy_request_duration_seconds_sum{class="cached",route="balance"}"#
        ) > 0.0
    );
    assert!(
        metric(
            &after,
            "mono_proxy_store_operation_duration_seconds_count{op="
        ) >= 1.0,
        "{after}"
    );
    assert_eq!(
        metric(
            &after,
            r#"mono_proxy_webhook_relay_duration_seconds_count{result="ok"}"#
        ),
        1.0,
        "{after}"
    );
    assert!(
        metric(&after, "process_resident_memory_bytes") > 1e6,
        "{after}"
    );
    assert!(metric(&after, "process_open_fds") >= 3.0);
    assert!(metric(&after, "process_cpu_seconds_total") > 0.0);
    assert!(metric(&after, "process_start_time_seconds") > 1.6e9);
    // One exposition: a single EOF marker, at the end.
    assert_eq!(after.matches("# EOF").count(), 1);
    assert!(after.trim_end().ends_with("# EOF"));
    // Status labels hold HTTP codes only; why no answer came has a label of its own.
    for line in after
        .lines()
        .filter(|l| l.starts_with("mono_proxy_upstream_requests_total{"))
    {
        let status = line
            .split("status=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(status.is_empty() || status.parse::<u16>().is_ok(), "{line}");
    }
}

#[tokio::test]
async fn metrics_follow_hits_collapsed_calls_upstream_calls_and_saved_cost() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[realtime]\ncost_per_call = 0.25")
        .start()
        .await;
    let scrape = get(&proxy.admin("/metrics"), &[]).await;
    assert_eq!(scrape.status, 200);
    let ctype = scrape.header("content-type").unwrap_or_default();
    assert!(
        ctype.starts_with("application/openmetrics-text") || ctype.starts_with("text/plain"),
        "{ctype}"
    );
    let before = scrape.text();
    let hit = r#"mono_proxy_requests_total{class="cached",cache="hit",status="200",route="balance",client="anonymous"}"#;
    assert_eq!(metric(&before, hit), 0.0);
    assert_eq!(metric(&before, "mono_proxy_realtime_saved_cost_total"), 0.0);

    assert_eq!(
        proxy
            .get("/v2/accounts/acc1/balance", &[])
            .await
            .header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        proxy
            .get("/v2/accounts/acc1/balance", &[])
            .await
            .header("x-cache"),
        Some("HIT")
    );
    let m = proxy.metrics().await;
    assert_eq!(metric(&m, hit), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            r#"mono_proxy_requests_total{class="cached",cache="miss",status="200",route="balance",client="anonymous"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"mono_proxy_upstream_requests_total{class="cached",status="200",error=""}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"mono_proxy_upstream_duration_seconds_count{class="cached"}"#
        ),
        1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"mono_proxy_upstream_duration_seconds_sum{class="cached"}"#
        ) > 0.0
    );
    assert!(metric(&m, "mono_proxy_connections_total") >= 2.0, "{m}");
    assert!(metric(&m, "mono_proxy_cache_accounts") >= 1.0, "{m}");
    assert!(metric(&m, "mono_proxy_cache_bytes") > 0.0, "{m}");

    let first = proxy.realtime("/v2/accounts/acc2/balance").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let collapsed = r#"mono_proxy_realtime_calls_total{outcome="collapsed"}"#;
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"mono_proxy_realtime_calls_total{outcome="forwarded"}"#
        ),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, collapsed), 0.0);
    assert_eq!(
        metric(
            &m,
            r#"mono_proxy_upstream_requests_total{class="realtime",status="200",error=""}"#
        ),
        1.0,
        "{m}"
    );
    for n in 1..=2 {
        let again = proxy.realtime("/v2/accounts/acc2/balance").await;
        assert_eq!(again.header("x-cache"), Some("COLLAPSED"));
        let m = proxy.metrics().await;
        assert_eq!(metric(&m, collapsed), n as f64, "{m}");
        assert_eq!(
            metric(&m, "mono_proxy_realtime_saved_cost_total"),
            0.25 * n as f64,
            "{m}"
        );
    }
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn json_log_lines_parse_and_the_access_event_has_its_fields() {
    let sb = sandbox(sandbox_config()).await;
    let toml = format!(
        "[upstream]\nbase_url = \"{}\"\n[log]\nformat = \"json\"",
        sb.base_url(false)
    );
    let mut proxy = Binary::start(&toml, &[("MONO_SEC_KEY", KEY)]).await;
    let reply = get(
        &proxy.url("/v2/accounts/acc1/balance"),
        &[
            ("x-request-id", "ops-json-1"),
            ("user-agent", "ops-test/1.0"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let hit = get(
        &proxy.url("/v2/accounts/acc1/balance"),
        &[("x-request-id", "ops-json-2")],
    )
    .await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    proxy.signal("TERM");
    assert!(proxy.exited().await.success());

    let stderr = proxy.stderr();
    let events: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access = events
        .iter()
        .find(|e| e["target"] == "mono_proxy::access" && e["request_id"] == "ops-json-1")
        .unwrap_or_else(|| panic!("no access event in:\n{stderr}"));
    assert_eq!(access["message"], "request");
    assert_eq!(access["class"], "cached");
    assert_eq!(access["status"], 200);
    assert_eq!(access["cache"], "miss");
    assert!(access["duration_ms"].is_number(), "{access}");
    // Every field the access line promises, in its JSON form.
    assert_eq!(
        access["trace_id"], "0af7651916cd43dd8448eb211c80319c",
        "{access}"
    );
    assert!(
        access["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{access}"
    );
    assert_eq!(access["protocol"], "HTTP/1.1");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/v2/accounts/acc1/balance");
    assert_eq!(access["route"], "balance");
    assert_eq!(access["client"], "anonymous");
    assert_eq!(access["user_agent"], "ops-test/1.0");
    assert_eq!(access["bytes_in"], 0);
    assert_eq!(
        access["bytes_out"].as_i64(),
        Some(reply.body.len() as i64),
        "{access}"
    );
    assert_eq!(access["upstream_status"], 200);
    assert!(access["upstream_ms"].as_f64().unwrap() > 0.0, "{access}");
    assert_eq!(access["error"], "");
    // A hit made no upstream call, and a request without traceparent gets a trace of its own.
    let hit = events
        .iter()
        .find(|e| e["target"] == "mono_proxy::access" && e["request_id"] == "ops-json-2")
        .unwrap();
    assert_eq!(hit["cache"], "hit");
    assert_eq!(hit["upstream_status"], 0);
    assert_eq!(hit["upstream_ms"], 0.0);
    let own = hit["trace_id"].as_str().unwrap();
    assert!(
        own.len() == 32 && own != "0af7651916cd43dd8448eb211c80319c",
        "{hit}"
    );
}

#[tokio::test]
async fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let sb = sandbox(sandbox_config()).await;
    let toml = format!("[upstream]\nbase_url = \"{}\"", sb.base_url(false));
    let mut proxy = Binary::start(&toml, &[("MONO_SEC_KEY", KEY)]).await;
    assert_eq!(
        proxy_get(&proxy, "/v2/accounts/acc1/balance", &[]).await,
        200
    );
    proxy.signal("TERM");
    assert!(proxy.exited().await.success());
    let stderr = proxy.stderr();
    let access = stderr.lines().find(|l| l.contains("mono_proxy::access"));
    let access = access.unwrap_or_else(|| panic!("no access line in:\n{stderr}"));
    assert!(access.contains("status=200"), "{access}");
    assert!(
        !stderr.contains('\x1b'),
        "ANSI escapes in a log file:\n{stderr}"
    );
}

#[tokio::test]
async fn readiness_turns_503_on_sigterm_while_in_flight_requests_finish() {
    let sb = sandbox(SandboxConfig {
        latency: Duration::from_secs(2),
        ..sandbox_config()
    })
    .await;
    let toml = format!(
        "[server]\ndrain_timeout = \"10s\"\n[upstream]\nbase_url = \"{}\"",
        sb.base_url(false)
    );
    let mut proxy = Binary::start(&toml, &[("MONO_SEC_KEY", KEY)]).await;
    assert_eq!(get(&proxy.admin_url("/readyz"), &[]).await.status, 200);

    let slow_url = proxy.url("/v2/accounts/acc1/balance");
    let slow =
        tokio::spawn(async move { try_send(Method::GET, &slow_url, &[], Bytes::new()).await });
    let upstream = &sb.sandbox;
    let reached = eventually(WAIT, || async move { !upstream.requests().is_empty() }).await;
    assert!(reached, "the slow request never reached the sandbox");
    proxy.signal("TERM");

    // Bounded poll: the admin listener keeps answering while the server drains.
    let readyz = proxy.admin_url("/readyz");
    let deadline = Instant::now() + WAIT;
    let body = loop {
        if let Ok(r) = try_send(Method::GET, &readyz, &[], Bytes::new()).await {
            if r.status == 503 {
                break r.json();
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 503 during the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["draining"], true, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["reasons"].as_array().is_some_and(|r| !r.is_empty()),
        "{body}"
    );

    let reply = slow.await.unwrap().expect("in-flight request completes");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let status = proxy.exited().await;
    assert!(status.success(), "exit {status}:\n{}", proxy.stderr());
}

#[tokio::test]
async fn rotated_key_file_is_picked_up_without_restart_on_the_same_connection() {
    let sb = sandbox(sandbox_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("mono-sec-key");
    std::fs::write(&key_file, "test_sk_wrong00\n").unwrap();
    let proxy = proxy_with_key_file(&sb, &key_file).await;

    let mut conn = KeepAlive::open(proxy.running.addr).await;
    let denied = conn.get("/v2/accounts/acc1/balance").await.unwrap();
    assert_eq!(denied.status, 401, "{}", denied.text());
    let connections = metric(&proxy.metrics().await, "mono_proxy_connections_total");

    // Same length as the wrong key: the change must be seen even when the size does not move.
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    // Bounded poll over the one connection: any transport error means it was dropped.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = conn
            .get("/v2/accounts/acc1/balance")
            .await
            .expect("the keep-alive connection survives the rotation");
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 401, "{}", r.text());
        assert!(Instant::now() < deadline, "still refused after rotation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "mono_proxy_connections_total"),
        connections,
        "{m}"
    );
    assert!(
        metric(&m, r#"mono_proxy_secret_reloads_total{outcome="ok"}"#) >= 1.0,
        "{m}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn rotating_to_another_key_changes_tenant_and_in_flight_requests_finish() {
    let sb = sandbox(sandbox_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("mono-sec-key");
    std::fs::write(&key_file, KEY).unwrap();
    let proxy = proxy_with_key_file(&sb, &key_file).await;
    let state = std::sync::Arc::clone(&proxy.running.state);

    assert_eq!(
        proxy
            .get("/v2/accounts/acc1/balance", &[])
            .await
            .header("x-cache"),
        Some("MISS")
    );
    assert_eq!(
        proxy
            .get("/v2/accounts/acc1/balance", &[])
            .await
            .header("x-cache"),
        Some("HIT")
    );

    // Slow passthrough calls that are inside the upstream when the key changes.
    sb.sandbox.set_fault_spec(Some(
        Fault::Latency(Duration::from_secs(1))
            .times(4)
            .route("identity"),
    ));
    sb.sandbox.clear_requests();
    let mut in_flight = Vec::new();
    for _ in 0..4 {
        let url = proxy.url("/v2/accounts/acc1/identity");
        in_flight.push(tokio::spawn(async move {
            try_send(Method::GET, &url, &[], Bytes::new()).await
        }));
    }
    let upstream = &sb.sandbox;
    let arrived = eventually(WAIT, || async move { upstream.requests().len() >= 4 }).await;
    assert!(arrived, "in-flight requests never reached the sandbox");
    std::fs::write(&key_file, "test_sk_rotated_elsewhere").unwrap();
    let old_tenant = state.secrets.load().default.id.clone();
    state.reload_secrets().expect("reload");
    assert_ne!(state.secrets.load().default.id, old_tenant);
    for call in in_flight {
        let reply = call.await.unwrap().expect("in-flight request completes");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    // The new key is another tenant: the old tenant's cached body is not served to it.
    let unauthorized = sb.sandbox.count("unauthorized");
    let after = proxy.get("/v2/accounts/acc1/balance", &[]).await;
    assert_eq!(after.header("x-cache"), Some("MISS"));
    assert_eq!(after.status, 401, "{}", after.text());
    assert_eq!(sb.sandbox.count("unauthorized"), unauthorized + 1);
    let sent = sb.sandbox.requests();
    let last = sent.last().unwrap();
    assert_eq!(
        last.header("mono-sec-key"),
        Some("test_sk_rotated_elsewhere")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_key_file_of_the_running_binary() {
    let sb = sandbox(sandbox_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("mono-sec-key");
    std::fs::write(&key_file, "test_sk_wrong00").unwrap();
    let toml = format!(
        "[upstream]\nbase_url = \"{}\"\nsecret_key_file = \"{}\"\n[log]\nformat = \"json\"",
        sb.base_url(false),
        key_file.display()
    );
    let mut proxy = Binary::start(&toml, &[]).await;
    let mut conn = KeepAlive::open(proxy.addr).await;
    assert_eq!(
        conn.get("/v2/accounts/acc1/balance").await.unwrap().status,
        401
    );

    std::fs::write(&key_file, KEY).unwrap();
    proxy.signal("HUP");
    let running = &proxy;
    let reloaded = eventually(WAIT, || async move {
        running.stderr().lines().any(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|e| e["message"] == "config reloaded" && e["reason"] == "SIGHUP")
        })
    })
    .await;
    assert!(reloaded, "no SIGHUP reload logged:\n{}", proxy.stderr());
    let reply = conn
        .get("/v2/accounts/acc1/balance")
        .await
        .expect("same connection");
    assert_eq!(reply.status, 200, "{}", reply.text());
    proxy.signal("TERM");
    assert!(proxy.exited().await.success());
}

#[tokio::test]
async fn no_secret_appears_in_logs_or_metrics_even_at_trace_level() {
    const KEY_NEEDLE: &str = "test_sk_needle_5f2c9a";
    const HOOK_NEEDLE: &str = "whsec_needle_8d1e4b";
    // The sandbox speaks TLS so the upstream runs HTTP/2 (h2 traces frames) as well as HTTP/1.
    let (cert, key) = mono_proxy::sandbox::self_signed_cert(&["localhost", "127.0.0.1"]);
    let sb = mono_proxy::sandbox::Sandbox::new(SandboxConfig {
        secret_key: KEY_NEEDLE.into(),
        ..sandbox_config()
    })
    .spawn_tls(&cert, &key)
    .await
    .expect("tls sandbox");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let toml = format!(
        "[upstream]\nbase_url = \"{}\"\nca_file = \"{}\"\n",
        sb.base_url(true),
        ca.display()
    );
    let proxy = Binary::start(
        &toml,
        &[
            ("MONO_SEC_KEY", KEY_NEEDLE),
            ("MONO_WEBHOOK_SECRET", HOOK_NEEDLE),
            ("RUST_LOG", "trace"),
        ],
    )
    .await;

    let ok = get(&proxy.url("/v2/accounts/acc1/balance"), &[]).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(
        proxy_get(
            &proxy,
            "/v2/accounts/acc1/balance",
            &[("x-realtime", "true")]
        )
        .await,
        200
    );
    assert_eq!(proxy_get(&proxy, "/v2/accounts/acc1", &[]).await, 200);
    sb.sandbox.set_fault(Some(Fault::Status(503)));
    assert_eq!(
        proxy_get(&proxy, "/v2/accounts/acc3/balance", &[]).await,
        503
    );
    sb.sandbox.set_fault(Some(Fault::Reset));
    assert_eq!(
        proxy_get(&proxy, "/v2/accounts/acc4/balance", &[]).await,
        502
    );
    sb.sandbox.set_fault(None);
    assert_eq!(
        proxy_get(&proxy, "/v2/accounts/bad%2Fid/balance", &[]).await,
        400
    );
    assert_eq!(
        proxy_get(
            &proxy,
            "/v2/accounts/acc1/balance",
            &[("x-realtime", "maybe")]
        )
        .await,
        400
    );
    assert_eq!(
        proxy_get(
            &proxy,
            "/v2/accounts/acc1/balance",
            &[("mono-sec-key", "test_sk_app_sent")]
        )
        .await,
        200
    );
    let hook = |secret: &'static str| {
        let url = proxy.url("/webhooks/mono");
        async move {
            let body = json!({"event": "mono.accounts.jobs.update", "data": {"id": "job1", "status": "finished"}});
            send(
                Method::POST,
                &url,
                &[
                    ("mono-webhook-secret", secret),
                    ("content-type", "application/json"),
                ],
                body.to_string(),
            )
            .await
            .status
        }
    };
    assert_eq!(hook("whsec_wrong").await, 401);
    assert_eq!(hook(HOOK_NEEDLE).await, 200);
    let metrics = get(&proxy.admin_url("/metrics"), &[]).await.text();
    let readyz = get(&proxy.admin_url("/readyz"), &[]).await.text();
    sb.stop().await.unwrap();
    assert_eq!(
        proxy_get(&proxy, "/v2/accounts/acc5/balance", &[]).await,
        502
    );

    let mut proxy = proxy;
    proxy.signal("TERM");
    assert!(proxy.exited().await.success());
    let stderr = proxy.stderr();
    assert!(
        stderr.lines().count() > 20,
        "expected trace output:\n{stderr}"
    );
    for (name, text) in [
        ("stderr", stderr.as_str()),
        ("stdout", &proxy.stdout()),
        ("metrics", &metrics),
        ("readyz", &readyz),
    ] {
        for needle in ["needle_5f2c9a", "needle_8d1e4b"] {
            let hit = text.lines().find(|l| l.contains(needle));
            assert!(
                hit.is_none(),
                "secret in {name}: {}",
                hit.unwrap_or_default()
            );
        }
    }
}

async fn proxy_get(proxy: &Binary, path: &str, headers: &[(&str, &str)]) -> u16 {
    get(&proxy.url(path), headers).await.status.as_u16()
}
