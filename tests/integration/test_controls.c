/* Operator controls end to end, on real redis-server and PostgreSQL with the
 * real daemons (one scheduler, one dispatcher with the admin API, one sender):
 * one user with 10 sim devices paced 0.05-0.1 s and 500 leads per campaign,
 * so a campaign runs for several seconds, and a second user whose devices
 * fail every send. Each case runs its own campaign; the sim record in Redis
 * is what the "providers" received, and Postgres must agree with it.
 *
 * It proves that:
 * 1. a pause through the admin API stops the campaign's sends within a
 *    second (nothing in the record after pause + 1 s, the count stays put
 *    for 2 s more), and resume continues where it stopped: every lead gets
 *    exactly one message, Postgres statuses and counters equal the record;
 * 2. the same holds when the dashboard pauses and resumes by updating the
 *    campaign row (status 'paused', then back to 'processing');
 * 3. a cancel through the admin API stops the sends within a second and,
 *    once the grace period has passed, leaves every message sent or
 *    cancelled: no cancelled message in the record, sent rows equal the
 *    record, counters equal the rows;
 * 4. a campaign whose every send fails permanently ends 'failed' ('every
 *    message failed', error_code sim_failure); once the user has working
 *    devices, retry-failed (200, retried = N) sends every message exactly
 *    once more and the campaign ends 'finished' with sent_count N and
 *    failed_count 0;
 * 5. the admin API refuses what it must: 401 without or with a wrong token
 *    (and changes nothing), 404 for an unknown campaign, 400 for an id that is
 *    not a UUID, 409 for a resume of a campaign that is not paused, 405 for a
 *    GET, and 403 from a dispatcher whose WACAST_ADMIN_TOKEN is empty.
 *
 * In case 4 the test gives the failing user new healthy devices and removes
 * the failing ones (a dashboard delete), which also exercises the sender
 * releasing a device that is gone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "scenario.h"

#define DEVICES_A 10
#define DEVICES_B 5
#define LEADS_PER_CAMPAIGN 500
#define LEADS_B 200
#define MIN_DELAY 0.05
#define MAX_DELAY 0.1

static wt_env env;
static PGconn *db;
static redisContext *rcx;
static char user_a[40], user_b[40];
static int api_port;   /* the dispatcher's public listener: /readyz, /metrics */
static int admin_port; /* its admin listener: /admin/ */
static char token[65];

/* One group of leads per case: niche and the first number of its phones. */
typedef struct group {
    const char *niche;
    int base;
    int n;
    int user; /* 0: user_a, 1: user_b */
} group;

static const group g_api = {"pause_api", 1000000, LEADS_PER_CAMPAIGN, 0};
static const group g_row = {"pause_row", 2000000, LEADS_PER_CAMPAIGN, 0};
static const group g_cancel = {"cancel", 3000000, LEADS_PER_CAMPAIGN, 0};
static const group g_retry = {"retry", 4000000, LEADS_B, 1};

/* ---- small helpers ------------------------------------------------------------------------ */

static long long realtime_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A fixed observation window (not synchronisation). */
static void observe_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0)
        ;
}

static void phone_of(const group *g, int i, char *out, size_t n)
{
    snprintf(out, n, "+6012%07d", g->base + i);
}

static void insert_group(const group *g)
{
    const char *user = g->user ? user_b : user_a;
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone, niche)"
                   " SELECT '%s', (SELECT array_agg(id ORDER BY device_name) FROM user_devices"
                   " WHERE user_id = '%s')[1 + i %% %d], 'Lead %s-' || i,"
                   " '+6012' || lpad((%d + i)::text, 7, '0'), '%s' FROM generate_series(0, %d) i",
                   user, user, g->user ? DEVICES_B : DEVICES_A, g->niche, g->base, g->niche,
                   g->n - 1));
}

static void create_campaign(const group *g, char *id)
{
    PGresult *r = wt_sql(db,
                         "INSERT INTO campaigns (user_id, title, message, niche, scheduled_at)"
                         " VALUES ('%s', '%s', 'Hi {{name}}', '%s', now()) RETURNING id",
                         g->user ? user_b : user_a, g->niche, g->niche);
    snprintf(id, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    fprintf(stderr, "campaign %s (%s): %d leads\n", id, g->niche, g->n);
}

static void campaign_status(const char *id, char *out, size_t n)
{
    PGresult *r = wt_sql(db, "SELECT status FROM campaigns WHERE id = '%s'", id);
    snprintf(out, n, "%s", PQntuples(r) ? PQgetvalue(r, 0, 0) : "(none)");
    PQclear(r);
}

static void print_statuses(const char *id)
{
    PGresult *r = wt_sql(db,
                         "SELECT status, count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                         " GROUP BY status ORDER BY status",
                         id);
    fprintf(stderr, "  message statuses:");
    for (int i = 0; i < PQntuples(r); i++)
        fprintf(stderr, " %s=%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    fprintf(stderr, "\n");
    PQclear(r);
    r = wt_sql(db,
               "SELECT status, coalesce(status_reason, ''), total_count, sent_count, failed_count,"
               " cancelled_count FROM campaigns WHERE id = '%s'",
               id);
    if (PQntuples(r))
        fprintf(stderr, "  campaign: %s (%s) total=%s sent=%s failed=%s cancelled=%s\n",
                PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3),
                PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5));
    PQclear(r);
}

