/* The Redis fence's decisions (sql/006 wacast_redis_fence_check, used by
 * lib/wc_epoch.c) against a real PostgreSQL: what counts as a loss of
 * acknowledged writes, what does not, and how a second daemon finding the
 * same loss joins it instead of starting another epoch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wt_env.h"

static wt_env env;
static PGconn *db;

typedef struct fence {
    long epoch;
    bool reset, lost;
    long loss_redis_ms, loss_at_ms;
} fence;

/* Runs the check with what PostgreSQL held before Redis was read and what
 * Redis then held ("NULL" for no fence). */
static fence check_read(const char *p_epoch, const char *p_seq, const char *epoch, const char *seq,
                        const char *ms)
{
    PGresult *r = wt_sql(db,
                         "SELECT epoch, reset, lost, loss_redis_ms, loss_at_ms"
                         " FROM wacast_redis_fence_check(%s, %s, %s, %s, %s)",
                         epoch, seq, ms, p_epoch, p_seq);
    fence f = {atol(PQgetvalue(r, 0, 0)), PQgetvalue(r, 0, 1)[0] == 't',
               PQgetvalue(r, 0, 2)[0] == 't', atol(PQgetvalue(r, 0, 3)), atol(PQgetvalue(r, 0, 4))};
    PQclear(r);
    return f;
}

/* The check as a daemon runs it: PostgreSQL's copy read first. */
static fence check(const char *epoch, const char *seq, const char *ms)
{
    PGresult *r = wt_sql(db, "SELECT coalesce(max(epoch)::text, 'NULL'),"
                             " coalesce(max(seq)::text, 'NULL') FROM redis_fence");
    char pe[24], ps[24];
    snprintf(pe, sizeof pe, "%s", PQgetvalue(r, 0, 0));
    snprintf(ps, sizeof ps, "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    return check_read(pe, ps, epoch, seq, ms);
}

/* What a sender does once Redis acknowledged a bump. */
static void acknowledged(long epoch, long seq)
{
    PQclear(wt_sql(db, "UPDATE redis_fence SET seq = greatest(seq, %ld) WHERE epoch = %ld", seq,
                   epoch));
}

static void test_fence(void **state)
{
    (void)state;
    /* A new Redis, and daemons starting together: no loss. */
    fence f = check("NULL", "NULL", "NULL");
    assert_int_equal(f.epoch, 1);
    assert_true(f.reset);
    assert_false(f.lost);
    f = check("NULL", "NULL", "NULL");
    assert_int_equal(f.epoch, 1);
    assert_false(f.lost);

    /* Redis kept everything (or more than PostgreSQL saw): no loss. */
    acknowledged(1, 5);
    f = check("1", "5", "1000");
    assert_false(f.reset);
    assert_false(f.lost);
    assert_int_equal(f.loss_at_ms, 0);
    f = check("1", "7", "1100");
    assert_false(f.lost);
    /* A bump acknowledged and copied between the two reads is no loss. */
    acknowledged(1, 8);
    f = check_read("1", "7", "1", "7", "1150");
    assert_false(f.lost);

    /* Redis came back behind: a new epoch from its last kept point. */
    acknowledged(1, 9);
    f = check("1", "8", "1200");
    assert_int_equal(f.epoch, 2);
    assert_true(f.reset);
    assert_true(f.lost);
    assert_int_equal(f.loss_redis_ms, 1200);
    assert_true(f.loss_at_ms > 0);

    /* A second daemon that read the old fence joins the same loss. */
    fence g = check("1", "8", "1150");
    assert_int_equal(g.epoch, 2);
    assert_true(g.reset);
    assert_true(g.lost);
    assert_int_equal(g.loss_redis_ms, 1150);
    /* A late bump of the old epoch changes nothing. */
    acknowledged(1, 50);

    /* Once Redis carries the new epoch: no loss again. */
    f = check("2", "0", "1300");
    assert_false(f.lost);
    assert_false(f.reset);
    assert_int_equal(f.epoch, 2);

    /* A Redis with no fence after losses on record lost everything. */
    acknowledged(2, 3);
    f = check("NULL", "NULL", "NULL");
    assert_int_equal(f.epoch, 3);
    assert_true(f.lost);
    assert_int_equal(f.loss_redis_ms, 0);
    assert_int_equal(wt_sql_long(db, "SELECT losses FROM redis_fence"), 2);

    /* PostgreSQL behind Redis (restored from a backup): follow Redis. */
    f = check("7", "4", "1400");
    assert_int_equal(f.epoch, 7);
    assert_false(f.lost);
    assert_false(f.reset);
}

int main(void)
{
    if (wt_env_start(&env, WT_MIGRATE) < 0)
        return 1;
    db = wt_pg(&env);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fence),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    PQfinish(db);
    wt_env_stop(&env);
    return rc;
}
