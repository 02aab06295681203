-- KEYS: none. ARGV: pid, ttl seconds, events (4: see events.lua). Returns 1 if the lease was
-- missing or expired (Redis lost it, or we were swept): the caller must re-register.

ev_setup(3)
local t = now()
local exp = redis.call('ZSCORE', PROCS, ARGV[1])
if exp and tonumber(exp) > t then
  redis.call('ZADD', PROCS, t + tonumber(ARGV[2]), ARGV[1])
  return 0
end
-- Expired but not yet swept: sweep ourselves so the caller's resync is announced.
if exp then redis.call('ZREM', PROCS, ARGV[1]); drop_process(ARGV[1], t) end
redis.call('ZADD', PROCS, t + tonumber(ARGV[2]), ARGV[1])
ev_finish()
return 1
