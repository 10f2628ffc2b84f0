/* Webhook signatures, envelopes and opt-out words (see wc_webhook.h). The
 * parsers walk fixed paths through the JSON with one helper per field type,
 * so every type check produces an error that names the field's path; there
 * is no recursion over the document, and jansson caps its own nesting. */
#include "wc_webhook.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define SIG_PREFIX "sha256="
#define SIG_PREFIX_LEN (sizeof SIG_PREFIX - 1)
#define SHA256_LEN 32

static const char PROVIDER_CLOUDAPI[] = "cloudapi";
static const char PROVIDER_GOWA[] = "gowa";

/* --- signatures --------------------------------------------------------- */

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int hmac_sha256(const char *secret, const unsigned char *body, size_t len,
                       unsigned char mac[SHA256_LEN])
{
    static const unsigned char empty[1];
    size_t key_len = strlen(secret);
    unsigned int mac_len = 0;
    if (key_len > (size_t)INT_MAX)
        return -1;
    if (!HMAC(EVP_sha256(), secret, (int)key_len, body ? body : empty, len, mac, &mac_len) ||
        mac_len != SHA256_LEN)
        return -1;
    return 0;
}

bool wc_webhook_verify(const char *secret, const unsigned char *body, size_t len,
                       const char *signature_header)
{
    unsigned char want[SHA256_LEN], got[SHA256_LEN];

    if (!secret || !*secret || !signature_header || (!body && len > 0))
        return false;
    if (strncmp(signature_header, SIG_PREFIX, SIG_PREFIX_LEN) != 0)
        return false;
    const char *hex = signature_header + SIG_PREFIX_LEN;
    if (strlen(hex) != 2 * SHA256_LEN)
        return false;
    for (size_t i = 0; i < SHA256_LEN; i++) {
        int hi = hex_value((unsigned char)hex[2 * i]);
        int lo = hex_value((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        got[i] = (unsigned char)(hi << 4 | lo);
    }
    if (hmac_sha256(secret, body, len, want) != 0)
        return false;
    bool ok = CRYPTO_memcmp(want, got, SHA256_LEN) == 0;
    OPENSSL_cleanse(want, sizeof want);
    return ok;
}

int wc_webhook_sign(const char *secret, const unsigned char *body, size_t len, char *out,
                    size_t outlen)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char mac[SHA256_LEN];

    if (out && outlen > 0)
        out[0] = '\0';
    if (!out || outlen < WC_WEBHOOK_SIGNATURE_LEN || !secret || !*secret || (!body && len > 0))
        return -1;
    if (hmac_sha256(secret, body, len, mac) != 0)
        return -1;
    memcpy(out, SIG_PREFIX, SIG_PREFIX_LEN);
    for (size_t i = 0; i < SHA256_LEN; i++) {
        out[SIG_PREFIX_LEN + 2 * i] = digits[mac[i] >> 4];
        out[SIG_PREFIX_LEN + 2 * i + 1] = digits[mac[i] & 0xf];
    }
    out[SIG_PREFIX_LEN + 2 * SHA256_LEN] = '\0';
    return 0;
}

/* --- parsing helpers ---------------------------------------------------- */

typedef struct parse_ctx {
    wc_webhook_events *out;
    size_t capacity; /* of out->items */
    size_t max_events;
    bool full; /* max_events reached: stop adding, report truncated */
    char *err;
    size_t errlen;
    char path[160]; /* where we are, for error messages */
} parse_ctx;

static int fail(parse_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(parse_ctx *c, const char *fmt, ...)
{
    if (c->err && c->errlen > 0) {
        char msg[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (c->path[0])
            snprintf(c->err, c->errlen, "%s: %s", c->path, msg);
        else
            snprintf(c->err, c->errlen, "%s", msg);
    }
    return -1;
}

static void set_path(parse_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_path(parse_ctx *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->path, sizeof c->path, fmt, ap);
    va_end(ap);
}

/* Narrows the error path to a part of the current item ("errors[0]"). */
static void append_path(parse_ctx *c, const char *suffix)
{
    size_t used = strlen(c->path);
    snprintf(c->path + used, sizeof c->path - used, ".%s", suffix);
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

/* Each getter: 0 with *out set (NULL when absent and optional), -1 with an
 * error when required and absent or present with the wrong type. JSON null
 * counts as absent. */
static int get_typed(parse_ctx *c, const json_t *obj, const char *key, json_type type,
                     const char *want, bool required, json_t **out)
{
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) {
        if (required)
            return fail(c, "\"%s\" is missing", key);
        return 0;
    }
    if (json_typeof(v) != type)
        return fail(c, "\"%s\" must be %s, not %s", key, want, json_kind(v));
    *out = v;
    return 0;
}

static int get_object(parse_ctx *c, const json_t *obj, const char *key, bool required, json_t **out)
{
    return get_typed(c, obj, key, JSON_OBJECT, "an object", required, out);
}

static int get_array(parse_ctx *c, const json_t *obj, const char *key, bool required, json_t **out)
{
    return get_typed(c, obj, key, JSON_ARRAY, "an array", required, out);
}

static int get_string(parse_ctx *c, const json_t *obj, const char *key, bool required,
                      const char **out)
{
    json_t *v;
    *out = NULL;
    if (get_typed(c, obj, key, JSON_STRING, "a string", required, &v) != 0)
        return -1;
    if (v)
        *out = json_string_value(v);
    return 0;
}

static int dup_into(parse_ctx *c, char **dst, const char *src)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = strdup(src);
    if (!*dst)
        return fail(c, "out of memory");
    return 0;
}

/* Length of the user part of a JID: up to '@', and without a ":<device>"
 * suffix. 0 for "@s.whatsapp.net" or ":3@s.whatsapp.net". */
static size_t user_part_len(const char *jid)
{
    size_t n = strcspn(jid, "@");
    const char *colon = memchr(jid, ':', n);
    return colon ? (size_t)(colon - jid) : n;
}

/* The user part of a JID; NULL when jid is NULL or has none. */
static int dup_user_part(parse_ctx *c, char **dst, const char *jid)
{
    *dst = NULL;
    if (!jid)
        return 0;
    size_t n = user_part_len(jid);
    if (n == 0)
        return 0;
    *dst = strndup(jid, n);
    if (!*dst)
        return fail(c, "out of memory");
    return 0;
}

/* Appends a zeroed event. Returns 0 and *ev, 1 when max_events is reached
 * (nothing appended, truncated set), -1 out of memory. */
static int new_event(parse_ctx *c, wc_webhook_kind kind, const char *provider,
                     wc_webhook_event **ev)
{
    wc_webhook_events *out = c->out;
    if (out->count >= c->max_events) {
        out->truncated = true;
        c->full = true;
        return 1;
    }
    if (out->count == c->capacity) {
        size_t want = c->capacity ? 2 * c->capacity : 8;
        if (want > c->max_events)
            want = c->max_events;
        wc_webhook_event *items = realloc(out->items, want * sizeof *items);
        if (!items)
            return fail(c, "out of memory");
        out->items = items;
        c->capacity = want;
    }
    *ev = &out->items[out->count++];
    memset(*ev, 0, sizeof **ev);
    (*ev)->kind = kind;
    (*ev)->provider = provider;
    return 0;
}

/* Unix seconds written as digits (cloudapi sends a string, accept a number). */
static int get_unix_seconds(parse_ctx *c, const json_t *obj, const char *key, int64_t *out)
{
    json_t *v = json_object_get(obj, key);
    *out = 0;
    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0)
            return fail(c, "\"%s\" is negative", key);
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (!json_is_string(v))
        return fail(c, "\"%s\" must be a string of digits, not %s", key, json_kind(v));
    const char *s = json_string_value(v);
    size_t n = strlen(s);
    if (n == 0 || n > 18 || strspn(s, "0123456789") != n)
        return fail(c, "\"%s\" is not unix seconds: \"%.40s\"", key, s);
    *out = (int64_t)strtoll(s, NULL, 10);
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static bool take_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)(*p)[i];
        if (ch < '0' || ch > '9')
            return false;
        v = v * 10 + (ch - '0');
    }
    *p += n;
    *out = v;
    return true;
}

