/* Unit tests for wc_seal: round trip, tamper detection, binding to the
 * device id, the legacy (unbound) format, key rotation and key string
 * validation (with errors that never echo the key). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "wc_seal.h"

static const char *KEY_A = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
static const char *KEY_B = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
static const char *DEV_A = "7d1c2f00-0000-4000-8000-00000000000a";
static const char *DEV_B = "7d1c2f00-0000-4000-8000-00000000000b";

/* {"access_token":"legacy-token"} sealed with KEY_A by the version 1 code
 * (secretbox, before device binding), as rows written before the upgrade hold it. */
static const char *LEGACY_HEX =
    "0135bfb168f7b4bdb1b2c76050ff6ee3582c524cece5ee44a92b94b2a23dbe00347a1cba1d1a0e752276f34fa2e1"
    "70fd864c6f909429d150503f4fcd9a98035714269397f58f8578d5";
static const char *LEGACY_PLAIN = "{\"access_token\":\"legacy-token\"}";

static uint8_t *legacy_blob(size_t *len)
{
    static uint8_t buf[256];
    if (sodium_hex2bin(buf, sizeof buf, LEGACY_HEX, strlen(LEGACY_HEX), NULL, len, NULL) != 0)
        fail_msg("bad LEGACY_HEX");
    return buf;
}

static wc_seal_keys *keys(const char *cur, const char *prev)
{
    wc_seal_keys *k = NULL;
    char err[256] = "";
    if (wc_seal_init(&k, cur, prev, err, sizeof err) != 0)
        fail_msg("wc_seal_init: %s", err);
    return k;
}

static void test_round_trip(void **state)
{
    (void)state;
    wc_seal_keys *k = keys(KEY_A, NULL);
    const char *creds = "{\"access_token\":\"EAAG-secret-token\"}";
    uint8_t *sealed = NULL;
    size_t slen = 0;
    assert_int_equal(wc_seal(k, DEV_A, creds, strlen(creds), &sealed, &slen), 0);
    assert_int_equal(slen, strlen(creds) + WC_SEAL_OVERHEAD);
    assert_int_equal(sealed[0], WC_SEAL_VERSION);
    assert_null(memmem(sealed, slen, "secret", 6)); /* not in the clear */
    assert_true(wc_seal_is_current(k, DEV_A, sealed, slen));

    char *plain = NULL;
    size_t plen = 0;
    char err[256];
    assert_int_equal(wc_unseal(k, DEV_A, sealed, slen, &plain, &plen, err, sizeof err), 0);
    assert_int_equal(plen, strlen(creds));
    assert_string_equal(plain, creds);
    wc_seal_plain_free(plain, plen);

    /* Two seals of the same plaintext differ (fresh nonce). */
    uint8_t *again = NULL;
    size_t alen = 0;
    assert_int_equal(wc_seal(k, DEV_A, creds, strlen(creds), &again, &alen), 0);
    assert_int_equal(alen, slen);
    assert_memory_not_equal(again, sealed, slen);
    free(again);

    /* Empty plaintext works too. */
    uint8_t *empty = NULL;
    size_t elen = 0;
    assert_int_equal(wc_seal(k, DEV_A, "", 0, &empty, &elen), 0);
    assert_int_equal(wc_unseal(k, DEV_A, empty, elen, &plain, &plen, err, sizeof err), 0);
    assert_int_equal(plen, 0);
    assert_string_equal(plain, "");
    wc_seal_plain_free(plain, plen);
    free(empty);

    free(sealed);
    wc_seal_keys_free(k);
}

