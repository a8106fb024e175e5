/*
 * gd_avx512_16.h: bfloat16 loads and stores for the 16-lane float32 packs
 * of gd_avx512.h, used by the AVX-512 instantiations of the bfloat16 spans
 * (gd_kernels16.c): x86-64-v4, and x86-64-v4 with AVX512-BF16.
 *
 * Design note.  Left to the vectoriser, the per-element conversions of
 * gd_half.h cost more than Adam's math (bfloat16 Adam with bfloat16 state,
 * 1M elements, 1 thread, Xeon: 0.71 ns per element against 0.49 with
 * float32 state, which converts three streams fewer).  Here (0.39):
 *   widen   16 lanes: vpmovzxwd (32-byte load) and a shift left by 16;
 *           32 lanes (below): one vpunpck{l,h}wd against zero per 16;
 *           tails are masked loads;
 *   narrow  to nearest, ties to even:
 *           x86-64-v4: u + 0x7FFF + ((u >> 16) & 1), NaN lanes set to the
 *           canonical 0x7FC0 (one masked move), shift right by 16, vpmovdw
 *           (32 lanes: vpackusdw);
 *           x86-64-v4-bf16: vcvtneps2bf16 (32 lanes: vcvtne2ps2bf16 and a
 *           vpermq), which rounds the same way but treats subnormal inputs
 *           as zero and keeps NaN payloads, so a pack holding a NaN or a
 *           subnormal (one vfpclassps test, almost never taken) goes the
 *           x86-64-v4 way instead;
 *   param   rounded in the store itself, to nearest, stochastically (the
 *           random bits drawn from the element's index in the loop) or with
 *           Kahan compensation (the compensation loaded and stored beside
 *           it), as gd_staged.inc rounds a float32 block;
 *   prefetch  every load asks for the line GD_PREFETCH_BYTES ahead: with
 *           the divider busy the loop issues loads late, and 16M-element
 *           steps ran 15-30% faster (the float32 state ones past the plain
 *           bandwidth probe).
 * All compute exactly gd_bf16_to_f32 and gd_f32_to_bf16_nearest (and the
 * stochastic and Kahan roundings of gd_half.h); the spans take the
 * correctly rounded square root (never the Newton root of the float32
 * packs: tried here, it was 10% slower, the vector ports being as busy as
 * the divider) and, with -ffp-contract=off, no FMA, so they agree bit for
 * bit with the per-element builds and the float32 body.
 */
#ifndef GD_AVX512_16_H
#define GD_AVX512_16_H

#include "gd_avx512.h"

#include <immintrin.h>
#include <stdint.h>

#define GD_V4BF16 __attribute__((target("arch=x86-64-v4,avx512bf16")))

/* Software prefetch: every load of a stream asks for the line
 * GD_PREFETCH_BYTES ahead into L1 (-DGD_PREFETCH_BYTES=0: none). */
#ifndef GD_PREFETCH_BYTES
#define GD_PREFETCH_BYTES 2048
#endif
#if GD_PREFETCH_BYTES > 0
#define GD_PREFETCH_AHEAD(p) _mm_prefetch((const char *)(p) + GD_PREFETCH_BYTES, _MM_HINT_T0)
#else
#define GD_PREFETCH_AHEAD(p) ((void)0)
#endif
/* (float32 state loads prefetch in gd_load_f32x16: GD_F32_PREFETCH) */

/* vfpclass categories QNaN 0x01, subnormal 0x20, SNaN 0x80 */
#define GD_FPCLASS_NAN_OR_SUBNORMAL 0xA1

GD_V4_INLINE gd_f32x16 gd_v4_load_bf16(const uint16_t *p, __mmask16 mask)
{
    GD_PREFETCH_AHEAD(p);
    const __m256i h = mask == 0xFFFF ? _mm256_loadu_si256((const __m256i *)p)
                                     : _mm256_maskz_loadu_epi16(mask, p);
    return (gd_f32x16)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* float32 -> bfloat16 bits, to nearest (ties to even), NaN -> 0x7FC0, in
 * the low 16 bits of each 32-bit lane */
GD_V4_INLINE __m512i gd_v4_round_bf16(__m512 x)
{
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i t = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
    t = _mm512_mask_mov_epi32(t, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q),
                              _mm512_set1_epi32(0x7FC00000));
    return _mm512_srli_epi32(t, 16);
}

