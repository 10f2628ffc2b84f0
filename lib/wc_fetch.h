/* Bounded fetching of a campaign's image: an http(s) link through wc_httpc
 * (on the caller's event loop), or a base64 data: URL decoded in memory.
 *
 * Bounds: a time-out for the whole exchange, a byte cap (a bigger response,
 * announced or streamed, stops the transfer), a redirect cap (http and https
 * only), and an address guard: every address a request connects to, the
 * first host's and each redirect's, after DNS, is refused when it is
 * loopback, private, link-local, CGNAT, multicast or otherwise not public,
 * unless it falls inside the allow-list (WACAST_MEDIA_FETCH_ALLOW: CIDRs,
 * e.g. "10.1.0.0/16,127.0.0.1/32"). What arrives must be a status 200 with an
 * image content type (or application/octet-stream); the magic bytes are
 * checked after that by wc_image.
 *
 * Failure codes are stable strings (fetch_*), written to campaign rows. */
#ifndef WC_FETCH_H
#define WC_FETCH_H

#include <stdbool.h>
#include <stddef.h>

#include "wc_httpc.h"

#define WC_FETCH_ALLOW_ENV "WACAST_MEDIA_FETCH_ALLOW"
#define WC_FETCH_TIMEOUT_MS_DEFAULT 20000
#define WC_FETCH_MAX_BYTES_DEFAULT (20 * 1024 * 1024)
#define WC_FETCH_MAX_REDIRECTS_DEFAULT 3

#define WC_FETCH_E_URL "fetch_bad_url"           /* not http(s) or data:, or unparsable */
#define WC_FETCH_E_DATA_URL "fetch_bad_data_url" /* data: URL that is not base64 */
#define WC_FETCH_E_TIMEOUT "fetch_timeout"       /* no complete answer in time */
#define WC_FETCH_E_TOO_LARGE "fetch_too_large"   /* over max_bytes */
#define WC_FETCH_E_REDIRECTS "fetch_too_many_redirects"
#define WC_FETCH_E_ADDRESS "fetch_address_refused" /* private/loopback, not allow-listed */
#define WC_FETCH_E_STATUS "fetch_http_status"      /* anything but 200 */
#define WC_FETCH_E_TYPE "fetch_content_type"       /* not an image content type */
#define WC_FETCH_E_FAILED "fetch_failed"           /* DNS, connect, TLS, reset */

typedef struct wc_fetch_opts {
    long timeout_ms;    /* 0: default */
    size_t max_bytes;   /* 0: default */
    long max_redirects; /* 0: default; < 0: none followed */
    const char *allow;  /* CIDR allow-list for non-public addresses; NULL/"": none */
} wc_fetch_opts;

/* Called once, later, from the loop: data (owned by the fetcher, valid
 * during the call) on success with code NULL; otherwise code and why. */
typedef void wc_fetch_cb(void *arg, const unsigned char *data, size_t len, const char *code,
                         const char *why);

/* Starts fetching an http(s) URL. 0, or -1 with code/why when it could not
 * start (the callback then never runs). */
int wc_fetch_start(wc_httpc *c, const char *url, const wc_fetch_opts *o, wc_fetch_cb *cb, void *arg,
                   const char **code, char *why, size_t whylen) __attribute__((warn_unused_result));

/* Decodes "data:<type>;base64,<data>" into *out (malloc'd), at most max_bytes
 * decoded (0: default). -1 with code/why otherwise. */
int wc_fetch_data_url(const char *url, size_t max_bytes, unsigned char **out, size_t *outlen,
                      const char **code, char *why, size_t whylen)
    __attribute__((warn_unused_result));

/* Checks an allow-list (at start-up): -1 with the bad entry in err. */
int wc_fetch_allow_check(const char *allow, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* True when addr is public, or non-public but inside allow; why says which
 * range refused it otherwise. */
bool wc_fetch_address_allowed(const char *allow, const struct sockaddr *addr, char *why,
                              size_t whylen);

#endif
