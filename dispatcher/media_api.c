/* POST /api/media: the dashboard uploads an image once, the dispatcher
 * prepares it like a campaign's image (wc_image on a worker thread: decode,
 * orient, resize, JPEG under the byte budget) and stores it once
 * (wc_media, by sha256); the answer's id goes into a campaign's or a step's
 * media_url as media:<id>, so no base64 travels with the campaign.
 *
 * Bearer WACAST_ADMIN_TOKEN. The body is the image itself (any Content-Type
 * but multipart) or multipart/form-data with a part named "file" (or the
 * first part with a filename); at most WACAST_MEDIA_FETCH_MAX_BYTES (413
 * beyond, from wc_http). Answers: 201 {"id", "media_url", "size", "width",
 * "height", "quality", "source": {...}}; 422 {"error": "<code>: <why>"} for
 * an image refused (the codes of wc_image.h); 400 for a malformed form; 401;
 * 405; 503 while UPLOADS_AT_ONCE uploads are being prepared.
 *
 * Touches: the media table only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "wc_http.h"
#include "wc_image_worker.h"
#include "wc_log.h"
#include "wc_multipart.h"

#include "dispatcher.h"

/* Uploads prepared at once; more wait for a 503's Retry-After. */
#define UPLOADS_AT_ONCE 2

typedef struct media_upload upload;
struct media_upload {
    upload *prev, *next; /* on the preparing list until the worker is done */
    dispatcher *ds;
    struct evhttp_request *req;
    wc_image_out out;
    size_t in_len;
    char sha[WC_MEDIA_SHA256_HEX];
};

static void preparing_remove(upload *u)
{
    if (u->prev)
        u->prev->next = u->next;
    else
        u->ds->media_preparing = u->next;
    if (u->next)
        u->next->prev = u->prev;
    u->prev = u->next = NULL;
}

static const char *header(struct evhttp_request *req, const char *name)
{
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), name);
    return v ? v : "";
}

static void upload_free(upload *u)
{
    wc_image_out_free(&u->out);
    free(u);
}

static void on_stored(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    upload *u = arg;
    if (!res) {
        u->ds->m.pg_errors++;
        wc_warn("storing an uploaded image: %s", err);
        wc_http_reply_error(u->req, 503, "database unavailable");
        upload_free(u);
        return;
    }
    json_t *o =
        json_pack("{s:s, s:s+, s:I, s:i, s:i, s:i, s:{s:s, s:I, s:i, s:i}}", "id", u->sha,
                  "media_url", "media:", u->sha, "size", (json_int_t)u->out.len, "width",
                  u->out.width, "height", u->out.height, "quality", u->out.quality, "source",
                  "type", wc_image_type_name(u->out.in_type), "bytes", (json_int_t)u->in_len,
                  "width", u->out.in_width, "height", u->out.in_height);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (text)
        wc_http_reply_json(u->req, 201, text);
    else
        wc_http_reply_error(u->req, 500, "out of memory");
    wc_info("admin: image uploaded: media:%s, %zu -> %zu bytes", u->sha, u->in_len, u->out.len);
    free(text);
    json_decref(o);
    upload_free(u);
}

static void on_prepared(void *arg, wc_image_result *r)
{
    upload *u = arg;
    preparing_remove(u);
    if (r->rc < 0) {
        char msg[320];
        snprintf(msg, sizeof msg, "%s: %s", r->code, r->why);
        wc_http_reply_error(u->req, 422, msg);
        upload_free(u);
        return;
    }
    u->out = r->out;
    r->out.jpeg = NULL; /* taken */
    u->in_len = r->in_len;
    wc_media_sha256(&u->out, u->sha);
    if (wc_media_store(u->ds->d.pg, &u->out, u->in_len, u->sha, on_stored, u) < 0) {
        wc_http_reply_error(u->req, 503, "database unavailable");
        upload_free(u);
    }
}

static void on_media(struct evhttp_request *req, void *arg)
{
    dispatcher *ds = arg;
    if (!dispatcher_admin_authorized(ds, req))
        return;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (!path || strcmp(path, "/api/media") != 0) {
        wc_http_reply_error(req, 404, "not found");
        return;
    }
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "POST");
        wc_http_reply_error(req, 405, "POST an image");
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const unsigned char *body = evbuffer_pullup(in, -1);
    const char *ctype = header(req, "Content-Type");
    const unsigned char *image = body;
    size_t image_len = len;
    if (strncasecmp(ctype, "multipart/form-data", 19) == 0 &&
        wc_multipart_file(ctype, body, len, &image, &image_len) < 0) {
        wc_http_reply_error(req, 400, "multipart/form-data without a file part (name it \"file\")");
        return;
    }
    if (image_len == 0) {
        wc_http_reply_error(req, 400, "no image in the body");
        return;
    }
    unsigned char *copy = malloc(image_len);
    upload *u = calloc(1, sizeof *u);
    if (!copy || !u) {
        free(copy);
        free(u);
        wc_http_reply_error(req, 500, "out of memory");
        return;
    }
    memcpy(copy, image, image_len);
    u->ds = ds;
    u->req = req;
    wc_image_opts o = {.max_side = (int)ds->cfg.media.max_side,
                       .max_bytes = (size_t)ds->cfg.media.max_bytes,
                       .max_pixels = (uint64_t)ds->cfg.media.max_pixels};
    if (wc_image_worker_start(ds->media_worker, copy, image_len, &o, on_prepared, u) < 0) {
        free(u);
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        wc_http_reply_error(req, 503, "busy preparing other uploads; try again");
        return;
    }
    u->next = ds->media_preparing;
    if (ds->media_preparing)
        ds->media_preparing->prev = u;
    ds->media_preparing = u;
}

void media_api_init(dispatcher *ds)
{
    if (!ds->d.admin_http)
        return;
    ds->media_worker = wc_image_worker_new(ds->d.base, UPLOADS_AT_ONCE);
    if (!ds->media_worker ||
        wc_http_route(ds->d.admin_http, "/api/media", (size_t)ds->cfg.media.fetch_max_bytes,
                      on_media, ds) < 0) {
        wc_error("cannot route /api/media");
        abort();
    }
}

void media_api_free(dispatcher *ds)
{
    /* Uploads the worker holds are freed here, when it stops them. */
    wc_image_worker_free(ds->media_worker);
    ds->media_worker = NULL;
    while (ds->media_preparing) {
        upload *u = ds->media_preparing;
        preparing_remove(u);
        upload_free(u);
    }
}
