/* One tenant's backlog of jobs that no device can take never stops the
 * router, and is never multiplied. On real redis-server and PostgreSQL:
 * user X has 20,000 jobs on the jobs stream and no device (they wait,
 * unacknowledged); user Y runs campaigns on sim devices.
 *   1. The router holds at most WACAST_PARKED_USER_MAX (5,000) of X's jobs in
 *      memory and keeps reading: Y's first campaign finishes. The scheduler's
 *      back-pressure (WACAST_JOBS_MAX, 1,000 here) counts only jobs no
 *      router has read: X's 20,000 waiting ones do not stop Y's publishing.
 *   2. Every Redis connection is killed (CLIENT KILL): the router reads its
 *      pending list again from the start. Before the fix it parked the same
 *      first 500 entries again as copies on every read, never got past them
 *      to new jobs, and its waiting count grew to the global cap. Asserted:
 *      the waiting count never exceeds the per-user bound (plus the Y jobs
 *      waiting a moment for a device), Y's second campaign finishes.
 *   3. The dispatcher is killed with -9 and a new one starts: it takes over
 *      the dead one's pending entries (XAUTOCLAIM, going on from where each
 *      call stopped), again without copies; Y's third campaign finishes.
 * At the end all 20,000 of X's jobs are still on the stream, none lost, and
 * the dead dispatcher's consumer, holding nothing, has left the sinks group. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"
#include "wacast.pb-c.h"

#define X_JOBS 20000
#define X_CAP 5000
#define Y_LEADS 60

static wt_env env;
static PGconn *db;
static redisContext *rc;
static int dport;
static pid_t dispatcher_pid;
static char user_x[40], user_y[40], dev_y[2][40];
static const char *daemon_env[16];
static char port_env[32];
static double max_waiting;

static pid_t spawn_dispatcher(const char *name)
{
    int n = 0;
    while (daemon_env[n])
        n++;
    const char *with_port[18];
    for (int i = 0; i < n; i++)
        with_port[i] = daemon_env[i];
    with_port[n] = port_env;
    with_port[n + 1] = NULL;
    return wt_spawn(&env, "wacast-dispatcher", name, with_port);
}

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, &rc) < 0)
        return -1;
    wt_sql_text(db, user_x, sizeof user_x, "INSERT INTO users (name) VALUES ('x') RETURNING id");
    wt_sql_text(db, user_y, sizeof user_y, "INSERT INTO users (name) VALUES ('y') RETURNING id");
    for (int k = 0; k < 2; k++)
        wt_sql_text(db, dev_y[k], sizeof dev_y[k],
                    "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                    " max_delay_seconds) VALUES ('%s', 'sim', 0.01, 0.02)"
                    " RETURNING id",
                    user_y);
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone)"
                   " SELECT '%s', CASE WHEN n %% 2 = 0 THEN '%s' ELSE '%s' END::uuid, 'y' || n,"
                   " '+6013' || lpad(n::text, 7, '0') FROM generate_series(1, %d) AS n",
                   user_y, dev_y[0], dev_y[1], Y_LEADS));

    /* X's jobs, as the scheduler publishes them; X has no device. */
    redisReply *r = redisCommand(rc, "XGROUP CREATE wacast:jobs dispatchers 0 MKSTREAM");
    freeReplyObject(r);
    for (int i = 0; i < X_JOBS; i++) {
        char phone[20];
        snprintf(phone, sizeof phone, "+6014%07d", i);
        Wacast__Job job = WACAST__JOB__INIT;
        job.message_id = 1000000 + i;
        job.campaign_id = "00000000-0000-4000-8000-00000000000a";
        job.user_id = user_x;
        job.recipient = phone;
        job.content = "Hello";
        job.attempt = 1;
        uint8_t buf[256];
        size_t len = wacast__job__pack(&job, buf);
        redisAppendCommand(rc, "XADD wacast:jobs * j %b", buf, len);
    }
    for (int i = 0; i < X_JOBS; i++) {
        assert_int_equal(redisGetReply(rc, (void **)&r), REDIS_OK);
        freeReplyObject(r);
    }

    dport = wt_free_port();
    snprintf(port_env, sizeof port_env, "PORT=%d", dport);
    static const char *base[] = {"WACAST_LOG_LEVEL=info",       "WACAST_POLL_MS=200",
                                 "WACAST_LEASE_TTL_MS=3000",    "WACAST_DEVICE_REFRESH_MS=500",
                                 "WACAST_RECONCILE_MS=2000",    "WACAST_CLAIM_IDLE_MS=3000",
                                 "WACAST_PARKED_USER_MAX=5000", "WACAST_CONSUMER_GONE_MS=5000",
                                 "WACAST_JOBS_MAX=1000",        NULL};
    for (int i = 0; base[i]; i++)
        daemon_env[i] = base[i];
    dispatcher_pid = spawn_dispatcher("dispatcher-1");
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", daemon_env) < 0 ||
        wt_spawn(&env, "wacast-sender", "sender", daemon_env) < 0 || dispatcher_pid < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, rc);
}

