/* Unit tests for wc_origin: origins as libcurl reads them, links resolved
 * against a gateway, and the allow-list of provider base URLs that decides
 * where a device's credentials may be sent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wc_origin.h"

static void test_parse_and_compare(void **state)
{
    (void)state;
    wc_origin a, b;
    char path[128];
    assert_int_equal(wc_origin_parse("HTTPS://Graph.Facebook.com/v23.0", &a, path, sizeof path), 0);
    assert_string_equal(a.scheme, "https");
    assert_string_equal(a.host, "graph.facebook.com");
    assert_int_equal(a.port, 443);
    assert_string_equal(path, "/v23.0");
    assert_int_equal(wc_origin_parse("https://graph.facebook.com:443", &b, NULL, 0), 0);
    assert_true(wc_origin_equal(&a, &b));
    assert_int_equal(wc_origin_parse("http://graph.facebook.com", &b, NULL, 0), 0);
    assert_false(wc_origin_equal(&a, &b)); /* scheme */
    assert_int_equal(wc_origin_parse("https://graph.facebook.com:8443", &b, NULL, 0), 0);
    assert_false(wc_origin_equal(&a, &b)); /* port */
    /* The host is the one after the user info, as curl would connect to it. */
    assert_int_equal(wc_origin_parse("http://127.0.0.1:80@evil.example/x", &b, NULL, 0), -1);
    assert_int_equal(wc_origin_parse("ftp://x/", &b, NULL, 0), -1);
    assert_int_equal(wc_origin_parse("/relative", &b, NULL, 0), -1);
    assert_int_equal(wc_origin_parse(NULL, &b, NULL, 0), -1);
    char text[300];
    assert_int_equal(wc_origin_parse("http://[::1]:3000/", &b, NULL, 0), 0);
    wc_origin_format(&b, text, sizeof text);
    assert_string_equal(text, "http://[::1]:3000");
}

static void test_resolve(void **state)
{
    (void)state;
    const char *base = "http://gw.internal:3000/gowa";
    struct {
        const char *link, *want;
    } cases[] = {
        {"/statics/qr.png", "http://gw.internal:3000/statics/qr.png"},
        {"qr.png", "http://gw.internal:3000/qr.png"},
        {"//evil.example/qr.png", "http://evil.example/qr.png"},
        {"https://evil.example/qr.png", "https://evil.example/qr.png"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *got = wc_origin_resolve(base, cases[i].link);
        assert_non_null(got);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("resolve(%s): got %s, want %s", cases[i].link, got, cases[i].want);
        free(got);
    }
    assert_null(wc_origin_resolve("not a url", "/x"));
}

static bool allowed(const char *list, const char *url)
{
    char why[256] = "";
    bool ok = wc_provider_url_allowed(list, url, why, sizeof why);
    assert_true(ok == (why[0] == '\0'));
    return ok;
}

static void test_allow_list(void **state)
{
    (void)state;
    /* The default: Meta's Graph API only. */
    assert_true(allowed(NULL, "https://graph.facebook.com"));
    assert_true(allowed(NULL, "https://graph.facebook.com/"));
    assert_true(allowed(NULL, "https://GRAPH.facebook.com:443/v23.0"));
    assert_false(allowed(NULL, "http://graph.facebook.com"));
    assert_false(allowed(NULL, "https://graph.facebook.com.evil.example"));
    assert_false(allowed(NULL, "https://graph.facebook.com:444"));
    assert_false(allowed(NULL, "https://graph.facebook.com@evil.example"));
    assert_false(allowed(NULL, "https://evil.example#@graph.facebook.com"));
    assert_false(allowed(NULL, "https://evil.example/?graph.facebook.com"));
    assert_false(allowed(NULL, "https://evil.example\\@graph.facebook.com"));
    assert_false(allowed(NULL, "https://graph.facebook.com /x"));
    assert_false(allowed(NULL, "http://127.0.0.1:3000"));
    /* An explicit list replaces the default. */
    const char *list = " http://127.0.0.1:3000 , http://gw.internal:8080/acme,,";
    assert_true(allowed(list, "http://127.0.0.1:3000/"));
    assert_false(allowed(list, "http://127.0.0.1:3001"));
    assert_false(allowed(list, "https://graph.facebook.com"));
    assert_true(allowed(list, "http://gw.internal:8080/acme"));
    assert_true(allowed(list, "http://gw.internal:8080/acme/"));
    assert_true(allowed(list, "http://gw.internal:8080/acme/v1"));
    assert_false(allowed(list, "http://gw.internal:8080/acmex"));
    assert_false(allowed(list, "http://gw.internal:8080/"));
    assert_false(allowed(list, "http://gw.internal:8080/acme/../other"));
    /* Empty: nothing. */
    assert_false(allowed("", "https://graph.facebook.com"));
    /* The reason names the origin, never user info. */
    char why[256];
    assert_false(wc_provider_url_allowed(NULL, "http://evil.example:9/x", why, sizeof why));
    assert_string_equal(why, "base_url not allowed: http://evil.example:9 (not in "
                             "WACAST_PROVIDER_HOSTS)");
    assert_false(wc_provider_url_allowed(NULL, "http://u:hunter2@evil.example/", why, sizeof why));
    assert_null(strstr(why, "hunter2"));
    assert_non_null(strstr(why, "not a valid"));
}

static void test_list_check(void **state)
{
    (void)state;
    char err[256];
    assert_int_equal(wc_provider_hosts_check(WC_PROVIDER_HOSTS_DEFAULT, err, sizeof err), 0);
    assert_int_equal(wc_provider_hosts_check("", err, sizeof err), 0);
    assert_int_equal(wc_provider_hosts_check("http://a:1, https://b/c ,", err, sizeof err), 0);
    assert_int_equal(wc_provider_hosts_check("http://a:1,graph.facebook.com", err, sizeof err), -1);
    assert_non_null(strstr(err, "'graph.facebook.com' is not a base URL"));
    assert_int_equal(wc_provider_hosts_check("https://x?y", err, sizeof err), -1);
    assert_int_equal(wc_provider_hosts_check("ftp://x", err, sizeof err), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_compare),
        cmocka_unit_test(test_resolve),
        cmocka_unit_test(test_allow_list),
        cmocka_unit_test(test_list_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
