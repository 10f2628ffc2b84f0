/* Unit tests for a prepared image (media:<sha256>) sent by the cloudapi and
 * gowa transports, against an in-process fake of each provider and a media
 * source in memory that answers on a later loop turn (or holds on, or says
 * the image is missing), as the sender's PostgreSQL-backed one does:
 *
 * - cloudapi: many sends of one image on one number (two devices sharing it)
 *   wait for one multipart upload (messaging_product, type, file) and all go
 *   out with its id; an image already uploaded is not uploaded again; an
 *   upload that fails or times out is a retry that is never in doubt, with
 *   no message request; a missing image fails its message only; an id Meta
 *   refuses (code 100) is uploaded again once, and a second refusal fails
 *   the message; a device closed while its image is read calls back
 *   "closed", not in doubt, and the read is cancelled;
 * - across senders (real Redis): the id is shared through Redis with its
 *   TTL; while another sender holds the upload lock nothing is uploaded and
 *   the send goes out with the id that sender stores; a lock never released
 *   is waited for only until its time is up, then the image is uploaded;
 *   a sender releases only its own lock and clears a refused id only while
 *   Redis still holds that id (not another sender's newer one);
 * - gowa: the image goes as the "image" file part with the caption, and a
 *   missing image fails the message without a request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <jansson.h>

#include "send_check.h"
#include "wc_daemon.h"
#include "wc_redis.h"
#include "wc_transport.h"
#include "wt_env.h"

#define SHA "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define REF "media:" SHA
#define TO "+60123456789"
#define MAX_RECS 256

/* ---- a media source in memory -------------------------------------------------------------- */

struct wc_media_wait {
    struct event *ev;
    wc_media_got_cb *cb;
    void *arg;
    struct mem_source *src;
};

typedef struct mem_source {
    wc_media_source source;
    struct event_base *base;
    const char *missing; /* this sha answers media_not_found */
    bool hold;           /* never answer (a read in progress) */
    int gets, cancels, live;
} mem_source;

static const unsigned char JPEG[] = {0xFF, 0xD8, 0xFF, 0xE0, 'J', 'F', 'I', 'F', 0, 0xFF, 0xD9};

static void on_mem_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wc_media_wait *w = arg;
    mem_source *m = w->src;
    wc_media_got got = {.bytes = JPEG, .len = sizeof JPEG};
    if (m->missing) {
        got = (wc_media_got){.error_code = "media_not_found",
                             .error_message = "no stored image media:" SHA};
    }
    wc_media_got_cb *cb = w->cb;
    void *cbarg = w->arg;
    event_free(w->ev);
    free(w);
    m->live--;
    cb(cbarg, &got);
}

static wc_media_wait *mem_get(void *ctx, const char *sha, wc_media_got_cb *cb, void *arg)
{
    mem_source *m = ctx;
    assert_string_equal(sha, SHA);
    m->gets++;
    wc_media_wait *w = calloc(1, sizeof *w);
    w->cb = cb;
    w->arg = arg;
    w->src = m;
    w->ev = evtimer_new(m->base, on_mem_ready, w);
    struct timeval zero = {0, 0};
    if (!m->hold)
        evtimer_add(w->ev, &zero);
    m->live++;
    return w;
}

static void mem_cancel(wc_media_wait *w)
{
    w->src->cancels++;
    w->src->live--;
    event_free(w->ev);
    free(w);
}

/* ---- the fakes ----------------------------------------------------------------------------- */

typedef struct rec {
    char path[128];
    char *body; /* owned */
    size_t len;
    json_t *json; /* a JSON body, or NULL */
} rec;

typedef struct fixture {
    fake_http srv;
    wc_transport_env env;
    mem_source mem;
    rec recs[MAX_RECS];
    int nrecs;
    int uploads;
    int upload_status; /* 0: 200 with an id */
    bool upload_hang;
    int refuse_ids; /* sends whose image id is answered code 100 */
    /* Another sender's write lands while a request is answered: this key
     * set to this value (on an upload, or on a refused id). */
    redisContext *meanwhile_rc;
    char meanwhile_key[160];
    const char *meanwhile_value;
    bool meanwhile_on_upload;
} fixture;

