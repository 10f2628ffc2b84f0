/* Device credentials as the dispatcher needs them: the sealed bytea column,
 * read as hex, opened for its own device (the seal is bound to the device
 * id) into a JSON object. Used by QR pairing (the gateway's password) and by
 * a gowa device's own webhook (its webhook_secret). Never logs the secret. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "dispatcher.h"
#include "wc_seal.h"

json_t *dispatcher_open_credentials(dispatcher *ds, const char *device_id, const char *hex,
                                    char *why, size_t whylen)
{
    if (!hex || !hex[0]) {
        snprintf(why, whylen, "the device has no credentials");
        return NULL;
    }
    if (!ds->seal) {
        snprintf(why, whylen, "device credentials are sealed: set WACAST_SECRET_KEY");
        return NULL;
    }
    size_t hexlen = strlen(hex), len = 0;
    uint8_t *sealed = malloc(hexlen / 2 + 1);
    char *plain = NULL, err[160] = "";
    size_t plainlen = 0;
    if (!sealed || sodium_hex2bin(sealed, hexlen / 2 + 1, hex, hexlen, NULL, &len, NULL) != 0 ||
        wc_unseal(ds->seal, device_id, sealed, len, &plain, &plainlen, err, sizeof err) < 0) {
        free(sealed);
        snprintf(why, whylen, "cannot open the device's credentials%s%s", err[0] ? ": " : "", err);
        return NULL;
    }
    free(sealed);
    json_t *creds = json_loadb(plain, plainlen, 0, NULL);
    wc_seal_plain_free(plain, plainlen);
    if (!json_is_object(creds)) {
        json_decref(creds);
        snprintf(why, whylen, "the device's credentials are not a JSON object");
        return NULL;
    }
    return creds;
}
