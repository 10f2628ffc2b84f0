/* Image preparation (see wc_image.h): decode with the format's own library,
 * bounded by the header's pixel count, orient, downscale, re-encode to a
 * byte budget. Touches nothing but memory. */
#include "wc_image.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <png.h>
#include <turbojpeg.h>
#include <webp/decode.h>

#define QUALITY_MAX_DEFAULT 90
#define QUALITY_MIN_DEFAULT 40
/* When even the lowest quality does not fit, the image shrinks by this much
 * and the search runs again, at most this many times. */
#define SHRINK_FACTOR 0.75
#define SHRINK_TRIES 4
#define LANCZOS_A 3.0

static int fail(const char **code, char *why, size_t whylen, const char *c, const char *fmt,
                const char *detail)
{
    *code = c;
    if (why && whylen)
        snprintf(why, whylen, fmt, detail ? detail : "");
    return -1;
}

wc_image_type wc_image_sniff(const void *data, size_t len)
{
    const unsigned char *p = data;
    if (len >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF)
        return WC_IMAGE_JPEG;
    if (len >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0)
        return WC_IMAGE_PNG;
    if (len >= 12 && memcmp(p, "RIFF", 4) == 0 && memcmp(p + 8, "WEBP", 4) == 0)
        return WC_IMAGE_WEBP;
    if (len >= 4 && memcmp(p, "GIF8", 4) == 0)
        return WC_IMAGE_GIF;
    if (len >= 2 && p[0] == 'B' && p[1] == 'M')
        return WC_IMAGE_BMP;
    if (len >= 4 && (memcmp(p, "II*\0", 4) == 0 || memcmp(p, "MM\0*", 4) == 0))
        return WC_IMAGE_TIFF;
    /* Markup: after a UTF-8 byte order mark and white space, a '<'. SVG when
     * an <svg element shows up early, otherwise a web page (an error page
     * served as image/jpeg is the usual case). */
    size_t i = 0;
    if (len >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF)
        i = 3;
    while (i < len && isspace(p[i]))
        i++;
    if (i < len && p[i] == '<') {
        size_t end = len < i + 4096 ? len : i + 4096;
        for (size_t j = i; j + 4 <= end; j++)
            if (p[j] == '<' && strncasecmp((const char *)p + j, "<svg", 4) == 0)
                return WC_IMAGE_SVG;
        return WC_IMAGE_HTML;
    }
    return WC_IMAGE_UNKNOWN;
}

