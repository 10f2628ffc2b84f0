/* Unit tests for the cloudapi transport against an in-process fake of Meta's
 * Cloud API (evhttp on the same loop). The fake checks what arrives (path,
 * bearer token, and the JSON body against the OpenAPI message schemas) and
 * answers the documented bodies: success, each error code with the
 * documented error shape, 500s, or no answer at all. The recipient number
 * picks the behaviour. Pacing is asserted from the arrival times the fake
 * records, never with sleeps. */
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

#include "send_check.h"
#include "wc_cloudapi.h"
#include "wc_daemon.h"
#include "wc_httpc.h"
#include "wc_text.h"
#include "wc_transport.h"

#define TOKEN "EAAG-test-token-123"
#define MAX_RECS 1024

/* Recipients: "+6099<code>" answers that Cloud API error code; the others below. */
#define TO_OK "+60123456789"
#define TO_PLAIN_500 "+6098500"
#define TO_HANG "+6097000"
#define TO_NO_ID "+6096000"
#define TO_LONG_UTF8 "+6095001" /* error message: 300 x "é" */
#define TO_LONG_ID "+6095002"   /* success with a 200-character message id */
#define TO_BAD_ID "+6095003"    /* success with a message id holding non-ASCII */
#define TO_JSON_500 "+6095004"  /* Meta's own 500 with its error body (131000) */

typedef struct rec {
    int64_t at_us;
    char path[128];
    char to[32];
    json_t *body; /* owned */
} rec;

typedef struct fixture {
    fake_http srv;
    rec recs[MAX_RECS];
    int nrecs;
    wc_transport_env env;
} fixture;

static bool only_keys(json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            ok = ok || strcmp(*a, key) == 0;
        if (!ok)
            return false;
    }
    return true;
}

static const char *str_of(json_t *v)
{
    const char *s = json_string_value(v);
    return s ? s : "";
}

static bool all_digits(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
    }
    return true;
}

/* The parts of the OpenAPI schemas (TextMessage, ImageMessage,
 * TemplateMessage, BaseMessageProperties) a send must satisfy. */
static void check_message(fixture *fx, json_t *m)
{
    static const char *const top[] = {
        "messaging_product", "recipient_type",           "to", "type", "text", "image",
        "template",          "biz_opaque_callback_data", NULL};
    if (!json_is_object(m)) {
        fake_http_violation(&fx->srv, "body is not a JSON object");
        return;
    }
    if (!only_keys(m, top))
        fake_http_violation(&fx->srv, "unexpected top-level key");
    if (strcmp(str_of(json_object_get(m, "messaging_product")), "whatsapp") != 0)
        fake_http_violation(&fx->srv, "messaging_product is not whatsapp");
    if (strcmp(str_of(json_object_get(m, "recipient_type")), "individual") != 0)
        fake_http_violation(&fx->srv, "recipient_type is not individual");
    if (!all_digits(json_string_value(json_object_get(m, "to"))))
        fake_http_violation(&fx->srv, "to is not digits only");
    const char *opaque = json_string_value(json_object_get(m, "biz_opaque_callback_data"));
    if (!all_digits(opaque) || strlen(opaque) > 512)
        fake_http_violation(&fx->srv, "biz_opaque_callback_data is not a decimal message id");
    const char *type = json_string_value(json_object_get(m, "type"));
    if (!type) {
        fake_http_violation(&fx->srv, "no type");
        return;
    }
    int kinds = !!json_object_get(m, "text") + !!json_object_get(m, "image") +
                !!json_object_get(m, "template");
    if (kinds != 1 || !json_object_get(m, type))
        fake_http_violation(&fx->srv, "type %s does not match the one content object", type);
    if (strcmp(type, "text") == 0) {
        json_t *t = json_object_get(m, "text");
        static const char *const keys[] = {"body", "preview_url", NULL};
        if (!json_is_object(t) || !only_keys(t, keys) ||
            !json_is_string(json_object_get(t, "body")) ||
            !json_is_false(json_object_get(t, "preview_url")))
            fake_http_violation(&fx->srv, "text object does not match TextMessage");
    } else if (strcmp(type, "image") == 0) {
        json_t *im = json_object_get(m, "image");
        static const char *const keys[] = {"link", "id", "caption", NULL};
        bool link = json_is_string(json_object_get(im, "link"));
        bool id = json_is_string(json_object_get(im, "id"));
        json_t *cap = json_object_get(im, "caption");
        if (!json_is_object(im) || !only_keys(im, keys) || link == id ||
            (cap && (!json_is_string(cap) || json_string_length(cap) > 1024)))
            fake_http_violation(&fx->srv, "image object does not match MediaObject");
    } else if (strcmp(type, "template") == 0) {
        json_t *t = json_object_get(m, "template");
        static const char *const keys[] = {"name", "language", "components", NULL};
        static const char *const lkeys[] = {"code", "policy", NULL};
        json_t *lang = json_object_get(t, "language");
        if (!json_is_object(t) || !only_keys(t, keys) ||
            !json_is_string(json_object_get(t, "name")) || !json_is_object(lang) ||
            !only_keys(lang, lkeys) || !json_is_string(json_object_get(lang, "code")) ||
            strcmp(str_of(json_object_get(lang, "policy")), "deterministic") != 0)
            fake_http_violation(&fx->srv,
                                "template object does not match TemplateObject/LanguageObject");
        json_t *comps = json_object_get(t, "components");
        if (comps && !json_is_array(comps))
            fake_http_violation(&fx->srv, "template components is not an array");
    } else {
        fake_http_violation(&fx->srv, "unexpected type %s", type);
    }
}

