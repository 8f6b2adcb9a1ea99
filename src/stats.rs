//! `GET /stats` on the admin listener: a JSON snapshot of what the proxy has done, per route and
//! per client, read from the same counters `/metrics` exports (one source of truth, and nothing
//! added to the request path).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::state::State;
use crate::store::StoreStatus;

/// One sample of the exposition: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// The snapshot as JSON.
pub fn snapshot(state: &State) -> Value {
    let text = state
        .metrics
        .encode(state.cache.entry_count(), state.cache.weighted_size());
    let samples: Vec<Sample> = text.lines().filter_map(parse_line).collect();
    let of = |name: &'static str| samples.iter().filter(move |s| s.name == name);

    let requests = || of("mono_proxy_requests_total");
    let by = |label: &str| {
        let mut m: BTreeMap<String, f64> = BTreeMap::new();
        for s in requests() {
            *m.entry(s.label(label).to_string()).or_default() += s.value;
        }
        m
    };
    let total: f64 = requests().map(|s| s.value).sum();
    // Reads the cache answered one way or another; refusals (no cache result) are not reads.
    let cached: f64 = requests()
        .filter(|s| s.label("class") == "cached" && s.label("cache") != "none")
        .map(|s| s.value)
        .sum();
    let hits: f64 = requests()
        .filter(|s| s.label("class") == "cached" && s.label("cache") == "hit")
        .map(|s| s.value)
        .sum();

    let mut realtime = Map::new();
    for s in of("mono_proxy_realtime_calls_total") {
        realtime.insert(s.label("outcome").to_string(), json!(s.value));
    }
    let saved = of("mono_proxy_realtime_saved_cost_total")
        .map(|s| s.value)
        .sum::<f64>();

    let mut upstream_status: BTreeMap<String, f64> = BTreeMap::new();
    for s in of("mono_proxy_upstream_requests_total") {
        // Mono's code, or why none came.
        let key = match s.label("status") {
            "" => s.label("error"),
            code => code,
        };
        *upstream_status.entry(key.to_string()).or_default() += s.value;
    }
    let buckets = merged_buckets(of("mono_proxy_upstream_duration_seconds_bucket"));

    let mut clients = Map::new();
    let limited: Vec<&Sample> = of("mono_proxy_client_limited_total").collect();
    let per_client = by("client");
    let config = state.config.load();
    let mut names: Vec<String> = config.clients.iter().map(|c| c.name.clone()).collect();
    names.push("anonymous".into());
    for name in names {
        let mut refused = Map::new();
        for s in limited.iter().filter(|s| s.label("client") == name) {
            refused.insert(s.label("limit").to_string(), json!(s.value));
        }
        let limits = config.clients.iter().find(|c| c.name == name).map(|c| {
            json!({
                "rate": c.limits.rate.map(|r| r.per_second),
                "burst": c.limits.rate.map(|r| r.burst),
                "max_concurrent_upstream": c.limits.max_concurrent_upstream,
                "quota": c.limits.quota.map(|q| format!("{}/{}", q.calls, q.period.as_str())),
            })
        });
        clients.insert(
            name.clone(),
            json!({
                "requests": per_client.get(&name).copied().unwrap_or(0.0),
                "limited": refused,
                "limits": limits,
            }),
        );
    }

    let (backend, status) = match state.store.status() {
        StoreStatus::Local => ("memory", "ok".to_string()),
        StoreStatus::Shared => ("redis", "ok".to_string()),
        StoreStatus::Degraded(why) => ("redis", format!("degraded: {why}")),
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "requests": {
            "total": total,
            "by_class": by("class"),
            "by_route": by("route"),
            "by_client": per_client,
            "by_cache": by("cache"),
            "by_status": by("status"),
        },
        "cache": {
            "hit_ratio": if cached > 0.0 { hits / cached } else { 0.0 },
            "hits": hits,
            "reads": cached,
            "entries": state.cache.entry_count(),
            "bytes": state.cache.weighted_size(),
        },
        "realtime": {
            "calls": realtime,
            "saved_cost": saved,
            "cost_per_call": state.config.load().realtime.cost_per_call,
        },
        "upstream": {
            "by_status": upstream_status,
            "p50_ms": quantile(&buckets, 0.5).map(|s| s * 1000.0),
            "p99_ms": quantile(&buckets, 0.99).map(|s| s * 1000.0),
        },
        "clients": clients,
        "store": {
            "backend": backend,
            "status": status,
            "errors": state.store.errors(),
        },
        "jobs_in_flight": state.polls.active(),
        "recent_errors": state.recent_errors.newest_first(),
        "draining": state.is_draining(),
    })
}

/// One exposition line (`name{k="v",…} value`), or `None` for comments and anything else.
fn parse_line(line: &str) -> Option<Sample> {
    if line.starts_with('#') {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (head, Vec::new()),
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",k2="v2"` with OpenMetrics escapes (`\"`, `\\`, `\n`) in the values.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            return Some(out);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        out.push((key, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// Cumulative histogram buckets summed over every label but `le`, by upper bound.
fn merged_buckets<'a>(samples: impl Iterator<Item = &'a Sample>) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in samples {
        let le = match s.label("le") {
            "+Inf" => f64::INFINITY,
            other => match other.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        by_le.entry(le.to_bits()).or_insert((le, 0.0)).1 += s.value;
    }
    let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// A quantile from cumulative buckets, interpolated within its bucket like Prometheus's
/// `histogram_quantile`; `None` with no observations.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = count - lower.1;
            let within = if width > 0.0 {
                (rank - lower.1) / width
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_parse_with_escapes() {
        let s = parse_line(r#"mono_proxy_requests_total{class="cached",client="a \"b\", c\\d"} 7"#)
            .unwrap();
        assert_eq!(s.name, "mono_proxy_requests_total");
        assert_eq!(s.label("class"), "cached");
        assert_eq!(s.label("client"), r#"a "b", c\d"#);
        assert_eq!(s.value, 7.0);
        assert_eq!(
            parse_line("mono_proxy_connections_total 3").unwrap().value,
            3.0
        );
        assert!(parse_line("# HELP x y").is_none());
        assert!(parse_line("# EOF").is_none());
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [
            (0.001, 0.0),
            (0.002, 50.0),
            (0.004, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile(&b, 0.5).unwrap() - 0.002).abs() < 1e-9);
        assert!((quantile(&b, 0.75).unwrap() - 0.003).abs() < 1e-9);
        assert!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5).is_none());
    }
}
