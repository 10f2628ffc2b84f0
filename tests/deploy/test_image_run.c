/* The container image's own binaries, run through its ENTRYPOINT as its
 * non-root user (tests/deploy/image_test.sh mounts the image and sets
 * WACAST_TEST_LAUNCHER to "chroot --userspec=UID:GID ROOT ENTRYPOINT"), on
 * real redis-server and PostgreSQL: the one-shot `wacast migrate` applies the
 * schema; a dispatcher started by role serves /readyz; the image's
 * HEALTHCHECK command passes against it and fails once it is gone; SIGTERM
 * reaches the daemon through the entrypoint (a clean exit, not a kill). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "wt_env.h"

static wt_env env;
static PGconn *db;
static int port;

static int setup(void **state)
{
    (void)state;
    const char *launch = getenv("WACAST_TEST_LAUNCHER");
    if (!launch || !*launch) {
        fprintf(stderr, "test_image_run: WACAST_TEST_LAUNCHER is not set (run image_test.sh)\n");
        return -1;
    }
    if (wt_env_start(&env, WT_REDIS | WT_PG) < 0)
        return -1;
    db = wt_pg(&env);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    e2e_teardown(&env, db, NULL);
    return 0;
}

/* Runs one of the entrypoint's one-shot roles; returns its exit status. */
static int run_role(const char *program, const char *name, const char *const *extra)
{
    pid_t pid = wt_spawn(&env, program, name, extra);
    assert_true(pid > 0);
    int st = wt_wait_exit(&env, pid, 60000);
    if (st == -1)
        fail_msg("%s did not end within 60 s", name);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_migrate_one_shot(void **state)
{
    (void)state;
    int code = run_role("wacast-migrate", "migrate", NULL);
    if (code != 0)
        wt_dump_logs(&env, 20);
    assert_int_equal(code, 0);
    char reg[64];
    wt_sql_text(db, reg, sizeof reg, "SELECT to_regclass('public.broadcast_messages')::text");
    assert_string_equal(reg, "broadcast_messages");
    /* Once more: applied migrations are skipped, not an error. */
    assert_int_equal(run_role("wacast-migrate", "migrate-again", NULL), 0);
}

static bool ready(void *arg)
{
    (void)arg;
    return e2e_ready(port);
}

/* The real uid of a process, from /proc. */
static long uid_of(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long uid = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "Uid:", 4))
            uid = strtol(line + 4, NULL, 10);
    if (f)
        fclose(f);
    return uid;
}

static void test_daemon_healthcheck_and_sigterm(void **state)
{
    (void)state;
    port = wt_free_port();
    char port_env[32];
    snprintf(port_env, sizeof port_env, "PORT=%d", port);
    const char *extra[] = {port_env, "WACAST_LOG_FORMAT=json", NULL};
    pid_t pid = wt_spawn(&env, "wacast-dispatcher", "dispatcher", extra);
    assert_true(pid > 0);
    if (!wt_wait_for(ready, NULL, 60000)) {
        wt_dump_logs(&env, 20);
        fail_msg("the image's dispatcher never became ready");
    }
    /* The entrypoint exec'ed the daemon as the image's user: same pid. */
    long uid = uid_of(pid);
    assert_true(uid > 0);
    char comm_path[64], comm[64] = "";
    snprintf(comm_path, sizeof comm_path, "/proc/%d/comm", (int)pid);
    FILE *f = fopen(comm_path, "r");
    assert_non_null(f);
    assert_non_null(fgets(comm, sizeof comm, f));
    fclose(f);
    assert_non_null(strstr(comm, "wacast-dispatch"));

    assert_int_equal(run_role("wacast-healthcheck", "healthcheck", extra), 0);

    assert_int_equal(kill(pid, SIGTERM), 0);
    int st = wt_wait_exit(&env, pid, 30000);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        wt_dump_logs(&env, 20);
        fail_msg("the dispatcher did not stop cleanly on SIGTERM (status %d)", st);
    }
    assert_int_not_equal(run_role("wacast-healthcheck", "healthcheck-after", extra), 0);
    fprintf(stderr, "test_image_run: dispatcher ran as uid %ld, healthcheck ok, SIGTERM clean\n",
            uid);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrate_one_shot),
        cmocka_unit_test(test_daemon_healthcheck_and_sigterm),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
