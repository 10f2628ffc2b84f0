/* A Redis that speaks only TLS (a managed Redis: rediss://), reached the way
 * the deploy files reach it. Debian 12's hiredis has no TLS, so a daemon
 * given rediss:// must refuse it with an error that names the sidecar (and
 * not the password), and a daemon pointed at the image's stunnel sidecar
 * (deploy/image/wacast redis-tls, the same script the image runs) works:
 * real redis-server with --tls-port only, a throwaway CA and certificate made
 * here with openssl, an ACL user with a password in REDIS_URL, the sidecar
 * verifying the server's certificate and host name, and a dispatcher that
 * becomes ready and creates its consumer group on the TLS Redis. The same
 * goes for PostgreSQL's platform setting: PGSSLMODE=require reaches libpq
 * (this test's PostgreSQL has no TLS, so the daemon must refuse to go on). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "wt_env.h"

#ifndef WACAST_SOURCE_DIR
#define WACAST_SOURCE_DIR "."
#endif

#define PASSWORD "tls-pw-Zq81"

static wt_env env;
static int tls_port, sidecar_port, http_port;
static pid_t redis_pid, sidecar_pid;

/* Runs argv (found on PATH) with extra NAME=value settings, output to
 * <dir>/<name>.log; killed with the test (PR_SET_PDEATHSIG). */
static pid_t start(const char *name, char *const argv[], const char *const *extra)
{
    char log[600];
    snprintf(log, sizeof log, "%s/%s.log", env.dir, name);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    for (const char *const *e = extra; e && *e; e++)
        putenv((char *)*e);
    execvp(argv[0], argv);
    _exit(127);
}

static void stop(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    int st;
    waitpid(*pid, &st, 0);
    *pid = 0;
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_PG | WT_MIGRATE) < 0)
        return -1;
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=wacast-test-ca"
             " -keyout ca.key -out ca.crt >openssl.log 2>&1"
             " && openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout redis.key"
             " -out redis.csr >>openssl.log 2>&1"
             " && printf 'subjectAltName=DNS:localhost\\n' >san.ext"
             " && openssl x509 -req -in redis.csr -CA ca.crt -CAkey ca.key -CAcreateserial"
             " -days 1 -extfile san.ext -out redis.crt >>openssl.log 2>&1"
             " && chmod 644 redis.key"
             " && printf 'user default off\\nuser wacast on >%s ~* &* +@all\\n' >users.acl",
             env.dir, PASSWORD);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_redis_tls: openssl failed (see %s/openssl.log)\n", env.dir);
        return -1;
    }
    tls_port = wt_free_port();
    sidecar_port = wt_free_port();
    char port_s[16], cert[300], key[300], ca[300], dir[300], acl[300];
    snprintf(port_s, sizeof port_s, "%d", tls_port);
    snprintf(cert, sizeof cert, "%s/redis.crt", env.dir);
    snprintf(key, sizeof key, "%s/redis.key", env.dir);
    snprintf(ca, sizeof ca, "%s/ca.crt", env.dir);
    snprintf(dir, sizeof dir, "%s", env.dir);
    snprintf(acl, sizeof acl, "%s/users.acl", env.dir);
    char *redis_argv[] = {"redis-server",
                          "--port",
                          "0",
                          "--tls-port",
                          port_s,
                          "--bind",
                          "127.0.0.1",
                          "--tls-cert-file",
                          cert,
                          "--tls-key-file",
                          key,
                          "--tls-ca-cert-file",
                          ca,
                          "--tls-auth-clients",
                          "no",
                          "--save",
                          "",
                          "--appendonly",
                          "no",
                          "--dir",
                          dir,
                          "--aclfile",
                          acl,
                          NULL};
    redis_pid = start("redis-tls-server", redis_argv, NULL);
    static char upstream[64], listen_on[64], ca_env[320];
    snprintf(upstream, sizeof upstream, "REDIS_TLS_UPSTREAM=localhost:%d", tls_port);
    snprintf(listen_on, sizeof listen_on, "REDIS_TLS_LISTEN=127.0.0.1:%d", sidecar_port);
    snprintf(ca_env, sizeof ca_env, "REDIS_TLS_CA_FILE=%s", ca);
    char tmpdir[320];
    snprintf(tmpdir, sizeof tmpdir, "TMPDIR=%s", env.dir);
    const char *sidecar_env[] = {upstream, listen_on, ca_env, tmpdir, NULL};
    char *sidecar_argv[] = {"sh", WACAST_SOURCE_DIR "/deploy/image/wacast", "redis-tls", NULL};
    sidecar_pid = start("redis-tls-sidecar", sidecar_argv, sidecar_env);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    wt_env_stop(&env); /* the daemons first: they hold connections through the sidecar */
    stop(&sidecar_pid);
    stop(&redis_pid);
    return 0;
}

