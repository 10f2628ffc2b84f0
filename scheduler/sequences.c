/* wacast-scheduler: drip sequences. Three jobs, each with at most one
 * statement or image in flight:
 *
 *   activations  a sequence set to `active` by the dashboard is checked
 *                (wacast_seq_problem in SQL: zone, window, steps, delays;
 *                here: every step's template compiles with the user's lead
 *                attributes, then every step's image is prepared, one at a
 *                time, by media.c) and either accepted, which enrols the
 *                leads that already carry its tag (wacast_seq_accept), or
 *                sent back to `draft` with the reason in status_reason
 *                ("step N: <code>: <why>" for an image);
 *   images       a step added or whose media_url changed on a running
 *                sequence is prepared before its contacts are claimed
 *                (sequence_steps.media_sha256; a refusal is kept in
 *                media_error and fails the contacts reaching the step);
 *   due steps    contacts whose next_send_at has passed are claimed in
 *                bounded batches (per sequence, index on (sequence_id,
 *                next_send_at), FOR UPDATE SKIP LOCKED, only for sequences
 *                active or archived, inside their window with a margin,
 *                whose user has a healthy device, and with fewer than
 *                WACAST_CAMPAIGN_INFLIGHT steps in flight). A claim moves
 *                next_send_at to the claim's end, so a dead scheduler's
 *                contacts fall due again. Each claimed contact's next step is
 *                rendered here, and one statement inserts the messages as
 *                queued (UNIQUE (sequence_step_id, lead_id): a step reaches a
 *                contact at most once) and clears next_send_at while the
 *                step travels, only for contacts still claimed by us and
 *                still active; the rows it returns are published on the jobs
 *                stream, into a lane of the sequence on the lead's device.
 *
 * Step message rows say media:<sha256> for a prepared image (with
 * WACAST_MEDIA_REFERENCE), never its bytes (sql/009_step_media.sql).
 *
 * The rest happens in PostgreSQL (sql/007_sequences.sql): enrolment on tag
 * changes, stops, the next step's time when a step is sent, chaining,
 * counters. A step message published and lost by Redis is republished by
 * the reconciler like a campaign's. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "wc_log.h"
#include "wc_phone.h"
#include "wc_publish.h"
#include "wc_text.h"
#include "wc_tpl.h"

#include "scheduler.h"

/* Compiled step templates kept at most; the cache is emptied beyond. */
#define SEQ_TEMPLATES_MAX 4096

// clang-format off
static const char *CHECK_SQL =
    "SELECT s.id, wacast_seq_problem(s.id),"
    " (SELECT json_agg(json_build_array(st.step_number, st.message) ORDER BY st.step_number)"
    "  FROM sequence_steps st WHERE st.sequence_id = s.id)::text,"
    " (SELECT json_agg(DISTINCT k) FROM leads, jsonb_object_keys(attributes) AS k"
    "  WHERE leads.user_id = s.user_id AND attributes <> '{}'::jsonb)::text,"
    /* Steps whose image is to be prepared (again, after a refusal). */
    " (SELECT json_agg(json_build_array(st.step_number, st.id, st.media_url)"
    "  ORDER BY st.step_number) FROM sequence_steps st WHERE st.sequence_id = s.id"
    "  AND coalesce(st.media_url, '') <> '' AND st.media_sha256 IS NULL)::text"
    " FROM sequences s WHERE s.status = 'active' AND s.activated_at IS NULL"
    " ORDER BY s.updated_at LIMIT 16";

