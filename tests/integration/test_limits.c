/* Device limits, sending windows, breaker, fairness and health end to end
 * (spec-fleet.md), on real redis-server and PostgreSQL with the real daemons
 * (one scheduler, one dispatcher, one sender). Every test runs on its own
 * fresh environment, so the tests are independent of each other and of
 * their order. The sim record in Redis is what the "providers" received;
 * Postgres must agree with it.
 *
 * It proves that:
 * 1. daily cap: a device with daily_limit 10 sends exactly 10 of its leads'
 *    40 messages, rests until the next local midnight of its own time zone
 *    (status_reason 'daily limit...', status online, sent_today 10,
 *    cap_today 10) and the other 30 go out from the user's other device,
 *    each message exactly once;
 *    and with a single device (daily_limit 5, 12 leads) exactly 5 go out, the
 *    other 7 stay queued, the campaign stays processing 'waiting...'; raising
 *    daily_limit to 100 sends the 7, each once, and the campaign finishes;
 * 2. warm-up: schedule {4,8} caps day 1 at 4 and day 2 at 8, after the
 *    schedule no cap; warmup_started_on NULL counts from created_at's local
 *    date; with both a warm-up day and daily_limit the smaller wins;
 * 3. sending window: a campaign whose window excludes now sends nothing (a
 *    campaign of the same device inside its window finishes meanwhile) and
 *    says 'outside sending window...'; moving the window over now sends every
 *    message once, clears the reason and finishes the campaign;
 * 4. recipient gap: two sends from one device to one phone are at least
 *    recipient_gap_seconds apart, and the device's other messages are not
 *    held up meanwhile;
 * 5. circuit breaker: after WACAST_BREAKER_FAILURES transient failures the
 *    device rests ('circuit open...'), its messages go out from the healthy
 *    device, each once, its failed attempts stay few, the sender counts
 *    wacast_sender_breaker_opened_total; once fixed, its probe succeeds and it
 *    sends again (resting_until NULL, reason cleared); permanent failures do
 *    not open the breaker; with the default settings the message whose
 *    retries tripped the breaker goes out from the healthy device too;
 * 6. fairness: two campaigns of one user on one device alternate (no run of
 *    more than 2 sends of one campaign while both have messages) and the
 *    device's pacing counts both (no gap under min_delay);
 * 7. health: a device whose every send fails gets health_score < 50, a
 *    healthy one of the same run stays >= 90, and the sender's health band
 *    gauges agree.
 *
 * Run with a cmocka test-name pattern as argument to run some of them only
 * (e.g. test_limits 'test_breaker*'). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "e2e_common.h"
#include "scenario.h"

static wt_env env;
static PGconn *db;
static redisContext *rcx;
static int sender_port;

/* Small timings: devices re-read every 200 ms, so a row change reaches the
 * sender and the router quickly. */
static const char *const base_env[] = {
    "WACAST_LOG_LEVEL=info",         "WACAST_POLL_MS=200",          "WACAST_LEASE_TTL_MS=3000",
    "WACAST_DEVICE_REFRESH_MS=200",  "WACAST_IDLE_POLL_MS=500",     "WACAST_RECONCILE_MS=2000",
    "WACAST_ONLINE_GRACE_MS=10000",  "WACAST_CLAIM_IDLE_MS=5000",   "WACAST_BATCH=700",
    "WACAST_HOLDS_MS=250",           NULL};

/* ---- environment --------------------------------------------------------------------------- */

static int env_setup(void **state)
{
    (void)state;
    memset(&env, 0, sizeof env);
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    rcx = wt_redis(&env);
    sender_port = 0;
    return 0;
}

static int env_teardown(void **state)
{
    (void)state;
    if (rcx)
        redisFree(rcx);
    rcx = NULL;
    if (db)
        PQfinish(db);
    db = NULL;
    wt_env_stop(&env);
    return 0;
}

/* A sender with an HTTP port for /metrics (the last one started is the one
 * metric() reads) and sender_extra on top of base_env. */
static pid_t spawn_sender(const char *name, const char *const *sender_extra)
{
    const char *envs[64];
    int n = 0;
    for (int i = 0; base_env[i]; i++)
        envs[n++] = base_env[i];
    static char port_env[32];
    sender_port = wt_free_port();
    snprintf(port_env, sizeof port_env, "PORT=%d", sender_port);
    envs[n++] = port_env;
    for (int i = 0; sender_extra && sender_extra[i] && n < 62; i++)
        envs[n++] = sender_extra[i];
    envs[n] = NULL;
    pid_t pid = wt_spawn(&env, "wacast-sender", name, envs);
    assert_true(pid > 0);
    return pid;
}

/* One scheduler, one dispatcher, one sender; returns the sender's pid. */
static pid_t start_daemons(const char *const *sender_extra)
{
    assert_true(wt_spawn(&env, "wacast-scheduler", "scheduler", base_env) > 0);
    assert_true(wt_spawn(&env, "wacast-dispatcher", "dispatcher", base_env) > 0);
    return spawn_sender("sender", sender_extra);
}

/* ---- rows ------------------------------------------------------------------------------------ */

