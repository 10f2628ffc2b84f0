/* libFuzzer target: the Cloud API reply classification on arbitrary bytes,
 * with the properties of reply_check.h. */
#include <stdint.h>

#include "reply_check.h"
#include "wc_cloudapi.h"

static void classify(long http_status, const char *body, size_t len, uint32_t attempt,
                     wc_send_result *out)
{
    (void)wc_cloudapi_classify_reply(http_status, body, len, attempt, out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_reply(data, size, classify);
}
