/* wacast-scheduler: turns due campaigns into messages on the jobs stream.
 *
 * A campaign is claimed with FOR UPDATE SKIP LOCKED, so any number of
 * schedulers can run; the claim is kept alive by touching claimed_at on every
 * batch, and a claim older than WACAST_CLAIM_STALE_S is taken over by another
 * scheduler (its owner died). Expansion is a state machine over batches of
 * leads: select a page of eligible leads, normalise phones and render the
 * template in C, insert the messages as 'pending' in one statement (the
 * UNIQUE constraints make a re-run harmless); then the campaign moves to
 * `processing`.
 *
 * The feeder publishes pending messages as room opens: at most
 * WACAST_CAMPAIGN_INFLIGHT per campaign queued and not done, only while the
 * campaign's user has a healthy device and the campaign is inside its sending
 * window. Postgres is the source of truth and holds the backlog; Redis is the
 * conveyor belt and holds a bounded amount per campaign. The reconciler
 * republishes queued messages whose marker is gone, and the idempotency
 * marker on the sender side keeps a republished message from being sent
 * twice. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>
#include <sodium.h>

#include "wacast.pb-c.h"
#include "wc_daemon.h"
#include "wc_epoch.h"
#include "wc_keys.h"
#include "wc_log.h"
#include "wc_map.h"
#include "wc_phone.h"
#include "wc_publish.h"
#include "wc_sql.h"
#include "wc_tpl.h"

typedef struct scheduler_cfg {
    wc_common_cfg c;
    long poll_ms;
    long batch;
    long jobs_max;
    long claim_stale_s;
    long max_lateness_s;
    char *default_country;
    long reconcile_ms;
    long reconcile_after_s;
    long max_message_bytes;
    long inflight;
    long feed_ms;
    long feed_batch;
    long online_grace_ms;
} scheduler_cfg;

static const wc_cfg_entry cfg_table[] = {
    WC_CFG_DAEMON(wc_common_cfg),
    {"WACAST_POLL_MS", WC_CFG_INT, "500", "how often due campaigns are looked for",
     offsetof(scheduler_cfg, poll_ms), 10, 600000, false},
    {"WACAST_BATCH", WC_CFG_INT, "2000", "leads expanded per statement",
     offsetof(scheduler_cfg, batch), 1, 100000, false},
    {"WACAST_JOBS_MAX", WC_CFG_INT, "200000",
     "publishing pauses while the jobs stream holds more entries than this",
     offsetof(scheduler_cfg, jobs_max), 100, 100000000, false},
    {"WACAST_CLAIM_STALE_S", WC_CFG_INT, "60", "a campaign claim untouched this long is taken over",
     offsetof(scheduler_cfg, claim_stale_s), 5, 86400, false},
    {"WACAST_MAX_LATENESS_S", WC_CFG_INT, "604800",
     "a campaign due longer ago than this fails instead of sending (0: no limit)",
     offsetof(scheduler_cfg, max_lateness_s), 0, 315360000, false},
    {"WACAST_DEFAULT_COUNTRY", WC_CFG_STR, "60",
     "country calling code for phone numbers written without one",
     offsetof(scheduler_cfg, default_country), 1, 0, false},
    {"WACAST_RECONCILE_MS", WC_CFG_INT, "10000", "how often stuck messages are looked for",
     offsetof(scheduler_cfg, reconcile_ms), 100, 3600000, false},
    {"WACAST_RECONCILE_AFTER_S", WC_CFG_INT, "120",
     "a message pending this long in a running campaign is published again",
     offsetof(scheduler_cfg, reconcile_after_s), 1, 86400, false},
    {"WACAST_MAX_MESSAGE_BYTES", WC_CFG_INT, "4096", "longest rendered message",
     offsetof(scheduler_cfg, max_message_bytes), 16, 65536, false},
    {"WACAST_CAMPAIGN_INFLIGHT", WC_CFG_INT, "10000",
     "messages of one campaign published and not yet done, at most (the rest wait in PostgreSQL)",
     offsetof(scheduler_cfg, inflight), 1, 10000000, false},
    {"WACAST_FEED_MS", WC_CFG_INT, "100", "how often campaigns' waiting messages are published",
     offsetof(scheduler_cfg, feed_ms), 10, 60000, false},
    {"WACAST_FEED_BATCH", WC_CFG_INT, "5000", "messages published per feeder round, at most",
     offsetof(scheduler_cfg, feed_batch), 1, 1000000, false},
    {"WACAST_ONLINE_GRACE_MS", WC_CFG_INT, "30000",
     "a device counts as online while its sender's heartbeat is younger than this",
     offsetof(scheduler_cfg, online_grace_ms), 1000, 3600000, false},
};

#define SCHEDULER_METRICS(X)                                                                       \
    X(campaigns_claimed, "campaigns claimed for expansion")                                        \
    X(campaigns_failed, "campaigns failed at validation")                                          \
    X(campaigns_empty, "campaigns finished with no eligible lead")                                 \
    X(messages_created, "message rows inserted")                                                   \
    X(messages_skipped, "messages skipped at expansion (invalid phone, render error)")             \
    X(messages_published, "messages published to the jobs stream")                                 \
    X(messages_republished, "messages published again by the reconciler")                          \
    X(backpressure_waits, "times publishing waited for the jobs stream to drain")                  \
    X(feed_rounds, "feeder rounds that published messages")                                        \
    X(redis_errors, "Redis commands that failed")                                                  \
    X(pg_errors, "PostgreSQL statements that failed")

typedef struct scheduler_metrics {
#define X(name, help) uint64_t name;
    SCHEDULER_METRICS(X)
#undef X
} scheduler_metrics;

typedef enum {
    EXP_IDLE,     /* nothing claimed */
    EXP_CLAIMING, /* claim statement in flight */
    EXP_VARS,     /* reading the lead attribute names the template may use */
    EXP_SELECT,   /* reading a page of leads */
    EXP_INSERT,   /* inserting a page of messages */
    EXP_FINISH,   /* moving the campaign to processing */
} exp_state;

