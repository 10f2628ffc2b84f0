/* When Redis may not know the truth: after it lost acknowledged writes
 * (lib/wc_epoch.c finds that on every reconnect), jobs published before the
 * loss are checked against their rows in PostgreSQL before they are sent, and
 * held devices keep their pacing and day counts from this sender's memory; a
 * send in doubt (a claim whose outcome is unknown) is looked up in PostgreSQL
 * too and waits in the later set until its status arrives or
 * WACAST_IN_DOUBT_MS runs out. Checks are batched across devices.
 * May touch: the device's message in hand, markers via report.c. */
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

static void checks_flush(fleet *f);

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

void on_check_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    checks_flush(arg);
}

/* Reads the row of the device's message from PostgreSQL, in a batch with
 * the other devices' (gathered for a few milliseconds), then sends, resolves
 * or waits. */
void pg_check(device *dv)
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

/* After every fence check (wc_epoch.c). On a loss this sender had not seen:
 * jobs published up to the loss are checked against PostgreSQL before they
 * are sent; held devices keep their pacing and counts from memory (written
 * back to Redis) and their leases (a missing lease is taken again by the
 * heartbeat, sent now); every device re-reads its pending entries. */
void on_fence_checked(void *arg, const wc_epoch_state *st)
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
        const char *argv[] = {"EVAL", LUA_RESTORE_DEVICE, "2", next, day, next_val, sent};
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
