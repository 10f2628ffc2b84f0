/* Table-driven configuration from the environment; see wc_config.h. */
#include "wc_config.h"

#include "wc_log.h"
#include "wc_seal.h"

#include <errno.h>
#include <math.h>
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Settings every daemon reads outside its own table (the log format here,
 * the sealing keys in wc_seal, PGSSLMODE in libpq), so each daemon's --help
 * lists them and a bad value stops it at start, not at first use. */
typedef struct process_setting {
    const char *env, *def, *help;
    const char *const *allowed; /* NULL: any value */
} process_setting;

static const char *const log_formats[] = {"text", "json", NULL};
static const char *const seal_legacy[] = {"allow", "refuse", NULL};
static const char *const pg_sslmodes[] = {"disable",   "allow",       "prefer", "require",
                                          "verify-ca", "verify-full", NULL};
static const process_setting process_settings[] = {
    {"WACAST_LOG_FORMAT", "text",
     "log lines as text (for people) or json (one object per line, for log collectors)",
     log_formats},
    {WC_SEAL_KEY_ENV, "",
     "key that seals device credentials at rest (wacast-ctl keygen); secret, empty: none", NULL},
    {WC_SEAL_PREVIOUS_KEY_ENV, "",
     "the key before a rotation, still accepted to open (wacast-ctl reseal); secret", NULL},
    {WC_SEAL_LEGACY_ENV, "allow", "credentials sealed before key ids: allow or refuse",
     seal_legacy},
    {"PGSSLMODE", "prefer",
     "libpq TLS mode for PostgreSQL when DATABASE_URL names none (require on managed Postgres)",
     pg_sslmodes},
};

static int check_process_settings(char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof process_settings / sizeof process_settings[0]; i++) {
        const process_setting *p = &process_settings[i];
        const char *v = getenv(p->env);
        if (!v || !v[0] || !p->allowed)
            continue;
        bool ok = false;
        for (const char *const *a = p->allowed; *a && !ok; a++)
            ok = strcmp(v, *a) == 0;
        if (!ok) {
            char list[128] = "";
            size_t len = 0;
            for (const char *const *a = p->allowed; *a; a++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s",
                                        a == p->allowed ? "" : ", ", *a);
            snprintf(err, errlen, "%s: \"%.40s\" is not one of %s", p->env, v, list);
            return -1;
        }
    }
    const char *format = getenv("WACAST_LOG_FORMAT");
    if (wc_log_set_format(format ? format : "text") < 0) {
        snprintf(err, errlen, "WACAST_LOG_FORMAT: not text or json");
        return -1;
    }
    return 0;
}

static void usage(const wc_cfg_entry *table, size_t n, const char *prog, const char *about)
{
    printf("usage: %s [--help]\n\n%s\n\nSettings (environment variables):\n", prog, about);
    for (size_t i = 0; i < n; i++) {
        const wc_cfg_entry *e = &table[i];
        printf("  %-32s %s", e->env, e->help);
        if (e->def)
            printf(" (default: %s)", e->def[0] ? e->def : "\"\"");
        else
            printf(" (required)");
        putchar('\n');
    }
    for (size_t i = 0; i < sizeof process_settings / sizeof process_settings[0]; i++) {
        const process_setting *p = &process_settings[i];
        printf("  %-32s %s (default: %s)\n", p->env, p->help, p->def[0] ? p->def : "\"\"");
    }
}

