-- The sender's slot: one URL is done with the outbox up to an id. KEYS: outbox, cursors. ARGV: URL
-- key, id, then every configured URL key. The outbox keeps only what some URL still needs (it is
-- trimmed below the lowest cursor; a URL without one keeps everything). Returns the outbox's length.

local outbox, cursors = KEYS[1], KEYS[2]
redis.call('HSET', cursors, ARGV[1], ARGV[2])
local low = false
for i = 3, #ARGV do
  local c = redis.call('HGET', cursors, ARGV[i])
  if not c then
    low = false
    break
  end
  if not low or after(low, c) then low = c end
end
if low then
  local ms, seq = string.match(low, '^(%d+)-(%d+)$')
  redis.call('XTRIM', outbox, 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
end
return redis.call('XLEN', outbox)
