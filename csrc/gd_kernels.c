/*
 * gd_kernels.c: instantiates gd_optimizers.inc for each element type and
 * instruction set, and exports the entry points declared in gdcore.h.
 *
 * Design note.  On x86-64 with GCC >= 12 or Clang >= 14 every kernel exists
 * three times per element type (GD_ISA_* in gd_internal.h):
 *   - x86-64-v4: explicit 64-byte packs (gd_avx512.h), masked tails, and the
 *     square roots split between the sqrt unit and the FMA units;
 *   - x86-64-v3 and baseline: the same body with one element per pack,
 *     auto-vectorised by GCC for AVX2+FMA and for SSE2 respectively.
 * gd_isa_level() (gd_runtime.c) picks one per process from the CPU, or
 * lower when GDCORE_ISA asks.  Elsewhere only the baseline build exists.
 * bfloat16 and float16 params have no kernels of their own: gd_staged.inc
 * runs the float32 span of any optimizer over blocks widened from 16 bits
 * and narrows the results with the call's rounding (gd_half.h), once per
 * instruction set, so the math of an optimizer still exists once.
 * Compiled with -O3 -fno-math-errno (sqrt vectorises) and -ffp-contract=off
 * (no FMA contraction: a given element is computed by the same roundings on
 * every path of an instruction set, so results are bitwise independent of the
 * thread count; across instruction sets they agree within the Newton root's
 * one ulp).
 */
#include "gd_internal.h"
#include "gd_half.h"

#include <float.h>
#include <math.h>
#include <stddef.h>

/* ------------------------------------- one element per pack (scalar body) */
#include "gd_scalar.h"

#define T float
#define GD_SQRT(x) sqrtf(x)
#define GD_ABS(x) fabsf(x)
#define GD_TARGET
#define GD_NAME(x) x##_f32_base
#include "gd_optimizers.inc"
#undef GD_NAME
#undef GD_TARGET
#if GD_HAVE_X86_DISPATCH
#define GD_TARGET __attribute__((target("arch=x86-64-v3")))
#define GD_NAME(x) x##_f32_v3
#include "gd_optimizers.inc"
#undef GD_NAME
#undef GD_TARGET
#endif
#undef T
#undef GD_SQRT
#undef GD_ABS

#define T double
#define GD_SQRT(x) sqrt(x)
#define GD_ABS(x) fabs(x)
#define GD_TARGET
#define GD_NAME(x) x##_f64_base
#include "gd_optimizers.inc"
#undef GD_NAME
#undef GD_TARGET
#if GD_HAVE_X86_DISPATCH
#define GD_TARGET __attribute__((target("arch=x86-64-v3")))
#define GD_NAME(x) x##_f64_v3
#include "gd_optimizers.inc"
#undef GD_NAME
#undef GD_TARGET
#endif
#undef T
#undef GD_SQRT
#undef GD_ABS

#undef V
#undef GD_W
#undef GD_MASK_T
#undef GD_FULL
#undef GD_TAIL_MASK
#undef GD_LOAD
#undef GD_STORE
#undef GD_MAX_NAN
#undef GD_GT
#undef GD_LT
#undef GD_EQ
#undef GD_BLEND
#undef GD_SQRT_FAST
#undef GD_SPLIT_PERIOD
#undef GD_SPLIT_FAST

/* ------------------------------------------- AVX-512: 64-byte packs -- */
#if GD_HAVE_X86_DISPATCH
#include "gd_avx512.h"

#define GD_TARGET GD_V4
/* Everything follows from GD_DT (f32, f64) and GD_W (lanes): the pack type
 * and operations gd_<op>_<GD_DT>x<GD_W> of gd_avx512.h, the mask type
 * __mmask<GD_W>, the function suffix _<GD_DT>_v4. */
#define GD_CAT_(a, b) a##b
#define GD_CAT(a, b) GD_CAT_(a, b)
#define GD_SUFFIX GD_CAT(GD_CAT(GD_DT, x), GD_W)
#define GD_OP(op) GD_CAT(GD_CAT(gd_, op), GD_CAT(_, GD_SUFFIX))
#define V GD_CAT(gd_, GD_SUFFIX)
#define GD_NAME(x) GD_CAT(GD_CAT(x##_, GD_DT), _v4)
#define GD_MASK_T GD_CAT(__mmask, GD_W)
#define GD_FULL ((GD_MASK_T)((1u << GD_W) - 1))
#define GD_TAIL_MASK(k) ((GD_MASK_T)((1u << (k)) - 1))
#define GD_LOAD(ptr, mask) GD_OP(load)(ptr, mask)
#define GD_STORE(ptr, value, mask) GD_OP(store)(ptr, value, mask)
#define GD_SQRT(x) GD_OP(sqrt)(x)
#define GD_SQRT_FAST(x) GD_OP(sqrt_newton)(x)
#define GD_MAX_NAN(a, b) GD_OP(max_nan)(a, b)
#define GD_ABS(x) GD_OP(abs)(x)
#define GD_GT(a, b) GD_OP(gt)(a, b)
#define GD_LT(a, b) GD_OP(lt)(a, b)
#define GD_EQ(a, b) GD_OP(eq)(a, b)
#define GD_BLEND(m, a, b) GD_OP(blend)(m, a, b)

