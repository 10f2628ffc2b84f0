/* A triggered campaign's image, prepared once before any message row is
 * written: the link fetched (wc_fetch: time-out, byte cap, redirects, address
 * guard) or the data: URL decoded, then decoded, resized and re-encoded by
 * wc_image on a worker thread (a 12-megapixel photo takes a CPU-tenth of a
 * second; the event loop must not wait for it), then stored once in the
 * media table under its SHA-256 and linked from campaigns.media_sha256.
 * Anything wrong fails the campaign with "<code>: <why>" on its row.
 *
 * Touches: campaigns.media_sha256 and the media table; the campaign's
 * media_url in memory (with WACAST_MEDIA_REFERENCE). One preparation at a
 * time, as the scheduler expands one campaign at a time. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <sodium.h>

#include "wc_http.h"
#include "wc_log.h"

#include "media.h"
#include "scheduler.h"

#define MEDIA_REASONS 32

/* The work handed to the thread; the loop reads it once the thread is done. */
typedef struct media_job {
    unsigned char *in;
    size_t in_len;
    wc_image_opts opts;
    wc_image_out out;
    int rc;
    const char *code;
    char why[256];
    double seconds;
} media_job;

struct media_state {
    wc_httpc *httpc;
    int pipe[2]; /* the thread writes one byte when done */
    struct event *done_ev;
    pthread_t thread;
    bool thread_running;
    media_job *job;
    bool busy; /* a campaign's image is being prepared */
    uint64_t prepared, reused, failed, bytes_in, bytes_out;
    double seconds;
    struct {
        const char *code;
        uint64_t n;
    } reasons[MEDIA_REASONS];
    int nreasons;
};

static void count_failure(media_state *m, const char *code)
{
    m->failed++;
    for (int i = 0; i < m->nreasons; i++)
        if (strcmp(m->reasons[i].code, code) == 0) {
            m->reasons[i].n++;
            return;
        }
    if (m->nreasons < MEDIA_REASONS) {
        m->reasons[m->nreasons].code = code; /* static strings from wc_image/wc_fetch/here */
        m->reasons[m->nreasons++].n = 1;
    }
}

static void media_fail(scheduler *s, const char *code, const char *why)
{
    s->media->busy = false;
    count_failure(s->media, code);
    char reason[512];
    snprintf(reason, sizeof reason, "%s: %s", code, why);
    fail_campaign(s, reason);
}

static void media_abandon(scheduler *s, const char *why)
{
    s->media->busy = false;
    abandon(s, why);
}

/* Prepared (or found prepared): the expansion goes on. */
static void media_done(scheduler *s, const char *sha256)
{
    s->media->busy = false;
    campaign *c = s->c;
    wc_info("campaign %s: image media:%s", c->id, sha256);
    if (s->cfg.media.reference) {
        char ref[80];
        snprintf(ref, sizeof ref, "media:%s", sha256);
        char *v = strdup(ref);
        if (!v)
            abort();
        free(c->media_url);
        c->media_url = v;
    }
    scheduler_expand(s);
}

/* Whether the answer still belongs to the preparation in hand. */
static bool still_wanted(scheduler *s)
{
    return s->media->busy && !s->d.stopping && s->c && s->state == EXP_MEDIA;
}

/* A PostgreSQL answer to act on: false when it is no longer wanted, or when
 * the statement failed (the claim's work is then dropped, to resume). */
static bool answer_usable(scheduler *s, PGresult *res, const char *err)
{
    if (!still_wanted(s))
        return false;
    if (!res) {
        s->m.pg_errors++;
        media_abandon(s, err);
        return false;
    }
    return true;
}

static void on_stored(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!answer_usable(s, res, err))
        return;
    if (PQntuples(res) == 0) {
        media_abandon(s, "the claim was taken over while the image was prepared");
        return;
    }
    s->media->prepared++;
    media_done(s, PQgetvalue(res, 0, 0));
}

