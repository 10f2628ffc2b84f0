/* Unit tests for lib/wc_media_cache.c on a real PostgreSQL with the
 * migrations applied: requests for one image wait for one read; the bytes
 * are the row's; a held image answers from memory, later, never from inside
 * get(); the least recently used image goes when the cap is passed; a
 * missing row is media_not_found (for good, not kept), a database that does
 * not answer media_unavailable (transient); a cancelled wait is never called
 * back; the cache can be freed with a read in flight. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <sodium.h>

#include "wc_daemon.h"
#include "wc_media_cache.h"
#include "wt_env.h"

#define IMAGE_BYTES 1000

static wt_env env;
static PGconn *db;
static char shas[3][WC_MEDIA_SHA_LEN + 1];
static unsigned char images[3][IMAGE_BYTES];
static const char *MISSING = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

typedef struct got {
    int calls;
    bool ok;
    bool transient;
    char code[32];
    size_t len;
    bool same; /* the bytes are the row's */
    int want;  /* which image, for same */
    int *counter;
} got;

static void on_got(void *arg, const wc_media_got *g)
{
    got *r = arg;
    r->calls++;
    r->ok = g->error_code == NULL;
    r->transient = g->transient;
    snprintf(r->code, sizeof r->code, "%s", g->error_code ? g->error_code : "");
    r->len = g->len;
    r->same = r->ok && g->len == IMAGE_BYTES && memcmp(g->bytes, images[r->want], g->len) == 0;
    if (r->counter)
        (*r->counter)++;
}

