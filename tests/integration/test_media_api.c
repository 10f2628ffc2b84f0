/* POST /api/media on the real dispatcher's admin listener, with real
 * PostgreSQL, and a campaign naming the upload expanded by the real
 * scheduler.
 *
 * It proves that:
 * 1. a 3,000 x 2,000 JPEG posted as the raw body comes back 201 with an id
 *    that is the sha256 of the stored JPEG (<= 350 KB, 1,600 px wide);
 *    posting it again gives the same id and no second row; a PNG with alpha
 *    posted as multipart/form-data is a second row;
 * 2. an HTML page, a PNG "bomb" header and a truncated JPEG are refused 422
 *    with their codes; no token 401; GET 405; a form without a file 400; a
 *    body over WACAST_MEDIA_FETCH_MAX_BYTES 413; nothing of these is stored;
 * 3. a campaign with media_url = 'media:<id>' is expanded with that image
 *    (campaigns.media_sha256 = id), nothing fetched or prepared again;
 * 4. the dispatcher stops cleanly on SIGTERM (no leak under ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <sodium.h>
#include <turbojpeg.h>

#include "e2e_common.h"

#define TOKEN "media-api-test-token-0123456789"
#define UPLOAD_CAP (2 * 1024 * 1024)

static wt_env env;
static PGconn *db;
static int admin_port;
static pid_t dispatcher_pid;
static char jpeg_id[80];

static unsigned char *make_jpeg(int w, int h, int quality, size_t *len)
{
    unsigned char *px = malloc((size_t)w * h * 3);
    for (size_t i = 0; i < (size_t)w * h * 3; i++)
        px[i] = (unsigned char)((i / 3 % (size_t)w) * 200 / (size_t)w + i % 3 * 20);
    tjhandle tj = tjInitCompress();
    unsigned char *j = NULL;
    unsigned long n = 0;
    assert_int_equal(tjCompress2(tj, px, w, 0, h, TJPF_RGB, &j, &n, TJSAMP_420, quality, 0), 0);
    tjDestroy(tj);
    free(px);
    unsigned char *out = malloc(n);
    memcpy(out, j, n);
    tjFree(j);
    *len = n;
    return out;
}

/* POSTs body to /api/media; the status, the answer in *r. */
static long post(const char *method, const char *ctype, const void *body, size_t len,
                 bool with_token, resp *r)
{
    char url[128], ct[160];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/api/media", admin_port);
    snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
    const char *headers[] = {ct, with_token ? "Authorization: Bearer " TOKEN : "X-None: 1", NULL};
    long code = http(method, url, body, len, headers, r);
    printf("# %s %s %zu bytes -> %ld %.200s\n", method, ctype, len, code, r->body ? r->body : "");
    return code;
}

static bool admin_answers(void *arg)
{
    (void)arg;
    resp r;
    long code = post("GET", "text/plain", NULL, 0, true, &r);
    resp_free(&r);
    return code == 405;
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_PG | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    admin_port = wt_free_port();
    char admin_env[64], cap_env[64];
    snprintf(admin_env, sizeof admin_env, "WACAST_ADMIN_PORT=%d", admin_port);
    snprintf(cap_env, sizeof cap_env, "WACAST_MEDIA_FETCH_MAX_BYTES=%d", UPLOAD_CAP);
    const char *extra[] = {admin_env, "WACAST_ADMIN_TOKEN=" TOKEN, cap_env, NULL};
    dispatcher_pid = wt_spawn(&env, "wacast-dispatcher", "dispatcher", extra);
    if (dispatcher_pid < 0)
        return -1;
    /* Up once the admin listener answers. */
    if (wt_wait_for(admin_answers, NULL, 30000))
        return 0;
    wt_dump_logs(&env, 30);
    return -1;
}

static int teardown(void **state)
{
    (void)state;
    wt_env_stop(&env);
    return 0;
}

static void test_uploads_stored_once(void **state)
{
    (void)state;
    size_t jl, pl;
    unsigned char *jpg = make_jpeg(3000, 2000, 90, &jl);
    assert_true(jl < UPLOAD_CAP);
    resp r;
    assert_int_equal(post("POST", "image/jpeg", jpg, jl, true, &r), 201);
    json_t *o = json_loads(r.body, 0, NULL);
    assert_non_null(o);
    snprintf(jpeg_id, sizeof jpeg_id, "%s", jstr(o, "id"));
    assert_int_equal(strlen(jpeg_id), 64);
    char want_url[96];
    snprintf(want_url, sizeof want_url, "media:%s", jpeg_id);
    assert_string_equal(jstr(o, "media_url"), want_url);
    assert_int_equal(json_integer_value(json_object_get(o, "width")), 1600);
    json_int_t size = json_integer_value(json_object_get(o, "size"));
    assert_true(size > 0 && size <= 350 * 1024);
    json_decref(o);
    resp_free(&r);
    /* The id is the sha256 of the bytes stored. */
    char stored[80];
    wt_sql_text(db, stored, sizeof stored,
                "SELECT encode(sha256(bytes), 'hex') FROM media WHERE sha256 = '%s'", jpeg_id);
    assert_string_equal(stored, jpeg_id);
    assert_int_equal(wt_sql_long(db, "SELECT size FROM media WHERE sha256 = '%s'", jpeg_id), size);

    assert_int_equal(post("POST", "application/octet-stream", jpg, jl, true, &r), 201);
    o = json_loads(r.body, 0, NULL);
    assert_string_equal(jstr(o, "id"), jpeg_id);
    json_decref(o);
    resp_free(&r);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM media"), 1);

    unsigned char *png = e2e_png_rgba(640, 480, &pl);
    assert_non_null(png);
    static const char head[] =
        "--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n"
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\";"
        " filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n";
    static const char tail[] = "\r\n--XyZ--\r\n";
    size_t fl = sizeof head - 1 + pl + sizeof tail - 1;
    unsigned char *form = malloc(fl);
    memcpy(form, head, sizeof head - 1);
    memcpy(form + sizeof head - 1, png, pl);
    memcpy(form + sizeof head - 1 + pl, tail, sizeof tail - 1);
    assert_int_equal(post("POST", "multipart/form-data; boundary=XyZ", form, fl, true, &r), 201);
    o = json_loads(r.body, 0, NULL);
    assert_string_equal(jstr(json_object_get(o, "source"), "type"), "png");
    assert_int_equal(json_integer_value(json_object_get(o, "width")), 640);
    json_decref(o);
    resp_free(&r);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM media"), 2);
    free(form);
    free(png);
    free(jpg);
}

