/* Unit tests for wc_httpc: a real evhttp server on 127.0.0.1 runs on the same
 * event loop as the client, so every case exercises real sockets, curl's
 * multi interface and the libevent wiring. Each loop run is bounded by a
 * deadline so a broken client fails the test instead of hanging it. */
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
#include <event2/listener.h>
#include <sodium.h>

#include "fake_http.h"
#include "wc_httpc.h"

typedef struct fixture {
    fake_http srv;
    wc_httpc *c;
    int hangs;    /* requests the server left unanswered */
    int received; /* requests the server saw */
} fixture;

typedef struct result {
    int calls;
    long status;
    char body[4096];
    size_t body_len;
    char error[512];
    bool has_error;
    bool timed_out;
    bool maybe_sent;
    int *done_counter;
    fixture *fx;
    int break_at; /* loopbreak when *done_counter reaches this */
} result;

static const char *header(struct evhttp_request *req, const char *name)
{
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), name);
    return v ? v : "";
}

/* Echoes what arrived as "key=value" lines. */
static void on_echo(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    fx->received++;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    char *body = malloc(n + 1);
    evbuffer_remove(in, body, n);
    body[n] = '\0';
    const char *method = "OTHER";
    switch (evhttp_request_get_command(req)) {
    case EVHTTP_REQ_GET:
        method = "GET";
        break;
    case EVHTTP_REQ_POST:
        method = "POST";
        break;
    case EVHTTP_REQ_PUT:
        method = "PUT";
        break;
    default:
        break;
    }
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "method=%s\nuri=%s\nx-test=%s\nauth=%s\nctype=%s\nexpect=%s\nbody=%s",
                        method, evhttp_request_get_uri(req), header(req, "X-Test"),
                        header(req, "Authorization"), header(req, "Content-Type"),
                        header(req, "Expect"), body);
    free(body);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain");
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static void on_fail(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    fx->received++;
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "{\"error\":\"boom\"}");
    evhttp_send_reply(req, 500, "Internal Server Error", out);
    evbuffer_free(out);
}

static void on_hang(struct evhttp_request *req, void *arg)
{
    (void)req;
    fixture *fx = arg;
    fx->received++;
    fx->hangs++;
    /* Never answered; evhttp frees the request when the client goes away. */
}

static void on_big(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    fx->received++;
    size_t n = 2 * 1024 * 1024;
    char *big = malloc(n);
    memset(big, 'x', n);
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, big, n);
    free(big);
    evhttp_send_reply(req, 200, "OK", out);
    evbuffer_free(out);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fake_http_start(&fx->srv, NULL, NULL);
    evhttp_set_cb(fx->srv.http, "/echo", on_echo, fx);
    evhttp_set_cb(fx->srv.http, "/fail", on_fail, fx);
    evhttp_set_cb(fx->srv.http, "/hang", on_hang, fx);
    evhttp_set_cb(fx->srv.http, "/big", on_big, fx);
    evhttp_set_allowed_methods(fx->srv.http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT);
    fx->c = wc_httpc_new(fx->srv.base, 0);
    assert_non_null(fx->c);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    wc_httpc_free(fx->c);
    fake_http_stop(&fx->srv);
    free(fx);
    return 0;
}

static void on_result(void *arg, const wc_httpc_resp *resp)
{
    result *r = arg;
    r->calls++;
    r->status = resp->status;
    r->body_len = resp->body_len;
    snprintf(r->body, sizeof r->body, "%s", resp->body);
    r->has_error = resp->error != NULL;
    snprintf(r->error, sizeof r->error, "%s", resp->error ? resp->error : "");
    r->timed_out = resp->timed_out;
    r->maybe_sent = resp->maybe_sent;
    if (r->done_counter) {
        (*r->done_counter)++;
        if (*r->done_counter == r->break_at)
            event_base_loopbreak(r->fx->srv.base);
    } else if (r->fx) {
        event_base_loopbreak(r->fx->srv.base);
    }
}

static void url(fixture *fx, const char *path, char *out, size_t outlen)
{
    snprintf(out, outlen, "http://127.0.0.1:%d%s", fx->srv.port, path);
}