static void new_user(const char *name, char *id)
{
    PGresult *r = wt_sql(db, "INSERT INTO users (name) VALUES ('%s') RETURNING id", name);
    snprintf(id, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* A sim device; cols/vals: extra columns and their SQL values (", "-led lists
 * without the leading comma), or NULL. */
static void new_device(char *id, const char *user, const char *name, double min_delay,
                       double max_delay, const char *settings, const char *cols, const char *vals)
{
    PGresult *r = wt_sql(db,
                         "INSERT INTO user_devices (user_id, device_name, platform,"
                         " min_delay_seconds, max_delay_seconds, settings%s%s)"
                         " VALUES ('%s', '%s', 'sim', %.3f, %.3f, '%s'%s%s) RETURNING id",
                         cols ? ", " : "", cols ? cols : "", user, name, min_delay, max_delay,
                         settings, vals ? ", " : "", vals ? vals : "");
    snprintf(id, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* A group of leads: phones +6012<base + i>, names "Lead <niche>-<i>". */
typedef struct group {
    const char *niche;
    int base;
    int n;
} group;

static void add_leads(const char *user, const char *device, const group *g)
{
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone, niche)"
                   " SELECT '%s', '%s', 'Lead %s-' || i, '+6012' || lpad((%d + i)::text, 7, '0'),"
                   " '%s' FROM generate_series(0, %d) i",
                   user, device, g->niche, g->base, g->niche, g->n - 1));
}

/* Campaigns of one user to the given niches, due now, inserted by one
 * statement (the same due instant); cols/vals: extra columns for every row. */
static void new_campaigns(const char *user, int n, const char *const *niches, const char *cols,
                          const char *const *vals, char (*ids)[40])
{
    char sql[8192];
    size_t len = (size_t)snprintf(sql, sizeof sql,
                                  "INSERT INTO campaigns (user_id, title, message, niche,"
                                  " scheduled_at%s%s) VALUES ",
                                  cols ? ", " : "", cols ? cols : "");
    for (int k = 0; k < n; k++)
        len += (size_t)snprintf(sql + len, sizeof sql - len,
                                "%s('%s', 'c%d-%s', 'Hi {{name}}', '%s', now()%s%s)", k ? ", " : "",
                                user, k, niches[k], niches[k], vals ? ", " : "",
                                vals ? vals[k] : "");
    snprintf(sql + len, sizeof sql - len, " RETURNING id, title");
    PGresult *r = wt_sql(db, "%s", sql);
    for (int i = 0; i < PQntuples(r); i++) {
        int k = atoi(PQgetvalue(r, i, 1) + 1);
        snprintf(ids[k], 40, "%s", PQgetvalue(r, i, 0));
        fprintf(stderr, "campaign %s: niche %s\n", ids[k], niches[k]);
    }
    PQclear(r);
}

static void new_campaign(const char *user, const char *niche, const char *cols, const char *vals,
                         char *id)
{
    char ids[1][40];
    const char *niches[] = {niche};
    const char *v[] = {vals};
    new_campaigns(user, 1, niches, cols, vals ? v : NULL, ids);
    snprintf(id, 40, "%s", ids[0]);
}

/* ---- diagnostics ------------------------------------------------------------------------------ */

static void print_rows(const char *title, const char *sql)
{
    PGresult *r = wt_sql(db, "%s", sql);
    fprintf(stderr, "%s:\n", title);
    for (int i = 0; i < PQntuples(r); i++) {
        fprintf(stderr, "  ");
        for (int j = 0; j < PQnfields(r); j++)
            fprintf(stderr, "%s%s=%s", j ? " " : "", PQfname(r, j),
                    PQgetisnull(r, i, j) ? "NULL" : PQgetvalue(r, i, j));
        fprintf(stderr, "\n");
    }
    PQclear(r);
}

static void dump_state(void)
{
    print_rows("devices",
               "SELECT device_name, status, status_reason, resting_until, sent_today, cap_today,"
               " daily_limit, health_score, time_zone FROM user_devices ORDER BY device_name");
    print_rows("campaigns", "SELECT title, status, status_reason, total_count, sent_count,"
                            " failed_count, send_window_start, send_window_end FROM campaigns"
                            " ORDER BY title");
    print_rows("messages", "SELECT c.title, m.status, count(*) FROM broadcast_messages m"
                           " JOIN campaigns c ON c.id = m.campaign_id GROUP BY 1, 2 ORDER BY 1, 2");
}

static void dump_record_summary(void);

static void give_up(const char *what)
{
    fprintf(stderr, "timed out waiting for: %s\n", what);
    dump_state();
    dump_record_summary();
    wt_dump_logs(&env, 40);
    fail();
}

static void report(int bad)
{
    if (bad) {
        dump_state();
        dump_record_summary();
        wt_dump_logs(&env, 40);
    }
    assert_int_equal(bad, 0);
}

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAILED %s: ", #cond);                                                 \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            bad++;                                                                                 \
        }                                                                                          \
    } while (0)

/* ---- waiting on SQL ---------------------------------------------------------------------------- */

typedef struct sql_cond {
    char sql[4096];
} sql_cond;

static bool sql_true(void *arg)
{
    return wt_sql_long(db, "%s", ((sql_cond *)arg)->sql) != 0;
}

/* Polls a query whose first column is non-zero when the condition holds. */
static bool __attribute__((format(printf, 2, 3))) wait_sql(int timeout_ms, const char *fmt, ...)
{
    sql_cond c;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c.sql, sizeof c.sql, fmt, ap);
    va_end(ap);
    return wt_wait_for(sql_true, &c, timeout_ms);
}

#define MUST_SQL(timeout_ms, what, ...)                                                            \
    do {                                                                                           \
        if (!wait_sql(timeout_ms, __VA_ARGS__))                                                    \
            give_up(what);                                                                         \
    } while (0)

static void must_finish(const char *const *ids, int n, int timeout_ms)
{
    if (!sc_wait_campaigns_final(db, ids, n, timeout_ms))
        give_up("campaigns in a final state");
}

static long lsql(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static long lsql(const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    return wt_sql_long(db, "%s", sql);
}

/* ---- the sim record ---------------------------------------------------------------------------- */

static const char *field(redisReply *f, const char *name)
{
    for (size_t i = 0; i + 1 < f->elements; i += 2)
        if (!strcmp(f->element[i]->str, name))
            return f->element[i + 1]->str;
    return "";
}

/* The whole record in stream order, on the test's own connection. */
static sc_send *rec_read(size_t *n)
{
    size_t cap = 256, len = 0;
    sc_send *out = calloc(cap, sizeof *out);
    char from[64] = "-";
    for (;;) {
        redisReply *r = redisCommand(rcx, "XRANGE wacast:sim:sends %s + COUNT 2000", from);
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "XRANGE of the sim record failed\n");
            abort();
        }
        for (size_t i = 0; i < r->elements; i++) {
            if (len == cap) {
                cap *= 2;
                out = realloc(out, cap * sizeof *out);
            }
            sc_send *s = &out[len++];
            memset(s, 0, sizeof *s);
            redisReply *f = r->element[i]->element[1];
            s->msg = atoll(field(f, "msg"));
            snprintf(s->campaign, sizeof s->campaign, "%s", field(f, "campaign"));
            snprintf(s->device, sizeof s->device, "%s", field(f, "device"));
            snprintf(s->to, sizeof s->to, "%s", field(f, "to"));
            snprintf(s->sender, sizeof s->sender, "%s", field(f, "sender"));
            s->text = strdup(field(f, "text"));
            s->ts_us = atoll(field(f, "ts_us"));
            s->ok = !strcmp(field(f, "ok"), "1");
        }
        size_t got = r->elements;
        if (got)
            snprintf(from, sizeof from, "(%s", r->element[got - 1]->element[0]->str);
        freeReplyObject(r);
        if (got < 2000)
            break;
    }
    *n = len;
    return out;
}

/* Entries of the record matching campaign and device (NULL: any) and ok
 * (1: successful, 0: failed, -1: either). */
static long rec_count(const sc_send *s, size_t n, const char *campaign, const char *device, int ok)
{
    long c = 0;
    for (size_t i = 0; i < n; i++)
        if ((!campaign || !strcmp(s[i].campaign, campaign)) &&
            (!device || !strcmp(s[i].device, device)) && (ok < 0 || s[i].ok == (ok == 1)))
            c++;
    return c;
}

