/* Drip sequences end to end, on real Redis and PostgreSQL with the real
 * daemons and simulated devices (delays of seconds, so the test runs in
 * about a minute).
 *
 * One user, six devices, 300 leads, four sequences:
 *   A  3 steps (0 s, 4 s, 2 s); its last step's next_trigger is B's tag;
 *   B  2 steps (1 s, 1 s): every lead that completes A is chained into it;
 *   W  3 steps in Asia/Kuala_Lumpur with a send window opening a few
 *      seconds after activation and a send_time on step 2;
 *   P  3 steps (0 s, 3 s, 1 s), paused once some contacts have had step 1
 *      and others fell due while paused, then resumed.
 * Tags are set before activation (enrolled at activation) and after (an
 * UPDATE of leads.trigger, and new leads inserted). Two leads are opted out
 * before, one mid-way; two reply (a Cloud API inbound webhook), one replies
 * STOP; one loses its tag mid-way; a second user's lead is on a device whose
 * every send fails.
 *
 * Asserted from the simulated provider's record and PostgreSQL: every
 * contact received exactly its steps, once each, in order, each at or after
 * its due time (the previous step's send + its delay; W's step 2 not before
 * its send_time), W's never outside the window; nothing of P was written
 * while it was paused; a stopped contact received nothing written after its
 * stop; the contacts' status, stop_reason and current_step, and the
 * sequences' counters, match the record.
 *
 * With the argument "2" two schedulers run and one is killed -9 mid-run: the
 * same assertions hold (no step twice, none missed). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"
#include "wc_webhook.h"

#define APP_SECRET "seq-app-secret"
#define NLEADS 300
#define NDEV 6
#define NSEQ 4

enum { SA, SB, SW, SP };
static const char seq_letter[NSEQ] = {'A', 'B', 'W', 'P'};
static const int nsteps[NSEQ] = {3, 2, 3, 3};
static const double delays[NSEQ][3] = {{0, 4, 2}, {1, 1, 0}, {0, 1, 1}, {0, 3, 1}};

static wt_env env;
static PGconn *db;
static int dport, schedulers = 1;
static pid_t scheduler_pid[2];
static char user[40], user_f[40], dev[NDEV][40], dev_f[40], lead_f[40];
static char seq[NSEQ][40];
static char lead[NLEADS][40];

/* What the test did to each lead. */
typedef enum { EV_NONE, EV_OPTOUT_BEFORE, EV_OPTOUT, EV_REPLY, EV_STOP, EV_UNTAG } lead_event;

static lead_event event_of(int i)
{
    switch (i) {
    case 10:
    case 11:
        return EV_OPTOUT_BEFORE;
    case 12:
        return EV_OPTOUT;
    case 20:
    case 21:
        return EV_REPLY;
    case 22:
        return EV_STOP;
    case 30:
        return EV_UNTAG;
    default:
        return EV_NONE;
    }
}

/* Tags of lead i: 0-99 A (50-99 only after activation), 100-179 W, 180-279
 * P (230-279 inserted after activation), 280-299 A and P. */
static const char *tags_of(int i)
{
    if (i < 100)
        return "A";
    if (i < 180)
        return "W";
    if (i < 280)
        return "P";
    return "A, P";
}

static void phone_of(int i, char *out, size_t n)
{
    snprintf(out, n, "+601290%05d", i);
}

static void insert_lead(int i, const char *tags)
{
    char phone[32];
    phone_of(i, phone, sizeof phone);
    wt_sql_text(db, lead[i], sizeof lead[i],
                "INSERT INTO leads (user_id, device_id, name, phone, \"trigger\", opted_out_at)"
                " VALUES ('%s', '%s', 'L%03d', '%s', %s%s%s, %s) RETURNING id",
                user, dev[i % NDEV], i, phone, tags ? "'" : "", tags ? tags : "NULL",
                tags ? "'" : "", event_of(i) == EV_OPTOUT_BEFORE ? "now()" : "NULL");
}

