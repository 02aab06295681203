-- An event no presence change makes (a Pusher client event, a cache miss), straight into the outbox:
-- it is no transition (nothing to pair or hold back), so it skips the room's stream and reported
-- state. KEYS: outbox. ARGV: cap, id, then the event's own fields as flat pairs (n name, c room, u
-- user, e event, d data, x socket id). Its at (a) and stored (s) are Redis's now. Returns 1 if the
-- oldest event was dropped for it (the cap: --webhook-backlog).

local outbox = KEYS[1]
local now = now_ms()
local flat = {'a', now, 'i', ARGV[2], 's', now}
for i = 3, #ARGV do flat[#flat + 1] = ARGV[i] end
return push(outbox, tonumber(ARGV[1]), flat)