static void reply(struct evhttp_request *req, int status, const char *body)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, status, status == 200 ? "OK" : "Error", out);
    evbuffer_free(out);
}

/* The documented error shape. */
static void reply_error(struct evhttp_request *req, int status, long code, const char *message)
{
    char body[1024];
    snprintf(body, sizeof body,
             "{\"error\":{\"message\":\"%s\",\"type\":\"OAuthException\",\"code\":%ld,"
             "\"error_data\":{\"messaging_product\":\"whatsapp\",\"details\":\"details of %ld\"},"
             "\"fbtrace_id\":\"AbCdEfGh123\"}}",
             message, code, code);
    reply(req, status, body);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    if (fx->nrecs >= MAX_RECS) {
        reply(req, 500, "{}");
        return;
    }
    rec *r = &fx->recs[fx->nrecs++];
    r->at_us = wc_mono_us();
    snprintf(r->path, sizeof r->path, "%s", evhttp_request_get_uri(req));
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST)
        fake_http_violation(&fx->srv, "method is not POST");
    const char *auth = evhttp_find_header(h, "Authorization");
    if (!auth || strcmp(auth, "Bearer " TOKEN) != 0)
        fake_http_violation(&fx->srv, "Authorization is %s", auth ? auth : "missing");
    const char *ct = evhttp_find_header(h, "Content-Type");
    if (!ct || strcmp(ct, "application/json") != 0)
        fake_http_violation(&fx->srv, "Content-Type is %s", ct ? ct : "missing");
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    char *raw = malloc(n + 1);
    evbuffer_remove(in, raw, n);
    raw[n] = '\0';
    r->body = json_loads(raw, 0, NULL);
    free(raw);
    check_message(fx, r->body);
    const char *to = json_string_value(json_object_get(r->body, "to"));
    snprintf(r->to, sizeof r->to, "%s", to ? to : "");

    if (strncmp(r->to, "6099", 4) == 0) {
        long code = strtol(r->to + 4, NULL, 10);
        int status = code == 190 ? 401 : code == 130429 ? 429 : code == 2 ? 503 : 400;
        reply_error(req, status, code, "(#x) a title that must not matter");
    } else if (strcmp(r->to, TO_PLAIN_500 + 1) == 0) {
        reply(req, 500, "<html>Internal Server Error</html>");
    } else if (strcmp(r->to, TO_HANG + 1) == 0) {
        /* no answer */
    } else if (strcmp(r->to, TO_NO_ID + 1) == 0) {
        reply(req, 200, "{\"messaging_product\":\"whatsapp\"}");
    } else if (strcmp(r->to, TO_LONG_UTF8 + 1) == 0) {
        char message[601] = "";
        for (int i = 0; i < 300; i++)
            strcat(message, "\xC3\xA9");
        reply_error(req, 400, 131026, message);
    } else if (strcmp(r->to, TO_LONG_ID + 1) == 0) {
        char body[512];
        snprintf(body, sizeof body,
                 "{\"messaging_product\":\"whatsapp\",\"messages\":[{\"id\":\"wamid.%0200d\"}]}",
                 7);
        reply(req, 200, body);
    } else if (strcmp(r->to, TO_BAD_ID + 1) == 0) {
        reply(req, 200,
              "{\"messaging_product\":\"whatsapp\",\"messages\":[{\"id\":\"wamid.\xC3\xA9 "
              "x\\u0001\"}]}");
    } else if (strcmp(r->to, TO_JSON_500 + 1) == 0) {
        reply_error(req, 500, 131000, "Something went wrong");
    } else {
        char body[512];
        snprintf(body, sizeof body,
                 "{\"messaging_product\":\"whatsapp\",\"contacts\":[{\"input\":\"+%s\","
                 "\"wa_id\":\"%s\"}],\"messages\":[{\"id\":\"wamid.HBgL%s.%d\"}]}",
                 r->to, r->to, r->to, fx->nrecs);
        reply(req, 200, body);
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
        json_decref(fx->recs[i].body);
    fake_http_stop(&fx->srv);
    free(fx);
    return 0;
}

