/* How a device sends: a small vtable per platform (user_devices.platform).
 * The sender opens one transport instance per device it owns, calls send()
 * for one message at a time, and closes it when the device leaves.
 *
 * Contract of send(): returns 0 when the send started; the callback then runs
 * exactly once, later (never from inside send()), with the outcome. Returns
 * -1 when it could not start (the callback is not called).
 * close() may be called with a send in flight: the transport must then call
 * the callback with WC_SEND_RETRY ("closed") before close() returns, or never
 * touch the callback again; that result has outcome_unknown set when the
 * request may already have reached the provider.
 *
 * Every text in a result (error_code, error_message, provider_id,
 * device_reason) is valid UTF-8 without NUL, whatever the provider sent. */
#ifndef WC_TRANSPORT_H
#define WC_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct event_base;
struct wc_redis;
struct wc_httpc;

typedef enum {
    WC_SEND_OK = 0, /* accepted by the provider: status 'sent' */
    WC_SEND_RETRY,  /* transient: try again later (timeout, 5xx, throttled) */
    WC_SEND_FAIL,   /* permanent for this message: status 'failed' */
} wc_send_outcome;

/* What the result says about the device itself, beyond this one message. */
typedef enum {
    WC_DEVICE_OK = 0,     /* nothing to do */
    WC_DEVICE_PAUSE,      /* provider restricted the sender (spam/policy): stop sending from it
                             until an operator resumes it */
    WC_DEVICE_OFFLINE,    /* the device cannot send (credentials rejected, unreachable): take it
                             offline; the message was not consumed */
    WC_DEVICE_LOGGED_OUT, /* the account was logged out of the device: 'logged_out' until it is
                             paired again; the message was not consumed */
} wc_device_action;

typedef struct wc_send_result {
    wc_send_outcome outcome;
    char error_code[48];     /* machine readable (provider codes as decimal, e.g. "131050") */
    char error_message[256]; /* human readable */
    char provider_id[128];   /* provider's message id on success */
    int retry_after_ms;      /* hint for WC_SEND_RETRY (0: caller's back-off) */
    int device_action;       /* wc_device_action */
    bool recipient_only;     /* RETRY concerns only this recipient (a per-pair limit): the
                                device goes on with its other messages meanwhile */
    bool outcome_unknown;    /* RETRY where the message may have gone out (reply lost, time-out
                                after the request left): resend only once the provider's status
                                says it did not */
    char device_reason[128]; /* why, when device_action != WC_DEVICE_OK */
} wc_send_result;

typedef struct wc_send_request {
    int64_t message_id;
    const char *campaign_id;
    const char *device_id;
    const char *recipient; /* E.164 */
    const char *content;
    const char *media_url; /* NULL or "" when none */
    uint32_t attempt;
} wc_send_request;

typedef void wc_send_cb(void *arg, const wc_send_result *res);

/* A prepared image (media:<sha256> in a message's media_url) is read by
 * sha256 through a media source the sender gives its transports: the bytes
 * come asynchronously, never from inside get(). */
typedef struct wc_media_wait wc_media_wait;

typedef struct wc_media_got {
    const unsigned char *bytes; /* the JPEG, valid during the callback only; NULL on error */
    size_t len;
    const char *error_code;    /* NULL on success; else media_not_found, media_unreadable,
                                  media_unavailable */
    const char *error_message; /* why, for the message's status_reason */
    bool transient;            /* the error may pass (the database did not answer): retry */
} wc_media_got;

typedef void wc_media_got_cb(void *arg, const wc_media_got *got);

typedef struct wc_media_source {
    void *ctx;
    /* Starts reading the image; cb runs once, later, unless the wait is
     * cancelled first. NULL when it cannot start (out of memory). */
    wc_media_wait *(*get)(void *ctx, const char *sha256, wc_media_got_cb *cb, void *arg);
    /* Abandons a wait whose callback has not run: it will not run. */
    void (*cancel)(wc_media_wait *w);
} wc_media_source;

#define WC_MEDIA_REF_PREFIX "media:"
#define WC_MEDIA_SHA_LEN 64

