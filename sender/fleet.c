/* Who holds which device. Senders announce themselves in a sorted set with
 * a heartbeat; for every device each one computes the rendezvous-hash winner
 * among the live senders and takes a lease (SET NX PX) on the devices it wins.
 * A lease is renewed on every heartbeat and only by its owner (lua/lease_renew.lua),
 * so a device sends from at most one process. Taking a device loads what its
 * last holder left in Redis (next send time, day count, later set, lanes and
 * their pending entries) before its transport opens. Also here: the device
 * list re-read from PostgreSQL (settings, credentials, limits), deleted
 * devices, wake-ups from the router and the idle poll.
 * May touch: leases, the live-senders set, the device map; a device's state
 * only through device.c's entry points (device_step, open_transport, ...). */
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
#include "wc_lua.h"

static void on_autoclaim(wc_redis *r, redisReply *reply, void *arg);

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

/* Hands the device back: only from a resting state (no send in flight). */
void device_release(device *dv)
{
    fleet *f = dv->f;
    evtimer_del(dv->timer);
    close_transport(dv);
    free_job(dv);
    char lease[128];
    wc_key_lease(lease, sizeof lease, dv->id);
    /* Only while this sender holds it (lib/lua/del_if.lua). */
    const char *argv[] = {"EVAL", WC_LUA_DEL_IF, "1", lease, f->cfg.c.instance_id};
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
    if (f->d.stopping || !dv->seen || !dv->credentials_hex || f->nlive == 0)
        return false; /* credentials_hex NULL: not read yet (on_credentials) */
    /* The hashes change only with the set of live senders. */
    if (dv->won_gen == f->live_gen)
        return dv->won;
    dv->won = falls_to_us(f, dv);
    dv->won_gen = f->live_gen;
    return dv->won;
}

void free_device(device *dv)
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
 * waiting for it forever, and goes on doing so every idle poll (the router
 * may learn of the deletion later and route there meanwhile, handed-back
 * jobs included); then every sender forgets it (a minute later, when no
 * reply about it can still be in flight and the router has long re-read its
 * devices). */
static bool forget_if_gone(fleet *f, device *dv)
{
    if (dv->seen) {
        dv->gone_us = 0;
        dv->gone_handled = false;
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

void rebalance(fleet *f)
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

/* A changed transport setting takes effect at the device's next rest; an
 * offline device reconnects with it at once. */
static void reopen_if_offline(device *dv)
{
    if (dv->reopen && dv->state == DEV_OFFLINE) {
        dv->reopen = false;
        evtimer_del(dv->timer);
        dv->open_backoff_ms = 0;
        open_transport(dv);
    }
}

/* The sealed credentials of the devices whose digest changed (or that are
 * new), then the rebalance that may take them: a device is never opened
 * before its credentials are here. On an error the devices keep what they
 * had (a new one stays untaken) and the next refresh asks again; the others
 * are rebalanced all the same. */
static void on_credentials(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    fleet *f = arg;
    f->refreshing = false;
    if (!res) {
        f->m.pg_errors++;
        wc_warn("reading device credentials: %s", err);
        rebalance(f);
        return;
    }
    for (int r = 0; r < PQntuples(res); r++) {
        device *dv = wc_map_get(&f->devices, PQgetvalue(res, r, 0));
        if (!dv)
            continue;
        f->m.credentials_loaded++;
        /* Rotated or replaced credentials take effect at the next rest. */
        if (dv->credentials_hex && strcmp(dv->credentials_hex, PQgetvalue(res, r, 1)) != 0)
            dv->reopen = true;
        free(dv->credentials_hex);
        dv->credentials_hex = strdup(PQgetvalue(res, r, 1));
        snprintf(dv->creds_md5, sizeof dv->creds_md5, "%s", PQgetvalue(res, r, 2));
        reopen_if_offline(dv);
    }
    rebalance(f);
}

static void on_devices(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    fleet *f = arg;
    if (!res) {
        f->refreshing = false;
        f->m.pg_errors++;
        wc_warn("reading devices: %s", err);
        return;
    }
    f->m.device_lists_read++;
    struct evbuffer *load = evbuffer_new(); /* devices whose credentials are read, as a uuid[] */
    size_t nload = 0;
    if (!load)
        abort();
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
        /* Only the credentials' digest comes with every refresh; the sealed
         * bytes are read when they change (on_credentials). */
        const char *digest = PQgetvalue(res, r, 5);
        if (!dv->credentials_hex || strcmp(dv->creds_md5, digest) != 0) {
            if (!digest[0]) {
                if (dv->credentials_hex && dv->credentials_hex[0])
                    dv->reopen = true;
                free(dv->credentials_hex);
                dv->credentials_hex = strdup("");
                dv->creds_md5[0] = '\0';
            } else {
                evbuffer_add_printf(load, "%s%s", nload++ ? "," : "{", dv->id);
            }
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
        reopen_if_offline(dv);
    }
    if (nload == 0) {
        evbuffer_free(load);
        f->refreshing = false;
        rebalance(f);
        return;
    }
    evbuffer_add(load, "}\0", 2);
    const char *params[] = {(const char *)evbuffer_pullup(load, -1)};
    if (wc_pg_query(f->d.pg,
                    "SELECT id, encode(credentials, 'hex'), md5(credentials) FROM user_devices"
                    " WHERE id = ANY($1::uuid[]) AND credentials IS NOT NULL",
                    1, params, on_credentials, f) < 0) {
        f->m.pg_errors++;
        f->refreshing = false;
        rebalance(f);
    }
    evbuffer_free(load);
}

void on_refresh(evutil_socket_t fd, short what, void *arg)
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
        " coalesce(md5(credentials), ''), l.today::text,"
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

void on_heartbeat(evutil_socket_t fd, short what, void *arg)
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
        const char *argv[] = {"EVAL", LUA_LEASE_RENEW, "1", lease, f->cfg.c.instance_id, ttl};
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
void on_wake(wc_redis *r, const char *channel, const char *msg, size_t len, void *arg)
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

void on_idle_poll(evutil_socket_t fd, short what, void *arg)
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
        if (dv->state == DEV_OFFLINE || dv->state == DEV_RESTING ||
            (dv->gone_handled && !dv->seen)) {
            /* Jobs routed here before the router saw the device leave (a
             * deleted one: until every sender forgets it). */
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
