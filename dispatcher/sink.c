/* wacast-dispatcher: the status sink. Reads the results stream (senders'
 * outcomes, provider status webhooks, the sim) and writes statuses and
 * campaign counters to PostgreSQL, one statement per batch (UPDATE ... FROM
 * unnest(...)), guarded by the message state machine so a status never moves
 * backwards; then acknowledges the batch and finishes campaigns whose
 * messages are all done.
 *
 * One result must never stop everyone's: every text in a result is cleaned
 * (valid UTF-8, NUL-free, bounded; a device id that is not a UUID and a time
 * out of range are dropped) before it reaches the statement, and a batch
 * that PostgreSQL still refuses for its data (SQLSTATE classes 22, 23, 54,
 * P0) is split in halves until the result it refuses is alone. That result
 * goes to the dead-letter stream (WC_KEY_RESULTS_DEAD, with the error) and is
 * applied in a safe form (its status, no texts, error_code 'invalid_result'),
 * so its message still reaches a final status. Any other failure (connection,
 * time-out, deadlock) leaves the whole batch unacknowledged; it is read again
 * after a pause, and writing it twice is harmless (the state machine and
 * prev_status make the statement idempotent). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "dispatcher.h"
#include "wacast.pb-c.h"
#include "wc_daemon.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_sql.h"
#include "wc_text.h"

/* Bounds of the texts the sink writes (the transports' buffers are smaller). */
#define SINK_CODE_MAX 64
#define SINK_MESSAGE_MAX 512
#define SINK_PROVIDER_ID_MAX 160
/* How long a batch waits before it is read again after a failure that was
 * not about its data. */
#define SINK_RETRY_US 1000000
#define DEAD_LETTER_MAXLEN "10000"

/* One result, cleaned. */
typedef struct sink_item {
    char entry_id[48];
    int64_t message_id;
    const char *status; /* a message_status name */
    char error_code[SINK_CODE_MAX];
    char error_message[SINK_MESSAGE_MAX];
    char device_id[40]; /* a UUID, or "" */
    char provider_id[SINK_PROVIDER_ID_MAX];
    int64_t at_us;
    uint32_t attempt;
    uint8_t *raw; /* the entry's bytes, for the dead-letter stream */
    size_t raw_len;
} sink_item;

/* A batch read from the stream. Its ranges of items are written one
 * statement at a time: first the whole batch, then halves of a refused one. */
typedef struct sink_batch {
    dispatcher *ds;
    struct evbuffer *entry_ids; /* every entry read: acknowledged once all is written */
    sink_item *items;
    size_t nitems;
    size_t (*todo)[2]; /* stack of [lo, hi) still to write */
    size_t ntodo;
    size_t lo, hi; /* the range in flight */
    bool safe;     /* the range in flight is items[lo] in its safe form */
} sink_batch;

static const char *status_name(Wacast__Status s)
{
    switch (s) {
    case WACAST__STATUS__STATUS_SENT:
        return "sent";
    case WACAST__STATUS__STATUS_DELIVERED:
        return "delivered";
    case WACAST__STATUS__STATUS_READ:
        return "read";
    case WACAST__STATUS__STATUS_FAILED:
        return "failed";
    case WACAST__STATUS__STATUS_SKIPPED:
        return "skipped";
    case WACAST__STATUS__STATUS_CANCELLED:
        return "cancelled";
    default:
        return NULL;
    }
}

/* Appends a text value as a quoted array element. */
static void array_text(struct evbuffer *b, const char *s, bool first)
{
    if (!first)
        evbuffer_add(b, ",", 1);
    evbuffer_add(b, "\"", 1);
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\')
            evbuffer_add(b, "\\", 1);
        evbuffer_add(b, s, 1);
    }
    evbuffer_add(b, "\"", 1);
}

static bool is_uuid(const char *s)
{
    static const char shape[] = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
    for (size_t i = 0; i < sizeof shape - 1; i++) {
        char c = s[i];
        bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        if (shape[i] == '-' ? c != '-' : !hex)
            return false;
    }
    return s[sizeof shape - 1] == '\0';
}

/* A provider's message id is an opaque token (wamid.HBg..., a gateway's id):
 * printable ASCII without spaces. Anything else is not an id we can match a
 * later status to, so it is dropped rather than stored mangled. */
