# Mirrors csrc/gdcore.h: the C interface of gdcore's kernels (gd_dtype and
# gd_buffer come from gdcore/capi.pxd, the embedding interface).  The options
# structs are generated from gdcore/family.py and reach C as double arrays
# (gd_step), so they need no mirror here.
from libc.stdint cimport int64_t

from gdcore.capi cimport gd_buffer, gd_dtype, gd_format, GD_FLOAT32, GD_FLOAT64

cdef extern from "gdcore.h" nogil:
    int GD_KERNEL_COUNT
    int GD_MAX_OPTIONS

    int gd_step(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
                int64_t count)
    int gd_step_scaled(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
                       int64_t count, double grad_multiplier)
    int gd_step_format(int kernel, const gd_format *format, const double *options,
                       gd_buffer *buffers, int64_t count, double grad_multiplier)
    const char *gd_kernel_name(int kernel)
    int gd_kernel_options(int kernel)

    void gd_stream(gd_dtype dtype, int nread, int nwrite, const gd_buffer *buffers, int64_t count)

    double gd_grad_norm(gd_dtype dtype, int norm_type, const gd_buffer *buffers, int64_t count)

    void gd_set_num_threads(int n)
    int gd_get_num_threads()
    int gd_threads_enabled()
    int gd_spin_us()
    int64_t gd_parallel_threshold()
    const char *gd_isa_selected()
    const char *gd_isa_compiled()
