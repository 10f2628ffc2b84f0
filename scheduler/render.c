/* wacast-scheduler: what campaigns and sequences share to turn a lead into
 * a message row: template variables of a lead, the texts stored from lead
 * fields (clean and bounded), reasons for invalid phones, and the PostgreSQL
 * array literals the bulk statements take. No I/O here. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <jansson.h>

#include "wc_text.h"

#include "scheduler.h"

void append_array_text(struct evbuffer *b, const char *v, bool first)
{
    if (!first)
        evbuffer_add(b, ",", 1);
    if (!v) {
        evbuffer_add(b, "NULL", 4);
        return;
    }
    evbuffer_add(b, "\"", 1);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            evbuffer_add(b, "\\", 1);
        evbuffer_add(b, p, 1);
    }
    evbuffer_add(b, "\"", 1);
}

const char *phone_reason_text(const char *why)
{
    static const struct {
        const char *code, *text;
    } texts[] = {
        {"empty", "no digits"},
        {"invalid_characters", "contains letters or symbols"},
        {"invalid_country_code", "no valid country code"},
        {"too_short", "too few digits"},
        {"too_long", "too many digits"},
        {"invalid_default_country", "WACAST_DEFAULT_COUNTRY is not a country code"},
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (why && !strcmp(why, texts[i].code))
            return texts[i].text;
    return "not a phone number";
}

const char *lead_lookup(void *ctx, const char *name, size_t namelen)
{
    lead_vars *v = ctx;
    (void)namelen;
    if (!strcmp(name, "name"))
        return v->name;
    if (!strcmp(name, "phone"))
        return v->phone;
    if (!strcmp(name, "niche"))
        return v->niche;
    if (!strcmp(name, "target_status"))
        return v->target_status;
    json_t *a = v->attrs ? json_object_get(v->attrs, name) : NULL;
    if (!a || json_is_null(a))
        return NULL;
    if (json_is_string(a))
        return json_string_value(a);
    if (json_is_integer(a)) {
        snprintf(v->num, sizeof v->num, "%" JSON_INTEGER_FORMAT, json_integer_value(a));
        return v->num;
    }
    if (json_is_real(a)) {
        snprintf(v->num, sizeof v->num, "%g", json_real_value(a));
        return v->num;
    }
    if (json_is_boolean(a))
        return json_is_true(a) ? "true" : "false";
    return NULL;
}

/* Lead fields come from PostgreSQL, so they are valid UTF-8, but of any
 * length: every text the scheduler builds from them is made clean and
 * bounded here, cut on a character boundary, before it goes into a page
 * INSERT (one invalid byte fails the whole page, and the page again on
 * every resume of the claim). */

/* An invalid phone as stored in recipient_phone: the raw text when short
 * and clean, else its clean start and the lead's id (recipient_phone is
 * UNIQUE per campaign: two long numbers cut alike must stay distinct). */
const char *stored_invalid_phone(char *buf, size_t size, const char *raw, const char *lead_id)
{
    char start[INVALID_PHONE_MAX + 1];
    bool changed = false;
    wc_text_clean(start, sizeof start, raw, (size_t)-1, &changed);
    if (!changed)
        return raw;
    snprintf(buf, size, "%s... [lead %s]", start, lead_id);
    return buf;
}

/* A lead's name as stored in recipient_name. */
const char *stored_name(char *buf, size_t size, const char *raw)
{
    size_t len = strlen(raw);
    if (len < size && wc_text_valid(raw, len))
        return raw;
    wc_text_clean(buf, size, raw, len, NULL);
    return buf;
}

char *dup_text(const char *v)
{
    char *d = strdup(v ? v : "");
    if (!d)
        abort();
    return d;
}
