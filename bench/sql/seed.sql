-- Benchmark data, loaded once into a template database that both the wacast
-- run and the BullMQ baseline are cloned from (so both see the very same
-- user, devices, leads and campaign, uuids included).
--
--   psql -v leads=N -v devices=D -f seed.sql
--
-- One user; D simulated devices ('sim' platform) with zero pacing delays;
-- N leads spread round-robin over the devices, phones 012xxxxxxx (local
-- Malaysian form, normalised to +6012xxxxxxx with the default country 60);
-- one campaign for every lead, with zero delays, NOT yet due: the harness
-- makes it due (scheduled_at = now()) once the daemons are up, and that
-- instant is the start of the end-to-end clock.
\set ON_ERROR_STOP on
BEGIN;
INSERT INTO users (name) VALUES ('bench') RETURNING id AS user_id \gset
INSERT INTO user_devices (user_id, device_name, phone, platform, min_delay_seconds, max_delay_seconds)
SELECT :'user_id', 'bench-' || g, '+6030' || lpad(g::text, 7, '0'), 'sim', 0, 0
FROM generate_series(1, :devices) g;
INSERT INTO leads (user_id, device_id, name, phone, niche, target_status)
SELECT :'user_id', d.ids[1 + g % :devices], 'Lead ' || g, '012' || lpad(g::text, 7, '0'), 'bench',
       CASE WHEN g % 3 = 0 THEN 'customer' ELSE 'prospect' END::lead_target_status
FROM (SELECT array_agg(id ORDER BY id) AS ids FROM user_devices WHERE user_id = :'user_id') d,
     generate_series(1, :leads) g;
INSERT INTO campaigns (user_id, title, message, target_status, min_delay_seconds, max_delay_seconds,
                       scheduled_at)
VALUES (:'user_id', 'bench', '{Hi|Hello|Hey} {{name}}, {{greeting}}! This is a wacast benchmark.', 'all',
        0, 0, now() + interval '10 years')
RETURNING id AS campaign_id \gset
COMMIT;
ANALYZE;
\echo campaign :campaign_id
