/* Helpers shared by the end-to-end tests over the fake providers (tests/fakes/),
 * and small ones the other integration tests share: waiting on SQL, the
 * daemons' /metrics, tearing down. */
#ifndef E2E_COMMON_H
#define E2E_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "wt_env.h"

typedef struct resp {
    long code;
    char *body;
    size_t len;
} resp;
typedef struct fake {
    pid_t pid;
    int out_fd;
    int port;
    char base[64];
} fake;

size_t on_body(char *p, size_t sz, size_t n, void *arg);
void resp_free(resp *r);
const char *jstr(json_t *o, const char *key);
long http(const char *method, const char *url, const char *body, size_t len,
          const char *const *headers, resp *out);
void fake_script(const char *script, char *out, size_t outlen);
int fake_start(wt_env *e, fake *f, const char *script);
int fake_stop(fake *f);
json_t *fake_call(fake *f, const char *method, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
bool fake_ok(fake *f, const char *method, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void random_hex(char *out, size_t bytes);
/* True when a daemon's GET /readyz at 127.0.0.1:port answers 200. */
bool e2e_ready(int port);
/* The value of a metric on a daemon's /metrics at 127.0.0.1:port, -1 when
 * it cannot be read. */
double e2e_metric(int port, const char *name);

/* Waits (up to timeout_ms) until the query's first value is true ('t') or a
 * non-zero number; prints the query when it times out. */
bool e2e_wait_sql(PGconn *db, int timeout_ms, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Starts Redis and a migrated PostgreSQL in e, connects *db, and *rc when
 * rc is not NULL. 0, or -1 when the environment would not start. */
int e2e_env_start(wt_env *e, PGconn **db, redisContext **rc);

/* A user named name with one sim device (delays in seconds) and n leads of
 * that device, phones phone_prefix followed by 7 digits; the user's and the
 * device's ids into user and dev (40 bytes each). */
void e2e_sim_tenant(PGconn *db, const char *name, double min_delay, double max_delay,
                    const char *phone_prefix, int n, char *user, char *dev);

/* Waits (up to timeout_ms) until the campaign is 'finished'. */
bool e2e_wait_finished(PGconn *db, const char *campaign, int timeout_ms);

/* SIGTERMs every daemon e started and wants each to exit with status 0
 * within 15 s (under the sanitizers: no leak on the way out either).
 * Returns how many did not (each printed, logs dumped). */
int e2e_stop_daemons_cleanly(wt_env *e);

/* Ends what a test started: the Redis and PostgreSQL connections (either may
 * be NULL) and the environment. Returns 0 (what a cmocka tear-down returns). */
int e2e_teardown(wt_env *e, PGconn *db, redisContext *rc);

/* ---- the transport end-to-end tests (a fake provider, the three daemons) */

/* What a transport e2e test holds: real Redis and a migrated PostgreSQL,
 * the fake provider, the dispatcher's port and the secrets the daemons get. */
typedef struct e2e_world {
    wt_env env;
    PGconn *db;
    fake fake;
    int dport; /* the dispatcher's public listener (webhooks, /metrics) */
    /* Another provider base URL the daemons may reach besides the fake's
     * (a second fake), or "". */
    char extra_host[64];
    char secret_key[65], app_secret[33], verify_token[33], gowa_secret[33];
} e2e_world;

/* Starts curl, Redis, PostgreSQL (w->db connected to it) and the fake
 * tests/fakes/<script>, and draws the secrets and the dispatcher's port.
 * 0, or -1 with the logs dumped. */
int e2e_world_start(e2e_world *w, const char *script);

/* Starts scheduler, dispatcher and sender with test-friendly timings,
 * WACAST_MAX_ATTEMPTS=3, the fake as the only provider host and the world's
 * secrets; dispatcher_extra (NULL-terminated, or NULL) goes to the dispatcher
 * only. Then waits until n devices are 'online' in PostgreSQL and the
 * dispatcher counts them; false (logs dumped) when they do not come. */
bool e2e_world_daemons(e2e_world *w, const char *const *dispatcher_extra, int n);

/* cmocka group set-up and tear-down around a test's own setup_world: *state
 * is the world; the set-up tears down when setup_world fails (cmocka skips
 * the group tear-down then). */
int e2e_world_setup(void **state, e2e_world *w, int (*setup_world)(void));
int e2e_world_teardown(void **state);

/* `wacast-ctl set-credentials <device>` under secret_key with json on stdin;
 * its exit code, -1 when it did not run or finish in 20 s. */
int e2e_ctl_set_credentials(wt_env *e, const char *secret_key, const char *device,
                            const char *json);

/* The sink has written every result: wacast:results is empty (a
 * wt_wait_for condition; env is the wt_env). */
bool e2e_results_empty(void *env);

/* Every webhook the fake planned is delivered and the sink has written every
 * result (its stream stays empty for 400 ms). */
bool e2e_settle(wt_env *e, fake *f);

/* "sha256=<hex HMAC-SHA256 of body under secret>". */
void e2e_sign(const char *secret, const char *body, size_t len, char *out, size_t outlen);

/* POSTs body to http://127.0.0.1:<port><path>; sig: NULL for no
 * X-Hub-Signature-256, "" to sign it with secret, anything else sent as is.
 * Returns the HTTP status (-1: no answer). */
long e2e_post_webhook(int port, const char *path, const char *secret, const char *body, size_t len,
                      const char *sig);

/* The fake's record of accepted sends (GET /_control/sent), and one of its
 * counters (GET /_control/stats; -1 when unreadable). */
json_t *e2e_fake_sent(fake *f);
long e2e_fake_stat(fake *f, const char *name);

/* Checks shared by the transport e2e tests; each returns how many things were
 * wrong (0: all well) after printing what it saw. */

/* The fake rejected no request (its "rejected" counter is 0). */
int e2e_check_none_rejected(fake *f, const char *who);

/* The campaign is 'finished' with these counters and none failed; a
 * negative want is not checked. */
int e2e_check_campaign(PGconn *db, const char *campaign, int total, int sent, int delivered,
                       int read);

/* The fake's webhook deliveries were all answered 200 at the first attempt,
 * and some were duplicates: a message of sent carries more entries under
 * per_message (its statuses or receipts) than the each it would have
 * without. */
int e2e_check_webhooks(fake *f, json_t *sent, const char *per_message, int each);

/* Asks the fake for a late 'delivered' of provider_id (POST control_path
 * with body), and checks that the row stays 'read' with its times and its
 * campaign's counters unchanged. */
int e2e_check_late_delivered(wt_env *e, PGconn *db, fake *f, const char *provider_id,
                             const char *control_path, const char *body);

/* The fake sends an inbound message (POST /_control/inbound with body, a
 * STOP from the lead) and the lead is opted out within 10 s. */
int e2e_check_stop(e2e_world *w, const char *body, const char *lead_id);

/* SIGTERM to a daemon the harness spawned; true when it exits 0 within 15 s
 * (under the sanitizers that also means no leak on the way out), otherwise
 * false after printing the logs' tails. */
bool e2e_stopped_cleanly(wt_env *env, pid_t pid);

/* A w x h PNG (RGBA: left half opaque colours, right half transparent), as
 * libpng writes it; malloc'd, length in *len. */
unsigned char *e2e_png_rgba(int w, int h, size_t *len);
/* The same PNG as a base64 data: URL (malloc'd). */
char *e2e_png_data_url(int w, int h);

/* How many GETs the image host stand-in (tests/fakes/images.js) answered
 * for path. */
long e2e_fake_gets(fake *f, const char *path);

/* The simulated provider's record (WC_SIM_RECORD_KEY), one object of
 * field -> value per send, oldest first; NULL when Redis does not answer. */
json_t *e2e_sim_records(const char *redis_url);

#endif
