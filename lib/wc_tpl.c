/* Message templates (syntax and contract in wc_tpl.h). The compiler is a
 * recursive-descent parser that turns the text into a flat array of nodes and
 * one string pool; rendering walks that array with no parsing and no
 * allocation except growing the caller's output buffer.
 *
 * A spintax group is laid out as
 *   SPIN(nalts, next=end) ALT(next=alt2) <nodes of alt 1> ALT(next=alt3) ...
 *   ALT(next=end) <nodes of the last alt> end:
 * so alternative k is found by following k ALT links, and its nodes are the
 * ones between its ALT node and that node's next. */
#include "wc_tpl.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WC_TPL_MAX_DEPTH 16
#define WC_TPL_MAX_TEXT (16u << 20)
#define WC_BUF_MIN_CAP 256

enum node_op { OP_TEXT, OP_VAR, OP_GREETING, OP_SPIN, OP_ALT };

struct node {
    uint32_t op;
    uint32_t off, len;         /* TEXT: the literal; VAR: the name (NUL follows in the pool) */
    uint32_t def_off, def_len; /* VAR: the default (NUL follows) */
    uint32_t has_def;          /* VAR */
    uint32_t next;             /* SPIN: first node after the group; ALT: next ALT or group end */
    uint32_t nalts;            /* SPIN */
};

struct wc_tpl {
    struct node *nodes;
    size_t nnodes;
    char *pool;
};

struct compiler {
    const char *text;
    size_t len, pos;
    const char *const *known;
    size_t nknown;
    struct node *nodes;
    size_t nnodes, nodes_cap;
    char *pool;
    size_t pool_len, pool_cap;
    size_t merge_from; /* add_text may extend a TEXT node only from this index */
    char *err;
    size_t errlen;
};

static const char greeting_morning[] = "Good morning";
static const char greeting_afternoon[] = "Good afternoon";
static const char greeting_evening[] = "Good evening";

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

static bool is_name_start(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '_';
}

static bool is_name_char(char ch)
{
    return is_name_start(ch) || (ch >= '0' && ch <= '9') || ch == '.';
}

static bool valid_name(const char *s, size_t n)
{
    if (n == 0 || !is_name_start(s[0]))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_name_char(s[i]))
            return false;
    return true;
}

static bool is_greeting(const char *s, size_t n)
{
    return n == sizeof "greeting" - 1 && memcmp(s, "greeting", n) == 0;
}

static bool known_name(const struct compiler *c, const char *s, size_t n)
{
    if (!c->known || is_greeting(s, n))
        return true;
    for (size_t i = 0; i < c->nknown; i++)
        if (c->known[i] && strlen(c->known[i]) == n && memcmp(c->known[i], s, n) == 0)
            return true;
    return false;
}

static int oom(struct compiler *c)
{
    set_err(c->err, c->errlen, "out of memory");
    return -1;
}

/* Appends a node and returns its index, or -1 on allocation failure. */
static long add_node(struct compiler *c, uint32_t op)
{
    if (c->nnodes == c->nodes_cap) {
        size_t cap = c->nodes_cap ? c->nodes_cap * 2 : 16;
        struct node *nodes = realloc(c->nodes, cap * sizeof *nodes);
        if (!nodes)
            return oom(c);
        c->nodes = nodes;
        c->nodes_cap = cap;
    }
    memset(&c->nodes[c->nnodes], 0, sizeof c->nodes[0]);
    c->nodes[c->nnodes].op = op;
    return (long)c->nnodes++;
}

static int pool_add(struct compiler *c, const char *s, size_t n)
{
    if (c->pool_len + n > c->pool_cap) {
        size_t cap = c->pool_cap ? c->pool_cap : 256;
        while (cap < c->pool_len + n)
            cap *= 2;
        char *pool = realloc(c->pool, cap);
        if (!pool)
            return oom(c);
        c->pool = pool;
        c->pool_cap = cap;
    }
    memcpy(c->pool + c->pool_len, s, n);
    c->pool_len += n;
    return 0;
}

/* Appends literal text, extending the previous TEXT node when it is the last
 * node, ends where the pool ends and is not the tail of a closed spintax
 * group. */
static int add_text(struct compiler *c, const char *s, size_t n)
{
    struct node *last = c->nnodes > c->merge_from ? &c->nodes[c->nnodes - 1] : NULL;
    if (!last || last->op != OP_TEXT || last->off + last->len != c->pool_len) {
        long idx = add_node(c, OP_TEXT);
        if (idx < 0)
            return -1;
        last = &c->nodes[idx];
        last->off = (uint32_t)c->pool_len;
    }
    if (pool_add(c, s, n) < 0)
        return -1;
    last->len += (uint32_t)n;
    return 0;
}

