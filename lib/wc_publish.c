/* Publishing message rows as jobs; see wc_publish.h. */
#include "wc_publish.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "wacast.pb-c.h"
#include "wc_daemon.h"
#include "wc_keys.h"

typedef struct publish_op {
    wc_publish_cb *cb;
    void *arg;
    int pending, published, n;
    int64_t *ids;
    bool *ok;
    int next; /* reply order = send order */
} publish_op;

static void on_reply(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    publish_op *op = arg;
    int i = op->next++;
    if (reply && reply->type == REDIS_REPLY_STRING) {
        op->ok[i] = true;
        op->published++;
    }
    if (--op->pending > 0)
        return;
    struct evbuffer *b = evbuffer_new();
    int k = 0;
    for (int j = 0; j < op->n; j++)
        if (op->ok[j])
            evbuffer_add_printf(b, "%s%" PRId64, k++ ? "," : "{", op->ids[j]);
    if (k == 0)
        evbuffer_add(b, "{", 1);
    evbuffer_add(b, "}\0", 2);
    op->cb(op->published, op->n, (const char *)evbuffer_pullup(b, -1), op->arg);
    evbuffer_free(b);
    free(op->ids);
    free(op->ok);
    free(op);
}

static void on_ignored(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)reply;
    (void)arg;
}

int wc_publish_rows(wc_redis *r, PGresult *res, const bool *include, int clear_markers,
                    wc_publish_cb *cb, void *arg)
{
    int n = PQntuples(res);
    publish_op *op = calloc(1, sizeof *op);
    if (!op)
        return -1;
    op->cb = cb;
    op->arg = arg;
    op->n = n;
    op->ids = calloc((size_t)n + 1, sizeof *op->ids);
    op->ok = calloc((size_t)n + 1, sizeof *op->ok);
    if (!op->ids || !op->ok) {
        free(op->ids);
        free(op->ok);
        free(op);
        return -1;
    }
    int64_t now = wc_now_us();
    for (int i = 0; i < n; i++) {
        if (include && !include[i])
            continue;
        Wacast__Job job = WACAST__JOB__INIT;
        job.message_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        job.campaign_id = PQgetvalue(res, i, 1);
        job.user_id = PQgetvalue(res, i, 2);
        job.lead_id = PQgetvalue(res, i, 3);
        job.device_id = PQgetvalue(res, i, 4);
        job.recipient = PQgetvalue(res, i, 5);
        job.recipient_name = PQgetvalue(res, i, 6);
        job.content = PQgetvalue(res, i, 7);
        job.media_url = PQgetvalue(res, i, 8);
        job.min_delay_ms = (uint32_t)strtod(PQgetvalue(res, i, 9), NULL);
        job.max_delay_ms = (uint32_t)strtod(PQgetvalue(res, i, 10), NULL);
        if (PQnfields(res) > 11)
            job.priority = (int32_t)strtol(PQgetvalue(res, i, 11), NULL, 10);
        job.attempt = 1;
        job.queued_at_us = now;
        op->ids[op->pending] = job.message_id;
        if (clear_markers) {
            char key[64];
            wc_key_msg(key, sizeof key, (long long)job.message_id);
            if (wc_redis_command(r, on_ignored, NULL, "DEL %s", key) < 0)
                break;
        }
        size_t len = wacast__job__get_packed_size(&job);
        uint8_t *buf = malloc(len ? len : 1);
        if (!buf)
            break;
        wacast__job__pack(&job, buf);
        const char *argv[] = {"XADD", WC_KEY_JOBS, "*", "j", (const char *)buf};
        size_t lens[] = {4, strlen(WC_KEY_JOBS), 1, 1, len};
        int rc = wc_redis_commandv(r, on_reply, op, 5, argv, lens);
        free(buf);
        if (rc < 0)
            break;
        op->pending++;
    }
    if (op->pending == 0) {
        free(op->ids);
        free(op->ok);
        free(op);
        return -1;
    }
    /* Rows not sent (connection lost mid-way) simply stay unpublished. */
    op->n = op->pending;
    return 0;
}
