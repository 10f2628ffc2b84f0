/* wacast-sender: holds a share of the devices and sends their messages.
 *
 * Ownership. Senders announce themselves in a sorted set with a heartbeat;
 * each one computes, for every device, the rendezvous-hash winner among the
 * live senders and tries to take a lease (SET NX PX) on the devices it wins.
 * A lease is renewed on every heartbeat and only by its owner (a script checks
 * the value), so a device sends from at most one process: a sender that cannot
 * renew stops sending from that device at once, and one that dies loses its
 * leases when they expire. When the set of live senders changes, devices that
 * now hash elsewhere are released as soon as their current step ends.
 *
 * Each owned device is a small state machine (device_step) on the one event
 * loop: wait until its next send time, read one entry from its next lane (one
 * outbox stream per campaign, taken in turn), claim the message's
 * idempotency marker, send through its transport, then record the outcome
 * (marker, results stream, ack, next send time, the day's count) in one
 * script. The next send time is stored in Redis too, so pacing holds when a
 * device moves to another sender.
 *
 * Limits and health: a daily cap (with a warm-up schedule) per local day of
 * the device, a minimum gap between two messages to one number (such a
 * message waits in the device's "later" set), a circuit breaker after
 * consecutive transient failures, and a health score; a device at its cap or
 * with its breaker open rests (resting_until on its row: the router skips it)
 * and its queued messages go back to the router.
 *
 * Redis losing data (lib/wc_epoch.c finds it on every reconnect): no device
 * sends until the fence check has answered; after a loss, a job published
 * before it is sent only once PostgreSQL says its row is not yet sent (rows
 * read in batches across devices, DEV_CHECKING), and held devices keep their
 * pacing, day counts and leases from this sender's memory. A send in doubt
 * is looked up in PostgreSQL too, and waits in the later set, never holding
 * up its device. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <sodium.h>

#include "wacast.pb-c.h"
#include "wc_daemon.h"
#include "wc_epoch.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_map.h"
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
} sender_cfg;

static const wc_cfg_entry cfg_table[] = {
    WC_CFG_DAEMON(wc_common_cfg),
    {"WACAST_LEASE_TTL_MS", WC_CFG_INT, "10000",
     "device lease time-to-live; a dead sender's devices move after this",
     offsetof(sender_cfg, lease_ttl_ms), 500, 600000, false},
    {"WACAST_DEVICE_REFRESH_MS", WC_CFG_INT, "2000", "how often the device list is re-read",
     offsetof(sender_cfg, refresh_ms), 100, 600000, false},
    {"WACAST_IDLE_POLL_MS", WC_CFG_INT, "5000",
     "how often an idle device re-checks its outbox without a wake-up",
     offsetof(sender_cfg, idle_poll_ms), 50, 600000, false},
    {"WACAST_MAX_ATTEMPTS", WC_CFG_INT, "5", "sends of one message before it fails",
     offsetof(sender_cfg, max_attempts), 1, 100, false},
    {"WACAST_RETRY_BASE_MS", WC_CFG_INT, "1000", "first retry back-off (doubles, with jitter)",
     offsetof(sender_cfg, retry_base_ms), 1, 3600000, false},
    {"WACAST_IDEMPOTENCY_TTL_S", WC_CFG_INT, "604800", "how long a message's marker is kept",
     offsetof(sender_cfg, idempotency_ttl_s), 2, 31536000, false},
    {"WACAST_STOP_TIMEOUT_MS", WC_CFG_INT, "10000", "longest wait for in-flight sends at SIGTERM",
     offsetof(sender_cfg, stop_timeout_ms), 0, 600000, false},
    {"WACAST_SIM_LATENCY_MS", WC_CFG_INT, "0", "simulated devices: provider latency",
     offsetof(sender_cfg, sim_latency_ms), 0, 600000, false},
    {"WACAST_SIM_FAILURE_RATE", WC_CFG_DOUBLE, "0", "simulated devices: share of sends that fail",
     offsetof(sender_cfg, sim_failure_rate), 0, 1, false},
    {"WACAST_SIM_RECORD_MAXLEN", WC_CFG_INT, "5000000",
     "simulated devices: sends kept in the record", offsetof(sender_cfg, sim_record_maxlen), 1000,
     1000000000, false},
    {"WACAST_SIM_CALLBACKS", WC_CFG_STR, "",
     "simulated devices: status webhooks to emit after a send (comma list of sent, delivered, "
     "read)",
     offsetof(sender_cfg, sim_callbacks), 1, 0, false},
    {"WACAST_SIM_CALLBACK_DELAY_MS", WC_CFG_INT, "200",
     "simulated devices: delay between status webhooks",
     offsetof(sender_cfg, sim_callback_delay_ms), 0, 3600000, false},
    {"WACAST_IN_DOUBT_MS", WC_CFG_INT, "60000",
     "how long to wait for the status of a send a dead sender left in doubt before sending again",
     offsetof(sender_cfg, in_doubt_ms), 0, 86400000, false},
    {"WACAST_HOLDS_MS", WC_CFG_INT, "250", "how often paused and cancelled campaigns are re-read",
     offsetof(sender_cfg, holds_ms), 50, 60000, false},
    {"WACAST_BLOCKED_RETRY_S", WC_CFG_INT, "3600",
     "a device the provider restricted (spam, policy) is tried again after this long",
     offsetof(sender_cfg, blocked_retry_s), 1, 2000000, false},
    {"WACAST_DEAD_MAXLEN", WC_CFG_INT, "100000", "entries kept in the dead-letter stream",
     offsetof(sender_cfg, dead_maxlen), 100, 100000000, false},
    {"WACAST_BREAKER_FAILURES", WC_CFG_INT, "5",
     "consecutive transient failures that open a device's circuit breaker",
     offsetof(sender_cfg, breaker_failures), 1, 1000, false},
    {"WACAST_BREAKER_REST_MS", WC_CFG_INT, "30000",
     "first rest of a device whose breaker opened (doubles after each failed probe)",
     offsetof(sender_cfg, breaker_rest_ms), 10, 86400000, false},
    {"WACAST_BREAKER_REST_MAX_MS", WC_CFG_INT, "1800000", "longest breaker rest",
     offsetof(sender_cfg, breaker_rest_max_ms), 10, 86400000, false},
    WC_CFG_PROVIDER_HOSTS(sender_cfg, provider_hosts),
    {"WACAST_SIM_REDIS_URL", WC_CFG_STR, "",
     "simulated devices: the Redis of the simulated provider (its record and webhooks); "
     "empty: the engine's Redis",
     offsetof(sender_cfg, sim_redis_url), 1, 0, false},
    {"WACAST_FENCE_MS", WC_CFG_INT, "200",
     "how often the Redis fence is bumped (a Redis losing more than this is noticed)",
     offsetof(sender_cfg, fence_ms), 10, 60000, false},
};

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
    X(pg_errors, "PostgreSQL queries that failed")

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

static const char *dev_state_names[] = {"unowned", "acquiring", "offline",  "idle",
                                        "pacing",  "reading",   "claiming", "checking",
                                        "sending", "reporting", "resting"};

/* Why a device rests (sends nothing, gets no routing) for a while. */
enum { REST_NONE = 0, REST_CAP, REST_BREAKER };

typedef struct fleet fleet;

/* Campaign holds, from PostgreSQL: the value in fleet.holds. */
enum { HOLD_NONE = 0, HOLD_PAUSED = 1, HOLD_CANCELLED = 2, HOLD_WINDOW = 3 };

typedef struct device {
    fleet *f;
    char id[40];
    char platform[24];
    char *settings;        /* user_devices.settings as JSON text */
    char *credentials_hex; /* user_devices.credentials, sealed, as hex ("" when none) */
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
    wc_seal_keys *seal; /* NULL when WACAST_SECRET_KEY is not set */
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

static void device_step(device *dv);
static void lane_drained(device *dv, const char *campaign);
static void load_day_count(device *dv);
static void leave_rest(device *dv, const char *why);
static void open_breaker(device *dv, const wc_send_result *sr);
static void device_release(device *dv);
static void handback_outbox(device *dv);
static void handback_entry(device *dv);
static void defer_entry(device *dv, int64_t not_before_us);
static void defer_entry_marked(device *dv, int64_t not_before_us, bool reset_marker);
static void pg_check(device *dv);
static void on_void(wc_redis *r, redisReply *reply, void *arg);
static void count_send(device *dv);

/* A missing lease is taken again: after Redis lost data the key may be gone
 * while no other sender holds the device (one that took it would have set it). */
static const char *LEASE_RENEW =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
    "elseif not v then "
    " redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 "
    "end return 0";
static const char *LEASE_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                                   "return redis.call('DEL', KEYS[1]) else return 0 end";

/* ---- helpers ---------------------------------------------------------------------------- */

static bool reply_ok(fleet *f, redisReply *r)
{
    if (!r || r->type == REDIS_REPLY_ERROR) {
        f->m.redis_errors++;
        return false;
    }
    return true;
}

static void set_state(device *dv, dev_state s)
{
    wc_debug("device %s: %s -> %s", dv->id, dev_state_names[dv->state], dev_state_names[s]);
    dv->state = s;
}

/* A claim answered later than this is not followed by a send (the message is
 * read again and claimed anew): the floor the claim set assumes the send
 * follows within it. */
#define CLAIM_SEND_MAX_US 1000000

static void arm_timer(device *dv, int64_t delay_us)
{
    if (delay_us < 0)
        delay_us = 0;
    struct timeval tv = {(time_t)(delay_us / 1000000), (suseconds_t)(delay_us % 1000000)};
    evtimer_add(dv->timer, &tv);
}

static void mark_dirty(device *dv)
{
    if (dv->row_dirty || dv->state == DEV_UNOWNED)
        return; /* another sender's device: its holder writes the row */
    dv->row_dirty = true;
    dv->dirty_next = dv->f->dirty;
    dv->f->dirty = dv;
}

/* What the device's row says: status and reason (NULL: none). Written with
 * the next batch; a change back and forth within one batch writes nothing new. */
static void set_row(device *dv, const char *status, const char *reason)
{
    bool same_reason = (!reason && !dv->row_reason) ||
                       (reason && dv->row_reason && !strcmp(reason, dv->row_reason));
    if (dv->row_status && !strcmp(dv->row_status, status) && same_reason)
        return;
    dv->row_status = status;
    free(dv->row_reason);
    dv->row_reason = reason && *reason ? strdup(reason) : NULL;
    mark_dirty(dv);
}

/* Health score from what recent sends and connections did: the success rate
 * of sends (transient failures count; a message's own permanent failure does
 * not), a penalty for slow sends, and one for recent disconnects. */
static void health_update(device *dv)
{
    double score = 100.0 * dv->ok_avg;
    if (dv->latency_ms > 2000)
        score -= (dv->latency_ms - 2000) / 200.0 > 30 ? 30 : (dv->latency_ms - 2000) / 200.0;
    score -= 10.0 * dv->disconnects;
    if (score < 0)
        score = 0;
    if (score > 100)
        score = 100;
    dv->health = (uint8_t)(score + 0.5);
    int diff = (int)dv->health - (int)dv->health_written;
    if (diff >= 3 || diff <= -3 ||
        (dv->health != dv->health_written && (dv->health == 100 || dv->health == 0)))
        mark_dirty(dv);
}

static void health_send(device *dv, bool ok)
{
    const float a = 0.2f;
    dv->ok_avg = dv->ok_avg * (1 - a) + (ok ? a : 0);
    if (dv->send_started_us) {
        float ms = (float)(wc_mono_us() - dv->send_started_us) / 1000.0f;
        dv->latency_ms = dv->latency_ms * (1 - a) + ms * a;
    }
    health_update(dv);
}

static void free_job(device *dv)
{
    if (dv->job)
        wacast__job__free_unpacked(dv->job, NULL);
    dv->job = NULL;
    dv->entry_id[0] = '\0';
    dv->attempts = 0;
    dv->check_doubt = false;
}

/* ---- lease and transport ---------------------------------------------------------------- */

static void close_transport(device *dv)
{
    if (dv->transport) {
        void *t = dv->transport;
        dv->transport = NULL;
        /* A send in flight is answered from inside close() ("closed", in
         * doubt when the request had left): the device is being released or
         * lost, so that answer must not move it (on_sent ignores it); its
         * entry stays pending with its claim, for the in-doubt rules of the
         * next owner. */
        dv->closing = true;
        dv->ops->close(t);
        dv->closing = false;
    }
    if (dv->online)
        dv->f->online--;
    dv->online = false;
}

/* The device's credentials, unsealed, as JSON (NULL when it has none).
 * The plaintext lives only for the open() call. */
static json_t *unseal_credentials(device *dv, char *err, size_t errlen, bool *failed)
{
    fleet *f = dv->f;
    *failed = false;
    if (!dv->credentials_hex || !dv->credentials_hex[0])
        return NULL;
    if (!f->seal) {
        snprintf(err, errlen, "device has sealed credentials but WACAST_SECRET_KEY is not set");
        *failed = true;
        return NULL;
    }
    size_t hexlen = strlen(dv->credentials_hex), len = 0;
    uint8_t *sealed = malloc(hexlen / 2 + 1);
    if (!sealed || sodium_hex2bin(sealed, hexlen / 2 + 1, dv->credentials_hex, hexlen, NULL, &len,
                                  NULL) != 0) {
        free(sealed);
        snprintf(err, errlen, "device credentials are not valid sealed bytes");
        *failed = true;
        return NULL;
    }
    char *plain = NULL;
    size_t plainlen = 0;
    char why[160];
    if (wc_unseal(f->seal, dv->id, sealed, len, &plain, &plainlen, why, sizeof why) < 0) {
        free(sealed);
        snprintf(err, errlen, "cannot open device credentials: %s", why);
        *failed = true;
        return NULL;
    }
    free(sealed);
    json_t *creds = json_loadb(plain, plainlen, 0, NULL);
    wc_seal_plain_free(plain, plainlen);
    if (!creds || !json_is_object(creds)) {
        json_decref(creds);
        snprintf(err, errlen, "device credentials are not a JSON object");
        *failed = true;
        return NULL;
    }
    return creds;
}

/* Takes a device out of service for a while: offline (retried with growing
 * back-off) or blocked by the provider (retried after WACAST_BLOCKED_RETRY_S). */
static void device_down(device *dv, const char *status, const char *reason)
{
    fleet *f = dv->f;
    if (dv->state != DEV_OFFLINE || dv->open_backoff_ms == 0)
        wc_warn("device %s %s: %s", dv->id, status, reason);
    set_row(dv, status, reason);
    dv->disconnects += 1;
    health_update(dv);
    set_state(dv, DEV_OFFLINE);
    /* Its queued messages go to other devices of the user meanwhile. */
    handback_outbox(dv);
    if (!strcmp(status, "blocked") || !strcmp(status, "logged_out")) {
        dv->open_backoff_ms =
            (int)(f->cfg.blocked_retry_s * 1000 > 2000000000 ? 2000000000
                                                             : f->cfg.blocked_retry_s * 1000);
    } else {
        dv->open_backoff_ms = dv->open_backoff_ms ? dv->open_backoff_ms * 2 : 1000;
        if (dv->open_backoff_ms > 60000)
            dv->open_backoff_ms = 60000;
    }
    arm_timer(dv, (int64_t)dv->open_backoff_ms * 1000);
}

static void open_transport(device *dv)
{
    fleet *f = dv->f;
    char err[256] = "";
    dv->ops = wc_transport_find(dv->platform);
    if (!dv->ops) {
        snprintf(err, sizeof err, "unknown platform '%s'", dv->platform);
    } else {
        bool bad_credentials = false;
        json_t *creds = unseal_credentials(dv, err, sizeof err, &bad_credentials);
        if (!bad_credentials) {
            json_error_t jerr;
            json_t *settings = dv->settings ? json_loads(dv->settings, 0, &jerr) : NULL;
            dv->transport = dv->ops->open(&f->tenv, dv->id, settings, creds, err, sizeof err);
            json_decref(settings);
        }
        json_decref(creds);
    }
    if (!dv->transport) {
        device_down(dv, "offline", err);
        return;
    }
    dv->open_backoff_ms = 0;
    dv->online = true;
    f->online++;
    /* Online again; a rest (daily cap, open breaker) keeps its reason. */
    set_row(dv, "online", dv->rest ? dv->row_reason : NULL);
    dv->pel_mode = true;
    set_state(dv, DEV_IDLE);
    device_step(dv);
}

/* Stores the device's lanes from an SMEMBERS reply (keeps the read
 * position's campaign when it is still there). */
static void set_lanes(device *dv, redisReply *reply)
{
    char cur[40] = "";
    if (dv->nlanes)
        snprintf(cur, sizeof cur, "%s", dv->lanes[dv->lane_cur % dv->nlanes]);
    free(dv->lanes);
    dv->lanes = NULL;
    dv->nlanes = 0;
    dv->lane_cur = 0;
    size_t n = reply && reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0;
    if (n > UINT16_MAX)
        n = UINT16_MAX;
    if (n == 0)
        return;
    dv->lanes = calloc(n, sizeof *dv->lanes);
    if (!dv->lanes)
        abort();
    for (size_t i = 0; i < n; i++) {
        redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING || e->len >= sizeof dv->lanes[0])
            continue;
        memcpy(dv->lanes[dv->nlanes], e->str, e->len + 1);
        if (cur[0] && !strcmp(cur, e->str))
            dv->lane_cur = dv->nlanes;
        dv->nlanes++;
    }
}

