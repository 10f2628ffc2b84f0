/* Unit tests for wc_fetch on a real evhttp server on 127.0.0.1 (on the same
 * event loop as the client): an image fetched, redirects followed up to the
 * cap, a redirect loop, a hang, a 1 GB stream (announced and not), an HTML
 * page served as image/jpeg, a text/html type, a 404, a closed port, and the
 * address guard refusing loopback unless allow-listed. Every loop run has a
 * deadline, so a broken fetcher fails instead of hanging. */
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
#include <event2/listener.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <turbojpeg.h>

#include "wc_fetch.h"
#include "wc_image.h"

#define STREAM_CHUNK (64 * 1024)
#define GIGABYTE (1024ULL * 1024 * 1024)
#define LOOPBACK "127.0.0.1/32"

typedef struct fixture {
    struct event_base *base;
    struct evhttp *http;
    int port;
    wc_httpc *c;
    unsigned char *jpeg;
    size_t jpeg_len;
    uint64_t streamed; /* bytes the streaming handler got out */
    bool stream_closed;
    bool announce; /* the next streamed reply says Content-Length: 1 GB */
    struct evconnlistener *stream_listener;
    int stream_port;
} fixture;

typedef struct result {
    fixture *fx;
    int calls;
    unsigned char *data;
    size_t len;
    char code[64], why[300];
} result;

static void reply(struct evhttp_request *req, int status, const char *ctype, const void *body,
                  size_t len)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, len);
    if (ctype)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
    evhttp_send_reply(req, status, status == 200 ? "OK" : "Other", out);
    evbuffer_free(out);
}

static void on_image(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    reply(req, 200, "image/jpeg", fx->jpeg, fx->jpeg_len);
}

static void on_html_as_jpeg(struct evhttp_request *req, void *arg)
{
    static const char page[] = "<!doctype html><html><body>Sign in to continue</body></html>";
    reply(req, 200, "image/jpeg", page, sizeof page - 1);
}

static void on_text(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    reply(req, 200, "text/html; charset=utf-8", fx->jpeg, fx->jpeg_len);
}

static void on_missing(struct evhttp_request *req, void *arg)
{
    reply(req, 404, "text/plain", "no", 2);
}

static void redirect(struct evhttp_request *req, const char *to)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Location", to);
    reply(req, 302, "text/plain", "", 0);
}

static void on_loop(struct evhttp_request *req, void *arg)
{
    redirect(req, "/loop");
}

static void on_hop(struct evhttp_request *req, void *arg)
{
    redirect(req, "/image");
}

static void on_hop_to_other_host(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    char to[128];
    snprintf(to, sizeof to, "http://127.0.0.2:%d/image", fx->port);
    redirect(req, to);
}

static void on_hang(struct evhttp_request *req, void *arg)
{
    (void)req; /* never answered */
}

/* A raw HTTP server (bufferevents, not evhttp, so the test owns the
 * connection) that answers any request with a gigabyte of zeros, written a
 * chunk at a time as the socket drains, until the client goes away. */
typedef struct streamer {
    fixture *fx;
    bool announce;
    bool replying;
} streamer;

static void stream_write(struct bufferevent *bev, void *arg)
{
    streamer *st = arg;
    fixture *fx = st->fx;
    if (!st->replying)
        return;
    if (fx->streamed >= GIGABYTE)
        return;
    static const unsigned char zeros[STREAM_CHUNK];
    if (!st->announce) {
        char head[32];
        int n = snprintf(head, sizeof head, "%x\r\n", STREAM_CHUNK);
        bufferevent_write(bev, head, (size_t)n);
    }
    bufferevent_write(bev, zeros, sizeof zeros);
    if (!st->announce)
        bufferevent_write(bev, "\r\n", 2);
    fx->streamed += sizeof zeros;
}

static void stream_read(struct bufferevent *bev, void *arg)
{
    streamer *st = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (st->replying || evbuffer_search(in, "\r\n\r\n", 4, NULL).pos < 0)
        return; /* the request's head is not all in yet */
    st->replying = true;
    st->fx->streamed = 0;
    if (st->announce)
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                            "Content-Length: %llu\r\n\r\n",
                            (unsigned long long)GIGABYTE);
    else
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n");
    stream_write(bev, st);
}

static void stream_event(struct bufferevent *bev, short what, void *arg)
{
    streamer *st = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        st->fx->stream_closed = true;
        bufferevent_free(bev);
        free(st);
    }
}

