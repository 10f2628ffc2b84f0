/* Unit tests for the file part of an upload's multipart/form-data body
 * (wc_multipart_file, behind POST /api/media): the part named "file" after
 * other fields, else the first part with a filename; boundaries quoted,
 * followed by parameters, of 70 characters (71 refused); a preamble; and
 * each malformed body refused: no boundary, a part never closed, headers
 * never ended, no file part at all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "wc_multipart.h"

static int file_of(const char *ctype, const char *body, const char **part, size_t *len)
{
    const unsigned char *p = NULL;
    int rc = wc_multipart_file(ctype, (const unsigned char *)body, strlen(body), &p, len);
    *part = (const char *)p;
    return rc;
}

static void assert_part(const char *ctype, const char *body, const char *want)
{
    const char *part;
    size_t len;
    assert_int_equal(file_of(ctype, body, &part, &len), 0);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(part, want, len);
}

static void assert_refused(const char *ctype, const char *body)
{
    const char *part;
    size_t len;
    assert_int_equal(file_of(ctype, body, &part, &len), -1);
}

static void test_file_part_after_fields(void **state)
{
    (void)state;
    assert_part("multipart/form-data; boundary=XyZ",
                "--XyZ\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nhi\r\n"
                "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
                "Content-Type: image/jpeg\r\n\r\nJPEG\r\nbytes\r\n--XyZ--\r\n",
                "JPEG\r\nbytes");
}

static void test_first_part_with_filename(void **state)
{
    (void)state;
    assert_part("multipart/form-data; boundary=B",
                "--B\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nhi\r\n"
                "--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
                "\r\nPNG1\r\n--B\r\nContent-Disposition: form-data; name=\"other\";"
                " filename=\"y.png\"\r\n\r\nPNG2\r\n--B--",
                "PNG1");
}

static void test_boundaries(void **state)
{
    (void)state;
    const char *body = "preamble\r\n--a b\r\nContent-Disposition: form-data; name=\"file\"\r\n"
                       "\r\nX\r\n--a b--\r\n";
    assert_part("multipart/form-data; boundary=\"a b\"", body, "X");
    assert_part("Multipart/Form-Data; BOUNDARY=B; charset=utf-8",
                "--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n\r\n--B--", "");
    char b70[71], ctype[128], form[512];
    memset(b70, 'q', 70);
    b70[70] = '\0';
    snprintf(ctype, sizeof ctype, "multipart/form-data; boundary=%s", b70);
    snprintf(form, sizeof form,
             "--%s\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nZ\r\n--%s--", b70, b70);
    assert_part(ctype, form, "Z");
    snprintf(ctype, sizeof ctype, "multipart/form-data; boundary=%sq", b70);
    snprintf(form, sizeof form,
             "--%sq\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nZ\r\n--%sq--", b70,
             b70);
    assert_refused(ctype, form);
}

static void test_malformed_refused(void **state)
{
    (void)state;
    const char *file = "--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nZ\r\n--B--";
    assert_refused("multipart/form-data", file);
    assert_refused("multipart/form-data; boundary=", file);
    assert_refused("multipart/form-data; boundary=\"\"", file);
    assert_refused("multipart/form-data; boundary=B",
                   "--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nnever closed");
    assert_refused("multipart/form-data; boundary=B", "--B\r\nContent-Disposition: form-data");
    assert_refused("multipart/form-data; boundary=B",
                   "--B\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nhi\r\n--B--");
    assert_refused("multipart/form-data; boundary=B", "--B--\r\n");
    assert_refused("multipart/form-data; boundary=B", "");
    assert_refused("multipart/form-data; boundary=C", file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_part_after_fields),
        cmocka_unit_test(test_first_part_with_filename),
        cmocka_unit_test(test_boundaries),
        cmocka_unit_test(test_malformed_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
