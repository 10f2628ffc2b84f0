/* The Cloud API transport end to end, on real redis-server and PostgreSQL
 * with the real daemons and the Node.js fake of Meta's Graph API
 * (tests/fakes/graph.js, started here with --port 0). Devices are
 * platform 'cloudapi' rows pointing at the fake, their access tokens sealed
 * with `wacast-ctl set-credentials` under WACAST_SECRET_KEY; the fake posts
 * signed status webhooks to the dispatcher's /webhooks/cloudapi, late, each
 * message's in reverse order (read first) and some twice. The daemons run
 * with WACAST_MAX_ATTEMPTS=3.
 *
 * It proves that:
 * 1. a campaign over cloudapi devices reaches every lead exactly once (the
 *    fake's record), from the lead's own device, with bodies the fake
 *    validated against Meta's OpenAPI schema (none rejected); every row holds
 *    the wamid as provider_message_id and reaches 'read' through the signed
 *    webhooks, with delivered/read counters to match; a late 'delivered'
 *    after 'read' leaves 'read';
 * 2. webhook security: a forged or missing signature is 401 and changes
 *    nothing (a forged STOP opts nobody out), malformed JSON with a valid
 *    signature is 400, a body over 1 MiB is 413, a replayed status is 200 and
 *    idempotent; the GET handshake echoes hub.challenge with the right token
 *    and is 403 with a wrong one; wacast_dispatcher_webhooks_rejected_total
 *    counts every rejection its handler makes, and the listener counts the
 *    body too large for it (wacast_http_bodies_too_large_total);
 * 3. error codes get their documented handling: 131026 fails the message
 *    with one attempt; 131050 fails it and opts the lead out; 130429, HTTP
 *    429, 500 x2, 503 x2 and 131056 are retried and sent exactly once; an
 *    expired token (190) takes the device 'offline' with a reason, and its
 *    messages are neither lost (none fails during an 8 s outage, longer than
 *    3 attempts' back-off) nor sent twice: they go out once the token is
 *    replaced; 131048 and 368 mark the device 'blocked' with a reason; a
 *    connection reset after Meta took a message leaves it in doubt, settled
 *    by its status webhook, and it is not sent a second time;
 * 4. a STOP reply (inbound webhook) opts the lead out, and the next campaigns
 *    skip both it and the 131050 lead while everyone else gets one more
 *    message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "e2e_common.h"
#include "scenario.h"

#define MAX_DEVICES 16
#define MAX_LEADS 64
#define OUTAGE_MS 8000

static e2e_world w;

static double metric(const char *name)
{
    return e2e_metric(w.dport, name);
}

/* POSTs body to /webhooks/cloudapi; sig: NULL for none, "" to sign it with the app secret,
 * anything else sent as is. Returns the HTTP status. */
static long post_webhook(const char *body, size_t len, const char *sig)
{
    return e2e_post_webhook(w.dport, "/webhooks/cloudapi", w.app_secret, body, len, sig);
}

/* ---- the world
 * ----------------------------------------------------------------------------------- */

typedef struct device {
    char id[40];
    char pnid[24];
    char token[48];
    int user;
} device;

typedef enum {
    L_NORMAL,
    L_FAIL_131026,
    L_FAIL_131050,
    L_RETRY, /* transient errors, then one send */
    L_BLOCK, /* the device gets restricted */
    L_RESET, /* the connection resets after Meta took the message: in doubt, not sent again */
    L_TOKEN, /* on the device whose token expires */
} lead_kind;

typedef struct lead {
    char id[40];
    char name[32];
    char e164[20];
    char digits[20];
    int user;
    int dev;
    lead_kind kind;
    const char *rule; /* the injected error (JSON members besides "to"), or NULL */
    int retries;      /* failed attempts the rule causes */
    const char *code; /* for L_BLOCK: the code in the device's reason */
    int accepted;     /* sends the fake accepted so far, as the test expects them */
} lead;

static char users[2][40];
static device devices[MAX_DEVICES];
static int ndevices;
static lead leads[MAX_LEADS];
static int nleads;
static int dev_t1, dev_s1, dev_s2; /* user 2's token and spam devices */
static int stop_lead, forged_lead;
static char campaign1[40];

