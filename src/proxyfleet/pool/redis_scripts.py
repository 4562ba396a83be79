"""The Redis store's server-side scripts (Lua): every decision on shared state is one atomic
script, the same decisions the in-memory store makes (the contract suite holds both to them).

Keys, under the store's prefix ``P``::

    P:index      zset   member id → its index in the pool's fixed order
    P:members    hash   member id → the member as JSON (id, cap, kind, url, static)
    P:avail      zset   the members that may take a lease now (healthy, under their cap) →
                        the sequence number of their last grant or release: LRU order
    P:cool       zset   quarantined members → when their quarantine ends
    P:b:<id>     hash   cap, inflight, state, cf (consecutive failures), qu (quarantine end,
                        unix time), served, failures, last_used
    P:l:<id>     hash   fencing token → holder (request id, process, host) as JSON
    P:exp        zset   "<id>:<token>" → when the lease expires unless its holder renews it
    P:procs      zset   process id → its last heartbeat (unix time)
    P:want       zset   process id → until when it has waiters: releases are published only
                        while some process has (or when they end in a quarantine)
    P:token, P:seq, P:size, P:cursor, P:stale, P:expired   counters
    P:call:<process>:<n>   the answer of an acquire, release, add or remove (see
                 redis_batch.py: a call asked again after its answer was lost is not run
                 twice), until that answer arrived, or a minute
    P:lock:<name> the process holding a fleet-wide lock (elastic provisioning), with a ttl
    P:epoch      when the pool was first opened: gone means Redis restarted empty, and each
                 process opens the pool again and restores the leases it holds

Nothing secret is ever written: members carry public URLs only; credentials stay in each
process's config. Every change that may free capacity is published on ``P:changes`` as
``<kind> <id> <quarantine end or 0> <origin process>``. Times come from the caller's clock.
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "ADD",
    "DRAIN",
    "HEARTBEAT",
    "OPEN",
    "RELEASE",
    "REMOVE",
    "RESTORE",
    "SNAPSHOT",
    "UNLOCK",
    "WANT",
]

_COMMON = r"""
local p = ARGV[1]
local function bkey(id) return p .. ':b:' .. id end
local function publish(kind, id, q, origin)
  redis.call('PUBLISH', p .. ':changes', kind .. ' ' .. id .. ' ' .. tostring(q) .. ' ' .. origin)
end
-- a release is news only to a process with waiters (P:want), or when it ends in quarantine
local function released(id, q, origin, now)
  if q > 0 or redis.call('ZCOUNT', p .. ':want', now, '+inf') > 0 then
    publish('released', id, q, origin)
  end
end
-- a member to where its state puts it: available (now the most recently used), cooling, neither
local function place(id)
  local h = redis.call('HMGET', bkey(id), 'cap', 'inflight', 'state', 'qu')
  if h[3] == 'healthy' and tonumber(h[2]) < tonumber(h[1]) then
    redis.call('ZADD', p .. ':avail', redis.call('INCR', p .. ':seq'), id)
  else
    redis.call('ZREM', p .. ':avail', id)
  end
  if h[3] == 'quarantined' then
    redis.call('ZADD', p .. ':cool', h[4], id)
  else
    redis.call('ZREM', p .. ':cool', id)
  end
end
-- the health state machine of pool/health.py: returns the quarantine end, or 0
local function settle(id, outcome, now, after, cooldown)
  local k = bkey(id)
  local h = redis.call('HMGET', k, 'state', 'cf', 'qu')
  local state, cf, qu = h[1], tonumber(h[2]), tonumber(h[3])
  if outcome == 'success' then
    if state == 'draining' then cf = 0
    elseif state ~= 'quarantined' then state = 'healthy'; cf = 0; qu = 0 end
  elseif outcome == 'failure' then
    cf = cf + 1
    redis.call('HINCRBY', k, 'failures', 1)
    if state == 'half_open' or (state == 'healthy' and cf >= after) then
      state = 'quarantined'; qu = now + cooldown
    end
  elseif state == 'half_open' then
    state = 'quarantined'; qu = now
  end
  redis.call('HSET', k, 'state', state, 'cf', cf, 'qu', tostring(qu))
  if state == 'quarantined' then return qu end
  return 0
end
-- leases whose holder stopped renewing them end, as a neutral outcome
local function reap(now, after, cooldown)
  local expired = redis.call('ZRANGEBYSCORE', p .. ':exp', '-inf', now)
  for _, entry in ipairs(expired) do
    redis.call('ZREM', p .. ':exp', entry)
    local id, token = string.match(entry, '^(.*):(%d+)$')
    if id and redis.call('HDEL', p .. ':l:' .. id, token) == 1 then
      redis.call('HINCRBY', bkey(id), 'inflight', -1)
      redis.call('INCR', p .. ':expired')
      local q = settle(id, 'neutral', now, after, cooldown)
      place(id)
      released(id, q, '-', now)
    end
  end
