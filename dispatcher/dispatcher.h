/* The dispatcher's shared state: router (dispatcher.c), status sink
 * (sink.c), status events from webhooks and the sim (events.c), operator
 * controls (control.c). */
#ifndef DISPATCHER_H
#define DISPATCHER_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/util.h>
#include <jansson.h>

#include "wacast.pb-c.h"
#include "wc_daemon.h"
#include "wc_map.h"
#include "wc_media.h"
#include "wc_redis.h"

struct evbuffer;

typedef struct dispatcher_cfg {
    wc_common_cfg c;
    long route_batch;
    long sink_batch;
    long outbox_max;
    long displaced_max;
    long parked_max;
    long parked_user_max;
    long refresh_ms;
    long online_grace_ms;
    long claim_idle_ms;
    long consumer_gone_ms;
    long idempotency_ttl_s;
    char *admin_token;
    char *meta_app_secret;
    char *meta_verify_token;
    char *gowa_webhook_secret;
    char *opt_out_words;
    long cancel_grace_s;
    long reason_prune_ms;
    char *provider_hosts;
    wc_media_cfg media; /* POST /api/media (media_api.c) */
} dispatcher_cfg;

#define DISPATCHER_METRICS(X)                                                                      \
    X(jobs_routed, "jobs appended to a device outbox")                                             \
    X(jobs_parked, "times a job had to wait for a device")                                         \
    X(jobs_invalid, "jobs that could not be decoded")                                              \
    X(results_written, "status changes written to PostgreSQL")                                     \
    X(results_ignored, "results that would have moved a status backwards, or were repeats")        \
    X(campaigns_finished, "campaigns moved to finished or failed")                                 \
    X(entries_claimed, "stream entries taken over from dead consumers")                            \
    X(redis_errors, "Redis commands that failed")                                                  \
    X(pg_errors, "PostgreSQL statements that failed")                                              \
    X(jobs_duplicate, "jobs dropped because their message's outcome is known already")             \
    X(webhooks_accepted, "webhook bodies accepted")                                                \
    X(webhooks_rejected, "webhook requests refused (signature, size, format)")                     \
    X(status_events, "provider status events turned into results")                                 \
    X(opt_outs, "leads opted out by an inbound reply")                                             \
    X(opt_outs_unmatched, "opt-out replies to a number that is none of our devices")               \
    X(sequence_replies_stopped, "sequence contacts stopped by a reply (stop_on_reply)")            \
    X(webhooks_unstored, "webhooks answered 503 because what they carry could not be stored")      \
    X(sim_callbacks, "simulated provider webhooks delivered")                                      \
    X(paused_requeued, "messages of resumed campaigns put back on the jobs stream")                \
    X(admin_requests, "admin API requests served")                                                 \
    X(waiting_reasons, "times a campaign was marked waiting for a healthy device")                 \
    X(results_dead_lettered, "results PostgreSQL refused, kept in the dead-letter stream")         \
    X(results_unwritable, "dead-lettered results whose safe form was refused too")                 \
    X(jobs_spilled, "jobs let go from memory (still pending) because their user had too many"      \
                    " waiting")                                                                    \
    X(jobs_already_held, "pending entries read again while held, not taken twice")                 \
    X(consumers_removed, "consumers of gone dispatchers removed from the groups")

typedef struct dispatcher_metrics {
#define X(name, help) uint64_t name;
    DISPATCHER_METRICS(X)
#undef X
} dispatcher_metrics;

/* The online devices of one user, for round-robin. */
typedef struct user_devices {
    char **ids;
    size_t n;
    size_t next;
} user_devices;

typedef struct route_job {
    struct route_job *next;
    char entry_id[48];
    Wacast__Job *job;
    uint8_t *payload;
    size_t payload_len;
    size_t tried;   /* devices tried in this round */
    bool duplicate; /* its message is claimed or done: acknowledge, do not route */
    char device[40];
    bool new_lane;       /* the append opened a lane (a campaign new to the device) */
    char claimed_by[40]; /* the device whose claim (a send in doubt) the message carries */
    bool claimed_tried;  /* that device was tried in this round */
} route_job;

typedef struct route_batch route_batch;

