-- Knowing that Redis lost acknowledged writes (see lib/wc_epoch.c).
--
-- Redis keeps a fence (wacast:fence: epoch, seq, ms); senders bump seq in
-- Redis and, once Redis acknowledged it, raise this row's seq to it. A Redis
-- that comes back with a seq below this row's (or with no fence at all) lost
-- acknowledged writes: the check starts a new epoch and records when and from
-- which point of Redis's clock, so every daemon can recover from PostgreSQL.
CREATE TABLE redis_fence (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    epoch bigint NOT NULL,
    seq bigint NOT NULL,
    loss_redis_ms bigint,   -- Redis clock (ms) of the last fence that survived the loss
    loss_at timestamptz,    -- when the last loss was found
    losses bigint NOT NULL DEFAULT 0
);

-- The check run on every Redis (re)connect, with what PostgreSQL held
-- (p_epoch, p_seq: read BEFORE Redis was read; NULLs: no row) and what Redis
-- then held (NULLs: no fence). Every seq PostgreSQL holds was acknowledged by
-- Redis before it was written here, so a Redis read after PostgreSQL said
-- p_seq must hold at least p_seq in the same epoch, unless it lost writes;
-- comparing with the row as it is now would race with the senders' bumps.
-- Serialised on the row. Returns the epoch Redis must carry, whether Redis
-- must be reset to it (seq 0), whether this call found a loss, and the last
-- loss on record (ms since the epoch; 0 none).
CREATE FUNCTION wacast_redis_fence_check(r_epoch bigint, r_seq bigint, r_ms bigint,
    p_epoch bigint, p_seq bigint,
    OUT epoch bigint, OUT reset boolean, OUT lost boolean, OUT loss_redis_ms bigint,
    OUT loss_at_ms bigint) LANGUAGE plpgsql AS $$
DECLARE
    f redis_fence%ROWTYPE;
    gone boolean := false;
BEGIN
    reset := false;
    lost := false;
    SELECT * INTO f FROM redis_fence FOR UPDATE;
    IF NOT FOUND THEN
        -- The first Redis this database has seen (or PostgreSQL forgot it):
        -- what Redis holds is the truth.
        INSERT INTO redis_fence (epoch, seq) VALUES (coalesce(r_epoch, 1), coalesce(r_seq, 0))
            ON CONFLICT (id) DO NOTHING;
        SELECT * INTO f FROM redis_fence FOR UPDATE;
        reset := r_epoch IS NULL OR r_epoch <> f.epoch;
    ELSIF r_epoch IS NULL THEN
        IF p_epoch IS DISTINCT FROM f.epoch THEN
            -- The epoch moved while we looked: its finder resets Redis.
            reset := true;
        ELSIF coalesce(p_seq, 0) = 0 AND f.losses = 0 THEN
            -- No bump was ever acknowledged: nothing to lose yet (daemons
            -- starting together on a new Redis all see it without a fence).
            reset := true;
        ELSE
            gone := true;
        END IF;
    ELSIF r_epoch = f.epoch THEN
        gone := p_epoch = f.epoch AND r_seq < p_seq;
    ELSIF r_epoch < f.epoch THEN
        -- A loss is on record and Redis does not carry its epoch yet: another
        -- daemon found it a moment ago, or Redis lost that too. Either way
        -- the recovery starts from the earlier point and from now.
        UPDATE redis_fence SET loss_redis_ms = least(coalesce(f.loss_redis_ms, r_ms), r_ms),
            loss_at = now() RETURNING * INTO f;
        reset := true;
        lost := true;
    ELSE
        -- PostgreSQL is behind Redis (restored from a backup): follow Redis.
        UPDATE redis_fence SET epoch = r_epoch, seq = r_seq RETURNING * INTO f;
    END IF;
    IF gone THEN
        -- Acknowledged writes are gone: a new epoch from the last point Redis kept.
        UPDATE redis_fence SET epoch = f.epoch + 1, seq = 0,
            loss_redis_ms = coalesce(r_ms, 0), loss_at = now(), losses = f.losses + 1
            RETURNING * INTO f;
        reset := true;
        lost := true;
    END IF;
    epoch := f.epoch;
    loss_redis_ms := coalesce(f.loss_redis_ms, 0);
    loss_at_ms := coalesce((extract(epoch FROM f.loss_at) * 1000)::bigint, 0);
END $$;
