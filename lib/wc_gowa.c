/* Transport `gowa`: a device logged in to WhatsApp Web behind the REST API of
 * go-whatsapp-web-multidevice. One HTTP call per send:
 *   text:  POST {base_url}/send/message  JSON {"phone": "<digits>@s.whatsapp.net", "message": ...}
 *   image: POST {base_url}/send/image    multipart: phone, caption, and image_url (a link) or
 *          image (a file part: a base64 data: URL decoded, or a prepared image, media:<sha256>,
 *          read through env->media; the gateway keeps no upload to refer to, so every send
 *          carries the file, and the sender's media cache keeps the database read to one)
 * with basic auth and X-Device-Id selecting the device when the gateway holds
 * several. The gateway answers {"code": "SUCCESS", "results": {"message_id": ...}}
 * or an error code and message, which are reported as they came (made valid
 * UTF-8, see wc_gowa_classify_reply()). A send is in doubt (outcome_unknown)
 * whenever the request may have reached the gateway and no answer of the
 * gateway's came back: a reset, an empty or cut reply, a time-out, a 5xx
 * without the gateway's JSON, a close with the request out.
 *
 * settings:    {"base_url": "http://gowa:3000" (required), "device_id": "...",
 *               "timeout_ms": 15000}
 * credentials: {"username": "...", "password": "..."} (basic auth; never logged)
 *
 * Also the QR login (wc_gowa.h) used to pair a device. */
#include "wc_gowa.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <jansson.h>
#include <sodium.h>

#include "wc_httpjson.h"
#include "wc_log.h"
#include "wc_origin.h"
#include "wc_text.h"
#include "wc_transport.h"

#define GW_DEFAULT_TIMEOUT_MS 15000
#define GW_JID_SUFFIX "@s.whatsapp.net"
#define GW_MAX_IMAGE (16 * 1024 * 1024)
/* A login QR is a few kilobytes; anything near this is not one. */
#define GW_MAX_QR_IMAGE (1024 * 1024)

typedef struct gw_send gw_send;

typedef struct gw_device {
    wc_httpjson_device hj; /* first: what every HTTP + JSON device holds */
    char *base_url;        /* without a trailing '/' */
    char *device_header;   /* "X-Device-Id: ..." or NULL */
    char *username;        /* NULL: no basic auth */
    char *password;
    const wc_media_source *media; /* env->media: prepared images */
} gw_device;

struct gw_send {
    wc_httpjson_send hj; /* first: the shared send life cycle */
    gw_device *dev;
    /* What the request will say to whom; while a prepared image is read,
     * hj.body holds the caption (freed with the send). */
    char phone[48];
};

static void free_secret(char *s)
{
    if (s) {
        sodium_memzero(s, strlen(s));
        free(s);
    }
}

/* The gateway's "code" (a string, or a number in some error bodies); false
 * and "http_<status>" when the body has none. */
static bool gateway_code(json_t *root, long status, char *out, size_t outlen)
{
    json_t *code = json_object_get(root, "code");
    if (json_is_string(code) && *json_string_value(code)) {
        snprintf(out, outlen, "%s", json_string_value(code));
        return true;
    }
    if (json_is_integer(code)) {
        snprintf(out, outlen, "%" JSON_INTEGER_FORMAT, json_integer_value(code));
        return true;
    }
    snprintf(out, outlen, "http_%ld", status);
    return false;
}