const char *wc_image_type_name(wc_image_type t)
{
    static const char *names[] = {"unknown", "jpeg", "png", "webp", "gif",
                                  "bmp",     "tiff", "svg", "html"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static unsigned rd16(const unsigned char *p, bool le)
{
    return le ? (unsigned)p[0] | (unsigned)p[1] << 8 : (unsigned)p[0] << 8 | (unsigned)p[1];
}

static uint32_t rd32(const unsigned char *p, bool le)
{
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Orientation tag (0x0112) of IFD0 in a TIFF block. */
static int tiff_orientation(const unsigned char *t, size_t n)
{
    if (n < 8)
        return 1;
    bool le;
    if (t[0] == 'I' && t[1] == 'I')
        le = true;
    else if (t[0] == 'M' && t[1] == 'M')
        le = false;
    else
        return 1;
    uint32_t ifd = rd32(t + 4, le);
    if (ifd > n || n - ifd < 2)
        return 1;
    unsigned count = rd16(t + ifd, le);
    for (unsigned k = 0; k < count; k++) {
        size_t e = (size_t)ifd + 2 + (size_t)k * 12;
        if (e + 12 > n)
            return 1;
        if (rd16(t + e, le) == 0x0112) {
            unsigned type = rd16(t + e + 2, le);
            unsigned v = type == 3 ? rd16(t + e + 8, le) : 1; /* SHORT */
            return v >= 1 && v <= 8 ? (int)v : 1;
        }
    }
    return 1;
}

int wc_image_jpeg_orientation(const void *data, size_t len)
{
    const unsigned char *p = data;
    if (len < 4 || p[0] != 0xFF || p[1] != 0xD8)
        return 1;
    size_t i = 2;
    /* Walk the marker segments up to the start of scan. */
    while (i + 4 <= len) {
        if (p[i] != 0xFF)
            return 1;
        unsigned marker = p[i + 1];
        if (marker == 0xFF) { /* fill byte */
            i++;
            continue;
        }
        if (marker == 0xDA || marker == 0xD9)
            return 1;
        size_t seg = rd16(p + i + 2, false);
        if (seg < 2 || seg > len - i - 2)
            return 1;
        const unsigned char *body = p + i + 4;
        size_t blen = seg - 2;
        if (marker == 0xE1 && blen >= 6 && memcmp(body, "Exif\0\0", 6) == 0)
            return tiff_orientation(body + 6, blen - 6);
        i += 2 + seg;
    }
    return 1;
}

static bool pixels_ok(int w, int h, uint64_t max_pixels)
{
    return w > 0 && h > 0 && (uint64_t)w * (uint64_t)h <= max_pixels;
}

static int too_many(const char **code, char *why, size_t whylen, int w, int h, uint64_t max)
{
    char d[96];
    snprintf(d, sizeof d, "%d x %d pixels, more than the limit of %llu", w, h,
             (unsigned long long)max);
    return fail(code, why, whylen, WC_IMAGE_E_PIXELS, "image header claims %s", d);
}

/* JPEG: the TurboJPEG API. target_side > 0 lets the decoder's DCT scaling
 * shrink the image while its longest side stays >= target_side. */
static int decode_jpeg(const unsigned char *data, size_t len, uint64_t max_pixels, int target_side,
                       unsigned char **rgb, int *width, int *height, bool *gray, const char **code,
                       char *why, size_t whylen)
{
    tjhandle tj = tjInitDecompress();
    if (!tj)
        return fail(code, why, whylen, WC_IMAGE_E_NOMEM, "could not start the JPEG decoder%s",
                    NULL);
    int rc = -1, w, h, subsamp, cs;
    unsigned char *buf = NULL;
    if (tjDecompressHeader3(tj, data, (unsigned long)len, &w, &h, &subsamp, &cs) < 0) {
        fail(code, why, whylen, WC_IMAGE_E_CORRUPT, "JPEG header unreadable: %s",
             tjGetErrorStr2(tj));
        goto end;
    }
    if (!pixels_ok(w, h, max_pixels)) {
        too_many(code, why, whylen, w, h, max_pixels);
        goto end;
    }
    int sw = w, sh = h;
    if (target_side > 0) {
        int n = 0;
        tjscalingfactor *f = tjGetScalingFactors(&n);
        int longest = w > h ? w : h;
        for (int k = 0; f && k < n; k++) {
            int lw = TJSCALED(longest, f[k]);
            if (f[k].num <= f[k].denom && lw >= target_side && TJSCALED(w, f[k]) < sw) {
                sw = TJSCALED(w, f[k]);
                sh = TJSCALED(h, f[k]);
            }
        }
    }
    bool cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    int pf = cmyk ? TJPF_CMYK : TJPF_RGB;
    int ps = tjPixelSize[pf];
    buf = malloc((size_t)sw * (size_t)sh * (size_t)ps);
    if (!buf) {
        fail(code, why, whylen, WC_IMAGE_E_NOMEM, "no memory for the JPEG pixels%s", NULL);
        goto end;
    }
    if (tjDecompress2(tj, data, (unsigned long)len, buf, sw, 0, sh, pf,
                      TJFLAG_LIMITSCANS | TJFLAG_ACCURATEDCT) < 0) {
        const char *msg = tjGetErrorStr2(tj);
        bool warning = tjGetErrorCode(tj) == TJERR_WARNING;
        if (strstr(msg, "Premature end of JPEG file")) {
            fail(code, why, whylen, WC_IMAGE_E_TRUNCATED, "JPEG data ends early: %s", msg);
            goto end;
        }
        /* A damaged scan decodes with a warning into a smeared picture: not
         * something to send to every recipient. Bytes between segments
         * ("extraneous bytes before marker") are harmless and common. */
        if (!warning || !strstr(msg, "extraneous bytes")) {
            fail(code, why, whylen, WC_IMAGE_E_CORRUPT, "JPEG data refused: %s", msg);
            goto end;
        }
    }
    if (cmyk) {
        /* Adobe's inverted CMYK, as Photoshop writes it: the stored values
         * are 255 - ink, so R = C * K / 255. */
        size_t n = (size_t)sw * (size_t)sh;
        for (size_t k = 0; k < n; k++) {
            unsigned c = buf[4 * k], m = buf[4 * k + 1], y = buf[4 * k + 2], kk = buf[4 * k + 3];
            buf[3 * k] = (unsigned char)((c * kk + 127) / 255);
            buf[3 * k + 1] = (unsigned char)((m * kk + 127) / 255);
            buf[3 * k + 2] = (unsigned char)((y * kk + 127) / 255);
        }
    }
    *gray = cs == TJCS_GRAY;
    *rgb = buf;
    buf = NULL;
    *width = sw;
    *height = sh;
    rc = 0;
end:
    free(buf);
    tjDestroy(tj);
    return rc;
}

/* RGBA (packed) to RGB in place, composed over white. */
static void flatten_on_white(unsigned char *px, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        unsigned a = px[4 * k + 3];
        for (int c = 0; c < 3; c++)
            px[3 * k + c] = (unsigned char)((px[4 * k + c] * a + 255 * (255 - a) + 127) / 255);
    }
}

static int decode_png(const unsigned char *data, size_t len, uint64_t max_pixels,
                      unsigned char **rgb, int *width, int *height, bool *gray, const char **code,
                      char *why, size_t whylen)
{
    /* The dimensions straight from IHDR, before libpng reads on to the first
     * IDAT: a bomb is refused as one even when nothing follows its header. */
    if (len >= 24 && memcmp(data + 12, "IHDR", 4) == 0) {
        uint32_t hw = rd32(data + 16, false), hh = rd32(data + 20, false);
        if (hw > 0 && hh > 0 && (uint64_t)hw * hh > max_pixels)
            return too_many(code, why, whylen, hw > INT32_MAX ? INT32_MAX : (int)hw,
                            hh > INT32_MAX ? INT32_MAX : (int)hh, max_pixels);
    }
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&img, data, len)) {
        fail(code, why, whylen, WC_IMAGE_E_CORRUPT, "PNG header refused: %s", img.message);
        png_image_free(&img);
        return -1;
    }
    if (img.width > INT32_MAX || img.height > INT32_MAX ||
        !pixels_ok((int)img.width, (int)img.height, max_pixels)) {
        int w = img.width > INT32_MAX ? INT32_MAX : (int)img.width;
        int h = img.height > INT32_MAX ? INT32_MAX : (int)img.height;
        png_image_free(&img);
        return too_many(code, why, whylen, w, h, max_pixels);
    }
    *gray = !(img.format & PNG_FORMAT_FLAG_COLOR);
    img.format = PNG_FORMAT_RGBA;
    size_t n = (size_t)img.width * img.height;
    unsigned char *buf = malloc(n * 4);
    if (!buf) {
        png_image_free(&img);
        return fail(code, why, whylen, WC_IMAGE_E_NOMEM, "no memory for the PNG pixels%s", NULL);
    }
    if (!png_image_finish_read(&img, NULL, buf, 0, NULL)) {
        const char *c = strstr(img.message, "EOF") || strstr(img.message, "Not enough") ||
                                strstr(img.message, "end of")
                            ? WC_IMAGE_E_TRUNCATED
                            : WC_IMAGE_E_CORRUPT;
        fail(code, why, whylen, c, "PNG data refused: %s", img.message);
        free(buf);
        png_image_free(&img);
        return -1;
    }
    flatten_on_white(buf, n);
    unsigned char *shrunk = realloc(buf, n * 3);
    *rgb = shrunk ? shrunk : buf;
    *width = (int)img.width;
    *height = (int)img.height;
    png_image_free(&img);
    return 0;
}

