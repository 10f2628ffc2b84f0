/* evhttp server for health, readiness and metrics; see wc_http.h. */
#include "wc_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <sodium.h>

#include "wc_log.h"

typedef struct prefix_route {
    char prefix[64];
    wc_http_handler *cb;
    void *arg;
} prefix_route;

struct wc_http {
    prefix_route routes[8];
    int nroutes;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    wc_http_ready_fn *ready;
    wc_http_metrics_fn *metrics;
    void *arg;
    int port;
};

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

static void on_other(struct evhttp_request *req, void *arg)
{
    wc_http *h = arg;
    const char *uri = evhttp_request_get_uri(req);
    for (int i = 0; uri && i < h->nroutes; i++) {
        if (strncmp(uri, h->routes[i].prefix, strlen(h->routes[i].prefix)) == 0) {
            h->routes[i].cb(req, h->routes[i].arg);
            return;
        }
    }
    wc_http_reply_error(req, 404, "not found");
}

int wc_http_route_prefix(wc_http *h, const char *prefix, wc_http_handler *cb, void *arg)
{
    if (!h || h->nroutes >= (int)(sizeof h->routes / sizeof h->routes[0]) ||
        strlen(prefix) >= sizeof h->routes[0].prefix)
        return -1;
    prefix_route *r = &h->routes[h->nroutes++];
    snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    r->cb = cb;
    r->arg = arg;
    return 0;
}

wc_http *wc_http_new(struct event_base *base, const char *bind, int port, wc_http_ready_fn *ready,
                     wc_http_metrics_fn *metrics, void *arg, char *err, size_t errlen)
{
    wc_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->ready = ready;
    h->metrics = metrics;
    h->arg = arg;
    h->http = evhttp_new(base);
    if (!h->http) {
        snprintf(err, errlen, "evhttp_new failed");
        free(h);
        return NULL;
    }
    evhttp_set_timeout(h->http, 30);
    /* Above the webhook limit (1 MiB), so the handlers answer and count 413s. */
    evhttp_set_max_body_size(h->http, 4 << 20);
    evhttp_set_max_headers_size(h->http, 64 << 10);
    evhttp_set_allowed_methods(h->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
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
    evhttp_set_cb(h->http, "/healthz", on_healthz, h);
    evhttp_set_cb(h->http, "/readyz", on_readyz, h);
    evhttp_set_cb(h->http, "/metrics", on_metrics, h);
    evhttp_set_gencb(h->http, on_other, h);
    return h;
}

void wc_http_free(wc_http *h)
{
    if (!h)
        return;
    evhttp_free(h->http);
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
