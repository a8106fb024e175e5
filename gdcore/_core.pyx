# cython: language_level=3
"""Thin layer between Python and the C kernels of csrc/.

Design note.  Every call goes through one path: `_gather` checks every
buffer of a batch (type, dtype, shape, contiguity, alignment, writability,
memory overlap) and fills a C array of gd_buffer, float32 buffers first; only
then does the optimizer's entry point release the GIL and call C, so a bad
argument raises before anything has been written.  The single-buffer
functions (`adam`) are the batch functions (`adam_multi`) with one buffer.
Hyperparameters are checked here too, with torch.optim's messages, so the
classes in gdcore/optim.py use the same checks at construction and at every
step.  The NumPy C API is used directly because buffer acquisition through
typed memoryviews costs microseconds per call, which is the whole budget of a
small step.
"""
import operator

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uintptr_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy

from gdcore._csrc cimport *

cnp.import_array()

# Names of each buffer kind: (single-buffer form, batch form).
cdef tuple _PARAM = ("param", "params")
cdef tuple _GRAD = ("grad", "grads")
cdef tuple _MOMENTUM_BUFFER = ("momentum_buffer", "momentum_buffers")
cdef tuple _SUM = ("sum", "sums")
cdef tuple _SQUARE_AVG = ("square_avg", "square_avgs")
cdef tuple _GRAD_AVG = ("grad_avg", "grad_avgs")
cdef tuple _EXP_AVG = ("exp_avg", "exp_avgs")
cdef tuple _EXP_AVG_SQ = ("exp_avg_sq", "exp_avg_sqs")
cdef tuple _MAX_EXP_AVG_SQ = ("max_exp_avg_sq", "max_exp_avg_sqs")


# ------------------------------------------------------------ threads, info

def set_num_threads(n):
    """Set how many threads a kernel call may use (an int >= 1).

    Calls below a size threshold always run on the calling thread.  Results
    are bitwise identical for every thread count.
    """
    n = operator.index(n)
    if n < 1:
        raise ValueError(f"number of threads must be >= 1, got {n}")
    gd_set_num_threads(min(n, 1 << 16))


def get_num_threads():
    """The number of threads a kernel call may use (1 without OpenMP)."""
    return gd_get_num_threads()


def build_info():
    """How the kernels were built and what they run with on this CPU.

    Keys: ``isa`` (the instruction set the runtime dispatcher selects here),
    ``isa_compiled`` (the variants built in), ``openmp`` (bool),
    ``num_threads``, ``parallel_threshold`` (elements per call below which a
    call stays on one thread).
    """
    return {
        "isa": gd_isa_selected().decode(),
        "isa_compiled": gd_isa_compiled().decode(),
        "openmp": bool(gd_openmp_enabled()),
        "num_threads": gd_get_num_threads(),
        "parallel_threshold": gd_parallel_threshold(),
    }


# ------------------------------------------------------------ batch gathering

cdef struct _Span:
    uintptr_t lo
    uintptr_t hi
    Py_ssize_t buffer
    int slot            # -1: the param, 0..2: a state buffer


cdef int _span_cmp(const void *a, const void *b) noexcept nogil:
    cdef uintptr_t x = (<const _Span *>a).lo
    cdef uintptr_t y = (<const _Span *>b).lo
    return (x > y) - (x < y)


cdef union _Options:
    gd_sgd_options sgd
    gd_adagrad_options adagrad
    gd_rmsprop_options rmsprop
    gd_adam_options adam


cdef enum _Kind:
    _SGD, _ADAGRAD, _RMSPROP, _ADAM


cdef class _Batch:
    """One checked kernel call: gd_buffer array, [0, n32) float32 and
    [n32, count) float64, and the optimizer's options."""
    cdef gd_buffer *buffers
    cdef Py_ssize_t count
    cdef Py_ssize_t n32
    cdef list keep      # grads copied for this call, alive until it ends
    cdef _Kind kind
    cdef _Options options

    def __dealloc__(self):
        free(self.buffers)

    def run(self):
        """Run the kernel (GIL released).  Cannot fail once built."""
        with nogil:
            _run(self.kind, &self.options, self.buffers, self.n32, GD_FLOAT32)
            _run(self.kind, &self.options, self.buffers + self.n32,
                 self.count - self.n32, GD_FLOAT64)


cdef void _run(_Kind kind, const _Options *o, const gd_buffer *buffers, Py_ssize_t count,
               gd_dtype dtype) noexcept nogil:
    if count == 0:
        return
    if kind == _SGD:
        gd_sgd(dtype, &o.sgd, buffers, count)
    elif kind == _ADAGRAD:
        gd_adagrad(dtype, &o.adagrad, buffers, count)
    elif kind == _RMSPROP:
        gd_rmsprop(dtype, &o.rmsprop, buffers, count)
    else:
        gd_adam(dtype, &o.adam, buffers, count)


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
                                bint single, cnp.ndarray param):
    """A buffer the kernel writes: the param (param is None) or a state."""
    if not cnp.PyArray_Check(obj):
        what = "a param" if param is None else "a state buffer"
        raise TypeError(f"{_label(names, i, index, single)} must be a numpy.ndarray "
                        f"({what} is updated in place), not {type(obj).__name__}")
    cdef cnp.ndarray a = <cnp.ndarray>obj
    cdef int typenum = cnp.PyArray_TYPE(a)
    if param is None:
        if ((typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64)
                or cnp.PyArray_ISBYTESWAPPED(a)):
            raise TypeError(f"{_label(names, i, index, single)} has dtype {a.dtype}; "
                            "gdcore updates float32 and float64 arrays in native byte order")
    else:
        if typenum != cnp.PyArray_TYPE(param) or cnp.PyArray_ISBYTESWAPPED(a):
            raise TypeError(f"{_label(names, i, index, single)} has dtype {a.dtype} but its "
                            f"param has dtype {param.dtype}")
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


