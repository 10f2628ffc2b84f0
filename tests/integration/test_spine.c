/* The spine end to end, on real redis-server and PostgreSQL with the real
 * daemons: 2 users, 20 sim devices (4 offline), 5,000 leads (the same phone
 * in several spellings, invalid phones, opted-out leads, both target
 * statuses, several niches) and 3 campaigns (one due for customers, one due
 * for all with a niche and a limit, one in the future). The expected messages
 * come from how the test generated the data; the sim record in Redis is what
 * the "providers" received; Postgres must agree with both.
 *
 * Run with an argument N to start N copies of each daemon (ctest runs 1 and 2). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"

#define MIN_DELAY 0.02
#define MAX_DELAY 0.08

static int copies = 1;

typedef struct expect {
    int lead;  /* index in world.leads */
    bool send; /* a message; else a skipped row (invalid phone) */
} expect;

typedef struct campaign_case {
    const char *label;
    char id[40];
    int user;
    const char *target; /* customer, prospect, all */
    const char *niche;  /* NULL: any */
    int limit;          /* -1: none */
    const char *tpl;
    expect *expected;
    int nexpected, nsend, nskip;
} campaign_case;

static wt_env env;
static sc_world world;
static PGconn *db;
static sc_send *sends;
static size_t nsends;
static campaign_case cases[2] = {
    {.label = "customers",
     .user = 0,
     .target = "customer",
     .niche = NULL,
     .limit = -1,
     .tpl = "Hello {{name}}, your {{niche | default \"special\"}} offer"},
    {.label = "all-tech-limit",
     .user = 1,
     .target = "all",
     .niche = "tech",
     .limit = 100,
     .tpl = "{Hi|Hello} {{name}}!"},
};
static char future_id[40];

static int cmp_lead_id(const void *a, const void *b)
{
    return strcmp(world.leads[*(const int *)a].id, world.leads[*(const int *)b].id);
}

/* What wacast must do for a campaign, derived from the generated data. */
static void compute_expected(campaign_case *cc)
{
    int *order = calloc((size_t)world.nleads, sizeof *order);
    int n = 0;
    for (int i = 0; i < world.nleads; i++)
        order[n++] = i;
    qsort(order, (size_t)n, sizeof *order, cmp_lead_id);
    cc->expected = calloc((size_t)world.nleads, sizeof *cc->expected);
    char(*seen)[20] = calloc((size_t)world.nleads, sizeof *seen);
    int nseen = 0, taken = 0;
    for (int k = 0; k < n; k++) {
        sc_lead *l = &world.leads[order[k]];
        if (l->user != cc->user || l->opted_out)
            continue;
        if (!strcmp(cc->target, "customer") && !l->customer)
            continue;
        if (!strcmp(cc->target, "prospect") && l->customer)
            continue;
        if (cc->niche && strcmp(l->niche, cc->niche) != 0)
            continue;
        if (cc->limit >= 0 && taken >= cc->limit)
            break;
        if (!l->e164[0]) {
            cc->expected[cc->nexpected++] = (expect){order[k], false};
            cc->nskip++;
            continue;
        }
        bool dup = false;
        for (int j = 0; j < nseen && !dup; j++)
            dup = !strcmp(seen[j], l->e164);
        if (dup)
            continue;
        snprintf(seen[nseen++], sizeof seen[0], "%s", l->e164);
        cc->expected[cc->nexpected++] = (expect){order[k], true};
        cc->nsend++;
        taken++;
    }
    free(seen);
    free(order);
}

