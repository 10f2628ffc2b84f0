/* The `gowa` transport (go-whatsapp-web-multidevice REST gateway; the ops
 * table is wc_transport_gowa in wc_transport.h), the classification of the
 * gateway's replies (a pure function, tested and fuzzed on its own) and the
 * gateway's QR login, which an admin endpoint uses to pair a device. */
#ifndef WC_GOWA_H
#define WC_GOWA_H

#include <stddef.h>
#include <stdint.h>

#include "wc_httpc.h"
#include "wc_transport.h"

/* What a completed HTTP exchange with the gateway means for one message.
 * Overwrites all of *out from the HTTP status and the reply body (len bytes
 * of anything: it need not be JSON, UTF-8 or NUL-terminated; body may be
 * NULL when len is 0). attempt (wc_send_request.attempt) sets the back-off
 * in retry_after_ms.
 *
 * Every text in *out is valid UTF-8, NUL-free and NUL-terminated within its
 * array, whatever the body held. provider_id is set only from a usable
 * message id (printable ASCII without spaces that fits whole); any other id
 * counts as missing, because a cut or repaired id would never match the
 * gateway's receipts. The gateway's own answers carry a "code"; a 5xx or a
 * 2xx without one comes from something in between (a proxy) or from a
 * gateway that broke mid-way, and leaves the send in doubt
 * (outcome_unknown). */
void wc_gowa_classify_reply(long http_status, const char *body, size_t len, uint32_t attempt,
                            wc_send_result *out);

/* What a QR login produced. On success error is NULL and the rest is set;
 * on failure only error is. Strings live until the callback returns. */
typedef struct wc_gowa_qr {
    const char *error;      /* why it failed (gateway code and message, or network) */
    const char *qr_link;    /* where the gateway serves the QR image */
    int qr_duration;        /* seconds the code stays valid */
    const char *png_base64; /* the QR image (PNG), standard base64 without line breaks */
    size_t png_len;         /* bytes of the image before encoding */
} wc_gowa_qr;

typedef void wc_gowa_qr_cb(void *arg, const wc_gowa_qr *qr);

/* GET {base_url}/app/login (basic auth when user is not NULL, X-Device-Id
 * when device_id is not NULL or ""), then fetches results.qr_link and
 * base64-encodes the image. The link is fetched only when it is on the base
 * URL's origin (scheme, host, port; a relative link resolves against the
 * base URL), and the image is handed on only when it is a PNG (Content-Type
 * and signature) of at most 1 MiB; otherwise the callback gets an error.
 * Arguments are copied. Returns 0 and calls cb exactly once, later (arg
 * must stay valid until then; freeing the client calls it with an error
 * ending in "cancelled"), or -1 when it could not start (cb not called). */
int wc_gowa_login_qr(wc_httpc *c, const char *base_url, const char *device_id, const char *user,
                     const char *pass, wc_gowa_qr_cb *cb, void *arg)
    __attribute__((warn_unused_result));

#endif
