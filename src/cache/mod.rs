//! Cache storage for balances and transactions (spec §4): bodies, freshness and the hashes
//! behind `x-has-new-data`. It knows nothing of requests; the cached-read class drives it.
//!
//! Entries are grouped per (tenant, account) so that invalidating an account after a sync is one
//! operation and the pre-sync content hashes that drive `x-has-new-data` live beside the bodies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use tokio::time::Instant;

use crate::config::CacheConfig;

mod storable;

pub use storable::{data_hash, storable, NotStored};

/// Bytes charged per account group on top of its key and bodies: moka's per-entry bookkeeping
/// plus our structs. Measured with a counting allocator: one balance (23-byte key, 220-byte
/// body) cost ~890 heap bytes, an overhead of ~640 of which ~160 per path; boxing the sync
/// marks and the rare content types took 48 bytes off each of the two since.
const ACCOUNT_OVERHEAD: usize = 432;
/// Bytes charged per cached path on top of its name and body (`CachedBody`, `Arc`, list slot).
const PATH_OVERHEAD: usize = 112;

/// Distinct paths (query variants) cached per account at most.
const MAX_PATHS_PER_ACCOUNT: usize = 64;

/// Mono's content type, held as a static value instead of a copy per entry.
pub const JSON: &str = "application/json";

/// One cached 200 response body, held once and shared by every hit.
#[derive(Debug)]
pub struct CachedBody {
    /// The body bytes exactly as served.
    pub body: Bytes,
    /// The upstream `Content-Type` (see [`CachedBody::content_type`]).
    content_type: ContentType,
    /// When it was fetched.
    pub stored_at: Instant,
    /// Its route's freshness lifetime.
    pub ttl: Duration,
    /// Hash of the envelope's `data`, to tell whether a sync changed anything.
    pub hash: u64,
    /// The synthesized `x-has-new-data` for this body.
    pub has_new_data: bool,
    /// Soft-purged by an operator: served stale while one refresh replaces it.
    pub purged: AtomicBool,
}

/// A body's `Content-Type`: Mono's own is a tag and anything else is boxed (rare), so that a
/// cached body's record takes a 112-byte allocation instead of a 160-byte one.
#[derive(Debug, Clone)]
enum ContentType {
    Absent,
    Json,
    Other(Box<HeaderValue>),
}

impl CachedBody {
    /// The upstream `Content-Type`.
    pub fn content_type(&self) -> Option<HeaderValue> {
        match &self.content_type {
            ContentType::Absent => None,
            ContentType::Json => Some(HeaderValue::from_static(JSON)),
            ContentType::Other(v) => Some(HeaderValue::clone(v)),
        }
    }

    /// Whether the upstream `Content-Type` is Mono's own `application/json`.
    pub fn is_json(&self) -> bool {
        matches!(self.content_type, ContentType::Json)
    }

    /// The same body with another `x-has-new-data`.
    fn with_new_data(&self, has_new_data: bool) -> CachedBody {
        CachedBody {
            body: self.body.clone(),
            content_type: self.content_type.clone(),
            stored_at: self.stored_at,
            ttl: self.ttl,
            hash: self.hash,
            has_new_data,
            purged: AtomicBool::new(self.purged.load(Ordering::Relaxed)),
        }
    }
}

#[derive(Default)]
struct AccountEntry {
    inner: RwLock<AccountInner>,
}

#[derive(Default)]
struct AccountInner {
    paths: Vec<(Box<str>, Arc<CachedBody>)>,
    /// What finished syncs left to compare; boxed, as most accounts never have any and every
    /// cached account would otherwise carry its 56 bytes.
    marks: Option<Box<Marks>>,
}

/// An account's `x-has-new-data` bookkeeping between a finished sync and the next job.
#[derive(Default)]
struct Marks {
    /// Hash of what was served before the last finished sync, per path, awaiting comparison.
    presync: Vec<(Box<str>, u64)>,
    /// Outcome of that comparison, held until the next realtime job starts.
    new_data: Vec<(Box<str>, bool)>,
    /// `meta.has_new_data` from Mono's webhook, which beats our own comparison.
    forced: Option<bool>,
}

