/* wacast-scheduler: turns due campaigns into messages on the jobs stream.
 *
 * trigger.c claims due campaigns and expands them into message rows;
 * feeder.c publishes pending messages as room opens: at most
 * WACAST_CAMPAIGN_INFLIGHT per campaign queued and not done, only while the
 * campaign's user has a healthy device and the campaign is inside its sending
 * window. Postgres is the source of truth and holds the backlog; Redis is the
 * conveyor belt and holds a bounded amount per campaign. reconciler.c
 * republishes queued messages whose marker is gone, and the idempotency
 * marker on the sender side keeps a republished message from being sent
 * twice. This file: the settings, the timers, /metrics, start and stop.
 * Shared state is in scheduler.h. */
#include <stdio.h>
#include <stdlib.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <sodium.h>

#include "wc_daemon.h"
#include "wc_epoch.h"
#include "wc_log.h"
#include "wc_map.h"

#include "scheduler.h"

static const wc_cfg_entry cfg_table[] = {
    WC_CFG_DAEMON(wc_common_cfg),
    WC_MEDIA_CFG_ENTRIES(scheduler_cfg, media),
    {"WACAST_POLL_MS", WC_CFG_INT, "500", "how often due campaigns are looked for",
     offsetof(scheduler_cfg, poll_ms), 10, 600000, false},
    {"WACAST_BATCH", WC_CFG_INT, "2000", "leads expanded per statement",
     offsetof(scheduler_cfg, batch), 1, 100000, false},
    {"WACAST_JOBS_MAX", WC_CFG_INT, "200000",
     "publishing pauses while more jobs than this wait on the jobs stream for a router to read"
     " them",
     offsetof(scheduler_cfg, jobs_max), 100, 100000000, false},
    {"WACAST_CLAIM_STALE_S", WC_CFG_INT, "60", "a campaign claim untouched this long is taken over",
     offsetof(scheduler_cfg, claim_stale_s), 5, 86400, false},
    {"WACAST_MAX_LATENESS_S", WC_CFG_INT, "604800",
     "a campaign due longer ago than this fails instead of sending (0: no limit)",
     offsetof(scheduler_cfg, max_lateness_s), 0, 315360000, false},
    {"WACAST_DEFAULT_COUNTRY", WC_CFG_STR, "60",
     "country calling code for phone numbers written without one",
     offsetof(scheduler_cfg, default_country), 1, 0, false},
    {"WACAST_RECONCILE_MS", WC_CFG_INT, "10000", "how often stuck messages are looked for",
     offsetof(scheduler_cfg, reconcile_ms), 100, 3600000, false},
    {"WACAST_RECONCILE_AFTER_S", WC_CFG_INT, "120",
     "a message pending this long in a running campaign is published again",
     offsetof(scheduler_cfg, reconcile_after_s), 1, 86400, false},
    {"WACAST_IDEMPOTENCY_TTL_S", WC_CFG_INT, "604800",
     "how long a message's marker is kept (the reconciler renews the markers of messages still"
     " queued, so a long wait in an outbox never outlives it; keep it above"
     " WACAST_RECONCILE_AFTER_S)",
     offsetof(scheduler_cfg, idempotency_ttl_s), 2, 31536000, false},
    {"WACAST_MAX_MESSAGE_BYTES", WC_CFG_INT, "4096", "longest rendered message",
     offsetof(scheduler_cfg, max_message_bytes), 16, 65536, false},
    {"WACAST_CAMPAIGN_INFLIGHT", WC_CFG_INT, "10000",
     "messages of one campaign published and not yet done, at most (the rest wait in PostgreSQL)",
     offsetof(scheduler_cfg, inflight), 1, 10000000, false},
    {"WACAST_USER_INFLIGHT", WC_CFG_INT, "50000",
     "messages of one user's campaigns and drip sequences together published and not yet done, at"
     " most (so one user never fills the bounds every user shares; keep it well under "
     "WACAST_JOBS_MAX)",
     offsetof(scheduler_cfg, user_inflight), 1, 100000000, false},
    {"WACAST_FEED_MS", WC_CFG_INT, "100", "how often campaigns' waiting messages are published",
     offsetof(scheduler_cfg, feed_ms), 10, 60000, false},
    {"WACAST_FEED_BATCH", WC_CFG_INT, "5000", "messages published per feeder round, at most",
     offsetof(scheduler_cfg, feed_batch), 1, 1000000, false},
    {"WACAST_ONLINE_GRACE_MS", WC_CFG_INT, "30000",
     "a device counts as online while its sender's heartbeat is younger than this",
     offsetof(scheduler_cfg, online_grace_ms), 1000, 3600000, false},
    {"WACAST_SEQ_MS", WC_CFG_INT, "250", "how often due sequence steps are looked for",
     offsetof(scheduler_cfg, seq_ms), 10, 60000, false},
    {"WACAST_SEQ_BATCH", WC_CFG_INT, "1000", "sequence contacts claimed per statement",
     offsetof(scheduler_cfg, seq_batch), 1, 100000, false},
    {"WACAST_SEQ_CLAIM_S", WC_CFG_INT, "60",
     "a claimed sequence contact whose step is not written within this falls due again",
     offsetof(scheduler_cfg, seq_claim_s), 5, 86400, false},
    {"WACAST_SEQ_WINDOW_MARGIN_MS", WC_CFG_INT, "60000",
     "a sequence step is published only while its send window stays open this much longer",
     offsetof(scheduler_cfg, seq_window_margin_ms), 0, 86400000, false},
};

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    claim(arg);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exp_step(arg);
}