static bool ready(void *arg)
{
    (void)arg;
    return e2e_ready(http_port);
}

static bool file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[4096];
    bool found = false;
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    return found;
}

static void test_rediss_url_is_refused_naming_the_sidecar(void **state)
{
    (void)state;
    char url[160];
    snprintf(url, sizeof url, "REDIS_URL=rediss://wacast:" PASSWORD "@localhost:%d/0", tls_port);
    const char *extra[] = {url, "WACAST_START_TIMEOUT=5", NULL};
    pid_t pid = wt_spawn(&env, "wacast-dispatcher", "dispatcher-rediss", extra);
    assert_true(pid > 0);
    int st = wt_wait_exit(&env, pid, 30000);
    assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0);
    char log[600];
    snprintf(log, sizeof log, "%s/dispatcher-rediss.log", env.dir);
    if (!file_contains(log, "wacast redis-tls")) {
        wt_dump_logs(&env, 10);
        fail_msg("the refusal does not name the sidecar");
    }
    assert_false(file_contains(log, PASSWORD));
}

static void test_daemon_through_the_sidecar(void **state)
{
    (void)state;
    http_port = wt_free_port();
    char url[160], port_env[32];
    snprintf(url, sizeof url, "REDIS_URL=redis://wacast:" PASSWORD "@127.0.0.1:%d/0", sidecar_port);
    snprintf(port_env, sizeof port_env, "PORT=%d", http_port);
    const char *extra[] = {url, port_env, "WACAST_START_TIMEOUT=60", NULL};
    pid_t pid = wt_spawn(&env, "wacast-dispatcher", "dispatcher", extra);
    assert_true(pid > 0);
    if (!wt_wait_for(ready, NULL, 60000)) {
        wt_dump_logs(&env, 20);
        fail_msg("the dispatcher never became ready through the TLS sidecar");
    }
    /* What it wrote is on the TLS Redis: its consumer group on the jobs stream. */
    char cmd[1024], line[256] = "";
    snprintf(cmd, sizeof cmd,
             "redis-cli --tls --cacert %s/ca.crt -h localhost -p %d --user wacast --pass %s"
             " --no-auth-warning XINFO GROUPS wacast:jobs 2>&1",
             env.dir, tls_port, PASSWORD);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    bool group = false;
    while (fgets(line, sizeof line, p))
        group = group || strncmp(line, "dispatchers", 11) == 0;
    pclose(p);
    assert_true(group);
    char log[600];
    snprintf(log, sizeof log, "%s/dispatcher.log", env.dir);
    assert_false(file_contains(log, PASSWORD));
    assert_int_equal(wt_signal(&env, pid, SIGTERM), 0);
}

static void test_pgsslmode_is_honoured(void **state)
{
    (void)state;
    char url[160];
    snprintf(url, sizeof url, "REDIS_URL=redis://wacast:" PASSWORD "@127.0.0.1:%d/0", sidecar_port);
    const char *extra[] = {url, "PGSSLMODE=require", "WACAST_START_TIMEOUT=3", NULL};
    pid_t pid = wt_spawn(&env, "wacast-dispatcher", "dispatcher-sslmode", extra);
    assert_true(pid > 0);
    int st = wt_wait_exit(&env, pid, 30000);
    assert_true(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) != 0);
    char log[600];
    snprintf(log, sizeof log, "%s/dispatcher-sslmode.log", env.dir);
    if (!file_contains(log, "SSL")) {
        wt_dump_logs(&env, 10);
        fail_msg("the dispatcher did not ask PostgreSQL for TLS");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rediss_url_is_refused_naming_the_sidecar),
        cmocka_unit_test(test_daemon_through_the_sidecar),
        cmocka_unit_test(test_pgsslmode_is_honoured),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
