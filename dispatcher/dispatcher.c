/* wacast-dispatcher: its settings, the devices the router may use (re-read
 * every WACAST_DEVICE_REFRESH_MS), the periodic work (restarting readers,
 * taking over a dead peer's entries, removing consumers that are gone) and
 * main(). The dispatcher's parts each have a file: router.c (jobs to device
 * lanes), sink.c (results to PostgreSQL), events.c (provider webhooks and the
 * sim's), control.c (operator controls and the admin API), credentials.c.
 *
 * Both readers block on their own Redis connections; everything else shares
 * one pipelined connection. A dispatcher that dies leaves its unacknowledged
 * entries to XAUTOCLAIM by its peers. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "dispatcher.h"
#include "wacast.pb-c.h"
#include "wc_daemon.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_map.h"
#include "wc_origin.h"
#include "wc_sql.h"

static const wc_cfg_entry cfg_table[] = {
    WC_CFG_DAEMON(wc_common_cfg),
    WC_MEDIA_CFG_ENTRIES(dispatcher_cfg, media),
    {"WACAST_ROUTE_BATCH", WC_CFG_INT, "500", "jobs read per batch",
     offsetof(dispatcher_cfg, route_batch), 1, 100000, false},
    {"WACAST_SINK_BATCH", WC_CFG_INT, "2000", "results written per statement",
     offsetof(dispatcher_cfg, sink_batch), 1, 100000, false},
    {"WACAST_OUTBOX_MAX", WC_CFG_INT, "10000",
     "entries a device's lane (one campaign's outbox) may hold before routing skips it",
     offsetof(dispatcher_cfg, outbox_max), 1, 10000000, false},
    {"WACAST_DISPLACED_LANE_MAX", WC_CFG_INT, "3",
     "entries a lane may hold when the job is not for the lead's own device (that device is away):"
     " displaced messages spread over the user's devices or wait, never pile onto one",
     offsetof(dispatcher_cfg, displaced_max), 1, 10000000, false},
    {"WACAST_PARKED_MAX", WC_CFG_INT, "100000",
     "jobs waiting for a device, all users together, before the router stops reading",
     offsetof(dispatcher_cfg, parked_max), 1, 10000000, false},
    {"WACAST_PARKED_USER_MAX", WC_CFG_INT, "10000",
     "jobs of one user waiting in memory for a device; more stay unacknowledged in Redis and are"
     " read again once the user's waiting jobs have gone below half of this",
     offsetof(dispatcher_cfg, parked_user_max), 1, 10000000, false},
    {"WACAST_DEVICE_REFRESH_MS", WC_CFG_INT, "1000", "how often online devices are re-read",
     offsetof(dispatcher_cfg, refresh_ms), 100, 600000, false},
    {"WACAST_ONLINE_GRACE_MS", WC_CFG_INT, "30000",
     "a device counts as online while its sender's heartbeat is younger than this",
     offsetof(dispatcher_cfg, online_grace_ms), 1000, 3600000, false},
    {"WACAST_CLAIM_IDLE_MS", WC_CFG_INT, "30000",
     "entries unacknowledged this long by a dead consumer are taken over",
     offsetof(dispatcher_cfg, claim_idle_ms), 1000, 3600000, false},
    {"WACAST_CONSUMER_GONE_MS", WC_CFG_INT, "600000",
     "a consumer holding nothing and idle this long (a dispatcher that is gone) leaves its groups",
     offsetof(dispatcher_cfg, consumer_gone_ms), 1000, 86400000, false},
    {"WACAST_IDEMPOTENCY_TTL_S", WC_CFG_INT, "604800", "how long a message's marker is kept",
     offsetof(dispatcher_cfg, idempotency_ttl_s), 2, 31536000, false},
    {"WACAST_ADMIN_TOKEN", WC_CFG_STR, "",
     "bearer token of the admin API (/admin/...); empty disables it",
     offsetof(dispatcher_cfg, admin_token), 1, 0, true},
    {"WACAST_META_APP_SECRET", WC_CFG_STR, "",
     "Meta app secret: verifies X-Hub-Signature-256 on /webhooks/cloudapi (empty refuses them)",
     offsetof(dispatcher_cfg, meta_app_secret), 1, 0, true},
    {"WACAST_META_VERIFY_TOKEN", WC_CFG_STR, "",
     "token Meta sends when verifying /webhooks/cloudapi",
     offsetof(dispatcher_cfg, meta_verify_token), 1, 0, true},
    {"WACAST_GOWA_WEBHOOK_SECRET", WC_CFG_STR, "",
     "secret that signs the gateway's webhooks on /webhooks/gowa (empty refuses them)",
     offsetof(dispatcher_cfg, gowa_webhook_secret), 1, 0, true},
    {"WACAST_OPT_OUT_WORDS", WC_CFG_STR,
     "STOP,UNSUBSCRIBE,BERHENTI,STOP ALL,CANCEL,OPT OUT,OPTOUT,BATAL",
     "inbound replies that opt a lead out (comma list, case-insensitive)",
     offsetof(dispatcher_cfg, opt_out_words), 1, 0, false},
    {"WACAST_CANCEL_GRACE_S", WC_CFG_INT, "30",
     "after a cancel, messages still queued this long later are marked cancelled",
     offsetof(dispatcher_cfg, cancel_grace_s), 1, 86400, false},
    {"WACAST_REASON_PRUNE_MS", WC_CFG_INT, "60000",
     "how often the router forgets the campaigns of its \"waiting\" reasons: a campaign it no"
     " longer routes (finished, its user gone) leaves its memory within this",
     offsetof(dispatcher_cfg, reason_prune_ms), 100, 3600000, false},
    WC_CFG_PROVIDER_HOSTS(dispatcher_cfg, provider_hosts),
};

bool dispatcher_reply_ok(dispatcher *ds, redisReply *r)
{
    if (!r || r->type == REDIS_REPLY_ERROR) {
        ds->m.redis_errors++;
        return false;
    }
    return true;
}

void dispatcher_on_void(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher_reply_ok(arg, reply);
}

static void on_group(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)reply; /* BUSYGROUP when it exists */
    (void)arg;
}

