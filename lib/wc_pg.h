/* A small pool of PostgreSQL connections driven without blocking on the
 * daemon's libevent loop (PQconnectStart/PQconnectPoll, PQsendQueryParams,
 * PQconsumeInput/PQisBusy), in the manner of pgbouncer.
 *
 * Contract:
 * - wc_pg_query() copies the SQL and the parameters and queues the query; it
 *   runs on the first idle connection, in FIFO order. Every query is one
 *   statement and so one transaction (use CTEs for atomic multi-step work).
 * - The callback runs exactly once: with res (PGRES_TUPLES_OK or
 *   PGRES_COMMAND_OK) and err == NULL, or with res == NULL and err set
 *   (connection lost, SQL error text, timeout, pool freed). res is freed by
 *   the pool after the callback returns. The SQLSTATE of a failed query is
 *   available via wc_pg_last_sqlstate() inside the callback.
 * - Queries wait while the pool (re)connects; a query not answered within
 *   timeout_ms of being queued fails with err "timeout" (and the connection it
 *   was running on is dropped and reopened). timeout_ms <= 0: no time-out.
 * - Connections reconnect with exponential back-off (100 ms .. 5 s).
 * - Never call wc_pg_free() from inside one of its callbacks.
 * - Parameters are text; NULL in values[] is SQL NULL.
 */
#ifndef WC_PG_H
#define WC_PG_H

#include <stdbool.h>
#include <stddef.h>

#include <libpq-fe.h>

struct event_base;
typedef struct wc_pg wc_pg;

typedef void wc_pg_cb(wc_pg *pg, PGresult *res, const char *err, void *arg);

/* conninfo: a postgresql:// URL or key=value string. nconn connections (>= 1).
 * Starts connecting at once. Returns NULL only when out of memory. */
wc_pg *wc_pg_new(struct event_base *base, const char *conninfo, const char *name, int nconn,
                 int timeout_ms);
void wc_pg_free(wc_pg *pg);

int wc_pg_query(wc_pg *pg, const char *sql, int nparams, const char *const *values, wc_pg_cb *cb,
                void *arg) __attribute__((warn_unused_result));

/* At least one connection is up. */
bool wc_pg_ready(const wc_pg *pg);
/* Last connection error ("" when none), for logs and /readyz. */
const char *wc_pg_error(const wc_pg *pg);
/* Queries queued or running. */
size_t wc_pg_pending(const wc_pg *pg);
/* SQLSTATE of the failed query whose callback is running ("" otherwise). */
const char *wc_pg_last_sqlstate(const wc_pg *pg);

#endif