static void test_get_round_trip(void **state)
{
    fixture *fx = *state;
    char u[128];
    url(fx, "/echo?a=1", u, sizeof u);
    const char *headers[] = {"X-Test: hello", NULL};
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u, .headers = headers, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    assert_int_equal(r.calls, 0); /* never called back from inside request() */
    assert_int_equal(wc_httpc_inflight(fx->c), 1);
    fake_http_run(&fx->srv, 5000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(r.calls, 1);
    assert_false(r.has_error);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "method=GET\n"));
    assert_non_null(strstr(r.body, "uri=/echo?a=1\n"));
    assert_non_null(strstr(r.body, "x-test=hello\n"));
    assert_non_null(strstr(r.body, "auth=\n"));
    assert_int_equal(wc_httpc_inflight(fx->c), 0);
}

static void test_post_with_basic_auth(void **state)
{
    fixture *fx = *state;
    char u[128];
    url(fx, "/echo", u, sizeof u);
    const char *headers[] = {"Content-Type: application/json", "X-Test: two words", NULL};
    /* A body past curl's 1 KiB threshold for "Expect: 100-continue". */
    char body[3000];
    memset(body, 'b', sizeof body - 1);
    memcpy(body, "{\"k\":\"", 6);
    body[sizeof body - 3] = '"';
    body[sizeof body - 2] = '}';
    body[sizeof body - 1] = '\0';
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u,
                        .headers = headers,
                        .body = body,
                        .body_len = strlen(body),
                        .timeout_ms = 5000,
                        .username = "alice",
                        .password = "s3cr:et"};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    /* Everything in the request was copied: scribbling over it changes nothing. */
    memset(body, 'z', sizeof body - 1);
    fake_http_run(&fx->srv, 5000);
    assert_int_equal(r.calls, 1);
    assert_false(r.has_error);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "method=POST\n"));
    assert_non_null(strstr(r.body, "x-test=two words\n"));
    assert_non_null(strstr(r.body, "ctype=application/json\n"));
    assert_non_null(strstr(r.body, "expect=\n"));
    char want[128], b64[64];
    sodium_bin2base64(b64, sizeof b64, (const unsigned char *)"alice:s3cr:et", 13,
                      sodium_base64_VARIANT_ORIGINAL);
    snprintf(want, sizeof want, "auth=Basic %s\n", b64);
    assert_non_null(strstr(r.body, want));
    assert_non_null(strstr(r.body, "body={\"k\":\"bbbb"));
    assert_null(strstr(r.body, "zzz"));
}

static void test_put_method(void **state)
{
    fixture *fx = *state;
    char u[128];
    url(fx, "/echo", u, sizeof u);
    result r = {.fx = fx};
    wc_httpc_req req = {.method = "PUT", .url = u, .body = "x", .body_len = 1, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    fake_http_run(&fx->srv, 5000);
    assert_int_equal(r.calls, 1);
    assert_non_null(strstr(r.body, "method=PUT\n"));
    assert_non_null(strstr(r.body, "body=x"));
}

static void test_multipart_form(void **state)
{
    fixture *fx = *state;
    char u[128];
    url(fx, "/echo", u, sizeof u);
    wc_httpc_form *f = wc_httpc_form_new();
    assert_non_null(f);
    assert_int_equal(wc_httpc_form_add(f, "phone", "60123456789@s.whatsapp.net"), 0);
    assert_int_equal(wc_httpc_form_add(f, "caption", "hi there"), 0);
    const unsigned char png[] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a};
    assert_int_equal(wc_httpc_form_add_file(f, "image", "a.png", "image/png", png, sizeof png), 0);
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u, .form = f, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    wc_httpc_form_free(f); /* copied by the request */
    fake_http_run(&fx->srv, 5000);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "method=POST\n"));
    assert_non_null(strstr(r.body, "ctype=multipart/form-data; boundary="));
    assert_non_null(strstr(r.body, "name=\"phone\"\r\n\r\n60123456789@s.whatsapp.net\r\n"));
    assert_non_null(strstr(r.body, "name=\"caption\"\r\n\r\nhi there\r\n"));
    assert_non_null(
        strstr(r.body, "name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png"));
}

