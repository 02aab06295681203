-- Cluster, the sender's slot: what the room scripts cannot write there themselves. KEYS: due set,
-- doorbell, moved, process registry, this process's rooms. ARGV: pid, registry TTL ms (0: leave the
-- registry), then the counts A, R, D, M, then A rooms this process now has rows in, R rooms it has
-- none in any more, D pairs (room, when its events may move), M pairs (room, stream id ev_ack
-- removed: the room's moved mark goes if it is still that).

local due_key, bell, moved, procs, mine = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ttl = tonumber(ARGV[2])
local na, nr, nd, nm = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local i = 7
if ttl > 0 then redis.call('ZADD', procs, now_ms() + ttl, ARGV[1]) end
for _ = 1, na do redis.call('SADD', mine, ARGV[i]); i = i + 1 end
for _ = 1, nr do redis.call('SREM', mine, ARGV[i]); i = i + 1 end
for _ = 1, nd do
  redis.call('ZADD', due_key, 'LT', ARGV[i + 1], ARGV[i])
  i = i + 2
end
if nd > 0 then redis.call('XADD', bell, 'MAXLEN', 1, '*', 'r', 1) end
for _ = 1, nm do
  if redis.call('HGET', moved, ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', moved, ARGV[i]) end
  i = i + 2
end
return 1
