# cython: language_level=3
"""Thin layer between Python and the C kernels of csrc/.

Design note.  Nothing here is written per optimizer: every optimizer of
gdcore/family.py becomes a `Spec` (its declaration, compiled into the
tables this module needs), and one generic path serves them all.  A call
goes, in this order, through
  1. everything that can run user code: hyperparameter conversion
     (``__float__``), step numbers (``__index__``), grads (``__array__``),
     with the argument lists copied first, so that user code cannot swap
     a buffer that was already checked, and every array whose pointer
     reaches C is referenced by the call until it ends;
  2. the checks, which run no user code: types, dtypes, shapes,
     contiguity, alignment, writability, memory overlap of everything the
     kernel writes, then torch's hyperparameter validations;
  3. the kernel, with the GIL released (``gd_step``: kernel index, dtype,
     the options as a double array laid out as the generated C struct).
A bad argument therefore raises before anything has been written.  The
functional API (gdcore/functional.py), the classes' general path
(`group_batch`) and their cached steady-state path (`Plan`) share these
functions, so they accept and reject the same things.  The NumPy C API is
used directly because buffer acquisition through typed memoryviews costs
microseconds per call, which is the whole budget of a small step.
"""
import operator

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, qsort
from libc.string cimport memcpy

from gdcore._csrc cimport *
from gdcore.capi cimport (gd_buffer, gd_dtype, gd_format, gd_rounding, GD_FLOAT32, GD_FLOAT64,
                          GD_BFLOAT16, GD_FLOAT16, GD_ROUND_NEAREST, GD_ROUND_STOCHASTIC,
                          GD_ROUND_KAHAN)
from gdcore import family as _family

cnp.import_array()

cdef extern from "numpy/arrayobject.h":
    # PyArray_View(array, NULL, &PyArray_Type): a plain ndarray view, in C
    object _plain_view "PyArray_View" (cnp.ndarray array, void *dtype, void *subtype)

cdef tuple _PARAM = ("param", "params")
cdef tuple _COMPENSATION = ("compensation", "compensations")
cdef object _MAX_STEP = 2**63 - 1
cdef double _MAX_COUNTED = 2.0 ** 53        # torch's step counters: exact integers below
cdef tuple _GRAD = ("grad", "grads")
cdef enum:
    _MAX_SLOTS = 3          # state buffers per param (gd_buffer.state)
    _MAX_SCALARS = 2        # scalar state per param (gd_buffer.scalar)
    _MAX_OPTIONS = 16       # doubles in the largest options struct
    _SPANS_PER_BUFFER = 7   # param, states, scalars, compensation
    _COMP_SLOT = 5          # _Span.slot of a Kahan compensation (after the scalars)
    _NFORMATS = 6           # element formats of a call (see _FORMAT_PARAM)
    _ARRAYS_PER_BUFFER = 5  # states, scalars
    _MAX_DIMS = 8           # param shapes a plan keeps in C (longer: run_torch declines)

# The element formats a batch runs, in this order (one kernel call each):
# float32, float64, then bfloat16 and float16 params with state in their own
# dtype or in float32.
cdef gd_dtype _FORMAT_PARAM[6]
cdef gd_dtype _FORMAT_STATE[6]
_FORMAT_PARAM[:] = [GD_FLOAT32, GD_FLOAT64, GD_BFLOAT16, GD_BFLOAT16, GD_FLOAT16, GD_FLOAT16]
_FORMAT_STATE[:] = [GD_FLOAT32, GD_FLOAT64, GD_BFLOAT16, GD_FLOAT32, GD_FLOAT16, GD_FLOAT32]
cdef int _ELEM_BYTES[4]
_ELEM_BYTES[:] = [4, 8, 2, 2]

# NumPy's bfloat16 is ml_dtypes' (the package JAX and TensorFlow use), when
# installed; float16 is NumPy's own.
try:
    import ml_dtypes as _ml_dtypes
    BFLOAT16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:                     # bfloat16 arrays cannot exist then
    BFLOAT16 = None
cdef int _BF16_NUM = BFLOAT16.num if BFLOAT16 is not None else -1000
_ROUNDINGS = {"nearest": GD_ROUND_NEAREST, "stochastic": GD_ROUND_STOCHASTIC,
              "kahan": GD_ROUND_KAHAN}
cdef object _MAX_SEED = 2**64 - 1


cdef inline int _elem_code(cnp.ndarray a) noexcept:
    """The gd_dtype of a's elements (native byte order), or -1."""
    cdef int t = cnp.PyArray_TYPE(a)
    if cnp.PyArray_ISBYTESWAPPED(a):
        return -1
    if t == cnp.NPY_FLOAT32:
        return GD_FLOAT32
    if t == cnp.NPY_FLOAT64:
        return GD_FLOAT64
    if t == cnp.NPY_FLOAT16:
        return GD_FLOAT16
    if t == _BF16_NUM:
        return GD_BFLOAT16
    return -1


cdef inline int _format_of(int param_code, int state_code) noexcept:
    """Index into _FORMAT_PARAM/_FORMAT_STATE."""
    if param_code == GD_FLOAT32 or param_code == GD_FLOAT64:
        return param_code
    return (2 if param_code == GD_BFLOAT16 else 4) + (state_code == GD_FLOAT32)


def rounding_code(object rounding, str label="rounding"):
    """The gd_rounding of a rounding name (ValueError naming `label`)."""
    if type(rounding) is not str or rounding not in _ROUNDINGS:
        raise ValueError(f"{label} must be one of 'nearest', 'stochastic', 'kahan', "
                         f"not {rounding!r}")
    return _ROUNDINGS[rounding]


def seed_value(object seed, str label="seed"):
    """A random-stream seed: an int, 0 <= seed < 2**64."""
    try:
        value = operator.index(seed)
    except TypeError:
        raise TypeError(f"{label} must be an int, not {type(seed).__name__}") from None
    if value < 0 or value > _MAX_SEED:
        raise ValueError(f"{label} must be in [0, 2**64), got {value}")
    return value


# ------------------------------------------------------------ threads, info

def set_num_threads(n):
    """Set how many threads a kernel call may use (an int >= 1).

    Calls below a size threshold always run on the calling thread.  Results
    are bitwise identical for every thread count.
    """
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an int, not {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    gd_set_num_threads(min(n, 1 << 16))


def get_num_threads():
    """The number of threads a kernel call may use (1 in a build without threads)."""
    return gd_get_num_threads()


def build_info():
    """How the kernels were built and what they run with on this CPU.

    Keys: ``isa`` (the instruction set the runtime dispatcher selects here),
    ``isa_compiled`` (the variants built in), ``threads`` (bool: gdcore's
    thread pool is built in), ``spin_us`` (how long an idle worker spins
    before it sleeps), ``num_threads``, ``parallel_threshold`` (elements per
    call below which a call stays on one thread), ``kernels`` (the compiled
    optimizer kernels).
    """
    return {
        "isa": gd_isa_selected().decode(),
        "isa_compiled": gd_isa_compiled().decode(),
        "threads": bool(gd_threads_enabled()),
        "spin_us": gd_spin_us(),
        "num_threads": gd_get_num_threads(),
        "parallel_threshold": gd_parallel_threshold(),
        "kernels": [gd_kernel_name(k).decode() for k in range(GD_KERNEL_COUNT)],
    }


# ------------------------------------------------------------ declarations

cdef class Spec:
    """A declared optimizer (gdcore.family.Optimizer), compiled into the
    tables the generic path reads."""
    cdef readonly object decl
    cdef readonly str name, function
    cdef readonly int kernel
    cdef readonly tuple keys            # every hyperparameter a group carries
    cdef readonly tuple slot_names, slot_plurals, scalar_names, scalar_plurals
    cdef readonly bint counts_steps
    cdef readonly str step_use          # "required", "unused", "first"
    cdef readonly dict defaults
    cdef tuple hyper                    # (name, kind 0 real/1 bool/2 pair, in kernel,
                                        #  c names, labels of a pair's two values)
    cdef tuple checks                   # (test, message)
    cdef tuple slot_when, slot_needs
    cdef int nslots, nscalars, noptions

    def __init__(self, decl):
        self.decl = decl
        self.name, self.function = decl.name, decl.function
        self.kernel = _family.kernel_index(decl.kernel)
        name = gd_kernel_name(self.kernel)
        if name is NULL or name.decode() != decl.kernel or \
                gd_kernel_options(self.kernel) != len(decl.c_fields()):
            raise ImportError(f"gdcore._core was built from other declarations than "
                              f"gdcore/family.py ({decl.name}); rebuild it (pip install -e .)")
        self.noptions = len(decl.c_fields())
        if self.noptions > _MAX_OPTIONS:
            raise ImportError(f"{decl.name} has more than {_MAX_OPTIONS} options")
        self.keys = tuple(h.name for h in decl.hyper)
        self.hyper = tuple((h.name, {"real": 0, "bool": 1, "pair": 2}[h.kind],
                            not h.init_only, h.c,
                            (f"{h.name}[0] ({h.c[0]})", f"{h.name}[1] ({h.c[1]})")
                            if getattr(h, "split", False) else
                            (f"{h.name}[0]", f"{h.name}[1]")) for h in decl.hyper)
        self.checks = tuple((c.test, c.message) for c in decl.checks)
        self.slot_names = tuple(s.name for s in decl.state)
        self.slot_plurals = tuple(s.plural for s in decl.state)
        self.slot_when = tuple(s.when for s in decl.state)
        self.slot_needs = tuple(getattr(s, "needs", None) for s in decl.state)
        self.scalar_names = tuple(s.name for s in decl.scalars)
        self.scalar_plurals = tuple(s.plural for s in decl.scalars)
        self.nslots, self.nscalars = len(decl.state), len(decl.scalars)
        self.counts_steps = decl.counts_steps
        self.step_use = decl.step
        self.defaults = decl.defaults()

    def __repr__(self):
        return f"<gdcore spec {self.name} (kernel {self.decl.kernel})>"

    def options(self, values):
        """Check hyperparameters `values` (a mapping with every key) as torch
        does; returns the names of the state buffers they use."""
        cdef double out[_MAX_OPTIONS]
        cdef bint used[_MAX_SLOTS]
        _fill_options(self, values, out, used)
        return self.slots_used(used)

    def kernel_options(self, values):
        """(options, slots) for a direct kernel call (the C API): the
        hyperparameters `values` (a mapping with every key), checked as
        torch checks them, as a float64 ndarray in the kernel's order, and
        the names of the state buffers they use, in slot order."""
        cdef double out[_MAX_OPTIONS]
        cdef bint used[_MAX_SLOTS]
        _fill_options(self, values, out, used)
        cdef int count = gd_kernel_options(self.kernel)
        options = np.empty(count, np.float64)
        for j in range(count):
            options[j] = out[j]
        return options, self.slots_used(used)

    cdef tuple slots_used(self, const bint *used):
        return tuple([self.slot_names[s] for s in range(self.nslots) if used[s]])


SPECS = {decl.name: Spec(decl) for decl in _family.FAMILY}


cdef inline double _real(object x, str name) except? -1.0:
    try:
        return x
    except TypeError:
        raise TypeError(f"{name} must be a real number, not {type(x).__name__}") from None
    except OverflowError:
        text = repr(x)
        raise ValueError(f"{name} is out of the range of a double "
                         f"({text if len(text) < 30 else text[:24] + '...'})") from None


cdef int _fill_options(Spec spec, object values, double *out, bint *used) except -1:
    """Convert and check hyperparameters (a mapping by name) and fill the
    kernel's options (C field order) and used[s] (state slot s in use)."""
    cdef Py_ssize_t k = 0
    cdef double a, b
    cdef dict h = {}
    for name, kind, in_kernel, cnames, labels in spec.hyper:
        try:
            v = values[name]
        except KeyError:
            raise ValueError(f"param group has no {name!r} (hyperparameters: "
                             f"{', '.join(spec.keys)})") from None
        if kind == 0:
            a = _real(v, name)
            h[name] = a
            if in_kernel:
                out[k] = a
                k += 1
        elif kind == 1:
            a = 1.0 if v else 0.0
            h[name] = a != 0.0
            if in_kernel:
                out[k] = a
                k += 1
        else:
            try:
                first, second = v
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a pair ({cnames[0]}, {cnames[1]}), "
                                 f"got {v!r}") from None
            a = _real(first, labels[0])
            b = _real(second, labels[1])
            h[name] = (a, b)
            if in_kernel:
                out[k] = a
                out[k + 1] = b
                k += 2
    for test, message in spec.checks:
        if not test(h):
            raise ValueError(message.format(**{key: values[key] for key in spec.keys}))
    for s in range(spec.nslots):
        when = spec.slot_when[s]
        used[s] = True if when is None else bool(when(h))
    return 0


# ------------------------------------------------------------ batch gathering

cdef struct _Span:
    uintptr_t lo
    uintptr_t hi
    Py_ssize_t buffer
    int slot            # -1: the param, 0..2: a state buffer, 3..4: a scalar


cdef int _span_cmp(const void *a, const void *b) noexcept nogil:
    cdef uintptr_t x = (<const _Span *>a).lo
    cdef uintptr_t y = (<const _Span *>b).lo
    return (x > y) - (x < y)


