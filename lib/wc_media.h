/* The media table (sql/008_media.sql): a prepared image stored once under
 * the SHA-256 of its bytes, and the image settings. Shared by the scheduler
 * (a campaign's image) and the dispatcher's upload endpoint (POST /api/media). */
#ifndef WC_MEDIA_H
#define WC_MEDIA_H

#include <stddef.h>

#include "wc_config.h"
#include "wc_fetch.h"
#include "wc_image.h"
#include "wc_pg.h"

typedef struct wc_media_cfg {
    long max_side;
    long max_bytes;
    long max_pixels;
    long fetch_max_bytes;
    long fetch_timeout_ms;
    char *fetch_allow;
    bool reference;
} wc_media_cfg;

/* Config table entries (wc_config.h); T is the daemon's config struct, f its
 * wc_media_cfg field. Declared once for every daemon that prepares images. */
#define WC_MEDIA_CFG_ENTRIES(T, f)                                                                 \
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
         "an image's source (a link's response, a data: URL, an upload) may be at most this many"  \
         " bytes",                                                                                 \
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
        "WACAST_MEDIA_REFERENCE", WC_CFG_BOOL, "true",                                             \
            "message rows carry media:<sha256> (the prepared image) instead of the campaign's"     \
            " media_url (false: a copy of the media_url, for senders older than media: support)",  \
            offsetof(T, f.reference), 1, 0, false                                                  \
    }

#define WC_MEDIA_SHA256_HEX 65 /* 64 hex digits and a NUL */

/* Lower-case hex SHA-256 of the prepared JPEG. */
void wc_media_sha256(const wc_image_out *out, char sha[WC_MEDIA_SHA256_HEX]);
/* Queues INSERT ... ON CONFLICT DO NOTHING RETURNING sha256 of the prepared
 * image (a picture already stored is kept as it is, and the statement then
 * returns no row: both mean it is there). in_len is the source's size. 0, or
 * -1 when the query could not be queued. */
int wc_media_store(wc_pg *pg, const wc_image_out *out, size_t in_len,
                   const char sha[WC_MEDIA_SHA256_HEX], wc_pg_cb *cb, void *arg)
    __attribute__((warn_unused_result));

#endif
