//! Per-client limits, in process: GCRA for `rate`/`burst`, a calendar counter for `quota`, a
//! semaphore for `max_concurrent_upstream`. The fleet runs the same arithmetic in Redis scripts
//! (`store::redis`); the request layer picks the fleet's answer and falls back to these.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{ClientConfig, ClientLimits, Quota, QuotaPeriod, RateLimit};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers): the limit that applies.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (same draft): what is left of it and when it resets.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The limiters of every client that has limits, by client label.
#[derive(Default)]
pub struct Limiters {
    by_client: HashMap<&'static str, Arc<ClientLimiter>>,
}

impl Limiters {
    /// One limiter per configured client with any limit.
    pub fn new(clients: &[ClientConfig]) -> Limiters {
        let by_client = clients
            .iter()
            .filter(|c| c.limits.any())
            .map(|c| {
                let label = crate::labels::intern(&c.name);
                (label, Arc::new(ClientLimiter::new(label, &c.limits)))
            })
            .collect();
        Limiters { by_client }
    }

    /// The limiters of a reloaded client list: a client whose limits did not change keeps its
    /// limiter, and with it what it has spent and the upstream calls it holds.
    pub fn reloaded(&self, clients: &[ClientConfig]) -> Limiters {
        let mut fresh = Limiters::new(clients);
        for (label, limiter) in &mut fresh.by_client {
            if let Some(old) = self.by_client.get(label) {
                if old.limits == limiter.limits {
                    *limiter = Arc::clone(old);
                }
            }
        }
        fresh
    }

    /// The limiter of a client (its label), if it has limits.
    pub fn get(&self, client: &str) -> Option<&Arc<ClientLimiter>> {
        if self.by_client.is_empty() {
            return None;
        }
        self.by_client.get(client)
    }
}

/// One client's limits and their local state.
#[derive(Debug)]
pub struct ClientLimiter {
    /// The client's label (metrics, messages, Redis keys).
    pub client: &'static str,
    /// What it is allowed.
    pub limits: ClientLimits,
    /// GCRA's theoretical arrival time, unix µs.
    tat_us: Mutex<u64>,
    /// The quota period counted locally (its id) and the calls spent in it.
    spent: Mutex<(u64, u64)>,
    upstream: Option<Arc<Semaphore>>,
}

impl ClientLimiter {
    /// A limiter with nothing spent.
    pub fn new(client: &'static str, limits: &ClientLimits) -> ClientLimiter {
        ClientLimiter {
            client,
            limits: limits.clone(),
            tat_us: Mutex::new(0),
            spent: Mutex::new((0, 0)),
            upstream: limits
                .max_concurrent_upstream
                .map(|n| Arc::new(Semaphore::new(n as usize))),
        }
    }

    /// One request against the local rate limit at `now_us`.
    pub fn rate_local(&self, rate: RateLimit, now_us: u64) -> Result<(), Denied> {
        let mut tat = self.tat_us.lock().unwrap_or_else(PoisonError::into_inner);
        match gcra(*tat, now_us, interval_us(rate), rate.burst) {
            Ok(next) => {
                *tat = next;
                Ok(())
            }
            Err(wait_us) => Err(self.denied_rate(rate, wait_us)),
        }
    }

    /// Takes the fleet's count for a period as this replica's own, so an outage continues
    /// from what the fleet spent instead of from zero.
    pub fn note_fleet_spent(&self, period: &Period, spent_calls: u64) {
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        *spent = (period.start_s, spent_calls);
    }

    /// Gives back one call spent in `period` that was not made after all.
    pub fn refund_local(&self, period: &Period) {
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        if spent.0 == period.start_s {
            spent.1 = spent.1.saturating_sub(1);
        }
    }

    /// One billable call against the local quota at `now_us`.
    pub fn quota_local(&self, quota: Quota, now_us: u64) -> Result<(), Denied> {
        let period = Period::of(quota.period, now_us / 1_000_000);
        let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
        if spent.0 != period.start_s {
            *spent = (period.start_s, 0);
        }
        if spent.1 >= quota.calls {
            return Err(self.denied_quota(quota, &period, now_us));
        }
        spent.1 += 1;
        Ok(())
    }

