/* Issue 15, outcome 4: an image campaign sent end to end through the Cloud
 * API and gowa transports, on real Redis and PostgreSQL, with the Graph API
 * and gowa fakes. 2,000 leads over 4 cloudapi numbers and 4 gowa devices,
 * the campaign's image a base64 data: URL prepared once by the scheduler:
 *
 * 1. every message goes out; the Graph fake got exactly one upload per phone
 *    number id (the prepared JPEG: its sha256 is the media row's), and every
 *    Cloud API send carries the id uploaded to its own number; every gowa
 *    send carries the JPEG as its file part (sha256 and size as stored);
 * 2. the message rows hold media:<sha256>, no image bytes, and the campaign's
 *    storage is one media row;
 * 3. when Meta forgets the uploads (30 days; /_control/media/expire), the
 *    next campaign with the same image re-uploads once per number, after the
 *    one refused send each, and every message still goes out;
 * 4. a sim device's record holds each send's image (sha256 and size);
 * 5. the daemons exit cleanly (under the sanitizers: nothing leaks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "e2e_common.h"

#define NCLOUD 4
#define NGOWA 4
#define NLEADS 2000

static e2e_world w;
static fake gowa;
static char user[40];
static char pnids[NCLOUD][24];
static char ca_ids[NCLOUD][40];
static char gw_ids[NGOWA][40];
static char *data_url;
static char sim_user[40], sim_dev[40];

static int add_devices(void)
{
    json_t *tokens = json_object();
    for (int k = 0; k < NCLOUD; k++) {
        char token[33];
        random_hex(token, 16);
        snprintf(pnids[k], sizeof pnids[k], "10%08d", 7000 + k);
        json_object_set_new(tokens, pnids[k], json_string(token));
        PGresult *r =
            wt_sql(w.db,
                   "INSERT INTO user_devices (user_id, device_name, platform,"
                   " min_delay_seconds, max_delay_seconds, settings) VALUES ('%s',"
                   " 'ca%d', 'cloudapi', 0, 0, '{\"base_url\": \"%s\", \"phone_number_id\":"
                   " \"%s\", \"api_version\": \"v23.0\", \"mps\": 1000}') RETURNING id",
                   user, k, w.fake.base, pnids[k]);
        snprintf(ca_ids[k], sizeof ca_ids[k], "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        char creds[128];
        snprintf(creds, sizeof creds, "{\"access_token\": \"%s\"}", token);
        if (e2e_ctl_set_credentials(&w.env, w.secret_key, ca_ids[k], creds) != 0)
            return -1;
    }
    char *tokens_text = json_dumps(tokens, JSON_COMPACT);
    json_decref(tokens);
    /* No webhooks: the campaign's messages end 'sent'. */
    bool ok = fake_ok(&w.fake, "POST", "/_control/config",
                      "{\"tokens\": %s, \"mps\": 100000, \"statuses\": []}", tokens_text);
    free(tokens_text);
    if (!ok)
        return -1;

    json_t *gw_devices = json_object();
    for (int k = 0; k < NGOWA; k++) {
        char gid[8], jid[40];
        snprintf(gid, sizeof gid, "g%d", k + 1);
        snprintf(jid, sizeof jid, "6030000070%d@s.whatsapp.net", k + 1);
        json_object_set_new(
            gw_devices, gid,
            json_pack("{s:s, s:s, s:s}", "jid", jid, "name", gid, "state", "logged_in"));
        PGresult *r = wt_sql(w.db,
                             "INSERT INTO user_devices (user_id, device_name, platform,"
                             " min_delay_seconds, max_delay_seconds, settings) VALUES ('%s',"
                             " '%s', 'gowa', 0, 0, '{\"base_url\": \"%s\", \"device_id\": \"%s\"}')"
                             " RETURNING id",
                             user, gid, gowa.base, gid);
        snprintf(gw_ids[k], sizeof gw_ids[k], "%s", PQgetvalue(r, 0, 0));
        PQclear(r);
        if (e2e_ctl_set_credentials(&w.env, w.secret_key, gw_ids[k],
                                    "{\"username\": \"wacast\", \"password\": \"pw\"}") != 0)
            return -1;
    }
    char *devs = json_dumps(gw_devices, JSON_COMPACT);
    json_decref(gw_devices);
    ok = fake_ok(&gowa, "POST", "/_control/config",
                 "{\"basic_auth\": [\"wacast:pw\"], \"devices\": %s, \"receipts\": []}", devs);
    free(devs);
    return ok ? 0 : -1;
}

