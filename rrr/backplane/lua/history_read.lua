-- KEYS: stream, meta. ARGV: after (-1: the position only), limit, new epoch, meta ttl s,
-- size, ttl ms, own (1/0), seen epoch, seen top, seen digest. A room's position (fixing its
-- epoch if it has none) and the stored messages after ``after``, oldest first, at most ``limit``.
-- ``own`` 0 is a read-only look (the HTTP API): a room with no meta gets epoch "" and top 0,
-- and nothing is written. A caller that delivered up to ``seen top`` of ``seen epoch`` while
-- the room's top is lower (a failover to a replica that had not received the last messages)
-- starts a new epoch: those offsets would otherwise be given to other messages. So does one
-- whose ``seen digest`` (SHA1 hex of the data it delivered at ``seen top``; "" unknown) is not
-- that of the entry stored there: an old master that ran a queued publish after it was stopped
-- and replaced sent a message live under an offset the new master gave to another (#27), and a
-- catch-up from that offset would skip the stored one without a word.
-- A new epoch changes only the epoch: the top offset, the stream and the remembered publish ids
-- stay. What the room stored was acknowledged to its publishers and stays readable (under the new
-- epoch), offsets go on from the top, and a retried publish is answered with the offset that still
-- names its stored entry.
-- Returns {epoch, top, {{id, {field, value}}, ...}}.

if ARGV[7] ~= '1' and redis.call('EXISTS', meta) == 0 then return {'', 0, {}} end
local epoch = ARGV[7] == '1' and epoch_of(ARGV[3]) or redis.call('HGET', meta, 'e') or ''
if ARGV[7] == '1' then
  local o = tonumber(redis.call('HGET', meta, 'o')) or 0
  local seen_top = tonumber(ARGV[9])
  local reused = false
  if epoch == ARGV[8] and seen_top > 0 and o >= seen_top and (ARGV[10] or '') ~= '' then
    -- One entry, one SHA1 (at most a message's size), only on a catch-up that sends a digest.
    local at = redis.call('XRANGE', stream, seen_top .. '-0', seen_top .. '-0')
    reused = at[1] ~= nil and at[1][2][1] == 'd' and redis.sha1hex(at[1][2][2]) ~= ARGV[10]
  end
  if epoch == ARGV[8] and (o < seen_top or reused) then
    epoch = ARGV[3]
    redis.call('HSET', meta, 'e', epoch)
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
