/* Unit tests for wc_tpl: placeholders and defaults, the greeting built-in,
 * spintax (including its distribution), escapes, every compile error with its
 * message, the render limits, and the per-render cost. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "wc_tpl.h"

struct kv {
    const char *key, *value;
};

/* ctx is a struct kv array ending with a NULL key. */
static const char *lookup_kv(void *ctx, const char *name, size_t namelen)
{
    /* The contract: name is NUL-terminated at namelen. */
    assert_int_equal(name[namelen], '\0');
    for (const struct kv *kv = ctx; kv->key; kv++)
        if (strlen(kv->key) == namelen && memcmp(kv->key, name, namelen) == 0)
            return kv->value;
    return NULL;
}

static const struct kv aisyah[] = {
    {"name", "Aisyah"}, {"niche", "skincare"}, {"lead.city", "Ipoh"}, {"_x1", "X"}, {NULL, NULL}};
static const struct kv nobody[] = {{NULL, NULL}};
static const struct kv blank_name[] = {{"name", ""}, {NULL, NULL}};

static const char *const known[] = {"name", "phone", "niche", "lead.city", "_x1"};
#define NKNOWN (sizeof known / sizeof known[0])

static wc_tpl *compile_ok_at(const char *text, const char *const *vars, size_t nvars,
                             const char *file, int line)
{
    char err[256] = "";
    wc_tpl *t = wc_tpl_compile(text, vars, nvars, err, sizeof err);
    if (!t)
        fail_msg("%s:%d: compile \"%s\" failed: %s", file, line, text, err);
    return t;
}

/* Compiles with the known list, renders once, compares. */
static void render_is_at(const char *text, const struct kv *vars, int hour, const char *want,
                         const char *file, int line)
{
    wc_tpl *t = compile_ok_at(text, known, NKNOWN, file, line);
    wc_buf out = {0};
    uint64_t rng = 42;
    char err[256] = "";
    if (wc_tpl_render(t, lookup_kv, (void *)vars, &rng, hour, 0, &out, err, sizeof err) != 0)
        fail_msg("%s:%d: render \"%s\" failed: %s", file, line, text, err);
    if (strcmp(out.data, want) != 0 || out.len != strlen(want))
        fail_msg("%s:%d: render \"%s\": want \"%s\", got \"%s\" (len %zu)", file, line, text, want,
                 out.data, out.len);
    wc_buf_free(&out);
    wc_tpl_free(t);
}

static void compile_err_at(const char *text, const char *const *vars, size_t nvars,
                           const char *want, const char *file, int line)
{
    char err[256] = "unset";
    wc_tpl *t = wc_tpl_compile(text, vars, nvars, err, sizeof err);
    if (t) {
        wc_tpl_free(t);
        fail_msg("%s:%d: compile \"%s\" succeeded, want error \"%s\"", file, line,
                 text ? text : "NULL", want);
    }
    if (strcmp(err, want) != 0)
        fail_msg("%s:%d: compile \"%s\": want error \"%s\", got \"%s\"", file, line,
                 text ? text : "NULL", want, err);
}

#define compile_ok(text, vars, n) compile_ok_at(text, vars, n, __FILE__, __LINE__)
#define render_is(text, vars, hour, want) render_is_at(text, vars, hour, want, __FILE__, __LINE__)
#define compile_err(text, want) compile_err_at(text, known, NKNOWN, want, __FILE__, __LINE__)
#define compile_err_any(text, want) compile_err_at(text, NULL, 0, want, __FILE__, __LINE__)

static void test_plain_text(void **state)
{
    render_is("Hello world", aisyah, 9, "Hello world");
    render_is("a|b", aisyah, 9, "a|b"); /* a bare '|' outside spintax is text */
    render_is("50% off: $10 \"today\"", aisyah, 9, "50% off: $10 \"today\"");
    render_is("  x  ", aisyah, 9, "  x  ");
}

