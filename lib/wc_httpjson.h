/* What the transports that send by one HTTP call with a JSON answer (cloudapi,
 * gowa) share, so that their rules cannot drift apart: the back-off, the
 * result of a call that got no answer or was closed (and when that leaves
 * the send in doubt), the device's HTTP client and settings they share, and
 * the list of a device's sends in flight with the one way each of them ends (wc_httpjson_finish).
 * What a reply means stays in each transport: the providers differ there. */
#ifndef WC_HTTPJSON_H
#define WC_HTTPJSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "wc_httpc.h"
#include "wc_transport.h"

struct event;
struct event_base;

#define WC_HTTPJSON_MAX_BACKOFF_MS 60000

/* The wait before retry number attempt: 1 s, 2 s, 4 s, ... up to 60 s. */
int wc_httpjson_backoff_ms(uint32_t attempt);

/* Sets outcome, error_code and error_message (cut to fit; the caller cleans
 * the result with wc_send_result_clean before it leaves). */
void wc_httpjson_set(wc_send_result *r, wc_send_outcome outcome, const char *code, const char *fmt,
                     ...) __attribute__((format(printf, 4, 5)));

/* Overwrites *r for an exchange that ended without an answer (resp->error
 * set): a retry with back-off, in doubt (outcome_unknown) once the request
 * may have left (resp->maybe_sent), whatever broke afterwards. provider
 * names the other side in the message ("Cloud API", "gateway"). */
void wc_httpjson_no_answer(wc_send_result *r, const wc_httpc_resp *resp, const char *provider,
                           uint32_t attempt);

/* One send in flight. A transport's own send struct begins with it, so a
 * pointer to one is a pointer to the other. */
typedef struct wc_httpjson_send {
    struct wc_httpjson_send *prev, *next; /* the device's sends */
    struct wc_httpjson_send **list;       /* the head of that list */
    wc_send_cb *cb;
    void *arg;
    uint32_t attempt;
    wc_httpc_call *call; /* the request out, if any */
    struct event *later; /* completion without a response (wc_httpjson_finish_later) */
    char *body;          /* request body the send owns, or NULL */
    char *draft;         /* a transport's draft of the body, owned too, or NULL */
    wc_send_result res;  /* what the callback will hear */
    /* The image being read (wc_httpjson_media_get), or NULL. */
    const wc_media_source *media_src;
    wc_media_wait *media_wait;
} wc_httpjson_send;

/* What every device of these transports holds. A transport's own device
 * struct begins with it. */
typedef struct wc_httpjson_device {
    struct event_base *base;
    wc_httpc *http;          /* env->httpc, or one shared per event base */
    bool shared_http;        /* http came from wc_httpc_shared_acquire() */
    bool closing;            /* send() refuses from now on */
    char device_id[64];      /* wacast's device id, for logs */
    long timeout_ms;         /* per request */
    wc_httpjson_send *sends; /* not yet called back */
} wc_httpjson_device;

/* settings.timeout_ms: dflt when absent, -1 when not an integer. */
long wc_httpjson_timeout_setting(json_t *settings, long dflt);

/* The length of base_url without its trailing '/'s. */
size_t wc_httpjson_url_len(const char *base_url);

/* Allocates a zeroed device of size bytes (at least
 * sizeof(wc_httpjson_device)) on env->base, with its id, request time-out
 * and HTTP client: env->httpc when the sender gives one, else the one shared
 * on the event base. NULL when out of memory. */
void *wc_httpjson_device_new(size_t size, const wc_transport_env *env, const char *device_id,
                             long timeout_ms);

/* Marks the device closing, ends every send in flight with
 * wc_httpjson_close_send and gives back the HTTP client. The transport frees
 * its own fields and the device. NULL is fine. */
void wc_httpjson_device_close(wc_httpjson_device *dev);

/* Allocates a zeroed send of size bytes (at least sizeof(wc_httpjson_send))
 * for req, cb and arg, and links it first on dev's sends. NULL when out of
 * memory (nothing linked). */
void *wc_httpjson_send_new(size_t size, wc_httpjson_device *dev, const wc_send_request *req,
                           wc_send_cb *cb, void *arg);

/* Starts reading the prepared image sha256 for s from src; cb gets s as its
 * argument and must set s->media_wait to NULL first thing. A send that ends
 * meanwhile (closed, dropped) cancels the read. -1 with s->res set (nothing
 * went out) when there is no source or the read cannot start. */
int wc_httpjson_media_get(wc_httpjson_send *s, const wc_media_source *src, const char *sha256,
                          wc_media_got_cb *cb) __attribute__((warn_unused_result));

/* Unlinks and frees a send without calling back (send() refusing after
 * wc_httpjson_send_new). */
void wc_httpjson_send_drop(wc_httpjson_send *s);

/* Unlinks s, cleans s->res, frees s and only then calls back, once. */
void wc_httpjson_finish(wc_httpjson_send *s);

/* wc_httpjson_finish on the next loop turn, never from inside send().
 * -1 only when libevent cannot schedule it. */
int wc_httpjson_finish_later(wc_httpjson_send *s) __attribute__((warn_unused_result));

/* Ends a send because its device is closing: cancels its request and calls
 * back WC_SEND_RETRY "closed", in doubt when the request had started going
 * out. Whatever was decided before, the message was not confirmed sent, so
 * it goes back to the queue. */
void wc_httpjson_close_send(wc_httpjson_send *s);

#endif
