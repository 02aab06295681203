-- KEYS: none. ARGV: max processes to sweep, events (4: see events.lua). Claims expired leases with
-- ZREM (so only one sweeper cleans each) and returns how many it removed. The events their
-- presence going causes are recorded here (events.lua).

ev_setup(2)
local t = now()
local dead = redis.call('ZRANGEBYSCORE', PROCS, '-inf', t, 'LIMIT', 0, tonumber(ARGV[1]))
for _, pid in ipairs(dead) do
  if redis.call('ZREM', PROCS, pid) == 1 then drop_process(pid, t) end
end
ev_finish()
return #dead
