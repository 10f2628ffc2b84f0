/* Unit tests for wc_http's listener limits: a real listener on 127.0.0.1 on
 * the test's own event loop, and raw client sockets watched by events on the
 * same loop. Every wait is for an event on the client's socket (an answer, or
 * the server closing it), bounded by a deadline that fails the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "wc_http.h"

#define READ_TIMEOUT_S 1

typedef struct fixture {
    struct event_base *base;
    wc_http *h;
    struct evhttp_request *held; /* the slow handler's request */
    struct event *answer_later;
} fixture;

/* One client connection and what it has seen. */
typedef struct client {
    fixture *fx;
    int fd;
    struct event *ev;
    char got[4096];
    size_t len;
    bool closed;
    long long answered_ms, closed_ms; /* since the request was sent */
    long long sent_at;
    bool stop_at_answer; /* stop waiting at the first bytes, not at the close */
} client;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_ok(struct evhttp_request *req, void *arg)
{
    (void)arg;
    wc_http_reply_json(req, 200, "{\"ok\":true}");
}

static void on_answer_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fixture *fx = arg;
    wc_http_reply_json(fx->held, 200, "{\"slow\":true}");
    fx->held = NULL;
}

/* Answers after 1.5 read time-outs. */
static void on_slow(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    fx->held = req;
    struct timeval tv = {READ_TIMEOUT_S, 500000};
    evtimer_add(fx->answer_later, &tv);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->base = event_base_new();
    wc_http_limits limits = {2, READ_TIMEOUT_S, 8 << 10};
    char err[256];
    fx->h = wc_http_listen(fx->base, "test", "127.0.0.1", 0, &limits, err, sizeof err);
    assert_non_null(fx->h);
    fx->answer_later = evtimer_new(fx->base, on_answer_later, fx);
    assert_int_equal(wc_http_route(fx->h, "/slow", 0, on_slow, fx), 0);
    assert_int_equal(wc_http_route(fx->h, "/small", 10, on_ok, fx), 0);
    assert_int_equal(wc_http_route(fx->h, "/big", 1000, on_ok, fx), 0);
    assert_int_equal(wc_http_route(NULL, "/off", 10, on_ok, fx), 0); /* a listener turned off */
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    wc_http_free(fx->h);
    event_free(fx->answer_later);
    event_base_free(fx->base);
    free(fx);
    return 0;
}

static void on_client_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    client *c = arg;
    char buf[1024];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
        c->closed = true;
        c->closed_ms = now_ms() - c->sent_at;
        event_del(c->ev);
        event_base_loopbreak(c->fx->base);
        return;
    }
    size_t take = (size_t)n < sizeof c->got - 1 - c->len ? (size_t)n : sizeof c->got - 1 - c->len;
    memcpy(c->got + c->len, buf, take);
    c->len += take;
    c->got[c->len] = '\0';
    if (!c->answered_ms)
        c->answered_ms = now_ms() - c->sent_at;
    if (c->stop_at_answer)
        event_base_loopbreak(c->fx->base);
}

static void client_open(fixture *fx, client *c)
{
    memset(c, 0, sizeof *c);
    c->fx = fx;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)wc_http_port(fx->h))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    c->ev = event_new(fx->base, c->fd, EV_READ | EV_PERSIST, on_client_readable, c);
    event_add(c->ev, NULL);
    c->sent_at = now_ms();
}

