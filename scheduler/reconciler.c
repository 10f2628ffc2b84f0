/* wacast-scheduler: the reconciler. Messages queued for longer than they
 * should be are looked at against their Redis markers and published again
 * when Redis lost them; after a detected Redis loss it takes every queued
 * row at once. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "scheduler.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_publish.h"
#include "wc_sql.h"

/* ---- reconciler ---------------------------------------------------------------------------- */

/* Candidates are messages queued for longer than WACAST_RECONCILE_AFTER_S
 * in running campaigns or sequences (pending ones wait for the feeder, which marks a row
 * queued before it publishes it). Their markers in Redis tell what happened
 * to each:
 *   queued, no marker     lost with Redis data: publish again (a duplicate
 *                         is dropped by the marker downstream)
 *   queued, "d:..."       the outcome is known but its result was lost: put
 *                         the result on the results stream again
 *   queued, "r:"/"c:"     still travelling (an outbox, a send): its marker
 *                         is renewed to the full WACAST_IDEMPOTENCY_TTL_S, so
 *                         a message that waits in an outbox longer than that
 *                         (a slow device behind many campaigns) is never
 *                         taken for lost and published again, which would
 *                         leave a copy to be sent once the first copy's
 *                         outcome marker has expired
 *
 * The statement that picks the candidates also moves their updated_at to now
 * (FOR UPDATE SKIP LOCKED): a row is looked at again only after another
 * WACAST_RECONCILE_AFTER_S, not every round (a user whose devices are all
 * away would otherwise get one copy of each waiting row per round on the
 * jobs stream), and two schedulers never pick, and so never republish, the
 * same row in the same period. A row picked in a round whose Redis command
 * then fails waits for the next period. */
typedef struct reconcile {
    scheduler *s;
    PGresult *rows;
    bool *publish;
} reconcile;

static void reconcile_end(reconcile *rc)
{
    rc->s->reconciling = false;
    PQclear(rc->rows);
    free(rc->publish);
    free(rc);
}

static void on_reconcile_marked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("reconciler: %s", err);
    }
}

static void on_reconcile_published(int published, int n, const char *ids, void *arg)
{
    scheduler *s = arg;
    s->m.messages_republished += (uint64_t)published;
    wc_info("reconciler: published %d of %d stuck message(s) again", published, n);
    const char *params[] = {ids};
    if (wc_pg_query(s->d.pg, WC_SQL_MARK_QUEUED, 1, params, on_reconcile_marked, s) < 0)
        s->m.pg_errors++;
}

static void on_result_replayed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    scheduler *s = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        s->m.redis_errors++;
}

static void on_markers(wc_redis *r, redisReply *reply, void *arg)
{
    reconcile *rc = arg;
    scheduler *s = rc->s;
    int n = PQntuples(rc->rows);
    if (!reply || reply->type != REDIS_REPLY_ARRAY || (int)reply->elements != n) {
        s->m.redis_errors++;
        reconcile_end(rc);
        return;
    }
    int npublish = 0;
    for (int i = 0; i < n; i++) {
        bool pending = PQgetvalue(rc->rows, i, 12)[0] == 'p';
        redisReply *m = reply->element[i];
        bool absent = m->type != REDIS_REPLY_STRING || m->len < 2;
        if (pending || absent) {
            rc->publish[i] = true;
            npublish++;
        } else if (m->str[0] == 'd') {
            const char *argv[] = {"XADD", WC_KEY_RESULTS, "*", "r", m->str + 2};
            size_t lens[] = {4, strlen(WC_KEY_RESULTS), 1, 1, m->len - 2};
            if (wc_redis_commandv(r, on_result_replayed, s, 5, argv, lens) < 0)
                s->m.redis_errors++;
        } else {
            char key[64], ttl[32];
            wc_key_msg(key, sizeof key, strtoll(PQgetvalue(rc->rows, i, 0), NULL, 10));
            snprintf(ttl, sizeof ttl, "%ld", s->cfg.idempotency_ttl_s);
            const char *argv[] = {"EXPIRE", key, ttl};
            if (wc_redis_commandv(r, on_result_replayed, s, 3, argv, NULL) < 0)
                s->m.redis_errors++;
            else
                s->m.markers_renewed++;
        }
    }
    if (npublish && wc_publish_rows(r, rc->rows, rc->publish, 0, on_reconcile_published, s) < 0)
        s->m.redis_errors++;
    reconcile_end(rc);
}

static void on_stuck(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("reconciler: %s", err);
        s->reconciling = false;
        return;
    }
    int n = PQntuples(res);
    if (n == 0) {
        s->reconciling = false;
        return;
    }
    reconcile *rc = calloc(1, sizeof *rc);
    bool *publish = calloc((size_t)n, sizeof *publish);
    const char **argv = calloc((size_t)n + 1, sizeof *argv);
    char(*keys)[64] = calloc((size_t)n, sizeof *keys);
    if (!rc || !publish || !argv || !keys)
        abort();
    rc->s = s;
    rc->publish = publish;
    /* Keep the rows past this callback: the library frees res when it returns. */
    rc->rows = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
    argv[0] = "MGET";
    for (int i = 0; i < n; i++) {
        wc_key_msg(keys[i], sizeof keys[i], strtoll(PQgetvalue(res, i, 0), NULL, 10));
        argv[i + 1] = keys[i];
    }
    if (!rc->rows || wc_redis_commandv(s->d.redis, on_markers, rc, n + 1, argv, NULL) < 0) {
        s->m.redis_errors++;
        if (!rc->rows) {
            free(publish);
            free(rc);
            s->reconciling = false;
        } else {
            reconcile_end(rc);
        }
    }
    free(argv);
    free(keys);
}

void on_reconcile(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->reconciling || s->d.stopping || !wc_redis_ready(s->d.redis))
        return;
    char after[32];
    snprintf(after, sizeof after, "%ld", s->reconcile_now > 0 ? 0 : s->cfg.reconcile_after_s);
    s->reconcile_now -= s->reconcile_now > 0;
    const char *params[] = {after};
    static const char *sql =
        "WITH stuck AS (SELECT m.id FROM broadcast_messages m LEFT JOIN campaigns c"
        " ON c.id = m.campaign_id WHERE m.status = 'queued'"
        " AND (c.status = 'processing' OR m.sequence_id IS NOT NULL)"
        " AND m.updated_at < now() - make_interval(secs => $1::float8)"
        " ORDER BY m.updated_at LIMIT 1000 FOR UPDATE OF m SKIP LOCKED),"
        " touched AS (UPDATE broadcast_messages m SET updated_at = now() FROM stuck"
        " WHERE m.id = stuck.id AND m.status = 'queued' RETURNING m.*)"
        " SELECT " WC_SQL_JOB_COLUMNS ", m.status::text FROM touched m"
        " LEFT JOIN campaigns c ON c.id = m.campaign_id LEFT JOIN leads l ON l.id = m.lead_id"
        " ORDER BY m.id";
    if (wc_pg_query(s->d.pg, sql, 1, params, on_stuck, s) == 0)
        s->reconciling = true;
}

/* Redis lost acknowledged writes (wc_epoch.c): what the lost interval held
 * (a publication, a marker) is looked for at once, not after the timeout. */
void on_fence_checked(void *arg, const wc_epoch_state *st)
{
    scheduler *s = arg;
    if (!st->recovering)
        return;
    s->reconcile_now = 5;
    on_reconcile(-1, 0, s);
}
