"""Lua scripts that keep presence idempotent and self-healing.

Presence is never INCR/DECR. Each process owns one field per room it has
sockets in (``<pid> -> "<connections> <tabs>"``) and a lease in the sorted set
``rrr:procs`` scored by expiry on Redis's own clock. A room's totals sum only
fields whose owner still holds a lease, so a killed process stops counting the
moment its lease runs out, and the sweeper then deletes its fields and
announces the corrected totals. Every change bumps the global ``rrr:seq`` and
is published from inside the script, so announcements leave Redis in version
order and receivers can drop stale ones.
"""

from __future__ import annotations

from .keys import LUA_PRELUDE

#: Redis 7 script flags: presence must keep working when Redis is at ``maxmemory``
#: (its writes are small and bounded per process by the caps), so these scripts may write
#: there; Redis < 7 does not know the shebang and gets the scripts without it.
FLAGS = "#!lua flags=allow-oom\n"

# Shared Lua: key names (from rrr.backplane.keys, the one place they are spelled), clock, recount
# and announce. KEYS/ARGV differ per script.
#: Both presence flavours (this module's and `rrr.backplane.cluster_scripts`) change member fields alike.
APPLY_MEMBERS = r"""
-- Apply one process's member changes to the members hash ``mkey``: from ARGV[i], ``adds`` pairs
-- (user, info JSON), then ``removes`` users. Returns whether anything changed, and the next i.
local function apply_members(mkey, pid, i, adds, removes)
  local dirty = false
  for _ = 1, adds do
    local field = pid .. '|' .. ARGV[i]
    if redis.call('HGET', mkey, field) ~= ARGV[i + 1] then
      redis.call('HSET', mkey, field, ARGV[i + 1])
      dirty = true
    end
    i = i + 2
  end
  for _ = 1, removes do
    if redis.call('HDEL', mkey, pid .. '|' .. ARGV[i]) == 1 then dirty = true end
    i = i + 1
  end
  return dirty, i
end

-- Delete every field of ``pid`` in the members hash ``mkey``; returns how many.
local function drop_member_fields(mkey, pid)
  local prefix = pid .. '|'
  local gone = 0
  for _, f in ipairs(redis.call('HKEYS', mkey)) do
    if string.sub(f, 1, #prefix) == prefix then
      redis.call('HDEL', mkey, f)
      gone = gone + 1
    end
  end
  return gone
end
"""

_COMMON = LUA_PRELUDE + APPLY_MEMBERS + r"""
if redis.replicate_commands then redis.replicate_commands() end
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function alive(pid, t, cache)
  local ok = cache[pid]
  if ok == nil then
    local exp = redis.call('ZSCORE', PROCS, pid)
    ok = exp and tonumber(exp) > t or false
    cache[pid] = ok
  end
  return ok
end

-- A presence room's members through live processes: user -> info JSON (one entry per user).
local function live_members(room, t, cache)
  local flat = redis.call('HGETALL', members_key(room))
  local out, n = {}, 0
  for i = 1, #flat, 2 do
    local bar = string.find(flat[i], '|', 1, true)
    if bar and alive(string.sub(flat[i], 1, bar - 1), t, cache) then
      local user = string.sub(flat[i], bar + 1)
      if out[user] == nil then n = n + 1 end
      out[user] = flat[i + 1]
    end
  end
  return out, n
end

-- Sum the fields of live leases; returns connections, tabs, updated, version, owners, users.
local function recount(room, t)
  local flat = redis.call('HGETALL', presence_key(room))
  local c, n, u, v, owners = 0, 0, false, 0, 0
  local cache = {}
  for i = 1, #flat, 2 do
    local f, val = flat[i], flat[i + 1]
    if f == '@u' then u = val
    elseif f == '@v' then v = tonumber(val)
    else
      owners = owners + 1
      if alive(f, t, cache) then
        local sp = string.find(val, ' ', 1, true)
        c = c + tonumber(string.sub(val, 1, sp - 1))
        n = n + tonumber(string.sub(val, sp + 1))
      end
    end
  end
  local _, users = live_members(room, t, cache)
  return c, n, u, v, owners, users
end

-- Record that a room changed: new version, timestamp, announcement. Returns the reply row.
local function changed(room, t)
  local key = presence_key(room)
  local v = redis.call('INCR', SEQ)
  local u = string.format('%.6f', t)
  redis.call('HSET', key, '@v', v, '@u', u)
  local c, n, _, _, owners, users = recount(room, t)
  if owners == 0 then redis.call('DEL', key) end
  redis.call('PUBLISH', count_channel(room),
    '{"c":' .. c .. ',"t":' .. n .. ',"u":' .. u .. ',"v":' .. v .. ',"n":' .. users .. '}')
  return {c, n, u, v, users}
end

-- Delete every member field of ``pid`` in ``room``; returns how many.
local function drop_members(pid, room)
  return drop_member_fields(members_key(room), pid)
end

-- Remove every field a process owns and announce each room it was in.
local function drop_process(pid, t)
  local set = rooms_key(pid)
  local rooms = redis.call('SMEMBERS', set)
  for _, room in ipairs(rooms) do
    local gone = drop_members(pid, room)
    if redis.call('HDEL', presence_key(room), pid) == 1 or gone > 0 then changed(room, t) end
  end
  redis.call('DEL', set)
  redis.call('HDEL', PROBE, pid)
  return #rooms
end
"""

