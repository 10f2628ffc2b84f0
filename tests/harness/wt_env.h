/* Test harness: gives a test its own temp folder with a real redis-server and
 * a real PostgreSQL on free loopback ports, spawns wacast daemons against
 * them, and tears everything down. PostgreSQL refuses to run as root, so when
 * the test runs as root the server runs as the `postgres` system user.
 * Children get PR_SET_PDEATHSIG, so a crashed test leaves no server behind.
 * The test process is a child subreaper: what a server forked (PostgreSQL
 * backends, a Redis rewrite child) is reparented to it when the server is
 * killed -9, and the harness reaps it (PID 1 here reaps no orphans). */
#ifndef WT_ENV_H
#define WT_ENV_H

#include <stdbool.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>
#include <libpq-fe.h>

/* WT_PG_SYNC_COMMIT: PostgreSQL with synchronous_commit=on (the default in
 * production), so a kill -9 loses no acknowledged commit; without it commits
 * are asynchronous (faster tests) and a kill -9 can lose the last ~0.6 s of
 * them. fsync stays off either way: a killed process leaves what it wrote in
 * the kernel's page cache. */
enum { WT_REDIS = 1, WT_PG = 2, WT_MIGRATE = 4, WT_PG_SYNC_COMMIT = 8 };

#define WT_MAX_CHILDREN 256

typedef struct wt_child {
    pid_t pid;
    char name[64];
    char log[512];
} wt_child;

typedef struct wt_env {
    char dir[256];
    unsigned flags;
    int redis_port;
    pid_t redis_pid;
    int pg_port;
    pid_t pg_pid;
    char redis_url[128];
    char database_url[256];
    /* A second redis-server (wt_sim_redis_start): the simulated provider's. */
    int sim_redis_port;
    pid_t sim_redis_pid;
    char sim_redis_url[128];
    wt_child children[WT_MAX_CHILDREN];
    int nchildren;
} wt_env;

/* Starts what flags asks for (WT_MIGRATE applies sql/ migrations). Returns 0 or
 * -1 after printing why to stderr. */
int wt_env_start(wt_env *env, unsigned flags);
/* Stops daemons and servers, removes the folder (kept when WT_KEEP=1). */
void wt_env_stop(wt_env *env);

/* Stops redis-server (SIGTERM: it writes its AOF) or kills it (-9, with any
 * child it forked) and starts it again on the same port and folder, from its
 * AOF. */
int wt_redis_restart(wt_env *env, bool kill9);
int wt_redis_stop(wt_env *env, bool kill9);
int wt_redis_start(wt_env *env);
/* Copies redis-server's appendonlydir (while it runs) to <dir>/<name>, and
 * puts such a copy back in its place (redis-server stopped): Redis then comes
 * back without what it acknowledged after the copy. */
int wt_redis_copy_aof(wt_env *env, const char *name);
int wt_redis_restore_aof(wt_env *env, const char *name);
/* Starts a second redis-server (no persistence) on a free port, for the
 * simulated provider; stopped by wt_env_stop. Sets sim_redis_url. */
int wt_sim_redis_start(wt_env *env);
redisContext *wt_sim_redis(wt_env *env);

/* Fast shutdown, or kill -9 of the postmaster and every backend at once (a
 * crash, or an OOM kill of the server's cgroup), and start again on the same
 * port and folder (crash recovery). */
int wt_pg_restart(wt_env *env, bool kill9);

/* Spawns a program from the build tree (e.g. "wacast-sender") with
 * DATABASE_URL and REDIS_URL set, plus extra "NAME=value" entries (NULL
 * terminated). stderr and stdout go to <dir>/<name>.log. Returns the pid. */
pid_t wt_spawn(wt_env *env, const char *program, const char *name, const char *const *extra_env);
/* Sends sig to a spawned child and, for SIGKILL/SIGTERM, waits for it (up to 10 s). */
int wt_signal(wt_env *env, pid_t pid, int sig);
/* True while the child runs. */
bool wt_alive(wt_env *env, pid_t pid);
/* Waits for a child to exit; returns its exit status (as from waitpid) or -1 on timeout. */
int wt_wait_exit(wt_env *env, pid_t pid, int timeout_ms);

/* Prints the last lines of every log in the folder to stderr (on failure). */
void wt_dump_logs(wt_env *env, int lines);

/* Blocking clients for the test itself. Abort the test on failure. */
PGconn *wt_pg(wt_env *env);
redisContext *wt_redis(wt_env *env);

/* Runs SQL (no parameters) and returns the result; aborts on error. */
PGresult *wt_sql(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* First column of the first row as text into out ("" without a row), e.g.
 * the id an INSERT ... RETURNING id gives. */
void wt_sql_text(PGconn *c, char *out, size_t outlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* First column of the first row as a long (SQL NULL -> 0). */
long wt_sql_long(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Polls cond every 25 ms until it is true or timeout_ms passes. Returns true
 * when cond became true. This is waiting on a condition, with a bound. */
bool wt_wait_for(bool (*cond)(void *arg), void *arg, int timeout_ms);

/* A free TCP port on 127.0.0.1. */
int wt_free_port(void);
/* Monotonic milliseconds. */
long long wt_now_ms(void);

/* Path of a built program (from WACAST_BUILD_DIR). */
const char *wt_program_path(const char *program, char *out, size_t outlen);

#endif
