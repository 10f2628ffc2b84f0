/* SQL shared by more than one daemon. */
#ifndef WC_SQL_H
#define WC_SQL_H

/* Finishes campaigns in `processing` that have no message left in pending or
 * queued: `failed` when nothing was sent and something failed, else
 * `finished`. A reason that said why it waited (a window, no device) goes:
 * it waits no more (the timers that clear such reasons look only at running
 * campaigns). $1: uuid[] of campaigns to check. Returns id, status. */
#define WC_SQL_FINISH_CAMPAIGNS                                                                    \
    "UPDATE campaigns c SET "                                                                      \
    "status = CASE WHEN c.sent_count = 0 AND c.failed_count > 0 THEN 'failed'::campaign_status "   \
    "ELSE 'finished'::campaign_status END, "                                                       \
    "status_reason = CASE WHEN c.sent_count = 0 AND c.failed_count > 0 "                           \
    "THEN 'every message failed' "                                                                 \
    "WHEN c.status_reason LIKE 'outside sending window%' OR c.status_reason LIKE 'waiting:%' "     \
    "THEN NULL ELSE c.status_reason END, "                                                         \
    "finished_at = now() "                                                                         \
    "WHERE c.id = ANY($1::uuid[]) AND c.status = 'processing' AND NOT EXISTS ("                    \
    "SELECT 1 FROM broadcast_messages m WHERE m.campaign_id = c.id AND m.status = 'pending') "     \
    "AND NOT EXISTS ("                                                                             \
    "SELECT 1 FROM broadcast_messages m WHERE m.campaign_id = c.id AND m.status = 'queued') "      \
    "RETURNING c.id, c.status"

#endif