static void dump_record_summary(void)
{
    if (!rcx)
        return;
    size_t n;
    sc_send *s = rec_read(&n);
    PGresult *d = wt_sql(db, "SELECT id, device_name FROM user_devices ORDER BY device_name");
    PGresult *c = wt_sql(db, "SELECT id, title FROM campaigns ORDER BY title");
    fprintf(stderr, "sim record: %zu entries\n", n);
    for (int i = 0; i < PQntuples(d); i++)
        for (int j = 0; j < PQntuples(c); j++) {
            long ok = rec_count(s, n, PQgetvalue(c, j, 0), PQgetvalue(d, i, 0), 1);
            long ko = rec_count(s, n, PQgetvalue(c, j, 0), PQgetvalue(d, i, 0), 0);
            if (ok || ko)
                fprintf(stderr, "  %s / %s: %ld ok, %ld failed\n", PQgetvalue(d, i, 1),
                        PQgetvalue(c, j, 1), ok, ko);
        }
    PQclear(d);
    PQclear(c);
    sc_sends_free(s, n);
}

typedef struct rec_want {
    const char *campaign, *device;
    int ok;
    long want;
} rec_want;

static bool rec_reached(void *arg)
{
    rec_want *w = arg;
    size_t n;
    sc_send *s = rec_read(&n);
    long c = rec_count(s, n, w->campaign, w->device, w->ok);
    sc_sends_free(s, n);
    return c >= w->want;
}

static void must_record(const char *campaign, const char *device, int ok, long want, int timeout_ms,
                        const char *what)
{
    rec_want w = {campaign, device, ok, want};
    if (!wt_wait_for(rec_reached, &w, timeout_ms))
        give_up(what);
}

/* Every lead of the group got exactly one successful send of the campaign,
 * with its text; nobody else got one; every sent row of the campaign has
 * exactly one successful record entry, from the row's device; sent rows =
 * group size. Returns the number of problems (printed). */
static int check_once(const char *campaign, const group *g, const sc_send *s, size_t n)
{
    int bad = 0;
    int *got = calloc((size_t)g->n, sizeof *got);
    for (size_t k = 0; k < n; k++) {
        if (strcmp(s[k].campaign, campaign) || !s[k].ok)
            continue;
        int i = -1;
        if (!strncmp(s[k].to, "+6012", 5))
            i = atoi(s[k].to + 5) - g->base;
        if (i < 0 || i >= g->n) {
            if (bad++ < 10)
                fprintf(stderr, "%s: unexpected send to %s\n", g->niche, s[k].to);
            continue;
        }
        got[i]++;
        char want[64];
        snprintf(want, sizeof want, "Hi Lead %s-%d", g->niche, i);
        if (strcmp(s[k].text, want) && bad++ < 10)
            fprintf(stderr, "%s: %s got \"%s\", want \"%s\"\n", g->niche, s[k].to, s[k].text,
                    want);
    }
    for (int i = 0; i < g->n; i++)
        if (got[i] != 1 && bad++ < 10)
            fprintf(stderr, "%s: +6012%07d received %d messages, want 1\n", g->niche, g->base + i,
                    got[i]);
    free(got);
    PGresult *r = wt_sql(db,
                         "SELECT id, coalesce(device_id::text, '') FROM broadcast_messages"
                         " WHERE campaign_id = '%s' AND status IN ('sent', 'delivered', 'read')",
                         campaign);
    if (PQntuples(r) != g->n) {
        fprintf(stderr, "%s: %d sent rows, want %d\n", g->niche, PQntuples(r), g->n);
        bad++;
    }
    for (int i = 0; i < PQntuples(r); i++) {
        long long msg = atoll(PQgetvalue(r, i, 0));
        int hits = 0;
        const char *dev = "";
        for (size_t k = 0; k < n; k++)
            if (s[k].msg == msg && s[k].ok) {
                hits++;
                dev = s[k].device;
            }
        if ((hits != 1 || strcmp(dev, PQgetvalue(r, i, 1))) && bad++ < 10)
            fprintf(stderr, "%s: message %lld: %d successful record entries (device %s, row %s)\n",
                    g->niche, msg, hits, dev, PQgetvalue(r, i, 1));
    }
    PQclear(r);
    return bad;
}

/* ---- the local day ----------------------------------------------------------------------------- */

/* Daily counts only mean something when the device's local day did not turn
 * during the test: the test notes the day at its start and skips (rather
 * than passes or fails) when it changed. */
static char day_start[32];

