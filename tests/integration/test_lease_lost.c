/* A sender that loses a device's lease while a send is in flight does not
 * send that message twice. On real redis-server and PostgreSQL: one sim
 * device whose provider takes 5 s to answer (sim_latency_ms; the send is in
 * the sim's record, so it went out, before the answer), and whose "sent"
 * status webhook comes 15 s after a send (well after the sender can hold
 * the device again). Once the first send is in the record and not yet
 * answered, the device's lease is taken in Redis as another sender would
 * after ours ran out; at its next renewal (within a second) the sender loses
 * the device and closes its transport with the call in flight. The answer
 * that close() gives is not acted on (the device is being lost): the
 * message keeps its claim, pending. When the other lease expires the sender
 * holds the device again, finds its own claim with an unknown outcome, and
 * waits for the message's status instead of sending it again. Asserted: the
 * lease was lost once, a message was in doubt and none was sent again for
 * want of a status, the campaign finishes, and every lead is in the record
 * exactly once. */
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
#include "wc_transport.h"

#define LEADS 6

static wt_env env;
static PGconn *db;
static redisContext *rc;
static char user[40], dev[40], camp[40];
static int sport;

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, &rc) < 0)
        return -1;
    wt_sql_text(db, user, sizeof user, "INSERT INTO users (name) VALUES ('u') RETURNING id");
    wt_sql_text(db, dev, sizeof dev,
                "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                " max_delay_seconds, settings) VALUES ('%s', 'sim', 0.05, 0.1,"
                " '{\"sim_latency_ms\": 5000}') RETURNING id",
                user);
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone) SELECT '%s', '%s',"
                   " 'l' || n, '+6017' || lpad(n::text, 7, '0') FROM generate_series(1, %d) n",
                   user, dev, LEADS));
    sport = wt_free_port();
    char port[32];
    snprintf(port, sizeof port, "PORT=%d", sport);
    const char *common[] = {"WACAST_DEVICE_REFRESH_MS=500",
                            "WACAST_POLL_MS=200",
                            "WACAST_LEASE_TTL_MS=3000",
                            "WACAST_SIM_CALLBACKS=sent",
                            "WACAST_SIM_CALLBACK_DELAY_MS=15000",
                            NULL,
                            NULL};
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", common) < 0 ||
        wt_spawn(&env, "wacast-dispatcher", "dispatcher", common) < 0)
        return -1;
    common[5] = port;
    return wt_spawn(&env, "wacast-sender", "sender", common) > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, rc);
}

static long recorded(void)
{
    redisReply *r = redisCommand(rc, "XLEN %s", WC_SIM_RECORD_KEY);
    long n = r && r->type == REDIS_REPLY_INTEGER ? (long)r->integer : -1;
    freeReplyObject(r);
    return n;
}

static bool one_in_flight(void *arg)
{
    (void)arg;
    return recorded() >= 1;
}

static void test_lease_lost_mid_send(void **state)
{
    (void)state;
    wt_sql_text(db, camp, sizeof camp,
                "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                " VALUES ('%s', 'c', 'Hi {{name}}', now()) RETURNING id",
                user);
    if (!wt_wait_for(one_in_flight, NULL, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("no send started");
    }
    /* In the record, its answer 5 s away: another sender takes the lease
     * (for 4 s, then it lapses and ours comes back). */
    redisReply *r = redisCommand(rc, "SET wacast:{dev:%s}:lease other-sender PX 4000", dev);
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    if (!e2e_wait_finished(db, camp, 120000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the campaign did not finish after the lease was lost");
    }
    assert_true(e2e_metric(sport, "wacast_sender_leases_lost_total") == 1);
    assert_true(e2e_metric(sport, "wacast_sender_in_doubt_total") >= 1);
    assert_true(e2e_metric(sport, "wacast_sender_in_doubt_resent_total") == 0);
    size_t n = 0;
    sc_send *sends = sc_read_sends(&env, &n);
    int per_lead[LEADS + 1] = {0};
    for (size_t i = 0; i < n; i++) {
        int k = atoi(sends[i].to + 5); /* +6017NNNNNNN */
        assert_true(k >= 1 && k <= LEADS);
        per_lead[k]++;
    }
    sc_sends_free(sends, n);
    for (int k = 1; k <= LEADS; k++)
        if (per_lead[k] != 1)
            fail_msg("lead %d is in the record %d times", k, per_lead[k]);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                 " AND status IN ('sent', 'delivered', 'read')",
                                 camp),
                     LEADS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lease_lost_mid_send),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
