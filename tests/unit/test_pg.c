/* wc_pg against a real PostgreSQL: round trips, SQL errors, FIFO dispatch
 * over several connections, a server restart under a running query, query
 * time-outs, an unreachable server and shutdown. The loop runs until a
 * condition holds or a deadline timer fires, so a bug fails a test instead of
 * hanging it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "wc_log.h"
#include "wc_pg.h"
#include "wt_env.h"

static wt_env env;

typedef struct result {
    int calls;
    bool ok;
    char err[256];
    char sqlstate[8];
    int ntuples;
    char value[4][64];
    bool isnull[4];
    long long at_ms;
    bool query_during_cb_failed; /* wc_pg_query from inside the callback returned -1 */
} result;

static void record_cb(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    result *r = arg;
    r->calls++;
    r->at_ms = wt_now_ms();
    snprintf(r->sqlstate, sizeof r->sqlstate, "%s", wc_pg_last_sqlstate(pg));
    if (res) {
        assert_null(err);
        r->ok = true;
        r->ntuples = PQntuples(res);
        for (int i = 0; i < PQnfields(res) && i < 4 && r->ntuples > 0; i++) {
            r->isnull[i] = PQgetisnull(res, 0, i);
            snprintf(r->value[i], sizeof r->value[i], "%s", PQgetvalue(res, 0, i));
        }
    } else {
        assert_non_null(err);
        r->ok = false;
        snprintf(r->err, sizeof r->err, "%s", err);
    }
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    *(bool *)arg = true;
}

