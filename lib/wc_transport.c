/* The registry of transports by platform name, and what every transport
 * does to a result before it leaves. */
#include "wc_transport.h"

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
