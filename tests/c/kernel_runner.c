/*
 * kernel_runner.c: runs gdcore's optimizer kernels (csrc/) on cases read from
 * a file and writes what they produced, so that tests/test_aarch64.py can run
 * the same cases through a build for the host and through an aarch64 build
 * under qemu-user and compare the two element by element.
 *
 *   kernel_runner CASES OUT
 *
 * Everything is little-endian, in the C types named below.  CASES:
 *   char magic[8] = "GDKRUN01"; int32 ncases; then per case
 *     int32 kernel, dtype, noptions, nbuffers, nsteps, nthreads;
 *     float64 grad_multiplier       (1.0: gd_step, else gd_step_scaled)
 *     float64 options[noptions]
 *     per buffer: int64 n, first_step; int32 state_mask, scalar_float64;
 *                 float64 scalar[2];
 *                 then param[n], grad[nsteps][n] (one per step), state[k][n]
 *                 for every bit k of state_mask, in the element type (4 or 8
 *                 bytes)
 * The case runs nsteps steps (step = first_step, first_step + 1, ...).  OUT gets, per case and buffer, param[n], the state
 * buffers of state_mask, then float64 scalar[2].  Exit status 0 on success,
 * 2 on a malformed file or a kernel that returned an error.
 */
#include "gdcore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static FILE *in, *out;

static void die(const char *what)
{
    fprintf(stderr, "kernel_runner: %s\n", what);
    exit(2);
}

static void read_exact(void *dst, size_t bytes)
{
    if (bytes && fread(dst, 1, bytes, in) != bytes)
        die("truncated case file");
}

static int32_t read_i32(void)
{
    int32_t v;
    read_exact(&v, sizeof v);
    return v;
}

static int64_t read_i64(void)
{
    int64_t v;
    read_exact(&v, sizeof v);
    return v;
}

static double read_f64(void)
{
    double v;
    read_exact(&v, sizeof v);
    return v;
}

static void write_exact(const void *src, size_t bytes)
{
    if (bytes && fwrite(src, 1, bytes, out) != bytes)
        die("cannot write the output file");
}

/* A buffer of `bytes`, 64-byte aligned as gdcore's callers guarantee. */
static void *aligned_buffer(size_t bytes)
{
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
    if (p == NULL)
        die("out of memory");
    return p;
}

static void run_case(void)
{
    int32_t kernel = read_i32(), dtype = read_i32(), noptions = read_i32();
    int32_t nbuffers = read_i32(), nsteps = read_i32(), nthreads = read_i32();
    double multiplier = read_f64();
    if (noptions < 0 || noptions > GD_MAX_OPTIONS || nbuffers < 0 || nbuffers > 4096 ||
        nsteps < 1 || nthreads < 1 || (dtype != GD_FLOAT32 && dtype != GD_FLOAT64))
        die("malformed case header");
    if (gd_kernel_options(kernel) != noptions)
        die("options count does not match the kernel (runner built from other declarations?)");
    double options[GD_MAX_OPTIONS];
    for (int i = 0; i < noptions; ++i)
        options[i] = read_f64();
    size_t elem = dtype == GD_FLOAT32 ? 4 : 8;

    gd_buffer *buffers = calloc((size_t)nbuffers + 1, sizeof(gd_buffer));
    int32_t *masks = calloc((size_t)nbuffers + 1, sizeof(int32_t));
    void **grads = calloc((size_t)nbuffers * nsteps + 1, sizeof(void *));
    if (buffers == NULL || masks == NULL || grads == NULL)
        die("out of memory");
    for (int b = 0; b < nbuffers; ++b) {
        gd_buffer *buf = &buffers[b];
        buf->n = read_i64();
        buf->step = read_i64();
        masks[b] = read_i32();
        buf->scalar_float64 = read_i32();
        buf->scalar[0] = read_f64();
        buf->scalar[1] = read_f64();
        if (buf->n < 0 || buf->n > ((int64_t)1 << 28) || (masks[b] & ~7))
            die("malformed buffer header");
        size_t bytes = (size_t)buf->n * elem;
        buf->param = aligned_buffer(bytes);
        read_exact(buf->param, bytes);
        for (int s = 0; s < nsteps; ++s) {
            grads[(size_t)b * nsteps + s] = aligned_buffer(bytes);
            read_exact(grads[(size_t)b * nsteps + s], bytes);
        }
        for (int k = 0; k < 3; ++k) {
            if (masks[b] & (1 << k)) {
                buf->state[k] = aligned_buffer(bytes);
                read_exact(buf->state[k], bytes);
            }
        }
    }

    gd_set_num_threads(nthreads);
    for (int s = 0; s < nsteps; ++s) {
        for (int b = 0; b < nbuffers; ++b)
            buffers[b].grad = grads[(size_t)b * nsteps + s];
        int rc = multiplier == 1.0
            ? gd_step(kernel, (gd_dtype)dtype, options, buffers, nbuffers)
            : gd_step_scaled(kernel, (gd_dtype)dtype, options, buffers, nbuffers, multiplier);
        if (rc != 0)
            die("the kernel refused the case");
        for (int b = 0; b < nbuffers; ++b)
            buffers[b].step += 1;
    }

    for (int b = 0; b < nbuffers; ++b) {
        gd_buffer *buf = &buffers[b];
        size_t bytes = (size_t)buf->n * elem;
        write_exact(buf->param, bytes);
        for (int k = 0; k < 3; ++k)
            if (masks[b] & (1 << k))
                write_exact(buf->state[k], bytes);
        write_exact(buf->scalar, sizeof buf->scalar);
        free(buf->param);
        for (int s = 0; s < nsteps; ++s)
            free(grads[(size_t)b * nsteps + s]);
        for (int k = 0; k < 3; ++k)
            free(buf->state[k]);
    }
    free(buffers);
    free(masks);
    free(grads);
}

int main(int argc, char **argv)
{
    if (argc != 3)
        die("usage: kernel_runner CASES OUT");
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL)
        die("cannot open the case or output file");
    char magic[8];
    read_exact(magic, sizeof magic);
    if (memcmp(magic, "GDKRUN01", 8) != 0)
        die("not a case file (magic)");
    int32_t ncases = read_i32();
    for (int32_t c = 0; c < ncases; ++c)
        run_case();
    if (fclose(out) != 0)
        die("cannot write the output file");
    fclose(in);
    printf("ok %d cases, isa %s\n", (int)ncases, gd_isa_selected());
    return 0;
}
