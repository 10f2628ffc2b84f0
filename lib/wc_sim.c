/* The simulated device: behaves like a provider with configurable latency and
 * failure rate, and keeps a record of every send in a Redis stream so tests
 * and benchmarks can prove exactly-once delivery, content and pacing from the
 * outside. Nothing in the engine special-cases it. The record and the pending
 * status webhooks go to env->sim_redis (WACAST_SIM_REDIS_URL) when set: a
 * provider does not forget what it sent when the engine's Redis loses data.
 *
 * Per-device settings (user_devices.settings), read when the device connects
 * (a changed setting reconnects it at its next rest):
 *   sim_latency_ms     provider latency
 *   sim_failure_rate   share of sends that fail (0..1)
 *   sim_fail_mode      "permanent" (the message fails, default) or
 *                      "transient" (the provider is unavailable: retried)
 *   sim_offline        true: the device cannot connect
 *   sim_blocked        true: every send is refused because the number is
 *                      restricted (like Meta's 131048/368): the device is blocked
 *   sim_logged_out     true: every send finds the account logged out */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <sodium.h>

#include "wc_keys.h"
#include "wc_log.h"
#include "wc_redis.h"
#include "wc_transport.h"

typedef struct sim_send sim_send;

static int record(sim_send *s, const wc_send_request *req, const char *sha, size_t media_len);
static void on_media(void *arg, const wc_media_got *got);

typedef struct sim_device {
    const wc_transport_env *env;
    char device_id[64];
    int latency_ms;
    double failure_rate;
    bool transient;     /* failures are retryable (provider unavailable) */
    bool blocked;       /* the number is restricted */
    bool logged_out;    /* the account was logged out */
    sim_send *inflight; /* one send at a time per device */
} sim_device;

struct sim_send {
    sim_device *dev;
    wc_send_cb *cb;
    void *arg;
    struct event *timer;
    wc_send_result res;
    bool recorded;
    bool orphaned; /* the device was closed while the record was in flight */
    /* While its prepared image is read: the wait and the request, copied. */
    wc_media_wait *media_wait;
    wc_send_request req;
    char *copies[4]; /* the request's strings, owned */
};

static void *sim_open(const wc_transport_env *env, const char *device_id, json_t *settings,
                      json_t *credentials, char *err, size_t errlen)
{
    (void)credentials;
    json_t *off = settings ? json_object_get(settings, "sim_offline") : NULL;
    if (off && json_is_true(off)) {
        snprintf(err, errlen, "simulated device is offline");
        return NULL;
    }
    sim_device *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->env = env;
    snprintf(d->device_id, sizeof d->device_id, "%s", device_id);
    d->latency_ms = env->sim_latency_ms;
    d->failure_rate = env->sim_failure_rate;
    json_t *lat = settings ? json_object_get(settings, "sim_latency_ms") : NULL;
    if (lat && json_is_number(lat))
        d->latency_ms = (int)json_number_value(lat);
    json_t *fr = settings ? json_object_get(settings, "sim_failure_rate") : NULL;
    if (fr && json_is_number(fr))
        d->failure_rate = json_number_value(fr);
    const char *mode =
        settings ? json_string_value(json_object_get(settings, "sim_fail_mode")) : NULL;
    d->transient = mode && !strcmp(mode, "transient");
    d->blocked = settings && json_is_true(json_object_get(settings, "sim_blocked"));
    d->logged_out = settings && json_is_true(json_object_get(settings, "sim_logged_out"));
    return d;
}

static void free_copies(sim_send *s)
{
    for (size_t i = 0; i < sizeof s->copies / sizeof s->copies[0]; i++)
        free(s->copies[i]);
    memset(s->copies, 0, sizeof s->copies);
}

static void finish(sim_send *s)
{
    sim_device *d = s->dev;
    if (d)
        d->inflight = NULL;
    if (s->timer)
        event_free(s->timer);
    free_copies(s);
    wc_send_cb *cb = s->cb;
    void *arg = s->arg;
    wc_send_result res = s->res;
    free(s);
    if (cb)
        cb(arg, &res);
}

