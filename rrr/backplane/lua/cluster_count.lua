-- ARGV: none. Read-only totals: {c, t, u, v, users}.

local c, n, u, v, users = state(now(), false)
return {c, n, u, v, users}