impl Marks {
    /// The `x-has-new-data` of a body of `hash` stored now for `path`.
    fn has_new_data(&mut self, path: &str, hash: u64) -> bool {
        if let Some(i) = self.presync.iter().position(|(p, _)| &**p == path) {
            let (_, before) = self.presync.swap_remove(i);
            let changed = before != hash;
            upsert(&mut self.new_data, path, changed);
            self.forced.unwrap_or(changed)
        } else if let Some(forced) = self.forced {
            forced
        } else {
            self.new_data
                .iter()
                .find(|(p, _)| &**p == path)
                .is_some_and(|(_, b)| *b)
        }
    }
}

impl AccountEntry {
    fn weight(&self) -> usize {
        let inner = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let paths: usize = inner
            .paths
            .iter()
            .map(|(p, b)| PATH_OVERHEAD + p.len() + b.body.len())
            .sum();
        let marks: usize = inner.marks.as_ref().map_or(0, |m| {
            m.presync
                .iter()
                .map(|(p, _)| p.len() + 24)
                .chain(m.new_data.iter().map(|(p, _)| p.len() + 24))
                .sum::<usize>()
                + size_of::<Marks>()
        });
        ACCOUNT_OVERHEAD + paths + marks
    }
}

fn upsert<T>(list: &mut Vec<(Box<str>, T)>, key: &str, value: T) {
    match list.iter_mut().find(|(k, _)| &**k == key) {
        Some(slot) => slot.1 = value,
        None => {
            // Most accounts hold one or two paths: grow exactly rather than by doubling.
            list.reserve_exact(1);
            list.push((key.into(), value));
        }
    }
}

/// How a body is stored: its route's freshness, its age when it arrives (a body another replica
/// fetched), and whether its route answers in Mono's v2 envelope.
#[derive(Debug, Clone, Copy)]
pub struct Storing {
    /// The route's freshness lifetime.
    pub ttl: Duration,
    /// How old the body already is.
    pub age: Duration,
    /// The route answers in Mono's envelope (`data`): anything else is refused.
    pub enveloped: bool,
}

impl Storing {
    /// A body fetched just now for a route of `ttl`.
    pub fn fresh(ttl: Duration, enveloped: bool) -> Storing {
        Storing {
            ttl,
            age: Duration::ZERO,
            enveloped,
        }
    }
}

/// Freshness of a cached body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Within the TTL; seconds left.
    Fresh(i64),
    /// Past the TTL but within `max_stale`; seconds past.
    Stale(i64),
    /// Too old to serve at all.
    Expired,
    /// Soft-purged: served stale while one refresh replaces it.
    Purged,
}

/// The route name a path key (`transactions?page=2`, `statement_job/j1`) starts with.
pub fn route_of(path_key: &str) -> &str {
    path_key.split(['/', '?']).next().unwrap_or(path_key)
}

/// Which account groups a purge touches.
#[derive(Debug, Clone, Copy)]
pub enum Groups<'a> {
    /// These group keys (`tenant:account`).
    Keys(&'a [String]),
    /// Every group.
    All,
}

/// How long an account group lives after its last change: the longest route freshness plus
/// `max_stale`, both reloadable, so the expiry reads them when an entry is written.
struct Retention {
    ms: Arc<AtomicU64>,
}

impl moka::Expiry<Arc<str>, Arc<AccountEntry>> for Retention {
    fn expire_after_create(
        &self,
        _: &Arc<str>,
        _: &Arc<AccountEntry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(self.ms.load(Ordering::Relaxed)))
    }

    fn expire_after_update(
        &self,
        _: &Arc<str>,
        _: &Arc<AccountEntry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(self.ms.load(Ordering::Relaxed)))
    }
}

/// The bounded response cache.
pub struct ResponseCache {
    entries: moka::sync::Cache<Arc<str>, Arc<AccountEntry>>,
    /// `max_stale` in ms (reloadable).
    max_stale_ms: AtomicU64,
    /// A group's life after its last change, in ms (reloadable).
    retention_ms: Arc<AtomicU64>,
}

