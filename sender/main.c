/* wacast-sender: holds a share of the devices and sends their messages.
 *
 * This file: the settings (the config table, printed by --help), start-up
 * and shutdown (devices handed back on SIGTERM within WACAST_STOP_TIMEOUT_MS),
 * /metrics and /readyz, and the few reply helpers every file uses. It owns no
 * device state; the other files do:
 *   fleet.c     who holds which device: rendezvous over the live senders, leases,
 *               the device list from PostgreSQL, wake-ups and the idle poll
 *   device.c    one device's state machine: wait, read, consider, send, and what
 *               a send's result does to the device
 *   report.c    the idempotency marker: claiming a message before it is sent and
 *               recording its outcome afterwards (one Lua script each)
 *   lanes.c     a device's outboxes (one lane per campaign), its later set,
 *               parking paused campaigns, handing messages back to the router
 *   limits.c    daily caps and warm-up, rests, the circuit breaker, health
 *   rows.c      the user_devices rows this sender writes, in batches
 *   recovery.c  Redis losing writes, and sends in doubt: rows checked in PostgreSQL
 * Shared structs are in sender.h; the Lua scripts in lua/ (embedded at build).
 *
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

#include "sender.h"
#include "sender_lua.h"

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
    {"WACAST_MEDIA_CACHE_BYTES", WC_CFG_INT, "67108864",
     "prepared images (media:<sha256>) kept in memory for the transports, least recently used "
     "dropped first",
     offsetof(sender_cfg, media_cache_bytes), 0, 4294967296, false},
    {"WACAST_MEDIA_ID_TTL_S", WC_CFG_INT, "2073600",
     "cloudapi: an image uploaded to a phone number id is reused this long (Meta keeps it 30 "
     "days)",
     offsetof(sender_cfg, media_id_ttl_s), 60, 2505600, false},
};

const char *const dev_state_names[DEV_NSTATES] = {"unowned", "acquiring", "offline",  "idle",
                                                  "pacing",  "reading",   "claiming", "checking",
                                                  "sending", "reporting", "resting"};

bool reply_ok(fleet *f, redisReply *r)
{
    if (!r || r->type == REDIS_REPLY_ERROR) {
        f->m.redis_errors++;
        return false;
    }
    return true;
}

void on_void_device(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    reply_ok(dv->f, reply);
}

void on_void(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    fleet *f = arg;
    reply_ok(f, reply);
}

static void on_left(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)reply;
    fleet *f = arg;
    wc_info("stopped: all devices handed back");
    wc_daemon_exit(&f->d);
}

void maybe_finish_stop(fleet *f)
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
    wc_media_cache_stats ms;
    wc_media_cache_get_stats(f->media, &ms);
    wc_metric(out, "wacast_sender_media_reads_total", "counter",
              "prepared images read from PostgreSQL for the transports", (double)ms.reads);
    wc_metric(out, "wacast_sender_media_hits_total", "counter",
              "prepared images the transports got from memory", (double)ms.hits);
    wc_metric(out, "wacast_sender_media_errors_total", "counter",
              "prepared images that could not be read (missing, unreadable, no answer)",
              (double)ms.errors);
    wc_metric(out, "wacast_sender_media_cache_bytes", "gauge",
              "bytes of prepared images held in memory", (double)ms.bytes);
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
        .media_id_ttl_s = f.cfg.media_id_ttl_s,
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
    f.media = wc_media_cache_new(f.d.base, f.d.pg, (size_t)f.cfg.media_cache_bytes);
    if (!f.media) {
        fprintf(stderr, "wacast-sender: out of memory\n");
        return 1;
    }
    f.tenv.media = wc_media_cache_source(f.media);
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
    wc_media_cache_free(f.media); /* after the pool, whose reads in flight it may own */
    wc_config_free(cfg_table, sizeof cfg_table / sizeof cfg_table[0], &f.cfg);
    return rc;
}
