/* Provider status events: the webhook receiver (POST /webhooks/cloudapi and
 * /webhooks/gowa, signed with X-Hub-Signature-256; Meta's GET verification)
 * and the simulated provider's webhooks, which go through the same parsing
 * and the same handling. A status becomes a result on the results stream
 * (the sink applies it, idempotently and never backwards) and, when the
 * message is known, the outcome is recorded in the message's idempotency
 * marker, which is how a send left in doubt by a dead sender is resolved.
 * An inbound opt-out word opts out the leads of the user whose device
 * received it (never another user's lead with the same number).
 *
 * A webhook is acknowledged only once what it carries is durable: every
 * result is on the results stream with its marker written, and every
 * opt-out is in PostgreSQL. Until then the request waits; if any write
 * fails it is answered 503, and the provider sends it again (applying a
 * body twice is harmless: results never move a status backwards, and an
 * opt-out is set once). The sim's webhooks follow the same rule: one is
 * removed from its set only once durable. */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <sodium.h>

#include "dispatcher.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_webhook.h"

#define WEBHOOK_MAX_BODY (1u << 20)

/* A timestamp in seconds that PostgreSQL can hold and that is plausible
 * (before the year 3000), as microseconds; else now. */
static int64_t event_time_us(int64_t seconds)
{
    return seconds > 0 && seconds < INT64_C(32503680000) ? seconds * 1000000 : wc_now_us();
}

/* Everything a webhook body caused is durable once no write is pending and
 * none failed; then the op's owner is told (the HTTP reply, the sim's
 * removal) and the op is freed. */
static void op_settle(webhook_op *op)
{
    if (!op->issued || op->pending > 0)
        return;
    op->done(op);
    free(op);
}

static void on_op_redis(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    webhook_op *op = arg;
    op->pending--;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        op->ds->m.redis_errors++;
        op->failed = true;
    }
    op_settle(op);
}

static void on_op_pg(wc_pg *pg, PGresult *res, const char *err, void *arg);

webhook_op *webhook_op_new(dispatcher *ds, void (*done)(webhook_op *), void *ctx)
{
    webhook_op *op = calloc(1, sizeof *op);
    if (!op)
        abort();
    op->ds = ds;
    op->done = done;
    op->ctx = ctx;
    return op;
}

void dispatcher_status_result(dispatcher *ds, const Wacast__Result *res, webhook_op *op)
{
    size_t len = wacast__result__get_packed_size(res);
    uint8_t *buf = malloc(len + 2);
    if (!buf)
        abort();
    buf[0] = 'd';
    buf[1] = ':';
    wacast__result__pack(res, buf + 2);
    if (res->message_id > 0) {
        /* The provider says what happened: a send left in doubt is settled. */
        char key[64], ttl[32];
        wc_key_msg(key, sizeof key, (long long)res->message_id);
        snprintf(ttl, sizeof ttl, "%ld", ds->cfg.idempotency_ttl_s);
        const char *argv[] = {"EVAL", WC_LUA_MARK, "1", key, (const char *)buf, ttl, "d"};
        size_t lens[] = {4, strlen(WC_LUA_MARK), 1, strlen(key), len + 2, strlen(ttl), 1};
        if (wc_redis_commandv(ds->d.redis, on_op_redis, op, 7, argv, lens) == 0) {
            op->pending++;
        } else {
            ds->m.redis_errors++;
            op->failed = true;
        }
    }
    const char *argv[] = {"XADD", WC_KEY_RESULTS, "*", "r", (const char *)buf + 2};
    size_t lens[] = {4, strlen(WC_KEY_RESULTS), 1, 1, len};
    if (wc_redis_commandv(ds->d.redis, on_op_redis, op, 5, argv, lens) == 0) {
        op->pending++;
    } else {
        ds->m.redis_errors++;
        op->failed = true;
    }
    free(buf);
}

