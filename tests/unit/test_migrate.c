/* wc_migrate against a real PostgreSQL: each file applied once (also when
 * four processes start at the same moment), a failing file rolled back with
 * its name and line in the error, a file edited after it was applied
 * named, and no password in a connection error.
 * Also the data migration of sealed credentials (`wacast-ctl reseal`).
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
#include <sodium.h>

#include "wc_log.h"
#include "wc_migrate.h"
#include "wc_seal.h"
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

/* A file edited after it was applied is not run again; it is counted (and
 * named in a warning) at every start, and its recorded checksum stays the
 * one that ran. A row from before checksums were kept takes the current
 * file's. */
static void test_changed_file_is_named(void **state)
{
    char url[256], err[512];
    make_db("m_changed", url, sizeof url);
    const wc_migration first[] = {{"001_a.sql", "CREATE TABLE t_ck (x int);"},
                                  {"002_b.sql", "CREATE TABLE t_ck2 (x int);"}};
    int changed = -1;
    assert_int_equal(wc_migrate_apply_checked(url, first, 2, &changed, err, sizeof err), 2);
    assert_int_equal(changed, 0);
    PGconn *c = connect_db(url);
    char sum[80];
    wt_sql_text(c, sum, sizeof sum,
                "SELECT checksum FROM schema_migrations WHERE name = '001_a.sql'");
    assert_int_equal(strlen(sum), 64);
    const wc_migration edited[] = {{"001_a.sql", "CREATE TABLE t_ck (x int, y int);"}, first[1]};
    assert_int_equal(wc_migrate_apply_checked(url, edited, 2, &changed, err, sizeof err), 0);
    assert_int_equal(changed, 1);
    assert_int_equal(wt_sql_long(c, "SELECT count(*) FROM information_schema.columns"
                                    " WHERE table_name = 't_ck' AND column_name = 'y'"),
                     0);
    char still[80];
    wt_sql_text(c, still, sizeof still,
                "SELECT checksum FROM schema_migrations WHERE name = '001_a.sql'");
    assert_string_equal(still, sum);
    /* Recorded before checksums: the file as it is now is taken as the one
     * that ran, and nothing is reported. */
    PQclear(wt_sql(c, "UPDATE schema_migrations SET checksum = NULL"));
    assert_int_equal(wc_migrate_apply_checked(url, edited, 2, &changed, err, sizeof err), 0);
    assert_int_equal(changed, 0);
    assert_int_equal(
        wt_sql_long(c, "SELECT count(*) FROM schema_migrations WHERE length(checksum) = 64"), 2);
    assert_int_equal(wc_migrate_apply_checked(url, first, 2, &changed, err, sizeof err), 0);
    assert_int_equal(changed, 1);
    PQfinish(c);
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

static const char *RESEAL_KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
/* {"access_token":"legacy-token"} sealed with RESEAL_KEY by the version 1
 * code (secretbox, bound to no device), as rows written before the upgrade
 * hold it. */
static const char *LEGACY_HEX =
    "0135bfb168f7b4bdb1b2c76050ff6ee3582c524cece5ee44a92b94b2a23dbe00347a1cba1d1a0e752276f34fa2e1"
    "70fd864c6f909429d150503f4fcd9a98035714269397f58f8578d5";

/* Runs `wacast-ctl reseal` on url; returns its exit status, its stderr in err. */
static int run_reseal(const char *url, char *err, size_t errlen)
{
    char path[512];
    wt_program_path("wacast-ctl", path, sizeof path);
    int out[2];
    assert_int_equal(pipe(out), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(out[1], STDERR_FILENO);
        close(out[0]);
        setenv("DATABASE_URL", url, 1);
        setenv(WC_SEAL_KEY_ENV, RESEAL_KEY, 1);
        unsetenv(WC_SEAL_PREVIOUS_KEY_ENV);
        /* reseal is the migration: it opens legacy values whatever this says. */
        setenv(WC_SEAL_LEGACY_ENV, "refuse", 1);
        execl(path, path, "reseal", (char *)NULL);
        _exit(127);
    }
    close(out[1]);
    size_t n = 0;
    ssize_t got;
    while (n + 1 < errlen && (got = read(out[0], err + n, errlen - n - 1)) > 0)
        n += (size_t)got;
    err[n] = '\0';
    close(out[0]);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* The row's credentials opened for its own id under refuse-legacy keys. */
static void assert_opens_for(PGconn *c, wc_seal_keys *k, const char *id, const char *want)
{
    PGresult *res =
        wt_sql(c, "SELECT encode(credentials, 'hex') FROM user_devices WHERE id = '%s'", id);
    const char *hex = PQgetvalue(res, 0, 0);
    uint8_t sealed[512];
    size_t len = 0;
    assert_int_equal(sodium_hex2bin(sealed, sizeof sealed, hex, strlen(hex), NULL, &len, NULL), 0);
    PQclear(res);
    assert_int_equal(sealed[0], WC_SEAL_VERSION);
    assert_true(wc_seal_is_current(k, id, sealed, len));
    char *plain = NULL, err[256];
    size_t plen = 0;
    if (wc_unseal(k, id, sealed, len, &plain, &plen, err, sizeof err) < 0)
        fail_msg("device %s: %s", id, err);
    assert_string_equal(plain, want);
    wc_seal_plain_free(plain, plen);
}

/* Upgrading sealed credentials: reseal rewrites a legacy row bound to its
 * own id, leaves a current row alone, and reports (without touching) a row
 * holding a value sealed for another device. */
static void test_reseal_binds_rows_to_their_device(void **state)
{
    (void)state;
    char url[256], err[4096];
    make_db("m_reseal", url, sizeof url);
    if (wc_migrate(url, err, sizeof err) < 0)
        fail_msg("migrate: %s", err);
    wc_seal_keys *k = NULL;
    assert_int_equal(wc_seal_init(&k, RESEAL_KEY, NULL, err, sizeof err), 0);
    assert_int_equal(wc_seal_set_legacy(k, "refuse", err, sizeof err), 0);
    const char *legacy = "7d1c2f00-0000-4000-8000-00000000000a";
    const char *current = "7d1c2f00-0000-4000-8000-00000000000b";
    const char *copied = "7d1c2f00-0000-4000-8000-00000000000c";
    const char *creds = "{\"access_token\":\"current-token\"}";
    uint8_t *sealed = NULL;
    size_t slen = 0;
    assert_int_equal(wc_seal(k, current, creds, strlen(creds), &sealed, &slen), 0);
    char hex[512];
    sodium_bin2hex(hex, sizeof hex, sealed, slen);
    free(sealed);

    PGconn *c = connect_db(url);
    PQclear(wt_sql(c, "INSERT INTO users (id, name) VALUES"
                      " ('7d1c2f00-0000-4000-8000-000000000001', 'u')"));
    PQclear(wt_sql(c,
                   "INSERT INTO user_devices (id, user_id, credentials) VALUES"
                   " ('%s', '7d1c2f00-0000-4000-8000-000000000001', decode('%s', 'hex')),"
                   " ('%s', '7d1c2f00-0000-4000-8000-000000000001', decode('%s', 'hex')),"
                   " ('%s', '7d1c2f00-0000-4000-8000-000000000001', decode('%s', 'hex'))",
                   legacy, LEGACY_HEX, current, hex, copied, hex));

    int rc = run_reseal(url, err, sizeof err);
    print_message("reseal: exit %d, stderr: %s\n", rc, err);
    assert_int_equal(rc, 1); /* one row could not be opened */
    char want[128];
    snprintf(want, sizeof want, "device %s: wrong key or corrupt", copied);
    assert_non_null(strstr(err, want));
    assert_null(strstr(err, "token"));
    assert_opens_for(c, k, legacy, "{\"access_token\":\"legacy-token\"}");
    assert_opens_for(c, k, current, creds);
    assert_int_equal(wt_sql_long(c,
                                 "SELECT count(*) FROM user_devices WHERE id = '%s'"
                                 " AND credentials = decode('%s', 'hex')",
                                 current, hex),
                     1);
    assert_int_equal(wt_sql_long(c,
                                 "SELECT count(*) FROM user_devices WHERE id = '%s'"
                                 " AND credentials = decode('%s', 'hex')",
                                 copied, hex),
                     1);
    /* Again: nothing left to do but the row it cannot open. */
    rc = run_reseal(url, err, sizeof err);
    assert_int_equal(rc, 1);
    PQfinish(c);
    wc_seal_keys_free(k);
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
        cmocka_unit_test(test_changed_file_is_named),
        cmocka_unit_test(test_file_may_not_commit),
        cmocka_unit_test(test_unreachable_reports_without_password),
        cmocka_unit_test(test_reseal_binds_rows_to_their_device),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
