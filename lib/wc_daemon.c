/* Shared start-up, signals and shutdown for the daemons; see wc_daemon.h. */
#include "wc_daemon.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <sodium.h>

#include "wc_log.h"
#include "wc_migrate.h"

int64_t wc_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t wc_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *name, const char *fmt, const char *a, const char *b)
{
    fprintf(stderr, "%s: ", name);
    fprintf(stderr, fmt, a, b);
    fputc('\n', stderr);
    exit(1);
}

/* Waits (blocking, before the loop exists) until PostgreSQL answers. */
static void wait_for_postgres(wc_daemon *d, const wc_common_cfg *cfg)
{
    int64_t deadline = wc_mono_us() + (int64_t)cfg->start_timeout_s * 1000000;
    char redacted[512];
    wc_log_redact_url(cfg->database_url, redacted, sizeof redacted);
    for (;;) {
        const char *keys[] = {"dbname", "connect_timeout", NULL};
        const char *vals[] = {cfg->database_url, "5", NULL};
        PGconn *c = PQconnectdbParams(keys, vals, 1);
        if (PQstatus(c) == CONNECTION_OK) {
            PQfinish(c);
            return;
        }
        char msg[512];
        snprintf(msg, sizeof msg, "%s", PQerrorMessage(c));
        PQfinish(c);
        msg[strcspn(msg, "\n")] = '\0';
        if (wc_mono_us() >= deadline)
            die(d->name, "cannot reach PostgreSQL at %s: %s", redacted, msg);
        wc_warn("waiting for PostgreSQL at %s: %s", redacted, msg);
        sleep(1);
    }
}

static void wait_for_redis(wc_daemon *d, const wc_common_cfg *cfg)
{
    int64_t deadline = wc_mono_us() + (int64_t)cfg->start_timeout_s * 1000000;
    char redacted[512];
    wc_log_redact_url(cfg->redis_url, redacted, sizeof redacted);
    for (;;) {
        char err[256] = "";
        redisContext *c = wc_redis_connect_sync(cfg->redis_url, 5000, err, sizeof err);
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type != REDIS_REPLY_ERROR;
            if (!ok)
                snprintf(err, sizeof err, "%s", r ? r->str : c->errstr);
            if (r)
                freeReplyObject(r);
            redisFree(c);
            if (ok)
                return;
        }
        if (wc_mono_us() >= deadline)
            die(d->name, "cannot reach Redis at %s: %s", redacted, err);
        wc_warn("waiting for Redis at %s: %s", redacted, err);
        sleep(1);
    }
}

static bool ready_of_daemon(void *arg, char *why, size_t whylen)
{
    wc_daemon *d = arg;
    return !d->ready || d->ready(d->http_arg, why, whylen);
}

/* /metrics: the daemon's own metrics, then its listeners'. */
static void metrics_with_http(struct evbuffer *out, void *arg)
{
    wc_daemon *d = arg;
    if (d->metrics)
        d->metrics(out, d->http_arg);
    wc_http *listeners[] = {d->http, d->admin_http};
    wc_http_write_metrics(listeners, 2, out);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    wc_daemon *d = arg;
    if (d->stopping) {
        wc_warn("second signal %d: exiting now", (int)sig);
        event_base_loopbreak(d->base);
        return;
    }
    d->stopping = true;
    wc_info("signal %d: stopping", (int)sig);
    if (d->on_stop)
        d->on_stop(d, d->stop_arg);
    else
        wc_daemon_exit(d);
}

