/* Operator controls. Pause, resume and cancel are plain updates of the
 * campaign row, so a dashboard can make them without the API; the admin API
 * (POST /admin/campaigns/<id>/{pause,resume,cancel,retry-failed}, bearer
 * token) makes the same updates and answers with the new state. What keeps
 * them true in flight lives here and in the sender:
 * - pause: senders re-read held campaigns every WACAST_HOLDS_MS and set a
 *   paused campaign's jobs aside in wacast:paused:<campaign>; when the
 *   campaign is no longer paused, this file moves them back to the jobs
 *   stream (resume continues where it stopped);
 * - cancel: unpublished messages are cancelled at once, senders report the
 *   ones they meet as cancelled, and whatever is still queued after
 *   WACAST_CANCEL_GRACE_S is cancelled by the sweep;
 * - retry-failed: failed messages go back to pending, their markers are
 *   cleared, and they are published again. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <jansson.h>
#include <sodium.h>

#include "dispatcher.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_origin.h"
#include "wc_gowa.h"
#include "wc_publish.h"
#include "wc_seal.h"

#define PAUSED_INDEX "wacast:paused:index"

/* ---- admin API ------------------------------------------------------------------------------- */

typedef struct admin_op {
    dispatcher *ds;
    struct evhttp_request *req;
    char campaign[64];
    char action[32];
} admin_op;

static bool is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !strchr("0123456789abcdefABCDEF", s[i]))
            return false;
    }
    return true;
}

static void reply_campaign(admin_op *op, PGresult *res, int row)
{
    char body[512];
    const char *changed = PQgetvalue(res, row, 1);
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"status\":\"%s\",\"changed\":%s}", op->campaign,
             PQgetvalue(res, row, 0), changed[0] == 't' ? "true" : "false");
    wc_http_reply_json(op->req, 200, body);
}

static void on_retry_published(int published, int n, const char *ids, void *arg);

static void on_admin_done(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    admin_op *op = arg;
    dispatcher *ds = op->ds;
    if (!res) {
        ds->m.pg_errors++;
        wc_http_reply_error(op->req, 503, err);
        free(op);
        return;
    }
    if (PQntuples(res) == 0) {
        wc_http_reply_error(op->req, 404, "no such campaign");
        free(op);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 1), "true") != 0 && strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "cannot %s a campaign that is %s", op->action,
                 PQgetvalue(res, 0, 0));
        wc_http_reply_error(op->req, 409, msg);
        free(op);
        return;
    }
    wc_info("admin: campaign %s %s", op->campaign, op->action);
    reply_campaign(op, res, 0);
    free(op);
}

static void on_retry_marked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("retry-failed: marking queued: %s", err);
    }
}

static void on_retry_published(int published, int n, const char *ids, void *arg)
{
    dispatcher *ds = arg;
    wc_info("retry-failed: %d of %d message(s) published again", published, n);
    const char *params[] = {ids};
    if (wc_pg_query(ds->d.pg, WC_SQL_MARK_QUEUED, 1, params, on_retry_marked, ds) < 0)
        ds->m.pg_errors++;
}

static void on_retry_rows(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    admin_op *op = arg;
    dispatcher *ds = op->ds;
    if (!res) {
        ds->m.pg_errors++;
        wc_http_reply_error(op->req, 503, err);
        free(op);
        return;
    }
    int n = PQntuples(res);
    char body[256];
    snprintf(body, sizeof body, "{\"id\":\"%s\",\"status\":\"processing\",\"retried\":%d}",
             op->campaign, n);
    if (n > 0 && wc_publish_rows(ds->d.redis, res, NULL, 1, on_retry_published, ds) < 0) {
        /* Rows are pending: the scheduler's reconciler publishes them later. */
        wc_warn("retry-failed: Redis unavailable; the reconciler will publish %d message(s)", n);
    }
    wc_info("admin: campaign %s retry-failed: %d message(s)", op->campaign, n);
    wc_http_reply_json(op->req, 200, body);
    free(op);
}

static const char *SQL_PAUSE =
    "WITH c AS (SELECT id, status FROM campaigns WHERE id = $1 FOR UPDATE),"
    " u AS (UPDATE campaigns SET status = 'paused', status_reason = 'paused by operator'"
    " WHERE id = $1 AND status IN ('pending', 'triggered', 'processing') RETURNING status)"
    " SELECT coalesce((SELECT status::text FROM u), c.status::text), (SELECT count(*) FROM u) > 0 "
    "FROM c";

/* Back to where it was: pending if never triggered, triggered (expansion to
 * finish; the stale claim is taken by a scheduler) or processing. */
