/* Unit tests for the gowa transport and QR login against an in-process fake
 * of go-whatsapp-web-multidevice (evhttp on the same loop). The fake checks
 * basic auth, X-Device-Id, the path and the JSON or multipart fields, and
 * answers the gateway's documented bodies; the recipient number picks the
 * behaviour. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <jansson.h>
#include <sodium.h>

#include "send_check.h"
#include "wc_gowa.h"
#include "wc_httpc.h"
#include "wc_text.h"
#include "wc_transport.h"

#define USER "admin"
#define PASS "s3cret:pw"
#define GW_DEVICE "dev-a"

#define TO_OK "+60123456789"
#define TO_BAD_JID "+6011400"
#define TO_NOT_LOGGED_IN "+6011500"
#define TO_HANG "+6011000"
#define TO_FAILED "+6011200"
#define TO_LONG_UTF8 "+6011601" /* 500 whose message is 300 x "é" */
#define TO_LONG_CODE "+6011602" /* 400 whose code is 40 x "é" */
#define TO_LONG_ID "+6011603"   /* SUCCESS with a 200-character message id */
#define TO_BAD_BODY "+6011604"  /* 500 page with bad UTF-8, a NUL and controls */
#define TO_BAD_ID "+6011605"    /* SUCCESS with a message id holding non-ASCII */

static const unsigned char PNG[] = {0x89, 'P',  'N',  'G',  0x0d, 0x0a, 0x1a, 0x0a,
                                    0x00, 0x00, 0x00, 0x0d, 'I',  'H',  'D',  'R'};

typedef struct rec {
    char path[128];
    char *body; /* raw, NUL-terminated */
    size_t body_len;
    char content_type[128];
    char device[64];
} rec;

typedef struct fixture {
    fake_http srv;
    rec recs[64];
    int nrecs;
    wc_transport_env env;
} fixture;

static void reply(struct evhttp_request *req, int status, const char *ctype, const void *body,
                  size_t len)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, status, status == 200 ? "OK" : "Error", out);
    evbuffer_free(out);
}

static void reply_json(struct evhttp_request *req, int status, const char *json)
{
    reply(req, status, "application/json", json, strlen(json));
}

static bool auth_ok(struct evhttp_request *req)
{
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    char b64[64], want[96];
    sodium_bin2base64(b64, sizeof b64, (const unsigned char *)USER ":" PASS, strlen(USER ":" PASS),
                      sodium_base64_VARIANT_ORIGINAL);
    snprintf(want, sizeof want, "Basic %s", b64);
    return auth && strcmp(auth, want) == 0;
}

/* The value of a multipart field, copied into out ("" when absent). */
static void form_field(const char *body, const char *name, char *out, size_t outlen)
{
    char marker[96];
    snprintf(marker, sizeof marker, "name=\"%s\"", name);
    out[0] = '\0';
    const char *p = strstr(body, marker);
    if (!p)
        return;
    p = strstr(p, "\r\n\r\n");
    if (!p)
        return;
    p += 4;
    const char *end = strstr(p, "\r\n--");
    if (!end)
        return;
    snprintf(out, outlen, "%.*s", (int)(end - p), p);
}

static bool valid_jid(const char *phone)
{
    const char *at = phone ? strchr(phone, '@') : NULL;
    if (!at || at == phone || strcmp(at, "@s.whatsapp.net") != 0)
        return false;
    for (const char *c = phone; c < at; c++) {
        if (*c < '0' || *c > '9')
            return false;
    }
    return true;
}

