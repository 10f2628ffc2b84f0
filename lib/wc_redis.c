/* One Redis connection on a libevent loop, built on hiredis 0.14's async API.
 * hiredis 0.14 has no command time-outs and no reconnection, and a daemon
 * needs both: a Redis restart or a stuck server must cost a few failed
 * commands, never a wedged process. So this file keeps its own FIFO of
 * outstanding commands (replies come back in order, so the head is always
 * the oldest), checks its age from one EV_PERSIST timer, and when anything
 * goes wrong frees the hiredis context (hiredis then calls every pending
 * callback with NULL) and reconnects with jittered exponential back-off.
 *
 * A connection moves BACKOFF -> CONNECTING -> HANDSHAKE (AUTH, SELECT or a
 * PING, so "ready" means the server answered us) -> READY, and back to
 * BACKOFF from any state. hiredis owns the context and may free it under us
 * (read error, EOF); we free it ourselves only from our own timer events,
 * never from inside a hiredis callback (STYLE.md rule 3): failures noticed in
 * a reply callback are handed to a zero-time-out event. */
#include "wc_redis.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>
#include <openssl/evp.h>

#include "wc_log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

enum conn_state {
    CONN_BACKOFF,    /* no context; retry_ev is armed */
    CONN_CONNECTING, /* non-blocking connect in flight */
    CONN_HANDSHAKE,  /* connected; AUTH/SELECT/PING outstanding */
    CONN_READY,      /* commands accepted */
    CONN_CLOSING,    /* hiredis is tearing the context down (NULL replies under way) */
    CONN_CLOSED,     /* wc_redis_free() in progress */
};

static const char *const state_names[] = {"backoff", "connecting", "handshake",
                                          "ready",   "closing",    "closed"};

struct redis_url {
    char host[256];
    int port;
    int db;
    char user[128];
    char password[256];
};

/* A Lua script this connection has sent with EVAL: later calls go out as
 * EVALSHA (Redis then neither reads nor hashes the body again). The body is
 * loaded with SCRIPT LOAD, pipelined just before the first EVALSHA of each
 * connection; a NOSCRIPT reply (SCRIPT FLUSH, a failover) makes every script
 * load again on its next use. */
#define SCRIPT_CACHE 64
typedef struct wc_script {
    char *body;
    size_t len;
    char sha[41];
    unsigned loaded_gen; /* == wc_redis.script_gen: loaded on this connection */
} wc_script;

/* One sent command waiting for its reply. */
typedef struct wc_redis_request {
    wc_redis *r;
    wc_redis_cb *cb;
    void *arg;
    long long sent_ms;
    char cmd[24]; /* command name, for the time-out log line */
    struct wc_redis_request *prev, *next;
} wc_redis_request;

/* One subscribed channel. hiredis keeps calling its callback (subscribe
 * confirmation, every message, NULL on teardown) with this as privdata, so it
 * lives as long as the wc_redis. */
typedef struct wc_redis_sub {
    wc_redis *r;
    char *channel;
    size_t channel_len;
    wc_redis_msg_cb *cb;
    void *arg;
    struct wc_redis_sub *next;
} wc_redis_sub;

struct wc_redis {
    struct event_base *base;
    char *name;
    char *safe_url; /* password redacted */
    struct redis_url url;
    int timeout_ms;

    enum conn_state state;
    redisAsyncContext *ac;
    long long state_since_ms;
    long long last_progress_ms; /* last time a command was answered */
    int handshake_left;
    bool drop_pending; /* a reply callback asked for the connection to be dropped */
    char drop_reason[512];
    char error[512];
    int backoff_ms;
    unsigned failures; /* consecutive, since the last READY */
    unsigned long long rng;

    struct event *tick_ev;  /* EV_PERSIST: connect and command time-outs */
    struct event *retry_ev; /* back-off before the next connect */
    struct event *drop_ev;  /* zero time-out: drop outside hiredis callbacks */

