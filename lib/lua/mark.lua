-- Sets a message's idempotency marker unless its current state is one of the
-- blocking prefixes (lib/wc_keys.h says what the states mean).
-- KEYS[1] marker; ARGV[1] new value, ARGV[2] ttl seconds, ARGV[3] blocking
-- prefixes. Returns "OK" when set, else the current value.
local v = redis.call('GET', KEYS[1])
if v and string.find(ARGV[3], string.sub(v, 1, 1), 1, true) then return v end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return redis.status_reply('OK')
