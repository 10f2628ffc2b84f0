/* Open-addressing string map; see wc_map.h. */
#include "wc_map.h"

#include <stdlib.h>
#include <string.h>

static char tombstone_key;
#define TOMBSTONE (&tombstone_key)

uint64_t wc_hash64(const void *data, size_t len, uint64_t seed)
{
    /* FNV-1a, then a splitmix64 finaliser for better high bits. */
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ULL ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

void wc_map_init(wc_map *m)
{
    memset(m, 0, sizeof *m);
}

void wc_map_free(wc_map *m)
{
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].key && m->slots[i].key != TOMBSTONE)
            free(m->slots[i].key);
    }
    free(m->slots);
    memset(m, 0, sizeof *m);
}

int wc_map_live(const wc_map *m, size_t i)
{
    return m->slots[i].key && m->slots[i].key != TOMBSTONE;
}

static wc_map_slot *find(const wc_map *m, const char *key, uint64_t h)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        wc_map_slot *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->key != TOMBSTONE && s->hash == h && strcmp(s->key, key) == 0)
            return s;
    }
}

void *wc_map_get(const wc_map *m, const char *key)
{
    wc_map_slot *s = find(m, key, wc_hash64(key, strlen(key), 0));
    return s ? s->value : NULL;
}

static int grow(wc_map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    if (m->len * 2 < m->cap)
        cap = m->cap; /* only tombstones to clear */
    wc_map_slot *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t i = 0; i < m->cap; i++) {
        wc_map_slot *s = &m->slots[i];
        if (!s->key || s->key == TOMBSTONE)
            continue;
        size_t j = s->hash & (cap - 1);
        while (slots[j].key)
            j = (j + 1) & (cap - 1);
        slots[j] = *s;
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
    m->tombstones = 0;
    return 0;
}

int wc_map_put(wc_map *m, const char *key, void *value)
{
    uint64_t h = wc_hash64(key, strlen(key), 0);
    wc_map_slot *s = find(m, key, h);
    if (s) {
        s->value = value;
        return 0;
    }
    if ((m->len + m->tombstones + 1) * 4 >= m->cap * 3 && grow(m) < 0)
        return -1;
    char *copy = strdup(key);
    if (!copy)
        return -1;
    size_t mask = m->cap - 1;
    size_t i = h & mask;
    while (m->slots[i].key && m->slots[i].key != TOMBSTONE)
        i = (i + 1) & mask;
    if (m->slots[i].key == TOMBSTONE)
        m->tombstones--;
    m->slots[i] = (wc_map_slot){copy, value, h};
    m->len++;
    return 0;
}

void *wc_map_del(wc_map *m, const char *key)
{
    wc_map_slot *s = find(m, key, wc_hash64(key, strlen(key), 0));
    if (!s)
        return NULL;
    void *v = s->value;
    free(s->key);
    s->key = TOMBSTONE;
    s->value = NULL;
    m->len--;
    m->tombstones++;
    return v;
}
