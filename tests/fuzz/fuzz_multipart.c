/* Fuzzes the file part of an upload's multipart/form-data body
 * (wc_multipart_file, behind POST /api/media). Input: the Content-Type value
 * up to the first '\n' (at most 200 bytes), then the body, copied to a buffer
 * of its exact size so that any read past it is caught by ASan. Properties:
 *   - a part found lies inside the body and is followed there by
 *     "\r\n--" (the next delimiter);
 *   - the same input gives the same answer;
 *   - the body's bytes as the file of a well-formed form (a known boundary
 *     that they do not hold) come back exactly.
 * fuzz-max-len: 4096 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "wc_multipart.h"

#define WRAP_BOUNDARY "wcFuzzBoundary7MA4YWxk"

static void check_wrapped(const uint8_t *content, size_t n)
{
    static const char head[] = "--" WRAP_BOUNDARY "\r\nContent-Disposition: form-data;"
                               " name=\"caption\"\r\n\r\nhello\r\n--" WRAP_BOUNDARY
                               "\r\nContent-Disposition: form-data; name=\"file\";"
                               " filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n";
    static const char tail[] = "\r\n--" WRAP_BOUNDARY "--\r\n";
    if (memmem(content, n, "\r\n--" WRAP_BOUNDARY, strlen("\r\n--" WRAP_BOUNDARY)))
        return; /* a body may not hold its own delimiter */
    size_t len = sizeof head - 1 + n + sizeof tail - 1;
    unsigned char *body = malloc(len);
    if (!body)
        abort();
    memcpy(body, head, sizeof head - 1);
    if (n)
        memcpy(body + sizeof head - 1, content, n);
    memcpy(body + sizeof head - 1 + n, tail, sizeof tail - 1);
    const unsigned char *part = NULL;
    size_t partlen = 0;
    int rc = wc_multipart_file("multipart/form-data; boundary=\"" WRAP_BOUNDARY "\"", body, len,
                               &part, &partlen);
    FUZZ_ASSERT(rc == 0 && part == body + sizeof head - 1 && partlen == n,
                "a well-formed form of %zu bytes: rc %d, part at %td, %zu bytes", n, rc,
                part ? part - body : -1, partlen);
    free(body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size < 201 ? size : 201);
    if (!nl)
        return 0;
    size_t clen = (size_t)(nl - data);
    char ctype[202];
    memcpy(ctype, data, clen);
    ctype[clen] = '\0';
    size_t len = size - clen - 1;
    unsigned char *body = malloc(len ? len : 1);
    if (!body)
        abort();
    if (len)
        memcpy(body, nl + 1, len);

    const unsigned char *part = NULL, *again = NULL;
    size_t partlen = 0, againlen = 0;
    int rc = wc_multipart_file(ctype, body, len, &part, &partlen);
    if (rc == 0) {
        FUZZ_ASSERT(part >= body && part <= body + len && partlen <= (size_t)(body + len - part),
                    "part at %td, %zu bytes, in a body of %zu", part - body, partlen, len);
        FUZZ_ASSERT((size_t)(body + len - (part + partlen)) >= 4 &&
                        memcmp(part + partlen, "\r\n--", 4) == 0,
                    "the part (at %td, %zu bytes) is not followed by a delimiter", part - body,
                    partlen);
    } else {
        FUZZ_ASSERT(rc == -1, "rc %d", rc);
    }
    int rc2 = wc_multipart_file(ctype, body, len, &again, &againlen);
    FUZZ_ASSERT(rc2 == rc && (rc != 0 || (again == part && againlen == partlen)),
                "two calls disagree");
    check_wrapped(body, len);
    free(body);
    return 0;
}
