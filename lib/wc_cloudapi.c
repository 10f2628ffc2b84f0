/* Transport `cloudapi`: Meta's WhatsApp Business Cloud API.
 *
 * A send is one POST {base_url}/{api_version}/{phone_number_id}/messages with
 * a bearer token and a JSON body that validates against Meta's OpenAPI
 * schemas (text, image by link or uploaded media id, template). The outcome
 * is keyed on the error's numeric code, never its wording, and each code gets
 * the handling Meta documents (see wc_cloudapi_classify_reply()). A send is
 * in doubt (outcome_unknown) whenever the request may have reached Meta and
 * no answer of Meta's came back: a reset, an empty or cut reply, a time-out,
 * a proxy's 5xx, a close with the request out.
 *
 * Throughput: Meta caps messages per second per business number, and several
 * device rows may use one number, so every instance on this loop that uses a
 * phone_number_id draws from one token bucket (settings.mps per second, a
 * tenth of a second's worth of burst). A send over the ceiling waits on the
 * bucket's timer rather than firing and collecting 130429s. The bucket is per
 * process: devices of one number spread over several senders each get the
 * full rate (130429 then slows each of them down).
 *
 * settings:    {"phone_number_id": "1234567890" (required),
 *               "base_url": "https://graph.facebook.com", "api_version": "v23.0",
 *               "mps": 80, "timeout_ms": 15000}
 * credentials: {"access_token": "EAAG..."} (never logged)
 *
 * Content: plain text; an image when media_url is set (a URL is sent as
 * "link", "media:<id>" as an uploaded media "id"; the text becomes the
 * caption; "media:<sha256>", a prepared image of ours, is uploaded once per
 * phone number id and sent by the id Meta gives it, see "prepared images"
 * below); a template when the content is "template:" followed by JSON
 * {"name": "...", "language": "en_US" or {"code": "en_US"}, "components": [...]}.
 * The wacast message id goes out as biz_opaque_callback_data, so status
 * webhooks can be matched even if a response was lost. */
#include "wc_cloudapi.h"

#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>
#include <sodium.h>

#include "wc_daemon.h"
#include "wc_httpc.h"
#include "wc_httpjson.h"
#include "wc_keys.h"
#include "wc_redis.h"
#include "wc_log.h"
#include "wc_origin.h"
#include "wc_text.h"
#include "wc_transport.h"

#define CA_DEFAULT_BASE_URL "https://graph.facebook.com"
#define CA_DEFAULT_API_VERSION "v23.0"
#define CA_DEFAULT_MPS 80.0
#define CA_MAX_MPS 10000.0
#define CA_DEFAULT_TIMEOUT_MS 15000
#define CA_TEMPLATE_PREFIX "template:"
#define CA_MEDIA_ID_PREFIX "media:"

#define CA_DEFAULT_MEDIA_ID_TTL_S (24 * 86400) /* Meta keeps an upload 30 days */
#define CA_MEDIA_ID_MAX 64
#define CA_BAD_PARAMETER 100         /* what Meta answers a send whose image id it does not know */
#define CA_UPLOAD_POLL_MS 200        /* how often a sender waiting on another's upload looks */
#define CA_UPLOAD_LOCK_EXTRA_MS 5000 /* the upload lock outlives an upload's time-out by this */

#define CA_PAIR_RETRY_MS 6000         /* ~1 message per 6 s per recipient */
#define CA_ECOSYSTEM_RETRY_MS 3600000 /* 131049: Meta asks for a much later retry */

typedef struct ca_bucket ca_bucket;
typedef struct ca_send ca_send;
typedef struct ca_upload ca_upload;

typedef struct ca_device {
    wc_httpjson_device hj; /* first: what every HTTP + JSON device holds */
    char phone_number_id[64];
    char *messages_url;
    char *media_url;   /* POST here uploads an image */
    char *auth_header; /* "Authorization: Bearer ..."; wiped on close */
    ca_bucket *bucket;
    struct wc_redis *redis;       /* where media ids are shared (env->redis) */
    const wc_media_source *media; /* prepared images (env->media) */
    long media_id_ttl_s;
} ca_device;

struct ca_send {
    wc_httpjson_send hj; /* first: the shared send life cycle; hj.body is the JSON body */
    ca_device *dev;
    ca_send *qnext; /* the bucket's queue */
    bool queued;
    size_t body_len;
    /* A prepared image (media:<sha256>): hj.draft is the message without its
     * image id; the request is built once the id on the number is known. */
    char sha[WC_MEDIA_SHA_LEN + 1];
    ca_upload *upload; /* waiting on it (unext links its waiters) */
    ca_send *unext;
    char media_id[CA_MEDIA_ID_MAX]; /* the id it went out with */
    bool reuploaded;                /* Meta refused an id once: no second time */
};

