/* An in-process HTTP server on 127.0.0.1 for the unit tests of what speaks
 * HTTP (test_httpc, test_cloudapi, test_gowa): an evhttp on the test's own
 * event base, the loop run with a deadline so a broken client fails a test
 * instead of hanging it, a port nothing listens on, and a raw TCP server for
 * what evhttp will not do (reset, close without an answer, a proxy's HTML
 * 502, a cut body). Test code only: asserts with cmocka. send_check.h holds
 * what the transport tests do with it. */
#ifndef FAKE_HTTP_H
#define FAKE_HTTP_H

#include <stdbool.h>

struct event_base;
struct evhttp;
struct evhttp_request;

typedef enum {
    FAKE_RAW_RESET,    /* RST (SO_LINGER 0 and close) */
    FAKE_RAW_CLOSE,    /* close without a byte of answer */
    FAKE_RAW_HTML_502, /* a proxy's 502 page */
    FAKE_RAW_CUT_BODY, /* 200 whose JSON body stops short of its Content-Length */
} fake_raw_mode;

typedef struct fake_raw fake_raw;

typedef struct fake_http {
    struct event_base *base;
    struct evhttp *http;
    int port;
    char base_url[64];       /* "http://127.0.0.1:<port>/" (or the raw server's) */
    bool deadline_hit;       /* the last fake_http_run ended by its deadline */
    fake_raw *raw;           /* made by fake_http_raw, or NULL */
    char provider_hosts[64]; /* base_url as a transport's allow-list (send_check_open) */
    char violations[8192];   /* what the fake found wrong in requests, a line each */
    int nviolations;
} fake_http;

/* A new event base and an evhttp bound to a free port on it; every request
 * goes to on_request(req, arg) when it is not NULL (else the test sets its
 * own callbacks on f->http). */
void fake_http_start(fake_http *f, void (*on_request)(struct evhttp_request *, void *), void *arg);
/* Frees the raw server, the evhttp and the event base. */
void fake_http_stop(fake_http *f);

/* Notes something wrong in a request the fake got (the test fails later in
 * fake_http_assert_no_violations, with every line). */
void fake_http_violation(fake_http *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Fails the test when the fake (named who in the message) noted anything. */
void fake_http_assert_no_violations(fake_http *f, const char *who);

/* Runs the loop until something calls event_base_loopbreak or ms pass. */
void fake_http_run(fake_http *f, int ms);

/* A port on 127.0.0.1 that nothing listens on (bound, read and closed). */
int fake_http_dead_port(void);

/* Points f->base_url at a raw server that reads each whole request and then
 * misbehaves as mode says; cut_body is the start of the JSON body that
 * FAKE_RAW_CUT_BODY sends (announced as 200 bytes). Returns the number of
 * whole requests it has read so far (*requests stays valid until
 * fake_http_raw_free). */
int *fake_http_raw(fake_http *f, fake_raw_mode mode, const char *cut_body);
/* Stops the raw server (nothing listens on its port afterwards). */
void fake_http_raw_free(fake_http *f);

#endif
