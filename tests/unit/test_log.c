/* Unit tests for wc_log_redact_url(): no spelling of a connection target's
 * password reaches a log line, and the rest stays readable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "wc_log.h"

static void expect_redacted(const char *url, const char *want)
{
    char out[512];
    wc_log_redact_url(url, out, sizeof out);
    if (strcmp(out, want) != 0)
        fail_msg("redact(\"%s\")\n  got  \"%s\"\n  want \"%s\"", url, out, want);
    assert_null(strstr(out, "s3cr3t"));
}

static void test_url_forms(void **state)
{
    (void)state;
    expect_redacted("redis://:s3cr3t@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0");
    expect_redacted("redis://app:s3cr3t@redis:6379", "redis://app:***@redis:6379");
    expect_redacted("postgresql://wacast:s3cr3t@db:5432/wacast?sslmode=require",
                    "postgresql://wacast:***@db:5432/wacast?sslmode=require");
    /* An unencoded '@' or '/' inside the password. */
    expect_redacted("postgres://u:s3cr3t@x/y@db/wacast", "postgres://u:***@db/wacast");
    /* The password as a query parameter, alone, first, last, in any case. */
    expect_redacted("postgresql://db/wacast?password=s3cr3t",
                    "postgresql://db/wacast?password=***");
    expect_redacted("postgresql://wacast@db/wacast?password=s3cr3t&sslmode=require",
                    "postgresql://wacast@db/wacast?password=***&sslmode=require");
    expect_redacted("postgresql://db/wacast?sslmode=verify-full&sslpassword=s3cr3t",
                    "postgresql://db/wacast?sslmode=verify-full&sslpassword=***");
    expect_redacted("postgresql://db/w?PASSWORD=s3cr3t#frag",
                    "postgresql://db/w?PASSWORD=***#frag");
    expect_redacted("postgresql://u:s3cr3t@db/w?password=s3cr3t&sslpassword=s3cr3t",
                    "postgresql://u:***@db/w?password=***&sslpassword=***");
    /* Not a password key: left alone. */
    expect_redacted("postgresql://db/w?application_name=password",
                    "postgresql://db/w?application_name=password");
    expect_redacted("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0");
}

static void test_keyvalue_form(void **state)
{
    (void)state;
    expect_redacted("host=db dbname=wacast password=s3cr3t", "host=db dbname=wacast password=***");
    expect_redacted("password=s3cr3t host=db", "password=*** host=db");
    expect_redacted("host=db password = s3cr3t user=u", "host=db password = *** user=u");
    expect_redacted("host=db password='s3cr3t with \\' quote' user=u",
                    "host=db password=*** user=u");
    expect_redacted("host=db sslpassword=s3cr3t password=s3cr3t",
                    "host=db sslpassword=*** password=***");
    expect_redacted("host=db user=password", "host=db user=password");
    /* A "://" in a value does not make it a URL. */
    expect_redacted("host=db options='-c x=http://y' password=s3cr3t",
                    "host=db options='-c x=http://y' password=***");
    expect_redacted("", "");
}

/* A short output buffer cuts the line, never in the middle of a password:
 * it is masked first. */
static void test_cut_after_masking(void **state)
{
    (void)state;
    char out[24];
    wc_log_redact_url("postgresql://u:s3cr3ts3cr3ts3cr3t@db/wacast", out, sizeof out);
    assert_string_equal(out, "postgresql://u:***@db/w");
    wc_log_redact_url("host=db password=s3cr3ts3cr3ts3cr3t", out, sizeof out);
    assert_string_equal(out, "host=db password=***");
    /* Many short passwords: each grows to "***"; the output stays bounded. */
    char many[256] = "postgresql://db/w?";
    for (int i = 0; i < 20; i++)
        strcat(many, "password=&");
    char big[512];
    wc_log_redact_url(many, big, sizeof big);
    assert_non_null(strstr(big, "password=***&password=***&"));
    wc_log_redact_url(NULL, out, sizeof out);
    assert_string_equal(out, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_forms),
        cmocka_unit_test(test_keyvalue_form),
        cmocka_unit_test(test_cut_after_masking),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
