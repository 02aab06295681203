-- The sender's slot: look at a room's events again a little later (none could move yet). KEYS:
-- due set. ARGV: room, ms from now.

redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
