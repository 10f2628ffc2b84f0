/* A drip sequence's step images prepared once, like a campaign's, by the
 * real scheduler, dispatcher and sender (sim devices) on real redis-server
 * and PostgreSQL, the link fetched over real HTTP on loopback from the image
 * host stand-in (tests/fakes/images.js, allowed through
 * WACAST_MEDIA_FETCH_ALLOW).
 *
 * It proves that:
 * 1. a 2-step sequence whose step 1 has a PNG data: URL and step 2 an http
 *    link gets each step's image prepared once at activation (the link
 *    fetched once for all contacts), one media row each, linked from
 *    sequence_steps.media_sha256; every step message row says
 *    media:<sha256> (no row holds image bytes), and the sim's record of
 *    each send carries the sha256 and size of its step's prepared JPEG;
 * 2. a step added to the running sequence with an image
 *    that cannot be prepared is prepared (refused) before its next message:
 *    the reason is on the step (media_error), the contacts reaching it are
 *    failed with it, their rows skipped with media_failed, nothing sent;
 *    its media_url changed to a good link, it is prepared again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "e2e_common.h"
#include "scenario.h"

#define NLEADS 3

static wt_env env;
static PGconn *db;
static fake images;
static char user[40], dev[40], seq[40], step1[40], step2[40];

static void add_step(char *id, int number, double delay, const char *message, const char *media)
{
    char *lit = PQescapeLiteral(db, media, strlen(media));
    wt_sql_text(db, id, 40,
                "INSERT INTO sequence_steps (sequence_id, step_number, delay_seconds, message,"
                " media_url) VALUES ('%s', %d, %.3f, '%s', %s) RETURNING id",
                seq, number, delay, message, lit);
    PQfreemem(lit);
}

static void spawn(const char *program, const char *name, const char *const *more)
{
    char port[32];
    snprintf(port, sizeof port, "PORT=%d", wt_free_port());
    const char *envs[24] = {SC_TEST_TIMINGS, "WACAST_SEQ_MS=100",
                            "WACAST_MEDIA_FETCH_ALLOW=127.0.0.1/32", port};
    size_t n = 0;
    while (envs[n])
        n++;
    for (size_t i = 0; more && more[i] && n < 23; i++)
        envs[n++] = more[i];
    envs[n] = NULL;
    if (wt_spawn(&env, program, name, envs) < 0)
        abort();
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_PG | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    if (fake_start(&env, &images, "images.js") < 0)
        return -1;
    /* Step 2's link: a PNG on the image host. */
    size_t png_len;
    unsigned char *png = e2e_png_rgba(1200, 800, &png_len);
    assert_non_null(png);
    char url[256];
    snprintf(url, sizeof url, "%s/_control/file/step2.png", images.base);
    const char *headers[] = {"X-Serve-Type: image/png", "Content-Type: application/octet-stream",
                             NULL};
    resp r = {0};
    long code = http("PUT", url, (const char *)png, png_len, headers, &r);
    resp_free(&r);
    free(png);
    assert_int_equal(code, 204);

    e2e_sim_tenant(db, "steps", 0.01, 0.02, "+6012777", NLEADS, user, dev);
    PQclear(wt_sql(db, "UPDATE leads SET \"trigger\" = 'IMG' WHERE user_id = '%s'", user));
    wt_sql_text(db, seq, sizeof seq,
                "INSERT INTO sequences (user_id, name, \"trigger\") VALUES ('%s', 'img', 'IMG')"
                " RETURNING id",
                user);
    char *data_url = e2e_png_data_url(900, 600);
    assert_non_null(data_url);
    add_step(step1, 1, 0, "One {{name}}", data_url);
    free(data_url);
    snprintf(url, sizeof url, "%s/f/step2.png", images.base);
    add_step(step2, 2, 0.2, "Two {{name}}", url);
    PQclear(wt_sql(db, "UPDATE sequences SET status = 'active' WHERE id = '%s'", seq));

    spawn("wacast-scheduler", "scheduler", NULL);
    spawn("wacast-sender", "sender", NULL);
    spawn("wacast-dispatcher", "dispatcher", NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fake_stop(&images);
    if (db)
        PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

/* The step's image: a JPEG within the limits, one media row; its sha256. */
static void check_step(const char *step, char *sha, size_t shalen)
{
    wt_sql_text(db, sha, shalen,
                "SELECT coalesce(media_sha256, '') FROM sequence_steps WHERE id = '%s'", step);
    assert_int_equal(strlen(sha), 64);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM media WHERE sha256 = '%s'"
                                 " AND mime_type = 'image/jpeg' AND width <= 1600"
                                 " AND height <= 1600 AND size = octet_length(bytes)"
                                 " AND substr(bytes, 1, 3) = '\\xffd8ff'::bytea",
                                 sha),
                     1);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages"
                                 " WHERE sequence_step_id = '%s' AND status = 'sent'"
                                 " AND media_url = 'media:%s'",
                                 step, sha),
                     NLEADS);
}

