/* What the fuzz targets share: FUZZ_ASSERT, which reports a broken property
 * with the condition and a message and aborts, so libFuzzer (or the replay
 * driver under ASan) stops on it like on a crash and keeps the input. */
#ifndef WC_FUZZ_CHECK_H
#define WC_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define FUZZ_ASSERT(cond, ...)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property broken: %s: ", __FILE__, __LINE__, #cond);            \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