static const char *CLAIM_SQL =
    "WITH seqs AS ("
    " SELECT s.id, s.user_id, (SELECT count(*) FROM (SELECT 1 FROM broadcast_messages q"
    "  WHERE q.sequence_id = s.id AND q.status = 'queued' LIMIT $4::int) q) AS queued"
    " FROM sequences s WHERE s.status IN ('active', 'archived') AND s.activated_at IS NOT NULL"
    " AND wacast_in_window(s.send_window_start, s.send_window_end, s.time_zone)"
    " AND wacast_in_window(s.send_window_start, s.send_window_end, s.time_zone,"
    "  now() + make_interval(secs => $6::float8 / 1000))"
    " AND " HEALTHY_DEVICE_OF("s.user_id", "$5")
    " AND EXISTS (SELECT 1 FROM sequence_contacts sc WHERE sc.sequence_id = s.id"
    "  AND sc.status = 'active' AND sc.next_send_at <= now())),"
    /* What each of their users has queued, campaigns and sequences together:
     * one bound ($7, WACAST_USER_INFLIGHT) for all of a user's work, as the
     * feeder counts it (the jobs stream and the routers' bounds are shared
     * by every user). */
    " used AS (SELECT u.user_id, sum(u.n) AS n FROM (SELECT user_id, queued AS n FROM seqs"
    "  UNION ALL SELECT s.user_id, (SELECT count(*) FROM (SELECT 1 FROM broadcast_messages q"
    "  WHERE q.sequence_id = s.id AND q.status = 'queued' LIMIT $4::int) q) FROM sequences s"
    "  WHERE s.user_id IN (SELECT user_id FROM seqs) AND s.id NOT IN (SELECT id FROM seqs)"
    "  AND s.status IN ('active', 'archived') AND s.activated_at IS NOT NULL"
    "  UNION ALL SELECT c.user_id, (SELECT count(*) FROM (SELECT 1 FROM broadcast_messages q"
    "  WHERE q.campaign_id = c.id AND q.status = 'queued'"
    "  ORDER BY q.campaign_id, q.updated_at LIMIT $4::int) q) FROM campaigns c"
    "  WHERE c.user_id IN (SELECT user_id FROM seqs) AND c.status IN ('triggered', 'processing'))"
    "  u GROUP BY u.user_id),"
    /* The user's room, shared among its sequences with due contacts. */
    " uroom AS (SELECT seqs.user_id, ceil(greatest(0, $7::bigint - min(used.n))::numeric"
    "  / count(*))::bigint AS n FROM seqs JOIN used ON used.user_id = seqs.user_id"
    "  GROUP BY seqs.user_id),"
    " share AS (SELECT greatest(1, $3::int / greatest(1, count(*))) AS n FROM seqs),"
    " picked AS ("
    " SELECT p.* FROM seqs JOIN uroom ON uroom.user_id = seqs.user_id, share,"
    "  LATERAL (SELECT sc.id, sc.sequence_id, sc.current_step"
    "  FROM sequence_contacts sc WHERE sc.sequence_id = seqs.id AND sc.status = 'active'"
    "  AND sc.next_send_at <= now() ORDER BY sc.next_send_at"
    "  LIMIT greatest(0, least($4::int - seqs.queued, share.n, uroom.n))"
    "  FOR UPDATE SKIP LOCKED) p),"
    /* The step after the last one sent: a deleted step is skipped, a step
     * added since is taken. None left: the contact is complete. */
    " stepped AS (SELECT p.id, st.id AS step_id, st.ready FROM picked p LEFT JOIN LATERAL"
    "  (SELECT x.id, coalesce(x.media_url, '') = '' OR x.media_sha256 IS NOT NULL"
    "  OR x.media_error IS NOT NULL AS ready FROM sequence_steps x"
    "  WHERE x.sequence_id = p.sequence_id"
    "  AND x.step_number > p.current_step ORDER BY x.step_number LIMIT 1) st ON true),"
    " done AS (UPDATE sequence_contacts sc SET status = 'completed', completed_at = now(),"
    "  next_send_at = NULL, claimed_by = NULL, updated_at = now() FROM stepped"
    "  WHERE sc.id = stepped.id AND stepped.step_id IS NULL"
    "  AND sc.id = ANY (ARRAY(SELECT id FROM stepped WHERE step_id IS NULL)) RETURNING 1),"
    /* A step whose image is not prepared yet (added or changed on the
     * running sequence) waits for it: its contacts stay due, unclaimed. */
    " claimed AS (UPDATE sequence_contacts sc SET claimed_by = $1, updated_at = now(),"
    "  next_send_at = now() + make_interval(secs => $2::float8) FROM stepped"
    "  WHERE sc.id = stepped.id AND stepped.step_id IS NOT NULL AND stepped.ready"
    /* By primary key: a hash join would scan every contact of the table. */
    "  AND sc.id = ANY (ARRAY(SELECT id FROM stepped WHERE step_id IS NOT NULL AND ready))"
    "  RETURNING sc.id, sc.sequence_id, sc.lead_id, stepped.step_id)"
    " SELECT c.id, c.sequence_id, c.lead_id, st.id, st.step_number, st.message,"
    " coalesce(st.media_url, ''), s.user_id, l.name, l.phone, coalesce(l.niche, ''),"
    " l.target_status::text, l.attributes::text,"
    " CASE WHEN wacast_valid_time_zone(s.time_zone)"
    "  THEN extract(hour FROM now() AT TIME ZONE s.time_zone)::int ELSE 0 END,"
    " st.updated_at::text, (SELECT count(*) FROM done), st.media_sha256, st.media_error"
    " FROM claimed c JOIN sequence_steps st ON st.id = c.step_id"
    " JOIN sequences s ON s.id = c.sequence_id JOIN leads l ON l.id = c.lead_id"
    " ORDER BY c.sequence_id, c.id";

