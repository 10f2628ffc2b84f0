/* One tenant's huge drip sequence does not hold back another tenant's steps.
 * On real redis-server and PostgreSQL: tenant A's sequence enrols 4,000
 * contacts, all due at once, on one slow device (two messages a second);
 * claims are 50 contacts per round (WACAST_SEQ_BATCH) and a sequence has at
 * most 500 messages queued (WACAST_CAMPAIGN_INFLIGHT), so A's backlog stays
 * due in PostgreSQL for minutes while its device's lane and the router fill
 * behind it. Tenant B activates a 20-contact sequence once A's claiming is
 * under way. Asserted: every B contact gets its step exactly once, from B's
 * device, and is completed while A still has due contacts that no round has
 * claimed and has sent only part of its messages, and A never had more than
 * its bound queued; that is, a round shares its batch between the sequences
 * with due contacts (a full sequence takes nothing, and is not a reason to
 * take nothing from the others), and A's backlog (its lane, parked jobs)
 * does not stand in front of B's messages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"

#define BIG 4000
#define SMALL 20

static wt_env env;
static PGconn *db;
static char user_a[40], dev_a[40], user_b[40], dev_b[40], seq_a[40], seq_b[40];

static void make_sequence(char *out, const char *user, const char *tag)
{
    wt_sql_text(db, out, 40,
                "INSERT INTO sequences (user_id, name, \"trigger\") VALUES ('%s', '%s', '%s')"
                " RETURNING id",
                user, tag, tag);
    PQclear(wt_sql(db,
                   "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds, message)"
                   " VALUES ('%s', 1, 0, '%s {{name}}')",
                   out, tag));
    PQclear(wt_sql(db, "UPDATE leads SET \"trigger\" = '%s' WHERE user_id = '%s'", tag, user));
}

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, NULL) < 0)
        return -1;
    e2e_sim_tenant(db, "a", 0.5, 0.6, "+60171", BIG, user_a, dev_a);
    e2e_sim_tenant(db, "b", 0.01, 0.02, "+60181", SMALL, user_b, dev_b);
    make_sequence(seq_a, user_a, "BIG");
    make_sequence(seq_b, user_b, "SMALL");
    static const char *extra[] = {"WACAST_SEQ_BATCH=50", "WACAST_CAMPAIGN_INFLIGHT=500", NULL};
    sc_start_daemons(&env, 1, extra);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, NULL);
}

/* A's contacts with no step message yet: due, not claimed by any round. */
static long a_unclaimed(void)
{
    return wt_sql_long(db,
                       "SELECT count(*) FROM sequence_contacts sc WHERE sc.sequence_id = '%s'"
                       " AND NOT EXISTS (SELECT 1 FROM broadcast_messages m WHERE"
                       " m.sequence_id = sc.sequence_id AND m.lead_id = sc.lead_id)",
                       seq_a);
}

static void test_small_sequence_not_held_back(void **state)
{
    (void)state;
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'active' WHERE id = '%s'", seq_a));
    if (!e2e_wait_sql(db, 60000,
                      "SELECT (SELECT count(*) FROM sequence_contacts WHERE sequence_id = '%s')"
                      " = %d AND (SELECT count(*) FROM broadcast_messages WHERE"
                      " sequence_id = '%s') >= 200",
                      seq_a, BIG, seq_a)) {
        wt_dump_logs(&env, 30);
        fail_msg("tenant A's sequence did not start");
    }
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'active' WHERE id = '%s'", seq_b));
    if (!e2e_wait_sql(db, 120000,
                      "SELECT count(*) = %d FROM sequence_contacts WHERE sequence_id = '%s'"
                      " AND status = 'completed'",
                      SMALL, seq_b)) {
        wt_dump_logs(&env, 30);
        fail_msg("tenant B's contacts were not completed (%ld of A's still unclaimed)",
                 a_unclaimed());
    }
    long unclaimed = a_unclaimed();
    long a_sent = wt_sql_long(db,
                              "SELECT count(*) FROM broadcast_messages WHERE sequence_id = '%s'"
                              " AND status = 'sent'",
                              seq_a);
    fprintf(stderr, "when B completed: A had %ld of %d contacts unclaimed, %ld sent\n", unclaimed,
            BIG, a_sent);
    assert_true(unclaimed > 0); /* so A has not sent everything either */
    assert_true(wt_sql_long(db,
                            "SELECT count(*) FROM broadcast_messages WHERE sequence_id = '%s'"
                            " AND status = 'queued'",
                            seq_a) <= 500);

    /* B's step reached each of its leads exactly once, from B's device. */
    size_t n = 0;
    sc_send *sends = sc_read_sends(&env, &n);
    int per_lead[SMALL + 1] = {0};
    for (size_t i = 0; i < n; i++) {
        if (!sends[i].ok || strncmp(sends[i].to, "+60181", 6) != 0)
            continue;
        assert_string_equal(sends[i].device, dev_b);
        int k = atoi(sends[i].to + 6);
        assert_true(k >= 1 && k <= SMALL);
        per_lead[k]++;
    }
    sc_sends_free(sends, n);
    for (int k = 1; k <= SMALL; k++)
        if (per_lead[k] != 1)
            fail_msg("B's lead %d got %d messages", k, per_lead[k]);
    /* The counters are folded from their deltas every round. */
    assert_true(e2e_wait_sql(
        db, 30000, "SELECT completed_count = %d FROM sequences WHERE id = '%s'", SMALL, seq_b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_sequence_not_held_back),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
