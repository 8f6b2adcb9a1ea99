//! Per-client limits across the fleet: one script per check, so every replica spends from the
//! same budget. `None` means Redis could not say; the caller then applies its local limit.

use super::scripts::{QUOTA, RATE, REFUND};
use super::RedisStore;

impl RedisStore {
    /// One GCRA step of a client's rate limit on Redis's clock: `Ok` when allowed, else the µs
    /// to wait.
    pub async fn rate_step(
        &self,
        client: &str,
        interval_us: u64,
        burst: u32,
    ) -> Option<Result<(), u64>> {
        let s = &*self.inner;
        let mut call = RATE.key(s.keys.limit(client, "rate"));
        call.arg(interval_us).arg(burst);
        match s.script::<u64>("rate_limit", &call).await {
            Ok(0) => Some(Ok(())),
            Ok(wait) => Some(Err(wait)),
            Err(e) => {
                tracing::debug!(error = %e.reason(), client, "rate limit decided locally");
                None
            }
        }
    }

    /// Spends one billable call of a client's quota for the period `period` (expiring at
    /// `expire_at_ms`): whether it was within the quota, and the calls spent in the period.
    pub async fn quota_spend(
        &self,
        client: &str,
        period: &str,
        calls: u64,
        expire_at_ms: u64,
    ) -> Option<(bool, u64)> {
        let s = &*self.inner;
        let mut call = QUOTA.key(s.keys.limit(client, &format!("quota:{period}")));
        call.arg(calls).arg(expire_at_ms);
        match s.script::<(u64, u64)>("quota", &call).await {
            Ok((within, spent)) => Some((within == 1, spent)),
            Err(e) => {
                tracing::debug!(error = %e.reason(), client, "quota decided locally");
                None
            }
        }
    }

    /// Gives back one call of `period` that was spent and then not made (best effort).
    pub async fn quota_refund(&self, client: &str, period: &str) {
        let s = &*self.inner;
        let call = REFUND.key(s.keys.limit(client, &format!("quota:{period}")));
        if let Err(e) = s.script::<i64>("quota_refund", &call).await {
            tracing::debug!(error = %e.reason(), client, "quota refund not recorded in redis");
        }
    }
}
