-- Cluster, the sender's slot: a claimed process was swept. KEYS: process registry, its rooms.
-- ARGV: pid, retry at (Redis ms; 0: done, it leaves the registry), then the rooms done with.

local procs, rooms = KEYS[1], KEYS[2]
if ARGV[2] == '0' then
  redis.call('ZREM', procs, ARGV[1])
  redis.call('DEL', rooms)
  return 1
end
redis.call('ZADD', procs, ARGV[2], ARGV[1])
if #ARGV > 2 then redis.call('SREM', rooms, unpack(ARGV, 3)) end
return 0