/* Which packs take the Newton root (tuning knobs: -DGD_F32_PERIOD=4
 * -DGD_F32_FAST=14 ...).  float64: vsqrtpd costs more than vdivpd, so three
 * packs of every four go Newton. */
#ifndef GD_F32_PERIOD
#define GD_F32_PERIOD 2
#define GD_F32_FAST 2
#endif
#ifndef GD_F64_PERIOD
#define GD_F64_PERIOD 4
#define GD_F64_FAST 14
#endif

#define T float
#define GD_DT f32
#define GD_W 16
#define GD_SPLIT_PERIOD GD_F32_PERIOD
#define GD_SPLIT_FAST GD_F32_FAST
#include "gd_optimizers.inc"
#undef T
#undef GD_DT
#undef GD_W
#undef GD_SPLIT_PERIOD
#undef GD_SPLIT_FAST

#define T double
#define GD_DT f64
#define GD_W 8
#define GD_SPLIT_PERIOD GD_F64_PERIOD
#define GD_SPLIT_FAST GD_F64_FAST
#include "gd_optimizers.inc"
#undef T
#undef GD_DT
#undef GD_W
#undef GD_SPLIT_PERIOD
#undef GD_SPLIT_FAST

#undef GD_CAT_
#undef GD_CAT
#undef GD_SUFFIX
#undef GD_OP
#undef V
#undef GD_NAME
#undef GD_MASK_T
#undef GD_FULL
#undef GD_TAIL_MASK
#undef GD_LOAD
#undef GD_STORE
#undef GD_SQRT
#undef GD_SQRT_FAST
#undef GD_MAX_NAN
#undef GD_ABS
#undef GD_GT
#undef GD_LT
#undef GD_EQ
#undef GD_BLEND
#undef GD_TARGET
#endif /* GD_HAVE_X86_DISPATCH */

/* ------------------------------- 16-bit params: staged float32 blocks -- */
/* gd_staged.inc: any optimizer's float32 span run over blocks of GD_STAGE
 * elements widened from 16 bits (20 KiB of float32 scratch per thread: param,
 * grad and three states, in L1), once per instruction set. */
#ifndef GD_STAGE
#define GD_STAGE 1024
#endif

typedef struct gd_staged {
    gd_span_fn fused;       /* its 16-bit span (gd_kernels16.c), or NULL: */
    gd_span_fn inner;       /* the optimizer's float32 span, this process's ISA */
    const void *options;
    double multiplier;
    gd_format format;
} gd_staged;

#define GD_F16C 0
#define GD_TARGET
#define GD_NAME(x) x##_base
#include "gd_staged.inc"
#undef GD_NAME
#undef GD_TARGET
#undef GD_F16C
#if GD_HAVE_X86_DISPATCH
#include <immintrin.h>
#define GD_F16C 1
#define GD_TARGET __attribute__((target("arch=x86-64-v3")))
#define GD_NAME(x) x##_v3
#include "gd_staged.inc"
#undef GD_NAME
#undef GD_TARGET
#define GD_TARGET __attribute__((target("arch=x86-64-v4")))
#define GD_NAME(x) x##_v4
#include "gd_staged.inc"
#undef GD_NAME
#undef GD_TARGET
#undef GD_F16C
static const gd_span_fn gd_staged_spans[GD_ISA_COUNT] = {staged_span_base, staged_span_v3,
                                                         staged_span_v4, staged_span_v4};
#else
static const gd_span_fn gd_staged_spans[GD_ISA_COUNT] = {staged_span_base, staged_span_base,
                                                         staged_span_base, staged_span_base};
#endif

/* ------------------ 16-bit params: stochastic and Kahan rounding in place --
 * gd_kernels16.c's AVX-512 spans that round the bfloat16 param stochastically
 * or with Kahan compensation where it lies read the element's index, the
 * random key and the compensation from the running thread's
 * gd_inplace_param (gd_avx512_16.h): this span sets it, one run per 2^32
 * elements of the buffer (one key each, as gd_staged.inc), and calls them. */
#if GD_HAVE_X86_DISPATCH
#include "gd_avx512_16.h"

typedef struct gd_inplace {
    gd_span_fn span;        /* the in-place span (gd_spans16)             */
    const void *options;
    uint64_t seed;
} gd_inplace;