static bool text_ok(const campaign_case *cc, const sc_lead *l, const char *text)
{
    char want[128];
    if (cc == &cases[0]) {
        snprintf(want, sizeof want, "Hello %s, your %s offer", l->name,
                 l->niche[0] ? l->niche : "special");
        return !strcmp(text, want);
    }
    snprintf(want, sizeof want, "Hi %s!", l->name);
    if (!strcmp(text, want))
        return true;
    snprintf(want, sizeof want, "Hello %s!", l->name);
    return !strcmp(text, want);
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    uint64_t seed = (uint64_t)time(NULL);
    const char *s = getenv("WACAST_TEST_SEED");
    if (s && *s)
        seed = strtoull(s, NULL, 10);
    fprintf(stderr, "test_spine: copies=%d seed=%llu (WACAST_TEST_SEED=%llu to replay)\n", copies,
            (unsigned long long)seed, (unsigned long long)seed);
    sc_populate(&world, db, seed, 2, 10, 2, 5000, MIN_DELAY, MAX_DELAY);
    for (int k = 0; k < 2; k++) {
        campaign_case *cc = &cases[k];
        char niche[32], limit[32];
        snprintf(niche, sizeof niche, cc->niche ? "'%s'" : "NULL", cc->niche);
        snprintf(limit, sizeof limit, cc->limit >= 0 ? "%d" : "NULL", cc->limit);
        PGresult *r;
        if (k == 0) {
            /* Due by wall-clock date and time in its own zone: today 00:00 in Kuala Lumpur. */
            r = wt_sql(
                db,
                "INSERT INTO campaigns (user_id, title, message, target_status, niche, \"limit\","
                " campaign_date, time_schedule, time_zone) VALUES ('%s', '%s', '%s', '%s', %s, %s,"
                " (now() AT TIME ZONE 'Asia/Kuala_Lumpur')::date, '00:00', 'Asia/Kuala_Lumpur')"
                " RETURNING id",
                world.users[cc->user], cc->label, cc->tpl, cc->target, niche, limit);
        } else {
            r = wt_sql(
                db,
                "INSERT INTO campaigns (user_id, title, message, target_status, niche, \"limit\","
                " scheduled_at) VALUES ('%s', '%s', '%s', '%s', %s, %s, now() - interval '1 "
                "minute')"
                " RETURNING id",
                world.users[cc->user], cc->label, cc->tpl, cc->target, niche, limit);
        }
        snprintf(cc->id, sizeof cc->id, "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        compute_expected(cc);
        fprintf(stderr, "campaign %s (%s): expect %d sends, %d skipped\n", cc->id, cc->label,
                cc->nsend, cc->nskip);
    }
    /* Tomorrow in its zone: must stay pending. */
    PGresult *r =
        wt_sql(db,
               "INSERT INTO campaigns (user_id, title, message, campaign_date, time_schedule,"
               " time_zone) VALUES ('%s', 'future', 'Hi {{name}}',"
               " (now() AT TIME ZONE 'Asia/Kuala_Lumpur')::date + 1, '09:00', 'Asia/Kuala_Lumpur')"
               " RETURNING id",
               world.users[0]);
    snprintf(future_id, sizeof future_id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);

    sc_start_daemons(&env, copies, NULL);
    const char *ids[] = {cases[0].id, cases[1].id};
    if (!sc_wait_campaigns_final(db, ids, 2, 240000)) {
        fprintf(stderr, "campaigns did not finish in time\n");
        wt_dump_logs(&env, 60);
        return -1;
    }
    sends = sc_read_sends(&env, &nsends);
    fprintf(stderr, "sim record: %zu sends\n", nsends);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sc_sends_free(sends, nsends);
    for (int k = 0; k < 2; k++)
        free(cases[k].expected);
    sc_world_free(&world);
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

static const sc_device *device_by_id(const char *id)
{
    for (int k = 0; k < world.ndevices; k++)
        if (!strcmp(world.devices[k].id, id))
            return &world.devices[k];
    return NULL;
}

static campaign_case *case_by_id(const char *id)
{
    for (int k = 0; k < 2; k++)
        if (!strcmp(cases[k].id, id))
            return &cases[k];
    return NULL;
}

/* Every eligible lead got exactly one message per due campaign, with its
 * text, from an online device of its own user; nobody else got anything. */
static void test_each_eligible_lead_once(void **state)
{
    (void)state;
    int failures = 0;
    for (int k = 0; k < 2; k++) {
        campaign_case *cc = &cases[k];
        for (int e = 0; e < cc->nexpected; e++) {
            if (!cc->expected[e].send)
                continue;
            const sc_lead *l = &world.leads[cc->expected[e].lead];
            int got = 0;
            for (size_t i = 0; i < nsends; i++) {
                if (strcmp(sends[i].campaign, cc->id) || strcmp(sends[i].to, l->e164))
                    continue;
                got++;
                if (!text_ok(cc, l, sends[i].text) && failures++ < 10)
                    fprintf(stderr, "%s: %s got text \"%s\"\n", cc->label, l->e164, sends[i].text);
                const sc_device *d = device_by_id(sends[i].device);
                if ((!d || d->user != cc->user || d->offline) && failures++ < 10)
                    fprintf(stderr,
                            "%s: %s sent from device %s (not an online device of user %d)\n",
                            cc->label, l->e164, sends[i].device, cc->user);
            }
            if (got != 1 && failures++ < 10)
                fprintf(stderr, "%s: %s (%s) received %d messages, want 1\n", cc->label, l->e164,
                        l->phone_raw, got);
        }
    }
    /* Nothing outside the expected sets. */
    for (size_t i = 0; i < nsends; i++) {
        campaign_case *cc = case_by_id(sends[i].campaign);
        bool expected = false;
        for (int e = 0; cc && e < cc->nexpected && !expected; e++)
            expected = cc->expected[e].send &&
                       !strcmp(world.leads[cc->expected[e].lead].e164, sends[i].to);
        if (!expected && failures++ < 10)
            fprintf(stderr, "unexpected send: campaign %s to %s\n", sends[i].campaign, sends[i].to);
    }
    if (copies > 1) {
        /* The copies shared the work: more than one sender appears in the record. */
        int distinct = 0;
        for (size_t i = 0; i < nsends; i++) {
            bool seen = false;
            for (size_t j = 0; j < i && !seen; j++)
                seen = !strcmp(sends[j].sender, sends[i].sender);
            distinct += !seen;
        }
        fprintf(stderr, "%d distinct senders in the record\n", distinct);
        if (distinct < 2)
            failures++;
    }
    size_t want = (size_t)(cases[0].nsend + cases[1].nsend);
    if (nsends != want) {
        fprintf(stderr, "record holds %zu sends, want %zu\n", nsends, want);
        failures++;
    }
    assert_int_equal(failures, 0);
}

/* Postgres statuses and counters equal the sim record. */
static void test_postgres_matches_record(void **state)
{
    (void)state;
    for (int k = 0; k < 2; k++) {
        campaign_case *cc = &cases[k];
        PGresult *r = wt_sql(db,
                             "SELECT status, total_count, sent_count, failed_count, skipped_count"
                             " FROM campaigns WHERE id = '%s'",
                             cc->id);
        assert_string_equal(PQgetvalue(r, 0, 0), "finished");
        assert_int_equal(atoi(PQgetvalue(r, 0, 1)), cc->nsend + cc->nskip);
        assert_int_equal(atoi(PQgetvalue(r, 0, 2)), cc->nsend);
        assert_int_equal(atoi(PQgetvalue(r, 0, 3)), 0);
        assert_int_equal(atoi(PQgetvalue(r, 0, 4)), cc->nskip);
        PQclear(r);
        assert_int_equal(
            wt_sql_long(db,
                        "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                        " AND status = 'skipped' AND error_code = 'invalid_phone'"
                        " AND error_message LIKE 'invalid phone number%%'",
                        cc->id),
            cc->nskip);
        assert_int_equal(wt_sql_long(db,
                                     "SELECT count(*) FROM broadcast_messages WHERE campaign_id = "
                                     "'%s' AND status = 'sent'",
                                     cc->id),
                         cc->nsend);
    }
    /* Row by row: the record's device, recipient and text are the row's. */
    int mismatches = 0;
    PGresult *r = wt_sql(
        db, "SELECT id, campaign_id, device_id, recipient_phone, content, sent_at IS NOT NULL"
            " FROM broadcast_messages WHERE status = 'sent'");
    assert_int_equal(PQntuples(r), (int)nsends);
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = atoll(PQgetvalue(r, i, 0));
        const sc_send *s = NULL;
        for (size_t k = 0; k < nsends && !s; k++)
            if (sends[k].msg == id)
                s = &sends[k];
        if (!s || strcmp(s->campaign, PQgetvalue(r, i, 1)) ||
            strcmp(s->device, PQgetvalue(r, i, 2)) || strcmp(s->to, PQgetvalue(r, i, 3)) ||
            strcmp(s->text, PQgetvalue(r, i, 4)) || PQgetvalue(r, i, 5)[0] != 't') {
            if (mismatches++ < 10)
                fprintf(stderr, "row %lld disagrees with the sim record\n", id);
        }
    }
    PQclear(r);
    assert_int_equal(mismatches, 0);
}

static void test_future_campaign_stays_pending(void **state)
{
    (void)state;
    PGresult *r = wt_sql(db, "SELECT status FROM campaigns WHERE id = '%s'", future_id);
    assert_string_equal(PQgetvalue(r, 0, 0), "pending");
    PQclear(r);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'",
                                 future_id),
                     0);
    for (size_t i = 0; i < nsends; i++)
        assert_string_not_equal(sends[i].campaign, future_id);
}