#: KEYS: none. ARGV: pid, ttl, then per room: room, connections, tabs, number of member
#: adds A, number of member removes R, A pairs (user, info JSON), R users.
#: Returns: lease_ok flag, then a row {c, t, u, v, users} per room. A missing lease is
#: re-created first, so every field written here is always one a sweeper can find.
SET_PRESENCE = _COMMON + r"""
local pid = ARGV[1]
local t = now()
local exp = redis.call('ZSCORE', PROCS, pid)
local ok = exp and tonumber(exp) > t
if not ok then
  -- Expired but not yet swept: others already count us out, so sweep ourselves (announced)
  -- and let the rows below and the caller's resync write everything back (announced too).
  if exp then redis.call('ZREM', PROCS, pid); drop_process(pid, t) end
  redis.call('ZADD', PROCS, t + tonumber(ARGV[2]), pid)
end
local out = {ok and 1 or 0}
local set = rooms_key(pid)
local i = 3
while i <= #ARGV do
  local room, c, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local adds, removes = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  i = i + 5
  local dirty
  dirty, i = apply_members(members_key(room), pid, i, adds, removes)
  local key = presence_key(room)
  local cur = redis.call('HGET', key, pid)
  if c == 0 and n == 0 then
    redis.call('SREM', set, room)
    if drop_members(pid, room) > 0 then dirty = true end
    if cur then
      redis.call('HDEL', key, pid)
      dirty = true
    end
  else
    local val = c .. ' ' .. n
    redis.call('SADD', set, room)
    if cur ~= val then
      redis.call('HSET', key, pid, val)
      dirty = true
    end
  end
  local row
  if dirty then
    row = changed(room, t)
  else
    local rc, rn, u, v, _, users = recount(room, t)
    row = {rc, rn, u, v, users}
  end
  out[#out + 1] = row
end
return out
"""

#: KEYS: none. ARGV: pid, ttl seconds. Returns 1 if the lease was missing or
#: expired (Redis lost it, or we were swept): the caller must re-register.
RENEW = _COMMON + r"""
local t = now()
local exp = redis.call('ZSCORE', PROCS, ARGV[1])
if exp and tonumber(exp) > t then
  redis.call('ZADD', PROCS, t + tonumber(ARGV[2]), ARGV[1])
  return 0
end
-- Expired but not yet swept: sweep ourselves so the caller's resync is announced.
if exp then redis.call('ZREM', PROCS, ARGV[1]); drop_process(ARGV[1], t) end
redis.call('ZADD', PROCS, t + tonumber(ARGV[2]), ARGV[1])
return 1
"""

#: KEYS: none. ARGV: max processes to sweep. Claims expired leases with ZREM
#: (so only one sweeper cleans each) and returns how many it removed.
SWEEP = _COMMON + r"""
local t = now()
local dead = redis.call('ZRANGEBYSCORE', PROCS, '-inf', t, 'LIMIT', 0, tonumber(ARGV[1]))
for _, pid in ipairs(dead) do
  if redis.call('ZREM', PROCS, pid) == 1 then drop_process(pid, t) end
end
return #dead
"""

#: KEYS: none. ARGV: pid. A clean shutdown: presence goes at once, no TTL wait.
LEAVE = _COMMON + r"""
local t = now()
redis.call('ZREM', PROCS, ARGV[1])
return drop_process(ARGV[1], t)
"""

#: KEYS: none. ARGV: room. Read-only totals for the HTTP API.
COUNT = _COMMON + r"""
local c, n, u, v, _, users = recount(ARGV[1], now())
return {c, n, u, v, users}
"""

#: KEYS: none. ARGV: room. Read-only: the members through live processes, flat user, info JSON.
MEMBERS = _COMMON + r"""
local members = live_members(ARGV[1], now(), {})
local out = {}
for user, info in pairs(members) do
  out[#out + 1] = user
  out[#out + 1] = info
end
return out
"""

# -- history (rrr.backplane.history) ---------------------------------------------------
# Cluster-ready: every key is passed in KEYS and carries the room's hash tag.
# The room's meta hash keeps its epoch ``e`` and top offset ``o``, and the size ``n``
# and TTL ``t`` (ms) its history is kept at: the server writes those (``own``), so a
# backend's helper stores with the server's settings without knowing them.

