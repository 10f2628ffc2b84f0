/* evhttp listeners with per-listener limits; see wc_http.h.
 *
 * Why connections are tracked through their bufferevents: libevent 2.1
 * (Debian 12) calls no user code when it accepts a connection except the
 * bufferevent factory (evhttp_set_bevcb); evhttp_set_newreqcb, which would
 * hand us each connection and request before its headers, is 2.2. So each
 * connection's bufferevent is made here, and we keep a reference to it
 * (bufferevent_incref) in an http_conn. evhttp frees a connection by clearing
 * the bufferevent's callbacks and dropping its own reference; an http_conn
 * whose bufferevent has no event callback any more is closed, and is swept
 * (our reference dropped) at the next accept, deadline or metrics read. The
 * reference keeps the pointer from being reused while we still hold it.
 *
 * To close a connection we shut its socket down: evhttp reads the end of file
 * and frees the connection itself, so nothing is freed under evhttp's feet.
 *
 * Each http_conn is in one state:
 *   READING   a request is being read; the read deadline is armed
 *   HANDLING  the request is with its handler; no deadline
 *   REFUSED   over the connection cap; answered 503 and shut on the next turn
 * READING -> HANDLING when the request reaches on_request(); HANDLING ->
 * READING when its response is written (kept-alive connection).
 *
 * Body caps: evhttp refuses a body over the listener's limit (413) from its
 * Content-Length before reading it, and stops a chunked one as it crosses it.
 * With no hook between headers and body in 2.1, that limit is the largest cap
 * of the listener's routes. A route's own smaller cap is applied before the
 * body is read by watching the connection's input: once a request's headers
 * are in, a Content-Length over its route's cap is answered 413 and the
 * connection shut (on_conn_input); a chunked body to such a route is read up
 * to the listener's limit and refused by on_request(). */
#include "wc_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sodium.h>

#include "wc_log.h"

#define MAX_ROUTES 16
/* The cap of the built-in GET routes: they take no body. */
#define HEALTH_MAX_BODY 1024

typedef struct prefix_route {
    char prefix[64];
    bool exact; /* the path (before any '?') must equal prefix */
    size_t max_body;
    wc_http_handler *cb;
    void *arg;
} prefix_route;

typedef enum { CONN_READING, CONN_HANDLING, CONN_REFUSED } conn_state;

typedef struct http_conn {
    struct http_conn *prev, *next;
    wc_http *h;
    struct bufferevent *bev; /* our reference */
    struct event *timer;     /* the read deadline, or the refusal */
    struct evbuffer_cb_entry *output_watch, *input_watch;
    conn_state state;
    bool headers_checked; /* this request's Content-Length was held against its route's cap */
    bool refusal_counted; /* evhttp's own error reply to this request was seen */
} http_conn;

struct wc_http {
    char name[16];
    prefix_route routes[MAX_ROUTES];
    int nroutes;
    size_t max_body; /* the largest route cap: evhttp's limit */
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    wc_http_ready_fn *ready;
    wc_http_metrics_fn *metrics;
    void *arg;
    int port;
    wc_http_limits limits;
    http_conn *conns; /* every connection we still hold a reference to */
    int nopen;        /* of them, admitted and not yet closed */
    uint64_t refused, timed_out, too_large;
};

/* ---- connections ----------------------------------------------------------------------------- */

static bool conn_open(const http_conn *c)
{
    bufferevent_event_cb eventcb = NULL;
    bufferevent_getcb(c->bev, NULL, NULL, &eventcb, NULL);
    return eventcb != NULL;
}

static void conn_release(http_conn *c)
{
    wc_http *h = c->h;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->state != CONN_REFUSED)
        h->nopen--;
    evbuffer_remove_cb_entry(bufferevent_get_output(c->bev), c->output_watch);
    evbuffer_remove_cb_entry(bufferevent_get_input(c->bev), c->input_watch);
    event_free(c->timer);
    bufferevent_decref(c->bev);
    free(c);
}

/* Releases the connections evhttp has closed. */
static void sweep(wc_http *h)
{
    http_conn *next;
    for (http_conn *c = h->conns; c; c = next) {
        next = c->next;
        if (!conn_open(c))
            conn_release(c);
    }
}

