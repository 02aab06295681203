-- Cluster, the sender's slot: processes that stopped renewing (their rows may all have expired),
-- each claimed for ``hold`` ms so one sweeper at a time sweeps it. KEYS: process registry. ARGV:
-- limit, hold ms. Returns their ids.

local t = now_ms()
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t, 'LIMIT', 0, tonumber(ARGV[1]))
for _, pid in ipairs(dead) do redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), pid) end
return dead
