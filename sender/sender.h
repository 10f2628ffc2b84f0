/* State shared by the sender's files: its settings, metrics, the device and
 * fleet structs, and the functions one file calls in another (grouped by the
 * file that defines them). Nothing else is global. */
#ifndef WACAST_SENDER_H
#define WACAST_SENDER_H

#include <stdbool.h>
#include <stdint.h>

#include "wacast.pb-c.h"
#include "wc_daemon.h"
#include "wc_epoch.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_map.h"
#include "wc_media_cache.h"
#include "wc_origin.h"
#include "wc_seal.h"
#include "wc_transport.h"

typedef struct sender_cfg {
    wc_common_cfg c;
    long lease_ttl_ms;
    long refresh_ms;
    long idle_poll_ms;
    long max_attempts;
    long retry_base_ms;
    long idempotency_ttl_s;
    long stop_timeout_ms;
    long sim_latency_ms;
    double sim_failure_rate;
    long sim_record_maxlen;
    char *sim_callbacks;
    long sim_callback_delay_ms;
    long in_doubt_ms;
    long holds_ms;
    long dead_maxlen;
    long blocked_retry_s;
    long breaker_failures;
    long breaker_rest_ms;
    long breaker_rest_max_ms;
    char *provider_hosts;
    char *sim_redis_url;
    long fence_ms;
    long media_cache_bytes;
    long media_id_ttl_s;
} sender_cfg;

typedef struct fleet fleet;

#define SENDER_METRICS(X)                                                                          \
    X(sent, "messages accepted by a transport")                                                    \
    X(failed, "messages that failed for good")                                                     \
    X(retried, "sends that will be retried")                                                       \
    X(duplicates_dropped, "outbox entries dropped because another device owns the message")        \
    X(replayed, "outcomes re-reported from the idempotency marker")                                \
    X(in_doubt, "messages whose previous send attempt has an unknown outcome")                     \
    X(in_doubt_resent, "in-doubt messages sent again after no status arrived")                     \
    X(devices_gone, "deleted devices whose queued messages this sender handed back")               \
    X(late_claims, "claims answered too late to send on; claimed again")                           \
    X(held_paused, "messages set aside because their campaign is paused")                          \
    X(held_cancelled, "messages not sent because their campaign was cancelled")                    \
    X(held_window, "messages set aside because their campaign is outside its sending window")      \
    X(recipient_waits, "messages set aside while the device's gap to their recipient runs")        \
    X(dead_lettered, "messages that ran out of attempts (copied to the dead-letter stream)")       \
    X(handed_back, "messages put back on the jobs stream because their device left service")       \
    X(leases_acquired, "device leases taken")                                                      \
    X(leases_lost, "device leases lost to expiry or another sender")                               \
    X(leases_released, "device leases handed back")                                                \
    X(breaker_opened, "device circuit breakers opened (or re-opened by a failed probe)")           \
    X(breaker_closed, "device circuit breakers closed by a successful probe")                      \
    X(daily_cap_rests, "devices that reached their daily cap and rest until their next day")       \
    X(redis_loss_recoveries, "recoveries from Redis losing acknowledged writes")                   \
    X(pg_checked, "messages checked against PostgreSQL before sending (after a Redis loss)")       \
    X(pg_already_done, "messages not sent because PostgreSQL already had them sent or final")      \
    X(redis_errors, "Redis commands that failed")                                                  \
    X(pg_errors, "PostgreSQL queries that failed")                                                 \
    X(device_lists_read, "device lists read from PostgreSQL")                                      \
    X(credentials_loaded, "device credentials read from PostgreSQL (new or changed ones only)")

typedef struct sender_metrics {
#define X(name, help) uint64_t name;
    SENDER_METRICS(X)
#undef X
} sender_metrics;

typedef enum {
    DEV_UNOWNED,   /* not ours */
    DEV_ACQUIRING, /* lease SET NX in flight */
    DEV_OFFLINE,   /* ours, transport would not open; retrying */
    DEV_IDLE,      /* ours, outbox empty at last look */
    DEV_PACING,    /* ours, waiting for the next send time (timer) */
    DEV_READING,   /* XREADGROUP in flight */
    DEV_CLAIMING,  /* idempotency marker claim (or parking a paused job) in flight */
    DEV_CHECKING,  /* its message's row is being read from PostgreSQL */
    DEV_SENDING,   /* transport send in flight */
    DEV_REPORTING, /* outcome pipeline in flight */
    DEV_RESTING,   /* ours and connected, resting: daily cap reached or circuit breaker open */
} dev_state;
#define DEV_NSTATES 11
extern const char *const dev_state_names[DEV_NSTATES];

