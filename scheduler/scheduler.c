/* wacast-scheduler: turns due campaigns into messages on the jobs stream.
 *
 * A campaign is claimed with FOR UPDATE SKIP LOCKED, so any number of
 * schedulers can run; the claim is kept alive by touching claimed_at on every
 * batch, and a claim older than WACAST_CLAIM_STALE_S is taken over by another
 * scheduler (its owner died). Expansion is a state machine over batches of
 * leads: select a page of eligible leads, normalise phones and render the
 * template in C, insert the messages as 'pending' in one statement (the
 * UNIQUE constraints make a re-run harmless; a page PostgreSQL refuses for
 * one lead's data is inserted in halves until that lead is found and
 * skipped); then the campaign moves to `processing`.
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
#include "wc_text.h"
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
    long idempotency_ttl_s;
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
     "publishing pauses while more jobs than this wait on the jobs stream for a router to read"
     " them",
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
    {"WACAST_IDEMPOTENCY_TTL_S", WC_CFG_INT, "604800",
     "how long a message's marker is kept (the reconciler renews the markers of messages still"
     " queued, so a long wait in an outbox never outlives it; keep it above"
     " WACAST_RECONCILE_AFTER_S)",
     offsetof(scheduler_cfg, idempotency_ttl_s), 2, 31536000, false},
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
    X(pages_split, "page INSERTs refused for their data, inserted again in halves")                \
    X(leads_refused, "leads whose message PostgreSQL refused, written as skipped (invalid_lead)")  \
    X(refusals_not_lead_data, "expansions stopped: a row holding no lead data was refused")        \
    X(messages_published, "messages published to the jobs stream")                                 \
    X(messages_republished, "messages published again by the reconciler")                          \
    X(markers_renewed, "markers of messages still travelling renewed by the reconciler")           \
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

/* One message row of a page, as it will be inserted (texts owned, clean). */
typedef struct page_row {
    char lead_id[40];
    char *phone, *name, *content, *code, *message; /* code, message: NULL for none */
    const char *status;
    int refused; /* times PostgreSQL refused the row: 1 invalid_lead form, 2 without phone */
} page_row;

/* A page of leads' messages. Each range [lo, hi) on the todo stack is still
 * to be inserted; the top one is in flight. */
typedef struct page {
    page_row *rows;
    size_t n;
    struct {
        size_t lo, hi;
    } todo[64];
    int ntodo;
} page;

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
    page page;     /* the page of messages being inserted */
} campaign;

typedef struct scheduler {
    wc_daemon d;
    scheduler_cfg cfg;
    scheduler_metrics m;
    exp_state state;
    campaign *c;
    bool reconciling;  /* a reconciler query is in flight */
    int reconcile_now; /* rounds left that take every queued row (Redis lost data) */
    wc_epoch *epoch;
    bool feeding; /* a feeder round is in flight */
    wc_map fed;   /* campaign id -> last message id fed (where the next scan starts) */
    int64_t fed_reset_us;
    bool waiting_busy;
    bool pruning; /* a query for fed campaigns no longer running is in flight */
    struct event *poll_timer, *reconcile_timer, *retry_timer, *claim_now, *feed_timer,
        *waiting_timer, *prune_timer;
    uint64_t rng;
} scheduler;

static void exp_step(scheduler *s);

static void set_state(scheduler *s, exp_state st)
{
    wc_debug("expansion: %s -> %s", exp_state_names[s->state], exp_state_names[st]);
    s->state = st;
}

static void page_free(page *p);

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
    page_free(&c->page);
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
    /* The reason may quote the campaign's own text, cut by the caller's
     * buffer: one invalid byte and the UPDATE fails, every minute, forever. */
    char clean[512];
    wc_text_clean(clean, sizeof clean, reason, (size_t)-1, NULL);
    wc_warn("campaign %s failed: %s", s->c->id, clean);
    const char *params[] = {s->c->id, clean, s->cfg.c.instance_id};
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

/* Longest raw text of an invalid phone stored or quoted as it is. */
#define INVALID_PHONE_MAX 100
/* Longest recipient_name stored. */
#define RECIPIENT_NAME_MAX 512

