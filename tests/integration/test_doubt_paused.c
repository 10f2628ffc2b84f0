/* A send left in doubt in a campaign that is then paused and resumed is
 * neither lost nor sent twice. On real redis-server and PostgreSQL: a sender
 * claims the campaign's one message and is killed -9 while the (simulated)
 * provider call is under way (the provider has taken it and sends no
 * status webhook), leaving the message's claim ("c:") in Redis;
 * the campaign is paused; a second sender takes the device and sets the
 * message aside in the campaign's paused stream, claim and all; the campaign
 * resumes and the dispatcher routes the message back. Before the router took
 * a claimed message back to its claiming device, it dropped it as a
 * duplicate: the message stayed 'queued' for good (its marker renewed by the
 * reconciler). Asserted: the campaign finishes with its message sent; the
 * provider has it once or twice (twice is the documented limit of a send in
 * doubt with a provider that sends no status: after WACAST_IN_DOUBT_MS it is
 * sent again), never more. */
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

static wt_env env;
static PGconn *db;
static redisContext *rc;
static char user[40], dev[40], camp[40];
static long long msg;
/* The provider takes a send at once, answers after 4 s and sends no status
 * webhook (so the doubt can only end by the in-doubt wait). */
static const char *sender_env[] = {"WACAST_LEASE_TTL_MS=3000",
                                   "WACAST_DEVICE_REFRESH_MS=500",
                                   "WACAST_SIM_LATENCY_MS=4000",
                                   "WACAST_IN_DOUBT_MS=8000",
                                   "WACAST_HOLDS_MS=200",
                                   "WACAST_POLL_MS=200",
                                   NULL};

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, &rc) < 0)
        return -1;
    wt_sql_text(db, user, sizeof user, "INSERT INTO users (name) VALUES ('u') RETURNING id");
    wt_sql_text(db, dev, sizeof dev,
                "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                " max_delay_seconds) VALUES ('%s', 'sim', 0.1, 0.2) RETURNING id",
                user);
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone) VALUES"
                   " ('%s', '%s', 'L', '+60161234567')",
                   user, dev));
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", sender_env) < 0 ||
        wt_spawn(&env, "wacast-dispatcher", "dispatcher", sender_env) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, rc);
}

static bool claimed(void *arg)
{
    (void)arg;
    if (!msg)
        msg = wt_sql_long(db, "SELECT id FROM broadcast_messages WHERE campaign_id = '%s'", camp);
    if (!msg)
        return false;
    redisReply *r = redisCommand(rc, "GET wacast:msg:%lld", msg);
    bool c = r && r->type == REDIS_REPLY_STRING && r->str[0] == 'c';
    freeReplyObject(r);
    return c;
}

static bool set_aside(void *arg)
{
    (void)arg;
    redisReply *r = redisCommand(rc, "XLEN wacast:paused:%s", camp);
    bool one = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    freeReplyObject(r);
    return one;
}

static bool finished(void *arg)
{
    (void)arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'"
                       " AND sent_count = 1",
                       camp) == 1;
}

static void test_doubt_survives_pause_and_resume(void **state)
{
    (void)state;
    pid_t first = wt_spawn(&env, "wacast-sender", "sender-1", sender_env);
    assert_true(first > 0);
    wt_sql_text(db, camp, sizeof camp,
                "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                " VALUES ('%s', 'c', 'Hi {{name}}', now()) RETURNING id",
                user);
    if (!wt_wait_for(claimed, NULL, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the message was never claimed");
    }
    /* The provider call takes 4 s: the sender dies in the middle of it. */
    assert_int_equal(wt_signal(&env, first, SIGKILL), 0);
    PQclear(wt_sql(db, "UPDATE campaigns SET status = 'paused' WHERE id = '%s'", camp));
    pid_t second = wt_spawn(&env, "wacast-sender", "sender-2", sender_env);
    assert_true(second > 0);
    if (!wt_wait_for(set_aside, NULL, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the second sender did not set the paused message aside");
    }
    PQclear(wt_sql(db, "UPDATE campaigns SET status = 'processing' WHERE id = '%s'", camp));
    if (!wt_wait_for(finished, NULL, 60000)) {
        redisReply *r = redisCommand(rc, "GET wacast:msg:%lld", msg);
        fprintf(stderr, "message %lld: %s, marker %s\n", msg,
                PQgetvalue(wt_sql(db, "SELECT status FROM broadcast_messages WHERE id = %lld", msg),
                           0, 0),
                r && r->type == REDIS_REPLY_STRING ? r->str : "(none)");
        freeReplyObject(r);
        wt_dump_logs(&env, 30);
        fail_msg("the resumed campaign did not finish");
    }
    size_t n = 0;
    sc_send *sends = sc_read_sends(&env, &n);
    long to_msg = 0;
    for (size_t i = 0; i < n; i++)
        to_msg += sends[i].msg == msg && sends[i].ok;
    sc_sends_free(sends, n);
    fprintf(stderr, "message %lld: %ld send(s) at the provider\n", msg, to_msg);
    assert_true(to_msg >= 1 && to_msg <= 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_doubt_survives_pause_and_resume),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
