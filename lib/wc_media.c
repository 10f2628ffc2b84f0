/* Storing a prepared image once (see wc_media.h). */
#include "wc_media.h"

#include <stdio.h>
#include <stdlib.h>

#include <sodium.h>

void wc_media_sha256(const wc_image_out *out, char sha[WC_MEDIA_SHA256_HEX])
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, out->jpeg, out->len);
    sodium_bin2hex(sha, WC_MEDIA_SHA256_HEX, digest, sizeof digest);
}

int wc_media_store(wc_pg *pg, const wc_image_out *out, size_t in_len,
                   const char sha[WC_MEDIA_SHA256_HEX], wc_pg_cb *cb, void *arg)
{
    char *hex = malloc(out->len * 2 + 1);
    if (!hex)
        return -1;
    sodium_bin2hex(hex, out->len * 2 + 1, out->jpeg, out->len);
    char size[24], w[16], h[16], q[16], source_bytes[24], sw[16], shh[16];
    snprintf(size, sizeof size, "%zu", out->len);
    snprintf(w, sizeof w, "%d", out->width);
    snprintf(h, sizeof h, "%d", out->height);
    snprintf(q, sizeof q, "%d", out->quality);
    snprintf(source_bytes, sizeof source_bytes, "%zu", in_len);
    snprintf(sw, sizeof sw, "%d", out->in_width);
    snprintf(shh, sizeof shh, "%d", out->in_height);
    const char *params[] = {sha,          hex, size, w, h, q, wc_image_type_name(out->in_type),
                            source_bytes, sw,  shh};
    int rc = wc_pg_query(pg,
                         "INSERT INTO media (sha256, bytes, size, width, height, quality,"
                         " source_type, source_bytes, source_width, source_height)"
                         " VALUES ($1, decode($2, 'hex'), $3, $4, $5, $6, $7, $8, $9, $10)"
                         " ON CONFLICT (sha256) DO NOTHING RETURNING sha256",
                         10, params, cb, arg);
    free(hex);
    return rc;
}