static const char *exp_state_names[] = {"idle", "claiming", "vars", "select", "insert", "finish"};

typedef struct campaign {
    char id[40], user_id[40];
    char *message, *media_url, *target_status, *niche, *time_zone;
    bool niche_null;
    uint32_t min_delay_ms, max_delay_ms;
    long limit; /* -1: none */
    int hour;
    wc_tpl *tpl;
    char cursor[40]; /* last lead id expanded */
    long taken;      /* recipients counted towards limit */
    bool leads_done;
    wc_map phones; /* normalised phones already given a message in this run */
} campaign;

typedef struct scheduler {
    wc_daemon d;
    scheduler_cfg cfg;
    scheduler_metrics m;
    exp_state state;
    campaign *c;
    bool reconciling; /* a reconciler query is in flight */
    int reconcile_now; /* rounds left that take every queued row (Redis lost data) */
    wc_epoch *epoch;
    bool feeding;     /* a feeder round is in flight */
    wc_map fed;       /* campaign id -> last message id fed (where the next scan starts) */
    int64_t fed_reset_us;
    bool waiting_busy;
    struct event *poll_timer, *reconcile_timer, *retry_timer, *claim_now, *feed_timer,
        *waiting_timer;
    uint64_t rng;
} scheduler;

static void exp_step(scheduler *s);

static void set_state(scheduler *s, exp_state st)
{
    wc_debug("expansion: %s -> %s", exp_state_names[s->state], exp_state_names[st]);
    s->state = st;
}

static void free_campaign(campaign *c)
{
    if (!c)
        return;
    free(c->message);
    free(c->media_url);
    free(c->target_status);
    free(c->niche);
    free(c->time_zone);
    wc_tpl_free(c->tpl);
    wc_map_free(&c->phones);
    free(c);
}

static void end_expansion(scheduler *s)
{
    bool had = s->c != NULL;
    free_campaign(s->c);
    s->c = NULL;
    set_state(s, EXP_IDLE);
    /* Another campaign may be due already: look now, not at the next poll. */
    if (had && !s->d.stopping) {
        struct timeval now = {0, 0};
        evtimer_add(s->claim_now, &now);
    }
}

/* Something failed (Redis or PostgreSQL away): drop the claim's work in hand
 * and let the claim go stale; this or another scheduler resumes it. */
static void abandon(scheduler *s, const char *why)
{
    wc_warn("campaign %s: expansion interrupted (%s); it will resume", s->c ? s->c->id : "?", why);
    end_expansion(s);
}

static void append_array_text(struct evbuffer *b, const char *v, bool first)
{
    if (!first)
        evbuffer_add(b, ",", 1);
    if (!v) {
        evbuffer_add(b, "NULL", 4);
        return;
    }
    evbuffer_add(b, "\"", 1);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            evbuffer_add(b, "\\", 1);
        evbuffer_add(b, p, 1);
    }
    evbuffer_add(b, "\"", 1);
}

/* ---- claim ---------------------------------------------------------------------------------- */

static void on_failed(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("failing campaign: %s", err);
    }
}

static void fail_campaign(scheduler *s, const char *reason)
{
    s->m.campaigns_failed++;
    wc_warn("campaign %s failed: %s", s->c->id, reason);
    const char *params[] = {s->c->id, reason, s->cfg.c.instance_id};
    if (wc_pg_query(
            s->d.pg,
            "UPDATE campaigns SET status = 'failed', status_reason = $2, finished_at = now() "
            "WHERE id = $1 AND claimed_by = $3 AND status = 'triggered'",
            3, params, on_failed, s) < 0)
        s->m.pg_errors++;
    end_expansion(s);
}

static char *dup_value(PGresult *res, int col)
{
    char *v = strdup(PQgetvalue(res, 0, col));
    if (!v)
        abort();
    return v;
}

static void on_claimed(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("claiming campaigns: %s", err);
        set_state(s, EXP_IDLE);
        return;
    }
    if (PQntuples(res) == 0) {
        set_state(s, EXP_IDLE);
        return;
    }
    campaign *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    s->c = c;
    wc_map_init(&c->phones);
    snprintf(c->id, sizeof c->id, "%s", PQgetvalue(res, 0, 0));
    snprintf(c->user_id, sizeof c->user_id, "%s", PQgetvalue(res, 0, 1));
    c->message = dup_value(res, 2);
    c->media_url = dup_value(res, 3);
    c->target_status = dup_value(res, 4);
    c->niche = dup_value(res, 5);
    c->niche_null = PQgetisnull(res, 0, 5);
    bool min_null = PQgetisnull(res, 0, 6), max_null = PQgetisnull(res, 0, 7);
    double min_ms = min_null ? 0 : strtod(PQgetvalue(res, 0, 6), NULL);
    double max_ms = max_null ? 0 : strtod(PQgetvalue(res, 0, 7), NULL);
    c->limit = PQgetisnull(res, 0, 8) ? -1 : strtol(PQgetvalue(res, 0, 8), NULL, 10);
    c->time_zone = dup_value(res, 9);
    bool tz_ok = PQgetvalue(res, 0, 10)[0] == 't';
    long late_s = strtol(PQgetvalue(res, 0, 11), NULL, 10);
    c->hour = (int)strtol(PQgetvalue(res, 0, 12), NULL, 10);
    bool first_claim = PQgetvalue(res, 0, 13)[0] == 'p';
    snprintf(c->cursor, sizeof c->cursor, "00000000-0000-0000-0000-000000000000");
    s->m.campaigns_claimed++;
    wc_info("campaign %s claimed%s", c->id, first_claim ? "" : " (resuming a stale claim)");

    char reason[512];
    if (!tz_ok) {
        snprintf(reason, sizeof reason, "unknown time zone '%s'", c->time_zone);
        fail_campaign(s, reason);
        return;
    }
    if (strspn(c->message, " \t\r\n") == strlen(c->message)) {
        fail_campaign(s, "empty message");
        return;
    }
    if (strcmp(c->target_status, "prospect") && strcmp(c->target_status, "customer") &&
        strcmp(c->target_status, "all")) {
        snprintf(reason, sizeof reason, "unknown target_status '%s' (prospect, customer or all)",
                 c->target_status);
        fail_campaign(s, reason);
        return;
    }
    if (min_null != max_null) {
        fail_campaign(s, "min_delay_seconds and max_delay_seconds must be set together");
        return;
    }
    if (min_ms < 0 || max_ms < 0) {
        fail_campaign(s, "delays must not be negative");
        return;
    }
    if (min_ms > max_ms) {
        fail_campaign(s, "min_delay_seconds is greater than max_delay_seconds");
        return;
    }
    if (max_ms > 86400000.0) {
        fail_campaign(s, "max_delay_seconds is longer than a day");
        return;
    }
    c->min_delay_ms = (uint32_t)min_ms;
    c->max_delay_ms = (uint32_t)max_ms;
    if (c->limit < -1 || (c->limit < 0 && !PQgetisnull(res, 0, 8))) {
        fail_campaign(s, "limit must not be negative");
        return;
    }
    if (first_claim && s->cfg.max_lateness_s > 0 && late_s > s->cfg.max_lateness_s) {
        snprintf(reason, sizeof reason,
                 "scheduled %ld hours ago, beyond WACAST_MAX_LATENESS_S (%ld s); not sent late",
                 late_s / 3600, s->cfg.max_lateness_s);
        fail_campaign(s, reason);
        return;
    }
    set_state(s, EXP_VARS);
    exp_step(s);
}