static const char *INSERT_SQL =
    "WITH input AS ("
    " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int[], $5::uuid[], $6::uuid[],"
    " $7::text[], $8::text[], $9::text[], $10::text[], $11::message_status[], $12::text[],"
    " $13::text[]) AS t(contact, seq, step, step_number, lead, user_id, phone, name, content,"
    " media, status, error_code, error_message)),"
    /* Still ours, still active, and its sequence not paused since the claim. */
    /* By primary key (= ANY of the ids): the planner's guess for claimed_by
     * is one row, and a join with the unnest would scan every contact. */
    " mine AS (SELECT sc.id FROM sequence_contacts sc JOIN sequences s ON s.id = sc.sequence_id"
    "  WHERE sc.id = ANY ($1::uuid[]) AND sc.claimed_by = $14 AND sc.status = 'active' AND s.status IN ('active', 'archived')"
    "  FOR UPDATE OF sc),"
    " ins AS ("
    " INSERT INTO broadcast_messages (sequence_id, sequence_step_id, step_number, user_id,"
    " lead_id, recipient_phone, recipient_name, content, media_url, status, error_code,"
    " error_message, scheduled_at, queued_at)"
    " SELECT i.seq, i.step, i.step_number, i.user_id, i.lead, i.phone, i.name, i.content,"
    " nullif(i.media, ''), i.status, i.error_code, i.error_message, now(),"
    " CASE WHEN i.status = 'queued' THEN now() END"
    " FROM input i JOIN mine ON mine.id = i.contact"
    " ON CONFLICT DO NOTHING RETURNING *),"
    /* Claimed, but its sequence was paused meanwhile: due again at once
     * (held by the pause), not at the end of the claim. */
    " released AS (UPDATE sequence_contacts sc SET next_send_at = now(), claimed_by = NULL"
    "  FROM sequences s WHERE sc.id = ANY ($1::uuid[]) AND sc.claimed_by = $14"
    "  AND sc.status = 'active' AND s.id = sc.sequence_id"
    "  AND s.status NOT IN ('active', 'archived')),"
    /* The step travels: the contact waits for its status (sql/007). */
    " held AS (UPDATE sequence_contacts sc SET next_send_at = NULL, claimed_by = NULL,"
    "  updated_at = now() FROM mine WHERE sc.id = mine.id RETURNING 1)"
    " SELECT " WC_SQL_JOB_COLUMNS ", (SELECT count(*) FROM held), m.status::text"
    " FROM ins m LEFT JOIN campaigns c ON c.id = m.campaign_id"
    " LEFT JOIN leads l ON l.id = m.lead_id"
    " UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
    " (SELECT count(*) FROM held), 'end'";
// clang-format on

static void on_pg_done(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("sequences: %s", err);
    }
}

/* ---- activations --------------------------------------------------------------------------- */

static void on_accepted(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("sequences: accepting an activation: %s", err);
        return;
    }
    if (PQntuples(res) == 0 || strtoll(PQgetvalue(res, 0, 1), NULL, 10) < 0)
        return; /* another scheduler accepted it, or it changed meanwhile */
    s->m.sequences_accepted++;
    wc_info("sequence %s active: enrolling the leads tagged %.64s", PQgetvalue(res, 0, 0),
            PQgetvalue(res, 0, 2));
}

static void on_enrol_timer(evutil_socket_t fd, short what, void *arg);

static void on_enrolled(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    s->seq_enrol_busy = false;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("sequences: enrolling tagged leads: %s", err);
        return;
    }
    bool more = false;
    for (int i = 0; i < PQntuples(res); i++) {
        long long n = strtoll(PQgetvalue(res, i, 1), NULL, 10);
        if (n < 0)
            continue;
        more = true;
        s->m.sequence_contacts_enrolled += (uint64_t)n;
    }
    /* Pages left: the next one at once. */
    if (more && !s->d.stopping)
        on_enrol_timer(-1, 0, s);
}

/* Accepted sequences still enrolling the leads tagged before activation. */
static void on_enrol_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->seq_enrol_busy || s->d.stopping)
        return;
    char page_size[32];
    snprintf(page_size, sizeof page_size, "%ld", s->cfg.batch);
    const char *params[] = {page_size};
    if (wc_pg_query(s->d.pg,
                    "SELECT id, wacast_seq_enrol_page(id, $1::int) FROM sequences"
                    " WHERE status = 'active' AND enrol_cursor IS NOT NULL LIMIT 4",
                    1, params, on_enrolled, s) == 0)
        s->seq_enrol_busy = true;
    else
        s->m.pg_errors++;
}