/* One prepared image on one number (bucket): the media id it has there, and
 * the one look-up or upload in flight that every send of it waits for. */
struct ca_upload {
    ca_upload *next; /* the bucket's */
    ca_bucket *bucket;
    char sha[WC_MEDIA_SHA_LEN + 1];
    char media_id[CA_MEDIA_ID_MAX]; /* "" until known */
    int64_t id_until_us;            /* monotonic: reused until then */
    char stale[CA_MEDIA_ID_MAX];    /* an id Meta refused: never taken from Redis again */
    bool busy;                      /* holds a reference on the bucket */
    ca_send *waiters;
    wc_media_wait *wait;        /* reading the bytes */
    const wc_media_source *src; /* ...from there */
    wc_httpc_call *call;        /* the upload */
    /* Across senders: one uploads (holding the lock in Redis), the others
     * look for the id every CA_UPLOAD_POLL_MS until the lock's time is up. */
    struct wc_redis *redis; /* the first waiter's, for this step */
    bool locked;            /* this sender holds the lock */
    int64_t wait_until_us;  /* monotonic: stop waiting for another's upload (0: not waiting) */
    struct event *poll;
};

/* One per (base_url, phone_number_id) on an event base. */
struct ca_bucket {
    ca_bucket *next;
    int refs;
    struct event_base *base;
    char *key;
    double mps;
    double burst;
    double tokens;
    int64_t refilled_us;
    int64_t paused_until_us; /* after a 130429 every send on the number waits */
    int throttle_streak;
    ca_send *qhead, *qtail;
    struct event *timer;
    char phone_number_id[64];
    ca_upload *uploads;
};

static ca_bucket *buckets;

static void post(ca_send *s);
static bool reupload(ca_send *s, const wc_httpc_resp *resp);

/* ---- token bucket ------------------------------------------------------------------------ */

static double burst_for(double mps)
{
    double b = floor(mps / 10.0);
    return b < 1.0 ? 1.0 : b;
}

static void bucket_refill(ca_bucket *b, int64_t now)
{
    if (now > b->refilled_us) {
        b->tokens += (double)(now - b->refilled_us) * b->mps / 1e6;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->refilled_us = now;
    }
}

static void bucket_arm(ca_bucket *b, int64_t now)
{
    if (!b->qhead)
        return;
    int64_t wait_us = 0;
    if (b->tokens < 1.0)
        wait_us = (int64_t)ceil((1.0 - b->tokens) * 1e6 / b->mps);
    if (b->paused_until_us - now > wait_us)
        wait_us = b->paused_until_us - now;
    if (wait_us < 1)
        wait_us = 1;
    struct timeval tv = {(time_t)(wait_us / 1000000), (suseconds_t)(wait_us % 1000000)};
    evtimer_add(b->timer, &tv);
}

static void on_bucket_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ca_bucket *b = arg;
    int64_t now = wc_mono_us();
    bucket_refill(b, now);
    /* post() never calls back synchronously, so the queue cannot change under us. */
    while (b->qhead && now >= b->paused_until_us && b->tokens >= 1.0) {
        ca_send *s = b->qhead;
        b->qhead = s->qnext;
        if (!b->qhead)
            b->qtail = NULL;
        s->qnext = NULL;
        s->queued = false;
        b->tokens -= 1.0;
        post(s);
    }
    bucket_arm(b, now);
}

static ca_bucket *bucket_acquire(struct event_base *base, const char *key, double mps)
{
    for (ca_bucket *b = buckets; b; b = b->next) {
        if (b->base == base && strcmp(b->key, key) == 0) {
            if (mps < b->mps) {
                /* Devices disagree on the ceiling: the lowest wins. */
                b->mps = mps;
                b->burst = burst_for(mps);
                if (b->tokens > b->burst)
                    b->tokens = b->burst;
            }
            b->refs++;
            return b;
        }
    }
    ca_bucket *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->key = strdup(key);
    b->timer = evtimer_new(base, on_bucket_timer, b);
    if (!b->key || !b->timer) {
        free(b->key);
        if (b->timer)
            event_free(b->timer);
        free(b);
        return NULL;
    }
    b->base = base;
    b->mps = mps;
    b->burst = burst_for(mps);
    b->tokens = b->burst;
    b->refilled_us = wc_mono_us();
    b->refs = 1;
    b->next = buckets;
    buckets = b;
    return b;
}

