/* One device's state machine (device_step): wait until its next send time,
 * read one entry from its next lane (lanes taken in turn), consider it (hold,
 * defer, check or claim), send it through the transport, and act on the
 * result: retry with back-off, defer one recipient, hand the message back,
 * take the device down, or report. Also the transport's lifetime (open with
 * unsealed credentials, close, back-off while offline) and the pacing draw.
 * May touch: the device struct and its transport; Redis only to read lanes
 * (writes go through report.c and lanes.c). */
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

void set_state(device *dv, dev_state s)
{
    wc_debug("device %s: %s -> %s", dv->id, dev_state_names[dv->state], dev_state_names[s]);
    dv->state = s;
}

void arm_timer(device *dv, int64_t delay_us)
{
    if (delay_us < 0)
        delay_us = 0;
    struct timeval tv = {(time_t)(delay_us / 1000000), (suseconds_t)(delay_us % 1000000)};
    evtimer_add(dv->timer, &tv);
}

void free_job(device *dv)
{
    if (dv->job)
        wacast__job__free_unpacked(dv->job, NULL);
    dv->job = NULL;
    dv->entry_id[0] = '\0';
    dv->attempts = 0;
    dv->check_doubt = false;
}

void close_transport(device *dv)
{
    if (dv->transport) {
        void *t = dv->transport;
        dv->transport = NULL;
        /* A send in flight is answered from inside close() ("closed", in
         * doubt when the request had left): the device is being released or
         * lost, so that answer must not move it (on_sent ignores it); its
         * entry stays pending with its claim, for the in-doubt rules of the
         * next owner. */
        dv->closing = true;
        dv->ops->close(t);
        dv->closing = false;
    }
    if (dv->online)
        dv->f->online--;
    dv->online = false;
}

/* The device's credentials, unsealed, as JSON (NULL when it has none).
 * The plaintext lives only for the open() call. */
static json_t *unseal_credentials(device *dv, char *err, size_t errlen, bool *failed)
{
    fleet *f = dv->f;
    *failed = false;
    if (!dv->credentials_hex || !dv->credentials_hex[0])
        return NULL;
    if (!f->seal) {
        snprintf(err, errlen, "device has sealed credentials but WACAST_SECRET_KEY is not set");
        *failed = true;
        return NULL;
    }
    size_t hexlen = strlen(dv->credentials_hex), len = 0;
    uint8_t *sealed = malloc(hexlen / 2 + 1);
    if (!sealed || sodium_hex2bin(sealed, hexlen / 2 + 1, dv->credentials_hex, hexlen, NULL, &len,
                                  NULL) != 0) {
        free(sealed);
        snprintf(err, errlen, "device credentials are not valid sealed bytes");
        *failed = true;
        return NULL;
    }
    char *plain = NULL;
    size_t plainlen = 0;
    char why[160];
    if (wc_unseal(f->seal, dv->id, sealed, len, &plain, &plainlen, why, sizeof why) < 0) {
        free(sealed);
        snprintf(err, errlen, "cannot open device credentials: %s", why);
        *failed = true;
        return NULL;
    }
    free(sealed);
    json_t *creds = json_loadb(plain, plainlen, 0, NULL);
    wc_seal_plain_free(plain, plainlen);
    if (!creds || !json_is_object(creds)) {
        json_decref(creds);
        snprintf(err, errlen, "device credentials are not a JSON object");
        *failed = true;
        return NULL;
    }
    return creds;
}

/* Takes a device out of service for a while: offline (retried with growing
 * back-off) or blocked by the provider (retried after WACAST_BLOCKED_RETRY_S). */
