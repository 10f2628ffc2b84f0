/* Helpers shared by the end-to-end tests over the fake providers: HTTP with
 * libcurl, starting and driving a Node fake from tests/fakes/, random hex,
 * the daemons of a transport test, wacast-ctl, signed webhooks; and the
 * waiting, metrics and teardown every integration test may use. */
#include "e2e_common.h"
#include "scenario.h"
#include "wc_redis.h"
#include "wc_transport.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <png.h>

/* ---- HTTP (libcurl) ---------------------------------------------------------------------------
 */

size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
    resp *r = arg;
    size_t add = sz * n;
    char *nb = realloc(r->body, r->len + add + 1);
    if (!nb)
        return 0;
    memcpy(nb + r->len, p, add);
    r->len += add;
    nb[r->len] = '\0';
    r->body = nb;
    return add;
}

void resp_free(resp *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* A string member of a JSON object, "" when missing or not a string. */
const char *jstr(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

/* Returns the HTTP status, or -1 when no answer came (the reason is in body). */
long http(const char *method, const char *url, const char *body, size_t len,
          const char *const *headers, resp *out)
{
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    struct curl_slist *h = NULL;
    for (int i = 0; headers && headers[i]; i++)
        h = curl_slist_append(h, headers[i]);
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (strcmp(method, "GET") != 0)
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    } else if (!strcmp(method, "POST")) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->code);
    } else {
        resp_free(out);
        out->code = -1;
        const char *e = curl_easy_strerror(rc);
        on_body((char *)e, 1, strlen(e), out);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return out->code;
}

/* ---- the fake (node tests/fakes/graph.js)
 * -------------------------------------------------------- */

/* tests/fakes/<script>, found from this file's own path. */
void fake_script(const char *script, char *out, size_t outlen)
{
    const char *me = __FILE__;
    const char *at = strstr(me, "/integration/");
    if (at)
        snprintf(out, outlen, "%.*s/fakes/%s", (int)(at - me), me, script);
    else
        snprintf(out, outlen, "tests/fakes/%s", script);
}

/* Starts `node <script> --port 0` (stderr to <env>/<script>.log) and reads its
 * first stdout line, "listening <port>". Returns 0 or -1. */
int fake_start(wt_env *e, fake *f, const char *script)
{
    char path[512], log[600];
    fake_script(script, path, sizeof path);
    snprintf(log, sizeof log, "%s/%s.log", e->dir, script);
    int p[2];
    if (pipe(p) < 0)
        return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            close(fd);
        }
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, 0);
            close(devnull);
        }
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(125);
        execlp("node", "node", path, "--port", "0", (char *)NULL);
        fprintf(stderr, "exec node %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    close(p[1]);
    f->pid = pid;
    f->out_fd = p[0];
    char line[128];
    size_t n = 0;
    long long deadline = wt_now_ms() + 30000;
    while (n < sizeof line - 1 && (n == 0 || line[n - 1] != '\n')) {
        long long left = deadline - wt_now_ms();
        struct pollfd pf = {.fd = p[0], .events = POLLIN};
        if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
            break;
        ssize_t k = read(p[0], line + n, sizeof line - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
    }
    line[n] = '\0';
    if (sscanf(line, "listening %d", &f->port) != 1 || f->port <= 0) {
        fprintf(stderr, "%s did not say \"listening <port>\" (got \"%s\"); see %s\n", script, line,
                log);
        return -1;
    }
    snprintf(f->base, sizeof f->base, "http://127.0.0.1:%d", f->port);
    return 0;
}

/* SIGTERM, then the exit status (SIGKILL after 10 s). */
int fake_stop(fake *f)
{
    if (f->pid <= 0)
        return 0;
    kill(f->pid, SIGTERM);
    int st = -1;
    long long deadline = wt_now_ms() + 10000;
    while (waitpid(f->pid, &st, WNOHANG) == 0) {
        if (wt_now_ms() > deadline) {
            kill(f->pid, SIGKILL);
            waitpid(f->pid, &st, 0);
            break;
        }
        usleep(10000);
    }
    close(f->out_fd);
    f->pid = 0;
    return st;
}

/* A control call with a JSON body (or none); returns the parsed answer, NULL on
 * a non-2xx answer (printed). */

json_t *fake_call(fake *f, const char *method, const char *path, const char *fmt, ...)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", f->base, path);
    char *body = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&body, fmt, ap) < 0)
            body = NULL;
        va_end(ap);
    }
    const char *headers[] = {"Content-Type: application/json", NULL};
    resp r;
    long code = http(method, url, body, body ? strlen(body) : 0, headers, &r);
    json_t *j = NULL;
    if (code >= 200 && code < 300)
        j = json_loadb(r.body ? r.body : "null", r.len, JSON_DECODE_ANY, NULL);
    else
        fprintf(stderr, "fake %s %s %s -> %ld %s\n", method, path, body ? body : "", code,
                r.body ? r.body : "");
    free(body);
    resp_free(&r);
    return j;
}

