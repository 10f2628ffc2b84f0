/* A pool of non-blocking libpq connections on the daemon's libevent loop, so
 * Postgres work never stalls the thousands of other things the loop drives.
 * Modelled on pgbouncer: each connection is a struct whose enum state is the
 * list it sits on, and conn_drive() is the one function that moves it. Queries
 * wait in one FIFO queue and run on the first idle connection, one at a time
 * per connection. User callbacks run only from loop events (or wc_pg_free),
 * never from inside wc_pg_query(), so a caller never sees its callback before
 * the call that queued it has returned. */
#include "wc_pg.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "wc_log.h"

#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000
/* Defaults the connection string may override (they come before "dbname" in
 * the keyword list, and libpq lets later entries win). */
#define PG_CONNECT_TIMEOUT_S "10"
#define PG_KEEPALIVES_IDLE_S "30"
#define PG_KEEPALIVES_INTERVAL_S "10"
#define PG_KEEPALIVES_COUNT "3"

enum pg_conn_state {
    PG_CONN_BACKOFF,    /* no socket; the timer starts the next attempt */
    PG_CONN_CONNECTING, /* PQconnectPoll in progress; the timer bounds it */
    PG_CONN_IDLE,       /* connected, no query; watching for the server closing */
    PG_CONN_BUSY,       /* one query sent, reading its results */
    PG_CONN_CLOSED,     /* the pool is being freed */
    PG_CONN_NSTATES
};

static const char *const pg_conn_state_names[PG_CONN_NSTATES] = {"backoff", "connecting", "idle",
                                                                 "busy", "closed"};

struct pg_conn;

struct pg_query {
    TAILQ_ENTRY(pg_query) link; /* in pg->waiting while not running */
    wc_pg *pg;
    struct pg_conn *conn; /* running on, or NULL while waiting */
    struct event timer;   /* timeout_ms after queueing */
    bool timer_armed;
    wc_pg_cb *cb;
    void *arg;
    int nparams;
    char **values; /* copies, in the same allocation as the query */
    char *sql;
};

TAILQ_HEAD(pg_query_list, pg_query);

struct pg_conn {
    TAILQ_ENTRY(pg_conn) link; /* in pg->conns[state] */
    wc_pg *pg;
    int id;
    enum pg_conn_state state;
    PGconn *conn;
    struct event io; /* EV_PERSIST on PQsocket() with io_events */
    int io_fd;
    short io_events;
    bool io_armed;
    struct event timer; /* back-off delay or connect timeout */
    struct pg_query *query;
    PGresult *result; /* kept until PQgetResult returns NULL */
    bool flushing;    /* PQflush returned 1: wait for write-ready */
    int backoff_ms;
    char last_failure[256]; /* to log a repeated failure quietly */
    char fatal[256];        /* a FATAL the server sent while idle, before closing */
};

TAILQ_HEAD(pg_conn_list, pg_conn);

struct wc_pg {
    struct event_base *base;
    char *conninfo;
    char *name;
    char redacted[256];
    int timeout_ms;
    int nconn;
    struct pg_conn *conns;
    struct pg_conn_list by_state[PG_CONN_NSTATES];
    size_t nby_state[PG_CONN_NSTATES];
    struct pg_query_list waiting;
    size_t nwaiting;
    size_t nrunning;
    struct event kick; /* runs the dispatcher on the next loop turn */
    bool closing;
    int in_callback;
    uint64_t rng;
    char last_error[256];
    char sqlstate[8];
};

static void conn_drive(struct pg_conn *c, short what);

static void conn_event_cb(evutil_socket_t fd, short what, void *arg)
{
    conn_drive(arg, what);
}

/* The first line of a libpq message, without leading or trailing blanks. */
static void first_line(const char *msg, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    if (!msg)
        msg = "";
    while (*msg == ' ' || *msg == '\t' || *msg == '\n' || *msg == '\r')
        msg++;
    size_t n = strcspn(msg, "\r\n");
    while (n > 0 && (msg[n - 1] == ' ' || msg[n - 1] == '\t'))
        n--;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, msg, n);
    out[n] = '\0';
}

