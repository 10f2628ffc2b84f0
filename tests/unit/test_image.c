/* Unit tests for wc_image: real JPEG, PNG and WebP files made here with the
 * same libraries' encoders come out a valid JPEG under the budget, upright,
 * no longer than the longest-side limit, and close to the source (PSNR
 * against the source pattern sampled at the result's size); every bad input
 * fails with its defined code, in a child process whose peak RSS is checked. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <png.h>
#include <turbojpeg.h>
#include <webp/encode.h>
#include <zlib.h>

#include "wc_image.h"

/* A result this close to the source counts as the same picture (a JPEG at
 * quality 40..90 of a smooth image lands well above it; a wrong orientation,
 * channel order or flattening lands far below, around 10-15 dB). */
#define MIN_PSNR_DB 30.0
/* Peak RSS of a child that refused a bad input. ASan's own shadow memory is
 * in it; a decoded 50,000 x 50,000 image (7.5 GB) is not. */
#define BAD_INPUT_MAX_RSS_KB (160 * 1024)

/* The source picture as a function of where in the frame a point is (u, v in
 * [0, 1)): smooth enough that sampling it at the result's pixel centres is
 * what a good downscale gives, varied enough that a flip or a channel swap
 * shows. */
static void pattern(double u, double v, unsigned char px[3])
{
    double r = 40 + 180 * u + 20 * sin(v * 9.0);
    double g = 30 + 170 * v + 25 * cos(u * 7.0);
    double b = 128 + 90 * sin((u + 2 * v) * 5.0) * (u < 0.5 ? 1.0 : 0.4);
    px[0] = (unsigned char)fmin(255, fmax(0, r));
    px[1] = (unsigned char)fmin(255, fmax(0, g));
    px[2] = (unsigned char)fmin(255, fmax(0, b));
}

/* W x H RGB of the pattern; noise adds a fixed +-3 grain so the source JPEG
 * is large, as a camera's is. */
static unsigned char *make_rgb(int w, int h, bool noise)
{
    unsigned char *p = malloc((size_t)w * h * 3);
    assert_non_null(p);
    uint32_t seed = 12345;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *q = p + ((size_t)y * w + x) * 3;
            pattern((x + 0.5) / w, (y + 0.5) / h, q);
            if (noise)
                for (int c = 0; c < 3; c++) {
                    seed = seed * 1103515245u + 12345u;
                    int v = q[c] + (int)((seed >> 16) % 7) - 3;
                    q[c] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
                }
        }
    return p;
}

static unsigned char *jpeg_of(const unsigned char *px, int w, int h, int pf, int samp, int q,
                              size_t *len)
{
    tjhandle tj = tjInitCompress();
    assert_non_null(tj);
    unsigned char *buf = NULL;
    unsigned long n = 0;
    assert_int_equal(tjCompress2(tj, px, w, 0, h, pf, &buf, &n, samp, q, 0), 0);
    tjDestroy(tj);
    unsigned char *out = malloc(n);
    memcpy(out, buf, n);
    tjFree(buf);
    *len = n;
    return out;
}

/* Decodes a result, checking it is a baseline JPEG a decoder accepts. */
static unsigned char *decode_result(const wc_image_out *o, int *cs)
{
    assert_int_equal(wc_image_sniff(o->jpeg, o->len), WC_IMAGE_JPEG);
    tjhandle tj = tjInitDecompress();
    int w, h, sub;
    assert_int_equal(tjDecompressHeader3(tj, o->jpeg, o->len, &w, &h, &sub, cs), 0);
    assert_int_equal(w, o->width);
    assert_int_equal(h, o->height);
    unsigned char *px = malloc((size_t)w * h * 3);
    assert_int_equal(tjDecompress2(tj, o->jpeg, o->len, px, w, 0, h, TJPF_RGB, 0), 0);
    tjDestroy(tj);
    /* Not progressive: SOF0 (baseline) is there, SOF2 is not. */
    bool sof0 = false, sof2 = false;
    for (size_t i = 0; i + 1 < o->len; i++) {
        if (o->jpeg[i] == 0xFF && o->jpeg[i + 1] == 0xC0)
            sof0 = true;
        if (o->jpeg[i] == 0xFF && o->jpeg[i + 1] == 0xC2)
            sof2 = true;
        if (o->jpeg[i] == 0xFF && o->jpeg[i + 1] == 0xDA)
            break;
    }
    assert_true(sof0);
    assert_false(sof2);
    return px;
}