static void expect_refused(long want, const char *ctype, const void *body, size_t len, bool token,
                           const char *method, const char *text)
{
    resp r;
    assert_int_equal(post(method, ctype, body, len, token, &r), want);
    if (text)
        assert_non_null(strstr(r.body ? r.body : "", text));
    resp_free(&r);
}

static void test_bad_uploads_refused(void **state)
{
    (void)state;
    static const char html[] = "<!doctype html><html><body>login</body></html>";
    expect_refused(422, "image/jpeg", html, sizeof html - 1, true, "POST", "image_is_html: ");
    unsigned char bomb[33];
    memcpy(bomb, "\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", 16);
    const unsigned char dims[] = {0, 0, 0xC3, 0x50, 0, 0, 0xC3, 0x50, 8, 6, 0, 0, 0, 0, 0, 0, 0};
    memcpy(bomb + 16, dims, sizeof dims);
    expect_refused(422, "image/png", bomb, sizeof bomb, true, "POST", "image_too_many_pixels: ");
    size_t jl;
    unsigned char *jpg = make_jpeg(400, 300, 90, &jl);
    expect_refused(422, "image/jpeg", jpg, jl / 2, true, "POST", "image_truncated: ");
    expect_refused(401, "image/jpeg", jpg, jl, false, "POST", NULL);
    expect_refused(405, "image/jpeg", NULL, 0, true, "GET", NULL);
    static const char noform[] =
        "--B\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--B--\r\n";
    expect_refused(400, "multipart/form-data; boundary=B", noform, sizeof noform - 1, true, "POST",
                   "file");
    free(jpg);
    unsigned char *big = calloc(1, UPLOAD_CAP + 4096);
    expect_refused(413, "image/jpeg", big, UPLOAD_CAP + 4096, true, "POST", NULL);
    free(big);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM media"), 2);
}

static bool campaign_settled(void *arg)
{
    return wt_sql_long(db,
                       "SELECT count(*) FROM campaigns WHERE id = '%s' AND status NOT IN"
                       " ('pending', 'triggered')",
                       (const char *)arg) == 1;
}

static void test_campaign_uses_upload(void **state)
{
    (void)state;
    PGresult *r = wt_sql(db, "INSERT INTO users (name) VALUES ('api') RETURNING id");
    char user[40], campaign[40];
    snprintf(user, sizeof user, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQclear(wt_sql(
        db, "INSERT INTO leads (user_id, name, phone) VALUES ('%s', 'A', '+60123450001')", user));
    r = wt_sql(db,
               "INSERT INTO campaigns (user_id, title, message, media_url) VALUES"
               " ('%s', 'upload', 'Hi', 'media:%s') RETURNING id",
               user, jpeg_id);
    snprintf(campaign, sizeof campaign, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *extra[] = {"WACAST_MEDIA_REFERENCE=true", NULL};
    assert_true(wt_spawn(&env, "wacast-scheduler", "scheduler", extra) > 0);
    assert_true(wt_wait_for(campaign_settled, campaign, 60000));
    char got[80];
    wt_sql_text(db, got, sizeof got,
                "SELECT coalesce(media_sha256, status_reason) FROM campaigns"
                " WHERE id = '%s'",
                campaign);
    assert_string_equal(got, jpeg_id);
    wt_sql_text(db, got, sizeof got,
                "SELECT media_url FROM broadcast_messages WHERE campaign_id = '%s'", campaign);
    char want[96];
    snprintf(want, sizeof want, "media:%s", jpeg_id);
    assert_string_equal(got, want);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM media"), 2);
}

static void test_dispatcher_stops_cleanly(void **state)
{
    (void)state;
    assert_true(e2e_stopped_cleanly(&env, dispatcher_pid));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uploads_stored_once),
        cmocka_unit_test(test_bad_uploads_refused),
        cmocka_unit_test(test_campaign_uses_upload),
        cmocka_unit_test(test_dispatcher_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
