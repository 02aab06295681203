-- KEYS: none. ARGV: pid, events (4: see events.lua). A clean shutdown: presence goes at once, no TTL
-- wait.

ev_setup(2)
local t = now()
redis.call('ZREM', PROCS, ARGV[1])
local n = drop_process(ARGV[1], t)
ev_finish()
return n
