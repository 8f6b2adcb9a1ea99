//! Mono 429 cooldowns per tenant, route and account: while one is in force, calls are answered
//! 429 here and nothing goes upstream. Checked on every upstream-bound request, so the check is
//! in process; replicas learn of each other's cooldowns by broadcast.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::now_ms;

/// Cooldowns remembered at most (a flood of distinct accounts cannot grow memory without bound).
const MAX_COOLDOWNS: u64 = 100_000;

/// The cooldowns in force.
pub struct Cooldowns {
    until: moka::sync::Cache<String, u64>,
    /// The latest deadline ever set: past it no cooldown is in force, with no lookup at all.
    latest: AtomicU64,
}

impl Cooldowns {
    /// An empty table whose entries live at most `max` (the longest cooldown).
    pub fn new(max: Duration) -> Cooldowns {
        Cooldowns {
            until: moka::sync::Cache::builder()
                .max_capacity(MAX_COOLDOWNS)
                .time_to_live(max.max(Duration::from_secs(1)))
                .build(),
            latest: AtomicU64::new(0),
        }
    }

    /// Starts (or extends) a cooldown until `until_ms` (unix ms).
    pub fn set(&self, tenant: &str, route: &str, account: &str, until_ms: u64) {
        let key = key(tenant, route, account);
        let later = self.until.get(&key).map_or(until_ms, |u| u.max(until_ms));
        self.until.insert(key, later);
        self.latest.fetch_max(later, Ordering::Relaxed);
    }

    /// How long the cooldown of `(tenant, route, account)` still lasts, if one is in force.
    pub fn remaining(&self, tenant: &str, route: &str, account: &str) -> Option<Duration> {
        let now = now_ms();
        // The common case: no 429 in force anywhere, nothing to build a key for.
        if now >= self.latest.load(Ordering::Relaxed) {
            return None;
        }
        let until = self.until.get(&key(tenant, route, account))?;
        (until > now).then(|| Duration::from_millis(until - now))
    }
}

fn key(tenant: &str, route: &str, account: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + route.len() + account.len() + 2);
    k.push_str(tenant);
    k.push('\0');
    k.push_str(route);
    k.push('\0');
    k.push_str(account);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cooldown_holds_until_its_deadline_for_its_key_only() {
        let c = Cooldowns::new(Duration::from_secs(300));
        assert!(c.remaining("t", "identity", "a").is_none());
        c.set("t", "identity", "a", now_ms() + 10_000);
        let left = c.remaining("t", "identity", "a").unwrap();
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));
        assert!(c.remaining("t", "identity", "b").is_none());
        assert!(c.remaining("t", "income", "a").is_none());
        assert!(c.remaining("u", "identity", "a").is_none());
        // An earlier deadline does not shorten a later one.
        c.set("t", "identity", "a", now_ms() + 1_000);
        assert!(c.remaining("t", "identity", "a").unwrap() > Duration::from_secs(9));
        c.set("t", "income", "a", now_ms().saturating_sub(1));
        assert!(c.remaining("t", "income", "a").is_none());
    }
}