/* The first step whose template does not compile, as a reason; "" when all do. */
static void check_templates(const char *steps_json, const char *keys_json, char *reason,
                            size_t reasonlen)
{
    reason[0] = '\0';
    json_t *steps = json_loads(steps_json, 0, NULL), *keys = json_loads(keys_json, 0, NULL);
    size_t nkeys = json_is_array(keys) ? json_array_size(keys) : 0;
    const char **vars = calloc(nkeys + 4, sizeof *vars);
    if (!vars)
        abort();
    size_t nv = 0;
    vars[nv++] = "name";
    vars[nv++] = "phone";
    vars[nv++] = "niche";
    vars[nv++] = "target_status";
    for (size_t i = 0; i < nkeys; i++)
        if (json_is_string(json_array_get(keys, i)))
            vars[nv++] = json_string_value(json_array_get(keys, i));
    for (size_t i = 0; json_is_array(steps) && i < json_array_size(steps); i++) {
        json_t *st = json_array_get(steps, i);
        const char *text = json_string_value(json_array_get(st, 1));
        char err[256];
        wc_tpl *t = wc_tpl_compile(text ? text : "", vars, nv, err, sizeof err);
        if (!t) {
            char quoted[300];
            wc_text_clean(quoted, sizeof quoted, err, (size_t)-1, NULL);
            snprintf(reason, reasonlen, "step %lld: template error: %s",
                     (long long)json_integer_value(json_array_get(st, 0)), quoted);
            break;
        }
        wc_tpl_free(t);
    }
    free(vars);
    json_decref(steps);
    json_decref(keys);
}

static void refuse_activation(scheduler *s, const char *id, const char *reason)
{
    s->m.sequences_refused++;
    wc_warn("sequence %s: activation refused: %s", id, reason);
    const char *params[] = {id, reason};
    if (wc_pg_query(s->d.pg,
                    "UPDATE sequences SET status = 'draft', status_reason = $2"
                    " WHERE id = $1 AND status = 'active' AND activated_at IS NULL",
                    2, params, on_pg_done, s) < 0)
        s->m.pg_errors++;
}

static void accept_activation(scheduler *s, const char *id)
{
    const char *params[] = {id};
    if (wc_pg_query(s->d.pg,
                    "SELECT $1::text, wacast_seq_accept($1::uuid), \"trigger\" FROM "
                    "sequences WHERE id = $1::uuid",
                    1, params, on_accepted, s) < 0)
        s->m.pg_errors++;
}

/* Activations whose steps' images are being prepared, one step at a time:
 * s->seq_act is an array of [sequence id, [[step_number, step id, url], ...]],
 * s->seq_act_i the sequence in hand, s->seq_act_j its step. The round of
 * checks ends (seq_check_busy) when the last one is accepted or refused. */
static void act_next(scheduler *s);

static void act_skip(scheduler *s)
{
    s->seq_act_i++;
    s->seq_act_j = 0;
    act_next(s);
}

static json_t *act_step(scheduler *s)
{
    json_t *seq = json_array_get(s->seq_act, s->seq_act_i);
    return json_array_get(json_array_get(seq, 1), s->seq_act_j);
}

static const char *act_id(scheduler *s)
{
    return json_string_value(json_array_get(json_array_get(s->seq_act, s->seq_act_i), 0));
}

static void act_end(scheduler *s)
{
    json_decref(s->seq_act);
    s->seq_act = NULL;
    s->seq_check_busy = false;
}

static void on_act_linked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!s->seq_act)
        return; /* sequences_free ran */
    if (s->d.stopping) {
        act_end(s);
        return;
    }
    if (!res) {
        s->m.pg_errors++;
        wc_warn("sequence %s: linking a step's image: %s", act_id(s), err);
        act_skip(s); /* still unchecked: the next round tries again */
        return;
    }
    s->seq_act_j++;
    act_next(s);
}