static bool wait_final(const char *id, int timeout_ms)
{
    const char *ids[] = {id};
    if (sc_wait_campaigns_final(db, ids, 1, timeout_ms))
        return true;
    fprintf(stderr, "campaign %s did not reach a final state within %d ms\n", id, timeout_ms);
    print_statuses(id);
    wt_dump_logs(&env, 40);
    return false;
}

/* ---- the sim record, read incrementally ---------------------------------------------------- */

typedef struct rec_count {
    const char *campaign;
    char from[64];
    long ok;             /* successful sends of the campaign seen so far */
    long long max_ts_us; /* latest ts_us among them */
    long target;
} rec_count;

static const char *field(redisReply *f, const char *name)
{
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (!strcmp(f->element[i]->str, name))
            return f->element[i + 1]->str;
    return "";
}

static void rec_update(rec_count *c)
{
    if (!c->from[0])
        snprintf(c->from, sizeof c->from, "-");
    for (;;) {
        redisReply *r = redisCommand(rcx, "XRANGE wacast:sim:sends %s + COUNT 1000", c->from);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "XRANGE of the sim record failed\n");
            abort();
        }
        size_t n = r->elements;
        for (size_t i = 0; i < n; i++) {
            redisReply *f = r->element[i]->element[1];
            if (strcmp(field(f, "campaign"), c->campaign) || strcmp(field(f, "ok"), "1"))
                continue;
            c->ok++;
            long long ts = atoll(field(f, "ts_us"));
            if (ts > c->max_ts_us)
                c->max_ts_us = ts;
        }
        if (n)
            snprintf(c->from, sizeof c->from, "(%s", r->element[n - 1]->element[0]->str);
        freeReplyObject(r);
        if (n < 1000)
            return;
    }
}

static bool reached_target(void *arg)
{
    rec_count *c = arg;
    rec_update(c);
    return c->ok >= c->target;
}

/* Waits until ~30% of the campaign's messages are in the record. */
static void wait_share_sent(rec_count *c, const group *g)
{
    c->target = g->n * 3 / 10;
    if (!wt_wait_for(reached_target, c, 30000)) {
        fprintf(stderr, "campaign %s: only %ld of %ld sends within 30 s\n", c->campaign, c->ok,
                c->target);
        print_statuses(c->campaign);
        wt_dump_logs(&env, 40);
        fail();
    }
}

/* ---- HTTP ----------------------------------------------------------------------------------- */

typedef struct http_resp {
    long code;
    char body[65536];
    size_t len;
} http_resp;

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
    http_resp *r = arg;
    size_t k = sz * n;
    size_t room = sizeof r->body - 1 - r->len;
    memcpy(r->body + r->len, p, k < room ? k : room);
    r->len += k < room ? k : room;
    r->body[r->len] = '\0';
    return k;
}

/* method "GET" or "POST"; auth: the Authorization header or NULL. Returns the
 * status code, or -1 when no answer came (timeouts: 2 s connect, 5 s total). */
