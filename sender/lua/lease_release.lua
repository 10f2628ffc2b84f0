-- Releases a device's lease, only when this sender holds it.
-- KEYS[1] lease; ARGV[1] this sender's id. Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
return redis.call('DEL', KEYS[1]) else return 0 end
