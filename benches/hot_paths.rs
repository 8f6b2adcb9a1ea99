//! Criterion benches of the functions every request touches, in process and without sockets.
//!
//! `cargo bench --bench hot_paths` (add `-- --quick` for a short run). The cache-hit bench builds
//! a real [`State`] whose upstream is an unused loopback port: a hit never touches it.
// criterion_main! generates an undocumented public `main`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::TcpListener;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Uri};
use mono_proxy::cache;
use mono_proxy::config::Config;
use mono_proxy::headers::{self, CacheResult, Noted};
use mono_proxy::pagination::{self, Rewrite};
use mono_proxy::request::context::{self, AccountRead};
use mono_proxy::request::{cached_read, sync};
use mono_proxy::route::{self, Rules};
use mono_proxy::routes::Routes;
use mono_proxy::state::State;

/// A balance body shaped like Mono's (and the sandbox's).
const BALANCE: &[u8] = br#"{"status":"successful","message":"Request was succesfully completed","timestamp":"2024-06-13T10:00:00.000Z","data":{"id":"666b166ce06b042","name":"Samuel Olamide","account_number":"0131883461","balance":500000,"currency":"NGN"}}"#;

/// A job-status envelope as `GET /v2/accounts/{id}/jobs/{job_id}` returns it.
const JOB_STATUS: &[u8] = br#"{"status":"successful","message":"Job status retrieved","timestamp":"2024-06-13T10:00:00.000Z","data":{"id":"jobs.accounts_1","job_status":"finished","reauth_required":false}}"#;

/// `mono.events.account_updated` as the sandbox sends it.
const ACCOUNT_UPDATED: &[u8] = br#"{"event":"mono.events.account_updated","event_id":"5f0c2c1e-8d0b-4b57-9d6e-6f3f1c9b2a11","data":{"account":{"_id":"666b166ce06b042","name":"Samuel Olamide","accountNumber":"0131883461","currency":"NGN","balance":500000,"type":"SAVINGS ACCOUNT - INDIVIDUAL","institution":{"name":"Sandbox Bank","bankCode":"000000","type":"PERSONAL_BANKING"}},"meta":{"data_status":"AVAILABLE","auth_method":"mobile_banking","sync_status":"SUCCESSFUL","job_id":"jobs.accounts_1","has_new_data":true}}}"#;

/// A transactions page whose `meta.previous`/`meta.next` point at Mono.
fn transactions_page() -> Bytes {
    let mut rows = Vec::new();
    for i in 0..20 {
        rows.push(format!(
            r#"{{"id":"txn{i:04}","narration":"POS purchase {i}","amount":{},"type":"debit","balance":{},"date":"2024-06-0{}T10:00:00.000Z","category":"unknown"}}"#,
            1000 + i,
            500000 - i * 1000,
            1 + i % 9
        ));
    }
    Bytes::from(format!(
        r#"{{"status":"successful","message":"ok","timestamp":"2024-06-13T10:00:00.000Z","data":[{}],"meta":{{"total":60,"page":2,"previous":"https://api.withmono.com/v2/accounts/abc/transactions?page=1","next":"https://api.withmono.com/v2/accounts/abc/transactions?page=3"}}}}"#,
        rows.join(",")
    ))
}

/// The built-in route table over the default cache config.
fn routes() -> Routes {
    let config = Config::parse_runnable("", &[("MONO_SEC_KEY", "k")]).expect("default config");
    Routes::new(&config.routes, &config.cache)
}

fn classify(c: &mut Criterion) {
    let hosts = vec!["api.withmono.com".to_string()];
    let routes = routes();
    let rules = Rules {
        webhook_path: "/webhooks/mono",
        accept_hosts: &hosts,
        routes: &routes,
    };
    let mut g = c.benchmark_group("classify");
    let cases: [(&str, &str, Option<&str>); 4] = [
        (
            "cached_balance",
            "/v2/accounts/666b166ce06b042/balance",
            None,
        ),
        (
            "realtime_transactions",
            "/v2/accounts/666b166ce06b042/transactions?page=2&limit=50",
            Some("true"),
        ),
        (
            "job_status",
            "/v2/accounts/666b166ce06b042/jobs/jobs.accounts_1",
            None,
        ),
        ("passthrough", "/v2/accounts/666b166ce06b042/identity", None),
    ];
    let cases = cases.into_iter().chain([
        (
            "node_transactions",
            "/accounts/666b166ce06b042/transactions?paginate=true&",
            None,
        ),
        ("unmatched", "/v3/institutions", None),
    ]);
    for (name, target, realtime) in cases {
        let uri: Uri = target.parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
        h.insert("user-agent", HeaderValue::from_static("bench/1"));
        if let Some(v) = realtime {
            h.insert("x-realtime", HeaderValue::from_static(v));
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                route::classify(
                    black_box(&Method::GET),
                    black_box(&uri),
                    black_box(&h),
                    &rules,
                )
            });
        });
    }
    g.finish();
}

