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

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>
#include <sodium.h>

#include "wc_gowa.h"
#include "wc_httpc.h"
#include "wc_transport.h"

#define USER "admin"
#define PASS "s3cret:pw"
#define GW_DEVICE "dev-a"

#define TO_OK "+60123456789"
#define TO_BAD_JID "+6011400"
#define TO_NOT_LOGGED_IN "+6011500"
#define TO_HANG "+6011000"
#define TO_FAILED "+6011200"

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
    struct event_base *base;
    struct evhttp *http;
    int port;
    char base_url[64];
    rec recs[64];
    int nrecs;
    char violations[4096];
    int nviolations;
    bool deadline_hit;
    wc_transport_env env;
} fixture;

static void violation(fixture *fx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void violation(fixture *fx, const char *fmt, ...)
{
    size_t used = strlen(fx->violations);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fx->violations + used, sizeof fx->violations - used, fmt, ap);
    va_end(ap);
    used = strlen(fx->violations);
    snprintf(fx->violations + used, sizeof fx->violations - used, "\n");
    fx->nviolations++;
}

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
            violation(fx, "/send/message is not a POST");
        if (strcmp(r->content_type, "application/json") != 0)
            violation(fx, "/send/message Content-Type is %s", r->content_type);
        json_t *m = json_loads(r->body, 0, NULL);
        const char *phone = json_string_value(json_object_get(m, "phone"));
        if (!valid_jid(phone))
            violation(fx, "phone is not <digits>@s.whatsapp.net: %s", phone ? phone : "missing");
        if (!json_is_string(json_object_get(m, "message")))
            violation(fx, "message missing");
        answer_send(fx, req, phone ? phone : "");
        json_decref(m);
    } else if (strcmp(r->path, "/send/image") == 0) {
        if (strncmp(r->content_type, "multipart/form-data; boundary=", 30) != 0)
            violation(fx, "/send/image Content-Type is %s", r->content_type);
        char phone[64];
        form_field(r->body, "phone", phone, sizeof phone);
        if (!valid_jid(phone))
            violation(fx, "image phone is not <digits>@s.whatsapp.net: %s", phone);
        bool has_url = strstr(r->body, "name=\"image_url\"") != NULL;
        bool has_file = strstr(r->body, "name=\"image\"") != NULL;
        if (has_url == has_file)
            violation(fx, "want exactly one of image_url and image");
        answer_send(fx, req, phone);
    } else if (strcmp(r->path, "/app/login") == 0) {
        char body[512];
        if (strcmp(r->device, "busy") == 0) {
            reply_json(req, 400,
                       "{\"code\":\"ALREADY_LOGGED_IN\",\"message\":\"you are already logged "
                       "in.\",\"results\":null}");
            return;
        }
        if (strcmp(r->device, "relative") == 0)
            snprintf(body, sizeof body,
                     "{\"code\":\"SUCCESS\",\"message\":\"Success\",\"results\":{\"qr_duration\":"
                     "30,\"qr_link\":\"/statics/images/qrcode/scan-qr-rel.png\"}}");
        else
            snprintf(body, sizeof body,
                     "{\"code\":\"SUCCESS\",\"message\":\"Success\",\"results\":{\"qr_duration\":"
                     "30,\"qr_link\":\"http://127.0.0.1:%d/statics/images/qrcode/"
                     "scan-qr-b0b7bb43.png\"}}",
                     fx->port);
        reply_json(req, 200, body);
    } else if (strncmp(r->path, "/statics/images/qrcode/", 23) == 0) {
        reply(req, 200, "image/png", PNG, sizeof PNG);
    } else {
        violation(fx, "unexpected path %s", r->path);
        reply_json(req, 404, "{\"code\":\"404\",\"message\":\"not found\"}");
    }
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->base = event_base_new();
    fx->http = evhttp_new(fx->base);
    evhttp_set_gencb(fx->http, on_request, fx);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(fx->http, "127.0.0.1", 0);
    assert_non_null(bs);
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len);
    fx->port = ntohs(sin.sin_port);
    snprintf(fx->base_url, sizeof fx->base_url, "http://127.0.0.1:%d/", fx->port);
    fx->env.base = fx->base;
    fx->env.instance_id = "test";
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    for (int i = 0; i < fx->nrecs; i++)
        free(fx->recs[i].body);
    evhttp_free(fx->http);
    event_base_free(fx->base);
    free(fx);
    return 0;
}

