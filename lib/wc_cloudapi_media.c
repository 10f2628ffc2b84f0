/* The cloudapi transport's prepared images (media:<sha256>): the id an image
 * has on a phone number id, found once for every send that waits for it.
 *
 * A send of media:<sha256> needs the image's id on its number. One ca_upload
 * per (number, image) on the bucket finds it, once, for every send waiting:
 * from memory; else from Redis (WC_KEY_CA_MEDIA_FMT, another sender's or an
 * earlier upload); else by uploading the bytes read through env->media,
 * under a lock in Redis (WC_KEY_CA_MEDIA_LOCK_FMT) so that senders holding
 * devices of one number upload it once: the others look for the id until
 * the lock's time is up. A busy upload holds a reference on its bucket.
 * Meta answering a send "invalid parameter" (100) for an id we uploaded
 * means it forgot the upload: the id is dropped here and in Redis and the
 * send uploads again, once. Every failure before the message request is a
 * retry (or a failure) that is never in doubt: nothing went out. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "wc_cloudapi.h"
#include "wc_cloudapi_private.h"
#include "wc_daemon.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_lua.h"
#include "wc_redis.h"
#include "wc_text.h"

#define CA_DEFAULT_MEDIA_ID_TTL_S (24 * 86400) /* Meta keeps an upload 30 days */
#define CA_BAD_PARAMETER 100         /* what Meta answers a send whose image id it does not know */
#define CA_UPLOAD_POLL_MS 200        /* how often a sender waiting on another's upload looks */
#define CA_UPLOAD_LOCK_EXTRA_MS 5000 /* the upload lock outlives an upload's time-out by this */

static void on_redis_void(wc_redis *r, redisReply *reply, void *arg);
static void lock_key(char *key, size_t len, const ca_bucket *b, const char *sha);

/* Ends a send on the next loop turn: the upload machinery may run inside
 * send(), and a callback must not. */
static void end_later(ca_send *s)
{
    if (wc_httpjson_finish_later(&s->hj) < 0) {
        wc_error("cloudapi device %s: cannot schedule a completion", s->dev->hj.device_id);
        abort(); /* the loop itself is broken */
    }
}

/* The message with its image id filled in, into the bucket's queue. */
static void send_with_id(ca_send *s, const char *media_id)
{
    json_t *msg = json_loads(s->hj.draft, 0, NULL);
    json_t *image = json_object_get(msg, "image");
    free(s->hj.body);
    s->hj.body = NULL;
    if (image && json_object_set_new(image, "id", json_string(media_id)) == 0)
        s->hj.body = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!s->hj.body) {
        wc_httpjson_set(&s->hj.res, WC_SEND_RETRY, "out_of_memory",
                        "out of memory building the request");
        s->hj.res.retry_after_ms = wc_httpjson_backoff_ms(s->hj.attempt);
        end_later(s);
        return;
    }
    snprintf(s->media_id, sizeof s->media_id, "%s", media_id);
    s->body_len = strlen(s->hj.body);
    ca_bucket_take(s->dev->bucket, s);
}

static void upload_unwait(ca_upload *u, ca_send *s)
{
    for (ca_send **pp = &u->waiters; *pp; pp = &(*pp)->unext) {
        if (*pp == s) {
            *pp = s->unext;
            break;
        }
    }
    s->unext = NULL;
    s->upload = NULL;
}

/* The upload's step is over: its waiters go on (with the id) or end (with
 * res); then the bucket may go. Nothing touches u after the release. */
static void upload_done(ca_upload *u, const wc_send_result *res)
{
    if (u->locked && u->redis) {
        /* Done or failed: the others look again (the id, or their turn). */
        char key[256];
        lock_key(key, sizeof key, u->bucket, u->sha);
        const char *argv[] = {"EVAL", WC_LUA_DEL_IF, "1", key, u->lock_token};
        (void)!wc_redis_commandv(u->redis, on_redis_void, NULL, 5, argv, NULL);
    }
    u->locked = false;
    u->wait_until_us = 0;
    ca_send *w = u->waiters;
    u->waiters = NULL;
    u->busy = false;
    ca_bucket *b = u->bucket;
    while (w) {
        ca_send *next = w->unext;
        w->unext = NULL;
        w->upload = NULL;
        if (res) {
            w->hj.res = *res;
            end_later(w);
        } else {
            send_with_id(w, u->media_id);
        }
        w = next;
    }
    ca_bucket_release(b);
}

