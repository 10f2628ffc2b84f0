/* Fuzzes image preparation (wc_image_prepare, and wc_image_decode on the same
 * bytes): the whole decode path for untrusted JPEG, PNG and WebP, with small
 * limits so each input is quick. Properties:
 *   - success gives a JPEG (magic bytes) within the byte budget, no side over
 *     the limit, that TurboJPEG decodes again at its stated size;
 *   - failure gives one of the documented image_* codes;
 *   - decode and prepare agree on whether the picture is readable, except
 *     that prepare may still miss the budget;
 *   - nothing over the pixel limit is ever decoded (the limit is small here,
 *     so a header asking for more must be refused, not allocated).
 * Seeds (corpus/image/seed-*) are small files of every kind made by
 * ImageMagick: baseline, progressive, grayscale, CMYK and EXIF-rotated
 * JPEG; RGBA, palette, 16-bit and gray PNG; lossy, lossless and alpha WebP.
 * fuzz-max-len: 16384 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <turbojpeg.h>

#include "check.h"
#include "wc_image.h"

#define FUZZ_MAX_PIXELS (1024 * 1024)
#define FUZZ_MAX_SIDE 256
#define FUZZ_MAX_BYTES (24 * 1024)

static const char *const codes[] = {
    WC_IMAGE_E_EMPTY,  WC_IMAGE_E_UNSUPPORTED, WC_IMAGE_E_SVG,
    WC_IMAGE_E_HTML,   WC_IMAGE_E_CORRUPT,     WC_IMAGE_E_TRUNCATED,
    WC_IMAGE_E_PIXELS, WC_IMAGE_E_BUDGET,      WC_IMAGE_E_NOMEM,
};

static void check_code(const char *code)
{
    FUZZ_ASSERT(code != NULL, "failure without a code");
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        if (strcmp(code, codes[i]) == 0)
            return;
    FUZZ_ASSERT(0, "undocumented code %s", code);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    wc_image_opts o = {
        .max_side = FUZZ_MAX_SIDE, .max_bytes = FUZZ_MAX_BYTES, .max_pixels = FUZZ_MAX_PIXELS};
    wc_image_out out;
    const char *code = NULL;
    char why[256];
    int rc = wc_image_prepare(data, size, &o, &out, &code, why, sizeof why);
    if (rc == 0) {
        FUZZ_ASSERT(out.len > 0 && out.len <= FUZZ_MAX_BYTES, "result of %zu bytes", out.len);
        FUZZ_ASSERT(out.width <= FUZZ_MAX_SIDE && out.height <= FUZZ_MAX_SIDE, "%dx%d", out.width,
                    out.height);
        FUZZ_ASSERT((uint64_t)out.in_width * (uint64_t)out.in_height <= FUZZ_MAX_PIXELS,
                    "decoded %dx%d over the limit", out.in_width, out.in_height);
        FUZZ_ASSERT(wc_image_sniff(out.jpeg, out.len) == WC_IMAGE_JPEG, "not a JPEG");
        tjhandle tj = tjInitDecompress();
        int w, h, sub, cs;
        FUZZ_ASSERT(tjDecompressHeader3(tj, out.jpeg, out.len, &w, &h, &sub, &cs) == 0,
                    "result unreadable");
        FUZZ_ASSERT(w == out.width && h == out.height, "result %dx%d, said %dx%d", w, h, out.width,
                    out.height);
        tjDestroy(tj);
        wc_image_out_free(&out);
    } else {
        check_code(code);
        FUZZ_ASSERT(out.jpeg == NULL, "failure left a result");
    }
    unsigned char *rgb = NULL;
    int w = 0, h = 0;
    const char *dcode = NULL;
    int drc = wc_image_decode(data, size, FUZZ_MAX_PIXELS, &rgb, &w, &h, &dcode, why, sizeof why);
    if (drc == 0) {
        FUZZ_ASSERT(rgb && w > 0 && h > 0 && (uint64_t)w * h <= FUZZ_MAX_PIXELS, "%dx%d", w, h);
        /* Touch every byte: the buffer is as large as it says. */
        unsigned sum = 0;
        for (size_t i = 0; i < (size_t)w * h * 3; i++)
            sum += rgb[i];
        (void)sum;
        free(rgb);
        FUZZ_ASSERT(rc == 0 || strcmp(code, WC_IMAGE_E_BUDGET) == 0 ||
                        strcmp(code, WC_IMAGE_E_NOMEM) == 0,
                    "decode accepted what prepare refused as %s", code);
    } else {
        check_code(dcode);
        FUZZ_ASSERT(rc != 0, "prepare accepted what decode refused as %s", dcode);
    }
    return 0;
}