static const char *SQL_RESUME =
    "WITH c AS (SELECT id, status FROM campaigns WHERE id = $1 FOR UPDATE),"
    " u AS (UPDATE campaigns SET status = CASE WHEN triggered_at IS NULL THEN "
    "'pending'::campaign_status"
    " WHEN expanded_at IS NULL THEN 'triggered'::campaign_status ELSE "
    "'processing'::campaign_status END,"
    " claimed_at = NULL, status_reason = NULL WHERE id = $1 AND status = 'paused' RETURNING status)"
    " SELECT coalesce((SELECT status::text FROM u), c.status::text), (SELECT count(*) FROM u) > 0 "
    "FROM c";

static const char *SQL_CANCEL =
    "WITH c AS (SELECT id, status FROM campaigns WHERE id = $1 FOR UPDATE),"
    " u AS (UPDATE campaigns SET status = 'cancelled', status_reason = 'cancelled by operator',"
    " finished_at = now() WHERE id = $1 AND status IN ('pending', 'triggered', 'processing', "
    "'paused')"
    " RETURNING id),"
    " m AS (UPDATE broadcast_messages SET status = 'cancelled', updated_at = now()"
    " WHERE campaign_id = $1 AND status = 'pending' AND EXISTS (SELECT 1 FROM u) RETURNING 1),"
    " n AS (UPDATE campaigns SET cancelled_count = cancelled_count + (SELECT count(*) FROM m)"
    " WHERE id = $1 AND EXISTS (SELECT 1 FROM u) RETURNING 1)"
    " SELECT CASE WHEN EXISTS (SELECT 1 FROM u) THEN 'cancelled' ELSE c.status::text END,"
    " EXISTS (SELECT 1 FROM u), (SELECT count(*) FROM n) FROM c";

static const char *SQL_RETRY_FAILED =
    "WITH c AS (SELECT id FROM campaigns WHERE id = $1 AND status IN ('processing', 'finished', "
    "'failed')"
    " FOR UPDATE),"
    " m AS (UPDATE broadcast_messages SET status = 'pending', error_code = NULL, error_message = "
    "NULL,"
    " failed_at = NULL, attempts = 0, updated_at = now()"
    " WHERE campaign_id = $1 AND status = 'failed' AND EXISTS (SELECT 1 FROM c) RETURNING id),"
    " u AS (UPDATE campaigns SET failed_count = failed_count - (SELECT count(*) FROM m),"
    " status = 'processing', status_reason = NULL, finished_at = NULL"
    " WHERE id = $1 AND EXISTS (SELECT 1 FROM c) AND (SELECT count(*) FROM m) > 0 RETURNING 1)"
    " SELECT " WC_SQL_JOB_COLUMNS WC_SQL_JOB_FROM " WHERE m.id IN (SELECT id FROM m)"
    " AND (SELECT count(*) FROM u) >= 0";

/* ---- device pairing: the gateway's login QR ------------------------------------------------ */

typedef struct qr_op {
    dispatcher *ds;
    struct evhttp_request *req;
    char device[40];
} qr_op;

static void on_qr(void *arg, const wc_gowa_qr *qr)
{
    qr_op *op = arg;
    if (qr->error) {
        char msg[300];
        snprintf(msg, sizeof msg, "gateway: %s", qr->error);
        wc_http_reply_error(op->req, 502, msg);
    } else {
        json_t *body = json_pack("{s:s, s:s, s:i, s:s, s:s}", "device_id", op->device, "qr_link",
                                 qr->qr_link, "qr_duration", qr->qr_duration, "qr_png_base64",
                                 qr->png_base64, "content_type", "image/png");
        char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
        if (text)
            wc_http_reply_json(op->req, 200, text);
        else
            wc_http_reply_error(op->req, 500, "out of memory");
        free(text);
        json_decref(body);
    }
    free(op);
}

