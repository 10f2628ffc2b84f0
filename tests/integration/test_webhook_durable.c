/* A provider's webhook is acknowledged only once what it carries is durable,
 * and a STOP reply opts out only the lead of the user whose number received
 * it. On real redis-server and PostgreSQL with one dispatcher:
 *   1. users U and V each messaged the same phone number from their own
 *      Cloud API number; a STOP to U's number opts out U's lead, not V's;
 *      a STOP to a number that is none of ours opts out nobody (counted);
 *   2. with Redis stopped, a status webhook is answered 503 (not 200), so
 *      Meta sends it again; once Redis is back, the same body gets 200 and
 *      the status reaches PostgreSQL;
 *   3. while PostgreSQL refuses the opt-out write, a STOP is answered 503;
 *      sent again once it can be written, it gets 200 and the lead is out;
 *   4. Meta's verification echoes a numeric hub.challenge and refuses one
 *      that is markup, and a verify token that differs in its last byte;
 *   5. a gowa device's own webhook (/webhooks/gowa/<device>, signed with the
 *      webhook_secret sealed in its credentials) speaks for that device
 *      only: another tenant's secret is refused, a receipt naming another
 *      tenant's message changes nothing, a STOP opts out its user's lead
 *      only; a status timestamp too
 * large for microseconds is stored as the time it arrived. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include <sodium.h>

#include "e2e_common.h"
#include "scenario.h"
#include "wc_seal.h"
#include "wc_webhook.h"

#define APP_SECRET "durable-app-secret"
#define VERIFY_TOKEN "verify-me"
#define PHONE "60111222333"
#define GOWA_PHONE "60144555666"

static wt_env env;
static PGconn *db;
static int dport;
static pid_t dispatcher_pid;
static char user_u[40], user_v[40], lead_u[40], lead_v[40];
static long long msg_u, msg_v;
static char secret_key[65];
static struct {
    char user[40], dev[40], lead[40], secret[33];
    long long msg;
} gw[2];

/* A user with a Cloud API number, a lead with PHONE and a message to it. */
static long long messaged_user(char *user, char *lead, const char *name, const char *pnid)
{
    wt_sql_text(db, user, 40, "INSERT INTO users (name) VALUES ('%s') RETURNING id", name);
    char dev[40], camp[40];
    wt_sql_text(db, dev, sizeof dev,
                "INSERT INTO user_devices (user_id, platform, settings) VALUES"
                " ('%s', 'cloudapi', '{\"phone_number_id\": \"%s\"}') RETURNING id",
                user, pnid);
    wt_sql_text(db, lead, 40,
                "INSERT INTO leads (user_id, device_id, name, phone) VALUES"
                " ('%s', '%s', 'Lead %s', '+%s') RETURNING id",
                user, dev, name, PHONE);
    wt_sql_text(db, camp, sizeof camp,
                "INSERT INTO campaigns (user_id, title, message, status, total_count)"
                " VALUES ('%s', '%s', 'Hi', 'processing', 1) RETURNING id",
                user, name);
    PGresult *r = wt_sql(db,
                         "INSERT INTO broadcast_messages (campaign_id, user_id, lead_id, device_id,"
                         " recipient_phone, content, status, sent_at) VALUES ('%s', '%s', '%s',"
                         " '%s', '+%s', 'Hi', 'sent', now()) RETURNING id",
                         camp, user, lead, dev, PHONE);
    long long id = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return id;
}

static bool ready(void *arg)
{
    (void)arg;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", dport);
    resp r;
    long code = http("GET", url, NULL, 0, NULL, &r);
    resp_free(&r);
    return code == 200;
}

/* A user with a gowa device whose credentials hold its webhook secret
 * (sealed for that device), and a sent message from it to GOWA_PHONE. */