static void meanwhile(fixture *fx, bool upload)
{
    if (fx->meanwhile_rc && fx->meanwhile_on_upload == upload)
        freeReplyObject(
            redisCommand(fx->meanwhile_rc, "SET %s %s", fx->meanwhile_key, fx->meanwhile_value));
}

static void reply(struct evhttp_request *req, int status, const char *body)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, status, status == 200 ? "OK" : "Error", out);
    evbuffer_free(out);
}

static bool body_has(const rec *r, const char *s)
{
    return r->body && memmem(r->body, r->len, s, strlen(s)) != NULL;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    fixture *fx = arg;
    assert_true(fx->nrecs < MAX_RECS);
    rec *r = &fx->recs[fx->nrecs++];
    snprintf(r->path, sizeof r->path, "%s", evhttp_request_get_uri(req));
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    r->len = evbuffer_get_length(in);
    r->body = malloc(r->len + 1);
    evbuffer_remove(in, r->body, r->len);
    r->body[r->len] = '\0';
    r->json = json_loadb(r->body, r->len, 0, NULL);
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    char body[256];
    if (strstr(r->path, "/media")) {
        fx->uploads++;
        if (!ct || strncmp(ct, "multipart/form-data", 19) != 0)
            fake_http_violation(&fx->srv, "upload Content-Type is %s", ct ? ct : "missing");
        if (!body_has(r, "name=\"messaging_product\"") || !body_has(r, "whatsapp") ||
            !body_has(r, "name=\"type\"") || !body_has(r, "image/jpeg") ||
            !body_has(r, "name=\"file\"") || !memmem(r->body, r->len, JPEG, sizeof JPEG))
            fake_http_violation(&fx->srv, "upload lacks messaging_product, type or the file");
        meanwhile(fx, true);
        if (fx->upload_hang)
            return;
        if (fx->upload_status) {
            reply(req, fx->upload_status,
                  "{\"error\":{\"message\":\"(#131053) Media upload error\",\"type\":"
                  "\"OAuthException\",\"code\":131053}}");
            return;
        }
        snprintf(body, sizeof body, "{\"id\":\"%d\"}", 1000 + fx->uploads);
        reply(req, 200, body);
        return;
    }
    if (strstr(r->path, "/send/image")) {
        reply(req, 200,
              "{\"code\":\"SUCCESS\",\"message\":\"Success\",\"results\":{\"message_id\":"
              "\"3EB0AAAA\",\"status\":\"ok\"}}");
        return;
    }
    json_t *image = json_object_get(r->json, "image");
    if (image && fx->refuse_ids > 0) {
        fx->refuse_ids--;
        meanwhile(fx, false);
        reply(req, 400,
              "{\"error\":{\"message\":\"(#100) Invalid parameter\",\"type\":\"OAuthException\","
              "\"code\":100,\"error_data\":{\"details\":\"Param image['id'] is not a valid "
              "whatsapp business account media attachment ID\"}}}");
        return;
    }
    snprintf(body, sizeof body,
             "{\"messaging_product\":\"whatsapp\",\"messages\":[{\"id\":"
             "\"wamid.%d\"}]}",
             fx->nrecs);
    reply(req, 200, body);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    send_check_start(&fx->srv, &fx->env, on_request, fx);
    fx->mem.base = fx->srv.base;
    fx->mem.source = (wc_media_source){.ctx = &fx->mem, .get = mem_get, .cancel = mem_cancel};
    fx->env.media = &fx->mem.source;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    assert_int_equal(fx->mem.live, 0); /* every read answered or cancelled */
    for (int i = 0; i < fx->nrecs; i++) {
        free(fx->recs[i].body);
        json_decref(fx->recs[i].json);
    }
    fake_http_stop(&fx->srv);
    free(fx);
    return 0;
}

