/* The gowa transport (go-whatsapp-web-multidevice) end to end, on real
 * redis-server and PostgreSQL with the real daemons and the Node.js fake of
 * the gateway (tests/fakes/gowa.js, started here with --port 0). Devices are
 * platform 'gowa' rows naming the fake's devices (X-Device-Id), their basic
 * auth sealed with `wacast-ctl set-credentials` under WACAST_SECRET_KEY; the
 * fake posts message.ack receipts and inbound messages, signed with
 * WACAST_GOWA_WEBHOOK_SECRET, to the dispatcher's /webhooks/gowa, late, every
 * one in reverse order and some twice. The daemons run with
 * WACAST_MAX_ATTEMPTS=3.
 *
 * It proves that:
 * 1. a campaign over gowa devices reaches every lead exactly once (the
 *    fake's record), from the lead's own device, with the row's text; each
 *    row holds the gateway's message id as provider_message_id, its device
 *    and one attempt, and reaches 'read' through the receipts (delivered and
 *    read counters to match); a late 'delivered' after 'read' leaves 'read';
 * 2. a STOP message from a lead opts it out (and only it); a STOP with a
 *    forged or missing signature is 401 and opts nobody out;
 * 3. a device logged out at the gateway goes 'offline' (or 'logged_out')
 *    with a reason, and its messages are neither lost (none fails during an
 *    8 s outage, longer than 3 attempts' back-off) nor sent twice: once the
 *    device is paired again they go out, and the second campaign reaches
 *    every lead but the opted-out one exactly once. */
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

#define NDEVICES 3
#define NLEADS 18
#define OUTAGE_MS 8000

static e2e_world w;
static int admin_port; /* the dispatcher's admin listener: /admin/ */
static char password[33];

/* POSTs body to /webhooks/gowa; sig: NULL for none, "" to sign it with the gateway's webhook
 * secret, anything else sent as is. Returns the HTTP status. */
static long post_webhook(const char *body, size_t len, const char *sig)
{
    return e2e_post_webhook(w.dport, "/webhooks/gowa", w.gowa_secret, body, len, sig);
}

/* ---- the world
 * ----------------------------------------------------------------------------------- */

typedef struct device {
    char id[40];
    char gowa_id[16]; /* X-Device-Id at the gateway */
    char jid[40];
} device;

typedef struct lead {
    char id[40];
    char name[32];
    char digits[20];
    int dev;
    int accepted; /* sends the fake accepted so far, as the test expects them */
} lead;

static char user[40];
static device devices[NDEVICES];
static lead leads[NLEADS];
static char campaign1[40];
static const int stop_lead = 0, forged_lead = 1;

