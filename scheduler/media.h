/* A campaign's image, prepared once when the campaign is triggered
 * (scheduler/media.c): the settings, and the calls scheduler.c makes. */
#ifndef SCHEDULER_MEDIA_H
#define SCHEDULER_MEDIA_H

#include <stdbool.h>
#include <stddef.h>

#include "wc_fetch.h"
#include "wc_image.h"

struct evbuffer;
typedef struct scheduler scheduler;

typedef struct media_cfg {
    long max_side;
    long max_bytes;
    long max_pixels;
    long fetch_max_bytes;
    long fetch_timeout_ms;
    char *fetch_allow;
    bool reference;
} media_cfg;

/* Config table entries; T is the daemon's config struct, field its media_cfg. */
#define MEDIA_CFG_ENTRIES(T, f)                                                                    \
    {"WACAST_MEDIA_MAX_SIDE", WC_CFG_INT, "1600", "longest side of a prepared image (pixels)",     \
     offsetof(T, f.max_side), 16,         10000,  false},                                          \
        {"WACAST_MEDIA_MAX_BYTES",                                                                 \
         WC_CFG_INT,                                                                               \
         "358400",                                                                                 \
         "a prepared image's JPEG is at most this many bytes (quality searched to fit)",           \
         offsetof(T, f.max_bytes),                                                                 \
         10240,                                                                                    \
         5242880,                                                                                  \
         false},                                                                                   \
        {"WACAST_MEDIA_MAX_PIXELS",                                                                \
         WC_CFG_INT,                                                                               \
         "40000000",                                                                               \
         "images whose header claims more pixels are refused before decoding",                     \
         offsetof(T, f.max_pixels),                                                                \
         10000,                                                                                    \
         500000000,                                                                                \
         false},                                                                                   \
        {"WACAST_MEDIA_FETCH_MAX_BYTES",                                                           \
         WC_CFG_INT,                                                                               \
         "20971520",                                                                               \
         "an image link's response (or a data: URL) may be at most this many bytes",               \
         offsetof(T, f.fetch_max_bytes),                                                           \
         1024,                                                                                     \
         268435456,                                                                                \
         false},                                                                                   \
        {"WACAST_MEDIA_FETCH_TIMEOUT_MS",                                                          \
         WC_CFG_INT,                                                                               \
         "20000",                                                                                  \
         "time allowed to fetch an image link, redirects included",                                \
         offsetof(T, f.fetch_timeout_ms),                                                          \
         100,                                                                                      \
         600000,                                                                                   \
         false},                                                                                   \
        {WC_FETCH_ALLOW_ENV,                                                                       \
         WC_CFG_STR,                                                                               \
         "",                                                                                       \
         "comma list of CIDRs an image link may reach although private or loopback"                \
         " (empty: public addresses only)",                                                        \
         offsetof(T, f.fetch_allow),                                                               \
         1,                                                                                        \
         0,                                                                                        \
         false},                                                                                   \
    {                                                                                              \
        "WACAST_MEDIA_REFERENCE", WC_CFG_BOOL, "false",                                            \
            "message rows carry media:<sha256> (the prepared image) instead of the campaign's"     \
            " media_url; needs senders whose transports read media: references",                   \
            offsetof(T, f.reference), 1, 0, false                                                  \
    }

/* At start-up (exits on a bad allow-list) and at the end. */
void media_init(scheduler *s);
void media_free(scheduler *s);
/* Called once a claimed campaign passed validation: prepares its image (or
 * finds it prepared) and then calls scheduler_expand(), or fails the
 * campaign with a reason naming what was wrong, or abandons the claim when
 * PostgreSQL is away. A campaign without media_url goes straight on. */
void media_prepare(scheduler *s);
void media_metrics(struct evbuffer *out, scheduler *s);

#endif