static void *open_cloudapi(fixture *fx, const char *pnid, long timeout_ms)
{
    json_t *settings =
        json_pack("{s:s, s:s, s:s, s:i}", "base_url", fx->srv.base_url, "api_version", "v23.0",
                  "phone_number_id", pnid, "timeout_ms", (int)timeout_ms);
    json_t *creds = json_pack("{s:s}", "access_token", "EAAG-token");
    return send_check_open(&fx->srv, &fx->env, &wc_transport_cloudapi, "dev-1", settings, creds);
}

static void *open_gowa(fixture *fx)
{
    json_t *settings = json_pack("{s:s}", "base_url", fx->srv.base_url);
    json_t *creds = json_pack("{s:s, s:s}", "username", "u", "password", "p");
    return send_check_open(&fx->srv, &fx->env, &wc_transport_gowa, "dev-g", settings, creds);
}

static wc_send_request image_req(int64_t id, const char *caption)
{
    return (wc_send_request){.message_id = id,
                             .campaign_id = "c1",
                             .device_id = "dev-1",
                             .recipient = TO,
                             .content = caption,
                             .media_url = REF};
}

typedef struct many many;
typedef struct slot {
    many *m;
    int i;
} slot;
struct many {
    fixture *fx;
    int done, want;
    slot slots[64];
    wc_send_result res[64];
};

static void on_one_of_many(void *arg, const wc_send_result *res)
{
    slot *sl = arg;
    sl->m->res[sl->i] = *res;
    if (++sl->m->done == sl->m->want)
        event_base_loopbreak(sl->m->fx->srv.base);
}

/* Starts n sends of the image spread over devs and runs until all ended. */
static void send_many(fixture *fx, void **devs, int ndevs, int n, many *m)
{
    memset(m, 0, sizeof *m);
    m->fx = fx;
    m->want = n;
    for (int i = 0; i < n; i++) {
        m->slots[i] = (slot){m, i};
        wc_send_request req = image_req(100 + i, "Look");
        assert_int_equal(
            wc_transport_cloudapi.send(devs[i % ndevs], &req, on_one_of_many, &m->slots[i]), 0);
    }
    assert_int_equal(m->done, 0); /* never from inside send() */
    fake_http_run(&fx->srv, 10000);
    assert_int_equal(m->done, n);
}

/* The image ids the message requests carried, each checked against want. */
static int messages_with_id(fixture *fx, const char *want)
{
    int n = 0;
    for (int i = 0; i < fx->nrecs; i++) {
        json_t *image = json_object_get(fx->recs[i].json, "image");
        if (!strstr(fx->recs[i].path, "/messages"))
            continue;
        assert_non_null(image);
        assert_string_equal(json_string_value(json_object_get(image, "id")), want);
        assert_string_equal(json_string_value(json_object_get(image, "caption")), "Look");
        n++;
    }
    return n;
}

static void test_one_upload_per_number(void **state)
{
    fixture *fx = *state;
    void *devs[2] = {open_cloudapi(fx, "555001", 5000), open_cloudapi(fx, "555001", 5000)};
    many m;
    send_many(fx, devs, 2, 20, &m);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(m.res[i].outcome, WC_SEND_OK);
        send_check_clean(&m.res[i]);
    }
    assert_int_equal(fx->uploads, 1);
    assert_string_equal(fx->recs[0].path, "/v23.0/555001/media");
    assert_int_equal(fx->mem.gets, 1);
    assert_int_equal(messages_with_id(fx, "1001"), 20);
    /* Later sends reuse the id: no read, no upload. */
    wc_send_request req = image_req(500, "Look");
    wc_send_result r = send_check_one(&fx->srv, &wc_transport_cloudapi, devs[0], &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 1);
    assert_int_equal(fx->mem.gets, 1);
    /* Another number uploads its own. */
    void *other = open_cloudapi(fx, "555002", 5000);
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, other, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 2);
    assert_string_equal(fx->recs[fx->nrecs - 2].path, "/v23.0/555002/media");
    fake_http_assert_no_violations(&fx->srv, "the fake Cloud API");
    wc_transport_cloudapi.close(other);
    wc_transport_cloudapi.close(devs[0]);
    wc_transport_cloudapi.close(devs[1]);
}

