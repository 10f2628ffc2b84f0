/* wacast-ctl: the operator's command line. Applies migrations, loads demo
 * data, shows campaigns and drip sequences, and watches one campaign or
 * sequence with a live progress line.
 * It talks to PostgreSQL only (DATABASE_URL), with blocking libpq: it is a
 * tool, not a daemon. */
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <sodium.h>

#include "wc_log.h"
#include "wc_migrate.h"
#include "wc_seal.h"

static const char *database_url(void)
{
    const char *u = getenv("DATABASE_URL");
    return u && *u ? u : "postgresql://localhost/wacast";
}

static PGconn *connect_db(void)
{
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {database_url(), "10", "wacast-ctl", NULL};
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(c) != CONNECTION_OK) {
        char redacted[512];
        wc_log_redact_url(database_url(), redacted, sizeof redacted);
        fprintf(stderr, "wacast-ctl: cannot reach PostgreSQL at %s: %s", redacted,
                PQerrorMessage(c));
        exit(1);
    }
    return c;
}

static PGresult *exec_or_die(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        fprintf(stderr, "wacast-ctl: %s", PQerrorMessage(c));
        exit(1);
    }
    return r;
}

static int cmd_migrate(void)
{
    char err[512];
    int n = wc_migrate(database_url(), err, sizeof err);
    if (n < 0) {
        fprintf(stderr, "wacast-ctl: %s\n", err);
        return 1;
    }
    printf("migrations: %d applied, %zu known\n", n, wc_migrations_count);
    return 0;
}

