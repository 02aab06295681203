-- Presence on a Redis Cluster: shared by cluster_write, cluster_renew, cluster_count and
-- cluster_members (after rows.lua). Each script touches one room's keys only, all passed in KEYS.
--
-- On one Redis, presence counts rows whose owner holds a lease in the global ``rrr:procs``;
-- a cluster cannot read that from a room's script (another slot). Here every row carries
-- its own expiry instead, on the room's shard's own clock:
--
--     rrr:presence:{<room>}   <pid> -> "<connections> <tabs> <expires_at>",  @v version,  @u updated
--     rrr:members:{<room>}    <pid>|<user> -> <info JSON>   (alive while <pid>'s row in the room is)
--
-- A process renews its rows every TTL/3 (cluster_renew, one call per room). Every script that
-- writes also drops the rows that expired (and their members), and when that changed the
-- room it bumps the room's version and ``SPUBLISH``es the totals on the room's count channel:
-- a killed process's rows are dropped by the next renewal of any process in the room, within
-- TTL + TTL/3. Reads (cluster_count, cluster_members) skip expired rows, so a total read is
-- exact at TTL.
--
-- Versions are per room: ``max(@v + 1, now in ms)``, so they keep growing even when the hash
-- expired or a failover lost the last writes. Both hashes get ``PEXPIRE`` 2 x TTL on each write,
-- so a room nobody is in any more vanishes by itself.
--
-- KEYS are always: the room's presence hash, its members hash; the writing scripts add the
-- room's reported state and event stream (events.lua). The count channel comes in ARGV (it
-- carries the same hash tag, so ``SPUBLISH`` stays in the slot). The room is the keys' hash tag.

local P, M, S, Q = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ROOM = string.match(P, '{(.*)}$')
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The room as it stands at ``t``: connections, tabs, updated, version, live users, rows dropped.
-- ``prune``: delete expired rows and the member fields of processes without a live row.
local function state(t, prune)
  local flat = redis.call('HGETALL', P)
  local c, n, u, v, dropped = 0, 0, false, 0, 0
  local live = {}
  for i = 1, #flat, 2 do
    local f, val = flat[i], flat[i + 1]
    if f == '@u' then u = val
    elseif f == '@v' then v = tonumber(val) or 0
    else
      local a, b, e = string.match(val, '^(%d+) (%d+) ([%d%.]+)$')
      if a and tonumber(e) > t then
        live[f] = true
        c = c + tonumber(a)
        n = n + tonumber(b)
      elseif prune then
        redis.call('HDEL', P, f)
        dropped = dropped + 1
      end
    end
  end
  local mflat = redis.call('HGETALL', M)
  local users, seen = 0, {}
  local out = {}
  for i = 1, #mflat, 2 do
    local bar = string.find(mflat[i], '|', 1, true)
    local pid = bar and string.sub(mflat[i], 1, bar - 1)
    if pid and live[pid] then
      local user = string.sub(mflat[i], bar + 1)
      if not seen[user] then
        seen[user] = true
        users = users + 1
      end
      out[user] = mflat[i + 1]
    elseif prune then
      redis.call('HDEL', M, mflat[i])
    end
  end
  return c, n, u, v, users, dropped, out
end

-- The room changed: new version and time, announced on its count channel, and its events
-- recorded (events.lua). Returns the reply row.
local function changed(t, chan)
  local c, n, _, v, users, _, live = state(t, false)
  v = math.max(v + 1, math.floor(t * 1000))
  local vs = string.format('%d', v)
  local u = string.format('%.6f', t)
  redis.call('HSET', P, '@v', vs, '@u', u)
  redis.call('SPUBLISH', chan,
    '{"c":' .. c .. ',"t":' .. n .. ',"u":' .. u .. ',"v":' .. vs .. ',"n":' .. users .. '}')
  if S then ev_report(ROOM, S, Q, t, n > 0, live) end
  return {c, n, u, v, users}
end

-- When this room's recorded events may move out (Redis ms), or -1 if this call recorded none: the
-- caller adds the room to the sender's due set (another slot) with it.
local function ev_due()
  return (EV and EV.due[ROOM]) or -1
end

-- 1 if the room's reported state shows ``r``: a replica has it (see ev_ack), so a failover cannot
-- have lost it, and a quiet write may trust that its absence means Redis lost everything.
local function ev_replicated()
  if EV and S and redis.call('HGET', S, 'r') == '1' then return 1 end
  return 0
end

local function keep(ttl)
  local ms = math.floor(2 * ttl * 1000)
  redis.call('PEXPIRE', P, ms)
  if redis.call('EXISTS', M) == 1 then redis.call('PEXPIRE', M, ms) end
end

local function drop_members(pid)
  return drop_member_fields(M, pid)
end

-- Our row, or false if it is missing or expired (then it is deleted, with our members).
local function own_row(pid, t)
  local cur = redis.call('HGET', P, pid)
  if not cur then return false, false end
  local a, b, e = string.match(cur, '^(%d+) (%d+) ([%d%.]+)$')
  if a and tonumber(e) > t then return a .. ' ' .. b, false end
  redis.call('HDEL', P, pid)
  drop_members(pid)
  return false, true
end
