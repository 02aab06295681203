-- The sender's lease: one process sends. KEYS: lease, status, outbox. ARGV: pid, ttl ms, take (1:
-- take it if free), then, from the holder, its last error ('' for none), written with the outbox's
-- length (the backlog) for every process's /healthz. Returns {held (1/0), backlog, last error}.

local cur = redis.call('GET', KEYS[1])
local held = 0
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  held = 1
elseif not cur and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  held = 1
end
if held == 1 and ARGV[4] then
  redis.call('HSET', KEYS[2], 'backlog', redis.call('XLEN', KEYS[3]), 'last_error', ARGV[4])
end
local st = redis.call('HMGET', KEYS[2], 'backlog', 'last_error')
return {held, st[1] or '0', st[2] or ''}
