/* Unit tests for wc_config: the settings every daemon reads outside its own
 * table (log format, sealing keys, PGSSLMODE) are listed by --help and
 * checked at start, so a typo stops the daemon with the setting's name. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "wc_config.h"

struct cfg {
    char *database_url, *redis_url, *log_level, *bind, *instance_id;
    long port;
};

static const wc_cfg_entry table[] = {WC_CFG_COMMON(struct cfg)};
#define N (sizeof table / sizeof table[0])

static int load(int argc, char **argv, char *err, size_t errlen)
{
    struct cfg c = {0};
    int rc = wc_config_load(table, N, &c, argc, argv, "test", err, errlen);
    wc_config_free(table, N, &c);
    return rc;
}

static void test_bad_values_stop_the_start(void **state)
{
    (void)state;
    char *argv[] = {"t", NULL};
    char err[256] = "";
    setenv("WACAST_LOG_FORMAT", "yaml", 1);
    assert_int_equal(load(1, argv, err, sizeof err), -1);
    assert_non_null(strstr(err, "WACAST_LOG_FORMAT"));
    setenv("WACAST_LOG_FORMAT", "json", 1);
    setenv("PGSSLMODE", "requre", 1);
    assert_int_equal(load(1, argv, err, sizeof err), -1);
    assert_non_null(strstr(err, "PGSSLMODE"));
    assert_non_null(strstr(err, "verify-full"));
    setenv("PGSSLMODE", "require", 1);
    setenv("WACAST_SEAL_LEGACY", "maybe", 1);
    assert_int_equal(load(1, argv, err, sizeof err), -1);
    assert_non_null(strstr(err, "WACAST_SEAL_LEGACY"));
    unsetenv("WACAST_SEAL_LEGACY");
    assert_int_equal(load(1, argv, err, sizeof err), 0);
    unsetenv("WACAST_LOG_FORMAT");
    unsetenv("PGSSLMODE");
    assert_int_equal(load(1, argv, err, sizeof err), 0);
}

static void test_help_lists_common_settings(void **state)
{
    (void)state;
    fflush(stdout);
    FILE *tmp = tmpfile();
    int saved = dup(STDOUT_FILENO);
    dup2(fileno(tmp), STDOUT_FILENO);
    char *argv[] = {"t", "--help", NULL};
    char err[256] = "";
    int rc = load(2, argv, err, sizeof err);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    assert_int_equal(rc, 1);
    char buf[8192] = "";
    rewind(tmp);
    size_t n = fread(buf, 1, sizeof buf - 1, tmp);
    buf[n] = '\0';
    fclose(tmp);
    static const char *names[] = {
        "DATABASE_URL",       "REDIS_URL",          "PORT",
        "WACAST_LOG_FORMAT",  "WACAST_SECRET_KEY ", "WACAST_SECRET_KEY_PREVIOUS",
        "WACAST_SEAL_LEGACY", "PGSSLMODE"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strstr(buf, names[i]))
            fail_msg("--help does not list %s:\n%s", names[i], buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_values_stop_the_start),
        cmocka_unit_test(test_help_lists_common_settings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