static void test_tamper_detected(void **state)
{
    (void)state;
    wc_seal_keys *k = keys(KEY_A, NULL);
    const char *creds = "{\"username\":\"admin\",\"password\":\"hunter2\"}";
    uint8_t *sealed = NULL;
    size_t slen = 0;
    assert_int_equal(wc_seal(k, DEV_A, creds, strlen(creds), &sealed, &slen), 0);
    char err[256];
    char *plain = NULL;
    size_t plen = 0;
    /* Flip each byte after the version in turn: none may open. */
    for (size_t i = 1; i < slen; i++) {
        sealed[i] ^= 0x01;
        err[0] = '\0';
        int rc = wc_unseal(k, DEV_A, sealed, slen, &plain, &plen, err, sizeof err);
        if (rc != -1 || plain != NULL)
            fail_msg("byte %zu flipped and the value still opened", i);
        assert_non_null(strstr(err, "wrong key or corrupt"));
        sealed[i] ^= 0x01;
    }
    /* Truncated values. */
    for (size_t n = 0; n < slen; n += 7) {
        assert_int_equal(wc_unseal(k, DEV_A, sealed, n, &plain, &plen, err, sizeof err), -1);
        assert_non_null(strstr(err, "wrong key or corrupt"));
    }
    /* An unknown format version. */
    sealed[0] = 9;
    assert_int_equal(wc_unseal(k, DEV_A, sealed, slen, &plain, &plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "unsupported sealed format version 9"));
    sealed[0] = WC_SEAL_VERSION;
    /* The other key does not open it. */
    wc_seal_keys *other = keys(KEY_B, NULL);
    assert_int_equal(wc_unseal(other, DEV_A, sealed, slen, &plain, &plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "wrong key or corrupt"));
    assert_false(wc_seal_is_current(other, DEV_A, sealed, slen));
    /* Untouched, it still opens. */
    assert_int_equal(wc_unseal(k, DEV_A, sealed, slen, &plain, &plen, err, sizeof err), 0);
    wc_seal_plain_free(plain, plen);
    free(sealed);
    wc_seal_keys_free(k);
    wc_seal_keys_free(other);
}

/* A value opens only for the device it was sealed for: copied to another
 * device's row, it does not open there, and it is not current there. */
