/* wacast-scheduler: the feeder. It publishes running campaigns' pending
 * messages as room opens (a bounded number queued per campaign, only while
 * the user has a healthy device and the campaign is inside its window), and
 * writes the "waiting" reasons of campaigns that cannot go on. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "scheduler.h"
#include "scheduler_lua.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_publish.h"
#include "wc_sql.h"

/* ---- feeder --------------------------------------------------------------------------------
 *
 * Expansion leaves a campaign's messages 'pending' in PostgreSQL; the feeder
 * publishes them as room opens: each running campaign has at most
 * WACAST_CAMPAIGN_INFLIGHT messages queued (published, not yet done). So
 * Redis holds a bounded amount per campaign, a large campaign never stands in
 * front of another user's, and a campaign whose user has no healthy device,
 * or that is outside its sending window, or paused, keeps its messages in
 * PostgreSQL. Rows are marked queued and returned by one statement (FOR
 * UPDATE SKIP LOCKED: schedulers never publish the same row twice); a row
 * marked but not published is republished by the reconciler. */

#define HEALTHY_DEVICE(grace_param) HEALTHY_DEVICE_OF("c.user_id", grace_param)

// clang-format off
static const char *FEED_SQL =
    /* Each campaign's scan starts after the last row this scheduler fed: the
     * pending index keeps entries of rows fed long ago until a vacuum, and
     * walking over them every round would cost more with every round. */
    "WITH cur AS (SELECT * FROM unnest($4::uuid[], $5::bigint[]) AS t(id, after)),"
    /* Every running campaign's queued count, up to the campaign bound. The
     * count walks the index in order (a plain index scan marks the entries
     * of rows that left 'queued' dead as it meets them, so the next round
     * skips them; a bitmap scan, the planner's choice for a bare count,
     * visited every one of them again each round until a vacuum). */
    " run AS (SELECT c.id, c.user_id, (SELECT count(*) FROM (SELECT 1 FROM broadcast_messages q"
    "  WHERE q.campaign_id = c.id AND q.status = 'queued'"
    "  ORDER BY q.campaign_id, q.updated_at LIMIT $1::int) q) AS queued"
    " FROM campaigns c WHERE c.status IN ('triggered', 'processing')),"
    /* What each user has queued across its campaigns and its drip
     * sequences' steps: one user's work together never holds more than $6
     * (the jobs stream and the routers' bounds are shared by every user). */
    " used AS (SELECT u.user_id, sum(u.n) AS n FROM (SELECT user_id, queued AS n FROM run"
    "  UNION ALL SELECT s.user_id, (SELECT count(*) FROM (SELECT 1 FROM broadcast_messages q"
    "  WHERE q.sequence_id = s.id AND q.status = 'queued' LIMIT $1::int) q) FROM sequences s"
    "  WHERE s.user_id IN (SELECT user_id FROM run) AND s.status IN ('active', 'archived')"
    "  AND s.activated_at IS NOT NULL) u GROUP BY u.user_id),"
    " camp AS ("
    " SELECT c.id, c.user_id, $1::int - run.queued AS room"
    " FROM run JOIN campaigns c ON c.id = run.id"
    " WHERE wacast_in_window(c.send_window_start, c.send_window_end, c.time_zone)"
    " AND " HEALTHY_DEVICE("$3")
    " AND EXISTS (SELECT 1 FROM broadcast_messages p WHERE p.campaign_id = c.id"
    "  AND p.status = 'pending'"
    "  AND p.id > coalesce((SELECT after FROM cur WHERE cur.id = c.id), 0))),"
    " share AS (SELECT greatest(1, $2::int / greatest(1, count(*))) AS n FROM camp),"
    /* The user's room, shared among its campaigns that have rows to feed. */
    " uroom AS (SELECT camp.user_id, ceil(greatest(0, $6::bigint - min(used.n))::numeric"
    "  / count(*))::bigint AS n FROM camp JOIN used ON used.user_id = camp.user_id"
    "  GROUP BY camp.user_id),"
    " picked AS ("
    " SELECT p.id FROM camp JOIN uroom ON uroom.user_id = camp.user_id"
    "  LEFT JOIN cur ON cur.id = camp.id, share,"
    "  LATERAL (SELECT m.id FROM broadcast_messages m"
    "  WHERE m.campaign_id = camp.id AND m.status = 'pending' AND m.id > coalesce(cur.after, 0)"
    "  ORDER BY m.id LIMIT greatest(0, least(camp.room, share.n, uroom.n))"
    "  FOR UPDATE SKIP LOCKED) p),"
    " upd AS ("
    " UPDATE broadcast_messages m SET status = 'queued', queued_at = now(), updated_at = now()"
    " FROM picked WHERE m.id = picked.id AND m.status = 'pending' RETURNING m.*)"
    " SELECT " WC_SQL_JOB_COLUMNS
    " FROM upd m JOIN campaigns c ON c.id = m.campaign_id LEFT JOIN leads l ON l.id = m.lead_id"
    " ORDER BY m.id";

