-- One Redis: move the events of some due rooms to the outbox in one step. KEYS: outbox, due set,
-- then per room its event stream and reported state. ARGV: limit per room, vacate delay ms, cap,
-- wanted names (",a,b,"), then the rooms. A room left with nothing is taken off the due set, else
-- put back at when the rest may move. Returns {dropped over the cap (outbox), dropped over the cap
-- (rooms' streams), name of each event moved...}.

local outbox, due_key = KEYS[1], KEYS[2]
local limit, delay, cap, names = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
local out = {0, 0}
for r = 5, #ARGV do
  local room = ARGV[r]
  local q, s = KEYS[2 * (r - 5) + 3], KEYS[2 * (r - 5) + 4]
  out[2] = out[2] + capped(s)
  local ready, rest = take(q, now, delay, limit)
  for _, e in ipairs(ready) do
    local name = fields(e[2]).n
    if wanted(names, name) then
      out[1] = out[1] + push(outbox, cap, e[2])
      out[#out + 1] = name
    end
    redis.call('XDEL', q, e[1])
  end
  if redis.call('XLEN', q) == 0 then
    redis.call('DEL', q)
    redis.call('ZREM', due_key, room)
  else
    redis.call('ZADD', due_key, rest < 0 and now or rest, room)
  end
end
return out
