/*
 * gdcore_capi.h: gdcore's optimizer kernels for C and Cython extensions.
 *
 * Design note.  An extension steps optimizers in its own nogil loops by
 * calling gdcore's kernels through a table of function pointers that
 * gdcore._core publishes as the PyCapsule "gdcore._core._C_API" (as NumPy
 * publishes its C API): the extension is compiled against this header
 * (directory: gdcore.get_include()) and never links against gdcore's shared
 * object.  gdcore_import_capi() imports gdcore._core and returns the table
 * after checking its major version; a later minor version only appends
 * fields.
 *
 * The kernels are the ones the Python API runs, with the same results bit
 * for bit.  The caller owns the checks the Python API makes: buffers of one
 * element type, contiguous and aligned, param and state memory disjoint,
 * the state slots the optimizer's options use (see gdcore.capi_call in
 * Python: kernel index, options array and state slot names for a set of
 * hyperparameters, validated as torch validates them).
 *
 *   const gdcore_capi *gd = gdcore_import_capi();     // with the GIL
 *   gd_buffer b = {param, grad, {exp_avg, exp_avg_sq, NULL}, n, step};
 *   gd->step(kernel, GD_FLOAT32, options, &b, 1);      // GIL not needed
 *
 * 16-bit params (bfloat16, float16) go through step_format, which also
 * says the state's element type and how the param is rounded.
 *
 * Version 2.0 (1.0 had no 16-bit types: gd_buffer grew two fields).
 */
#ifndef GDCORE_CAPI_H
#define GDCORE_CAPI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GDCORE_CAPI_MAJOR 2
#define GDCORE_CAPI_MINOR 0
#define GDCORE_CAPI_CAPSULE "gdcore._core._C_API"

/* Element types.  bfloat16 and float16 are stored as IEEE bit patterns in
 * 16 bits; the kernels compute with them in float32. */
typedef enum gd_dtype { GD_FLOAT32 = 0, GD_FLOAT64 = 1, GD_BFLOAT16 = 2, GD_FLOAT16 = 3 } gd_dtype;

/* How a 16-bit param is stored after its update (csrc/gd_half.h):
 * to nearest even; stochastically (unbiased, random bits from
 * (gd_format.seed, gd_buffer.stream, gd_buffer.step, element index)); or to
 * nearest with the rounding error carried in gd_buffer.compensation (Kahan).
 * float32 and float64 params take GD_ROUND_NEAREST (their results are
 * computed in their own type). */
typedef enum gd_rounding {
    GD_ROUND_NEAREST = 0, GD_ROUND_STOCHASTIC = 1, GD_ROUND_KAHAN = 2
} gd_rounding;

/* The element types of a call and the param rounding: state is the param's
 * type, or GD_FLOAT32 for 16-bit params. */
typedef struct gd_format {
    gd_dtype param;       /* params and grads                                 */
    gd_dtype state;       /* state buffers                                    */
    gd_rounding rounding;
    uint64_t seed;        /* GD_ROUND_STOCHASTIC                              */
} gd_format;

typedef struct gd_buffer {
    void *param;          /* IN/OUT: n elements                               */
    const void *grad;     /* IN:     n elements                               */
    void *state[3];       /* IN/OUT: optimizer-specific, NULL when unused     */
    int64_t n;            /* number of elements                               */
    int64_t step;         /* 1-based number of this step (after increment)    */
    double scalar[2];     /* IN/OUT: per-param scalar state (NAdam mu_product;
                           * ASGD eta, mu): read before the update, replaced
                           * by the new values after it                       */
    int scalar_float64;   /* scalar state is float64 (else it is kept rounded
                           * to float32, torch's default scalar dtype)        */
    void *compensation;   /* IN/OUT: GD_ROUND_KAHAN: n elements of the param's
                           * type, what rounding dropped (starts at zero)      */
    uint64_t stream;      /* GD_ROUND_STOCHASTIC: this buffer's random stream
                           * (gdcore's classes: the param's position)         */
} gd_buffer;

typedef struct gdcore_capi {
    uint32_t major;       /* GDCORE_CAPI_MAJOR of the gdcore that built it   */
    uint32_t minor;
    uint32_t size;        /* sizeof(gdcore_capi) there                         */
    /* One optimizer step over `count` buffers of one dtype: kernel index (see
     * kernel_index), options as doubles in the kernel's declared order.
     * Returns 0, or -1 for an unknown kernel or dtype.  Threads: gdcore's
     * pool (results do not depend on the thread count). */
    int (*step)(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
                int64_t count);
    /* The same with every grad element multiplied by grad_multiplier. */
    int (*step_scaled)(int kernel, gd_dtype dtype, const double *options,
                       gd_buffer *buffers, int64_t count, double grad_multiplier);
    int (*kernel_count)(void);
    /* Name ("adam", "sgd", ...) and options count of a kernel; NULL / -1
     * out of range. */
    const char *(*kernel_name)(int kernel);
    int (*kernel_options)(int kernel);
    /* The index of the kernel called `name`, or -1. */
    int (*kernel_index)(const char *name);
    void (*set_num_threads)(int n);
    int (*get_num_threads)(void);
    /* Any element types (gd_format), grads times grad_multiplier.  Returns
     * 0, or -1 for an unknown kernel, an invalid format, or a Kahan call
     * with a buffer whose compensation is NULL. */
    int (*step_format)(int kernel, const gd_format *format, const double *options,
                       gd_buffer *buffers, int64_t count, double grad_multiplier);
} gdcore_capi;

#ifdef PY_VERSION_HEX
/* The table, or NULL with a Python exception set (ImportError).  Call with
 * the GIL held; the table stays valid for the life of the process. */
static inline const gdcore_capi *gdcore_import_capi(void)
{
    const gdcore_capi *api = (const gdcore_capi *)PyCapsule_Import(GDCORE_CAPI_CAPSULE, 0);
    if (api == NULL)
        return NULL;
    if (api->major != GDCORE_CAPI_MAJOR || api->size < sizeof(gdcore_capi)) {
        PyErr_Format(PyExc_ImportError,
                     "gdcore C API version %u.%u is installed, this extension was built "
                     "against %d.%d: rebuild it", api->major, api->minor,
                     GDCORE_CAPI_MAJOR, GDCORE_CAPI_MINOR);
        return NULL;
    }
    return api;
}
#endif

#ifdef __cplusplus
}
#endif
#endif /* GDCORE_CAPI_H */
