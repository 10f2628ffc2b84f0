/* Drip sequences refused at activation, and the time rules they run on.
 *
 * Each bad sequence (a step whose template does not compile, a step whose
 * image cannot be prepared (a corrupt data: URL, a loopback link refused by
 * the address guard), an unknown time zone, a window whose start equals its end, no steps, a
 * negative delay, a min delay above the max) is set to `active` with leads carrying its tag: the
 * scheduler sends it back to `draft` with the reason in status_reason, enrols nobody and writes no
 * message, while a good sequence of the same user, activated alongside, is accepted and enrols
 * exactly the leads whose tags hold its trigger as a whole tag. The next-step time is checked
 * across a DST change and a window in another zone (wacast_seq_next_at). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scenario.h"

static wt_env env;
static PGconn *db;
static char user[40], device[40];

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_PG | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    wt_sql_text(db, user, sizeof user, "INSERT INTO users (name) VALUES ('u') RETURNING id");
    wt_sql_text(db, device, sizeof device,
                "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                " max_delay_seconds) VALUES ('%s', 'sim', 0.01, 0.02) RETURNING id",
                user);
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone, \"trigger\") VALUES"
                   " ('%s', '%s', 'a', '+60120000001', 'BAD'),"
                   " ('%s', '%s', 'b', '+60120000002', 'X, GOOD ,Y'),"
                   " ('%s', '%s', 'c', '+60120000003', 'GOODIES,NOTGOOD'),"
                   " ('%s', '%s', 'd', '+60120000004', 'BAD,GOOD')",
                   user, device, user, device, user, device, user, device));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

typedef struct bad_case {
    const char *what;
    const char *columns; /* extra sequence columns, as "name = value, ..." for an UPDATE */
    const char *steps;   /* VALUES rows (step_number, delay_seconds, message) or NULL */
    const char *reason;  /* expected in status_reason */
    char id[40];
    const char *media; /* "UPDATE sequence_steps SET ..." assignments for step 2, or NULL */
} bad_case;

static bad_case cases[] = {
    {"broken template", NULL, "(1, 0, 'Hi {{name}}'), (2, 5, 'Then {{name')",
     "step 2: template error", "", NULL},
    {"unknown placeholder", NULL, "(1, 0, 'Hi {{nickname}}')", "unknown placeholder 'nickname'", "",
     NULL},
    {"unknown time zone", "time_zone = 'Mars/Olympus_Mons'", "(1, 0, 'Hi')",
     "unknown time zone 'Mars/Olympus_Mons'", "", NULL},
    {"window start = end", "send_window_start = '09:00', send_window_end = '09:00'", "(1, 0, 'Hi')",
     "send window start equals its end", "", NULL},
    {"no steps", NULL, NULL, "the sequence has no steps", "", NULL},
    {"negative delay", NULL, "(1, 0, 'Hi'), (2, -5, 'Again')", "step 2: negative delay_seconds", "",
     NULL},
    {"min delay above max", "min_delay_seconds = 5, max_delay_seconds = 1", "(1, 0, 'Hi')",
     "min_delay_seconds is greater than max_delay_seconds", "", NULL},
    /* Images, prepared at activation: the reason names the step and the code. */
    {"corrupt image", NULL, "(1, 0, 'Hi'), (2, 5, 'Look')", "step 2: image_", "",
     "media_url = 'data:image/jpeg;base64,/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAP//////////'"},
    {"loopback image", NULL, "(1, 0, 'Hi'), (2, 5, 'Look')", "step 2: fetch_address_refused: ", "",
     "media_url = 'http://127.0.0.1:9/photo.jpg'"},
};
#define NCASES (sizeof cases / sizeof cases[0])

static char good[40];

static bool all_decided(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM sequences WHERE status = 'draft'"
                           " AND status_reason IS NOT NULL") == (long)NCASES &&
           wt_sql_long(db,
                       "SELECT count(*) FROM sequences WHERE id = '%s'"
                       " AND activated_at IS NOT NULL AND enrol_cursor IS NULL",
                       good) == 1;
}

static bool counters_folded(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM sequence_counter_deltas") == 0;
}

static bool enrolled_two(void *id)
{
    return wt_sql_long(db, "SELECT count(*) FROM sequence_contacts WHERE sequence_id = '%s'",
                       (const char *)id) == 2;
}

static bool accepted(void *id)
{
    return wt_sql_long(
               db, "SELECT count(*) FROM sequences WHERE id = '%s' AND activated_at IS NOT NULL",
               (const char *)id) == 1;
}