static void on_act_image(scheduler *s, void *arg, const char *sha256, const char *code,
                         const char *why)
{
    (void)arg;
    if (!s->seq_act)
        return;
    json_t *st = act_step(s);
    if (code) {
        char raw[512], reason[512];
        snprintf(raw, sizeof raw, "step %lld: %s: %s",
                 (long long)json_integer_value(json_array_get(st, 0)), code, why);
        wc_text_clean(reason, sizeof reason, raw, (size_t)-1, NULL);
        refuse_activation(s, act_id(s), reason);
        act_skip(s);
        return;
    }
    if (!sha256) {
        wc_warn("sequence %s: preparing a step's image: %s (tried again)", act_id(s), why);
        act_skip(s);
        return;
    }
    const char *params[] = {sha256, json_string_value(json_array_get(st, 1)),
                            json_string_value(json_array_get(st, 2))};
    if (wc_pg_query(s->d.pg,
                    "UPDATE sequence_steps SET media_sha256 = $1, media_error = NULL"
                    " WHERE id = $2 AND media_url = $3",
                    3, params, on_act_linked, s) < 0) {
        s->m.pg_errors++;
        act_skip(s);
    }
}

static void act_next(scheduler *s)
{
    while (!s->d.stopping && s->seq_act_i < json_array_size(s->seq_act)) {
        json_t *st = act_step(s);
        if (st) {
            const char *url = json_string_value(json_array_get(st, 2));
            media_prepare_url(s, url ? url : "", on_act_image, NULL);
            return;
        }
        accept_activation(s, act_id(s));
        s->seq_act_i++;
        s->seq_act_j = 0;
    }
    act_end(s);
}

static void on_checked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->seq_check_busy = false;
        s->m.pg_errors++;
        wc_warn("sequences: checking activations: %s", err);
        return;
    }
    json_t *todo = json_array();
    if (!todo)
        abort();
    for (int i = 0; i < PQntuples(res); i++) {
        const char *id = PQgetvalue(res, i, 0);
        char reason[512];
        if (!PQgetisnull(res, i, 1))
            wc_text_clean(reason, sizeof reason, PQgetvalue(res, i, 1), (size_t)-1, NULL);
        else
            check_templates(PQgetvalue(res, i, 2), PQgetvalue(res, i, 3), reason, sizeof reason);
        if (reason[0]) {
            refuse_activation(s, id, reason);
            continue;
        }
        json_t *images = PQgetisnull(res, i, 4) ? NULL : json_loads(PQgetvalue(res, i, 4), 0, NULL);
        if (!json_is_array(images) || json_array_size(images) == 0) {
            json_decref(images);
            accept_activation(s, id);
            continue;
        }
        /* Accepted once every step's image is prepared. */
        if (json_array_append_new(todo, json_pack("[so]", id, images)) < 0)
            abort();
    }
    s->seq_act = todo;
    s->seq_act_i = 0;
    s->seq_act_j = 0;
    act_next(s);
}

/* ---- images of running sequences ----------------------------------------------------------- */

/* A step added, or whose media_url changed, on a running sequence: its
 * image is prepared before its contacts are claimed (CLAIM_SQL waits for
 * it); a refused one is recorded on the step, and the contacts reaching it
 * fail with it. One step at a time, then the next at once. */
static const char *MEDIA_TODO_SQL =
    "SELECT st.id, st.media_url, st.step_number FROM sequence_steps st"
    " JOIN sequences s ON s.id = st.sequence_id"
    " WHERE s.status IN ('active', 'archived') AND s.activated_at IS NOT NULL"
    " AND st.media_sha256 IS NULL AND st.media_error IS NULL"
    " AND coalesce(st.media_url, '') <> '' LIMIT 1";

static void media_todo(scheduler *s);

static void on_step_media_linked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    s->seq_media_busy = false;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("sequences: linking a step's image: %s", err);
        return;
    }
    media_todo(s);
}

static void on_step_image(scheduler *s, void *arg, const char *sha256, const char *code,
                          const char *why)
{
    (void)arg;
    char *url = s->seq_media_url; /* the step's, in s->seq_media_step */
    s->seq_media_url = NULL;
    if (!sha256 && !code) {
        wc_warn("sequences: step %s: preparing its image: %s (tried again)", s->seq_media_step,
                why);
        s->seq_media_busy = false;
        free(url);
        return;
    }
    char raw[512], reason[512];
    if (code) {
        snprintf(raw, sizeof raw, "%s: %s", code, why);
        wc_text_clean(reason, sizeof reason, raw, (size_t)-1, NULL);
        wc_warn("sequences: step %s: image refused: %s", s->seq_media_step, reason);
    }
    const char *params[] = {s->seq_media_step, url, sha256 ? sha256 : reason};
    int rc = wc_pg_query(
        s->d.pg,
        sha256 ? "UPDATE sequence_steps SET media_sha256 = $3, media_error = NULL"
                 " WHERE id = $1 AND media_url = $2"
               : "UPDATE sequence_steps SET media_error = $3 WHERE id = $1 AND media_url = $2",
        3, params, on_step_media_linked, s);
    free(url);
    if (rc < 0) {
        s->m.pg_errors++;
        s->seq_media_busy = false;
    }
}

