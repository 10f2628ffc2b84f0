/* An image prepared once before any message refers to it: a triggered
 * campaign's media_url, or a drip sequence step's (sequences.c). The link
 * is fetched (wc_fetch: time-out, byte cap, redirects, address guard) or the
 * data: URL decoded, then decoded, resized and re-encoded by wc_image on a
 * worker thread (wc_image_worker: the event loop never waits for it), then
 * stored once in the media table under its SHA-256 (wc_media).
 * media_prepare_url() does that for any URL and hands the sha256 (or what
 * was wrong) to a completion; media_prepare() is the campaign's use of it,
 * linked from campaigns.media_sha256, and anything wrong fails the campaign
 * with "<code>: <why>" on its row.
 *
 * Touches: the media table, campaigns.media_sha256, the campaign's
 * media_url in memory (with WACAST_MEDIA_REFERENCE). At most one
 * preparation per caller at a time (the campaign being expanded, the
 * sequences' one), each a job of its own. */
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
#define MEDIA_JOBS 4

/* One preparation in flight. */
typedef struct media_job {
    scheduler *s;
    char *url;
    media_done_fn *done;
    void *arg;
    char sha[WC_MEDIA_SHA256_HEX];
    bool in_pg;  /* a statement of its own is in flight */
    bool orphan; /* left by media_free to that statement's callback (wc_pg_free runs it) */
    struct media_job *next;
} media_job;