/* RFC 3339: YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM). */
static bool parse_rfc3339(const char *s, int64_t *out)
{
    int year, mon, day, hour, min, sec, off_h = 0, off_m = 0, sign = 0;
    const char *p = s;
    if (!take_digits(&p, 4, &year) || *p++ != '-' || !take_digits(&p, 2, &mon) || *p++ != '-' ||
        !take_digits(&p, 2, &day) || (*p != 'T' && *p != 't' && *p != ' '))
        return false;
    p++;
    if (!take_digits(&p, 2, &hour) || *p++ != ':' || !take_digits(&p, 2, &min) || *p++ != ':' ||
        !take_digits(&p, 2, &sec))
        return false;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return false;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        sign = *p++ == '+' ? 1 : -1;
        if (!take_digits(&p, 2, &off_h) || *p++ != ':' || !take_digits(&p, 2, &off_m))
            return false;
    } else {
        return false;
    }
    if (*p != '\0' || mon < 1 || mon > 12 || day < 1 || day > 31 || hour > 23 || min > 59 ||
        sec > 60 || off_h > 23 || off_m > 59)
        return false;
    int64_t t =
        days_from_civil(year, (unsigned)mon, (unsigned)day) * 86400 + hour * 3600 + min * 60 + sec;
    *out = t - sign * (off_h * 3600 + off_m * 60);
    return true;
}