static void gd_inplace_span(const void *opt, const gd_buffer *b, int64_t begin, int64_t end)
{
    const gd_inplace *call = (const gd_inplace *)opt;
    gd_inplace_param.origin = (const uint16_t *)b->param;
    gd_inplace_param.compensation = (const uint16_t *)b->compensation;
    for (int64_t at = begin; at < end;) {
        const uint64_t high = (uint64_t)at >> 32;
        const int64_t stop = (int64_t)((high + 1) << 32) < end ? (int64_t)((high + 1) << 32) : end;
        gd_inplace_param.key = gd_stream_key(call->seed, b->stream, b->step, high);
        call->span(call->options, b, at, stop);
        at = stop;
    }
}
#endif

/* ----------------------------------------------------- entry points -- */
#if GD_HAVE_X86_DISPATCH
#define GD_SPANS(opt, dt)                                                     \
    {opt##_span_##dt##_base, opt##_span_##dt##_v3, opt##_span_##dt##_v4,     \
     opt##_span_##dt##_v4}
#else
#define GD_SPANS(opt, dt)                                                     \
    {opt##_span_##dt##_base, opt##_span_##dt##_base, opt##_span_##dt##_base, \
     opt##_span_##dt##_base}
#endif

/* After the elements: the new per-param scalars (kernels that keep some
 * define <kernel>_advance in their body, outside the per-type part). */
#define GD_ADVANCE_0(opt, options, buffers, count)
#define GD_ADVANCE_1(opt, options, buffers, count)                           \
    for (int64_t j = 0; j < (count); ++j)                                     \
        opt##_advance((options), &(buffers)[j]);
#define GD_ADVANCE_2 GD_ADVANCE_1

/* Grads multiplied on the way in (gd_step_scaled): the span of any kernel
 * runs over blocks of GD_SCALE_BYTES (4,096 float32 or 2,048 float64
 * elements) whose grads are first scaled into a stack buffer that stays in
 * L1, so the grads are read once, from memory, and never written.  Blocks
 * start at multiples of GD_SPLIT_ALIGN within the buffer, so every element
 * takes the same path as without scaling. */
#define GD_SCALE_BYTES 16384

typedef struct gd_scaled {
    gd_span_fn inner;
    const void *options;
    double multiplier;
} gd_scaled;

#define GD_SCALED_SPAN(T, suffix)                                              \
    static void gd_scaled_span_##suffix(const void *opt, const gd_buffer *b,  \
                                        int64_t begin, int64_t end)           \
    {                                                                         \
        const gd_scaled *s = (const gd_scaled *)opt;                          \
        enum { GD_SCALE_BLOCK = GD_SCALE_BYTES / sizeof(T) };                 \
        _Alignas(64) T block[GD_SCALE_BLOCK];                                 \
        const T m = (T)s->multiplier;                                         \
        for (int64_t at = begin; at < end; at += GD_SCALE_BLOCK) {            \
            int64_t len = end - at < GD_SCALE_BLOCK ? end - at : GD_SCALE_BLOCK; \
            const T *grad = (const T *)b->grad + at;                          \
            for (int64_t i = 0; i < len; ++i)                                 \
                block[i] = grad[i] * m;                                       \
            gd_buffer part = *b;                                              \
            part.param = (T *)b->param + at;                                  \
            part.grad = block;                                                \
            for (int k = 0; k < 3; ++k)                                       \
                if (b->state[k] != NULL)                                      \
                    part.state[k] = (T *)b->state[k] + at;                    \
            part.n = len;                                                     \
            s->inner(s->options, &part, 0, len);                              \
        }                                                                     \
    }
GD_SCALED_SPAN(float, f32)
GD_SCALED_SPAN(double, f64)

static void gd_run_scaled(gd_span_fn span, gd_dtype dtype, const void *options,
                          double multiplier, const gd_buffer *buffers, int64_t count)
{
    if (multiplier == 1.0) {
        gd_run(span, options, buffers, count);
        return;
    }
    gd_scaled scaled = {span, options, multiplier};
    gd_run(dtype == GD_FLOAT32 ? gd_scaled_span_f32 : gd_scaled_span_f64, &scaled, buffers,
           count);
}

#if GD_HAVE_X86_DISPATCH
#define GD_RUN_IN_PLACE(span_, options_, seed_, buffers_, count_)             \
    do {                                                                      \
        gd_inplace call_ = {(span_), (options_), (seed_)};                    \
        gd_run(gd_inplace_span, &call_, (buffers_), (count_));                \
    } while (0)
#else
#define GD_RUN_IN_PLACE(span_, options_, seed_, buffers_, count_) ((void)0)
#endif

#define GD_ENTRY(opt, index, nscalars)                                         \
    static void gd_##opt##_format(const gd_format *format,                    \
                                  const gd_##opt##_options *options,          \
                                  gd_buffer *buffers, int64_t count,          \
                                  double multiplier)                          \
    {                                                                         \
        static const gd_span_fn spans[2][GD_ISA_COUNT] = {GD_SPANS(opt, f32),            \
                                               GD_SPANS(opt, f64)};           \
        const int isa = gd_isa_level();                                       \
        if (format->param == GD_FLOAT32 || format->param == GD_FLOAT64) {     \
            gd_run_scaled(spans[format->param != GD_FLOAT32][isa], format->param, \
                          options, multiplier, buffers, count);               \
        } else {                                                              \
            /* bfloat16: the fused span, on the param itself when rounding \
             * to nearest; float16, and bfloat16 with a grad multiplier:    \
             * the float32 span of the per-element body (x86-64-v3 on       \
             * AVX-512 CPUs, whose explicit packs take another square      \
             * root), which computes every element as the fused span does  \
             */                                                           \
            const int fused = multiplier == 1.0 && format->param == GD_BFLOAT16; \
            const int state32 = format->state == GD_FLOAT32;                  \
            const gd_span_fn in_place =                                       \
                fused ? gd_spans16[index][GD_INPLACE16 + 2 * (int)format->rounding + \
                                          state32][isa]                       \
                      : NULL;                                                 \
            if (in_place != NULL && format->rounding == GD_ROUND_NEAREST) {   \
                gd_run(in_place, options, buffers, count);                    \
            } else if (in_place != NULL) {                                    \
                GD_RUN_IN_PLACE(in_place, options, format->seed, buffers, count); \
            } else {                                                          \
                gd_staged staged = {fused ? gd_spans16[index][GD_STAGED16 + state32][isa] \
                                          : NULL,                             \
                                    spans[0][isa < 2 ? isa : 1], options, multiplier, \
                                    *format};                                 \
                gd_run(gd_staged_spans[isa], &staged, buffers, count);        \
            }                                                                 \
        }                                                                     \
        GD_ADVANCE_##nscalars(opt, options, buffers, count)                   \
    }                                                                         \
    void gd_##opt(gd_dtype dtype, const gd_##opt##_options *options,          \
                  gd_buffer *buffers, int64_t count)                          \
    {                                                                         \
        gd_step_scaled(index, dtype, (const double *)options, buffers, count, 1.0); \
    }
