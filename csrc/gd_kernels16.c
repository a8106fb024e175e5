/*
 * gd_kernels16.c: every optimizer's body (gd_optimizers.inc) instantiated
 * for bfloat16 grads, with state in bfloat16 or in float32, once per
 * instruction set.
 *
 * Design note.  A 16-bit step computes in float32.  The spans here run the
 * optimizer's own body with the grad and state read and written where they
 * are, converted in registers inside the body's vector loop (gd_scalar.h:
 * loads and stores by pointer type), the state narrowed to nearest.  The
 * param is read and written in place too, and rounded in the store (to
 * nearest; on AVX-512 also stochastically or with Kahan compensation);
 * otherwise gd_staged.inc keeps it in a float32 block (widened from 16
 * bits, plus the compensation, and narrowed back with the call's rounding
 * afterwards) that the span updates.
 * A step reads and writes each grad and state element once, with no float32
 * copy in between, and the math of an optimizer still exists once.
 *
 * Only bfloat16 is fused: its conversions are a shift one way and an add,
 * a shift and a NaN select the other, which the vectorisers handle well.
 * float16's exact conversions in C are three times longer (the exponent is
 * rebiased, subnormals and overflow are their own cases) and made a fused
 * float16 Adam 2.5x slower than gd_staged.inc's widening path, whose
 * separate conversion loops use F16C's one-instruction conversions on
 * x86-64-v3 and v4.
 *
 * Formats (gd_spans16's middle index, see gd_internal.h): the param in
 * gd_staged.inc's float32 block, state bfloat16 or float32 (0, 1); the
 * bfloat16 param read and written in place, rounded to nearest (2, 3),
 * stochastically (4, 5) or with Kahan compensation (6, 7), the last two on
 * the AVX-512 builds only (their param stores need the element's index and
 * the compensation: gd_avx512_16.h; elsewhere they run staged).
 * Instruction sets (GD_ISA_*), all from the same body: baseline with one
 * element per pack, vectorised by the compiler; x86-64-v3 with the explicit
 * 8-lane packs of gd_avx2_16.h, whose bfloat16 loads and stores are
 * shuffles; x86-64-v4 and x86-64-v4-bf16 with the 16-lane packs of
 * gd_avx512.h (32 lanes for the all-bfloat16 formats) and gd_avx512_16.h's
 * bfloat16 loads and stores (the second narrows with AVX512-BF16's
 * vcvtneps2bf16) and software prefetch.  Every one computes an element with
 * the same float32 operations in the same order as the per-element float32
 * body (gd_kernels.c's baseline and v3 builds: the correctly rounded square
 * root, no FMA), so the in-place spans, the staged spans and the widening
 * path agree bit for bit.  (bfloat16 Adam at 1M elements, 1 thread: Zen 3
 * AVX2 0.96 ns per element; Xeon with AVX512-BF16 0.39, stochastic 0.43,
 * Kahan 0.51, float32 state 0.42.)
 * Only the first eight option combinations of each kernel get loops of
 * their own (GD_FEW_VARIANTS: a third of the compile time).
 */
#include "gd_internal.h"
#include "gd_half.h"

#include <float.h>
#include <math.h>
#include <stddef.h>

#if GD_HAVE_X86_DISPATCH
#include "gd_avx2_16.h"
#include "gd_avx512_16.h"
#endif

#define T float
#define GD_SQRT(x) sqrtf(x)
#define GD_ABS(x) fabsf(x)
#define GD_GRAD_T uint16_t
#define GD_FEW_VARIANTS
#define GD_PARAM_T GD_PARAM_T_
#define GD_STATE_T GD_STATE_T_
#define GD_WIDEN16(h) GD_WIDEN16_(h)
#define GD_NARROW16(x) GD_NARROW16_(x)
#include "gd_scalar.h"

#define GD_CAT_(a, b) a##b
#define GD_CAT(a, b) GD_CAT_(a, b)

/* One format (GD_FMT: its name suffix; GD_PARAM_T_, GD_STATE_T_,
 * GD_WIDEN16_, GD_NARROW16_ defined) for every instruction set. */
#define GD_EACH_ISA_ "gd_kernels16_isa.inc"
#define GD_WIDEN16_(h) gd_bf16_to_f32(h)
#define GD_NARROW16_(x) gd_f32_to_bf16_nearest(x)

