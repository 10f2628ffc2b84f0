/* Log lines: "2026-11-22T01:02:03.456Z wacast-sender[123] INFO message", or
 * with WACAST_LOG_FORMAT=json one object per line for log collectors:
 * {"ts":"2026-11-22T01:02:03.456Z","level":"info","daemon":"wacast-sender",
 * "pid":123,"msg":"message"}. */
#include "wc_log.h"

#include "wc_text.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int wc_log_min_level = WC_LOG_INFO;
static const char *log_name = "wacast";
static bool log_json;

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

int wc_log_set_format(const char *name)
{
    if (strcasecmp(name, "text") == 0 || name[0] == '\0') {
        log_json = false;
        return 0;
    }
    if (strcasecmp(name, "json") == 0) {
        log_json = true;
        return 0;
    }
    return -1;
}

/* Appends s to out[*len..cap) as the inside of a JSON string: quotes,
 * backslashes and controls escaped, invalid UTF-8 as U+FFFD, stopping before
 * a character that would not fit whole (so a cut never breaks the JSON). */
static void json_escape(char *out, size_t *len, size_t cap, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    while (n > 0) {
        char tmp[8];
        size_t tl, step;
        size_t seq = wc_text_seq_len(p, n);
        if (seq == 0) {
            memcpy(tmp, "\xef\xbf\xbd", 3);
            tl = 3;
            step = 1;
        } else if (seq > 1) {
            memcpy(tmp, p, seq);
            tl = seq;
            step = seq;
        } else if (*p == '"' || *p == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)*p;
            tl = 2;
            step = 1;
        } else if (*p < 0x20) {
            tl = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", *p);
            step = 1;
        } else {
            tmp[0] = (char)*p;
            tl = 1;
            step = 1;
        }
        if (*len + tl >= cap)
            return;
        memcpy(out + *len, tmp, tl);
        *len += tl;
        p += step;
        n -= step;
    }
}

static void write_json(int level, const char *ts, const char *msg)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    char line[4096];
    size_t len = 0, cap = sizeof line - 3; /* room for "\"}" and the newline */
    int n = snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"daemon\":\"", ts,
                     names[level]);
    len = (size_t)n;
    json_escape(line, &len, cap - 32, log_name);
    len +=
        (size_t)snprintf(line + len, sizeof line - len, "\",\"pid\":%d,\"msg\":\"", (int)getpid());
    json_escape(line, &len, cap, msg);
    memcpy(line + len, "\"}\n", 3);
    len += 3;
    if (write(STDERR_FILENO, line, len) < 0) {
        /* nothing sensible to do */
    }
}

void wc_log_set_name(const char *name)
{
    log_name = name;
}

void wc_log_write(int level, const char *fmt, ...)
{
    static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    level = level < 0 ? 0 : level > 3 ? 3 : level;
    char ts[64];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
    char line[2048];
    int n = log_json ? 0
                     : snprintf(line, sizeof line, "%s %s[%d] %s ", ts, log_name, (int)getpid(),
                                tags[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (log_json) {
        write_json(level, ts, line);
        return;
    }
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    /* One write() per line keeps lines whole when several processes share stderr. */
    if (write(STDERR_FILENO, line, len) < 0) {
        /* nothing sensible to do */
    }
}

/* Replaces, in place, the value of every key=value pair whose key is one of
 * keys by "***". A pair starts at the start of s or after one of `before`;
 * its value ends at one of `after` (or the end; a value in single quotes
 * ends at the closing quote). s has room for cap bytes; "***" may be longer
 * than the value, so the tail moves (and is cut at cap, never the mask). */
static void mask_pairs(char *s, size_t cap, const char *before, const char *after)
{
    static const char *keys[] = {"password", "sslpassword", NULL};
    for (char *p = s; *p;) {
        bool at_start = p == s || strchr(before, p[-1]) != NULL;
        char *val = NULL;
        for (int k = 0; at_start && !val && keys[k]; k++) {
            size_t n = strlen(keys[k]);
            if (strncasecmp(p, keys[k], n) != 0)
                continue;
            /* libpq allows spaces around the '='. */
            char *eq = p + n + strspn(p + n, " \t");
            if (*eq == '=')
                val = eq + 1 + strspn(eq + 1, " \t");
        }
        if (!val) {
            p++;
            continue;
        }
        if ((size_t)(val - s) + 4 > cap) { /* no room for the mask: drop the rest */
            *val = '\0';
            return;
        }
        char *end = val;
        if (*end == '\'') {
            for (end++; *end && *end != '\''; end++)
                if (*end == '\\' && end[1])
                    end++;
            if (*end)
                end++;
        } else {
            end += strcspn(end, after);
        }
        size_t tail = strlen(end) + 1;
        if ((size_t)(val - s) + 3 + tail > cap)
            tail = cap - (size_t)(val - s) - 3; /* cut the tail; the NUL is put back below */
        memmove(val + 3, end, tail);
        memcpy(val, "***", 3);
        s[cap - 1] = '\0';
        p = val + 3;
    }
}

void wc_log_redact_url(const char *url, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    /* Masked at full length, then cut: cutting first could cut off the '@'
     * that marks where a password ends, and print the password. */
    size_t len = strlen(url ? url : "");
    size_t cap = len + 3 * 8 + 1;
    char *work = malloc(cap);
    if (!work) {
        snprintf(out, outlen, "%s", "(url not shown)");
        return;
    }
    memcpy(work, url ? url : "", len + 1);
    /* URL form only when the text starts with a scheme: a key/value string
     * may hold "://" in some value. */
    size_t scheme_len =
        strspn(work, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-");
    char *scheme =
        scheme_len > 0 && strncmp(work + scheme_len, "://", 3) == 0 ? work + scheme_len : NULL;
    if (scheme) {
        /* URL form: scheme://user:password@host/...?password=... The last
         * '@' ends the credentials: a password may contain '@' or '/' (an
         * '@' later in the query only masks more). */
        char *userinfo = scheme + 3;
        char *at = strrchr(userinfo, '@');
        char *colon = strchr(userinfo, ':');
        if (at && colon && colon < at) {
            memmove(colon + 4, at, strlen(at) + 1);
            memcpy(colon + 1, "***", 3);
        }
        char *query = strchr(userinfo, '?');
        if (query)
            mask_pairs(query + 1, cap - (size_t)(query + 1 - work), "&", "&#");
    } else {
        /* libpq key/value form: host=... password=secret sslpassword='a b' */
        mask_pairs(work, cap, " \t\n", " \t\n");
    }
    snprintf(out, outlen, "%s", work);
    free(work);
}