static void day_mark(const char *tz)
{
    PGresult *r = wt_sql(db, "SELECT (now() AT TIME ZONE '%s')::date", tz);
    snprintf(day_start, sizeof day_start, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

static void day_check(const char *tz)
{
    PGresult *r = wt_sql(db, "SELECT (now() AT TIME ZONE '%s')::date", tz);
    bool same = !strcmp(day_start, PQgetvalue(r, 0, 0));
    PQclear(r);
    if (!same) {
        fprintf(stderr, "the local day in %s turned during the test: counts per day are moot\n",
                tz);
        skip();
    }
}

/* ---- metrics ------------------------------------------------------------------------------------ */

/* Sum of the samples of a metric on the sender's /metrics whose line contains
 * label (NULL: all); -1 when the page cannot be read, -2 when no sample. */
static double metric(const char *name, const char *label)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", sender_port);
    resp r;
    if (http("GET", url, NULL, 0, NULL, &r) != 200) {
        resp_free(&r);
        return -1;
    }
    size_t len = strlen(name);
    double sum = 0;
    bool seen = false;
    for (char *line = r.body; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (!strncmp(line, name, len) && (line[len] == ' ' || line[len] == '{') &&
            (!label || strstr(line, label))) {
            const char *v = strrchr(line, ' ');
            if (v) {
                sum += strtod(v + 1, NULL);
                seen = true;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    resp_free(&r);
    return seen ? sum : -2;
}

/* ---- 1: daily cap -------------------------------------------------------------------------------- */

static void test_daily_cap_moves_to_other_device(void **state)
{
    (void)state;
    int bad = 0;
    const char *tz = "Asia/Kuala_Lumpur";
    char user[40], d1[40], d2[40], c[40];
    const group g = {"cap", 1000, 40};
    new_user("cap", user);
    /* d1 counts its day in Kuala Lumpur (UTC+8), so its rest ends at a local
     * midnight that is not a UTC one. */
    new_device(d1, user, "d1-capped", 0.02, 0.04, "{}", "daily_limit, time_zone", "10, 'Asia/Kuala_Lumpur'");
    new_device(d2, user, "d2-free", 0.02, 0.04, "{}", NULL, NULL);
    add_leads(user, d1, &g);
    day_mark(tz);
    new_campaign(user, g.niche, NULL, NULL, c);
    start_daemons(NULL);

    const char *ids[] = {c};
    must_finish(ids, 1, 40000);
    MUST_SQL(10000, "d1 resting for its daily limit",
             "SELECT count(*) FROM user_devices WHERE id = '%s' AND resting_until > now()"
             " AND status_reason LIKE 'daily limit%%' AND sent_today = 10",
             d1);
    day_check(tz);

    size_t n;
    sc_send *s = rec_read(&n);
    long d1_ok = rec_count(s, n, c, d1, 1), d2_ok = rec_count(s, n, c, d2, 1);
    fprintf(stderr, "d1 sent %ld, d2 sent %ld\n", d1_ok, d2_ok);
    CHECK(d1_ok == 10, "d1 sent %ld, its daily limit is 10", d1_ok);
    CHECK(d2_ok == 30, "d2 sent %ld, want the other 30", d2_ok);
    bad += check_once(c, &g, s, n);
    sc_sends_free(s, n);

    CHECK(lsql("SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'", c) == 1,
          "campaign not finished");
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND status = 'online'", d1) == 1,
          "d1 is not online (a daily limit is a rest, not an outage)");
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND cap_today = 10", d1) == 1,
          "d1 cap_today is not 10");
    /* The next local midnight in the device's zone (to the second). */
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND abs(extract(epoch FROM"
               " resting_until - (((now() AT TIME ZONE time_zone)::date + 1)::timestamp"
               " AT TIME ZONE time_zone))) < 1",
               d1) == 1,
          "d1 resting_until is not the next midnight in %s", tz);
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND resting_until IS NULL", d2) ==
              1,
          "d2 (no daily limit) is resting");
    report(bad);
}

static void test_daily_cap_waits_then_resumes(void **state)
{
    (void)state;
    int bad = 0;
    char user[40], d[40], c[40];
    const group g = {"wait", 1000, 12};
    new_user("single", user);
    new_device(d, user, "only", 0.02, 0.04, "{}", "daily_limit", "5");
    add_leads(user, d, &g);
    day_mark("UTC");
    new_campaign(user, g.niche, NULL, NULL, c);
    start_daemons(NULL);

    /* Positive condition: 5 sent (record and rows), the device resting and the
     * campaign saying it waits. Only then is "nothing more" meaningful. */
    must_record(c, d, 1, 5, 30000, "5 sends in the record");
    MUST_SQL(15000, "5 sent rows",
             "SELECT (count(*) >= 5)::int FROM broadcast_messages WHERE campaign_id = '%s'"
             " AND status = 'sent'",
             c);
    MUST_SQL(15000, "the device resting for its daily limit",
             "SELECT count(*) FROM user_devices WHERE id = '%s' AND resting_until > now()"
             " AND status_reason LIKE 'daily limit%%'",
             d);
    MUST_SQL(15000, "the campaign waiting",
             "SELECT count(*) FROM campaigns WHERE id = '%s' AND status_reason LIKE 'waiting%%'", c);
    day_check("UTC");

    size_t n;
    sc_send *s = rec_read(&n);
    long sent = rec_count(s, n, c, NULL, 1), attempts = rec_count(s, n, c, NULL, -1);
    sc_sends_free(s, n);
    CHECK(sent == 5, "%ld sends with a daily limit of 5", sent);
    CHECK(attempts == 5, "%ld attempts in the record, want the 5 sends only", attempts);
    CHECK(lsql("SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
               " AND status = 'sent'",
               c) == 5,
          "not exactly 5 sent rows");
    CHECK(lsql("SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'processing'", c) == 1,
          "the waiting campaign is not processing");
    CHECK(lsql("SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
               " AND status = 'queued'",
               c) == 7,
          "the 7 others are not all queued");
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND sent_today = 5"
               " AND cap_today = 5 AND status = 'online'",
               d) == 1,
          "device row does not show sent_today 5, cap_today 5, online");
    if (bad)
        report(bad);

    /* The dashboard raises the limit: the rest goes out. */
    PQclear(wt_sql(db, "UPDATE user_devices SET daily_limit = 100 WHERE id = '%s'", d));
    const char *ids[] = {c};
    must_finish(ids, 1, 20000);
    MUST_SQL(10000, "the device no longer resting, sent_today 12, cap_today 100",
             "SELECT count(*) FROM user_devices WHERE id = '%s' AND resting_until IS NULL"
             " AND sent_today = 12 AND cap_today = 100",
             d);
    day_check("UTC");
    s = rec_read(&n);
    bad += check_once(c, &g, s, n);
    CHECK(rec_count(s, n, c, NULL, -1) == 12, "%ld attempts in the record, want 12",
          rec_count(s, n, c, NULL, -1));
    sc_sends_free(s, n);
    CHECK(lsql("SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'"
               " AND coalesce(status_reason, '') NOT LIKE 'waiting%%'",
               c) == 1,
          "campaign not finished, or still says waiting");
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s'"
               " AND coalesce(status_reason, '') NOT LIKE 'daily limit%%'",
               d) == 1,
          "device still says daily limit");
    report(bad);
}

/* ---- 2: warm-up ---------------------------------------------------------------------------------- */

typedef struct warm_case {
    const char *label;
    const char *cols, *vals; /* extra device columns */
    int cap;                 /* -1: none */
    char user[40], device[40], campaign[40];
} warm_case;