static void claim(scheduler *s)
{
    if (s->state != EXP_IDLE || s->d.stopping)
        return;
    char stale[32];
    snprintf(stale, sizeof stale, "%ld", s->cfg.claim_stale_s);
    const char *params[] = {s->cfg.c.instance_id, stale};
    static const char *sql =
        "WITH due AS ("
        " SELECT id, status AS old_status FROM campaigns"
        " WHERE (status = 'pending' AND due_at <= now())"
        "    OR (status = 'triggered'"
        "        AND coalesce(claimed_at, '-infinity') < now() - make_interval(secs => $2::float8))"
        " ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " UPDATE campaigns c SET status = 'triggered', triggered_at = coalesce(c.triggered_at, "
        "now()),"
        " claimed_by = $1, claimed_at = now()"
        " FROM due WHERE c.id = due.id"
        " RETURNING c.id, c.user_id, c.message, coalesce(c.media_url, ''), c.target_status, "
        "c.niche,"
        " c.min_delay_seconds * 1000, c.max_delay_seconds * 1000, c.\"limit\", c.time_zone,"
        " wacast_valid_time_zone(c.time_zone), extract(epoch FROM now() - c.due_at)::bigint,"
        " CASE WHEN wacast_valid_time_zone(c.time_zone)"
        "  THEN extract(hour FROM now() AT TIME ZONE c.time_zone)::int ELSE 0 END,"
        " due.old_status";
    if (wc_pg_query(s->d.pg, sql, 2, params, on_claimed, s) == 0)
        set_state(s, EXP_CLAIMING);
    else
        s->m.pg_errors++;
}

/* ---- expansion --------------------------------------------------------------------------------
 */

static void on_vars(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!s->c)
        return; /* the expansion ended under us (shutdown) */
    campaign *c = s->c;
    if (!res) {
        s->m.pg_errors++;
        abandon(s, err);
        return;
    }
    int n = PQntuples(res);
    const char **vars = calloc((size_t)n + 4, sizeof *vars);
    if (!vars)
        abort();
    size_t nv = 0;
    vars[nv++] = "name";
    vars[nv++] = "phone";
    vars[nv++] = "niche";
    vars[nv++] = "target_status";
    for (int i = 0; i < n; i++)
        vars[nv++] = PQgetvalue(res, i, 0);
    char err2[256];
    c->tpl = wc_tpl_compile(c->message, vars, nv, err2, sizeof err2);
    free(vars);
    if (!c->tpl) {
        char reason[300];
        snprintf(reason, sizeof reason, "template error: %s", err2);
        fail_campaign(s, reason);
        return;
    }
    set_state(s, EXP_SELECT);
    exp_step(s);
}

