-- Benchmark data for bench/run.sh --sequence, loaded after seed.sql into the
-- same template database: every lead gets the tag BENCH, and a one-step
-- drip sequence on that tag (zero delays, the campaign's message) waits in
-- draft; the harness sets it active once the daemons are up, and that
-- instant starts the end-to-end clock (the scheduler then accepts it,
-- enrols every lead in one statement and sends the step to each).
\set ON_ERROR_STOP on
BEGIN;
UPDATE leads SET "trigger" = 'BENCH';
INSERT INTO sequences (user_id, name, "trigger", min_delay_seconds, max_delay_seconds)
SELECT id, 'bench', 'BENCH', 0, 0 FROM users WHERE name = 'bench'
RETURNING id AS sequence_id \gset
INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds, message)
VALUES (:'sequence_id', 1, 0, '{Hi|Hello|Hey} {{name}}, {{greeting}}! This is a wacast benchmark.');
COMMIT;
VACUUM ANALYZE leads;
\echo sequence :sequence_id
