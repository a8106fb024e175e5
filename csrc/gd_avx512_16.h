/*
 * gd_avx512_16.h: bfloat16 loads and stores for the 16-lane float32 packs
 * of gd_avx512.h, used by the AVX-512 instantiations of the bfloat16 spans
 * (gd_kernels16.c): x86-64-v4, and x86-64-v4 with AVX512-BF16.
 *
 * Design note.  Left to the vectoriser, the per-element conversions of
 * gd_half.h cost more than Adam's math (bfloat16 Adam with bfloat16 state,
 * 1M elements, Xeon: 0.71 ns per element against 0.49 with float32 state,
 * which converts three streams fewer).  Here, per 16 elements:
 *   widen   one vpmovzxwd (a 32-byte load, zero-extended to 32-bit lanes)
 *           and one shift left by 16; tails are a masked load;
 *   narrow  to nearest, ties to even:
 *           x86-64-v4: u + 0x7FFF + ((u >> 16) & 1), NaN lanes set to the
 *           canonical 0x7FC0 (one masked move), shift right by 16, vpmovdw;
 *           with AVX512-BF16: vcvtneps2bf16, which rounds the same way but
 *           treats subnormal inputs as zero and keeps NaN payloads, so a
 *           pack holding a NaN or a subnormal (one vfpclassps test, almost
 *           never taken) goes the x86-64-v4 way instead.
 * Both compute exactly gd_bf16_to_f32 and gd_f32_to_bf16_nearest; the spans
 * take the correctly rounded square root (gd_sqrt_f32x16, never the Newton
 * root of the float32 packs) and, with -ffp-contract=off, no FMA, so they
 * agree bit for bit with the per-element builds and the float32 body.
 */
#ifndef GD_AVX512_16_H
#define GD_AVX512_16_H

#include "gd_avx512.h"

#include <immintrin.h>
#include <stdint.h>

#define GD_V4BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))

/* vfpclass categories QNaN 0x01, subnormal 0x20, SNaN 0x80 */
#define GD_FPCLASS_NAN_OR_SUBNORMAL 0xA1

GD_V4_INLINE gd_f32x16 gd_v4_load_bf16(const uint16_t *p, __mmask16 mask)
{
    const __m256i h = mask == 0xFFFF ? _mm256_loadu_si256((const __m256i *)p)
                                     : _mm256_maskz_loadu_epi16(mask, p);
    return (gd_f32x16)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* float32 -> bfloat16, to nearest (ties to even), NaN -> 0x7FC0 */
GD_V4_INLINE __m256i gd_v4_narrow_bf16(gd_f32x16 x)
{
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i t = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
    t = _mm512_mask_mov_epi32(t, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q),
                              _mm512_set1_epi32(0x7FC00000));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(t, 16));
}

GD_V4_INLINE void gd_v4_put_bf16(uint16_t *p, __m256i h, __mmask16 mask)
{
    if (mask == 0xFFFF)
        _mm256_storeu_si256((__m256i *)p, h);
    else
        _mm256_mask_storeu_epi16(p, mask, h);
}

/* The same with AVX512-BF16: vcvtneps2bf16 unless a lane is NaN or
 * subnormal (those packs take gd_v4_narrow_bf16). */
static inline __attribute__((always_inline)) GD_V4BF16 __m256i gd_v4bf16_narrow_bf16(gd_f32x16 x)
{
    if (__builtin_expect(_mm512_fpclass_ps_mask(x, GD_FPCLASS_NAN_OR_SUBNORMAL) != 0, 0))
        return gd_v4_narrow_bf16(x);
    return (__m256i)_mm512_cvtneps_pbh(x);
}

/* ---------------------------------------- the param rounded in place --
 * Stochastic and Kahan rounding need more than the param's address: the
 * element's index in its buffer and the random key, or the compensation.
 * The spans of those formats type their param as one of the tags below (so
 * that GD_LOAD/GD_STORE pick these functions by pointer type, as they do
 * for state), and gd_inplace_span (gd_kernels.c) sets the running thread's
 * gd_inplace_param before it calls them. */