static void on_qr_device(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    qr_op *op = arg;
    dispatcher *ds = op->ds;
    if (!res || PQntuples(res) == 0) {
        wc_http_reply_error(op->req, res ? 404 : 503, res ? "no such device" : err);
        free(op);
        return;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "gowa") != 0) {
        wc_http_reply_error(op->req, 409, "QR pairing is for gowa devices");
        free(op);
        return;
    }
    json_t *settings = json_loads(PQgetvalue(res, 0, 1), 0, NULL);
    const char *base = json_string_value(json_object_get(settings, "base_url"));
    const char *gw_device = json_string_value(json_object_get(settings, "device_id"));
    json_t *creds = NULL;
    const char *hex = PQgetvalue(res, 0, 2);
    if (hex[0]) {
        char why[224];
        creds = dispatcher_open_credentials(ds, PQgetvalue(res, 0, 3), hex, why, sizeof why);
        if (!creds) {
            json_decref(settings);
            wc_http_reply_error(op->req, 500, why);
            free(op);
            return;
        }
    }
    const char *user = json_string_value(json_object_get(creds, "username"));
    const char *pass = json_string_value(json_object_get(creds, "password"));
    char why[256];
    if (!base) {
        wc_http_reply_error(op->req, 409, "device settings have no base_url");
        free(op);
    } else if (!wc_provider_url_allowed(ds->cfg.provider_hosts, base, why, sizeof why)) {
        /* The device's password would go there. */
        wc_http_reply_error(op->req, 409, why);
        free(op);
    } else if (wc_gowa_login_qr(ds->httpc, base, gw_device, user, pass, on_qr, op) < 0) {
        wc_http_reply_error(op->req, 502, "cannot reach the gateway");
        free(op);
    }
    json_decref(settings);
    json_decref(creds);
}

static void device_qr(dispatcher *ds, struct evhttp_request *req, const char *device)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        wc_http_reply_error(req, 405, "use GET");
        return;
    }
    qr_op *op = calloc(1, sizeof *op);
    if (!op) {
        wc_http_reply_error(req, 500, "out of memory");
        return;
    }
    op->ds = ds;
    op->req = req;
    snprintf(op->device, sizeof op->device, "%s", device);
    const char *params[] = {op->device};
    if (wc_pg_query(ds->d.pg,
                    "SELECT platform, settings::text, coalesce(encode(credentials, 'hex'), ''),"
                    " id::text FROM user_devices WHERE id = $1",
                    1, params, on_qr_device, op) < 0) {
        wc_http_reply_error(req, 503, "database unavailable");
        free(op);
    }
}

bool dispatcher_admin_authorized(dispatcher *ds, struct evhttp_request *req)
{
    ds->m.admin_requests++;
    if (!ds->cfg.admin_token[0]) {
        wc_http_reply_error(req, 403, "admin API disabled: set WACAST_ADMIN_TOKEN");
        return false;
    }
    if (!wc_http_bearer_ok(req, ds->cfg.admin_token)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        wc_http_reply_error(req, 401, "missing or wrong bearer token");
        return false;
    }
    return true;
}

static void on_admin(struct evhttp_request *req, void *arg)
{
    dispatcher *ds = arg;
    if (!dispatcher_admin_authorized(ds, req))
        return;
    const char *path = evhttp_request_get_uri(req);
    char device[64] = "";
    if (sscanf(path, "/admin/devices/%63[^/]/qr", device) == 1) {
        if (!is_uuid(device)) {
            wc_http_reply_error(req, 400, "device id is not a UUID");
            return;
        }
        device_qr(ds, req, device);
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        wc_http_reply_error(req, 405, "use POST");
        return;
    }
    /* /admin/campaigns/<uuid>/<action> */
    char campaign[64] = "", action[32] = "";
    if (sscanf(path, "/admin/campaigns/%63[^/]/%31[a-z-]", campaign, action) != 2) {
        wc_http_reply_error(req, 404,
                            "expected /admin/campaigns/<id>/{pause,resume,cancel,retry-failed}");
        return;
    }
    if (!is_uuid(campaign)) {
        wc_http_reply_error(req, 400, "campaign id is not a UUID");
        return;
    }
    const char *sql = !strcmp(action, "pause")          ? SQL_PAUSE
                      : !strcmp(action, "resume")       ? SQL_RESUME
                      : !strcmp(action, "cancel")       ? SQL_CANCEL
                      : !strcmp(action, "retry-failed") ? SQL_RETRY_FAILED
                                                        : NULL;
    if (!sql) {
        wc_http_reply_error(req, 404, "unknown action (pause, resume, cancel, retry-failed)");
        return;
    }
    admin_op *op = calloc(1, sizeof *op);
    if (!op) {
        wc_http_reply_error(req, 500, "out of memory");
        return;
    }
    op->ds = ds;
    op->req = req;
    snprintf(op->campaign, sizeof op->campaign, "%s", campaign);
    snprintf(op->action, sizeof op->action, "%s", action);
    const char *params[] = {op->campaign};
    wc_pg_cb *cb = sql == SQL_RETRY_FAILED ? on_retry_rows : on_admin_done;
    if (wc_pg_query(ds->d.pg, sql, 1, params, cb, op) < 0) {
        wc_http_reply_error(req, 503, "database unavailable");
        free(op);
    }
}

