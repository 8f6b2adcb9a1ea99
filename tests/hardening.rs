//! Faults a hostile test campaign found, each pinned by a test that failed before its fix:
//! stray methods, non-JSON 200s, unbounded Retry-After, client framing errors blamed on Mono,
//! lenient framing, and job ids nobody checked.

mod support;

use std::time::{Duration, UNIX_EPOCH};

use http::Method;
use mono_proxy::sandbox::{CannedReply, Fault, SandboxConfig};
use support::*;

const BALANCE: &str = "/v2/accounts/hard1/balance";

#[tokio::test]
async fn methods_mono_does_not_use_are_refused_and_never_forwarded() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let methods = [
        Method::TRACE,
        Method::OPTIONS,
        Method::from_bytes(b"get").unwrap(),
        Method::from_bytes(b"FOO").unwrap(),
        Method::from_bytes(b"PROPFIND").unwrap(),
    ];
    for method in methods {
        for path in ["/v2/accounts/x/identity", BALANCE, "/v1/anything"] {
            let r = send(method.clone(), &proxy.url(path), &[], "").await;
            assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
            assert_eq!(
                r.header("allow"),
                Some("GET, HEAD, POST, PUT, PATCH, DELETE")
            );
            assert_envelope(&r.json());
        }
    }
    // The same over a raw socket: nothing the client library might normalise.
    let trace = raw(
        proxy.running.addr,
        "TRACE /v2/accounts/x/identity HTTP/1.1",
        &["Host: api.withmono.com"],
    )
    .await;
    assert_eq!(trace.status, 405, "{}", trace.head);
    assert!(!trace.body.contains(KEY));
    assert_eq!(
        sb.sandbox.count("total"),
        0,
        "a refused method reached Mono"
    );
    // The methods Mono uses still pass.
    let put = send(Method::PUT, &proxy.url("/v2/echo"), &[], "{}").await;
    assert_eq!(put.status, 200, "{}", put.text());
}

#[tokio::test]
async fn a_non_json_200_is_passed_through_once_and_never_cached() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let page = "<html><body>Down for maintenance</body></html>";
    for (reply, reason) in [
        (
            CannedReply::new(200, page).header("content-type", "text/html"),
            "not_json",
        ),
        (
            CannedReply::new(200, r#"{"message":"no envelope"}"#)
                .header("content-type", "application/json"),
            "not_envelope",
        ),
    ] {
        sb.sandbox.reset_counts();
        sb.sandbox
            .set_fault_spec(Some(Fault::Reply(reply.clone()).times(1).route("balance")));
        let first = proxy.get(BALANCE, &[]).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.text(), reply.body, "passed through as it came");
        assert_eq!(first.header("x-cache"), Some("MISS"));
        let second = proxy.get(BALANCE, &[]).await;
        assert_eq!(
            second.header("x-cache"),
            Some("MISS"),
            "the page was cached"
        );
        assert_eq!(second.json()["status"], "successful");
        assert_eq!(proxy.get(BALANCE, &[]).await.header("x-cache"), Some("HIT"));
        assert_eq!(
            sb.sandbox.count("balance"),
            1,
            "the real answer was fetched once"
        );
        let m = proxy.metrics().await;
        let line = format!(
            "mono_proxy_responses_not_stored_total{{class=\"cached\",reason=\"{reason}\"}}"
        );
        assert_eq!(metric(&m, &line), 1.0, "{m}");
        // The next round starts from an empty entry.
        let invalidated = proxy
            .webhook(&serde_json::json!({
                "event": "mono.events.account_updated",
                "data": {"account": {"_id": "hard1"}, "meta": {"sync_status": "SUCCESSFUL"}}
            }))
            .await;
        assert_eq!(invalidated.status, 200, "{}", invalidated.text());
    }
}

#[tokio::test]
async fn a_non_json_realtime_answer_records_no_job() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll = false")
        .start()
        .await;
    let page = CannedReply::new(200, "<html>maintenance</html>")
        .header("content-type", "text/html")
        .header("x-job-id", "jobs.accounts_fake")
        .header("x-job-status", "processing");
    sb.sandbox
        .set_fault_spec(Some(Fault::Reply(page).times(1).route("balance")));
    let first = proxy.realtime(BALANCE).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "<html>maintenance</html>");
    let second = proxy.realtime(BALANCE).await;
    assert_eq!(
        second.header("x-cache"),
        Some("MISS"),
        "no window was opened"
    );
    assert_ne!(second.header("x-job-id"), Some("jobs.accounts_fake"));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
}

