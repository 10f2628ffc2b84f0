/* The router's memory of "waiting" reasons (dispatcher/router.c: the
 * campaigns whose "waiting: no healthy device" reason it wrote, and those
 * whose reason it cleared) is a cache: a campaign the router no longer routes
 * (finished, or its user gone) leaves it within WACAST_REASON_PRUNE_MS, so it
 * does not grow with every campaign ever run. On real redis-server and
 * PostgreSQL with the real daemons: the sender serving the user's only
 * device is killed; the dispatcher stops counting the device after its 1 s
 * grace while the scheduler (60 s) still publishes, so the campaign's jobs
 * wait in the router, which marks the campaign waiting; then a sender comes
 * back, the campaign is sent and finishes. Asserted through the dispatcher's
 * gauge wacast_dispatcher_reason_campaigns: it counts the campaign while it
 * waits and drops back to 0 within a few prune periods once it has
 * finished. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"

#define LEADS 3
#define PRUNE_MS 500

static wt_env env;
static PGconn *db;
static char user[40], dev[40];
static int dport;
static char port_env[32], prune_env[48];
static const char *scheduler_env[] = {"WACAST_DEVICE_REFRESH_MS=500", "WACAST_POLL_MS=200",
                                      "WACAST_ONLINE_GRACE_MS=60000", NULL};
static const char *dispatcher_env[] = {"WACAST_DEVICE_REFRESH_MS=500",
                                       "WACAST_POLL_MS=200",
                                       "WACAST_ONLINE_GRACE_MS=1000",
                                       prune_env,
                                       port_env,
                                       NULL};
static const char *sender_env[] = {"WACAST_DEVICE_REFRESH_MS=500", "WACAST_POLL_MS=200",
                                   "WACAST_LEASE_TTL_MS=3000", NULL};

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, NULL) < 0)
        return -1;
    e2e_sim_tenant(db, "u", 0.02, 0.05, "+6019", LEADS, user, dev);
    dport = wt_free_port();
    snprintf(port_env, sizeof port_env, "PORT=%d", dport);
    snprintf(prune_env, sizeof prune_env, "WACAST_REASON_PRUNE_MS=%d", PRUNE_MS);
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", scheduler_env) < 0 ||
        wt_spawn(&env, "wacast-dispatcher", "dispatcher", dispatcher_env) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, NULL);
}

static double reason_campaigns(void)
{
    return e2e_metric(dport, "wacast_dispatcher_reason_campaigns");
}

static bool online_devices_are(void *arg)
{
    return e2e_metric(dport, "wacast_dispatcher_online_devices") == (double)(intptr_t)arg;
}

static bool remembered(void *arg)
{
    (void)arg;
    return reason_campaigns() >= 1;
}

static bool forgotten(void *arg)
{
    (void)arg;
    return reason_campaigns() == 0;
}

static void test_finished_campaign_is_forgotten(void **state)
{
    (void)state;
    pid_t first = wt_spawn(&env, "wacast-sender", "sender-1", sender_env);
    assert_true(first > 0);
    if (!wt_wait_for(online_devices_are, (void *)(intptr_t)1, 30000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the device never came online");
    }
    /* Gone without a word: the device stays 'online' in PostgreSQL. */
    assert_int_equal(wt_signal(&env, first, SIGKILL), 0);
    if (!wt_wait_for(online_devices_are, (void *)(intptr_t)0, 10000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the dispatcher still counts the device of the killed sender");
    }
    char camp[40];
    wt_sql_text(db, camp, sizeof camp,
                "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                " VALUES ('%s', 'c', 'Hi {{name}}', now()) RETURNING id",
                user);
    if (!wt_wait_for(remembered, NULL, 30000) ||
        e2e_metric(dport, "wacast_dispatcher_waiting_reasons_total") < 1) {
        wt_dump_logs(&env, 30);
        fail_msg("the campaign never waited in the router (gauge %.0f)", reason_campaigns());
    }
    /* A sender serves the device again: the jobs are routed and sent. */
    assert_true(wt_spawn(&env, "wacast-sender", "sender-2", sender_env) > 0);
    if (!e2e_wait_finished(db, camp, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the campaign did not finish once its device was served");
    }
    /* Nothing of it is routed any more: within a few prune periods the
     * router holds no campaign for its reasons. */
    if (!wt_wait_for(forgotten, NULL, 20 * PRUNE_MS + 5000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the router still remembers %.0f campaign(s) for their reasons after the"
                 " campaign finished",
                 reason_campaigns());
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_finished_campaign_is_forgotten),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