static void insert_campaign(const char *title, char *id_out)
{
    PGresult *r =
        wt_sql(w.db,
               "INSERT INTO campaigns (user_id, title, message, scheduled_at,"
               " min_delay_seconds, max_delay_seconds) VALUES ('%s', '%s', 'Hi {{name}}!',"
               " now() - interval '1 second', 0.01, 0.05) RETURNING id",
               user, title);
    snprintf(id_out, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* ---- reading the fake's record
 * ------------------------------------------------------------------- */

/* "60123456789@s.whatsapp.net" is digits' JID. */
static bool is_jid_of(const char *jid, const char *digits)
{
    size_t n = strlen(digits);
    return jid && !strncmp(jid, digits, n) && !strcmp(jid + n, "@s.whatsapp.net");
}

static int accepted_for(json_t *sent, const char *digits)
{
    int n = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(sent, "messages"), i, m)
    {
        n += is_jid_of(json_string_value(json_object_get(m, "phone")), digits);
    }
    return n;
}

/* Checks every sent row of one campaign against the fake's record: exactly one
 * accepted send carries the row's provider_message_id, to the row's phone,
 * with its text, through the gateway device of the row's device. */
static int check_sends_match_rows(json_t *sent, const char *campaign)
{
    int bad = 0;
    PGresult *r =
        wt_sql(w.db,
               "SELECT id, substr(recipient_phone, 2), content, coalesce(provider_message_id,"
               " ''), coalesce(device_id::text, 'NULL') FROM broadcast_messages WHERE"
               " campaign_id = '%s' AND status IN ('sent', 'delivered', 'read')",
               campaign);
    for (int i = 0; i < PQntuples(r); i++) {
        const char *pid = PQgetvalue(r, i, 3);
        const device *d = NULL;
        for (int k = 0; k < NDEVICES; k++)
            if (!strcmp(devices[k].id, PQgetvalue(r, i, 4)))
                d = &devices[k];
        int found = 0;
        size_t k;
        json_t *m;
        json_array_foreach(json_object_get(sent, "messages"), k, m)
        {
            const char *mid = json_string_value(json_object_get(m, "message_id"));
            if (!mid || strcmp(mid, pid) != 0)
                continue;
            found++;
            const char *text = json_string_value(json_object_get(m, "message"));
            const char *phone = json_string_value(json_object_get(m, "phone"));
            const char *gid = json_string_value(json_object_get(m, "device_id"));
            if (!text || strcmp(text, PQgetvalue(r, i, 2)) ||
                !is_jid_of(phone, PQgetvalue(r, i, 1)) || strcmp(jstr(m, "kind"), "text") || !d ||
                !gid || strcmp(gid, d->gowa_id)) {
                if (bad++ < 10)
                    fprintf(stderr,
                            "message %s: the gateway got \"%s\" to %s on device %s; the row has"
                            " \"%s\" to +%s on device %s\n",
                            PQgetvalue(r, i, 0), text ? text : "?", phone ? phone : "?",
                            gid ? gid : "?", PQgetvalue(r, i, 2), PQgetvalue(r, i, 1),
                            PQgetvalue(r, i, 4));
            }
        }
        if (found != 1 && bad++ < 10)
            fprintf(stderr, "message %s to +%s (provider id \"%s\"): %d accepted sends carry it\n",
                    PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), pid, found);
    }
    PQclear(r);
    return bad;
}

/* ---- setup
 * ---------------------------------------------------------------------------------------- */