static void device_down(device *dv, const char *status, const char *reason)
{
    fleet *f = dv->f;
    if (dv->state != DEV_OFFLINE || dv->open_backoff_ms == 0)
        wc_warn("device %s %s: %s", dv->id, status, reason);
    set_row(dv, status, reason);
    dv->disconnects += 1;
    health_update(dv);
    set_state(dv, DEV_OFFLINE);
    /* Its queued messages go to other devices of the user meanwhile. */
    handback_outbox(dv);
    if (!strcmp(status, "blocked") || !strcmp(status, "logged_out")) {
        dv->open_backoff_ms =
            (int)(f->cfg.blocked_retry_s * 1000 > 2000000000 ? 2000000000
                                                             : f->cfg.blocked_retry_s * 1000);
    } else {
        dv->open_backoff_ms = dv->open_backoff_ms ? dv->open_backoff_ms * 2 : 1000;
        if (dv->open_backoff_ms > 60000)
            dv->open_backoff_ms = 60000;
    }
    arm_timer(dv, (int64_t)dv->open_backoff_ms * 1000);
}

void open_transport(device *dv)
{
    fleet *f = dv->f;
    char err[256] = "";
    dv->ops = wc_transport_find(dv->platform);
    if (!dv->ops) {
        snprintf(err, sizeof err, "unknown platform '%s'", dv->platform);
    } else {
        bool bad_credentials = false;
        json_t *creds = unseal_credentials(dv, err, sizeof err, &bad_credentials);
        if (!bad_credentials) {
            json_error_t jerr;
            json_t *settings = dv->settings ? json_loads(dv->settings, 0, &jerr) : NULL;
            dv->transport = dv->ops->open(&f->tenv, dv->id, settings, creds, err, sizeof err);
            json_decref(settings);
        }
        json_decref(creds);
    }
    if (!dv->transport) {
        device_down(dv, "offline", err);
        return;
    }
    dv->open_backoff_ms = 0;
    dv->online = true;
    f->online++;
    /* Online again; a rest (daily cap, open breaker) keeps its reason. */
    set_row(dv, "online", dv->rest ? dv->row_reason : NULL);
    dv->pel_mode = true;
    set_state(dv, DEV_IDLE);
    device_step(dv);
}

static int64_t draw_delay_us(const device *dv, const Wacast__Job *job)
{
    uint32_t lo = dv->min_delay_ms, hi = dv->max_delay_ms;
    if (job && (job->min_delay_ms || job->max_delay_ms)) {
        lo = job->min_delay_ms;
        hi = job->max_delay_ms;
    }
    if (hi < lo)
        hi = lo;
    /* Uniform in [lo, hi] milliseconds, with microsecond resolution. */
    uint64_t span_us = (uint64_t)(hi - lo) * 1000;
    uint64_t r =
        span_us ? ((uint64_t)randombytes_random() << 32 | randombytes_random()) % (span_us + 1) : 0;
    return (int64_t)lo * 1000 + (int64_t)r;
}