static void result_error_text(const PGresult *res, char *out, size_t outlen)
{
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    first_line(primary && *primary ? primary : PQresultErrorMessage(res), out, outlen);
    if (!out[0])
        snprintf(out, outlen, "unexpected result %s", PQresStatus(PQresultStatus(res)));
}

static bool result_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

/* xorshift64*: jitter only, no need for anything stronger. */
static uint32_t pg_random(wc_pg *pg)
{
    pg->rng ^= pg->rng >> 12;
    pg->rng ^= pg->rng << 25;
    pg->rng ^= pg->rng >> 27;
    return (uint32_t)((pg->rng * 0x2545F4914F6CDD1DULL) >> 32);
}

static void timer_add_ms(struct event *ev, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_add(ev, &tv);
}

static void pg_notice_receiver(void *arg, const PGresult *res)
{
    struct pg_conn *c = arg;
    char msg[512];
    first_line(PQresultErrorMessage(res), msg, sizeof msg);
    wc_debug("pg %s conn %d: %s", c->pg->name, c->id, msg);
    /* Says why the server is about to close an idle connection (shutdown,
     * pg_terminate_backend, idle_session_timeout); libpq only says it closed. */
    const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (severity && primary && (!strcmp(severity, "FATAL") || !strcmp(severity, "PANIC")))
        first_line(primary, c->fatal, sizeof c->fatal);
}

/* Moves c to another state list. Exactly one log line per change; the level
 * says how much an operator cares. */
static void conn_set_state(struct pg_conn *c, enum pg_conn_state state, int level,
                           const char *detail)
{
    wc_pg *pg = c->pg;
    TAILQ_REMOVE(&pg->by_state[c->state], c, link);
    pg->nby_state[c->state]--;
    wc_log(level, "pg %s conn %d: %s -> %s%s%s", pg->name, c->id, pg_conn_state_names[c->state],
           pg_conn_state_names[state], detail ? ": " : "", detail ? detail : "");
    c->state = state;
    TAILQ_INSERT_TAIL(&pg->by_state[state], c, link);
    pg->nby_state[state]++;
}

/* Watches the connection's socket for events (0: none). force re-arms even
 * when nothing seems to change: while connecting, libpq may close the socket
 * and open another that gets the same number, and the kernel forgot the old
 * registration when the old one was closed. */
static void conn_watch(struct pg_conn *c, short events, bool force)
{
    int fd = c->conn ? PQsocket(c->conn) : -1;
    if (!force && c->io_armed && c->io_fd == fd && c->io_events == events)
        return;
    if (c->io_armed) {
        event_del(&c->io);
        c->io_armed = false;
    }
    if (!events || fd < 0)
        return;
    event_assign(&c->io, c->pg->base, fd, events | EV_PERSIST, conn_event_cb, c);
    event_add(&c->io, NULL);
    c->io_fd = fd;
    c->io_events = events;
    c->io_armed = true;
}

/* Runs the user's callback and frees the query. res, when given, is consumed:
 * an error result becomes (NULL, its message) with its SQLSTATE visible. The
 * query must already be off every list and connection. */
static void query_complete(struct pg_query *q, PGresult *res, const char *err)
{
    wc_pg *pg = q->pg;
    char errbuf[512];
    PGresult *ok = NULL;
    if (q->timer_armed) {
        event_del(&q->timer);
        q->timer_armed = false;
    }
    pg->sqlstate[0] = '\0';
    if (res && result_ok(res)) {
        ok = res;
        err = NULL;
    } else if (res) {
        result_error_text(res, errbuf, sizeof errbuf);
        err = errbuf;
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        snprintf(pg->sqlstate, sizeof pg->sqlstate, "%s", state ? state : "");
    } else if (!err) {
        err = "unknown error";
    }
    pg->in_callback++;
    q->cb(pg, ok, err, q->arg);
    pg->in_callback--;
    pg->sqlstate[0] = '\0';
    if (res)
        PQclear(res);
    free(q);
}

/* Closes the socket and schedules the next attempt after the back-off. A
 * query running on c fails with reason, or with the error result the server
 * sent before it went away (which says why, e.g. an administrator shutdown). */