#[tokio::test]
async fn an_oversized_job_id_is_passed_through_and_never_tracked() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll_interval = \"100ms\"")
        .start()
        .await;
    let long = "j".repeat(10 * 1024);
    let envelope = r#"{"status":"successful","message":"ok","data":{"balance":1}}"#;
    let reply = CannedReply::new(200, envelope)
        .header("content-type", "application/json")
        .header("x-job-id", &long)
        .header("x-job-status", "processing");
    sb.sandbox
        .set_fault_spec(Some(Fault::Reply(reply).times(1).route("balance")));
    let first = proxy.realtime(BALANCE).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(
        first.header("x-job-id"),
        Some(long.as_str()),
        "passed through"
    );
    assert_eq!(proxy.running.state.polls.active(), 0, "never polled");
    let second = proxy.realtime(BALANCE).await;
    assert_eq!(second.header("x-cache"), Some("MISS"), "never stored");
    assert_ne!(second.header("x-job-id"), Some(long.as_str()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let polled_long = sb.sandbox.requests().iter().any(|r| r.path.contains(&long));
    assert!(!polled_long, "the oversized id was sent back upstream");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "mono_proxy_responses_not_stored_total{class=\"realtime\",reason=\"bad_job_id\"}"
        ),
        1.0,
        "{m}"
    );
    // A webhook naming such a job is relayed (no targets here) and applies nothing.
    let hook = proxy
        .webhook(&serde_json::json!({
            "event": "mono.accounts.jobs.update",
            "data": {"id": long, "status": "finished"}
        }))
        .await;
    assert_eq!(hook.status, 200, "{}", hook.text());
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_and_read_as_seconds_or_a_date() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[realtime]\nwindow = \"60s\"\nmax_retry_after = \"20s\"")
        .toml("[jobs]\npoll = false")
        .start()
        .await;
    let limited = |retry_after: &str| {
        CannedReply::new(
            429,
            r#"{"status":"failed","message":"slow down","data":null}"#,
        )
        .header("content-type", "application/json")
        .header("retry-after", retry_after)
    };
    // Dates on the proxy's clock, which follows this test's paused time.
    let in_secs = |s: u64| {
        let now = UNIX_EPOCH + Duration::from_millis(mono_proxy::clock::now_ms());
        httpdate::fmt_http_date(now + Duration::from_secs(s))
    };
    // (account, Retry-After, held at least, released by)
    let cases: [(&str, &dyn Fn() -> String, u64, u64); 4] = [
        ("ra-year", &|| "31536000".to_string(), 19, 21),
        ("ra-date", &|| in_secs(8), 6, 10),
        ("ra-far-date", &|| in_secs(30), 19, 21),
        ("ra-garbage", &|| "soon, maybe".to_string(), 19, 21),
    ];
    for (account, retry_after, held, released) in cases {
        let retry_after = retry_after();
        let path = format!("/v2/accounts/{account}/balance");
        sb.sandbox.reset_counts();
        sb.sandbox.set_fault_spec(Some(
            Fault::Reply(limited(&retry_after))
                .times(1)
                .route(format!("/v2/accounts/{account}/")),
        ));
        let started = tokio::time::Instant::now();
        let first = proxy.realtime(&path).await;
        assert_eq!(first.status, 429, "{account}: {}", first.text());
        tokio::time::advance(Duration::from_secs(held) - started.elapsed()).await;
        let during = proxy.realtime(&path).await;
        assert_eq!(during.status, 200, "{account}: {}", during.text());
        assert_eq!(
            sb.sandbox.count("balance_realtime"),
            0,
            "{account}: a realtime call went out {held} s after Retry-After {retry_after:?}"
        );
        tokio::time::advance(Duration::from_secs(released - held)).await;
        let after = proxy.realtime(&path).await;
        assert_eq!(
            after.header("x-cache"),
            Some("MISS"),
            "{account}: {}",
            after.text()
        );
        assert_eq!(
            sb.sandbox.count("balance_realtime"),
            1,
            "{account}: still held {released} s after Retry-After {retry_after:?}"
        );
    }
}

