//! The foundation (issue 2) over real sockets: passthrough, key handling, header hygiene,
//! request targets, input validation, upstream failures, HTTP/2, TLS upstream and drain.

mod support;

use std::convert::Infallible;
use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mono_proxy::sandbox::{self_signed_cert, Fault, Sandbox};
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single exchange: a hang fails the test instead of stalling it.
const CALL_BOUND: Duration = Duration::from_secs(10);

/// One request through the harness client, bounded so a hang fails.
async fn bounded(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    tokio::time::timeout(
        CALL_BOUND,
        send(method, url, headers, Bytes::from(body.to_string())),
    )
    .await
    .unwrap_or_else(|_| panic!("{url}: no answer within {CALL_BOUND:?}"))
}

#[tokio::test]
async fn methods_query_and_body_pass_through_unchanged() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ] {
        let body = if method == Method::GET {
            String::new()
        } else {
            format!("{{\"via\":\"{method}\",\"n\":[1,2,3]}}")
        };
        let url = proxy.url("/v2/echo/some/path?b=2&a=one&&z=%20x");
        let reply = bounded(
            method.clone(),
            &url,
            &[("content-type", "application/json"), ("x-custom", "Kept")],
            &body,
        )
        .await;
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
        let echo = reply.json();
        assert_eq!(echo["method"], method.as_str());
        assert_eq!(echo["path"], "/v2/echo/some/path");
        assert_eq!(
            echo["query"], "b=2&a=one&&z=%20x",
            "query is not normalised"
        );
        assert_eq!(echo["body"], body.as_str());
        assert_eq!(echo["headers"]["x-custom"], "Kept");
        assert_eq!(echo["headers"]["content-type"], "application/json");
    }
    assert_eq!(sb.sandbox.count("echo"), 5);
    let methods: Vec<String> = sb
        .sandbox
        .requests()
        .into_iter()
        .map(|r| r.method)
        .collect();
    assert_eq!(methods, ["GET", "POST", "PUT", "PATCH", "DELETE"]);
}

#[tokio::test]
async fn a_streamed_three_mib_body_arrives_intact() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    // 48 chunks of 64 KiB with no content-length: the proxy must stream, not assume a size.
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..48u8)
        .map(|i| {
            let byte = b'a' + (i % 26);
            Ok(Frame::data(Bytes::from(vec![byte; 64 * 1024])))
        })
        .collect();
    let expected: String = (0..48u8)
        .map(|i| char::from(b'a' + (i % 26)).to_string().repeat(64 * 1024))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/v2/echo/upload"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap();
    let exchange = async {
        let resp = client.request(req).await.expect("proxy answers");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("3 MiB round trip finishes");
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(500)])
    );
    let echo: Value = serde_json::from_slice(&body).unwrap();
    let got = echo["body"].as_str().unwrap();
    assert_eq!(got.len(), 3 * 1024 * 1024);
    assert!(got == expected, "the body changed on the way");
    assert_eq!(
        echo["headers"]["transfer-encoding"], "chunked",
        "streamed, not buffered into a content-length"
    );
}

#[tokio::test]
async fn the_key_is_injected_and_a_client_key_never_reaches_upstream() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let plain = bounded(Method::GET, &proxy.url("/v2/echo"), &[], "").await;
    assert_eq!(plain.status, 200, "{}", plain.text());
    assert_eq!(plain.json()["headers"]["mono-sec-key"], KEY);

    let sent = bounded(
        Method::POST,
        &proxy.url("/v2/echo"),
        &[("Mono-Sec-Key", "live_sk_from_the_app")],
        "{}",
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    assert_eq!(sent.json()["headers"]["mono-sec-key"], KEY);

    let balance = bounded(
        Method::GET,
        &proxy.url("/v2/accounts/acc1/balance"),
        &[("mono-sec-key", "live_sk_from_the_app")],
        "",
    )
    .await;
    assert_eq!(balance.status, 200, "{}", balance.text());

    let requests = sb.sandbox.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        let keys: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("mono-sec-key"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(keys, [KEY], "{} {}", r.method, r.path);
    }
    assert_eq!(sb.sandbox.count("unauthorized"), 0);
}