static void on_op_pg(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    webhook_op *op = arg;
    dispatcher *ds = op->ds;
    op->pending--;
    if (!res) {
        ds->m.pg_errors++;
        op->failed = true;
        wc_warn("opting a lead out: %s", err);
    } else if (PQntuples(res) > 0 && !strcmp(PQgetvalue(res, 0, 0), "f")) {
        ds->m.opt_outs_unmatched++;
        wc_warn("opt-out reply to %s: no device of ours has that number; nobody opted out",
                PQgetvalue(res, 0, 1));
    } else {
        for (int i = 0; i < PQntuples(res); i++) {
            if (PQgetisnull(res, i, 2))
                continue;
            ds->m.opt_outs++;
            wc_info("lead %s opted out by reply", PQgetvalue(res, i, 2));
        }
    }
    op_settle(op);
}

/* The leads this number was messaged as, of the users whose device received
 * the reply: the sim names the device itself, the Cloud API its
 * phone_number_id, gowa the device's JID ("<its number>@s.whatsapp.net",
 * matched to the row's phone, or to settings.jid).
 * The first column says whether any device matched. */
static const char *OPT_OUT_SQL =
    "WITH dev AS (SELECT DISTINCT user_id FROM user_devices d WHERE d.id::text = $2"
    "  OR d.settings->>'phone_number_id' = $2 OR d.settings->>'jid' = $2"
    "  OR (d.phone IS NOT NULL AND regexp_replace(d.phone, '[^0-9]', '', 'g')"
    "      = split_part(split_part($2, '@', 1), ':', 1))),"
    " out AS (UPDATE leads SET opted_out_at = now() WHERE opted_out_at IS NULL"
    "  AND user_id IN (SELECT user_id FROM dev) AND id IN"
    "  (SELECT lead_id FROM broadcast_messages WHERE recipient_phone = $1"
    "   AND status IN ('sent', 'delivered', 'read', 'failed') AND lead_id IS NOT NULL"
    "   AND user_id IN (SELECT user_id FROM dev)) RETURNING id)"
    " SELECT EXISTS (SELECT 1 FROM dev), $2::text, out.id FROM (SELECT 1) one"
    " LEFT JOIN out ON true";

/* A reply that is no opt-out: the sequences it stops (sql/007_sequences.sql). */
static const char *SEQ_REPLY_SQL = "SELECT wacast_seq_reply($1, $2)";

static void on_reply_pg(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    webhook_op *op = arg;
    op->pending--;
    if (!res) {
        op->ds->m.pg_errors++;
        op->failed = true;
        wc_warn("stopping sequences on a reply: %s", err);
    } else {
        op->ds->m.sequence_replies_stopped += strtoull(PQgetvalue(res, 0, 0), NULL, 10);
    }
    op_settle(op);
}

static Wacast__Status map_status(wc_webhook_status s)
{
    switch (s) {
    case WC_WEBHOOK_SENT:
        return WACAST__STATUS__STATUS_SENT;
    case WC_WEBHOOK_DELIVERED:
        return WACAST__STATUS__STATUS_DELIVERED;
    case WC_WEBHOOK_READ:
        return WACAST__STATUS__STATUS_READ;
    case WC_WEBHOOK_FAILED:
        return WACAST__STATUS__STATUS_FAILED;
    }
    return WACAST__STATUS__STATUS_UNSPECIFIED;
}