static void gowa_user(int k, wc_seal_keys *keys)
{
    wt_sql_text(db, gw[k].user, sizeof gw[k].user,
                "INSERT INTO users (name) VALUES ('g%d') RETURNING id", k);
    wt_sql_text(db, gw[k].dev, sizeof gw[k].dev,
                "INSERT INTO user_devices (user_id, platform, settings) VALUES"
                " ('%s', 'gowa', '{\"base_url\": \"http://127.0.0.1:9\"}')"
                " RETURNING id",
                gw[k].user);
    random_hex(gw[k].secret, 16);
    char creds[128], hex[512];
    snprintf(creds, sizeof creds, "{\"webhook_secret\": \"%s\"}", gw[k].secret);
    uint8_t *sealed = NULL;
    size_t len = 0;
    assert_int_equal(wc_seal(keys, gw[k].dev, creds, strlen(creds), &sealed, &len), 0);
    sodium_bin2hex(hex, sizeof hex, sealed, len);
    free(sealed);
    PQclear(wt_sql(db, "UPDATE user_devices SET credentials = decode('%s', 'hex') WHERE id = '%s'",
                   hex, gw[k].dev));
    wt_sql_text(db, gw[k].lead, sizeof gw[k].lead,
                "INSERT INTO leads (user_id, device_id, name, phone) VALUES"
                " ('%s', '%s', 'G', '+%s') RETURNING id",
                gw[k].user, gw[k].dev, GOWA_PHONE);
    char camp[40];
    wt_sql_text(db, camp, sizeof camp,
                "INSERT INTO campaigns (user_id, title, message, status, total_count)"
                " VALUES ('%s', 'g', 'Hi', 'processing', 1) RETURNING id",
                gw[k].user);
    PGresult *r = wt_sql(db,
                         "INSERT INTO broadcast_messages (campaign_id, user_id, lead_id, device_id,"
                         " recipient_phone, content, status, sent_at, provider_message_id) VALUES"
                         " ('%s', '%s', '%s', '%s', '+%s', 'Hi', 'sent', now(), '3EB0GW%d')"
                         " RETURNING id",
                         camp, gw[k].user, gw[k].lead, gw[k].dev, GOWA_PHONE, k);
    gw[k].msg = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
}

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, NULL) < 0)
        return -1;
    msg_u = messaged_user(user_u, lead_u, "u", "1001");
    msg_v = messaged_user(user_v, lead_v, "v", "2002");
    wc_seal_keygen(secret_key);
    wc_seal_keys *keys = NULL;
    char err[128];
    if (wc_seal_init(&keys, secret_key, NULL, err, sizeof err) < 0)
        return -1;
    for (int k = 0; k < 2; k++)
        gowa_user(k, keys);
    wc_seal_keys_free(keys);
    char key_env[96];
    snprintf(key_env, sizeof key_env, "WACAST_SECRET_KEY=%s", secret_key);
    dport = wt_free_port();
    char port[32];
    snprintf(port, sizeof port, "PORT=%d", dport);
    const char *extra[] = {"WACAST_LOG_LEVEL=info",
                           port,
                           "WACAST_META_APP_SECRET=" APP_SECRET,
                           "WACAST_META_VERIFY_TOKEN=" VERIFY_TOKEN,
                           key_env,
                           NULL};
    dispatcher_pid = wt_spawn(&env, "wacast-dispatcher", "dispatcher", extra);
    return dispatcher_pid > 0 && wt_wait_for(ready, NULL, 30000) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, NULL);
}

static long request(const char *method, const char *path, const char *body, char *out,
                    size_t outlen)
{
    char url[512], sig[WC_WEBHOOK_SIGNATURE_LEN + 32], header[WC_WEBHOOK_SIGNATURE_LEN + 64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", dport, path);
    const char *headers[3] = {"Content-Type: application/json", NULL, NULL};
    if (body) {
        assert_int_equal(
            wc_webhook_sign(APP_SECRET, (const unsigned char *)body, strlen(body), sig, sizeof sig),
            0);
        snprintf(header, sizeof header, "X-Hub-Signature-256: %s", sig);
        headers[1] = header;
    }
    resp r;
    long code = http(method, url, body, body ? strlen(body) : 0, headers, &r);
    if (out)
        snprintf(out, outlen, "%.*s", (int)r.len, r.body ? r.body : "");
    resp_free(&r);
    return code;
}

static long post(const char *body)
{
    return request("POST", "/webhooks/cloudapi", body, NULL, 0);
}

static char *inbound(const char *text, const char *pnid)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"1\",\"changes\":"
                 "[{\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{"
                 "\"display_phone_number\":\"%s\",\"phone_number_id\":\"%s\"},\"contacts\":[{"
                 "\"profile\":{\"name\":\"L\"},\"wa_id\":\"%s\"}],\"messages\":[{\"from\":\"%s\","
                 "\"id\":\"wamid.in%lld\",\"timestamp\":\"%lld\",\"type\":\"text\",\"text\":{"
                 "\"body\":\"%s\"}}]},\"field\":\"messages\"}]}]}",
                 pnid, pnid, PHONE, PHONE, wt_now_ms(), (long long)time(NULL), text) < 0)
        abort();
    return s;
}

