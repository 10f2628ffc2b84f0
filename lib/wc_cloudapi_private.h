/* What the two files of the cloudapi transport share (wc_cloudapi.c: the
 * device, its sends and the number's token bucket; wc_cloudapi_media.c: a
 * prepared image's id on a number). Not for anything else. */
#ifndef WC_CLOUDAPI_PRIVATE_H
#define WC_CLOUDAPI_PRIVATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "wc_httpc.h"
#include "wc_httpjson.h"
#include "wc_transport.h"

struct event;
struct event_base;
struct wc_redis;

#define CA_MEDIA_ID_MAX 64

typedef struct ca_bucket ca_bucket;
typedef struct ca_send ca_send;
typedef struct ca_upload ca_upload;

typedef struct ca_device {
    wc_httpjson_device hj; /* first: what every HTTP + JSON device holds */
    char phone_number_id[64];
    char *messages_url;
    char *media_url;   /* POST here uploads an image */
    char *auth_header; /* "Authorization: Bearer ..."; wiped on close */
    ca_bucket *bucket;
    struct wc_redis *redis;       /* where media ids are shared (env->redis) */
    const wc_media_source *media; /* prepared images (env->media) */
    long media_id_ttl_s;
} ca_device;

struct ca_send {
    wc_httpjson_send hj; /* first: the shared send life cycle; hj.body is the JSON body */
    ca_device *dev;
    ca_send *qnext; /* the bucket's queue */
    bool queued;
    size_t body_len;
    /* A prepared image (media:<sha256>): hj.draft is the message without its
     * image id; the request is built once the id on the number is known. */
    char sha[WC_MEDIA_SHA_LEN + 1];
    ca_upload *upload; /* waiting on it (unext links its waiters) */
    ca_send *unext;
    char media_id[CA_MEDIA_ID_MAX]; /* the id it went out with */
    bool reuploaded;                /* Meta refused an id once: no second time */
};

/* One prepared image on one number (bucket): the media id it has there, and
 * the one look-up or upload in flight that every send of it waits for. */
struct ca_upload {
    ca_upload *next; /* the bucket's */
    ca_bucket *bucket;
    char sha[WC_MEDIA_SHA_LEN + 1];
    char media_id[CA_MEDIA_ID_MAX]; /* "" until known */
    int64_t id_until_us;            /* monotonic: reused until then */
    char stale[CA_MEDIA_ID_MAX];    /* an id Meta refused: never taken from Redis again */
    bool busy;                      /* holds a reference on the bucket */
    ca_send *waiters;
    wc_media_wait *wait;        /* reading the bytes */
    const wc_media_source *src; /* ...from there */
    wc_httpc_call *call;        /* the upload */
    long ttl_s;                 /* how long its id is reused */
    /* Across senders: one uploads (holding the lock in Redis), the others
     * look for the id every CA_UPLOAD_POLL_MS until the lock's time is up. */
    struct wc_redis *redis; /* the first waiter's, for this step */
    bool locked;            /* this sender holds the lock */
    char lock_token[96];    /* the lock's value: released only while it holds this */
    int64_t wait_until_us;  /* monotonic: stop waiting for another's upload (0: not waiting) */
    struct event *poll;
};

/* One per (base_url, phone_number_id) on an event base. */
struct ca_bucket {
    ca_bucket *next;
    int refs;
    struct event_base *base;
    char *key;
    double mps;
    double burst;
    double tokens;
    int64_t refilled_us;
    int64_t paused_until_us; /* after a 130429 every send on the number waits */
    int throttle_streak;
    ca_send *qhead, *qtail;
    struct event *timer;
    char phone_number_id[64];
    ca_upload *uploads;
};

/* wc_cloudapi.c */

/* Sends s at once when a token is free and nobody waits; otherwise queues it. */
void ca_bucket_take(ca_bucket *b, ca_send *s);
/* Drops a reference; the last one frees the bucket and its uploads. */
void ca_bucket_release(ca_bucket *b);
/* A Cloud API error's numeric code (a number, or digits in a string), or -1. */
long ca_error_code_of(json_t *jcode);

/* wc_cloudapi_media.c */

/* Finds the image id of s's prepared image (s->sha) on its number, then
 * hands s to the bucket; every end before that is reported on a later loop
 * turn, never from inside send(). */
void ca_media_resolve(ca_send *s);
/* For a reply to a send that carried an id we uploaded: when Meta refused
 * the id (code 100), forgets it, uploads again once and returns true (the
 * send goes on); false otherwise. */
bool ca_media_reupload(ca_send *s, const wc_httpc_resp *resp);
/* s's device is closing: s stops waiting for its image id. */
void ca_media_leave(ca_send *s);
/* Frees an upload of a bucket being freed (none is busy then). */
void ca_media_free(ca_upload *u);

#endif
