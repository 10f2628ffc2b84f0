-- Deletes a key only while it still holds the given value: a device's lease
-- released by the sender holding it, an upload lock by its holder, a media
-- id cleared by the sender that saw it refused. A plain DEL would also remove
-- what another sender has written since (its lease or lock, taken after ours
-- ran out; the new id of its upload).
-- KEYS[1] key; ARGV[1] value. Returns 1 when deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
