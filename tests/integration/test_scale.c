/* Senders scaled the way KEDA scales them (deploy/k8s/base/keda.yaml): while
 * a campaign runs, the sender Deployment goes from 2 to 4 replicas and then
 * down to 1, by starting sender processes and SIGTERMing them as Kubernetes
 * would (one at a time, each given its grace period). On real redis-server
 * and PostgreSQL with the real daemons and 24 sim devices (one user, 60
 * leads each, paced 0.15-0.35 s, so the campaign outlasts every move).
 *
 * It proves what the README's "Deploy on Kubernetes" promises of a scale
 * move: every message is sent exactly once (the sim record and PostgreSQL
 * agree, nothing lost, nothing twice), no device's gap between two sends is
 * ever below its min_delay, even when the device changed sender (its next
 * send time lives in Redis, so the new owner keeps the pacing), devices did
 * move on the way up and on the way down (rendezvous hashing), every
 * SIGTERMed sender exited cleanly, and once the last SIGTERM is done only
 * the remaining sender sends. */
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

#define NDEVICES 24
#define LEADS_PER_DEVICE 60
#define NMESSAGES (NDEVICES * LEADS_PER_DEVICE)
#define MIN_DELAY_US 150000
#define NSENDERS 4
#define STEP_TIMEOUT_MS 120000

static wt_env env;
static PGconn *db;
static char campaign[40];
static pid_t senders[NSENDERS];
/* Wall clock when senders 3 and 4 were started, when the first SIGTERM was
 * sent, and once the last SIGTERMed sender was gone. */
static long long scale_up_us, scale_down_us, scaled_down_us;
static sc_send *sends;
static size_t nsends;

static const char *daemon_env[] = {"WACAST_LOG_LEVEL=info",        "WACAST_POLL_MS=200",
                                   "WACAST_LEASE_TTL_MS=3000",     "WACAST_STOP_TIMEOUT_MS=10000",
                                   "WACAST_DEVICE_REFRESH_MS=500", "WACAST_IDLE_POLL_MS=1000",
                                   "WACAST_RECONCILE_MS=2000",     "WACAST_ONLINE_GRACE_MS=10000",
                                   "WACAST_CLAIM_IDLE_MS=3000",    NULL};

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void spawn(const char *program, const char *name, const char *instance_id, pid_t *pid)
{
    char id_env[64];
    snprintf(id_env, sizeof id_env, "WACAST_INSTANCE_ID=%s", instance_id);
    const char *envs[32];
    int n = 0;
    for (int i = 0; daemon_env[i]; i++)
        envs[n++] = daemon_env[i];
    envs[n++] = id_env;
    envs[n] = NULL;
    *pid = wt_spawn(&env, program, name, envs);
    if (*pid <= 0)
        abort();
}

static void start_sender(int k)
{
    char name[24], id[32];
    snprintf(name, sizeof name, "sender-%d", k + 1);
    snprintf(id, sizeof id, "scale-sender-%d", k + 1);
    spawn("wacast-sender", name, id, &senders[k]);
}

/* SIGTERM, as the kubelet sends it, and the clean exit it must lead to. */
static void stop_sender(int k)
{
    assert_int_equal(kill(senders[k], SIGTERM), 0);
    int st = wt_wait_exit(&env, senders[k], 30000);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        wt_dump_logs(&env, 20);
        fail_msg("sender-%d did not exit cleanly on SIGTERM (status %d)", k + 1, st);
    }
    senders[k] = 0;
}

static long sent_rows(void)
{
    return wt_sql_long(db, "SELECT count(*) FROM broadcast_messages WHERE status = 'sent'");
}

static bool sent_at_least(void *arg)
{
    return sent_rows() >= *(const long *)arg;
}

/* True once every sender of the mask has sends in the record. */
static bool senders_sending(void *arg)
{
    unsigned want = *(const unsigned *)arg, seen = 0;
    size_t n;
    sc_send *s = sc_read_sends(&env, &n);
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < NSENDERS; k++) {
            char id[32];
            snprintf(id, sizeof id, "scale-sender-%d", k + 1);
            if (!strcmp(s[i].sender, id))
                seen |= 1u << k;
        }
    sc_sends_free(s, n);
    return (seen & want) == want;
}

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, NULL) < 0)
        return -1;
    PQclear(wt_sql(db, "INSERT INTO users (name) VALUES ('scale user')"));
    PQclear(wt_sql(db,
                   "INSERT INTO user_devices (user_id, device_name, platform, min_delay_seconds,"
                   " max_delay_seconds)"
                   " SELECT u.id, 'scale device ' || k, 'sim', %.3f, 0.350"
                   " FROM users u, generate_series(1, %d) k",
                   MIN_DELAY_US / 1e6, NDEVICES));
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone, target_status)"
                   " SELECT d.user_id, d.id, 'Lead ' || (d.ord * 100 + m),"
                   " '+6013' || lpad((d.ord * 100 + m)::text, 7, '0'), 'prospect'"
                   " FROM (SELECT id, user_id, row_number() OVER (ORDER BY id) AS ord"
                   "       FROM user_devices) d, generate_series(1, %d) m",
                   LEADS_PER_DEVICE));
    pid_t pid;
    spawn("wacast-scheduler", "scheduler", "scale-scheduler", &pid);
    spawn("wacast-dispatcher", "dispatcher", "scale-dispatcher", &pid);
    start_sender(0);
    start_sender(1);
    wt_sql_text(db, campaign, sizeof campaign,
                "INSERT INTO campaigns (user_id, title, message, target_status, scheduled_at)"
                " SELECT id, 'scale', 'Hi {{name}}', 'all', now() FROM users RETURNING id");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sc_sends_free(sends, nsends);
    e2e_teardown(&env, db, NULL);
    return 0;
}

