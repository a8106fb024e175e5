"""gdcore as a drop-in fast backend for PyTorch.

``gdcore.torch.SGD``, ``.Adagrad``, ``.RMSprop``, ``.Adam``, ``.AdamW``,
``.Adadelta``, ``.Adamax``, ``.ASGD``, ``.NAdam``, ``.RAdam`` and ``.Rprop``
(one per declaration of gdcore/family.py) are subclasses of the torch.optim
class of the same name: same constructor
(signature, defaults, validation, messages), same ``param_groups``, the same
``state`` (torch tensors under torch's names, ``step`` as torch stores it),
so ``state_dict()`` / ``load_state_dict()``, ``zero_grad``,
``add_param_group``, optimizer hooks, ``torch.optim.lr_scheduler`` and
``torch.distributed.optim.ZeroRedundancyOptimizer`` work as with torch.  Only
``step`` differs: it runs gdcore's kernels, zero-copy, on CPU float32/float64
contiguous tensors, one C call per param group.

Design note.  Each optimizer keeps an *engine*: a gdcore NumPy optimizer
(gdcore.Adam, ...) over NumPy views of the params, whose state arrays are
views of the torch state tensors (or, for state the engine creates itself,
torch tensors made from its arrays with torch.from_numpy): one memory, two
names.  step() copies the group hyperparameters into the engine (so
schedulers work), hands it the grads and advances torch's ``step`` tensors.
The engine is rebuilt from torch's state whenever the params or the state
were replaced (load_state_dict, add_param_group, ``p.data = ...``,
``p.set_(...)``, a state tensor replaced in ``opt.state``).

The steady state (every param a plain tensor with a dense grad, as at the
last step) reads nothing per tensor in Python: _core.Plan.run_torch reads
each ``p.grad`` and checks grads and params in C, through torch's C++ API
(gdcore/_torch_reads.cpp, compiled against the installed torch on first
use and cached: gdcore/_torch_build.py; a few ns a tensor plus cache
misses on torch's tensor metadata, and no Python object made for a grad
fresh from backward) or, without a C++ compiler, through torch's Python-level
C functions (the DLPack exchange table of torch >= 2.10: data pointer,
dtype, shape, strides, device; the negative bit through ``is_neg``'s C
function; about 0.3 us a tensor).  Both make the same checks.
Anything it does not take (a missing, strided, negated or overlapping grad,
a torch function mode) goes to the general path, which views each grad
as NumPy and whose checks and errors are the engine's.  What is checked
every step: the grads (type, dtype, shape, contiguity, negative bit,
overlap with what the step writes) and the params' memory (a param given
other memory or the negative bit since the engine was built).  What is not:
the memory of a state tensor changed in place (``state[name].data = t``,
``state[name].set_(t)``): the engine keeps updating the memory it had,
which its NumPy view keeps alive; replace state tensors instead
(``state[name] = t``) or use load_state_dict, as both are seen.

DTensor params (FSDP2's ``fully_shard``, tensor parallelism) are stepped by
their local shards, zero-copy; their state tensors are DTensors laid out as
the param, as torch.optim creates them, so ``state_dict()`` and distributed
checkpointing see what they see with torch.optim.  A DTensor grad must have
its param's placements.

Params the kernels cannot take (not on the CPU, not contiguous, not
float32/float64, other tensor subclasses) and sparse grads raise a clear
error naming the param; with ``fallback=True`` they are stepped by torch's
own implementation instead, with the same state.  ``foreach`` and ``fused`` are accepted for
compatibility and change nothing (gdcore's kernel is always fused);
``differentiable=True`` is not supported.
"""
import functools
import inspect
import math
import signal
import threading
from itertools import chain

import numpy as np
import torch
from torch.optim import optimizer as _torch_optimizer
from torch.optim.optimizer import _get_scalar_dtype

from gdcore import _core
from gdcore import optim as _engines
from gdcore.family import FAMILY

try:
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:                     # torch built without distributed
    _DTensor = None

__all__ = [decl.name for decl in FAMILY] + ["clip_grad_norm_"]

