/* Sealing device credentials at rest (see wc_seal.h): an AEAD bound to the
 * device id, with a key id byte so keys can rotate without a flag day, and
 * the legacy secretbox format still readable for the migration. The key id is
 * a keyed hash of the key, not the key itself; two keys share an id with
 * probability 1/256, so unseal tries every key whose id matches. */
#include "wc_seal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#define KEY_LEN crypto_secretbox_KEYBYTES
#define NONCE_LEN crypto_secretbox_NONCEBYTES
#define MAC_LEN crypto_secretbox_MACBYTES
#define HEADER_LEN (2 + NONCE_LEN)

_Static_assert(WC_SEAL_OVERHEAD == HEADER_LEN + MAC_LEN, "WC_SEAL_OVERHEAD out of date");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES == NONCE_LEN &&
                   crypto_aead_xchacha20poly1305_ietf_ABYTES == MAC_LEN &&
                   crypto_aead_xchacha20poly1305_ietf_KEYBYTES == KEY_LEN,
               "both formats share one layout");

typedef struct seal_key {
    unsigned char key[KEY_LEN];      /* as configured: opens version 1 values */
    unsigned char aead_key[KEY_LEN]; /* derived from key: seals and opens version 2 */
    uint8_t id;
} seal_key;

struct wc_seal_keys {
    seal_key current;
    seal_key previous;
    bool has_previous;
    bool refuse_legacy;
};

static void set_err(char *err, size_t errlen, const char *fmt, const char *what)
{
    if (err && errlen)
        snprintf(err, errlen, fmt, what);
}

static uint8_t key_id(const unsigned char key[KEY_LEN])
{
    static const unsigned char domain[] = "wacast seal key id v1";
    unsigned char h[16];
    crypto_generichash(h, sizeof h, key, KEY_LEN, domain, sizeof domain - 1);
    return h[0];
}

/* One key, two ciphers: version 2 uses its own key, derived from the
 * configured one, so the two formats never share key material. */
static void derive_keys(seal_key *k)
{
    static const unsigned char domain[] = "wacast seal aead v2";
    crypto_generichash(k->aead_key, KEY_LEN, domain, sizeof domain - 1, k->key, KEY_LEN);
    k->id = key_id(k->key);
}

/* Decodes a key string (hex or base64) into key. The error never quotes it. */
static int parse_key(const char *name, const char *s, unsigned char key[KEY_LEN], char *err,
                     size_t errlen)
{
    if (!s) {
        set_err(err, errlen, "%s is not set", name);
        return -1;
    }
    /* Secrets mounted from files often end with a newline. */
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    if (n == 0) {
        set_err(err, errlen, "%s is empty", name);
        return -1;
    }
    size_t got = 0;
    const char *end = NULL;
    bool ok = false;
    if (n == 2 * KEY_LEN) {
        ok = sodium_hex2bin(key, KEY_LEN, s, n, NULL, &got, &end) == 0 && got == KEY_LEN &&
             end == s + n;
    }
    static const int variants[] = {
        sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
        sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING};
    for (size_t i = 0; !ok && i < sizeof variants / sizeof variants[0]; i++) {
        /* Decode into a larger buffer so an over-long key is caught, not truncated. */
        unsigned char buf[KEY_LEN + 8];
        ok = sodium_base642bin(buf, sizeof buf, s, n, NULL, &got, &end, variants[i]) == 0 &&
             got == KEY_LEN && end == s + n;
        if (ok)
            memcpy(key, buf, KEY_LEN);
        sodium_memzero(buf, sizeof buf);
    }
    if (!ok) {
        sodium_memzero(key, KEY_LEN);
        set_err(err, errlen,
                "%s must be 32 bytes written as 64 hex characters or base64 "
                "(generate one with: openssl rand -hex 32)",
                name);
        return -1;
    }
    if (sodium_is_zero(key, KEY_LEN)) {
        set_err(err, errlen, "%s is all zeros; generate a random key", name);
        return -1;
    }
    return 0;
}

