-- Claims the message's marker for this device and sender, unless the
-- device's recipient gap still runs for its number ("g:<ms left>"). KEYS[1]
-- marker, KEYS[2] the device's next send time, KEYS[3] (optional) the
-- recipient's key; ARGV[1] value, ARGV[2] ttl s, ARGV[3] blocking prefixes,
-- ARGV[4] gap ms, ARGV[5] message id, ARGV[6] the earliest next send should
-- this one go out (wall clock us; "0" with no pacing). That floor keeps the
-- pacing when the sender dies between the send and its report: the next
-- owner starts from it (the report replaces it with the real next time).
local v = redis.call('GET', KEYS[1])
if v and string.find(ARGV[3], string.sub(v, 1, 1), 1, true) then return v end
if KEYS[3] then
  local last = redis.call('GET', KEYS[3])
  if last and last ~= ARGV[5] then return 'g:' .. redis.call('PTTL', KEYS[3]) end
  redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[4])
end
if ARGV[6] ~= '0' then
  local n = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  if n < tonumber(ARGV[6]) then redis.call('SET', KEYS[2], ARGV[6], 'PX', 86400000) end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return redis.status_reply('OK')