static char *status(long long msg, const char *st, const char *ts, const char *pnid)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"1\",\"changes\":"
                 "[{\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{"
                 "\"display_phone_number\":\"%s\",\"phone_number_id\":\"%s\"},\"statuses\":[{"
                 "\"id\":\"wamid.s%lld\",\"status\":\"%s\",\"timestamp\":\"%s\","
                 "\"recipient_id\":\"%s\",\"biz_opaque_callback_data\":\"%lld\"}]},"
                 "\"field\":\"messages\"}]}]}",
                 pnid, pnid, msg, st, ts, PHONE, msg) < 0)
        abort();
    return s;
}

static bool opted_out(const char *lead)
{
    return wt_sql_long(db,
                       "SELECT count(*) FROM leads WHERE id = '%s' AND opted_out_at IS NOT NULL",
                       lead) == 1;
}

static bool message_in(long long msg, const char *st)
{
    return wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages WHERE id = %lld AND status = '%s'",
                       msg, st) == 1;
}

typedef struct msg_status {
    long long msg;
    const char *st;
} msg_status;

static bool message_reached(void *arg)
{
    msg_status *m = arg;
    return message_in(m->msg, m->st);
}

static void test_stop_opts_out_only_the_receiving_user(void **state)
{
    (void)state;
    char *stop = inbound("STOP", "1001");
    assert_int_equal(post(stop), 200);
    free(stop);
    /* The 200 came after the write: no waiting needed. */
    assert_true(opted_out(lead_u));
    assert_false(opted_out(lead_v));
    char *stray = inbound("STOP", "9999");
    assert_int_equal(post(stray), 200);
    free(stray);
    assert_false(opted_out(lead_v));
}

static bool accepted(void *body)
{
    return post(body) == 200;
}

static void test_status_waits_for_redis(void **state)
{
    (void)state;
    assert_int_equal(wt_redis_stop(&env, false), 0);
    char *delivered = status(msg_v, "delivered", "1700000000", "2002");
    long code = post(delivered);
    fprintf(stderr, "status webhook with Redis down -> %ld\n", code);
    assert_int_equal(code, 503);
    assert_int_equal(wt_redis_start(&env), 0);
    /* Meta sends it again until it gets a 2xx. */
    assert_true(wt_wait_for(accepted, delivered, 30000));
    free(delivered);
    msg_status want = {msg_v, "delivered"};
    if (!wt_wait_for(message_reached, &want, 30000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the status acknowledged with 200 never reached PostgreSQL");
    }
}

static void test_stop_waits_for_postgres(void **state)
{
    (void)state;
    /* PostgreSQL refuses the opt-out write (the table is away for now). */
    PQclear(wt_sql(db, "ALTER TABLE leads RENAME TO leads_away"));
    char *stop = inbound("STOP", "2002");
    long code = post(stop);
    fprintf(stderr, "STOP with the write refused -> %ld\n", code);
    PQclear(wt_sql(db, "ALTER TABLE leads_away RENAME TO leads"));
    assert_int_equal(code, 503);
    assert_false(opted_out(lead_v));
    assert_int_equal(post(stop), 200);
    free(stop);
    assert_true(opted_out(lead_v));
}

static void test_verification_and_time(void **state)
{
    (void)state;
    char body[256];
    long code = request("GET",
                        "/webhooks/cloudapi?hub.mode=subscribe&hub.verify_token=" VERIFY_TOKEN
                        "&hub.challenge=1158201444",
                        NULL, body, sizeof body);
    assert_int_equal(code, 200);
    assert_string_equal(body, "1158201444");
    code = request("GET",
                   "/webhooks/cloudapi?hub.mode=subscribe&hub.verify_token=" VERIFY_TOKEN
                   "&hub.challenge=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
                   NULL, body, sizeof body);
    assert_int_equal(code, 400);
    code = request("GET",
                   "/webhooks/cloudapi?hub.mode=subscribe&hub.verify_token=verify-mf"
                   "&hub.challenge=1",
                   NULL, NULL, 0);
    assert_int_equal(code, 403);

    /* seconds * 10^6 would overflow: stored as the time it came. */
    char *read = status(msg_u, "read", "99999999999999999", "1001");
    assert_int_equal(post(read), 200);
    free(read);
    msg_status want = {msg_u, "read"};
    assert_true(wt_wait_for(message_reached, &want, 30000));
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE id = %lld"
                                 " AND read_at > now() - interval '1 hour'"
                                 " AND read_at < now() + interval '1 hour'",
                                 msg_u),
                     1);
    assert_true(wt_alive(&env, dispatcher_pid));
}