def check_param(obj, str label):
    """Raise as a step would if `obj` cannot be a param (named `label`)."""
    _check_written(obj, (label, label), 0, None, True, None)


cdef cnp.ndarray _check_grad(object obj, Py_ssize_t i, object index, bint single,
                             cnp.ndarray param, list keep):
    """A gradient: any array-like of exactly the param's dtype and shape."""
    cdef cnp.ndarray g
    if obj is None:
        raise TypeError(f"{_label(_GRAD, i, index, single)} is None")
    if cnp.PyArray_Check(obj):
        g = <cnp.ndarray>obj
    else:
        try:
            g = np.asarray(obj)
        except Exception as exc:
            raise TypeError(f"{_label(_GRAD, i, index, single)} is not array-like: "
                            f"{exc}") from exc
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
        g = g.copy()            # read-only input: a contiguous copy is exact
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


cdef str _span_label(_Span s, tuple slots, object index, bint single):
    names = _PARAM if s.slot < 0 else slots[s.slot][0]
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


cdef int64_t _step_of(object steps, Py_ssize_t i, object index, bint single) except -1:
    cdef int64_t step
    try:
        step = steps if isinstance(steps, int) else operator.index(steps[i])
    except TypeError:
        raise TypeError(f"steps[{i if index is None else index[i]}] must be an int") from None
    if step < 1:
        name = "step" if single or isinstance(steps, int) else \
            f"steps[{i if index is None else index[i]}]"
        raise ValueError(f"{name} must be >= 1 (steps count from 1), got {step}")
    return step


cdef Py_ssize_t _gather_written(list params, tuple slots, object steps, object index,
                                bint single, gd_buffer *staged, _Span *spans) except -1:
    """Check the buffers a batch writes (params and state) and fill `staged`
    (argument order) with everything but the grads; `spans` receives their
    memory, sorted.  Returns the number of spans.

    slots: up to three (names, list or None) pairs, the state buffers in the
    order of csrc/gdcore.h.  steps: an int, or one int per buffer.  index:
    None, or the position of each buffer in the caller's own lists (used in
    messages).  single: name buffers as in the single-buffer functions.
    """
    cdef Py_ssize_t n = len(params), i, k, s, nspans = 0
    cdef Py_ssize_t nslots = len(slots)
    cdef cnp.ndarray p, a
    cdef list state_list
    for s in range(nslots):
        if slots[s][1] is not None and len(slots[s][1]) != n:
            raise ValueError(f"got {len(slots[s][1])} {slots[s][0][1]} for {n} params")
    if isinstance(steps, (list, tuple)):
        if len(steps) != n:
            raise ValueError(f"got {len(steps)} steps for {n} params")
    else:
        try:
            steps = operator.index(steps)
        except TypeError:
            raise TypeError(f"step must be an int, not {type(steps).__name__}") from None
    for i in range(n):
        p = _check_written(params[i], _PARAM, i, index, single, None)
        staged[i].param = cnp.PyArray_DATA(p)
        staged[i].grad = NULL
        staged[i].n = cnp.PyArray_SIZE(p)
        staged[i].step = _step_of(steps, i, index, single)
        _add_span(spans, &nspans, p, i, -1)
        for s in range(3):
            staged[i].state[s] = NULL
        for s in range(nslots):
            state_list = slots[s][1]
            if state_list is None:
                continue
            a = _check_written(state_list[i], slots[s][0], i, index, single, p)
            staged[i].state[s] = cnp.PyArray_DATA(a)
            _add_span(spans, &nspans, a, i, s)
    # Written buffers must be pairwise disjoint.
    qsort(spans, nspans, sizeof(_Span), _span_cmp)
    for k in range(1, nspans):
        if spans[k].lo < spans[k - 1].hi:
            raise ValueError(
                f"{_span_label(spans[k - 1], slots, index, single)} and "
                f"{_span_label(spans[k], slots, index, single)} overlap in memory; "
                "every param and state buffer must be a distinct array")
    return nspans


cdef int _gather_grad(object grad, Py_ssize_t i, object index, bint single,
                      cnp.ndarray param, gd_buffer *buffer, const _Span *spans,
                      Py_ssize_t nspans, list keep) except -1:
    """Check one grad and point buffer.grad at it; a grad that shares memory
    with a written buffer is read from a copy (kept alive in `keep`)."""
    cdef cnp.ndarray g = _check_grad(grad, i, index, single, param, keep)
    cdef uintptr_t lo = <uintptr_t>cnp.PyArray_DATA(g)
    cdef uintptr_t hi = lo + <uintptr_t>cnp.PyArray_NBYTES(g)
    if hi > lo and _overlaps_written(spans, nspans, lo, hi):
        g = g.copy()
        keep.append(g)
    buffer.grad = cnp.PyArray_DATA(g)
    return 0


