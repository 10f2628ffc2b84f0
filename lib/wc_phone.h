/* Phone numbers as leads type them ("012-345 6789", "+60 12 345 6789",
 * "60123456789@s.whatsapp.net") normalised to E.164 ("+60123456789"), so a
 * recipient has one spelling whatever the dashboard stored. Pure: no
 * allocation, no global state, safe from any thread. */
#ifndef WC_PHONE_H
#define WC_PHONE_H

#include <stddef.h>

/* Room for "+", 15 digits and the NUL. */
#define WC_PHONE_E164_MAX 17

/* Normalises raw to E.164 and writes "+<digits>" (NUL-terminated) into out.
 *
 * default_country_code is the country code for numbers written without one,
 * as digits without '+' ("60", "62", "1", "44"). It is only consulted for
 * numbers that are not international, so it may be NULL when every number
 * carries its own code.
 *
 * Accepted input: digits with separators (space, tab, '-', '.', '(', ')'); a
 * '+' before the first digit or a "00" prefix marks an international number;
 * in an international number a "(0)" trunk marker is dropped
 * ("+44 (0)20 7946 0958" -> "+442079460958"). A WhatsApp JID suffix
 * "@s.whatsapp.net" or "@c.us", with an optional ":<device>" before it, is
 * stripped, and the rest is international (a JID always carries its country
 * code). Otherwise, in this order:
 *   - starts with the default code and the rest is a plausible national
 *     number for that country: international written without '+'
 *     ("60123456789" -> "+60123456789"); for the countries in the length table
 *     a trunk 0 after the code is dropped ("600123456789" -> "+60123456789");
 *   - starts with '0': a trunk 0 is dropped and the default code prefixed
 *     ("012-345 6789" -> "+60123456789");
 *   - else the default code is prefixed ("123456789" -> "+60123456789").
 * "Plausible" uses a small table of national number lengths (60: 9-10,
 * 62: 9-12, 65: 8, 1: 10, 44: 10, 91: 10, 66: 9, 63: 10); other codes only
 * need the total to be 8..15 digits.
 *
 * Returns 0 on success. Returns -1 and sets *reason (when reason is not NULL)
 * to a static machine-readable string on failure; out is then "" if outlen > 0:
 *   "empty"                   NULL, "" or only separators/whitespace
 *   "invalid_characters"      a letter or other character, a misplaced '+'
 *   "invalid_country_code"    the result would start with 0 ("+0...", "000...")
 *   "too_short"               fewer than 8 digits in total
 *   "too_long"                more than 15 digits in total
 *   "invalid_default_country" a local number and default_country_code is
 *                             NULL or not 1-3 digits starting with 1-9
 *   "buffer_too_small"        outlen < WC_PHONE_E164_MAX */
int wc_phone_normalize(const char *raw, const char *default_country_code, char *out, size_t outlen,
                       const char **reason) __attribute__((warn_unused_result));

#endif
