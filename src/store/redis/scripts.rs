//! The Lua scripts that make multi-key changes atomic, and their preloading.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

/// Claims the window of a key atomically: a stored record whose window is still open wins over
/// any claim (answered with the record), a lease already ours is ours (a retry of a claim whose
/// answer was lost), another's lease loses, else the lease is taken.
/// KEYS: lease, record. ARGV: lease value, lease ms, window ms, now ms.
/// Returns `{2, record}` (windowed), `{1, ""}` (won) or `{0, ""}` (lost).
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local rec = redis.call('GET', KEYS[2])
if rec then
  local ok, r = pcall(cjson.decode, rec)
  if ok and type(r) == 'table' and tonumber(r['started_at'])
     and tonumber(ARGV[4]) - tonumber(r['started_at']) < tonumber(ARGV[3]) then
    return {2, rec}
  end
end
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return {1, ''} end
if v then return {0, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ''}
"#,
    )
});

/// Puts back a record that Redis lost (a restart, an outage), unless Redis holds a better one:
/// the earliest start among records whose window is still open, else the latest. While the
/// window is open it also holds the lease, so no replica claims inside it.
/// KEYS: record, job index, lease. ARGV: record JSON, started_at, retention ms, index JSON,
/// lease value, window ms, now ms.
pub(super) static SEED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local started = tonumber(ARGV[2])
local window = tonumber(ARGV[6])
local now = tonumber(ARGV[7])
local ours_open = now - started < window
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, r = pcall(cjson.decode, cur)
  if ok and type(r) == 'table' and tonumber(r['started_at']) then
    local theirs = tonumber(r['started_at'])
    local theirs_open = now - theirs < window
    if theirs_open and (not ours_open or theirs <= started) then return 0 end
    if not theirs_open and not ours_open and theirs >= started then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
if ours_open then
  redis.call('SET', KEYS[3], ARGV[5], 'PX', math.max(1, started + window - now), 'NX')
end
return 1
"#,
    )
});

/// Deletes the lease only while it is still ours (ARGV[1] = `<replica>:`).
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Stores the record and its job index, shortens our lease to the rest of the window (so the
/// next window can be claimed when this one ends), and announces the record.
/// KEYS: record, job index, lease. ARGV: record JSON, index JSON, retention ms, `<replica>:`,
/// window left ms, stored channel, stored message.
pub(super) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
local v = redis.call('GET', KEYS[3])
if v and string.sub(v, 1, string.len(ARGV[4])) == ARGV[4] then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return 1
"#,
    )
});

/// Compare-and-set of a record, keeping its expiry. KEYS: record. ARGV: expected, new.
pub(super) static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"#,
    )
});

/// Loads the scripts so their first use is one round trip (Redis forgets them on restart).
pub(super) async fn load_scripts(conn: &mut ConnectionManager) -> RedisResult<()> {
    for script in [&*CLAIM, &*SEED, &*RELEASE, &*PUT, &*SWAP] {
        script.load_async(conn).await?;
    }
    Ok(())
}
