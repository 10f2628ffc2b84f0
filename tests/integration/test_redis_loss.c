/* Redis losing its last second of acknowledged writes (issue 22): nothing
 * PostgreSQL already holds as sent is sent again, and the campaigns end
 * within 20 s of the same run without a crash.
 *
 * Each case runs three campaigns of two tenants over 30 sim devices (delays
 * 0.05-0.15 s; one scheduler, two dispatchers, two senders; the simulated
 * provider in a redis-server of its own) twice: once undisturbed, once with
 * the crash. A loss is made the way a power cut makes it: appendonlydir is
 * copied while Redis runs, a second of sending later redis-server is killed
 * -9, the copy is put back and Redis restarts on the same port. The statuses
 * PostgreSQL holds right after the kill are the reference: none of those
 * recipients may be messaged twice (the number messaged twice overall is
 * printed). A kill -9 with appendfsync always (nothing lost) must not start a
 * recovery (log, metric and redis_fence say so) and sends nothing twice.
 * One case runs the second tenant's messages as a two-step drip sequence
 * instead of a campaign: its step messages come through the same recovery
 * (rows in broadcast_messages), and every contact completes.
 *
 * Usage: test_redis_loss [SEED]   (no seed: a random one, printed for replay) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <sodium.h>

#include "scenario.h"

#define NUSERS 2
#define DEVICES_PER_USER 15
#define NLEADS 2000
#define MIN_DELAY 0.05
#define MAX_DELAY 0.15
#define FINAL_DEADLINE_MS 240000
#define LOST_INTERVAL_MS 1000

typedef enum {
    RUN_PLAIN,        /* no crash */
    RUN_LOSS,         /* power loss: ~1 s of acknowledged writes gone */
    RUN_KILL_FSYNCED, /* kill -9 with appendfsync always: nothing lost */
} run_mode;

typedef struct run_result {
    double final_s;           /* from the campaigns' creation to all final */
    long messages;            /* rows of the three campaigns */
    long twice;               /* recipients messaged more than once */
    long twice_sent_at_crash; /* of those, rows PostgreSQL held as sent at the crash */
    long lost;                /* rows not final, or sent with no send in the record */
    long losses;              /* redis_fence.losses */
    long recoveries;          /* wacast_sender_redis_loss_recoveries_total, both senders */
    long pg_already_done;     /* messages the senders found final in PostgreSQL */
    bool recovery_logged;     /* a daemon logged "recovering from a Redis loss" */
} run_result;

static uint64_t seed;

static long long *sent_at_crash;
static size_t nsent_at_crash;

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

static void snapshot_sent(PGconn *db)
{
    PGresult *r = wt_sql(db, "SELECT id FROM broadcast_messages"
                             " WHERE status IN ('sent', 'delivered', 'read') ORDER BY id");
    free(sent_at_crash);
    nsent_at_crash = (size_t)PQntuples(r);
    sent_at_crash = calloc(nsent_at_crash + 1, sizeof *sent_at_crash);
    for (size_t i = 0; i < nsent_at_crash; i++)
        sent_at_crash[i] = atoll(PQgetvalue(r, (int)i, 0));
    PQclear(r);
}

static const char *field(redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (!strcmp(fields->element[i]->str, name))
            return fields->element[i + 1]->str;
    return "";
}

/* Message ids of every successful send in the simulated provider's record. */
static long long *read_record(wt_env *env, size_t *n)
{
    redisContext *rc = wt_sim_redis(env);
    size_t cap = 4096, len = 0;
    long long *out = calloc(cap, sizeof *out);
    char from[64] = "-";
    for (;;) {
        redisReply *r = redisCommand(rc, "XRANGE wacast:sim:sends %s + COUNT 5000", from);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_ARRAY);
        if (r->elements == 0) {
            freeReplyObject(r);
            break;
        }
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *f = r->element[i]->element[1];
            if (strcmp(field(f, "ok"), "1") != 0)
                continue;
            if (len == cap)
                out = realloc(out, (cap *= 2) * sizeof *out);
            out[len++] = atoll(field(f, "msg"));
        }
        snprintf(from, sizeof from, "(%s", r->element[r->elements - 1]->element[0]->str);
        freeReplyObject(r);
    }
    redisFree(rc);
    qsort(out, len, sizeof *out, cmp_ll);
    *n = len;
    return out;
}

