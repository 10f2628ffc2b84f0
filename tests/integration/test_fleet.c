/* The device fleet while senders come and go: 10,000 sim devices (20 users
 * x 500) with sub-second delays, 3 leads per device and one campaign per user
 * (30,000 messages), sent by 2 senders; a third sender joins at ~20 % of the
 * sends, one of the first two is stopped with SIGTERM at ~45 % and the other
 * is killed (SIGKILL) at ~70 %; each step waits until the previous one shows
 * in the record as devices sending from a new sender. Afterwards, from the
 * sim record (what the "provider" received, with the sending process's
 * instance id and the send instant):
 *
 * - every message was sent exactly once, to its lead, with its text, and
 *   nothing else was sent; Postgres rows and campaign counters agree;
 * - per device, every gap between two consecutive sends is at least that
 *   device's min_delay, whichever senders made them: a device never sent from
 *   two senders at once and its pacing held across every move;
 * - each kind of move (join, SIGTERM, SIGKILL) happened while devices had work;
 * - the stopped sender exited 0 on its own and handed its devices back; after
 *   SIGTERM it finished at most the step in hand per device; neither it nor
 *   the killed sender sent anything once gone; the third sender took part.
 *
 * Devices' min_delay differs (0.30-0.50 s by device, max = min + 0.4 s) so
 * that a gap is checked against the delay of its own device. A hand-over
 * (release, the new owner's next heartbeat, lease, first read) takes longer
 * than a sub-second delay, so those devices alone cannot show whether the
 * next send time survives a move: 200 more devices of a 21st user ("probe",
 * 5-9 s delays, 12 leads each, 2,400 messages, campaign started first so
 * that they send all through the moves) can: a sender built to ignore the
 * carried-over next send time fails this test on them. The lease TTL is 3 s (as
 * in test_chaos), so a killed sender's devices move after ~3 s, and its
 * in-doubt messages wait WACAST_IN_DOUBT_MS (20 s) for a status. */
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

#include "scenario.h"

#define NUSERS 20
#define DEVICES_PER_USER 500
#define LEADS_PER_DEVICE 3
/* The probe user: devices slow enough that a hand-over can be shorter than
 * their delay, so the record shows whether pacing was carried across it. */
#define PROBE_DEVICES 200
#define PROBE_LEADS 12
#define NCAMPAIGNS (NUSERS + 1)
#define NDEVICES (NUSERS * DEVICES_PER_USER + PROBE_DEVICES)
#define NMESSAGES (NUSERS * DEVICES_PER_USER * LEADS_PER_DEVICE + PROBE_DEVICES * PROBE_LEADS)
#define NSENDERS 3
#define STOP_TIMEOUT_MS 10000 /* WACAST_STOP_TIMEOUT_MS below */
#define ONLINE_TIMEOUT_MS 180000
#define STEP_TIMEOUT_MS 240000
#define FINISH_TIMEOUT_MS 300000

static wt_env env;
static PGconn *db;
static redisContext *rd;
static char campaigns[NCAMPAIGNS][40];
static bool campaign_is_probe[NCAMPAIGNS];
static sc_send *sends;
static size_t nsends;

/* The senders, and what the driver did to them. */
typedef struct sender_slot {
    char name[24];        /* log file name */
    char instance_id[32]; /* the "sender" field of the record */
    pid_t pid;
    int exit_status;     /* as from waitpid, once gone */
    long long signal_us; /* wall clock when SIGTERM/SIGKILL was sent */
    long long gone_us;   /* wall clock once the process had exited */
} sender_slot;

static sender_slot senders[NSENDERS];
enum { STOPPED = 0, KILLED = 1, JOINER = 2 }; /* sender-1, sender-2, sender-3 */

/* Per device: its min and max delay (µs), from Postgres. */
typedef struct fleet_device {
    char id[40];
    long long min_delay_us, max_delay_us;
    bool probe;
} fleet_device;

static fleet_device devices[NDEVICES];
static long long run_started_ms, probe_due_ms, campaign_due_ms, finished_ms;
static long long sends_at_join, sends_at_stop, sends_at_kill;
static long long join_us; /* wall clock when the third sender was started */

