-- Drip sequences: a lead carrying a sequence's trigger tag is enrolled (one
-- sequence_contacts row per lead and sequence) and receives the sequence's
-- steps one after another, each step's message a broadcast_messages row
-- (UNIQUE per step and lead: a step reaches a contact at most once).
--
-- What lives here rather than in the daemons, so the daemons need only small
-- hooks and every writer (the dashboard, the sink, a webhook) gets the same
-- rules in the same transaction:
--   * enrolment and removal when a lead's tags or opt-out change (statement
--     triggers on leads), and enrolment of the leads that already carry the
--     tag when the scheduler accepts an activation (wacast_seq_enrol);
--   * the next step's due time, computed when a step's message is *sent*
--     (a row trigger on broadcast_messages, fired only for step messages),
--     in the sequence's zone, at its send_time, inside its window;
--   * stops: opt-out, the tag removed, a reply (wacast_seq_reply, called by
--     the dispatcher for inbound messages), a failed step;
--   * chaining: a sent step's next_trigger is added to the lead's tags;
--   * the counters on sequences (statement triggers on sequence_contacts).
-- The scheduler validates activations (it alone can compile templates),
-- claims due contacts and renders and publishes their steps.

-- Lanes of one device are taken by weight (see README, "Drip sequences").
ALTER TABLE campaigns ADD COLUMN priority integer NOT NULL DEFAULT 0;

CREATE TYPE sequence_status AS ENUM ('draft', 'active', 'paused', 'archived');
CREATE TYPE sequence_contact_status AS ENUM ('active', 'completed', 'stopped', 'failed');

CREATE TABLE sequences (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name               text NOT NULL DEFAULT '',
    -- The tag (in leads.trigger) that enrols a lead.
    "trigger"          text NOT NULL,
    niche              text,
    target_status      text NOT NULL DEFAULT 'all',
    status             sequence_status NOT NULL DEFAULT 'draft',
    -- Written by wacast: why an activation was refused (status stays draft).
    status_reason      text,
    time_zone          text NOT NULL DEFAULT 'UTC',
    -- Wall clock in time_zone; nothing is published outside (may wrap midnight).
    send_window_start  time,
    send_window_end    time,
    min_delay_seconds  numeric(10, 3),
    max_delay_seconds  numeric(10, 3),
    stop_on_reply      boolean NOT NULL DEFAULT true,
    priority           integer NOT NULL DEFAULT 0,
    -- Written by wacast: when the scheduler accepted the activation. A
    -- sequence enrols and sends only while active AND accepted; moving it
    -- from draft (or archived) to active again clears it, so it is checked
    -- again. Resuming from paused keeps it.
    activated_at       timestamptz,
    -- Written by wacast: while set, the leads that carried the tag at
    -- activation are being enrolled, page by page, after this lead id.
    enrol_cursor       uuid,
    enrolled_count     integer NOT NULL DEFAULT 0,
    active_count       integer NOT NULL DEFAULT 0,
    completed_count    integer NOT NULL DEFAULT 0,
    stopped_count      integer NOT NULL DEFAULT 0,
    failed_count       integer NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sequences_user_trigger_idx ON sequences (user_id, "trigger")
    WHERE status = 'active' AND activated_at IS NOT NULL;
CREATE INDEX sequences_unchecked_idx ON sequences (id)
    WHERE status = 'active' AND activated_at IS NULL;

CREATE FUNCTION wacast_sequence_before_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF TG_OP = 'INSERT' THEN
        NEW.activated_at := NULL;
    ELSIF NEW.status = 'active' AND OLD.status IN ('draft', 'archived') THEN
        NEW.activated_at := NULL;
        NEW.status_reason := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sequences_before_write BEFORE INSERT OR UPDATE ON sequences
    FOR EACH ROW EXECUTE FUNCTION wacast_sequence_before_write();

CREATE TABLE sequence_steps (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sequence_id    uuid NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    step_number    integer NOT NULL,
    -- After the previous step was sent (after enrolment for the first step).
    delay_seconds  numeric(12, 3) NOT NULL DEFAULT 0,
    -- Local time of day in the sequence's zone: the first such time after the delay.
    send_time      time,
    message        text NOT NULL DEFAULT '',
    media_url      text,
    -- Tag added to the lead when this step is sent (chains into another sequence).
    next_trigger   text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sequence_id, step_number)
);
CREATE TRIGGER sequence_steps_touch BEFORE UPDATE ON sequence_steps
    FOR EACH ROW EXECUTE FUNCTION wacast_touch_updated_at();