static void insert_sequence(int k, const char *extra_cols, const char *extra_vals)
{
    wt_sql_text(db, seq[k], sizeof seq[k],
                "INSERT INTO sequences (user_id, name, \"trigger\"%s) VALUES ('%s', '%c', '%c'%s)"
                " RETURNING id",
                extra_cols, user, seq_letter[k], seq_letter[k], extra_vals);
    for (int s = 0; s < nsteps[k]; s++)
        PQclear(wt_sql(db,
                       "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds,"
                       " message, next_trigger) VALUES ('%s', %d, %.3f, '%c%d {{name}}', %s)",
                       seq[k], s + 1, delays[k][s], seq_letter[k], s + 1,
                       k == SA && s == 2 ? "'B'" : "NULL"));
}

static bool dispatcher_ready(void *arg)
{
    (void)arg;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", dport);
    resp r;
    long code = http("GET", url, NULL, 0, NULL, &r);
    resp_free(&r);
    return code == 200;
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_PG | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    wt_sql_text(db, user, sizeof user, "INSERT INTO users (name) VALUES ('u') RETURNING id");
    wt_sql_text(db, user_f, sizeof user_f, "INSERT INTO users (name) VALUES ('f') RETURNING id");
    for (int d = 0; d < NDEV; d++)
        wt_sql_text(db, dev[d], sizeof dev[d],
                    "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                    " max_delay_seconds, settings) VALUES ('%s', 'sim', 0.02, 0.05,"
                    " '{\"phone_number_id\": \"7700%d\"}') RETURNING id",
                    user, d);
    wt_sql_text(db, dev_f, sizeof dev_f,
                "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                " max_delay_seconds, settings) VALUES ('%s', 'sim', 0.02, 0.05,"
                " '{\"sim_failure_rate\": 1}') RETURNING id",
                user_f);
    wt_sql_text(db, lead_f, sizeof lead_f,
                "INSERT INTO leads (user_id, device_id, name, phone, \"trigger\") VALUES"
                " ('%s', '%s', 'F', '+60129999999', 'A') RETURNING id",
                user_f, dev_f);
    insert_sequence(SA, "", "");
    insert_sequence(SB, "", "");
    insert_sequence(SW, ", time_zone", ", 'Asia/Kuala_Lumpur'");
    insert_sequence(SP, "", "");
    /* The failing user's own A. */
    char seq_f[40];
    wt_sql_text(db, seq_f, sizeof seq_f,
                "INSERT INTO sequences (user_id, name, \"trigger\") VALUES ('%s', 'F', 'A')"
                " RETURNING id",
                user_f);
    PQclear(wt_sql(db,
                   "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds, message)"
                   " VALUES ('%s', 1, 0, 'F1 {{name}}'), ('%s', 2, 1, 'F2 {{name}}')",
                   seq_f, seq_f));
    /* Leads tagged before activation. */
    for (int i = 0; i < NLEADS; i++) {
        if ((i >= 50 && i < 100) || (i >= 230 && i < 280))
            continue;
        insert_lead(i, tags_of(i));
    }
    for (int i = 50; i < 100; i++)
        insert_lead(i, NULL);

    dport = wt_free_port();
    char port[32];
    snprintf(port, sizeof port, "PORT=%d", dport);
    static const char *base[] = {"WACAST_LOG_LEVEL=info",
                                 "WACAST_POLL_MS=200",
                                 "WACAST_LEASE_TTL_MS=3000",
                                 "WACAST_DEVICE_REFRESH_MS=500",
                                 "WACAST_IDLE_POLL_MS=1000",
                                 "WACAST_RECONCILE_MS=1000",
                                 "WACAST_RECONCILE_AFTER_S=3",
                                 "WACAST_ONLINE_GRACE_MS=10000",
                                 "WACAST_SEQ_MS=100",
                                 "WACAST_SEQ_CLAIM_S=5",
                                 "WACAST_SEQ_WINDOW_MARGIN_MS=2000"};
    const char *envs[16];
    size_t n = 0;
    for (; n < sizeof base / sizeof base[0]; n++)
        envs[n] = base[n];
    envs[n] = NULL;
    for (int k = 0; k < schedulers; k++) {
        char name[32], id[64];
        snprintf(name, sizeof name, "scheduler-%d", k + 1);
        snprintf(id, sizeof id, "WACAST_INSTANCE_ID=%s", name);
        envs[n] = id;
        envs[n + 1] = NULL;
        scheduler_pid[k] = wt_spawn(&env, "wacast-scheduler", name, envs);
    }
    envs[n] = NULL;
    if (wt_spawn(&env, "wacast-sender", "sender", envs) < 0)
        return -1;
    envs[n] = port;
    envs[n + 1] = "WACAST_META_APP_SECRET=" APP_SECRET;
    envs[n + 2] = NULL;
    if (wt_spawn(&env, "wacast-dispatcher", "dispatcher", envs) < 0)
        return -1;
    return wt_wait_for(dispatcher_ready, NULL, 30000) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

/* ---- actions ------------------------------------------------------------------------------- */

/* An inbound Cloud API message from lead i to its device's number. */
static void reply(int i, const char *text)
{
    char phone[32], body[2048], url[128], sig[WC_WEBHOOK_SIGNATURE_LEN + 32],
        header[WC_WEBHOOK_SIGNATURE_LEN + 64];
    phone_of(i, phone, sizeof phone);
    snprintf(body, sizeof body,
             "{\"object\":\"whatsapp_business_account\",\"entry\":[{\"id\":\"1\",\"changes\":"
             "[{\"value\":{\"messaging_product\":\"whatsapp\",\"metadata\":{"
             "\"display_phone_number\":\"7700%d\",\"phone_number_id\":\"7700%d\"},\"contacts\":[{"
             "\"profile\":{\"name\":\"L\"},\"wa_id\":\"%s\"}],\"messages\":[{\"from\":\"%s\","
             "\"id\":\"wamid.in%d\",\"timestamp\":\"%lld\",\"type\":\"text\",\"text\":{"
             "\"body\":\"%s\"}}]},\"field\":\"messages\"}]}]}",
             i % NDEV, i % NDEV, phone + 1, phone + 1, i, (long long)time(NULL), text);
    assert_int_equal(
        wc_webhook_sign(APP_SECRET, (const unsigned char *)body, strlen(body), sig, sizeof sig), 0);
    snprintf(header, sizeof header, "X-Hub-Signature-256: %s", sig);
    const char *headers[] = {"Content-Type: application/json", header, NULL};
    snprintf(url, sizeof url, "http://127.0.0.1:%d/webhooks/cloudapi", dport);
    resp r;
    long code = http("POST", url, body, strlen(body), headers, &r);
    resp_free(&r);
    assert_int_equal(code, 200);
}

typedef struct sent_arg {
    int lead, seq, step;
} sent_arg;

/* The step's message to the lead is sent (or beyond). */
static bool step_sent(void *arg)
{
    sent_arg *a = arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages WHERE sequence_id = '%s'"
                       " AND lead_id = '%s' AND step_number = %d"
                       " AND status IN ('sent', 'delivered', 'read')",
                       seq[a->seq], lead[a->lead], a->step) == 1;
}

