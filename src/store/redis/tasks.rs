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
use super::ops::reseed;
use super::scripts::load_scripts;
use super::{Inner, CONNECT_BUDGET};
use crate::store::Broadcast;

/// The health task pings Redis this often.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
/// A health ping may take this long at least (it runs in the background, nobody waits on it).
pub(super) const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// Pings that go unanswered in a row before Redis counts as down. One slow second under a
/// burst is not an outage: declaring one sends every replica to local state, where each may
/// make its own realtime call. A refused or broken connection counts at once.
const SLOW_PINGS_TO_DOWN: u32 = 2;
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
/// Whenever Redis may have lost data (it was unreachable, it restarted under another `run_id`,
/// or a record put failed) this replica puts back the records whose window is still open.
async fn health(weak: Weak<Inner>, check: Arc<Notify>, mut shutdown: watch::Receiver<()>) {
    let mut run_id: Option<String> = None;
    let mut slow_pings = 0;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = check.notified() => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let mut conn = inner.conn.clone();
        let budget = inner.timeout.max(HEALTH_TIMEOUT);
        let info = redis::cmd("INFO").arg("server").to_owned();
        let ping = tokio::time::timeout(budget, info.query_async::<String>(&mut conn)).await;
        match ping {
            Ok(Ok(info)) => {
                slow_pings = 0;
                let now_id = server_run_id(&info);
                let restarted = run_id.is_some() && now_id.is_some() && run_id != now_id;
                let was_down = inner.degraded.load(Ordering::Acquire);
                if now_id.is_some() {
                    run_id = now_id;
                }
                if was_down || restarted {
                    // A restarted Redis has forgotten the scripts.
                    let _ = tokio::time::timeout(budget, load_scripts(&mut conn)).await;
                }
                inner.recover();
                if was_down || restarted || inner.unsynced.load(Ordering::Acquire) {
                    match reseed(&inner).await {
                        Ok(n) => tracing::info!(
                            records = n,
                            restarted,
                            "put open realtime windows back into redis"
                        ),
                        Err(e) => {
                            inner.unsynced.store(true, Ordering::Release);
                            tracing::warn!(error = %e.reason(), "could not put realtime windows back into redis; retrying");
                        }
                    }
                }
            }
            Ok(Err(e)) if !e.is_timeout() => {
                if !inner.degraded.load(Ordering::Acquire) {
                    inner.fail("ping", &e.to_string());
                }
            }
            Ok(Err(_)) | Err(_) => {
                slow_pings += 1;
                if slow_pings >= SLOW_PINGS_TO_DOWN && !inner.degraded.load(Ordering::Acquire) {
                    inner.fail(
                        "ping",
                        &format!("no answer within {budget:?}, {slow_pings} times"),
                    );
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

/// The `run_id` line of `INFO server`: a new one means Redis restarted (and may be empty).
fn server_run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_id_is_read_from_info() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc123\r\ntcp_port:6379\r\n";
        assert_eq!(server_run_id(info).as_deref(), Some("abc123"));
        assert_eq!(server_run_id("# Server\r\n"), None);
    }
}
