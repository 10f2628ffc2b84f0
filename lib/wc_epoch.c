/* The Redis fence: how a daemon knows, on every (re)connect, whether Redis
 * came back without some of the writes it had acknowledged (AOF everysec and
 * a crash within the second, a restore from an older copy, no AOF at all).
 *
 * Why a fence and not the restart itself: a Redis that was killed -9 with its
 * AOF fsynced lost nothing and must not cost a recovery; one restored from a
 * copy a second old looks just the same from outside. So the proof is kept
 * on both sides. Redis holds wacast:fence {epoch, seq, ms}; every tick a
 * sender bumps seq in Redis (a script, which also stamps Redis's clock), and
 * only after Redis acknowledged the bump raises PostgreSQL's copy
 * (redis_fence.seq) to it. PostgreSQL therefore never holds a seq Redis did
 * not acknowledge; a Redis whose seq is below PostgreSQL's, or that has no
 * fence while PostgreSQL has one, lost acknowledged writes.
 *
 * A check reads PostgreSQL's copy first and Redis after it (the other order
 * would race with the bumps: a bump acknowledged and copied between the two
 * reads would look like a loss).
 *
 * On such a finding, wacast_redis_fence_check() (sql/006) starts a new epoch
 * in one serialised statement and records when the loss was found and the
 * Redis time of the last fence that survived; the finder writes the new
 * epoch to Redis, and a daemon that checks later (or meets the new epoch in
 * a tick) learns the same record. Every daemon then recovers from
 * PostgreSQL: senders check the rows of what they are about to send, the
 * scheduler's reconciler runs at once.
 *
 * The granularity is the tick: a loss of less than one tick between two
 * bumps can go unnoticed (the messages it holds fall back to the markers and
 * the in-doubt rules). Cost: one script and one single-row UPDATE per tick
 * per sender, nothing per message. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "wc_daemon.h"
#include "wc_epoch.h"
#include "wc_log.h"
#include "wc_lua.h"

/* A loss recorded this recently is recovered from by a process that starts
 * after it was found (its lanes may still hold what the loss touched). */
#define WC_EPOCH_RECENT_MS 120000

struct wc_epoch {
    struct event_base *base;
    wc_redis *redis;
    wc_pg *pg;
    wc_epoch_cb *cb;
    void *arg;
    int tick_ms;
    struct event *tick_ev, *retry_ev;
    bool checking;                 /* a check is in flight */
    bool recheck;                  /* another connect came during the check */
    bool ticking;                  /* a bump is in flight */
    bool checked;                  /* at least one check answered */
    bool settled;                  /* the check after the latest connect answered */
    int64_t epoch;                 /* 0 until checked */
    int64_t loss_at_ms;            /* the loss on record at the last check */
    uint64_t recoveries;           /* losses this process recovered from */
    char pg_epoch[24], pg_seq[24]; /* PostgreSQL's copy, read before Redis ("": no row) */
    char redis_epoch[24], redis_seq[24], redis_ms[24];
    wc_epoch_state st;
    int inflight; /* commands and queries whose callbacks are still to come */
    bool dead;    /* freed by its owner: the last callback frees it */
};

/* The fence's scripts: lib/lua/fence_bump.lua, lib/lua/fence_reset.lua. */

static void check(wc_epoch *e);

/* Every callback starts here: false when the owner freed it meanwhile (the
 * last outstanding callback then frees the memory). */
static bool alive(wc_epoch *e)
{
    e->inflight--;
    if (!e->dead)
        return true;
    if (e->inflight == 0)
        free(e);
    return false;
}

static void retry_later(wc_epoch *e)
{
    e->checking = false;
    if (!e->retry_ev)
        return;
    struct timeval tv = {1, 0};
    evtimer_add(e->retry_ev, &tv);
}