static void test_warmup(void **state)
{
    (void)state;
    int bad = 0;
    /* Schedule {4,8}, device day in UTC, 15 leads each. */
    warm_case cases[] = {
        {"day1", "warmup_schedule, warmup_started_on",
         "'{4,8}', (now() AT TIME ZONE 'UTC')::date", 4, "", "", ""},
        {"day2", "warmup_schedule, warmup_started_on",
         "'{4,8}', (now() AT TIME ZONE 'UTC')::date - 1", 8, "", "", ""},
        {"day6", "warmup_schedule, warmup_started_on",
         "'{4,8}', (now() AT TIME ZONE 'UTC')::date - 5", -1, "", "", ""},
        /* No start date: the local date of created_at (yesterday) is day 1. */
        {"created", "warmup_schedule, created_at", "'{4,8}', now() - interval '1 day'", 8, "", "",
         ""},
        /* Day 2 of the warm-up (8) and a daily limit of 6: the smaller. */
        {"both", "warmup_schedule, warmup_started_on, daily_limit",
         "'{4,8}', (now() AT TIME ZONE 'UTC')::date - 1, 6", 6, "", "", ""},
    };
    int ncases = (int)(sizeof cases / sizeof cases[0]);
    day_mark("UTC");
    for (int k = 0; k < ncases; k++) {
        warm_case *w = &cases[k];
        group g = {w->label, 1000 + 100 * k, 15};
        new_user(w->label, w->user);
        new_device(w->device, w->user, w->label, 0.02, 0.04, "{}", w->cols, w->vals);
        add_leads(w->user, w->device, &g);
        new_campaign(w->user, w->label, NULL, NULL, w->campaign);
    }
    start_daemons(NULL);

    /* Positive conditions: the uncapped campaign finished; each capped device
     * sent its cap, rests for its daily limit, and its campaign waits. */
    for (int k = 0; k < ncases; k++) {
        warm_case *w = &cases[k];
        char what[128];
        snprintf(what, sizeof what, "%s: %d sends", w->label, w->cap < 0 ? 15 : w->cap);
        must_record(w->campaign, w->device, 1, w->cap < 0 ? 15 : w->cap, 40000, what);
        if (w->cap < 0) {
            const char *ids[] = {w->campaign};
            must_finish(ids, 1, 20000);
            continue;
        }
        snprintf(what, sizeof what, "%s: resting for its daily limit, campaign waiting", w->label);
        MUST_SQL(15000, what,
                 "SELECT count(*) FROM user_devices d, campaigns c WHERE d.id = '%s'"
                 " AND c.id = '%s' AND d.resting_until > now()"
                 " AND d.status_reason LIKE 'daily limit%%' AND c.status_reason LIKE 'waiting%%'",
                 w->device, w->campaign);
    }
    day_check("UTC");

    size_t n;
    sc_send *s = rec_read(&n);
    for (int k = 0; k < ncases; k++) {
        warm_case *w = &cases[k];
        long ok = rec_count(s, n, w->campaign, NULL, 1);
        long all = rec_count(s, n, NULL, w->device, -1);
        int want = w->cap < 0 ? 15 : w->cap;
        fprintf(stderr, "%s: %ld sent (want %d)\n", w->label, ok, want);
        CHECK(ok == want, "%s: %ld sent today, want %d", w->label, ok, want);
        CHECK(all == want, "%s: %ld record entries of the device, want %d", w->label, all, want);
        if (w->cap >= 0) {
            CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND sent_today = %d"
                       " AND cap_today = %d",
                       w->device, w->cap, w->cap) == 1,
                  "%s: sent_today/cap_today are not %d/%d", w->label, w->cap, w->cap);
            CHECK(lsql("SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                       " AND status = 'queued'",
                       w->campaign) == 15 - w->cap,
                  "%s: not %d messages queued", w->label, 15 - w->cap);
            CHECK(lsql("SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'processing'",
                       w->campaign) == 1,
                  "%s: campaign not processing", w->label);
        } else {
            group g = {w->label, 1000 + 100 * k, 15};
            bad += check_once(w->campaign, &g, s, n);
            CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND resting_until IS NULL",
                       w->device) == 1,
                  "%s: past its warm-up with no daily limit, yet resting", w->label);
        }
    }
    sc_sends_free(s, n);
    report(bad);
}

/* ---- 3: sending window ---------------------------------------------------------------------------- */

static void test_sending_window(void **state)
{
    (void)state;
    int bad = 0;
    char user[40], d[40], ids[2][40];
    const group closed = {"closed", 1000, 20}, open = {"open", 2000, 20};
    new_user("window", user);
    new_device(d, user, "d", 0.02, 0.04, "{}", NULL, NULL);
    add_leads(user, d, &closed);
    add_leads(user, d, &open);
    /* Wall clock in Kuala Lumpur: closed = [now+2h, now+3h), open = [now-1h,
     * now+1h); time + interval wraps at midnight, and the schema allows a
     * window that wraps, so both are valid at any hour. */
#define KL_PLUS(h) "((now() AT TIME ZONE 'Asia/Kuala_Lumpur')::time + interval '" h " hours')"
    const char *niches[] = {closed.niche, open.niche};
    const char *vals[] = {"'Asia/Kuala_Lumpur', " KL_PLUS("2") ", " KL_PLUS("3"),
                          "'Asia/Kuala_Lumpur', " KL_PLUS("-1") ", " KL_PLUS("1")};
    new_campaigns(user, 2, niches, "time_zone, send_window_start, send_window_end", vals, ids);
    const char *c_closed = ids[0], *c_open = ids[1];
    /* The test's own premise, through the schema's helper. */
    assert_int_equal(lsql("SELECT wacast_in_window(send_window_start, send_window_end, time_zone)"
                          "::int FROM campaigns WHERE id = '%s'",
                          c_closed),
                     0);
    assert_int_equal(lsql("SELECT wacast_in_window(send_window_start, send_window_end, time_zone)"
                          "::int FROM campaigns WHERE id = '%s'",
                          c_open),
                     1);
    start_daemons(NULL);

    /* Positive conditions: the open campaign (same device) finished, so the
     * device was sending; the closed one has its 20 rows and says why it
     * waits. */
    const char *open_ids[] = {c_open};
    must_finish(open_ids, 1, 30000);
    MUST_SQL(15000, "the closed campaign expanded and outside its sending window",
             "SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'processing'"
             " AND status_reason LIKE 'outside sending window%%'"
             " AND (SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s') = 20",
             c_closed, c_closed);

    size_t n;
    sc_send *s = rec_read(&n);
    long leaked = rec_count(s, n, c_closed, NULL, -1);
    CHECK(leaked == 0, "%ld record entries of the campaign outside its window", leaked);
    bad += check_once(c_open, &open, s, n);
    sc_sends_free(s, n);
    CHECK(lsql("SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
               " AND status NOT IN ('pending', 'queued')",
               c_closed) == 0,
          "messages of the campaign outside its window moved on");
    CHECK(lsql("SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'"
               " AND coalesce(status_reason, '') = ''",
               c_open) == 1,
          "the campaign inside its window is not finished cleanly");
    if (bad)
        report(bad);

    /* The dashboard moves the window over now. */
    PQclear(wt_sql(db,
                   "UPDATE campaigns SET send_window_start = " KL_PLUS("-1") ", send_window_end = "
                   KL_PLUS("1") " WHERE id = '%s'",
                   c_closed));
    const char *closed_ids[] = {c_closed};
    must_finish(closed_ids, 1, 30000);
    MUST_SQL(10000, "the window reason cleared",
             "SELECT count(*) FROM campaigns WHERE id = '%s' AND coalesce(status_reason, '') = ''",
             c_closed);
    s = rec_read(&n);
    bad += check_once(c_closed, &closed, s, n);
    sc_sends_free(s, n);
    CHECK(lsql("SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'", c_closed) ==
              1,
          "campaign not finished");
#undef KL_PLUS
    report(bad);
}

/* ---- 4: recipient gap ----------------------------------------------------------------------------- */

static int cmp_ts(const void *a, const void *b)
{
    const sc_send *x = a, *y = b;
    return x->ts_us < y->ts_us ? -1 : x->ts_us > y->ts_us;
}

