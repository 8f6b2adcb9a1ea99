//! Mono's webhooks (spec §6) over real sockets: authentication, limits, job records, cache
//! invalidation, and relaying to app targets that may be down.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use mono_proxy::sandbox::{Sandbox, SandboxConfig};
use serde_json::{json, Value};
use support::receiver::Receiver;
use support::*;
use tokio::net::TcpListener;

/// `[webhook] forward_to = [targets…]` plus any further TOML.
fn forwarding(targets: &[String], extra: &str) -> String {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!("{extra}\n[webhook]\nforward_to = [{}]", list.join(", "))
}

/// Posts raw bytes to the proxy's webhook path with the given secret header (if any).
async fn post_raw(proxy: &TestProxy, secret: Option<&str>, body: impl Into<Bytes>) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(s) = secret {
        headers.push(("mono-webhook-secret", s));
    }
    send(Method::POST, &proxy.url("/webhooks/mono"), &headers, body).await
}

/// Sum of `mono_proxy_webhook_deliveries_total` lines with `result="…"`.
fn deliveries(text: &str, result: &str) -> f64 {
    let label = format!("result=\"{result}\"");
    text.lines()
        .filter(|l| l.starts_with("mono_proxy_webhook_deliveries_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn job_update(event_id: &str, job_id: &str, status: &str) -> Value {
    json!({
        "event": "mono.accounts.jobs.update",
        "event_id": event_id,
        "data": {"id": job_id, "name": "jobs.accounts.sync_balance", "status": status}
    })
}

fn account_updated(event_id: &str, account: &str, meta: Value) -> Value {
    json!({
        "event": "mono.events.account_updated",
        "event_id": event_id,
        "data": {"account": {"_id": account, "name": "Test", "balance": 1}, "meta": meta}
    })
}

/// Starts a realtime job for `account`'s balance; returns its job id.
async fn start_job(proxy: &TestProxy, account: &str) -> String {
    let r = proxy
        .realtime(&format!("/v2/accounts/{account}/balance"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-job-status"), Some("processing"));
    r.header("x-job-id").expect("x-job-id").to_string()
}

#[tokio::test]
async fn bad_secret_is_refused_and_nothing_is_applied_or_relayed() {
    let sb = slow_jobs().await;
    let target = Receiver::start().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[target.url()], "[jobs]\npoll = false"))
        .start()
        .await;
    let job = start_job(&proxy, "wh1").await;
    let event = job_update("bad-1", &job, "finished");
    let wrong = post_raw(&proxy, Some("not-the-secret"), event.to_string()).await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(wrong.json()["status"], "failed");
    let missing = post_raw(&proxy, None, event.to_string()).await;
    assert_eq!(missing.status, 401);
    assert_eq!(target.count(), 0);
    let again = proxy.realtime("/v2/accounts/wh1/balance").await;
    assert_eq!(again.header("x-job-status"), Some("processing"));
    let text = proxy.metrics().await;
    assert_eq!(deliveries(&text, "rejected"), 2.0, "{text}");
    assert_eq!(deliveries(&text, "received"), 0.0, "{text}");
    assert_eq!(deliveries(&text, "applied"), 0.0, "{text}");
}

#[tokio::test]
async fn good_secret_relays_the_identical_body_and_the_secret_header() {
    let sb = sandbox(sandbox_config()).await;
    let target = Receiver::start().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[target.url()], ""))
        .start()
        .await;
    // Odd spacing and key order: the relay must pass the bytes, not a re-serialisation.
    let raw = "{ \"event_id\":\"g-1\",  \"event\": \"mono.accounts.jobs.update\", \
               \"data\": {\"status\":\"finished\",\"id\":\"jobs.accounts_unknown\"} }";
    let r = post_raw(&proxy, Some(WEBHOOK_SECRET), raw).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(target.bodies(), vec![Bytes::from(raw)]);
    let h = target.headers(0);
    assert_eq!(
        h.get("mono-webhook-secret").and_then(|v| v.to_str().ok()),
        Some(WEBHOOK_SECRET)
    );
    assert!(h.get("mono-sec-key").is_none());
    let text = proxy.metrics().await;
    assert_eq!(deliveries(&text, "received"), 1.0, "{text}");
    assert_eq!(deliveries(&text, "applied"), 1.0, "{text}");
    assert_eq!(deliveries(&text, "relayed"), 1.0, "{text}");
    assert_eq!(deliveries(&text, "rejected"), 0.0, "{text}");
    assert_eq!(sb.sandbox.count("total"), 0, "a webhook never calls Mono");
}