#[tokio::test]
async fn a_client_key_is_refused_when_the_policy_is_reject() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[upstream]\nclient_key = \"reject\"")
        .start()
        .await;
    for path in ["/v2/echo", "/v2/accounts/acc1/balance"] {
        let refused = bounded(
            Method::GET,
            &proxy.url(path),
            &[("mono-sec-key", "live_sk_from_the_app")],
            "",
        )
        .await;
        assert_eq!(refused.status, 400, "{path}: {}", refused.text());
        assert_envelope(&refused.json());
    }
    assert_eq!(sb.sandbox.count("total"), 0);
    let allowed = bounded(Method::GET, &proxy.url("/v2/echo"), &[], "").await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.json()["headers"]["mono-sec-key"], KEY);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_host_is_the_upstream() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let reply = raw(
        proxy.running.addr,
        "GET /v2/echo?x=1 HTTP/1.1",
        &[
            "Host: app.internal:1234",
            "Connection: x-hop, keep-alive",
            "X-Hop: 1",
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "Proxy-Connection: keep-alive",
            "X-End-To-End: stays",
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.head, reply.body);
    let requests = sb.sandbox.requests();
    assert_eq!(requests.len(), 1);
    let seen = &requests[0];
    for name in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(seen.header(name), None, "{name} reached the upstream");
    }
    if let Some(conn) = seen.header("connection") {
        assert!(!conn.contains("x-hop"), "connection: {conn}");
    }
    assert_eq!(seen.header("x-end-to-end"), Some("stays"));
    assert_eq!(seen.header("host"), Some(sb.addr.to_string().as_str()));
}

#[tokio::test]
async fn a_request_id_is_generated_forwarded_and_echoed() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;

    let generated = bounded(Method::GET, &proxy.url("/v2/echo"), &[], "").await;
    let id = generated
        .header("x-request-id")
        .expect("id echoed")
        .to_string();
    assert!(!id.is_empty());
    assert_eq!(generated.json()["headers"]["x-request-id"], id.as_str());

    let again = bounded(Method::GET, &proxy.url("/v2/echo"), &[], "").await;
    assert_ne!(
        again.header("x-request-id"),
        Some(id.as_str()),
        "ids are unique"
    );

    let kept = bounded(
        Method::GET,
        &proxy.url("/v2/echo"),
        &[("x-request-id", "app-req-42")],
        "",
    )
    .await;
    assert_eq!(kept.header("x-request-id"), Some("app-req-42"));
    assert_eq!(kept.json()["headers"]["x-request-id"], "app-req-42");

    let insane = bounded(
        Method::GET,
        &proxy.url("/v2/echo"),
        &[("x-request-id", "has spaces in it")],
        "",
    )
    .await;
    let replaced = insane.header("x-request-id").unwrap().to_string();
    assert_ne!(replaced, "has spaces in it");
    assert_eq!(insane.json()["headers"]["x-request-id"], replaced.as_str());

    // Proxy-made errors carry it too.
    let bad = bounded(
        Method::GET,
        &proxy.url("/v2/accounts/acc1/balance"),
        &[("x-realtime", "maybe"), ("x-request-id", "bad-1")],
        "",
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.header("x-request-id"), Some("bad-1"));
}

