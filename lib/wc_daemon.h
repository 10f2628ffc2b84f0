/* What every wacast daemon does the same way: read its settings, check that
 * PostgreSQL and Redis answer (one clear line and exit 1 when they do not
 * within the start-up timeout), apply migrations, open the event loop with
 * its Redis client, PostgreSQL pool and HTTP server, and turn SIGTERM/SIGINT
 * into an event so shutdown is an ordinary callback on the loop. */
#ifndef WC_DAEMON_H
#define WC_DAEMON_H

#include <stdbool.h>
#include <stdint.h>

#include "wc_config.h"
#include "wc_http.h"
#include "wc_pg.h"
#include "wc_redis.h"

struct event_base;
struct event;

/* Common settings; each daemon's config struct starts with this. */
typedef struct wc_common_cfg {
    char *database_url;
    char *redis_url;
    long port;
    char *bind;
    char *log_level;
    char *instance_id;
    long pg_pool;
    long timeout_ms;
    long start_timeout_s;
    long http_max_conns;
    long http_read_timeout_s;
    long admin_port;
    char *admin_bind;
    long admin_max_conns;
} wc_common_cfg;

#define WC_CFG_DAEMON(T)                                                                           \
    WC_CFG_COMMON(T), {"WACAST_PG_POOL",     WC_CFG_INT, "2", "PostgreSQL connections",            \
                       offsetof(T, pg_pool), 1,          64,  false},                              \
        {"WACAST_TIMEOUT_MS",                                                                      \
         WC_CFG_INT,                                                                               \
         "5000",                                                                                   \
         "time-out of every Redis command and PostgreSQL query",                                   \
         offsetof(T, timeout_ms),                                                                  \
         100,                                                                                      \
         600000,                                                                                   \
         false},                                                                                   \
        {"WACAST_START_TIMEOUT",                                                                   \
         WC_CFG_INT,                                                                               \
         "30",                                                                                     \
         "seconds to wait for Redis and PostgreSQL at start before giving up",                     \
         offsetof(T, start_timeout_s),                                                             \
         0,                                                                                        \
         3600,                                                                                     \
         false},                                                                                   \
        WC_CFG_HTTP(T)

/* The HTTP listeners' settings (see wc_http.h for what the limits do). */
#define WC_CFG_HTTP(T)                                                                             \
    {"WACAST_HTTP_MAX_CONNS",                                                                      \
     WC_CFG_INT,                                                                                   \
     "512",                                                                                        \
     "connections the public HTTP listener (PORT) keeps open; one more is answered 503",           \
     offsetof(T, http_max_conns),                                                                  \
     1,                                                                                            \
     100000,                                                                                       \
     false},                                                                                       \
        {"WACAST_HTTP_READ_TIMEOUT_S",                                                             \
         WC_CFG_INT,                                                                               \
         "10",                                                                                     \
         "seconds a client has to send a whole request (headers and body), on both listeners",     \
         offsetof(T, http_read_timeout_s),                                                         \
         1,                                                                                        \
         3600,                                                                                     \
         false},                                                                                   \
        {"WACAST_ADMIN_PORT",                                                                      \
         WC_CFG_INT,                                                                               \
         "0",                                                                                      \
         "HTTP port of the admin listener (the dispatcher's /admin/ API; 0: none)",                \
         offsetof(T, admin_port),                                                                  \
         0,                                                                                        \
         65535,                                                                                    \
         false},                                                                                   \
        {"WACAST_ADMIN_BIND",                                                                      \
         WC_CFG_STR,                                                                               \
         "127.0.0.1",                                                                              \
         "address the admin listener listens on (empty: none)",                                    \
         offsetof(T, admin_bind),                                                                  \
         1,                                                                                        \
         0,                                                                                        \
         false},                                                                                   \
    {                                                                                              \
        "WACAST_ADMIN_MAX_CONNS", WC_CFG_INT, "64",                                                \
            "connections the admin listener keeps open; one more is answered 503",                 \
            offsetof(T, admin_max_conns), 1, 10000, false                                          \
    }

typedef struct wc_daemon wc_daemon;
/* Called once when SIGTERM/SIGINT arrives; the daemon finishes or hands back
 * its in-flight work and then calls wc_daemon_exit(). */
typedef void wc_daemon_stop_fn(wc_daemon *d, void *arg);

struct wc_daemon {
    const char *name;
    struct event_base *base;
    wc_redis *redis;
    wc_pg *pg;
    wc_http *http; /* public listener (PORT): health, metrics, webhooks */
    const wc_common_cfg *cfg;
    bool stopping;
    wc_daemon_stop_fn *on_stop;
    void *stop_arg;
    struct event *sig_term, *sig_int, *stop_deadline;
    int64_t started_us;
    wc_http *admin_http;     /* admin listener (WACAST_ADMIN_PORT), NULL when off */
    wc_http_ready_fn *ready; /* the daemon's own, as given to wc_daemon_init() */
    wc_http_metrics_fn *metrics;
    void *http_arg;
};

/* Loads cfg from table (handles --help: exits 0), sets up logging, waits for
 * the dependencies, migrates, and creates the loop and clients. Exits the
 * process with a one-line error on failure; returns only on success. */
void wc_daemon_init(wc_daemon *d, const char *name, const char *about, const wc_cfg_entry *table,
                    size_t n, void *cfg, int argc, char **argv, wc_http_ready_fn *ready,
                    wc_http_metrics_fn *metrics, void *arg);
void wc_daemon_on_stop(wc_daemon *d, wc_daemon_stop_fn *fn, void *arg);
/* Runs the loop until wc_daemon_exit(). Returns the exit code. */
int wc_daemon_run(wc_daemon *d);
/* Ends the loop (after the current callbacks). */
void wc_daemon_exit(wc_daemon *d);
/* Frees the clients and the loop: the PostgreSQL pool and Redis first (their
 * callbacks may still answer HTTP requests), then the listeners. */
void wc_daemon_free(wc_daemon *d);

/* Default readiness: Redis and PostgreSQL connected. */
bool wc_daemon_ready(wc_daemon *d, char *why, size_t whylen);

/* Adds an EV_PERSIST timer; returns it (freed by the caller or at exit). */
struct event *wc_daemon_every(wc_daemon *d, int ms, void (*fn)(int, short, void *), void *arg);

/* Wall clock in microseconds since the epoch; monotonic in microseconds. */
int64_t wc_now_us(void);
int64_t wc_mono_us(void);

#endif
