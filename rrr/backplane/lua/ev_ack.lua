-- Cluster, a room's slot: the outbox took these events. KEYS: the room's event stream. ARGV: vacate
-- delay ms, then the stream ids. Returns when what is left may move (-1: nothing left; the stream
-- is gone).

local q = KEYS[1]
if #ARGV > 1 then redis.call('XDEL', q, unpack(ARGV, 2)) end
if redis.call('XLEN', q) == 0 then
  redis.call('DEL', q)
  return -1
end
return head_due(q, now_ms(), tonumber(ARGV[1]))
