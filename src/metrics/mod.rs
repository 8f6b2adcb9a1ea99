//! Prometheus metrics, exposed as text on the admin listener through `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

mod labels;
mod memo;

use labels::UpstreamStatus;

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    class: &'static str,
    cache: &'static str,
    status: u16,
    // Last, so dashboards that match the labels before them keep working.
    route: &'static str,
    client: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    class: &'static str,
    /// The HTTP status Mono answered; empty when none came.
    status: UpstreamStatus,
    /// Why no usable answer came (`upstream_unreachable`, …); empty when one did.
    error: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, EncodeLabelSet)]
struct ClassRouteLabels {
    class: &'static str,
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    event: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotStoredLabels {
    class: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Latency of shared-store (Redis) operations, by operation; handed to the store, which
/// observes each operation it runs.
#[derive(Clone, Debug)]
pub struct StoreLatency(Family<OpLabel, Histogram>);

impl Default for StoreLatency {
    fn default() -> Self {
        StoreLatency(Family::new_with_constructor(fine_buckets))
    }
}

impl StoreLatency {
    /// Records one operation's time.
    pub fn observe(&self, op: &'static str, took: Duration) {
        self.0
            .get_or_create(&OpLabel { op })
            .observe(took.as_secs_f64());
    }
}

/// Buckets from 50 µs doubling to about 105 s: a cache hit and a realtime call (up to its
/// 45 s timeout, and a fallback fetch after it) on one scale.
fn fine_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 22))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitedLabels {
    client: &'static str,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// Every metric the proxy exports, named `mono_proxy_*`.
pub struct Metrics {
    registry: Registry,
    /// The process metrics under their standard, unprefixed names (`process_*`), as every
    /// Prometheus client library exports them and dashboards expect.
    process: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream: Family<UpstreamLabels, Counter>,
    upstream_seconds: Family<ClassLabel, Histogram>,
    request_seconds: Family<ClassRouteLabels, Histogram>,
    store_seconds: StoreLatency,
    relay_seconds: Family<ResultLabel, Histogram>,
    rss_bytes: Gauge,
    open_fds: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    /// CPU seconds already added to `cpu_seconds` (µs), so each scrape adds what is new.
    cpu_seen_micros: AtomicU64,
    realtime: Family<OutcomeLabel, Counter>,
    saved: Counter<f64, AtomicU64>,
    webhooks: Family<WebhookLabels, Counter>,
    store_errors: Family<OpLabel, Counter>,
    store_degraded: Gauge,
    cache_accounts: Gauge,
    cache_bytes: Gauge,
    connections_open: Gauge,
    connections: Counter,
    polls: Family<OutcomeLabel, Counter>,
    secret_reloads: Family<OutcomeLabel, Counter>,
    not_stored: Family<NotStoredLabels, Counter>,
    shared_cache: Family<OutcomeLabel, Counter>,
    limited: Family<LimitedLabels, Counter>,
    limit_fallbacks: Family<LimitLabel, Counter>,
    cost_per_call_micros: AtomicU64,
    /// This instance's mark on the per-thread handles (`memo`).
    memo_owner: u64,
}

impl Metrics {
    /// Changes the estimated cost of a realtime call (a reload).
    pub fn set_cost_per_call(&self, cost_per_call: Option<f64>) {
        self.cost_per_call_micros
            .store(cost_micros(cost_per_call), Ordering::Relaxed);
    }

    /// Registers every metric; `cost_per_call` turns collapsed calls into an amount saved.
    pub fn new(cost_per_call: Option<f64>) -> Metrics {
        let mut registry = Registry::with_prefix("mono_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by class, cache result and status",
            requests.clone(),
        );
        let upstream = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Requests sent to Mono, by class, HTTP status (empty when none came) and error (empty when Mono answered)",
            upstream.clone(),
        );
        let request_seconds =
            Family::<ClassRouteLabels, Histogram>::new_with_constructor(fine_buckets);
        registry.register(
            "request_duration_seconds",
            "Time from a request's head to its response head, by class and route (upstream time included)",
            request_seconds.clone(),
        );
        let store_seconds = StoreLatency::default();
        registry.register(
            "store_operation_duration_seconds",
            "Time of shared-store (Redis) operations, by operation",
            store_seconds.0.clone(),
        );
        let relay_seconds = Family::<ResultLabel, Histogram>::new_with_constructor(fine_buckets);
        registry.register(
            "webhook_relay_duration_seconds",
            "Time of one webhook relay to one target, by result (ok, failed)",
            relay_seconds.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "1, labelled with the version of the running binary",
            build.clone(),
        );
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let mut process = Registry::default();
        let rss_bytes = Gauge::default();
        process.register(
            "process_resident_memory_bytes",
            "Resident memory of the process",
            rss_bytes.clone(),
        );
        let open_fds = Gauge::default();
        process.register(
            "process_open_fds",
            "File descriptors open (client and upstream connections, files)",
            open_fds.clone(),
        );
        let cpu_seconds = Counter::<f64, AtomicU64>::default();
        process.register(
            "process_cpu_seconds",
            "CPU time used by the process, user and system",
            cpu_seconds.clone(),
        );
        let started = Gauge::<f64, AtomicU64>::default();
        started.set(crate::clock::now_ms() as f64 / 1000.0);
        process.register(
            "process_start_time_seconds",
            "When the process started (its metrics were set up), unix seconds",
            started,
        );
        let upstream_seconds = Family::<ClassLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        registry.register(
            "upstream_duration_seconds",
            "Time to Mono's response head, by class",
            upstream_seconds.clone(),
        );
        let realtime = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "realtime_calls",
            "Realtime calls: forwarded to Mono, collapsed, or held back after a 429",
            realtime.clone(),
        );
        let saved = Counter::<f64, AtomicU64>::default();
        registry.register(
            "realtime_saved_cost",
            "Estimated cost saved by collapsed realtime calls ([realtime] cost_per_call)",
            saved.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by event and result (received, applied, relayed, relay_failed, rejected)",
            webhooks.clone(),
        );
        let store_errors = Family::<OpLabel, Counter>::default();
        registry.register(
            "store_errors",
            "Shared store operations that failed, by operation",
            store_errors.clone(),
        );
        let store_degraded = Gauge::default();
        registry.register(
            "store_degraded",
            "1 while the shared store is unreachable",
            store_degraded.clone(),
        );
        let cache_accounts = Gauge::default();
        registry.register(
            "cache_accounts",
            "Accounts (per tenant) with cached responses; each holds one or more bodies",
            cache_accounts.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes held by the response cache",
            cache_bytes.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections = Counter::default();
        registry.register(
            "connections",
            "Client connections accepted",
            connections.clone(),
        );
        let polls = Family::<OutcomeLabel, Counter>::default();
        registry.register("job_polls", "Job status polls by result", polls.clone());
        let secret_reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "secret_reloads",
            "Secret reloads by result",
            secret_reloads.clone(),
        );
        let not_stored = Family::<NotStoredLabels, Counter>::default();
        registry.register(
            "responses_not_stored",
            "Mono answers passed through without being stored: 200s outside Mono's JSON envelope (not_json, not_envelope), realtime answers with an invalid x-job-id (bad_job_id)",
            not_stored.clone(),
        );
        let shared_cache = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "shared_cache",
            "Shared (Redis) cache tier lookups on an in-process miss, by outcome: hit, fill (this replica fetched for the fleet), waited (another replica's fill answered), wait_timeout, skipped (Redis degraded or slow), too_large",
            shared_cache.clone(),
        );
        let limited = Family::<LimitedLabels, Counter>::default();
        registry.register(
            "client_limited",
            "Requests answered 429 by one of the client's own limits, by client and limit (rate, quota, concurrency)",
            limited.clone(),
        );
        let limit_fallbacks = Family::<LimitLabel, Counter>::default();
        registry.register(
            "client_limit_local_fallbacks",
            "Client limit checks decided by this replica alone because Redis could not answer, by limit (rate, quota)",
            limit_fallbacks.clone(),
        );
        Metrics {
            registry,
            process,
            shared_cache,
            limited,
            limit_fallbacks,
            requests,
            upstream,
            upstream_seconds,
            request_seconds,
            store_seconds,
            relay_seconds,
            rss_bytes,
            open_fds,
            cpu_seconds,
            cpu_seen_micros: AtomicU64::new(0),
            realtime,
            saved,
            webhooks,
            store_errors,
            store_degraded,
            cache_accounts,
            cache_bytes,
            connections_open,
            connections,
            polls,
            secret_reloads,
            not_stored,
            cost_per_call_micros: AtomicU64::new(cost_micros(cost_per_call)),
            memo_owner: memo::next_owner(),
        }
    }

    /// Counts a shared cache tier outcome.
    pub fn shared_cache(&self, outcome: &'static str) {
        self.shared_cache
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Counts a request refused by a client's own limit.
    pub fn limited(&self, client: &'static str, limit: &'static str) {
        self.limited
            .get_or_create(&LimitedLabels { client, limit })
            .inc();
    }

    /// Counts a client limit decided locally because Redis could not answer.
    pub fn limit_fallback(&self, limit: &'static str) {
        self.limit_fallbacks
            .get_or_create(&LimitLabel { limit })
            .inc();
    }

    /// The time of one webhook relay to one target.
    pub fn relay_time(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "failed" };
        self.relay_seconds
            .get_or_create(&ResultLabel { result })
            .observe(took.as_secs_f64());
    }

    /// The histogram the shared store records its operations in.
    pub fn store_latency(&self) -> StoreLatency {
        self.store_seconds.clone()
    }

    /// Counts an answered request and its time, head to head.
    pub fn request(
        &self,
        class: &'static str,
        route: &'static str,
        client: &'static str,
        cache: &'static str,
        status: u16,
        took: Duration,
    ) {
        let labels = RequestLabels {
            class,
            cache,
            status,
            route,
            client,
        };
        let resolve = || {
            let count = self.requests.get_or_create(&labels);
            let seconds = self
                .request_seconds
                .get_or_create(&ClassRouteLabels { class, route });
            (count.clone(), seconds.clone())
        };
        memo::with_handles(self.memo_owner, &labels, resolve, |count, seconds| {
            count.inc();
            seconds.observe(took.as_secs_f64());
        });
    }

    /// Counts an upstream call and its latency: Mono's `status` (0: none came) or the `error`.
    pub fn upstream(
        &self,
        class: &'static str,
        status: u16,
        error: &'static str,
        elapsed: Duration,
    ) {
        let status = UpstreamStatus(status);
        self.upstream
            .get_or_create(&UpstreamLabels {
                class,
                status,
                error,
            })
            .inc();
        self.upstream_seconds
            .get_or_create(&ClassLabel { class })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a realtime call by outcome: `forwarded`, `collapsed` or `rate_limited`.
    pub fn realtime(&self, outcome: &'static str) {
        self.realtime.get_or_create(&OutcomeLabel { outcome }).inc();
        // Only a collapsed call is one Mono would have served (and billed); a call held back
        // after a 429 would have been refused anyway, so it saves nothing.
        if outcome == "collapsed" {
            let micros = self.cost_per_call_micros.load(Ordering::Relaxed);
            if micros > 0 {
                self.saved.inc_by(micros as f64 / 1_000_000.0);
            }
        }
    }

    /// Counts a webhook delivery step.
    pub fn webhook(&self, event: &str, result: &'static str) {
        // Event names come from the sender: bound the label to known ones.
        let event = match event {
            "mono.accounts.jobs.update"
            | "mono.events.account_updated"
            | "mono.accounts.account_updated" => event,
            _ => "other",
        };
        self.webhooks
            .get_or_create(&WebhookLabels {
                event: event.to_string(),
                result,
            })
            .inc();
    }

    /// Counts a failed store operation.
    pub fn store_error(&self, op: &'static str) {
        self.store_errors.get_or_create(&OpLabel { op }).inc();
    }

    /// Brings `store_errors{op="redis"}` up to the store's own count of failed operations.
    pub fn sync_store_errors(&self, total: u64) {
        let counter = self.store_errors.get_or_create(&OpLabel { op: "redis" });
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
    }

    /// Sets the degraded flag.
    pub fn set_store_degraded(&self, degraded: bool) {
        self.store_degraded.set(degraded as i64);
    }

    /// A client connection opened.
    pub fn connection_opened(&self) {
        self.connections.inc();
        self.connections_open.inc();
    }

    /// A client connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// Counts a job poll.
    pub fn poll(&self, outcome: &'static str) {
        self.polls.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Counts an answer passed through without being stored, and why.
    pub fn not_stored(&self, class: &'static str, reason: &'static str) {
        self.not_stored
            .get_or_create(&NotStoredLabels { class, reason })
            .inc();
    }

    /// Counts a secret reload.
    pub fn secret_reload(&self, outcome: &'static str) {
        self.secret_reloads
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Renders the Prometheus text exposition, with cache and process gauges as of now.
    pub fn encode(&self, cache_accounts: u64, cache_bytes: u64) -> String {
        self.cache_accounts.set(cache_accounts as i64);
        self.cache_bytes.set(cache_bytes as i64);
        self.read_process();
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out));
        if encoded.is_err() {
            out.clear();
        }
        out
    }
}

