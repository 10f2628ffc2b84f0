/* Users on disjoint devices never slow each other down, and Redis holds a
 * bounded amount per campaign.
 *
 * User X has one slow device (a message every 1-2 s) and a campaign of
 * 30,000 leads: far more than the router's memory and a device lane hold.
 * User Y has two fast devices and a campaign of 120 leads, due after X's.
 * Asserted:
 *   - Y's campaign finishes, every message once, from Y's own devices, while
 *     X has sent only a handful (X's backlog does not stand in front of Y);
 *   - X's campaign keeps at most WACAST_CAMPAIGN_INFLIGHT messages queued
 *     (published, not done): the rest wait as 'pending' in PostgreSQL, and
 *     X's device lane in Redis never holds more than that bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"

#define X_LEADS 30000
#define Y_LEADS 120
#define INFLIGHT 500

static wt_env env;
static PGconn *db;
static redisContext *rc;
static char user_x[40], user_y[40], dev_x[40], dev_y[2][40], camp_x[40], camp_y[40];

static void insert_user(char *user, const char *name)
{
    PGresult *r = wt_sql(db, "INSERT INTO users (name) VALUES ('%s') RETURNING id", name);
    snprintf(user, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

static void insert_device(char *id, const char *user, double min_s, double max_s)
{
    PGresult *r = wt_sql(db,
                         "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                         " max_delay_seconds) VALUES ('%s', 'sim', %.3f, %.3f) RETURNING id",
                         user, min_s, max_s);
    snprintf(id, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

static void insert_campaign(char *id, const char *user, const char *title, int due_in_s)
{
    PGresult *r = wt_sql(db,
                         "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                         " VALUES ('%s', '%s', 'Hello {{name}}', now() + interval '%d seconds')"
                         " RETURNING id",
                         user, title, due_in_s);
    snprintf(id, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, &rc) < 0)
        return -1;
    insert_user(user_x, "x");
    insert_user(user_y, "y");
    insert_device(dev_x, user_x, 1.0, 2.0);
    insert_device(dev_y[0], user_y, 0.02, 0.04);
    insert_device(dev_y[1], user_y, 0.02, 0.04);
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone)"
                   " SELECT '%s', '%s', 'x' || n, '+6012' || lpad(n::text, 7, '0')"
                   " FROM generate_series(1, %d) AS n",
                   user_x, dev_x, X_LEADS));
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone)"
                   " SELECT '%s', CASE WHEN n %% 2 = 0 THEN '%s' ELSE '%s' END::uuid, 'y' || n,"
                   " '+6013' || lpad(n::text, 7, '0') FROM generate_series(1, %d) AS n",
                   user_y, dev_y[0], dev_y[1], Y_LEADS));
    insert_campaign(camp_x, user_x, "x-big", 0);
    char inflight[64];
    snprintf(inflight, sizeof inflight, "WACAST_CAMPAIGN_INFLIGHT=%d", INFLIGHT);
    const char *extra[] = {inflight, NULL};
    sc_start_daemons(&env, 1, extra);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, rc);
}

/* X is fully expanded (every lead has its row) and sending. */
static bool x_sending(void *arg)
{
    (void)arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'processing'"
                       " AND total_count = %d",
                       camp_x, X_LEADS) == 1 &&
           wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                       " AND status = 'sent'",
                       camp_x) > 0;
}

static bool y_final(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'",
                       camp_y) == 1;
}

static long lane_len(void)
{
    redisReply *r = redisCommand(rc, "XLEN wacast:{dev:%s}:q:%s", dev_x, camp_x);
    long n = r && r->type == REDIS_REPLY_INTEGER ? (long)r->integer : -1;
    freeReplyObject(r);
    return n;
}

static void test_big_campaign_does_not_hold_up_another_user(void **state)
{
    (void)state;
    /* X's campaign is expanded and sending before Y's exists. */
    if (!wt_wait_for(x_sending, NULL, 120000)) {
        wt_dump_logs(&env, 40);
        fail_msg("user X's campaign was not expanded and sending");
    }
    long queued = wt_sql_long(db,
                              "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                              " AND status = 'queued'",
                              camp_x);
    long pending = wt_sql_long(db,
                               "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                               " AND status = 'pending'",
                               camp_x);
    long lane = lane_len();
    fprintf(stderr, "X: %ld queued (bound %d), %ld pending in PostgreSQL, lane holds %ld\n", queued,
            INFLIGHT, pending, lane);
    assert_true(queued <= INFLIGHT);
    assert_true(pending >= X_LEADS - INFLIGHT - 100);
    assert_true(lane >= 0 && lane <= INFLIGHT);

    insert_campaign(camp_y, user_y, "y-small", 0);
    if (!wt_wait_for(y_final, NULL, 120000)) {
        wt_dump_logs(&env, 40);
        fail_msg("user Y's campaign did not finish");
    }
    long x_sent = wt_sql_long(db,
                              "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                              " AND status = 'sent'",
                              camp_x);
    fprintf(stderr, "Y finished its %d messages while X had sent %ld of %d\n", Y_LEADS, x_sent,
            X_LEADS);
    /* X's device sends one message every 1-2 s: a few dozen at most here.
     * Y waiting behind X's backlog would have needed hours. */
    assert_true(x_sent < X_LEADS / 100);

    /* Y: each message exactly once, from Y's devices only. */
    size_t n = 0;
    sc_send *sends = sc_read_sends(&env, &n);
    long y_sends = 0, y_elsewhere = 0;
    char *seen = calloc(Y_LEADS + 1, 1);
    assert_non_null(seen);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(sends[i].campaign, camp_y) != 0 || !sends[i].ok)
            continue;
        y_sends++;
        if (strcmp(sends[i].device, dev_y[0]) && strcmp(sends[i].device, dev_y[1]))
            y_elsewhere++;
        int k = atoi(sends[i].to + 5); /* +6013NNNNNNN */
        assert_true(k >= 1 && k <= Y_LEADS);
        assert_int_equal(seen[k], 0);
        seen[k] = 1;
    }
    free(seen);
    sc_sends_free(sends, n);
    assert_int_equal(y_sends, Y_LEADS);
    assert_int_equal(y_elsewhere, 0);

    /* The bound held throughout: still at most INFLIGHT queued for X. */
    queued = wt_sql_long(db,
                         "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                         " AND status = 'queued'",
                         camp_x);
    lane = lane_len();
    assert_true(queued <= INFLIGHT);
    assert_true(lane <= INFLIGHT);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_big_campaign_does_not_hold_up_another_user),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