static void clean_provider_id(char *out, size_t size, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    out[0] = '\0';
    if (n < size && wc_text_is_token(s, n))
        memcpy(out, s, n + 1);
}

/* Fills item from a decoded result; false when the result names no message. */
static bool clean_item(sink_item *it, const Wacast__Result *res)
{
    it->status = status_name(res->status);
    if (!it->status)
        return false;
    it->message_id = res->message_id > 0 ? res->message_id : 0;
    wc_text_clean(it->error_code, sizeof it->error_code, res->error_code, (size_t)-1, NULL);
    wc_text_clean(it->error_message, sizeof it->error_message, res->error_message, (size_t)-1,
                  NULL);
    it->device_id[0] = '\0';
    if (res->device_id && is_uuid(res->device_id))
        snprintf(it->device_id, sizeof it->device_id, "%s", res->device_id);
    clean_provider_id(it->provider_id, sizeof it->provider_id, res->provider_message_id);
    if (it->message_id == 0 && !it->provider_id[0])
        return false;
    /* A time PostgreSQL can hold and that is plausible: from 2000 to a day
     * ahead of this clock; else the time it is written. */
    int64_t now = wc_now_us();
    it->at_us = res->at_us >= INT64_C(946684800000000) && res->at_us <= now + INT64_C(86400000000)
                    ? res->at_us
                    : now;
    it->attempt = res->attempt;
    return true;
}