static const char *phone_reason_text(const char *why)
{
    static const struct {
        const char *code, *text;
    } texts[] = {
        {"empty", "no digits"},
        {"invalid_characters", "contains letters or symbols"},
        {"invalid_country_code", "no valid country code"},
        {"too_short", "too few digits"},
        {"too_long", "too many digits"},
        {"invalid_default_country", "WACAST_DEFAULT_COUNTRY is not a country code"},
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (why && !strcmp(why, texts[i].code))
            return texts[i].text;
    return "not a phone number";
}

/* Template variables for one lead. */
typedef struct lead_vars {
    const char *name, *phone, *niche, *target_status;
    json_t *attrs;
    char num[64];
} lead_vars;

static const char *lookup(void *ctx, const char *name, size_t namelen)
{
    lead_vars *v = ctx;
    (void)namelen;
    if (!strcmp(name, "name"))
        return v->name;
    if (!strcmp(name, "phone"))
        return v->phone;
    if (!strcmp(name, "niche"))
        return v->niche;
    if (!strcmp(name, "target_status"))
        return v->target_status;
    json_t *a = v->attrs ? json_object_get(v->attrs, name) : NULL;
    if (!a || json_is_null(a))
        return NULL;
    if (json_is_string(a))
        return json_string_value(a);
    if (json_is_integer(a)) {
        snprintf(v->num, sizeof v->num, "%" JSON_INTEGER_FORMAT, json_integer_value(a));
        return v->num;
    }
    if (json_is_real(a)) {
        snprintf(v->num, sizeof v->num, "%g", json_real_value(a));
        return v->num;
    }
    if (json_is_boolean(a))
        return json_is_true(a) ? "true" : "false";
    return NULL;
}

typedef struct insert_arrays {
    struct evbuffer *lead, *phone, *name, *content, *status, *code, *message;
    size_t n;
} insert_arrays;

static void on_inserted(wc_pg *pg, PGresult *res, const char *err, void *arg);

static void on_leads(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!s->c)
        return; /* the expansion ended under us (shutdown) */
    if (!s->c)
        return; /* the expansion ended under us (shutdown) */
    campaign *c = s->c;
    if (!res) {
        s->m.pg_errors++;
        abandon(s, err);
        return;
    }
    int n = PQntuples(res);
    if (n < s->cfg.batch)
        c->leads_done = true;
    if (n == 0) {
        set_state(s, EXP_FINISH);
        exp_step(s);
        return;
    }
    insert_arrays a;
    struct evbuffer **bufs[] = {&a.lead,   &a.phone, &a.name,   &a.content,
                                &a.status, &a.code,  &a.message};
    for (size_t i = 0; i < 7; i++) {
        *bufs[i] = evbuffer_new();
        evbuffer_add(*bufs[i], "{", 1);
    }
    a.n = 0;
    wc_buf out = {0};
    for (int r = 0; r < n; r++) {
        const char *lead_id = PQgetvalue(res, r, 0);
        snprintf(c->cursor, sizeof c->cursor, "%s", lead_id);
        if (c->limit >= 0 && c->taken >= c->limit) {
            c->leads_done = true;
            break;
        }
        const char *raw_phone = PQgetvalue(res, r, 2);
        char phone[WC_PHONE_E164_MAX];
        const char *why = NULL;
        const char *status = "pending";
        char code[64] = "", message[512] = "";
        const char *content = "";
        const char *recipient = phone;
        if (wc_phone_normalize(raw_phone, s->cfg.default_country, phone, sizeof phone, &why) < 0) {
            status = "skipped";
            snprintf(code, sizeof code, "invalid_phone");
            snprintf(message, sizeof message, "invalid phone number '%.100s': %s (%s)", raw_phone,
                     phone_reason_text(why), why);
            recipient = raw_phone;
        } else if (wc_map_get(&c->phones, phone)) {
            /* The same person under another spelling of the number: one message. */
            continue;
        } else {
            if (wc_map_put(&c->phones, phone, (void *)1) < 0)
                abort();
            lead_vars v = {.name = PQgetvalue(res, r, 1),
                           .phone = phone,
                           .niche = PQgetvalue(res, r, 4),
                           .target_status = PQgetvalue(res, r, 5)};
            const char *attrs = PQgetvalue(res, r, 6);
            if (strcmp(attrs, "{}") != 0)
                v.attrs = json_loads(attrs, 0, NULL);
            char rerr[256];
            if (wc_tpl_render(c->tpl, lookup, &v, &s->rng, c->hour,
                              (size_t)s->cfg.max_message_bytes, &out, rerr, sizeof rerr) < 0) {
                status = "skipped";
                snprintf(code, sizeof code, "render_failed");
                snprintf(message, sizeof message, "%s", rerr);
            } else if (strspn(out.data, " \t\r\n") == out.len) {
                status = "skipped";
                snprintf(code, sizeof code, "empty_message");
                snprintf(message, sizeof message, "the template rendered to an empty message");
            } else {
                content = out.data;
            }
            json_decref(v.attrs);
            c->taken++;
        }
        bool first = a.n == 0;
        append_array_text(a.lead, lead_id, first);
        append_array_text(a.phone, recipient, first);
        append_array_text(a.name, PQgetvalue(res, r, 1), first);
        append_array_text(a.content, content, first);
        append_array_text(a.status, status, first);
        append_array_text(a.code, code[0] ? code : NULL, first);
        append_array_text(a.message, message[0] ? message : NULL, first);
        a.n++;
    }
    wc_buf_free(&out);
    const char *params[12];
    for (size_t i = 0; i < 7; i++) {
        evbuffer_add(*bufs[i], "}\0", 2);
        params[i + 1] = (const char *)evbuffer_pullup(*bufs[i], -1);
    }
    params[0] = c->id;
    params[8] = c->user_id;
    params[9] = c->media_url;
    params[10] = s->cfg.c.instance_id;
    static const char *sql =
        "WITH input AS ("
        " SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], "
        "$6::message_status[],"
        " $7::text[], $8::text[]) AS t(lead_id, phone, name, content, status, error_code, "
        "error_message)),"
        " claim AS (SELECT 1 FROM campaigns WHERE id = $1 AND claimed_by = $11 AND status = "
        "'triggered'),"
        " ins AS ("
        " INSERT INTO broadcast_messages (campaign_id, user_id, lead_id, recipient_phone, "
        "recipient_name,"
        " content, media_url, status, error_code, error_message, scheduled_at)"
        " SELECT $1, $9, lead_id, phone, name, content, NULLIF($10, ''), status, error_code, "
        "error_message,"
        " now() FROM input WHERE EXISTS (SELECT 1 FROM claim)"
        " ON CONFLICT DO NOTHING RETURNING id, lead_id, status),"
        " cnt AS ("
        " UPDATE campaigns SET total_count = total_count + (SELECT count(*) FROM ins),"
        " skipped_count = skipped_count + (SELECT count(*) FROM ins WHERE status = 'skipped'),"
        " claimed_at = now() WHERE id = $1 AND claimed_by = $11 AND status = 'triggered' RETURNING "
        "1)"
        " SELECT id, lead_id, status::text, (SELECT count(*) FROM cnt) FROM ins"
        " UNION ALL SELECT NULL, NULL, NULL, (SELECT count(*) FROM cnt)";
    if (a.n == 0) {
        for (size_t i = 0; i < 7; i++)
            evbuffer_free(*bufs[i]);
        set_state(s, c->leads_done ? EXP_FINISH : EXP_SELECT);
        exp_step(s);
        return;
    }
    set_state(s, EXP_INSERT);
    if (wc_pg_query(s->d.pg, sql, 11, params, on_inserted, s) < 0) {
        s->m.pg_errors++;
        abandon(s, "cannot queue the insert");
    }
    for (size_t i = 0; i < 7; i++)
        evbuffer_free(*bufs[i]);
}