static void test_500_passes_through(void **state)
{
    fixture *fx = *state;
    char u[128];
    url(fx, "/fail", u, sizeof u);
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u, .body = "{}", .body_len = 2, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    fake_http_run(&fx->srv, 5000);
    assert_int_equal(r.calls, 1);
    assert_false(r.has_error);
    assert_int_equal(r.status, 500);
    assert_string_equal(r.body, "{\"error\":\"boom\"}");
    assert_true(r.maybe_sent);
}

static void test_timeout(void **state)
{
    fixture *fx = *state;
    char u[128];
    url(fx, "/hang", u, sizeof u);
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u, .timeout_ms = 300};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    fake_http_run(&fx->srv, 5000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(fx->hangs, 1);
    assert_int_equal(r.calls, 1);
    assert_true(r.has_error);
    assert_true(r.timed_out);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.error, "timed out"));
    /* The server got the request and sat on it: its effect is unknown. */
    assert_true(r.maybe_sent);
}

static void test_connect_refused(void **state)
{
    fixture *fx = *state;
    /* A port nothing listens on. */
    char u[128];
    snprintf(u, sizeof u, "http://127.0.0.1:%d/", fake_http_dead_port());
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u, .timeout_ms = 2000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    fake_http_run(&fx->srv, 5000);
    assert_int_equal(r.calls, 1);
    assert_true(r.has_error);
    assert_false(r.timed_out);
    assert_int_equal(r.status, 0);
    /* Nobody listened: the request provably never left. */
    assert_false(r.maybe_sent);
}

/* https:// to a plain HTTP port fails in the TLS handshake, before any of
 * the request is written. */
static void test_tls_handshake_failure_not_sent(void **state)
{
    fixture *fx = *state;
    char u[128];
    snprintf(u, sizeof u, "https://127.0.0.1:%d/echo", fx->srv.port);
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u, .body = "{}", .body_len = 2, .timeout_ms = 3000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    fake_http_run(&fx->srv, 5000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(r.calls, 1);
    assert_true(r.has_error);
    assert_false(r.maybe_sent);
    assert_int_equal(fx->received, 0);
}

static void test_response_cap(void **state)
{
    fixture *fx = *state;
    char u[128];
    url(fx, "/big", u, sizeof u);
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &r), 0);
    fake_http_run(&fx->srv, 5000);
    assert_int_equal(r.calls, 1);
    assert_true(r.has_error);
    assert_non_null(strstr(r.error, "larger than 1048576 bytes"));
    assert_true(r.maybe_sent); /* the server answered: it saw the request */
}

static void test_rejects_bad_requests(void **state)
{
    fixture *fx = *state;
    result r = {.fx = fx};
    char u[128];
    url(fx, "/echo", u, sizeof u);
    wc_httpc_req no_timeout = {.url = u};
    assert_int_equal(wc_httpc_request(fx->c, &no_timeout, on_result, &r), -1);
    wc_httpc_req no_url = {.timeout_ms = 1000};
    assert_int_equal(wc_httpc_request(fx->c, &no_url, on_result, &r), -1);
    wc_httpc_req file_url = {.url = "file:///etc/passwd", .timeout_ms = 1000};
    if (wc_httpc_request(fx->c, &file_url, on_result, &r) == 0) {
        fake_http_run(&fx->srv, 2000);
        assert_int_equal(r.calls, 1);
        assert_true(r.has_error); /* protocol refused */
    }
    assert_int_equal(wc_httpc_inflight(fx->c), 0);
}

