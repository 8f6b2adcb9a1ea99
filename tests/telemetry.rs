//! Traces of the real binary: an OTLP/HTTP receiver in the test decodes what the proxy exports
//! (with the protocol's own protobuf types) and checks the spans and their parents; the sandbox
//! sees the caller's trace id in `traceparent` on cache fills, realtime calls and job polls.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use mono_proxy::sandbox::Fault;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::binary::{Binary, WAIT};
use support::receiver::Receiver;
use support::*;

const FILL_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const FILL_PARENT: &str = "b7ad6b7169203331";
const REALTIME_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const LEADER_TRACE: &str = "11111111111111111111111111111111";
const WAITER_TRACE: &str = "22222222222222222222222222222222";
const HOOK_TRACE: &str = "33333333333333333333333333333333";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span the receiver got so far.
fn spans(receiver: &Receiver) -> Vec<Span> {
    receiver
        .bodies()
        .iter()
        .flat_map(|b| {
            ExportTraceServiceRequest::decode(b.as_ref())
                .expect("an OTLP protobuf export")
                .resource_spans
        })
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect()
}

/// The trace id and span id of a `traceparent` value.
fn ids(traceparent: &str) -> (String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_and_mono_sees_the_callers_trace_everywhere() {
    let receiver = Receiver::start().await;
    let sb = sandbox(sandbox_config()).await;
    let target = Receiver::start().await;
    let toml = format!(
        "[upstream]\nbase_url = \"{}\"\n[jobs]\npoll_interval = \"100ms\"\n[webhook]\nforward_to = [\"{}\"]\n[telemetry]\notlp_endpoint = \"http://{}\"\nexport_interval = \"200ms\"\nservice_name = \"proxy-under-test\"",
        sb.base_url(false),
        target.url(),
        receiver.addr
    );
    let proxy = Binary::start(
        &toml,
        &[
            ("MONO_SEC_KEY", KEY),
            ("MONO_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    )
    .await;

    // A cache fill in the caller's trace.
    let fill_parent = format!("00-{FILL_TRACE}-{FILL_PARENT}-01");
    let miss = get(
        &proxy.url("/v2/accounts/tr1/balance"),
        &[
            ("traceparent", fill_parent.as_str()),
            ("tracestate", "vendor=a"),
        ],
    )
    .await;
    assert_eq!(miss.header("x-cache"), Some("MISS"));
    // A realtime call, whose job the poller then follows, in another trace.
    let rt_parent = format!("00-{REALTIME_TRACE}-00f067aa0ba902b7-01");
    let realtime = get(
        &proxy.url("/v2/accounts/tr2/balance"),
        &[("x-realtime", "true"), ("traceparent", rt_parent.as_str())],
    )
    .await;
    assert_eq!(realtime.status, 200, "{}", realtime.text());
    let job_path = format!("/jobs/{}", realtime.header("x-job-id").expect("a job"));
    let (upstream, job_path) = (&sb.sandbox, &job_path);
    let polled = eventually(WAIT, || async move {
        upstream
            .requests()
            .iter()
            .any(|r| r.path.ends_with(job_path.as_str()))
    })
    .await;
    assert!(polled, "the job was never polled");

    // Two callers in two traces miss together: the one that waited links to the leader's fill.
    sb.sandbox.set_fault_spec(Some(
        Fault::Latency(Duration::from_millis(300)).route("balance"),
    ));
    let leader_url = proxy.url("/v2/accounts/tr3/balance");
    let first = tokio::spawn(async move {
        let tp = format!("00-{LEADER_TRACE}-1111111111111111-01");
        get(&leader_url, &[("traceparent", tp.as_str())]).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tp = format!("00-{WAITER_TRACE}-2222222222222222-01");
    let waited = get(
        &proxy.url("/v2/accounts/tr3/balance"),
        &[("traceparent", tp.as_str())],
    )
    .await;
    assert_eq!(first.await.unwrap().header("x-cache"), Some("MISS"));
    assert_eq!(
        waited.header("x-cache"),
        Some("COLLAPSED"),
        "{:?}",
        waited.headers
    );
    sb.sandbox.set_fault_spec(None);

    // A webhook applied and relayed in Mono's trace.
    let hook_parent = format!("00-{HOOK_TRACE}-3333333333333333-01");
    let hook = send(
        Method::POST,
        &proxy.url("/webhooks/mono"),
        &[
            ("mono-webhook-secret", WEBHOOK_SECRET),
            ("content-type", "application/json"),
            ("traceparent", hook_parent.as_str()),
        ],
        serde_json::json!({"event": "mono.events.account_updated", "data": {"account": {"_id": "tr4"}}}).to_string(),
    )
    .await;
    assert_eq!(hook.status, 200, "{}", hook.text());
    let relayed = target.headers(0);
    let relayed_tp = relayed
        .get("traceparent")
        .expect("traceparent on the relay")
        .to_str()
        .unwrap();
    assert_eq!(ids(relayed_tp).0, HOOK_TRACE);

    // What Mono saw: the caller's trace id on each call, with a span id of the proxy's own.
    let seen = sb.sandbox.requests();
    let parent_of = |path_end: &str| {
        let r = seen
            .iter()
            .find(|r| r.path.contains(path_end))
            .unwrap_or_else(|| panic!("no call to {path_end}"));
        let tp = r
            .header("traceparent")
            .expect("traceparent on every upstream call");
        (ids(tp), r.header("tracestate").map(str::to_string))
    };
    let ((fill_trace, fill_span), state) = parent_of("/tr1/balance");
    assert_eq!(fill_trace, FILL_TRACE);
    assert_ne!(fill_span, FILL_PARENT);
    assert_eq!(state.as_deref(), Some("vendor=a"));
    let ((rt_trace, _), _) = parent_of("/tr2/balance");
    assert_eq!(rt_trace, REALTIME_TRACE);
    let ((poll_trace, _), _) = parent_of("/jobs/");
    assert_eq!(
        poll_trace, REALTIME_TRACE,
        "a job poll joins the trace of the call that started the job"
    );

    // What the receiver got: the request's phases, parented as they ran.
    let exported = eventually(WAIT, || async {
        spans(&receiver)
            .iter()
            .any(|s| s.name == "upstream call" && hex(&s.span_id) == fill_span)
    })
    .await;
    assert!(
        exported,
        "the fill's upstream call span never arrived; got {:?}",
        spans(&receiver).iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let all = spans(&receiver);
    let by_id: HashMap<String, &Span> = all.iter().map(|s| (hex(&s.span_id), s)).collect();
    let parent = |s: &Span| by_id.get(&hex(&s.parent_span_id)).copied();
    let call = by_id[&fill_span];
    assert_eq!(hex(&call.trace_id), FILL_TRACE);
    let fill = parent(call).expect("the upstream call's parent was exported");
    assert_eq!(fill.name, "cache fill");
    let request = parent(fill).expect("the fill's parent");
    assert_eq!(request.name, "GET balance");
    assert_eq!(
        hex(&request.parent_span_id),
        FILL_PARENT,
        "the request span continues the caller's"
    );
    for phase in [
        "classify",
        "authorize",
        "cache lookup",
        "single-flight wait",
    ] {
        let child = all
            .iter()
            .find(|s| s.name == phase && hex(&s.trace_id) == FILL_TRACE)
            .unwrap_or_else(|| panic!("no {phase} span"));
        assert_eq!(hex(&child.parent_span_id), hex(&request.span_id), "{phase}");
    }
    let claim = all
        .iter()
        .find(|s| s.name == "store claim" && hex(&s.trace_id) == REALTIME_TRACE)
        .expect("a store claim span in the realtime trace");
    assert_eq!(
        parent(claim).map(|s| s.name.as_str()),
        Some("realtime call")
    );
    let linked = eventually(WAIT, || async {
        let all = spans(&receiver);
        let Some(fill) = all
            .iter()
            .find(|s| s.name == "cache fill" && hex(&s.trace_id) == LEADER_TRACE)
        else {
            return false;
        };
        all.iter().any(|s| {
            s.name == "single-flight wait"
                && hex(&s.trace_id) == WAITER_TRACE
                && s.links
                    .iter()
                    .any(|l| l.span_id == fill.span_id && l.trace_id == fill.trace_id)
        })
    })
    .await;
    assert!(
        linked,
        "the waiter's span does not link to the leader's fill"
    );
    let hook_spans = eventually(WAIT, || async {
        let all = spans(&receiver);
        let by_id: HashMap<String, &Span> = all.iter().map(|s| (hex(&s.span_id), s)).collect();
        let relay_call = by_id.get(&ids(relayed_tp).1);
        let relay = relay_call.and_then(|c| by_id.get(&hex(&c.parent_span_id)));
        let apply = all
            .iter()
            .any(|s| s.name == "webhook apply" && hex(&s.trace_id) == HOOK_TRACE);
        apply && relay.is_some_and(|r| r.name == "webhook relay")
    })
    .await;
    assert!(
        hook_spans,
        "no webhook apply span, or the relay's call is not under a webhook relay span"
    );
    // The service's name travels with the spans.
    let body = receiver.bodies()[0].clone();
    let export = ExportTraceServiceRequest::decode(body.as_ref()).unwrap();
    let resource = export.resource_spans[0].resource.as_ref().unwrap();
    assert!(resource.attributes.iter().any(
        |kv| kv.key == "service.name" && format!("{:?}", kv.value).contains("proxy-under-test")
    ));
    tokio::time::sleep(Duration::from_millis(10)).await;
}
