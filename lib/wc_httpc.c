/* HTTP client on the daemon's libevent loop (see wc_httpc.h). curl tells us
 * which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to wake it up
 * (CURLMOPT_TIMERFUNCTION); we turn both into libevent events and hand each
 * wake-up back with curl_multi_socket_action(), then collect finished
 * transfers with curl_multi_info_read(). Callbacks to the user run only from
 * that collection step, after curl has returned, so a user may start, cancel
 * or free from inside one. */
#include "wc_httpc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "wc_log.h"

typedef struct httpc_sock httpc_sock;

struct wc_httpc {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    wc_httpc_call *calls; /* in flight, doubly linked */
    size_t ncalls;
    httpc_sock *socks; /* sockets curl asked us to watch */
    int dispatching;   /* > 0 while our code runs on behalf of an event */
    bool dying;        /* wc_httpc_free() was called */
    int shared_refs;   /* > 0 for a client from wc_httpc_shared_acquire() */
    wc_httpc *shared_next;
};

struct httpc_sock {
    wc_httpc *c;
    curl_socket_t fd;
    struct event *ev;
    httpc_sock *prev, *next;
};

struct wc_httpc_call {
    wc_httpc *c;
    wc_httpc_call *prev, *next;
    CURL *easy;
    struct curl_slist *headers;
    curl_mime *mime;
    wc_httpc_cb *cb;
    void *arg;
    char *buf;
    size_t len, cap, max;
    bool too_large;
    bool request_started; /* curl began sending on a ready connection */
    char errbuf[CURL_ERROR_SIZE];
    wc_httpc_addr_check *address_ok;
    void *address_arg;
    char refused[160];   /* why address_ok refused, "" when it did not */
    long redirects_left; /* further requests the prereq check lets through */
};

typedef struct form_part {
    char *name;
    char *data;
    size_t len;
    char *filename;
    char *content_type;
} form_part;

struct wc_httpc_form {
    form_part *parts;
    size_t n, cap;
};

static wc_httpc *shared_clients;

static int global_init(void)
{
    static bool done;
    if (done)
        return 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return -1;
    done = true;
    return 0;
}

static void destroy(wc_httpc *c)
{
    curl_multi_cleanup(c->multi);
    /* curl may leave sockets it never told us to forget. */
    while (c->socks) {
        httpc_sock *s = c->socks;
        c->socks = s->next;
        event_free(s->ev);
        free(s);
    }
    event_free(c->timer);
    free(c);
}

static void link_call(wc_httpc *c, wc_httpc_call *call)
{
    call->prev = NULL;
    call->next = c->calls;
    if (c->calls)
        c->calls->prev = call;
    c->calls = call;
    c->ncalls++;
}

static void unlink_call(wc_httpc_call *call)
{
    wc_httpc *c = call->c;
    if (call->prev)
        call->prev->next = call->next;
    else
        c->calls = call->next;
    if (call->next)
        call->next->prev = call->prev;
    call->prev = call->next = NULL;
    c->ncalls--;
}

static void call_free(wc_httpc_call *call)
{
    if (call->easy)
        curl_easy_cleanup(call->easy);
    curl_mime_free(call->mime);
    curl_slist_free_all(call->headers);
    free(call->buf);
    free(call);
}

/* Takes the call out of the multi handle and runs its callback once. */
static void complete(wc_httpc_call *call, CURLcode rc, const char *forced_error)
{
    wc_httpc *c = call->c;
    unlink_call(call);
    curl_multi_remove_handle(c->multi, call->easy);

    wc_httpc_resp r = {0};
    curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &r.status);
    char *ct = NULL;
    if (curl_easy_getinfo(call->easy, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK)
        r.content_type = ct;
    r.body = call->buf ? call->buf : "";
    r.body_len = call->len;
    r.maybe_sent = call->request_started;
    char why[CURL_ERROR_SIZE + 64];
    if (forced_error) {
        r.error = forced_error;
    } else if (rc != CURLE_OK) {
        if (call->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
            snprintf(why, sizeof why, "response body larger than %zu bytes", call->max);
            r.too_large = true;
        } else if (call->refused[0]) {
            snprintf(why, sizeof why, "address refused: %s", call->refused);
            r.address_refused = true;
        } else {
            snprintf(why, sizeof why, "%s",
                     call->errbuf[0] ? call->errbuf : curl_easy_strerror(rc));
        }
        r.error = why;
        r.timed_out = rc == CURLE_OPERATION_TIMEDOUT;
        r.too_many_redirects = rc == CURLE_TOO_MANY_REDIRECTS;
    }
    wc_httpc_cb *cb = call->cb;
    void *arg = call->arg;
    cb(arg, &r);
    call_free(call);
}

