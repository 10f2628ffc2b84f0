/* A device's outboxes: one stream per campaign (a lane) and a set naming
 * them, plus the later set (messages waiting for a time: a recipient gap, a
 * back-off, a wait in doubt) and the holds of paused or cancelled campaigns.
 * Messages leave a device here: parked for a paused campaign (the dispatcher
 * brings them back), deferred to the later set and promoted back, or handed
 * back to the jobs stream when the device leaves service (offline, resting,
 * deleted) so the user's other devices send them.
 * May touch: the device's lanes, later set and the jobs/paused streams. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <sodium.h>

#include "sender.h"
#include "sender_lua.h"

/* Stores the device's lanes from an SMEMBERS reply (keeps the read
 * position's campaign when it is still there). */
void set_lanes(device *dv, redisReply *reply)
{
    char cur[40] = "";
    if (dv->nlanes)
        snprintf(cur, sizeof cur, "%s", dv->lanes[dv->lane_cur % dv->nlanes]);
    free(dv->lanes);
    dv->lanes = NULL;
    dv->nlanes = 0;
    dv->lane_cur = 0;
    uint8_t burst = dv->lane_burst; /* kept when the lane in turn is still there */
    dv->lane_burst = 0;
    size_t n = reply && reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0;
    if (n > UINT16_MAX)
        n = UINT16_MAX;
    if (n == 0)
        return;
    dv->lanes = calloc(n, sizeof *dv->lanes);
    if (!dv->lanes)
        abort();
    for (size_t i = 0; i < n; i++) {
        redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len >= sizeof dv->lanes[0])
            continue;
        memcpy(dv->lanes[dv->nlanes], e->str, e->len + 1);
        if (cur[0] && !strcmp(cur, e->str)) {
            dv->lane_cur = dv->nlanes;
            dv->lane_burst = burst;
        }
        dv->nlanes++;
    }
}

/* Puts the job in hand back on the jobs stream, unclaimed and without a
 * device preference, and acknowledges its outbox entry. */
void handback_entry(device *dv)
{
    fleet *f = dv->f;
    wc_redis *rc = f->d.redis;
    set_state(dv, DEV_REPORTING);
    dv->pending_replies = 0;
    dv->reply_failed = false;
    f->m.handed_back++;
    char key[64], ttl[32], outbox[160];
    wc_key_msg(key, sizeof key, (long long)dv->job->message_id);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    wc_key_lane(outbox, sizeof outbox, dv->id, dv->entry_lane);
    char *preferred = dv->job->device_id;
    dv->job->device_id = "";
    size_t len = wacast__job__get_packed_size(dv->job);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    wacast__job__pack(dv->job, buf);
    dv->job->device_id = preferred;
    /* Our claim becomes "routed" again so the router accepts the job. */
    int rcode = wc_redis_command(rc, on_report_reply, dv, "SET %s r:handback EX %s", key, ttl);
    dv->pending_replies += rcode == 0;
    const char *argv[] = {"XADD", WC_KEY_JOBS, "*", "j", (const char *)buf};
    size_t lens[] = {4, strlen(WC_KEY_JOBS), 1, 1, len};
    int rc2 = wc_redis_commandv(rc, on_report_reply, dv, 5, argv, lens);
    dv->pending_replies += rc2 == 0;
    int rc3 = wc_redis_command(rc, on_report_reply, dv, "XACK %s %s %s", outbox, WC_GROUP_SEND,
                               dv->entry_id);
    dv->pending_replies += rc3 == 0;
    int rc4 = wc_redis_command(rc, on_report_reply, dv, "XDEL %s %s", outbox, dv->entry_id);
    dv->pending_replies += rc4 == 0;
    free(buf);
    if (rcode | rc2 | rc3 | rc4)
        dv->reply_failed = true;
    if (dv->pending_replies == 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        device_step(dv);
    }
}

