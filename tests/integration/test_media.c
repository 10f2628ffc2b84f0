/* A campaign's image prepared once, by the real scheduler on real redis-server
 * and PostgreSQL, fetched over real HTTP on loopback from an image host
 * stand-in (tests/fakes/images.js) that also misbehaves.
 *
 * It proves that:
 * 1. a 3,000 x 2,000 JPEG link and a PNG-with-alpha data: URL each become
 *    one JPEG (<= 350 KB, longest side <= 1,600) stored once in `media`
 *    under its sha256; the campaign points at it (media_sha256); every
 *    message row says media:<sha256> and none holds image bytes; the link
 *    was fetched once for the whole campaign, not per message; a second
 *    campaign with the same link makes no second media row; a campaign
 *    naming an upload (media:<sha256>) is linked without any fetch;
 * 2. every bad input fails its campaign before any message row exists,
 *    with a reason naming what was wrong: an HTML page served as
 *    image/jpeg, an SVG, a truncated JPEG, a corrupt file, a GIF, a PNG
 *    whose header claims 50,000 x 50,000, a 404, a link that never answers,
 *    a redirect loop, a 1 GB response, loopback and private addresses not
 *    in the allow-list, an ftp:// link, a data: URL that is not base64, a
 *    media: reference to nothing;
 * 3. `wacast-ctl media CAMPAIGN` shows the prepared image's sha256, size,
 *    dimensions and source, or the reason there is none;
 * 4. the scheduler lives through all of it, its peak RSS stays far below
 *    what the gigabyte or the bomb would take, its /metrics count the
 *    failures by reason, and it stops cleanly on SIGTERM (no leak under
 *    ASan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <sodium.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "e2e_common.h"
#include "wc_image.h"

#define NLEADS 3
/* Peak RSS the scheduler may reach (ASan's shadow included): a 1 GB body
 * or a 50,000 x 50,000 decode would be far above it. */
#define MAX_SCHEDULER_RSS_KB (700 * 1024)

static wt_env env;
static PGconn *db;
static fake images;
static char user_id[40];
static int metrics_port;
static pid_t scheduler_pid;

typedef struct bad_case {
    const char *name;
    char media_url[256];
    const char *reason; /* status_reason must start with this */
    char id[40];
} bad_case;

static bad_case bad[] = {
    {"html as jpeg", "/f/page.jpg", "image_is_html:", ""},
    {"svg", "/f/logo.svg", "image_svg:", ""},
    {"truncated jpeg", "/f/cut.jpg", "image_truncated:", ""},
    {"corrupt jpeg", "/f/corrupt.jpg", "image_corrupt:", ""},
    {"gif", "/f/anim.gif", "image_unsupported_type:", ""},
    {"png bomb", "/f/bomb.png", "image_too_many_pixels:", ""},
    {"404", "/f/nothing.jpg", "fetch_http_status:", ""},
    {"hang", "/hang", "fetch_timeout:", ""},
    {"redirect loop", "/loop", "fetch_too_many_redirects:", ""},
    {"gigabyte", "/gigabyte", "fetch_too_large:", ""},
    {"loopback not allowed", "http://127.0.0.2:PORT/f/photo.jpg", "fetch_address_refused:", ""},
    {"private address", "http://10.255.255.1/photo.jpg", "fetch_address_refused:", ""},
    {"ftp", "ftp://127.0.0.1/photo.jpg", "fetch_bad_url:", ""},
    {"data not base64", "data:image/png,notbase64", "fetch_bad_data_url:", ""},
    {"unknown upload", "media:0000000000000000000000000000000000000000000000000000000000000000",
     "media_not_found:", ""},
};
#define NBAD (sizeof bad / sizeof bad[0])

static char photo_campaign[40], photo_again[40], png_campaign[40], upload_campaign[40];

static unsigned char *photo_jpeg(int w, int h, size_t *len)
{
    unsigned char *px = malloc((size_t)w * h * 3);
    uint32_t seed = 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) {
                seed = seed * 1103515245u + 12345u;
                px[((size_t)y * w + x) * 3 + c] =
                    (unsigned char)((x * (c + 1) / 13 + y / (c + 5)) % 200 + (seed >> 16) % 16);
            }
    tjhandle tj = tjInitCompress();
    unsigned char *j = NULL;
    unsigned long n = 0;
    assert_int_equal(tjCompress2(tj, px, w, 0, h, TJPF_RGB, &j, &n, TJSAMP_444, 95, 0), 0);
    tjDestroy(tj);
    free(px);
    unsigned char *out = malloc(n);
    memcpy(out, j, n);
    tjFree(j);
    *len = n;
    return out;
}