static void conn_drop(struct pg_conn *c, const char *why, bool is_failure)
{
    wc_pg *pg = c->pg;
    char reason[256], detail[400];
    struct pg_query *q = c->query;
    PGresult *res = c->result;
    if (res && !result_ok(res))
        result_error_text(res, reason, sizeof reason);
    else if (is_failure && c->fatal[0])
        snprintf(reason, sizeof reason, "%s", c->fatal);
    else
        first_line(why, reason, sizeof reason);
    c->fatal[0] = '\0';
    if (!reason[0])
        snprintf(reason, sizeof reason, "connection lost");
    c->query = NULL;
    c->result = NULL;
    c->flushing = false;
    conn_watch(c, 0, false);
    event_del(&c->timer);
    if (c->conn) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    if (res && result_ok(res)) {
        PQclear(res);
        res = NULL;
    }

    int half = c->backoff_ms / 2;
    int delay = half + (int)(pg_random(pg) % (uint32_t)(half + 1));
    c->backoff_ms = c->backoff_ms * 2 > PG_BACKOFF_MAX_MS ? PG_BACKOFF_MAX_MS : c->backoff_ms * 2;
    snprintf(detail, sizeof detail, "%s; reconnecting in %d ms", reason, delay);
    /* A server that stays down would otherwise log every attempt of every
     * connection: the first failure is a warning, its repeats are debug. */
    int level = WC_LOG_INFO;
    if (is_failure) {
        level = strcmp(reason, c->last_failure) ? WC_LOG_WARN : WC_LOG_DEBUG;
        snprintf(c->last_failure, sizeof c->last_failure, "%s", reason);
        snprintf(pg->last_error, sizeof pg->last_error, "%s", reason);
    }
    conn_set_state(c, PG_CONN_BACKOFF, level, detail);
    timer_add_ms(&c->timer, delay);

    if (q) {
        pg->nrunning--;
        q->conn = NULL;
        query_complete(q, res, reason);
    }
}

static int conn_connect_timeout_s(PGconn *conn)
{
    int seconds = atoi(PG_CONNECT_TIMEOUT_S);
    PQconninfoOption *opts = PQconninfo(conn);
    for (PQconninfoOption *o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && *o->val)
            seconds = atoi(o->val);
    }
    PQconninfoFree(opts);
    /* libpq's own rule: 0 or less is "wait forever", 1 is rounded up to 2. */
    if (seconds > 86400)
        seconds = 86400;
    return seconds == 1 ? 2 : seconds;
}

static void conn_connect_start(struct pg_conn *c)
{
    wc_pg *pg = c->pg;
    /* jit=off: the daemons' statements are short and run thousands of times;
     * JIT compiling a 2,000-row status batch cost 365 ms of its 484 ms
     * (bench/, EXPLAIN ANALYZE). A URL's own options= still wins. */
    const char *keywords[] = {"connect_timeout",
                              "keepalives",
                              "keepalives_idle",
                              "keepalives_interval",
                              "keepalives_count",
                              "application_name",
                              "options",
                              "dbname",
                              NULL};
    const char *values[] = {PG_CONNECT_TIMEOUT_S,
                            "1",
                            PG_KEEPALIVES_IDLE_S,
                            PG_KEEPALIVES_INTERVAL_S,
                            PG_KEEPALIVES_COUNT,
                            pg->name,
                            "-c jit=off",
                            pg->conninfo,
                            NULL};
    c->conn = PQconnectStartParams(keywords, values, 1);
    if (!c->conn) {
        conn_drop(c, "out of memory", true);
        return;
    }
    if (PQstatus(c->conn) == CONNECTION_BAD) {
        conn_drop(c, PQerrorMessage(c->conn), true);
        return;
    }
    PQsetNoticeReceiver(c->conn, pg_notice_receiver, c);
    conn_set_state(c, PG_CONN_CONNECTING, WC_LOG_DEBUG, pg->redacted);
    int timeout_s = conn_connect_timeout_s(c->conn);
    if (timeout_s > 0)
        timer_add_ms(&c->timer, timeout_s * 1000);
    /* libpq: after the start, behave as if PQconnectPoll said "writing". */
    conn_watch(c, EV_WRITE, true);
}

