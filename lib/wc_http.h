/* The small HTTP server every daemon runs on its event loop (evhttp):
 * GET /healthz (the process is alive), GET /readyz (its dependencies answer),
 * GET /metrics (Prometheus text format). Daemons add routes of their own
 * (admin endpoints, webhooks) on the evhttp returned by wc_http_evhttp(). */
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

/* Returns true when ready; otherwise writes a short reason into why. */
typedef bool wc_http_ready_fn(void *arg, char *why, size_t whylen);
/* Appends the daemon's metrics in Prometheus text format. */
typedef void wc_http_metrics_fn(struct evbuffer *out, void *arg);

/* Listens on bind:port (port 0 picks a free one, see wc_http_port()).
 * Returns NULL with a message in err when the port cannot be bound. */
wc_http *wc_http_new(struct event_base *base, const char *bind, int port, wc_http_ready_fn *ready,
                     wc_http_metrics_fn *metrics, void *arg, char *err, size_t errlen);
void wc_http_free(wc_http *h);
struct evhttp *wc_http_evhttp(wc_http *h);
int wc_http_port(const wc_http *h);

/* Routes every request whose path starts with prefix (e.g. "/admin/") to cb;
 * up to 8 prefixes, checked in the order added. */
typedef void wc_http_handler(struct evhttp_request *req, void *arg);
int wc_http_route_prefix(wc_http *h, const char *prefix, wc_http_handler *cb, void *arg)
    __attribute__((warn_unused_result));

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
