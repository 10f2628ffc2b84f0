/* The file part of a multipart/form-data body (RFC 7578), as a dashboard
 * uploads an image: the bytes are the client's, so every length is checked
 * against the body and nothing is copied or allocated. */
#ifndef WC_MULTIPART_H
#define WC_MULTIPART_H

#include <stddef.h>

/* The part named "file", else the first part with a filename, of a body
 * whose Content-Type (ctype) names its boundary (1-70 characters, quoted or
 * not). *part points into body. 0, or -1 when the boundary is missing or
 * malformed, a part is not terminated, or no part is a file. */
int wc_multipart_file(const char *ctype, const unsigned char *body, size_t len,
                      const unsigned char **part, size_t *partlen);

#endif