static void answer_send(fixture *fx, struct evhttp_request *req, const char *phone)
{
    if (!strcmp(phone, TO_BAD_JID "@s.whatsapp.net" + 1)) {
        reply_json(
            req, 400,
            "{\"code\":\"INVALID_JID\",\"message\":\"your JID is invalid\",\"results\":null}");
    } else if (!strcmp(phone, TO_NOT_LOGGED_IN "@s.whatsapp.net" + 1)) {
        reply_json(req, 500,
                   "{\"code\":\"INTERNAL_SERVER_ERROR\",\"message\":\"you are not loggin\","
                   "\"results\":null}");
    } else if (!strcmp(phone, TO_FAILED "@s.whatsapp.net" + 1)) {
        reply_json(req, 200,
                   "{\"code\":\"FAILED\",\"message\":\"could not send\",\"results\":null}");
    } else if (!strcmp(phone, TO_HANG "@s.whatsapp.net" + 1)) {
        /* no answer */
    } else if (!strcmp(phone, TO_LONG_UTF8 "@s.whatsapp.net" + 1)) {
        char body[1024] = "{\"code\":\"INTERNAL_SERVER_ERROR\",\"message\":\"";
        for (int i = 0; i < 300; i++)
            strcat(body, "\xC3\xA9");
        strcat(body, "\",\"results\":null}");
        reply_json(req, 500, body);
    } else if (!strcmp(phone, TO_LONG_CODE "@s.whatsapp.net" + 1)) {
        char body[512] = "{\"code\":\"";
        for (int i = 0; i < 40; i++)
            strcat(body, "\xC3\xA9");
        strcat(body, "\",\"message\":\"no\",\"results\":null}");
        reply_json(req, 400, body);
    } else if (!strcmp(phone, TO_LONG_ID "@s.whatsapp.net" + 1)) {
        char body[512];
        snprintf(body, sizeof body,
                 "{\"code\":\"SUCCESS\",\"message\":\"Success\",\"results\":{\"message_id\":"
                 "\"%0200d\"}}",
                 3);
        reply_json(req, 200, body);
    } else if (!strcmp(phone, TO_BAD_ID "@s.whatsapp.net" + 1)) {
        reply_json(req, 200,
                   "{\"code\":\"SUCCESS\",\"message\":\"Success\",\"results\":{\"message_id\":"
                   "\"3EB0\xC3\xA9\\u0007\"}}");
    } else if (!strcmp(phone, TO_BAD_BODY "@s.whatsapp.net" + 1)) {
        static const char page[] = "<h1>\xFF\xFE oops\0\x01\x1B[31m \xE2\x82</h1>";
        reply(req, 500, "text/html", page, sizeof page - 1);
    } else {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"code\":\"SUCCESS\",\"message\":\"Success\",\"results\":{\"message_id\":"
                 "\"3EB0B430B6F8F1D0E053AC%02d\",\"status\":\"Message sent to %s\"}}",
                 fx->nrecs, phone);
        reply_json(req, 200, body);
    }
}