typedef struct body {
    char *p;
    size_t len;
} body;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    body *b = arg;
    size_t n = size * nmemb;
    b->p = realloc(b->p, b->len + n + 1);
    memcpy(b->p + b->len, ptr, n);
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

/* A counter from a daemon's /metrics (-1 when unreadable). */
static long metric(int port, const char *name)
{
    CURL *c = curl_easy_init();
    body b = {0};
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    long v = -1;
    if (curl_easy_perform(c) == CURLE_OK && b.p) {
        char key[160];
        snprintf(key, sizeof key, "\n%s ", name);
        const char *at = strstr(b.p, key);
        if (at)
            v = atol(at + strlen(key));
    }
    curl_easy_cleanup(c);
    free(b.p);
    return v;
}

static bool logs_contain(wt_env *env, const char *needle)
{
    for (int i = 0; i < env->nchildren; i++) {
        FILE *fp = fopen(env->children[i].log, "r");
        if (!fp)
            continue;
        char line[4096];
        bool hit = false;
        while (!hit && fgets(line, sizeof line, fp))
            hit = strstr(line, needle) != NULL;
        fclose(fp);
        if (hit)
            return true;
    }
    return false;
}

typedef enum {
    V_CAMPAIGNS, /* three campaigns */
    V_LATE,      /* the third campaign published inside the lost interval */
    V_SEQUENCE,  /* the second tenant's messages are a drip sequence's two steps */
} loss_variant;

typedef struct campaigns_arg {
    PGconn *db;
    int n;
    bool sequence; /* and the sequence's contacts all done */
} campaigns_arg;

static bool campaigns_final(void *arg)
{
    campaigns_arg *a = arg;
    return wt_sql_long(a->db, "SELECT count(*) FROM campaigns WHERE title = 'loss' AND status IN "
                              "('finished', 'failed', 'cancelled')") == a->n &&
           (!a->sequence ||
            wt_sql_long(a->db, "SELECT count(*) FROM sequence_contacts WHERE status = 'active'"
                               " OR claimed_by IS NOT NULL") == 0);
}

static bool campaign_queued(void *arg)
{
    campaigns_arg *a = arg;
    return wt_sql_long(a->db, "SELECT count(*) FROM broadcast_messages m JOIN campaigns c"
                              " ON c.id = m.campaign_id WHERE c.message LIKE 'Late%%'"
                              " AND m.status <> 'pending'") > 0;
}

static void add_campaign(PGconn *db, sc_world *w, int user, const char *text)
{
    PQclear(wt_sql(db,
                   "INSERT INTO campaigns (user_id, title, message, target_status, scheduled_at)"
                   " VALUES ('%s', 'loss', '%s {{name}}', 'all', now())",
                   w->users[user], text));
}

/* Lets the scenario's clock run: the lost interval is a length of time, not
 * something to wait for. */
static void let_time_pass(int ms)
{
    long long until = wt_now_ms() + ms;
    while (wt_now_ms() < until)
        usleep(20000);
}

/* The second tenant's drip sequence: every lead tagged, two steps (the
 * second 2 s after the first). */
static void add_sequence(PGconn *db, sc_world *w, int user)
{
    char seq[40];
    wt_sql_text(db, seq, sizeof seq,
                "INSERT INTO sequences (user_id, name, \"trigger\", target_status) VALUES"
                " ('%s', 'loss', 'LOSS', 'all') RETURNING id",
                w->users[user]);
    PQclear(wt_sql(db,
                   "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds, message)"
                   " VALUES ('%s', 1, 0, 'Step1 {{name}}'), ('%s', 2, 2, 'Step2 {{name}}')",
                   seq, seq));
    PQclear(
        wt_sql(db, "UPDATE leads SET \"trigger\" = 'LOSS' WHERE user_id = '%s'", w->users[user]));
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'active' WHERE id = '%s'", seq));
}