static void drain(wc_httpc *c)
{
    CURLMsg *m;
    int left;
    while (!c->dying && (m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        /* m is invalid once the handle is removed: read it first. */
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result;
        wc_httpc_call *call = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&call);
        if (call)
            complete(call, rc, NULL);
    }
}

static void end_dispatch(wc_httpc *c)
{
    if (--c->dispatching == 0 && c->dying)
        destroy(c);
}

static void on_sock_event(evutil_socket_t fd, short what, void *arg)
{
    httpc_sock *s = arg;
    wc_httpc *c = s->c; /* s may be freed by curl below */
    int flags =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    c->dispatching++;
    curl_multi_socket_action(c->multi, fd, flags, &running);
    drain(c);
    end_dispatch(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wc_httpc *c = arg;
    int running = 0;
    c->dispatching++;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    drain(c);
    end_dispatch(c);
}

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    wc_httpc *c = userp;
    httpc_sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            if (s->prev)
                s->prev->next = s->next;
            else
                c->socks = s->next;
            if (s->next)
                s->next->prev = s->prev;
            event_free(s->ev);
            free(s);
        }
        return 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                 ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;
        s->c = c;
        s->fd = fd;
        s->ev = event_new(c->base, fd, kind, on_sock_event, s);
        if (!s->ev) {
            free(s);
            return -1;
        }
        s->next = c->socks;
        if (c->socks)
            c->socks->prev = s;
        c->socks = s;
        curl_multi_assign(c->multi, fd, s);
    } else {
        event_del(s->ev);
        event_assign(s->ev, c->base, fd, kind, on_sock_event, s);
    }
    return event_add(s->ev, NULL) == 0 ? 0 : -1;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    wc_httpc *c = userp;
    if (timeout_ms < 0)
        return evtimer_del(c->timer) == 0 ? 0 : -1;
    /* Never call curl back from here: a zero timeout fires on the next turn. */
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(c->timer, &tv) == 0 ? 0 : -1;
}

/* Every connection curl opens for a call with address_ok passes here, after
 * DNS and before connect, redirects included. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *address)
{
    wc_httpc_call *call = clientp;
    if (purpose != CURLSOCKTYPE_IPCXN)
        return CURL_SOCKET_BAD;
    if (!call->address_ok(call->address_arg, &address->addr, call->refused, sizeof call->refused)) {
        if (!call->refused[0])
            snprintf(call->refused, sizeof call->refused, "not allowed");
        return CURL_SOCKET_BAD;
    }
    return socket(address->family, address->socktype, address->protocol);
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    wc_httpc_call *call = userdata;
    size_t n = size * nmemb;
    if (n > call->max - call->len) {
        call->too_large = true;
        return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
    }
    if (call->len + n + 1 > call->cap) {
        size_t cap = call->cap ? call->cap : 1024;
        while (cap < call->len + n + 1)
            cap *= 2;
        char *nb = realloc(call->buf, cap);
        if (!nb)
            return 0;
        call->buf = nb;
        call->cap = cap;
    }
    memcpy(call->buf + call->len, ptr, n);
    call->len += n;
    call->buf[call->len] = '\0';
    return n;
}

/* curl calls this once the connection is ready (connected or reused, TLS
 * done) and just before it writes the request: from here on the server may
 * see it. When a reused connection breaks after the request went out with
 * no answer yet, curl sends the request again on a new connection by itself
 * and calls this again: a second call is refused, so a request goes out at
 * most once per call (a POST that the server took before the break would
 * otherwise be taken twice, e.g. a WhatsApp message sent twice). The call
 * then fails as maybe sent, and its caller decides. */