#[tokio::test]
async fn absolute_form_targets_for_accepted_hosts_reach_the_upstream() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let mono = raw(
        proxy.running.addr,
        "GET http://api.withmono.com/v2/echo?x=1 HTTP/1.1",
        &["Host: api.withmono.com"],
    )
    .await;
    assert_eq!(mono.status, 200, "{}\n{}", mono.head, mono.body);
    let echo = mono.json();
    assert_eq!(echo["path"], "/v2/echo");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["host"], sb.addr.to_string());
    assert_eq!(echo["headers"]["mono-sec-key"], KEY);

    let own = raw(
        proxy.running.addr,
        &format!("GET https://{}/v2/echo/own?y=2 HTTP/1.1", sb.addr),
        &[&format!("Host: {}", sb.addr)],
    )
    .await;
    assert_eq!(own.status, 200, "{}\n{}", own.head, own.body);
    assert_eq!(own.json()["path"], "/v2/echo/own");

    let balance = raw(
        proxy.running.addr,
        "GET https://api.withmono.com/v2/accounts/acc1/balance HTTP/1.1",
        &["Host: api.withmono.com"],
    )
    .await;
    assert_eq!(balance.status, 200, "{}\n{}", balance.head, balance.body);
    assert!(balance.body.contains("\"balance\""), "{}", balance.body);
    assert_eq!(sb.sandbox.count("echo"), 2);
    assert_eq!(sb.sandbox.count("balance"), 1);
}

#[tokio::test]
async fn a_foreign_authority_is_forbidden_and_never_forwarded() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    for target in [
        "http://evil.example/v2/echo",
        "https://evil.example/v2/accounts/acc1/balance",
        "http://api.withmono.com.evil.example/v2/echo",
        "http://127.0.0.2:9/v2/echo",
    ] {
        let reply = raw(
            proxy.running.addr,
            &format!("GET {target} HTTP/1.1"),
            &["Host: evil.example"],
        )
        .await;
        assert_eq!(reply.status, 403, "{target}: {}", reply.body);
        assert_envelope(&reply.json());
    }
    assert_eq!(sb.sandbox.count("total"), 0);
}

#[tokio::test]
async fn connect_is_refused_with_a_pointer_to_the_base_url() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let reply = raw(
        proxy.running.addr,
        "CONNECT api.withmono.com:443 HTTP/1.1",
        &["Host: api.withmono.com:443"],
    )
    .await;
    assert_eq!(reply.status, 405, "{}\n{}", reply.head, reply.body);
    let body = reply.json();
    assert_envelope(&body);
    let message = body["message"].as_str().unwrap().to_ascii_lowercase();
    assert!(message.contains("base url"), "{message}");
    assert_eq!(sb.sandbox.count("total"), 0);
}

#[tokio::test]
async fn malformed_ids_and_paths_are_refused_before_the_upstream() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let long = "a".repeat(200);
    let targets = [
        "/v2/accounts/a%20b/balance".to_string(),
        "/v2/accounts/../v1/x".to_string(),
        "/v2/accounts/./balance".to_string(),
        "/v2/accounts/%2e%2e/balance".to_string(),
        "/v2/accounts/%2E%2E/transactions".to_string(),
        "/v2/accounts/a%2fb/balance".to_string(),
        "/v1/%2e%2e/v2/echo".to_string(),
        format!("/v2/accounts/{long}/balance"),
        format!("/v2/accounts/{long}/identity"),
        "/v2/accounts/acc1/jobs/..".to_string(),
    ];
    for target in &targets {
        let reply = raw(
            proxy.running.addr,
            &format!("GET {target} HTTP/1.1"),
            &["Host: localhost"],
        )
        .await;
        assert_eq!(reply.status, 400, "{target}: {}", reply.body);
        assert_envelope(&reply.json());
    }
    for value in ["maybe", "1", "yes"] {
        let reply = bounded(
            Method::GET,
            &proxy.url("/v2/accounts/acc1/balance"),
            &[("x-realtime", value)],
            "",
        )
        .await;
        assert_eq!(reply.status, 400, "x-realtime: {value}: {}", reply.text());
        assert_envelope(&reply.json());
    }
    assert_eq!(sb.sandbox.count("total"), 0, "{:?}", sb.sandbox.requests());
    // Any case of true is accepted (and so is a sane id right at the bound).
    let upper = bounded(
        Method::GET,
        &proxy.url("/v2/accounts/acc1/balance"),
        &[("x-realtime", "TRUE")],
        "",
    )
    .await;
    assert_eq!(upper.status, 200, "{}", upper.text());
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_in_the_envelope() {
    let (_refusing, port) = refusing_port();
    let proxy = ProxyBuilder::new(&format!("http://127.0.0.1:{port}"))
        .start()
        .await;
    for path in ["/v2/echo", "/v2/accounts/acc1/balance", "/v1/misc"] {
        let reply = bounded(Method::GET, &proxy.url(path), &[], "").await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
        assert_envelope(&reply.json());
        assert!(reply.header("x-request-id").is_some());
    }
}