struct media_state {
    wc_httpc *httpc;
    wc_image_worker *worker;
    bool stopping;   /* media_free: callbacks touch nothing */
    media_job *jobs; /* in flight */
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

static void job_free(media_job *j)
{
    media_state *m = j->s->media;
    for (media_job **p = &m->jobs; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            break;
        }
    free(j->url);
    free(j);
}

/* Ends a job: its completion runs once, after the job is gone. */
static void job_end(media_job *j, const char *sha256, const char *code, const char *why)
{
    scheduler *s = j->s;
    media_done_fn *done = j->done;
    void *arg = j->arg;
    char sha[WC_MEDIA_SHA256_HEX] = "";
    if (sha256)
        snprintf(sha, sizeof sha, "%s", sha256);
    if (code)
        count_failure(s->media, code);
    job_free(j);
    done(s, arg, sha256 ? sha : NULL, code, why);
}

/* Whether the job's answer is still wanted (not while the scheduler stops). */
static bool job_live(media_job *j)
{
    return !j->s->media->stopping && !j->s->d.stopping;
}

static void job_transient(media_job *j, const char *why)
{
    job_end(j, NULL, NULL, why);
}

/* A statement of the job answered: true when nothing more is to be done
 * here (the orphan freed, the scheduler stopping, or the statement failed:
 * the job then ends as a failure to try again later). */
static bool pg_answered(media_job *j, PGresult *res, const char *err)
{
    j->in_pg = false;
    if (j->orphan) {
        free(j->url);
        free(j);
        return true;
    }
    if (!job_live(j))
        return true;
    if (!res) {
        j->s->m.pg_errors++;
        job_transient(j, err);
        return true;
    }
    return false;
}

static void on_stored(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    media_job *j = arg;
    if (pg_answered(j, res, err))
        return;
    j->s->media->prepared++;
    job_end(j, j->sha, NULL, NULL);
}

static void on_prepared(void *arg, wc_image_result *r)
{
    media_job *j = arg;
    if (!job_live(j))
        return;
    media_state *m = j->s->media;
    m->seconds += r->seconds;
    m->bytes_in += r->in_len;
    if (r->rc < 0) {
        job_end(j, NULL, r->code, r->why);
        return;
    }
    m->bytes_out += r->out.len;
    wc_info("image %s %dx%d %zu bytes -> JPEG %dx%d q%d %zu bytes in %.0f ms",
            wc_image_type_name(r->out.in_type), r->out.in_width, r->out.in_height, r->in_len,
            r->out.width, r->out.height, r->out.quality, r->out.len, r->seconds * 1000);
    wc_media_sha256(&r->out, j->sha);
    if (wc_media_store(j->s->d.pg, &r->out, r->in_len, j->sha, on_stored, j) < 0)
        job_transient(j, "cannot queue a query");
    else
        j->in_pg = true;
}

/* Takes bytes (malloc'd) and prepares them on the worker thread. */
static void start_prepare(media_job *j, unsigned char *bytes, size_t len)
{
    scheduler *s = j->s;
    wc_image_opts o = {.max_side = (int)s->cfg.media.max_side,
                       .max_bytes = (size_t)s->cfg.media.max_bytes,
                       .max_pixels = (uint64_t)s->cfg.media.max_pixels};
    if (wc_image_worker_start(s->media->worker, bytes, len, &o, on_prepared, j) < 0)
        job_transient(j, "cannot start the image thread");
}

static void on_fetched(void *arg, const unsigned char *data, size_t len, const char *code,
                       const char *why)
{
    media_job *j = arg;
    if (!job_live(j))
        return;
    if (code) {
        job_end(j, NULL, code, why);
        return;
    }
    unsigned char *copy = malloc(len ? len : 1);
    if (!copy)
        abort();
    memcpy(copy, data, len);
    start_prepare(j, copy, len);
}

static void on_found(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    media_job *j = arg;
    if (pg_answered(j, res, err))
        return;
    if (PQntuples(res) == 0) {
        job_end(j, NULL, "media_not_found",
                "no prepared image has this sha256 (upload the file first: POST /api/media)");
        return;
    }
    j->s->media->reused++;
    job_end(j, PQgetvalue(res, 0, 0), NULL, NULL);
}

static bool is_sha256_hex(const char *v)
{
    return strlen(v) == 64 && strspn(v, "0123456789abcdef") == 64;
}

void media_prepare_url(scheduler *s, const char *url, media_done_fn *done, void *arg)
{
    media_job *j = calloc(1, sizeof *j);
    if (!j || !(j->url = strdup(url)))
        abort();
    j->s = s;
    j->done = done;
    j->arg = arg;
    j->next = s->media->jobs;
    s->media->jobs = j;
    url = j->url;
    const char *code = NULL;
    char why[256];
    if (strncmp(url, "media:", 6) == 0) {
        if (!is_sha256_hex(url + 6)) {
            job_end(j, NULL, "media_bad_reference",
                    "media:<id> must name a sha256 (64 hex digits)");
            return;
        }
        const char *params[] = {url + 6};
        if (wc_pg_query(s->d.pg, "SELECT sha256 FROM media WHERE sha256 = $1", 1, params, on_found,
                        j) < 0)
            job_transient(j, "cannot queue a query");
        else
            j->in_pg = true;
        return;
    }
    if (strncasecmp(url, "data:", 5) == 0) {
        unsigned char *bytes;
        size_t len;
        if (wc_fetch_data_url(url, (size_t)s->cfg.media.fetch_max_bytes, &bytes, &len, &code, why,
                              sizeof why) < 0) {
            job_end(j, NULL, code, why);
            return;
        }
        start_prepare(j, bytes, len);
        return;
    }
    if (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0) {
        wc_fetch_opts o = {.timeout_ms = s->cfg.media.fetch_timeout_ms,
                           .max_bytes = (size_t)s->cfg.media.fetch_max_bytes,
                           .allow = s->cfg.media.fetch_allow};
        if (wc_fetch_start(s->media->httpc, url, &o, on_fetched, j, &code, why, sizeof why) < 0)
            job_end(j, NULL, code, why);
        return;
    }
    job_end(j, NULL, WC_FETCH_E_URL,
            "media_url must be an http(s) link, a base64 data: URL or media:<sha256>");
}

/* ---- a campaign's image -------------------------------------------------------------------- */

/* Whether the answer still belongs to the campaign in hand. */
static bool campaign_wanted(scheduler *s)
{
    return !s->d.stopping && s->c && s->state == EXP_MEDIA;
}

/* Prepared (or found prepared) and linked: the expansion goes on. */
static void campaign_done(scheduler *s, const char *sha256)
{
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

/* A PostgreSQL answer to act on: false when it is no longer wanted, or when
 * the statement failed (the claim's work is then dropped, to resume). */
static bool answer_usable(scheduler *s, PGresult *res, const char *err)
{
    if (!campaign_wanted(s))
        return false;
    if (!res) {
        s->m.pg_errors++;
        abandon(s, err);
        return false;
    }
    return true;
}

static void on_linked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!answer_usable(s, res, err))
        return;
    if (PQntuples(res) == 0) {
        abandon(s, "the claim was taken over while the image was prepared");
        return;
    }
    campaign_done(s, PQgetvalue(res, 0, 0));
}

