-- Moving events out (rrr.backplane.events): shared by the sender's scripts. Every key is in KEYS:
-- a room's event stream and reported state (its slot), or the sender's keys (one slot, hash tag
-- ``{webhooks}``), so the same scripts run on one Redis and on a cluster.
--
-- A room's events move from its stream to the outbox in order. A vacated waits there until its at
-- + the vacate delay (and everything of the room behind it waits too); one followed by an occupied
-- that came before then is dropped with it: a reload, or a process restarting, is no pair.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

-- The entries of stream ``q`` that may move out at ``now`` (ms), oldest first, at most ``limit``
-- (vacated/occupied pairs dropped on the way), and when what is left may move: a held vacated's
-- time, ``now`` if more are ready, or -1 when nothing is left.
local function take(q, now, delay, limit)
  local window = limit + 2
  local entries = redis.call('XRANGE', q, '-', '+', 'COUNT', window)
  local ready = {}
  local i = 1
  while i <= #entries and #ready < limit do
    local e = entries[i]
    local f = fields(e[2])
    if f.n == 'channel_vacated' then
      local due = tonumber(f.a) + delay
      local nxt = entries[i + 1]
      local g = nxt and fields(nxt[2])
      if g and g.n == 'channel_occupied' and tonumber(g.a) < due then
        redis.call('XDEL', q, e[1], nxt[1])
        i = i + 2
      elseif due > now then
        return ready, due
      elseif not nxt and #entries == window then
        return ready, now  -- its follower is beyond the window: look again
      else
        ready[#ready + 1] = e
        i = i + 1
      end
    else
      ready[#ready + 1] = e
      i = i + 1
    end
  end
  if i <= #entries or #entries == window then return ready, now end
  return ready, -1
end

-- When the head of stream ``q`` may move (-1: the stream is empty).
local function head_due(q, now, delay)
  local head = redis.call('XRANGE', q, '-', '+', 'COUNT', 1)[1]
  if not head then return -1 end
  local f = fields(head[2])
  if f.n == 'channel_vacated' then return math.max(now, tonumber(f.a) + delay) end
  return now
end

-- Events over the cap that the room's stream dropped since the last look (events.lua counts them).
local function capped(s)
  local d = tonumber(redis.call('HGET', s, 'd')) or 0
  if d > 0 then redis.call('HDEL', s, 'd') end
  return d
end

-- Append one event (its entry's flat fields) to the outbox, at most ``cap`` long; 1 if the oldest
-- was dropped for it.
local function push(outbox, cap, flat)
  local over = redis.call('XLEN', outbox) >= cap and 1 or 0
  redis.call('XADD', outbox, 'MAXLEN', cap, '*', unpack(flat))
  return over
end

local function wanted(names, name)
  return string.find(names, ',' .. name .. ',', 1, true) ~= nil
end

-- Stream ids compared: whether ``a`` comes after ``b``.
local function after(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