static void check_done(wc_epoch *e)
{
    e->checking = false;
    e->checked = true;
    e->settled = !e->recheck;
    e->epoch = e->st.epoch;
    int64_t now_ms = wc_now_us() / 1000;
    bool known = e->loss_at_ms != 0 || e->recoveries > 0;
    bool new_loss = e->st.loss_at_ms != 0 && e->st.loss_at_ms != e->loss_at_ms;
    /* A process's first look counts a loss found a moment ago as its own. */
    e->st.recovering =
        new_loss && (known || e->st.lost_now || now_ms - e->st.loss_at_ms < WC_EPOCH_RECENT_MS);
    e->loss_at_ms = e->st.loss_at_ms;
    if (e->st.lost_now)
        wc_warn("redis lost acknowledged writes: Redis kept its fence up to %" PRId64
                " ms; epoch %" PRId64 " starts; recovering from PostgreSQL",
                e->st.loss_redis_ms, e->st.epoch);
    else if (e->st.recovering)
        wc_warn("redis lost acknowledged writes (found by another daemon at %" PRId64
                "); epoch %" PRId64 "; recovering from PostgreSQL",
                e->st.loss_at_ms, e->st.epoch);
    else
        wc_info("redis fence: epoch %" PRId64 ", nothing lost", e->st.epoch);
    if (e->st.recovering)
        e->recoveries++;
    e->cb(e->arg, &e->st);
    if (e->recheck) {
        e->recheck = false;
        check(e);
    }
}

static void on_reset(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    wc_epoch *e = arg;
    if (!alive(e))
        return;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        retry_later(e);
        return;
    }
    check_done(e);
}

static int64_t num(PGresult *res, int col)
{
    return strtoll(PQgetvalue(res, 0, col), NULL, 10);
}

static void on_checked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    wc_epoch *e = arg;
    if (!alive(e))
        return;
    if (!res || PQntuples(res) != 1) {
        wc_warn("redis fence check: %s", err ? err : "no row");
        retry_later(e);
        return;
    }
    memset(&e->st, 0, sizeof e->st);
    e->st.epoch = num(res, 0);
    bool reset = PQgetvalue(res, 0, 1)[0] == 't';
    e->st.lost_now = PQgetvalue(res, 0, 2)[0] == 't';
    e->st.loss_redis_ms = num(res, 3);
    e->st.loss_at_ms = num(res, 4);
    if (!reset) {
        check_done(e);
        return;
    }
    char ep[24];
    snprintf(ep, sizeof ep, "%" PRId64, e->st.epoch);
    const char *argv[] = {"EVAL", WC_LUA_FENCE_RESET, "1", WC_KEY_FENCE, ep, "0"};
    if (wc_redis_commandv(e->redis, on_reset, e, 6, argv, NULL) < 0)
        retry_later(e);
    else
        e->inflight++;
}

static void copy_field(char *out, size_t n, redisReply *v)
{
    if (v->type == REDIS_REPLY_STRING)
        snprintf(out, n, "%.*s", (int)v->len, v->str);
    else
        out[0] = '\0';
}

static void on_fence(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    wc_epoch *e = arg;
    if (!alive(e))
        return;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) {
        retry_later(e);
        return;
    }
    copy_field(e->redis_epoch, sizeof e->redis_epoch, reply->element[0]);
    copy_field(e->redis_seq, sizeof e->redis_seq, reply->element[1]);
    copy_field(e->redis_ms, sizeof e->redis_ms, reply->element[2]);
    bool none = !e->redis_epoch[0], no_row = !e->pg_epoch[0];
    const char *params[] = {none ? NULL : e->redis_epoch,
                            none ? NULL : (e->redis_seq[0] ? e->redis_seq : "0"),
                            none ? NULL : (e->redis_ms[0] ? e->redis_ms : "0"),
                            no_row ? NULL : e->pg_epoch, no_row ? NULL : e->pg_seq};
    if (wc_pg_query(e->pg,
                    "SELECT epoch, reset, lost, loss_redis_ms, loss_at_ms"
                    " FROM wacast_redis_fence_check($1::bigint, $2::bigint, $3::bigint,"
                    " $4::bigint, $5::bigint)",
                    5, params, on_checked, e) < 0)
        retry_later(e);
    else
        e->inflight++;
}

/* PostgreSQL's copy first, then Redis: every seq PostgreSQL holds was
 * acknowledged by Redis before, so a Redis read after it must hold as much;
 * read the other way round, a bump landing in between would look like a loss. */
