/*
 * gd_internal.h: what the kernel file and the runtime share, not exported.
 *
 * GD_HAVE_X86_DISPATCH: on x86-64 with GCC >= 12 or Clang >= 14 the
 * optimizer kernels are built for x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA)
 * and the baseline, and gd_isa_level() picks one per process.  Elsewhere
 * only the compiler's own target is built.
 *
 * GD_CLONES marks a simple loop (the bandwidth probe) for the same dispatch
 * done by the dynamic loader (target_clones, ifunc); empty elsewhere.
 */
#ifndef GD_INTERNAL_H
#define GD_INTERNAL_H

#include "gdcore.h"

#if defined(__x86_64__) && defined(__ELF__) && !defined(GD_NO_CLONES) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12) ||      \
     (defined(__clang__) && __clang_major__ >= 14))
#define GD_HAVE_X86_DISPATCH 1
#define GD_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GD_HAVE_X86_DISPATCH 0
#define GD_CLONES
#endif

/* A function a translation unit may leave unused (the per-step scalar
 * functions of some kernel bodies, used by gd_kernels.c's entry points but
 * not by gd_kernels16.c's spans). */
#if defined(__GNUC__) || defined(__clang__)
#define GD_MAYBE_UNUSED __attribute__((unused))
#else
#define GD_MAYBE_UNUSED
#endif

/* Work split granularity: a thread's share of a buffer starts at a multiple
 * of this many elements (a whole number of 64-byte lines for both dtypes). */
#define GD_SPLIT_ALIGN 64

/* Updates elements [begin, end) of one buffer. */
typedef void (*gd_span_fn)(const void *options, const gd_buffer *buffer,
                           int64_t begin, int64_t end);

/* The spans of every kernel for bfloat16 grads (gd_kernels16.c):
 * [kernel][format][isa], isa as gd_isa_level(), format + (state is float32)
 * with format: GD_STAGED16 the param a float32 block of gd_staged.inc;
 * the bfloat16 param itself, updated in place and rounded: GD_INPLACE16 +
 * 2 * rounding (gd_rounding: nearest, stochastic, Kahan).  Stochastic and
 * Kahan in place exist on the AVX-512 builds only (NULL elsewhere). */
enum { GD_STAGED16 = 0, GD_INPLACE16 = 2, GD_FORMATS16 = 8 };
extern const gd_span_fn gd_spans16[][GD_FORMATS16][4];

/* Runs span over every element of every buffer, serially below the parallel
 * threshold, else split evenly over the threads by total element count. */
void gd_run(gd_span_fn span, const void *options, const gd_buffer *buffers,
            int64_t count);

/* Instruction set of the optimizer kernels in this process.  x86-64-v4 with
 * AVX512-BF16 differs from x86-64-v4 only in the bfloat16 spans (they
 * narrow with vcvtneps2bf16); every other table repeats its v4 entry. */
enum {
    GD_ISA_BASELINE = 0,
    GD_ISA_X86_64_V3 = 1,
    GD_ISA_X86_64_V4 = 2,
    GD_ISA_X86_64_V4_BF16 = 3,
    GD_ISA_COUNT = 4
};

/* The best level the CPU supports, or the lower one the environment
 * variable GDCORE_ISA names ("x86-64-v4-bf16", "x86-64-v4", "x86-64-v3",
 * "baseline"), read once when the library loads. */
int gd_isa_level(void);

/* A per-param scalar as the buffer stores it: float32-rounded unless the
 * scalar state is float64. */
/* x rounded to float32.  Through a volatile: GCC 12 at -O3 drops the
 * (double)(float)x round trip when it pairs two such stores into one vector
 * store (seen on ASGD's eta and mu). */
static inline double gd_round_to_float(double x)
{
    volatile float rounded = (float)x;
    return rounded;
}

static inline double gd_scalar_round(const gd_buffer *b, double x)
{
    return b->scalar_float64 ? x : gd_round_to_float(x);
}

/* base^step, exactly pow(base, step), memoised per thread for the last few
 * (base, step) pairs (bias corrections of a batch at one step). */
double gd_pow_step(double base, int64_t step);

#endif /* GD_INTERNAL_H */