static void on_latency(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    finish(arg);
}

static void on_recorded(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    sim_send *s = arg;
    if (s->orphaned) {
        free(s);
        return;
    }
    /* The XADD's id, or EXEC's replies with the XADD's id first. */
    bool ok = reply && (reply->type == REDIS_REPLY_STRING ||
                        (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
                         reply->element[0]->type == REDIS_REPLY_STRING));
    if (!ok) {
        /* The record is the device's "network": no record, no send. */
        s->res.outcome = WC_SEND_RETRY;
        /* Without the EXEC reply nobody knows whether the record was written. */
        s->res.outcome_unknown = reply == NULL;
        snprintf(s->res.error_code, sizeof s->res.error_code, "sim_unavailable");
        snprintf(s->res.error_message, sizeof s->res.error_message,
                 "simulated provider unreachable: %s",
                 reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "redis unavailable");
        s->res.provider_id[0] = '\0';
        finish(s);
        return;
    }
    s->recorded = true;
    int ms = s->dev->latency_ms;
    if (ms <= 0) {
        finish(s);
        return;
    }
    s->timer = evtimer_new(s->dev->env->base, on_latency, s);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!s->timer || evtimer_add(s->timer, &tv) < 0)
        finish(s);
}

static void on_queued(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)reply; /* "OK"/"QUEUED"; the EXEC reply says whether it all happened */
    (void)arg;
}

/* Appends the Meta-shaped status webhook body for one status. */
static char *callback_body(const char *device_id, const char *provider_id, const char *status,
                           const wc_send_request *req, long long ts_s)
{
    json_t *st = json_pack("{s:s, s:s, s:s, s:s, s:s}", "id", provider_id, "status", status,
                           "timestamp", "0", "recipient_id",
                           req->recipient[0] == '+' ? req->recipient + 1 : req->recipient,
                           "biz_opaque_callback_data", "");
    char ts[32], msg[32];
    snprintf(ts, sizeof ts, "%lld", ts_s);
    snprintf(msg, sizeof msg, "%" PRId64, req->message_id);
    json_object_set_new(st, "timestamp", json_string(ts));
    json_object_set_new(st, "biz_opaque_callback_data", json_string(msg));
    json_t *body =
        json_pack("{s:s, s:[{s:s, s:[{s:s, s:{s:s, s:{s:s, s:s}, s:[o]}}]}]}", "object",
                  "whatsapp_business_account", "entry", "id", "sim", "changes", "field", "messages",
                  "value", "messaging_product", "whatsapp", "metadata", "display_phone_number",
                  device_id, "phone_number_id", device_id, "statuses", st);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    return text;
}

/* A send refused before anything went out: its result (already in s->res)
 * is reported from the loop, never from inside send(). */
static int report_later(sim_send *s)
{
    s->timer = evtimer_new(s->dev->env->base, on_latency, s);
    struct timeval tv = {0, 0};
    if (!s->timer || evtimer_add(s->timer, &tv) < 0) {
        if (s->timer)
            event_free(s->timer);
        free(s);
        return -1;
    }
    s->recorded = true; /* nothing to wait for on close */
    s->dev->inflight = s;
    return 0;
}