#[tokio::test]
async fn a_hanging_upstream_is_a_504_after_the_timeout() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[upstream]\ntimeout = \"300ms\"")
        .start()
        .await;
    sb.sandbox.set_fault(Some(Fault::Hang));
    for path in ["/v2/echo", "/v2/accounts/acc1/balance"] {
        let reply = bounded(Method::GET, &proxy.url(path), &[], "").await;
        assert_eq!(reply.status, 504, "{path}: {}", reply.text());
        assert_envelope(&reply.json());
    }
    assert_eq!(sb.sandbox.count("faulted"), 2);
}

#[tokio::test]
async fn an_upstream_5xx_passes_through_unchanged_and_uncached() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    sb.sandbox.set_fault(Some(Fault::Status(503)));
    for _ in 0..2 {
        let reply = bounded(Method::GET, &proxy.url("/v2/echo/thing"), &[], "").await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["status"], "failed");
        assert_eq!(body["message"], "Service Unavailable", "Mono's own message");
        assert_eq!(reply.header("x-cache"), None);
    }
    assert_eq!(
        sb.sandbox.count("faulted"),
        2,
        "each call reached the upstream"
    );
    sb.sandbox.set_fault(None);
    let healed = bounded(Method::GET, &proxy.url("/v2/echo/thing"), &[], "").await;
    assert_eq!(healed.status, 200, "{}", healed.text());
    assert_eq!(healed.json()["path"], "/v2/echo/thing");
}

#[tokio::test]
async fn an_upstream_reset_is_a_502() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    sb.sandbox.set_fault(Some(Fault::Reset));
    for path in ["/v2/echo", "/v2/accounts/acc1/balance"] {
        let reply = bounded(Method::GET, &proxy.url(path), &[], "").await;
        assert_eq!(reply.status, 502, "{path}: {}", reply.text());
        assert_envelope(&reply.json());
    }
    assert!(sb.sandbox.count("faulted") >= 2);
}

#[tokio::test]
async fn http2_prior_knowledge_from_the_client_works() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let call = |method: Method, path: &str, body: &'static str| {
        let req = Request::builder()
            .method(method)
            .uri(proxy.url(path))
            .header("x-custom", "h2")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        let h2 = h2.clone();
        async move {
            let resp = tokio::time::timeout(CALL_BOUND, h2.request(req))
                .await
                .expect("bounded")
                .expect("h2 answer");
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }
    };
    let (status, body) = call(Method::POST, "/v2/echo/h2?q=1", "over h2").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["query"], "q=1");
    assert_eq!(echo["body"], "over h2");
    assert_eq!(echo["headers"]["x-custom"], "h2");
    assert_eq!(echo["headers"]["mono-sec-key"], KEY);
    assert_eq!(echo["headers"]["host"], sb.addr.to_string());

    let (status, body) = call(Method::GET, "/v2/accounts/acc1/balance", "").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("\"balance\""));
}

