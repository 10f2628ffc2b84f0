/* wc_redis against a real redis-server on a real libevent loop: the promises
 * its header makes (every callback exactly once, NULL when the server dies or
 * a command times out, reconnection, subscriptions that survive a restart,
 * clear AUTH errors without the password in the logs). The loop is driven in
 * single iterations until a condition holds or a deadline passes, so a broken
 * client fails a test instead of hanging it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "wc_log.h"
#include "wc_redis.h"
#include "wt_env.h"

typedef struct fixture {
    wt_env env;
    struct event_base *base;
} fixture;

/* What a command callback saw. */
typedef struct reply_rec {
    int calls;
    int nulls;
    int type;
    long long integer;
    char str[256];
    size_t len;
    /* When set, the callback also tries to send a command (must be refused
     * while the connection is being torn down). */
    wc_redis *resend_on_null;
    int resend_rc;
} reply_rec;

static void rec_cb(wc_redis *r, redisReply *reply, void *arg)
{
    reply_rec *rec = arg;
    rec->calls++;
    if (!reply) {
        rec->nulls++;
        if (rec->resend_on_null)
            rec->resend_rc = wc_redis_command(rec->resend_on_null, rec_cb, rec, "PING");
        return;
    }
    rec->type = reply->type;
    rec->integer = reply->integer;
    rec->len = 0;
    rec->str[0] = '\0';
    if (reply->str) {
        rec->len = reply->len < sizeof rec->str - 1 ? reply->len : sizeof rec->str - 1;
        memcpy(rec->str, reply->str, rec->len);
        rec->str[rec->len] = '\0';
    }
}

static void count_cb(wc_redis *r, void *arg)
{
    (*(int *)arg)++;
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
}

/* Runs the loop until cond(arg) or timeout_ms; a timer at the deadline makes
 * sure EVLOOP_ONCE returns even when nothing else happens. */
static bool loop_until(struct event_base *base, bool (*cond)(void *), void *arg, int timeout_ms)
{
    long long deadline = wt_now_ms() + timeout_ms;
    struct event *t = evtimer_new(base, deadline_cb, NULL);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evtimer_add(t, &tv);
    bool ok;
    while (!(ok = cond(arg)) && wt_now_ms() < deadline)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return ok;
}

static bool never(void *arg)
{
    return false;
}

/* Runs the loop for ms, for checks that something does NOT happen. */
static void loop_for(struct event_base *base, int ms)
{
    loop_until(base, never, NULL, ms);
}

static bool cond_ready(void *arg)
{
    return wc_redis_ready(arg);
}

static bool cond_not_ready(void *arg)
{
    return !wc_redis_ready(arg);
}

typedef struct calls_wait {
    reply_rec *rec;
    int want;
} calls_wait;

static bool cond_calls(void *arg)
{
    calls_wait *w = arg;
    return w->rec->calls >= w->want;
}

static bool wait_calls(fixture *f, reply_rec *rec, int want, int timeout_ms)
{
    calls_wait w = {rec, want};
    return loop_until(f->base, cond_calls, &w, timeout_ms);
}

typedef struct error_wait {
    wc_redis *r;
    const char *needle;
} error_wait;

static bool cond_error(void *arg)
{
    error_wait *w = arg;
    return strstr(wc_redis_error(w->r), w->needle) != NULL;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f || wt_env_start(&f->env, WT_REDIS) < 0) {
        free(f);
        return -1;
    }
    f->base = event_base_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    event_base_free(f->base);
    wt_env_stop(&f->env);
    free(f);
    return 0;
}

static wc_redis *connect_ready(fixture *f, const char *url, int timeout_ms, int *connects)
{
    char err[256] = "";
    wc_redis *r = wc_redis_new(f->base, url, "test", timeout_ms, err, sizeof err);
    if (!r)
        fail_msg("wc_redis_new(%s): %s", url, err);
    if (connects)
        wc_redis_on_connect(r, count_cb, connects);
    if (!loop_until(f->base, cond_ready, r, 5000))
        fail_msg("not ready after 5 s: %s", wc_redis_error(r));
    return r;
}