static void wait_step_sent(int i, int k, int step)
{
    sent_arg a = {i, k, step};
    if (!wt_wait_for(step_sent, &a, 60000)) {
        wt_dump_logs(&env, 40);
        fail_msg("lead %d never got step %d of %c", i, step, seq_letter[k]);
    }
}

static bool all_accepted(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM sequences WHERE activated_at IS NOT NULL AND "
                           "enrol_cursor IS NULL") == NSEQ + 1;
}

static bool p_held(void *arg)
{
    (void)arg;
    /* Contacts of P that fell due while paused, and stay unsent. */
    return wt_sql_long(db,
                       "SELECT count(*) FROM sequence_contacts WHERE sequence_id = '%s'"
                       " AND status = 'active' AND next_send_at < now() - interval '1 second'",
                       seq[SP]) >= 20;
}

static bool p_started(void *arg)
{
    (void)arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM sequence_contacts WHERE sequence_id = '%s'"
                       " AND current_step >= 1",
                       seq[SP]) >= 40;
}

static bool all_done(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM sequence_contacts WHERE status = 'active'") == 0 &&
           wt_sql_long(db, "SELECT count(*) FROM broadcast_messages WHERE status IN ('pending',"
                           " 'queued')") == 0;
}

static bool half_of_a_sent(void *arg)
{
    (void)arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages WHERE sequence_id = '%s'"
                       " AND status = 'sent'",
                       seq[SA]) >= 60;
}

