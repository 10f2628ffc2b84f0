/* One Redis connection on the daemon's libevent loop (hiredis async +
 * redisLibeventAttach), with what hiredis 0.14 lacks for a daemon:
 * reconnection with exponential back-off, a time-out on every command, and
 * subscriptions that survive a reconnect.
 *
 * Contract:
 * - wc_redis_command*() returns 0 when the command was sent; the callback then
 *   runs exactly once, with the reply, or with reply == NULL when the command
 *   failed (connection lost, timed out, or the client was freed). The reply is
 *   owned by hiredis and freed after the callback returns: copy what you keep.
 * - When the connection is down, wc_redis_command*() returns -1 at once and
 *   does not call the callback; the caller retries later (wc_redis_ready()).
 * - A command outstanding longer than the timeout drops the connection (every
 *   pending callback gets NULL) and a reconnect starts: a stuck server never
 *   wedges the daemon.
 * - Never call wc_redis_free() from inside one of its callbacks.
 */
#ifndef WC_REDIS_H
#define WC_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct event_base;
typedef struct wc_redis wc_redis;

typedef void wc_redis_cb(wc_redis *r, redisReply *reply, void *arg);
/* Called for each message on a subscribed channel. */
typedef void wc_redis_msg_cb(wc_redis *r, const char *channel, const char *msg, size_t len,
                             void *arg);
/* Called every time the connection becomes usable (first connect and each reconnect). */
typedef void wc_redis_conn_cb(wc_redis *r, void *arg);

/* url: redis://[[user]:password@]host[:port][/db]. name is used in log lines.
 * timeout_ms bounds connecting and every command. Connecting starts at once;
 * returns NULL only for an unparsable URL (message in err). */
wc_redis *wc_redis_new(struct event_base *base, const char *url, const char *name, int timeout_ms,
                       char *err, size_t errlen);
void wc_redis_free(wc_redis *r);

void wc_redis_on_connect(wc_redis *r, wc_redis_conn_cb *cb, void *arg);
bool wc_redis_ready(const wc_redis *r);
/* Last connection error, for logs and /readyz ("" when none). */
const char *wc_redis_error(const wc_redis *r);

int wc_redis_command(wc_redis *r, wc_redis_cb *cb, void *arg, const char *fmt, ...)
    __attribute__((warn_unused_result));
int wc_redis_commandv(wc_redis *r, wc_redis_cb *cb, void *arg, int argc, const char **argv,
                      const size_t *argvlen) __attribute__((warn_unused_result));

/* Turns this connection into a subscriber of channel (use a dedicated
 * wc_redis for it). The subscription is renewed after every reconnect. */
int wc_redis_subscribe(wc_redis *r, const char *channel, wc_redis_msg_cb *cb, void *arg)
    __attribute__((warn_unused_result));

/* Commands sent and not yet answered. */
size_t wc_redis_pending(const wc_redis *r);

/* Blocking helpers for start-up and tools (not for the event loop). */
redisContext *wc_redis_connect_sync(const char *url, int timeout_ms, char *err, size_t errlen);

#endif