static void store(scheduler *s, media_job *j)
{
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, j->out.jpeg, j->out.len);
    char sha[crypto_hash_sha256_BYTES * 2 + 1];
    sodium_bin2hex(sha, sizeof sha, digest, sizeof digest);
    char *hex = malloc(j->out.len * 2 + 1);
    if (!hex)
        abort();
    sodium_bin2hex(hex, j->out.len * 2 + 1, j->out.jpeg, j->out.len);
    char size[24], w[16], h[16], q[16], in_bytes[24], in_w[16], in_h[16];
    snprintf(size, sizeof size, "%zu", j->out.len);
    snprintf(w, sizeof w, "%d", j->out.width);
    snprintf(h, sizeof h, "%d", j->out.height);
    snprintf(q, sizeof q, "%d", j->out.quality);
    snprintf(in_bytes, sizeof in_bytes, "%zu", j->in_len);
    snprintf(in_w, sizeof in_w, "%d", j->out.in_width);
    snprintf(in_h, sizeof in_h, "%d", j->out.in_height);
    const char *params[] = {sha,
                            hex,
                            size,
                            w,
                            h,
                            q,
                            wc_image_type_name(j->out.in_type),
                            in_bytes,
                            in_w,
                            in_h,
                            s->c->id,
                            s->cfg.c.instance_id};
    /* One statement: the row once (a picture already stored is kept), and
     * the campaign linked to it while this scheduler still holds the claim. */
    static const char *sql =
        "WITH stored AS (INSERT INTO media (sha256, bytes, size, width, height, quality,"
        " source_type, source_bytes, source_width, source_height)"
        " VALUES ($1, decode($2, 'hex'), $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (sha256) DO NOTHING)"
        " UPDATE campaigns SET media_sha256 = $1 WHERE id = $11 AND claimed_by = $12"
        " AND status = 'triggered' RETURNING media_sha256";
    int rc = wc_pg_query(s->d.pg, sql, 12, params, on_stored, s);
    free(hex);
    if (rc < 0)
        media_abandon(s, "cannot queue a query");
}

static void *prepare_thread(void *arg)
{
    media_state *m = arg;
    media_job *j = m->job;
    int64_t t0 = wc_mono_us();
    j->rc = wc_image_prepare(j->in, j->in_len, &j->opts, &j->out, &j->code, j->why, sizeof j->why);
    j->seconds = (double)(wc_mono_us() - t0) / 1e6;
    char one = 1;
    while (write(m->pipe[1], &one, 1) < 0) {
    }
    return NULL;
}

static void job_free(media_job *j)
{
    if (!j)
        return;
    free(j->in);
    wc_image_out_free(&j->out);
    free(j);
}

static void on_prepared(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    scheduler *s = arg;
    media_state *m = s->media;
    char one;
    if (read(fd, &one, 1) != 1 || !m->thread_running)
        return;
    pthread_join(m->thread, NULL);
    m->thread_running = false;
    media_job *j = m->job;
    m->job = NULL;
    if (still_wanted(s)) {
        m->seconds += j->seconds;
        m->bytes_in += j->in_len;
        if (j->rc < 0) {
            media_fail(s, j->code, j->why);
        } else {
            m->bytes_out += j->out.len;
            wc_info("campaign %s: image %s %dx%d %zu bytes -> JPEG %dx%d q%d %zu bytes in %.0f ms",
                    s->c->id, wc_image_type_name(j->out.in_type), j->out.in_width, j->out.in_height,
                    j->in_len, j->out.width, j->out.height, j->out.quality, j->out.len,
                    j->seconds * 1000);
            store(s, j);
        }
    }
    job_free(j);
}

/* Takes bytes (malloc'd) and prepares them on the worker thread. */
static void start_prepare(scheduler *s, unsigned char *bytes, size_t len)
{
    media_state *m = s->media;
    media_job *j = calloc(1, sizeof *j);
    if (!j)
        abort();
    j->in = bytes;
    j->in_len = len;
    j->opts.max_side = (int)s->cfg.media.max_side;
    j->opts.max_bytes = (size_t)s->cfg.media.max_bytes;
    j->opts.max_pixels = (uint64_t)s->cfg.media.max_pixels;
    m->job = j;
    if (pthread_create(&m->thread, NULL, prepare_thread, m) != 0) {
        m->job = NULL;
        job_free(j);
        media_abandon(s, "cannot start the image thread");
        return;
    }
    m->thread_running = true;
}

static void on_fetched(void *arg, const unsigned char *data, size_t len, const char *code,
                       const char *why)
{
    scheduler *s = arg;
    if (!still_wanted(s))
        return;
    if (code) {
        media_fail(s, code, why);
        return;
    }
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy)
        abort();
    memcpy(copy, data, len);
    start_prepare(s, copy, len);
}

static void on_linked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!answer_usable(s, res, err))
        return;
    if (PQntuples(res) == 0) {
        media_fail(s, "media_not_found",
                   "no prepared image has this sha256 (upload the file first: POST /api/media)");
        return;
    }
    s->media->reused++;
    media_done(s, PQgetvalue(res, 0, 0));
}

static bool is_sha256_hex(const char *v)
{
    return strlen(v) == 64 && strspn(v, "0123456789abcdef") == 64;
}