/* Puts the job in hand in the device's later set, not to be sent before
 * not_before_us, and acknowledges its lane entry, in one script. The message
 * was not sent (a per-recipient wait), so its marker goes back to "routed
 * here": reading it again claims it afresh. */

void defer_entry(device *dv, int64_t not_before_us)
{
    defer_entry_marked(dv, not_before_us, true);
}

/* As defer_entry; reset_marker false leaves the marker as it is (an in-doubt
 * claim must survive the wait). */
void defer_entry_marked(device *dv, int64_t not_before_us, bool reset_marker)
{
    fleet *f = dv->f;
    wc_redis *rc = f->d.redis;
    set_state(dv, DEV_REPORTING);
    dv->pending_replies = 0;
    dv->reply_failed = false;
    dv->job->not_before_us = not_before_us;
    dv->job->attempts_made = dv->attempts;
    char later[128], lane[160], score[32], key[64], val[64], ttl[32];
    wc_key_later(later, sizeof later, dv->id);
    wc_key_lane(lane, sizeof lane, dv->id, dv->entry_lane);
    int64_t due_ms = not_before_us / 1000 + 1;
    snprintf(score, sizeof score, "%" PRId64, due_ms);
    /* Member: "<campaign>\n<job>", so the promotion knows the lane; "?" in
     * front for a message in doubt, which a handback leaves with the device
     * (its claim must settle here, like a claimed entry in a lane). */
    size_t pre = reset_marker ? 0 : 1;
    size_t clen = pre + strlen(dv->job->campaign_id), len = wacast__job__get_packed_size(dv->job);
    uint8_t *buf = malloc(clen + 1 + len);
    if (!buf)
        abort();
    buf[0] = '?';
    memcpy(buf + pre, dv->job->campaign_id, clen - pre);
    buf[clen] = '\n';
    wacast__job__pack(dv->job, buf + clen + 1);
    const char *argv[] = {"EVAL", LUA_LATER_PUT,     "2",           later,       lane,
                          score,  (const char *)buf, WC_GROUP_SEND, dv->entry_id};
    size_t lens[] = {4,
                     strlen(LUA_LATER_PUT),
                     1,
                     strlen(later),
                     strlen(lane),
                     strlen(score),
                     clen + 1 + len,
                     strlen(WC_GROUP_SEND),
                     strlen(dv->entry_id)};
    int r1 = wc_redis_commandv(rc, on_report_reply, dv, 9, argv, lens);
    dv->pending_replies += r1 == 0;
    wc_key_msg(key, sizeof key, (long long)dv->job->message_id);
    snprintf(val, sizeof val, "r:%s", dv->id);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    const char *mark[] = {"EVAL", WC_LUA_MARK, "1", key, val, ttl, "d"};
    int r2 = reset_marker ? wc_redis_commandv(rc, on_report_reply, dv, 7, mark, NULL) : 0;
    dv->pending_replies += reset_marker && r2 == 0;
    free(buf);
    if (r1 | r2)
        dv->reply_failed = true;
    if (r1 == 0 && (dv->later_next_ms == 0 || due_ms < dv->later_next_ms))
        dv->later_next_ms = due_ms;
    if (dv->pending_replies == 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
    }
}

void on_promoted(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (dv->state != DEV_READING)
        return;
    set_state(dv, DEV_IDLE);
    if (!reply_ok(dv->f, reply) || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        arm_timer(dv, 500000);
        return;
    }
    long long moved = reply->element[0]->integer, next = reply->element[1]->integer;
    dv->later_next_ms = next > 0 ? next : 0;
    if (moved > 0)
        dv->lanes_stale = true; /* a lane may be new */
    device_step(dv);
}

/* Moves a device's queued messages back to the jobs stream: the device is
 * out of service (offline, blocked, resting) and they go to other devices of
 * the user. Only entries never delivered to a reader are taken (XREADGROUP
 * ">" as a handback consumer: a crash midway leaves them pending, and the
 * next holder's XAUTOCLAIM picks them up), lane by lane, then the later set.
 * An entry a sender claimed stays with the device (its outcome may be
 * unknown; the in-doubt rules settle it when the device comes back). */