static void on_sent(void *arg, const wc_send_result *sr)
{
    device *dv = arg;
    fleet *f = dv->f;
    if (dv->closing || dv->state != DEV_SENDING || !dv->job)
        return; /* closed under us: the release path cleans up */
    if (sr->device_action == WC_DEVICE_PAUSE || sr->device_action == WC_DEVICE_OFFLINE ||
        sr->device_action == WC_DEVICE_LOGGED_OUT) {
        /* The provider says this device cannot send (restricted, or its
         * credentials were rejected): the fault is the device's, not the
         * message's. The message goes back to the router for another device
         * of the user (no attempt used), and the device leaves service. */
        dv->down_status = sr->device_action == WC_DEVICE_PAUSE        ? "blocked"
                          : sr->device_action == WC_DEVICE_LOGGED_OUT ? "logged_out"
                                                                      : "offline";
        snprintf(dv->down_reason, sizeof dv->down_reason, "%s",
                 sr->device_reason[0] ? sr->device_reason : sr->error_message);
        dv->attempts--;
        handback_entry(dv);
        return;
    }
    Wacast__Result res = WACAST__RESULT__INIT;
    res.message_id = dv->job->message_id;
    res.campaign_id = dv->job->campaign_id;
    res.device_id = dv->id;
    res.at_us = wc_now_us();
    res.attempt = dv->attempts;
    res.error_code = (char *)sr->error_code;
    res.error_message = (char *)sr->error_message;
    res.provider_message_id = (char *)sr->provider_id;
    /* Health and breaker: a transient failure is the device's or provider's
     * trouble; a permanent one (bad number, template) is the message's. */
    bool transient = sr->outcome == WC_SEND_RETRY && !sr->recipient_only;
    if (sr->outcome == WC_SEND_OK || transient)
        health_send(dv, sr->outcome == WC_SEND_OK);
    if (sr->outcome == WC_SEND_OK) {
        dv->failures = 0;
        if (dv->probing || dv->breaker_rest_ms) {
            wc_info("device %s: probe succeeded; breaker closed", dv->id);
            f->m.breaker_closed += dv->probing;
            dv->probing = false;
            dv->breaker_rest_ms = 0;
            set_row(dv, "online", NULL);
        }
    } else if (transient) {
        if (dv->failures < UINT16_MAX)
            dv->failures++;
        if (dv->probing || dv->failures >= (uint32_t)f->cfg.breaker_failures)
            open_breaker(dv, sr);
    }
    if (sr->outcome == WC_SEND_OK) {
        res.status = WACAST__STATUS__STATUS_SENT;
        f->m.sent++;
        count_send(dv);
    } else if (sr->outcome == WC_SEND_RETRY && sr->recipient_only &&
               dv->attempts < (uint32_t)f->cfg.max_attempts) {
        /* Only this recipient must wait (e.g. Meta's 131056 pair limit): the
         * message goes to the back of the outbox with a not-before time and
         * the device goes on with its other messages. */
        f->m.retried++;
        int64_t wait = sr->retry_after_ms > 0 ? (int64_t)sr->retry_after_ms * 1000 : 6000000;
        wc_info("device %s: message %" PRId64 ": %s (%s); this recipient waits %" PRId64 " ms",
                dv->id, dv->job->message_id, sr->error_message, sr->error_code, wait / 1000);
        defer_entry(dv, wc_now_us() + wait);
        return;
    } else if (sr->outcome == WC_SEND_RETRY && dv->rest == REST_BREAKER && !sr->outcome_unknown) {
        /* The breaker just opened and this attempt surely did not go out: the
         * device is at fault, not the message. It goes to another device of
         * the user with the attempts it came with (this device's failures
         * are not charged to it, even its last allowed one). */
        f->m.retried++;
        handback_entry(dv);
        return;
    } else if (sr->outcome == WC_SEND_RETRY && dv->attempts < (uint32_t)f->cfg.max_attempts) {
        /* Keep the entry in our pending list; read it again after a back-off.
         * Only an attempt that surely did not go out may simply be resent. */
        if (!sr->outcome_unknown)
            dv->safe_retry_id = dv->job->message_id;
        f->m.retried++;
        int64_t backoff = (int64_t)f->cfg.retry_base_ms * 1000
                          << (dv->attempts - 1 > 16 ? 16 : dv->attempts - 1);
        backoff += randombytes_uniform((uint32_t)(backoff / 2 + 1));
        if (sr->retry_after_ms > 0 && (int64_t)sr->retry_after_ms * 1000 > backoff)
            backoff = (int64_t)sr->retry_after_ms * 1000;
        wc_info("device %s: message %" PRId64 " attempt %u: %s (%s); retrying in %" PRId64 " ms",
                dv->id, dv->job->message_id, dv->attempts, sr->error_message, sr->error_code,
                backoff / 1000);
        int64_t next = wc_now_us() + backoff;
        if (next > dv->next_at_us)
            dv->next_at_us = next;
        uint32_t attempts = dv->attempts;
        char entry[48];
        snprintf(entry, sizeof entry, "%s", dv->entry_id);
        wacast__job__free_unpacked(dv->job, NULL);
        dv->job = NULL;
        dv->attempts = attempts; /* kept for the re-read of the same entry */
        snprintf(dv->entry_id, sizeof dv->entry_id, "%s", entry);
        dv->pel_mode = true;
        set_state(dv, DEV_IDLE);
        device_step(dv);
        return;
    } else {
        res.status = WACAST__STATUS__STATUS_FAILED;
        f->m.failed++;
        if (sr->outcome == WC_SEND_RETRY) {
            /* Out of attempts: failed with the last error, and kept for a look. */
            f->m.dead_lettered++;
            char maxlen[32], msg[32], attempts[16];
            snprintf(maxlen, sizeof maxlen, "%ld", f->cfg.dead_maxlen);
            snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
            snprintf(attempts, sizeof attempts, "%u", dv->attempts);
            const char *argv[] = {"XADD",       WC_KEY_DEAD,
                                  "MAXLEN",     "~",
                                  maxlen,       "*",
                                  "msg",        msg,
                                  "campaign",   dv->job->campaign_id,
                                  "device",     dv->id,
                                  "attempts",   attempts,
                                  "error_code", sr->error_code,
                                  "error",      sr->error_message};
            if (wc_redis_commandv(f->d.redis, on_void_device, dv, 17, argv, NULL) < 0)
                f->m.redis_errors++;
        }
    }
    report(dv, &res);
}

