/* What an operator gets from each of wacast-scheduler, wacast-dispatcher and
 * wacast-sender before any campaign: `--help` lists every setting with its
 * default and exits 0; an unknown argument, an invalid setting, or an
 * unreachable PostgreSQL or Redis at start exits non-zero with exactly one
 * line on stderr that names the problem and never shows a password. With real
 * servers: GET /healthz, /readyz and /metrics (Prometheus text with the
 * daemon's counters) answer, an unknown path is a JSON 404, a POST is 405;
 * /readyz turns 503 while redis-server is down and 200 again once it is back
 * (the daemon reconnects by itself and stays up); SIGTERM exits 0 within 15 s. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "wt_env.h"

#define PASSWORD "hunter2"

typedef struct daemon_case {
    const char *program;
    const char *specific; /* a setting only this daemon has */
    const char *counter;  /* one of its Prometheus counters */
    int port;
    pid_t pid;
} daemon_case;

static daemon_case daemons[] = {
    {"wacast-scheduler", "WACAST_BATCH", "wacast_scheduler_campaigns_claimed_total", 0, 0},
    {"wacast-dispatcher", "WACAST_SINK_BATCH", "wacast_dispatcher_jobs_routed_total", 0, 0},
    {"wacast-sender", "WACAST_LEASE_TTL_MS", "wacast_sender_sent_total", 0, 0},
};
#define NDAEMONS (int)(sizeof daemons / sizeof daemons[0])

static wt_env env;

/* ---- running a program and capturing its output ------------------------------------------ */

typedef struct run_result {
    int status; /* as from waitpid */
    bool timed_out;
    char out[32768], err[32768];
    size_t outlen, errlen;
} run_result;

extern char **environ;

/* Runs program with one argument (or none) and the given NAME=value entries on
 * top of this process's environment minus any wacast setting, and collects
 * stdout and stderr separately. Kills it after timeout_ms. */