static int setup_world(void)
{
    if (e2e_world_start(&w, "graph.js") < 0)
        return -1;
    if (fake_start(&w.env, &gowa, "gowa.js") < 0)
        return -1;
    snprintf(w.extra_host, sizeof w.extra_host, "%s", gowa.base);
    PGresult *r = wt_sql(w.db, "INSERT INTO users (name) VALUES ('media e2e') RETURNING id");
    snprintf(user, sizeof user, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (add_devices() < 0) {
        wt_dump_logs(&w.env, 20);
        return -1;
    }
    /* The leads, in turn over the eight devices. */
    PQclear(wt_sql(w.db,
                   "INSERT INTO leads (user_id, device_id, name, phone)"
                   " SELECT '%s', d.id, 'Lead ' || i, '+6014' || lpad((1000000 + i)::text, 7, '0')"
                   " FROM generate_series(0, %d) AS i JOIN (SELECT id, row_number() OVER"
                   " (ORDER BY device_name) - 1 AS k FROM user_devices WHERE user_id = '%s') d"
                   " ON d.k = i %% 8",
                   user, NLEADS - 1, user));
    e2e_sim_tenant(w.db, "media e2e sim", 0, 0, "+6015", 5, sim_user, sim_dev);
    data_url = e2e_png_data_url(1200, 800);
    if (!data_url)
        return -1;
    return e2e_world_daemons(&w, NULL, NCLOUD + NGOWA + 1) ? 0 : -1;
}

static int setup(void **state)
{
    return e2e_world_setup(state, &w, setup_world);
}

static int teardown(void **state)
{
    int st = fake_stop(&gowa);
    if (st != 0)
        fprintf(stderr, "the gowa fake exited with status %d\n", st);
    free(data_url);
    return e2e_world_teardown(state);
}

/* A campaign of every lead of owner (n of them) with the image, run until
 * it is finished with every message sent; its id into id. */
static void run_campaign(const char *owner, const char *title, int n, char id[40])
{
    PGresult *r = wt_sql(w.db,
                         "INSERT INTO campaigns (user_id, title, message, media_url, scheduled_at,"
                         " min_delay_seconds, max_delay_seconds) VALUES ('%s', '%s',"
                         " 'Hi {{name}}!', '%s', now() - interval '1 second', 0, 0) RETURNING id",
                         owner, title, data_url);
    snprintf(id, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (!e2e_wait_finished(w.db, id, 80000))
        wt_dump_logs(&w.env, 40);
    assert_true(e2e_wait_sql(w.db, 1000,
                             "SELECT count(*) = %d FROM broadcast_messages WHERE campaign_id = '%s'"
                             " AND status = 'sent'",
                             n, id));
}

/* The Graph fake's uploads: per phone number id, how many and the last id. */
static int uploads_of(json_t *media, const char *pnid, const char *sha, char *last_id, size_t idlen)
{
    int n = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(media, "media"), i, m)
    {
        if (strcmp(jstr(m, "phone_number_id"), pnid) != 0)
            continue;
        n++;
        snprintf(last_id, idlen, "%s", jstr(m, "id"));
        if (strcmp(jstr(m, "sha256"), sha) != 0 || strcmp(jstr(m, "mime_type"), "image/jpeg"))
            fprintf(stderr, "upload %s to %s: sha256 %s, %s; want %s, image/jpeg\n", jstr(m, "id"),
                    pnid, jstr(m, "sha256"), jstr(m, "mime_type"), sha);
    }
    return n;
}

/* Every Cloud API send of the campaign carries the id uploaded to its
 * number; returns the sends counted. */
static int check_cloud_sends(json_t *sent, const char ids[NCLOUD][64], int *bad)
{
    int n = 0;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(sent, "messages"), i, m)
    {
        json_t *image = json_object_get(json_object_get(m, "request"), "image");
        int k = 0;
        while (k < NCLOUD && strcmp(pnids[k], jstr(m, "phone_number_id")) != 0)
            k++;
        n++;
        if (k == NCLOUD || !image || strcmp(jstr(image, "id"), ids[k]) != 0 ||
            strncmp(jstr(image, "caption"), "Hi Lead ", 8) != 0) {
            if ((*bad)++ < 5)
                fprintf(stderr, "send %s from %s: image %s\n", jstr(m, "id"),
                        jstr(m, "phone_number_id"), image ? json_dumps(image, 0) : "none");
        }
    }
    return n;
}

/* One upload of the stored JPEG per phone number id in the Graph fake's
 * record, and every Cloud API send in it carries its own number's id. */
static void check_uploads_and_sends(const char *sha, const char *when)
{
    json_t *media = fake_call(&w.fake, "GET", "/_control/media", NULL);
    assert_non_null(media);
    char ids[NCLOUD][64];
    for (int k = 0; k < NCLOUD; k++) {
        int n = uploads_of(media, pnids[k], sha, ids[k], sizeof ids[k]);
        fprintf(stderr, "%sphone number id %s: %d upload(s), media id %s\n", when, pnids[k], n,
                ids[k]);
        assert_int_equal(n, 1);
    }
    assert_int_equal(json_array_size(json_object_get(media, "media")), NCLOUD);
    json_decref(media);
    json_t *sent = e2e_fake_sent(&w.fake);
    int bad = 0;
    int cloud = check_cloud_sends(sent, ids, &bad);
    json_decref(sent);
    assert_int_equal(bad, 0);
    assert_int_equal(cloud, NLEADS / 2);
}