static void on_later_head(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (reply_ok(dv->f, reply) && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[1]->type == REDIS_REPLY_STRING)
        dv->later_next_ms = strtoll(reply->element[1]->str, NULL, 10);
    else if (reply && reply->type == REDIS_REPLY_ARRAY)
        dv->later_next_ms = 0;
}

static void on_autoclaim(wc_redis *r, redisReply *reply, void *arg);

/* The lanes of a device being taken: the previous owner's pending entries
 * in each become ours (XAUTOCLAIM), then the transport opens. */
static void on_acquire_lanes(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    fleet *f = dv->f;
    if (dv->state != DEV_ACQUIRING)
        return;
    if (!reply_ok(f, reply)) {
        dv->lanes_stale = true;
        dv->pending_replies = 1;
        on_autoclaim(NULL, NULL, dv);
        return;
    }
    set_lanes(dv, reply);
    dv->lanes_stale = false;
    dv->pending_replies = 0;
    for (uint16_t i = 0; i < dv->nlanes; i++) {
        char lane[160];
        wc_key_lane(lane, sizeof lane, dv->id, dv->lanes[i]);
        if (wc_redis_command(f->d.redis, on_autoclaim, dv,
                             "XAUTOCLAIM %s %s %s 0 0-0 COUNT 1000 JUSTID", lane, WC_GROUP_SEND,
                             f->cfg.c.instance_id) == 0)
            dv->pending_replies++;
    }
    if (dv->pending_replies == 0) {
        dv->pending_replies = 1;
        on_autoclaim(NULL, NULL, dv);
    }
}

static void on_autoclaim(wc_redis *r, redisReply *reply, void *arg)
{
    device *dv = arg;
    if (r && !reply_ok(dv->f, reply))
        wc_warn("device %s: XAUTOCLAIM failed: %s", dv->id, reply ? reply->str : "no reply");
    if (dv->state != DEV_ACQUIRING || --dv->pending_replies > 0)
        return;
    dv->pending_replies = 0;
    if (!dv->want) {
        device_release(dv);
        return;
    }
    open_transport(dv);
}

static void on_next_loaded(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    fleet *f = dv->f;
    /* Never earlier than what this sender remembers of the device: after
     * Redis lost data the stored time may have gone back. */
    if (reply_ok(f, reply) && reply->type == REDIS_REPLY_STRING) {
        int64_t stored = strtoll(reply->str, NULL, 10);
        if (stored > dv->next_at_us)
            dv->next_at_us = stored;
    }
    /* Shortly after a loss the stored time cannot be trusted and the last
     * holder's memory is elsewhere: wait a full max_delay. */
    int64_t now = wc_now_us();
    if (f->loss_seen_us && now - f->loss_seen_us < 60000000 &&
        dv->next_at_us < now + (int64_t)dv->max_delay_ms * 1000)
        dv->next_at_us = now + (int64_t)dv->max_delay_ms * 1000;
}

static void on_day_count(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (!reply_ok(dv->f, reply))
        return;
    uint32_t n = reply->type == REDIS_REPLY_STRING ? (uint32_t)strtoul(reply->str, NULL, 10) : 0;
    if (n > dv->sent_today) {
        dv->sent_today = n;
        mark_dirty(dv);
    }
}

/* Today's sends so far, as counted by every holder of the device. */
static void load_day_count(device *dv)
{
    char key[128];
    wc_key_day(key, sizeof key, dv->id, dv->day);
    if (wc_redis_command(dv->f->d.redis, on_day_count, dv, "GET %s", key) < 0)
        dv->f->m.redis_errors++;
}

static void on_lease_set(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    fleet *f = dv->f;
    if (dv->state != DEV_ACQUIRING)
        return;
    if (!reply_ok(f, reply) || reply->type != REDIS_REPLY_STATUS) {
        set_state(dv, DEV_UNOWNED); /* held by another sender, or Redis trouble: next heartbeat */
        return;
    }
    if (!dv->want || !dv->seen) {
        /* Ownership changed while the SET was in flight. */
        f->held++;
        device_release(dv);
        return;
    }
    f->held++;
    f->m.leases_acquired++;
    /* Counted from when the command left: a reply read late must not make a
     * lease look longer than Redis keeps it. */
    dv->lease_until_us = dv->lease_sent_us + (f->cfg.lease_ttl_ms * 1000) * 2 / 3;
    char lanes[128], next[128], later[128];
    wc_key_lanes(lanes, sizeof lanes, dv->id);
    wc_key_next(next, sizeof next, dv->id);
    wc_key_later(later, sizeof later, dv->id);
    /* The previous owner's next send time, today's count, the earliest
     * message waiting for a time, the lanes and their pending entries, then
     * open. The replies come back in order, so open_transport runs last. */
    int rc = wc_redis_command(f->d.redis, on_next_loaded, dv, "GET %s", next);
    load_day_count(dv);
    rc |= wc_redis_command(f->d.redis, on_later_head, dv, "ZRANGE %s 0 0 WITHSCORES", later);
    rc |= wc_redis_command(f->d.redis, on_acquire_lanes, dv, "SMEMBERS %s", lanes);
    if (rc != 0) {
        /* Connection went down mid-way; the lease expires on its own. */
        f->held--;
        set_state(dv, DEV_UNOWNED);
    }
}

static void device_acquire(device *dv)
{
    fleet *f = dv->f;
    char lease[128], ttl[32];
    wc_key_lease(lease, sizeof lease, dv->id);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.lease_ttl_ms);
    dv->lease_sent_us = wc_mono_us();
    if (wc_redis_command(f->d.redis, on_lease_set, dv, "SET %s %s NX PX %s", lease,
                         f->cfg.c.instance_id, ttl) == 0)
        set_state(dv, DEV_ACQUIRING);
}

static void on_lease_released(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)arg;
    (void)reply;
}

static void maybe_finish_stop(fleet *f);

/* Hands the device back: only from a resting state (no send in flight). */
static void device_release(device *dv)
{
    fleet *f = dv->f;
    evtimer_del(dv->timer);
    close_transport(dv);
    free_job(dv);
    char lease[128];
    wc_key_lease(lease, sizeof lease, dv->id);
    const char *argv[] = {"EVAL", LEASE_RELEASE, "1", lease, f->cfg.c.instance_id};
    if (wc_redis_commandv(f->d.redis, on_lease_released, dv, 5, argv, NULL) < 0)
        f->m.redis_errors++;
    f->held--;
    f->m.leases_released++;
    set_state(dv, DEV_UNOWNED);
    maybe_finish_stop(f);
}

/* The lease is gone (expired or taken): stop at once, whatever the state. */
static void device_lost(device *dv)
{
    fleet *f = dv->f;
    wc_warn("device %s: lease lost", dv->id);
    f->m.leases_lost++;
    evtimer_del(dv->timer);
    close_transport(dv);
    free_job(dv);
    f->held--;
    set_state(dv, DEV_UNOWNED);
    maybe_finish_stop(f);
}

/* ---- the send cycle --------------------------------------------------------------------- */

static void report(device *dv, const Wacast__Result *res);

static int64_t draw_delay_us(const device *dv, const Wacast__Job *job)
{
    uint32_t lo = dv->min_delay_ms, hi = dv->max_delay_ms;
    if (job && (job->min_delay_ms || job->max_delay_ms)) {
        lo = job->min_delay_ms;
        hi = job->max_delay_ms;
    }
    if (hi < lo)
        hi = lo;
    /* Uniform in [lo, hi] milliseconds, with microsecond resolution. */
    uint64_t span_us = (uint64_t)(hi - lo) * 1000;
    uint64_t r =
        span_us ? ((uint64_t)randombytes_random() << 32 | randombytes_random()) % (span_us + 1) : 0;
    return (int64_t)lo * 1000 + (int64_t)r;
}

static void on_void_device(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    reply_ok(dv->f, reply);
}

static void on_report_reply(wc_redis *r, redisReply *reply, void *arg);

/* Puts the job in hand back on the jobs stream, unclaimed and without a
 * device preference, and acknowledges its outbox entry. */
static void handback_entry(device *dv)
{
    fleet *f = dv->f;
    wc_redis *rc = f->d.redis;
    set_state(dv, DEV_REPORTING);
    dv->pending_replies = 0;
    dv->reply_failed = false;
    f->m.handed_back++;
    char key[64], ttl[32], outbox[160];
    wc_key_msg(key, sizeof key, (long long)dv->job->message_id);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    wc_key_lane(outbox, sizeof outbox, dv->id, dv->entry_lane);
    char *preferred = dv->job->device_id;
    dv->job->device_id = "";
    size_t len = wacast__job__get_packed_size(dv->job);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    wacast__job__pack(dv->job, buf);
    dv->job->device_id = preferred;
    /* Our claim becomes "routed" again so the router accepts the job. */
    int rcode = wc_redis_command(rc, on_report_reply, dv, "SET %s r:handback EX %s", key, ttl);
    dv->pending_replies += rcode == 0;
    const char *argv[] = {"XADD", WC_KEY_JOBS, "*", "j", (const char *)buf};
    size_t lens[] = {4, strlen(WC_KEY_JOBS), 1, 1, len};
    int rc2 = wc_redis_commandv(rc, on_report_reply, dv, 5, argv, lens);
    dv->pending_replies += rc2 == 0;
    int rc3 = wc_redis_command(rc, on_report_reply, dv, "XACK %s %s %s", outbox, WC_GROUP_SEND,
                               dv->entry_id);
    dv->pending_replies += rc3 == 0;
    int rc4 = wc_redis_command(rc, on_report_reply, dv, "XDEL %s %s", outbox, dv->entry_id);
    dv->pending_replies += rc4 == 0;
    free(buf);
    if (rcode | rc2 | rc3 | rc4)
        dv->reply_failed = true;
    if (dv->pending_replies == 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        device_step(dv);
    }
}

/* Puts the job in hand in the device's later set, not to be sent before
 * not_before_us, and acknowledges its lane entry, in one script. The message
 * was not sent (a per-recipient wait), so its marker goes back to "routed
 * here": reading it again claims it afresh. */
static const char *LATER_PUT = "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) "
                               "redis.call('XACK', KEYS[2], ARGV[3], ARGV[4]) "
                               "redis.call('XDEL', KEYS[2], ARGV[4]) return 1";

static void defer_entry(device *dv, int64_t not_before_us)
{
    defer_entry_marked(dv, not_before_us, true);
}

/* As defer_entry; reset_marker false leaves the marker as it is (an in-doubt
 * claim must survive the wait). */