/* Samples the router's waiting count on every poll of the waits below. */
static void sample_waiting(void)
{
    double w = e2e_metric(dport, "wacast_dispatcher_jobs_waiting");
    if (w > max_waiting)
        max_waiting = w;
}

static bool x_held(void *arg)
{
    (void)arg;
    return e2e_metric(dport, "wacast_dispatcher_jobs_waiting") >= X_CAP;
}

static bool campaign_finished(void *arg)
{
    sample_waiting();
    return wt_sql_long(db, "SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'",
                       (const char *)arg) == 1;
}

static bool rescanned(void *arg)
{
    sample_waiting();
    return e2e_metric(dport, "wacast_dispatcher_jobs_already_held_total") > *(double *)arg;
}

/* Runs a campaign of Y and waits for it to finish with every message sent. */
static void run_y_campaign(const char *title)
{
    char id[40];
    wt_sql_text(db, id, sizeof id,
                "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                " VALUES ('%s', '%s', 'Hello {{name}}', now()) RETURNING id",
                user_y, title);
    if (!wt_wait_for(campaign_finished, id, 120000)) {
        wt_dump_logs(&env, 30);
        fail_msg("user Y's campaign '%s' did not finish (router waiting: %.0f)", title,
                 e2e_metric(dport, "wacast_dispatcher_jobs_waiting"));
    }
    assert_int_equal(wt_sql_long(db, "SELECT sent_count FROM campaigns WHERE id = '%s'", id),
                     Y_LEADS);
    fprintf(stderr, "%s: finished, %d sent; router waiting at most %.0f so far\n", title, Y_LEADS,
            max_waiting);
}

static long x_jobs_on_stream(void)
{
    redisReply *r = redisCommand(rc, "XLEN wacast:jobs");
    long n = r && r->type == REDIS_REPLY_INTEGER ? (long)r->integer : -1;
    freeReplyObject(r);
    return n;
}

static bool one_sink_consumer(void *arg)
{
    (void)arg;
    redisReply *r = redisCommand(rc, "XINFO CONSUMERS wacast:results sinks");
    bool one = r && r->type == REDIS_REPLY_ARRAY && r->elements == 1;
    freeReplyObject(r);
    return one;
}

static void test_backlog_of_one_user_neither_blocks_nor_multiplies(void **state)
{
    (void)state;
    if (!wt_wait_for(x_held, NULL, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the router never held X's jobs");
    }
    run_y_campaign("y-1");

    /* 2. Every client connection dropped: the router reconnects and reads
     * its pending list again from the start. */
    double held_before = e2e_metric(dport, "wacast_dispatcher_jobs_already_held_total");
    redisReply *r = redisCommand(rc, "CLIENT KILL TYPE normal SKIPME yes");
    assert_true(r && r->type == REDIS_REPLY_INTEGER && r->integer > 0);
    freeReplyObject(r);
    run_y_campaign("y-2");
    /* It did read its pending list again (and met the jobs it holds). */
    if (!wt_wait_for(rescanned, &held_before, 30000))
        fail_msg("the router did not read its pending list again after the reconnect");
    assert_true(max_waiting <= X_CAP + Y_LEADS); /* X's bound, and Y's jobs of a moment */

    /* 3. kill -9, and a new dispatcher takes over. */
    assert_int_equal(wt_signal(&env, dispatcher_pid, SIGKILL), 0);
    dispatcher_pid = spawn_dispatcher("dispatcher-2");
    assert_true(dispatcher_pid > 0);
    run_y_campaign("y-3");
    double taken = 0;
    if (!wt_wait_for(x_held, NULL, 60000))
        fail_msg("the new dispatcher never took over X's jobs");
    taken = e2e_metric(dport, "wacast_dispatcher_entries_claimed_total");
    fprintf(stderr, "new dispatcher took over %.0f entries; waiting at most %.0f\n", taken,
            max_waiting);
    assert_true(taken > 0);
    assert_true(max_waiting <= X_CAP + Y_LEADS); /* X's bound, and Y's jobs of a moment */
    assert_int_equal(x_jobs_on_stream(), X_JOBS);
    /* The dead dispatcher's sink consumer held nothing: it leaves the group. */
    if (!wt_wait_for(one_sink_consumer, NULL, 60000))
        fail_msg("the gone dispatcher's consumer stayed in the sinks group");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backlog_of_one_user_neither_blocks_nor_multiplies),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