static void test_failed_upload_is_not_a_send(void **state)
{
    fixture *fx = *state;
    void *dev = open_cloudapi(fx, "555003", 300);
    fx->upload_status = 500;
    many m;
    send_many(fx, &dev, 1, 3, &m);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(m.res[i].outcome, WC_SEND_RETRY);
        assert_false(m.res[i].outcome_unknown);
        assert_true(m.res[i].retry_after_ms > 0);
        assert_non_null(strstr(m.res[i].error_message, "image upload"));
    }
    assert_int_equal(fx->uploads, 1);
    /* A 4xx upload error (the file refused) fails the message. */
    fx->upload_status = 400;
    wc_send_request req = image_req(7, "Look");
    wc_send_result r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "131053");
    assert_false(r.outcome_unknown);
    /* An upload with no answer in time: a retry, not in doubt. */
    fx->upload_status = 0;
    fx->upload_hang = true;
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_RETRY);
    assert_string_equal(r.error_code, "upload_timeout");
    assert_false(r.outcome_unknown);
    for (int i = 0; i < fx->nrecs; i++)
        assert_null(strstr(fx->recs[i].path, "/messages"));
    wc_transport_cloudapi.close(dev);
}

static void test_missing_image_fails_its_message(void **state)
{
    fixture *fx = *state;
    void *dev = open_cloudapi(fx, "555004", 5000);
    fx->mem.missing = SHA;
    wc_send_request req = image_req(8, "Look");
    wc_send_result r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "media_not_found");
    assert_int_equal(fx->nrecs, 0);
    /* A text message on the same device still goes. */
    fx->mem.missing = NULL;
    req.media_url = NULL;
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    /* Without a media source at all: failed, with the reason. */
    fx->env.media = NULL;
    void *bare = open_cloudapi(fx, "555005", 5000);
    req.media_url = REF;
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, bare, &req);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "media_unavailable");
    wc_transport_cloudapi.close(bare);
    wc_transport_cloudapi.close(dev);
}

static void test_refused_id_uploads_again_once(void **state)
{
    fixture *fx = *state;
    void *dev = open_cloudapi(fx, "555006", 5000);
    wc_send_request req = image_req(9, "Look");
    wc_send_result r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 1);
    /* Meta forgot it: the next send is refused, the image goes up again and
     * the send goes out with the new id. */
    fx->refuse_ids = 1;
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 2);
    json_t *last = json_object_get(fx->recs[fx->nrecs - 1].json, "image");
    assert_string_equal(json_string_value(json_object_get(last, "id")), "1002");
    /* Refused twice: no third upload, the message fails with Meta's code. */
    fx->refuse_ids = 2;
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "100");
    assert_int_equal(fx->uploads, 3);
    fake_http_assert_no_violations(&fx->srv, "the fake Cloud API");
    wc_transport_cloudapi.close(dev);
}

typedef struct closed {
    int calls;
    wc_send_result res;
} closed;

static void on_closed(void *arg, const wc_send_result *res)
{
    closed *c = arg;
    c->calls++;
    c->res = *res;
}

static void test_close_while_reading(void **state)
{
    fixture *fx = *state;
    fx->mem.hold = true;
    const wc_transport_ops *ops[2] = {&wc_transport_cloudapi, &wc_transport_gowa};
    for (int k = 0; k < 2; k++) {
        void *dev = k == 0 ? open_cloudapi(fx, "555007", 5000) : open_gowa(fx);
        closed c = {0};
        wc_send_request req = image_req(10, "Look");
        assert_int_equal(ops[k]->send(dev, &req, on_closed, &c), 0);
        fake_http_run(&fx->srv, 50);
        assert_int_equal(c.calls, 0);
        ops[k]->close(dev);
        assert_int_equal(c.calls, 1);
        assert_int_equal(c.res.outcome, WC_SEND_RETRY);
        assert_string_equal(c.res.error_code, "closed");
        assert_false(c.res.outcome_unknown);
        assert_int_equal(fx->mem.cancels, k + 1);
    }
    assert_int_equal(fx->nrecs, 0);
}