CREATE TABLE sequence_contacts (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sequence_id    uuid NOT NULL REFERENCES sequences (id) ON DELETE CASCADE,
    lead_id        uuid NOT NULL REFERENCES leads (id) ON DELETE CASCADE,
    status         sequence_contact_status NOT NULL DEFAULT 'active',
    -- The last step sent (0 before the first).
    current_step   integer NOT NULL DEFAULT 0,
    -- When the next step is due; NULL while a step's message is on its way
    -- (the sent status sets the next one) and once the contact is done.
    next_send_at   timestamptz,
    enrolled_at    timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    stop_reason    text,
    -- The scheduler holding the contact while it renders its step; the claim
    -- moves next_send_at to the claim's end, so a dead scheduler's contact
    -- falls due again.
    claimed_by     text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sequence_id, lead_id)
);
CREATE INDEX sequence_contacts_due_idx ON sequence_contacts (sequence_id, next_send_at)
    WHERE status = 'active' AND next_send_at IS NOT NULL;
CREATE INDEX sequence_contacts_lead_idx ON sequence_contacts (lead_id) WHERE status = 'active';

-- Step messages: campaign_id NULL, sequence_id and the step set.
ALTER TABLE broadcast_messages ALTER COLUMN campaign_id DROP NOT NULL;
ALTER TABLE broadcast_messages ADD COLUMN sequence_id uuid REFERENCES sequences (id) ON DELETE CASCADE;
ALTER TABLE broadcast_messages ADD COLUMN sequence_step_id uuid
    REFERENCES sequence_steps (id) ON DELETE SET NULL;
ALTER TABLE broadcast_messages ADD COLUMN step_number integer;
ALTER TABLE broadcast_messages ADD CONSTRAINT broadcast_messages_origin_check
    CHECK (campaign_id IS NOT NULL OR sequence_id IS NOT NULL) NOT VALID;
CREATE UNIQUE INDEX broadcast_messages_step_lead_idx ON broadcast_messages (sequence_step_id, lead_id);
-- The scheduler's bound on a sequence's steps published and not yet done.
CREATE INDEX broadcast_messages_seq_queued_idx ON broadcast_messages (sequence_id)
    WHERE status = 'queued' AND sequence_id IS NOT NULL;
CREATE INDEX broadcast_messages_sequence_idx ON broadcast_messages (sequence_id, lead_id)
    WHERE sequence_id IS NOT NULL;

-- A lead's tags: comma-separated, trimmed, empty ones dropped; exact match.
CREATE FUNCTION wacast_tags(t text) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(array_agg(x), '{}') FROM
        (SELECT btrim(x) AS x FROM unnest(string_to_array(coalesce(t, ''), ',')) AS x) s
    WHERE x <> ''
$$;

-- When a step is due: delay after `after`, then the first send_time (local,
-- in tz) at or after that, then the first instant inside the window. Local
-- times are read through PostgreSQL's zone rules, so a DST change moves the
-- instant, not the wall clock.
CREATE FUNCTION wacast_seq_next_at(after timestamptz, delay numeric, send_time time, ws time,
                                   we time, tz text)
RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
DECLARE
    t timestamptz := after + make_interval(secs => greatest(coalesce(delay, 0), 0)::float8);
    cand timestamptz;
BEGIN
    IF NOT wacast_valid_time_zone(tz) THEN
        RETURN t;
    END IF;
    IF send_time IS NOT NULL THEN
        cand := ((t AT TIME ZONE tz)::date + send_time) AT TIME ZONE tz;
        IF cand < t THEN
            cand := ((t AT TIME ZONE tz)::date + 1 + send_time) AT TIME ZONE tz;
        END IF;
        t := cand;
    END IF;
    RETURN wacast_window_opens(ws, we, tz, t);