/* One synchronous command on the test's own connection, reply freed. */
static long long sync_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!reply)
        fail_msg("sync command: %s", c->errstr);
    long long v = reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2)
        v = reply->element[1]->integer; /* PUBSUB NUMSUB chan -> [chan, n] */
    freeReplyObject(reply);
    return v;
}

static void sync_ok(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!reply)
        fail_msg("sync command: %s", c->errstr);
    if (reply->type == REDIS_REPLY_ERROR)
        fail_msg("sync command %s: %s", fmt, reply->str);
    freeReplyObject(reply);
}

static void test_url_parsing(void **state)
{
    struct event_base *base = event_base_new();
    /* rediss:// is refused with the way out: the TLS sidecar. */
    char tls_err[256] = "";
    assert_null(wc_redis_new(base, "rediss://u:s3cr3t@example.com:6380", "t", 100, tls_err,
                             sizeof tls_err));
    assert_non_null(strstr(tls_err, "wacast redis-tls"));
    assert_null(strstr(tls_err, "s3cr3t"));
    static const char *const bad[] = {
        "",
        "http://127.0.0.1",
        "rediss://127.0.0.1",
        "redis://",
        "redis://:6379",
        "redis://127.0.0.1:0",
        "redis://127.0.0.1:65536",
        "redis://127.0.0.1:12ab",
        "redis://127.0.0.1:",
        "redis://127.0.0.1/abc",
        "redis://127.0.0.1/0?timeout=1",
        "redis://justapassword@127.0.0.1",
        "redis://[::1:6379",
        "redis://:bad%zzescape@127.0.0.1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[256] = "";
        wc_redis *r = wc_redis_new(base, bad[i], "t", 100, err, sizeof err);
        if (r)
            fail_msg("'%s' was accepted", bad[i]);
        if (!err[0])
            fail_msg("'%s' rejected without a message", bad[i]);
        char err2[256] = "";
        assert_null(wc_redis_connect_sync(bad[i], 100, err2, sizeof err2));
        assert_true(err2[0] != '\0');
    }
    /* The credentials never appear in the error text. */
    char err[256] = "";
    assert_null(wc_redis_new(base, "redis://u:hunter2@host:99999", "t", 100, err, sizeof err));
    assert_null(strstr(err, "hunter2"));
    assert_null(
        wc_redis_new(base, "redis://host:6379/0?password=hunter2", "t", 100, err, sizeof err));
    assert_non_null(strstr(err, "not supported"));
    assert_null(strstr(err, "hunter2"));

    static const char *const good[] = {
        "redis://127.0.0.1",
        "redis://localhost:6380",
        "redis://127.0.0.1:6379/",
        "redis://:pw@127.0.0.1:6379/2",
        "redis://user:p%40ss@127.0.0.1/15",
        "redis://user:p@ss/word@127.0.0.1:1",
        "redis://[::1]:6379/0",
        "REDIS://127.0.0.1",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char gerr[256] = "";
        wc_redis *r = wc_redis_new(base, good[i], "t", 100, gerr, sizeof gerr);
        if (!r)
            fail_msg("'%s' rejected: %s", good[i], gerr);
        assert_false(wc_redis_ready(r));
        wc_redis_free(r);
    }
    event_base_free(base);
}

