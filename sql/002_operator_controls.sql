-- Operator controls and provider statuses.
-- expanded_at: when the scheduler finished expanding the campaign, so a
-- resumed campaign knows whether to go back to 'triggered' (expansion left to
-- do) or 'processing'.
ALTER TABLE campaigns ADD COLUMN expanded_at timestamptz;

-- Order of message statuses for "the furthest one wins" when several reports
-- about one message arrive together.
CREATE FUNCTION wacast_message_status_rank(s message_status) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE s
        WHEN 'pending' THEN 0 WHEN 'queued' THEN 1 WHEN 'sent' THEN 2
        WHEN 'delivered' THEN 3 WHEN 'read' THEN 4 ELSE 5 END
$$;

-- Inbound replies (STOP) are matched to leads through the messages sent to them.
CREATE INDEX broadcast_messages_recipient_idx ON broadcast_messages (recipient_phone);