GD_FAMILY(GD_ENTRY)

/* Whether a format is one the kernels run (gdcore_capi.h), with every
 * buffer's compensation present for Kahan rounding. */
static int gd_format_valid(const gd_format *f, const gd_buffer *buffers, int64_t count)
{
    if (f->param == GD_FLOAT32 || f->param == GD_FLOAT64)
        return f->state == f->param && f->rounding == GD_ROUND_NEAREST;
    if (f->param != GD_BFLOAT16 && f->param != GD_FLOAT16)
        return 0;
    if (f->state != f->param && f->state != GD_FLOAT32)
        return 0;
    if (f->rounding == GD_ROUND_KAHAN) {
        for (int64_t j = 0; j < count; ++j)
            if (buffers[j].n > 0 && buffers[j].compensation == NULL)
                return 0;
        return 1;
    }
    return f->rounding == GD_ROUND_NEAREST || f->rounding == GD_ROUND_STOCHASTIC;
}

#define GD_CASE(opt, index, nscalars)                                          \
    case index:                                                               \
        gd_##opt##_format(format, (const gd_##opt##_options *)options, buffers, count, \
                          grad_multiplier);                                   \
        return 0;
int gd_step_format(int kernel, const gd_format *format, const double *options,
                   gd_buffer *buffers, int64_t count, double grad_multiplier)
{
    if (!gd_format_valid(format, buffers, count))
        return -1;
    switch (kernel) { GD_FAMILY(GD_CASE) }
    return -1;
}

int gd_step_scaled(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
                   int64_t count, double grad_multiplier)
{
    gd_format format = {dtype, dtype, GD_ROUND_NEAREST, 0};
    return gd_step_format(kernel, &format, options, buffers, count, grad_multiplier);
}

int gd_step(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
            int64_t count)
{
    return gd_step_scaled(kernel, dtype, options, buffers, count, 1.0);
}

#define GD_NAME_OF(opt, index, nscalars) #opt,
const char *gd_kernel_name(int kernel)
{
    static const char *names[] = {GD_FAMILY(GD_NAME_OF)};
    return kernel >= 0 && kernel < GD_KERNEL_COUNT ? names[kernel] : NULL;
}

#define GD_SIZE_OF(opt, index, nscalars) sizeof(gd_##opt##_options) / sizeof(double),
int gd_kernel_options(int kernel)
{
    static const int sizes[] = {GD_FAMILY(GD_SIZE_OF)};
    return kernel >= 0 && kernel < GD_KERNEL_COUNT ? sizes[kernel] : -1;
}