static void on_pg_fence(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    wc_epoch *e = arg;
    if (!alive(e))
        return;
    if (!res) {
        wc_warn("redis fence check: %s", err);
        retry_later(e);
        return;
    }
    e->pg_epoch[0] = e->pg_seq[0] = '\0';
    if (PQntuples(res) == 1) {
        snprintf(e->pg_epoch, sizeof e->pg_epoch, "%s", PQgetvalue(res, 0, 0));
        snprintf(e->pg_seq, sizeof e->pg_seq, "%s", PQgetvalue(res, 0, 1));
    }
    if (wc_redis_command(e->redis, on_fence, e, "HMGET %s epoch seq ms", WC_KEY_FENCE) < 0)
        retry_later(e);
    else
        e->inflight++;
}

static void check(wc_epoch *e)
{
    e->settled = false;
    if (e->checking) {
        e->recheck = true;
        return;
    }
    if (!wc_redis_ready(e->redis))
        return; /* the connect hook checks when it is back */
    e->checking = true;
    if (wc_pg_query(e->pg, "SELECT epoch, seq FROM redis_fence", 0, NULL, on_pg_fence, e) < 0)
        retry_later(e);
    else
        e->inflight++;
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    check(arg);
}

static void on_connected(wc_redis *r, void *arg)
{
    (void)r;
    check(arg);
}

static void on_raised(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    wc_epoch *e = arg;
    if (!alive(e))
        return;
    e->ticking = false;
    if (!res)
        wc_warn("redis fence: %s", err);
}

static void on_bumped(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    wc_epoch *e = arg;
    if (!alive(e))
        return;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        e->ticking = false;
        return;
    }
    if (reply->integer < 0) {
        /* Redis carries another epoch (or none): look again. */
        e->ticking = false;
        check(e);
        return;
    }
    /* Acknowledged by Redis: only now may PostgreSQL hold it. */
    char ep[24], seq[24];
    snprintf(ep, sizeof ep, "%" PRId64, e->epoch);
    snprintf(seq, sizeof seq, "%lld", reply->integer);
    const char *params[] = {ep, seq};
    if (wc_pg_query(
            e->pg,
            "UPDATE redis_fence SET seq = greatest(seq, $2::bigint) WHERE epoch = $1::bigint", 2,
            params, on_raised, e) < 0)
        e->ticking = false;
    else
        e->inflight++;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wc_epoch *e = arg;
    if (e->ticking || e->checking || !e->checked || !wc_redis_ready(e->redis))
        return;
    char ep[24];
    snprintf(ep, sizeof ep, "%" PRId64, e->epoch);
    const char *argv[] = {"EVAL", WC_LUA_FENCE_BUMP, "1", WC_KEY_FENCE, ep};
    if (wc_redis_commandv(e->redis, on_bumped, e, 5, argv, NULL) == 0) {
        e->ticking = true;
        e->inflight++;
    }
}

wc_epoch *wc_epoch_new(struct event_base *base, wc_redis *redis, wc_pg *pg, int tick_ms,
                       wc_epoch_cb *cb, void *arg)
{
    wc_epoch *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->base = base;
    e->redis = redis;
    e->pg = pg;
    e->cb = cb;
    e->arg = arg;
    e->tick_ms = tick_ms;
    e->retry_ev = evtimer_new(base, on_retry, e);
    if (tick_ms > 0) {
        e->tick_ev = event_new(base, -1, EV_PERSIST, on_tick, e);
        struct timeval tv = {tick_ms / 1000, (tick_ms % 1000) * 1000};
        if (e->tick_ev)
            evtimer_add(e->tick_ev, &tv);
    }
    if (!e->retry_ev || (tick_ms > 0 && !e->tick_ev)) {
        wc_epoch_free(e);
        return NULL;
    }
    wc_redis_on_connect(redis, on_connected, e);
    check(e);
    return e;
}

void wc_epoch_free(wc_epoch *e)
{
    if (!e)
        return;
    wc_redis_on_connect(e->redis, NULL, NULL);
    if (e->tick_ev)
        event_free(e->tick_ev);
    if (e->retry_ev)
        event_free(e->retry_ev);
    e->tick_ev = e->retry_ev = NULL;
    e->dead = true;
    if (e->inflight == 0)
        free(e);
}

bool wc_epoch_settled(const wc_epoch *e)
{
    return e->settled;
}

int64_t wc_epoch_current(const wc_epoch *e)
{
    return e->epoch;
}

uint64_t wc_epoch_recoveries(const wc_epoch *e)
{
    return e->recoveries;
}