static int get_rfc3339(parse_ctx *c, const json_t *obj, const char *key, int64_t *out)
{
    const char *s;
    *out = 0;
    if (get_string(c, obj, key, false, &s) != 0)
        return -1;
    if (s && !parse_rfc3339(s, out))
        return fail(c, "\"%s\" is not an RFC 3339 time: \"%.40s\"", key, s);
    return 0;
}

/* --- Meta's envelope ---------------------------------------------------- */

static int cloudapi_status(parse_ctx *c, const json_t *st, const char *phone_number_id)
{
    const char *id, *status, *recipient, *callback;
    json_t *errors;
    int64_t ts;
    wc_webhook_status value;

    if (!json_is_object(st))
        return fail(c, "must be an object, not %s", json_kind(st));
    if (get_string(c, st, "id", true, &id) != 0 ||
        get_string(c, st, "status", true, &status) != 0 ||
        get_string(c, st, "recipient_id", false, &recipient) != 0 ||
        get_string(c, st, "biz_opaque_callback_data", false, &callback) != 0 ||
        get_unix_seconds(c, st, "timestamp", &ts) != 0 ||
        get_array(c, st, "errors", false, &errors) != 0)
        return -1;
    if (!*id)
        return fail(c, "\"id\" is empty");
    if (strcmp(status, "sent") == 0)
        value = WC_WEBHOOK_SENT;
    else if (strcmp(status, "delivered") == 0)
        value = WC_WEBHOOK_DELIVERED;
    else if (strcmp(status, "read") == 0)
        value = WC_WEBHOOK_READ;
    else if (strcmp(status, "failed") == 0)
        value = WC_WEBHOOK_FAILED;
    else {
        /* "deleted", "warning", "played" and whatever Meta adds next. */
        c->out->ignored++;
        return 0;
    }

    const json_t *first_error =
        errors && json_array_size(errors) > 0 ? json_array_get(errors, 0) : NULL;
    const char *title = NULL, *message = NULL, *details = NULL;
    long code = 0;
    if (first_error) {
        json_t *code_v, *data;
        append_path(c, "errors[0]");
        if (!json_is_object(first_error))
            return fail(c, "must be an object, not %s", json_kind(first_error));
        if (get_typed(c, first_error, "code", JSON_INTEGER, "an integer", false, &code_v) != 0 ||
            get_string(c, first_error, "title", false, &title) != 0 ||
            get_string(c, first_error, "message", false, &message) != 0 ||
            get_object(c, first_error, "error_data", false, &data) != 0)
            return -1;
        if (data && get_string(c, data, "details", false, &details) != 0)
            return -1;
        code = code_v ? (long)json_integer_value(code_v) : 0;
    }

    wc_webhook_event *ev;
    int rc = new_event(c, WC_WEBHOOK_STATUS, PROVIDER_CLOUDAPI, &ev);
    if (rc != 0)
        return rc < 0 ? -1 : 0;
    ev->status = value;
    ev->timestamp = ts;
    ev->error_code = code;
    if (dup_into(c, &ev->provider_id, id) != 0 || dup_into(c, &ev->peer, recipient) != 0 ||
        dup_into(c, &ev->receiver, phone_number_id) != 0 ||
        dup_into(c, &ev->callback_data, callback) != 0 ||
        dup_into(c, &ev->error_title, title) != 0 ||
        dup_into(c, &ev->error_message, message) != 0 ||
        dup_into(c, &ev->error_details, details) != 0)
        return -1;
    return 0;
}