static int add_device(int user, const char *name)
{
    device *d = &devices[ndevices];
    d->user = user;
    snprintf(d->pnid, sizeof d->pnid, "10%08d", 1000 + ndevices);
    random_hex(d->token, 16);
    char settings[256];
    snprintf(settings, sizeof settings,
             "{\"base_url\": \"%s\", \"phone_number_id\": \"%s\", \"api_version\": \"v23.0\"}",
             w.fake.base, d->pnid);
    PGresult *r =
        wt_sql(w.db,
               "INSERT INTO user_devices (user_id, device_name, platform, min_delay_seconds,"
               " max_delay_seconds, settings) VALUES ('%s', '%s', 'cloudapi', 0.01, 0.05,"
               " '%s') RETURNING id",
               users[user], name, settings);
    snprintf(d->id, sizeof d->id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return ndevices++;
}

static int add_lead(int user, int dev, lead_kind kind, const char *rule, int retries,
                    const char *code)
{
    lead *l = &leads[nleads];
    l->user = user;
    l->dev = dev;
    l->kind = kind;
    l->rule = rule;
    l->retries = retries;
    l->code = code;
    snprintf(l->name, sizeof l->name, "Lead %d", nleads);
    snprintf(l->digits, sizeof l->digits, "6012%07d", 4000000 + nleads * 7);
    snprintf(l->e164, sizeof l->e164, "+6012%07d", 4000000 + nleads * 7);
    PGresult *r = wt_sql(w.db,
                         "INSERT INTO leads (user_id, device_id, name, phone) VALUES ('%s', '%s',"
                         " '%s', '%s') RETURNING id",
                         users[user], devices[dev].id, l->name, l->e164);
    snprintf(l->id, sizeof l->id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return nleads++;
}

static void insert_campaign(int user, const char *title, char *id_out)
{
    PGresult *r =
        wt_sql(w.db,
               "INSERT INTO campaigns (user_id, title, message, scheduled_at,"
               " min_delay_seconds, max_delay_seconds) VALUES ('%s', '%s', 'Hi {{name}}!',"
               " now() - interval '1 second', 0.01, 0.05) RETURNING id",
               users[user], title);
    snprintf(id_out, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* ---- reading the fake's record
 * ------------------------------------------------------------------- */

/* Accepted sends to digits (all campaigns). */
static int accepted_for(json_t *sent, const char *digits)
{
    int n = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(sent, "messages"), i, m)
    {
        if (!strcmp(jstr(m, "wa_id"), digits))
            n++;
    }
    return n;
}

/* Checks every accepted send of one campaign against its row: one per message,
 * the row's text, its id as biz_opaque_callback_data, the phone number id of the
 * row's device, and the row's provider_message_id is the wamid. */
static int check_sends_match_rows(json_t *sent, const char *campaign)
{
    int bad = 0;
    PGresult *r =
        wt_sql(w.db,
               "SELECT m.id, m.recipient_phone, m.content, coalesce(m.provider_message_id, ''),"
               " coalesce(m.device_id::text, 'NULL') FROM broadcast_messages m WHERE"
               " m.campaign_id = '%s' AND"
               " m.status IN ('sent', 'delivered', 'read')",
               campaign);
    for (int i = 0; i < PQntuples(r); i++) {
        const char *id = PQgetvalue(r, i, 0), *phone = PQgetvalue(r, i, 1);
        int found = 0;
        size_t k;
        json_t *m;
        json_array_foreach(json_object_get(sent, "messages"), k, m)
        {
            const char *opaque = json_string_value(json_object_get(m, "biz_opaque_callback_data"));
            if (!opaque || strcmp(opaque, id) != 0)
                continue;
            found++;
            const char *wamid = json_string_value(json_object_get(m, "id"));
            const char *text = json_string_value(json_object_get(m, "text"));
            const char *pnid = json_string_value(json_object_get(m, "phone_number_id"));
            const char *to = json_string_value(json_object_get(m, "wa_id"));
            json_t *req = json_object_get(m, "request");
            const device *d = NULL;
            for (int j = 0; j < ndevices; j++)
                if (!strcmp(devices[j].id, PQgetvalue(r, i, 4)))
                    d = &devices[j];
            if (!text || strcmp(text, PQgetvalue(r, i, 2)) != 0 || !to || strcmp(to, phone + 1) ||
                strcmp(jstr(req, "type"), "text") ||
                strcmp(jstr(req, "recipient_type"), "individual") || !d || !pnid ||
                strcmp(pnid, d->pnid) || strcmp(PQgetvalue(r, i, 3), wamid ? wamid : "")) {
                if (bad++ < 10)
                    fprintf(stderr,
                            "message %s to %s: fake got text \"%s\" from %s as %s; row has \"%s\","
                            " device %s (its number), provider id %s\n",
                            id, phone, text ? text : "?", pnid ? pnid : "?", wamid ? wamid : "?",
                            PQgetvalue(r, i, 2), d ? d->pnid : PQgetvalue(r, i, 4),
                            PQgetvalue(r, i, 3));
            }
        }
        if (found != 1 && bad++ < 10)
            fprintf(stderr, "message %s to %s: %d accepted sends carry its id, want 1\n", id, phone,
                    found);
    }
    PQclear(r);
    return bad;
}

/* ---- setup
 * ---------------------------------------------------------------------------------------- */

static int setup_world(void)
{
    if (e2e_world_start(&w, "graph.js") < 0)
        return -1;

    for (int u = 0; u < 2; u++) {
        PGresult *r =
            wt_sql(w.db, "INSERT INTO users (name) VALUES ('cloudapi %d') RETURNING id", u);
        snprintf(users[u], sizeof users[u], "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    /* User 1: three healthy numbers, six leads each. */
    for (int k = 0; k < 3; k++) {
        char name[16];
        snprintf(name, sizeof name, "a%d", k + 1);
        add_device(0, name);
    }
    for (int i = 0; i < 18; i++)
        add_lead(0, i % 3, L_NORMAL, NULL, 0, NULL);
    stop_lead = 0;
    forged_lead = 1;
    /* User 2: errors. */
    int e1 = add_device(1, "e1"), e2 = add_device(1, "e2"), e3 = add_device(1, "e3");
    dev_t1 = add_device(1, "t1");
    dev_s1 = add_device(1, "s1");
    dev_s2 = add_device(1, "s2");
    add_lead(1, e1, L_FAIL_131026, "\"code\": 131026, \"times\": 0", 0, NULL);
    add_lead(1, e1, L_FAIL_131050, "\"code\": 131050, \"times\": 0", 0, NULL);
    add_lead(1, e1, L_RETRY, "\"code\": 130429, \"times\": 1", 1, NULL);
    add_lead(1, e1, L_NORMAL, NULL, 0, NULL);
    add_lead(1, e2, L_RETRY, "\"status\": 429, \"times\": 1", 1, NULL);
    add_lead(1, e2, L_RETRY, "\"status\": 500, \"times\": 2", 2, NULL);
    add_lead(1, e2, L_NORMAL, NULL, 0, NULL);
    add_lead(1, e3, L_RETRY, "\"status\": 503, \"times\": 2", 2, NULL);
    add_lead(1, e3, L_RETRY, "\"code\": 131056, \"times\": 1", 1, NULL);
    add_lead(1, e3, L_NORMAL, NULL, 0, NULL);
    add_lead(1, e1, L_RESET, "\"drop\": \"after_accept\", \"times\": 1", 0, NULL);
    for (int i = 0; i < 3; i++)
        add_lead(1, dev_t1, L_TOKEN, NULL, 0, NULL);
    add_lead(1, dev_s1, L_BLOCK, "\"code\": 131048, \"times\": 1", 0, "131048");
    add_lead(1, dev_s2, L_BLOCK, "\"code\": 368, \"times\": 1", 0, "368");

    /* The fake: a token per number, signed webhooks to the dispatcher, late,
     * reordered and duplicated. */
    json_t *tokens = json_object();
    for (int k = 0; k < ndevices; k++)
        json_object_set_new(tokens, devices[k].pnid, json_string(devices[k].token));
    char *tokens_text = json_dumps(tokens, JSON_COMPACT);
    json_decref(tokens);
    bool ok = fake_ok(&w.fake, "POST", "/_control/config",
                      "{\"app_secret\": \"%s\", \"webhook_url\":"
                      " \"http://127.0.0.1:%d/webhooks/cloudapi\", \"out_of_order_prob\": 1,"
                      " \"duplicate_prob\": 0.3, \"webhook_retry_base_ms\": 100, \"seed\": 7,"
                      " \"tokens\": %s}",
                      w.app_secret, w.dport, tokens_text);
    free(tokens_text);
    if (!ok)
        return -1;
    for (int k = 0; k < ndevices; k++) {
        char creds[128];
        snprintf(creds, sizeof creds, "{\"access_token\": \"%s\"}", devices[k].token);
        if (e2e_ctl_set_credentials(&w.env, w.secret_key, devices[k].id, creds) != 0) {
            fprintf(stderr, "wacast-ctl set-credentials %s failed\n", devices[k].id);
            wt_dump_logs(&w.env, 20);
            return -1;
        }
    }
    /* Sealed, never plain. */
    if (wt_sql_long(w.db,
                    "SELECT count(*) FROM user_devices WHERE credentials IS NULL OR"
                    " position(convert_to('access_token', 'UTF8') in credentials) > 0") != 0) {
        fprintf(stderr, "credentials are not sealed\n");
        return -1;
    }

    return e2e_world_daemons(&w, NULL, ndevices) ? 0 : -1;
}

static int setup(void **state)
{
    return e2e_world_setup(state, &w, setup_world);
}

/* ---- 1. a clean campaign
 * ------------------------------------------------------------------------- */

static void test_campaign_end_to_end(void **state)
{
    (void)state;
    int failures = 0;
    insert_campaign(0, "cloudapi e2e", campaign1);
    const char *ids[] = {campaign1};
    if (!sc_wait_campaigns_final(w.db, ids, 1, 60000)) {
        wt_dump_logs(&w.env, 60);
        fail_msg("campaign did not finish");
    }
    /* Statuses reach 'read' through the webhooks. */
    if (!e2e_wait_sql(w.db, 30000,
                      "SELECT count(*) = 18 FROM broadcast_messages WHERE campaign_id = '%s' AND"
                      " status = 'read' AND delivered_at IS NOT NULL AND read_at IS NOT NULL",
                      campaign1))
        failures++;
    if (!e2e_settle(&w.env, &w.fake))
        failures++;

    json_t *sent = e2e_fake_sent(&w.fake);
    assert_non_null(sent);
    for (int i = 0; i < nleads; i++) {
        if (leads[i].user != 0)
            continue;
        int got = accepted_for(sent, leads[i].digits);
        if (got != 1 && failures++ < 10)
            fprintf(stderr, "%s received %d messages, want 1\n", leads[i].digits, got);
        leads[i].accepted = got;
    }
    size_t total = json_array_size(json_object_get(sent, "messages"));
    if (total != 18) {
        fprintf(stderr, "the fake accepted %zu messages, want 18\n", total);
        failures++;
    }
    failures += check_sends_match_rows(sent, campaign1);
    /* From the lead's own device (all were online), in one attempt: the row
     * keeps what the sender reported even when a webhook overtook it. */
    PGresult *own =
        wt_sql(w.db,
               "SELECT m.id, m.status, coalesce(m.device_id::text, 'NULL'), l.device_id,"
               " m.attempts FROM broadcast_messages m JOIN leads l ON l.id = m.lead_id"
               " WHERE m.campaign_id = '%s' AND (m.device_id IS DISTINCT FROM l.device_id"
               " OR m.attempts <> 1) ORDER BY m.id",
               campaign1);
    for (int k = 0; k < PQntuples(own); k++) {
        fprintf(stderr, "message %s (%s): device_id %s (the lead's is %s), attempts %s\n",
                PQgetvalue(own, k, 0), PQgetvalue(own, k, 1), PQgetvalue(own, k, 2),
                PQgetvalue(own, k, 3), PQgetvalue(own, k, 4));
        failures++;
    }
    PQclear(own);
    failures += e2e_check_none_rejected(&w.fake, "the fake");
    failures += e2e_check_campaign(w.db, campaign1, 18, 18, 18, 18);

    /* Every message's statuses arrived in reverse (read first, sent last:
     * out_of_order_prob 1), some twice, and the dispatcher took every
     * delivery at the first attempt. */
    failures += e2e_check_webhooks(&w.fake, sent, "statuses", 3);

    /* A late 'delivered' after 'read' leaves 'read' and the counters alone. */
    json_t *m0 = json_array_get(json_object_get(sent, "messages"), 0);
    const char *wamid = json_string_value(json_object_get(m0, "id"));
    assert_non_null(wamid);
    char late[128];
    snprintf(late, sizeof late, "{\"id\": \"%s\", \"status\": \"delivered\"}", wamid);
    failures += e2e_check_late_delivered(&w.env, w.db, &w.fake, wamid, "/_control/status", late);
    json_decref(sent);
    if (failures)
        wt_dump_logs(&w.env, 40);
    assert_int_equal(failures, 0);
}

/* ---- 2. webhook security
 * ------------------------------------------------------------------------- */

static char *inbound_body(const char *from, const char *text, const char *pnid)
{
    char *s = NULL;
    if (asprintf(
            &s,
            "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"100000000000001\","
            "\"changes\":[{\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{"
            "\"display_phone_number\":\"%s\",\"phone_number_id\":\"%s\"},\"contacts\":[{"
            "\"profile\":{\"name\":\"Forger\"},\"wa_id\":\"%s\"}],\"messages\":[{\"from\":\"%s\","
            "\"id\":\"wamid.forged%lld\",\"timestamp\":\"%lld\",\"type\":\"text\",\"text\":{"
            "\"body\":\"%s\"}}]},\"field\":\"messages\"}]}]}",
            pnid, pnid, from, from, wt_now_ms(), (long long)time(NULL), text) < 0)
        abort();
    return s;
}

static char *status_body(const char *wamid, const char *status, const char *to, const char *opaque,
                         const char *pnid, long long ts)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"100000000000001\","
                 "\"changes\":[{\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{"
                 "\"display_phone_number\":\"%s\",\"phone_number_id\":\"%s\"},\"statuses\":[{"
                 "\"id\":\"%s\",\"status\":\"%s\",\"timestamp\":\"%lld\",\"recipient_id\":\"%s\","
                 "\"biz_opaque_callback_data\":\"%s\"}]},\"field\":\"messages\"}]}]}",
                 pnid, pnid, wamid, status, ts, to, opaque) < 0)
        abort();
    return s;
}

/* One refused request: the answer must be want and the rejection counter must
 * move by one. Returns the number of problems. */
static int refused(const char *what, long code, long want, double *counter)
{
    double now = metric("wacast_dispatcher_webhooks_rejected_total");
    int bad = 0;
    fprintf(stderr, "%s -> %ld (want %ld), webhooks_rejected_total %.0f -> %.0f\n", what, code,
            want, *counter, now);
    if (code != want)
        bad++;
    if (now != *counter + 1) {
        fprintf(stderr, "%s: wacast_dispatcher_webhooks_rejected_total did not count it\n", what);
        bad++;
    }
    *counter = now;
    return bad;
}

static void test_webhook_security(void **state)
{
    (void)state;
    int failures = 0;
    double rejected = metric("wacast_dispatcher_webhooks_rejected_total");
    double accepted0 = metric("wacast_dispatcher_webhooks_accepted_total");
    assert_true(rejected >= 0);
    const lead *victim = &leads[forged_lead];
    const device *vd = &devices[victim->dev];

    /* A forged STOP: wrong key, no signature, a malformed header, and the
     * right key over other bytes. */
    char *stop = inbound_body(victim->digits, "STOP", vd->pnid);
    char forged[100];
    e2e_sign("not-the-app-secret", stop, strlen(stop), forged, sizeof forged);
    failures +=
        refused("forged signature", post_webhook(stop, strlen(stop), forged), 401, &rejected);
    failures += refused("unsigned", post_webhook(stop, strlen(stop), NULL), 401, &rejected);
    failures +=
        refused("garbage signature", post_webhook(stop, strlen(stop), "sha256=zz"), 401, &rejected);
    char *other = inbound_body(victim->digits, "STOP ALL", vd->pnid);
    char other_sig[100];
    e2e_sign(w.app_secret, other, strlen(other), other_sig, sizeof other_sig);
    failures += refused("signature of another body", post_webhook(stop, strlen(stop), other_sig),
                        401, &rejected);
    free(other);
    free(stop);

    /* Malformed JSON and a wrong shape, validly signed. */
    const char *bad = "{\"object\":\"whatsapp_business_account\",\"entry\":[";
    failures += refused("malformed JSON", post_webhook(bad, strlen(bad), ""), 400, &rejected);
    const char *shape = "{\"object\":\"whatsapp_business_account\",\"entry\":\"nope\"}";
    failures += refused("wrong shape", post_webhook(shape, strlen(shape), ""), 400, &rejected);

    /* Over 1 MiB, validly signed. */
    size_t big_len = (1u << 20) + 1024;
    char *big = malloc(big_len + 1);
    assert_non_null(big);
    memset(big, ' ', big_len);
    const char *head = "{\"object\":\"whatsapp_business_account\",\"entry\":[]}";
    memcpy(big, head, strlen(head));
    big[big_len] = '\0';
    /* Refused by the listener from its Content-Length, before the body is
     * read: the handler never sees it, the listener counts it. */
    const char *too_large = "wacast_http_bodies_too_large_total{listener=\"public\"}";
    double too_large0 = metric(too_large);
    long big_code = post_webhook(big, big_len, "");
    double too_large1 = metric(too_large);
    fprintf(stderr, "oversized body -> %ld (want 413), %s %.0f -> %.0f\n", big_code, too_large,
            too_large0, too_large1);
    if (big_code != 413 || too_large1 != too_large0 + 1)
        failures++;
    free(big);

    /* Meta's handshake: the right token echoes the challenge, a wrong one is 403. */
    char url[512];
    resp r;
    snprintf(url, sizeof url,
             "http://127.0.0.1:%d/webhooks/cloudapi?hub.mode=subscribe&hub.verify_token=%s"
             "&hub.challenge=1158201444",
             w.dport, w.verify_token);
    long code = http("GET", url, NULL, 0, NULL, &r);
    fprintf(stderr, "GET with the right token -> %ld %s\n", code, r.body ? r.body : "");
    failures += code != 200 || !r.body || strcmp(r.body, "1158201444") != 0;
    resp_free(&r);
    snprintf(url, sizeof url,
             "http://127.0.0.1:%d/webhooks/cloudapi?hub.mode=subscribe&hub.verify_token=wrong"
             "&hub.challenge=1158201444",
             w.dport);
    code = http("GET", url, NULL, 0, NULL, &r);
    failures += r.body && strstr(r.body, "1158201444") != NULL;
    resp_free(&r);
    failures += refused("GET with a wrong token", code, 403, &rejected);
    json_t *v = fake_call(&w.fake, "POST", "/_control/verify", "{\"verify_token\": \"%s\"}",
                          w.verify_token);
    fprintf(stderr, "the fake's handshake with the right token: ok %d\n",
            v && json_is_true(json_object_get(v, "ok")));
    failures += !v || !json_is_true(json_object_get(v, "ok"));
    json_decref(v);
    v = fake_call(&w.fake, "POST", "/_control/verify", "{\"verify_token\": \"nope\"}");
    failures +=
        refused("the fake's handshake with a wrong token",
                v ? (long)json_integer_value(json_object_get(v, "status")) : -1, 403, &rejected);
    json_decref(v);

    /* A replayed status, identical and validly signed, twice: 200, idempotent. */
    PGresult *m =
        wt_sql(w.db,
               "SELECT m.id, m.provider_message_id, substr(m.recipient_phone, 2),"
               " m.status, m.delivered_at::text, m.read_at::text, c.sent_count,"
               " c.delivered_count, c.read_count FROM broadcast_messages m JOIN campaigns c"
               " ON c.id = m.campaign_id WHERE m.campaign_id = '%s' ORDER BY m.id LIMIT 1",
               campaign1);
    assert_int_equal(PQntuples(m), 1);
    const char *pnid = devices[0].pnid;
    long long ts = (long long)time(NULL) - 5;
    for (int k = 0; k < 2; k++) {
        const char *status = k == 0 ? "delivered" : "read";
        char *body = status_body(PQgetvalue(m, 0, 1), status, PQgetvalue(m, 0, 2),
                                 PQgetvalue(m, 0, 0), pnid, ts);
        for (int rep = 0; rep < 2; rep++) {
            code = post_webhook(body, strlen(body), "");
            if (code != 200) {
                fprintf(stderr, "replayed %s -> %ld, want 200\n", status, code);
                failures++;
            }
        }
        free(body);
    }
    /* Let the forged STOP and the replays reach Postgres if they were (wrongly) taken. */
    usleep(500000);
    if (!wt_wait_for(e2e_results_empty, &w.env, 10000))
        failures++;
    usleep(500000);
    PGresult *m2 =
        wt_sql(w.db,
               "SELECT m.id, m.provider_message_id, substr(m.recipient_phone, 2),"
               " m.status, m.delivered_at::text, m.read_at::text, c.sent_count,"
               " c.delivered_count, c.read_count FROM broadcast_messages m JOIN campaigns"
               " c ON c.id = m.campaign_id WHERE m.id = %s",
               PQgetvalue(m, 0, 0));
    for (int c = 0; c < 9; c++) {
        if (strcmp(PQgetvalue(m, 0, c), PQgetvalue(m2, 0, c))) {
            fprintf(stderr, "replay changed column %d: %s -> %s\n", c, PQgetvalue(m, 0, c),
                    PQgetvalue(m2, 0, c));
            failures++;
        }
    }
    PQclear(m);
    PQclear(m2);
    long opted =
        wt_sql_long(w.db, "SELECT count(*) FROM leads WHERE id = '%s' AND opted_out_at IS NOT NULL",
                    victim->id);
    if (opted) {
        fprintf(stderr, "a rejected STOP opted lead %s out\n", victim->digits);
        failures++;
    }
    double accepted1 = metric("wacast_dispatcher_webhooks_accepted_total");
    fprintf(stderr, "webhooks_accepted_total %.0f -> %.0f (4 replays)\n", accepted0, accepted1);
    if (accepted1 - accepted0 != 4)
        failures++;
    if (failures)
        wt_dump_logs(&w.env, 30);
    assert_int_equal(failures, 0);
}

/* ---- 3. error codes
 * ------------------------------------------------------------------------------ */

static char campaign2[40];

typedef struct t1_arg {
    const char *campaign;
} t1_arg;

static bool token_message_failed(void *arg)
{
    t1_arg *a = arg;
    return wt_sql_long(w.db,
                       "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s' AND"
                       " lead_id IN (SELECT id FROM leads WHERE device_id = '%s') AND status ="
                       " 'failed'",
                       a->campaign, devices[dev_t1].id) != 0;
}

static int rule_hits(json_t *rules, const char *digits)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(rules, "rules"), i, r)
    {
        if (!strcmp(jstr(r, "to"), digits))
            return (int)json_integer_value(json_object_get(r, "hits"));
    }
    return -1;
}