static const char *SINK_SQL =
    /* One sink writes at a time (a transaction-scoped advisory lock, taken
     * before any row lock): two sinks updating the same campaigns' counters
     * in different orders would deadlock. */
    "WITH raw AS ("
    " SELECT * FROM unnest($1::bigint[], $2::message_status[], $3::text[], $4::text[], $5::text[],"
    " $6::text[], $7::bigint[], $8::int[])"
    " AS t(id, status, error_code, error_message, device_id, provider_id, at_us, attempt)"
    " WHERE (SELECT pg_advisory_xact_lock(7161676173740002)) IS NOT NULL),"
    /* A provider's status may name the message only by the provider's id:
     * resolve it from the table, or from the sender's result in this batch. */
    " named AS ("
    " SELECT CASE WHEN r.id <> 0 THEN r.id"
    "  ELSE coalesce((SELECT p.id FROM broadcast_messages p"
    "   WHERE p.provider_message_id = r.provider_id AND (r.device_id = ''"
    "    OR p.device_id IS NULL OR p.device_id::text = r.device_id)),"
    "   (SELECT max(s.id) FROM raw s WHERE s.id <> 0 AND s.provider_id = r.provider_id"
    "   AND r.provider_id <> '')) END AS id,"
    " r.status, r.error_code, r.error_message, nullif(r.device_id, '') AS device_id,"
    " nullif(r.provider_id, '') AS provider_id, r.at_us, r.attempt,"
    " wacast_message_status_rank(r.status) AS rank"
    " FROM raw r),"
    /* Several reports about one message: the furthest status wins, and what
     * any of them knows (device, provider id, attempts) is kept. */
    " input AS ("
    " SELECT id, (array_agg(status ORDER BY rank DESC))[1] AS status,"
    " (array_agg(error_code ORDER BY rank DESC))[1] AS error_code,"
    " (array_agg(error_message ORDER BY rank DESC))[1] AS error_message,"
    " max(device_id) AS device_id, max(provider_id) AS provider_id,"
    " (array_agg(at_us ORDER BY rank DESC))[1] AS at_us, max(attempt) AS attempt"
    " FROM named WHERE id IS NOT NULL GROUP BY id),"
    /* One UPDATE, no separate locking step: each SET sees the row version it
     * replaces (the latest one, after any concurrent writer), so the move is
     * decided on the current status and prev_status keeps that status for
     * the counters below. The input comes in id order, so the nested-loop
     * plan this gets takes the row locks in that order. */
    " upd AS ("
    " UPDATE broadcast_messages m SET prev_status = m.status,"
    " status = CASE WHEN wacast_message_can_move(m.status, i.status) THEN i.status"
    "   ELSE m.status END,"
    " device_id = COALESCE(i.device_id::uuid, m.device_id),"
    " error_code = CASE WHEN i.status = 'failed' AND wacast_message_can_move(m.status, i.status)"
    "   THEN NULLIF(i.error_code, '') ELSE m.error_code END,"
    " error_message = CASE WHEN i.status = 'failed' AND wacast_message_can_move(m.status, i.status)"
    "   THEN NULLIF(i.error_message, '') ELSE m.error_message END,"
    " provider_message_id = COALESCE(m.provider_message_id, i.provider_id),"
    " attempts = GREATEST(m.attempts, i.attempt),"
    " sent_at = CASE WHEN i.status IN ('sent', 'delivered', 'read')"
    "   AND wacast_message_can_move(m.status, i.status)"
    "   THEN COALESCE(m.sent_at, to_timestamp(i.at_us / 1e6)) ELSE m.sent_at END,"
    " delivered_at = CASE WHEN i.status IN ('delivered', 'read')"
    "   AND wacast_message_can_move(m.status, i.status)"
    "   THEN COALESCE(m.delivered_at, to_timestamp(i.at_us / 1e6)) ELSE m.delivered_at END,"
    " read_at = CASE WHEN i.status = 'read' AND wacast_message_can_move(m.status, i.status)"
    "   THEN to_timestamp(i.at_us / 1e6) ELSE m.read_at END,"
    " failed_at = CASE WHEN i.status = 'failed' AND wacast_message_can_move(m.status, i.status)"
    "   THEN to_timestamp(i.at_us / 1e6) ELSE m.failed_at END,"
    " updated_at = now()"
    " FROM (SELECT * FROM input ORDER BY id) i"
    " WHERE m.id = i.id AND (wacast_message_can_move(m.status, i.status)"
    "   OR (m.device_id IS NULL AND i.device_id IS NOT NULL)"
    "   OR (m.provider_message_id IS NULL AND i.provider_id IS NOT NULL) OR m.attempts < i.attempt)"
    " RETURNING m.campaign_id, m.lead_id, m.error_code, m.prev_status AS old_status,"
    " m.status AS new_status),"
    /* The recipient stopped marketing messages (131050): keep them out of the next campaign. */
    " optout AS ("
    " UPDATE leads SET opted_out_at = now() FROM upd u WHERE leads.id = u.lead_id"
    " AND u.new_status = 'failed' AND u.old_status <> 'failed' AND u.error_code = '131050'"
    " AND leads.opted_out_at IS NULL RETURNING 1),"
    " delta AS ("
    " SELECT campaign_id,"
    " count(*) FILTER (WHERE new_status IN ('sent', 'delivered', 'read')"
    "   AND old_status NOT IN ('sent', 'delivered', 'read')) AS sent,"
    " count(*) FILTER (WHERE new_status IN ('delivered', 'read')"
    "   AND old_status NOT IN ('delivered', 'read')) AS delivered,"
    " count(*) FILTER (WHERE new_status = 'read' AND old_status <> 'read') AS read,"
    " count(*) FILTER (WHERE new_status = 'failed' AND old_status <> 'failed') AS failed,"
    " count(*) FILTER (WHERE new_status = 'skipped' AND old_status <> 'skipped') AS skipped,"
    " count(*) FILTER (WHERE new_status = 'cancelled' AND old_status <> 'cancelled')"
    " - count(*) FILTER (WHERE old_status = 'cancelled' AND new_status <> 'cancelled')"
    " AS cancelled"
    " FROM upd GROUP BY campaign_id ORDER BY campaign_id),"
    " camp AS ("
    " UPDATE campaigns c SET sent_count = c.sent_count + d.sent,"
    " delivered_count = c.delivered_count + d.delivered, read_count = c.read_count + d.read,"
    " failed_count = c.failed_count + d.failed, skipped_count = c.skipped_count + d.skipped,"
    " cancelled_count = c.cancelled_count + d.cancelled"
    " FROM delta d WHERE c.id = d.campaign_id RETURNING c.id,"
    " c.sent_count + c.failed_count + c.skipped_count + c.cancelled_count >= c.total_count"
    " AS complete)"
    /* Only campaigns whose counters say every message is final are checked
     * for finishing now (that check walks the open-message indexes, ~3 ms on
     * a large campaign); the 2 s sweep checks the others. */
    " SELECT (SELECT count(*) FROM upd),"
    " (SELECT coalesce(array_agg(id), '{}') FROM camp WHERE complete)";

