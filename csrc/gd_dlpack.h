/* gd_dlpack.h: the parts of the DLPack 1.x C ABI that gdcore.torch reads.
 *
 * Design note.  gdcore.torch must find, every step, where each grad lives
 * and check that params and state tensors have not moved.  Through torch's
 * Python methods that costs about 100 ns per fact per tensor (data_ptr(),
 * dtype, is_contiguous(), numel(), ...).  DLPack 1.1+ defines a table of C
 * functions that a tensor type publishes as the PyCapsule
 * ``type(t).__dlpack_c_exchange_api__`` (name "dlpack_exchange_api"); its
 * ``dltensor_from_py_object_no_sync`` fills a caller-owned DLTensor (data,
 * device, dtype, shape, strides) from a tensor object without allocating
 * and without running Python code, in about 30 ns.  torch publishes it from
 * 2.10.  Only the layouts below are used; the major version is checked
 * before the table is used (a different major version changes them).
 *
 * The declarations follow the DLPack specification (dmlc/dlpack,
 * include/dlpack/dlpack.h, Apache-2.0): names are gdcore's, layouts are the
 * ABI's.
 */
#ifndef GD_DLPACK_H
#define GD_DLPACK_H

#include <stdint.h>

#define GD_DLPACK_MAJOR 1
#define GD_DLPACK_CPU 1             /* kDLCPU */
#define GD_DLPACK_FLOAT 2           /* kDLFloat */
#define GD_DLPACK_BFLOAT 4          /* kDLBfloat */

typedef struct {
    int32_t device_type;
    int32_t device_id;
} gd_dl_device;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} gd_dl_dtype;

typedef struct {
    void *data;
    gd_dl_device device;
    int32_t ndim;
    gd_dl_dtype dtype;
    int64_t *shape;
    int64_t *strides;               /* in elements; may be NULL (compact) */
    uint64_t byte_offset;
} gd_dl_tensor;

/* Fills *out; 0 on success, -1 with a Python exception set. */
typedef int (*gd_dl_from_py)(void *py_object, gd_dl_tensor *out);

typedef struct {
    uint32_t major;
    uint32_t minor;
    void *prev_api;
    void *managed_tensor_allocator;
    void *managed_tensor_from_py_object_no_sync;
    void *managed_tensor_to_py_object_no_sync;
    gd_dl_from_py dltensor_from_py_object_no_sync;      /* may be NULL */
    void *current_work_stream;
} gd_dl_exchange_api;

#endif