/* the same, packed to 16 bfloat16 */
GD_V4_INLINE __m256i gd_v4_narrow_bf16(gd_f32x16 x)
{
    return _mm512_cvtepi32_epi16(gd_v4_round_bf16(x));
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

/* gd_random16 for 2 k consecutive elements from an even index: the hash
 * (gd_random_bits) of the k pair indices, in k 32-bit lanes, whose 16-bit
 * halves are the elements' bits in element order.  (Plain GCC vectors:
 * the operators give vpmulld and the shifts for either width.) */
typedef uint32_t gd_u32x8 __attribute__((vector_size(32)));
typedef uint32_t gd_u32x16 __attribute__((vector_size(64)));
#define GD_RANDOM_PAIRS(x)                                                    \
    (x ^= x >> 16, x *= 0x21F0AAADu, x ^= x >> 15, x *= 0x735A2D97u, x ^= x >> 15, x)

GD_V4_INLINE __m256i gd_v4_random16_x16(uint32_t key, uint32_t first)
{
    gd_u32x8 x = (gd_u32x8){0, 1, 2, 3, 4, 5, 6, 7} + (first >> 1);
    x ^= key;
    return (__m256i)GD_RANDOM_PAIRS(x);
}

GD_V4_INLINE __m512i gd_v4_random16_x32(uint32_t key, uint32_t first)
{
    gd_u32x16 x = (gd_u32x16){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} + (first >> 1);
    x ^= key;
    return (__m512i)GD_RANDOM_PAIRS(x);
}
#undef GD_RANDOM_PAIRS

/* gd_f32_to_bf16_stochastic's bits, (u + random16) >> 16 and NaN -> 0x7FC0,
 * in the low 16 bits of each 32-bit lane (random16 there too) */
GD_V4_INLINE __m512i gd_v4_round_bf16_stochastic(__m512 x, __m512i random16)
{
    const __m512i t = _mm512_srli_epi32(_mm512_add_epi32(_mm512_castps_si512(x), random16), 16);
    return _mm512_mask_mov_epi32(t, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q),
                                 _mm512_set1_epi32(0x7FC0));
}

/* the index in its buffer of the element p points to */
#define GD_INPLACE_INDEX(p) ((uint32_t)((const uint16_t *)(p) - gd_inplace_param.origin))

GD_V4_INLINE gd_f32x16 gd_v4_load_bf16_stochastic(const gd_bf16_stochastic *p, __mmask16 mask)
{
    return gd_v4_load_bf16((const uint16_t *)p, mask);
}

GD_V4_INLINE void gd_v4_store_bf16_stochastic(gd_bf16_stochastic *p, gd_f32x16 x,
                                              __mmask16 mask)
{
    const __m512i random16 = _mm512_cvtepu16_epi32(
        gd_v4_random16_x16(gd_inplace_param.key, GD_INPLACE_INDEX(p)));
    gd_v4_put_bf16((uint16_t *)p,
                   _mm512_cvtepi32_epi16(gd_v4_round_bf16_stochastic(x, random16)), mask);
}

/* the param plus its compensation (gd_staged.inc's widen, then widen_add) */
GD_V4_INLINE gd_f32x16 gd_v4_load_bf16_kahan(const gd_bf16_kahan *p, __mmask16 mask)
{
    const uint16_t *compensation = gd_inplace_param.compensation + GD_INPLACE_INDEX(p);
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
        uint16_t *compensation =                                               \
            (uint16_t *)gd_inplace_param.compensation + GD_INPLACE_INDEX(p);   \
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


/* ------------------------------------------ 32-lane packs, all-bfloat16 --
 * Formats whose every stream is bfloat16 (param, grad, state, Kahan's
 * compensation) compute on 32 elements at once, two 16-lane halves in the
 * order vpunpcklwd/vpunpckhwd give them: of each 128-bit lane of a 64-byte
 * load, elements 0-3 go to the low half, 4-7 to the high half.  Widening is
 * one unpack against zero per 16 elements (instead of vpmovzxwd + shift);
 * narrowing ends in vpackusdw, which restores the element order, or with
 * AVX512-BF16 is one vcvtne2ps2bf16 for both halves and one vpermq.  The
 * lane order never leaves a pack: load and store masks are in element order
 * (bit e: element e), compare and blend masks in lane order (bits 0-15 the
 * low half).  (Formats with float32 state keep 16 lanes in element order:
 * their float32 loads would need a permute each.) */
typedef float gd_f32x32 __attribute__((vector_size(128)));
typedef union {
    gd_f32x32 v;
    __m512 h[2];
} gd_f32x32_halves;

GD_V4_INLINE gd_f32x32 gd_x32_join(__m512 lo, __m512 hi)
{
    gd_f32x32_halves u;
    u.h[0] = lo;
    u.h[1] = hi;
    return u.v;
}

GD_V4_INLINE __m512 gd_x32_lo(gd_f32x32 x)
{
    gd_f32x32_halves u;
    u.v = x;
    return u.h[0];
}

GD_V4_INLINE __m512 gd_x32_hi(gd_f32x32 x)
{
    gd_f32x32_halves u;
    u.v = x;
    return u.h[1];
}

/* 32 bfloat16 (in element order) widened to a pack */
GD_V4_INLINE gd_f32x32 gd_x32_widen(__m512i h)
{
    const __m512i zero = _mm512_setzero_si512();
    return gd_x32_join(_mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, h)),
                       _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, h)));
}