static void pool_dispatch(wc_pg *pg);

static void conn_connect_poll(struct pg_conn *c)
{
    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        conn_watch(c, EV_READ, true);
        break;
    case PGRES_POLLING_WRITING:
        conn_watch(c, EV_WRITE, true);
        break;
    case PGRES_POLLING_OK:
        event_del(&c->timer);
        if (PQsetnonblocking(c->conn, 1) != 0) {
            conn_drop(c, PQerrorMessage(c->conn), true);
            break;
        }
        c->backoff_ms = PG_BACKOFF_MIN_MS;
        c->last_failure[0] = '\0';
        c->pg->last_error[0] = '\0';
        conn_set_state(c, PG_CONN_IDLE, WC_LOG_INFO, c->pg->redacted);
        conn_watch(c, EV_READ, true);
        pool_dispatch(c->pg);
        break;
    default:
        conn_drop(c, PQerrorMessage(c->conn), true);
        break;
    }
}

/* The query on c has all its results: back to idle, then the callback. */
static void conn_query_done(struct pg_conn *c)
{
    wc_pg *pg = c->pg;
    struct pg_query *q = c->query;
    PGresult *res = c->result;
    c->query = NULL;
    c->result = NULL;
    c->flushing = false;
    q->conn = NULL;
    pg->nrunning--;
    conn_set_state(c, PG_CONN_IDLE, WC_LOG_DEBUG, NULL);
    conn_watch(c, EV_READ, false);
    query_complete(q, res, "no result");
    if (c->state == PG_CONN_IDLE && PQstatus(c->conn) != CONNECTION_OK)
        conn_drop(c, PQerrorMessage(c->conn), true);
    pool_dispatch(pg);
}

/* Read-ready and/or write-ready while a query runs (libpq's non-blocking
 * recipe: flush until done, consume input, collect results until NULL). */
static void conn_busy_work(struct pg_conn *c, short what)
{
    if ((what & EV_READ) && !PQconsumeInput(c->conn)) {
        conn_drop(c, PQerrorMessage(c->conn), true);
        return;
    }
    if (c->flushing) {
        int r = PQflush(c->conn);
        if (r < 0) {
            conn_drop(c, PQerrorMessage(c->conn), true);
            return;
        }
        c->flushing = r == 1;
        conn_watch(c, c->flushing ? EV_READ | EV_WRITE : EV_READ, false);
    }
    while (!PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (!res) {
            conn_query_done(c);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) {
            /* The connection would stay in COPY mode: drop it. */
            PQclear(res);
            conn_drop(c, "COPY is not supported by wc_pg_query", true);
            return;
        }
        /* One statement gives one result; keep the first error if any. */
        if (!c->result || result_ok(c->result)) {
            if (c->result)
                PQclear(c->result);
            c->result = res;
        } else {
            PQclear(res);
        }
    }
    if (PQstatus(c->conn) != CONNECTION_OK)
        conn_drop(c, PQerrorMessage(c->conn), true);
}

/* The one function that moves a connection: every socket event and timer of
 * a connection lands here. */
static void conn_drive(struct pg_conn *c, short what)
{
    switch (c->state) {
    case PG_CONN_BACKOFF:
        conn_connect_start(c);
        break;
    case PG_CONN_CONNECTING:
        if (what & EV_TIMEOUT) {
            char why[64];
            snprintf(why, sizeof why, "connect timed out after %d s",
                     conn_connect_timeout_s(c->conn));
            conn_drop(c, why, true);
        } else {
            conn_connect_poll(c);
        }
        break;
    case PG_CONN_IDLE:
        /* Nothing is expected: the server is closing (shutdown, idle
         * timeout, terminate) or sent a notification. */
        if (!PQconsumeInput(c->conn)) {
            conn_drop(c, PQerrorMessage(c->conn), true);
            break;
        }
        (void)PQisBusy(c->conn);
        for (PGnotify *n; (n = PQnotifies(c->conn)) != NULL;)
            PQfreemem(n);
        if (PQstatus(c->conn) != CONNECTION_OK)
            conn_drop(c, PQerrorMessage(c->conn), true);
        break;
    case PG_CONN_BUSY:
        conn_busy_work(c, what);
        break;
    case PG_CONN_CLOSED:
    case PG_CONN_NSTATES:
        break;
    }
}