static int decode_webp(const unsigned char *data, size_t len, uint64_t max_pixels,
                       unsigned char **rgb, int *width, int *height, bool *gray, const char **code,
                       char *why, size_t whylen)
{
    WebPBitstreamFeatures f;
    VP8StatusCode st = WebPGetFeatures(data, len, &f);
    if (st == VP8_STATUS_NOT_ENOUGH_DATA)
        return fail(code, why, whylen, WC_IMAGE_E_TRUNCATED, "WebP header incomplete%s", NULL);
    if (st != VP8_STATUS_OK)
        return fail(code, why, whylen, WC_IMAGE_E_CORRUPT, "WebP header refused%s", NULL);
    if (f.has_animation)
        return fail(code, why, whylen, WC_IMAGE_E_UNSUPPORTED, "animated WebP is not supported%s",
                    NULL);
    if (!pixels_ok(f.width, f.height, max_pixels))
        return too_many(code, why, whylen, f.width, f.height, max_pixels);
    size_t n = (size_t)f.width * (size_t)f.height;
    unsigned char *buf = malloc(n * 4);
    if (!buf)
        return fail(code, why, whylen, WC_IMAGE_E_NOMEM, "no memory for the WebP pixels%s", NULL);
    if (!WebPDecodeRGBAInto(data, len, buf, n * 4, f.width * 4)) {
        free(buf);
        /* Features were readable, so a failure here is the bitstream:
         * incomplete when the data was cut, corrupt otherwise. */
        WebPDecoderConfig cfg;
        const char *c = WC_IMAGE_E_CORRUPT;
        if (WebPInitDecoderConfig(&cfg)) {
            cfg.output.colorspace = MODE_RGBA;
            cfg.options.use_scaling = 1;
            cfg.options.scaled_width = 1;
            cfg.options.scaled_height = 1;
            if (WebPDecode(data, len, &cfg) == VP8_STATUS_NOT_ENOUGH_DATA)
                c = WC_IMAGE_E_TRUNCATED;
            WebPFreeDecBuffer(&cfg.output);
        }
        return fail(code, why, whylen, c, "WebP data refused%s", NULL);
    }
    flatten_on_white(buf, n);
    unsigned char *shrunk = realloc(buf, n * 3);
    *rgb = shrunk ? shrunk : buf;
    *width = f.width;
    *height = f.height;
    *gray = false;
    return 0;
}

