/* An HTTP client on the daemon's event loop: libcurl's multi interface driven
 * by libevent (curl_multi_socket_action with the socket and timer callbacks
 * wired to events, the "hiperfifo" pattern). Thousands of requests can be in
 * flight on one loop; nothing blocks and no thread is made per request.
 *
 * Contract:
 * - wc_httpc_request() copies everything in the request (URL, headers, body,
 *   form, credentials) before it returns; the caller may free them at once.
 * - The callback runs exactly once per started request, always later from the
 *   loop, never from inside wc_httpc_request(). It gets the HTTP status (any
 *   status, 500 included, is a completed exchange with error == NULL), or an
 *   error string when no complete response arrived (connect failure, timeout,
 *   response larger than the cap, "cancelled").
 * - The response body is owned by the client and valid only during the
 *   callback. It is NUL-terminated for convenience.
 * - Every request has a timeout (timeout_ms > 0 is mandatory) and a connect
 *   timeout.
 * - Inside a callback it is fine to start new requests, cancel others, or
 *   free the client (the free is finished once the loop turn is over).
 * - wc_httpc_free() calls every in-flight callback with error "cancelled". */
#ifndef WC_HTTPC_H
#define WC_HTTPC_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;

typedef struct wc_httpc wc_httpc;
typedef struct wc_httpc_call wc_httpc_call;
typedef struct wc_httpc_form wc_httpc_form;

/* Responses larger than this fail with an error unless the request says otherwise. */
#define WC_HTTPC_MAX_RESPONSE (1024 * 1024)
/* Connect timeout when the request gives none (capped by its timeout). */
#define WC_HTTPC_CONNECT_TIMEOUT_MS 10000

/* Asked with every address the request is about to connect to (the first
 * host and each redirect's, after DNS): false refuses it, with a reason in
 * why, and the request fails with address_refused set. */
struct sockaddr;
typedef bool wc_httpc_addr_check(void *arg, const struct sockaddr *addr, char *why, size_t whylen);

typedef struct wc_httpc_req {
    const char *method;         /* NULL: POST when a body or form is set, else GET */
    const char *url;            /* http:// or https:// only */
    const char *const *headers; /* NULL-terminated "Name: value" lines; may be NULL */
    const void *body;           /* request body (copied); may be NULL */
    size_t body_len;
    const wc_httpc_form *form; /* multipart/form-data body instead of body (copied) */
    long timeout_ms;           /* whole exchange; must be > 0 */
    long connect_timeout_ms;   /* 0: WC_HTTPC_CONNECT_TIMEOUT_MS */
    const char *username;      /* basic auth when not NULL */
    const char *password;
    size_t max_response; /* 0: WC_HTTPC_MAX_RESPONSE */
    /* > 0: follow up to this many http(s) redirects (0: none followed; a 3xx
     * is then the response). */
    long max_redirects;
    /* When set: every connection's address is checked first, and no proxy
     * is used (so the address checked is the one reached). */
    wc_httpc_addr_check *address_ok;
    void *address_arg;
} wc_httpc_req;

typedef struct wc_httpc_resp {
    long status;      /* HTTP status; 0 when no response arrived */
    const char *body; /* never NULL; "" when empty */
    size_t body_len;
    const char *content_type; /* NULL when the server sent none */
    const char *error;        /* NULL for a complete exchange; otherwise why */
    bool timed_out;           /* error is a timeout (connect or whole request) */
    bool too_large;           /* error is the response cap */
    bool too_many_redirects;  /* error is max_redirects */
    bool address_refused;     /* error is the request's address_ok saying no */
    /* The request may have reached the server: the connection (and any TLS
     * handshake) was up and curl had begun writing the request. With an error
     * this means the server may have acted on it without us hearing the
     * answer (reset or close after sending, empty or cut reply, time-out
     * while waiting, "cancelled" mid-way). false proves the server never saw
     * it: DNS failure, connection refused, connect time-out, TLS handshake
     * failure, cancelled before connecting. */
    bool maybe_sent;
} wc_httpc_resp;

typedef void wc_httpc_cb(void *arg, const wc_httpc_resp *resp);

/* A client on base. max_total_connections caps open connections across all
 * hosts (0: no cap); requests over the cap wait inside curl. NULL on failure. */
wc_httpc *wc_httpc_new(struct event_base *base, long max_total_connections);
/* Cancels in-flight requests (each callback gets error "cancelled"), then
 * frees. NULL is fine. */
void wc_httpc_free(wc_httpc *c);

/* Starts a request. Returns 0 (the callback will run once, later) or -1 when
 * it could not start (bad request, out of memory, client being freed; the
 * callback will not run). */
int wc_httpc_request(wc_httpc *c, const wc_httpc_req *req, wc_httpc_cb *cb, void *arg)
    __attribute__((warn_unused_result));
/* Same, but returns a handle for wc_httpc_cancel(), or NULL when it could
 * not start. The handle is valid until its callback starts or it is cancelled. */
wc_httpc_call *wc_httpc_start(wc_httpc *c, const wc_httpc_req *req, wc_httpc_cb *cb, void *arg)
    __attribute__((warn_unused_result));
/* Aborts a request; its callback will not run. Returns what maybe_sent in
 * its response would have said: true when the request may already have
 * reached the server, so its effect is unknown. */
bool wc_httpc_cancel(wc_httpc_call *call);
/* Requests started and not yet called back. */
size_t wc_httpc_inflight(const wc_httpc *c);

/* A client shared by everything on one event base (transports of many
 * devices), made on first use and freed when the last user releases it.
 * Single-threaded: call from the loop's thread. NULL on failure. */
wc_httpc *wc_httpc_shared_acquire(struct event_base *base);
void wc_httpc_shared_release(wc_httpc *c);

/* multipart/form-data bodies. Fields are copied in; the form can be freed
 * once the request that uses it has started. */
wc_httpc_form *wc_httpc_form_new(void);
int wc_httpc_form_add(wc_httpc_form *f, const char *name, const char *value)
    __attribute__((warn_unused_result));
/* A file part from memory: filename and content_type may be NULL. */
int wc_httpc_form_add_file(wc_httpc_form *f, const char *name, const char *filename,
                           const char *content_type, const void *data, size_t len)
    __attribute__((warn_unused_result));
void wc_httpc_form_free(wc_httpc_form *f);

#endif
