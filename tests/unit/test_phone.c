/* Unit tests for wc_phone_normalize(): every acceptance rule and every
 * failure reason, with the input printed when a case fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "wc_phone.h"

static void check_ok_at(const char *raw, const char *cc, const char *want, const char *file,
                        int line)
{
    char out[WC_PHONE_E164_MAX];
    const char *reason = "unset";
    int rc = wc_phone_normalize(raw, cc, out, sizeof out, &reason);
    if (rc != 0)
        fail_msg("%s:%d: \"%s\" (default %s): want %s, got -1 reason %s", file, line, raw,
                 cc ? cc : "NULL", want, reason ? reason : "NULL");
    if (strcmp(out, want) != 0)
        fail_msg("%s:%d: \"%s\" (default %s): want %s, got %s", file, line, raw, cc ? cc : "NULL",
                 want, out);
}

static void check_fail_at(const char *raw, const char *cc, const char *want_reason,
                          const char *file, int line)
{
    char out[WC_PHONE_E164_MAX];
    memcpy(out, "garbage", 8);
    const char *reason = NULL;
    int rc = wc_phone_normalize(raw, cc, out, sizeof out, &reason);
    if (rc != -1)
        fail_msg("%s:%d: \"%s\" (default %s): want reason %s, got %s", file, line,
                 raw ? raw : "NULL", cc ? cc : "NULL", want_reason, out);
    if (!reason || strcmp(reason, want_reason) != 0)
        fail_msg("%s:%d: \"%s\" (default %s): want reason %s, got %s", file, line,
                 raw ? raw : "NULL", cc ? cc : "NULL", want_reason, reason ? reason : "NULL");
    if (out[0] != '\0')
        fail_msg("%s:%d: \"%s\": out not cleared on failure: %s", file, line, raw ? raw : "NULL",
                 out);
}

#define check_ok(raw, cc, want) check_ok_at(raw, cc, want, __FILE__, __LINE__)
#define check_fail(raw, cc, reason) check_fail_at(raw, cc, reason, __FILE__, __LINE__)

static void test_international_plus(void **state)
{
    check_ok("+60123456789", "60", "+60123456789");
    check_ok("+60 12-345 6789", "60", "+60123456789");
    check_ok("+60 (12) 345.6789", "62", "+60123456789");
    check_ok("+1 (212) 555-1234", "60", "+12125551234");
    check_ok("+44 20 7946 0958", "60", "+442079460958");
    check_ok("(+60) 12 345 6789", "60", "+60123456789");
    /* The default is never consulted for an international number. */
    check_ok("+60123456789", NULL, "+60123456789");
    check_ok("+6281234567890", "garbage", "+6281234567890");
}

static void test_international_00(void **state)
{
    check_ok("0060123456789", "60", "+60123456789");
    check_ok("00 60 12-345 6789", "62", "+60123456789");
    check_ok("0044 20 7946 0958", "60", "+442079460958");
    check_ok("0060123456789", NULL, "+60123456789");
}

static void test_default_code_without_plus(void **state)
{
    check_ok("60123456789", "60", "+60123456789");
    check_ok("601234567890", "60", "+601234567890"); /* 10-digit national number */
    check_ok("6281234567890", "62", "+6281234567890");
    check_ok("62812345678", "62", "+62812345678");
    check_ok("12125551234", "1", "+12125551234");
    check_ok("447911123456", "44", "+447911123456");
    check_ok("6591234567", "65", "+6591234567");
    check_ok("66812345678", "66", "+66812345678");
    check_ok("639171234567", "63", "+639171234567");
    check_ok("919876543210", "91", "+919876543210");
    /* "+60" is accepted as the default too. */
    check_ok("60123456789", "+60", "+60123456789");
    /* A code outside the table only needs a plausible E.164 total. */
    check_ok("491701234567", "49", "+491701234567");
}

