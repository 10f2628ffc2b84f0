/* Provider status events: the webhook receiver (POST /webhooks/cloudapi and
 * /webhooks/gowa, signed with X-Hub-Signature-256; Meta's GET verification)
 * and the simulated provider's webhooks, which go through the same parsing
 * and the same handling. A status becomes a result on the results stream
 * (the sink applies it, idempotently and never backwards) and, when the
 * message is known, the outcome is recorded in the message's idempotency
 * marker, which is how a send left in doubt by a dead sender is resolved.
 * An inbound opt-out word opts the lead out. */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "dispatcher.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_webhook.h"

#define WEBHOOK_MAX_BODY (1u << 20)

static void on_void(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    dispatcher *ds = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        ds->m.redis_errors++;
}

void dispatcher_status_result(dispatcher *ds, const Wacast__Result *res)
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
        const char *argv[] = {"EVAL", WC_MARK_SCRIPT, "1", key, (const char *)buf, ttl, "d"};
        size_t lens[] = {4, strlen(WC_MARK_SCRIPT), 1, strlen(key), len + 2, strlen(ttl), 1};
        if (wc_redis_commandv(ds->d.redis, on_void, ds, 7, argv, lens) < 0)
            ds->m.redis_errors++;
    }
    const char *argv[] = {"XADD", WC_KEY_RESULTS, "*", "r", (const char *)buf + 2};
    size_t lens[] = {4, strlen(WC_KEY_RESULTS), 1, 1, len};
    if (wc_redis_commandv(ds->d.redis, on_void, ds, 5, argv, lens) < 0)
        ds->m.redis_errors++;
    free(buf);
}

static void on_opted_out(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    dispatcher *ds = arg;
    if (!res) {
        ds->m.pg_errors++;
        wc_warn("opting a lead out: %s", err);
        return;
    }
    ds->m.opt_outs += (uint64_t)PQntuples(res);
    for (int i = 0; i < PQntuples(res); i++)
        wc_info("lead %s opted out by reply", PQgetvalue(res, i, 0));
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

int dispatcher_webhook_body(dispatcher *ds, int provider, const char *body, size_t len, char *err,
                            size_t errlen)
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
            /* The sim names the device itself as the receiving number. */
            if (e->receiver && strlen(e->receiver) == 36 && e->receiver[8] == '-')
                res.device_id = e->receiver;
            res.status = map_status(e->status);
            res.at_us = e->timestamp > 0 ? e->timestamp * 1000000 : wc_now_us();
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
            dispatcher_status_result(ds, &res);
        } else if (e->kind == WC_WEBHOOK_INBOUND && e->text && e->peer &&
                   wc_webhook_is_opt_out(e->text, ds->cfg.opt_out_words)) {
            /* The leads this number was messaged as (any user's: the reply
             * came to one of their numbers, and STOP means stop). */
            char phone[40];
            snprintf(phone, sizeof phone, "+%s", e->peer);
            const char *params[] = {phone};
            if (wc_pg_query(
                    ds->d.pg,
                    "UPDATE leads SET opted_out_at = now() WHERE opted_out_at IS NULL AND id IN"
                    " (SELECT lead_id FROM broadcast_messages WHERE recipient_phone = $1"
                    " AND status IN ('sent', 'delivered', 'read', 'failed')"
                    " AND lead_id IS NOT NULL) RETURNING id",
                    1, params, on_opted_out, ds) < 0)
                ds->m.pg_errors++;
        }
    }
    wc_webhook_events_free(&ev);
    return 0;
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

