/* Prepared images read once from PostgreSQL and kept within a byte cap for
 * the transports (see wc_media_cache.h). Touches only the media table, read. */
#include "wc_media_cache.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <sodium.h>

typedef struct mc_entry mc_entry;

struct wc_media_wait {
    wc_media_wait *next;
    mc_entry *entry;
    wc_media_got_cb *cb;
    void *arg;
    struct event *ready; /* an answer from memory, on the next loop turn */
};

/* One image: being read (loading) or held. Entries sit on one list in
 * least-recently-used order, the most recent first. */
struct mc_entry {
    mc_entry *prev, *next;
    wc_media_cache *cache; /* NULL: the cache was freed while the row was read */
    char sha[WC_MEDIA_SHA_LEN + 1];
    bool loading;
    unsigned char *bytes;
    size_t len;
    int pins;               /* waits answered from memory and not yet called back */
    wc_media_wait *waiters; /* waiting for the row */
};

struct wc_media_cache {
    struct event_base *base;
    wc_pg *pg;
    size_t max_bytes;
    mc_entry *head, *tail;
    wc_media_source source;
    wc_media_cache_stats stats;
};

static void entry_unlink(wc_media_cache *c, mc_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void entry_push_front(wc_media_cache *c, mc_entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    else
        c->tail = e;
    c->head = e;
}

static void entry_drop(wc_media_cache *c, mc_entry *e)
{
    entry_unlink(c, e);
    if (!e->loading) {
        c->stats.bytes -= e->len;
        c->stats.images--;
    }
    free(e->bytes);
    free(e);
}

/* Oldest held images go until the cap holds; those being read or about to
 * be handed out stay. */
static void evict(wc_media_cache *c)
{
    mc_entry *e = c->tail;
    while (e && c->stats.bytes > c->max_bytes) {
        mc_entry *prev = e->prev;
        if (!e->loading && e->pins == 0)
            entry_drop(c, e);
        e = prev;
    }
}

static mc_entry *find(wc_media_cache *c, const char *sha)
{
    for (mc_entry *e = c->head; e; e = e->next) {
        if (strcmp(e->sha, sha) == 0)
            return e;
    }
    return NULL;
}

static void on_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wc_media_wait *w = arg;
    mc_entry *e = w->entry;
    wc_media_cache *c = e->cache;
    wc_media_got got = {.bytes = e->bytes, .len = e->len};
    wc_media_got_cb *cb = w->cb;
    void *cbarg = w->arg;
    event_free(w->ready);
    free(w);
    cb(cbarg, &got);
    e->pins--;
    evict(c);
}

/* Answers every waiter of a read that ended; the entry is kept (held) or
 * dropped (failed) by the caller. */
static void answer_waiters(mc_entry *e, const wc_media_got *got)
{
    wc_media_wait *w = e->waiters;
    e->waiters = NULL;
    e->pins++; /* a callback may cancel or start waits: keep e */
    while (w) {
        wc_media_wait *next = w->next;
        wc_media_got_cb *cb = w->cb;
        void *arg = w->arg;
        free(w);
        cb(arg, got);
        w = next;
    }
    e->pins--;
}

static void on_row(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    mc_entry *e = arg;
    wc_media_cache *c = e->cache;
    if (!c) {
        free(e);
        return;
    }
    wc_media_got got = {0};
    char why[160];
    const char *hex =
        res && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0) : NULL;
    size_t hexlen = hex ? strlen(hex) : 0;
    e->loading = false;
    if (err) {
        got.error_code = "media_unavailable";
        snprintf(why, sizeof why, "the image could not be read from the database: %.100s", err);
        got.transient = true;
    } else if (!res || PQntuples(res) == 0) {
        got.error_code = "media_not_found";
        snprintf(why, sizeof why, "no stored image media:%s", e->sha);
    } else if (!hex || hexlen == 0 || hexlen % 2 != 0 || !(e->bytes = malloc(hexlen / 2)) ||
               sodium_hex2bin(e->bytes, hexlen / 2, hex, hexlen, NULL, &e->len, NULL) != 0) {
        got.error_code = "media_unreadable";
        snprintf(why, sizeof why, "the stored image media:%s cannot be read", e->sha);
        got.transient = hex && hexlen > 0 && hexlen % 2 == 0 && !e->bytes; /* out of memory */
    }
    if (got.error_code) {
        c->stats.errors++;
        got.error_message = why;
        /* Not kept: off the list before anyone hears, so that a wait
         * started from a callback reads the row again. */
        entry_unlink(c, e);
        answer_waiters(e, &got);
        free(e->bytes);
        free(e);
        return;
    }
    c->stats.reads++;
    c->stats.bytes += e->len;
    c->stats.images++;
    got.bytes = e->bytes;
    got.len = e->len;
    answer_waiters(e, &got);
    evict(c); /* an image over the cap on its own goes here, once served */
}

static wc_media_wait *mc_get(void *ctx, const char *sha256, wc_media_got_cb *cb, void *arg)
{
    wc_media_cache *c = ctx;
    if (!c || !sha256 || strlen(sha256) != WC_MEDIA_SHA_LEN || !cb)
        return NULL;
    wc_media_wait *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->cb = cb;
    w->arg = arg;
    mc_entry *e = find(c, sha256);
    if (e && !e->loading) {
        w->ready = evtimer_new(c->base, on_ready, w);
        struct timeval zero = {0, 0};
        if (!w->ready || evtimer_add(w->ready, &zero) < 0) {
            if (w->ready)
                event_free(w->ready);
            free(w);
            return NULL;
        }
        c->stats.hits++;
        w->entry = e;
        e->pins++;
        entry_unlink(c, e);
        entry_push_front(c, e);
        return w;
    }
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e) {
            free(w);
            return NULL;
        }
        e->cache = c;
        e->loading = true;
        memcpy(e->sha, sha256, WC_MEDIA_SHA_LEN + 1);
        const char *params[] = {e->sha};
        if (wc_pg_query(c->pg, "SELECT encode(bytes, 'hex') FROM media WHERE sha256 = $1", 1,
                        params, on_row, e) < 0) {
            free(e);
            free(w);
            return NULL;
        }
        entry_push_front(c, e);
    }
    w->entry = e;
    w->next = e->waiters;
    e->waiters = w;
    return w;
}

static void mc_cancel(wc_media_wait *w)
{
    if (!w)
        return;
    mc_entry *e = w->entry;
    if (w->ready) {
        event_free(w->ready);
        e->pins--;
        free(w);
        return;
    }
    for (wc_media_wait **pp = &e->waiters; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    free(w);
}

wc_media_cache *wc_media_cache_new(struct event_base *base, wc_pg *pg, size_t max_bytes)
{
    wc_media_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base = base;
    c->pg = pg;
    c->max_bytes = max_bytes;
    c->source = (wc_media_source){.ctx = c, .get = mc_get, .cancel = mc_cancel};
    return c;
}

void wc_media_cache_free(wc_media_cache *c)
{
    if (!c)
        return;
    mc_entry *e = c->head;
    while (e) {
        mc_entry *next = e->next;
        if (e->loading) {
            /* Its query answers later: on_row frees it then. */
            e->cache = NULL;
            e->waiters = NULL;
        } else {
            free(e->bytes);
            free(e);
        }
        e = next;
    }
    free(c);
}

const wc_media_source *wc_media_cache_source(wc_media_cache *c)
{
    return &c->source;
}

void wc_media_cache_get_stats(const wc_media_cache *c, wc_media_cache_stats *out)
{
    *out = c->stats;
}