/* the param in gd_staged.inc's float32 block (stochastic and Kahan rounding) */
#define GD_PARAM_T_ float
#define GD_FMT bf16
#define GD_STATE_T_ uint16_t
#include GD_EACH_ISA_
#undef GD_FMT
#undef GD_STATE_T_

#define GD_FMT bf16s32
#define GD_STATE_T_ float
#include GD_EACH_ISA_
#undef GD_FMT
#undef GD_STATE_T_
#undef GD_PARAM_T_

/* the bfloat16 param read and written in place (round to nearest) */
#define GD_PARAM_T_ uint16_t
#define GD_FMT bf16p
#define GD_STATE_T_ uint16_t
#define GD_PAIRED
#include GD_EACH_ISA_
#undef GD_PAIRED
#undef GD_FMT
#undef GD_STATE_T_

#define GD_FMT bf16ps32
#define GD_STATE_T_ float
#include GD_EACH_ISA_
#undef GD_FMT
#undef GD_STATE_T_
#undef GD_PARAM_T_

#if GD_HAVE_X86_DISPATCH
/* the bfloat16 param read and written in place, rounded stochastically or
 * with Kahan compensation (AVX-512 builds only; see gd_avx512_16.h) */
_Thread_local gd_inplace_ctx gd_inplace_param;
#define GD_ONLY_V4
#define GD_PARAM_T_ gd_bf16_stochastic
#define GD_FMT bf16sr
#define GD_STATE_T_ uint16_t
#define GD_PAIRED
#include GD_EACH_ISA_
#undef GD_PAIRED
#undef GD_FMT
#undef GD_STATE_T_
#define GD_FMT bf16srs32
#define GD_STATE_T_ float
#include GD_EACH_ISA_
#undef GD_FMT
#undef GD_STATE_T_
#undef GD_PARAM_T_
#define GD_PARAM_T_ gd_bf16_kahan
#define GD_FMT bf16k
#define GD_STATE_T_ uint16_t
#define GD_PAIRED
#include GD_EACH_ISA_
#undef GD_PAIRED
#undef GD_FMT
#undef GD_STATE_T_
#define GD_FMT bf16ks32
#define GD_STATE_T_ float
#include GD_EACH_ISA_
#undef GD_FMT
#undef GD_STATE_T_
#undef GD_PARAM_T_
#undef GD_ONLY_V4
#endif
#undef GD_WIDEN16_
#undef GD_NARROW16_

/* gd_spans16[kernel][format][isa] */
#define GD_SPAN16(opt, fmt, isa) GD_CAT(GD_CAT(opt##_span_, fmt), isa)
#if GD_HAVE_X86_DISPATCH
#define GD_ISAS16(opt, fmt)                                                   \
    {GD_SPAN16(opt, fmt, _base), GD_SPAN16(opt, fmt, _v3), GD_SPAN16(opt, fmt, _v4), \
     GD_SPAN16(opt, fmt, _v4bf16)}
#define GD_V4_ISAS16(opt, fmt)                                                \
    {NULL, NULL, GD_SPAN16(opt, fmt, _v4), GD_SPAN16(opt, fmt, _v4bf16)}
#else
#define GD_ISAS16(opt, fmt)                                                   \
    {GD_SPAN16(opt, fmt, _base), GD_SPAN16(opt, fmt, _base), GD_SPAN16(opt, fmt, _base), \
     GD_SPAN16(opt, fmt, _base)}
#define GD_V4_ISAS16(opt, fmt) {NULL, NULL, NULL, NULL}
#endif
#define GD_ROW16(opt, index, nscalars)                                        \
    {GD_ISAS16(opt, bf16), GD_ISAS16(opt, bf16s32), GD_ISAS16(opt, bf16p),     \
     GD_ISAS16(opt, bf16ps32), GD_V4_ISAS16(opt, bf16sr), GD_V4_ISAS16(opt, bf16srs32), \
     GD_V4_ISAS16(opt, bf16k), GD_V4_ISAS16(opt, bf16ks32)},
const gd_span_fn gd_spans16[GD_KERNEL_COUNT][GD_FORMATS16][GD_ISA_COUNT] = {GD_FAMILY(GD_ROW16)};