void wc_gowa_classify_reply(long http_status, const char *body, size_t len, uint32_t attempt,
                            wc_send_result *out)
{
    wc_send_result *r = out;
    memset(r, 0, sizeof *r);
    if (!body)
        len = 0;
    json_t *root = len ? json_loadb(body, len, 0, NULL) : NULL;
    char code[48];
    bool answered = gateway_code(root, http_status, code, sizeof code);
    const char *message = json_string_value(json_object_get(root, "message"));
    char snippet[101] = "";
    if (!answered)
        wc_text_clean_line(snippet, sizeof snippet, body, len);
    if (!message)
        message = snippet;

    if (http_status == 401) {
        wc_httpjson_set(r, WC_SEND_RETRY, code, "gateway rejected credentials%s%s",
                        *message ? ": " : "", message);
        r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
        r->device_action = WC_DEVICE_OFFLINE;
        snprintf(r->device_reason, sizeof r->device_reason, "gateway rejected credentials");
    } else if (http_status >= 200 && http_status < 300 && !answered) {
        /* Not the gateway's answer: whether it sent the message is unknown. */
        wc_httpjson_set(r, WC_SEND_RETRY, "bad_reply", "gateway HTTP %ld without its JSON%s%s",
                        http_status, *message ? ": " : "", message);
        r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
        r->outcome_unknown = true;
    } else if (http_status >= 200 && http_status < 300) {
        json_t *id = json_object_get(json_object_get(root, "results"), "message_id");
        bool has_id = json_is_string(id) && json_string_length(id) > 0;
        if (strcmp(code, "SUCCESS") == 0 && has_id &&
            wc_send_id_usable(json_string_value(id), json_string_length(id))) {
            r->outcome = WC_SEND_OK;
            memcpy(r->provider_id, json_string_value(id), json_string_length(id) + 1);
        } else if (strcmp(code, "SUCCESS") == 0) {
            /* Sent, by the gateway's word, but with no id to track it by. */
            r->outcome = WC_SEND_OK;
            snprintf(r->error_message, sizeof r->error_message, "%s",
                     has_id ? "accepted, but the message id in the response is unusable (too "
                              "long or not printable ASCII)"
                            : "accepted without a message id in the response");
        } else {
            wc_httpjson_set(r, WC_SEND_FAIL, code, "%s", *message ? message : "gateway refused");
        }
    } else if (http_status >= 500 || http_status == 429 || http_status == 408) {
        wc_httpjson_set(r, WC_SEND_RETRY, code, "gateway HTTP %ld%s%s", http_status,
                        *message ? ": " : "", message);
        r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
        /* A 5xx without the gateway's code is a proxy's, or a gateway that
         * broke mid-way: the message may have gone out. */
        r->outcome_unknown = http_status >= 500 && !answered;
    } else {
        wc_httpjson_set(r, WC_SEND_FAIL, code, "%s", *message ? message : "gateway refused");
    }
    json_decref(root);
    wc_send_result_clean(r);
}

static void classify(gw_send *s, const wc_httpc_resp *resp)
{
    if (resp->error) {
        wc_httpjson_no_answer(&s->hj.res, resp, "gateway", s->hj.attempt);
        return;
    }
    wc_gowa_classify_reply(resp->status, resp->body, resp->body_len, s->hj.attempt, &s->hj.res);
    if (resp->status == 401)
        wc_warn("gowa device %s: gateway rejected credentials (HTTP 401)", s->dev->hj.device_id);
}

static void on_response(void *arg, const wc_httpc_resp *resp)
{
    gw_send *s = arg;
    s->hj.call = NULL;
    classify(s, resp);
    wc_httpjson_finish(&s->hj);
}

