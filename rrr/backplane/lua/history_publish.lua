-- KEYS: stream, meta, and optionally a cache channel's cache key. ARGV: channel, data JSON, size,
-- ttl ms, meta ttl s, new epoch, own (1/0), and optionally sharded (1: ``SPUBLISH``, on a Redis
-- Cluster; else ``PUBLISH``) and the cache's ttl ms (the message is kept there as the last one).
-- Store and publish in one step: the message gets the next offset, the stream is trimmed
-- exactly to ``size``, and the message goes out on the room's message channel as
-- ``<offset> <epoch> <data>``. Returns {offset, epoch, receivers}.

local epoch = epoch_of(ARGV[6])
local size, ttl = settings(ARGV[7], ARGV[3], ARGV[4])
local top = redis.call('HINCRBY', meta, 'o', 1)
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, top .. '-0', 'd', ARGV[2])
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('EXPIRE', meta, tonumber(ARGV[5]))  -- it has had a message now: the long TTL
if KEYS[3] and tonumber(ARGV[9] or '0') > 0 then
  redis.call('SET', KEYS[3], ARGV[2], 'PX', tonumber(ARGV[9]))
end
local n = redis.call(ARGV[8] == '1' and 'SPUBLISH' or 'PUBLISH', ARGV[1], top .. ' ' .. epoch .. ' ' .. ARGV[2])
return {top, epoch, n}