/* ---- the run ------------------------------------------------------------------------------- */

static char pause_at[64], resume_at[64];

static void run(void)
{
    /* W's window opens 8 s from now in Kuala Lumpur and closes 40 s later;
     * its step 2 goes at a local time 14 s after the opening. */
    PQclear(wt_sql(db,
                   "UPDATE sequences SET send_window_start = (now() AT TIME ZONE"
                   " 'Asia/Kuala_Lumpur')::time + interval '8 seconds',"
                   " send_window_end = (now() AT TIME ZONE 'Asia/Kuala_Lumpur')::time"
                   " + interval '48 seconds' WHERE id = '%s'",
                   seq[SW]));
    PQclear(wt_sql(db,
                   "UPDATE sequence_steps SET send_time = (SELECT send_window_start +"
                   " interval '14 seconds' FROM sequences WHERE id = '%s')"
                   " WHERE sequence_id = '%s' AND step_number = 2",
                   seq[SW], seq[SW]));
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'active'"));
    if (!wt_wait_for(all_accepted, NULL, 30000)) {
        wt_dump_logs(&env, 40);
        fail_msg("the sequences were not accepted");
    }
    /* Tags after activation: an update, and new leads. */
    PQclear(wt_sql(db,
                   "UPDATE leads SET \"trigger\" = 'A' WHERE user_id = '%s' AND name BETWEEN"
                   " 'L050' AND 'L099'",
                   user));
    for (int i = 230; i < 280; i++)
        insert_lead(i, tags_of(i));

    /* Mid-way events, each once the lead's first step is sent. */
    wait_step_sent(12, SA, 1);
    PQclear(wt_sql(db, "UPDATE leads SET opted_out_at = now() WHERE id = '%s'", lead[12]));
    wait_step_sent(20, SA, 1);
    reply(20, "thanks, tell me more");
    wait_step_sent(21, SA, 1);
    reply(21, "ok");
    wait_step_sent(22, SA, 1);
    reply(22, "STOP");
    wait_step_sent(30, SA, 1);
    PQclear(wt_sql(db, "UPDATE leads SET \"trigger\" = '' WHERE id = '%s'", lead[30]));

    if (schedulers == 2) {
        if (!wt_wait_for(half_of_a_sent, NULL, 60000))
            fail_msg("A did not get going");
        /* Best when it holds claims: look for a moment when it does (its
         * claims last milliseconds), for up to 10 s, then kill it anyway. */
        long long until = wt_now_ms() + 10000;
        while (wt_now_ms() < until && wt_sql_long(db, "SELECT count(*) FROM sequence_contacts"
                                                      " WHERE claimed_by = 'scheduler-1'") == 0)
            ;
        wt_signal(&env, scheduler_pid[0], SIGKILL);
        fprintf(stderr, "killed scheduler-1 (-9) holding %ld claim(s)\n",
                wt_sql_long(db, "SELECT count(*) FROM sequence_contacts"
                                " WHERE claimed_by = 'scheduler-1'"));
    }

    /* Pause P once it is under way, hold it until contacts fell due, resume. */
    if (!wt_wait_for(p_started, NULL, 60000))
        fail_msg("P did not get going");
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'paused' WHERE id = '%s'", seq[SP]));
    wt_sql_text(db, pause_at, sizeof pause_at, "SELECT clock_timestamp()");
    if (!wt_wait_for(p_held, NULL, 60000)) {
        wt_dump_logs(&env, 40);
        fail_msg("no P contact fell due while paused");
    }
    wt_sql_text(db, resume_at, sizeof resume_at, "SELECT clock_timestamp()");
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'active' WHERE id = '%s'", seq[SP]));

    if (!wt_wait_for(all_done, NULL, 120000)) {
        wt_dump_logs(&env, 60);
        PGresult *r = wt_sql(db, "SELECT s.name, sc.status, sc.current_step, sc.next_send_at,"
                                 " sc.claimed_by FROM sequence_contacts sc JOIN sequences s ON"
                                 " s.id = sc.sequence_id WHERE sc.status = 'active' LIMIT 10");
        for (int i = 0; i < PQntuples(r); i++)
            fprintf(stderr, "still active: %s %s %s %s %s\n", PQgetvalue(r, i, 0),
                    PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                    PQgetvalue(r, i, 4));
        PQclear(r);
        fail_msg("the sequences did not finish");
    }
}

