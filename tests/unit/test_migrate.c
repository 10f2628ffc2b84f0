/* wc_migrate against a real PostgreSQL: each file applied once (also when
 * four processes start at the same moment), a failing file rolled back with
 * its name and line in the error, and no password in a connection error.
 * Asserts on what migrate reports and on schema_migrations, never on the
 * content of the real schema. Every test uses its own database. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "wc_log.h"
#include "wc_migrate.h"
#include "wt_env.h"

static wt_env env;

static int group_setup(void **state)
{
    return wt_env_start(&env, WT_PG) < 0 ? -1 : 0;
}

static int group_teardown(void **state)
{
    wt_env_stop(&env);
    return 0;
}

/* Creates database name and writes its URL into url. */
static void make_db(const char *name, char *url, size_t urllen)
{
    PGconn *c = wt_pg(&env);
    PQclear(wt_sql(c, "CREATE DATABASE %s", name));
    PQfinish(c);
    snprintf(url, urllen, "postgresql://postgres@127.0.0.1:%d/%s", env.pg_port, name);
}

static PGconn *connect_db(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        fail_msg("connect %s: %s", url, PQerrorMessage(c));
    return c;
}

/* Checks schema_migrations holds exactly the names of list[0..count), once each. */
static void assert_recorded(const char *url, const wc_migration *list, size_t count)
{
    PGconn *c = connect_db(url);
    PGresult *res = wt_sql(c, "SELECT name FROM schema_migrations ORDER BY name");
    if ((size_t)PQntuples(res) != count)
        fail_msg("schema_migrations has %d rows, expected %zu", PQntuples(res), count);
    for (size_t i = 0; i < count; i++)
        assert_string_equal(PQgetvalue(res, (int)i, 0), list[i].name);
    PQclear(res);
    PQfinish(c);
}

static void test_embedded_apply_twice(void **state)
{
    char url[256], err[512];
    make_db("m_twice", url, sizeof url);
    int n = wc_migrate(url, err, sizeof err);
    if (n < 0)
        fail_msg("first run: %s", err);
    assert_int_equal(n, (int)wc_migrations_count);
    assert_recorded(url, wc_migrations, wc_migrations_count);
    n = wc_migrate(url, err, sizeof err);
    if (n < 0)
        fail_msg("second run: %s", err);
    assert_int_equal(n, 0);
    assert_recorded(url, wc_migrations, wc_migrations_count);
}

typedef struct child_report {
    int applied;
    char err[512];
} child_report;

/* Forks nproc processes that wait at a gate (a pipe the parent closes), then
 * each run wc_migrate_apply at the same moment; sums what they applied. */
static int race(int nproc, const char *url, const wc_migration *list, size_t count)
{
    int gate[2], reports[2];
    assert_int_equal(pipe(gate), 0);
    assert_int_equal(pipe(reports), 0);
    pid_t pids[16];
    for (int i = 0; i < nproc; i++) {
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(gate[1]);
            close(reports[0]);
            char byte;
            if (read(gate[0], &byte, 1) != 0)
                _exit(3);
            child_report rep = {0};
            rep.applied = wc_migrate_apply(url, list, count, rep.err, sizeof rep.err);
            /* Smaller than PIPE_BUF: the write is atomic. */
            _exit(write(reports[1], &rep, sizeof rep) == (ssize_t)sizeof rep ? 0 : 4);
        }
    }
    close(gate[0]);
    close(reports[1]);
    close(gate[1]); /* opens the gate for all of them at once */
    int total = 0;
    for (int i = 0; i < nproc; i++) {
        child_report rep;
        ssize_t got = read(reports[0], &rep, sizeof rep);
        if (got != (ssize_t)sizeof rep)
            fail_msg("child report %d missing", i);
        if (rep.applied < 0)
            fail_msg("a concurrent migrate failed: %s", rep.err);
        total += rep.applied;
    }
    close(reports[0]);
    for (int i = 0; i < nproc; i++) {
        int st;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    return total;
}

static void test_embedded_four_processes(void **state)
{
    char url[256];
    make_db("m_race_embedded", url, sizeof url);
    assert_int_equal(race(4, url, wc_migrations, wc_migrations_count), (int)wc_migrations_count);
    assert_recorded(url, wc_migrations, wc_migrations_count);
}

