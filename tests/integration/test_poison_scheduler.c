/* The scheduler's part of "one tenant's bad data never stalls, duplicates or
 * loses anyone's messages", on real redis-server and PostgreSQL.
 *
 * reconciler: a user whose devices are all away has queued messages whose
 * Redis markers are gone. Two schedulers run the reconciler every 100 ms;
 * each row is put on the jobs stream once per WACAST_RECONCILE_AFTER_S, not
 * once per round, and never by both schedulers. Rounds are observed, not
 * slept through: a fresh stuck row is added and the test waits until it is
 * republished, which takes one more round.
 *
 * poison: one tenant's campaign holds leads whose data broke the page INSERT
 * (a 300-character multibyte phone, a name that makes the message too long,
 * a lead whose message PostgreSQL refuses, here by a trigger of the test's
 * own), next to a second
 * tenant's ordinary campaign; both reach a final status with exact counts,
 * the bad leads skipped with a reason, every good lead sent once. A campaign
 * whose failure reason quotes its own junk time zone fails with the reason.
 * A third tenant's campaign whose every message PostgreSQL refuses blames no
 * lead: it waits, and finishes once the refusal is lifted.
 *
 * cursors: the feeder's per-campaign cursor of a finished campaign is pruned
 * within seconds (wacast_scheduler_feed_cursors on /metrics goes back to 0),
 * not kept until the feeder's reset once a minute. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"

static wt_env env;
static PGconn *db;

static void insert_id(char *out, size_t outlen, PGresult *r)
{
    snprintf(out, outlen, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* SIGTERM stops every daemon with exit status 0 (under the sanitizers that
 * also means no leak on the way out). */
static void test_daemons_stop_cleanly(void **state)
{
    (void)state;
    assert_int_equal(e2e_stop_daemons_cleanly(&env), 0);
}

/* ---- reconciler ----------------------------------------------------------------------------- */

#define NSTUCK 40
#define NROUNDS 12
#define ROUND_TIMEOUT_MS 20000

static char away_user[40], away_campaign[40];
static int stuck_rows; /* queued rows of the campaign, all without a marker */

static long jobs_len(void)
{
    redisContext *rc = wt_redis(&env);
    redisReply *r = redisCommand(rc, "XLEN wacast:jobs");
    long n = r && r->type == REDIS_REPLY_INTEGER ? (long)r->integer : -1;
    if (r)
        freeReplyObject(r);
    redisFree(rc);
    return n;
}

/* A queued message whose last update is an hour old (the reconciler waits
 * 600 s): stuck, its marker gone with Redis data. */
static void add_stuck_row(void)
{
    PQclear(wt_sql(db,
                   "INSERT INTO broadcast_messages (campaign_id, user_id, lead_id,"
                   " recipient_phone, recipient_name, content, status, queued_at, updated_at)"
                   " VALUES ('%s', '%s', gen_random_uuid(), '+601100%05d', 'Away %d',"
                   " 'Hello Away %d', 'queued', now() - interval '1 hour',"
                   " now() - interval '1 hour')",
                   away_campaign, away_user, stuck_rows, stuck_rows, stuck_rows));
    stuck_rows++;
}

typedef struct len_arg {
    long want, got;
} len_arg;

static bool jobs_reached(void *arg)
{
    len_arg *a = arg;
    a->got = jobs_len();
    return a->got >= a->want;
}

static int setup_reconciler(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    insert_id(away_user, sizeof away_user,
              wt_sql(db, "INSERT INTO users (name) VALUES ('away') RETURNING id"));
    /* Its only devices are away: offline, never seen by a sender. */
    for (int k = 0; k < 2; k++)
        PQclear(wt_sql(db,
                       "INSERT INTO user_devices (user_id, device_name, platform, status)"
                       " VALUES ('%s', 'away-%d', 'sim', 'offline')",
                       away_user, k));
    insert_id(away_campaign, sizeof away_campaign,
              wt_sql(db,
                     "INSERT INTO campaigns (user_id, title, message, status, triggered_at,"
                     " claimed_by, claimed_at, total_count) VALUES ('%s', 'away', 'Hello',"
                     " 'processing', now(), 'gone', now(), %d) RETURNING id",
                     away_user, NSTUCK));
    for (int i = 0; i < NSTUCK; i++)
        add_stuck_row();
    static const char *extra[] = {"WACAST_LOG_LEVEL=info", "WACAST_RECONCILE_MS=100",
                                  "WACAST_RECONCILE_AFTER_S=600", NULL};
    for (int k = 0; k < 2; k++) {
        char name[32];
        snprintf(name, sizeof name, "scheduler-%d", k + 1);
        if (wt_spawn(&env, "wacast-scheduler", name, extra) < 0)
            return -1;
    }
    return 0;
}