cdef Py_ssize_t _partition(list params, const gd_buffer *staged, gd_buffer *out,
                           Py_ssize_t *order):
    """Copy staged into out, float32 buffers first, keeping their order;
    order[k] = the argument position of out[k].  Returns the float32 count."""
    cdef Py_ssize_t n = len(params), i, k, n32 = 0, f32 = 0, f64
    for i in range(n):
        if cnp.PyArray_TYPE(<cnp.ndarray>params[i]) == cnp.NPY_FLOAT32:
            n32 += 1
    f64 = n32
    for i in range(n):
        if cnp.PyArray_TYPE(<cnp.ndarray>params[i]) == cnp.NPY_FLOAT32:
            k = f32
            f32 += 1
        else:
            k = f64
            f64 += 1
        memcpy(&out[k], &staged[i], sizeof(gd_buffer))
        if order != NULL:
            order[k] = i
    return n32


cdef _Batch _gather(list params, list grads, tuple slots, object steps,
                    object index, bint single):
    """Check a whole batch (see _gather_written) and build its kernel call."""
    cdef Py_ssize_t n = len(params), i
    if len(grads) != n:
        raise ValueError(f"got {len(grads)} grads for {n} params")
    cdef _Batch batch = _Batch.__new__(_Batch)
    batch.keep = []
    batch.count = n
    batch.buffers = <gd_buffer *>malloc((2 * n + 1) * sizeof(gd_buffer))
    cdef _Span *spans = <_Span *>malloc((4 * n + 1) * sizeof(_Span))
    if batch.buffers == NULL or spans == NULL:
        free(spans)
        raise MemoryError()
    cdef gd_buffer *staged = batch.buffers + n   # in argument order
    cdef Py_ssize_t nspans
    try:
        nspans = _gather_written(params, slots, steps, index, single, staged, spans)
        for i in range(n):
            _gather_grad(grads[i], i, index, single, <cnp.ndarray>params[i], &staged[i],
                         spans, nspans, batch.keep)
    finally:
        free(spans)
    batch.n32 = _partition(params, staged, batch.buffers, NULL)
    return batch


cdef list _as_list(object seq, str name):
    if isinstance(seq, list):
        return <list>seq
    if isinstance(seq, (tuple, range)) or hasattr(seq, "__len__"):
        return list(seq)
    raise TypeError(f"{name} must be a sequence, not {type(seq).__name__}")


cdef list _optional_list(object seq, str name):
    return None if seq is None else _as_list(seq, name)


cdef inline double _real(object x, str name) except? -1.0:
    try:
        return x
    except TypeError:
        raise TypeError(f"{name} must be a real number, not {type(x).__name__}") from None


# ------------------------------------------------------------------ SGD