/* Why a device rests (sends nothing, gets no routing) for a while. */
enum { REST_NONE = 0, REST_CAP, REST_BREAKER };

/* Campaign holds, from PostgreSQL: the value in fleet.holds. */
enum { HOLD_NONE = 0, HOLD_PAUSED = 1, HOLD_CANCELLED = 2, HOLD_WINDOW = 3 };

typedef struct device {
    fleet *f;
    char id[40];
    char platform[24];
    char *settings;        /* user_devices.settings as JSON text */
    char *credentials_hex; /* sealed credentials as hex ("" none, NULL not read yet) */
    char creds_md5[33];    /* their md5, as the device list gives it (changes: read them again) */
    uint32_t min_delay_ms, max_delay_ms;
    dev_state state;
    bool seen;     /* present in the last device list */
    bool want;     /* we should own it (rendezvous winner, not stopping) */
    bool pel_mode; /* read our pending entries ("0") before new ones (">") */
    bool online;   /* transport open */
    bool closing;  /* close_transport() is closing it: a callback from close() is ignored */
    bool reopen;   /* platform or settings changed: reopen the transport at the next rest */
    const char *down_status; /* set by a send result: take the device down at the next rest */
    char down_reason[256];
    int64_t next_at_us;     /* earliest next send (wall clock) */
    int64_t lease_until_us; /* our lease is valid until (monotonic, with margin) */
    int64_t lease_sent_us;  /* when the lease command in flight was sent */
    bool renewing;          /* a renewal is in flight */
    int open_backoff_ms;
    struct event *timer;
    void *transport;
    const wc_transport_ops *ops;
    /* the message in hand */
    char entry_id[48];
    Wacast__Job *job;
    uint32_t attempts;
    bool report_quiet;        /* the next report puts no result on the stream */
    bool check_doubt;         /* the PostgreSQL check is for an in-doubt claim... */
    int64_t doubt_claimed_ms; /* ...made then (wall clock ms) */
    int64_t safe_retry_id;    /* last message whose failed attempt surely did not go out */
    int64_t claimed_us;       /* when the current claim was sent (monotonic) */
    int64_t done_id;          /* last message whose outcome we reported... */
    uint8_t *done_result;     /* ...and that outcome (packed Result), to replay */
    size_t done_len;
    int pending_replies;
    bool reply_failed;
    bool handing_back; /* its lanes are being moved to the jobs stream */
    int64_t gone_us;   /* mono: when its row was found deleted (0: it exists) */
    bool gone_handled; /* its outbox was handed back after the row went */
    /* lanes: one outbox stream per campaign, read in turn (round-robin) */
    char (*lanes)[40]; /* campaign ids */
    uint16_t nlanes;
    uint16_t lane_cur;  /* the lane to read next */
    uint8_t lane_burst; /* reads in a row from it (its priority's share: lane_turn) */
    uint16_t empty_run; /* lanes found empty in a row */
    bool lanes_stale;   /* re-read the set of lanes before the next read */
    bool woken;         /* a wake-up came while busy: look once more before idling */
    bool won;           /* rendezvous winner for live_gen won_gen */
    uint32_t won_gen;
    uint8_t idle_polls;    /* idle polls in a row that found it idle */
    bool count_in_report;  /* the next report adds one to the day's count in Redis */
    char entry_lane[40];   /* the lane of the entry in hand */
    int64_t later_next_ms; /* earliest message due in the later set (0: none) */
    /* limits, from user_devices (re-read with the device list) */
    char day[12];       /* the device's local date, in its time_zone */
    int64_t day_end_ms; /* its next local midnight (wall clock) */
    int32_t cap;        /* today's cap from daily_limit and warm-up; -1: none */
    uint32_t sent_today;
    uint32_t gap_ms; /* shortest time between two sends to the same number */
    /* rest: daily cap reached, or circuit breaker open */
    uint8_t rest;
    bool rest_started; /* its outbox went back and its row says so */
    int64_t rest_until_ms;
    /* circuit breaker */
    uint16_t failures; /* consecutive transient failures */
    bool probing;      /* half open: the next send decides */
    uint32_t breaker_rest_ms;
    /* health: success rate, latency and disconnects, as moving averages */
    float ok_avg, latency_ms, disconnects;
    int64_t send_started_us;
    uint8_t health, health_written;
    /* what its user_devices row should say; written in batches */
    const char *row_status;
    char *row_reason;
    bool row_dirty;
    struct device *dirty_next;
} device;