static void *open_device(fixture *fx, const char *pnid, double mps, long timeout_ms)
{
    json_t *settings =
        json_pack("{s:s, s:s, s:s, s:f, s:i}", "base_url", fx->srv.base_url, "api_version", "v23.0",
                  "phone_number_id", pnid, "mps", mps, "timeout_ms", (int)timeout_ms);
    json_t *creds = json_pack("{s:s}", "access_token", TOKEN);
    return send_check_open(&fx->srv, &fx->env, &wc_transport_cloudapi, "dev-1", settings, creds);
}

typedef struct outcome {
    fixture *fx;
    int calls;
    wc_send_result res;
    int *counter;
    int want;
} outcome;

static void on_sent(void *arg, const wc_send_result *res)
{
    outcome *o = arg;
    o->calls++;
    o->res = *res;
    if (o->counter) {
        if (++*o->counter == o->want)
            event_base_loopbreak(o->fx->srv.base);
    } else {
        event_base_loopbreak(o->fx->srv.base);
    }
}

/* Sends one message and waits for its outcome. */
static wc_send_result send_one(fixture *fx, void *dev, int64_t id, const char *to,
                               const char *content, const char *media)
{
    wc_send_request req = {.message_id = id,
                           .campaign_id = "c1",
                           .device_id = "dev-1",
                           .recipient = to,
                           .content = content,
                           .media_url = media};
    return send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
}

static void test_text_ok(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(fx, dev, 4242, TO_OK, "Hello Ann", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_string_equal(r.provider_id, "wamid.HBgL60123456789.1");
    assert_int_equal(r.device_action, WC_DEVICE_OK);
    assert_int_equal(fx->nrecs, 1);
    assert_string_equal(fx->recs[0].path, "/v23.0/1234567890/messages");
    json_t *b = fx->recs[0].body;
    assert_string_equal(json_string_value(json_object_get(b, "to")), "60123456789");
    assert_string_equal(json_string_value(json_object_get(b, "type")), "text");
    assert_string_equal(json_string_value(json_object_get(b, "recipient_type")), "individual");
    assert_string_equal(json_string_value(json_object_get(b, "biz_opaque_callback_data")), "4242");
    assert_string_equal(json_string_value(json_object_get(json_object_get(b, "text"), "body")),
                        "Hello Ann");
    fake_http_assert_no_violations(&fx->srv, "the fake Cloud API");
    wc_transport_cloudapi.close(dev);
}

static void test_image(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(fx, dev, 1, TO_OK, "Look at this", "https://cdn.example.com/a.jpg");
    assert_int_equal(r.outcome, WC_SEND_OK);
    json_t *im = json_object_get(fx->recs[0].body, "image");
    assert_string_equal(json_string_value(json_object_get(im, "link")),
                        "https://cdn.example.com/a.jpg");
    assert_string_equal(json_string_value(json_object_get(im, "caption")), "Look at this");
    /* An uploaded media id. */
    r = send_one(fx, dev, 2, TO_OK, "", "media:1037543291543636");
    assert_int_equal(r.outcome, WC_SEND_OK);
    im = json_object_get(fx->recs[1].body, "image");
    assert_string_equal(json_string_value(json_object_get(im, "id")), "1037543291543636");
    assert_null(json_object_get(im, "caption"));
    /* A data: URL needs an upload first: refused without a request. */
    r = send_one(fx, dev, 3, TO_OK, "x", "data:image/png;base64,iVBORw0KGgo=");
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "unsupported_media");
    assert_int_equal(fx->nrecs, 2);
    fake_http_assert_no_violations(&fx->srv, "the fake Cloud API");
    wc_transport_cloudapi.close(dev);
}

