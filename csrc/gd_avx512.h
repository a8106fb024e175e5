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
 * one ulp of the correctly rounded root (tests/test_consistency.py measures
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

typedef float gd_f32x16 __attribute__((vector_size(64)));
typedef double gd_f64x8 __attribute__((vector_size(64)));

/* ----------------------------------------------------------- float32 -- */
GD_V4_INLINE gd_f32x16 gd_load_f32x16(const float *p, __mmask16 mask)
{
    return (gd_f32x16)(mask == 0xFFFF ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask, p));
}

GD_V4_INLINE void gd_store_f32x16(float *p, gd_f32x16 x, __mmask16 mask)
{
    if (mask == 0xFFFF)
        _mm512_storeu_ps(p, (__m512)x);
    else
        _mm512_mask_storeu_ps(p, mask, (__m512)x);
}

GD_V4_INLINE gd_f32x16 gd_sqrt_f32x16(gd_f32x16 x)
{
    return (gd_f32x16)_mm512_sqrt_ps((__m512)x);
}

GD_V4_INLINE gd_f32x16 gd_sqrt_newton_f32x16(gd_f32x16 xv)
{
    const __m512 x = (__m512)xv, half = _mm512_set1_ps(0.5f);
    const __m512 y = _mm512_rsqrt14_ps(_mm512_max_ps(x, _mm512_set1_ps(FLT_MIN)));
    __m512 s = _mm512_mul_ps(x, y), h = _mm512_mul_ps(y, half);
    const __m512 r = _mm512_fnmadd_ps(s, h, half);
    s = _mm512_fmadd_ps(s, r, s);
    const __mmask16 special = _mm512_fpclass_ps_mask(x, GD_FPCLASS_NOT_SAFE);
    if (__builtin_expect(special != 0, 0))
        s = _mm512_mask_sqrt_ps(s, special, x);
    return (gd_f32x16)s;
}

GD_V4_INLINE gd_f32x16 gd_max_nan_f32x16(gd_f32x16 av, gd_f32x16 bv)
{
    const __m512 a = (__m512)av, b = (__m512)bv;
    const __mmask16 take_a = _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) |
                             _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ);
    return (gd_f32x16)_mm512_mask_blend_ps(take_a, b, a);
}

/* ----------------------------------------------------------- float64 -- */
GD_V4_INLINE gd_f64x8 gd_load_f64x8(const double *p, __mmask8 mask)
{
    return (gd_f64x8)(mask == 0xFF ? _mm512_loadu_pd(p) : _mm512_maskz_loadu_pd(mask, p));
}

GD_V4_INLINE void gd_store_f64x8(double *p, gd_f64x8 x, __mmask8 mask)
{
    if (mask == 0xFF)
        _mm512_storeu_pd(p, (__m512d)x);
    else
        _mm512_mask_storeu_pd(p, mask, (__m512d)x);
}

GD_V4_INLINE gd_f64x8 gd_sqrt_f64x8(gd_f64x8 x)
{
    return (gd_f64x8)_mm512_sqrt_pd((__m512d)x);
}

GD_V4_INLINE gd_f64x8 gd_sqrt_newton_f64x8(gd_f64x8 xv)
{
    const __m512d x = (__m512d)xv, half = _mm512_set1_pd(0.5);
    const __m512d y = _mm512_rsqrt14_pd(_mm512_max_pd(x, _mm512_set1_pd(DBL_MIN)));
    __m512d s = _mm512_mul_pd(x, y), h = _mm512_mul_pd(y, half);
    const __m512d r = _mm512_fnmadd_pd(s, h, half);
    s = _mm512_fmadd_pd(s, r, s);
    h = _mm512_fmadd_pd(h, r, h);
    s = _mm512_fmadd_pd(h, _mm512_fnmadd_pd(s, s, x), s);
    const __mmask8 special = _mm512_fpclass_pd_mask(x, GD_FPCLASS_NOT_SAFE);
    if (__builtin_expect(special != 0, 0))
        s = _mm512_mask_sqrt_pd(s, special, x);
    return (gd_f64x8)s;
}

GD_V4_INLINE gd_f64x8 gd_max_nan_f64x8(gd_f64x8 av, gd_f64x8 bv)
{
    const __m512d a = (__m512d)av, b = (__m512d)bv;
    const __mmask8 take_a = _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q) |
                            _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ);
    return (gd_f64x8)_mm512_mask_blend_pd(take_a, b, a);
}

#endif /* GD_AVX512_H */