static void on_inserted(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        abandon(s, err);
        return;
    }
    int n = PQntuples(res);
    /* The last row carries the claim check. */
    if (n == 0 || strtol(PQgetvalue(res, n - 1, 3), NULL, 10) == 0) {
        wc_info("campaign %s: no longer ours to expand (paused, cancelled or taken over)",
                s->c->id);
        end_expansion(s);
        return;
    }
    /* The rows wait as 'pending'; the feeder publishes them as the
     * campaign's messages in flight leave room. */
    for (int r = 0; r < n - 1; r++) {
        s->m.messages_created++;
        if (strcmp(PQgetvalue(res, r, 2), "pending") != 0)
            s->m.messages_skipped++;
    }
    set_state(s, s->c->leads_done ? EXP_FINISH : EXP_SELECT);
    exp_step(s);
}

static void on_processing(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!s->c)
        return; /* the expansion ended under us (shutdown) */
    if (!res) {
        s->m.pg_errors++;
        abandon(s, err);
        return;
    }
    if (PQntuples(res) > 0) {
        const char *status = PQgetvalue(res, 0, 0);
        long total = strtol(PQgetvalue(res, 0, 1), NULL, 10);
        if (!strcmp(status, "finished") && total == 0) {
            s->m.campaigns_empty++;
            wc_info("campaign %s finished: no eligible leads", s->c->id);
        } else {
            wc_info("campaign %s expanded: %ld message(s); now %s", s->c->id, total, status);
        }
        /* Results may all have arrived while it was still triggered. */
        char ids[64];
        snprintf(ids, sizeof ids, "{%s}", s->c->id);
        const char *params[] = {ids};
        if (wc_pg_query(s->d.pg, WC_SQL_FINISH_CAMPAIGNS, 1, params, on_failed, s) < 0)
            s->m.pg_errors++;
    }
    end_expansion(s);
}

static void exp_step(scheduler *s)
{
    campaign *c = s->c;
    switch (s->state) {
    case EXP_VARS: {
        const char *params[] = {c->user_id};
        if (wc_pg_query(s->d.pg,
                        "SELECT DISTINCT k FROM leads, jsonb_object_keys(attributes) AS k "
                        "WHERE user_id = $1 AND attributes <> '{}'::jsonb",
                        1, params, on_vars, s) < 0)
            abandon(s, "cannot queue a query");
        return;
    }
    case EXP_SELECT: {
        if (c->leads_done) {
            set_state(s, EXP_FINISH);
            exp_step(s);
            return;
        }
        char batch[32];
        snprintf(batch, sizeof batch, "%ld", s->cfg.batch);
        const char *params[] = {c->user_id, c->target_status, c->niche_null ? NULL : c->niche,
                                c->cursor, batch};
        static const char *sql =
            "SELECT l.id, l.name, l.phone, coalesce(l.device_id::text, ''), coalesce(l.niche, ''),"
            " l.target_status::text, l.attributes::text FROM leads l"
            " WHERE l.user_id = $1 AND l.opted_out_at IS NULL"
            " AND ($2 = 'all' OR l.target_status::text = $2)"
            " AND ($3::text IS NULL OR lower(l.niche) = lower($3))"
            " AND l.id > $4::uuid ORDER BY l.id LIMIT $5::int";
        if (wc_pg_query(s->d.pg, sql, 5, params, on_leads, s) < 0)
            abandon(s, "cannot queue a query");
        return;
    }
    case EXP_FINISH: {
        const char *params[] = {c->id, s->cfg.c.instance_id};
        static const char *sql =
            "UPDATE campaigns SET"
            " status = CASE WHEN total_count = 0 THEN 'finished'::campaign_status"
            "  ELSE 'processing'::campaign_status END,"
            " status_reason = CASE WHEN total_count = 0 THEN 'no eligible leads' ELSE "
            "status_reason END,"
            " finished_at = CASE WHEN total_count = 0 THEN now() ELSE finished_at END,"
            " expanded_at = now()"
            " WHERE id = $1 AND claimed_by = $2 AND status = 'triggered' RETURNING status, "
            "total_count";
        if (wc_pg_query(s->d.pg, sql, 2, params, on_processing, s) < 0)
            abandon(s, "cannot queue a query");
        return;
    }
    default:
        return;
    }
}

/* ---- timers ------------------------------------------------------------------------------- */

static void on_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    claim(arg);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exp_step(arg);
}

/* ---- reconciler ---------------------------------------------------------------------------- */

/* Candidates are messages pending or queued for longer than
 * WACAST_RECONCILE_AFTER_S in running campaigns. Their markers in Redis tell
 * what happened to each:
 *   pending, any marker   published but never marked queued, or never
 *                         published: publish (a duplicate is dropped by the
 *                         marker downstream)
 *   queued, no marker     lost with Redis data: publish again
 *   queued, "d:..."       the outcome is known but its result was lost: put
 *                         the result on the results stream again
 *   queued, "r:"/"c:"     still travelling (an outbox, a send): leave it, and
 *                         touch it so the next rounds look at others first */
typedef struct reconcile {
    scheduler *s;
    PGresult *rows;
    bool *publish;
} reconcile;

static void reconcile_end(reconcile *rc)
{
    rc->s->reconciling = false;
    PQclear(rc->rows);
    free(rc->publish);
    free(rc);
}

