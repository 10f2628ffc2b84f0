/* The dispatcher's HTTP listeners under hostile clients, on a real daemon with
 * real Redis and PostgreSQL:
 * 1. the admin API is on its own listener (WACAST_ADMIN_PORT): /admin/ on the
 *    public port is a 404, on the admin port it answers (401 without the
 *    token, 404 for an unknown campaign with it), and the admin port serves
 *    nothing else;
 * 2. connection cap: with WACAST_HTTP_MAX_CONNS idle connections open, each
 *    further one is answered 503 and closed at once, counted in
 *    wacast_http_connections_refused_total, and /healthz answers again once
 *    the idle ones go;
 * 3. read deadline: a client that sends part of a header line and stalls, and
 *    one that trickles a byte every 300 ms, are both cut after
 *    WACAST_HTTP_READ_TIMEOUT_S (a deadline, not an inactivity timer);
 * 4. body caps: a webhook whose Content-Length (or chunk) is over 1 MiB, or an
 *    admin request over 64 KiB, gets 413 at once, before the body is sent;
 * 5. a flood of connections larger than the daemon's file descriptor limit
 *    does not starve its Redis reconnect, and the admin listener (its own
 *    cap) still answers through PostgreSQL during the flood;
 * 6. SIGTERM while an admin request waits on PostgreSQL: the daemon answers or
 *    drops it and exits 0, with no sanitizer report (the PostgreSQL pool used
 *    to be freed after the HTTP server, its callback answering a freed
 *    request). */

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <dirent.h>

#include <cmocka.h>

#include "wt_env.h"

#define CAP 16
#define ADMIN_CAP 8
#define READ_TIMEOUT_S 3
#define TOKEN "limits-admin-token"
#define NO_CAMPAIGN "00000000-0000-4000-8000-000000000000"

static wt_env env;
static int port, admin_port;
static pid_t dispatcher;

/* ---- raw connections ------------------------------------------------------------------------ */

