# gdcore's C API for Cython extensions: ``from gdcore.capi cimport ...``.
#
# The kernels, called through the table of function pointers that
# gdcore._core publishes (see gdcore/include/gdcore_capi.h, whose
# directory gdcore.get_include() returns: pass it as an include directory).
# Nothing links against gdcore.  Typical use:
#
#     from gdcore.capi cimport gdcore_capi, gdcore_import_capi, gd_buffer, GD_FLOAT32
#     cdef const gdcore_capi *gd = gdcore_import_capi()   # once, with the GIL
#     ...
#     with nogil:
#         gd.step(kernel, GD_FLOAT32, options, &buffer, 1)
#
# kernel, options and the state slots for a set of hyperparameters come
# from gdcore.capi_options(name, **hyperparameters) in Python.
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "gdcore_capi.h":
    int GDCORE_CAPI_MAJOR
    int GDCORE_CAPI_MINOR

    ctypedef enum gd_dtype:
        GD_FLOAT32
        GD_FLOAT64
        GD_BFLOAT16
        GD_FLOAT16

    ctypedef enum gd_rounding:
        GD_ROUND_NEAREST
        GD_ROUND_STOCHASTIC
        GD_ROUND_KAHAN

    ctypedef struct gd_format:
        gd_dtype param
        gd_dtype state
        gd_rounding rounding
        uint64_t seed

    ctypedef struct gd_buffer:
        void *param
        const void *grad
        void *state[3]
        int64_t n
        int64_t step
        double scalar[2]
        int scalar_float64
        void *compensation
        uint64_t stream

    ctypedef struct gdcore_capi:
        uint32_t major
        uint32_t minor
        uint32_t size
        int (*step)(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
                    int64_t count) noexcept nogil
        int (*step_scaled)(int kernel, gd_dtype dtype, const double *options,
                           gd_buffer *buffers, int64_t count,
                           double grad_multiplier) noexcept nogil
        int (*kernel_count)() noexcept nogil
        const char *(*kernel_name)(int kernel) noexcept nogil
        int (*kernel_options)(int kernel) noexcept nogil
        int (*kernel_index)(const char *name) noexcept nogil
        void (*set_num_threads)(int n) noexcept nogil
        int (*get_num_threads)() noexcept nogil
        int (*step_format)(int kernel, const gd_format *format, const double *options,
                           gd_buffer *buffers, int64_t count,
                           double grad_multiplier) noexcept nogil

    # NULL with ImportError set: gdcore missing, or another major version.
    const gdcore_capi *gdcore_import_capi() except NULL
