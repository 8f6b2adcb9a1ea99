//! End-to-end tests of the Mono sandbox over real loopback sockets.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mono_proxy::sandbox::{
    self_signed_cert, Fault, JobState, RunningSandbox, Sandbox, SandboxConfig,
};
use serde_json::Value;
use support::{client, eventually, Reply};
use tokio::sync::mpsc;

use support::KEY;

fn fast_config() -> SandboxConfig {
    SandboxConfig {
        job_delay: Duration::from_millis(200),
        ..SandboxConfig::default()
    }
}

async fn start(cfg: SandboxConfig) -> RunningSandbox {
    Sandbox::new(cfg).spawn().await.expect("sandbox starts")
}

async fn send<C>(
    client: &Client<C, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, hyper_util::client::legacy::Error>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client
        .request(req.body(Full::new(body.into())).expect("valid request"))
        .await?;
    Ok(Reply::read(resp).await.expect("body reads"))
}

/// GET with the right key and any extra headers.
async fn get(sb: &RunningSandbox, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut headers = vec![("mono-sec-key", KEY)];
    headers.extend_from_slice(extra);
    let url = format!("{}{path}", sb.base_url(false));
    send(&client(), Method::GET, &url, &headers, Bytes::new())
        .await
        .expect("request succeeds")
}

