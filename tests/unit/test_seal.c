/* Unit tests for wc_seal: round trip, tamper detection, key rotation and key
 * string validation (with errors that never echo the key). */
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
    assert_int_equal(wc_seal(k, creds, strlen(creds), &sealed, &slen), 0);
    assert_int_equal(slen, strlen(creds) + WC_SEAL_OVERHEAD);
    assert_int_equal(sealed[0], WC_SEAL_VERSION);
    assert_null(memmem(sealed, slen, "secret", 6)); /* not in the clear */
    assert_true(wc_seal_is_current(k, sealed, slen));

    char *plain = NULL;
    size_t plen = 0;
    char err[256];
    assert_int_equal(wc_unseal(k, sealed, slen, &plain, &plen, err, sizeof err), 0);
    assert_int_equal(plen, strlen(creds));
    assert_string_equal(plain, creds);
    wc_seal_plain_free(plain, plen);

    /* Two seals of the same plaintext differ (fresh nonce). */
    uint8_t *again = NULL;
    size_t alen = 0;
    assert_int_equal(wc_seal(k, creds, strlen(creds), &again, &alen), 0);
    assert_int_equal(alen, slen);
    assert_memory_not_equal(again, sealed, slen);
    free(again);

    /* Empty plaintext works too. */
    uint8_t *empty = NULL;
    size_t elen = 0;
    assert_int_equal(wc_seal(k, "", 0, &empty, &elen), 0);
    assert_int_equal(wc_unseal(k, empty, elen, &plain, &plen, err, sizeof err), 0);
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
    assert_int_equal(wc_seal(k, creds, strlen(creds), &sealed, &slen), 0);
    char err[256];
    char *plain = NULL;
    size_t plen = 0;
    /* Flip each byte after the version in turn: none may open. */
    for (size_t i = 1; i < slen; i++) {
        sealed[i] ^= 0x01;
        err[0] = '\0';
        int rc = wc_unseal(k, sealed, slen, &plain, &plen, err, sizeof err);
        if (rc != -1 || plain != NULL)
            fail_msg("byte %zu flipped and the value still opened", i);
        assert_non_null(strstr(err, "wrong key or corrupt"));
        sealed[i] ^= 0x01;
    }
    /* Truncated values. */
    for (size_t n = 0; n < slen; n += 7) {
        assert_int_equal(wc_unseal(k, sealed, n, &plain, &plen, err, sizeof err), -1);
        assert_non_null(strstr(err, "wrong key or corrupt"));
    }
    /* An unknown format version. */
    sealed[0] = 9;
    assert_int_equal(wc_unseal(k, sealed, slen, &plain, &plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "unsupported sealed format version 9"));
    sealed[0] = WC_SEAL_VERSION;
    /* The other key does not open it. */
    wc_seal_keys *other = keys(KEY_B, NULL);
    assert_int_equal(wc_unseal(other, sealed, slen, &plain, &plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "wrong key or corrupt"));
    assert_false(wc_seal_is_current(other, sealed, slen));
    /* Untouched, it still opens. */
    assert_int_equal(wc_unseal(k, sealed, slen, &plain, &plen, err, sizeof err), 0);
    wc_seal_plain_free(plain, plen);
    free(sealed);
    wc_seal_keys_free(k);
    wc_seal_keys_free(other);
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
    assert_int_equal(wc_seal(old, creds, strlen(creds), &sealed_old, &olen), 0);

    /* Rotate: B is current, A is previous. */
    wc_seal_keys *rot = keys(KEY_B, KEY_A);
    assert_false(wc_seal_is_current(rot, sealed_old, olen));
    assert_int_equal(wc_unseal(rot, sealed_old, olen, &plain, &plen, err, sizeof err), 0);
    assert_string_equal(plain, creds);

    /* Re-seal: with the new key only. */
    uint8_t *sealed_new = NULL;
    size_t nlen = 0;
    assert_int_equal(wc_seal(rot, plain, plen, &sealed_new, &nlen), 0);
    wc_seal_plain_free(plain, plen);
    assert_true(wc_seal_is_current(rot, sealed_new, nlen));

    /* After the rotation finished (previous key dropped) the re-sealed value opens... */
    wc_seal_keys *done = keys(KEY_B, "");
    assert_int_equal(wc_unseal(done, sealed_new, nlen, &plain, &plen, err, sizeof err), 0);
    assert_string_equal(plain, creds);
    wc_seal_plain_free(plain, plen);
    /* ...and the old one no longer does. */
    assert_int_equal(wc_unseal(done, sealed_old, olen, &plain, &plen, err, sizeof err), -1);
    assert_non_null(strstr(err, "wrong key or corrupt"));
    /* The old key alone cannot open the new value. */
    assert_int_equal(wc_unseal(old, sealed_new, nlen, &plain, &plen, err, sizeof err), -1);

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
    assert_int_equal(wc_seal(first, creds, 1, &sealed, &slen), 0);
    for (size_t i = 0; i < sizeof spellings / sizeof spellings[0]; i++) {
        wc_seal_keys *k = keys(spellings[i], NULL);
        char *plain = NULL;
        size_t plen = 0;
        char err[256];
        if (wc_unseal(k, sealed, slen, &plain, &plen, err, sizeof err) != 0)
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
    assert_int_equal(wc_seal(h, creds, 1, &s2, &s2len), 0);
    assert_true(wc_seal_is_current(u, s2, s2len));
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
    unsetenv(WC_SEAL_KEY_ENV);
    assert_int_equal(wc_seal_init_env(&k, err, sizeof err), -1);
    assert_string_equal(err, "WACAST_SECRET_KEY is not set");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),    cmocka_unit_test(test_tamper_detected),
        cmocka_unit_test(test_rotation),      cmocka_unit_test(test_bad_keys),
        cmocka_unit_test(test_key_spellings), cmocka_unit_test(test_env_and_keygen),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
