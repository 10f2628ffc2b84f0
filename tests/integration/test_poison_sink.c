/* One tenant's bad results never stop anyone's statuses. On real
 * redis-server and PostgreSQL with one scheduler, one dispatcher and one
 * sender: user B runs a campaign on sim devices; while it sends, results for
 * user A's messages arrive on the same results stream, each bad in one way a
 * provider or a gateway can make it bad:
 *   - an error message of 300 x "é" cut at 255 bytes, in the middle of a
 *     character (what a byte-bounded copy of a provider's text leaves);
 *   - an error message with invalid UTF-8 bytes and a NUL in it (the text
 *     ends at the NUL once decoded);
 *   - a device id that is not a UUID;
 *   - a time far beyond what PostgreSQL can hold;
 *   - two messages reporting the same provider message id (the unique index
 *     on provider_message_id refuses the second);
 *   - a provider message id of 1,000 characters.
 * Before the sink contained them, the first batch holding any of these was
 * refused whole and re-read forever, and B's campaign never finished.
 * Asserted: B's campaign finishes with exact counts and every recipient
 * messaged once; every message of A reaches its final status (texts cleaned,
 * the duplicate provider id kept on one message only); exactly one result
 * (the duplicate) is dead-lettered, with its SQLSTATE, and counted. */
#include <setjmp.h>
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
#include "wacast.pb-c.h"
#include "wc_text.h"

#define B_LEADS 150
#define A_MSGS 7

static wt_env env;
static PGconn *db;
static redisContext *rc;
static int dport;
static char user_a[40], user_b[40], dev_b[2][40], camp_a[40], camp_b[40];
static long long msg_a[A_MSGS];

static int setup(void **state)
{
    (void)state;
    if (e2e_env_start(&env, &db, &rc) < 0)
        return -1;
    wt_sql_text(db, user_a, sizeof user_a, "INSERT INTO users (name) VALUES ('a') RETURNING id");
    wt_sql_text(db, user_b, sizeof user_b, "INSERT INTO users (name) VALUES ('b') RETURNING id");
    for (int k = 0; k < 2; k++)
        wt_sql_text(db, dev_b[k], sizeof dev_b[k],
                    "INSERT INTO user_devices (user_id, platform, min_delay_seconds,"
                    " max_delay_seconds) VALUES ('%s', 'sim', 0.03, 0.06)"
                    " RETURNING id",
                    user_b);
    PQclear(wt_sql(db,
                   "INSERT INTO leads (user_id, device_id, name, phone)"
                   " SELECT '%s', CASE WHEN n %% 2 = 0 THEN '%s' ELSE '%s' END::uuid, 'b' || n,"
                   " '+6013' || lpad(n::text, 7, '0') FROM generate_series(1, %d) AS n",
                   user_b, dev_b[0], dev_b[1], B_LEADS));
    /* User A's campaign is already expanded: its messages are out with a
     * provider (queued), and A has no device here, so nothing of A's is
     * routed or sent by this test's sender; only the results below arrive. */
    wt_sql_text(db, camp_a, sizeof camp_a,
                "INSERT INTO campaigns (user_id, title, message, status, total_count,"
                " triggered_at) VALUES ('%s', 'a', 'Hi', 'processing', %d, now())"
                " RETURNING id",
                user_a, A_MSGS);
    for (int i = 0; i < A_MSGS; i++) {
        PGresult *r = wt_sql(db,
                             "INSERT INTO broadcast_messages (campaign_id, user_id,"
                             " recipient_phone, content, status, queued_at) VALUES"
                             " ('%s', '%s', '+601200000%02d', 'Hi', 'queued', now()) RETURNING id",
                             camp_a, user_a, i);
        msg_a[i] = atoll(PQgetvalue(r, 0, 0));
        PQclear(r);
    }
    dport = wt_free_port();
    char port[32];
    snprintf(port, sizeof port, "PORT=%d", dport);
    static const char *base[] = {"WACAST_LOG_LEVEL=info",    "WACAST_POLL_MS=200",
                                 "WACAST_LEASE_TTL_MS=3000", "WACAST_DEVICE_REFRESH_MS=500",
                                 "WACAST_RECONCILE_MS=2000", "WACAST_CLAIM_IDLE_MS=5000"};
    const char *with_port[8], *without[8];
    int n = 0;
    for (; n < 6; n++)
        with_port[n] = without[n] = base[n];
    with_port[n] = port;
    with_port[n + 1] = without[n] = NULL;
    if (wt_spawn(&env, "wacast-scheduler", "scheduler", without) < 0 ||
        wt_spawn(&env, "wacast-dispatcher", "dispatcher", with_port) < 0 ||
        wt_spawn(&env, "wacast-sender", "sender", without) < 0)
        return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return e2e_teardown(&env, db, rc);
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Appends one result to the results stream, as a sender or a webhook would. */
static void add_result(long long msg, Wacast__Status status, const char *code, const char *text,
                       const char *device, const char *provider_id, int64_t at_us)
{
    Wacast__Result res = WACAST__RESULT__INIT;
    res.message_id = msg;
    res.campaign_id = camp_a;
    res.status = status;
    res.error_code = (char *)code;
    res.error_message = (char *)text;
    res.device_id = (char *)device;
    res.provider_message_id = (char *)provider_id;
    res.at_us = at_us;
    res.attempt = 1;
    size_t len = wacast__result__get_packed_size(&res);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    wacast__result__pack(&res, buf);
    redisReply *r = redisCommand(rc, "XADD wacast:results * r %b", buf, len);
    assert_true(r && r->type == REDIS_REPLY_STRING);
    freeReplyObject(r);
    free(buf);
}

/* protobuf-c string fields are C strings: a NUL inside needs the bytes
 * written by hand. Field 6 (error_message) as length-delimited bytes. */
static void add_result_with_nul(long long msg)
{
    Wacast__Result res = WACAST__RESULT__INIT;
    res.message_id = msg;
    res.campaign_id = camp_a;
    res.status = WACAST__STATUS__STATUS_FAILED;
    res.error_code = "131026";
    res.at_us = wall_us();
    res.attempt = 1;
    size_t len = wacast__result__get_packed_size(&res);
    static const char text[] = "bad \xFF\xFE bytes\0and after the NUL";
    uint8_t *buf = malloc(len + sizeof text + 2);
    assert_non_null(buf);
    wacast__result__pack(&res, buf);
    buf[len] = (6 << 3) | 2; /* field 6, length-delimited */
    buf[len + 1] = (uint8_t)(sizeof text - 1);
    memcpy(buf + len + 2, text, sizeof text - 1);
    redisReply *r = redisCommand(rc, "XADD wacast:results * r %b", buf, len + 2 + sizeof text - 1);
    assert_true(r && r->type == REDIS_REPLY_STRING);
    freeReplyObject(r);
    free(buf);
}

static bool b_sending(void *arg)
{
    (void)arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages m JOIN campaigns c"
                       " ON c.id = m.campaign_id WHERE c.user_id = '%s' AND m.status = 'sent'",
                       user_b) > 0;
}

