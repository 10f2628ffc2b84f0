-- Puts the job in hand in the device's later set, not to be sent before
-- not_before_us, and acknowledges its lane entry, in one script. The message
-- was not sent (a per-recipient wait), so its marker goes back to "routed
-- here": reading it again claims it afresh.
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('XACK', KEYS[2], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[2], ARGV[4]) return 1
