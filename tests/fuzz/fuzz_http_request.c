/* Fuzzes the HTTP request path every daemon exposes: the input is written as
 * raw bytes into a TCP connection to a wc_http server on 127.0.0.1 (a free
 * port), so libevent's request parser, wc_http's routing, its built-in
 * /healthz, /readyz and /metrics, and handlers shaped like the dispatcher's
 * (webhooks: query string, body, signature header; admin: bearer token, path
 * scanning) all see it. The client half-closes after the last byte and reads
 * until the server closes. Properties:
 *   - the server closes the connection once the client is done (no request
 *     left hanging), within a few seconds;
 *   - whatever the server answers starts with a status line "HTTP/" (libevent
 *     answers in the version the request named, so not always "HTTP/1.");
 *   - a handler sees exactly Content-Length bytes of body when the request
 *     carries one plain Content-Length and no Transfer-Encoding, and is not
 *     a HEAD (libevent reads no body for HEAD: what follows the headers is
 *     taken as the next request);
 *   - the bearer check passes only for the exact configured token.
 * Leaks (a connection or request never freed) are LeakSanitizer's.
 * fuzz-max-len: 8192 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "check.h"
#include "wc_http.h"
#include "wc_webhook.h"

#define ADMIN_TOKEN "fuzz-admin-token"
#define WEBHOOK_SECRET "fuzz-webhook-secret"
/* A request the server neither answers nor drops in this long is a hang. */
#define HANG_SECONDS 5

static struct event_base *base;
static wc_http *server;
static unsigned long handled;

static bool ready(void *arg, char *why, size_t whylen)
{
    (void)arg;
    if (handled % 2)
        return true;
    snprintf(why, whylen, "redis: not connected");
    return false;
}

static void metrics(struct evbuffer *out, void *arg)
{
    (void)arg;
    wc_metric(out, "wacast_fuzz_requests_total", "counter", "Requests handled.", (double)handled);
    wc_metric_labeled(out, "wacast_fuzz_devices", "status=\"online\"", 1);
}

/* The body a handler sees against the Content-Length the request declared. */
static void check_body_length(struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) == EVHTTP_REQ_HEAD)
        return;
    struct evkeyvalq *headers = evhttp_request_get_input_headers(req);
    const char *declared = NULL;
    int count = 0;
    bool transfer_encoding = false;
    for (struct evkeyval *h = headers->tqh_first; h; h = h->next.tqe_next) {
        if (!strcasecmp(h->key, "Content-Length")) {
            declared = h->value;
            count++;
        } else if (!strcasecmp(h->key, "Transfer-Encoding")) {
            transfer_encoding = true;
        }
    }
    if (count != 1 || transfer_encoding || strspn(declared, "0123456789") != strlen(declared) ||
        !*declared || strlen(declared) > 15)
        return;
    size_t len = evbuffer_get_length(evhttp_request_get_input_buffer(req));
    FUZZ_ASSERT(len == (size_t)strtoull(declared, NULL, 10),
                "a body of %zu bytes for Content-Length %s", len, declared);
}

/* Like the dispatcher's webhook receiver: a GET verification with a query
 * string, or a signed POST. */
static void on_webhook(struct evhttp_request *req, void *arg)
{
    (void)arg;
    handled++;
    check_body_length(req);
    const char *uri = evhttp_request_get_uri(req);
    if (evhttp_request_get_command(req) == EVHTTP_REQ_GET) {
        struct evkeyvalq q;
        const char *qs = strchr(uri, '?');
        if (!qs || evhttp_parse_query_str(qs + 1, &q) < 0) {
            wc_http_reply_error(req, 400, "missing hub.mode, hub.verify_token, hub.challenge");
            return;
        }
        const char *challenge = evhttp_find_header(&q, "hub.challenge");
        const char *mode = evhttp_find_header(&q, "hub.mode");
        if (challenge && mode && !strcmp(mode, "subscribe")) {
            struct evbuffer *b = evbuffer_new();
            evbuffer_add(b, challenge, strlen(challenge));
            evhttp_send_reply(req, 200, "OK", b);
            evbuffer_free(b);
        } else {
            wc_http_reply_error(req, 403, "verification failed");
        }
        evhttp_clear_headers(&q);
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *sig =
        evhttp_find_header(evhttp_request_get_input_headers(req), "X-Hub-Signature-256");
    const unsigned char *body = evbuffer_pullup(in, -1);
    if (!sig) {
        wc_http_reply_error(req, 401, "missing X-Hub-Signature-256");
        return;
    }
    if (!wc_webhook_verify(WEBHOOK_SECRET, body, len, sig)) {
        wc_http_reply_error(req, 401, "invalid signature");
        return;
    }
    wc_webhook_events ev;
    char err[256];
    if (wc_webhook_parse(WC_WEBHOOK_AUTO, (const char *)body, len, 0, 0, &ev, err, sizeof err) <
        0) {
        wc_http_reply_error(req, 400, err);
        return;
    }
    wc_webhook_events_free(&ev);
    wc_http_reply_json(req, 200, "{\"ok\":true}");
}

/* Like the dispatcher's admin API: a bearer token, then the path scanned. */
static void on_admin(struct evhttp_request *req, void *arg)
{
    (void)arg;
    handled++;
    check_body_length(req);
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    bool ok = wc_http_bearer_ok(req, ADMIN_TOKEN);
    FUZZ_ASSERT(ok == (auth && !strcmp(auth, "Bearer " ADMIN_TOKEN)), "bearer check said %d for %s",
                ok, auth ? auth : "no header");
    if (!ok) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        wc_http_reply_error(req, 401, "missing or wrong bearer token");
        return;
    }
    const char *path = evhttp_request_get_uri(req);
    struct evhttp_uri *parsed = evhttp_uri_parse(path);
    char *decoded = parsed && evhttp_uri_get_path(parsed)
                        ? evhttp_uridecode(evhttp_uri_get_path(parsed), 0, NULL)
                        : NULL;
    char campaign[64] = "", action[32] = "";
    if (sscanf(path, "/admin/campaigns/%63[^/]/%31[a-z-]", campaign, action) == 2)
        wc_http_reply_json(req, 202, "{\"queued\":true}");
    else
        wc_http_reply_error(req, 404, decoded ? decoded : "not found");
    free(decoded);
    if (parsed)
        evhttp_uri_free(parsed);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[256];
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    FUZZ_ASSERT(base != NULL, "event_base_new failed");
    server = wc_http_new(base, "127.0.0.1", 0, ready, metrics, NULL, err, sizeof err);
    FUZZ_ASSERT(server != NULL, "wc_http_new: %s", err);
    FUZZ_ASSERT(wc_http_route_prefix(server, "/webhooks/", on_webhook, NULL) == 0 &&
                    wc_http_route_prefix(server, "/admin/", on_admin, NULL) == 0,
                "routes refused");
    return 0;
}