/* ---- checks -------------------------------------------------------------------------------- */

/* Steps of sequence k received by lead i, in the order sent (ok sends). */
typedef struct got {
    int n;
    int step[8];
    long long ts[8];
} got;

static got received[NLEADS][NSEQ];

static int seq_index(const char *lane)
{
    for (int k = 0; k < NSEQ; k++)
        if (!strcmp(lane, seq[k]))
            return k;
    return -1;
}

/* What lead i should have received of sequence k, when nothing stopped it. */
static int expected_steps(int i, int k)
{
    lead_event ev = event_of(i);
    if (ev == EV_OPTOUT_BEFORE)
        return 0;
    bool a = i < 100 || i >= 280, p = i >= 180;
    bool w = i >= 100 && i < 180;
    switch (k) {
    case SA:
        return a ? 3 : 0;
    case SB:
        return a && ev == EV_NONE ? 2 : 0;
    case SW:
        return w ? 3 : 0;
    default:
        return p ? 3 : 0;
    }
}

static void check_record(void)
{
    size_t n = 0;
    sc_send *sends = sc_read_sends(&env, &n);
    int failed_f = 0;
    for (size_t j = 0; j < n; j++) {
        sc_send *s = &sends[j];
        if (!strcmp(s->to, "+60129999999")) {
            assert_false(s->ok);
            assert_string_equal(s->text, "F1 F");
            failed_f++;
            continue;
        }
        assert_true(s->ok);
        int k = seq_index(s->campaign);
        if (k < 0)
            fail_msg("a send in an unknown lane %s: %s", s->campaign, s->text);
        int step = 0, who = -1;
        char letter = 0;
        if (sscanf(s->text, "%c%d L%d", &letter, &step, &who) != 3 || letter != seq_letter[k] ||
            who < 0 || who >= NLEADS)
            fail_msg("unexpected text '%s' in lane %c", s->text, seq_letter[k]);
        char phone[32];
        phone_of(who, phone, sizeof phone);
        assert_string_equal(s->to, phone);
        got *g = &received[who][k];
        if (g->n == 8)
            fail_msg("lead %d: too many sends of %c", who, seq_letter[k]);
        g->step[g->n] = step;
        g->ts[g->n] = s->ts_us;
        g->n++;
    }
    sc_sends_free(sends, n);
    /* The failing user's step 1 went out once and failed; no step 2. */
    assert_int_equal(failed_f, 1);
    char status[256];
    wt_sql_text(db, status, sizeof status,
                "SELECT sc.status || ' ' || sc.current_step || ' ' || coalesce(sc.stop_reason, '')"
                " FROM sequence_contacts sc WHERE sc.lead_id = '%s'",
                lead_f);
    fprintf(stderr, "failing lead: %s\n", status);
    assert_true(!strncmp(status, "failed 0 step 1 failed: ", 24));

    int checked = 0;
    for (int i = 0; i < NLEADS; i++) {
        for (int k = 0; k < NSEQ; k++) {
            got *g = &received[i][k];
            int want = expected_steps(i, k);
            lead_event ev = event_of(i);
            bool stopped_midway =
                k == SA && (ev == EV_OPTOUT || ev == EV_REPLY || ev == EV_STOP || ev == EV_UNTAG);
            /* In order, each step once, nothing skipped. */
            for (int s = 0; s < g->n; s++)
                if (g->step[s] != s + 1)
                    fail_msg("lead %d, %c: send %d is step %d", i, seq_letter[k], s + 1,
                             g->step[s]);
            if (stopped_midway) {
                /* Acted on once step 1 was sent: at least step 1, never all. */
                if (g->n < 1 || g->n >= 3)
                    fail_msg("lead %d stopped mid-way received %d step(s) of A", i, g->n);
            } else if (g->n != want) {
                fail_msg("lead %d: %d step(s) of %c, expected %d", i, g->n, seq_letter[k], want);
            }
            /* Each step at or after its due time: the previous step's send
             * (its status time is later still) plus its delay. */
            for (int s = 1; s < g->n; s++) {
                long long gap = g->ts[s] - g->ts[s - 1];
                if (gap < (long long)(delays[k][s] * 1e6))
                    fail_msg("lead %d, %c: step %d %.3f s after step %d, delay %.0f s", i,
                             seq_letter[k], s + 1, (double)gap / 1e6, s, delays[k][s]);
            }
            if (g->n == 0 && want == 0)
                continue;
            /* PostgreSQL agrees with the record. */
            PGresult *r = wt_sql(db,
                                 "SELECT status, current_step, coalesce(stop_reason, ''),"
                                 " (extract(epoch FROM enrolled_at) * 1e6)::bigint,"
                                 " (extract(epoch FROM completed_at) * 1e6)::bigint"
                                 " FROM sequence_contacts WHERE sequence_id = '%s'"
                                 " AND lead_id = '%s'",
                                 seq[k], lead[i]);
            if (PQntuples(r) != 1)
                fail_msg("lead %d: no contact in %c", i, seq_letter[k]);
            const char *st = PQgetvalue(r, 0, 0), *reason = PQgetvalue(r, 0, 2);
            int current = atoi(PQgetvalue(r, 0, 1));
            long long enrolled = atoll(PQgetvalue(r, 0, 3));
            if (current != g->n)
                fail_msg("lead %d, %c: current_step %d, %d sent", i, seq_letter[k], current, g->n);
            if (g->n > 0 && g->ts[0] < enrolled + (long long)(delays[k][0] * 1e6))
                fail_msg("lead %d, %c: step 1 before it was due", i, seq_letter[k]);
            const char *want_status = "completed", *want_reason = "";
            if (stopped_midway) {
                want_status = "stopped";
                want_reason = ev == EV_OPTOUT || ev == EV_STOP ? "opted_out"
                              : ev == EV_REPLY                 ? "replied"
                                                               : "removed";
            }
            if (strcmp(st, want_status) || strcmp(reason, want_reason))
                fail_msg("lead %d, %c: %s '%s', expected %s '%s'", i, seq_letter[k], st, reason,
                         want_status, want_reason);
            PQclear(r);
            if (stopped_midway)
                /* Nothing written for it after its stop. */
                assert_int_equal(wt_sql_long(db,
                                             "SELECT count(*) FROM broadcast_messages m JOIN"
                                             " sequence_contacts sc ON sc.lead_id = m.lead_id"
                                             " AND sc.sequence_id = m.sequence_id"
                                             " WHERE m.lead_id = '%s'"
                                             " AND m.created_at > sc.completed_at",
                                             lead[i]),
                                 0);
            checked++;
        }
    }
    fprintf(stderr, "%d contact(s) checked against the record\n", checked);
}