static void test_thousand_concurrent(void **state)
{
    fixture *fx = *state;
    enum { N = 1000 };
    char u[128];
    url(fx, "/echo", u, sizeof u);
    result *rs = calloc(N, sizeof *rs);
    int done = 0;
    for (int i = 0; i < N; i++) {
        rs[i].fx = fx;
        rs[i].done_counter = &done;
        rs[i].break_at = N;
        char body[32];
        int n = snprintf(body, sizeof body, "req-%d", i);
        wc_httpc_req req = {.url = u, .body = body, .body_len = (size_t)n, .timeout_ms = 30000};
        assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &rs[i]), 0);
    }
    assert_int_equal(wc_httpc_inflight(fx->c), N);
    fake_http_run(&fx->srv, 60000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++) {
        char want[40];
        snprintf(want, sizeof want, "body=req-%d", i);
        if (rs[i].calls != 1 || rs[i].has_error || rs[i].status != 200 || !strstr(rs[i].body, want))
            fail_msg("request %d: calls=%d status=%ld error=%s", i, rs[i].calls, rs[i].status,
                     rs[i].error);
        /* "req-1" is a prefix of "req-10": check the exact end of the echo. */
        size_t wl = strlen(want);
        assert_string_equal(rs[i].body + strlen(rs[i].body) - wl, want);
    }
    assert_int_equal(fx->received, N);
    free(rs);
}