static int sim_send_msg(void *inst, const wc_send_request *req, wc_send_cb *cb, void *arg)
{
    sim_device *d = inst;
    if (d->inflight)
        return -1;
    sim_send *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->dev = d;
    s->cb = cb;
    s->arg = arg;
    if (d->blocked || d->logged_out) {
        /* Refused before anything went out: no record, like the provider's
         * error reply. Reported from the loop, never from inside send(). */
        s->res.outcome = WC_SEND_RETRY;
        s->res.device_action = d->blocked ? WC_DEVICE_PAUSE : WC_DEVICE_LOGGED_OUT;
        snprintf(s->res.error_code, sizeof s->res.error_code, "%s",
                 d->blocked ? "sim_blocked" : "sim_logged_out");
        snprintf(s->res.error_message, sizeof s->res.error_message, "%s",
                 d->blocked ? "simulated number is restricted" : "simulated account is logged out");
        snprintf(s->res.device_reason, sizeof s->res.device_reason, "%s",
                 d->blocked ? "simulated number is restricted" : "simulated account is logged out");
        return report_later(s);
    }
    char sha[WC_MEDIA_SHA_LEN + 1];
    if (req->media_url && wc_media_ref(req->media_url, sha)) {
        /* The provider gets the image itself: read it, then record the send. */
        const wc_media_source *src = d->env->media;
        if (!src) {
            s->res.outcome = WC_SEND_FAIL;
            snprintf(s->res.error_code, sizeof s->res.error_code, "media_unavailable");
            snprintf(s->res.error_message, sizeof s->res.error_message,
                     "this sender has no store of prepared images");
            return report_later(s);
        }
        const char *fields[] = {req->campaign_id, req->device_id, req->recipient, req->content};
        for (size_t i = 0; i < 4; i++) {
            if (fields[i] && !(s->copies[i] = strdup(fields[i]))) {
                free_copies(s);
                free(s);
                return -1;
            }
        }
        s->req = *req;
        s->req.campaign_id = s->copies[0];
        s->req.device_id = s->copies[1];
        s->req.recipient = s->copies[2];
        s->req.content = s->copies[3];
        s->req.media_url = NULL;
        s->media_wait = src->get(src->ctx, sha, on_media, s);
        if (!s->media_wait) {
            free_copies(s);
            free(s);
            return -1;
        }
        d->inflight = s;
        return 0;
    }
    if (record(s, req, NULL, 0) < 0) {
        free(s);
        return -1;
    }
    d->inflight = s;
    return 0;
}

/* The provider's side of a send: its outcome drawn, then the record (and
 * the status webhooks) written; -1 when Redis took none of it. */
