/* A message a sender sets aside for a paused campaign is never stranded by
 * the dispatcher forgetting the campaign (dispatcher/control.c). The
 * dispatcher reads a resumed campaign's paused stream (XRANGE) and, finding
 * it empty, removes the campaign from wacast:paused:index; a sender whose
 * holds are stale adds to the stream (XADD) and then to the index (SADD).
 * When both of the sender's commands land between the dispatcher's read and
 * its removal, the removal must not leave the entry unseen.
 *
 * The interleaving is driven, not hoped for: the dispatcher talks to Redis
 * through a proxy in this test that holds back its removal
 * (SREM wacast:paused:index) once it is sent; while it is held the test runs
 * the sender's two commands itself on real redis-server, then lets the
 * removal through. Asserted: the entry is moved back to the jobs stream (the
 * paused stream empties, wacast_dispatcher_paused_requeued_total counts it)
 * within a few rounds of the dispatcher's paused timer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "wacast.pb-c.h"

/* ---- a Redis proxy that can hold one command back ------------------------------------------ */

#define PROXY_CONNS 16
/* How hiredis sends "SREM wacast:paused:index <uuid>". */
static const char HOLD_CMD[] = "*3\r\n$4\r\nSREM\r\n$19\r\nwacast:paused:index\r\n";

typedef struct proxy_conn {
    int client, server; /* -1: unused */
    char *pending;      /* client bytes not yet sent on */
    size_t npending;
    bool held; /* pending starts with the held command: nothing goes on */
} proxy_conn;

typedef struct proxy {
    int listener, upstream_port, port;
    pthread_t thread;
    pthread_mutex_t lock;
    bool armed, holding, release, stop; /* under lock */
    proxy_conn conns[PROXY_CONNS];
} proxy;

static proxy px;

static bool send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static void conn_close(proxy_conn *c)
{
    close(c->client);
    close(c->server);
    free(c->pending);
    memset(c, 0, sizeof *c);
    c->client = c->server = -1;
}

/* The longest end of buf that could be the start of HOLD_CMD. */
static size_t partial_match(const char *buf, size_t n)
{
    size_t most = n < sizeof HOLD_CMD - 1 ? n : sizeof HOLD_CMD - 2;
    for (size_t k = most; k > 0; k--) {
        if (memcmp(buf + n - k, HOLD_CMD, k) == 0)
            return k;
    }
    return 0;
}

/* Sends on what may go; keeps the held command (once armed) and a possible
 * start of it. */
static bool conn_flush(proxy *p, proxy_conn *c)
{
    if (c->held)
        return true;
    size_t go = c->npending;
    pthread_mutex_lock(&p->lock);
    bool armed = p->armed;
    pthread_mutex_unlock(&p->lock);
    if (armed) {
        char *at = memmem(c->pending, c->npending, HOLD_CMD, sizeof HOLD_CMD - 1);
        if (at) {
            go = (size_t)(at - c->pending);
            c->held = true;
            pthread_mutex_lock(&p->lock);
            p->armed = false;
            p->holding = true;
            pthread_mutex_unlock(&p->lock);
        } else {
            go -= partial_match(c->pending, c->npending);
        }
    }
    if (!send_all(c->server, c->pending, go))
        return false;
    memmove(c->pending, c->pending + go, c->npending - go);
    c->npending -= go;
    return true;
}

static int connect_upstream(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)port),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void *proxy_main(void *arg)
{
    proxy *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        bool stop = p->stop, release = p->release;
        p->release = false;
        pthread_mutex_unlock(&p->lock);
        if (stop)
            return NULL;
        struct pollfd fds[1 + 2 * PROXY_CONNS];
        int n = 0;
        fds[n++] = (struct pollfd){.fd = p->listener, .events = POLLIN};
        for (int i = 0; i < PROXY_CONNS; i++) {
            proxy_conn *c = &p->conns[i];
            if (release && c->held) {
                c->held = false;
                if (!conn_flush(p, c))
                    conn_close(c);
            }
            /* A held connection reads nothing more from its client. */
            fds[n++] = (struct pollfd){.fd = c->held ? -1 : c->client, .events = POLLIN};
            fds[n++] = (struct pollfd){.fd = c->server, .events = POLLIN};
        }
        if (poll(fds, (nfds_t)n, 10) < 0 && errno != EINTR)
            return NULL;
        if (fds[0].revents & POLLIN) {
            int cfd = accept(p->listener, NULL, NULL);
            int sfd = cfd >= 0 ? connect_upstream(p->upstream_port) : -1;
            int slot = -1;
            for (int i = 0; i < PROXY_CONNS && slot < 0; i++)
                if (p->conns[i].client < 0)
                    slot = i;
            if (sfd < 0 || slot < 0) {
                if (cfd >= 0)
                    close(cfd);
                if (sfd >= 0)
                    close(sfd);
            } else {
                p->conns[slot].client = cfd;
                p->conns[slot].server = sfd;
            }
        }
        char buf[65536];
        for (int i = 0; i < PROXY_CONNS; i++) {
            proxy_conn *c = &p->conns[i];
            struct pollfd *cf = &fds[1 + 2 * i], *sf = &fds[2 + 2 * i];
            if (c->client >= 0 && (cf->revents & (POLLIN | POLLHUP | POLLERR))) {
                ssize_t k = recv(c->client, buf, sizeof buf, 0);
                char *grown = k > 0 ? realloc(c->pending, c->npending + (size_t)k) : NULL;
                if (!grown) {
                    conn_close(c);
                    continue;
                }
                memcpy(grown + c->npending, buf, (size_t)k);
                c->pending = grown;
                c->npending += (size_t)k;
                if (!conn_flush(p, c)) {
                    conn_close(c);
                    continue;
                }
            }
            if (c->server >= 0 && (sf->revents & (POLLIN | POLLHUP | POLLERR))) {
                ssize_t k = recv(c->server, buf, sizeof buf, 0);
                if (k <= 0 || !send_all(c->client, buf, (size_t)k))
                    conn_close(c);
            }
        }
    }
}

