/*
 * gd_runtime.c: threading and instruction-set reporting, shared by all kernels.
 *
 * Design note (threads).  A kernel call hands gd_run a batch of buffers.
 * Below gd_parallel_threshold() total elements, or with one thread, the span
 * function runs over each buffer in turn on the calling thread: a plain loop,
 * no pool involved.  Above it, the batch's elements, counted across buffer
 * boundaries, are cut into chunks of GD_CHUNK elements (a boundary inside a
 * buffer rounded down to a multiple of GD_SPLIT_ALIGN, so no two chunks write
 * one cache line).  Chunk boundaries depend only on the buffers, and how an
 * element is computed depends only on its index in its buffer (kernels are
 * built with -ffp-contract=off; the AVX-512 build's choice of square root
 * follows the index), so results are bitwise identical for any thread count.
 *
 * Chunks are claimed dynamically from one atomic counter.  The calling
 * thread publishes the job, wakes sleeping workers and starts claiming at
 * once; workers join when they run.  Once every chunk is claimed the caller
 * waits only for chunks in flight, never for a worker that has not started
 * one.  A core kept busy by another process, or a worker still waking up,
 * therefore costs at most one chunk (about 10 us), not a share of the step.
 *
 * Why a pool of our own and not OpenMP: an OpenMP parallel region ends in a
 * barrier that waits for every thread of the team, started or not, and GNU
 * OpenMP's idle threads spin for milliseconds (its default spin count) and
 * then take milliseconds to wake; it also cannot run in a child forked after
 * its threads started.  The pool is POSIX threads and C11 atomics.
 *
 * Idle workers spin for gd_spin_ns (GD_SPIN_US_DEFAULT = 100 us, or
 * GDCORE_SPIN_US read once at load, 0 to 10,000) waiting for the next job,
 * then sleep on a condition variable; an idle process burns no core after
 * that.  The spin yields the core every few polls, and stops early when a
 * yield takes longer than GD_YIELD_CONTENDED_NS: another thread wants the
 * core, and a spinning worker would only take its time.  Workers are created
 * on first need (up to num_threads - 1) and live until exit.  One call owns
 * the pool at a time: a call from another thread while it is busy runs on its
 * own thread, serially, instead of waiting.
 *
 * Measured with one of two cores kept busy by another process: the kernel
 * wakes a sleeping worker on the caller's core (the other one is busy), where
 * it would only take turns with the caller.  A worker that finds itself on
 * the caller's core (sched_getcpu) narrows its own CPU set to the others for
 * that job (sched_setaffinity on the worker thread only; restored after the
 * job), so it shares the busy core with the other process instead of the
 * caller's; where that is not possible it leaves the job to the caller.
 * The caller never sleeps while it waits for chunks in flight (a thread that
 * sleeps may wake on the busy core); it spins and yields.
 *
 * Protocol.  `claim` holds (generation << 32 | next chunk).  A worker that
 * sees a new generation reads the job description (relaxed), then claims
 * chunk k by CAS from (g, k) to (g, k + 1).  The caller ends a job by
 * storing (g, GD_CLOSED) and only then, after a release fence, writes the
 * next job: a successful CAS therefore proves the description it read was
 * job g's (the seqlock argument: a read that saw a later write would make
 * the close visible to the CAS, which would fail).  A worker bumps `done`
 * after each chunk; the caller's acquire load of `done` makes the writes of
 * every chunk visible before gd_run returns.
 *
 * Fork: the child has none of the workers.  A pthread_atfork handler resets
 * the pool in the child, which creates workers of its own when it needs them.
 */
#define _GNU_SOURCE
#include "gd_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if GD_HAVE_X86_DISPATCH
#include <cpuid.h>
#endif

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#if defined(_POSIX_THREADS) && _POSIX_THREADS > 0 && !defined(__STDC_NO_ATOMICS__) && \
    !defined(GD_NO_THREADS)
#define GD_HAVE_POOL 1
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#else
#define GD_HAVE_POOL 0
#endif

/* Elements per chunk: the claim granularity, and the fewest elements per
 * thread for a call to go parallel. */
#define GD_CHUNK 32768
#define GD_SPIN_US_DEFAULT 100
#define GD_SPIN_US_MAX 10000
#define GD_YIELD_CONTENDED_NS 20000


int64_t gd_parallel_threshold(void)
{
    return 2 * (int64_t)GD_CHUNK;
}

/* ------------------------------------------------------------ the chunks */

