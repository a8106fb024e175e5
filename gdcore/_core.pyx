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


cdef object _finish(_Batch b, bint defer):
    """Run the batch now, or hand it back for the caller to run later."""
    if defer:
        return b
    b.run()
    return None


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


cdef _Batch _gather(list params, list grads, tuple slots, object steps,
                    object index, bint single):
    """Check a batch and fill its gd_buffer array.

    slots: up to three (names, list or None) pairs, the state buffers in the
    order of csrc/gdcore.h.  steps: an int, or one int per buffer.  index:
    None, or the position of each buffer in the caller's own lists (used in
    messages).  single: name buffers as in the single-buffer functions.
    """
    cdef Py_ssize_t n = len(params), i, k, s
    cdef Py_ssize_t nslots = len(slots)
    if len(grads) != n:
        raise ValueError(f"got {len(grads)} grads for {n} params")
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

    cdef _Batch batch = _Batch.__new__(_Batch)
    batch.keep = []
    batch.count = n
    batch.buffers = <gd_buffer *>malloc((2 * n + 1) * sizeof(gd_buffer))
    cdef _Span *spans = <_Span *>malloc((4 * n + 1) * sizeof(_Span))
    if batch.buffers == NULL or spans == NULL:
        free(spans)
        raise MemoryError()
    cdef gd_buffer *staged = batch.buffers + n   # in argument order
    cdef Py_ssize_t nspans = 0, lo, hi, n32 = 0
    cdef cnp.ndarray p, a, g
    cdef list grad_arrays = [None] * n
    cdef list state_list
    try:
        for i in range(n):
            p = _check_written(params[i], _PARAM, i, index, single, None)
            if cnp.PyArray_TYPE(p) == cnp.NPY_FLOAT32:
                n32 += 1
            staged[i].param = cnp.PyArray_DATA(p)
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
            g = _check_grad(grads[i], i, index, single, p, batch.keep)
            grad_arrays[i] = g
            staged[i].grad = cnp.PyArray_DATA(g)

        # Written buffers must be pairwise disjoint.
        qsort(spans, nspans, sizeof(_Span), _span_cmp)
        for k in range(1, nspans):
            if spans[k].lo < spans[k - 1].hi:
                raise ValueError(
                    f"{_span_label(spans[k - 1], slots, index, single)} and "
                    f"{_span_label(spans[k], slots, index, single)} overlap in memory; "
                    "every param and state buffer must be a distinct array")
        # A grad that shares memory with a written buffer is read from a copy.
        for i in range(n):
            g = grad_arrays[i]
            lo = <Py_ssize_t>cnp.PyArray_DATA(g)
            hi = lo + cnp.PyArray_NBYTES(g)
            if hi > lo and _overlaps_written(spans, nspans, <uintptr_t>lo, <uintptr_t>hi):
                g = g.copy()
                batch.keep.append(g)
                staged[i].grad = cnp.PyArray_DATA(g)
    finally:
        free(spans)

    # Stable partition by dtype: float32 first.
    cdef Py_ssize_t f32 = 0, f64 = n32
    for i in range(n):
        if cnp.PyArray_TYPE(<cnp.ndarray>params[i]) == cnp.NPY_FLOAT32:
            memcpy(&batch.buffers[f32], &staged[i], sizeof(gd_buffer))
            f32 += 1
        else:
            memcpy(&batch.buffers[f64], &staged[i], sizeof(gd_buffer))
            f64 += 1
    batch.n32 = n32
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


cdef _sgd(list params, list grads, list momentum_buffers, object steps, double lr,
          double momentum, double dampening, double weight_decay, bint nesterov,
          bint maximize, object index, bint single, bint defer=False):
    check_sgd(lr, momentum, dampening, weight_decay, nesterov)
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
    b.kind = _SGD
    b.options.sgd = gd_sgd_options(lr=lr, momentum=momentum, dampening=dampening,
                                   weight_decay=weight_decay, nesterov=nesterov,
                                   maximize=maximize)
    return _finish(b, defer)


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
              maximize=False, _index=None, _defer=False):
    """`sgd` over many buffers in one C call (GIL released once).

    ``steps`` is an int, or one int per buffer.  Bitwise equal to calling
    `sgd` on each buffer in turn.
    """
    return _sgd(_as_list(params, "params"), _as_list(grads, "grads"),
         _optional_list(momentum_buffers, "momentum_buffers"), steps,
         _real(lr, "lr"), _real(momentum, "momentum"), _real(dampening, "dampening"),
         _real(weight_decay, "weight_decay"), nesterov, maximize, _index, False, _defer)


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


