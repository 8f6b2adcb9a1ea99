//! A client's own limits as the request classes see them: the fleet's answer when Redis is the
//! store, this replica's when it is not or when Redis cannot answer (counted in metrics).

use tokio::sync::OwnedSemaphorePermit;

use crate::clock::now_us;
use crate::error::ProxyError;
use crate::limits::{interval_us, ClientLimiter, Denied, Period};
use crate::state::State;

/// Spends one request of the client's `rate` (every request it makes, hits included).
pub async fn admit(state: &State, limiter: &ClientLimiter) -> Result<(), ProxyError> {
    let Some(rate) = limiter.limits.rate else {
        return Ok(());
    };
    let fleet = if state.store.is_shared() {
        let step = state
            .store
            .rate_step(limiter.client, interval_us(rate), rate.burst)
            .await;
        if step.is_none() {
            state.metrics.limit_fallback("rate");
        }
        step
    } else {
        None
    };
    let verdict = match fleet {
        Some(Ok(())) => Ok(()),
        Some(Err(wait_us)) => Err(limiter.denied_rate(rate, wait_us)),
        None => limiter.rate_local(rate, now_us()),
    };
    verdict.map_err(|d| refuse(state, d))
}

/// A billable call spent from a client's quota, to give back if it is not made after all.
#[derive(Debug)]
pub struct Spent<'a> {
    limiter: &'a ClientLimiter,
    period: Period,
}

/// Spends one billable call (a realtime call or a lookup) of the client's `quota`; `None`
/// (no client, or no quota) spends nothing.
pub async fn spend<'a>(
    state: &State,
    limiter: Option<&'a ClientLimiter>,
) -> Result<Option<Spent<'a>>, ProxyError> {
    let Some((limiter, quota)) = limiter.and_then(|l| Some((l, l.limits.quota?))) else {
        return Ok(None);
    };
    let now = now_us();
    let period = Period::of(quota.period, now / 1_000_000);
    let fleet = if state.store.is_shared() {
        // Kept a day past its end, so a replica whose clock lags still finds the count.
        let expire_at_ms = (period.end_s + 86_400) * 1000;
        let within = state
            .store
            .quota_spend(limiter.client, &period.id, quota.calls, expire_at_ms)
            .await;
        match within {
            // The fleet's count is where this replica starts if Redis goes away.
            Some((_, spent)) => limiter.note_fleet_spent(&period, spent),
            None => state.metrics.limit_fallback("quota"),
        }
        within.map(|(ok, _)| ok)
    } else {
        None
    };
    let verdict = match fleet {
        Some(true) => Ok(()),
        Some(false) => Err(limiter.denied_quota(quota, &period, now)),
        None => limiter.quota_local(quota, now),
    };
    verdict.map_err(|d| refuse(state, d))?;
    Ok(Some(Spent { limiter, period }))
}

/// Gives back a call spent and then not made (another replica or flight made it).
pub async fn refund(state: &State, spent: Option<Spent<'_>>) {
    let Some(Spent { limiter, period }) = spent else {
        return;
    };
    limiter.refund_local(&period);
    state.store.quota_refund(limiter.client, &period.id).await;
}

/// A permit to wait on Mono under the client's `max_concurrent_upstream` (per replica), held
/// by the caller until Mono's answer is in; `None` when no limit applies.
pub fn upstream_permit(
    state: &State,
    limiter: Option<&ClientLimiter>,
) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
    match limiter {
        None => Ok(None),
        Some(l) => l.upstream_permit().map_err(|d| refuse(state, d)),
    }
}

fn refuse(state: &State, denied: Denied) -> ProxyError {
    state.metrics.limited(denied.client, denied.policy.name());
    ProxyError::Limited(denied)
}