static void *open_device(fixture *fx, const char *password, long timeout_ms)
{
    json_t *settings = json_pack("{s:s, s:s, s:i}", "base_url", fx->base_url, "device_id",
                                 GW_DEVICE, "timeout_ms", (int)timeout_ms);
    json_t *creds = json_pack("{s:s, s:s}", "username", USER, "password", password);
    char err[256] = "";
    void *dev = wc_transport_gowa.open(&fx->env, "wc-dev-1", settings, creds, err, sizeof err);
    if (!dev)
        fail_msg("open: %s", err);
    json_decref(settings);
    json_decref(creds);
    return dev;
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
    event_base_loopbreak(o->fx->base);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fixture *fx = arg;
    fx->deadline_hit = true;
    event_base_loopbreak(fx->base);
}

static void run_loop(fixture *fx, int ms)
{
    struct event *deadline = evtimer_new(fx->base, on_deadline, fx);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(deadline, &tv);
    fx->deadline_hit = false;
    event_base_loop(fx->base, 0);
    event_free(deadline);
}

static wc_send_result send_one(fixture *fx, void *dev, const char *to, const char *content,
                               const char *media)
{
    outcome o = {.fx = fx};
    wc_send_request req = {.message_id = 11,
                           .campaign_id = "c1",
                           .device_id = "wc-dev-1",
                           .recipient = to,
                           .content = content,
                           .media_url = media};
    assert_int_equal(wc_transport_gowa.send(dev, &req, on_sent, &o), 0);
    assert_int_equal(o.calls, 0); /* never from inside send() */
    run_loop(fx, 10000);
    assert_false(fx->deadline_hit);
    assert_int_equal(o.calls, 1);
    return o.res;
}

static void assert_no_violations(fixture *fx)
{
    if (fx->nviolations)
        fail_msg("the fake gateway saw %d violation(s):\n%s", fx->nviolations, fx->violations);
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
    assert_no_violations(fx);
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
    assert_no_violations(fx);
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
    assert_no_violations(fx);
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
    assert_no_violations(fx);
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
    assert_int_equal(bad.calls, 1);
    assert_string_equal(bad.res.error_code, "closed");
    run_loop(fx, 300);
    assert_true(fx->deadline_hit);
    assert_int_equal(o.calls, 1);
    assert_int_equal(bad.calls, 1);
}

static void test_open_validation(void **state)
{
    fixture *fx = *state;
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
    event_base_loopbreak(o->fx->base);
}

static qr_outcome login(fixture *fx, wc_httpc *c, const char *device, const char *pass)
{
    qr_outcome o = {.fx = fx};
    assert_int_equal(wc_gowa_login_qr(c, fx->base_url, device, USER, pass, on_qr, &o), 0);
    assert_int_equal(o.calls, 0);
    run_loop(fx, 10000);
    assert_false(fx->deadline_hit);
    assert_int_equal(o.calls, 1);
    return o;
}

static void test_login_qr(void **state)
{
    fixture *fx = *state;
    wc_httpc *c = wc_httpc_new(fx->base, 0);
    char want_b64[64];
    sodium_bin2base64(want_b64, sizeof want_b64, PNG, sizeof PNG, sodium_base64_VARIANT_ORIGINAL);

    qr_outcome o = login(fx, c, GW_DEVICE, PASS);
    assert_false(o.has_error);
    char want_link[128];
    snprintf(want_link, sizeof want_link,
             "http://127.0.0.1:%d/statics/images/qrcode/scan-qr-b0b7bb43.png", fx->port);
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

    o = login(fx, c, "busy", PASS);
    assert_true(o.has_error);
    assert_non_null(strstr(o.error, "ALREADY_LOGGED_IN"));

    o = login(fx, c, GW_DEVICE, "wrong");
    assert_true(o.has_error);
    assert_string_equal(o.error, "gateway rejected credentials");
    assert_no_violations(fx);

    /* Freeing the client while a login is in flight still calls back once. */
    qr_outcome pending = {.fx = fx};
    assert_int_equal(wc_gowa_login_qr(c, fx->base_url, GW_DEVICE, USER, PASS, on_qr, &pending), 0);
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
        cmocka_unit_test_setup_teardown(test_open_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_login_qr, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