END $$;

-- When a contact's first step (or, with `after_step`, the step after it) is due.
CREATE FUNCTION wacast_seq_step_due(seq uuid, after_step integer, after timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT wacast_seq_next_at(after, st.delay_seconds, st.send_time,
                                               s.send_window_start, s.send_window_end, s.time_zone)
                     FROM sequence_steps st WHERE st.sequence_id = seq
                     AND st.step_number > after_step ORDER BY st.step_number LIMIT 1), after)
    FROM sequences s WHERE s.id = seq
$$;

-- Enrols leads (every lead when lead_ids is NULL) carrying the
-- trigger of an active, accepted sequence (all of them when seq is NULL):
-- same user, niche and target_status filters as campaigns, not opted out.
-- A lead already enrolled (whatever its contact's status) is left alone: a
-- contact goes through a sequence once. Returns how many were enrolled.
CREATE FUNCTION wacast_seq_enrol(seq uuid, lead_ids uuid[]) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    IF lead_ids IS NOT NULL AND cardinality(lead_ids) = 0 THEN
        RETURN 0;
    END IF;
    WITH s AS MATERIALIZED (
        SELECT s.*, wacast_seq_step_due(s.id, 0, now()) AS first_due FROM sequences s
        WHERE s.status = 'active' AND s.activated_at IS NOT NULL AND (seq IS NULL OR s.id = seq)),
    -- The given leads by primary key; else every lead of the sequences' users.
    l AS MATERIALIZED (
        SELECT l.* FROM leads l WHERE lead_ids IS NOT NULL
        AND l.id IN (SELECT DISTINCT unnest(lead_ids))
        UNION ALL
        SELECT l.* FROM leads l WHERE lead_ids IS NULL AND l.user_id IN (SELECT user_id FROM s)),
    ins AS (
        INSERT INTO sequence_contacts (sequence_id, lead_id, next_send_at)
        SELECT s.id, l.id, s.first_due
        FROM s JOIN l ON l.user_id = s.user_id
        WHERE l.opted_out_at IS NULL
        AND s."trigger" = ANY (wacast_tags(l."trigger"))
        AND (s.target_status = 'all' OR l.target_status::text = s.target_status)
        AND (s.niche IS NULL OR lower(l.niche) = lower(s.niche))
        ON CONFLICT (sequence_id, lead_id) DO NOTHING RETURNING 1)
    SELECT count(*) INTO n FROM ins;
    RETURN n;
END $$;

-- Stops a lead's active contacts with a reason (seq NULL: in every sequence).
CREATE FUNCTION wacast_seq_stop(lead uuid, seq uuid, reason text) RETURNS void LANGUAGE sql AS $$
    UPDATE sequence_contacts SET status = 'stopped', stop_reason = reason, next_send_at = NULL,
        claimed_by = NULL, completed_at = now(), updated_at = now()
    WHERE lead_id = lead AND (seq IS NULL OR sequence_id = seq) AND status = 'active'
$$;

-- Leads inserted: enrol those carrying a trigger (nothing to do, cheaply,
-- while no sequence is active).
CREATE FUNCTION wacast_leads_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sequences WHERE status = 'active' AND activated_at IS NOT NULL) THEN
        PERFORM wacast_seq_enrol(NULL, (SELECT coalesce(array_agg(id), '{}') FROM new_leads
                                        WHERE "trigger" IS NOT NULL AND opted_out_at IS NULL));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER leads_sequences_insert AFTER INSERT ON leads
    REFERENCING NEW TABLE AS new_leads
    FOR EACH STATEMENT EXECUTE FUNCTION wacast_leads_inserted();