static void defer_entry_marked(device *dv, int64_t not_before_us, bool reset_marker)
{
    fleet *f = dv->f;
    wc_redis *rc = f->d.redis;
    set_state(dv, DEV_REPORTING);
    dv->pending_replies = 0;
    dv->reply_failed = false;
    dv->job->not_before_us = not_before_us;
    dv->job->attempts_made = dv->attempts;
    char later[128], lane[160], score[32], key[64], val[64], ttl[32];
    wc_key_later(later, sizeof later, dv->id);
    wc_key_lane(lane, sizeof lane, dv->id, dv->entry_lane);
    int64_t due_ms = not_before_us / 1000 + 1;
    snprintf(score, sizeof score, "%" PRId64, due_ms);
    /* Member: "<campaign>\n<job>", so the promotion knows the lane; "?" in
     * front for a message in doubt, which a handback leaves with the device
     * (its claim must settle here, like a claimed entry in a lane). */
    size_t pre = reset_marker ? 0 : 1;
    size_t clen = pre + strlen(dv->job->campaign_id), len = wacast__job__get_packed_size(dv->job);
    uint8_t *buf = malloc(clen + 1 + len);
    if (!buf)
        abort();
    buf[0] = '?';
    memcpy(buf + pre, dv->job->campaign_id, clen - pre);
    buf[clen] = '\n';
    wacast__job__pack(dv->job, buf + clen + 1);
    const char *argv[] = {"EVAL", LATER_PUT,         "2",           later,       lane,
                          score,  (const char *)buf, WC_GROUP_SEND, dv->entry_id};
    size_t lens[] = {4,
                     strlen(LATER_PUT),
                     1,
                     strlen(later),
                     strlen(lane),
                     strlen(score),
                     clen + 1 + len,
                     strlen(WC_GROUP_SEND),
                     strlen(dv->entry_id)};
    int r1 = wc_redis_commandv(rc, on_report_reply, dv, 9, argv, lens);
    dv->pending_replies += r1 == 0;
    wc_key_msg(key, sizeof key, (long long)dv->job->message_id);
    snprintf(val, sizeof val, "r:%s", dv->id);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    const char *mark[] = {"EVAL", WC_MARK_SCRIPT, "1", key, val, ttl, "d"};
    int r2 = reset_marker ? wc_redis_commandv(rc, on_report_reply, dv, 7, mark, NULL) : 0;
    dv->pending_replies += reset_marker && r2 == 0;
    free(buf);
    if (r1 | r2)
        dv->reply_failed = true;
    if (r1 == 0 && (dv->later_next_ms == 0 || due_ms < dv->later_next_ms))
        dv->later_next_ms = due_ms;
    if (dv->pending_replies == 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
    }
}

/* Moves the later set's due messages back to their lanes (up to 100 at a
 * time); returns {moved, next due score or -1}. KEYS[1] later, KEYS[2] lanes;
 * ARGV[1] now ms, ARGV[2] group, ARGV[3] lane key prefix. The lane keys share
 * the device's hash slot. */
static const char *LATER_PROMOTE =
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100) "
    "local n = 0 "
    "for _, m in ipairs(due) do "
    " local c, p = string.match(m, '^%\?\?([^\\n]*)\\n(.*)$') "
    " if c then "
    "  local lane = ARGV[3] .. c "
    "  if redis.call('EXISTS', lane) == 0 then "
    "   redis.call('XGROUP', 'CREATE', lane, ARGV[2], '0', 'MKSTREAM') end "
    "  redis.call('XADD', lane, '*', 'j', p) "
    "  redis.call('SADD', KEYS[2], c) n = n + 1 "
    " end "
    " redis.call('ZREM', KEYS[1], m) "
    "end "
    "local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES') "
    "if #nxt == 0 then return {n, -1} end "
    "return {n, tonumber(nxt[2])}";

static void on_promoted(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (dv->state != DEV_READING)
        return;
    set_state(dv, DEV_IDLE);
    if (!reply_ok(dv->f, reply) || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        arm_timer(dv, 500000);
        return;
    }
    long long moved = reply->element[0]->integer, next = reply->element[1]->integer;
    dv->later_next_ms = next > 0 ? next : 0;
    if (moved > 0)
        dv->lanes_stale = true; /* a lane may be new */
    device_step(dv);
}

/* Moves a device's queued messages back to the jobs stream: the device is
 * out of service (offline, blocked, resting) and they go to other devices of
 * the user. Only entries never delivered to a reader are taken (XREADGROUP
 * ">" as a handback consumer: a crash midway leaves them pending, and the
 * next holder's XAUTOCLAIM picks them up), lane by lane, then the later set.
 * An entry a sender claimed stays with the device (its outcome may be
 * unknown; the in-doubt rules settle it when the device comes back). */
typedef struct handback_op {
    fleet *f;
    device *dv;
    char consumer[128];
    char (*lanes)[40];
    size_t nlanes, cur;
    bool new_entries; /* this lane's own pending entries are done: reading new ones */
} handback_op;

static void handback_next(handback_op *op);

static void handback_done(handback_op *op)
{
    op->dv->handing_back = false;
    free(op->lanes);
    free(op);
}

/* Re-packs a job without its device so the router picks one, and appends it. */
static int handback_job(wc_redis *r, fleet *f, Wacast__Job *job)
{
    char *chosen = job->device_id;
    job->device_id = "";
    size_t len = wacast__job__get_packed_size(job);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        abort();
    wacast__job__pack(job, buf);
    job->device_id = chosen;
    const char *argv[] = {"XADD", WC_KEY_JOBS, "*", "j", (const char *)buf};
    size_t lens[] = {4, strlen(WC_KEY_JOBS), 1, 1, len};
    int rc = wc_redis_commandv(r, on_void, f, 5, argv, lens);
    if (rc == 0)
        f->m.handed_back++;
    free(buf);
    return rc;
}

static void on_handback_step(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    handback_op *op = arg;
    if (!reply_ok(op->f, reply)) {
        handback_done(op);
        return;
    }
    handback_next(op);
}

static void on_handback_read(wc_redis *r, redisReply *reply, void *arg)
{
    handback_op *op = arg;
    fleet *f = op->f;
    redisReply *entries = NULL;
    bool ok = reply_ok(f, reply);
    if (ok && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
        reply->element[0]->type == REDIS_REPLY_ARRAY && reply->element[0]->elements == 2)
        entries = reply->element[0]->element[1];
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0) {
        if (!op->new_entries && ok) {
            op->new_entries = true; /* then the lane's entries nobody read yet */
        } else {
            op->cur++; /* this lane is done (or unreadable): the next one */
            op->new_entries = false;
        }
        handback_next(op);
        return;
    }
    char lane[160];
    wc_key_lane(lane, sizeof lane, op->dv->id, op->lanes[op->cur]);
    const char **ack = calloc(entries->elements + 4, sizeof *ack);
    if (!ack)
        abort();
    ack[0] = "XACK";
    ack[1] = lane;
    ack[2] = WC_GROUP_SEND;
    int na = 3;
    for (size_t i = 0; i < entries->elements; i++) {
        redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
            continue;
        redisReply *fields = e->element[1];
        for (size_t k = 0; fields->type == REDIS_REPLY_ARRAY && k + 1 < fields->elements; k += 2) {
            if (strcmp(fields->element[k]->str, "j") != 0)
                continue;
            Wacast__Job *job = wacast__job__unpack(NULL, fields->element[k + 1]->len,
                                                   (const uint8_t *)fields->element[k + 1]->str);
            if (job) {
                (void)handback_job(r, f, job);
                wacast__job__free_unpacked(job, NULL);
            }
        }
        ack[na++] = e->element[0]->str;
    }
    const char **del = ack + 1; /* XDEL lane ids...: reuse the list */
    int rc = wc_redis_commandv(r, on_void, f, na, ack, NULL);
    if (rc == 0) {
        del[0] = "XDEL";
        del[1] = lane;
        rc = wc_redis_commandv(r, on_handback_step, op, na - 1, del, NULL);
    }
    free(ack);
    if (rc < 0)
        handback_done(op);
}

static void on_handback_later(wc_redis *r, redisReply *reply, void *arg)
{
    handback_op *op = arg;
    fleet *f = op->f;
    device *dv = op->dv;
    if (!reply_ok(f, reply) || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        handback_done(op);
        return;
    }
    char later[128], ttl[32];
    wc_key_later(later, sizeof later, dv->id);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    int rc = 0;
    /* The last member handed back moves the operation on (a message in doubt
     * stays); none: done. */
    size_t last = reply->elements;
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *m = reply->element[i];
        if (m->type == REDIS_REPLY_STRING && m->len > 0 && m->str[0] != '?')
            last = i;
    }
    if (last == reply->elements) {
        handback_done(op);
        return;
    }
    for (size_t i = 0; i <= last && rc == 0; i++) {
        redisReply *m = reply->element[i];
        if (m->type == REDIS_REPLY_STRING && m->len > 0 && m->str[0] == '?')
            continue;
        const char *nl = m->type == REDIS_REPLY_STRING ? memchr(m->str, '\n', m->len) : NULL;
        Wacast__Job *job = nl ? wacast__job__unpack(NULL, m->len - (size_t)(nl + 1 - m->str),
                                                    (const uint8_t *)nl + 1)
                              : NULL;
        if (job) {
            /* Routable again by anyone ("done" stays done). */
            char key[64];
            wc_key_msg(key, sizeof key, (long long)job->message_id);
            const char *mark[] = {"EVAL", WC_MARK_SCRIPT, "1", key, "r:handback", ttl, "d"};
            rc |= wc_redis_commandv(r, on_void, f, 7, mark, NULL);
            rc |= handback_job(r, f, job);
            wacast__job__free_unpacked(job, NULL);
        }
        const char *zrem[] = {"ZREM", later, m->str};
        size_t zlen[] = {4, strlen(later), m->len};
        rc |= wc_redis_commandv(r, i == last ? on_handback_step : on_void,
                                i == last ? (void *)op : (void *)f, 3, zrem, zlen);
    }
    if (rc < 0)
        handback_done(op);
}

static void handback_next(handback_op *op)
{
    fleet *f = op->f;
    device *dv = op->dv;
    int rc;
    if (op->cur < op->nlanes) {
        char lane[160];
        wc_key_lane(lane, sizeof lane, dv->id, op->lanes[op->cur]);
        /* First what an earlier handback read and could not finish (its
         * Redis connection broke between the read and the acknowledgement:
         * those entries stay pending under the handback consumer, which no
         * device reads and no takeover claims while this sender holds the
         * device), then the entries nobody read. */
        rc = wc_redis_command(f->d.redis, on_handback_read, op,
                              "XREADGROUP GROUP %s %s COUNT 500 STREAMS %s %s", WC_GROUP_SEND,
                              op->consumer, lane, op->new_entries ? ">" : "0");
    } else {
        char later[128];
        wc_key_later(later, sizeof later, dv->id);
        rc = wc_redis_command(f->d.redis, on_handback_later, op, "ZRANGE %s 0 499", later);
    }
    if (rc < 0)
        handback_done(op);
}

static void on_handback_lanes(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    handback_op *op = arg;
    if (!reply_ok(op->f, reply) || reply->type != REDIS_REPLY_ARRAY) {
        handback_done(op);
        return;
    }
    op->lanes = calloc(reply->elements + 1, sizeof *op->lanes);
    if (!op->lanes)
        abort();
    for (size_t i = 0; i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING &&
            reply->element[i]->len < sizeof op->lanes[0])
            memcpy(op->lanes[op->nlanes++], reply->element[i]->str, reply->element[i]->len + 1);
    handback_next(op);
}

static void handback_outbox(device *dv)
{
    if (dv->handing_back)
        return;
    handback_op *op = calloc(1, sizeof *op);
    if (!op)
        abort();
    op->f = dv->f;
    op->dv = dv;
    snprintf(op->consumer, sizeof op->consumer, "%s:handback", dv->f->cfg.c.instance_id);
    char lanes[128];
    wc_key_lanes(lanes, sizeof lanes, dv->id);
    if (wc_redis_command(dv->f->d.redis, on_handback_lanes, op, "SMEMBERS %s", lanes) < 0) {
        free(op);
        return;
    }
    dv->handing_back = true;
}

static void on_sent(void *arg, const wc_send_result *sr)
{
    device *dv = arg;
    fleet *f = dv->f;
    if (dv->closing || dv->state != DEV_SENDING || !dv->job)
        return; /* closed under us: the release path cleans up */
    if (sr->device_action == WC_DEVICE_PAUSE || sr->device_action == WC_DEVICE_OFFLINE ||
        sr->device_action == WC_DEVICE_LOGGED_OUT) {
        /* The provider says this device cannot send (restricted, or its
         * credentials were rejected): the fault is the device's, not the
         * message's. The message goes back to the router for another device
         * of the user (no attempt used), and the device leaves service. */
        dv->down_status = sr->device_action == WC_DEVICE_PAUSE        ? "blocked"
                          : sr->device_action == WC_DEVICE_LOGGED_OUT ? "logged_out"
                                                                      : "offline";
        snprintf(dv->down_reason, sizeof dv->down_reason, "%s",
                 sr->device_reason[0] ? sr->device_reason : sr->error_message);
        dv->attempts--;
        handback_entry(dv);
        return;
    }
    Wacast__Result res = WACAST__RESULT__INIT;
    res.message_id = dv->job->message_id;
    res.campaign_id = dv->job->campaign_id;
    res.device_id = dv->id;
    res.at_us = wc_now_us();
    res.attempt = dv->attempts;
    res.error_code = (char *)sr->error_code;
    res.error_message = (char *)sr->error_message;
    res.provider_message_id = (char *)sr->provider_id;
    /* Health and breaker: a transient failure is the device's or provider's
     * trouble; a permanent one (bad number, template) is the message's. */
    bool transient = sr->outcome == WC_SEND_RETRY && !sr->recipient_only;
    if (sr->outcome == WC_SEND_OK || transient)
        health_send(dv, sr->outcome == WC_SEND_OK);
    if (sr->outcome == WC_SEND_OK) {
        dv->failures = 0;
        if (dv->probing || dv->breaker_rest_ms) {
            wc_info("device %s: probe succeeded; breaker closed", dv->id);
            f->m.breaker_closed += dv->probing;
            dv->probing = false;
            dv->breaker_rest_ms = 0;
            set_row(dv, "online", NULL);
        }
    } else if (transient) {
        if (dv->failures < UINT16_MAX)
            dv->failures++;
        if (dv->probing || dv->failures >= (uint32_t)f->cfg.breaker_failures)
            open_breaker(dv, sr);
    }
    if (sr->outcome == WC_SEND_OK) {
        res.status = WACAST__STATUS__STATUS_SENT;
        f->m.sent++;
        count_send(dv);
    } else if (sr->outcome == WC_SEND_RETRY && sr->recipient_only &&
               dv->attempts < (uint32_t)f->cfg.max_attempts) {
        /* Only this recipient must wait (e.g. Meta's 131056 pair limit): the
         * message goes to the back of the outbox with a not-before time and
         * the device goes on with its other messages. */
        f->m.retried++;
        int64_t wait = sr->retry_after_ms > 0 ? (int64_t)sr->retry_after_ms * 1000 : 6000000;
        wc_info("device %s: message %" PRId64 ": %s (%s); this recipient waits %" PRId64 " ms",
                dv->id, dv->job->message_id, sr->error_message, sr->error_code, wait / 1000);
        defer_entry(dv, wc_now_us() + wait);
        return;
    } else if (sr->outcome == WC_SEND_RETRY && dv->rest == REST_BREAKER && !sr->outcome_unknown) {
        /* The breaker just opened and this attempt surely did not go out: the
         * device is at fault, not the message. It goes to another device of
         * the user with the attempts it came with (this device's failures
         * are not charged to it, even its last allowed one). */
        f->m.retried++;
        handback_entry(dv);
        return;
    } else if (sr->outcome == WC_SEND_RETRY && dv->attempts < (uint32_t)f->cfg.max_attempts) {
        /* Keep the entry in our pending list; read it again after a back-off.
         * Only an attempt that surely did not go out may simply be resent. */
        if (!sr->outcome_unknown)
            dv->safe_retry_id = dv->job->message_id;
        f->m.retried++;
        int64_t backoff = (int64_t)f->cfg.retry_base_ms * 1000
                          << (dv->attempts - 1 > 16 ? 16 : dv->attempts - 1);
        backoff += randombytes_uniform((uint32_t)(backoff / 2 + 1));
        if (sr->retry_after_ms > 0 && (int64_t)sr->retry_after_ms * 1000 > backoff)
            backoff = (int64_t)sr->retry_after_ms * 1000;
        wc_info("device %s: message %" PRId64 " attempt %u: %s (%s); retrying in %" PRId64 " ms",
                dv->id, dv->job->message_id, dv->attempts, sr->error_message, sr->error_code,
                backoff / 1000);
        int64_t next = wc_now_us() + backoff;
        if (next > dv->next_at_us)
            dv->next_at_us = next;
        uint32_t attempts = dv->attempts;
        char entry[48];
        snprintf(entry, sizeof entry, "%s", dv->entry_id);
        wacast__job__free_unpacked(dv->job, NULL);
        dv->job = NULL;
        dv->attempts = attempts; /* kept for the re-read of the same entry */
        snprintf(dv->entry_id, sizeof dv->entry_id, "%s", entry);
        dv->pel_mode = true;
        set_state(dv, DEV_IDLE);
        device_step(dv);
        return;
    } else {
        res.status = WACAST__STATUS__STATUS_FAILED;
        f->m.failed++;
        if (sr->outcome == WC_SEND_RETRY) {
            /* Out of attempts: failed with the last error, and kept for a look. */
            f->m.dead_lettered++;
            char maxlen[32], msg[32], attempts[16];
            snprintf(maxlen, sizeof maxlen, "%ld", f->cfg.dead_maxlen);
            snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
            snprintf(attempts, sizeof attempts, "%u", dv->attempts);
            const char *argv[] = {"XADD",       WC_KEY_DEAD,
                                  "MAXLEN",     "~",
                                  maxlen,       "*",
                                  "msg",        msg,
                                  "campaign",   dv->job->campaign_id,
                                  "device",     dv->id,
                                  "attempts",   attempts,
                                  "error_code", sr->error_code,
                                  "error",      sr->error_message};
            if (wc_redis_commandv(f->d.redis, on_void_device, dv, 17, argv, NULL) < 0)
                f->m.redis_errors++;
        }
    }
    report(dv, &res);
}

