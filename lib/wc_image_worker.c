/* Image jobs on threads, completions back on the loop through a pipe (see
 * wc_image_worker.h). The thread touches only its job; the job's pointer
 * travels through the pipe (one write of a pointer is atomic: < PIPE_BUF). */
#include "wc_image_worker.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

typedef struct job job;
struct job {
    wc_image_worker *w;
    job *next;
    pthread_t thread;
    unsigned char *in;
    wc_image_opts opts;
    wc_image_result r;
    wc_image_done_cb *cb;
    void *arg;
};

struct wc_image_worker {
    struct event_base *base;
    int pipe[2];
    struct event *ev;
    job *running;
    int nrunning, max_jobs;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *run(void *arg)
{
    job *j = arg;
    double t0 = now_s();
    j->r.rc = wc_image_prepare(j->in, j->r.in_len, &j->opts, &j->r.out, &j->r.code, j->r.why,
                               sizeof j->r.why);
    j->r.seconds = now_s() - t0;
    ssize_t n;
    do
        n = write(j->w->pipe[1], &j, sizeof j);
    while (n < 0 && errno == EINTR);
    return NULL;
}

static void unlink_job(wc_image_worker *w, job *j)
{
    for (job **p = &w->running; *p; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            w->nrunning--;
            return;
        }
}

static void job_free(job *j)
{
    free(j->in);
    wc_image_out_free(&j->r.out);
    free(j);
}

static void on_done(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    wc_image_worker *w = arg;
    job *j;
    while (read(fd, &j, sizeof j) == (ssize_t)sizeof j) {
        pthread_join(j->thread, NULL);
        unlink_job(w, j);
        j->cb(j->arg, &j->r);
        job_free(j);
    }
}

wc_image_worker *wc_image_worker_new(struct event_base *base, int max_jobs)
{
    wc_image_worker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->base = base;
    w->max_jobs = max_jobs > 0 ? max_jobs : 1;
    if (pipe(w->pipe) < 0) {
        free(w);
        return NULL;
    }
    fcntl(w->pipe[0], F_SETFL, O_NONBLOCK);
    fcntl(w->pipe[0], F_SETFD, FD_CLOEXEC);
    fcntl(w->pipe[1], F_SETFD, FD_CLOEXEC);
    w->ev = event_new(base, w->pipe[0], EV_READ | EV_PERSIST, on_done, w);
    if (!w->ev || event_add(w->ev, NULL) < 0) {
        wc_image_worker_free(w);
        return NULL;
    }
    return w;
}

void wc_image_worker_free(wc_image_worker *w)
{
    if (!w)
        return;
    while (w->running) {
        job *j = w->running;
        w->running = j->next;
        pthread_join(j->thread, NULL);
        job_free(j);
    }
    if (w->ev)
        event_free(w->ev);
    close(w->pipe[0]);
    close(w->pipe[1]);
    free(w);
}

int wc_image_worker_start(wc_image_worker *w, unsigned char *bytes, size_t len,
                          const wc_image_opts *opts, wc_image_done_cb *cb, void *arg)
{
    job *j = w && w->nrunning < w->max_jobs ? calloc(1, sizeof *j) : NULL;
    if (!j) {
        free(bytes);
        return -1;
    }
    j->w = w;
    j->in = bytes;
    j->r.in_len = len;
    if (opts)
        j->opts = *opts;
    j->cb = cb;
    j->arg = arg;
    if (pthread_create(&j->thread, NULL, run, j) != 0) {
        free(bytes);
        free(j);
        return -1;
    }
    j->next = w->running;
    w->running = j;
    w->nrunning++;
    return 0;
}

int wc_image_worker_running(const wc_image_worker *w)
{
    return w ? w->nrunning : 0;
}