static const char *daemon_env[] = {"WACAST_LOG_LEVEL=info",
                                   "WACAST_POLL_MS=200",
                                   "WACAST_LEASE_TTL_MS=3000",
                                   "WACAST_STOP_TIMEOUT_MS=10000",
                                   "WACAST_DEVICE_REFRESH_MS=500",
                                   "WACAST_IDLE_POLL_MS=1000",
                                   "WACAST_RECONCILE_MS=2000",
                                   "WACAST_ONLINE_GRACE_MS=10000",
                                   "WACAST_CLAIM_IDLE_MS=3000",
                                   "WACAST_BATCH=1000",
                                   "WACAST_IN_DOUBT_MS=20000",
                                   "WACAST_SIM_CALLBACKS=sent",
                                   "WACAST_SIM_CALLBACK_DELAY_MS=100",
                                   "WACAST_START_TIMEOUT=60",
                                   "WACAST_TIMEOUT_MS=3000",
                                   NULL};

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void start_sender(int k)
{
    sender_slot *s = &senders[k];
    snprintf(s->name, sizeof s->name, "sender-%d", k + 1);
    snprintf(s->instance_id, sizeof s->instance_id, "fleet-sender-%d", k + 1);
    char id_env[64];
    snprintf(id_env, sizeof id_env, "WACAST_INSTANCE_ID=%s", s->instance_id);
    const char *envs[32];
    int n = 0;
    for (int i = 0; daemon_env[i]; i++)
        envs[n++] = daemon_env[i];
    envs[n++] = id_env;
    envs[n] = NULL;
    s->pid = wt_spawn(&env, "wacast-sender", s->name, envs);
    if (s->pid <= 0)
        abort();
}

static bool devices_online(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM user_devices WHERE status = 'online'") == NDEVICES;
}

static bool campaigns_final(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM campaigns WHERE title = 'fleet' AND status IN "
                           "('finished', 'failed', 'cancelled')") == NCAMPAIGNS;
}

static void populate(void)
{
    PQclear(wt_sql(db,
                   "INSERT INTO users (name) SELECT 'fleet user ' || lpad(u::text, 2, '0')"
                   " FROM generate_series(1, %d) u UNION ALL SELECT 'fleet probe'",
                   NUSERS));
    /* Device k of a user: min_delay 0.30 + 0.05·(k mod 5) s, max = min + 0.4 s;
     * the probe user's: 5.0 + 0.25·(k mod 5) s, max = min + 3 s. */
    PQclear(wt_sql(db,
                   "INSERT INTO user_devices (user_id, device_name, platform, min_delay_seconds,"
                   " max_delay_seconds)"
                   " SELECT u.id, u.name || ' device ' || k, 'sim', 0.300 + 0.050 * (k %% 5),"
                   " 0.700 + 0.050 * (k %% 5)"
                   " FROM users u, generate_series(0, %d) k WHERE u.name <> 'fleet probe'"
                   " UNION ALL"
                   " SELECT u.id, u.name || ' device ' || k, 'sim', 5.000 + 0.250 * (k %% 5),"
                   " 8.000 + 0.250 * (k %% 5)"
                   " FROM users u, generate_series(0, %d) k WHERE u.name = 'fleet probe'",
                   DEVICES_PER_USER - 1, PROBE_DEVICES - 1));
    /* Lead n (unique over the whole fleet) is "Lead n" on phone +6012nnnnnnn,
     * on device n / 100 (devices in id order), which belongs to the lead's own
     * user; a device has LEADS_PER_DEVICE leads, a probe device PROBE_LEADS. */
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone, target_status)"
                   " SELECT d.user_id, d.id, 'Lead ' || (d.ord * 100 + m),"
                   " '+6012' || lpad((d.ord * 100 + m)::text, 7, '0'), 'prospect'"
                   " FROM (SELECT ud.id, ud.user_id, u.name = 'fleet probe' AS probe,"
                   "       row_number() OVER (ORDER BY ud.id) - 1 AS ord"
                   "       FROM user_devices ud JOIN users u ON u.id = ud.user_id) d,"
                   " LATERAL generate_series(0, CASE WHEN d.probe THEN %d ELSE %d END) m",
                   PROBE_LEADS - 1, LEADS_PER_DEVICE - 1));
    PQclear(wt_sql(db, "ANALYZE"));
    PGresult *r = wt_sql(db, "SELECT ud.id, (ud.min_delay_seconds * 1000000)::bigint,"
                             " (ud.max_delay_seconds * 1000000)::bigint, u.name = 'fleet probe'"
                             " FROM user_devices ud JOIN users u ON u.id = ud.user_id");
    if (PQntuples(r) != NDEVICES || wt_sql_long(db, "SELECT count(*) FROM leads") != NMESSAGES)
        abort();
    for (int i = 0; i < NDEVICES; i++) {
        snprintf(devices[i].id, sizeof devices[i].id, "%s", PQgetvalue(r, i, 0));
        devices[i].min_delay_us = atoll(PQgetvalue(r, i, 1));
        devices[i].max_delay_us = atoll(PQgetvalue(r, i, 2));
        devices[i].probe = !strcmp(PQgetvalue(r, i, 3), "t");
    }
    PQclear(r);
}

