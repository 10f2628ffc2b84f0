/* wc_image_prepare off the event loop: each job runs on a thread of its own
 * (a 12-megapixel JPEG takes a CPU-tenth of a second, a 40-megapixel PNG
 * more; a daemon's loop must not wait for that), and its callback runs on
 * the loop when it is done. At most max_jobs run at once.
 *
 * Contract:
 * - wc_image_worker_start() takes the input bytes (malloc'd; freed by the
 *   worker in every case, also on failure to start).
 * - The callback runs exactly once per started job, later, from the loop.
 *   The result is the worker's; r->out.jpeg may be taken (set it to NULL).
 *   Starting jobs from a callback is fine; freeing the worker is not.
 * - wc_image_worker_free() waits for running jobs to finish (bounded by the
 *   image limits) and calls none of their callbacks. */
#ifndef WC_IMAGE_WORKER_H
#define WC_IMAGE_WORKER_H

#include <stddef.h>

#include "wc_image.h"

struct event_base;
typedef struct wc_image_worker wc_image_worker;

typedef struct wc_image_result {
    int rc;           /* wc_image_prepare's */
    const char *code; /* when rc < 0 */
    char why[256];
    wc_image_out out; /* when rc == 0 */
    size_t in_len;
    double seconds; /* thread time from start to end */
} wc_image_result;

typedef void wc_image_done_cb(void *arg, wc_image_result *r);

/* NULL when out of memory or no pipe. */
wc_image_worker *wc_image_worker_new(struct event_base *base, int max_jobs);
void wc_image_worker_free(wc_image_worker *w);
/* 0, or -1 when max_jobs already run or no thread could start (bytes freed
 * either way; the callback will not run). */
int wc_image_worker_start(wc_image_worker *w, unsigned char *bytes, size_t len,
                          const wc_image_opts *opts, wc_image_done_cb *cb, void *arg)
    __attribute__((warn_unused_result));
int wc_image_worker_running(const wc_image_worker *w);

#endif
