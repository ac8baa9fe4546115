//! The Lua scripts. Each one is the whole read-check-write of one key (or of a key and its
//! companion in the same slot), so it is atomic on the server; loaded on every master at
//! start-up and run by SHA (loaded again on `NOSCRIPT`, e.g. on a replica just promoted).

use fred::types::scripts::Script;

/// KEYS: counters hash, its `:applied` companion. ARGV: source (`topic/partition`), expiry
/// (unix seconds), then `offset, event_type` pairs in offset order. Counts only the records
/// past the last offset applied to this key from this source, so a redelivered record is
/// never counted twice. Returns how many were counted.
pub const COUNTERS: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
local top = last
local counted = 0
for i = 3, #ARGV, 2 do
  local offset = tonumber(ARGV[i])
  if offset > last then
    redis.call('HINCRBY', KEYS[1], ARGV[i + 1], 1)
    counted = counted + 1
    if offset > top then top = offset end
  end
end
if counted > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], top)
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
  redis.call('EXPIREAT', KEYS[2], ARGV[2])
end
return counted
"#;

/// KEYS: timeline. ARGV: length, ttl (ms), then `event_time, member` pairs. Adds the entries,
/// keeps the newest `length`, expires `ttl` after the newest entry. Returns the length.
pub const TIMELINE: &str = r#"
for i = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[1]) + 1))
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] then
  redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(newest[2])) + tonumber(ARGV[2]))
end
return redis.call('ZCARD', KEYS[1])
"#;

/// KEYS: session. ARGV: event_time, event_id, user_id, event_type, service, idle (ms), and
/// the earliest event time of the batch. The `last_*` fields move only to a newer event
/// (event time, then event id); `started_at` only to an earlier one. Expires `idle` after the
/// newest event. Returns 1 if the event was the newest, else 0.
pub const SESSION: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'last_event_time', 'last_event_id', 'started_at')
local t = tonumber(ARGV[1])
local earliest = tonumber(ARGV[7])
if (not cur[3]) or earliest < tonumber(cur[3]) then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[7])
end
local stored = cur[1] and tonumber(cur[1])
if (not stored) or t > stored or (t == stored and ARGV[2] > cur[2]) then
  redis.call('HSET', KEYS[1], 'last_event_time', ARGV[1], 'last_event_id', ARGV[2],
    'user_id', ARGV[3], 'last_event_type', ARGV[4], 'service', ARGV[5])
  redis.call('PEXPIREAT', KEYS[1], t + tonumber(ARGV[6]))
  return 1
end
return 0
"#;

/// KEYS: order. ARGV: version, expiry (unix ms), then `field, value` pairs. Replaces the hash
/// only if `version` is greater than the stored one. Returns 1 if written, 0 if stale.
pub const ORDER: &str = r#"
local stored = redis.call('HGET', KEYS[1], 'version')
if stored and tonumber(stored) >= tonumber(ARGV[1]) then
  return 0
end
local fields = {'version', ARGV[1]}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"#;

/// The scripts, hashed.
pub struct Scripts {
    pub counters: Script,
    pub timeline: Script,
    pub session: Script,
    pub order: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            counters: Script::from_lua(COUNTERS),
            timeline: Script::from_lua(TIMELINE),
            session: Script::from_lua(SESSION),
            order: Script::from_lua(ORDER),
        }
    }

    pub fn all(&self) -> [&Script; 4] {
        [&self.counters, &self.timeline, &self.session, &self.order]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Self::new()
    }
}