/* The name Meta gives the sender in value.contacts, if any. */
static const char *cloudapi_contact_name(const json_t *contacts, const char *wa_id)
{
    size_t i;
    json_t *contact;
    json_array_foreach(contacts, i, contact)
    {
        json_t *id = json_object_get(contact, "wa_id");
        json_t *name = json_object_get(json_object_get(contact, "profile"), "name");
        if (json_is_string(id) && strcmp(json_string_value(id), wa_id) == 0 && json_is_string(name))
            return json_string_value(name);
    }
    return NULL;
}

/* The words behind an inbound message: typed text, a quick-reply button or
 * an interactive reply. Wrong types here fail like anywhere else. */
static int cloudapi_inbound_text(parse_ctx *c, const json_t *msg, const char *type,
                                 const char **text)
{
    json_t *part, *reply;
    *text = NULL;
    if (strcmp(type, "text") == 0) {
        if (get_object(c, msg, "text", true, &part) != 0)
            return -1;
        append_path(c, "text");
        return get_string(c, part, "body", true, text);
    }
    if (strcmp(type, "button") == 0) {
        if (get_object(c, msg, "button", true, &part) != 0)
            return -1;
        append_path(c, "button");
        return get_string(c, part, "text", false, text);
    }
    if (strcmp(type, "interactive") == 0) {
        if (get_object(c, msg, "interactive", true, &part) != 0)
            return -1;
        append_path(c, "interactive");
        if (get_object(c, part, "button_reply", false, &reply) != 0)
            return -1;
        if (!reply && get_object(c, part, "list_reply", false, &reply) != 0)
            return -1;
        return reply ? get_string(c, reply, "title", false, text) : 0;
    }
    return 0;
}

static int cloudapi_message(parse_ctx *c, const json_t *msg, const json_t *contacts,
                            const char *phone_number_id)
{
    const char *id, *from, *type, *text;
    int64_t ts;

    if (!json_is_object(msg))
        return fail(c, "must be an object, not %s", json_kind(msg));
    if (get_string(c, msg, "id", true, &id) != 0 || get_string(c, msg, "from", true, &from) != 0 ||
        get_string(c, msg, "type", true, &type) != 0 ||
        get_unix_seconds(c, msg, "timestamp", &ts) != 0)
        return -1;
    if (!*id || !*from)
        return fail(c, "\"id\" and \"from\" must not be empty");
    if (cloudapi_inbound_text(c, msg, type, &text) != 0)
        return -1;

    wc_webhook_event *ev;
    int rc = new_event(c, WC_WEBHOOK_INBOUND, PROVIDER_CLOUDAPI, &ev);
    if (rc != 0)
        return rc < 0 ? -1 : 0;
    ev->timestamp = ts;
    if (dup_into(c, &ev->provider_id, id) != 0 || dup_into(c, &ev->peer, from) != 0 ||
        dup_into(c, &ev->receiver, phone_number_id) != 0 ||
        dup_into(c, &ev->message_type, type) != 0 || dup_into(c, &ev->text, text) != 0 ||
        dup_into(c, &ev->sender_name, contacts ? cloudapi_contact_name(contacts, from) : NULL) != 0)
        return -1;
    return 0;
}

