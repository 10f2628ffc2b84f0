/* wacast-dispatcher: the router. Reads the jobs stream in a consumer group
 * and appends each message to a device's lane for its campaign (one stream
 * per device and campaign, which the device reads round-robin): the lead's
 * own device when it is healthy, else another healthy device of the same
 * user, skipping full lanes. A message with no usable device waits in memory
 * (at most WACAST_PARKED_USER_MAX per user; more stay pending in Redis),
 * unacknowledged, is routed again every second, and its campaign says why.
 * Entries are acknowledged and deleted only once appended to a lane. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "dispatcher.h"
#include "dispatcher_lua.h"
#include "wacast.pb-c.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_map.h"

struct route_batch {
    dispatcher *ds;
    route_job *jobs; /* every job of this round */
    int pending;     /* EVAL replies outstanding */
};

/* Routing a job is one script: dispatcher/lua/route.lua (LUA_ROUTE). */

static void route(dispatcher *ds, route_job *jobs);

/* ---- router ------------------------------------------------------------------------------- */

void free_route_job(dispatcher *ds, route_job *j)
{
    wc_map_del(&ds->held, j->entry_id);
    if (j->job)
        wacast__job__free_unpacked(j->job, NULL);
    free(j->payload);
    free(j);
}

#define ROUTE_TRIES 8

/* The next device to try for a job, or NULL when every candidate was tried. */
static const char *pick_device(dispatcher *ds, route_job *j)
{
    Wacast__Job *job = j->job;
    user_devices *u = wc_map_get(&ds->users, job->user_id);
    size_t n = u ? u->n : 0;
    /* Try 0: the lead's own device, when online. Then the user's others in turn. */
    if (j->tried == 0) {
        j->tried++;
        if (job->device_id[0] && wc_map_get(&ds->online, job->device_id))
            return job->device_id;
    }
    /* At most ROUTE_TRIES devices per round: a job whose lanes are all full
     * (displaced messages while their device is away) waits for the next
     * round instead of asking every device of a large account each second;
     * the round-robin position moves on, so the next round asks others. */
    if (n == 0 || j->tried > n || j->tried > ROUTE_TRIES)
        return NULL;
    j->tried++;
    const char *id = u->ids[u->next % n];
    u->next++;
    return id;
}

static void finish_route_batch(route_batch *b);

static void on_routed(wc_redis *r, redisReply *reply, void *arg);

static void try_route(route_batch *b, route_job *j)
{
    dispatcher *ds = b->ds;
    /* A claimed message goes to its claiming device, online or not, once a
     * round (its lane full: it waits parked, like any other). */
    const char *dev;
    if (j->claimed_by[0]) {
        dev = j->claimed_tried ? NULL : j->claimed_by;
        j->claimed_tried = true;
    } else {
        dev = pick_device(ds, j);
    }
    if (!dev) {
        j->device[0] = '\0';
        return;
    }
    snprintf(j->device, sizeof j->device, "%s", dev);
    /* The lane's copy names the chosen device. */
    free(j->payload);
    char *preferred = j->job->device_id;
    j->job->device_id = j->device;
    j->payload_len = wacast__job__get_packed_size(j->job);
    j->payload = malloc(j->payload_len ? j->payload_len : 1);
    if (!j->payload)
        abort();
    wacast__job__pack(j->job, j->payload);
    j->job->device_id = preferred;
    char key[64], val[64], ttl[32], lane[160], lanes[128], cap[32];
    wc_key_msg(key, sizeof key, (long long)j->job->message_id);
    snprintf(val, sizeof val, "r:%s", dev);
    snprintf(ttl, sizeof ttl, "%ld", ds->cfg.idempotency_ttl_s);
    wc_key_lane(lane, sizeof lane, j->device, j->job->campaign_id);
    wc_key_lanes(lanes, sizeof lanes, j->device);
    /* A lead's message on a device other than the lead's own (that one is
     * offline, blocked, handed over) is one of many displaced at once: a
     * short lane keeps them from all landing on the first device that is
     * online; the rest wait (parked) and go home once their device is back. */
    bool displaced = j->job->device_id[0] && strcmp(dev, j->job->device_id) != 0;
    snprintf(cap, sizeof cap, "%ld",
             displaced && ds->cfg.displaced_max < ds->cfg.outbox_max ? ds->cfg.displaced_max
                                                                     : ds->cfg.outbox_max);
    const char *argv[] = {"EVAL",
                          LUA_ROUTE,
                          "3",
                          key,
                          lane,
                          lanes,
                          val,
                          ttl,
                          cap,
                          (const char *)j->payload,
                          j->job->campaign_id,
                          WC_GROUP_SEND,
                          j->device};
    size_t lens[] = {4,
                     strlen(LUA_ROUTE),
                     1,
                     strlen(key),
                     strlen(lane),
                     strlen(lanes),
                     strlen(val),
                     strlen(ttl),
                     strlen(cap),
                     j->payload_len,
                     strlen(j->job->campaign_id),
                     strlen(WC_GROUP_SEND),
                     strlen(j->device)};
    if (wc_redis_commandv(ds->d.redis, on_routed, j, 13, argv, lens) == 0) {
        b->pending++;
        return;
    }
    ds->m.redis_errors++;
    j->device[0] = '\0'; /* Redis down: parks below when the batch finishes */
}

