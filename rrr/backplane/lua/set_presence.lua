-- KEYS: none. ARGV: pid, ttl, events (4: see events.lua), then per room: room, connections, tabs,
-- quiet (1/0), ms since its last local subscription left, number of member adds A, number of member
-- removes R, A pairs (user, info JSON), R pairs (user, ms since it left); R negative: -R - 1 pairs, and
-- the adds replace the process's members in the room (rows.lua's apply_members).
-- Returns: lease_ok flag, then a row {c, t, u, v, users} per room. A missing lease is
-- re-created first, so every field written here is always one a sweeper can find.

local pid = ARGV[1]
local i = ev_setup(3)
local t = now()
local exp = redis.call('ZSCORE', PROCS, pid)
local ok = exp and tonumber(exp) > t
if not ok then
  -- Expired but not yet swept: others already count us out, so sweep ourselves (announced)
  -- and let the rows below and the caller's resync write everything back (announced too).
  if exp then redis.call('ZREM', PROCS, pid); drop_process(pid, t) end
  redis.call('ZADD', PROCS, t + tonumber(ARGV[2]), pid)
end
local out = {ok and 1 or 0}
local set = rooms_key(pid)
while i <= #ARGV do
  local room, c, n = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local ctx = i + 3
  local adds, removes = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  local dirty, left
  dirty, i, left = apply_members(members_key(room), pid, i + 7, adds, removes)
  ev_context(room, ctx, left)
  local key = presence_key(room)
  local cur = redis.call('HGET', key, pid)
  redis.call(c == 0 and n == 0 and 'SREM' or 'SADD', set, room)
  if put_row(key, members_key(room), pid, cur, c, n) then dirty = true end
  local row
  if dirty then
    row = changed(room, t)
  else
    local rc, rn, u, v, _, users = recount(room, t)
    row = {rc, rn, u, v, users}
  end
  CTX = false
  out[#out + 1] = row
end
ev_finish()
return out