static void test_roundtrip(void **state)
{
    fixture *f = *state;
    char err[256];
    int connects = 0;
    wc_redis *r = wc_redis_new(f->base, f->env.redis_url, "test", 1000, err, sizeof err);
    assert_non_null(r);
    wc_redis_on_connect(r, count_cb, &connects);
    /* Not connected yet: refused at once, callback never called. */
    reply_rec early = {0};
    assert_int_equal(wc_redis_command(r, rec_cb, &early, "PING"), -1);
    assert_true(loop_until(f->base, cond_ready, r, 5000));
    assert_int_equal(connects, 1);
    assert_string_equal(wc_redis_error(r), "");

    reply_rec set = {0}, get = {0};
    assert_int_equal(wc_redis_command(r, rec_cb, &set, "SET %s %s", "k1", "v1"), 0);
    assert_int_equal(wc_redis_command(r, rec_cb, &get, "GET %s", "k1"), 0);
    assert_int_equal(wc_redis_pending(r), 2);
    assert_true(wait_calls(f, &get, 1, 2000));
    assert_int_equal(set.calls, 1);
    assert_int_equal(set.type, REDIS_REPLY_STATUS);
    assert_string_equal(get.str, "v1");

    /* Pipelined: 200 commands in flight, every callback once, in order. */
    reply_rec incr[200];
    memset(incr, 0, sizeof incr);
    for (int i = 0; i < 200; i++)
        assert_int_equal(wc_redis_command(r, rec_cb, &incr[i], "INCR counter"), 0);
    assert_int_equal(wc_redis_pending(r), 200);
    assert_true(wait_calls(f, &incr[199], 1, 3000));
    for (int i = 0; i < 200; i++) {
        assert_int_equal(incr[i].calls, 1);
        assert_int_equal(incr[i].integer, i + 1);
    }
    assert_int_equal(wc_redis_pending(r), 0);

    /* Binary-safe argv form. */
    const char *argv[] = {"SET", "bin", "a\0b"};
    size_t argvlen[] = {3, 3, 3};
    reply_rec bset = {0}, bget = {0}, bad = {0};
    assert_int_equal(wc_redis_commandv(r, rec_cb, &bset, 3, argv, argvlen), 0);
    assert_int_equal(wc_redis_command(r, rec_cb, &bget, "GET bin"), 0);
    /* A server-side error is a reply, not a connection failure. */
    assert_int_equal(wc_redis_command(r, rec_cb, &bad, "NOSUCHCOMMAND"), 0);
    assert_true(wait_calls(f, &bad, 1, 2000));
    assert_int_equal(bget.len, 3);
    assert_memory_equal(bget.str, "a\0b", 3);
    assert_int_equal(bad.type, REDIS_REPLY_ERROR);
    assert_true(wc_redis_ready(r));

    /* Nothing called twice, nothing called late. */
    loop_for(f->base, 200);
    assert_int_equal(set.calls + get.calls + bset.calls + bget.calls + bad.calls, 5);
    assert_int_equal(early.calls, 0);
    assert_int_equal(connects, 1);
    wc_redis_free(r);
}

static void test_select_db(void **state)
{
    fixture *f = *state;
    char url[160];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/3", f->env.redis_port);
    wc_redis *r = connect_ready(f, url, 1000, NULL);
    reply_rec set = {0};
    assert_int_equal(wc_redis_command(r, rec_cb, &set, "SET indb3 yes"), 0);
    assert_true(wait_calls(f, &set, 1, 2000));
    wc_redis_free(r);

    char err[256] = "";
    redisContext *c = wc_redis_connect_sync(url, 1000, err, sizeof err);
    if (!c)
        fail_msg("connect_sync: %s", err);
    assert_int_equal(sync_int(c, "EXISTS indb3"), 1);
    redisFree(c);
    redisContext *c0 = wt_redis(&f->env);
    assert_int_equal(sync_int(c0, "EXISTS indb3"), 0);
    redisFree(c0);
}

static void server_loss(fixture *f, bool kill9)
{
    int connects = 0;
    wc_redis *r = connect_ready(f, f->env.redis_url, 3000, &connects);
    /* BLPOP 0 never answers on its own: it is in flight when the server dies.
     * Its NULL callback tries to send again, which must be refused. */
    reply_rec blocked = {0}, queued = {0};
    blocked.resend_on_null = r;
    assert_int_equal(wc_redis_command(r, rec_cb, &blocked, "BLPOP nosuchlist 0"), 0);
    assert_int_equal(wc_redis_command(r, rec_cb, &queued, "PING"), 0);
    loop_for(f->base, 100);
    assert_int_equal(blocked.calls, 0);

    assert_int_equal(wt_redis_stop(&f->env, kill9), 0);
    assert_true(wait_calls(f, &queued, 1, 3000));
    assert_int_equal(blocked.calls, 1);
    assert_int_equal(blocked.nulls, 1);
    assert_int_equal(blocked.resend_rc, -1);
    assert_int_equal(queued.nulls, 1);
    assert_false(wc_redis_ready(r));
    assert_int_equal(wc_redis_pending(r), 0);
    assert_true(wc_redis_error(r)[0] != '\0');

    /* While down: refused at once, no callback. Back-off keeps retrying. */
    reply_rec down = {0};
    assert_int_equal(wc_redis_command(r, rec_cb, &down, "PING"), -1);
    loop_for(f->base, 500);
    assert_false(wc_redis_ready(r));

    assert_int_equal(wt_redis_start(&f->env), 0);
    if (!loop_until(f->base, cond_ready, r, 8000))
        fail_msg("no reconnect: %s", wc_redis_error(r));
    assert_int_equal(connects, 2);
    assert_string_equal(wc_redis_error(r), "");
    reply_rec after = {0};
    assert_int_equal(wc_redis_command(r, rec_cb, &after, "SET again 1"), 0);
    assert_true(wait_calls(f, &after, 1, 2000));
    assert_int_equal(after.type, REDIS_REPLY_STATUS);

    /* Exactly once: nothing arrives for the old commands later. */
    loop_for(f->base, 200);
    assert_int_equal(blocked.calls, 1);
    assert_int_equal(queued.calls, 1);
    assert_int_equal(down.calls, 0);
    wc_redis_free(r);
}