static void test_recipient_gap(void **state)
{
    (void)state;
    int bad = 0;
    /* The gap is 3 s (not 2) so that the 20 other messages plus the first
     * round (25 sends at 0.05-0.06 s, ~1.4 s) fit well inside it: "not held
     * up" then means they all go out before any second send to a gapped
     * phone, while a device that waited for the gap would push them after. */
    const double gap_s = 3.0;
    char user[40], d[40], ids[3][40];
    const group gapped = {"gap", 1000, 5}, other = {"other", 2000, 20};
    new_user("gap", user);
    char vals[32];
    snprintf(vals, sizeof vals, "%.3f", gap_s);
    new_device(d, user, "d", 0.05, 0.06, "{}", "recipient_gap_seconds", vals);
    add_leads(user, d, &gapped);
    add_leads(user, d, &other);
    const char *niches[] = {gapped.niche, gapped.niche, other.niche};
    new_campaigns(user, 3, niches, NULL, NULL, ids);
    start_daemons(NULL);
    must_finish((const char *const[]){ids[0], ids[1], ids[2]}, 3, 40000);

    size_t n;
    sc_send *s = rec_read(&n);
    bad += check_once(ids[0], &gapped, s, n);
    bad += check_once(ids[1], &gapped, s, n);
    bad += check_once(ids[2], &other, s, n);
    qsort(s, n, sizeof *s, cmp_ts);
    /* Per phone: its sends (any campaign), in time order, gap_s apart. */
    long long first_second_round = -1; /* earliest later send to a gapped phone */
    for (int i = 0; i < gapped.n; i++) {
        char phone[24];
        snprintf(phone, sizeof phone, "+6012%07d", gapped.base + i);
        long long prev = -1;
        int k = 0;
        for (size_t j = 0; j < n; j++) {
            if (strcmp(s[j].to, phone) || !s[j].ok)
                continue;
            if (prev >= 0) {
                long long dt = s[j].ts_us - prev;
                fprintf(stderr, "%s: %.3f s between its sends\n", phone, (double)dt / 1e6);
                CHECK(dt >= (long long)(gap_s * 1e6), "%s: two sends %.3f s apart, gap is %.1f s",
                      phone, (double)dt / 1e6, gap_s);
                if (first_second_round < 0 || s[j].ts_us < first_second_round)
                    first_second_round = s[j].ts_us;
            }
            prev = s[j].ts_us;
            k++;
        }
        CHECK(k == 2, "%s: %d sends, want 2", phone, k);
    }
    long long last_other = -1, first_any = n ? s[0].ts_us : 0;
    for (size_t j = 0; j < n; j++)
        if (!strcmp(s[j].campaign, ids[2]) && s[j].ts_us > last_other)
            last_other = s[j].ts_us;
    fprintf(stderr, "other campaign done at +%.3f s, first second-round send at +%.3f s\n",
            (double)(last_other - first_any) / 1e6, (double)(first_second_round - first_any) / 1e6);
    CHECK(last_other < first_second_round,
          "the other messages were held up: last at +%.3f s, first second-round send at +%.3f s",
          (double)(last_other - first_any) / 1e6, (double)(first_second_round - first_any) / 1e6);
    sc_sends_free(s, n);
    report(bad);
}

/* ---- 4b: pacing across a sender killed between a send and its report ---------------------- */

static bool record_has_one(void *arg)
{
    (void)arg;
    redisReply *r = redisCommand(rcx, "XLEN wacast:sim:sends");
    bool ok = r && r->type == REDIS_REPLY_INTEGER && r->integer >= 1;
    if (r)
        freeReplyObject(r);
    return ok;
}

/* The sender holding the device is killed after the provider took a message
 * and before the sender recorded the outcome (the sim answers 4 s after it
 * records the send). The next sender must not send the device's next message
 * sooner than min_delay after that send, though the last send time it finds
 * from reports is an older one: the claim left a floor for it. And the
 * message in doubt is not sent twice (its status webhook settles it). */
static void test_pacing_survives_kill_mid_send(void **state)
{
    (void)state;
    int bad = 0;
    const double min_delay = 6.0;
    char user[40], d[40], id[40];
    const group g = {"mid", 3000, 2};
    new_user("mid", user);
    new_device(d, user, "d", min_delay, min_delay + 0.2, "{\"sim_latency_ms\": 4000}", NULL, NULL);
    add_leads(user, d, &g);
    new_campaign(user, g.niche, NULL, NULL, id);
    const char *a_env[] = {"WACAST_INSTANCE_ID=sender-a", "WACAST_SIM_CALLBACKS=sent", NULL};
    const char *b_env[] = {"WACAST_INSTANCE_ID=sender-b", "WACAST_SIM_CALLBACKS=sent", NULL};
    pid_t a = start_daemons(a_env);
    if (!wt_wait_for(record_has_one, NULL, 30000))
        give_up("the first send");
    assert_int_equal(wt_signal(&env, a, SIGKILL), 0);
    struct timespec killed;
    clock_gettime(CLOCK_REALTIME, &killed);
    spawn_sender("sender-b", b_env);
    must_finish((const char *const[]){id}, 1, 60000);

    size_t n;
    sc_send *s = rec_read(&n);
    bad += check_once(id, &g, s, n);
    CHECK(n == 2, "%zu sends in the record, want 2", n);
    if (n == 2) {
        double gap = (double)(s[1].ts_us - s[0].ts_us) / 1e6;
        fprintf(stderr,
                "first send by %s, second by %s %.3f s later (killed %.3f s after the first)\n",
                s[0].sender, s[1].sender, gap,
                (double)killed.tv_sec + killed.tv_nsec / 1e9 - (double)s[0].ts_us / 1e6);
        CHECK(!strcmp(s[0].sender, "sender-a") && !strcmp(s[1].sender, "sender-b"),
              "sends by %s then %s, want sender-a then sender-b", s[0].sender, s[1].sender);
        CHECK(gap >= min_delay, "second send %.3f s after the first, min_delay is %.1f s", gap,
              min_delay);
    }
    sc_sends_free(s, n);
    report(bad);
}

/* ---- 5: circuit breaker -------------------------------------------------------------------------- */

static bool sender_holds_one(void *arg)
{
    (void)arg;
    return metric("wacast_sender_devices_held", NULL) == 1;
}