/* ---- resumed campaigns: paused jobs back to the jobs stream ------------------------------------
 */

typedef struct drain {
    dispatcher *ds;
    char campaign[40];
    char key[96];
    int pending;
} drain;

static void drain_step(drain *dr);

static void on_drain_deleted(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    drain *dr = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        dr->ds->m.redis_errors++;
        dr->ds->paused_busy = false;
        free(dr);
        return;
    }
    drain_step(dr);
}

static void on_drain_done(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    drain *dr = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        dr->ds->m.redis_errors++;
    dr->ds->paused_busy = false;
    free(dr);
}

/* After the campaign left the index: a stream that is not empty now got an
 * entry after our XRANGE, and the campaign goes back in (see on_drain_range). */
static void on_rechecked(wc_redis *r, redisReply *reply, void *arg)
{
    drain *dr = arg;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        dr->ds->m.redis_errors++;
    } else if (reply->integer > 0) {
        wc_info("campaign %s: a message was set aside while its paused index entry was removed;"
                " kept in the index",
                dr->campaign);
        if (wc_redis_command(r, on_drain_done, dr, "SADD %s %s", PAUSED_INDEX, dr->campaign) == 0)
            return;
        dr->ds->m.redis_errors++;
    }
    dr->ds->paused_busy = false;
    free(dr);
}

static void on_forgotten(wc_redis *r, redisReply *reply, void *arg)
{
    drain *dr = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        dr->ds->m.redis_errors++;
    if (wc_redis_command(r, on_rechecked, dr, "XLEN %s", dr->key) < 0) {
        dr->ds->paused_busy = false;
        free(dr);
    }
}

static void on_requeued(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    drain *dr = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        dr->ds->m.redis_errors++;
    else
        dr->ds->m.paused_requeued++;
}

static void on_drain_range(wc_redis *r, redisReply *reply, void *arg)
{
    drain *dr = arg;
    dispatcher *ds = dr->ds;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        ds->m.redis_errors++;
        ds->paused_busy = false;
        free(dr);
        return;
    }
    if (reply->elements == 0) {
        /* Empty: forget it. A sender that still holds the campaign as paused
         * adds to the stream first and to the index after, so both may land
         * between our XRANGE and this SREM, which would then strand its
         * entry. The stream is looked at once more after the SREM: not empty,
         * the campaign goes back in the index (a SADD of the sender's after
         * the SREM re-adds it by itself). */
        if (wc_redis_command(r, on_forgotten, dr, "SREM %s %s", PAUSED_INDEX, dr->campaign) < 0) {
            ds->paused_busy = false;
            free(dr);
        }
        return;
    }
    /* Copy to the jobs stream, then delete what was copied. A crash in between
     * leaves duplicates, which the idempotency marker drops. */
    const char **del = calloc(reply->elements + 2, sizeof *del);
    if (!del)
        abort();
    del[0] = "XDEL";
    del[1] = dr->key;
    int n = 2;
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
            continue;
        redisReply *f = e->element[1];
        for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2) {
            if (strcmp(f->element[k]->str, "j") != 0)
                continue;
            const char *argv[] = {"XADD", WC_KEY_JOBS, "*", "j", f->element[k + 1]->str};
            size_t lens[] = {4, strlen(WC_KEY_JOBS), 1, 1, f->element[k + 1]->len};
            if (wc_redis_commandv(r, on_requeued, dr, 5, argv, lens) < 0)
                ds->m.redis_errors++;
        }
        del[n++] = e->element[0]->str;
    }
    if (wc_redis_commandv(r, on_drain_deleted, dr, n, del, NULL) < 0) {
        ds->paused_busy = false;
        free(dr);
    }
    free(del);
}

static void drain_step(drain *dr)
{
    if (wc_redis_command(dr->ds->d.redis, on_drain_range, dr, "XRANGE %s - + COUNT 500", dr->key) <
        0) {
        dr->ds->paused_busy = false;
        free(dr);
    }
}

static void on_resumable(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("reading paused campaigns: %s", err);
        ds->paused_busy = false;
        return;
    }
    if (PQntuples(res) == 0) {
        ds->paused_busy = false;
        return;
    }
    /* One campaign per round keeps this simple; the timer comes back. */
    drain *dr = calloc(1, sizeof *dr);
    if (!dr)
        abort();
    dr->ds = ds;
    snprintf(dr->campaign, sizeof dr->campaign, "%s", PQgetvalue(res, 0, 0));
    wc_key_paused(dr->key, sizeof dr->key, dr->campaign);
    wc_info("campaign %s is no longer paused: requeueing its set-aside messages", dr->campaign);
    drain_step(dr);
}