static void on_reconcile_marked(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("reconciler: %s", err);
    }
}

static void on_reconcile_published(int published, int n, const char *ids, void *arg)
{
    scheduler *s = arg;
    s->m.messages_republished += (uint64_t)published;
    wc_info("reconciler: published %d of %d stuck message(s) again", published, n);
    const char *params[] = {ids};
    if (wc_pg_query(s->d.pg, WC_SQL_MARK_QUEUED, 1, params, on_reconcile_marked, s) < 0)
        s->m.pg_errors++;
}

static void on_result_replayed(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    scheduler *s = arg;
    if (!reply || reply->type == REDIS_REPLY_ERROR)
        s->m.redis_errors++;
}

static void on_markers(wc_redis *r, redisReply *reply, void *arg)
{
    reconcile *rc = arg;
    scheduler *s = rc->s;
    int n = PQntuples(rc->rows);
    if (!reply || reply->type != REDIS_REPLY_ARRAY || (int)reply->elements != n) {
        s->m.redis_errors++;
        reconcile_end(rc);
        return;
    }
    struct evbuffer *alive = evbuffer_new();
    int npublish = 0, nalive = 0;
    for (int i = 0; i < n; i++) {
        bool pending = PQgetvalue(rc->rows, i, 11)[0] == 'p';
        redisReply *m = reply->element[i];
        bool absent = m->type != REDIS_REPLY_STRING || m->len < 2;
        if (pending || absent) {
            rc->publish[i] = true;
            npublish++;
        } else if (m->str[0] == 'd') {
            const char *argv[] = {"XADD", WC_KEY_RESULTS, "*", "r", m->str + 2};
            size_t lens[] = {4, strlen(WC_KEY_RESULTS), 1, 1, m->len - 2};
            if (wc_redis_commandv(r, on_result_replayed, s, 5, argv, lens) < 0)
                s->m.redis_errors++;
        } else {
            evbuffer_add_printf(alive, "%s%s", nalive++ ? "," : "{", PQgetvalue(rc->rows, i, 0));
        }
    }
    if (nalive) {
        evbuffer_add(alive, "}\0", 2);
        const char *params[] = {(const char *)evbuffer_pullup(alive, -1)};
        if (wc_pg_query(
                s->d.pg,
                "UPDATE broadcast_messages SET updated_at = now() WHERE id = ANY($1::bigint[])"
                " AND status = 'queued'",
                1, params, on_reconcile_marked, s) < 0)
            s->m.pg_errors++;
    }
    evbuffer_free(alive);
    if (npublish && wc_publish_rows(r, rc->rows, rc->publish, 0, on_reconcile_published, s) < 0)
        s->m.redis_errors++;
    reconcile_end(rc);
}

static void on_stuck(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("reconciler: %s", err);
        s->reconciling = false;
        return;
    }
    int n = PQntuples(res);
    if (n == 0) {
        s->reconciling = false;
        return;
    }
    reconcile *rc = calloc(1, sizeof *rc);
    bool *publish = calloc((size_t)n, sizeof *publish);
    const char **argv = calloc((size_t)n + 1, sizeof *argv);
    char(*keys)[64] = calloc((size_t)n, sizeof *keys);
    if (!rc || !publish || !argv || !keys)
        abort();
    rc->s = s;
    rc->publish = publish;
    /* Keep the rows past this callback: the library frees res when it returns. */
    rc->rows = PQcopyResult(res, PG_COPYRES_ATTRS | PG_COPYRES_TUPLES);
    argv[0] = "MGET";
    for (int i = 0; i < n; i++) {
        wc_key_msg(keys[i], sizeof keys[i], strtoll(PQgetvalue(res, i, 0), NULL, 10));
        argv[i + 1] = keys[i];
    }
    if (!rc->rows || wc_redis_commandv(s->d.redis, on_markers, rc, n + 1, argv, NULL) < 0) {
        s->m.redis_errors++;
        if (!rc->rows) {
            free(publish);
            free(rc);
            s->reconciling = false;
        } else {
            reconcile_end(rc);
        }
    }
    free(argv);
    free(keys);
}

static void on_reconcile(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->reconciling || s->d.stopping || !wc_redis_ready(s->d.redis))
        return;
    char after[32];
    snprintf(after, sizeof after, "%ld", s->reconcile_now > 0 ? 0 : s->cfg.reconcile_after_s);
    s->reconcile_now -= s->reconcile_now > 0;
    const char *params[] = {after};
    static const char *sql = "SELECT " WC_SQL_JOB_COLUMNS ", m.status::text" WC_SQL_JOB_FROM
                             " WHERE m.status = 'queued' AND c.status = 'processing'"
                             " AND m.updated_at < now() - make_interval(secs => $1::float8)"
                             " ORDER BY m.updated_at LIMIT 1000";
    if (wc_pg_query(s->d.pg, sql, 1, params, on_stuck, s) == 0)
        s->reconciling = true;
}

/* Redis lost acknowledged writes (wc_epoch.c): what the lost interval held
 * (a publication, a marker) is looked for at once, not after the timeout. */
static void on_fence_checked(void *arg, const wc_epoch_state *st)
{
    scheduler *s = arg;
    if (!st->recovering)
        return;
    s->reconcile_now = 5;
    on_reconcile(-1, 0, s);
}

/* ---- feeder --------------------------------------------------------------------------------
 *
 * Expansion leaves a campaign's messages 'pending' in PostgreSQL; the feeder
 * publishes them as room opens: each running campaign has at most
 * WACAST_CAMPAIGN_INFLIGHT messages queued (published, not yet done). So
 * Redis holds a bounded amount per campaign, a large campaign never stands in
 * front of another user's, and a campaign whose user has no healthy device,
 * or that is outside its sending window, or paused, keeps its messages in
 * PostgreSQL. Rows are marked queued and returned by one statement (FOR
 * UPDATE SKIP LOCKED: schedulers never publish the same row twice); a row
 * marked but not published is republished by the reconciler. */

