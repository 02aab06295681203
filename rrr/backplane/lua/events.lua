-- Events out (webhooks), recorded by the presence scripts themselves: shared by both flavours
-- (after rows.lua; before lease.lua on one Redis, before cluster.lua on a cluster).
--
-- A transition is recorded by the very script whose change causes it, atomically with it, so it is
-- exact whoever makes the change: a join's write, a leave's, the sweep of a kill -9'd process, a
-- cluster renewal that drops a dead process's expired rows. A room's reported state
-- (keys.reported) holds what was last recorded for it: ``o`` 1 while occupied (0: a tombstone,
-- kept REPORTED_KEEP s), ``u:<user>`` per member recorded present, and its event ids' epoch ``e``
-- and counter ``n``, the last event's ``a`` (at ms: a room's events never go back in time), ``d``
-- (events dropped over the cap, counted by whoever moves them out) and, on a cluster, ``r`` once a
-- replica is known to have the state (ev_ack.lua). A change compares the
-- room as it now stands (occupied: any live subscription; users: live members, only while
-- occupied) with it and appends each difference to the room's stream (keys.events): occupied
-- first, then removed, added, and vacated last. Entry fields: ``n`` name, ``c`` room, ``u`` user
-- (empty for a room's events), ``a`` at ms, ``i`` id (``<epoch>-<n>``: unique across rooms and
-- Redis restarts, the epoch being new with each reported state), ``s`` stored at ms.
--
-- A quiet write (of a row whose room's state the process knew settled, where a failover cannot
-- lose it: rrr.backplane.calls.Settled) that finds no reported state at all (Redis lost it:
-- restarted empty) sets the state as the room stands and records nothing: a room still occupied
-- after such a restart is not reported again.
--
-- Each script that may record calls ev_setup with the ARGV index of four values: '1' when events
-- are on (else '0', and nothing here runs), a nonce (random per script call, from which new epochs
-- are made), the vacate delay in ms and the cap of a room's stream. EV.due collects, per room that
-- got events, the earliest time (Redis ms) its events may move out: now, or for a vacated its at +
-- the vacate delay (the sender holds it until then).

local REPORTED_KEEP = 3600
local EV = false
-- The room a write is about, set by the writing script: quiet, ms since its last local subscription
-- left (its row's vacated happened then), and the removed members' ms since they left.
local CTX = false

local function ev_setup(i)
  if ARGV[i] == '1' then
    EV = {nonce = ARGV[i + 1], delay = tonumber(ARGV[i + 2]), cap = tonumber(ARGV[i + 3]), made = 0, due = {}, any = false}
  end
  return i + 4
end

local function new_epoch()
  EV.made = EV.made + 1
  return EV.nonce .. string.format('%x', EV.made)
end

-- Record what changed in ``room`` (reported state ``skey``, event stream ``qkey``) at ``t`` (s):
-- ``occupied`` whether any live subscription is left, ``users`` its live members (user -> anything).
local function ev_report(room, skey, qkey, t, occupied, users)
  if not EV then return end
  local quiet, left_ms, users_left = false, 0, {}
  if CTX and CTX.room == room then quiet, left_ms, users_left = CTX.quiet, CTX.left, CTX.users end
  if not occupied then users = {} end
  local flat = redis.call('HGETALL', skey)
  local st, seen = {}, {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    if string.sub(f, 1, 2) == 'u:' then seen[string.sub(f, 3)] = true else st[f] = flat[i + 1] end
  end
  local now_ms = math.floor(t * 1000)
  if #flat == 0 then
    if not occupied then return end
    if quiet then
      redis.call('HSET', skey, 'e', new_epoch(), 'n', 0, 'a', now_ms, 'o', 1)
      for user in pairs(users) do redis.call('HSET', skey, 'u:' .. user, 1) end
      return
    end
  end
  local was = st.o == '1'
  local epoch = st.e
  if not epoch then
    epoch = new_epoch()
    redis.call('HSET', skey, 'e', epoch)
  end
  local first = tonumber(st.n) or 0
  local n, last = first, tonumber(st.a) or 0
  local due, dropped = false, 0
  local function emit(name, user, at)
    if at < last then at = last end
    last = at
    n = n + 1
    if redis.call('XLEN', qkey) >= EV.cap then dropped = dropped + 1 end
    redis.call('XADD', qkey, 'MAXLEN', EV.cap, '*', 'n', name, 'c', room, 'u', user, 'a', at, 'i', epoch .. '-' .. n,
      's', now_ms)
    local d = now_ms
    if name == 'channel_vacated' then d = at + EV.delay end
    if not due or d < due then due = d end
  end
  if occupied and not was then
    emit('channel_occupied', '', now_ms)
    redis.call('HSET', skey, 'o', 1)
  end
  for user in pairs(seen) do
    if not users[user] then
      emit('member_removed', user, now_ms - (users_left[user] or 0))
      redis.call('HDEL', skey, 'u:' .. user)
    end
  end
  for user in pairs(users) do
    if not seen[user] then
      emit('member_added', user, now_ms)
      redis.call('HSET', skey, 'u:' .. user, 1)
    end
  end
  if was and not occupied then
    emit('channel_vacated', '', now_ms - left_ms)
    redis.call('HSET', skey, 'o', 0)
  end
  if n == first then return end
  redis.call('HSET', skey, 'n', n, 'a', last)
  if dropped > 0 then redis.call('HINCRBY', skey, 'd', dropped) end
  if occupied then redis.call('PERSIST', skey) else redis.call('EXPIRE', skey, REPORTED_KEEP) end
  EV.any = true
  if not EV.due[room] or due < EV.due[room] then EV.due[room] = due end
end

-- A writing script's room context (see CTX): from ARGV[i] quiet (1/0) and left ms.
local function ev_context(room, i, users_left)
  CTX = {room = room, quiet = ARGV[i] == '1', left = tonumber(ARGV[i + 1]) or 0, users = users_left or {}}
end
