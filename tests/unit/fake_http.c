/* The in-process HTTP server of the unit tests; see fake_http.h. */
#include "fake_http.h"

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
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/listener.h>

struct fake_raw {
    struct evconnlistener *listener;
    fake_raw_mode mode;
    const char *cut_body;
    int port;
    int requests; /* whole requests read */
};

typedef struct raw_conn {
    fake_raw *srv;
    struct bufferevent *bev;
} raw_conn;

void fake_http_start(fake_http *f, void (*on_request)(struct evhttp_request *, void *), void *arg)
{
    memset(f, 0, sizeof *f);
    f->base = event_base_new();
    assert_non_null(f->base);
    f->http = evhttp_new(f->base);
    assert_non_null(f->http);
    if (on_request)
        evhttp_set_gencb(f->http, on_request, arg);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(f->http, "127.0.0.1", 0);
    assert_non_null(bs);
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &len);
    f->port = ntohs(sin.sin_port);
    snprintf(f->base_url, sizeof f->base_url, "http://127.0.0.1:%d/", f->port);
}

void fake_http_stop(fake_http *f)
{
    fake_http_raw_free(f);
    evhttp_free(f->http);
    event_base_free(f->base);
}

void fake_http_violation(fake_http *f, const char *fmt, ...)
{
    size_t used = strlen(f->violations);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->violations + used, sizeof f->violations - used, fmt, ap);
    va_end(ap);
    used = strlen(f->violations);
    snprintf(f->violations + used, sizeof f->violations - used, "\n");
    f->nviolations++;
}

void fake_http_assert_no_violations(fake_http *f, const char *who)
{
    if (f->nviolations)
        fail_msg("%s saw %d violation(s):\n%s", who, f->nviolations, f->violations);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fake_http *f = arg;
    f->deadline_hit = true;
    event_base_loopbreak(f->base);
}

void fake_http_run(fake_http *f, int ms)
{
    struct event *deadline = evtimer_new(f->base, on_deadline, f);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(deadline, &tv);
    f->deadline_hit = false;
    event_base_loop(f->base, 0);
    event_free(deadline);
}

int fake_http_dead_port(void)
{
    evutil_socket_t s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(s, (struct sockaddr *)&sin, sizeof sin);
    socklen_t len = sizeof sin;
    getsockname(s, (struct sockaddr *)&sin, &len);
    evutil_closesocket(s);
    return ntohs(sin.sin_port);
}

static void raw_close(raw_conn *rc, bool reset)
{
    if (reset) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(bufferevent_getfd(rc->bev), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    bufferevent_free(rc->bev);
    free(rc);
}

static void raw_on_written(struct bufferevent *bev, void *arg)
{
    (void)bev;
    raw_close(arg, false);
}

static void raw_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        raw_close(arg, false);
}

/* Headers and the Content-Length bytes of body have all arrived. */
static bool whole_request(struct evbuffer *in)
{
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0)
        return false;
    size_t hlen = (size_t)end.pos + 4;
    char *head = malloc(hlen + 1);
    assert_non_null(head);
    evbuffer_copyout(in, head, hlen);
    head[hlen] = '\0';
    const char *cl = strcasestr(head, "\r\ncontent-length:");
    size_t clen = cl ? strtoul(cl + 17, NULL, 10) : 0;
    free(head);
    return evbuffer_get_length(in) >= hlen + clen;
}

static void raw_on_read(struct bufferevent *bev, void *arg)
{
    raw_conn *rc = arg;
    if (!whole_request(bufferevent_get_input(bev)))
        return;
    rc->srv->requests++;
    static const char page[] =
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>nginx</body></html>";
    switch (rc->srv->mode) {
    case FAKE_RAW_RESET:
        raw_close(rc, true);
        return;
    case FAKE_RAW_CLOSE:
        raw_close(rc, false);
        return;
    case FAKE_RAW_HTML_502:
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
                            "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                            strlen(page), page);
        break;
    case FAKE_RAW_CUT_BODY:
        evbuffer_add_printf(bufferevent_get_output(bev),
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            "Content-Length: 200\r\n\r\n%s",
                            rc->srv->cut_body ? rc->srv->cut_body : "{");
        break;
    }
    bufferevent_setcb(bev, NULL, raw_on_written, raw_on_event, rc);
}

static void raw_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                          int socklen, void *arg)
{
    (void)sa;
    (void)socklen;
    raw_conn *rc = calloc(1, sizeof *rc);
    assert_non_null(rc);
    rc->srv = arg;
    rc->bev = bufferevent_socket_new(evconnlistener_get_base(l), fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(rc->bev, raw_on_read, NULL, raw_on_event, rc);
    bufferevent_enable(rc->bev, EV_READ);
}

int *fake_http_raw(fake_http *f, fake_raw_mode mode, const char *cut_body)
{
    if (!f->raw) {
        f->raw = calloc(1, sizeof *f->raw);
        assert_non_null(f->raw);
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        f->raw->listener = evconnlistener_new_bind(f->base, raw_on_accept, f->raw,
                                                   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
                                                   (struct sockaddr *)&sin, sizeof sin);
        assert_non_null(f->raw->listener);
        socklen_t len = sizeof sin;
        getsockname(evconnlistener_get_fd(f->raw->listener), (struct sockaddr *)&sin, &len);
        f->raw->port = ntohs(sin.sin_port);
    }
    f->raw->mode = mode;
    f->raw->cut_body = cut_body;
    snprintf(f->base_url, sizeof f->base_url, "http://127.0.0.1:%d/", f->raw->port);
    return &f->raw->requests;
}

void fake_http_raw_free(fake_http *f)
{
    if (f->raw) {
        evconnlistener_free(f->raw->listener);
        free(f->raw);
        f->raw = NULL;
    }
}