bool fake_ok(fake *f, const char *method, const char *path, const char *fmt, ...)
{
    char *body = NULL;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&body, fmt, ap) < 0)
            body = NULL;
        va_end(ap);
    }
    json_t *j = fake_call(f, method, path, body ? "%s" : NULL, body);
    free(body);
    bool ok = j != NULL;
    json_decref(j);
    return ok;
}

void random_hex(char *out, size_t bytes)
{
    unsigned char raw[64];
    FILE *u = fopen("/dev/urandom", "rb");
    if (!u || fread(raw, 1, bytes, u) != bytes)
        abort();
    fclose(u);
    for (size_t i = 0; i < bytes; i++)
        snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

bool e2e_ready(int port)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", port);
    resp r;
    long code = http("GET", url, NULL, 0, NULL, &r);
    resp_free(&r);
    return code == 200;
}

double e2e_metric(int port, const char *name)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    resp r;
    double v = -1;
    if (http("GET", url, NULL, 0, NULL, &r) == 200) {
        size_t n = strlen(name);
        for (const char *p = r.body; p && *p;) {
            if (!strncmp(p, name, n) && p[n] == ' ') {
                v = strtod(p + n + 1, NULL);
                break;
            }
            p = strchr(p, '\n');
            p = p ? p + 1 : NULL;
        }
    }
    resp_free(&r);
    return v;
}

static bool sql_true(void *arg)
{
    void **a = arg;
    PGresult *r = wt_sql(a[0], "%s", (const char *)a[1]);
    const char *v = PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    bool yes = v[0] == 't' || atol(v) != 0;
    PQclear(r);
    return yes;
}

bool e2e_wait_sql(PGconn *db, int timeout_ms, const char *fmt, ...)
{
    char *sql = NULL;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&sql, fmt, ap) < 0)
        abort();
    va_end(ap);
    void *arg[2] = {db, sql};
    bool ok = wt_wait_for(sql_true, arg, timeout_ms);
    if (!ok)
        fprintf(stderr, "timed out after %d ms waiting for: %s\n", timeout_ms, sql);
    free(sql);
    return ok;
}

int e2e_env_start(wt_env *e, PGconn **db, redisContext **rc)
{
    if (wt_env_start(e, WT_REDIS | WT_PG | WT_MIGRATE) < 0)
        return -1;
    *db = wt_pg(e);
    if (rc)
        *rc = wt_redis(e);
    return 0;
}

void e2e_sim_tenant(PGconn *db, const char *name, double min_delay, double max_delay,
                    const char *phone_prefix, int n, char *user, char *dev)
{
    wt_sql_text(db, user, 40, "INSERT INTO users (name) VALUES ('%s') RETURNING id", name);
    wt_sql_text(db, dev, 40,
                "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                " max_delay_seconds) VALUES ('%s', 'sim', %g, %g) RETURNING id",
                user, min_delay, max_delay);
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone) SELECT '%s', '%s',"
                   " 'l' || n, '%s' || lpad(n::text, 7, '0') FROM generate_series(1, %d) n",
                   user, dev, phone_prefix, n));
}