_HISTORY_COMMON = r"""
local stream, meta = KEYS[1], KEYS[2]
-- The room's epoch, fixed by whoever comes first; a room with no meta has lost its history
-- (Redis restarted empty, or it idled past the meta's TTL): any stream left is from before.
local function epoch_of(new_epoch)
  local e = redis.call('HGET', meta, 'e')
  if not e then
    e = new_epoch
    redis.call('HSET', meta, 'e', e, 'o', 0)
    redis.call('DEL', stream)
  end
  return e
end
-- The meta lives meta_ttl once the room has had a message; a room that never had one keeps its
-- epoch only as long as its history would (subscribes to rooms nobody publishes to leave little).
local function keep(meta_ttl, ttl_ms)
  local o = tonumber(redis.call('HGET', meta, 'o')) or 0
  if o > 0 then
    redis.call('EXPIRE', meta, tonumber(meta_ttl))
  else
    redis.call('PEXPIRE', meta, math.max(1000, tonumber(ttl_ms)))
  end
end
local function settings(own, size, ttl)
  local got = redis.call('HMGET', meta, 'n', 't')
  if own == '1' then
    if got[1] ~= size or got[2] ~= ttl then redis.call('HSET', meta, 'n', size, 't', ttl) end
    return tonumber(size), tonumber(ttl)
  end
  return tonumber(got[1] or size), tonumber(got[2] or ttl)
end
"""

#: KEYS: stream, meta. ARGV: channel, data JSON, size, ttl ms, meta ttl s, new epoch, own (1/0),
#: and optionally sharded (1: ``SPUBLISH``, on a Redis Cluster; else ``PUBLISH``).
#: Store and publish in one step: the message gets the next offset, the stream is trimmed
#: exactly to ``size``, and the message goes out on the room's message channel as
#: ``<offset> <epoch> <data>``. Returns {offset, epoch, receivers}.
HISTORY_PUBLISH = _HISTORY_COMMON + r"""
local epoch = epoch_of(ARGV[6])
local size, ttl = settings(ARGV[7], ARGV[3], ARGV[4])
local top = redis.call('HINCRBY', meta, 'o', 1)
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, top .. '-0', 'd', ARGV[2])
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('EXPIRE', meta, tonumber(ARGV[5]))  -- it has had a message now: the long TTL
local n = redis.call(ARGV[8] == '1' and 'SPUBLISH' or 'PUBLISH', ARGV[1], top .. ' ' .. epoch .. ' ' .. ARGV[2])
return {top, epoch, n}
"""

#: KEYS: stream, meta. ARGV: after (-1: the position only), limit, new epoch, meta ttl s,
#: size, ttl ms, own (1/0), seen epoch, seen top. A room's position (fixing its epoch if it
#: has none) and the stored messages after ``after``, oldest first, at most ``limit``.
#: ``own`` 0 is a read-only look (the HTTP API): a room with no meta gets epoch "" and top 0,
#: and nothing is written. A caller that delivered up to ``seen top`` of ``seen epoch`` while
#: the room's top is lower (a failover to a replica that had not received the last messages)
#: starts a new epoch: those offsets would otherwise be given to other messages.
#: Returns {epoch, top, {{id, {field, value}}, ...}}.
HISTORY_READ = _HISTORY_COMMON + r"""
if ARGV[7] ~= '1' and redis.call('EXISTS', meta) == 0 then return {'', 0, {}} end
local epoch = ARGV[7] == '1' and epoch_of(ARGV[3]) or redis.call('HGET', meta, 'e') or ''
if ARGV[7] == '1' then
  local o = tonumber(redis.call('HGET', meta, 'o')) or 0
  if epoch == ARGV[8] and o < tonumber(ARGV[9]) then
    epoch = ARGV[3]
    redis.call('HSET', meta, 'e', epoch, 'o', 0)
    redis.call('DEL', stream)
  end
  settings(ARGV[7], ARGV[5], ARGV[6])
  keep(ARGV[4], ARGV[6])
end
local top = tonumber(redis.call('HGET', meta, 'o')) or 0
local after = tonumber(ARGV[1])
local entries = {}
if after >= 0 and after < top then
  entries = redis.call('XRANGE', stream, (after + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[2]))
end
return {epoch, top, entries}
"""

#: Every script by name, as `rrr.backplane.presence` loads them.
ALL = {
    "set_presence": SET_PRESENCE, "renew": RENEW, "sweep": SWEEP, "leave": LEAVE, "count": COUNT, "members": MEMBERS,
    "history_publish": HISTORY_PUBLISH, "history_read": HISTORY_READ,
}
#: Scripts that only read (no flags: they work on any Redis, at maxmemory too).
READ_ONLY = frozenset({"count", "members"})
#: Scripts that store what clients send: no ``allow-oom``, so Redis refuses them at maxmemory.
#: ``history_read`` is not one: it writes only a room's small meta (its epoch), and without the flag
#: a subscription to a room new at maxmemory never got ``subscribed``, its count or its presence.
NO_FLAGS = READ_ONLY | {"history_publish"}
