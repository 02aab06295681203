-- KEYS: presence, members, reported, events. ARGV: pid, ttl s, count channel, events (4: see
-- events.lua). Extends our row's expiry and drops expired rows of others (announced, their events
-- recorded). Returns {lost, dropped, due, replicated}: lost 1 if our row was missing or expired
-- (rewrite it); due, replicated: see ev_due, ev_replicated.

local pid, ttl, chan = ARGV[1], tonumber(ARGV[2]), ARGV[3]
ev_setup(4)
local t = now()
local cur, expired = own_row(pid, t)
if cur then redis.call('HSET', P, pid, cur .. ' ' .. string.format('%.3f', t + ttl)) end
local _, _, _, _, _, dropped = state(t, true)
if expired or dropped > 0 then changed(t, chan) end
keep(ttl)
return {cur and 0 or 1, dropped, ev_due(), ev_replicated()}