static void on_finished(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("finishing campaigns: %s", err);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        ds->m.campaigns_finished++;
        wc_info("campaign %s %s", PQgetvalue(res, i, 0), PQgetvalue(res, i, 1));
    }
}

void sink_finish_campaigns(dispatcher *ds, const char *uuid_array)
{
    const char *params[] = {uuid_array};
    if (wc_pg_query(ds->d.pg, WC_SQL_FINISH_CAMPAIGNS, 1, params, on_finished, ds) < 0)
        ds->m.pg_errors++;
}

/* Writes the next range (safe: it is one item in its safe form). */
static void sink_next(sink_batch *sb, bool safe);

static void sink_batch_free(sink_batch *sb)
{
    for (size_t i = 0; i < sb->nitems; i++)
        free(sb->items[i].raw);
    free(sb->items);
    free(sb->todo);
    evbuffer_free(sb->entry_ids);
    free(sb);
}

static void push_range(sink_batch *sb, size_t lo, size_t hi)
{
    size_t(*t)[2] = realloc(sb->todo, (sb->ntodo + 1) * sizeof *sb->todo);
    if (!t)
        abort();
    sb->todo = t;
    sb->todo[sb->ntodo][0] = lo;
    sb->todo[sb->ntodo][1] = hi;
    sb->ntodo++;
}

/* Did PostgreSQL refuse the statement for what is in it (so one result in
 * it is to blame), rather than for a reason of its own? */
static bool data_error(const char *sqlstate)
{
    return !strncmp(sqlstate, "22", 2) || !strncmp(sqlstate, "23", 2) ||
           !strncmp(sqlstate, "54", 2) || !strncmp(sqlstate, "P0", 2);
}

static void on_dead_lettered(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher_reply_ok(arg, reply);
}

/* Keeps a refused result, with why, in the bounded dead-letter stream. */
static void dead_letter(dispatcher *ds, const sink_item *it, const char *sqlstate, const char *err)
{
    char why[SINK_MESSAGE_MAX], msg[32];
    wc_text_clean(why, sizeof why, err, (size_t)-1, NULL);
    snprintf(msg, sizeof msg, "%" PRId64, it->message_id);
    const char *argv[] = {"XADD",
                          WC_KEY_RESULTS_DEAD,
                          "MAXLEN",
                          "~",
                          DEAD_LETTER_MAXLEN,
                          "*",
                          "r",
                          (const char *)it->raw,
                          "message",
                          msg,
                          "sqlstate",
                          sqlstate,
                          "error",
                          why};
    size_t lens[] = {4,
                     strlen(WC_KEY_RESULTS_DEAD),
                     6,
                     1,
                     strlen(DEAD_LETTER_MAXLEN),
                     1,
                     1,
                     it->raw_len,
                     7,
                     strlen(msg),
                     8,
                     strlen(sqlstate),
                     5,
                     strlen(why)};
    if (wc_redis_commandv(ds->d.redis, on_dead_lettered, ds, 14, argv, lens) < 0)
        ds->m.redis_errors++;
    ds->m.results_dead_lettered++;
    wc_warn("status result of message %s (entry %s) refused by PostgreSQL (%s): %s; dead-lettered",
            msg, it->entry_id, sqlstate, why);
}