static int teardown_env(void **state)
{
    (void)state;
    if (db)
        PQfinish(db);
    db = NULL;
    wt_env_stop(&env);
    memset(&env, 0, sizeof env);
    return 0;
}

/* Waits until the jobs stream holds want entries, then checks it holds
 * exactly that many. */
static int expect_jobs(long want, const char *when)
{
    len_arg a = {.want = want};
    bool reached = wt_wait_for(jobs_reached, &a, ROUND_TIMEOUT_MS);
    a.got = jobs_len();
    if (!reached || a.got != want) {
        fprintf(stderr, "%s: the jobs stream holds %ld entries, want %ld\n", when, a.got, want);
        wt_dump_logs(&env, 30);
        return 1;
    }
    return 0;
}

/* Each stuck row is republished once per period, whatever the number of
 * rounds and schedulers: after the first round NSTUCK entries; each later
 * round (made visible by one fresh stuck row) adds that row only. When the
 * period has passed again (the rows' updated_at moved back an hour), each
 * row is republished once more. */
static void test_republished_once_per_period(void **state)
{
    (void)state;
    long want = NSTUCK;
    int bad = expect_jobs(want, "first round");
    for (int k = 0; k < NROUNDS && !bad; k++) {
        add_stuck_row();
        want++;
        char when[64];
        snprintf(when, sizeof when, "after round %d", k + 2);
        bad += expect_jobs(want, when);
    }
    /* The period passes: every row is due again, once. */
    if (!bad) {
        PQclear(wt_sql(db,
                       "UPDATE broadcast_messages SET updated_at = now() - interval '1 hour'"
                       " WHERE campaign_id = '%s'",
                       away_campaign));
        want += stuck_rows;
        bad += expect_jobs(want, "next period");
    }
    for (int k = 0; k < 3 && !bad; k++) {
        add_stuck_row();
        want++;
        bad += expect_jobs(want, "a round in the next period");
    }
    long republished = wt_sql_long(db,
                                   "SELECT count(*) FROM broadcast_messages WHERE campaign_id ="
                                   " '%s' AND status = 'queued'",
                                   away_campaign);
    if (republished != stuck_rows) {
        fprintf(stderr, "%ld rows still queued, want %d\n", republished, stuck_rows);
        bad++;
    }
    assert_int_equal(bad, 0);
}

/* ---- poison leads ---------------------------------------------------------------------------- */

#define NGOOD 20 /* good leads of each tenant */
#define MAX_MESSAGE_BYTES 4096
#define FINAL_TIMEOUT_MS 45000 /* well under the 60 s a stale claim waits */

typedef struct good_lead {
    char name[32], e164[20];
} good_lead;

typedef struct tenant {
    char user[40], campaign[40];
    good_lead good[NGOOD];
} tenant;

static tenant poisoned, healthy, blocked;
static char zone_campaign[40]; /* the poisoned tenant's campaign with a junk time zone */

/* A bad lead of the poisoned tenant and the outcome it must get. */
typedef struct bad_lead {
    const char *label;
    char *name, *phone; /* SQL text, built at setup */
    const char *code;   /* error_code wanted */
    const char *says;   /* error_message must contain this */
    bool phoneless;     /* stored as "lead <id>": its phone was refused too */
} bad_lead;

