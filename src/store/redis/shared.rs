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
use crate::clock::now_ms;
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

/// Query variants of one account's indexed bodies kept at most (the in-process cache keeps 64
/// too): client-chosen queries must not grow Redis without bound.
const MAX_VARIANTS: usize = 64;

/// The tier's settings, from `[cache]`. A body lives in Redis for its route's `ttl` only: the
/// tier answers fresh bodies, and stale-if-error is each replica's own copy.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tier {
    /// Larger bodies stay out.
    max_entry: u64,
}

impl Tier {
    pub(super) fn new(cache: &CacheConfig) -> Tier {
        Tier {
            max_entry: cache.shared_max_entry,
        }
    }
}

/// The header line of a stored body; the body bytes follow the newline.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    v: u32,
    /// Unix ms when fetched (by the fetching replica's clock).
    at: u64,
    /// The freshness it was stored with (ms): with the key's remaining life it gives the age
    /// without trusting any replica's clock.
    #[serde(default)]
    ttl: u64,
    /// Content-Type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ct: Option<String>,
}

/// `<header JSON>\n<body>`: the body stays raw bytes (no base64), the header stays readable.
fn encode(body: &SharedBody, ttl: Duration) -> Bytes {
    let header = serde_json::to_vec(&Header {
        v: VERSION,
        at: body.stored_at_ms,
        ttl: ttl.as_millis() as u64,
        ct: body.content_type.clone(),
    })
    .unwrap_or_default();
    let mut out = BytesMut::with_capacity(header.len() + 1 + body.body.len());
    out.put_slice(&header);
    out.put_u8(b'\n');
    out.put_slice(&body.body);
    out.freeze()
}

/// A stored body of this version with `pttl` ms of life left; anything else reads as absent.
fn decode(raw: &[u8], pttl: i64) -> Option<SharedBody> {
    let nl = raw.iter().position(|b| *b == b'\n')?;
    let header: Header = serde_json::from_slice(&raw[..nl]).ok()?;
    if header.v != VERSION {
        return None;
    }
    let stored_at_ms = match u64::try_from(pttl) {
        Ok(left) if header.ttl > 0 => now_ms().saturating_sub(header.ttl.saturating_sub(left)),
        _ => header.at,
    };
    Some(SharedBody {
        body: Bytes::copy_from_slice(&raw[nl + 1..]),
        content_type: header.ct,
        stored_at_ms,
    })
}

impl RedisStore {
    /// One script: a fresh body, or the fill lease, or "someone else fills". A lookup Redis
    /// does not answer in time is retried with the same lease value; if it stays unknown this
    /// replica fills without storing (it may hold the lease: giving it back wakes the others).
    pub async fn shared_lookup(&self, key: &BodyKey<'_>, lease: Duration) -> SharedLookup {
        let s = &*self.inner;
        if s.shared.is_none() {
            return SharedLookup::Off;
        }
        let base = s.keys.account(key.tenant, key.account);
        let mut call = LOOKUP.key(body_key(&base, key.path));
        call.key(fill_key(&base, key.path))
            .key(format!("{base}gen"))
            .key(s.keys.cooldown(key.tenant, key.account, key.route))
            .arg(format!("{}{}", s.owner(), uuid::Uuid::new_v4().simple()))
            .arg((lease.as_millis() as u64).max(1))
            .arg(now_ms());
        let deadline = Instant::now() + LOOKUP_BUDGET.min(lease);
        let mut backoff = Duration::from_millis(10);
        loop {
            let answer = s
                .script::<(i64, Vec<u8>, String)>("shared_lookup", &call)
                .await;
            match answer {
                Ok((1, raw, pttl)) => {
                    return match decode(&raw, pttl.parse().unwrap_or(-1)) {
                        Some(body) => SharedLookup::Hit(body),
                        None => SharedLookup::Off,
                    }
                }
                Ok((0, _, generation)) => return SharedLookup::Fill(FillTicket { generation }),
                Ok((3, _, until)) => {
                    return match until.parse() {
                        Ok(until_ms) => SharedLookup::CoolingDown(until_ms),
                        Err(_) => SharedLookup::Off,
                    }
                }
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
    /// again every `WAIT_REREAD` anyway. Ends early (`None`) when the lease is gone without a
    /// body: that fill failed or was not cacheable.
    pub async fn shared_wait(&self, key: &BodyKey<'_>, timeout: Duration) -> Option<SharedBody> {
        let s = &*self.inner;
        s.shared?;
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
                Ok((Some(raw), pttl, _)) if pttl > 0 => return decode(&raw, pttl),
                Ok((_, _, false)) => return None,
                Ok(_) | Err(OpError::Slow(_)) => {}
                Err(_) => return None,
            }
        }
    }

    /// Ends a fill: stores the body if the ticket's generation still holds.
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
        let expiry = ttl;
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
            .arg(body.map(|b| encode(b, ttl)).unwrap_or_default().as_ref())
            .arg(expiry.as_millis() as u64)
            .arg(s.owner())
            .arg(expiry.as_millis() as u64)
            .arg(s.keys.stored())
            .arg(&note)
            .arg(u8::from(indexed))
            .arg(key.path)
            .arg(MAX_VARIANTS);
        if let Err(e) = s.script::<i64>("shared_fill", &call).await {
            // The lease expires by itself; the waiters fetch on their own after their wait.
            tracing::debug!(error = %e.reason(), "shared cache fill not stored");
        }
    }

    /// The account's invalidation generation now, for a fetch that did not take the fill lease
    /// (a refetch the app asked for): its body is stored only if no sync came in between.
    pub async fn shared_ticket(&self, key: &BodyKey<'_>) -> Option<FillTicket> {
        let s = &*self.inner;
        s.shared?;
        let base = s.keys.account(key.tenant, key.account);
        let get = redis::cmd("GET").arg(format!("{base}gen")).to_owned();
        match s.cmd::<Option<String>>("shared_ticket", &get).await {
            Ok(generation) => Some(FillTicket {
                generation: generation.unwrap_or_else(|| "0".into()),
            }),
            Err(_) => None,
        }
    }

    /// Drops the account's shared bodies for each tenant (one script per tenant: each is its
    /// own hash tag, so on a cluster they may live on different nodes). A slow answer is
    /// retried: a sync that leaves the pre-sync body in Redis would let replicas adopt it.
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
            let mut result = s.script::<i64>("shared_invalidate", &call).await;
            for _ in 0..2 {
                if !matches!(result, Err(OpError::Slow(_))) {
                    break;
                }
                result = s.script::<i64>("shared_invalidate", &call).await;
            }
            result
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
        let raw = encode(&body, Duration::from_secs(300));
        // The age comes from the key's remaining life, not from the fetching replica's clock.
        let back = decode(&raw, 290_000).unwrap();
        assert_eq!(
            (back.body.clone(), back.content_type.clone()),
            (body.body.clone(), body.content_type.clone())
        );
        let age = now_ms() - back.stored_at_ms;
        assert!((10_000..11_000).contains(&age), "{age}");
        assert_eq!(decode(&raw, -1).unwrap().stored_at_ms, body.stored_at_ms);
        let other = String::from_utf8(raw.to_vec())
            .unwrap()
            .replacen("\"v\":2", "\"v\":3", 1);
        assert_eq!(decode(other.as_bytes(), 1), None);
        assert_eq!(decode(b"no header line", 1), None);
    }
}
