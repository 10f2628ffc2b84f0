/* Real servers for tests; see wt_env.h. */
#include "wt_env.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "wc_migrate.h"

#ifndef WACAST_BUILD_DIR
#define WACAST_BUILD_DIR "."
#endif

#define PG_BIN "/usr/lib/postgresql/15/bin"

long long wt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int wt_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

const char *wt_program_path(const char *program, char *out, size_t outlen)
{
    const char *dir = getenv("WACAST_BUILD_DIR");
    snprintf(out, outlen, "%s/%s", dir && *dir ? dir : WACAST_BUILD_DIR, program);
    return out;
}

/* Runs argv as a child; uid/gid when >= 0. Output to logpath (appended). */
static pid_t spawn(char *const argv[], const char *logpath, uid_t uid, gid_t gid,
                   const char *const *extra_env, const char *cwd)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid > 0)
        return pid;
    setpgid(0, 0);
    int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) {
        dup2(devnull, 0);
        close(devnull);
    }
    if (cwd && chdir(cwd) < 0)
        _exit(126);
    if (gid != (gid_t)-1 && (setgroups(0, NULL) < 0 || setgid(gid) < 0))
        _exit(126);
    if (uid != (uid_t)-1 && setuid(uid) < 0)
        _exit(126);
    /* After the credentials change, or it would be reset. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(125);
    for (const char *const *e = extra_env; e && *e; e++)
        putenv((char *)*e);
    execv(argv[0], argv);
    fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static int run_wait(char *const argv[], const char *logpath, uid_t uid, gid_t gid)
{
    pid_t pid = spawn(argv, logpath, uid, gid, NULL, "/");
    if (pid < 0)
        return -1;
    int st;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR)
            return -1;
    }
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Children of parent, listed from /proc (the PPid field of stat). */
static int children_of(pid_t parent, pid_t *out, int max)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        /* "pid (comm) state ppid ...": comm may hold spaces and parentheses. */
        char *close_paren = strrchr(buf, ')');
        char state;
        int ppid;
        if (close_paren && sscanf(close_paren + 1, " %c %d", &state, &ppid) == 2 && ppid == parent)
            out[n++] = (pid_t)atoi(e->d_name);
    }
    closedir(d);
    return n;
}

/* True when pid is gone or a zombie that is not ours to reap. */
static bool gone_elsewhere(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return true;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] == ' ' && close_paren[2] == 'Z';
}

/* kill -9 of a server and of every process it forked, at once, as a crash or
 * an OOM kill of its cgroup would do it. The server is stopped first so that
 * it forks nothing while its children are listed. Its children are reparented
 * to this process (a subreaper) and reaped here; waits for each (10 s at most)
 * so that a restart finds no process still attached to the old shared memory. */
static void kill9_tree(pid_t leader)
{
    pid_t kids[1024];
    kill(leader, SIGSTOP);
    int n = children_of(leader, kids, (int)(sizeof kids / sizeof kids[0]));
    kill(leader, SIGKILL);
    for (int i = 0; i < n; i++)
        kill(kids[i], SIGKILL);
    int st;
    while (waitpid(leader, &st, 0) < 0 && errno == EINTR) {
    }
    long long deadline = wt_now_ms() + 10000;
    for (int i = 0; i < n; i++) {
        for (;;) {
            pid_t r = waitpid(kids[i], &st, WNOHANG);
            if (r == kids[i] || (r < 0 && errno == ECHILD && gone_elsewhere(kids[i])))
                break;
            if (wt_now_ms() >= deadline) {
                fprintf(stderr, "wt_env: process %d of a killed server is still there\n",
                        (int)kids[i]);
                break;
            }
            sleep_ms(5);
        }
    }
}

