/* The body of the reply fuzz targets (fuzz_cloudapi_reply.c,
 * fuzz_gowa_reply.c): a provider's reply classification on arbitrary bytes.
 * The first two bytes pick the HTTP status (big-endian, modulo 1000), the
 * third the attempt number; the rest is the reply body. Whatever the body,
 * every text in the result must be NUL-terminated within its array and valid
 * UTF-8 (PostgreSQL refuses a whole status batch for one bad byte), a kept
 * provider id must be plain printable ASCII, and the flags must agree with
 * the outcome. A broken rule aborts. */
#ifndef WC_FUZZ_REPLY_CHECK_H
#define WC_FUZZ_REPLY_CHECK_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wc_text.h"
#include "wc_transport.h"

typedef void fuzz_classify(long http_status, const char *body, size_t len, uint32_t attempt,
                           wc_send_result *out);

static void check_text(const char *field, size_t size)
{
    const char *nul = memchr(field, '\0', size);
    if (!nul || !wc_text_valid(field, (size_t)(nul - field)))
        abort();
}

static int fuzz_reply(const uint8_t *data, size_t size, fuzz_classify *classify)
{
    if (size < 3)
        return 0;
    long status = ((long)data[0] << 8 | data[1]) % 1000;
    uint32_t attempt = data[2];
    wc_send_result r;
    memset(&r, 0xA5, sizeof r); /* the classification must overwrite everything */
    classify(status, (const char *)data + 3, size - 3, attempt, &r);

    check_text(r.error_code, sizeof r.error_code);
    check_text(r.error_message, sizeof r.error_message);
    check_text(r.provider_id, sizeof r.provider_id);
    check_text(r.device_reason, sizeof r.device_reason);
    for (const char *p = r.provider_id; *p; p++) {
        if (*p < 0x21 || *p > 0x7E)
            abort();
    }
    if (r.outcome != WC_SEND_OK && r.outcome != WC_SEND_RETRY && r.outcome != WC_SEND_FAIL)
        abort();
    if (r.outcome_unknown && r.outcome != WC_SEND_RETRY)
        abort();
    if (r.provider_id[0] && r.outcome != WC_SEND_OK)
        abort();
    if (r.retry_after_ms < 0 || (r.outcome == WC_SEND_RETRY && r.retry_after_ms == 0))
        abort();
    if (r.device_action < WC_DEVICE_OK || r.device_action > WC_DEVICE_LOGGED_OUT)
        abort();
    return 0;
}

#endif
