/* Properties of a parsed webhook that hold whichever provider sent it, shared
 * by fuzz_webhook_cloudapi.c and fuzz_webhook_gowa.c:
 *   - a failed parse leaves the list empty and says why;
 *   - a successful one holds at most max_events events, truncated only when
 *     full, each with a non-empty provider id, a kind, a status exactly when
 *     it is a status, and only valid, NUL-free UTF-8 strings (they go to
 *     PostgreSQL as they are);
 *   - the signature a provider would send verifies, in either hex case, and
 *     one changed digit does not; a header made of the body itself does not;
 *   - the opt-out check of every inbound text survives the noise a user adds
 *     (spaces, punctuation, letter case). */
#ifndef WC_FUZZ_WEBHOOK_CHECK_H
#define WC_FUZZ_WEBHOOK_CHECK_H

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "check.h"
#include "wc_text.h"
#include "wc_webhook.h"

#define FUZZ_WEBHOOK_SECRET "fuzz-app-secret"
#define FUZZ_WEBHOOK_MAX_EVENTS 8

static void check_string(const char *what, const char *s)
{
    if (s)
        FUZZ_ASSERT(wc_text_valid(s, strlen(s)), "%s is not valid UTF-8", what);
}

static void check_opt_out_is_stable(const char *text)
{
    bool said = wc_webhook_is_opt_out(text, NULL);
    size_t len = strlen(text);
    /* Only texts short enough to still be judged with the noise added. */
    if (len > 3 * WC_WEBHOOK_OPT_OUT_MAX)
        return;
    char noisy[3 * WC_WEBHOOK_OPT_OUT_MAX + 16];
    snprintf(noisy, sizeof noisy, "  %s !", text);
    FUZZ_ASSERT(wc_webhook_is_opt_out(noisy, NULL) == said,
                "padding changes the opt-out verdict of \"%s\"", text);
    for (size_t i = 0; i < len; i++)
        noisy[i] = (char)tolower((unsigned char)text[i]);
    noisy[len] = '\0';
    FUZZ_ASSERT(wc_webhook_is_opt_out(noisy, NULL) == said,
                "lower case changes the opt-out verdict of \"%s\"", text);
}

static void check_events(int rc, const wc_webhook_events *ev, const char *err, const char *provider)
{
    if (rc != 0) {
        FUZZ_ASSERT(rc == -1, "rc %d", rc);
        FUZZ_ASSERT(ev->count == 0 && ev->items == NULL && ev->ignored == 0 && !ev->truncated,
                    "a failed parse left %zu events", ev->count);
        FUZZ_ASSERT(err[0] != '\0', "a failed parse without a message");
        return;
    }
    FUZZ_ASSERT(ev->count <= FUZZ_WEBHOOK_MAX_EVENTS, "%zu events", ev->count);
    FUZZ_ASSERT(!ev->truncated || ev->count == FUZZ_WEBHOOK_MAX_EVENTS, "truncated at %zu events",
                ev->count);
    for (size_t i = 0; i < ev->count; i++) {
        const wc_webhook_event *e = &ev->items[i];
        FUZZ_ASSERT(strcmp(e->provider, provider) == 0, "provider %s", e->provider);
        FUZZ_ASSERT(e->provider_id && e->provider_id[0], "event %zu without an id", i);
        if (e->kind == WC_WEBHOOK_STATUS) {
            FUZZ_ASSERT(e->status >= WC_WEBHOOK_SENT && e->status <= WC_WEBHOOK_FAILED, "status %d",
                        (int)e->status);
            FUZZ_ASSERT(strcmp(wc_webhook_status_name(e->status), "unknown") != 0, "no name");
        } else {
            FUZZ_ASSERT(e->kind == WC_WEBHOOK_INBOUND, "kind %d", (int)e->kind);
            FUZZ_ASSERT(e->status == 0, "an inbound message with status %d", (int)e->status);
            FUZZ_ASSERT(e->peer && e->peer[0], "an inbound message without a sender");
            FUZZ_ASSERT(e->message_type != NULL, "an inbound message without a type");
        }
        check_string("provider_id", e->provider_id);
        check_string("callback_data", e->callback_data);
        check_string("peer", e->peer);
        check_string("receiver", e->receiver);
        check_string("error_title", e->error_title);
        check_string("error_message", e->error_message);
        check_string("error_details", e->error_details);
        check_string("message_type", e->message_type);
        check_string("text", e->text);
        check_string("sender_name", e->sender_name);
        if (e->text)
            check_opt_out_is_stable(e->text);
    }
}

static void check_signature(const uint8_t *data, size_t size)
{
    char sig[WC_WEBHOOK_SIGNATURE_LEN];
    FUZZ_ASSERT(wc_webhook_sign(FUZZ_WEBHOOK_SECRET, data, size, sig, sizeof sig) == 0,
                "sign failed");
    FUZZ_ASSERT(strlen(sig) == WC_WEBHOOK_SIGNATURE_LEN - 1, "signature of %zu chars", strlen(sig));
    FUZZ_ASSERT(wc_webhook_verify(FUZZ_WEBHOOK_SECRET, data, size, sig), "own signature refused");
    for (char *p = sig + 7; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    FUZZ_ASSERT(wc_webhook_verify(FUZZ_WEBHOOK_SECRET, data, size, sig),
                "upper-case signature refused");
    size_t flip = 7 + (size ? data[0] % 64 : 0);
    sig[flip] = sig[flip] == '0' ? '1' : '0';
    FUZZ_ASSERT(!wc_webhook_verify(FUZZ_WEBHOOK_SECRET, data, size, sig),
                "signature with digit %zu changed accepted", flip - 7);
    FUZZ_ASSERT(!wc_webhook_verify("", data, size, sig), "empty secret accepted");

    /* The body up to its first NUL as the header: arbitrary header bytes. */
    char header[WC_WEBHOOK_SIGNATURE_LEN + 8];
    size_t n = strnlen((const char *)data, size < sizeof header - 1 ? size : sizeof header - 1);
    memcpy(header, data, n);
    header[n] = '\0';
    FUZZ_ASSERT(wc_webhook_sign(FUZZ_WEBHOOK_SECRET, data, size, sig, sizeof sig) == 0,
                "sign failed");
    if (strcasecmp(header, sig) != 0)
        FUZZ_ASSERT(!wc_webhook_verify(FUZZ_WEBHOOK_SECRET, data, size, header),
                    "a header that is not the signature accepted");
}

/* Parses data as the provider's body and checks everything above. */
static void check_webhook_body(wc_webhook_provider provider, const char *provider_name,
                               const uint8_t *data, size_t size)
{
    wc_webhook_events ev;
    char err[256];
    int rc = wc_webhook_parse(provider, (const char *)data, size, 0, FUZZ_WEBHOOK_MAX_EVENTS, &ev,
                              err, sizeof err);
    check_events(rc, &ev, err, provider_name);
    wc_webhook_events_free(&ev);
    FUZZ_ASSERT(ev.count == 0 && ev.items == NULL, "free left events");

    /* A body over the caller's limit is refused before it is read. */
    if (size > 1) {
        rc =
            wc_webhook_parse(provider, (const char *)data, size, size - 1, 0, &ev, err, sizeof err);
        FUZZ_ASSERT(rc == -1 && strstr(err, "over the limit"), "a body over max_body: %s", err);
    }
    check_signature(data, size);
}

#endif
