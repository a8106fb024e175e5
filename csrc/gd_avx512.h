/*
 * gd_avx512.h: the pack operations of the AVX-512 (x86-64-v4) instantiation
 * of gd_optimizers.inc, for float32 (16 lanes) and float64 (8 lanes).
 *
 * Packs are GCC vector types, so the optimizer bodies use plain + - * /;
 * only loads, stores, square roots and the NaN-propagating maximum need
 * intrinsics, and they live here.
 *
 * gd_sqrt_newton_*: a square root computed on the FMA units instead of the
 * divide/square-root unit.  vrsqrt14 gives y ~ 1/sqrt(x) to 2^-14; one
 * Goldschmidt step (s = x y, h = y / 2, r = 1/2 - s h, s += s r, h += h r)
 * brings s ~ sqrt(x) to about 2^-27, enough for float32; float64 adds the
 * Newton correction s += h (x - s s), to about 2^-54.  The result is within
 * one ulp of the correctly rounded root (tests/test_isa.py measures
 * it over many binades).  +0 gives +0 (the seed is taken of max(x, smallest
 * normal)); the other lanes outside the normal positive range (-0,
 * subnormal, infinite, negative, NaN: one vfpclass test) take the exact
 * instruction, so every special value behaves exactly as sqrt.
 */
#ifndef GD_AVX512_H
#define GD_AVX512_H

#include <float.h>
#include <immintrin.h>

#define GD_V4 __attribute__((target("arch=x86-64-v4")))
#define GD_V4_INLINE static inline __attribute__((always_inline)) GD_V4

/* vfpclass categories QNaN 0x01, -0 0x04, +inf 0x08, -inf 0x10,
 * subnormal 0x20, negative finite 0x40, SNaN 0x80: all but +0 and normal
 * positive numbers. */
#define GD_FPCLASS_NOT_SAFE 0xFD

/* Software prefetch: each float32 load asks for the line GD_F32_PREFETCH
 * bytes ahead (float32 Adam at 16M elements, Xeon: 0.94 -> 0.84 ns per
 * element on 1 thread, 0.48 -> 0.41 on 2; 1M unchanged).  float64 loads do
 * not: at 16M they measured the same or 2-4% slower. */
#ifndef GD_F32_PREFETCH
#define GD_F32_PREFETCH 2048
#endif
#ifndef GD_F64_PREFETCH
#define GD_F64_PREFETCH 0
#endif

typedef float gd_f32x16 __attribute__((vector_size(64)));
typedef double gd_f64x8 __attribute__((vector_size(64)));

/* The operations for one element type, written once:
 *   NAME    pack name suffix (f32x16, f64x8)   T, V, M  element, pack, mask types
 *   FULL    the all-lanes mask                 PS       intrinsic suffix (ps, pd)
 *   TINY    smallest normal T                  REFINE   1: add the Newton correction */
#define GD_AVX512_OPS(NAME, T, V, M, FULL, PS, TINY, REFINE, AHEAD)            \
    GD_V4_INLINE V gd_load_##NAME(const T *p, M mask)                          \
    {                                                                          \
        if (AHEAD > 0)                                                         \
            _mm_prefetch((const char *)p + AHEAD, _MM_HINT_T0);                \
        return (V)(mask == FULL ? _mm512_loadu_##PS(p)                         \
                                : _mm512_maskz_loadu_##PS(mask, p));           \
    }                                                                          \
                                                                               \
    GD_V4_INLINE void gd_store_##NAME(T *p, V x, M mask)                       \
    {                                                                          \
        if (mask == FULL)                                                      \
            _mm512_storeu_##PS(p, x);                                          \
        else                                                                   \
            _mm512_mask_storeu_##PS(p, mask, x);                               \
    }                                                                          \
                                                                               \
    GD_V4_INLINE V gd_sqrt_##NAME(V x)                                         \
    {                                                                          \
        return (V)_mm512_sqrt_##PS(x);                                         \
    }                                                                          \
                                                                               \
    GD_V4_INLINE V gd_sqrt_newton_##NAME(V x)                                  \
    {                                                                          \
        const V half = (V)_mm512_set1_##PS((T)0.5);                            \
        const V y = (V)_mm512_rsqrt14_##PS(_mm512_max_##PS(x, _mm512_set1_##PS(TINY))); \
        V s = (V)_mm512_mul_##PS(x, y), h = (V)_mm512_mul_##PS(y, half);       \
        const V r = (V)_mm512_fnmadd_##PS(s, h, half);                         \
        s = (V)_mm512_fmadd_##PS(s, r, s);                                     \
        if (REFINE) {                                                          \
            h = (V)_mm512_fmadd_##PS(h, r, h);                                 \
            s = (V)_mm512_fmadd_##PS(h, _mm512_fnmadd_##PS(s, s, x), s);       \
        }                                                                      \
        const M special = _mm512_fpclass_##PS##_mask(x, GD_FPCLASS_NOT_SAFE);  \
        if (__builtin_expect(special != 0, 0))                                 \
            s = (V)_mm512_mask_sqrt_##PS(s, special, x);                       \
        return s;                                                              \
    }                                                                          \
                                                                               \
    GD_V4_INLINE V gd_abs_##NAME(V x)                                          \
    {                                                                          \
        return (V)_mm512_abs_##PS(x);                                          \
    }                                                                          \
                                                                               \
    GD_V4_INLINE M gd_gt_##NAME(V a, V b)                                      \
    {                                                                          \
        return _mm512_cmp_##PS##_mask(a, b, _CMP_GT_OQ);                       \
    }                                                                          \
                                                                               \
    GD_V4_INLINE M gd_lt_##NAME(V a, V b)                                      \
    {                                                                          \
        return _mm512_cmp_##PS##_mask(a, b, _CMP_LT_OQ);                       \
    }                                                                          \
                                                                               \
    GD_V4_INLINE M gd_eq_##NAME(V a, V b)                                      \
    {                                                                          \
        return _mm512_cmp_##PS##_mask(a, b, _CMP_EQ_OQ);                       \
    }                                                                          \
                                                                               \
    GD_V4_INLINE V gd_blend_##NAME(M take_a, V a, V b)                         \
    {                                                                          \
        return (V)_mm512_mask_blend_##PS(take_a, b, a);                        \
    }                                                                          \
                                                                               \
    GD_V4_INLINE V gd_max_nan_##NAME(V a, V b)                                 \
    {                                                                          \
        const M take_a = _mm512_cmp_##PS##_mask(a, a, _CMP_UNORD_Q) |          \
                         _mm512_cmp_##PS##_mask(a, b, _CMP_GT_OQ);             \
        return (V)_mm512_mask_blend_##PS(take_a, b, a);                        \
    }

GD_AVX512_OPS(f32x16, float, gd_f32x16, __mmask16, 0xFFFF, ps, FLT_MIN, 0, GD_F32_PREFETCH)
GD_AVX512_OPS(f64x8, double, gd_f64x8, __mmask8, 0xFF, pd, DBL_MIN, 1, GD_F64_PREFETCH)
#undef GD_AVX512_OPS

#endif /* GD_AVX512_H */