def check_sgd(double lr, double momentum, double dampening, double weight_decay,
              bint nesterov):
    """Raise ValueError as torch.optim.SGD does for invalid hyperparameters."""
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not momentum >= 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if dampening != dampening:
        raise ValueError(f"Invalid dampening value: {dampening}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


cdef int _sgd_options(_Options *o, double lr, double momentum, double dampening,
                      double weight_decay, bint nesterov, bint maximize) except -1:
    check_sgd(lr, momentum, dampening, weight_decay, nesterov)
    o.sgd = gd_sgd_options(lr=lr, momentum=momentum, dampening=dampening,
                           weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
    return 0


cdef _sgd(list params, list grads, list momentum_buffers, object steps, double lr,
          double momentum, double dampening, double weight_decay, bint nesterov,
          bint maximize, object index, bint single):
    cdef _Options o
    _sgd_options(&o, lr, momentum, dampening, weight_decay, nesterov, maximize)
    if momentum != 0:
        if momentum_buffers is None:
            raise ValueError(f"momentum={momentum} needs "
                             f"{_MOMENTUM_BUFFER[0 if single else 1]}")
        if steps is None:
            raise ValueError(f"momentum={momentum} needs step{'' if single else 's'} "
                             "(step 1 initialises momentum_buffer with the gradient)")
    else:
        if momentum_buffers is not None:
            raise ValueError(f"{_MOMENTUM_BUFFER[0 if single else 1]} is only used "
                             "with momentum != 0")
        steps = 1
    cdef _Batch b = _gather(params, grads, ((_MOMENTUM_BUFFER, momentum_buffers),),
                            steps, index, single)
    b.kind, b.options = _SGD, o
    b.run()


def sgd(param, grad, momentum_buffer=None, *, step=None, lr=1e-3, momentum=0.0,
        dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False):
    r"""One in-place SGD step on one buffer, as torch.optim.SGD computes it.

    .. math::
        d = \pm g + \lambda\theta;\quad
        b_t = \begin{cases} d & t = 1 \\ \mu b_{t-1} + (1-\tau) d & t > 1\end{cases};\quad
        \theta \leftarrow \theta - \gamma\,(d + \mu b_t \text{ if nesterov else } b_t)

    with :math:`\gamma` = lr, :math:`\mu` = momentum, :math:`\tau` = dampening,
    :math:`\lambda` = weight_decay; without momentum,
    :math:`\theta \leftarrow \theta - \gamma d`.  On step 1 the momentum
    buffer is set to ``d`` (torch's convention: no dampening on the first
    step), whatever it held.

    Args:
        param: float32/float64 C-contiguous ndarray, updated in place.
        grad: array-like of exactly param's shape and dtype.
        momentum_buffer: like param; required iff momentum != 0.
        step: the 1-based step number; required iff momentum != 0.
    """
    _sgd([param], [grad], None if momentum_buffer is None else [momentum_buffer], step,
         _real(lr, "lr"), _real(momentum, "momentum"), _real(dampening, "dampening"),
         _real(weight_decay, "weight_decay"), nesterov, maximize, None, True)


def sgd_multi(params, grads, momentum_buffers=None, *, steps=None, lr=1e-3,
              momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
              maximize=False):
    """`sgd` over many buffers in one C call (GIL released once).

    ``steps`` is an int, or one int per buffer.  Bitwise equal to calling
    `sgd` on each buffer in turn.
    """
    return _sgd(_as_list(params, "params"), _as_list(grads, "grads"),
         _optional_list(momentum_buffers, "momentum_buffers"), steps,
         _real(lr, "lr"), _real(momentum, "momentum"), _real(dampening, "dampening"),
         _real(weight_decay, "weight_decay"), nesterov, maximize, None, False)


# -------------------------------------------------------------- Adagrad

def check_adagrad(double lr, double lr_decay, double weight_decay,
                  double initial_accumulator_value, double eps):
    """Raise ValueError as torch.optim.Adagrad does for invalid hyperparameters."""
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not lr_decay >= 0.0:
        raise ValueError(f"Invalid lr_decay value: {lr_decay}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not initial_accumulator_value >= 0.0:
        raise ValueError(f"Invalid initial_accumulator_value value: "
                         f"{initial_accumulator_value}")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")


cdef int _adagrad_options(_Options *o, double lr, double lr_decay, double weight_decay,
                          double initial_accumulator_value, double eps,
                          bint maximize) except -1:
    check_adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)
    o.adagrad = gd_adagrad_options(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                   eps=eps, maximize=maximize)
    return 0


cdef _adagrad(list params, list grads, list sums, object steps, double lr,
              double lr_decay, double weight_decay, double eps, bint maximize,
              object index, bint single):
    cdef _Options o
    _adagrad_options(&o, lr, lr_decay, weight_decay, 0.0, eps, maximize)
    if steps is None:
        raise ValueError(f"adagrad needs step{'' if single else 's'}")
    if sums is None:
        raise ValueError(f"adagrad needs {_SUM[0 if single else 1]}")
    cdef _Batch b = _gather(params, grads, ((_SUM, sums),), steps, index, single)
    b.kind, b.options = _ADAGRAD, o
    b.run()


def adagrad(param, grad, sum, *, step, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
            eps=1e-10, maximize=False):
    r"""One in-place Adagrad step on one buffer, as torch.optim.Adagrad computes it.

    .. math::
        g \leftarrow \pm g + \lambda\theta;\quad s \leftarrow s + g^2;\quad
        \theta \leftarrow \theta - \frac{\gamma}{1 + (t-1)\eta}\,
                  \frac{g}{\sqrt{s} + \epsilon}

    with :math:`\gamma` = lr, :math:`\eta` = lr_decay, :math:`\lambda` =
    weight_decay, :math:`s` = sum (torch starts it at
    initial_accumulator_value), :math:`t` = step (1-based).
    """
    _adagrad([param], [grad], [sum], step, _real(lr, "lr"), _real(lr_decay, "lr_decay"),
             _real(weight_decay, "weight_decay"), _real(eps, "eps"), maximize, None, True)


def adagrad_multi(params, grads, sums, *, steps, lr=1e-2, lr_decay=0.0,
                  weight_decay=0.0, eps=1e-10, maximize=False):
    """`adagrad` over many buffers in one C call (GIL released once)."""
    return _adagrad(_as_list(params, "params"), _as_list(grads, "grads"), _as_list(sums, "sums"),
             steps, _real(lr, "lr"), _real(lr_decay, "lr_decay"),
             _real(weight_decay, "weight_decay"), _real(eps, "eps"), maximize, None, False)


# -------------------------------------------------------------- RMSprop

def check_rmsprop(double lr, double alpha, double eps, double weight_decay,
                  double momentum):
    """Raise ValueError as torch.optim.RMSprop does for invalid hyperparameters."""
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not momentum >= 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not alpha >= 0.0:
        raise ValueError(f"Invalid alpha value: {alpha}")


cdef int _rmsprop_options(_Options *o, double lr, double alpha, double eps,
                          double weight_decay, double momentum, bint centered,
                          bint maximize) except -1:
    check_rmsprop(lr, alpha, eps, weight_decay, momentum)
    o.rmsprop = gd_rmsprop_options(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                   momentum=momentum, centered=centered, maximize=maximize)
    return 0


cdef _rmsprop(list params, list grads, list square_avgs, list momentum_buffers,
              list grad_avgs, object steps, double lr, double alpha, double eps,
              double weight_decay, double momentum, bint centered, bint maximize,
              object index, bint single):
    cdef _Options o
    _rmsprop_options(&o, lr, alpha, eps, weight_decay, momentum, centered, maximize)
    cdef int w = 0 if single else 1
    if square_avgs is None:
        raise ValueError(f"rmsprop needs {_SQUARE_AVG[w]}")
    if (momentum > 0) != (momentum_buffers is not None):
        raise ValueError(f"{_MOMENTUM_BUFFER[w]} is needed with momentum > 0 and only then "
                         f"(momentum={momentum})")
    if centered != (grad_avgs is not None):
        raise ValueError(f"{_GRAD_AVG[w]} is needed with centered=True and only then")
    cdef _Batch b = _gather(params, grads,
                            ((_SQUARE_AVG, square_avgs), (_MOMENTUM_BUFFER, momentum_buffers),
                             (_GRAD_AVG, grad_avgs)),
                            1 if steps is None else steps, index, single)
    b.kind, b.options = _RMSPROP, o
    b.run()


def rmsprop(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, lr=1e-2,
            alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
            maximize=False):
    r"""One in-place RMSprop step on one buffer, as torch.optim.RMSprop computes it.

    .. math::
        g \leftarrow \pm g + \lambda\theta;\quad
        v \leftarrow \alpha v + (1-\alpha) g^2;\quad
        \bar g \leftarrow \mathrm{lerp}(\bar g, g, 1-\alpha)\ \text{(centered)}

        a = \sqrt{v - \bar g^2} + \epsilon\ \text{(centered) or}\ \sqrt{v} + \epsilon;\quad
        b \leftarrow \mu b + g / a,\ \theta \leftarrow \theta - \gamma b\ (\mu > 0)
        \ \text{else}\ \theta \leftarrow \theta - \gamma g / a

    Note that eps is added outside the square root, as in torch (some texts
    put it inside).  The math needs no step number.
    """
    _rmsprop([param], [grad], [square_avg],
             None if momentum_buffer is None else [momentum_buffer],
             None if grad_avg is None else [grad_avg], None, _real(lr, "lr"),
             _real(alpha, "alpha"), _real(eps, "eps"), _real(weight_decay, "weight_decay"),
             _real(momentum, "momentum"), centered, maximize, None, True)


def rmsprop_multi(params, grads, square_avgs, momentum_buffers=None, grad_avgs=None, *,
                  lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                  centered=False, maximize=False):
    """`rmsprop` over many buffers in one C call (GIL released once)."""
    return _rmsprop(_as_list(params, "params"), _as_list(grads, "grads"),
             _as_list(square_avgs, "square_avgs"),
             _optional_list(momentum_buffers, "momentum_buffers"),
             _optional_list(grad_avgs, "grad_avgs"), None, _real(lr, "lr"),
             _real(alpha, "alpha"), _real(eps, "eps"), _real(weight_decay, "weight_decay"),
             _real(momentum, "momentum"), centered, maximize, None, False)


# ----------------------------------------------------------------- Adam

def check_adam(double lr, betas, double eps, double weight_decay):
    """Raise ValueError as torch.optim.Adam does for invalid hyperparameters."""
    try:
        beta1, beta2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= _real(beta1, "betas[0]") < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {beta1}")
    if not 0.0 <= _real(beta2, "betas[1]") < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {beta2}")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return float(beta1), float(beta2)


cdef int _adam_options(_Options *o, double lr, object betas, double eps, double weight_decay,
                       bint amsgrad, bint maximize, bint decoupled_weight_decay) except -1:
    beta1, beta2 = check_adam(lr, betas, eps, weight_decay)
    o.adam = gd_adam_options(lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                             weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                             decoupled_weight_decay=decoupled_weight_decay)
    return 0


cdef _adam(list params, list grads, list exp_avgs, list exp_avg_sqs, list max_exp_avg_sqs,
           object steps, double lr, object betas, double eps, double weight_decay,
           bint amsgrad, bint maximize, bint decoupled_weight_decay, object index,
           bint single):
    cdef _Options o
    _adam_options(&o, lr, betas, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay)
    cdef int w = 0 if single else 1
    if steps is None:
        raise ValueError(f"adam needs step{'' if single else 's'}")
    if exp_avgs is None or exp_avg_sqs is None:
        raise ValueError(f"adam needs {_EXP_AVG[w]} and {_EXP_AVG_SQ[w]}")
    if amsgrad != (max_exp_avg_sqs is not None):
        raise ValueError(f"{_MAX_EXP_AVG_SQ[w]} is needed with amsgrad=True and only then")
    cdef _Batch b = _gather(params, grads,
                            ((_EXP_AVG, exp_avgs), (_EXP_AVG_SQ, exp_avg_sqs),
                             (_MAX_EXP_AVG_SQ, max_exp_avg_sqs)),
                            steps, index, single)
    b.kind, b.options = _ADAM, o
    b.run()


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
         betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
         decoupled_weight_decay=False):
    r"""One in-place Adam step on one buffer, as torch.optim.Adam computes it.

    .. math::
        g \leftarrow \pm g\ (+\lambda\theta\ \text{unless decoupled});\quad
        \theta \leftarrow (1 - \gamma\lambda)\theta\ \text{(decoupled)}

        m \leftarrow \beta_1 m + (1-\beta_1) g;\quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2;\quad
        \hat v = \max(\hat v, v)\ \text{(amsgrad) else}\ v

        \theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
            \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}

    with :math:`\gamma` = lr, :math:`\lambda` = weight_decay, :math:`t` = step
    (1-based).  As in torch, eps is added after the bias correction of
    :math:`\sqrt{v}` (the Adam paper adds it to :math:`\sqrt{\hat v}` of the
    corrected moment, which is the same; some libraries add it before), and
    amsgrad keeps the max of the uncorrected :math:`v`.  The kernel computes
    the equivalent :math:`\theta - (\gamma\sqrt{1-\beta_2^t}/(1-\beta_1^t))\,
    m / (\sqrt{\hat v} + \epsilon\sqrt{1-\beta_2^t})`, with its scalars in
    double precision.
    """
    _adam([param], [grad], [exp_avg], [exp_avg_sq],
          None if max_exp_avg_sq is None else [max_exp_avg_sq], step, _real(lr, "lr"),
          betas, _real(eps, "eps"), _real(weight_decay, "weight_decay"), amsgrad, maximize,
          decoupled_weight_decay, None, True)


def adam_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, steps,
               lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
               maximize=False, decoupled_weight_decay=False):
    """`adam` over many buffers in one C call (GIL released once)."""
    return _adam(_as_list(params, "params"), _as_list(grads, "grads"),
          _as_list(exp_avgs, "exp_avgs"), _as_list(exp_avg_sqs, "exp_avg_sqs"),
          _optional_list(max_exp_avg_sqs, "max_exp_avg_sqs"), steps, _real(lr, "lr"),
          betas, _real(eps, "eps"), _real(weight_decay, "weight_decay"), amsgrad, maximize,
          decoupled_weight_decay, None, False)