static void test_server_killed(void **state)
{
    server_loss(*state, true);
}

static void test_server_stopped(void **state)
{
    server_loss(*state, false);
}

/* A restart while the loop is not running: the client finds out on the next
 * iteration and recovers. */
static void test_server_restart(void **state)
{
    fixture *f = *state;
    int connects = 0;
    wc_redis *r = connect_ready(f, f->env.redis_url, 1000, &connects);
    assert_int_equal(wt_redis_restart(&f->env, false), 0);
    reply_rec rec = {0};
    /* Either refused (already noticed) or answered with NULL: never lost. */
    if (wc_redis_command(r, rec_cb, &rec, "PING") == 0)
        assert_true(wait_calls(f, &rec, 1, 3000));
    assert_true(loop_until(f->base, cond_not_ready, r, 3000) || connects == 2);
    assert_true(loop_until(f->base, cond_ready, r, 8000));
    assert_int_equal(connects, 2);
    reply_rec ping = {0};
    assert_int_equal(wc_redis_command(r, rec_cb, &ping, "PING"), 0);
    assert_true(wait_calls(f, &ping, 1, 2000));
    assert_string_equal(ping.str, "PONG");
    wc_redis_free(r);
}

static void test_command_timeout(void **state)
{
    fixture *f = *state;
    int connects = 0;
    wc_redis *r = connect_ready(f, f->env.redis_url, 300, &connects);
    /* A stuck server: every client paused for 1.5 s. DEBUG SLEEP would do,
     * but redis 7 disables DEBUG unless started with enable-debug-command. */
    redisContext *c = wt_redis(&f->env);
    sync_ok(c, "CLIENT PAUSE 1500 ALL");
    redisFree(c);

    reply_rec recs[3];
    memset(recs, 0, sizeof recs);
    long long t0 = wt_now_ms();
    for (int i = 0; i < 3; i++)
        assert_int_equal(wc_redis_command(r, rec_cb, &recs[i], "GET k%d", i), 0);
    assert_true(wait_calls(f, &recs[2], 1, 3000));
    long long took = wt_now_ms() - t0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(recs[i].calls, 1);
        assert_int_equal(recs[i].nulls, 1);
    }
    /* Timed out by us (300 ms + one tick), not released by the pause end. */
    if (took < 250 || took > 1000)
        fail_msg("time-out took %lld ms", took);
    assert_non_null(strstr(wc_redis_error(r), "timed out"));
    assert_false(wc_redis_ready(r));
    assert_int_equal(wc_redis_pending(r), 0);

    /* Reconnect attempts time out in the handshake until the pause ends,
     * then the client recovers on its own. */
    if (!loop_until(f->base, cond_ready, r, 8000))
        fail_msg("no recovery: %s", wc_redis_error(r));
    reply_rec ok = {0};
    assert_int_equal(wc_redis_command(r, rec_cb, &ok, "PING"), 0);
    assert_true(wait_calls(f, &ok, 1, 2000));
    assert_string_equal(ok.str, "PONG");
    loop_for(f->base, 100);
    for (int i = 0; i < 3; i++)
        assert_int_equal(recs[i].calls, 1);
    wc_redis_free(r);
}

