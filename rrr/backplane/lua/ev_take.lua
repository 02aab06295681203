-- Cluster, a room's slot: the room's events that may move now. KEYS: its event stream, its reported
-- state. ARGV: limit, vacate delay ms, keep ms. Nothing is removed but dropped pairs (ev_ack removes
-- what the outbox took). The stream's expiry is set to ``keep`` (what nobody moves for that long
-- goes), which is also a write: a ``WAIT`` after this call on the same connection returns once a
-- replica has every event taken (see rrr.backplane.events). Returns {dropped over the cap, when
-- the rest may move (see take), entry...}.

local ready, rest = take(KEYS[1], now_ms(), tonumber(ARGV[2]), tonumber(ARGV[1]))
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
local out = {capped(KEYS[2]), rest}
for _, e in ipairs(ready) do out[#out + 1] = e end
return out