/* A thread's position while it walks a batch: buffer index and the global
 * index of that buffer's first element.  Only moves forward, as the chunks a
 * thread claims only increase. */
typedef struct gd_walk {
    int64_t buffer, base;
} gd_walk;

static int64_t gd_align_down(int64_t i)
{
    return i - i % GD_SPLIT_ALIGN;
}

/* Runs global elements [from, to) of the batch. */
static void gd_run_elements(gd_span_fn span, const void *options,
                            const gd_buffer *buffers, int64_t count, gd_walk *walk,
                            int64_t from, int64_t to)
{
    while (walk->buffer < count && walk->base + buffers[walk->buffer].n <= from) {
        walk->base += buffers[walk->buffer].n;
        walk->buffer++;
    }
    int64_t base = walk->base;
    for (int64_t j = walk->buffer; j < count && base < to; base += buffers[j].n, ++j) {
        int64_t n = buffers[j].n;
        int64_t begin = from > base ? gd_align_down(from - base) : 0;
        int64_t end = to - base >= n ? n : gd_align_down(to - base);
        if (end > begin)
            span(options, &buffers[j], begin, end);
    }
}

static void gd_run_serial(gd_span_fn span, const void *options,
                          const gd_buffer *buffers, int64_t count)
{
    for (int64_t j = 0; j < count; ++j)
        if (buffers[j].n > 0)
            span(options, &buffers[j], 0, buffers[j].n);
}

#if GD_HAVE_POOL
/* ------------------------------------------------------------- the pool */

#define GD_CLOSED 0xffffffffu

typedef struct gd_job {
    _Atomic(gd_span_fn) span;
    _Atomic(const void *) options;
    _Atomic(const gd_buffer *) buffers;
    _Atomic int64_t count, total, chunk, chunks, helpers;
    _Atomic int caller_cpu; /* where the caller runs, -1 if unknown */
} gd_job;

static struct gd_pool {
    _Alignas(64) _Atomic uint64_t claim; /* generation << 32 | next chunk       */
    _Alignas(64) _Atomic int64_t done;   /* chunks finished in this generation  */
    _Alignas(64) _Atomic int busy;       /* a call owns the pool                */
    _Atomic int sleepers;                /* workers waiting on `wake`           */
    uint32_t generation;                 /* the owner's last generation         */
    int workers;                         /* threads created (owner only)        */
    gd_job job;
    pthread_mutex_t lock;
    pthread_cond_t wake;
} gd_pool = {.claim = GD_CLOSED,
             .lock = PTHREAD_MUTEX_INITIALIZER,
             .wake = PTHREAD_COND_INITIALIZER};

static int64_t gd_spin_ns = GD_SPIN_US_DEFAULT * 1000;

static inline void gd_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t gd_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int gd_current_cpu(void)
{
#ifdef __linux__
    return sched_getcpu();
#else
    return -1;
#endif
}

/* A worker's own CPU set (as inherited when it started), and moving it off
 * one CPU for a job: Linux only, elsewhere the worker leaves the job. */
#ifdef __linux__
static _Thread_local cpu_set_t gd_worker_cpus;
static _Thread_local int gd_worker_cpus_known;

static void gd_remember_cpus(void)
{
    gd_worker_cpus_known = sched_getaffinity(0, sizeof gd_worker_cpus, &gd_worker_cpus) == 0;
}

static int gd_move_off(int cpu)
{
    if (!gd_worker_cpus_known)
        return 0;
    cpu_set_t others = gd_worker_cpus;
    CPU_CLR(cpu, &others);
    return CPU_COUNT(&others) > 0 && sched_setaffinity(0, sizeof others, &others) == 0;
}

static void gd_move_back(void)
{
    sched_setaffinity(0, sizeof gd_worker_cpus, &gd_worker_cpus);
}
#else
static void gd_remember_cpus(void) {}
static int gd_move_off(int cpu) { (void)cpu; return 0; }
static void gd_move_back(void) {}
#endif

static inline uint32_t gd_generation_of(uint64_t claim)
{
    return (uint32_t)(claim >> 32);
}

/* Claims and runs chunks of generation g until none is left.  `w` is a
 * value of `claim` with generation g; `id` is 0 for the caller. */
