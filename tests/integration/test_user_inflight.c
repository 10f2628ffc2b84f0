/* One user's many campaigns together never hold more than
 * WACAST_USER_INFLIGHT messages queued. The per-campaign bound
 * (WACAST_CAMPAIGN_INFLIGHT) alone let a user with many campaigns and slow
 * devices fill what every user shares: their queued jobs wait unread on the
 * jobs stream, and past WACAST_JOBS_MAX the feeder stops publishing for
 * everyone. On real redis-server and PostgreSQL: user A has one slow device
 * (a send every 0.5 s) and four campaigns of 100 leads, with a campaign bound
 * of 100 and a user bound of 120; user B has one fast device and a campaign
 * of 40 leads. While B's campaign runs to its end, A's queued messages (read
 * at every look) reach the user bound and never pass it (the bound shared
 * among A's four campaigns may round up by at most one each); with the
 * per-campaign bound only they would reach 400.
 *
 * The bound covers drip sequences too: user C has one slow device, a
 * campaign of 300 leads that fills its campaign bound (100), then three
 * sequences of 300 contacts each, all due at once. C's queued messages,
 * campaign and steps together, reach the user bound and never pass it by
 * more than the sequences' rounding and one feeder round racing a claim
 * round (the two read the count in their own statements); with the
 * per-sequence bound only they reached 400. */
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

#define A_CAMPAIGNS 4
#define A_LEADS 100
#define B_LEADS 40
#define USER_INFLIGHT 120

static wt_env env;
static PGconn *db;
static char user_a[40], user_b[40], dev_a[40], dev_b[40], camp_b[40];
static long max_a_queued;

#define C_SEQUENCES 3
#define C_LEADS 300
static char user_c[40], dev_c[40];
static long max_c_queued;

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, NULL) < 0)
        return -1;
    e2e_sim_tenant(db, "a", 0.5, 0.5, "+6017", A_LEADS, user_a, dev_a);
    e2e_sim_tenant(db, "b", 0.01, 0.02, "+6018", B_LEADS, user_b, dev_b);
    e2e_sim_tenant(db, "c", 0.5, 0.5, "+6019", C_LEADS, user_c, dev_c);
    const char *extra[] = {"WACAST_CAMPAIGN_INFLIGHT=100", "WACAST_USER_INFLIGHT=120", NULL};
    sc_start_daemons(&env, 1, extra);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, NULL);
}

/* Looks at A's queued messages (keeping the most seen) until B's campaign
 * is finished and A's have reached the user bound. */
static bool b_done_a_full(void *arg)
{
    (void)arg;
    long a = wt_sql_long(db,
                         "SELECT count(*) FROM broadcast_messages m JOIN campaigns c"
                         " ON c.id = m.campaign_id WHERE c.user_id = '%s' AND m.status = 'queued'",
                         user_a);
    if (a > max_a_queued)
        max_a_queued = a;
    return max_a_queued >= USER_INFLIGHT &&
           wt_sql_long(db, "SELECT count(*) FROM campaigns WHERE id = '%s' AND status = 'finished'",
                       camp_b) == 1;
}

static void test_one_user_stays_within_its_bound(void **state)
{
    (void)state;
    for (int k = 0; k < A_CAMPAIGNS; k++)
        PQclear(wt_sql(db,
                       "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                       " VALUES ('%s', 'a%d', 'Hi {{name}}', now())",
                       user_a, k));
    wt_sql_text(db, camp_b, sizeof camp_b,
                "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                " VALUES ('%s', 'b', 'Hi {{name}}', now() + interval '1 second') RETURNING id",
                user_b);
    bool ok = wt_wait_for(b_done_a_full, NULL, 120000);
    fprintf(stderr, "user A: at most %ld messages queued across %d campaigns (bound %d)\n",
            max_a_queued, A_CAMPAIGNS, USER_INFLIGHT);
    if (!ok) {
        wt_dump_logs(&env, 30);
        fail_msg("B's campaign did not finish or A never reached its bound (A at most %ld queued)",
                 max_a_queued);
    }
    assert_true(max_a_queued <= USER_INFLIGHT + A_CAMPAIGNS - 1);
    /* Every one of B's leads was sent its message. */
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                 " AND status IN ('sent', 'delivered', 'read')",
                                 camp_b),
                     B_LEADS);
}

static long c_queued(void)
{
    return wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages WHERE user_id = '%s'"
                       " AND status = 'queued'",
                       user_c);
}

/* Looks at C's queued messages until they reached the bound and ten step
 * messages went out (so rooms opened and were filled again several times). */
static bool c_full_steps_sent(void *arg)
{
    (void)arg;
    long c = c_queued();
    if (c > max_c_queued)
        max_c_queued = c;
    return max_c_queued >= USER_INFLIGHT &&
           wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages WHERE user_id = '%s'"
                       " AND sequence_id IS NOT NULL AND status IN ('sent', 'delivered', 'read')",
                       user_c) >= 10;
}

static void test_sequences_share_the_user_bound(void **state)
{
    (void)state;
    PQclear(wt_sql(db,
                   "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                   " VALUES ('%s', 'c', 'Hi {{name}}', now())",
                   user_c));
    if (!e2e_wait_sql(db, 60000,
                      "SELECT count(*) >= 95 FROM broadcast_messages WHERE user_id = '%s'"
                      " AND status = 'queued'",
                      user_c))
        fail_msg("C's campaign did not fill its bound");
    PQclear(wt_sql(db, "UPDATE leads SET \"trigger\" = 'S1,S2,S3' WHERE user_id = '%s'", user_c));
    for (int k = 1; k <= C_SEQUENCES; k++) {
        char seq[40];
        wt_sql_text(db, seq, sizeof seq,
                    "INSERT INTO sequences (user_id, name, \"trigger\") VALUES ('%s', 'S%d',"
                    " 'S%d') RETURNING id",
                    user_c, k, k);
        PQclear(wt_sql(db,
                       "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds,"
                       " message) VALUES ('%s', 1, 0, 'S%d {{name}}')",
                       seq, k));
        PQclear(wt_sql(db, "UPDATE sequences SET status = 'active' WHERE id = '%s'", seq));
    }
    bool ok = wt_wait_for(c_full_steps_sent, NULL, 120000);
    fprintf(stderr,
            "user C: at most %ld messages queued across a campaign and %d sequences"
            " (bound %d)\n",
            max_c_queued, C_SEQUENCES, USER_INFLIGHT);
    if (!ok) {
        wt_dump_logs(&env, 30);
        fail_msg("C's steps did not go out or C never reached its bound (at most %ld queued)",
                 max_c_queued);
    }
    assert_true(max_c_queued <= USER_INFLIGHT + (C_SEQUENCES - 1) + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_user_stays_within_its_bound),
        cmocka_unit_test(test_sequences_share_the_user_bound),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
