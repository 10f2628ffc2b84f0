/* The send life cycle and the rules without an answer that the HTTP + JSON
 * transports (wc_cloudapi.c, wc_gowa.c) share; see wc_httpjson.h. Touches
 * only the sends and results handed to it. */
#include "wc_httpjson.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

int wc_httpjson_backoff_ms(uint32_t attempt)
{
    uint32_t shift = attempt > 6 ? 6 : attempt;
    int ms = 1000 << shift;
    return ms > WC_HTTPJSON_MAX_BACKOFF_MS ? WC_HTTPJSON_MAX_BACKOFF_MS : ms;
}

void wc_httpjson_set(wc_send_result *r, wc_send_outcome outcome, const char *code, const char *fmt,
                     ...)
{
    r->outcome = outcome;
    snprintf(r->error_code, sizeof r->error_code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->error_message, sizeof r->error_message, fmt, ap);
    va_end(ap);
}

void wc_httpjson_no_answer(wc_send_result *r, const wc_httpc_resp *resp, const char *provider,
                           uint32_t attempt)
{
    memset(r, 0, sizeof *r);
    if (resp->maybe_sent)
        wc_httpjson_set(r, WC_SEND_RETRY, resp->timed_out ? "timeout" : "no_reply",
                        "no answer from the %s after sending: %s", provider, resp->error);
    else
        wc_httpjson_set(r, WC_SEND_RETRY, resp->timed_out ? "timeout" : "network",
                        "%s unreachable: %s", provider, resp->error);
    r->retry_after_ms = wc_httpjson_backoff_ms(attempt);
    r->outcome_unknown = resp->maybe_sent;
}

long wc_httpjson_timeout_setting(json_t *settings, long dflt)
{
    json_t *jt = json_object_get(settings, "timeout_ms");
    if (!jt)
        return dflt;
    return json_is_integer(jt) ? (long)json_integer_value(jt) : -1;
}

size_t wc_httpjson_url_len(const char *base_url)
{
    size_t len = strlen(base_url);
    while (len > 0 && base_url[len - 1] == '/')
        len--;
    return len;
}

void *wc_httpjson_device_new(size_t size, const wc_transport_env *env, const char *device_id,
                             long timeout_ms)
{
    wc_httpjson_device *dev = calloc(1, size < sizeof *dev ? sizeof *dev : size);
    if (!dev)
        return NULL;
    dev->base = env->base;
    dev->timeout_ms = timeout_ms;
    snprintf(dev->device_id, sizeof dev->device_id, "%s", device_id ? device_id : "");
    if (env->httpc) {
        dev->http = env->httpc;
    } else {
        dev->http = wc_httpc_shared_acquire(env->base);
        dev->shared_http = true;
    }
    if (!dev->http) {
        free(dev);
        return NULL;
    }
    return dev;
}

void wc_httpjson_device_close(wc_httpjson_device *dev)
{
    if (!dev)
        return;
    dev->closing = true;
    while (dev->sends)
        wc_httpjson_close_send(dev->sends);
    if (dev->shared_http)
        wc_httpc_shared_release(dev->http);
}

static void on_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wc_httpjson_finish(arg);
}

void *wc_httpjson_send_new(size_t size, wc_httpjson_device *dev, const wc_send_request *req,
                           wc_send_cb *cb, void *arg)
{
    wc_httpjson_send *s = calloc(1, size < sizeof *s ? sizeof *s : size);
    if (!s)
        return NULL;
    s->later = evtimer_new(dev->base, on_later, s);
    if (!s->later) {
        free(s);
        return NULL;
    }
    s->list = &dev->sends;
    s->cb = cb;
    s->arg = arg;
    s->attempt = req->attempt;
    s->next = dev->sends;
    if (dev->sends)
        dev->sends->prev = s;
    dev->sends = s;
    return s;
}

static void unlink_send(wc_httpjson_send *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        *s->list = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
}

int wc_httpjson_media_get(wc_httpjson_send *s, const wc_media_source *src, const char *sha256,
                          wc_media_got_cb *cb)
{
    memset(&s->res, 0, sizeof s->res);
    if (!src) {
        wc_httpjson_set(&s->res, WC_SEND_FAIL, "media_unavailable",
                        "this sender has no store of prepared images to read media:%s from",
                        sha256);
        return -1;
    }
    s->media_src = src;
    s->media_wait = src->get(src->ctx, sha256, cb, s);
    if (!s->media_wait) {
        wc_httpjson_set(&s->res, WC_SEND_RETRY, "out_of_memory",
                        "could not start reading the image");
        s->res.retry_after_ms = wc_httpjson_backoff_ms(s->attempt);
        return -1;
    }
    return 0;
}

void wc_httpjson_send_drop(wc_httpjson_send *s)
{
    if (s->media_wait)
        s->media_src->cancel(s->media_wait);
    s->media_wait = NULL;
    unlink_send(s);
    event_free(s->later);
    free(s->body);
    free(s->draft);
    free(s);
}

void wc_httpjson_finish(wc_httpjson_send *s)
{
    wc_send_cb *cb = s->cb;
    void *arg = s->arg;
    wc_send_result res = s->res;
    wc_send_result_clean(&res);
    wc_httpjson_send_drop(s);
    cb(arg, &res);
}

int wc_httpjson_finish_later(wc_httpjson_send *s)
{
    struct timeval zero = {0, 0};
    return evtimer_add(s->later, &zero);
}

void wc_httpjson_close_send(wc_httpjson_send *s)
{
    bool maybe_sent = s->call && wc_httpc_cancel(s->call);
    s->call = NULL;
    evtimer_del(s->later);
    memset(&s->res, 0, sizeof s->res);
    if (maybe_sent)
        wc_httpjson_set(&s->res, WC_SEND_RETRY, "closed",
                        "the device was closed with the request out; it may have been sent");
    else
        wc_httpjson_set(&s->res, WC_SEND_RETRY, "closed", "the device was closed during the send");
    s->res.outcome_unknown = maybe_sent;
    wc_httpjson_finish(s);
}