static bad_lead bad_leads[] = {
    /* 300 three-byte characters: a cut at 100 bytes lands inside one. */
    {"multibyte phone", NULL, NULL, "invalid_phone", "invalid phone number '\u20ac\u20ac", false},
    /* Rendered, "Hello " and the name go past the limit in the middle of a
     * two-byte character. */
    {"name past the limit", NULL, NULL, "render_failed", "longer than", false},
    /* Refused by PostgreSQL itself (here a rule of the test's own; in life a
     * constraint or limit nobody foresaw): found by halving the page. */
    {"refused by PostgreSQL", NULL, NULL, "invalid_lead", "refused by the test's rule", false},
    /* Refused for its phone: its skipped message is refused too, until it
     * is written without the phone. */
    {"phone refused by PostgreSQL", NULL, NULL, "invalid_lead", "refused by the test's rule", true},
};
#define NBAD (int)(sizeof bad_leads / sizeof bad_leads[0])

static char *repeat(const char *unit, int n)
{
    size_t len = strlen(unit);
    char *out = malloc(len * (size_t)n + 1);
    for (int i = 0; i < n; i++)
        memcpy(out + len * (size_t)i, unit, len);
    out[len * (size_t)n] = '\0';
    return out;
}

static void add_tenant(tenant *t, const char *label, int prefix)
{
    insert_id(t->user, sizeof t->user,
              wt_sql(db, "INSERT INTO users (name) VALUES ('%s') RETURNING id", label));
    char devices[2][40];
    for (int k = 0; k < 2; k++)
        insert_id(devices[k], sizeof devices[k],
                  wt_sql(db,
                         "INSERT INTO user_devices (user_id, device_name, platform,"
                         " min_delay_seconds, max_delay_seconds) VALUES ('%s', '%s-%d', 'sim',"
                         " 0.01, 0.02) RETURNING id",
                         t->user, label, k));
    for (int i = 0; i < NGOOD; i++) {
        good_lead *g = &t->good[i];
        snprintf(g->name, sizeof g->name, "%s %d", label, i);
        snprintf(g->e164, sizeof g->e164, "+601%d00%04d", prefix, i + 1);
        PQclear(wt_sql(db,
                       "INSERT INTO leads (user_id, device_id, name, phone) VALUES"
                       " ('%s', '%s', '%s', '%s')",
                       t->user, devices[i % 2], g->name, g->e164));
    }
}

static int setup_poison(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    add_tenant(&poisoned, "Poisoned", 2);
    add_tenant(&healthy, "Healthy", 3);
    add_tenant(&blocked, "Blocked", 4);
    bad_leads[0].name = strdup("Euro");
    bad_leads[0].phone = repeat("\u20ac", 300);
    /* "Hello " is 6 bytes: 6 + 2 * 2046 = 4098 > 4096, the limit falls
     * between the two bytes of the 2046th character. */
    bad_leads[1].name = repeat("\u00fc", (MAX_MESSAGE_BYTES - 6) / 2 + 1);
    bad_leads[1].phone = strdup("+60124999999");
    bad_leads[2].name = strdup("Hemlock");
    bad_leads[2].phone = strdup("+60124999998");
    bad_leads[3].name = strdup("Nightshade");
    bad_leads[3].phone = strdup("+60124999997");
    /* The test's rule: PostgreSQL refuses a message that names Hemlock, one
     * to Nightshade's phone, and every message of a blocked user. */
    PQclear(wt_sql(db, "CREATE TABLE test_blocked_users (user_id uuid PRIMARY KEY)"));
    PQclear(wt_sql(db, "INSERT INTO test_blocked_users VALUES ('%s')", blocked.user));
    PQclear(wt_sql(db, "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
                       " BEGIN IF NEW.content LIKE '%%Hemlock%%'"
                       " OR NEW.recipient_phone = '+60124999997'"
                       " OR EXISTS (SELECT 1 FROM test_blocked_users b"
                       "  WHERE b.user_id = NEW.user_id) THEN"
                       " RAISE EXCEPTION 'message refused by the test''s rule'; END IF;"
                       " RETURN NEW; END $$"));
    PQclear(wt_sql(db, "CREATE TRIGGER test_refuse BEFORE INSERT ON broadcast_messages"
                       " FOR EACH ROW EXECUTE FUNCTION test_refuse()"));
    for (int i = 0; i < NBAD; i++)
        PQclear(wt_sql(db, "INSERT INTO leads (user_id, name, phone) VALUES ('%s', '%s', '%s')",
                       poisoned.user, bad_leads[i].name, bad_leads[i].phone));
    PQclear(wt_sql(db, "BEGIN"));
    insert_id(poisoned.campaign, sizeof poisoned.campaign,
              wt_sql(db,
                     "INSERT INTO campaigns (user_id, title, message) VALUES ('%s', 'poisoned',"
                     " 'Hello {{name}}') RETURNING id",
                     poisoned.user));
    insert_id(healthy.campaign, sizeof healthy.campaign,
              wt_sql(db,
                     "INSERT INTO campaigns (user_id, title, message, scheduled_at) VALUES"
                     " ('%s', 'healthy', 'Hello {{name}}', now() + interval '1 second')"
                     " RETURNING id",
                     healthy.user));
    insert_id(blocked.campaign, sizeof blocked.campaign,
              wt_sql(db,
                     "INSERT INTO campaigns (user_id, title, message) VALUES ('%s', 'blocked',"
                     " 'Hello {{name}}') RETURNING id",
                     blocked.user));
    /* A time zone of 'x' and 300 three-byte characters: the failure reason
     * quoting it is cut by its 512-byte buffer inside a character. */
    char *zone = repeat("\u20ac", 300);
    insert_id(zone_campaign, sizeof zone_campaign,
              wt_sql(db,
                     "INSERT INTO campaigns (user_id, title, message, time_zone) VALUES"
                     " ('%s', 'zone', 'Hello {{name}}', 'x%s') RETURNING id",
                     poisoned.user, zone));
    free(zone);
    PQclear(wt_sql(db, "COMMIT"));
    /* A stale claim is resumed after 5 s (the blocked campaign's, once its
     * rule is lifted). */
    static const char *extra[] = {"WACAST_MAX_MESSAGE_BYTES=4096", "WACAST_CLAIM_STALE_S=5", NULL};
    sc_start_daemons(&env, 1, extra);
    return 0;
}