#[tokio::test]
async fn a_tls_upstream_is_trusted_through_ca_file_only() {
    let (cert, key) = self_signed_cert(&["localhost", "127.0.0.1"]);
    let mut ca = tempfile::NamedTempFile::new().unwrap();
    ca.write_all(cert.as_bytes()).unwrap();
    ca.flush().unwrap();
    let sb = Sandbox::new(sandbox_config())
        .spawn_tls(&cert, &key)
        .await
        .unwrap();
    let base = format!("https://127.0.0.1:{}", sb.addr.port());
    let trusting = format!("[upstream]\nca_file = \"{}\"", ca.path().display());

    let trusted = ProxyBuilder::new(&base).toml(&trusting).start().await;
    let ok = bounded(
        Method::GET,
        &trusted.url("/v2/accounts/acc1/balance"),
        &[],
        "",
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().contains("\"balance\""));
    let echo = bounded(Method::GET, &trusted.url("/v2/echo/tls"), &[], "").await;
    assert_eq!(echo.status, 200, "{}", echo.text());
    assert_eq!(echo.json()["headers"]["mono-sec-key"], KEY);

    // Calls that all start cold share one TLS handshake: the sandbox speaks h2 by ALPN.
    let cold = ProxyBuilder::new(&base).toml(&trusting).start().await;
    let handshakes = sb.sandbox.count("tls_handshakes");
    let urls: Vec<String> = (0..8)
        .map(|i| cold.url(&format!("/v2/echo/h2-{i}")))
        .collect();
    for r in futures_util::future::join_all(urls.iter().map(|u| get(u, &[]))).await {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(sb.sandbox.count("tls_handshakes") - handshakes, 1);

    let untrusted = ProxyBuilder::new(&base).start().await;
    let before = sb.sandbox.count("total");
    let refused = bounded(
        Method::GET,
        &untrusted.url("/v2/accounts/acc2/balance"),
        &[],
        "",
    )
    .await;
    assert_eq!(refused.status, 502, "{}", refused.text());
    assert_envelope(&refused.json());
    assert_eq!(
        sb.sandbox.count("total"),
        before,
        "no request over an untrusted channel"
    );
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_refuses_new_connections() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let addr = proxy.running.addr;
    sb.sandbox
        .set_fault(Some(Fault::Latency(Duration::from_secs(1))));
    let url = proxy.url("/v2/echo/slow");
    let in_flight = tokio::spawn(async move { bounded(Method::GET, &url, &[], "").await });
    let reached = eventually(CALL_BOUND, || async { sb.sandbox.count("total") == 1 }).await;
    assert!(reached, "the slow request reached the upstream");
    proxy.running.begin_shutdown();

    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/v2/echo/slow");

    let refused = eventually(CALL_BOUND, || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "new connections are refused after shutdown");
    tokio::time::timeout(CALL_BOUND, proxy.running.wait())
        .await
        .expect("drain ends")
        .expect("clean stop");
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[server]\nmax_request_body = \"1MiB\"")
        .start()
        .await;
    let declared = "x".repeat(2 * 1024 * 1024);
    let reply = bounded(Method::POST, &proxy.url("/v2/echo"), &[], &declared).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    assert_envelope(&reply.json());

    // Chunked, so the size is only known once the limit is passed mid-stream.
    let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..32)
        .map(|_| Ok(Frame::data(Bytes::from(vec![b'y'; 64 * 1024]))))
        .collect();
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(proxy.url("/v2/echo"))
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let resp = tokio::time::timeout(CALL_BOUND, client.request(req))
        .await
        .expect("bounded")
        .expect("answer");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        sb.sandbox.count("echo"),
        0,
        "no oversized body was delivered"
    );
}

