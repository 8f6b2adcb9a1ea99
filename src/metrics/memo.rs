//! Per-thread handles for the label sets every answered request counts under, so a request
//! finds its counter and histogram without the family's lock, hash and probe.
//!
//! A slot is keyed by the labels' addresses: one address and length is one string, so a slot
//! that matches always holds the right handles. The same text at two addresses (a literal the
//! compiler did not merge) only misses here, and the family, which compares text, still finds
//! the one series.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::RequestLabels;

impl RequestLabels {
    /// Same strings (address and length) and status.
    fn same(&self, other: &RequestLabels) -> bool {
        std::ptr::eq(self.class, other.class)
            && std::ptr::eq(self.route, other.route)
            && std::ptr::eq(self.client, other.client)
            && std::ptr::eq(self.cache, other.cache)
            && self.status == other.status
    }

    /// A slot index from the addresses: cheap, and spread enough for a handful of live sets.
    fn slot(&self) -> usize {
        let mut h = u64::from(self.status);
        for s in [self.class, self.route, self.client, self.cache] {
            h = (h.rotate_left(5) ^ s.as_ptr() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        (h >> (64 - SLOTS.trailing_zeros())) as usize
    }
}

/// Slots per thread: more than the label sets a busy proxy answers under at once (routes ×
/// cache results × statuses seen in practice), and small enough to stay in cache.
const SLOTS: usize = 32;

/// Which `Metrics` a slot belongs to: tests (and a reload) may run several in one process.
pub(super) fn next_owner() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct Slot {
    owner: u64,
    labels: RequestLabels,
    count: Counter,
    seconds: Histogram,
}

thread_local! {
    static SLOTS_HERE: RefCell<[Option<Slot>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// Calls `f` with the counter and histogram for `labels`, resolving them with `resolve` (the
/// families) when this thread has not seen the set lately.
pub(super) fn with_handles(
    owner: u64,
    labels: &RequestLabels,
    resolve: impl Fn() -> (Counter, Histogram),
    f: impl Fn(&Counter, &Histogram),
) {
    let at = labels.slot();
    let served = SLOTS_HERE.try_with(|slots| {
        let Ok(mut slots) = slots.try_borrow_mut() else {
            return false;
        };
        let slot = &mut slots[at];
        if !matches!(slot, Some(s) if s.owner == owner && s.labels.same(labels)) {
            let (count, seconds) = resolve();
            *slot = Some(Slot {
                owner,
                labels: labels.clone(),
                count,
                seconds,
            });
        }
        if let Some(s) = slot {
            f(&s.count, &s.seconds);
        }
        true
    });
    // A thread tearing down its locals still counts, straight from the families.
    if served != Ok(true) {
        let (count, seconds) = resolve();
        f(&count, &seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(status: u16) -> RequestLabels {
        RequestLabels {
            class: "cached",
            route: "balance",
            client: "anonymous",
            cache: "hit",
            status,
        }
    }

    #[test]
    fn a_slot_serves_its_own_labels_and_owner_only() {
        let (count, seconds) = (Counter::default(), Histogram::new([1.0]));
        let resolved = std::cell::Cell::new(0);
        let resolve = || {
            resolved.set(resolved.get() + 1);
            (count.clone(), seconds.clone())
        };
        let owner = next_owner();
        for _ in 0..3 {
            with_handles(owner, &labels(200), resolve, |c, _| {
                c.inc();
            });
        }
        assert_eq!(resolved.get(), 1, "later calls use the slot");
        assert_eq!(count.get(), 3);
        with_handles(next_owner(), &labels(200), resolve, |_, _| {});
        assert_eq!(
            resolved.get(),
            2,
            "another Metrics resolves its own handles"
        );
        // The same text at another address is a different key here (the family merges them).
        let route: &'static str = Box::leak(String::from("balance").into_boxed_str());
        let other = RequestLabels {
            route,
            ..labels(200)
        };
        assert!(!other.same(&labels(200)));
        assert!(labels(200).same(&labels(200)));
        assert!(!labels(404).same(&labels(200)));
    }
}