static long http(int port, const char *method, const char *path, const char *auth, http_resp *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    char url[512], hdr[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    struct curl_slist *headers = NULL;
    if (auth) {
        snprintf(hdr, sizeof hdr, "Authorization: %s", auth);
        headers = curl_slist_append(headers, hdr);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    if (headers)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->code);
    else
        snprintf(r->body, sizeof r->body, "%s", curl_easy_strerror(rc));
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    return rc == CURLE_OK ? r->code : -1;
}

static long admin(const char *action, const char *campaign, http_resp *r)
{
    char path[256], auth[128];
    snprintf(path, sizeof path, "/admin/campaigns/%s/%s", campaign, action);
    snprintf(auth, sizeof auth, "Bearer %s", token);
    long code = http(admin_port, "POST", path, auth, r);
    fprintf(stderr, "POST %s -> %ld %s\n", path, code, r->body);
    return code;
}

/* Checks a 200 answer of pause/resume/cancel: {"id","status","changed"}.
 * Returns the number of problems (printed). */
static int check_reply(const http_resp *r, const char *id, const char *status, bool changed)
{
    json_error_t jerr;
    json_t *j = json_loads(r->body, 0, &jerr);
    if (!j) {
        fprintf(stderr, "admin API answer is not JSON (%s at %d): %s\n", jerr.text, jerr.position,
                r->body);
        /* What can still be read from it. */
        char want[128];
        snprintf(want, sizeof want, "\"status\":\"%s\"", status);
        if (!strstr(r->body, want))
            fprintf(stderr, "  and it does not say %s\n", want);
        return 1;
    }
    int bad = 0;
    const char *jid = json_string_value(json_object_get(j, "id"));
    const char *jst = json_string_value(json_object_get(j, "status"));
    json_t *jch = json_object_get(j, "changed");
    if (!jid || strcmp(jid, id)) {
        fprintf(stderr, "answer id is %s, want %s\n", jid ? jid : "(missing)", id);
        bad++;
    }
    if (!jst || strcmp(jst, status)) {
        fprintf(stderr, "answer status is %s, want %s\n", jst ? jst : "(missing)", status);
        bad++;
    }
    if (!json_is_boolean(jch) || json_is_true(jch) != changed) {
        fprintf(stderr, "answer changed is not the boolean %s\n", changed ? "true" : "false");
        bad++;
    }
    json_decref(j);
    return bad;
}

/* ---- checks against the record and Postgres ------------------------------------------------ */

/* Every sent row of the campaign has exactly one successful entry in the
 * record with the row's device, recipient and text; no other row (failed,
 * cancelled, ...) has one; the record holds nothing else for the campaign;
 * the campaign's counters equal the rows. Returns the number of problems. */
static int check_pg_equals_record(const char *id, const sc_send *sends, size_t nsends)
{
    int bad = 0;
    long rec_ok = 0;
    for (size_t k = 0; k < nsends; k++)
        rec_ok += !strcmp(sends[k].campaign, id) && sends[k].ok;
    PGresult *r = wt_sql(db,
                         "SELECT id, status, coalesce(device_id::text, ''), recipient_phone,"
                         " content FROM broadcast_messages WHERE campaign_id = '%s'",
                         id);
    long nsent = 0, nfailed = 0, ncancelled = 0, nskipped = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        long long msg = atoll(PQgetvalue(r, i, 0));
        const char *st = PQgetvalue(r, i, 1);
        bool sent = !strcmp(st, "sent") || !strcmp(st, "delivered") || !strcmp(st, "read");
        nsent += sent;
        nfailed += !strcmp(st, "failed");
        ncancelled += !strcmp(st, "cancelled");
        nskipped += !strcmp(st, "skipped");
        int got = 0;
        const sc_send *s = NULL;
        for (size_t k = 0; k < nsends; k++)
            if (sends[k].msg == msg && sends[k].ok) {
                got++;
                s = &sends[k];
            }
        if (got != (sent ? 1 : 0)) {
            if (bad++ < 10)
                fprintf(stderr, "message %lld (%s, %s): %d successful send(s) in the record\n", msg,
                        st, PQgetvalue(r, i, 3), got);
            continue;
        }
        if (s && (strcmp(s->campaign, id) || strcmp(s->device, PQgetvalue(r, i, 2)) ||
                  strcmp(s->to, PQgetvalue(r, i, 3)) || strcmp(s->text, PQgetvalue(r, i, 4)))) {
            if (bad++ < 10)
                fprintf(stderr, "message %lld: row (%s, %s, \"%s\") != record (%s, %s, \"%s\")\n",
                        msg, PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4),
                        s->device, s->to, s->text);
        }
    }
    long rows = PQntuples(r);
    PQclear(r);
    if (rec_ok != nsent) {
        fprintf(stderr, "record holds %ld successful sends for %s, Postgres %ld sent rows\n",
                rec_ok, id, nsent);
        bad++;
    }
    r = wt_sql(db,
               "SELECT total_count, sent_count, failed_count, cancelled_count, skipped_count"
               " FROM campaigns WHERE id = '%s'",
               id);
    long want[] = {rows, nsent, nfailed, ncancelled, nskipped};
    const char *names[] = {"total_count", "sent_count", "failed_count", "cancelled_count",
                           "skipped_count"};
    for (int k = 0; k < 5; k++) {
        long got = atol(PQgetvalue(r, 0, k));
        if (got != want[k]) {
            fprintf(stderr, "campaign %s: %s = %ld, rows say %ld\n", id, names[k], got, want[k]);
            bad++;
        }
    }
    PQclear(r);
    return bad;
}

