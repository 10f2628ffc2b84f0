-- Prepared images, stored once (see lib/wc_image.c and scheduler/media.c).
--
-- A campaign's media_url (an http(s) link, a base64 data: URL, or
-- 'media:<sha256>' naming an upload) is fetched, checked, resized and
-- re-encoded as one JPEG when the campaign is triggered; the result lives
-- here once, keyed by the SHA-256 of its bytes, so the same picture in a
-- hundred campaigns is one row. Message rows never hold image bytes.
--
-- The bytes are in PostgreSQL (not a directory) because every daemon
-- already reaches PostgreSQL from any host or pod, backups take them along,
-- and a prepared image is at most WACAST_MEDIA_MAX_BYTES (350 KB by
-- default): one row per campaign's picture, not per message.
CREATE TABLE media (
    sha256         text PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    mime_type      text NOT NULL DEFAULT 'image/jpeg',
    bytes          bytea NOT NULL,
    size           integer NOT NULL CHECK (size = octet_length(bytes)),
    width          integer NOT NULL CHECK (width > 0),
    height         integer NOT NULL CHECK (height > 0),
    quality        integer,
    -- What it was made from: jpeg, png or webp, its size and dimensions.
    source_type    text NOT NULL,
    source_bytes   bigint NOT NULL,
    source_width   integer NOT NULL,
    source_height  integer NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- JPEG does not compress: store it out of line without trying.
ALTER TABLE media ALTER COLUMN bytes SET STORAGE EXTERNAL;

-- The campaign's prepared image, set by the scheduler before any message is
-- inserted (a resumed claim reuses it instead of preparing again).
ALTER TABLE campaigns ADD COLUMN media_sha256 text REFERENCES media (sha256);
