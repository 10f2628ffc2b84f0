-- A message can be marked cancelled while its send is already under way:
-- the cancel sweep cancels what is still queued WACAST_CANCEL_GRACE_S after a
-- cancel, and a send whose outcome was in doubt (a reply lost, a sender that
-- died) is still queued then. When the provider then says it went out, the
-- row must say so: 'cancelled' may move to 'sent', 'delivered' or 'read'
-- (the sink moves the campaign's counters from cancelled to sent with it).
-- Nothing else leaves 'cancelled'.
CREATE OR REPLACE FUNCTION wacast_message_can_move(old_status message_status,
                                                   new_status message_status)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN old_status = 'cancelled' THEN new_status IN ('sent', 'delivered', 'read')
        WHEN old_status IN ('read', 'failed', 'skipped') THEN false
        WHEN new_status = 'queued' THEN old_status = 'pending'
        WHEN new_status IN ('skipped', 'cancelled') THEN old_status IN ('pending', 'queued')
        WHEN new_status = 'failed' THEN old_status IN ('pending', 'queued', 'sent')
        WHEN new_status = 'sent' THEN old_status IN ('pending', 'queued')
        WHEN new_status = 'delivered' THEN old_status IN ('pending', 'queued', 'sent')
        WHEN new_status = 'read' THEN old_status IN ('pending', 'queued', 'sent', 'delivered')
        ELSE false
    END
$$;