static void on_request(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    if (fx->nrecs >= 64) {
        reply_json(req, 500, "{}");
        return;
    }
    rec *r = &fx->recs[fx->nrecs++];
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    snprintf(r->path, sizeof r->path, "%s", evhttp_request_get_uri(req));
    const char *ct = evhttp_find_header(h, "Content-Type");
    snprintf(r->content_type, sizeof r->content_type, "%s", ct ? ct : "");
    const char *dev = evhttp_find_header(h, "X-Device-Id");
    snprintf(r->device, sizeof r->device, "%s", dev ? dev : "");
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    r->body_len = evbuffer_get_length(in);
    r->body = malloc(r->body_len + 1);
    evbuffer_remove(in, r->body, r->body_len);
    r->body[r->body_len] = '\0';

    if (!auth_ok(req)) {
        reply_json(req, 401,
                   "{\"code\":\"401\",\"message\":\"Unauthorized access\",\"results\":null}");
        return;
    }
    if (strcmp(r->path, "/send/message") == 0) {
        if (evhttp_request_get_command(req) != EVHTTP_REQ_POST)
            fake_http_violation(&fx->srv, "/send/message is not a POST");
        if (strcmp(r->content_type, "application/json") != 0)
            fake_http_violation(&fx->srv, "/send/message Content-Type is %s", r->content_type);
        json_t *m = json_loads(r->body, 0, NULL);
        const char *phone = json_string_value(json_object_get(m, "phone"));
        if (!valid_jid(phone))
            fake_http_violation(&fx->srv, "phone is not <digits>@s.whatsapp.net: %s",
                                phone ? phone : "missing");
        if (!json_is_string(json_object_get(m, "message")))
            fake_http_violation(&fx->srv, "message missing");
        answer_send(fx, req, phone ? phone : "");
        json_decref(m);
    } else if (strcmp(r->path, "/send/image") == 0) {
        if (strncmp(r->content_type, "multipart/form-data; boundary=", 30) != 0)
            fake_http_violation(&fx->srv, "/send/image Content-Type is %s", r->content_type);
        char phone[64];
        form_field(r->body, "phone", phone, sizeof phone);
        if (!valid_jid(phone))
            fake_http_violation(&fx->srv, "image phone is not <digits>@s.whatsapp.net: %s", phone);
        bool has_url = strstr(r->body, "name=\"image_url\"") != NULL;
        bool has_file = strstr(r->body, "name=\"image\"") != NULL;
        if (has_url == has_file)
            fake_http_violation(&fx->srv, "want exactly one of image_url and image");
        answer_send(fx, req, phone);
    } else if (strcmp(r->path, "/app/login") == 0) {
        char body[512];
        if (strcmp(r->device, "busy") == 0) {
            reply_json(req, 400,
                       "{\"code\":\"ALREADY_LOGGED_IN\",\"message\":\"you are already logged "
                       "in.\",\"results\":null}");
            return;
        }
        /* Devices named for the link the gateway hands back. */
        static const struct {
            const char *device, *link; /* %d: the fake's port */
        } links[] = {
            {"relative", "/statics/images/qrcode/scan-qr-rel.png"},
            {"other-port", "http://127.0.0.1:1/statics/images/qrcode/x.png"},
            {"other-host", "http://localhost:%d/statics/images/qrcode/x.png"},
            {"other-scheme", "https://127.0.0.1:%d/statics/images/qrcode/x.png"},
            {"scheme-relative", "//127.0.0.2:%d/statics/images/qrcode/x.png"},
            {"user-info", "http://u:p@127.0.0.1:%d/statics/images/qrcode/x.png"},
            {"not-png", "/statics/images/other/page.html"},
            {"png-type-html-body", "/statics/images/other/fake.png"},
            {"too-big", "/statics/images/other/huge.png"},
        };
        const char *link = NULL;
        for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
            if (strcmp(r->device, links[i].device) == 0)
                link = links[i].link;
        char resolved[256];
        if (link)
            snprintf(resolved, sizeof resolved, link, fx->srv.port);
        if (link)
            snprintf(body, sizeof body,
                     "{\"code\":\"SUCCESS\",\"message\":\"Success\",\"results\":{\"qr_duration\":"
                     "30,\"qr_link\":\"%s\"}}",
                     resolved);
        else
            snprintf(body, sizeof body,
                     "{\"code\":\"SUCCESS\",\"message\":\"Success\",\"results\":{\"qr_duration\":"
                     "30,\"qr_link\":\"http://127.0.0.1:%d/statics/images/qrcode/"
                     "scan-qr-b0b7bb43.png\"}}",
                     fx->srv.port);
        reply_json(req, 200, body);
    } else if (strncmp(r->path, "/statics/images/qrcode/", 23) == 0) {
        reply(req, 200, "image/png", PNG, sizeof PNG);
    } else if (strcmp(r->path, "/statics/images/other/page.html") == 0) {
        static const char page[] = "<html>internal page</html>";
        reply(req, 200, "text/html", page, sizeof page - 1);
    } else if (strcmp(r->path, "/statics/images/other/fake.png") == 0) {
        static const char page[] = "<html>internal page</html>";
        reply(req, 200, "image/png", page, sizeof page - 1);
    } else if (strcmp(r->path, "/statics/images/other/huge.png") == 0) {
        size_t n = 1024 * 1024 + 1;
        unsigned char *big = calloc(1, n);
        memcpy(big, PNG, sizeof PNG);
        reply(req, 200, "image/png", big, n);
        free(big);
    } else {
        fake_http_violation(&fx->srv, "unexpected path %s", r->path);
        reply_json(req, 404, "{\"code\":\"404\",\"message\":\"not found\"}");
    }
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    send_check_start(&fx->srv, &fx->env, on_request, fx);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    for (int i = 0; i < fx->nrecs; i++)
        free(fx->recs[i].body);
    fake_http_stop(&fx->srv);
    free(fx);
    return 0;
}

