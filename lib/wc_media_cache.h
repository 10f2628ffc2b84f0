/* The bytes of prepared images for the transports, read by sha256 from the
 * media table (sql/008_media.sql) on the daemon's loop and kept in a bounded
 * cache: least recently used images go first once the bytes held pass the
 * cap; requests for an image already being read wait for that one read. It
 * serves the sender's transports through a wc_media_source (wc_transport.h).
 *
 * Contract: a missing row answers media_not_found, a row whose bytes cannot
 * be decoded media_unreadable (both for good), a query that failed
 * media_unavailable (transient). The callback never runs from inside get().
 * Free the cache only when no wait is left (cancel them, or close the
 * transports first); a read still in flight in the pool is fine. */
#ifndef WC_MEDIA_CACHE_H
#define WC_MEDIA_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "wc_pg.h"
#include "wc_transport.h"

struct event_base;
typedef struct wc_media_cache wc_media_cache;

typedef struct wc_media_cache_stats {
    uint64_t hits;   /* answered from memory */
    uint64_t reads;  /* rows read from PostgreSQL */
    uint64_t errors; /* reads that failed (not found, unreadable, no answer) */
    size_t bytes;    /* held now */
    size_t images;   /* held now */
} wc_media_cache_stats;

/* max_bytes caps the bytes held (an image larger than the cap is served and
 * not kept). NULL when out of memory. */
wc_media_cache *wc_media_cache_new(struct event_base *base, wc_pg *pg, size_t max_bytes);
void wc_media_cache_free(wc_media_cache *c);

/* The source to put in wc_transport_env.media; lives as long as the cache. */
const wc_media_source *wc_media_cache_source(wc_media_cache *c);

void wc_media_cache_get_stats(const wc_media_cache *c, wc_media_cache_stats *out);

#endif