void send_now(device *dv)
{
    fleet *f = dv->f;
    if (!dv->transport || wc_mono_us() > dv->lease_until_us) {
        /* No transport or lease in doubt: leave the entry pending and rest. */
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        return;
    }
    Wacast__Job *job = dv->job;
    wc_send_request req = {
        .message_id = job->message_id,
        .campaign_id = job->campaign_id,
        .device_id = dv->id,
        .recipient = job->recipient,
        .content = job->content,
        .media_url = job->media_url,
        .attempt = dv->attempts + 1,
    };
    dv->attempts++;
    dv->send_started_us = wc_mono_us();
    set_state(dv, DEV_SENDING);
    int rc = dv->ops->send(dv->transport, &req, on_sent, dv);
    /* Pacing runs from the start of one send to the start of the next; the
     * clock is read after the transport took the message, so the gap between
     * two sends as the provider sees them is never shorter than the delay. */
    dv->next_at_us = wc_now_us() + draw_delay_us(dv, job);
    if (rc < 0) {
        wc_send_result sr = {.outcome = WC_SEND_RETRY};
        snprintf(sr.error_code, sizeof sr.error_code, "transport_busy");
        snprintf(sr.error_message, sizeof sr.error_message,
                 "the transport could not start the send");
        on_sent(dv, &sr);
    }
    (void)f;
}

/* Decides what to do with a job just read: hold it, drop it, or claim it. */
static void consider(device *dv, const uint8_t *payload, size_t len)
{
    fleet *f = dv->f;
    int64_t now = wc_now_us();
    if (dv->job->not_before_us > now) {
        /* Not yet (a recipient's wait): into the later set until then. */
        defer_entry(dv, dv->job->not_before_us);
        return;
    }
    uintptr_t hold = (uintptr_t)wc_map_get(&f->holds, dv->job->campaign_id);
    if (hold == HOLD_PAUSED || hold == HOLD_WINDOW) {
        /* Paused, or outside its sending window: set aside until it resumes
         * or the window opens (the dispatcher brings it back). */
        if (hold == HOLD_WINDOW)
            f->m.held_window++;
        else
            f->m.held_paused++;
        park_paused(dv, payload, len);
        return;
    }
    if (hold == HOLD_CANCELLED) {
        f->m.held_cancelled++;
        report_status(dv, WACAST__STATUS__STATUS_CANCELLED, "cancelled",
                      "the campaign was cancelled");
        return;
    }
    /* Published before Redis lost data (a margin for clocks apart): the
     * markers may have gone back in time, PostgreSQL has not. */
    if (f->loss_at_us && dv->job->queued_at_us <= f->loss_at_us + 2000000) {
        dv->check_doubt = false;
        pg_check(dv);
        return;
    }
    claim(dv, false);
}

/* The device's lanes (one per campaign or sequence) take turns, each
 * weighted by the priority its jobs carry (the campaign's or sequence's,
 * clamped to 0..9): a lane keeps the turn for 1 + priority reads in a row
 * while it has entries, then the next lane reads. So a priority-5 follow-up
 * beside a priority-0 blast gets 6 of every 7 sends, and the blast still
 * gets its one: no lane starves. An empty lane passes the turn at once. */