static int cloudapi_change(parse_ctx *c, const json_t *change, size_t ei, size_t ci)
{
    const char *field, *phone_number_id = NULL;
    json_t *value, *metadata, *statuses, *messages, *contacts, *item;
    size_t i;

    set_path(c, "entry[%zu].changes[%zu]", ei, ci);
    if (!json_is_object(change))
        return fail(c, "must be an object, not %s", json_kind(change));
    if (get_string(c, change, "field", false, &field) != 0 ||
        get_object(c, change, "value", true, &value) != 0)
        return -1;
    if (field && strcmp(field, "messages") != 0) {
        c->out->ignored++; /* template, quality and account updates */
        return 0;
    }
    set_path(c, "entry[%zu].changes[%zu].value", ei, ci);
    if (get_object(c, value, "metadata", false, &metadata) != 0 ||
        get_array(c, value, "statuses", false, &statuses) != 0 ||
        get_array(c, value, "messages", false, &messages) != 0 ||
        get_array(c, value, "contacts", false, &contacts) != 0)
        return -1;
    if (metadata) {
        set_path(c, "entry[%zu].changes[%zu].value.metadata", ei, ci);
        if (get_string(c, metadata, "phone_number_id", false, &phone_number_id) != 0)
            return -1;
    }
    json_array_foreach(statuses, i, item)
    {
        if (c->full)
            return 0;
        set_path(c, "entry[%zu].changes[%zu].value.statuses[%zu]", ei, ci, i);
        if (cloudapi_status(c, item, phone_number_id) != 0)
            return -1;
    }
    json_array_foreach(messages, i, item)
    {
        if (c->full)
            return 0;
        set_path(c, "entry[%zu].changes[%zu].value.messages[%zu]", ei, ci, i);
        if (cloudapi_message(c, item, contacts, phone_number_id) != 0)
            return -1;
    }
    if (!statuses && !messages)
        c->out->ignored++; /* e.g. value.errors: a system-level problem */
    return 0;
}

static int parse_cloudapi(parse_ctx *c, const json_t *root)
{
    const char *object;
    json_t *entries, *entry, *changes, *change;
    size_t ei, ci;

    if (get_string(c, root, "object", true, &object) != 0 ||
        get_array(c, root, "entry", true, &entries) != 0)
        return -1;
    if (strcmp(object, "whatsapp_business_account") != 0)
        return fail(c, "\"object\" is \"%.40s\", not \"whatsapp_business_account\"", object);
    json_array_foreach(entries, ei, entry)
    {
        set_path(c, "entry[%zu]", ei);
        if (!json_is_object(entry))
            return fail(c, "must be an object, not %s", json_kind(entry));
        if (get_array(c, entry, "changes", true, &changes) != 0)
            return -1;
        json_array_foreach(changes, ci, change)
        {
            if (c->full)
                return 0;
            if (cloudapi_change(c, change, ei, ci) != 0)
                return -1;
        }
    }
    return 0;
}

/* --- gowa's envelope ---------------------------------------------------- */

static int gowa_ack(parse_ctx *c, const json_t *root, const char *device_id)
{
    const char *receipt, *from, *chat;
    json_t *payload, *ids, *id;
    int64_t ts;
    wc_webhook_status value;
    size_t i;

    if (get_object(c, root, "payload", true, &payload) != 0 ||
        get_rfc3339(c, root, "timestamp", &ts) != 0)
        return -1;
    set_path(c, "payload");
    if (get_array(c, payload, "ids", true, &ids) != 0 ||
        get_string(c, payload, "receipt_type", true, &receipt) != 0 ||
        get_string(c, payload, "from", false, &from) != 0 ||
        get_string(c, payload, "chat_id", false, &chat) != 0)
        return -1;
    if (ts == 0 && get_rfc3339(c, payload, "timestamp", &ts) != 0)
        return -1;
    if (json_array_size(ids) == 0)
        return fail(c, "\"ids\" is empty");
    if (strcmp(receipt, "delivered") == 0)
        value = WC_WEBHOOK_DELIVERED;
    else if (strcmp(receipt, "read") == 0 || strcmp(receipt, "played") == 0)
        value = WC_WEBHOOK_READ;
    else {
        /* sender, retry, read_self, played_self: about our other devices. */
        c->out->ignored++;
        return 0;
    }
    json_array_foreach(ids, i, id)
    {
        set_path(c, "payload.ids[%zu]", i);
        if (!json_is_string(id) || !*json_string_value(id))
            return fail(c, "must be a non-empty string, not %s", json_kind(id));
        wc_webhook_event *ev;
        int rc = new_event(c, WC_WEBHOOK_STATUS, PROVIDER_GOWA, &ev);
        if (rc != 0)
            return rc < 0 ? -1 : 0;
        ev->status = value;
        ev->timestamp = ts;
        if (dup_into(c, &ev->provider_id, json_string_value(id)) != 0 ||
            dup_user_part(c, &ev->peer, from ? from : chat) != 0 ||
            dup_into(c, &ev->receiver, device_id) != 0)
            return -1;
    }
    return 0;
}

