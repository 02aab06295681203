-- Cluster, the sender's slot: a room's taken events into the outbox. KEYS: outbox, due set, moved.
-- ARGV: room, cap, wanted names (",a,b,"), then per event its stream id and its 12 field values
-- (n, name, c, room, u, user, a, at, i, id, s, stored). Events at or before the room's last moved id
-- are not pushed again (a sender that died before ev_ack). The room leaves the due set: ev_note
-- puts it back if its stream still holds events. Returns {dropped over the cap, name pushed...}.

local outbox, due_key, moved = KEYS[1], KEYS[2], KEYS[3]
local room, cap, names = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local last = redis.call('HGET', moved, room)
local out = {0}
local top = false
for i = 4, #ARGV, 13 do
  local id = ARGV[i]
  if not last or after(id, last) then
    local flat = {}
    for j = 1, 12 do flat[j] = ARGV[i + j] end
    local name = flat[2]
    if wanted(names, name) then
      out[1] = out[1] + push(outbox, cap, flat)
      out[#out + 1] = name
    end
  end
  top = id
end
if top and (not last or after(top, last)) then redis.call('HSET', moved, room, top) end
redis.call('ZREM', due_key, room)
return out
