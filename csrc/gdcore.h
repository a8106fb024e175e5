/*
 * gdcore.h: the C interface of gdcore's optimizer kernels.
 *
 * Every kernel updates, in place, a batch of buffers that share one element
 * type: each gd_buffer names a parameter, its gradient, up to three state
 * buffers (which ones depends on the optimizer) and the 1-based step number
 * that this update is.  All pointers of a buffer must address disjoint
 * memory, except that the gradient may be shared between buffers; the
 * caller (gdcore/_core.pyx) checks that before calling.
 *
 * Kernels never allocate, never fail and never touch Python: they are called
 * with the GIL released.  Hyperparameters arrive as double; per-step scalars
 * (bias corrections, step sizes) are derived in double and cast once to the
 * element type.
 */
#ifndef GDCORE_H
#define GDCORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gd_dtype { GD_FLOAT32 = 0, GD_FLOAT64 = 1 } gd_dtype;

typedef struct gd_buffer {
    void *param;          /* IN/OUT: n elements                               */
    const void *grad;     /* IN:     n elements                               */
    void *state[3];       /* IN/OUT: optimizer-specific, NULL when unused     */
    int64_t n;            /* number of elements                               */
    int64_t step;         /* 1-based number of this step (after increment)    */
} gd_buffer;

/* State slots: SGD {momentum_buffer}; Adagrad {sum};
 * RMSprop {square_avg, momentum_buffer, grad_avg}; Adam {exp_avg, exp_avg_sq,
 * max_exp_avg_sq}. */

typedef struct gd_sgd_options {
    double lr, momentum, dampening, weight_decay;
    int nesterov, maximize;
} gd_sgd_options;

typedef struct gd_adagrad_options {
    double lr, lr_decay, weight_decay, eps;
    int maximize;
} gd_adagrad_options;

typedef struct gd_rmsprop_options {
    double lr, alpha, eps, weight_decay, momentum;
    int centered, maximize;
} gd_rmsprop_options;

typedef struct gd_adam_options {
    double lr, beta1, beta2, eps, weight_decay;
    int amsgrad, maximize, decoupled_weight_decay;
} gd_adam_options;

void gd_sgd(gd_dtype dtype, const gd_sgd_options *options,
            const gd_buffer *buffers, int64_t count);
void gd_adagrad(gd_dtype dtype, const gd_adagrad_options *options,
                const gd_buffer *buffers, int64_t count);
void gd_rmsprop(gd_dtype dtype, const gd_rmsprop_options *options,
                const gd_buffer *buffers, int64_t count);
void gd_adam(gd_dtype dtype, const gd_adam_options *options,
             const gd_buffer *buffers, int64_t count);

/* Benchmark roofline probe: per element, read `nread` of (param, grad,
 * state[0], state[1], state[2]) and write `nwrite` of (param, state[0..2]);
 * (nread, nwrite) is (2, 1), (3, 2), (4, 3) or (5, 4). */
void gd_stream(gd_dtype dtype, int nread, int nwrite, const gd_buffer *buffers,
               int64_t count);

/* Threads.  Set/get the number of OpenMP threads a kernel call may use; with
 * OpenMP off it is always 1.  Results do not depend on it, bit for bit. */
void gd_set_num_threads(int n);
int gd_get_num_threads(void);
int gd_openmp_enabled(void);
/* Smallest total element count for which a call goes parallel. */
int64_t gd_parallel_threshold(void);

/* The instruction set the kernels run in this process (the best the CPU
 * supports, or lower if the environment variable GDCORE_ISA asks), and the
 * list of builds compiled in. */
const char *gd_isa_selected(void);
const char *gd_isa_compiled(void);

#ifdef __cplusplus
}
#endif
#endif /* GDCORE_H */
