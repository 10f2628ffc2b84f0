/* Bounded image fetching (see wc_fetch.h): wc_httpc with a byte cap,
 * redirects and an address check on every connection; data: URLs decoded
 * with libsodium's base64. */
#include "wc_fetch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <sodium.h>

typedef struct fetch {
    wc_fetch_cb *cb;
    void *arg;
    char *allow;
    size_t max_bytes;
} fetch;

/* An address as 16 bytes (IPv4 as IPv4-mapped IPv6) and whether it was v4. */
static bool addr_bytes(const struct sockaddr *sa, unsigned char b[16], bool *v4)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        memset(b, 0, 10);
        b[10] = b[11] = 0xFF;
        memcpy(b + 12, &in->sin_addr, 4);
        *v4 = true;
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        memcpy(b, &in6->sin6_addr, 16);
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
        *v4 = memcmp(b, mapped, 12) == 0;
        return true;
    }
    return false;
}

static bool prefix_match(const unsigned char *a, const unsigned char *net, int bits)
{
    int full = bits / 8, rest = bits % 8;
    if (memcmp(a, net, (size_t)full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xFF << (8 - rest));
    return (a[full] & mask) == (net[full] & mask);
}

/* One CIDR ("10.0.0.0/8", "::1/128", or a bare address) as 16 bytes and a
 * prefix length over them. */
static bool parse_cidr(const char *s, size_t n, unsigned char net[16], int *bits)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    char *slash = strchr(buf, '/');
    long len = -1;
    if (slash) {
        *slash = '\0';
        char *end;
        len = strtol(slash + 1, &end, 10);
        if (end == slash + 1 || *end)
            return false;
    }
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, buf, &a4) == 1) {
        if (len > 32)
            return false;
        memset(net, 0, 10);
        net[10] = net[11] = 0xFF;
        memcpy(net + 12, &a4, 4);
        *bits = 96 + (int)(len < 0 ? 32 : len);
        return true;
    }
    if (inet_pton(AF_INET6, buf, &a6) == 1) {
        if (len > 128)
            return false;
        memcpy(net, &a6, 16);
        *bits = (int)(len < 0 ? 128 : len);
        return true;
    }
    return false;
}

/* Calls fn for each comma-separated entry; false at the first bad one. */
static bool in_allow(const char *allow, const unsigned char a[16], bool *bad, char *err,
                     size_t errlen)
{
    *bad = false;
    for (const char *p = allow; p && *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ", ");
        if (n == 0)
            break;
        unsigned char net[16];
        int bits;
        if (!parse_cidr(p, n, net, &bits)) {
            *bad = true;
            if (err)
                snprintf(err, errlen, "not an address or CIDR: %.*s", (int)(n > 60 ? 60 : n), p);
            return false;
        }
        if (a && prefix_match(a, net, bits))
            return true;
        p += n;
    }
    return false;
}

int wc_fetch_allow_check(const char *allow, char *err, size_t errlen)
{
    bool bad;
    (void)in_allow(allow, NULL, &bad, err, errlen);
    return bad ? -1 : 0;
}

/* Ranges that are not the public internet. */
static const struct {
    const char *cidr, *name;
} non_public[] = {
    {"0.0.0.0/8", "this network"}, {"10.0.0.0/8", "private"},        {"100.64.0.0/10", "CGNAT"},
    {"127.0.0.0/8", "loopback"},   {"169.254.0.0/16", "link-local"}, {"172.16.0.0/12", "private"},
    {"192.0.0.0/24", "IETF"},      {"192.168.0.0/16", "private"},    {"198.18.0.0/15", "benchmark"},
    {"224.0.0.0/4", "multicast"},  {"240.0.0.0/4", "reserved"},      {"::/128", "unspecified"},
    {"::1/128", "loopback"},       {"64:ff9b::/96", "NAT64"},        {"fc00::/7", "unique local"},
    {"fe80::/10", "link-local"},   {"ff00::/8", "multicast"},
};

bool wc_fetch_address_allowed(const char *allow, const struct sockaddr *addr, char *why,
                              size_t whylen)
{
    unsigned char a[16];
    bool v4, bad;
    if (!addr_bytes(addr, a, &v4)) {
        snprintf(why, whylen, "not an IP address");
        return false;
    }
    char text[INET6_ADDRSTRLEN] = "?";
    if (v4)
        inet_ntop(AF_INET, a + 12, text, sizeof text);
    else
        inet_ntop(AF_INET6, a, text, sizeof text);
    for (size_t i = 0; i < sizeof non_public / sizeof non_public[0]; i++) {
        unsigned char net[16];
        int bits;
        if (!parse_cidr(non_public[i].cidr, strlen(non_public[i].cidr), net, &bits))
            continue;
        if (!prefix_match(a, net, bits))
            continue;
        if (in_allow(allow, a, &bad, NULL, 0))
            return true;
        snprintf(why, whylen, "%s is a %s address (not in " WC_FETCH_ALLOW_ENV ")", text,
                 non_public[i].name);
        return false;
    }
    return true;
}

static bool check_address(void *arg, const struct sockaddr *addr, char *why, size_t whylen)
{
    fetch *f = arg;
    return wc_fetch_address_allowed(f->allow, addr, why, whylen);
}

/* image/<anything> or application/octet-stream (what storage buckets send),
 * parameters ignored; the bytes decide the rest. */