static void run(run_mode mode, loss_variant variant, uint64_t run_seed, run_result *out)
{
    wt_env env;
    sc_world world;
    memset(out, 0, sizeof *out);
    assert_int_equal(wt_env_start(&env, WT_REDIS | WT_MIGRATE), 0);
    assert_int_equal(wt_sim_redis_start(&env), 0);
    PGconn *db = wt_pg(&env);
    sc_populate(&world, db, run_seed, NUSERS, DEVICES_PER_USER, 0, NLEADS, MIN_DELAY, MAX_DELAY);

    char sim_url[160], ports[2][32];
    snprintf(sim_url, sizeof sim_url, "WACAST_SIM_REDIS_URL=%s", env.sim_redis_url);
    int sender_port[2] = {wt_free_port(), wt_free_port()};
    const char *base_env[] = {"WACAST_LOG_LEVEL=info",
                              "WACAST_POLL_MS=200",
                              "WACAST_LEASE_TTL_MS=3000",
                              "WACAST_DEVICE_REFRESH_MS=500",
                              "WACAST_IDLE_POLL_MS=1000",
                              "WACAST_RECONCILE_MS=2000",
                              "WACAST_ONLINE_GRACE_MS=10000",
                              "WACAST_CLAIM_IDLE_MS=3000",
                              "WACAST_SIM_CALLBACKS=sent",
                              "WACAST_SIM_CALLBACK_DELAY_MS=100",
                              "WACAST_FENCE_MS=100",
                              "WACAST_TIMEOUT_MS=3000",
                              sim_url,
                              NULL,
                              NULL};
    size_t last = sizeof base_env / sizeof base_env[0] - 2;
    assert_true(wt_spawn(&env, "wacast-scheduler", "scheduler-1", base_env) > 0);
    assert_true(wt_spawn(&env, "wacast-dispatcher", "dispatcher-1", base_env) > 0);
    assert_true(wt_spawn(&env, "wacast-dispatcher", "dispatcher-2", base_env) > 0);
    for (int k = 0; k < 2; k++) {
        char name[32];
        snprintf(ports[k], sizeof ports[k], "PORT=%d", sender_port[k]);
        base_env[last] = ports[k];
        snprintf(name, sizeof name, "sender-%d", k + 1);
        assert_true(wt_spawn(&env, "wacast-sender", name, base_env) > 0);
    }
    base_env[last] = NULL;

    if (mode == RUN_KILL_FSYNCED) {
        redisContext *rc = wt_redis(&env);
        redisReply *r = redisCommand(rc, "CONFIG SET appendfsync always");
        assert_non_null(r);
        freeReplyObject(r);
        redisFree(rc);
    }

    long long t0 = wt_now_ms();
    add_campaign(db, &world, 0, "Hello");
    int ncampaigns = 1;
    if (variant == V_SEQUENCE) {
        add_sequence(db, &world, 1);
    } else {
        add_campaign(db, &world, 1, "Hi");
        ncampaigns++;
    }
    if (variant != V_LATE) {
        add_campaign(db, &world, 0, "Hey");
        ncampaigns++;
    }
    campaigns_arg ca = {db, ncampaigns, variant == V_SEQUENCE};
    /* The crash comes once a quarter of the first campaigns' messages went out. */
    long long deadline = t0 + 60000;
    while (wt_sql_long(db, "SELECT count(*) FROM broadcast_messages WHERE status = 'sent'") <
           (long)(NLEADS / 4)) {
        assert_true(wt_now_ms() < deadline);
        usleep(20000);
    }
    if (mode == RUN_LOSS)
        assert_int_equal(wt_redis_copy_aof(&env, "aof-copy"), 0);
    long long crash_from = wt_now_ms();
    if (variant == V_LATE) {
        /* The third campaign is published inside the interval Redis loses. */
        add_campaign(db, &world, 1, "Late");
        ca.n = 3;
        assert_true(wt_wait_for(campaign_queued, &ca, 10000));
    }
    long long left = LOST_INTERVAL_MS - (wt_now_ms() - crash_from);
    let_time_pass(left > 0 ? (int)left : 0);
    if (mode != RUN_PLAIN) {
        assert_int_equal(wt_redis_stop(&env, true), 0);
        snapshot_sent(db);
        if (mode == RUN_LOSS)
            assert_int_equal(wt_redis_restore_aof(&env, "aof-copy"), 0);
        assert_int_equal(wt_redis_start(&env), 0);
    } else {
        snapshot_sent(db);
    }

    bool done = wt_wait_for(campaigns_final, &ca, FINAL_DEADLINE_MS);
    out->final_s = (double)(wt_now_ms() - t0) / 1000.0;
    if (!done) {
        fprintf(stderr, "redis_loss: campaigns not final after %d s\n", FINAL_DEADLINE_MS / 1000);
        wt_dump_logs(&env, 60);
    }

    size_t nrec = 0;
    long long *rec = read_record(&env, &nrec);
    for (size_t i = 0; i < nrec;) {
        size_t j = i;
        while (j < nrec && rec[j] == rec[i])
            j++;
        if (j - i > 1) {
            out->twice++;
            if (bsearch(&rec[i], sent_at_crash, nsent_at_crash, sizeof *sent_at_crash, cmp_ll)) {
                out->twice_sent_at_crash++;
                fprintf(stderr,
                        "redis_loss: message %lld was sent %zu times; PostgreSQL had it "
                        "sent at the crash\n",
                        rec[i], j - i);
            }
        }
        i = j;
    }
    PGresult *rows = wt_sql(db, "SELECT m.id, m.status::text FROM broadcast_messages m"
                                " LEFT JOIN campaigns c ON c.id = m.campaign_id"
                                " WHERE c.title = 'loss' OR m.sequence_id IS NOT NULL");
    out->messages = PQntuples(rows);
    for (int i = 0; i < PQntuples(rows); i++) {
        long long id = atoll(PQgetvalue(rows, i, 0));
        const char *st = PQgetvalue(rows, i, 1);
        bool sent = !strcmp(st, "sent") || !strcmp(st, "delivered") || !strcmp(st, "read");
        bool recorded = bsearch(&id, rec, nrec, sizeof *rec, cmp_ll) != NULL;
        if (!sent && strcmp(st, "skipped") != 0) {
            out->lost++;
            fprintf(stderr, "redis_loss: message %lld ended %s\n", id, st);
        } else if (sent && !recorded) {
            out->lost++;
            fprintf(stderr, "redis_loss: message %lld is %s with no send in the record\n", id, st);
        }
    }
    PQclear(rows);
    free(rec);
    out->losses = wt_sql_long(db, "SELECT coalesce(max(losses), 0) FROM redis_fence");
    for (int k = 0; k < 2; k++) {
        long v = metric(sender_port[k], "wacast_sender_redis_loss_recoveries_total");
        long d = metric(sender_port[k], "wacast_sender_pg_already_done_total");
        assert_true(v >= 0 && d >= 0);
        out->recoveries += v;
        out->pg_already_done += d;
    }
    out->recovery_logged = logs_contain(&env, "recovering from a Redis loss");
    fprintf(stderr,
            "redis_loss: %s%s seed %llu: %ld messages, final after %.1f s, messaged twice %ld"
            " (%ld of them sent in PostgreSQL at the crash), lost %ld, redis losses %ld,"
            " sender recoveries %ld, found final in PostgreSQL %ld\n",
            mode == RUN_PLAIN  ? "no crash"
            : mode == RUN_LOSS ? "power loss"
                               : "kill -9 fsynced",
            variant == V_LATE       ? " (publication in the lost second)"
            : variant == V_SEQUENCE ? " (a drip sequence)"
                                    : "",
            (unsigned long long)run_seed, out->messages, out->final_s, out->twice,
            out->twice_sent_at_crash, out->lost, out->losses, out->recoveries,
            out->pg_already_done);
    if (!done || out->lost || out->twice_sent_at_crash)
        wt_dump_logs(&env, 30);
    PQfinish(db);
    wt_env_stop(&env);
    sc_world_free(&world);
    assert_true(done);
}

