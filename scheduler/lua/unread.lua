-- Jobs no router has read yet: the stream's length less the entries routers
-- hold unacknowledged. Those held are jobs waiting for a device of their
-- user (bounded per user by the router): counting them would let one user
-- whose devices are away stop the publishing of every user's campaigns.
-- KEYS[1] jobs stream, ARGV[1] the routers' group.
local n = redis.call('XLEN', KEYS[1])
local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1])
if ok and type(p) == 'table' and tonumber(p[1]) then n = n - tonumber(p[1]) end
return n