bool e2e_wait_finished(PGconn *db, const char *campaign, int timeout_ms)
{
    return e2e_wait_sql(
        db, timeout_ms,
        "SELECT count(*) = 1 FROM campaigns WHERE id = '%s' AND status = 'finished'", campaign);
}

int e2e_stop_daemons_cleanly(wt_env *e)
{
    int bad = 0;
    for (int i = 0; i < e->nchildren; i++) {
        wt_child *ch = &e->children[i];
        if (ch->pid <= 0)
            continue;
        pid_t pid = ch->pid;
        if (kill(pid, SIGTERM) < 0) {
            fprintf(stderr, "%s: already gone\n", ch->name);
            bad++;
            continue;
        }
        int st = wt_wait_exit(e, pid, 15000);
        if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "%s: did not exit cleanly on SIGTERM (status %d)\n", ch->name, st);
            bad++;
        }
    }
    if (bad)
        wt_dump_logs(e, 30);
    return bad;
}

int e2e_teardown(wt_env *e, PGconn *db, redisContext *rc)
{
    if (rc)
        redisFree(rc);
    if (db)
        PQfinish(db);
    wt_env_stop(e);
    return 0;
}

/* ---- the transport end-to-end tests
 * -------------------------------------------------------------- */

int e2e_world_start(e2e_world *w, const char *script)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    if (wt_env_start(&w->env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    w->db = wt_pg(&w->env);
    random_hex(w->secret_key, 32);
    random_hex(w->app_secret, 16);
    random_hex(w->verify_token, 16);
    random_hex(w->gowa_secret, 16);
    w->dport = wt_free_port();
    if (fake_start(&w->env, &w->fake, script) < 0) {
        wt_dump_logs(&w->env, 40);
        return -1;
    }
    fprintf(stderr, "%s on port %d, dispatcher on %d\n", script, w->fake.port, w->dport);
    return 0;
}

static void world_stop(e2e_world *w)
{
    if (!w->env.dir[0])
        return;
    int st = fake_stop(&w->fake);
    if (st != 0)
        fprintf(stderr, "the fake exited with status %d\n", st);
    (void)e2e_teardown(&w->env, w->db, NULL);
    w->db = NULL;
    curl_global_cleanup();
}

int e2e_world_teardown(void **state)
{
    world_stop(*state);
    return 0;
}

int e2e_world_setup(void **state, e2e_world *w, int (*setup_world)(void))
{
    *state = w;
    if (setup_world() == 0)
        return 0;
    world_stop(w);
    return -1;
}

static bool dispatcher_counts(void *arg)
{
    const int *want = arg; /* {port, devices} */
    return e2e_metric(want[0], "wacast_dispatcher_online_devices") == (double)want[1];
}

bool e2e_world_daemons(e2e_world *w, const char *const *dispatcher_extra, int n)
{
    static char port_env[32], hosts_env[160], key_env[100], app_env[100], verify_env[100],
        gowa_env[100];
    snprintf(hosts_env, sizeof hosts_env, "WACAST_PROVIDER_HOSTS=%s%s%s", w->fake.base,
             w->extra_host[0] ? "," : "", w->extra_host);
    snprintf(port_env, sizeof port_env, "PORT=%d", w->dport);
    snprintf(key_env, sizeof key_env, "WACAST_SECRET_KEY=%s", w->secret_key);
    snprintf(app_env, sizeof app_env, "WACAST_META_APP_SECRET=%s", w->app_secret);
    snprintf(verify_env, sizeof verify_env, "WACAST_META_VERIFY_TOKEN=%s", w->verify_token);
    snprintf(gowa_env, sizeof gowa_env, "WACAST_GOWA_WEBHOOK_SECRET=%s", w->gowa_secret);
    const char *common[] = {SC_TEST_TIMINGS, "WACAST_MAX_ATTEMPTS=3",
                            hosts_env,       key_env,
                            app_env,         verify_env,
                            gowa_env,        NULL};
    const char *with_port[32];
    int k = 0;
    for (; common[k]; k++)
        with_port[k] = common[k];
    with_port[k++] = port_env;
    for (int i = 0; dispatcher_extra && dispatcher_extra[i] && k < 31; i++)
        with_port[k++] = dispatcher_extra[i];
    with_port[k] = NULL;
    if (wt_spawn(&w->env, "wacast-scheduler", "scheduler", common) < 0 ||
        wt_spawn(&w->env, "wacast-dispatcher", "dispatcher", with_port) < 0 ||
        wt_spawn(&w->env, "wacast-sender", "sender", common) < 0)
        abort();
    int want[2] = {w->dport, n};
    if (!e2e_wait_sql(w->db, 30000,
                      "SELECT count(*) = %d FROM user_devices WHERE status = 'online'", n) ||
        !wt_wait_for(dispatcher_counts, want, 15000)) {
        fprintf(stderr, "devices did not come online\n");
        wt_dump_logs(&w->env, 40);
        return false;
    }
    return true;
}

int e2e_ctl_set_credentials(wt_env *e, const char *secret_key, const char *device, const char *json)
{
    char path[512], log[600], dburl[300], key[100];
    wt_program_path("wacast-ctl", path, sizeof path);
    snprintf(log, sizeof log, "%s/wacast-ctl.log", e->dir);
    snprintf(dburl, sizeof dburl, "DATABASE_URL=%s", e->database_url);
    snprintf(key, sizeof key, "WACAST_SECRET_KEY=%s", secret_key);
    int p[2];
    if (pipe(p) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        dup2(p[0], 0);
        close(p[0]);
        close(p[1]);
        putenv(dburl);
        putenv(key);
        execl(path, path, "set-credentials", device, (char *)NULL);
        _exit(127);
    }
    close(p[0]);
    size_t len = strlen(json);
    if (write(p[1], json, len) != (ssize_t)len)
        fprintf(stderr, "writing to wacast-ctl: %s\n", strerror(errno));
    close(p[1]);
    int st = 0;
    long long deadline = wt_now_ms() + 20000;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (wt_now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(10000);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

bool e2e_results_empty(void *env)
{
    redisContext *rc = wt_redis(env);
    redisReply *r = redisCommand(rc, "XLEN wacast:results");
    bool empty = r && r->type == REDIS_REPLY_INTEGER && r->integer == 0;
    freeReplyObject(r);
    redisFree(rc);
    return empty;
}

bool e2e_settle(wt_env *e, fake *f)
{
    json_t *j = fake_call(f, "POST", "/_control/drain?timeout_ms=15000", NULL);
    if (!j)
        return false;
    json_decref(j);
    for (int i = 0; i < 100; i++) {
        if (!wt_wait_for(e2e_results_empty, e, 10000))
            return false;
        usleep(400000);
        if (e2e_results_empty(e))
            return true;
    }
    return false;
}

void e2e_sign(const char *secret, const char *body, size_t len, char *out, size_t outlen)
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, len, mac, &maclen);
    size_t k = (size_t)snprintf(out, outlen, "sha256=");
    for (unsigned int i = 0; i < maclen && k + 2 < outlen; i++)
        k += (size_t)snprintf(out + k, outlen - k, "%02x", mac[i]);
}

long e2e_post_webhook(int port, const char *path, const char *secret, const char *body, size_t len,
                      const char *sig)
{
    char url[128], header[128], computed[100];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    if (sig && !*sig) {
        e2e_sign(secret, body, len, computed, sizeof computed);
        sig = computed;
    }
    const char *headers[3] = {"Content-Type: application/json", NULL, NULL};
    if (sig) {
        snprintf(header, sizeof header, "X-Hub-Signature-256: %s", sig);
        headers[1] = header;
    }
    resp r;
    long code = http("POST", url, body, len, headers, &r);
    if (code < 0)
        fprintf(stderr, "POST %s: no answer (%s)\n", path, r.body);
    resp_free(&r);
    return code;
}

json_t *e2e_fake_sent(fake *f)
{
    return fake_call(f, "GET", "/_control/sent", NULL);
}

long e2e_fake_stat(fake *f, const char *name)
{
    json_t *j = fake_call(f, "GET", "/_control/stats", NULL);
    long v = j ? (long)json_integer_value(json_object_get(j, name)) : -1;
    json_decref(j);
    return v;
}

int e2e_check_none_rejected(fake *f, const char *who)
{
    long rejected = e2e_fake_stat(f, "rejected");
    if (rejected == 0)
        return 0;
    fprintf(stderr, "%s rejected %ld requests\n", who, rejected);
    return 1;
}

int e2e_check_campaign(PGconn *db, const char *campaign, int total, int sent, int delivered,
                       int read)
{
    PGresult *r = wt_sql(db,
                         "SELECT status, total_count, sent_count, delivered_count, read_count,"
                         " failed_count FROM campaigns WHERE id = '%s'",
                         campaign);
    if (PQntuples(r) != 1) {
        fprintf(stderr, "campaign %s: no row\n", campaign);
        PQclear(r);
        return 1;
    }
    fprintf(stderr, "campaign %s: %s total %s sent %s delivered %s read %s failed %s\n", campaign,
            PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 3),
            PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5));
    const int want[] = {total, sent, delivered, read, 0};
    int bad = strcmp(PQgetvalue(r, 0, 0), "finished") != 0;
    for (int c = 0; c < 5; c++)
        bad += want[c] >= 0 && atoi(PQgetvalue(r, 0, c + 1)) != want[c];
    PQclear(r);
    return bad ? 1 : 0;
}