static void bucket_release(ca_bucket *b)
{
    if (!b || --b->refs > 0)
        return;
    /* Nothing is in flight on an upload here: a busy one holds a reference. */
    while (b->uploads) {
        ca_upload *u = b->uploads;
        b->uploads = u->next;
        if (u->poll)
            event_free(u->poll);
        free(u);
    }
    for (ca_bucket **pp = &buckets; *pp; pp = &(*pp)->next) {
        if (*pp == b) {
            *pp = b->next;
            break;
        }
    }
    event_free(b->timer);
    free(b->key);
    free(b);
}

/* Sends at once when a token is free and nobody waits; otherwise queues. */
static void bucket_take(ca_bucket *b, ca_send *s)
{
    int64_t now = wc_mono_us();
    bucket_refill(b, now);
    if (!b->qhead && now >= b->paused_until_us && b->tokens >= 1.0) {
        b->tokens -= 1.0;
        post(s);
        return;
    }
    s->queued = true;
    s->qnext = NULL;
    if (b->qtail)
        b->qtail->qnext = s;
    else
        b->qhead = s;
    b->qtail = s;
    bucket_arm(b, now);
}

static void bucket_dequeue(ca_bucket *b, ca_send *s)
{
    ca_send *prev = NULL;
    for (ca_send *q = b->qhead; q; prev = q, q = q->qnext) {
        if (q != s)
            continue;
        if (prev)
            prev->qnext = q->qnext;
        else
            b->qhead = q->qnext;
        if (b->qtail == q)
            b->qtail = prev;
        break;
    }
    s->queued = false;
    s->qnext = NULL;
}

/* 130429: the number is over its rate. Hold every send on it for a while,
 * growing with repeated throttles; returns the pause in ms. */
static int bucket_throttled(ca_bucket *b, int min_ms)
{
    int64_t now = wc_mono_us();
    /* Many sends in flight come back throttled together: count one streak
     * step per pause, not per response. 1 s, 2 s, 4 s, ... up to 60 s. */
    if (now >= b->paused_until_us && b->throttle_streak < 7)
        b->throttle_streak++;
    int ms = 1000 << (b->throttle_streak - 1);
    if (ms < min_ms)
        ms = min_ms;
    if (ms > WC_HTTPJSON_MAX_BACKOFF_MS)
        ms = WC_HTTPJSON_MAX_BACKOFF_MS;
    int64_t until = now + (int64_t)ms * 1000;
    if (until > b->paused_until_us)
        b->paused_until_us = until;
    b->tokens = 0;
    b->refilled_us = now;
    return ms;
}

/* ---- outcome ----------------------------------------------------------------------------- */

static void set_device(wc_send_result *r, wc_device_action action, const char *reason)
{
    r->device_action = action;
    snprintf(r->device_reason, sizeof r->device_reason, "%s", reason);
}

enum ca_kind {
    CA_FAIL,      /* permanent for this message */
    CA_TRANSIENT, /* retry with back-off */
    CA_THROTTLE,  /* number over its rate: retry, slow the number down */
    CA_PAIR,      /* too many to this recipient: retry this one later */
    CA_LATER,     /* retry much later (hours) */
    CA_SPAM,      /* fail, and pause the device */
    CA_ACCOUNT,   /* account blocked: retry later, pause the device */
    CA_AUTH,      /* token or permission: retry, take the device offline */
};

static enum ca_kind kind_of(long code, long http_status)
{
    switch (code) {
    case 130429: /* rate limit hit (throughput) */
    case 4:      /* app-level API call limit */
    case 80007:  /* WABA rate limit */
        return CA_THROTTLE;
    case 131056: /* pair rate limit: same business number to same recipient */
        return CA_PAIR;
    case 131049: /* ecosystem engagement limit: "retry later", in practice hours */
        return CA_LATER;
    case 131048: /* spam rate limit */
    case 368:    /* temporarily blocked for policy violations */
        return CA_SPAM;
    case 131031: /* business account locked */
    case 131042: /* business eligibility (payment) issue */
        return CA_ACCOUNT;
    case 0:   /* AuthException */
    case 3:   /* capability or permission */
    case 10:  /* permission denied */
    case 190: /* access token expired or invalid */
        return CA_AUTH;
    case 1:      /* API unknown */
    case 2:      /* API service */
    case 131000: /* something went wrong */
    case 131016: /* service unavailable */
    case 133004: /* server temporarily unavailable */
        return CA_TRANSIENT;
    default:
        break;
    }
    if (code >= 200 && code <= 299) /* API permission errors */
        return CA_AUTH;
    return http_status >= 500 ? CA_TRANSIENT : CA_FAIL;
}