/* Sends head... followed by the space-separated ids (stream entry ids have
 * no spaces). Returns what wc_redis_commandv returns. */
int dispatcher_command_with_ids(wc_redis *r, wc_redis_cb *cb, void *arg, const char *const *head,
                                int nhead, struct evbuffer *ids)
{
    evbuffer_add(ids, "\0", 1);
    char *list = strdup((const char *)evbuffer_pullup(ids, -1));
    if (!list)
        abort();
    size_t n = 0;
    for (char *p = list; *p; p++)
        n += *p == ' ';
    const char **argv = calloc((size_t)nhead + n + 1, sizeof *argv);
    if (!argv)
        abort();
    int argc = 0;
    for (int i = 0; i < nhead; i++)
        argv[argc++] = head[i];
    char *save = NULL;
    for (char *tok = strtok_r(list, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
        argv[argc++] = tok;
    int rc = wc_redis_commandv(r, cb, arg, argc, argv, NULL);
    free(argv);
    free(list);
    return rc;
}

/* XACK then XDEL of the entries in ids (space-separated). -1 when not sent. */
int dispatcher_ack_and_delete(dispatcher *ds, const char *stream, const char *group,
                              struct evbuffer *ids, wc_redis_cb *cb)
{
    const char *ack[] = {"XACK", stream, group};
    const char *del[] = {"XDEL", stream};
    struct evbuffer *copy = evbuffer_new();
    evbuffer_add(copy, evbuffer_pullup(ids, -1), evbuffer_get_length(ids));
    int rc = dispatcher_command_with_ids(ds->d.redis, cb, ds, ack, 3, ids);
    if (rc == 0 && dispatcher_command_with_ids(ds->d.redis, cb, ds, del, 2, copy) < 0)
        ds->m.redis_errors++;
    evbuffer_free(copy);
    if (rc < 0)
        ds->m.redis_errors++;
    return rc;
}

void dispatcher_create_groups(dispatcher *ds)
{
    if (wc_redis_command(ds->d.redis, on_group, ds, "XGROUP CREATE %s %s 0 MKSTREAM", WC_KEY_JOBS,
                         WC_GROUP_DISPATCH) < 0 ||
        wc_redis_command(ds->d.redis, on_group, ds, "XGROUP CREATE %s %s 0 MKSTREAM",
                         WC_KEY_RESULTS, WC_GROUP_SINK) < 0)
        ds->m.redis_errors++;
}

/* ---- devices ------------------------------------------------------------------------------ */

static void clear_devices(dispatcher *ds)
{
    for (size_t i = 0; i < ds->users.cap; i++) {
        if (!wc_map_live(&ds->users, i))
            continue;
        user_devices *u = ds->users.slots[i].value;
        for (size_t j = 0; j < u->n; j++)
            free(u->ids[j]);
        free(u->ids);
        free(u);
    }
    for (size_t i = 0; i < ds->numbers.cap; i++)
        if (wc_map_live(&ds->numbers, i))
            free(ds->numbers.slots[i].value);
    wc_map_free(&ds->users);
    wc_map_free(&ds->online);
    wc_map_free(&ds->numbers);
    wc_map_init(&ds->users);
    wc_map_init(&ds->online);
    wc_map_init(&ds->numbers);
}

static void on_devices(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    ds->refreshing = false;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("reading devices: %s", err);
        return;
    }
    /* Keep each user's round-robin position across refreshes. */
    wc_map cursors;
    wc_map_init(&cursors);
    for (size_t i = 0; i < ds->users.cap; i++) {
        if (wc_map_live(&ds->users, i)) {
            user_devices *u = ds->users.slots[i].value;
            if (wc_map_put(&cursors, ds->users.slots[i].key, (void *)(uintptr_t)(u->next + 1)) < 0)
                abort();
        }
    }
    clear_devices(ds);
    int n = PQntuples(res);
    for (int r = 0; r < n; r++) {
        const char *id = PQgetvalue(res, r, 0), *user = PQgetvalue(res, r, 1);
        user_devices *u = wc_map_get(&ds->users, user);
        if (!u) {
            u = calloc(1, sizeof *u);
            if (!u || wc_map_put(&ds->users, user, u) < 0)
                abort();
            uintptr_t c = (uintptr_t)wc_map_get(&cursors, user);
            u->next = c ? c - 1 : 0;
        }
        char **ids = realloc(u->ids, (u->n + 1) * sizeof *ids);
        if (!ids)
            abort();
        u->ids = ids;
        u->ids[u->n++] = strdup(id);
        if (wc_map_put(&ds->online, id, (void *)1) < 0)
            abort();
        const char *number = PQgetvalue(res, r, 2);
        if (number[0] && !wc_map_get(&ds->numbers, number)) {
            char *copy = strdup(id);
            if (!copy || wc_map_put(&ds->numbers, number, copy) < 0)
                abort();
        }
    }
    wc_map_free(&cursors);
    if (!ds->devices_loaded) {
        ds->devices_loaded = true;
        wc_info("%d online device(s)", n);
        read_jobs(ds);
    }
}

static void on_refresh(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatcher *ds = arg;
    if (ds->refreshing)
        return;
    char grace[32];
    snprintf(grace, sizeof grace, "%f", ds->cfg.online_grace_ms / 1000.0);
    const char *params[] = {grace};
    if (wc_pg_query(ds->d.pg,
                    "SELECT id, user_id, coalesce(settings->>'phone_number_id', '')"
                    " FROM user_devices WHERE status = 'online' "
                    "AND last_seen > now() - make_interval(secs => $1::float8) "
                    "AND (resting_until IS NULL OR resting_until <= now()) ORDER BY user_id, id",
                    1, params, on_devices, ds) == 0)
        ds->refreshing = true;
}

/* ---- periodic work ------------------------------------------------------------------------ */

static void on_read_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatcher *ds = arg;
    /* Restarts readers after a Redis outage; no-ops while they run. */
    read_jobs(ds);
    sink_read(ds);
}

