/* _torch_reads.h: the C table that gdcore/_torch_reads.cpp (compiled
 * against the installed torch, on first use: see gdcore/_torch_build.py)
 * publishes to gdcore's extension, as the PyCapsule
 * ``gdcore._torch_reads.TABLE`` (name GD_TORCH_READS_CAPSULE).
 *
 * Tensors are torch tensor objects of exact type torch.Tensor or
 * torch.nn.Parameter (the caller checks the type); dtype codes are
 * GD_TR_F32 ... GD_TR_BF16.  Every function runs no Python code, needs the
 * GIL, and raises nothing (a C++ exception inside means "no").
 */
#ifndef GD_TORCH_READS_H
#define GD_TORCH_READS_H

#include <Python.h>
#include <stdint.h>

#define GD_TORCH_READS_ABI 1
#define GD_TORCH_READS_CAPSULE "gdcore._torch_reads.TABLE"

enum { GD_TR_F32 = 0, GD_TR_F64 = 1, GD_TR_F16 = 2, GD_TR_BF16 = 3 };

typedef struct {
    uint32_t abi;                   /* GD_TORCH_READS_ABI */
    uint32_t size;                  /* sizeof(gd_torch_reads) */
    /* 1 when tensor t is a plain dense CPU tensor (no dispatch key beyond a
     * fresh CPU tensor's: no negative or conjugate bit, no subclass
     * dispatch, not sparse, nested, quantized, ...), of dtype `code`,
     * C-contiguous, of shape shape[0..ndim), within its storage; *data:
     * its first element (NULL when empty), made writable as torch does
     * before an in-place op (copy-on-write memory becomes the tensor's own,
     * at a new address).  0 otherwise. */
    int (*dense)(PyObject *t, int code, int ndim, const int64_t *shape, const void **data);
    /* The grad of param p, borrowed (valid while nothing runs that could
     * replace it): NULL when p has none or when it is not a plain tensor
     * (its Python object, if it has one, not exactly torch.Tensor). */
    void *(*grad)(PyObject *p);
    /* dense() for a grad returned by grad(), which is only read (its
     * memory is not made writable). */
    int (*grad_dense)(void *grad, int code, int ndim, const int64_t *shape, const void **data);
    /* Take / drop a reference to each of grads[0..n) (the GIL held). */
    void (*hold)(void *const *grads, Py_ssize_t n);
    void (*release)(void *const *grads, Py_ssize_t n);
} gd_torch_reads;

#endif