/* Finds the "}}" closing a placeholder whose content starts at from: first
 * skipping "}}" inside a double-quoted default, then (for an unterminated
 * quote, which the content parser reports) the first "}}" at all. Returns its
 * offset, or c->len when there is none. */
static size_t find_placeholder_end(const struct compiler *c, size_t from)
{
    const char *t = c->text;
    bool quoted = false;
    for (size_t i = from; i + 1 < c->len; i++) {
        if (quoted) {
            if (t[i] == '\\')
                i++;
            else if (t[i] == '"')
                quoted = false;
        } else if (t[i] == '"') {
            quoted = true;
        } else if (t[i] == '}' && t[i + 1] == '}') {
            return i;
        }
    }
    const char *end = strstr(t + from, "}}");
    return end ? (size_t)(end - t) : c->len;
}

/* Parses `default "text"` in [p, end) and stores the unescaped text in the
 * pool. Returns 0, or -1 with *bad set to the offending offset (or with
 * *bad == SIZE_MAX on allocation failure). */
static int parse_default(struct compiler *c, size_t p, size_t end, struct node *scratch,
                         size_t *bad)
{
    const char *t = c->text;
    static const char kw[] = "default";
    while (p < end && is_space(t[p]))
        p++;
    if (end - p < sizeof kw - 1 || memcmp(t + p, kw, sizeof kw - 1) != 0) {
        *bad = p;
        return -1;
    }
    p += sizeof kw - 1;
    while (p < end && is_space(t[p]))
        p++;
    if (p >= end || t[p] != '"') {
        *bad = p;
        return -1;
    }
    size_t quote = p++;
    scratch->def_off = (uint32_t)c->pool_len;
    for (;;) {
        if (p >= end) {
            *bad = quote;
            return -1;
        }
        char ch = t[p];
        if (ch == '"')
            break;
        if (ch == '\\' && p + 1 < end && (t[p + 1] == '"' || t[p + 1] == '\\'))
            ch = t[++p];
        if (pool_add(c, &ch, 1) < 0) {
            *bad = SIZE_MAX;
            return -1;
        }
        p++;
    }
    scratch->def_len = (uint32_t)(c->pool_len - scratch->def_off);
    scratch->has_def = 1;
    if (pool_add(c, "", 1) < 0) {
        *bad = SIZE_MAX;
        return -1;
    }
    for (p++; p < end; p++) {
        if (!is_space(t[p])) {
            *bad = p;
            return -1;
        }
    }
    return 0;
}

/* Parses the placeholder whose "{{" is at c->pos. */
static int parse_placeholder(struct compiler *c)
{
    const char *t = c->text;
    size_t open = c->pos;
    size_t close = find_placeholder_end(c, open + 2);
    if (close >= c->len) {
        set_err(c->err, c->errlen, "unterminated '{{' at offset %zu", open);
        return -1;
    }
    /* A "{{" (outside a quoted default) before the close means this one was
     * never closed: "{{name, see {{link}}". */
    bool quoted = false;
    for (size_t i = open + 2; i + 1 < close; i++) {
        if (quoted && t[i] == '\\') {
            i++;
        } else if (t[i] == '"') {
            quoted = !quoted;
        } else if (!quoted && t[i] == '{' && t[i + 1] == '{') {
            set_err(c->err, c->errlen, "unterminated '{{' at offset %zu", open);
            return -1;
        }
    }

    size_t b = open + 2, e = close;
    while (b < e && is_space(t[b]))
        b++;
    while (e > b && is_space(t[e - 1]))
        e--;
    if (b == e) {
        set_err(c->err, c->errlen, "empty placeholder at offset %zu", open);
        return -1;
    }
    const char *bar = memchr(t + b, '|', e - b);
    size_t name_end = bar ? (size_t)(bar - t) : e;
    while (name_end > b && is_space(t[name_end - 1]))
        name_end--;
    size_t name_len = name_end - b;
    if (name_len == 0) {
        set_err(c->err, c->errlen, "missing variable name at offset %zu", open);
        return -1;
    }
    if (!valid_name(t + b, name_len)) {
        set_err(c->err, c->errlen, "bad variable name '%.*s' at offset %zu",
                (int)(name_len > 64 ? 64 : name_len), t + b, b);
        return -1;
    }
    if (!known_name(c, t + b, name_len)) {
        set_err(c->err, c->errlen, "unknown placeholder '%.*s' at offset %zu",
                (int)(name_len > 64 ? 64 : name_len), t + b, b);
        return -1;
    }

    struct node n = {.op = is_greeting(t + b, name_len) ? OP_GREETING : OP_VAR};
    n.off = (uint32_t)c->pool_len;
    n.len = (uint32_t)name_len;
    if (pool_add(c, t + b, name_len) < 0 || pool_add(c, "", 1) < 0)
        return -1;
    if (bar) {
        size_t bad = 0;
        if (parse_default(c, (size_t)(bar - t) + 1, e, &n, &bad) < 0) {
            if (bad == SIZE_MAX)
                return -1;
            set_err(c->err, c->errlen,
                    "bad default syntax at offset %zu (expected {{%.*s | default \"text\"}})", bad,
                    (int)(name_len > 64 ? 64 : name_len), t + b);
            return -1;
        }
    }
    long idx = add_node(c, n.op);
    if (idx < 0)
        return -1;
    c->nodes[idx] = n;
    c->pos = close + 2;
    return 0;
}

