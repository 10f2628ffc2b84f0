/* Device credentials sealed at rest (user_devices.credentials is bytea), so a
 * database dump alone reveals no access token, and a sealed value copied to
 * another device's row does not open there: the dashboard can write rows, and
 * a device's base_url decides where its token is sent.
 *
 * Sealed format (version 2, written by wc_seal): 1 version byte (2), 1 key id
 * byte (derived from the key, so a value says which key sealed it), a 24-byte
 * random nonce, then crypto_aead_xchacha20poly1305_ietf ciphertext and its
 * 16-byte tag. The associated data is the two header bytes followed by the
 * device id (user_devices.id as text, as PostgreSQL prints it), so the value
 * opens only for the row it was sealed for. The AEAD key is derived from the
 * configured key (BLAKE2b, keyed), never the configured key itself.
 *
 * Version 1 (legacy, before device binding): the same header, then
 * crypto_secretbox (XSalsa20-Poly1305) under the configured key, bound to
 * nothing. Such values still open unless WACAST_SEAL_LEGACY=refuse, so an
 * upgrade does not take every device offline; wc_seal_is_current() reports
 * them not current and `wacast-ctl reseal` rewrites them as version 2. Once
 * every row is re-sealed, set WACAST_SEAL_LEGACY=refuse: then a version 1
 * value written into a row (copied from a backup or another row) is refused.
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

#define WC_SEAL_VERSION 2
#define WC_SEAL_VERSION_LEGACY 1
#define WC_SEAL_KEY_ENV "WACAST_SECRET_KEY"
#define WC_SEAL_PREVIOUS_KEY_ENV "WACAST_SECRET_KEY_PREVIOUS"
/* "allow" (default) or "refuse": whether version 1 values still open. */
#define WC_SEAL_LEGACY_ENV "WACAST_SEAL_LEGACY"
/* Bytes a sealed value adds to its plaintext (both versions). */
#define WC_SEAL_OVERHEAD (2 + 24 + 16)

typedef struct wc_seal_keys wc_seal_keys;

/* Parses the current key (required) and the previous key (NULL or "" when
 * none) into *out (held in guarded, locked memory). Legacy values are
 * allowed. Returns -1 with a reason in err that never quotes the key. */
int wc_seal_init(wc_seal_keys **out, const char *current, const char *previous, char *err,
                 size_t errlen) __attribute__((warn_unused_result));
/* Same, from WACAST_SECRET_KEY and WACAST_SECRET_KEY_PREVIOUS, with the
 * legacy policy from WACAST_SEAL_LEGACY. */
int wc_seal_init_env(wc_seal_keys **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Sets the legacy policy: "allow" (or NULL or "") or "refuse". Returns -1
 * with a reason in err for anything else. */
int wc_seal_set_legacy(wc_seal_keys *k, const char *policy, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Wipes and frees. NULL is fine. */
void wc_seal_keys_free(wc_seal_keys *k);

/* Seals len bytes with the current key for device_id into a malloc'd *out
 * (*outlen bytes, len + WC_SEAL_OVERHEAD). Returns -1 when out of memory or
 * device_id is NULL or "". */
int wc_seal(const wc_seal_keys *k, const char *device_id, const void *plain, size_t len,
            uint8_t **out, size_t *outlen) __attribute__((warn_unused_result));
/* Opens a value sealed for device_id into a malloc'd, NUL-terminated *plain
 * (*plainlen bytes, not counting the NUL). Returns -1 with err "wrong key or
 * corrupt: ..." when no key opens it for this device (sealed for another
 * device, with another key, or altered), "legacy ... refused" for a version 1
 * value under WACAST_SEAL_LEGACY=refuse, or "unsupported ..." for an unknown
 * format. err never holds the plaintext. Release the plaintext with
 * wc_seal_plain_free(). */
int wc_unseal(const wc_seal_keys *k, const char *device_id, const uint8_t *sealed, size_t len,
              char **plain, size_t *plainlen, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Wipes and frees a plaintext from wc_unseal(). NULL is fine. */
void wc_seal_plain_free(char *plain, size_t len);

/* True when the value is in the current format, sealed with the current key
 * for device_id (no re-seal needed). */
bool wc_seal_is_current(const wc_seal_keys *k, const char *device_id, const uint8_t *sealed,
                        size_t len);

/* Writes a fresh random key as 64 hex characters plus NUL (for operators). */
void wc_seal_keygen(char out[65]);

#endif
