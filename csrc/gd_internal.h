/*
 * gd_internal.h: what the kernel file and the runtime share, not exported.
 *
 * GD_CLONES marks a loop for runtime instruction-set dispatch.  On x86-64
 * with GCC >= 12 or Clang >= 14 (ELF, ifunc) it compiles the function three
 * times, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and the baseline,
 * and the dynamic loader binds the best one the CPU supports.  Elsewhere it
 * is empty and the compiler's own target is used.  gd_isa_selected() in
 * gd_runtime.c mirrors the same order.
 */
#ifndef GD_INTERNAL_H
#define GD_INTERNAL_H

#include "gdcore.h"

#if defined(__x86_64__) && defined(__ELF__) && !defined(GD_NO_CLONES) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12) ||      \
     (defined(__clang__) && __clang_major__ >= 14))
#define GD_HAVE_CLONES 1
#define GD_CLONES \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define GD_HAVE_CLONES 0
#define GD_CLONES
#endif

/* Work split granularity: a thread's share of a buffer starts at a multiple
 * of this many elements (a whole number of 64-byte lines for both dtypes). */
#define GD_SPLIT_ALIGN 64

/* Updates elements [begin, end) of one buffer. */
typedef void (*gd_span_fn)(const void *options, const gd_buffer *buffer,
                           int64_t begin, int64_t end);

/* Runs span over every element of every buffer, serially below the parallel
 * threshold, else split evenly over the threads by total element count. */
void gd_run(gd_span_fn span, const void *options, const gd_buffer *buffers,
            int64_t count);

/* base^step, exactly pow(base, step), memoised per thread for the last few
 * (base, step) pairs (bias corrections of a batch at one step). */
double gd_pow_step(double base, int64_t step);

#endif /* GD_INTERNAL_H */