GD_V4_INLINE gd_f32x32 gd_x32_load_bf16(const uint16_t *p, __mmask32 mask)
{
    GD_PREFETCH_AHEAD(p);
    return gd_x32_widen(mask == 0xFFFFFFFFu ? _mm512_loadu_si512(p)
                                            : _mm512_maskz_loadu_epi16(mask, p));
}

GD_V4_INLINE void gd_x32_put_bf16(uint16_t *p, __m512i h, __mmask32 mask)
{
    if (mask == 0xFFFFFFFFu)
        _mm512_storeu_si512(p, h);
    else
        _mm512_mask_storeu_epi16(p, mask, h);
}

/* to nearest: 32 bfloat16 in element order */
GD_V4_INLINE __m512i gd_v4_x32_narrow_bf16(gd_f32x32 x)
{
    return _mm512_packus_epi32(gd_v4_round_bf16(gd_x32_lo(x)), gd_v4_round_bf16(gd_x32_hi(x)));
}

static inline __attribute__((always_inline)) GD_V4BF16 __m512i
gd_v4bf16_x32_narrow_bf16(gd_f32x32 x)
{
    const __m512 lo = gd_x32_lo(x), hi = gd_x32_hi(x);
    /* (kortestw on both masks: OR-ing them as integers moves each to a
     * general register on port 0, the port the float math needs) */
    if (__builtin_expect(!_kortestz_mask16_u8(_mm512_fpclass_ps_mask(lo, GD_FPCLASS_NAN_OR_SUBNORMAL),
                                              _mm512_fpclass_ps_mask(hi, GD_FPCLASS_NAN_OR_SUBNORMAL)),
                         0))
        return gd_v4_x32_narrow_bf16(x);
    /* words 0-15 from lo, 16-31 from hi: qwords 0-3 hold elements 0-3,
     * 8-11, ..., qwords 4-7 elements 4-7, 12-15, ...: interleave them */
    return _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 4, 1, 5, 2, 6, 3, 7),
                                    (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
}

GD_V4_INLINE gd_f32x32 gd_x32_load_bf16_stochastic(const gd_bf16_stochastic *p, __mmask32 mask)
{
    return gd_x32_load_bf16((const uint16_t *)p, mask);
}

GD_V4_INLINE void gd_x32_store_bf16_stochastic(gd_bf16_stochastic *p, gd_f32x32 x,
                                               __mmask32 mask)
{
    /* the 32 random halves in element order, spread to the pack's lanes as
     * the loads spread elements */
    const __m512i random16 = gd_v4_random16_x32(gd_inplace_param.key, GD_INPLACE_INDEX(p));
    const __m512i zero = _mm512_setzero_si512();
    gd_x32_put_bf16((uint16_t *)p,
                    _mm512_packus_epi32(
                        gd_v4_round_bf16_stochastic(gd_x32_lo(x),
                                                    _mm512_unpacklo_epi16(random16, zero)),
                        gd_v4_round_bf16_stochastic(gd_x32_hi(x),
                                                    _mm512_unpackhi_epi16(random16, zero))),
                    mask);
}

GD_V4_INLINE gd_f32x32 gd_x32_load_bf16_kahan(const gd_bf16_kahan *p, __mmask32 mask)
{
    const uint16_t *compensation = gd_inplace_param.compensation + GD_INPLACE_INDEX(p);
    return gd_x32_load_bf16((const uint16_t *)p, mask) + gd_x32_load_bf16(compensation, mask);
}