static void on_sink_written(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    sink_batch *sb = arg;
    dispatcher *ds = sb->ds;
    if (res) {
        long changed = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        ds->m.results_written += (uint64_t)changed;
        const char *campaigns = PQgetvalue(res, 0, 1);
        if (strcmp(campaigns, "{}") != 0)
            sink_finish_campaigns(ds, campaigns);
        sink_next(sb, false);
        return;
    }
    ds->m.pg_errors++;
    const char *sqlstate = wc_pg_last_sqlstate(pg);
    if (!data_error(sqlstate)) {
        /* Not about the data (connection, time-out, lock): the batch stays
         * unacknowledged and is read again after a pause. */
        wc_warn("writing statuses: %s; the batch of %zu is retried", err, sb->nitems);
        ds->results_pel = true;
        ds->sink_retry_at_us = wc_mono_us() + SINK_RETRY_US;
        ds->sink_writing = false;
        sink_batch_free(sb);
        return;
    }
    if (sb->hi - sb->lo > 1) {
        /* One of them is to blame: halves, the first half first. */
        size_t mid = sb->lo + (sb->hi - sb->lo) / 2;
        push_range(sb, mid, sb->hi);
        push_range(sb, sb->lo, mid);
    } else if (!sb->safe) {
        sink_item *it = &sb->items[sb->lo];
        dead_letter(ds, it, sqlstate, err);
        if (it->message_id > 0) {
            /* Its message still reaches a final status: the result without
             * anything it brought along. */
            char why[SINK_MESSAGE_MAX];
            snprintf(why, sizeof why, "result refused by PostgreSQL (%s): %s", sqlstate, err);
            wc_text_clean(it->error_message, sizeof it->error_message, why, (size_t)-1, NULL);
            snprintf(it->error_code, sizeof it->error_code, "invalid_result");
            it->device_id[0] = '\0';
            it->provider_id[0] = '\0';
            it->at_us = wc_now_us();
            push_range(sb, sb->lo, sb->hi);
            sink_next(sb, true);
            return;
        }
    } else {
        ds->m.results_unwritable++;
        wc_error("message %" PRId64 ": even its safe-form status was refused (%s): %s",
                 sb->items[sb->lo].message_id, sqlstate, err);
    }
    sink_next(sb, false);
}

/* Writes items [lo, hi) in one statement. */
static int write_range(sink_batch *sb)
{
    struct evbuffer *a[8];
    for (int k = 0; k < 8; k++) {
        a[k] = evbuffer_new();
        evbuffer_add(a[k], "{", 1);
    }
    for (size_t i = sb->lo; i < sb->hi; i++) {
        const sink_item *it = &sb->items[i];
        bool first = i == sb->lo;
        evbuffer_add_printf(a[0], "%s%" PRId64, first ? "" : ",", it->message_id);
        evbuffer_add_printf(a[1], "%s%s", first ? "" : ",", it->status);
        array_text(a[2], it->error_code, first);
        array_text(a[3], it->error_message, first);
        array_text(a[4], it->device_id, first);
        array_text(a[5], it->provider_id, first);
        evbuffer_add_printf(a[6], "%s%" PRId64, first ? "" : ",", it->at_us);
        evbuffer_add_printf(a[7], "%s%u", first ? "" : ",", it->attempt);
    }
    const char *params[8];
    for (int k = 0; k < 8; k++) {
        evbuffer_add(a[k], "}\0", 2);
        params[k] = (const char *)evbuffer_pullup(a[k], -1);
    }
    int rc = wc_pg_query(sb->ds->d.pg, SINK_SQL, 8, params, on_sink_written, sb);
    for (int k = 0; k < 8; k++)
        evbuffer_free(a[k]);
    return rc;
}

static void on_sink_acked(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher_reply_ok(arg, reply);
}

/* Writes the next range, or acknowledges the batch when all is written. */
static void sink_next(sink_batch *sb, bool safe)
{
    dispatcher *ds = sb->ds;
    if (sb->ntodo > 0) {
        sb->ntodo--;
        sb->lo = sb->todo[sb->ntodo][0];
        sb->hi = sb->todo[sb->ntodo][1];
        sb->safe = safe;
        if (write_range(sb) == 0)
            return;
        /* Could not even queue it: as a failure of the whole batch. */
        ds->m.pg_errors++;
        ds->results_pel = true;
        ds->sink_retry_at_us = wc_mono_us() + SINK_RETRY_US;
        ds->sink_writing = false;
        sink_batch_free(sb);
        return;
    }
    ds->sink_writing = false;
    if (dispatcher_ack_and_delete(ds, WC_KEY_RESULTS, WC_GROUP_SINK, sb->entry_ids, on_sink_acked) <
        0)
        ds->results_pel = true;
    sink_batch_free(sb);
    sink_read(ds);
}

