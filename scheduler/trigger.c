/* Claiming and expanding due campaigns (the scheduler's trigger).
 *
 * A campaign is claimed with FOR UPDATE SKIP LOCKED, so any number of
 * schedulers can run; the claim is kept alive by touching claimed_at on every
 * batch, and a claim older than WACAST_CLAIM_STALE_S is taken over by another
 * scheduler (its owner died). Expansion is a state machine over batches of
 * leads: select a page of eligible leads, normalise phones and render the
 * template in C, insert the messages as 'pending' in one statement (the
 * UNIQUE constraints make a re-run harmless; a page PostgreSQL refuses for
 * one lead's data is inserted in halves until that lead is found and
 * skipped); then the campaign moves to `processing` and the feeder
 * (feeder.c) publishes its messages.
 * May touch: campaigns being claimed and their broadcast_messages rows. */
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

#include "scheduler.h"

static const char *exp_state_names[] = {"idle",   "claiming", "media", "vars",
                                        "select", "insert",   "finish"};

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

void end_expansion(scheduler *s)
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
void abandon(scheduler *s, const char *why)
{
    wc_warn("campaign %s: expansion interrupted (%s); it will resume", s->c ? s->c->id : "?", why);
    end_expansion(s);
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

void fail_campaign(scheduler *s, const char *reason)
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
    media_prepare(s); /* media.c: then scheduler_expand() or fail_campaign() */
}

void scheduler_expand(scheduler *s)
{
    set_state(s, EXP_VARS);
    exp_step(s);
}

void claim(scheduler *s)
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
            if (wc_tpl_render(c->tpl, lead_lookup, &v, &s->rng, c->hour,
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

void exp_step(scheduler *s)
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