def adamw(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, step, lr=1e-3,
          betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
          maximize=False):
    r"""One in-place AdamW step: `adam` with decoupled weight decay
    (:math:`\theta \leftarrow (1-\gamma\lambda)\theta` before the Adam update,
    the gradient untouched), default weight_decay 1e-2, as torch.optim.AdamW.
    """
    _adam([param], [grad], [exp_avg], [exp_avg_sq],
          None if max_exp_avg_sq is None else [max_exp_avg_sq], step, _real(lr, "lr"),
          betas, _real(eps, "eps"), _real(weight_decay, "weight_decay"), amsgrad, maximize,
          True, None, True)


def adamw_multi(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs=None, *, steps,
                lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                maximize=False):
    """`adamw` over many buffers in one C call (GIL released once)."""
    return _adam(_as_list(params, "params"), _as_list(grads, "grads"),
          _as_list(exp_avgs, "exp_avgs"), _as_list(exp_avg_sqs, "exp_avg_sqs"),
          _optional_list(max_exp_avg_sqs, "max_exp_avg_sqs"), steps, _real(lr, "lr"),
          betas, _real(eps, "eps"), _real(weight_decay, "weight_decay"), amsgrad, maximize,
          True, None, False)


# -------------------------------------------- the optimizer classes' path

