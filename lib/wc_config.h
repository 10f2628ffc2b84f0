/* Settings come from the environment, declared once in a table per daemon
 * (name, type, default, help), so --help, validation and the docs come from
 * the same place. A daemon defines its own struct and table:
 *
 *   static const wc_cfg_entry table[] = {
 *       WC_CFG_COMMON(struct cfg),
 *       {"WACAST_BATCH", WC_CFG_INT, "500", "rows per batch", offsetof(struct cfg, batch), 1,
 * 100000},
 *   };
 */
#ifndef WC_CONFIG_H
#define WC_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

typedef enum { WC_CFG_STR, WC_CFG_INT, WC_CFG_DOUBLE, WC_CFG_BOOL } wc_cfg_type;

typedef struct wc_cfg_entry {
    const char *env;  /* environment variable */
    wc_cfg_type type; /* STR -> char *, INT -> long, DOUBLE -> double, BOOL -> bool */
    const char *def;  /* default as text; NULL means required (STR only) */
    const char *help; /* one line */
    size_t offset;    /* offset of the field in the daemon's config struct */
    double min, max;  /* inclusive bounds for INT and DOUBLE (ignored when min > max) */
    bool secret;      /* never printed */
} wc_cfg_entry;

/* Settings every daemon has. The struct must have these fields:
 * char *database_url, *redis_url, *log_level, *bind, *instance_id; long port; */
#define WC_CFG_COMMON(T)                                                                           \
    {"DATABASE_URL",                                                                               \
     WC_CFG_STR,                                                                                   \
     "postgresql://localhost/wacast",                                                              \
     "PostgreSQL connection URL or libpq key=value string",                                        \
     offsetof(T, database_url),                                                                    \
     1,                                                                                            \
     0,                                                                                            \
     true},                                                                                        \
        {"REDIS_URL",                                                                              \
         WC_CFG_STR,                                                                               \
         "redis://127.0.0.1:6379/0",                                                               \
         "Redis URL: redis://[[user]:password@]host:port[/db] (rediss://: see wacast redis-tls)",  \
         offsetof(T, redis_url),                                                                   \
         1,                                                                                        \
         0,                                                                                        \
         true},                                                                                    \
        {"PORT",                                                                                   \
         WC_CFG_INT,                                                                               \
         "0",                                                                                      \
         "HTTP port for /healthz, /readyz, /metrics (0: none)",                                    \
         offsetof(T, port),                                                                        \
         0,                                                                                        \
         65535,                                                                                    \
         false},                                                                                   \
        {"WACAST_BIND",     WC_CFG_STR, "0.0.0.0", "address the HTTP server listens on",           \
         offsetof(T, bind), 1,          0,         false},                                         \
        {"WACAST_LOG_LEVEL",     WC_CFG_STR, "info", "debug, info, warn or error",                 \
         offsetof(T, log_level), 1,          0,      false},                                       \
    {                                                                                              \
        "WACAST_INSTANCE_ID", WC_CFG_STR, "",                                                      \
            "name of this process in Redis consumer groups and leases; empty: host-pid-random",    \
            offsetof(T, instance_id), 1, 0, false                                                  \
    }

/* Reads every entry from the environment into cfg (strings are strdup'ed).
 * Handles --help (prints usage to stdout, returns 1) and rejects unknown
 * arguments. Returns 0 on success, 1 after --help, -1 on error (message in err).
 * Also fills an empty WACAST_INSTANCE_ID-style field named instance_id when
 * `instance_id_offset` is not (size_t)-1. */
int wc_config_load(const wc_cfg_entry *table, size_t n, void *cfg, int argc, char **argv,
                   const char *about, char *err, size_t errlen) __attribute__((warn_unused_result));

/* Prints "NAME=value" for every setting (secrets as ***) to f. */
void wc_config_dump(const wc_cfg_entry *table, size_t n, const void *cfg, FILE *f);

/* Frees the strings wc_config_load allocated. */
void wc_config_free(const wc_cfg_entry *table, size_t n, void *cfg);

/* A unique name for this process: hostname-pid-4 random hex bytes. */
void wc_config_instance_id(char *out, size_t outlen);

#endif
