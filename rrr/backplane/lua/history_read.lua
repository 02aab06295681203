-- KEYS: stream, meta. ARGV: after (-1: the position only), limit, new epoch, meta ttl s,
-- size, ttl ms, own (1/0), seen epoch, seen top. A room's position (fixing its epoch if it
-- has none) and the stored messages after ``after``, oldest first, at most ``limit``.
-- ``own`` 0 is a read-only look (the HTTP API): a room with no meta gets epoch "" and top 0,
-- and nothing is written. A caller that delivered up to ``seen top`` of ``seen epoch`` while
-- the room's top is lower (a failover to a replica that had not received the last messages)
-- starts a new epoch: those offsets would otherwise be given to other messages.
-- Returns {epoch, top, {{id, {field, value}}, ...}}.

if ARGV[7] ~= '1' and redis.call('EXISTS', meta) == 0 then return {'', 0, {}} end
local epoch = ARGV[7] == '1' and epoch_of(ARGV[3]) or redis.call('HGET', meta, 'e') or ''
if ARGV[7] == '1' then
  local o = tonumber(redis.call('HGET', meta, 'o')) or 0
  if epoch == ARGV[8] and o < tonumber(ARGV[9]) then
    epoch = ARGV[3]
    redis.call('HSET', meta, 'e', epoch, 'o', 0)
    redis.call('DEL', stream)
  end
  settings(ARGV[7], ARGV[5], ARGV[6])
  keep(ARGV[4], ARGV[6])
end
local top = tonumber(redis.call('HGET', meta, 'o')) or 0
local after = tonumber(ARGV[1])
local entries = {}
if after >= 0 and after < top then
  entries = redis.call('XRANGE', stream, (after + 1) .. '-0', '+', 'COUNT', tonumber(ARGV[2]))
end
return {epoch, top, entries}