static void put_file(const char *name, const char *type, const void *data, size_t len)
{
    char url[256], hdr[128];
    snprintf(url, sizeof url, "%s/_control/file/%s", images.base, name);
    snprintf(hdr, sizeof hdr, "X-Serve-Type: %s", type);
    const char *headers[] = {hdr, "Content-Type: application/octet-stream", NULL};
    resp r = {0};
    long code = http("PUT", url, data, len, headers, &r);
    resp_free(&r);
    assert_int_equal(code, 204);
}

static void serve_files(unsigned char *photo, size_t photo_len)
{
    put_file("photo.jpg", "image/jpeg", photo, photo_len);
    static const char page[] = "<!DOCTYPE html><html><body>Please sign in</body></html>";
    put_file("page.jpg", "image/jpeg", page, sizeof page - 1);
    static const char svg[] =
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"9\" height=\"9\"/>";
    put_file("logo.svg", "image/svg+xml", svg, sizeof svg - 1);
    put_file("cut.jpg", "image/jpeg", photo, photo_len / 3);
    unsigned char corrupt[4096];
    for (size_t i = 0; i < sizeof corrupt; i++)
        corrupt[i] = (unsigned char)(i * 31 + 7);
    memcpy(corrupt, "\xFF\xD8\xFF\xDB\x00\x04\x00\x00\xFF\xC0\x00\x03", 12);
    put_file("corrupt.jpg", "image/jpeg", corrupt, sizeof corrupt);
    static const char gif[] = "GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff";
    put_file("anim.gif", "image/gif", gif, sizeof gif - 1);
    /* Signature, then IHDR 50,000 x 50,000 RGBA with its right CRC. */
    unsigned char bomb[33];
    memcpy(bomb, "\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", 16);
    const unsigned char dims[] = {0, 0, 0xC3, 0x50, 0, 0, 0xC3, 0x50, 8, 6, 0, 0, 0};
    memcpy(bomb + 16, dims, sizeof dims);
    uint32_t crc = (uint32_t)crc32(crc32(0, NULL, 0), bomb + 12, 17);
    bomb[29] = crc >> 24, bomb[30] = crc >> 16, bomb[31] = crc >> 8, bomb[32] = (unsigned char)crc;
    put_file("bomb.png", "image/png", bomb, sizeof bomb);
}

static void link_of(const char *path, char *out, size_t outlen)
{
    if (path[0] == '/')
        snprintf(out, outlen, "%s%s", images.base, path);
    else
        snprintf(out, outlen, "%s", path);
}

