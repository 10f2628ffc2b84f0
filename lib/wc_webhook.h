/* Provider webhooks, reduced to what wacast acts on: delivery statuses of the
 * messages it sent and inbound user messages (for STOP replies). The HTTP
 * layer hands the raw body here; this module checks its signature, parses
 * either provider's envelope into one flat list of events, and says whether
 * an inbound text is an opt-out. Pure: no I/O, no global state, safe from any
 * thread; the HTTP receiver, the status sink and the lead updates live
 * elsewhere.
 *
 * Envelopes understood
 *   cloudapi  {"object":"whatsapp_business_account","entry":[{"changes":[{
 *               "field":"messages","value":{"metadata":{"phone_number_id":..},
 *               "statuses":[{"id","status","timestamp","recipient_id",
 *                 "biz_opaque_callback_data","errors":[{"code","title",
 *                 "message","error_data":{"details"}}]}],
 *               "contacts":[{"wa_id","profile":{"name"}}],
 *               "messages":[{"from","id","timestamp","type","text":{"body"}}]}}]}]}
 *   gowa      {"event":"message.ack","device_id":..,"timestamp":"<RFC 3339>",
 *              "payload":{"ids":[..],"receipt_type":"delivered"|"read",
 *              "from":"<jid>"}}
 *             {"event":"message","device_id":..,"payload":{"id","from",
 *              "from_name","timestamp","is_from_me","body"}}
 *             and the older gateway shape without "event":
 *             {"from":"<jid>","pushname","timestamp","message":{"id","text"}}
 */
#ifndef WC_WEBHOOK_H
#define WC_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Defaults used when a limit argument is 0. */
#define WC_WEBHOOK_DEFAULT_MAX_BODY (1u << 20)
#define WC_WEBHOOK_DEFAULT_MAX_EVENTS 1000

/* Room for "sha256=", 64 hex digits and the NUL. */
#define WC_WEBHOOK_SIGNATURE_LEN 72

/* Longest opt-out word, and longest inbound text that can still be one. */
#define WC_WEBHOOK_OPT_OUT_MAX 128

#define WC_WEBHOOK_DEFAULT_OPT_OUT_WORDS                                                           \
    "STOP,UNSUBSCRIBE,BERHENTI,STOP ALL,CANCEL,OPT OUT,OPTOUT,BATAL"

typedef enum {
    WC_WEBHOOK_AUTO = 0, /* tell from the envelope ("object" -> cloudapi, else gowa) */
    WC_WEBHOOK_CLOUDAPI,
    WC_WEBHOOK_GOWA,
} wc_webhook_provider;

typedef enum {
    WC_WEBHOOK_STATUS = 1, /* a status of a message we sent */
    WC_WEBHOOK_INBOUND,    /* a message a user sent to one of our numbers */
} wc_webhook_kind;

typedef enum {
    WC_WEBHOOK_SENT = 1,
    WC_WEBHOOK_DELIVERED,
    WC_WEBHOOK_READ,
    WC_WEBHOOK_FAILED,
} wc_webhook_status;

/* One event. Strings are owned by the wc_webhook_events list; NULL means the
 * body did not carry the field. */
typedef struct wc_webhook_event {
    wc_webhook_kind kind;
    const char *provider;     /* "cloudapi" or "gowa" (static) */
    char *provider_id;        /* wamid... / 3EB0...; never NULL */
    wc_webhook_status status; /* STATUS only (0 for INBOUND) */
    char *callback_data;      /* STATUS, cloudapi: biz_opaque_callback_data */
    /* The other party: the recipient of a STATUS, the sender of an INBOUND.
     * The user part of a JID ("60123456789@s.whatsapp.net" and
     * "60123456789:3@s.whatsapp.net" give "60123456789"); cloudapi's are
     * digits already. A gowa status whose JID has no user part
     * ("@s.whatsapp.net") has NULL; an inbound message with such a sender
     * fails the body. */
    char *peer;
    /* Our number that the event is about: cloudapi's phone_number_id, gowa's
     * device_id (the device's JID, as the gateway sends it). */
    char *receiver;
    int64_t timestamp;   /* unix seconds; 0 when absent */
    long error_code;     /* FAILED: the provider's code (131026, ...); else 0 */
    char *error_title;   /* FAILED: errors[0].title */
    char *error_message; /* FAILED: errors[0].message */
    char *error_details; /* FAILED: errors[0].error_data.details */
    char *message_type;  /* INBOUND: "text", "button", "interactive", "image", ... */
    /* INBOUND: what the user wrote or tapped: text.body, a quick-reply
     * button's text (Meta's "Stop promotions"), an interactive reply's title,
     * or gowa's body. NULL for media and other types. */
    char *text;
    char *sender_name; /* INBOUND: the user's profile name */
} wc_webhook_event;