static int cmp_send_device_ts(const void *a, const void *b)
{
    const sc_send *x = a, *y = b;
    int c = strcmp(x->device, y->device);
    if (c)
        return c;
    return x->ts_us < y->ts_us ? -1 : x->ts_us > y->ts_us;
}

/* On every device consecutive sends are at least min_delay apart, and the
 * delays spread over [min, max] rather than sitting on one value. */
static void test_pacing(void **state)
{
    (void)state;
    sc_send *sorted = malloc(nsends * sizeof *sorted);
    memcpy(sorted, sends, nsends * sizeof *sorted);
    qsort(sorted, nsends, sizeof *sorted, cmp_send_device_ts);
    long long min_us = (long long)(MIN_DELAY * 1e6), max_us = (long long)(MAX_DELAY * 1e6);
    int too_short = 0, busy = 0, buckets[4] = {0};
    long long shortest = -1;
    for (size_t i = 1; i < nsends; i++) {
        if (strcmp(sorted[i].device, sorted[i - 1].device))
            continue;
        long long gap = sorted[i].ts_us - sorted[i - 1].ts_us;
        if (shortest < 0 || gap < shortest)
            shortest = gap;
        if (gap < min_us) {
            if (too_short++ < 10)
                fprintf(stderr, "device %s: %lld us between sends (min %lld)\n", sorted[i].device,
                        gap, min_us);
        }
        /* Gaps up to max (plus scheduling slack) are the device's pacing; longer
         * ones are an empty outbox. */
        if (gap >= min_us && gap <= max_us + 15000) {
            busy++;
            int b = (int)((gap - min_us) * 4 / (max_us - min_us + 1));
            buckets[b > 3 ? 3 : b]++;
        }
    }
    fprintf(stderr, "pacing: shortest gap %lld us, %d busy gaps, quarters %d/%d/%d/%d\n", shortest,
            busy, buckets[0], buckets[1], buckets[2], buckets[3]);
    free(sorted);
    assert_int_equal(too_short, 0);
    assert_true(busy > 200);
    for (int b = 0; b < 4; b++)
        assert_true(buckets[b] * 100 >= busy * 8); /* uniform gives 25% each */
}

/* SIGTERM stops every daemon with exit status 0 (under the sanitizers that
 * also means no leak and no undefined behaviour on the way out). */
static void test_daemons_stop_cleanly(void **state)
{
    (void)state;
    assert_int_equal(e2e_stop_daemons_cleanly(&env), 0);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        copies = atoi(argv[1]);
    if (copies < 1 || copies > 4)
        copies = 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_eligible_lead_once),
        cmocka_unit_test(test_postgres_matches_record),
        cmocka_unit_test(test_future_campaign_stays_pending),
        cmocka_unit_test(test_pacing),
        cmocka_unit_test(test_daemons_stop_cleanly),
    };
    return cmocka_run_group_tests_name(copies == 1 ? "spine" : "spine-2-copies", tests, setup,
                                       teardown);
}