static void upload_fail(ca_upload *u, wc_send_outcome outcome, const char *code, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

/* An upload that failed is not a send: nothing went out, never in doubt. */
static void upload_fail(ca_upload *u, wc_send_outcome outcome, const char *code, const char *fmt,
                        ...)
{
    wc_send_result r = {.outcome = outcome};
    snprintf(r.error_code, sizeof r.error_code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.error_message, sizeof r.error_message, fmt, ap);
    va_end(ap);
    if (outcome == WC_SEND_RETRY)
        r.retry_after_ms = wc_httpjson_backoff_ms(u->waiters ? u->waiters->hj.attempt : 0);
    wc_send_result_clean(&r);
    upload_done(u, &r);
}

static void on_redis_void(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)reply;
    (void)arg;
}

static void media_key(char *key, size_t len, const ca_bucket *b, const char *sha)
{
    snprintf(key, len, WC_KEY_CA_MEDIA_FMT, b->phone_number_id, sha);
}

static void lock_key(char *key, size_t len, const ca_bucket *b, const char *sha)
{
    snprintf(key, len, WC_KEY_CA_MEDIA_LOCK_FMT, b->phone_number_id, sha);
}

static long media_ttl_s(const ca_device *dev)
{
    return dev->media_id_ttl_s > 0 ? dev->media_id_ttl_s : CA_DEFAULT_MEDIA_ID_TTL_S;
}

static void on_uploaded(void *arg, const wc_httpc_resp *resp)
{
    ca_upload *u = arg;
    u->call = NULL;
    json_t *root = resp->error ? NULL : json_loadb(resp->body, resp->body_len, 0, NULL);
    const char *id = json_string_value(json_object_get(root, "id"));
    if (!resp->error && resp->status >= 200 && resp->status < 300 && id && *id &&
        strlen(id) < sizeof u->media_id && wc_text_is_token(id, strlen(id))) {
        /* Kept even when every send that wanted it has gone: the next one
         * uses it. */
        snprintf(u->media_id, sizeof u->media_id, "%s", id);
        u->id_until_us = wc_mono_us() + (int64_t)u->ttl_s * 1000000;
        char key[256], ex[24];
        media_key(key, sizeof key, u->bucket, u->sha);
        snprintf(ex, sizeof ex, "%ld", u->ttl_s);
        const char *argv[] = {"SET", key, u->media_id, "EX", ex};
        if (u->redis && wc_redis_commandv(u->redis, on_redis_void, NULL, 5, argv, NULL) < 0)
            wc_warn("cloudapi number %s: media id not stored in Redis (down)",
                    u->bucket->phone_number_id);
        json_decref(root);
        upload_done(u, NULL);
        return;
    }
    if (!u->waiters) {
        json_decref(root);
        upload_done(u, NULL);
        return;
    }
    ca_device *dev = u->waiters->dev;
    if (resp->error) {
        upload_fail(u, WC_SEND_RETRY, resp->timed_out ? "upload_timeout" : "upload_network",
                    "uploading the image to the Cloud API: %s", resp->error);
        return;
    }
    json_decref(root);
    /* Meta's error, read as a send's would be; only the outcome's kind is
     * kept: the message itself was never requested. */
    wc_send_result r;
    wc_cloudapi_classify_reply(resp->status, resp->body, resp->body_len, u->waiters->hj.attempt,
                               &r);
    if (r.outcome == WC_SEND_OK) {
        upload_fail(u, WC_SEND_RETRY, "upload_bad_reply",
                    "the Cloud API answered the image upload without a usable id");
        return;
    }
    r.outcome_unknown = false;
    char msg[sizeof r.error_message];
    memcpy(msg, r.error_message, sizeof msg);
    snprintf(r.error_message, sizeof r.error_message, "image upload: %.240s", msg);
    wc_send_result_clean(&r);
    if (r.device_action != WC_DEVICE_OK)
        wc_warn("cloudapi device %s: %s: %s", dev->hj.device_id, r.device_reason, r.error_message);
    upload_done(u, &r);
}