#[tokio::test]
async fn failing_target_gets_502_then_the_retry_delivers_exactly_once_more() {
    let sb = sandbox(sandbox_config()).await;
    let target = Receiver::start().await;
    target.answer(500);
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[target.url()], ""))
        .start()
        .await;
    let body = job_update("r-1", "jobs.accounts_x", "finished").to_string();
    let first = post_raw(&proxy, Some(WEBHOOK_SECRET), body.clone()).await;
    assert_eq!(first.status, 502, "{}", first.text());
    assert_eq!(target.count(), 1);
    target.answer(200);
    let retry = post_raw(&proxy, Some(WEBHOOK_SECRET), body.clone()).await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(target.count(), 2);
    assert_eq!(target.bodies()[1], Bytes::from(body.clone()));
    // Mono retrying once more after a 200 (it should not, but may) relays nothing new.
    let third = post_raw(&proxy, Some(WEBHOOK_SECRET), body).await;
    assert_eq!(third.status, 200);
    assert_eq!(target.count(), 2);
    let text = proxy.metrics().await;
    assert_eq!(deliveries(&text, "received"), 3.0, "{text}");
    assert_eq!(deliveries(&text, "applied"), 1.0, "{text}");
    assert_eq!(deliveries(&text, "relayed"), 1.0, "{text}");
    assert_eq!(deliveries(&text, "relay_failed"), 1.0, "{text}");
}

#[tokio::test]
async fn target_not_listening_gets_502_and_the_retry_delivers_once_it_is_back() {
    let sb = sandbox(sandbox_config()).await;
    let addr = free_addr();
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[format!("http://{addr}/hook")], ""))
        .start()
        .await;
    let body = job_update("down-1", "jobs.accounts_y", "finished").to_string();
    let first = post_raw(&proxy, Some(WEBHOOK_SECRET), body.clone()).await;
    assert_eq!(first.status, 502, "{}", first.text());
    let target = Receiver::start_at(addr).await;
    let retry = post_raw(&proxy, Some(WEBHOOK_SECRET), body.clone()).await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!(target.bodies(), vec![Bytes::from(body)]);
}

#[tokio::test]
async fn retry_relays_only_to_the_target_that_failed() {
    let sb = sandbox(sandbox_config()).await;
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.answer(500);
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[good.url(), bad.url()], ""))
        .start()
        .await;
    let body = job_update("two-1", "jobs.accounts_z", "finished").to_string();
    let first = post_raw(&proxy, Some(WEBHOOK_SECRET), body.clone()).await;
    assert_eq!(first.status, 502, "{}", first.text());
    assert_eq!((good.count(), bad.count()), (1, 1));
    bad.answer(200);
    let retry = post_raw(&proxy, Some(WEBHOOK_SECRET), body).await;
    assert_eq!(retry.status, 200, "{}", retry.text());
    assert_eq!((good.count(), bad.count()), (1, 2));
}

