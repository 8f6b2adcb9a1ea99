//! Webhook delivery memory: each event applied once and relayed once per target.
//!
//! Mono retries a delivery until we answer 200; this memory turns a retry into "relay to the
//! targets that have not had it yet" instead of a second application. It is bounded in bytes:
//! past the bound the oldest events are forgotten first (a retry of one of those is applied
//! again, which is harmless, and relayed again: at-least-once).

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Mono retries for up to 48 h: remember deliveries a little longer.
const DELIVERY_MEMORY: Duration = Duration::from_secs(50 * 3600);
/// Bytes charged per remembered event besides its relay flags: moka's entry, the `Arc`, the
/// mutex, the progress struct and the 32-byte digest key.
const EVENT_OVERHEAD: u32 = 240;

/// Progress of one event across its deliveries.
#[derive(Default)]
pub struct Progress {
    /// Applied to job records and caches.
    pub applied: bool,
    /// Per relay target, in `forward_to` order: it answered 2xx.
    pub delivered: Vec<bool>,
}

/// Per-event memory, keyed by a digest of the `event_id` (or of the body, for older events), so
/// a key costs the same whatever the sender put in the id.
pub struct Deliveries {
    events: moka::sync::Cache<[u8; 32], Arc<tokio::sync::Mutex<Progress>>>,
}

impl Deliveries {
    /// Memory for at most `max_bytes` of events relayed to `targets` targets each.
    pub fn new(max_bytes: u64, targets: usize) -> Deliveries {
        let targets = u32::try_from(targets).unwrap_or(u32::MAX);
        Deliveries {
            events: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(move |_, _| EVENT_OVERHEAD.saturating_add(targets))
                .time_to_live(DELIVERY_MEMORY)
                .build(),
        }
    }

    /// The progress of an event, empty the first time it is seen.
    pub fn progress(&self, event: &EventKey) -> Arc<tokio::sync::Mutex<Progress>> {
        self.events.get_with(event.0, Default::default)
    }

    /// Events remembered now.
    pub fn len(&self) -> u64 {
        self.events.run_pending_tasks();
        self.events.entry_count()
    }

    /// True when no event is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged for the events remembered now.
    pub fn weighted_size(&self) -> u64 {
        self.events.run_pending_tasks();
        self.events.weighted_size()
    }
}

/// What identifies a delivery across Mono's retries.
pub struct EventKey([u8; 32]);

impl EventKey {
    /// An event by its `event_id` (Mono reuses it on retries).
    pub fn id(event_id: &str) -> EventKey {
        EventKey(
            Sha256::new()
                .chain_update(b"id:")
                .chain_update(event_id)
                .finalize()
                .into(),
        )
    }

    /// The digest in hex: the event's name in the shared store (half the digest: 128 bits).
    pub fn hex(&self) -> String {
        hex(&self.0[..16])
    }

    /// An older event without an id, by its body.
    pub fn body(body: &[u8]) -> EventKey {
        EventKey(
            Sha256::new()
                .chain_update(b"body:")
                .chain_update(body)
                .finalize()
                .into(),
        )
    }
}

/// The name of a relay target in the shared store: a digest of its URL, so reordering
/// `forward_to` does not make a target look new.
pub fn target_step(target: &str) -> String {
    let digest = Sha256::digest(target.as_bytes());
    format!("relay:{}", hex(&digest[..8]))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_bounded_in_bytes_whatever_the_ids() {
        let memory = Deliveries::new(64 * 1024, 2);
        for i in 0..10_000 {
            let id = format!("{i}-{}", "x".repeat(i % 5000));
            memory.progress(&EventKey::id(&id));
        }
        assert!(
            memory.weighted_size() <= 64 * 1024,
            "{}",
            memory.weighted_size()
        );
        assert!(memory.len() < 10_000);
        assert!(memory.len() > 100);
    }

    #[test]
    fn ids_and_bodies_never_collide() {
        assert_ne!(EventKey::id("x").0, EventKey::body(b"x").0);
        assert_eq!(EventKey::id("x").0, EventKey::id("x").0);
    }
}