static void test_bad_sequences_are_refused_with_a_reason(void **state)
{
    (void)state;
    for (size_t i = 0; i < NCASES; i++) {
        bad_case *c = &cases[i];
        wt_sql_text(db, c->id, sizeof c->id,
                    "INSERT INTO sequences (user_id, name, \"trigger\") VALUES ('%s', '%s', 'BAD')"
                    " RETURNING id",
                    user, c->what);
        if (c->columns)
            PQclear(wt_sql(db, "UPDATE sequences SET %s WHERE id = '%s'", c->columns, c->id));
        if (c->steps)
            PQclear(wt_sql(db,
                           "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds,"
                           " message) SELECT '%s', n, d, m FROM (VALUES %s) AS v(n, d, m)",
                           c->id, c->steps));
        if (c->media)
            PQclear(wt_sql(db,
                           "UPDATE sequence_steps SET %s WHERE sequence_id = '%s'"
                           " AND step_number = 2",
                           c->media, c->id));
    }
    wt_sql_text(db, good, sizeof good,
                "INSERT INTO sequences (user_id, name, \"trigger\") VALUES ('%s', 'good', 'GOOD')"
                " RETURNING id",
                user);
    PQclear(wt_sql(db,
                   "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds, message)"
                   " VALUES ('%s', 1, 3600, 'Hi {{name}}')",
                   good));
    /* Activated together, as a dashboard would. */
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'active'"));
    const char *extra[] = {"WACAST_LOG_LEVEL=info", "WACAST_SEQ_MS=50", NULL};
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", extra) < 0)
        fail_msg("cannot start the scheduler");
    if (!wt_wait_for(all_decided, NULL, 30000)) {
        wt_dump_logs(&env, 40);
        fail_msg("the activations were not all decided");
    }
    for (size_t i = 0; i < NCASES; i++) {
        bad_case *c = &cases[i];
        char reason[600], status[32];
        wt_sql_text(db, status, sizeof status, "SELECT status FROM sequences WHERE id = '%s'",
                    c->id);
        wt_sql_text(db, reason, sizeof reason,
                    "SELECT coalesce(status_reason, '') FROM sequences WHERE id = '%s'", c->id);
        fprintf(stderr, "%-20s -> %s: %s\n", c->what, status, reason);
        assert_string_equal(status, "draft");
        if (!strstr(reason, c->reason))
            fail_msg("%s: reason '%s' does not say '%s'", c->what, reason, c->reason);
        assert_int_equal(wt_sql_long(db,
                                     "SELECT count(*) FROM sequence_contacts WHERE sequence_id ="
                                     " '%s'",
                                     c->id),
                         0);
        assert_int_equal(wt_sql_long(db,
                                     "SELECT count(*) FROM sequences WHERE id = '%s'"
                                     " AND activated_at IS NOT NULL",
                                     c->id),
                         0);
    }
    /* The good one enrols 'b' (" GOOD " among its tags) and 'd', not 'c'
     * (GOODIES, NOTGOOD: the tag is matched whole) nor 'a'. */
    char names[64];
    wt_sql_text(db, names, sizeof names,
                "SELECT string_agg(l.name, ',' ORDER BY l.name) FROM sequence_contacts sc"
                " JOIN leads l ON l.id = sc.lead_id WHERE sc.sequence_id = '%s'",
                good);
    assert_string_equal(names, "b,d");
    if (!wt_wait_for(counters_folded, NULL, 10000))
        fail_msg("the counters were not folded");
    assert_int_equal(wt_sql_long(db, "SELECT enrolled_count FROM sequences WHERE id = '%s'", good),
                     2);
    /* Nothing was sent by anyone. */
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM broadcast_messages"), 0);
    /* Fixed and activated again, a refused sequence is accepted. */
    PQclear(wt_sql(db, "UPDATE sequence_steps SET delay_seconds = 5 WHERE sequence_id = '%s'",
                   cases[5].id));
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'active' WHERE id = '%s'", cases[5].id));
    if (!wt_wait_for(accepted, cases[5].id, 20000) ||
        !wt_wait_for(enrolled_two, cases[5].id, 20000))
        fail_msg("the fixed sequence was not accepted, or did not enrol its two leads");
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM sequence_contacts WHERE sequence_id = '%s'",
                                 cases[5].id),
                     2);
}

static void test_next_step_time_follows_the_zone(void **state)
{
    (void)state;
    char at[64];
    /* New York moves to summer time on 8 March 2026: a 09:00 send_time is
     * 14:00 UTC the day before and 13:00 UTC that day. */
    wt_sql_text(db, at, sizeof at,
                "SELECT to_char(wacast_seq_next_at('2026-03-07 10:00 America/New_York', 0,"
                " '09:00', NULL, NULL, 'America/New_York') AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD HH24:MI')");
    assert_string_equal(at, "2026-03-08 13:00");
    wt_sql_text(db, at, sizeof at,
                "SELECT to_char(wacast_seq_next_at('2026-03-06 10:00 America/New_York', 0,"
                " '09:00', NULL, NULL, 'America/New_York') AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD HH24:MI')");
    assert_string_equal(at, "2026-03-07 14:00");
    /* A delay of a day from 08:30 local on the eve of the change: 08:30
     * local again, not 09:30, then 09:00 that morning. */
    wt_sql_text(db, at, sizeof at,
                "SELECT to_char(wacast_seq_next_at('2026-03-07 08:30 America/New_York', 86400,"
                " '09:00', NULL, NULL, 'America/New_York') AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD HH24:MI')");
    /* 86,400 s after 13:30 UTC is 2026-03-08 13:30 UTC = 09:30 EDT: past
     * 09:00, so the next 09:00 is the 9th (13:00 UTC). */
    assert_string_equal(at, "2026-03-09 13:00");
    /* A window in Kuala Lumpur (UTC+8): due at 20:00 local, it waits for 09:00. */
    wt_sql_text(db, at, sizeof at,
                "SELECT to_char(wacast_seq_next_at('2026-03-07 20:00 Asia/Kuala_Lumpur', 0, NULL,"
                " '09:00', '17:00', 'Asia/Kuala_Lumpur') AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD HH24:MI')");
    assert_string_equal(at, "2026-03-08 01:00");
    /* A send_time outside the window: the window's opening wins. */
    wt_sql_text(db, at, sizeof at,
                "SELECT to_char(wacast_seq_next_at('2026-03-07 10:00 Asia/Kuala_Lumpur', 0,"
                " '07:00', '09:00', '17:00', 'Asia/Kuala_Lumpur') AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD HH24:MI')");
    assert_string_equal(at, "2026-03-08 01:00");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_sequences_are_refused_with_a_reason),
        cmocka_unit_test(test_next_step_time_follows_the_zone),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
