/* libFuzzer target: the gowa gateway reply classification on arbitrary
 * bytes, with the properties of reply_check.h. */
#include <stdint.h>

#include "reply_check.h"
#include "wc_gowa.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_reply(data, size, wc_gowa_classify_reply);
}
