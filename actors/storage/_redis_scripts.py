"""The Lua scripts of the Redis backend: each check-and-write runs atomically on the server.

Keys of a conversation (one hash tag, so they share a cluster slot): ``meta`` (hash:
version, snapshot_version, created_at, updated_at, messages, log_entries, log_bytes,
snapshot_bytes, epoch, append_id), ``log`` (list: one JSON entry per append after the snapshot),
``snapshot`` (string: the fold up to ``snapshot_version``), ``lease`` (string
``"<token>|<owner>"`` with a PX expiry, so the server's clock decides expiry) and ``fence``
(the counter of fencing tokens, kept when the conversation is deleted).

Answers are arrays whose first item says what happened (``ok``, ``conflict``,
``lease_lost``, ``lease_held``, ``corrupt``, ``none``...). A script checks everything before
its first write, so a refused or failed call changes nothing.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "APPEND", "COMPACT", "DELETE", "INFO", "LOAD", "RELEASE", "RENEW"]

# Shared prelude: the lease check of a write. ARGV[1] is the lease value ('' for none).
_WRITER = """
local held = redis.call('GET', KEYS[4])
if ARGV[1] ~= '' then
  if held ~= ARGV[1] then
    if held then return {'lease_lost', held} end
    return {'lease_lost', ''}
  end
elseif held then
  return {'lease_held', held, redis.call('PTTL', KEYS[4])}
end
local function kind(key)
  return redis.call('TYPE', key)['ok']
end
local function check_type(key, expected, what)
  local t = kind(key)
  if t ~= expected and t ~= 'none' then
    return 'its ' .. what .. ' is a Redis ' .. t .. ', not a ' .. expected
  end
  return nil
end
"""

#: KEYS: meta, log, snapshot, lease. ARGV: lease value, expected version, entry,
#: reset message count ('1'/'0'), message count (delta), epoch for a new conversation,
#: append id ('' for none). A retry whose append is already the head (its id, the version
#: after the expected one) answers 'ok' without writing; a conflict names the head's id.
APPEND = (
    _WRITER
    + """
local problem = check_type(KEYS[1], 'hash', 'head') or check_type(KEYS[2], 'list', 'change log')
if problem then return {'corrupt', problem} end
local fields = {'version', 'messages', 'log_entries', 'log_bytes', 'snapshot_bytes'}
local h = redis.call('HMGET', KEYS[1], 'version', 'messages', 'log_entries', 'log_bytes',
  'snapshot_bytes', 'append_id')
local version = 0
if h[1] then
  for i = 1, #fields do
    if not tonumber(h[i]) then
      return {'corrupt', 'its head field ' .. fields[i] .. ' is not a number'}
    end
  end
  version = tonumber(h[1])
elseif redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  return {'corrupt', 'its head has no version'}
end
if version ~= tonumber(ARGV[2]) then
  local head_id = h[6] or ''
  if ARGV[7] ~= '' and head_id == ARGV[7] and version == tonumber(ARGV[2]) + 1 then
    return {'ok', version, tonumber(h[3]), tonumber(h[4]), tonumber(h[5])}
  end
  return {'conflict', version, head_id}
end
local now = redis.call('TIME')
local at = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local size = string.len(ARGV[3])
local entries, bytes, snap, messages
if version == 0 then
  entries, bytes, snap, messages = 1, size, 0, tonumber(ARGV[5])
  redis.call('HSET', KEYS[1], 'created_at', at, 'snapshot_version', 0, 'epoch', ARGV[6])
else
  entries = tonumber(h[3]) + 1
  bytes = tonumber(h[4]) + size
  snap = tonumber(h[5])
  messages = tonumber(ARGV[5])
  if ARGV[4] ~= '1' then messages = messages + tonumber(h[2]) end
end
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'version', version + 1, 'updated_at', at, 'messages', messages,
  'log_entries', entries, 'log_bytes', bytes, 'snapshot_bytes', snap, 'append_id', ARGV[7])
return {'ok', version + 1, entries, bytes, snap}
"""
)

#: KEYS: meta, log, snapshot, lease. ARGV: lease value.
DELETE = (
    _WRITER
    + """
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return {'ok', existed}
"""
)

#: KEYS: meta, log, snapshot. The head, the snapshot and the log, read atomically.
LOAD = """
local kinds = {{KEYS[1], 'hash', 'head'}, {KEYS[2], 'list', 'change log'},
  {KEYS[3], 'string', 'snapshot'}}
local head = redis.call('TYPE', KEYS[1])['ok']
if head == 'none' then return {'none'} end
for _, k in ipairs(kinds) do
  local t = redis.call('TYPE', k[1])['ok']
  if t ~= k[2] and t ~= 'none' then
    return {'corrupt', 'its ' .. k[3] .. ' is a Redis ' .. t .. ', not a ' .. k[2]}
  end
end
local h = redis.call('HMGET', KEYS[1], 'version', 'snapshot_version', 'epoch')
return {'ok', h[1], h[2], h[3], redis.call('GET', KEYS[3]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""

#: KEYS: meta, log, snapshot. ARGV: epoch, base snapshot version, new snapshot version,
#: snapshot data, entries folded, bytes folded. 1 if done, 0 if the conversation moved on.
COMPACT = """
local h = redis.call('HMGET', KEYS[1], 'epoch', 'snapshot_version', 'log_entries', 'log_bytes')
if h[1] ~= ARGV[1] or tonumber(h[2]) ~= tonumber(ARGV[2]) then return 0 end
if not tonumber(h[3]) or not tonumber(h[4]) then return 0 end
local n = tonumber(ARGV[5])
redis.call('LTRIM', KEYS[2], n, -1)
redis.call('SET', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[1], 'snapshot_version', ARGV[3], 'log_entries', tonumber(h[3]) - n,
  'log_bytes', tonumber(h[4]) - tonumber(ARGV[6]), 'snapshot_bytes', string.len(ARGV[4]))
return 1
"""

#: KEYS: meta, lease. The head's figures and the live lease.
INFO = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {'none'} end
if t ~= 'hash' then return {'corrupt', 'its head is a Redis ' .. t .. ', not a hash'} end
local h = redis.call('HMGET', KEYS[1], 'version', 'created_at', 'updated_at', 'messages',
  'log_entries', 'log_bytes', 'snapshot_bytes')
local held = redis.call('GET', KEYS[2])
return {'ok', h[1], h[2], h[3], h[4], h[5], h[6], h[7], held, redis.call('PTTL', KEYS[2])}
"""

#: KEYS: lease, fence. ARGV: owner, ttl in ms.
ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then return {'lease_held', held, redis.call('PTTL', KEYS[1])} end
local fence = redis.call('GET', KEYS[2])
if fence and not tonumber(fence) then
  return {'corrupt', 'its fencing counter is not a number'}
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return {'ok', token}
"""

#: KEYS: lease. ARGV: lease value, ttl in ms.
RENEW = """
local held = redis.call('GET', KEYS[1])
if held ~= ARGV[1] then
  if held then return {'lease_lost', held} end
  return {'lease_lost', ''}
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'ok'}
"""

#: KEYS: lease. ARGV: lease value. 1 if it was live and is now released.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