/* The error's numeric code (a number, or digits in a string), or -1. */
static long error_code_of(json_t *jcode)
{
    if (json_is_integer(jcode)) {
        json_int_t v = json_integer_value(jcode);
        return v >= 0 && v <= 999999999 ? (long)v : -1;
    }
    const char *s = json_string_value(jcode);
    size_t n = s ? json_string_length(jcode) : 0;
    if (n == 0 || n > 9)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
    }
    return strtol(s, NULL, 10);
}

/* A 2xx: the message is accepted, unless the body is not the API's at all. */
static void classify_accepted(long http_status, json_t *root, const char *body, size_t len,
                              uint32_t attempt, wc_send_result *r)
{
    if (!json_is_object(root)) {
        char snippet[101];
        wc_text_clean_line(snippet, sizeof snippet, body, len);
        wc_httpjson_set(r, WC_SEND_RETRY, "bad_reply",
                        "HTTP %ld from the Cloud API without JSON%s%s", http_status,
                        *snippet ? ": " : "", snippet);
        r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
        r->outcome_unknown = true;
        return;
    }
    json_t *id = json_object_get(json_array_get(json_object_get(root, "messages"), 0), "id");
    r->outcome = WC_SEND_OK;
    if (json_is_string(id) && wc_send_id_usable(json_string_value(id), json_string_length(id))) {
        memcpy(r->provider_id, json_string_value(id), json_string_length(id) + 1);
    } else {
        /* Accepted (2xx) but no usable wamid: do not send it twice; statuses
         * still match by biz_opaque_callback_data. */
        snprintf(r->error_message, sizeof r->error_message, "%s",
                 json_is_string(id) ? "accepted, but the message id in the response is unusable "
                                      "(too long or not printable ASCII)"
                                    : "accepted without a message id in the response");
    }
}

bool wc_cloudapi_classify_reply(long http_status, const char *body, size_t len, uint32_t attempt,
                                wc_send_result *out)
{
    wc_send_result *r = out;
    memset(r, 0, sizeof *r);
    if (!body)
        len = 0;
    bool throttled = false;
    json_t *root = len ? json_loadb(body, len, 0, NULL) : NULL;
    if (http_status >= 200 && http_status < 300) {
        classify_accepted(http_status, root, body, len, attempt, r);
        goto end;
    }

    json_t *err = json_object_get(root, "error");
    long code = error_code_of(json_object_get(err, "code"));
    const char *message = json_string_value(json_object_get(err, "message"));
    const char *details =
        json_string_value(json_object_get(json_object_get(err, "error_data"), "details"));
    char code_str[24];
    if (code >= 0) {
        snprintf(code_str, sizeof code_str, "%ld", code);
    } else {
        snprintf(code_str, sizeof code_str, "http_%ld", http_status);
        /* No error object: judge by the HTTP status alone. */
        if (http_status == 429)
            code = 130429;
        else if (http_status == 401)
            code = 190;
    }
    char text[256], why[128];
    if (message && details) {
        snprintf(text, sizeof text, "%s: %s", message, details);
    } else if (message || details) {
        snprintf(text, sizeof text, "%s", message ? message : details);
    } else {
        char snippet[101];
        wc_text_clean_line(snippet, sizeof snippet, body, len);
        snprintf(text, sizeof text, "HTTP %ld from the Cloud API%s%s", http_status,
                 *snippet ? ": " : "", snippet);
    }

    if (http_status >= 500 && !json_is_object(err)) {
        /* Not the API's answer but a proxy's or load balancer's: whether the
         * request got through to Meta before it broke is unknown. */
        wc_httpjson_set(r, WC_SEND_RETRY, code_str, "%s", text);
        r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
        r->outcome_unknown = true;
        goto end;
    }
    switch (kind_of(code, http_status)) {
    case CA_FAIL:
        wc_httpjson_set(r, WC_SEND_FAIL, code_str, "%s", text);
        break;
    case CA_TRANSIENT:
        wc_httpjson_set(r, WC_SEND_RETRY, code_str, "%s", text);
        r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
        break;
    case CA_THROTTLE:
        wc_httpjson_set(r, WC_SEND_RETRY, code_str, "%s", text);
        r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
        throttled = true;
        break;
    case CA_PAIR:
        wc_httpjson_set(r, WC_SEND_RETRY, code_str, "%s", text);
        r->retry_after_ms = CA_PAIR_RETRY_MS;
        r->recipient_only = true;
        break;
    case CA_LATER:
        wc_httpjson_set(r, WC_SEND_RETRY, code_str, "%s", text);
        r->retry_after_ms = CA_ECOSYSTEM_RETRY_MS;
        break;
    case CA_SPAM:
        wc_httpjson_set(r, WC_SEND_FAIL, code_str, "%s", text);
        snprintf(why, sizeof why, "Cloud API restricted the number (%s)", code_str);
        set_device(r, WC_DEVICE_PAUSE, why);
        break;
    case CA_ACCOUNT:
        wc_httpjson_set(r, WC_SEND_RETRY, code_str, "%s", text);
        r->retry_after_ms = CA_ECOSYSTEM_RETRY_MS;
        snprintf(why, sizeof why, "Cloud API account blocked (%s)", code_str);
        set_device(r, WC_DEVICE_PAUSE, why);
        break;
    case CA_AUTH:
        wc_httpjson_set(r, WC_SEND_RETRY, code_str, "%s", text);
        r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
        snprintf(why, sizeof why, "token invalid (%s)", code_str);
        set_device(r, WC_DEVICE_OFFLINE, why);
        break;
    }
end:
    json_decref(root);
    wc_send_result_clean(r);
    return throttled;
}