static int on_prereq(void *clientp, char *primary_ip, char *local_ip, int primary_port,
                     int local_port)
{
    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    wc_httpc_call *call = clientp;
    /* Once per request, plus once per redirect followed: a second send of
     * the same request (curl retrying on a reused connection) could act
     * twice. */
    if (call->request_started && call->redirects_left-- <= 0)
        return CURL_PREREQFUNC_ABORT;
    call->request_started = true;
    return CURL_PREREQFUNC_OK;
}

wc_httpc *wc_httpc_new(struct event_base *base, long max_total_connections)
{
    if (!base || global_init() < 0)
        return NULL;
    wc_httpc *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base = base;
    c->multi = curl_multi_init();
    c->timer = evtimer_new(base, on_timer, c);
    if (!c->multi || !c->timer)
        goto error;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    if (max_total_connections > 0)
        curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, max_total_connections);
    return c;

error:
    if (c->multi)
        curl_multi_cleanup(c->multi);
    if (c->timer)
        event_free(c->timer);
    free(c);
    return NULL;
}

void wc_httpc_free(wc_httpc *c)
{
    if (!c || c->dying)
        return;
    c->dying = true;
    /* Callbacks may start requests (refused: dying) or cancel others. */
    c->dispatching++;
    while (c->calls)
        complete(c->calls, CURLE_OK, "cancelled");
    end_dispatch(c);
}

static int build_form(wc_httpc_call *call, const wc_httpc_form *f)
{
    call->mime = curl_mime_init(call->easy);
    if (!call->mime)
        return -1;
    for (size_t i = 0; i < f->n; i++) {
        const form_part *p = &f->parts[i];
        curl_mimepart *part = curl_mime_addpart(call->mime);
        if (!part || curl_mime_name(part, p->name) != CURLE_OK ||
            curl_mime_data(part, p->data, p->len) != CURLE_OK)
            return -1;
        if (p->filename && curl_mime_filename(part, p->filename) != CURLE_OK)
            return -1;
        if (p->content_type && curl_mime_type(part, p->content_type) != CURLE_OK)
            return -1;
    }
    return 0;
}

wc_httpc_call *wc_httpc_start(wc_httpc *c, const wc_httpc_req *req, wc_httpc_cb *cb, void *arg)
{
    if (!c || c->dying || !req || !req->url || !cb || req->timeout_ms <= 0)
        return NULL;
    wc_httpc_call *call = calloc(1, sizeof *call);
    if (!call)
        return NULL;
    call->c = c;
    call->cb = cb;
    call->arg = arg;
    call->max = req->max_response ? req->max_response : WC_HTTPC_MAX_RESPONSE;
    call->easy = curl_easy_init();
    if (!call->easy)
        goto error;
    CURL *e = call->easy;
    long connect_ms =
        req->connect_timeout_ms > 0 ? req->connect_timeout_ms : WC_HTTPC_CONNECT_TIMEOUT_MS;
    if (connect_ms > req->timeout_ms)
        connect_ms = req->timeout_ms;
    if (curl_easy_setopt(e, CURLOPT_URL, req->url) != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK)
        goto error;
    curl_easy_setopt(e, CURLOPT_PRIVATE, call);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
    curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
    curl_easy_setopt(e, CURLOPT_PREREQDATA, call);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, req->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)call->max);
    if (req->max_redirects > 0) {
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(e, CURLOPT_MAXREDIRS, req->max_redirects);
        call->redirects_left = req->max_redirects;
        if (curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK)
            goto error;
    }
    if (req->address_ok) {
        call->address_ok = req->address_ok;
        call->address_arg = req->address_arg;
        curl_easy_setopt(e, CURLOPT_PROXY, "");
        curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
        curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, call);
    }

    for (const char *const *h = req->headers; h && *h; h++) {
        struct curl_slist *n = curl_slist_append(call->headers, *h);
        if (!n)
            goto error;
        call->headers = n;
    }
    /* No "Expect: 100-continue" round trip before larger bodies. */
    struct curl_slist *n = curl_slist_append(call->headers, "Expect:");
    if (!n)
        goto error;
    call->headers = n;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->headers);

    if (req->username) {
        curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        if (curl_easy_setopt(e, CURLOPT_USERNAME, req->username) != CURLE_OK ||
            curl_easy_setopt(e, CURLOPT_PASSWORD, req->password ? req->password : "") != CURLE_OK)
            goto error;
    }

    const char *method = req->method;
    if (req->form) {
        if (build_form(call, req->form) < 0)
            goto error;
        curl_easy_setopt(e, CURLOPT_MIMEPOST, call->mime);
    } else if (req->body || (method && strcmp(method, "POST") == 0)) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        if (curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, req->body ? (const char *)req->body : "") !=
            CURLE_OK)
            goto error;
    } else {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    if (method && strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);

    if (curl_multi_add_handle(c->multi, e) != CURLM_OK)
        goto error;
    link_call(c, call);
    return call;

error:
    call_free(call);
    return NULL;
}

