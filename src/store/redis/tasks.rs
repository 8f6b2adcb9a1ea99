//! The store's background tasks: the health ping and the pub/sub subscriber.
//!
//! Both hold the store only weakly or through a shutdown channel, so dropping the store ends them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::{Client, RedisResult};
use tokio::sync::{broadcast, watch, Notify};

use super::keys::{Event, Keys, StoredNote, VERSION};
use super::scripts::load_scripts;
use super::{Inner, CONNECT_BUDGET};
use crate::store::Broadcast;

/// The health task pings Redis this often.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// A health ping may take this long at least (it runs in the background, nobody waits on it).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Pub/sub reconnection backoff bounds.
const SUBSCRIBE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const SUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Starts the subscriber and the health ping for a freshly opened store.
pub(super) fn spawn(client: Client, inner: &Arc<Inner>, shutdown: watch::Receiver<()>) {
    tokio::spawn(subscriber(
        client,
        inner.keys.clone(),
        inner.replica.clone(),
        inner.events.clone(),
        inner.stored.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(health(
        Arc::downgrade(inner),
        Arc::clone(&inner.check),
        shutdown,
    ));
}

/// Pings Redis: turns the store degraded when it stops answering, healthy when it answers again.
async fn health(weak: Weak<Inner>, check: Arc<Notify>, mut shutdown: watch::Receiver<()>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = check.notified() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let mut conn = inner.conn.clone();
        let budget = inner.timeout.max(HEALTH_TIMEOUT);
        let ping =
            tokio::time::timeout(budget, redis::cmd("PING").query_async::<String>(&mut conn)).await;
        match ping {
            Ok(Ok(_)) => {
                if inner.degraded.load(Ordering::Acquire) {
                    // A restarted Redis has forgotten the scripts.
                    let _ = tokio::time::timeout(budget, load_scripts(&mut conn)).await;
                }
                inner.recover();
            }
            Ok(Err(e)) => {
                if !inner.degraded.load(Ordering::Acquire) {
                    inner.fail("ping", &e.to_string());
                }
            }
            Err(_) => {
                if !inner.degraded.load(Ordering::Acquire) {
                    inner.fail("ping", &format!("no answer within {budget:?}"));
                }
            }
        }
    }
}

/// Feeds other replicas' messages to local subscribers, on its own pub/sub connection,
/// reconnecting with backoff until the store is dropped.
async fn subscriber(
    client: Client,
    keys: Keys,
    replica: String,
    events: broadcast::Sender<Broadcast>,
    stored: broadcast::Sender<Arc<str>>,
    mut shutdown: watch::Receiver<()>,
) {
    let (events_channel, stored_channel) = (keys.events(), keys.stored());
    let mut backoff = SUBSCRIBE_BACKOFF_MIN;
    loop {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[events_channel.as_str(), stored_channel.as_str()])
                .await?;
            RedisResult::Ok(pubsub)
        };
        let attempt = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(CONNECT_BUDGET, connect) => r,
        };
        match attempt {
            Ok(Ok(mut pubsub)) => {
                backoff = SUBSCRIBE_BACKOFF_MIN;
                tracing::debug!("subscribed to shared store events");
                let mut messages = pubsub.on_message();
                loop {
                    let msg = tokio::select! {
                        _ = shutdown.changed() => return,
                        m = messages.next() => m,
                    };
                    let Some(msg) = msg else { break };
                    let payload = msg.get_payload_bytes();
                    if msg.get_channel_name() == events_channel {
                        match serde_json::from_slice::<Event>(payload) {
                            // Our own messages were applied locally before they were sent.
                            Ok(e) if e.v == VERSION && e.from != replica => {
                                let _ = events.send(e.msg);
                            }
                            Ok(_) => {}
                            Err(e) => tracing::debug!(error = %e, "ignoring an unreadable event"),
                        }
                    } else if let Ok(note) = serde_json::from_slice::<StoredNote>(payload) {
                        if note.v == VERSION {
                            let _ = stored.send(note.key.into());
                        }
                    }
                }
                tracing::debug!("shared store events connection closed; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to shared store events"),
            Err(_) => tracing::debug!("subscribing to shared store events timed out"),
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(SUBSCRIBE_BACKOFF_MAX);
    }
}
