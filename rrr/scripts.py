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

# Shared Lua: key names (from rrr.keys, the one place they are spelled), clock, recount
# and announce. KEYS/ARGV differ per script.
_COMMON = LUA_PRELUDE + r"""
if redis.replicate_commands then redis.replicate_commands() end
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- Sum the fields of live leases; returns connections, tabs, updated, version, owners.
local function recount(room, t)
  local flat = redis.call('HGETALL', presence_key(room))
  local c, n, u, v, owners = 0, 0, false, 0, 0
  for i = 1, #flat, 2 do
    local f, val = flat[i], flat[i + 1]
    if f == '@u' then u = val
    elseif f == '@v' then v = tonumber(val)
    else
      owners = owners + 1
      local exp = redis.call('ZSCORE', PROCS, f)
      if exp and tonumber(exp) > t then
        local sp = string.find(val, ' ', 1, true)
        c = c + tonumber(string.sub(val, 1, sp - 1))
        n = n + tonumber(string.sub(val, sp + 1))
      end
    end
  end
  return c, n, u, v, owners
end

-- Record that a room changed: new version, timestamp, announcement. Returns the reply row.
local function changed(room, t)
  local key = presence_key(room)
  local v = redis.call('INCR', SEQ)
  local u = string.format('%.6f', t)
  redis.call('HSET', key, '@v', v, '@u', u)
  local c, n, _, _, owners = recount(room, t)
  if owners == 0 then redis.call('DEL', key) end
  redis.call('PUBLISH', count_channel(room),
    '{"c":' .. c .. ',"t":' .. n .. ',"u":' .. u .. ',"v":' .. v .. '}')
  return {c, n, u, v}
end

-- Remove every field a process owns and announce each room it was in.
local function drop_process(pid, t)
  local set = rooms_key(pid)
  local rooms = redis.call('SMEMBERS', set)
  for _, room in ipairs(rooms) do
    if redis.call('HDEL', presence_key(room), pid) == 1 then changed(room, t) end
  end
  redis.call('DEL', set)
  redis.call('HDEL', PROBE, pid)
  return #rooms
end
"""

#: KEYS: none. ARGV: pid, ttl, then triples room, connections, tabs.
#: Returns: lease_ok flag, then a row {c, t, u, v} per room. A missing lease is
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
for i = 3, #ARGV, 3 do
  local room, c, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local key = presence_key(room)
  local cur = redis.call('HGET', key, pid)
  local row
  if c == 0 and n == 0 then
    redis.call('SREM', set, room)
    if cur then
      redis.call('HDEL', key, pid)
      row = changed(room, t)
    end
  else
    local val = c .. ' ' .. n
    redis.call('SADD', set, room)
    if cur ~= val then
      redis.call('HSET', key, pid, val)
      row = changed(room, t)
    end
  end
  if not row then
    local rc, rn, u, v = recount(room, t)
    row = {rc, rn, u, v}
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
local c, n, u, v = recount(ARGV[1], now())
return {c, n, u, v}
"""

#: Every script by name, as `rrr.presence` loads them.
ALL = {"set_presence": SET_PRESENCE, "renew": RENEW, "sweep": SWEEP, "leave": LEAVE, "count": COUNT}