typedef struct dispatcher {
    wc_daemon d;
    dispatcher_cfg cfg;
    dispatcher_metrics m;
    wc_redis *jobs_rd, *results_rd;
    wc_map users;   /* user_id -> user_devices */
    wc_map online;  /* device_id -> (void *)1 */
    wc_map numbers; /* a Cloud API phone_number_id -> its online device's id (owned) */
    bool devices_loaded, refreshing;
    /* router */
    bool jobs_reading, jobs_pel, jobs_read_pel; /* read_pel: the read in flight is of our PEL */
    char jobs_pel_cursor[48]; /* a read of our pending list goes on after this id */
    char jobs_claim_cursor[48], results_claim_cursor[48]; /* XAUTOCLAIM goes on from here */
    wc_map held;           /* entry id -> route_job: every job parked, in backlog or routing */
    wc_map parked_by_user; /* user id -> number of its parked jobs */
    wc_map spilled_users;  /* user ids whose jobs were let go from memory (park()) */
    route_job *parked;
    route_job *backlog; /* jobs read while a batch was routing: routed next */
    size_t nparked;
    bool parked_due; /* the parked jobs' retry came while a batch was routing */
    route_batch *routing;
    wc_map waiting;        /* campaign id -> last time (mono ms) we wrote its "waiting" reason */
    wc_map clean;          /* campaign ids whose "waiting" reason we cleared (or never set) */
    unsigned claim_rounds; /* some of them also remove consumers that are gone */
    int64_t reasons_pruned_ms; /* mono ms: the last time waiting/clean were pruned */
    bool waiting_busy, window_busy;
    struct event *window_timer;
    /* sink */
    bool results_reading, results_pel, results_read_pel, sink_writing;
    int64_t sink_retry_at_us; /* mono: a batch that failed is read again from then */
    struct event *refresh_timer, *parked_timer, *claim_timer, *sweep_timer, *read_timer, *sim_timer,
        *paused_timer;
    bool sim_busy, paused_busy, cancel_busy;
    struct wc_httpc *httpc;    /* gateway calls of the admin API (QR pairing) */
    struct wc_seal_keys *seal; /* to open device credentials; NULL without WACAST_SECRET_KEY */
    wc_redis *sim_rd;          /* the sim provider's Redis (WACAST_SIM_REDIS_URL), or NULL */
    struct wc_image_worker *media_worker; /* POST /api/media: uploads being prepared... */
    struct media_upload *media_preparing; /* ...and their requests (media_api.c) */
} dispatcher;

/* The writes one webhook body causes (events.c): done() runs once all of
 * them have answered, with failed set if any did not succeed, and the op is
 * freed after it. */
typedef struct webhook_op {
    dispatcher *ds;
    void (*done)(struct webhook_op *op);
    void *ctx;   /* done()'s: the HTTP request, the sim's round */
    int pending; /* writes not answered yet */
    bool issued; /* every write has been issued */
    bool failed; /* a write failed or could not be issued */
    /* A device's own webhook: its events concern that device only (statuses
     * are matched to its messages, replies opt out its user's leads). */
    char device[40];
} webhook_op;
webhook_op *webhook_op_new(dispatcher *ds, void (*done)(webhook_op *op), void *ctx);
/* Appends a status result for the sink (and, with a message id, records the
 * outcome in the idempotency marker), counted on op. */
void dispatcher_status_result(dispatcher *ds, const Wacast__Result *res, webhook_op *op);
/* Handles one provider webhook body already authenticated: statuses become
 * results, inbound opt-out words opt the receiving user's lead out; op's
 * done() runs when all of it is durable (or failed). Returns 0, or -1 with
 * err (the body is malformed: answer 400; op is the caller's to free). */
int dispatcher_webhook_body(dispatcher *ds, int provider, const char *body, size_t len,
                            webhook_op *op, char *err, size_t errlen);
/* Shared by the router and the sink: counts a failed reply; XACK + XDEL of
 * the space-separated ids (-1 when not sent); the consumer groups. */
bool dispatcher_reply_ok(dispatcher *ds, redisReply *r);
int dispatcher_ack_and_delete(dispatcher *ds, const char *stream, const char *group,
                              struct evbuffer *ids, wc_redis_cb *cb);
void dispatcher_create_groups(dispatcher *ds);
void dispatcher_on_void(wc_redis *r, redisReply *reply, void *arg);
/* Sends head... followed by the space-separated ids in ids. */
int dispatcher_command_with_ids(wc_redis *r, wc_redis_cb *cb, void *arg, const char *const *head,
                                int nhead, struct evbuffer *ids);
/* The router (router.c): reads new jobs (no-op while a read or a batch is
 * in flight); reads its pending list again from the start; keeps its parked
 * entries from looking abandoned; frees a job; its timers. */
void read_jobs(dispatcher *ds);
void rescan_pending(dispatcher *ds);
void touch_parked(dispatcher *ds);
void free_route_job(dispatcher *ds, route_job *j);
void on_parked_timer(evutil_socket_t fd, short what, void *arg);
void on_window_timer(evutil_socket_t fd, short what, void *arg);
/* The sink: reads the results stream (no-op while a read or a write is in
 * flight); finishes campaigns (a PostgreSQL array of ids). */
void sink_read(dispatcher *ds);
void sink_finish_campaigns(dispatcher *ds, const char *uuid_array);
void sink_init(dispatcher *ds);
void sink_free(dispatcher *ds);
/* A device's sealed credentials (hex of the bytea) opened for that device
 * into a JSON object, or NULL with why (credentials.c). */
json_t *dispatcher_open_credentials(dispatcher *ds, const char *device_id, const char *hex,
                                    char *why, size_t whylen);
/* Timers and HTTP routes of events.c and control.c. */
void events_init(dispatcher *ds);
void control_init(dispatcher *ds);
void events_free(dispatcher *ds);
void control_free(dispatcher *ds);
/* Every admin route starts here (control.c): counts the request, answers
 * 403 when no admin token is set and 401 without the right bearer token
 * (compared in constant time), and says whether to go on. */
struct evhttp_request;
bool dispatcher_admin_authorized(dispatcher *ds, struct evhttp_request *req);
/* POST /api/media on the admin listener (media_api.c): routed when that
 * listener is on; the free waits for uploads being prepared. */
void media_api_init(dispatcher *ds);
void media_api_free(dispatcher *ds);

#endif