/* The image is stored (now or before): the campaign points at it, while
 * this scheduler still holds the claim. */
static void on_campaign_image(scheduler *s, void *arg, const char *sha256, const char *code,
                              const char *why)
{
    (void)arg;
    if (!campaign_wanted(s))
        return;
    if (code) {
        char reason[512];
        snprintf(reason, sizeof reason, "%s: %s", code, why);
        fail_campaign(s, reason);
        return;
    }
    if (!sha256) {
        abandon(s, why);
        return;
    }
    const char *params[] = {sha256, s->c->id, s->cfg.c.instance_id};
    if (wc_pg_query(s->d.pg,
                    "UPDATE campaigns SET media_sha256 = $1 WHERE id = $2 AND claimed_by = $3"
                    " AND status = 'triggered' RETURNING media_sha256",
                    3, params, on_linked, s) < 0)
        abandon(s, "cannot queue a query");
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
        campaign_done(s, PQgetvalue(res, 0, 0));
        return;
    }
    media_prepare_url(s, s->c->media_url, on_campaign_image, NULL);
}

void media_prepare(scheduler *s)
{
    if (!s->c->media_url || !s->c->media_url[0]) {
        scheduler_expand(s);
        return;
    }
    wc_debug("expansion: -> media");
    s->state = EXP_MEDIA;
    const char *params[] = {s->c->id};
    if (wc_pg_query(s->d.pg, "SELECT media_sha256 FROM campaigns WHERE id = $1", 1, params,
                    on_existing, s) < 0)
        abandon(s, "cannot queue a query");
}

void media_init(scheduler *s)
{
    char err[200];
    if (wc_fetch_allow_check(s->cfg.media.fetch_allow, err, sizeof err) < 0) {
        fprintf(stderr, "wacast-scheduler: " WC_FETCH_ALLOW_ENV ": %s\n", err);
        exit(2);
    }
    media_state *m = calloc(1, sizeof *m);
    if (!m || !(m->worker = wc_image_worker_new(s->d.base, MEDIA_JOBS)) ||
        !(m->httpc = wc_httpc_shared_acquire(s->d.base)))
        abort();
    s->media = m;
}

void media_free(scheduler *s)
{
    media_state *m = s->media;
    if (!m)
        return;
    m->stopping = true; /* a fetch cancelled below calls back into nothing */
    wc_httpc_shared_release(m->httpc);
    wc_image_worker_free(m->worker);
    while (m->jobs) {
        media_job *j = m->jobs;
        m->jobs = j->next;
        if (j->in_pg) {
            j->orphan = true;
            continue;
        }
        free(j->url);
        free(j);
    }
    free(m);
    s->media = NULL;
}

void media_metrics(struct evbuffer *out, scheduler *s)
{
    media_state *m = s->media;
    if (!m)
        return;
    wc_metric(out, "wacast_scheduler_media_prepared_total", "counter",
              "images (campaigns, sequence steps) fetched, decoded, resized and stored",
              (double)m->prepared);
    wc_metric(out, "wacast_scheduler_media_reused_total", "counter",
              "images found already prepared (upload, resumed claim)", (double)m->reused);
    wc_metric(out, "wacast_scheduler_media_bytes_in_total", "counter",
              "bytes of source images prepared", (double)m->bytes_in);
    wc_metric(out, "wacast_scheduler_media_bytes_out_total", "counter", "bytes of prepared JPEGs",
              (double)m->bytes_out);
    wc_metric(out, "wacast_scheduler_media_prepare_seconds_total", "counter",
              "time spent decoding, resizing and encoding images", m->seconds);
    wc_metric(out, "wacast_scheduler_media_failed_total", "counter",
              "images refused (their campaign or sequence step failed)", (double)m->failed);
    evbuffer_add_printf(out, "# HELP wacast_scheduler_media_failures_total images "
                             "refused, by reason\n# TYPE wacast_scheduler_media_failures_total "
                             "counter\n");
    for (int i = 0; i < m->nreasons; i++) {
        char label[96];
        snprintf(label, sizeof label, "reason=\"%s\"", m->reasons[i].code);
        wc_metric_labeled(out, "wacast_scheduler_media_failures_total", label,
                          (double)m->reasons[i].n);
    }
}