static void on_media_todo(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->seq_media_busy = false;
        s->m.pg_errors++;
        wc_warn("sequences: looking for steps' images to prepare: %s", err);
        return;
    }
    if (PQntuples(res) == 0 || s->d.stopping) {
        s->seq_media_busy = false;
        return;
    }
    snprintf(s->seq_media_step, sizeof s->seq_media_step, "%s", PQgetvalue(res, 0, 0));
    wc_info("sequences: step %s (step %s): preparing its image", s->seq_media_step,
            PQgetvalue(res, 0, 2));
    free(s->seq_media_url);
    s->seq_media_url = dup_text(PQgetvalue(res, 0, 1));
    media_prepare_url(s, s->seq_media_url, on_step_image, NULL);
}

static void media_todo(scheduler *s)
{
    if (s->seq_media_busy || s->d.stopping)
        return;
    if (wc_pg_query(s->d.pg, MEDIA_TODO_SQL, 0, NULL, on_media_todo, s) == 0)
        s->seq_media_busy = true;
    else
        s->m.pg_errors++;
}

static void on_folded(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    s->seq_fold_busy = false;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("sequences: folding counters: %s", err);
        return;
    }
    s->m.sequence_counter_deltas_folded += strtoull(PQgetvalue(res, 0, 0), NULL, 10);
}

static void on_check_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->d.stopping)
        return;
    /* The counters' pending deltas (sql/007_sequences.sql). */
    if (!s->seq_fold_busy) {
        if (wc_pg_query(s->d.pg, "SELECT wacast_seq_fold_counters()", 0, NULL, on_folded, s) == 0)
            s->seq_fold_busy = true;
        else
            s->m.pg_errors++;
    }
    on_enrol_timer(-1, 0, s);
    if (s->seq_check_busy)
        return;
    if (wc_pg_query(s->d.pg, CHECK_SQL, 0, NULL, on_checked, s) == 0)
        s->seq_check_busy = true;
    else
        s->m.pg_errors++;
}

/* ---- due steps ----------------------------------------------------------------------------- */

static void on_due_timer(evutil_socket_t fd, short what, void *arg);

static void due_round_end(scheduler *s)
{
    s->seq_due_busy = false;
    if (s->seq_due_more && !s->d.stopping) {
        s->seq_due_more = false;
        on_due_timer(-1, 0, s);
    }
}

static void on_steps_published(int published, int n, const char *ids, void *arg)
{
    (void)ids;
    scheduler *s = arg;
    s->m.sequence_steps_published += (uint64_t)published;
    s->m.messages_published += (uint64_t)published;
    if (published < n)
        wc_warn("sequences: %d of %d step message(s) not published; the reconciler retries them",
                n - published, n);
    due_round_end(s);
}

static void on_steps_inserted(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        /* The claims go stale and the contacts fall due again. */
        s->m.pg_errors++;
        wc_warn("sequences: writing step messages: %s", err);
        s->seq_due_more = false;
        due_round_end(s);
        return;
    }
    int n = PQntuples(res), queued = 0;
    long held = n > 0 ? strtol(PQgetvalue(res, n - 1, 12), NULL, 10) : 0;
    if (held < s->seq_round_n)
        s->m.sequence_claims_lost += (uint64_t)(s->seq_round_n - held);
    for (int i = 0; i < n - 1; i++) {
        s->m.messages_created++;
        if (!strcmp(PQgetvalue(res, i, 13), "queued"))
            queued++;
        else
            s->m.sequence_steps_skipped++;
    }
    if (queued == 0) {
        due_round_end(s);
        return;
    }
    /* Skipped rows have nothing to publish: keep only the queued ones. */
    bool *include = calloc((size_t)n, sizeof *include);
    if (!include)
        abort();
    for (int i = 0; i < n - 1; i++)
        include[i] = !strcmp(PQgetvalue(res, i, 13), "queued");
    int rc = wc_publish_rows(s->d.redis, res, include, 0, on_steps_published, s);
    free(include);
    if (rc < 0) {
        /* Written as queued, not published: the reconciler publishes them. */
        s->m.redis_errors++;
        due_round_end(s);
    }
}

/* The compiled template of a step as it is now (its id and updated_at): an
 * edited message applies to every step published after the edit. NULL with
 * err when it does not compile. */
