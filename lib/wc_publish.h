/* Publishing message rows to the jobs stream, shared by the scheduler
 * (expansion leftovers, reconciler) and the dispatcher (retry of failed
 * messages, resumed campaigns). Rows are read with WC_SQL_JOB_COLUMNS from
 * broadcast_messages m joined with campaigns c and (left) leads l. */
#ifndef WC_PUBLISH_H
#define WC_PUBLISH_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

#include "wc_redis.h"

/* A step message (sequence_id set, campaign_id NULL) travels in a lane of
 * its sequence: its job's campaign_id is the sequence's id (a uuid, so the
 * router's "waiting" updates of campaigns by id match nothing), its pacing
 * override and priority are the sequence's. Column 11 is the priority. */
#define WC_SQL_JOB_COLUMNS                                                                         \
    "m.id, coalesce(m.campaign_id, m.sequence_id), m.user_id, coalesce(m.lead_id::text, ''), "     \
    "coalesce(l.device_id::text, ''), m.recipient_phone, m.recipient_name, m.content, "            \
    "coalesce(m.media_url, ''), "                                                                  \
    "CASE WHEN m.campaign_id IS NOT NULL THEN coalesce(c.min_delay_seconds * 1000, 0) "            \
    "ELSE coalesce((SELECT sq.min_delay_seconds * 1000 FROM sequences sq "                         \
    "WHERE sq.id = m.sequence_id), 0) END, "                                                       \
    "CASE WHEN m.campaign_id IS NOT NULL THEN coalesce(c.max_delay_seconds * 1000, 0) "            \
    "ELSE coalesce((SELECT sq.max_delay_seconds * 1000 FROM sequences sq "                         \
    "WHERE sq.id = m.sequence_id), 0) END, "                                                       \
    "CASE WHEN m.campaign_id IS NOT NULL THEN coalesce(c.priority, 0) "                            \
    "ELSE coalesce((SELECT sq.priority FROM sequences sq WHERE sq.id = m.sequence_id), 0) END"

#define WC_SQL_JOB_FROM                                                                            \
    " FROM broadcast_messages m JOIN campaigns c ON c.id = m.campaign_id"                          \
    " LEFT JOIN leads l ON l.id = m.lead_id"

/* Called once when every XADD has answered: published of n were accepted,
 * ids is "{id,id,...}" of the accepted ones (for marking them queued). */
typedef void wc_publish_cb(int published, int n, const char *ids, void *arg);

/* XADDs one job per row of res (columns WC_SQL_JOB_COLUMNS) whose include[]
 * is true (include NULL: every row). When clear_markers
 * is set, each message's idempotency marker is deleted first (an operator's
 * retry of failed messages). Returns 0 when started (cb runs later, once), -1
 * when nothing could be sent (Redis down; cb not called). */
int wc_publish_rows(wc_redis *r, PGresult *res, const bool *include, int clear_markers,
                    wc_publish_cb *cb, void *arg) __attribute__((warn_unused_result));

/* The SQL that marks published rows queued; $1 = ids. */
#define WC_SQL_MARK_QUEUED                                                                         \
    "UPDATE broadcast_messages SET status = 'queued', queued_at = now(), updated_at = now() "      \
    "WHERE id = ANY($1::bigint[]) AND status = 'pending'"

#endif