static void on_paused_index(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher *ds = arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        ds->paused_busy = false;
        return;
    }
    struct evbuffer *ids = evbuffer_new();
    size_t n = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        const char *id = reply->element[i]->str;
        if (reply->element[i]->type == REDIS_REPLY_STRING && is_uuid(id))
            evbuffer_add_printf(ids, "%s%s", n++ ? "," : "{", id);
    }
    if (n == 0) {
        evbuffer_free(ids);
        ds->paused_busy = false;
        return;
    }
    evbuffer_add(ids, "}\0", 2);
    const char *params[] = {(const char *)evbuffer_pullup(ids, -1)};
    if (wc_pg_query(ds->d.pg,
                    "SELECT id FROM campaigns WHERE id = ANY($1::uuid[]) AND status <> 'paused'"
                    " AND wacast_in_window(send_window_start, send_window_end, time_zone)"
                    /* Steps set aside for a paused sequence (their lane is its id). */
                    " UNION ALL SELECT id FROM sequences WHERE id = ANY($1::uuid[])"
                    " AND status <> 'paused'"
                    " AND wacast_in_window(send_window_start, send_window_end, time_zone)",
                    1, params, on_resumable, ds) < 0)
        ds->paused_busy = false;
    evbuffer_free(ids);
}

/* ---- cancel sweep ---------------------------------------------------------------------------- */

static void on_cancel_swept(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    ds->cancel_busy = false;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("cancel sweep: %s", err);
    }
}

static void on_paused_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatcher *ds = arg;
    if (!ds->paused_busy && wc_redis_ready(ds->d.redis) &&
        wc_redis_command(ds->d.redis, on_paused_index, ds, "SMEMBERS %s", PAUSED_INDEX) == 0)
        ds->paused_busy = true;
    if (!ds->cancel_busy) {
        char grace[32];
        snprintf(grace, sizeof grace, "%ld", ds->cfg.cancel_grace_s);
        const char *params[] = {grace};
        /* Through the pending and queued indexes, 10,000 rows a round at
         * most (a plan that joined the whole table would scan it every
         * second for as long as any cancelled campaign is on record). */
        static const char *sql =
            "WITH cc AS (SELECT id FROM campaigns WHERE status = 'cancelled'"
            " AND finished_at < now() - make_interval(secs => $1::float8)),"
            " open AS ((SELECT p.id FROM cc, LATERAL (SELECT id FROM broadcast_messages"
            "  WHERE campaign_id = cc.id AND status = 'pending') p"
            "  UNION ALL SELECT q.id FROM cc, LATERAL (SELECT id FROM broadcast_messages"
            "  WHERE campaign_id = cc.id AND status = 'queued') q) LIMIT 10000),"
            " m AS (UPDATE broadcast_messages m SET status = 'cancelled', updated_at = now()"
            " FROM open o WHERE m.id = o.id AND m.status IN ('pending', 'queued')"
            " RETURNING m.campaign_id)"
            " UPDATE campaigns c SET cancelled_count = c.cancelled_count + d.n"
            " FROM (SELECT campaign_id, count(*) AS n FROM m GROUP BY campaign_id) d"
            " WHERE c.id = d.campaign_id";
        if (wc_pg_query(ds->d.pg, sql, 1, params, on_cancel_swept, ds) == 0)
            ds->cancel_busy = true;
    }
}

void control_init(dispatcher *ds)
{
    char err[256];
    if (wc_provider_hosts_check(ds->cfg.provider_hosts, err, sizeof err) < 0) {
        wc_error("%s", err);
        exit(1);
    }
    if (getenv(WC_SEAL_KEY_ENV) && getenv(WC_SEAL_KEY_ENV)[0] &&
        wc_seal_init_env(&ds->seal, err, sizeof err) < 0) {
        wc_error("%s", err);
        exit(1);
    }
    ds->httpc = wc_httpc_new(ds->d.base, 64);
    if (wc_http_route(ds->d.admin_http, "/admin/", 64 << 10, on_admin, ds) < 0) {
        wc_error("cannot route /admin/");
        abort();
    }
    ds->paused_timer = wc_daemon_every(&ds->d, 1000, on_paused_timer, ds);
    media_api_init(ds);
}

void control_free(dispatcher *ds)
{
    media_api_free(ds);
    wc_httpc_free(ds->httpc);
    ds->httpc = NULL;
    wc_seal_keys_free(ds->seal);
    ds->seal = NULL;
    if (ds->paused_timer)
        event_free(ds->paused_timer);
    ds->paused_timer = NULL;
}
