/* Sealing device credentials at rest (see wc_seal.h): secretbox with a key
 * id byte so keys can rotate without a flag day. The key id is a keyed hash
 * of the key, not the key itself; two keys share an id with probability
 * 1/256, so unseal tries every key whose id matches. */
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

typedef struct seal_key {
    unsigned char key[KEY_LEN];
    uint8_t id;
} seal_key;

struct wc_seal_keys {
    seal_key current;
    seal_key previous;
    bool has_previous;
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
    k->current.id = key_id(k->current.key);
    if (previous && previous[strspn(previous, " \t\r\n")] != '\0') {
        if (parse_key(WC_SEAL_PREVIOUS_KEY_ENV, previous, k->previous.key, err, errlen) < 0)
            goto error;
        k->previous.id = key_id(k->previous.key);
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
    return wc_seal_init(out, getenv(WC_SEAL_KEY_ENV), getenv(WC_SEAL_PREVIOUS_KEY_ENV), err,
                        errlen);
}

void wc_seal_keys_free(wc_seal_keys *k)
{
    if (k)
        sodium_free(k); /* wipes */
}

int wc_seal(const wc_seal_keys *k, const void *plain, size_t len, uint8_t **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (!k || (!plain && len) || len > SIZE_MAX - WC_SEAL_OVERHEAD)
        return -1;
    uint8_t *buf = malloc(len + WC_SEAL_OVERHEAD);
    if (!buf)
        return -1;
    buf[0] = WC_SEAL_VERSION;
    buf[1] = k->current.id;
    randombytes_buf(buf + 2, NONCE_LEN);
    crypto_secretbox_easy(buf + HEADER_LEN, plain ? plain : (const void *)"", len, buf + 2,
                          k->current.key);
    *out = buf;
    *outlen = len + WC_SEAL_OVERHEAD;
    return 0;
}

static bool try_open(const seal_key *key, const uint8_t *sealed, size_t len, char *plain)
{
    if (key->id != sealed[1])
        return false;
    return crypto_secretbox_open_easy((unsigned char *)plain, sealed + HEADER_LEN, len - HEADER_LEN,
                                      sealed + 2, key->key) == 0;
}

int wc_unseal(const wc_seal_keys *k, const uint8_t *sealed, size_t len, char **plain,
              size_t *plainlen, char *err, size_t errlen)
{
    *plain = NULL;
    *plainlen = 0;
    if (!k || !sealed || len < WC_SEAL_OVERHEAD) {
        set_err(err, errlen, "%s", "wrong key or corrupt: sealed value too short");
        return -1;
    }
    if (sealed[0] != WC_SEAL_VERSION) {
        if (err && errlen)
            snprintf(err, errlen, "unsupported sealed format version %u", sealed[0]);
        return -1;
    }
    size_t n = len - WC_SEAL_OVERHEAD;
    char *buf = malloc(n + 1);
    if (!buf) {
        set_err(err, errlen, "%s", "out of memory");
        return -1;
    }
    if (!try_open(&k->current, sealed, len, buf) &&
        !(k->has_previous && try_open(&k->previous, sealed, len, buf))) {
        sodium_memzero(buf, n + 1);
        free(buf);
        set_err(err, errlen, "%s", "wrong key or corrupt: the sealed value does not open");
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

bool wc_seal_is_current(const wc_seal_keys *k, const uint8_t *sealed, size_t len)
{
    if (!k || !sealed || len < WC_SEAL_OVERHEAD || sealed[0] != WC_SEAL_VERSION ||
        sealed[1] != k->current.id)
        return false;
    /* The id could collide with the previous key's: only opening proves it. */
    if (!k->has_previous || k->previous.id != k->current.id)
        return true;
    size_t n = len - WC_SEAL_OVERHEAD;
    char *buf = malloc(n + 1);
    if (!buf)
        return false;
    bool ok = try_open(&k->current, sealed, len, buf);
    sodium_memzero(buf, n + 1);
    free(buf);
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
