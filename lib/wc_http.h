/* The small HTTP servers every daemon runs on its event loop (evhttp): one
 * listener per audience, each with its own limits. The public listener serves
 * GET /healthz (the process is alive), GET /readyz (its dependencies answer),
 * GET /metrics (Prometheus text format) and public routes (webhooks); an
 * admin listener (loopback by default) serves the operator's routes.
 *
 * Limits, per listener (struct wc_http_limits):
 * - max_conns: connections open at once. One past it is answered 503 and
 *   closed on the next loop turn, and counted; it never reaches a handler.
 * - read_timeout_s: a whole request (request line, headers and body) must
 *   arrive within this many seconds of the connection opening, or of the
 *   previous response on a kept-alive connection. It is a deadline, not an
 *   inactivity timer, so a client trickling a byte at a time is cut as well.
 *   Once a request reaches its handler the deadline stops: a handler may take
 *   as long as it needs (a PostgreSQL query) before it answers.
 * - max_headers: bytes of request line and headers.
 * - Bodies: each route has its own cap (wc_http_route()). A body over it is
 *   answered 413 by evhttp as soon as its Content-Length (or its chunks) say
 *   so when the cap is the listener's largest; otherwise after at most that
 *   largest cap is read. See wc_http.c for why (libevent 2.1 has no hook
 *   between the headers and the body).
 *
 * Ownership: a handler gets the request and must answer it exactly once
 * (now or later); the wc_http must outlive every request a handler holds, so
 * free what can still answer (the PostgreSQL pool) before wc_http_free(). */
#ifndef WC_HTTP_H
#define WC_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct evhttp;
struct evhttp_request;
struct evbuffer;

typedef struct wc_http wc_http;

typedef struct wc_http_limits {
    int max_conns;      /* >= 1 */
    int read_timeout_s; /* >= 1 */
    size_t max_headers; /* bytes */
} wc_http_limits;

/* What wc_http_new() uses. */
#define WC_HTTP_DEFAULT_LIMITS                                                                     \
    {                                                                                              \
        512, 10, 64 << 10                                                                          \
    }
/* The body cap of routes added with wc_http_route_prefix(). */
#define WC_HTTP_DEFAULT_MAX_BODY (64 << 10)

/* Returns true when ready; otherwise writes a short reason into why. */
typedef bool wc_http_ready_fn(void *arg, char *why, size_t whylen);
/* Appends the daemon's metrics in Prometheus text format. */
typedef void wc_http_metrics_fn(struct evbuffer *out, void *arg);

/* A listener on bind:port (port 0 picks a free one, see wc_http_port()) with
 * no routes; name labels its metrics ("public", "admin"). Returns NULL with a
 * message in err when the port cannot be bound. */
wc_http *wc_http_listen(struct event_base *base, const char *name, const char *bind, int port,
                        const wc_http_limits *limits, char *err, size_t errlen);
/* Adds GET /healthz, /readyz and /metrics (ready and metrics may be NULL). */
int wc_http_serve_health(wc_http *h, wc_http_ready_fn *ready, wc_http_metrics_fn *metrics,
                         void *arg) __attribute__((warn_unused_result));
/* wc_http_listen("public", default limits) + wc_http_serve_health(). */
wc_http *wc_http_new(struct event_base *base, const char *bind, int port, wc_http_ready_fn *ready,
                     wc_http_metrics_fn *metrics, void *arg, char *err, size_t errlen);
/* Closes the listener and every connection. NULL is a no-op. */
void wc_http_free(wc_http *h);
/* The evhttp underneath, for settings wc_http does not offer. Add handlers
 * with wc_http_route(), not evhttp_set_cb(): a handler evhttp calls directly
 * is outside the read deadline's bookkeeping (its connection is cut at the
 * deadline even while the handler works) and outside the route body caps. */
struct evhttp *wc_http_evhttp(wc_http *h);
int wc_http_port(const wc_http *h);

/* Routes every request whose path starts with prefix (e.g. "/admin/") to cb;
 * a body longer than max_body bytes is answered 413 before cb. Up to 16
 * routes, checked in the order added. h NULL (that listener is turned off):
 * nothing to add, returns 0. */
typedef void wc_http_handler(struct evhttp_request *req, void *arg);
int wc_http_route(wc_http *h, const char *prefix, size_t max_body, wc_http_handler *cb, void *arg)
    __attribute__((warn_unused_result));
/* wc_http_route() with WC_HTTP_DEFAULT_MAX_BODY. */
int wc_http_route_prefix(wc_http *h, const char *prefix, wc_http_handler *cb, void *arg)
    __attribute__((warn_unused_result));

/* The listeners' own counters (connections open, refused, cut by the read
 * deadline), one sample per listener labelled with its name. NULLs skipped. */
void wc_http_write_metrics(wc_http *const *listeners, size_t n, struct evbuffer *out);

/* Replies with a JSON body {"error": message} and the status code. */
void wc_http_reply_error(struct evhttp_request *req, int code, const char *message);
/* Replies with a JSON body as given. */
void wc_http_reply_json(struct evhttp_request *req, int code, const char *json);
/* True when the request carries "Authorization: Bearer <token>" matching token
 * (compared in constant time). An empty configured token denies everything. */
bool wc_http_bearer_ok(struct evhttp_request *req, const char *token);

/* Prometheus helpers. */
void wc_metric(struct evbuffer *out, const char *name, const char *type, const char *help,
               double value);
/* One sample with labels, e.g. labels = "status=\"online\"" (no HELP/TYPE line). */
void wc_metric_labeled(struct evbuffer *out, const char *name, const char *labels, double value);

#endif
