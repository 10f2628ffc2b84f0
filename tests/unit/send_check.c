/* The shared checks of the HTTP transports' unit tests; see send_check.h. */
#include "send_check.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>

#include "wc_text.h"

typedef struct one {
    fake_http *f;
    int calls;
    wc_send_result res;
} one;

static void on_sent(void *arg, const wc_send_result *res)
{
    one *o = arg;
    o->calls++;
    o->res = *res;
    event_base_loopbreak(o->f->base);
}

void send_check_start(fake_http *f, wc_transport_env *env,
                      void (*on_request)(struct evhttp_request *, void *), void *arg)
{
    fake_http_start(f, on_request, arg);
    memset(env, 0, sizeof *env);
    env->base = f->base;
    env->instance_id = "test";
}

void *send_check_open(fake_http *f, wc_transport_env *env, const wc_transport_ops *ops,
                      const char *device_id, json_t *settings, json_t *creds)
{
    char err[256] = "";
    snprintf(f->provider_hosts, sizeof f->provider_hosts, "%s", f->base_url);
    env->provider_hosts = f->provider_hosts;
    void *dev = ops->open(env, device_id, settings, creds, err, sizeof err);
    json_decref(settings);
    json_decref(creds);
    if (!dev)
        fail_msg("open: %s", err);
    return dev;
}

wc_send_result send_check_one(fake_http *f, const wc_transport_ops *ops, void *dev,
                              const wc_send_request *req)
{
    one o = {.f = f};
    assert_int_equal(ops->send(dev, req, on_sent, &o), 0);
    assert_int_equal(o.calls, 0); /* never from inside send() */
    fake_http_run(f, 10000);
    assert_false(f->deadline_hit);
    assert_int_equal(o.calls, 1);
    return o.res;
}

void send_check_clean(const wc_send_result *r)
{
    if (!wc_text_valid(r->error_code, strlen(r->error_code)) ||
        !wc_text_valid(r->error_message, strlen(r->error_message)) ||
        !wc_text_valid(r->provider_id, strlen(r->provider_id)) ||
        !wc_text_valid(r->device_reason, strlen(r->device_reason)))
        fail_msg("a result field is not valid UTF-8: code \"%s\" message \"%s\" id \"%s\" "
                 "reason \"%s\"",
                 r->error_code, r->error_message, r->provider_id, r->device_reason);
}

void send_check_in_doubt(fake_http *f, const wc_transport_ops *ops, void *(*open)(void *fx),
                         void *fx, const wc_send_request *req, const char *provider,
                         const char *cut_body)
{
    static const struct {
        fake_raw_mode mode;
        const char *code;
        const char *in_message; /* NULL: the provider's name */
    } cases[] = {
        {FAKE_RAW_RESET, "no_reply", NULL},
        {FAKE_RAW_CLOSE, "no_reply", NULL},
        {FAKE_RAW_HTML_502, "http_502", "502 Bad Gateway"},
        {FAKE_RAW_CUT_BODY, "no_reply", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *in_message = cases[i].in_message ? cases[i].in_message : provider;
        int *requests = fake_http_raw(f, cases[i].mode, cut_body);
        int before = *requests;
        void *dev = open(fx);
        wc_send_result r = send_check_one(f, ops, dev, req);
        assert_int_equal(*requests, before + 1); /* the whole request got there */
        if (r.outcome != WC_SEND_RETRY || !r.outcome_unknown ||
            strcmp(r.error_code, cases[i].code) != 0 || !strstr(r.error_message, in_message))
            fail_msg(
                "case %zu: want RETRY in doubt, code %s; got outcome %d unknown %d code %s (%s)", i,
                cases[i].code, r.outcome, r.outcome_unknown, r.error_code, r.error_message);
        assert_true(r.retry_after_ms > 0);
        assert_string_equal(r.provider_id, "");
        send_check_clean(&r);
        ops->close(dev);
    }
}

void send_check_replies(const send_check_reply *cases, size_t n, send_check_classify *classify)
{
    for (size_t i = 0; i < n; i++) {
        const send_check_reply *c = &cases[i];
        wc_send_result r;
        memset(&r, 0xAB, sizeof r); /* everything must be overwritten */
        size_t len = c->len ? c->len : strlen(c->body);
        classify(c->status, c->body, len, 1, &r);
        if (r.outcome != c->outcome || r.outcome_unknown != c->unknown ||
            strcmp(r.error_code, c->code) != 0)
            fail_msg("case %zu: want outcome %d unknown %d code %s; got %d %d %s (%s)", i,
                     c->outcome, c->unknown, c->code, r.outcome, r.outcome_unknown, r.error_code,
                     r.error_message);
        send_check_clean(&r);
    }
}
