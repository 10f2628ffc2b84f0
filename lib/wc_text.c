/* Untrusted text made safe to store and log (see wc_text.h). */
#include "wc_text.h"

#include <string.h>

size_t wc_text_seq_len(const unsigned char *s, size_t n)
{
    if (n == 0)
        return 0;
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned lo = 0x80, hi = 0xBF; /* bounds of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

bool wc_text_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] == 0)
            return false;
        size_t k = wc_text_seq_len(p + i, n - i);
        if (k == 0)
            return false;
        i += k;
    }
    return true;
}

static bool is_control(unsigned char c)
{
    return (c < 0x20 && c != '\t' && c != '\n') || c == 0x7F;
}

size_t wc_text_clean(char *dst, size_t size, const char *src, size_t srclen, bool *changed)
{
    static const char replacement[] = "\xEF\xBF\xBD"; /* U+FFFD */
    bool cut = false;
    size_t out = 0;
    if (size == 0)
        return 0;
    if (!src)
        src = "";
    if (srclen == (size_t)-1)
        srclen = strlen(src);
    const unsigned char *p = (const unsigned char *)src;
    size_t i = 0;
    while (i < srclen) {
        const char *piece;
        size_t plen, step;
        size_t k = wc_text_seq_len(p + i, srclen - i);
        if (k == 1 && is_control(p[i])) {
            piece = " ";
            plen = 1;
            step = 1;
            cut = true;
        } else if (k > 0) {
            piece = (const char *)p + i;
            plen = k;
            step = k;
        } else {
            piece = replacement;
            plen = 3;
            step = 1;
            cut = true;
        }
        if (out + plen >= size) {
            cut = true;
            break;
        }
        memcpy(dst + out, piece, plen);
        out += plen;
        i += step;
    }
    dst[out] = '\0';
    if (changed)
        *changed = cut;
    return out;
}

size_t wc_text_fix(char *s)
{
    unsigned char *p = (unsigned char *)s;
    size_t n = strlen(s), i = 0;
    while (i < n) {
        size_t k = wc_text_seq_len(p + i, n - i);
        if (k == 1 && is_control(p[i])) {
            p[i] = ' ';
        } else if (k == 0) {
            /* A sequence that runs into the end was cut there: drop it. */
            size_t want = p[i] >= 0xF0 ? 4 : p[i] >= 0xE0 ? 3 : p[i] >= 0xC2 ? 2 : 0;
            if (want > n - i && p[i] <= 0xF4) {
                bool prefix = true;
                for (size_t j = i + 1; j < n; j++)
                    if (p[j] < 0x80 || p[j] > 0xBF)
                        prefix = false;
                if (prefix) {
                    p[i] = '\0';
                    return i;
                }
            }
            p[i] = '?';
            k = 1;
        }
        i += k ? k : 1;
    }
    return n;
}

size_t wc_text_clean_line(char *dst, size_t size, const char *src, size_t srclen)
{
    size_t n = wc_text_clean(dst, size, src, srclen, NULL);
    for (size_t i = 0; i < n; i++)
        if (dst[i] == '\n' || dst[i] == '\t')
            dst[i] = ' ';
    return n;
}

bool wc_text_is_token(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7E)
            return false;
    return true;
}