typedef struct handback_op {
    fleet *f;
    device *dv;
    char consumer[128];
    char (*lanes)[40];
    size_t nlanes, cur;
    bool new_entries; /* this lane's own pending entries are done: reading new ones */
} handback_op;

static void handback_next(handback_op *op);

static void handback_done(handback_op *op)
{
    op->dv->handing_back = false;
    free(op->lanes);
    free(op);
}

/* Re-packs a job without its device so the router picks one, and appends it. */
static int handback_job(wc_redis *r, fleet *f, Wacast__Job *job)
{
    char *chosen = job->device_id;
    job->device_id = "";
    size_t len = wacast__job__get_packed_size(job);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    wacast__job__pack(job, buf);
    job->device_id = chosen;
    const char *argv[] = {"XADD", WC_KEY_JOBS, "*", "j", (const char *)buf};
    size_t lens[] = {4, strlen(WC_KEY_JOBS), 1, 1, len};
    int rc = wc_redis_commandv(r, on_void, f, 5, argv, lens);
    if (rc == 0)
        f->m.handed_back++;
    free(buf);
    return rc;
}

static void on_handback_step(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    handback_op *op = arg;
    if (!reply_ok(op->f, reply)) {
        handback_done(op);
        return;
    }
    handback_next(op);
}

static void on_handback_read(wc_redis *r, redisReply *reply, void *arg)
{
    handback_op *op = arg;
    fleet *f = op->f;
    redisReply *entries = NULL;
    bool ok = reply_ok(f, reply);
    if (ok && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
        reply->element[0]->type == REDIS_REPLY_ARRAY && reply->element[0]->elements == 2)
        entries = reply->element[0]->element[1];
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0) {
        if (!op->new_entries && ok) {
            op->new_entries = true; /* then the lane's entries nobody read yet */
        } else {
            op->cur++; /* this lane is done (or unreadable): the next one */
            op->new_entries = false;
        }
        handback_next(op);
        return;
    }
    char lane[160];
    wc_key_lane(lane, sizeof lane, op->dv->id, op->lanes[op->cur]);
    const char **ack = calloc(entries->elements + 4, sizeof *ack);
    if (!ack)
        abort();
    ack[0] = "XACK";
    ack[1] = lane;
    ack[2] = WC_GROUP_SEND;
    int na = 3;
    for (size_t i = 0; i < entries->elements; i++) {
        redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
            continue;
        redisReply *fields = e->element[1];
        for (size_t k = 0; fields->type == REDIS_REPLY_ARRAY && k + 1 < fields->elements; k += 2) {
            if (strcmp(fields->element[k]->str, "j") != 0)
                continue;
            Wacast__Job *job = wacast__job__unpack(NULL, fields->element[k + 1]->len,
                                                   (const uint8_t *)fields->element[k + 1]->str);
            if (job) {
                (void)handback_job(r, f, job);
                wacast__job__free_unpacked(job, NULL);
            }
        }
        ack[na++] = e->element[0]->str;
    }
    const char **del = ack + 1; /* XDEL lane ids...: reuse the list */
    int rc = wc_redis_commandv(r, on_void, f, na, ack, NULL);
    if (rc == 0) {
        del[0] = "XDEL";
        del[1] = lane;
        rc = wc_redis_commandv(r, on_handback_step, op, na - 1, del, NULL);
    }
    free(ack);
    if (rc < 0)
        handback_done(op);
}

