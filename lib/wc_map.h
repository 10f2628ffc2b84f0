/* A string-keyed hash map (open addressing, linear probing) for the daemons'
 * in-memory indexes (devices by id, users by id). Keys are copied; values are
 * the caller's. Not thread-safe: one loop per daemon. */
#ifndef WC_MAP_H
#define WC_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct wc_map_slot {
    char *key;
    void *value;
    uint64_t hash;
} wc_map_slot;

typedef struct wc_map {
    wc_map_slot *slots;
    size_t cap; /* power of two */
    size_t len;
    size_t tombstones;
} wc_map;

uint64_t wc_hash64(const void *data, size_t len, uint64_t seed);

void wc_map_init(wc_map *m);
void wc_map_free(wc_map *m);
void *wc_map_get(const wc_map *m, const char *key);
/* Inserts or replaces; returns 0 or -1 when out of memory. */
int wc_map_put(wc_map *m, const char *key, void *value) __attribute__((warn_unused_result));
/* Removes key; returns its value or NULL. */
void *wc_map_del(wc_map *m, const char *key);

/* Iteration: for (size_t i = 0; i < m->cap; i++) if (wc_map_live(m, i)) ... */
int wc_map_live(const wc_map *m, size_t i);

#endif