static int teardown_poison(void **state)
{
    for (int i = 0; i < NBAD; i++) {
        free(bad_leads[i].name);
        free(bad_leads[i].phone);
    }
    return teardown_env(state);
}

/* The campaign is finished with these counts, and each good lead got exactly
 * one "Hello <name>" from its tenant's campaign. */
static int check_campaign(const tenant *t, int nbad, const sc_send *sends, size_t nsends)
{
    int bad = 0;
    PGresult *r = wt_sql(db,
                         "SELECT status, coalesce(status_reason, ''), total_count, sent_count,"
                         " failed_count, skipped_count FROM campaigns WHERE id = '%s'",
                         t->campaign);
    if (strcmp(PQgetvalue(r, 0, 0), "finished") || atoi(PQgetvalue(r, 0, 2)) != NGOOD + nbad ||
        atoi(PQgetvalue(r, 0, 3)) != NGOOD || atoi(PQgetvalue(r, 0, 4)) != 0 ||
        atoi(PQgetvalue(r, 0, 5)) != nbad) {
        fprintf(stderr,
                "campaign %s: %s '%s' total %s sent %s failed %s skipped %s;"
                " want finished, total %d, sent %d, failed 0, skipped %d\n",
                t->campaign, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2),
                PQgetvalue(r, 0, 3), PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5), NGOOD + nbad, NGOOD,
                nbad);
        bad++;
    }
    PQclear(r);
    long rows = wt_sql_long(db, "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'",
                            t->campaign);
    if (rows != NGOOD + nbad) {
        fprintf(stderr, "campaign %s: %ld message rows, want %d\n", t->campaign, rows,
                NGOOD + nbad);
        bad++;
    }
    size_t in_record = 0;
    for (size_t k = 0; k < nsends; k++)
        in_record += !strcmp(sends[k].campaign, t->campaign);
    if (in_record != NGOOD) {
        fprintf(stderr, "campaign %s: %zu sends in the sim record, want %d\n", t->campaign,
                in_record, NGOOD);
        bad++;
    }
    for (int i = 0; i < NGOOD; i++) {
        char want[64];
        snprintf(want, sizeof want, "Hello %s", t->good[i].name);
        int got = 0;
        for (size_t k = 0; k < nsends; k++) {
            if (strcmp(sends[k].campaign, t->campaign) || strcmp(sends[k].to, t->good[i].e164))
                continue;
            got++;
            if (strcmp(sends[k].text, want)) {
                fprintf(stderr, "%s got \"%s\", want \"%s\"\n", t->good[i].e164, sends[k].text,
                        want);
                bad++;
            }
        }
        if (got != 1) {
            fprintf(stderr, "campaign %s: %s received %d messages, want 1\n", t->campaign,
                    t->good[i].e164, got);
            bad++;
        }
    }
    return bad;
}