static void gd_help(uint64_t w, int64_t id)
{
    uint32_t g = gd_generation_of(w);
    gd_job *job = &gd_pool.job;
    gd_span_fn span = atomic_load_explicit(&job->span, memory_order_relaxed);
    const void *options = atomic_load_explicit(&job->options, memory_order_relaxed);
    const gd_buffer *buffers = atomic_load_explicit(&job->buffers, memory_order_relaxed);
    int64_t count = atomic_load_explicit(&job->count, memory_order_relaxed);
    int64_t total = atomic_load_explicit(&job->total, memory_order_relaxed);
    int64_t chunk = atomic_load_explicit(&job->chunk, memory_order_relaxed);
    int64_t chunks = atomic_load_explicit(&job->chunks, memory_order_relaxed);
    int64_t helpers = atomic_load_explicit(&job->helpers, memory_order_relaxed);
    int caller_cpu = atomic_load_explicit(&job->caller_cpu, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire);
    if (id > helpers) /* a worker beyond this call's thread count */
        return;
    /* A worker woken on the caller's own core would only take turns with it:
     * move to another core for this job, or leave the job to the caller. */
    int moved = 0;
    if (id != 0 && caller_cpu >= 0 && gd_current_cpu() == caller_cpu) {
        if (!gd_move_off(caller_cpu))
            return;
        moved = 1;
    }
    gd_walk walk = {0, 0};
    for (;;) {
        uint32_t k = (uint32_t)w;
        if (gd_generation_of(w) != g || k >= (uint64_t)chunks)
            break;
        if (!atomic_compare_exchange_weak_explicit(&gd_pool.claim, &w, w + 1,
                                                   memory_order_relaxed,
                                                   memory_order_relaxed))
            continue; /* w now holds the current value */
        int64_t from = (int64_t)k * chunk;
        int64_t to = total - from > chunk ? from + chunk : total;
        gd_run_elements(span, options, buffers, count, &walk, from, to);
        atomic_fetch_add_explicit(&gd_pool.done, 1, memory_order_release);
        w = atomic_load_explicit(&gd_pool.claim, memory_order_relaxed);
    }
    if (moved)
        gd_move_back();
}

/* Waits until `claim` shows a generation other than `seen`: spins for up to
 * gd_spin_ns, then sleeps until the caller signals `wake`. */
static uint64_t gd_wait_for_job(uint32_t seen)
{
    uint64_t w;
    int64_t deadline = gd_spin_ns > 0 ? gd_now_ns() + gd_spin_ns : 0;
    for (unsigned i = 1; deadline; ++i) {
        w = atomic_load_explicit(&gd_pool.claim, memory_order_acquire);
        if (gd_generation_of(w) != seen)
            return w;
        gd_cpu_relax();
        if (i % 16 == 0) {
            int64_t now = gd_now_ns();
            if (now > deadline)
                break;
            /* A yield that takes long means another thread wants this
             * core: stop spinning and sleep. */
            sched_yield();
            if (gd_now_ns() - now > GD_YIELD_CONTENDED_NS)
                break;
        }
    }
    pthread_mutex_lock(&gd_pool.lock);
    atomic_fetch_add(&gd_pool.sleepers, 1); /* seq_cst: pairs with gd_post */
    while (gd_generation_of(w = atomic_load(&gd_pool.claim)) == seen)
        pthread_cond_wait(&gd_pool.wake, &gd_pool.lock);
    atomic_fetch_sub(&gd_pool.sleepers, 1);
    pthread_mutex_unlock(&gd_pool.lock);
    return w;
}

typedef struct gd_worker_start {
    int64_t id;
    uint32_t seen;
} gd_worker_start;

static void *gd_worker_main(void *arg)
{
    gd_worker_start start = *(gd_worker_start *)arg;
    free(arg);
    gd_remember_cpus();
    for (uint32_t seen = start.seen;;) {
        uint64_t w = gd_wait_for_job(seen);
        seen = gd_generation_of(w);
        gd_help(w, start.id);
    }
    return NULL;
}

/* Creates workers up to `wanted` (owner only); returns how many exist.  They
 * start with every signal blocked, so signals go to the process's own
 * threads (Python's handlers run in the main thread anyway). */
static int gd_grow_pool(int wanted)
{
    if (gd_pool.workers >= wanted)
        return gd_pool.workers;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    while (gd_pool.workers < wanted) {
        gd_worker_start *start = malloc(sizeof *start);
        if (start == NULL)
            break;
        start->id = gd_pool.workers + 1;
        start->seen = gd_pool.generation;
        pthread_t thread;
        if (pthread_create(&thread, &attr, gd_worker_main, start) != 0) {
            free(start);
            break;
        }
        gd_pool.workers++;
    }
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return gd_pool.workers;
}