int wc_httpc_request(wc_httpc *c, const wc_httpc_req *req, wc_httpc_cb *cb, void *arg)
{
    return wc_httpc_start(c, req, cb, arg) ? 0 : -1;
}

bool wc_httpc_cancel(wc_httpc_call *call)
{
    if (!call)
        return false;
    bool maybe_sent = call->request_started;
    unlink_call(call);
    curl_multi_remove_handle(call->c->multi, call->easy);
    call_free(call);
    return maybe_sent;
}

size_t wc_httpc_inflight(const wc_httpc *c)
{
    return c ? c->ncalls : 0;
}

wc_httpc *wc_httpc_shared_acquire(struct event_base *base)
{
    for (wc_httpc *c = shared_clients; c; c = c->shared_next) {
        if (c->base == base && !c->dying) {
            c->shared_refs++;
            return c;
        }
    }
    wc_httpc *c = wc_httpc_new(base, 0);
    if (!c)
        return NULL;
    c->shared_refs = 1;
    c->shared_next = shared_clients;
    shared_clients = c;
    return c;
}

void wc_httpc_shared_release(wc_httpc *c)
{
    if (!c || c->shared_refs <= 0 || --c->shared_refs > 0)
        return;
    for (wc_httpc **pp = &shared_clients; *pp; pp = &(*pp)->shared_next) {
        if (*pp == c) {
            *pp = c->shared_next;
            break;
        }
    }
    wc_httpc_free(c);
}

wc_httpc_form *wc_httpc_form_new(void)
{
    return calloc(1, sizeof(wc_httpc_form));
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

int wc_httpc_form_add_file(wc_httpc_form *f, const char *name, const char *filename,
                           const char *content_type, const void *data, size_t len)
{
    if (!f || !name || (!data && len))
        return -1;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        form_part *np = realloc(f->parts, cap * sizeof *np);
        if (!np)
            return -1;
        f->parts = np;
        f->cap = cap;
    }
    form_part p = {0};
    p.name = strdup(name);
    p.data = malloc(len + 1);
    p.filename = dup_or_null(filename);
    p.content_type = dup_or_null(content_type);
    if (!p.name || !p.data || (filename && !p.filename) || (content_type && !p.content_type)) {
        free(p.name);
        free(p.data);
        free(p.filename);
        free(p.content_type);
        return -1;
    }
    if (len)
        memcpy(p.data, data, len);
    p.data[len] = '\0';
    p.len = len;
    f->parts[f->n++] = p;
    return 0;
}

int wc_httpc_form_add(wc_httpc_form *f, const char *name, const char *value)
{
    if (!value)
        return -1;
    return wc_httpc_form_add_file(f, name, NULL, NULL, value, strlen(value));
}

void wc_httpc_form_free(wc_httpc_form *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++) {
        free(f->parts[i].name);
        free(f->parts[i].data);
        free(f->parts[i].filename);
        free(f->parts[i].content_type);
    }
    free(f->parts);
    free(f);
}