static int parse_seq(struct compiler *c, int depth);

/* Parses the spintax group whose '{' is at c->pos; depth counts it. */
static int parse_spin(struct compiler *c, int depth)
{
    const char *t = c->text;
    size_t open = c->pos;
    if (depth > WC_TPL_MAX_DEPTH) {
        set_err(c->err, c->errlen, "nesting deeper than %d at offset %zu", WC_TPL_MAX_DEPTH, open);
        return -1;
    }
    c->pos++;
    long spin = add_node(c, OP_SPIN);
    if (spin < 0)
        return -1;
    uint32_t nalts = 0;
    for (;;) {
        long alt = add_node(c, OP_ALT);
        if (alt < 0)
            return -1;
        nalts++;
        if (parse_seq(c, depth) < 0)
            return -1;
        if (c->pos >= c->len) {
            set_err(c->err, c->errlen, "unbalanced '{' at offset %zu", open);
            return -1;
        }
        c->nodes[alt].next = (uint32_t)c->nnodes;
        if (t[c->pos++] == '}')
            break;
    }
    c->nodes[spin].next = (uint32_t)c->nnodes;
    c->nodes[spin].nalts = nalts;
    c->merge_from = c->nnodes;

    /* "{name}" is almost always a placeholder written with single braces. */
    size_t b = open + 1, e = c->pos - 1;
    while (b < e && is_space(t[b]))
        b++;
    while (e > b && is_space(t[e - 1]))
        e--;
    if (nalts == 1 && valid_name(t + b, e - b) &&
        (is_greeting(t + b, e - b) || (c->known && known_name(c, t + b, e - b)))) {
        set_err(c->err, c->errlen,
                "'{%.*s}' at offset %zu looks like a placeholder; write '{{%.*s}}' or escape "
                "the braces",
                (int)(e - b), t + b, open, (int)(e - b), t + b);
        return -1;
    }
    return 0;
}

/* Parses until the end of the text or, inside spintax (depth > 0), until the
 * '|' or '}' that ends the current alternative, which is left unconsumed. */
static int parse_seq(struct compiler *c, int depth)
{
    const char *t = c->text;
    while (c->pos < c->len) {
        char ch = t[c->pos];
        if (ch == '\\') {
            char next = t[c->pos + 1];
            if (next == '{' || next == '}' || next == '|' || next == '\\') {
                if (add_text(c, &next, 1) < 0)
                    return -1;
                c->pos += 2;
            } else {
                if (add_text(c, "\\", 1) < 0)
                    return -1;
                c->pos++;
            }
        } else if (ch == '{') {
            /* t is NUL-terminated, so looking two ahead is safe. */
            bool placeholder = t[c->pos + 1] == '{' && t[c->pos + 2] != '{';
            if ((placeholder ? parse_placeholder(c) : parse_spin(c, depth + 1)) < 0)
                return -1;
        } else if (ch == '}') {
            if (depth == 0) {
                set_err(c->err, c->errlen, "unbalanced '}' at offset %zu", c->pos);
                return -1;
            }
            return 0;
        } else if (ch == '|' && depth > 0) {
            return 0;
        } else {
            size_t run = c->pos + 1;
            while (run < c->len && t[run] != '\\' && t[run] != '{' && t[run] != '}' &&
                   t[run] != '|')
                run++;
            if (add_text(c, t + c->pos, run - c->pos) < 0)
                return -1;
            c->pos = run;
        }
    }
    return 0;
}

wc_tpl *wc_tpl_compile(const char *text, const char *const *known_vars, size_t nknown, char *err,
                       size_t errlen)
{
    if (err && errlen > 0)
        err[0] = '\0';
    size_t len = text ? strlen(text) : 0;
    size_t nonspace = 0;
    while (nonspace < len && is_space(text[nonspace]))
        nonspace++;
    if (nonspace == len) {
        set_err(err, errlen, "empty message");
        return NULL;
    }
    if (len > WC_TPL_MAX_TEXT) {
        set_err(err, errlen, "template too long (%zu bytes, at most %u)", len, WC_TPL_MAX_TEXT);
        return NULL;
    }

    struct compiler c = {
        .text = text,
        .len = len,
        .known = known_vars,
        .nknown = nknown,
        .err = err,
        .errlen = errlen,
    };
    wc_tpl *t = NULL;
    if (parse_seq(&c, 0) < 0)
        goto error;
    /* Keep the pool non-NULL even for a template of placeholders only. */
    if (pool_add(&c, "", 1) < 0)
        goto error;
    t = malloc(sizeof *t);
    if (!t) {
        oom(&c);
        goto error;
    }
    t->nodes = c.nodes;
    t->nnodes = c.nnodes;
    t->pool = c.pool;
    return t;

error:
    free(c.nodes);
    free(c.pool);
    return NULL;
}

