/* wacast-image-bench: prepares one image file N times with wc_image_prepare
 * (the scheduler's own code path, default settings unless given) and prints
 * images per second and CPU per image, for bench/image.sh. Usage:
 * wacast-image-bench FILE [N [OUT.jpg]] */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "wc_image.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [N [OUT.jpg]]\n", argv[0]);
        return 2;
    }
    int n = argc > 2 ? atoi(argv[2]) : 10;
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    unsigned char *data = malloc((size_t)len);
    if (!data || fread(data, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "%s: read failed\n", argv[1]);
        return 1;
    }
    fclose(f);
    wc_image_out out = {0};
    double t0 = now_s(), c0 = cpu_s();
    for (int i = 0; i < n; i++) {
        wc_image_out_free(&out);
        const char *code;
        char why[256];
        if (wc_image_prepare(data, (size_t)len, NULL, &out, &code, why, sizeof why) < 0) {
            fprintf(stderr, "%s: %s: %s\n", argv[1], code, why);
            return 1;
        }
    }
    double wall = now_s() - t0, cpu = cpu_s() - c0;
    if (argc > 3) {
        FILE *o = fopen(argv[3], "wb");
        if (!o || fwrite(out.jpeg, 1, out.len, o) != out.len || fclose(o) != 0) {
            perror(argv[3]);
            return 1;
        }
    }
    printf("images=%d wall_s=%.3f cpu_s=%.3f per_s=%.2f cpu_ms_per_image=%.1f in_bytes=%ld "
           "out_bytes=%zu out=%dx%d quality=%d\n",
           n, wall, cpu, n / wall, cpu * 1000 / n, len, out.len, out.width, out.height,
           out.quality);
    wc_image_out_free(&out);
    free(data);
    return 0;
}
