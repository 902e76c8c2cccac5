"""The Lua scripts of the cluster: each check-and-write is one script, atomic on the server.

Key layout (``P`` is the prefix, ``K`` an entity key, ``W`` a worker id):

- ``P workers``: set of the worker ids that announced themselves;
- ``P worker:W``: hash ``load``, ``keys``, ``host``, ``pid``, ``started`` of a live worker,
  expiring (``PX``) unless its heartbeat renews it: its absence means the worker is dead;
- ``P inbox:W``: stream of the commands sent to worker ``W``;
- ``P owner:K``: ``EPOCH|W``, the placement of ``K``, expiring unless its owner renews it;
- ``P epoch:K``: the fencing counter of ``K``, one more for every placement;
- ``P out:K``: stream of the output of ``K``'s session.

The scripts touch keys they compute from the prefix (a worker's hash and inbox), so they need
a standalone (or replicated) Redis, not Redis Cluster.
"""

from __future__ import annotations

__all__ = ["EMIT", "HEARTBEAT", "INTERRUPT", "RELEASE", "SEND", "SIGN_OFF"]

#: Place ``K`` on the least-loaded live worker unless it is owned, then queue a command in its
#: owner's inbox. KEYS: owner, epoch, workers. ARGV: prefix, ttl ms (unless the worker
#: published its own), inbox maxlen, then the
#: command's field/value pairs (the script adds ``epoch``). Returns ``{"ok", "EPOCH|W",
#: placed}`` or ``{"none"}`` when no worker is alive.
SEND = """
local owner = redis.call('GET', KEYS[1])
local placed = 0
if not owner then
  local best, best_load = nil, nil
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local load = redis.call('HGET', ARGV[1] .. 'worker:' .. id, 'load')
    if not load then
      redis.call('SREM', KEYS[3], id)
    else
      load = tonumber(load)
      if best == nil or load < best_load or (load == best_load and id < best) then
        best, best_load = id, load
      end
    end
  end
  if best == nil then return {'none'} end
  local epoch = redis.call('INCR', KEYS[2])
  local ttl = redis.call('HGET', ARGV[1] .. 'worker:' .. best, 'ttl') or ARGV[2]
  owner = epoch .. '|' .. best
  redis.call('SET', KEYS[1], owner, 'PX', tonumber(ttl))
  redis.call('HINCRBY', ARGV[1] .. 'worker:' .. best, 'load', 1)
  placed = 1
end
local sep = string.find(owner, '|', 1, true)
local epoch = string.sub(owner, 1, sep - 1)
local worker = string.sub(owner, sep + 1)
local fields = {'epoch', epoch}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', ARGV[1] .. 'inbox:' .. worker, 'MAXLEN', '~', tonumber(ARGV[3]), '*',
  unpack(fields))
return {'ok', owner, placed}
"""

#: Queue an interruption for ``K``'s owner, if it has one. KEYS: owner, out. ARGV: prefix,
#: inbox maxlen, request id, key. Returns ``{"none"}`` or ``{"ok", "EPOCH|W", last output id}``.
INTERRUPT = """
local owner = redis.call('GET', KEYS[1])
if not owner then return {'none'} end
local sep = string.find(owner, '|', 1, true)
local epoch = string.sub(owner, 1, sep - 1)
local worker = string.sub(owner, sep + 1)
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
redis.call('XADD', ARGV[1] .. 'inbox:' .. worker, 'MAXLEN', '~', tonumber(ARGV[2]), '*',
  'kind', 'interrupt', 'key', ARGV[4], 'epoch', epoch, 'request', ARGV[3])
return {'ok', owner, last_id}
"""

#: A worker's heartbeat: announce it, publish its load, renew the placements it serves and
#: report those it lost. KEYS: workers. ARGV: prefix, worker id, ttl ms, load, host, pid,
#: started, then ``key, EPOCH|W`` pairs. Returns the keys whose placement is no longer ours.
HEARTBEAT = """
local hash = ARGV[1] .. 'worker:' .. ARGV[2]
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', hash, 'load', ARGV[4], 'keys', (#ARGV - 7) / 2, 'host', ARGV[5],
  'pid', ARGV[6], 'started', ARGV[7], 'ttl', ARGV[3])
redis.call('PEXPIRE', hash, tonumber(ARGV[3]))
redis.call('PEXPIRE', ARGV[1] .. 'inbox:' .. ARGV[2], tonumber(ARGV[3]) * 10)
local lost = {}
for i = 8, #ARGV, 2 do
  local owner_key = ARGV[1] .. 'owner:' .. ARGV[i]
  if redis.call('GET', owner_key) == ARGV[i + 1] then
    redis.call('PEXPIRE', owner_key, tonumber(ARGV[3]))
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

#: Give up the placement of ``K`` if it is still ours. KEYS: owner. ARGV: ``EPOCH|W``.
#: Returns 1 if it was released.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

#: A worker leaves: forget it. KEYS: workers. ARGV: prefix, worker id.
SIGN_OFF = """
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('DEL', ARGV[1] .. 'worker:' .. ARGV[2])
redis.call('DEL', ARGV[1] .. 'inbox:' .. ARGV[2])
return 1
"""

#: The owner appends output entries for ``K``, if the placement is still its own (fencing: a
#: worker whose placement expired cannot write). KEYS: owner, out. ARGV: ``EPOCH|W``, maxlen,
#: ttl ms of the stream, then six values per entry: kind, epoch, seq, generation, request,
#: data. Returns 1, or 0 when fenced off.
EMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 6 do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', tonumber(ARGV[2]), '*',
    'kind', ARGV[i], 'epoch', ARGV[i + 1], 'seq', ARGV[i + 2], 'gen', ARGV[i + 3],
    'request', ARGV[i + 4], 'data', ARGV[i + 5])
end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]))
return 1
"""
