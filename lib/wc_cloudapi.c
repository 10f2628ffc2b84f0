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
 * phone number id and sent by the id Meta gives it: wc_cloudapi_media.c);
 * a template when the content is "template:" followed by JSON
 * {"name": "...", "language": "en_US" or {"code": "en_US"}, "components": [...]}.
 * The wacast message id goes out as biz_opaque_callback_data, so status
 * webhooks can be matched even if a response was lost. */
#include "wc_cloudapi.h"
#include "wc_cloudapi_private.h"

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

#define CA_PAIR_RETRY_MS 6000         /* ~1 message per 6 s per recipient */
#define CA_ECOSYSTEM_RETRY_MS 3600000 /* 131049: Meta asks for a much later retry */

static ca_bucket *buckets;

static void post(ca_send *s);

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

void ca_bucket_release(ca_bucket *b)
{
    if (!b || --b->refs > 0)
        return;
    /* Nothing is in flight on an upload here: a busy one holds a reference. */
    while (b->uploads) {
        ca_upload *u = b->uploads;
        b->uploads = u->next;
        ca_media_free(u);
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
void ca_bucket_take(ca_bucket *b, ca_send *s)
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
long ca_error_code_of(json_t *jcode)
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
    long code = ca_error_code_of(json_object_get(err, "code"));
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
    if (ca_media_reupload(s, resp))
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
        ca_media_resolve(s);
        return 0;
    }
    s->body_len = strlen(s->hj.body);
    ca_bucket_take(dev->bucket, s);
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
        ca_media_leave(s);
    }
    wc_httpjson_device_close(&dev->hj);
    ca_bucket_release(dev->bucket);
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