static void new_campaign(char *id, const char *media_url)
{
    char *lit = PQescapeLiteral(db, media_url, strlen(media_url));
    PGresult *r = wt_sql(db,
                         "INSERT INTO campaigns (user_id, title, message, media_url) VALUES"
                         " ('%s', 'img', 'Hello {{name}}', %s) RETURNING id",
                         user_id, lit);
    PQfreemem(lit);
    snprintf(id, 40, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

static bool all_settled(void *arg)
{
    (void)arg;
    return wt_sql_long(
               db, "SELECT count(*) FROM campaigns WHERE status IN ('pending', 'triggered')") == 0;
}

static int setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_REDIS | WT_PG | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    if (fake_start(&env, &images, "images.js") < 0)
        return -1;
    size_t photo_len;
    unsigned char *photo = photo_jpeg(3000, 2000, &photo_len);
    serve_files(photo, photo_len);
    free(photo);
    char *data_url = e2e_png_data_url(900, 600);
    assert_non_null(data_url);

    PGresult *r = wt_sql(db, "INSERT INTO users (name) VALUES ('media') RETURNING id");
    snprintf(user_id, sizeof user_id, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    for (int i = 0; i < NLEADS; i++)
        PQclear(wt_sql(
            db, "INSERT INTO leads (user_id, name, phone) VALUES ('%s', 'L%d', '+6012345%04d')",
            user_id, i, i));
    char link[256];
    link_of("/f/photo.jpg", link, sizeof link);
    new_campaign(photo_campaign, link);
    new_campaign(png_campaign, data_url);
    free(data_url);
    for (size_t i = 0; i < NBAD; i++) {
        char *port = strstr(bad[i].media_url, "PORT");
        if (port) {
            char rest[200];
            snprintf(rest, sizeof rest, "%d%s", images.port, port + 4);
            snprintf(port, sizeof bad[i].media_url - (size_t)(port - bad[i].media_url), "%s", rest);
        }
        link_of(bad[i].media_url, link, sizeof link);
        new_campaign(bad[i].id, link);
    }
    metrics_port = wt_free_port();
    char port_env[32];
    snprintf(port_env, sizeof port_env, "PORT=%d", metrics_port);
    const char *extra[] = {"WACAST_LOG_LEVEL=info",
                           "WACAST_MEDIA_FETCH_ALLOW=127.0.0.1/32",
                           "WACAST_MEDIA_REFERENCE=true",
                           "WACAST_MEDIA_FETCH_TIMEOUT_MS=1500",
                           "WACAST_MEDIA_FETCH_MAX_BYTES=8388608",
                           port_env,
                           NULL};
    scheduler_pid = wt_spawn(&env, "wacast-scheduler", "scheduler", extra);
    if (scheduler_pid < 0)
        return -1;
    if (!wt_wait_for(all_settled, NULL, 180000)) {
        wt_dump_logs(&env, 40);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fake_stop(&images);
    wt_env_stop(&env);
    return 0;
}

static long gets_of(const char *path)
{
    return e2e_fake_gets(&images, path);
}

/* The campaign's prepared image is a valid JPEG within the limits, stored
 * once, and every message row refers to it. */
static void check_prepared(const char *campaign, char *sha, size_t shalen)
{
    wt_sql_text(db, sha, shalen, "SELECT coalesce(media_sha256, '') FROM campaigns WHERE id = '%s'",
                campaign);
    assert_int_equal(strlen(sha), 64);
    char status[32];
    wt_sql_text(db, status, sizeof status, "SELECT status FROM campaigns WHERE id = '%s'",
                campaign);
    assert_string_equal(status, "processing");
    PGresult *r = wt_sql(db,
                         "SELECT encode(bytes, 'hex'), size, width, height FROM media"
                         " WHERE sha256 = '%s'",
                         sha);
    assert_int_equal(PQntuples(r), 1);
    const char *hex = PQgetvalue(r, 0, 0);
    size_t len = strlen(hex) / 2;
    unsigned char *bytes = malloc(len);
    assert_int_equal(sodium_hex2bin(bytes, len, hex, strlen(hex), NULL, NULL, NULL), 0);
    assert_int_equal((long)len, strtol(PQgetvalue(r, 0, 1), NULL, 10));
    assert_true(len <= WC_IMAGE_MAX_BYTES_DEFAULT);
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, bytes, len);
    char digest_hex[65];
    sodium_bin2hex(digest_hex, sizeof digest_hex, digest, sizeof digest);
    assert_string_equal(digest_hex, sha); /* content-addressed */
    tjhandle tj = tjInitDecompress();
    int w, h, sub, cs;
    assert_int_equal(tjDecompressHeader3(tj, bytes, len, &w, &h, &sub, &cs), 0);
    tjDestroy(tj);
    assert_true(w <= 1600 && h <= 1600);
    assert_int_equal(w, atoi(PQgetvalue(r, 0, 2)));
    assert_int_equal(h, atoi(PQgetvalue(r, 0, 3)));
    PQclear(r);
    free(bytes);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'",
                                 campaign),
                     NLEADS);
    assert_int_equal(wt_sql_long(db,
                                 "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'"
                                 " AND media_url = 'media:%s'",
                                 campaign, sha),
                     NLEADS);
}

static void test_prepared_once(void **state)
{
    (void)state;
    char photo_sha[80], png_sha[80];
    check_prepared(photo_campaign, photo_sha, sizeof photo_sha);
    check_prepared(png_campaign, png_sha, sizeof png_sha);
    assert_string_not_equal(photo_sha, png_sha);
    /* One fetch for the campaign's three messages. */
    assert_int_equal(gets_of("/f/photo.jpg"), 1);
    /* No row of any campaign holds image bytes. */
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM broadcast_messages"
                                     " WHERE length(coalesce(media_url, '')) > 80"),
                     0);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM media"), 2);

    /* The same link again: prepared again (one preparation per campaign),
     * the same bytes, still one row. An upload reference: no fetch at all. */
    char link[256], ref[96];
    link_of("/f/photo.jpg", link, sizeof link);
    new_campaign(photo_again, link);
    snprintf(ref, sizeof ref, "media:%s", png_sha);
    new_campaign(upload_campaign, ref);
    assert_true(wt_wait_for(all_settled, NULL, 60000));
    char again_sha[80], upload_sha[80];
    check_prepared(photo_again, again_sha, sizeof again_sha);
    check_prepared(upload_campaign, upload_sha, sizeof upload_sha);
    assert_string_equal(again_sha, photo_sha);
    assert_string_equal(upload_sha, png_sha);
    assert_int_equal(gets_of("/f/photo.jpg"), 2);
    assert_int_equal(wt_sql_long(db, "SELECT count(*) FROM media"), 2);
}

