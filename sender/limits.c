/* What keeps a device within limits: its daily cap (from daily_limit and
 * the warm-up schedule, counted per local day of the device, shared in Redis
 * by whichever sender holds it), rests (the cap reached, or the circuit
 * breaker open after consecutive transient failures, with a single probe
 * when the rest ends), and the 0-100 health score from recent sends.
 * May touch: the device's limit fields; the outbox only via handback_outbox. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <sodium.h>

#include "sender.h"
#include "sender_lua.h"

/* Health score from what recent sends and connections did: the success rate
 * of sends (transient failures count; a message's own permanent failure does
 * not), a penalty for slow sends, and one for recent disconnects. */
void health_update(device *dv)
{
    double score = 100.0 * dv->ok_avg;
    if (dv->latency_ms > 2000)
        score -= (dv->latency_ms - 2000) / 200.0 > 30 ? 30 : (dv->latency_ms - 2000) / 200.0;
    score -= 10.0 * dv->disconnects;
    if (score < 0)
        score = 0;
    if (score > 100)
        score = 100;
    dv->health = (uint8_t)(score + 0.5);
    int diff = (int)dv->health - (int)dv->health_written;
    if (diff >= 3 || diff <= -3 ||
        (dv->health != dv->health_written && (dv->health == 100 || dv->health == 0)))
        mark_dirty(dv);
}

void health_send(device *dv, bool ok)
{
    const float a = 0.2f;
    dv->ok_avg = dv->ok_avg * (1 - a) + (ok ? a : 0);
    if (dv->send_started_us) {
        float ms = (float)(wc_mono_us() - dv->send_started_us) / 1000.0f;
        dv->latency_ms = dv->latency_ms * (1 - a) + ms * a;
    }
    health_update(dv);
}

static void on_day_count(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    device *dv = arg;
    if (!reply_ok(dv->f, reply))
        return;
    uint32_t n = reply->type == REDIS_REPLY_STRING ? (uint32_t)strtoul(reply->str, NULL, 10) : 0;
    if (n > dv->sent_today) {
        dv->sent_today = n;
        mark_dirty(dv);
    }
}

/* Today's sends so far, as counted by every holder of the device. */
void load_day_count(device *dv)
{
    char key[128];
    wc_key_day(key, sizeof key, dv->id, dv->day);
    if (wc_redis_command(dv->f->d.redis, on_day_count, dv, "GET %s", key) < 0)
        dv->f->m.redis_errors++;
}

/* A send counts against the device's day, shared by whichever sender holds
 * it: in memory now, in Redis with the report that follows. */
void count_send(device *dv)
{
    dv->sent_today++;
    dv->count_in_report = dv->day[0] != '\0';
    if (dv->cap >= 0)
        mark_dirty(dv);
}

static void format_local_ms(char *out, size_t n, int64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The device stops sending until until_ms: its row says why and when it
 * comes back (the router gives it nothing meanwhile), and what its outbox
 * holds goes back to the router for the user's other devices. */
static void enter_rest(device *dv, int kind, int64_t until_ms, const char *reason)
{
    dv->rest = (uint8_t)kind;
    dv->rest_started = true;
    dv->rest_until_ms = until_ms;
    set_row(dv, "online", reason);
    mark_dirty(dv);
    wc_info("device %s rests: %s", dv->id, reason);
    handback_outbox(dv);
}

void leave_rest(device *dv, const char *why)
{
    if (!dv->rest)
        return;
    wc_info("device %s: rest over (%s)", dv->id, why);
    dv->rest = REST_NONE;
    dv->rest_started = false;
    dv->rest_until_ms = 0;
    set_row(dv, dv->online ? "online" : "offline", NULL);
    mark_dirty(dv);
    if (dv->state == DEV_RESTING) {
        evtimer_del(dv->timer);
        dv->pel_mode = true;
        set_state(dv, DEV_IDLE);
        device_step(dv);
    }
}

/* Opens the breaker after consecutive transient failures (or a failed probe):
 * rests grow from WACAST_BREAKER_REST_MS, doubling, up to the max. */
void open_breaker(device *dv, const wc_send_result *sr)
{
    fleet *f = dv->f;
    if (dv->breaker_rest_ms == 0)
        dv->breaker_rest_ms = (uint32_t)f->cfg.breaker_rest_ms;
    else if (dv->probing)
        dv->breaker_rest_ms = dv->breaker_rest_ms * 2 > (uint32_t)f->cfg.breaker_rest_max_ms
                                  ? (uint32_t)f->cfg.breaker_rest_max_ms
                                  : dv->breaker_rest_ms * 2;
    f->m.breaker_opened++;
    int64_t until = wc_now_us() / 1000 + dv->breaker_rest_ms;
    char at[32], reason[512];
    format_local_ms(at, sizeof at, until);
    snprintf(reason, sizeof reason,
             "circuit open after %u consecutive failure(s), last %s: %.200s; probing at %s",
             dv->failures, sr->error_code, sr->error_message, at);
    dv->probing = false;
    /* A rest starts at the next step (device_step), once the message in hand is settled. */
    dv->rest = REST_BREAKER;
    dv->rest_started = false;
    dv->rest_until_ms = until;
    set_row(dv, "online", reason);
    mark_dirty(dv);
    wc_warn("device %s: %s", dv->id, reason);
}

/* Before each read: is the device resting? Starts, keeps or ends a rest. */
bool resting(device *dv)
{
    fleet *f = dv->f;
    int64_t now_ms = wc_now_us() / 1000;
    if (!dv->rest && dv->cap >= 0 && dv->sent_today >= (uint32_t)dv->cap) {
        /* Today's cap is reached: rest until the device's next local midnight
         * (or until the new day is read, when that midnight has passed). */
        int64_t until = dv->day_end_ms > now_ms ? dv->day_end_ms : now_ms + f->cfg.refresh_ms;
        char at[32], reason[256];
        format_local_ms(at, sizeof at, until);
        snprintf(reason, sizeof reason, "daily limit of %d reached (%u sent on %s); resumes at %s",
                 dv->cap, dv->sent_today, dv->day, at);
        f->m.daily_cap_rests++;
        enter_rest(dv, REST_CAP, until, reason);
    } else if (dv->rest && !dv->rest_started && dv->rest_until_ms > now_ms) {
        /* The breaker opened on the last send: start the rest now. */
        char *reason = dv->row_reason ? strdup(dv->row_reason) : NULL;
        enter_rest(dv, dv->rest, dv->rest_until_ms, reason);
        free(reason);
    }
    if (dv->rest && dv->rest_until_ms <= now_ms) {
        if (dv->rest == REST_BREAKER) {
            /* Half open: the next send decides. Routable again (its rest is over). */
            dv->rest = REST_NONE;
            dv->rest_started = false;
            dv->probing = true;
            mark_dirty(dv);
            wc_info("device %s: breaker half open; the next send is a probe", dv->id);
        } else if (dv->cap < 0 || dv->sent_today < (uint32_t)dv->cap) {
            leave_rest(dv, "new day");
        } else {
            dv->rest_until_ms = now_ms + f->cfg.refresh_ms;
        }
    }
    if (!dv->rest)
        return false;
    set_state(dv, DEV_RESTING);
    int64_t wait_ms = dv->rest_until_ms - now_ms;
    arm_timer(dv, (wait_ms > 60000 ? 60000 : wait_ms) * 1000);
    return true;
}
