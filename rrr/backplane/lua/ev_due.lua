-- The sender's slot: rooms whose events may move now. KEYS: due set. ARGV: limit. Returns {now ms,
-- the next due time after them (-1: none), room...}.

local now = now_ms()
local rooms = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local next_due = -1
if #rooms < tonumber(ARGV[1]) then
  local n = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if n[2] then next_due = tonumber(n[2]) end
end
local out = {now, next_due}
for _, room in ipairs(rooms) do out[#out + 1] = room end
return out
