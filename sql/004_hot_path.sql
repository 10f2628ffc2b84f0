-- The hot path writes each message row three times (inserted pending, marked
-- queued, given its final status), and every write adds one entry to each
-- index whose predicate the new row version matches. Fewer, narrower indexes
-- on broadcast_messages make all three writes cheaper (bench/README.md).

-- "Any message of this campaign still open" and the reconciler's "queued for
-- too long" are answered by the pending and queued indexes instead of two
-- indexes of their own that every pending and queued version also paid for.
DROP INDEX broadcast_messages_open_idx;
DROP INDEX broadcast_messages_stale_idx;
DROP INDEX broadcast_messages_queued_idx;
CREATE INDEX broadcast_messages_queued_idx ON broadcast_messages (campaign_id, updated_at)
    WHERE status = 'queued';

-- Inbound replies (STOP) come from people who were sent something: only
-- those rows need to be found by phone, so pending and queued versions add
-- nothing to this index.
DROP INDEX broadcast_messages_recipient_idx;
CREATE INDEX broadcast_messages_recipient_idx ON broadcast_messages (recipient_phone)
    WHERE status IN ('sent', 'delivered', 'read', 'failed');

-- The status a row had before the dispatcher's latest status UPDATE (only
-- that statement sets it): taken from the row version it actually replaces
-- (the latest one, after any concurrent writer), so the campaign counters are
-- right without locking the rows in a separate step first.
ALTER TABLE broadcast_messages ADD COLUMN prev_status message_status;
