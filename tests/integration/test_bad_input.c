/* Bad input gets its defined outcome, is logged once, and never stops a daemon
 * or another campaign. On real redis-server and PostgreSQL with one
 * scheduler, one dispatcher and one sender, the test inserts in one
 * transaction a good campaign together with campaigns that are each wrong in
 * one way (empty message, unknown time zone, delays out of order or half set,
 * negative limit, due a month ago, unknown target_status, template errors, no
 * eligible lead), and checks each one's final status and status_reason; an
 * INSERT for an unknown user is refused by the foreign key (SQLSTATE 23503).
 * The good campaign's leads include invalid phone numbers (skipped with
 * invalid_phone and a message naming the number) and leads of a device whose
 * platform no transport knows (the device goes offline with the reason; its
 * leads get their message from another online device of the same user). The
 * good campaign still sends every valid lead exactly once, a campaign inserted
 * after the bad ones still runs, each failure reason is in the scheduler log
 * exactly once, and every daemon is still alive at the end. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scenario.h"

#define NVALID 12
#define NDEV 3 /* sim devices of user A; a fourth has platform 'telepathy' */
#define FINAL_TIMEOUT_MS 120000

enum match { EXACT, PREFIX, CONTAINS };

typedef struct bad_case {
    const char *label;
    bool user_b;         /* the user whose leads are all opted out */
    const char *message; /* SQL literal */
    const char *cols;    /* extra columns, each with a leading comma */
    const char *vals;    /* their values */
    const char *status;  /* final status wanted */
    enum match how;
    const char *reason; /* status_reason wanted (see how) */
} bad_case;

static bad_case cases[] = {
    {"empty message", false, "''", "", "", "failed", EXACT, "empty message"},
    {"blank message", false, "'   '", "", "", "failed", EXACT, "empty message"},
    {"unknown time zone", false, "'Hi {{name}}'", ", campaign_date, time_schedule, time_zone",
     ", current_date, '00:00', 'Mars/Olympus'", "failed", EXACT,
     "unknown time zone 'Mars/Olympus'"},
    {"min above max", false, "'Hi {{name}}'", ", min_delay_seconds, max_delay_seconds", ", 5, 2",
     "failed", EXACT, "min_delay_seconds is greater than max_delay_seconds"},
    {"only min delay", false, "'Hi {{name}}'", ", min_delay_seconds", ", 1", "failed", EXACT,
     "min_delay_seconds and max_delay_seconds must be set together"},
    {"only max delay", false, "'Hi {{name}}'", ", max_delay_seconds", ", 3", "failed", EXACT,
     "min_delay_seconds and max_delay_seconds must be set together"},
    {"limit -1", false, "'Hi {{name}}'", ", \"limit\"", ", -1", "failed", EXACT,
     "limit must not be negative"},
    {"limit -3", false, "'Hi {{name}}'", ", \"limit\"", ", -3", "failed", EXACT,
     "limit must not be negative"},
    {"30 days late", false, "'Hi {{name}}'", ", scheduled_at", ", now() - interval '30 days'",
     "failed", PREFIX, "scheduled 720 hours ago"},
    {"unknown target_status", false, "'Hi {{name}}'", ", target_status", ", 'vip'", "failed",
     CONTAINS, "'vip'"},
    {"unknown placeholder", false, "'Hi {{nmae}}'", "", "", "failed", EXACT,
     "template error: unknown placeholder 'nmae' at offset 5"},
    {"unbalanced brace", false, "'Hi {there'", "", "", "failed", PREFIX,
     "template error: unbalanced '{'"},
    {"all leads opted out", true, "'Hi {{name}}'", "", "", "finished", EXACT, "no eligible leads"},
    {"niche nobody has", false, "'Hi {{name}}'", ", niche", ", 'astronomy'", "finished", EXACT,
     "no eligible leads"},
};
#define NCASES (int)(sizeof cases / sizeof cases[0])
static char case_ids[NCASES][40];

