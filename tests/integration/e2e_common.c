/* Helpers shared by the end-to-end tests over the fake providers: HTTP with
 * libcurl, starting and driving a Node fake from tests/fakes/, random hex. */
#include "e2e_common.h"

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
