/* Phone normalisation to E.164 (see wc_phone.h for the rules). One pass
 * collects the digits and the international markers, then a short decision
 * says which country code the number carries. */
#include "wc_phone.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

#define E164_MIN_DIGITS 8
#define E164_MAX_DIGITS 15
/* More than E164_MAX_DIGITS plus a "00" prefix and a country code: anything
 * longer is too long whatever the prefix turns out to be. */
#define MAX_STORED_DIGITS 32

/* National significant number lengths for the countries our users send to
 * most. Only used to tell "60123456789" (international without '+') from a
 * local number; the result itself is only held to the E.164 limits. */
static const struct {
    const char *code;
    unsigned char min, max;
} nsn_lengths[] = {
    {"60", 9, 10},  {"62", 9, 12},  {"65", 8, 8}, {"1", 10, 10},
    {"44", 10, 10}, {"91", 10, 10}, {"66", 9, 9}, {"63", 10, 10},
};

static const char *const jid_suffixes[] = {"@s.whatsapp.net", "@c.us"};

static bool is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Returns the length of a valid country code ("60", "+60") and points *digits
 * at its first digit, or 0 when cc is not 1-3 digits starting with 1-9. */
static size_t country_code_len(const char *cc, const char **digits)
{
    if (!cc)
        return 0;
    if (*cc == '+')
        cc++;
    size_t n = 0;
    while (is_digit((unsigned char)cc[n]))
        n++;
    if (n == 0 || n > 3 || cc[n] != '\0' || cc[0] == '0')
        return 0;
    *digits = cc;
    return n;
}

/* Is a national number of nsn_len digits plausible after code? Returns 1 if
 * so, 0 if not; -1 when the code is not in the table (callers then use the
 * E.164 total). */
static int nsn_plausible(const char *code, size_t code_len, size_t nsn_len)
{
    for (size_t i = 0; i < sizeof nsn_lengths / sizeof nsn_lengths[0]; i++) {
        if (strlen(nsn_lengths[i].code) == code_len &&
            memcmp(nsn_lengths[i].code, code, code_len) == 0)
            return nsn_len >= nsn_lengths[i].min && nsn_len <= nsn_lengths[i].max;
    }
    return -1;
}

static int fail(const char *why, char *out, size_t outlen, const char **reason)
{
    if (out && outlen > 0)
        out[0] = '\0';
    if (reason)
        *reason = why;
    return -1;
}

int wc_phone_normalize(const char *raw, const char *default_country_code, char *out, size_t outlen,
                       const char **reason)
{
    if (!out || outlen < WC_PHONE_E164_MAX)
        return fail("buffer_too_small", out, outlen, reason);
    if (!raw)
        return fail("empty", out, outlen, reason);

    size_t begin = 0, end = strlen(raw);
    while (begin < end && is_space((unsigned char)raw[begin]))
        begin++;
    while (end > begin && is_space((unsigned char)raw[end - 1]))
        end--;

    /* A JID: strip the server part and the optional ":<device>". */
    const char *at = memchr(raw + begin, '@', end - begin);
    bool jid = at != NULL;
    if (jid) {
        bool known = false;
        for (size_t i = 0; i < sizeof jid_suffixes / sizeof jid_suffixes[0]; i++) {
            size_t slen = strlen(jid_suffixes[i]);
            if ((size_t)(raw + end - at) == slen && strncasecmp(at, jid_suffixes[i], slen) == 0)
                known = true;
        }
        if (!known)
            return fail("invalid_characters", out, outlen, reason);
        end = (size_t)(at - raw);
        const char *colon = memchr(raw + begin, ':', end - begin);
        if (colon) {
            for (const char *d = colon + 1; d < raw + end; d++)
                if (!is_digit((unsigned char)*d))
                    return fail("invalid_characters", out, outlen, reason);
            end = (size_t)(colon - raw);
        }
    }

    char digits[MAX_STORED_DIGITS];
    size_t ndigits = 0;
    bool plus = false;
    for (size_t i = begin; i < end; i++) {
        unsigned char c = (unsigned char)raw[i];
        if (is_digit(c)) {
            if (ndigits == MAX_STORED_DIGITS)
                return fail("too_long", out, outlen, reason);
            digits[ndigits++] = (char)c;
        } else if (c == '+') {
            if (plus || ndigits > 0)
                return fail("invalid_characters", out, outlen, reason);
            plus = true;
        } else if (c == '(') {
            /* "+44 (0)20 ...": the national trunk 0 written after the code. */
            bool international =
                plus || jid || (ndigits > 2 && digits[0] == '0' && digits[1] == '0');
            if (international && ndigits > 0 && i + 2 < end && raw[i + 1] == '0' &&
                raw[i + 2] == ')')
                i += 2;
        } else if (is_space(c) || c == '-' || c == '.' || c == ')') {
            continue;
        } else if (c == 0xC2 && i + 1 < end && (unsigned char)raw[i + 1] == 0xA0) {
            i++; /* UTF-8 no-break space, as spreadsheets paste it */
        } else {
            return fail("invalid_characters", out, outlen, reason);
        }
    }
    if (ndigits == 0 && !plus)
        return fail("empty", out, outlen, reason);

    /* The result is prefix (a country code we add) followed by body. */
    const char *prefix = "";
    size_t prefix_len = 0;
    const char *body = digits;
    size_t body_len = ndigits;

    if (plus || jid) {
        /* as written: a JID always carries the country code */
    } else if (ndigits >= 2 && digits[0] == '0' && digits[1] == '0') {
        body += 2;
        body_len -= 2;
    } else {
        const char *cc = NULL;
        size_t cc_len = country_code_len(default_country_code, &cc);
        if (cc_len == 0)
            return fail("invalid_default_country", out, outlen, reason);
        bool decided = false;
        if (ndigits > cc_len && memcmp(digits, cc, cc_len) == 0) {
            const char *rest = digits + cc_len;
            size_t rest_len = ndigits - cc_len;
            int fit = nsn_plausible(cc, cc_len, rest_len);
            if (fit < 0) {
                decided = ndigits >= E164_MIN_DIGITS && ndigits <= E164_MAX_DIGITS;
            } else if (rest[0] != '0') {
                decided = fit == 1;
            } else if (rest_len > 1 && rest[1] != '0' &&
                       nsn_plausible(cc, cc_len, rest_len - 1) == 1) {
                /* "60 012-345 6789": the code typed in front of the local form. */
                prefix = cc;
                prefix_len = cc_len;
                body = rest + 1;
                body_len = rest_len - 1;
                decided = true;
            }
        }
        if (!decided) {
            prefix = cc;
            prefix_len = cc_len;
            if (digits[0] == '0') {
                body = digits + 1;
                body_len = ndigits - 1;
            }
        }
    }

    size_t total = prefix_len + body_len;
    char first = prefix_len > 0 ? prefix[0] : (body_len > 0 ? body[0] : '\0');
    if (first == '0')
        return fail("invalid_country_code", out, outlen, reason);
    if (total < E164_MIN_DIGITS)
        return fail("too_short", out, outlen, reason);
    if (total > E164_MAX_DIGITS)
        return fail("too_long", out, outlen, reason);

    out[0] = '+';
    memcpy(out + 1, prefix, prefix_len);
    memcpy(out + 1 + prefix_len, body, body_len);
    out[1 + total] = '\0';
    if (reason)
        *reason = NULL;
    return 0;
}