#[tokio::test]
async fn job_update_webhook_finishes_the_record_without_asking_mono() {
    let sb = slow_jobs().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll = false")
        .start()
        .await;
    let job = start_job(&proxy, "wh2").await;
    let before = proxy.realtime("/v2/accounts/wh2/balance").await;
    assert_eq!(before.header("x-job-status"), Some("processing"));
    assert_eq!(before.header("x-cache"), Some("COLLAPSED"));
    let r = proxy.webhook(&job_update("ju-1", &job, "finished")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let after = proxy.realtime("/v2/accounts/wh2/balance").await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(after.header("x-job-id"), Some(job.as_str()));
    assert_eq!(after.header("x-job-status"), Some("finished"));
    assert_eq!(sb.sandbox.count("balance_realtime"), 1);
    assert_eq!(sb.sandbox.count("balance_realtime_repeat"), 0);
    assert_eq!(sb.sandbox.count("job"), 0, "the proxy never asked Mono");
    // The finished sync dropped the cached (pre-sync) body, so the collapsed answer carries
    // one plain refetch of the synced data (spec §3.1), never a realtime call or a job poll.
    assert_eq!(sb.sandbox.count("balance"), 1);
    let status = proxy
        .get(&format!("/v2/accounts/wh2/jobs/{job}"), &[])
        .await;
    assert_eq!(status.json()["data"]["job_status"], "finished");
    assert_eq!(sb.sandbox.count("job"), 0, "terminal job answered locally");
}

#[tokio::test]
async fn successful_account_update_invalidates_the_cached_balance() {
    let sb = sandbox(sandbox_config()).await;
    let proxy = ProxyBuilder::for_sandbox(&sb).start().await;
    let path = "/v2/accounts/wh3/balance";
    assert_eq!(proxy.get(path, &[]).await.header("x-cache"), Some("MISS"));
    assert_eq!(proxy.get(path, &[]).await.header("x-cache"), Some("HIT"));
    let event = account_updated(
        "au-1",
        "wh3",
        json!({"sync_status": "SUCCESSFUL", "data_status": "AVAILABLE", "has_new_data": true}),
    );
    let r = proxy.webhook(&event).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let next = proxy.get(path, &[]).await;
    assert_eq!(next.header("x-cache"), Some("MISS"));
    assert_eq!(next.header("x-has-new-data"), Some("true"));
    assert_eq!(sb.sandbox.count("balance"), 2);
}

#[tokio::test]
async fn reauthorisation_required_fails_the_job_with_reauth_required() {
    let sb = slow_jobs().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml("[jobs]\npoll = false")
        .start()
        .await;
    let job = start_job(&proxy, "wh4").await;
    let event = account_updated(
        "ra-1",
        "wh4",
        json!({"sync_status": "REAUTHORISATION_REQUIRED", "data_status": "FAILED", "job_id": job}),
    );
    let r = proxy.webhook(&event).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let collapsed = proxy.realtime("/v2/accounts/wh4/balance").await;
    assert_eq!(collapsed.header("x-job-status"), Some("failed"));
    let status = proxy
        .get(&format!("/v2/accounts/wh4/jobs/{job}"), &[])
        .await;
    assert_eq!(status.status, 200, "{}", status.text());
    assert_eq!(status.json()["data"]["job_status"], "failed");
    assert_eq!(status.json()["data"]["reauth_required"], true);
    assert_eq!(sb.sandbox.count("job"), 0, "answered from the record");
}

#[tokio::test]
async fn oversized_body_is_413() {
    let sb = sandbox(sandbox_config()).await;
    let target = Receiver::start().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[target.url()], ""))
        .start()
        .await;
    let padding = "x".repeat(2 * 1024 * 1024);
    let body = json!({"event": "mono.accounts.jobs.update", "pad": padding}).to_string();
    let r = post_raw(&proxy, Some(WEBHOOK_SECRET), body).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(target.count(), 0);
}

#[tokio::test]
async fn malformed_json_is_400() {
    let sb = sandbox(sandbox_config()).await;
    let target = Receiver::start().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[target.url()], ""))
        .start()
        .await;
    let r = post_raw(&proxy, Some(WEBHOOK_SECRET), "{\"event\": nope").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["status"], "failed");
    assert_eq!(target.count(), 0);
}

