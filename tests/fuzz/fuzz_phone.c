/* Fuzzes phone normalisation (wc_phone_normalize). Input: one byte choosing
 * the default country code (below 0xf0: one of a table, NULL and bad ones
 * included; 0xf0-0xff: the next (byte & 0x0f) input bytes as the code), then
 * the number as typed, up to the first NUL. Properties:
 *   - success writes "+" and 8-15 digits, not starting with 0;
 *   - the result normalises to itself (whatever the default), and so do the
 *     same digits written as a JID or with a "00" prefix;
 *   - failure leaves "" and one of the documented reasons;
 *   - a buffer one byte too small is refused whatever the input.
 * fuzz-max-len: 256 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "wc_phone.h"

static const char *const default_codes[] = {
    "60", "62", "65", "1", "44", "91", "66", "63", "7", "852", "+60", NULL, "", "0", "1234", "6a",
};
#define NCODES (sizeof default_codes / sizeof default_codes[0])

static const char *const reasons[] = {
    "empty",    "invalid_characters", "invalid_country_code",    "too_short",
    "too_long", "buffer_too_small",   "invalid_default_country",
};

static void check_same(const char *raw, const char *cc, const char *want)
{
    char out[WC_PHONE_E164_MAX];
    const char *reason = NULL;
    int rc = wc_phone_normalize(raw, cc, out, sizeof out, &reason);
    FUZZ_ASSERT(rc == 0 && strcmp(out, want) == 0, "\"%s\" (default %s) gave %s, not %s", raw,
                cc ? cc : "NULL", rc == 0 ? out : reason, want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    char cc_buf[16];
    const char *cc;
    size_t used = 1;
    if (data[0] < 0xf0) {
        cc = default_codes[data[0] % NCODES];
    } else {
        size_t n = data[0] & 0x0f;
        if (n > size - 1)
            n = size - 1;
        memcpy(cc_buf, data + 1, n);
        cc_buf[n] = '\0';
        cc = cc_buf;
        used += n;
    }
    char *raw = malloc(size - used + 1);
    if (!raw)
        return 0;
    memcpy(raw, data + used, size - used);
    raw[size - used] = '\0';

    char out[WC_PHONE_E164_MAX];
    const char *reason = "unset";
    int rc = wc_phone_normalize(raw, cc, out, sizeof out, &reason);
    if (rc == 0) {
        size_t len = strlen(out);
        FUZZ_ASSERT(reason == NULL, "success with reason %s", reason);
        FUZZ_ASSERT(out[0] == '+' && len >= 9 && len <= 16, "\"%s\" gave \"%s\"", raw, out);
        FUZZ_ASSERT(strspn(out + 1, "0123456789") == len - 1, "\"%s\" gave \"%s\"", raw, out);
        FUZZ_ASSERT(out[1] != '0', "\"%s\" gave \"%s\"", raw, out);

        check_same(out, cc, out);
        check_same(out, NULL, out);
        char other[64];
        snprintf(other, sizeof other, "%s@s.whatsapp.net", out + 1);
        check_same(other, cc, out);
        snprintf(other, sizeof other, "%s:7@c.us", out + 1);
        check_same(other, NULL, out);
        snprintf(other, sizeof other, "00%s", out + 1);
        check_same(other, cc, out);
    } else {
        FUZZ_ASSERT(rc == -1 && out[0] == '\0', "rc %d, out \"%s\"", rc, out);
        size_t i = 0;
        while (i < sizeof reasons / sizeof reasons[0] && (!reason || strcmp(reason, reasons[i])))
            i++;
        FUZZ_ASSERT(i < sizeof reasons / sizeof reasons[0], "reason %s", reason ? reason : "NULL");
        FUZZ_ASSERT(strcmp(reason, "buffer_too_small") != 0, "buffer_too_small with room");
    }

    char small[WC_PHONE_E164_MAX - 1];
    FUZZ_ASSERT(wc_phone_normalize(raw, cc, small, sizeof small, &reason) == -1 &&
                    !strcmp(reason, "buffer_too_small") && small[0] == '\0',
                "a buffer of %zu bytes accepted", sizeof small);
    free(raw);
    return 0;
}
