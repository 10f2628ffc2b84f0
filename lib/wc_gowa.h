/* The `gowa` transport (go-whatsapp-web-multidevice REST gateway; the ops
 * table is wc_transport_gowa in wc_transport.h) and the gateway's QR login,
 * which an admin endpoint uses to pair a device. */
#ifndef WC_GOWA_H
#define WC_GOWA_H

#include <stddef.h>

#include "wc_httpc.h"

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
 * base64-encodes the image. Arguments are copied. Returns 0 and calls cb
 * exactly once, later (arg must stay valid until then; freeing the client
 * calls it with an error ending in "cancelled"), or -1 when it could not
 * start (cb not called). */
int wc_gowa_login_qr(wc_httpc *c, const char *base_url, const char *device_id, const char *user,
                     const char *pass, wc_gowa_qr_cb *cb, void *arg)
    __attribute__((warn_unused_result));

#endif
