//! Single flight per key: one leader does the work, every concurrent caller gets its result.
//!
//! Waiters are woken by a `watch` channel the moment the leader finishes, never by polling. The
//! leader holds a guard whose `Drop` removes the key and closes the channel, so a leader that
//! panics or is cancelled releases its waiters with [`Outcome::LeaderLost`] instead of stranding them.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// What a caller gets from [`Flights::join`].
pub enum Join<K: Eq + Hash + Clone, V: Clone> {
    /// This caller does the work and must call [`Leader::finish`].
    Leader(Leader<K, V>, Waiter<V>),
    /// Another caller is doing it; wait on this.
    Follower(Waiter<V>),
}

/// How a wait ended; every caller handles these in one `match`.
#[derive(Debug)]
pub enum Outcome<V> {
    /// The leader finished with this value.
    Done(V),
    /// The leader went away without finishing (panic or cancellation).
    LeaderLost,
    /// The leader did not finish within the wait timeout.
    TimedOut,
}

/// A flight in the map: its id (so a stale leader never removes a newer flight) and its channel.
type Slot<V> = (u64, watch::Receiver<Option<V>>);

/// The set of flights in progress, keyed by what they fetch.
pub struct Flights<K, V> {
    inflight: Mutex<HashMap<K, Slot<V>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            inflight: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    /// Joins the flight for `key`, becoming its leader when none is in progress.
    pub fn join(self: &Arc<Self>, key: &K) -> Join<K, V> {
        let mut map = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, rx)) = map.get(key) {
            return Join::Follower(Waiter { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        map.insert(key.clone(), (id, rx.clone()));
        Join::Leader(
            Leader {
                flights: Arc::clone(self),
                key: key.clone(),
                id,
                tx: Some(tx),
            },
            Waiter { rx },
        )
    }

    /// Joins the flight for `key`, or starts `work` as its leader when none is in progress, and
    /// waits up to `timeout` for the result; also says whether this caller led. The leader's
    /// work runs detached, so a caller that hangs up cannot cancel what others wait on.
    pub async fn lead_or_follow<F, Fut>(
        self: &Arc<Self>,
        key: &K,
        timeout: Duration,
        work: F,
    ) -> (Outcome<V>, bool)
    where
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        match self.join(key) {
            Join::Leader(leader, waiter) => {
                let work = work();
                tokio::spawn(async move { leader.finish(work.await) });
                (waiter.wait(timeout).await, true)
            }
            Join::Follower(waiter) => (waiter.wait(timeout).await, false),
        }
    }

    /// Flights in progress (for metrics and tests).
    pub fn len(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a flight for `key` is in progress.
    pub fn is_running(&self, key: &K) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(key)
    }

    fn remove(&self, key: &K, id: u64) {
        let mut map = self
            .inflight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.get(key).is_some_and(|(i, _)| *i == id) {
            map.remove(key);
        }
    }
}

/// The caller that does the work; dropping it unfinished releases the waiters.
pub struct Leader<K: Eq + Hash + Clone, V: Clone> {
    flights: Arc<Flights<K, V>>,
    key: K,
    id: u64,
    tx: Option<watch::Sender<Option<V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Leader<K, V> {
    /// Publishes the result to every waiter and ends the flight.
    pub fn finish(mut self, value: V) {
        // Remove first so a caller arriving now starts fresh rather than reading a closed flight.
        self.flights.remove(&self.key, self.id);
        if let Some(tx) = self.tx.take() {
            tx.send_replace(Some(value));
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for Leader<K, V> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.flights.remove(&self.key, self.id);
            // Dropping the sender closes the channel: waiters see LeaderLost.
            self.tx.take();
        }
    }
}

/// A handle to wait for a flight's result.
pub struct Waiter<V> {
    rx: watch::Receiver<Option<V>>,
}

impl<V: Clone> Waiter<V> {
    /// Waits for the leader's value, at most `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Outcome<V> {
        let done = async {
            loop {
                if let Some(v) = self.rx.borrow_and_update().as_ref() {
                    return Outcome::Done(v.clone());
                }
                if self.rx.changed().await.is_err() {
                    // The sender is gone; it may have sent just before going.
                    return match self.rx.borrow().as_ref() {
                        Some(v) => Outcome::Done(v.clone()),
                        None => Outcome::LeaderLost,
                    };
                }
            }
        };
        match tokio::time::timeout(timeout, done).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_value() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let Join::Leader(leader, w0) = flights.join(&"k") else {
            panic!("first caller leads")
        };
        let Join::Follower(w1) = flights.join(&"k") else {
            panic!("second caller follows")
        };
        leader.finish(7);
        assert!(matches!(
            w0.wait(Duration::from_secs(1)).await,
            Outcome::Done(7)
        ));
        assert!(matches!(
            w1.wait(Duration::from_secs(1)).await,
            Outcome::Done(7)
        ));
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_waiters() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let Join::Leader(leader, _) = flights.join(&"k") else {
            panic!()
        };
        let Join::Follower(w) = flights.join(&"k") else {
            panic!()
        };
        drop(leader);
        assert!(matches!(
            w.wait(Duration::from_secs(1)).await,
            Outcome::LeaderLost
        ));
        assert!(matches!(flights.join(&"k"), Join::Leader(..)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_leader_times_waiters_out() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let Join::Leader(_leader, w) = flights.join(&"k") else {
            panic!()
        };
        assert!(matches!(
            w.wait(Duration::from_secs(1)).await,
            Outcome::TimedOut
        ));
    }

    #[tokio::test]
    async fn waiters_already_parked_are_woken_and_a_dropped_waiter_harms_none() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let Join::Leader(leader, w0) = flights.join(&"k") else {
            panic!("first caller leads")
        };
        let mut parked = tokio::task::JoinSet::new();
        for i in 0..100 {
            let Join::Follower(w) = flights.join(&"k") else {
                panic!("caller {i} follows")
            };
            if i % 10 == 0 {
                // A caller that hangs up before the leader finishes.
                drop(w);
                continue;
            }
            parked.spawn(async move { w.wait(Duration::from_secs(5)).await });
        }
        tokio::task::yield_now().await;
        leader.finish(42);
        assert!(matches!(
            w0.wait(Duration::from_secs(1)).await,
            Outcome::Done(42)
        ));
        let mut woken = 0;
        while let Some(outcome) = parked.join_next().await {
            assert!(matches!(outcome.unwrap(), Outcome::Done(42)));
            woken += 1;
        }
        assert_eq!(woken, 90);
    }

    #[tokio::test]
    async fn a_new_flight_after_a_finished_one_starts_clean() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let Join::Leader(first, old) = flights.join(&"k") else {
            panic!()
        };
        first.finish(1);
        let Join::Leader(second, new) = flights.join(&"k") else {
            panic!("a finished flight must not be joined")
        };
        let Join::Follower(late) = flights.join(&"k") else {
            panic!()
        };
        assert_eq!(flights.len(), 1);
        assert!(matches!(
            old.wait(Duration::from_secs(1)).await,
            Outcome::Done(1)
        ));
        drop(second);
        assert!(matches!(
            new.wait(Duration::from_secs(1)).await,
            Outcome::LeaderLost
        ));
        assert!(matches!(
            late.wait(Duration::from_secs(1)).await,
            Outcome::LeaderLost
        ));
        assert!(flights.is_empty());
    }
}
