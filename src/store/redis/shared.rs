//! The shared cache tier: bodies kept in Redis behind every replica's in-process cache, and the
//! fleet-wide collapse of misses (one replica fetches, the others wait for its body).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::keys::{StoredNote, VERSION};
use super::scripts::{FILL, INVALIDATE, LOOKUP};
use super::{OpError, RedisStore};
use crate::config::CacheConfig;
use crate::store::{BodyKey, FillTicket, SharedBody, SharedLookup};

/// A waiter reads Redis again this often in case the "stored" message was missed.
const WAIT_REREAD: Duration = Duration::from_millis(100);
/// The invalidation counter outlives any fill that read it by far.
const GENERATION_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// An unanswered lookup is retried (with the same lease value) for this long at most.
const LOOKUP_BUDGET: Duration = Duration::from_secs(1);
/// A generation no counter ever holds: the fill of a lookup whose outcome stayed unknown
/// stores nothing, but still gives back the lease it may hold and wakes the waiters.
const UNKNOWN_GENERATION: &str = "-";

/// The tier's settings, from `[cache]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tier {
    /// Past its route's `ttl` a body is stale: the tier answers it no more (PTTL below this);
    /// it is kept `ttl + max_stale`, like the in-process cache.
    max_stale: Duration,
    /// Larger bodies stay out.
    max_entry: u64,
}

impl Tier {
    pub(super) fn new(cache: &CacheConfig) -> Tier {
        Tier {
            max_stale: cache.max_stale,
            max_entry: cache.shared_max_entry,
        }
    }
}

/// The header line of a stored body; the body bytes follow the newline.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    v: u32,
    /// Unix ms when fetched.
    at: u64,
    /// Content-Type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ct: Option<String>,
}

/// `<header JSON>\n<body>`: the body stays raw bytes (no base64), the header stays readable.
fn encode(body: &SharedBody) -> Bytes {
    let header = serde_json::to_vec(&Header {
        v: VERSION,
        at: body.stored_at_ms,
        ct: body.content_type.clone(),
    })
    .unwrap_or_default();
    let mut out = BytesMut::with_capacity(header.len() + 1 + body.body.len());
    out.put_slice(&header);
    out.put_u8(b'\n');
    out.put_slice(&body.body);
    out.freeze()
}

/// A stored body of this version; anything else reads as absent.
fn decode(raw: &[u8]) -> Option<SharedBody> {
    let nl = raw.iter().position(|b| *b == b'\n')?;
    let header: Header = serde_json::from_slice(&raw[..nl]).ok()?;
    if header.v != VERSION {
        return None;
    }
    Some(SharedBody {
        body: Bytes::copy_from_slice(&raw[nl + 1..]),
        content_type: header.ct,
        stored_at_ms: header.at,
    })
}

impl RedisStore {
    /// One script: a fresh body, or the fill lease, or "someone else fills". A lookup Redis
    /// does not answer in time is retried with the same lease value; if it stays unknown this
    /// replica fills without storing (it may hold the lease: giving it back wakes the others).
    pub async fn shared_lookup(&self, key: &BodyKey<'_>, lease: Duration) -> SharedLookup {
        let s = &*self.inner;
        let Some(tier) = s.shared else {
            return SharedLookup::Off;
        };
        let base = s.keys.account(key.tenant, key.account);
        let mut call = LOOKUP.key(body_key(&base, key.path));
        call.key(fill_key(&base, key.path))
            .key(format!("{base}gen"))
            .arg(format!("{}{}", s.owner(), uuid::Uuid::new_v4().simple()))
            .arg((lease.as_millis() as u64).max(1))
            .arg(tier.max_stale.as_millis() as u64);
        let deadline = Instant::now() + LOOKUP_BUDGET.min(lease);
        let mut backoff = Duration::from_millis(10);
        loop {
            let answer = s
                .script::<(i64, Vec<u8>, String)>("shared_lookup", &call)
                .await;
            match answer {
                Ok((1, raw, _)) => {
                    return match decode(&raw) {
                        Some(body) => SharedLookup::Hit(body),
                        None => SharedLookup::Off,
                    }
                }
                Ok((0, _, generation)) => return SharedLookup::Fill(FillTicket { generation }),
                Ok(_) => return SharedLookup::Wait,
                Err(OpError::Slow(_)) if Instant::now() + backoff < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(OpError::Slow(_)) => {
                    return SharedLookup::Fill(FillTicket {
                        generation: UNKNOWN_GENERATION.into(),
                    })
                }
                Err(e) => {
                    tracing::debug!(error = %e.reason(), "shared cache lookup skipped");
                    return SharedLookup::Off;
                }
            }
        }
    }