static void lane_turn(device *dv, int32_t priority)
{
    uint32_t weight = 1 + (uint32_t)(priority < 0 ? 0 : priority > 9 ? 9 : priority);
    if (++dv->lane_burst >= weight) {
        dv->lane_cur++;
        dv->lane_burst = 0;
    }
}

static void on_read(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    fleet *f = dv->f;
    if (dv->state != DEV_READING)
        return;
    /* A lane removed since the list was read answers NOGROUP: not an error. */
    bool gone = reply && reply->type == REDIS_REPLY_ERROR && strstr(reply->str, "NOGROUP");
    if (gone || !reply_ok(f, reply)) {
        if (!gone) {
            /* The entry may have been delivered with the reply lost: look at
             * our pending lists first next time. */
            dv->pel_mode = true;
            set_state(dv, DEV_IDLE);
            arm_timer(dv, 500000);
            return;
        }
        dv->lanes_stale = true; /* the lane was removed (drained) meanwhile */
    }
    /* [[stream, [[id, [field, value, ...]], ...]]] or nil */
    redisReply *entries = NULL;
    if (!gone && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
        reply->element[0]->type == REDIS_REPLY_ARRAY && reply->element[0]->elements == 2)
        entries = reply->element[0]->element[1];
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0) {
        /* This lane has nothing (pending, or new): the next one. */
        dv->empty_run++;
        dv->lane_cur++;
        dv->lane_burst = 0;
        set_state(dv, DEV_IDLE);
        if (dv->empty_run < dv->nlanes) {
            device_step(dv);
            return;
        }
        dv->empty_run = 0;
        if (dv->pel_mode) {
            /* No pending entry in any lane: read new ones. */
            dv->pel_mode = false;
            device_step(dv);
            return;
        }
        /* Every lane is empty: wait for a wake-up (one with "+" when a lane
         * is new; the idle poll re-reads the set too). A wake-up that came
         * during this rotation may be for a lane already looked at: one more
         * rotation then. */
        if (dv->woken && dv->want) {
            dv->woken = false;
            device_step(dv);
            return;
        }
        if (!dv->want)
            device_release(dv);
        else if (dv->later_next_ms)
            arm_timer(dv, (dv->later_next_ms - wc_now_us() / 1000) * 1000);
        return;
    }
    dv->empty_run = 0;
    redisReply *e = entries->element[0];
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING) {
        lane_turn(dv, 0);
        wc_error("device %s: unexpected outbox entry shape", dv->id);
        set_state(dv, DEV_IDLE);
        return;
    }
    char entry_id[48];
    snprintf(entry_id, sizeof entry_id, "%s", e->element[0]->str);
    if (strcmp(entry_id, dv->entry_id) != 0)
        dv->attempts = 0; /* a different entry than the one we retried */
    snprintf(dv->entry_id, sizeof dv->entry_id, "%s", entry_id);
    redisReply *fields = e->element[1];
    Wacast__Job *job = NULL;
    const uint8_t *payload = NULL;
    size_t payload_len = 0;
    if (fields->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < fields->elements; i += 2) {
            redisReply *k = fields->element[i], *v = fields->element[i + 1];
            if (k->type == REDIS_REPLY_STRING && !strcmp(k->str, "j") &&
                v->type == REDIS_REPLY_STRING) {
                payload = (const uint8_t *)v->str;
                payload_len = v->len;
                job = wacast__job__unpack(NULL, v->len, payload);
            }
        }
    }
    lane_turn(dv, job ? job->priority : 0);
    if (!job) {
        /* A deleted entry (nil fields) or a corrupt payload: ack it away. */
        wc_error("device %s: outbox entry %s has no valid job; dropping it", dv->id, entry_id);
        dv->job = NULL;
        drop_entry(dv);
        return;
    }
    dv->job = job;
    if (job->attempts_made > dv->attempts)
        dv->attempts = job->attempts_made; /* a re-queued job keeps its count */
    consider(dv, payload, payload_len);
}