/* The upright image for an EXIF orientation; NULL when out of memory. */
static unsigned char *orient(const unsigned char *src, int w, int h, int o, int *ow, int *oh)
{
    bool swap = o >= 5;
    int dw = swap ? h : w, dh = swap ? w : h;
    unsigned char *dst = malloc((size_t)dw * (size_t)dh * 3);
    if (!dst)
        return NULL;
    for (int y = 0; y < dh; y++)
        for (int x = 0; x < dw; x++) {
            int sx, sy;
            switch (o) {
            case 2:
                sx = w - 1 - x, sy = y;
                break;
            case 3:
                sx = w - 1 - x, sy = h - 1 - y;
                break;
            case 4:
                sx = x, sy = h - 1 - y;
                break;
            case 5:
                sx = y, sy = x;
                break;
            case 6:
                sx = y, sy = h - 1 - x;
                break;
            case 7:
                sx = w - 1 - y, sy = h - 1 - x;
                break;
            case 8:
                sx = w - 1 - y, sy = x;
                break;
            default:
                sx = x, sy = y;
                break;
            }
            memcpy(dst + ((size_t)y * dw + x) * 3, src + ((size_t)sy * w + sx) * 3, 3);
        }
    *ow = dw;
    *oh = dh;
    return dst;
}

