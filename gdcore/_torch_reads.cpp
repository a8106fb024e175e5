/* _torch_reads.cpp: gdcore.torch's per-tensor reads through torch's C++ API.
 *
 * Design note.  gdcore.torch's steady-state step must learn, for each of
 * possibly thousands of params, where its grad lives and that param and
 * grad are still plain dense CPU tensors of the planned dtype and shape.
 * Through torch's Python-level C functions (the grad getter, is_neg(), the
 * DLPack exchange table) that is five calls per tensor, and the grad getter
 * allocates a Python object for every fresh grad: about 0.3 us a tensor.
 * Here the same facts are read from torch's TensorImpl (the dispatch key
 * set, dtype, sizes, contiguity, data pointer) and the grad from its
 * autograd metadata, without creating Python objects: a few ns plus the
 * cache misses.  The file is compiled against the installed torch's
 * headers on first use (gdcore/_torch_build.py) and cached: torch's C++
 * ABI is that of the build it was compiled against, so nothing here can be
 * built ahead of time for an unknown torch.  Without a compiler gdcore.torch
 * uses the exchange-table reads (the same checks, slower).
 *
 * Plain means: every dispatch key is one a freshly made CPU tensor has
 * (CPU, ADInplaceOrView, AutogradCPU, AutocastCPU), which excludes the
 * negative and conjugate bits, zero tensors, Python subclass dispatch
 * (DTensor, fake tensors), functorch wrappers, sparse, nested, quantized,
 * MKL-DNN and non-CPU tensors.  A grad whose Python object exists must be
 * exactly torch.Tensor (a subclass or Parameter goes to the general path,
 * as before).
 */
#include "_torch_reads.h"

#include <torch/csrc/autograd/python_variable.h>

namespace {

PyTypeObject *tensor_type = nullptr;        // torch.Tensor

const c10::DispatchKeySet plain_keys{c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                     c10::DispatchKey::AutogradCPU,
                                     c10::DispatchKey::AutocastCPU};

bool scalar_type_of(int code, c10::ScalarType *out) {
    switch (code) {
        case GD_TR_F32: *out = c10::ScalarType::Float; return true;
        case GD_TR_F64: *out = c10::ScalarType::Double; return true;
        case GD_TR_F16: *out = c10::ScalarType::Half; return true;
        case GD_TR_BF16: *out = c10::ScalarType::BFloat16; return true;
        default: return false;
    }
}

// writable: the memory will be written (a param): copy-on-write storage is
// made the tensor's own first, and storage that refuses writes is refused,
// as torch does for any in-place op.  A grad is only read.
int impl_dense(c10::TensorImpl *impl, int code, int ndim, const int64_t *shape, bool writable,
               const void **data) noexcept {
    try {
        c10::ScalarType expected;
        // (bitwise: DispatchKeySet's operator- keeps the backend bits)
        if (!scalar_type_of(code, &expected) ||
                (impl->key_set().raw_repr() & ~plain_keys.raw_repr()) != 0 ||
                impl->layout() != c10::kStrided || impl->has_symbolic_sizes_strides() ||
                impl->dtype().toScalarType() != expected || impl->dim() != ndim)
            return 0;
        c10::IntArrayRef sizes = impl->sizes();
        for (int j = 0; j < ndim; j++)
            if (sizes[j] != shape[j])
                return 0;
        if (!impl->is_contiguous() || !impl->has_storage())
            return 0;
        const int64_t numel = impl->numel();
        if (numel != 0 &&       // the storage may have been shrunk (storage().resize_())
                static_cast<int64_t>(impl->storage().nbytes()) <
                    (impl->storage_offset() + numel) * static_cast<int64_t>(impl->itemsize()))
            return 0;
        *data = writable ? impl->mutable_data() : impl->data();
        return 1;
    } catch (...) {
        return 0;
    }
}

int dense(PyObject *t, int code, int ndim, const int64_t *shape, const void **data) {
    return impl_dense(THPVariable_Unpack(t).unsafeGetTensorImpl(), code, ndim, shape, true, data);
}

void *grad(PyObject *p) {
    try {
        const at::Tensor &g = THPVariable_Unpack(p).unsafeGetTensorImpl()->grad();
        if (!g.defined())
            return nullptr;
        c10::TensorImpl *impl = g.unsafeGetTensorImpl();
        PyObject *object = impl->pyobj_slot()->load_pyobj();
        if (object != nullptr && Py_TYPE(object) != tensor_type)
            return nullptr;
        return impl;
    } catch (...) {
        return nullptr;
    }
}

int grad_dense(void *g, int code, int ndim, const int64_t *shape, const void **data) {
    return impl_dense(static_cast<c10::TensorImpl *>(g), code, ndim, shape, false, data);
}

void hold(void *const *grads, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        c10::raw::intrusive_ptr::incref(static_cast<c10::TensorImpl *>(grads[i]));
}

void release(void *const *grads, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        c10::raw::intrusive_ptr::decref(static_cast<c10::TensorImpl *>(grads[i]));
}

const gd_torch_reads table = {GD_TORCH_READS_ABI, sizeof(gd_torch_reads), dense, grad,
                              grad_dense, hold, release};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_torch_reads",
                          "gdcore.torch's reads of torch tensors (see _torch_reads.cpp)", -1};

}  // namespace

PyMODINIT_FUNC PyInit__torch_reads(void) {
    PyObject *torch = PyImport_ImportModule("torch");
    if (torch == nullptr)
        return nullptr;
    PyObject *type = PyObject_GetAttrString(torch, "Tensor");
    Py_DECREF(torch);
    if (type == nullptr)
        return nullptr;
    if (!PyType_Check(type)) {
        Py_DECREF(type);
        PyErr_SetString(PyExc_TypeError, "torch.Tensor is not a type");
        return nullptr;
    }
    tensor_type = reinterpret_cast<PyTypeObject *>(type);      // kept for good
    PyObject *module = PyModule_Create(&module_def);
    if (module == nullptr)
        return nullptr;
    PyObject *capsule = PyCapsule_New(const_cast<gd_torch_reads *>(&table),
                                      GD_TORCH_READS_CAPSULE, nullptr);
    if (capsule == nullptr || PyModule_AddObject(module, "TABLE", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(module);
        return nullptr;
    }
    return module;
}
