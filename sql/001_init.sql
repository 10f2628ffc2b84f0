-- wacast schema. Names follow the system wacast replaces so its dashboard
-- keeps its vocabulary; types, enums, CHECKs and UNIQUE constraints fix its
-- defects by construction (duplicate sends, local-time instants, free text
-- statuses). Times are timestamptz (UTC instants); a campaign's wall-clock
-- schedule is interpreted in its own time zone.

CREATE TYPE campaign_status AS ENUM
    ('pending', 'triggered', 'processing', 'paused', 'finished', 'failed', 'cancelled');
CREATE TYPE message_status AS ENUM
    ('pending', 'queued', 'sent', 'delivered', 'read', 'failed', 'skipped', 'cancelled');
CREATE TYPE device_status AS ENUM
    ('online', 'offline', 'connecting', 'blocked', 'logged_out');
CREATE TYPE lead_target_status AS ENUM ('prospect', 'customer');

CREATE FUNCTION wacast_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TABLE users (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_devices (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_name        text NOT NULL DEFAULT '',
    phone              text,
    -- 'sim', 'cloudapi' or 'gowa'; free text on purpose: an unknown platform
    -- is reported on the row (status_reason) instead of refused at insert.
    platform           text NOT NULL DEFAULT 'sim',
    -- Written by wacast. A new device is 'offline' until a sender connects it.
    status             device_status NOT NULL DEFAULT 'offline',
    status_reason      text,
    health_score       smallint NOT NULL DEFAULT 100 CHECK (health_score BETWEEN 0 AND 100),
    min_delay_seconds  numeric(10, 3) NOT NULL DEFAULT 5 CHECK (min_delay_seconds >= 0),
    max_delay_seconds  numeric(10, 3) NOT NULL DEFAULT 15,
    daily_limit        integer CHECK (daily_limit IS NULL OR daily_limit >= 0),
    -- Transport settings that are not secret (base URL, sim latency, ...).
    settings           jsonb NOT NULL DEFAULT '{}',
    -- Transport secrets, sealed with libsodium (crypto_secretbox); never plain.
    credentials        bytea,
    last_seen          timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK (max_delay_seconds >= min_delay_seconds)
);
CREATE INDEX user_devices_user_idx ON user_devices (user_id);
CREATE TRIGGER user_devices_touch BEFORE UPDATE ON user_devices
    FOR EACH ROW EXECUTE FUNCTION wacast_touch_updated_at();

CREATE TABLE leads (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The device this lead talks to; messages go out from it while it is healthy.
    device_id      uuid REFERENCES user_devices (id) ON DELETE SET NULL,
    name           text NOT NULL DEFAULT '',
    phone          text NOT NULL,
    niche          text,
    target_status  lead_target_status NOT NULL DEFAULT 'prospect',
    "trigger"      text,
    -- Extra template variables: {{company}} reads attributes->>'company'.
    attributes     jsonb NOT NULL DEFAULT '{}',
    opted_out_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, phone)
);
CREATE INDEX leads_selection_idx ON leads (user_id, id) WHERE opted_out_at IS NULL;
CREATE TRIGGER leads_touch BEFORE UPDATE ON leads
    FOR EACH ROW EXECUTE FUNCTION wacast_touch_updated_at();

