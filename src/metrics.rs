//! Prometheus metrics, exposed as text on the admin listener through `prometheus-client`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
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
    status: String,
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
    requests: Family<RequestLabels, Counter>,
    upstream: Family<UpstreamLabels, Counter>,
    upstream_seconds: Family<ClassLabel, Histogram>,
    realtime: Family<OutcomeLabel, Counter>,
    saved: Counter<f64, AtomicU64>,
    webhooks: Family<WebhookLabels, Counter>,
    store_errors: Family<OpLabel, Counter>,
    store_degraded: Gauge,
    cache_entries: Gauge,
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
            "Requests sent to Mono, by class and status (or error)",
            upstream.clone(),
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
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Accounts with cached responses",
            cache_entries.clone(),
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
            shared_cache,
            limited,
            limit_fallbacks,
            requests,
            upstream,
            upstream_seconds,
            realtime,
            saved,
            webhooks,
            store_errors,
            store_degraded,
            cache_entries,
            cache_bytes,
            connections_open,
            connections,
            polls,
            secret_reloads,
            not_stored,
            cost_per_call_micros: AtomicU64::new(cost_micros(cost_per_call)),
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

    /// Counts an answered request.
    pub fn request(
        &self,
        class: &'static str,
        route: &'static str,
        client: &'static str,
        cache: &'static str,
        status: u16,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                class,
                cache,
                status,
                route,
                client,
            })
            .inc();
    }

    /// Counts an upstream call and its latency; `status` is the code or an error label.
    pub fn upstream(&self, class: &'static str, status: &str, elapsed: Duration) {
        self.upstream
            .get_or_create(&UpstreamLabels {
                class,
                status: status.to_string(),
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

    /// Renders the Prometheus text exposition, with cache gauges as of now.
    pub fn encode(&self, cache_entries: u64, cache_bytes: u64) -> String {
        self.cache_entries.set(cache_entries as i64);
        self.cache_bytes.set(cache_bytes as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
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
        m.request("cached", "balance", "anonymous", "hit", 200);
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