static int cmp_device_id(const void *a, const void *b)
{
    return strcmp(((const fleet_device *)a)->id, ((const fleet_device *)b)->id);
}

static const fleet_device *device_by_id(const char *id)
{
    fleet_device key;
    snprintf(key.id, sizeof key.id, "%s", id);
    return bsearch(&key, devices, NDEVICES, sizeof *devices, cmp_device_id);
}

/* The driver's phases, by wall clock: before the join, join..SIGTERM,
 * SIGTERM..SIGKILL, after the SIGKILL. */
enum { PHASES = 4 };
static const char *phase_names[PHASES] = {"before the join", "join..SIGTERM", "SIGTERM..SIGKILL",
                                          "after the SIGKILL"};
static bool before(long long ts_us, long long event_us)
{
    return event_us == 0 || ts_us < event_us; /* 0: not happened yet */
}

static int phase_of(long long ts_us)
{
    if (before(ts_us, join_us))
        return 0;
    if (before(ts_us, senders[STOPPED].signal_us))
        return 1;
    if (before(ts_us, senders[KILLED].signal_us))
        return 2;
    return 3;
}

static int sender_index(const char *instance_id)
{
    for (int k = 0; k < NSENDERS; k++)
        if (!strcmp(senders[k].instance_id, instance_id))
            return k;
    return -1;
}

/* The driver follows the record as it grows: per device, which sender made
 * its latest send, and the moves seen so far (by phase of the later send).
 * Each step waits until the previous one showed up as moves, so the steps
 * stay apart however fast the machine is. */
static struct {
    char after[72]; /* XRANGE start: "(<last entry id>" */
    long long n;
    int probes_started; /* probe devices with a send */
    signed char last_sender[NDEVICES];
    int moves[PHASES][NSENDERS][NSENDERS];
} live;

static const char *reply_field(redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (!strcmp(fields->element[i]->str, name))
            return fields->element[i + 1]->str;
    return "";
}

static void follow_record(void)
{
    for (;;) {
        redisReply *r = redisCommand(rd, "XRANGE wacast:sim:sends %s + COUNT 5000",
                                     live.after[0] ? live.after : "-");
        if (!r || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "XRANGE failed\n");
            abort();
        }
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *fields = r->element[i]->element[1];
            const fleet_device *d = device_by_id(reply_field(fields, "device"));
            int sk = sender_index(reply_field(fields, "sender"));
            live.n++;
            if (!d || sk < 0)
                continue; /* reported by the tests */
            signed char *last = &live.last_sender[d - devices];
            live.probes_started += d->probe && *last < 0;
            if (*last >= 0 && *last != sk)
                live.moves[phase_of(atoll(reply_field(fields, "ts_us")))][*last][sk]++;
            *last = (signed char)sk;
        }
        size_t got = r->elements;
        if (got)
            snprintf(live.after, sizeof live.after, "(%s", r->element[got - 1]->element[0]->str);
        freeReplyObject(r);
        if (got < 5000)
            return;
    }
}

static bool probes_started(void *arg)
{
    (void)arg;
    follow_record();
    return live.probes_started == PROBE_DEVICES;
}

static bool record_reached(void *arg)
{
    follow_record();
    return live.n >= *(long long *)arg;
}

/* ~45 % sent, and devices moved from sender-1 or sender-2 to the joiner. */
static bool ready_to_stop(void *arg)
{
    return record_reached(arg) &&
           live.moves[1][STOPPED][JOINER] + live.moves[1][KILLED][JOINER] > 0;
}

/* ~70 % sent, and devices of the stopped sender sent again from another one. */
static bool ready_to_kill(void *arg)
{
    return record_reached(arg) &&
           live.moves[2][STOPPED][KILLED] + live.moves[2][STOPPED][JOINER] > 0;
}

