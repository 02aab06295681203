-- Presence on one Redis: shared by set_presence, renew, sweep, leave, count and members (after
-- the key prelude generated from keys.py and rows.lua).
--
-- Presence is never INCR/DECR. Each process owns one field per room it has sockets in
-- (``<pid> -> "<connections> <tabs>"``) and a lease in the sorted set ``rrr:procs`` scored by
-- expiry on Redis's own clock. A room's totals sum only fields whose owner still holds a lease,
-- so a killed process stops counting the moment its lease runs out, and the sweeper then
-- deletes its fields and announces the corrected totals. Every change bumps the global
-- ``rrr:seq`` and is published from inside the script, so announcements leave Redis in version
-- order and receivers can drop stale ones.
--
-- Clock, recount and announce live here; KEYS/ARGV differ per script.

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

-- Sum the fields of live leases; returns connections, tabs, updated, version, owners, users, and
-- the live members (user -> info JSON).
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
  local live, users = live_members(room, t, cache)
  return c, n, u, v, owners, users, live
end

-- Record that a room changed: new version, timestamp, announcement. Returns the reply row.
local function changed(room, t)
  local key = presence_key(room)
  local v = redis.call('INCR', SEQ)
  local u = string.format('%.6f', t)
  redis.call('HSET', key, '@v', v, '@u', u)
  local c, n, _, _, owners, users, live = recount(room, t)
  if owners == 0 then redis.call('DEL', key) end
  redis.call('PUBLISH', count_channel(room),
    '{"c":' .. c .. ',"t":' .. n .. ',"u":' .. u .. ',"v":' .. v .. ',"n":' .. users .. '}')
  ev_report(room, reported_key(room), events_key(room), t, n > 0, live)
  return {c, n, u, v, users}
end

-- The events this call recorded: each room's earliest move time in the due set, and the doorbell.
local function ev_finish()
  if not (EV and EV.any) then return end
  for room, due in pairs(EV.due) do redis.call('ZADD', EVENTS_DUE, 'LT', due, room) end
  redis.call('XADD', EVENTS_BELL, 'MAXLEN', 1, '*', 'r', 1)
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
