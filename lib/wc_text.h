/* Untrusted text made safe to store and log. Every text that comes from
 * outside (provider replies, gateway bodies, webhook payloads, lead fields)
 * passes through here before it reaches PostgreSQL, a stream or a log:
 * PostgreSQL refuses a whole statement for one invalid UTF-8 byte or one NUL,
 * so one bad text must never get that far.
 *
 * The result is always valid UTF-8, NUL-free, NUL-terminated and bounded:
 * invalid sequences (bad bytes, overlongs, surrogates, code points above
 * U+10FFFF, a sequence cut short) become U+FFFD, NUL and other C0 controls
 * except tab and newline become a space, and a cut happens only on a
 * character boundary. */
#ifndef WC_TEXT_H
#define WC_TEXT_H

#include <stdbool.h>
#include <stddef.h>

/* Copies at most srclen bytes of src (stops early at a NUL only when
 * srclen is (size_t)-1, i.e. src is a C string) into dst (size bytes, >= 1)
 * as clean text. Returns the length written (< size). Returns true in *changed
 * (when not NULL) if anything was replaced or cut. */
size_t wc_text_clean(char *dst, size_t size, const char *src, size_t srclen, bool *changed);

/* Cleans a NUL-terminated buffer in place (e.g. after snprintf cut it): a
 * sequence cut at the end is dropped, invalid bytes become '?' (in place the
 * text cannot grow), controls become a space. Returns the new length. */
size_t wc_text_fix(char *s);

/* Length of the valid UTF-8 sequence at s (1-4), or 0 when the bytes at s
 * (at most n) do not start one. */
size_t wc_text_seq_len(const unsigned char *s, size_t n);

/* As wc_text_clean, on one line: tabs and newlines become spaces (the start
 * of a reply that is not the expected JSON, quoted in an error message). */
size_t wc_text_clean_line(char *dst, size_t size, const char *src, size_t srclen);

/* true when the n bytes at s (n > 0) are printable ASCII without spaces: an
 * opaque token such as a provider's message id, storable and matchable as
 * it is. */
bool wc_text_is_token(const char *s, size_t n);

/* true when the n bytes at s are valid UTF-8 with no NUL. */
bool wc_text_valid(const char *s, size_t n);

#endif
