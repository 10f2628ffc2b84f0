/* The scheduler's shared state: claim and expansion of campaigns
 * (trigger.c), the feeder that publishes their messages as room opens
 * (feeder.c), the reconciler that finds what Redis lost (reconciler.c),
 * drip sequences' activations and due steps (sequences.c), lead rendering
 * shared by campaigns and steps (render.c), images (media.c), the settings
 * and timers (main.c). */
#ifndef SCHEDULER_H
#define SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>

#include "wc_daemon.h"
#include "wc_epoch.h"
#include "wc_map.h"
#include "wc_tpl.h"

#include "wc_media.h"

struct evbuffer;

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
    long user_inflight;
    long feed_ms;
    long feed_batch;
    long online_grace_ms;
    wc_media_cfg media;
    long seq_ms;
    long seq_batch;
    long seq_claim_s;
    long seq_window_margin_ms;
} scheduler_cfg;

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
    X(sequences_accepted, "sequence activations accepted (matching leads enrolled)")               \
    X(sequences_refused, "sequence activations refused (back to draft with a reason)")             \
    X(sequence_contacts_enrolled, "contacts enrolled by accepted activations")                     \
    X(sequence_steps_claimed, "due sequence contacts claimed for their next step")                 \
    X(sequence_steps_published, "sequence step messages published to the jobs stream")             \
    X(sequence_steps_skipped, "sequence step messages written skipped (phone, template)")          \
    X(sequence_counter_deltas_folded, "sequence counter deltas folded into the counters")          \
    X(sequence_claims_lost, "claimed contacts no longer ours at insert (stopped or taken over)")   \
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
    EXP_MEDIA,    /* preparing the campaign's image (media.c) */
    EXP_VARS,     /* reading the lead attribute names the template may use */
    EXP_SELECT,   /* reading a page of leads */
    EXP_INSERT,   /* inserting a page of messages */
    EXP_FINISH,   /* moving the campaign to processing */
} exp_state;

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

typedef struct media_state media_state;

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
    bool seq_due_busy;   /* a due-steps round is in flight */
    bool seq_check_busy; /* activations are being checked */
    bool seq_fold_busy;  /* counter deltas are being folded */
    bool seq_enrol_busy; /* a page of tagged leads is being enrolled */
    bool seq_due_more;   /* the last round was full: go on at once */
    bool seq_media_busy; /* a running sequence's step image is being prepared */
    char seq_media_step[40];
    char *seq_media_url; /* its media_url while it is prepared */
    json_t *seq_act;     /* activations waiting for their steps' images */
    size_t seq_act_i, seq_act_j;
    int seq_round_n; /* contacts claimed in the round in flight */
    wc_map seq_tpls; /* "<step id>@<updated_at>" -> compiled wc_tpl */
    wc_buf seq_out;  /* render buffer */
    struct event *seq_timer, *seq_check_timer;
    uint64_t rng;
    media_state *media; /* media.c */
} scheduler;

/* trigger.c: claims a due campaign (or resumes a stale claim), moves its
 * expansion a step on, and leaves it (stop, failure). */
void claim(scheduler *s);
void exp_step(scheduler *s);
void end_expansion(scheduler *s);

/* A device the router may use: online, seen by a sender lately, not resting
 * (user in the given column, the online grace in ms as the given parameter). */
#define HEALTHY_DEVICE_OF(user_col, grace_param)                                                   \
    "EXISTS (SELECT 1 FROM user_devices d WHERE d.user_id = " user_col                             \
    " AND d.status = 'online' AND (d.resting_until IS NULL OR d.resting_until <= now())"           \
    " AND d.last_seen > now() - make_interval(secs => " grace_param "::float8 / 1000))"

/* Timers and callbacks of feeder.c and reconciler.c, started by main(). */
void on_feed_timer(evutil_socket_t fd, short what, void *arg);
void on_prune_timer(evutil_socket_t fd, short what, void *arg);
void on_waiting_timer(evutil_socket_t fd, short what, void *arg);
void on_reconcile(evutil_socket_t fd, short what, void *arg);
void on_fence_checked(void *arg, const wc_epoch_state *st);
/* For media.c: go on with a validated campaign (its leads), fail it with a
 * reason on its row, or drop the claim's work so it resumes later. */
void scheduler_expand(scheduler *s);
void fail_campaign(scheduler *s, const char *reason);
void abandon(scheduler *s, const char *why);

/* media.c: a campaign's image, prepared once when it is triggered. media_init
 * at start-up (exits on a bad allow-list), media_free at the end.
 * media_prepare is called once a claimed campaign passed validation: it
 * prepares the image (or finds it prepared) and then calls
 * scheduler_expand(), or fails the campaign with a reason naming what was
 * wrong, or abandons the claim when PostgreSQL is away; a campaign without
 * media_url goes straight on. */
void media_init(scheduler *s);
void media_free(scheduler *s);
void media_prepare(scheduler *s);
/* Any image (a sequence step's): prepares url once (or finds the
 * media:<sha256> it names) and calls done exactly once, maybe before
 * returning, with the sha256 of the stored JPEG; or with code and why when
 * the image is refused (counted by reason); or with neither, why saying
 * what failed (PostgreSQL away, no thread), to try again later. Not called
 * when the scheduler stops first. */
typedef void media_done_fn(scheduler *s, void *arg, const char *sha256, const char *code,
                           const char *why);
void media_prepare_url(scheduler *s, const char *url, media_done_fn *done, void *arg);
void media_metrics(struct evbuffer *out, scheduler *s);

/* sequences.c: its timers (started by main) and its cleanup. */
void sequences_start(scheduler *s);
void sequences_free(scheduler *s);

/* render.c: turning a lead into a message row. */

/* Template variables for one lead. */
typedef struct lead_vars {
    const char *name, *phone, *niche, *target_status;
    json_t *attrs;
    char num[64];
} lead_vars;

/* Longest raw text of an invalid phone stored or quoted as it is. */
#define INVALID_PHONE_MAX 100
/* Longest recipient_name stored. */
#define RECIPIENT_NAME_MAX 512

/* Appends one element (NULL: SQL NULL) to a PostgreSQL array literal. */
void append_array_text(struct evbuffer *b, const char *v, bool first);
/* Words for a wc_phone_normalize() reason code. */
const char *phone_reason_text(const char *why);
/* wc_tpl_lookup_fn over a lead_vars. */
const char *lead_lookup(void *ctx, const char *name, size_t namelen);
const char *stored_invalid_phone(char *buf, size_t size, const char *raw, const char *lead_id);
const char *stored_name(char *buf, size_t size, const char *raw);
/* strdup that aborts when out of memory; NULL gives "". */
char *dup_text(const char *v);

#endif