#[tokio::test]
async fn connections_that_send_nothing_are_closed_and_free_their_slot() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[server]\nheader_read_timeout = \"300ms\"\nmax_connections = 2")
        .start()
        .await;
    // Two silent sockets take every slot: one says nothing, one stops inside the h2 preface.
    let mut silent = TcpStream::connect(proxy.running.addr).await.unwrap();
    let mut half_h2 = TcpStream::connect(proxy.running.addr).await.unwrap();
    half_h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for sock in [&mut silent, &mut half_h2] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .expect("the proxy closes a silent connection");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed, not answered: {read:?}"
        );
    }
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        proxy.get("/v2/accounts/slow1/balance", &[]),
    )
    .await
    .expect("a real client gets a slot again");
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_slow_request_in_flight_outlives_the_idle_timeout() {
    let sb = sandbox(sandbox_config()).await;
    sb.sandbox
        .set_fault(Some(Fault::Latency(Duration::from_millis(1200))));
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[server]\nheader_read_timeout = \"200ms\"\nidle_timeout = \"200ms\"")
        .start()
        .await;
    let r = proxy.get("/v2/echo/slow", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// Reads one HTTP/1.1 answer (head and `Content-Length` body) from `sock`; `None` once closed.
async fn read_answer(sock: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return Some(text);
            }
        }
        match tokio::time::timeout(CALL_BOUND, sock.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within {CALL_BOUND:?}"),
        }
    }
}

#[tokio::test]
async fn upstream_connections_are_reused_across_calls_and_kept_within_the_pool_limits() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[upstream]\npool_idle_timeout = \"300ms\"\npool_max_idle_per_host = 2")
        .start()
        .await;
    for i in 0..20 {
        let r = proxy.get(&format!("/v2/echo/seq{i}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        sb.sandbox.count("connections"),
        1,
        "sequential calls share one connection"
    );
    // Eight at once open up to eight; only two stay idle afterwards.
    let urls: Vec<String> = (0..8)
        .map(|i| proxy.url(&format!("/v2/echo/par{i}")))
        .collect();
    for r in futures_util::future::join_all(urls.iter().map(|u| get(u, &[]))).await {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let opened = sb.sandbox.count("connections");
    assert!((2..=9).contains(&opened), "{opened} connections");
    for i in 0..4 {
        assert_eq!(
            proxy.get(&format!("/v2/echo/again{i}"), &[]).await.status,
            200
        );
    }
    assert_eq!(
        sb.sandbox.count("connections"),
        opened,
        "an idle one was reused"
    );
    // Past pool_idle_timeout an idle connection is not used again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.get("/v2/echo/late", &[]).await.status, 200);
    assert_eq!(sb.sandbox.count("connections"), opened + 1);
}

#[tokio::test]
async fn an_upstream_that_closes_idle_connections_costs_no_failed_call() {
    // An upstream that answers one request per connection and then closes it without saying
    // so (no `Connection: close`): every pooled connection is dead by the next call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"status":"successful","message":"ok","data":{"id":"x"}}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    let proxy = ProxyBuilder::new(&format!("http://{addr}")).start().await;
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = proxy.get(&format!("/v2/accounts/a{i}/identity"), &[]).await;
        assert_eq!(r.status, 200, "call {i}: {}", r.text());
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_head_left_incomplete_is_closed_but_an_idle_keep_alive_connection_is_not() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[server]\nheader_read_timeout = \"300ms\"\nidle_timeout = \"30s\"")
        .start()
        .await;
    let request = b"GET /v2/echo/keep HTTP/1.1\r\nHost: proxy\r\n\r\n";
    // Idle for several header timeouts between requests: kept (idle_timeout applies).
    let mut idle = TcpStream::connect(proxy.running.addr).await.unwrap();
    idle.write_all(request).await.unwrap();
    assert!(read_answer(&mut idle)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    idle.write_all(request).await.unwrap();
    let second = read_answer(&mut idle).await;
    assert!(
        second
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
        "kept alive: {second:?}"
    );
    // A head that stops halfway after a first request: closed within two header timeouts.
    let mut slow = TcpStream::connect(proxy.running.addr).await.unwrap();
    slow.write_all(request).await.unwrap();
    assert!(read_answer(&mut slow)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    slow.write_all(b"GET /v2/echo/slow HTTP/1.1\r\nHost: pr")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert_eq!(read_answer(&mut slow).await, None, "closed, not answered");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed by the header timeout, not the idle one"
    );
}

#[tokio::test]
async fn a_slow_reader_gets_a_large_answer_whole_and_its_connection_is_reused() {
    // A client with an 8 KiB receive buffer reads a 2 MiB answer with pauses: the proxy's
    // writes to it back up mid-body while the pooled upstream connection has the rest to give.
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let upload = vec![b'z'; 2 * 1024 * 1024];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let mut sock = socket.connect(proxy.running.addr).await.unwrap();
    let head = format!(
        "POST /v2/echo/slow HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        proxy.running.addr,
        upload.len()
    );
    let exchange = async {
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&upload).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8 * 1024];
        let mut reads = 0u32;
        loop {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            reads += 1;
            if reads.is_multiple_of(8) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        got
    };
    // It takes well under a second; a wake the pool loses shows as a stall until some timer
    // polls the connection again (10 s, measured with the body's wakes dropped).
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("the slow read finishes: no stall while the client's socket is full");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(&raw[split..])
    } else {
        raw[split..].to_vec()
    };
    let echo: Value = serde_json::from_slice(&body).expect("the whole JSON answer");
    assert!(
        echo["body"].as_str().map(str::as_bytes) == Some(&upload[..]),
        "the body changed on the way"
    );
    let after = proxy.get("/v2/echo/next", &[]).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(
        sb.sandbox.count("connections"),
        1,
        "the connection went back to the pool once the answer was read whole"
    );
}