static route_batch *current_batch; /* the batch whose replies are in flight */

static void on_routed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    route_job *j = arg;
    route_batch *b = current_batch;
    dispatcher *ds = b->ds;
    b->pending--;
    if (!dispatcher_reply_ok(ds, reply)) {
        j->device[0] = '\0'; /* parked, tried again later */
    } else if (reply->type != REDIS_REPLY_STRING) {
        /* Lane full: try the user's next device. */
        j->device[0] = '\0';
        try_route(b, j);
    } else if (!strcmp(reply->str, "D")) {
        j->duplicate = true; /* done already */
        j->device[0] = '\0';
    } else if (!strncmp(reply->str, "C:", 2) && !j->claimed_by[0] &&
               reply->len - 2 < sizeof j->claimed_by) {
        /* Claimed by another device: to that one. */
        snprintf(j->claimed_by, sizeof j->claimed_by, "%s", reply->str + 2);
        j->device[0] = '\0';
        try_route(b, j);
    } else if (!strncmp(reply->str, "C:", 2)) {
        j->device[0] = '\0'; /* its device's lane is full: parked, tried again */
    } else if (reply->str[0] == '+') {
        j->new_lane = true;
    }
    if (b->pending == 0)
        finish_route_batch(b);
}

static void on_pg_void(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("%s", err);
    }
}

static void on_acked(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher_reply_ok(arg, reply);
}

/* A job with no device for now stays unacknowledged and waits in memory to
 * be routed again, up to WACAST_PARKED_USER_MAX jobs per user; past that it
 * is let go from memory (still pending in Redis, so nothing is lost) and
 * read again once the user has room: one user's backlog never fills the
 * router's memory or keeps it from reading other users' jobs. */
static void park(dispatcher *ds, route_job *j)
{
    uintptr_t n = (uintptr_t)wc_map_get(&ds->parked_by_user, j->job->user_id);
    if (n >= (uintptr_t)ds->cfg.parked_user_max) {
        ds->m.jobs_spilled++;
        if (wc_map_put(&ds->spilled_users, j->job->user_id, (void *)1) < 0)
            abort();
        free_route_job(ds, j);
        return;
    }
    if (wc_map_put(&ds->parked_by_user, j->job->user_id, (void *)(n + 1)) < 0)
        abort();
    ds->m.jobs_parked++;
    j->tried = 0;
    j->claimed_tried = false;
    j->next = ds->parked;
    ds->parked = j;
    ds->nparked++;
}

/* Takes every parked job out to be routed again. */
static route_job *unpark_all(dispatcher *ds)
{
    route_job *jobs = ds->parked;
    ds->parked = NULL;
    ds->nparked = 0;
    wc_map_free(&ds->parked_by_user);
    wc_map_init(&ds->parked_by_user);
    return jobs;
}