static void loss_case(uint64_t run_seed, loss_variant variant)
{
    run_result plain, crash;
    run(RUN_PLAIN, variant, run_seed, &plain);
    run(RUN_LOSS, variant, run_seed, &crash);
    assert_int_equal(plain.lost, 0);
    /* Without a crash nothing looks lost. */
    assert_int_equal(plain.losses, 0);
    assert_int_equal(plain.recoveries, 0);
    assert_int_equal(crash.lost, 0);
    assert_int_equal(crash.twice_sent_at_crash, 0);
    /* The loss was noticed and recovered from. */
    assert_true(crash.losses >= 1);
    assert_true(crash.recoveries >= 1);
    assert_true(crash.final_s <= plain.final_s + 20.0);
}

/* 1. Power loss mid-campaign, two seeds. */
static void test_power_loss(void **state)
{
    (void)state;
    loss_case(seed, V_CAMPAIGNS);
    loss_case(seed + 1, V_CAMPAIGNS);
}

/* 2. The lost interval holds the publication of a campaign. */
static void test_publication_lost(void **state)
{
    (void)state;
    loss_case(seed + 2, V_LATE);
}

/* 4. Power loss while a drip sequence's steps go out. */
static void test_sequence_power_loss(void **state)
{
    (void)state;
    loss_case(seed + 4, V_SEQUENCE);
}