static const char *WAITING_SQL =
    "WITH w AS ("
    " SELECT c.id, " HEALTHY_DEVICE("$1") " AS healthy,"
    " 'waiting: no healthy device (' || coalesce((SELECT string_agg(n || ' ' || st, ', '"
    "  ORDER BY st) FROM (SELECT CASE WHEN d.status = 'online' AND d.resting_until > now()"
    "   THEN CASE WHEN d.status_reason LIKE 'daily limit%' THEN 'at daily limit'"
    "    ELSE 'resting' END"
    "   WHEN d.status = 'online' THEN 'not seen by a sender' ELSE d.status::text END AS st,"
    "   count(*) AS n FROM user_devices d WHERE d.user_id = c.user_id GROUP BY 1) x),"
    "  'the user has no device') || ')' AS reason"
    " FROM campaigns c WHERE c.status IN ('triggered', 'processing'))"
    " UPDATE campaigns c SET status_reason = CASE WHEN w.healthy THEN NULL ELSE w.reason END"
    " FROM w WHERE c.id = w.id AND ((NOT w.healthy AND (c.status_reason IS NULL"
    "  OR c.status_reason LIKE 'waiting:%') AND c.status_reason IS DISTINCT FROM w.reason)"
    "  OR (w.healthy AND c.status_reason LIKE 'waiting:%'))";
// clang-format on

void on_feed_timer(evutil_socket_t fd, short what, void *arg);

static void on_fed(int published, int n, const char *ids, void *arg)
{
    (void)ids;
    scheduler *s = arg;
    s->feeding = false;
    s->m.messages_published += (uint64_t)published;
    if (published < n)
        wc_warn("feeder: %d of %d message(s) not published; the reconciler retries them",
                n - published, n);
    /* A full round: more may be waiting; go on at once. */
    if (n >= s->cfg.feed_batch / 2 && !s->d.stopping)
        on_feed_timer(-1, 0, s);
}

static void on_feed_rows(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->feeding = false;
        s->m.pg_errors++;
        wc_warn("feeder: %s", err);
        return;
    }
    if (PQntuples(res) == 0) {
        s->feeding = false;
        return;
    }
    s->m.feed_rounds++;
    /* Where each campaign's next scan starts (rows come ordered by id). */
    for (int i = 0; i < PQntuples(res); i++) {
        long long id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        const char *camp = PQgetvalue(res, i, 1);
        if ((long long)(uintptr_t)wc_map_get(&s->fed, camp) < id &&
            wc_map_put(&s->fed, camp, (void *)(uintptr_t)id) < 0)
            abort();
    }
    if (wc_publish_rows(s->d.redis, res, NULL, 0, on_fed, s) < 0) {
        /* Marked queued, not published: the reconciler publishes them. */
        s->feeding = false;
        s->m.redis_errors++;
    }
}

/* How many jobs no router has read yet: scheduler/lua/unread.lua (LUA_UNREAD). */