/* Every chunk is claimed: waits for those still in flight.  The caller
 * never sleeps here (a thread that sleeps may wake on a busy core), but
 * yields its core in case the worker it waits for shares it. */
static void gd_finish(int64_t chunks)
{
    for (unsigned i = 1;
         atomic_load_explicit(&gd_pool.done, memory_order_acquire) < chunks; ++i) {
        gd_cpu_relax();
        if (i % 16 == 0)
            sched_yield();
    }
}

/* Runs the batch on the pool (the caller owns it) with up to `helpers`
 * workers beside the calling thread. */
static void gd_run_pool(gd_span_fn span, const void *options, const gd_buffer *buffers,
                        int64_t count, int64_t total, int64_t helpers)
{
    int64_t chunk = GD_CHUNK;
    if (total / chunk >= (int64_t)GD_CLOSED - 1) /* beyond 2^46 elements */
        chunk = (total / ((int64_t)GD_CLOSED - 2) / GD_SPLIT_ALIGN + 1) * GD_SPLIT_ALIGN;
    int64_t chunks = (total + chunk - 1) / chunk;
    gd_job *job = &gd_pool.job;
    atomic_store_explicit(&job->span, span, memory_order_relaxed);
    atomic_store_explicit(&job->options, options, memory_order_relaxed);
    atomic_store_explicit(&job->buffers, buffers, memory_order_relaxed);
    atomic_store_explicit(&job->count, count, memory_order_relaxed);
    atomic_store_explicit(&job->total, total, memory_order_relaxed);
    atomic_store_explicit(&job->chunk, chunk, memory_order_relaxed);
    atomic_store_explicit(&job->chunks, chunks, memory_order_relaxed);
    atomic_store_explicit(&job->helpers, helpers, memory_order_relaxed);
    atomic_store_explicit(&job->caller_cpu, gd_current_cpu(), memory_order_relaxed);
    atomic_store_explicit(&gd_pool.done, 0, memory_order_relaxed);
    uint32_t g = ++gd_pool.generation;
    if (g == 0 || g == GD_CLOSED) /* never reuse the initial value */
        g = gd_pool.generation = 1;
    uint64_t w = (uint64_t)g << 32;
    atomic_store(&gd_pool.claim, w); /* seq_cst: publishes the job, pairs with sleepers */
    if (atomic_load(&gd_pool.sleepers) > 0) {
        pthread_mutex_lock(&gd_pool.lock);
        pthread_cond_broadcast(&gd_pool.wake);
        pthread_mutex_unlock(&gd_pool.lock);
    }
    gd_help(w, 0);
    gd_finish(chunks);
    atomic_store_explicit(&gd_pool.claim, ((uint64_t)g << 32) | GD_CLOSED,
                          memory_order_relaxed);
    atomic_thread_fence(memory_order_release); /* the next job's writes come after */
}

static void gd_after_fork_in_child(void)
{
    /* Only the forking thread exists here: no worker, no owner. */
    gd_pool.workers = 0;
    atomic_store(&gd_pool.busy, 0);
    atomic_store(&gd_pool.sleepers, 0);
    atomic_store(&gd_pool.claim, ((uint64_t)gd_pool.generation << 32) | GD_CLOSED);
    pthread_mutex_init(&gd_pool.lock, NULL);
    pthread_cond_init(&gd_pool.wake, NULL);
}

__attribute__((constructor)) static void gd_pool_init(void)
{
    const char *spin = getenv("GDCORE_SPIN_US");
    if (spin != NULL && *spin) {
        char *end;
        long us = strtol(spin, &end, 10);
        if (*end == '\0' && us >= 0 && us <= GD_SPIN_US_MAX)
            gd_spin_ns = (int64_t)us * 1000;
    }
    pthread_atfork(NULL, NULL, gd_after_fork_in_child);
}
#endif /* GD_HAVE_POOL */

void gd_run(gd_span_fn span, const void *options, const gd_buffer *buffers,
            int64_t count)
{
    int64_t total = 0;
    for (int64_t j = 0; j < count; ++j)
        total += buffers[j].n;
    int64_t threads = gd_get_num_threads();
    if (threads > total / GD_CHUNK)
        threads = total / GD_CHUNK;
#if GD_HAVE_POOL
    if (threads > 1 && !atomic_exchange_explicit(&gd_pool.busy, 1, memory_order_acquire)) {
        int64_t helpers = gd_grow_pool((int)threads - 1);
        if (helpers > threads - 1)
            helpers = threads - 1;
        if (helpers > 0)
            gd_run_pool(span, options, buffers, count, total, helpers);
        else
            gd_run_serial(span, options, buffers, count);
        atomic_store_explicit(&gd_pool.busy, 0, memory_order_release);
        return;
    }
#endif
    gd_run_serial(span, options, buffers, count);
}