static int pg_user(uid_t *uid, gid_t *gid)
{
    if (geteuid() != 0) {
        *uid = (uid_t)-1;
        *gid = (gid_t)-1;
        return 0;
    }
    struct passwd *pw = getpwnam("postgres");
    if (!pw) {
        fprintf(stderr, "wt_env: running as root and there is no 'postgres' user\n");
        return -1;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

int wt_redis_start(wt_env *env)
{
    char port[16], log[512], dir[300];
    snprintf(port, sizeof port, "%d", env->redis_port);
    snprintf(log, sizeof log, "%s/redis.log", env->dir);
    snprintf(dir, sizeof dir, "%s/redis", env->dir);
    mkdir(dir, 0755);
    char *argv[] = {"/usr/bin/redis-server",
                    "--port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    dir,
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--maxmemory-policy",
                    "noeviction",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "no",
                    NULL};
    env->redis_pid = spawn(argv, log, (uid_t)-1, (gid_t)-1, NULL, dir);
    if (env->redis_pid < 0)
        return -1;
    long long deadline = wt_now_ms() + 10000;
    while (wt_now_ms() < deadline) {
        struct timeval tv = {1, 0};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", env->redis_port, tv);
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            bool ok = r && r->type == REDIS_REPLY_STATUS;
            if (r)
                freeReplyObject(r);
            redisFree(c);
            if (ok)
                return 0;
        } else if (c) {
            redisFree(c);
        }
        sleep_ms(20);
    }
    fprintf(stderr, "wt_env: redis-server did not start on port %d\n", env->redis_port);
    return -1;
}

int wt_redis_stop(wt_env *env, bool kill9)
{
    if (env->redis_pid <= 0)
        return 0;
    if (kill9) {
        kill9_tree(env->redis_pid);
    } else {
        kill(env->redis_pid, SIGTERM);
        int st;
        waitpid(env->redis_pid, &st, 0);
    }
    env->redis_pid = 0;
    return 0;
}

int wt_redis_copy_aof(wt_env *env, const char *name)
{
    char from[320], to[320], log[512];
    snprintf(from, sizeof from, "%s/redis/appendonlydir", env->dir);
    snprintf(to, sizeof to, "%s/%s", env->dir, name);
    snprintf(log, sizeof log, "%s/aof-copy.log", env->dir);
    char *argv[] = {"/bin/cp", "-a", from, to, NULL};
    return run_wait(argv, log, (uid_t)-1, (gid_t)-1);
}

int wt_redis_restore_aof(wt_env *env, const char *name)
{
    char from[320], to[320], log[512];
    snprintf(from, sizeof from, "%s/%s", env->dir, name);
    snprintf(to, sizeof to, "%s/redis/appendonlydir", env->dir);
    snprintf(log, sizeof log, "%s/aof-copy.log", env->dir);
    char *rm[] = {"/bin/rm", "-rf", to, NULL};
    char *cp[] = {"/bin/cp", "-a", from, to, NULL};
    return run_wait(rm, log, (uid_t)-1, (gid_t)-1) < 0 ? -1
                                                       : run_wait(cp, log, (uid_t)-1, (gid_t)-1);
}

int wt_sim_redis_start(wt_env *env)
{
    char port[16], log[512], dir[300];
    env->sim_redis_port = wt_free_port();
    snprintf(env->sim_redis_url, sizeof env->sim_redis_url, "redis://127.0.0.1:%d/0",
             env->sim_redis_port);
    snprintf(port, sizeof port, "%d", env->sim_redis_port);
    snprintf(log, sizeof log, "%s/sim-redis.log", env->dir);
    snprintf(dir, sizeof dir, "%s/sim-redis", env->dir);
    mkdir(dir, 0755);
    char *argv[] = {"/usr/bin/redis-server",
                    "--port",
                    port,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    dir,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "no",
                    NULL};
    env->sim_redis_pid = spawn(argv, log, (uid_t)-1, (gid_t)-1, NULL, dir);
    if (env->sim_redis_pid < 0)
        return -1;
    long long deadline = wt_now_ms() + 10000;
    while (wt_now_ms() < deadline) {
        struct timeval tv = {1, 0};
        redisContext *c = redisConnectWithTimeout("127.0.0.1", env->sim_redis_port, tv);
        bool ok = false;
        if (c && !c->err) {
            redisReply *r = redisCommand(c, "PING");
            ok = r && r->type == REDIS_REPLY_STATUS;
            if (r)
                freeReplyObject(r);
        }
        if (c)
            redisFree(c);
        if (ok)
            return 0;
        sleep_ms(20);
    }
    fprintf(stderr, "wt_env: the second redis-server did not start on port %d\n",
            env->sim_redis_port);
    return -1;
}

redisContext *wt_sim_redis(wt_env *env)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", env->sim_redis_port, tv);
    if (!c || c->err) {
        fprintf(stderr, "wt_sim_redis: %s\n", c ? c->errstr : "out of memory");
        abort();
    }
    redisSetTimeout(c, tv);
    return c;
}

