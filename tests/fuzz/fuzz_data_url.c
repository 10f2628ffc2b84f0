/* Fuzzes the decoding of an image given as a data: URL in a campaign's or a
 * step's media_url (wc_fetch_data_url): the dashboard's text, so any bytes.
 * Input: one byte choosing the byte cap (0: the default; else 1-255 bytes),
 * then the URL up to the first NUL. Properties:
 *   - success holds at most the cap, with no error code; failure holds
 *     nothing and names one of the documented codes with a reason;
 *   - the same input gives the same answer;
 *   - the input's bytes encoded as "data:image/png;base64,..." (with line
 *     breaks, as some encoders write it) come back exactly, or are refused
 *     as too large exactly when they are over the cap.
 * fuzz-max-len: 4096 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "check.h"
#include "wc_fetch.h"

static bool known_code(const char *code)
{
    return code && (!strcmp(code, WC_FETCH_E_URL) || !strcmp(code, WC_FETCH_E_DATA_URL) ||
                    !strcmp(code, WC_FETCH_E_TOO_LARGE) || !strcmp(code, WC_FETCH_E_FAILED));
}

static void check_round_trip(const uint8_t *bytes, size_t n, size_t cap)
{
    size_t b64len = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(b64len);
    if (!b64)
        abort();
    sodium_bin2base64(b64, b64len, bytes, n, sodium_base64_VARIANT_ORIGINAL);
    size_t enc = strlen(b64);
    /* "data:image/png;base64," + the text with "\r\n" every 76 characters. */
    char *url = malloc(22 + enc + (enc / 76 + 1) * 2 + 1);
    if (!url)
        abort();
    size_t u = 0;
    memcpy(url, "data:image/png;base64,", 22);
    u = 22;
    for (size_t i = 0; i < enc; i++) {
        if (i && i % 76 == 0) {
            url[u++] = '\r';
            url[u++] = '\n';
        }
        url[u++] = b64[i];
    }
    url[u] = '\0';
    unsigned char *out = NULL;
    size_t outlen = 0;
    const char *code = NULL;
    char why[160] = "";
    int rc = wc_fetch_data_url(url, cap, &out, &outlen, &code, why, sizeof why);
    size_t limit = cap ? cap : WC_FETCH_MAX_BYTES_DEFAULT;
    if (n <= limit)
        FUZZ_ASSERT(rc == 0 && outlen == n && (n == 0 || memcmp(out, bytes, n) == 0),
                    "%zu bytes (cap %zu) did not come back: %s %s", n, limit, code ? code : "",
                    why);
    else
        FUZZ_ASSERT(rc == -1 && code && !strcmp(code, WC_FETCH_E_TOO_LARGE),
                    "%zu bytes over the cap %zu: rc %d", n, limit, rc);
    free(out);
    free(url);
    free(b64);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t cap = data[0];
    const uint8_t *text = data + 1;
    size_t n = size - 1;
    const uint8_t *nul = memchr(text, '\0', n);
    size_t len = nul ? (size_t)(nul - text) : n;
    char *url = malloc(len + 1);
    if (!url)
        abort();
    memcpy(url, text, len);
    url[len] = '\0';

    unsigned char *out = NULL, *out2 = NULL;
    size_t outlen = 0, outlen2 = 0;
    const char *code = NULL, *code2 = NULL;
    char why[160] = "", why2[160] = "";
    int rc = wc_fetch_data_url(url, cap, &out, &outlen, &code, why, sizeof why);
    size_t limit = cap ? cap : WC_FETCH_MAX_BYTES_DEFAULT;
    if (rc == 0) {
        FUZZ_ASSERT(out && outlen <= limit, "%zu bytes decoded over the cap %zu", outlen, limit);
    } else {
        FUZZ_ASSERT(rc == -1 && !out && outlen == 0 && known_code(code) && why[0],
                    "a refusal: rc %d, code %s, why \"%s\"", rc, code ? code : "NULL", why);
    }
    int rc2 = wc_fetch_data_url(url, cap, &out2, &outlen2, &code2, why2, sizeof why2);
    FUZZ_ASSERT(rc2 == rc && outlen2 == outlen && (outlen == 0 || !memcmp(out, out2, outlen)) &&
                    (rc == 0 || !strcmp(code, code2)),
                "two calls disagree");
    free(out);
    free(out2);
    free(url);
    check_round_trip(text, n, cap);
    return 0;
}
