-- KEYS: presence, members, reported, events. ARGV: pid, ttl s, count channel, expect (1: we believe
-- our row is there), connections, tabs, events (4: see events.lua), quiet (1/0), ms since the room's
-- last local subscription left, number of member adds A, number of member removes R, A pairs (user,
-- info JSON), R pairs (user, ms since it left); R negative: -R - 1 pairs, and the adds replace our
-- members in the room (rows.lua's apply_members).
-- Connections and tabs 0: our row and members go. Returns {lost, {c, t, u, v, users}, due,
-- replicated}; lost is 1 when we expected our row and it was missing or expired (a failover lost
-- it, or we stalled past the TTL): the caller must write every room again, members included. due,
-- replicated: see ev_due, ev_replicated.

local pid, ttl, chan = ARGV[1], tonumber(ARGV[2]), ARGV[3]
ev_setup(7)
local t = now()
local cur, expired = own_row(pid, t)
local lost = (ARGV[4] == '1' and not cur) and 1 or 0
local c, n = tonumber(ARGV[5]), tonumber(ARGV[6])
local members_changed, _, left = apply_members(M, pid, 15, tonumber(ARGV[13]), tonumber(ARGV[14]))
ev_context(ROOM, 11, left)
local dirty = expired or members_changed
if put_row(P, M, pid, cur, c, n, string.format('%.3f', t + ttl)) then dirty = true end
local rc, rn, u, v, users, dropped = state(t, true)
local row
if dirty or dropped > 0 then
  row = changed(t, chan)
else
  row = {rc, rn, u, v, users}
end
keep(ttl)
return {lost, row, ev_due(), ev_replicated()}