    wc_redis_request *head, *tail; /* oldest first */
    size_t npending;
    wc_redis_sub *subs;

    wc_redis_conn_cb *on_connect;
    void *on_connect_arg;

    wc_script scripts[SCRIPT_CACHE];
    int nscripts;
    unsigned script_gen; /* bumped on each new connection and on NOSCRIPT */
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* xorshift64*: jitter only needs to decorrelate clients, not be secret. */
static unsigned long long rng_next(wc_redis *r)
{
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return r->rng * 2685821657736338717ULL;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decodes src[0..len) into out; -1 on bad escapes or overflow. */
static int url_decode(const char *src, size_t len, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= len)
                return -1;
            int hi = hexval((unsigned char)src[i + 1]), lo = hexval((unsigned char)src[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0 || o + 1 >= outlen)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* Parses a decimal in [min, max] from s[0..len). */
static int parse_int(const char *s, size_t len, long min, long max, int *out)
{
    if (len == 0 || len > 10)
        return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

/* redis://[[user]:password@]host[:port][/db]. Error messages never quote the
 * credentials: everything they show comes after the last '@'. */
static int url_parse(const char *url, struct redis_url *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    u->port = 6379;
    if (!url || !*url) {
        set_err(err, errlen, "Redis URL is empty");
        return -1;
    }
    const char *p;
    if (strncasecmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else if (strncasecmp(url, "rediss://", 9) == 0) {
        /* Debian 12's hiredis (0.14) has no TLS: a stunnel sidecar next to
         * the daemon holds the TLS connection (deploy/compose.yaml,
         * deploy/k8s/), and the daemon speaks plain Redis to it on loopback. */
        set_err(err, errlen,
                "rediss:// is not supported (hiredis 0.14 has no TLS): run the stunnel TLS "
                "sidecar (`wacast redis-tls`, stunnel) and set "
                "REDIS_URL=redis://[user:password@]127.0.0.1:PORT, "
                "the sidecar's local port");
        return -1;
    } else {
        set_err(err, errlen, "Redis URL must start with redis://");
        return -1;
    }

    /* The last '@' ends the credentials, so a password may contain '@' or '/'. */
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) {
            set_err(err, errlen, "Redis URL credentials must be [user]:password@");
            return -1;
        }
        if (url_decode(p, (size_t)(colon - p), u->user, sizeof u->user) < 0 ||
            url_decode(colon + 1, (size_t)(at - colon - 1), u->password, sizeof u->password) < 0) {
            set_err(err, errlen, "Redis URL credentials are too long or badly %%-encoded");
            return -1;
        }
        p = at + 1;
    }

    const char *q;
    size_t hostlen;
    if (*p == '[') { /* [IPv6] */
        const char *close = strchr(p, ']');
        if (!close) {
            set_err(err, errlen, "Redis URL has an unterminated [IPv6] host");
            return -1;
        }
        hostlen = (size_t)(close - p - 1);
        q = close + 1;
        p++;
    } else {
        hostlen = strcspn(p, ":/?#");
        q = p + hostlen;
    }
    if (hostlen == 0) {
        set_err(err, errlen, "Redis URL has no host");
        return -1;
    }
    if (hostlen >= sizeof u->host) {
        set_err(err, errlen, "Redis URL host is too long");
        return -1;
    }
    memcpy(u->host, p, hostlen);
    u->host[hostlen] = '\0';

    if (*q == ':') {
        q++;
        size_t n = strcspn(q, "/?#");
        if (parse_int(q, n, 1, 65535, &u->port) < 0) {
            set_err(err, errlen, "Redis URL port must be 1-65535, not '%.*s'", (int)n, q);
            return -1;
        }
        q += n;
    }
    if (*q == '/') {
        q++;
        size_t n = strcspn(q, "?#");
        if (n > 0 && parse_int(q, n, 0, INT_MAX, &u->db) < 0) {
            set_err(err, errlen, "Redis URL database must be a number, not '%.*s'", (int)n, q);
            return -1;
        }
        q += n;
    }
    if (*q == '?' || *q == '#') {
        /* Not quoted: a query may hold ?password=... */
        set_err(err, errlen,
                "Redis URL query and fragment are not supported (a password goes before the "
                "host: redis://:password@host)");
        return -1;
    }
    if (*q) {
        set_err(err, errlen, "Redis URL has unsupported trailing '%s'", q);
        return -1;
    }
    return 0;
}

/* Runs AUTH/SELECT/PING on a blocking context; -1 with a message in err. */
static int sync_handshake(redisContext *c, const struct redis_url *u, char *err, size_t errlen)
{
    const char *what[3];
    redisReply *reply[3] = {NULL, NULL, NULL};
    int n = 0, rc = -1;
    if (u->password[0]) {
        what[n] = "AUTH";
        reply[n++] = u->user[0] ? redisCommand(c, "AUTH %s %s", u->user, u->password)
                                : redisCommand(c, "AUTH %s", u->password);
    }
    if (u->db != 0) {
        what[n] = "SELECT";
        reply[n++] = redisCommand(c, "SELECT %d", u->db);
    }
    if (n == 0) {
        what[n] = "PING";
        reply[n++] = redisCommand(c, "PING");
    }
    for (int i = 0; i < n; i++) {
        if (!reply[i]) {
            set_err(err, errlen, "%s: %s", what[i], c->errstr[0] ? c->errstr : "no reply");
            goto end;
        }
        if (reply[i]->type == REDIS_REPLY_ERROR) {
            set_err(err, errlen, "%s failed: %s", what[i], reply[i]->str);
            goto end;
        }
    }
    rc = 0;
end:
    for (int i = 0; i < n; i++) {
        if (reply[i])
            freeReplyObject(reply[i]);
    }
    return rc;
}

redisContext *wc_redis_connect_sync(const char *url, int timeout_ms, char *err, size_t errlen)
{
    struct redis_url u;
    if (url_parse(url, &u, err, errlen) < 0)
        return NULL;
    if (timeout_ms <= 0)
        timeout_ms = 5000;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(u.host, u.port, tv);
    if (!c) {
        set_err(err, errlen, "connect to %s:%d: out of memory", u.host, u.port);
        goto error;
    }
    if (c->err) {
        set_err(err, errlen, "connect to %s:%d: %s", u.host, u.port, c->errstr);
        goto error;
    }
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        set_err(err, errlen, "set time-out on %s:%d: %s", u.host, u.port, c->errstr);
        goto error;
    }
    if (sync_handshake(c, &u, err, errlen) < 0)
        goto error;
    explicit_bzero(u.password, sizeof u.password);
    return c;
error:
    explicit_bzero(u.password, sizeof u.password);
    if (c)
        redisFree(c);
    return NULL;
}

static void set_state(wc_redis *r, enum conn_state st)
{
    wc_debug("redis %s: %s -> %s", r->name, state_names[r->state], state_names[st]);
    r->state = st;
    r->state_since_ms = now_ms();
}

static void request_unlink(wc_redis *r, wc_redis_request *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        r->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        r->tail = q->prev;
    q->prev = q->next = NULL;
    r->npending--;
    r->last_progress_ms = now_ms();
}

static void request_link(wc_redis *r, wc_redis_request *q)
{
    q->prev = r->tail;
    q->next = NULL;
    if (r->tail)
        r->tail->next = q;
    else
        r->head = q;
    r->tail = q;
    r->npending++;
}

/* hiredis calls this exactly once per command: with the reply, or with NULL
 * while it frees the context. */
static void request_done(redisAsyncContext *ac, void *reply, void *privdata)
{
    wc_redis_request *q = privdata;
    wc_redis *r = q->r;
    /* NULL from a context we still hold means hiredis is tearing it down (read
     * error, EOF): refuse new commands until its disconnect callback runs. */
    if (!reply && r->ac == ac && r->state == CONN_READY)
        r->state = CONN_CLOSING;
    redisReply *rep = reply;
    if (rep && rep->type == REDIS_REPLY_ERROR && rep->str && strncmp(rep->str, "NOSCRIPT", 8) == 0)
        r->script_gen++; /* the server lost its scripts: load each again on next use */
    request_unlink(r, q);
    wc_redis_cb *cb = q->cb;
    void *arg = q->arg;
    free(q);
    if (cb)
        cb(r, reply, arg);
}

/* Calls back every request hiredis no longer knows about. After
 * redisAsyncFree() the list is already empty; this is the safety net that
 * keeps "exactly once" true if that ever changes. */
static void requests_fail_all(wc_redis *r)
{
    while (r->head) {
        wc_redis_request *q = r->head;
        request_unlink(r, q);
        wc_redis_cb *cb = q->cb;
        void *arg = q->arg;
        free(q);
        if (cb)
            cb(r, NULL, arg);
    }
}

static wc_redis_request *request_new(wc_redis *r, wc_redis_cb *cb, void *arg, const char *cmd,
                                     size_t cmdlen)
{
    wc_redis_request *q = calloc(1, sizeof *q);
    if (!q)
        return NULL;
    q->r = r;
    q->cb = cb;
    q->arg = arg;
    q->sent_ms = now_ms();
    if (cmdlen >= sizeof q->cmd)
        cmdlen = sizeof q->cmd - 1;
    for (size_t i = 0; i < cmdlen; i++)
        q->cmd[i] = (char)toupper((unsigned char)cmd[i]);
    return q;
}

static int send_argv(wc_redis *r, wc_redis_cb *cb, void *arg, int argc, const char **argv,
                     const size_t *argvlen)
{
    size_t len0 = argvlen ? argvlen[0] : strlen(argv[0]);
    wc_redis_request *q = request_new(r, cb, arg, argv[0], len0);
    if (!q)
        return -1;
    if (redisAsyncCommandArgv(r->ac, request_done, q, argc, argv, argvlen) != REDIS_OK) {
        free(q);
        return -1;
    }
    request_link(r, q);
    return 0;
}

/* Arms retry_ev and returns the delay in ms. */
static int schedule_retry(wc_redis *r)
{
    if (r->backoff_ms == 0)
        r->backoff_ms = BACKOFF_MIN_MS;
    else if (r->backoff_ms < BACKOFF_MAX_MS)
        r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
    /* Half fixed, half random: clients that lost the same server spread out. */
    int half = r->backoff_ms / 2;
    int delay = half + (int)(rng_next(r) % (unsigned long long)(half + 1));
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    evtimer_add(r->retry_ev, &tv);
    return delay;
}

/* The connection is gone (or never came up): remember why, log it, back off.
 * The caller has already detached r->ac. */
static void conn_failed(wc_redis *r, const char *reason)
{
    bool was_ready = r->state == CONN_READY || r->state == CONN_CLOSING;
    snprintf(r->error, sizeof r->error, "%s", reason);
    r->drop_pending = false;
    r->failures++;
    set_state(r, CONN_BACKOFF);
    int delay = schedule_retry(r);
    if (was_ready)
        wc_warn("redis %s: connection lost: %s; reconnecting in %d ms", r->name, reason, delay);
    else
        wc_warn("redis %s: connect failed (attempt %u): %s; retrying in %d ms", r->name,
                r->failures, reason, delay);
}

/* Drops the connection from outside any hiredis callback: every pending
 * callback gets NULL, then we back off and reconnect. */
static void conn_drop(wc_redis *r, const char *reason)
{
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    conn_failed(r, reason);
    if (ac)
        redisAsyncFree(ac);
    requests_fail_all(r);
}

/* Asks for a drop from inside a hiredis callback; drop_ev runs it after. */
static void conn_drop_later(wc_redis *r, const char *reason)
{
    if (r->drop_pending)
        return; /* keep the first reason: it is the cause */
    r->drop_pending = true;
    snprintf(r->drop_reason, sizeof r->drop_reason, "%s", reason);
    event_active(r->drop_ev, EV_TIMEOUT, 1);
}

static void drop_event(evutil_socket_t fd, short what, void *arg)
{
    wc_redis *r = arg;
    if (r->drop_pending && r->ac)
        conn_drop(r, r->drop_reason);
    r->drop_pending = false;
}

static void sub_reply(redisAsyncContext *ac, void *replyp, void *privdata);

static void send_subscribe(wc_redis *r, wc_redis_sub *s)
{
    if (redisAsyncCommand(r->ac, sub_reply, s, "SUBSCRIBE %b", s->channel, s->channel_len) !=
        REDIS_OK)
        wc_warn("redis %s: SUBSCRIBE %s could not be sent: %s", r->name, s->channel,
                r->ac->c.errstr[0] ? r->ac->c.errstr : "connection closing");
}

static void conn_ready(wc_redis *r)
{
    bool reconnect = r->failures > 0 || r->error[0];
    r->script_gen++; /* a new connection may reach a server that never saw our scripts */
    set_state(r, CONN_READY);
    r->backoff_ms = 0;
    r->failures = 0;
    r->error[0] = '\0';
    wc_info("redis %s: %s to %s:%d db %d", r->name, reconnect ? "reconnected" : "connected",
            r->url.host, r->url.port, r->url.db);
    for (wc_redis_sub *s = r->subs; s; s = s->next)
        send_subscribe(r, s);
    if (r->on_connect)
        r->on_connect(r, r->on_connect_arg);
}

static void handshake_reply(wc_redis *r, redisReply *reply, void *arg)
{
    const char *what = arg;
    if (!reply || r->state != CONN_HANDSHAKE)
        return; /* the connection is going away; its disconnect path reports why */
    if (reply->type == REDIS_REPLY_ERROR) {
        char reason[512];
        snprintf(reason, sizeof reason, "%s failed: %s", what, reply->str ? reply->str : "?");
        conn_drop_later(r, reason);
        return;
    }
    if (--r->handshake_left == 0 && !r->drop_pending)
        conn_ready(r);
}

static void conn_connected_cb(const redisAsyncContext *cac, int status)
{
    wc_redis *r = cac->data;
    if (!r || r->ac != cac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context right after this callback. */
        char reason[512];
        snprintf(reason, sizeof reason, "%s", cac->c.errstr[0] ? cac->c.errstr : "connect failed");
        r->ac = NULL;
        conn_failed(r, reason);
        return;
    }
    set_state(r, CONN_HANDSHAKE);
    /* Half-open connections (a crashed host, a dropped NAT entry) would
     * otherwise leave a subscriber waiting forever. */
    redisEnableKeepAlive(&r->ac->c);
    const char *argv[3];
    int rc = 0;
    r->handshake_left = 0;
    if (r->url.password[0]) {
        int argc = 0;
        argv[argc++] = "AUTH";
        if (r->url.user[0])
            argv[argc++] = r->url.user;
        argv[argc++] = r->url.password;
        rc |= send_argv(r, handshake_reply, "AUTH", argc, argv, NULL);
        r->handshake_left++;
    }
    if (r->url.db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", r->url.db);
        argv[0] = "SELECT";
        argv[1] = db;
        rc |= send_argv(r, handshake_reply, "SELECT", 2, argv, NULL);
        r->handshake_left++;
    }
    if (r->handshake_left == 0) {
        argv[0] = "PING";
        rc |= send_argv(r, handshake_reply, "PING", 1, argv, NULL);
        r->handshake_left++;
    }
    if (rc != 0)
        conn_drop_later(r, "could not send the connection handshake");
}

static void conn_disconnected_cb(const redisAsyncContext *cac, int status)
{
    wc_redis *r = cac->data;
    if (!r || r->ac != cac)
        return;   /* we dropped it ourselves and already moved on */
    r->ac = NULL; /* hiredis frees the context after this returns */
    char reason[512];
    if (r->drop_pending)
        snprintf(reason, sizeof reason, "%s", r->drop_reason);
    else if (status != REDIS_OK && cac->c.errstr[0])
        snprintf(reason, sizeof reason, "%s", cac->c.errstr);
    else
        snprintf(reason, sizeof reason, "connection closed");
    conn_failed(r, reason);
    requests_fail_all(r);
}

static void conn_start(wc_redis *r)
{
    set_state(r, CONN_CONNECTING);
    redisAsyncContext *ac = redisAsyncConnect(r->url.host, r->url.port);
    if (!ac) {
        conn_failed(r, "out of memory");
        return;
    }
    if (ac->err) {
        char reason[512];
        snprintf(reason, sizeof reason, "%s", ac->c.errstr);
        redisAsyncFree(ac);
        conn_failed(r, reason);
        return;
    }
    ac->data = r;
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        redisAsyncFree(ac);
        conn_failed(r, "could not attach to the event loop");
        return;
    }
    r->ac = ac;
    redisAsyncSetConnectCallback(ac, conn_connected_cb);
    redisAsyncSetDisconnectCallback(ac, conn_disconnected_cb);
}

static void retry_event(evutil_socket_t fd, short what, void *arg)
{
    wc_redis *r = arg;
    if (r->state == CONN_BACKOFF)
        conn_start(r);
}

static void tick_event(evutil_socket_t fd, short what, void *arg)
{
    wc_redis *r = arg;
    long long now = now_ms();
    char reason[512];
    switch (r->state) {
    case CONN_CONNECTING:
        if (now - r->state_since_ms >= r->timeout_ms) {
            snprintf(reason, sizeof reason, "connect to %.255s:%d timed out after %d ms",
                     r->url.host, r->url.port, r->timeout_ms);
            conn_drop(r, reason);
        }
        break;
    case CONN_HANDSHAKE:
    case CONN_READY:
        /* Stuck, not busy: the oldest command is over the time-out AND nothing
         * was answered for as long. A server working through a deep pipeline
         * keeps answering, and dropping the connection then would throw away
         * replies it has already acted on. */
        if (r->head && now - r->head->sent_ms >= r->timeout_ms &&
            now - r->last_progress_ms >= r->timeout_ms) {
            snprintf(reason, sizeof reason, "%s timed out after %d ms (%zu commands pending)",
                     r->head->cmd[0] ? r->head->cmd : "command", r->timeout_ms, r->npending);
            conn_drop(r, reason);
        }
        break;
    default:
        break;
    }
}

wc_redis *wc_redis_new(struct event_base *base, const char *url, const char *name, int timeout_ms,
                       char *err, size_t errlen)
{
    wc_redis *r = calloc(1, sizeof *r);
    if (!r) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    if (url_parse(url, &r->url, err, errlen) < 0)
        goto error;
    r->base = base;
    r->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    r->name = strdup(name && *name ? name : "redis");
    /* Rebuilt from the parsed parts rather than redacted from the input, so
     * no spelling of the credentials (an unencoded '@' in the password, say)
     * can reach a log line. */
    char safe[512];
    snprintf(safe, sizeof safe, "redis://%s%s%s%s%s:%d/%d", r->url.user,
             r->url.user[0] || r->url.password[0] ? ":***@" : "",
             strchr(r->url.host, ':') ? "[" : "", r->url.host, strchr(r->url.host, ':') ? "]" : "",
             r->url.port, r->url.db);
    r->safe_url = strdup(safe);
    r->rng = (unsigned long long)now_ms() * 0x9E3779B97F4A7C15ULL ^ (uintptr_t)r ^
             ((unsigned long long)getpid() << 32);
    if (r->rng == 0)
        r->rng = 1;
    r->tick_ev = event_new(base, -1, EV_PERSIST, tick_event, r);
    r->retry_ev = evtimer_new(base, retry_event, r);
    r->drop_ev = event_new(base, -1, 0, drop_event, r);
    if (!r->name || !r->safe_url || !r->tick_ev || !r->retry_ev || !r->drop_ev) {
        set_err(err, errlen, "out of memory");
        goto error;
    }
    /* A quarter of the time-out, within 50-250 ms: a stuck command is noticed
     * at most 25% late, and an idle client wakes the loop a few times a second. */
    int tick = r->timeout_ms / 4;
    tick = tick < 50 ? 50 : tick > 250 ? 250 : tick;
    struct timeval tv = {tick / 1000, (tick % 1000) * 1000};
    evtimer_add(r->tick_ev, &tv);
    r->state = CONN_BACKOFF;
    wc_info("redis %s: connecting to %s (time-out %d ms)", r->name, r->safe_url, r->timeout_ms);
    conn_start(r);
    return r;
error:
    wc_redis_free(r);
    return NULL;
}

void wc_redis_free(wc_redis *r)
{
    if (!r)
        return;
    r->state = CONN_CLOSED;
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac)
        redisAsyncFree(ac); /* pending callbacks get NULL; they see CONN_CLOSED */
    requests_fail_all(r);
    if (r->tick_ev)
        event_free(r->tick_ev);
    if (r->retry_ev)
        event_free(r->retry_ev);
    if (r->drop_ev)
        event_free(r->drop_ev);
    while (r->subs) {
        wc_redis_sub *s = r->subs;
        r->subs = s->next;
        free(s->channel);
        free(s);
    }
    for (int i = 0; i < r->nscripts; i++)
        free(r->scripts[i].body);
    explicit_bzero(r->url.password, sizeof r->url.password);
    free(r->name);
    free(r->safe_url);
    free(r);
}