static void finish_route_batch(route_batch *b)
{
    dispatcher *ds = b->ds;
    current_batch = NULL;
    ds->routing = NULL;
    struct evbuffer *ids = evbuffer_new();
    struct evbuffer *cleared = NULL;
    wc_map woken;
    wc_map_init(&woken);
    size_t nacked = 0;
    route_job *j = b->jobs, *next;
    for (; j; j = next) {
        next = j->next;
        if (j->duplicate) {
            evbuffer_add_printf(ids, " %s", j->entry_id);
            nacked++;
            ds->m.jobs_duplicate++;
            free_route_job(ds, j);
        } else if (j->device[0]) {
            evbuffer_add_printf(ids, " %s", j->entry_id);
            nacked++;
            ds->m.jobs_routed++;
            /* One wake-up per device; "+" when it has a new lane to look at. */
            uintptr_t w = (uintptr_t)wc_map_get(&woken, j->device);
            if ((!w || (j->new_lane && w == 1)) &&
                wc_map_put(&woken, j->device, (void *)(uintptr_t)(j->new_lane ? 2 : 1)) < 0)
                abort();
            if (!wc_map_get(&ds->clean, j->job->campaign_id)) {
                /* Its campaign may show a "waiting" reason (ours or a dead
                 * peer's): routing again clears it, once. */
                if (!cleared)
                    cleared = evbuffer_new();
                evbuffer_add_printf(cleared, "%s%s", evbuffer_get_length(cleared) ? "," : "{",
                                    j->job->campaign_id);
                if (wc_map_put(&ds->clean, j->job->campaign_id, (void *)1) < 0)
                    abort();
                wc_map_del(&ds->waiting, j->job->campaign_id);
            }
            free_route_job(ds, j);
        } else {
            park(ds, j);
        }
    }
    /* If the ack is lost, the entries come back and are routed again; the
     * sender's idempotency marker keeps that from sending twice. */
    if (nacked)
        (void)dispatcher_ack_and_delete(ds, WC_KEY_JOBS, WC_GROUP_DISPATCH, ids, on_acked);
    /* One wake-up message per batch, "dev[+],dev[+],..." in chunks of at
     * most ~4 KB, not one PUBLISH per device. */
    struct evbuffer *wake = evbuffer_new();
    if (!wake)
        abort();
    for (size_t i = 0; i <= woken.cap; i++) {
        bool last = i == woken.cap;
        if (!last && wc_map_live(&woken, i))
            evbuffer_add_printf(wake, "%s%s%s", evbuffer_get_length(wake) ? "," : "",
                                woken.slots[i].key, woken.slots[i].value == (void *)2 ? "+" : "");
        size_t len = evbuffer_get_length(wake);
        if (len && (last || len > 4000)) {
            const char *argv[] = {"PUBLISH", WC_KEY_WAKE, (const char *)evbuffer_pullup(wake, -1)};
            size_t lens[] = {7, strlen(WC_KEY_WAKE), len};
            if (wc_redis_commandv(ds->d.redis, dispatcher_on_void, ds, 3, argv, lens) < 0)
                ds->m.redis_errors++;
            evbuffer_drain(wake, len);
        }
    }
    evbuffer_free(wake);
    wc_map_free(&woken);
    evbuffer_free(ids);
    if (cleared) {
        evbuffer_add(cleared, "}\0", 2);
        const char *params[] = {(const char *)evbuffer_pullup(cleared, -1)};
        if (wc_pg_query(ds->d.pg,
                        "UPDATE campaigns SET status_reason = NULL WHERE id = ANY($1::uuid[])"
                        " AND status_reason LIKE 'waiting:%'",
                        1, params, on_pg_void, ds) < 0)
            ds->m.pg_errors++;
        evbuffer_free(cleared);
    }
    free(b);
    if (ds->parked_due && ds->parked) {
        /* Their retry came while this batch was routing: they go now, before
         * more new jobs, or a busy router would never get round to them. */
        ds->parked_due = false;
        route(ds, unpark_all(ds));
        return;
    }
    if (ds->backlog) {
        route_job *next_jobs = ds->backlog;
        ds->backlog = NULL;
        route(ds, next_jobs);
        return;
    }
    read_jobs(ds);
}