/* Fills s->hj.res from a completed HTTP exchange or a network error. */
static void classify(ca_send *s, const wc_httpc_resp *resp)
{
    wc_send_result *r = &s->hj.res;
    ca_device *dev = s->dev;
    if (resp->error) {
        wc_httpjson_no_answer(r, resp, "Cloud API", s->hj.attempt);
        return;
    }
    if (wc_cloudapi_classify_reply(resp->status, resp->body, resp->body_len, s->hj.attempt, r))
        r->retry_after_ms = bucket_throttled(dev->bucket, r->retry_after_ms);
    if (r->outcome == WC_SEND_OK) {
        dev->bucket->throttle_streak = 0;
        if (!r->provider_id[0])
            wc_warn("cloudapi device %s: HTTP %ld: %s", dev->hj.device_id, resp->status,
                    r->error_message);
    }
    if (r->device_action != WC_DEVICE_OK)
        wc_warn("cloudapi device %s: %s: %s", dev->hj.device_id, r->device_reason,
                r->error_message);
}

/* ---- request body ------------------------------------------------------------------------ */

/* "+60123456789" -> "60123456789"; false unless 1..15 digits remain. */
static bool to_digits(const char *e164, char *out, size_t outlen)
{
    if (!e164)
        return false;
    if (*e164 == '+')
        e164++;
    size_t n = strlen(e164);
    if (n == 0 || n > 15 || n >= outlen)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)e164[i]))
            return false;
    }
    memcpy(out, e164, n + 1);
    return true;
}

/* Builds the "template" object from "template:{...}". NULL with why on bad input. */
static json_t *template_object(const char *spec, char *why, size_t whylen)
{
    json_error_t jerr;
    json_t *in = json_loads(spec, 0, &jerr);
    if (!json_is_object(in)) {
        snprintf(why, whylen, "template reference is not a JSON object: %s",
                 in ? "wrong type" : jerr.text);
        json_decref(in);
        return NULL;
    }
    json_t *out = NULL;
    const char *name = json_string_value(json_object_get(in, "name"));
    json_t *lang = json_object_get(in, "language");
    const char *code = json_is_string(lang) ? json_string_value(lang)
                                            : json_string_value(json_object_get(lang, "code"));
    json_t *components = json_object_get(in, "components");
    if (!name || !*name) {
        snprintf(why, whylen, "template reference needs a \"name\"");
        goto end;
    }
    if (!code || !*code) {
        snprintf(why, whylen, "template reference needs a \"language\" code");
        goto end;
    }
    if (components) {
        if (!json_is_array(components)) {
            snprintf(why, whylen, "template \"components\" must be an array");
            goto end;
        }
        size_t i;
        json_t *c;
        json_array_foreach(components, i, c)
        {
            if (!json_is_string(json_object_get(c, "type"))) {
                snprintf(why, whylen, "template component %zu needs a \"type\"", i);
                goto end;
            }
        }
    }
    /* The schema requires policy next to code; "deterministic" is its only value. */
    out = json_pack("{s:s, s:{s:s, s:s}}", "name", name, "language", "code", code, "policy",
                    "deterministic");
    if (out && components && json_array_size(components) > 0)
        json_object_set(out, "components", components);
    if (!out)
        snprintf(why, whylen, "out of memory");
end:
    json_decref(in);
    return out;
}