#define GD_X32_BF16_STORES(PREFIX, TARGET)                                    \
    static inline __attribute__((always_inline)) TARGET void                   \
        PREFIX##_x32_store_bf16(uint16_t *p, gd_f32x32 x, __mmask32 mask)      \
    {                                                                          \
        gd_x32_put_bf16(p, PREFIX##_x32_narrow_bf16(x), mask);                 \
    }                                                                          \
                                                                               \
    static inline __attribute__((always_inline)) TARGET void                   \
        PREFIX##_x32_store_bf16_kahan(gd_bf16_kahan *p, gd_f32x32 x, __mmask32 mask) \
    {                                                                          \
        uint16_t *compensation =                                               \
            (uint16_t *)gd_inplace_param.compensation + GD_INPLACE_INDEX(p);   \
        const __m512i h = PREFIX##_x32_narrow_bf16(x);                         \
        const gd_f32x32 back = gd_x32_widen(h);                                \
        gd_f32x32 residual = x - back;                                         \
        /* zero where back is infinite or NaN (0x99: QNaN, +-inf, SNaN) */     \
        const __mmask16 special_lo = _mm512_fpclass_ps_mask(gd_x32_lo(back), 0x99); \
        const __mmask16 special_hi = _mm512_fpclass_ps_mask(gd_x32_hi(back), 0x99); \
        if (__builtin_expect(!_kortestz_mask16_u8(special_lo, special_hi), 0)) \
            residual = gd_x32_join(                                            \
                _mm512_maskz_mov_ps((__mmask16)~special_lo, gd_x32_lo(residual)), \
                _mm512_maskz_mov_ps((__mmask16)~special_hi, gd_x32_hi(residual))); \
        gd_x32_put_bf16((uint16_t *)p, h, mask);                               \
        gd_x32_put_bf16(compensation, PREFIX##_x32_narrow_bf16(residual), mask); \
    }
GD_X32_BF16_STORES(gd_v4, GD_V4)
GD_X32_BF16_STORES(gd_v4bf16, GD_V4BF16)
#undef GD_X32_BF16_STORES

/* lane operations, half by half */
#define GD_X32_CMP(name, predicate)                                           \
    GD_V4_INLINE __mmask32 gd_x32_##name(gd_f32x32 a, gd_f32x32 b)             \
    {                                                                          \
        return (__mmask32)_mm512_cmp_ps_mask(gd_x32_lo(a), gd_x32_lo(b), predicate) | \
               (__mmask32)_mm512_cmp_ps_mask(gd_x32_hi(a), gd_x32_hi(b), predicate) << 16; \
    }
GD_X32_CMP(gt, _CMP_GT_OQ)
GD_X32_CMP(lt, _CMP_LT_OQ)
GD_X32_CMP(eq, _CMP_EQ_OQ)
#undef GD_X32_CMP

GD_V4_INLINE gd_f32x32 gd_x32_blend(__mmask32 take_a, gd_f32x32 a, gd_f32x32 b)
{
    return gd_x32_join(_mm512_mask_blend_ps((__mmask16)take_a, gd_x32_lo(b), gd_x32_lo(a)),
                       _mm512_mask_blend_ps((__mmask16)(take_a >> 16), gd_x32_hi(b),
                                            gd_x32_hi(a)));
}

GD_V4_INLINE gd_f32x32 gd_x32_max_nan(gd_f32x32 a, gd_f32x32 b)
{
    return gd_x32_join(gd_max_nan_f32x16((gd_f32x16)gd_x32_lo(a), (gd_f32x16)gd_x32_lo(b)),
                       gd_max_nan_f32x16((gd_f32x16)gd_x32_hi(a), (gd_f32x16)gd_x32_hi(b)));
}

GD_V4_INLINE gd_f32x32 gd_x32_sqrt(gd_f32x32 x)
{
    return gd_x32_join(_mm512_sqrt_ps(gd_x32_lo(x)), _mm512_sqrt_ps(gd_x32_hi(x)));
}

GD_V4_INLINE gd_f32x32 gd_x32_abs(gd_f32x32 x)
{
    return gd_x32_join(_mm512_abs_ps(gd_x32_lo(x)), _mm512_abs_ps(gd_x32_hi(x)));
}

#endif /* GD_AVX512_16_H */
