/* Image preparation: untrusted bytes (a JPEG, PNG or WebP from a campaign's
 * media_url or an upload) in, one small JPEG out, ready to be sent to every
 * recipient. Decodes with libjpeg-turbo (TurboJPEG API), libpng (simplified
 * API) or libwebp; applies the JPEG's EXIF orientation; flattens alpha on
 * white; converts CMYK and grayscale to RGB; downscales so the longest side
 * fits (DCT scaling inside the JPEG decoder first, then a separable Lanczos-3
 * filter); re-encodes as baseline JPEG with the highest quality that fits the
 * byte budget.
 *
 * Bounded by construction: the pixel count is read from the header and
 * checked against max_pixels BEFORE any pixel buffer is allocated, so a
 * 50,000 x 50,000 "bomb" costs a header parse. Pure computation on memory:
 * no I/O, no globals, safe to call from any thread.
 *
 * Errors: -1 with a machine-readable code (one of the WC_IMAGE_E_* strings,
 * static) and a human-readable why. */
#ifndef WC_IMAGE_H
#define WC_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WC_IMAGE_MAX_SIDE_DEFAULT 1600
#define WC_IMAGE_MAX_BYTES_DEFAULT (350 * 1024)
#define WC_IMAGE_MAX_PIXELS_DEFAULT 40000000ULL

/* Failure codes (stable: written to campaign rows and metrics labels). */
#define WC_IMAGE_E_EMPTY "image_empty"
#define WC_IMAGE_E_UNSUPPORTED "image_unsupported_type" /* GIF, BMP, TIFF, unknown bytes */
#define WC_IMAGE_E_SVG "image_svg"                      /* SVG is never rasterised */
#define WC_IMAGE_E_HTML "image_is_html"                 /* a web page where an image should be */
#define WC_IMAGE_E_CORRUPT "image_corrupt"              /* the decoder refused the data */
#define WC_IMAGE_E_TRUNCATED "image_truncated"          /* the data ends before the image does */
#define WC_IMAGE_E_PIXELS "image_too_many_pixels"       /* header dimensions over max_pixels */
#define WC_IMAGE_E_BUDGET "image_over_budget"           /* no quality/size fits max_bytes */
#define WC_IMAGE_E_NOMEM "image_out_of_memory"

typedef enum {
    WC_IMAGE_UNKNOWN,
    WC_IMAGE_JPEG,
    WC_IMAGE_PNG,
    WC_IMAGE_WEBP,
    WC_IMAGE_GIF,
    WC_IMAGE_BMP,
    WC_IMAGE_TIFF,
    WC_IMAGE_SVG,
    WC_IMAGE_HTML,
} wc_image_type;

typedef struct wc_image_opts {
    int max_side;        /* longest side of the result; 0: default */
    size_t max_bytes;    /* JPEG size budget; 0: default */
    uint64_t max_pixels; /* refuse headers claiming more; 0: default */
    int quality_max;     /* quality search range; 0: 90 */
    int quality_min;     /* 0: 40 */
} wc_image_opts;

typedef struct wc_image_out {
    unsigned char *jpeg; /* malloc'd; free with wc_image_out_free */
    size_t len;
    int width, height; /* of the result */
    int quality;       /* the quality the search settled on */
    wc_image_type in_type;
    int in_width, in_height; /* as the header said */
    int orientation;         /* EXIF orientation applied (1: none) */
} wc_image_out;

/* What the first bytes say the data is (magic bytes, not a content type). */
wc_image_type wc_image_sniff(const void *data, size_t len);
const char *wc_image_type_name(wc_image_type t);

/* Prepares data into *out (zeroed first). Returns 0, or -1 with *code set
 * (never NULL then) and why filled. */
int wc_image_prepare(const void *data, size_t len, const wc_image_opts *opts, wc_image_out *out,
                     const char **code, char *why, size_t whylen)
    __attribute__((warn_unused_result));
void wc_image_out_free(wc_image_out *out);

/* Just the decode to RGB (8-bit, 3 channels, rows packed, orientation
 * applied, alpha flattened on white), bounded by max_pixels; for tests and
 * the fuzz target. *rgb is malloc'd. */
int wc_image_decode(const void *data, size_t len, uint64_t max_pixels, unsigned char **rgb,
                    int *width, int *height, const char **code, char *why, size_t whylen)
    __attribute__((warn_unused_result));

/* The EXIF orientation (1..8) in a JPEG's APP1 segment; 1 when absent or
 * unreadable. Bounds-checked against len. */
int wc_image_jpeg_orientation(const void *data, size_t len);

#endif