/* The JSON body of a send, or NULL with an error code and reason. For a
 * prepared image of ours, sha gets its sha256 and image.id is left "" for
 * with_media_id() to fill; otherwise sha is "". */
static char *build_body(const wc_send_request *req, char sha[WC_MEDIA_SHA_LEN + 1],
                        const char **code, char *why, size_t whylen)
{
    *sha = '\0';
    char to[24];
    if (!to_digits(req->recipient, to, sizeof to)) {
        *code = "invalid_recipient";
        snprintf(why, whylen, "recipient is not an E.164 number");
        return NULL;
    }
    char opaque[32];
    snprintf(opaque, sizeof opaque, "%" PRId64, req->message_id);
    json_t *msg =
        json_pack("{s:s, s:s, s:s, s:s}", "messaging_product", "whatsapp", "recipient_type",
                  "individual", "to", to, "biz_opaque_callback_data", opaque);
    if (!msg)
        goto oom;
    const char *content = req->content ? req->content : "";
    const char *media = req->media_url && *req->media_url ? req->media_url : NULL;
    if (strncmp(content, CA_TEMPLATE_PREFIX, strlen(CA_TEMPLATE_PREFIX)) == 0) {
        json_t *tpl = template_object(content + strlen(CA_TEMPLATE_PREFIX), why, whylen);
        if (!tpl) {
            *code = "bad_template";
            json_decref(msg);
            return NULL;
        }
        json_object_set_new(msg, "type", json_string("template"));
        json_object_set_new(msg, "template", tpl);
    } else if (media) {
        json_t *image = json_object();
        if (!image)
            goto oom;
        if (wc_media_ref(media, sha)) {
            json_object_set_new(image, "id", json_string(""));
        } else if (strncmp(media, CA_MEDIA_ID_PREFIX, strlen(CA_MEDIA_ID_PREFIX)) == 0) {
            json_object_set_new(image, "id", json_string(media + strlen(CA_MEDIA_ID_PREFIX)));
        } else if (strncmp(media, "http://", 7) == 0 || strncmp(media, "https://", 8) == 0) {
            json_object_set_new(image, "link", json_string(media));
        } else {
            json_decref(image);
            json_decref(msg);
            *code = "unsupported_media";
            snprintf(why, whylen,
                     "the Cloud API takes an http(s) link or an uploaded media id, not this "
                     "media_url");
            return NULL;
        }
        if (*content)
            json_object_set_new(image, "caption", json_string(content));
        json_object_set_new(msg, "type", json_string("image"));
        json_object_set_new(msg, "image", image);
    } else {
        if (!*content) {
            json_decref(msg);
            *code = "empty_message";
            snprintf(why, whylen, "nothing to send: no content and no media");
            return NULL;
        }
        json_object_set_new(msg, "type", json_string("text"));
        json_object_set_new(msg, "text",
                            json_pack("{s:s, s:b}", "body", content, "preview_url", 0));
    }
    char *body = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (body)
        return body;
oom:
    json_decref(msg);
    *code = "out_of_memory";
    snprintf(why, whylen, "out of memory building the request");
    return NULL;
}

/* ---- sends ------------------------------------------------------------------------------- */

static void on_response(void *arg, const wc_httpc_resp *resp)
{
    ca_send *s = arg;
    s->hj.call = NULL;
    if (reupload(s, resp))
        return;
    classify(s, resp);
    wc_httpjson_finish(&s->hj);
}

static void post(ca_send *s)
{
    ca_device *dev = s->dev;
    const char *headers[] = {"Content-Type: application/json", dev->auth_header, NULL};
    wc_httpc_req req = {
        .method = "POST",
        .url = dev->messages_url,
        .headers = headers,
        .body = s->hj.body,
        .body_len = s->body_len,
        .timeout_ms = dev->hj.timeout_ms,
    };
    s->hj.call = wc_httpc_start(dev->hj.http, &req, on_response, s);
    if (!s->hj.call) {
        wc_httpjson_set(&s->hj.res, WC_SEND_RETRY, "http_client",
                        "could not start the HTTP request");
        s->hj.res.retry_after_ms = wc_httpjson_backoff_ms(s->hj.attempt);
        /* The event was made when the send started, so only a libevent
         * failure can stop the completion. */
        if (wc_httpjson_finish_later(&s->hj) < 0) {
            wc_error("cloudapi device %s: cannot schedule a completion", dev->hj.device_id);
            abort(); /* the loop itself is broken */
        }
    }
}