/* No prepared image yet: from the link, the data: URL, or an upload. */
static void start_source(scheduler *s)
{
    const char *url = s->c->media_url;
    const char *code = NULL;
    char why[256];
    if (strncmp(url, "media:", 6) == 0) {
        if (!is_sha256_hex(url + 6)) {
            media_fail(s, "media_bad_reference", "media:<id> must name a sha256 (64 hex digits)");
            return;
        }
        const char *params[] = {url + 6, s->c->id, s->cfg.c.instance_id};
        if (wc_pg_query(s->d.pg,
                        "UPDATE campaigns SET media_sha256 = $1 WHERE id = $2 AND claimed_by = $3"
                        " AND EXISTS (SELECT 1 FROM media WHERE sha256 = $1)"
                        " RETURNING media_sha256",
                        3, params, on_linked, s) < 0)
            media_abandon(s, "cannot queue a query");
        return;
    }
    if (strncasecmp(url, "data:", 5) == 0) {
        unsigned char *bytes;
        size_t len;
        if (wc_fetch_data_url(url, (size_t)s->cfg.media.fetch_max_bytes, &bytes, &len, &code, why,
                              sizeof why) < 0) {
            media_fail(s, code, why);
            return;
        }
        start_prepare(s, bytes, len);
        return;
    }
    if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
        wc_fetch_opts o = {.timeout_ms = s->cfg.media.fetch_timeout_ms,
                           .max_bytes = (size_t)s->cfg.media.fetch_max_bytes,
                           .allow = s->cfg.media.fetch_allow};
        if (wc_fetch_start(s->media->httpc, url, &o, on_fetched, s, &code, why, sizeof why) < 0)
            media_fail(s, code, why);
        return;
    }
    media_fail(s, WC_FETCH_E_URL,
               "media_url must be an http(s) link, a base64 data: URL or media:<sha256>");
}

static void on_existing(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!answer_usable(s, res, err))
        return;
    /* A resumed claim: the image was prepared before the last owner died. */
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        s->media->reused++;
        media_done(s, PQgetvalue(res, 0, 0));
        return;
    }
    start_source(s);
}

void media_prepare(scheduler *s)
{
    if (!s->c->media_url || !s->c->media_url[0]) {
        scheduler_expand(s);
        return;
    }
    wc_debug("expansion: -> media");
    s->state = EXP_MEDIA;
    s->media->busy = true;
    const char *params[] = {s->c->id};
    if (wc_pg_query(s->d.pg, "SELECT media_sha256 FROM campaigns WHERE id = $1", 1, params,
                    on_existing, s) < 0)
        media_abandon(s, "cannot queue a query");
}

void media_init(scheduler *s)
{
    char err[200];
    if (wc_fetch_allow_check(s->cfg.media.fetch_allow, err, sizeof err) < 0) {
        fprintf(stderr, "wacast-scheduler: " WC_FETCH_ALLOW_ENV ": %s\n", err);
        exit(2);
    }
    media_state *m = calloc(1, sizeof *m);
    if (!m || pipe(m->pipe) < 0)
        abort();
    evutil_make_socket_nonblocking(m->pipe[0]);
    evutil_make_socket_closeonexec(m->pipe[0]);
    evutil_make_socket_closeonexec(m->pipe[1]);
    m->done_ev = event_new(s->d.base, m->pipe[0], EV_READ | EV_PERSIST, on_prepared, s);
    m->httpc = wc_httpc_shared_acquire(s->d.base);
    if (!m->done_ev || event_add(m->done_ev, NULL) < 0 || !m->httpc)
        abort();
    s->media = m;
}

void media_free(scheduler *s)
{
    media_state *m = s->media;
    if (!m)
        return;
    m->busy = false; /* a fetch cancelled below calls back into nothing */
    wc_httpc_shared_release(m->httpc);
    if (m->thread_running)
        pthread_join(m->thread, NULL);
    job_free(m->job);
    event_free(m->done_ev);
    close(m->pipe[0]);
    close(m->pipe[1]);
    free(m);
    s->media = NULL;
}

void media_metrics(struct evbuffer *out, scheduler *s)
{
    media_state *m = s->media;
    if (!m)
        return;
    wc_metric(out, "wacast_scheduler_media_prepared_total", "counter",
              "campaign images fetched, decoded, resized and stored", (double)m->prepared);
    wc_metric(out, "wacast_scheduler_media_reused_total", "counter",
              "campaigns whose image was already prepared (upload or resumed claim)",
              (double)m->reused);
    wc_metric(out, "wacast_scheduler_media_bytes_in_total", "counter",
              "bytes of source images prepared", (double)m->bytes_in);
    wc_metric(out, "wacast_scheduler_media_bytes_out_total", "counter", "bytes of prepared JPEGs",
              (double)m->bytes_out);
    wc_metric(out, "wacast_scheduler_media_prepare_seconds_total", "counter",
              "time spent decoding, resizing and encoding images", m->seconds);
    wc_metric(out, "wacast_scheduler_media_failed_total", "counter",
              "campaigns failed for their image", (double)m->failed);
    evbuffer_add_printf(out, "# HELP wacast_scheduler_media_failures_total campaign images "
                             "refused, by reason\n# TYPE wacast_scheduler_media_failures_total "
                             "counter\n");
    for (int i = 0; i < m->nreasons; i++) {
        char label[96];
        snprintf(label, sizeof label, "reason=\"%s\"", m->reasons[i].code);
        wc_metric_labeled(out, "wacast_scheduler_media_failures_total", label,
                          (double)m->reasons[i].n);
    }
}
