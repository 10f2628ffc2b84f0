/* Fuzzes the gowa (go-whatsapp-web-multidevice) webhook body parser, its
 * RFC 3339 timestamps and JID handling, and the signature check the
 * dispatcher runs over the same raw body. The input is the body as the
 * gateway would POST it. Properties: webhook_check.h, and for this envelope:
 * events are "gowa" ones, a peer is the non-empty user part of a JID (no
 * '@', no ":<device>"), and an inbound message is "text" exactly when it has a
 * non-empty text.
 * fuzz-max-len: 16384 */
#include <stddef.h>
#include <stdint.h>

#include "webhook_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_webhook_body(WC_WEBHOOK_GOWA, "gowa", data, size);

    wc_webhook_events ev;
    char err[256];
    if (wc_webhook_parse(WC_WEBHOOK_GOWA, (const char *)data, size, 0, 0, &ev, err, sizeof err) !=
        0)
        return 0;
    for (size_t i = 0; i < ev.count; i++) {
        const wc_webhook_event *e = &ev.items[i];
        if (e->peer)
            FUZZ_ASSERT(e->peer[0] && !strchr(e->peer, '@') && !strchr(e->peer, ':'),
                        "peer \"%s\" is not the user part of a JID", e->peer);
        if (e->kind == WC_WEBHOOK_INBOUND) {
            bool text = e->text != NULL;
            FUZZ_ASSERT(text == (strcmp(e->message_type, "text") == 0), "type %s with text %s",
                        e->message_type, e->text ? e->text : "NULL");
            FUZZ_ASSERT(!text || e->text[0], "an empty text");
        }
    }
    wc_webhook_events_free(&ev);
    return 0;
}
