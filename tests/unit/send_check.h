/* What the unit tests of the HTTP transports (test_cloudapi, test_gowa)
 * check the same way over the in-process fake (fake_http.h): one send and
 * its single, later callback; the texts of a result; and the cases where
 * the request reached the other side and no answer of its own came back,
 * which must leave the send in doubt. Test code only: asserts with cmocka. */
#ifndef SEND_CHECK_H
#define SEND_CHECK_H

#include <jansson.h>

#include "fake_http.h"
#include "wc_transport.h"

/* Starts the fake (fake_http_start) and points env at its event base. */
void send_check_start(fake_http *f, wc_transport_env *env,
                      void (*on_request)(struct evhttp_request *, void *), void *arg);

/* Opens a device of ops with settings and creds (both taken), allowing only
 * the fake's base_url as provider host (env->provider_hosts points into f);
 * fails the test when it does not open. */
void *send_check_open(fake_http *f, wc_transport_env *env, const wc_transport_ops *ops,
                      const char *device_id, json_t *settings, json_t *creds);

/* Starts req on dev and runs the loop (10 s at most) until its callback;
 * fails unless send() returned 0, the callback did not run inside send()
 * and ran exactly once. Returns the result. */
wc_send_result send_check_one(fake_http *f, const wc_transport_ops *ops, void *dev,
                              const wc_send_request *req);

/* Fails unless every text of r is valid UTF-8. */
void send_check_clean(const wc_send_result *r);

/* For each way a reply is lost after the whole request arrived (reset,
 * close, a proxy's HTML 502, a body cut short: cut_body is its start), opens
 * a device with open(fx) (at f->base_url, which points at the raw server),
 * sends req and wants a retry in doubt with a back-off, no provider id, clean
 * texts, and provider named in the message. */
void send_check_in_doubt(fake_http *f, const wc_transport_ops *ops, void *(*open)(void *fx),
                         void *fx, const wc_send_request *req, const char *provider,
                         const char *cut_body);

/* A reply to classify and what it must give. */
typedef struct send_check_reply {
    long status;
    const char *body;
    size_t len; /* 0: strlen(body) */
    wc_send_outcome outcome;
    bool unknown;
    const char *code;
} send_check_reply;

typedef void send_check_classify(long status, const char *body, size_t len, uint32_t attempt,
                                 wc_send_result *out);

/* Classifies each reply (over a result filled with junk first, so every
 * field must be overwritten) and wants its outcome, doubt and code, and
 * clean texts. */
void send_check_replies(const send_check_reply *cases, size_t n, send_check_classify *classify);

#endif