static void on_handback_later(wc_redis *r, redisReply *reply, void *arg)
{
    handback_op *op = arg;
    fleet *f = op->f;
    device *dv = op->dv;
    if (!reply_ok(f, reply) || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        handback_done(op);
        return;
    }
    char later[128], ttl[32];
    wc_key_later(later, sizeof later, dv->id);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    int rc = 0;
    /* The last member handed back moves the operation on (a message in doubt
     * stays); none: done. */
    size_t last = reply->elements;
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *m = reply->element[i];
        if (m->type == REDIS_REPLY_STRING && m->len > 0 && m->str[0] != '?')
            last = i;
    }
    if (last == reply->elements) {
        handback_done(op);
        return;
    }
    for (size_t i = 0; i <= last && rc == 0; i++) {
        redisReply *m = reply->element[i];
        if (m->type == REDIS_REPLY_STRING && m->len > 0 && m->str[0] == '?')
            continue;
        const char *nl = m->type == REDIS_REPLY_STRING ? memchr(m->str, '\n', m->len) : NULL;
        Wacast__Job *job = nl ? wacast__job__unpack(NULL, m->len - (size_t)(nl + 1 - m->str),
                                                    (const uint8_t *)nl + 1)
                              : NULL;
        if (job) {
            /* Routable again by anyone ("done" stays done). */
            char key[64];
            wc_key_msg(key, sizeof key, (long long)job->message_id);
            const char *mark[] = {"EVAL", WC_LUA_MARK, "1", key, "r:handback", ttl, "d"};
            rc |= wc_redis_commandv(r, on_void, f, 7, mark, NULL);
            rc |= handback_job(r, f, job);
            wacast__job__free_unpacked(job, NULL);
        }
        const char *zrem[] = {"ZREM", later, m->str};
        size_t zlen[] = {4, strlen(later), m->len};
        rc |= wc_redis_commandv(r, i == last ? on_handback_step : on_void,
                                i == last ? (void *)op : (void *)f, 3, zrem, zlen);
    }
    if (rc < 0)
        handback_done(op);
}

static void handback_next(handback_op *op)
{
    fleet *f = op->f;
    device *dv = op->dv;
    int rc;
    if (op->cur < op->nlanes) {
        char lane[160];
        wc_key_lane(lane, sizeof lane, dv->id, op->lanes[op->cur]);
        /* First what an earlier handback read and could not finish (its
         * Redis connection broke between the read and the acknowledgement:
         * those entries stay pending under the handback consumer, which no
         * device reads and no takeover claims while this sender holds the
         * device), then the entries nobody read. */
        rc = wc_redis_command(f->d.redis, on_handback_read, op,
                              "XREADGROUP GROUP %s %s COUNT 500 STREAMS %s %s", WC_GROUP_SEND,
                              op->consumer, lane, op->new_entries ? ">" : "0");
    } else {
        char later[128];
        wc_key_later(later, sizeof later, dv->id);
        rc = wc_redis_command(f->d.redis, on_handback_later, op, "ZRANGE %s 0 499", later);
    }
    if (rc < 0)
        handback_done(op);
}

static void on_handback_lanes(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    handback_op *op = arg;
    if (!reply_ok(op->f, reply) || reply->type != REDIS_REPLY_ARRAY) {
        handback_done(op);
        return;
    }
    op->lanes = calloc(reply->elements + 1, sizeof *op->lanes);
    if (!op->lanes)
        abort();
    for (size_t i = 0; i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING &&
            reply->element[i]->len < sizeof op->lanes[0])
            memcpy(op->lanes[op->nlanes++], reply->element[i]->str, reply->element[i]->len + 1);
    handback_next(op);
}

void handback_outbox(device *dv)
{
    if (dv->handing_back)
        return;
    handback_op *op = calloc(1, sizeof *op);
    if (!op)
        abort();
    op->f = dv->f;
    op->dv = dv;
    snprintf(op->consumer, sizeof op->consumer, "%s:handback", dv->f->cfg.c.instance_id);
    char lanes[128];
    wc_key_lanes(lanes, sizeof lanes, dv->id);
    if (wc_redis_command(dv->f->d.redis, on_handback_lanes, op, "SMEMBERS %s", lanes) < 0) {
        free(op);
        return;
    }
    dv->handing_back = true;
}