/* Invalid phones of user A, and a word the reason must contain. */
static const struct {
    const char *raw;
    const char *why;
} bad_phones[] = {
    {"12ab", "character"},      {"123", "short"},         {"", "empty"},
    {"+0123456789", "country"}, {"++60 12", "character"},
};
#define NBADPHONES (int)(sizeof bad_phones / sizeof bad_phones[0])

static wt_env env;
static PGconn *db;
static char user_a[40], user_b[40];
static char devices[NDEV][40];
static char telepathy_dev[40];
static struct {
    char id[40];
    char name[16];
    char e164[20];
    bool on_telepathy;
} leads[NVALID];
static char good_id[40], later_id[40];
static sc_send *sends;
static size_t nsends;

static void insert_id(char *out, size_t outlen, PGresult *r)
{
    snprintf(out, outlen, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

static void populate(void)
{
    insert_id(user_a, sizeof user_a,
              wt_sql(db, "INSERT INTO users (name) VALUES ('a') RETURNING id"));
    insert_id(user_b, sizeof user_b,
              wt_sql(db, "INSERT INTO users (name) VALUES ('b') RETURNING id"));
    for (int k = 0; k < NDEV; k++)
        insert_id(devices[k], sizeof devices[k],
                  wt_sql(db,
                         "INSERT INTO user_devices (user_id, device_name, platform,"
                         " min_delay_seconds, max_delay_seconds) VALUES ('%s', 'a-%d', 'sim',"
                         " 0.01, 0.02) RETURNING id",
                         user_a, k));
    insert_id(telepathy_dev, sizeof telepathy_dev,
              wt_sql(db,
                     "INSERT INTO user_devices (user_id, device_name, platform, min_delay_seconds,"
                     " max_delay_seconds) VALUES ('%s', 'a-mind', 'telepathy', 0.01, 0.02)"
                     " RETURNING id",
                     user_a));
    char dev_b[40];
    insert_id(dev_b, sizeof dev_b,
              wt_sql(db,
                     "INSERT INTO user_devices (user_id, device_name, platform, min_delay_seconds,"
                     " max_delay_seconds) VALUES ('%s', 'b-0', 'sim', 0.01, 0.02) RETURNING id",
                     user_b));
    /* Valid leads, every fourth one on the telepathy device. */
    for (int i = 0; i < NVALID; i++) {
        leads[i].on_telepathy = i % 4 == 3;
        snprintf(leads[i].name, sizeof leads[i].name, "Lead %d", i);
        snprintf(leads[i].e164, sizeof leads[i].e164, "+6012300%04d", i + 1);
        insert_id(leads[i].id, sizeof leads[i].id,
                  wt_sql(db,
                         "INSERT INTO leads (user_id, device_id, name, phone, niche)"
                         " VALUES ('%s', '%s', '%s', '%s', 'food') RETURNING id",
                         user_a, leads[i].on_telepathy ? telepathy_dev : devices[i % NDEV],
                         leads[i].name, leads[i].e164));
    }
    for (int i = 0; i < NBADPHONES; i++)
        PQclear(wt_sql(db,
                       "INSERT INTO leads (user_id, device_id, name, phone) VALUES ('%s', '%s',"
                       " 'Bad %d', '%s')",
                       user_a, devices[0], i, bad_phones[i].raw));
    for (int i = 0; i < 3; i++)
        PQclear(wt_sql(db,
                       "INSERT INTO leads (user_id, device_id, name, phone, opted_out_at)"
                       " VALUES ('%s', '%s', 'Out %d', '+6019000000%d', now())",
                       user_b, dev_b, i, i));
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    populate();
    /* All at once: the bad campaigns and the good one in one transaction. The
     * good one is due a second after the others, so the scheduler meets the
     * bad ones first. */
    PQclear(wt_sql(db, "BEGIN"));
    for (int k = 0; k < NCASES; k++) {
        bad_case *bc = &cases[k];
        insert_id(case_ids[k], sizeof case_ids[k],
                  wt_sql(db,
                         "INSERT INTO campaigns (user_id, title, message%s) VALUES ('%s', '%s',"
                         " %s%s) RETURNING id",
                         bc->cols, bc->user_b ? user_b : user_a, bc->label, bc->message, bc->vals));
    }
    insert_id(good_id, sizeof good_id,
              wt_sql(db,
                     "INSERT INTO campaigns (user_id, title, message, scheduled_at) VALUES"
                     " ('%s', 'good', 'Hello {{name}}', now() + interval '1 second') RETURNING id",
                     user_a));
    PQclear(wt_sql(db, "COMMIT"));

    sc_start_daemons(&env, 1, NULL);
    const char *ids[NCASES + 1];
    for (int k = 0; k < NCASES; k++)
        ids[k] = case_ids[k];
    ids[NCASES] = good_id;
    if (!sc_wait_campaigns_final(db, ids, NCASES + 1, FINAL_TIMEOUT_MS)) {
        fprintf(stderr, "campaigns did not reach a final state in %d ms:\n", FINAL_TIMEOUT_MS);
        PGresult *r =
            wt_sql(db, "SELECT title, status, status_reason FROM campaigns ORDER BY title");
        for (int i = 0; i < PQntuples(r); i++)
            fprintf(stderr, "  %-24s %-10s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                    PQgetvalue(r, i, 2));
        PQclear(r);
        wt_dump_logs(&env, 60);
        return -1;
    }
    sends = sc_read_sends(&env, &nsends);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sc_sends_free(sends, nsends);
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

static bool reason_ok(const bad_case *bc, const char *got)
{
    switch (bc->how) {
    case EXACT:
        return !strcmp(got, bc->reason);
    case PREFIX:
        return !strncmp(got, bc->reason, strlen(bc->reason));
    default:
        return strstr(got, bc->reason) != NULL;
    }
}

/* Each bad campaign ends in its defined status with its defined reason, with
 * no message row and total_count 0. */
static void test_each_bad_campaign_outcome(void **state)
{
    (void)state;
    int bad = 0;
    for (int k = 0; k < NCASES; k++) {
        const bad_case *bc = &cases[k];
        PGresult *r = wt_sql(db,
                             "SELECT status, coalesce(status_reason, '<null>'), total_count,"
                             " finished_at IS NOT NULL,"
                             " (SELECT count(*) FROM broadcast_messages WHERE campaign_id = c.id)"
                             " FROM campaigns c WHERE id = '%s'",
                             case_ids[k]);
        const char *status = PQgetvalue(r, 0, 0), *reason = PQgetvalue(r, 0, 1);
        long total = atol(PQgetvalue(r, 0, 2)), rows = atol(PQgetvalue(r, 0, 4));
        bool finished_at = PQgetvalue(r, 0, 3)[0] == 't';
        if (strcmp(status, bc->status) || !reason_ok(bc, reason) || total != 0 || rows != 0 ||
            !finished_at) {
            fprintf(stderr,
                    "%s: got %s '%s' (total_count %ld, %ld message rows, finished_at %s);"
                    " want %s with reason %s '%s', no message\n",
                    bc->label, status, reason, total, rows, finished_at ? "set" : "NULL",
                    bc->status,
                    bc->how == EXACT    ? "="
                    : bc->how == PREFIX ? "starting"
                                        : "containing",
                    bc->reason);
            bad++;
        }
        PQclear(r);
    }
    /* The unknown target_status reason also names the column. */
    for (int k = 0; k < NCASES; k++) {
        if (!strcmp(cases[k].reason, "'vip'")) {
            PGresult *r =
                wt_sql(db, "SELECT status_reason FROM campaigns WHERE id = '%s'", case_ids[k]);
            if (!strstr(PQgetvalue(r, 0, 0), "target_status")) {
                fprintf(stderr, "unknown target_status: reason '%s' does not name target_status\n",
                        PQgetvalue(r, 0, 0));
                bad++;
            }
            PQclear(r);
        }
    }
    if (bad)
        wt_dump_logs(&env, 40);
    assert_int_equal(bad, 0);
}

/* A campaign for a user that does not exist never gets in: the foreign key
 * refuses it with foreign_key_violation. */
static void test_unknown_user_refused(void **state)
{
    (void)state;
    PGresult *r = PQexec(db, "INSERT INTO campaigns (user_id, title, message)"
                             " VALUES (gen_random_uuid(), 'nobody', 'Hi {{name}}')");
    const char *sqlstate = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    if (PQresultStatus(r) != PGRES_FATAL_ERROR || !sqlstate || strcmp(sqlstate, "23503") != 0)
        fprintf(stderr, "INSERT for an unknown user: status %s, SQLSTATE %s: %s\n",
                PQresStatus(PQresultStatus(r)), sqlstate ? sqlstate : "(none)", PQerrorMessage(db));
    assert_int_equal(PQresultStatus(r), PGRES_FATAL_ERROR);
    assert_non_null(sqlstate);
    assert_string_equal(sqlstate, "23503");
    PQclear(r);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM campaigns WHERE title = 'nobody'"), 0);
}

static const char *device_user(const char *device_id)
{
    for (int k = 0; k < NDEV; k++)
        if (!strcmp(devices[k], device_id))
            return "a-sim";
    if (!strcmp(device_id, telepathy_dev))
        return "a-telepathy";
    return "other";
}

/* Checks one finished good campaign: every valid lead exactly once with its
 * text from a sim device of user A, the invalid phones skipped, counters equal. */
static int check_good_campaign(const char *id, const char *greeting)
{
    int bad = 0;
    PGresult *r = wt_sql(db,
                         "SELECT status, coalesce(status_reason, ''), total_count, sent_count,"
                         " failed_count, skipped_count FROM campaigns WHERE id = '%s'",
                         id);
    if (strcmp(PQgetvalue(r, 0, 0), "finished") ||
        atoi(PQgetvalue(r, 0, 2)) != NVALID + NBADPHONES || atoi(PQgetvalue(r, 0, 3)) != NVALID ||
        atoi(PQgetvalue(r, 0, 4)) != 0 || atoi(PQgetvalue(r, 0, 5)) != NBADPHONES) {
        fprintf(stderr,
                "campaign %s: %s '%s' total %s sent %s failed %s skipped %s;"
                " want finished, total %d, sent %d, failed 0, skipped %d\n",
                id, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2),
                PQgetvalue(r, 0, 3), PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5), NVALID + NBADPHONES,
                NVALID, NBADPHONES);
        bad++;
    }
    PQclear(r);
    long sent_rows = wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                 " AND status = 'sent' AND sent_at IS NOT NULL",
                                 id);
    if (sent_rows != NVALID) {
        fprintf(stderr, "campaign %s: %ld sent rows, want %d\n", id, sent_rows, NVALID);
        bad++;
    }
    for (int i = 0; i < NVALID; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s %s", greeting, leads[i].name);
        int got = 0;
        for (size_t k = 0; k < nsends; k++) {
            if (strcmp(sends[k].campaign, id) || strcmp(sends[k].to, leads[i].e164))
                continue;
            got++;
            if (strcmp(sends[k].text, want)) {
                fprintf(stderr, "%s got \"%s\", want \"%s\"\n", leads[i].e164, sends[k].text, want);
                bad++;
            }
            if (strcmp(device_user(sends[k].device), "a-sim")) {
                fprintf(stderr, "%s sent from device %s (%s), want a sim device of user A\n",
                        leads[i].e164, sends[k].device, device_user(sends[k].device));
                bad++;
            }
        }
        if (got != 1) {
            fprintf(stderr, "campaign %s: %s received %d messages, want 1\n", id, leads[i].e164,
                    got);
            bad++;
        }
    }
    size_t in_record = 0;
    for (size_t k = 0; k < nsends; k++)
        in_record += !strcmp(sends[k].campaign, id);
    if (in_record != NVALID) {
        fprintf(stderr, "campaign %s: %zu sends in the sim record, want %d\n", id, in_record,
                NVALID);
        bad++;
    }
    return bad;
}

/* The good campaign inserted with the bad ones sends every valid lead once. */
static void test_good_campaign_unaffected(void **state)
{
    (void)state;
    int bad = check_good_campaign(good_id, "Hello");
    if (bad)
        wt_dump_logs(&env, 40);
    assert_int_equal(bad, 0);
}

/* Invalid phones are skipped with invalid_phone and a message that names the
 * number and why it is invalid. */
static void test_invalid_phones_skipped(void **state)
{
    (void)state;
    int bad = 0;
    for (int i = 0; i < NBADPHONES; i++) {
        PGresult *r = wt_sql(db,
                             "SELECT m.status, coalesce(m.error_code, '<null>'),"
                             " coalesce(m.error_message, '<null>') FROM broadcast_messages m"
                             " JOIN leads l ON l.id = m.lead_id"
                             " WHERE m.campaign_id = '%s' AND l.phone = '%s'",
                             good_id, bad_phones[i].raw);
        if (PQntuples(r) != 1) {
            fprintf(stderr, "phone '%s': %d message rows, want 1\n", bad_phones[i].raw,
                    PQntuples(r));
            bad++;
            PQclear(r);
            continue;
        }
        const char *status = PQgetvalue(r, 0, 0), *code = PQgetvalue(r, 0, 1),
                   *msg = PQgetvalue(r, 0, 2);
        char named[64];
        snprintf(named, sizeof named, "'%s'", bad_phones[i].raw);
        const char *after = strstr(msg, named);
        bool names_number = after != NULL;
        bool gives_reason = names_number && strstr(after + strlen(named), bad_phones[i].why);
        if (strcmp(status, "skipped") || strcmp(code, "invalid_phone") || !names_number ||
            !gives_reason) {
            fprintf(stderr,
                    "phone '%s': %s, error_code %s, error_message \"%s\"; want skipped,"
                    " invalid_phone, a message naming %s and saying '%s'\n",
                    bad_phones[i].raw, status, code, msg, named, bad_phones[i].why);
            bad++;
        }
        PQclear(r);
    }
    assert_int_equal(bad, 0);
}

typedef struct device_arg {
    const char *id;
    char status[32];
    char reason[256];
} device_arg;

static bool device_offline_with_reason(void *arg)
{
    device_arg *a = arg;
    PGresult *r = wt_sql(db,
                         "SELECT status, coalesce(status_reason, '<null>') FROM user_devices"
                         " WHERE id = '%s'",
                         a->id);
    snprintf(a->status, sizeof a->status, "%s", PQgetvalue(r, 0, 0));
    snprintf(a->reason, sizeof a->reason, "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
    return !strcmp(a->status, "offline") && !strcmp(a->reason, "unknown platform 'telepathy'");
}

/* A device with a platform no transport knows is offline with the reason, and
 * its leads' messages go out from the user's other (online) devices. */
static void test_unknown_platform_device(void **state)
{
    (void)state;
    device_arg a = {.id = telepathy_dev};
    if (!wt_wait_for(device_offline_with_reason, &a, 20000)) {
        fprintf(stderr,
                "telepathy device: status %s, reason '%s'; want offline, \"unknown platform"
                " 'telepathy'\"\n",
                a.status, a.reason);
        wt_dump_logs(&env, 40);
        fail();
    }
    int bad = 0;
    for (int i = 0; i < NVALID; i++) {
        if (!leads[i].on_telepathy)
            continue;
        PGresult *r = wt_sql(db,
                             "SELECT status, coalesce(device_id::text, '') FROM broadcast_messages"
                             " WHERE campaign_id = '%s' AND lead_id = '%s'",
                             good_id, leads[i].id);
        if (PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 0), "sent") ||
            strcmp(device_user(PQgetvalue(r, 0, 1)), "a-sim")) {
            fprintf(stderr, "lead %s on the telepathy device: %s from device '%s'\n", leads[i].name,
                    PQntuples(r) ? PQgetvalue(r, 0, 0) : "no row",
                    PQntuples(r) ? PQgetvalue(r, 0, 1) : "");
            bad++;
        }
        PQclear(r);
    }
    for (size_t k = 0; k < nsends; k++) {
        if (!strcmp(sends[k].device, telepathy_dev)) {
            fprintf(stderr, "the sim record has a send from the telepathy device\n");
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

/* A campaign inserted after all the bad ones were handled still runs. */
static void test_later_campaign_runs(void **state)
{
    (void)state;
    insert_id(later_id, sizeof later_id,
              wt_sql(db,
                     "INSERT INTO campaigns (user_id, title, message, scheduled_at) VALUES"
                     " ('%s', 'later', 'Bye {{name}}', now()) RETURNING id",
                     user_a));
    const char *ids[] = {later_id};
    if (!sc_wait_campaigns_final(db, ids, 1, FINAL_TIMEOUT_MS)) {
        fprintf(stderr, "the later campaign did not finish\n");
        wt_dump_logs(&env, 40);
        fail();
    }
    sc_sends_free(sends, nsends);
    sends = sc_read_sends(&env, &nsends);
    int bad = check_good_campaign(later_id, "Bye");
    if (bad)
        wt_dump_logs(&env, 40);
    assert_int_equal(bad, 0);
}

/* Lines of a log file that contain both needles. */
static int count_lines(const char *path, const char *a, const char *b)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) >= 0)
        n += strstr(line, a) && strstr(line, b);
    free(line);
    fclose(f);
    return n;
}

