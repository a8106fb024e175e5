/*
 * gd_half.h: bfloat16 and float16 storage for gdcore's kernels, as bit
 * operations on uint16_t and float32 bit patterns.
 *
 * Design note.  A 16-bit param, grad or state element is only ever a storage
 * format: the kernels compute in float32 (gd_kernels.c widens a block of
 * elements into float32 scratch, runs the float32 body of the optimizer on
 * it, and narrows the results back).  These functions do the widening and
 * narrowing, one element at a time, written without branches or library
 * calls so that GCC and clang vectorise the loops around them for every
 * instruction-set build (SSE2, AVX2, AVX-512) and NEON.
 *
 * Narrowing modes (how a float32 result becomes 16 bits):
 *   nearest     round to nearest, ties to even (IEEE's default; what torch
 *               and DeepSpeed do);
 *   stochastic  round up with probability equal to the fraction of an ulp
 *               that rounding to zero would drop: bfloat16 and normal
 *               float16 values take 16 and 13 random bits added below the
 *               kept ones, so the rounding is exactly unbiased for inputs on
 *               that grid (every float32); float16 subnormals compare the
 *               dropped fraction with 24 random bits (bias below 2^-24 ulp);
 *   Kahan       (gd_kernels.c) nearest, plus the residual kept in a second
 *               16-bit buffer and added back before the next update.
 * NaN stays NaN (bfloat16: the canonical 0x7FC0, as torch; float16: quiet,
 * sign and leading payload kept, as F16C's vcvtps2ph), infinities stay
 * infinite; values past the largest finite 16-bit value round to infinity
 * as IEEE rounding does.
 *
 * Random bits: gd_random_bits(key, i) is a hash of the element index under a
 * 32-bit key (float16 takes it whole); a bfloat16 element takes 16 bits,
 * half of the hash of its pair index i / 2 (gd_random16: one hash for two
 * elements); gd_stream_key derives the key from (seed, stream, step, the
 * index's high 32 bits) with splitmix64's finaliser.  Every input is part of
 * the caller's data (stream: the buffer's, typically its param's position in
 * the optimizer), never of the call, so the bits of an element do not depend
 * on the thread count or on how buffers are grouped into calls.
 * tests/reference.py reproduces both functions in NumPy.
 */
#ifndef GD_HALF_H
#define GD_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t gd_f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float gd_f32_from_bits(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* mask: all ones where cond holds, else zero (selects without branches,
 * which the vectorisers take where nested ?: can defeat them) */
static inline uint32_t gd_mask(int cond)
{
    return 0u - (uint32_t)(cond != 0);
}

static inline uint32_t gd_select(uint32_t mask, uint32_t a, uint32_t b)
{
    return (a & mask) | (b & ~mask);
}

/* All ones where x is finite, zero where it is infinite or NaN. */
static inline uint32_t gd_finite_mask(float x)
{
    return gd_mask((gd_f32_bits(x) & 0x7F800000u) != 0x7F800000u);
}

/* ------------------------------------------------------------ bfloat16 */
static inline float gd_bf16_to_f32(uint16_t h)
{
    return gd_f32_from_bits((uint32_t)h << 16);
}

/* NaN becomes bfloat16's canonical quiet NaN 0x7FC0, as in torch (c10's
 * round_to_nearest_even and its vectorised conversions): a float compare
 * and a select on a constant, which vectorise to two instructions where
 * keeping the NaN's sign and payload took five. */
#define GD_BF16_NAN 0x7FC0u

/* The bfloat16 bits of non-NaN x rounded to nearest, ties to even. */
static inline uint32_t gd_bf16_nearest_bits(float x)
{
    uint32_t u = gd_f32_bits(x);
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

static inline uint16_t gd_f32_to_bf16_nearest(float x)
{
    return (uint16_t)(x != x ? GD_BF16_NAN : gd_bf16_nearest_bits(x));
}

/* The same bits with the NaN select written as masks: for loops that do
 * more per element (Kahan's residual), where GCC's if-conversion gives up
 * on the ?: form and leaves the loop scalar; the ?: form is the faster one
 * where it vectorises. */
static inline uint16_t gd_f32_to_bf16_nearest_masked(float x)
{
    return (uint16_t)gd_select(gd_mask(x != x), GD_BF16_NAN, gd_bf16_nearest_bits(x));
}

/* random16: 16 random bits (gd_random16). */
static inline uint16_t gd_f32_to_bf16_stochastic(float x, uint32_t random16)
{
    uint32_t u = gd_f32_bits(x);
    uint32_t rounded = (u + random16) >> 16;
    return (uint16_t)(x != x ? GD_BF16_NAN : rounded);
}

/* ------------------------------------------------------------- float16 */
static inline float gd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t rest = h & 0x7FFFu;
    /* normal: rebias the exponent (15 -> 127); inf/NaN: exponent all ones;
     * zero/subnormal: the integer significand times 2^-24, exactly */
    uint32_t normal = (rest << 13) + 0x38000000u;
    uint32_t special = (rest << 13) | 0x7F800000u;
    uint32_t tiny = gd_f32_bits((float)(int32_t)rest * 0x1p-24f);
    uint32_t magnitude = gd_select(gd_mask(rest >= 0x7C00u), special,
                                   gd_select(gd_mask(rest >= 0x0400u), normal, tiny));
    return gd_f32_from_bits(sign | magnitude);
}

