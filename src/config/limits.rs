//! A client's limits in its `[[clients]]` table: `rate` with `burst`, `max_concurrent_upstream`
//! and a `quota` of billable calls per day or month.

use serde::Serialize;

use super::fields::Fields;

/// The highest `rate` accepted: past it a limit is not a limit, and the GCRA interval (µs)
/// would round to zero.
const MAX_RATE: f64 = 1_000_000.0;
/// The lowest: one request per 1,000 s (below it, use `quota`).
const MIN_RATE: f64 = 0.001;
/// The largest `burst`.
const MAX_BURST: u64 = 1_000_000;

/// What one client may spend; every limit is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClientLimits {
    /// Requests per second with a burst (GCRA).
    pub rate: Option<RateLimit>,
    /// Requests of this client waiting on Mono at once, per replica.
    pub max_concurrent_upstream: Option<u32>,
    /// Billable calls (realtime calls, lookups) per calendar day or month, UTC.
    pub quota: Option<Quota>,
}

impl ClientLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.rate.is_some() || self.max_concurrent_upstream.is_some() || self.quota.is_some()
    }
}

/// A request rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// A number of billable calls per calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Quota {
    /// Calls allowed per period.
    pub calls: u64,
    /// The period, in UTC.
    pub period: QuotaPeriod,
}

/// A quota's calendar period (UTC), after which the count starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    /// From 00:00 UTC to the next.
    Day,
    /// From the 1st, 00:00 UTC, to the next month's.
    Month,
}

impl QuotaPeriod {
    /// The word used in the config and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        }
    }
}

/// Reads the limit keys of one `[[clients]]` table.
pub(super) fn client_limits(f: &mut Fields<'_, '_>) -> ClientLimits {
    let rate = f.float("rate");
    let burst = f.count("burst", 0);
    let rate = match rate {
        Some(r) if !(MIN_RATE..=MAX_RATE).contains(&r) => {
            f.problem(
                "rate",
                format!("expected requests per second from {MIN_RATE} to {MAX_RATE}, found {r}"),
            );
            None
        }
        Some(per_second) => {
            if burst > MAX_BURST {
                f.problem("burst", format!("at most {MAX_BURST}"));
            }
            let burst = if burst == 0 {
                // One second's worth by default, so `rate = 10` allows 10 at once.
                per_second.ceil().max(1.0) as u32
            } else {
                u32::try_from(burst).unwrap_or(u32::MAX)
            };
            Some(RateLimit { per_second, burst })
        }
        None => {
            if burst != 0 {
                f.problem("burst", "burst needs a rate (requests per second)");
            }
            None
        }
    };
    let concurrent = f.count("max_concurrent_upstream", 0);
    let max_concurrent_upstream =
        (concurrent != 0).then(|| u32::try_from(concurrent).unwrap_or(u32::MAX));
    let quota = f.string("quota").and_then(|text| match parse_quota(&text) {
        Ok(q) => Some(q),
        Err(e) => {
            f.problem("quota", e);
            None
        }
    });
    ClientLimits {
        rate,
        max_concurrent_upstream,
        quota,
    }
}

/// `"1000/day"` or `"20000/month"`.
fn parse_quota(text: &str) -> Result<Quota, String> {
    let bad = || {
        format!("expected \"N/day\" or \"N/month\" (billable calls per UTC day or month), found {text:?}")
    };
    let (calls, period) = text.split_once('/').ok_or_else(bad)?;
    let calls: u64 = calls.trim().parse().map_err(|_| bad())?;
    let period = match period.trim() {
        "day" | "d" => QuotaPeriod::Day,
        "month" | "mo" => QuotaPeriod::Month,
        _ => return Err(bad()),
    };
    if calls == 0 {
        return Err(format!(
            "{text:?}: a quota of 0 refuses every billable call; remove the client's key instead"
        ));
    }
    Ok(Quota { calls, period })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_per_day_and_month() {
        assert_eq!(
            parse_quota("1000/day").unwrap(),
            Quota {
                calls: 1000,
                period: QuotaPeriod::Day
            }
        );
        assert_eq!(
            parse_quota(" 5 / month").unwrap(),
            Quota {
                calls: 5,
                period: QuotaPeriod::Month
            }
        );
        for bad in ["1000", "x/day", "10/week", "-1/day", "0/day", "/day"] {
            assert!(parse_quota(bad).is_err(), "{bad}");
        }
    }
}
