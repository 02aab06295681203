-- The sender's slot: the next events for one URL. KEYS: outbox, cursors. ARGV: URL key, count.
-- Returns {cursor ('' before its first), entry...}: the outbox entries after its cursor.

local cursor = redis.call('HGET', KEYS[2], ARGV[1])
local from = cursor and ('(' .. cursor) or '-'
local out = {cursor or ''}
for _, e in ipairs(redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', tonumber(ARGV[2]))) do out[#out + 1] = e end
return out