static void test_template(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(
        fx, dev, 77, TO_OK,
        "template:{\"name\":\"order_update\",\"language\":\"en_US\",\"components\":[{\"type\":"
        "\"body\",\"parameters\":[{\"type\":\"text\",\"text\":\"Ann\"}]}]}",
        "https://ignored.example.com/x.jpg");
    assert_int_equal(r.outcome, WC_SEND_OK);
    json_t *b = fx->recs[0].body;
    assert_string_equal(json_string_value(json_object_get(b, "type")), "template");
    json_t *t = json_object_get(b, "template");
    assert_string_equal(json_string_value(json_object_get(t, "name")), "order_update");
    json_t *lang = json_object_get(t, "language");
    assert_string_equal(json_string_value(json_object_get(lang, "code")), "en_US");
    assert_string_equal(json_string_value(json_object_get(lang, "policy")), "deterministic");
    json_t *p0 = json_array_get(
        json_object_get(json_array_get(json_object_get(t, "components"), 0), "parameters"), 0);
    assert_string_equal(json_string_value(json_object_get(p0, "text")), "Ann");

    /* language as an object, no components. */
    r = send_one(fx, dev, 78, TO_OK,
                 "template:{\"name\":\"hello_world\",\"language\":{\"code\":\"id\"}}", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    t = json_object_get(fx->recs[1].body, "template");
    assert_null(json_object_get(t, "components"));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(t, "language"), "policy")),
        "deterministic");

    /* Broken references fail without a request. */
    const char *bad[] = {
        "template:{not json", "template:{\"language\":\"en\"}", "template:{\"name\":\"x\"}",
        "template:{\"name\":\"x\",\"language\":\"en\",\"components\":{}}", "template:[1]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = send_one(fx, dev, 79, TO_OK, bad[i], NULL);
        assert_int_equal(r.outcome, WC_SEND_FAIL);
        assert_string_equal(r.error_code, "bad_template");
    }
    assert_int_equal(fx->nrecs, 2);
    fake_http_assert_no_violations(&fx->srv, "the fake Cloud API");
    wc_transport_cloudapi.close(dev);
}