/* XAUTOCLAIM goes on from where its last call stopped (its first reply
 * element), so entries far down a long pending list are reached too. */
static void on_autoclaimed(dispatcher *ds, redisReply *reply, char *cursor, size_t cursor_size)
{
    if (!dispatcher_reply_ok(ds, reply) || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2)
        return;
    redisReply *next = reply->element[0];
    if (next->type == REDIS_REPLY_STRING && next->len < cursor_size)
        snprintf(cursor, cursor_size, "%s", next->str);
    redisReply *ids = reply->element[1];
    if (ids->type == REDIS_REPLY_ARRAY && ids->elements > 0) {
        ds->m.entries_claimed += ids->elements;
        wc_info("took over %zu entries from a dead consumer", ids->elements);
        /* They are ours now: read our pending list next. */
        if (cursor == ds->jobs_claim_cursor)
            rescan_pending(ds);
        else
            ds->results_pel = true;
    }
}

static void on_jobs_autoclaimed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher *ds = arg;
    on_autoclaimed(ds, reply, ds->jobs_claim_cursor, sizeof ds->jobs_claim_cursor);
}

static void on_results_autoclaimed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher *ds = arg;
    on_autoclaimed(ds, reply, ds->results_claim_cursor, sizeof ds->results_claim_cursor);
}

