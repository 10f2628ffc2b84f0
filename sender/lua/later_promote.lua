-- Moves the later set's due messages back to their lanes (up to 100 at a
-- time); returns {moved, next due score or -1}. KEYS[1] later, KEYS[2] lanes;
-- ARGV[1] now ms, ARGV[2] group, ARGV[3] lane key prefix. The lane keys share
-- the device's hash slot.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
local n = 0
for _, m in ipairs(due) do
  local c, p = string.match(m, '^%??([^\n]*)\n(.*)$')
  if c then
    local lane = ARGV[3] .. c
    if redis.call('EXISTS', lane) == 0 then
      redis.call('XGROUP', 'CREATE', lane, ARGV[2], '0', 'MKSTREAM') end
    redis.call('XADD', lane, '*', 'j', p)
    redis.call('SADD', KEYS[2], c) n = n + 1
  end
  redis.call('ZREM', KEYS[1], m)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {n, -1} end
return {n, tonumber(nxt[2])}
