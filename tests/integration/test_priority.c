/* A higher-priority campaign is not stuck behind a blast on the same device.
 * On real redis-server and PostgreSQL: one sim device (a send every
 * 30-40 ms) holds a blast of 120 messages at priority 0 and a follow-up of
 * 24 at priority 5, both due at once. A device's lanes take turns weighted
 * by priority (a lane keeps the turn for 1 + priority reads: 6 of every 7
 * sends while both have messages), so by the time the follow-up's last
 * message is sent the blast has sent about 24 / 6 = 4 (asserted: at most
 * 10; with plain turns it would be about 24). The blast is not starved
 * either: it sends while the follow-up runs, and finishes. */
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

#define BLAST 120
#define FOLLOW 24

static wt_env env;
static PGconn *db;
static char user[40], dev[40], blast[40], follow[40];

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, NULL) < 0)
        return -1;
    e2e_sim_tenant(db, "u", 0.03, 0.04, "+6017", BLAST + FOLLOW, user, dev);
    /* The first FOLLOW leads get the follow-up, the others the blast. */
    PQclear(wt_sql(db,
                   "UPDATE leads SET niche = CASE WHEN right(phone, 7)::int <= %d THEN 'f'"
                   " ELSE 'b' END WHERE user_id = '%s'",
                   FOLLOW, user));
    sc_start_daemons(&env, 1, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, NULL);
}

static int cmp_ts(const void *a, const void *b)
{
    const sc_send *x = a, *y = b;
    return x->ts_us < y->ts_us ? -1 : x->ts_us > y->ts_us;
}

static void test_priority_lane_goes_first(void **state)
{
    (void)state;
    /* Both due in the same instant, so both lanes fill together. */
    PQclear(wt_sql(db, "BEGIN"));
    wt_sql_text(db, blast, sizeof blast,
                "INSERT INTO campaigns (user_id, title, message, niche, priority, scheduled_at)"
                " VALUES ('%s', 'blast', 'Sale {{name}}', 'b', 0, now() + interval '1 second')"
                " RETURNING id",
                user);
    wt_sql_text(
        db, follow, sizeof follow,
        "INSERT INTO campaigns (user_id, title, message, niche, priority, scheduled_at)"
        " VALUES ('%s', 'follow-up', 'Thanks {{name}}', 'f', 5, now() + interval '1 second')"
        " RETURNING id",
        user);
    PQclear(wt_sql(db, "COMMIT"));
    if (!e2e_wait_finished(db, follow, 60000) || !e2e_wait_finished(db, blast, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the campaigns did not finish");
    }
    size_t n = 0;
    sc_send *sends = sc_read_sends(&env, &n);
    qsort(sends, n, sizeof *sends, cmp_ts);
    long blast_before = 0, follow_sent = 0, blast_sent = 0;
    for (size_t i = 0; i < n; i++) {
        if (!sends[i].ok)
            continue;
        if (!strcmp(sends[i].campaign, follow)) {
            follow_sent++;
        } else {
            blast_sent++;
            if (follow_sent < FOLLOW)
                blast_before++;
        }
    }
    sc_sends_free(sends, n);
    fprintf(stderr, "the blast sent %ld while the follow-up sent its %ld (priority 5 vs 0)\n",
            blast_before, follow_sent);
    assert_int_equal(follow_sent, FOLLOW);
    assert_int_equal(blast_sent, BLAST);
    assert_true(blast_before <= 10);
    assert_true(blast_before >= 1); /* the blast is not starved */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_priority_lane_goes_first),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
