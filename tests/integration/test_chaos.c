/* Chaos: nothing lost, nothing sent twice, whatever crashes. A campaign of
 * 20,000+ messages over 100 sim devices with sub-second delays run while a
 * driver kills -9 random senders, dispatchers and schedulers at random moments
 * and restarts them, restarts redis-server once (SIGTERM: it writes its AOF,
 * appendfsync everysec) and PostgreSQL once (fast shutdown). Afterwards, from
 * the sim record: every eligible recipient got exactly one message, nobody
 * else got any, Postgres statuses equal the record, and both campaigns
 * finished.
 *
 * Usage: test_chaos [SEED]   (no seed: a random one, printed for replay) */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "scenario.h"

#define NUSERS 1
#define NLEADS 24000
#define DEVICES_PER_USER 100
#define MIN_DELAY 0.05
#define MAX_DELAY 0.15
#define DEADLINE_MS 480000

static uint64_t seed;
static wt_env env;
static sc_world world;
static PGconn *db;
static char campaigns[NUSERS][40];
static sc_send *sends;
static size_t nsends;
static int kills, restarts;

/* Expected recipients of user u's campaign ("all", no niche, no limit):
 * valid, not opted out, one per phone (the lowest lead id wins). */
static int cmp_lead(const void *a, const void *b)
{
    return strcmp(world.leads[*(const int *)a].id, world.leads[*(const int *)b].id);
}

static int expected_for(int user, int **out)
{
    int *order = malloc(sizeof(int) * (size_t)world.nleads);
    for (int i = 0; i < world.nleads; i++)
        order[i] = i;
    qsort(order, (size_t)world.nleads, sizeof *order, cmp_lead);
    int *res = malloc(sizeof(int) * (size_t)world.nleads);
    int n = 0;
    for (int k = 0; k < world.nleads; k++) {
        sc_lead *l = &world.leads[order[k]];
        if (l->user != user || l->opted_out || !l->e164[0])
            continue;
        bool dup = false;
        for (int j = 0; j < n && !dup; j++)
            dup = !strcmp(world.leads[res[j]].e164, l->e164);
        if (!dup)
            res[n++] = order[k];
    }
    free(order);
    *out = res;
    return n;
}

typedef struct daemon_slot {
    const char *program;
    char name[32];
    pid_t pid;
    long long restart_at; /* 0: running */
} daemon_slot;

static const char *daemon_env[] = {"WACAST_LOG_LEVEL=info",
                                   "WACAST_POLL_MS=200",
                                   "WACAST_LEASE_TTL_MS=3000",
                                   "WACAST_DEVICE_REFRESH_MS=500",
                                   "WACAST_IDLE_POLL_MS=1000",
                                   "WACAST_RECONCILE_MS=2000",
                                   "WACAST_RECONCILE_AFTER_S=10",
                                   "WACAST_ONLINE_GRACE_MS=10000",
                                   "WACAST_CLAIM_IDLE_MS=3000",
                                   "WACAST_CLAIM_STALE_S=5",
                                   "WACAST_BATCH=1000",
                                   "WACAST_IN_DOUBT_MS=20000",
                                   "WACAST_SIM_CALLBACKS=sent",
                                   "WACAST_SIM_CALLBACK_DELAY_MS=100",
                                   "WACAST_START_TIMEOUT=60",
                                   "WACAST_TIMEOUT_MS=3000",
                                   NULL};

static void start_slot(daemon_slot *d)
{
    d->pid = wt_spawn(&env, d->program, d->name, daemon_env);
    assert_true(d->pid > 0);
    d->restart_at = 0;
}

static bool campaigns_final(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM campaigns WHERE title = 'chaos' AND status IN "
                           "('finished', 'failed', 'cancelled')") == NUSERS;
}