/* Consumers of dispatchers that are gone (each start has a new name) are
 * removed from the groups once they hold nothing and have been idle for
 * WACAST_CONSUMER_GONE_MS; else the groups grow with every restart. */
static void on_consumers(dispatcher *ds, redisReply *reply, const char *stream, const char *group)
{
    if (!dispatcher_reply_ok(ds, reply) || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *c = reply->element[i];
        const char *name = NULL;
        long long pending = -1, idle = -1;
        for (size_t k = 0; c->type == REDIS_REPLY_ARRAY && k + 1 < c->elements; k += 2) {
            redisReply *key = c->element[k], *val = c->element[k + 1];
            if (key->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(key->str, "name") && val->type == REDIS_REPLY_STRING)
                name = val->str;
            else if (!strcmp(key->str, "pending") && val->type == REDIS_REPLY_INTEGER)
                pending = val->integer;
            else if (!strcmp(key->str, "idle") && val->type == REDIS_REPLY_INTEGER)
                idle = val->integer;
        }
        if (!name || pending != 0 || idle < ds->cfg.consumer_gone_ms ||
            !strcmp(name, ds->cfg.c.instance_id))
            continue;
        if (wc_redis_command(ds->d.redis, dispatcher_on_void, ds, "XGROUP DELCONSUMER %s %s %s",
                             stream, group, name) < 0)
            ds->m.redis_errors++;
        else
            ds->m.consumers_removed++;
    }
}

static void on_jobs_consumers(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    on_consumers(arg, reply, WC_KEY_JOBS, WC_GROUP_DISPATCH);
}

static void on_results_consumers(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    on_consumers(arg, reply, WC_KEY_RESULTS, WC_GROUP_SINK);
}

static void on_claim_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatcher *ds = arg;
    if (!wc_redis_ready(ds->d.redis))
        return;
    touch_parked(ds);
    /* Looked for every tenth of that time (the claim timer runs every 5 s). */
    unsigned every = (unsigned)(ds->cfg.consumer_gone_ms / 10 / 5000);
    if (++ds->claim_rounds % (every ? every : 1) == 0 &&
        (wc_redis_command(ds->d.redis, on_jobs_consumers, ds, "XINFO CONSUMERS %s %s", WC_KEY_JOBS,
                          WC_GROUP_DISPATCH) < 0 ||
         wc_redis_command(ds->d.redis, on_results_consumers, ds, "XINFO CONSUMERS %s %s",
                          WC_KEY_RESULTS, WC_GROUP_SINK) < 0))
        ds->m.redis_errors++;
    char idle[32];
    snprintf(idle, sizeof idle, "%ld", ds->cfg.claim_idle_ms);
    if (wc_redis_command(ds->d.redis, on_jobs_autoclaimed, ds,
                         "XAUTOCLAIM %s %s %s %s %s COUNT 1000 JUSTID", WC_KEY_JOBS,
                         WC_GROUP_DISPATCH, ds->cfg.c.instance_id, idle,
                         ds->jobs_claim_cursor) < 0 ||
        wc_redis_command(ds->d.redis, on_results_autoclaimed, ds,
                         "XAUTOCLAIM %s %s %s %s %s COUNT 1000 JUSTID", WC_KEY_RESULTS,
                         WC_GROUP_SINK, ds->cfg.c.instance_id, idle, ds->results_claim_cursor) < 0)
        ds->m.redis_errors++;
}

static void on_connected(wc_redis *r, void *arg)
{
    (void)r;
    dispatcher *ds = arg;
    dispatcher_create_groups(ds);
    rescan_pending(ds);
    ds->results_pel = true;
}

static void on_stop(wc_daemon *d, void *arg)
{
    (void)d;
    dispatcher *ds = arg;
    /* Parked and unrouted jobs stay pending in the group: a peer claims them.
     * The sink finishes its batch in flight, then the loop ends. */
    if (!ds->sink_writing)
        wc_daemon_exit(&ds->d);
}

static bool ready(void *arg, char *why, size_t whylen)
{
    dispatcher *ds = arg;
    return wc_daemon_ready(&ds->d, why, whylen);
}

