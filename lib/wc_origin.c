/* Origins and the provider allow-list (see wc_origin.h), on libcurl's URL
 * parser. */
#include "wc_origin.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

static bool get_part(CURLU *h, CURLUPart part, unsigned flags, char *out, size_t outlen)
{
    char *v = NULL;
    if (curl_url_get(h, part, &v, flags) != CURLUE_OK || !v)
        return false;
    size_t n = strlen(v);
    bool ok = n < outlen;
    if (ok)
        memcpy(out, v, n + 1);
    curl_free(v);
    return ok;
}

static bool has_part(CURLU *h, CURLUPart part)
{
    char *v = NULL;
    CURLUcode rc = curl_url_get(h, part, &v, 0);
    curl_free(v);
    return rc == CURLUE_OK;
}

/* Fills *o (and path) from a parsed handle; false unless http(s) with a
 * host and no user info. */
static bool origin_of(CURLU *h, wc_origin *o, char *path, size_t pathlen)
{
    char port[16];
    memset(o, 0, sizeof *o);
    if (!get_part(h, CURLUPART_SCHEME, 0, o->scheme, sizeof o->scheme) ||
        !get_part(h, CURLUPART_HOST, 0, o->host, sizeof o->host) || !o->host[0] ||
        !get_part(h, CURLUPART_PORT, CURLU_DEFAULT_PORT, port, sizeof port))
        return false;
    for (char *p = o->scheme; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    for (char *p = o->host; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (strcmp(o->scheme, "http") != 0 && strcmp(o->scheme, "https") != 0)
        return false;
    if (has_part(h, CURLUPART_USER) || has_part(h, CURLUPART_PASSWORD))
        return false;
    o->port = atoi(port);
    if (o->port <= 0 || o->port > 65535)
        return false;
    if (path && !get_part(h, CURLUPART_PATH, 0, path, pathlen))
        return false;
    return true;
}

int wc_origin_parse(const char *url, wc_origin *o, char *path, size_t pathlen)
{
    CURLU *h = curl_url();
    if (!h)
        return -1;
    bool ok = url && curl_url_set(h, CURLUPART_URL, url, 0) == CURLUE_OK &&
              origin_of(h, o, path, pathlen);
    curl_url_cleanup(h);
    return ok ? 0 : -1;
}

bool wc_origin_equal(const wc_origin *a, const wc_origin *b)
{
    return strcmp(a->scheme, b->scheme) == 0 && strcmp(a->host, b->host) == 0 && a->port == b->port;
}

void wc_origin_format(const wc_origin *o, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s://%s:%d", o->scheme, o->host, o->port);
}

char *wc_origin_resolve(const char *base, const char *link)
{
    CURLU *h = curl_url();
    char *url = NULL, *out = NULL;
    if (h && base && link && curl_url_set(h, CURLUPART_URL, base, 0) == CURLUE_OK &&
        curl_url_set(h, CURLUPART_URL, link, 0) == CURLUE_OK &&
        curl_url_get(h, CURLUPART_URL, &url, 0) == CURLUE_OK && url)
        out = strdup(url);
    curl_free(url);
    curl_url_cleanup(h);
    return out;
}

/* Characters no provider base URL needs, each of which could make this
 * check and the request that follows read different hosts or paths. */
static bool plain_base(const char *url)
{
    for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f || strchr("@?#\\", *p))
            return false;
    }
    return strstr(url, "..") == NULL;
}

/* One list entry, trimmed, parsed; false when it is not a base URL. */
static bool parse_entry(const char *s, size_t n, wc_origin *o, char *path, size_t pathlen)
{
    while (n > 0 && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    char entry[512];
    if (n == 0 || n >= sizeof entry)
        return false;
    memcpy(entry, s, n);
    entry[n] = '\0';
    return plain_base(entry) && wc_origin_parse(entry, o, path, pathlen) == 0;
}

static bool is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i]))
            return false;
    return true;
}

int wc_provider_hosts_check(const char *list, char *err, size_t errlen)
{
    for (const char *s = list ? list : ""; *s;) {
        size_t n = strcspn(s, ",");
        wc_origin o;
        char path[512];
        if (!is_blank(s, n) && !parse_entry(s, n, &o, path, sizeof path)) {
            snprintf(err, errlen,
                     "%s: '%.*s' is not a base URL (scheme://host[:port][/path], http or https)",
                     WC_PROVIDER_HOSTS_ENV, (int)(n > 200 ? 200 : n), s);
            return -1;
        }
        s += n;
        if (*s == ',')
            s++;
    }
    return 0;
}

/* True when path lies at or below prefix (both as curl gives them). */
static bool path_within(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    while (n > 0 && prefix[n - 1] == '/')
        n--;
    return strncmp(path, prefix, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

bool wc_provider_url_allowed(const char *list, const char *base_url, char *why, size_t whylen)
{
    wc_origin base;
    char path[1024];
    if (!base_url || !plain_base(base_url) ||
        wc_origin_parse(base_url, &base, path, sizeof path) < 0) {
        snprintf(why, whylen,
                 "base_url is not a valid http(s) URL (scheme://host[:port][/path], without user "
                 "info, query or fragment)");
        return false;
    }
    if (!list)
        list = WC_PROVIDER_HOSTS_DEFAULT;
    for (const char *s = list; *s;) {
        size_t n = strcspn(s, ",");
        wc_origin o;
        char prefix[512];
        if (parse_entry(s, n, &o, prefix, sizeof prefix) && wc_origin_equal(&o, &base) &&
            path_within(path, prefix))
            return true;
        s += n;
        if (*s == ',')
            s++;
    }
    char origin[300];
    wc_origin_format(&base, origin, sizeof origin);
    snprintf(why, whylen, "base_url not allowed: %s (not in %s)", origin, WC_PROVIDER_HOSTS_ENV);
    return false;
}