typedef struct wc_webhook_events {
    wc_webhook_event *items;
    size_t count;
    /* Parts of the body that were understood but are not events: other
     * webhook fields, statuses and receipt types wacast does not track
     * ("deleted", "played_self", ...), our own messages echoed back, group
     * chats, other gowa events. */
    size_t ignored;
    /* More events than max_events: the first max_events are in items, the
     * rest were dropped. */
    bool truncated;
} wc_webhook_events;

/* Checks X-Hub-Signature-256 ("sha256=" and 64 hex digits, either case) as
 * HMAC-SHA256 of the raw body keyed with secret (Meta's app secret, gowa's
 * webhook secret), comparing in constant time. False for a NULL or empty
 * secret, a NULL header, a wrong prefix, a wrong length, a non-hex digit,
 * anything after the digits, or a mismatch. body may be NULL when len is 0. */
bool wc_webhook_verify(const char *secret, const unsigned char *body, size_t len,
                       const char *signature_header) __attribute__((warn_unused_result));

/* Writes "sha256=<64 lower-case hex>" for body into out (what the providers
 * send; for fakes and tests). Returns 0, or -1 for a NULL/empty secret or
 * outlen < WC_WEBHOOK_SIGNATURE_LEN (out is then "" if outlen > 0). */
int wc_webhook_sign(const char *secret, const unsigned char *body, size_t len, char *out,
                    size_t outlen) __attribute__((warn_unused_result));

/* Parses a webhook body into out (which is overwritten, not freed first).
 * max_body and max_events of 0 mean the defaults above. The body must be one
 * JSON object of at most max_body bytes (JSON nesting is capped by jansson at
 * 2048 levels).
 *
 * Returns 0 with out filled (possibly with no events: a valid body about
 * something else) and the caller must call wc_webhook_events_free(). Returns
 * -1 with out empty and a message in err (when errlen > 0) for: a body over
 * max_body, invalid JSON, an envelope of neither provider (or not the one
 * asked for), a missing required field (status or message id, status value,
 * sender, gowa's ids/receipt_type/payload), a gowa sender JID with no user
 * part, a field of the wrong type, a timestamp that is not unix seconds
 * (cloudapi) or RFC 3339 (gowa), or running out of memory. A bad field
 * anywhere fails the whole body: the providers retry what is not
 * acknowledged, so a malformed body should be answered with 400 and logged,
 * not half-applied. */
int wc_webhook_parse(wc_webhook_provider provider, const char *body, size_t len, size_t max_body,
                     size_t max_events, wc_webhook_events *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Frees the strings and the array, and leaves ev empty. NULL is fine. */
void wc_webhook_events_free(wc_webhook_events *ev);

/* "sent", "delivered", "read", "failed"; "unknown" otherwise. */
const char *wc_webhook_status_name(wc_webhook_status status);

/* Is text, as a whole, one of the opt-out words? Case-insensitive (ASCII);
 * leading and trailing whitespace (including no-break and zero-width spaces)
 * and punctuation are ignored, and inside the text any run of whitespace, '-'
 * or '_' counts as one space, so "  Stop! ", "stop all" and "opt-out" match
 * "STOP", "STOP ALL" and "OPT OUT". A longer sentence that contains a word
 * ("please stop") does not match. words_csv is a comma-separated list,
 * normalised the same way (NULL or "" means
 * WC_WEBHOOK_DEFAULT_OPT_OUT_WORDS); words longer than WC_WEBHOOK_OPT_OUT_MAX
 * bytes are ignored. False for NULL text. */
bool wc_webhook_is_opt_out(const char *text, const char *words_csv);

#endif