static void *open_device(fixture *fx, const char *password, long timeout_ms)
{
    json_t *settings = json_pack("{s:s, s:s, s:i}", "base_url", fx->srv.base_url, "device_id",
                                 GW_DEVICE, "timeout_ms", (int)timeout_ms);
    json_t *creds = json_pack("{s:s, s:s}", "username", USER, "password", password);
    return send_check_open(&fx->srv, &fx->env, &wc_transport_gowa, "wc-dev-1", settings, creds);
}

typedef struct outcome {
    fixture *fx;
    int calls;
    wc_send_result res;
} outcome;

static void on_sent(void *arg, const wc_send_result *res)
{
    outcome *o = arg;
    o->calls++;
    o->res = *res;
    event_base_loopbreak(o->fx->srv.base);
}

static wc_send_result send_one(fixture *fx, void *dev, const char *to, const char *content,
                               const char *media)
{
    wc_send_request req = {.message_id = 11,
                           .campaign_id = "c1",
                           .device_id = "wc-dev-1",
                           .recipient = to,
                           .content = content,
                           .media_url = media};
    return send_check_one(&fx->srv, &wc_transport_gowa, dev, &req);
}

static void test_text_ok(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, PASS, 5000);
    wc_send_result r = send_one(fx, dev, TO_OK, "Hi \"Ann\"\nline two", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_string_equal(r.provider_id, "3EB0B430B6F8F1D0E053AC01");
    assert_int_equal(r.device_action, WC_DEVICE_OK);
    assert_int_equal(fx->nrecs, 1);
    assert_string_equal(fx->recs[0].path, "/send/message");
    assert_string_equal(fx->recs[0].device, GW_DEVICE);
    json_t *m = json_loads(fx->recs[0].body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(m, "phone")),
                        "60123456789@s.whatsapp.net");
    assert_string_equal(json_string_value(json_object_get(m, "message")), "Hi \"Ann\"\nline two");
    json_decref(m);
    fake_http_assert_no_violations(&fx->srv, "the fake gateway");
    wc_transport_gowa.close(dev);
}

static void test_image_by_url(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, PASS, 5000);
    wc_send_result r = send_one(fx, dev, TO_OK, "A caption", "https://cdn.example.com/a.jpg");
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_string_equal(fx->recs[0].path, "/send/image");
    char v[256];
    form_field(fx->recs[0].body, "phone", v, sizeof v);
    assert_string_equal(v, "60123456789@s.whatsapp.net");
    form_field(fx->recs[0].body, "caption", v, sizeof v);
    assert_string_equal(v, "A caption");
    form_field(fx->recs[0].body, "image_url", v, sizeof v);
    assert_string_equal(v, "https://cdn.example.com/a.jpg");
    fake_http_assert_no_violations(&fx->srv, "the fake gateway");
    wc_transport_gowa.close(dev);
}

static void test_image_from_data_url(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, PASS, 5000);
    char b64[64], url[128];
    sodium_bin2base64(b64, sizeof b64, PNG, sizeof PNG, sodium_base64_VARIANT_ORIGINAL);
    snprintf(url, sizeof url, "data:image/png;base64,%s", b64);
    wc_send_result r = send_one(fx, dev, TO_OK, "", url);
    assert_int_equal(r.outcome, WC_SEND_OK);
    const rec *q = &fx->recs[0];
    assert_non_null(strstr(q->body, "name=\"image\"; filename=\"image.png\"\r\nContent-Type: "
                                    "image/png\r\n\r\n"));
    assert_non_null(memmem(q->body, q->body_len, PNG, sizeof PNG));
    assert_null(strstr(q->body, "name=\"caption\""));
    fake_http_assert_no_violations(&fx->srv, "the fake gateway");
    /* Not a link and not a base64 data: URL. */
    r = send_one(fx, dev, TO_OK, "x", "data:image/png,notbase64");
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "unsupported_media");
    r = send_one(fx, dev, TO_OK, "x", "ftp://example.com/a.png");
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_int_equal(fx->nrecs, 1);
    wc_transport_gowa.close(dev);
}