static void test_placeholders(void **state)
{
    render_is("Hi {{name}}!", aisyah, 9, "Hi Aisyah!");
    render_is("Hi {{ name }}!", aisyah, 9, "Hi Aisyah!");
    render_is("Hi {{\tname \t}}!", aisyah, 9, "Hi Aisyah!");
    render_is("{{name}}{{niche}}", aisyah, 9, "Aisyahskincare");
    render_is("From {{lead.city}} {{_x1}}", aisyah, 9, "From Ipoh X");
    /* Missing without a default renders as nothing. */
    render_is("Hi {{name}}!", nobody, 9, "Hi !");
    render_is("{{name}}", nobody, 9, "");
}

static void test_default(void **state)
{
    const char *text = "Hi {{name | default \"there\"}}!";
    render_is(text, aisyah, 9, "Hi Aisyah!");
    render_is(text, nobody, 9, "Hi there!");     /* missing */
    render_is(text, blank_name, 9, "Hi there!"); /* empty */
    render_is("Hi {{name|default \"there\"}}!", nobody, 9, "Hi there!");
    render_is("Hi {{ name  |  default   \"there\"  }}!", nobody, 9, "Hi there!");
    render_is("Hi {{name | default \"\"}}!", nobody, 9, "Hi !");
    render_is("Hi {{name | default \"dear \\\"friend\\\" \\\\o/\"}}", nobody, 9,
              "Hi dear \"friend\" \\o/");
    /* "}}", '|' and braces inside the quotes are the default's text. */
    render_is("Hi {{name | default \"}} {a|b} |\"}}.", nobody, 9, "Hi }} {a|b} |.");
}

static void test_lookup_null(void **state)
{
    wc_tpl *t = compile_ok("Hi {{name | default \"there\"}} {{niche}}.", known, NKNOWN);
    wc_buf out = {0};
    char err[128];
    assert_int_equal(wc_tpl_render(t, NULL, NULL, NULL, 9, 0, &out, err, sizeof err), 0);
    assert_string_equal(out.data, "Hi there .");
    wc_buf_free(&out);
    wc_tpl_free(t);
}