static void test_breaker(void **state)
{
    (void)state;
    int bad = 0;
    char user[40], a[40], b[40], c1[40], c2[40];
    const group g1 = {"brk1", 1000, 30}, g2 = {"brk2", 2000, 20};
    new_user("breaker", user);
    new_device(a, user, "a-failing", 0.02, 0.04,
               "{\"sim_failure_rate\": 1, \"sim_fail_mode\": \"transient\"}", NULL, NULL);
    new_device(b, user, "b-healthy", 0.05, 0.08, "{}", NULL, NULL);
    add_leads(user, a, &g1);
    add_leads(user, a, &g2);
    new_campaign(user, g1.niche, NULL, NULL, c1);
    /* The rest doubles from 1 s up to 4 s. */
    const char *extra[] = {"WACAST_BREAKER_FAILURES=3", "WACAST_BREAKER_REST_MS=1000",
                           "WACAST_BREAKER_REST_MAX_MS=4000", NULL};
    start_daemons(extra);

    MUST_SQL(20000, "a's circuit open",
             "SELECT count(*) FROM user_devices WHERE id = '%s' AND resting_until > now()"
             " AND status_reason LIKE 'circuit open%%'",
             a);
    const char *ids1[] = {c1};
    must_finish(ids1, 1, 40000);

    size_t n;
    sc_send *s = rec_read(&n);
    long a_ok = rec_count(s, n, NULL, a, 1), a_failed = rec_count(s, n, NULL, a, 0);
    long b_ok = rec_count(s, n, c1, b, 1);
    fprintf(stderr, "campaign 1: a %ld ok / %ld failed attempts, b %ld ok\n", a_ok, a_failed, b_ok);
    bad += check_once(c1, &g1, s, n);
    CHECK(a_ok == 0, "the failing device succeeded %ld times", a_ok);
    CHECK(b_ok == g1.n, "b sent %ld, want all %d", b_ok, g1.n);
    /* 3 failures open the breaker; after that one probe per rest (1, 2, 4,
     * 4, ... s) while campaign 1 runs (~3 s on b): a handful. 12 leaves room
     * for a slow run and is far below 30 (one failure per message) or 150
     * (every message failing its 5 attempts on a). */
    CHECK(a_failed >= 3, "a failed only %ld times: it never reached the breaker", a_failed);
    CHECK(a_failed <= 12, "a failed %ld times: the breaker did not stop it", a_failed);
    sc_sends_free(s, n);
    double opened = metric("wacast_sender_breaker_opened_total", NULL);
    fprintf(stderr, "wacast_sender_breaker_opened_total %g\n", opened);
    CHECK(opened >= 1, "wacast_sender_breaker_opened_total is %g", opened);
    if (bad)
        report(bad);

    /* The operator fixes a and removes b, so that campaign 2 can only go out
     * from a: its messages wait while a rests, and a's probe after the rest
     * (on a transport reopened with the new settings) decides. */
    PQclear(wt_sql(db, "UPDATE user_devices SET settings = '{}' WHERE id = '%s'", a));
    PQclear(wt_sql(db, "DELETE FROM user_devices WHERE id = '%s'", b));
    if (!wt_wait_for(sender_holds_one, NULL, 10000))
        give_up("the sender releasing the deleted device b");
    new_campaign(user, g2.niche, NULL, NULL, c2);
    const char *ids2[] = {c2};
    must_finish(ids2, 1, 40000);
    MUST_SQL(10000, "a's circuit closed",
             "SELECT count(*) FROM user_devices WHERE id = '%s' AND resting_until IS NULL"
             " AND coalesce(status_reason, '') = ''",
             a);
    s = rec_read(&n);
    bad += check_once(c2, &g2, s, n);
    long a_ok2 = rec_count(s, n, c2, a, 1);
    CHECK(a_ok2 == g2.n, "a sent %ld of campaign 2, want %d", a_ok2, g2.n);
    sc_sends_free(s, n);
    CHECK(lsql("SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'", c2) == 1,
          "campaign 2 not finished");
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND status = 'online'", a) == 1,
          "a not online");
    report(bad);
}

static void test_breaker_ignores_permanent_failures(void **state)
{
    (void)state;
    int bad = 0;
    char user[40], p[40], c[40];
    const group g = {"perm", 1000, 10};
    new_user("permanent", user);
    new_device(p, user, "p-rejecting", 0.02, 0.04, "{\"sim_failure_rate\": 1}", NULL, NULL);
    add_leads(user, p, &g);
    new_campaign(user, g.niche, NULL, NULL, c);
    const char *extra[] = {"WACAST_BREAKER_FAILURES=3", "WACAST_BREAKER_REST_MS=1000", NULL};
    start_daemons(extra);
    const char *ids[] = {c};
    must_finish(ids, 1, 30000);

    size_t n;
    sc_send *s = rec_read(&n);
    long failed = rec_count(s, n, c, p, 0), ok = rec_count(s, n, c, p, 1);
    sc_sends_free(s, n);
    fprintf(stderr, "permanent: %ld failed attempts, %ld ok\n", failed, ok);
    /* Each message is the message's fault: one attempt each, all on p. */
    CHECK(failed == g.n && ok == 0, "%ld failed / %ld ok attempts, want %d / 0", failed, ok, g.n);
    CHECK(lsql("SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
               " AND status = 'failed'",
               c) == g.n,
          "not every message failed");
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND resting_until IS NULL"
               " AND coalesce(status_reason, '') NOT LIKE 'circuit open%%'",
               p) == 1,
          "permanent failures opened the breaker");
    double opened = metric("wacast_sender_breaker_opened_total", NULL);
    CHECK(opened == 0, "wacast_sender_breaker_opened_total is %g, want 0", opened);
    report(bad);
}

/* With the default configuration (WACAST_BREAKER_FAILURES 5, as many as
 * WACAST_MAX_ATTEMPTS) a dead device's failures are all retries of its first
 * message; the breaker opening must still hand that message to the healthy
 * device like the rest (spec: its queued messages go to other healthy
 * devices; failover: each exactly once), not fail it for good. */
static void test_breaker_defaults_lose_nothing(void **state)
{
    (void)state;
    int bad = 0;
    char user[40], a[40], b[40], c[40];
    const group g = {"dflt", 1000, 10};
    new_user("defaults", user);
    new_device(a, user, "a-failing", 0.02, 0.04,
               "{\"sim_failure_rate\": 1, \"sim_fail_mode\": \"transient\"}", NULL, NULL);
    new_device(b, user, "b-healthy", 0.02, 0.04, "{}", NULL, NULL);
    add_leads(user, a, &g);
    new_campaign(user, g.niche, NULL, NULL, c);
    start_daemons(NULL);
    const char *ids[] = {c};
    must_finish(ids, 1, 45000);
    print_rows("messages", "SELECT status, error_code, attempts, count(*) FROM broadcast_messages"
                           " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3");
    size_t n;
    sc_send *s = rec_read(&n);
    bad += check_once(c, &g, s, n);
    CHECK(rec_count(s, n, c, b, 1) == g.n, "b sent %ld, want all %d", rec_count(s, n, c, b, 1),
          g.n);
    sc_sends_free(s, n);
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s'"
               " AND status_reason LIKE 'circuit open%%'",
               a) == 1,
          "a's circuit is not open");
    report(bad);
}

/* ---- 6: fairness ---------------------------------------------------------------------------------- */

