/* Knowing that Redis lost acknowledged writes, from PostgreSQL (the fence).
 *
 * Contract:
 * - wc_epoch_new() takes over the Redis client's connect hook: on every
 *   (re)connect, and whenever a fence bump finds another epoch in Redis, it
 *   checks Redis's fence against PostgreSQL's copy and then calls cb with
 *   the outcome. cb runs on the loop; the state it gets is valid during the
 *   call only.
 * - With tick_ms > 0 it also bumps the fence every tick_ms (one Redis script
 *   and one PostgreSQL UPDATE per tick, never per message). A loss is found
 *   when Redis comes back with fewer bumps than PostgreSQL saw acknowledged;
 *   a loss shorter than one tick can go unnoticed.
 * - Never free it from inside its callback. */
#ifndef WC_EPOCH_H
#define WC_EPOCH_H

#include <stdbool.h>
#include <stdint.h>

#include "wc_pg.h"
#include "wc_redis.h"

struct event_base;

typedef struct wc_epoch_state {
    int64_t epoch;
    bool lost_now;         /* this check found the loss (and started the new epoch) */
    bool recovering;       /* a loss this process had not seen yet: recover from it now */
    int64_t loss_at_ms;    /* when the last loss on record was found (wall ms; 0: never) */
    int64_t loss_redis_ms; /* Redis clock of the last point it kept (0: it kept nothing) */
} wc_epoch_state;

typedef void wc_epoch_cb(void *arg, const wc_epoch_state *st);

typedef struct wc_epoch wc_epoch;

wc_epoch *wc_epoch_new(struct event_base *base, wc_redis *redis, wc_pg *pg, int tick_ms,
                       wc_epoch_cb *cb, void *arg);
void wc_epoch_free(wc_epoch *e);

/* True once the check that followed the latest (re)connect has answered:
 * until then nobody knows whether Redis lost data, and nothing that relies
 * on its markers should go out. */
bool wc_epoch_settled(const wc_epoch *e);

/* The epoch of the last check (0 before the first one answered). */
int64_t wc_epoch_current(const wc_epoch *e);

/* How many times this process entered a recovery (for metrics). */
uint64_t wc_epoch_recoveries(const wc_epoch *e);

#define WC_KEY_FENCE "wacast:fence" /* hash: epoch, seq, ms (Redis clock of the last bump) */

#endif