/* Ends the connection: evhttp sees the end of file and frees it. */
static void conn_shut(http_conn *c)
{
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
}

/* Answers status with {"error": error} straight on the socket (evhttp is
 * not asked: the connection is refused before it has a request to answer)
 * and ends the connection. */
static void answer_and_shut(http_conn *c, const char *status, const char *error)
{
    char reply[256];
    int len = snprintf(reply, sizeof reply,
                       "HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                       "Content-Length: %zu\r\nConnection: close\r\n\r\n{\"error\":\"%s\"}",
                       status, strlen(error) + 12, error);
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    if (fd >= 0 && len > 0 && (size_t)len < sizeof reply &&
        send(fd, reply, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        wc_debug("http %s: could not answer %s", c->h->name, status);
    conn_shut(c);
}

static void arm_deadline(http_conn *c)
{
    struct timeval tv = {c->h->limits.read_timeout_s, 0};
    c->state = CONN_READING;
    c->refusal_counted = false;
    c->headers_checked = false;
    evtimer_add(c->timer, &tv);
}

static void on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_conn *c = arg;
    wc_http *h = c->h;
    if (!conn_open(c)) {
        conn_release(c);
        return;
    }
    if (c->state == CONN_REFUSED) {
        answer_and_shut(c, "503 Service Unavailable", "too many connections");
    } else if (c->state == CONN_READING) {
        h->timed_out++;
        conn_shut(c);
    }
}

/* Output while a request is still being read is evhttp's own answer to it
 * (or a 100 Continue): a 413 is a body over the listener's cap, which no
 * handler sees, so it is counted here. */
static void on_conn_output(struct evbuffer *out, const struct evbuffer_cb_info *info, void *arg)
{
    http_conn *c = arg;
    char head[13] = "";
    if (info->n_added == 0 || c->state != CONN_READING || c->refusal_counted ||
        evbuffer_copyout(out, head, 12) != 12)
        return;
    int code = 0;
    if (sscanf(head, "HTTP/1.%*d %d", &code) == 1 && code >= 400) {
        c->refusal_counted = true;
        if (code == 413)
            c->h->too_large++;
    }
}

static const prefix_route *route_for(const wc_http *h, const char *uri);

/* Longest head (request line and headers) looked at; evhttp refuses longer. */
#define HEAD_MAX 16384

/* Input arriving while a request is read: once its head is complete, a
 * Content-Length over its route's own cap is answered 413 at once and the
 * connection shut, before any of the body is read (evhttp alone would read
 * up to the largest cap of the listener's routes). */
static void on_conn_input(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    http_conn *c = arg;
    if (info->n_added == 0 || c->state != CONN_READING || c->headers_checked)
        return;
    struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (end.pos < 0) {
        c->headers_checked = evbuffer_get_length(in) > HEAD_MAX; /* evhttp's to refuse */
        return;
    }
    c->headers_checked = true;
    if (end.pos > HEAD_MAX)
        return;
    char head[HEAD_MAX + 1];
    ev_ssize_t n = evbuffer_copyout(in, head, (size_t)end.pos);
    if (n < 0)
        return;
    head[n] = '\0';
    /* "METHOD SP URI SP VERSION", then the header lines. */
    char *sp = strchr(head, ' '), *uri_end = sp ? strchr(sp + 1, ' ') : NULL;
    if (!sp || !uri_end)
        return;
    *uri_end = '\0';
    const prefix_route *r = route_for(c->h, sp + 1);
    if (!r)
        return;
    unsigned long long length = 0;
    for (char *line = strstr(uri_end + 1, "\r\n"); line; line = strstr(line + 2, "\r\n"))
        if (!strncasecmp(line + 2, "Content-Length:", 15))
            length = strtoull(line + 17, NULL, 10);
    if (length <= r->max_body)
        return;
    c->h->too_large++;
    c->refusal_counted = true;
    answer_and_shut(c, "413 Request Entity Too Large", "body too large");
    /* What arrived goes unread: evhttp must not take the request and answer
     * it on the shut socket. */
    evbuffer_drain(in, evbuffer_get_length(in));
}

/* evhttp's bufferevent factory: called once per accepted connection, before
 * evhttp sets the socket on it. */
static struct bufferevent *on_accept(struct event_base *base, void *arg)
{
    wc_http *h = arg;
    sweep(h);
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    http_conn *c = bev ? calloc(1, sizeof *c) : NULL;
    if (c) {
        c->timer = evtimer_new(base, on_conn_timer, c);
        c->output_watch = evbuffer_add_cb(bufferevent_get_output(bev), on_conn_output, c);
        c->input_watch = evbuffer_add_cb(bufferevent_get_input(bev), on_conn_input, c);
    }
    if (!c || !c->timer || !c->output_watch || !c->input_watch) {
        /* Out of memory: evhttp makes its own bufferevent (or fails); the
         * connection goes untracked. */
        if (c && c->timer)
            event_free(c->timer);
        free(c);
        if (bev)
            bufferevent_free(bev);
        return NULL;
    }
    bufferevent_incref(bev);
    c->h = h;
    c->bev = bev;
    c->next = h->conns;
    if (h->conns)
        h->conns->prev = c;
    h->conns = c;
    if (h->nopen >= h->limits.max_conns) {
        c->state = CONN_REFUSED;
        h->refused++;
        event_active(c->timer, EV_TIMEOUT, 1);
    } else {
        h->nopen++;
        arm_deadline(c);
    }
    return bev;
}

static http_conn *conn_of(wc_http *h, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    /* A walk: at most max_conns plus the few closed since the last sweep. */
    for (http_conn *c = h->conns; bev && c; c = c->next)
        if (c->bev == bev)
            return c;
    return NULL;
}

/* The response is written: a kept-alive connection waits for its next request
 * under a fresh deadline. */
static void on_response_sent(struct evhttp_request *req, void *arg)
{
    (void)req;
    http_conn *c = arg;
    if (c->state == CONN_HANDLING)
        arm_deadline(c);
}

void wc_http_write_metrics(wc_http *const *listeners, size_t n, struct evbuffer *out)
{
    static const struct {
        const char *name, *type, *help;
    } families[] = {
        {"wacast_http_connections", "gauge", "HTTP connections open"},
        {"wacast_http_connections_refused_total", "counter",
         "HTTP connections refused (503) because the listener was at its cap"},
        {"wacast_http_read_timeouts_total", "counter",
         "HTTP connections closed because a request did not arrive in time"},
        {"wacast_http_bodies_too_large_total", "counter",
         "HTTP requests refused (413) because their body was over the listener's cap, unread"},
    };
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", families[f].name, families[f].help,
                            families[f].name, families[f].type);
        for (size_t i = 0; i < n; i++) {
            wc_http *h = listeners[i];
            if (!h)
                continue;
            sweep(h);
            double v = f == 0   ? h->nopen
                       : f == 1 ? (double)h->refused
                       : f == 2 ? (double)h->timed_out
                                : (double)h->too_large;
            char labels[64];
            snprintf(labels, sizeof labels, "listener=\"%s\"", h->name);
            wc_metric_labeled(out, families[f].name, labels, v);
        }
    }
}