struct fleet {
    wc_daemon d;
    sender_cfg cfg;
    sender_metrics m;
    wc_redis *sub;
    wc_map devices;
    wc_map holds; /* campaign id -> HOLD_PAUSED / HOLD_CANCELLED */
    bool holds_reading;
    char **live;
    size_t nlive;
    uint32_t live_gen; /* changes with the set of live senders (starts at 1) */
    uint32_t heartbeats, polls;
    struct event *first_beat; /* heartbeats until Redis is up, then the timer */
    bool refreshing;
    bool heartbeat_ok;
    size_t held;
    size_t online;
    wc_transport_env tenv;
    wc_seal_keys *seal;    /* NULL when WACAST_SECRET_KEY is not set */
    wc_media_cache *media; /* prepared images for the transports */
    struct event *refresh_timer, *heartbeat_timer, *idle_timer, *status_timer, *stop_timer,
        *holds_timer;
    device *dirty;              /* devices whose row must be written */
    struct evbuffer *touch_ids; /* online devices whose last_seen is due, as a uuid[] */
    bool status_flushing;       /* a row write is in flight */
    /* Redis losing data (wc_epoch.c): jobs published up to loss_at_us are
     * checked against PostgreSQL before they are sent. */
    wc_epoch *epoch;
    wc_redis *sim;
    int64_t loss_at_us;   /* when the last loss was found (wall clock; 0: never) */
    int64_t loss_seen_us; /* when this sender learned it (wall clock; 0: never) */
    device **checks;      /* devices waiting for their message's row */
    size_t nchecks, checks_cap;
    bool checking; /* a check query is in flight */
    struct event *check_ev;
    wc_map doubt_seen; /* message id -> when this sender first saw it in doubt (monotonic us) */
};

/* main.c */
bool reply_ok(fleet *f, redisReply *r);
void on_void_device(wc_redis *r, redisReply *reply, void *arg);
void on_void(wc_redis *r, redisReply *reply, void *arg);
void maybe_finish_stop(fleet *f);

/* fleet.c */
void device_release(device *dv);
void free_device(device *dv);
void rebalance(fleet *f);
void on_refresh(evutil_socket_t fd, short what, void *arg);
void on_heartbeat(evutil_socket_t fd, short what, void *arg);
void on_wake(wc_redis *r, const char *channel, const char *msg, size_t len, void *arg);
void on_idle_poll(evutil_socket_t fd, short what, void *arg);

/* device.c */
void set_state(device *dv, dev_state s);
void arm_timer(device *dv, int64_t delay_us);
void free_job(device *dv);
void close_transport(device *dv);
void open_transport(device *dv);
void send_now(device *dv);
void device_step(device *dv);
void on_device_timer(evutil_socket_t fd, short what, void *arg);

/* lanes.c */
void set_lanes(device *dv, redisReply *reply);
void handback_entry(device *dv);
void defer_entry(device *dv, int64_t not_before_us);
void defer_entry_marked(device *dv, int64_t not_before_us, bool reset_marker);
void on_promoted(wc_redis *r, redisReply *reply, void *arg);
void handback_outbox(device *dv);
void park_paused(device *dv, const uint8_t *payload, size_t len);
void lane_drained(device *dv, const char *campaign);
void on_holds_timer(evutil_socket_t fd, short what, void *arg);

/* limits.c */
void health_update(device *dv);
void health_send(device *dv, bool ok);
void load_day_count(device *dv);
void count_send(device *dv);
void leave_rest(device *dv, const char *why);
void open_breaker(device *dv, const wc_send_result *sr);
bool resting(device *dv);

/* rows.c */
void mark_dirty(device *dv);
void set_row(device *dv, const char *status, const char *reason);
void on_status_flush(evutil_socket_t fd, short what, void *arg);

/* report.c */
void drop_entry(device *dv);
void report_status(device *dv, Wacast__Status status, const char *code, const char *message);
void claim(device *dv, bool force);
void on_report_reply(wc_redis *r, redisReply *reply, void *arg);
void report(device *dv, const Wacast__Result *res);

/* recovery.c */
void on_check_timer(evutil_socket_t fd, short what, void *arg);
void pg_check(device *dv);
void on_fence_checked(void *arg, const wc_epoch_state *st);

#endif
