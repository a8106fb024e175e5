/*
 * gd_norm.c: the norm of a batch of grads, for clipping by global norm.
 *
 * Design note.  One pass over every grad of the batch, reading each element
 * once, accumulating in double into GD_NORM_LANES independent lanes (element
 * i of a buffer goes to lane i % GD_NORM_LANES), so the loop vectorises
 * without reassociating anything: the result depends only on the buffers,
 * never on the instruction set, and the lanes are added in a fixed order at
 * the end.  Serial: the pass is memory bound and a clip is one call per step.
 * norm_type 2: sqrt of the sum of squares (each square exact in double for
 * float32 grads); 1: sum of |x|; 0 stands for inf: max |x|, NaN if any
 * element is NaN (as torch.linalg.vector_norm).
 */
#include "gd_internal.h"

#include <math.h>

#define GD_NORM_LANES 16

#define GD_NORM_PASS(T, NAME)                                                   \
    GD_CLONES static void NAME(const T *restrict x, int64_t n, int kind,       \
                               double *restrict acc)                           \
    {                                                                           \
        int64_t full = n - n % GD_NORM_LANES;                                   \
        if (kind == 2) {                                                        \
            for (int64_t i = 0; i < full; i += GD_NORM_LANES)                   \
                for (int l = 0; l < GD_NORM_LANES; ++l) {                       \
                    double v = x[i + l];                                        \
                    acc[l] += v * v;                                            \
                }                                                               \
            for (int64_t i = full; i < n; ++i) {                                \
                double v = x[i];                                                \
                acc[i - full] += v * v;                                         \
            }                                                                   \
        } else if (kind == 1) {                                                 \
            for (int64_t i = 0; i < full; i += GD_NORM_LANES)                   \
                for (int l = 0; l < GD_NORM_LANES; ++l)                         \
                    acc[l] += fabs((double)x[i + l]);                           \
            for (int64_t i = full; i < n; ++i)                                  \
                acc[i - full] += fabs((double)x[i]);                            \
        } else {                                                                \
            for (int64_t i = 0; i < full; i += GD_NORM_LANES)                   \
                for (int l = 0; l < GD_NORM_LANES; ++l) {                       \
                    double v = fabs((double)x[i + l]);                          \
                    acc[l] = (v > acc[l] || v != v) ? v : acc[l];               \
                }                                                               \
            for (int64_t i = full; i < n; ++i) {                                \
                double v = fabs((double)x[i]);                                  \
                acc[i - full] = (v > acc[i - full] || v != v) ? v : acc[i - full]; \
            }                                                                   \
        }                                                                       \
    }

GD_NORM_PASS(float, norm_pass_f32)
GD_NORM_PASS(double, norm_pass_f64)

double gd_grad_norm(gd_dtype dtype, int norm_type, const gd_buffer *buffers, int64_t count)
{
    double acc[GD_NORM_LANES] = {0};
    int kind = norm_type == 1 || norm_type == 2 ? norm_type : 0;
    for (int64_t j = 0; j < count; ++j) {
        if (dtype == GD_FLOAT32)
            norm_pass_f32((const float *)buffers[j].grad, buffers[j].n, kind, acc);
        else
            norm_pass_f64((const double *)buffers[j].grad, buffers[j].n, kind, acc);
    }
    double total = 0;
    for (int l = 0; l < GD_NORM_LANES; ++l) {
        if (kind == 0) {
            if (total == total && (acc[l] > total || acc[l] != acc[l]))
                total = acc[l]; /* NaN, once taken, stays */
        } else {
            total += acc[l];
        }
    }
    return kind == 2 ? sqrt(total) : total;
}