static void client_send(client *c, const char *text)
{
    assert_int_equal(send(c->fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
    c->sent_at = now_ms();
}

static void client_close(client *c)
{
    event_free(c->ev);
    close(c->fd);
}

typedef struct deadline {
    fixture *fx;
    bool expired;
} deadline;

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    deadline *d = arg;
    d->expired = true;
    event_base_loopbreak(d->fx->base);
}

/* Runs the loop until a client callback stops it or ms pass; true when a
 * client stopped it. */
static bool run_until(fixture *fx, int ms)
{
    deadline d = {fx, false};
    struct event *timer = evtimer_new(fx->base, on_deadline, &d);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(timer, &tv);
    event_base_dispatch(fx->base);
    event_free(timer);
    return !d.expired;
}

static int status_of(const client *c)
{
    int code = 0;
    return sscanf(c->got, "HTTP/1.%*d %d", &code) == 1 ? code : 0;
}

/* A handler slower than the read deadline still answers: the deadline is for
 * reading the request, not for the handler. */
static void test_slow_handler_is_not_cut(void **state)
{
    fixture *fx = *state;
    client c;
    client_open(fx, &c);
    c.stop_at_answer = true;
    client_send(&c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(run_until(fx, 5000));
    assert_false(c.closed);
    assert_int_equal(status_of(&c), 200);
    assert_true(c.answered_ms >= READ_TIMEOUT_S * 1000);
    client_close(&c);
}

/* After a response the kept-alive connection has a fresh deadline for its
 * next request; idle past it, it is closed. */
static void test_kept_alive_connection_gets_a_new_deadline(void **state)
{
    fixture *fx = *state;
    client c;
    client_open(fx, &c);
    c.stop_at_answer = true;
    client_send(&c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_true(run_until(fx, 5000));
    assert_int_equal(status_of(&c), 200);
    long long answered_at = c.sent_at + c.answered_ms;
    c.stop_at_answer = false;
    assert_true(run_until(fx, 5000));
    assert_true(c.closed);
    long long idle = now_ms() - answered_at;
    assert_true(idle >= READ_TIMEOUT_S * 1000 - 100 && idle <= READ_TIMEOUT_S * 1000 + 1500);
    client_close(&c);
}

/* A route's cap under the listener's largest: refused from its Content-Length
 * before the body is read (wc_http.c on_conn_input). */
static void test_route_caps(void **state)
{
    fixture *fx = *state;
    char body[101];
    memset(body, 'x', 100);
    body[100] = '\0';
    const char *paths[] = {"/small", "/big"};
    int want[] = {413, 200};
    for (int i = 0; i < 2; i++) {
        client c;
        client_open(fx, &c);
        char req[512];
        snprintf(
            req, sizeof req,
            "POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n%s",
            paths[i], body);
        client_send(&c, req);
        assert_true(run_until(fx, 5000));
        assert_true(c.closed);
        assert_int_equal(status_of(&c), want[i]);
        client_close(&c);
    }
    /* Over the listener's largest cap: refused from the Content-Length. */
    client c;
    client_open(fx, &c);
    c.stop_at_answer = true;
    client_send(&c, "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n");
    assert_true(run_until(fx, 5000));
    assert_int_equal(status_of(&c), 413);
    client_close(&c);
}

/* Past the cap a connection is answered 503 and closed; the counters say so. */
static void test_cap_and_metrics(void **state)
{
    fixture *fx = *state;
    client idle[2], over;
    client_open(fx, &idle[0]);
    client_open(fx, &idle[1]);
    client_open(fx, &over);
    assert_true(run_until(fx, 3000));
    assert_true(over.closed);
    assert_int_equal(status_of(&over), 503);
    assert_false(idle[0].closed);
    assert_false(idle[1].closed);
    struct evbuffer *out = evbuffer_new();
    wc_http *listeners[] = {fx->h, NULL};
    wc_http_write_metrics(listeners, 2, out);
    size_t len = evbuffer_get_length(out);
    char *text = calloc(1, len + 1);
    evbuffer_copyout(out, text, len);
    assert_non_null(strstr(text, "wacast_http_connections{listener=\"test\"} 2\n"));
    assert_non_null(strstr(text, "wacast_http_connections_refused_total{listener=\"test\"} 1\n"));
    assert_non_null(strstr(text, "# TYPE wacast_http_read_timeouts_total counter\n"));
    free(text);
    evbuffer_free(out);
    client_close(&over);
    client_close(&idle[0]);
    client_close(&idle[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_slow_handler_is_not_cut, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kept_alive_connection_gets_a_new_deadline, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_route_caps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cap_and_metrics, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