static int record(sim_send *s, const wc_send_request *req, const char *sha, size_t media_len)
{
    sim_device *d = s->dev;
    bool fail =
        d->failure_rate > 0 && (double)randombytes_uniform(1000000) < d->failure_rate * 1000000.0;
    if (fail && d->transient) {
        s->res.outcome = WC_SEND_RETRY;
        snprintf(s->res.error_code, sizeof s->res.error_code, "sim_unavailable");
        snprintf(s->res.error_message, sizeof s->res.error_message,
                 "simulated provider is unavailable (HTTP 503)");
    } else if (fail) {
        s->res.outcome = WC_SEND_FAIL;
        snprintf(s->res.error_code, sizeof s->res.error_code, "sim_failure");
        snprintf(s->res.error_message, sizeof s->res.error_message,
                 "simulated provider rejected the message");
    } else {
        s->res.outcome = WC_SEND_OK;
        snprintf(s->res.provider_id, sizeof s->res.provider_id, "sim-%" PRId64 "-%08x",
                 req->message_id, randombytes_random());
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    char ts_us[32], msg[32], maxlen[32], media_size[24];
    snprintf(ts_us, sizeof ts_us, "%" PRId64, now_us);
    snprintf(media_size, sizeof media_size, "%zu", media_len);
    snprintf(msg, sizeof msg, "%" PRId64, req->message_id);
    snprintf(maxlen, sizeof maxlen, "%ld", d->env->sim_record_maxlen);
    const char *argv[] = {"XADD",       WC_SIM_RECORD_KEY,
                          "MAXLEN",     "~",
                          maxlen,       "*",
                          "msg",        msg,
                          "campaign",   req->campaign_id,
                          "device",     d->device_id,
                          "to",         req->recipient,
                          "text",       req->content,
                          "sender",     d->env->instance_id,
                          "ts_us",      ts_us,
                          "ok",         fail ? "0" : "1",
                          "media",      sha,
                          "media_size", media_size};
    int argc = (int)(sizeof argv / sizeof argv[0]) - (sha ? 0 : 4);
    wc_redis *r = d->env->sim_redis ? d->env->sim_redis : d->env->redis;
    const char *cbs = d->env->sim_callbacks ? d->env->sim_callbacks : "";
    if (fail || !*cbs) {
        /* No webhook to go with it: the record alone, one command. */
        return wc_redis_commandv(r, on_recorded, s, argc, argv, NULL) < 0 ? -1 : 0;
    }
    /* The record and the provider's later webhooks happen together or not at
     * all; the commands are queued back to back on the one connection. */
    int rc = wc_redis_command(r, on_queued, NULL, "MULTI");
    rc |= wc_redis_commandv(r, on_queued, NULL, argc, argv, NULL);
    int step = 0;
    while (!fail && rc == 0 && *cbs) {
        char status[16];
        size_t n = strcspn(cbs, ",");
        snprintf(status, sizeof status, "%.*s", (int)(n < 15 ? n : 15), cbs);
        cbs += n + (cbs[n] == ',');
        if (strcmp(status, "sent") && strcmp(status, "delivered") && strcmp(status, "read"))
            continue;
        step++;
        char *body =
            callback_body(d->device_id, s->res.provider_id, status, req, (long long)ts.tv_sec);
        if (!body) {
            rc = -1;
            break;
        }
        char due[32];
        snprintf(due, sizeof due, "%" PRId64,
                 now_us / 1000 + (int64_t)step * d->env->sim_callback_delay_ms);
        rc |=
            wc_redis_command(r, on_queued, NULL, "ZADD %s %s %s", WC_KEY_SIM_CALLBACKS, due, body);
        free(body);
    }
    if (rc != 0) /* the connection dropped mid-way: MULTI is discarded with it */
        return -1;
    return wc_redis_command(r, on_recorded, s, "EXEC") < 0 ? -1 : 0;
}

static void on_media(void *arg, const wc_media_got *got)
{
    sim_send *s = arg;
    s->media_wait = NULL;
    if (got->error_code) {
        wc_media_result(&s->res, got);
        finish(s);
        return;
    }
    char sha[WC_MEDIA_SHA_LEN + 1];
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, got->bytes, got->len);
    sodium_bin2hex(sha, sizeof sha, digest, sizeof digest);
    if (record(s, &s->req, sha, got->len) < 0) {
        /* Nothing reached the "provider": surely not sent. */
        memset(&s->res, 0, sizeof s->res);
        s->res.outcome = WC_SEND_RETRY;
        snprintf(s->res.error_code, sizeof s->res.error_code, "sim_unavailable");
        snprintf(s->res.error_message, sizeof s->res.error_message,
                 "simulated provider unreachable: redis unavailable");
        finish(s);
    }
}

static void sim_close(void *inst)
{
    sim_device *d = inst;
    if (!d)
        return;
    sim_send *s = d->inflight;
    if (s && s->media_wait) {
        /* Still reading its image: nothing went out. */
        d->env->media->cancel(s->media_wait);
        s->media_wait = NULL;
        s->dev = NULL;
        memset(&s->res, 0, sizeof s->res);
        s->res.outcome = WC_SEND_RETRY;
        snprintf(s->res.error_code, sizeof s->res.error_code, "closed");
        finish(s);
    } else if (s) {
        s->dev = NULL;
        if (!s->recorded && !s->timer) {
            /* The Redis reply will still arrive; let it free the send. */
            s->orphaned = true;
            wc_send_cb *cb = s->cb;
            void *arg = s->arg;
            s->cb = NULL;
            wc_send_result res = {.outcome = WC_SEND_RETRY};
            snprintf(res.error_code, sizeof res.error_code, "closed");
            if (cb)
                cb(arg, &res);
        } else {
            /* Recorded: the message did go out. Report it now. */
            finish(s);
        }
    }
    free(d);
}

const wc_transport_ops wc_transport_sim = {
    .platform = "sim",
    .open = sim_open,
    .send = sim_send_msg,
    .close = sim_close,
};