#[tokio::test]
async fn broken_request_bodies_are_the_clients_fault() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let head = "POST /v2/echo HTTP/1.1\r\nHost: api.withmono.com\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    let bad_size = format!("{head}zz\r\nhello\r\n0\r\n\r\n");
    let truncated = format!("{head}40\r\n{{\"only\":\"part\"");
    for (name, bytes, half_close) in [
        ("bad chunk size", bad_size, false),
        ("cut short", truncated, true),
    ] {
        let r = raw_bytes(proxy.running.addr, bytes.as_bytes(), half_close).await;
        assert_eq!(r.status, 400, "{name}: {}\n{}", r.head, r.body);
        let body = r.json();
        assert_envelope(&body);
        let message = body["message"].as_str().unwrap_or_default().to_lowercase();
        for internal in ["hyper", "upstream", "error reading", "connection"] {
            assert!(!message.contains(internal), "{name}: {message}");
        }
    }
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "mono_proxy_upstream_requests_total{class=\"passthrough\",status=\"\",error=\"upstream_unreachable\"}"),
        0.0,
        "a client's broken body was counted against Mono:\n{m}"
    );
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_its_answer() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let request = format!("GET {BALANCE} HTTP/1.1\r\nHost: api.withmono.com\r\n\r\n");
    let r = raw_bytes(proxy.running.addr, request.as_bytes(), true).await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    assert_eq!(r.json()["status"], "successful");
    let body = r#"{"hello":"mono"}"#;
    let post = format!(
        "POST /v2/echo HTTP/1.1\r\nHost: api.withmono.com\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = raw_bytes(proxy.running.addr, post.as_bytes(), true).await;
    assert_eq!(r.status, 200, "{}\n{}", r.head, r.body);
    assert_eq!(r.json()["body"], body);
}

#[tokio::test]
async fn http11_needs_exactly_one_host_and_empty_segments_are_refused() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let addr = proxy.running.addr;
    let no_host = raw(addr, &format!("GET {BALANCE} HTTP/1.1"), &[]).await;
    assert_eq!(no_host.status, 400, "{}", no_host.head);
    assert_envelope(&no_host.json());
    let two_hosts = raw(
        addr,
        &format!("GET {BALANCE} HTTP/1.1"),
        &["Host: api.withmono.com", "Host: evil.example"],
    )
    .await;
    assert_eq!(two_hosts.status, 400, "{}", two_hosts.head);
    for path in ["//v2/accounts/x/balance", "/v2/accounts/x//balance"] {
        let r = raw(
            addr,
            &format!("GET {path} HTTP/1.1"),
            &["Host: api.withmono.com"],
        )
        .await;
        assert_eq!(r.status, 400, "{path}: {}", r.head);
    }
    assert_eq!(
        sb.sandbox.count("total"),
        0,
        "a refused request reached Mono"
    );
    // HTTP/1.0 has no Host requirement; one Host on HTTP/1.1 is the normal case.
    let old = raw(addr, &format!("GET {BALANCE} HTTP/1.0"), &[]).await;
    assert_eq!(old.status, 200, "{}", old.head);
    let normal = raw(
        addr,
        &format!("GET {BALANCE} HTTP/1.1"),
        &["Host: api.withmono.com"],
    )
    .await;
    assert_eq!(normal.status, 200, "{}", normal.head);
}

#[tokio::test]
async fn the_sandbox_replays_canned_replies() {
    let sb = sandbox(SandboxConfig::default()).await;
    let reply = CannedReply::new(418, "teapot").header("x-odd", "1");
    sb.sandbox.set_fault(Some(Fault::Reply(reply)));
    let r = get(
        &format!("{}/v2/accounts/a/balance", sb.base_url(false)),
        &[],
    )
    .await;
    assert_eq!(r.status, 418);
    assert_eq!(r.text(), "teapot");
    assert_eq!(r.header("x-odd"), Some("1"));
}
