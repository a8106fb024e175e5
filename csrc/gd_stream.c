/*
 * gd_stream.c: the bandwidth probe of the benchmark roofline.
 *
 * Moves the same bytes as an optimizer step with no arithmetic to speak of:
 * per element it reads `nread` arrays and writes their sum to `nwrite` of
 * them (the adds are free next to the memory traffic).  It runs through the
 * same gd_run (threading, work split) and the same instruction-set dispatch
 * as the kernels, so "fraction of the probe" is a fair roofline.
 */
#include "gd_internal.h"

#include <string.h>

typedef struct stream_options {
    int nread, nwrite;  /* buffer.param, .grad, .state[0..2] in that order */
    int dtype;
} stream_options;

#define GD_STREAM_SPAN(T, NAME)                                                 \
    GD_CLONES static void NAME(const void *opt, const gd_buffer *b,             \
                               int64_t begin, int64_t end)                      \
    {                                                                           \
        const stream_options *o = (const stream_options *)opt;                 \
        T *a[5] = {(T *)b->param, (T *)b->grad, (T *)b->state[0],              \
                   (T *)b->state[1], (T *)b->state[2]};                        \
        T *restrict r0 = a[0], *restrict r1 = a[1], *restrict r2 = a[2],        \
                  *restrict r3 = a[3];                                          \
        /* Written arrays are those among 0, 2, 3, 4 (grad is read-only). */    \
        if (o->nread == 4 && o->nwrite == 3) {                                  \
            T *restrict w2 = a[2], *restrict w3 = a[3];                         \
            for (int64_t i = begin; i < end; ++i) {                             \
                T s = r0[i] + r1[i] + w2[i] + w3[i];                            \
                r0[i] = s; w2[i] = s; w3[i] = s;                                \
            }                                                                   \
        } else if (o->nread == 3 && o->nwrite == 2) {                           \
            for (int64_t i = begin; i < end; ++i) {                             \
                T s = r0[i] + r1[i] + r2[i];                                    \
                r0[i] = s; r2[i] = s;                                           \
            }                                                                   \
        } else if (o->nread == 2 && o->nwrite == 1) {                           \
            for (int64_t i = begin; i < end; ++i)                               \
                r0[i] = r0[i] + r1[i];                                          \
        } else { /* 5 reads (p, g, three states), 4 writes */                  \
            T *restrict r4 = a[4];                                              \
            for (int64_t i = begin; i < end; ++i) {                             \
                T s = r0[i] + r1[i] + r2[i] + r3[i] + r4[i];                    \
                r0[i] = s; r2[i] = s; r3[i] = s; r4[i] = s;                     \
            }                                                                   \
        }                                                                       \
    }

GD_STREAM_SPAN(float, stream_span_f32)
GD_STREAM_SPAN(double, stream_span_f64)
GD_STREAM_SPAN(uint16_t, stream_span_16)

void gd_stream(gd_dtype dtype, int nread, int nwrite, const gd_buffer *buffers,
               int64_t count)
{
    stream_options o = {nread, nwrite, dtype};
    gd_run(dtype == GD_FLOAT32   ? stream_span_f32
           : dtype == GD_FLOAT64 ? stream_span_f64
                                 : stream_span_16, /* bfloat16, float16: 2 bytes */
           &o, buffers, count);
}