static void on_stream_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                             int salen, void *arg)
{
    fixture *fx = arg;
    streamer *st = calloc(1, sizeof *st);
    st->fx = fx;
    st->announce = fx->announce;
    struct bufferevent *bev = bufferevent_socket_new(fx->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, stream_read, stream_write, stream_event, st);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static void run_loop(fixture *fx, int ms)
{
    struct event *deadline = evtimer_new(fx->base, on_deadline, fx->base);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(deadline, &tv);
    event_base_loop(fx->base, 0);
    event_free(deadline);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    fx->base = event_base_new();
    fx->http = evhttp_new(fx->base);
    evhttp_set_cb(fx->http, "/image", on_image, fx);
    evhttp_set_cb(fx->http, "/html-as-jpeg", on_html_as_jpeg, fx);
    evhttp_set_cb(fx->http, "/text", on_text, fx);
    evhttp_set_cb(fx->http, "/missing", on_missing, fx);
    evhttp_set_cb(fx->http, "/loop", on_loop, fx);
    evhttp_set_cb(fx->http, "/hop", on_hop, fx);
    evhttp_set_cb(fx->http, "/hop-other-host", on_hop_to_other_host, fx);
    evhttp_set_cb(fx->http, "/hang", on_hang, fx);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(fx->http, "127.0.0.1", 0);
    assert_non_null(bs);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &len);
    fx->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    fx->stream_listener =
        evconnlistener_new_bind(fx->base, on_stream_accept, fx, LEV_OPT_CLOSE_ON_FREE, 16,
                                (struct sockaddr *)&sin, sizeof sin);
    assert_non_null(fx->stream_listener);
    len = sizeof ss;
    getsockname(evconnlistener_get_fd(fx->stream_listener), (struct sockaddr *)&ss, &len);
    fx->stream_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    fx->c = wc_httpc_new(fx->base, 0);
    assert_non_null(fx->c);
    unsigned char px[64 * 48 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (unsigned char)(i * 7);
    tjhandle tj = tjInitCompress();
    unsigned char *j = NULL;
    unsigned long n = 0;
    assert_int_equal(tjCompress2(tj, px, 64, 0, 48, TJPF_RGB, &j, &n, TJSAMP_420, 90, 0), 0);
    fx->jpeg = malloc(n);
    memcpy(fx->jpeg, j, n);
    fx->jpeg_len = n;
    tjFree(j);
    tjDestroy(tj);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    wc_httpc_free(fx->c);
    evconnlistener_free(fx->stream_listener);
    evhttp_free(fx->http);
    event_base_free(fx->base);
    free(fx->jpeg);
    free(fx);
    return 0;
}

static void on_fetched(void *arg, const unsigned char *data, size_t len, const char *code,
                       const char *why)
{
    result *r = arg;
    r->calls++;
    if (data) {
        r->data = malloc(len ? len : 1);
        memcpy(r->data, data, len);
        r->len = len;
    }
    snprintf(r->code, sizeof r->code, "%s", code ? code : "");
    snprintf(r->why, sizeof r->why, "%s", why ? why : "");
    event_base_loopbreak(r->fx->base);
}

/* Fetches path from the test server; the result is in *r. */
static void fetch(fixture *fx, const char *path, const wc_fetch_opts *o, result *r)
{
    memset(r, 0, sizeof *r);
    r->fx = fx;
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s",
             strncmp(path, "/gigabyte", 9) == 0 ? fx->stream_port : fx->port, path);
    const char *code = NULL;
    char why[200];
    assert_int_equal(wc_fetch_start(fx->c, url, o, on_fetched, r, &code, why, sizeof why), 0);
    run_loop(fx, 10000);
    assert_int_equal(r->calls, 1);
    printf("# %-22s -> %s %s (%zu bytes)\n", path, r->code[0] ? r->code : "ok", r->why, r->len);
}

static void test_image_fetched(void **state)
{
    fixture *fx = *state;
    wc_fetch_opts o = {.allow = LOOPBACK};
    result r;
    fetch(fx, "/image", &o, &r);
    assert_string_equal(r.code, "");
    assert_int_equal(r.len, fx->jpeg_len);
    assert_memory_equal(r.data, fx->jpeg, fx->jpeg_len);
    free(r.data);
    fetch(fx, "/hop", &o, &r); /* one redirect, within the cap */
    assert_string_equal(r.code, "");
    assert_int_equal(r.len, fx->jpeg_len);
    free(r.data);
}