/* Both tenants' campaigns finish, well before a stale claim would be
 * resumed: the good leads sent once each, the bad ones skipped and counted. */
static void test_both_tenants_finish_exactly(void **state)
{
    (void)state;
    const char *ids[] = {poisoned.campaign, healthy.campaign};
    if (!sc_wait_campaigns_final(db, ids, 2, FINAL_TIMEOUT_MS)) {
        PGresult *r = wt_sql(db, "SELECT title, status, coalesce(status_reason, ''), total_count"
                                 " FROM campaigns ORDER BY title");
        fprintf(stderr, "campaigns did not reach a final status in %d ms:\n", FINAL_TIMEOUT_MS);
        for (int i = 0; i < PQntuples(r); i++)
            fprintf(stderr, "  %-10s %-10s total %s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                    PQgetvalue(r, i, 3), PQgetvalue(r, i, 2));
        PQclear(r);
        wt_dump_logs(&env, 30);
        fail();
    }
    size_t nsends;
    sc_send *sends = sc_read_sends(&env, &nsends);
    int bad =
        check_campaign(&poisoned, NBAD, sends, nsends) + check_campaign(&healthy, 0, sends, nsends);
    sc_sends_free(sends, nsends);
    if (bad)
        wt_dump_logs(&env, 30);
    assert_int_equal(bad, 0);
}

/* Lines of the scheduler's log that contain a, b and c. */
static int scheduler_log_lines(const char *a, const char *b, const char *c)
{
    char path[600];
    snprintf(path, sizeof path, "%s/scheduler-1.log", env.dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int n = 0;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) >= 0)
        n += strstr(line, a) && strstr(line, b) && strstr(line, c);
    free(line);
    fclose(f);
    return n;
}

static bool blocked_logged(void *arg)
{
    (void)arg;
    return scheduler_log_lines(blocked.campaign, "ERROR", "holding no lead data") > 0;
}

/* When PostgreSQL refuses every message of a campaign (not any lead's
 * fault), no lead is blamed: the expansion stops with an error and the
 * campaign stays triggered with no message; once the refusal is lifted the
 * stale claim is resumed and the campaign finishes with exact counts. */
static void test_refusing_everything_blames_no_lead(void **state)
{
    (void)state;
    if (!wt_wait_for(blocked_logged, NULL, 30000)) {
        fprintf(stderr, "no scheduler error about campaign %s refused as a whole\n",
                blocked.campaign);
        wt_dump_logs(&env, 30);
        fail();
    }
    PGresult *r = wt_sql(db,
                         "SELECT status, total_count, (SELECT count(*) FROM broadcast_messages"
                         " WHERE campaign_id = c.id) FROM campaigns c WHERE id = '%s'",
                         blocked.campaign);
    bool held = !strcmp(PQgetvalue(r, 0, 0), "triggered") && !strcmp(PQgetvalue(r, 0, 1), "0") &&
                !strcmp(PQgetvalue(r, 0, 2), "0");
    if (!held)
        fprintf(stderr, "blocked campaign: %s, total %s, %s message rows; want triggered, 0, 0\n",
                PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2));
    PQclear(r);
    assert_true(held);
    PQclear(wt_sql(db, "DELETE FROM test_blocked_users"));
    const char *ids[] = {blocked.campaign};
    if (!sc_wait_campaigns_final(db, ids, 1, FINAL_TIMEOUT_MS)) {
        fprintf(stderr, "the blocked campaign did not finish once its rule was lifted\n");
        wt_dump_logs(&env, 30);
        fail();
    }
    size_t nsends;
    sc_send *sends = sc_read_sends(&env, &nsends);
    int bad = check_campaign(&blocked, 0, sends, nsends);
    sc_sends_free(sends, nsends);
    if (bad)
        wt_dump_logs(&env, 30);
    assert_int_equal(bad, 0);
}