static void test_error_codes(void **state)
{
    (void)state;
    int failures = 0;
    assert_true(fake_ok(&w.fake, "DELETE", "/_control/rules", NULL));
    for (int i = 0; i < nleads; i++) {
        if (leads[i].rule)
            assert_true(fake_ok(&w.fake, "POST", "/_control/rules", "{\"to\": \"%s\", %s}",
                                leads[i].digits, leads[i].rule));
    }
    long rejected0 = e2e_fake_stat(&w.fake, "rejected");
    /* The token of t1 expires: every send from it gets 190. */
    assert_true(fake_ok(&w.fake, "POST", "/_control/tokens", "{\"expired\": [\"%s\"]}",
                        devices[dev_t1].token));
    insert_campaign(1, "cloudapi errors", campaign2);

    /* 190: offline with a reason. */
    if (!e2e_wait_sql(w.db, 20000,
                      "SELECT count(*) FROM user_devices WHERE id = '%s' AND status = 'offline' AND"
                      " status_reason IS NOT NULL AND status_reason <> ''",
                      devices[dev_t1].id))
        failures++;
    long long offline_at = wt_now_ms();
    PGresult *r = wt_sql(w.db, "SELECT status, status_reason FROM user_devices WHERE id = '%s'",
                         devices[dev_t1].id);
    fprintf(stderr, "t1 (expired token): %s (%s)\n", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    PQclear(r);
    /* 131048 / 368: blocked with a reason naming the code. */
    for (int k = 0; k < 2; k++) {
        int d = k == 0 ? dev_s1 : dev_s2;
        const char *code = k == 0 ? "131048" : "368";
        if (!e2e_wait_sql(
                w.db, 20000,
                "SELECT count(*) FROM user_devices WHERE id = '%s' AND status = 'blocked' AND"
                " status_reason LIKE '%%%s%%'",
                devices[d].id, code))
            failures++;
        r = wt_sql(w.db, "SELECT status, status_reason FROM user_devices WHERE id = '%s'",
                   devices[d].id);
        fprintf(stderr, "%s (%s): %s (%s)\n", devices[d].pnid, code, PQgetvalue(r, 0, 0),
                PQgetvalue(r, 0, 1));
        PQclear(r);
    }
    /* The rest of the campaign settles while t1 stays broken. */
    if (!e2e_wait_sql(w.db, 40000,
                      "SELECT count(*) = 0 FROM broadcast_messages WHERE campaign_id = '%s' AND"
                      " status IN ('pending', 'queued') AND device_id <> '%s'",
                      campaign2, devices[dev_t1].id))
        failures++;
    /* The outage goes on for OUTAGE_MS: t1's messages must wait, not fail. */
    t1_arg ta = {campaign2};
    long long left = offline_at + OUTAGE_MS - wt_now_ms();
    if (left > 0 && wt_wait_for(token_message_failed, &ta, (int)left)) {
        fprintf(stderr,
                "a message of the device with the expired token failed during the outage\n");
        failures++;
    }
    r = wt_sql(w.db,
               "SELECT id, recipient_phone, status, attempts, coalesce(error_code, ''),"
               " coalesce(error_message, '') FROM broadcast_messages WHERE campaign_id = '%s' AND"
               " lead_id IN (SELECT id FROM leads WHERE device_id = '%s') ORDER BY id",
               campaign2, devices[dev_t1].id);
    for (int i = 0; i < PQntuples(r); i++)
        fprintf(stderr, "t1 message %s to %s after the outage: %s, %s attempts, %s %s\n",
                PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                PQgetvalue(r, i, 4), PQgetvalue(r, i, 5));
    PQclear(r);

    /* A new token, sealed again: the waiting messages go out, once. */
    random_hex(devices[dev_t1].token, 16);
    assert_true(fake_ok(&w.fake, "POST", "/_control/tokens", "{\"%s\": \"%s\"}",
                        devices[dev_t1].pnid, devices[dev_t1].token));
    char creds[128];
    snprintf(creds, sizeof creds, "{\"access_token\": \"%s\"}", devices[dev_t1].token);
    assert_int_equal(e2e_ctl_set_credentials(&w.env, w.secret_key, devices[dev_t1].id, creds), 0);
    const char *ids[] = {campaign2};
    if (!sc_wait_campaigns_final(w.db, ids, 1, 60000)) {
        fprintf(stderr, "the error campaign did not finish\n");
        failures++;
    }
    if (!e2e_wait_sql(w.db, 20000,
                      "SELECT count(*) FROM user_devices WHERE id = '%s' AND status = 'online'",
                      devices[dev_t1].id))
        failures++;
    if (!e2e_settle(&w.env, &w.fake))
        failures++;

    json_t *sent = e2e_fake_sent(&w.fake);
    json_t *rules = fake_call(&w.fake, "GET", "/_control/rules", NULL);
    assert_non_null(sent);
    assert_non_null(rules);
    for (int i = 0; i < nleads; i++) {
        lead *l = &leads[i];
        if (l->user != 1)
            continue;
        int got = accepted_for(sent, l->digits);
        r = wt_sql(
            w.db,
            "SELECT m.status, coalesce(m.error_code, ''), m.attempts, coalesce("
            "m.provider_message_id, ''), (SELECT opted_out_at IS NOT NULL FROM leads WHERE id ="
            " m.lead_id) FROM broadcast_messages m WHERE m.campaign_id = '%s' AND m.lead_id ="
            " '%s'",
            campaign2, l->id);
        if (PQntuples(r) != 1) {
            fprintf(stderr, "%s: %d rows\n", l->digits, PQntuples(r));
            failures++;
            PQclear(r);
            continue;
        }
        const char *status = PQgetvalue(r, 0, 0), *code = PQgetvalue(r, 0, 1);
        int attempts = atoi(PQgetvalue(r, 0, 2));
        bool opted = PQgetvalue(r, 0, 4)[0] == 't';
        bool sent_ok =
            !strcmp(status, "sent") || !strcmp(status, "delivered") || !strcmp(status, "read");
        bool ok = true;
        switch (l->kind) {
        case L_FAIL_131026:
        case L_FAIL_131050: {
            const char *want = l->kind == L_FAIL_131026 ? "131026" : "131050";
            int hits = rule_hits(rules, l->digits);
            ok = !strcmp(status, "failed") && !strcmp(code, want) && got == 0 && hits == 1 &&
                 opted == (l->kind == L_FAIL_131050);
            fprintf(stderr, "%s (%s): %s %s, %d attempts at the fake, opted out %d\n", l->digits,
                    want, status, code, hits, opted);
            break;
        }
        case L_RETRY:
            ok = sent_ok && got == 1 && attempts == l->retries + 1 &&
                 rule_hits(rules, l->digits) < 0;
            fprintf(stderr, "%s (%s): %s after %d attempts, accepted %d\n", l->digits, l->rule,
                    status, attempts, got);
            break;
        case L_RESET:
            /* Taken once, its reply lost: the status webhook settles it. */
            ok = sent_ok && got == 1 && rule_hits(rules, l->digits) < 0;
            fprintf(stderr, "%s (reset after accept): %s, %d attempts, accepted %d\n", l->digits,
                    status, attempts, got);
            break;
        case L_BLOCK:
            ok = got <= 1;
            fprintf(stderr, "%s (%s, device blocked): %s %s, accepted %d\n", l->digits, l->code,
                    status, code, got);
            break;
        case L_NORMAL:
        case L_TOKEN:
            ok = sent_ok && got == 1;
            if (l->kind == L_TOKEN)
                fprintf(stderr, "%s (expired token): %s %s after %d attempts, accepted %d\n",
                        l->digits, status, code, attempts, got);
            break;
        }
        if (!ok) {
            fprintf(stderr, "%s: unexpected outcome: %s %s, %d attempts, accepted %d\n", l->digits,
                    status, code, attempts, got);
            failures++;
        }
        l->accepted = got;
        PQclear(r);
    }
    failures += check_sends_match_rows(sent, campaign2);
    /* Every rejection at the fake was one of ours: bodies were valid. */
    long injected = 0;
    for (int i = 0; i < nleads; i++) {
        if (leads[i].user != 1)
            continue;
        if (leads[i].kind == L_FAIL_131026 || leads[i].kind == L_FAIL_131050)
            injected += rule_hits(rules, leads[i].digits);
        else if (leads[i].kind == L_RETRY)
            injected += leads[i].retries;
        else if (leads[i].kind == L_BLOCK)
            injected += 1;
    }
    json_decref(sent);
    json_decref(rules);
    long token_rejections = e2e_fake_stat(&w.fake, "rejected") - rejected0 - injected;
    fprintf(stderr, "fake rejections: %ld injected, %ld for the expired token\n", injected,
            token_rejections);
    if (token_rejections < 1)
        failures++;
    if (failures)
        wt_dump_logs(&w.env, 60);
    assert_int_equal(failures, 0);
}

/* ---- 4. STOP, and the next campaigns
 * ------------------------------------------------------------- */

static void test_opt_outs_hold(void **state)
{
    (void)state;
    int failures = 0;
    const lead *sl = &leads[stop_lead];
    char stop[160];
    snprintf(stop, sizeof stop,
             "{\"from\": \"%s\", \"text\": \"STOP\", \"phone_number_id\": \"%s\"}", sl->digits,
             devices[sl->dev].pnid);
    failures += e2e_check_stop(&w, stop, sl->id);
    /* Only that lead. */
    long others =
        wt_sql_long(w.db,
                    "SELECT count(*) FROM leads WHERE user_id = '%s' AND opted_out_at IS NOT"
                    " NULL AND id <> '%s'",
                    users[0], sl->id);
    if (others) {
        fprintf(stderr, "%ld other leads of user 1 are opted out\n", others);
        failures++;
    }
    assert_true(fake_ok(&w.fake, "DELETE", "/_control/rules", NULL));
    char c3[40], c4[40];
    insert_campaign(0, "after STOP", c3);
    insert_campaign(1, "after 131050", c4);
    const char *ids[] = {c3, c4};
    if (!sc_wait_campaigns_final(w.db, ids, 2, 60000)) {
        wt_dump_logs(&w.env, 60);
        fail_msg("follow-up campaigns did not finish");
    }
    if (!e2e_settle(&w.env, &w.fake))
        failures++;
    json_t *sent = e2e_fake_sent(&w.fake);
    assert_non_null(sent);
    for (int i = 0; i < nleads; i++) {
        lead *l = &leads[i];
        bool skip = i == stop_lead || l->kind == L_FAIL_131050;
        int want = l->accepted + (skip ? 0 : 1);
        int got = accepted_for(sent, l->digits);
        long rows =
            wt_sql_long(w.db,
                        "SELECT count(*) FROM broadcast_messages WHERE campaign_id IN ('%s',"
                        " '%s') AND lead_id = '%s'",
                        c3, c4, l->id);
        if (got != want || rows != (skip ? 0 : 1)) {
            fprintf(stderr, "%s%s: %d sends in all (want %d), %ld rows in the new campaigns\n",
                    l->digits, skip ? " (opted out)" : "", got, want, rows);
            failures++;
        }
    }
    failures += check_sends_match_rows(sent, c3);
    failures += check_sends_match_rows(sent, c4);
    json_decref(sent);
    for (int k = 0; k < 2; k++) {
        PGresult *r = wt_sql(w.db,
                             "SELECT status, total_count, sent_count, failed_count FROM campaigns"
                             " WHERE id = '%s'",
                             ids[k]);
        fprintf(stderr, "campaign %s: %s total %s sent %s failed %s\n", ids[k], PQgetvalue(r, 0, 0),
                PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3));
        if (strcmp(PQgetvalue(r, 0, 0), "finished") || strcmp(PQgetvalue(r, 0, 3), "0"))
            failures++;
        PQclear(r);
    }
    if (failures)
        wt_dump_logs(&w.env, 40);
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_campaign_end_to_end),
        cmocka_unit_test(test_webhook_security),
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_opt_outs_hold),
    };
    return cmocka_run_group_tests_name("cloudapi-e2e", tests, setup, e2e_world_teardown);
}