static void check_window_and_pause(void)
{
    /* W: every send inside its window, step 2 not before its send_time. */
    for (int i = 100; i < 180; i++) {
        got *g = &received[i][SW];
        for (int s = 0; s < g->n; s++) {
            long ok = wt_sql_long(db,
                                  "SELECT count(*) FROM sequences WHERE id = '%s' AND"
                                  " wacast_in_window(send_window_start, send_window_end,"
                                  " time_zone, to_timestamp(%lld / 1e6))",
                                  seq[SW], g->ts[s]);
            if (ok != 1)
                fail_msg("lead %d: W step %d sent outside the window", i, s + 1);
        }
        long early = wt_sql_long(
            db,
            "SELECT count(*) FROM sequences s, sequence_steps st WHERE s.id = '%s'"
            " AND st.sequence_id = s.id AND st.step_number = 2"
            " AND (to_timestamp(%lld / 1e6) AT TIME ZONE s.time_zone)::time < st.send_time"
            " AND (to_timestamp(%lld / 1e6) AT TIME ZONE s.time_zone)::time >= s.send_window_start",
            seq[SW], g->ts[1], g->ts[1]);
        if (early)
            fail_msg("lead %d: W step 2 before its send_time", i);
    }
    /* P: nothing written between the pause and the resume. */
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE sequence_id = '%s'"
                                 " AND created_at >= '%s' AND created_at < '%s'",
                                 seq[SP], pause_at, resume_at),
                     0);
    assert_true(wt_sql_long(db,
                            "SELECT count(*) FROM broadcast_messages WHERE sequence_id = '%s'"
                            " AND created_at >= '%s'",
                            seq[SP], resume_at) >= 20);
}