static void test_fairness(void **state)
{
    (void)state;
    int bad = 0;
    const double min_delay = 0.02;
    char user[40], d[40], ids[2][40];
    const group ga = {"fa", 1000, 60}, gb = {"fb", 2000, 60};
    new_user("fair", user);
    new_device(d, user, "d", min_delay, 0.03, "{}", NULL, NULL);
    add_leads(user, d, &ga);
    add_leads(user, d, &gb);
    const char *niches[] = {ga.niche, gb.niche};
    new_campaigns(user, 2, niches, NULL, NULL, ids);
    start_daemons(NULL);
    must_finish((const char *const[]){ids[0], ids[1]}, 2, 40000);

    size_t n;
    sc_send *s = rec_read(&n);
    bad += check_once(ids[0], &ga, s, n);
    bad += check_once(ids[1], &gb, s, n);
    qsort(s, n, sizeof *s, cmp_ts);
    /* The device's sequence: 'A' or 'B' per entry. */
    char *seq = calloc(n + 1, 1);
    long first[2] = {-1, -1}, last[2] = {-1, -1};
    for (size_t i = 0; i < n; i++) {
        int k = !strcmp(s[i].campaign, ids[1]);
        seq[i] = k ? 'B' : 'A';
        if (first[k] < 0)
            first[k] = (long)i;
        last[k] = (long)i;
    }
    fprintf(stderr, "device sequence: %s\n", seq);
    /* From the moment both campaigns have sent (the later first send) until
     * one runs out (the earlier last send). Bound 2, not 1: a message of one
     * campaign may reach the device's queue a moment later than the other's
     * (two campaigns are expanded and routed one after the other), which can
     * let the other campaign send twice in a row at that boundary; a device
     * that serves its queue first-in first-out gives runs of up to 60. */
    long from = first[0] > first[1] ? first[0] : first[1];
    long to = last[0] < last[1] ? last[0] : last[1];
    int longest = 0, run = 0;
    for (long i = from; i <= to && i >= 0; i++) {
        run = i > from && seq[i] == seq[i - 1] ? run + 1 : 1;
        if (run > longest)
            longest = run;
    }
    fprintf(stderr, "shared stretch [%ld, %ld], longest run of one campaign %d\n", from, to,
            longest);
    /* The stretch must be real: both campaigns sharing the device for most of
     * their messages (with FIFO it would be empty). */
    CHECK(to - from + 1 >= 60, "the campaigns shared the device for %ld sends only",
          to - from + 1);
    CHECK(longest <= 2, "a run of %d sends of one campaign while both had messages", longest);
    int short_gaps = 0;
    for (size_t i = 1; i < n; i++) {
        long long dt = s[i].ts_us - s[i - 1].ts_us;
        if (dt < (long long)(min_delay * 1e6) && short_gaps++ < 10)
            fprintf(stderr, "%lld us between sends %zu (%c) and %zu (%c)\n", dt, i - 1,
                    seq[i - 1], i, seq[i]);
    }
    CHECK(short_gaps == 0, "%d gaps under the device's min delay across both campaigns",
          short_gaps);
    free(seq);
    sc_sends_free(s, n);
    report(bad);
}

/* ---- 7: health ------------------------------------------------------------------------------------ */

typedef struct bands_arg {
    double low, high, all;
} bands_arg;

static bool bands_agree(void *arg)
{
    bands_arg *b = arg;
    double v[5];
    const char *names[] = {"\"0-19\"", "\"20-39\"", "\"40-59\"", "\"60-79\"", "\"80-100\""};
    for (int i = 0; i < 5; i++) {
        char label[32];
        snprintf(label, sizeof label, "band=%s", names[i]);
        v[i] = metric("wacast_sender_devices_health", label);
        if (v[i] < 0)
            return false;
    }
    b->low = v[0] + v[1] + v[2];
    b->high = v[4];
    b->all = v[0] + v[1] + v[2] + v[3] + v[4];
    return b->low == 1 && b->high == 1 && b->all == 2;
}

static void test_health(void **state)
{
    (void)state;
    int bad = 0;
    char user[40], f[40], h[40], c[40];
    const group gf = {"hf", 1000, 20}, gh = {"hh", 2000, 20};
    new_user("health", user);
    new_device(f, user, "f-failing", 0.02, 0.04,
               "{\"sim_failure_rate\": 1, \"sim_fail_mode\": \"transient\"}", NULL, NULL);
    new_device(h, user, "h-healthy", 0.02, 0.04, "{}", NULL, NULL);
    add_leads(user, f, &gf);
    add_leads(user, h, &gh);
    /* Both groups in one campaign: niche NULL is any niche. */
    PGresult *r = wt_sql(db,
                         "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                         " VALUES ('%s', 'c0-health', 'Hi {{name}}', now()) RETURNING id",
                         user);
    snprintf(c, sizeof c, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    start_daemons(NULL);

    MUST_SQL(30000, "the failing device's health below 50",
             "SELECT count(*) FROM user_devices WHERE id = '%s' AND health_score < 50", f);
    const char *ids[] = {c};
    must_finish(ids, 1, 40000);
    size_t n;
    sc_send *s = rec_read(&n);
    long h_ok = rec_count(s, n, c, h, 1), f_failed = rec_count(s, n, c, f, 0);
    sc_sends_free(s, n);
    fprintf(stderr, "healthy device %ld sends, failing device %ld failed attempts\n", h_ok,
            f_failed);
    CHECK(h_ok >= gh.n, "the healthy device sent %ld, want at least its own %d", h_ok, gh.n);
    CHECK(f_failed >= 1, "the failing device never tried");
    print_rows("messages", "SELECT status, error_code, attempts, count(*) FROM broadcast_messages"
                           " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3");
    PGresult *hr = wt_sql(db, "SELECT device_name, health_score FROM user_devices ORDER BY 1");
    for (int i = 0; i < PQntuples(hr); i++)
        fprintf(stderr, "%s: health_score %s\n", PQgetvalue(hr, i, 0), PQgetvalue(hr, i, 1));
    PQclear(hr);
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND health_score >= 90", h) == 1,
          "the healthy device's health_score is below 90");
    CHECK(lsql("SELECT count(*) FROM user_devices WHERE id = '%s' AND health_score < 50", f) == 1,
          "the failing device's health_score went back to 50 or more");
    bands_arg b = {0};
    if (!wt_wait_for(bands_agree, &b, 10000)) {
        fprintf(stderr, "health bands: low (0-59) %g, 80-100 %g, all %g; want 1, 1, 2\n", b.low,
                b.high, b.all);
        bad++;
    }
    report(bad);
}

int main(int argc, char **argv)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
#define T(fn) cmocka_unit_test_setup_teardown(fn, env_setup, env_teardown)
    const struct CMUnitTest tests[] = {
        T(test_daily_cap_moves_to_other_device),
        T(test_daily_cap_waits_then_resumes),
        T(test_warmup),
        T(test_sending_window),
        T(test_recipient_gap),
        T(test_pacing_survives_kill_mid_send),
        T(test_breaker),
        T(test_breaker_ignores_permanent_failures),
        T(test_breaker_defaults_lose_nothing),
        T(test_fairness),
        T(test_health),
    };
#undef T
    int rc = cmocka_run_group_tests_name("limits", tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