/* 3. kill -9 with every write fsynced: no loss, so no recovery. */
static void test_fsynced_kill_is_no_loss(void **state)
{
    (void)state;
    run_result r;
    run(RUN_KILL_FSYNCED, V_CAMPAIGNS, seed + 3, &r);
    assert_int_equal(r.lost, 0);
    assert_int_equal(r.twice, 0);
    assert_int_equal(r.losses, 0);
    assert_int_equal(r.recoveries, 0);
    assert_false(r.recovery_logged);
}

typedef struct doubt_arg {
    wt_env *env;
    PGconn *db;
    long long a, b;
    long others;        /* messages of the campaign other than a and b */
    long others_sent;   /* of them, in the record */
    int a_sent, b_sent; /* sends of a and b in the record */
    long long first_us, last_us;
    long long min_gap_us; /* shortest gap between two sends of the device */
} doubt_arg;

static void doubt_scan(doubt_arg *d)
{
    redisContext *rc = wt_sim_redis(d->env);
    redisReply *r = redisCommand(rc, "XRANGE wacast:sim:sends - +");
    assert_non_null(r);
    d->others_sent = 0;
    d->a_sent = d->b_sent = 0;
    d->min_gap_us = -1;
    long long prev = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        long long msg = atoll(field(f, "msg")), ts = atoll(field(f, "ts_us"));
        if (msg == d->a)
            d->a_sent++;
        else if (msg == d->b)
            d->b_sent++;
        else
            d->others_sent++;
        if (prev && (d->min_gap_us < 0 || ts - prev < d->min_gap_us))
            d->min_gap_us = ts - prev;
        prev = ts;
    }
    freeReplyObject(r);
    redisFree(rc);
}

static bool others_sent(void *arg)
{
    doubt_arg *d = arg;
    doubt_scan(d);
    return d->others_sent >= d->others;
}

static bool a_sent(void *arg)
{
    doubt_arg *d = arg;
    doubt_scan(d);
    return d->a_sent > 0;
}

static bool all_queued(void *arg)
{
    doubt_arg *d = arg;
    return wt_sql_long(d->db, "SELECT count(*) FROM broadcast_messages WHERE status = 'pending'") ==
               0 &&
           wt_sql_long(d->db, "SELECT count(*) FROM broadcast_messages WHERE status = 'queued'") >=
               6;
}

static bool routed(void *arg)
{
    doubt_arg *d = arg;
    redisContext *rc = wt_redis(d->env);
    bool ok = true;
    long long ids[] = {d->a, d->b};
    for (int i = 0; i < 2 && ok; i++) {
        redisReply *r = redisCommand(rc, "GET wacast:msg:%lld", ids[i]);
        ok = r && r->type == REDIS_REPLY_STRING && r->str[0] == 'r';
        if (r)
            freeReplyObject(r);
    }
    redisFree(rc);
    return ok;
}

/* 4. A send in doubt holds up neither its device nor, when PostgreSQL knows
 * its outcome, itself: with two messages left in doubt by a "dead" sender
 * (claims of a sender that never sent), the device's other messages go out
 * at their pace at once; the one whose row is already sent is never sent;
 * the other goes out once, after the in-doubt wait. */
