-- Records a new epoch after a loss, unless another process already recorded
-- this one or a later one (lib/wc_epoch.c).
-- KEYS[1] fence; ARGV[1] new epoch, ARGV[2] its starting sequence.
-- Returns 1 when recorded, 0 when the fence was already there.
local e = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0') or 0
if e >= tonumber(ARGV[1]) then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'seq', ARGV[2], 'ms',
  string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)))
return 1