/* Routes a list of jobs; one batch at a time. */
static void route(dispatcher *ds, route_job *jobs)
{
    route_batch *b = calloc(1, sizeof *b);
    if (!b)
        abort();
    b->ds = ds;
    b->jobs = jobs;
    ds->routing = b;
    current_batch = b;
    for (route_job *j = jobs; j; j = j->next)
        try_route(b, j);
    if (b->pending == 0)
        finish_route_batch(b);
}

static void on_jobs(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher *ds = arg;
    ds->jobs_reading = false;
    if (!dispatcher_reply_ok(ds, reply)) {
        if (reply && strstr(reply->str, "NOGROUP"))
            dispatcher_create_groups(ds);
        return; /* the read timer tries again */
    }
    redisReply *entries = NULL;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
        reply->element[0]->type == REDIS_REPLY_ARRAY && reply->element[0]->elements == 2)
        entries = reply->element[0]->element[1];
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0) {
        /* Only an empty read of our pending list means it is empty: a takeover
         * during a blocking read of new entries set jobs_pel again. */
        if (ds->jobs_read_pel) {
            ds->jobs_pel = false;
            snprintf(ds->jobs_pel_cursor, sizeof ds->jobs_pel_cursor, "0");
        }
        read_jobs(ds);
        return;
    }
    route_job *head = NULL, **tail = &head;
    struct evbuffer *bad = NULL;
    for (size_t i = 0; i < entries->elements; i++) {
        redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING || e->element[0]->len >= 48)
            continue;
        /* A read of our pending list goes on after its last entry, and an
         * entry we hold already (parked, or being routed) is not taken twice. */
        if (ds->jobs_read_pel)
            snprintf(ds->jobs_pel_cursor, sizeof ds->jobs_pel_cursor, "%s", e->element[0]->str);
        if (wc_map_get(&ds->held, e->element[0]->str)) {
            ds->m.jobs_already_held++;
            continue;
        }
        Wacast__Job *job = NULL;
        redisReply *fields = e->element[1];
        for (size_t k = 0; fields->type == REDIS_REPLY_ARRAY && k + 1 < fields->elements; k += 2) {
            redisReply *key = fields->element[k], *val = fields->element[k + 1];
            if (key->type == REDIS_REPLY_STRING && !strcmp(key->str, "j") &&
                val->type == REDIS_REPLY_STRING)
                job = wacast__job__unpack(NULL, val->len, (const uint8_t *)val->str);
        }
        if (!job) {
            /* Undecodable (or deleted under us): nothing to route; ack it away. */
            ds->m.jobs_invalid++;
            wc_error("jobs entry %s has no valid job; dropping it", e->element[0]->str);
            if (!bad)
                bad = evbuffer_new();
            evbuffer_add_printf(bad, " %s", e->element[0]->str);
            continue;
        }
        route_job *j = calloc(1, sizeof *j);
        if (!j)
            abort();
        snprintf(j->entry_id, sizeof j->entry_id, "%s", e->element[0]->str);
        j->job = job;
        if (wc_map_put(&ds->held, j->entry_id, j) < 0)
            abort();
        *tail = j;
        tail = &j->next;
    }
    if (bad) {
        (void)dispatcher_ack_and_delete(ds, WC_KEY_JOBS, WC_GROUP_DISPATCH, bad, on_acked);
        evbuffer_free(bad);
    }
    if (!head) {
        read_jobs(ds);
        return;
    }
    if (ds->routing) {
        /* A batch (parked jobs tried again) is routing: one batch at a time
         * (replies are matched to the batch in flight). These go next. */
        route_job **t = &ds->backlog;
        while (*t)
            t = &(*t)->next;
        *t = head;
        return;
    }
    route(ds, head);
}

