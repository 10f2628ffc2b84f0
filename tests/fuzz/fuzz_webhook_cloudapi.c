/* Fuzzes the Meta (WhatsApp Cloud API) webhook body parser and the signature
 * check the dispatcher runs over the same raw body before parsing it. The
 * input is the body as Meta would POST it. Properties: webhook_check.h, and
 * for this envelope: events are "cloudapi" ones and an inbound sender is the
 * "from" as Meta wrote it.
 * fuzz-max-len: 16384 */
#include <stddef.h>
#include <stdint.h>

#include "webhook_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_webhook_body(WC_WEBHOOK_CLOUDAPI, "cloudapi", data, size);

    /* The dispatcher's route fixes the provider, but AUTO must agree with it
     * whenever it picks cloudapi. */
    wc_webhook_events fixed, automatic;
    char err[256];
    int rc_fixed = wc_webhook_parse(WC_WEBHOOK_CLOUDAPI, (const char *)data, size, 0, 0, &fixed,
                                    err, sizeof err);
    int rc_auto = wc_webhook_parse(WC_WEBHOOK_AUTO, (const char *)data, size, 0, 0, &automatic, err,
                                   sizeof err);
    if (rc_auto == 0 && automatic.count > 0 && strcmp(automatic.items[0].provider, "cloudapi") == 0)
        FUZZ_ASSERT(rc_fixed == 0 && fixed.count == automatic.count &&
                        fixed.ignored == automatic.ignored,
                    "AUTO and CLOUDAPI disagree");
    if (rc_fixed == 0)
        wc_webhook_events_free(&fixed);
    if (rc_auto == 0)
        wc_webhook_events_free(&automatic);
    return 0;
}
