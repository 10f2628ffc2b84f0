/* Helpers shared by the end-to-end tests over the fake providers (tests/fakes/). */
#ifndef E2E_COMMON_H
#define E2E_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

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
/* The value of a metric on a daemon's /metrics at 127.0.0.1:port, -1 when
 * it cannot be read. */
double e2e_metric(int port, const char *name);

/* SIGTERM to a daemon the harness spawned; true when it exits 0 within 15 s
 * (under the sanitizers that also means no leak on the way out), otherwise
 * false after printing the logs' tails. */
bool e2e_stopped_cleanly(wt_env *env, pid_t pid);

/* A w x h PNG (RGBA: left half opaque colours, right half transparent), as
 * libpng writes it; malloc'd, length in *len. */
unsigned char *e2e_png_rgba(int w, int h, size_t *len);

#endif