static void test_plausibility_decides(void **state)
{
    /* Starts with 60 but 7 national digits is not a Malaysian number, so it
     * is local and gets the code prefixed. */
    check_ok("601234567", "60", "+60601234567");
    /* Singapore numbers have 8 national digits: 7 is local. */
    check_ok("659123456", "65", "+65659123456");
    /* NANP needs 10 after the 1. */
    check_ok("1212555123", "1", "+11212555123");
}

static void test_default_code_then_trunk_zero(void **state)
{
    check_ok("600123456789", "60", "+60123456789");
    check_ok("60 012-345 6789", "60", "+60123456789");
    check_ok("62 0812 3456 7890", "62", "+6281234567890");
}

static void test_trunk_zero(void **state)
{
    check_ok("012-345 6789", "60", "+60123456789");
    check_ok("(012) 345.6789", "60", "+60123456789");
    check_ok("0123456789", "60", "+60123456789");
    check_ok("03-2345 6789", "60", "+60323456789");
    check_ok("0812-3456-7890", "62", "+6281234567890");
    check_ok("07911 123456", "44", "+447911123456");
    check_ok("(0)12 345 6789", "60", "+60123456789");
}

static void test_no_trunk_zero(void **state)
{
    check_ok("123456789", "60", "+60123456789");
    check_ok("12 345 6789", "60", "+60123456789");
    check_ok("2125551234", "1", "+12125551234");
    check_ok("81234567890", "62", "+6281234567890");
    check_ok("91234567", "65", "+6591234567");
}

static void test_trunk_marker_in_international(void **state)
{
    check_ok("+44 (0)20 7946 0958", "60", "+442079460958");
    check_ok("+60 (0)12-345 6789", "62", "+60123456789");
    check_ok("0044 (0)20 7946 0958", "60", "+442079460958");
    /* Other parentheses are plain separators. */
    check_ok("+1 (212) 555 1234", "60", "+12125551234");
}

static void test_whatsapp_jid(void **state)
{
    check_ok("60123456789@s.whatsapp.net", "60", "+60123456789");
    check_ok("60123456789@s.whatsapp.net", "62", "+60123456789");
    check_ok("60123456789:12@s.whatsapp.net", "60", "+60123456789");
    check_ok("60123456789@c.us", "60", "+60123456789");
    check_ok("  60123456789@S.WhatsApp.Net \n", "60", "+60123456789");
    check_fail("120363025246125486@g.us", "60", "invalid_characters");
    check_fail("60123456789@s.whatsapp.net.evil", "60", "invalid_characters");
    check_fail("abc@s.whatsapp.net", "60", "invalid_characters");
    check_fail("60123456789:x@s.whatsapp.net", "60", "invalid_characters");
    check_fail("@s.whatsapp.net", "60", "empty");
    /* A JID is international: no default code is added or needed. */
    check_ok("6281234567890@s.whatsapp.net", NULL, "+6281234567890");
    check_fail("0123456789@s.whatsapp.net", "60", "invalid_country_code");
}

static void test_whitespace(void **state)
{
    check_ok("  +60 12 345 6789\r\n", "60", "+60123456789");
    check_ok("\t012\t345\t6789", "60", "+60123456789");
    check_ok("012\xc2\xa0"
             "345\xc2\xa0"
             "6789",
             "60", "+60123456789");
}

static void test_invalid_characters(void **state)
{
    check_fail("+60 12 345 abcd", "60", "invalid_characters");
    check_fail("60123456789x", "60", "invalid_characters");
    check_fail("60#123456789", "60", "invalid_characters");
    check_fail("60123456789/", "60", "invalid_characters");
    check_fail("60,123,456,789", "60", "invalid_characters");
    check_fail("60+123456789", "60", "invalid_characters");
    check_fail("++60123456789", "60", "invalid_characters");
    check_fail("+60 +123456789", "60", "invalid_characters");
    check_fail("tel:+60123456789", "60", "invalid_characters");
    check_fail("\xef\xbc\x96\xef\xbc\x90\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93\xef\xbc\x94\xef"
               "\xbc\x95\xef\xbc\x96\xef\xbc\x97\xef\xbc\x98", /* full-width digits */
               "60", "invalid_characters");
}