static void run_program(const char *program, const char *arg, const char *const *envs,
                        int timeout_ms, run_result *rr)
{
    memset(rr, 0, sizeof *rr);
    char path[512];
    wt_program_path(program, path, sizeof path);
    int outp[2], errp[2];
    if (pipe(outp) < 0 || pipe(errp) < 0) {
        perror("pipe");
        abort();
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        abort();
    }
    if (pid == 0) {
        dup2(outp[1], 1);
        dup2(errp[1], 2);
        close(outp[0]);
        close(outp[1]);
        close(errp[0]);
        close(errp[1]);
        /* Settings from the test's own environment must not leak in. */
        char names[256][128];
        int n = 0;
        for (char **e = environ; *e && n < 256; e++) {
            if (!strncmp(*e, "WACAST_", 7) || !strncmp(*e, "DATABASE_URL=", 13) ||
                !strncmp(*e, "REDIS_URL=", 10) || !strncmp(*e, "PORT=", 5)) {
                size_t len = strcspn(*e, "=");
                snprintf(names[n++], sizeof names[0], "%.*s", (int)len, *e);
            }
        }
        for (int i = 0; i < n; i++)
            unsetenv(names[i]);
        for (const char *const *e = envs; e && *e; e++)
            putenv((char *)*e);
        char *argv[] = {path, (char *)arg, NULL};
        execv(path, argv);
        fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    close(outp[1]);
    close(errp[1]);
    struct pollfd fds[2] = {{outp[0], POLLIN, 0}, {errp[0], POLLIN, 0}};
    char *bufs[2] = {rr->out, rr->err};
    size_t *lens[2] = {&rr->outlen, &rr->errlen};
    long long deadline = wt_now_ms() + timeout_ms;
    int open_fds = 2;
    while (open_fds > 0) {
        long long left = deadline - wt_now_ms();
        if (left <= 0)
            break;
        if (poll(fds, 2, (int)left) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char tmp[4096];
            ssize_t got = read(fds[i].fd, tmp, sizeof tmp);
            if (got <= 0) {
                close(fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
                continue;
            }
            size_t room = sizeof rr->out - 1 - *lens[i];
            size_t take = (size_t)got < room ? (size_t)got : room;
            memcpy(bufs[i] + *lens[i], tmp, take);
            *lens[i] += take;
            bufs[i][*lens[i]] = '\0';
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close(fds[i].fd);
    for (;;) {
        pid_t r = waitpid(pid, &rr->status, WNOHANG);
        if (r == pid)
            break;
        if (wt_now_ms() >= deadline) {
            rr->timed_out = true;
            kill(pid, SIGKILL);
            waitpid(pid, &rr->status, 0);
            break;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void print_run(const char *what, const run_result *rr)
{
    fprintf(stderr, "---- %s: %s, ", what, rr->timed_out ? "timed out" : "finished");
    if (WIFEXITED(rr->status))
        fprintf(stderr, "exit status %d\n", WEXITSTATUS(rr->status));
    else if (WIFSIGNALED(rr->status))
        fprintf(stderr, "killed by signal %d\n", WTERMSIG(rr->status));
    fprintf(stderr, "---- stdout:\n%s---- stderr:\n%s----\n", rr->out, rr->err);
}

/* Exactly one line: one '\n', at the end. */
static bool one_line(const char *s)
{
    const char *nl = strchr(s, '\n');
    return nl && nl[1] == '\0' && nl != s;
}

static bool exited_nonzero(const run_result *rr)
{
    return !rr->timed_out && WIFEXITED(rr->status) && WEXITSTATUS(rr->status) != 0;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

typedef struct http_resp {
    long code;
    char body[65536];
    size_t len;
    char ctype[128];
} http_resp;

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    http_resp *r = arg;
    size_t n = size * nmemb, room = sizeof r->body - 1 - r->len;
    size_t take = n < room ? n : room;
    memcpy(r->body + r->len, data, take);
    r->len += take;
    r->body[r->len] = '\0';
    return n;
}

/* One request to 127.0.0.1:port. Returns 0 when a response came back. */
static int http(int port, const char *method, const char *path, http_resp *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    if (!c)
        abort();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "{}");
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->code);
        char *ct = NULL;
        if (curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
            snprintf(r->ctype, sizeof r->ctype, "%s", ct);
    } else {
        snprintf(r->body, sizeof r->body, "%s", curl_easy_strerror(rc));
    }
    curl_easy_cleanup(c);
    return rc == CURLE_OK ? 0 : -1;
}

typedef struct status_wait {
    daemon_case *d;
    const char *path;
    long want;
    long last;
    bool died;
    char body[512];
} status_wait;

/* True when the daemon answers path with the wanted code; notes a death. */
static bool answers(void *arg)
{
    status_wait *w = arg;
    if (!wt_alive(&env, w->d->pid)) {
        w->died = true;
        return true;
    }
    http_resp r;
    if (http(w->d->port, "GET", w->path, &r) < 0) {
        w->last = -1;
        snprintf(w->body, sizeof w->body, "%.400s", r.body);
        return false;
    }
    w->last = r.code;
    snprintf(w->body, sizeof w->body, "%.400s", r.body);
    return r.code == w->want;
}

/* Waits (bounded) until the daemon answers path with code; fails the test otherwise. */
static void expect_status(daemon_case *d, const char *path, long code, int timeout_ms)
{
    status_wait w = {.d = d, .path = path, .want = code};
    bool ok = wt_wait_for(answers, &w, timeout_ms);
    if (!ok || w.died) {
        fprintf(stderr, "%s: GET %s: %s; last answer %ld \"%s\", want %ld within %d ms\n",
                d->program, path, w.died ? "the daemon died" : "timed out", w.last, w.body, code,
                timeout_ms);
        wt_dump_logs(&env, 30);
        fail();
    }
}

/* ---- setup ----------------------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    static char ports[NDAEMONS][32];
    for (int i = 0; i < NDAEMONS; i++) {
        daemons[i].port = wt_free_port();
        snprintf(ports[i], sizeof ports[i], "PORT=%d", daemons[i].port);
        const char *envs[] = {ports[i],
                              "WACAST_LOG_LEVEL=info",
                              "WACAST_POLL_MS=200",
                              "WACAST_LEASE_TTL_MS=3000",
                              "WACAST_DEVICE_REFRESH_MS=500",
                              "WACAST_IDLE_POLL_MS=1000",
                              "WACAST_RECONCILE_MS=2000",
                              NULL};
        daemons[i].pid = wt_spawn(&env, daemons[i].program, daemons[i].program + 7, envs);
        if (daemons[i].pid < 0)
            return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    wt_env_stop(&env);
    curl_global_cleanup();
    return 0;
}

/* ---- without servers ------------------------------------------------------------------------ */

/* --help exits 0 and lists every setting with its default. */
static void test_help(void **state)
{
    daemon_case *d = *state;
    run_result rr;
    run_program(d->program, "--help", NULL, 10000, &rr);
    bool ok = !rr.timed_out && WIFEXITED(rr.status) && WEXITSTATUS(rr.status) == 0;
    const char *names[] = {"DATABASE_URL", "REDIS_URL", "PORT", "WACAST_LOG_LEVEL", d->specific};
    int missing = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        /* A line "  NAME  help (default: value)". */
        bool found = false;
        for (const char *p = rr.out; p && *p && !found;) {
            const char *end = strchr(p, '\n');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            char line[1024];
            snprintf(line, sizeof line, "%.*s", (int)len, p);
            const char *name = line + strspn(line, " ");
            size_t nlen = strlen(names[i]);
            if (!strncmp(name, names[i], nlen) && (name[nlen] == ' ' || name[nlen] == '\t') &&
                strstr(line, "(default: "))
                found = true;
            p = end ? end + 1 : NULL;
        }
        if (!found) {
            fprintf(stderr, "%s --help: no line for %s with its default\n", d->program, names[i]);
            missing++;
        }
    }
    /* Every setting line carries its default, once. */
    int without_default = 0;
    for (const char *p = rr.out; p && *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char line[1024];
        snprintf(line, sizeof line, "%.*s", (int)len, p);
        const char *name = line + strspn(line, " ");
        bool setting =
            name != line && (starts_with(name, "WACAST_") || starts_with(name, "DATABASE_URL") ||
                             starts_with(name, "REDIS_URL") || starts_with(name, "PORT "));
        /* Exactly one default per setting: two would leave the reader guessing. */
        const char *def = strstr(line, "(default: ");
        if (setting && (!def || strstr(def + 1, "(default: "))) {
            fprintf(stderr, "%s --help: want exactly one \"(default: ...)\" on: %s\n", d->program,
                    line);
            without_default++;
        }
        p = end ? end + 1 : NULL;
    }
    if (!ok || missing || without_default)
        print_run("--help", &rr);
    assert_true(ok);
    assert_int_equal(missing, 0);
    assert_int_equal(without_default, 0);
}

/* An unknown argument: non-zero exit, one line on stderr that names it. */
static void test_unknown_argument(void **state)
{
    daemon_case *d = *state;
    run_result rr;
    run_program(d->program, "--frobnicate", NULL, 10000, &rr);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s: ", d->program);
    bool ok = exited_nonzero(&rr) && one_line(rr.err) && starts_with(rr.err, prefix) &&
              strstr(rr.err, "--frobnicate");
    if (!ok)
        print_run("--frobnicate", &rr);
    assert_true(ok);
}

/* An invalid setting: non-zero exit, one line on stderr naming the setting and
 * the value, before any server is contacted. */
static void test_invalid_settings(void **state)
{
    daemon_case *d = *state;
    char specific[64];
    snprintf(specific, sizeof specific, "%s=-5", d->specific);
    const char *bad[] = {"WACAST_LOG_LEVEL=loud", "PORT=abc", "PORT=70000", specific};
    /* Servers that are not there, and no waiting: if validation came after the
     * connection attempt, the line would be about the connection instead. */
    char db[128], rd[128];
    snprintf(db, sizeof db, "DATABASE_URL=postgresql://postgres@127.0.0.1:%d/wacast",
             wt_free_port());
    snprintf(rd, sizeof rd, "REDIS_URL=redis://127.0.0.1:%d/0", wt_free_port());
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%s: ", d->program);
    int failures = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *envs[] = {db, rd, "WACAST_START_TIMEOUT=0", bad[i], NULL};
        run_result rr;
        run_program(d->program, NULL, envs, 10000, &rr);
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(bad[i], "="), bad[i]);
        const char *value = strchr(bad[i], '=') + 1;
        if (!exited_nonzero(&rr) || !one_line(rr.err) || !starts_with(rr.err, prefix) ||
            !strstr(rr.err, name) || !strstr(rr.err, value)) {
            fprintf(stderr, "%s with %s: want a non-zero exit and one line naming %s and %s\n",
                    d->program, bad[i], name, value);
            print_run(bad[i], &rr);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

/* PostgreSQL unreachable at start: exit 1 with one line, no password. */
static void test_unreachable_postgres(void **state)
{
    daemon_case *d = *state;
    int pg_port = wt_free_port();
    char db_url[160], db_kv[200], rd[128];
    snprintf(db_url, sizeof db_url,
             "DATABASE_URL=postgresql://postgres:" PASSWORD "@127.0.0.1:%d/wacast", pg_port);
    snprintf(db_kv, sizeof db_kv,
             "DATABASE_URL=host=127.0.0.1 port=%d user=postgres password=" PASSWORD
             " dbname=wacast",
             pg_port);
    snprintf(rd, sizeof rd, "REDIS_URL=redis://:" PASSWORD "@127.0.0.1:%d/0", wt_free_port());
    const char *forms[] = {db_url, db_kv};
    int failures = 0;
    for (int k = 0; k < 2; k++) {
        const char *envs[] = {forms[k], rd, "WACAST_START_TIMEOUT=0", NULL};
        run_result rr;
        run_program(d->program, NULL, envs, 15000, &rr);
        char prefix[128], where[64];
        snprintf(prefix, sizeof prefix, "%s: cannot reach PostgreSQL at %s", d->program,
                 k == 0 ? "postgresql://postgres" : "host=127.0.0.1");
        snprintf(where, sizeof where, k == 0 ? "@127.0.0.1:%d/wacast: " : "port=%d ", pg_port);
        bool ok = !rr.timed_out && WIFEXITED(rr.status) && WEXITSTATUS(rr.status) == 1 &&
                  one_line(rr.err) && starts_with(rr.err, prefix) && strstr(rr.err, where) &&
                  !strstr(rr.err, PASSWORD) && !strstr(rr.out, PASSWORD);
        if (ok && k == 0) {
            /* The cause follows the address. */
            const char *cause = strstr(rr.err, where) + strlen(where);
            ok = strlen(cause) > 2;
        }
        if (!ok) {
            fprintf(stderr,
                    "%s, %s: want exit 1 and one line \"%s...%s<cause>\" without the"
                    " password\n",
                    d->program, forms[k], prefix, where);
            print_run(forms[k], &rr);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

/* Redis unreachable at start (PostgreSQL fine): exit 1 with one line, no password. */
static void test_unreachable_redis(void **state)
{
    daemon_case *d = *state;
    int port = wt_free_port();
    char db[300], rd[128];
    snprintf(db, sizeof db, "DATABASE_URL=%s", env.database_url);
    snprintf(rd, sizeof rd, "REDIS_URL=redis://:" PASSWORD "@127.0.0.1:%d/0", port);
    const char *envs[] = {db, rd, "WACAST_START_TIMEOUT=0", NULL};
    run_result rr;
    run_program(d->program, NULL, envs, 15000, &rr);
    char prefix[128], where[64];
    snprintf(prefix, sizeof prefix, "%s: cannot reach Redis at redis://", d->program);
    snprintf(where, sizeof where, "@127.0.0.1:%d/0: ", port);
    bool ok = !rr.timed_out && WIFEXITED(rr.status) && WEXITSTATUS(rr.status) == 1 &&
              one_line(rr.err) && starts_with(rr.err, prefix) && strstr(rr.err, where) &&
              strlen(strstr(rr.err, where) + strlen(where)) > 2 && !strstr(rr.err, PASSWORD) &&
              !strstr(rr.out, PASSWORD);
    if (!ok) {
        fprintf(stderr, "%s: want exit 1 and one line \"%s...%s<cause>\" without the password\n",
                d->program, prefix, where);
        print_run(rd, &rr);
    }
    assert_true(ok);
}

/* ---- with servers -----------------------------------------------------------------------------
 */

/* /healthz, /readyz and /metrics answer; unknown paths are JSON 404s; POST is 405. */
static void test_http_endpoints(void **state)
{
    daemon_case *d = *state;
    expect_status(d, "/healthz", 200, 30000);
    expect_status(d, "/readyz", 200, 30000);

    http_resp r;
    assert_int_equal(http(d->port, "GET", "/metrics", &r), 0);
    bool metrics_ok = r.code == 200 && strstr(r.body, "# TYPE wacast_") &&
                      strstr(r.body, d->counter) && starts_with(r.ctype, "text/plain");
    if (!metrics_ok)
        fprintf(stderr,
                "%s /metrics: %ld %s, want 200 text/plain with \"# TYPE wacast_\" and %s:\n%s\n",
                d->program, r.code, r.ctype, d->counter, r.body);
    assert_true(metrics_ok);

    assert_int_equal(http(d->port, "GET", "/no-such-path", &r), 0);
    json_error_t jerr;
    json_t *j = json_loads(r.body, 0, &jerr);
    bool json_404 = r.code == 404 && starts_with(r.ctype, "application/json") && json_is_object(j);
    if (!json_404)
        fprintf(stderr, "%s GET /no-such-path: %ld %s \"%s\", want a JSON 404\n", d->program,
                r.code, r.ctype, r.body);
    json_decref(j);
    assert_true(json_404);

    const char *paths[] = {"/healthz", "/readyz", "/metrics"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(http(d->port, "POST", paths[i], &r), 0);
        if (r.code != 405)
            fprintf(stderr, "%s POST %s: %ld, want 405\n", d->program, paths[i], r.code);
        assert_int_equal(r.code, 405);
    }
    assert_true(wt_alive(&env, d->pid));
}

/* /readyz follows Redis: 503 while redis-server is down, 200 again once it is
 * back, with each daemon running throughout. */
static void test_readiness_follows_redis(void **state)
{
    (void)state;
    for (int i = 0; i < NDAEMONS; i++)
        expect_status(&daemons[i], "/readyz", 200, 30000);
    assert_int_equal(wt_redis_stop(&env, false), 0);
    for (int i = 0; i < NDAEMONS; i++) {
        expect_status(&daemons[i], "/readyz", 503, 15000);
        /* The body says what is missing. */
        http_resp r;
        assert_int_equal(http(daemons[i].port, "GET", "/readyz", &r), 0);
        if (!strstr(r.body, "redis"))
            fprintf(stderr, "%s /readyz while Redis is down: \"%s\" does not say redis\n",
                    daemons[i].program, r.body);
        assert_non_null(strstr(r.body, "redis"));
        /* Alive, and still answering health checks. */
        expect_status(&daemons[i], "/healthz", 200, 5000);
    }
    assert_int_equal(wt_redis_start(&env), 0);
    for (int i = 0; i < NDAEMONS; i++)
        expect_status(&daemons[i], "/readyz", 200, 30000);
    for (int i = 0; i < NDAEMONS; i++)
        assert_true(wt_alive(&env, daemons[i].pid));
}

/* SIGTERM: exit status 0 within 15 s. */
static void test_sigterm(void **state)
{
    daemon_case *d = *state;
    assert_true(wt_alive(&env, d->pid));
    assert_int_equal(kill(d->pid, SIGTERM), 0);
    long long t0 = wt_now_ms();
    int st = wt_wait_exit(&env, d->pid, 15000);
    bool ok = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok) {
        fprintf(stderr, "%s: SIGTERM gave status %d after %lld ms, want exit 0 within 15 s\n",
                d->program, st, wt_now_ms() - t0);
        wt_dump_logs(&env, 30);
    }
    assert_true(ok);
}

#define EACH(fn, label)                                                                            \
    {"scheduler " label, fn, NULL, NULL, &daemons[0]},                                             \
        {"dispatcher " label, fn, NULL, NULL, &daemons[1]},                                        \
    {                                                                                              \
        "sender " label, fn, NULL, NULL, &daemons[2]                                               \
    }

int main(void)
{
    const struct CMUnitTest tests[] = {
        EACH(test_help, "--help"),
        EACH(test_unknown_argument, "unknown argument"),
        EACH(test_invalid_settings, "invalid settings"),
        EACH(test_unreachable_postgres, "unreachable PostgreSQL"),
        EACH(test_unreachable_redis, "unreachable Redis"),
        EACH(test_http_endpoints, "HTTP endpoints"),
        {"readiness follows Redis", test_readiness_follows_redis, NULL, NULL, NULL},
        EACH(test_sigterm, "SIGTERM"),
    };
    return cmocka_run_group_tests_name("daemon_basics", tests, setup, teardown);
}
