/* Redis key names, in one place. Every key starts with "wacast:". Keys that
 * one command touches together share a hash tag ({dev:<id>}) so the same code
 * runs on Redis Cluster. Work streams are bounded by consumption (entries are
 * XDEL'ed once acknowledged) and by back-pressure (the scheduler stops
 * publishing while the jobs stream is long; the dispatcher caps each outbox). */
#ifndef WC_KEYS_H
#define WC_KEYS_H

#include <stdio.h>

#define WC_KEY_JOBS "wacast:jobs"            /* stream: scheduler -> dispatcher */
#define WC_KEY_RESULTS "wacast:results"      /* stream: sender -> status sink */
#define WC_KEY_SENDERS "wacast:senders"      /* zset: live senders, score = heartbeat ms */
#define WC_KEY_WAKE "wacast:wake"            /* pub/sub: device id with new outbox entries */
#define WC_GROUP_DISPATCH "dispatchers"      /* consumer group on the jobs stream */
#define WC_GROUP_SINK "sinks"                /* consumer group on the results stream */
#define WC_GROUP_SEND "senders"              /* consumer group on every outbox */

/* Per device: outbox stream, lease, next earliest send time. */
static inline void wc_key_outbox(char *out, size_t n, const char *device_id)
{
    snprintf(out, n, "wacast:{dev:%s}:outbox", device_id);
}
static inline void wc_key_lease(char *out, size_t n, const char *device_id)
{
    snprintf(out, n, "wacast:{dev:%s}:lease", device_id);
}
static inline void wc_key_next(char *out, size_t n, const char *device_id)
{
    snprintf(out, n, "wacast:{dev:%s}:next", device_id);
}
/* Per message: the idempotency marker ("c:<device>:<sender>" while a send is
 * under way, "d:<Result protobuf>" once its outcome is known). */
static inline void wc_key_msg(char *out, size_t n, long long message_id)
{
    snprintf(out, n, "wacast:msg:%lld", message_id);
}

#endif
