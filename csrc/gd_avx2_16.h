/*
 * gd_avx2_16.h: explicit 8-lane float32 packs for the x86-64-v3 (AVX2)
 * instantiation of the bfloat16 spans (gd_kernels16.c), with bfloat16
 * loads and stores written as shuffles.
 *
 * Design note.  Left to the vectoriser, the per-element conversions of
 * gd_half.h cost more than the optimizer's math: GCC widens with a load, an
 * extract, a zero-extension and a shift per 8 elements, narrows with
 * eleven instructions (it also masks the shifted result to 16 bits and
 * packs the NaN masks separately), and the many constants spill.  Here:
 *   widen   8 bfloat16 -> float32: one 16-byte broadcast load and one
 *           vpshufb that moves each 16-bit value into the high half of its
 *           32-bit lane (zeros below);
 *   narrow  float32 -> 8 bfloat16, to nearest, ties to even: u + 0x7FFF +
 *           ((u >> 16) & 1) (shift, and, two adds), NaN lanes replaced by
 *           the canonical 0x7FC0 (one compare, one blend), then a vpshufb
 *           that gathers the high halves and one extract + unpack.
 * Both compute exactly gd_bf16_to_f32 and gd_f32_to_bf16_nearest, and the
 * float math is the body's own operations in the same order (no FMA:
 * -ffp-contract=off), so these spans agree bit for bit with the
 * per-element builds.  Tails (fewer than 8 elements) go through an 8-lane
 * stack copy: the mask is the count of valid lanes.
 */
#ifndef GD_AVX2_16_H
#define GD_AVX2_16_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* the pack: a plain GCC vector (arithmetic on __m256, which may alias,
 * gives another type, and ?: between the two does not compile) */
typedef float gd_f32x8 __attribute__((vector_size(32)));

#define GD_V3 __attribute__((target("arch=x86-64-v3")))
#define GD_V3_INLINE static inline __attribute__((always_inline)) GD_V3

/* vpshufb controls (per 128-bit lane; 0x80 writes zero).  Widen: lane 0
 * takes values 0-3 of the broadcast 16 bytes, lane 1 values 4-7, each into
 * bytes 2-3 of a 32-bit lane.  Narrow: bytes 2-3 of each 32-bit lane to the
 * low 8 bytes of its 128-bit lane. */
#define GD_WIDEN_LANE(v) (char)0x80, (char)0x80, (char)(2 * (v)), (char)(2 * (v) + 1)
#define GD_NARROW_LANE 2, 3, 6, 7, 10, 11, 14, 15, -128, -128, -128, -128, -128, -128, -128, -128

GD_V3_INLINE gd_f32x8 gd_v3_load_f32(const float *p, int n)
{
    if (n == 8)
        return (gd_f32x8)_mm256_loadu_ps(p);
    float t[8] = {0};
    memcpy(t, p, (size_t)n * sizeof *p);
    return (gd_f32x8)_mm256_loadu_ps(t);
}

GD_V3_INLINE void gd_v3_store_f32(float *p, gd_f32x8 x, int n)
{
    if (n == 8) {
        _mm256_storeu_ps(p, x);
        return;
    }
    float t[8];
    _mm256_storeu_ps(t, x);
    memcpy(p, t, (size_t)n * sizeof *p);
}

GD_V3_INLINE gd_f32x8 gd_v3_load_bf16(const uint16_t *p, int n)
{
    __m128i h;
    if (n == 8) {
        h = _mm_loadu_si128((const __m128i *)p);
    } else {
        uint16_t t[8] = {0};
        memcpy(t, p, (size_t)n * sizeof *p);
        h = _mm_loadu_si128((const __m128i *)t);
    }
    const __m256i widen = _mm256_setr_epi8(
        GD_WIDEN_LANE(0), GD_WIDEN_LANE(1), GD_WIDEN_LANE(2), GD_WIDEN_LANE(3),
        GD_WIDEN_LANE(4), GD_WIDEN_LANE(5), GD_WIDEN_LANE(6), GD_WIDEN_LANE(7));
    return (gd_f32x8)_mm256_castsi256_ps(_mm256_shuffle_epi8(_mm256_broadcastsi128_si256(h), widen));
}

GD_V3_INLINE void gd_v3_store_bf16(uint16_t *p, gd_f32x8 x, int n)
{
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i t = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb);
    const __m256 r = _mm256_blendv_ps(_mm256_castsi256_ps(t),
                                      _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)),
                                      _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    const __m256i narrow = _mm256_setr_epi8(GD_NARROW_LANE, GD_NARROW_LANE);
    const __m256i g = _mm256_shuffle_epi8(_mm256_castps_si256(r), narrow);
    const __m128i h = _mm_unpacklo_epi64(_mm256_castsi256_si128(g),
                                         _mm256_extracti128_si256(g, 1));
    if (n == 8) {
        _mm_storeu_si128((__m128i *)p, h);
        return;
    }
    uint16_t s[8];
    _mm_storeu_si128((__m128i *)s, h);
    memcpy(p, s, (size_t)n * sizeof *p);
}

#undef GD_WIDEN_LANE
#undef GD_NARROW_LANE

/* torch.maximum: a where a is NaN or a > b, else b */
GD_V3_INLINE gd_f32x8 gd_v3_max_nan(gd_f32x8 a, gd_f32x8 b)
{
    const __m256 take_a = _mm256_or_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q),
                                       _mm256_cmp_ps(a, b, _CMP_GT_OQ));
    return (gd_f32x8)_mm256_blendv_ps(b, a, take_a);
}

GD_V3_INLINE gd_f32x8 gd_v3_abs(gd_f32x8 x)
{
    return (gd_f32x8)_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
}

GD_V3_INLINE gd_f32x8 gd_v3_blend(gd_f32x8 take_a, gd_f32x8 a, gd_f32x8 b)
{
    return (gd_f32x8)_mm256_blendv_ps(b, a, take_a);
}

#define GD_V3_CMP(name, predicate)                                            \
    GD_V3_INLINE gd_f32x8 gd_v3_##name(gd_f32x8 a, gd_f32x8 b)               \
    {                                                                         \
        return (gd_f32x8)_mm256_cmp_ps(a, b, predicate);                      \
    }
GD_V3_CMP(gt, _CMP_GT_OQ)
GD_V3_CMP(lt, _CMP_LT_OQ)
GD_V3_CMP(eq, _CMP_EQ_OQ)
#undef GD_V3_CMP

GD_V3_INLINE gd_f32x8 gd_v3_sqrt(gd_f32x8 x)
{
    return (gd_f32x8)_mm256_sqrt_ps(x);
}

#endif /* GD_AVX2_16_H */
