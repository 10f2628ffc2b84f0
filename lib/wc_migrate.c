/* Applies the embedded sql/ migrations at start-up. Every daemon calls it, and
 * on Kubernetes several replicas start together, so the whole run happens
 * under one session advisory lock: the second process waits, then finds the
 * files recorded in schema_migrations and applies nothing. Each file runs in
 * its own transaction together with the row that records it, so a file is
 * either applied and recorded, or neither, with the file's sha256: a file
 * changed after it was applied (its new text never runs here) is named in a
 * warning at every start. Blocking libpq on purpose: this runs before the
 * event loop. */
#include "wc_migrate.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <sodium.h>

#include "wc_log.h"

/* "wacast" in ASCII, then migration lock number 1. Any other wacast advisory
 * lock must use another low half. */
#define WC_MIGRATE_LOCK_KEY "8602266033454317569" /* 0x7761636173740001 */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* First line of a libpq message, trimmed. */
static void first_line(const char *msg, char *out, size_t outlen)
{
    if (!msg)
        msg = "";
    while (*msg == ' ' || *msg == '\t' || *msg == '\n' || *msg == '\r')
        msg++;
    size_t n = strcspn(msg, "\r\n");
    while (n > 0 && (msg[n - 1] == ' ' || msg[n - 1] == '\t'))
        n--;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, msg, n);
    out[n] = '\0';
}

/* The error of a failed PQexec: primary message, and for a migration file the
 * line the server points at (positions count characters, not bytes). */
static void describe_error(PGconn *conn, const PGresult *res, const char *sql, char *out,
                           size_t outlen)
{
    char msg[400];
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    first_line(primary && *primary ? primary
               : res               ? PQresultErrorMessage(res)
                                   : "",
               msg, sizeof msg);
    if (!msg[0])
        first_line(PQerrorMessage(conn), msg, sizeof msg);
    if (!msg[0])
        snprintf(msg, sizeof msg, "unexpected result %s",
                 res ? PQresStatus(PQresultStatus(res)) : "(none)");
    const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
    long chars = pos ? strtol(pos, NULL, 10) : 0;
    if (!sql || chars <= 0) {
        snprintf(out, outlen, "%s", msg);
        return;
    }
    long line = 1;
    for (const unsigned char *p = (const unsigned char *)sql; *p && chars > 1; p++) {
        if ((*p & 0xC0) != 0x80)
            chars--;
        if (*p == '\n')
            line++;
    }
    snprintf(out, outlen, "%s (line %ld)", msg, line);
}

static bool exec_ok(PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
}

/* Runs sql with text parameters; on failure describes it in out. */
static int run(PGconn *conn, const char *sql, int nparams, const char *const *values, char *out,
               size_t outlen)
{
    PGresult *res =
        nparams ? PQexecParams(conn, sql, nparams, NULL, values, NULL, NULL, 0) : PQexec(conn, sql);
    int ret = 0;
    if (!res || !exec_ok(res)) {
        describe_error(conn, res, NULL, out, outlen);
        ret = -1;
    }
    PQclear(res);
    return ret;
}

static void notice_to_log(void *arg, const PGresult *res)
{
    char msg[400];
    first_line(PQresultErrorMessage(res), msg, sizeof msg);
    wc_debug("migrate: %s", msg);
}

/* The sha256 of a file's text, in hex. */
static void checksum_of(const char *sql, char out[crypto_hash_sha256_BYTES * 2 + 1])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)sql, strlen(sql));
    sodium_bin2hex(out, crypto_hash_sha256_BYTES * 2 + 1, h, sizeof h);
}

/* 1 when name is recorded, 0 when not, -1 on error. A recorded file's
 * checksum goes into recorded ("" for a file applied before checksums were
 * kept). */
static int is_applied(PGconn *conn, const char *name, char *recorded, size_t reclen, char *out,
                      size_t outlen)
{
    const char *values[] = {name};
    PGresult *res =
        PQexecParams(conn, "SELECT coalesce(checksum, '') FROM schema_migrations WHERE name = $1",
                     1, NULL, values, NULL, NULL, 0);
    int ret;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        describe_error(conn, res, NULL, out, outlen);
        ret = -1;
    } else {
        ret = PQntuples(res) > 0;
        snprintf(recorded, reclen, "%s", ret ? PQgetvalue(res, 0, 0) : "");
    }
    PQclear(res);
    return ret;
}

