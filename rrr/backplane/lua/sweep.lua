-- KEYS: none. ARGV: max processes to sweep. Claims expired leases with ZREM
-- (so only one sweeper cleans each) and returns how many it removed.

local t = now()
local dead = redis.call('ZRANGEBYSCORE', PROCS, '-inf', t, 'LIMIT', 0, tonumber(ARGV[1]))
for _, pid in ipairs(dead) do
  if redis.call('ZREM', PROCS, pid) == 1 then drop_process(pid, t) end
end
return #dead