CREATE TABLE campaigns (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title              text NOT NULL DEFAULT '',
    message            text NOT NULL DEFAULT '',
    media_url          text,
    -- Wall-clock schedule in time_zone, or an explicit instant in scheduled_at.
    campaign_date      date,
    time_schedule      time,
    time_zone          text NOT NULL DEFAULT 'UTC',
    scheduled_at       timestamptz,
    -- The instant the campaign is due; derived by a trigger, never written by hand.
    due_at             timestamptz,
    target_status      text NOT NULL DEFAULT 'all',
    niche              text,
    -- Override the devices' pacing for this campaign when both are set.
    min_delay_seconds  numeric(10, 3),
    max_delay_seconds  numeric(10, 3),
    "limit"            integer,
    status             campaign_status NOT NULL DEFAULT 'pending',
    status_reason      text,
    total_count        integer NOT NULL DEFAULT 0,
    sent_count         integer NOT NULL DEFAULT 0,
    delivered_count    integer NOT NULL DEFAULT 0,
    read_count         integer NOT NULL DEFAULT 0,
    failed_count       integer NOT NULL DEFAULT 0,
    skipped_count      integer NOT NULL DEFAULT 0,
    cancelled_count    integer NOT NULL DEFAULT 0,
    -- Which scheduler is expanding it, and its last sign of life.
    claimed_by         text,
    claimed_at         timestamptz,
    triggered_at       timestamptz,
    finished_at        timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_due_idx ON campaigns (due_at) WHERE status = 'pending';
CREATE INDEX campaigns_active_idx ON campaigns (status) WHERE status IN ('triggered', 'processing');

-- True when PostgreSQL knows the zone name (IANA names like Asia/Kuala_Lumpur).
CREATE FUNCTION wacast_valid_time_zone(tz text) RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM now() AT TIME ZONE tz;
    RETURN true;
EXCEPTION WHEN others THEN
    RETURN false;
END $$;

-- due_at: scheduled_at when given, else campaign_date + time_schedule read in
-- the campaign's own zone (the old system applied a hard-coded offset and sent
-- 8 hours early). A zone PostgreSQL does not know makes the campaign due now,
-- so the scheduler fails it at once with the reason instead of it hanging.
CREATE FUNCTION wacast_campaign_before_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF NEW.scheduled_at IS NOT NULL THEN
        NEW.due_at := NEW.scheduled_at;
    ELSIF NEW.campaign_date IS NULL THEN
        NEW.due_at := COALESCE(NEW.created_at, now());
    ELSIF wacast_valid_time_zone(NEW.time_zone) THEN
        NEW.due_at := (NEW.campaign_date + COALESCE(NEW.time_schedule, time '00:00'))
                      AT TIME ZONE NEW.time_zone;
    ELSE
        NEW.due_at := now();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER campaigns_before_write BEFORE INSERT OR UPDATE ON campaigns
    FOR EACH ROW EXECUTE FUNCTION wacast_campaign_before_write();

CREATE TABLE broadcast_messages (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id          uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    user_id              uuid NOT NULL,
    lead_id              uuid,
    device_id            uuid,
    recipient_phone      text NOT NULL,
    recipient_name       text NOT NULL DEFAULT '',
    content              text NOT NULL DEFAULT '',
    media_url            text,
    status               message_status NOT NULL DEFAULT 'pending',
    error_code           text,
    error_message        text,
    attempts             integer NOT NULL DEFAULT 0,
    provider_message_id  text,
    scheduled_at         timestamptz,
    queued_at            timestamptz,
    sent_at              timestamptz,
    delivered_at         timestamptz,
    read_at              timestamptz,
    failed_at            timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- One message per lead and per phone number in a campaign, whatever re-runs.
    UNIQUE (campaign_id, lead_id),
    UNIQUE (campaign_id, recipient_phone)
);
CREATE INDEX broadcast_messages_open_idx ON broadcast_messages (campaign_id)
    WHERE status IN ('pending', 'queued');
CREATE INDEX broadcast_messages_stale_idx ON broadcast_messages (updated_at)
    WHERE status IN ('pending', 'queued');
CREATE UNIQUE INDEX broadcast_messages_provider_idx ON broadcast_messages (provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- The message state machine: a status never moves backwards. 'failed',
-- 'skipped', 'cancelled' and 'read' are final (an operator's retry of failed
-- messages is an explicit reset, not a status report).
CREATE FUNCTION wacast_message_can_move(old_status message_status, new_status message_status)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN old_status IN ('read', 'failed', 'skipped', 'cancelled') THEN false
        WHEN new_status = 'queued' THEN old_status = 'pending'
        WHEN new_status IN ('skipped', 'cancelled') THEN old_status IN ('pending', 'queued')
        WHEN new_status = 'failed' THEN old_status IN ('pending', 'queued', 'sent')
        WHEN new_status = 'sent' THEN old_status IN ('pending', 'queued')
        WHEN new_status = 'delivered' THEN old_status IN ('pending', 'queued', 'sent')
        WHEN new_status = 'read' THEN old_status IN ('pending', 'queued', 'sent', 'delivered')
        ELSE false
    END
$$;