static void on_lanes(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (dv->state != DEV_READING)
        return;
    set_state(dv, DEV_IDLE);
    if (!reply_ok(dv->f, reply) || reply->type != REDIS_REPLY_ARRAY) {
        arm_timer(dv, 500000);
        return;
    }
    set_lanes(dv, reply);
    dv->lanes_stale = false;
    dv->empty_run = 0;
    device_step(dv);
}

/* Moves a resting device forward: release, wait, or read the next entry. */
void device_step(device *dv)
{
    fleet *f = dv->f;
    if (dv->state != DEV_IDLE && dv->state != DEV_PACING && dv->state != DEV_RESTING)
        return;
    if (!dv->want) {
        device_release(dv);
        return;
    }
    if (dv->down_status) {
        const char *status = dv->down_status;
        dv->down_status = NULL;
        close_transport(dv);
        device_down(dv, status, dv->down_reason);
        return;
    }
    if (dv->reopen) {
        dv->reopen = false;
        wc_info("device %s: settings changed; reconnecting its transport", dv->id);
        close_transport(dv);
        open_transport(dv);
        return;
    }
    if (!wc_redis_ready(f->d.redis) || !wc_epoch_settled(f->epoch)) {
        /* Not until the fence check after the (re)connect has said whether
         * Redis lost data (its markers could have gone back in time). */
        set_state(dv, DEV_IDLE);
        arm_timer(dv, wc_redis_ready(f->d.redis) ? 50000 : 500000);
        return;
    }
    if (resting(dv))
        return;
    int64_t wait = dv->next_at_us - wc_now_us();
    if (wait > 0) {
        set_state(dv, DEV_PACING);
        arm_timer(dv, wait);
        return;
    }
    int rc;
    set_state(dv, DEV_READING);
    if (dv->lanes_stale) {
        /* Which campaigns have messages for this device (a new one may). */
        char lanes[128];
        wc_key_lanes(lanes, sizeof lanes, dv->id);
        rc = wc_redis_command(f->d.redis, on_lanes, dv, "SMEMBERS %s", lanes);
    } else if (dv->later_next_ms && wc_now_us() / 1000 >= dv->later_next_ms) {
        /* Messages whose wait is over go back to their lanes first. */
        char later[128], lanes[128], prefix[128], now[32];
        wc_key_later(later, sizeof later, dv->id);
        wc_key_lanes(lanes, sizeof lanes, dv->id);
        wc_key_lane_prefix(prefix, sizeof prefix, dv->id);
        snprintf(now, sizeof now, "%" PRId64, wc_now_us() / 1000);
        const char *argv[] = {"EVAL", LUA_LATER_PROMOTE, "2",   later, lanes,
                              now,    WC_GROUP_SEND,     prefix};
        rc = wc_redis_commandv(f->d.redis, on_promoted, dv, 8, argv, NULL);
    } else if (dv->nlanes == 0) {
        /* Nothing queued for this device: wait for a wake-up. */
        dv->pel_mode = false;
        set_state(dv, DEV_IDLE);
        if (dv->later_next_ms)
            arm_timer(dv, (dv->later_next_ms - wc_now_us() / 1000) * 1000);
        return;
    } else {
        /* Round-robin over the device's campaigns: one entry from the next lane. */
        char lane[160];
        snprintf(dv->entry_lane, sizeof dv->entry_lane, "%s", dv->lanes[dv->lane_cur % dv->nlanes]);
        wc_key_lane(lane, sizeof lane, dv->id, dv->entry_lane);
        rc = wc_redis_command(f->d.redis, on_read, dv,
                              "XREADGROUP GROUP %s %s COUNT 1 STREAMS %s %s", WC_GROUP_SEND,
                              f->cfg.c.instance_id, lane, dv->pel_mode ? "0" : ">");
    }
    if (rc < 0) {
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
    }
}

void on_device_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    device *dv = arg;
    if (dv->state == DEV_OFFLINE) {
        if (!dv->want) {
            device_release(dv);
            return;
        }
        open_transport(dv);
        return;
    }
    if (dv->state == DEV_PACING || dv->state == DEV_RESTING)
        set_state(dv, DEV_IDLE);
    device_step(dv);
}