/* Applies one file and records it, in one transaction. */
static int apply_one(PGconn *conn, const wc_migration *m, char *out, size_t outlen)
{
    if (run(conn, "BEGIN", 0, NULL, out, outlen) < 0)
        return -1;
    PGresult *res = PQexec(conn, m->sql);
    if (!res || !exec_ok(res)) {
        describe_error(conn, res, m->sql, out, outlen);
        PQclear(res);
        goto rollback;
    }
    PQclear(res);
    /* A file that commits on its own would leave half of it recorded nowhere. */
    if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
        snprintf(out, outlen, "the file must not end the transaction (no BEGIN/COMMIT)");
        goto rollback;
    }
    char sum[crypto_hash_sha256_BYTES * 2 + 1];
    checksum_of(m->sql, sum);
    const char *values[] = {m->name, sum};
    if (run(conn, "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", 2, values, out,
            outlen) < 0)
        goto rollback;
    if (run(conn, "COMMIT", 0, NULL, out, outlen) < 0)
        goto rollback;
    return 0;
rollback:
    if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
        char ignored[64];
        (void)run(conn, "ROLLBACK", 0, NULL, ignored, sizeof ignored);
    }
    return -1;
}

int wc_migrate_apply(const char *conninfo, const wc_migration *migrations, size_t count, char *err,
                     size_t errlen)
{
    return wc_migrate_apply_checked(conninfo, migrations, count, NULL, err, errlen);
}

int wc_migrate_apply_checked(const char *conninfo, const wc_migration *migrations, size_t count,
                             int *changed, char *err, size_t errlen)
{
    char why[512];
    char redacted[256];
    int applied = 0;
    int ret = -1;
    if (changed)
        *changed = 0;
    bool locked = false;
    const char *key[] = {WC_MIGRATE_LOCK_KEY};
    set_err(err, errlen, "%s", "");
    wc_log_redact_url(conninfo, redacted, sizeof redacted);

    /* connect_timeout first, so a value in conninfo wins. */
    const char *keywords[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *values[] = {"10", "wacast-migrate", conninfo ? conninfo : "", NULL};
    PGconn *conn = PQconnectdbParams(keywords, values, 1);
    if (!conn) {
        set_err(err, errlen, "out of memory");
        goto end;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        first_line(PQerrorMessage(conn), why, sizeof why);
        set_err(err, errlen, "connect to %s: %s", redacted, why);
        goto end;
    }
    PQsetNoticeReceiver(conn, notice_to_log, NULL);

    if (run(conn, "SELECT pg_advisory_lock($1::bigint)", 1, key, why, sizeof why) < 0) {
        set_err(err, errlen, "advisory lock: %s", why);
        goto end;
    }
    locked = true;
    if (run(conn,
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            0, NULL, why, sizeof why) < 0 ||
        run(conn, "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text", 0, NULL,
            why, sizeof why) < 0) {
        set_err(err, errlen, "schema_migrations: %s", why);
        goto end;
    }

    for (size_t i = 0; i < count; i++) {
        const wc_migration *m = &migrations[i];
        char recorded[80], sum[crypto_hash_sha256_BYTES * 2 + 1];
        int done = is_applied(conn, m->name, recorded, sizeof recorded, why, sizeof why);
        if (done < 0) {
            set_err(err, errlen, "migration %s: %s", m->name, why);
            goto end;
        }
        if (done) {
            checksum_of(m->sql, sum);
            if (!recorded[0]) {
                /* Applied before checksums were kept: this text is taken as
                 * the one that ran. */
                const char *v[] = {m->name, sum};
                if (run(conn, "UPDATE schema_migrations SET checksum = $2 WHERE name = $1", 2, v,
                        why, sizeof why) < 0) {
                    set_err(err, errlen, "migration %s: %s", m->name, why);
                    goto end;
                }
            } else if (strcmp(recorded, sum) != 0) {
                wc_warn("migrate: %s changed after it was applied (sha256 %.12s recorded, %.12s "
                        "now): its new text never runs here; a change belongs in a new file",
                        m->name, recorded, sum);
                if (changed)
                    (*changed)++;
            }
            continue;
        }
        if (apply_one(conn, m, why, sizeof why) < 0) {
            set_err(err, errlen, "migration %s: %s", m->name, why);
            wc_error("migrate: %s failed: %s", m->name, why);
            goto end;
        }
        wc_info("migrate: applied %s", m->name);
        applied++;
    }
    ret = applied;

end:
    if (locked) {
        /* Closing the session would release it too; say it explicitly. */
        char ignored[64];
        (void)run(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, key, ignored, sizeof ignored);
    }
    PQfinish(conn);
    return ret;
}

int wc_migrate(const char *conninfo, char *err, size_t errlen)
{
    return wc_migrate_apply(conninfo, wc_migrations, wc_migrations_count, err, errlen);
}
