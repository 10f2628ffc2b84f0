/* Fuzzes template compilation and rendering (wc_tpl). Input: one byte of
 * settings (bits 0-4: the hour, bit 5: compile with no list of known
 * variables, bits 6-7: the spintax seed), then the template text up to the
 * first NUL, then the values of name, phone, niche, lead.city and first_name,
 * each ended by a NUL (a value not in the input is missing). Properties:
 *   - a compile error names an offset inside the text (except the few that
 *     have none), and a template that compiles against a list of known
 *     variables also compiles with no list;
 *   - a render succeeds with no cap, holds len bytes and a NUL after them
 *     with no NUL before, and is the same twice without spintax choices;
 *   - the output is valid UTF-8 when the template and the values are;
 *   - a cap of exactly the output length passes, one byte less fails with
 *     "message longer than" and an empty, reusable buffer.
 * fuzz-max-len: 4096 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "wc_text.h"
#include "wc_tpl.h"

static const char *const known[] = {"name", "phone", "niche", "lead.city", "first_name"};
#define NKNOWN (sizeof known / sizeof known[0])

typedef struct lead {
    const char *values[NKNOWN];
} lead;

static const char *lookup(void *ctx, const char *name, size_t namelen)
{
    const lead *l = ctx;
    FUZZ_ASSERT(name[namelen] == '\0', "a variable name not NUL-terminated");
    for (size_t i = 0; i < NKNOWN; i++)
        if (strlen(known[i]) == namelen && memcmp(known[i], name, namelen) == 0)
            return l->values[i];
    return NULL;
}

static void check_compile_error(const char *err, size_t text_len)
{
    FUZZ_ASSERT(err[0] != '\0', "a compile error without a message");
    if (!strncmp(err, "empty message", 13) || !strncmp(err, "template too long", 17) ||
        !strcmp(err, "out of memory"))
        return;
    /* The last " at offset " is the real one: a quoted name before it may
     * hold anything. */
    const char *at = NULL;
    for (const char *p = err; (p = strstr(p, " at offset ")) != NULL; p++)
        at = p;
    FUZZ_ASSERT(at != NULL, "an error without an offset: %s", err);
    unsigned long long offset = strtoull(at + 11, NULL, 10);
    FUZZ_ASSERT(offset <= text_len, "offset %llu past the end (%zu): %s", offset, text_len, err);
}

static void check_render(const wc_tpl *t, lead *l, int hour, uint64_t seed, bool utf8_in)
{
    wc_buf out = {0}, again = {0};
    char err[128];
    FUZZ_ASSERT(wc_tpl_render(t, lookup, l, NULL, hour, 0, &out, err, sizeof err) == 0,
                "render failed: %s", err);
    FUZZ_ASSERT(out.data && out.data[out.len] == '\0' && strlen(out.data) == out.len,
                "output of %zu bytes not NUL-terminated there", out.len);
    if (utf8_in)
        FUZZ_ASSERT(wc_text_valid(out.data, out.len), "output not valid UTF-8");

    FUZZ_ASSERT(wc_tpl_render(t, lookup, l, NULL, hour, out.len, &again, err, sizeof err) == 0,
                "a cap of exactly %zu bytes refused: %s", out.len, err);
    FUZZ_ASSERT(again.len == out.len && memcmp(again.data, out.data, out.len) == 0,
                "two renders without spintax choices differ");
    if (out.len > 1) {
        FUZZ_ASSERT(wc_tpl_render(t, lookup, l, NULL, hour, out.len - 1, &again, err, sizeof err) ==
                        -1,
                    "a cap of %zu bytes let %zu through", out.len - 1, out.len);
        FUZZ_ASSERT(!strncmp(err, "message longer than", 19) && again.len == 0 &&
                        again.data[0] == '\0',
                    "a cut render: %s, %zu bytes left", err, again.len);
    }

    uint64_t rng = seed;
    FUZZ_ASSERT(wc_tpl_render(t, lookup, l, &rng, hour, 0, &again, err, sizeof err) == 0,
                "render with spintax choices failed: %s", err);
    FUZZ_ASSERT(again.data[again.len] == '\0' && strlen(again.data) == again.len,
                "output of %zu bytes not NUL-terminated there", again.len);
    if (utf8_in)
        FUZZ_ASSERT(wc_text_valid(again.data, again.len), "output not valid UTF-8");
    wc_buf_free(&out);
    wc_buf_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int hour = data[0] & 0x1f; /* 24..31 checks the modulo */
    bool any_name = data[0] & 0x20;
    uint64_t seed = 0x5eed0000u + (data[0] >> 6);

    /* One copy with a NUL after the last byte, cut into strings in place. */
    char *copy = malloc(size + 1);
    if (!copy)
        return 0;
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = '\0';
    const char *text = copy;
    size_t text_len = strlen(text);
    lead l = {{NULL}};
    bool utf8_in = wc_text_valid(text, text_len);
    size_t pos = text_len + 1;
    for (size_t i = 0; i < NKNOWN && pos < size - 1; i++) {
        l.values[i] = copy + pos;
        size_t n = strlen(l.values[i]);
        utf8_in = utf8_in && wc_text_valid(l.values[i], n);
        pos += n + 1;
    }

    char err[256];
    wc_tpl *t = wc_tpl_compile(text, any_name ? NULL : known, NKNOWN, err, sizeof err);
    if (!t) {
        check_compile_error(err, text_len);
    } else {
        if (!any_name) {
            wc_tpl *loose = wc_tpl_compile(text, NULL, 0, err, sizeof err);
            FUZZ_ASSERT(loose != NULL, "compiles with known names but not with any: %s", err);
            wc_tpl_free(loose);
        }
        check_render(t, &l, hour, seed, utf8_in);
        wc_tpl_free(t);
    }
    free(copy);
    return 0;
}