/// The payload of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size");
        let size = std::str::from_utf8(&raw[..eol]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// A client socket whose first `skip` bytes were already sent by hand: writes report them
/// written without sending them again.
struct SentAlready {
    inner: TcpStream,
    skip: usize,
}

impl tokio::io::AsyncRead for SentAlready {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SentAlready {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_first_write_that_does_not_tell_the_protocol_yet_is_still_understood() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let addr = proxy.running.addr;

    // HTTP/1: a "P" alone could begin the HTTP/2 preface; the rest makes it a POST.
    let mut h1 = TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    h1.write_all(
        b"OST /v2/echo/split HTTP/1.1\r\nHost: proxy\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await
    .unwrap();
    let answer = read_answer(&mut h1).await.expect("an answer over HTTP/1");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"body\":\"hi\""), "{answer}");

    // HTTP/2: the preface arrives in two pieces.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(&preface[..16]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let io = hyper_util::rt::TokioIo::new(SentAlready {
        inner: raw,
        skip: 16,
    });
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("an HTTP/2 handshake");
    tokio::spawn(conn);
    let req = Request::get(proxy.url("/v2/accounts/acc1/balance"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(CALL_BOUND, sender.send_request(req))
        .await
        .expect("bounded")
        .expect("an answer over HTTP/2");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("\"balance\""));
}

#[tokio::test]
async fn shutdown_closes_idle_and_silent_connections_without_waiting_for_their_timeouts() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[server]\nheader_read_timeout = \"60s\"\nidle_timeout = \"60s\"\ndrain_timeout = \"60s\"")
        .start()
        .await;
    let addr = proxy.running.addr;
    // One connection that has sent nothing, one idle after a keep-alive answer.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /v2/accounts/acc1/balance HTTP/1.1\r\nHost: proxy\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answer(&mut idle).await.expect("a first answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    proxy.running.begin_shutdown();
    tokio::time::timeout(CALL_BOUND, proxy.running.wait())
        .await
        .expect("the drain does not wait for idle or silent connections")
        .expect("clean stop");
    for sock in [&mut silent, &mut idle] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(CALL_BOUND, sock.read(&mut buf))
            .await
            .expect("closed by the drain");
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    }
}
