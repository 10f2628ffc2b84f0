/* The registry of transports by platform name, and what every transport
 * does to a result before it leaves. */
#include "wc_transport.h"

#include <stdio.h>
#include <string.h>

#include "wc_text.h"

bool wc_send_id_usable(const char *id, size_t len)
{
    return len < sizeof((wc_send_result *)0)->provider_id && wc_text_is_token(id, len);
}

void wc_send_result_clean(wc_send_result *r)
{
    r->error_code[sizeof r->error_code - 1] = '\0';
    r->error_message[sizeof r->error_message - 1] = '\0';
    r->device_reason[sizeof r->device_reason - 1] = '\0';
    r->provider_id[sizeof r->provider_id - 1] = '\0';
    wc_text_fix(r->error_code);
    wc_text_fix(r->error_message);
    wc_text_fix(r->device_reason);
    if (!wc_send_id_usable(r->provider_id, strlen(r->provider_id)))
        memset(r->provider_id, 0, sizeof r->provider_id);
}

bool wc_media_ref(const char *media_url, char sha[WC_MEDIA_SHA_LEN + 1])
{
    size_t plen = strlen(WC_MEDIA_REF_PREFIX);
    if (!media_url || strncmp(media_url, WC_MEDIA_REF_PREFIX, plen) != 0 ||
        strlen(media_url + plen) != WC_MEDIA_SHA_LEN)
        return false;
    for (size_t i = 0; i < WC_MEDIA_SHA_LEN; i++) {
        char ch = media_url[plen + i];
        if (ch >= 'A' && ch <= 'F')
            ch = (char)(ch - 'A' + 'a');
        else if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false;
        sha[i] = ch;
    }
    sha[WC_MEDIA_SHA_LEN] = '\0';
    return true;
}

void wc_media_result(wc_send_result *r, const wc_media_got *got)
{
    memset(r, 0, sizeof *r);
    r->outcome = got->transient ? WC_SEND_RETRY : WC_SEND_FAIL;
    snprintf(r->error_code, sizeof r->error_code, "%s",
             got->error_code ? got->error_code : "media_unavailable");
    snprintf(r->error_message, sizeof r->error_message, "%s",
             got->error_message ? got->error_message : "the image could not be read");
    wc_send_result_clean(r);
}

const wc_transport_ops *wc_transport_find(const char *platform)
{
    static const wc_transport_ops *all[] = {&wc_transport_sim, &wc_transport_cloudapi,
                                            &wc_transport_gowa};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        if (platform && strcmp(all[i]->platform, platform) == 0)
            return all[i];
    }
    return NULL;
}