/* One inbound message, from either the current payload or the legacy shape. */
static int gowa_inbound(parse_ctx *c, const char *device_id, const char *id, const char *from,
                        const char *chat, const char *name, const char *body, int64_t ts,
                        bool from_me)
{
    if (!*id || !*from)
        return fail(c, "\"id\" and \"from\" must not be empty");
    /* A sender the opt-out could not be matched to. */
    if (user_part_len(from) == 0)
        return fail(c, "\"from\" has no user part: \"%.40s\"", from);
    if (from_me || (chat && strstr(chat, "@g.us")) || strstr(from, "@g.us")) {
        c->out->ignored++; /* our own echo, or a group chat */
        return 0;
    }
    wc_webhook_event *ev;
    int rc = new_event(c, WC_WEBHOOK_INBOUND, PROVIDER_GOWA, &ev);
    if (rc != 0)
        return rc < 0 ? -1 : 0;
    ev->timestamp = ts;
    if (dup_into(c, &ev->provider_id, id) != 0 || dup_user_part(c, &ev->peer, from) != 0 ||
        dup_into(c, &ev->receiver, device_id) != 0 ||
        dup_into(c, &ev->message_type, body && *body ? "text" : "other") != 0 ||
        dup_into(c, &ev->text, body && *body ? body : NULL) != 0 ||
        dup_into(c, &ev->sender_name, name) != 0)
        return -1;
    return 0;
}

static int gowa_message(parse_ctx *c, const json_t *root, const char *device_id)
{
    const char *id, *from, *chat, *name, *body;
    json_t *payload, *from_me;
    int64_t ts;

    if (get_object(c, root, "payload", true, &payload) != 0)
        return -1;
    set_path(c, "payload");
    if (get_string(c, payload, "id", true, &id) != 0 ||
        get_string(c, payload, "from", true, &from) != 0 ||
        get_string(c, payload, "chat_id", false, &chat) != 0 ||
        get_string(c, payload, "from_name", false, &name) != 0 ||
        get_string(c, payload, "body", false, &body) != 0 ||
        get_rfc3339(c, payload, "timestamp", &ts) != 0)
        return -1;
    from_me = json_object_get(payload, "is_from_me");
    if (from_me && !json_is_boolean(from_me) && !json_is_null(from_me))
        return fail(c, "\"is_from_me\" must be a boolean, not %s", json_kind(from_me));
    return gowa_inbound(c, device_id, id, from, chat, name, body, ts, json_is_true(from_me));
}

/* Gateways before the {"event","payload"} envelope posted messages flat. */
static int gowa_legacy(parse_ctx *c, const json_t *root)
{
    const char *id, *from, *chat, *name, *text;
    json_t *message;
    int64_t ts;

    if (get_string(c, root, "from", true, &from) != 0 ||
        get_object(c, root, "message", true, &message) != 0 ||
        get_string(c, root, "chat_id", false, &chat) != 0 ||
        get_string(c, root, "pushname", false, &name) != 0 ||
        get_rfc3339(c, root, "timestamp", &ts) != 0)
        return -1;
    set_path(c, "message");
    if (get_string(c, message, "id", true, &id) != 0 ||
        get_string(c, message, "text", false, &text) != 0)
        return -1;
    set_path(c, "%s", "");
    return gowa_inbound(c, NULL, id, from, chat, name, text, ts, false);
}

