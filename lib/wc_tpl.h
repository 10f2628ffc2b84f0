/* Message templates: compiled once per campaign, rendered once per recipient.
 * Compilation does all the parsing and checking (so a bad template fails the
 * campaign up front with an offset, not recipient by recipient); rendering
 * walks a flat node array and allocates nothing beyond the output buffer.
 *
 * Syntax
 *   {{name}}, {{ name }}         a variable: [A-Za-z_][A-Za-z0-9_.]*
 *   {{name | default "there"}}   default used when the variable is missing or
 *                                empty; inside the quotes \" and \\ escape
 *   {{greeting}}                 built-in: "Good morning" (05:00-11:59),
 *                                "Good afternoon" (12:00-17:59), "Good evening"
 *                                otherwise, for the hour the caller passes
 *   {Hi|Hello|Hey}               spintax: one alternative, uniformly at random;
 *                                alternatives may be empty, may nest
 *                                ({a|{b|c}}) up to 16 deep and may hold
 *                                placeholders ({Hi {{name}}|Hello})
 *   \{ \} \| \\                  the literal character; any other backslash is
 *                                literal itself
 * "{{" always opens a placeholder, never spintax. In a run of three or more
 * '{' the last two open the placeholder and the ones before open spintax, so
 * "{{{name}}|there}" is spintax over a placeholder. Outside spintax a bare '|'
 * is literal text.
 *
 * Compile errors (err gets "<what> at offset <byte offset into text>"):
 *   empty message                 NULL text, "" or only whitespace
 *   unbalanced '{' / '}'          offset of the unmatched brace
 *   unterminated '{{'             no closing "}}"; offset of the "{{"
 *   empty placeholder             "{{}}", "{{ }}"; offset of the "{{"
 *   missing variable name         "{{ | default \"x\"}}"; offset of the "{{"
 *   bad variable name 'x'         offset of the name
 *   unknown placeholder 'x'       not in known_vars; offset of the name
 *   bad default syntax            anything after '|' but default "text"
 *   nesting deeper than 16        offset of the '{' that goes too deep
 *   '{x}' looks like a placeholder  single braces around a known variable
 *                                 name; write {{x}} or \{x\}
 *   template too long             text over 16 MiB
 */
#ifndef WC_TPL_H
#define WC_TPL_H

#include <stddef.h>
#include <stdint.h>

/* An output buffer the caller keeps between renders so the memory is reused.
 * Zero-initialise it ({0}); release it with wc_buf_free(). After a successful
 * render data holds len bytes followed by a NUL. */
typedef struct wc_buf {
    char *data;
    size_t len, cap;
} wc_buf;

typedef struct wc_tpl wc_tpl; /* opaque compiled template; immutable, so one
                                 compiled template may be rendered from many
                                 threads at once (each with its own wc_buf and
                                 rng_state) */

/* Compiles text (NUL-terminated). known_vars lists the variable names the
 * template may use ({"name", "phone", "niche", ...lead attribute keys});
 * NULL means any name is allowed. "greeting" is always allowed. Returns the
 * template, to be freed with wc_tpl_free(), or NULL with a message in err
 * (always NUL-terminated when errlen > 0; "out of memory" on allocation
 * failure). text and known_vars are not referenced after the call. */
wc_tpl *wc_tpl_compile(const char *text, const char *const *known_vars, size_t nknown, char *err,
                       size_t errlen);

/* Looks up a variable for one recipient. name is NUL-terminated at namelen.
 * Returns the value (NUL-terminated, valid until render returns) or NULL when
 * the recipient has no such variable. Missing and "" both select the
 * placeholder's default; without a default they render as nothing. */
typedef const char *wc_tpl_lookup_fn(void *ctx, const char *name, size_t namelen);

/* Renders t into out, replacing its contents. lookup may be NULL (every
 * variable missing). rng_state is the caller's PRNG state for spintax choices
 * (splitmix64; any seed, advanced by each choice); NULL picks the first
 * alternative every time. hour is the local hour 0-23 in the campaign's time
 * zone, taken modulo 24 when outside that range. max_len caps the output in
 * bytes (0: no cap). Returns 0, or -1 with err set ("out of memory",
 * "message longer than N bytes"); out is then valid, empty and reusable. */
int wc_tpl_render(const wc_tpl *t, wc_tpl_lookup_fn *lookup, void *ctx, uint64_t *rng_state,
                  int hour, size_t max_len, wc_buf *out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Both accept NULL. wc_buf_free() leaves b zeroed and ready for reuse. */
void wc_tpl_free(wc_tpl *t);
void wc_buf_free(wc_buf *b);

#endif