/* Parses a body and issues the writes it calls for, counted on op. */
static int body_writes(dispatcher *ds, int provider, const char *body, size_t len, webhook_op *op,
                       char *err, size_t errlen)
{
    wc_webhook_events ev;
    if (wc_webhook_parse((wc_webhook_provider)provider, body, len, WEBHOOK_MAX_BODY, 0, &ev, err,
                         errlen) < 0)
        return -1;
    for (size_t i = 0; i < ev.count; i++) {
        wc_webhook_event *e = &ev.items[i];
        if (e->kind == WC_WEBHOOK_STATUS) {
            Wacast__Result res = WACAST__RESULT__INIT;
            char *end = NULL;
            long long id = e->callback_data ? strtoll(e->callback_data, &end, 10) : 0;
            res.message_id = end && *end == '\0' && id > 0 ? id : 0;
            res.provider_message_id = e->provider_id;
            /* The sim names the device itself as the receiving number; the
             * Cloud API its phone_number_id, whose device the row then
             * names (a send whose reply was lost has no other report). */
            if (op->device[0])
                res.device_id = op->device;
            else if (e->receiver && strlen(e->receiver) == 36 && e->receiver[8] == '-')
                res.device_id = e->receiver;
            else if (e->receiver && wc_map_get(&ds->numbers, e->receiver))
                res.device_id = wc_map_get(&ds->numbers, e->receiver);
            res.status = map_status(e->status);
            res.at_us = event_time_us(e->timestamp);
            char code[32] = "";
            if (e->status == WC_WEBHOOK_FAILED) {
                snprintf(code, sizeof code, "%ld", e->error_code);
                res.error_code = code;
                res.error_message = e->error_message ? e->error_message
                                    : e->error_title ? e->error_title
                                                     : "";
            }
            if (res.status == WACAST__STATUS__STATUS_UNSPECIFIED)
                continue;
            ds->m.status_events++;
            dispatcher_status_result(ds, &res, op);
        } else if (e->kind == WC_WEBHOOK_INBOUND && e->text && e->peer) {
            char phone[40];
            snprintf(phone, sizeof phone, "+%.30s", e->peer);
            const char *params[] = {phone, op->device[0] ? op->device
                                           : e->receiver ? e->receiver
                                                         : ""};
            /* Any reply stops the sender's drip sequences that stop on a
             * reply (sql/007_sequences.sql); an opt-out word stops them all
             * through the lead's opt-out. */
            bool opt_out = wc_webhook_is_opt_out(e->text, ds->cfg.opt_out_words);
            if (wc_pg_query(ds->d.pg, opt_out ? OPT_OUT_SQL : SEQ_REPLY_SQL, 2, params,
                            opt_out ? on_op_pg : on_reply_pg, op) == 0) {
                op->pending++;
            } else {
                ds->m.pg_errors++;
                op->failed = true;
            }
        }
    }
    wc_webhook_events_free(&ev);
    return 0;
}