static int decode_any(const unsigned char *p, size_t len, uint64_t max_pixels, int target_side,
                      unsigned char **rgb, int *w, int *h, bool *gray, int *orientation,
                      wc_image_type *type, const char **code, char *why, size_t whylen)
{
    *orientation = 1;
    if (!p || len == 0)
        return fail(code, why, whylen, WC_IMAGE_E_EMPTY, "no image data%s", NULL);
    wc_image_type t = wc_image_sniff(p, len);
    *type = t;
    int rc;
    switch (t) {
    case WC_IMAGE_JPEG:
        rc = decode_jpeg(p, len, max_pixels, target_side, rgb, w, h, gray, code, why, whylen);
        if (rc == 0)
            *orientation = wc_image_jpeg_orientation(p, len);
        break;
    case WC_IMAGE_PNG:
        rc = decode_png(p, len, max_pixels, rgb, w, h, gray, code, why, whylen);
        break;
    case WC_IMAGE_WEBP:
        rc = decode_webp(p, len, max_pixels, rgb, w, h, gray, code, why, whylen);
        break;
    case WC_IMAGE_SVG:
        return fail(code, why, whylen, WC_IMAGE_E_SVG,
                    "SVG is not accepted: send a JPEG, PNG or WebP%s", NULL);
    case WC_IMAGE_HTML:
        return fail(code, why, whylen, WC_IMAGE_E_HTML,
                    "the data is a web page (HTML), not an image%s", NULL);
    default: {
        char d[64];
        snprintf(d, sizeof d, "%s", wc_image_type_name(t));
        return fail(code, why, whylen, WC_IMAGE_E_UNSUPPORTED,
                    "unsupported image type (%s): send a JPEG, PNG or WebP", d);
    }
    }
    return rc;
}

int wc_image_decode(const void *data, size_t len, uint64_t max_pixels, unsigned char **rgb,
                    int *width, int *height, const char **code, char *why, size_t whylen)
{
    unsigned char *px = NULL;
    int w = 0, h = 0, o;
    bool gray;
    wc_image_type t;
    *rgb = NULL;
    if (decode_any(data, len, max_pixels ? max_pixels : WC_IMAGE_MAX_PIXELS_DEFAULT, 0, &px, &w, &h,
                   &gray, &o, &t, code, why, whylen) < 0)
        return -1;
    if (o != 1) {
        unsigned char *up = orient(px, w, h, o, &w, &h);
        free(px);
        if (!up)
            return fail(code, why, whylen, WC_IMAGE_E_NOMEM, "no memory to orient%s", NULL);
        px = up;
    }
    *rgb = px;
    *width = w;
    *height = h;
    return 0;
}

/* Lanczos-3 weights for one axis: for each output index, the first input
 * index and its weights (normalised to sum 1). The kernel is stretched by
 * the scale when shrinking, so every input pixel contributes. */
typedef struct axis {
    int *first, *count;
    float *weights; /* out * taps */
    int taps;
} axis;

static double lanczos(double x)
{
    if (x == 0)
        return 1;
    if (x <= -LANCZOS_A || x >= LANCZOS_A)
        return 0;
    double px = M_PI * x;
    return LANCZOS_A * sin(px) * sin(px / LANCZOS_A) / (px * px);
}

static void axis_free(axis *a)
{
    free(a->first);
    free(a->count);
    free(a->weights);
}

static int axis_make(axis *a, int in, int out)
{
    double scale = (double)in / out;
    double support = LANCZOS_A * (scale > 1 ? scale : 1);
    double fscale = scale > 1 ? 1 / scale : 1;
    a->taps = (int)ceil(support) * 2 + 1;
    a->first = malloc(sizeof(int) * (size_t)out);
    a->count = malloc(sizeof(int) * (size_t)out);
    a->weights = malloc(sizeof(float) * (size_t)out * (size_t)a->taps);
    if (!a->first || !a->count || !a->weights) {
        axis_free(a);
        return -1;
    }
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale;
        int lo = (int)floor(center - support), hi = (int)ceil(center + support);
        if (lo < 0)
            lo = 0;
        if (hi > in)
            hi = in;
        if (hi - lo > a->taps)
            hi = lo + a->taps;
        double sum = 0;
        float *wt = a->weights + (size_t)o * a->taps;
        for (int i = lo; i < hi; i++) {
            double v = lanczos((i + 0.5 - center) * fscale);
            wt[i - lo] = (float)v;
            sum += v;
        }
        if (sum == 0)
            sum = 1;
        for (int i = lo; i < hi; i++)
            wt[i - lo] = (float)(wt[i - lo] / sum);
        a->first[o] = lo;
        a->count[o] = hi - lo;
    }
    return 0;
}