static void test_gateway_errors(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, PASS, 5000);
    wc_send_result r = send_one(fx, dev, TO_BAD_JID, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "INVALID_JID");
    assert_string_equal(r.error_message, "your JID is invalid");
    assert_int_equal(r.device_action, WC_DEVICE_OK);

    r = send_one(fx, dev, TO_FAILED, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "FAILED");

    r = send_one(fx, dev, TO_NOT_LOGGED_IN, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_string_equal(r.error_code, "INTERNAL_SERVER_ERROR");
    assert_non_null(strstr(r.error_message, "you are not loggin"));
    assert_true(r.retry_after_ms > 0);

    r = send_one(fx, dev, "+60 12", "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "invalid_recipient");
    r = send_one(fx, dev, TO_OK, "", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "empty_message");
    assert_int_equal(fx->nrecs, 3);
    fake_http_assert_no_violations(&fx->srv, "the fake gateway");
    wc_transport_gowa.close(dev);
}

static void test_bad_credentials_take_device_offline(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "wrong", 5000);
    wc_send_result r = send_one(fx, dev, TO_OK, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_int_equal(r.device_action, WC_DEVICE_OFFLINE);
    assert_string_equal(r.device_reason, "gateway rejected credentials");
    assert_null(strstr(r.error_message, "wrong"));
    wc_transport_gowa.close(dev);
}

static void test_timeout_and_close(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, PASS, 300);
    wc_send_result r = send_one(fx, dev, TO_HANG, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_string_equal(r.error_code, "timeout");
    assert_true(r.retry_after_ms > 0);
    assert_true(r.outcome_unknown); /* the gateway had the request */
    wc_transport_gowa.close(dev);

    dev = open_device(fx, PASS, 30000);
    outcome o = {.fx = fx}, bad = {.fx = fx};
    wc_send_request req = {.message_id = 1, .recipient = TO_HANG, .content = "x"};
    assert_int_equal(wc_transport_gowa.send(dev, &req, on_sent, &o), 0);
    wc_send_request empty = {.message_id = 2, .recipient = TO_OK, .content = ""};
    assert_int_equal(wc_transport_gowa.send(dev, &empty, on_sent, &bad), 0);
    wc_transport_gowa.close(dev);
    assert_int_equal(o.calls, 1);
    assert_string_equal(o.res.error_code, "closed");
    assert_false(o.res.outcome_unknown); /* closed before it connected */
    assert_int_equal(bad.calls, 1);
    assert_string_equal(bad.res.error_code, "closed");
    assert_false(bad.res.outcome_unknown);
    fake_http_run(&fx->srv, 300);
    assert_true(fx->srv.deadline_hit);
    assert_int_equal(o.calls, 1);
    assert_int_equal(bad.calls, 1);
}

static void *open_default(void *fx)
{
    return open_device(fx, PASS, 5000);
}

/* Whenever the request may have reached the gateway and no answer of the
 * gateway's came back, the send is in doubt. */
static void test_in_doubt_when_the_reply_is_lost(void **state)
{
    fixture *fx = *state;
    wc_send_request req = {.message_id = 11,
                           .campaign_id = "c1",
                           .device_id = "wc-dev-1",
                           .recipient = TO_OK,
                           .content = "hi"};
    send_check_in_doubt(&fx->srv, &wc_transport_gowa, open_default, fx, &req, "gateway",
                        "{\"code\":\"SUCCESS\",\"mes");

    /* Nothing listens: refused, nothing left, a plain retry. */
    fake_http_raw_free(&fx->srv);
    void *dev = open_device(fx, PASS, 2000);
    wc_send_result r = send_one(fx, dev, TO_OK, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_string_equal(r.error_code, "network");
    assert_false(r.outcome_unknown);
    wc_transport_gowa.close(dev);
}

/* The gateway's own answers are definite, even its 5xx; a bare 5xx page is not. */
static void test_gateway_answers_and_pages(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, PASS, 5000);
    wc_send_result r = send_one(fx, dev, TO_NOT_LOGGED_IN, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_false(r.outcome_unknown);
    r = send_one(fx, dev, TO_BAD_BODY, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_true(r.outcome_unknown);
    assert_string_equal(r.error_code, "http_500");
    assert_non_null(strstr(r.error_message, "oops"));
    send_check_clean(&r);
    wc_transport_gowa.close(dev);
}

/* The gateway's texts are untrusted: long multi-byte codes and messages are
 * cut on a character boundary, and ids that cannot be stored whole and plain
 * count as missing. */
static void test_gateway_texts_are_made_safe(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, PASS, 5000);
    wc_send_result r = send_one(fx, dev, TO_LONG_UTF8, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    send_check_clean(&r);
    assert_true(strlen(r.error_message) > 200);

    r = send_one(fx, dev, TO_LONG_CODE, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    send_check_clean(&r);
    assert_true(strlen(r.error_code) >= 40);

    r = send_one(fx, dev, TO_LONG_ID, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK); /* sent: never send it twice */
    assert_string_equal(r.provider_id, "");  /* not stored cut */
    assert_non_null(strstr(r.error_message, "unusable"));
    send_check_clean(&r);

    r = send_one(fx, dev, TO_BAD_ID, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_string_equal(r.provider_id, "");
    send_check_clean(&r);
    fake_http_assert_no_violations(&fx->srv, "the fake gateway");
    wc_transport_gowa.close(dev);
}

/* Closing with a request the gateway holds: the callback says in doubt. */
static void test_close_with_request_out(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, PASS, 30000);
    outcome o = {.fx = fx};
    wc_send_request req = {.message_id = 1, .recipient = TO_HANG, .content = "x"};
    assert_int_equal(wc_transport_gowa.send(dev, &req, on_sent, &o), 0);
    fake_http_run(&fx->srv, 200);
    assert_int_equal(fx->nrecs, 1); /* the gateway has it */
    assert_int_equal(o.calls, 0);
    wc_transport_gowa.close(dev);
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.res.outcome, WC_SEND_RETRY);
    assert_string_equal(o.res.error_code, "closed");
    assert_true(o.res.outcome_unknown);
}

#define POISON_PAGE "<h1>\xFF\xC3(\0bad\x01\xE2\x82</h1>"

/* The classification alone, on replies no fake server sends. */
static void test_classify_reply(void **state)
{
    (void)state;
    static const send_check_reply cases[] = {
        {200, "{\"code\":\"SUCCESS\",\"results\":{\"message_id\":\"3EB0\"}}", 0, WC_SEND_OK, false,
         ""},
        {200, "", 0, WC_SEND_RETRY, true, "bad_reply"},
        {200, "<html>captive portal</html>", 0, WC_SEND_RETRY, true, "bad_reply"},
        {502, "", 0, WC_SEND_RETRY, true, "http_502"},
        {503, "{\"error\":\"upstream\"}", 0, WC_SEND_RETRY, true, "http_503"},
        {500, "{\"code\":\"INTERNAL_SERVER_ERROR\",\"message\":\"x\"}", 0, WC_SEND_RETRY, false,
         "INTERNAL_SERVER_ERROR"},
        {500, "{\"code\":500,\"message\":\"x\"}", 0, WC_SEND_RETRY, false, "500"},
        {400, "{\"code\":\"INVALID_JID\",\"message\":\"x\"}", 0, WC_SEND_FAIL, false,
         "INVALID_JID"},
        {429, "", 0, WC_SEND_RETRY, false, "http_429"},
        {401, POISON_PAGE, sizeof POISON_PAGE - 1, WC_SEND_RETRY, false, "http_401"},
        {502, POISON_PAGE, sizeof POISON_PAGE - 1, WC_SEND_RETRY, true, "http_502"},
        {400, "\xC3", 1, WC_SEND_FAIL, false, "http_400"},
    };
    send_check_replies(cases, sizeof cases / sizeof cases[0], wc_gowa_classify_reply);
    wc_send_result r;
    wc_gowa_classify_reply(200, NULL, 0, 1, &r);
    assert_true(r.outcome_unknown);
}

static void test_open_validation(void **state)
{
    fixture *fx = *state;
    fx->env.provider_hosts = "http://x";
    char err[256];
    json_t *s = json_loads("{\"device_id\":\"x\"}", 0, NULL);
    assert_null(wc_transport_gowa.open(&fx->env, "d", s, NULL, err, sizeof err));
    assert_non_null(strstr(err, "base_url"));
    json_decref(s);
    s = json_loads("{\"base_url\":\"http://x\",\"device_id\":\"a\\r\\nX: y\"}", 0, NULL);
    assert_null(wc_transport_gowa.open(&fx->env, "d", s, NULL, err, sizeof err));
    assert_non_null(strstr(err, "device_id"));
    json_decref(s);
    s = json_loads("{\"base_url\":\"http://x\"}", 0, NULL);
    json_t *c = json_loads("{\"username\":\"a:b\",\"password\":\"p\"}", 0, NULL);
    assert_null(wc_transport_gowa.open(&fx->env, "d", s, c, err, sizeof err));
    assert_non_null(strstr(err, "username"));
    json_decref(c);
    /* Without credentials: a gateway with no basic auth. */
    void *dev = wc_transport_gowa.open(&fx->env, "d", s, NULL, err, sizeof err);
    assert_non_null(dev);
    wc_transport_gowa.close(dev);
    json_decref(s);
    assert_ptr_equal(wc_transport_find("gowa"), &wc_transport_gowa);
}

/* settings.base_url is the dashboard's to write; the gateway's password goes
 * only where WACAST_PROVIDER_HOSTS allows. No gateway is allowed by default. */
static void test_base_url_allow_list(void **state)
{
    fixture *fx = *state;
    char err[256];
    json_t *s = json_pack("{s:s}", "base_url", fx->srv.base_url);
    json_t *c = json_pack("{s:s, s:s}", "username", USER, "password", PASS);
    fx->env.provider_hosts = NULL;
    assert_null(wc_transport_gowa.open(&fx->env, "d", s, c, err, sizeof err));
    char want[128];
    snprintf(want, sizeof want,
             "gowa: base_url not allowed: http://127.0.0.1:%d (not in WACAST_PROVIDER_HOSTS)",
             fx->srv.port);
    assert_string_equal(err, want);
    fx->env.provider_hosts = "http://127.0.0.1:1,http://localhost:80";
    assert_null(wc_transport_gowa.open(&fx->env, "d", s, c, err, sizeof err));
    assert_non_null(strstr(err, "base_url not allowed"));
    assert_null(strstr(err, PASS));
    json_decref(s);
    s = json_pack("{s:s}", "base_url", "http://u:p@127.0.0.1:1");
    assert_null(wc_transport_gowa.open(&fx->env, "d", s, c, err, sizeof err));
    assert_non_null(strstr(err, "not a valid"));
    json_decref(s);
    json_decref(c);
    /* Listed: opens and sends to the fake. */
    void *dev = open_device(fx, PASS, 5000);
    wc_send_result r = send_one(fx, dev, TO_OK, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    wc_transport_gowa.close(dev);
    assert_int_equal(fx->nrecs, 1);
}

typedef struct qr_outcome {
    fixture *fx;
    int calls;
    char error[512];
    bool has_error;
    char link[256];
    int duration;
    char png_b64[256];
    size_t png_len;
} qr_outcome;

static void on_qr(void *arg, const wc_gowa_qr *qr)
{
    qr_outcome *o = arg;
    o->calls++;
    o->has_error = qr->error != NULL;
    snprintf(o->error, sizeof o->error, "%s", qr->error ? qr->error : "");
    if (!qr->error) {
        snprintf(o->link, sizeof o->link, "%s", qr->qr_link);
        o->duration = qr->qr_duration;
        snprintf(o->png_b64, sizeof o->png_b64, "%s", qr->png_base64);
        o->png_len = qr->png_len;
    }
    event_base_loopbreak(o->fx->srv.base);
}

static qr_outcome login(fixture *fx, wc_httpc *c, const char *device, const char *pass)
{
    qr_outcome o = {.fx = fx};
    assert_int_equal(wc_gowa_login_qr(c, fx->srv.base_url, device, USER, pass, on_qr, &o), 0);
    assert_int_equal(o.calls, 0);
    fake_http_run(&fx->srv, 10000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(o.calls, 1);
    return o;
}

static void test_login_qr(void **state)
{
    fixture *fx = *state;
    wc_httpc *c = wc_httpc_new(fx->srv.base, 0);
    char want_b64[64];
    sodium_bin2base64(want_b64, sizeof want_b64, PNG, sizeof PNG, sodium_base64_VARIANT_ORIGINAL);

    qr_outcome o = login(fx, c, GW_DEVICE, PASS);
    assert_false(o.has_error);
    char want_link[128];
    snprintf(want_link, sizeof want_link,
             "http://127.0.0.1:%d/statics/images/qrcode/scan-qr-b0b7bb43.png", fx->srv.port);
    assert_string_equal(o.link, want_link);
    assert_int_equal(o.duration, 30);
    assert_int_equal(o.png_len, sizeof PNG);
    assert_string_equal(o.png_b64, want_b64);
    assert_string_equal(fx->recs[0].path, "/app/login");
    assert_string_equal(fx->recs[0].device, GW_DEVICE);

    /* A relative link resolves against the gateway. */
    o = login(fx, c, "relative", PASS);
    assert_false(o.has_error);
    assert_non_null(strstr(o.link, "/statics/images/qrcode/scan-qr-rel.png"));
    assert_string_equal(o.png_b64, want_b64);

    /* A link off the gateway's origin is not fetched, and nothing but a
     * PNG of at most 1 MiB is handed back. */
    static const struct {
        const char *device, *error;
        int fetches; /* requests the fake sees: the login, and the image when fetched */
    } refused[] = {
        {"other-port", "not on the gateway's origin", 1},
        {"other-host", "not on the gateway's origin", 1},
        {"other-scheme", "not on the gateway's origin", 1},
        {"scheme-relative", "not on the gateway's origin", 1},
        {"user-info", "not on the gateway's origin", 1},
        {"not-png", "did not answer with a PNG", 2},
        {"png-type-html-body", "did not answer with a PNG", 2},
        {"too-big", "larger than", 2},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        int before = fx->nrecs;
        o = login(fx, c, refused[i].device, PASS);
        if (!o.has_error || !strstr(o.error, refused[i].error))
            fail_msg("%s: want an error with \"%s\", got \"%s\"", refused[i].device,
                     refused[i].error, o.has_error ? o.error : "(none: the image was returned)");
        assert_null(strstr(o.error, "internal page"));
        if (fx->nrecs - before != refused[i].fetches)
            fail_msg("%s: the fake saw %d requests, want %d", refused[i].device, fx->nrecs - before,
                     refused[i].fetches);
    }

    o = login(fx, c, "busy", PASS);
    assert_true(o.has_error);
    assert_non_null(strstr(o.error, "ALREADY_LOGGED_IN"));

    o = login(fx, c, GW_DEVICE, "wrong");
    assert_true(o.has_error);
    assert_string_equal(o.error, "gateway rejected credentials");
    fake_http_assert_no_violations(&fx->srv, "the fake gateway");

    /* Freeing the client while a login is in flight still calls back once. */
    qr_outcome pending = {.fx = fx};
    assert_int_equal(wc_gowa_login_qr(c, fx->srv.base_url, GW_DEVICE, USER, PASS, on_qr, &pending),
                     0);
    wc_httpc_free(c);
    assert_int_equal(pending.calls, 1);
    assert_non_null(strstr(pending.error, "cancelled"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_text_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_by_url, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image_from_data_url, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gateway_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_credentials_take_device_offline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_in_doubt_when_the_reply_is_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gateway_answers_and_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gateway_texts_are_made_safe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_request_out, setup, teardown),
        cmocka_unit_test(test_classify_reply),
        cmocka_unit_test_setup_teardown(test_open_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_base_url_allow_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_login_qr, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