void read_jobs(dispatcher *ds)
{
    if (ds->jobs_reading || ds->routing || ds->d.stopping || !ds->devices_loaded)
        return;
    if (ds->nparked >= (size_t)ds->cfg.route_batch && ds->nparked >= (size_t)ds->cfg.parked_max)
        return; /* back-pressure: the parked jobs go first */
    char count[32];
    snprintf(count, sizeof count, "%ld", ds->cfg.route_batch);
    /* Our own pending entries first (after a restart or a takeover), then new ones. */
    if (wc_redis_command(
            ds->jobs_rd, on_jobs, ds, "XREADGROUP GROUP %s %s COUNT %s BLOCK %s STREAMS %s %s",
            WC_GROUP_DISPATCH, ds->cfg.c.instance_id, count, ds->jobs_pel ? "0" : "1000",
            WC_KEY_JOBS, ds->jobs_pel ? ds->jobs_pel_cursor : ">") == 0) {
        ds->jobs_reading = true;
        ds->jobs_read_pel = ds->jobs_pel;
    }
}

static void on_waiting_written(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    ds->waiting_busy = false;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("writing waiting reasons: %s", err);
    }
}

/* Campaigns with messages that no device can take say so, and why (the
 * states of the user's devices), rewritten every few seconds while it lasts. */
static void mark_waiting(dispatcher *ds)
{
    if (ds->waiting_busy || !ds->parked)
        return;
    int64_t now_ms = wc_mono_us() / 1000;
    struct evbuffer *ids = evbuffer_new();
    size_t n = 0;
    for (route_job *j = ds->parked; j; j = j->next) {
        const char *c = j->job->campaign_id;
        if (wc_map_get(&ds->users, j->job->user_id))
            continue; /* it has a device; only full for now */
        uintptr_t at = (uintptr_t)wc_map_get(&ds->waiting, c);
        if (at && now_ms + 1 - (int64_t)at < 5000)
            continue;
        if (wc_map_put(&ds->waiting, c, (void *)(uintptr_t)(now_ms + 1)) < 0)
            abort();
        wc_map_del(&ds->clean, c);
        evbuffer_add_printf(ids, "%s%s", n++ ? "," : "{", c);
    }
    if (n) {
        evbuffer_add(ids, "}\0", 2);
        const char *params[] = {(const char *)evbuffer_pullup(ids, -1)};
        static const char *sql =
            "UPDATE campaigns c SET status_reason = 'waiting: no healthy device (' ||"
            " coalesce((SELECT string_agg(n || ' ' || st, ', ' ORDER BY st) FROM"
            "  (SELECT CASE WHEN d.status = 'online' AND d.resting_until > now() THEN"
            "    CASE WHEN d.status_reason LIKE 'daily limit%' THEN 'at daily limit'"
            "    ELSE 'resting' END"
            "   WHEN d.status = 'online' THEN 'not seen by a sender' ELSE d.status::text END"
            "   AS st, count(*) AS n FROM user_devices d WHERE d.user_id = c.user_id"
            "   GROUP BY 1) x), 'the user has no device') || ')'"
            " WHERE c.id = ANY($1::uuid[]) AND c.status IN ('triggered', 'processing')"
            " AND (c.status_reason IS NULL OR c.status_reason LIKE 'waiting:%')";
        if (wc_pg_query(ds->d.pg, sql, 1, params, on_waiting_written, ds) == 0) {
            ds->waiting_busy = true;
            ds->m.waiting_reasons += n;
        } else {
            ds->m.pg_errors++;
        }
    }
    evbuffer_free(ids);
}

static void on_window_written(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    ds->window_busy = false;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("writing sending-window reasons: %s", err);
    }
}

/* Running campaigns outside their sending window say so, and when it opens
 * (senders set their messages aside meanwhile; control.c brings them back
 * when the window opens). */