static void reply_text(struct evhttp_request *req, int code, const char *type, const char *body)
{
    struct evbuffer *buf = evbuffer_new();
    if (!buf) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add(buf, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    evhttp_send_reply(req, code, code < 400 ? "OK" : "Error", buf);
    evbuffer_free(buf);
}

void wc_http_reply_json(struct evhttp_request *req, int code, const char *json)
{
    reply_text(req, code, "application/json", json);
}

void wc_http_reply_error(struct evhttp_request *req, int code, const char *message)
{
    struct evbuffer *buf = evbuffer_new();
    if (!buf) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    evbuffer_add_printf(buf, "{\"error\":\"");
    for (const char *p = message; *p; p++) {
        if (*p == '"' || *p == '\\')
            evbuffer_add_printf(buf, "\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            evbuffer_add_printf(buf, "\\u%04x", (unsigned char)*p);
        else
            evbuffer_add(buf, p, 1);
    }
    evbuffer_add_printf(buf, "\"}");
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, code, "Error", buf);
    evbuffer_free(buf);
}

bool wc_http_bearer_ok(struct evhttp_request *req, const char *token)
{
    if (!token || !*token)
        return false;
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!auth || strncmp(auth, "Bearer ", 7) != 0)
        return false;
    const char *given = auth + 7;
    /* Compare fixed-size digests so neither content nor length leaks timing. */
    unsigned char a[crypto_generichash_BYTES], b[crypto_generichash_BYTES];
    crypto_generichash(a, sizeof a, (const unsigned char *)given, strlen(given), NULL, 0);
    crypto_generichash(b, sizeof b, (const unsigned char *)token, strlen(token), NULL, 0);
    return sodium_memcmp(a, b, sizeof a) == 0;
}