# State names of each optimizer class, in the kernel's slot order.
cdef dict _CLASS_SLOTS = {
    "SGD": (_MOMENTUM_BUFFER,),
    "Adagrad": (_SUM,),
    "RMSprop": (_SQUARE_AVG, _MOMENTUM_BUFFER, _GRAD_AVG),
    "Adam": (_EXP_AVG, _EXP_AVG_SQ, _MAX_EXP_AVG_SQ),
    "AdamW": (_EXP_AVG, _EXP_AVG_SQ, _MAX_EXP_AVG_SQ),
}


# The hyperparameters each class reads from its param groups.
cdef dict _CLASS_KEYS = {
    "SGD": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"),
    "Adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps",
                "maximize"),
    "RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
             "decoupled_weight_decay"),
    "AdamW": ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize",
              "decoupled_weight_decay"),
}


cdef _Kind _group_options(str kind, dict g, _Options *o, bint *used) except *:
    """Check a class's param group (the same checks as the functional API)
    and fill o; used[s]: whether state slot s takes part."""
    used[0], used[1], used[2] = True, False, False
    if kind == "SGD":
        _sgd_options(o, g["lr"], g["momentum"], g["dampening"], g["weight_decay"],
                     g["nesterov"], g["maximize"])
        used[0] = g["momentum"] != 0
        return _SGD
    if kind == "Adagrad":
        _adagrad_options(o, g["lr"], g["lr_decay"], g["weight_decay"],
                         g["initial_accumulator_value"], g["eps"], g["maximize"])
        return _ADAGRAD
    if kind == "RMSprop":
        _rmsprop_options(o, g["lr"], g["alpha"], g["eps"], g["weight_decay"], g["momentum"],
                         g["centered"], g["maximize"])
        used[1], used[2] = g["momentum"] > 0, bool(g["centered"])
        return _RMSPROP
    if kind == "Adam" or kind == "AdamW":
        if kind == "AdamW" and not g["decoupled_weight_decay"]:
            raise ValueError("AdamW requires decoupled_weight_decay=True")
        _adam_options(o, g["lr"], g["betas"], g["eps"], g["weight_decay"], g["amsgrad"],
                      g["maximize"], g["decoupled_weight_decay"])
        used[1], used[2] = True, bool(g["amsgrad"])
        return _ADAM
    raise ValueError(f"unknown optimizer kind {kind!r}")


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


cdef tuple _slots_used(str kind, const bint *used):
    names = _CLASS_SLOTS[kind]
    return tuple([names[j][0] for j in range(len(names)) if used[j]])


def hyperparameter_names(str kind):
    """The hyperparameters an optimizer class reads from its param groups."""
    return _CLASS_KEYS[kind]


def check_group(str kind, dict group):
    """Check a class's param group hyperparameters (raises ValueError)."""
    cdef _Options o
    cdef bint used[3]
    _group_options(kind, group, &o, used)


def slots_in_use(str kind, dict group):
    """The state names a step of this group reads and writes."""
    cdef _Options o
    cdef bint used[3]
    _group_options(kind, group, &o, used)
    return _slots_used(kind, used)


def group_batch(str kind, dict group, list params, list grads, list states, object steps,
                list index):
    """A checked, deferred kernel call for one param group of a class:
    states[i] maps torch's state names to param i's arrays."""
    cdef _Options o
    cdef bint used[3]
    cdef _Kind k = _group_options(kind, group, &o, used)
    names = _CLASS_SLOTS[kind]
    slots = tuple([(names[s], [st[names[s][0]] for st in states] if used[s] else None)
                   for s in range(len(names))])
    cdef _Batch b = _gather(params, grads, slots, steps, index, False)
    b.kind, b.options = k, o
    return b