/* A send counts against the device's day, shared by whichever sender holds
 * it: in memory now, in Redis with the report that follows. */
static void count_send(device *dv)
{
    dv->sent_today++;
    dv->count_in_report = dv->day[0] != '\0';
    if (dv->cap >= 0)
        mark_dirty(dv);
}

static void send_now(device *dv)
{
    fleet *f = dv->f;
    if (!dv->transport || wc_mono_us() > dv->lease_until_us) {
        /* No transport or lease in doubt: leave the entry pending and rest. */
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        return;
    }
    Wacast__Job *job = dv->job;
    wc_send_request req = {
        .message_id = job->message_id,
        .campaign_id = job->campaign_id,
        .device_id = dv->id,
        .recipient = job->recipient,
        .content = job->content,
        .media_url = job->media_url,
        .attempt = dv->attempts + 1,
    };
    dv->attempts++;
    dv->send_started_us = wc_mono_us();
    set_state(dv, DEV_SENDING);
    int rc = dv->ops->send(dv->transport, &req, on_sent, dv);
    /* Pacing runs from the start of one send to the start of the next; the
     * clock is read after the transport took the message, so the gap between
     * two sends as the provider sees them is never shorter than the delay. */
    dv->next_at_us = wc_now_us() + draw_delay_us(dv, job);
    if (rc < 0) {
        wc_send_result sr = {.outcome = WC_SEND_RETRY};
        snprintf(sr.error_code, sizeof sr.error_code, "transport_busy");
        snprintf(sr.error_message, sizeof sr.error_message,
                 "the transport could not start the send");
        on_sent(dv, &sr);
    }
    (void)f;
}

/* A result that only acknowledges the entry (nothing to report). */
static void drop_entry(device *dv)
{
    Wacast__Result res = WACAST__RESULT__INIT;
    report(dv, &res);
}

static void report_status(device *dv, Wacast__Status status, const char *code, const char *message)
{
    Wacast__Result res = WACAST__RESULT__INIT;
    res.message_id = dv->job->message_id;
    res.campaign_id = dv->job->campaign_id;
    res.device_id = dv->id;
    res.at_us = wc_now_us();
    res.attempt = dv->attempts;
    res.status = status;
    res.error_code = (char *)code;
    res.error_message = (char *)message;
    report(dv, &res);
}

static void claim(device *dv, bool force);

/* Acts on the marker's state as the claim script returned it. */
static void on_marker(device *dv, const char *v, size_t len)
{
    fleet *f = dv->f;
    if (len >= 2 && v[0] == 'g' && v[1] == ':') {
        /* The device sent to this number less than its recipient gap ago:
         * this message waits in the later set; the device goes on. */
        long long pttl = strtoll(v + 2, NULL, 10);
        f->m.recipient_waits++;
        defer_entry(dv, wc_now_us() + (pttl > 0 ? pttl : 1) * 1000);
        return;
    }
    if (len >= 2 && v[0] == 'd') {
        /* Outcome already known: report it again (the sink is idempotent) and ack. */
        char msg[32];
        snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
        wc_map_del(&f->doubt_seen, msg);
        Wacast__Result *res = wacast__result__unpack(NULL, len - 2, (const uint8_t *)v + 2);
        f->m.replayed++;
        if (res) {
            report(dv, res);
            wacast__result__free_unpacked(res, NULL);
            return;
        }
        drop_entry(dv);
        return;
    }
    char mine[160], same_device[64];
    snprintf(mine, sizeof mine, "c:%s:%s:", dv->id, f->cfg.c.instance_id);
    snprintf(same_device, sizeof same_device, "c:%s:", dv->id);
    bool own = len > strlen(mine) && memcmp(v, mine, strlen(mine)) == 0;
    if (own && dv->done_id == dv->job->message_id && dv->done_result) {
        /* We sent it and its report was lost: report again, never resend. */
        Wacast__Result *res = wacast__result__unpack(NULL, dv->done_len, dv->done_result);
        f->m.replayed++;
        if (res) {
            report(dv, res);
            wacast__result__free_unpacked(res, NULL);
            return;
        }
    }
    if (own && dv->safe_retry_id == dv->job->message_id) {
        claim(dv, true); /* our own attempt that surely did not go out: send again */
        return;
    }
    /* Any other claim on this device (a dead sender's, or ours with an unknown
     * outcome) is in doubt. */
    if (len > strlen(same_device) && memcmp(v, same_device, strlen(same_device)) == 0) {
        /* A sender died after handing this message to the transport and
         * before recording the outcome. PostgreSQL may know it already (the
         * status sink or a webhook got there): look there first. */
        const char *colon = memrchr(v, ':', len);
        dv->doubt_claimed_ms = colon ? strtoll(colon + 1, NULL, 10) : 0;
        char msg[32];
        snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
        if (!wc_map_get(&f->doubt_seen, msg)) {
            f->m.in_doubt++;
            wc_warn("device %s: message %" PRId64 " in doubt (%.*s); waiting for its status",
                    dv->id, dv->job->message_id, (int)len, v);
        }
        dv->check_doubt = true;
        pg_check(dv);
        return;
    }
    /* Another device holds this message (a duplicate entry): drop our copy. */
    f->m.duplicates_dropped++;
    drop_entry(dv);
}

/* ---- PostgreSQL checks: after Redis lost data, and for sends in doubt ------------------- */

/* Statuses that mean the message must not be sent again. */
static Wacast__Status final_status(const char *st)
{
    static const struct {
        const char *name;
        Wacast__Status status;
    } map[] = {{"sent", WACAST__STATUS__STATUS_SENT},
               {"delivered", WACAST__STATUS__STATUS_DELIVERED},
               {"read", WACAST__STATUS__STATUS_READ},
               {"failed", WACAST__STATUS__STATUS_FAILED},
               {"skipped", WACAST__STATUS__STATUS_SKIPPED},
               {"cancelled", WACAST__STATUS__STATUS_CANCELLED}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(st, map[i].name))
            return map[i].status;
    return WACAST__STATUS__STATUS_UNSPECIFIED;
}

/* PostgreSQL already has the message at `sent` or beyond: not sent again.
 * Its marker becomes "done" (so every other copy is dropped) and the entry
 * is acknowledged; the result goes to no stream (the row has it already). */
static void resolve_from_pg(device *dv, Wacast__Status status)
{
    fleet *f = dv->f;
    char msg[32];
    snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
    wc_map_del(&f->doubt_seen, msg);
    f->m.pg_already_done++;
    wc_info("device %s: message %" PRId64 " is already final in PostgreSQL; not sent again", dv->id,
            dv->job->message_id);
    Wacast__Result res = WACAST__RESULT__INIT;
    res.message_id = dv->job->message_id;
    res.campaign_id = dv->job->campaign_id;
    res.device_id = dv->id;
    res.at_us = wc_now_us();
    res.attempt = dv->attempts;
    res.status = status;
    dv->report_quiet = true;
    report(dv, &res);
}

/* An in-doubt message whose row is not final: the provider's status
 * callback, when it comes, records it ("d:" and the row). Wait for it until
 * WACAST_IN_DOUBT_MS after the claim (its time is in the marker, so the wait
 * does not start over when the device moves), and at least half of it after
 * this sender first saw the doubt (after an outage of Redis or of the
 * dispatchers the webhook gets a fair chance to land); then conclude the
 * send never happened, and send. Meanwhile the message waits in the later
 * set with its claim untouched, and the device goes on with its others. */
static void doubt_wait(device *dv)
{
    fleet *f = dv->f;
    char msg[32];
    snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
    int64_t now_mono = wc_mono_us();
    int64_t seen = (int64_t)(uintptr_t)wc_map_get(&f->doubt_seen, msg);
    if (!seen) {
        seen = now_mono;
        if (wc_map_put(&f->doubt_seen, msg, (void *)(uintptr_t)seen) < 0)
            abort();
    }
    int64_t wait_ms = dv->doubt_claimed_ms + f->cfg.in_doubt_ms - wc_now_us() / 1000;
    int64_t seen_wait_ms = f->cfg.in_doubt_ms / 2 - (now_mono - seen) / 1000;
    if (seen_wait_ms > wait_ms)
        wait_ms = seen_wait_ms;
    if (wait_ms <= 0) {
        wc_warn("device %s: message %" PRId64 ": no status within %ld ms; sending it", dv->id,
                dv->job->message_id, f->cfg.in_doubt_ms);
        wc_map_del(&f->doubt_seen, msg);
        f->m.in_doubt_resent++;
        claim(dv, true);
        return;
    }
    /* Looked at again within two seconds (PostgreSQL may have it by then). */
    int64_t again_ms = wait_ms < 2000 ? wait_ms : 2000;
    defer_entry_marked(dv, wc_now_us() + again_ms * 1000, false);
}

typedef struct check_batch {
    fleet *f;
    device **devs;
    int64_t *ids;
    size_t n;
} check_batch;

static void checks_flush(fleet *f);

static void check_batch_free(check_batch *b)
{
    free(b->devs);
    free(b->ids);
    free(b);
}

static void on_rows_checked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    check_batch *b = arg;
    fleet *f = b->f;
    f->checking = false;
    if (!res) {
        f->m.pg_errors++;
        wc_warn("checking %zu message(s) in PostgreSQL: %s", b->n, err);
    }
    for (size_t i = 0; i < b->n; i++) {
        device *dv = b->devs[i];
        if (dv->state != DEV_CHECKING || !dv->job || dv->job->message_id != b->ids[i])
            continue; /* released or lost meanwhile */
        if (!res) {
            /* Unknown: nothing is sent; the entry stays pending and is read again. */
            dv->pel_mode = true;
            free_job(dv);
            set_state(dv, DEV_IDLE);
            arm_timer(dv, 500000);
            continue;
        }
        Wacast__Status st = WACAST__STATUS__STATUS_UNSPECIFIED;
        for (int r = 0; r < PQntuples(res); r++)
            if (strtoll(PQgetvalue(res, r, 0), NULL, 10) == b->ids[i])
                st = final_status(PQgetvalue(res, r, 1));
        if (st != WACAST__STATUS__STATUS_UNSPECIFIED)
            resolve_from_pg(dv, st);
        else if (dv->check_doubt)
            doubt_wait(dv);
        else
            claim(dv, false);
    }
    check_batch_free(b);
    if (f->nchecks)
        checks_flush(f);
}

/* One query for every device waiting for its message's row. */
static void checks_flush(fleet *f)
{
    if (f->checking || f->nchecks == 0)
        return;
    check_batch *b = calloc(1, sizeof *b);
    struct evbuffer *ids = evbuffer_new();
    if (!b || !ids)
        abort();
    b->f = f;
    b->devs = f->checks;
    b->n = f->nchecks;
    b->ids = calloc(b->n, sizeof *b->ids);
    if (!b->ids)
        abort();
    f->checks = NULL;
    f->nchecks = f->checks_cap = 0;
    for (size_t i = 0; i < b->n; i++) {
        b->ids[i] = b->devs[i]->job ? b->devs[i]->job->message_id : 0;
        evbuffer_add_printf(ids, "%s%" PRId64, i ? "," : "{", b->ids[i]);
    }
    evbuffer_add(ids, "}\0", 2);
    const char *params[] = {(const char *)evbuffer_pullup(ids, -1)};
    f->m.pg_checked += b->n;
    if (wc_pg_query(f->d.pg,
                    "SELECT m.id, m.status::text FROM broadcast_messages m"
                    " WHERE m.id = ANY($1::bigint[])",
                    1, params, on_rows_checked, b) == 0)
        f->checking = true;
    else
        on_rows_checked(NULL, NULL, "cannot queue the query", b);
    evbuffer_free(ids);
}

static void on_check_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    checks_flush(arg);
}

/* Reads the row of the device's message from PostgreSQL, in a batch with
 * the other devices' (gathered for a few milliseconds), then sends, resolves
 * or waits. */