int wt_redis_restart(wt_env *env, bool kill9)
{
    wt_redis_stop(env, kill9);
    return wt_redis_start(env);
}

static int pg_start(wt_env *env)
{
    uid_t uid;
    gid_t gid;
    if (pg_user(&uid, &gid) < 0)
        return -1;
    char data[300], log[300], port[16], sock[300];
    snprintf(data, sizeof data, "%s/pg", env->dir);
    snprintf(log, sizeof log, "%s/postgres.log", env->dir);
    snprintf(sock, sizeof sock, "unix_socket_directories=%s/pgsock", env->dir);
    snprintf(port, sizeof port, "%d", env->pg_port);
    char *argv[] = {PG_BIN "/postgres",
                    "-D",
                    data,
                    "-p",
                    port,
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    sock,
                    "-c",
                    "fsync=off",
                    "-c",
                    env->flags & WT_PG_SYNC_COMMIT ? "synchronous_commit=on"
                                                   : "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=256MB",
                    "-c",
                    "log_min_messages=warning",
                    NULL};
    env->pg_pid = spawn(argv, log, uid, gid, NULL, "/");
    if (env->pg_pid < 0)
        return -1;
    char conninfo[256];
    snprintf(conninfo, sizeof conninfo,
             "host=127.0.0.1 port=%d user=postgres dbname=postgres connect_timeout=2",
             env->pg_port);
    long long deadline = wt_now_ms() + 30000;
    while (wt_now_ms() < deadline) {
        if (PQping(conninfo) == PQPING_OK)
            return 0;
        int st;
        if (waitpid(env->pg_pid, &st, WNOHANG) == env->pg_pid) {
            fprintf(stderr, "wt_env: postgres exited at start; see %s\n", log);
            env->pg_pid = 0;
            return -1;
        }
        sleep_ms(25);
    }
    fprintf(stderr, "wt_env: postgres did not start on port %d; see %s\n", env->pg_port, log);
    return -1;
}

static void pg_stop(wt_env *env, bool kill9)
{
    if (env->pg_pid <= 0)
        return;
    if (kill9) {
        kill9_tree(env->pg_pid);
    } else {
        /* SIGINT is PostgreSQL's "fast" shutdown. */
        kill(env->pg_pid, SIGINT);
        int st;
        waitpid(env->pg_pid, &st, 0);
    }
    env->pg_pid = 0;
}

int wt_pg_restart(wt_env *env, bool kill9)
{
    pg_stop(env, kill9);
    return pg_start(env);
}

static int pg_init(wt_env *env)
{
    uid_t uid;
    gid_t gid;
    if (pg_user(&uid, &gid) < 0)
        return -1;
    char data[300], sock[300], log[300];
    snprintf(data, sizeof data, "%s/pg", env->dir);
    snprintf(sock, sizeof sock, "%s/pgsock", env->dir);
    snprintf(log, sizeof log, "%s/initdb.log", env->dir);
    mkdir(data, 0700);
    mkdir(sock, 0755);
    if (uid != (uid_t)-1 && (chown(data, uid, gid) < 0 || chown(sock, uid, gid) < 0)) {
        perror("wt_env: chown");
        return -1;
    }
    char *argv[] = {PG_BIN "/initdb", "-D", data,   "-U",         "postgres", "--auth=trust",
                    "--no-sync",      "-E", "UTF8", "--locale=C", NULL};
    if (run_wait(argv, log, uid, gid) < 0) {
        fprintf(stderr, "wt_env: initdb failed; see %s\n", log);
        return -1;
    }
    if (pg_start(env) < 0)
        return -1;
    char conninfo[256];
    snprintf(conninfo, sizeof conninfo, "host=127.0.0.1 port=%d user=postgres dbname=postgres",
             env->pg_port);
    PGconn *c = PQconnectdb(conninfo);
    PGresult *r = PQexec(c, "CREATE DATABASE wacast");
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "wt_env: CREATE DATABASE: %s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : -1;
}

