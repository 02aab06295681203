-- KEYS: none. ARGV: room. Read-only: the members through live processes, flat user, info JSON.

local members = live_members(ARGV[1], now(), {})
local out = {}
for user, info in pairs(members) do
  out[#out + 1] = user
  out[#out + 1] = info
end
return out