static bool loop_until_count(struct event_base *base, int *count, int want, int ms)
{
    int64_t end = wc_mono_us() + (int64_t)ms * 1000;
    while (*count < want && wc_mono_us() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    return *count >= want;
}

static int group_setup(void **state)
{
    (void)state;
    if (wt_env_start(&env, WT_PG | WT_MIGRATE) < 0)
        return -1;
    db = PQconnectdb(env.database_url);
    if (PQstatus(db) != CONNECTION_OK)
        return -1;
    for (int i = 0; i < 3; i++) {
        randombytes_buf(images[i], IMAGE_BYTES);
        unsigned char digest[crypto_hash_sha256_BYTES];
        crypto_hash_sha256(digest, images[i], IMAGE_BYTES);
        sodium_bin2hex(shas[i], sizeof shas[i], digest, sizeof digest);
        char hex[IMAGE_BYTES * 2 + 1], size[16];
        sodium_bin2hex(hex, sizeof hex, images[i], IMAGE_BYTES);
        snprintf(size, sizeof size, "%d", IMAGE_BYTES);
        const char *params[] = {shas[i], hex, size};
        PGresult *r =
            PQexecParams(db,
                         "INSERT INTO media (sha256, bytes, size, width, height, quality,"
                         " source_type, source_bytes, source_width, source_height)"
                         " VALUES ($1, decode($2, 'hex'), $3::int, 10, 10, 90, 'png', $3::int, 10,"
                         " 10)",
                         3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "insert: %s\n", PQerrorMessage(db));
            PQclear(r);
            return -1;
        }
        PQclear(r);
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    PQfinish(db);
    wt_env_stop(&env);
    return 0;
}

typedef struct world {
    struct event_base *base;
    wc_pg *pg;
    wc_media_cache *cache;
    const wc_media_source *src;
} world;

static void world_open(world *w, const char *url, size_t cap, int timeout_ms)
{
    w->base = event_base_new();
    w->pg = wc_pg_new(w->base, url, "test-media-cache", 2, timeout_ms);
    w->cache = wc_media_cache_new(w->base, w->pg, cap);
    assert_non_null(w->cache);
    w->src = wc_media_cache_source(w->cache);
}

static void world_close(world *w)
{
    wc_media_cache_free(w->cache);
    wc_pg_free(w->pg);
    event_base_free(w->base);
}

static void get(world *w, int image, const char *sha, got *g, int *counter)
{
    memset(g, 0, sizeof *g);
    g->want = image;
    g->counter = counter;
    assert_non_null(w->src->get(w->src->ctx, sha, on_got, g));
}

static void test_one_read_for_many(void **state)
{
    (void)state;
    world w;
    world_open(&w, env.database_url, 1 << 20, 5000);
    got g[10];
    int done = 0;
    for (int i = 0; i < 10; i++)
        get(&w, 0, shas[0], &g[i], &done);
    assert_int_equal(done, 0);
    assert_true(loop_until_count(w.base, &done, 10, 10000));
    for (int i = 0; i < 10; i++) {
        assert_int_equal(g[i].calls, 1);
        assert_true(g[i].same);
    }
    wc_media_cache_stats st;
    wc_media_cache_get_stats(w.cache, &st);
    assert_int_equal(st.reads, 1);
    assert_int_equal(st.images, 1);
    assert_int_equal(st.bytes, IMAGE_BYTES);
    /* Held: from memory, but still later. */
    got again;
    done = 0;
    get(&w, 0, shas[0], &again, &done);
    assert_int_equal(again.calls, 0);
    assert_true(loop_until_count(w.base, &done, 1, 1000));
    assert_true(again.same);
    wc_media_cache_get_stats(w.cache, &st);
    assert_int_equal(st.reads, 1);
    assert_int_equal(st.hits, 1);
    world_close(&w);
}

static void test_least_recently_used_goes(void **state)
{
    (void)state;
    world w;
    world_open(&w, env.database_url, 2 * IMAGE_BYTES + 500, 5000);
    got g;
    int done = 0;
    for (int i = 0; i < 3; i++) {
        get(&w, i, shas[i], &g, &done);
        assert_true(loop_until_count(w.base, &done, i + 1, 10000));
        assert_true(g.same);
        if (i == 1) {
            /* Image 0 used again: image 1 is now the oldest. */
            get(&w, 0, shas[0], &g, &done);
            assert_true(loop_until_count(w.base, &done, 3, 1000));
            done = 2;
        }
    }
    wc_media_cache_stats st;
    wc_media_cache_get_stats(w.cache, &st);
    assert_int_equal(st.images, 2);
    assert_int_equal(st.bytes, 2 * IMAGE_BYTES);
    assert_int_equal(st.reads, 3);
    /* 0 and 2 are held; 1 is read again. */
    done = 0;
    get(&w, 0, shas[0], &g, &done);
    get(&w, 2, shas[2], &g, &done);
    assert_true(loop_until_count(w.base, &done, 2, 1000));
    wc_media_cache_get_stats(w.cache, &st);
    assert_int_equal(st.reads, 3);
    get(&w, 1, shas[1], &g, &done);
    assert_true(loop_until_count(w.base, &done, 3, 10000));
    assert_true(g.same);
    wc_media_cache_get_stats(w.cache, &st);
    assert_int_equal(st.reads, 4);
    assert_true(st.bytes <= 2 * IMAGE_BYTES + 500);
    world_close(&w);
}

static void test_errors(void **state)
{
    (void)state;
    world w;
    world_open(&w, env.database_url, 1 << 20, 5000);
    got g;
    int done = 0;
    get(&w, 0, MISSING, &g, &done);
    assert_true(loop_until_count(w.base, &done, 1, 10000));
    assert_false(g.ok);
    assert_false(g.transient);
    assert_string_equal(g.code, "media_not_found");
    wc_media_cache_stats st;
    wc_media_cache_get_stats(w.cache, &st);
    assert_int_equal(st.errors, 1);
    assert_int_equal(st.images, 0);
    /* Not kept: asked again, read again. */
    get(&w, 0, MISSING, &g, &done);
    assert_true(loop_until_count(w.base, &done, 2, 10000));
    wc_media_cache_get_stats(w.cache, &st);
    assert_int_equal(st.errors, 2);
    /* A malformed sha is refused at once. */
    assert_null(w.src->get(w.src->ctx, "abc", on_got, &g));
    world_close(&w);

    /* A database that does not answer: transient. */
    char url[128];
    snprintf(url, sizeof url, "postgresql://127.0.0.1:%d/none?connect_timeout=1", wt_free_port());
    world_open(&w, url, 1 << 20, 300);
    done = 0;
    get(&w, 0, shas[0], &g, &done);
    assert_true(loop_until_count(w.base, &done, 1, 10000));
    assert_false(g.ok);
    assert_true(g.transient);
    assert_string_equal(g.code, "media_unavailable");
    world_close(&w);
}

static void test_cancel_and_free_in_flight(void **state)
{
    (void)state;
    world w;
    world_open(&w, env.database_url, 1 << 20, 5000);
    got a, b;
    int done = 0;
    memset(&a, 0, sizeof a);
    wc_media_wait *wa = w.src->get(w.src->ctx, shas[0], on_got, &a);
    get(&w, 0, shas[0], &b, &done);
    w.src->cancel(wa);
    assert_true(loop_until_count(w.base, &done, 1, 10000));
    assert_int_equal(a.calls, 0);
    assert_true(b.same);
    /* Held: a cancelled wait from memory is not called back either. */
    wa = w.src->get(w.src->ctx, shas[0], on_got, &a);
    w.src->cancel(wa);
    event_base_loop(w.base, EVLOOP_NONBLOCK);
    assert_int_equal(a.calls, 0);
    /* Freed with a read in flight (its wait cancelled first). */
    wa = w.src->get(w.src->ctx, shas[1], on_got, &a);
    w.src->cancel(wa);
    world_close(&w);
    assert_int_equal(a.calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_read_for_many),
        cmocka_unit_test(test_least_recently_used_goes),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_cancel_and_free_in_flight),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