static bool counters_folded(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM sequence_counter_deltas") == 0;
}

static void check_counters(void)
{
    /* The counters trail the contacts by a scheduler round. */
    assert_true(wt_wait_for(counters_folded, NULL, 10000));
    PGresult *r = wt_sql(
        db,
        "SELECT s.name, s.enrolled_count, s.active_count, s.completed_count, s.stopped_count,"
        " s.failed_count, (SELECT count(*) FROM sequence_contacts c WHERE c.sequence_id = s.id),"
        " (SELECT count(*) FROM sequence_contacts c WHERE c.sequence_id = s.id AND"
        "  c.status = 'completed'),"
        " (SELECT count(*) FROM sequence_contacts c WHERE c.sequence_id = s.id AND"
        "  c.status = 'stopped'),"
        " (SELECT count(*) FROM sequence_contacts c WHERE c.sequence_id = s.id AND"
        "  c.status = 'failed') FROM sequences s ORDER BY s.name");
    for (int i = 0; i < PQntuples(r); i++) {
        fprintf(stderr, "sequence %s: enrolled %s active %s completed %s stopped %s failed %s\n",
                PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                PQgetvalue(r, i, 4), PQgetvalue(r, i, 5));
        assert_string_equal(PQgetvalue(r, i, 1), PQgetvalue(r, i, 6));
        assert_string_equal(PQgetvalue(r, i, 2), "0");
        assert_string_equal(PQgetvalue(r, i, 3), PQgetvalue(r, i, 7));
        assert_string_equal(PQgetvalue(r, i, 4), PQgetvalue(r, i, 8));
        assert_string_equal(PQgetvalue(r, i, 5), PQgetvalue(r, i, 9));
    }
    PQclear(r);
    /* A: 118 enrolled (100 + 20, less the two opted out before), 5 stopped. */
    assert_int_equal(
        wt_sql_long(db, "SELECT enrolled_count FROM sequences WHERE id = '%s'", seq[SA]), 118);
    assert_int_equal(
        wt_sql_long(db, "SELECT stopped_count FROM sequences WHERE id = '%s'", seq[SA]), 5);
    assert_int_equal(
        wt_sql_long(db, "SELECT enrolled_count FROM sequences WHERE id = '%s'", seq[SB]), 113);
    assert_int_equal(wt_sql_long(db, "SELECT failed_count FROM sequences WHERE name = 'F'"), 1);
    /* Each step message at most once per lead, by construction and in fact. */
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM (SELECT 1 FROM broadcast_messages"
                                     " WHERE sequence_id IS NOT NULL GROUP BY sequence_id,"
                                     " lead_id, step_number HAVING count(*) > 1) d"),
                     0);
}

static void test_sequences(void **state)
{
    (void)state;
    run();
    check_record();
    check_window_and_pause();
    check_counters();
}

int main(int argc, char **argv)
{
    if (argc > 1)
        schedulers = atoi(argv[1]) == 2 ? 2 : 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sequences),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