static void metrics(struct evbuffer *out, void *arg)
{
    dispatcher *ds = arg;
#define X(name, help)                                                                              \
    wc_metric(out, "wacast_dispatcher_" #name "_total", "counter", help, (double)ds->m.name);
    DISPATCHER_METRICS(X)
#undef X
    wc_metric(out, "wacast_dispatcher_jobs_waiting", "gauge", "jobs waiting for a device",
              (double)ds->nparked);
    wc_metric(out, "wacast_dispatcher_online_devices", "gauge", "devices the router can use",
              (double)ds->online.len);
    wc_metric(out, "wacast_dispatcher_reason_campaigns", "gauge",
              "campaigns the router remembers for their \"waiting\" reasons (pruned every"
              " WACAST_REASON_PRUNE_MS)",
              (double)(ds->waiting.len + ds->clean.len));
}

int main(int argc, char **argv)
{
    static dispatcher ds;
    wc_daemon_init(&ds.d, "wacast-dispatcher",
                   "Routes messages to device outboxes and writes delivery statuses to PostgreSQL.",
                   cfg_table, sizeof cfg_table / sizeof cfg_table[0], &ds.cfg, argc, argv, ready,
                   metrics, &ds);
    wc_map_init(&ds.users);
    wc_map_init(&ds.online);
    wc_map_init(&ds.numbers);
    wc_map_init(&ds.waiting);
    wc_map_init(&ds.clean);
    wc_map_init(&ds.held);
    wc_map_init(&ds.parked_by_user);
    wc_map_init(&ds.spilled_users);
    char err[256];
    /* Blocking reads need connections of their own; BLOCK is under the timeout. */
    long tmo = ds.cfg.c.timeout_ms < 3000 ? 3000 : ds.cfg.c.timeout_ms;
    ds.jobs_rd =
        wc_redis_new(ds.d.base, ds.cfg.c.redis_url, "redis-jobs", (int)tmo, err, sizeof err);
    ds.results_rd =
        wc_redis_new(ds.d.base, ds.cfg.c.redis_url, "redis-results", (int)tmo, err, sizeof err);
    if (!ds.jobs_rd || !ds.results_rd) {
        fprintf(stderr, "wacast-dispatcher: %s\n", err);
        return 1;
    }
    rescan_pending(&ds);
    ds.results_pel = true;
    snprintf(ds.jobs_claim_cursor, sizeof ds.jobs_claim_cursor, "0-0");
    snprintf(ds.results_claim_cursor, sizeof ds.results_claim_cursor, "0-0");
    if (ds.cfg.parked_user_max > ds.cfg.parked_max)
        ds.cfg.parked_user_max = ds.cfg.parked_max;
    wc_redis_on_connect(ds.d.redis, on_connected, &ds);
    wc_daemon_on_stop(&ds.d, on_stop, &ds);
    ds.refresh_timer = wc_daemon_every(&ds.d, (int)ds.cfg.refresh_ms, on_refresh, &ds);
    ds.parked_timer = wc_daemon_every(&ds.d, 1000, on_parked_timer, &ds);
    ds.window_timer = wc_daemon_every(&ds.d, 1000, on_window_timer, &ds);
    ds.claim_timer = wc_daemon_every(&ds.d, 5000, on_claim_timer, &ds);
    ds.read_timer = wc_daemon_every(&ds.d, 250, on_read_timer, &ds);
    sink_init(&ds);
    events_init(&ds);
    control_init(&ds);
    on_refresh(-1, 0, &ds);
    int rc = wc_daemon_run(&ds.d);

    event_free(ds.refresh_timer);
    event_free(ds.parked_timer);
    event_free(ds.window_timer);
    event_free(ds.claim_timer);
    event_free(ds.read_timer);
    sink_free(&ds);
    events_free(&ds);
    control_free(&ds);
    while (ds.backlog) {
        route_job *j = ds.backlog;
        ds.backlog = j->next;
        free_route_job(&ds, j);
    }
    while (ds.parked) {
        route_job *j = ds.parked;
        ds.parked = j->next;
        free_route_job(&ds, j);
    }
    clear_devices(&ds);
    wc_map_free(&ds.users);
    wc_map_free(&ds.online);
    wc_map_free(&ds.numbers);
    wc_map_free(&ds.waiting);
    wc_map_free(&ds.clean);
    wc_map_free(&ds.held);
    wc_map_free(&ds.parked_by_user);
    wc_map_free(&ds.spilled_users);
    wc_redis_free(ds.jobs_rd);
    wc_redis_free(ds.results_rd);
    wc_daemon_free(&ds.d);
    wc_config_free(cfg_table, sizeof cfg_table / sizeof cfg_table[0], &ds.cfg);
    return rc;
}
