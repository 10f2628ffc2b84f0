/* The user_devices rows this sender writes: status and reason, rest,
 * health, today's count and cap (one UPDATE ... FROM unnest for every device
 * that changed), and last_seen of the online ones. One statement at a time
 * (two on the same rows could deadlock); a failed write is retried with the
 * next batch.
 * May touch: user_devices rows of the devices this sender holds. */
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

void mark_dirty(device *dv)
{
    if (dv->row_dirty || dv->state == DEV_UNOWNED)
        return; /* another sender's device: its holder writes the row */
    dv->row_dirty = true;
    dv->dirty_next = dv->f->dirty;
    dv->f->dirty = dv;
}

/* What the device's row says: status and reason (NULL: none). Written with
 * the next batch; a change back and forth within one batch writes nothing new. */
void set_row(device *dv, const char *status, const char *reason)
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
void on_status_flush(evutil_socket_t fd, short what, void *arg)
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