/* Lead fields come from PostgreSQL, so they are valid UTF-8, but of any
 * length: every text the scheduler builds from them is made clean and
 * bounded here, cut on a character boundary, before it goes into a page
 * INSERT (one invalid byte fails the whole page, and the page again on
 * every resume of the claim). */

/* An invalid phone as stored in recipient_phone: the raw text when short
 * and clean, else its clean start and the lead's id (recipient_phone is
 * UNIQUE per campaign: two long numbers cut alike must stay distinct). */
static const char *stored_invalid_phone(char *buf, size_t size, const char *raw,
                                        const char *lead_id)
{
    char start[INVALID_PHONE_MAX + 1];
    bool changed = false;
    wc_text_clean(start, sizeof start, raw, (size_t)-1, &changed);
    if (!changed)
        return raw;
    snprintf(buf, size, "%s... [lead %s]", start, lead_id);
    return buf;
}

/* A lead's name as stored in recipient_name. */
static const char *stored_name(char *buf, size_t size, const char *raw)
{
    size_t len = strlen(raw);
    if (len < size && wc_text_valid(raw, len))
        return raw;
    wc_text_clean(buf, size, raw, len, NULL);
    return buf;
}

/* ---- page insert ------------------------------------------------------------------------------
 *
 * A page of leads becomes one multi-row INSERT. A refused page used to
 * abandon the claim, which was resumed a minute later at the same page,
 * forever. Now, when PostgreSQL refuses it for its data (an SQLSTATE of
 * class 22 data exception, 23 integrity, 54 program limit or P0 raised by a
 * trigger), the page is split in halves, and the halves again, until the one
 * lead at fault is found: its message is written as skipped with error_code
 * invalid_lead and PostgreSQL's words (and, if that is refused too, without
 * its phone: then the row holds no text of the lead), and every other lead of
 * the page goes in. A row with no lead data refused as well means the fault
 * is not the lead's (a constraint or trigger refusing every row): the claim
 * is abandoned, as for an outage, rather than every lead blamed. Any other
 * failure (connection lost, time-out) abandons the claim as before. */

static void on_inserted(wc_pg *pg, PGresult *res, const char *err, void *arg);

static void page_free(page *p)
{
    for (size_t i = 0; i < p->n; i++) {
        page_row *row = &p->rows[i];
        free(row->phone);
        free(row->name);
        free(row->content);
        free(row->code);
        free(row->message);
    }
    free(p->rows);
    memset(p, 0, sizeof *p);
}

static char *dup_text(const char *v)
{
    char *d = strdup(v ? v : "");
    if (!d)
        abort();
    return d;
}

static bool refused_for_its_data(const char *sqlstate)
{
    return !strncmp(sqlstate, "22", 2) || !strncmp(sqlstate, "23", 2) ||
           !strncmp(sqlstate, "54", 2) || !strncmp(sqlstate, "P0", 2);
}

/* Inserts the rows of the range on top of the page's stack; when the stack
 * is empty the page is done and the expansion goes on. */