static void pg_check(device *dv)
{
    fleet *f = dv->f;
    set_state(dv, DEV_CHECKING);
    if (f->nchecks == f->checks_cap) {
        f->checks_cap = f->checks_cap ? f->checks_cap * 2 : 64;
        f->checks = realloc(f->checks, f->checks_cap * sizeof *f->checks);
        if (!f->checks)
            abort();
    }
    f->checks[f->nchecks++] = dv;
    if (!f->checking && !evtimer_pending(f->check_ev, NULL)) {
        struct timeval tv = {0, 5000};
        evtimer_add(f->check_ev, &tv);
    }
}

static void on_claimed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    fleet *f = dv->f;
    if (dv->state != DEV_CLAIMING)
        return;
    if (!reply_ok(f, reply)) {
        /* The claim may have landed with its reply lost (Redis went away),
         * but nothing was sent: our own claim is no doubt when read again. */
        dv->safe_retry_id = dv->job->message_id;
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
        return;
    }
    if (reply->type == REDIS_REPLY_STATUS) {
        if (wc_mono_us() - dv->claimed_us > CLAIM_SEND_MAX_US) {
            /* Too late for the floor the claim set: not sent, so claim again. */
            f->m.late_claims++;
            dv->safe_retry_id = dv->job->message_id;
            dv->pel_mode = true;
            free_job(dv);
            set_state(dv, DEV_IDLE);
            arm_timer(dv, 0);
            return;
        }
        send_now(dv);
        return;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
        return;
    }
    on_marker(dv, reply->str, reply->len);
}

/* Claims the message's marker for this device and sender, unless the
 * device's recipient gap still runs for its number ("g:<ms left>"). KEYS[1]
 * marker, KEYS[2] the device's next send time, KEYS[3] (optional) the
 * recipient's key; ARGV[1] value, ARGV[2] ttl s, ARGV[3] blocking prefixes,
 * ARGV[4] gap ms, ARGV[5] message id, ARGV[6] the earliest next send should
 * this one go out (wall clock us; "0" with no pacing). That floor keeps the
 * pacing when the sender dies between the send and its report: the next
 * owner starts from it (the report replaces it with the real next time). */
static const char *CLAIM_SCRIPT =
    "local v = redis.call('GET', KEYS[1]) "
    "if v and string.find(ARGV[3], string.sub(v, 1, 1), 1, true) then return v end "
    "if KEYS[3] then "
    " local last = redis.call('GET', KEYS[3]) "
    " if last and last ~= ARGV[5] then return 'g:' .. redis.call('PTTL', KEYS[3]) end "
    " redis.call('SET', KEYS[3], ARGV[5], 'PX', ARGV[4]) "
    "end "
    "if ARGV[6] ~= '0' then "
    " local n = tonumber(redis.call('GET', KEYS[2]) or '0') or 0 "
    " if n < tonumber(ARGV[6]) then redis.call('SET', KEYS[2], ARGV[6], 'PX', 86400000) end "
    "end "
    "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return redis.status_reply('OK')";

/* Claims the message's marker for this device and sender; force overrides an
 * abandoned claim (after the in-doubt wait). */
static void claim(device *dv, bool force)
{
    fleet *f = dv->f;
    char key[64], val[192], ttl[32], rkey[192], gap[32], msg[32], next[128], floor_us[32];
    int64_t now_us = wc_now_us();
    dv->claimed_us = wc_mono_us();
    wc_key_msg(key, sizeof key, (long long)dv->job->message_id);
    snprintf(val, sizeof val, "c:%s:%s:%" PRId64, dv->id, f->cfg.c.instance_id, now_us / 1000);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    wc_key_recipient(rkey, sizeof rkey, dv->id, dv->job->recipient);
    wc_key_next(next, sizeof next, dv->id);
    snprintf(gap, sizeof gap, "%u", dv->gap_ms);
    snprintf(msg, sizeof msg, "%" PRId64, dv->job->message_id);
    snprintf(floor_us, sizeof floor_us, "%" PRId64,
             dv->min_delay_ms ? now_us + CLAIM_SEND_MAX_US + (int64_t)dv->min_delay_ms * 1000 : 0);
    set_state(dv, DEV_CLAIMING);
    bool gapped = dv->gap_ms > 0 && dv->job->recipient[0];
    const char *argv[12];
    int argc = 0;
    argv[argc++] = "EVAL";
    argv[argc++] = CLAIM_SCRIPT;
    argv[argc++] = gapped ? "3" : "2";
    argv[argc++] = key;
    argv[argc++] = next;
    if (gapped)
        argv[argc++] = rkey;
    argv[argc++] = val;
    argv[argc++] = ttl;
    argv[argc++] = force ? "d" : "cd";
    argv[argc++] = gap;
    argv[argc++] = msg;
    argv[argc++] = floor_us;
    if (wc_redis_commandv(f->d.redis, on_claimed, dv, argc, argv, NULL) < 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
    }
}

static void on_parked(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (dv->state != DEV_CLAIMING)
        return;
    if (!reply_ok(dv->f, reply)) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
        return;
    }
    drop_entry(dv);
}

/* A job of a paused campaign leaves the outbox for the campaign's paused
 * stream (the dispatcher brings it back on resume), so the device's other
 * campaigns are not held up behind it. */
static void park_paused(device *dv, const uint8_t *payload, size_t len)
{
    fleet *f = dv->f;
    char key[128];
    wc_key_paused(key, sizeof key, dv->job->campaign_id);
    set_state(dv, DEV_CLAIMING);
    const char *argv[] = {"XADD", key, "*", "j", (const char *)payload};
    size_t lens[] = {4, strlen(key), 1, 1, len};
    if (wc_redis_commandv(f->d.redis, on_parked, dv, 5, argv, lens) < 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        return;
    }
    /* The index entry goes after the entry itself: the dispatcher forgets a
     * campaign whose paused stream it found empty, and an index entry added
     * before our XADD could be forgotten after it (the entry would then sit
     * unseen). Added after, it is either seen with the entry or re-added. */
    if (wc_redis_command(f->d.redis, on_void_device, dv, "SADD wacast:paused:index %s",
                         dv->job->campaign_id) < 0)
        f->m.redis_errors++;
}

/* Decides what to do with a job just read: hold it, drop it, or claim it. */
static void consider(device *dv, const uint8_t *payload, size_t len)
{
    fleet *f = dv->f;
    int64_t now = wc_now_us();
    if (dv->job->not_before_us > now) {
        /* Not yet (a recipient's wait): into the later set until then. */
        defer_entry(dv, dv->job->not_before_us);
        return;
    }
    uintptr_t hold = (uintptr_t)wc_map_get(&f->holds, dv->job->campaign_id);
    if (hold == HOLD_PAUSED || hold == HOLD_WINDOW) {
        /* Paused, or outside its sending window: set aside until it resumes
         * or the window opens (the dispatcher brings it back). */
        if (hold == HOLD_WINDOW)
            f->m.held_window++;
        else
            f->m.held_paused++;
        park_paused(dv, payload, len);
        return;
    }
    if (hold == HOLD_CANCELLED) {
        f->m.held_cancelled++;
        report_status(dv, WACAST__STATUS__STATUS_CANCELLED, "cancelled",
                      "the campaign was cancelled");
        return;
    }
    /* Published before Redis lost data (a margin for clocks apart): the
     * markers may have gone back in time, PostgreSQL has not. */
    if (f->loss_at_us && dv->job->queued_at_us <= f->loss_at_us + 2000000) {
        dv->check_doubt = false;
        pg_check(dv);
        return;
    }
    claim(dv, false);
}

static void on_read(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    fleet *f = dv->f;
    if (dv->state != DEV_READING)
        return;
    /* A lane removed since the list was read answers NOGROUP: not an error. */
    bool gone = reply && reply->type == REDIS_REPLY_ERROR && strstr(reply->str, "NOGROUP");
    if (gone || !reply_ok(f, reply)) {
        if (!gone) {
            /* The entry may have been delivered with the reply lost: look at
             * our pending lists first next time. */
            dv->pel_mode = true;
            set_state(dv, DEV_IDLE);
            arm_timer(dv, 500000);
            return;
        }
        dv->lanes_stale = true; /* the lane was removed (drained) meanwhile */
    }
    /* [[stream, [[id, [field, value, ...]], ...]]] or nil */
    redisReply *entries = NULL;
    if (!gone && reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
        reply->element[0]->type == REDIS_REPLY_ARRAY && reply->element[0]->elements == 2)
        entries = reply->element[0]->element[1];
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0) {
        /* This lane has nothing (pending, or new): the next one. */
        dv->empty_run++;
        dv->lane_cur++;
        set_state(dv, DEV_IDLE);
        if (dv->empty_run < dv->nlanes) {
            device_step(dv);
            return;
        }
        dv->empty_run = 0;
        if (dv->pel_mode) {
            /* No pending entry in any lane: read new ones. */
            dv->pel_mode = false;
            device_step(dv);
            return;
        }
        /* Every lane is empty: wait for a wake-up (one with "+" when a lane
         * is new; the idle poll re-reads the set too). A wake-up that came
         * during this rotation may be for a lane already looked at: one more
         * rotation then. */
        if (dv->woken && dv->want) {
            dv->woken = false;
            device_step(dv);
            return;
        }
        if (!dv->want)
            device_release(dv);
        else if (dv->later_next_ms)
            arm_timer(dv, (dv->later_next_ms - wc_now_us() / 1000) * 1000);
        return;
    }
    dv->empty_run = 0;
    dv->lane_cur++; /* the next read takes the next campaign's lane */
    redisReply *e = entries->element[0];
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING) {
        wc_error("device %s: unexpected outbox entry shape", dv->id);
        set_state(dv, DEV_IDLE);
        return;
    }
    char entry_id[48];
    snprintf(entry_id, sizeof entry_id, "%s", e->element[0]->str);
    if (strcmp(entry_id, dv->entry_id) != 0)
        dv->attempts = 0; /* a different entry than the one we retried */
    snprintf(dv->entry_id, sizeof dv->entry_id, "%s", entry_id);
    redisReply *fields = e->element[1];
    Wacast__Job *job = NULL;
    const uint8_t *payload = NULL;
    size_t payload_len = 0;
    if (fields->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < fields->elements; i += 2) {
            redisReply *k = fields->element[i], *v = fields->element[i + 1];
            if (k->type == REDIS_REPLY_STRING && !strcmp(k->str, "j") &&
                v->type == REDIS_REPLY_STRING) {
                payload = (const uint8_t *)v->str;
                payload_len = v->len;
                job = wacast__job__unpack(NULL, v->len, payload);
            }
        }
    }
    if (!job) {
        /* A deleted entry (nil fields) or a corrupt payload: ack it away. */
        wc_error("device %s: outbox entry %s has no valid job; dropping it", dv->id, entry_id);
        dv->job = NULL;
        drop_entry(dv);
        return;
    }
    dv->job = job;
    if (job->attempts_made > dv->attempts)
        dv->attempts = job->attempts_made; /* a re-queued job keeps its count */
    consider(dv, payload, payload_len);
}

/* A lane read empty of new entries is removed when it holds nothing at all
 * (the router recreates it with the campaign's next message). KEYS[1] lane,
 * KEYS[2] lanes; ARGV[1] campaign. */
static const char *LANE_DRAINED =
    "if redis.call('XLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) "
    "redis.call('SREM', KEYS[2], ARGV[1]) return 1 end return 0";

static void lane_drained(device *dv, const char *campaign)
{
    char lane[160], lanes[128];
    wc_key_lane(lane, sizeof lane, dv->id, campaign);
    wc_key_lanes(lanes, sizeof lanes, dv->id);
    const char *argv[] = {"EVAL", LANE_DRAINED, "2", lane, lanes, campaign};
    if (wc_redis_commandv(dv->f->d.redis, on_void_device, dv, 6, argv, NULL) < 0)
        dv->f->m.redis_errors++;
}

static void on_lanes(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (dv->state != DEV_READING)
        return;
    set_state(dv, DEV_IDLE);
    if (!reply_ok(dv->f, reply) || reply->type != REDIS_REPLY_ARRAY) {
        arm_timer(dv, 500000);
        return;
    }
    set_lanes(dv, reply);
    dv->lanes_stale = false;
    dv->empty_run = 0;
    device_step(dv);
}

static void on_report_reply(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (!reply_ok(dv->f, reply))
        dv->reply_failed = true;
    if (--dv->pending_replies > 0)
        return;
    if (dv->state != DEV_REPORTING)
        return;
    if (dv->reply_failed)
        dv->pel_mode = true; /* the entry may still be pending: re-read it */
    free_job(dv);
    set_state(dv, DEV_IDLE);
    device_step(dv);
}

/* Records an outcome: marker, results stream, ack, next send time. A result
 * with status UNSPECIFIED only acknowledges (duplicate or corrupt entry). */
/* Records an outcome in one script: the marker ("d:" + result), the result
 * on the results stream, the ack and delete of the lane entry, the next send
 * time, and the day's count. KEYS[1] marker, KEYS[2] results, KEYS[3] lane,
 * KEYS[4] next, KEYS[5] day count; ARGV[1] marker value ("" for none),
 * ARGV[2] marker ttl s, ARGV[3] group, ARGV[4] entry id ("" for none),
 * ARGV[5] next send time, ARGV[6] "1" to count the send, ARGV[7] "1" to set
 * the marker without a result on the stream. */
static const char *REPORT_SCRIPT =
    "if ARGV[1] ~= '' then "
    " redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) "
    " if ARGV[7] ~= '1' then "
    "  redis.call('XADD', KEYS[2], '*', 'r', string.sub(ARGV[1], 3)) "
    " end "
    "end "
    "if ARGV[4] ~= '' then "
    " redis.call('XACK', KEYS[3], ARGV[3], ARGV[4]) "
    " redis.call('XDEL', KEYS[3], ARGV[4]) "
    "end "
    "redis.call('SET', KEYS[4], ARGV[5], 'PX', 86400000) "
    "if ARGV[6] == '1' and redis.call('INCR', KEYS[5]) == 1 then "
    " redis.call('EXPIRE', KEYS[5], 172800) end "
    "return 1";

/* Records an outcome. A result with status UNSPECIFIED only acknowledges
 * (duplicate or corrupt entry). */