static int parse_one(const wc_cfg_entry *e, const char *text, void *cfg, char *err, size_t errlen)
{
    char *field = (char *)cfg + e->offset;
    char *end = NULL;
    switch (e->type) {
    case WC_CFG_STR: {
        char *copy = strdup(text);
        if (!copy) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        char **slot = (char **)field;
        free(*slot);
        *slot = copy;
        return 0;
    }
    case WC_CFG_INT: {
        errno = 0;
        long v = strtol(text, &end, 10);
        if (errno || end == text || *end) {
            snprintf(err, errlen, "%s: \"%s\" is not an integer", e->env, text);
            return -1;
        }
        if (e->min <= e->max && (v < e->min || v > e->max)) {
            snprintf(err, errlen, "%s: %ld is outside [%.0f, %.0f]", e->env, v, e->min, e->max);
            return -1;
        }
        *(long *)field = v;
        return 0;
    }
    case WC_CFG_DOUBLE: {
        errno = 0;
        double v = strtod(text, &end);
        if (errno || end == text || *end || !isfinite(v)) {
            snprintf(err, errlen, "%s: \"%s\" is not a number", e->env, text);
            return -1;
        }
        if (e->min <= e->max && (v < e->min || v > e->max)) {
            snprintf(err, errlen, "%s: %g is outside [%g, %g]", e->env, v, e->min, e->max);
            return -1;
        }
        *(double *)field = v;
        return 0;
    }
    case WC_CFG_BOOL:
        if (!strcasecmp(text, "1") || !strcasecmp(text, "true") || !strcasecmp(text, "yes") ||
            !strcasecmp(text, "on")) {
            *(bool *)field = true;
        } else if (!strcasecmp(text, "0") || !strcasecmp(text, "false") ||
                   !strcasecmp(text, "no") || !strcasecmp(text, "off")) {
            *(bool *)field = false;
        } else {
            snprintf(err, errlen, "%s: \"%s\" is not a boolean (true/false)", e->env, text);
            return -1;
        }
        return 0;
    }
    snprintf(err, errlen, "%s: unknown setting type", e->env);
    return -1;
}

int wc_config_load(const wc_cfg_entry *table, size_t n, void *cfg, int argc, char **argv,
                   const char *about, char *err, size_t errlen)
{
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(table, n, argv[0], about);
            return 1;
        }
        snprintf(err, errlen,
                 "unknown argument \"%s\" (settings come from the environment; see --help)",
                 argv[i]);
        return -1;
    }
    if (check_process_settings(err, errlen) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const wc_cfg_entry *e = &table[i];
        const char *text = getenv(e->env);
        if (!text) {
            if (!e->def) {
                snprintf(err, errlen, "%s is required (%s)", e->env, e->help);
                return -1;
            }
            text = e->def;
        }
        if (parse_one(e, text, cfg, err, errlen) < 0)
            return -1;
        if (!strcmp(e->env, "WACAST_INSTANCE_ID") && text[0] == '\0') {
            char id[128];
            wc_config_instance_id(id, sizeof id);
            if (parse_one(e, id, cfg, err, errlen) < 0)
                return -1;
        }
    }
    return 0;
}

void wc_config_dump(const wc_cfg_entry *table, size_t n, const void *cfg, FILE *f)
{
    for (size_t i = 0; i < n; i++) {
        const wc_cfg_entry *e = &table[i];
        const char *field = (const char *)cfg + e->offset;
        fprintf(f, "%s=", e->env);
        if (e->secret)
            fputs("***", f);
        else if (e->type == WC_CFG_STR)
            fputs(*(char *const *)field ? *(char *const *)field : "", f);
        else if (e->type == WC_CFG_INT)
            fprintf(f, "%ld", *(const long *)field);
        else if (e->type == WC_CFG_DOUBLE)
            fprintf(f, "%g", *(const double *)field);
        else
            fputs(*(const bool *)field ? "true" : "false", f);
        fputc('\n', f);
    }
}

void wc_config_free(const wc_cfg_entry *table, size_t n, void *cfg)
{
    for (size_t i = 0; i < n; i++) {
        if (table[i].type == WC_CFG_STR) {
            char **slot = (char **)((char *)cfg + table[i].offset);
            free(*slot);
            *slot = NULL;
        }
    }
}

void wc_config_instance_id(char *out, size_t outlen)
{
    char host[64] = "host";
    if (gethostname(host, sizeof host) < 0)
        snprintf(host, sizeof host, "host");
    host[sizeof host - 1] = '\0';
    uint32_t r = randombytes_random();
    snprintf(out, outlen, "%s-%d-%08x", host, (int)getpid(), r);
}
