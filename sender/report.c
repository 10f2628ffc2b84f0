/* The idempotency marker of a message (wacast:msg:<id>) and the two scripts
 * around every send: the claim before it (lua/claim.lua: marker, recipient gap,
 * pacing floor) and the report after it (lua/report.lua:
 * marker "d:" + result, results stream, ack, next send time, day count, in one
 * script). A claim that finds another state acts on it here: a known outcome
 * is replayed, a recipient gap defers, a claim in doubt goes to recovery.c.
 * May touch: markers, the results stream, the device's lane entry in hand. */
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

/* A claim answered later than this is not followed by a send (the message is
 * read again and claimed anew): the floor the claim set assumes the send
 * follows within it. */
#define CLAIM_SEND_MAX_US 1000000

/* A result that only acknowledges the entry (nothing to report). */
void drop_entry(device *dv)
{
    Wacast__Result res = WACAST__RESULT__INIT;
    report(dv, &res);
}

void report_status(device *dv, Wacast__Status status, const char *code, const char *message)
{
    Wacast__Result res = WACAST__RESULT__INIT;
    res.message_id = dv->job->message_id;
    res.campaign_id = dv->job->campaign_id;
    res.device_id = dv->id;
    res.at_us = wc_now_us();
    res.attempt = dv->attempts;
    res.status = status;
    res.error_code = (char *)code;
    res.error_message = (char *)message;
    report(dv, &res);
}

/* Acts on the marker's state as the claim script returned it. */
static void on_marker(device *dv, const char *v, size_t len)
{
    fleet *f = dv->f;
    if (len >= 2 && v[0] == 'g' && v[1] == ':') {
        /* The device sent to this number less than its recipient gap ago:
         * this message waits in the later set; the device goes on. */
        long long pttl = strtoll(v + 2, NULL, 10);
        f->m.recipient_waits++;
        defer_entry(dv, wc_now_us() + (pttl > 0 ? pttl : 1) * 1000);
        return;
    }
    if (len >= 2 && v[0] == 'd') {
        /* Outcome already known: report it again (the sink is idempotent) and ack. */
        char msg[32];
        snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
        wc_map_del(&f->doubt_seen, msg);
        Wacast__Result *res = wacast__result__unpack(NULL, len - 2, (const uint8_t *)v + 2);
        f->m.replayed++;
        if (res) {
            report(dv, res);
            wacast__result__free_unpacked(res, NULL);
            return;
        }
        drop_entry(dv);
        return;
    }
    char mine[160], same_device[64];
    snprintf(mine, sizeof mine, "c:%s:%s:", dv->id, f->cfg.c.instance_id);
    snprintf(same_device, sizeof same_device, "c:%s:", dv->id);
    bool own = len > strlen(mine) && memcmp(v, mine, strlen(mine)) == 0;
    if (own && dv->done_id == dv->job->message_id && dv->done_result) {
        /* We sent it and its report was lost: report again, never resend. */
        Wacast__Result *res = wacast__result__unpack(NULL, dv->done_len, dv->done_result);
        f->m.replayed++;
        if (res) {
            report(dv, res);
            wacast__result__free_unpacked(res, NULL);
            return;
        }
    }
    if (own && dv->safe_retry_id == dv->job->message_id) {
        claim(dv, true); /* our own attempt that surely did not go out: send again */
        return;
    }
    /* Any other claim on this device (a dead sender's, or ours with an unknown
     * outcome) is in doubt. */
    if (len > strlen(same_device) && memcmp(v, same_device, strlen(same_device)) == 0) {
        /* A sender died after handing this message to the transport and
         * before recording the outcome. PostgreSQL may know it already (the
         * status sink or a webhook got there): look there first. */
        const char *colon = memrchr(v, ':', len);
        dv->doubt_claimed_ms = colon ? strtoll(colon + 1, NULL, 10) : 0;
        char msg[32];
        snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
        if (!wc_map_get(&f->doubt_seen, msg)) {
            f->m.in_doubt++;
            wc_warn("device %s: message %" PRId64 " in doubt (%.*s); waiting for its status",
                    dv->id, dv->job->message_id, (int)len, v);
        }
        dv->check_doubt = true;
        pg_check(dv);
        return;
    }
    /* Another device holds this message (a duplicate entry): drop our copy. */
    f->m.duplicates_dropped++;
    drop_entry(dv);
}

static void on_claimed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    fleet *f = dv->f;
    if (dv->state != DEV_CLAIMING)
        return;
    if (!reply_ok(f, reply)) {
        /* The claim may have landed with its reply lost (Redis went away),
         * but nothing was sent: our own claim is no doubt when read again. */
        dv->safe_retry_id = dv->job->message_id;
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
        return;
    }
    if (reply->type == REDIS_REPLY_STATUS) {
        if (wc_mono_us() - dv->claimed_us > CLAIM_SEND_MAX_US) {
            /* Too late for the floor the claim set: not sent, so claim again. */
            f->m.late_claims++;
            dv->safe_retry_id = dv->job->message_id;
            dv->pel_mode = true;
            free_job(dv);
            set_state(dv, DEV_IDLE);
            arm_timer(dv, 0);
            return;
        }
        send_now(dv);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
        return;
    }
    on_marker(dv, reply->str, reply->len);
}

/* Claims the message's marker for this device and sender; force overrides an
 * abandoned claim (after the in-doubt wait). */