static bool image_content_type(const char *ct)
{
    if (!ct)
        return true; /* none sent: the magic bytes decide */
    while (*ct == ' ')
        ct++;
    return strncasecmp(ct, "image/", 6) == 0 ||
           strncasecmp(ct, "application/octet-stream", 24) == 0;
}

static void on_response(void *arg, const wc_httpc_resp *r)
{
    fetch *f = arg;
    char why[300];
    const char *code = NULL;
    if (r->error) {
        code = r->timed_out            ? WC_FETCH_E_TIMEOUT
               : r->too_large          ? WC_FETCH_E_TOO_LARGE
               : r->too_many_redirects ? WC_FETCH_E_REDIRECTS
               : r->address_refused    ? WC_FETCH_E_ADDRESS
                                       : WC_FETCH_E_FAILED;
        snprintf(why, sizeof why, "%s", r->error);
    } else if (r->status != 200) {
        code = r->status >= 300 && r->status < 400 ? WC_FETCH_E_REDIRECTS : WC_FETCH_E_STATUS;
        snprintf(why, sizeof why, "HTTP status %ld", r->status);
    } else if (!image_content_type(r->content_type)) {
        code = WC_FETCH_E_TYPE;
        snprintf(why, sizeof why, "content type %.100s is not an image", r->content_type);
    }
    if (code)
        f->cb(f->arg, NULL, 0, code, why);
    else
        f->cb(f->arg, (const unsigned char *)r->body, r->body_len, NULL, NULL);
    free(f->allow);
    free(f);
}

int wc_fetch_start(wc_httpc *c, const char *url, const wc_fetch_opts *o, wc_fetch_cb *cb, void *arg,
                   const char **code, char *why, size_t whylen)
{
    if (!url || (strncasecmp(url, "http://", 7) != 0 && strncasecmp(url, "https://", 8) != 0)) {
        *code = WC_FETCH_E_URL;
        snprintf(why, whylen, "only http(s) links are fetched");
        return -1;
    }
    fetch *f = calloc(1, sizeof *f);
    if (!f || !(f->allow = strdup(o && o->allow ? o->allow : ""))) {
        free(f);
        *code = WC_FETCH_E_FAILED;
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    f->cb = cb;
    f->arg = arg;
    long redirects = o && o->max_redirects ? o->max_redirects : WC_FETCH_MAX_REDIRECTS_DEFAULT;
    wc_httpc_req req = {
        .method = "GET",
        .url = url,
        .timeout_ms = o && o->timeout_ms > 0 ? o->timeout_ms : WC_FETCH_TIMEOUT_MS_DEFAULT,
        .max_response = o && o->max_bytes ? o->max_bytes : WC_FETCH_MAX_BYTES_DEFAULT,
        .max_redirects = redirects < 0 ? 0 : redirects,
        .address_ok = check_address,
        .address_arg = f,
    };
    static const char *const headers[] = {"Accept: image/jpeg, image/png, image/webp", NULL};
    req.headers = headers;
    if (wc_httpc_request(c, &req, on_response, f) < 0) {
        free(f->allow);
        free(f);
        *code = WC_FETCH_E_URL;
        snprintf(why, whylen, "the link could not be requested (not a valid URL?)");
        return -1;
    }
    return 0;
}

int wc_fetch_data_url(const char *url, size_t max_bytes, unsigned char **out, size_t *outlen,
                      const char **code, char *why, size_t whylen)
{
    *out = NULL;
    *outlen = 0;
    size_t cap_bytes = max_bytes ? max_bytes : WC_FETCH_MAX_BYTES_DEFAULT;
    if (!url || strncasecmp(url, "data:", 5) != 0) {
        *code = WC_FETCH_E_URL;
        snprintf(why, whylen, "not a data: URL");
        return -1;
    }
    const char *comma = strchr(url + 5, ',');
    /* The media type's parameters end with ";base64" right before the comma. */
    if (!comma || comma - (url + 5) < 7 || strncasecmp(comma - 7, ";base64", 7) != 0) {
        *code = WC_FETCH_E_DATA_URL;
        snprintf(why, whylen, "a data: URL must be base64 (data:image/jpeg;base64,...)");
        return -1;
    }
    const char *b64 = comma + 1;
    size_t n = strlen(b64);
    /* Line breaks and spaces are skipped by the decoder: only the base64
     * characters count against the cap (a wrapped URL of cap bytes fits). */
    size_t chars = n;
    for (size_t i = 0; i < n; i++)
        chars -= b64[i] == ' ' || b64[i] == '\t' || b64[i] == '\r' || b64[i] == '\n';
    if (chars / 4 * 3 > cap_bytes + 3) {
        *code = WC_FETCH_E_TOO_LARGE;
        snprintf(why, whylen, "data: URL holds more than %zu bytes", cap_bytes);
        return -1;
    }
    size_t cap = n / 4 * 3 + 3;
    unsigned char *buf = malloc(cap ? cap : 1);
    if (!buf) {
        *code = WC_FETCH_E_FAILED;
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    size_t got = 0;
    if (sodium_base642bin(buf, cap, b64, n, " \t\r\n", &got, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0) {
        free(buf);
        *code = WC_FETCH_E_DATA_URL;
        snprintf(why, whylen, "data: URL is not valid base64");
        return -1;
    }
    if (got > cap_bytes) {
        free(buf);
        *code = WC_FETCH_E_TOO_LARGE;
        snprintf(why, whylen, "data: URL holds more than %zu bytes", cap_bytes);
        return -1;
    }
    *out = buf;
    *outlen = got;
    return 0;
}