static int setup(void **state)
{
    (void)state;
    run_started_ms = wt_now_ms();
    if (wt_env_start(&env, WT_REDIS | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    rd = wt_redis(&env);
    populate();
    /* Sorted the C way for bsearch. */
    qsort(devices, NDEVICES, sizeof *devices, cmp_device_id);

    if (wt_spawn(&env, "wacast-scheduler", "scheduler-1", daemon_env) < 0 ||
        wt_spawn(&env, "wacast-dispatcher", "dispatcher-1", daemon_env) < 0)
        return -1;
    start_sender(STOPPED);
    start_sender(KILLED);
    /* The campaign starts once both senders have connected every device, so
     * every send in the record happens under the moves the driver makes. */
    if (!wt_wait_for(devices_online, NULL, ONLINE_TIMEOUT_MS)) {
        fprintf(stderr, "fleet: only %ld of %d devices online after %d s\n",
                wt_sql_long(db, "SELECT count(*) FROM user_devices WHERE status = 'online'"),
                NDEVICES, ONLINE_TIMEOUT_MS / 1000);
        wt_dump_logs(&env, 40);
        return -1;
    }
    /* The probe campaign first: its devices are sending before the others
     * start, and keep sending through the moves. */
    probe_due_ms = wt_now_ms();
    memset(live.last_sender, -1, sizeof live.last_sender);
    PGresult *r = wt_sql(db, "INSERT INTO campaigns (user_id, title, message, target_status,"
                             " scheduled_at) SELECT id, 'fleet', 'Hi {{name}}', 'all', now()"
                             " FROM users WHERE name = 'fleet probe' RETURNING id");
    snprintf(campaigns[NUSERS], sizeof campaigns[NUSERS], "%s", PQgetvalue(r, 0, 0));
    campaign_is_probe[NUSERS] = true;
    PQclear(r);
    if (!wt_wait_for(probes_started, NULL, STEP_TIMEOUT_MS))
        goto stuck;
    r = wt_sql(db, "INSERT INTO campaigns (user_id, title, message, target_status,"
                   " scheduled_at) SELECT id, 'fleet', 'Hi {{name}}', 'all', now()"
                   " FROM users WHERE name <> 'fleet probe' RETURNING id");
    for (int u = 0; u < NUSERS; u++)
        snprintf(campaigns[u], sizeof campaigns[u], "%s", PQgetvalue(r, u, 0));
    PQclear(r);
    campaign_due_ms = wt_now_ms();
    fprintf(stderr,
            "fleet: %d devices online after %.1f s; probe devices sending; %d campaigns,"
            " %d messages due\n",
            NDEVICES, (probe_due_ms - run_started_ms) / 1000.0, NCAMPAIGNS, NMESSAGES);

    /* ~20 %: a third sender joins. */
    long long at = NMESSAGES / 5;
    if (!wt_wait_for(record_reached, &at, STEP_TIMEOUT_MS))
        goto stuck;
    sends_at_join = live.n;
    join_us = now_us();
    start_sender(JOINER);
    fprintf(stderr, "fleet: %s joins at %lld sends (+%.1f s)\n", senders[JOINER].name,
            sends_at_join, (wt_now_ms() - campaign_due_ms) / 1000.0);

    /* ~45 %, once devices moved to the joiner: SIGTERM to sender-1. It must
     * hand its devices back and exit 0 by itself within its stop timeout. */
    at = NMESSAGES * 45 / 100;
    if (!wt_wait_for(ready_to_stop, &at, STEP_TIMEOUT_MS))
        goto stuck;
    sender_slot *s = &senders[STOPPED];
    sends_at_stop = live.n;
    s->signal_us = now_us();
    kill(s->pid, SIGTERM);
    s->exit_status = wt_wait_exit(&env, s->pid, STOP_TIMEOUT_MS + 5000);
    s->gone_us = now_us();
    fprintf(stderr,
            "fleet: %s stopped (SIGTERM) at %lld sends (+%.1f s), exit status %d after %.1f s\n",
            s->name, sends_at_stop, (wt_now_ms() - campaign_due_ms) / 1000.0, s->exit_status,
            (s->gone_us - s->signal_us) / 1e6);
    if (s->exit_status == -1) {
        /* Still running: kill it so the rest of the run goes on; the test fails. */
        kill(s->pid, SIGKILL);
        wt_wait_exit(&env, s->pid, 10000);
        s->gone_us = now_us();
    }

    /* ~70 %, once sender-1's devices send from the others: SIGKILL to
     * sender-2; its devices move when their leases expire. */
    at = NMESSAGES * 70 / 100;
    if (!wt_wait_for(ready_to_kill, &at, STEP_TIMEOUT_MS))
        goto stuck;
    s = &senders[KILLED];
    sends_at_kill = live.n;
    s->signal_us = now_us();
    kill(s->pid, SIGKILL);
    s->exit_status = wt_wait_exit(&env, s->pid, 10000);
    s->gone_us = now_us();
    fprintf(stderr, "fleet: %s killed (SIGKILL) at %lld sends (+%.1f s)\n", s->name, sends_at_kill,
            (wt_now_ms() - campaign_due_ms) / 1000.0);

    if (!wt_wait_for(campaigns_final, NULL, FINISH_TIMEOUT_MS))
        goto stuck;
    finished_ms = wt_now_ms();
    sends = sc_read_sends(&env, &nsends);
    fprintf(stderr, "fleet: campaigns final after %.1f s; sim record: %zu sends\n",
            (finished_ms - campaign_due_ms) / 1000.0, nsends);
    return 0;

stuck:
    follow_record();
    fprintf(stderr, "fleet: stuck at %lld of %d sends (+%.1f s)\n", live.n, NMESSAGES,
            (wt_now_ms() - campaign_due_ms) / 1000.0);
    {
        /* What the unfinished messages look like, for the post-mortem. */
        PGresult *rows = wt_sql(db, "SELECT id, status, coalesce(device_id::text, '-'), attempts,"
                                    " extract(epoch FROM now() - updated_at)::int"
                                    " FROM broadcast_messages WHERE status IN ('pending', 'queued')"
                                    " ORDER BY id LIMIT 30");
        for (int i = 0; rows && i < PQntuples(rows); i++) {
            redisReply *m = redisCommand(rd, "GET wacast:msg:%s", PQgetvalue(rows, i, 0));
            fprintf(stderr,
                    "fleet: open message %s %s device %s attempts %s idle %s s marker %.60s\n",
                    PQgetvalue(rows, i, 0), PQgetvalue(rows, i, 1), PQgetvalue(rows, i, 2),
                    PQgetvalue(rows, i, 3), PQgetvalue(rows, i, 4),
                    m && m->type == REDIS_REPLY_STRING ? m->str : "(none)");
            if (m)
                freeReplyObject(m);
        }
        if (rows)
            PQclear(rows);
    }
    wt_dump_logs(&env, 40);
    return -1;
}

static int teardown(void **state)
{
    (void)state;
    sc_sends_free(sends, nsends);
    if (rd)
        redisFree(rd);
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

static int cmp_send_msg(const void *a, const void *b)
{
    const sc_send *x = a, *y = b;
    return x->msg < y->msg ? -1 : x->msg > y->msg;
}

static int cmp_send_device_ts(const void *a, const void *b)
{
    const sc_send *x = a, *y = b;
    int c = strcmp(x->device, y->device);
    if (c)
        return c;
    return x->ts_us < y->ts_us ? -1 : x->ts_us > y->ts_us;
}

/* Every message row was sent exactly once (one ok record entry with its id),
 * to its row's recipient, with its row's device and text; the record holds
 * nothing else (no failed attempt, no other id); and the rows are exactly the
 * test's leads: one per lead, in the campaign of the lead's user. */
static void test_every_message_exactly_once(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < nsends; i++)
        if (!sends[i].ok && failures++ < 10)
            fprintf(stderr, "failed attempt in the record: msg %lld device %s sender %s\n",
                    sends[i].msg, sends[i].device, sends[i].sender);
    qsort(sends, nsends, sizeof *sends, cmp_send_msg);
    int dup = 0;
    for (size_t i = 1; i < nsends; i++)
        if (sends[i].msg == sends[i - 1].msg && dup++ < 10)
            fprintf(stderr, "duplicate: msg %lld to %s from device %s by %s and by %s\n",
                    sends[i].msg, sends[i].to, sends[i].device, sends[i - 1].sender,
                    sends[i].sender);
    PGresult *r = wt_sql(db, "SELECT m.id, m.campaign_id, m.device_id, m.recipient_phone,"
                             " m.content, m.status, l.name, l.phone, c.user_id = l.user_id,"
                             " m.device_id = l.device_id"
                             " FROM broadcast_messages m JOIN leads l ON l.id = m.lead_id"
                             " JOIN campaigns c ON c.id = m.campaign_id ORDER BY m.id");
    int nrows = PQntuples(r);
    int lost = 0, mismatch = 0, other_device = 0;
    size_t j = 0;
    for (int i = 0; i < nrows; i++) {
        long long id = atoll(PQgetvalue(r, i, 0));
        while (j < nsends && sends[j].msg < id) {
            if (failures++ < 10)
                fprintf(stderr, "record entry for unknown msg %lld (to %s)\n", sends[j].msg,
                        sends[j].to);
            j++;
        }
        if (j == nsends || sends[j].msg != id) {
            if (lost++ < 10)
                fprintf(stderr, "lost: msg %lld to %s (status %s)\n", id, PQgetvalue(r, i, 3),
                        PQgetvalue(r, i, 5));
            continue;
        }
        const sc_send *s = &sends[j];
        other_device += strcmp(PQgetvalue(r, i, 9), "t") != 0;
        char want_text[64];
        snprintf(want_text, sizeof want_text, "Hi %s", PQgetvalue(r, i, 6));
        bool same = !strcmp(s->campaign, PQgetvalue(r, i, 1)) &&
                    !strcmp(s->device, PQgetvalue(r, i, 2)) &&
                    !strcmp(s->to, PQgetvalue(r, i, 3)) && !strcmp(s->to, PQgetvalue(r, i, 7)) &&
                    !strcmp(s->text, want_text) && !strcmp(PQgetvalue(r, i, 8), "t");
        if (!same && mismatch++ < 10)
            fprintf(stderr,
                    "msg %lld: record (campaign %s, device %s, to %s, \"%s\") vs row"
                    " (campaign %s, device %s, to %s, lead %s %s)\n",
                    id, s->campaign, s->device, s->to, s->text, PQgetvalue(r, i, 1),
                    PQgetvalue(r, i, 2), PQgetvalue(r, i, 3), PQgetvalue(r, i, 6),
                    PQgetvalue(r, i, 7));
        while (j < nsends && sends[j].msg == id)
            j++;
    }
    for (; j < nsends; j++)
        if (failures++ < 10)
            fprintf(stderr, "record entry for unknown msg %lld (to %s)\n", sends[j].msg,
                    sends[j].to);
    PQclear(r);
    /* One row per lead, each lead in its own user's campaign (checked above). */
    long leads_without_row = wt_sql_long(
        db, "SELECT count(*) FROM leads l JOIN campaigns c ON c.user_id = l.user_id"
            " WHERE c.title = 'fleet' AND NOT EXISTS (SELECT 1 FROM broadcast_messages m"
            " WHERE m.campaign_id = c.id AND m.lead_id = l.id)");
    fprintf(stderr,
            "exactly once: rows %d, record %zu, lost %d, duplicates %d, mismatches %d,"
            " leads without a row %ld, other problems %d\n",
            nrows, nsends, lost, dup, mismatch, leads_without_row, failures);
    /* Not an error: the router uses another device of the user while the
     * lead's own is not online (e.g. between two owners). */
    fprintf(stderr, "%d messages went out from a device other than their lead's own\n",
            other_device);
    assert_int_equal(nrows, NMESSAGES);
    assert_int_equal(nsends, NMESSAGES);
    assert_int_equal(leads_without_row, 0);
    assert_int_equal(lost, 0);
    assert_int_equal(dup, 0);
    assert_int_equal(mismatch, 0);
    assert_int_equal(failures, 0);
}

/* Postgres agrees with the record: every row 'sent' with sent_at, and each
 * campaign finished with sent_count = its sends in the record, nothing
 * failed, skipped or cancelled. */
static void test_postgres_agrees(void **state)
{
    (void)state;
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM broadcast_messages"
                                     " WHERE status <> 'sent' OR sent_at IS NULL"),
                     0);
    for (int u = 0; u < NCAMPAIGNS; u++) {
        size_t in_record = 0;
        for (size_t i = 0; i < nsends; i++)
            in_record += !strcmp(sends[i].campaign, campaigns[u]);
        PGresult *r = wt_sql(db,
                             "SELECT status, total_count, sent_count, failed_count, skipped_count,"
                             " cancelled_count FROM campaigns WHERE id = '%s'",
                             campaigns[u]);
        if (strcmp(PQgetvalue(r, 0, 0), "finished") || atol(PQgetvalue(r, 0, 2)) != (long)in_record)
            fprintf(stderr,
                    "campaign %s: %s, total %s, sent %s (record %zu), failed %s,"
                    " skipped %s, cancelled %s\n",
                    campaigns[u], PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2),
                    in_record, PQgetvalue(r, 0, 3), PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 5));
        assert_string_equal(PQgetvalue(r, 0, 0), "finished");
        assert_int_equal(atol(PQgetvalue(r, 0, 1)), campaign_is_probe[u]
                                                        ? PROBE_DEVICES * PROBE_LEADS
                                                        : DEVICES_PER_USER * LEADS_PER_DEVICE);
        assert_int_equal(atol(PQgetvalue(r, 0, 2)), (long)in_record);
        assert_int_equal(atol(PQgetvalue(r, 0, 3)), 0);
        assert_int_equal(atol(PQgetvalue(r, 0, 4)), 0);
        assert_int_equal(atol(PQgetvalue(r, 0, 5)), 0);
        PQclear(r);
    }
}