cdef class Plan:
    """The kernel calls of an optimizer whose params and state are settled.

    Built once every param has state; then each step() checks the grads
    (with the same checks as every call), reads and checks the
    hyperparameters of every group, advances the step counters of the params
    it steps (a None grad skips its param, as in the general path) and calls
    C, with no Python-level loop over params.  `run` returns False, having
    changed nothing, whenever something the plan depends on has changed (a
    group's params, or an option that selects state; a state dict or state
    array was replaced; a param's data or flags), and the caller then takes
    the general path, which builds a new plan.
    """
    cdef str kind
    cdef _Kind kind_code
    cdef bint counts_steps
    cdef dict state_by_id       # the optimizer's ParamState._by_id
    cdef list groups            # group dicts
    cdef list group_params      # each group's "params" list object, as planned
    cdef list group_values      # each group's hyperparameter objects, as last checked
    cdef tuple keys             # the names of those hyperparameters
    cdef list group_slots       # the state names each group's step uses
    cdef Py_ssize_t ngroups, count, nspans
    cdef Py_ssize_t *group_start    # [ngroups + 1]: group g is buffers[start[g]:start[g+1]]
    cdef Py_ssize_t *group_n32      # float32 buffers come first in each group
    cdef Py_ssize_t *position       # buffers[k] is grads[position[k]]
    cdef Py_ssize_t *member         # ... and group["params"][member[k]]
    cdef int64_t *sizes             # element count of buffers[k]
    cdef _Options *options
    cdef gd_buffer *buffers
    cdef _Span *spans               # every written buffer, sorted
    cdef list params, states, arrays, slot_names, entries, ids

    def __dealloc__(self):
        free(self.group_start)
        free(self.group_n32)
        free(self.position)
        free(self.member)
        free(self.sizes)
        free(self.options)
        free(self.buffers)
        free(self.spans)

    @staticmethod
    def build(str kind, list param_groups, dict state_by_id, bint counts_steps):
        """A plan for this optimizer, or None when some param lacks state."""
        cdef Plan plan = Plan.__new__(Plan)
        cdef Py_ssize_t ngroups = len(param_groups), total = 0, g, i, k, flat = 0
        cdef Py_ssize_t start = 0, nspans = 0
        cdef bint used[3]
        cdef cnp.ndarray p
        plan.kind, plan.counts_steps, plan.state_by_id = kind, counts_steps, state_by_id
        plan.groups, plan.group_params, plan.group_values = [], [], []
        plan.params, plan.states, plan.arrays, plan.slot_names = [], [], [], []
        plan.entries, plan.ids = [], []
        plan.keys = _CLASS_KEYS[kind]
        plan.group_slots = []
        for group in param_groups:
            total += len(group["params"])
        plan.ngroups, plan.count = ngroups, total
        plan.group_start = <Py_ssize_t *>malloc((ngroups + 1) * sizeof(Py_ssize_t))
        plan.group_n32 = <Py_ssize_t *>malloc((ngroups + 1) * sizeof(Py_ssize_t))
        plan.options = <_Options *>malloc((ngroups + 1) * sizeof(_Options))
        plan.buffers = <gd_buffer *>malloc((2 * total + 1) * sizeof(gd_buffer))
        plan.position = <Py_ssize_t *>malloc((total + 1) * sizeof(Py_ssize_t))
        plan.member = <Py_ssize_t *>malloc((total + 1) * sizeof(Py_ssize_t))
        plan.spans = <_Span *>malloc((4 * total + 1) * sizeof(_Span))
        plan.sizes = <int64_t *>malloc((total + 1) * sizeof(int64_t))
        if (plan.group_start == NULL or plan.group_n32 == NULL or plan.options == NULL or
                plan.buffers == NULL or plan.position == NULL or plan.member == NULL or
                plan.spans == NULL or plan.sizes == NULL):
            raise MemoryError()
        cdef gd_buffer *staged = plan.buffers + total
        names = _CLASS_SLOTS[kind]
        for g in range(ngroups):
            group = param_groups[g]
            plan.kind_code = _group_options(kind, group, &plan.options[g], used)
            in_use = _slots_used(kind, used)
            params = list(group["params"])
            states = []
            for q in params:
                entry = state_by_id.get(id(q))
                if entry is None or any(name not in entry[1] for name in in_use):
                    return None
                states.append(entry[1])
            plan.groups.append(group)
            plan.group_params.append(group["params"])
            plan.group_values.append(_group_values(group, plan.keys))
            plan.group_slots.append(in_use)
            slots = tuple([(names[s], [st[names[s][0]] for st in states] if used[s] else None)
                           for s in range(len(names))])
            index = list(range(flat, flat + len(params)))
            # checks this group's buffers; plan.spans is scratch here
            _gather_written(params, slots, 1, index, False, staged + start, plan.spans)
            plan.group_start[g] = start
            plan.group_n32[g] = _partition(params, staged + start, plan.buffers + start,
                                           plan.member + start)
            for k in range(start, start + len(params)):
                i = plan.member[k]
                plan.sizes[k] = plan.buffers[k].n
                plan.position[k] = flat + i
                plan.params.append(params[i])
                plan.states.append(states[i])
                plan.ids.append(id(params[i]))
                plan.entries.append(state_by_id[id(params[i])])
                plan.arrays.append(tuple(states[i][name] for name in in_use))
                plan.slot_names.append(in_use)
            start += len(params)
            flat += len(params)
        plan.group_start[ngroups] = start
        # Written buffers of all groups, sorted; disjoint across groups too.
        for k in range(total):
            p = <cnp.ndarray>plan.params[k]
            _add_span(plan.spans, &nspans, p, plan.position[k], -1)
            for a in plan.arrays[k]:
                _add_span(plan.spans, &nspans, <cnp.ndarray>a, plan.position[k], 0)
        qsort(plan.spans, nspans, sizeof(_Span), _span_cmp)
        for k in range(1, nspans):
            if plan.spans[k].lo < plan.spans[k - 1].hi:
                raise ValueError(f"the buffers of params[{plan.spans[k - 1].buffer}] and "
                                 f"params[{plan.spans[k].buffer}] overlap in memory")
        plan.nspans = nspans
        return plan

    def run(self, list grads):
        """One step, if the plan still holds (see the class docstring)."""
        cdef Py_ssize_t g, k, s, n = self.count
        cdef bint used[3]
        cdef cnp.ndarray p
        cdef dict st
        cdef list lst, keep = []
        if len(grads) != n:
            return False
        for g in range(self.ngroups):
            group = <dict>self.groups[g]
            lst = group["params"]
            if (lst is not self.group_params[g]
                    or len(lst) != self.group_start[g + 1] - self.group_start[g]):
                return False
            values = self.group_values[g]
            for s in range(len(self.keys)):
                if values is None or group.get(self.keys[s]) is not (<tuple>values)[s]:
                    # changed (a schedule): check, and keep it only if it needs
                    # the same state slots
                    _group_options(self.kind, group, &self.options[g], used)
                    if _slots_used(self.kind, used) != self.group_slots[g]:
                        return False
                    self.group_values[g] = _group_values(group, self.keys)
                    break
            for k in range(self.group_start[g], self.group_start[g + 1]):
                p = <cnp.ndarray>self.params[k]
                if lst[self.member[k]] is not p:
                    return False
                st = <dict>self.states[k]
                if self.state_by_id.get(self.ids[k]) is not self.entries[k]:
                    return False
                names = <tuple>self.slot_names[k]
                arrays = <tuple>self.arrays[k]
                for s in range(len(names)):
                    if st.get(names[s]) is not arrays[s]:
                        return False
                if (cnp.PyArray_DATA(p) != self.buffers[k].param
                        or not cnp.PyArray_ISWRITEABLE(p)):
                    return False
        for k in range(n):
            grad = grads[self.position[k]]
            if grad is None:                    # skipped this step: no elements
                self.buffers[k].n = 0
                self.buffers[k].step = 0
                continue
            self.buffers[k].n = self.sizes[k]
            _gather_grad(grad, self.position[k], None, False, <cnp.ndarray>self.params[k],
                         &self.buffers[k], self.spans, self.nspans, keep)
            if self.counts_steps:
                self.buffers[k].step = (<dict>self.states[k])["step"] + 1
            else:
                self.buffers[k].step = 2        # SGD: the momentum buffer exists
        # All checked: commit the step counters, then run.
        if self.counts_steps:
            for k in range(n):
                if self.buffers[k].step > 0:
                    (<dict>self.states[k])["step"] = self.buffers[k].step
        with nogil:
            for g in range(self.ngroups):
                k = self.group_start[g]
                _run(self.kind_code, &self.options[g], self.buffers + k, self.group_n32[g],
                     GD_FLOAT32)
                _run(self.kind_code, &self.options[g], self.buffers + k + self.group_n32[g],
                     self.group_start[g + 1] - k - self.group_n32[g], GD_FLOAT64)
        return True


