/* Redis key names, in one place. Every key starts with "wacast:". Keys that
 * one command touches together share a hash tag ({dev:<id>}) so the same code
 * runs on Redis Cluster. Work streams are bounded by consumption (entries are
 * XDEL'ed once acknowledged) and by back-pressure (the scheduler stops
 * publishing while the jobs stream is long; the dispatcher caps each lane). */
#ifndef WC_KEYS_H
#define WC_KEYS_H

#include <stdio.h>

#define WC_KEY_JOBS "wacast:jobs"       /* stream: scheduler -> dispatcher */
#define WC_KEY_RESULTS "wacast:results" /* stream: sender -> status sink */
/* stream: results PostgreSQL refused (fields r, message, sqlstate, error), trimmed */
#define WC_KEY_RESULTS_DEAD "wacast:results:dead"
#define WC_KEY_SENDERS "wacast:senders" /* zset: live senders, score = heartbeat ms */
#define WC_KEY_WAKE "wacast:wake"       /* pub/sub: "dev[+],dev[+],..." ("+": a lane new to it) */
#define WC_GROUP_DISPATCH "dispatchers" /* consumer group on the jobs stream */
#define WC_GROUP_SINK "sinks"           /* consumer group on the results stream */
#define WC_GROUP_SEND "senders"         /* consumer group on every lane */

/* Per device: its lanes (one outbox stream per campaign, so a device takes
 * its campaigns in turn), the set of its lanes, messages waiting for a time
 * (the "later" sorted set), the lease, the next earliest send time. */
static inline void wc_key_lane(char *out, size_t n, const char *device_id, const char *campaign_id)
{
    snprintf(out, n, "wacast:{dev:%s}:q:%s", device_id, campaign_id);
}
/* The lane key without the campaign (scripts append it). */
static inline void wc_key_lane_prefix(char *out, size_t n, const char *device_id)
{
    snprintf(out, n, "wacast:{dev:%s}:q:", device_id);
}
static inline void wc_key_lanes(char *out, size_t n, const char *device_id)
{
    snprintf(out, n, "wacast:{dev:%s}:lanes", device_id);
}
static inline void wc_key_later(char *out, size_t n, const char *device_id)
{
    snprintf(out, n, "wacast:{dev:%s}:later", device_id);
}
/* The last message to a recipient, while the device's recipient gap runs. */
static inline void wc_key_recipient(char *out, size_t n, const char *device_id, const char *phone)
{
    snprintf(out, n, "wacast:{dev:%s}:to:%s", device_id, phone);
}
static inline void wc_key_lease(char *out, size_t n, const char *device_id)
{
    snprintf(out, n, "wacast:{dev:%s}:lease", device_id);
}
static inline void wc_key_next(char *out, size_t n, const char *device_id)
{
    snprintf(out, n, "wacast:{dev:%s}:next", device_id);
}
/* Sends of a device on one of its local days (daily cap, warm-up). */
static inline void wc_key_day(char *out, size_t n, const char *device_id, const char *day)
{
    snprintf(out, n, "wacast:{dev:%s}:sent:%s", device_id, day);
}
/* Per message: the idempotency marker, one key that moves forward only:
 *   "r:<device>"           routed to that device's outbox (dispatcher)
 *   "c:<device>:<sender>"  a send is under way (sender, just before sending)
 *   "d:<Result protobuf>"  the outcome is known (sender, or a provider's
 *                          status callback)
 * WC_LUA_MARK sets it unless its current state is one of the blocking
 * prefixes: routing and claiming are blocked by "c" and "d", a callback's
 * outcome only by "d". It returns "OK" when set, else the current value. */
static inline void wc_key_msg(char *out, size_t n, long long message_id)
{
    snprintf(out, n, "wacast:msg:%lld", message_id);
}

/* The script that sets a marker: lib/lua/mark.lua (WC_LUA_MARK). */
#include "wc_lua.h"

/* Messages of a paused campaign wait here (a stream per campaign) until it
 * resumes; the dispatcher moves them back to the jobs stream. */
static inline void wc_key_paused(char *out, size_t n, const char *campaign_id)
{
    snprintf(out, n, "wacast:paused:%s", campaign_id);
}

#define WC_KEY_DEAD "wacast:dead"                   /* stream: messages that ran out of attempts */
#define WC_KEY_SIM_CALLBACKS "wacast:sim:callbacks" /* zset: the sim's pending status webhooks */
/* string: the Cloud API media id of a prepared image uploaded to a phone
 * number id (printf: phone number id, sha256), with a TTL below Meta's 30 days */
#define WC_KEY_CA_MEDIA_FMT "wacast:cloudapi:media:%s:%s"
/* string with a TTL: a sender is uploading that image to that number (the
 * others wait for the id instead of uploading it too) */
#define WC_KEY_CA_MEDIA_LOCK_FMT "wacast:cloudapi:media:%s:%s:uploading"

#endif