static void report(device *dv, const Wacast__Result *res)
{
    fleet *f = dv->f;
    wc_redis *rc = f->d.redis;
    set_state(dv, DEV_REPORTING);
    dv->pending_replies = 0;
    dv->reply_failed = false;
    char lane[160], key[64], ttl[32], next_key[128], next_val[32], day_key[128];
    wc_key_lane(lane, sizeof lane, dv->id, dv->entry_lane);
    wc_key_next(next_key, sizeof next_key, dv->id);
    wc_key_day(day_key, sizeof day_key, dv->id, dv->day[0] ? dv->day : "-");
    snprintf(next_val, sizeof next_val, "%" PRId64, dv->next_at_us);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.idempotency_ttl_s);
    wc_key_msg(key, sizeof key, (long long)res->message_id);
    uint8_t *buf = NULL;
    size_t len = 0;
    if (res->status != WACAST__STATUS__STATUS_UNSPECIFIED) {
        len = wacast__result__get_packed_size(res);
        buf = malloc(len + 2);
        if (!buf)
            abort();
        buf[0] = 'd';
        buf[1] = ':';
        wacast__result__pack(res, buf + 2);
        /* Kept until the next outcome: if this report is lost, the re-read
         * entry replays it instead of sending again. */
        free(dv->done_result);
        dv->done_result = malloc(len ? len : 1);
        if (!dv->done_result)
            abort();
        memcpy(dv->done_result, buf + 2, len);
        dv->done_len = len;
        dv->done_id = res->message_id;
        len += 2;
    }
    const char *count = dv->count_in_report ? "1" : "0";
    const char *quiet = dv->report_quiet ? "1" : "0";
    dv->count_in_report = false;
    dv->report_quiet = false;
    const char *argv[] = {"EVAL",   REPORT_SCRIPT,  "5",
                          key,      WC_KEY_RESULTS, lane,
                          next_key, day_key,        buf ? (const char *)buf : "",
                          ttl,      WC_GROUP_SEND,  dv->entry_id,
                          next_val, count,          quiet};
    size_t lens[] = {4,
                     strlen(REPORT_SCRIPT),
                     1,
                     strlen(key),
                     strlen(WC_KEY_RESULTS),
                     strlen(lane),
                     strlen(next_key),
                     strlen(day_key),
                     len,
                     strlen(ttl),
                     strlen(WC_GROUP_SEND),
                     strlen(dv->entry_id),
                     strlen(next_val),
                     1,
                     1};
    int rcode = wc_redis_commandv(rc, on_report_reply, dv, 15, argv, lens);
    dv->pending_replies += rcode == 0;
    free(buf);
    if (res->status == WACAST__STATUS__STATUS_SENT && dv->gap_ms && dv->job &&
        dv->job->message_id == res->message_id && dv->job->recipient[0]) {
        /* The recipient's gap runs from the send (the claim started it). */
        char rkey[192];
        wc_key_recipient(rkey, sizeof rkey, dv->id, dv->job->recipient);
        if (wc_redis_command(rc, on_void_device, dv, "SET %s %" PRId64 " PX %u", rkey,
                             res->message_id, dv->gap_ms) < 0)
            f->m.redis_errors++;
    }
    if (rcode != 0)
        dv->reply_failed = true;
    if (dv->pending_replies == 0) {
        dv->pel_mode = true;
        free_job(dv);
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
    }
}

/* ---- rests: daily cap, circuit breaker ------------------------------------------------- */

static void format_local_ms(char *out, size_t n, int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The device stops sending until until_ms: its row says why and when it
 * comes back (the router gives it nothing meanwhile), and what its outbox
 * holds goes back to the router for the user's other devices. */
static void enter_rest(device *dv, int kind, int64_t until_ms, const char *reason)
{
    dv->rest = (uint8_t)kind;
    dv->rest_started = true;
    dv->rest_until_ms = until_ms;
    set_row(dv, "online", reason);
    mark_dirty(dv);
    wc_info("device %s rests: %s", dv->id, reason);
    handback_outbox(dv);
}

static void leave_rest(device *dv, const char *why)
{
    if (!dv->rest)
        return;
    wc_info("device %s: rest over (%s)", dv->id, why);
    dv->rest = REST_NONE;
    dv->rest_started = false;
    dv->rest_until_ms = 0;
    set_row(dv, dv->online ? "online" : "offline", NULL);
    mark_dirty(dv);
    if (dv->state == DEV_RESTING) {
        evtimer_del(dv->timer);
        dv->pel_mode = true;
        set_state(dv, DEV_IDLE);
        device_step(dv);
    }
}

/* Opens the breaker after consecutive transient failures (or a failed probe):
 * rests grow from WACAST_BREAKER_REST_MS, doubling, up to the max. */
static void open_breaker(device *dv, const wc_send_result *sr)
{
    fleet *f = dv->f;
    if (dv->breaker_rest_ms == 0)
        dv->breaker_rest_ms = (uint32_t)f->cfg.breaker_rest_ms;
    else if (dv->probing)
        dv->breaker_rest_ms = dv->breaker_rest_ms * 2 > (uint32_t)f->cfg.breaker_rest_max_ms
                                  ? (uint32_t)f->cfg.breaker_rest_max_ms
                                  : dv->breaker_rest_ms * 2;
    f->m.breaker_opened++;
    int64_t until = wc_now_us() / 1000 + dv->breaker_rest_ms;
    char at[32], reason[512];
    format_local_ms(at, sizeof at, until);
    snprintf(reason, sizeof reason,
             "circuit open after %u consecutive failure(s), last %s: %.200s; probing at %s",
             dv->failures, sr->error_code, sr->error_message, at);
    dv->probing = false;
    /* A rest starts at the next step (device_step), once the message in hand is settled. */
    dv->rest = REST_BREAKER;
    dv->rest_started = false;
    dv->rest_until_ms = until;
    set_row(dv, "online", reason);
    mark_dirty(dv);
    wc_warn("device %s: %s", dv->id, reason);
}

/* Before each read: is the device resting? Starts, keeps or ends a rest. */
static bool resting(device *dv)
{
    fleet *f = dv->f;
    int64_t now_ms = wc_now_us() / 1000;
    if (!dv->rest && dv->cap >= 0 && dv->sent_today >= (uint32_t)dv->cap) {
        /* Today's cap is reached: rest until the device's next local midnight
         * (or until the new day is read, when that midnight has passed). */
        int64_t until = dv->day_end_ms > now_ms ? dv->day_end_ms : now_ms + f->cfg.refresh_ms;
        char at[32], reason[256];
        format_local_ms(at, sizeof at, until);
        snprintf(reason, sizeof reason, "daily limit of %d reached (%u sent on %s); resumes at %s",
                 dv->cap, dv->sent_today, dv->day, at);
        f->m.daily_cap_rests++;
        enter_rest(dv, REST_CAP, until, reason);
    } else if (dv->rest && !dv->rest_started && dv->rest_until_ms > now_ms) {
        /* The breaker opened on the last send: start the rest now. */
        char *reason = dv->row_reason ? strdup(dv->row_reason) : NULL;
        enter_rest(dv, dv->rest, dv->rest_until_ms, reason);
        free(reason);
    }
    if (dv->rest && dv->rest_until_ms <= now_ms) {
        if (dv->rest == REST_BREAKER) {
            /* Half open: the next send decides. Routable again (its rest is over). */
            dv->rest = REST_NONE;
            dv->rest_started = false;
            dv->probing = true;
            mark_dirty(dv);
            wc_info("device %s: breaker half open; the next send is a probe", dv->id);
        } else if (dv->cap < 0 || dv->sent_today < (uint32_t)dv->cap) {
            leave_rest(dv, "new day");
        } else {
            dv->rest_until_ms = now_ms + f->cfg.refresh_ms;
        }
    }
    if (!dv->rest)
        return false;
    set_state(dv, DEV_RESTING);
    int64_t wait_ms = dv->rest_until_ms - now_ms;
    arm_timer(dv, (wait_ms > 60000 ? 60000 : wait_ms) * 1000);
    return true;
}

/* Moves a resting device forward: release, wait, or read the next entry. */
static void device_step(device *dv)
{
    fleet *f = dv->f;
    if (dv->state != DEV_IDLE && dv->state != DEV_PACING && dv->state != DEV_RESTING)
        return;
    if (!dv->want) {
        device_release(dv);
        return;
    }
    if (dv->down_status) {
        const char *status = dv->down_status;
        dv->down_status = NULL;
        close_transport(dv);
        device_down(dv, status, dv->down_reason);
        return;
    }
    if (dv->reopen) {
        dv->reopen = false;
        wc_info("device %s: settings changed; reconnecting its transport", dv->id);
        close_transport(dv);
        open_transport(dv);
        return;
    }
    if (!wc_redis_ready(f->d.redis) || !wc_epoch_settled(f->epoch)) {
        /* Not until the fence check after the (re)connect has said whether
         * Redis lost data (its markers could have gone back in time). */
        set_state(dv, DEV_IDLE);
        arm_timer(dv, wc_redis_ready(f->d.redis) ? 50000 : 500000);
        return;
    }
    if (resting(dv))
        return;
    int64_t wait = dv->next_at_us - wc_now_us();
    if (wait > 0) {
        set_state(dv, DEV_PACING);
        arm_timer(dv, wait);
        return;
    }
    int rc;
    set_state(dv, DEV_READING);
    if (dv->lanes_stale) {
        /* Which campaigns have messages for this device (a new one may). */
        char lanes[128];
        wc_key_lanes(lanes, sizeof lanes, dv->id);
        rc = wc_redis_command(f->d.redis, on_lanes, dv, "SMEMBERS %s", lanes);
    } else if (dv->later_next_ms && wc_now_us() / 1000 >= dv->later_next_ms) {
        /* Messages whose wait is over go back to their lanes first. */
        char later[128], lanes[128], prefix[128], now[32];
        wc_key_later(later, sizeof later, dv->id);
        wc_key_lanes(lanes, sizeof lanes, dv->id);
        wc_key_lane_prefix(prefix, sizeof prefix, dv->id);
        snprintf(now, sizeof now, "%" PRId64, wc_now_us() / 1000);
        const char *argv[] = {"EVAL", LATER_PROMOTE, "2", later, lanes, now, WC_GROUP_SEND, prefix};
        rc = wc_redis_commandv(f->d.redis, on_promoted, dv, 8, argv, NULL);
    } else if (dv->nlanes == 0) {
        /* Nothing queued for this device: wait for a wake-up. */
        dv->pel_mode = false;
        set_state(dv, DEV_IDLE);
        if (dv->later_next_ms)
            arm_timer(dv, (dv->later_next_ms - wc_now_us() / 1000) * 1000);
        return;
    } else {
        /* Round-robin over the device's campaigns: one entry from the next lane. */
        char lane[160];
        snprintf(dv->entry_lane, sizeof dv->entry_lane, "%s", dv->lanes[dv->lane_cur % dv->nlanes]);
        wc_key_lane(lane, sizeof lane, dv->id, dv->entry_lane);
        rc = wc_redis_command(f->d.redis, on_read, dv,
                              "XREADGROUP GROUP %s %s COUNT 1 STREAMS %s %s", WC_GROUP_SEND,
                              f->cfg.c.instance_id, lane, dv->pel_mode ? "0" : ">");
    }
    if (rc < 0) {
        set_state(dv, DEV_IDLE);
        arm_timer(dv, 500000);
    }
}

static void on_device_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    device *dv = arg;
    if (dv->state == DEV_OFFLINE) {
        if (!dv->want) {
            device_release(dv);
            return;
        }
        open_transport(dv);
        return;
    }
    if (dv->state == DEV_PACING || dv->state == DEV_RESTING)
        set_state(dv, DEV_IDLE);
    device_step(dv);
}

/* ---- fleet: device list, live senders, leases ------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The live sender with the highest hash of (sender, device) holds it. */
static bool falls_to_us(fleet *f, const device *dv)
{
    uint64_t best = 0;
    const char *winner = NULL;
    for (size_t i = 0; i < f->nlive; i++) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "%s/%s", f->live[i], dv->id);
        uint64_t h = wc_hash64(buf, (size_t)n, 0);
        if (!winner || h > best) {
            best = h;
            winner = f->live[i];
        }
    }
    return winner && strcmp(winner, f->cfg.c.instance_id) == 0;
}

static bool wins(fleet *f, device *dv)
{
    if (f->d.stopping || !dv->seen || f->nlive == 0)
        return false;
    /* The hashes change only with the set of live senders. */
    if (dv->won_gen == f->live_gen)
        return dv->won;
    dv->won = falls_to_us(f, dv);
    dv->won_gen = f->live_gen;
    return dv->won;
}

static void free_device(device *dv)
{
    close_transport(dv);
    free_job(dv);
    event_free(dv->timer);
    free(dv->settings);
    free(dv->credentials_hex);
    free(dv->done_result);
    free(dv->row_reason);
    free(dv->lanes);
    free(dv);
}

/* A device whose row was deleted: once no sender holds it, the sender it
 * would fall to hands its outbox (lanes, later set) back to the router, so
 * its campaigns' messages go out from the user's other devices instead of
 * waiting for it forever; then every sender forgets it (a minute later, when
 * no reply about it can still be in flight). */
static bool forget_if_gone(fleet *f, device *dv)
{
    if (dv->seen) {
        dv->gone_us = 0;
        return false;
    }
    int64_t now = wc_mono_us();
    if (!dv->gone_us)
        dv->gone_us = now;
    if (dv->state != DEV_UNOWNED || dv->handing_back || dv->row_dirty || dv->job)
        return false;
    if (!dv->gone_handled && f->nlive > 0 && falls_to_us(f, dv)) {
        dv->gone_handled = true;
        f->m.devices_gone++;
        wc_info("device %s was deleted: its queued messages go back to the router", dv->id);
        handback_outbox(dv);
        return false;
    }
    if (now - dv->gone_us < 60000000)
        return false;
    wc_map_del(&f->devices, dv->id);
    free_device(dv);
    return true;
}

static void rebalance(fleet *f)
{
    for (size_t i = 0; i < f->devices.cap; i++) {
        if (!wc_map_live(&f->devices, i))
            continue;
        device *dv = f->devices.slots[i].value;
        if (forget_if_gone(f, dv))
            continue;
        dv->want = f->heartbeat_ok && wins(f, dv);
        if (dv->want && dv->state == DEV_UNOWNED)
            device_acquire(dv);
        else if (!dv->want && (dv->state == DEV_IDLE || dv->state == DEV_PACING ||
                               dv->state == DEV_OFFLINE || dv->state == DEV_RESTING))
            device_release(dv);
    }
}