static int parse_gowa(parse_ctx *c, const json_t *root)
{
    const char *event, *device_id;

    if (get_string(c, root, "event", false, &event) != 0 ||
        get_string(c, root, "device_id", false, &device_id) != 0)
        return -1;
    if (!event) {
        if (json_object_get(root, "message") && json_object_get(root, "from"))
            return gowa_legacy(c, root);
        return fail(c, "not a gowa webhook: no \"event\"");
    }
    if (strcmp(event, "message.ack") == 0)
        return gowa_ack(c, root, device_id);
    if (strcmp(event, "message") == 0)
        return gowa_message(c, root, device_id);
    c->out->ignored++; /* reactions, edits, groups, calls, newsletters */
    return 0;
}

/* --- entry points ------------------------------------------------------- */

int wc_webhook_parse(wc_webhook_provider provider, const char *body, size_t len, size_t max_body,
                     size_t max_events, wc_webhook_events *out, char *err, size_t errlen)
{
    parse_ctx c = {.out = out, .err = err, .errlen = errlen};
    json_t *root = NULL;
    json_error_t jerr;
    int rc = -1;

    if (err && errlen > 0)
        err[0] = '\0';
    if (!out)
        return -1;
    memset(out, 0, sizeof *out);
    c.max_events = max_events ? max_events : WC_WEBHOOK_DEFAULT_MAX_EVENTS;
    if (!max_body)
        max_body = WC_WEBHOOK_DEFAULT_MAX_BODY;
    if (!body && len > 0) {
        fail(&c, "no body");
        goto end;
    }
    if (len > max_body) {
        fail(&c, "body of %zu bytes is over the limit of %zu", len, max_body);
        goto end;
    }
    if (len == 0) {
        fail(&c, "empty body");
        goto end;
    }
    /* DECODE_ANY so that a bare string or array gets the clearer message below. */
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        fail(&c, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        goto end;
    }
    if (!json_is_object(root)) {
        fail(&c, "body must be a JSON object, not %s", json_kind(root));
        goto end;
    }
    if (provider == WC_WEBHOOK_AUTO)
        provider = json_object_get(root, "object") ? WC_WEBHOOK_CLOUDAPI : WC_WEBHOOK_GOWA;
    switch (provider) {
    case WC_WEBHOOK_CLOUDAPI:
        rc = parse_cloudapi(&c, root);
        break;
    case WC_WEBHOOK_GOWA:
        rc = parse_gowa(&c, root);
        break;
    default:
        fail(&c, "unknown provider %d", (int)provider);
        break;
    }
    if (rc != 0 && err && errlen > 0 && !err[0])
        snprintf(err, errlen, "%s", "malformed webhook");

end:
    json_decref(root);
    if (rc != 0)
        wc_webhook_events_free(out);
    return rc;
}

void wc_webhook_events_free(wc_webhook_events *ev)
{
    if (!ev)
        return;
    for (size_t i = 0; i < ev->count; i++) {
        wc_webhook_event *e = &ev->items[i];
        free(e->provider_id);
        free(e->callback_data);
        free(e->peer);
        free(e->receiver);
        free(e->error_title);
        free(e->error_message);
        free(e->error_details);
        free(e->message_type);
        free(e->text);
        free(e->sender_name);
    }
    free(ev->items);
    memset(ev, 0, sizeof *ev);
}

const char *wc_webhook_status_name(wc_webhook_status status)
{
    switch (status) {
    case WC_WEBHOOK_SENT:
        return "sent";
    case WC_WEBHOOK_DELIVERED:
        return "delivered";
    case WC_WEBHOOK_READ:
        return "read";
    case WC_WEBHOOK_FAILED:
        return "failed";
    }
    return "unknown";
}

/* --- opt-out words ------------------------------------------------------ */

/* Length of a UTF-8 space-like character at s (no-break, zero-width, BOM,
 * ideographic space), or 0. */