static const wc_tpl *step_template(scheduler *s, const char *step_id, const char *updated,
                                   const char *text, char *err, size_t errlen)
{
    char key[128];
    snprintf(key, sizeof key, "%s@%s", step_id, updated);
    wc_tpl *t = wc_map_get(&s->seq_tpls, key);
    if (t)
        return t;
    t = wc_tpl_compile(text, NULL, 0, err, errlen);
    if (!t)
        return NULL;
    if (s->seq_tpls.len >= SEQ_TEMPLATES_MAX) {
        for (size_t i = 0; i < s->seq_tpls.cap; i++)
            if (wc_map_live(&s->seq_tpls, i))
                wc_tpl_free(s->seq_tpls.slots[i].value);
        wc_map_free(&s->seq_tpls);
        wc_map_init(&s->seq_tpls);
    }
    if (wc_map_put(&s->seq_tpls, key, t) < 0)
        abort();
    return t;
}

/* Columns of CLAIM_SQL. */
enum {
    C_CONTACT,
    C_SEQ,
    C_LEAD,
    C_STEP,
    C_STEPNO,
    C_TEXT,
    C_MEDIA,
    C_USER,
    C_NAME,
    C_PHONE,
    C_NICHE,
    C_TARGET,
    C_ATTRS,
    C_HOUR,
    C_UPDATED,
    C_DONE,
    C_MEDIA_SHA,
    C_MEDIA_ERR,
    C_COLUMNS
};

/* Renders one claimed contact's step into the 13 array literals of INSERT_SQL. */
static void render_step(scheduler *s, PGresult *res, int r, struct evbuffer **b)
{
    const char *lead = PQgetvalue(res, r, C_LEAD), *raw_phone = PQgetvalue(res, r, C_PHONE);
    char phone[WC_PHONE_E164_MAX], code[64] = "", message[512] = "";
    char recipient_buf[INVALID_PHONE_MAX + 64], name_buf[RECIPIENT_NAME_MAX];
    const char *why = NULL, *status = "queued", *content = "", *recipient = phone;
    const char *media = PQgetvalue(res, r, C_MEDIA);
    char media_ref[80];
    if (media[0] && !PQgetisnull(res, r, C_MEDIA_SHA) && s->cfg.media.reference) {
        snprintf(media_ref, sizeof media_ref, "media:%s", PQgetvalue(res, r, C_MEDIA_SHA));
        media = media_ref;
    }
    if (wc_phone_normalize(raw_phone, s->cfg.default_country, phone, sizeof phone, &why) < 0) {
        status = "skipped";
        snprintf(code, sizeof code, "invalid_phone");
        char quoted[INVALID_PHONE_MAX + 1];
        wc_text_clean(quoted, sizeof quoted, raw_phone, (size_t)-1, NULL);
        snprintf(message, sizeof message, "invalid phone number '%s': %s", quoted,
                 phone_reason_text(why));
        wc_text_fix(message);
        recipient = stored_invalid_phone(recipient_buf, sizeof recipient_buf, raw_phone, lead);
    } else {
        char terr[256];
        const wc_tpl *t =
            step_template(s, PQgetvalue(res, r, C_STEP), PQgetvalue(res, r, C_UPDATED),
                          PQgetvalue(res, r, C_TEXT), terr, sizeof terr);
        lead_vars v = {.name = PQgetvalue(res, r, C_NAME),
                       .phone = phone,
                       .niche = PQgetvalue(res, r, C_NICHE),
                       .target_status = PQgetvalue(res, r, C_TARGET)};
        const char *attrs = PQgetvalue(res, r, C_ATTRS);
        if (strcmp(attrs, "{}") != 0)
            v.attrs = json_loads(attrs, 0, NULL);
        int hour = (int)strtol(PQgetvalue(res, r, C_HOUR), NULL, 10);
        if (media[0] && PQgetisnull(res, r, C_MEDIA_SHA)) {
            /* Its image was refused (the claim takes no step still to prepare). */
            status = "skipped";
            snprintf(code, sizeof code, "media_failed");
            char quoted[400];
            wc_text_clean(quoted, sizeof quoted, PQgetvalue(res, r, C_MEDIA_ERR), (size_t)-1, NULL);
            snprintf(message, sizeof message, "image error: %s", quoted);
            wc_text_fix(message);
        } else if (!t) {
            status = "skipped";
            snprintf(code, sizeof code, "render_failed");
            snprintf(message, sizeof message, "template error: %s", terr);
            wc_text_fix(message);
        } else if (wc_tpl_render(t, lead_lookup, &v, &s->rng, hour,
                                 (size_t)s->cfg.max_message_bytes, &s->seq_out, terr,
                                 sizeof terr) < 0) {
            status = "skipped";
            snprintf(code, sizeof code, "render_failed");
            wc_text_clean(message, sizeof message, terr, (size_t)-1, NULL);
        } else if (strspn(s->seq_out.data, " \t\r\n") == s->seq_out.len) {
            status = "skipped";
            snprintf(code, sizeof code, "empty_message");
            snprintf(message, sizeof message, "the template rendered to an empty message");
        } else {
            if (!wc_text_valid(s->seq_out.data, s->seq_out.len))
                s->seq_out.len = wc_text_fix(s->seq_out.data);
            content = s->seq_out.data;
        }
        json_decref(v.attrs);
    }
    bool first = evbuffer_get_length(b[0]) == 1;
    const char *values[] = {PQgetvalue(res, r, C_CONTACT),
                            PQgetvalue(res, r, C_SEQ),
                            PQgetvalue(res, r, C_STEP),
                            PQgetvalue(res, r, C_STEPNO),
                            lead,
                            PQgetvalue(res, r, C_USER),
                            recipient,
                            stored_name(name_buf, sizeof name_buf, PQgetvalue(res, r, C_NAME)),
                            content,
                            media,
                            status,
                            code[0] ? code : NULL,
                            message[0] ? message : NULL};
    for (size_t i = 0; i < 13; i++)
        append_array_text(b[i], values[i], first);
}