static void test_connection_cap(void **state)
{
    fixture *fx = *state;
    enum { N = 200 };
    wc_httpc *capped = wc_httpc_new(fx->srv.base, 8);
    assert_non_null(capped);
    char u[128];
    url(fx, "/echo", u, sizeof u);
    result *rs = calloc(N, sizeof *rs);
    int done = 0;
    for (int i = 0; i < N; i++) {
        rs[i].fx = fx;
        rs[i].done_counter = &done;
        rs[i].break_at = N;
        wc_httpc_req req = {.url = u, .timeout_ms = 30000};
        assert_int_equal(wc_httpc_request(capped, &req, on_result, &rs[i]), 0);
    }
    fake_http_run(&fx->srv, 60000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(done, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(rs[i].status, 200);
    wc_httpc_free(capped);
    free(rs);
}

static void on_settle(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

static void run_for(fixture *fx, int ms)
{
    struct event *t = evtimer_new(fx->srv.base, on_settle, fx->srv.base);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(t, &tv);
    event_base_loop(fx->srv.base, 0);
    event_free(t);
}

static void test_free_cancels_in_flight(void **state)
{
    fixture *fx = *state;
    enum { N = 5 };
    char u[128];
    url(fx, "/hang", u, sizeof u);
    result rs[N];
    memset(rs, 0, sizeof rs);
    for (int i = 0; i < N; i++) {
        wc_httpc_req req = {.url = u, .timeout_ms = 30000};
        assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &rs[i]), 0);
    }
    run_for(fx, 200); /* let them reach the server */
    assert_int_equal(fx->hangs, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(rs[i].calls, 0);
    wc_httpc_free(fx->c);
    fx->c = NULL;
    for (int i = 0; i < N; i++) {
        assert_int_equal(rs[i].calls, 1);
        assert_true(rs[i].has_error);
        assert_string_equal(rs[i].error, "cancelled");
        assert_true(rs[i].maybe_sent); /* they had reached the server */
    }
    run_for(fx, 50); /* the server sees the connections close; nothing else fires */
    for (int i = 0; i < N; i++)
        assert_int_equal(rs[i].calls, 1);
}

static void test_cancel_one(void **state)
{
    fixture *fx = *state;
    char u[128];
    url(fx, "/echo", u, sizeof u);
    result a = {.fx = fx}, b = {.fx = fx};
    wc_httpc_req req = {.url = u, .timeout_ms = 5000};
    wc_httpc_call *ca = wc_httpc_start(fx->c, &req, on_result, &a);
    assert_non_null(ca);
    assert_int_equal(wc_httpc_request(fx->c, &req, on_result, &b), 0);
    /* Not even connected yet: the server cannot have seen it. */
    assert_false(wc_httpc_cancel(ca));
    assert_int_equal(wc_httpc_inflight(fx->c), 1);
    fake_http_run(&fx->srv, 5000);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.status, 200);
    assert_int_equal(fx->received, 1);

    /* One the server holds: cancelling it leaves its effect unknown. */
    url(fx, "/hang", u, sizeof u);
    result c = {.fx = fx};
    wc_httpc_call *cc = wc_httpc_start(fx->c, &req, on_result, &c);
    assert_non_null(cc);
    run_for(fx, 200);
    assert_int_equal(fx->hangs, 1);
    assert_true(wc_httpc_cancel(cc));
    assert_int_equal(c.calls, 0);
}

/* A callback that frees the client it is called from, with others in flight. */
typedef struct freeing {
    fixture *fx;
    int calls;
    result *others;
} freeing;

static void on_free_client(void *arg, const wc_httpc_resp *resp)
{
    freeing *f = arg;
    f->calls++;
    assert_int_equal(resp->status, 200);
    /* Starting a request from a callback works. */
    char u[128];
    url(f->fx, "/echo", u, sizeof u);
    wc_httpc_free(f->fx->c);
    wc_httpc_req req = {.url = u, .timeout_ms = 1000};
    result dummy = {0};
    assert_int_equal(wc_httpc_request(f->fx->c, &req, on_result, &dummy), -1); /* dying */
    f->fx->c = NULL;
    event_base_loopbreak(f->fx->srv.base);
}

static void test_free_from_callback(void **state)
{
    fixture *fx = *state;
    char u[128], h[128];
    url(fx, "/echo", u, sizeof u);
    url(fx, "/hang", h, sizeof h);
    result others[3];
    memset(others, 0, sizeof others);
    freeing f = {.fx = fx, .others = others};
    for (int i = 0; i < 3; i++) {
        wc_httpc_req hreq = {.url = h, .timeout_ms = 30000};
        assert_int_equal(wc_httpc_request(fx->c, &hreq, on_result, &others[i]), 0);
    }
    wc_httpc_req req = {.url = u, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_free_client, &f), 0);
    fake_http_run(&fx->srv, 5000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(f.calls, 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(others[i].calls, 1);
        assert_string_equal(others[i].error, "cancelled");
    }
}

/* A callback that starts the next request: chains work. */
typedef struct chain {
    fixture *fx;
    char url[128];
    int left;
    int ok;
} chain;

static void on_chain(void *arg, const wc_httpc_resp *resp)
{
    chain *ch = arg;
    if (!resp->error && resp->status == 200)
        ch->ok++;
    if (--ch->left == 0) {
        event_base_loopbreak(ch->fx->srv.base);
        return;
    }
    wc_httpc_req req = {.url = ch->url, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(ch->fx->c, &req, on_chain, ch), 0);
}

static void test_request_from_callback(void **state)
{
    fixture *fx = *state;
    chain ch = {.fx = fx, .left = 20};
    url(fx, "/echo", ch.url, sizeof ch.url);
    wc_httpc_req req = {.url = ch.url, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(fx->c, &req, on_chain, &ch), 0);
    fake_http_run(&fx->srv, 10000);
    assert_false(fx->srv.deadline_hit);
    assert_int_equal(ch.ok, 20);
}

static void test_shared_client(void **state)
{
    fixture *fx = *state;
    wc_httpc *a = wc_httpc_shared_acquire(fx->srv.base);
    wc_httpc *b = wc_httpc_shared_acquire(fx->srv.base);
    assert_non_null(a);
    assert_ptr_equal(a, b);
    struct event_base *other = event_base_new();
    wc_httpc *c = wc_httpc_shared_acquire(other);
    assert_non_null(c);
    assert_ptr_not_equal(a, c);
    wc_httpc_shared_release(a);
    char u[128];
    url(fx, "/echo", u, sizeof u);
    result r = {.fx = fx};
    wc_httpc_req req = {.url = u, .timeout_ms = 5000};
    assert_int_equal(wc_httpc_request(b, &req, on_result, &r), 0); /* still alive */
    fake_http_run(&fx->srv, 5000);
    assert_int_equal(r.status, 200);
    wc_httpc_shared_release(b);
    wc_httpc_shared_release(c);
    event_base_free(other);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_get_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_post_with_basic_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_multipart_form, setup, teardown),
        cmocka_unit_test_setup_teardown(test_500_passes_through, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_handshake_failure_not_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_response_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejects_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thousand_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_cancels_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_client, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