fn cache_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache_key");
    g.bench_function("normalize_query_none", |b| {
        b.iter(|| context::normalize_query(black_box(None)));
    });
    g.bench_function("normalize_query_3_pairs", |b| {
        b.iter(|| context::normalize_query(black_box(Some("page=2&limit=50&paginate=true&"))));
    });
    g.bench_function("path_key_balance", |b| {
        b.iter(|| context::path_key(black_box("balance"), "", black_box(None)));
    });
    g.bench_function("path_key_transactions_query", |b| {
        b.iter(|| {
            context::path_key(
                black_box("transactions"),
                "",
                black_box(Some("start=01-01-2024&end=31-01-2024&page=2")),
            )
        });
    });
    g.finish();
}

/// A state whose upstream is a loopback port nobody listens on (bound, read, dropped).
fn bench_state(rt: &tokio::runtime::Runtime) -> Arc<State> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [upstream]\nbase_url = \"http://127.0.0.1:{port}\"\n\
         [cache]\nttl = \"1h\"\n[log]\nfilter = \"warn\"\n"
    );
    let config = Config::parse_runnable(&text, &[("MONO_SEC_KEY", "k")]).expect("bench config");
    rt.block_on(State::new(config, None))
        .expect("bench state")
        .0
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let state = bench_state(&rt);
    let tenant = state.secrets.load().default.clone();
    let request_id = headers::new_request_id();
    let balance = Arc::clone(
        state
            .routes
            .load()
            .by_name("balance")
            .expect("the balance route"),
    );
    let target: PathAndQuery = "/v2/accounts/acc/balance".parse().unwrap();
    let read = AccountRead::new(
        tenant.clone(),
        "acc".into(),
        Arc::clone(&balance),
        "",
        target.clone(),
        request_id.clone(),
    );
    let akey = read.account_key();
    let ct = Some(HeaderValue::from_static("application/json; charset=utf-8"));
    state
        .cache
        .store(
            &akey,
            "balance",
            Bytes::from_static(BALANCE),
            ct.clone(),
            balance.storing(std::time::Duration::ZERO),
        )
        .expect("a storable body");

    // Sanity: this really is the hit path (a miss would try the dead upstream and fail).
    let (_, result) = rt.block_on(cached_read::serve(&state, &read)).expect("hit");
    assert_eq!(result, CacheResult::Hit);

    let mut g = c.benchmark_group("cache_hit");
    g.throughput(Throughput::Elements(1));
    g.bench_function("serve_balance", |b| {
        b.to_async(&rt).iter(|| async {
            cached_read::serve(&state, &read)
                .await
                .map(|(resp, _)| resp)
        });
    });
    g.bench_function("read_context", |b| {
        b.iter(|| {
            AccountRead::new(
                tenant.clone(),
                black_box("666b166ce06b042").to_string(),
                Arc::clone(&balance),
                "",
                target.clone(),
                request_id.clone(),
            )
        });
    });
    g.bench_function("lookup", |b| {
        b.iter(|| state.cache.lookup(black_box(&akey), black_box("balance")));
    });
    g.bench_function("account_key", |b| {
        b.iter(|| context::account_key(black_box(&tenant.id), black_box("666b166ce06b042")));
    });
    g.bench_function("new_request_id", |b| b.iter(headers::new_request_id));
    g.finish();
}