static size_t unicode_space_len(const unsigned char *s, size_t n)
{
    if (n >= 2 && s[0] == 0xc2 && s[1] == 0xa0) /* U+00A0 */
        return 2;
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x80 && (s[2] >= 0x80 && s[2] <= 0x8d)) /* U+2000-200D */
        return 3;
    if (n >= 3 && s[0] == 0xe2 && s[1] == 0x81 && s[2] == 0xa0) /* U+2060 word joiner */
        return 3;
    if (n >= 3 && s[0] == 0xef && s[1] == 0xbb && s[2] == 0xbf) /* U+FEFF */
        return 3;
    if (n >= 3 && s[0] == 0xe3 && s[1] == 0x80 && s[2] == 0x80) /* U+3000 */
        return 3;
    return 0;
}

static bool is_ascii_space(unsigned char ch)
{
    return ch == ' ' || (ch >= '\t' && ch <= '\r');
}

static bool is_ascii_punct(unsigned char ch)
{
    return (ch >= '!' && ch <= '/') || (ch >= ':' && ch <= '@') || (ch >= '[' && ch <= '`') ||
           (ch >= '{' && ch <= '~');
}

/* Length of what is trimmed at the ends at s: whitespace or punctuation. */
static size_t edge_junk_len(const unsigned char *s, size_t n)
{
    if (is_ascii_space(s[0]) || is_ascii_punct(s[0]))
        return 1;
    return unicode_space_len(s, n);
}

/* Normalises s[0..n) into out (upper case, trimmed, inner separators as one
 * space). Returns the length, or -1 when the result would not fit. */
static int normalise(const unsigned char *s, size_t n, char *out, size_t outlen)
{
    size_t start = 0, end = n;
    /* Trim the front. */
    while (start < end) {
        size_t j = edge_junk_len(s + start, end - start);
        if (!j)
            break;
        start += j;
    }
    /* Trim the back: step over single bytes, and over the UTF-8 spaces by
     * trying each possible start of a multi-byte sequence. */
    while (end > start) {
        unsigned char last = s[end - 1];
        if (is_ascii_space(last) || is_ascii_punct(last)) {
            end--;
            continue;
        }
        size_t k = 0;
        for (size_t back = 2; back <= 3 && back <= end - start && !k; back++)
            if (unicode_space_len(s + end - back, back) == back)
                k = back;
        if (!k)
            break;
        end -= k;
    }
    size_t len = 0;
    bool pending_space = false;
    for (size_t i = start; i < end;) {
        size_t u = unicode_space_len(s + i, end - i);
        if (u || is_ascii_space(s[i]) || s[i] == '-' || s[i] == '_') {
            pending_space = true;
            i += u ? u : 1;
            continue;
        }
        if (len + (pending_space ? 2 : 1) >= outlen)
            return -1;
        if (pending_space)
            out[len++] = ' ';
        pending_space = false;
        unsigned char ch = s[i++];
        out[len++] = (char)(ch >= 'a' && ch <= 'z' ? ch - ('a' - 'A') : ch);
    }
    out[len] = '\0';
    return (int)len;
}

bool wc_webhook_is_opt_out(const char *text, const char *words_csv)
{
    char said[WC_WEBHOOK_OPT_OUT_MAX + 1], word[WC_WEBHOOK_OPT_OUT_MAX + 1];

    if (!text)
        return false;
    /* Longer than any word plus generous trimming: cannot be one. */
    size_t text_len = strnlen(text, 4 * WC_WEBHOOK_OPT_OUT_MAX + 1);
    if (text_len > 4 * WC_WEBHOOK_OPT_OUT_MAX)
        return false;
    int said_len = normalise((const unsigned char *)text, text_len, said, sizeof said);
    if (said_len <= 0)
        return false;
    if (!words_csv || !*words_csv)
        words_csv = WC_WEBHOOK_DEFAULT_OPT_OUT_WORDS;
    for (const char *p = words_csv;;) {
        size_t n = strcspn(p, ",");
        int word_len = normalise((const unsigned char *)p, n, word, sizeof word);
        if (word_len == said_len && memcmp(word, said, (size_t)said_len) == 0)
            return true;
        if (!p[n])
            break;
        p += n + 1;
    }
    return false;
}