-- Leads updated: an opt-out stops every contact of the lead; a removed tag
-- stops the contacts of the sequences it enrolled (`removed`); an added tag
-- enrols. Set-based, so tagging many leads in one statement stays cheap.
CREATE FUNCTION wacast_leads_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old jsonb;
    ch jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM sequences) THEN
        RETURN NULL;
    END IF;
    -- The old rows by id, looked up per new row (a join of the two
    -- transition tables is planned as one row against one: quadratic).
    SELECT jsonb_object_agg(id, jsonb_build_array("trigger", opted_out_at IS NOT NULL))
        INTO old FROM old_leads;
    SELECT jsonb_agg(jsonb_build_object('id', n.id,
               'opted_out', n.opted_out_at IS NOT NULL AND NOT (o -> 1)::boolean,
               'new_tags', wacast_tags(n."trigger"), 'old_tags', wacast_tags(o ->> 0)))
        INTO ch
    FROM new_leads n, LATERAL (SELECT old -> n.id::text AS o) x
    WHERE n."trigger" IS DISTINCT FROM x.o ->> 0
       OR (n.opted_out_at IS NOT NULL AND NOT (x.o -> 1)::boolean);
    IF ch IS NULL THEN
        RETURN NULL;
    END IF;
    UPDATE sequence_contacts sc SET status = 'stopped',
        stop_reason = CASE WHEN c.opted_out THEN 'opted_out' ELSE 'removed' END,
        next_send_at = NULL, claimed_by = NULL, completed_at = now(), updated_at = now()
    FROM jsonb_to_recordset(ch) AS c(id uuid, opted_out boolean, new_tags text[], old_tags text[]),
         sequences s
    WHERE sc.lead_id = c.id AND sc.status = 'active' AND s.id = sc.sequence_id
    AND (c.opted_out OR NOT (s."trigger" = ANY (c.new_tags)));
    PERFORM wacast_seq_enrol(NULL, (SELECT coalesce(array_agg(c.id), '{}')
        FROM jsonb_to_recordset(ch) AS c(id uuid, opted_out boolean, new_tags text[],
                                         old_tags text[])
        JOIN leads l ON l.id = c.id
        WHERE l.opted_out_at IS NULL AND NOT (c.new_tags <@ c.old_tags)))
    WHERE EXISTS (SELECT 1 FROM sequences WHERE status = 'active' AND activated_at IS NOT NULL);
    RETURN NULL;
END $$;
CREATE TRIGGER leads_sequences_update AFTER UPDATE ON leads
    REFERENCING OLD TABLE AS old_leads NEW TABLE AS new_leads
    FOR EACH STATEMENT EXECUTE FUNCTION wacast_leads_updated();