static void test_in_doubt_does_not_stall(void **state)
{
    (void)state;
    wt_env env;
    sc_world world;
    assert_int_equal(wt_env_start(&env, WT_REDIS | WT_MIGRATE), 0);
    assert_int_equal(wt_sim_redis_start(&env), 0);
    PGconn *db = wt_pg(&env);
    sc_populate(&world, db, seed + 4, 1, 1, 0, 14, 0.1, 0.2);
    char sim_url[160], port[32];
    int sender_port = wt_free_port();
    snprintf(sim_url, sizeof sim_url, "WACAST_SIM_REDIS_URL=%s", env.sim_redis_url);
    snprintf(port, sizeof port, "PORT=%d", sender_port);
    const char *envs[] = {"WACAST_LOG_LEVEL=info",
                          "WACAST_POLL_MS=200",
                          "WACAST_LEASE_TTL_MS=3000",
                          "WACAST_DEVICE_REFRESH_MS=500",
                          "WACAST_IDLE_POLL_MS=1000",
                          "WACAST_ONLINE_GRACE_MS=60000",
                          "WACAST_IN_DOUBT_MS=8000",
                          "WACAST_SIM_CALLBACKS=sent",
                          "WACAST_TIMEOUT_MS=3000",
                          sim_url,
                          NULL,
                          NULL};
    assert_true(wt_spawn(&env, "wacast-scheduler", "scheduler-1", envs) > 0);
    assert_true(wt_spawn(&env, "wacast-dispatcher", "dispatcher-1", envs) > 0);
    /* The device must look healthy to the feeder before any sender runs. */
    PQclear(wt_sql(db, "UPDATE user_devices SET status = 'online', last_seen = now()"));
    add_campaign(db, &world, 0, "Doubt");
    doubt_arg d = {.env = &env, .db = db};
    assert_true(wt_wait_for(all_queued, &d, 30000));
    PGresult *r = wt_sql(db, "SELECT id FROM broadcast_messages WHERE status = 'queued'"
                             " ORDER BY id LIMIT 2");
    d.a = atoll(PQgetvalue(r, 0, 0));
    d.b = atoll(PQgetvalue(r, 1, 0));
    PQclear(r);
    d.others =
        wt_sql_long(db, "SELECT count(*) FROM broadcast_messages WHERE status = 'queued'") - 2;
    if (!wt_wait_for(routed, &d, 15000)) {
        wt_dump_logs(&env, 30);
        fail_msg("messages %lld and %lld were not routed", d.a, d.b);
    }
    /* A sender claimed both and died before its outcome: a's row says
     * nothing more, b's row got its status from elsewhere. */
    redisContext *rc = wt_redis(&env);
    redisReply *t = redisCommand(rc, "TIME");
    long long wall_ms = atoll(t->element[0]->str) * 1000 + atoll(t->element[1]->str) / 1000;
    freeReplyObject(t);
    long long ids[] = {d.a, d.b};
    for (int i = 0; i < 2; i++) {
        redisReply *x = redisCommand(rc, "SET wacast:msg:%lld c:%s:ghost:%lld EX 600", ids[i],
                                     world.devices[0].id, wall_ms);
        freeReplyObject(x);
    }
    redisFree(rc);
    PQclear(wt_sql(db,
                   "UPDATE broadcast_messages SET status = 'sent', sent_at = now()"
                   " WHERE id = %lld",
                   d.b));

    long long start = wt_now_ms();
    envs[sizeof envs / sizeof envs[0] - 2] = port;
    assert_true(wt_spawn(&env, "wacast-sender", "sender-1", envs) > 0);
    assert_true(wt_wait_for(others_sent, &d, 30000));
    double others_s = (double)(wt_now_ms() - start) / 1000.0;
    int a_before = d.a_sent;
    assert_true(wt_wait_for(a_sent, &d, 30000));
    double a_s = (double)(wt_now_ms() - start) / 1000.0;
    doubt_scan(&d);
    long resolved = metric(sender_port, "wacast_sender_pg_already_done_total");
    fprintf(stderr,
            "redis_loss: in doubt: %ld other message(s) sent %.1f s after the sender started"
            " (the in-doubt one %s then), in-doubt one sent after %.1f s (%d time(s)), the one"
            " PostgreSQL had sent: %d send(s), shortest gap %.3f s, settled from PostgreSQL %ld\n",
            d.others, others_s, a_before ? "sent already" : "still waiting", a_s, d.a_sent,
            d.b_sent, (double)d.min_gap_us / 1e6, resolved);
    if (a_before || d.a_sent != 1 || d.b_sent != 0 || resolved < 1)
        wt_dump_logs(&env, 40);
    PQfinish(db);
    wt_env_stop(&env);
    sc_world_free(&world);
    assert_int_equal(a_before, 0);
    assert_int_equal(d.a_sent, 1);
    assert_int_equal(d.b_sent, 0);
    assert_true(resolved >= 1);
    assert_true(d.min_gap_us >= 100000);
}

int main(int argc, char **argv)
{
    if (sodium_init() < 0)
        return 1;
    seed = argc > 1 ? strtoull(argv[1], NULL, 10) : randombytes_random();
    fprintf(stderr, "test_redis_loss: seed %llu (replay: test_redis_loss %llu)\n",
            (unsigned long long)seed, (unsigned long long)seed);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (getenv("TEST_FILTER"))
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fsynced_kill_is_no_loss), cmocka_unit_test(test_power_loss),
        cmocka_unit_test(test_publication_lost),        cmocka_unit_test(test_sequence_power_loss),
        cmocka_unit_test(test_in_doubt_does_not_stall),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(sent_at_crash);
    curl_global_cleanup();
    return rc;
}