static void insert_next(scheduler *s)
{
    campaign *c = s->c;
    page *p = &c->page;
    if (p->ntodo == 0) {
        page_free(p);
        set_state(s, c->leads_done ? EXP_FINISH : EXP_SELECT);
        exp_step(s);
        return;
    }
    struct evbuffer *bufs[7];
    for (size_t i = 0; i < 7; i++) {
        bufs[i] = evbuffer_new();
        evbuffer_add(bufs[i], "{", 1);
    }
    size_t lo = p->todo[p->ntodo - 1].lo, hi = p->todo[p->ntodo - 1].hi;
    for (size_t i = lo; i < hi; i++) {
        const page_row *row = &p->rows[i];
        bool first = i == lo;
        append_array_text(bufs[0], row->lead_id, first);
        append_array_text(bufs[1], row->phone, first);
        append_array_text(bufs[2], row->name, first);
        append_array_text(bufs[3], row->content, first);
        append_array_text(bufs[4], row->status, first);
        append_array_text(bufs[5], row->code, first);
        append_array_text(bufs[6], row->message, first);
    }
    const char *params[11];
    for (size_t i = 0; i < 7; i++) {
        evbuffer_add(bufs[i], "}\0", 2);
        params[i + 1] = (const char *)evbuffer_pullup(bufs[i], -1);
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
    set_state(s, EXP_INSERT);
    if (wc_pg_query(s->d.pg, sql, 11, params, on_inserted, s) < 0) {
        s->m.pg_errors++;
        abandon(s, "cannot queue the insert");
    }
    for (size_t i = 0; i < 7; i++)
        evbuffer_free(bufs[i]);
}

/* The range on top was refused for its data: split it; for one lead, write
 * its message as skipped instead, then without its phone; a row holding no
 * lead data refused too stops the expansion. */
static void page_refused(scheduler *s, const char *err)
{
    campaign *c = s->c;
    page *p = &c->page;
    size_t lo = p->todo[p->ntodo - 1].lo, hi = p->todo[p->ntodo - 1].hi;
    char why[400];
    wc_text_clean(why, sizeof why, err, (size_t)-1, NULL);
    if (hi - lo > 1) {
        if (p->ntodo == (int)(sizeof p->todo / sizeof p->todo[0]))
            abort(); /* halving a page of at most 100,000 rows goes 18 deep */
        size_t mid = lo + (hi - lo) / 2;
        p->todo[p->ntodo - 1].lo = mid; /* the second half, after the first */
        p->todo[p->ntodo].lo = lo;
        p->todo[p->ntodo].hi = mid;
        p->ntodo++;
        s->m.pages_split++;
        wc_info("campaign %s: %zu message(s) refused (%s); inserting them in halves", c->id,
                hi - lo, why);
        insert_next(s);
        return;
    }
    page_row *row = &p->rows[lo];
    if (row->refused == 2) {
        /* Not this lead's fault: nothing of it was left in the row. */
        s->m.refusals_not_lead_data++;
        wc_error("campaign %s: PostgreSQL refuses even a message holding no lead data (%s); the "
                 "expansion stops here and resumes when the claim goes stale",
                 c->id, why);
        abandon(s, why);
        return;
    }
    if (row->refused == 1) {
        /* The phone, the one lead text left: replaced by the lead's id. */
        row->refused = 2;
        char phone[64];
        snprintf(phone, sizeof phone, "lead %s", row->lead_id);
        free(row->phone);
        row->phone = dup_text(phone);
        wc_warn("campaign %s: lead %s: its skipped message was refused too (%s); written without "
                "its phone",
                c->id, row->lead_id, why);
        insert_next(s);
        return;
    }
    /* The least the row can hold: the lead id says who it was for. */
    row->refused = 1;
    row->status = "skipped";
    free(row->name);
    free(row->content);
    free(row->code);
    free(row->message);
    row->name = dup_text("");
    row->content = dup_text("");
    row->code = dup_text("invalid_lead");
    char message[512];
    snprintf(message, sizeof message, "PostgreSQL refused this lead's message: %s", why);
    wc_text_fix(message);
    row->message = dup_text(message);
    s->m.leads_refused++;
    wc_warn("campaign %s: lead %s: its message was refused (%s); skipped as invalid_lead", c->id,
            row->lead_id, why);
    insert_next(s);
}

static void on_leads(wc_pg *pg, PGresult *res, const char *err, void *arg)
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
    if (n < s->cfg.batch)
        c->leads_done = true;
    if (n == 0) {
        set_state(s, EXP_FINISH);
        exp_step(s);
        return;
    }
    page *p = &c->page;
    page_free(p);
    p->rows = calloc((size_t)n, sizeof *p->rows);
    if (!p->rows)
        abort();
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
        char recipient_buf[INVALID_PHONE_MAX + 64], name_buf[RECIPIENT_NAME_MAX];
        if (wc_phone_normalize(raw_phone, s->cfg.default_country, phone, sizeof phone, &why) < 0) {
            status = "skipped";
            snprintf(code, sizeof code, "invalid_phone");
            char quoted[INVALID_PHONE_MAX + 1];
            bool cut = false;
            wc_text_clean(quoted, sizeof quoted, raw_phone, (size_t)-1, &cut);
            snprintf(message, sizeof message, "invalid phone number '%s%s': %s (%s)", quoted,
                     cut ? "..." : "", phone_reason_text(why), why);
            wc_text_fix(message);
            recipient =
                stored_invalid_phone(recipient_buf, sizeof recipient_buf, raw_phone, lead_id);
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
                wc_text_clean(message, sizeof message, rerr, (size_t)-1, NULL);
            } else if (strspn(out.data, " \t\r\n") == out.len) {
                status = "skipped";
                snprintf(code, sizeof code, "empty_message");
                snprintf(message, sizeof message, "the template rendered to an empty message");
            } else {
                /* Rendered from clean parts, so clean; made sure of all the same. */
                if (!wc_text_valid(out.data, out.len))
                    out.len = wc_text_fix(out.data);
                content = out.data;
            }
            json_decref(v.attrs);
            c->taken++;
        }
        page_row *row = &p->rows[p->n++];
        snprintf(row->lead_id, sizeof row->lead_id, "%s", lead_id);
        row->phone = dup_text(recipient);
        row->name = dup_text(stored_name(name_buf, sizeof name_buf, PQgetvalue(res, r, 1)));
        row->content = dup_text(content);
        row->status = status;
        row->code = code[0] ? dup_text(code) : NULL;
        row->message = message[0] ? dup_text(message) : NULL;
    }
    wc_buf_free(&out);
    p->ntodo = 0;
    if (p->n > 0) {
        p->todo[0].lo = 0;
        p->todo[0].hi = p->n;
        p->ntodo = 1;
    }
    insert_next(s);
}