int dispatcher_webhook_body(dispatcher *ds, int provider, const char *body, size_t len,
                            webhook_op *op, char *err, size_t errlen)
{
    if (body_writes(ds, provider, body, len, op, err, errlen) < 0)
        return -1;
    op->issued = true;
    op_settle(op);
    return 0;
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

static const char *query_param(struct evkeyvalq *q, const char *name)
{
    return evhttp_find_header(q, name);
}

static void reply_when_durable(webhook_op *op)
{
    struct evhttp_request *req = op->ctx;
    if (op->failed) {
        op->ds->m.webhooks_unstored++;
        wc_warn("webhook: not stored (Redis or PostgreSQL unavailable); answered 503 for a retry");
        wc_http_reply_error(req, 503, "not stored; send it again");
        return;
    }
    op->ds->m.webhooks_accepted++;
    wc_http_reply_json(req, 200, "{\"ok\":true}");
}

/* Meta's verification challenge is a number; anything else is refused
 * rather than echoed. */
static bool plain_challenge(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
            return false;
    return true;
}

static bool same_secret(const char *given, const char *want)
{
    size_t n = strlen(want);
    return n > 0 && strlen(given) == n && sodium_memcmp(given, want, n) == 0;
}

static void webhook_request(struct evhttp_request *req, dispatcher *ds, int provider,
                            const char *secret)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd == EVHTTP_REQ_GET && provider == WC_WEBHOOK_CLOUDAPI) {
        /* Meta's subscription check: echo hub.challenge when the token matches. */
        struct evkeyvalq q;
        const char *uri = evhttp_request_get_uri(req);
        const char *qs = strchr(uri, '?');
        if (!qs || evhttp_parse_query_str(qs + 1, &q) < 0) {
            wc_http_reply_error(req, 400, "missing hub.mode, hub.verify_token, hub.challenge");
            return;
        }
        const char *mode = query_param(&q, "hub.mode"),
                   *token = query_param(&q, "hub.verify_token"),
                   *challenge = query_param(&q, "hub.challenge");
        bool ok = mode && token && challenge && !strcmp(mode, "subscribe") &&
                  same_secret(token, ds->cfg.meta_verify_token);
        if (ok && !plain_challenge(challenge)) {
            ds->m.webhooks_rejected++;
            wc_http_reply_error(req, 400, "hub.challenge must be 1-128 letters or digits");
        } else if (ok) {
            struct evbuffer *b = evbuffer_new();
            evbuffer_add(b, challenge, strlen(challenge));
            evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                              "text/plain; charset=utf-8");
            evhttp_send_reply(req, 200, "OK", b);
            evbuffer_free(b);
        } else {
            ds->m.webhooks_rejected++;
            wc_http_reply_error(req, 403, "verification failed");
        }
        evhttp_clear_headers(&q);
        return;
    }
    if (cmd != EVHTTP_REQ_POST) {
        wc_http_reply_error(req, 405, "method not allowed");
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > WEBHOOK_MAX_BODY) {
        ds->m.webhooks_rejected++;
        wc_http_reply_error(req, 413, "body too large");
        return;
    }
    const char *sig =
        evhttp_find_header(evhttp_request_get_input_headers(req), "X-Hub-Signature-256");
    const unsigned char *body = evbuffer_pullup(in, -1);
    if (!secret || !*secret) {
        ds->m.webhooks_rejected++;
        wc_http_reply_error(req, 403, "webhook secret not configured");
        return;
    }
    if (!sig) {
        ds->m.webhooks_rejected++;
        wc_http_reply_error(req, 401, "missing X-Hub-Signature-256");
        return;
    }
    if (!wc_webhook_verify(secret, body, len, sig)) {
        ds->m.webhooks_rejected++;
        wc_warn("webhook: bad signature (%zu bytes)", len);
        wc_http_reply_error(req, 401, "invalid signature");
        return;
    }
    char err[256];
    /* Answered by reply_when_durable(), once its writes are done. */
    webhook_op *op = webhook_op_new(ds, reply_when_durable, req);
    if (dispatcher_webhook_body(ds, provider, (const char *)body, len, op, err, sizeof err) < 0) {
        free(op);
        ds->m.webhooks_rejected++;
        wc_warn("webhook: malformed body: %s", err);
        wc_http_reply_error(req, 400, err);
    }
}

/* POST /webhooks/gowa/<device id>: a gowa device's own webhook, signed with
 * the webhook_secret of its sealed credentials. Its events concern that
 * device only, so one gateway's secret cannot speak for another tenant's
 * devices (the shared WACAST_GOWA_WEBHOOK_SECRET of /webhooks/gowa can: it
 * is for gateways whose devices all belong to one user). */
typedef struct device_hook {
    dispatcher *ds;
    struct evhttp_request *req;
    char device[40];
} device_hook;

static void verified_device_body(device_hook *h, const char *secret)
{
    dispatcher *ds = h->ds;
    struct evhttp_request *req = h->req;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const unsigned char *body = evbuffer_pullup(in, -1);
    const char *sig =
        evhttp_find_header(evhttp_request_get_input_headers(req), "X-Hub-Signature-256");
    if (!sig || !wc_webhook_verify(secret, body, len, sig)) {
        ds->m.webhooks_rejected++;
        wc_warn("webhook of device %s: %s signature (%zu bytes)", h->device, sig ? "bad" : "no",
                len);
        wc_http_reply_error(req, 401, sig ? "invalid signature" : "missing X-Hub-Signature-256");
        return;
    }
    char err[256];
    webhook_op *op = webhook_op_new(ds, reply_when_durable, req);
    snprintf(op->device, sizeof op->device, "%s", h->device);
    if (dispatcher_webhook_body(ds, WC_WEBHOOK_GOWA, (const char *)body, len, op, err, sizeof err) <
        0) {
        free(op);
        ds->m.webhooks_rejected++;
        wc_warn("webhook of device %s: malformed body: %s", h->device, err);
        wc_http_reply_error(req, 400, err);
    }
}