static void test_empty(void **state)
{
    check_fail(NULL, "60", "empty");
    check_fail("", "60", "empty");
    check_fail("   ", "60", "empty");
    check_fail(" - ( ) . ", "60", "empty");
}

static void test_too_short(void **state)
{
    check_fail("+6012345", "60", "too_short"); /* 7 digits */
    check_fail("12345", "60", "too_short");    /* +6012345 */
    check_fail("0", "60", "too_short");
    check_fail("+", "60", "too_short");
    check_fail("00", "60", "too_short");
    check_ok("+60123456", "60", "+60123456"); /* 8: the shortest allowed */
}

static void test_too_long(void **state)
{
    check_ok("+123456789012345", "60", "+123456789012345"); /* 15: the longest allowed */
    check_fail("+1234567890123456", "60", "too_long");
    check_fail("0123456789012345", "60", "too_long"); /* +60 and 15 digits */
    check_fail("+1234567890123456789012345678901234567890", "60", "too_long");
    check_fail("1234567890123456789012345678901234567890", "60", "too_long");
}

static void test_invalid_country_code(void **state)
{
    check_fail("+0123456789", "60", "invalid_country_code");
    check_fail("+ 0 60123456789", "60", "invalid_country_code");
    check_fail("000123456789", "60", "invalid_country_code");
}

static void test_invalid_default_country(void **state)
{
    check_fail("0123456789", NULL, "invalid_default_country");
    check_fail("123456789", "", "invalid_default_country");
    check_fail("123456789", "0", "invalid_default_country");
    check_fail("123456789", "06", "invalid_default_country");
    check_fail("123456789", "6000", "invalid_default_country");
    check_fail("123456789", "MY", "invalid_default_country");
}

static void test_buffer_and_reason_contract(void **state)
{
    char out[WC_PHONE_E164_MAX];
    const char *reason = NULL;
    char small[WC_PHONE_E164_MAX - 1] = "x";
    assert_int_equal(wc_phone_normalize("+60123456789", "60", small, sizeof small, &reason), -1);
    assert_string_equal(reason, "buffer_too_small");
    assert_string_equal(small, "");
    assert_int_equal(wc_phone_normalize("+60123456789", "60", NULL, 0, &reason), -1);
    assert_string_equal(reason, "buffer_too_small");
    /* reason may be NULL. */
    assert_int_equal(wc_phone_normalize("bad", "60", out, sizeof out, NULL), -1);
    assert_int_equal(wc_phone_normalize("012-345 6789", "60", out, sizeof out, NULL), 0);
    assert_string_equal(out, "+60123456789");
    /* The longest result fits exactly. */
    assert_int_equal(wc_phone_normalize("+123456789012345", "60", out, sizeof out, &reason), 0);
    assert_int_equal(strlen(out), WC_PHONE_E164_MAX - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_international_plus),
        cmocka_unit_test(test_international_00),
        cmocka_unit_test(test_default_code_without_plus),
        cmocka_unit_test(test_plausibility_decides),
        cmocka_unit_test(test_default_code_then_trunk_zero),
        cmocka_unit_test(test_trunk_zero),
        cmocka_unit_test(test_no_trunk_zero),
        cmocka_unit_test(test_trunk_marker_in_international),
        cmocka_unit_test(test_whatsapp_jid),
        cmocka_unit_test(test_whitespace),
        cmocka_unit_test(test_invalid_characters),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_too_short),
        cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_invalid_country_code),
        cmocka_unit_test(test_invalid_default_country),
        cmocka_unit_test(test_buffer_and_reason_contract),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