    /// Waits for the body another replica is fetching: woken by the stored channel, reading
    /// again every [`WAIT_REREAD`] anyway. Ends early (`None`) when the lease is gone without a
    /// body: that fill failed or was not cacheable.
    pub async fn shared_wait(&self, key: &BodyKey<'_>, timeout: Duration) -> Option<SharedBody> {
        let s = &*self.inner;
        let tier = s.shared?;
        let mut wake = s.stored.subscribe();
        let base = s.keys.account(key.tenant, key.account);
        let bk: Arc<str> = body_key(&base, key.path).into();
        let lk = fill_key(&base, key.path);
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let nap = WAIT_REREAD.min(deadline - now);
            let _ = tokio::time::timeout(nap, async {
                loop {
                    match wake.recv().await {
                        Ok(k) if k == bk => return,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await;
                        }
                    }
                }
            })
            .await;
            let read = s
                .pipe::<(Option<Vec<u8>>, i64, bool)>(
                    "shared_wait",
                    redis::pipe()
                        .cmd("GET")
                        .arg(&*bk)
                        .cmd("PTTL")
                        .arg(&*bk)
                        .cmd("EXISTS")
                        .arg(&lk),
                )
                .await;
            match read {
                Ok((Some(raw), pttl, _)) if pttl > tier.max_stale.as_millis() as i64 => {
                    return decode(&raw);
                }
                Ok((_, _, false)) => return None,
                Ok(_) | Err(OpError::Slow(_)) => {}
                Err(_) => return None,
            }
        }
    }

    /// Ends a fill (or stores a body fetched outside one, with no ticket).
    pub(crate) async fn shared_fill(
        &self,
        key: &BodyKey<'_>,
        ticket: Option<FillTicket>,
        body: Option<&SharedBody>,
        ttl: Duration,
        indexed: bool,
    ) {
        let s = &*self.inner;
        let Some(tier) = s.shared else { return };
        let expiry = ttl + tier.max_stale;
        let body = body.filter(|b| b.body.len() as u64 <= tier.max_entry);
        if body.is_none() && ticket.is_none() {
            return;
        }
        let base = s.keys.account(key.tenant, key.account);
        let bk = body_key(&base, key.path);
        let note = serde_json::to_string(&StoredNote {
            v: VERSION,
            from: s.replica.clone(),
            key: bk.clone(),
        })
        .unwrap_or_default();
        let mut call = FILL.key(&bk);
        call.key(fill_key(&base, key.path))
            .key(format!("{base}gen"))
            .key(format!("{base}bodies"))
            .arg(ticket.map(|t| t.generation).unwrap_or_default())
            .arg(body.map(encode).unwrap_or_default().as_ref())
            .arg(expiry.as_millis() as u64)
            .arg(s.owner())
            .arg(expiry.max(GENERATION_RETENTION).as_millis() as u64)
            .arg(s.keys.stored())
            .arg(&note)
            .arg(u8::from(indexed))
            .arg(key.path);
        if let Err(e) = s.script::<i64>("shared_fill", &call).await {
            // The lease expires by itself; the waiters fetch on their own after their wait.
            tracing::debug!(error = %e.reason(), "shared cache fill not stored");
        }
    }

    /// Drops the account's shared bodies for each tenant (one script per tenant: each is its
    /// own hash tag, so on a cluster they may live on different nodes).
    pub async fn shared_invalidate(&self, tenants: &[Arc<str>], account: &str) {
        let s = &*self.inner;
        if s.shared.is_none() {
            return;
        }
        let drops = tenants.iter().map(|tenant| async move {
            let base = s.keys.account(tenant, account);
            let mut call = INVALIDATE.key(format!("{base}bodies"));
            call.key(format!("{base}gen"))
                .arg(GENERATION_RETENTION.as_millis() as u64);
            s.script::<i64>("shared_invalidate", &call).await
        });
        for result in futures_util::future::join_all(drops).await {
            if let Err(e) = result {
                tracing::warn!(error = %e.reason(), account, "could not drop the shared cache entries of an account");
            }
        }
    }
}

fn body_key(base: &str, path: &str) -> String {
    format!("{base}body:{path}")
}

fn fill_key(base: &str, path: &str) -> String {
    format!("{base}fill:{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_with_their_header_and_other_versions_read_as_absent() {
        let body = SharedBody {
            body: Bytes::from_static(b"{\"data\":{\"x\":\"a\nb\"}}"),
            content_type: Some("application/json".into()),
            stored_at_ms: 1_700_000_000_000,
        };
        let raw = encode(&body);
        assert_eq!(decode(&raw), Some(body));
        let other = String::from_utf8(raw.to_vec())
            .unwrap()
            .replacen("\"v\":2", "\"v\":3", 1);
        assert_eq!(decode(other.as_bytes()), None);
        assert_eq!(decode(b"no header line"), None);
    }
}