/* ----------------------------------------------------------- thread count */

static int gd_cpu_count(void)
{
#if defined(__linux__) && GD_HAVE_POOL
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
#if defined(_SC_NPROCESSORS_ONLN)
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n > 0)
        return n > (1 << 16) ? 1 << 16 : (int)n;
#endif
    return 1;
}

#if GD_HAVE_POOL
/* Set from Python (GIL held), read by every call (GIL released). */
static _Atomic int gd_num_threads = 0; /* 0: not set yet, use the CPU count */
#endif

void gd_set_num_threads(int n)
{
#if GD_HAVE_POOL
    atomic_store_explicit(&gd_num_threads, n < 1 ? 1 : n, memory_order_relaxed);
#else
    (void)n;
#endif
}

int gd_get_num_threads(void)
{
#if GD_HAVE_POOL
    int n = atomic_load_explicit(&gd_num_threads, memory_order_relaxed);
    if (n == 0) {
        int expected = 0;
        n = gd_cpu_count();
        if (!atomic_compare_exchange_strong(&gd_num_threads, &expected, n))
            n = expected;
    }
    return n;
#else
    return 1;
#endif
}

int gd_threads_enabled(void)
{
    return GD_HAVE_POOL;
}

int gd_spin_us(void)
{
#if GD_HAVE_POOL
    return (int)(gd_spin_ns / 1000);
#else
    return 0;
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

#if GD_HAVE_X86_DISPATCH
/* AVX512-BF16: CPUID leaf 7, sub-leaf 1, EAX bit 5 (neither GCC 12's nor
 * clang 14's __builtin_cpu_supports names it alike); the OS's saving of the
 * AVX-512 state is checked by the x86-64-v4 test that comes first. */
static int gd_cpu_has_avx512_bf16(void)
{
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || eax < 1)
        return 0;
    if (!__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx))
        return 0;
    return (eax >> 5) & 1;
}
#endif

static int gd_isa_supported(void)
{
#if GD_HAVE_X86_DISPATCH
    __builtin_cpu_init();
#if defined(__clang__)
    /* Clang 14 knows no level names here: the levels' vector features (the
     * runtime also checks that the OS saves the AVX/AVX-512 state). */
    int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
    if (v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512cd"))
        return gd_cpu_has_avx512_bf16() ? GD_ISA_X86_64_V4_BF16 : GD_ISA_X86_64_V4;
    if (v3)
        return GD_ISA_X86_64_V3;
#else
    if (__builtin_cpu_supports("x86-64-v4"))
        return gd_cpu_has_avx512_bf16() ? GD_ISA_X86_64_V4_BF16 : GD_ISA_X86_64_V4;
    if (__builtin_cpu_supports("x86-64-v3"))
        return GD_ISA_X86_64_V3;
#endif
#endif
    return GD_ISA_BASELINE;
}

/* Run when the library loads where the compiler can say so (elsewhere on
 * first use, through gd_isa_level). */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((constructor))
#endif
static void gd_isa_init(void)
{
    int level = gd_isa_supported();
    const char *want = getenv("GDCORE_ISA");
    if (want != NULL) {
        int asked = !strcmp(want, "baseline")         ? GD_ISA_BASELINE
                    : !strcmp(want, "x86-64-v3")      ? GD_ISA_X86_64_V3
                    : !strcmp(want, "x86-64-v4")      ? GD_ISA_X86_64_V4
                    : !strcmp(want, "x86-64-v4-bf16") ? GD_ISA_X86_64_V4_BF16
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
    return "x86-64-v4-bf16 (AVX-512, AVX512-BF16) | x86-64-v4 (AVX-512) | "
           "x86-64-v3 (AVX2+FMA) | baseline";
#else
    return "compiler default target only";
#endif
}

const char *gd_isa_selected(void)
{
#if GD_HAVE_X86_DISPATCH
    static const char *names[GD_ISA_COUNT] = {
        "x86-64 baseline (SSE2)", "x86-64-v3 (AVX2+FMA)", "x86-64-v4 (AVX-512)",
        "x86-64-v4-bf16 (AVX-512, AVX512-BF16)"};
    return names[gd_isa_level()];
#else
    return "compiler default target";
#endif
}
