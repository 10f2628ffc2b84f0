/* Schema migrations: the numbered files of sql/, embedded in every binary at
 * build time, applied in order, each once, recorded in schema_migrations
 * with its sha256 (a file edited after it was applied is warned about).
 * Several processes may start at once: a session advisory lock serialises
 * them, so each file is applied exactly once. Blocking: call at start-up,
 * before the event loop runs. */
#ifndef WC_MIGRATE_H
#define WC_MIGRATE_H

#include <stddef.h>

typedef struct wc_migration {
    const char *name; /* file name, e.g. "001_init.sql" */
    const char *sql;
} wc_migration;

extern const wc_migration wc_migrations[];
extern const size_t wc_migrations_count;

/* Connects with conninfo and applies what is missing. Returns the number of
 * migrations applied now (0 when up to date), or -1 with a message in err. */
int wc_migrate(const char *conninfo, char *err, size_t errlen) __attribute__((warn_unused_result));

/* The same with an explicit list (wc_migrate passes the embedded one), so
 * tests can exercise failures and races without touching sql/. Each file runs
 * in its own transaction: it must not contain BEGIN/COMMIT or statements that
 * cannot run in a transaction (CREATE INDEX CONCURRENTLY). */
int wc_migrate_apply(const char *conninfo, const wc_migration *migrations, size_t count, char *err,
                     size_t errlen) __attribute__((warn_unused_result));

/* The same, also counting into *changed the applied files whose text is not
 * the one recorded (each is also named in a warning). */
int wc_migrate_apply_checked(const char *conninfo, const wc_migration *migrations, size_t count,
                             int *changed, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
