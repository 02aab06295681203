-- Cluster, a room's slot: the outbox took these events. KEYS: the room's event stream, its reported
-- state. ARGV: vacate delay ms, then the stream ids. Only ever after a take a replica acknowledged
-- (``WAIT``), or on a master without replicas: so the reported state is on a replica, and gets
-- ``r`` (see cluster.lua's ev_replicated). Returns when what is left may move (-1: nothing left;
-- the stream is gone).

local q, s = KEYS[1], KEYS[2]
if #ARGV > 1 then redis.call('XDEL', q, unpack(ARGV, 2)) end
if redis.call('EXISTS', s) == 1 and redis.call('HGET', s, 'r') ~= '1' then redis.call('HSET', s, 'r', 1) end
if redis.call('XLEN', q) == 0 then
  redis.call('DEL', q)
  return -1
end
return head_due(q, now_ms(), tonumber(ARGV[1]))