static void on_stop(wc_daemon *d, void *arg)
{
    (void)d;
    scheduler *s = arg;
    /* A claim in progress is simply left: it goes stale and is resumed. */
    if (s->state != EXP_IDLE)
        wc_info("stopping with campaign %s mid-expansion; it will be resumed",
                s->c ? s->c->id : "?");
    wc_daemon_exit(&s->d);
}

static bool ready(void *arg, char *why, size_t whylen)
{
    scheduler *s = arg;
    return wc_daemon_ready(&s->d, why, whylen);
}

static void metrics(struct evbuffer *out, void *arg)
{
    scheduler *s = arg;
#define X(name, help)                                                                              \
    wc_metric(out, "wacast_scheduler_" #name "_total", "counter", help, (double)s->m.name);
    SCHEDULER_METRICS(X)
#undef X
    media_metrics(out, s);
    wc_metric(out, "wacast_scheduler_expanding", "gauge", "1 while a campaign is being expanded",
              s->state != EXP_IDLE);
    wc_metric(out, "wacast_scheduler_feed_cursors", "gauge",
              "campaigns whose feeder cursor is kept (running ones, until pruned)",
              (double)s->fed.len);
}

int main(int argc, char **argv)
{
    static scheduler s;
    wc_daemon_init(&s.d, "wacast-scheduler",
                   "Finds due campaigns, expands them into messages and publishes them.", cfg_table,
                   sizeof cfg_table / sizeof cfg_table[0], &s.cfg, argc, argv, ready, metrics, &s);
    randombytes_buf(&s.rng, sizeof s.rng);
    media_init(&s);
    wc_map_init(&s.fed);
    s.fed_reset_us = wc_mono_us();
    wc_daemon_on_stop(&s.d, on_stop, &s);
    s.retry_timer = evtimer_new(s.d.base, on_retry, &s);
    s.claim_now = evtimer_new(s.d.base, on_poll, &s);
    s.poll_timer = wc_daemon_every(&s.d, (int)s.cfg.poll_ms, on_poll, &s);
    s.reconcile_timer = wc_daemon_every(&s.d, (int)s.cfg.reconcile_ms, on_reconcile, &s);
    s.epoch = wc_epoch_new(s.d.base, s.d.redis, s.d.pg, 0, on_fence_checked, &s);
    s.feed_timer = wc_daemon_every(&s.d, (int)s.cfg.feed_ms, on_feed_timer, &s);
    s.waiting_timer = wc_daemon_every(&s.d, 1000, on_waiting_timer, &s);
    s.prune_timer = wc_daemon_every(&s.d, 5000, on_prune_timer, &s);
    sequences_start(&s);
    claim(&s);
    int rc = wc_daemon_run(&s.d);
    media_free(&s);
    end_expansion(&s);
    wc_epoch_free(s.epoch);
    event_free(s.poll_timer);
    event_free(s.reconcile_timer);
    event_free(s.feed_timer);
    wc_map_free(&s.fed);
    event_free(s.waiting_timer);
    event_free(s.prune_timer);
    sequences_free(&s);
    event_free(s.retry_timer);
    event_free(s.claim_now);
    wc_daemon_free(&s.d);
    wc_config_free(cfg_table, sizeof cfg_table / sizeof cfg_table[0], &s.cfg);
    return rc;
}