/* A device the router may use: online, seen by a sender lately, not resting
 * (user in c.user_id, the online grace in ms as the given parameter). */
#define HEALTHY_DEVICE(grace_param)                                                                \
    "EXISTS (SELECT 1 FROM user_devices d WHERE d.user_id = c.user_id AND d.status = 'online'"     \
    " AND (d.resting_until IS NULL OR d.resting_until <= now())"                                   \
    " AND d.last_seen > now() - make_interval(secs => " grace_param "::float8 / 1000))"

// clang-format off
static const char *FEED_SQL =
    /* Each campaign's scan starts after the last row this scheduler fed: the
     * pending index keeps entries of rows fed long ago until a vacuum, and
     * walking over them every round would cost more with every round. */
    "WITH cur AS (SELECT * FROM unnest($4::uuid[], $5::bigint[]) AS t(id, after)),"
    " camp AS ("
    /* The queued count walks the index in order (a plain index scan marks
     * the entries of rows that left 'queued' dead as it meets them, so the
     * next round skips them; a bitmap scan, the planner's choice for a bare
     * count, visited every one of them again each round until a vacuum). */
    " SELECT c.id, $1::int - (SELECT count(*) FROM (SELECT 1 FROM broadcast_messages q"
    "  WHERE q.campaign_id = c.id AND q.status = 'queued'"
    "  ORDER BY q.campaign_id, q.updated_at LIMIT $1::int) q) AS room"
    " FROM campaigns c WHERE c.status IN ('triggered', 'processing')"
    " AND wacast_in_window(c.send_window_start, c.send_window_end, c.time_zone)"
    " AND " HEALTHY_DEVICE("$3")
    " AND EXISTS (SELECT 1 FROM broadcast_messages p WHERE p.campaign_id = c.id"
    "  AND p.status = 'pending'"
    "  AND p.id > coalesce((SELECT after FROM cur WHERE cur.id = c.id), 0))),"
    " share AS (SELECT greatest(1, $2::int / greatest(1, count(*))) AS n FROM camp),"
    " picked AS ("
    " SELECT p.id FROM camp LEFT JOIN cur ON cur.id = camp.id, share,"
    "  LATERAL (SELECT m.id FROM broadcast_messages m"
    "  WHERE m.campaign_id = camp.id AND m.status = 'pending' AND m.id > coalesce(cur.after, 0)"
    "  ORDER BY m.id LIMIT greatest(0, least(camp.room, share.n)) FOR UPDATE SKIP LOCKED) p),"
    " upd AS ("
    " UPDATE broadcast_messages m SET status = 'queued', queued_at = now(), updated_at = now()"
    " FROM picked WHERE m.id = picked.id AND m.status = 'pending' RETURNING m.*)"
    " SELECT " WC_SQL_JOB_COLUMNS
    " FROM upd m JOIN campaigns c ON c.id = m.campaign_id LEFT JOIN leads l ON l.id = m.lead_id"
    " ORDER BY m.id";

static const char *WAITING_SQL =
    "WITH w AS ("
    " SELECT c.id, " HEALTHY_DEVICE("$1") " AS healthy,"
    " 'waiting: no healthy device (' || coalesce((SELECT string_agg(n || ' ' || st, ', '"
    "  ORDER BY st) FROM (SELECT CASE WHEN d.status = 'online' AND d.resting_until > now()"
    "   THEN CASE WHEN d.status_reason LIKE 'daily limit%' THEN 'at daily limit'"
    "    ELSE 'resting' END"
    "   WHEN d.status = 'online' THEN 'not seen by a sender' ELSE d.status::text END AS st,"
    "   count(*) AS n FROM user_devices d WHERE d.user_id = c.user_id GROUP BY 1) x),"
    "  'the user has no device') || ')' AS reason"
    " FROM campaigns c WHERE c.status IN ('triggered', 'processing'))"
    " UPDATE campaigns c SET status_reason = CASE WHEN w.healthy THEN NULL ELSE w.reason END"
    " FROM w WHERE c.id = w.id AND ((NOT w.healthy AND (c.status_reason IS NULL"
    "  OR c.status_reason LIKE 'waiting:%') AND c.status_reason IS DISTINCT FROM w.reason)"
    "  OR (w.healthy AND c.status_reason LIKE 'waiting:%'))";
// clang-format on

static void on_feed_timer(evutil_socket_t fd, short what, void *arg);

static void on_fed(int published, int n, const char *ids, void *arg)
{
    (void)ids;
    scheduler *s = arg;
    s->feeding = false;
    s->m.messages_published += (uint64_t)published;
    if (published < n)
        wc_warn("feeder: %d of %d message(s) not published; the reconciler retries them",
                n - published, n);
    /* A full round: more may be waiting; go on at once. */
    if (n >= s->cfg.feed_batch / 2 && !s->d.stopping)
        on_feed_timer(-1, 0, s);
}

static void on_feed_rows(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    if (!res) {
        s->feeding = false;
        s->m.pg_errors++;
        wc_warn("feeder: %s", err);
        return;
    }
    if (PQntuples(res) == 0) {
        s->feeding = false;
        return;
    }
    s->m.feed_rounds++;
    /* Where each campaign's next scan starts (rows come ordered by id). */
    for (int i = 0; i < PQntuples(res); i++) {
        long long id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        const char *camp = PQgetvalue(res, i, 1);
        if ((long long)(uintptr_t)wc_map_get(&s->fed, camp) < id &&
            wc_map_put(&s->fed, camp, (void *)(uintptr_t)id) < 0)
            abort();
    }
    if (wc_publish_rows(s->d.redis, res, NULL, 0, on_fed, s) < 0) {
        /* Marked queued, not published: the reconciler publishes them. */
        s->feeding = false;
        s->m.redis_errors++;
    }
}