/* "data:image/png;base64,...." -> bytes and mime type; -1 when not one. */
static int decode_data_url(const char *url, unsigned char **out, size_t *outlen, char *mime,
                           size_t mimelen)
{
    if (strncmp(url, "data:", 5) != 0)
        return -1;
    const char *comma = strchr(url, ',');
    const char *b64 = strstr(url, ";base64,");
    if (!comma || !b64 || b64 + 7 != comma)
        return -1;
    size_t mlen = (size_t)(b64 - (url + 5));
    if (mlen == 0 || mlen >= mimelen)
        return -1;
    memcpy(mime, url + 5, mlen);
    mime[mlen] = '\0';
    const char *data = comma + 1;
    size_t dlen = strlen(data);
    size_t cap = dlen / 4 * 3 + 3;
    if (cap > GW_MAX_IMAGE)
        return -1;
    unsigned char *buf = malloc(cap);
    if (!buf)
        return -1;
    size_t got = 0;
    if (sodium_base642bin(buf, cap, data, dlen, " \r\n", &got, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        got == 0) {
        free(buf);
        return -1;
    }
    *out = buf;
    *outlen = got;
    return 0;
}

static const char *extension_for(const char *mime)
{
    if (strcmp(mime, "image/png") == 0)
        return "png";
    if (strcmp(mime, "image/webp") == 0)
        return "webp";
    return "jpg";
}

static void set_oom(gw_send *s)
{
    wc_httpjson_set(&s->hj.res, WC_SEND_RETRY, "out_of_memory",
                    "out of memory building the request");
    s->hj.res.retry_after_ms = wc_httpjson_backoff_ms(s->hj.attempt);
}

/* Starts the request; fills s->hj.res and returns -1 when it cannot start. */
static int start_request(gw_send *s, const char *url, const char *body, const wc_httpc_form *form)
{
    gw_device *dev = s->dev;
    const char *headers[3] = {NULL, NULL, NULL};
    int h = 0;
    if (dev->device_header)
        headers[h++] = dev->device_header;
    if (body)
        headers[h++] = "Content-Type: application/json";
    wc_httpc_req hreq = {
        .method = "POST",
        .url = url,
        .headers = headers,
        .body = body,
        .body_len = body ? strlen(body) : 0,
        .form = form,
        .timeout_ms = dev->hj.timeout_ms,
        .username = dev->username,
        .password = dev->password,
    };
    s->hj.call = wc_httpc_start(dev->hj.http, &hreq, on_response, s);
    if (!s->hj.call) {
        wc_httpjson_set(&s->hj.res, WC_SEND_RETRY, "http_client",
                        "could not start the HTTP request");
        s->hj.res.retry_after_ms = wc_httpjson_backoff_ms(s->hj.attempt);
        return -1;
    }
    return 0;
}

/* POST /send/image with the image as a file part, as the gateway takes an
 * upload; fills s->hj.res and returns -1 when it cannot start. */
static int post_image_file(gw_send *s, const char *caption, const unsigned char *image, size_t len,
                           const char *filename, const char *mime)
{
    char *url = NULL;
    wc_httpc_form *form = wc_httpc_form_new();
    int rc = -1;
    if (asprintf(&url, "%s/send/image", s->dev->base_url) < 0) {
        url = NULL;
        goto oom;
    }
    if (!form || wc_httpc_form_add(form, "phone", s->phone) < 0 ||
        (caption && *caption && wc_httpc_form_add(form, "caption", caption) < 0) ||
        wc_httpc_form_add_file(form, "image", filename, mime, image, len) < 0)
        goto oom;
    rc = start_request(s, url, NULL, form);
    goto end;
oom:
    set_oom(s);
end:
    free(url);
    wc_httpc_form_free(form);
    return rc;
}

/* The prepared image arrived (or not): the request goes out with it. */
static void on_media(void *arg, const wc_media_got *got)
{
    gw_send *s = arg;
    s->hj.media_wait = NULL;
    int rc = -1;
    if (got->error_code)
        wc_media_result(&s->hj.res, got);
    else
        rc = post_image_file(s, s->hj.body, got->bytes, got->len, "image.jpg", "image/jpeg");
    if (rc < 0)
        wc_httpjson_finish(&s->hj);
}

/* Starts the HTTP call; fills s->hj.res and returns -1 when the content is unusable. */
static int start_call(gw_send *s, const wc_send_request *req)
{
    const char *to = req->recipient ? req->recipient : "";
    if (*to == '+')
        to++;
    size_t n = strlen(to);
    bool digits = n > 0 && n <= 15;
    for (size_t i = 0; digits && i < n; i++)
        digits = isdigit((unsigned char)to[i]) != 0;
    if (!digits) {
        wc_httpjson_set(&s->hj.res, WC_SEND_FAIL, "invalid_recipient",
                        "recipient is not an E.164 number");
        return -1;
    }
    snprintf(s->phone, sizeof s->phone, "%s" GW_JID_SUFFIX, to);
    const char *content = req->content ? req->content : "";
    const char *media = req->media_url && *req->media_url ? req->media_url : NULL;
    char sha[WC_MEDIA_SHA_LEN + 1];

    if (media && wc_media_ref(media, sha)) {
        /* A prepared image of ours: read it, then send it as a file. */
        if (*content && !(s->hj.body = strdup(content))) {
            set_oom(s);
            return -1;
        }
        return wc_httpjson_media_get(&s->hj, s->dev->media, sha, on_media);
    }
    if (media && strncmp(media, "http://", 7) != 0 && strncmp(media, "https://", 8) != 0) {
        unsigned char *image = NULL;
        size_t ilen = 0;
        char mime[64], filename[32];
        if (decode_data_url(media, &image, &ilen, mime, sizeof mime) < 0) {
            wc_httpjson_set(&s->hj.res, WC_SEND_FAIL, "unsupported_media",
                            "media_url must be an http(s) link, a base64 data: URL or "
                            "media:<sha256>");
            return -1;
        }
        snprintf(filename, sizeof filename, "image.%s", extension_for(mime));
        int rc = post_image_file(s, content, image, ilen, filename, mime);
        free(image);
        return rc;
    }

    char *url = NULL;
    char *body = NULL;
    wc_httpc_form *form = NULL;
    int rc = -1;
    if (media) {
        if (asprintf(&url, "%s/send/image", s->dev->base_url) < 0) {
            url = NULL;
            goto oom;
        }
        form = wc_httpc_form_new();
        if (!form || wc_httpc_form_add(form, "phone", s->phone) < 0 ||
            (*content && wc_httpc_form_add(form, "caption", content) < 0) ||
            wc_httpc_form_add(form, "image_url", media) < 0)
            goto oom;
    } else {
        if (!*content) {
            wc_httpjson_set(&s->hj.res, WC_SEND_FAIL, "empty_message",
                            "nothing to send: no content and no media");
            goto end;
        }
        if (asprintf(&url, "%s/send/message", s->dev->base_url) < 0) {
            url = NULL;
            goto oom;
        }
        json_t *msg = json_pack("{s:s, s:s}", "phone", s->phone, "message", content);
        body = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
        json_decref(msg);
        if (!body)
            goto oom;
    }
    rc = start_request(s, url, body, form);
    goto end;

oom:
    set_oom(s);
end:
    free(url);
    free(body);
    wc_httpc_form_free(form);
    return rc;
}

static int gw_send_msg(void *inst, const wc_send_request *req, wc_send_cb *cb, void *arg)
{
    gw_device *dev = inst;
    if (!dev || dev->hj.closing || !req || !cb)
        return -1;
    gw_send *s = wc_httpjson_send_new(sizeof *s, &dev->hj, req, cb, arg);
    if (!s)
        return -1;
    s->dev = dev;
    /* A send that cannot start reports on the next loop turn, never from inside send(). */
    if (start_call(s, req) < 0 && wc_httpjson_finish_later(&s->hj) < 0) {
        wc_httpjson_send_drop(&s->hj);
        return -1;
    }
    return 0;
}

static void gw_close(void *inst)
{
    gw_device *dev = inst;
    if (!dev)
        return;
    wc_httpjson_device_close(&dev->hj);
    free(dev->base_url);
    free(dev->device_header);
    free_secret(dev->username);
    free_secret(dev->password);
    free(dev);
}

static void *gw_open(const wc_transport_env *env, const char *device_id, json_t *settings,
                     json_t *credentials, char *err, size_t errlen)
{
    const char *base_url = json_string_value(json_object_get(settings, "base_url"));
    const char *gw_device_id = json_string_value(json_object_get(settings, "device_id"));
    long timeout_ms = wc_httpjson_timeout_setting(settings, GW_DEFAULT_TIMEOUT_MS);
    const char *user = json_string_value(json_object_get(credentials, "username"));
    const char *pass = json_string_value(json_object_get(credentials, "password"));

    if (!base_url ||
        (strncmp(base_url, "http://", 7) != 0 && strncmp(base_url, "https://", 8) != 0)) {
        snprintf(err, errlen, "gowa: settings.base_url (http:// or https://) is required");
        return NULL;
    }
    char why[256];
    if (!wc_provider_url_allowed(env->provider_hosts, base_url, why, sizeof why)) {
        snprintf(err, errlen, "gowa: %s", why);
        return NULL;
    }
    if (gw_device_id && strpbrk(gw_device_id, "\r\n")) {
        snprintf(err, errlen, "gowa: settings.device_id is malformed");
        return NULL;
    }
    if (timeout_ms <= 0) {
        snprintf(err, errlen, "gowa: settings.timeout_ms must be a positive integer");
        return NULL;
    }
    if (user && strchr(user, ':')) {
        snprintf(err, errlen, "gowa: credentials.username must not contain ':'");
        return NULL;
    }

    gw_device *dev = wc_httpjson_device_new(sizeof *dev, env, device_id, timeout_ms);
    if (!dev) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    dev->media = env->media;
    dev->base_url = strndup(base_url, wc_httpjson_url_len(base_url));
    if (gw_device_id && *gw_device_id &&
        asprintf(&dev->device_header, "X-Device-Id: %s", gw_device_id) < 0)
        dev->device_header = NULL;
    if (user && *user) {
        dev->username = strdup(user);
        dev->password = strdup(pass ? pass : "");
    }
    if (!dev->base_url || (gw_device_id && *gw_device_id && !dev->device_header) ||
        (user && *user && (!dev->username || !dev->password))) {
        snprintf(err, errlen, "out of memory");
        gw_close(dev);
        return NULL;
    }
    return dev;
}

const wc_transport_ops wc_transport_gowa = {
    .platform = "gowa",
    .open = gw_open,
    .send = gw_send_msg,
    .close = gw_close,
};

/* ---- QR login ---------------------------------------------------------------------------- */

typedef struct gw_login {
    wc_httpc *http;
    char *base_url;
    char *device_header;
    char *user, *pass;
    wc_gowa_qr_cb *cb;
    void *arg;
    char *qr_link;
    int qr_duration;
} gw_login;

static void login_free(gw_login *l)
{
    free(l->base_url);
    free(l->device_header);
    free_secret(l->user);
    free_secret(l->pass);
    free(l->qr_link);
    free(l);
}

static void login_fail(gw_login *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void login_fail(gw_login *l, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    wc_text_fix(why); /* gateway words, maybe cut */
    wc_gowa_qr qr = {.error = why};
    wc_gowa_qr_cb *cb = l->cb;
    void *arg = l->arg;
    login_free(l);
    cb(arg, &qr);
}

static int login_get(gw_login *l, const char *url, size_t max_response, wc_httpc_cb *cb)
{
    const char *headers[] = {l->device_header, NULL};
    wc_httpc_req req = {
        .method = "GET",
        .url = url,
        .headers = l->device_header ? headers : NULL,
        .timeout_ms = GW_DEFAULT_TIMEOUT_MS,
        .username = l->user,
        .password = l->pass,
        .max_response = max_response,
    };
    return wc_httpc_request(l->http, &req, cb, l);
}

/* The admin API hands the image on to a browser: only a PNG (by its
 * Content-Type and its signature) goes, never whatever else came back. */
static bool is_png(const wc_httpc_resp *resp)
{
    static const char sig[] = "\x89PNG\r\n\x1a\n";
    const char *ct = resp->content_type ? resp->content_type : "";
    size_t n = strcspn(ct, "; \t");
    return n == 9 && strncasecmp(ct, "image/png", 9) == 0 && resp->body_len >= sizeof sig - 1 &&
           memcmp(resp->body, sig, sizeof sig - 1) == 0;
}

static void on_qr_image(void *arg, const wc_httpc_resp *resp)
{
    gw_login *l = arg;
    if (resp->error) {
        login_fail(l, "fetching the QR image: %s", resp->error);
        return;
    }
    if (resp->status != 200 || resp->body_len == 0) {
        login_fail(l, "fetching the QR image: HTTP %ld", resp->status);
        return;
    }
    if (!is_png(resp)) {
        login_fail(l, "fetching the QR image: the gateway did not answer with a PNG");
        return;
    }
    size_t b64len = sodium_base64_ENCODED_LEN(resp->body_len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(b64len);
    if (!b64) {
        login_fail(l, "out of memory");
        return;
    }
    sodium_bin2base64(b64, b64len, (const unsigned char *)resp->body, resp->body_len,
                      sodium_base64_VARIANT_ORIGINAL);
    wc_gowa_qr qr = {.qr_link = l->qr_link,
                     .qr_duration = l->qr_duration,
                     .png_base64 = b64,
                     .png_len = resp->body_len};
    wc_gowa_qr_cb *cb = l->cb;
    void *cbarg = l->arg;
    l->qr_link = NULL;
    login_free(l);
    cb(cbarg, &qr);
    free((char *)qr.qr_link);
    free(b64);
}

static void on_login(void *arg, const wc_httpc_resp *resp)
{
    gw_login *l = arg;
    if (resp->error) {
        login_fail(l, "gateway unreachable: %s", resp->error);
        return;
    }
    json_t *root = json_loadb(resp->body, resp->body_len, 0, NULL);
    char code[48];
    gateway_code(root, resp->status, code, sizeof code);
    const char *message = json_string_value(json_object_get(root, "message"));
    json_t *results = json_object_get(root, "results");
    const char *link = json_string_value(json_object_get(results, "qr_link"));
    json_t *dur = json_object_get(results, "qr_duration");
    if (resp->status == 401) {
        login_fail(l, "gateway rejected credentials");
    } else if (resp->status != 200 || strcmp(code, "SUCCESS") != 0) {
        login_fail(l, "gateway: %s: %s", code, message ? message : "login refused");
    } else if (!link || !*link) {
        login_fail(l, "gateway: no results.qr_link in the login response");
    } else {
        /* The link is the gateway's word: fetch it (with the gateway's
         * credentials) only from the gateway's own origin, never from
         * wherever it points (that would make the dispatcher fetch and
         * hand back any URL it can reach). A relative link resolves
         * against the base URL. */
        wc_origin base, target;
        l->qr_link = wc_origin_resolve(l->base_url, link);
        if (!l->qr_link) {
            login_fail(l, "results.qr_link is not a usable link");
        } else if (wc_origin_parse(l->base_url, &base, NULL, 0) < 0 ||
                   wc_origin_parse(l->qr_link, &target, NULL, 0) < 0 ||
                   !wc_origin_equal(&base, &target)) {
            login_fail(l, "results.qr_link is not on the gateway's origin; refused");
        } else {
            l->qr_duration = json_is_integer(dur) ? (int)json_integer_value(dur) : 0;
            if (login_get(l, l->qr_link, GW_MAX_QR_IMAGE, on_qr_image) < 0)
                login_fail(l, "could not start fetching the QR image");
        }
    }
    json_decref(root);
}

int wc_gowa_login_qr(wc_httpc *c, const char *base_url, const char *device_id, const char *user,
                     const char *pass, wc_gowa_qr_cb *cb, void *arg)
{
    if (!c || !base_url || !cb ||
        (strncmp(base_url, "http://", 7) != 0 && strncmp(base_url, "https://", 8) != 0) ||
        (device_id && strpbrk(device_id, "\r\n")))
        return -1;
    gw_login *l = calloc(1, sizeof *l);
    if (!l)
        return -1;
    l->http = c;
    l->cb = cb;
    l->arg = arg;
    l->base_url = strndup(base_url, wc_httpjson_url_len(base_url));
    if (device_id && *device_id && asprintf(&l->device_header, "X-Device-Id: %s", device_id) < 0)
        l->device_header = NULL;
    if (user) {
        l->user = strdup(user);
        l->pass = strdup(pass ? pass : "");
    }
    char *url = NULL;
    if (!l->base_url || (device_id && *device_id && !l->device_header) ||
        (user && (!l->user || !l->pass)) || asprintf(&url, "%s/app/login", l->base_url) < 0) {
        login_free(l);
        return -1;
    }
    int rc = login_get(l, url, 4 * 1024 * 1024, on_login);
    free(url);
    if (rc < 0) {
        login_free(l);
        return -1;
    }
    return 0;
}