# -------------------------------------------------------- benchmark probe

cdef tuple _PROBE_NAMES = (("state0", "states0"), ("state1", "states1"), ("state2", "states2"))


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
    cdef tuple slots = tuple([(_PROBE_NAMES[k], _as_list(states[k], "states"))
                              for k in range(len(states))])
    cdef _Batch b = _gather(_as_list(params, "params"), _as_list(grads, "grads"), slots, 1,
                            None, False)
    with nogil:
        if b.n32:
            gd_stream(GD_FLOAT32, nread, nwrite, b.buffers, b.n32)
        if b.count > b.n32:
            gd_stream(GD_FLOAT64, nread, nwrite, b.buffers + b.n32, b.count - b.n32)


def increment_counters(list counters):
    """Add 1 to each 0-d float32/float64 array of `counters` (the NumPy views
    of torch's `step` tensors, for gdcore.torch): one call instead of a torch
    op per tensor."""
    cdef cnp.ndarray a
    for obj in counters:
        if not cnp.PyArray_Check(obj) or cnp.PyArray_SIZE(<cnp.ndarray>obj) != 1:
            raise TypeError("counters must be 1-element numpy arrays")
        a = <cnp.ndarray>obj
        if not cnp.PyArray_ISWRITEABLE(a) or not cnp.PyArray_ISALIGNED(a):
            raise ValueError("counters must be writable and aligned")
        if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
            (<float *>cnp.PyArray_DATA(a))[0] += 1
        elif cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT64:
            (<double *>cnp.PyArray_DATA(a))[0] += 1
        else:
            raise TypeError(f"counter of dtype {a.dtype}")
