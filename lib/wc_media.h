/* The media table (sql/008_media.sql): a prepared image stored once under
 * the SHA-256 of its bytes. Shared by the scheduler (a campaign's image) and
 * the dispatcher's upload endpoint (POST /api/media). */
#ifndef WC_MEDIA_H
#define WC_MEDIA_H

#include <stddef.h>

#include "wc_image.h"
#include "wc_pg.h"

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