/* Every lead of the group got exactly one successful message of the
 * campaign, with its text; nobody else got one. */
static int check_each_lead_once(const char *id, const group *g, const sc_send *sends, size_t nsends)
{
    int bad = 0;
    int *got = calloc((size_t)g->n, sizeof *got);
    for (size_t k = 0; k < nsends; k++) {
        if (strcmp(sends[k].campaign, id) || !sends[k].ok)
            continue;
        int i = -1;
        if (!strncmp(sends[k].to, "+6012", 5))
            i = atoi(sends[k].to + 5) - g->base;
        if (i < 0 || i >= g->n) {
            if (bad++ < 10)
                fprintf(stderr, "%s: unexpected send to %s\n", g->niche, sends[k].to);
            continue;
        }
        got[i]++;
        char want[64];
        snprintf(want, sizeof want, "Hi Lead %s-%d", g->niche, i);
        if (strcmp(sends[k].text, want) && bad++ < 10)
            fprintf(stderr, "%s: %s got \"%s\", want \"%s\"\n", g->niche, sends[k].to,
                    sends[k].text, want);
    }
    int missing = 0, dups = 0;
    for (int i = 0; i < g->n; i++) {
        missing += got[i] == 0;
        dups += got[i] > 1;
        if (got[i] != 1 && bad++ < 10) {
            char phone[24];
            phone_of(g, i, phone, sizeof phone);
            fprintf(stderr, "%s: %s received %d messages, want 1\n", g->niche, phone, got[i]);
        }
    }
    if (missing || dups)
        fprintf(stderr, "%s: %d lead(s) missing, %d with duplicates\n", g->niche, missing, dups);
    free(got);
    return bad;
}

/* A finished campaign: status finished, every lead once, Postgres = record. */
static int check_finished(const char *id, const group *g)
{
    int bad = 0;
    char st[32];
    campaign_status(id, st, sizeof st);
    if (strcmp(st, "finished")) {
        fprintf(stderr, "campaign %s is %s, want finished\n", id, st);
        bad++;
    }
    long not_sent = wt_sql_long(db,
                                "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                " AND status <> 'sent'",
                                id);
    if (not_sent) {
        fprintf(stderr, "campaign %s: %ld message(s) not sent\n", id, not_sent);
        bad++;
    }
    size_t nsends;
    sc_send *sends = sc_read_sends(&env, &nsends);
    bad += check_each_lead_once(id, g, sends, nsends);
    bad += check_pg_equals_record(id, sends, nsends);
    sc_sends_free(sends, nsends);
    if (bad)
        print_statuses(id);
    return bad;
}

/* ---- setup ---------------------------------------------------------------------------------- */

static const char *const timing_env[] = {
    "WACAST_LOG_LEVEL=info",        "WACAST_POLL_MS=200",        "WACAST_LEASE_TTL_MS=3000",
    "WACAST_DEVICE_REFRESH_MS=500", "WACAST_IDLE_POLL_MS=1000",  "WACAST_RECONCILE_MS=2000",
    "WACAST_ONLINE_GRACE_MS=10000", "WACAST_CLAIM_IDLE_MS=5000", "WACAST_BATCH=700",
    "WACAST_HOLDS_MS=250",          "WACAST_CANCEL_GRACE_S=2",   NULL};

/* timing_env plus extra entries (NULL terminated) into out. */
static void build_env(const char **out, const char *const *extra)
{
    int n = 0;
    for (int i = 0; timing_env[i]; i++)
        out[n++] = timing_env[i];
    for (int i = 0; extra && extra[i]; i++)
        out[n++] = extra[i];
    out[n] = NULL;
}

typedef struct http_ready {
    int port;
    const char *path;
} http_ready;

static bool http_answers_200(void *arg)
{
    http_ready *h = arg;
    http_resp r;
    return http(h->port, "GET", h->path, NULL, &r) == 200;
}

static bool api_ready(int port)
{
    http_ready h = {port, "/readyz"};
    return wt_wait_for(http_answers_200, &h, 30000);
}