/* ---- prepared images: one upload per number ----------------------------------------------
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

static void resolve_media(ca_send *s);
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
    bucket_take(s->dev->bucket, s);
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
        const char *argv[] = {"DEL", key};
        (void)!wc_redis_commandv(u->redis, on_redis_void, NULL, 2, argv, NULL);
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
    bucket_release(b);
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
    if (!u->waiters) {
        upload_done(u, NULL);
        return;
    }
    ca_device *dev = u->waiters->dev;
    if (resp->error) {
        upload_fail(u, WC_SEND_RETRY, resp->timed_out ? "upload_timeout" : "upload_network",
                    "uploading the image to the Cloud API: %s", resp->error);
        return;
    }
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    const char *id = json_string_value(json_object_get(root, "id"));
    if (resp->status >= 200 && resp->status < 300 && id && *id && strlen(id) < sizeof u->media_id &&
        wc_text_is_token(id, strlen(id))) {
        snprintf(u->media_id, sizeof u->media_id, "%s", id);
        long ttl = media_ttl_s(dev);
        u->id_until_us = wc_mono_us() + (int64_t)ttl * 1000000;
        char key[256], ex[24];
        media_key(key, sizeof key, u->bucket, u->sha);
        snprintf(ex, sizeof ex, "%ld", ttl);
        const char *argv[] = {"SET", key, u->media_id, "EX", ex};
        if (dev->redis && wc_redis_commandv(dev->redis, on_redis_void, NULL, 5, argv, NULL) < 0)
            wc_warn("cloudapi device %s: media id not stored in Redis (down)", dev->hj.device_id);
        json_decref(root);
        upload_done(u, NULL);
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
    const char *argv[] = {"SET", key, dev->hj.device_id, "NX", "PX", px};
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
static void resolve_media(ca_send *s)
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
static bool reupload(ca_send *s, const wc_httpc_resp *resp)
{
    if (!s->media_id[0] || s->reuploaded || resp->error || resp->status != 400)
        return false;
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    long code = error_code_of(json_object_get(json_object_get(root, "error"), "code"));
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
    const char *argv[] = {"DEL", key};
    if (s->dev->redis)
        (void)!wc_redis_commandv(s->dev->redis, on_redis_void, NULL, 2, argv, NULL);
    wc_warn("cloudapi device %s: media id %s refused; uploading the image again",
            s->dev->hj.device_id, s->media_id);
    s->reuploaded = true;
    s->media_id[0] = '\0';
    resolve_media(s);
    return true;
}

static int ca_send_msg(void *inst, const wc_send_request *req, wc_send_cb *cb, void *arg)
{
    ca_device *dev = inst;
    if (!dev || dev->hj.closing || !req || !cb)
        return -1;
    ca_send *s = wc_httpjson_send_new(sizeof *s, &dev->hj, req, cb, arg);
    if (!s)
        return -1;
    s->dev = dev;

    const char *code = NULL;
    char why[256];
    s->hj.body = build_body(req, s->sha, &code, why, sizeof why);
    if (!s->hj.body) {
        /* Reported on the next loop turn, never from inside send(). */
        wc_httpjson_set(&s->hj.res,
                        strcmp(code, "out_of_memory") == 0 ? WC_SEND_RETRY : WC_SEND_FAIL, code,
                        "%s", why);
        if (wc_httpjson_finish_later(&s->hj) < 0) {
            wc_httpjson_send_drop(&s->hj);
            return -1;
        }
        return 0;
    }
    if (s->sha[0]) {
        /* Its image id comes from the number's upload (every end of that is
         * reported on a later loop turn, never from inside send()). */
        s->hj.draft = s->hj.body;
        s->hj.body = NULL;
        resolve_media(s);
        return 0;
    }
    s->body_len = strlen(s->hj.body);
    bucket_take(dev->bucket, s);
    return 0;
}

/* ---- open and close ---------------------------------------------------------------------- */

static const char *setting_str(json_t *settings, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(settings, key));
    return v && *v ? v : dflt;
}

static bool url_safe(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && *s != '.' && *s != '_' && *s != '-')
            return false;
    }
    return true;
}

static void ca_close(void *inst);

