/* Unit tests for wc_text: untrusted text comes out valid UTF-8, NUL-free and
 * bounded, cut only on a character boundary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "wc_text.h"

/* 300 x "é" (2 bytes each), the provider error that froze the sink. */
static void test_multibyte_cut_on_boundary(void **state)
{
    (void)state;
    char src[601];
    for (int i = 0; i < 300; i++)
        memcpy(src + 2 * i, "\xC3\xA9", 2);
    src[600] = '\0';
    char dst[256];
    bool changed = false;
    size_t n = wc_text_clean(dst, sizeof dst, src, (size_t)-1, &changed);
    assert_true(changed);
    assert_int_equal(n, 254); /* 127 whole characters; the 128th would not fit */
    assert_int_equal(strlen(dst), n);
    assert_true(wc_text_valid(dst, n));
}

static void test_snprintf_cut_fixed_in_place(void **state)
{
    (void)state;
    char buf[256];
    char src[601];
    for (int i = 0; i < 300; i++)
        memcpy(src + 2 * i, "\xC3\xA9", 2);
    src[600] = '\0';
    /* What snprintf(buf, 256, "%s", src) leaves: 255 bytes, half a character at the end. */
    memcpy(buf, src, sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    assert_false(wc_text_valid(buf, strlen(buf)));
    size_t n = wc_text_fix(buf);
    assert_int_equal(n, 254);
    assert_true(wc_text_valid(buf, n));
    /* A 4-byte character cut after 3 bytes. */
    char emoji[] = "ok \xF0\x9F\x98";
    assert_int_equal(wc_text_fix(emoji), 3);
    assert_string_equal(emoji, "ok ");
}

static void test_invalid_bytes_replaced(void **state)
{
    (void)state;
    const char cases[][2][32] = {
        {"a\xFF"
         "b",
         "a\xEF\xBF\xBD"
         "b"},
        {"\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"},                                 /* overlong '/' */
        {"\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},                 /* surrogate */
        {"\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* > U+10FFFF */
        {"\xC3", "\xEF\xBF\xBD"},       /* cut short, not at the limit */
        {"caf\xC3\xA9", "caf\xC3\xA9"}, /* valid stays as it is */
        {"\xF0\x9F\x98\x80!", "\xF0\x9F\x98\x80!"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char dst[64];
        size_t n = wc_text_clean(dst, sizeof dst, cases[i][0], (size_t)-1, NULL);
        if (strcmp(dst, cases[i][1]) != 0)
            fail_msg("case %zu: got \"%s\"", i, dst);
        assert_true(wc_text_valid(dst, n));
    }
}

static void test_nul_and_controls(void **state)
{
    (void)state;
    const char src[] = "a\0b\x01\tc\nd\x7F";
    char dst[32];
    bool changed = false;
    size_t n = wc_text_clean(dst, sizeof dst, src, sizeof src - 1, &changed);
    assert_true(changed);
    assert_int_equal(n, sizeof src - 1);
    assert_memory_equal(dst, "a b \tc\nd ", n);
    assert_false(wc_text_valid(src, sizeof src - 1));
}

static void test_replacement_never_overflows(void **state)
{
    (void)state;
    /* Every byte invalid: each becomes 3 bytes, and the cut stays whole. */
    char src[100];
    memset(src, 0xFF, sizeof src);
    for (size_t size = 1; size < 20; size++) {
        char dst[20];
        memset(dst, 'Z', sizeof dst);
        size_t n = wc_text_clean(dst, size, src, sizeof src, NULL);
        assert_true(n < size);
        assert_int_equal(n % 3, 0);
        assert_int_equal(dst[n], '\0');
        for (size_t k = size; k < sizeof dst; k++)
            assert_int_equal(dst[k], 'Z');
    }
    char one[1];
    assert_int_equal(wc_text_clean(one, 1, "abc", 3, NULL), 0);
    assert_int_equal(one[0], '\0');
    char null_src[4];
    assert_int_equal(wc_text_clean(null_src, sizeof null_src, NULL, 0, NULL), 0);
}

static void test_one_line_and_tokens(void **state)
{
    (void)state;
    char dst[32];
    const char *page = "<h1>502</h1>\n\tBad";
    assert_int_equal(wc_text_clean_line(dst, sizeof dst, page, strlen(page)), strlen(page));
    assert_string_equal(dst, "<h1>502</h1>  Bad");
    assert_true(wc_text_is_token("wamid.HBgL=", 11));
    assert_false(wc_text_is_token("", 0));
    assert_false(wc_text_is_token("a b", 3));
    assert_false(wc_text_is_token("caf\xC3\xA9", 5));
    assert_false(wc_text_is_token("a\0b", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multibyte_cut_on_boundary),
        cmocka_unit_test(test_snprintf_cut_fixed_in_place),
        cmocka_unit_test(test_invalid_bytes_replaced),
        cmocka_unit_test(test_nul_and_controls),
        cmocka_unit_test(test_replacement_never_overflows),
        cmocka_unit_test(test_one_line_and_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