cdef class _Batch:
    """One checked kernel call: gd_buffer array, buffers[fstart[f]:
    fstart[f + 1]] of element format f (_FORMAT_PARAM/_FORMAT_STATE), the
    options and param rounding, and a reference to every array whose
    pointer it holds."""
    cdef gd_buffer *buffers
    cdef Py_ssize_t *order          # buffers[k] is argument order[k]
    cdef void **scalar_ptrs         # [2 * count], argument order
    cdef Py_ssize_t count
    cdef Py_ssize_t fstart[_NFORMATS + 1]
    cdef gd_rounding rounding       # of 16-bit params (float32/64: nearest)
    cdef uint64_t seed
    cdef int nscalars
    cdef int kernel
    cdef double options[_MAX_OPTIONS]
    cdef list keep
    cdef object index               # the callers' position of each argument (or None)

    def __dealloc__(self):
        free(self.buffers)
        free(self.order)
        free(self.scalar_ptrs)

    def run(self):
        """Run the kernel (GIL released).  Cannot fail once built."""
        self._run()

    cdef void _run(self, double grad_multiplier=1.0) noexcept:
        with nogil:
            _run_formats(self.kernel, self.options, self.buffers, self.fstart, self.rounding,
                         self.seed, grad_multiplier)
        if self.nscalars:
            _store_scalars(self.buffers, self.order, self.scalar_ptrs, self.count,
                           self.nscalars)


cdef void _run_formats(int kernel, const double *options, gd_buffer *buffers,
                       const Py_ssize_t *fstart, gd_rounding rounding, uint64_t seed,
                       double grad_multiplier) noexcept nogil:
    """One kernel call per element format present in buffers (grouped by
    format: fstart, see _Batch)."""
    cdef gd_format fmt
    cdef int f
    for f in range(_NFORMATS):
        if fstart[f + 1] > fstart[f]:
            fmt.param = _FORMAT_PARAM[f]
            fmt.state = _FORMAT_STATE[f]
            fmt.rounding = rounding if f >= 2 else GD_ROUND_NEAREST
            fmt.seed = seed
            gd_step_format(kernel, &fmt, options, buffers + fstart[f], fstart[f + 1] - fstart[f],
                           grad_multiplier)


cdef void _store_scalars(const gd_buffer *buffers, const Py_ssize_t *order, void **ptrs,
                         Py_ssize_t count, int nscalars) noexcept:
    """Write each buffer's new scalar state back to its 0-d arrays
    (ptrs[2 * order[k] + j] for buffers[k]); a buffer with step 0 took no
    step (a skipped param in a plan) and keeps its scalars."""
    cdef Py_ssize_t k, i
    cdef int j
    for k in range(count):
        if buffers[k].step == 0:
            continue
        i = order[k]
        for j in range(nscalars):
            if buffers[k].scalar_float64:
                (<double *>ptrs[2 * i + j])[0] = buffers[k].scalar[j]
            else:
                (<float *>ptrs[2 * i + j])[0] = <float>buffers[k].scalar[j]


cdef str _label(tuple names, Py_ssize_t i, object index, bint single):
    if single:
        return names[0]
    return f"{names[1]}[{i if index is None else index[i]}]"


cdef inline bint _same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(b):
        return False
    cdef cnp.npy_intp *da = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp *db = cnp.PyArray_DIMS(b)
    for k in range(nd):
        if da[k] != db[k]:
            return False
    return True