void wc_tpl_free(wc_tpl *t)
{
    if (!t)
        return;
    free(t->nodes);
    free(t->pool);
    free(t);
}

void wc_buf_free(wc_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

struct render {
    const wc_tpl *t;
    wc_tpl_lookup_fn *lookup;
    void *ctx;
    uint64_t *rng;
    int hour;
    size_t max_len;
    wc_buf *out;
    char *err;
    size_t errlen;
};

/* Makes room for need bytes plus the NUL. */
static int buf_reserve(struct render *r, size_t need)
{
    wc_buf *b = r->out;
    if (need < b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : WC_BUF_MIN_CAP;
    while (cap <= need) {
        if (cap > SIZE_MAX / 2) {
            set_err(r->err, r->errlen, "out of memory");
            return -1;
        }
        cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (!data) {
        set_err(r->err, r->errlen, "out of memory");
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int emit(struct render *r, const char *s, size_t n)
{
    wc_buf *b = r->out;
    if (n > SIZE_MAX - 1 - b->len) {
        set_err(r->err, r->errlen, "out of memory");
        return -1;
    }
    if (r->max_len && b->len + n > r->max_len) {
        set_err(r->err, r->errlen, "message longer than %zu bytes", r->max_len);
        return -1;
    }
    if (b->len + n >= b->cap && buf_reserve(r, b->len + n) < 0)
        return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) without modulo bias (Lemire's multiply-and-reject). */
static uint32_t pick(uint64_t *state, uint32_t n)
{
    if (!state || n <= 1)
        return 0;
    uint64_t m = (splitmix64(state) >> 32) * n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t threshold = (uint32_t)-n % n;
        while (low < threshold) {
            m = (splitmix64(state) >> 32) * n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

static int render_range(struct render *r, size_t i, size_t end)
{
    const struct node *nodes = r->t->nodes;
    const char *pool = r->t->pool;
    while (i < end) {
        const struct node *n = &nodes[i];
        switch (n->op) {
        case OP_TEXT:
            if (emit(r, pool + n->off, n->len) < 0)
                return -1;
            i++;
            break;
        case OP_VAR: {
            const char *v = r->lookup ? r->lookup(r->ctx, pool + n->off, n->len) : NULL;
            if ((!v || !*v) && n->has_def) {
                if (emit(r, pool + n->def_off, n->def_len) < 0)
                    return -1;
            } else if (v && emit(r, v, strlen(v)) < 0) {
                return -1;
            }
            i++;
            break;
        }
        case OP_GREETING:
            if (r->hour >= 5 && r->hour < 12) {
                if (emit(r, greeting_morning, sizeof greeting_morning - 1) < 0)
                    return -1;
            } else if (r->hour >= 12 && r->hour < 18) {
                if (emit(r, greeting_afternoon, sizeof greeting_afternoon - 1) < 0)
                    return -1;
            } else if (emit(r, greeting_evening, sizeof greeting_evening - 1) < 0) {
                return -1;
            }
            i++;
            break;
        case OP_SPIN: {
            size_t alt = i + 1;
            for (uint32_t k = pick(r->rng, n->nalts); k > 0; k--)
                alt = nodes[alt].next;
            if (render_range(r, alt + 1, nodes[alt].next) < 0)
                return -1;
            i = n->next;
            break;
        }
        default:
            abort(); /* an ALT is only ever reached through its SPIN */
        }
    }
    return 0;
}

int wc_tpl_render(const wc_tpl *t, wc_tpl_lookup_fn *lookup, void *ctx, uint64_t *rng_state,
                  int hour, size_t max_len, wc_buf *out, char *err, size_t errlen)
{
    if (err && errlen > 0)
        err[0] = '\0';
    struct render r = {
        .t = t,
        .lookup = lookup,
        .ctx = ctx,
        .rng = rng_state,
        .hour = ((hour % 24) + 24) % 24,
        .max_len = max_len,
        .out = out,
        .err = err,
        .errlen = errlen,
    };
    out->len = 0;
    if (buf_reserve(&r, 0) < 0 || render_range(&r, 0, t->nnodes) < 0) {
        out->len = 0;
        if (out->data)
            out->data[0] = '\0';
        return -1;
    }
    out->data[out->len] = '\0';
    return 0;
}