/* Runs the loop until *calls or ms pass. */
static void run_until_called(fixture *fx, int *calls, int ms)
{
    int64_t end = wc_mono_us() + (int64_t)ms * 1000;
    while (*calls == 0 && wc_mono_us() < end)
        event_base_loop(fx->srv.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

static void test_shared_across_senders(void **state)
{
    fixture *fx = *state;
    wt_env env;
    assert_int_equal(wt_env_start(&env, WT_REDIS), 0);
    char err[128];
    wc_redis *redis = wc_redis_new(fx->srv.base, env.redis_url, "test", 2000, err, sizeof err);
    assert_non_null(redis);
    redisContext *rc = wc_redis_connect_sync(env.redis_url, 2000, err, sizeof err);
    assert_non_null(rc);
    fx->env.redis = redis;
    fx->env.media_id_ttl_s = 3600;
    int64_t until = wc_mono_us() + 5000000;
    while (!wc_redis_ready(redis) && wc_mono_us() < until)
        event_base_loop(fx->srv.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    assert_true(wc_redis_ready(redis));

    /* One upload; the id goes to Redis with its TTL, the lock is gone. */
    void *dev = open_cloudapi(fx, "555100", 300);
    wc_send_request req = image_req(20, "Look");
    wc_send_result r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 1);
    redisReply *rep = redisCommand(rc, "GET wacast:cloudapi:media:555100:%s", SHA);
    assert_string_equal(rep->str, "1001");
    freeReplyObject(rep);
    rep = redisCommand(rc, "TTL wacast:cloudapi:media:555100:%s", SHA);
    assert_true(rep->integer > 3500 && rep->integer <= 3600);
    freeReplyObject(rep);
    rep = redisCommand(rc, "EXISTS wacast:cloudapi:media:555100:%s:uploading", SHA);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    wc_transport_cloudapi.close(dev);

    /* A sender that starts afresh (nothing in memory) takes the id from Redis. */
    dev = open_cloudapi(fx, "555100", 300);
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 1);
    assert_int_equal(fx->mem.gets, 1);
    wc_transport_cloudapi.close(dev);

    /* Another sender is uploading to 555101: we wait for its id. */
    freeReplyObject(
        redisCommand(rc, "SET wacast:cloudapi:media:555101:%s:uploading other PX 60000", SHA));
    dev = open_cloudapi(fx, "555101", 300);
    closed c = {0};
    assert_int_equal(wc_transport_cloudapi.send(dev, &req, on_closed, &c), 0);
    run_until_called(fx, &c.calls, 700);
    assert_int_equal(c.calls, 0);
    assert_int_equal(fx->uploads, 1);
    freeReplyObject(redisCommand(rc, "SET wacast:cloudapi:media:555101:%s 7777", SHA));
    freeReplyObject(redisCommand(rc, "DEL wacast:cloudapi:media:555101:%s:uploading", SHA));
    run_until_called(fx, &c.calls, 5000);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.res.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 1);
    json_t *image = json_object_get(fx->recs[fx->nrecs - 1].json, "image");
    assert_string_equal(json_string_value(json_object_get(image, "id")), "7777");
    wc_transport_cloudapi.close(dev);

    /* A lock nobody releases: waited for until its time is up (the device's
     * time-out and 5 s), then the image is uploaded here. */
    freeReplyObject(
        redisCommand(rc, "SET wacast:cloudapi:media:555102:%s:uploading other PX 60000", SHA));
    dev = open_cloudapi(fx, "555102", 300);
    memset(&c, 0, sizeof c);
    int64_t t0 = wc_mono_us();
    assert_int_equal(wc_transport_cloudapi.send(dev, &req, on_closed, &c), 0);
    run_until_called(fx, &c.calls, 15000);
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.res.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 2);
    assert_true(wc_mono_us() - t0 >= 5000000);
    wc_transport_cloudapi.close(dev);

    /* Our lock ran out during the upload and another sender took it: our
     * release leaves its lock alone. */
    fx->meanwhile_rc = rc;
    fx->meanwhile_on_upload = true;
    fx->meanwhile_value = "other";
    snprintf(fx->meanwhile_key, sizeof fx->meanwhile_key,
             "wacast:cloudapi:media:555103:%s:uploading", SHA);
    dev = open_cloudapi(fx, "555103", 300);
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 3);
    rep = redisCommand(rc, "GET %s", fx->meanwhile_key);
    assert_true(rep && rep->type == REDIS_REPLY_STRING);
    assert_string_equal(rep->str, "other");
    freeReplyObject(rep);
    wc_transport_cloudapi.close(dev);

    /* Meta refuses 555100's id just as another sender stores the id of its
     * new upload: clearing the refused id leaves the newer one, and the send
     * goes out with it, with no upload here. */
    fx->meanwhile_on_upload = false;
    fx->meanwhile_value = "8888";
    snprintf(fx->meanwhile_key, sizeof fx->meanwhile_key, "wacast:cloudapi:media:555100:%s", SHA);
    fx->refuse_ids = 1;
    dev = open_cloudapi(fx, "555100", 300);
    r = send_check_one(&fx->srv, &wc_transport_cloudapi, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->uploads, 3);
    image = json_object_get(fx->recs[fx->nrecs - 1].json, "image");
    assert_string_equal(json_string_value(json_object_get(image, "id")), "8888");
    image = json_object_get(fx->recs[fx->nrecs - 2].json, "image");
    assert_string_equal(json_string_value(json_object_get(image, "id")), "1001");
    rep = redisCommand(rc, "GET %s", fx->meanwhile_key);
    assert_string_equal(rep->str, "8888");
    freeReplyObject(rep);
    wc_transport_cloudapi.close(dev);
    fx->meanwhile_rc = NULL;

    fx->env.redis = NULL;
    wc_redis_free(redis);
    redisFree(rc);
    wt_env_stop(&env);
}

