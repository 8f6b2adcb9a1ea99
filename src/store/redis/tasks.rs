//! The store's background tasks: the health ping and the pub/sub subscriber.
//!
//! Both hold the store only weakly or through a shutdown channel, so dropping the store ends them.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisResult;
use tokio::sync::{watch, Notify};

use super::connect::{Connector, Link};
use super::keys::{Event, StoredNote, VERSION};
use super::ops::reseed;
use super::scripts::load_scripts;
use super::{Inner, CONNECT_BUDGET};

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
pub(super) fn spawn(inner: &Arc<Inner>, shutdown: watch::Receiver<()>) {
    tokio::spawn(subscriber(Arc::downgrade(inner), shutdown.clone()));
    tokio::spawn(health(
        Arc::downgrade(inner),
        Arc::clone(&inner.check),
        shutdown,
    ));
}

/// What one health ping found.
enum Ping {
    /// Redis answered; its `run_id` when it told us.
    Up(Option<String>),
    /// It refused or broke the connection, or is no longer the master; why.
    Down(String),
    /// No answer in time.
    Slow,
}

/// One ping: `INFO server` (for the `run_id`) on one server, `PING` on a cluster (every master
/// must answer), and under Sentinel also `ROLE`: a demoted master is as good as gone.
async fn ping(inner: &Inner, budget: Duration) -> Ping {
    let Ok(mut conn) = inner.link() else {
        return Ping::Down("not connected".into());
    };
    let probe = async {
        match &conn {
            Link::Cluster(_) => {
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                RedisResult::Ok((None, true))
            }
            Link::Single(_) => {
                let info = redis::cmd("INFO")
                    .arg("server")
                    .query_async::<String>(&mut conn)
                    .await?;
                let master = if inner.connector.follows_master() {
                    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
                    matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
                } else {
                    true
                };
                Ok((server_run_id(&info), master))
            }
        }
    };
    match tokio::time::timeout(budget, probe).await {
        Ok(Ok((_, false))) => Ping::Down("the server is no longer the master".into()),
        Ok(Ok((run_id, true))) => Ping::Up(run_id),
        Ok(Err(e)) if !e.is_timeout() => Ping::Down(e.to_string()),
        Ok(Err(_)) | Err(_) => Ping::Slow,
    }
}

/// Connects again: when there is no connection yet, when (Sentinel) the master may have moved
/// (the sentinels name the master now), or when `force`d because writes reached a replica.
/// Otherwise one server and a cluster reconnect by themselves.
async fn reconnect(inner: &Inner, force: bool) {
    let first = inner.link.load().is_none();
    if !first && !force && !inner.connector.follows_master() {
        return;
    }
    match tokio::time::timeout(CONNECT_BUDGET, inner.connector.connect(inner.timeouts)).await {
        Ok(Ok(link)) => inner.link.store(Some(Arc::new(link))),
        Ok(Err(e)) => {
            tracing::debug!(error = %inner.scrub(e.to_string()), "redis: cannot connect yet");
        }
        Err(_) => tracing::debug!("redis: connecting timed out"),
    }
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
        let relink = inner.relink.swap(false, Ordering::AcqRel);
        if relink
            || inner.link.load().is_none()
            || (inner.degraded.load(Ordering::Acquire) && inner.connector.follows_master())
        {
            reconnect(&inner, relink).await;
        }
        let budget = inner.timeout.max(HEALTH_TIMEOUT);
        match ping(&inner, budget).await {
            Ping::Up(now_id) => {
                slow_pings = 0;
                let restarted = run_id.is_some() && now_id.is_some() && run_id != now_id;
                let was_down = inner.degraded.load(Ordering::Acquire);
                if now_id.is_some() {
                    run_id = now_id;
                }
                if was_down || restarted {
                    // A restarted (or newly promoted) Redis may not hold the scripts.
                    if let Ok(mut conn) = inner.link() {
                        let _ = tokio::time::timeout(budget, load_scripts(&mut conn)).await;
                    }
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
            Ping::Down(why) => {
                if !inner.degraded.load(Ordering::Acquire) {
                    inner.fail("ping", &why);
                }
                if inner.connector.follows_master() {
                    reconnect(&inner, false).await;
                }
            }
            Ping::Slow => {
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
/// reconnecting with backoff (to the next node of a cluster, to the current master under
/// Sentinel) until the store is dropped.
async fn subscriber(weak: Weak<Inner>, mut shutdown: watch::Receiver<()>) {
    let mut backoff = SUBSCRIBE_BACKOFF_MIN;
    let mut attempt = 0;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let (events_channel, stored_channel) = (inner.keys.events(), inner.keys.stored());
        let replica = inner.replica.clone();
        let (events, stored) = (inner.events.clone(), inner.stored.clone());
        let connect = subscribe(
            &inner.connector,
            attempt,
            inner.timeouts,
            [&events_channel, &stored_channel],
        );
        let attempt_result = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(CONNECT_BUDGET, connect) => r,
        };
        // Only the channels are needed while subscribed: the store may be dropped meanwhile.
        drop(inner);
        attempt += 1;
        match attempt_result {
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

/// A pub/sub connection subscribed to the store's channels.
async fn subscribe(
    connector: &Connector,
    attempt: usize,
    timeouts: super::Timeouts,
    channels: [&String; 2],
) -> RedisResult<redis::aio::PubSub> {
    let client = connector.pubsub_client(attempt, timeouts).await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub
        .subscribe(&[channels[0].as_str(), channels[1].as_str()])
        .await?;
    Ok(pubsub)
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