/* PSNR of an RGB image against expected(x, y) given as a function. */
typedef void expect_fn(int x, int y, int w, int h, unsigned char px[3], void *arg);

static double psnr(const unsigned char *px, int w, int h, expect_fn *expect, void *arg)
{
    double se = 0;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char e[3];
            expect(x, y, w, h, e, arg);
            for (int c = 0; c < 3; c++) {
                double d = (double)px[((size_t)y * w + x) * 3 + c] - e[c];
                se += d * d;
            }
        }
    double mse = se / ((double)w * h * 3);
    return mse == 0 ? 99 : 10 * log10(255.0 * 255.0 / mse);
}

static void expect_pattern(int x, int y, int w, int h, unsigned char px[3], void *arg)
{
    (void)arg;
    pattern((x + 0.5) / w, (y + 0.5) / h, px);
}

static void prepare_ok(const void *data, size_t len, const wc_image_opts *o, wc_image_out *out)
{
    const char *code = NULL;
    char why[256] = "";
    int rc = wc_image_prepare(data, len, o, out, &code, why, sizeof why);
    if (rc != 0)
        fail_msg("prepare failed: %s: %s", code, why);
    assert_true(out->len <= (o && o->max_bytes ? o->max_bytes : WC_IMAGE_MAX_BYTES_DEFAULT));
    int side = o && o->max_side ? o->max_side : WC_IMAGE_MAX_SIDE_DEFAULT;
    assert_true(out->width <= side && out->height <= side);
}

/* Outcome 1: a 4,000 x 3,000 camera-like JPEG at quality 95. */
static void test_big_jpeg(void **state)
{
    (void)state;
    unsigned char *src = make_rgb(4000, 3000, true);
    size_t len;
    unsigned char *jpg = jpeg_of(src, 4000, 3000, TJPF_RGB, TJSAMP_444, 95, &len);
    free(src);
    assert_true(len > 2 * 1024 * 1024); /* a real multi-megabyte source */
    wc_image_out out;
    prepare_ok(jpg, len, NULL, &out);
    assert_int_equal(out.width, 1600);
    assert_int_equal(out.height, 1200);
    assert_int_equal(out.in_type, WC_IMAGE_JPEG);
    assert_int_equal(out.in_width, 4000);
    assert_int_equal(out.in_height, 3000);
    int cs;
    unsigned char *px = decode_result(&out, &cs);
    double db = psnr(px, out.width, out.height, expect_pattern, NULL);
    printf("# 4000x3000 q95 %zu bytes -> %dx%d q%d %zu bytes, PSNR %.1f dB\n", len, out.width,
           out.height, out.quality, out.len, db);
    assert_true(db >= MIN_PSNR_DB);
    free(px);
    free(jpg);
    wc_image_out_free(&out);
}

/* A budget and a side limit of one's own are kept. */
static void test_settings_kept(void **state)
{
    (void)state;
    unsigned char *src = make_rgb(1200, 900, true);
    size_t len;
    unsigned char *jpg = jpeg_of(src, 1200, 900, TJPF_RGB, TJSAMP_444, 95, &len);
    free(src);
    wc_image_opts o = {.max_side = 500, .max_bytes = 20 * 1024};
    wc_image_out out;
    prepare_ok(jpg, len, &o, &out);
    assert_int_equal(out.width, 500);
    assert_int_equal(out.height, 375);
    /* A smaller budget gives a lower quality, not a broken file. */
    wc_image_opts tight = {.max_side = 500, .max_bytes = 8 * 1024};
    wc_image_out out2;
    prepare_ok(jpg, len, &tight, &out2);
    assert_true(out2.quality < out.quality || out2.width < out.width);
    int cs;
    free(decode_result(&out2, &cs));
    free(jpg);
    wc_image_out_free(&out);
    wc_image_out_free(&out2);
}