end
"""

#: ARGV: prefix, strategy, now, holder, ttl, only, exclude (JSON list), unhealthy_after,
#: cooldown. Returns {1, id, token}, {0, 'busy'|'none', retry_after or ''}, or {-1} when the
#: pool is gone from Redis (it restarted empty): the store opens it again and retries.
ACQUIRE = (
    _COMMON
    + r"""
local strategy, now, holder, ttl = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local only, after, cooldown = ARGV[6], tonumber(ARGV[8]), tonumber(ARGV[9])
if redis.call('EXISTS', p .. ':epoch') == 0 then return {-1} end
reap(now, after, cooldown)
local excluded = {}
for _, id in ipairs(cjson.decode(ARGV[7])) do excluded[id] = true end
local function row_of(id)
  local h = redis.call('HMGET', bkey(id), 'cap', 'inflight', 'state', 'qu')
  return {id = id, cap = tonumber(h[1]), inflight = tonumber(h[2]), state = h[3],
          qu = tonumber(h[4]), index = tonumber(redis.call('ZSCORE', p .. ':index', id))}
end
local function wanted(id)
  if only ~= '' then return id == only end
  return not excluded[id]
end
-- a cooled backend goes first, for its half-open trial (in the pool's order); then the
-- available ones, least recently used first
local candidates = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':cool', '-inf', now)) do
  if wanted(id) then
    local row = row_of(id)
    if row.inflight < row.cap then candidates[#candidates + 1] = row end
  end
end
table.sort(candidates, function(a, b) return a.index < b.index end)
if strategy == 'lru' and only == '' and next(excluded) == nil then
  if #candidates == 0 then
    local first = redis.call('ZRANGE', p .. ':avail', 0, 0)
    if first[1] then candidates[1] = row_of(first[1]) end
  end
elseif only ~= '' then
  if #candidates == 0 and redis.call('ZSCORE', p .. ':avail', only) then
    candidates[1] = row_of(only)
  end
else
  for _, id in ipairs(redis.call('ZRANGE', p .. ':avail', 0, -1)) do
    if wanted(id) then candidates[#candidates + 1] = row_of(id) end
  end
end
local chosen = nil
if strategy == 'round-robin' then
  local size = tonumber(redis.call('GET', p .. ':size') or '1')
  local cursor = tonumber(redis.call('GET', p .. ':cursor') or '0')
  local best = size + 1
  for _, row in ipairs(candidates) do
    local distance = (row.index - cursor) % size
    if distance < best then chosen, best = row, distance end
    if distance == 0 then break end
  end
elseif strategy == 'least-busy' then
  local best = 2.0
  for _, row in ipairs(candidates) do
    local load = row.inflight / row.cap
    if load < best then chosen, best = row, load end
    if load == 0 then break end
  end
else
  chosen = candidates[1]
end
if chosen then
  local id = chosen.id
  local token = redis.call('INCR', p .. ':token')
  redis.call('HSET', p .. ':l:' .. id, token, holder)
  redis.call('ZADD', p .. ':exp', now + ttl, id .. ':' .. token)
  redis.call('HINCRBY', bkey(id), 'inflight', 1)
  redis.call('HINCRBY', bkey(id), 'served', 1)
  if chosen.state == 'quarantined' and now >= chosen.qu then
    redis.call('HSET', bkey(id), 'state', 'half_open')
  end
  local size = tonumber(redis.call('GET', p .. ':size') or '1')
  redis.call('SET', p .. ':cursor', (chosen.index + 1) % size)
  place(id)
  return {1, id, token}
end
-- nothing to grant: busy (wait) or none usable (do not), over the pool asked about
local pool = {}
if only ~= '' then
  if redis.call('ZSCORE', p .. ':index', only) then pool = {only} end
else
  for _, id in ipairs(redis.call('ZRANGE', p .. ':index', 0, -1)) do
    if not excluded[id] then pool[#pool + 1] = id end
  end
end
local usable, ends = false, {}
for _, id in ipairs(pool) do
  local row = row_of(id)
  if row.state == 'healthy' or row.state == 'half_open' then
    usable = true
  elseif row.state == 'quarantined' then
    if now >= row.qu then usable = true end
    ends[#ends + 1] = row.qu
  end
end
if usable then return {0, 'busy', ''} end
if #ends == 0 then return {0, 'none', ''} end
local first = ends[1]
for _, q in ipairs(ends) do if q < first then first = q end end
return {0, 'none', tostring(math.max(0, first - now))}
"""
)

#: ARGV: prefix, id, token, outcome, now, unhealthy_after, cooldown, origin.
#: Returns {1, quarantine end or '0'} or {0} (already settled, or a token not handed out).
RELEASE = (
    _COMMON
    + r"""
local id, token, outcome, now = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if redis.call('HDEL', p .. ':l:' .. id, token) == 0 then
  redis.call('INCR', p .. ':stale')
  return {0}
end
redis.call('ZREM', p .. ':exp', id .. ':' .. token)
redis.call('HINCRBY', bkey(id), 'inflight', -1)
redis.call('HSET', bkey(id), 'last_used', ARGV[5])
local q = settle(id, outcome, now, tonumber(ARGV[6]), tonumber(ARGV[7]))
place(id)
released(id, q, ARGV[8], now)
return {1, tostring(q)}
"""
)

#: ARGV: prefix, process, now, ttl, unhealthy_after, cooldown, '1' while this process has
#: waiters (else '0'), then "<id>:<token>" entries to renew. Returns the entries that were no
#: longer held (they expired: the leases are lost), or {-1} when the pool is gone from Redis
#: (it restarted empty).
HEARTBEAT = (
    _COMMON
    + r"""
local proc, now, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', p .. ':epoch') == 0 then return {-1} end
reap(now, tonumber(ARGV[5]), tonumber(ARGV[6]))
redis.call('ZADD', p .. ':procs', now, proc)
redis.call('ZREMRANGEBYSCORE', p .. ':procs', '-inf', now - 3 * ttl)
if ARGV[7] == '1' then
  redis.call('ZADD', p .. ':want', now + ttl, proc)
else
  redis.call('ZREM', p .. ':want', proc)
end
redis.call('ZREMRANGEBYSCORE', p .. ':want', '-inf', now)
local lost = {}
for i = 8, #ARGV do
  if redis.call('ZADD', p .. ':exp', 'XX', 'CH', now + ttl, ARGV[i]) == 0 then
    if not redis.call('ZSCORE', p .. ':exp', ARGV[i]) then lost[#lost + 1] = ARGV[i] end
  end
end
return lost
"""
)

_ADD_MEMBER = r"""
local function add_member(id, json, cap, lru)
  local index = redis.call('INCR', p .. ':size') - 1
  redis.call('ZADD', p .. ':index', index, id)
  redis.call('HSET', p .. ':members', id, json)
  redis.call('ZADD', p .. ':avail', lru, id)
  redis.call('DEL', bkey(id), p .. ':l:' .. id)
  redis.call('HSET', bkey(id), 'cap', cap, 'inflight', 0, 'state', 'healthy', 'cf', 0,
             'qu', '0', 'served', 0, 'failures', 0, 'last_used', '0')
end
local function forget_member(id)
  redis.call('ZREM', p .. ':index', id)
  redis.call('ZREM', p .. ':avail', id)
  redis.call('ZREM', p .. ':cool', id)
  redis.call('HDEL', p .. ':members', id)
  redis.call('DEL', bkey(id), p .. ':l:' .. id)
end
"""

#: ARGV: prefix, process, now, ttl, unhealthy_after, cooldown, then (id, member JSON, cap)
#: triples: this process's configured members. With no other process alive, the store takes
#: them as its configured membership (configured members it lacks are added, in order; idle
#: ones not configured here leave); with others alive, the two configurations must agree.
#: Returns {'ok'} or {'mismatch', missing JSON, extra JSON} or {'held', ids JSON}.
OPEN = (
    _COMMON
    + _ADD_MEMBER
    + r"""
local proc, now, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
reap(now, tonumber(ARGV[5]), tonumber(ARGV[6]))
redis.call('ZREMRANGEBYSCORE', p .. ':procs', '-inf', now - ttl)
local others = redis.call('ZCARD', p .. ':procs')
if redis.call('ZSCORE', p .. ':procs', proc) then others = others - 1 end
local wanted, order = {}, {}
for i = 7, #ARGV, 3 do wanted[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2]}; order[#order + 1] = ARGV[i] end
local present = {}
local all = redis.call('HGETALL', p .. ':members')
for i = 1, #all, 2 do
  if cjson.decode(all[i + 1]).static then present[all[i]] = true end
end
local missing, extra = {}, {}
for _, id in ipairs(order) do if not present[id] then missing[#missing + 1] = id end end
for id, _ in pairs(present) do if not wanted[id] then extra[#extra + 1] = id end end
redis.call('SETNX', p .. ':epoch', now)
if #missing == 0 and #extra == 0 then
  redis.call('ZADD', p .. ':procs', now, proc)
  return {'ok'}
end
if others > 0 then
  table.sort(extra)
  return {'mismatch', cjson.encode(missing), cjson.encode(extra)}
end
local held = {}
for _, id in ipairs(extra) do
  if tonumber(redis.call('HGET', bkey(id), 'inflight') or '0') > 0 then held[#held + 1] = id end
end
if #held > 0 then return {'held', cjson.encode(held)} end
for _, id in ipairs(extra) do forget_member(id) end
local first = redis.call('ZRANGE', p .. ':avail', 0, 0, 'WITHSCORES')
local base = (first[2] and tonumber(first[2]) or 0) - #missing - 1
for n, id in ipairs(missing) do add_member(id, wanted[id][1], wanted[id][2], base + n) end
redis.call('ZADD', p .. ':procs', now, proc)
return {'ok'}
"""
)

#: ARGV: prefix, now, ttl, then ("<id>:<token>", holder JSON) pairs: the leases this process
#: holds, put back after Redis lost them (restarted empty). Tokens stay unique: the counter
#: is moved past every restored one. Returns how many were restored.
RESTORE = (
    _COMMON
    + r"""
local now, ttl, restored = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
for i = 4, #ARGV, 2 do
  local id, token = string.match(ARGV[i], '^(.*):(%d+)$')
  if id and redis.call('HEXISTS', p .. ':members', id) == 1
     and redis.call('HSETNX', p .. ':l:' .. id, token, ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', bkey(id), 'inflight', 1)
    place(id)
    redis.call('ZADD', p .. ':exp', now + ttl, ARGV[i])
    if tonumber(redis.call('GET', p .. ':token') or '0') < tonumber(token) then
      redis.call('SET', p .. ':token', token)
    end
    restored = restored + 1
  end
end
return restored
"""
)

#: ARGV: prefix, id, member JSON, cap, origin. Returns 1, or 0 when the id is taken.
ADD = (
    _COMMON
    + _ADD_MEMBER
    + r"""
local id = ARGV[2]
if redis.call('HEXISTS', p .. ':members', id) == 1 then return 0 end
local first = redis.call('ZRANGE', p .. ':avail', 0, 0, 'WITHSCORES')
add_member(id, ARGV[3], ARGV[4], (first[2] and tonumber(first[2]) or 0) - 1)
publish('joined', id, 0, ARGV[5])
return 1
"""
)

#: ARGV: prefix, id, origin. Returns 1, or 0 when it is not a member or holds a lease.
REMOVE = (
    _COMMON
    + _ADD_MEMBER
    + r"""
local id = ARGV[2]
if redis.call('HEXISTS', p .. ':members', id) == 0 then return 0 end
if tonumber(redis.call('HGET', bkey(id), 'inflight') or '0') > 0 then return 0 end
forget_member(id)
publish('left', id, 0, ARGV[3])
return 1
"""
)

#: ARGV: prefix, id, '1' to drain or '0' to lift it, origin. Returns 1 when a drain was lifted.
DRAIN = (
    _COMMON
    + r"""
local id = ARGV[2]
local state = redis.call('HGET', bkey(id), 'state')
if not state then return 0 end
if ARGV[3] == '1' then
  redis.call('HSET', bkey(id), 'state', 'draining', 'qu', '0')
  place(id)
  return 0
end
if state ~= 'draining' then return 0 end
redis.call('HSET', bkey(id), 'state', 'healthy', 'cf', 0, 'qu', '0')
place(id)
publish('undrained', id, 0, ARGV[4])
return 1
"""
)

#: ARGV: prefix. Returns, per member in order: member JSON, then the backend's fields
#: (cap, inflight, state, cf, qu, served, failures, last_used), then its holders' JSON.
SNAPSHOT = r"""
local p = ARGV[1]
local out = {}
for _, id in ipairs(redis.call('ZRANGE', p .. ':index', 0, -1)) do
  local fields = redis.call('HMGET', p .. ':b:' .. id, 'cap', 'inflight', 'state', 'cf', 'qu',
                            'served', 'failures', 'last_used')
  out[#out + 1] = {redis.call('HGET', p .. ':members', id), fields,
                   redis.call('HVALS', p .. ':l:' .. id)}
end
return out
"""

#: ARGV: prefix, name, process. Deletes the lock only if this process holds it.
UNLOCK = r"""
local key = ARGV[1] .. ':lock:' .. ARGV[2]
if redis.call('GET', key) == ARGV[3] then return redis.call('DEL', key) end
return 0
"""

#: ARGV: prefix, process, until. This process has waiters until then (renewed by heartbeats).
WANT = r"""
redis.call('ZADD', ARGV[1] .. ':want', ARGV[3], ARGV[2])
return 1
"""
