/* A triggered campaign's image, prepared once before any message row is
 * written: the link fetched (wc_fetch: time-out, byte cap, redirects, address
 * guard) or the data: URL decoded, then decoded, resized and re-encoded by
 * wc_image on a worker thread (wc_image_worker: the event loop never waits
 * for it), then stored once in the media table under its SHA-256
 * (wc_media) and linked from campaigns.media_sha256.
 * Anything wrong fails the campaign with "<code>: <why>" on its row.
 *
 * Touches: campaigns.media_sha256 and the media table; the campaign's
 * media_url in memory (with WACAST_MEDIA_REFERENCE). One preparation at a
 * time, as the scheduler expands one campaign at a time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>

#include "wc_http.h"
#include "wc_image_worker.h"
#include "wc_log.h"
#include "wc_media.h"

#include "scheduler.h"

#define MEDIA_REASONS 32

struct media_state {
    wc_httpc *httpc;
    wc_image_worker *worker;
    bool busy; /* a campaign's image is being prepared */
    char sha[WC_MEDIA_SHA256_HEX];
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

static void on_linked_prepared(wc_pg *pg, PGresult *res, const char *err, void *arg)
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

/* The image is stored (now or before): the campaign points at it, while
 * this scheduler still holds the claim. */
static void on_media_stored(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    scheduler *s = arg;
    if (!answer_usable(s, res, err))
        return;
    const char *params[] = {s->media->sha, s->c->id, s->cfg.c.instance_id};
    if (wc_pg_query(pg,
                    "UPDATE campaigns SET media_sha256 = $1 WHERE id = $2 AND claimed_by = $3"
                    " AND status = 'triggered' RETURNING media_sha256",
                    3, params, on_linked_prepared, s) < 0)
        media_abandon(s, "cannot queue a query");
}

static void on_prepared(void *arg, wc_image_result *r)
{
    scheduler *s = arg;
    media_state *m = s->media;
    if (!still_wanted(s))
        return;
    m->seconds += r->seconds;
    m->bytes_in += r->in_len;
    if (r->rc < 0) {
        media_fail(s, r->code, r->why);
        return;
    }
    m->bytes_out += r->out.len;
    wc_info("campaign %s: image %s %dx%d %zu bytes -> JPEG %dx%d q%d %zu bytes in %.0f ms",
            s->c->id, wc_image_type_name(r->out.in_type), r->out.in_width, r->out.in_height,
            r->in_len, r->out.width, r->out.height, r->out.quality, r->out.len, r->seconds * 1000);
    wc_media_sha256(&r->out, m->sha);
    if (wc_media_store(s->d.pg, &r->out, r->in_len, m->sha, on_media_stored, s) < 0)
        media_abandon(s, "cannot queue a query");
}

/* Takes bytes (malloc'd) and prepares them on the worker thread. */
static void start_prepare(scheduler *s, unsigned char *bytes, size_t len)
{
    wc_image_opts o = {.max_side = (int)s->cfg.media.max_side,
                       .max_bytes = (size_t)s->cfg.media.max_bytes,
                       .max_pixels = (uint64_t)s->cfg.media.max_pixels};
    if (wc_image_worker_start(s->media->worker, bytes, len, &o, on_prepared, s) < 0)
        media_abandon(s, "cannot start the image thread");
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
    if (!m || !(m->worker = wc_image_worker_new(s->d.base, 1)) ||
        !(m->httpc = wc_httpc_shared_acquire(s->d.base)))
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
    wc_image_worker_free(m->worker);
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