static unsigned char clamp_px(float v)
{
    return v <= 0 ? 0 : v >= 255 ? 255 : (unsigned char)(v + 0.5f);
}

/* RGB w x h to ow x oh, horizontal pass then vertical. NULL: no memory. */
static unsigned char *resize(const unsigned char *src, int w, int h, int ow, int oh)
{
    axis ax = {0}, ay = {0};
    float *mid = NULL;
    unsigned char *dst = NULL;
    if (axis_make(&ax, w, ow) < 0 || axis_make(&ay, h, oh) < 0)
        goto end;
    mid = malloc(sizeof(float) * (size_t)ow * (size_t)h * 3);
    dst = malloc((size_t)ow * (size_t)oh * 3);
    if (!mid || !dst) {
        free(dst);
        dst = NULL;
        goto end;
    }
    for (int y = 0; y < h; y++) {
        const unsigned char *row = src + (size_t)y * w * 3;
        float *mrow = mid + (size_t)y * ow * 3;
        for (int x = 0; x < ow; x++) {
            const float *wt = ax.weights + (size_t)x * ax.taps;
            const unsigned char *s = row + (size_t)ax.first[x] * 3;
            float r = 0, g = 0, b = 0;
            for (int k = 0; k < ax.count[x]; k++, s += 3) {
                r += wt[k] * s[0];
                g += wt[k] * s[1];
                b += wt[k] * s[2];
            }
            mrow[3 * x] = r, mrow[3 * x + 1] = g, mrow[3 * x + 2] = b;
        }
    }
    size_t stride = (size_t)ow * 3;
    for (int y = 0; y < oh; y++) {
        const float *wt = ay.weights + (size_t)y * ay.taps;
        unsigned char *drow = dst + (size_t)y * stride;
        for (size_t i = 0; i < stride; i++) {
            const float *m = mid + (size_t)ay.first[y] * stride + i;
            float v = 0;
            for (int k = 0; k < ay.count[y]; k++, m += stride)
                v += wt[k] * *m;
            drow[i] = clamp_px(v);
        }
    }
end:
    free(mid);
    axis_free(&ax);
    axis_free(&ay);
    return dst;
}

static int encode(tjhandle tj, const unsigned char *rgb, int w, int h, bool gray, int q,
                  unsigned char **out, unsigned long *len)
{
    *out = NULL;
    *len = 0;
    return tjCompress2(tj, rgb, w, 0, h, TJPF_RGB, out, len, gray ? TJSAMP_GRAY : TJSAMP_420, q,
                       TJFLAG_ACCURATEDCT);
}

/* The highest quality in [qmin, qmax] whose encoding fits budget: 0 with
 * *out set, 1 when even qmin does not fit, -1 on an encoder error. */
static int quality_search(tjhandle tj, const unsigned char *rgb, int w, int h, bool gray,
                          size_t budget, int qmin, int qmax, unsigned char **best,
                          unsigned long *best_len, int *best_q)
{
    int lo = qmin, hi = qmax;
    *best = NULL;
    while (lo <= hi) {
        /* Try the top first: most photos fit at once. */
        int q = *best == NULL && lo == qmin && hi == qmax ? qmax : (lo + hi + 1) / 2;
        unsigned char *j;
        unsigned long n;
        if (encode(tj, rgb, w, h, gray, q, &j, &n) < 0) {
            tjFree(j);
            tjFree(*best);
            *best = NULL;
            return -1;
        }
        if (n <= budget) {
            tjFree(*best);
            *best = j, *best_len = n, *best_q = q;
            lo = q + 1;
        } else {
            tjFree(j);
            hi = q - 1;
        }
    }
    return *best ? 0 : 1;
}