static int proxy_start(proxy *p, int upstream_port)
{
    memset(p, 0, sizeof *p);
    for (int i = 0; i < PROXY_CONNS; i++)
        p->conns[i].client = p->conns[i].server = -1;
    p->upstream_port = upstream_port;
    pthread_mutex_init(&p->lock, NULL);
    p->listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    if (p->listener < 0 || bind(p->listener, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        listen(p->listener, 16) < 0 || getsockname(p->listener, (struct sockaddr *)&sin, &len) < 0)
        return -1;
    p->port = ntohs(sin.sin_port);
    return pthread_create(&p->thread, NULL, proxy_main, p) == 0 ? 0 : -1;
}

static void proxy_stop(proxy *p)
{
    if (p->port == 0)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    for (int i = 0; i < PROXY_CONNS; i++)
        if (p->conns[i].client >= 0)
            conn_close(&p->conns[i]);
    close(p->listener);
    p->port = 0;
}

static void proxy_set(proxy *p, bool *flag, bool value)
{
    pthread_mutex_lock(&p->lock);
    *flag = value;
    pthread_mutex_unlock(&p->lock);
}

static bool proxy_holding(void *arg)
{
    proxy *p = arg;
    pthread_mutex_lock(&p->lock);
    bool h = p->holding;
    pthread_mutex_unlock(&p->lock);
    return h;
}

/* ---- the test ---------------------------------------------------------------------------------
 */

static wt_env env;
static PGconn *db;
static redisContext *rc;
static char user[40], camp[40];
static int dport;

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, &rc) < 0 || proxy_start(&px, env.redis_port) < 0)
        return -1;
    wt_sql_text(db, user, sizeof user, "INSERT INTO users (name) VALUES ('u') RETURNING id");
    /* Resumed: running again, so the dispatcher drains its paused stream. */
    wt_sql_text(db, camp, sizeof camp,
                "INSERT INTO campaigns (user_id, title, message, status)"
                " VALUES ('%s', 'c', 'Hi', 'processing') RETURNING id",
                user);
    dport = wt_free_port();
    static char port_env[32], redis_env[64];
    snprintf(port_env, sizeof port_env, "PORT=%d", dport);
    snprintf(redis_env, sizeof redis_env, "REDIS_URL=redis://127.0.0.1:%d/0", px.port);
    const char *dispatcher_env[] = {port_env, redis_env, NULL};
    return wt_spawn(&env, "wacast-dispatcher", "dispatcher", dispatcher_env) > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    /* The daemons first: none of them waits on the proxy then. */
    (void)e2e_teardown(&env, db, rc);
    proxy_stop(&px);
    return 0;
}

static long long redis_int(const char *fmt, const char *arg)
{
    redisReply *r = redisCommand(rc, fmt, arg);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static bool requeued(void *arg)
{
    (void)arg;
    char key[96];
    snprintf(key, sizeof key, "wacast:paused:%s", camp);
    return redis_int("XLEN %s", key) == 0 &&
           e2e_metric(dport, "wacast_dispatcher_paused_requeued_total") >= 1;
}

static void test_entry_added_during_removal_is_not_stranded(void **state)
{
    (void)state;
    char key[96];
    snprintf(key, sizeof key, "wacast:paused:%s", camp);
    /* A sender once set a message of the campaign aside and the dispatcher
     * has taken it back: the campaign is in the index, its stream empty. The
     * dispatcher will read the stream, find it empty and remove the
     * campaign from the index: that removal is held. */
    proxy_set(&px, &px.armed, true);
    assert_int_equal(redis_int("SADD wacast:paused:index %s", camp), 1);
    if (!wt_wait_for(proxy_holding, &px, 20000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the dispatcher never removed the campaign from the paused index");
    }
    /* Meanwhile a sender with stale holds sets another message aside, as
     * sender.c's park_paused does: the entry, then the index. */
    Wacast__Job job = WACAST__JOB__INIT;
    job.message_id = 4242;
    job.campaign_id = camp;
    job.user_id = user;
    job.recipient = "+60161234567";
    job.content = "Hi";
    job.attempt = 1;
    uint8_t payload[512];
    size_t len = wacast__job__get_packed_size(&job);
    assert_true(len <= sizeof payload);
    wacast__job__pack(&job, payload);
    redisReply *r = redisCommand(rc, "XADD %s * j %b", key, payload, len);
    assert_true(r && r->type == REDIS_REPLY_STRING);
    freeReplyObject(r);
    assert_int_equal(redis_int("SADD wacast:paused:index %s", camp), 0); /* still there */
    /* Now the dispatcher's removal goes through. */
    proxy_set(&px, &px.release, true);
    if (!wt_wait_for(requeued, NULL, 15000)) {
        fprintf(stderr, "paused stream holds %lld entries; the campaign is %sin the index\n",
                redis_int("XLEN %s", key),
                redis_int("SISMEMBER wacast:paused:index %s", camp) == 1 ? "" : "not ");
        wt_dump_logs(&env, 30);
        fail_msg("the entry set aside during the dispatcher's removal was left in the paused"
                 " stream");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entry_added_during_removal_is_not_stranded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
