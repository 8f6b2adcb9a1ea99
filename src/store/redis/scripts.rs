//! The Lua scripts that make multi-key changes atomic, and their preloading.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{RedisResult, Script};

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
    for script in [&*RELEASE, &*PUT, &*SWAP] {
        script.load_async(conn).await?;
    }
    Ok(())
}