static void test_bad_recipient_and_empty(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(fx, dev, 1, "+60 12-345", "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "invalid_recipient");
    r = send_one(fx, dev, 1, TO_OK, "", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "empty_message");
    assert_int_equal(fx->nrecs, 0);
    wc_transport_cloudapi.close(dev);
}

typedef struct error_case {
    const char *to;
    wc_send_outcome outcome;
    const char *error_code;
    int min_retry_ms; /* 0: retry_after_ms must be 0 */
    int max_retry_ms;
    wc_device_action action;
} error_case;

static void test_error_codes(void **state)
{
    fixture *fx = *state;
    static const error_case cases[] = {
        {"+6099130429", WC_SEND_RETRY, "130429", 1000, 60000, WC_DEVICE_OK},
        {"+6099131056", WC_SEND_RETRY, "131056", 6000, 6000, WC_DEVICE_OK},
        {"+6099131026", WC_SEND_FAIL, "131026", 0, 0, WC_DEVICE_OK},
        {"+6099131047", WC_SEND_FAIL, "131047", 0, 0, WC_DEVICE_OK},
        {"+6099131049", WC_SEND_RETRY, "131049", 3600000, 3600000, WC_DEVICE_OK},
        {"+6099131050", WC_SEND_FAIL, "131050", 0, 0, WC_DEVICE_OK},
        {"+6099131048", WC_SEND_FAIL, "131048", 0, 0, WC_DEVICE_PAUSE},
        {"+6099368", WC_SEND_FAIL, "368", 0, 0, WC_DEVICE_PAUSE},
        {"+6099190", WC_SEND_RETRY, "190", 1000, 60000, WC_DEVICE_OFFLINE},
        {"+609910", WC_SEND_RETRY, "10", 1000, 60000, WC_DEVICE_OFFLINE},
        {"+6099200", WC_SEND_RETRY, "200", 1000, 60000, WC_DEVICE_OFFLINE},
        {"+60991", WC_SEND_RETRY, "1", 1000, 60000, WC_DEVICE_OK},
        {"+60992", WC_SEND_RETRY, "2", 1000, 60000, WC_DEVICE_OK},
        {"+6099131000", WC_SEND_RETRY, "131000", 1000, 60000, WC_DEVICE_OK},
        {"+6099100", WC_SEND_FAIL, "100", 0, 0, WC_DEVICE_OK},
        {"+6099132001", WC_SEND_FAIL, "132001", 0, 0, WC_DEVICE_OK},
        {TO_PLAIN_500, WC_SEND_RETRY, "http_500", 1000, 60000, WC_DEVICE_OK},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const error_case *c = &cases[i];
        /* A number per case: a throttle on one must not slow the next case. */
        char pnid[32];
        snprintf(pnid, sizeof pnid, "55500%zu", i);
        void *dev = open_device(fx, pnid, 80, 5000);
        wc_send_result r = send_one(fx, dev, 1000 + (int64_t)i, c->to, "hello", NULL);
        if (r.outcome != c->outcome || strcmp(r.error_code, c->error_code) != 0 ||
            r.device_action != (int)c->action || r.retry_after_ms < c->min_retry_ms ||
            r.retry_after_ms > c->max_retry_ms)
            fail_msg("%s: want outcome %d code %s retry [%d,%d] action %d; got outcome %d code %s "
                     "retry %d action %d (%s / %s)",
                     c->to, c->outcome, c->error_code, c->min_retry_ms, c->max_retry_ms, c->action,
                     r.outcome, r.error_code, r.retry_after_ms, r.device_action, r.error_message,
                     r.device_reason);
        if (c->action != WC_DEVICE_OK)
            assert_true(r.device_reason[0] != '\0');
        if (strncmp(c->to, "+6099", 5) == 0) /* message and details reach the result */
            assert_non_null(strstr(r.error_message, "details of"));
        assert_int_equal(r.provider_id[0], '\0');
        wc_transport_cloudapi.close(dev);
    }
    fake_http_assert_no_violations(&fx->srv, "the fake Cloud API");
}

static void test_ok_without_id(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(fx, dev, 5, TO_NO_ID, "hi", NULL);
    /* The provider accepted it: sending again would duplicate. */
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_string_equal(r.provider_id, "");
    wc_transport_cloudapi.close(dev);
}

static void test_timeout_and_network(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "1234567890", 80, 300);
    wc_send_result r = send_one(fx, dev, 6, TO_HANG, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_string_equal(r.error_code, "timeout");
    assert_true(r.retry_after_ms > 0);
    assert_true(r.outcome_unknown); /* the API had the request */
    wc_transport_cloudapi.close(dev);

    /* Nothing listens there. */
    snprintf(fx->srv.base_url, sizeof fx->srv.base_url, "http://127.0.0.1:%d",
             fake_http_dead_port());
    dev = open_device(fx, "1234567890", 80, 2000);
    r = send_one(fx, dev, 7, TO_OK, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_string_equal(r.error_code, "network");
    assert_true(r.retry_after_ms > 0);
    assert_false(r.outcome_unknown); /* refused: nothing left */
    wc_transport_cloudapi.close(dev);
}

static void *open_default(void *fx)
{
    return open_device(fx, "1234567890", 80, 5000);
}

/* Whenever the request may have reached the API and no answer of the API's
 * came back, the send is in doubt. */
static void test_in_doubt_when_the_reply_is_lost(void **state)
{
    fixture *fx = *state;
    wc_send_request req = {.message_id = 20,
                           .campaign_id = "c1",
                           .device_id = "dev-1",
                           .recipient = TO_OK,
                           .content = "hi"};
    send_check_in_doubt(&fx->srv, &wc_transport_cloudapi, open_default, fx, &req, "Cloud API",
                        "{\"messaging_product\":\"whatsapp\",\"mes");
}

/* Answers of the API's own, even 5xx ones, are definite; so is a refused
 * connection (nothing left). */
static void test_definite_answers_are_not_in_doubt(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(fx, dev, 30, TO_JSON_500, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_string_equal(r.error_code, "131000");
    assert_false(r.outcome_unknown);
    r = send_one(fx, dev, 31, "+60992", "hi", NULL); /* 503 with Meta's error body */
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_false(r.outcome_unknown);
    r = send_one(fx, dev, 32, "+6099131026", "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_false(r.outcome_unknown);
    wc_transport_cloudapi.close(dev);
}

/* Meta's texts are untrusted: a message of 300 two-byte characters must be
 * cut on a character boundary, and message ids that cannot be stored whole
 * and plain count as missing. */
static void test_provider_texts_are_made_safe(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(fx, dev, 40, TO_LONG_UTF8, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "131026");
    send_check_clean(&r);
    assert_true(strlen(r.error_message) > 200);
    assert_memory_equal(r.error_message, "\xC3\xA9\xC3\xA9", 4);

    r = send_one(fx, dev, 41, TO_LONG_ID, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK); /* accepted: never send it twice */
    assert_string_equal(r.provider_id, "");  /* not stored cut */
    assert_non_null(strstr(r.error_message, "unusable"));
    send_check_clean(&r);

    r = send_one(fx, dev, 42, TO_BAD_ID, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_string_equal(r.provider_id, "");
    send_check_clean(&r);
    fake_http_assert_no_violations(&fx->srv, "the fake Cloud API");
    wc_transport_cloudapi.close(dev);
}

#define POISON_PAGE "<h1>\xFF\xC3(\0bad\x01\xE2\x82</h1>"

static void classify(long status, const char *body, size_t len, uint32_t attempt,
                     wc_send_result *out)
{
    (void)wc_cloudapi_classify_reply(status, body, len, attempt, out);
}

/* The classification alone, on replies no fake server sends. */
static void test_classify_reply(void **state)
{
    (void)state;
    static const send_check_reply cases[] = {
        {200, "{\"messages\":[{\"id\":\"wamid.ABC\"}]}", 0, WC_SEND_OK, false, ""},
        {200, "", 0, WC_SEND_RETRY, true, "bad_reply"},
        {200, "<html>captive portal</html>", 0, WC_SEND_RETRY, true, "bad_reply"},
        {502, "", 0, WC_SEND_RETRY, true, "http_502"},
        {503, "Service Unavailable", 0, WC_SEND_RETRY, true, "http_503"},
        {504, "{\"error\":\"upstream timed out\"}", 0, WC_SEND_RETRY, true, "http_504"},
        {500, "{\"error\":{\"code\":131000,\"message\":\"x\"}}", 0, WC_SEND_RETRY, false, "131000"},
        /* A code that is not digits is no code (it used to read as 0, AuthException). */
        {400, "{\"error\":{\"code\":\"abc\",\"message\":\"x\"}}", 0, WC_SEND_FAIL, false,
         "http_400"},
        {400, "{\"error\":{\"code\":\"131026\",\"message\":\"x\"}}", 0, WC_SEND_FAIL, false,
         "131026"},
        {400, "{\"error\":{\"code\":-5}}", 0, WC_SEND_FAIL, false, "http_400"},
        {429, "", 0, WC_SEND_RETRY, false, "http_429"},
        /* Bad bytes, a NUL, controls: the error page's start, made clean. */
        {502, POISON_PAGE, sizeof POISON_PAGE - 1, WC_SEND_RETRY, true, "http_502"},
        {400, "\xC3", 1, WC_SEND_FAIL, false, "http_400"},
    };
    send_check_replies(cases, sizeof cases / sizeof cases[0], classify);
    /* The throttle family says so; others do not. */
    wc_send_result r;
    const char *throttle = "{\"error\":{\"code\":130429,\"message\":\"rate\"}}";
    assert_true(wc_cloudapi_classify_reply(400, throttle, strlen(throttle), 1, &r));
    assert_true(r.retry_after_ms > 0);
    assert_false(wc_cloudapi_classify_reply(502, "", 0, 1, &r));
    assert_false(wc_cloudapi_classify_reply(200, NULL, 0, 1, &r));
    /* An id that fits exactly is kept; one byte more is not. */
    char body[256], id[128];
    memset(id, 'A', 127);
    id[127] = '\0';
    snprintf(body, sizeof body, "{\"messages\":[{\"id\":\"%s\"}]}", id);
    wc_cloudapi_classify_reply(200, body, strlen(body), 1, &r);
    assert_string_equal(r.provider_id, id);
    snprintf(body, sizeof body, "{\"messages\":[{\"id\":\"%sA\"}]}", id);
    wc_cloudapi_classify_reply(200, body, strlen(body), 1, &r);
    assert_string_equal(r.provider_id, "");
    assert_int_equal(r.outcome, WC_SEND_OK);
}

/* Sends n messages at once through devs (round robin) and waits for all. */
static void send_many(fixture *fx, void **devs, int ndevs, int n, const char *to, outcome *os)
{
    int done = 0;
    for (int i = 0; i < n; i++) {
        os[i] = (outcome){.fx = fx, .counter = &done, .want = n};
        wc_send_request req = {
            .message_id = i + 1, .recipient = to, .content = "hello", .campaign_id = "c"};
        assert_int_equal(wc_transport_cloudapi.send(devs[i % ndevs], &req, on_sent, &os[i]), 0);
    }
    fake_http_run(&fx->srv, 30000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(done, n);
}

/* Arrival times must respect rate mps with burst b: any k+1 consecutive
 * arrivals span at least (k - b) / mps seconds (less a little for the loop). */
static void assert_paced(fixture *fx, int first, int n, double mps, int burst)
{
    const int64_t slack_us = 30000;
    for (int i = first; i < first + n; i++) {
        for (int k = burst + 1; i + k < first + n; k += 7) {
            int64_t span = fx->recs[i + k].at_us - fx->recs[i].at_us;
            int64_t want = (int64_t)((double)(k - burst) / mps * 1e6) - slack_us;
            if (span < want)
                fail_msg("arrivals %d..%d span %lld us, want >= %lld us", i, i + k, (long long)span,
                         (long long)want);
        }
    }
}

static void test_token_bucket(void **state)
{
    fixture *fx = *state;
    enum { N = 200 };
    void *dev = open_device(fx, "777", 100, 10000);
    outcome *os = calloc(N, sizeof *os);
    int64_t t0 = wc_mono_us();
    send_many(fx, &dev, 1, N, TO_OK, os);
    for (int i = 0; i < N; i++)
        assert_int_equal(os[i].res.outcome, WC_SEND_OK);
    assert_int_equal(fx->nrecs, N);
    /* Not all at once: only the burst (a tenth of a second's worth) went out at the start. */
    int early = 0;
    for (int i = 0; i < N; i++)
        early += fx->recs[i].at_us - t0 < 50000;
    assert_true(early <= 10 + 5);
    int64_t span = fx->recs[N - 1].at_us - fx->recs[0].at_us;
    assert_true(span >= 1000000); /* 200 at 100/s: well over a second */
    assert_true(span < 5000000);  /* and not absurdly slow */
    assert_paced(fx, 0, N, 100, 10);
    fake_http_assert_no_violations(&fx->srv, "the fake Cloud API");
    free(os);
    wc_transport_cloudapi.close(dev);
}

static void test_bucket_shared_by_number(void **state)
{
    fixture *fx = *state;
    enum { N = 100 };
    /* Two device rows on one number share its 50/s. */
    void *devs[2] = {open_device(fx, "888", 50, 10000), open_device(fx, "888", 50, 10000)};
    outcome *os = calloc(N, sizeof *os);
    send_many(fx, devs, 2, N, TO_OK, os);
    int64_t span = fx->recs[N - 1].at_us - fx->recs[0].at_us;
    assert_true(span >= (int64_t)((N - 5 - 1) / 50.0 * 1e6) - 30000);
    assert_paced(fx, 0, N, 50, 5);

    /* Another number is not held back by the first one's queue. */
    void *other = open_device(fx, "999", 50, 10000);
    int start = fx->nrecs;
    void *all[3] = {devs[0], devs[1], other};
    send_many(fx, all, 3, 30, TO_OK, os);
    int64_t first_other = -1;
    for (int i = start; i < fx->nrecs; i++) {
        if (strstr(fx->recs[i].path, "/999/") && first_other < 0)
            first_other = fx->recs[i].at_us - fx->recs[start].at_us;
    }
    assert_true(first_other >= 0 && first_other < 100000);
    free(os);
    wc_transport_cloudapi.close(devs[0]);
    wc_transport_cloudapi.close(devs[1]);
    wc_transport_cloudapi.close(other);
}

static void test_throttle_holds_the_number(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "4444", 80, 5000);
    wc_send_result r = send_one(fx, dev, 1, "+6099130429", "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_true(r.retry_after_ms >= 1000);
    /* The next send on that number waits out the pause instead of firing. */
    r = send_one(fx, dev, 2, TO_OK, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->nrecs, 2);
    int64_t gap = fx->recs[1].at_us - fx->recs[0].at_us;
    assert_true(gap >= 950000);
    wc_transport_cloudapi.close(dev);
}

static void test_close_with_sends_in_flight(void **state)
{
    fixture *fx = *state;
    void *dev = open_device(fx, "31337", 1, 30000); /* 1/s: the second and third wait */
    outcome os[3];
    for (int i = 0; i < 3; i++) {
        os[i] = (outcome){.fx = fx};
        wc_send_request req = {.message_id = i + 1, .recipient = TO_HANG, .content = "x"};
        assert_int_equal(wc_transport_cloudapi.send(dev, &req, on_sent, &os[i]), 0);
    }
    fake_http_run(&fx->srv, 200); /* the first reaches the fake and hangs */
    assert_int_equal(fx->nrecs, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(os[i].calls, 0);
    wc_transport_cloudapi.close(dev);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(os[i].calls, 1);
        assert_int_equal(os[i].res.outcome, WC_SEND_RETRY);
        assert_string_equal(os[i].res.error_code, "closed");
    }
    /* The first had reached the API: in doubt. The others never left the bucket. */
    assert_true(os[0].res.outcome_unknown);
    assert_false(os[1].res.outcome_unknown);
    assert_false(os[2].res.outcome_unknown);
    fake_http_run(&fx->srv, 1500); /* nothing fires later: no callback, no request */
    assert_true(fx->srv.deadline_hit);
    assert_int_equal(fx->nrecs, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(os[i].calls, 1);
}

static void expect_open_error(fixture *fx, const char *settings_json, const char *creds_json,
                              const char *want)
{
    json_t *settings = settings_json ? json_loads(settings_json, 0, NULL) : NULL;
    json_t *creds = creds_json ? json_loads(creds_json, 0, NULL) : NULL;
    char err[256] = "";
    void *dev = wc_transport_cloudapi.open(&fx->env, "d", settings, creds, err, sizeof err);
    if (dev)
        fail_msg("open succeeded for %s", settings_json ? settings_json : "NULL");
    if (!strstr(err, want))
        fail_msg("want error containing \"%s\", got \"%s\"", want, err);
    assert_null(strstr(err, "secret-token"));
    json_decref(settings);
    json_decref(creds);
}

static void test_open_validation(void **state)
{
    fixture *fx = *state;
    const char *tok = "{\"access_token\":\"secret-token\"}";
    expect_open_error(fx, NULL, tok, "phone_number_id");
    expect_open_error(fx, "{}", tok, "phone_number_id");
    expect_open_error(fx, "{\"phone_number_id\":\"12/../x\"}", tok, "phone_number_id");
    expect_open_error(fx, "{\"phone_number_id\":\"1\",\"mps\":0}", tok, "mps");
    expect_open_error(fx, "{\"phone_number_id\":\"1\",\"mps\":\"fast\"}", tok, "mps");
    expect_open_error(fx, "{\"phone_number_id\":\"1\",\"base_url\":\"ftp://x\"}", tok, "base_url");
    expect_open_error(fx, "{\"phone_number_id\":\"1\",\"timeout_ms\":0}", tok, "timeout_ms");
    expect_open_error(fx, "{\"phone_number_id\":\"1\"}", NULL, "access_token");
    expect_open_error(fx, "{\"phone_number_id\":\"1\"}", "{\"access_token\":\"a\\r\\nX: y\"}",
                      "access_token");
    /* Defaults: only the number and the token are needed; a numeric id works. */
    json_t *settings = json_pack("{s:I}", "phone_number_id", (json_int_t)106540352242922);
    json_t *creds = json_loads(tok, 0, NULL);
    char err[256];
    void *dev = wc_transport_cloudapi.open(&fx->env, "d", settings, creds, err, sizeof err);
    assert_non_null(dev);
    wc_transport_cloudapi.close(dev);
    json_decref(settings);
    json_decref(creds);
    assert_ptr_equal(wc_transport_find("cloudapi"), &wc_transport_cloudapi);
}

/* settings.base_url is the dashboard's to write; the token goes only where
 * WACAST_PROVIDER_HOSTS allows. */
static void test_base_url_allow_list(void **state)
{
    fixture *fx = *state;
    const char *tok = "{\"access_token\":\"secret-token\"}";
    char settings[256];
    snprintf(settings, sizeof settings, "{\"phone_number_id\":\"1\",\"base_url\":\"%s\"}",
             fx->srv.base_url);
    /* The default list (Meta only) refuses the fake on loopback. */
    fx->env.provider_hosts = NULL;
    expect_open_error(fx, settings, tok, "cloudapi: base_url not allowed: http://127.0.0.1:");
    expect_open_error(fx, settings, tok, "(not in WACAST_PROVIDER_HOSTS)");
    /* Another host, port or scheme than the listed ones: refused too. */
    fx->env.provider_hosts = "https://graph.facebook.com, http://127.0.0.1:1";
    expect_open_error(fx, settings, tok, "base_url not allowed");
    expect_open_error(fx,
                      "{\"phone_number_id\":\"1\",\"base_url\":\"https://graph.facebook.com@evil."
                      "example\"}",
                      tok, "base_url");
    expect_open_error(
        fx, "{\"phone_number_id\":\"1\",\"base_url\":\"https://graph.facebook.com.evil.example\"}",
        tok, "base_url not allowed: https://graph.facebook.com.evil.example:443");
    /* Listed: it opens and sends; the fake saw the request. */
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(fx, dev, 11, TO_OK, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    wc_transport_cloudapi.close(dev);
    assert_int_equal(fx->nrecs, 1);
}

static void test_own_http_client(void **state)
{
    fixture *fx = *state;
    fx->env.httpc = wc_httpc_new(fx->srv.base, 4);
    void *dev = open_device(fx, "1234567890", 80, 5000);
    wc_send_result r = send_one(fx, dev, 9, TO_OK, "hi", NULL);
    assert_int_equal(r.outcome, WC_SEND_OK);
    wc_transport_cloudapi.close(dev);
    wc_httpc_free(fx->env.httpc);
    fx->env.httpc = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_text_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_image, setup, teardown),
        cmocka_unit_test_setup_teardown(test_template, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_recipient_and_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_codes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ok_without_id, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_network, setup, teardown),
        cmocka_unit_test_setup_teardown(test_in_doubt_when_the_reply_is_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_definite_answers_are_not_in_doubt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_provider_texts_are_made_safe, setup, teardown),
        cmocka_unit_test(test_classify_reply),
        cmocka_unit_test_setup_teardown(test_token_bucket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bucket_shared_by_number, setup, teardown),
        cmocka_unit_test_setup_teardown(test_throttle_holds_the_number, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_sends_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_own_http_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_base_url_allow_list, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