static void on_results(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher *ds = arg;
    ds->results_reading = false;
    if (!dispatcher_reply_ok(ds, reply)) {
        if (reply && strstr(reply->str, "NOGROUP"))
            dispatcher_create_groups(ds);
        return;
    }
    redisReply *entries = NULL;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0 &&
        reply->element[0]->type == REDIS_REPLY_ARRAY && reply->element[0]->elements == 2)
        entries = reply->element[0]->element[1];
    if (!entries || entries->type != REDIS_REPLY_ARRAY || entries->elements == 0) {
        if (ds->results_read_pel)
            ds->results_pel = false;
        sink_read(ds);
        return;
    }
    sink_batch *sb = calloc(1, sizeof *sb);
    sink_item *items = calloc(entries->elements, sizeof *items);
    if (!sb || !items)
        abort();
    sb->ds = ds;
    sb->entry_ids = evbuffer_new();
    sb->items = items;
    /* Every usable result goes to the statement, which merges the reports
     * about one message (the furthest status wins, no detail is lost). */
    for (size_t i = 0; i < entries->elements; i++) {
        redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        evbuffer_add_printf(sb->entry_ids, " %s", e->element[0]->str);
        redisReply *fields = e->element[1], *raw = NULL;
        for (size_t k = 0; fields->type == REDIS_REPLY_ARRAY && k + 1 < fields->elements; k += 2) {
            redisReply *key = fields->element[k], *val = fields->element[k + 1];
            if (key->type == REDIS_REPLY_STRING && !strcmp(key->str, "r") &&
                val->type == REDIS_REPLY_STRING)
                raw = val;
        }
        Wacast__Result *res =
            raw ? wacast__result__unpack(NULL, raw->len, (const uint8_t *)raw->str) : NULL;
        sink_item *it = &items[sb->nitems];
        if (!res || !clean_item(it, res)) {
            ds->m.results_ignored++;
            if (res)
                wacast__result__free_unpacked(res, NULL);
            continue;
        }
        wacast__result__free_unpacked(res, NULL);
        snprintf(it->entry_id, sizeof it->entry_id, "%s", e->element[0]->str);
        it->raw = malloc(raw->len ? raw->len : 1);
        if (!it->raw)
            abort();
        memcpy(it->raw, raw->str, raw->len);
        it->raw_len = raw->len;
        sb->nitems++;
    }
    if (sb->nitems == 0) {
        /* Nothing usable in the batch: acknowledge it away. */
        (void)dispatcher_ack_and_delete(ds, WC_KEY_RESULTS, WC_GROUP_SINK, sb->entry_ids,
                                        on_sink_acked);
        sink_batch_free(sb);
        sink_read(ds);
        return;
    }
    ds->sink_writing = true;
    push_range(sb, 0, sb->nitems);
    sink_next(sb, false);
}

void sink_read(dispatcher *ds)
{
    if (ds->results_reading || ds->sink_writing)
        return;
    if (ds->d.stopping) {
        wc_daemon_exit(&ds->d);
        return;
    }
    if (ds->sink_retry_at_us && wc_mono_us() < ds->sink_retry_at_us)
        return; /* the read timer comes back */
    ds->sink_retry_at_us = 0;
    char count[32];
    snprintf(count, sizeof count, "%ld", ds->cfg.sink_batch);
    if (wc_redis_command(ds->results_rd, on_results, ds,
                         "XREADGROUP GROUP %s %s COUNT %s BLOCK %s STREAMS %s %s", WC_GROUP_SINK,
                         ds->cfg.c.instance_id, count, ds->results_pel ? "0" : "1000",
                         WC_KEY_RESULTS, ds->results_pel ? "0" : ">") == 0) {
        ds->results_reading = true;
        ds->results_read_pel = ds->results_pel;
    }
}

static void on_processing(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("listing campaigns: %s", err);
        return;
    }
    const char *ids = PQgetvalue(res, 0, 0);
    if (strcmp(ids, "{}") != 0)
        sink_finish_campaigns(ds, ids);
}

/* Campaigns whose last status came in a batch that did not see them
 * complete (or a peer's) are finished here, every 2 s. */
static void on_sweep_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatcher *ds = arg;
    if (wc_pg_query(
            ds->d.pg,
            "SELECT coalesce(array_agg(id), '{}')::text FROM campaigns WHERE status = 'processing'",
            0, NULL, on_processing, ds) < 0)
        ds->m.pg_errors++;
}

void sink_init(dispatcher *ds)
{
    ds->sweep_timer = wc_daemon_every(&ds->d, 2000, on_sweep_timer, ds);
}

void sink_free(dispatcher *ds)
{
    event_free(ds->sweep_timer);
}