static void on_bytes(void *arg, const wc_media_got *got)
{
    ca_upload *u = arg;
    u->wait = NULL;
    if (!u->waiters) {
        upload_done(u, NULL);
        return;
    }
    if (got->error_code) {
        wc_send_result r;
        wc_media_result(&r, got);
        if (r.outcome == WC_SEND_RETRY && u->waiters)
            r.retry_after_ms = wc_httpjson_backoff_ms(u->waiters->hj.attempt);
        upload_done(u, &r);
        return;
    }
    ca_device *dev = u->waiters->dev; /* a wait without waiters is cancelled */
    wc_httpc_form *form = wc_httpc_form_new();
    if (!form || wc_httpc_form_add(form, "messaging_product", "whatsapp") < 0 ||
        wc_httpc_form_add(form, "type", "image/jpeg") < 0 ||
        wc_httpc_form_add_file(form, "file", "image.jpg", "image/jpeg", got->bytes, got->len) < 0) {
        wc_httpc_form_free(form);
        upload_fail(u, WC_SEND_RETRY, "out_of_memory", "out of memory building the upload");
        return;
    }
    const char *headers[] = {dev->auth_header, NULL};
    wc_httpc_req req = {
        .method = "POST",
        .url = dev->media_url,
        .headers = headers,
        .form = form,
        .timeout_ms = dev->hj.timeout_ms,
    };
    u->call = wc_httpc_start(dev->hj.http, &req, on_uploaded, u);
    wc_httpc_form_free(form);
    if (!u->call)
        upload_fail(u, WC_SEND_RETRY, "http_client", "could not start the image upload");
}

static void read_bytes(ca_upload *u)
{
    if (!u->waiters) {
        upload_done(u, NULL);
        return;
    }
    u->src = u->waiters->dev->media;
    u->ttl_s = media_ttl_s(u->waiters->dev);
    u->wait = u->src ? u->src->get(u->src->ctx, u->sha, on_bytes, u) : NULL;
    if (!u->wait)
        upload_fail(u, u->src ? WC_SEND_RETRY : WC_SEND_FAIL, "media_unavailable",
                    "the image media:%s cannot be read here", u->sha);
}

static void look_for_id(ca_upload *u);

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    look_for_id(arg);
}

static void on_locked(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    ca_upload *u = arg;
    if (!u->waiters) {
        upload_done(u, NULL);
        return;
    }
    if (reply && reply->type == REDIS_REPLY_STATUS) {
        u->locked = true; /* ours to upload */
        read_bytes(u);
        return;
    }
    struct timeval tv = {0, CA_UPLOAD_POLL_MS * 1000};
    if (reply && reply->type == REDIS_REPLY_NIL && wc_mono_us() < u->wait_until_us &&
        (u->poll || (u->poll = evtimer_new(u->bucket->base, on_poll, u))) &&
        evtimer_add(u->poll, &tv) == 0)
        return; /* another sender is uploading it: its id will be in Redis */
    /* Redis failed, or the other upload took longer than it may: our own. */
    read_bytes(u);
}

/* Takes the upload lock, or waits for the sender that holds it. */
static void take_lock(ca_upload *u)
{
    ca_device *dev = u->waiters->dev;
    long lock_ms = dev->hj.timeout_ms + CA_UPLOAD_LOCK_EXTRA_MS;
    if (!u->wait_until_us)
        u->wait_until_us = wc_mono_us() + (int64_t)lock_ms * 1000;
    char key[256], px[24];
    lock_key(key, sizeof key, u->bucket, u->sha);
    snprintf(px, sizeof px, "%ld", lock_ms);
    snprintf(u->lock_token, sizeof u->lock_token, "%s:%lld", dev->hj.device_id,
             (long long)wc_mono_us());
    const char *argv[] = {"SET", key, u->lock_token, "NX", "PX", px};
    if (wc_redis_commandv(u->redis, on_locked, u, 6, argv, NULL) < 0)
        read_bytes(u);
}