static bool both_final(void *arg)
{
    (void)arg;
    return wt_sql_long(db,
                       "SELECT count(*) FROM campaigns WHERE id IN ('%s', '%s')"
                       " AND status IN ('finished', 'failed')",
                       camp_a, camp_b) == 2;
}

static void test_bad_results_of_one_tenant_stop_nobody(void **state)
{
    (void)state;
    wt_sql_text(db, camp_b, sizeof camp_b,
                "INSERT INTO campaigns (user_id, title, message, scheduled_at)"
                " VALUES ('%s', 'b', 'Hello {{name}}', now()) RETURNING id",
                user_b);
    if (!wt_wait_for(b_sending, NULL, 60000)) {
        wt_dump_logs(&env, 40);
        fail_msg("user B's campaign did not start sending");
    }
    /* 300 x "é" cut at 255 bytes: the last character is half there. */
    char cut[256];
    for (int i = 0; i < 127; i++)
        memcpy(cut + 2 * i, "\xC3\xA9", 2);
    cut[254] = '\xC3';
    cut[255] = '\0';
    char long_id[1001];
    memset(long_id, 'w', 1000);
    long_id[1000] = '\0';
    int64_t now = wall_us();
    add_result(msg_a[0], WACAST__STATUS__STATUS_FAILED, "131000", cut, "", "", now);
    add_result_with_nul(msg_a[1]);
    add_result(msg_a[2], WACAST__STATUS__STATUS_SENT, "", "", "not-a-uuid", "wamid.A2", now);
    add_result(msg_a[3], WACAST__STATUS__STATUS_SENT, "", "", "", "wamid.A3", INT64_MAX);
    add_result(msg_a[4], WACAST__STATUS__STATUS_SENT, "", "", "", "wamid.DUP", now);
    add_result(msg_a[5], WACAST__STATUS__STATUS_SENT, "", "", "", "wamid.DUP", now);
    add_result(msg_a[6], WACAST__STATUS__STATUS_SENT, "", "", "", long_id, now);

    if (!wt_wait_for(both_final, NULL, 120000)) {
        wt_dump_logs(&env, 40);
        fail_msg("a campaign did not reach a final status");
    }

    /* B: exact counts, every recipient once, from B's devices. */
    assert_int_equal(wt_sql_long(db, "SELECT sent_count FROM campaigns WHERE id = '%s'", camp_b),
                     B_LEADS);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                 " AND status = 'sent'",
                                 camp_b),
                     B_LEADS);
    size_t n = 0;
    sc_send *sends = sc_read_sends(&env, &n);
    long b_sends = 0;
    for (size_t i = 0; i < n; i++)
        b_sends += !strcmp(sends[i].campaign, camp_b) && sends[i].ok;
    sc_sends_free(sends, n);
    assert_int_equal(b_sends, B_LEADS);

    /* A: every message final, counters exact. */
    assert_int_equal(wt_sql_long(db, "SELECT sent_count FROM campaigns WHERE id = '%s'", camp_a),
                     5);
    assert_int_equal(wt_sql_long(db, "SELECT failed_count FROM campaigns WHERE id = '%s'", camp_a),
                     2);
    PGresult *r =
        wt_sql(db, "SELECT error_message FROM broadcast_messages WHERE id = %lld", msg_a[0]);
    const char *stored = PQgetvalue(r, 0, 0);
    fprintf(stderr, "cut message stored as %zu bytes\n", strlen(stored));
    /* The 127 whole characters, and U+FFFD for the half one. */
    assert_int_equal(strlen(stored), 257);
    assert_memory_equal(stored, cut, 254);
    assert_memory_equal(stored + 254, "\xEF\xBF\xBD", 3);
    PQclear(r);
    r = wt_sql(db, "SELECT error_message, error_code FROM broadcast_messages WHERE id = %lld",
               msg_a[1]);
    stored = PQgetvalue(r, 0, 0);
    fprintf(stderr, "bytes and NUL stored as \"%s\"\n", stored);
    assert_true(wc_text_valid(stored, strlen(stored)));
    assert_true(!strncmp(stored, "bad ", 4)); /* the text up to the NUL, cleaned */
    assert_string_equal(PQgetvalue(r, 0, 1), "131026");
    PQclear(r);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE id = %lld"
                                 " AND device_id IS NULL AND provider_message_id = 'wamid.A2'",
                                 msg_a[2]),
                     1);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE id = %lld"
                                 " AND sent_at > now() - interval '1 hour'"
                                 " AND sent_at < now() + interval '1 hour'",
                                 msg_a[3]),
                     1);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM broadcast_messages"
                                     " WHERE provider_message_id = 'wamid.DUP'"),
                     1);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE id = %lld"
                                 " AND provider_message_id IS NULL",
                                 msg_a[6]),
                     1);

    /* The duplicate alone was dead-lettered, with why. */
    redisReply *dl = redisCommand(rc, "XRANGE wacast:results:dead - +");
    assert_true(dl && dl->type == REDIS_REPLY_ARRAY);
    assert_int_equal(dl->elements, 1);
    redisReply *f = dl->element[0]->element[1];
    bool state_ok = false, msg_ok = false;
    for (size_t k = 0; k + 1 < f->elements; k += 2) {
        if (!strcmp(f->element[k]->str, "sqlstate"))
            state_ok = !strcmp(f->element[k + 1]->str, "23505");
        if (!strcmp(f->element[k]->str, "message"))
            msg_ok = atoll(f->element[k + 1]->str) == msg_a[4] ||
                     atoll(f->element[k + 1]->str) == msg_a[5];
    }
    freeReplyObject(dl);
    assert_true(state_ok);
    assert_true(msg_ok);
    assert_true(e2e_metric(dport, "wacast_dispatcher_results_dead_lettered_total") == 1.0);
}