static void test_step_images_prepared_once(void **state)
{
    (void)state;
    if (!e2e_wait_sql(db, 90000,
                      "SELECT count(*) = %d FROM sequence_contacts WHERE sequence_id = '%s'"
                      " AND status = 'completed'",
                      NLEADS, seq)) {
        wt_dump_logs(&env, 40);
        fail_msg("the contacts did not complete the sequence");
    }
    char sha1[80], sha2[80];
    check_step(step1, sha1, sizeof sha1);
    check_step(step2, sha2, sizeof sha2);
    assert_string_not_equal(sha1, sha2);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM media"), 2);
    /* The link was fetched once for the three contacts. */
    assert_int_equal(e2e_fake_gets(&images, "/f/step2.png"), 1);
    /* No row holds image bytes. */
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM broadcast_messages"
                                     " WHERE length(coalesce(media_url, '')) > 80"),
                     0);

    /* The sim's record of each send: its step's sha256 and size. */
    json_t *records = e2e_sim_records(env.redis_url);
    assert_non_null(records);
    size_t i;
    json_t *rec;
    int found = 0;
    json_array_foreach(records, i, rec)
    {
        const char *msg = jstr(rec, "msg"), *media = jstr(rec, "media"),
                   *msize = jstr(rec, "media_size");
        assert_non_null(msg);
        char want[160], got[160];
        wt_sql_text(
            db, want, sizeof want,
            "SELECT coalesce(st.media_sha256 || ' ' || m.size, '') FROM broadcast_messages b"
            " JOIN sequence_steps st ON st.id = b.sequence_step_id"
            " JOIN media m ON m.sha256 = st.media_sha256 WHERE b.id = %s",
            msg);
        snprintf(got, sizeof got, "%s %s", media ? media : "(none)", msize ? msize : "(none)");
        assert_string_equal(got, want);
        found++;
    }
    json_decref(records);
    assert_int_equal(found, 2 * NLEADS);
}

static void test_added_step_image_refused_fails_its_contacts(void **state)
{
    (void)state;
    char step3[40];
    /* A step added to the running sequence with a good message and an
     * image that is not one: the completed contacts are done, so reopen
     * them at step 2 (as if step 3 had been there, still to come). */
    add_step(step3, 3, 0, "Three {{name}}", "data:image/png;base64,aGVsbG8gd29ybGQ=");
    PQclear(wt_sql(db,
                   "UPDATE sequence_contacts SET status = 'active', completed_at = NULL,"
                   " next_send_at = now() WHERE sequence_id = '%s'",
                   seq));
    if (!e2e_wait_sql(db, 60000,
                      "SELECT count(*) = %d FROM sequence_contacts WHERE sequence_id = '%s'"
                      " AND status = 'failed'",
                      NLEADS, seq)) {
        wt_dump_logs(&env, 40);
        fail_msg("the contacts reaching the refused step did not fail");
    }
    char reason[600];
    wt_sql_text(db, reason, sizeof reason,
                "SELECT coalesce(media_error, '') || '|' || (media_sha256 IS NULL)::text"
                " FROM sequence_steps WHERE id = '%s'",
                step3);
    fprintf(stderr, "step 3: %s\n", reason);
    if (strncmp(reason, "image_", 6) != 0 || !strstr(reason, "|true"))
        fail_msg("step 3's media_error does not name the image's problem: %s", reason);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE"
                                 " sequence_step_id = '%s' AND status = 'skipped'"
                                 " AND error_code = 'media_failed'"
                                 " AND error_message LIKE 'image error: image_%%'",
                                 step3),
                     NLEADS);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM sequence_contacts WHERE sequence_id = '%s'"
                                 " AND stop_reason LIKE 'step 3 skipped: image error: image_%%'",
                                 seq),
                     NLEADS);
    /* Nothing of step 3 reached a device. */
    json_t *records = e2e_sim_records(env.redis_url);
    assert_non_null(records);
    assert_int_equal(json_array_size(records), 2 * NLEADS);
    json_decref(records);

    /* Its media_url changed to step 2's link: prepared again (fetched
     * again), the refusal cleared, the same image as step 2. */
    char link[256], sha2[80], got[160];
    snprintf(link, sizeof link, "%s/f/step2.png", images.base);
    PQclear(wt_sql(db, "UPDATE sequence_steps SET media_url = '%s' WHERE id = '%s'", link, step3));
    if (!e2e_wait_sql(db, 30000,
                      "SELECT media_sha256 IS NOT NULL FROM sequence_steps WHERE id = '%s'", step3))
        fail_msg("step 3's new image was not prepared");
    wt_sql_text(db, sha2, sizeof sha2, "SELECT media_sha256 FROM sequence_steps WHERE id = '%s'",
                step2);
    wt_sql_text(db, got, sizeof got,
                "SELECT media_sha256 || coalesce(media_error, '') FROM sequence_steps"
                " WHERE id = '%s'",
                step3);
    assert_string_equal(got, sha2);
    long gets = e2e_fake_gets(&images, "/f/step2.png");
    fprintf(stderr, "gets of /f/step2.png: %ld\n", gets);
    assert_int_equal(gets, 2);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM media"), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_images_prepared_once),
        cmocka_unit_test(test_added_step_image_refused_fails_its_contacts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