impl Metrics {
    /// Reads the process's memory, descriptors and CPU time from `/proc/self` (Linux; elsewhere
    /// they stay 0).
    fn read_process(&self) {
        let Some(p) = process_now() else { return };
        self.rss_bytes.set(p.rss_bytes as i64);
        self.open_fds.set(p.open_fds as i64);
        // Two scrapes at once: only the one that moves the mark adds, and only what is new.
        let before = self
            .cpu_seen_micros
            .fetch_max(p.cpu_micros, Ordering::Relaxed);
        if p.cpu_micros > before {
            self.cpu_seconds
                .inc_by((p.cpu_micros - before) as f64 / 1_000_000.0);
        }
    }
}

/// What `/proc/self` says about the process now.
struct Process {
    rss_bytes: u64,
    open_fds: u64,
    cpu_micros: u64,
}

fn process_now() -> Option<Process> {
    // Fields after the command (which may hold spaces) in /proc/self/stat: utime and stime
    // are the 12th and 13th, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // VmRSS is in kB whatever the page size.
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(Process {
        rss_bytes: rss_kb * 1024,
        open_fds,
        cpu_micros: ticks * 10_000,
    })
}

/// A cost as whole millionths, as the saved-cost counter keeps it.
fn cost_micros(cost_per_call: Option<f64>) -> u64 {
    cost_per_call.map_or(0, |c| (c * 1_000_000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_exposition() {
        let m = Metrics::new(Some(0.5));
        m.request("cached", "balance", "anonymous", "hit", 200, Duration::ZERO);
        m.realtime("collapsed");
        m.realtime("rate_limited");
        m.realtime("forwarded");
        let text = m.encode(3, 1024);
        assert!(
            text.contains(
                r#"mono_proxy_requests_total{class="cached",cache="hit",status="200",route="balance",client="anonymous"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("mono_proxy_realtime_saved_cost_total 0.5"),
            "{text}"
        );
        assert!(text.contains("mono_proxy_cache_bytes 1024"), "{text}");
        m.sync_store_errors(3);
        m.sync_store_errors(2);
        let text = m.encode(0, 0);
        assert!(
            text.contains(r#"mono_proxy_store_errors_total{op="redis"} 3"#),
            "{text}"
        );
    }
}
