-- Shared by both presence flavours (lease.lua on one Redis, cluster.lua on a cluster): how one
-- process's row in a room's presence hash, and its member fields in the members hash, change.

-- Apply one process's member changes to the members hash ``mkey``: from ARGV[i], ``adds`` pairs
-- (user, info JSON), then ``removes`` pairs (user, ms since its last tab here left). ``removes``
-- negative: ``-removes - 1`` pairs, and the adds *replace* ``pid``'s members: every other field of
-- ``pid`` goes too (after a resync the process cannot know which of its members Redis still holds).
-- Returns whether anything changed, the next i, and the removed users' "left ago" (user -> ms, for
-- their events).
local function apply_members(mkey, pid, i, adds, removes)
  local dirty = false
  local left = {}
  local replace = removes < 0
  if replace then removes = -removes - 1 end
  local keep = {}
  for _ = 1, adds do
    local field = pid .. '|' .. ARGV[i]
    keep[field] = true
    if redis.call('HGET', mkey, field) ~= ARGV[i + 1] then
      redis.call('HSET', mkey, field, ARGV[i + 1])
      dirty = true
    end
    i = i + 2
  end
  for _ = 1, removes do
    if redis.call('HDEL', mkey, pid .. '|' .. ARGV[i]) == 1 then dirty = true end
    left[ARGV[i]] = tonumber(ARGV[i + 1]) or 0
    i = i + 2
  end
  if replace then
    local prefix = pid .. '|'
    for _, f in ipairs(redis.call('HKEYS', mkey)) do
      if not keep[f] and string.sub(f, 1, #prefix) == prefix then
        redis.call('HDEL', mkey, f)
        dirty = true
        local user = string.sub(f, #prefix + 1)
        if left[user] == nil then left[user] = 0 end
      end
    end
  end
  return dirty, i, left
end

-- Delete every field of ``pid`` in the members hash ``mkey``; returns how many.
local function drop_member_fields(mkey, pid)
  local prefix = pid .. '|'
  local gone = 0
  for _, f in ipairs(redis.call('HKEYS', mkey)) do
    if string.sub(f, 1, #prefix) == prefix then
      redis.call('HDEL', mkey, f)
      gone = gone + 1
    end
  end
  return gone
end

-- Write ``pid``'s row ``c n`` in the presence hash ``key``. ``cur``: the row as it stands ("c n", or
-- false); ``expiry``: appended to the row, which is then written every time (a cluster's rows each
-- expire on their own), or nil: the row is written only when it changed. ``c`` and ``n`` 0: the row
-- goes, and ``pid``'s fields in the members hash ``mkey`` with it. Returns whether the room changed.
local function put_row(key, mkey, pid, cur, c, n, expiry)
  if c == 0 and n == 0 then
    local dirty = drop_member_fields(mkey, pid) > 0
    if cur then
      redis.call('HDEL', key, pid)
      dirty = true
    end
    return dirty
  end
  local val = c .. ' ' .. n
  if expiry then
    redis.call('HSET', key, pid, val .. ' ' .. expiry)
  elseif cur ~= val then
    redis.call('HSET', key, pid, val)
  end
  return cur ~= val
end