/* A server whose accept queue is full never completes the TCP handshake. */
static void test_connect_timeout(void **state)
{
    fixture *f = *state;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(lfd, 0), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
    int fillers[4];
    for (int i = 0; i < 4; i++) {
        fillers[i] = socket(AF_INET, SOCK_STREAM, 0);
        fcntl(fillers[i], F_SETFL, O_NONBLOCK);
        if (connect(fillers[i], (struct sockaddr *)&a, sizeof a) < 0) {
            /* EINPROGRESS: fine, it fills the queue or waits */
        }
    }
    char url[96], err[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", ntohs(a.sin_port));
    wc_redis *r = wc_redis_new(f->base, url, "test", 300, err, sizeof err);
    assert_non_null(r);
    error_wait w = {r, "timed out"};
    if (!loop_until(f->base, cond_error, &w, 3000))
        fail_msg("no connect time-out, error is '%s'", wc_redis_error(r));
    assert_false(wc_redis_ready(r));
    wc_redis_free(r);
    for (int i = 0; i < 4; i++)
        close(fillers[i]);
    close(lfd);
}

typedef struct msg_rec {
    int count;
    char last[64];
    size_t last_len;
    char channel[64];
} msg_rec;

static void msg_cb(wc_redis *r, const char *channel, const char *msg, size_t len, void *arg)
{
    msg_rec *m = arg;
    m->count++;
    m->last_len = len < sizeof m->last ? len : sizeof m->last;
    memcpy(m->last, msg, m->last_len);
    snprintf(m->channel, sizeof m->channel, "%s", channel);
}

typedef struct numsub_wait {
    wt_env *env;
    const char *channel;
} numsub_wait;

static bool cond_subscribed(void *arg)
{
    numsub_wait *w = arg;
    redisContext *c = wt_redis(w->env);
    long long n = sync_int(c, "PUBSUB NUMSUB %s", w->channel);
    redisFree(c);
    return n == 1;
}

typedef struct count_wait {
    msg_rec *m;
    int want;
} count_wait;

static bool cond_msgs(void *arg)
{
    count_wait *w = arg;
    return w->m->count >= w->want;
}

static void test_subscribe(void **state)
{
    fixture *f = *state;
    char err[256];
    wc_redis *sub = wc_redis_new(f->base, f->env.redis_url, "sub", 500, err, sizeof err);
    assert_non_null(sub);
    msg_rec m = {0};
    /* Before the connection is up: it subscribes once ready. */
    assert_int_equal(wc_redis_subscribe(sub, "wacast:test", msg_cb, &m), 0);
    numsub_wait nw = {&f->env, "wacast:test"};
    assert_true(loop_until(f->base, cond_subscribed, &nw, 5000));
    /* A subscriber connection takes no ordinary commands. */
    reply_rec rec = {0};
    assert_int_equal(wc_redis_command(sub, rec_cb, &rec, "PING"), -1);

    redisContext *c = wt_redis(&f->env);
    assert_int_equal(sync_int(c, "PUBLISH wacast:test %b", "x\0y", (size_t)3), 1);
    assert_int_equal(sync_int(c, "PUBLISH wacast:test second"), 1);
    redisFree(c);
    count_wait cw = {&m, 2};
    assert_true(loop_until(f->base, cond_msgs, &cw, 2000));
    assert_string_equal(m.channel, "wacast:test");
    assert_int_equal(m.last_len, 6);
    assert_memory_equal(m.last, "second", 6);

    /* Idle for longer than the command time-out: a subscription is not a
     * command, so it must not be timed out. */
    loop_for(f->base, 1000);
    assert_true(wc_redis_ready(sub));

    /* After a restart the subscription is renewed. */
    assert_int_equal(wt_redis_restart(&f->env, true), 0);
    if (!loop_until(f->base, cond_subscribed, &nw, 8000))
        fail_msg("not re-subscribed: %s", wc_redis_error(sub));
    c = wt_redis(&f->env);
    assert_int_equal(sync_int(c, "PUBLISH wacast:test third"), 1);
    redisFree(c);
    cw.want = 3;
    assert_true(loop_until(f->base, cond_msgs, &cw, 2000));
    assert_memory_equal(m.last, "third", 5);
    loop_for(f->base, 100);
    assert_int_equal(m.count, 3);
    wc_redis_free(sub);
}

static bool file_contains(const char *path, const char *needle)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, fp))
        found = strstr(line, needle) != NULL;
    fclose(fp);
    return found;
}