int e2e_check_webhooks(fake *f, json_t *sent, const char *per_message, int each)
{
    /* The fake's delivery log keeps the HTTP status in "status", so
     * duplicates are counted from the send record. */
    json_t *wh = fake_call(f, "GET", "/_control/webhooks", NULL);
    if (!wh)
        return 1;
    json_t *del = json_object_get(wh, "deliveries");
    int dups = 0, refused = 0;
    size_t i;
    json_t *a;
    json_array_foreach(del, i, a)
    {
        if (!json_is_true(json_object_get(a, "ok")) ||
            json_integer_value(json_object_get(a, "status")) != 200)
            refused++;
    }
    json_array_foreach(json_object_get(sent, "messages"), i, a)
    {
        dups += (int)json_array_size(json_object_get(a, per_message)) - each;
    }
    fprintf(stderr, "webhooks: %zu deliveries, %d duplicates, %d not answered 200\n",
            json_array_size(del), dups, refused);
    json_decref(wh);
    return dups <= 0 || refused != 0;
}

int e2e_check_late_delivered(wt_env *e, PGconn *db, fake *f, const char *provider_id,
                             const char *control_path, const char *body)
{
    const char *q = "SELECT m.status, m.delivered_at::text, m.read_at::text, c.delivered_count,"
                    " c.read_count FROM broadcast_messages m JOIN campaigns c ON c.id ="
                    " m.campaign_id WHERE m.provider_message_id = '%s'";
    PGresult *before = wt_sql(db, q, provider_id);
    int failures = 0;
    if (PQntuples(before) != 1 || !fake_ok(f, "POST", control_path, "%s", body) ||
        !e2e_settle(e, f)) {
        fprintf(stderr, "late delivered of %s: %d rows, or the fake did not send it\n", provider_id,
                PQntuples(before));
        PQclear(before);
        return 1;
    }
    PGresult *after = wt_sql(db, q, provider_id);
    for (int c = 0; c < 5; c++) {
        if (strcmp(PQgetvalue(before, 0, c), PQgetvalue(after, 0, c))) {
            fprintf(stderr, "a late delivered changed column %d: %s -> %s\n", c,
                    PQgetvalue(before, 0, c), PQgetvalue(after, 0, c));
            failures++;
        }
    }
    if (strcmp(PQgetvalue(after, 0, 0), "read") != 0) {
        fprintf(stderr, "after a late delivered the row is '%s', not 'read'\n",
                PQgetvalue(after, 0, 0));
        failures++;
    }
    PQclear(before);
    PQclear(after);
    return failures;
}

