-- Bumps the fence's sequence and stamps it with Redis's clock, while the
-- epoch is still the one this sender knows (lib/wc_epoch.c).
-- KEYS[1] fence; ARGV[1] epoch. Returns the new sequence, or -1 when the
-- epoch changed (another process recorded a loss: check again).
local e = redis.call('HGET', KEYS[1], 'epoch')
if e ~= ARGV[1] then return -1 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'ms',
  string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)))
return redis.call('HINCRBY', KEYS[1], 'seq', 1)
