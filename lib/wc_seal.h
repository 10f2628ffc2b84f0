/* Device credentials sealed at rest (user_devices.credentials is bytea):
 * libsodium's crypto_secretbox (XSalsa20-Poly1305) under a 32-byte key taken
 * from the environment, so a database dump alone reveals no access token.
 *
 * Sealed format: 1 version byte (WC_SEAL_VERSION), 1 key id byte (derived from
 * the key, so a value says which key sealed it), a 24-byte random nonce, then
 * the secretbox ciphertext (16-byte MAC + plaintext).
 *
 * Rotation: seal always uses the current key (WACAST_SECRET_KEY); unseal also
 * accepts the previous one (WACAST_SECRET_KEY_PREVIOUS), and
 * wc_seal_is_current() tells a caller to re-seal a value. Keys are 64 hex
 * characters or base64 (standard or URL-safe, padded or not) of 32 bytes.
 *
 * Nothing here logs; callers must never log plaintext or keys. */
#ifndef WC_SEAL_H
#define WC_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WC_SEAL_VERSION 1
#define WC_SEAL_KEY_ENV "WACAST_SECRET_KEY"
#define WC_SEAL_PREVIOUS_KEY_ENV "WACAST_SECRET_KEY_PREVIOUS"
/* Bytes a sealed value adds to its plaintext. */
#define WC_SEAL_OVERHEAD (2 + 24 + 16)

typedef struct wc_seal_keys wc_seal_keys;

/* Parses the current key (required) and the previous key (NULL or "" when
 * none) into *out (held in guarded, locked memory). Returns -1 with a reason
 * in err that never quotes the key. */
int wc_seal_init(wc_seal_keys **out, const char *current, const char *previous, char *err,
                 size_t errlen) __attribute__((warn_unused_result));
/* Same, from WACAST_SECRET_KEY and WACAST_SECRET_KEY_PREVIOUS. */
int wc_seal_init_env(wc_seal_keys **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Wipes and frees. NULL is fine. */
void wc_seal_keys_free(wc_seal_keys *k);

/* Seals len bytes with the current key into a malloc'd *out (*outlen bytes,
 * len + WC_SEAL_OVERHEAD). Returns -1 only when out of memory. */
int wc_seal(const wc_seal_keys *k, const void *plain, size_t len, uint8_t **out, size_t *outlen)
    __attribute__((warn_unused_result));
/* Opens a sealed value into a malloc'd, NUL-terminated *plain (*plainlen
 * bytes, not counting the NUL). Returns -1 with err "wrong key or corrupt ..."
 * when no key opens it or it was altered, or "unsupported ..." for an unknown
 * format. Release the plaintext with wc_seal_plain_free(). */
int wc_unseal(const wc_seal_keys *k, const uint8_t *sealed, size_t len, char **plain,
              size_t *plainlen, char *err, size_t errlen) __attribute__((warn_unused_result));
/* Wipes and frees a plaintext from wc_unseal(). NULL is fine. */
void wc_seal_plain_free(char *plain, size_t len);

/* True when the value was sealed with the current key (no re-seal needed). */
bool wc_seal_is_current(const wc_seal_keys *k, const uint8_t *sealed, size_t len);

/* Writes a fresh random key as 64 hex characters plus NUL (for operators). */
void wc_seal_keygen(char out[65]);

#endif