static void on_feed_len(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    scheduler *s = arg;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        s->m.redis_errors++;
        s->feeding = false;
        return;
    }
    if (reply->integer > s->cfg.jobs_max) {
        /* The routers are behind: let the stream drain first. */
        s->m.backpressure_waits++;
        s->feeding = false;
        return;
    }
    char inflight[32], batch[32], grace[32], user_inflight[32];
    snprintf(inflight, sizeof inflight, "%ld", s->cfg.inflight);
    snprintf(user_inflight, sizeof user_inflight, "%ld", s->cfg.user_inflight);
    snprintf(batch, sizeof batch, "%ld", s->cfg.feed_batch);
    snprintf(grace, sizeof grace, "%ld", s->cfg.online_grace_ms);
    /* Start over from the first row once a minute: a row made pending again
     * below a cursor (an operator's retry) is never left behind. */
    if (wc_mono_us() - s->fed_reset_us > 60000000) {
        wc_map_free(&s->fed);
        wc_map_init(&s->fed);
        s->fed_reset_us = wc_mono_us();
    }
    struct evbuffer *ids = evbuffer_new(), *after = evbuffer_new();
    evbuffer_add(ids, "{", 1);
    evbuffer_add(after, "{", 1);
    size_t n = 0;
    for (size_t i = 0; i < s->fed.cap; i++) {
        if (!wc_map_live(&s->fed, i))
            continue;
        evbuffer_add_printf(ids, "%s%s", n ? "," : "", s->fed.slots[i].key);
        evbuffer_add_printf(after, "%s%llu", n ? "," : "",
                            (unsigned long long)(uintptr_t)s->fed.slots[i].value);
        n++;
    }
    evbuffer_add(ids, "}\0", 2);
    evbuffer_add(after, "}\0", 2);
    const char *params[] = {inflight,
                            batch,
                            grace,
                            (const char *)evbuffer_pullup(ids, -1),
                            (const char *)evbuffer_pullup(after, -1),
                            user_inflight};
    if (wc_pg_query(s->d.pg, FEED_SQL, 6, params, on_feed_rows, s) < 0) {
        s->m.pg_errors++;
        s->feeding = false;
    }
    evbuffer_free(ids);
    evbuffer_free(after);
}

void on_feed_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->feeding || s->d.stopping || !wc_redis_ready(s->d.redis))
        return;
    const char *argv[] = {"EVAL", LUA_UNREAD, "1", WC_KEY_JOBS, WC_GROUP_DISPATCH};
    if (wc_redis_commandv(s->d.redis, on_feed_len, s, 5, argv, NULL) == 0)
        s->feeding = true;
}

static void on_fed_pruned(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    s->pruning = false;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("feeder: looking for campaigns no longer running: %s", err);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++)
        wc_map_del(&s->fed, PQgetvalue(res, i, 0));
}

/* The feeder's cursors of campaigns no longer running (finished, failed,
 * cancelled, paused, deleted) go, so the map and the cursor arrays of every
 * feeder round hold only the campaigns being fed; the reset once a minute
 * alone let them pile up for a minute with many short campaigns. */
void on_prune_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->pruning || s->d.stopping || s->fed.len == 0)
        return;
    struct evbuffer *ids = evbuffer_new();
    size_t n = 0;
    for (size_t i = 0; i < s->fed.cap; i++)
        if (wc_map_live(&s->fed, i))
            evbuffer_add_printf(ids, "%s%s", n++ ? "," : "{", s->fed.slots[i].key);
    evbuffer_add(ids, "}\0", 2);
    const char *params[] = {(const char *)evbuffer_pullup(ids, -1)};
    if (wc_pg_query(s->d.pg,
                    "SELECT t.id::text FROM unnest($1::uuid[]) AS t(id) WHERE NOT EXISTS"
                    " (SELECT 1 FROM campaigns c WHERE c.id = t.id"
                    " AND c.status IN ('triggered', 'processing'))",
                    1, params, on_fed_pruned, s) == 0)
        s->pruning = true;
    else
        s->m.pg_errors++;
    evbuffer_free(ids);
}

static void on_waiting_written(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    s->waiting_busy = false;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("writing waiting reasons: %s", err);
    }
}

/* A running campaign whose user has no healthy device says so, with the
 * states of the user's devices; the reason goes when a device is back. */
void on_waiting_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->waiting_busy || s->d.stopping)
        return;
    char grace[32];
    snprintf(grace, sizeof grace, "%ld", s->cfg.online_grace_ms);
    const char *params[] = {grace};
    if (wc_pg_query(s->d.pg, WAITING_SQL, 1, params, on_waiting_written, s) == 0)
        s->waiting_busy = true;
    else
        s->m.pg_errors++;
}
