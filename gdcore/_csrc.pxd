# Mirrors csrc/gdcore.h: the C interface of gdcore's kernels.
from libc.stdint cimport int64_t

cdef extern from "gdcore.h" nogil:
    ctypedef enum gd_dtype:
        GD_FLOAT32
        GD_FLOAT64

    ctypedef struct gd_buffer:
        void *param
        const void *grad
        void *state[3]
        int64_t n
        int64_t step

    ctypedef struct gd_sgd_options:
        double lr, momentum, dampening, weight_decay
        int nesterov, maximize

    ctypedef struct gd_adagrad_options:
        double lr, lr_decay, weight_decay, eps
        int maximize

    ctypedef struct gd_rmsprop_options:
        double lr, alpha, eps, weight_decay, momentum
        int centered, maximize

    ctypedef struct gd_adam_options:
        double lr, beta1, beta2, eps, weight_decay
        int amsgrad, maximize, decoupled_weight_decay

    void gd_sgd(gd_dtype dtype, const gd_sgd_options *options, const gd_buffer *buffers, int64_t count)
    void gd_adagrad(gd_dtype dtype, const gd_adagrad_options *options, const gd_buffer *buffers, int64_t count)
    void gd_rmsprop(gd_dtype dtype, const gd_rmsprop_options *options, const gd_buffer *buffers, int64_t count)
    void gd_adam(gd_dtype dtype, const gd_adam_options *options, const gd_buffer *buffers, int64_t count)

    void gd_stream(gd_dtype dtype, int nread, int nwrite, const gd_buffer *buffers, int64_t count)

    void gd_set_num_threads(int n)
    int gd_get_num_threads()
    int gd_openmp_enabled()
    int64_t gd_parallel_threshold()
    const char *gd_isa_selected()
    const char *gd_isa_compiled()