int wt_env_start(wt_env *env, unsigned flags)
{
    memset(env, 0, sizeof *env);
    env->flags = flags;
    signal(SIGPIPE, SIG_IGN);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
        perror("wt_env: PR_SET_CHILD_SUBREAPER (orphans of killed servers go to PID 1)");
    const char *tmp = getenv("TMPDIR");
    snprintf(env->dir, sizeof env->dir, "%s/wacast-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(env->dir)) {
        perror("wt_env: mkdtemp");
        return -1;
    }
    /* The postgres user must reach its data folder inside. */
    chmod(env->dir, 0755);
    if (flags & WT_REDIS) {
        env->redis_port = wt_free_port();
        snprintf(env->redis_url, sizeof env->redis_url, "redis://127.0.0.1:%d/0", env->redis_port);
        if (wt_redis_start(env) < 0)
            goto error;
    }
    if (flags & (WT_PG | WT_MIGRATE)) {
        env->pg_port = wt_free_port();
        snprintf(env->database_url, sizeof env->database_url,
                 "postgresql://postgres@127.0.0.1:%d/wacast", env->pg_port);
        if (pg_init(env) < 0)
            goto error;
        if (flags & WT_MIGRATE) {
            char err[512];
            if (wc_migrate(env->database_url, err, sizeof err) < 0) {
                fprintf(stderr, "wt_env: migrate: %s\n", err);
                goto error;
            }
        }
    }
    return 0;
error:
    wt_dump_logs(env, 40);
    wt_env_stop(env);
    return -1;
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path) < 0 && errno != ENOENT ? -1 : 0;
}

void wt_env_stop(wt_env *env)
{
    for (int i = 0; i < env->nchildren; i++) {
        if (env->children[i].pid > 0)
            wt_signal(env, env->children[i].pid, SIGKILL);
    }
    env->nchildren = 0;
    pg_stop(env, false);
    wt_redis_stop(env, false);
    if (env->sim_redis_pid > 0) {
        kill(env->sim_redis_pid, SIGKILL);
        waitpid(env->sim_redis_pid, NULL, 0);
        env->sim_redis_pid = 0;
    }
    const char *keep = getenv("WT_KEEP");
    if (env->dir[0] && !(keep && !strcmp(keep, "1")))
        nftw(env->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    else if (env->dir[0])
        fprintf(stderr, "wt_env: kept %s\n", env->dir);
    env->dir[0] = '\0';
}

pid_t wt_spawn(wt_env *env, const char *program, const char *name, const char *const *extra_env)
{
    /* Reuse the slot of a child that has exited. */
    int slot = env->nchildren;
    for (int i = 0; i < env->nchildren; i++)
        if (env->children[i].pid == 0) {
            slot = i;
            break;
        }
    if (slot >= WT_MAX_CHILDREN) {
        fprintf(stderr, "wt_env: too many children\n");
        return -1;
    }
    wt_child *ch = &env->children[slot];
    char path[512];
    wt_program_path(program, path, sizeof path);
    char dir[sizeof env->dir];
    memcpy(dir, env->dir, sizeof dir);
    snprintf(ch->name, sizeof ch->name, "%s", name);
    snprintf(ch->log, sizeof ch->log, "%s/%s.log", dir, name);
    static char db[300], rd[200];
    snprintf(db, sizeof db, "DATABASE_URL=%s", env->database_url);
    snprintf(rd, sizeof rd, "REDIS_URL=%s", env->redis_url);
    const char *envs[64];
    int n = 0;
    envs[n++] = db;
    envs[n++] = rd;
    for (const char *const *e = extra_env; e && *e && n < 62; e++)
        envs[n++] = *e;
    envs[n] = NULL;
    /* WACAST_TEST_LAUNCHER="cmd arg..." runs a daemon through it with the
     * role as last argument instead of from the build tree, e.g. the
     * container image's entrypoint through chroot (tests/deploy/image_test.sh). */
    char launcher[1024], *argv[24] = {path, NULL};
    const char *launch = getenv("WACAST_TEST_LAUNCHER");
    if (launch && *launch && strncmp(program, "wacast-", 7) == 0) {
        snprintf(launcher, sizeof launcher, "%s", launch);
        int argc = 0;
        for (char *save = NULL, *w = strtok_r(launcher, " ", &save); w && argc < 22;
             w = strtok_r(NULL, " ", &save))
            argv[argc++] = w;
        argv[argc++] = (char *)program + 7;
        argv[argc] = NULL;
    }
    /* putenv keeps pointers: the child copies what it needs before exec. */
    pid_t pid = spawn(argv, ch->log, (uid_t)-1, (gid_t)-1, envs, NULL);
    if (pid < 0)
        return -1;
    ch->pid = pid;
    if (slot == env->nchildren)
        env->nchildren++;
    return pid;
}

int wt_wait_exit(wt_env *env, pid_t pid, int timeout_ms)
{
    long long deadline = wt_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            for (int i = 0; i < env->nchildren; i++)
                if (env->children[i].pid == pid)
                    env->children[i].pid = 0;
            return st;
        }
        if (r < 0)
            return -1;
        if (wt_now_ms() >= deadline)
            return -1;
        sleep_ms(10);
    }
}