int wc_seal_init(wc_seal_keys **out, const char *current, const char *previous, char *err,
                 size_t errlen)
{
    *out = NULL;
    if (sodium_init() < 0) {
        set_err(err, errlen, "%s", "libsodium failed to initialise");
        return -1;
    }
    wc_seal_keys *k = sodium_malloc(sizeof *k);
    if (!k) {
        set_err(err, errlen, "%s", "out of memory");
        return -1;
    }
    memset(k, 0, sizeof *k);
    if (parse_key(WC_SEAL_KEY_ENV, current, k->current.key, err, errlen) < 0)
        goto error;
    derive_keys(&k->current);
    if (previous && previous[strspn(previous, " \t\r\n")] != '\0') {
        if (parse_key(WC_SEAL_PREVIOUS_KEY_ENV, previous, k->previous.key, err, errlen) < 0)
            goto error;
        derive_keys(&k->previous);
        /* The same key twice is not a rotation; ignore the duplicate. */
        k->has_previous = sodium_memcmp(k->previous.key, k->current.key, KEY_LEN) != 0;
    }
    sodium_mprotect_readonly(k);
    *out = k;
    return 0;

error:
    sodium_free(k);
    return -1;
}

int wc_seal_init_env(wc_seal_keys **out, char *err, size_t errlen)
{
    if (wc_seal_init(out, getenv(WC_SEAL_KEY_ENV), getenv(WC_SEAL_PREVIOUS_KEY_ENV), err, errlen) <
        0)
        return -1;
    if (wc_seal_set_legacy(*out, getenv(WC_SEAL_LEGACY_ENV), err, errlen) < 0) {
        wc_seal_keys_free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

int wc_seal_set_legacy(wc_seal_keys *k, const char *policy, char *err, size_t errlen)
{
    bool refuse;
    if (!policy || !*policy || !strcmp(policy, "allow")) {
        refuse = false;
    } else if (!strcmp(policy, "refuse")) {
        refuse = true;
    } else {
        set_err(err, errlen, "%s must be allow or refuse", WC_SEAL_LEGACY_ENV);
        return -1;
    }
    if (!k)
        return -1;
    sodium_mprotect_readwrite(k);
    k->refuse_legacy = refuse;
    sodium_mprotect_readonly(k);
    return 0;
}

void wc_seal_keys_free(wc_seal_keys *k)
{
    if (k)
        sodium_free(k); /* wipes */
}

/* The associated data of a version 2 value: its two header bytes, then the
 * device id. The header has a fixed length, so the pair is unambiguous. */
static unsigned char *bound_ad(const uint8_t header[2], const char *device_id, size_t *adlen)
{
    size_t idlen = strlen(device_id);
    unsigned char *ad = malloc(2 + idlen);
    if (!ad)
        return NULL;
    memcpy(ad, header, 2);
    memcpy(ad + 2, device_id, idlen);
    *adlen = 2 + idlen;
    return ad;
}

int wc_seal(const wc_seal_keys *k, const char *device_id, const void *plain, size_t len,
            uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (!k || !device_id || !*device_id || (!plain && len) || len > SIZE_MAX - WC_SEAL_OVERHEAD)
        return -1;
    uint8_t *buf = malloc(len + WC_SEAL_OVERHEAD);
    if (!buf)
        return -1;
    buf[0] = WC_SEAL_VERSION;
    buf[1] = k->current.id;
    size_t adlen = 0;
    unsigned char *ad = bound_ad(buf, device_id, &adlen);
    if (!ad) {
        free(buf);
        return -1;
    }
    randombytes_buf(buf + 2, NONCE_LEN);
    crypto_aead_xchacha20poly1305_ietf_encrypt(buf + HEADER_LEN, NULL,
                                               plain ? plain : (const void *)"", len, ad, adlen,
                                               NULL, buf + 2, k->current.aead_key);
    free(ad);
    *out = buf;
    *outlen = len + WC_SEAL_OVERHEAD;
    return 0;
}

/* Opens with one key into plain (len - WC_SEAL_OVERHEAD bytes of room). ad
 * is the bound associated data for version 2, unused for version 1. */
static bool try_open(const seal_key *key, const uint8_t *sealed, size_t len,
                     const unsigned char *ad, size_t adlen, char *plain)
{
    if (key->id != sealed[1])
        return false;
    if (sealed[0] == WC_SEAL_VERSION_LEGACY)
        return crypto_secretbox_open_easy((unsigned char *)plain, sealed + HEADER_LEN,
                                          len - HEADER_LEN, sealed + 2, key->key) == 0;
    return crypto_aead_xchacha20poly1305_ietf_decrypt((unsigned char *)plain, NULL, NULL,
                                                      sealed + HEADER_LEN, len - HEADER_LEN, ad,
                                                      adlen, sealed + 2, key->aead_key) == 0;
}

int wc_unseal(const wc_seal_keys *k, const char *device_id, const uint8_t *sealed, size_t len,
              char **plain, size_t *plainlen, char *err, size_t errlen)
{
    *plain = NULL;
    *plainlen = 0;
    if (!k || !sealed || len < WC_SEAL_OVERHEAD) {
        set_err(err, errlen, "%s", "wrong key or corrupt: sealed value too short");
        return -1;
    }
    if (sealed[0] != WC_SEAL_VERSION && sealed[0] != WC_SEAL_VERSION_LEGACY) {
        if (err && errlen)
            snprintf(err, errlen, "unsupported sealed format version %u", sealed[0]);
        return -1;
    }
    if (sealed[0] == WC_SEAL_VERSION_LEGACY && k->refuse_legacy) {
        set_err(err, errlen,
                "legacy sealed format (version 1, not bound to the device) refused by %s=refuse; "
                "re-seal it with wacast-ctl reseal",
                WC_SEAL_LEGACY_ENV);
        return -1;
    }
    if (sealed[0] == WC_SEAL_VERSION && (!device_id || !*device_id)) {
        set_err(err, errlen, "%s", "wrong key or corrupt: no device id to open the value for");
        return -1;
    }
    size_t adlen = 0;
    unsigned char *ad = sealed[0] == WC_SEAL_VERSION ? bound_ad(sealed, device_id, &adlen) : NULL;
    size_t n = len - WC_SEAL_OVERHEAD;
    char *buf = malloc(n + 1);
    if (!buf || (sealed[0] == WC_SEAL_VERSION && !ad)) {
        free(buf);
        free(ad);
        set_err(err, errlen, "%s", "out of memory");
        return -1;
    }
    bool ok = try_open(&k->current, sealed, len, ad, adlen, buf) ||
              (k->has_previous && try_open(&k->previous, sealed, len, ad, adlen, buf));
    free(ad);
    if (!ok) {
        sodium_memzero(buf, n + 1);
        free(buf);
        set_err(err, errlen, "%s",
                "wrong key or corrupt: the sealed value does not open for this device (sealed "
                "for another device or with another key, or altered)");
        return -1;
    }
    buf[n] = '\0';
    *plain = buf;
    *plainlen = n;
    return 0;
}

void wc_seal_plain_free(char *plain, size_t len)
{
    if (!plain)
        return;
    sodium_memzero(plain, len);
    free(plain);
}

bool wc_seal_is_current(const wc_seal_keys *k, const char *device_id, const uint8_t *sealed,
                        size_t len)
{
    if (!k || !device_id || !*device_id || !sealed || len < WC_SEAL_OVERHEAD ||
        sealed[0] != WC_SEAL_VERSION || sealed[1] != k->current.id)
        return false;
    /* Only opening proves the value is this device's (and not the previous
     * key's with a colliding id). */
    size_t adlen = 0;
    unsigned char *ad = bound_ad(sealed, device_id, &adlen);
    size_t n = len - WC_SEAL_OVERHEAD;
    char *buf = malloc(n + 1);
    bool ok = ad && buf && try_open(&k->current, sealed, len, ad, adlen, buf);
    if (buf)
        sodium_memzero(buf, n + 1);
    free(buf);
    free(ad);
    return ok;
}

void wc_seal_keygen(char out[65])
{
    unsigned char key[KEY_LEN];
    if (sodium_init() < 0)
        abort();
    randombytes_buf(key, sizeof key);
    sodium_bin2hex(out, 65, key, sizeof key);
    sodium_memzero(key, sizeof key);
}
