-- KEYS: none. ARGV: pid. A clean shutdown: presence goes at once, no TTL wait.

local t = now()
redis.call('ZREM', PROCS, ARGV[1])
return drop_process(ARGV[1], t)