#[tokio::test]
async fn wrong_key_is_401_with_monos_failed_envelope() {
    let sb = start(fast_config()).await;
    let url = format!("{}/v2/accounts/acc1/balance", sb.base_url(false));
    let reply = send(
        &client(),
        Method::GET,
        &url,
        &[("mono-sec-key", "live_sk_wrong")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let body = reply.json();
    assert_eq!(body["status"], "failed");
    assert_eq!(body["data"], Value::Null);
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));

    let missing = send(&client(), Method::GET, &url, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(sb.sandbox.count("unauthorized"), 2);
    assert_eq!(sb.sandbox.count("balance"), 0);
    assert_eq!(sb.sandbox.count("total"), 2);
}

#[tokio::test]
async fn balance_has_the_seed_document_shape_and_stable_bytes() {
    let sb = start(fast_config()).await;
    let first = get(&sb, "/v2/accounts/666b166ce06be73/balance", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("content-type"), Some("application/json"));
    let text = std::str::from_utf8(&first.body).unwrap();
    assert!(text.starts_with(
        r#"{"status":"successful","message":"Request was succesfully completed","timestamp":""#
    ));
    assert!(text.contains(r#""data":{"id":"666b166ce06be73","name":""#));
    let data = &first.json()["data"];
    assert!(data["balance"].is_i64());
    assert_eq!(data["currency"], "NGN");
    assert_eq!(data["account_number"].as_str().unwrap().len(), 10);

    let second = get(&sb, "/v2/accounts/666b166ce06be73/balance", &[]).await;
    assert_eq!(first.body, second.body, "same data gives identical bytes");
    assert_eq!(sb.sandbox.count("balance"), 2);
    assert!(second.header("x-job-id").is_none());

    sb.sandbox.set_balance("666b166ce06be73", 1);
    let third = get(&sb, "/v2/accounts/666b166ce06be73/balance", &[]).await;
    assert_eq!(third.json()["data"]["balance"], 1);
    assert_ne!(third.json()["timestamp"], first.json()["timestamp"]);
}

#[tokio::test]
async fn details_and_passthrough_routes_answer_envelopes() {
    let sb = start(fast_config()).await;
    let details = get(&sb, "/v2/accounts/acc1", &[]).await;
    assert_eq!(details.status, StatusCode::OK);
    assert_eq!(details.json()["data"]["account"]["id"], "acc1");
    assert_eq!(sb.sandbox.count("details"), 1);

    let identity = get(&sb, "/v2/accounts/acc1/identity", &[]).await;
    assert_eq!(identity.status, StatusCode::OK);
    assert_eq!(identity.json()["status"], "successful");
    assert_eq!(get(&sb, "/v1/whatever", &[]).await.status, StatusCode::OK);
    assert_eq!(sb.sandbox.count("other"), 2);

    let missing = get(&sb, "/v2/accounts/missing-1/balance", &[]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["status"], "failed");

    let unknown = get(&sb, "/v2/nowhere", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(sb.sandbox.count("not_found"), 1);
}

#[tokio::test]
async fn transactions_pages_link_to_absolute_mono_urls() {
    let sb = start(fast_config()).await;
    let page1 = get(&sb, "/v2/accounts/acc1/transactions", &[]).await.json();
    assert_eq!(page1["meta"]["total"], 25);
    assert_eq!(page1["meta"]["page"], 1);
    assert_eq!(page1["meta"]["previous"], Value::Null);
    assert_eq!(
        page1["meta"]["next"],
        "https://api.withmono.com/v2/accounts/acc1/transactions?page=2"
    );
    assert_eq!(page1["data"].as_array().unwrap().len(), 20);
    let tx = &page1["data"][0];
    for field in [
        "id",
        "narration",
        "amount",
        "type",
        "balance",
        "date",
        "category",
    ] {
        assert!(!tx[field].is_null(), "transaction has {field}");
    }

    let page2 = get(&sb, "/v2/accounts/acc1/transactions?page=2", &[])
        .await
        .json();
    assert_eq!(page2["data"].as_array().unwrap().len(), 5);
    assert_eq!(page2["meta"]["next"], Value::Null);
    assert_eq!(
        page2["meta"]["previous"],
        "https://api.withmono.com/v2/accounts/acc1/transactions?page=1"
    );

    let all = get(
        &sb,
        "/v2/accounts/acc1/transactions?paginate=false&type=debit&narration=x",
        &[],
    )
    .await
    .json();
    assert_eq!(all["data"].as_array().unwrap().len(), 25);
    assert_eq!(sb.sandbox.count("transactions"), 3);
}

#[tokio::test]
async fn second_realtime_call_in_window_keeps_the_job_and_reports_it_finished() {
    let sb = start(fast_config()).await;
    sb.sandbox.stage_balance("acc-rt", 777);
    let path = "/v2/accounts/acc-rt/balance";
    let first = get(&sb, path, &[("X-Realtime", "TRUE")]).await;
    assert_eq!(first.status, StatusCode::OK);
    let job_id = first.header("x-job-id").unwrap().to_owned();
    assert!(job_id.starts_with("jobs.accounts_"));
    assert_eq!(job_id.len(), "jobs.accounts_".len() + 16);
    assert_eq!(first.header("x-job-status"), Some("processing"));
    assert_eq!(first.header("x-has-new-data"), None);

    let repeat = get(&sb, path, &[("x-realtime", "true")]).await;
    assert_eq!(repeat.header("x-job-id"), Some(job_id.as_str()));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 1);
    assert_eq!(sb.sandbox.count("balance"), 0);

    let finished = eventually(Duration::from_secs(5), || async {
        let r = get(&sb, path, &[("x-realtime", "true")]).await;
        r.header("x-job-status") == Some("finished")
            && r.header("x-job-id") == Some(job_id.as_str())
            && r.header("x-has-new-data") == Some("true")
            && r.json()["data"]["balance"] == 777
    })
    .await;
    assert!(
        finished,
        "job finishes after job_delay with the staged balance"
    );
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    let job = sb.sandbox.job(&job_id).unwrap();
    assert_eq!(job.status, JobState::Finished);
    assert!(job.has_new_data);
}

#[tokio::test]
async fn realtime_after_the_window_starts_a_new_job() {
    let sb = start(SandboxConfig {
        job_delay: Duration::from_millis(50),
        window: Duration::from_millis(300),
        ..SandboxConfig::default()
    })
    .await;
    let path = "/v2/accounts/acc2/transactions";
    let first = get(&sb, path, &[("x-realtime", "true")]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = get(&sb, path, &[("x-realtime", "true")]).await;
    assert_ne!(first.header("x-job-id"), second.header("x-job-id"));
    assert_eq!(second.header("x-job-status"), Some("processing"));
    assert_eq!(sb.sandbox.count("transactions_realtime"), 2);
}

#[tokio::test]
async fn job_endpoint_reports_status_in_monos_envelope() {
    let sb = start(fast_config()).await;
    let rt = get(
        &sb,
        "/v2/accounts/acc3/transactions",
        &[("x-realtime", "true")],
    )
    .await;
    let job_id = rt.header("x-job-id").unwrap().to_owned();
    let job_path = format!("/v2/accounts/acc3/jobs/{job_id}");

    let job = get(&sb, &job_path, &[]).await.json();
    assert_eq!(job["message"], "Job execution completed");
    assert_eq!(job["data"]["id"], job_id.as_str());
    assert_eq!(job["data"]["name"], "jobs.accounts.sync_statement");
    assert_eq!(job["data"]["type"], "statement");
    assert_eq!(job["data"]["account"], "acc3");

    let finished = eventually(Duration::from_secs(5), || async {
        let data = get(&sb, &job_path, &[]).await.json()["data"].clone();
        data["job_status"] == "finished" && data["synced"] == true
    })
    .await;
    assert!(finished);
    assert_eq!(
        get(&sb, "/v2/accounts/acc3/jobs/jobs.accounts_nope", &[])
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert!(sb.sandbox.count("job") >= 3);
}

#[tokio::test]
async fn reauth_account_job_fails_with_reauth_required() {
    let sb = start(fast_config()).await;
    let rt = get(
        &sb,
        "/v2/accounts/reauth-42/balance",
        &[("x-realtime", "true")],
    )
    .await;
    assert_eq!(rt.status, StatusCode::OK);
    let job_path = format!(
        "/v2/accounts/reauth-42/jobs/{}",
        rt.header("x-job-id").unwrap()
    );
    let failed = eventually(Duration::from_secs(5), || async {
        let data = get(&sb, &job_path, &[]).await.json()["data"].clone();
        data["job_status"] == "failed" && data["reauth_required"] == true
    })
    .await;
    assert!(failed);
    let repeat = get(
        &sb,
        "/v2/accounts/reauth-42/balance",
        &[("x-realtime", "true")],
    )
    .await;
    assert_eq!(repeat.header("x-job-status"), Some("failed"));
}

/// A tiny webhook receiver: forwards `(headers, body)` of every POST to a channel.
async fn webhook_receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Value)>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await?.to_bytes();
                        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let _ = tx.send((headers, json));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn finished_job_sends_both_webhooks_with_the_secret() {
    let (url, mut rx) = webhook_receiver().await;
    let sb = start(SandboxConfig {
        webhook_url: Some(url),
        webhook_secret: Some("whsec".to_owned()),
        sync_changes_data: true,
        ..fast_config()
    })
    .await;
    let before = sb.sandbox.balance("acc-wh");
    let rt = get(
        &sb,
        "/v2/accounts/acc-wh/balance",
        &[("x-realtime", "true")],
    )
    .await;
    let job_id = rt.header("x-job-id").unwrap().to_owned();

    let wait = Duration::from_secs(5);
    let (headers, update) = tokio::time::timeout(wait, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(headers["mono-webhook-secret"], "whsec");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(update["event"], "mono.accounts.jobs.update");
    assert!(update["event_id"].is_string());
    assert_eq!(update["data"]["id"], job_id.as_str());
    assert_eq!(update["data"]["name"], "jobs.accounts.sync_balance");
    assert_eq!(update["data"]["status"], "finished");

    let (_, updated) = tokio::time::timeout(wait, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated["event"], "mono.events.account_updated");
    assert_eq!(updated["data"]["account"]["_id"], "acc-wh");
    assert_eq!(updated["data"]["account"]["balance"], before + 100);
    assert_eq!(updated["data"]["meta"]["sync_status"], "SUCCESSFUL");
    assert_eq!(updated["data"]["meta"]["data_status"], "AVAILABLE");
    assert_eq!(updated["data"]["meta"]["job_id"], job_id.as_str());
    assert_eq!(updated["data"]["meta"]["has_new_data"], true);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sb.sandbox.count("webhooks_sent") == 2
        })
        .await
    );
}

#[tokio::test]
async fn unreachable_webhook_url_is_counted_as_failed() {
    // Bind then drop a listener so the port is (very likely) closed.
    let port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let sb = start(SandboxConfig {
        webhook_url: Some(format!("http://127.0.0.1:{port}/hooks")),
        ..fast_config()
    })
    .await;
    get(
        &sb,
        "/v2/accounts/fail-1/balance",
        &[("x-realtime", "true")],
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            sb.sandbox.count("webhooks_failed") == 2
        })
        .await
    );
}