impl ResponseCache {
    /// A cache bounded by `max_bytes`, keeping account groups for the longest route freshness
    /// (`max_ttl`, at least `ttl`) plus `max_stale`.
    pub fn new(cfg: &CacheConfig, max_ttl: Duration) -> ResponseCache {
        let retention_ms = Arc::new(AtomicU64::new(0));
        let entries = moka::sync::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|k: &Arc<str>, v: &Arc<AccountEntry>| {
                (k.len() + v.weight()).try_into().unwrap_or(u32::MAX)
            })
            .expire_after(Retention {
                ms: Arc::clone(&retention_ms),
            })
            .build();
        let cache = ResponseCache {
            entries,
            max_stale_ms: AtomicU64::new(0),
            retention_ms,
        };
        cache.set_lifetimes(cfg, max_ttl);
        cache
    }

    /// Applies reloaded freshness settings: `max_stale` at once, the retention of a group from
    /// its next change (bodies keep the TTL they were stored with).
    pub fn set_lifetimes(&self, cfg: &CacheConfig, max_ttl: Duration) {
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        self.max_stale_ms
            .store(ms(cfg.max_stale), Ordering::Relaxed);
        self.retention_ms
            .store(ms(cfg.ttl.max(max_ttl) + cfg.max_stale), Ordering::Relaxed);
    }

    fn max_stale(&self) -> Duration {
        Duration::from_millis(self.max_stale_ms.load(Ordering::Relaxed))
    }

    /// The body cached for a path of an account, whatever its age.
    pub fn lookup(&self, account_key: &str, path: &str) -> Option<Arc<CachedBody>> {
        self.with_paths(account_key, |paths| {
            paths
                .iter()
                .find(|(p, _)| &**p == path)
                .map(|(_, b)| Arc::clone(b))
        })?
    }

    /// Runs `f` over an account group's cached paths, under its read lock.
    fn with_paths<T>(
        &self,
        account_key: &str,
        f: impl FnOnce(&[(Box<str>, Arc<CachedBody>)]) -> T,
    ) -> Option<T> {
        let entry = self.entries.get(account_key)?;
        let inner = entry
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(f(&inner.paths))
    }

    /// How fresh a body is now.
    pub fn freshness(&self, body: &CachedBody) -> Freshness {
        self.freshness_at(body, body.stored_at.elapsed())
    }

    /// How fresh a body of `age` is (the age read once by a caller that needs it again).
    pub fn freshness_at(&self, body: &CachedBody, age: Duration) -> Freshness {
        let ttl = body.ttl;
        let max_stale = self.max_stale();
        if body.purged.load(Ordering::Relaxed) && age < ttl + max_stale {
            Freshness::Purged
        } else if age < ttl {
            Freshness::Fresh((ttl - age).as_secs() as i64)
        } else if age < ttl + max_stale {
            Freshness::Stale((age - ttl).as_secs() as i64)
        } else {
            Freshness::Expired
        }
    }

    /// Stores a 200 body and works out its `x-has-new-data`; a body its route's rule refuses
    /// (a CDN's HTML page, a maintenance notice outside Mono's envelope) is never served for a
    /// whole TTL.
    pub fn store(
        &self,
        account_key: &str,
        path: &str,
        body: Bytes,
        content_type: Option<HeaderValue>,
        how: Storing,
    ) -> Result<Arc<CachedBody>, NotStored> {
        let Storing {
            ttl,
            age,
            enveloped,
        } = how;
        let now = Instant::now();
        let stored_at = now.checked_sub(age).unwrap_or(now);
        let hash = storable(content_type.as_ref(), &body, enveloped)?;
        // Bodies and header values parsed by hyper are slices of the connection's read buffer
        // (8 KiB or more) and would pin all of it for as long as the entry lives (measured:
        // ~9 KiB per cached balance instead of ~0.9 KiB): keep exact copies instead.
        let body = Bytes::copy_from_slice(&body);
        let content_type = match content_type {
            None => ContentType::Absent,
            Some(v) if v == JSON => ContentType::Json,
            Some(v) => {
                ContentType::Other(Box::new(HeaderValue::from_bytes(v.as_bytes()).unwrap_or(v)))
            }
        };
        let key: Arc<str> = account_key.into();
        let entry = self.entries.get_with(Arc::clone(&key), Default::default);
        let cached = {
            let mut inner = entry
                .inner
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let has_new_data = inner
                .marks
                .as_mut()
                .is_some_and(|m| m.has_new_data(path, hash));
            let cached = Arc::new(CachedBody {
                body,
                content_type,
                stored_at,
                ttl,
                hash,
                has_new_data,
                purged: AtomicBool::new(false),
            });
            let max_stale = self.max_stale();
            inner
                .paths
                .retain(|(_, b)| b.stored_at.elapsed() < b.ttl + max_stale);
            // Query variants are client-chosen: bound them so one account cannot grow a long
            // list that every read of that account scans. The oldest variant goes first.
            if inner.paths.len() >= MAX_PATHS_PER_ACCOUNT
                && !inner.paths.iter().any(|(p, _)| &**p == path)
            {
                inner.paths.remove(0);
            }
            upsert(&mut inner.paths, path, Arc::clone(&cached));
            cached
        };
        // Re-inserting makes moka weigh the group again with its new size.
        self.entries.insert(key, entry);
        Ok(cached)
    }

    /// Drops an account's bodies after a finished sync (those whose path `drops` says), and
    /// remembers their hashes.
    pub fn invalidate(
        &self,
        account_key: &str,
        has_new_data: Option<bool>,
        drops: &dyn Fn(&str) -> bool,
    ) {
        let Some(entry) = self.entries.get(account_key) else {
            if let Some(forced) = has_new_data {
                let entry = Arc::new(AccountEntry::default());
                entry
                    .inner
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .marks = Some(Box::new(Marks {
                    forced: Some(forced),
                    ..Marks::default()
                }));
                self.entries.insert(account_key.into(), entry);
            }
            return;
        };
        {
            let mut inner = entry
                .inner
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (dropped, kept): (Vec<_>, Vec<_>) =
                inner.paths.drain(..).partition(|(path, _)| drops(path));
            inner.paths = kept;
            // Nothing to compare later, nothing to allocate.
            if !dropped.is_empty() || has_new_data.is_some() {
                let marks = inner.marks.get_or_insert_default();
                for (path, body) in dropped {
                    upsert(&mut marks.presync, &path, body.hash);
                }
                if has_new_data.is_some() {
                    marks.forced = has_new_data;
                }
            }
        }
        self.entries.insert(account_key.into(), entry);
    }

    /// A new realtime job started: `x-has-new-data` goes back to false for the account.
    pub fn job_started(&self, account_key: &str) {
        let Some(entry) = self.entries.get(account_key) else {
            return;
        };
        let mut inner = entry
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The comparison a finished sync left pending belongs to the old job; a new job starts clean.
        inner.marks = None;
        for (_, body) in &mut inner.paths {
            if body.has_new_data {
                *body = Arc::new(body.with_new_data(false));
            }
        }
    }

    /// Purges the bodies of `groups` whose path `paths` accepts: `hard` drops them, otherwise
    /// they are marked to be served stale while one refresh replaces them. What a finished sync
    /// left to compare (`x-has-new-data`) stays. Returns the bodies purged.
    pub fn purge(&self, groups: Groups<'_>, paths: &dyn Fn(&str) -> bool, hard: bool) -> usize {
        let purge_group = |key: Arc<str>, entry: Arc<AccountEntry>| {
            let n = {
                let mut inner = entry
                    .inner
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if hard {
                    let before = inner.paths.len();
                    inner.paths.retain(|(p, _)| !paths(p));
                    before - inner.paths.len()
                } else {
                    let mut n = 0;
                    for (_, body) in inner.paths.iter().filter(|(p, _)| paths(p)) {
                        body.purged.store(true, Ordering::Relaxed);
                        n += 1;
                    }
                    n
                }
            };
            if hard && n > 0 {
                // Weighed again with what is left.
                self.entries.insert(key, entry);
            }
            n
        };
        match groups {
            Groups::Keys(keys) => keys
                .iter()
                .filter_map(|k| {
                    let key: Arc<str> = k.as_str().into();
                    let entry = self.entries.get(&key)?;
                    Some(purge_group(key, entry))
                })
                .sum(),
            Groups::All => self
                .entries
                .iter()
                .map(|(key, entry)| purge_group(Arc::clone(&key), entry))
                .sum(),
        }
    }

    /// Drops the groups whose key `keep` refuses (a tenant no longer configured).
    pub fn retain_groups(&self, keep: &dyn Fn(&str) -> bool) {
        for (key, _) in &self.entries {
            if !keep(&key) {
                self.entries.invalidate(&*key);
            }
        }
    }

    /// Every body cached for an account group, by path (for the admin view).
    pub fn entries(&self, account_key: &str) -> Vec<(String, Arc<CachedBody>)> {
        self.with_paths(account_key, |paths| {
            paths
                .iter()
                .map(|(p, b)| (p.to_string(), Arc::clone(b)))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Account groups held.
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// Bytes held, as weighed.
    pub fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }
}

/// A small cache config for unit tests.
#[cfg(test)]
pub(crate) fn tests_config() -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_secs(300),
        max_stale: Duration::from_secs(60),
        max_bytes: 1 << 20,
        refresh_ahead: false,
        shared: false,
        shared_max_entry: 1024,
        request_directives: true,
    }
}

#[cfg(test)]
mod tests;
