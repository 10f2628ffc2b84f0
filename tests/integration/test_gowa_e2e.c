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
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "e2e_common.h"
#include "scenario.h"

#define NDEVICES 3
#define NLEADS 18
#define OUTAGE_MS 8000

/* ---- wacast-ctl
 * ---------------------------------------------------------------------------------- */

static wt_env env;
static PGconn *db;
static fake gowa;
static int dport;      /* the dispatcher's public listener: webhooks, /metrics */
static int admin_port; /* its admin listener: /admin/ */
static char secret_key[65], app_secret[33], gowa_secret[33], password[33];

/* `wacast-ctl set-credentials <device>` with json on stdin; returns its exit code. */
static int ctl_set_credentials(const char *device, const char *json)
{
    char path[512], log[600], dburl[300], key[100];
    wt_program_path("wacast-ctl", path, sizeof path);
    snprintf(log, sizeof log, "%s/wacast-ctl.log", env.dir);
    snprintf(dburl, sizeof dburl, "DATABASE_URL=%s", env.database_url);
    snprintf(key, sizeof key, "WACAST_SECRET_KEY=%s", secret_key);
    int p[2];
    if (pipe(p) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        dup2(p[0], 0);
        close(p[0]);
        close(p[1]);
        putenv(dburl);
        putenv(key);
        execl(path, path, "set-credentials", device, (char *)NULL);
        _exit(127);
    }
    close(p[0]);
    size_t len = strlen(json);
    if (write(p[1], json, len) != (ssize_t)len)
        fprintf(stderr, "writing to wacast-ctl: %s\n", strerror(errno));
    close(p[1]);
    int st = 0;
    long long deadline = wt_now_ms() + 20000;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (wt_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(10000);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- waiting
 * ------------------------------------------------------------------------------------- */

/* The first value is true ('t') or a non-zero number. */
static bool sql_true(void *arg)
{
    PGresult *r = wt_sql(db, "%s", (const char *)arg);
    const char *v = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    bool yes = v[0] == 't' || atol(v) != 0;
    PQclear(r);
    return yes;
}

/* Waits until the query's first value is non-zero (true). */
static bool wait_sql(int timeout_ms, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool wait_sql(int timeout_ms, const char *fmt, ...)
{
    char *sql = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&sql, fmt, ap) < 0)
        abort();
    va_end(ap);
    bool ok = wt_wait_for(sql_true, sql, timeout_ms);
    if (!ok)
        fprintf(stderr, "timed out after %d ms waiting for: %s\n", timeout_ms, sql);
    free(sql);
    return ok;
}

static bool results_empty(void *arg)
{
    (void)arg;
    redisContext *rc = wt_redis(&env);
    redisReply *r = redisCommand(rc, "XLEN wacast:results");
    bool empty = r && r->type == REDIS_REPLY_INTEGER && r->integer == 0;
    freeReplyObject(r);
    redisFree(rc);
    return empty;
}

/* Every webhook the fake planned is delivered and the sink has written every
 * result (its stream stays empty for 400 ms). */
static bool settle(void)
{
    json_t *j = fake_call(&gowa, "POST", "/_control/drain?timeout_ms=15000", NULL);
    if (!j)
        return false;
    json_decref(j);
    for (int i = 0; i < 100; i++) {
        if (!wt_wait_for(results_empty, NULL, 10000))
            return false;
        usleep(400000);
        if (results_empty(NULL))
            return true;
    }
    return false;
}

/* ---- the dispatcher's HTTP side
 * ------------------------------------------------------------------ */

static double metric(const char *name)
{
    return e2e_metric(dport, name);
}

static void sign(const char *secret, const char *body, size_t len, char *out, size_t outlen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, len, mac, &maclen);
    size_t k = (size_t)snprintf(out, outlen, "sha256=");
    for (unsigned int i = 0; i < maclen && k + 2 < outlen; i++)
        k += (size_t)snprintf(out + k, outlen - k, "%02x", mac[i]);
}

/* POSTs body to /webhooks/gowa; sig: NULL for none, "" to sign it with the
 * gateway's webhook secret, anything else sent as is. Returns the HTTP status. */
