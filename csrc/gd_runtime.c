/*
 * gd_runtime.c: threading and instruction-set reporting, shared by all kernels.
 *
 * Design note.  A kernel call hands gd_run a batch of buffers.  Below
 * gd_parallel_threshold() total elements, or with one thread, the span
 * function runs over each buffer in turn on the calling thread: no OpenMP
 * construct is entered (the serial branch of an `omp parallel if(...)` runs
 * far slower than a plain loop).  Above it, the total element count is cut
 * into equal shares, one per thread, whatever the buffer boundaries; a share
 * boundary inside a buffer is rounded down to a multiple of GD_SPLIT_ALIGN so
 * that no two threads write the same cache line.  How an element is
 * computed depends only on its index in its buffer (kernels are compiled with
 * -ffp-contract=off; the AVX-512 build's choice of square root follows the
 * index too), so results are bitwise identical for any thread count.
 *
 * GNU OpenMP cannot be used in a child process forked after its thread pool
 * started (the first parallel region in the child waits forever for threads
 * that were not forked).  A pthread_atfork handler therefore pins a forked
 * child to one thread, for good: set_num_threads has no effect there.
 */
#include "gd_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(_OPENMP) && defined(__unix__)
#include <pthread.h>
#define GD_FORK_GUARD 1
#endif

/* A thread needs at least this many elements to be worth waking. */
#define GD_MIN_ELEMENTS_PER_THREAD 32768

static int gd_num_threads = 0; /* 0: not set yet, use the OpenMP default */
static int gd_forked_child = 0;

#ifdef GD_FORK_GUARD
static void gd_after_fork_in_child(void)
{
    gd_forked_child = 1;
    gd_num_threads = 1;
}

__attribute__((constructor)) static void gd_register_fork_guard(void)
{
    pthread_atfork(NULL, NULL, gd_after_fork_in_child);
}
#endif

void gd_set_num_threads(int n)
{
    gd_num_threads = gd_forked_child || n < 1 ? 1 : n;
}

int gd_get_num_threads(void)
{
#ifdef _OPENMP
    if (gd_num_threads == 0)
        gd_num_threads = omp_get_max_threads();
    return gd_num_threads;
#else
    return 1;
#endif
}

int gd_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int64_t gd_parallel_threshold(void)
{
    return 2 * (int64_t)GD_MIN_ELEMENTS_PER_THREAD;
}

typedef struct gd_cursor {
    int64_t buffer; /* index into the batch; == count means the end */
    int64_t offset; /* element offset inside that buffer            */
} gd_cursor;

/* The position of global element index `at`, rounded down to the split
 * alignment inside its buffer. */
static gd_cursor gd_locate(const gd_buffer *buffers, int64_t count, int64_t at)
{
    gd_cursor c = {0, 0};
    while (c.buffer < count && at >= buffers[c.buffer].n) {
        at -= buffers[c.buffer].n;
        c.buffer++;
    }
    c.offset = c.buffer < count ? at - at % GD_SPLIT_ALIGN : 0;
    return c;
}

static void gd_run_range(gd_span_fn span, const void *options,
                         const gd_buffer *buffers, int64_t count,
                         gd_cursor from, gd_cursor to)
{
    for (int64_t j = from.buffer; j <= to.buffer && j < count; ++j) {
        int64_t begin = j == from.buffer ? from.offset : 0;
        int64_t end = j == to.buffer ? to.offset : buffers[j].n;
        if (end > begin)
            span(options, &buffers[j], begin, end);
    }
}

void gd_run(gd_span_fn span, const void *options, const gd_buffer *buffers,
            int64_t count)
{
    int64_t total = 0;
    for (int64_t j = 0; j < count; ++j)
        total += buffers[j].n;

    int64_t threads = gd_get_num_threads();
    if (threads > total / GD_MIN_ELEMENTS_PER_THREAD)
        threads = total / GD_MIN_ELEMENTS_PER_THREAD;

    if (threads <= 1) {
        gd_cursor end = {count, 0};
        gd_run_range(span, options, buffers, count, (gd_cursor){0, 0}, end);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads((int)threads)
    {
        int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        gd_cursor from = gd_locate(buffers, count, total / nt * t + total % nt * t / nt);
        gd_cursor to = t + 1 == nt
                           ? (gd_cursor){count, 0}
                           : gd_locate(buffers, count,
                                       total / nt * (t + 1) + total % nt * (t + 1) / nt);
        gd_run_range(span, options, buffers, count, from, to);
    }
#endif
}

double gd_pow_step(double base, int64_t step)
{
    /* A few (base, step) -> base^step results per thread: a batch of many
     * buffers at the same step needs each bias correction once. */
    enum { SLOTS = 4 };
    static _Thread_local struct { double base; int64_t step; double value; } cache[SLOTS];
    static _Thread_local int next;
    for (int i = 0; i < SLOTS; ++i)
        if (cache[i].step == step && cache[i].base == base && step != 0)
            return cache[i].value;
    double value = pow(base, (double)step);
    cache[next].base = base;
    cache[next].step = step;
    cache[next].value = value;
    next = (next + 1) % SLOTS;
    return value;
}

static int gd_isa = -1;

static int gd_isa_supported(void)
{
#if GD_HAVE_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return GD_ISA_X86_64_V4;
    if (__builtin_cpu_supports("x86-64-v3"))
        return GD_ISA_X86_64_V3;
#endif
    return GD_ISA_BASELINE;
}

__attribute__((constructor)) static void gd_isa_init(void)
{
    int level = gd_isa_supported();
    const char *want = getenv("GDCORE_ISA");
    if (want != NULL) {
        int asked = !strcmp(want, "baseline")    ? GD_ISA_BASELINE
                    : !strcmp(want, "x86-64-v3") ? GD_ISA_X86_64_V3
                    : !strcmp(want, "x86-64-v4") ? GD_ISA_X86_64_V4
                                                 : level;
        if (asked < level)
            level = asked;
    }
    gd_isa = level;
}

int gd_isa_level(void)
{
    if (gd_isa < 0)
        gd_isa_init();
    return gd_isa;
}

const char *gd_isa_compiled(void)
{
#if GD_HAVE_X86_DISPATCH
    return "x86-64-v4 (AVX-512) | x86-64-v3 (AVX2+FMA) | baseline";
#else
    return "compiler default target only";
#endif
}

const char *gd_isa_selected(void)
{
#if GD_HAVE_X86_DISPATCH
    static const char *names[] = {"x86-64 baseline (SSE2)", "x86-64-v3 (AVX2+FMA)",
                                  "x86-64-v4 (AVX-512)"};
    return names[gd_isa_level()];
#else
    return "compiler default target";
#endif
}