typedef struct { uint16_t bits; } gd_bf16_stochastic;
typedef struct { uint16_t bits; } gd_bf16_kahan;
typedef struct gd_inplace_ctx {
    const uint16_t *origin;      /* the buffer's param (element 0)          */
    const uint16_t *compensation; /* Kahan: the buffer's compensation       */
    uint32_t key;                /* stochastic: gd_stream_key for this run  */
} gd_inplace_ctx;
extern _Thread_local gd_inplace_ctx gd_inplace_param;

/* gd_random_bits for the 16 indices first, first + 1, ... */
GD_V4_INLINE __m512i gd_v4_random_bits(uint32_t key, uint32_t first)
{
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i x = _mm512_xor_si512(_mm512_add_epi32(_mm512_set1_epi32((int)first), lanes),
                                 _mm512_set1_epi32((int)key));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x21F0AAAD));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(0x735A2D97));
    return _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
}

GD_V4_INLINE gd_f32x16 gd_v4_load_bf16_stochastic(const gd_bf16_stochastic *p, __mmask16 mask)
{
    return gd_v4_load_bf16((const uint16_t *)p, mask);
}

/* gd_f32_to_bf16_stochastic: (u + (random >> 16)) >> 16, NaN -> 0x7FC0 */
GD_V4_INLINE void gd_v4_store_bf16_stochastic(gd_bf16_stochastic *p, gd_f32x16 x,
                                              __mmask16 mask)
{
    const gd_inplace_ctx *c = &gd_inplace_param;
    const __m512i random = gd_v4_random_bits(
        c->key, (uint32_t)((const uint16_t *)p - c->origin));
    __m512i t = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_castps_si512(x), _mm512_srli_epi32(random, 16)), 16);
    t = _mm512_mask_mov_epi32(t, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    gd_v4_put_bf16((uint16_t *)p, _mm512_cvtepi32_epi16(t), mask);
}

/* the param plus its compensation (gd_staged.inc's widen, then widen_add) */
GD_V4_INLINE gd_f32x16 gd_v4_load_bf16_kahan(const gd_bf16_kahan *p, __mmask16 mask)
{
    const gd_inplace_ctx *c = &gd_inplace_param;
    const uint16_t *compensation = c->compensation + ((const uint16_t *)p - c->origin);
    return gd_v4_load_bf16((const uint16_t *)p, mask) + gd_v4_load_bf16(compensation, mask);
}

/* Stores for bfloat16 state (to nearest) and the Kahan param (to nearest,
 * what that dropped to the compensation, zero where the rounded param is
 * not finite), for each narrowing. */
#define GD_V4_BF16_STORES(PREFIX, TARGET)                                     \
    static inline __attribute__((always_inline)) TARGET void                   \
        PREFIX##_store_bf16(uint16_t *p, gd_f32x16 x, __mmask16 mask)          \
    {                                                                          \
        gd_v4_put_bf16(p, PREFIX##_narrow_bf16(x), mask);                      \
    }                                                                          \
                                                                               \
    static inline __attribute__((always_inline)) TARGET void                   \
        PREFIX##_store_bf16_kahan(gd_bf16_kahan *p, gd_f32x16 x, __mmask16 mask) \
    {                                                                          \
        const gd_inplace_ctx *c = &gd_inplace_param;                           \
        uint16_t *compensation =                                               \
            (uint16_t *)c->compensation + ((const uint16_t *)p - c->origin);   \
        const __m256i h = PREFIX##_narrow_bf16(x);                             \
        const __m512i back = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);  \
        const __m512i exponent = _mm512_set1_epi32(0x7F800000);                \
        const __mmask16 finite = _mm512_cmpneq_epi32_mask(                     \
            _mm512_and_si512(back, exponent), exponent);                       \
        const gd_f32x16 residual = (gd_f32x16)_mm512_maskz_mov_ps(             \
            finite, x - (gd_f32x16)_mm512_castsi512_ps(back));                 \
        gd_v4_put_bf16((uint16_t *)p, h, mask);                                \
        gd_v4_put_bf16(compensation, PREFIX##_narrow_bf16(residual), mask);    \
    }
GD_V4_BF16_STORES(gd_v4, GD_V4)
GD_V4_BF16_STORES(gd_v4bf16, GD_V4BF16)
#undef GD_V4_BF16_STORES

#endif /* GD_AVX512_16_H */