/* Files that fail when applied twice, slow enough that the four processes
 * overlap for certain. */
static const wc_migration race_list[] = {
    {"001_a.sql", "CREATE TABLE race_a (id int PRIMARY KEY);\nSELECT pg_sleep(0.2);"},
    {"002_b.sql", "CREATE TABLE race_b (a int REFERENCES race_a (id));\n"
                  "INSERT INTO race_a VALUES (1);"},
    {"003_c.sql", "ALTER TABLE race_b ADD COLUMN note text NOT NULL DEFAULT '';"},
};

static void test_four_processes_apply_each_once(void **state)
{
    char url[256];
    make_db("m_race", url, sizeof url);
    assert_int_equal(race(4, url, race_list, 3), 3);
    assert_recorded(url, race_list, 3);
    PGconn *c = connect_db(url);
    assert_int_equal(wt_sql_long(c, "SELECT count(*) FROM race_a"), 1);
    PQfinish(c);
}

static void test_failure_rolls_back_and_names_the_file(void **state)
{
    char url[256], err[512];
    make_db("m_fail", url, sizeof url);
    const wc_migration broken[] = {
        {"001_ok.sql", "CREATE TABLE t_ok (x int);"},
        {"002_x.sql", "CREATE TABLE t_bad (x int);\nSELECT nosuchcol FROM t_bad;"},
        {"003_never.sql", "CREATE TABLE t_never (x int);"},
    };
    assert_int_equal(wc_migrate_apply(url, broken, 3, err, sizeof err), -1);
    print_message("error: %s\n", err);
    assert_true(strncmp(err, "migration 002_x.sql: ", strlen("migration 002_x.sql: ")) == 0);
    assert_non_null(strstr(err, "nosuchcol"));
    assert_non_null(strstr(err, "(line 2)"));
    assert_null(strchr(err, '\n'));
    assert_recorded(url, broken, 1);
    PGconn *c = connect_db(url);
    assert_int_equal(wt_sql_long(c, "SELECT count(*) FROM pg_class WHERE relname = 't_bad'"), 0);
    assert_int_equal(wt_sql_long(c, "SELECT count(*) FROM pg_class WHERE relname = 't_never'"), 0);
    PQfinish(c);

    /* Fixed file: the rest applies, the first is not run again. */
    const wc_migration fixed[] = {
        broken[0],
        {"002_x.sql", "CREATE TABLE t_bad (x int);"},
        broken[2],
    };
    assert_int_equal(wc_migrate_apply(url, fixed, 3, err, sizeof err), 2);
    assert_recorded(url, fixed, 3);
}

static void test_file_may_not_commit(void **state)
{
    char url[256], err[512];
    make_db("m_commit", url, sizeof url);
    const wc_migration list[] = {{"001_commits.sql", "CREATE TABLE t_c (x int);\nCOMMIT;"}};
    assert_int_equal(wc_migrate_apply(url, list, 1, err, sizeof err), -1);
    assert_non_null(strstr(err, "migration 001_commits.sql: "));
    assert_recorded(url, list, 0);
}

static void test_unreachable_reports_without_password(void **state)
{
    char url[256], err[512];
    snprintf(url, sizeof url, "postgresql://postgres:sekrit@127.0.0.1:%d/wacast", wt_free_port());
    assert_int_equal(wc_migrate(url, err, sizeof err), -1);
    print_message("error: %s\n", err);
    assert_non_null(strstr(err, "connect"));
    assert_null(strstr(err, "sekrit"));
}

int main(void)
{
    const char *level = getenv("WACAST_LOG_LEVEL");
    if (level && wc_log_set_level(level) < 0)
        return 2;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedded_apply_twice),
        cmocka_unit_test(test_embedded_four_processes),
        cmocka_unit_test(test_four_processes_apply_each_once),
        cmocka_unit_test(test_failure_rolls_back_and_names_the_file),
        cmocka_unit_test(test_file_may_not_commit),
        cmocka_unit_test(test_unreachable_reports_without_password),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