/* Per device, sends in time order: every gap >= the device's min_delay, with
 * no slack (the sender reads the clock for the next send after the record's
 * clock read, both CLOCK_REALTIME in µs on this one machine). A gap between
 * sends by two different senders is the "no device sending from two senders
 * at once" case; it is held to the same bound and counted apart (by the phase
 * of the later send), to show that moves happened while devices had work. */
static void test_pacing_holds_across_moves(void **state)
{
    (void)state;
    qsort(sends, nsends, sizeof *sends, cmp_send_device_ts);
    int violations = 0, cross_violations = 0, moved_devices = 0, moves = 0, unknown = 0;
    int devices_seen = 0;
    long long min_gap = -1, min_cross_gap = -1, min_slack = -1;
    /* Moves of each cohort (fast, probe), and those quicker than the device's
     * max_delay: only there can the record tell whether the next send time
     * was carried over (a longer hand-over fits any draw). */
    int cohort_moves[2] = {0}, tight_moves[2] = {0};
    long long tight_min_slack[2] = {-1, -1};
    int by_sender[NSENDERS] = {0};
    /* moves from sender a to sender b, by phase of the later send */
    int move_pairs[PHASES][NSENDERS][NSENDERS] = {{{0}}};
    for (size_t i = 0; i < nsends;) {
        size_t end = i;
        while (end < nsends && !strcmp(sends[end].device, sends[i].device))
            end++;
        devices_seen++;
        const fleet_device *d = device_by_id(sends[i].device);
        if (!d) {
            if (unknown++ < 10)
                fprintf(stderr, "send from unknown device %s\n", sends[i].device);
            i = end;
            continue;
        }
        bool moved = false;
        for (size_t k = i; k < end; k++) {
            int sk = sender_index(sends[k].sender);
            if (sk < 0) {
                if (unknown++ < 10)
                    fprintf(stderr, "send by unknown sender %s\n", sends[k].sender);
                continue;
            }
            by_sender[sk]++;
            if (k == i)
                continue;
            const sc_send *a = &sends[k - 1], *b = &sends[k];
            long long gap = b->ts_us - a->ts_us;
            int sa = sender_index(a->sender);
            bool cross = sa != sk;
            if (min_gap < 0 || gap < min_gap)
                min_gap = gap;
            if (min_slack < 0 || gap - d->min_delay_us < min_slack)
                min_slack = gap - d->min_delay_us;
            if (cross && sa >= 0) {
                moved = true;
                moves++;
                move_pairs[phase_of(b->ts_us)][sa][sk]++;
                if (min_cross_gap < 0 || gap < min_cross_gap)
                    min_cross_gap = gap;
                cohort_moves[d->probe]++;
                if (gap < d->max_delay_us) {
                    tight_moves[d->probe]++;
                    long long slack = gap - d->min_delay_us;
                    if (tight_min_slack[d->probe] < 0 || slack < tight_min_slack[d->probe])
                        tight_min_slack[d->probe] = slack;
                }
            }
            if (gap < d->min_delay_us) {
                violations++;
                cross_violations += cross;
                if (violations <= 20)
                    fprintf(stderr,
                            "pacing violation on device %s (min_delay %lld us): gap %lld us\n"
                            "  msg %lld to %s at %lld by %s\n  msg %lld to %s at %lld by %s\n",
                            d->id, d->min_delay_us, gap, a->msg, a->to, a->ts_us, a->sender, b->msg,
                            b->to, b->ts_us, b->sender);
            }
        }
        moved_devices += moved;
        i = end;
    }
    fprintf(stderr,
            "pacing: %d devices sent; %d devices changed sender (%d moves);"
            " shortest gap %.1f ms, shortest gap across a move %.1f ms,"
            " least margin over min_delay %.1f ms; %d violations (%d across a move)\n",
            devices_seen, moved_devices, moves, min_gap / 1000.0, min_cross_gap / 1000.0,
            min_slack / 1000.0, violations, cross_violations);
    for (int c = 0; c < 2; c++)
        fprintf(stderr,
                "%s devices: %d moves, %d of them quicker than the device's max_delay"
                " (least margin over min_delay among those %.1f ms)\n",
                c ? "probe (5-9 s)" : "sub-second", cohort_moves[c], tight_moves[c],
                tight_min_slack[c] / 1000.0);
    for (int p = 0; p < PHASES; p++)
        for (int a = 0; a < NSENDERS; a++)
            for (int b = 0; b < NSENDERS; b++)
                if (move_pairs[p][a][b])
                    fprintf(stderr, "  moves %s, %s -> %s: %d\n", phase_names[p], senders[a].name,
                            senders[b].name, move_pairs[p][a][b]);
    fprintf(stderr, "sends by sender: %s %d, %s %d, %s %d\n", senders[0].name, by_sender[0],
            senders[1].name, by_sender[1], senders[2].name, by_sender[2]);
    assert_int_equal(unknown, 0);
    assert_int_equal(violations, 0);
    /* Each hand-over happened while devices had work: the join (1 or 2 -> 3
     * before the SIGTERM), the SIGTERM (1 -> 2 or 3 before the SIGKILL) and
     * the SIGKILL (2 -> 3 after it). */
    assert_true(move_pairs[1][STOPPED][JOINER] + move_pairs[1][KILLED][JOINER] > 0);
    assert_true(move_pairs[2][STOPPED][KILLED] + move_pairs[2][STOPPED][JOINER] > 0);
    assert_true(move_pairs[3][KILLED][JOINER] > 0);
    assert_true(by_sender[JOINER] > 0);
}