/* A campaign whose failure reason quotes its junk time zone fails with that
 * reason (cut on a character boundary), instead of staying 'triggered'
 * because the UPDATE that fails it is refused. */
static void test_junk_time_zone_fails(void **state)
{
    (void)state;
    const char *ids[] = {zone_campaign};
    bool final = sc_wait_campaigns_final(db, ids, 1, FINAL_TIMEOUT_MS);
    PGresult *r = wt_sql(db,
                         "SELECT status, coalesce(status_reason, '<null>'), total_count"
                         " FROM campaigns WHERE id = '%s'",
                         zone_campaign);
    const char *want = "unknown time zone 'x\u20ac\u20ac";
    bool ok = final && !strcmp(PQgetvalue(r, 0, 0), "failed") &&
              !strncmp(PQgetvalue(r, 0, 1), want, strlen(want)) &&
              !strcmp(PQgetvalue(r, 0, 2), "0");
    if (!ok) {
        fprintf(stderr,
                "junk time zone: %s, total %s, reason \"%.80s\"; want failed, total 0, a reason"
                " starting \"%s\"\n",
                PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 1), want);
        wt_dump_logs(&env, 30);
    }
    PQclear(r);
    assert_true(ok);
}

/* Each bad lead has one skipped message with its code and a clean reason. */
static void test_bad_leads_skipped_with_reason(void **state)
{
    (void)state;
    int bad = 0;
    for (int i = 0; i < NBAD; i++) {
        const bad_lead *b = &bad_leads[i];
        PGresult *r = wt_sql(db,
                             "SELECT m.status, coalesce(m.error_code, '<null>'),"
                             " coalesce(m.error_message, '<null>'), m.content,"
                             " length(m.recipient_phone), m.recipient_phone = 'lead ' || l.id"
                             " FROM broadcast_messages m"
                             " JOIN leads l ON l.id = m.lead_id"
                             " WHERE m.campaign_id = '%s' AND l.phone = '%s'",
                             poisoned.campaign, b->phone);
        if (PQntuples(r) != 1) {
            fprintf(stderr, "%s: %d message rows, want 1\n", b->label, PQntuples(r));
            bad++;
        } else if (strcmp(PQgetvalue(r, 0, 0), "skipped") || strcmp(PQgetvalue(r, 0, 1), b->code) ||
                   !strstr(PQgetvalue(r, 0, 2), b->says) || PQgetvalue(r, 0, 3)[0]) {
            fprintf(stderr,
                    "%s: %s, error_code %s, error_message \"%s\", content of %zu bytes;"
                    " want skipped, %s, a message containing \"%s\", no content\n",
                    b->label, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2),
                    strlen(PQgetvalue(r, 0, 3)), b->code, b->says);
            bad++;
        } else if (b->phoneless != (PQgetvalue(r, 0, 5)[0] == 't')) {
            fprintf(stderr, "%s: recipient_phone %s \"lead <its id>\"\n", b->label,
                    b->phoneless ? "is not" : "is");
            bad++;
        } else if (atoi(PQgetvalue(r, 0, 4)) > 200) {
            fprintf(stderr, "%s: recipient_phone of %s characters stored\n", b->label,
                    PQgetvalue(r, 0, 4));
            bad++;
        }
        PQclear(r);
    }
    /* Each refused lead is in the scheduler log once, as a warning. */
    int logged = scheduler_log_lines(poisoned.campaign, "WARN", "skipped as invalid_lead");
    if (logged != 2) {
        fprintf(stderr, "%d scheduler log warnings of a lead skipped as invalid_lead, want 2\n",
                logged);
        bad++;
    }
    logged = scheduler_log_lines(poisoned.campaign, "WARN", "written without its phone");
    if (logged != 1) {
        fprintf(stderr, "%d scheduler log warnings of a lead written without its phone, want 1\n",
                logged);
        bad++;
    }
    if (bad)
        wt_dump_logs(&env, 30);
    assert_int_equal(bad, 0);
}

/* ---- feeder cursors ---------------------------------------------------------------------------
 */