/* Runs the loop until cond(arg) or timeout_ms; returns cond(arg). */
static bool loop_until(struct event_base *base, bool (*cond)(void *), void *arg, int timeout_ms)
{
    bool expired = false;
    struct event *deadline = evtimer_new(base, deadline_cb, &expired);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(deadline, &tv);
    while (!cond(arg) && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(deadline);
    return cond(arg);
}

static bool result_done(void *arg)
{
    return ((result *)arg)->calls > 0;
}

typedef struct results {
    result *r;
    int n;
} results;

static bool all_done(void *arg)
{
    results *rs = arg;
    for (int i = 0; i < rs->n; i++)
        if (rs->r[i].calls == 0)
            return false;
    return true;
}

static bool pool_ready(void *arg)
{
    return wc_pg_ready(arg);
}

static int group_setup(void **state)
{
    if (wt_env_start(&env, WT_PG) < 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    wt_env_stop(&env);
    return 0;
}

static void test_roundtrip_with_params(void **state)
{
    struct event_base *base = event_base_new();
    wc_pg *pg = wc_pg_new(base, env.database_url, "test-roundtrip", 2, 5000);
    assert_non_null(pg);
    result r = {0};
    const char *values[] = {"41", NULL, "h\xc3\xa9llo 'quoted' $1"};
    assert_int_equal(wc_pg_query(pg, "SELECT $1::int + 1, $2::text IS NULL, $2::text, $3::text", 3,
                                 values, record_cb, &r),
                     0);
    assert_int_equal(wc_pg_pending(pg), 1);
    assert_true(loop_until(base, result_done, &r, 10000));
    assert_int_equal(r.calls, 1);
    assert_true(r.ok);
    assert_int_equal(r.ntuples, 1);
    assert_string_equal(r.value[0], "42");
    assert_string_equal(r.value[1], "t");
    assert_true(r.isnull[2]);
    assert_string_equal(r.value[3], "h\xc3\xa9llo 'quoted' $1");
    assert_string_equal(r.sqlstate, "");
    assert_int_equal(wc_pg_pending(pg), 0);
    assert_true(wc_pg_ready(pg));
    assert_string_equal(wc_pg_error(pg), "");

    /* A command without rows, and no parameters at all. */
    result cmd = {0};
    assert_int_equal(wc_pg_query(pg, "SET application_name = 'x'", 0, NULL, record_cb, &cmd), 0);
    assert_true(loop_until(base, result_done, &cmd, 10000));
    assert_true(cmd.ok);
    assert_int_equal(cmd.ntuples, 0);

    wc_pg_free(pg);
    event_base_free(base);
}

static void test_sql_error_then_pool_keeps_working(void **state)
{
    struct event_base *base = event_base_new();
    wc_pg *pg = wc_pg_new(base, env.database_url, "test-error", 1, 5000);
    result bad = {0}, good = {0};
    assert_int_equal(wc_pg_query(pg, "SELECT * FROM no_such_table", 0, NULL, record_cb, &bad), 0);
    assert_int_equal(wc_pg_query(pg, "SELECT 7", 0, NULL, record_cb, &good), 0);
    assert_true(loop_until(base, result_done, &good, 10000));
    assert_int_equal(bad.calls, 1);
    assert_false(bad.ok);
    assert_string_equal(bad.sqlstate, "42P01");
    assert_non_null(strstr(bad.err, "no_such_table"));
    assert_null(strchr(bad.err, '\n'));
    assert_int_equal(good.calls, 1);
    assert_true(good.ok);
    assert_string_equal(good.value[0], "7");
    assert_string_equal(good.sqlstate, "");
    /* Outside a callback there is no SQLSTATE to report. */
    assert_string_equal(wc_pg_last_sqlstate(pg), "");

    /* A bad parameter is an error of the query too, not of the pool. */
    result conv = {0};
    const char *values[] = {"not a number"};
    assert_int_equal(wc_pg_query(pg, "SELECT $1::int", 1, values, record_cb, &conv), 0);
    assert_true(loop_until(base, result_done, &conv, 10000));
    assert_false(conv.ok);
    assert_string_equal(conv.sqlstate, "22P02");
    assert_true(wc_pg_ready(pg));

    wc_pg_free(pg);
    event_base_free(base);
}

typedef struct fifo_run {
    int n;
    int completed;
    int *order; /* submission index by completion position */
    long *pid;  /* backend pid by submission index */
    int *calls; /* callbacks by submission index */
    bool failed;
    char first_err[256];
} fifo_run;

typedef struct fifo_item {
    fifo_run *run;
    int index;
} fifo_item;

static void fifo_cb(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    fifo_item *it = arg;
    fifo_run *run = it->run;
    run->calls[it->index]++;
    if (!res) {
        if (!run->failed)
            snprintf(run->first_err, sizeof run->first_err, "query %d: %s", it->index, err);
        run->failed = true;
    } else if (atoi(PQgetvalue(res, 0, 0)) != it->index) {
        run->failed = true;
        snprintf(run->first_err, sizeof run->first_err, "query %d answered %s", it->index,
                 PQgetvalue(res, 0, 0));
    } else {
        run->pid[it->index] = atol(PQgetvalue(res, 0, 1));
    }
    run->order[run->completed++] = it->index;
}

static bool fifo_done(void *arg)
{
    fifo_run *run = arg;
    return run->completed == run->n;
}

/* Queues n queries at once and checks each completes once, with its own
 * answer, and that every connection ran its share in submission order. */
static void run_fifo(int nconn, int n, const char *sql, int *distinct_pids)
{
    struct event_base *base = event_base_new();
    wc_pg *pg = wc_pg_new(base, env.database_url, "test-fifo", nconn, 30000);
    fifo_run run = {.n = n};
    run.order = calloc((size_t)n, sizeof *run.order);
    run.pid = calloc((size_t)n, sizeof *run.pid);
    run.calls = calloc((size_t)n, sizeof *run.calls);
    fifo_item *items = calloc((size_t)n, sizeof *items);
    for (int i = 0; i < n; i++) {
        char num[16];
        snprintf(num, sizeof num, "%d", i);
        const char *values[] = {num};
        items[i] = (fifo_item){&run, i};
        assert_int_equal(wc_pg_query(pg, sql, 1, values, fifo_cb, &items[i]), 0);
    }
    assert_int_equal(wc_pg_pending(pg), (size_t)n);
    if (!loop_until(base, fifo_done, &run, 60000))
        fail_msg("only %d of %d queries completed", run.completed, n);
    if (run.failed)
        fail_msg("%s", run.first_err);
    for (int i = 0; i < n; i++)
        assert_int_equal(run.calls[i], 1);
    assert_int_equal(wc_pg_pending(pg), 0);
    /* Per backend, submission indexes must come back ascending. */
    int pids = 0;
    for (int i = 0; i < n; i++) {
        long pid = run.pid[run.order[i]];
        bool seen = false;
        for (int j = 0; j < i; j++) {
            if (run.pid[run.order[j]] == pid) {
                seen = true;
                if (run.order[j] > run.order[i])
                    fail_msg("backend %ld ran query %d before query %d", pid, run.order[j],
                             run.order[i]);
            }
        }
        if (!seen)
            pids++;
    }
    assert_in_range(pids, 1, nconn);
    *distinct_pids = pids;
    wc_pg_free(pg);
    event_base_free(base);
    free(items);
    free(run.order);
    free(run.pid);
    free(run.calls);
}

static void test_fifo_over_three_connections(void **state)
{
    int pids = 0;
    /* The sleep keeps each connection busy long enough for all three to take
     * a share while the queue drains. */
    run_fifo(3, 300, "SELECT $1::int, pg_backend_pid(), pg_sleep(0.002)", &pids);
    assert_true(pids >= 2);
}

static void test_fifo_one_connection_is_strict(void **state)
{
    int pids = 0;
    run_fifo(1, 200, "SELECT $1::int, pg_backend_pid()", &pids);
    assert_int_equal(pids, 1);
}

typedef struct restart_run {
    wc_pg *pg;
    struct event *poll;
    result inflight;
    result after[5];
    bool restarted;
    int restart_rc;
    int queued_after;
} restart_run;

/* Waits (on the loop) until the long query is visibly running, then restarts
 * the server while it runs. */
static void restart_poll_cb(evutil_socket_t fd, short what, void *arg)
{
    restart_run *rr = arg;
    PGconn *c = wt_pg(&env);
    long running = wt_sql_long(c, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                  "AND query = 'SELECT pg_sleep(30)'");
    PQfinish(c);
    if (running < 1)
        return;
    event_del(rr->poll);
    rr->restart_rc = wt_pg_restart(&env, false);
    rr->restarted = true;
}

static void inflight_cb(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    restart_run *rr = arg;
    record_cb(pg, res, err, &rr->inflight);
    /* Queue more from inside the callback: allowed, and they must succeed. */
    for (int i = 0; i < 5; i++) {
        char num[16];
        snprintf(num, sizeof num, "%d", i);
        const char *values[] = {num};
        if (wc_pg_query(pg, "SELECT $1::int", 1, values, record_cb, &rr->after[i]) == 0)
            rr->queued_after++;
    }
}

static void test_server_restart_midway(void **state)
{
    struct event_base *base = event_base_new();
    restart_run rr = {0};
    rr.pg = wc_pg_new(base, env.database_url, "test-restart", 2, 20000);
    assert_true(loop_until(base, pool_ready, rr.pg, 10000));
    assert_int_equal(wc_pg_query(rr.pg, "SELECT pg_sleep(30)", 0, NULL, inflight_cb, &rr), 0);
    rr.poll = event_new(base, -1, EV_PERSIST, restart_poll_cb, &rr);
    struct timeval every = {0, 20000};
    event_add(rr.poll, &every);

    assert_true(loop_until(base, result_done, &rr.inflight, 20000));
    assert_true(rr.restarted);
    assert_int_equal(rr.restart_rc, 0);
    assert_false(rr.inflight.ok);
    assert_true(rr.inflight.err[0] != '\0');
    print_message("in-flight query failed with: %s (sqlstate '%s')\n", rr.inflight.err,
                  rr.inflight.sqlstate);
    assert_int_equal(rr.queued_after, 5);

    results rs = {rr.after, 5};
    assert_true(loop_until(base, all_done, &rs, 20000));
    for (int i = 0; i < 5; i++) {
        if (!rr.after[i].ok)
            fail_msg("query %d after the restart failed: %s", i, rr.after[i].err);
        assert_int_equal(rr.after[i].calls, 1);
        assert_int_equal(atoi(rr.after[i].value[0]), i);
    }
    assert_int_equal(wc_pg_pending(rr.pg), 0);
    assert_true(wc_pg_ready(rr.pg));
    event_free(rr.poll);
    wc_pg_free(rr.pg);
    event_base_free(base);
}

static void test_query_timeout_then_recovers(void **state)
{
    struct event_base *base = event_base_new();
    wc_pg *pg = wc_pg_new(base, env.database_url, "test-timeout", 1, 300);
    assert_true(loop_until(base, pool_ready, pg, 10000));
    result slow = {0}, queued = {0};
    long long start = wt_now_ms();
    assert_int_equal(wc_pg_query(pg, "SELECT pg_sleep(2)", 0, NULL, record_cb, &slow), 0);
    /* Waits behind the slow one on the only connection, and times out too. */
    assert_int_equal(wc_pg_query(pg, "SELECT 1", 0, NULL, record_cb, &queued), 0);
    assert_int_equal(wc_pg_pending(pg), 2);
    assert_true(loop_until(base, result_done, &slow, 5000));
    assert_true(loop_until(base, result_done, &queued, 5000));
    assert_false(slow.ok);
    assert_string_equal(slow.err, "timeout");
    assert_false(queued.ok);
    assert_string_equal(queued.err, "timeout");
    assert_in_range(slow.at_ms - start, 250, 1500);
    assert_in_range(queued.at_ms - start, 250, 1500);
    assert_int_equal(slow.calls, 1);
    assert_int_equal(queued.calls, 1);
    assert_int_equal(wc_pg_pending(pg), 0);

    /* The connection was dropped; it comes back and serves queries again. */
    assert_true(loop_until(base, pool_ready, pg, 10000));
    result again = {0};
    assert_int_equal(wc_pg_query(pg, "SELECT 'back'", 0, NULL, record_cb, &again), 0);
    assert_true(loop_until(base, result_done, &again, 5000));
    if (!again.ok)
        fail_msg("query after the time-out failed: %s", again.err);
    assert_string_equal(again.value[0], "back");
    wc_pg_free(pg);
    event_base_free(base);
}

static bool has_error(void *arg)
{
    return wc_pg_error(arg)[0] != '\0';
}

static void test_unreachable_server(void **state)
{
    struct event_base *base = event_base_new();
    int port = wt_free_port();
    char url[256];
    snprintf(url, sizeof url, "postgresql://postgres:sekrit@127.0.0.1:%d/wacast", port);
    wc_pg *pg = wc_pg_new(base, url, "test-unreachable", 2, 300);
    assert_non_null(pg);
    result r[3] = {{0}};
    for (int i = 0; i < 3; i++)
        assert_int_equal(wc_pg_query(pg, "SELECT 1", 0, NULL, record_cb, &r[i]), 0);
    results rs = {r, 3};
    assert_true(loop_until(base, all_done, &rs, 5000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_false(r[i].ok);
        assert_string_equal(r[i].err, "timeout");
    }
    assert_true(loop_until(base, has_error, pg, 5000));
    const char *err = wc_pg_error(pg);
    print_message("wc_pg_error: %s\n", err);
    assert_null(strchr(err, '\n'));
    assert_null(strstr(err, "sekrit"));
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    assert_non_null(strstr(err, portstr));
    assert_false(wc_pg_ready(pg));
    assert_int_equal(wc_pg_pending(pg), 0);
    wc_pg_free(pg);
    event_base_free(base);
}

/* A server that completes the TCP handshake (the kernel does, from the listen
 * backlog) and then never says a word: only our own timer ends the attempt.
 * connect_timeout in the URL must win over the pool's default. */
static void test_connect_timeout_enforced(void **state)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    char url[256];
    snprintf(url, sizeof url, "postgresql://postgres@127.0.0.1:%d/wacast?connect_timeout=2",
             ntohs(a.sin_port));

    struct event_base *base = event_base_new();
    wc_pg *pg = wc_pg_new(base, url, "test-connect-timeout", 1, 0);
    long long start = wt_now_ms();
    assert_true(loop_until(base, has_error, pg, 8000));
    long long took = wt_now_ms() - start;
    print_message("wc_pg_error after %lld ms: %s\n", took, wc_pg_error(pg));
    assert_non_null(strstr(wc_pg_error(pg), "timed out"));
    assert_in_range(took, 1500, 5000);
    assert_false(wc_pg_ready(pg));
    wc_pg_free(pg);
    event_base_free(base);
    close(fd);
}

typedef struct shutdown_item {
    result r;
    wc_pg *pg;
} shutdown_item;

static void shutdown_cb(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    shutdown_item *it = arg;
    record_cb(pg, res, err, &it->r);
    /* The pool is going away: it must refuse new work rather than keep it. */
    it->r.query_during_cb_failed = wc_pg_query(pg, "SELECT 1", 0, NULL, record_cb, NULL) < 0;
}

static bool running_on_server(void *arg)
{
    PGconn *c = wt_pg(&env);
    long n = wt_sql_long(c, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                            "query = 'SELECT pg_sleep(5)'");
    PQfinish(c);
    return n > 0;
}

static void poll_noop_cb(evutil_socket_t fd, short what, void *arg)
{
}

static void test_free_fails_everything_once(void **state)
{
    struct event_base *base = event_base_new();
    wc_pg *pg = wc_pg_new(base, env.database_url, "test-free", 1, 0);
    assert_true(loop_until(base, pool_ready, pg, 10000));
    shutdown_item items[4];
    memset(items, 0, sizeof items);
    assert_int_equal(wc_pg_query(pg, "SELECT pg_sleep(5)", 0, NULL, shutdown_cb, &items[0]), 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(wc_pg_query(pg, "SELECT 1", 0, NULL, shutdown_cb, &items[i]), 0);
    /* Turn the loop (a 20 ms tick) until the sleep is running on the server. */
    struct event *tick = event_new(base, -1, EV_PERSIST, poll_noop_cb, NULL);
    struct timeval every = {0, 20000};
    event_add(tick, &every);
    assert_true(loop_until(base, running_on_server, NULL, 10000));
    event_free(tick);
    assert_int_equal(wc_pg_pending(pg), 4);
    wc_pg_free(pg);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(items[i].r.calls, 1);
        assert_false(items[i].r.ok);
        assert_string_equal(items[i].r.err, "shutting down");
        assert_true(items[i].r.query_during_cb_failed);
    }
    event_base_free(base);
}

static void test_bad_arguments(void **state)
{
    struct event_base *base = event_base_new();
    wc_pg *pg = wc_pg_new(base, env.database_url, "test-args", 1, 1000);
    result r = {0};
    assert_int_equal(wc_pg_query(pg, NULL, 0, NULL, record_cb, &r), -1);
    assert_int_equal(wc_pg_query(pg, "SELECT 1", 0, NULL, NULL, &r), -1);
    assert_int_equal(wc_pg_query(pg, "SELECT $1", 1, NULL, record_cb, &r), -1);
    assert_int_equal(wc_pg_pending(pg), 0);
    wc_pg_free(pg);
    assert_int_equal(r.calls, 0);

    /* A connection string libpq cannot parse: an error at once, no crash, and
     * queries fail by their time-out. */
    pg = wc_pg_new(base, "postgresql://u:sekrit@%zz/db", "test-bad-url", 1, 200);
    assert_non_null(pg);
    print_message("wc_pg_error: %s\n", wc_pg_error(pg));
    assert_true(wc_pg_error(pg)[0] != '\0');
    assert_null(strstr(wc_pg_error(pg), "sekrit"));
    assert_int_equal(wc_pg_query(pg, "SELECT 1", 0, NULL, record_cb, &r), 0);
    assert_true(loop_until(base, result_done, &r, 5000));
    assert_string_equal(r.err, "timeout");
    wc_pg_free(pg);
    event_base_free(base);
}

int main(void)
{
    const char *level = getenv("WACAST_LOG_LEVEL");
    if (level && wc_log_set_level(level) < 0)
        return 2;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_with_params),
        cmocka_unit_test(test_sql_error_then_pool_keeps_working),
        cmocka_unit_test(test_fifo_over_three_connections),
        cmocka_unit_test(test_fifo_one_connection_is_strict),
        cmocka_unit_test(test_query_timeout_then_recovers),
        cmocka_unit_test(test_unreachable_server),
        cmocka_unit_test(test_connect_timeout_enforced),
        cmocka_unit_test(test_free_fails_everything_once),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_server_restart_midway),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