    /// A permit to wait on Mono, held until the upstream answer (or the flight joined) is in;
    /// `None` when the client has no concurrency limit.
    pub fn upstream_permit(&self) -> Result<Option<OwnedSemaphorePermit>, Denied> {
        let Some(sem) = &self.upstream else {
            return Ok(None);
        };
        match Arc::clone(sem).try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Err(Denied {
                client: self.client,
                policy: Policy::Concurrency {
                    max: self.limits.max_concurrent_upstream.unwrap_or(0),
                },
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// The answer to a request over the rate limit, `wait_us` before one more is allowed.
    pub fn denied_rate(&self, rate: RateLimit, wait_us: u64) -> Denied {
        Denied {
            client: self.client,
            policy: Policy::Rate(rate),
            retry_after: Duration::from_micros(wait_us),
        }
    }

    /// The answer to a billable call over the quota: wait until the period ends.
    pub fn denied_quota(&self, quota: Quota, period: &Period, now_us: u64) -> Denied {
        Denied {
            client: self.client,
            policy: Policy::Quota {
                quota,
                period_s: period.end_s - period.start_s,
            },
            retry_after: Duration::from_micros((period.end_s * 1_000_000).saturating_sub(now_us)),
        }
    }
}

/// GCRA's emission interval: the time one request "costs", in µs (at least 1).
pub fn interval_us(rate: RateLimit) -> u64 {
    ((1_000_000.0 / rate.per_second).round() as u64).max(1)
}

/// One GCRA step: the new theoretical arrival time when allowed, else the µs to wait.
/// The Redis script `RATE` is this same arithmetic.
pub fn gcra(tat_us: u64, now_us: u64, interval: u64, burst: u32) -> Result<u64, u64> {
    let next = tat_us.max(now_us).saturating_add(interval);
    let allow_at = next.saturating_sub(interval.saturating_mul(u64::from(burst)));
    if now_us < allow_at {
        Err(allow_at - now_us)
    } else {
        Ok(next)
    }
}

/// A calendar period of a quota, in unix seconds, and its id (part of its Redis key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// First second of the period.
    pub start_s: u64,
    /// First second of the next one.
    pub end_s: u64,
    /// `d20261202` or `m202612`.
    pub id: String,
}

impl Period {
    /// The period of `kind` holding unix second `now_s` (UTC).
    pub fn of(kind: QuotaPeriod, now_s: u64) -> Period {
        let day = now_s / 86_400;
        let (y, m, d) = civil_from_days(day as i64);
        match kind {
            QuotaPeriod::Day => Period {
                start_s: day * 86_400,
                end_s: (day + 1) * 86_400,
                id: format!("d{y:04}{m:02}{d:02}"),
            },
            QuotaPeriod::Month => {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Period {
                    start_s: days_from_civil(y, m, 1) as u64 * 86_400,
                    end_s: days_from_civil(ny, nm, 1) as u64 * 86_400,
                    id: format!("m{y:04}{m:02}"),
                }
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// `rate` and `burst`.
    Rate(RateLimit),
    /// `quota`, with the length of its current period.
    Quota {
        /// The configured quota.
        quota: Quota,
        /// Seconds in the current period (a month's length varies).
        period_s: u64,
    },
    /// `max_concurrent_upstream`.
    Concurrency {
        /// The configured maximum.
        max: u32,
    },
}

impl Policy {
    /// The policy's name in headers, metrics and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Rate(_) => "rate",
            Policy::Quota { .. } => "quota",
            Policy::Concurrency { .. } => "concurrency",
        }
    }
}

/// A request refused by one of its client's limits: answered 429 here, never sent to Mono.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    /// The client's label.
    pub client: &'static str,
    /// The limit.
    pub policy: Policy,
    /// How long until the limit allows the request.
    pub retry_after: Duration,
}

impl Denied {
    /// Whole seconds to wait, rounded up: a client that waits what it is told is allowed.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_micros().div_ceil(1_000_000).max(1) as u64
    }

    /// What the envelope's message says.
    pub fn message(&self) -> String {
        let wait = self.retry_after_secs();
        match self.policy {
            Policy::Rate(r) => format!(
                "too many requests: client {} is limited to {} requests per second (burst {}); retry in {wait} s",
                self.client, r.per_second, r.burst
            ),
            Policy::Quota { quota, .. } => format!(
                "quota exceeded: client {} may make {} billable calls (realtime calls and lookups) per {} (UTC); retry in {wait} s",
                self.client,
                quota.calls,
                quota.period.as_str()
            ),
            Policy::Concurrency { max } => format!(
                "too many requests: client {} may have {max} requests waiting on mono at once; retry in {wait} s",
                self.client
            ),
        }
    }

    /// `RateLimit-Policy` and `RateLimit`, as structured fields (draft-ietf-httpapi-ratelimit-headers).
    pub fn headers(&self) -> [(&'static HeaderName, HeaderValue); 2] {
        let name = self.policy.name();
        let policy = match self.policy {
            // GCRA as a quota: over the time the burst takes to earn back (at least 1 s), the
            // burst or what the rate allows in that time, whichever is more.
            Policy::Rate(r) => {
                let window = (f64::from(r.burst) / r.per_second).ceil().max(1.0) as u64;
                let q = u64::from(r.burst).max((r.per_second * window as f64).floor() as u64);
                format!("\"{name}\";q={q};w={window}")
            }
            Policy::Quota { quota, period_s } => {
                format!("\"{name}\";q={};w={period_s}", quota.calls)
            }
            Policy::Concurrency { max } => format!("\"{name}\";q={max};qu=\"concurrent-requests\""),
        };
        let state = format!("\"{name}\";r=0;t={}", self.retry_after_secs());
        [
            (&RATELIMIT_POLICY, header_value(policy)),
            (&RATELIMIT, header_value(state)),
        ]
    }
}

fn header_value(text: String) -> HeaderValue {
    // Built from numbers and fixed words only, so always a valid value.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("\"limit\";r=0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn gcra_allows_a_burst_then_one_per_interval() {
        let r = rate(5.0, 3);
        let i = interval_us(r);
        assert_eq!(i, 200_000);
        let mut tat = 0;
        let now = 1_000_000_000;
        for _ in 0..3 {
            tat = gcra(tat, now, i, r.burst).unwrap();
        }
        assert_eq!(gcra(tat, now, i, r.burst), Err(200_000));
        assert_eq!(gcra(tat, now + 199_999, i, r.burst), Err(1));
        let tat = gcra(tat, now + 200_000, i, r.burst).unwrap();
        assert!(gcra(tat, now + 200_000, i, r.burst).is_err());
        // A quiet spell earns the whole burst back, not more.
        let mut tat = tat;
        let later = now + 10_000_000;
        for _ in 0..3 {
            tat = gcra(tat, later, i, r.burst).unwrap();
        }
        assert!(gcra(tat, later, i, r.burst).is_err());
    }

    #[test]
    fn the_local_limiter_refuses_with_the_wait_and_headers() {
        let limits = ClientLimits {
            rate: Some(rate(2.0, 2)),
            ..ClientLimits::default()
        };
        let l = ClientLimiter::new("billing", &limits);
        let now = 5_000_000;
        assert!(l.rate_local(rate(2.0, 2), now).is_ok());
        assert!(l.rate_local(rate(2.0, 2), now).is_ok());
        let d = l.rate_local(rate(2.0, 2), now).unwrap_err();
        assert_eq!(d.retry_after, Duration::from_millis(500));
        assert_eq!(d.retry_after_secs(), 1);
        let [(p, pv), (s, sv)] = d.headers();
        assert_eq!(
            (p.as_str(), pv.to_str().unwrap()),
            ("ratelimit-policy", "\"rate\";q=2;w=1")
        );
        assert_eq!(
            (s.as_str(), sv.to_str().unwrap()),
            ("ratelimit", "\"rate\";r=0;t=1")
        );
        assert!(d.message().contains("billing"), "{}", d.message());
    }

    #[test]
    fn periods_follow_the_utc_calendar() {
        // 2026-12-02T14:00:00Z
        let now = 1_796_220_000;
        let day = Period::of(QuotaPeriod::Day, now);
        assert_eq!(day.id, "d20261202");
        assert_eq!(day.end_s - day.start_s, 86_400);
        assert!(day.start_s <= now && now < day.end_s);
        let month = Period::of(QuotaPeriod::Month, now);
        assert_eq!(month.id, "m202612");
        assert_eq!(month.end_s - month.start_s, 31 * 86_400);
        // 2026-12-31T23:59:59Z → 2027-01-01 starts the next month.
        assert_eq!(Period::of(QuotaPeriod::Month, month.end_s).id, "m202701");
        assert_eq!(
            Period::of(QuotaPeriod::Month, month.end_s - 1).id,
            "m202612"
        );
        // February of a leap year.
        let feb = Period::of(
            QuotaPeriod::Month,
            days_from_civil(2028, 2, 10) as u64 * 86_400,
        );
        assert_eq!(
            (feb.id.as_str(), feb.end_s - feb.start_s),
            ("m202802", 29 * 86_400)
        );
        for z in [-1000, 0, 19_000, 20_789, 100_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn the_local_quota_counts_per_period() {
        let limits = ClientLimits {
            quota: Some(Quota {
                calls: 2,
                period: QuotaPeriod::Day,
            }),
            ..ClientLimits::default()
        };
        let q = limits.quota.unwrap();
        let l = ClientLimiter::new("ops", &limits);
        let now_s = 1_796_220_000;
        let now = now_s * 1_000_000;
        assert!(l.quota_local(q, now).is_ok());
        assert!(l.quota_local(q, now).is_ok());
        let d = l.quota_local(q, now).unwrap_err();
        let end = Period::of(QuotaPeriod::Day, now_s).end_s;
        assert_eq!(d.retry_after_secs(), end - now_s);
        // The next day starts a new count.
        assert!(l.quota_local(q, end * 1_000_000).is_ok());
    }

    #[test]
    fn concurrency_permits_are_returned_on_drop() {
        let limits = ClientLimits {
            max_concurrent_upstream: Some(1),
            ..ClientLimits::default()
        };
        let l = ClientLimiter::new("batch", &limits);
        let held = l.upstream_permit().unwrap();
        assert!(held.is_some());
        let d = l.upstream_permit().unwrap_err();
        assert_eq!(d.policy.name(), "concurrency");
        drop(held);
        assert!(l.upstream_permit().unwrap().is_some());
    }
}
