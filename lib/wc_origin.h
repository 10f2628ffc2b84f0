/* Where credentials may go. A device's settings.base_url is written by the
 * dashboard, and the transports send the device's unsealed token or password
 * there; so a base URL must fall within the operator's allow-list
 * (WACAST_PROVIDER_HOSTS), and a link a gateway hands back is fetched only
 * from the gateway's own origin (scheme, host and port).
 *
 * The allow-list is a comma list of base URLs: "https://graph.facebook.com"
 * allows any path on that origin; "http://gowa.internal:3000/acme" allows
 * that path and below. An origin's port is explicit or its scheme's default,
 * so "https://graph.facebook.com" and "https://graph.facebook.com:443" are
 * one entry. An empty list allows nothing. Parsing is libcurl's, the same
 * parser that later sends the requests. */
#ifndef WC_ORIGIN_H
#define WC_ORIGIN_H

#include <stdbool.h>
#include <stddef.h>

#define WC_PROVIDER_HOSTS_ENV "WACAST_PROVIDER_HOSTS"
/* Meta's Cloud API. A gowa gateway is the operator's own: list it. */
#define WC_PROVIDER_HOSTS_DEFAULT "https://graph.facebook.com"
/* The config table entry (wc_config.h), one for every daemon that opens a
 * device: field is a char * in the daemon's config struct T. */
#define WC_CFG_PROVIDER_HOSTS(T, field)                                                            \
    {                                                                                              \
        WC_PROVIDER_HOSTS_ENV, WC_CFG_STR, WC_PROVIDER_HOSTS_DEFAULT,                              \
            "comma list of provider base URLs (scheme://host[:port][/path]) a device's base_url"   \
            " may point at; credentials are never sent anywhere else (empty: nowhere)",            \
            offsetof(T, field), 1, 0, false                                                        \
    }

typedef struct wc_origin {
    char scheme[8]; /* "http" or "https" */
    char host[256]; /* lower case; an IPv6 address in brackets */
    int port;       /* explicit, or the scheme's default */
} wc_origin;

/* Parses an absolute http(s) URL without user info into *o and, when path is
 * not NULL, its path ("/" when none). Returns -1 for anything else. */
int wc_origin_parse(const char *url, wc_origin *o, char *path, size_t pathlen)
    __attribute__((warn_unused_result));
bool wc_origin_equal(const wc_origin *a, const wc_origin *b);
/* Writes "scheme://host:port" (for messages; never holds user info). */
void wc_origin_format(const wc_origin *o, char *out, size_t outlen);

/* link resolved against base as a browser would ("/qr.png", "qr.png",
 * "//host/x", or an absolute URL), malloc'd; NULL when either does not parse
 * or out of memory. */
char *wc_origin_resolve(const char *base, const char *link);

/* Checks every entry of an allow-list (at start-up). Returns -1 with the
 * offending entry in err. */
int wc_provider_hosts_check(const char *list, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* True when base_url lies within an entry of list (NULL: the default list).
 * Otherwise false, with why "base_url not allowed: <origin> (...)" or
 * "base_url is not a valid http(s) URL ...". A base URL with user info, a
 * query, a fragment, a backslash, white space or ".." is refused: none is
 * needed to name a provider, and each can make a check and a request see two
 * different hosts. */
bool wc_provider_url_allowed(const char *list, const char *base_url, char *why, size_t whylen);

#endif