/* Each campaign's outcome is in the scheduler log exactly once (with its id
 * and reason), and the unknown platform once in the sender log. */
static void test_logged_once(void **state)
{
    (void)state;
    char path[600];
    snprintf(path, sizeof path, "%s/scheduler-1.log", env.dir);
    int bad = 0;
    for (int k = 0; k < NCASES; k++) {
        PGresult *r =
            wt_sql(db, "SELECT status_reason FROM campaigns WHERE id = '%s'", case_ids[k]);
        char reason[512];
        snprintf(reason, sizeof reason, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        int n = count_lines(path, case_ids[k], reason);
        if (n != 1) {
            fprintf(stderr, "%s: %d scheduler log lines with campaign %s and \"%s\", want 1\n",
                    cases[k].label, n, case_ids[k], reason);
            bad++;
        }
    }
    snprintf(path, sizeof path, "%s/sender-1.log", env.dir);
    int n = count_lines(path, telepathy_dev, "unknown platform 'telepathy'");
    if (n != 1) {
        fprintf(stderr, "%d sender log lines with device %s and the unknown platform, want 1\n", n,
                telepathy_dev);
        bad++;
    }
    if (bad)
        wt_dump_logs(&env, 80);
    assert_int_equal(bad, 0);
}

/* None of it stopped a daemon. */
static void test_daemons_alive(void **state)
{
    (void)state;
    int dead = 0;
    for (int i = 0; i < env.nchildren; i++) {
        if (env.children[i].pid <= 0 || !wt_alive(&env, env.children[i].pid)) {
            fprintf(stderr, "%s is not running\n", env.children[i].name);
            dead++;
        }
    }
    if (dead)
        wt_dump_logs(&env, 40);
    assert_int_equal(env.nchildren, 3);
    assert_int_equal(dead, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_bad_campaign_outcome),
        cmocka_unit_test(test_unknown_user_refused),
        cmocka_unit_test(test_good_campaign_unaffected),
        cmocka_unit_test(test_invalid_phones_skipped),
        cmocka_unit_test(test_unknown_platform_device),
        cmocka_unit_test(test_later_campaign_runs),
        cmocka_unit_test(test_logged_once),
        cmocka_unit_test(test_daemons_alive),
    };
    return cmocka_run_group_tests_name("bad_input", tests, setup, teardown);
}