-- Step messages that moved, handled once per statement (the sink writes
-- statuses in batches; a row trigger would run several statements per
-- message). Sent (or beyond): the contact's current_step, and the next
-- step's due time from the moment it was sent, or completed; the step's
-- next_trigger is added to the lead. Failed, skipped or cancelled: the
-- contact fails with the reason. Progress is recorded even for a contact
-- stopped while its step was on the way (it was sent all the same). The
-- filter on sequence_id keeps campaigns' batches to a scan of the
-- transition table.
CREATE FUNCTION wacast_seq_apply_moves(moves jsonb) RETURNS void LANGUAGE sql AS $$
    WITH m AS (SELECT * FROM jsonb_to_recordset(moves) AS x(sequence_id uuid, lead_id uuid,
                   step_id uuid, step_number integer, status message_status, sent_at timestamptz,
                   reason text)),
    sent AS (
        UPDATE sequence_contacts sc SET current_step = m.step_number, updated_at = now(),
            claimed_by = CASE WHEN sc.status = 'active' THEN NULL ELSE sc.claimed_by END,
            next_send_at = CASE WHEN sc.status <> 'active' THEN sc.next_send_at
                WHEN nxt.step_number IS NULL THEN NULL
                ELSE wacast_seq_next_at(coalesce(m.sent_at, now()), nxt.delay_seconds,
                     nxt.send_time, s.send_window_start, s.send_window_end, s.time_zone) END,
            status = CASE WHEN sc.status = 'active' AND nxt.step_number IS NULL
                THEN 'completed'::sequence_contact_status ELSE sc.status END,
            completed_at = CASE WHEN sc.status = 'active' AND nxt.step_number IS NULL THEN now()
                ELSE sc.completed_at END
        FROM m JOIN sequences s ON s.id = m.sequence_id
        LEFT JOIN LATERAL (SELECT x.step_number, x.delay_seconds, x.send_time
            FROM sequence_steps x WHERE x.sequence_id = m.sequence_id
            AND x.step_number > m.step_number ORDER BY x.step_number LIMIT 1) nxt ON true
        WHERE m.status IN ('sent', 'delivered', 'read') AND sc.sequence_id = m.sequence_id
        AND sc.lead_id = m.lead_id AND sc.current_step < m.step_number
        RETURNING sc.lead_id, m.step_id, m.step_number),
    failed AS (
        UPDATE sequence_contacts sc SET status = 'failed', next_send_at = NULL,
            claimed_by = NULL, completed_at = now(), updated_at = now(),
            stop_reason = left('step ' || m.step_number || ' ' || m.status || ': '
                || coalesce(m.reason, 'no reason given'), 500)
        FROM m WHERE m.status IN ('failed', 'skipped', 'cancelled')
        AND sc.sequence_id = m.sequence_id AND sc.lead_id = m.lead_id AND sc.status = 'active'
        RETURNING 1),
    -- Chaining: the sent step's tag, added once (this update enrols).
    chained AS (
        UPDATE leads l SET "trigger" = CASE WHEN wacast_tags(l."trigger") = '{}' THEN t.tag
                                            ELSE l."trigger" || ',' || t.tag END
        FROM (SELECT DISTINCT ON (a.lead_id) a.lead_id, btrim(st.next_trigger) AS tag
              FROM sent a JOIN sequence_steps st ON st.id = a.step_id
              WHERE btrim(st.next_trigger) <> '' AND position(',' IN st.next_trigger) = 0
              ORDER BY a.lead_id, a.step_number DESC) t
        WHERE l.id = t.lead_id AND NOT (t.tag = ANY (wacast_tags(l."trigger"))) RETURNING 1)
    SELECT FROM (SELECT count(*) FROM sent) a, (SELECT count(*) FROM failed) b,
                (SELECT count(*) FROM chained) c
$$;

-- Only the new rows are looked at (the old ones would be a join of two
-- transition tables, which the planner takes for one row each): a sent
-- message advances its contact only past a lower current_step, and a failed
-- one fails only an active contact, so a later receipt (delivered, read) or
-- any other update of the row changes nothing.
CREATE FUNCTION wacast_seq_messages_moved() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    moves jsonb;
BEGIN
    SELECT jsonb_agg(jsonb_build_object('sequence_id', n.sequence_id, 'lead_id', n.lead_id,
               'step_id', n.sequence_step_id, 'step_number', n.step_number,
               'status', n.status, 'sent_at', n.sent_at,
               'reason', coalesce(n.error_message, n.error_code))) INTO moves
    FROM new_messages n WHERE n.sequence_id IS NOT NULL AND n.lead_id IS NOT NULL
    AND n.status IN ('sent', 'delivered', 'read', 'failed', 'skipped', 'cancelled');
    IF moves IS NOT NULL THEN
        PERFORM wacast_seq_apply_moves(moves);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER broadcast_messages_sequence_moved AFTER UPDATE ON broadcast_messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION wacast_seq_messages_moved();
CREATE TRIGGER broadcast_messages_sequence_inserted AFTER INSERT ON broadcast_messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION wacast_seq_messages_moved();

