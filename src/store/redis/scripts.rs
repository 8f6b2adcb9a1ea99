//! The Lua scripts that make multi-key changes atomic, and their preloading.
//!
//! Every script touches keys of one hash tag only (one tenant and account), so each runs on one
//! node of a Redis Cluster; the job index, which starts from a job id alone, is written apart.

use std::sync::LazyLock;

use redis::{RedisResult, Script};

use super::Link;

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
/// KEYS: record, lease. ARGV: record JSON, started_at, retention ms, lease value, window ms,
/// now ms. Returns 1 when it wrote (the caller then writes the job index).
pub(super) static SEED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local started = tonumber(ARGV[2])
local window = tonumber(ARGV[5])
local now = tonumber(ARGV[6])
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
if ours_open then
  redis.call('SET', KEYS[2], ARGV[4], 'PX', math.max(1, started + window - now), 'NX')
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

/// Stores the record, shortens our lease to the rest of the window (so the next window can be
/// claimed when this one ends), and announces the record.
/// KEYS: record, lease. ARGV: record JSON, retention ms, `<replica>:`, window left ms, stored
/// channel, stored message.
pub(super) static PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local v = redis.call('GET', KEYS[2])
if v and string.sub(v, 1, string.len(ARGV[3])) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[5], ARGV[6])
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

/// Shared cache lookup: a body (kept for its freshness only) is answered with its remaining
/// life; a 429 cooldown in force stops the miss there (no second round trip to ask); otherwise
/// the fill lease is taken if free (or recognised as ours: a retry of a lookup whose answer was
/// lost). KEYS: body, fill lease, generation, cooldown. ARGV: lease value, lease ms, now ms.
/// Returns `{state, body, x}`: state 1 = hit (x = PTTL), 0 = this replica fills, 2 = another
/// replica fills (x = the generation to hand back to [`FILL`]), 3 = cooling down (x = until).
pub(super) static LOOKUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local b = redis.call('GET', KEYS[1])
if b then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then return {1, b, tostring(left)} end
end
local cd = redis.call('GET', KEYS[4])
if cd and tonumber(cd) and tonumber(cd) > tonumber(ARGV[3]) then
  return {3, '', cd}
end
local g = redis.call('GET', KEYS[3]) or '0'
if redis.call('GET', KEYS[2]) == ARGV[1]
   or redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, '', g}
end
return {2, '', g}
"#,
    )
});

/// Ends a fill: stores the body unless the account was invalidated since the lookup (the
/// generation moved), gives the lease back if ours, and wakes the replicas waiting on it.
/// KEYS: body, fill lease, generation, body index. ARGV: generation seen ('' = store
/// regardless), body ('' = nothing to store), expiry ms, `<replica>:`, index expiry ms, stored
/// channel, stored message, indexed (1 = a finished sync drops it), the body's path (what the
/// index holds: the key's tail, not the whole key, keeps the set small), the most variants an
/// account's index may hold. Returns 1 when stored.
pub(super) static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local stored = 0
local ok = ARGV[2] ~= '' and (ARGV[1] == '' or (redis.call('GET', KEYS[3]) or '0') == ARGV[1])
if ok and ARGV[8] == '1' and redis.call('SISMEMBER', KEYS[4], ARGV[9]) == 0
   and redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[10]) then
  ok = false
end
if ok then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  if ARGV[8] == '1' then
    redis.call('SADD', KEYS[4], ARGV[9])
    if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[5]) then
      redis.call('PEXPIRE', KEYS[4], ARGV[5])
    end
  end
  stored = 1
end
local v = redis.call('GET', KEYS[2])
if v and string.sub(v, 1, string.len(ARGV[4])) == ARGV[4] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[6], ARGV[7])
return stored
"#,
    )
});

/// Drops every indexed shared body of an account and moves its generation on, so a fill that
/// started before the sync cannot store its pre-sync body afterwards. The bodies share the
/// index's hash tag: `<account base>bodies` holds paths of `<account base>body:<path>`.
/// KEYS: body index, generation. ARGV: generation expiry ms. Returns the bodies dropped.
pub(super) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local base = string.sub(KEYS[1], 1, -7)
local bodies = redis.call('SMEMBERS', KEYS[1])
for _, p in ipairs(bodies) do redis.call('DEL', base .. 'body:' .. p) end
redis.call('DEL', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return #bodies
"#,
    )
});

/// Claims one step of a webhook delivery (applying it, or relaying it to one target).
/// KEYS: step. ARGV: `busy:<replica>`, busy lease ms. Returns `mine`, `done` or `busy`.
pub(super) static STEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('GET', KEYS[1])
if not v or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'mine'
end
if v == 'done' then return 'done' end
return 'busy'
"#,
    )
});

/// Gives a delivery step back when it failed, if it is still ours. KEYS: step. ARGV: value.
pub(super) static UNSTEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});

/// One GCRA step of a client's rate limit, on Redis's clock so replicas' clocks cannot differ
/// (the arithmetic of `limits::gcra`). KEYS: arrival time. ARGV: interval µs, burst.
/// Returns 0 (allowed, time advanced) or the µs to wait.
pub(super) static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local nxt = tat + interval
local allow_at = nxt - interval * tonumber(ARGV[2])
if now < allow_at then return allow_at - now end
redis.call('SET', KEYS[1], string.format('%.0f', nxt), 'PX', string.format('%.0f', math.floor((nxt - now) / 1000) + 1))
return 0
"#,
    )
});

/// Spends one call of a client's quota for a period. KEYS: the period's count. ARGV: calls
/// allowed, expiry (unix ms). Returns `{1, spent}` or `{0, spent}` (over: nothing spent).
pub(super) static QUOTA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIREAT', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return {0, n - 1}
end
return {1, n}
"#,
    )
});

/// Gives back one call of a period that was spent and then not made. KEYS: the period's count.
pub(super) static REFUND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = tonumber(redis.call('GET', KEYS[1]))
if n and n > 0 then return redis.call('DECR', KEYS[1]) end
return 0
"#,
    )
});

/// Loads the scripts so their first use is one round trip (Redis forgets them on restart; on a
/// cluster every master gets them).
pub(super) async fn load_scripts(conn: &mut Link) -> RedisResult<()> {
    for script in [
        &*CLAIM,
        &*SEED,
        &*RELEASE,
        &*PUT,
        &*SWAP,
        &*LOOKUP,
        &*FILL,
        &*INVALIDATE,
        &*STEP,
        &*UNSTEP,
        &*RATE,
        &*QUOTA,
        &*REFUND,
    ] {
        script.load_async(conn).await?;
    }
    Ok(())
}