/* Alpha: the transparent half must come out white, the half-transparent band
 * halfway between the colour and white. */
static void expect_flattened(int x, int y, int w, int h, unsigned char px[3], void *arg)
{
    (void)arg;
    pattern((x + 0.5) / w, (y + 0.5) / h, px);
    if (x >= w / 2) {
        px[0] = px[1] = px[2] = 255;
    } else if (y < h / 4) {
        for (int c = 0; c < 3; c++)
            px[c] = (unsigned char)((px[c] * 128 + 255 * 127 + 127) / 255);
    }
}

static unsigned char *rgba_with_alpha(int w, int h)
{
    unsigned char *rgb = make_rgb(w, h, false);
    unsigned char *p = malloc((size_t)w * h * 4);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            unsigned char *q = p + ((size_t)y * w + x) * 4;
            memcpy(q, rgb + ((size_t)y * w + x) * 3, 3);
            q[3] = x >= w / 2 ? 0 : y < h / 4 ? 128 : 255;
            if (x >= w / 2)
                q[0] = q[1] = q[2] = 0; /* black under full transparency */
        }
    free(rgb);
    return p;
}

static void test_png_alpha(void **state)
{
    (void)state;
    int w = 2000, h = 1200;
    unsigned char *rgba = rgba_with_alpha(w, h);
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = w;
    img.height = h;
    img.format = PNG_FORMAT_RGBA;
    png_alloc_size_t len = 0;
    assert_true(png_image_write_get_memory_size(img, len, 0, rgba, 0, NULL));
    unsigned char *pngbuf = malloc(len);
    assert_true(png_image_write_to_memory(&img, pngbuf, &len, 0, rgba, 0, NULL));
    free(rgba);
    wc_image_out out;
    prepare_ok(pngbuf, len, NULL, &out);
    assert_int_equal(out.in_type, WC_IMAGE_PNG);
    assert_int_equal(out.width, 1600);
    assert_int_equal(out.height, 960);
    int cs;
    unsigned char *px = decode_result(&out, &cs);
    /* Away from the edges, where the filter mixes neighbours. */
    int cx = out.width * 3 / 4, cy = out.height / 2;
    const unsigned char *c = px + ((size_t)cy * out.width + cx) * 3;
    assert_true(c[0] >= 250 && c[1] >= 250 && c[2] >= 250);
    double db = psnr(px, out.width, out.height, expect_flattened, NULL);
    printf("# PNG RGBA %dx%d -> %dx%d %zu bytes, PSNR %.1f dB\n", w, h, out.width, out.height,
           out.len, db);
    assert_true(db >= MIN_PSNR_DB - 4); /* the hard alpha edges ring a little */
    free(px);
    free(pngbuf);
    wc_image_out_free(&out);
}

static void test_webp(void **state)
{
    (void)state;
    int w = 2400, h = 1000;
    unsigned char *rgb = make_rgb(w, h, false);
    uint8_t *webp = NULL;
    size_t len = WebPEncodeRGB(rgb, w, h, w * 3, 92, &webp);
    assert_true(len > 0);
    free(rgb);
    wc_image_out out;
    prepare_ok(webp, len, NULL, &out);
    assert_int_equal(out.in_type, WC_IMAGE_WEBP);
    assert_int_equal(out.width, 1600);
    assert_int_equal(out.height, 667); /* 666.7 rounded */
    int cs;
    unsigned char *px = decode_result(&out, &cs);
    double db = psnr(px, out.width, out.height, expect_pattern, NULL);
    printf("# WebP %dx%d -> %dx%d %zu bytes, PSNR %.1f dB\n", w, h, out.width, out.height, out.len,
           db);
    assert_true(db >= MIN_PSNR_DB);
    free(px);
    WebPFree(webp);
    wc_image_out_free(&out);
}