static void test_loopback_refused_unless_allowed(void **state)
{
    fixture *fx = *state;
    result r;
    fetch(fx, "/image", NULL, &r);
    assert_string_equal(r.code, WC_FETCH_E_ADDRESS);
    assert_non_null(strstr(r.why, "127.0.0.1 is a loopback address"));
    assert_null(r.data);
    /* Allowed host, redirected to another loopback address not allowed. */
    wc_fetch_opts o = {.allow = LOOPBACK};
    fetch(fx, "/hop-other-host", &o, &r);
    assert_string_equal(r.code, WC_FETCH_E_ADDRESS);
    assert_non_null(strstr(r.why, "127.0.0.2"));
}

static void test_redirect_loop(void **state)
{
    fixture *fx = *state;
    wc_fetch_opts o = {.allow = LOOPBACK};
    result r;
    fetch(fx, "/loop", &o, &r);
    assert_string_equal(r.code, WC_FETCH_E_REDIRECTS);
    wc_fetch_opts none = {.allow = LOOPBACK, .max_redirects = -1};
    fetch(fx, "/hop", &none, &r);
    assert_string_equal(r.code, WC_FETCH_E_REDIRECTS);
}

static void test_timeout(void **state)
{
    fixture *fx = *state;
    wc_fetch_opts o = {.allow = LOOPBACK, .timeout_ms = 300};
    result r;
    fetch(fx, "/hang", &o, &r);
    assert_string_equal(r.code, WC_FETCH_E_TIMEOUT);
    run_loop(fx, 100); /* the server sees the client go and frees its request */
}

/* A gigabyte, announced by Content-Length or streamed without one: the
 * transfer stops at the cap; the server got out a bounded amount. */
static void test_gigabyte_stopped(void **state)
{
    fixture *fx = *state;
    const char *paths[] = {"/gigabyte", "/gigabyte-chunked"};
    for (int i = 0; i < 2; i++) {
        wc_fetch_opts o = {.allow = LOOPBACK, .max_bytes = 1024 * 1024};
        result r;
        fx->announce = i == 0;
        fx->stream_closed = false;
        fetch(fx, paths[i], &o, &r);
        assert_string_equal(r.code, WC_FETCH_E_TOO_LARGE);
        assert_null(r.data);
        /* Let the server see the close. */
        for (int k = 0; k < 50 && !fx->stream_closed; k++)
            run_loop(fx, 20);
        printf("#   server wrote %llu KB before the client hung up\n",
               (unsigned long long)fx->streamed / 1024);
        assert_true(fx->stream_closed);
        assert_true(fx->streamed < 64ULL * 1024 * 1024);
    }
}

static void test_not_an_image(void **state)
{
    fixture *fx = *state;
    wc_fetch_opts o = {.allow = LOOPBACK};
    result r;
    fetch(fx, "/text", &o, &r);
    assert_string_equal(r.code, WC_FETCH_E_TYPE);
    fetch(fx, "/missing", &o, &r);
    assert_string_equal(r.code, WC_FETCH_E_STATUS);
    assert_non_null(strstr(r.why, "404"));
    /* The content type says JPEG; the magic bytes say a web page. */
    fetch(fx, "/html-as-jpeg", &o, &r);
    assert_string_equal(r.code, "");
    wc_image_out out;
    const char *code = NULL;
    char why[200];
    assert_int_equal(wc_image_prepare(r.data, r.len, NULL, &out, &code, why, sizeof why), -1);
    assert_string_equal(code, WC_IMAGE_E_HTML);
    free(r.data);
}

