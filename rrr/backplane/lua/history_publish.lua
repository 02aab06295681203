-- KEYS: stream, meta, and optionally a cache channel's cache key. ARGV: channel, data JSON, size,
-- ttl ms, meta ttl s, new epoch, own (1/0), sharded (1: ``SPUBLISH``, on a Redis Cluster; else
-- ``PUBLISH``), the publish's id, and optionally the cache's ttl ms (the message is kept there as
-- the last one).
-- Store and publish in one step: the message gets the next offset, the stream is trimmed
-- exactly to ``size``, and the message goes out on the room's message channel as
-- ``<offset> <epoch> <data>``. Returns {offset, epoch, receivers}.

local epoch = epoch_of(ARGV[6])
-- The ids of the room's last RECENT publishes with their offsets, newest first ("id:offset,...").
-- A client whose connection broke after the script ran (a failover, a reset, a proxy) never got
-- the reply and runs it again with the same id: it gets the offset it was given, and nothing is
-- stored or sent twice.
local RECENT = 16
local id = ARGV[9] or ''
local recent = redis.call('HGET', meta, 'p') or ''
if id ~= '' then
  local at = string.find(',' .. recent, ',' .. id .. ':', 1, true)
  if at then
    return {tonumber(string.match(recent, '^(%d+)', at + #id + 1)), epoch, 0}
  end
end
local size, ttl = settings(ARGV[7], ARGV[3], ARGV[4])
local top = redis.call('HINCRBY', meta, 'o', 1)
if id ~= '' then
  recent = id .. ':' .. top .. (recent ~= '' and (',' .. recent) or '')
  local n, cut = 0, nil
  for comma in string.gmatch(recent, '(),') do
    n = n + 1
    if n == RECENT then cut = comma break end
  end
  redis.call('HSET', meta, 'p', cut and string.sub(recent, 1, cut - 1) or recent)
end
if size > 0 then
  redis.call('XADD', stream, 'MAXLEN', size, top .. '-0', 'd', ARGV[2])
  redis.call('PEXPIRE', stream, ttl)
end
redis.call('EXPIRE', meta, tonumber(ARGV[5]))  -- it has had a message now: the long TTL
if KEYS[3] and tonumber(ARGV[10] or '0') > 0 then
  redis.call('SET', KEYS[3], ARGV[2], 'PX', tonumber(ARGV[10]))
end
local n = redis.call(ARGV[8] == '1' and 'SPUBLISH' or 'PUBLISH', ARGV[1], top .. ' ' .. epoch .. ' ' .. ARGV[2])
return {top, epoch, n}