static void insert_devices(const char *user, const char *prefix, int n, const char *settings,
                           char (*ids)[40])
{
    for (int k = 0; k < n; k++) {
        PGresult *r = wt_sql(db,
                             "INSERT INTO user_devices (user_id, device_name, platform,"
                             " min_delay_seconds, max_delay_seconds, settings)"
                             " VALUES ('%s', '%s-%02d', 'sim', %.3f, %.3f, '%s') RETURNING id",
                             user, prefix, k, MIN_DELAY, MAX_DELAY, settings);
        if (ids)
            snprintf(ids[k], sizeof ids[k], "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }
}

static int setup(void **state)
{
    (void)state;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    rcx = wt_redis(&env);

    unsigned char raw[16];
    FILE *u = fopen("/dev/urandom", "rb");
    if (!u || fread(raw, 1, sizeof raw, u) != sizeof raw)
        return -1;
    fclose(u);
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(token + 2 * i, 3, "%02x", raw[i]);

    PGresult *r = wt_sql(db, "INSERT INTO users (name) VALUES ('controls') RETURNING id");
    snprintf(user_a, sizeof user_a, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    r = wt_sql(db, "INSERT INTO users (name) VALUES ('failing') RETURNING id");
    snprintf(user_b, sizeof user_b, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    insert_devices(user_a, "a", DEVICES_A, "{}", NULL);
    insert_devices(user_b, "b", DEVICES_B, "{\"sim_failure_rate\": 1.0}", NULL);
    insert_group(&g_api);
    insert_group(&g_row);
    insert_group(&g_cancel);
    insert_group(&g_retry);

    api_port = wt_free_port();
    admin_port = wt_free_port();
    static char port_env[32], admin_env[40], token_env[128];
    snprintf(port_env, sizeof port_env, "PORT=%d", api_port);
    snprintf(admin_env, sizeof admin_env, "WACAST_ADMIN_PORT=%d", admin_port);
    snprintf(token_env, sizeof token_env, "WACAST_ADMIN_TOKEN=%s", token);
    const char *envs[32];
    build_env(envs, NULL);
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", envs) < 0 ||
        wt_spawn(&env, "wacast-sender", "sender", envs) < 0)
        return -1;
    const char *extra[] = {port_env, admin_env, token_env, NULL};
    build_env(envs, extra);
    if (wt_spawn(&env, "wacast-dispatcher", "dispatcher", envs) < 0)
        return -1;
    if (!api_ready(api_port)) {
        fprintf(stderr, "dispatcher did not answer /readyz on port %d\n", api_port);
        wt_dump_logs(&env, 40);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (rcx)
        redisFree(rcx);
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    curl_global_cleanup();
    return 0;
}

/* ---- 1 and 2: pause and resume ----------------------------------------------------------------
 */

typedef enum { VIA_API, VIA_ROW } via;

static void pause_resume(const group *g, via how)
{
    int bad = 0;
    char id[40], st[32];
    create_campaign(g, id);
    rec_count rc = {.campaign = id};
    wait_share_sent(&rc, g);
    long at_pause = rc.ok;

    http_resp r;
    if (how == VIA_API) {
        assert_int_equal(admin("pause", id, &r), 200);
        bad += check_reply(&r, id, "paused", true);
    } else {
        PQclear(wt_sql(db, "UPDATE campaigns SET status = 'paused' WHERE id = '%s'", id));
    }
    long long t_us = realtime_us();
    campaign_status(id, st, sizeof st);
    assert_string_equal(st, "paused");

    observe_ms(1000);
    rec_update(&rc);
    long n1 = rc.ok;
    observe_ms(2000);
    rec_update(&rc);
    long n2 = rc.ok;
    fprintf(stderr,
            "%s: %ld sends at pause, %ld at +1 s, %ld at +3 s; last send %+.3f s after the pause\n",
            g->niche, at_pause, n1, n2, (double)(rc.max_ts_us - t_us) / 1e6);
    if (n2 != n1) {
        fprintf(stderr, "%s: %ld send(s) between 1 s and 3 s after the pause\n", g->niche, n2 - n1);
        bad++;
    }
    if (rc.max_ts_us > t_us + 1000000) {
        fprintf(stderr, "%s: a send %.3f s after the pause\n", g->niche,
                (double)(rc.max_ts_us - t_us) / 1e6);
        bad++;
    }
    if (n2 >= g->n) {
        fprintf(stderr, "%s: every message went out despite the pause\n", g->niche);
        bad++;
    }
    campaign_status(id, st, sizeof st);
    if (strcmp(st, "paused")) {
        fprintf(stderr, "%s: campaign is %s 3 s after the pause\n", g->niche, st);
        bad++;
    }

    if (how == VIA_API) {
        assert_int_equal(admin("resume", id, &r), 200);
        bad += check_reply(&r, id, "processing", true);
    } else {
        PQclear(wt_sql(db, "UPDATE campaigns SET status = 'processing' WHERE id = '%s'", id));
    }
    if (!wait_final(id, 30000)) {
        /* Where the rest is: set aside by the senders and not brought back? */
        redisReply *x = redisCommand(rcx, "XLEN wacast:paused:%s", id);
        redisReply *m = redisCommand(rcx, "SISMEMBER wacast:paused:index %s", id);
        fprintf(stderr, "%s: %lld job(s) still in wacast:paused:%s (in the index: %lld)\n",
                g->niche, x ? x->integer : -1, id, m ? m->integer : -1);
        if (x)
            freeReplyObject(x);
        if (m)
            freeReplyObject(m);
        fail();
    }
    bad += check_finished(id, g);
    if (bad)
        wt_dump_logs(&env, 30);
    assert_int_equal(bad, 0);
}

static void test_pause_resume_api(void **state)
{
    (void)state;
    pause_resume(&g_api, VIA_API);
}

static void test_pause_resume_row(void **state)
{
    (void)state;
    pause_resume(&g_row, VIA_ROW);
}

/* ---- 3: cancel ----------------------------------------------------------------------------------
 */

typedef struct open_arg {
    const char *id;
} open_arg;

static bool no_open_messages(void *arg)
{
    open_arg *a = arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                       " AND status IN ('pending', 'queued')",
                       a->id) == 0;
}

static void test_cancel(void **state)
{
    (void)state;
    const group *g = &g_cancel;
    int bad = 0;
    char id[40], st[32];
    create_campaign(g, id);
    rec_count rc = {.campaign = id};
    wait_share_sent(&rc, g);
    long at_cancel = rc.ok;

    http_resp r;
    assert_int_equal(admin("cancel", id, &r), 200);
    long long t_us = realtime_us();
    bad += check_reply(&r, id, "cancelled", true);

    open_arg a = {id};
    if (!wt_wait_for(no_open_messages, &a, 20000)) {
        fprintf(stderr, "cancel: messages still pending/queued 20 s after the cancel\n");
        print_statuses(id);
        wt_dump_logs(&env, 40);
        fail();
    }
    /* Look at the record no earlier than 2 s after the cancel, so a late send
     * would be in it. */
    long long left_ms = (t_us + 2000000 - realtime_us()) / 1000;
    if (left_ms > 0)
        observe_ms((int)left_ms);
    rec_update(&rc);
    fprintf(stderr, "cancel: %ld sends at cancel, %ld in all; last send %+.3f s after the cancel\n",
            at_cancel, rc.ok, (double)(rc.max_ts_us - t_us) / 1e6);
    print_statuses(id);

    campaign_status(id, st, sizeof st);
    if (strcmp(st, "cancelled")) {
        fprintf(stderr, "cancel: campaign is %s\n", st);
        bad++;
    }
    long other = wt_sql_long(db,
                             "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                             " AND status NOT IN ('sent', 'cancelled')",
                             id);
    if (other) {
        fprintf(stderr, "cancel: %ld message(s) neither sent nor cancelled\n", other);
        bad++;
    }
    long ncancelled = wt_sql_long(db,
                                  "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                  " AND status = 'cancelled'",
                                  id);
    if (ncancelled == 0) {
        fprintf(stderr, "cancel: nothing was cancelled (the campaign ran out first)\n");
        bad++;
    }
    if (rc.max_ts_us > t_us + 1000000) {
        fprintf(stderr, "cancel: a send %.3f s after the cancel\n",
                (double)(rc.max_ts_us - t_us) / 1e6);
        bad++;
    }

    size_t nsends;
    sc_send *sends = sc_read_sends(&env, &nsends);
    /* No cancelled message reached a provider, not even as a failed attempt. */
    PGresult *res = wt_sql(db,
                           "SELECT id FROM broadcast_messages WHERE campaign_id = '%s'"
                           " AND status = 'cancelled'",
                           id);
    for (int i = 0; i < PQntuples(res); i++) {
        long long msg = atoll(PQgetvalue(res, i, 0));
        for (size_t k = 0; k < nsends; k++)
            if (sends[k].msg == msg && bad++ < 10)
                fprintf(stderr, "cancel: cancelled message %lld is in the record (%s)\n", msg,
                        sends[k].to);
    }
    PQclear(res);
    bad += check_pg_equals_record(id, sends, nsends);
    sc_sends_free(sends, nsends);
    if (bad)
        wt_dump_logs(&env, 30);
    assert_int_equal(bad, 0);
}

/* ---- 4: retry failed ----------------------------------------------------------------------------
 */

static long metric(int port, const char *name)
{
    http_resp r;
    if (http(port, "GET", "/metrics", NULL, &r) != 200)
        return -1;
    size_t len = strlen(name);
    for (const char *p = r.body; (p = strstr(p, name)) != NULL; p += len)
        if ((p == r.body || p[-1] == '\n') && p[len] == ' ')
            return atol(p + len + 1);
    return -1;
}

typedef struct gauge_arg {
    long want;
} gauge_arg;

static bool online_gauge_is(void *arg)
{
    gauge_arg *a = arg;
    return metric(api_port, "wacast_dispatcher_online_devices") == a->want;
}

static bool new_devices_online(void *arg)
{
    (void)arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM user_devices WHERE user_id = '%s'"
                       " AND device_name LIKE 'healthy-%%' AND status = 'online'",
                       user_b) == DEVICES_B;
}

static void test_retry_failed(void **state)
{
    (void)state;
    const group *g = &g_retry;
    int bad = 0;
    char id[40];
    create_campaign(g, id);
    if (!wait_final(id, 30000))
        fail();
    print_statuses(id);

    /* Every send failed for good. */
    PGresult *r = wt_sql(db,
                         "SELECT status, coalesce(status_reason, ''), total_count, sent_count,"
                         " failed_count FROM campaigns WHERE id = '%s'",
                         id);
    assert_string_equal(PQgetvalue(r, 0, 0), "failed");
    assert_string_equal(PQgetvalue(r, 0, 1), "every message failed");
    assert_int_equal(atoi(PQgetvalue(r, 0, 2)), g->n);
    assert_int_equal(atoi(PQgetvalue(r, 0, 3)), 0);
    assert_int_equal(atoi(PQgetvalue(r, 0, 4)), g->n);
    PQclear(r);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                 " AND status = 'failed' AND error_code = 'sim_failure'",
                                 id),
                     g->n);

    /* The operator replaces the devices: the user gets new healthy devices
     * and the failing ones are removed (a dashboard delete: the sender
     * releases a device that is gone and the router stops using it). Each
     * step is observed on the dispatcher's online-device gauge. */
    PQclear(wt_sql(db,
                   "UPDATE user_devices SET settings = '{}' WHERE user_id = '%s'"
                   " AND device_name LIKE 'b-%%'",
                   user_b));
    insert_devices(user_b, "healthy", DEVICES_B, "{}", NULL);
    if (!wt_wait_for(new_devices_online, NULL, 20000)) {
        fprintf(stderr, "retry: the new devices did not come online\n");
        wt_dump_logs(&env, 40);
        fail();
    }
    gauge_arg ga = {DEVICES_A + 2 * DEVICES_B};
    if (!wt_wait_for(online_gauge_is, &ga, 20000)) {
        fprintf(stderr, "retry: dispatcher online devices %ld, want %ld\n",
                metric(api_port, "wacast_dispatcher_online_devices"), ga.want);
        wt_dump_logs(&env, 40);
        fail();
    }
    PQclear(wt_sql(db, "DELETE FROM user_devices WHERE user_id = '%s' AND device_name LIKE 'b-%%'",
                   user_b));
    ga.want = DEVICES_A + DEVICES_B;
    if (!wt_wait_for(online_gauge_is, &ga, 20000)) {
        fprintf(stderr, "retry: dispatcher online devices %ld, want %ld\n",
                metric(api_port, "wacast_dispatcher_online_devices"), ga.want);
        wt_dump_logs(&env, 40);
        fail();
    }

    http_resp hr;
    assert_int_equal(admin("retry-failed", id, &hr), 200);
    json_error_t jerr;
    json_t *j = json_loads(hr.body, 0, &jerr);
    if (!j) {
        fprintf(stderr, "retry-failed answer is not JSON: %s\n", hr.body);
        bad++;
    } else {
        const char *jid = json_string_value(json_object_get(j, "id"));
        const char *jst = json_string_value(json_object_get(j, "status"));
        json_t *jn = json_object_get(j, "retried");
        if (!jid || strcmp(jid, id) || !jst || strcmp(jst, "processing") || !json_is_integer(jn) ||
            json_integer_value(jn) != g->n) {
            fprintf(stderr, "retry-failed answer %s, want id %s, status processing, retried %d\n",
                    hr.body, id, g->n);
            bad++;
        }
        json_decref(j);
    }
    if (!wait_final(id, 30000))
        fail();
    print_statuses(id);

    r = wt_sql(
        db, "SELECT status, total_count, sent_count, failed_count FROM campaigns WHERE id = '%s'",
        id);
    if (strcmp(PQgetvalue(r, 0, 0), "finished") || atoi(PQgetvalue(r, 0, 1)) != g->n ||
        atoi(PQgetvalue(r, 0, 2)) != g->n || atoi(PQgetvalue(r, 0, 3)) != 0) {
        fprintf(stderr, "retry: campaign %s total %s sent %s failed %s, want finished %d %d 0\n",
                PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3),
                g->n, g->n);
        bad++;
    }
    PQclear(r);
    long leftover = wt_sql_long(db,
                                "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                " AND (status <> 'sent' OR error_code IS NOT NULL)",
                                id);
    if (leftover) {
        fprintf(stderr, "retry: %ld message(s) not sent cleanly\n", leftover);
        bad++;
    }
    size_t nsends;
    sc_send *sends = sc_read_sends(&env, &nsends);
    /* Each message: one failed attempt from the first run, one success. */
    long failed_attempts = 0;
    for (size_t k = 0; k < nsends; k++)
        failed_attempts += !strcmp(sends[k].campaign, id) && !sends[k].ok;
    if (failed_attempts != g->n) {
        fprintf(stderr, "retry: %ld failed attempts in the record, want %d\n", failed_attempts,
                g->n);
        bad++;
    }
    bad += check_each_lead_once(id, g, sends, nsends);
    bad += check_pg_equals_record(id, sends, nsends);
    sc_sends_free(sends, nsends);
    if (bad)
        wt_dump_logs(&env, 30);
    assert_int_equal(bad, 0);
}