/* `wacast-ctl media CAMPAIGN`: its output (up to outlen) and exit status. */
static int ctl_media(const char *campaign, char *out, size_t outlen)
{
    char path[512], cmd[700];
    wt_program_path("wacast-ctl", path, sizeof path);
    setenv("DATABASE_URL", env.database_url, 1);
    snprintf(cmd, sizeof cmd, "'%s' media %s 2>&1", path, campaign);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    printf("%s", out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_ctl_shows_media(void **state)
{
    (void)state;
    char sha[80], out[2048], want[200];
    wt_sql_text(db, sha, sizeof sha, "SELECT media_sha256 FROM campaigns WHERE id = '%s'",
                photo_campaign);
    assert_int_equal(ctl_media(photo_campaign, out, sizeof out), 0);
    snprintf(want, sizeof want, "prepared   media:%s\n", sha);
    assert_non_null(strstr(out, want));
    snprintf(want, sizeof want, "jpeg       %ld bytes, 1600x1067",
             wt_sql_long(db, "SELECT size FROM media WHERE sha256 = '%s'", sha));
    assert_non_null(strstr(out, want));
    assert_non_null(strstr(out, "source     jpeg, "));
    assert_non_null(strstr(out, "3000x2000"));
    assert_int_equal(ctl_media(png_campaign, out, sizeof out), 0);
    assert_non_null(strstr(out, "media_url  data: URL, "));
    assert_int_equal(ctl_media(bad[0].id, out, sizeof out), 1);
    assert_non_null(strstr(out, "prepared   no: image_is_html: "));
}

static void test_bad_inputs_fail_with_reason(void **state)
{
    (void)state;
    int wrong = 0;
    for (size_t i = 0; i < NBAD; i++) {
        char status[32], reason[600];
        wt_sql_text(db, status, sizeof status, "SELECT status FROM campaigns WHERE id = '%s'",
                    bad[i].id);
        wt_sql_text(db, reason, sizeof reason,
                    "SELECT coalesce(status_reason, '') FROM campaigns WHERE id = '%s'", bad[i].id);
        long rows = wt_sql_long(
            db, "SELECT count(*) FROM broadcast_messages WHERE campaign_id = '%s'", bad[i].id);
        bool ok = strcmp(status, "failed") == 0 &&
                  strncmp(reason, bad[i].reason, strlen(bad[i].reason)) == 0 && rows == 0;
        printf("# %-22s %-10s %ld rows  %s\n", bad[i].name, status, rows, reason);
        if (!ok) {
            fprintf(stderr, "%s: wanted failed '%s...' and no rows\n", bad[i].name, bad[i].reason);
            wrong++;
        }
    }
    assert_int_equal(wrong, 0);
    /* The gigabyte was cut off near the cap, not read to its end. */
    json_t *st = fake_call(&images, "GET", "/_control/stats", NULL);
    double streamed = (double)json_integer_value(json_object_get(st, "streamed"));
    json_decref(st);
    printf("# the image host wrote %.0f MB of the gigabyte\n", streamed / 1048576);
    assert_true(streamed < 256.0 * 1024 * 1024);
}

static long vm_hwm_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static void test_scheduler_bounded_and_observable(void **state)
{
    (void)state;
    assert_true(wt_alive(&env, scheduler_pid));
    long hwm = vm_hwm_kb(scheduler_pid);
    printf("# scheduler peak RSS %ld MB\n", hwm / 1024);
    assert_true(hwm > 0 && hwm < MAX_SCHEDULER_RSS_KB);
    assert_int_equal((long)e2e_metric(metrics_port, "wacast_scheduler_media_failed_total"),
                     (long)NBAD);
    assert_int_equal((long)e2e_metric(metrics_port, "wacast_scheduler_media_prepared_total"), 3);
    assert_int_equal((long)e2e_metric(metrics_port, "wacast_scheduler_media_reused_total"), 1);
    assert_true(e2e_metric(metrics_port, "wacast_scheduler_media_bytes_in_total") >
                e2e_metric(metrics_port, "wacast_scheduler_media_bytes_out_total"));
    assert_true(e2e_metric(metrics_port, "wacast_scheduler_media_prepare_seconds_total") > 0);
    assert_int_equal(
        (long)e2e_metric(metrics_port,
                         "wacast_scheduler_media_failures_total{reason=\"fetch_address_refused\"}"),
        2);
    assert_true(e2e_stopped_cleanly(&env, scheduler_pid));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prepared_once),
        cmocka_unit_test(test_bad_inputs_fail_with_reason),
        cmocka_unit_test(test_ctl_shows_media),
        cmocka_unit_test(test_scheduler_bounded_and_observable),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