-- An inbound reply (any text) from `phone` to the device `receiver` (the
-- same matching as an opt-out: device id, phone_number_id, JID or number)
-- stops that user's contacts with the number in sequences with
-- stop_on_reply. Returns how many contacts stopped.
CREATE FUNCTION wacast_seq_reply(phone text, receiver text) RETURNS bigint LANGUAGE sql AS $$
    WITH dev AS (SELECT DISTINCT user_id FROM user_devices d WHERE d.id::text = receiver
        OR d.settings->>'phone_number_id' = receiver OR d.settings->>'jid' = receiver
        OR (d.phone IS NOT NULL AND regexp_replace(d.phone, '[^0-9]', '', 'g')
            = split_part(split_part(receiver, '@', 1), ':', 1))),
    stopped AS (
        UPDATE sequence_contacts sc SET status = 'stopped', stop_reason = 'replied',
            next_send_at = NULL, claimed_by = NULL, completed_at = now(), updated_at = now()
        FROM sequences s WHERE s.id = sc.sequence_id AND s.stop_on_reply AND sc.status = 'active'
        AND s.user_id IN (SELECT user_id FROM dev)
        AND sc.lead_id IN (SELECT m.lead_id FROM broadcast_messages m
            WHERE m.recipient_phone = phone AND m.sequence_id IS NOT NULL
            AND m.status IN ('sent', 'delivered', 'read', 'failed')
            AND m.user_id IN (SELECT user_id FROM dev))
        RETURNING 1)
    SELECT count(*) FROM stopped
$$;

-- Counters. Contacts change status from many writers at once (the sink's
-- batches, stops, claims that complete): every change appends a delta here
-- (no hot row, no lock between writers), and the scheduler folds the deltas
-- into the sequences' counters every WACAST_SEQ_MS (wacast_seq_fold_counters):
-- the counters trail the contacts by that much.
CREATE TABLE sequence_counter_deltas (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sequence_id  uuid NOT NULL,
    enrolled     integer NOT NULL DEFAULT 0,
    active       integer NOT NULL DEFAULT 0,
    completed    integer NOT NULL DEFAULT 0,
    stopped      integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0
);

CREATE FUNCTION wacast_seq_contacts_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sequence_counter_deltas (sequence_id, enrolled, active)
    SELECT sequence_id, count(*), count(*) FILTER (WHERE status = 'active')
    FROM new_contacts GROUP BY sequence_id;
    RETURN NULL;
END $$;
CREATE TRIGGER sequence_contacts_counted_insert AFTER INSERT ON sequence_contacts
    REFERENCING NEW TABLE AS new_contacts
    FOR EACH STATEMENT EXECUTE FUNCTION wacast_seq_contacts_inserted();

-- A status change: one delta row (a row trigger: the transition tables'
-- join would be planned as one row against one).
CREATE FUNCTION wacast_seq_contact_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sequence_counter_deltas (sequence_id, active, completed, stopped, failed)
    VALUES (NEW.sequence_id,
        (NEW.status = 'active')::int - (OLD.status = 'active')::int,
        (NEW.status = 'completed')::int - (OLD.status = 'completed')::int,
        (NEW.status = 'stopped')::int - (OLD.status = 'stopped')::int,
        (NEW.status = 'failed')::int - (OLD.status = 'failed')::int);
    RETURN NULL;
END $$;
CREATE TRIGGER sequence_contacts_counted_update AFTER UPDATE OF status ON sequence_contacts
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION wacast_seq_contact_moved();

-- Folds the pending deltas into the counters (one UPDATE per sequence).
-- Returns how many deltas were folded.
CREATE FUNCTION wacast_seq_fold_counters() RETURNS bigint LANGUAGE sql AS $$
    WITH d AS (DELETE FROM sequence_counter_deltas RETURNING *),
    t AS (SELECT sequence_id, sum(enrolled) AS enrolled, sum(active) AS active,
                 sum(completed) AS completed, sum(stopped) AS stopped, sum(failed) AS failed,
                 count(*) AS n
          FROM d GROUP BY sequence_id),
    u AS (UPDATE sequences s SET enrolled_count = s.enrolled_count + t.enrolled,
              active_count = s.active_count + t.active,
              completed_count = s.completed_count + t.completed,
              stopped_count = s.stopped_count + t.stopped, failed_count = s.failed_count + t.failed
          FROM t WHERE s.id = t.sequence_id RETURNING 1)
    SELECT coalesce(sum(n), 0)::bigint FROM t
$$;