static int log_count(const char *name, const char *needle)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.log", env.dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static bool log_contains(const char *name, const char *needle)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.log", env.dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

/* The stopped sender exited 0 on its own, within its stop timeout, after
 * handing its devices back (its log says so, and no stop timeout fired);
 * neither it nor the killed sender sent anything once gone. */
static void test_departed_senders_sent_nothing_more(void **state)
{
    (void)state;
    sender_slot *stopped = &senders[STOPPED], *killed = &senders[KILLED];
    assert_int_not_equal(stopped->exit_status, -1);
    assert_true(WIFEXITED(stopped->exit_status));
    assert_int_equal(WEXITSTATUS(stopped->exit_status), 0);
    assert_true(log_contains(stopped->name, "stopping: handing back"));
    assert_true(log_contains(stopped->name, "stopped: all devices handed back"));
    assert_false(log_contains(stopped->name, "stop timeout"));
    assert_true(WIFSIGNALED(killed->exit_status) && WTERMSIG(killed->exit_status) == SIGKILL);

    int after_stop = 0, after_kill = 0, during_stop = 0;
    for (size_t i = 0; i < nsends; i++) {
        const sc_send *s = &sends[i];
        if (!strcmp(s->sender, stopped->instance_id)) {
            during_stop += s->ts_us >= stopped->signal_us && s->ts_us < stopped->gone_us;
            if (s->ts_us >= stopped->gone_us && after_stop++ < 10)
                fprintf(stderr, "%s sent msg %lld at %lld, after it exited at %lld\n",
                        stopped->name, s->msg, s->ts_us, stopped->gone_us);
        }
        if (!strcmp(s->sender, killed->instance_id) && s->ts_us >= killed->gone_us &&
            after_kill++ < 10)
            fprintf(stderr, "%s sent msg %lld at %lld, after it was killed at %lld\n", killed->name,
                    s->msg, s->ts_us, killed->gone_us);
    }
    /* Between SIGTERM and exit it may finish the step in hand, at most one send
     * per device: it starts no new one. */
    int twice = 0;
    qsort(sends, nsends, sizeof *sends, cmp_send_device_ts);
    for (size_t i = 1; i < nsends; i++) {
        const sc_send *a = &sends[i - 1], *b = &sends[i];
        if (!strcmp(a->device, b->device) && !strcmp(a->sender, stopped->instance_id) &&
            !strcmp(b->sender, stopped->instance_id) && a->ts_us >= stopped->signal_us &&
            twice++ < 10)
            fprintf(stderr,
                    "%s sent twice from device %s after SIGTERM: msg %lld at %lld,"
                    " msg %lld at %lld (SIGTERM at %lld)\n",
                    stopped->name, a->device, a->msg, a->ts_us, b->msg, b->ts_us,
                    stopped->signal_us);
    }
    fprintf(stderr, "%s: %d sends between SIGTERM and exit (%.1f s; steps in hand finishing)\n",
            stopped->name, during_stop, (stopped->gone_us - stopped->signal_us) / 1e6);
    assert_int_equal(twice, 0);
    assert_int_equal(after_stop, 0);
    assert_int_equal(after_kill, 0);
}