fn header_synthesis(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let state = bench_state(&rt);
    let ttl = std::time::Duration::from_secs(300);
    let body = state
        .cache
        .store(
            "bench:acc",
            "balance",
            Bytes::from_static(BALANCE),
            Some(HeaderValue::from_static("application/json; charset=utf-8")),
            cache::Storing::fresh(ttl, true),
        )
        .expect("an envelope");
    let mut g = c.benchmark_group("headers");
    g.bench_function("set_cache_status_hit_ttl", |b| {
        b.iter_batched_ref(
            HeaderMap::new,
            |h| headers::set_cache_status(h, black_box(CacheResult::Hit), black_box(Some(299))),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("set_cache_status_collapsed_no_ttl", |b| {
        b.iter_batched_ref(
            HeaderMap::new,
            |h| headers::set_cache_status(h, black_box(CacheResult::Collapsed), None),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("respond_hit", |b| {
        b.iter(|| cached_read::respond(black_box(&body), CacheResult::Hit, Some(299), true));
    });
    g.finish();
}

fn webhook_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("webhook");
    g.bench_function("parse_job_status", |b| {
        b.iter(|| sync::parse_job_status(black_box(JOB_STATUS)));
    });
    // What the webhook class does with a delivery: a Value, then the fields it reads.
    g.bench_function("parse_account_updated", |b| {
        b.iter(|| {
            let event: serde_json::Value =
                serde_json::from_slice(black_box(ACCOUNT_UPDATED)).unwrap();
            let meta = &event["data"]["meta"];
            (
                event["event"].as_str().map(str::len),
                meta["sync_status"].as_str().map(str::len),
                meta["job_id"].as_str().map(str::len),
                meta["has_new_data"].as_bool(),
            )
        });
    });
    g.finish();
}

fn body_work(c: &mut Criterion) {
    let page = transactions_page();
    let rw = Rewrite::new(
        vec!["https://api.withmono.com".into()],
        "http://127.0.0.1:8080",
    );
    let mut g = c.benchmark_group("body");
    g.bench_function("data_hash_balance", |b| {
        b.iter(|| cache::data_hash(black_box(BALANCE)));
    });
    g.bench_function("data_hash_transactions_page", |b| {
        b.iter(|| cache::data_hash(black_box(&page)));
    });
    g.bench_function("rewrite_transactions_page", |b| {
        b.iter(|| pagination::rewrite(black_box(page.clone()), &rw));
    });
    g.bench_function("rewrite_balance_untouched", |b| {
        b.iter(|| pagination::rewrite(black_box(Bytes::from_static(BALANCE)), &rw));
    });
    g.finish();
}

/// What tracing costs a cache hit with span export off, under the subscriber production
/// installs (JSON lines at `info`, no exporting layer): the request span and three phase spans,
/// and the request's trace context with and without a caller's `traceparent`.
fn telemetry(c: &mut Criterion) {
    use mono_proxy::telemetry::{Trace, SPANS};
    let cfg = mono_proxy::config::LogConfig {
        format: mono_proxy::config::LogFormat::Json,
        filter: "info".into(),
    };
    let (subscriber, _) = mono_proxy::logging::build(&cfg, None).expect("subscriber");
    let _installed = tracing::subscriber::set_default(subscriber);
    let mut g = c.benchmark_group("telemetry");
    g.bench_function("hit_spans_export_off", |b| {
        b.iter(|| {
            let span = tracing::trace_span!(
                target: SPANS,
                "request",
                otel.kind = "server",
                http.request.method = "GET",
                url.path = black_box("/v2/accounts/a/balance"),
                http.route = tracing::field::Empty,
            );
            for phase in ["classify", "authorize", "cache lookup"] {
                let _p = tracing::trace_span!(target: SPANS, "phase", phase).entered();
                black_box(&_p);
            }
            black_box(span.is_disabled())
        });
    });
    let none = HeaderMap::new();
    g.bench_function("trace_of_request_new", |b| {
        b.iter(|| Trace::of_request(&Noted::scan(black_box(&none)), &tracing::Span::none()));
    });
    let mut caller = HeaderMap::new();
    caller.insert(
        "traceparent",
        HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    );
    g.bench_function("trace_of_request_traceparent", |b| {
        b.iter(|| Trace::of_request(&Noted::scan(black_box(&caller)), &tracing::Span::none()));
    });
    g.finish();
}

criterion_group!(
    benches,
    telemetry,
    classify,
    cache_keys,
    cache_hit,
    header_synthesis,
    webhook_parsing,
    body_work
);
criterion_main!(benches);