/* True when media_url is "media:" and 64 hex digits: a prepared image of
 * ours (a Meta media id is digits, never 64 of them); its lower-case sha256
 * goes to sha. */
bool wc_media_ref(const char *media_url, char sha[WC_MEDIA_SHA_LEN + 1]);

/* The result of a send whose image could not be read: failed for good, or a
 * retry when the error may pass; nothing went out either way. */
void wc_media_result(wc_send_result *r, const wc_media_got *got);

/* What a transport gets from the sender. */
typedef struct wc_transport_env {
    struct event_base *base;
    struct wc_redis *redis;
    const char *instance_id; /* the sender's name, recorded by the sim */
    /* HTTP client shared by the transports that call out (cloudapi, gowa).
     * NULL: each such transport shares one client per event base by itself. */
    struct wc_httpc *httpc;
    /* WACAST_PROVIDER_HOSTS (wc_origin.h): the base URLs a device's
     * settings.base_url may name; NULL means the default list. */
    const char *provider_hosts;
    /* sim defaults, overridable per device in user_devices.settings */
    int sim_latency_ms;
    double sim_failure_rate;
    long sim_record_maxlen;
    /* Status webhooks the sim's "provider" sends after accepting a message:
     * a comma list of sent, delivered, read ("" for none), the first one
     * sim_callback_delay_ms after the send and each next one as long again. */
    const char *sim_callbacks;
    int sim_callback_delay_ms;
    /* Where the sim's provider side lives (its record and pending webhooks):
     * a Redis other than the engine's (WACAST_SIM_REDIS_URL), so that the
     * engine's Redis losing data does not make the provider forget what it
     * sent. NULL: the engine's Redis. */
    struct wc_redis *sim_redis;
    /* Where prepared images (media:<sha256>) are read; NULL: none (such a
     * send fails with media_unavailable). */
    const wc_media_source *media;
    /* cloudapi: how long an uploaded media id is reused (seconds; Meta keeps
     * uploads 30 days); 0: the transport's default. */
    long media_id_ttl_s;
} wc_transport_env;

typedef struct wc_transport_ops {
    const char *platform;
    /* Opens a device. settings is user_devices.settings (may be NULL);
     * credentials is the device's unsealed credentials JSON object (may be
     * NULL; never log it). Returns the instance, or NULL with a reason in err
     * (the device goes offline with that reason). */
    void *(*open)(const wc_transport_env *env, const char *device_id, json_t *settings,
                  json_t *credentials, char *err, size_t errlen);
    int (*send)(void *inst, const wc_send_request *req, wc_send_cb *cb, void *arg);
    void (*close)(void *inst);
} wc_transport_ops;

/* A provider's message id that fits whole in provider_id and is a token
 * (wc_text_is_token): one we can store and match status callbacks by. */
bool wc_send_id_usable(const char *id, size_t len);

/* Makes every text of a result safe to store and log, once, after every cut
 * (they hold words from replies nobody vouches for, cut by snprintf wherever
 * it ran out of room, and PostgreSQL refuses a whole status batch for one
 * invalid byte): NUL-terminated in their arrays, valid UTF-8, NUL-free; a
 * provider id that is not usable is dropped. */
void wc_send_result_clean(wc_send_result *r);

/* The transport for a platform name, or NULL when unknown. */
const wc_transport_ops *wc_transport_find(const char *platform);

extern const wc_transport_ops wc_transport_sim, wc_transport_cloudapi, wc_transport_gowa;

/* Redis key of the sim's record of every send (a stream; fields: msg, campaign,
 * device, to, text, sender, ts_us, ok, and media and media_size (sha256 and
 * bytes) for a prepared image). */
#define WC_SIM_RECORD_KEY "wacast:sim:sends"

/* The sim's provider side lives in Redis (env->sim_redis), not in the sender,
 * so it outlives a sender that dies mid-send, as a real provider would, and
 * in a Redis of its own it outlives the engine's Redis losing data: the record of a send
 * and its status webhooks (Meta-shaped JSON bodies, in the sorted set
 * WC_KEY_SIM_CALLBACKS scored by due time in ms) are written in one MULTI.
 * The dispatcher delivers due webhooks through its webhook code path. */

#endif
