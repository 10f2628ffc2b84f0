/* A message that waits in an outbox longer than its marker lives is still
 * sent exactly once. The marker of a routed message ("r:") has a time to
 * live (WACAST_IDEMPOTENCY_TTL_S, 7 days by default); a slow device behind
 * many campaigns can hold a message longer than that. Before the reconciler
 * renewed the markers of messages still queued, the expired marker made the
 * message look lost: it was published again, and the copy, read after the
 * first copy's outcome marker had expired too, was sent a second time.
 *
 * Scaled down on real redis-server and PostgreSQL: markers live 3 s, the
 * reconciler looks at messages queued longer than 1 s, and one device sends
 * a message every 1.5-2 s, so the last of 8 messages waits ~12 s in its
 * outbox. Asserted: every recipient gets exactly one message, the campaign
 * finishes with 8 sent, the reconciler published nothing again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"

#define LEADS 8

static wt_env env;
static PGconn *db;
static char user[40], dev[40], camp[40];
static int sport;

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, NULL) < 0)
        return -1;
    e2e_sim_tenant(db, "slow", 1.5, 2, "+6015", LEADS, user, dev);
    sport = wt_free_port();
    char port[32];
    snprintf(port, sizeof port, "PORT=%d", sport);
    const char *common[] = {"WACAST_IDEMPOTENCY_TTL_S=3",
                            "WACAST_RECONCILE_AFTER_S=1",
                            "WACAST_RECONCILE_MS=300",
                            "WACAST_DEVICE_REFRESH_MS=500",
                            "WACAST_POLL_MS=200",
                            NULL,
                            NULL};
    if (wt_spawn(&env, "wacast-dispatcher", "dispatcher", common) < 0 ||
        wt_spawn(&env, "wacast-sender", "sender", common) < 0)
        return -1;
    common[5] = port;
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", common) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, NULL);
}

static bool outbox_empty(void *arg)
{
    (void)arg;
    redisContext *rc = wt_redis(&env);
    redisReply *r = redisCommand(rc, "XLEN wacast:{dev:%s}:q:%s", dev, camp);
    bool empty = r && r->type == REDIS_REPLY_INTEGER && r->integer == 0;
    freeReplyObject(r);
    redisFree(rc);
    return empty;
}

static void test_long_wait_in_outbox_sends_once(void **state)
{
    (void)state;
    wt_sql_text(db, camp, sizeof camp,
                "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                " VALUES ('%s', 'slow', 'Hi {{name}}', now()) RETURNING id",
                user);
    if (!e2e_wait_finished(db, camp, 90000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the campaign did not finish");
    }
    /* Copies published again would still sit in the outbox: count once the
     * device has read everything there. */
    if (!wt_wait_for(outbox_empty, NULL, 60000))
        fail_msg("the device's outbox never emptied");
    size_t n = 0;
    sc_send *sends = sc_read_sends(&env, &n);
    int per_lead[LEADS + 1] = {0};
    long ok = 0;
    for (size_t i = 0; i < n; i++) {
        if (!sends[i].ok)
            continue;
        ok++;
        int k = atoi(sends[i].to + 5); /* +6015NNNNNNN */
        assert_true(k >= 1 && k <= LEADS);
        per_lead[k]++;
    }
    sc_sends_free(sends, n);
    for (int k = 1; k <= LEADS; k++)
        if (per_lead[k] != 1)
            fail_msg("lead %d got %d messages", k, per_lead[k]);
    assert_int_equal(ok, LEADS);
    assert_int_equal(wt_sql_long(db, "SELECT sent_count FROM campaigns WHERE id = '%s'", camp),
                     LEADS);
    double republished = e2e_metric(sport, "wacast_scheduler_messages_republished_total");
    double renewed = e2e_metric(sport, "wacast_scheduler_markers_renewed_total");
    fprintf(stderr, "reconciler: %.0f published again, %.0f markers renewed\n", republished,
            renewed);
    assert_true(republished == 0);
    assert_true(renewed > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_long_wait_in_outbox_sends_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
