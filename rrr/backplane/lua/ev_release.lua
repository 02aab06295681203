-- The sender's lease given up (a clean shutdown: another process takes over at once). KEYS: lease.
-- ARGV: pid.

if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