# bfloat16 tensors are viewed as ml_dtypes.bfloat16 arrays (when installed);
# float16 as NumPy's float16.
_DTYPES = (torch.float32, torch.float64, torch.float16) + (
    (torch.bfloat16,) if _core.BFLOAT16 is not None else ())


def _numpy(t):
    """The NumPy view of CPU tensor t (one memory): .numpy(), except that
    bfloat16, which NumPy lacks, is viewed through int16 as ml_dtypes'."""
    if t.dtype == torch.bfloat16 and _core.BFLOAT16 is not None:
        return t.view(torch.int16).numpy().view(_core.BFLOAT16)
    return t.numpy()


def _from_numpy(array):
    """The inverse of _numpy: a tensor over the array's memory."""
    if _core.BFLOAT16 is not None and array.dtype == _core.BFLOAT16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
# Whether steps read grads and check params in C (torch >= 2.10's DLPack
# exchange table; see csrc/gd_dlpack.h), else through NumPy views.
def _shared_descriptor(name):
    """The descriptor attribute `name` of every type in _PLAIN resolves to,
    or None if they differ."""
    found = [inspect.getattr_static(t, name) for t in _PLAIN]
    return found[0] if all(d is found[0] for d in found) else None


_C_READS = _core.torch_exchange_init(
    _PLAIN, torch.Tensor, torch.strided, torch._C._is_torch_function_mode_enabled,
    _shared_descriptor("grad"), _shared_descriptor("is_neg"))
_CPP_READS = None       # whether the C reads go through torch's C++ API (None: not tried)


def _cpp_reads():
    """Once per process, on the first steady-state step: load the reads of
    gdcore/_torch_reads.cpp, compiled against this torch on first use and
    cached (gdcore/_torch_build.py; GDCORE_TORCH_READS=0 turns them off).
    Without them the C reads use the DLPack exchange table."""
    global _CPP_READS
    if _CPP_READS is None:
        _CPP_READS = False
        if _C_READS:
            from gdcore import _torch_build
            _CPP_READS = _core.torch_reads_init(_torch_build.table())
    return _CPP_READS


def _is_dtensor(t):
    return _DTensor is not None and isinstance(t, _DTensor)


def _local(t):
    """The tensor whose memory gdcore reads or updates: a DTensor's local
    shard (what to_local() returns under no_grad, zero-copy), else t."""
    if _is_dtensor(t):
        return t._local_tensor
    return t


def _storage_short(t):
    """The byte size of tensor t's storage when t, a CPU strided tensor,
    extends past its end (the storage was resized smaller: torch's own ops
    would then read or write freed memory), else None."""
    if t.device.type != "cpu" or t.layout != torch.strided:
        return None                     # refused elsewhere
    try:
        nbytes = t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return None                     # no storage of its own: refused elsewhere
    if t.is_contiguous():
        extent = t.storage_offset() + t.numel()
    elif t.numel():
        extent = t.storage_offset() + 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    else:
        extent = 0
    return nbytes if extent and nbytes < extent * t.element_size() else None


def _unsupported(p):
    """Why gdcore's kernels cannot update tensor p in place, or None."""
    shard = ""
    if _is_dtensor(p):
        p, shard = p._local_tensor, "(a DTensor) whose local shard "
    if p.device.type != "cpu":
        return f"{shard}is on device {p.device}"
    if p.dtype not in _DTYPES:
        return f"{shard}has dtype {p.dtype}"
    if p.layout != torch.strided:
        return f"{shard}has layout {p.layout}"
    if not p.is_contiguous():
        return f"{shard}is not contiguous"
    if p.is_neg():
        return f"{shard}is a lazily negated view (is_neg(); resolve_neg() makes a copy)"
    if torch.is_complex(p):
        return f"{shard}is complex"
    if type(p) not in _PLAIN:
        try:                # a wrapper subclass (__torch_dispatch__) has no memory of its own
            _numpy(p.detach())
        except (RuntimeError, TypeError):
            return f"{shard}is a tensor subclass ({type(p).__name__}) without memory gdcore can update"
    return None


