/* multipart/form-data: the file part of an upload (wc_multipart.h). */
#include "wc_multipart.h"

#include <stdbool.h>
#include <string.h>

int wc_multipart_file(const char *ctype, const unsigned char *body, size_t len,
                      const unsigned char **part, size_t *partlen)
{
    const char *b = strcasestr(ctype, "boundary=");
    if (!b)
        return -1;
    b += 9;
    char boundary[80] = "\r\n--";
    size_t n = 0;
    bool quoted = *b == '"';
    b += quoted;
    while (b[n] && b[n] != (quoted ? '"' : ';') && b[n] != ' ' && n <= 70)
        n++;
    if (n == 0 || n > 70) /* RFC 2046: 1 to 70 characters */
        return -1;
    memcpy(boundary + 4, b, n);
    size_t blen = 4 + n;
    /* The first delimiter may open the body without the leading CRLF. */
    const unsigned char *p = memmem(body, len, boundary + 2, blen - 2);
    const unsigned char *end = body + len;
    const unsigned char *fallback = NULL;
    size_t fallback_len = 0;
    while (p) {
        p += blen - 2;
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            break; /* closing delimiter */
        const unsigned char *headers_end = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!headers_end)
            return -1;
        const unsigned char *data = headers_end + 4;
        const unsigned char *next = memmem(data, (size_t)(end - data), boundary, blen);
        if (!next)
            return -1;
        char heads[1024];
        size_t hl = (size_t)(headers_end - p) < sizeof heads - 1 ? (size_t)(headers_end - p)
                                                                 : sizeof heads - 1;
        memcpy(heads, p, hl);
        heads[hl] = '\0';
        if (strcasestr(heads, "name=\"file\"")) {
            *part = data;
            *partlen = (size_t)(next - data);
            return 0;
        }
        if (!fallback && strcasestr(heads, "filename=")) {
            fallback = data;
            fallback_len = (size_t)(next - data);
        }
        p = next + 2; /* at "--boundary" */
    }
    if (!fallback)
        return -1;
    *part = fallback;
    *partlen = fallback_len;
    return 0;
}