void wc_daemon_init(wc_daemon *d, const char *name, const char *about, const wc_cfg_entry *table,
                    size_t n, void *cfg_struct, int argc, char **argv, wc_http_ready_fn *ready,
                    wc_http_metrics_fn *metrics, void *arg)
{
    memset(d, 0, sizeof *d);
    d->name = name;
    wc_log_set_name(name);
    if (sodium_init() < 0)
        die(name, "%s%s", "libsodium failed to initialise", "");
    char err[512];
    int rc = wc_config_load(table, n, cfg_struct, argc, argv, about, err, sizeof err);
    if (rc == 1)
        exit(0);
    if (rc < 0)
        die(name, "%s%s", err, "");
    const wc_common_cfg *cfg = cfg_struct;
    d->cfg = cfg;
    if (wc_log_set_level(cfg->log_level) < 0)
        die(name, "WACAST_LOG_LEVEL: unknown level \"%s\"%s", cfg->log_level, "");
    signal(SIGPIPE, SIG_IGN);

    wait_for_postgres(d, cfg);
    wait_for_redis(d, cfg);
    /* PostgreSQL can go away between the wait and the migrations (a restart,
     * a failover): try again until the start time-out rather than exit at
     * the first refusal (a migration that is wrong fails every time and is
     * reported when the time-out ends). */
    int64_t deadline = wc_mono_us() + (int64_t)cfg->start_timeout_s * 1000000;
    int applied;
    while ((applied = wc_migrate(cfg->database_url, err, sizeof err)) < 0) {
        if (wc_mono_us() >= deadline)
            die(name, "%s%s", err, "");
        wc_warn("migrations: %s; trying again", err);
        sleep(1);
        wait_for_postgres(d, cfg);
    }
    if (applied > 0)
        wc_info("applied %d migration(s)", applied);

    d->base = event_base_new();
    if (!d->base)
        die(name, "%s%s", "cannot create the event loop", "");
    d->redis =
        wc_redis_new(d->base, cfg->redis_url, "redis", (int)cfg->timeout_ms, err, sizeof err);
    if (!d->redis)
        die(name, "REDIS_URL: %s%s", err, "");
    d->pg = wc_pg_new(d->base, cfg->database_url, name, (int)cfg->pg_pool, (int)cfg->timeout_ms);
    if (!d->pg)
        die(name, "%s%s", "cannot create the PostgreSQL pool", "");
    d->ready = ready;
    d->metrics = metrics;
    d->http_arg = arg;
    wc_http_limits limits = WC_HTTP_DEFAULT_LIMITS;
    limits.read_timeout_s = (int)cfg->http_read_timeout_s;
    if (cfg->port > 0) {
        limits.max_conns = (int)cfg->http_max_conns;
        d->http =
            wc_http_listen(d->base, "public", cfg->bind, (int)cfg->port, &limits, err, sizeof err);
        if (!d->http)
            die(name, "PORT: %s%s", err, "");
        if (wc_http_serve_health(d->http, ready_of_daemon, metrics_with_http, d) < 0)
            die(name, "%s%s", "cannot add the health routes", "");
    }
    if (cfg->admin_port > 0 && cfg->admin_bind && cfg->admin_bind[0]) {
        limits.max_conns = (int)cfg->admin_max_conns;
        d->admin_http = wc_http_listen(d->base, "admin", cfg->admin_bind, (int)cfg->admin_port,
                                       &limits, err, sizeof err);
        if (!d->admin_http)
            die(name, "WACAST_ADMIN_PORT: %s%s", err, "");
    }
    d->sig_term = evsignal_new(d->base, SIGTERM, on_signal, d);
    d->sig_int = evsignal_new(d->base, SIGINT, on_signal, d);
    if (!d->sig_term || !d->sig_int || evsignal_add(d->sig_term, NULL) < 0 ||
        evsignal_add(d->sig_int, NULL) < 0)
        die(name, "%s%s", "cannot install signal handlers", "");
    d->started_us = wc_now_us();
    wc_info("started as %s (http port %ld, admin port %d)", cfg->instance_id, cfg->port,
            d->admin_http ? wc_http_port(d->admin_http) : 0);
}

void wc_daemon_on_stop(wc_daemon *d, wc_daemon_stop_fn *fn, void *arg)
{
    d->on_stop = fn;
    d->stop_arg = arg;
}

int wc_daemon_run(wc_daemon *d)
{
    return event_base_dispatch(d->base) < 0 ? 1 : 0;
}

void wc_daemon_exit(wc_daemon *d)
{
    event_base_loopexit(d->base, NULL);
}

void wc_daemon_free(wc_daemon *d)
{
    if (d->sig_term)
        event_free(d->sig_term);
    if (d->sig_int)
        event_free(d->sig_int);
    /* The pool fails its queries in flight, and their callbacks answer the
     * HTTP requests waiting on them: the listeners must still be there. */
    wc_pg_free(d->pg);
    wc_redis_free(d->redis);
    wc_http_free(d->admin_http);
    wc_http_free(d->http);
    if (d->base)
        event_base_free(d->base);
    memset(d, 0, sizeof *d);
}

bool wc_daemon_ready(wc_daemon *d, char *why, size_t whylen)
{
    if (!wc_redis_ready(d->redis)) {
        snprintf(why, whylen, "redis: %s", wc_redis_error(d->redis));
        return false;
    }
    if (!wc_pg_ready(d->pg)) {
        snprintf(why, whylen, "postgres: %s", wc_pg_error(d->pg));
        return false;
    }
    return true;
}

struct event *wc_daemon_every(wc_daemon *d, int ms, void (*fn)(int, short, void *), void *arg)
{
    struct event *ev = event_new(d->base, -1, EV_PERSIST, fn, arg);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (!ev || event_add(ev, &tv) < 0) {
        wc_error("cannot add a timer");
        abort();
    }
    return ev;
}