static long long progress(void)
{
    return wt_sql_long(db,
                       "SELECT coalesce(sum(sent_count), 0) FROM campaigns WHERE title = 'chaos'");
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    fprintf(stderr, "test_chaos: seed %llu (replay: test_chaos %llu)\n", (unsigned long long)seed,
            (unsigned long long)seed);
    sc_populate(&world, db, seed, NUSERS, DEVICES_PER_USER, 0, NLEADS, MIN_DELAY, MAX_DELAY);
    for (int u = 0; u < NUSERS; u++) {
        PGresult *r =
            wt_sql(db,
                   "INSERT INTO campaigns (user_id, title, message, target_status, scheduled_at)"
                   " VALUES ('%s', 'chaos', 'Hi {{name}}, offer {{niche | default \"none\"}}',"
                   " 'all', now()) RETURNING id",
                   world.users[u]);
        snprintf(campaigns[u], sizeof campaigns[u], "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
    }

    daemon_slot slots[] = {
        {"wacast-scheduler", "scheduler-1", 0, 0},   {"wacast-scheduler", "scheduler-2", 0, 0},
        {"wacast-dispatcher", "dispatcher-1", 0, 0}, {"wacast-dispatcher", "dispatcher-2", 0, 0},
        {"wacast-sender", "sender-1", 0, 0},         {"wacast-sender", "sender-2", 0, 0},
        {"wacast-sender", "sender-3", 0, 0},
    };
    int nslots = (int)(sizeof slots / sizeof slots[0]);
    for (int i = 0; i < nslots; i++)
        start_slot(&slots[i]);

    /* The driver: a random kill every 0.7-2.5 s until both campaigns end. */
    uint64_t rng = seed ^ 0x5eed;
    sc_world r = {.rng = rng};
    long long start = wt_now_ms(), next_action = start + 1000;
    bool redis_restarted = false, pg_restarted = false;
    long long total = 0;
    for (int u = 0; u < NUSERS; u++) {
        int *e;
        total += expected_for(u, &e);
        free(e);
    }
    while (!campaigns_final(NULL)) {
        long long now = wt_now_ms();
        if (now - start > DEADLINE_MS) {
            fprintf(stderr, "chaos: campaigns not final after %d s (sent %lld of %lld)\n",
                    DEADLINE_MS / 1000, progress(), total);
            wt_dump_logs(&env, 40);
            return -1;
        }
        for (int i = 0; i < nslots; i++) {
            if (slots[i].restart_at && now >= slots[i].restart_at) {
                start_slot(&slots[i]);
                restarts++;
            }
        }
        long long sent = progress();
        if (!redis_restarted && sent > total / 3) {
            fprintf(stderr, "chaos: restarting redis-server at %lld/%lld\n", sent, total);
            if (wt_redis_restart(&env, false) < 0)
                return -1;
            redis_restarted = true;
        } else if (!pg_restarted && sent > total / 2) {
            fprintf(stderr, "chaos: restarting postgres at %lld/%lld\n", sent, total);
            PQfinish(db);
            if (wt_pg_restart(&env, false) < 0)
                return -1;
            db = wt_pg(&env);
            pg_restarted = true;
        } else if (now >= next_action && sent < total * 9 / 10 && !getenv("CHAOS_NO_KILLS")) {
            int i = (int)(sc_rand(&r) % (uint64_t)nslots);
            if (!slots[i].restart_at) {
                kill(slots[i].pid, SIGKILL);
                wt_wait_exit(&env, slots[i].pid, 10000);
                slots[i].restart_at = now + 200 + (long long)(sc_rand(&r) % 1800);
                kills++;
            }
            next_action = now + 700 + (long long)(sc_rand(&r) % 1800);
        }
        usleep(50000);
        /* (a poll interval for the driver's own clock, not a synchronisation) */
    }
    fprintf(stderr, "chaos: %d kills, %d restarts, redis %s, postgres %s, %.1f s\n", kills,
            restarts, redis_restarted ? "restarted" : "not restarted",
            pg_restarted ? "restarted" : "not restarted", (wt_now_ms() - start) / 1000.0);
    /* Settle: daemons that were down come back, then late results land. */
    for (int i = 0; i < nslots; i++)
        if (slots[i].restart_at)
            start_slot(&slots[i]);
    sends = sc_read_sends(&env, &nsends);
    fprintf(stderr, "sim record: %zu sends\n", nsends);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    sc_sends_free(sends, nsends);
    sc_world_free(&world);
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

static int cmp_send_to(const void *a, const void *b)
{
    const sc_send *x = a, *y = b;
    int c = strcmp(x->campaign, y->campaign);
    return c ? c : strcmp(x->to, y->to);
}

static void test_nothing_lost_nothing_twice(void **state)
{
    (void)state;
    qsort(sends, nsends, sizeof *sends, cmp_send_to);
    int lost = 0, dup = 0, extra = 0;
    size_t want = 0;
    for (int u = 0; u < NUSERS; u++) {
        int *e;
        int n = expected_for(u, &e);
        want += (size_t)n;
        for (int k = 0; k < n; k++) {
            sc_send key = {0};
            memcpy(key.campaign, campaigns[u], sizeof key.campaign);
            snprintf(key.to, sizeof key.to, "%s", world.leads[e[k]].e164);
            sc_send *hit = bsearch(&key, sends, nsends, sizeof *sends, cmp_send_to);
            if (!hit) {
                if (lost++ < 10)
                    fprintf(stderr, "lost: campaign %s to %s\n", campaigns[u], key.to);
                continue;
            }
            size_t first = (size_t)(hit - sends), last = first;
            while (first > 0 && !cmp_send_to(&sends[first - 1], &key))
                first--;
            while (last + 1 < nsends && !cmp_send_to(&sends[last + 1], &key))
                last++;
            if (last > first && dup++ < 10)
                fprintf(stderr, "duplicate: campaign %s to %s received %zu messages\n",
                        campaigns[u], key.to, last - first + 1);
        }
        free(e);
    }
    if (nsends > want) {
        extra = (int)(nsends - want) - dup;
        if (extra < 0)
            extra = 0;
    }
    fprintf(stderr, "seed %llu: expected %zu, record %zu, lost %d, duplicates %d, others %d\n",
            (unsigned long long)seed, want, nsends, lost, dup, extra);
    assert_int_equal(lost, 0);
    assert_int_equal(dup, 0);
    assert_int_equal(nsends, want);
}

static int cmp_send_msg(const void *a, const void *b)
{
    const sc_send *x = a, *y = b;
    return x->msg < y->msg ? -1 : x->msg > y->msg;
}

static void test_postgres_equals_record(void **state)
{
    (void)state;
    for (int u = 0; u < NUSERS; u++) {
        PGresult *r =
            wt_sql(db, "SELECT status, sent_count, failed_count FROM campaigns WHERE id = '%s'",
                   campaigns[u]);
        assert_string_equal(PQgetvalue(r, 0, 0), "finished");
        size_t in_record = 0;
        for (size_t i = 0; i < nsends; i++)
            in_record += !strcmp(sends[i].campaign, campaigns[u]);
        assert_int_equal(atol(PQgetvalue(r, 0, 1)), (long)in_record);
        assert_int_equal(atol(PQgetvalue(r, 0, 2)), 0);
        PQclear(r);
        assert_int_equal(
            wt_sql_long(db,
                        "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                        " AND status IN ('sent', 'delivered', 'read')",
                        campaigns[u]),
            (long)in_record);
        assert_int_equal(
            wt_sql_long(db,
                        "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                        " AND status NOT IN ('sent', 'delivered', 'read', 'skipped')",
                        campaigns[u]),
            0);
    }
    /* Each sent row names the device and recipient the record shows. */
    sc_send *by_msg = malloc(nsends * sizeof *by_msg);
    memcpy(by_msg, sends, nsends * sizeof *by_msg);
    qsort(by_msg, nsends, sizeof *by_msg, cmp_send_msg);
    int mismatch = 0;
    PGresult *r = wt_sql(db, "SELECT id, device_id, recipient_phone FROM broadcast_messages"
                             " WHERE status IN ('sent', 'delivered', 'read') ORDER BY id");
    for (int i = 0; i < PQntuples(r); i++) {
        sc_send key = {.msg = atoll(PQgetvalue(r, i, 0))};
        sc_send *hit = bsearch(&key, by_msg, nsends, sizeof *by_msg, cmp_send_msg);
        bool found = hit && !strcmp(hit->device, PQgetvalue(r, i, 1)) &&
                     !strcmp(hit->to, PQgetvalue(r, i, 2));
        if (!found && mismatch++ < 10)
            fprintf(stderr, "row %lld has no matching send in the record\n", key.msg);
    }
    PQclear(r);
    free(by_msg);
    assert_int_equal(mismatch, 0);
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0)
        return 1;
    seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 0;
    if (seed == 0)
        randombytes_buf(&seed, sizeof seed);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nothing_lost_nothing_twice),
        cmocka_unit_test(test_postgres_equals_record),
    };
    return cmocka_run_group_tests_name("chaos", tests, setup, teardown);
}