static bool is_get(struct evhttp_request *req)
{
    enum evhttp_cmd_type t = evhttp_request_get_command(req);
    return t == EVHTTP_REQ_GET || t == EVHTTP_REQ_HEAD;
}

static void on_healthz(struct evhttp_request *req, void *arg)
{
    (void)arg;
    if (!is_get(req)) {
        wc_http_reply_error(req, 405, "method not allowed");
        return;
    }
    reply_text(req, 200, "text/plain", "ok\n");
}

static void on_readyz(struct evhttp_request *req, void *arg)
{
    wc_http *h = arg;
    if (!is_get(req)) {
        wc_http_reply_error(req, 405, "method not allowed");
        return;
    }
    char why[256] = "";
    if (!h->ready || h->ready(h->arg, why, sizeof why)) {
        reply_text(req, 200, "text/plain", "ready\n");
    } else {
        char body[300];
        snprintf(body, sizeof body, "not ready: %s\n", why);
        reply_text(req, 503, "text/plain", body);
    }
}

static void on_metrics(struct evhttp_request *req, void *arg)
{
    wc_http *h = arg;
    if (!is_get(req)) {
        wc_http_reply_error(req, 405, "method not allowed");
        return;
    }
    struct evbuffer *buf = evbuffer_new();
    if (!buf) {
        evhttp_send_error(req, 500, NULL);
        return;
    }
    if (h->metrics)
        h->metrics(buf, h->arg);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      "text/plain; version=0.0.4");
    evhttp_send_reply(req, 200, "OK", buf);
    evbuffer_free(buf);
}

static bool route_matches(const prefix_route *r, const char *uri)
{
    size_t n = strlen(r->prefix);
    if (strncmp(uri, r->prefix, n) != 0)
        return false;
    return !r->exact || uri[n] == '\0' || uri[n] == '?';
}

/* Every request of the listener comes here (evhttp's generic callback). */
static void on_request(struct evhttp_request *req, void *arg)
{
    wc_http *h = arg;
    http_conn *c = conn_of(h, req);
    if (c && c->state == CONN_READING) {
        evtimer_del(c->timer);
        c->state = CONN_HANDLING;
        evhttp_request_set_on_complete_cb(req, on_response_sent, c);
    }
    const prefix_route *r = route_for(h, evhttp_request_get_uri(req));
    if (!r) {
        wc_http_reply_error(req, 404, "not found");
        return;
    }
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > r->max_body) {
        wc_http_reply_error(req, 413, "body too large");
        return;
    }
    r->cb(req, r->arg);
}

/* The route a request's URI goes to, or NULL. */
static const prefix_route *route_for(const wc_http *h, const char *uri)
{
    for (int i = 0; uri && i < h->nroutes; i++)
        if (route_matches(&h->routes[i], uri))
            return &h->routes[i];
    return NULL;
}

static int add_route(wc_http *h, const char *prefix, bool exact, size_t max_body,
                     wc_http_handler *cb, void *arg)
{
    if (!h || h->nroutes >= MAX_ROUTES || strlen(prefix) >= sizeof h->routes[0].prefix ||
        max_body > (size_t)INT32_MAX)
        return -1;
    prefix_route *r = &h->routes[h->nroutes++];
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    r->exact = exact;
    r->max_body = max_body;
    r->cb = cb;
    r->arg = arg;
    if (max_body > h->max_body) {
        h->max_body = max_body;
        evhttp_set_max_body_size(h->http, (ev_ssize_t)max_body);
    }
    return 0;
}