static void on_parked(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (dv->state != DEV_CLAIMING)
        return;
    if (!reply_ok(dv->f, reply)) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
        return;
    }
    drop_entry(dv);
}

/* A job of a paused campaign leaves the outbox for the campaign's paused
 * stream (the dispatcher brings it back on resume), so the device's other
 * campaigns are not held up behind it. */
void park_paused(device *dv, const uint8_t *payload, size_t len)
{
    fleet *f = dv->f;
    char key[128];
    wc_key_paused(key, sizeof key, dv->job->campaign_id);
    set_state(dv, DEV_CLAIMING);
    const char *argv[] = {"XADD", key, "*", "j", (const char *)payload};
    size_t lens[] = {4, strlen(key), 1, 1, len};
    if (wc_redis_commandv(f->d.redis, on_parked, dv, 5, argv, lens) < 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        return;
    }
    /* The index entry goes after the entry itself: the dispatcher forgets a
     * campaign whose paused stream it found empty, and an index entry added
     * before our XADD could be forgotten after it (the entry would then sit
     * unseen). Added after, it is seen with the entry, or re-added, or (when
     * both commands land between the dispatcher's XRANGE and its SREM) put
     * back by the dispatcher's XLEN check after the SREM (control.c). */
    if (wc_redis_command(f->d.redis, on_void_device, dv, "SADD wacast:paused:index %s",
                         dv->job->campaign_id) < 0)
        f->m.redis_errors++;
}

void lane_drained(device *dv, const char *campaign)
{
    char lane[160], lanes[128];
    wc_key_lane(lane, sizeof lane, dv->id, campaign);
    wc_key_lanes(lanes, sizeof lanes, dv->id);
    const char *argv[] = {"EVAL", LUA_LANE_DRAINED, "2", lane, lanes, campaign};
    if (wc_redis_commandv(dv->f->d.redis, on_void_device, dv, 6, argv, NULL) < 0)
        dv->f->m.redis_errors++;
}

static void on_holds(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    fleet *f = arg;
    f->holds_reading = false;
    if (!res) {
        f->m.pg_errors++;
        wc_warn("reading campaign holds: %s", err);
        return;
    }
    wc_map_free(&f->holds);
    wc_map_init(&f->holds);
    for (int i = 0; i < PQntuples(res); i++) {
        char kind = PQgetvalue(res, i, 1)[0];
        uintptr_t hold = kind == 'p' ? HOLD_PAUSED : kind == 'w' ? HOLD_WINDOW : HOLD_CANCELLED;
        if (wc_map_put(&f->holds, PQgetvalue(res, i, 0), (void *)hold) < 0)
            abort();
    }
}

/* Pause must stop sends within a second, whoever paused (dashboard or admin
 * API): the list is small and re-read often. Campaigns and sequences alike
 * (a step's lane is its sequence's id). */
void on_holds_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet *f = arg;
    if (f->holds_reading)
        return;
    if (wc_pg_query(f->d.pg,
                    "SELECT id, status::text FROM campaigns WHERE status = 'paused' OR (status = "
                    "'cancelled'"
                    " AND coalesce(finished_at, updated_at) > now() - interval '7 days')"
                    " UNION ALL SELECT id, 'window' FROM campaigns WHERE status IN ('triggered', "
                    "'processing') AND send_window_start IS NOT NULL"
                    " AND NOT wacast_in_window(send_window_start, send_window_end, time_zone)"
                    /* A sequence's lane is its id: paused, or outside its window. */
                    " UNION ALL SELECT id, 'paused' FROM sequences WHERE status = 'paused'"
                    " UNION ALL SELECT id, 'window' FROM sequences WHERE status IN ('active',"
                    " 'archived') AND send_window_start IS NOT NULL"
                    " AND NOT wacast_in_window(send_window_start, send_window_end, time_zone)",
                    0, NULL, on_holds, f) == 0)
        f->holds_reading = true;
}