cdef cnp.ndarray _check_written(object obj, tuple names, Py_ssize_t i, object index,
                                bint single, cnp.ndarray param, bint exact=False):
    """A buffer the kernel writes: the param (param is None), a state (of
    the param's dtype, or float32 for a 16-bit param) or, exact, a buffer
    of exactly the param's dtype (a Kahan compensation)."""
    if not cnp.PyArray_Check(obj):
        what = "a param" if param is None else "a state buffer"
        raise TypeError(f"{_label(names, i, index, single)} must be a numpy.ndarray "
                        f"({what} is updated in place), not {type(obj).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>obj
    cdef int code = _elem_code(a), param_code
    if param is None:
        if code < 0:
            raise TypeError(f"{_label(names, i, index, single)} has dtype {a.dtype}; "
                            "gdcore updates float32, float64, bfloat16 and float16 arrays "
                            "in native byte order")
    else:
        param_code = _elem_code(param)
        if code != param_code and (exact or code != GD_FLOAT32 or
                                   param_code == GD_FLOAT64):
            allowed = " or float32" if not exact and param_code > GD_FLOAT64 else ""
            raise TypeError(f"{_label(names, i, index, single)} has dtype {a.dtype} but its "
                            f"param has dtype {param.dtype} (it must be the param's "
                            f"dtype{allowed})")
        if not _same_shape(a, param):
            raise ValueError(f"{_label(names, i, index, single)} has shape {(<object>a).shape} but its "
                             f"param has shape {(<object>param).shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{_label(names, i, index, single)} is not C-contiguous; gdcore "
                         "updates contiguous buffers in place (np.ascontiguousarray makes "
                         "a copy, which would not be updated)")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{_label(names, i, index, single)} is not aligned to its dtype")
    if not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{_label(names, i, index, single)} is read-only")
    return a


cdef cnp.ndarray _check_scalar(object obj, tuple names, Py_ssize_t i, object index,
                               bint single):
    """Per-param scalar state: a writable 0-d float32/float64 array."""
    label = _label(names, i, index, single)
    if not cnp.PyArray_Check(obj) or cnp.PyArray_NDIM(<cnp.ndarray>obj) != 0:
        what = type(obj).__name__ if not cnp.PyArray_Check(obj) else \
            f"an array of shape {(<object>obj).shape}"
        raise TypeError(f"{label} must be a 0-d numpy.ndarray of float32 or float64 (scalar "
                        f"state is updated in place, like torch's 0-d tensor), not {what}")
    cdef cnp.ndarray a = <cnp.ndarray>obj
    cdef int typenum = cnp.PyArray_TYPE(a)
    if (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64) or \
            cnp.PyArray_ISBYTESWAPPED(a):
        raise TypeError(f"{label} has dtype {a.dtype}; scalar state is float32 or float64")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{label} is not aligned to its dtype")
    if not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{label} is read-only")
    return a


def check_param(obj, str label):
    """Raise as a step would if `obj` cannot be a param (named `label`)."""
    _check_written(obj, (label, label), 0, None, True, None)


cdef object _as_grad(object obj, Py_ssize_t i, object index, bint single):
    """Convert one grad to an ndarray (may run user code: __array__)."""
    if obj is None:
        raise TypeError(f"{_label(_GRAD, i, index, single)} is None")
    if cnp.PyArray_Check(obj):
        if type(obj) is np.ndarray:
            return obj
        # a subclass: viewed as a plain ndarray now, so that no later copy
        # (of a non-contiguous or overlapping grad) runs its hooks
        return _plain_view(<cnp.ndarray>obj, NULL, <void *>np.ndarray)
    try:
        obj = np.asarray(obj)
        if type(obj) is not np.ndarray:
            obj = _plain_view(<cnp.ndarray>obj, NULL, <void *>np.ndarray)
        return obj
    except Exception as exc:
        raise TypeError(f"{_label(_GRAD, i, index, single)} is not array-like: "
                        f"{exc}") from exc


def as_grads(list grads):
    """The grads of a class step as ndarrays (None stays None), converted
    once, before any check: the only place a class step runs user code."""
    cdef Py_ssize_t i, n = len(grads)
    cdef list out = [None] * n
    for i in range(n):
        g = grads[i]
        if g is not None:
            out[i] = _as_grad(g, i, None, False)
    return out


cdef cnp.ndarray _check_grad(cnp.ndarray g, Py_ssize_t i, object index, bint single,
                             cnp.ndarray param, list keep):
    """A gradient (already an ndarray) of exactly the param's dtype and shape."""
    cdef int typenum = cnp.PyArray_TYPE(g)
    if typenum != cnp.PyArray_TYPE(param) or cnp.PyArray_ISBYTESWAPPED(g):
        if not cnp.PyTypeNum_ISNUMBER(typenum) or cnp.PyTypeNum_ISBOOL(typenum):
            raise TypeError(f"{_label(_GRAD, i, index, single)} is not numeric "
                            f"(dtype {g.dtype})")
        raise TypeError(f"{_label(_GRAD, i, index, single)} has dtype {g.dtype} but its "
                        f"param has dtype {param.dtype}; gdcore does not cast")
    if not _same_shape(g, param):
        raise ValueError(f"{_label(_GRAD, i, index, single)} has shape {(<object>g).shape} but its "
                         f"param has shape {(<object>param).shape}")
    if not (cnp.PyArray_IS_C_CONTIGUOUS(g) and cnp.PyArray_ISALIGNED(g)):
        g = cnp.PyArray_NewCopy(g, cnp.NPY_CORDER)     # read-only input: an exact copy
        keep.append(g)
    return g


cdef inline void _add_span(_Span *spans, Py_ssize_t *count, cnp.ndarray a,
                           Py_ssize_t buffer, int slot):
    cdef Py_ssize_t nbytes = cnp.PyArray_NBYTES(a)
    if nbytes == 0:
        return
    spans[count[0]].lo = <uintptr_t>cnp.PyArray_DATA(a)
    spans[count[0]].hi = spans[count[0]].lo + <uintptr_t>nbytes
    spans[count[0]].buffer = buffer
    spans[count[0]].slot = slot
    count[0] += 1


cdef str _span_label(_Span s, Spec spec, object index, bint single):
    if s.slot < 0:
        names = _PARAM
    elif s.slot == _COMP_SLOT:
        names = _COMPENSATION
    elif s.slot < _MAX_SLOTS:
        names = (spec.slot_names[s.slot], spec.slot_plurals[s.slot])
    else:
        names = (spec.scalar_names[s.slot - _MAX_SLOTS], spec.scalar_plurals[s.slot - _MAX_SLOTS])
    return _label(names, s.buffer, index, single)


cdef bint _overlaps_written(const _Span *spans, Py_ssize_t count, uintptr_t lo,
                            uintptr_t hi) noexcept:
    """Whether [lo, hi) meets one of `count` sorted, disjoint spans."""
    cdef Py_ssize_t first = 0, last = count, mid
    while first < last:                 # first span with hi > lo
        mid = (first + last) // 2
        if spans[mid].hi > lo:
            last = mid
        else:
            first = mid + 1
    return first < count and spans[first].lo < hi


cdef int64_t _one_step(object value, str label) except -1:
    """A step number: an int (``__index__``, may run user code) >= 1 that
    fits in 64 bits."""
    try:
        step = operator.index(value)
    except TypeError:
        raise TypeError(f"{label} must be an int, not {type(value).__name__}") from None
    if step < 1:
        raise ValueError(f"{label} must be >= 1 (steps count from 1), got {step}")
    if step > _MAX_STEP:
        raise ValueError(f"{label} = {step} is too large (at most 2**63 - 1)")
    return step


cdef int _fill_steps(object steps, Py_ssize_t n, object index, bint single,
                     gd_buffer *staged) except -1:
    """staged[i].step from an int or one int per buffer (may run user code:
    __index__)."""
    cdef Py_ssize_t i
    cdef int64_t step
    if isinstance(steps, (list, tuple)):
        if len(steps) != n:
            raise ValueError(f"got {len(steps)} steps for {n} params")
        steps = list(steps)
        for i in range(n):
            staged[i].step = _one_step(steps[i],
                                       f"steps[{i if index is None else index[i]}]")
        return 0
    step = _one_step(steps, "step" if single else "steps")
    for i in range(n):
        staged[i].step = step
    return 0


cdef Py_ssize_t _gather_written(Spec spec, list params, tuple slots, tuple scalars,
                                object index, bint single, gd_buffer *staged,
                                void **scalar_ptrs, _Span *spans, int *formats=NULL,
                                list compensations=None) except -1:
    """Check the buffers a batch writes (params, state, scalars) and fill
    `staged` (argument order) with everything but the grads and steps;
    `spans` receives their memory, sorted.  Returns the number of spans.
    Runs no user code.

    slots: one list (or None: unused) per state slot, in declaration order;
    scalars: one list per scalar.  index: None, or the position of each
    buffer in the caller's own lists (used in messages).  single: name
    buffers as in the single-buffer functions.  formats (if not NULL):
    receives each buffer's element format (_FORMAT_PARAM/_FORMAT_STATE).
    compensations: None, or one Kahan compensation buffer per param."""
    cdef Py_ssize_t n = len(params), i, k, s, nspans = 0, first
    cdef cnp.ndarray p, a
    cdef int typenum, state_code
    for i in range(n):
        p = _check_written(params[i], _PARAM, i, index, single, None)
        staged[i].param = cnp.PyArray_DATA(p)
        staged[i].grad = NULL
        staged[i].n = cnp.PyArray_SIZE(p)
        _add_span(spans, &nspans, p, i, -1)
        for s in range(_MAX_SLOTS):
            staged[i].state[s] = NULL
        state_code = -1
        first = -1
        for s in range(spec.nslots):
            if slots[s] is None:
                continue
            a = _check_written((<list>slots[s])[i], (spec.slot_names[s], spec.slot_plurals[s]),
                               i, index, single, p)
            if state_code < 0:
                state_code, first = _elem_code(a), s
            elif _elem_code(a) != state_code:
                raise TypeError(
                    f"{_label((spec.slot_names[s], spec.slot_plurals[s]), i, index, single)} "
                    f"has dtype {a.dtype} but "
                    f"{_label((spec.slot_names[first], spec.slot_plurals[first]), i, index, single)} "
                    f"has dtype {(<list>slots[first])[i].dtype}; a param's state buffers "
                    "share one dtype")
            staged[i].state[s] = cnp.PyArray_DATA(a)
            _add_span(spans, &nspans, a, i, s)
        if formats != NULL:
            formats[i] = _format_of(_elem_code(p), state_code if state_code >= 0
                                    else _elem_code(p))
        staged[i].compensation = NULL
        if compensations is not None:
            a = _check_written(compensations[i], _COMPENSATION, i, index, single, p, True)
            if not _same_shape(a, p):
                raise ValueError(f"{_label(_COMPENSATION, i, index, single)} has shape "
                                 f"{(<object>a).shape} but its param has shape "
                                 f"{(<object>p).shape}")
            staged[i].compensation = cnp.PyArray_DATA(a)
            _add_span(spans, &nspans, a, i, _COMP_SLOT)
        staged[i].scalar[0] = staged[i].scalar[1] = 0
        staged[i].scalar_float64 = 0
        for s in range(spec.nscalars):
            names = (spec.scalar_names[s], spec.scalar_plurals[s])
            a = _check_scalar((<list>scalars[s])[i], names, i, index, single)
            typenum = cnp.PyArray_TYPE(a)
            if s == 0:
                staged[i].scalar_float64 = typenum == cnp.NPY_FLOAT64
            elif staged[i].scalar_float64 != (typenum == cnp.NPY_FLOAT64):
                raise TypeError(f"{_label(names, i, index, single)} has dtype {a.dtype} but "
                                f"{_label((spec.scalar_names[0], spec.scalar_plurals[0]), i, index, single)} "
                                f"has dtype {(<list>scalars[0])[i].dtype}")
            scalar_ptrs[2 * i + s] = cnp.PyArray_DATA(a)
            staged[i].scalar[s] = (<double *>cnp.PyArray_DATA(a))[0] \
                if typenum == cnp.NPY_FLOAT64 else (<float *>cnp.PyArray_DATA(a))[0]
            _add_span(spans, &nspans, a, i, _MAX_SLOTS + s)
    # Written buffers must be pairwise disjoint.
    qsort(spans, nspans, sizeof(_Span), _span_cmp)
    k = _first_overlap(spans, nspans)
    if k:
        raise ValueError(
            f"{_span_label(spans[k - 1], spec, index, single)} and "
            f"{_span_label(spans[k], spec, index, single)} overlap in memory; "
            "every param and state buffer must be a distinct array")
    return nspans


cdef Py_ssize_t _first_overlap(const _Span *spans, Py_ssize_t nspans) noexcept:
    """k > 0 where sorted spans[k - 1] and spans[k] overlap (two params if
    any two overlap: the same param listed twice shares its state too, and
    the params say why), else 0."""
    cdef Py_ssize_t k, first = 0
    for k in range(1, nspans):
        if spans[k].lo < spans[k - 1].hi:
            if spans[k].slot < 0 and spans[k - 1].slot < 0:
                return k
            if first == 0:
                first = k
    return first


cdef int _gather_grad(cnp.ndarray grad, Py_ssize_t i, object index, bint single,
                      cnp.ndarray param, gd_buffer *buffer, const _Span *spans,
                      Py_ssize_t nspans, list keep) except -1:
    """Check one grad and point buffer.grad at it; a grad that shares memory
    with a written buffer is read from a copy (kept alive in `keep`)."""
    cdef cnp.ndarray g = _check_grad(grad, i, index, single, param, keep)
    cdef uintptr_t lo = <uintptr_t>cnp.PyArray_DATA(g)
    cdef uintptr_t hi = lo + <uintptr_t>cnp.PyArray_NBYTES(g)
    if hi > lo and _overlaps_written(spans, nspans, lo, hi):
        g = cnp.PyArray_NewCopy(g, cnp.NPY_CORDER)
        keep.append(g)
    buffer.grad = cnp.PyArray_DATA(g)
    return 0


cdef void _partition(Py_ssize_t n, const int *formats, const gd_buffer *staged,
                     gd_buffer *out, Py_ssize_t *order, Py_ssize_t *fstart) noexcept:
    """Copy staged into out grouped by element format (in _FORMAT_PARAM's
    order), keeping the argument order within a format; order[k] = the
    argument position of out[k]; fstart[f]: where format f starts
    (fstart[_NFORMATS] = n)."""
    cdef Py_ssize_t i, k, f
    cdef Py_ssize_t next_slot[_NFORMATS]
    for f in range(_NFORMATS + 1):
        fstart[f] = 0
    for i in range(n):
        fstart[formats[i] + 1] += 1
    for f in range(_NFORMATS):
        fstart[f + 1] += fstart[f]
        next_slot[f] = fstart[f]
    for i in range(n):
        k = next_slot[formats[i]]
        next_slot[formats[i]] += 1
        memcpy(&out[k], &staged[i], sizeof(gd_buffer))
        order[k] = i


cdef _Batch _gather(Spec spec, const double *options, list params, list grads, tuple slots,
                    tuple scalars, object steps, object index, bint single,
                    gd_rounding rounding=GD_ROUND_NEAREST, uint64_t seed=0,
                    list compensations=None, object streams=None):
    """A checked kernel call.  The lists are the caller's own copies; grads
    may still need converting (user code), which happens first, with the
    steps and streams, before any check.  rounding, seed, compensations and
    streams: how 16-bit params are stored (see gd_format); streams None:
    each buffer's position (index[i], else i)."""
    cdef Py_ssize_t n = len(params), i
    if len(grads) != n:
        raise ValueError(f"got {len(grads)} grads for {n} params")
    for s in range(spec.nslots):
        if slots[s] is not None and len(slots[s]) != n:
            raise ValueError(f"got {len(slots[s])} {spec.slot_plurals[s]} for {n} params")
    for s in range(spec.nscalars):
        if len(scalars[s]) != n:
            raise ValueError(f"got {len(scalars[s])} {spec.scalar_plurals[s]} for {n} params")
    comp_label = _COMPENSATION[0 if single else 1]
    if rounding == GD_ROUND_KAHAN and compensations is None:
        raise ValueError(f"rounding='kahan' needs {comp_label} (the param's dtype and shape, "
                         "starting at zero)")
    if rounding != GD_ROUND_KAHAN and compensations is not None:
        raise ValueError(f"{comp_label} is only used with rounding='kahan'")
    if compensations is not None and len(compensations) != n:
        raise ValueError(f"got {len(compensations)} compensations for {n} params")
    cdef _Batch batch = _Batch.__new__(_Batch)
    batch.keep = [params, grads, slots, scalars, compensations]
    batch.index = range(n) if index is None else index
    batch.count = n
    batch.kernel = spec.kernel
    batch.nscalars = spec.nscalars
    batch.rounding = rounding
    batch.seed = seed
    memcpy(batch.options, options, _MAX_OPTIONS * sizeof(double))
    batch.buffers = <gd_buffer *>malloc((2 * n + 1) * sizeof(gd_buffer))
    batch.order = <Py_ssize_t *>malloc((n + 1) * sizeof(Py_ssize_t))
    batch.scalar_ptrs = <void **>malloc((2 * n + 1) * sizeof(void *))
    cdef _Span *spans = <_Span *>malloc((_SPANS_PER_BUFFER * n + 1) * sizeof(_Span))
    cdef int *formats = <int *>malloc((n + 1) * sizeof(int))
    if batch.buffers == NULL or spans == NULL or batch.order == NULL or \
            batch.scalar_ptrs == NULL or formats == NULL:
        free(spans)
        free(formats)
        raise MemoryError()
    cdef gd_buffer *staged = batch.buffers + n   # in argument order
    cdef Py_ssize_t nspans
    try:
        # 1. user code: step numbers, streams, grad conversion
        _fill_steps(steps, n, index, single, staged)
        stream_values = _stream_values(streams, n, index, single)
        for i in range(n):
            g = grads[i]
            if type(g) is not np.ndarray:
                grads[i] = _as_grad(g, i, index, single)
        # 2. checks (no user code from here on)
        if rounding != GD_ROUND_NEAREST:
            for i in range(n):
                if _is_wide(params[i]):
                    raise ValueError(
                        f"rounding={_rounding_name(rounding)!r} is for bfloat16 and float16 "
                        f"params; {_label(_PARAM, i, index, single)} has dtype "
                        f"{params[i].dtype} (float32 and float64 params are computed and "
                        "stored in their own dtype)")
        nspans = _gather_written(spec, params, slots, scalars, index, single, staged,
                                 batch.scalar_ptrs, spans, formats, compensations)
        for i in range(n):
            staged[i].stream = <uint64_t>stream_values[i]
            _gather_grad(<cnp.ndarray>grads[i], i, index, single, <cnp.ndarray>params[i],
                         &staged[i], spans, nspans, batch.keep)
        _partition(n, formats, staged, batch.buffers, batch.order, batch.fstart)
    finally:
        free(spans)
        free(formats)
    return batch


cdef bint _is_wide(object param):
    """Whether param is a float32 or float64 ndarray (no rounding mode)."""
    return cnp.PyArray_Check(param) and (_elem_code(<cnp.ndarray>param) == GD_FLOAT32 or
                                         _elem_code(<cnp.ndarray>param) == GD_FLOAT64)


cdef str _rounding_name(gd_rounding rounding):
    for name, code in _ROUNDINGS.items():
        if code == rounding:
            return name
    return str(rounding)


cdef list _stream_values(object streams, Py_ssize_t n, object index, bint single):
    """Each buffer's random stream: streams (one int in [0, 2**64) per
    buffer; may run user code: __index__), or by default its position."""
    if streams is None:
        return list(range(n)) if index is None else [int(x) for x in index]
    if not isinstance(streams, (list, tuple)):
        raise TypeError(f"streams must be a list of ints, not {type(streams).__name__}")
    if len(streams) != n:
        raise ValueError(f"got {len(streams)} streams for {n} params")
    cdef list out = list(streams)
    cdef Py_ssize_t i
    for i in range(n):
        x = out[i]
        if type(x) is not int or x < 0 or x > _MAX_SEED:     # (else: no Python call)
            out[i] = seed_value(x, "stream" if single else f"streams[{i}]")
    return out


cdef list _as_list(object seq, str name):
    """A private copy of a sequence argument (user code cannot change it)."""
    if isinstance(seq, (list, tuple, range)) or hasattr(seq, "__len__"):
        return list(seq)
    raise TypeError(f"{name} must be a sequence, not {type(seq).__name__}")


# ------------------------------------------------------- the functional API

def run(Spec spec, bint single, params, grads, tuple states, tuple scalars, steps,
        dict hyper, rounding="nearest", seed=0, compensations=None, streams=None):
    """One functional step (gdcore/functional.py builds the public functions
    from the declarations).  single: params, grads and each state and scalar
    argument are one buffer each, else sequences.  states: one entry per
    state slot (None where not given); hyper: the given hyperparameters by
    name (the rest take their defaults).  rounding, seed, compensations,
    streams: the storage of 16-bit params (single: one compensation and one
    stream)."""
    cdef double options[_MAX_OPTIONS]
    cdef bint used[_MAX_SLOTS]
    values = spec.defaults if not hyper else dict(spec.defaults, **hyper)
    _fill_options(spec, values, options, used)
    # (the defaults without a Python call: per-call overhead)
    cdef gd_rounding rounding_code_ = GD_ROUND_NEAREST
    if not (type(rounding) is str and <str>rounding == "nearest"):
        rounding_code_ = rounding_code(rounding)
    cdef uint64_t seed_ = 0
    if not (type(seed) is int and seed == 0):
        seed_ = seed_value(seed)
    if compensations is not None:
        compensations = [compensations] if single else _as_list(compensations,
                                                                "compensations")
    if single:
        streams = [streams]
    cdef int w = 0 if single else 1
    slot_lists = []
    for s in range(spec.nslots):
        given = states[s]
        label = (spec.slot_names[s], spec.slot_plurals[s])[w]
        needs = spec.slot_needs[s]
        if used[s] and given is None:
            if needs is None:
                raise ValueError(f"{spec.function} needs {label}")
            raise ValueError(f"{label} is needed with {needs} and only then")
        if not used[s] and given is not None:
            raise ValueError(f"{label} is only used with {needs} (and only then)")
        slot_lists.append(None if given is None else
                          ([given] if single else _as_list(given, spec.slot_plurals[s])))
    scalar_lists = []
    for s in range(spec.nscalars):
        given = scalars[s]
        scalar_lists.append([given] if single else _as_list(given, spec.scalar_plurals[s]))
    stochastic = rounding_code_ == GD_ROUND_STOCHASTIC
    if stochastic and steps is None:
        raise ValueError(f"rounding='stochastic' needs step{'' if single else 's'} (the "
                         "random bits of every step differ)")
    if spec.step_use == "unused":
        if not stochastic:
            steps = 1
    elif spec.step_use == "first":
        if any(used[s] for s in range(spec.nslots)):
            if steps is None:
                label = next(spec.slot_names[s] for s in range(spec.nslots) if used[s])
                raise ValueError(f"step{'' if single else 's'} is needed with "
                                 f"{spec.slot_needs[0]} (step 1 initialises {label} "
                                 "with the gradient)")
        elif not stochastic:
            steps = 1
    elif steps is None:
        raise ValueError(f"{spec.function} needs step{'' if single else 's'}")
    cdef _Batch b
    if single:
        b = _gather(spec, options, [params], [grads], tuple(slot_lists), tuple(scalar_lists),
                    steps, None, True, rounding_code_, seed_, compensations, streams)
    else:
        b = _gather(spec, options, _as_list(params, "params"), _as_list(grads, "grads"),
                    tuple(slot_lists), tuple(scalar_lists), steps, None, False,
                    rounding_code_, seed_, compensations,
                    None if streams is None else _as_list(streams, "streams"))
    b.run()


# -------------------------------------------- the optimizer classes' path

cdef inline bint _immutable_scalar(object v):
    return type(v) is float or type(v) is int or type(v) is bool


cdef object _group_values(dict group, tuple keys):
    """The group's hyperparameter objects, if all are immutable (Python
    scalars, tuples of them), so that identity means "unchanged"; else None
    (a list or a tensor can change in place: such a group is re-read and
    re-checked at every step)."""
    values = []
    for key in keys:
        v = group[key]
        if type(v) is tuple:
            for x in <tuple>v:
                if not _immutable_scalar(x):
                    return None
        elif not _immutable_scalar(v):
            return None
        values.append(v)
    return tuple(values)


def check_group(Spec spec, dict group):
    """Check a class's param group hyperparameters (raises ValueError or
    TypeError); returns the names of the state buffers its steps use."""
    return spec.options(group)


def group_batch(Spec spec, dict group, list params, list grads, list states, object steps,
                list index):
    """A checked, deferred kernel call for one param group of a class:
    states[i] maps torch's state names to param i's arrays (and scalars);
    grads are ndarrays (see as_grads)."""
    cdef double options[_MAX_OPTIONS]
    cdef bint used[_MAX_SLOTS]
    _fill_options(spec, group, options, used)
    slots = tuple([[st[spec.slot_names[s]] for st in states] if used[s] else None
                   for s in range(spec.nslots)])
    scalars = tuple([[st[name] for st in states] for name in spec.scalar_names])
    cdef gd_rounding rounding = rounding_code(group.get("rounding", "nearest"))
    compensations = None
    if rounding == GD_ROUND_KAHAN:
        compensations = []
        for i, st in enumerate(states):
            if "compensation" not in st and not _is_wide(params[i]):
                raise ValueError(f"state[{index[i]}] has no 'compensation' (rounding='kahan' "
                                 "keeps one per 16-bit param)")
            compensations.append(st.get("compensation"))   # (wide: refused by _gather)
    return _gather(spec, options, list(params), list(grads), slots, scalars, steps, index,
                   False, rounding, seed_value(group.get("seed", 0)), compensations)


cdef inline int _format_at(const Py_ssize_t *fstart, Py_ssize_t k) noexcept:
    """The element format of buffers[k] of a batch grouped by fstart."""
    cdef int f = 0
    while f < _NFORMATS - 1 and k >= fstart[f + 1]:
        f += 1
    return f


cdef str _written_label(_Span s, _Batch batch, Spec spec):
    i = batch.index[batch.order[s.buffer]]
    if s.slot < 0:
        return f"params[{i}]"
    if s.slot == _COMP_SLOT:
        return f"state[{i}]['compensation']"
    if s.slot < _MAX_SLOTS:
        return f"state[{i}][{spec.slot_names[s.slot]!r}]"
    return f"state[{i}][{spec.scalar_names[s.slot - _MAX_SLOTS]!r}]"


cdef int _check_across(list batches, Spec spec) except -1:
    """The batches of one general step (one per param group) write pairwise
    disjoint memory, as one batch's buffers do; a grad that shares memory
    with a buffer another batch writes is read from a copy (the batches run
    one after the other)."""
    cdef Py_ssize_t total = 0, nspans = 0, k, j, b
    cdef _Batch batch
    cdef _Span *spans
    cdef uintptr_t lo
    cdef int esize, f
    for batch in batches:
        total += batch.count
    spans = <_Span *>malloc((_SPANS_PER_BUFFER * total + 1) * sizeof(_Span))
    owner = []                          # spans[j] belongs to batches[owner[j]]
    if spans == NULL:
        raise MemoryError()
    try:
        for b in range(len(batches)):
            batch = <_Batch>batches[b]
            for k in range(batch.count):
                f = _format_at(batch.fstart, k)
                esize = _ELEM_BYTES[<int>_FORMAT_PARAM[f]]
                _add_raw(spans, &nspans, batch.buffers[k].param,
                         batch.buffers[k].n * esize, k, -1, owner, b)
                if batch.buffers[k].compensation != NULL:
                    _add_raw(spans, &nspans, batch.buffers[k].compensation,
                             batch.buffers[k].n * esize, k, _COMP_SLOT, owner, b)
                for j in range(_MAX_SLOTS):
                    if batch.buffers[k].state[j] != NULL:
                        _add_raw(spans, &nspans, batch.buffers[k].state[j],
                                 batch.buffers[k].n * _ELEM_BYTES[<int>_FORMAT_STATE[f]], k, j,
                                 owner, b)
                for j in range(batch.nscalars):
                    _add_raw(spans, &nspans, batch.scalar_ptrs[2 * batch.order[k] + j],
                             8 if batch.buffers[k].scalar_float64 else 4, k,
                             _MAX_SLOTS + j, owner, b)
        # sort by address, carrying the owner along
        for j in range(nspans):
            spans[j].buffer = spans[j].buffer * len(batches) + owner[j]
        qsort(spans, nspans, sizeof(_Span), _span_cmp)
        for j in range(nspans):
            b = spans[j].buffer % len(batches)
            spans[j].buffer //= len(batches)
            owner[j] = b
        j = _first_overlap(spans, nspans)
        if j:
            raise ValueError(
                f"{_written_label(spans[j - 1], batches[owner[j - 1]], spec)} and "
                f"{_written_label(spans[j], batches[owner[j]], spec)} overlap in memory; "
                "every param and state buffer must be a distinct array")
        for b in range(len(batches)):
            batch = <_Batch>batches[b]
            for k in range(batch.count):
                esize = _ELEM_BYTES[<int>_FORMAT_PARAM[_format_at(batch.fstart, k)]]
                lo = <uintptr_t>batch.buffers[k].grad
                if batch.buffers[k].n and _overlaps_written(
                        spans, nspans, lo, lo + <uintptr_t>(batch.buffers[k].n * esize)):
                    copy = np.empty(batch.buffers[k].n * esize // 2, np.uint16)
                    memcpy(cnp.PyArray_DATA(<cnp.ndarray>copy), batch.buffers[k].grad,
                           batch.buffers[k].n * esize)
                    batch.keep.append(copy)
                    batch.buffers[k].grad = cnp.PyArray_DATA(<cnp.ndarray>copy)
    finally:
        free(spans)
    return 0


cdef inline void _add_raw(_Span *spans, Py_ssize_t *count, const void *data, int64_t nbytes,
                          Py_ssize_t buffer, int slot, list owner, Py_ssize_t b):
    if nbytes == 0:
        return
    spans[count[0]].lo = <uintptr_t>data
    spans[count[0]].hi = spans[count[0]].lo + <uintptr_t>nbytes
    spans[count[0]].buffer = buffer
    spans[count[0]].slot = slot
    owner.append(b)
    count[0] += 1


def commit_and_run(Spec spec, list pending, dict state_by_id, bint counts_steps,
                   double grad_multiplier=1.0):
    """The general path's commit: for each (batch, touched) of `pending`
    (each batch already checked), check that the batches write disjoint
    memory (and copy grads that alias what another batch writes), then add
    the new state entries, register new state, set the step counters and
    run every batch.  After the check only C-level dict operations and
    kernels run, so a signal's KeyboardInterrupt cannot land between
    groups: either every group steps or none changes.
    touched: (param, state dict, is_new, added entries or None, new step).
    grad_multiplier: every grad element is multiplied by it in the kernel."""
    cdef tuple entry
    if len(pending) > 1:
        _check_across([batch for batch, _ in pending], spec)
    for batch, touched in pending:
        for entry in touched:
            p, state, is_new, added, step = entry
            if added:
                (<dict>state).update(added)
            if is_new:
                state_by_id[id(p)] = (p, state)
            if counts_steps:
                (<dict>state)["step"] = step
    for batch, _ in pending:
        (<_Batch>batch)._run(grad_multiplier)


# ------------------------------------------- gdcore.torch's state watch

from cpython.dict cimport PyDict_Next, PyDict_Size
from cpython.object cimport PyObject


cdef extern from *:
    """
    /* A dict's version tag (PEP 509): CPython 3.11 to 3.13 give every dict
       a globally unique tag that changes whenever the dict is modified
       (deprecated for C extensions since 3.12, gone in 3.14).  Elsewhere
       StateSnapshot walks the dicts' entries instead. */
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && \
        !defined(Py_GIL_DISABLED) && !defined(PYPY_VERSION)
    #define GD_DICT_TAGS 1
    #if defined(__GNUC__)
    #pragma GCC diagnostic push
    #pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    #endif
    static inline uint64_t gd_dict_tag(PyObject *d) { return ((PyDictObject *)d)->ma_version_tag; }
    #if defined(__GNUC__)
    #pragma GCC diagnostic pop
    #endif
    #else
    #define GD_DICT_TAGS 0
    static inline uint64_t gd_dict_tag(PyObject *d) { (void)d; return 0; }
    #endif
    """
    bint GD_DICT_TAGS
    uint64_t gd_dict_tag(PyObject *d) noexcept

cdef bint _dict_tags_on = GD_DICT_TAGS


def use_dict_tags(bint on):
    """(tests) Whether StateSnapshots captured from now on compare version
    tags (where CPython has them) or walk the entries; returns the previous
    setting."""
    global _dict_tags_on
    previous = _dict_tags_on
    _dict_tags_on = on and GD_DICT_TAGS
    return previous


cdef class StateSnapshot:
    """What gdcore.torch's engine was last in step with: torch's
    ``optimizer.state`` (the mapping itself, each param's dict, each entry)
    and the values of the `step` counters it advances.  `same` tells,
    without hashing tensors, whether anything was replaced, added, removed
    or set since: where CPython keeps dict version tags (3.11 to 3.13), by
    comparing the tag of the mapping and of each param's dict (one load per
    dict), else by walking every entry.  An in-place change of a step
    counter shows as a value other than the one expected."""
    cdef object mapping
    cdef list dicts                 # [key, dict, key, dict, ...] in mapping order
    cdef list entries               # per dict: tuple (key, value, key, value, ...)
    cdef bint tagged                # compare version tags (else walk the entries)
    cdef uint64_t mapping_tag
    cdef uint64_t *dict_tags        # [ndicts]: each param dict's tag as captured
    cdef PyObject **dict_ptrs       # [ndicts]: the dicts (referenced by `dicts`)
    cdef Py_ssize_t ndicts
    cdef list counters              # pinning the memory of counter_ptrs
    cdef void **counter_ptrs
    cdef bint *counter_f64
    cdef double *expected

    def __dealloc__(self):
        free(self.expected)
        free(self.counter_ptrs)
        free(self.counter_f64)
        free(self.dict_tags)
        free(self.dict_ptrs)

    @staticmethod
    def capture(object mapping, list counters):
        if not isinstance(mapping, dict):
            return None
        cdef StateSnapshot snap = StateSnapshot.__new__(StateSnapshot)
        cdef Py_ssize_t pos = 0, i
        cdef PyObject *key
        cdef PyObject *value
        snap.mapping, snap.dicts, snap.entries = mapping, [], []
        while PyDict_Next(mapping, &pos, &key, &value):
            snap.dicts.append(<object>key)
            snap.dicts.append(<object>value)
            snap.entries.append(_dict_items(<object>value))
        snap.ndicts = len(snap.entries)
        snap.dict_tags = <uint64_t *>malloc((snap.ndicts + 1) * sizeof(uint64_t))
        snap.dict_ptrs = <PyObject **>malloc((snap.ndicts + 1) * sizeof(PyObject *))
        if snap.dict_tags == NULL or snap.dict_ptrs == NULL:
            raise MemoryError()
        # Tags only where every param's state is an exact dict (a subclass
        # might keep entries elsewhere; its `same` is always False anyway).
        snap.tagged = _dict_tags_on and all(e is not None for e in snap.entries)
        snap.mapping_tag = gd_dict_tag(<PyObject *>mapping)
        for i in range(snap.ndicts):
            snap.dict_ptrs[i] = <PyObject *>snap.dicts[2 * i + 1]
            snap.dict_tags[i] = gd_dict_tag(snap.dict_ptrs[i])
        if not _counters_ok(counters):
            raise TypeError("counters must be writable, aligned 1-element float32/float64 "
                            "numpy arrays")
        snap.counters = list(counters)
        n = len(counters)
        snap.expected = <double *>malloc((n + 1) * sizeof(double))
        snap.counter_ptrs = <void **>malloc((n + 1) * sizeof(void *))
        snap.counter_f64 = <bint *>malloc((n + 1) * sizeof(bint))
        if snap.expected == NULL or snap.counter_ptrs == NULL or snap.counter_f64 == NULL:
            raise MemoryError()
        for i in range(n):
            a = <cnp.ndarray>snap.counters[i]
            snap.counter_ptrs[i] = cnp.PyArray_DATA(a)
            snap.counter_f64[i] = cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT64
            snap.expected[i] = _counter_value(a)
        return snap

    cdef inline double _value(self, Py_ssize_t i) noexcept:
        if self.counter_f64[i]:
            return (<double *>self.counter_ptrs[i])[0]
        return (<float *>self.counter_ptrs[i])[0]

    def same(self, mapping):
        """Whether `mapping` and everything in it is as captured."""
        cdef Py_ssize_t pos = 0, k = 0, i
        cdef PyObject *key
        cdef PyObject *value
        if mapping is not self.mapping:
            return False
        if self.tagged:
            if gd_dict_tag(<PyObject *>mapping) != self.mapping_tag:
                return False
            for i in range(self.ndicts):
                if gd_dict_tag(self.dict_ptrs[i]) != self.dict_tags[i]:
                    return False
        else:
            if PyDict_Size(mapping) * 2 != len(self.dicts):
                return False
            while PyDict_Next(mapping, &pos, &key, &value):
                if <object>key is not self.dicts[2 * k] or \
                        <object>value is not self.dicts[2 * k + 1]:
                    return False
                if not _items_same(<object>value, <tuple>self.entries[k]):
                    return False
                k += 1
        for i in range(len(self.counters)):
            if self._value(i) != self.expected[i]:
                return False
        return True

    def advance(self):
        """The counters were advanced by one step (Plan.run)."""
        for i in range(len(self.counters)):
            self.expected[i] += 1

    cdef void step_counters(self) noexcept:
        """Add 1 to every counter (Plan.run_torch), and expect it."""
        for i in range(len(self.counters)):
            if self.counter_f64[i]:
                (<double *>self.counter_ptrs[i])[0] += 1
            else:
                (<float *>self.counter_ptrs[i])[0] += 1
            self.expected[i] += 1


cdef tuple _dict_items(object d):
    if type(d) is not dict:
        return None
    cdef Py_ssize_t pos = 0
    cdef PyObject *key
    cdef PyObject *value
    out = []
    while PyDict_Next(d, &pos, &key, &value):
        out.append(<object>key)
        out.append(<object>value)
    return tuple(out)


cdef bint _items_same(object d, tuple items):
    if items is None or type(d) is not dict or PyDict_Size(d) * 2 != len(items):
        return False
    cdef Py_ssize_t pos = 0, k = 0
    cdef PyObject *key
    cdef PyObject *value
    while PyDict_Next(d, &pos, &key, &value):
        if <object>key is not items[k] or <object>value is not items[k + 1]:
            return False
        k += 2
    return True


cdef inline double _counter_value(cnp.ndarray a):
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        return (<float *>cnp.PyArray_DATA(a))[0]
    return (<double *>cnp.PyArray_DATA(a))[0]


# ------------------------------------- gdcore.torch's tensors, read in C

from cpython.exc cimport PyErr_Clear

cdef extern from "Python.h":
    int PyGC_Disable()
    int PyGC_Enable()
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "gd_dlpack.h":
    int GD_DLPACK_MAJOR, GD_DLPACK_CPU, GD_DLPACK_FLOAT, GD_DLPACK_BFLOAT
    ctypedef struct gd_dl_device:
        int32_t device_type
    ctypedef struct gd_dl_dtype:
        uint8_t code
        uint8_t bits
        uint16_t lanes
    ctypedef struct gd_dl_tensor:
        void *data
        gd_dl_device device
        int32_t ndim
        gd_dl_dtype dtype
        int64_t *shape
        int64_t *strides
        uint64_t byte_offset
    ctypedef int (*gd_dl_from_py)(void *py_object, gd_dl_tensor *out) noexcept
    ctypedef struct gd_dl_exchange_api:
        uint32_t major
        gd_dl_from_py dltensor_from_py_object_no_sync

ctypedef PyObject *(*_getter_fn)(PyObject *obj, void *closure)      # CPython's getter
ctypedef PyObject *(*_cfunction_fn)(PyObject *obj, PyObject *args)  # PyCFunction

cdef extern from "Python.h":
    # descrobject.h: the C function behind a getset / method descriptor
    ctypedef struct PyGetSetDef:
        _getter_fn get
        void *closure
    ctypedef struct PyGetSetDescrObject:
        PyGetSetDef *d_getset
    ctypedef struct PyMethodDef:
        _cfunction_fn ml_meth
        int ml_flags
    ctypedef struct PyMethodDescrObject:
        PyMethodDef *d_method
    int METH_NOARGS, METH_VARARGS, METH_KEYWORDS, METH_FASTCALL, METH_O
    void Py_DECREF(PyObject *o)
    PyObject *Py_True

cdef extern from "_torch_reads.h":
    int GD_TORCH_READS_ABI, GD_TR_F32, GD_TR_F64, GD_TR_F16, GD_TR_BF16
    const char *GD_TORCH_READS_CAPSULE
    ctypedef int (*_tr_dense_fn)(PyObject *t, int code, int ndim, const int64_t *shape,
                                 const void **data) noexcept
    ctypedef void *(*_tr_grad_fn)(PyObject *p) noexcept
    ctypedef int (*_tr_grad_dense_fn)(void *grad, int code, int ndim, const int64_t *shape,
                                      const void **data) noexcept
    ctypedef void (*_tr_refs_fn)(void *const *grads, Py_ssize_t n) noexcept
    ctypedef struct gd_torch_reads:
        uint32_t abi
        uint32_t size
        _tr_dense_fn dense
        _tr_grad_fn grad
        _tr_grad_dense_fn grad_dense
        _tr_refs_fn hold
        _tr_refs_fn release

cdef const gd_torch_reads *_tr = NULL   # torch's C++ reads (gdcore/_torch_reads.cpp), or NULL
cdef object _tr_capsule = None          # the capsule holding the table, kept
cdef bint _tr_on = True                 # test switch (use_torch_reads)


def torch_reads_init(object capsule):
    """Use the reads of gdcore/_torch_reads.cpp (built against the installed
    torch by gdcore._torch_build) for gdcore.torch's steady state; returns
    whether they are in use (the capsule valid and of this ABI)."""
    global _tr, _tr_capsule
    cdef const gd_torch_reads *table
    if capsule is None or not PyCapsule_IsValid(capsule, GD_TORCH_READS_CAPSULE):
        return False
    table = <const gd_torch_reads *>PyCapsule_GetPointer(capsule, GD_TORCH_READS_CAPSULE)
    if table.abi != GD_TORCH_READS_ABI or table.size != sizeof(gd_torch_reads):
        return False
    _tr, _tr_capsule = table, capsule
    return True


def use_torch_reads(bint on):
    """Test switch: whether run_torch reads through torch's C++ API (when
    loaded) or the DLPack exchange table; returns the previous setting."""
    global _tr_on
    previous = _tr_on
    _tr_on = on
    return previous


cdef inline int _itemsize(int typenum) noexcept:
    """Bytes per element of a NumPy typenum gdcore steps."""
    return 4 if typenum == cnp.NPY_FLOAT32 else 8 if typenum == cnp.NPY_FLOAT64 else 2


cdef inline int _tr_code(int typenum) noexcept:
    """The _torch_reads.h dtype code of a NumPy typenum gdcore steps."""
    if typenum == cnp.NPY_FLOAT32:
        return GD_TR_F32
    if typenum == cnp.NPY_FLOAT64:
        return GD_TR_F64
    if typenum == cnp.NPY_FLOAT16:
        return GD_TR_F16
    return GD_TR_BF16


cdef gd_dl_from_py _dl_read = NULL      # torch's DLTensor filler, or NULL
cdef _getter_fn _grad_get = NULL        # torch.Tensor.grad's getter
cdef void *_grad_closure = NULL
cdef _cfunction_fn _is_neg = NULL       # torch.Tensor.is_neg (METH_NOARGS)
cdef tuple _dl_types = ()               # the exact types it is used for
cdef object _dl_grad_type = None        # torch.Tensor: the one type of a fast-path grad
cdef object _dl_mode_enabled = None     # torch._C._is_torch_function_mode_enabled
cdef object _dl_strided = None          # torch.strided


def torch_exchange_init(tuple types, object grad_type, object strided, object mode_enabled,
                        object grad_descriptor, object is_neg_descriptor):
    """Called once by gdcore.torch (types: torch.Tensor and torch.nn.Parameter;
    grad_type: torch.Tensor; strided: torch.strided; mode_enabled:
    torch._C._is_torch_function_mode_enabled; grad_descriptor and
    is_neg_descriptor: the descriptors that ``.grad`` and ``.is_neg`` of
    every type resolve to).  Finds torch's DLPack exchange table, the
    capsule ``__dlpack_c_exchange_api__`` of each type (one table for all),
    and the C functions behind the two descriptors (called directly, as
    CPython would call them, without the attribute lookup), and returns
    whether the C reads are available (torch >= 2.10); without them
    gdcore.torch reads every tensor through its Python methods (the general
    path)."""
    global _dl_read, _dl_types, _dl_grad_type, _dl_mode_enabled, _dl_strided
    global _grad_get, _grad_closure, _is_neg
    if type(grad_descriptor).__name__ != "getset_descriptor" or \
            type(is_neg_descriptor).__name__ != "method_descriptor":
        return False
    cdef PyMethodDef *is_neg_def = (<PyMethodDescrObject *><PyObject *>is_neg_descriptor).d_method
    if is_neg_def.ml_flags & (METH_NOARGS | METH_VARARGS | METH_KEYWORDS | METH_FASTCALL
                              | METH_O) != METH_NOARGS:
        return False
    cdef const gd_dl_exchange_api *api
    cdef const gd_dl_exchange_api *first = NULL
    _dl_grad_type, _dl_strided, _dl_mode_enabled = grad_type, strided, mode_enabled
    for t in types:
        capsule = getattr(t, "__dlpack_c_exchange_api__", None)
        if capsule is None or not PyCapsule_IsValid(capsule, "dlpack_exchange_api"):
            return False
        api = <const gd_dl_exchange_api *>PyCapsule_GetPointer(capsule, "dlpack_exchange_api")
        if api.major != GD_DLPACK_MAJOR or api.dltensor_from_py_object_no_sync == NULL or \
                (first != NULL and api != first):
            return False
        first = api
    if first == NULL:
        return False
    _dl_read, _dl_types = first.dltensor_from_py_object_no_sync, types
    _grad_get = (<PyGetSetDescrObject *><PyObject *>grad_descriptor).d_getset.get
    _grad_closure = (<PyGetSetDescrObject *><PyObject *>grad_descriptor).d_getset.closure
    _is_neg = is_neg_def.ml_meth
    return True


cdef int _propagate() except -1:
    """Raise the exception a C call left set (Cython sees the -1)."""
    return -1


cdef inline bint _of_dl_type(object t) noexcept:
    """Whether type(t) is one of _dl_types (compared by identity: `in`
    would call the types' rich comparison for each miss)."""
    cdef type ty = type(t)
    for candidate in _dl_types:
        if ty is candidate:
            return True
    return False


cdef int _negative(object t) except -1:
    """t.is_neg() (t of a type in _dl_types), calling its C function."""
    cdef PyObject *r = _is_neg(<PyObject *>t, NULL)
    if r == NULL:
        _propagate()
    cdef bint out = r == Py_True
    Py_DECREF(r)
    return out


cdef object _grad_of(object p):
    """p.grad (p of a type in _dl_types), calling its getter."""
    cdef PyObject *r = _grad_get(<PyObject *>p, _grad_closure)
    if r == NULL:
        _propagate()
    out = <object>r
    Py_DECREF(r)
    return out


cdef inline bint _dl_describe(object t, gd_dl_tensor *out) noexcept:
    """Fill *out for torch tensor t (of a type in _dl_types); False, with the
    error cleared, when torch cannot describe it (no storage, meta, ...)."""
    if _dl_read(<void *>t, out) != 0:
        PyErr_Clear()
        return False
    return True


cdef bint _dl_dense(const gd_dl_tensor *d, int typenum, int64_t *numel) noexcept:
    """Whether described tensor *d is on the CPU, of NumPy dtype `typenum`
    (float32/float64/float16/bfloat16) and C-contiguous (dims of size 1 do not count, as in
    torch and NumPy); *numel: its element count."""
    cdef int64_t expected = 1, count = 1
    cdef int32_t j
    cdef int code = GD_DLPACK_FLOAT, bits = 64
    if typenum == cnp.NPY_FLOAT32:
        bits = 32
    elif typenum == cnp.NPY_FLOAT16:
        bits = 16
    elif typenum == _BF16_NUM:
        code, bits = GD_DLPACK_BFLOAT, 16
    if d.device.device_type != GD_DLPACK_CPU or d.dtype.code != code or \
            d.dtype.lanes != 1 or d.dtype.bits != bits:
        return False
    for j in range(d.ndim):
        count *= d.shape[j]
    numel[0] = count
    if d.strides == NULL or count == 0:
        return True
    for j in range(d.ndim - 1, -1, -1):
        if d.shape[j] != 1:
            if d.strides[j] != expected:
                return False
            expected *= d.shape[j]
    return True


cdef inline bint _dl_same_shape(const gd_dl_tensor *d, cnp.ndarray a) noexcept:
    cdef int nd = cnp.PyArray_NDIM(a)
    cdef cnp.npy_intp *dims = cnp.PyArray_DIMS(a)
    if d.ndim != nd:
        return False
    for j in range(nd):
        if d.shape[j] != dims[j]:
            return False
    return True


cdef class TorchWatch:
    """gdcore.torch's params (torch tensors), each paired with the NumPy
    array its engine updates in its place.  `check()` tells whether every
    tensor still has its array's memory, dtype and shape, contiguous, and
    has no negative bit, i.e. whether no ``p.data = ...`` or ``p.set_()``
    changed it since: the memory part in C with no Python code (`same`)
    when every tensor is of an exact type torch describes in C (`in_c`),
    else through the tensors' Python methods.  (The arrays pin the memory
    they view, so a tensor that moved is safe, but no longer what the
    engine updates: the engine is rebuilt.)"""
    cdef list tensors, arrays
    cdef readonly bint in_c

    def __init__(self, list tensors, list arrays):
        if len(tensors) != len(arrays):
            raise ValueError("one array per tensor")
        for a in arrays:
            if not cnp.PyArray_Check(a):
                raise TypeError("arrays must be numpy.ndarray")
        self.tensors, self.arrays = list(tensors), list(arrays)
        self.in_c = _dl_read != NULL and all(type(t) in _dl_types for t in self.tensors)

    cdef bint same(self) noexcept:
        """(in_c only) Whether every tensor still has its array's memory,
        dtype and shape, contiguous.  Runs no Python code."""
        cdef Py_ssize_t k
        cdef gd_dl_tensor d
        cdef int64_t numel
        cdef cnp.ndarray a
        for k in range(len(self.tensors)):
            a = <cnp.ndarray>self.arrays[k]
            if not _dl_describe(self.tensors[k], &d) or \
                    not _dl_dense(&d, cnp.PyArray_TYPE(a), &numel) or \
                    not _dl_same_shape(&d, a) or \
                    (numel != 0 and   # (an empty tensor's data pointer means nothing)
                     <char *>d.data + d.byte_offset != <char *>cnp.PyArray_DATA(a)):
                return False
        return True

    cdef bint any_negative(self) except -1:
        """Whether a tensor has the negative bit (``p.data = x.conj().imag``):
        its memory holds minus its values."""
        for t in self.tensors:
            if _negative(t) if self.in_c else t.is_neg():
                return True
        return False

    def check(self):
        """Whether every tensor still matches its array (see the class doc)."""
        if self.any_negative():
            return False
        if self.in_c:
            return self.same()
        for t, a in zip(self.tensors, self.arrays):
            if (t.numel() != 0 and t.data_ptr() != <uintptr_t>cnp.PyArray_DATA(<cnp.ndarray>a)) \
                    or not t.dtype.is_floating_point or t.dtype.itemsize != a.itemsize \
                    or tuple(t.shape) != a.shape or t.device.type != "cpu" \
                    or t.layout is not _dl_strided or not t.is_contiguous():
                return False
        return True


cdef void _store_shape(cnp.ndarray a, int *ndim, int64_t *dims) noexcept:
    """*ndim, dims[:ndim] = a's shape; *ndim = -1 past _MAX_DIMS dims."""
    cdef int j, nd = cnp.PyArray_NDIM(a)
    if nd > _MAX_DIMS:
        ndim[0] = -1
        return
    ndim[0] = nd
    for j in range(nd):
        dims[j] = cnp.PyArray_DIMS(a)[j]


cdef inline bint _dl_shape_is(const gd_dl_tensor *d, int ndim, const int64_t *dims) noexcept:
    """Whether described tensor *d has shape dims[:ndim] (ndim -1: never)."""
    if d.ndim != ndim:
        return False
    for j in range(ndim):
        if d.shape[j] != dims[j]:
            return False
    return True


cdef inline bint _as_planned(cnp.ndarray a, cnp.ndarray param, int typenum, void *data,
                             bint scalar):
    """Whether array `a` (a param, a state buffer shaped like `param`, or a
    0-d scalar state) still has the memory, dtype, shape and flags a plan was
    built on, i.e. whether the general path would accept it as the plan
    uses it."""
    if cnp.PyArray_DATA(a) != data or cnp.PyArray_TYPE(a) != typenum or \
            not cnp.PyArray_ISWRITEABLE(a) or not cnp.PyArray_ISALIGNED(a) or \
            cnp.PyArray_ISBYTESWAPPED(a):
        return False
    if scalar:
        return cnp.PyArray_NDIM(a) == 0
    return cnp.PyArray_IS_C_CONTIGUOUS(a) and (a is param or _same_shape(a, param))


cdef class Plan:
    """The kernel calls of an optimizer whose params and state are settled.

    Built once every param has state; then each step() checks the grads
    (with the same checks as every call), reads and checks the
    hyperparameters of every group, advances the step counters of the params
    it steps (a None grad skips its param, as in the general path) and calls
    C, with no Python-level loop over params.  `run` returns False, having
    changed nothing, whenever something the plan depends on has changed (a
    group's params, or an option that selects state; a state dict or state
    array was replaced; a param's data, size or flags), and the caller then
    takes the general path, which builds a new plan.
    """
    cdef Spec spec
    cdef dict state_by_id       # the optimizer's ParamState._by_id
    cdef list groups            # group dicts
    cdef list group_params      # each group's "params" list object, as planned
    cdef list group_values      # each group's hyperparameter objects, as last checked
    cdef list group_slots       # the state names each group's step uses
    cdef list group_storage     # each group's "rounding" and "seed" objects, as planned
    cdef gd_rounding *group_rounding    # [ngroups]: how its 16-bit params are stored
    cdef uint64_t *group_seed           # [ngroups]: its stochastic rounding seed
    cdef list comps             # [count]: each buffer's Kahan compensation array, or None
    cdef Py_ssize_t ngroups, count, nspans
    cdef Py_ssize_t *group_start    # [ngroups + 1]: group g is buffers[start[g]:start[g+1]]
    cdef Py_ssize_t *group_fstart   # per group: _NFORMATS + 1 format starts (see _Batch)
    cdef Py_ssize_t *position       # buffers[k] is grads[position[k]]
    cdef Py_ssize_t *member         # ... and group["params"][member[k]]
    cdef Py_ssize_t *identity       # [count]: k (buffers and scalar_ptrs share the order)
    cdef int64_t *sizes             # element count of buffers[k]
    cdef double *options            # [ngroups * _MAX_OPTIONS]
    cdef gd_buffer *buffers
    cdef void **scalar_ptrs         # [2 * count], buffer order
    cdef _Span *spans               # every written buffer, sorted
    cdef list params, states, arrays, entries, ids
    cdef int *typenums              # [count]: each param's dtype, as planned
    cdef int *state_typenums        # [count]: its state buffers' dtype (the param's, or
                                    # float32 for a 16-bit param)
    cdef int64_t *shapes            # [count * _MAX_DIMS]: each param's shape (run_torch)
    cdef int *ndims                 # [count]: each param's number of dims, or -1 (> _MAX_DIMS)
    cdef bint long_shape            # some param has more than _MAX_DIMS dims (run_torch: 0)
    cdef void **array_ptrs          # [_ARRAYS_PER_BUFFER * count]: data of arrays[k]
    cdef uintptr_t *grad_seen       # [count] (run_torch): the last grad address found
                                    # clear of every written span (0: none yet)
    cdef void **grad_held           # [count] (run_torch, C++ reads): each grad's TensorImpl
    cdef bint steps_in_torch        # run_torch ran last: the `step` of the engine's
                                    # state dicts is behind buffers[k].step (_sync_steps)

    def __dealloc__(self):
        free(self.group_start)
        free(self.group_fstart)
        free(self.group_rounding)
        free(self.group_seed)
        free(self.position)
        free(self.member)
        free(self.identity)
        free(self.sizes)
        free(self.options)
        free(self.buffers)
        free(self.scalar_ptrs)
        free(self.spans)
        free(self.typenums)
        free(self.state_typenums)
        free(self.shapes)
        free(self.ndims)
        free(self.array_ptrs)
        free(self.grad_seen)
        free(self.grad_held)

    @staticmethod
    def build(Spec spec, list param_groups, dict state_by_id):
        """A plan for this optimizer, or None when some param lacks state."""
        cdef Plan plan = Plan.__new__(Plan)
        cdef Py_ssize_t ngroups = len(param_groups), total = 0, g, i, k, flat = 0
        cdef Py_ssize_t start = 0, nspans = 0, s
        cdef bint used[_MAX_SLOTS]
        cdef cnp.ndarray p
        plan.spec, plan.state_by_id = spec, state_by_id
        plan.groups, plan.group_params, plan.group_values = [], [], []
        plan.params, plan.states, plan.arrays = [], [], []
        plan.entries, plan.ids = [], []
        plan.group_slots, plan.group_storage, plan.comps = [], [], []
        for group in param_groups:
            total += len(group["params"])
        plan.ngroups, plan.count = ngroups, total
        plan.group_start = <Py_ssize_t *>malloc((ngroups + 1) * sizeof(Py_ssize_t))
        plan.group_fstart = <Py_ssize_t *>malloc((ngroups + 1) * (_NFORMATS + 1) *
                                                 sizeof(Py_ssize_t))
        plan.options = <double *>malloc((ngroups + 1) * _MAX_OPTIONS * sizeof(double))
        plan.group_rounding = <gd_rounding *>malloc((ngroups + 1) * sizeof(gd_rounding))
        plan.group_seed = <uint64_t *>malloc((ngroups + 1) * sizeof(uint64_t))
        plan.buffers = <gd_buffer *>malloc((2 * total + 1) * sizeof(gd_buffer))
        plan.position = <Py_ssize_t *>malloc((total + 1) * sizeof(Py_ssize_t))
        plan.member = <Py_ssize_t *>malloc((total + 1) * sizeof(Py_ssize_t))
        plan.identity = <Py_ssize_t *>malloc((total + 1) * sizeof(Py_ssize_t))
        plan.spans = <_Span *>malloc((_SPANS_PER_BUFFER * total + 1) * sizeof(_Span))
        plan.sizes = <int64_t *>malloc((total + 1) * sizeof(int64_t))
        plan.scalar_ptrs = <void **>malloc((2 * total + 1) * sizeof(void *))
        plan.typenums = <int *>malloc((total + 1) * sizeof(int))
        plan.state_typenums = <int *>malloc((total + 1) * sizeof(int))
        plan.shapes = <int64_t *>malloc((total * _MAX_DIMS + 1) * sizeof(int64_t))
        plan.ndims = <int *>malloc((total + 1) * sizeof(int))
        plan.array_ptrs = <void **>malloc((_ARRAYS_PER_BUFFER * total + 1) * sizeof(void *))
        plan.grad_seen = <uintptr_t *>calloc(total + 1, sizeof(uintptr_t))
        plan.grad_held = <void **>calloc(total + 1, sizeof(void *))
        if (plan.group_start == NULL or plan.group_fstart == NULL or plan.options == NULL or
                plan.group_rounding == NULL or plan.group_seed == NULL or
                plan.buffers == NULL or plan.position == NULL or plan.member == NULL or
                plan.spans == NULL or plan.sizes == NULL or plan.identity == NULL or
                plan.scalar_ptrs == NULL or plan.typenums == NULL or
                plan.state_typenums == NULL or
                plan.shapes == NULL or plan.ndims == NULL or
                plan.array_ptrs == NULL or plan.grad_seen == NULL or plan.grad_held == NULL):
            raise MemoryError()
        cdef gd_buffer *staged = plan.buffers + total
        cdef void **staged_ptrs = <void **>malloc((2 * total + 1) * sizeof(void *))
        cdef int *formats = <int *>malloc((total + 1) * sizeof(int))
        if staged_ptrs == NULL or formats == NULL:
            free(staged_ptrs)
            free(formats)
            raise MemoryError()
        try:
            for g in range(ngroups):
                group = param_groups[g]
                _fill_options(spec, group, &plan.options[g * _MAX_OPTIONS], used)
                in_use = spec.slots_used(used) + spec.scalar_names
                params = list(group["params"])
                states = []
                for q in params:
                    entry = state_by_id.get(id(q))
                    if entry is None or any(name not in entry[1] for name in in_use):
                        return None
                    states.append(entry[1])
                # how 16-bit params are stored: as the general path reads it
                rounding_obj, seed_obj = group.get("rounding"), group.get("seed")
                rounding = rounding_code("nearest" if rounding_obj is None else rounding_obj)
                plan.group_rounding[g] = rounding
                # an int seed is read once; another object (its __index__) each
                # step, in _settled, as the general path reads it
                plan.group_seed[g] = 0 if seed_obj is None else \
                    seed_value(seed_obj) if type(seed_obj) is int else 0
                comps = None
                if rounding != GD_ROUND_NEAREST:
                    if any(_is_wide(q) for q in params):
                        # (refused by name by the general path, every step)
                        raise TypeError(f"param_groups[{g}] rounds float32/float64 params; "
                                        "no plan")
                    if rounding == GD_ROUND_STOCHASTIC and not spec.counts_steps:
                        # (SGD counts its stochastic steps in the general path)
                        raise TypeError("SGD with stochastic rounding; no plan")
                    if rounding == GD_ROUND_KAHAN:
                        if any("compensation" not in st for st in states):
                            return None
                        comps = [st["compensation"] for st in states]
                plan.groups.append(group)
                plan.group_params.append(group["params"])
                plan.group_values.append(_group_values(group, spec.keys))
                plan.group_slots.append(in_use)
                plan.group_storage.append((rounding_obj, seed_obj))
                slots = tuple([[st[spec.slot_names[s]] for st in states] if used[s] else None
                               for s in range(spec.nslots)])
                scalars = tuple([[st[name] for st in states] for name in spec.scalar_names])
                index = list(range(flat, flat + len(params)))
                # checks this group's buffers; plan.spans is scratch here
                _gather_written(spec, params, slots, scalars, index, False, staged + start,
                                staged_ptrs, plan.spans, formats, comps)
                plan.group_start[g] = start
                _partition(len(params), formats, staged + start, plan.buffers + start,
                           plan.member + start, &plan.group_fstart[g * (_NFORMATS + 1)])
                for k in range(start, start + len(params)):
                    i = plan.member[k]
                    plan.buffers[k].stream = flat + i
                    plan.identity[k] = k
                    plan.scalar_ptrs[2 * k] = staged_ptrs[2 * i]
                    plan.scalar_ptrs[2 * k + 1] = staged_ptrs[2 * i + 1]
                    plan.sizes[k] = plan.buffers[k].n
                    plan.position[k] = flat + i
                    plan.params.append(params[i])
                    plan.states.append(states[i])
                    plan.ids.append(id(params[i]))
                    plan.entries.append(state_by_id[id(params[i])])
                    plan.comps.append(None if comps is None else comps[i])
                    arrays = tuple(states[i][name] for name in in_use)
                    plan.arrays.append(arrays)
                    plan.typenums[k] = cnp.PyArray_TYPE(<cnp.ndarray>params[i])
                    plan.state_typenums[k] = cnp.PyArray_TYPE(<cnp.ndarray>arrays[0]) \
                        if len(arrays) > spec.nscalars else plan.typenums[k]
                    _store_shape(<cnp.ndarray>params[i], &plan.ndims[k],
                                 &plan.shapes[k * _MAX_DIMS])
                    plan.long_shape = plan.long_shape or plan.ndims[k] < 0
                    for s in range(len(arrays)):
                        plan.array_ptrs[_ARRAYS_PER_BUFFER * k + s] = \
                            cnp.PyArray_DATA(<cnp.ndarray>arrays[s])
                start += len(params)
                flat += len(params)
        finally:
            free(staged_ptrs)
            free(formats)
        plan.group_start[ngroups] = start
        # Written buffers of all groups, sorted; disjoint across groups too.
        for k in range(total):
            p = <cnp.ndarray>plan.params[k]
            _add_span(plan.spans, &nspans, p, plan.position[k], -1)
            for a in plan.arrays[k]:
                _add_span(plan.spans, &nspans, <cnp.ndarray>a, plan.position[k], 0)
            if plan.comps[k] is not None:
                _add_span(plan.spans, &nspans, <cnp.ndarray>plan.comps[k], plan.position[k],
                          _COMP_SLOT)
        qsort(plan.spans, nspans, sizeof(_Span), _span_cmp)
        for k in range(1, nspans):
            if plan.spans[k].lo < plan.spans[k - 1].hi:
                raise ValueError(f"the buffers of params[{plan.spans[k - 1].buffer}] and "
                                 f"params[{plan.spans[k].buffer}] overlap in memory")
        plan.nspans = nspans
        return plan

    def run(self, list grads, list counters, list param_groups, dict state_by_id,
            double grad_multiplier=1.0):
        """One step, if the plan still holds (see the class docstring).
        grads: ndarrays or None (see as_grads).  counters: optional 0-d
        arrays to add 1 to once the kernels ran (gdcore.torch's `step`
        tensors), checked with everything else first.  grad_multiplier:
        every grad element is multiplied by it in the kernel."""
        cdef Py_ssize_t k, n = self.count
        cdef list keep = [grads]
        self._sync_steps()
        if len(grads) != n or not self._settled(counters, param_groups, state_by_id):
            return False
        for k in range(n):
            grad = grads[self.position[k]]
            if grad is None:                    # skipped this step: no elements
                self.buffers[k].n = 0
                self.buffers[k].step = 0
                continue
            self.buffers[k].n = self.sizes[k]
            _gather_grad(<cnp.ndarray>grad, self.position[k], None, False,
                         <cnp.ndarray>self.params[k], &self.buffers[k], self.spans,
                         self.nspans, keep)
            self.buffers[k].step = self._next_step(k)
        self._launch(counters, grad_multiplier)
        return True

    def run_torch(self, list tensors, StateSnapshot snapshot not None, object torch_state,
                  list param_groups, dict state_by_id, double grad_multiplier=1.0):
        """gdcore.torch's steady state: `run` with the grads of torch params
        `tensors` (exact torch.Tensor/Parameter objects, in the grads'
        positions), read in C (see _read_torch) instead of as NumPy views.
        `snapshot`: torch's state `torch_state` as captured, whose `step`
        counters (one per param) give the step numbers and are advanced
        with the step; the engine's own state dicts are left behind until
        `_sync_steps`.  Returns 1 when the step ran; 0, having changed
        nothing, for the general path (a missing grad, a grad that is not a
        plain dense CPU tensor of its param's dtype and shape, or anything
        `run` would refuse); 2, having changed nothing, when torch's state
        is not as captured, or a param no longer has the memory the engine
        holds or has the negative bit (``p.data =``, ``p.set_()``): the
        engine is rebuilt from torch's tensors and state."""
        cdef Py_ssize_t n = self.count
        cdef int status
        if not snapshot.same(torch_state):
            return 2
        if _dl_read == NULL or len(tensors) != n:
            return 0
        # Everything that may run Python code (hyperparameters' __float__, a
        # torch function mode's handlers) comes first ...
        if not self._settled(None, param_groups, state_by_id, False) or _dl_mode_enabled():
            return 0
        cdef list grads = [None] * n            # each grad referenced until the kernel is done
        cdef const gd_torch_reads *reads = _tr if _tr_on else NULL    # (one table per step)
        # ... then the reads and checks, with no Python code: with no mode
        # active, .grad and is_neg() run none, and with the collector off
        # no finalizer can run either (a grad's first Python object is
        # allocated here).  Through torch's C++ API (reads) no Python object
        # is made at all; the grads are then held by a reference each.
        cdef int collecting = PyGC_Disable()
        try:
            if reads != NULL:
                status = self._read_torch_cpp(reads, tensors, snapshot)
            else:
                status = self._read_torch(tensors, grads, snapshot)
        finally:
            if collecting:
                PyGC_Enable()
        if status != 1:
            return status
        try:
            snapshot.step_counters()            # torch's `step` tensors
            self._launch(None, grad_multiplier, False)
        finally:
            if reads != NULL:
                reads.release(self.grad_held, n)
        self.steps_in_torch = self.spec.counts_steps
        return 1

    cdef int _sync_steps(self) except -1:
        """Bring the `step` of the engine's state dicts up to the steps run
        by run_torch (which advances only torch's counters)."""
        cdef Py_ssize_t k
        if self.steps_in_torch:
            for k in range(self.count):
                (<dict>self.states[k])["step"] = self.buffers[k].step
            self.steps_in_torch = False
        return 0

    cdef int _read_torch(self, list tensors, list grads, StateSnapshot snapshot) except -1:
        """For each buffer k: its param p = tensors[position[k]] must be of
        an exact type torch describes in C, without the negative bit, with
        the memory, dtype and shape of the engine's array, contiguous (else
        2); its grad (read through .grad's C getter into grads) a
        torch.Tensor without the negative bit, on the CPU, of p's dtype and
        shape, contiguous, aligned, and not overlapping what the step writes
        (else 0); its `step` counter in `snapshot` as expected (else 2).
        Points buffers[k] at the grad, sets its step number and returns 1.
        One short loop per check: the loads of consecutive tensors' metadata
        (cache misses, after the last kernel streamed the data) then
        overlap, which measured 10-20% faster than one loop doing all per
        tensor."""
        cdef Py_ssize_t k, i, n = self.count
        cdef gd_dl_tensor d
        cdef int64_t numel
        cdef uintptr_t lo, base
        if not self._torch_readable(tensors, snapshot):
            return 0
        for i in range(n):
            if _negative(tensors[i]):
                return 2
        for k in range(n):
            if not self._described_as_param(tensors[self.position[k]], k, &d, &numel) or \
                    (numel != 0 and
                     <char *>d.data + d.byte_offset != <char *>self.buffers[k].param):
                return 2
        for i in range(n):
            grads[i] = _grad_of(tensors[i])
        for i in range(n):
            if type(grads[i]) is not _dl_grad_type:
                return 0
        for i in range(n):
            if _negative(grads[i]):
                return 0
        for k in range(n):
            if not self._described_as_param(grads[self.position[k]], k, &d, &numel) or \
                    not self._grad_at(k, <char *>d.data + d.byte_offset):
                return 0
        # Within its storage (resized smaller, a grad points past the end; the
        # exchange table does not tell): three torch calls a grad, which the
        # C++ reads avoid (exact torch.Tensor objects: no user code).
        for k in range(n):
            if self.sizes[k] != 0:
                storage = grads[self.position[k]].untyped_storage()
                lo = <uintptr_t>self.buffers[k].grad
                base = <uintptr_t>storage.data_ptr()
                if lo < base or lo - base + <uintptr_t>(self.sizes[k] *
                                                        _itemsize(self.typenums[k])) > \
                        <uintptr_t>storage.nbytes():
                    return 0                # the general path reports it
        return self._torch_steps(snapshot)

    cdef int _read_torch_cpp(self, const gd_torch_reads *reads, list tensors,
                             StateSnapshot snapshot) except -1:
        """_read_torch through torch's C++ API (`reads`: gdcore/_torch_reads.cpp):
        the same checks and outcomes, without a Python object made (a param
        whose memory is copy-on-write is made its own first, at a new
        address: 2, as the DLPack reads do).  When it
        returns 1, grad_held[k] holds buffer k's grad (a reference each, to
        be released after the kernel)."""
        cdef Py_ssize_t k, n = self.count
        cdef const void *data
        cdef void *grad
        if not self._torch_readable(tensors, snapshot):
            return 0
        for k in range(n):
            if not reads.dense(<PyObject *>tensors[self.position[k]], _tr_code(self.typenums[k]),
                             self.ndims[k], &self.shapes[k * _MAX_DIMS], &data) or \
                    (self.sizes[k] != 0 and data != <const void *>self.buffers[k].param):
                return 2
        for k in range(n):
            grad = reads.grad(<PyObject *>tensors[self.position[k]])
            if grad == NULL:
                return 0                    # none, or not exactly a torch.Tensor
            self.grad_held[k] = grad
        for k in range(n):
            if not reads.grad_dense(self.grad_held[k], _tr_code(self.typenums[k]), self.ndims[k],
                                  &self.shapes[k * _MAX_DIMS], &data) or \
                    not self._grad_at(k, data):
                return 0
        if self._torch_steps(snapshot) != 1:
            return 2
        reads.hold(self.grad_held, n)
        return 1

    cdef bint _torch_readable(self, list tensors, StateSnapshot snapshot) except -1:
        """Whether run_torch can read `tensors` in C: shapes kept (up to
        _MAX_DIMS dims), a counter per param, and each of an exact type."""
        cdef Py_ssize_t i
        if self.long_shape or (self.spec.counts_steps and len(snapshot.counters) != self.count):
            return False
        for i in range(self.count):
            if not _of_dl_type(tensors[i]):
                return False
        return True

    cdef inline bint _grad_at(self, Py_ssize_t k, const void *data) noexcept:
        """Point buffer k at the grad whose elements start at `data`, unless
        it is misaligned or overlaps what the step writes: then False (the
        general path copies or refuses it).  A grad at the address found
        clear last time is clear: the written spans and the sizes are the
        plan's.  (Both readers check that the grad lies within its storage.)"""
        cdef uintptr_t itemsize = _itemsize(self.typenums[k])
        cdef uintptr_t lo = <uintptr_t>data
        cdef uintptr_t hi = lo + <uintptr_t>self.sizes[k] * itemsize
        if lo % itemsize != 0 or (hi > lo and lo != self.grad_seen[k] and
                                  _overlaps_written(self.spans, self.nspans, lo, hi)):
            return False
        self.grad_seen[k] = lo
        self.buffers[k].grad = data
        self.buffers[k].n = self.sizes[k]
        return True

    cdef int _torch_steps(self, StateSnapshot snapshot) except -1:
        """Each buffer's step number from torch's `step` counters in
        `snapshot` (checked first, then used: a counter changed by code run
        during this step rebuilds the engine): 1, or 2 (rebuild)."""
        cdef Py_ssize_t k, i, n = self.count
        cdef double counted
        if not self.spec.counts_steps:
            for k in range(n):
                self.buffers[k].step = self._next_step(k)
            return 1
        for i in range(n):
            counted = snapshot.expected[i]
            if snapshot._value(i) != counted or not (0 <= counted < _MAX_COUNTED) or \
                    counted != <double><int64_t>counted:
                return 2
        for k in range(n):
            self.buffers[k].step = <int64_t>snapshot.expected[self.position[k]] + 1
        return 1

    cdef inline bint _described_as_param(self, object t, Py_ssize_t k, gd_dl_tensor *d,
                                         int64_t *numel) noexcept:
        """Whether torch tensor t (of a type in _dl_types) is on the CPU,
        contiguous, of buffer k's param's dtype and shape (*d, *numel: its
        description and size)."""
        return _dl_describe(t, d) and _dl_dense(d, self.typenums[k], numel) and \
            _dl_shape_is(d, self.ndims[k], &self.shapes[k * _MAX_DIMS])

    cdef int64_t _next_step(self, Py_ssize_t k) except -1:
        """The step number buffer k takes (its state's `step` + 1)."""
        if self.spec.counts_steps:
            return (<dict>self.states[k])["step"] + 1
        return 2                            # SGD: the momentum buffer exists

    cdef bint _settled(self, list counters, list param_groups, dict state_by_id,
                       bint buffers=True) except -1:
        """Whether everything but the grads is as planned (see the class
        docstring); re-reads changed hyperparameters (which may run user
        code: ``__float__``).  buffers=False: the groups and hyperparameters
        only, for an engine whose params and state nobody else can reach
        (gdcore.torch's, which checks torch's side itself)."""
        cdef Py_ssize_t g, k, s
        cdef double *o
        cdef bint used[_MAX_SLOTS]
        cdef cnp.ndarray p, a
        cdef dict st
        cdef list lst
        cdef Spec spec = self.spec
        cdef int typenum
        if state_by_id is not self.state_by_id or \
                len(param_groups) != self.ngroups:
            return False
        for g in range(self.ngroups):
            group = <dict>self.groups[g]
            if param_groups[g] is not group:
                return False
            params_obj = group.get("params")
            if type(params_obj) is not list:
                return False
            lst = <list>params_obj
            if (lst is not self.group_params[g]
                    or len(lst) != self.group_start[g + 1] - self.group_start[g]):
                return False
            values = self.group_values[g]
            for s in range(len(spec.keys)):
                if values is None or group.get(spec.keys[s]) is not (<tuple>values)[s]:
                    # changed (a schedule): check, and keep it only if it needs
                    # the same state slots
                    o = &self.options[g * _MAX_OPTIONS]
                    _fill_options(spec, group, o, used)
                    if spec.slots_used(used) + spec.scalar_names != self.group_slots[g]:
                        return False
                    self.group_values[g] = _group_values(group, spec.keys)
                    break
            # how 16-bit params are stored, as planned: another rounding or
            # seed goes to the general path (which checks it, refuses a mode
            # for float32/float64 params by name, and plans anew)
            storage = <tuple>self.group_storage[g]
            if group.get("rounding") is not storage[0] or group.get("seed") is not storage[1]:
                return False
            if storage[1] is not None and type(storage[1]) is not int:
                self.group_seed[g] = seed_value(storage[1])
            if not buffers:
                continue
            for k in range(self.group_start[g], self.group_start[g + 1]):
                p = <cnp.ndarray>self.params[k]
                if lst[self.member[k]] is not p:
                    return False
                st = <dict>self.states[k]
                if self.state_by_id.get(self.ids[k]) is not self.entries[k]:
                    return False
                # The param and every state array exactly as planned (an
                # in-place resize, dtype, shape or flags change falls back to
                # the general path, which checks and reports it).
                typenum = self.typenums[k]
                if not _as_planned(p, p, typenum, self.buffers[k].param, False) or \
                        cnp.PyArray_SIZE(p) != self.sizes[k]:
                    return False
                comp = self.comps[k]
                if comp is not None and (
                        st.get("compensation") is not comp or
                        not _as_planned(<cnp.ndarray>comp, p, typenum,
                                        self.buffers[k].compensation, False)):
                    return False
                names = <tuple>self.group_slots[g]
                arrays = <tuple>self.arrays[k]
                nbuffers = len(names) - spec.nscalars
                for s in range(len(names)):
                    a = <cnp.ndarray>arrays[s]
                    if st.get(names[s]) is not a:
                        return False
                    if s < nbuffers:
                        if not _as_planned(a, p, self.state_typenums[k],
                                           self.array_ptrs[_ARRAYS_PER_BUFFER * k + s], False):
                            return False
                    elif not _as_planned(a, p, cnp.NPY_FLOAT64 if self.buffers[k].scalar_float64
                                         else cnp.NPY_FLOAT32,
                                         self.array_ptrs[_ARRAYS_PER_BUFFER * k + s], True):
                        return False
                if spec.counts_steps:
                    step = st.get("step")
                    if type(step) is not int or not 0 <= <object>step < _MAX_STEP:
                        return False
        if counters is not None and not _counters_ok(counters):
            return False
        return True

    cdef void _launch(self, list counters, double grad_multiplier, bint engine_steps=True):
        """Commit the step counters (engine_steps: into the engine's state
        dicts), read the scalar state, run the kernels (GIL released), store
        the scalar state and advance `counters`.  Everything was checked; no
        Python code runs here."""
        cdef Py_ssize_t g, k, s, n = self.count
        cdef double *o
        cdef Spec spec = self.spec
        # All checked: commit the step counters, read the scalars, then run.
        # (No Python code runs from here on: a signal's KeyboardInterrupt
        # is raised after the whole step, never within it.)
        if spec.counts_steps and engine_steps:
            for k in range(n):
                if self.buffers[k].step > 0:
                    (<dict>self.states[k])["step"] = self.buffers[k].step
        if spec.nscalars:
            for k in range(n):
                for s in range(spec.nscalars):
                    self.buffers[k].scalar[s] = (<double *>self.scalar_ptrs[2 * k + s])[0] \
                        if self.buffers[k].scalar_float64 else \
                        (<float *>self.scalar_ptrs[2 * k + s])[0]
        with nogil:
            for g in range(self.ngroups):
                k = self.group_start[g]
                o = &self.options[g * _MAX_OPTIONS]
                _run_formats(spec.kernel, o, self.buffers + k,
                             &self.group_fstart[g * (_NFORMATS + 1)], self.group_rounding[g],
                             self.group_seed[g], grad_multiplier)
        if spec.nscalars:
            _store_scalars(self.buffers, self.identity, self.scalar_ptrs, n, spec.nscalars)
        if counters is not None:
            _increment(counters)


# -------------------------------------------------------- benchmark probe

def stream(params, grads, states, *, int nread, int nwrite):
    """Benchmark roofline probe (not an optimizer): per element, read nread of
    (param, grad, states...) and write nwrite of (param, states...), with no
    arithmetic to speak of, through the kernels' threading and dispatch.
    (nread, nwrite) is (2, 1), (3, 2), (4, 3) or (5, 4); states: nread - 2
    lists of buffers."""
    if (nread, nwrite) not in ((2, 1), (3, 2), (4, 3), (5, 4)):
        raise ValueError(f"(nread, nwrite) = ({nread}, {nwrite}) is not a probe shape")
    states = list(states)
    if len(states) != nread - 2:
        raise ValueError(f"nread={nread} needs {nread - 2} state lists, got {len(states)}")
    cdef double options[_MAX_OPTIONS]
    cdef Spec spec = _PROBE_SPECS[nread - 2]
    slots = tuple(_as_list(s, "states") for s in states)
    slots += (None,) * (spec.nslots - len(slots))
    cdef _Batch b = _gather(spec, options, _as_list(params, "params"), _as_list(grads, "grads"),
                            slots, (), 1, None, False)
    if b.fstart[_NFORMATS] - b.fstart[5] or b.fstart[4] - b.fstart[3]:
        raise ValueError("the probe moves one element size: float32 state for 16-bit params "
                         "is not a probe shape")
    cdef int f
    with nogil:
        for f in range(_NFORMATS):
            if b.fstart[f + 1] > b.fstart[f]:
                gd_stream(_FORMAT_PARAM[f], nread, nwrite, b.buffers + b.fstart[f],
                          b.fstart[f + 1] - b.fstart[f])


# ------------------------------------------------------ grad norm (clipping)

def tensor_grad_norm(list tensors, int norm_type, object float32, object float64,
                     object strided, object tensor_type):
    """The norm of torch tensors `tensors` (gdcore.torch's clip_grad_norm_),
    as a float computed in double by one pass of gd_grad_norm; norm_type 2,
    1, or 0 for inf.  Returns None, having read nothing, unless every tensor
    is a CPU contiguous strided tensor of type `tensor_type` (torch.Tensor,
    no subclass) and of one dtype, float32 or float64 (float32, float64,
    strided: torch.float32, torch.float64, torch.strided).  Each tensor is
    referenced by `tensors` for the call."""
    cdef Py_ssize_t j, n = len(tensors)
    if n == 0:
        return 0.0
    first = tensors[0]
    dtype = first.dtype
    if dtype is not float32 and dtype is not float64:
        return None
    cdef gd_buffer *buffers = <gd_buffer *>calloc(n, sizeof(gd_buffer))
    if buffers == NULL:
        raise MemoryError()
    cdef double total
    cdef gd_dtype dt = GD_FLOAT32 if dtype is float32 else GD_FLOAT64
    try:
        for j in range(n):
            t = tensors[j]
            if type(t) is not tensor_type or t.dtype is not dtype or \
                    t.layout is not strided or not t.is_cpu or t.is_neg() or \
                    not t.is_contiguous():
                return None
            buffers[j].grad = <const void *><uintptr_t>t.data_ptr()
            buffers[j].n = t.numel()
        with nogil:
            total = gd_grad_norm(dt, norm_type, buffers, n)
        return total
    finally:
        free(buffers)


# Specs whose only use is naming the probe's state lists (0..3 of them).
_PROBE_SPECS = [SPECS[name] for name in ("SGD", "SGD", "Adadelta", "RMSprop")]


cdef bint _counters_ok(list counters):
    """Whether every entry is a writable, aligned 1-element float32/float64
    array (torch's `step` tensors seen through NumPy)."""
    cdef cnp.ndarray a
    for obj in counters:
        if not cnp.PyArray_Check(obj):
            return False
        a = <cnp.ndarray>obj
        if cnp.PyArray_SIZE(a) != 1 or not cnp.PyArray_ISWRITEABLE(a) or \
                not cnp.PyArray_ISALIGNED(a) or cnp.PyArray_ISBYTESWAPPED(a) or \
                (cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT32 and cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT64):
            return False
    return True


cdef void _increment(list counters) noexcept:
    """Add 1 to each counter (checked by _counters_ok)."""
    cdef cnp.ndarray a
    for obj in counters:
        a = <cnp.ndarray>obj
        if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
            (<float *>cnp.PyArray_DATA(a))[0] += 1
        else:
            (<double *>cnp.PyArray_DATA(a))[0] += 1


def increment_counters(list counters):
    """Add 1 to each 0-d float32/float64 array of `counters` (the NumPy views
    of torch's `step` tensors, for gdcore.torch): one call instead of a torch
    op per tensor.  Checks all before changing any."""
    if not _counters_ok(counters):
        raise TypeError("counters must be writable, aligned 1-element float32/float64 "
                        "numpy arrays")
    _increment(counters)


# ------------------------------------------------- one step at a time

from cpython.pythread cimport (PyThread_acquire_lock, PyThread_allocate_lock,
                               PyThread_free_lock, PyThread_get_thread_ident,
                               PyThread_release_lock, PyThread_type_lock, NOWAIT_LOCK,
                               WAIT_LOCK)


cdef class StepLock:
    """Serialises the steps of one optimizer.  A step from another thread
    waits (with the GIL released) until the running one ends; a step entered
    again from the thread that runs one (from a grad's ``__array__``, a
    hyperparameter's ``__float__``, a hook) raises RuntimeError: the outer
    step holds state the inner one would change under it."""
    cdef PyThread_type_lock lock
    cdef unsigned long owner
    cdef bint held

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    cdef int _acquire(self, object optimizer) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            if self.held and self.owner == me:
                raise RuntimeError(f"re-entrant step: {type(optimizer).__name__}.step() was "
                                   "called again while one of its steps runs "
                                   "(from a grad's __array__, a hyperparameter or a hook); "
                                   "an optimizer's steps cannot nest")
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.owner = me
        self.held = True
        return 0

    cdef inline void _release(self) noexcept:
        self.held = False
        PyThread_release_lock(self.lock)

    def call(self, optimizer, method, arg):
        """method(arg) with the lock held (acquired and released in C, so an
        exception from a signal handler cannot land between the two)."""
        self._acquire(optimizer)
        try:
            return method(arg)
        finally:
            self._release()


PARAM_STATE_TYPE = None         # gdcore.optim.ParamState (set by gdcore.optim)


def class_step(object optimizer, object grads):
    """gdcore.optim.Optimizer.step: with the optimizer's StepLock held,
    convert the grads (the only user code), run the cached plan if it still
    holds, else the general step and a new plan.  In Cython, because this is
    the whole per-call cost of a small step."""
    cdef StepLock lock = <StepLock?>optimizer._lock
    lock._acquire(optimizer)
    try:
        grads = as_grads(grads) if type(grads) is list else optimizer._convert(grads)
        if not _plan_step(optimizer, grads, None):
            optimizer._general_step(grads)
            optimizer._build_plan()
    finally:
        lock._release()


def run_plan(object optimizer, list grads, list counters, double grad_multiplier=1.0):
    """The step on `optimizer`'s cached plan, if it still holds (gdcore.torch:
    counters, 0-d arrays advanced with the step; grad_multiplier, see
    commit_and_run); returns whether it ran."""
    return _plan_step(optimizer, grads, counters, grad_multiplier)


cdef bint _plan_step(object optimizer, list grads, list counters,
                     double grad_multiplier=1.0) except -1:
    plan_obj = optimizer._plan
    state = optimizer.state
    groups = optimizer.param_groups
    if plan_obj is None or type(state) is not PARAM_STATE_TYPE or type(groups) is not list:
        return False
    if not (<Plan>plan_obj).run(grads, counters, groups, state._by_id, grad_multiplier):
        return False
    optimizer.last_step_created_state = False
    return True


def run_plan_torch(object optimizer, list tensors, StateSnapshot snapshot not None,
                   object torch_state, double grad_multiplier=1.0):
    """gdcore.torch's step on `optimizer`'s (its engine's) cached plan, with
    the grads of torch params `tensors` read in C: Plan.run_torch's 1 (ran),
    0 (take the general path) or 2 (rebuild the engine).  `torch_state` is
    compared with `snapshot` first, whatever the outcome."""
    plan_obj = optimizer._plan
    state = optimizer.state
    groups = optimizer.param_groups
    if plan_obj is None or type(state) is not PARAM_STATE_TYPE or type(groups) is not list:
        return 2 if not snapshot.same(torch_state) else 0
    status = (<Plan>plan_obj).run_torch(tensors, snapshot, torch_state, groups, state._by_id,
                                        grad_multiplier)
    if status == 1:
        optimizer.last_step_created_state = False
    return status


def sync_plan_steps(object optimizer):
    """Before `optimizer` (gdcore.torch's engine) steps otherwise than by
    run_plan_torch: the step numbers that path left in torch's counters,
    into the engine's state."""
    plan_obj = optimizer._plan
    if plan_obj is not None:
        (<Plan>plan_obj)._sync_steps()


# ------------------------------------------------------------- the C API

from libc.string cimport strcmp
from cpython.pycapsule cimport PyCapsule_New

from gdcore.capi cimport gdcore_capi, GDCORE_CAPI_MAJOR, GDCORE_CAPI_MINOR


cdef int _capi_step_scaled(int kernel, gd_dtype dtype, const double *options,
                           gd_buffer *buffers, int64_t count,
                           double grad_multiplier) noexcept nogil:
    if (dtype != GD_FLOAT32 and dtype != GD_FLOAT64) or count < 0:
        return -1
    return gd_step_scaled(kernel, dtype, options, buffers, count, grad_multiplier)


cdef int _capi_step(int kernel, gd_dtype dtype, const double *options, gd_buffer *buffers,
                    int64_t count) noexcept nogil:
    return _capi_step_scaled(kernel, dtype, options, buffers, count, 1.0)


cdef int _capi_step_format(int kernel, const gd_format *format, const double *options,
                           gd_buffer *buffers, int64_t count,
                           double grad_multiplier) noexcept nogil:
    if format == NULL or count < 0:
        return -1
    return gd_step_format(kernel, format, options, buffers, count, grad_multiplier)


cdef int _capi_kernel_count() noexcept nogil:
    return GD_KERNEL_COUNT


cdef const char *_capi_kernel_name(int kernel) noexcept nogil:
    return gd_kernel_name(kernel)


cdef int _capi_kernel_options(int kernel) noexcept nogil:
    return gd_kernel_options(kernel)


cdef int _capi_kernel_index(const char *name) noexcept nogil:
    cdef int k
    if name == NULL:
        return -1
    for k in range(GD_KERNEL_COUNT):
        if strcmp(gd_kernel_name(k), name) == 0:
            return k
    return -1


cdef void _capi_set_num_threads(int n) noexcept nogil:
    gd_set_num_threads(n if n >= 1 else 1)


cdef int _capi_get_num_threads() noexcept nogil:
    return gd_get_num_threads()


cdef gdcore_capi _capi
_capi.major, _capi.minor, _capi.size = GDCORE_CAPI_MAJOR, GDCORE_CAPI_MINOR, sizeof(gdcore_capi)
_capi.step = _capi_step
_capi.step_scaled = _capi_step_scaled
_capi.kernel_count = _capi_kernel_count
_capi.kernel_name = _capi_kernel_name
_capi.kernel_options = _capi_kernel_options
_capi.kernel_index = _capi_kernel_index
_capi.set_num_threads = _capi_set_num_threads
_capi.get_num_threads = _capi_get_num_threads
_capi.step_format = _capi_step_format

# gdcore_import_capi() (gdcore/include/gdcore_capi.h) imports this.
_C_API = PyCapsule_New(<void *>&_capi, "gdcore._core._C_API", NULL)