static void conn_send(struct pg_conn *c, struct pg_query *q)
{
    wc_pg *pg = c->pg;
    c->query = q;
    q->conn = c;
    pg->nrunning++;
    conn_set_state(c, PG_CONN_BUSY, WC_LOG_DEBUG, NULL);
    if (!PQsendQueryParams(c->conn, q->sql, q->nparams, NULL, (const char *const *)q->values, NULL,
                           NULL, 0)) {
        conn_drop(c, PQerrorMessage(c->conn), true);
        return;
    }
    int r = PQflush(c->conn);
    if (r < 0) {
        conn_drop(c, PQerrorMessage(c->conn), true);
        return;
    }
    c->flushing = r == 1;
    conn_watch(c, c->flushing ? EV_READ | EV_WRITE : EV_READ, false);
}

/* FIFO: the oldest waiting query goes to the longest idle connection. */
static void pool_dispatch(wc_pg *pg)
{
    while (!pg->closing && !TAILQ_EMPTY(&pg->waiting) &&
           !TAILQ_EMPTY(&pg->by_state[PG_CONN_IDLE])) {
        struct pg_query *q = TAILQ_FIRST(&pg->waiting);
        struct pg_conn *c = TAILQ_FIRST(&pg->by_state[PG_CONN_IDLE]);
        TAILQ_REMOVE(&pg->waiting, q, link);
        pg->nwaiting--;
        conn_send(c, q);
    }
}

static void pool_kick_cb(evutil_socket_t fd, short what, void *arg)
{
    pool_dispatch(arg);
}

static void query_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pg_query *q = arg;
    wc_pg *pg = q->pg;
    q->timer_armed = false;
    if (q->conn) {
        /* The server may still be working on it: the only way to get the
         * connection back without blocking the loop is to drop it. */
        struct pg_conn *c = q->conn;
        c->query = NULL;
        q->conn = NULL;
        pg->nrunning--;
        if (c->result) {
            PQclear(c->result);
            c->result = NULL;
        }
        char why[80];
        snprintf(why, sizeof why, "query timed out after %d ms; closing the connection",
                 pg->timeout_ms);
        conn_drop(c, why, false);
    } else {
        TAILQ_REMOVE(&pg->waiting, q, link);
        pg->nwaiting--;
    }
    query_complete(q, NULL, "timeout");
}

wc_pg *wc_pg_new(struct event_base *base, const char *conninfo, const char *name, int nconn,
                 int timeout_ms)
{
    wc_pg *pg = calloc(1, sizeof *pg);
    if (!pg)
        return NULL;
    if (nconn < 1)
        nconn = 1;
    pg->base = base;
    pg->nconn = nconn;
    pg->timeout_ms = timeout_ms;
    pg->conninfo = strdup(conninfo ? conninfo : "");
    pg->name = strdup(name && *name ? name : "wacast");
    pg->conns = calloc((size_t)nconn, sizeof *pg->conns);
    if (!pg->conninfo || !pg->name || !pg->conns)
        goto oom;
    wc_log_redact_url(pg->conninfo, pg->redacted, sizeof pg->redacted);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    pg->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
              (uint64_t)(uintptr_t)pg;
    if (!pg->rng)
        pg->rng = 0x9E3779B97F4A7C15ULL;
    TAILQ_INIT(&pg->waiting);
    for (int i = 0; i < PG_CONN_NSTATES; i++)
        TAILQ_INIT(&pg->by_state[i]);
    event_assign(&pg->kick, base, -1, 0, pool_kick_cb, pg);
    for (int i = 0; i < nconn; i++) {
        struct pg_conn *c = &pg->conns[i];
        c->pg = pg;
        c->id = i;
        c->state = PG_CONN_BACKOFF;
        c->backoff_ms = PG_BACKOFF_MIN_MS;
        evtimer_assign(&c->timer, base, conn_event_cb, c);
        TAILQ_INSERT_TAIL(&pg->by_state[PG_CONN_BACKOFF], c, link);
        pg->nby_state[PG_CONN_BACKOFF]++;
    }
    for (int i = 0; i < nconn; i++)
        conn_connect_start(&pg->conns[i]);
    return pg;
oom:
    free(pg->conns);
    free(pg->name);
    free(pg->conninfo);
    free(pg);
    return NULL;
}

