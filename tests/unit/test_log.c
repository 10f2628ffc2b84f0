/* Unit tests for wc_log_redact_url(): no spelling of a connection target's
 * password reaches a log line, and the rest stays readable; and for the JSON
 * line format (WACAST_LOG_FORMAT=json): every line one valid JSON object,
 * whatever bytes the message holds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

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

/* Runs fn with stderr sent to a temporary file; returns what it wrote. */
static char *capture_stderr(void (*fn)(void))
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
    fn();
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    long len = ftell(tmp);
    assert_true(len >= 0);
    char *buf = calloc(1, (size_t)len + 1);
    rewind(tmp);
    assert_int_equal(fread(buf, 1, (size_t)len, tmp), (size_t)len);
    fclose(tmp);
    return buf;
}

static void log_some_lines(void)
{
    wc_warn("quote \" backslash \\ newline \n tab \t bell \a e-acute \xc3\xa9 bad \xff end");
    char big[3000];
    memset(big, 'x', sizeof big - 3);
    memcpy(big + sizeof big - 3, "\xc3\xa9", 3); /* a character at the cut */
    wc_error("%s", big);
}

static void test_json_lines(void **state)
{
    (void)state;
    assert_int_equal(wc_log_set_format("xml"), -1);
    assert_int_equal(wc_log_set_format("json"), 0);
    wc_log_set_name("wacast-test");
    char *out = capture_stderr(log_some_lines);
    assert_int_equal(wc_log_set_format("text"), 0);
    char *second = strchr(out, '\n');
    assert_non_null(second);
    *second++ = '\0';
    json_error_t jerr;
    json_t *a = json_loads(out, 0, &jerr);
    if (!a)
        fail_msg("line 1 is not JSON (%s): %s", jerr.text, out);
    assert_string_equal(json_string_value(json_object_get(a, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(a, "daemon")), "wacast-test");
    assert_int_equal(json_integer_value(json_object_get(a, "pid")), getpid());
    assert_non_null(json_string_value(json_object_get(a, "ts")));
    assert_string_equal(json_string_value(json_object_get(a, "msg")),
                        "quote \" backslash \\ newline \n tab \t bell \a e-acute \xc3\xa9 bad "
                        "\xef\xbf\xbd end");
    json_decref(a);
    char *end = strchr(second, '\n');
    assert_non_null(end);
    assert_int_equal(end[1], '\0');
    *end = '\0';
    json_t *b = json_loads(second, 0, &jerr);
    if (!b)
        fail_msg("the long line is not JSON (%s)", jerr.text);
    assert_string_equal(json_string_value(json_object_get(b, "level")), "error");
    const char *msg = json_string_value(json_object_get(b, "msg"));
    assert_non_null(msg);
    assert_true(strlen(msg) > 1000 && strspn(msg, "x") >= 1000);
    json_decref(b);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_forms),
        cmocka_unit_test(test_keyvalue_form),
        cmocka_unit_test(test_cut_after_masking),
        cmocka_unit_test(test_json_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
