/* The registry of transports by platform name. */
#include "wc_transport.h"

#include <string.h>

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
