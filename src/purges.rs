//! Purges ordered through the admin API, remembered as watermarks: a body of the shared tier
//! that was stored before a purge covering it is not adopted by this replica, but fetched again
//! and overwritten, so a purge reaches Redis without scanning it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::cache::{route_of, Groups, ResponseCache};
use crate::clock::now_ms;

/// Account and route watermarks are kept this long: the shared tier holds a body for its
/// route's freshness only, far less.
const RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Watermarks kept per kind at most; the oldest go first.
const MAX_WATERMARKS: usize = 100_000;

/// What a purge covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgeScope {
    /// One account's bodies, under every tenant.
    Account(String),
    /// Every body of one route.
    Route(String),
    /// Everything cached.
    All,
}

/// When purges were ordered (unix ms), by what they cover.
#[derive(Default)]
pub struct Purges {
    all: AtomicU64,
    /// Set once any account or route purge is noted: the common path reads one atomic.
    any_scoped: AtomicU64,
    accounts: RwLock<HashMap<String, u64>>,
    routes: RwLock<HashMap<String, u64>>,
}

impl Purges {
    /// Remembers a purge of `scope` at `at_ms` (this replica's clock).
    pub fn note(&self, scope: &PurgeScope, at_ms: u64) {
        let map = match scope {
            PurgeScope::All => {
                self.all.fetch_max(at_ms, Ordering::Relaxed);
                return;
            }
            PurgeScope::Account(id) => (&self.accounts, id),
            PurgeScope::Route(name) => (&self.routes, name),
        };
        let (lock, key) = map;
        let mut m = lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|_, at| at_ms.saturating_sub(*at) < RETENTION_MS);
        if m.len() >= MAX_WATERMARKS {
            if let Some(oldest) = m.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                m.remove(&oldest);
            }
        }
        let slot = m.entry(key.clone()).or_default();
        *slot = (*slot).max(at_ms);
        self.any_scoped.store(1, Ordering::Release);
    }

    /// Whether a body of `account` on `route` stored at `stored_at_ms` predates a purge that
    /// covers it.
    pub fn covers(&self, account: &str, route: &str, stored_at_ms: u64) -> bool {
        if stored_at_ms < self.all.load(Ordering::Relaxed) {
            return true;
        }
        if self.any_scoped.load(Ordering::Acquire) == 0 {
            return false;
        }
        let before = |lock: &RwLock<HashMap<String, u64>>, key: &str| {
            lock.read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(key)
                .is_some_and(|at| stored_at_ms < *at)
        };
        before(&self.accounts, account) || before(&self.routes, route)
    }
}

impl PurgeScope {
    /// Purges this replica's cache for the scope (account groups of `tenants` for an account)
    /// and remembers it for the shared tier. Returns the bodies purged here.
    pub fn apply_here(
        &self,
        cache: &ResponseCache,
        purges: &Purges,
        tenants: &[Arc<str>],
        hard: bool,
    ) -> usize {
        purges.note(self, now_ms());
        match self {
            PurgeScope::Account(id) => {
                let keys: Vec<String> = tenants.iter().map(|t| format!("{t}:{id}")).collect();
                cache.purge(Groups::Keys(&keys), &|_| true, hard)
            }
            PurgeScope::Route(name) => cache.purge(Groups::All, &|p| route_of(p) == name, hard),
            PurgeScope::All => cache.purge(Groups::All, &|_| true, hard),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_refused_only_when_a_covering_purge_came_after_it() {
        let p = Purges::default();
        assert!(!p.covers("a", "balance", 10));
        p.note(&PurgeScope::Account("a".into()), 100);
        assert!(p.covers("a", "balance", 99));
        assert!(!p.covers("a", "balance", 100));
        assert!(!p.covers("b", "balance", 99));
        p.note(&PurgeScope::Route("transactions".into()), 200);
        assert!(p.covers("b", "transactions", 150));
        assert!(!p.covers("b", "balance", 150));
        p.note(&PurgeScope::All, 300);
        assert!(p.covers("c", "identity", 299));
        // An older purge arriving late moves nothing back.
        p.note(&PurgeScope::All, 250);
        assert!(p.covers("c", "identity", 299));
    }
}