#[tokio::test]
async fn unknown_event_is_relayed_unchanged() {
    let sb = sandbox(sandbox_config()).await;
    let target = Receiver::start().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[target.url()], ""))
        .start()
        .await;
    let raw = r#"{"event":"mono.events.something_new","event_id":"u-1","data":{"x":[1,2,3]}}"#;
    let r = post_raw(&proxy, Some(WEBHOOK_SECRET), raw).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(target.bodies(), vec![Bytes::from(raw)]);
    let text = proxy.metrics().await;
    assert!(
        text.contains(r#"mono_proxy_webhook_deliveries_total{event="other",result="relayed"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn the_same_event_twice_changes_nothing_more() {
    let sb = slow_jobs().await;
    let target = Receiver::start().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[target.url()], "[jobs]\npoll = false"))
        .start()
        .await;
    let job = start_job(&proxy, "wh5").await;
    let event = job_update("twice-1", &job, "finished");
    assert_eq!(proxy.webhook(&event).await.status, 200);
    let once = proxy
        .get(&format!("/v2/accounts/wh5/jobs/{job}"), &[])
        .await
        .json()["data"]
        .clone();
    assert_eq!(proxy.webhook(&event).await.status, 200);
    let twice = proxy
        .get(&format!("/v2/accounts/wh5/jobs/{job}"), &[])
        .await
        .json()["data"]
        .clone();
    assert_eq!(once, twice);
    assert_eq!(once["job_status"], "finished");
    assert_eq!(target.count(), 1);
    let text = proxy.metrics().await;
    assert_eq!(deliveries(&text, "received"), 2.0, "{text}");
    assert_eq!(deliveries(&text, "applied"), 1.0, "{text}");
    assert_eq!(deliveries(&text, "relayed"), 1.0, "{text}");
}

#[tokio::test]
async fn without_a_configured_secret_every_webhook_is_401() {
    let sb = sandbox(sandbox_config()).await;
    let target = Receiver::start().await;
    let proxy = ProxyBuilder::for_sandbox(&sb)
        .toml(&forwarding(&[target.url()], ""))
        .env("MONO_WEBHOOK_SECRET", "")
        .start()
        .await;
    let body = job_update("ns-1", "jobs.accounts_n", "finished").to_string();
    let r = post_raw(&proxy, Some(WEBHOOK_SECRET), body.clone()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let empty = post_raw(&proxy, Some(""), body).await;
    assert_eq!(empty.status, 401, "{}", empty.text());
    assert_eq!(target.count(), 0);
    let text = proxy.metrics().await;
    assert_eq!(deliveries(&text, "rejected"), 2.0, "{text}");
}

#[tokio::test]
async fn sandbox_webhooks_flow_through_the_proxy_to_the_app() {
    // The sandbox needs the proxy's URL and the proxy the sandbox's: bind both first.
    let sb_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sb_addr = sb_listener.local_addr().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        webhook_url: Some(format!("http://{addr}/webhooks/mono")),
        webhook_secret: Some(WEBHOOK_SECRET.to_string()),
        ..sandbox_config()
    });
    let (stop_sb, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(sandbox.clone().serve(sb_listener, async move {
        let _ = stopped.await;
    }));
    let target = Receiver::start().await;
    let mut config = ProxyBuilder::new(&format!("http://{sb_addr}"))
        .toml(&forwarding(&[target.url()], "[jobs]\npoll = false"))
        .config();
    config.public_base_url = format!("http://{addr}");
    let running = mono_proxy::app::start(config, listener, admin)
        .await
        .expect("proxy starts");
    let proxy = TestProxy { running };

    let job = start_job(&proxy, "loop1").await;
    let relayed = eventually(Duration::from_secs(15), || async { target.count() >= 2 }).await;
    assert!(relayed, "the app got {} webhooks", target.count());
    let events: Vec<String> = target
        .bodies()
        .iter()
        .map(|b| serde_json::from_slice::<Value>(b).unwrap()["event"].to_string())
        .collect();
    assert!(events.contains(&"\"mono.accounts.jobs.update\"".to_string()));
    assert!(events.contains(&"\"mono.events.account_updated\"".to_string()));
    assert_eq!(sandbox.count("webhooks_sent"), 2);
    assert_eq!(sandbox.count("webhooks_failed"), 0);
    let after = proxy.realtime("/v2/accounts/loop1/balance").await;
    assert_eq!(after.header("x-job-id"), Some(job.as_str()));
    assert_eq!(after.header("x-job-status"), Some("finished"));
    assert_eq!(sandbox.count("balance_realtime"), 1);
    assert_eq!(
        sandbox.count("job"),
        0,
        "webhooks, not polls, finished the job"
    );
    let text = proxy.metrics().await;
    assert_eq!(deliveries(&text, "applied"), 2.0, "{text}");
    assert_eq!(deliveries(&text, "relayed"), 2.0, "{text}");

    proxy.stop().await;
    let _ = stop_sb.send(());
    serving.await.unwrap().unwrap();
}
