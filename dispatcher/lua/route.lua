-- Routes a job to a device: a message whose outcome is known (a duplicate
-- job) is refused ("D"); a full lane refuses it (nil: the next device is
-- tried); else the marker says "routed to <device>" and the job is appended
-- to the device's lane of its campaign. A message claimed for a send
-- ("c:<device>:...") goes only to the device that claimed it ("C:" and that
-- device come back when another was chosen), with its claim left as it is:
-- it may be the only copy of a send in doubt (set aside while its campaign
-- was paused, say), and that device's sender waits for the send's outcome,
-- from the claim's time, before it sends again (a copy of a send that
-- completes is then dropped). A new lane gets its consumer group and joins
-- the device's set of lanes (the entry id comes back with a "+").
-- KEYS[1] marker, KEYS[2] lane, KEYS[3] lanes; ARGV[1] "r:<device>",
-- ARGV[2] marker ttl s, ARGV[3] lane cap, ARGV[4] job, ARGV[5] campaign,
-- ARGV[6] group, ARGV[7] device.
local v = redis.call('GET', KEYS[1])
local claimed = false
if v then
  local p = string.sub(v, 1, 1)
  if p == 'd' then return 'D' end
  if p == 'c' then
    local owner = string.match(v, '^c:([^:]+):')
    if owner and owner ~= ARGV[7] then return 'C:' .. owner end
    claimed = true
  end
end
local n = redis.call('XLEN', KEYS[2])
if n >= tonumber(ARGV[3]) then return false end
if n == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[6], '0', 'MKSTREAM')
end
if not claimed then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
local id = redis.call('XADD', KEYS[2], '*', 'j', ARGV[4])
-- A lane with entries is in the set already (lanes join it when created and
-- leave it only when deleted empty, each in one script).
if n == 0 and redis.call('SADD', KEYS[3], ARGV[5]) == 1 then return '+' .. id end
return id