void wc_pg_free(wc_pg *pg)
{
    if (!pg)
        return;
    if (pg->in_callback) {
        wc_error("pg %s: wc_pg_free called from a wc_pg callback", pg->name);
        abort();
    }
    pg->closing = true;
    event_del(&pg->kick);
    /* Running queries are older than waiting ones: fail them first. */
    struct pg_query_list failing;
    TAILQ_INIT(&failing);
    for (int i = 0; i < pg->nconn; i++) {
        struct pg_conn *c = &pg->conns[i];
        if (c->query) {
            c->query->conn = NULL;
            TAILQ_INSERT_TAIL(&failing, c->query, link);
            c->query = NULL;
            pg->nrunning--;
        }
        if (c->result) {
            PQclear(c->result);
            c->result = NULL;
        }
        conn_watch(c, 0, false);
        event_del(&c->timer);
        if (c->conn) {
            PQfinish(c->conn);
            c->conn = NULL;
        }
        conn_set_state(c, PG_CONN_CLOSED, WC_LOG_DEBUG, NULL);
    }
    TAILQ_CONCAT(&failing, &pg->waiting, link);
    pg->nwaiting = 0;
    struct pg_query *q;
    while ((q = TAILQ_FIRST(&failing)) != NULL) {
        TAILQ_REMOVE(&failing, q, link);
        query_complete(q, NULL, "shutting down");
    }
    free(pg->conns);
    free(pg->name);
    free(pg->conninfo);
    free(pg);
}

int wc_pg_query(wc_pg *pg, const char *sql, int nparams, const char *const *values, wc_pg_cb *cb,
                void *arg)
{
    if (!pg || !sql || !cb || nparams < 0 || (nparams > 0 && !values) || pg->closing)
        return -1;
    size_t size = sizeof(struct pg_query) + (size_t)nparams * sizeof(char *) + strlen(sql) + 1;
    for (int i = 0; i < nparams; i++)
        size += values[i] ? strlen(values[i]) + 1 : 0;
    struct pg_query *q = calloc(1, size);
    if (!q)
        return -1;
    q->pg = pg;
    q->cb = cb;
    q->arg = arg;
    q->nparams = nparams;
    q->values = (char **)(q + 1);
    char *p = (char *)(q->values + nparams);
    for (int i = 0; i < nparams; i++) {
        if (!values[i])
            continue;
        size_t len = strlen(values[i]) + 1;
        q->values[i] = memcpy(p, values[i], len);
        p += len;
    }
    q->sql = strcpy(p, sql);
    if (pg->timeout_ms > 0) {
        evtimer_assign(&q->timer, pg->base, query_timeout_cb, q);
        timer_add_ms(&q->timer, pg->timeout_ms);
        q->timer_armed = true;
    }
    TAILQ_INSERT_TAIL(&pg->waiting, q, link);
    pg->nwaiting++;
    if (!TAILQ_EMPTY(&pg->by_state[PG_CONN_IDLE]))
        event_active(&pg->kick, EV_TIMEOUT, 0);
    return 0;
}

bool wc_pg_ready(const wc_pg *pg)
{
    return pg && pg->nby_state[PG_CONN_IDLE] + pg->nby_state[PG_CONN_BUSY] > 0;
}

const char *wc_pg_error(const wc_pg *pg)
{
    return pg ? pg->last_error : "";
}

size_t wc_pg_pending(const wc_pg *pg)
{
    return pg ? pg->nwaiting + pg->nrunning : 0;
}

const char *wc_pg_last_sqlstate(const wc_pg *pg)
{
    return pg ? pg->sqlstate : "";
}