#[tokio::test]
async fn status_fault_applies_the_given_number_of_times() {
    let sb = start(fast_config()).await;
    sb.sandbox.set_fault_spec(Some(Fault::Status(503).times(2)));
    let path = "/v2/accounts/acc1/balance";
    for _ in 0..2 {
        let reply = get(&sb, path, &[]).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(reply.json()["status"], "failed");
    }
    assert_eq!(get(&sb, path, &[]).await.status, StatusCode::OK);
    assert_eq!(sb.sandbox.count("faulted"), 2);
    assert_eq!(sb.sandbox.count("balance"), 1);
    assert_eq!(sb.sandbox.count("total"), 3);
}

#[tokio::test]
async fn fault_limited_to_a_route_spares_the_others() {
    let sb = start(fast_config()).await;
    sb.sandbox
        .set_fault_spec(Some(Fault::Status(500).always().route("transactions")));
    assert_eq!(
        get(&sb, "/v2/accounts/a/transactions", &[]).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&sb, "/v2/accounts/a/balance", &[]).await.status,
        StatusCode::OK
    );
    sb.sandbox.set_fault(None);
    assert_eq!(
        get(&sb, "/v2/accounts/a/transactions", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn reset_fault_drops_the_connection_without_a_response() {
    let sb = start(fast_config()).await;
    sb.sandbox.set_fault(Some(Fault::Reset));
    let url = format!("{}/v2/accounts/acc1/balance", sb.base_url(false));
    let result = send(
        &client(),
        Method::GET,
        &url,
        &[("mono-sec-key", KEY)],
        Bytes::new(),
    )
    .await;
    assert!(result.is_err(), "reset gives the client an error");
    assert_eq!(sb.sandbox.count("faulted"), 1);
    sb.sandbox.set_fault(None);
    assert_eq!(
        get(&sb, "/v2/accounts/acc1/balance", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn hang_fault_never_answers_and_does_not_block_shutdown() {
    let sb = start(fast_config()).await;
    sb.sandbox.set_fault(Some(Fault::Hang));
    let url = format!("{}/v2/accounts/acc1/balance", sb.base_url(false));
    let c = client();
    let call = send(
        &c,
        Method::GET,
        &url,
        &[("mono-sec-key", KEY)],
        Bytes::new(),
    );
    let timed_out = tokio::time::timeout(Duration::from_millis(300), call).await;
    assert!(timed_out.is_err(), "hanging request gets no answer");

    // Leave a hanging request in flight, then stop: shutdown must still be prompt.
    let pending = tokio::spawn({
        let c = c.clone();
        let url = url.clone();
        async move {
            send(
                &c,
                Method::GET,
                &url,
                &[("mono-sec-key", KEY)],
                Bytes::new(),
            )
            .await
        }
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            sb.sandbox.count("faulted") == 2
        })
        .await
    );
    let stopped = tokio::time::timeout(Duration::from_secs(5), sb.stop()).await;
    assert!(matches!(stopped, Ok(Ok(()))), "sandbox stops promptly");
    let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("client sees the connection close");
    assert!(outcome.unwrap().is_err());
}

#[tokio::test]
async fn latency_fault_delays_then_answers() {
    let sb = start(fast_config()).await;
    sb.sandbox
        .set_fault_spec(Some(Fault::Latency(Duration::from_millis(100)).times(1)));
    let started = std::time::Instant::now();
    assert_eq!(
        get(&sb, "/v2/accounts/a/balance", &[]).await.status,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(sb.sandbox.fault(), None);
}

#[tokio::test]
async fn echo_returns_method_query_headers_and_a_large_body() {
    let sb = start(fast_config()).await;
    let body: String = "abcdefghij".repeat(300 * 1024); // 3 MiB
    let url = format!("{}/v2/echo/some/path?b=2&a=one", sb.base_url(false));
    let reply = send(
        &client(),
        Method::PUT,
        &url,
        &[("mono-sec-key", KEY), ("X-Custom", "Value")],
        body.clone(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let echo = reply.json();
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/v2/echo/some/path");
    assert_eq!(echo["query"], "b=2&a=one");
    assert_eq!(echo["headers"]["x-custom"], "Value");
    assert_eq!(echo["body"].as_str().unwrap().len(), body.len());
    assert_eq!(sb.sandbox.count("echo"), 1);

    let recorded = sb.sandbox.requests();
    let last = recorded.last().unwrap();
    assert_eq!(last.method, "PUT");
    assert_eq!(last.query.as_deref(), Some("b=2&a=one"));
    assert_eq!(last.header("x-custom"), Some("Value"));
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let sb = start(fast_config()).await;
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let url = format!("{}/v2/accounts/acc1/balance", sb.base_url(false));
    let reply = send(
        &h2,
        Method::GET,
        &url,
        &[("mono-sec-key", KEY)],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn control_routes_need_no_key_and_are_not_counted() {
    let sb = start(fast_config()).await;
    let base = sb.base_url(false);
    let c = client();
    let fault = r#"{"kind":"status","status":502,"times":1}"#;
    let set = send(
        &c,
        Method::POST,
        &format!("{base}/__sandbox/fault"),
        &[],
        fault,
    )
    .await
    .unwrap();
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        get(&sb, "/v2/accounts/a/balance", &[]).await.status,
        StatusCode::BAD_GATEWAY
    );

    let bad = send(
        &c,
        Method::POST,
        &format!("{base}/__sandbox/fault"),
        &[],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let counts = send(
        &c,
        Method::GET,
        &format!("{base}/__sandbox/counts"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(counts["total"], 1);
    assert_eq!(counts["faulted"], 1);
    assert_eq!(counts["balance_realtime_repeat"], 0);

    let requests = send(
        &c,
        Method::GET,
        &format!("{base}/__sandbox/requests"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap()
    .json();
    assert_eq!(requests.as_array().unwrap().len(), 1);
    assert_eq!(requests[0]["path"], "/v2/accounts/a/balance");
    let sent_key = requests[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "mono-sec-key")
        .unwrap();
    assert_eq!(sent_key[1], "[redacted]");

    let reset = send(
        &c,
        Method::POST,
        &format!("{base}/__sandbox/reset"),
        &[],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reset.status, StatusCode::OK);
    assert_eq!(sb.sandbox.count("total"), 0);
    assert!(sb.sandbox.requests().is_empty());
}

#[tokio::test]
async fn tls_serving_works_with_a_self_signed_cert() {
    let (cert_pem, key_pem) = self_signed_cert(&["localhost", "127.0.0.1"]);
    let sb = Sandbox::new(fast_config())
        .spawn_tls(&cert_pem, &key_pem)
        .await
        .unwrap();

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);

    let url = format!(
        "https://localhost:{}/v2/accounts/acc1/balance",
        sb.addr.port()
    );
    let req = Request::get(&url)
        .header("mono-sec-key", KEY)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_2, "alpn picks h2");
    let reply = send(
        &c,
        Method::GET,
        &url,
        &[("mono-sec-key", KEY)],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(reply.json()["data"]["id"], "acc1");
    sb.stop().await.unwrap();
}