int e2e_check_stop(e2e_world *w, const char *body, const char *lead_id)
{
    if (!fake_ok(&w->fake, "POST", "/_control/inbound", "%s", body))
        return 1;
    return !e2e_wait_sql(w->db, 10000,
                         "SELECT count(*) FROM leads WHERE id = '%s' AND opted_out_at IS NOT NULL",
                         lead_id);
}

bool e2e_stopped_cleanly(wt_env *env, pid_t pid)
{
    if (kill(pid, SIGTERM) < 0)
        return false;
    int st = wt_wait_exit(env, pid, 15000);
    if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return true;
    fprintf(stderr, "pid %d did not stop cleanly on SIGTERM (status %d)\n", (int)pid, st);
    wt_dump_logs(env, 40);
    return false;
}

unsigned char *e2e_png_rgba(int w, int h, size_t *len)
{
    unsigned char *px = malloc((size_t)w * h * 4);
    if (!px)
        return NULL;
    for (size_t i = 0; i < (size_t)w * h; i++) {
        px[4 * i] = (unsigned char)(i % 251);
        px[4 * i + 1] = (unsigned char)(i / (size_t)w % 256);
        px[4 * i + 2] = 90;
        px[4 * i + 3] = i % (size_t)w < (size_t)w / 2 ? 255 : 0;
    }
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = PNG_FORMAT_RGBA;
    png_alloc_size_t n = 0;
    unsigned char *out = NULL;
    if (png_image_write_get_memory_size(img, n, 0, px, 0, NULL) && (out = malloc(n)) &&
        !png_image_write_to_memory(&img, out, &n, 0, px, 0, NULL)) {
        free(out);
        out = NULL;
    }
    free(px);
    *len = out ? n : 0;
    return out;
}