-- What refuses an activation, checked in SQL (the template is checked by the
-- scheduler): NULL when none.
CREATE FUNCTION wacast_seq_problem(seq uuid) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN NOT wacast_valid_time_zone(s.time_zone)
            THEN 'unknown time zone ''' || left(s.time_zone, 100) || ''''
        WHEN btrim(s."trigger") = '' OR position(',' IN s."trigger") > 0
            THEN 'trigger must be one tag'
        WHEN (s.send_window_start IS NULL) <> (s.send_window_end IS NULL)
            THEN 'send_window_start and send_window_end must be set together'
        WHEN s.send_window_start = s.send_window_end
            THEN 'send window start equals its end (' || s.send_window_start || ')'
        WHEN s.target_status NOT IN ('all', 'prospect', 'customer')
            THEN 'unknown target_status ''' || left(s.target_status, 100)
                || ''' (prospect, customer or all)'
        WHEN (s.min_delay_seconds IS NULL) <> (s.max_delay_seconds IS NULL)
            THEN 'min_delay_seconds and max_delay_seconds must be set together'
        WHEN s.min_delay_seconds < 0 OR s.max_delay_seconds < 0 THEN 'delays must not be negative'
        WHEN s.min_delay_seconds > s.max_delay_seconds
            THEN 'min_delay_seconds is greater than max_delay_seconds'
        WHEN NOT EXISTS (SELECT 1 FROM sequence_steps st WHERE st.sequence_id = s.id)
            THEN 'the sequence has no steps'
        ELSE (SELECT 'step ' || st.step_number || ': '
                  || CASE WHEN st.step_number < 1 THEN 'step_number must be 1 or more'
                          WHEN st.delay_seconds < 0 THEN 'negative delay_seconds ('
                              || st.delay_seconds || ')'
                          ELSE 'empty message' END
              FROM sequence_steps st WHERE st.sequence_id = s.id
              AND (st.step_number < 1 OR st.delay_seconds < 0 OR btrim(st.message) = '')
              ORDER BY st.step_number LIMIT 1)
    END
    FROM sequences s WHERE s.id = seq
$$;

-- The scheduler accepts a checked activation: the sequence starts enrolling
-- (leads tagged from now on, by the triggers above), and the leads that
-- carry its tag already are enrolled by wacast_seq_enrol_page, in pages (a
-- million leads in one statement would hold one transaction for a minute).
-- -1 when it is no longer an unchecked active sequence (another scheduler
-- accepted it, or it changed).
CREATE FUNCTION wacast_seq_accept(seq uuid) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sequences SET activated_at = now(), status_reason = NULL,
        enrol_cursor = '00000000-0000-0000-0000-000000000000'
        WHERE id = seq AND status = 'active' AND activated_at IS NULL;
    RETURN CASE WHEN FOUND THEN 0 ELSE -1 END;
END $$;

-- Enrols the next page of an accepted sequence's user's leads (by id, after
-- its enrol_cursor); the cursor goes when the last page is done. One
-- scheduler at a time per sequence (SKIP LOCKED). Returns the leads
-- enrolled, or -1 when there was nothing to do.
CREATE FUNCTION wacast_seq_enrol_page(seq uuid, page integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    cur uuid;
    uid uuid;
    ids uuid[];
    n bigint := 0;
BEGIN
    SELECT enrol_cursor, user_id INTO cur, uid FROM sequences
        WHERE id = seq AND status = 'active' AND activated_at IS NOT NULL
        AND enrol_cursor IS NOT NULL FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    SELECT array_agg(id ORDER BY id) INTO ids FROM (SELECT id FROM leads
        WHERE user_id = uid AND opted_out_at IS NULL AND id > cur ORDER BY id LIMIT page) x;
    IF ids IS NOT NULL THEN
        n := wacast_seq_enrol(seq, ids);
    END IF;
    UPDATE sequences SET enrol_cursor = CASE WHEN coalesce(cardinality(ids), 0) < page THEN NULL
                                             ELSE ids[cardinality(ids)] END
        WHERE id = seq;
    RETURN n;
END $$;