static void test_auth(void **state)
{
    fixture *f = *state;
    int port = f->env.redis_port;
    redisContext *c = wt_redis(&f->env);
    sync_ok(c, "ACL SETUSER alice on >alicepw ~* &* +@all");
    sync_ok(c, "CONFIG SET requirepass s3cretpw");

    /* Capture our log lines to prove no password reaches them. */
    char logpath[512];
    snprintf(logpath, sizeof logpath, "%s/test_auth.log", f->env.dir);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    int logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    assert_true(saved >= 0 && logfd >= 0);
    dup2(logfd, STDERR_FILENO);
    close(logfd);

    char url[160], err[256];
    struct {
        const char *userinfo;
        const char *want; /* in wc_redis_error(); NULL = must connect */
    } cases[] = {
        {":wrongpw@", "WRONGPASS"},
        {":wr@ngpw@", "WRONGPASS"}, /* an unencoded '@' must not leak "ngpw" */
        {"", "NOAUTH"},
        {":s3cretpw@", NULL},
        {"alice:alicepw@", NULL},
        {"alice:wrongpw@", "WRONGPASS"},
    };
    /* No cmocka assertion while stderr is redirected: a failure is noted
     * and reported after it is restored. */
    char failure[1024] = "";
    for (size_t i = 0; i < sizeof cases / sizeof cases[0] && !failure[0]; i++) {
        snprintf(url, sizeof url, "redis://%s127.0.0.1:%d/0", cases[i].userinfo, port);
        wc_redis *r = wc_redis_new(f->base, url, "auth", 1000, err, sizeof err);
        if (!r) {
            snprintf(failure, sizeof failure, "case %zu: wc_redis_new: %s", i, err);
            break;
        }
        if (cases[i].want) {
            error_wait w = {r, cases[i].want};
            bool got = loop_until(f->base, cond_error, &w, 3000);
            bool ready = wc_redis_ready(r);
            if (!got || ready)
                snprintf(failure, sizeof failure, "case %zu: wanted '%s', error '%s', ready %d", i,
                         cases[i].want, wc_redis_error(r), ready);
            wc_redis_free(r);
            redisContext *sc = wc_redis_connect_sync(url, 1000, err, sizeof err);
            if (!failure[0] && (sc || !strstr(err, cases[i].want)))
                snprintf(failure, sizeof failure, "case %zu: connect_sync gave '%s'", i,
                         sc ? "a connection" : err);
            if (sc)
                redisFree(sc);
        } else {
            bool ready = loop_until(f->base, cond_ready, r, 3000);
            reply_rec rec = {0};
            bool answered = ready && wc_redis_command(r, rec_cb, &rec, "PING") == 0 &&
                            wait_calls(f, &rec, 1, 2000) && strcmp(rec.str, "PONG") == 0;
            if (!answered)
                snprintf(failure, sizeof failure, "case %zu: not usable: '%s'", i,
                         wc_redis_error(r));
            wc_redis_free(r);
            redisContext *sc = wc_redis_connect_sync(url, 1000, err, sizeof err);
            if (!failure[0] && !sc)
                snprintf(failure, sizeof failure, "case %zu: connect_sync: %s", i, err);
            if (sc)
                redisFree(sc);
        }
    }

    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    sync_ok(c, "CONFIG SET requirepass %s", "");
    redisFree(c);
    if (failure[0])
        fail_msg("%s", failure);
    assert_true(file_contains(logpath, "WRONGPASS"));
    assert_false(file_contains(logpath, "wrongpw"));
    assert_false(file_contains(logpath, "ngpw"));
    assert_false(file_contains(logpath, "s3cretpw"));
    assert_false(file_contains(logpath, "alicepw"));
}

/* wc_redis_free() with commands in flight: each callback once, with NULL, and
 * no new command accepted from inside it. */