typedef struct client {
    int fd;
    const uint8_t *data;
    size_t size, sent;
    char head[8]; /* the first bytes of the answer */
    size_t received;
    bool connected, closed, hung;
    struct event *write_ev, *read_ev, *timer;
} client;

static void on_client_write(evutil_socket_t fd, short what, void *arg)
{
    client *c = arg;
    (void)what;
    if (!c->connected) {
        int error = 0;
        socklen_t len = sizeof error;
        FUZZ_ASSERT(getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) == 0 && error == 0,
                    "connect: %s", strerror(error));
        c->connected = true;
    }
    while (c->sent < c->size) {
        ssize_t n = send(fd, c->data + c->sent, c->size - c->sent, MSG_NOSIGNAL);
        if (n > 0) {
            c->sent += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        break; /* the server closed first: nothing more to say */
    }
    shutdown(fd, SHUT_WR);
    event_del(c->write_ev);
}

static void on_client_read(evutil_socket_t fd, short what, void *arg)
{
    client *c = arg;
    (void)what;
    char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            for (size_t i = 0; i < (size_t)n && c->received + i < sizeof c->head; i++)
                c->head[c->received + i] = buf[i];
            c->received += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        c->closed = true; /* EOF, or reset by the server */
        event_base_loopbreak(base);
        return;
    }
}

static void on_hang(evutil_socket_t fd, short what, void *arg)
{
    client *c = arg;
    (void)fd;
    (void)what;
    c->hung = true;
    event_base_loopbreak(base);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    client c = {.data = data, .size = size};
    c.fd = socket(AF_INET, SOCK_STREAM, 0);
    FUZZ_ASSERT(c.fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_port = htons((uint16_t)wc_http_port(server))};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Non-blocking from the start: libFuzzer's SIGALRM would interrupt a
     * blocking connect(). Whether it worked is known at the first write. */
    evutil_make_socket_nonblocking(c.fd);
    int rc = connect(c.fd, (struct sockaddr *)&sin, sizeof sin);
    FUZZ_ASSERT(rc == 0 || errno == EINPROGRESS || errno == EINTR, "connect: %s", strerror(errno));

    c.write_ev = event_new(base, c.fd, EV_WRITE | EV_PERSIST, on_client_write, &c);
    c.read_ev = event_new(base, c.fd, EV_READ | EV_PERSIST, on_client_read, &c);
    c.timer = evtimer_new(base, on_hang, &c);
    struct timeval hang = {HANG_SECONDS, 0};
    event_add(c.write_ev, NULL);
    event_add(c.read_ev, NULL);
    evtimer_add(c.timer, &hang);
    while (!c.closed && !c.hung)
        event_base_loop(base, EVLOOP_ONCE);

    event_free(c.write_ev);
    event_free(c.read_ev);
    event_free(c.timer);
    close(c.fd);
    /* Let the server side finish freeing what the closed connection held. */
    for (int i = 0; i < 4; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);

    FUZZ_ASSERT(!c.hung,
                "the server kept the connection open %d s after the request (%zu of %zu "
                "bytes sent, %zu received)",
                HANG_SECONDS, c.sent, c.size, c.received);
    if (c.received > 0)
        FUZZ_ASSERT(c.received >= 5 && !memcmp(c.head, "HTTP/", 5),
                    "an answer that starts with \"%.*s\"", (int)(c.received < 8 ? c.received : 8),
                    c.head);
    return 0;
}