static void on_due_claimed(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("sequences: claiming due steps: %s", err);
        s->seq_due_busy = false;
        return;
    }
    int n = PQntuples(res);
    s->seq_due_more = n >= s->cfg.seq_batch;
    if (n == 0) {
        s->seq_due_busy = false;
        return;
    }
    s->m.sequence_steps_claimed += (uint64_t)n;
    s->seq_round_n = n;
    struct evbuffer *b[13];
    for (size_t i = 0; i < 13; i++) {
        b[i] = evbuffer_new();
        if (!b[i])
            abort();
        evbuffer_add(b[i], "{", 1);
    }
    for (int r = 0; r < n; r++)
        render_step(s, res, r, b);
    const char *params[14];
    for (size_t i = 0; i < 13; i++) {
        evbuffer_add(b[i], "}\0", 2);
        params[i] = (const char *)evbuffer_pullup(b[i], -1);
    }
    params[13] = s->cfg.c.instance_id;
    if (wc_pg_query(s->d.pg, INSERT_SQL, 14, params, on_steps_inserted, s) < 0) {
        s->m.pg_errors++;
        s->seq_due_busy = false;
    }
    for (size_t i = 0; i < 13; i++)
        evbuffer_free(b[i]);
}

static void on_due_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->d.stopping)
        return;
    media_todo(s);
    if (s->seq_due_busy || !wc_redis_ready(s->d.redis))
        return;
    char claim_s[32], batch[32], inflight[32], grace[32], margin[32], user_inflight[32];
    snprintf(claim_s, sizeof claim_s, "%ld", s->cfg.seq_claim_s);
    snprintf(batch, sizeof batch, "%ld", s->cfg.seq_batch);
    snprintf(inflight, sizeof inflight, "%ld", s->cfg.inflight);
    snprintf(grace, sizeof grace, "%ld", s->cfg.online_grace_ms);
    snprintf(margin, sizeof margin, "%ld", s->cfg.seq_window_margin_ms);
    snprintf(user_inflight, sizeof user_inflight, "%ld", s->cfg.user_inflight);
    const char *params[] = {s->cfg.c.instance_id, claim_s, batch, inflight, grace, margin,
                            user_inflight};
    if (wc_pg_query(s->d.pg, CLAIM_SQL, 7, params, on_due_claimed, s) == 0)
        s->seq_due_busy = true;
    else
        s->m.pg_errors++;
}

void sequences_start(scheduler *s)
{
    wc_map_init(&s->seq_tpls);
    s->seq_timer = wc_daemon_every(&s->d, (int)s->cfg.seq_ms, on_due_timer, s);
    s->seq_check_timer = wc_daemon_every(&s->d, (int)s->cfg.seq_ms, on_check_timer, s);
}

void sequences_free(scheduler *s)
{
    event_free(s->seq_timer);
    event_free(s->seq_check_timer);
    for (size_t i = 0; i < s->seq_tpls.cap; i++)
        if (wc_map_live(&s->seq_tpls, i))
            wc_tpl_free(s->seq_tpls.slots[i].value);
    wc_map_free(&s->seq_tpls);
    wc_buf_free(&s->seq_out);
    json_decref(s->seq_act);
    s->seq_act = NULL;
    free(s->seq_media_url);
    s->seq_media_url = NULL;
}
