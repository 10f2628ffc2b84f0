-- A drip sequence step's image, prepared once like a campaign's (see
-- scheduler/media.c and scheduler/sequences.c).
--
-- The scheduler prepares a step's media_url when its sequence is activated
-- (a step whose image cannot be prepared sends the sequence back to draft
-- with the reason) and, on a running sequence, before the next message of a
-- step added or changed since; the step then points at the stored JPEG and
-- its message rows say 'media:<sha256>'. media_error is why a running
-- step's image was refused ("<code>: <why>"): the contacts reaching that
-- step fail with it, until its media_url changes.
ALTER TABLE sequence_steps ADD COLUMN media_sha256 text REFERENCES media (sha256);
ALTER TABLE sequence_steps ADD COLUMN media_error text;

-- A changed media_url is prepared again.
CREATE FUNCTION wacast_step_media_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.media_url IS DISTINCT FROM OLD.media_url THEN
        NEW.media_sha256 := NULL;
        NEW.media_error := NULL;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER sequence_steps_media_changed BEFORE UPDATE OF media_url ON sequence_steps
    FOR EACH ROW EXECUTE FUNCTION wacast_step_media_changed();

-- Steps of running sequences whose image is still to be prepared.
CREATE INDEX sequence_steps_media_todo_idx ON sequence_steps (sequence_id)
    WHERE media_sha256 IS NULL AND media_error IS NULL AND coalesce(media_url, '') <> '';
