/* The `cloudapi` transport (Meta's WhatsApp Business Cloud API; the ops table
 * is wc_transport_cloudapi in wc_transport.h) and the classification of its
 * replies, kept a pure function so it can be tested and fuzzed on its own. */
#ifndef WC_CLOUDAPI_H
#define WC_CLOUDAPI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wc_transport.h"

/* What a completed HTTP exchange with the Cloud API means for one message.
 * Overwrites all of *out from the HTTP status and the reply body (len bytes
 * of anything: it need not be JSON, UTF-8 or NUL-terminated; body may be
 * NULL when len is 0). attempt (wc_send_request.attempt) sets the back-off
 * in retry_after_ms.
 *
 * Every text in *out is valid UTF-8, NUL-free and NUL-terminated within its
 * array, whatever the body held. provider_id is set only from a usable
 * message id (printable ASCII without spaces that fits whole); any other id
 * counts as missing, because a cut or repaired id would never match the
 * status webhooks. A 5xx without the API's own {"error": {...}} object, and
 * a 2xx whose body is not a JSON object, come from something in between
 * (a proxy, a load balancer) and leave the send in doubt (outcome_unknown).
 *
 * Returns true when the reply says the business number is over its rate
 * (130429 and kin): the caller then holds every send on the number for at
 * least retry_after_ms. */
bool wc_cloudapi_classify_reply(long http_status, const char *body, size_t len, uint32_t attempt,
                                wc_send_result *out);

#endif