/* Demo data: one user, D simulated devices, N leads, one campaign due now. */
static int cmd_demo_seed(int argc, char **argv)
{
    long leads = 10000, devices = 50;
    const char *min_delay = "0.2", *max_delay = "0.6";
    bool sequence = false;
    for (int i = 0; i < argc; i += 2) {
        if (!strcmp(argv[i], "--sequence")) {
            sequence = true;
            i--; /* a flag: no value */
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "wacast-ctl: demo-seed: %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--leads"))
            leads = strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--devices"))
            devices = strtol(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--min-delay"))
            min_delay = argv[i + 1];
        else if (!strcmp(argv[i], "--max-delay"))
            max_delay = argv[i + 1];
        else {
            fprintf(stderr, "wacast-ctl: demo-seed: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (leads < 1 || devices < 1) {
        fprintf(stderr, "wacast-ctl: demo-seed: --leads and --devices must be positive\n");
        return 2;
    }
    PGconn *c = connect_db();
    char nleads[32], ndev[32];
    snprintf(nleads, sizeof nleads, "%ld", leads);
    snprintf(ndev, sizeof ndev, "%ld", devices);
    PQclear(exec_or_die(c, "BEGIN", 0, NULL));
    PGresult *r = exec_or_die(c, "INSERT INTO users (name) VALUES ('demo') RETURNING id", 0, NULL);
    char user[64];
    snprintf(user, sizeof user, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *p1[] = {user, ndev, min_delay, max_delay};
    PQclear(exec_or_die(
        c,
        "INSERT INTO user_devices (user_id, device_name, phone, platform, min_delay_seconds,"
        " max_delay_seconds) SELECT $1, 'demo-' || g, '+6030' || lpad(g::text, 7, '0'), 'sim',"
        " $3::numeric, $4::numeric FROM generate_series(1, $2::int) g",
        4, p1));
    const char *p2[] = {user, nleads};
    PQclear(
        exec_or_die(c,
                    "INSERT INTO leads (user_id, device_id, name, phone, niche, target_status)"
                    " SELECT $1, (SELECT id FROM user_devices WHERE user_id = $1 ORDER BY id"
                    " OFFSET (g % (SELECT count(*) FROM user_devices WHERE user_id = $1)) LIMIT 1),"
                    " 'Lead ' || g, '012' || lpad(g::text, 7, '0'), 'demo',"
                    " CASE WHEN g % 3 = 0 THEN 'customer' ELSE 'prospect' END::lead_target_status"
                    " FROM generate_series(1, $2::int) g",
                    2, p2));
    const char *p3[] = {user};
    if (sequence) {
        /* A 3-step drip (0 s, 2 s, 2 s) for every lead, tagged DEMO. */
        PQclear(exec_or_die(c, "UPDATE leads SET \"trigger\" = 'DEMO' WHERE user_id = $1", 1, p3));
        r = exec_or_die(
            c,
            "INSERT INTO sequences (user_id, name, \"trigger\") VALUES ($1, 'demo drip',"
            " 'DEMO') RETURNING id",
            1, p3);
        const char *p4[] = {PQgetvalue(r, 0, 0)};
        PQclear(exec_or_die(
            c,
            "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds, message) VALUES"
            " ($1, 1, 0, '{Hi|Hello} {{name}}, welcome to the wacast drip demo (1/3).'),"
            " ($1, 2, 2, '{{name}}, here is the second step (2/3).'),"
            " ($1, 3, 2, 'Last one, {{name}}: thanks for following along (3/3).')",
            1, p4));
        PQclear(exec_or_die(c, "UPDATE sequences SET status = 'active' WHERE id = $1", 1, p4));
    } else {
        r = exec_or_die(
            c,
            "INSERT INTO campaigns (user_id, title, message, target_status, scheduled_at)"
            " VALUES ($1, 'demo', '{Hi|Hello|Hey} {{name}}, {{greeting}}! This is a wacast demo.',"
            " 'all', now()) RETURNING id",
            1, p3);
    }
    printf("%s\n", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQclear(exec_or_die(c, "COMMIT", 0, NULL));
    PQfinish(c);
    return 0;
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

/* Prints a progress bar until the campaign is in a final state. */
static int cmd_watch(const char *campaign, long timeout_s)
{
    PGconn *c = connect_db();
    signal(SIGINT, on_sigint);
    bool tty = isatty(STDOUT_FILENO);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    const char *params[] = {campaign};
    for (;;) {
        PGresult *r = exec_or_die(
            c,
            "SELECT status, total_count, sent_count, failed_count, skipped_count, cancelled_count,"
            " coalesce(status_reason, ''),"
            " (SELECT count(*) FROM broadcast_messages WHERE campaign_id = $1 AND status = "
            "'queued')"
            " FROM campaigns WHERE id = $1",
            1, params);
        if (PQntuples(r) == 0) {
            fprintf(stderr, "wacast-ctl: no campaign %s\n", campaign);
            return 1;
        }
        const char *status = PQgetvalue(r, 0, 0);
        long total = atol(PQgetvalue(r, 0, 1)), sent = atol(PQgetvalue(r, 0, 2)),
             failed = atol(PQgetvalue(r, 0, 3)), skipped = atol(PQgetvalue(r, 0, 4)),
             cancelled = atol(PQgetvalue(r, 0, 5)), queued = atol(PQgetvalue(r, 0, 7));
        long done = sent + failed + skipped + cancelled;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double elapsed = (double)(now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
        int width = 40, filled = total > 0 ? (int)(width * (double)done / (double)total) : 0;
        char bar[64];
        for (int i = 0; i < width; i++)
            bar[i] = i < filled ? '#' : '.';
        bar[width] = '\0';
        bool final = !strcmp(status, "finished") || !strcmp(status, "failed") ||
                     !strcmp(status, "cancelled");
        printf("%s[%s] %5.1f%% %ld/%ld sent=%ld failed=%ld skipped=%ld queued=%ld %s %.0fs  %s",
               tty ? "\r" : "", bar, total ? 100.0 * (double)done / (double)total : 0.0, done,
               total, sent, failed, skipped, queued, status, elapsed, tty ? "" : "\n");
        fflush(stdout);
        if (final) {
            printf("\ncampaign %s %s: total=%ld sent=%ld failed=%ld skipped=%ld cancelled=%ld in "
                   "%.1fs%s%s\n",
                   campaign, status, total, sent, failed, skipped, cancelled, elapsed,
                   PQgetvalue(r, 0, 6)[0] ? " — " : "", PQgetvalue(r, 0, 6));
            PQclear(r);
            PQfinish(c);
            return strcmp(status, "finished") == 0 ? 0 : 1;
        }
        PQclear(r);
        if (interrupted || (timeout_s > 0 && elapsed > (double)timeout_s)) {
            printf("\nwacast-ctl: stopped watching (%s)\n",
                   interrupted ? "interrupted" : "timeout");
            PQfinish(c);
            return 1;
        }
        usleep(tty ? 250000 : 2000000);
    }
}

static int cmd_campaigns(void)
{
    PGconn *c = connect_db();
    PGresult *r =
        exec_or_die(c,
                    "SELECT id, status, total_count, sent_count, failed_count, skipped_count,"
                    " coalesce(status_reason, '') FROM campaigns ORDER BY created_at DESC LIMIT 50",
                    0, NULL);
    printf("%-36s  %-10s %8s %8s %8s %8s  %s\n", "id", "status", "total", "sent", "failed",
           "skipped", "reason");
    for (int i = 0; i < PQntuples(r); i++)
        printf("%-36s  %-10s %8s %8s %8s %8s  %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
               PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4), PQgetvalue(r, i, 5),
               PQgetvalue(r, i, 6));
    PQclear(r);
    PQfinish(c);
    return 0;
}

/* A campaign's image: what media_url names, and the prepared JPEG (sha256,
 * size, dimensions, quality, source) or why there is none. */
static int cmd_media(const char *campaign)
{
    PGconn *c = connect_db();
    const char *params[] = {campaign};
    PGresult *r =
        exec_or_die(c,
                    "SELECT c.id, c.status, coalesce(c.status_reason, ''), c.media_url IS NULL,"
                    " left(coalesce(c.media_url, ''), 120), length(coalesce(c.media_url, '')),"
                    " coalesce(m.sha256, ''), m.size, m.width, m.height, m.quality, m.source_type,"
                    " m.source_bytes, m.source_width, m.source_height, m.created_at"
                    " FROM campaigns c LEFT JOIN media m ON m.sha256 = c.media_sha256"
                    " WHERE c.id::text = lower($1)",
                    1, params);
    if (PQntuples(r) == 0) {
        fprintf(stderr, "wacast-ctl: no campaign %s\n", campaign);
        PQclear(r);
        PQfinish(c);
        return 1;
    }
    printf("campaign   %s (%s)\n", PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    int rc = 0;
    if (PQgetvalue(r, 0, 3)[0] == 't') {
        printf("media_url  none\n");
    } else {
        long len = strtol(PQgetvalue(r, 0, 5), NULL, 10);
        const char *url = PQgetvalue(r, 0, 4);
        if (strncmp(url, "data:", 5) == 0)
            printf("media_url  data: URL, %ld characters\n", len);
        else
            printf("media_url  %s%s\n", url, len > 120 ? "..." : "");
        if (PQgetvalue(r, 0, 6)[0]) {
            printf("prepared   media:%s\n", PQgetvalue(r, 0, 6));
            printf("jpeg       %s bytes, %sx%s, quality %s\n", PQgetvalue(r, 0, 7),
                   PQgetvalue(r, 0, 8), PQgetvalue(r, 0, 9), PQgetvalue(r, 0, 10));
            printf("source     %s, %s bytes, %sx%s\n", PQgetvalue(r, 0, 11), PQgetvalue(r, 0, 12),
                   PQgetvalue(r, 0, 13), PQgetvalue(r, 0, 14));
            printf("stored     %s\n", PQgetvalue(r, 0, 15));
        } else {
            printf("prepared   no%s%s\n", PQgetvalue(r, 0, 2)[0] ? ": " : "", PQgetvalue(r, 0, 2));
            rc = 1;
        }
    }
    PQclear(r);
    PQfinish(c);
    return rc;
}

/* Sequences with their counters and, per step, how many contacts passed it. */
#define SEQUENCES_SQL                                                                              \
    "SELECT s.id, s.name, s.status, s.\"trigger\", s.enrolled_count, s.active_count,"              \
    " s.completed_count, s.stopped_count, s.failed_count,"                                         \
    " coalesce((SELECT string_agg(st.step_number || ':' || (SELECT count(*) FROM"                  \
    "  sequence_contacts c WHERE c.sequence_id = s.id AND c.current_step >= st.step_number),"      \
    "  ' ' ORDER BY st.step_number) FROM sequence_steps st WHERE st.sequence_id = s.id), ''),"     \
    " coalesce(s.status_reason, '') FROM sequences s"

static int cmd_sequences(void)
{
    PGconn *c = connect_db();
    PGresult *r = exec_or_die(c, SEQUENCES_SQL " ORDER BY s.created_at DESC LIMIT 50", 0, NULL);
    printf("%-36s  %-16s %-8s %-12s %8s %8s %9s %8s %7s  %s\n", "id", "name", "status", "trigger",
           "enrolled", "active", "completed", "stopped", "failed", "passed step:contacts  reason");
    for (int i = 0; i < PQntuples(r); i++)
        printf("%-36s  %-16.16s %-8s %-12.12s %8s %8s %9s %8s %7s  %s  %s\n", PQgetvalue(r, i, 0),
               PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 4),
               PQgetvalue(r, i, 5), PQgetvalue(r, i, 6), PQgetvalue(r, i, 7), PQgetvalue(r, i, 8),
               PQgetvalue(r, i, 9), PQgetvalue(r, i, 10));
    PQclear(r);
    PQfinish(c);
    return 0;
}

/* Prints a sequence's progress every second until it has enrolled contacts
 * and none is active any more (or it was refused, or the time-out). */
static int cmd_watch_sequence(const char *id, long timeout_s)
{
    PGconn *c = connect_db();
    signal(SIGINT, on_sigint);
    const char *params[] = {id};
    time_t start = time(NULL);
    int rc = 1;
    while (!interrupted) {
        PGresult *r = exec_or_die(c, SEQUENCES_SQL " WHERE s.id::text = $1", 1, params);
        if (PQntuples(r) == 0) {
            fprintf(stderr, "wacast-ctl: no sequence %s\n", id);
            PQclear(r);
            break;
        }
        printf("\r%s: %s enrolled, %s active, %s completed, %s stopped, %s failed; passed %s   ",
               PQgetvalue(r, 0, 2), PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5), PQgetvalue(r, 0, 6),
               PQgetvalue(r, 0, 7), PQgetvalue(r, 0, 8), PQgetvalue(r, 0, 9));
        fflush(stdout);
        bool refused = !strcmp(PQgetvalue(r, 0, 2), "draft") && PQgetvalue(r, 0, 10)[0];
        bool done = atol(PQgetvalue(r, 0, 4)) > 0 && atol(PQgetvalue(r, 0, 5)) == 0;
        if (refused)
            printf("\nrefused: %s", PQgetvalue(r, 0, 10));
        PQclear(r);
        if (refused || done) {
            rc = refused ? 1 : 0;
            break;
        }
        if (timeout_s > 0 && time(NULL) - start > timeout_s) {
            printf("\ntimed out");
            break;
        }
        sleep(1);
    }
    printf("\n");
    PQfinish(c);
    return rc;
}

static wc_seal_keys *seal_keys(void)
{
    wc_seal_keys *k = NULL;
    char err[256];
    if (wc_seal_init_env(&k, err, sizeof err) < 0) {
        fprintf(stderr, "wacast-ctl: %s\n", err);
        exit(1);
    }
    return k;
}

/* The device id as the daemons read it (user_devices.id::text), which the
 * sealed value is bound to; NULL when there is no such device. */
static char *canonical_device_id(PGconn *c, const char *device)
{
    const char *params[] = {device};
    PGresult *r =
        exec_or_die(c, "SELECT id::text FROM user_devices WHERE id::text = lower($1)", 1, params);
    char *id = PQntuples(r) ? strdup(PQgetvalue(r, 0, 0)) : NULL;
    PQclear(r);
    return id;
}

/* Reads a device's credentials (JSON) from stdin, seals them for that device
 * and stores them. */
static int cmd_set_credentials(const char *device)
{
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, stdin);
    buf[n] = '\0';
    json_error_t jerr;
    json_t *j = json_loads(buf, 0, &jerr);
    if (!j || !json_is_object(j)) {
        fprintf(stderr, "wacast-ctl: credentials must be a JSON object on stdin (%s)\n", jerr.text);
        json_decref(j);
        sodium_memzero(buf, sizeof buf);
        return 2;
    }
    json_decref(j);
    wc_seal_keys *k = seal_keys();
    PGconn *c = connect_db();
    char *id = canonical_device_id(c, device);
    if (!id) {
        sodium_memzero(buf, sizeof buf);
        PQfinish(c);
        wc_seal_keys_free(k);
        fprintf(stderr, "wacast-ctl: no device %s\n", device);
        return 1;
    }
    uint8_t *sealed = NULL;
    size_t len = 0;
    if (wc_seal(k, id, buf, n, &sealed, &len) < 0) {
        fprintf(stderr, "wacast-ctl: out of memory\n");
        return 1;
    }
    sodium_memzero(buf, sizeof buf);
    char *hex = malloc(len * 2 + 3);
    hex[0] = '\\';
    hex[1] = 'x';
    sodium_bin2hex(hex + 2, len * 2 + 1, sealed, len);
    const char *params[] = {id, hex};
    PGresult *r = exec_or_die(
        c, "UPDATE user_devices SET credentials = $2::bytea WHERE id = $1 RETURNING id", 2, params);
    int found = PQntuples(r);
    PQclear(r);
    PQfinish(c);
    free(hex);
    free(sealed);
    wc_seal_keys_free(k);
    if (!found) {
        fprintf(stderr, "wacast-ctl: no device %s\n", id);
        free(id);
        return 1;
    }
    printf("credentials of device %s sealed and stored\n", id);
    free(id);
    return 0;
}

/* Re-seals every device's credentials with the current key, in the current
 * format bound to the row's id: after a key rotation, and after an upgrade
 * from the legacy (unbound) format, which it opens whatever
 * WACAST_SEAL_LEGACY says. A row changed meanwhile (set-credentials) is
 * left as it is. A value that opens for no key under its row's id (copied
 * from another row, sealed with a lost key) counts as failed. */
static int cmd_reseal(void)
{
    wc_seal_keys *k = seal_keys();
    char err[160];
    if (wc_seal_set_legacy(k, "allow", err, sizeof err) < 0)
        abort();
    PGconn *c = connect_db();
    PGresult *r = exec_or_die(c,
                              "SELECT id::text, encode(credentials, 'hex') FROM user_devices"
                              " WHERE credentials IS NOT NULL",
                              0, NULL);
    int done = 0, current = 0, failed = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        const char *id = PQgetvalue(r, i, 0), *hex = PQgetvalue(r, i, 1);
        size_t hexlen = strlen(hex), len = 0;
        uint8_t *sealed = malloc(hexlen / 2 + 1);
        if (sodium_hex2bin(sealed, hexlen / 2 + 1, hex, hexlen, NULL, &len, NULL) != 0) {
            fprintf(stderr, "device %s: credentials are not valid sealed bytes\n", id);
            free(sealed);
            failed++;
            continue;
        }
        if (wc_seal_is_current(k, id, sealed, len)) {
            free(sealed);
            current++;
            continue;
        }
        char *plain = NULL;
        size_t plainlen = 0;
        if (wc_unseal(k, id, sealed, len, &plain, &plainlen, err, sizeof err) < 0) {
            fprintf(stderr, "device %s: %s\n", id, err);
            free(sealed);
            failed++;
            continue;
        }
        uint8_t *fresh = NULL;
        size_t freshlen = 0;
        if (wc_seal(k, id, plain, plainlen, &fresh, &freshlen) == 0) {
            char *out = malloc(freshlen * 2 + 3);
            out[0] = '\\';
            out[1] = 'x';
            sodium_bin2hex(out + 2, freshlen * 2 + 1, fresh, freshlen);
            const char *params[] = {id, out, hex};
            PGresult *u =
                exec_or_die(c,
                            "UPDATE user_devices SET credentials = $2::bytea WHERE id = $1"
                            " AND credentials = decode($3, 'hex') RETURNING id",
                            3, params);
            if (PQntuples(u))
                done++;
            else
                fprintf(stderr, "device %s: credentials changed meanwhile; left as they are\n", id);
            PQclear(u);
            free(out);
            free(fresh);
        } else {
            failed++;
        }
        wc_seal_plain_free(plain, plainlen);
        free(sealed);
    }
    PQclear(r);
    PQfinish(c);
    wc_seal_keys_free(k);
    printf("re-sealed %d, already current %d, failed %d\n", done, current, failed);
    return failed ? 1 : 0;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: wacast-ctl COMMAND\n\n"
            "  migrate                      apply sql/ migrations (each once)\n"
            "  demo-seed [--leads N] [--devices D] [--min-delay S] [--max-delay S] [--sequence]\n"
            "                               one demo user with simulated devices, leads and a\n"
            "                               campaign due now (or, with --sequence, an active\n"
            "                               3-step drip sequence); prints its id\n"
            "  watch CAMPAIGN [TIMEOUT_S]   live progress until the campaign ends\n"
            "  campaigns                    the latest campaigns and their counts\n"
            "  media CAMPAIGN               the campaign's prepared image: sha256, size,\n"
            "                               dimensions, source; or why it has none\n"
            "  sequences                    drip sequences: counters, contacts past each step\n"
            "  watch-sequence ID [TIMEOUT_S] live progress until no contact is active\n"
            "  keygen                       print a new WACAST_SECRET_KEY\n"
            "  set-credentials DEVICE       seal the JSON on stdin with WACAST_SECRET_KEY, bound\n"
            "                               to the device, and store it as its credentials\n"
            "  reseal                       re-seal every device's credentials with the current\n"
            "                               key, bound to its row (after rotating:\n"
            "                               WACAST_SECRET_KEY_PREVIOUS=old; after upgrading\n"
            "                               from the unbound format, before\n"
            "                               WACAST_SEAL_LEGACY=refuse)\n\n"
            "Settings: DATABASE_URL (default postgresql://localhost/wacast).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "migrate"))
        return cmd_migrate();
    if (!strcmp(argv[1], "demo-seed"))
        return cmd_demo_seed(argc - 2, argv + 2);
    if (!strcmp(argv[1], "watch") && argc >= 3)
        return cmd_watch(argv[2], argc >= 4 ? strtol(argv[3], NULL, 10) : 0);
    if (!strcmp(argv[1], "campaigns"))
        return cmd_campaigns();
    if (!strcmp(argv[1], "media") && argc >= 3)
        return cmd_media(argv[2]);
    if (!strcmp(argv[1], "sequences"))
        return cmd_sequences();
    if (!strcmp(argv[1], "watch-sequence") && argc >= 3)
        return cmd_watch_sequence(argv[2], argc >= 4 ? strtol(argv[3], NULL, 10) : 0);
    if (sodium_init() < 0)
        return 1;
    if (!strcmp(argv[1], "keygen")) {
        char key[65];
        wc_seal_keygen(key);
        printf("%s\n", key);
        return 0;
    }
    if (!strcmp(argv[1], "set-credentials") && argc >= 3)
        return cmd_set_credentials(argv[2]);
    if (!strcmp(argv[1], "reseal"))
        return cmd_reseal();
    usage(stderr);
    return 2;
}