int wt_signal(wt_env *env, pid_t pid, int sig)
{
    if (kill(pid, sig) < 0)
        return -1;
    if (sig == SIGKILL || sig == SIGTERM) {
        if (wt_wait_exit(env, pid, 10000) == -1) {
            kill(pid, SIGKILL);
            return wt_wait_exit(env, pid, 5000) == -1 ? -1 : 0;
        }
    }
    return 0;
}

bool wt_alive(wt_env *env, pid_t pid)
{
    (void)env;
    int st;
    return waitpid(pid, &st, WNOHANG) == 0;
}

void wt_dump_logs(wt_env *env, int lines)
{
    if (!env->dir[0])
        return;
    char cmd[700];
    snprintf(
        cmd, sizeof cmd,
        "for f in %s/*.log; do [ -f \"$f\" ] || continue; echo \"==== $f\"; tail -n %d \"$f\"; "
        "done 1>&2",
        env->dir, lines);
    if (system(cmd) != 0) {
        /* best effort */
    }
}

PGconn *wt_pg(wt_env *env)
{
    PGconn *c = PQconnectdb(env->database_url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "wt_pg: %s", PQerrorMessage(c));
        abort();
    }
    return c;
}

redisContext *wt_redis(wt_env *env)
{
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", env->redis_port, tv);
    if (!c || c->err) {
        fprintf(stderr, "wt_redis: %s\n", c ? c->errstr : "out of memory");
        abort();
    }
    redisSetTimeout(c, tv);
    return c;
}

static PGresult *vsql(PGconn *c, const char *fmt, va_list ap)
{
    char *sql = NULL;
    if (vasprintf(&sql, fmt, ap) < 0)
        abort();
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "wt_sql: %s\nin: %.2000s\n", PQerrorMessage(c), sql);
        abort();
    }
    free(sql);
    return r;
}

PGresult *wt_sql(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *r = vsql(c, fmt, ap);
    va_end(ap);
    return r;
}

long wt_sql_long(PGconn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *r = vsql(c, fmt, ap);
    va_end(ap);
    long v = 0;
    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

void wt_sql_text(PGconn *c, char *out, size_t outlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *r = vsql(c, fmt, ap);
    va_end(ap);
    snprintf(out, outlen, "%s", PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
}

bool wt_wait_for(bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    long long deadline = wt_now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg))
            return true;
        if (wt_now_ms() >= deadline)
            return false;
        sleep_ms(25);
    }
}