static bool row_sent(void *arg)
{
    return wt_sql_long(db,
                       "SELECT count(*) FROM broadcast_messages WHERE id = %lld"
                       " AND status = 'sent'",
                       *(long long *)arg) == 1;
}

/* The cancel sweep marks a message cancelled while its send was in doubt;
 * the provider then says it went out: the row and the counters say sent. */
static void test_sent_after_cancel_is_the_truth(void **state)
{
    (void)state;
    char camp[40];
    wt_sql_text(db, camp, sizeof camp,
                "INSERT INTO campaigns (user_id, title, message, status, total_count,"
                " cancelled_count) VALUES ('%s', 'gone', 'Hi', 'cancelled', 1, 1)"
                " RETURNING id",
                user_a);
    PGresult *r = wt_sql(db,
                         "INSERT INTO broadcast_messages (campaign_id, user_id, recipient_phone,"
                         " content, status) VALUES ('%s', '%s', '+60129999999', 'Hi', 'cancelled')"
                         " RETURNING id",
                         camp, user_a);
    long long msg = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    add_result(msg, WACAST__STATUS__STATUS_SENT, "", "", "", "wamid.LATE", wall_us());
    if (!wt_wait_for(row_sent, &msg, 30000))
        fail_msg("a message sent after its campaign was cancelled still says cancelled");
    assert_int_equal(wt_sql_long(db, "SELECT sent_count FROM campaigns WHERE id = '%s'", camp), 1);
    assert_int_equal(wt_sql_long(db, "SELECT cancelled_count FROM campaigns WHERE id = '%s'", camp),
                     0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_results_of_one_tenant_stop_nobody),
        cmocka_unit_test(test_sent_after_cancel_is_the_truth),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
