-- ARGV: none. Read-only: the members through live rows, flat user, info JSON.

local _, _, _, _, _, _, members = state(now(), false)
local out = {}
for user, info in pairs(members) do
  out[#out + 1] = user
  out[#out + 1] = info
end
return out
