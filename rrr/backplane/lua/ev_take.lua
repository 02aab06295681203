-- Cluster, a room's slot: the room's events that may move now. KEYS: its event stream, its reported
-- state. ARGV: limit, vacate delay ms. Nothing is removed but dropped pairs (ev_ack removes what
-- the outbox took). Returns {dropped over the cap, when the rest may move (see take), entry...}.

local ready, rest = take(KEYS[1], now_ms(), tonumber(ARGV[2]), tonumber(ARGV[1]))
local out = {capped(KEYS[2]), rest}
for _, e in ipairs(ready) do out[#out + 1] = e end
return out
