//! Webhook delivery memory: each event applied once and relayed once per target.
//!
//! Mono retries a delivery until we answer 200; this memory turns a retry into "relay to the
//! targets that have not had it yet" instead of a second application.

use std::sync::Arc;
use std::time::Duration;

/// Mono retries for up to 48 h: remember deliveries a little longer.
const DELIVERY_MEMORY: Duration = Duration::from_secs(50 * 3600);
/// Events remembered at most.
const MAX_EVENTS: u64 = 100_000;

/// Progress of one event across its deliveries.
#[derive(Default)]
pub struct Progress {
    /// Applied to job records and caches.
    pub applied: bool,
    /// Per relay target, in `forward_to` order: it answered 2xx.
    pub delivered: Vec<bool>,
}

/// Per-event memory, keyed by `event_id` (or the body's digest for older events).
pub struct Deliveries {
    events: moka::sync::Cache<String, Arc<tokio::sync::Mutex<Progress>>>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Deliveries::new()
    }
}

impl Deliveries {
    /// Empty memory.
    pub fn new() -> Deliveries {
        Deliveries {
            events: moka::sync::Cache::builder()
                .max_capacity(MAX_EVENTS)
                .time_to_live(DELIVERY_MEMORY)
                .build(),
        }
    }

    /// The progress of an event, empty the first time it is seen.
    pub fn progress(&self, event: String) -> Arc<tokio::sync::Mutex<Progress>> {
        self.events.get_with(event, Default::default)
    }
}