/* The magnitude bits of float16 for |x| below the smallest normal float16
 * (2^-14), rounded to nearest even: adding 0.5 (whose ulp is 2^-24, the
 * float16 subnormal spacing) rounds |x| to that grid, exactly as IEEE. */
static inline uint32_t gd_f16_tiny_nearest(float magnitude)
{
    return gd_f32_bits(magnitude + 0.5f) - 0x3F000000u;
}

static inline uint16_t gd_f32_to_f16_nearest(float x)
{
    uint32_t u = gd_f32_bits(x);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;
    uint32_t normal = ((a - 0x38000000u) + 0x0FFFu + ((a >> 13) & 1u)) >> 13;
    uint32_t tiny = gd_f16_tiny_nearest(gd_f32_from_bits(a));
    /* 0x477FF000 = 65520: from there on, nearest is infinity */
    uint32_t magnitude = gd_select(
        gd_mask(a > 0x7F800000u), 0x7E00u | ((a >> 13) & 0x01FFu),
        gd_select(gd_mask(a >= 0x477FF000u), 0x7C00u,
                  gd_select(gd_mask(a >= 0x38800000u), normal, tiny)));
    return (uint16_t)(sign | magnitude);
}

static inline uint16_t gd_f32_to_f16_stochastic(float x, uint32_t random)
{
    uint32_t u = gd_f32_bits(x);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;
    /* normal range: 13 random bits below the kept ones; the carry may reach
     * infinity (0x7C00), which is where rounding up from 65504 goes */
    uint32_t normal = ((a - 0x38000000u) + (random >> 19)) >> 13;
    /* subnormal range: |x| in units of 2^-24, split into whole and fraction
     * (both exact), rounded up when the fraction exceeds a uniform draw */
    /* (units < 2^10 where used; elsewhere clamped to keep the conversion
     * defined: its result is not selected) */
    float units = gd_f32_from_bits(a & gd_mask(a < 0x38800000u)) * 0x1p24f;
    int32_t whole = (int32_t)units;
    float fraction = units - (float)whole;
    float draw = (float)(int32_t)(random >> 8) * 0x1p-24f;
    uint32_t tiny = (uint32_t)whole + (gd_mask(fraction > draw) & 1u);
    uint32_t magnitude = gd_select(
        gd_mask(a > 0x7F800000u), 0x7E00u | ((a >> 13) & 0x01FFu),
        gd_select(gd_mask(a >= 0x47800000u), 0x7C00u,
                  gd_select(gd_mask(a >= 0x38800000u), normal, tiny)));
    return (uint16_t)(sign | magnitude);
}

/* --------------------------------------------------------- random bits */
static inline uint64_t gd_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9u;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBu;
    x ^= x >> 31;
    return x;
}

/* The 32-bit key of elements [high << 32, (high + 1) << 32) of a buffer. */
static inline uint32_t gd_stream_key(uint64_t seed, uint64_t stream, int64_t step,
                                     uint64_t high)
{
    uint64_t k = gd_mix64(seed + 0x9E3779B97F4A7C15u);
    k = gd_mix64(k ^ stream);
    k = gd_mix64(k ^ (uint64_t)step);
    k = gd_mix64(k ^ high);
    return (uint32_t)(k >> 32);
}

/* 32 random bits for element index (low 32 bits) under key: a bijective
 * integer hash of index ^ key (two multiply-xorshift rounds). */
static inline uint32_t gd_random_bits(uint32_t key, uint32_t index)
{
    uint32_t x = index ^ key;
    x ^= x >> 16;
    x *= 0x21F0AAADu;
    x ^= x >> 15;
    x *= 0x735A2D97u;
    x ^= x >> 15;
    return x;
}

/* 16 random bits for bfloat16 element index (which uses 16): one hash serves
 * the two elements 2k and 2k + 1, the even one its low half, the odd one
 * its high half. */
static inline uint32_t gd_random16(uint32_t key, uint32_t index)
{
    uint32_t x = gd_random_bits(key, index >> 1);
    return (index & 1u) ? x >> 16 : x & 0xFFFFu;
}

#endif /* GD_HALF_H */