void on_window_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatcher *ds = arg;
    if (ds->window_busy)
        return;
    static const char *sql =
        "UPDATE campaigns c SET status_reason = w.reason FROM ("
        " SELECT id, CASE WHEN wacast_in_window(send_window_start, send_window_end, time_zone)"
        "  THEN NULL ELSE format('outside sending window %s-%s %s; opens at %s',"
        "   to_char(send_window_start, 'HH24:MI'), to_char(send_window_end, 'HH24:MI'), time_zone,"
        "   to_char(wacast_window_opens(send_window_start, send_window_end, time_zone)"
        "    AT TIME ZONE time_zone, 'YYYY-MM-DD HH24:MI')) END AS reason"
        " FROM campaigns WHERE status IN ('triggered', 'processing')"
        " AND send_window_start IS NOT NULL) w"
        " WHERE c.id = w.id AND ((w.reason IS NOT NULL AND c.status_reason IS DISTINCT FROM "
        "w.reason)"
        "  OR (w.reason IS NULL AND c.status_reason LIKE 'outside sending window%'))";
    if (wc_pg_query(ds->d.pg, sql, 0, NULL, on_window_written, ds) == 0)
        ds->window_busy = true;
}

/* Our pending list is read again from its start (after a reconnect, a
 * takeover, or when jobs let go from memory can be held again). */
void rescan_pending(dispatcher *ds)
{
    ds->jobs_pel = true;
    snprintf(ds->jobs_pel_cursor, sizeof ds->jobs_pel_cursor, "0");
}

/* Users whose jobs were let go from memory (park) get them back once their
 * waiting jobs are under half the per-user bound. */
static void take_back_spilled(dispatcher *ds)
{
    bool again = false;
    for (size_t i = 0; i < ds->spilled_users.cap; i++) {
        if (!wc_map_live(&ds->spilled_users, i))
            continue;
        const char *user = ds->spilled_users.slots[i].key;
        uintptr_t n = (uintptr_t)wc_map_get(&ds->parked_by_user, user);
        if (n < (uintptr_t)ds->cfg.parked_user_max / 2)
            again = true;
    }
    if (again) {
        wc_map_free(&ds->spilled_users);
        wc_map_init(&ds->spilled_users);
        rescan_pending(ds);
    }
}

/* The campaign maps of the "waiting" reasons are caches: emptied every
 * WACAST_REASON_PRUNE_MS (a minute), so campaigns that ended, or whose user
 * went away, do not stay in them (the cost is one cheap UPDATE per running
 * campaign a period). A waiting reason still being rewritten (every 5 s
 * while its jobs wait) stays. */
static void prune_reason_maps(dispatcher *ds)
{
    int64_t now_ms = wc_mono_us() / 1000;
    if (now_ms - ds->reasons_pruned_ms < ds->cfg.reason_prune_ms)
        return;
    ds->reasons_pruned_ms = now_ms;
    wc_map_free(&ds->clean);
    wc_map_init(&ds->clean);
    int64_t keep_ms = ds->cfg.reason_prune_ms > 10000 ? ds->cfg.reason_prune_ms : 10000;
    for (size_t i = 0; i < ds->waiting.cap; i++) {
        if (!wc_map_live(&ds->waiting, i))
            continue;
        int64_t at = (int64_t)(uintptr_t)ds->waiting.slots[i].value;
        if (now_ms + 1 - at > keep_ms)
            wc_map_del(&ds->waiting, ds->waiting.slots[i].key);
    }
}

void on_parked_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatcher *ds = arg;
    prune_reason_maps(ds);
    mark_waiting(ds);
    take_back_spilled(ds);
    if (!ds->parked)
        return;
    if (ds->routing) {
        ds->parked_due = true; /* routed as soon as the batch in flight is done */
        return;
    }
    ds->parked_due = false;
    route(ds, unpark_all(ds));
}

/* Keeps our parked entries from looking abandoned to peers' XAUTOCLAIM. */
void touch_parked(dispatcher *ds)
{
    if (!ds->parked)
        return;
    struct evbuffer *ids = evbuffer_new();
    for (route_job *j = ds->parked; j; j = j->next)
        evbuffer_add_printf(ids, " %s", j->entry_id);
    evbuffer_add_printf(ids, " JUSTID");
    const char *head[] = {"XCLAIM", WC_KEY_JOBS, WC_GROUP_DISPATCH, ds->cfg.c.instance_id, "0"};
    if (dispatcher_command_with_ids(ds->d.redis, dispatcher_on_void, ds, head, 5, ids) < 0)
        ds->m.redis_errors++;
    evbuffer_free(ids);
}