/* A connection to 127.0.0.1:p, or -1. */
static int try_connect(int p)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int connect_to(int p)
{
    int fd = try_connect(p);
    if (fd < 0)
        fail_msg("connect to %d: %s", p, strerror(errno));
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail_msg("send: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

typedef struct reply {
    char head[512]; /* the first bytes the server sent */
    size_t len;
    bool closed; /* end of file or reset seen */
} reply;

/* Reads what the server sends until it closes the connection or timeout_ms
 * passes. */
static void read_until_closed(int fd, int timeout_ms, reply *r)
{
    memset(r, 0, sizeof *r);
    long long deadline = wt_now_ms() + timeout_ms;
    for (;;) {
        long long left = deadline - wt_now_ms();
        if (left <= 0)
            return;
        struct pollfd pfd = {fd, POLLIN, 0};
        int n = poll(&pfd, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        char buf[4096];
        ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            r->closed = true;
            return;
        }
        size_t room = sizeof r->head - 1 - r->len;
        size_t take = (size_t)got < room ? (size_t)got : room;
        memcpy(r->head + r->len, buf, take);
        r->len += take;
        r->head[r->len] = '\0';
    }
}

/* Sends a request and returns the status code of the reply (0: none within
 * timeout_ms). */
static int request(int p, const char *method, const char *path, const char *headers,
                   const char *body, int timeout_ms, reply *r)
{
    memset(r, 0, sizeof *r);
    int fd = try_connect(p);
    if (fd < 0)
        return 0;
    char req[2048];
    snprintf(req, sizeof req,
             "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%sContent-Length: %zu\r\n"
             "\r\n%s",
             method, path, headers ? headers : "", body ? strlen(body) : 0, body ? body : "");
    send_str(fd, req);
    read_until_closed(fd, timeout_ms, r);
    close(fd);
    int code = 0;
    if (sscanf(r->head, "HTTP/1.%*d %d", &code) != 1)
        code = 0;
    return code;
}

static int get(int p, const char *path)
{
    reply r;
    return request(p, "GET", path, NULL, NULL, 5000, &r);
}

typedef struct want_status {
    int port;
    const char *path;
    int code;
} want_status;

static bool status_is(void *arg)
{
    want_status *w = arg;
    return get(w->port, w->path) == w->code;
}

/* A sample of /metrics on port p (-1 when missing). */
static double metric_at(int p, const char *sample)
{
    int fd = try_connect(p);
    if (fd < 0)
        return -1;
    send_str(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    static char all[1 << 17];
    size_t len = 0;
    long long deadline = wt_now_ms() + 5000;
    for (;;) {
        long long left = deadline - wt_now_ms();
        struct pollfd pfd = {fd, POLLIN, 0};
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            break;
        ssize_t got = recv(fd, all + len, sizeof all - 1 - len, 0);
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    all[len] = '\0';
    size_t n = strlen(sample);
    for (char *line = all; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
        if (!strncmp(line, sample, n) && line[n] == ' ')
            return atof(line + n + 1);
    return -1;
}

static double metric(const char *sample)
{
    return metric_at(port, sample);
}

typedef struct want_metric {
    const char *sample;
    double value;
} want_metric;

static bool metric_is(void *arg)
{
    want_metric *w = arg;
    return metric(w->sample) == w->value;
}

/* ---- set-up --------------------------------------------------------------------------------- */

static pid_t spawn_dispatcher(const char *name, int p, int ap, const char *timeout_ms)
{
    static char envs[8][64];
    snprintf(envs[0], sizeof envs[0], "PORT=%d", p);
    snprintf(envs[1], sizeof envs[1], "WACAST_ADMIN_PORT=%d", ap);
    snprintf(envs[2], sizeof envs[2], "WACAST_HTTP_MAX_CONNS=%d", CAP);
    snprintf(envs[3], sizeof envs[3], "WACAST_ADMIN_MAX_CONNS=%d", ADMIN_CAP);
    snprintf(envs[4], sizeof envs[4], "WACAST_HTTP_READ_TIMEOUT_S=%d", READ_TIMEOUT_S);
    snprintf(envs[5], sizeof envs[5], "WACAST_TIMEOUT_MS=%s", timeout_ms);
    const char *extra[] = {envs[0],
                           envs[1],
                           envs[2],
                           envs[3],
                           envs[4],
                           envs[5],
                           "WACAST_ADMIN_TOKEN=" TOKEN,
                           "WACAST_META_APP_SECRET=limits-app-secret",
                           NULL};
    pid_t pid = wt_spawn(&env, "wacast-dispatcher", name, extra);
    want_status w = {p, "/readyz", 200};
    if (pid < 0 || !wt_wait_for(status_is, &w, 30000)) {
        wt_dump_logs(&env, 40);
        return -1;
    }
    return pid;
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_PG | WT_MIGRATE) < 0)
        return -1;
    port = wt_free_port();
    admin_port = wt_free_port();
    dispatcher = spawn_dispatcher("dispatcher", port, admin_port, "5000");
    return dispatcher > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    wt_env_stop(&env);
    return 0;
}

/* No connection of the test's is left open at the daemon (only the metrics
 * request itself). */
static void wait_idle(void)
{
    want_metric w = {"wacast_http_connections{listener=\"public\"}", 1};
    if (!wt_wait_for(metric_is, &w, 10000))
        fail_msg("the public listener still has %g connections open", metric(w.sample));
}

/* ---- 1: two listeners ----------------------------------------------------------------------- */

static void test_admin_has_its_own_listener(void **state)
{
    (void)state;
    const char *path = "/admin/campaigns/" NO_CAMPAIGN "/pause";
    const char *auth = "Authorization: Bearer " TOKEN "\r\n";
    reply r;
    assert_int_equal(request(port, "POST", path, auth, NULL, 5000, &r), 404);
    assert_int_equal(request(admin_port, "POST", path, NULL, NULL, 5000, &r), 401);
    assert_int_equal(request(admin_port, "POST", path, auth, NULL, 5000, &r), 404);
    assert_non_null(strstr(r.head, "no such campaign"));
    /* The admin listener serves the admin API and nothing else. */
    assert_int_equal(get(admin_port, "/healthz"), 404);
    assert_int_equal(get(admin_port, "/webhooks/cloudapi"), 404);
    /* Both listeners' counters are on the public /metrics. */
    assert_true(metric("wacast_http_connections{listener=\"admin\"}") >= 0);
    assert_true(metric("wacast_http_connections_refused_total{listener=\"public\"}") >= 0);
}

/* ---- 2: connection cap ---------------------------------------------------------------------- */

static void test_connection_cap(void **state)
{
    (void)state;
    wait_idle();
    double refused_before = metric("wacast_http_connections_refused_total{listener=\"public\"}");
    enum { EXTRA = 4 };
    int fds[CAP + EXTRA];
    for (int i = 0; i < CAP + EXTRA; i++)
        fds[i] = connect_to(port);
    /* The listener accepts in order: the last EXTRA are over the cap. */
    for (int i = CAP; i < CAP + EXTRA; i++) {
        reply r;
        read_until_closed(fds[i], 2000, &r);
        fprintf(stderr, "connection %d over the cap: closed=%d %.40s\n", i, r.closed, r.head);
        assert_true(r.closed);
        assert_true(r.len == 0 || !strncmp(r.head, "HTTP/1.1 503", 12));
    }
    /* The first CAP are still open (their read deadline is seconds away). */
    for (int i = 0; i < CAP; i++) {
        struct pollfd pfd = {fds[i], POLLIN, 0};
        assert_int_equal(poll(&pfd, 1, 0), 0);
    }
    for (int i = 0; i < CAP + EXTRA; i++)
        close(fds[i]);
    want_status w = {port, "/healthz", 200};
    assert_true(wt_wait_for(status_is, &w, 5000));
    double refused = metric("wacast_http_connections_refused_total{listener=\"public\"}");
    assert_true(refused >= refused_before + EXTRA);
}

/* ---- 3: read deadline ----------------------------------------------------------------------- */

static void test_stalled_headers_are_cut(void **state)
{
    (void)state;
    double before = metric("wacast_http_read_timeouts_total{listener=\"public\"}");
    long long t0 = wt_now_ms();
    int fd = connect_to(port);
    send_str(fd, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a");
    reply r;
    read_until_closed(fd, (READ_TIMEOUT_S + 5) * 1000, &r);
    long long took = wt_now_ms() - t0;
    close(fd);
    fprintf(stderr, "stalled client cut after %lld ms (closed=%d)\n", took, r.closed);
    assert_true(r.closed);
    assert_true(r.len == 0);
    assert_true(took >= READ_TIMEOUT_S * 1000 - 200 && took <= (READ_TIMEOUT_S + 3) * 1000);
    assert_true(metric("wacast_http_read_timeouts_total{listener=\"public\"}") >= before + 1);
}

static void test_trickling_headers_are_cut(void **state)
{
    (void)state;
    long long t0 = wt_now_ms();
    int fd = connect_to(admin_port);
    send_str(fd, "POST /admin/campaigns/" NO_CAMPAIGN "/pause HTTP/1.1\r\nX-Slow: ");
    /* One byte whenever 300 ms pass without the server closing. */
    bool closed = false;
    while (!closed && wt_now_ms() - t0 < (READ_TIMEOUT_S + 5) * 1000) {
        struct pollfd pfd = {fd, POLLIN, 0};
        int n = poll(&pfd, 1, 300);
        if (n > 0) {
            char buf[256];
            closed = recv(fd, buf, sizeof buf, 0) <= 0;
            assert_true(closed); /* nothing is answered to a request never finished */
        } else if (n == 0 && send(fd, "a", 1, MSG_NOSIGNAL) < 0) {
            closed = true;
        }
    }
    long long took = wt_now_ms() - t0;
    close(fd);
    fprintf(stderr, "trickling client cut after %lld ms\n", took);
    assert_true(closed);
    assert_true(took >= READ_TIMEOUT_S * 1000 - 200 && took <= (READ_TIMEOUT_S + 3) * 1000);
}

/* ---- 4: body caps --------------------------------------------------------------------------- */

static void test_bodies_over_the_cap(void **state)
{
    (void)state;
    /* The body is announced, not sent: only a refusal from the headers comes
     * back before the read deadline. */
    const char *public_413 = "wacast_http_bodies_too_large_total{listener=\"public\"}";
    const char *admin_413 = "wacast_http_bodies_too_large_total{listener=\"admin\"}";
    double public0 = metric(public_413), admin0 = metric(admin_413);
    reply r;
    int fd = connect_to(port);
    send_str(fd, "POST /webhooks/cloudapi HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 "Content-Length: 2097152\r\n\r\n{\"object\":");
    read_until_closed(fd, 2000, &r);
    close(fd);
    fprintf(stderr, "webhook of 2 MiB: %.40s\n", r.head);
    assert_true(!strncmp(r.head, "HTTP/1.1 413", 12));

    fd = connect_to(port);
    send_str(fd, "POST /webhooks/cloudapi HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "200000\r\n{\"object\":");
    read_until_closed(fd, 2000, &r);
    close(fd);
    fprintf(stderr, "webhook chunk of 2 MiB: %.40s\n", r.head);
    assert_true(!strncmp(r.head, "HTTP/1.1 413", 12));

    fd = connect_to(admin_port);
    send_str(fd, "POST /admin/campaigns/" NO_CAMPAIGN "/pause HTTP/1.1\r\nHost: x\r\n"
                 "Authorization: Bearer " TOKEN "\r\nContent-Length: 100000\r\n\r\n{");
    read_until_closed(fd, 2000, &r);
    close(fd);
    fprintf(stderr, "admin body of 100 kB: %.40s\n", r.head);
    assert_true(!strncmp(r.head, "HTTP/1.1 413", 12));

    assert_true(metric(public_413) == public0 + 2);
    assert_true(metric(admin_413) == admin0 + 1);

    /* Under the cap a webhook reaches its handler (which wants a signature). */
    assert_int_equal(request(port, "POST", "/webhooks/cloudapi", NULL, "{\"object\":1}", 5000, &r),
                     401);
}

/* ---- 5: a flood larger than the daemon's descriptors ---------------------------------------- */

static int open_fds(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static long redis_clients(void)
{
    redisContext *c = redisConnect("127.0.0.1", env.redis_port);
    if (!c || c->err) {
        if (c)
            redisFree(c);
        return -1;
    }
    redisReply *r = redisCommand(c, "INFO clients");
    long n = -1;
    const char *at =
        r && r->type == REDIS_REPLY_STRING ? strstr(r->str, "connected_clients:") : NULL;
    if (at)
        n = atol(at + strlen("connected_clients:"));
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return n;
}

static bool dispatcher_reconnected(void *arg)
{
    (void)arg;
    /* Its three connections (commands, jobs, results) and this one. */
    return redis_clients() >= 4;
}

static void test_flood_spares_redis_and_admin(void **state)
{
    (void)state;
    wait_idle();
    /* Leave the daemon room for its own connections and the cap, not for the
     * flood: without the cap, the flood takes every descriptor. */
    int base_fds = open_fds(dispatcher);
    int limit = base_fds + CAP + 16;
    struct rlimit old, rl;
    assert_int_equal(prlimit(dispatcher, RLIMIT_NOFILE, NULL, &old), 0);
    rl = (struct rlimit){(rlim_t)limit, old.rlim_max};
    assert_int_equal(prlimit(dispatcher, RLIMIT_NOFILE, &rl, NULL), 0);
    int nflood = limit + CAP;
    fprintf(stderr, "daemon has %d fds, limit %d, flood of %d\n", base_fds, limit, nflood);
    int *flood = calloc((size_t)nflood, sizeof *flood);
    assert_non_null(flood);
    for (int i = 0; i < nflood; i++)
        flood[i] = connect_to(port);

    /* During the flood Redis restarts: the daemon needs descriptors to
     * reconnect. */
    assert_int_equal(wt_redis_restart(&env, false), 0);
    bool reconnected = wt_wait_for(dispatcher_reconnected, NULL, 10000);
    fprintf(stderr, "redis clients after the restart: %ld; daemon fds %d\n", redis_clients(),
            open_fds(dispatcher));
    /* The admin listener has a cap of its own, and PostgreSQL answers. */
    reply r;
    int admin_code = request(admin_port, "POST", "/admin/campaigns/" NO_CAMPAIGN "/pause",
                             "Authorization: Bearer " TOKEN "\r\n", NULL, 5000, &r);
    for (int i = 0; i < nflood; i++)
        close(flood[i]);
    free(flood);
    assert_int_equal(prlimit(dispatcher, RLIMIT_NOFILE, &old, NULL), 0);
    assert_true(reconnected);
    assert_int_equal(admin_code, 404);
    want_status w = {port, "/readyz", 200};
    assert_true(wt_wait_for(status_is, &w, 10000));
}

/* ---- 6: SIGTERM with an admin request waiting on PostgreSQL --------------------------------- */

static int stopping_port;

/* The request has reached the admin handler, which has queued its query;
 * with campaigns locked, the query cannot finish. */
static bool admin_request_in(void *arg)
{
    (void)arg;
    return metric_at(stopping_port, "wacast_dispatcher_admin_requests_total") >= 1;
}

static void test_sigterm_with_admin_request_pending(void **state)
{
    (void)state;
    int p = wt_free_port(), ap = wt_free_port();
    stopping_port = p;
    /* A query time-out longer than the test: only shutdown ends the wait. */
    pid_t pid = spawn_dispatcher("dispatcher-stopping", p, ap, "60000");
    assert_true(pid > 0);
    PGconn *db = wt_pg(&env);
    PQclear(wt_sql(db, "BEGIN"));
    PQclear(wt_sql(db, "LOCK TABLE campaigns IN ACCESS EXCLUSIVE MODE"));
    int fd = connect_to(ap);
    send_str(fd, "POST /admin/campaigns/" NO_CAMPAIGN "/pause HTTP/1.1\r\nHost: x\r\n"
                 "Authorization: Bearer " TOKEN "\r\nContent-Length: 0\r\n\r\n");
    bool waiting = wt_wait_for(admin_request_in, NULL, 10000);
    kill(pid, SIGTERM);
    int status = wt_wait_exit(&env, pid, 15000);
    reply r;
    read_until_closed(fd, 2000, &r);
    close(fd);
    PQclear(wt_sql(db, "ROLLBACK"));
    PQfinish(db);
    fprintf(stderr, "admin request during shutdown: %.60s (closed=%d), exit status %d\n", r.head,
            r.closed, status);
    char cmd[700];
    snprintf(cmd, sizeof cmd,
             "grep -q -e AddressSanitizer -e 'runtime error' '%s/dispatcher-stopping.log'",
             env.dir);
    bool sanitizer_report = system(cmd) == 0;
    if (sanitizer_report || status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        wt_dump_logs(&env, 60);
    assert_true(waiting);
    assert_false(sanitizer_report);
    assert_true(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(r.closed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admin_has_its_own_listener),
        cmocka_unit_test(test_connection_cap),
        cmocka_unit_test(test_stalled_headers_are_cut),
        cmocka_unit_test(test_trickling_headers_are_cut),
        cmocka_unit_test(test_bodies_over_the_cap),
        cmocka_unit_test(test_flood_spares_redis_and_admin),
        cmocka_unit_test(test_sigterm_with_admin_request_pending),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
