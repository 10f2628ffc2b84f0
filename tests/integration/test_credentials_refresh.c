/* A sender reads a device's sealed credentials only when they are new or
 * changed. The device list is re-read every WACAST_DEVICE_REFRESH_MS, and
 * it used to carry every device's sealed credentials as hex each time (at
 * 10,000 devices, megabytes every two seconds); now it carries their md5 and
 * the bytes are read for the devices whose digest changed. On real
 * redis-server and PostgreSQL, one sender and 20 sim devices with sealed
 * credentials: after many refreshes the credentials were read 20 times;
 * re-sealing one device's credentials reads them once more; a new device is
 * read once and taken; removing a device's
 * credentials reads nothing. Counted by wacast_sender_credentials_loaded_total
 * against wacast_sender_device_lists_read_total. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "e2e_common.h"
#include "wc_seal.h"

#define DEVICES 20
#define REFRESHES 15 /* device lists read between two looks at the count */

static wt_env env;
static PGconn *db;
static wc_seal_keys *keys;
static char user[40], dev[DEVICES + 1][40];
static int sport;

static double metric(const char *name)
{
    return e2e_metric(sport, name);
}

/* Seals {"note": note} for device id and writes it to its row. */
static void seal_into(const char *id, const char *note)
{
    char plain[128];
    snprintf(plain, sizeof plain, "{\"note\": \"%s\"}", note);
    uint8_t *sealed = NULL;
    size_t len = 0;
    assert_int_equal(wc_seal(keys, id, plain, strlen(plain), &sealed, &len), 0);
    char *hex = malloc(len * 2 + 1);
    assert_non_null(hex);
    sodium_bin2hex(hex, len * 2 + 1, sealed, len);
    PQclear(wt_sql(db, "UPDATE user_devices SET credentials = '\\x%s' WHERE id = '%s'", hex, id));
    free(hex);
    free(sealed);
}

static int setup(void **state)
{
    (void)state;
    if (sodium_init() < 0 || wt_env_start(&env, WT_REDIS | WT_PG | WT_MIGRATE) < 0)
        return -1;
    db = wt_pg(&env);
    char secret[65], err[256];
    wc_seal_keygen(secret);
    if (wc_seal_init(&keys, secret, NULL, err, sizeof err) < 0)
        return -1;
    wt_sql_text(db, user, sizeof user, "INSERT INTO users (name) VALUES ('u') RETURNING id");
    for (int k = 0; k < DEVICES; k++) {
        wt_sql_text(db, dev[k], sizeof dev[k],
                    "INSERT INTO user_devices (user_id, platform) VALUES ('%s', 'sim')"
                    " RETURNING id",
                    user);
        seal_into(dev[k], "first");
    }
    sport = wt_free_port();
    char port[32], key_env[160];
    snprintf(port, sizeof port, "PORT=%d", sport);
    snprintf(key_env, sizeof key_env, "WACAST_SECRET_KEY=%s", secret);
    const char *envv[] = {"WACAST_DEVICE_REFRESH_MS=100", port, key_env, NULL};
    return wt_spawn(&env, "wacast-sender", "sender", envv) > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (db)
        PQfinish(db);
    wc_seal_keys_free(keys);
    wt_env_stop(&env);
    return 0;
}

typedef struct want {
    const char *name;
    double value;
} want;

static bool metric_is(void *arg)
{
    const want *w = arg;
    return metric(w->name) == w->value;
}

static bool metric_at_least(void *arg)
{
    const want *w = arg;
    return metric(w->name) >= w->value;
}

/* Waits for REFRESHES more device lists, then says how many credentials
 * were read in all. */
static double loaded_after_refreshes(void)
{
    want lists = {"wacast_sender_device_lists_read_total",
                  metric("wacast_sender_device_lists_read_total") + REFRESHES};
    if (!wt_wait_for(metric_at_least, &lists, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("the sender stopped reading its device list");
    }
    return metric("wacast_sender_credentials_loaded_total");
}

static void wait_metric(const char *name, double value, const char *what)
{
    want w = {name, value};
    if (!wt_wait_for(metric_is, &w, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("%s: %s is %.0f, expected %.0f", what, name, metric(name), value);
    }
}

static bool all_online(void *arg)
{
    (void)arg;
    return wt_sql_long(db, "SELECT count(*) FROM user_devices WHERE status = 'online'") == DEVICES;
}

static void test_credentials_read_once_per_change(void **state)
{
    (void)state;
    wait_metric("wacast_sender_devices_held", DEVICES, "taking the devices");
    /* Every device opened with its credentials (their rows say online). */
    if (!wt_wait_for(all_online, NULL, 60000)) {
        wt_dump_logs(&env, 30);
        fail_msg("not every device came online with its credentials");
    }
    assert_true(loaded_after_refreshes() == DEVICES);

    /* One device's credentials re-sealed: read again once. */
    seal_into(dev[3], "rotated");
    wait_metric("wacast_sender_credentials_loaded_total", DEVICES + 1, "rotated credentials");
    assert_true(loaded_after_refreshes() == DEVICES + 1);

    /* A new device: its credentials read once, and it is taken. */
    wt_sql_text(db, dev[DEVICES], sizeof dev[DEVICES],
                "INSERT INTO user_devices (user_id, platform) VALUES ('%s', 'sim') RETURNING id",
                user);
    seal_into(dev[DEVICES], "new");
    wait_metric("wacast_sender_devices_held", DEVICES + 1, "taking the new device");
    assert_true(loaded_after_refreshes() == DEVICES + 2);

    /* Credentials removed: nothing to read. */
    PQclear(wt_sql(db, "UPDATE user_devices SET credentials = NULL WHERE id = '%s'", dev[5]));
    assert_true(loaded_after_refreshes() == DEVICES + 2);
    fprintf(stderr, "%.0f device lists read, %.0f credentials read\n",
            metric("wacast_sender_device_lists_read_total"),
            metric("wacast_sender_credentials_loaded_total"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_credentials_read_once_per_change),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