int wc_image_prepare(const void *data, size_t len, const wc_image_opts *opts, wc_image_out *out,
                     const char **code, char *why, size_t whylen)
{
    memset(out, 0, sizeof *out);
    int max_side = opts && opts->max_side > 0 ? opts->max_side : WC_IMAGE_MAX_SIDE_DEFAULT;
    size_t budget = opts && opts->max_bytes ? opts->max_bytes : WC_IMAGE_MAX_BYTES_DEFAULT;
    uint64_t max_pixels = opts && opts->max_pixels ? opts->max_pixels : WC_IMAGE_MAX_PIXELS_DEFAULT;
    int qmax = opts && opts->quality_max > 0 ? opts->quality_max : QUALITY_MAX_DEFAULT;
    int qmin = opts && opts->quality_min > 0 ? opts->quality_min : QUALITY_MIN_DEFAULT;
    if (qmax > 100)
        qmax = 100;
    if (qmin > qmax)
        qmin = qmax;

    unsigned char *px = NULL;
    int w, h, o;
    bool gray = false;
    if (decode_any(data, len, max_pixels, max_side, &px, &w, &h, &gray, &o, &out->in_type, code,
                   why, whylen) < 0)
        return -1;
    if (out->in_type == WC_IMAGE_JPEG) {
        tjhandle t = tjInitDecompress();
        int sub, cs;
        if (t)
            (void)tjDecompressHeader3(t, data, (unsigned long)len, &out->in_width, &out->in_height,
                                      &sub, &cs);
        if (t)
            tjDestroy(t);
    } else {
        out->in_width = w;
        out->in_height = h;
    }
    out->orientation = o;
    int rc = -1;
    tjhandle tj = NULL;
    if (o != 1) {
        unsigned char *up = orient(px, w, h, o, &w, &h);
        free(px);
        px = up;
        if (!px) {
            fail(code, why, whylen, WC_IMAGE_E_NOMEM, "no memory to orient%s", NULL);
            goto end;
        }
    }
    tj = tjInitCompress();
    if (!tj) {
        fail(code, why, whylen, WC_IMAGE_E_NOMEM, "could not start the JPEG encoder%s", NULL);
        goto end;
    }
    int side = max_side;
    for (int attempt = 0; attempt <= SHRINK_TRIES; attempt++) {
        int longest = w > h ? w : h;
        if (longest > side) {
            /* Rounded: 3000 x 2000 at 1600 is 1600 x 1067. */
            int ow = (int)(((int64_t)w * side + longest / 2) / longest);
            int oh = (int)(((int64_t)h * side + longest / 2) / longest);
            ow = ow < 1 ? 1 : ow;
            oh = oh < 1 ? 1 : oh;
            unsigned char *small = resize(px, w, h, ow, oh);
            if (!small) {
                fail(code, why, whylen, WC_IMAGE_E_NOMEM, "no memory to resize%s", NULL);
                goto end;
            }
            free(px);
            px = small, w = ow, h = oh;
        }
        unsigned char *j;
        unsigned long n;
        int q;
        int s = quality_search(tj, px, w, h, gray, budget, qmin, qmax, &j, &n, &q);
        if (s < 0) {
            fail(code, why, whylen, WC_IMAGE_E_CORRUPT, "JPEG encoder failed: %s",
                 tjGetErrorStr2(tj));
            goto end;
        }
        if (s == 0) {
            out->jpeg = malloc(n);
            if (!out->jpeg) {
                tjFree(j);
                fail(code, why, whylen, WC_IMAGE_E_NOMEM, "no memory for the result%s", NULL);
                goto end;
            }
            memcpy(out->jpeg, j, n);
            tjFree(j);
            out->len = n;
            out->width = w;
            out->height = h;
            out->quality = q;
            rc = 0;
            goto end;
        }
        side = (int)((w > h ? w : h) * SHRINK_FACTOR);
        if (side < 1)
            break;
    }
    {
        char d[64];
        snprintf(d, sizeof d, "%zu bytes", budget);
        fail(code, why, whylen, WC_IMAGE_E_BUDGET, "no JPEG of this image fits in %s", d);
    }
end:
    if (tj)
        tjDestroy(tj);
    free(px);
    return rc;
}

void wc_image_out_free(wc_image_out *out)
{
    if (!out)
        return;
    free(out->jpeg);
    out->jpeg = NULL;
    out->len = 0;
}
