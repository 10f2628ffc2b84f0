-- Puts back what a held device's keys said before Redis lost it, from this
-- sender's memory: the next send time and the day's count never go back.
-- KEYS[1] next, KEYS[2] day count; ARGV[1] next send time (us), ARGV[2]
-- sends today.
if (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', 86400000) end
if ARGV[2] ~= '0' and (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) < tonumber(ARGV[2])
then redis.call('SET', KEYS[2], ARGV[2], 'EX', 172800) end
return 1