static long post_gowa(const char *device, const char *secret, const char *body)
{
    char url[160], sig[WC_WEBHOOK_SIGNATURE_LEN + 8], header[WC_WEBHOOK_SIGNATURE_LEN + 40];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/webhooks/gowa/%s", dport, device);
    assert_int_equal(
        wc_webhook_sign(secret, (const unsigned char *)body, strlen(body), sig, sizeof sig), 0);
    snprintf(header, sizeof header, "X-Hub-Signature-256: %s", sig);
    const char *headers[] = {"Content-Type: application/json", header, NULL};
    resp r;
    long code = http("POST", url, body, strlen(body), headers, &r);
    resp_free(&r);
    return code;
}

static char *gowa_receipt(const char *id, const char *type)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"event\":\"message.ack\",\"device_id\":\"60100000001@s.whatsapp.net\","
                 "\"timestamp\":\"2026-12-07T10:00:00Z\",\"payload\":{\"ids\":[\"%s\"],"
                 "\"chat_id\":\"%s@s.whatsapp.net\",\"from\":\"%s@s.whatsapp.net\","
                 "\"receipt_type\":\"%s\"}}",
                 id, GOWA_PHONE, GOWA_PHONE, type) < 0)
        abort();
    return s;
}

static char *gowa_inbound(const char *text)
{
    char *s = NULL;
    if (asprintf(&s,
                 "{\"event\":\"message\",\"device_id\":\"60100000001@s.whatsapp.net\","
                 "\"payload\":{\"id\":\"3EB0IN%lld\",\"chat_id\":\"%s@s.whatsapp.net\","
                 "\"from\":\"%s@s.whatsapp.net\",\"from_name\":\"G\","
                 "\"timestamp\":\"2026-12-07T10:00:00Z\",\"is_from_me\":false,"
                 "\"body\":\"%s\"}}",
                 wt_now_ms(), GOWA_PHONE, GOWA_PHONE, text) < 0)
        abort();
    return s;
}

static void test_gowa_device_webhook_speaks_for_its_device(void **state)
{
    (void)state;
    /* Device 0's route with device 1's secret, and an unknown device. */
    char *read1 = gowa_receipt("3EB0GW1", "read");
    assert_int_equal(post_gowa(gw[0].dev, gw[1].secret, read1), 401);
    assert_int_equal(post_gowa("00000000-0000-4000-8000-000000000000", gw[0].secret, read1), 404);
    /* Device 0 names device 1's message: accepted, but it matches nothing. */
    assert_int_equal(post_gowa(gw[0].dev, gw[0].secret, read1), 200);
    free(read1);
    char *read0 = gowa_receipt("3EB0GW0", "read");
    assert_int_equal(post_gowa(gw[0].dev, gw[0].secret, read0), 200);
    free(read0);
    /* Results are applied in order: once device 0's own is, the other was. */
    msg_status want = {gw[0].msg, "read"};
    if (!wt_wait_for(message_reached, &want, 30000)) {
        wt_dump_logs(&env, 30);
        fail_msg("device 0's own receipt never reached PostgreSQL");
    }
    assert_true(message_in(gw[1].msg, "sent"));
    /* A STOP through device 0 opts out device 0's user's lead only. */
    char *stop = gowa_inbound("STOP");
    assert_int_equal(post_gowa(gw[0].dev, gw[0].secret, stop), 200);
    free(stop);
    assert_true(opted_out(gw[0].lead));
    assert_false(opted_out(gw[1].lead));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_opts_out_only_the_receiving_user),
        cmocka_unit_test(test_status_waits_for_redis),
        cmocka_unit_test(test_stop_waits_for_postgres),
        cmocka_unit_test(test_verification_and_time),
        cmocka_unit_test(test_gowa_device_webhook_speaks_for_its_device),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