static void on_inserted(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    scheduler *s = arg;
    if (!s->c)
        return; /* the expansion ended under us (shutdown) */
    if (!res) {
        s->m.pg_errors++;
        if (refused_for_its_data(wc_pg_last_sqlstate(pg)))
            page_refused(s, err);
        else
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
    s->c->page.ntodo--;
    insert_next(s);
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

/* Candidates are messages queued for longer than WACAST_RECONCILE_AFTER_S
 * in running campaigns (pending ones wait for the feeder, which marks a row
 * queued before it publishes it). Their markers in Redis tell what happened
 * to each:
 *   queued, no marker     lost with Redis data: publish again (a duplicate
 *                         is dropped by the marker downstream)
 *   queued, "d:..."       the outcome is known but its result was lost: put
 *                         the result on the results stream again
 *   queued, "r:"/"c:"     still travelling (an outbox, a send): its marker
 *                         is renewed to the full WACAST_IDEMPOTENCY_TTL_S, so
 *                         a message that waits in an outbox longer than that
 *                         (a slow device behind many campaigns) is never
 *                         taken for lost and published again, which would
 *                         leave a copy to be sent once the first copy's
 *                         outcome marker has expired
 *
 * The statement that picks the candidates also moves their updated_at to now
 * (FOR UPDATE SKIP LOCKED): a row is looked at again only after another
 * WACAST_RECONCILE_AFTER_S, not every round (a user whose devices are all
 * away would otherwise get one copy of each waiting row per round on the
 * jobs stream), and two schedulers never pick, and so never republish, the
 * same row in the same period. A row picked in a round whose Redis command
 * then fails waits for the next period. */
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
    int npublish = 0;
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
            char key[64], ttl[32];
            wc_key_msg(key, sizeof key, strtoll(PQgetvalue(rc->rows, i, 0), NULL, 10));
            snprintf(ttl, sizeof ttl, "%ld", s->cfg.idempotency_ttl_s);
            const char *argv[] = {"EXPIRE", key, ttl};
            if (wc_redis_commandv(r, on_result_replayed, s, 3, argv, NULL) < 0)
                s->m.redis_errors++;
            else
                s->m.markers_renewed++;
        }
    }
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
    static const char *sql =
        "WITH stuck AS (SELECT m.id FROM broadcast_messages m JOIN campaigns c"
        " ON c.id = m.campaign_id WHERE m.status = 'queued' AND c.status = 'processing'"
        " AND m.updated_at < now() - make_interval(secs => $1::float8)"
        " ORDER BY m.updated_at LIMIT 1000 FOR UPDATE OF m SKIP LOCKED),"
        " touched AS (UPDATE broadcast_messages m SET updated_at = now() FROM stuck"
        " WHERE m.id = stuck.id AND m.status = 'queued' RETURNING m.*)"
        " SELECT " WC_SQL_JOB_COLUMNS ", m.status::text FROM touched m"
        " JOIN campaigns c ON c.id = m.campaign_id LEFT JOIN leads l ON l.id = m.lead_id"
        " ORDER BY m.id";
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