static void test_image_campaign(void **state)
{
    (void)state;
    char campaign[40];
    run_campaign(user, "image", NLEADS, campaign);
    /* One media row: the campaign's, and the rows refer to it by sha256. */
    char sha[80], size[24];
    wt_sql_text(w.db, sha, sizeof sha,
                "SELECT coalesce(media_sha256, '') FROM campaigns WHERE id = '%s'", campaign);
    assert_int_equal(strlen(sha), 64);
    assert_int_equal(wt_sql_long(w.db, "SELECT count(*) FROM media"), 1);
    wt_sql_text(w.db, size, sizeof size, "SELECT size FROM media WHERE sha256 = '%s'", sha);
    assert_int_equal(wt_sql_long(w.db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                 " AND media_url = 'media:%s'",
                                 campaign, sha),
                     NLEADS);
    assert_true(wt_sql_long(w.db, "SELECT max(octet_length(coalesce(media_url, '')) +"
                                  " octet_length(content)) FROM broadcast_messages") < 200);

    /* Exactly one upload per phone number id, of the stored JPEG, and every
     * Cloud API send carries its number's id. */
    check_uploads_and_sends(sha, "");
    assert_int_equal(e2e_check_none_rejected(&w.fake, "graph"), 0);

    /* Every gowa send carries the JPEG itself. */
    int bad = 0;
    json_t *gsent = e2e_fake_sent(&gowa);
    size_t i;
    json_t *m;
    int gowa_sends = 0;
    json_array_foreach(json_object_get(gsent, "messages"), i, m)
    {
        json_t *image = json_object_get(m, "image");
        gowa_sends++;
        if (strcmp(jstr(m, "kind"), "image") != 0 || strcmp(jstr(image, "sha256"), sha) != 0 ||
            json_integer_value(json_object_get(image, "size")) != atol(size)) {
            if (bad++ < 5)
                fprintf(stderr, "gowa send %s: %s\n", jstr(m, "message_id"), json_dumps(m, 0));
        }
    }
    json_decref(gsent);
    assert_int_equal(bad, 0);
    assert_int_equal(gowa_sends, NLEADS / 2);
    assert_int_equal(e2e_check_none_rejected(&gowa, "gowa"), 0);
}

static void test_expired_uploads(void **state)
{
    (void)state;
    assert_true(fake_ok(&w.fake, "POST", "/_control/media/expire", "{}"));
    /* The record starts again: what follows is this campaign's. */
    assert_true(fake_ok(&w.fake, "POST", "/_control/reset", "{}"));
    char campaign[40];
    run_campaign(user, "image again", NLEADS, campaign);
    /* Still one media row: the same picture. */
    assert_int_equal(wt_sql_long(w.db, "SELECT count(*) FROM media"), 1);
    char sha[80];
    wt_sql_text(w.db, sha, sizeof sha, "SELECT media_sha256 FROM campaigns WHERE id = '%s'",
                campaign);
    check_uploads_and_sends(sha, "after expiry, ");
    /* The refused sends: one per number, before its new upload. */
    long rejected = e2e_fake_stat(&w.fake, "rejected");
    fprintf(stderr, "sends refused for an expired id: %ld\n", rejected);
    assert_int_equal(rejected, NCLOUD);
}

/* The sim's record holds each send's image by sha256 and size. */
static void test_sim_records_the_image(void **state)
{
    (void)state;
    char campaign[40];
    run_campaign(sim_user, "sim image", 5, campaign);
    char sha[80], size[24];
    wt_sql_text(w.db, sha, sizeof sha, "SELECT media_sha256 FROM campaigns WHERE id = '%s'",
                campaign);
    wt_sql_text(w.db, size, sizeof size, "SELECT size FROM media WHERE sha256 = '%s'", sha);
    json_t *records = e2e_sim_records(w.env.redis_url);
    assert_non_null(records);
    size_t i;
    json_t *rec;
    int found = 0;
    json_array_foreach(records, i, rec)
    {
        const char *camp = jstr(rec, "campaign"), *media = jstr(rec, "media"),
                   *msize = jstr(rec, "media_size");
        if (!camp || strcmp(camp, campaign) != 0)
            continue;
        found++;
        assert_non_null(media);
        assert_string_equal(media, sha);
        assert_non_null(msize);
        assert_string_equal(msize, size);
    }
    json_decref(records);
    assert_int_equal(found, 5);
}

/* The daemons exit 0 on SIGTERM: under the sanitizers, nothing the image
 * cache or the uploads held leaks on the way out. */
static void test_stop_cleanly(void **state)
{
    (void)state;
    assert_int_equal(e2e_stop_daemons_cleanly(&w.env), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_image_campaign),
        cmocka_unit_test(test_expired_uploads),
        cmocka_unit_test(test_sim_records_the_image),
        cmocka_unit_test(test_stop_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