static void test_refused_before_starting(void **state)
{
    fixture *fx = *state;
    const char *bad[] = {"ftp://example.com/a.jpg", "file:///etc/passwd", "gopher://x", "", NULL};
    for (int i = 0; bad[i]; i++) {
        const char *code = NULL;
        char why[200];
        result r = {.fx = fx};
        assert_int_equal(
            wc_fetch_start(fx->c, bad[i], NULL, on_fetched, &r, &code, why, sizeof why), -1);
        assert_string_equal(code, WC_FETCH_E_URL);
    }
    /* Nothing listens on a port just closed. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t al = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &al);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x.jpg", ntohs(a.sin_port));
    close(s);
    result r = {.fx = fx};
    const char *code = NULL;
    char why[200];
    wc_fetch_opts o = {.allow = LOOPBACK};
    assert_int_equal(wc_fetch_start(fx->c, url, &o, on_fetched, &r, &code, why, sizeof why), 0);
    run_loop(fx, 10000);
    assert_int_equal(r.calls, 1);
    assert_string_equal(r.code, WC_FETCH_E_FAILED);
}

static bool allowed(const char *allow, const char *ip)
{
    struct sockaddr_storage ss = {0};
    char why[200];
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *a = (void *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, ip, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (void *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, ip, &a->sin_addr), 1);
    }
    return wc_fetch_address_allowed(allow, (struct sockaddr *)&ss, why, sizeof why);
}

static void test_address_ranges(void **state)
{
    (void)state;
    const char *refused[] = {"127.0.0.1",
                             "10.1.2.3",
                             "172.16.0.1",
                             "172.31.255.255",
                             "192.168.1.1",
                             "169.254.169.254",
                             "100.64.0.1",
                             "0.0.0.0",
                             "224.0.0.1",
                             "::1",
                             "::",
                             "fe80::1",
                             "fd00::1",
                             "::ffff:127.0.0.1",
                             "::ffff:10.0.0.1",
                             "64:ff9b::a00:1"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        if (allowed(NULL, refused[i]))
            fail_msg("%s allowed", refused[i]);
    const char *public[] = {"8.8.8.8", "157.240.1.1", "172.32.0.1", "2a03:2880::1"};
    for (size_t i = 0; i < sizeof public / sizeof public[0]; i++)
        if (!allowed(NULL, public[i]))
            fail_msg("%s refused", public[i]);
    assert_true(allowed("10.0.0.0/8", "10.1.2.3"));
    assert_false(allowed("10.0.0.0/8", "192.168.1.1"));
    assert_true(allowed("192.168.1.7", "192.168.1.7"));
    assert_true(allowed("fd00::/8, 127.0.0.1/32", "fd00::1"));
    assert_true(allowed(LOOPBACK, "::ffff:127.0.0.1"));
    char err[100];
    assert_int_equal(wc_fetch_allow_check("10.0.0.0/8, ::1/128,192.168.0.1", err, sizeof err), 0);
    assert_int_equal(wc_fetch_allow_check("10.0.0.0/33", err, sizeof err), -1);
    assert_int_equal(wc_fetch_allow_check("localhost", err, sizeof err), -1);
    assert_non_null(strstr(err, "localhost"));
}

static void test_data_url(void **state)
{
    (void)state;
    unsigned char *d;
    size_t n;
    const char *code = NULL;
    char why[200];
    assert_int_equal(
        wc_fetch_data_url("data:image/png;base64,iVBORw0KGgo=", 0, &d, &n, &code, why, sizeof why),
        0);
    assert_int_equal(n, 8);
    assert_memory_equal(d, "\x89PNG\r\n\x1a\n", 8);
    free(d);
    assert_int_equal(
        wc_fetch_data_url("data:image/png,rawbytes", 0, &d, &n, &code, why, sizeof why), -1);
    assert_string_equal(code, WC_FETCH_E_DATA_URL);
    assert_int_equal(
        wc_fetch_data_url("data:image/png;base64,@@@@", 0, &d, &n, &code, why, sizeof why), -1);
    assert_string_equal(code, WC_FETCH_E_DATA_URL);
    assert_int_equal(wc_fetch_data_url("data:image/png;base64,iVBORw0KGgoAAAAAAAAAAAAA", 8, &d, &n,
                                       &code, why, sizeof why),
                     -1);
    assert_string_equal(code, WC_FETCH_E_TOO_LARGE);
    assert_int_equal(wc_fetch_data_url("https://x/y.png", 0, &d, &n, &code, why, sizeof why), -1);
    assert_string_equal(code, WC_FETCH_E_URL);
    /* 57 bytes, wrapped in lines of 8 characters, fit a cap of 57: the line
     * breaks do not count (the fuzz target found them counted). */
    static const char wrapped[] = "data:image/"
                                  "png;base64,"
                                  "AAECAwQF\r\nBgcICQoL\r\nDA0ODxAR\r\nEhMUFRYX\r\nGBkaGxwd\r\nHh8g"
                                  "ISIj\r\nJCUmJygp\r\nKissLS4v\r\nMDEyMzQ1\r\nNjc4";
    assert_int_equal(wc_fetch_data_url(wrapped, 57, &d, &n, &code, why, sizeof why), 0);
    assert_int_equal(n, 57);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(d[i], i);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_image_fetched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loopback_refused_unless_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redirect_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gigabyte_stopped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_an_image, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_before_starting, setup, teardown),
        cmocka_unit_test(test_address_ranges),
        cmocka_unit_test(test_data_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