static void test_free_with_pending(void **state)
{
    fixture *f = *state;
    wc_redis *r = connect_ready(f, f->env.redis_url, 2000, NULL);
    reply_rec blocked = {0}, other = {0};
    blocked.resend_on_null = r;
    assert_int_equal(wc_redis_command(r, rec_cb, &blocked, "BLPOP nosuchlist 0"), 0);
    assert_int_equal(wc_redis_command(r, rec_cb, &other, "PING"), 0);
    loop_for(f->base, 50);
    wc_redis_free(r);
    assert_int_equal(blocked.calls, 1);
    assert_int_equal(blocked.nulls, 1);
    assert_int_equal(blocked.resend_rc, -1);
    assert_int_equal(other.calls, 1);
    assert_int_equal(other.nulls, 1);
}

/* How many times the server ran a command, from INFO commandstats. */
static long long cmd_calls(redisContext *c, const char *cmd)
{
    redisReply *reply = redisCommand(c, "INFO commandstats");
    if (!reply || reply->type != REDIS_REPLY_STRING)
        fail_msg("INFO commandstats failed");
    char key[64];
    snprintf(key, sizeof key, "cmdstat_%s:calls=", cmd);
    const char *p = strstr(reply->str, key);
    long long n = p ? strtoll(p + strlen(key), NULL, 10) : 0;
    freeReplyObject(reply);
    return n;
}

/* EVAL through wc_redis_commandv goes out as EVALSHA after one SCRIPT LOAD
 * per connection; after the server forgets its scripts (SCRIPT FLUSH) one
 * call gets the NOSCRIPT error and the next loads the script again. */
static void test_eval_as_evalsha(void **state)
{
    fixture *f = *state;
    wc_redis *r = connect_ready(f, f->env.redis_url, 1000, NULL);
    redisContext *c = wt_redis(&f->env);
    assert_non_null(c);
    sync_ok(c, "CONFIG RESETSTAT");
    static const char script[] = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    reply_rec rec[10];
    memset(rec, 0, sizeof rec);
    for (int i = 0; i < 10; i++) {
        /* A copy each time: the cache matches the body, not the pointer. */
        char body[sizeof script];
        memcpy(body, script, sizeof script);
        const char *argv[] = {"EVAL", body, "1", "evalkey", "2"};
        assert_int_equal(wc_redis_commandv(r, rec_cb, &rec[i], 5, argv, NULL), 0);
    }
    assert_true(wait_calls(f, &rec[9], 1, 2000));
    for (int i = 0; i < 10; i++)
        assert_int_equal(rec[i].integer, 2 * (i + 1));
    assert_int_equal(cmd_calls(c, "evalsha"), 10);
    assert_int_equal(cmd_calls(c, "eval"), 0);
    assert_int_equal(cmd_calls(c, "script|load") + cmd_calls(c, "script"), 1);

    sync_ok(c, "SCRIPT FLUSH");
    const char *argv[] = {"EVAL", script, "1", "evalkey", "1"};
    reply_rec lost = {0}, again = {0};
    assert_int_equal(wc_redis_commandv(r, rec_cb, &lost, 5, argv, NULL), 0);
    assert_true(wait_calls(f, &lost, 1, 2000));
    assert_int_equal(lost.type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(lost.str, "NOSCRIPT"));
    assert_int_equal(wc_redis_commandv(r, rec_cb, &again, 5, argv, NULL), 0);
    assert_true(wait_calls(f, &again, 1, 2000));
    assert_int_equal(again.type, REDIS_REPLY_INTEGER);
    assert_int_equal(again.integer, 21);

    /* A reconnect (server restart) loads it again before the first use. */
    redisFree(c);
    assert_int_equal(wt_redis_restart(&f->env, false), 0);
    assert_true(loop_until(f->base, cond_not_ready, r, 10000));
    assert_true(loop_until(f->base, cond_ready, r, 10000));
    reply_rec after = {0};
    assert_int_equal(wc_redis_commandv(r, rec_cb, &after, 5, argv, NULL), 0);
    assert_true(wait_calls(f, &after, 1, 2000));
    assert_int_equal(after.type, REDIS_REPLY_INTEGER);
    wc_redis_free(r);
}

int main(void)
{
    if (!getenv("WACAST_LOG_LEVEL") || wc_log_set_level(getenv("WACAST_LOG_LEVEL")) < 0)
        wc_log_min_level = WC_LOG_INFO;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parsing),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_select_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_killed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_stopped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subscribe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval_as_evalsha, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
