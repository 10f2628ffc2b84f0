/* Unit tests for wc_image_worker: jobs run off the loop and call back on
 * it once each, the job cap refuses one more, and freeing the worker with
 * jobs running waits for them and calls none back (ASan: nothing leaks). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>
#include <turbojpeg.h>

#include "wc_image_worker.h"

typedef struct done {
    int calls, ok, failed;
    struct event_base *base;
    int want;
} done;

static unsigned char *small_jpeg(size_t *len)
{
    unsigned char px[320 * 240 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (unsigned char)(i * 13);
    tjhandle tj = tjInitCompress();
    unsigned char *j = NULL;
    unsigned long n = 0;
    assert_int_equal(tjCompress2(tj, px, 320, 0, 240, TJPF_RGB, &j, &n, TJSAMP_420, 90, 0), 0);
    tjDestroy(tj);
    unsigned char *out = malloc(n);
    memcpy(out, j, n);
    tjFree(j);
    *len = n;
    return out;
}

static void on_done(void *arg, wc_image_result *r)
{
    done *d = arg;
    d->calls++;
    if (r->rc == 0) {
        assert_true(r->out.len > 0 && r->out.width == 320);
        d->ok++;
    } else {
        assert_string_equal(r->code, WC_IMAGE_E_HTML);
        d->failed++;
    }
    if (d->calls == d->want)
        event_base_loopbreak(d->base);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static void test_jobs_call_back_once(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    wc_image_worker *w = wc_image_worker_new(base, 2);
    assert_non_null(w);
    done d = {.base = base, .want = 2};
    size_t len;
    unsigned char *jpg = small_jpeg(&len);
    char *html = strdup("<html><body>no</body></html>");
    assert_int_equal(wc_image_worker_start(w, jpg, len, NULL, on_done, &d), 0);
    assert_int_equal(
        wc_image_worker_start(w, (unsigned char *)html, strlen(html), NULL, on_done, &d), 0);
    assert_int_equal(wc_image_worker_running(w), 2);
    /* Over the cap: refused, and the bytes are the worker's to free. */
    assert_int_equal(wc_image_worker_start(w, malloc(8), 8, NULL, on_done, &d), -1);
    assert_int_equal(d.calls, 0); /* never from inside start */
    struct event *deadline = evtimer_new(base, on_deadline, base);
    struct timeval tv = {10, 0};
    evtimer_add(deadline, &tv);
    event_base_loop(base, 0);
    assert_int_equal(d.calls, 2);
    assert_int_equal(d.ok, 1);
    assert_int_equal(d.failed, 1);
    assert_int_equal(wc_image_worker_running(w), 0);
    /* Freed with a job running: it is waited for, not called back. */
    jpg = small_jpeg(&len);
    assert_int_equal(wc_image_worker_start(w, jpg, len, NULL, on_done, &d), 0);
    wc_image_worker_free(w);
    assert_int_equal(d.calls, 2);
    event_free(deadline);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobs_call_back_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