static void on_devices(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    fleet *f = arg;
    f->refreshing = false;
    if (!res) {
        f->m.pg_errors++;
        wc_warn("reading devices: %s", err);
        return;
    }
    for (size_t i = 0; i < f->devices.cap; i++)
        if (wc_map_live(&f->devices, i))
            ((device *)f->devices.slots[i].value)->seen = false;
    int n = PQntuples(res);
    for (int r = 0; r < n; r++) {
        const char *id = PQgetvalue(res, r, 0);
        device *dv = wc_map_get(&f->devices, id);
        if (!dv) {
            dv = calloc(1, sizeof *dv);
            if (!dv)
                abort();
            dv->f = f;
            dv->cap = -1;
            snprintf(dv->id, sizeof dv->id, "%s", id);
            dv->timer = evtimer_new(f->d.base, on_device_timer, dv);
            if (!dv->timer || wc_map_put(&f->devices, dv->id, dv) < 0)
                abort();
            /* Health goes on from what the last holder wrote. */
            dv->health = dv->health_written = (uint8_t)atoi(PQgetvalue(res, r, 10));
            dv->ok_avg = dv->health / 100.0f;
        }
        dv->seen = true;
        const char *platform = PQgetvalue(res, r, 1);
        if (strcmp(dv->platform, platform) != 0) {
            if (dv->platform[0])
                dv->reopen = true;
            snprintf(dv->platform, sizeof dv->platform, "%s", platform);
        }
        dv->min_delay_ms = (uint32_t)strtoul(PQgetvalue(res, r, 2), NULL, 10);
        dv->max_delay_ms = (uint32_t)strtoul(PQgetvalue(res, r, 3), NULL, 10);
        const char *settings = PQgetvalue(res, r, 4);
        if (!dv->settings || strcmp(dv->settings, settings) != 0) {
            if (dv->settings)
                dv->reopen = true;
            free(dv->settings);
            dv->settings = strdup(settings);
        }
        const char *creds = PQgetvalue(res, r, 5);
        if (!dv->credentials_hex || strcmp(dv->credentials_hex, creds) != 0) {
            /* Rotated or replaced credentials take effect at the next rest. */
            if (dv->credentials_hex)
                dv->reopen = true;
            free(dv->credentials_hex);
            dv->credentials_hex = strdup(creds);
        }
        const char *day = PQgetvalue(res, r, 6);
        dv->day_end_ms = strtoll(PQgetvalue(res, r, 7), NULL, 10);
        int32_t cap = (int32_t)strtol(PQgetvalue(res, r, 8), NULL, 10);
        dv->gap_ms = (uint32_t)strtoul(PQgetvalue(res, r, 9), NULL, 10);
        bool new_day = strcmp(dv->day, day) != 0;
        if (new_day) {
            bool had_day = dv->day[0] != '\0';
            snprintf(dv->day, sizeof dv->day, "%s", day);
            dv->sent_today = 0;
            if (had_day && dv->state != DEV_UNOWNED && dv->state != DEV_ACQUIRING)
                load_day_count(dv);
        }
        if (cap != dv->cap) {
            dv->cap = cap;
            mark_dirty(dv);
        }
        if (dv->rest == REST_CAP && (dv->cap < 0 || dv->sent_today < (uint32_t)dv->cap))
            leave_rest(dv, new_day ? "new day" : "daily limit raised");
        /* A changed transport setting takes effect at the device's next rest. */
        if (dv->reopen && dv->state == DEV_OFFLINE) {
            dv->reopen = false;
            evtimer_del(dv->timer);
            dv->open_backoff_ms = 0;
            open_transport(dv);
        }
    }
    rebalance(f);
}

static void on_refresh(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet *f = arg;
    if (f->refreshing || f->d.stopping)
        return;
    /* With each device: its local day and next local midnight, today's cap
     * (the smaller of daily_limit and the warm-up schedule's entry for the
     * day), the recipient gap and its last health score. */
    static const char *sql =
        "SELECT id, platform, (min_delay_seconds * 1000)::bigint,"
        " (max_delay_seconds * 1000)::bigint, settings::text,"
        " coalesce(encode(credentials, 'hex'), ''), l.today::text,"
        " (extract(epoch FROM (l.today + 1)::timestamp AT TIME ZONE time_zone) * 1000)::bigint,"
        " coalesce(least(daily_limit, CASE WHEN l.n <= array_length(warmup_schedule, 1)"
        "   THEN warmup_schedule[l.n] END), -1),"
        " (recipient_gap_seconds * 1000)::bigint, health_score"
        " FROM user_devices, LATERAL (SELECT (now() AT TIME ZONE time_zone)::date AS today) t,"
        " LATERAL (SELECT t.today, greatest(1, t.today - coalesce(warmup_started_on,"
        "   (created_at AT TIME ZONE time_zone)::date) + 1) AS n) l";
    if (wc_pg_query(f->d.pg, sql, 0, NULL, on_devices, f) == 0)
        f->refreshing = true;
}

static void on_live(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    fleet *f = arg;
    if (!reply_ok(f, reply) || reply->type != REDIS_REPLY_ARRAY) {
        f->heartbeat_ok = false;
        return;
    }
    char **live = calloc(reply->elements + 1, sizeof *live);
    if (!live)
        abort();
    size_t nlive = 0;
    for (size_t i = 0; i < reply->elements; i++)
        if (reply->element[i]->type == REDIS_REPLY_STRING)
            live[nlive++] = strdup(reply->element[i]->str);
    qsort(live, nlive, sizeof *live, cmp_str);
    bool same = nlive == f->nlive;
    for (size_t i = 0; same && i < nlive; i++)
        same = !strcmp(live[i], f->live[i]);
    for (size_t i = 0; i < f->nlive; i++)
        free(f->live[i]);
    free(f->live);
    f->live = live;
    f->nlive = nlive;
    if (!same)
        f->live_gen++;
    f->heartbeat_ok = true;
    rebalance(f);
}

static void on_renewed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    fleet *f = dv->f;
    dv->renewing = false;
    if (dv->state == DEV_UNOWNED || dv->state == DEV_ACQUIRING)
        return;
    if (!reply_ok(f, reply))
        return; /* Redis trouble: lease_until runs out and sends stop by themselves */
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer == 1) {
        dv->lease_until_us = dv->lease_sent_us + (f->cfg.lease_ttl_ms * 1000) * 2 / 3;
        return;
    }
    /* Expired or someone else's now. A send in flight cannot be recalled; its
     * callback finds the device unowned and drops the result, and the message's
     * marker resolves it on the next owner. */
    device_lost(dv);
}

static void on_void(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    fleet *f = arg;
    reply_ok(f, reply);
}

static void on_last_seen(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    fleet *f = arg;
    f->status_flushing = false;
    if (!res) {
        f->m.pg_errors++;
        wc_warn("updating last_seen: %s", err);
    }
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet *f = arg;
    if (f->d.stopping)
        return;
    if (!wc_redis_ready(f->d.redis)) {
        /* Not connected yet (or again): try again shortly, not a period later. */
        if (f->first_beat && !evtimer_pending(f->first_beat, NULL)) {
            struct timeval tv = {0, 100000};
            evtimer_add(f->first_beat, &tv);
        }
        return;
    }
    long long now_ms = wc_now_us() / 1000;
    char score[32], min[32], old[32], ttl[32];
    snprintf(score, sizeof score, "%lld", now_ms);
    snprintf(min, sizeof min, "%lld", now_ms - f->cfg.lease_ttl_ms);
    snprintf(old, sizeof old, "(%lld", now_ms - 10 * f->cfg.lease_ttl_ms);
    snprintf(ttl, sizeof ttl, "%ld", f->cfg.lease_ttl_ms);
    int rc = wc_redis_command(f->d.redis, on_void, f, "ZADD %s %s %s", WC_KEY_SENDERS, score,
                              f->cfg.c.instance_id);
    rc |= wc_redis_command(f->d.redis, on_void, f, "ZREMRANGEBYSCORE %s -inf %s", WC_KEY_SENDERS,
                           old);
    rc |= wc_redis_command(f->d.redis, on_live, f, "ZRANGEBYSCORE %s %s +inf", WC_KEY_SENDERS, min);
    if (rc != 0)
        return;
    /* Renew every lease we hold, and tell PostgreSQL the online ones are alive. */
    struct evbuffer *ids = evbuffer_new();
    size_t nids = 0;
    for (size_t i = 0; i < f->devices.cap; i++) {
        if (!wc_map_live(&f->devices, i))
            continue;
        device *dv = f->devices.slots[i].value;
        if (dv->state == DEV_UNOWNED || dv->state == DEV_ACQUIRING)
            continue;
        char lease[128];
        wc_key_lease(lease, sizeof lease, dv->id);
        const char *argv[] = {"EVAL", LEASE_RENEW, "1", lease, f->cfg.c.instance_id, ttl};
        /* One renewal in flight at a time (its send time dates the lease). */
        if (!dv->renewing) {
            dv->lease_sent_us = wc_mono_us();
            if (wc_redis_commandv(f->d.redis, on_renewed, dv, 6, argv, NULL) < 0)
                f->m.redis_errors++;
            else
                dv->renewing = true;
        }
        if (dv->disconnects > 0.01f) {
            /* Disconnects weigh less as they age (half-life ~10 minutes). */
            dv->disconnects *= 0.996f;
            health_update(dv);
        }
        if (dv->online) {
            evbuffer_add_printf(ids, "%s%s", nids ? "," : "{", dv->id);
            nids++;
        }
    }
    /* Written by the row writer, one statement at a time (two statements on
     * the same rows at once could deadlock). */
    /* last_seen every third heartbeat: well inside the router's grace. */
    if (nids && f->heartbeats++ % 3 == 0) {
        evbuffer_add(ids, "}\0", 2);
        if (f->touch_ids)
            evbuffer_free(f->touch_ids);
        f->touch_ids = ids;
    } else {
        evbuffer_free(ids);
    }
}

static void on_status_written(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    fleet *f = arg;
    f->status_flushing = false;
    if (!res) {
        f->m.pg_errors++;
        wc_warn("writing device statuses: %s", err);
        /* Written again with the next batch. */
        for (size_t i = 0; i < f->devices.cap; i++) {
            if (!wc_map_live(&f->devices, i))
                continue;
            device *dv = f->devices.slots[i].value;
            if (dv->state != DEV_UNOWNED && dv->state != DEV_ACQUIRING)
                mark_dirty(dv);
        }
    }
}

/* Appends a text value as a quoted array element. */
static void array_text(struct evbuffer *b, const char *v, bool first)
{
    if (!first)
        evbuffer_add(b, ",", 1);
    evbuffer_add(b, "\"", 1);
    for (const char *p = v ? v : ""; *p; p++) {
        if (*p == '"' || *p == '\\')
            evbuffer_add(b, "\\", 1);
        evbuffer_add(b, p, 1);
    }
    evbuffer_add(b, "\"", 1);
}

/* Writes the rows of devices whose status, reason, rest, health or count
 * changed, in one statement. */
static void on_status_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet *f = arg;
    if (f->status_flushing)
        return;
    if (f->touch_ids) {
        /* Tell PostgreSQL the online devices are alive (the router's view). */
        const char *params[] = {(const char *)evbuffer_pullup(f->touch_ids, -1)};
        if (wc_pg_query(f->d.pg,
                        "UPDATE user_devices SET last_seen = now() WHERE id = ANY($1::uuid[])", 1,
                        params, on_last_seen, f) == 0)
            f->status_flushing = true;
        else
            f->m.pg_errors++;
        evbuffer_free(f->touch_ids);
        f->touch_ids = NULL;
        return;
    }
    if (!f->dirty)
        return;
    struct evbuffer *b[7];
    for (int k = 0; k < 7; k++) {
        b[k] = evbuffer_new();
        evbuffer_add(b[k], "{", 1);
    }
    bool first = true;
    size_t n = 0;
    for (device *dv = f->dirty, *next; dv; dv = next) {
        next = dv->dirty_next;
        dv->dirty_next = NULL;
        dv->row_dirty = false;
        if (!dv->row_status)
            dv->row_status = dv->online ? "online" : "offline";
        const char *sep = first ? "" : ",";
        evbuffer_add_printf(b[0], "%s%s", sep, dv->id);
        array_text(b[1], dv->row_status, first);
        array_text(b[2], dv->row_reason, first);
        evbuffer_add_printf(b[3], "%s%" PRId64, sep, dv->rest ? dv->rest_until_ms : (int64_t)0);
        evbuffer_add_printf(b[4], "%s%u", sep, dv->health);
        evbuffer_add_printf(b[5], "%s%u", sep, dv->sent_today);
        evbuffer_add_printf(b[6], "%s%d", sep, dv->cap);
        dv->health_written = dv->health;
        first = false;
        n++;
    }
    f->dirty = NULL;
    const char *params[7];
    for (int k = 0; k < 7; k++) {
        evbuffer_add(b[k], "}\0", 2);
        params[k] = (const char *)evbuffer_pullup(b[k], -1);
    }
    static const char *sql =
        "UPDATE user_devices d SET status = u.status::device_status,"
        " status_reason = NULLIF(u.reason, ''),"
        " resting_until = CASE WHEN u.rest > 0 THEN to_timestamp(u.rest / 1000.0) END,"
        " health_score = u.health, sent_today = u.sent, cap_today = NULLIF(u.cap, -1),"
        " last_seen = now()"
        " FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::int[],"
        " $7::int[]) AS u(id, status, reason, rest, health, sent, cap) WHERE d.id = u.id";
    if (wc_pg_query(f->d.pg, sql, 7, params, on_status_written, f) == 0)
        f->status_flushing = true;
    else
        f->m.pg_errors++;
    wc_debug("writing %zu device row(s)", n);
    for (int k = 0; k < 7; k++)
        evbuffer_free(b[k]);
}

static void on_holds(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    fleet *f = arg;
    f->holds_reading = false;
    if (!res) {
        f->m.pg_errors++;
        wc_warn("reading campaign holds: %s", err);
        return;
    }
    wc_map_free(&f->holds);
    wc_map_init(&f->holds);
    for (int i = 0; i < PQntuples(res); i++) {
        char kind = PQgetvalue(res, i, 1)[0];
        uintptr_t hold = kind == 'p' ? HOLD_PAUSED : kind == 'w' ? HOLD_WINDOW : HOLD_CANCELLED;
        if (wc_map_put(&f->holds, PQgetvalue(res, i, 0), (void *)hold) < 0)
            abort();
    }
}

/* Pause must stop sends within a second, whoever paused (dashboard or admin
 * API): the list is small and re-read often. */