static void on_id_stored(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    ca_upload *u = arg;
    if (!u->waiters) {
        upload_done(u, NULL);
        return;
    }
    if (reply && reply->type == REDIS_REPLY_STRING && reply->len > 0 &&
        reply->len < sizeof u->media_id && strcmp(reply->str, u->stale) != 0 &&
        wc_text_is_token(reply->str, reply->len)) {
        /* Uploaded before, maybe by another sender. */
        memcpy(u->media_id, reply->str, reply->len + 1);
        u->id_until_us = wc_mono_us() + (int64_t)media_ttl_s(u->waiters->dev) * 1000000 / 2;
        upload_done(u, NULL);
        return;
    }
    if (reply && reply->type != REDIS_REPLY_ERROR)
        take_lock(u);
    else
        read_bytes(u); /* Redis failed: an upload of our own is still right */
}

/* The id in Redis (another sender's upload, or an earlier one). */
static void look_for_id(ca_upload *u)
{
    if (!u->waiters) {
        upload_done(u, NULL);
        return;
    }
    u->redis = u->waiters->dev->redis;
    char key[256];
    media_key(key, sizeof key, u->bucket, u->sha);
    const char *argv[] = {"GET", key};
    if (!u->redis || wc_redis_commandv(u->redis, on_id_stored, u, 2, argv, NULL) < 0)
        read_bytes(u); /* Redis down: an upload of our own is still right */
}

/* Starts finding the image's id on the number: Redis, else an upload. */
static void upload_start(ca_upload *u)
{
    u->busy = true;
    u->bucket->refs++; /* the bucket outlives the step */
    look_for_id(u);
}

static ca_upload *upload_for(ca_bucket *b, const char *sha)
{
    for (ca_upload *u = b->uploads; u; u = u->next) {
        if (strcmp(u->sha, sha) == 0)
            return u;
    }
    ca_upload *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->bucket = b;
    memcpy(u->sha, sha, sizeof u->sha);
    u->next = b->uploads;
    b->uploads = u;
    return u;
}

/* The send's image id on its number: known, or waited for. */
void ca_media_resolve(ca_send *s)
{
    ca_upload *u = upload_for(s->dev->bucket, s->sha);
    if (!u) {
        wc_httpjson_set(&s->hj.res, WC_SEND_RETRY, "out_of_memory", "out of memory");
        s->hj.res.retry_after_ms = wc_httpjson_backoff_ms(s->hj.attempt);
        end_later(s);
        return;
    }
    if (!u->busy && u->media_id[0] && wc_mono_us() < u->id_until_us) {
        send_with_id(s, u->media_id);
        return;
    }
    s->upload = u;
    s->unext = u->waiters;
    u->waiters = s;
    if (!u->busy)
        upload_start(u);
}

/* Meta did not know the id the send carried (expired, or gone): forget it
 * here and in Redis, and upload again once. */
bool ca_media_reupload(ca_send *s, const wc_httpc_resp *resp)
{
    if (!s->media_id[0] || s->reuploaded || resp->error || resp->status != 400)
        return false;
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    long code = ca_error_code_of(json_object_get(json_object_get(root, "error"), "code"));
    json_decref(root);
    if (code != CA_BAD_PARAMETER)
        return false;
    ca_bucket *b = s->dev->bucket;
    ca_upload *u = upload_for(b, s->sha);
    if (u && strcmp(u->media_id, s->media_id) == 0) {
        u->media_id[0] = '\0';
        snprintf(u->stale, sizeof u->stale, "%s", s->media_id);
    }
    char key[256];
    media_key(key, sizeof key, b, s->sha);
    const char *argv[] = {"EVAL", WC_LUA_DEL_IF, "1", key, s->media_id};
    if (s->dev->redis)
        (void)!wc_redis_commandv(s->dev->redis, on_redis_void, NULL, 5, argv, NULL);
    wc_warn("cloudapi device %s: media id %s refused; uploading the image again",
            s->dev->hj.device_id, s->media_id);
    s->reuploaded = true;
    s->media_id[0] = '\0';
    ca_media_resolve(s);
    return true;
}

void ca_media_leave(ca_send *s)
{
    ca_upload *u = s->upload;
    if (!u)
        return;
    upload_unwait(u, s);
    if (!u->waiters && u->wait) {
        /* Nobody wants the bytes any more. */
        u->src->cancel(u->wait);
        u->wait = NULL;
        upload_done(u, NULL);
    }
}

void ca_media_free(ca_upload *u)
{
    if (u->poll)
        event_free(u->poll);
    free(u);
}
