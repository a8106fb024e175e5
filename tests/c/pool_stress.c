/*
 * pool_stress.c: drives gdcore's thread pool (csrc/gd_runtime.c) from C,
 * built by tests/test_pool.py with ThreadSanitizer.  Random batches (sizes
 * around the chunk and alignment boundaries, empty buffers, 1 to 40 buffers)
 * are run with 1 to 9 threads by several caller threads at once while
 * another changes the thread count; every element must be updated exactly
 * once per call and every span must start and end on the split alignment.
 * Then the process forks and the child does the same with its own workers.
 * With a second argument "fork" the process then forks and the child does the
 * same with workers of its own (not under ThreadSanitizer, which does not
 * support threads started after a fork).  Exit status 0 and "ok" on success.
 */
#define _GNU_SOURCE
#include "gd_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static _Atomic int failures;

static void fail(const char *what, int64_t a, int64_t b)
{
    if (atomic_fetch_add(&failures, 1) < 10)
        fprintf(stderr, "FAIL: %s (%lld, %lld)\n", what, (long long)a, (long long)b);
}

/* The span: param[i] += 1, with the split alignment checked. */
static void add_one(const void *options, const gd_buffer *b, int64_t begin, int64_t end)
{
    (void)options;
    if (begin < 0 || end > b->n || begin >= end)
        fail("span out of range", begin, end);
    if (begin % GD_SPLIT_ALIGN != 0 || (end != b->n && end % GD_SPLIT_ALIGN != 0))
        fail("span not aligned", begin, end);
    float *p = b->param;
    for (int64_t i = begin; i < end; ++i)
        p[i] += 1.0f;
}

static const int64_t SIZES[] = {0, 1, 63, 64, 65, 1000, 32767, 32768, 32769, 65536, 100003, 300000};

static unsigned next_random(unsigned *state)
{
    *state = *state * 1103515245u + 12345u;
    return *state >> 8;
}

typedef struct caller {
    unsigned seed;
    int rounds;
} caller;

static void *run_caller(void *arg)
{
    caller *c = arg;
    for (int r = 0; r < c->rounds; ++r) {
        int count = 1 + next_random(&c->seed) % 40;
        gd_buffer *buffers = calloc(count, sizeof *buffers);
        int64_t total = 0;
        for (int j = 0; j < count; ++j) {
            int64_t n = SIZES[next_random(&c->seed) % (sizeof SIZES / sizeof *SIZES)];
            if (total + n > 3000000)
                n = 1;
            total += n;
            buffers[j].n = n;
            buffers[j].param = calloc(n ? n : 1, sizeof(float));
        }
        int calls = 1 + next_random(&c->seed) % 5;
        for (int k = 0; k < calls; ++k)
            gd_run(add_one, NULL, buffers, count);
        for (int j = 0; j < count; ++j) {
            const float *p = buffers[j].param;
            for (int64_t i = 0; i < buffers[j].n; ++i)
                if (p[i] != (float)calls) {
                    fail("element updated a wrong number of times", i, (int64_t)p[i]);
                    break;
                }
            free(buffers[j].param);
        }
        free(buffers);
    }
    return NULL;
}

static _Atomic int stop_churn;

static void *churn_threads(void *arg)
{
    unsigned seed = 7;
    (void)arg;
    while (!atomic_load(&stop_churn)) {
        gd_set_num_threads(1 + next_random(&seed) % 9);
        usleep(200);
    }
    return NULL;
}

static void run_all(int callers, int rounds)
{
    pthread_t threads[8], churn;
    caller args[8];
    atomic_store(&stop_churn, 0);
    pthread_create(&churn, NULL, churn_threads, NULL);
    for (int t = 0; t < callers; ++t) {
        args[t].seed = 1234u + 77u * t;
        args[t].rounds = rounds;
        pthread_create(&threads[t], NULL, run_caller, &args[t]);
    }
    for (int t = 0; t < callers; ++t)
        pthread_join(threads[t], NULL);
    atomic_store(&stop_churn, 1);
    pthread_join(churn, NULL);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 40;
    gd_set_num_threads(4);
    caller alone = {99u, rounds};
    run_caller(&alone);   /* one caller: the pool is always free */
    run_all(3, rounds);   /* three callers: the pool is often busy */
    if (argc < 3 || strcmp(argv[2], "fork") != 0)
        goto done;
    pid_t pid = fork();
    if (pid == 0) {       /* the child starts workers of its own */
        gd_set_num_threads(3);
        caller child = {5u, rounds / 2};
        run_caller(&child);
        _exit(atomic_load(&failures) ? 1 : 0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail("forked child", WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
done:
    if (atomic_load(&failures))
        return 1;
    printf("ok\n");
    return 0;
}