void wc_redis_on_connect(wc_redis *r, wc_redis_conn_cb *cb, void *arg)
{
    r->on_connect = cb;
    r->on_connect_arg = arg;
}

bool wc_redis_ready(const wc_redis *r)
{
    return r->state == CONN_READY && r->ac != NULL;
}

const char *wc_redis_error(const wc_redis *r)
{
    return r->error;
}

size_t wc_redis_pending(const wc_redis *r)
{
    return r->npending;
}

/* The first word of a format string, for log lines ("SET" from "SET %s %b"). */
static size_t fmt_command_len(const char *fmt)
{
    size_t n = 0;
    while (fmt[n] && fmt[n] != ' ' && fmt[n] != '%')
        n++;
    return n;
}

int wc_redis_command(wc_redis *r, wc_redis_cb *cb, void *arg, const char *fmt, ...)
{
    /* A subscribed hiredis 0.14 context routes replies by channel name, so an
     * ordinary command there could lose its callback: refuse it. */
    if (!wc_redis_ready(r) || r->subs)
        return -1;
    wc_redis_request *q = request_new(r, cb, arg, fmt, fmt_command_len(fmt));
    if (!q)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(r->ac, request_done, q, fmt, ap);
    va_end(ap);
    if (rc != REDIS_OK) {
        free(q);
        return -1;
    }
    request_link(r, q);
    return 0;
}

