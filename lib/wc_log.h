/* Logging to stderr, one line per event. The level is checked before the
 * arguments are formatted (as redis's serverLog does), so a debug line on a
 * hot path costs a compare when debug logging is off. Never pass secrets:
 * use wc_log_redact_url() for URLs that may carry a password. */
#ifndef WC_LOG_H
#define WC_LOG_H

#include <stddef.h>

enum wc_log_level { WC_LOG_DEBUG = 0, WC_LOG_INFO, WC_LOG_WARN, WC_LOG_ERROR };

extern int wc_log_min_level;

/* Sets the level from a name (debug, info, warn, error); -1 if unknown. */
int wc_log_set_level(const char *name) __attribute__((warn_unused_result));
/* Sets the line format from a name: "text" (the default, for people) or
 * "json" (one JSON object per line, for log collectors); -1 if unknown. */
int wc_log_set_format(const char *name) __attribute__((warn_unused_result));
/* Sets the daemon name printed on every line. The string must outlive logging. */
void wc_log_set_name(const char *name);

void wc_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define wc_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) >= wc_log_min_level)                                                           \
            wc_log_write((level), __VA_ARGS__);                                                    \
    } while (0)
#define wc_debug(...) wc_log(WC_LOG_DEBUG, __VA_ARGS__)
#define wc_info(...) wc_log(WC_LOG_INFO, __VA_ARGS__)
#define wc_warn(...) wc_log(WC_LOG_WARN, __VA_ARGS__)
#define wc_error(...) wc_log(WC_LOG_ERROR, __VA_ARGS__)

/* Copies url into out with every password replaced by "***", whatever its
 * spelling: redis://:secret@host -> redis://:***@host, postgres://u:pw@h ->
 * postgres://u:***@h, ?password=... and &sslpassword=... in a URL's query,
 * and password=... / sslpassword=... in a libpq key/value string. Masks
 * before cutting to outlen, so a cut never shows part of a password.
 * Always NUL-terminates. */
void wc_log_redact_url(const char *url, char *out, size_t outlen);

#endif