static void test_scale_2_4_1_during_a_campaign(void **state)
{
    (void)state;
    long quarter = NMESSAGES / 5;
    if (!wt_wait_for(sent_at_least, &quarter, STEP_TIMEOUT_MS)) {
        wt_dump_logs(&env, 20);
        fail_msg("the campaign did not start sending");
    }
    long at_up = sent_rows();
    scale_up_us = now_us();
    start_sender(2);
    start_sender(3);
    unsigned joiners = 1u << 2 | 1u << 3;
    if (!wt_wait_for(senders_sending, &joiners, STEP_TIMEOUT_MS))
        fail_msg("the new senders never took devices over");
    long at_down = sent_rows();
    scale_down_us = now_us();
    for (int k = 0; k < 3; k++)
        stop_sender(k);
    scaled_down_us = now_us();
    long at_one = sent_rows();
    if (!e2e_wait_finished(db, campaign, STEP_TIMEOUT_MS)) {
        wt_dump_logs(&env, 20);
        fail_msg("the campaign did not finish after the scale-down");
    }
    fprintf(stderr, "scale: 2 senders until %ld sent, 4 until %ld, 1 from %ld of %d\n", at_up,
            at_down, at_one, NMESSAGES);
    assert_true(at_one < NMESSAGES); /* the last move happened with work left */
    sends = sc_read_sends(&env, &nsends);
}

static int cmp_msg(const void *a, const void *b)
{
    long long x = ((const sc_send *)a)->msg, y = ((const sc_send *)b)->msg;
    return (x > y) - (x < y);
}

static void test_every_message_exactly_once(void **state)
{
    (void)state;
    qsort(sends, nsends, sizeof *sends, cmp_msg);
    int twice = 0, failed = 0;
    for (size_t i = 0; i < nsends; i++) {
        failed += !sends[i].ok;
        if (i > 0 && sends[i].msg == sends[i - 1].msg && twice++ < 10)
            fprintf(stderr, "message %lld sent twice (%s, %s)\n", sends[i].msg, sends[i - 1].sender,
                    sends[i].sender);
    }
    assert_int_equal(failed, 0);
    assert_int_equal(twice, 0);
    assert_int_equal((long)nsends, NMESSAGES);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                 " AND status = 'sent'",
                                 campaign),
                     NMESSAGES);
    /* Each row agrees with its one record entry. */
    int disagree = 0;
    for (size_t i = 0; i < nsends; i++) {
        long ok = wt_sql_long(db,
                              "SELECT count(*) FROM broadcast_messages WHERE id = %lld AND"
                              " device_id = '%s' AND recipient_phone = '%s' AND status = 'sent'",
                              sends[i].msg, sends[i].device, sends[i].to);
        if (ok != 1 && disagree++ < 10)
            fprintf(stderr, "record entry of message %lld disagrees with PostgreSQL\n",
                    sends[i].msg);
    }
    assert_int_equal(disagree, 0);
}

static int cmp_device_ts(const void *a, const void *b)
{
    const sc_send *x = a, *y = b;
    int c = strcmp(x->device, y->device);
    return c ? c : (x->ts_us > y->ts_us) - (x->ts_us < y->ts_us);
}

static void test_pacing_kept_across_moves(void **state)
{
    (void)state;
    qsort(sends, nsends, sizeof *sends, cmp_device_ts);
    int violations = 0, moves = 0, moves_up = 0, moves_down = 0, late_others = 0;
    long long min_gap = -1, min_cross_gap = -1;
    for (size_t i = 1; i < nsends; i++) {
        const sc_send *a = &sends[i - 1], *b = &sends[i];
        if (b->ts_us >= scaled_down_us && strcmp(b->sender, "scale-sender-4") != 0 &&
            late_others++ < 10)
            fprintf(stderr, "message %lld sent by %s after the scale-down\n", b->msg, b->sender);
        if (strcmp(a->device, b->device) != 0)
            continue;
        long long gap = b->ts_us - a->ts_us;
        if (min_gap < 0 || gap < min_gap)
            min_gap = gap;
        if (strcmp(a->sender, b->sender) != 0) {
            moves++;
            moves_up += b->ts_us >= scale_up_us && b->ts_us < scale_down_us;
            moves_down += b->ts_us >= scale_down_us;
            if (min_cross_gap < 0 || gap < min_cross_gap)
                min_cross_gap = gap;
        }
        if (gap < MIN_DELAY_US && violations++ < 10)
            fprintf(stderr, "device %s: gap %lld us < min_delay between %s and %s\n", b->device,
                    gap, a->sender, b->sender);
    }
    fprintf(stderr,
            "pacing: %d device moves between senders; shortest gap %.1f ms, shortest gap"
            " across a move %.1f ms (min_delay %.0f ms); %d violations\n",
            moves, min_gap / 1000.0, min_cross_gap / 1000.0, MIN_DELAY_US / 1000.0, violations);
    assert_int_equal(violations, 0);
    assert_int_equal(late_others, 0);
    assert_true(moves_up > 0);
    assert_true(moves_down > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scale_2_4_1_during_a_campaign),
        cmocka_unit_test(test_every_message_exactly_once),
        cmocka_unit_test(test_pacing_kept_across_moves),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
