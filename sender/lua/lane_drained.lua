-- A lane read empty of new entries is removed when it holds nothing at all
-- (the router recreates it with the campaign's next message). KEYS[1] lane,
-- KEYS[2] lanes; ARGV[1] campaign.
if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1]) return 1 end return 0