static void test_greeting_boundaries(void **state)
{
    static const struct {
        int hour;
        const char *want;
    } cases[] = {
        {0, "Good evening"},     {4, "Good evening"},    {5, "Good morning"},
        {11, "Good morning"},    {12, "Good afternoon"}, {17, "Good afternoon"},
        {18, "Good evening"},    {23, "Good evening"},   {-1, "Good evening"}, /* 23 */
        {24, "Good evening"},                                                  /* 0 */
        {29, "Good morning"},                                                  /* 5 */
        {-12, "Good afternoon"},                                               /* 12 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s, Aisyah", cases[i].want);
        render_is("{{greeting}}, {{name}}", aisyah, cases[i].hour, want);
    }
}

static void test_greeting_is_builtin(void **state)
{
    /* Allowed whatever known_vars says, and never looked up. */
    static const struct kv has_greeting[] = {{"greeting", "Yo"}, {NULL, NULL}};
    static const char *const only_name[] = {"name"};
    wc_tpl *t = compile_ok("{{ greeting }}!", only_name, 1);
    wc_buf out = {0};
    char err[128];
    assert_int_equal(
        wc_tpl_render(t, lookup_kv, (void *)has_greeting, NULL, 13, 0, &out, err, sizeof err), 0);
    assert_string_equal(out.data, "Good afternoon!");
    wc_tpl_free(t);
    t = compile_ok("{{greeting}}", NULL, 0);
    wc_tpl_free(t);
    t = compile_ok("{{greeting}}", only_name, 0);
    wc_tpl_free(t);
    wc_buf_free(&out);
}

/* Renders text n times and counts each expected output; fails on anything
 * else. counts must have nwant entries. */
static void count_outputs(const char *text, const struct kv *vars, const char *const *want,
                          size_t nwant, int *counts, int n)
{
    wc_tpl *t = compile_ok(text, known, NKNOWN);
    wc_buf out = {0};
    uint64_t rng = 0x1234abcdULL;
    char err[128];
    memset(counts, 0, nwant * sizeof counts[0]);
    for (int i = 0; i < n; i++) {
        assert_int_equal(
            wc_tpl_render(t, lookup_kv, (void *)vars, &rng, 9, 0, &out, err, sizeof err), 0);
        size_t j = 0;
        while (j < nwant && strcmp(out.data, want[j]) != 0)
            j++;
        if (j == nwant)
            fail_msg("\"%s\" rendered unexpected \"%s\"", text, out.data);
        counts[j]++;
    }
    wc_buf_free(&out);
    wc_tpl_free(t);
}

/* Expected share p of n: within 5 standard deviations (and never 0). */
static void assert_share(const char *what, int count, int n, double p)
{
    double mean = n * p;
    double sd = sqrt(n * p * (1 - p));
    if (count == 0 || count < mean - 5 * sd || count > mean + 5 * sd)
        fail_msg("%s appeared %d times in %d renders, expected about %.0f", what, count, n, mean);
}

static void test_spintax_distribution(void **state)
{
    const char *const want[] = {"Hi there", "Hello there", "Hey there"};
    int counts[3];
    const int n = 30000;
    count_outputs("{Hi|Hello|Hey} there", aisyah, want, 3, counts, n);
    for (int i = 0; i < 3; i++)
        assert_share(want[i], counts[i], n, 1.0 / 3);
}

static void test_spintax_nested(void **state)
{
    const char *const want[] = {"a", "b", "c"};
    int counts[3];
    const int n = 40000;
    count_outputs("{a|{b|c}}", aisyah, want, 3, counts, n);
    assert_share("a", counts[0], n, 0.5);
    assert_share("b", counts[1], n, 0.25);
    assert_share("c", counts[2], n, 0.25);
}

static void test_spintax_empty_alternative(void **state)
{
    const char *const want[] = {"Hi there", "there"};
    int counts[2];
    count_outputs("{Hi |}there", aisyah, want, 2, counts, 2000);
    assert_share("with", counts[0], 2000, 0.5);
    assert_share("without", counts[1], 2000, 0.5);
}

static void test_placeholder_inside_spintax(void **state)
{
    const char *const want[] = {"Hi Aisyah!", "Hello!"};
    int counts[2];
    count_outputs("{Hi {{name}}|Hello}!", aisyah, want, 2, counts, 2000);
    assert_share("Hi {{name}}", counts[0], 2000, 0.5);
    assert_share("Hello", counts[1], 2000, 0.5);

    /* The default's '|' and '}' belong to the placeholder, not the spintax. */
    const char *const want2[] = {"Hi a|b}", "Yo"};
    count_outputs("{Hi {{name | default \"a|b}\"}}|Yo}", nobody, want2, 2, counts, 2000);
    assert_share("Hi a|b}", counts[0], 2000, 0.5);
    assert_share("Yo", counts[1], 2000, 0.5);

    const char *const want3[] = {"x", "Aisyah"};
    count_outputs("{x|{{name}}}", aisyah, want3, 2, counts, 2000);
    assert_share("x", counts[0], 2000, 0.5);
    assert_share("{{name}}", counts[1], 2000, 0.5);
}

static void test_placeholder_never_spintax(void **state)
{
    /* "{{" is a placeholder even where spintax could match. */
    render_is("{{name}}", aisyah, 9, "Aisyah");
    /* Three braces: spintax around a placeholder. */
    const char *const want[] = {"Aisyah", "there"};
    int counts[2];
    count_outputs("{{{name}}|there}", aisyah, want, 2, counts, 2000);
    assert_share("{{name}}", counts[0], 2000, 0.5);
    assert_share("there", counts[1], 2000, 0.5);
    count_outputs("{{{{name}}|there}}", aisyah, want, 2, counts, 2000);
    assert_share("{{name}} (double group)", counts[0], 2000, 0.5);
}

static void test_escapes(void **state)
{
    render_is("\\{Hi\\|Hello\\}", aisyah, 9, "{Hi|Hello}");
    render_is("\\{\\{name\\}\\}", aisyah, 9, "{{name}}");
    render_is("back\\\\slash", aisyah, 9, "back\\slash");
    render_is("\\\\{{name}}", aisyah, 9, "\\Aisyah");
    /* Any other backslash is literal, including a trailing one. */
    render_is("a\\nb :\\ ", aisyah, 9, "a\\nb :\\ ");
    render_is("end\\", aisyah, 9, "end\\");

    const char *const want[] = {"a|b", "c}"};
    int counts[2];
    count_outputs("{a\\|b|c\\}}", aisyah, want, 2, counts, 2000);
    assert_share("a|b", counts[0], 2000, 0.5);
    assert_share("c}", counts[1], 2000, 0.5);
}

static void test_rng_contract(void **state)
{
    wc_tpl *t = compile_ok("{a|b|c|d|e|f|g|h}{a|b|c|d|e|f|g|h}{a|b|c|d|e|f|g|h}", known, NKNOWN);
    wc_buf x = {0}, y = {0};
    char err[128];
    uint64_t s1 = 7, s2 = 7;
    int differ = 0;
    for (int i = 0; i < 200; i++) {
        assert_int_equal(wc_tpl_render(t, NULL, NULL, &s1, 9, 0, &x, err, sizeof err), 0);
        assert_int_equal(wc_tpl_render(t, NULL, NULL, &s2, 9, 0, &y, err, sizeof err), 0);
        assert_string_equal(x.data, y.data); /* same seed, same choices */
        differ += strcmp(x.data, "aaa") != 0;
    }
    assert_true(differ > 0);
    assert_int_not_equal(s1, 7); /* the state advances */
    /* NULL rng_state: always the first alternative. */
    for (int i = 0; i < 10; i++) {
        assert_int_equal(wc_tpl_render(t, NULL, NULL, NULL, 9, 0, &x, err, sizeof err), 0);
        assert_string_equal(x.data, "aaa");
    }
    wc_buf_free(&x);
    wc_buf_free(&y);
    wc_tpl_free(t);
}

static void test_max_len(void **state)
{
    wc_tpl *t = compile_ok("Hi {{name}}", known, NKNOWN);
    wc_buf out = {0};
    char err[128] = "";
    assert_int_equal(wc_tpl_render(t, lookup_kv, (void *)aisyah, NULL, 9, 9, &out, err, sizeof err),
                     0);
    assert_string_equal(out.data, "Hi Aisyah");
    assert_int_equal(wc_tpl_render(t, lookup_kv, (void *)aisyah, NULL, 9, 8, &out, err, sizeof err),
                     -1);
    assert_string_equal(err, "message longer than 8 bytes");
    assert_int_equal(out.len, 0);
    assert_string_equal(out.data, "");
    /* The buffer stays usable. */
    assert_int_equal(wc_tpl_render(t, lookup_kv, (void *)nobody, NULL, 9, 8, &out, err, sizeof err),
                     0);
    assert_string_equal(out.data, "Hi ");
    wc_buf_free(&out);
    assert_null(out.data);
    assert_int_equal(out.cap, 0);
    wc_tpl_free(t);
}

static void test_output_growth(void **state)
{
    static char big[100000];
    memset(big, 'z', sizeof big - 1);
    const struct kv vars[] = {{"name", big}, {NULL, NULL}};
    wc_tpl *t = compile_ok("<{{name}}>", known, NKNOWN);
    wc_buf out = {0};
    char err[128];
    assert_int_equal(wc_tpl_render(t, lookup_kv, (void *)vars, NULL, 9, 0, &out, err, sizeof err),
                     0);
    assert_int_equal(out.len, sizeof big + 1);
    assert_int_equal(out.data[0], '<');
    assert_int_equal(out.data[out.len - 1], '>');
    assert_int_equal(out.data[out.len], '\0');
    wc_buf_free(&out);
    wc_tpl_free(t);
}

static void test_compile_errors(void **state)
{
    compile_err(NULL, "empty message");
    compile_err("", "empty message");
    compile_err(" \n\t ", "empty message");

    compile_err("Hi {there", "unbalanced '{' at offset 3");
    compile_err("{a|{b|c}", "unbalanced '{' at offset 0");
    compile_err("{a|b} {c", "unbalanced '{' at offset 6");
    compile_err("Hi there}", "unbalanced '}' at offset 8");
    compile_err("{a|b}}", "unbalanced '}' at offset 5");
    compile_err("Hi name}}", "unbalanced '}' at offset 7");

    compile_err("Hi {{name", "unterminated '{{' at offset 3");
    compile_err("Hi {{name}", "unterminated '{{' at offset 3");
    compile_err("Hi {{name, see {{niche}}", "unterminated '{{' at offset 3");
    compile_err("{Hi {{name}|Hello}", "unterminated '{{' at offset 4");

    compile_err("Hi {{}}", "empty placeholder at offset 3");
    compile_err("{{   }}", "empty placeholder at offset 0");
    compile_err("{{ | default \"x\"}}", "missing variable name at offset 0");

    compile_err("Hi {{1name}}", "bad variable name '1name' at offset 5");
    compile_err("{{ first name }}", "bad variable name 'first name' at offset 3");
    compile_err("{{na-me}}", "bad variable name 'na-me' at offset 2");
    compile_err("{{.name}}", "bad variable name '.name' at offset 2");
    compile_err("{{ {name} }}", "bad variable name '{name}' at offset 3");

    compile_err("Hi {{nmae}}", "unknown placeholder 'nmae' at offset 5");
    compile_err("{a|{{ Name }}}", "unknown placeholder 'Name' at offset 6");

    compile_err("{{name | upper}}",
                "bad default syntax at offset 9 (expected {{name | default \"text\"}})");
    compile_err("{{name | default there}}",
                "bad default syntax at offset 17 (expected {{name | default \"text\"}})");
    compile_err("{{name | default \"there}}",
                "bad default syntax at offset 17 (expected {{name | default \"text\"}})");
    compile_err("{{name | default \"a\" \"b\"}}",
                "bad default syntax at offset 21 (expected {{name | default \"text\"}})");
    compile_err("{{name | default 'a'}}",
                "bad default syntax at offset 17 (expected {{name | default \"text\"}})");
    compile_err("{{name |}}",
                "bad default syntax at offset 8 (expected {{name | default \"text\"}})");

    compile_err("Hi {name}", "'{name}' at offset 3 looks like a placeholder; write '{{name}}' or "
                             "escape the braces");
    compile_err_any("{greeting}", "'{greeting}' at offset 0 looks like a placeholder; write "
                                  "'{{greeting}}' or escape the braces");
}

static void test_nesting_depth(void **state)
{
    char text[128];
    /* 16 nested groups compile. */
    strcpy(text, "");
    for (int i = 0; i < 16; i++)
        strcat(text, "{a|");
    strcat(text, "x");
    for (int i = 0; i < 16; i++)
        strcat(text, "}");
    wc_tpl *t = compile_ok(text, known, NKNOWN);
    wc_buf out = {0};
    char err[128];
    uint64_t rng = 3;
    assert_int_equal(wc_tpl_render(t, NULL, NULL, &rng, 9, 0, &out, err, sizeof err), 0);
    assert_true(strcmp(out.data, "a") == 0 || strcmp(out.data, "x") == 0);
    wc_buf_free(&out);
    wc_tpl_free(t);
    /* The 17th '{' (at offset 48) is refused. */
    strcpy(text, "");
    for (int i = 0; i < 17; i++)
        strcat(text, "{a|");
    strcat(text, "x");
    for (int i = 0; i < 17; i++)
        strcat(text, "}");
    compile_err(text, "nesting deeper than 16 at offset 48");
}

static void test_known_vars(void **state)
{
    /* NULL known_vars: any well-formed name, and single braces are spintax. */
    wc_tpl *t = compile_ok("{{anything.at_all}} {name}", NULL, 0);
    wc_tpl_free(t);
    render_is("{{lead.city}}", aisyah, 9, "Ipoh");
    static const char *const attrs[] = {"city", "plan"};
    compile_err_at("{{name}}", attrs, 2, "unknown placeholder 'name' at offset 2", __FILE__,
                   __LINE__);
    /* A spintax word that is not a known name is fine. */
    t = compile_ok("{Hi}", known, NKNOWN);
    wc_tpl_free(t);
}

static void test_err_buffer_contract(void **state)
{
    /* err may be NULL or tiny; it is truncated, never overrun. */
    assert_null(wc_tpl_compile("{", NULL, 0, NULL, 0));
    char tiny[8];
    memset(tiny, 'x', sizeof tiny);
    assert_null(wc_tpl_compile("{", NULL, 0, tiny, sizeof tiny));
    assert_string_equal(tiny, "unbalan");
    char err[128] = "stale";
    wc_tpl *t = wc_tpl_compile("fine", NULL, 0, err, sizeof err);
    assert_non_null(t);
    assert_string_equal(err, "");
    wc_tpl_free(t);
    wc_tpl_free(NULL);
    wc_buf_free(NULL);
}

/* Rendering reuses the caller's buffer: after the first render nothing is
 * allocated. (How fast rendering is belongs to the bench, not to a test.) */
static void test_render_reuses_buffer(void **state)
{
    wc_tpl *t = compile_ok("{{greeting}} {{name | default \"there\"}}, {Hi|Hello|Hey}! Our "
                           "{{niche}} promo {is live|starts {today|tomorrow}} in {{lead.city}}. "
                           "Reply STOP to opt out.",
                           known, NKNOWN);
    wc_buf out = {0};
    char err[128];
    uint64_t rng = 99;
    assert_int_equal(
        wc_tpl_render(t, lookup_kv, (void *)aisyah, &rng, 9, 4096, &out, err, sizeof err), 0);
    char *data = out.data;
    size_t cap = out.cap;
    const int n = 100000;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (wc_tpl_render(t, lookup_kv, (void *)aisyah, &rng, i % 24, 4096, &out, err,
                          sizeof err) != 0)
            fail_msg("render %d failed: %s", i, err);
        total += out.len;
    }
    /* The buffer was reused: nothing was allocated after the first render. */
    assert_ptr_equal(out.data, data);
    assert_int_equal(out.cap, cap);
    assert_true(total > (size_t)n * 60);
    wc_buf_free(&out);
    wc_tpl_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_text),
        cmocka_unit_test(test_placeholders),
        cmocka_unit_test(test_default),
        cmocka_unit_test(test_lookup_null),
        cmocka_unit_test(test_greeting_boundaries),
        cmocka_unit_test(test_greeting_is_builtin),
        cmocka_unit_test(test_spintax_distribution),
        cmocka_unit_test(test_spintax_nested),
        cmocka_unit_test(test_spintax_empty_alternative),
        cmocka_unit_test(test_placeholder_inside_spintax),
        cmocka_unit_test(test_placeholder_never_spintax),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_rng_contract),
        cmocka_unit_test(test_max_len),
        cmocka_unit_test(test_output_growth),
        cmocka_unit_test(test_compile_errors),
        cmocka_unit_test(test_nesting_depth),
        cmocka_unit_test(test_known_vars),
        cmocka_unit_test(test_err_buffer_contract),
        cmocka_unit_test(test_render_reuses_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
