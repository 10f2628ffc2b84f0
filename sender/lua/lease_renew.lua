-- A missing lease is taken again: after Redis lost data the key may be gone
-- while no other sender holds the device (one that took it would have set it).
-- KEYS[1] lease; ARGV[1] this sender's id, ARGV[2] ttl ms. Returns 1 while
-- this sender holds the lease, 0 when another one does.
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1
end return 0
