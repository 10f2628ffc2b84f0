-- The device fleet: sending limits, health and rests.

-- The device's own day (IANA time zone): its daily limit and warm-up count
-- the sends of one local calendar day. An unknown zone is refused at write.
ALTER TABLE user_devices ADD COLUMN time_zone text NOT NULL DEFAULT 'UTC';
CREATE FUNCTION wacast_check_device_time_zone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM now() AT TIME ZONE NEW.time_zone;
    RETURN NEW;
EXCEPTION WHEN invalid_parameter_value THEN
    RAISE EXCEPTION 'user_devices.time_zone: unknown time zone "%"', NEW.time_zone
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER user_devices_time_zone BEFORE INSERT OR UPDATE OF time_zone ON user_devices
    FOR EACH ROW EXECUTE FUNCTION wacast_check_device_time_zone();
-- Warm-up of a new number: the cap of day 1, day 2, ... (local days from
-- warmup_started_on, or from the day the row was created). After the last
-- day, daily_limit alone applies; while both apply, the smaller one.
ALTER TABLE user_devices ADD COLUMN warmup_schedule integer[]
    CHECK (warmup_schedule IS NULL OR 0 <= ALL (warmup_schedule));
ALTER TABLE user_devices ADD COLUMN warmup_started_on date;
-- Shortest time between two messages from this device to the same number.
ALTER TABLE user_devices ADD COLUMN recipient_gap_seconds numeric(12, 3) NOT NULL DEFAULT 0
    CHECK (recipient_gap_seconds >= 0);
-- Written by wacast. Until resting_until the device sends nothing and the
-- router gives it no message (daily limit reached: the next local midnight;
-- circuit breaker open: the end of its rest); status_reason says why.
ALTER TABLE user_devices ADD COLUMN resting_until timestamptz;
-- Written by wacast: sends counted against today's cap, and that cap.
ALTER TABLE user_devices ADD COLUMN sent_today integer NOT NULL DEFAULT 0;
ALTER TABLE user_devices ADD COLUMN cap_today integer;

-- A campaign's sending window, wall clock in its time_zone: messages go out
-- only between send_window_start and send_window_end (the window may wrap
-- midnight, e.g. 20:00-06:00). Both NULL: any time.
ALTER TABLE campaigns ADD COLUMN send_window_start time;
ALTER TABLE campaigns ADD COLUMN send_window_end time;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_send_window_check CHECK (
    (send_window_start IS NULL) = (send_window_end IS NULL)
    AND (send_window_start IS NULL OR send_window_start <> send_window_end));

-- True when the wall clock in tz is inside [ws, we) (NULL window: always; a
-- campaign with an unknown zone has failed already, never raise for it).
CREATE FUNCTION wacast_in_window(ws time, we time, tz text, at timestamptz DEFAULT now())
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN ws IS NULL OR we IS NULL OR NOT wacast_valid_time_zone(tz) THEN true
        WHEN ws < we THEN (at AT TIME ZONE tz)::time >= ws AND (at AT TIME ZONE tz)::time < we
        ELSE (at AT TIME ZONE tz)::time >= ws OR (at AT TIME ZONE tz)::time < we
    END
$$;

-- The next instant the window opens (now when it is open).
CREATE FUNCTION wacast_window_opens(ws time, we time, tz text, at timestamptz DEFAULT now())
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN wacast_in_window(ws, we, tz, at) OR NOT wacast_valid_time_zone(tz) THEN at
        WHEN (at AT TIME ZONE tz)::time < ws
            THEN ((at AT TIME ZONE tz)::date + ws) AT TIME ZONE tz
        ELSE ((at AT TIME ZONE tz)::date + 1 + ws) AT TIME ZONE tz
    END
$$;

-- The router's candidates: online, recently seen by a sender, not resting.
CREATE INDEX user_devices_online_idx ON user_devices (user_id) WHERE status = 'online';

-- The feeder: a campaign's messages waiting in PostgreSQL (in order) and
-- those published and not yet done (counted against its in-flight bound).
CREATE INDEX broadcast_messages_pending_idx ON broadcast_messages (campaign_id, id)
    WHERE status = 'pending';
CREATE INDEX broadcast_messages_queued_idx ON broadcast_messages (campaign_id)
    WHERE status = 'queued';
