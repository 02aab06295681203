-- A room's history (rrr.backplane.history): shared by history_publish and history_read.
-- Cluster-ready: every key is passed in KEYS and carries the room's hash tag.
-- The room's meta hash keeps its epoch ``e`` and top offset ``o``, and the size ``n``
-- and TTL ``t`` (ms) its history is kept at: the server writes those (``own``), so a
-- backend's helper stores with the server's settings without knowing them.

local stream, meta = KEYS[1], KEYS[2]
-- The room's epoch, fixed by whoever comes first; a room with no meta has lost its history
-- (Redis restarted empty, or it idled past the meta's TTL): any stream left is from before.
local function epoch_of(new_epoch)
  local e = redis.call('HGET', meta, 'e')
  if not e then
    e = new_epoch
    redis.call('HSET', meta, 'e', e, 'o', 0)
    redis.call('DEL', stream)
  end
  return e
end
-- The meta lives meta_ttl once the room has had a message; a room that never had one keeps its
-- epoch only as long as its history would (subscribes to rooms nobody publishes to leave little).
local function keep(meta_ttl, ttl_ms)
  local o = tonumber(redis.call('HGET', meta, 'o')) or 0
  if o > 0 then
    redis.call('EXPIRE', meta, tonumber(meta_ttl))
  else
    redis.call('PEXPIRE', meta, math.max(1000, tonumber(ttl_ms)))
  end
end
local function settings(own, size, ttl)
  local got = redis.call('HMGET', meta, 'n', 't')
  if own == '1' then
    if got[1] ~= size or got[2] ~= ttl then redis.call('HSET', meta, 'n', size, 't', ttl) end
    return tonumber(size), tonumber(ttl)
  end
  return tonumber(got[1] or size), tonumber(got[2] or ttl)
end