static void on_holds_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet *f = arg;
    if (f->holds_reading)
        return;
    if (wc_pg_query(f->d.pg,
                    "SELECT id, status::text FROM campaigns WHERE status = 'paused' OR (status = "
                    "'cancelled'"
                    " AND coalesce(finished_at, updated_at) > now() - interval '7 days')"
                    " UNION ALL SELECT id, 'window' FROM campaigns WHERE status IN ('triggered', "
                    "'processing') AND send_window_start IS NOT NULL"
                    " AND NOT wacast_in_window(send_window_start, send_window_end, time_zone)",
                    0, NULL, on_holds, f) == 0)
        f->holds_reading = true;
}

static void wake_device(fleet *f, const char *msg, size_t len)
{
    char id[40];
    bool new_lane = len > 0 && msg[len - 1] == '+';
    if (new_lane)
        len--;
    if (len >= sizeof id)
        return;
    memcpy(id, msg, len);
    id[len] = '\0';
    device *dv = wc_map_get(&f->devices, id);
    if (!dv)
        return;
    if (new_lane)
        dv->lanes_stale = true;
    if (dv->state == DEV_IDLE)
        device_step(dv);
    else if (dv->state != DEV_UNOWNED && dv->state != DEV_ACQUIRING)
        dv->woken = true;
}

/* "dev[+],dev[+],...": devices with new work ('+': in a lane new to them). */
static void on_wake(wc_redis *r, const char *channel, const char *msg, size_t len, void *arg)
{
    (void)r;
    (void)channel;
    fleet *f = arg;
    while (len > 0) {
        const char *comma = memchr(msg, ',', len);
        size_t n = comma ? (size_t)(comma - msg) : len;
        wake_device(f, msg, n);
        if (!comma)
            break;
        len -= n + 1;
        msg = comma + 1;
    }
}

static void on_idle_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet *f = arg;
    /* Idle devices re-read their set of lanes (a lost "new lane" wake-up)
     * every sixth poll: no burst of one command per device every poll. */
    bool lanes_round = f->polls++ % 6 == 0;
    for (size_t i = 0; i < f->devices.cap; i++) {
        if (!wc_map_live(&f->devices, i))
            continue;
        device *dv = f->devices.slots[i].value;
        if (dv->state == DEV_OFFLINE || dv->state == DEV_RESTING) {
            /* Jobs routed here before the router saw the device leave. */
            handback_outbox(dv);
            continue;
        }
        if (dv->state != DEV_UNOWNED && dv->state != DEV_ACQUIRING &&
            (lanes_round || dv->state != DEV_IDLE))
            dv->lanes_stale = true; /* a lost "new lane" wake-up is caught here */
        bool idle = dv->state == DEV_IDLE && !evtimer_pending(dv->timer, NULL);
        dv->idle_polls = idle ? (uint8_t)(dv->idle_polls < 255 ? dv->idle_polls + 1 : 255) : 0;
        if (idle && dv->idle_polls == 6) {
            /* Idle for six polls: lanes left empty are removed (the router
             * recreates one with its campaign's next message). */
            for (uint16_t k = 0; k < dv->nlanes; k++)
                lane_drained(dv, dv->lanes[k]);
        }
        if (dv->state == DEV_IDLE && !evtimer_pending(dv->timer, NULL)) {
            /* An idle device also re-checks its pending lists: an entry whose
             * delivery reply was lost is never left behind. */
            dv->pel_mode = true;
            device_step(dv);
        }
    }
}

/* ---- Redis lost data ------------------------------------------------------------------- */

/* Puts back what a held device's keys said before Redis lost it, from this
 * sender's memory: the next send time and the day's count never go back.
 * KEYS[1] next, KEYS[2] day count; ARGV[1] next send time (us), ARGV[2]
 * sends today. */
static const char *RESTORE_DEVICE =
    "if (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) < tonumber(ARGV[1]) then "
    " redis.call('SET', KEYS[1], ARGV[1], 'PX', 86400000) end "
    "if ARGV[2] ~= '0' and (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) < tonumber(ARGV[2]) "
    "then redis.call('SET', KEYS[2], ARGV[2], 'EX', 172800) end "
    "return 1";

/* After every fence check (wc_epoch.c). On a loss this sender had not seen:
 * jobs published up to the loss are checked against PostgreSQL before they
 * are sent; held devices keep their pacing and counts from memory (written
 * back to Redis) and their leases (a missing lease is taken again by the
 * heartbeat, sent now); every device re-reads its pending entries. */
static void on_fence_checked(void *arg, const wc_epoch_state *st)
{
    fleet *f = arg;
    if (st->loss_at_ms > 0 && st->loss_at_ms * 1000 > f->loss_at_us)
        f->loss_at_us = st->loss_at_ms * 1000;
    if (!st->recovering)
        return;
    f->m.redis_loss_recoveries++;
    f->loss_seen_us = wc_now_us();
    size_t n = 0;
    for (size_t i = 0; i < f->devices.cap; i++) {
        if (!wc_map_live(&f->devices, i))
            continue;
        device *dv = f->devices.slots[i].value;
        if (dv->state == DEV_UNOWNED || dv->state == DEV_ACQUIRING)
            continue;
        char next[128], day[128], next_val[32], sent[16];
        wc_key_next(next, sizeof next, dv->id);
        wc_key_day(day, sizeof day, dv->id, dv->day[0] ? dv->day : "-");
        snprintf(next_val, sizeof next_val, "%" PRId64, dv->next_at_us);
        snprintf(sent, sizeof sent, "%u", dv->day[0] ? dv->sent_today : 0);
        const char *argv[] = {"EVAL", RESTORE_DEVICE, "2", next, day, next_val, sent};
        if (wc_redis_commandv(f->d.redis, on_void, f, 7, argv, NULL) < 0)
            f->m.redis_errors++;
        dv->pel_mode = true;
        dv->lanes_stale = true;
        n++;
    }
    wc_warn("recovering from a Redis loss found at %" PRId64 " ms: %zu held device(s) keep their "
            "pacing; jobs published before it are checked against PostgreSQL",
            st->loss_at_ms, n);
    on_heartbeat(-1, 0, f);
}

/* ---- shutdown --------------------------------------------------------------------------- */

static void on_left(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)reply;
    fleet *f = arg;
    wc_info("stopped: all devices handed back");
    wc_daemon_exit(&f->d);
}

static void maybe_finish_stop(fleet *f)
{
    if (!f->d.stopping || f->held > 0 || f->stop_timer == NULL)
        return;
    event_free(f->stop_timer);
    f->stop_timer = NULL;
    on_status_flush(-1, 0, f);
    if (wc_redis_command(f->d.redis, on_left, f, "ZREM %s %s", WC_KEY_SENDERS,
                         f->cfg.c.instance_id) < 0)
        wc_daemon_exit(&f->d);
}

static void on_stop_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fleet *f = arg;
    wc_warn("stop timeout: %zu device(s) still busy; exiting (their leases expire)", f->held);
    wc_daemon_exit(&f->d);
}

static void on_stop(wc_daemon *d, void *arg)
{
    (void)d;
    fleet *f = arg;
    f->stop_timer = evtimer_new(f->d.base, on_stop_deadline, f);
    struct timeval tv = {f->cfg.stop_timeout_ms / 1000, (f->cfg.stop_timeout_ms % 1000) * 1000};
    evtimer_add(f->stop_timer, &tv);
    wc_info("stopping: handing back %zu device(s)", f->held);
    /* Devices at rest go now; busy ones when their current step ends. */
    rebalance(f);
    maybe_finish_stop(f);
}

/* ---- HTTP --------------------------------------------------------------------------------- */

static bool ready(void *arg, char *why, size_t whylen)
{
    fleet *f = arg;
    return wc_daemon_ready(&f->d, why, whylen);
}

static void metrics(struct evbuffer *out, void *arg)
{
    fleet *f = arg;
#define X(name, help)                                                                              \
    wc_metric(out, "wacast_sender_" #name "_total", "counter", help, (double)f->m.name);
    SENDER_METRICS(X)
#undef X
    size_t by_state[sizeof dev_state_names / sizeof dev_state_names[0]] = {0};
    for (size_t i = 0; i < f->devices.cap; i++)
        if (wc_map_live(&f->devices, i))
            by_state[((device *)f->devices.slots[i].value)->state]++;
    evbuffer_add_printf(out, "# HELP wacast_sender_devices devices known to this sender, by state\n"
                             "# TYPE wacast_sender_devices gauge\n");
    for (size_t s = 0; s < sizeof by_state / sizeof by_state[0]; s++) {
        char labels[64];
        snprintf(labels, sizeof labels, "state=\"%s\"", dev_state_names[s]);
        wc_metric_labeled(out, "wacast_sender_devices", labels, (double)by_state[s]);
    }
    /* Health by band (no label per device: 10,000 devices stay 5 series). */
    static const char *bands[] = {"0-19", "20-39", "40-59", "60-79", "80-100"};
    size_t by_band[5] = {0};
    for (size_t i = 0; i < f->devices.cap; i++) {
        if (!wc_map_live(&f->devices, i))
            continue;
        const device *dv = f->devices.slots[i].value;
        if (dv->state != DEV_UNOWNED && dv->state != DEV_ACQUIRING)
            by_band[dv->health >= 80 ? 4 : dv->health / 20]++;
    }
    evbuffer_add_printf(out, "# HELP wacast_sender_devices_health devices held, by health score\n"
                             "# TYPE wacast_sender_devices_health gauge\n");
    for (size_t b = 0; b < 5; b++) {
        char labels[32];
        snprintf(labels, sizeof labels, "band=\"%s\"", bands[b]);
        wc_metric_labeled(out, "wacast_sender_devices_health", labels, (double)by_band[b]);
    }
    wc_metric(out, "wacast_sender_devices_held", "gauge", "device leases held", (double)f->held);
    wc_metric(out, "wacast_sender_live_senders", "gauge", "senders seen alive", (double)f->nlive);
}

int main(int argc, char **argv)
{
    static fleet f;
    f.live_gen = 1;
    wc_daemon_init(&f.d, "wacast-sender",
                   "Holds a share of the devices, paces each one and sends through its transport.",
                   cfg_table, sizeof cfg_table / sizeof cfg_table[0], &f.cfg, argc, argv, ready,
                   metrics, &f);
    char err[256];
    wc_map_init(&f.devices);
    f.tenv = (wc_transport_env){
        .base = f.d.base,
        .redis = f.d.redis,
        .instance_id = f.cfg.c.instance_id,
        .sim_latency_ms = (int)f.cfg.sim_latency_ms,
        .sim_failure_rate = f.cfg.sim_failure_rate,
        .sim_record_maxlen = f.cfg.sim_record_maxlen,
        .sim_callbacks = f.cfg.sim_callbacks,
        .sim_callback_delay_ms = (int)f.cfg.sim_callback_delay_ms,
        .provider_hosts = f.cfg.provider_hosts,
    };
    if (wc_provider_hosts_check(f.cfg.provider_hosts, err, sizeof err) < 0) {
        fprintf(stderr, "wacast-sender: %s\n", err);
        return 1;
    }
    if (f.cfg.sim_redis_url && f.cfg.sim_redis_url[0]) {
        f.sim = wc_redis_new(f.d.base, f.cfg.sim_redis_url, "redis-sim", (int)f.cfg.c.timeout_ms,
                             err, sizeof err);
        if (!f.sim) {
            fprintf(stderr, "wacast-sender: WACAST_SIM_REDIS_URL: %s\n", err);
            return 1;
        }
        f.tenv.sim_redis = f.sim;
    }
    wc_map_init(&f.holds);
    wc_map_init(&f.doubt_seen);
    f.check_ev = evtimer_new(f.d.base, on_check_timer, &f);
    f.epoch = wc_epoch_new(f.d.base, f.d.redis, f.d.pg, (int)f.cfg.fence_ms, on_fence_checked, &f);
    if (!f.check_ev || !f.epoch) {
        fprintf(stderr, "wacast-sender: out of memory\n");
        return 1;
    }
    if (getenv(WC_SEAL_KEY_ENV) && getenv(WC_SEAL_KEY_ENV)[0] &&
        wc_seal_init_env(&f.seal, err, sizeof err) < 0) {
        fprintf(stderr, "wacast-sender: %s\n", err);
        return 1;
    }
    f.sub = wc_redis_new(f.d.base, f.cfg.c.redis_url, "redis-wake", (int)f.cfg.c.timeout_ms, err,
                         sizeof err);
    if (!f.sub || wc_redis_subscribe(f.sub, WC_KEY_WAKE, on_wake, &f) < 0) {
        fprintf(stderr, "wacast-sender: cannot subscribe to wake-ups: %s\n", err);
        return 1;
    }
    wc_daemon_on_stop(&f.d, on_stop, &f);
    long hb = f.cfg.lease_ttl_ms / 3;
    f.heartbeat_timer = wc_daemon_every(&f.d, (int)hb, on_heartbeat, &f);
    f.first_beat = evtimer_new(f.d.base, on_heartbeat, &f);
    f.refresh_timer = wc_daemon_every(&f.d, (int)f.cfg.refresh_ms, on_refresh, &f);
    f.idle_timer = wc_daemon_every(&f.d, (int)f.cfg.idle_poll_ms, on_idle_poll, &f);
    f.status_timer = wc_daemon_every(&f.d, 250, on_status_flush, &f);
    f.holds_timer = wc_daemon_every(&f.d, (int)f.cfg.holds_ms, on_holds_timer, &f);
    on_holds_timer(-1, 0, &f);
    on_heartbeat(-1, 0, &f);
    on_refresh(-1, 0, &f);
    int rc = wc_daemon_run(&f.d);

    event_free(f.heartbeat_timer);
    event_free(f.first_beat);
    event_free(f.refresh_timer);
    event_free(f.idle_timer);
    event_free(f.status_timer);
    event_free(f.holds_timer);
    event_free(f.check_ev);
    wc_epoch_free(f.epoch);
    free(f.checks);
    wc_map_free(&f.doubt_seen);
    wc_map_free(&f.holds);
    if (f.touch_ids)
        evbuffer_free(f.touch_ids);
    if (f.stop_timer)
        event_free(f.stop_timer);
    for (size_t i = 0; i < f.devices.cap; i++) {
        if (!wc_map_live(&f.devices, i))
            continue;
        free_device(f.devices.slots[i].value);
    }
    wc_map_free(&f.devices);
    for (size_t i = 0; i < f.nlive; i++)
        free(f.live[i]);
    free(f.live);
    wc_redis_free(f.sub);
    wc_redis_free(f.sim);
    wc_seal_keys_free(f.seal);
    wc_daemon_free(&f.d);
    wc_config_free(cfg_table, sizeof cfg_table / sizeof cfg_table[0], &f.cfg);
    return rc;
}
