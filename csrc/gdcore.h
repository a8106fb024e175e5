/*
 * gdcore.h: the C interface of gdcore's optimizer kernels.
 *
 * Every kernel updates, in place, a batch of buffers that share one element
 * type: each gd_buffer names a parameter, its gradient, up to three state
 * buffers (which ones depends on the optimizer) and the 1-based step number
 * that this update is.  All pointers of a buffer must address disjoint
 * memory, except that the gradient may be shared between buffers; the
 * caller (gdcore/_core.pyx) checks that before calling.
 *
 * Kernels never allocate, never fail and never touch Python: they are called
 * with the GIL released.  Each kernel's options struct, like everything
 * else about an optimizer but its element update, is declared in
 * gdcore/family.py.  Hyperparameters arrive as double; per-step scalars
 * (bias corrections, step sizes) are derived in double and cast once to the
 * element type.
 */
#ifndef GDCORE_H
#define GDCORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* gd_dtype and gd_buffer, shared with the embedding interface (the table
 * of function pointers extensions call): gdcore/include/gdcore_capi.h. */
#include "gdcore_capi.h"

/* The options structs (gd_<kernel>_options: every field a double, in the
 * order gdcore/family.py declares them) and GD_FAMILY(X), the list of
 * kernels, are generated from gdcore/family.py.  State slots follow the
 * declaration's state order. */
#include "gd_family.h"

/* One entry point per kernel: gd_sgd, gd_adagrad, ..., each
 *   void gd_<kernel>(gd_dtype dtype, const gd_<kernel>_options *options,
 *                    gd_buffer *buffers, int64_t count);
 * buffers are IN/OUT only through their pointers and scalar[]. */
#define GD_DECLARE_ENTRY(opt, index, nscalars)                                \
    void gd_##opt(gd_dtype dtype, const gd_##opt##_options *options,          \
                  gd_buffer *buffers, int64_t count);
GD_FAMILY(GD_DECLARE_ENTRY)
#undef GD_DECLARE_ENTRY

/* The same, by kernel index (the position in GD_FAMILY) with the options as
 * an array of doubles; returns -1 for an unknown kernel. */
int gd_step(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
            int64_t count);
/* The same with every grad element multiplied by grad_multiplier (in the
 * element type) before the update: the unscaling of mixed-precision training
 * (1 / loss scale) and a clip coefficient, folded into the one pass over the
 * grads, which are read, never written. */
int gd_step_scaled(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
                   int64_t count, double grad_multiplier);
/* Any element types: float32/float64 as above, or 16-bit params (bfloat16,
 * float16) with state in their type or in float32, computed in float32 and
 * rounded as format->rounding says (gdcore_capi.h).  Returns -1 for an
 * unknown kernel, an invalid format, or GD_ROUND_KAHAN with a buffer
 * without compensation. */
int gd_step_format(int kernel, const gd_format *format, const double *options,
                   gd_buffer *buffers, int64_t count, double grad_multiplier);
/* Kernel name and options count by index (NULL / -1 out of range): lets a
 * caller check that it was built against the same declarations. */
const char *gd_kernel_name(int kernel);
int gd_kernel_options(int kernel);

/* Benchmark roofline probe: per element, read `nread` of (param, grad,
 * state[0], state[1], state[2]) and write `nwrite` of (param, state[0..2]);
 * (nread, nwrite) is (2, 1), (3, 2), (4, 3) or (5, 4). */
void gd_stream(gd_dtype dtype, int nread, int nwrite, const gd_buffer *buffers,
               int64_t count);

/* The norm of the grads of a batch (buffer.grad, buffer.n; nothing else is
 * read), in double: norm_type 2 (Euclidean), 1, or 0 for inf (max |x|, NaN
 * if any element is NaN).  One serial pass; the result does not depend on
 * the instruction set. */
double gd_grad_norm(gd_dtype dtype, int norm_type, const gd_buffer *buffers, int64_t count);

/* Threads.  Set/get the number of threads a kernel call may use (the
 * calling thread plus workers of gdcore's pool); in a build without threads
 * it is always 1.  Results do not depend on it, bit for bit. */
void gd_set_num_threads(int n);
int gd_get_num_threads(void);
/* 1 when the thread pool is built in; the microseconds an idle worker spins
 * before it sleeps. */
int gd_threads_enabled(void);
int gd_spin_us(void);
/* Smallest total element count for which a call goes parallel. */
int64_t gd_parallel_threshold(void);

/* The instruction set the kernels run in this process (the best the CPU
 * supports, or lower if the environment variable GDCORE_ISA asks), and the
 * list of builds compiled in. */
const char *gd_isa_selected(void);
const char *gd_isa_compiled(void);

#ifdef __cplusplus
}
#endif
#endif /* GDCORE_H */