static long post_webhook(const char *body, size_t len, const char *sig)
{
    char url[128], header[128], computed[100];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/webhooks/gowa", dport);
    if (sig && !*sig) {
        sign(gowa_secret, body, len, computed, sizeof computed);
        sig = computed;
    }
    const char *headers[3] = {"Content-Type: application/json", NULL, NULL};
    if (sig) {
        snprintf(header, sizeof header, "X-Hub-Signature-256: %s", sig);
        headers[1] = header;
    }
    resp r;
    long code = http("POST", url, body, len, headers, &r);
    if (code < 0)
        fprintf(stderr, "POST /webhooks/gowa: no answer (%s)\n", r.body);
    resp_free(&r);
    return code;
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
        wt_sql(db,
               "INSERT INTO campaigns (user_id, title, message, scheduled_at,"
               " min_delay_seconds, max_delay_seconds) VALUES ('%s', '%s', 'Hi {{name}}!',"
               " now() - interval '1 second', 0.01, 0.05) RETURNING id",
               user, title);
    snprintf(id_out, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

static void start_daemons(void)
{
    static char port_env[32], admin_env[40], hosts_env[160], key_env[100], app_env[100],
        gowa_env[100];
    /* The fake is the only provider the daemons may send credentials to. */
    snprintf(hosts_env, sizeof hosts_env, "WACAST_PROVIDER_HOSTS=%s", gowa.base);
    snprintf(port_env, sizeof port_env, "PORT=%d", dport);
    snprintf(admin_env, sizeof admin_env, "WACAST_ADMIN_PORT=%d", admin_port);
    snprintf(key_env, sizeof key_env, "WACAST_SECRET_KEY=%s", secret_key);
    snprintf(app_env, sizeof app_env, "WACAST_META_APP_SECRET=%s", app_secret);
    snprintf(gowa_env, sizeof gowa_env, "WACAST_GOWA_WEBHOOK_SECRET=%s", gowa_secret);
    const char *common[] = {"WACAST_LOG_LEVEL=info",
                            "WACAST_POLL_MS=200",
                            "WACAST_LEASE_TTL_MS=3000",
                            "WACAST_DEVICE_REFRESH_MS=500",
                            "WACAST_IDLE_POLL_MS=1000",
                            "WACAST_RECONCILE_MS=2000",
                            "WACAST_ONLINE_GRACE_MS=10000",
                            "WACAST_CLAIM_IDLE_MS=5000",
                            "WACAST_MAX_ATTEMPTS=3",
                            hosts_env,
                            key_env,
                            app_env,
                            gowa_env,
                            NULL};
    const char *with_port[32];
    int n = 0;
    for (; common[n]; n++)
        with_port[n] = common[n];
    with_port[n++] = port_env;
    with_port[n++] = admin_env;
    with_port[n++] = "WACAST_ADMIN_TOKEN=gowa-e2e-admin";
    with_port[n] = NULL;
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", common) < 0 ||
        wt_spawn(&env, "wacast-dispatcher", "dispatcher", with_port) < 0 ||
        wt_spawn(&env, "wacast-sender", "sender", common) < 0)
        abort();
}

static bool dispatcher_sees(void *arg)
{
    return metric("wacast_dispatcher_online_devices") == (double)(intptr_t)arg;
}

/* ---- reading the fake's record
 * ------------------------------------------------------------------- */

static json_t *fake_sent(void)
{
    return fake_call(&gowa, "GET", "/_control/sent", NULL);
}

static long fake_stat(const char *name)
{
    json_t *j = fake_call(&gowa, "GET", "/_control/stats", NULL);
    long v = j ? (long)json_integer_value(json_object_get(j, name)) : -1;
    json_decref(j);
    return v;
}

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
        wt_sql(db,
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
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    random_hex(secret_key, 32);
    random_hex(app_secret, 16);
    random_hex(gowa_secret, 16);
    random_hex(password, 16);
    dport = wt_free_port();
    admin_port = wt_free_port();
    if (fake_start(&env, &gowa, "gowa.js") < 0) {
        wt_dump_logs(&env, 40);
        return -1;
    }
    fprintf(stderr, "gowa fake on port %d, dispatcher on %d\n", gowa.port, dport);

    PGresult *r = wt_sql(db, "INSERT INTO users (name) VALUES ('gowa') RETURNING id");
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
        r = wt_sql(db,
                   "INSERT INTO user_devices (user_id, device_name, phone, platform,"
                   " min_delay_seconds, max_delay_seconds, settings) VALUES ('%s', '%s',"
                   " '+6030000000%d', 'gowa', 0.01, 0.05,"
                   " '{\"base_url\": \"%s\", \"device_id\": \"%s\"}') RETURNING id",
                   user, d->gowa_id, k + 1, gowa.base, d->gowa_id);
        snprintf(d->id, sizeof d->id, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    for (int i = 0; i < NLEADS; i++) {
        lead *l = &leads[i];
        l->dev = i % NDEVICES;
        snprintf(l->name, sizeof l->name, "Lead %d", i);
        snprintf(l->digits, sizeof l->digits, "6013%07d", 5000000 + i * 11);
        r = wt_sql(db,
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
    bool ok = fake_ok(&gowa, "POST", "/_control/config",
                      "{\"basic_auth\": [\"wacast:%s\"], \"devices\": %s, \"webhook_url\":"
                      " \"http://127.0.0.1:%d/webhooks/gowa\", \"webhook_secret\": \"%s\","
                      " \"out_of_order_prob\": 1, \"duplicate_prob\": 0.3,"
                      " \"webhook_retry_base_ms\": 100, \"seed\": 7}",
                      password, devs, dport, gowa_secret);
    free(devs);
    if (!ok)
        return -1;
    for (int k = 0; k < NDEVICES; k++) {
        char creds[128];
        snprintf(creds, sizeof creds, "{\"username\": \"wacast\", \"password\": \"%s\"}", password);
        if (ctl_set_credentials(devices[k].id, creds) != 0) {
            fprintf(stderr, "wacast-ctl set-credentials %s failed\n", devices[k].id);
            wt_dump_logs(&env, 20);
            return -1;
        }
    }
    char like[80];
    snprintf(like, sizeof like, "%s", password);
    if (wt_sql_long(db,
                    "SELECT count(*) FROM user_devices WHERE credentials IS NULL OR"
                    " position(convert_to('%s', 'UTF8') in credentials) > 0",
                    like) != 0) {
        fprintf(stderr, "credentials are not sealed\n");
        return -1;
    }

    start_daemons();
    if (!wait_sql(30000, "SELECT count(*) = %d FROM user_devices WHERE status = 'online'",
                  NDEVICES) ||
        !wt_wait_for(dispatcher_sees, (void *)(intptr_t)NDEVICES, 15000)) {
        fprintf(stderr, "devices did not come online\n");
        wt_dump_logs(&env, 40);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (!env.dir[0])
        return 0;
    int st = fake_stop(&gowa);
    if (st != 0)
        fprintf(stderr, "gowa fake exited with status %d\n", st);
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    curl_global_cleanup();
    return 0;
}

/* cmocka skips the group teardown when the group setup fails: clean up here. */
static int setup(void **state)
{
    if (setup_world() == 0)
        return 0;
    teardown(state);
    return -1;
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
    assert_true(fake_ok(&gowa, "POST", control, "{\"state\": \"logged_out\"}"));
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
    assert_true(fake_ok(&gowa, "POST", control, "{\"state\": \"logged_out\"}"));
    /* The gateway's QR link points at the dispatcher's own admin API. */
    assert_true(fake_ok(&gowa, "POST", "/_control/config",
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
    assert_true(fake_ok(&gowa, "POST", "/_control/config", "{\"qr_link_base\": null}"));

    /* A device of another user whose base_url the dashboard pointed elsewhere. */
    PGresult *res = wt_sql(db, "INSERT INTO users (name) VALUES ('elsewhere') RETURNING id");
    char other_user[40];
    snprintf(other_user, sizeof other_user, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    res = wt_sql(db,
                 "INSERT INTO user_devices (user_id, device_name, platform, settings) VALUES"
                 " ('%s', 'elsewhere', 'gowa', '{\"base_url\": \"http://127.0.0.1:1\"}')"
                 " RETURNING id",
                 other_user);
    char other_device[40];
    snprintf(other_device, sizeof other_device, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!wait_sql(20000,
                  "SELECT count(*) = 1 FROM user_devices WHERE id = '%s' AND status = 'offline'"
                  " AND status_reason = 'gowa: base_url not allowed: http://127.0.0.1:1"
                  " (not in WACAST_PROVIDER_HOSTS)'",
                  other_device)) {
        wt_dump_logs(&env, 40);
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
    res = wt_sql(db,
                 "INSERT INTO user_devices (user_id, device_name, platform, settings, credentials)"
                 " SELECT '%s', 'copied', 'gowa', settings, credentials FROM user_devices"
                 " WHERE id = '%s' RETURNING id",
                 other_user, devices[0].id);
    char copied[40];
    snprintf(copied, sizeof copied, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (!wait_sql(
            20000,
            "SELECT count(*) = 1 FROM user_devices WHERE id = '%s' AND status = 'offline'"
            " AND status_reason LIKE 'cannot open device credentials: wrong key or corrupt:%%'",
            copied)) {
        wt_dump_logs(&env, 40);
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
    if (!sc_wait_campaigns_final(db, ids, 1, 60000)) {
        wt_dump_logs(&env, 60);
        fail_msg("campaign did not finish");
    }
    if (!wait_sql(30000,
                  "SELECT count(*) = %d FROM broadcast_messages WHERE campaign_id = '%s' AND"
                  " status = 'read' AND delivered_at IS NOT NULL AND read_at IS NOT NULL",
                  NLEADS, campaign1))
        failures++;
    if (!settle())
        failures++;
    PGresult *r =
        wt_sql(db,
               "SELECT id, status, coalesce(provider_message_id, '') FROM broadcast_messages"
               " WHERE campaign_id = '%s' AND status <> 'read' ORDER BY id",
               campaign1);
    for (int i = 0; i < PQntuples(r); i++)
        fprintf(stderr, "message %s stayed '%s' (provider id %s)\n", PQgetvalue(r, i, 0),
                PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
    PQclear(r);

    json_t *sent = fake_sent();
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
        db,
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
    long rejected = fake_stat("rejected");
    if (rejected != 0) {
        fprintf(stderr, "the gateway rejected %ld requests\n", rejected);
        failures++;
    }
    r = wt_sql(db,
               "SELECT status, total_count, sent_count, delivered_count, read_count, failed_count"
               " FROM campaigns WHERE id = '%s'",
               campaign1);
    fprintf(stderr, "campaign: %s total %s sent %s delivered %s read %s failed %s\n",
            PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3),
            PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5));
    if (strcmp(PQgetvalue(r, 0, 0), "finished") || atoi(PQgetvalue(r, 0, 1)) != NLEADS ||
        atoi(PQgetvalue(r, 0, 2)) != NLEADS || atoi(PQgetvalue(r, 0, 3)) != NLEADS ||
        atoi(PQgetvalue(r, 0, 4)) != NLEADS || atoi(PQgetvalue(r, 0, 5)) != 0)
        failures++;
    PQclear(r);

    /* The receipts came reversed (out_of_order_prob 1), some twice, and the
     * dispatcher answered every delivery 200 at the first attempt. (The fake's
     * delivery log keeps the HTTP status in "status".) */
    json_t *wh = fake_call(&gowa, "GET", "/_control/webhooks", NULL);
    assert_non_null(wh);
    json_t *del = json_object_get(wh, "deliveries");
    int dups = 0, refused = 0;
    size_t i;
    json_t *a;
    json_array_foreach(del, i, a)
    {
        if (!json_is_true(json_object_get(a, "ok")) ||
            json_integer_value(json_object_get(a, "status")) != 200)
            refused++;
    }
    json_array_foreach(json_object_get(sent, "messages"), i, a)
    {
        dups += (int)json_array_size(json_object_get(a, "receipts")) - 2;
    }
    fprintf(stderr, "webhooks: %zu deliveries, %d duplicates, %d not answered 200\n",
            json_array_size(del), dups, refused);
    json_decref(wh);
    if (dups <= 0 || refused != 0)
        failures++;

    /* A late 'delivered' after 'read' leaves 'read' and the counters alone. */
    r = wt_sql(db,
               "SELECT m.provider_message_id FROM broadcast_messages m WHERE m.campaign_id = '%s'"
               " AND m.status = 'read' AND m.provider_message_id IS NOT NULL ORDER BY m.id LIMIT 1",
               campaign1);
    assert_int_equal(PQntuples(r), 1);
    char mid[64];
    snprintf(mid, sizeof mid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *q = "SELECT m.status, m.delivered_at::text, m.read_at::text, c.delivered_count,"
                    " c.read_count FROM broadcast_messages m JOIN campaigns c ON c.id ="
                    " m.campaign_id WHERE m.provider_message_id = '%s'";
    PGresult *before = wt_sql(db, q, mid);
    assert_true(fake_ok(&gowa, "POST", "/_control/receipt",
                        "{\"id\": \"%s\", \"receipt_type\": \"delivered\"}", mid));
    assert_true(settle());
    PGresult *after = wt_sql(db, q, mid);
    for (int c = 0; c < 5; c++) {
        if (strcmp(PQgetvalue(before, 0, c), PQgetvalue(after, 0, c))) {
            fprintf(stderr, "a late delivered changed column %d: %s -> %s\n", c,
                    PQgetvalue(before, 0, c), PQgetvalue(after, 0, c));
            failures++;
        }
    }
    PQclear(before);
    PQclear(after);
    json_decref(sent);
    if (failures)
        wt_dump_logs(&env, 40);
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
    sign("not-the-secret", forged, strlen(forged), sig, sizeof sig);
    long code = post_webhook(forged, strlen(forged), sig);
    fprintf(stderr, "forged STOP -> %ld\n", code);
    failures += code != 401;
    code = post_webhook(forged, strlen(forged), NULL);
    fprintf(stderr, "unsigned STOP -> %ld\n", code);
    failures += code != 401;
    free(forged);

    const lead *sl = &leads[stop_lead];
    json_t *in = fake_call(&gowa, "POST", "/_control/inbound",
                           "{\"device_id\": \"%s\", \"from\": \"%s\", \"text\": \"STOP\"}",
                           devices[sl->dev].gowa_id, sl->digits);
    assert_non_null(in);
    json_decref(in);
    if (!wait_sql(10000, "SELECT count(*) FROM leads WHERE id = '%s' AND opted_out_at IS NOT NULL",
                  sl->id))
        failures++;
    if (!settle())
        failures++;
    long others = wt_sql_long(
        db, "SELECT count(*) FROM leads WHERE opted_out_at IS NOT NULL AND id <> '%s'", sl->id);
    if (others) {
        fprintf(stderr, "%ld other leads are opted out\n", others);
        failures++;
    }
    if (failures)
        wt_dump_logs(&env, 30);
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
    return wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages m JOIN leads l ON l.id = m.lead_id"
                       " WHERE m.campaign_id = '%s' AND l.device_id = '%s' AND m.status = 'failed'",
                       a->campaign, a->device) != 0;
}

static void test_logged_out_device(void **state)
{
    (void)state;
    int failures = 0;
    const device *g3 = &devices[2];
    assert_true(fake_ok(&gowa, "POST", "/_control/devices/g3", "{\"state\": \"logged_out\"}"));
    char c2[40];
    insert_campaign("gowa after logout", c2);
    if (!wait_sql(20000,
                  "SELECT count(*) FROM user_devices WHERE id = '%s' AND status IN ('offline',"
                  " 'logged_out') AND coalesce(status_reason, '') <> ''",
                  g3->id))
        failures++;
    long long offline_at = wt_now_ms();
    PGresult *r =
        wt_sql(db, "SELECT status, status_reason FROM user_devices WHERE id = '%s'", g3->id);
    fprintf(stderr, "g3 (logged out): %s (%s)\n", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    PQclear(r);
    /* The others' messages settle while g3 stays logged out. */
    if (!wait_sql(
            30000,
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
    r = wt_sql(db,
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
    assert_true(fake_ok(&gowa, "POST", "/_control/devices/g3/scan", NULL));
    const char *ids[] = {c2};
    if (!sc_wait_campaigns_final(db, ids, 1, 60000)) {
        fprintf(stderr, "the campaign did not finish\n");
        failures++;
    }
    if (!wait_sql(20000, "SELECT count(*) FROM user_devices WHERE id = '%s' AND status = 'online'",
                  g3->id))
        failures++;
    if (!settle())
        failures++;
    json_t *sent = fake_sent();
    assert_non_null(sent);
    for (int i = 0; i < NLEADS; i++) {
        lead *l = &leads[i];
        bool skip = i == stop_lead;
        int want = l->accepted + (skip ? 0 : 1);
        int got = accepted_for(sent, l->digits);
        r = wt_sql(db,
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
        db, "SELECT status, total_count, sent_count, failed_count FROM campaigns WHERE id = '%s'",
        c2);
    fprintf(stderr, "campaign: %s total %s sent %s failed %s\n", PQgetvalue(r, 0, 0),
            PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3));
    if (strcmp(PQgetvalue(r, 0, 0), "finished") || atoi(PQgetvalue(r, 0, 1)) != NLEADS - 1 ||
        strcmp(PQgetvalue(r, 0, 3), "0"))
        failures++;
    PQclear(r);
    if (failures)
        wt_dump_logs(&env, 60);
    assert_int_equal(failures, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_campaign_end_to_end),   cmocka_unit_test(test_stop_opts_out),
        cmocka_unit_test(test_logged_out_device),     cmocka_unit_test(test_qr_pairing),
        cmocka_unit_test(test_credentials_stay_home),
    };
    return cmocka_run_group_tests_name("gowa-e2e", tests, setup, teardown);
}