static void test_bound_to_device(void **state)
{
    (void)state;
    wc_seal_keys *k = keys(KEY_A, NULL);
    const char *creds = "{\"access_token\":\"EAAG-device-a\"}";
    uint8_t *sealed = NULL;
    size_t slen = 0;
    assert_int_equal(wc_seal(k, DEV_A, creds, strlen(creds), &sealed, &slen), 0);
    char err[256] = "";
    char *plain = NULL;
    size_t plen = 0;
    assert_int_equal(wc_unseal(k, DEV_B, sealed, slen, &plain, &plen, err, sizeof err), -1);
    assert_null(plain);
    assert_non_null(strstr(err, "does not open for this device"));
    assert_null(strstr(err, "EAAG"));
    assert_false(wc_seal_is_current(k, DEV_B, sealed, slen));
    /* The id is compared byte for byte: the daemons pass id::text. */
    char upper[64];
    snprintf(upper, sizeof upper, "%s", DEV_A);
    for (char *p = upper; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    assert_int_equal(wc_unseal(k, upper, sealed, slen, &plain, &plen, err, sizeof err), -1);
    /* A prefix of the id is another id. */
    char prefix[64];
    snprintf(prefix, sizeof prefix, "%.35s", DEV_A);
    assert_int_equal(wc_unseal(k, prefix, sealed, slen, &plain, &plen, err, sizeof err), -1);
    /* No id: nothing to open for, nothing to seal for. */
    assert_int_equal(wc_unseal(k, NULL, sealed, slen, &plain, &plen, err, sizeof err), -1);
    assert_int_equal(wc_unseal(k, "", sealed, slen, &plain, &plen, err, sizeof err), -1);
    uint8_t *none = NULL;
    size_t nlen = 0;
    assert_int_equal(wc_seal(k, "", creds, strlen(creds), &none, &nlen), -1);
    assert_int_equal(wc_seal(k, NULL, creds, strlen(creds), &none, &nlen), -1);
    assert_null(none);
    /* Its own device opens it. */
    assert_int_equal(wc_unseal(k, DEV_A, sealed, slen, &plain, &plen, err, sizeof err), 0);
    assert_string_equal(plain, creds);
    wc_seal_plain_free(plain, plen);
    /* Relabelled as the legacy format (which binds nothing): refused. */
    sealed[0] = WC_SEAL_VERSION_LEGACY;
    assert_int_equal(wc_unseal(k, DEV_A, sealed, slen, &plain, &plen, err, sizeof err), -1);
    assert_int_equal(wc_unseal(k, DEV_B, sealed, slen, &plain, &plen, err, sizeof err), -1);
    free(sealed);
    wc_seal_keys_free(k);
}

/* Values written before the upgrade still open (for any device: they were
 * bound to none) but are not current; under WACAST_SEAL_LEGACY=refuse they
 * do not open; re-sealing binds them to their row. */
static void test_legacy_format(void **state)
{
    (void)state;
    size_t llen = 0;
    const uint8_t *legacy = legacy_blob(&llen);
    assert_int_equal(legacy[0], WC_SEAL_VERSION_LEGACY);
    wc_seal_keys *k = keys(KEY_A, NULL);
    char err[256] = "";
    char *plain = NULL;
    size_t plen = 0;
    assert_int_equal(wc_unseal(k, DEV_A, legacy, llen, &plain, &plen, err, sizeof err), 0);
    assert_string_equal(plain, LEGACY_PLAIN);
    wc_seal_plain_free(plain, plen);
    assert_false(wc_seal_is_current(k, DEV_A, legacy, llen));
    /* Altered, it does not open. */
    uint8_t bad[256];
    memcpy(bad, legacy, llen);
    bad[llen - 1] ^= 1;
    assert_int_equal(wc_unseal(k, DEV_A, bad, llen, &plain, &plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "wrong key or corrupt"));

    /* The re-seal (what wacast-ctl reseal does): current, bound to the row. */
    assert_int_equal(wc_unseal(k, DEV_A, legacy, llen, &plain, &plen, err, sizeof err), 0);
    uint8_t *fresh = NULL;
    size_t flen = 0;
    assert_int_equal(wc_seal(k, DEV_A, plain, plen, &fresh, &flen), 0);
    wc_seal_plain_free(plain, plen);
    assert_int_equal(fresh[0], WC_SEAL_VERSION);
    assert_true(wc_seal_is_current(k, DEV_A, fresh, flen));
    assert_int_equal(wc_unseal(k, DEV_B, fresh, flen, &plain, &plen, err, sizeof err), -1);

    /* Refused once the operator says the migration is over. */
    assert_int_equal(wc_seal_set_legacy(k, "refuse", err, sizeof err), 0);
    assert_int_equal(wc_unseal(k, DEV_A, legacy, llen, &plain, &plen, err, sizeof err), -1);
    assert_null(plain);
    assert_non_null(strstr(err, "legacy sealed format"));
    assert_non_null(strstr(err, "wacast-ctl reseal"));
    assert_int_equal(wc_unseal(k, DEV_A, fresh, flen, &plain, &plen, err, sizeof err), 0);
    assert_string_equal(plain, LEGACY_PLAIN);
    wc_seal_plain_free(plain, plen);
    assert_int_equal(wc_seal_set_legacy(k, "allow", err, sizeof err), 0);
    assert_int_equal(wc_unseal(k, DEV_A, legacy, llen, &plain, &plen, err, sizeof err), 0);
    wc_seal_plain_free(plain, plen);
    assert_int_equal(wc_seal_set_legacy(k, "sometimes", err, sizeof err), -1);
    assert_non_null(strstr(err, "WACAST_SEAL_LEGACY must be allow or refuse"));

    /* Upgrade and rotation at once: a legacy value under the previous key. */
    wc_seal_keys *rot = keys(KEY_B, KEY_A);
    assert_false(wc_seal_is_current(rot, DEV_A, legacy, llen));
    assert_int_equal(wc_unseal(rot, DEV_B, legacy, llen, &plain, &plen, err, sizeof err), 0);
    uint8_t *rotated = NULL;
    size_t rlen = 0;
    assert_int_equal(wc_seal(rot, DEV_B, plain, plen, &rotated, &rlen), 0);
    wc_seal_plain_free(plain, plen);
    assert_true(wc_seal_is_current(rot, DEV_B, rotated, rlen));
    wc_seal_keys *only_b = keys(KEY_B, NULL);
    assert_int_equal(wc_unseal(only_b, DEV_B, rotated, rlen, &plain, &plen, err, sizeof err), 0);
    assert_string_equal(plain, LEGACY_PLAIN);
    wc_seal_plain_free(plain, plen);
    assert_int_equal(wc_unseal(only_b, DEV_A, rotated, rlen, &plain, &plen, err, sizeof err), -1);

    free(rotated);
    free(fresh);
    wc_seal_keys_free(only_b);
    wc_seal_keys_free(rot);
    wc_seal_keys_free(k);
}

static void test_rotation(void **state)
{
    (void)state;
    const char *creds = "{\"access_token\":\"old\"}";
    char err[256];
    char *plain = NULL;
    size_t plen = 0;

    wc_seal_keys *old = keys(KEY_A, NULL);
    uint8_t *sealed_old = NULL;
    size_t olen = 0;
    assert_int_equal(wc_seal(old, DEV_A, creds, strlen(creds), &sealed_old, &olen), 0);

    /* Rotate: B is current, A is previous. */
    wc_seal_keys *rot = keys(KEY_B, KEY_A);
    assert_false(wc_seal_is_current(rot, DEV_A, sealed_old, olen));
    assert_int_equal(wc_unseal(rot, DEV_A, sealed_old, olen, &plain, &plen, err, sizeof err), 0);
    assert_string_equal(plain, creds);

    /* Re-seal: with the new key only. */
    uint8_t *sealed_new = NULL;
    size_t nlen = 0;
    assert_int_equal(wc_seal(rot, DEV_A, plain, plen, &sealed_new, &nlen), 0);
    wc_seal_plain_free(plain, plen);
    assert_true(wc_seal_is_current(rot, DEV_A, sealed_new, nlen));

    /* After the rotation finished (previous key dropped) the re-sealed value opens... */
    wc_seal_keys *done = keys(KEY_B, "");
    assert_int_equal(wc_unseal(done, DEV_A, sealed_new, nlen, &plain, &plen, err, sizeof err), 0);
    assert_string_equal(plain, creds);
    wc_seal_plain_free(plain, plen);
    /* ...and the old one no longer does. */
    assert_int_equal(wc_unseal(done, DEV_A, sealed_old, olen, &plain, &plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "wrong key or corrupt"));
    /* The old key alone cannot open the new value. */
    assert_int_equal(wc_unseal(old, DEV_A, sealed_new, nlen, &plain, &plen, err, sizeof err), -1);

    free(sealed_old);
    free(sealed_new);
    wc_seal_keys_free(old);
    wc_seal_keys_free(rot);
    wc_seal_keys_free(done);
}

static void expect_bad(const char *cur, const char *prev, const char *want)
{
    wc_seal_keys *k = (wc_seal_keys *)0x1;
    char err[256] = "";
    assert_int_equal(wc_seal_init(&k, cur, prev, err, sizeof err), -1);
    assert_null(k);
    if (!strstr(err, want))
        fail_msg("key \"%s\"/\"%s\": want error containing \"%s\", got \"%s\"", cur ? cur : "NULL",
                 prev ? prev : "NULL", want, err);
    /* The error never quotes the key. */
    if (cur && strlen(cur) > 8)
        assert_null(strstr(err, cur));
}

static void test_bad_keys(void **state)
{
    (void)state;
    expect_bad(NULL, NULL, "WACAST_SECRET_KEY is not set");
    expect_bad("", NULL, "WACAST_SECRET_KEY is empty");
    expect_bad("  \n", NULL, "WACAST_SECRET_KEY is empty");
    expect_bad("short", NULL, "64 hex characters or base64");
    /* 63 and 66 hex characters. */
    expect_bad("00112233445566778899aabbccddeeff00112233445566778899aabbccddeef", NULL, "32 bytes");
    expect_bad("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff00", NULL,
               "32 bytes");
    /* 64 characters that are not hex. */
    expect_bad("zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", NULL,
               "32 bytes");
    /* base64 of 31 and 33 bytes. */
    expect_bad("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", NULL, "32 bytes");
    expect_bad("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g", NULL, "32 bytes");
    expect_bad("0000000000000000000000000000000000000000000000000000000000000000", NULL,
               "all zeros");
    expect_bad(KEY_A, "not-a-key", "WACAST_SECRET_KEY_PREVIOUS must be 32 bytes");
}

static void test_key_spellings(void **state)
{
    (void)state;
    const char *creds = "x";
    /* The same 32 bytes (0..31) in every accepted spelling open each other's seals. */
    const char *spellings[] = {
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",
        " AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    };
    wc_seal_keys *first = keys(spellings[0], NULL);
    uint8_t *sealed = NULL;
    size_t slen = 0;
    assert_int_equal(wc_seal(first, DEV_A, creds, 1, &sealed, &slen), 0);
    for (size_t i = 0; i < sizeof spellings / sizeof spellings[0]; i++) {
        wc_seal_keys *k = keys(spellings[i], NULL);
        char *plain = NULL;
        size_t plen = 0;
        char err[256];
        if (wc_unseal(k, DEV_A, sealed, slen, &plain, &plen, err, sizeof err) != 0)
            fail_msg("spelling %zu: %s", i, err);
        wc_seal_plain_free(plain, plen);
        wc_seal_keys_free(k);
    }
    /* URL-safe base64 of a key with bytes that need '-' and '_'. */
    unsigned char raw[32];
    memset(raw, 0xfb, sizeof raw);
    char hex[65], url[64];
    sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
    sodium_bin2base64(url, sizeof url, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    assert_non_null(strpbrk(url, "-_"));
    wc_seal_keys *h = keys(hex, NULL), *u = keys(url, NULL);
    uint8_t *s2 = NULL;
    size_t s2len = 0;
    assert_int_equal(wc_seal(h, DEV_A, creds, 1, &s2, &s2len), 0);
    assert_true(wc_seal_is_current(u, DEV_A, s2, s2len));
    free(s2);
    wc_seal_keys_free(h);
    wc_seal_keys_free(u);
    free(sealed);
    wc_seal_keys_free(first);
}

static void test_env_and_keygen(void **state)
{
    (void)state;
    char a[65], b[65];
    wc_seal_keygen(a);
    wc_seal_keygen(b);
    assert_int_equal(strlen(a), 64);
    assert_string_not_equal(a, b);
    setenv(WC_SEAL_KEY_ENV, a, 1);
    unsetenv(WC_SEAL_PREVIOUS_KEY_ENV);
    wc_seal_keys *k = NULL;
    char err[256];
    assert_int_equal(wc_seal_init_env(&k, err, sizeof err), 0);
    wc_seal_keys_free(k);
    /* WACAST_SEAL_LEGACY=refuse applies; a typo is an error, not "allow". */
    size_t llen = 0;
    const uint8_t *legacy = legacy_blob(&llen);
    setenv(WC_SEAL_KEY_ENV, KEY_A, 1);
    setenv(WC_SEAL_LEGACY_ENV, "refuse", 1);
    assert_int_equal(wc_seal_init_env(&k, err, sizeof err), 0);
    char *plain = NULL;
    size_t plen = 0;
    assert_int_equal(wc_unseal(k, DEV_A, legacy, llen, &plain, &plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "legacy"));
    wc_seal_keys_free(k);
    setenv(WC_SEAL_LEGACY_ENV, "refuse ", 1);
    k = (wc_seal_keys *)0x1;
    assert_int_equal(wc_seal_init_env(&k, err, sizeof err), -1);
    assert_null(k);
    assert_string_equal(err, "WACAST_SEAL_LEGACY must be allow or refuse");
    unsetenv(WC_SEAL_LEGACY_ENV);
    assert_int_equal(wc_seal_init_env(&k, err, sizeof err), 0);
    assert_int_equal(wc_unseal(k, DEV_A, legacy, llen, &plain, &plen, err, sizeof err), 0);
    wc_seal_plain_free(plain, plen);
    wc_seal_keys_free(k);
    unsetenv(WC_SEAL_KEY_ENV);
    assert_int_equal(wc_seal_init_env(&k, err, sizeof err), -1);
    assert_string_equal(err, "WACAST_SECRET_KEY is not set");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),      cmocka_unit_test(test_tamper_detected),
        cmocka_unit_test(test_rotation),        cmocka_unit_test(test_bad_keys),
        cmocka_unit_test(test_key_spellings),   cmocka_unit_test(test_env_and_keygen),
        cmocka_unit_test(test_bound_to_device), cmocka_unit_test(test_legacy_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