static wc_script *script_find(wc_redis *r, const char *body, size_t len)
{
    for (int i = 0; i < r->nscripts; i++) {
        wc_script *sc = &r->scripts[i];
        if (sc->len == len && memcmp(sc->body, body, len) == 0)
            return sc; /* by content: a caller may build scripts in a reused buffer */
    }
    if (r->nscripts == SCRIPT_CACHE)
        return NULL; /* more distinct scripts than expected: plain EVAL */
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    wc_script *sc = &r->scripts[r->nscripts];
    if (EVP_Digest(body, len, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return NULL;
    if (!(sc->body = malloc(len ? len : 1)))
        return NULL;
    memcpy(sc->body, body, len);
    sc->len = len;
    for (unsigned i = 0; i < 20; i++)
        snprintf(sc->sha + 2 * i, 3, "%02x", md[i]);
    sc->loaded_gen = r->script_gen - 1;
    r->nscripts++;
    return sc;
}

/* EVAL <body> ... goes out as EVALSHA <sha1> ..., after a SCRIPT LOAD on
 * the first use on this connection (same pipeline, so it is there first). */
static int send_eval(wc_redis *r, wc_redis_cb *cb, void *arg, int argc, const char **argv,
                     const size_t *argvlen)
{
    size_t blen = argvlen ? argvlen[1] : strlen(argv[1]);
    wc_script *sc = script_find(r, argv[1], blen);
    if (!sc)
        return send_argv(r, cb, arg, argc, argv, argvlen);
    if (sc->loaded_gen != r->script_gen) {
        const char *load[] = {"SCRIPT", "LOAD", sc->body};
        size_t loadlen[] = {6, 4, sc->len};
        if (send_argv(r, NULL, NULL, 3, load, loadlen) < 0)
            return -1;
        sc->loaded_gen = r->script_gen;
    }
    const char *small[16];
    size_t smalllen[16];
    const char **av = argc <= 16 ? small : malloc(sizeof *av * (size_t)argc);
    size_t *al = argc <= 16 ? smalllen : malloc(sizeof *al * (size_t)argc);
    if (!av || !al) {
        if (av != small)
            free(av);
        if (al != smalllen)
            free(al);
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        av[i] = argv[i];
        al[i] = argvlen ? argvlen[i] : strlen(argv[i]);
    }
    av[0] = "EVALSHA";
    al[0] = 7;
    av[1] = sc->sha;
    al[1] = 40;
    int rc = send_argv(r, cb, arg, argc, av, al);
    if (av != small)
        free(av);
    if (al != smalllen)
        free(al);
    return rc;
}

int wc_redis_commandv(wc_redis *r, wc_redis_cb *cb, void *arg, int argc, const char **argv,
                      const size_t *argvlen)
{
    if (!wc_redis_ready(r) || r->subs || argc < 1)
        return -1;
    if (argc >= 2 && (argvlen ? argvlen[0] : strlen(argv[0])) == 4 &&
        strncasecmp(argv[0], "EVAL", 4) == 0)
        return send_eval(r, cb, arg, argc, argv, argvlen);
    return send_argv(r, cb, arg, argc, argv, argvlen);
}

static void sub_reply(redisAsyncContext *ac, void *replyp, void *privdata)
{
    wc_redis_sub *s = privdata;
    redisReply *reply = replyp;
    /* hiredis calls this for the confirmation, for every message, and once
     * with NULL when the context goes away (the reconnect re-subscribes). */
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = reply->element[0]->str;
    if (strcasecmp(kind, "message") == 0) {
        redisReply *payload = reply->element[2];
        if (payload->type == REDIS_REPLY_STRING && s->cb)
            s->cb(s->r, s->channel, payload->str, payload->len, s->arg);
    } else if (strcasecmp(kind, "subscribe") == 0) {
        wc_info("redis %s: subscribed to %s", s->r->name, s->channel);
    }
}

int wc_redis_subscribe(wc_redis *r, const char *channel, wc_redis_msg_cb *cb, void *arg)
{
    if (!channel || !*channel || r->state == CONN_CLOSED)
        return -1;
    for (wc_redis_sub *s = r->subs; s; s = s->next) {
        if (strcmp(s->channel, channel) == 0) {
            s->cb = cb;
            s->arg = arg;
            return 0;
        }
    }
    wc_redis_sub *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    s->r = r;
    s->channel = strdup(channel);
    if (!s->channel) {
        free(s);
        return -1;
    }
    s->channel_len = strlen(channel);
    s->cb = cb;
    s->arg = arg;
    s->next = r->subs;
    r->subs = s;
    /* Not connected yet: conn_ready() subscribes. */
    if (wc_redis_ready(r))
        send_subscribe(r, s);
    return 0;
}
