-- Records an outcome in one script: the marker ("d:" + result), the result
-- on the results stream, the ack and delete of the lane entry, the next send
-- time, and the day's count. KEYS[1] marker, KEYS[2] results, KEYS[3] lane,
-- KEYS[4] next, KEYS[5] day count; ARGV[1] marker value ("" for none),
-- ARGV[2] marker ttl s, ARGV[3] group, ARGV[4] entry id ("" for none),
-- ARGV[5] next send time, ARGV[6] "1" to count the send, ARGV[7] "1" to set
-- the marker without a result on the stream.
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  if ARGV[7] ~= '1' then
    redis.call('XADD', KEYS[2], '*', 'r', string.sub(ARGV[1], 3))
  end
end
if ARGV[4] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
  redis.call('XDEL', KEYS[3], ARGV[4])
end
redis.call('SET', KEYS[4], ARGV[5], 'PX', 86400000)
if ARGV[6] == '1' and redis.call('INCR', KEYS[5]) == 1 then
  redis.call('EXPIRE', KEYS[5], 172800) end
return 1