/* A JPEG whose pixels are stored turned, with an EXIF APP1 saying how. */
static unsigned char *with_exif_orientation(const unsigned char *jpg, size_t len, int o,
                                            size_t *outlen)
{
    /* APP1: "Exif\0\0", big-endian TIFF header, IFD0 with one entry. */
    unsigned char app1[] = {0xFF, 0xE1, 0x00, 0x22, 'E',  'x',  'i',  'f',  0,    0,
                            'M',  'M',  0x00, 0x2A, 0x00, 0x00, 0x00, 0x08, 0x00, 0x01,
                            0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01, 0x00, (unsigned char)o,
                            0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    *outlen = len + sizeof app1;
    unsigned char *p = malloc(*outlen);
    memcpy(p, jpg, 2);
    memcpy(p + 2, app1, sizeof app1);
    memcpy(p + 2 + sizeof app1, jpg + 2, len - 2);
    return p;
}

static void test_exif_orientation(void **state)
{
    (void)state;
    const int W = 600, H = 400; /* the upright picture */
    unsigned char *up = make_rgb(W, H, false);
    const int orientations[] = {3, 6, 8};
    for (size_t k = 0; k < sizeof orientations / sizeof orientations[0]; k++) {
        int o = orientations[k];
        /* The stored pixels: the upright picture turned the other way. */
        int sw = o == 3 ? W : H, sh = o == 3 ? H : W;
        unsigned char *st = malloc((size_t)sw * sh * 3);
        for (int sy = 0; sy < sh; sy++)
            for (int sx = 0; sx < sw; sx++) {
                int ux, uy;
                if (o == 3)
                    ux = W - 1 - sx, uy = H - 1 - sy; /* stored upside down */
                else if (o == 6)
                    ux = W - 1 - sy, uy = sx; /* stored turned counter-clockwise */
                else
                    ux = sy, uy = H - 1 - sx; /* stored turned clockwise */
                memcpy(st + ((size_t)sy * sw + sx) * 3, up + ((size_t)uy * W + ux) * 3, 3);
            }
        size_t jl, el;
        unsigned char *jpg = jpeg_of(st, sw, sh, TJPF_RGB, TJSAMP_444, 95, &jl);
        unsigned char *exif = with_exif_orientation(jpg, jl, o, &el);
        assert_int_equal(wc_image_jpeg_orientation(exif, el), o);
        assert_int_equal(wc_image_jpeg_orientation(jpg, jl), 1);
        wc_image_out out;
        prepare_ok(exif, el, NULL, &out);
        assert_int_equal(out.orientation, o);
        assert_int_equal(out.width, W);
        assert_int_equal(out.height, H);
        int cs;
        unsigned char *px = decode_result(&out, &cs);
        double db = psnr(px, W, H, expect_pattern, NULL);
        printf("# EXIF orientation %d: PSNR %.1f dB\n", o, db);
        assert_true(db >= MIN_PSNR_DB);
        /* Without the tag the same pixels are not upright: the check can fail. */
        if (o == 3) {
            wc_image_out raw;
            prepare_ok(jpg, jl, NULL, &raw);
            unsigned char *rp = decode_result(&raw, &cs);
            assert_true(psnr(rp, W, H, expect_pattern, NULL) < MIN_PSNR_DB - 10);
            free(rp);
            wc_image_out_free(&raw);
        }
        free(px);
        wc_image_out_free(&out);
        free(exif);
        free(jpg);
        free(st);
    }
    free(up);
}

static void expect_gray(int x, int y, int w, int h, unsigned char px[3], void *arg)
{
    (void)arg;
    unsigned char c[3];
    pattern((x + 0.5) / w, (y + 0.5) / h, c);
    /* The JFIF luma of the pattern. */
    double l = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
    px[0] = px[1] = px[2] = (unsigned char)(l + 0.5);
}

static void test_grayscale(void **state)
{
    (void)state;
    int w = 2400, h = 1800;
    unsigned char *rgb = make_rgb(w, h, false);
    size_t len;
    unsigned char *jpg = jpeg_of(rgb, w, h, TJPF_RGB, TJSAMP_GRAY, 95, &len);
    free(rgb);
    wc_image_out out;
    prepare_ok(jpg, len, NULL, &out);
    assert_int_equal(out.width, 1600);
    assert_int_equal(out.height, 1200);
    int cs;
    unsigned char *px = decode_result(&out, &cs);
    assert_int_equal(cs, TJCS_GRAY); /* stays one channel: smaller */
    double db = psnr(px, out.width, out.height, expect_gray, NULL);
    printf("# grayscale: %zu bytes, PSNR %.1f dB\n", out.len, db);
    assert_true(db >= MIN_PSNR_DB);
    free(px);
    free(jpg);
    wc_image_out_free(&out);
}

/* CMYK as Photoshop stores it (Adobe, inverted): each stored value is
 * 255 - ink, so R = C * K / 255. */
static void test_cmyk(void **state)
{
    (void)state;
    int w = 1800, h = 1200;
    unsigned char *rgb = make_rgb(w, h, false);
    unsigned char *cmyk = malloc((size_t)w * h * 4);
    for (size_t i = 0; i < (size_t)w * h; i++) {
        unsigned r = rgb[3 * i], g = rgb[3 * i + 1], b = rgb[3 * i + 2];
        unsigned k = r > g ? (r > b ? r : b) : (g > b ? g : b);
        if (k == 0)
            k = 1;
        cmyk[4 * i] = (unsigned char)((r * 255 + k / 2) / k);
        cmyk[4 * i + 1] = (unsigned char)((g * 255 + k / 2) / k);
        cmyk[4 * i + 2] = (unsigned char)((b * 255 + k / 2) / k);
        cmyk[4 * i + 3] = (unsigned char)k;
    }
    free(rgb);
    size_t len;
    unsigned char *jpg = jpeg_of(cmyk, w, h, TJPF_CMYK, TJSAMP_444, 95, &len);
    free(cmyk);
    tjhandle tj = tjInitDecompress();
    int jw, jh, sub, cs;
    assert_int_equal(tjDecompressHeader3(tj, jpg, len, &jw, &jh, &sub, &cs), 0);
    tjDestroy(tj);
    assert_true(cs == TJCS_YCCK || cs == TJCS_CMYK);
    wc_image_out out;
    prepare_ok(jpg, len, NULL, &out);
    assert_int_equal(out.width, 1600);
    unsigned char *px = decode_result(&out, &cs);
    assert_int_equal(cs, TJCS_YCbCr); /* an RGB JPEG every phone shows */
    double db = psnr(px, out.width, out.height, expect_pattern, NULL);
    printf("# CMYK: %zu bytes, PSNR %.1f dB\n", out.len, db);
    assert_true(db >= MIN_PSNR_DB);
    free(px);
    free(jpg);
    wc_image_out_free(&out);
}

/* Outcome 2: each bad input in a child process; the child reports the code
 * through a pipe, the parent checks it and the child's peak RSS. */
typedef struct bad_input {
    const char *name;
    unsigned char *data;
    size_t len;
    const char *want;
} bad_input;

static void expect_refused(const bad_input *b)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        wc_image_out out;
        const char *code = "none";
        char why[256] = "";
        int rc = wc_image_prepare(b->data, b->len, NULL, &out, &code, why, sizeof why);
        char msg[400];
        int n = snprintf(msg, sizeof msg, "%d %s %s", rc, rc == 0 ? "accepted" : code, why);
        if (write(fds[1], msg, (size_t)n) < 0)
            _exit(3);
        wc_image_out_free(&out);
        _exit(0);
    }
    close(fds[1]);
    char msg[400] = "";
    size_t got = 0;
    ssize_t r;
    while ((r = read(fds[0], msg + got, sizeof msg - 1 - got)) > 0)
        got += (size_t)r;
    close(fds[0]);
    int status;
    struct rusage ru;
    assert_int_equal(wait4(pid, &status, 0, &ru), pid);
    printf("# %-22s -> %s (child peak RSS %ld MB)\n", b->name, msg, ru.ru_maxrss / 1024);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("%s: the child crashed (status %d)", b->name, status);
    char want[128];
    snprintf(want, sizeof want, "-1 %s ", b->want);
    if (strncmp(msg, want, strlen(want)) != 0)
        fail_msg("%s: wanted %s, got %s", b->name, b->want, msg);
    assert_true(ru.ru_maxrss < BAD_INPUT_MAX_RSS_KB);
}

