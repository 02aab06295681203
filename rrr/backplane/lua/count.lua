-- KEYS: none. ARGV: room. Read-only totals for the HTTP API.

local c, n, u, v, _, users = recount(ARGV[1], now())
return {c, n, u, v, users}