/* ---- 5: admin API auth and errors -------------------------------------------------------------
 */

static void test_admin_api_errors(void **state)
{
    (void)state;
    /* A campaign due tomorrow: pending, never touched by the scheduler. */
    PGresult *res = wt_sql(db,
                           "INSERT INTO campaigns (user_id, title, message, niche, scheduled_at)"
                           " VALUES ('%s', 'future', 'Hi {{name}}', 'none', now() + interval"
                           " '1 day') RETURNING id",
                           user_a);
    char id[40], path[256], auth[128], st[32];
    snprintf(id, sizeof id, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    snprintf(path, sizeof path, "/admin/campaigns/%s/pause", id);
    http_resp r;

    assert_int_equal(http(admin_port, "POST", path, NULL, &r), 401);
    assert_int_equal(http(admin_port, "POST", path, "Bearer wrong-token", &r), 401);
    snprintf(auth, sizeof auth, "Basic %s", token);
    assert_int_equal(http(admin_port, "POST", path, auth, &r), 401);
    campaign_status(id, st, sizeof st);
    assert_string_equal(st, "pending"); /* the refused pauses changed nothing */

    assert_int_equal(admin("pause", "00000000-0000-4000-8000-000000000000", &r), 404);
    assert_int_equal(admin("pause", "not-a-uuid", &r), 400);
    assert_int_equal(admin("resume", id, &r), 409);
    campaign_status(id, st, sizeof st);
    assert_string_equal(st, "pending");
    snprintf(auth, sizeof auth, "Bearer %s", token);
    assert_int_equal(http(admin_port, "GET", path, auth, &r), 405);
    campaign_status(id, st, sizeof st);
    assert_string_equal(st, "pending");

    /* A dispatcher without a token refuses every admin request. */
    int port = wt_free_port(), second_admin_port = wt_free_port();
    char port_env[32], admin_env[40];
    snprintf(port_env, sizeof port_env, "PORT=%d", port);
    snprintf(admin_env, sizeof admin_env, "WACAST_ADMIN_PORT=%d", second_admin_port);
    const char *extra[] = {port_env, admin_env, "WACAST_ADMIN_TOKEN=", NULL};
    const char *envs[32];
    build_env(envs, extra);
    pid_t pid = wt_spawn(&env, "wacast-dispatcher", "dispatcher-noadmin", envs);
    assert_true(pid > 0);
    if (!api_ready(port)) {
        wt_dump_logs(&env, 40);
        fail_msg("the second dispatcher did not get ready");
    }
    long with_token = http(second_admin_port, "POST", path, auth, &r);
    long without = http(second_admin_port, "POST", path, NULL, &r);
    fprintf(stderr, "admin API disabled: %ld with a token, %ld without\n", with_token, without);
    kill(pid, SIGTERM);
    int exit_status = wt_wait_exit(&env, pid, 15000);
    assert_int_equal(with_token, 403);
    assert_int_equal(without, 403);
    assert_true(exit_status != -1 && WIFEXITED(exit_status) && WEXITSTATUS(exit_status) == 0);
    campaign_status(id, st, sizeof st);
    assert_string_equal(st, "pending");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pause_resume_api), cmocka_unit_test(test_pause_resume_row),
        cmocka_unit_test(test_cancel),           cmocka_unit_test(test_retry_failed),
        cmocka_unit_test(test_admin_api_errors),
    };
    return cmocka_run_group_tests_name("controls", tests, setup, teardown);
}
