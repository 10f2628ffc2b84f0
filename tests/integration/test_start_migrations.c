/* A daemon whose start-up migrations are refused for a while (PostgreSQL
 * restarting, failing over, or, here, a table in the way) keeps trying until
 * WACAST_START_TIMEOUT instead of exiting at the first refusal (the chaos
 * test saw a dispatcher exit when PostgreSQL went away during its
 * migrations). On real PostgreSQL and Redis: a table named like one of the
 * schema's makes the first migration fail; the dispatcher says so and waits;
 * once the table is dropped it applies the migrations and serves /readyz. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "wt_env.h"

static wt_env env;
static PGconn *db;
static int port;
static pid_t pid;

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_PG) < 0)
        return -1;
    db = wt_pg(&env);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

static bool log_says_trying(void *arg)
{
    (void)arg;
    char path[600], line[2048];
    snprintf(path, sizeof path, "%s/dispatcher.log", env.dir);
    FILE *f = fopen(path, "r");
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, "migrations:") && strstr(line, "trying again");
    if (f)
        fclose(f);
    return found || !wt_alive(&env, pid);
}

static bool ready(void *arg)
{
    (void)arg;
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", port);
    resp r;
    long code = http("GET", url, NULL, 0, NULL, &r);
    resp_free(&r);
    return code == 200;
}

static void test_refused_migrations_are_retried(void **state)
{
    (void)state;
    PQclear(wt_sql(db, "CREATE TABLE users (in_the_way int)"));
    port = wt_free_port();
    char port_env[32];
    snprintf(port_env, sizeof port_env, "PORT=%d", port);
    const char *extra[] = {port_env, "WACAST_START_TIMEOUT=120", NULL};
    pid = wt_spawn(&env, "wacast-dispatcher", "dispatcher", extra);
    assert_true(pid > 0);
    assert_true(wt_wait_for(log_says_trying, NULL, 60000));
    if (!wt_alive(&env, pid)) {
        wt_dump_logs(&env, 10);
        fail_msg("the dispatcher exited at its first refused migration");
    }
    PQclear(wt_sql(db, "DROP TABLE users"));
    if (!wt_wait_for(ready, NULL, 60000)) {
        wt_dump_logs(&env, 10);
        fail_msg("the dispatcher did not start once the migrations could run");
    }
    assert_true(wt_sql_long(db, "SELECT count(*) FROM users") == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_migrations_are_retried),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