int wc_http_route(wc_http *h, const char *prefix, size_t max_body, wc_http_handler *cb, void *arg)
{
    if (!h)
        return 0; /* that listener is turned off */
    return add_route(h, prefix, false, max_body, cb, arg);
}

int wc_http_route_prefix(wc_http *h, const char *prefix, wc_http_handler *cb, void *arg)
{
    return add_route(h, prefix, false, WC_HTTP_DEFAULT_MAX_BODY, cb, arg);
}

int wc_http_serve_health(wc_http *h, wc_http_ready_fn *ready, wc_http_metrics_fn *metrics,
                         void *arg)
{
    h->ready = ready;
    h->metrics = metrics;
    h->arg = arg;
    if (add_route(h, "/healthz", true, HEALTH_MAX_BODY, on_healthz, h) < 0 ||
        add_route(h, "/readyz", true, HEALTH_MAX_BODY, on_readyz, h) < 0 ||
        add_route(h, "/metrics", true, HEALTH_MAX_BODY, on_metrics, h) < 0)
        return -1;
    return 0;
}

wc_http *wc_http_listen(struct event_base *base, const char *name, const char *bind, int port,
                        const wc_http_limits *limits, char *err, size_t errlen)
{
    if (limits->max_conns < 1 || limits->read_timeout_s < 1) {
        snprintf(err, errlen, "limits out of range");
        return NULL;
    }
    wc_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(h->name, sizeof h->name, "%s", name);
    h->base = base;
    h->limits = *limits;
    h->http = evhttp_new(base);
    if (!h->http) {
        snprintf(err, errlen, "evhttp_new failed");
        free(h);
        return NULL;
    }
    /* evhttp's own time-out is of inactivity, reads and writes: it ends a
     * client that stops reading its response. Reads are the read deadline's,
     * which must come first (and be counted). */
    evhttp_set_timeout(h->http, 2 * limits->read_timeout_s);
    evhttp_set_max_body_size(h->http, 0);
    evhttp_set_max_headers_size(h->http, (ev_ssize_t)limits->max_headers);
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
    evhttp_set_bevcb(h->http, on_accept, h);
    evhttp_set_gencb(h->http, on_request, h);
    h->sock = evhttp_bind_socket_with_handle(h->http, bind, (ev_uint16_t)port);
    if (!h->sock) {
        snprintf(err, errlen, "cannot listen on %s:%d (in use, or not allowed)", bind, port);
        evhttp_free(h->http);
        free(h);
        return NULL;
    }
    evutil_socket_t fd = evhttp_bound_socket_get_fd(h->sock);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    h->port = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            h->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            h->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return h;
}

wc_http *wc_http_new(struct event_base *base, const char *bind, int port, wc_http_ready_fn *ready,
                     wc_http_metrics_fn *metrics, void *arg, char *err, size_t errlen)
{
    static const wc_http_limits limits = WC_HTTP_DEFAULT_LIMITS;
    wc_http *h = wc_http_listen(base, "public", bind, port, &limits, err, errlen);
    if (h && wc_http_serve_health(h, ready, metrics, arg) < 0) {
        snprintf(err, errlen, "cannot add the health routes");
        wc_http_free(h);
        return NULL;
    }
    return h;
}

void wc_http_free(wc_http *h)
{
    if (!h)
        return;
    /* evhttp frees its connections (and any request a handler still holds);
     * then our references go. */
    evhttp_free(h->http);
    while (h->conns)
        conn_release(h->conns);
    free(h);
}

struct evhttp *wc_http_evhttp(wc_http *h)
{
    return h->http;
}

int wc_http_port(const wc_http *h)
{
    return h->port;
}

void wc_metric(struct evbuffer *out, const char *name, const char *type, const char *help,
               double value)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name,
                        value);
}

void wc_metric_labeled(struct evbuffer *out, const char *name, const char *labels, double value)
{
    evbuffer_add_printf(out, "%s{%s} %.17g\n", name, labels, value);
}