void claim(device *dv, bool force)
{
    fleet *f = dv->f;
    char key[64], val[192], ttl[32], rkey[192], gap[32], msg[32], next[128], floor_us[32];
    int64_t now_us = wc_now_us();
    dv->claimed_us = wc_mono_us();
    wc_key_msg(key, sizeof key, (long long)dv->job->message_id);
    snprintf(val, sizeof val, "c:%s:%s:%" PRId64, dv->id, f->cfg.c.instance_id, now_us / 1000);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    wc_key_recipient(rkey, sizeof rkey, dv->id, dv->job->recipient);
    wc_key_next(next, sizeof next, dv->id);
    snprintf(gap, sizeof gap, "%u", dv->gap_ms);
    snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
    snprintf(floor_us, sizeof floor_us, "%" PRId64,
             dv->min_delay_ms ? now_us + CLAIM_SEND_MAX_US + (int64_t)dv->min_delay_ms * 1000 : 0);
    set_state(dv, DEV_CLAIMING);
    bool gapped = dv->gap_ms > 0 && dv->job->recipient[0];
    const char *argv[12];
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = LUA_CLAIM;
    argv[argc++] = gapped ? "3" : "2";
    argv[argc++] = key;
    argv[argc++] = next;
    if (gapped)
        argv[argc++] = rkey;
    argv[argc++] = val;
    argv[argc++] = ttl;
    argv[argc++] = force ? "d" : "cd";
    argv[argc++] = gap;
    argv[argc++] = msg;
    argv[argc++] = floor_us;
    if (wc_redis_commandv(f->d.redis, on_claimed, dv, argc, argv, NULL) < 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
    }
}

void on_report_reply(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (!reply_ok(dv->f, reply))
        dv->reply_failed = true;
    if (--dv->pending_replies > 0)
        return;
    if (dv->state != DEV_REPORTING)
        return;
    if (dv->reply_failed)
        dv->pel_mode = true; /* the entry may still be pending: re-read it */
    free_job(dv);
    set_state(dv, DEV_IDLE);
    device_step(dv);
}

/* Records an outcome. A result with status UNSPECIFIED only acknowledges
 * (duplicate or corrupt entry). */
void report(device *dv, const Wacast__Result *res)
{
    fleet *f = dv->f;
    wc_redis *rc = f->d.redis;
    set_state(dv, DEV_REPORTING);
    dv->pending_replies = 0;
    dv->reply_failed = false;
    char lane[160], key[64], ttl[32], next_key[128], next_val[32], day_key[128];
    wc_key_lane(lane, sizeof lane, dv->id, dv->entry_lane);
    wc_key_next(next_key, sizeof next_key, dv->id);
    wc_key_day(day_key, sizeof day_key, dv->id, dv->day[0] ? dv->day : "-");
    snprintf(next_val, sizeof next_val, "%" PRId64, dv->next_at_us);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    wc_key_msg(key, sizeof key, (long long)res->message_id);
    uint8_t *buf = NULL;
    size_t len = 0;
    if (res->status != WACAST__STATUS__STATUS_UNSPECIFIED) {
        len = wacast__result__get_packed_size(res);
        buf = malloc(len + 2);
        if (!buf)
            abort();
        buf[0] = 'd';
        buf[1] = ':';
        wacast__result__pack(res, buf + 2);
        /* Kept until the next outcome: if this report is lost, the re-read
         * entry replays it instead of sending again. */
        free(dv->done_result);
        dv->done_result = malloc(len ? len : 1);
        if (!dv->done_result)
            abort();
        memcpy(dv->done_result, buf + 2, len);
        dv->done_len = len;
        dv->done_id = res->message_id;
        len += 2;
    }
    const char *count = dv->count_in_report ? "1" : "0";
    const char *quiet = dv->report_quiet ? "1" : "0";
    dv->count_in_report = false;
    dv->report_quiet = false;
    const char *argv[] = {"EVAL",   LUA_REPORT,     "5",
                          key,      WC_KEY_RESULTS, lane,
                          next_key, day_key,        buf ? (const char *)buf : "",
                          ttl,      WC_GROUP_SEND,  dv->entry_id,
                          next_val, count,          quiet};
    size_t lens[] = {4,
                     strlen(LUA_REPORT),
                     1,
                     strlen(key),
                     strlen(WC_KEY_RESULTS),
                     strlen(lane),
                     strlen(next_key),
                     strlen(day_key),
                     len,
                     strlen(ttl),
                     strlen(WC_GROUP_SEND),
                     strlen(dv->entry_id),
                     strlen(next_val),
                     1,
                     1};
    int rcode = wc_redis_commandv(rc, on_report_reply, dv, 15, argv, lens);
    dv->pending_replies += rcode == 0;
    free(buf);
    if (res->status == WACAST__STATUS__STATUS_SENT && dv->gap_ms && dv->job &&
        dv->job->message_id == res->message_id && dv->job->recipient[0]) {
        /* The recipient's gap runs from the send (the claim started it). */
        char rkey[192];
        wc_key_recipient(rkey, sizeof rkey, dv->id, dv->job->recipient);
        if (wc_redis_command(rc, on_void_device, dv, "SET %s %" PRId64 " PX %u", rkey,
                             res->message_id, dv->gap_ms) < 0)
            f->m.redis_errors++;
    }
    if (rcode != 0)
        dv->reply_failed = true;
    if (dv->pending_replies == 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
    }
}