static void test_summary(void **state)
{
    (void)state;
    /* In-doubt messages (claimed by the killed sender, outcome unknown) wait
     * WACAST_IN_DOUBT_MS for a status before the new owner sends them: that
     * wait is most of the time after the SIGKILL. */
    int in_doubt = 0, resent = 0;
    for (int k = 0; k < NSENDERS; k++) {
        in_doubt += log_count(senders[k].name, " in doubt (");
        resent += log_count(senders[k].name, "no status within");
    }
    fprintf(stderr, "in doubt after the SIGKILL: %d messages, %d of them sent after the wait\n",
            in_doubt, resent);
    fprintf(stderr,
            "fleet summary: %d messages over %d devices (%d users + probe), 3 senders; join at"
            " %lld, SIGTERM at %lld, SIGKILL at %lld sends; campaigns %.1f s (probe's %.1f s),"
            " whole run %.1f s\n",
            NMESSAGES, NDEVICES, NUSERS, sends_at_join, sends_at_stop, sends_at_kill,
            (finished_ms - campaign_due_ms) / 1000.0, (finished_ms - probe_due_ms) / 1000.0,
            (wt_now_ms() - run_started_ms) / 1000.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_message_exactly_once),
        cmocka_unit_test(test_postgres_agrees),
        cmocka_unit_test(test_pacing_holds_across_moves),
        cmocka_unit_test(test_departed_senders_sent_nothing_more),
        cmocka_unit_test(test_summary),
    };
    return cmocka_run_group_tests_name("fleet", tests, setup, teardown);
}