char *e2e_png_data_url(int w, int h)
{
    size_t len;
    unsigned char *png = e2e_png_rgba(w, h, &len);
    if (!png)
        return NULL;
    static const char prefix[] = "data:image/png;base64,";
    char *url = malloc(sizeof prefix + 4 * (len / 3 + 1) + 1);
    if (url) {
        memcpy(url, prefix, sizeof prefix - 1);
        EVP_EncodeBlock((unsigned char *)url + sizeof prefix - 1, png, (int)len);
    }
    free(png);
    return url;
}

long e2e_fake_gets(fake *f, const char *path)
{
    json_t *st = fake_call(f, "GET", "/_control/stats", NULL);
    if (!st)
        return -1;
    json_t *n = json_object_get(json_object_get(st, "gets"), path);
    long v = n ? (long)json_integer_value(n) : 0;
    json_decref(st);
    return v;
}

json_t *e2e_sim_records(const char *redis_url)
{
    char err[128];
    redisContext *rc = wc_redis_connect_sync(redis_url, 2000, err, sizeof err);
    if (!rc)
        return NULL;
    redisReply *rep = redisCommand(rc, "XRANGE %s - +", WC_SIM_RECORD_KEY);
    json_t *out = rep && rep->type == REDIS_REPLY_ARRAY ? json_array() : NULL;
    for (size_t i = 0; out && i < rep->elements; i++) {
        redisReply *fields = rep->element[i]->element[1];
        json_t *o = json_object();
        for (size_t k = 0; k + 1 < fields->elements; k += 2)
            json_object_set_new(o, fields->element[k]->str,
                                json_string(fields->element[k + 1]->str));
        json_array_append_new(out, o);
    }
    if (rep)
        freeReplyObject(rep);
    redisFree(rc);
    return out;
}