static void *ca_open(const wc_transport_env *env, const char *device_id, json_t *settings,
                     json_t *credentials, char *err, size_t errlen)
{
    const char *base_url = setting_str(settings, "base_url", CA_DEFAULT_BASE_URL);
    const char *version = setting_str(settings, "api_version", CA_DEFAULT_API_VERSION);
    char pnid[64] = "";
    json_t *jp = json_object_get(settings, "phone_number_id");
    if (json_is_string(jp))
        snprintf(pnid, sizeof pnid, "%s", json_string_value(jp));
    else if (json_is_integer(jp))
        snprintf(pnid, sizeof pnid, "%" JSON_INTEGER_FORMAT, json_integer_value(jp));
    double mps = CA_DEFAULT_MPS;
    json_t *jm = json_object_get(settings, "mps");
    if (jm)
        mps = json_is_number(jm) ? json_number_value(jm) : -1;
    long timeout_ms = wc_httpjson_timeout_setting(settings, CA_DEFAULT_TIMEOUT_MS);
    const char *token = json_string_value(json_object_get(credentials, "access_token"));

    if (!url_safe(pnid)) {
        snprintf(err, errlen, "cloudapi: settings.phone_number_id is missing or malformed");
        return NULL;
    }
    if (!url_safe(version)) {
        snprintf(err, errlen, "cloudapi: settings.api_version is malformed");
        return NULL;
    }
    if (strncmp(base_url, "https://", 8) != 0 && strncmp(base_url, "http://", 7) != 0) {
        snprintf(err, errlen, "cloudapi: settings.base_url must start with https://");
        return NULL;
    }
    char why[256];
    if (!wc_provider_url_allowed(env->provider_hosts, base_url, why, sizeof why)) {
        snprintf(err, errlen, "cloudapi: %s", why);
        return NULL;
    }
    if (!(mps > 0 && mps <= CA_MAX_MPS)) {
        snprintf(err, errlen, "cloudapi: settings.mps must be a number in (0, %.0f]", CA_MAX_MPS);
        return NULL;
    }
    if (timeout_ms <= 0) {
        snprintf(err, errlen, "cloudapi: settings.timeout_ms must be a positive integer");
        return NULL;
    }
    if (!token || !*token || strpbrk(token, "\r\n")) {
        snprintf(err, errlen, "cloudapi: credentials.access_token is missing or malformed");
        return NULL;
    }

    ca_device *dev = wc_httpjson_device_new(sizeof *dev, env, device_id, timeout_ms);
    if (!dev) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(dev->phone_number_id, sizeof dev->phone_number_id, "%s", pnid);
    size_t blen = wc_httpjson_url_len(base_url);
    char key[1024];
    int n = snprintf(key, sizeof key, "%.*s|%s", (int)blen, base_url, pnid);
    if (asprintf(&dev->messages_url, "%.*s/%s/%s/messages", (int)blen, base_url, version, pnid) <
            0 ||
        n < 0 || (size_t)n >= sizeof key) {
        dev->messages_url = NULL;
        snprintf(err, errlen, "cloudapi: settings.base_url is too long");
        goto error;
    }
    if (asprintf(&dev->auth_header, "Authorization: Bearer %s", token) < 0) {
        dev->auth_header = NULL;
        snprintf(err, errlen, "out of memory");
        goto error;
    }
    if (asprintf(&dev->media_url, "%.*s/%s/%s/media", (int)blen, base_url, version, pnid) < 0) {
        dev->media_url = NULL;
        snprintf(err, errlen, "out of memory");
        goto error;
    }
    dev->redis = env->redis;
    dev->media = env->media;
    dev->media_id_ttl_s = env->media_id_ttl_s;
    dev->bucket = bucket_acquire(env->base, key, mps);
    if (!dev->bucket) {
        snprintf(err, errlen, "out of memory");
        goto error;
    }
    snprintf(dev->bucket->phone_number_id, sizeof dev->bucket->phone_number_id, "%s", pnid);
    return dev;

error:
    ca_close(dev);
    return NULL;
}

static void ca_close(void *inst)
{
    ca_device *dev = inst;
    if (!dev)
        return;
    /* Sends waiting on the bucket leave its queue before they end. */
    for (wc_httpjson_send *q = dev->hj.sends; q; q = q->next) {
        ca_send *s = (ca_send *)q;
        if (s->queued)
            bucket_dequeue(dev->bucket, s);
        ca_upload *u = s->upload;
        if (u) {
            upload_unwait(u, s);
            if (!u->waiters && u->wait) {
                /* Nobody wants the bytes any more. */
                u->src->cancel(u->wait);
                u->wait = NULL;
                upload_done(u, NULL);
            }
        }
    }
    wc_httpjson_device_close(&dev->hj);
    bucket_release(dev->bucket);
    free(dev->messages_url);
    free(dev->media_url);
    if (dev->auth_header) {
        sodium_memzero(dev->auth_header, strlen(dev->auth_header));
        free(dev->auth_header);
    }
    free(dev);
}

const wc_transport_ops wc_transport_cloudapi = {
    .platform = "cloudapi",
    .open = ca_open,
    .send = ca_send_msg,
    .close = ca_close,
};