def _hooked(func):
    """torch.optim.Optimizer.profile_hook_step, the same hooks in the same
    order, except that the profiler range is opened only while a profiler
    runs (record_function costs tens of microseconds a step).  Marked
    `hooked`, so torch does not wrap it again."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        self = args[0]
        if torch._C._autograd._profiler_enabled():
            with torch.autograd.profiler.record_function(
                    f"Optimizer.step#{type(self).__name__}.step"):
                return _run_with_hooks(func, self, args, kwargs)
        return _run_with_hooks(func, self, args, kwargs)
    wrapper.hooked = True
    return wrapper


def _run_with_hooks(func, self, args, kwargs):
    for pre_hook in chain(_torch_optimizer._global_optimizer_pre_hooks.values(),
                          self._optimizer_step_pre_hooks.values()):
        result = pre_hook(self, args, kwargs)
        if result is not None:
            if isinstance(result, tuple) and len(result) == 2:
                args, kwargs = result
            else:
                raise RuntimeError(f"{func} must return None or a tuple of "
                                   f"(new_args, new_kwargs), but got {result}.")
    out = func(*args, **kwargs)
    self._optimizer_step_code()
    for post_hook in chain(self._optimizer_step_post_hooks.values(),
                           _torch_optimizer._global_optimizer_post_hooks.values()):
        post_hook(self, args, kwargs)
    return out


class _GdcoreBackend:
    """Mixin over a torch.optim class: step() runs gdcore's kernels."""

    _engine_class = None        # the gdcore NumPy optimizer class
    _torch_class = None         # the torch.optim class (for the fallback)
    _step_supports_amp_scaling = True       # see step()

    def _gd_setup(self, fallback, differentiable):
        if differentiable:
            raise ValueError(f"gdcore.torch.{type(self).__name__} does not support "
                             "differentiable=True (its kernels are not traced by autograd)")
        # GradScaler hands step() `grad_scale` and `found_inf` (as attributes)
        # instead of unscaling the grads first, as for torch's fused optimizers.
        self._step_supports_amp_scaling = True
        self._gd_fallback = bool(fallback)
        self._gd_reset()
        for index, p in enumerate(self._gd_flat_params()):
            self._gd_check_param(p, index)

    def _gd_reset(self):
        """Forget the engine (rebuilt from torch's state at the next step)."""
        self._gd_engine = None
        self._gd_snapshot = None
        self._gd_lock = _core.StepLock()
        self._gd_clip = 1.0

    # ------------------------------------------------------ copy, pickle
    def __getstate__(self):
        state = super().__getstate__()
        state["_gd_fallback"] = self._gd_fallback
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._gd_fallback = state.get("_gd_fallback", False)
        self._gd_reset()

    # ------------------------------------------------------------ helpers
    def _gd_flat_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def _gd_label(self, index):
        position = 0
        for group in self.param_groups:
            names = group.get("param_names")
            if index < position + len(group["params"]):
                if names:
                    return f"parameter {names[index - position]!r} (params[{index}])"
                break
            position += len(group["params"])
        return f"params[{index}]"

    def _gd_check_param(self, p, index):
        nbytes = _storage_short(_local(p))
        if nbytes is not None:          # (torch's own step would read freed memory too)
            raise ValueError(
                f"gdcore.torch.{type(self).__name__}: {self._gd_label(index)} extends "
                f"past the end of its storage ({nbytes} bytes for shape {tuple(p.shape)}: "
                "was the storage resized?)")
        reason = _unsupported(p)
        if reason and not self._gd_fallback:
            raise TypeError(
                f"gdcore.torch.{type(self).__name__}: {self._gd_label(index)} {reason} "
                f"(shape {tuple(p.shape)}); gdcore updates contiguous float32/float64/"
                "bfloat16/float16 CPU "
                "tensors and DTensors whose local shards are such tensors. Pass "
                "fallback=True to step such params with torch's own implementation.")
        return reason

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "_gd_fallback"):
            start = len(self._gd_flat_params()) - len(self.param_groups[-1]["params"])
            try:
                for k, p in enumerate(self.param_groups[-1]["params"]):
                    self._gd_check_param(p, start + k)
            except (TypeError, ValueError):
                self.param_groups.pop()             # refused: as if never added
                raise
            self._gd_engine = None

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._gd_engine = None
        # torch's load casts floating state to the param's dtype; the float32
        # state of 16-bit params in groups with state_dtype float32 is taken
        # from the saved float32 values instead (no precision lost)
        saved_state = state_dict["state"]
        for saved_group, group in zip(state_dict["param_groups"], self.param_groups):
            if group.get("state_dtype") != "float32":
                continue
            for saved_id, p in zip(saved_group["params"], group["params"]):
                saved = saved_state.get(saved_id)
                if p.dtype not in (torch.bfloat16, torch.float16) or not saved or \
                        p not in self.state:
                    continue
                for key, value in saved.items():
                    if key != "step" and torch.is_tensor(value) and \
                            value.dtype == torch.float32 and value.shape == p.shape:
                        self.state[p][key] = value.to(device=p.device, copy=True)

    # ------------------------------------------------------------- engine
    def _gd_layout(self):
        return [len(group["params"]) for group in self.param_groups]

    def _gd_build(self):
        """A gdcore engine over NumPy views of the supported params, its state
        views of torch's state tensors."""
        engine_keys = self._engine_class._spec.keys
        for index, p in enumerate(self._gd_flat_params()):
            self._gd_check_param(p, index)      # (p.data may have been replaced)
        self._gd_pairs = []             # (engine group, torch group)
        self._gd_params = []            # supported params, engine order
        self._gd_views = []
        self._gd_ptrs = []
        self._gd_static_fallback = []   # per torch group: params torch steps
        engine_groups = []
        for group in self.param_groups:
            views, fallback = [], []
            for p in group["params"]:
                if _unsupported(p):
                    fallback.append(p)
                    continue
                view = _numpy(_local(p).detach())
                views.append(view)
                self._gd_params.append(p)
                self._gd_views.append(view)
                self._gd_ptrs.append(_local(p).data_ptr())
            self._gd_static_fallback.append(fallback)
            if views:
                engine_group = {"params": views}
                engine_group.update({k: group[k] for k in engine_keys + _STORAGE_KEYS
                                     if k in group})
                engine_groups.append(engine_group)
        engine = None
        if engine_groups:
            engine = self._engine_class(engine_groups)
            pairs = iter(engine.param_groups)
            for group in self.param_groups:
                if any(not _unsupported(p) for p in group["params"]):
                    self._gd_pairs.append((next(pairs), group))
            for p, view in zip(self._gd_params, self._gd_views):
                state = self.state.get(p)
                if state:
                    engine.state[view] = self._gd_engine_state(state)
        self._gd_engine = engine
        self._gd_snapshot = None
        self._gd_layout_seen = self._gd_layout()
        self._gd_last_stepped, self._gd_counters = None, []
        # the params' memory, checked every step (p.data = ..., p.set_(...))
        self._gd_watch = _core.TorchWatch([_local(p) for p in self._gd_params], self._gd_views)
        self._gd_all = list(range(len(self._gd_params)))
        # Plain tensors only: then the fast grad read runs no user code (no
        # subclass property or method) between its checks and the kernel.
        self._gd_plain = all(type(p) in _PLAIN for p in self._gd_params)
        self._gd_slot_names = self._engine_class._spec.slot_names

    def _gd_engine_state(self, state):
        out = {}
        for name, value in state.items():
            if name == "step":
                out["step"] = int(value.item() if torch.is_tensor(value) else value)
            elif (name in self._engine_class._state_arrays or name == "compensation") and \
                    value is not None:
                if torch.is_tensor(value) and _storage_short(_local(value)) is not None:
                    raise ValueError(
                        f"gdcore.torch.{type(self).__name__}: a param's state tensor {name!r} "
                        "extends past the end of its storage (was the storage resized?)")
                if _unsupported(value) and not _is_dtensor(value):
                    value = value.contiguous()
                    state[name] = value
                local = _local(value)
                if _unsupported(local):
                    # a DTensor state whose shard gdcore cannot update in place
                    local = local.contiguous()
                    state[name] = value = _DTensor.from_local(
                        local, value.device_mesh, value.placements, run_check=False,
                        shape=value.shape, stride=value.stride())
                # (numpy() bases the array on an alias of the tensor: the
                # memory stays alive whatever is done to `value`, set_ included)
                out[name] = _numpy(local)
        return out

    # --------------------------------------------------------------- step
    @_hooked
    def step(self, closure=None):
        """One optimization step over every param with a ``.grad``.

        Under ``torch.amp.GradScaler`` (which sets ``grad_scale`` and
        ``found_inf`` on the optimizer, as for torch's fused optimizers): no
        step at all when ``found_inf`` is nonzero (state and step counters
        unchanged); otherwise the grads are divided by ``grad_scale`` inside
        the update, in the same pass, and are not written (they still hold
        the scaled values afterwards)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clip, self._gd_clip = self._gd_clip, 1.0     # from clip_grad_norm_, this step only
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and _amp_scalar(found_inf, "found_inf") != 0:
            return loss
        multiplier = clip
        grad_scale = getattr(self, "grad_scale", None)
        if grad_scale is not None:
            scale = _amp_scalar(grad_scale, "grad_scale")
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"gdcore.torch.{type(self).__name__}: grad_scale must be a "
                                 f"positive finite number, got {scale}")
            multiplier = clip / scale
        with torch.no_grad():
            self._gd_step(multiplier)
        return loss

    def clip_grad_norm_(self, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
        """Clip the grads of this optimizer's params by their global norm, as
        ``torch.nn.utils.clip_grad_norm_(params, ...)`` does, but folded into
        the next ``step()``: the norm is computed now (one pass over the
        grads) and returned; the grads are not modified, and the next step
        multiplies them by ``min(1, max_norm / (norm + 1e-6))`` inside its
        kernel.  Clip plus step read each grad twice instead of three times
        (norm, scale, step)."""
        grads = [p.grad for p in self._gd_flat_params() if p.grad is not None]
        total_norm = _total_norm(grads, norm_type, error_if_nonfinite, foreach)
        coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        self._gd_clip = float(coef.to(torch.float32 if total_norm.dtype != torch.float64
                                      else torch.float64))
        return total_norm

    def _gd_step(self, multiplier=1.0):
        """multiplier: every grad element is multiplied by it in the kernel
        (AMP's 1 / scale, a folded clip)."""
        self._gd_lock.call(self, self._gd_step_locked, multiplier)

    def _gd_steady(self):
        """Whether the step takes run_plan_torch (the C path): plain params,
        every one stepped at the last step."""
        return self._gd_plain and self._gd_last_stepped is self._gd_all

    def _gd_current(self):
        """Whether the engine is still in step with torch's params, groups
        and state (else it is rebuilt from them).  For plain params, the
        watch on their memory is checked by the step itself."""
        snapshot = self._gd_snapshot
        if (self._gd_engine is None or snapshot is None
                or self._gd_layout_seen != self._gd_layout()):
            return False
        if self._gd_steady():
            return True     # run_plan_torch compares torch's state with the snapshot first
        if not snapshot.same(self.state):
            return False
        if self._gd_plain:
            return True
        params = [_local(p) for p in self._gd_params]
        # p.data = ... (new memory, or a new view of the same memory), and
        # a DTensor given another local tensor
        return [p.data_ptr() for p in params] == self._gd_ptrs and \
            all([p.is_contiguous() for p in params]) and self._gd_watch.check()

    def _gd_step_locked(self, multiplier, retry=True):
        if not self._gd_current():
            self._gd_build()
        dynamic_fallback = []
        engine = self._gd_engine
        if engine is not None:
            for engine_group, group in self._gd_pairs:
                for key in engine_group:
                    if key != "params" and key in group:   # (not gdcore's storage keys)
                        engine_group[key] = group[key]
            status = 0
            if self._gd_steady():
                # the steady state: grads read in C, no Python loop over params
                _cpp_reads()
                status = _core.run_plan_torch(engine, self._gd_params, self._gd_snapshot,
                                              self.state, multiplier)
            if status == 2 or (status == 0 and self._gd_plain and self._gd_watch is not None
                               and not self._gd_watch.check()):
                # a param was given other memory (p.data = ..., p.set_()):
                # rebuild the engine from torch's tensors
                self._gd_engine = None
                if not retry:
                    raise RuntimeError(f"gdcore.torch.{type(self).__name__}: a param's memory "
                                       "changed during the step (code the step ran, such as a "
                                       "hyperparameter's __float__, replaced p.data)")
                return self._gd_step_locked(multiplier, False)
            if status != 1:
                grads, stepped = self._gd_collect(dynamic_fallback)
                grads = engine._convert(grads)
                counters = self._gd_counters if stepped == self._gd_last_stepped else None
                try:
                    if counters is not None and _core.run_plan(engine, grads, counters,
                                                               multiplier):
                        self._gd_snapshot.advance()     # the plan advanced torch's steps
                    else:
                        # The general path: the engine's step and torch's new
                        # state and step counters, with Ctrl-C held back until
                        # both are done.
                        caught = _hold_interrupts()
                        try:
                            # dtype/shape: the engine checks
                            engine._general_step(grads, multiplier)
                            self._gd_publish(stepped)
                        finally:
                            _release_interrupts(caught)
                        engine._build_plan()
                except (TypeError, ValueError):
                    # Refused before anything changed.  A param whose data was
                    # replaced by another view of the same memory (p.data =
                    # p.data.view(...)) shows only here: rebuild and try once more.
                    if not retry:
                        raise
                    self._gd_engine = None
                    return self._gd_step_locked(multiplier, False)
        self._gd_run_fallback(dynamic_fallback, multiplier)
        if self._gd_snapshot is None and self._gd_engine is not None:
            self._gd_snapshot = _core.StateSnapshot.capture(self.state, self._gd_counters)

    def _gd_collect(self, dynamic_fallback):
        """Grads (NumPy views, None to skip) and the indices stepped, one
        param at a time: missing grads, grads that require grad, sparse or
        non-CPU grads (an error, or torch's step with fallback=True)."""
        grads, stepped = [], []
        for index, p in enumerate(self._gd_params):
            g = p.grad
            if g is None:
                grads.append(None)
                continue
            if _is_dtensor(p) or _is_dtensor(g):
                g = self._gd_local_grad(p, g, index)
            nbytes = _storage_short(g)
            if nbytes is not None:
                flat = next(k for k, q in enumerate(self._gd_flat_params()) if q is p)
                raise ValueError(
                    f"gdcore.torch.{type(self).__name__}: the grad of {self._gd_label(flat)} "
                    f"extends past the end of its storage ({nbytes} bytes: was the storage "
                    "resized?)")
            try:                                    # CPU, strided: a zero-copy view
                view = _numpy(g)
            except (TypeError, RuntimeError):
                # a grad that requires grad, or a negative/conjugate view
                # (read through a resolved copy)
                view = None if g.is_sparse or g.device.type != "cpu" or \
                    g.layout != torch.strided else _numpy(g.detach().resolve_neg().resolve_conj())
            if view is None:
                if not self._gd_fallback:
                    what = ("a sparse grad" if g.is_sparse else
                            f"a grad of dtype {g.dtype} on {g.device}")
                    flat = next(k for k, q in enumerate(self._gd_flat_params()) if q is p)
                    raise RuntimeError(
                        f"gdcore.torch.{type(self).__name__}: "
                        f"{self._gd_label(flat)} has {what}; "
                        "pass fallback=True to step it with torch's own implementation")
                dynamic_fallback.append(p)
                grads.append(None)
                continue
            grads.append(view)
            stepped.append(index)
        return grads, stepped

    def _gd_local_grad(self, p, g, index):
        """The local shard of DTensor grad g of DTensor param p, refusing a
        grad laid out otherwise than its param."""
        if _is_dtensor(p) and _is_dtensor(g) and g.device_mesh == p.device_mesh and \
                tuple(g.placements) == tuple(p.placements) and g.shape == p.shape:
            return g._local_tensor
        flat = next(k for k, q in enumerate(self._gd_flat_params()) if q is p)
        have = (f"placements {tuple(g.placements)}" if _is_dtensor(g) else
                f"a {type(g).__name__} grad")
        want = f"placements {tuple(p.placements)}" if _is_dtensor(p) else "a plain tensor grad"
        raise RuntimeError(
            f"gdcore.torch.{type(self).__name__}: {self._gd_label(flat)} has a grad with "
            f"{have} where its param needs {want}; gdcore steps each rank's local shard "
            "and needs the grad sharded as the param")

    def _gd_publish(self, stepped):
        """After a general step: mirror the engine's new state into torch's
        (a param without state keeps none, as in torch), advance `step`, and
        remember the counters for the plan's steps."""
        counters = []
        for index in stepped:
            p, view = self._gd_params[index], self._gd_views[index]
            engine_state = self._gd_engine.state[view]
            state = self.state.get(p)
            if state is None:
                if not engine_state:
                    continue                        # SGD without momentum keeps nothing
                state = self.state[p]
            if len(state) < len(engine_state) or "step" not in state and "step" in engine_state:
                for name, value in engine_state.items():
                    if name == "step":
                        if "step" not in state:
                            state["step"] = torch.tensor(float(value - 1),
                                                         dtype=_get_scalar_dtype())
                    elif name not in state or state[name] is None:
                        state[name] = _state_tensor(p, value, name in self._gd_slot_names
                                                    or name == "compensation")
            step = state.get("step")
            if step is not None:
                if not (step.device.type == "cpu" and step.dtype in (torch.float32, torch.float64)
                        and step.numel() == 1
                        and step.layout == torch.strided and not step.requires_grad):
                    step = state["step"] = torch.tensor(float(step.item()),
                                                        dtype=_get_scalar_dtype())
                counters.append(step.numpy())
        _core.increment_counters(counters)
        if stepped == self._gd_all:
            stepped = self._gd_all
        self._gd_last_stepped, self._gd_counters = stepped, counters
        self._gd_snapshot = None                    # captured after the step

    def _gd_run_fallback(self, dynamic, multiplier):
        if not dynamic and not any(self._gd_static_fallback):
            return
        groups = []
        dynamic = set(map(id, dynamic))
        for group, static in zip(self.param_groups, self._gd_static_fallback):
            params = list(static) + [p for p in group["params"] if id(p) in dynamic]
            if params:
                groups.append(dict(group, params=params))
        if not groups:
            return
        if multiplier != 1.0:               # torch's own step reads unscaled grads
            grads = [p.grad for group in groups for p in group["params"] if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, multiplier)
        fallback = self._torch_class.__new__(self._torch_class)
        torch.optim.Optimizer.__init__(fallback, groups, self.defaults)
        fallback.state = self.state
        self._torch_class.step(fallback)
        if dynamic:
            self._gd_engine = None       # torch advanced some steps: re-read state
        self._gd_snapshot = None


def _total_norm(grads, norm_type, error_if_nonfinite, foreach):
    """torch.nn.utils.get_total_norm, computed by one gdcore pass (in double)
    for norm types 2, 1 and inf over CPU float32/float64 grads of one dtype;
    torch's own implementation otherwise (DTensor grads, other norm types)."""
    norm_type = float(norm_type)
    kind = {2.0: 2, 1.0: 1, math.inf: 0}.get(norm_type)
    value = None
    if kind == 0 and any(g.numel() == 0 for g in grads):
        kind = None                     # torch refuses the inf norm of an empty grad
    if kind is not None and grads:
        value = _core.tensor_grad_norm(grads, kind, torch.float32, torch.float64,
                                       torch.strided, torch.Tensor)
    if value is None:
        return torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    if error_if_nonfinite and not math.isfinite(value):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
    return torch.tensor(value, dtype=grads[0].dtype)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,
                    foreach=None):
    """``torch.nn.utils.clip_grad_norm_``, same signature and results, with the
    norm of CPU float32/float64 grads (norm types 2, 1, inf) computed over
    all grads in one pass of a gdcore kernel (in double); the grads are then
    scaled in place, as torch does.  To skip that scaling pass, use the
    optimizer's ``clip_grad_norm_`` method, which folds the clip into the
    next step."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    else:
        parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total_norm = _total_norm(grads, norm_type, error_if_nonfinite, foreach)
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)
    return total_norm


def _amp_scalar(value, name):
    """GradScaler's `grad_scale` / `found_inf` (a one-element tensor, or a
    number) as a float."""
    try:
        if torch.is_tensor(value):
            if value.numel() != 1:
                raise ValueError
            return float(value.item())
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a one-element tensor or a number, not "
                        f"{type(value).__name__}") from None


def _state_tensor(p, array, per_element):
    """A torch state tensor over the engine's state array (one memory): for
    per-element state of a DTensor param, a DTensor laid out as the param,
    as torch.optim makes it (scalar state, such as ASGD's eta, stays a plain
    tensor, as in torch)."""
    local = _from_numpy(array)
    if per_element and _is_dtensor(p):
        return _DTensor.from_local(local, p.device_mesh, p.placements, run_check=False,
                                   shape=p.shape, stride=p.stride())
    return local


def _hold_interrupts():
    """While the general path commits, a SIGINT is recorded instead of
    raising KeyboardInterrupt half-way (main thread, default handler only);
    _release_interrupts raises it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return None
        caught = []
        signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    except (ValueError, OSError):
        return None
    return caught