static void on_hook_device(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    device_hook *h = arg;
    dispatcher *ds = h->ds;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("webhook of device %s: %s", h->device, err);
        wc_http_reply_error(h->req, 503, "cannot read the device now; send it again");
    } else if (PQntuples(res) == 0) {
        ds->m.webhooks_rejected++;
        wc_http_reply_error(h->req, 404, "no such gowa device");
    } else {
        char why[224];
        json_t *creds =
            dispatcher_open_credentials(ds, h->device, PQgetvalue(res, 0, 0), why, sizeof why);
        const char *secret = json_string_value(json_object_get(creds, "webhook_secret"));
        if (secret && secret[0]) {
            verified_device_body(h, secret);
        } else {
            ds->m.webhooks_rejected++;
            wc_warn("webhook of device %s refused: %s", h->device,
                    creds ? "its credentials have no webhook_secret" : why);
            wc_http_reply_error(h->req, 403, "the device has no webhook secret");
        }
        json_decref(creds);
    }
    free(h);
}

static void device_webhook(struct evhttp_request *req, dispatcher *ds, const char *device)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        wc_http_reply_error(req, 405, "method not allowed");
        return;
    }
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > WEBHOOK_MAX_BODY) {
        ds->m.webhooks_rejected++;
        wc_http_reply_error(req, 413, "body too large");
        return;
    }
    device_hook *h = calloc(1, sizeof *h);
    if (!h)
        abort();
    h->ds = ds;
    h->req = req;
    snprintf(h->device, sizeof h->device, "%.36s", device);
    const char *params[] = {h->device};
    if (wc_pg_query(ds->d.pg,
                    "SELECT coalesce(encode(credentials, 'hex'), '') FROM user_devices"
                    " WHERE id = $1::uuid AND platform = 'gowa'",
                    1, params, on_hook_device, h) < 0) {
        ds->m.pg_errors++;
        free(h);
        wc_http_reply_error(req, 503, "cannot read the device now; send it again");
    }
}

/* A device id (36 characters of a UUID) ends the path or starts its query. */
static bool uuid_at(const char *s)
{
    for (int i = 0; i < 36; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
            return false;
    }
    return s[36] == '\0' || s[36] == '?';
}

static void on_webhook(struct evhttp_request *req, void *arg)
{
    dispatcher *ds = arg;
    const char *uri = evhttp_request_get_uri(req);
    if (!strncmp(uri, "/webhooks/cloudapi", 18) && (uri[18] == '\0' || uri[18] == '?'))
        webhook_request(req, ds, WC_WEBHOOK_CLOUDAPI, ds->cfg.meta_app_secret);
    else if (!strncmp(uri, "/webhooks/gowa", 14) && (uri[14] == '\0' || uri[14] == '?'))
        webhook_request(req, ds, WC_WEBHOOK_GOWA, ds->cfg.gowa_webhook_secret);
    else if (!strncmp(uri, "/webhooks/gowa/", 15) && uuid_at(uri + 15))
        device_webhook(req, ds, uri + 15);
    else
        wc_http_reply_error(req, 404, "not found");
}

/* ---- the simulated provider's webhooks --------------------------------------------------------
 */

/* The sim's provider side may live in a Redis of its own (WACAST_SIM_REDIS_URL,
 * as the senders' sim transport is told): its webhooks are read there. */
static wc_redis *sim_redis(dispatcher *ds)
{
    return ds->sim_rd ? ds->sim_rd : ds->d.redis;
}

static void on_sim_removed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)reply;
    dispatcher *ds = arg;
    ds->sim_busy = false;
}

/* The due webhooks of one round, removed from the set once all they carry
 * is durable; kept (and delivered again next round) if anything failed. */
typedef struct sim_round {
    size_t n;
    char **members;
    size_t *lens;
} sim_round;