static void on_feed_len(wc_redis *r, redisReply *reply, void *arg)
{
    (void)r;
    scheduler *s = arg;
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        s->m.redis_errors++;
        s->feeding = false;
        return;
    }
    if (reply->integer > s->cfg.jobs_max) {
        /* The routers are behind: let the stream drain first. */
        s->m.backpressure_waits++;
        s->feeding = false;
        return;
    }
    char inflight[32], batch[32], grace[32];
    snprintf(inflight, sizeof inflight, "%ld", s->cfg.inflight);
    snprintf(batch, sizeof batch, "%ld", s->cfg.feed_batch);
    snprintf(grace, sizeof grace, "%ld", s->cfg.online_grace_ms);
    /* Start over from the first row once a minute: a row made pending again
     * below a cursor (an operator's retry) is never left behind. */
    if (wc_mono_us() - s->fed_reset_us > 60000000) {
        wc_map_free(&s->fed);
        wc_map_init(&s->fed);
        s->fed_reset_us = wc_mono_us();
    }
    struct evbuffer *ids = evbuffer_new(), *after = evbuffer_new();
    evbuffer_add(ids, "{", 1);
    evbuffer_add(after, "{", 1);
    size_t n = 0;
    for (size_t i = 0; i < s->fed.cap; i++) {
        if (!wc_map_live(&s->fed, i))
            continue;
        evbuffer_add_printf(ids, "%s%s", n ? "," : "", s->fed.slots[i].key);
        evbuffer_add_printf(after, "%s%llu", n ? "," : "",
                            (unsigned long long)(uintptr_t)s->fed.slots[i].value);
        n++;
    }
    evbuffer_add(ids, "}\0", 2);
    evbuffer_add(after, "}\0", 2);
    const char *params[] = {inflight, batch, grace, (const char *)evbuffer_pullup(ids, -1),
                            (const char *)evbuffer_pullup(after, -1)};
    if (wc_pg_query(s->d.pg, FEED_SQL, 5, params, on_feed_rows, s) < 0) {
        s->m.pg_errors++;
        s->feeding = false;
    }
    evbuffer_free(ids);
    evbuffer_free(after);
}

static void on_feed_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->feeding || s->d.stopping || !wc_redis_ready(s->d.redis))
        return;
    if (wc_redis_command(s->d.redis, on_feed_len, s, "XLEN %s", WC_KEY_JOBS) == 0)
        s->feeding = true;
}

static void on_waiting_written(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    s->waiting_busy = false;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("writing waiting reasons: %s", err);
    }
}

/* A running campaign whose user has no healthy device says so, with the
 * states of the user's devices; the reason goes when a device is back. */
static void on_waiting_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->waiting_busy || s->d.stopping)
        return;
    char grace[32];
    snprintf(grace, sizeof grace, "%ld", s->cfg.online_grace_ms);
    const char *params[] = {grace};
    if (wc_pg_query(s->d.pg, WAITING_SQL, 1, params, on_waiting_written, s) == 0)
        s->waiting_busy = true;
    else
        s->m.pg_errors++;
}

static void on_stop(wc_daemon *d, void *arg)
{
    (void)d;
    scheduler *s = arg;
    /* A claim in progress is simply left: it goes stale and is resumed. */
    if (s->state != EXP_IDLE)
        wc_info("stopping with campaign %s mid-expansion; it will be resumed",
                s->c ? s->c->id : "?");
    wc_daemon_exit(&s->d);
}

static bool ready(void *arg, char *why, size_t whylen)
{
    scheduler *s = arg;
    return wc_daemon_ready(&s->d, why, whylen);
}

static void metrics(struct evbuffer *out, void *arg)
{
    scheduler *s = arg;
#define X(name, help)                                                                              \
    wc_metric(out, "wacast_scheduler_" #name "_total", "counter", help, (double)s->m.name);
    SCHEDULER_METRICS(X)
#undef X
    wc_metric(out, "wacast_scheduler_expanding", "gauge", "1 while a campaign is being expanded",
              s->state != EXP_IDLE);
}

int main(int argc, char **argv)
{
    static scheduler s;
    wc_daemon_init(&s.d, "wacast-scheduler",
                   "Finds due campaigns, expands them into messages and publishes them.", cfg_table,
                   sizeof cfg_table / sizeof cfg_table[0], &s.cfg, argc, argv, ready, metrics, &s);
    randombytes_buf(&s.rng, sizeof s.rng);
    wc_map_init(&s.fed);
    s.fed_reset_us = wc_mono_us();
    wc_daemon_on_stop(&s.d, on_stop, &s);
    s.retry_timer = evtimer_new(s.d.base, on_retry, &s);
    s.claim_now = evtimer_new(s.d.base, on_poll, &s);
    s.poll_timer = wc_daemon_every(&s.d, (int)s.cfg.poll_ms, on_poll, &s);
    s.reconcile_timer = wc_daemon_every(&s.d, (int)s.cfg.reconcile_ms, on_reconcile, &s);
    s.epoch = wc_epoch_new(s.d.base, s.d.redis, s.d.pg, 0, on_fence_checked, &s);
    s.feed_timer = wc_daemon_every(&s.d, (int)s.cfg.feed_ms, on_feed_timer, &s);
    s.waiting_timer = wc_daemon_every(&s.d, 1000, on_waiting_timer, &s);
    claim(&s);
    int rc = wc_daemon_run(&s.d);
    end_expansion(&s);
    wc_epoch_free(s.epoch);
    event_free(s.poll_timer);
    event_free(s.reconcile_timer);
    event_free(s.feed_timer);
    wc_map_free(&s.fed);
    event_free(s.waiting_timer);
    event_free(s.retry_timer);
    event_free(s.claim_now);
    wc_daemon_free(&s.d);
    wc_config_free(cfg_table, sizeof cfg_table / sizeof cfg_table[0], &s.cfg);
    return rc;
}