static void test_gowa_sends_the_file(void **state)
{
    fixture *fx = *state;
    void *dev = open_gowa(fx);
    wc_send_request req = image_req(11, "Look at this");
    wc_send_result r = send_check_one(&fx->srv, &wc_transport_gowa, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_OK);
    assert_int_equal(fx->nrecs, 1);
    rec *sent = &fx->recs[0];
    assert_string_equal(sent->path, "/send/image");
    assert_true(body_has(sent, "name=\"image\"; filename=\"image.jpg\""));
    assert_true(body_has(sent, "Content-Type: image/jpeg"));
    assert_non_null(memmem(sent->body, sent->len, JPEG, sizeof JPEG));
    assert_true(body_has(sent, "name=\"caption\""));
    assert_true(body_has(sent, "Look at this"));
    assert_true(body_has(sent, "60123456789@s.whatsapp.net"));
    assert_false(body_has(sent, "image_url"));
    fx->mem.missing = SHA;
    r = send_check_one(&fx->srv, &wc_transport_gowa, dev, &req);
    assert_int_equal(r.outcome, WC_SEND_FAIL);
    assert_string_equal(r.error_code, "media_not_found");
    assert_int_equal(fx->nrecs, 1);
    wc_transport_gowa.close(dev);
}

static void test_media_ref(void **state)
{
    (void)state;
    char sha[WC_MEDIA_SHA_LEN + 1];
    assert_true(wc_media_ref(REF, sha));
    assert_string_equal(sha, SHA);
    assert_true(wc_media_ref(
        "media:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", sha));
    assert_string_equal(sha, SHA);
    assert_false(wc_media_ref("media:1037543291543636", sha)); /* a Meta media id */
    assert_false(wc_media_ref(REF "0", sha));
    assert_false(wc_media_ref(
        "media:g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", sha));
    assert_false(wc_media_ref("https://example.com/a.jpg", sha));
    assert_false(wc_media_ref(NULL, sha));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_media_ref),
        cmocka_unit_test_setup_teardown(test_one_upload_per_number, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_upload_is_not_a_send, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_image_fails_its_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_id_uploads_again_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_while_reading, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_across_senders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gowa_sends_the_file, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