static tenant brief;
static int scheduler_port;

/* The scheduler's wacast_scheduler_feed_cursors gauge, or -1. */
static long feed_cursors(void)
{
    return (long)e2e_metric(scheduler_port, "wacast_scheduler_feed_cursors");
}

static int setup_cursors(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    add_tenant(&brief, "Brief", 5);
    insert_id(brief.campaign, sizeof brief.campaign,
              wt_sql(db,
                     "INSERT INTO campaigns (user_id, title, message) VALUES ('%s', 'brief',"
                     " 'Hello {{name}}') RETURNING id",
                     brief.user));
    scheduler_port = wt_free_port();
    static char port[32];
    snprintf(port, sizeof port, "PORT=%d", scheduler_port);
    static const char *base[] = {"WACAST_LOG_LEVEL=info",     "WACAST_POLL_MS=200",
                                 "WACAST_LEASE_TTL_MS=3000",  "WACAST_DEVICE_REFRESH_MS=500",
                                 "WACAST_IDLE_POLL_MS=1000",  "WACAST_ONLINE_GRACE_MS=10000",
                                 "WACAST_CLAIM_IDLE_MS=5000", NULL};
    const char *with_port[16];
    int n = 0;
    for (; base[n]; n++)
        with_port[n] = base[n];
    with_port[n++] = port;
    with_port[n] = NULL;
    if (wt_spawn(&env, "wacast-scheduler", "scheduler-1", with_port) < 0 ||
        wt_spawn(&env, "wacast-dispatcher", "dispatcher-1", base) < 0 ||
        wt_spawn(&env, "wacast-sender", "sender-1", base) < 0)
        return -1;
    return 0;
}

static bool cursor_kept(void *arg)
{
    (void)arg;
    return feed_cursors() == 1;
}

static bool cursors_pruned(void *arg)
{
    long *got = arg;
    *got = feed_cursors();
    return *got == 0;
}

/* The feeder keeps a cursor per campaign it feeds; once the campaign is
 * finished the cursor goes within seconds (the prune runs every 5 s), not
 * at the feeder's reset once a minute. */
static void test_finished_campaign_cursor_pruned(void **state)
{
    (void)state;
    const char *ids[] = {brief.campaign};
    if (!wt_wait_for(cursor_kept, NULL, 20000) ||
        !sc_wait_campaigns_final(db, ids, 1, FINAL_TIMEOUT_MS)) {
        fprintf(stderr, "no feeder cursor seen (gauge %ld), or the campaign did not finish\n",
                feed_cursors());
        wt_dump_logs(&env, 30);
        fail();
    }
    long got = -1;
    if (!wt_wait_for(cursors_pruned, &got, 15000)) {
        fprintf(stderr,
                "wacast_scheduler_feed_cursors is %ld 15 s after the campaign finished,"
                " want 0\n",
                got);
        wt_dump_logs(&env, 30);
        fail();
    }
    size_t nsends;
    sc_send *sends = sc_read_sends(&env, &nsends);
    int bad = check_campaign(&brief, 0, sends, nsends);
    sc_sends_free(sends, nsends);
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest reconciler[] = {
        cmocka_unit_test(test_republished_once_per_period),
        cmocka_unit_test(test_daemons_stop_cleanly),
    };
    const struct CMUnitTest poison[] = {
        cmocka_unit_test(test_both_tenants_finish_exactly),
        cmocka_unit_test(test_bad_leads_skipped_with_reason),
        cmocka_unit_test(test_junk_time_zone_fails),
        cmocka_unit_test(test_refusing_everything_blames_no_lead),
        cmocka_unit_test(test_daemons_stop_cleanly),
    };
    int failed =
        cmocka_run_group_tests_name("reconciler", reconciler, setup_reconciler, teardown_env);
    failed += cmocka_run_group_tests_name("poison", poison, setup_poison, teardown_poison);
    const struct CMUnitTest cursors[] = {
        cmocka_unit_test(test_finished_campaign_cursor_pruned),
        cmocka_unit_test(test_daemons_stop_cleanly),
    };
    failed += cmocka_run_group_tests_name("cursors", cursors, setup_cursors, teardown_env);
    return failed;
}
