/* Log lines: "2026-11-22T01:02:03.456Z wacast-sender[123] INFO message". */
#include "wc_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int wc_log_min_level = WC_LOG_INFO;
static const char *log_name = "wacast";

int wc_log_set_level(const char *name)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, names[i]) == 0) {
            wc_log_min_level = i;
            return 0;
        }
    }
    return -1;
}

void wc_log_set_name(const char *name)
{
    log_name = name;
}

void wc_log_write(int level, const char *fmt, ...)
{
    static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s[%d] %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), log_name, (int)getpid(),
                     tags[level < 0   ? 0
                          : level > 3 ? 3
                                      : level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write() per line keeps lines whole when several processes share stderr. */
    if (write(STDERR_FILENO, line, len) < 0) {
        /* nothing sensible to do */
    }
}

void wc_log_redact_url(const char *url, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    snprintf(out, outlen, "%s", url ? url : "");
    /* URL form: scheme://user:password@host */
    char *scheme = strstr(out, "://");
    if (scheme) {
        char *userinfo = scheme + 3;
        /* The last '@' ends the credentials: a password may contain '@' or '/'. */
        char *at = strrchr(userinfo, '@');
        char *colon = strchr(userinfo, ':');
        if (at && colon && colon < at) {
            char rest[1024];
            snprintf(rest, sizeof rest, "%s", at);
            snprintf(colon + 1, outlen - (size_t)(colon + 1 - out), "***%s", rest);
        }
        return;
    }
    /* key/value form: ... password=secret ... */
    char *pw = strstr(out, "password=");
    if (pw) {
        char *val = pw + strlen("password=");
        char *end = val;
        if (*end == '\'') {
            end++;
            while (*end && *end != '\'')
                end++;
            if (*end)
                end++;
        } else {
            while (*end && *end != ' ')
                end++;
        }
        char rest[1024];
        snprintf(rest, sizeof rest, "%s", end);
        snprintf(val, outlen - (size_t)(val - out), "***%s", rest);
    }
}