static unsigned char *dup_bytes(const void *p, size_t n)
{
    unsigned char *d = malloc(n ? n : 1);
    memcpy(d, p, n);
    return d;
}

/* Offset of the first JPEG marker m (0xFF m). */
static size_t find_marker(const unsigned char *p, size_t len, unsigned char m)
{
    for (size_t i = 2; i + 1 < len; i++)
        if (p[i] == 0xFF && p[i + 1] == m)
            return i;
    fail_msg("marker %02x not found", m);
    return 0;
}

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = (unsigned char)v;
}

static void test_bad_inputs(void **state)
{
    (void)state;
    unsigned char *rgb = make_rgb(640, 480, true);
    size_t jl;
    unsigned char *jpg = jpeg_of(rgb, 640, 480, TJPF_RGB, TJSAMP_420, 90, &jl);
    free(rgb);

    /* A JPEG whose header claims 65,000 x 65,000 (4.2 gigapixels). */
    unsigned char *bomb_jpg = dup_bytes(jpg, jl);
    size_t sof = find_marker(bomb_jpg, jl, 0xC0);
    bomb_jpg[sof + 5] = 0xFD, bomb_jpg[sof + 6] = 0xE8; /* height 65000 */
    bomb_jpg[sof + 7] = 0xFD, bomb_jpg[sof + 8] = 0xE8; /* width 65000 */

    /* A PNG header (signature + IHDR with a right CRC) claiming 50,000 x
     * 50,000, then a few bytes of IDAT: the whole "bomb" is tiny. */
    unsigned char bomb_png[8 + 25 + 20];
    memcpy(bomb_png, "\x89PNG\r\n\x1a\n", 8);
    unsigned char *ihdr = bomb_png + 8;
    put_be32(ihdr, 13);
    memcpy(ihdr + 4, "IHDR", 4);
    put_be32(ihdr + 8, 50000);
    put_be32(ihdr + 12, 50000);
    ihdr[16] = 8, ihdr[17] = 6, ihdr[18] = 0, ihdr[19] = 0, ihdr[20] = 0; /* 8-bit RGBA */
    put_be32(ihdr + 21, (uint32_t)crc32(crc32(0, NULL, 0), ihdr + 4, 17));
    unsigned char *idat = bomb_png + 33;
    put_be32(idat, 8);
    memcpy(idat + 4, "IDAT", 4);
    memset(idat + 8, 0, 12);

    /* A lossless WebP header claiming 16,000 x 16,000 (256 megapixels). */
    unsigned char bomb_webp[30];
    memcpy(bomb_webp, "RIFF", 4);
    bomb_webp[4] = 22, bomb_webp[5] = bomb_webp[6] = bomb_webp[7] = 0;
    memcpy(bomb_webp + 8, "WEBPVP8L", 8);
    bomb_webp[16] = 10, bomb_webp[17] = bomb_webp[18] = bomb_webp[19] = 0;
    bomb_webp[20] = 0x2F;
    uint32_t bits = (16000 - 1) | (uint32_t)(16000 - 1) << 14; /* no alpha, version 0 */
    bomb_webp[21] = bits & 0xFF, bomb_webp[22] = (bits >> 8) & 0xFF;
    bomb_webp[23] = (bits >> 16) & 0xFF, bomb_webp[24] = (bits >> 24) & 0xFF;
    memset(bomb_webp + 25, 0, 5);

    /* A JPEG whose frame header is destroyed. */
    unsigned char *corrupt_jpg = dup_bytes(jpg, jl);
    memset(corrupt_jpg + sof, 0x00, 12);
    /* A JPEG whose entropy-coded data is garbage. */
    unsigned char *garbled_jpg = dup_bytes(jpg, jl);
    size_t sos = find_marker(garbled_jpg, jl, 0xDA);
    uint32_t seed = 7;
    for (size_t i = sos + 20; i < jl - 2; i++) {
        seed = seed * 1103515245u + 12345u;
        garbled_jpg[i] = (unsigned char)(seed >> 16);
        if (garbled_jpg[i] == 0xFF)
            garbled_jpg[i] = 0xFE;
    }
    /* A PNG whose IHDR checksum is wrong. */
    unsigned char bad_crc_png[sizeof bomb_png];
    memcpy(bad_crc_png, bomb_png, sizeof bomb_png);
    put_be32(bad_crc_png + 8 + 8, 64);
    put_be32(bad_crc_png + 8 + 12, 64); /* dimensions changed, CRC not */

    static const char html[] = "<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
                               "<body>not here</body></html>";
    static const char svg[] = "<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\""
                              " width=\"100000\" height=\"100000\"><rect/></svg>";
    static const char gif[] = "GIF89a\x01\x00\x01\x00\x80\x00\x00";
    static const char junk[] = "\x00\x01\x02 this is not an image at all";

    bad_input cases[] = {
        {"empty", dup_bytes("", 0), 0, WC_IMAGE_E_EMPTY},
        {"truncated JPEG", dup_bytes(jpg, jl * 6 / 10), jl * 6 / 10, WC_IMAGE_E_TRUNCATED},
        {"JPEG header only", dup_bytes(jpg, sos + 14), sos + 14, WC_IMAGE_E_TRUNCATED},
        {"corrupt JPEG frame", corrupt_jpg, jl, WC_IMAGE_E_CORRUPT},
        {"garbled JPEG scan", garbled_jpg, jl, WC_IMAGE_E_CORRUPT},
        {"JPEG bomb 65000^2", bomb_jpg, jl, WC_IMAGE_E_PIXELS},
        {"PNG bomb 50000^2", dup_bytes(bomb_png, sizeof bomb_png), sizeof bomb_png,
         WC_IMAGE_E_PIXELS},
        {"PNG bomb, IHDR only", dup_bytes(bomb_png, 33), 33, WC_IMAGE_E_PIXELS},
        {"WebP bomb 16000^2", dup_bytes(bomb_webp, sizeof bomb_webp), sizeof bomb_webp,
         WC_IMAGE_E_PIXELS},
        {"PNG bad CRC", dup_bytes(bad_crc_png, sizeof bad_crc_png), sizeof bad_crc_png,
         WC_IMAGE_E_CORRUPT},
        {"HTML page", dup_bytes(html, sizeof html - 1), sizeof html - 1, WC_IMAGE_E_HTML},
        {"SVG", dup_bytes(svg, sizeof svg - 1), sizeof svg - 1, WC_IMAGE_E_SVG},
        {"GIF", dup_bytes(gif, sizeof gif - 1), sizeof gif - 1, WC_IMAGE_E_UNSUPPORTED},
        {"junk", dup_bytes(junk, sizeof junk - 1), sizeof junk - 1, WC_IMAGE_E_UNSUPPORTED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        expect_refused(&cases[i]);
        free(cases[i].data);
    }
    free(jpg);
}

/* Random single-byte damage anywhere in small real files: every outcome is
 * a JPEG under budget or a defined code, never a crash (ASan watches). */
static void test_damage_never_crashes(void **state)
{
    (void)state;
    unsigned char *rgb = make_rgb(96, 64, true);
    size_t jl;
    unsigned char *jpg = jpeg_of(rgb, 96, 64, TJPF_RGB, TJSAMP_420, 90, &jl);
    uint8_t *webp = NULL;
    size_t wl = WebPEncodeRGB(rgb, 96, 64, 96 * 3, 80, &webp);
    free(rgb);
    const unsigned char *files[] = {jpg, webp};
    size_t lens[] = {jl, wl};
    uint32_t seed = 99;
    int refused = 0, accepted = 0;
    for (int f = 0; f < 2; f++)
        for (int round = 0; round < 150; round++) {
            unsigned char *d = dup_bytes(files[f], lens[f]);
            for (int k = 0; k < 3; k++) {
                seed = seed * 1103515245u + 12345u;
                d[(seed >> 8) % lens[f]] ^= (unsigned char)(1u << ((seed >> 4) % 8));
            }
            wc_image_out out;
            const char *code = NULL;
            char why[200];
            if (wc_image_prepare(d, lens[f], NULL, &out, &code, why, sizeof why) == 0) {
                assert_true(out.len <= WC_IMAGE_MAX_BYTES_DEFAULT);
                accepted++;
            } else {
                assert_non_null(code);
                assert_true(strncmp(code, "image_", 6) == 0);
                refused++;
            }
            wc_image_out_free(&out);
            free(d);
        }
    printf("# damaged files: %d accepted, %d refused\n", accepted, refused);
    assert_true(refused > 0);
    free(jpg);
    WebPFree(webp);
}

static void test_sniff(void **state)
{
    (void)state;
    assert_int_equal(wc_image_sniff("\xFF\xD8\xFF\xE0", 4), WC_IMAGE_JPEG);
    assert_int_equal(wc_image_sniff("\x89PNG\r\n\x1a\n", 8), WC_IMAGE_PNG);
    assert_int_equal(wc_image_sniff("RIFF\0\0\0\0WEBPVP8 ", 16), WC_IMAGE_WEBP);
    assert_int_equal(wc_image_sniff("  \n<html>", 9), WC_IMAGE_HTML);
    assert_int_equal(wc_image_sniff("\xEF\xBB\xBF<svg>", 8), WC_IMAGE_SVG);
    assert_int_equal(wc_image_sniff("MM\0*", 4), WC_IMAGE_TIFF);
    assert_int_equal(wc_image_sniff("\xFF\xD8", 2), WC_IMAGE_UNKNOWN);
    /* Little-endian EXIF (the unit tests above write big-endian). */
    unsigned char le[] = {0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x22, 'E',  'x',  'i',  'f',
                          0,    0,    'I',  'I',  0x2A, 0x00, 0x08, 0x00, 0x00, 0x00,
                          0x01, 0x00, 0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00,
                          0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xDA};
    assert_int_equal(wc_image_jpeg_orientation(le, sizeof le), 8);
    /* EXIF parsing stops at the data's end, whatever the segment says. */
    unsigned char cut[] = {0xFF, 0xD8, 0xFF, 0xE1, 0x7F, 0xFF, 'E', 'x', 'i', 'f', 0, 0, 'M', 'M'};
    assert_int_equal(wc_image_jpeg_orientation(cut, sizeof cut), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sniff),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_damage_never_crashes),
        cmocka_unit_test(test_big_jpeg),
        cmocka_unit_test(test_settings_kept),
        cmocka_unit_test(test_png_alpha),
        cmocka_unit_test(test_webp),
        cmocka_unit_test(test_exif_orientation),
        cmocka_unit_test(test_grayscale),
        cmocka_unit_test(test_cmyk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
