-- KEYS: presence, members, reported, events. ARGV: pid of a process that stopped renewing, count
-- channel, events (4: see events.lua). Drops the room's expired rows (a dead process's, when no
-- other process is in the room to drop them with its renewal), announced, their events recorded.
-- Returns {until, due}: until is when (Redis ms) ``pid``'s row here expires if it is still live
-- (the sweep must come back then), else 0.

local pid, chan = ARGV[1], ARGV[2]
ev_setup(3)
local t = now()
local _, n, _, _, _, dropped, live = state(t, true)
if dropped > 0 then
  changed(t, chan)
else
  -- Nothing left to drop (the hashes may have expired whole): what was reported must still end.
  ev_report(ROOM, S, Q, t, n > 0, live)
end
local row = redis.call('HGET', P, pid)
local live_until = 0
if row then
  local e = tonumber(string.match(row, ' ([%d%.]+)$'))
  if e and e > t then live_until = math.floor(e * 1000) + 1 end
end
return {live_until, ev_due()}