cdef _adagrad(list params, list grads, list sums, object steps, double lr,
              double lr_decay, double weight_decay, double eps, bint maximize,
              object index, bint single, bint defer=False):
    check_adagrad(lr, lr_decay, weight_decay, 0.0, eps)
    if steps is None:
        raise ValueError(f"adagrad needs step{'' if single else 's'}")
    if sums is None:
        raise ValueError(f"adagrad needs {_SUM[0 if single else 1]}")
    cdef _Batch b = _gather(params, grads, ((_SUM, sums),), steps, index, single)
    b.kind = _ADAGRAD
    b.options.adagrad = gd_adagrad_options(lr=lr, lr_decay=lr_decay,
                                           weight_decay=weight_decay, eps=eps,
                                           maximize=maximize)
    return _finish(b, defer)


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
                  weight_decay=0.0, eps=1e-10, maximize=False, _index=None, _defer=False):
    """`adagrad` over many buffers in one C call (GIL released once)."""
    return _adagrad(_as_list(params, "params"), _as_list(grads, "grads"), _as_list(sums, "sums"),
             steps, _real(lr, "lr"), _real(lr_decay, "lr_decay"),
             _real(weight_decay, "weight_decay"), _real(eps, "eps"), maximize, _index, False, _defer)


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


cdef _rmsprop(list params, list grads, list square_avgs, list momentum_buffers,
              list grad_avgs, object steps, double lr, double alpha, double eps,
              double weight_decay, double momentum, bint centered, bint maximize,
              object index, bint single, bint defer=False):
    check_rmsprop(lr, alpha, eps, weight_decay, momentum)
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
    b.kind = _RMSPROP
    b.options.rmsprop = gd_rmsprop_options(lr=lr, alpha=alpha, eps=eps,
                                           weight_decay=weight_decay, momentum=momentum,
                                           centered=centered, maximize=maximize)
    return _finish(b, defer)


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
                  centered=False, maximize=False, _index=None, _defer=False):
    """`rmsprop` over many buffers in one C call (GIL released once)."""
    return _rmsprop(_as_list(params, "params"), _as_list(grads, "grads"),
             _as_list(square_avgs, "square_avgs"),
             _optional_list(momentum_buffers, "momentum_buffers"),
             _optional_list(grad_avgs, "grad_avgs"), None, _real(lr, "lr"),
             _real(alpha, "alpha"), _real(eps, "eps"), _real(weight_decay, "weight_decay"),
             _real(momentum, "momentum"), centered, maximize, _index, False, _defer)


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


cdef _adam(list params, list grads, list exp_avgs, list exp_avg_sqs, list max_exp_avg_sqs,
           object steps, double lr, object betas, double eps, double weight_decay,
           bint amsgrad, bint maximize, bint decoupled_weight_decay, object index,
           bint single, bint defer=False):
    beta1, beta2 = check_adam(lr, betas, eps, weight_decay)
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
    b.kind = _ADAM
    b.options.adam = gd_adam_options(lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                     weight_decay=weight_decay, amsgrad=amsgrad,
                                     maximize=maximize,
                                     decoupled_weight_decay=decoupled_weight_decay)
    return _finish(b, defer)


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
               maximize=False, decoupled_weight_decay=False, _index=None, _defer=False):
    """`adam` over many buffers in one C call (GIL released once)."""
    return _adam(_as_list(params, "params"), _as_list(grads, "grads"),
          _as_list(exp_avgs, "exp_avgs"), _as_list(exp_avg_sqs, "exp_avg_sqs"),
          _optional_list(max_exp_avg_sqs, "max_exp_avg_sqs"), steps, _real(lr, "lr"),
          betas, _real(eps, "eps"), _real(weight_decay, "weight_decay"), amsgrad, maximize,
          decoupled_weight_decay, _index, False, _defer)


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
                maximize=False, _index=None, _defer=False):
    """`adamw` over many buffers in one C call (GIL released once)."""
    return _adam(_as_list(params, "params"), _as_list(grads, "grads"),
          _as_list(exp_avgs, "exp_avgs"), _as_list(exp_avg_sqs, "exp_avg_sqs"),
          _optional_list(max_exp_avg_sqs, "max_exp_avg_sqs"), steps, _real(lr, "lr"),
          betas, _real(eps, "eps"), _real(weight_decay, "weight_decay"), amsgrad, maximize,
          True, _index, False, _defer)


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
    cdef tuple slots = tuple(((f"state{k}", f"states{k}"), _as_list(s, "states"))
                             for k, s in enumerate(states))
    cdef _Batch b = _gather(_as_list(params, "params"), _as_list(grads, "grads"), slots, 1,
                            None, False)
    with nogil:
        if b.n32:
            gd_stream(GD_FLOAT32, nread, nwrite, b.buffers, b.n32)
        if b.count > b.n32:
            gd_stream(GD_FLOAT64, nread, nwrite, b.buffers + b.n32, b.count - b.n32)