static void sim_round_free(sim_round *sr)
{
    for (size_t i = 0; i < sr->n; i++)
        free(sr->members[i]);
    free(sr->members);
    free(sr->lens);
    free(sr);
}

static void remove_when_durable(webhook_op *op)
{
    sim_round *sr = op->ctx;
    dispatcher *ds = op->ds;
    bool removing = false;
    if (!op->failed && sr->n > 0) {
        const char **argv = calloc(sr->n + 2, sizeof *argv);
        size_t *lens = calloc(sr->n + 2, sizeof *lens);
        if (!argv || !lens)
            abort();
        argv[0] = "ZREM";
        lens[0] = 4;
        argv[1] = WC_KEY_SIM_CALLBACKS;
        lens[1] = strlen(WC_KEY_SIM_CALLBACKS);
        for (size_t i = 0; i < sr->n; i++) {
            argv[i + 2] = sr->members[i];
            lens[i + 2] = sr->lens[i];
        }
        removing =
            wc_redis_commandv(sim_redis(ds), on_sim_removed, ds, (int)sr->n + 2, argv, lens) == 0;
        free(argv);
        free(lens);
    }
    if (!removing)
        ds->sim_busy = false;
    sim_round_free(sr);
}

static void on_sim_due(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher *ds = arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        if (!reply || reply->type == REDIS_REPLY_ERROR)
            ds->m.redis_errors++;
        ds->sim_busy = false;
        return;
    }
    /* Handle, then remove once durable: a dispatcher dying in between
     * delivers a webhook twice (as providers do), never loses one. */
    sim_round *sr = calloc(1, sizeof *sr);
    if (sr)
        sr->members = calloc(reply->elements, sizeof *sr->members);
    if (sr)
        sr->lens = calloc(reply->elements, sizeof *sr->lens);
    if (!sr || !sr->members || !sr->lens)
        abort();
    webhook_op *op = webhook_op_new(ds, remove_when_durable, sr);
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *m = reply->element[i];
        if (m->type != REDIS_REPLY_STRING)
            continue;
        char err[256];
        /* Each body adds its writes to the round's op. */
        if (body_writes(ds, WC_WEBHOOK_CLOUDAPI, m->str, m->len, op, err, sizeof err) < 0)
            wc_error("sim webhook: %s", err);
        else
            ds->m.sim_callbacks++;
        sr->members[sr->n] = malloc(m->len ? m->len : 1);
        if (!sr->members[sr->n])
            abort();
        memcpy(sr->members[sr->n], m->str, m->len);
        sr->lens[sr->n++] = m->len;
    }
    op->issued = true;
    op_settle(op);
}

static void on_sim_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dispatcher *ds = arg;
    if (ds->sim_busy || !wc_redis_ready(sim_redis(ds)))
        return;
    char now[32];
    snprintf(now, sizeof now, "%" PRId64, wc_now_us() / 1000);
    if (wc_redis_command(sim_redis(ds), on_sim_due, ds, "ZRANGEBYSCORE %s -inf %s LIMIT 0 1000",
                         WC_KEY_SIM_CALLBACKS, now) == 0)
        ds->sim_busy = true;
}

void events_init(dispatcher *ds)
{
    if (wc_http_route(ds->d.http, "/webhooks/", WEBHOOK_MAX_BODY, on_webhook, ds) < 0) {
        wc_error("cannot route /webhooks/");
        abort();
    }
    const char *url = getenv("WACAST_SIM_REDIS_URL");
    char err[256];
    if (url && *url &&
        !(ds->sim_rd = wc_redis_new(ds->d.base, url, "redis-sim", 3000, err, sizeof err)))
        wc_error("WACAST_SIM_REDIS_URL: %s", err);
    ds->sim_timer = wc_daemon_every(&ds->d, 100, on_sim_timer, ds);
}

void events_free(dispatcher *ds)
{
    if (ds->sim_timer)
        event_free(ds->sim_timer);
    ds->sim_timer = NULL;
    wc_redis_free(ds->sim_rd);
    ds->sim_rd = NULL;
}