static int setup_world(void)
{
    if (e2e_world_start(&w, "gowa.js") < 0)
        return -1;
    random_hex(password, 16);
    admin_port = wt_free_port();

    PGresult *r = wt_sql(w.db, "INSERT INTO users (name) VALUES ('gowa') RETURNING id");
    snprintf(user, sizeof user, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    json_t *gw_devices = json_object();
    for (int k = 0; k < NDEVICES; k++) {
        device *d = &devices[k];
        snprintf(d->gowa_id, sizeof d->gowa_id, "g%d", k + 1);
        snprintf(d->jid, sizeof d->jid, "6030000000%d@s.whatsapp.net", k + 1);
        json_object_set_new(
            gw_devices, d->gowa_id,
            json_pack("{s:s, s:s, s:s}", "jid", d->jid, "name", d->gowa_id, "state", "logged_in"));
        r = wt_sql(w.db,
                   "INSERT INTO user_devices (user_id, device_name, phone, platform,"
                   " min_delay_seconds, max_delay_seconds, settings) VALUES ('%s', '%s',"
                   " '+6030000000%d', 'gowa', 0.01, 0.05,"
                   " '{\"base_url\": \"%s\", \"device_id\": \"%s\"}') RETURNING id",
                   user, d->gowa_id, k + 1, w.fake.base, d->gowa_id);
        snprintf(d->id, sizeof d->id, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    for (int i = 0; i < NLEADS; i++) {
        lead *l = &leads[i];
        l->dev = i % NDEVICES;
        snprintf(l->name, sizeof l->name, "Lead %d", i);
        snprintf(l->digits, sizeof l->digits, "6013%07d", 5000000 + i * 11);
        r = wt_sql(w.db,
                   "INSERT INTO leads (user_id, device_id, name, phone) VALUES ('%s', '%s', '%s',"
                   " '+6013%07d') RETURNING id",
                   user, devices[l->dev].id, l->name, 5000000 + i * 11);
        snprintf(l->id, sizeof l->id, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }

    /* The gateway: basic auth, three logged-in devices, signed webhooks to the
     * dispatcher, every receipt pair reversed and some twice. */
    char *devs = json_dumps(gw_devices, JSON_COMPACT);
    json_decref(gw_devices);
    bool ok = fake_ok(&w.fake, "POST", "/_control/config",
                      "{\"basic_auth\": [\"wacast:%s\"], \"devices\": %s, \"webhook_url\":"
                      " \"http://127.0.0.1:%d/webhooks/gowa\", \"webhook_secret\": \"%s\","
                      " \"out_of_order_prob\": 1, \"duplicate_prob\": 0.3,"
                      " \"webhook_retry_base_ms\": 100, \"seed\": 7}",
                      password, devs, w.dport, w.gowa_secret);
    free(devs);
    if (!ok)
        return -1;
    for (int k = 0; k < NDEVICES; k++) {
        char creds[128];
        snprintf(creds, sizeof creds, "{\"username\": \"wacast\", \"password\": \"%s\"}", password);
        if (e2e_ctl_set_credentials(&w.env, w.secret_key, devices[k].id, creds) != 0) {
            fprintf(stderr, "wacast-ctl set-credentials %s failed\n", devices[k].id);
            wt_dump_logs(&w.env, 20);
            return -1;
        }
    }
    char like[80];
    snprintf(like, sizeof like, "%s", password);
    if (wt_sql_long(w.db,
                    "SELECT count(*) FROM user_devices WHERE credentials IS NULL OR"
                    " position(convert_to('%s', 'UTF8') in credentials) > 0",
                    like) != 0) {
        fprintf(stderr, "credentials are not sealed\n");
        return -1;
    }

    /* The admin listener too, for the QR pairing. */
    static char admin_env[40];
    snprintf(admin_env, sizeof admin_env, "WACAST_ADMIN_PORT=%d", admin_port);
    const char *admin[] = {admin_env, "WACAST_ADMIN_TOKEN=gowa-e2e-admin", NULL};
    return e2e_world_daemons(&w, admin, NDEVICES) ? 0 : -1;
}

static int setup(void **state)
{
    return e2e_world_setup(state, &w, setup_world);
}

/* ---- 1. a clean campaign
 * ------------------------------------------------------------------------- */

/* Pairing: the admin API fetches the gateway's login QR for a device, with
 * the device's sealed credentials, and returns it as a base64 PNG. */
static void test_qr_pairing(void **state)
{
    (void)state;
    /* A device whose WhatsApp session is logged out needs a new QR scan. */
    char control[64];
    snprintf(control, sizeof control, "/_control/devices/%s", devices[0].gowa_id);
    assert_true(fake_ok(&w.fake, "POST", control, "{\"state\": \"logged_out\"}"));
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/admin/devices/%s/qr", admin_port, devices[0].id);
    const char *auth[] = {"Authorization: Bearer gowa-e2e-admin", NULL};
    resp r;
    long code = http("GET", url, NULL, 0, auth, &r);
    fprintf(stderr, "QR: %ld %.200s\n", code, r.body ? r.body : "");
    assert_int_equal(code, 200);
    json_t *j = json_loadb(r.body, r.len, 0, NULL);
    assert_non_null(j);
    const char *png = jstr(j, "qr_png_base64");
    /* base64 of the PNG signature \x89PNG\r\n\x1a\n */
    assert_true(strncmp(png, "iVBORw0KGgo", 11) == 0);
    assert_true(json_integer_value(json_object_get(j, "qr_duration")) > 0);
    assert_true(strlen(jstr(j, "qr_link")) > 0);
    json_decref(j);
    resp_free(&r);
    /* Without the token: refused. */
    code = http("GET", url, NULL, 0, NULL, &r);
    assert_int_equal(code, 401);
    resp_free(&r);
}

/* Credentials stay with the operator's gateways: a gateway that hands back
 * a link on another origin gets no fetch (and its body is never reflected),
 * and a device whose base_url is outside WACAST_PROVIDER_HOSTS neither opens
 * in the sender nor pairs through the dispatcher. */
static void test_credentials_stay_home(void **state)
{
    (void)state;
    char control[64];
    snprintf(control, sizeof control, "/_control/devices/%s", devices[0].gowa_id);
    assert_true(fake_ok(&w.fake, "POST", control, "{\"state\": \"logged_out\"}"));
    /* The gateway's QR link points at the dispatcher's own admin API. */
    assert_true(fake_ok(&w.fake, "POST", "/_control/config",
                        "{\"qr_link_base\": \"http://127.0.0.1:%d/admin\"}", admin_port));
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/admin/devices/%s/qr", admin_port, devices[0].id);
    const char *auth[] = {"Authorization: Bearer gowa-e2e-admin", NULL};
    resp r;
    long code = http("GET", url, NULL, 0, auth, &r);
    fprintf(stderr, "QR with a foreign link: %ld %.300s\n", code, r.body ? r.body : "");
    assert_int_equal(code, 502);
    assert_non_null(strstr(r.body, "not on the gateway's origin"));
    assert_null(strstr(r.body, "qr_png_base64"));
    resp_free(&r);
    assert_true(fake_ok(&w.fake, "POST", "/_control/config", "{\"qr_link_base\": null}"));

    /* A device of another user whose base_url the dashboard pointed elsewhere. */
    PGresult *res = wt_sql(w.db, "INSERT INTO users (name) VALUES ('elsewhere') RETURNING id");
    char other_user[40];
    snprintf(other_user, sizeof other_user, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    res = wt_sql(w.db,
                 "INSERT INTO user_devices (user_id, device_name, platform, settings) VALUES"
                 " ('%s', 'elsewhere', 'gowa', '{\"base_url\": \"http://127.0.0.1:1\"}')"
                 " RETURNING id",
                 other_user);
    char other_device[40];
    snprintf(other_device, sizeof other_device, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!e2e_wait_sql(w.db, 20000,
                      "SELECT count(*) = 1 FROM user_devices WHERE id = '%s' AND status = 'offline'"
                      " AND status_reason = 'gowa: base_url not allowed: http://127.0.0.1:1"
                      " (not in WACAST_PROVIDER_HOSTS)'",
                      other_device)) {
        wt_dump_logs(&w.env, 40);
        fail_msg("the sender did not refuse the device's base_url");
    }
    snprintf(url, sizeof url, "http://127.0.0.1:%d/admin/devices/%s/qr", admin_port, other_device);
    code = http("GET", url, NULL, 0, auth, &r);
    fprintf(stderr, "QR for a base_url not allowed: %ld %.300s\n", code, r.body ? r.body : "");
    assert_int_equal(code, 409);
    assert_non_null(strstr(r.body, "base_url not allowed"));
    resp_free(&r);

    /* Device 0's sealed credentials copied into a device with an allowed
     * base_url: they are bound to device 0 and do not open there. */
    res = wt_sql(w.db,
                 "INSERT INTO user_devices (user_id, device_name, platform, settings, credentials)"
                 " SELECT '%s', 'copied', 'gowa', settings, credentials FROM user_devices"
                 " WHERE id = '%s' RETURNING id",
                 other_user, devices[0].id);
    char copied[40];
    snprintf(copied, sizeof copied, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!e2e_wait_sql(
            w.db, 20000,
            "SELECT count(*) = 1 FROM user_devices WHERE id = '%s' AND status = 'offline'"
            " AND status_reason LIKE 'cannot open device credentials: wrong key or corrupt:%%'",
            copied)) {
        wt_dump_logs(&w.env, 40);
        fail_msg("credentials sealed for another device opened");
    }
    snprintf(url, sizeof url, "http://127.0.0.1:%d/admin/devices/%s/qr", admin_port, copied);
    code = http("GET", url, NULL, 0, auth, &r);
    fprintf(stderr, "QR with copied credentials: %ld %.300s\n", code, r.body ? r.body : "");
    assert_int_equal(code, 500);
    assert_non_null(strstr(r.body, "does not open for this device"));
    assert_null(strstr(r.body, password));
    resp_free(&r);
}

static void test_campaign_end_to_end(void **state)
{
    (void)state;
    int failures = 0;
    insert_campaign("gowa e2e", campaign1);
    const char *ids[] = {campaign1};
    if (!sc_wait_campaigns_final(w.db, ids, 1, 60000)) {
        wt_dump_logs(&w.env, 60);
        fail_msg("campaign did not finish");
    }
    if (!e2e_wait_sql(w.db, 30000,
                      "SELECT count(*) = %d FROM broadcast_messages WHERE campaign_id = '%s' AND"
                      " status = 'read' AND delivered_at IS NOT NULL AND read_at IS NOT NULL",
                      NLEADS, campaign1))
        failures++;
    if (!e2e_settle(&w.env, &w.fake))
        failures++;
    PGresult *r =
        wt_sql(w.db,
               "SELECT id, status, coalesce(provider_message_id, '') FROM broadcast_messages"
               " WHERE campaign_id = '%s' AND status <> 'read' ORDER BY id",
               campaign1);
    for (int i = 0; i < PQntuples(r); i++)
        fprintf(stderr, "message %s stayed '%s' (provider id %s)\n", PQgetvalue(r, i, 0),
                PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
    PQclear(r);

    json_t *sent = e2e_fake_sent(&w.fake);
    assert_non_null(sent);
    for (int i = 0; i < NLEADS; i++) {
        int got = accepted_for(sent, leads[i].digits);
        if (got != 1 && failures++ < 10)
            fprintf(stderr, "%s received %d messages, want 1\n", leads[i].digits, got);
        leads[i].accepted = got;
    }
    size_t total = json_array_size(json_object_get(sent, "messages"));
    if (total != NLEADS) {
        fprintf(stderr, "the gateway accepted %zu messages, want %d\n", total, NLEADS);
        failures++;
    }
    failures += check_sends_match_rows(sent, campaign1);
    /* From the lead's own device, in one attempt. */
    r = wt_sql(
        w.db,
        "SELECT m.id, m.status, coalesce(m.device_id::text, 'NULL'), l.device_id, m.attempts"
        " FROM broadcast_messages m JOIN leads l ON l.id = m.lead_id WHERE m.campaign_id ="
        " '%s' AND (m.device_id IS DISTINCT FROM l.device_id OR m.attempts <> 1) ORDER BY m.id",
        campaign1);
    for (int k = 0; k < PQntuples(r); k++) {
        fprintf(stderr, "message %s (%s): device_id %s (the lead's is %s), attempts %s\n",
                PQgetvalue(r, k, 0), PQgetvalue(r, k, 1), PQgetvalue(r, k, 2), PQgetvalue(r, k, 3),
                PQgetvalue(r, k, 4));
        failures++;
    }
    PQclear(r);
    failures += e2e_check_none_rejected(&w.fake, "the gateway");
    failures += e2e_check_campaign(w.db, campaign1, NLEADS, NLEADS, NLEADS, NLEADS);

    /* The receipts came reversed (out_of_order_prob 1), some twice, and the
     * dispatcher answered every delivery 200 at the first attempt. */
    failures += e2e_check_webhooks(&w.fake, sent, "receipts", 2);

    /* A late 'delivered' after 'read' leaves 'read' and the counters alone. */
    r = wt_sql(w.db,
               "SELECT m.provider_message_id FROM broadcast_messages m WHERE m.campaign_id = '%s'"
               " AND m.status = 'read' AND m.provider_message_id IS NOT NULL ORDER BY m.id LIMIT 1",
               campaign1);
    assert_int_equal(PQntuples(r), 1);
    char mid[64], late[128];
    snprintf(mid, sizeof mid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    snprintf(late, sizeof late, "{\"id\": \"%s\", \"receipt_type\": \"delivered\"}", mid);
    failures += e2e_check_late_delivered(&w.env, w.db, &w.fake, mid, "/_control/receipt", late);
    json_decref(sent);
    if (failures)
        wt_dump_logs(&w.env, 40);
    assert_int_equal(failures, 0);
}

/* ---- 2. STOP
 * ------------------------------------------------------------------------------------- */

static char *message_body(const char *device_jid, const char *from, const char *text)
{
    char *s = NULL;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (asprintf(
            &s,
            "{\"event\":\"message\",\"device_id\":\"%s\",\"payload\":{\"id\":\"3EB0FORGED%lld\","
            "\"chat_id\":\"%s@s.whatsapp.net\",\"from\":\"%s@s.whatsapp.net\",\"from_name\":"
            "\"Forger\",\"timestamp\":\"%s\",\"is_from_me\":false,\"body\":\"%s\"}}",
            device_jid, wt_now_ms(), from, from, ts, text) < 0)
        abort();
    return s;
}

static void test_stop_opts_out(void **state)
{
    (void)state;
    int failures = 0;
    /* Forged and unsigned STOPs are refused and change nothing. */
    const lead *fl = &leads[forged_lead];
    char *forged = message_body(devices[fl->dev].jid, fl->digits, "STOP");
    char sig[100];
    e2e_sign("not-the-secret", forged, strlen(forged), sig, sizeof sig);
    long code = post_webhook(forged, strlen(forged), sig);
    fprintf(stderr, "forged STOP -> %ld\n", code);
    failures += code != 401;
    code = post_webhook(forged, strlen(forged), NULL);
    fprintf(stderr, "unsigned STOP -> %ld\n", code);
    failures += code != 401;
    free(forged);

    const lead *sl = &leads[stop_lead];
    char stop[160];
    snprintf(stop, sizeof stop, "{\"device_id\": \"%s\", \"from\": \"%s\", \"text\": \"STOP\"}",
             devices[sl->dev].gowa_id, sl->digits);
    failures += e2e_check_stop(&w, stop, sl->id);
    if (!e2e_settle(&w.env, &w.fake))
        failures++;
    long others = wt_sql_long(
        w.db, "SELECT count(*) FROM leads WHERE opted_out_at IS NOT NULL AND id <> '%s'", sl->id);
    if (others) {
        fprintf(stderr, "%ld other leads are opted out\n", others);
        failures++;
    }
    if (failures)
        wt_dump_logs(&w.env, 30);
    assert_int_equal(failures, 0);
}

/* ---- 3. a logged-out device
 * ---------------------------------------------------------------------- */

typedef struct failed_arg {
    const char *campaign;
    const char *device;
} failed_arg;

static bool device_message_failed(void *arg)
{
    failed_arg *a = arg;
    return wt_sql_long(w.db,
                       "SELECT count(*) FROM broadcast_messages m JOIN leads l ON l.id = m.lead_id"
                       " WHERE m.campaign_id = '%s' AND l.device_id = '%s' AND m.status = 'failed'",
                       a->campaign, a->device) != 0;
}

static void test_logged_out_device(void **state)
{
    (void)state;
    int failures = 0;
    const device *g3 = &devices[2];
    assert_true(fake_ok(&w.fake, "POST", "/_control/devices/g3", "{\"state\": \"logged_out\"}"));
    char c2[40];
    insert_campaign("gowa after logout", c2);
    if (!e2e_wait_sql(w.db, 20000,
                      "SELECT count(*) FROM user_devices WHERE id = '%s' AND status IN ('offline',"
                      " 'logged_out') AND coalesce(status_reason, '') <> ''",
                      g3->id))
        failures++;
    long long offline_at = wt_now_ms();
    PGresult *r =
        wt_sql(w.db, "SELECT status, status_reason FROM user_devices WHERE id = '%s'", g3->id);
    fprintf(stderr, "g3 (logged out): %s (%s)\n", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    PQclear(r);
    /* The others' messages settle while g3 stays logged out. */
    if (!e2e_wait_sql(
            w.db, 30000,
            "SELECT count(*) = 0 FROM broadcast_messages m JOIN leads l ON l.id = m.lead_id"
            " WHERE m.campaign_id = '%s' AND m.status IN ('pending', 'queued') AND l.device_id"
            " <> '%s'",
            c2, g3->id))
        failures++;
    failed_arg fa = {c2, g3->id};
    long long left = offline_at + OUTAGE_MS - wt_now_ms();
    if (left > 0 && wt_wait_for(device_message_failed, &fa, (int)left)) {
        fprintf(stderr, "a message of the logged-out device failed during the outage\n");
        failures++;
    }
    r = wt_sql(w.db,
               "SELECT m.id, m.recipient_phone, m.status, m.attempts, coalesce(m.error_code, ''),"
               " coalesce(m.error_message, '') FROM broadcast_messages m JOIN leads l ON l.id ="
               " m.lead_id WHERE m.campaign_id = '%s' AND l.device_id = '%s' ORDER BY m.id",
               c2, g3->id);
    for (int i = 0; i < PQntuples(r); i++)
        fprintf(stderr, "g3's message %s to %s after the outage: %s, %s attempts, %s %s\n",
                PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                PQgetvalue(r, i, 4), PQgetvalue(r, i, 5));
    PQclear(r);

    /* Paired again: the waiting messages go out, once. */
    assert_true(fake_ok(&w.fake, "POST", "/_control/devices/g3/scan", NULL));
    const char *ids[] = {c2};
    if (!sc_wait_campaigns_final(w.db, ids, 1, 60000)) {
        fprintf(stderr, "the campaign did not finish\n");
        failures++;
    }
    if (!e2e_wait_sql(w.db, 20000,
                      "SELECT count(*) FROM user_devices WHERE id = '%s' AND status = 'online'",
                      g3->id))
        failures++;
    if (!e2e_settle(&w.env, &w.fake))
        failures++;
    json_t *sent = e2e_fake_sent(&w.fake);
    assert_non_null(sent);
    for (int i = 0; i < NLEADS; i++) {
        lead *l = &leads[i];
        bool skip = i == stop_lead;
        int want = l->accepted + (skip ? 0 : 1);
        int got = accepted_for(sent, l->digits);
        r = wt_sql(w.db,
                   "SELECT status, coalesce(error_code, ''), attempts FROM broadcast_messages WHERE"
                   " campaign_id = '%s' AND lead_id = '%s'",
                   c2, l->id);
        bool row_ok = skip ? PQntuples(r) == 0
                           : PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "failed") != 0 &&
                                 strcmp(PQgetvalue(r, 0, 0), "queued") != 0 &&
                                 strcmp(PQgetvalue(r, 0, 0), "pending") != 0;
        if (got != want || !row_ok) {
            fprintf(
                stderr, "%s%s: %d sends in all (want %d); row: %s %s %s\n", l->digits,
                skip ? " (opted out)" : "", got, want, PQntuples(r) ? PQgetvalue(r, 0, 0) : "none",
                PQntuples(r) ? PQgetvalue(r, 0, 1) : "", PQntuples(r) ? PQgetvalue(r, 0, 2) : "");
            failures++;
        }
        PQclear(r);
    }
    failures += check_sends_match_rows(sent, c2);
    json_decref(sent);
    r = wt_sql(
        w.db, "SELECT status, total_count, sent_count, failed_count FROM campaigns WHERE id = '%s'",
        c2);
    fprintf(stderr, "campaign: %s total %s sent %s failed %s\n", PQgetvalue(r, 0, 0),
            PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3));
    if (strcmp(PQgetvalue(r, 0, 0), "finished") || atoi(PQgetvalue(r, 0, 1)) != NLEADS - 1 ||
        strcmp(PQgetvalue(r, 0, 3), "0"))
        failures++;
    PQclear(r);
    if (failures)
        wt_dump_logs(&w.env, 60);
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_campaign_end_to_end),   cmocka_unit_test(test_stop_opts_out),
        cmocka_unit_test(test_logged_out_device),     cmocka_unit_test(test_qr_pairing),
        cmocka_unit_test(test_credentials_stay_home),
    };
    return cmocka_run_group_tests_name("gowa-e2e", tests, setup, e2e_world_teardown);
}