def _release_interrupts(caught):
    if caught is None:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


_STORAGE_KEYS = ("state_dtype", "rounding", "seed")


def _make(name, torch_class, engine_class, doc):
    def __init__(self, params, *args, fallback=False, state_dtype=None, rounding="nearest",
                 seed=0, **kwargs):
        storage = {"state_dtype": _engines._state_dtype_name(state_dtype),
                   "rounding": rounding, "seed": seed}
        _engines._check_storage(storage)
        torch_class.__init__(self, params, *args, **kwargs)
        # gdcore's storage options (16-bit params) that differ from the
        # defaults join torch's defaults, so every group, later ones
        # included, and the state dict carry them (with the defaults, the
        # groups and state dicts are exactly torch's)
        storage = {k: v for k, v in storage.items() if v != _engines._STORAGE_DEFAULTS[k]}
        self.defaults.update(storage)
        for group in self.param_groups:
            for key, value in storage.items():
                group.setdefault(key, value)
        self._gd_setup(fallback, self.defaults.get("differentiable", False))

    cls = type(name, (_GdcoreBackend, torch_class), {
        "__init__": __init__, "_engine_class": engine_class, "_torch_class": torch_class,
        "__doc__": doc, "__module__": __name__})
    return cls


def _doc(name):
    return (f"torch.optim.{name} whose step() runs gdcore's {name} kernel on CPU "
            "float32/float64/bfloat16/float16 contiguous tensors, zero-copy.\n\n"
            f"Same constructor as torch.optim.{name}, plus keyword-only ``fallback`` "
            "(default False): step unsupported params (not CPU, not contiguous, not "
            "floating, sparse grads) with torch's own implementation instead of "
            "raising; and, for 16-bit params, ``state_dtype`` (None: the param's, as "
            "torch; or torch.float32), ``rounding`` ('nearest' as torch, 'stochastic', "
            "'kahan') and ``seed`` (see gdcore's README, \"16-bit params\").  See "
            "gdcore.torch for what is shared with torch.")


for _decl in FAMILY:
    globals()[_decl.name] = _make(_decl.name, getattr(torch.optim, _decl.name),
                                  getattr(_engines, _decl.name), _doc(_decl.name))
del _decl