/* Jobs no router has read yet: the stream's length less the entries routers
 * hold unacknowledged. Those held are jobs waiting for a device of their
 * user (bounded per user by the router): counting them would let one user
 * whose devices are away stop the publishing of every user's campaigns.
 * KEYS[1] jobs stream, ARGV[1] the routers' group. */
static const char *UNREAD_SCRIPT =
    "local n = redis.call('XLEN', KEYS[1]) "
    "local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1]) "
    "if ok and type(p) == 'table' and tonumber(p[1]) then n = n - tonumber(p[1]) end "
    "return n";

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
    const char *argv[] = {"EVAL", UNREAD_SCRIPT, "1", WC_KEY_JOBS, WC_GROUP_DISPATCH};
    if (wc_redis_commandv(s->d.redis, on_feed_len, s, 5, argv, NULL) == 0)
        s->feeding = true;
}

static void on_fed_pruned(wc_pg *pg, PGresult *res, const char *err, void *arg)
{
    (void)pg;
    scheduler *s = arg;
    s->pruning = false;
    if (!res) {
        s->m.pg_errors++;
        wc_warn("feeder: looking for campaigns no longer running: %s", err);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++)
        wc_map_del(&s->fed, PQgetvalue(res, i, 0));
}

/* The feeder's cursors of campaigns no longer running (finished, failed,
 * cancelled, paused, deleted) go, so the map and the cursor arrays of every
 * feeder round hold only the campaigns being fed; the reset once a minute
 * alone let them pile up for a minute with many short campaigns. */
static void on_prune_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    scheduler *s = arg;
    if (s->pruning || s->d.stopping || s->fed.len == 0)
        return;
    struct evbuffer *ids = evbuffer_new();
    size_t n = 0;
    for (size_t i = 0; i < s->fed.cap; i++)
        if (wc_map_live(&s->fed, i))
            evbuffer_add_printf(ids, "%s%s", n++ ? "," : "{", s->fed.slots[i].key);
    evbuffer_add(ids, "}\0", 2);
    const char *params[] = {(const char *)evbuffer_pullup(ids, -1)};
    if (wc_pg_query(s->d.pg,
                    "SELECT t.id::text FROM unnest($1::uuid[]) AS t(id) WHERE NOT EXISTS"
                    " (SELECT 1 FROM campaigns c WHERE c.id = t.id"
                    " AND c.status IN ('triggered', 'processing'))",
                    1, params, on_fed_pruned, s) == 0)
        s->pruning = true;
    else
        s->m.pg_errors++;
    evbuffer_free(ids);
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
    wc_metric(out, "wacast_scheduler_feed_cursors", "gauge",
              "campaigns whose feeder cursor is kept (running ones, until pruned)",
              (double)s->fed.len);
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
    s.prune_timer = wc_daemon_every(&s.d, 5000, on_prune_timer, &s);
    claim(&s);
    int rc = wc_daemon_run(&s.d);
    end_expansion(&s);
    wc_epoch_free(s.epoch);
    event_free(s.poll_timer);
    event_free(s.reconcile_timer);
    event_free(s.feed_timer);
    wc_map_free(&s.fed);
    event_free(s.waiting_timer);
    event_free(s.prune_timer);
    event_free(s.retry_timer);
    event_free(s.claim_now);
    wc_daemon_free(&s.d);
    wc_config_free(cfg_table, sizeof cfg_table / sizeof cfg_table[0], &s.cfg);
    return rc;
}