static const char *query_param(struct evkeyvalq *q, const char *name)
{
    return evhttp_find_header(q, name);
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
                  ds->cfg.meta_verify_token[0] && !strcmp(token, ds->cfg.meta_verify_token);
        if (ok) {
            struct evbuffer *b = evbuffer_new();
            evbuffer_add(b, challenge, strlen(challenge));
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
    if (dispatcher_webhook_body(ds, provider, (const char *)body, len, err, sizeof err) < 0) {
        ds->m.webhooks_rejected++;
        wc_warn("webhook: malformed body: %s", err);
        wc_http_reply_error(req, 400, err);
        return;
    }
    ds->m.webhooks_accepted++;
    wc_http_reply_json(req, 200, "{\"ok\":true}");
}

static void on_webhook(struct evhttp_request *req, void *arg)
{
    dispatcher *ds = arg;
    const char *uri = evhttp_request_get_uri(req);
    if (!strncmp(uri, "/webhooks/cloudapi", 18) && (uri[18] == '\0' || uri[18] == '?'))
        webhook_request(req, ds, WC_WEBHOOK_CLOUDAPI, ds->cfg.meta_app_secret);
    else if (!strncmp(uri, "/webhooks/gowa", 14) && (uri[14] == '\0' || uri[14] == '?'))
        webhook_request(req, ds, WC_WEBHOOK_GOWA, ds->cfg.gowa_webhook_secret);
    else
        wc_http_reply_error(req, 404, "not found");
}

/* ---- the simulated provider's webhooks --------------------------------------------------------
 */

/* The sim's provider side may live in a Redis of its own (WACAST_SIM_REDIS_URL,
 * as the senders' sim transport is told): its webhooks are read there. */
static wc_redis *sim_rd;

static wc_redis *sim_redis(dispatcher *ds)
{
    return sim_rd ? sim_rd : ds->d.redis;
}

static void on_sim_removed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    (void)reply;
    dispatcher *ds = arg;
    ds->sim_busy = false;
}

static void on_sim_due(wc_redis *r, redisReply *reply, void *arg)
{
    dispatcher *ds = arg;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        if (!reply || reply->type == REDIS_REPLY_ERROR)
            ds->m.redis_errors++;
        ds->sim_busy = false;
        return;
    }
    /* Handle, then remove: a dispatcher dying in between delivers a webhook
     * twice (as providers do), never loses one. */
    const char **argv = calloc(reply->elements + 2, sizeof *argv);
    size_t *lens = calloc(reply->elements + 2, sizeof *lens);
    if (!argv || !lens)
        abort();
    argv[0] = "ZREM";
    lens[0] = 4;
    argv[1] = WC_KEY_SIM_CALLBACKS;
    lens[1] = strlen(WC_KEY_SIM_CALLBACKS);
    int n = 2;
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *m = reply->element[i];
        if (m->type != REDIS_REPLY_STRING)
            continue;
        char err[256];
        if (dispatcher_webhook_body(ds, WC_WEBHOOK_CLOUDAPI, m->str, m->len, err, sizeof err) < 0)
            wc_error("sim webhook: %s", err);
        else
            ds->m.sim_callbacks++;
        argv[n] = m->str;
        lens[n++] = m->len;
    }
    if (wc_redis_commandv(r, on_sim_removed, ds, n, argv, lens) < 0)
        ds->sim_busy = false;
    free(argv);
    free(lens);
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
    if (ds->d.http && wc_http_route_prefix(ds->d.http, "/webhooks/", on_webhook, ds) < 0) {
        wc_error("cannot route /webhooks/");
        abort();
    }
    const char *url = getenv("WACAST_SIM_REDIS_URL");
    char err[256];
    if (url && *url &&
        !(sim_rd = wc_redis_new(ds->d.base, url, "redis-sim", 3000, err, sizeof err)))
        wc_error("WACAST_SIM_REDIS_URL: %s", err);
    ds->sim_timer = wc_daemon_every(&ds->d, 100, on_sim_timer, ds);
}

void events_free(dispatcher *ds)
{
    if (ds->sim_timer)
        event_free(ds->sim_timer);
    ds->sim_timer = NULL;
    wc_redis_free(sim_rd);
    sim_rd = NULL;
}
