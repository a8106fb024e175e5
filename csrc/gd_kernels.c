/*
 * gd_kernels.c: instantiates gd_optimizers.inc for float32 and float64 and
 * exports the dtype-dispatching entry points declared in gdcore.h.
 * Compiled with -O3 -fno-math-errno (sqrt vectorises) and -ffp-contract=off
 * (no FMA contraction, so every code path of a loop rounds alike and results
 * are bitwise independent of thread count and instruction set).
 */
#include "gd_internal.h"

#include <math.h>
#include <stddef.h>

#define T float
#define GD_NAME(x) x##_f32
#define GD_SQRT sqrtf
#include "gd_optimizers.inc"
#undef T
#undef GD_NAME
#undef GD_SQRT

#define T double
#define GD_NAME(x) x##_f64
#define GD_SQRT sqrt
#include "gd_optimizers.inc"
#undef T
#undef GD_NAME
#undef GD_SQRT

#define GD_DTYPE_DISPATCH(opt)                                                \
    void gd_##opt(gd_dtype dtype, const gd_##opt##_options *options,          \
                  const gd_buffer *buffers, int64_t count)                    \
    {                                                                         \
        if (dtype == GD_FLOAT32)                                              \
            opt##_f32(options, buffers, count);                               \
        else                                                                  \
            opt##_f64(options, buffers, count);                               \
    }
GD_DTYPE_DISPATCH(sgd)
GD_DTYPE_DISPATCH(adagrad)
GD_DTYPE_DISPATCH(rmsprop)
GD_DTYPE_DISPATCH(adam)
