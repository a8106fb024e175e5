"""Stateful optimizers with torch.optim's names, defaults, validation, param
groups, per-param state and state_dict, over NumPy arrays.

Design note.  A class holds hyperparameters (``param_groups``) and state
(``state``, keyed by the param array itself) and nothing else.  The general
step builds, per param group, one batch kernel call in the Cython layer
(``gdcore._core.group_batch``, the same checks and kernels as the functional
API, so the two agree bit for bit).  It first checks every group's batch
(deferred), and only when all are valid commits new state and step counters
and runs the kernels: a bad grad anywhere leaves every param and every piece
of state as it was.  Once every param has state, a ``_core.Plan`` caches the
pointers of params and state, and later steps run in Cython with no Python
loop over params (the per-call overhead of a small step is well under a
microsecond); the plan re-checks grads and hyperparameters on every step
and hands back to the general path whenever anything it relies on changed.
Hyperparameters are checked at construction and at every step, so a
schedule that writes an invalid ``group["lr"]`` fails loudly.

Nothing here is written per optimizer: each class is built from its
declaration in gdcore/family.py (signature, defaults, checks, state and
scalar state, docstring) by `_make_class`.
"""
from collections.abc import Mapping, MutableMapping
import math

import numpy as np

from gdcore import _core
from gdcore.family import FAMILY, STORAGE_OPTIONS, class_parameters

__all__ = ["Optimizer"] + [decl.name for decl in FAMILY]


# State buffers of at least this many bytes are also placed at a chosen
# offset within a 4 KiB page (see _aligned_full).
_PAGE = 4096
_STAGGER = 1024


def _aligned_empty(nbytes, page_offset=None):
    """An uninitialised uint8 buffer of nbytes starting on a 64-byte boundary
    or, given page_offset (a multiple of 64), at that offset within a 4 KiB
    page."""
    if page_offset is None:
        raw = np.empty(nbytes + 64, dtype=np.uint8)
        offset = -raw.ctypes.data % 64
    else:
        raw = np.empty(nbytes + _PAGE, dtype=np.uint8)
        offset = (page_offset - raw.ctypes.data) % _PAGE
    return raw[offset:offset + nbytes]


def _aligned_full(like, value, slot=0, dtype=None):
    """A C-contiguous array shaped and typed like `like`, filled with value,
    starting on a 64-byte boundary (a cache line; a whole AVX-512 vector).

    Large buffers also start `(slot + 1) * 1 KiB` past `like`'s offset within
    a 4 KiB page.  A step streams through the param and its state buffers in
    lockstep; when two of them share their address bits below 4 KiB, the CPU
    cannot tell a load from the next vector of one buffer apart from a
    pending store to another ("4K aliasing") and stalls the load.  Measured
    here: float32 Adam over 1M elements ran 0.35 ns per element with the
    buffers 64 bytes apart in the page and 0.23-0.25 with them 1 KiB apart."""
    dtype = like.dtype if dtype is None else np.dtype(dtype)
    nbytes = like.size * dtype.itemsize
    page_offset = None
    if nbytes >= _PAGE:
        page_offset = (like.ctypes.data + (slot + 1) * _STAGGER) % _PAGE // 64 * 64
    out = _aligned_empty(nbytes, page_offset).view(dtype).reshape(like.shape)
    out.fill(value)
    return out


def _aligned_copy(value, like, name, slot=0, dtype=None):
    """A 64-byte aligned copy of state array `value`, shaped like param `like`.
    Floating state is cast to the param's dtype (or `dtype`: the state dtype
    of a 16-bit param), as torch does on load."""
    try:
        value = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} is not an array: {exc}") from None
    if value.shape != like.shape:
        raise ValueError(f"{name} has shape {value.shape} but its param has shape "
                         f"{like.shape}")
    if value.dtype.kind != "f" and value.dtype != _core.BFLOAT16:
        raise TypeError(f"{name} has dtype {value.dtype}; state buffers are floating point")
    out = _aligned_full(like, 0, slot, dtype)
    out[...] = value
    return out


class ParamState(MutableMapping):
    """Per-param state: a mapping from param array (by identity) to a dict of
    torch-named entries, e.g. ``opt.state[w]["exp_avg"]``."""

    def __init__(self):
        self._by_id = {}                    # id(param) -> (param, state dict)

    def __getitem__(self, param):
        try:
            return self._by_id[id(param)][1]
        except KeyError:
            raise KeyError("no state for this param (it has not been stepped yet, or "
                           "belongs to another optimizer)") from None

    def __setitem__(self, param, value):
        self._by_id[id(param)] = (param, value)

    def __delitem__(self, param):
        del self._by_id[id(param)]

    def __contains__(self, param):
        return id(param) in self._by_id

    def __iter__(self):
        return (p for p, _ in self._by_id.values())

    def __len__(self):
        return len(self._by_id)

    def get(self, param, default=None):
        entry = self._by_id.get(id(param))
        return default if entry is None else entry[1]

    def __repr__(self):
        return f"ParamState({len(self)} params)"

    def __reduce__(self):
        # by content: copies and pickles re-key the state by the copied params
        return _param_state, (list(self._by_id.values()),)


_core.PARAM_STATE_TYPE = ParamState


def _param_state(entries):
    state = ParamState()
    for param, value in entries:
        state[param] = value
    return state


class Optimizer:
    """Base of gdcore's optimizer classes (the torch.optim.Optimizer shape).

    Subclasses set `_spec` (the compiled declaration, gdcore._core.SPECS),
    which knows the checks, which state buffers a group's options need, and
    the scalar state.
    """

    _spec = None
    _kind = None

    #: per-param state entries that hold arrays: state buffers in the
    #: kernel's order, then the scalar state (0-d arrays)
    _state_arrays = ()
    #: whether per-param state counts steps (torch's state["step"])
    _counts_steps = True

    def __init__(self, params, defaults):
        _core.check_group(self._spec, defaults)         # hyperparameters first, as torch
        defaults = dict(defaults)
        if "state_dtype" in defaults:
            defaults["state_dtype"] = _state_dtype_name(defaults["state_dtype"])
        _check_storage(defaults)
        # gdcore's storage options join the defaults (and so every group and
        # the state dict) only when they differ from the default: then the
        # groups and state dicts are exactly torch's
        for name, default in _STORAGE_DEFAULTS.items():
            if name in defaults and defaults[name] == default and \
                    type(defaults[name]) is type(default):
                del defaults[name]
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = ParamState()
        self._plan = None
        self._lock = _core.StepLock()
        self.last_step_created_state = False
        if isinstance(params, (np.ndarray, dict)):
            raise TypeError("params must be an iterable of numpy arrays or of param-group "
                            f"dicts, not a single {type(params).__name__}")
        try:
            param_groups = list(params)
        except TypeError:
            raise TypeError("params must be an iterable of numpy arrays or of param-group "
                            f"dicts, not {type(params).__name__}") from None
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    # ------------------------------------------------------------- groups
    def _all_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def add_param_group(self, param_group):
        """Add a group ({"params": [...], hyperparameter overrides}), as torch."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param group must be a dict, not {type(param_group).__name__}")
        group = dict(param_group)
        if "params" not in group:
            raise ValueError("param group must have a 'params' entry")
        params = group["params"]
        if isinstance(params, np.ndarray):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer params need to be organized in ordered collections, "
                            "but the ordering of a set changes between runs; use a list")
        params = list(params)
        if len(params) == 0:
            raise ValueError("optimizer got an empty parameter list")
        existing = self._all_params()
        for k, p in enumerate(params):
            _core.check_param(p, f"params[{len(existing) + k}]")
        for name, default in self.defaults.items():
            group.setdefault(name, default)
        unknown = set(group) - set(self.defaults) - {"params"} - set(_STORAGE_DEFAULTS)
        if unknown:
            raise TypeError(f"param group has unknown hyperparameters {sorted(unknown)}; "
                            f"{type(self).__name__} takes {sorted(self.defaults)}")
        self._check(group)
        _check_disjoint(existing + params)
        group["params"] = params
        self.param_groups.append(group)
        self._plan = None

    def _check(self, group):
        _core.check_group(self._spec, group)
        _check_storage(group)

    # --------------------------------------------------------------- step
    def step(self, grads):
        """One optimization step.  ``grads``: one per param, in the order of
        the params over all groups; each an array-like of exactly its param's
        shape and dtype, or None to leave that param (and its state) alone.

        Steps of one optimizer are serialised: a step from another thread
        waits for the running one; a step started from within a step (a
        grad's ``__array__``, say) raises RuntimeError."""
        _core.class_step(self, grads)      # (lock, grads, plan or general step)

    @staticmethod
    def _convert(grads):
        """The grads as a new list of ndarrays and None: the only user code
        a step runs, before anything is checked."""
        if type(grads) is not list:
            try:
                grads = list(grads)
            except TypeError:
                raise TypeError(f"grads must be a sequence with one grad per param, not "
                                f"{type(grads).__name__}") from None
        return _core.as_grads(grads)

    def _general_step(self, grads, grad_multiplier=1.0):
        """The step that checks everything, creates missing state and then
        caches a plan.  grad_multiplier (gdcore.torch: AMP's 1 / scale): every
        grad element is multiplied by it inside the kernel."""
        _core.sync_plan_steps(self)     # (steps gdcore.torch's C path left in torch's counters)
        self._plan = None
        self.last_step_created_state = True     # (or may have: the general path)
        if not isinstance(self.state, ParamState):
            raise TypeError(f"{type(self).__name__}.state must be a gdcore.optim.ParamState "
                            f"(it was replaced by a {type(self.state).__name__})")
        total = 0
        for k, group in enumerate(self.param_groups):
            if type(group) is not dict or type(group.get("params")) is not list:
                raise TypeError(f"param_groups[{k}] must be a dict whose 'params' is a list")
            total += len(group["params"])
        if len(grads) != total:
            raise ValueError(f"step() got {len(grads)} grads for {total} params "
                             "(one per param, None to skip one)")
        spec = self._spec
        pending = []                    # (batch, [(param, state, is_new, added, step)])
        position = 0
        for group in self.param_groups:
            needed = _core.check_group(spec, group)            # also checks the group
            params, group_grads, views, steps, index, touched = [], [], [], [], [], []
            for p in group["params"]:
                g = grads[position]
                if g is not None:
                    _core.check_param(p, f"params[{position}]")
                    state = self.state.get(p)
                    is_new = state is None
                    if is_new:
                        state = {"step": 0} if self._counts_steps else {}
                    elif type(state) is not dict:
                        raise TypeError(f"state[{position}] (the state of params[{position}]) "
                                        f"must be a dict, not {type(state).__name__}")
                    state_dtype = _state_dtype_of(p, group)
                    added = {name: _aligned_full(p, self._initial_value(name, group),
                                                 spec.slot_names.index(name), state_dtype)
                             for name in needed if name not in state}
                    new_buffers = bool(added)
                    if group.get("rounding") == "kahan" and "compensation" not in state \
                            and p.dtype.itemsize == 2:
                        added["compensation"] = _aligned_full(p, 0.0, 3)
                    for scalar in spec.decl.scalars:
                        if scalar.name not in state:
                            added[scalar.name] = np.array(
                                float(_initial(scalar.init, group)), dtype=np.float32)
                    if self._counts_steps:
                        step = _state_step(state, position) + 1
                    elif group.get("rounding") == "stochastic":
                        # SGD keeps a step count for the random bits (step
                        # 1 still marks a new momentum buffer)
                        counted = _state_step(state, position) + 1 if "step" in state else 1
                        added["step"] = counted
                        step = 1 if new_buffers else max(counted, 2) if "momentum_buffer" \
                            in state else counted
                    else:
                        step = 1 if new_buffers else 2
                    params.append(p)
                    group_grads.append(g)
                    views.append({**state, **added} if added else state)
                    steps.append(step)
                    index.append(position)
                    touched.append((p, state, is_new, added, step))
                position += 1
            if params:
                batch = _core.group_batch(spec, group, params, group_grads, views, steps,
                                          index)
                pending.append((batch, touched))
        # Everything checked: commit state and run, as one (see commit_and_run).
        _core.commit_and_run(spec, pending, self.state._by_id, self._counts_steps,
                             grad_multiplier)

    def _build_plan(self):
        """After a general step: cache a plan once every param has state."""
        if not self._counts_steps and any(group.get("rounding") == "stochastic"
                                          for group in self.param_groups):
            self._plan = None           # SGD counts stochastic steps in the general path
            return
        if len(self.state) == sum(len(group["params"]) for group in self.param_groups):
            try:
                self._plan = _core.Plan.build(self._spec, self.param_groups, self.state._by_id)
            except (TypeError, ValueError):
                # state the user replaced by something a plan cannot hold: keep
                # to the general path, which checks (and reports) it every step
                self._plan = None

    # ------------------------------------------------------ copy, pickle
    def __getstate__(self):
        _core.sync_plan_steps(self)
        state = dict(self.__dict__)
        del state["_plan"], state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._plan = None
        self._lock = _core.StepLock()

    def _initial_value(self, name, group):
        """What a new state buffer starts as (new buffers are added to the
        state only once the whole step is known to be valid)."""
        return float(_initial(self._spec.decl.state[self._spec.slot_names.index(name)].init,
                              group))

    # --------------------------------------------------------- state dict
    def state_dict(self):
        """A snapshot, as torch's: {"state": {i: {...}}, "param_groups": [...]}
        with params numbered over all groups in order.  Arrays are copies and
        every value is a NumPy array or a plain Python scalar."""
        numbering = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = []
            for p in group["params"]:
                numbering[id(p)] = len(numbering)
                packed["params"].append(numbering[id(p)])
            groups.append(packed)
        state = {}
        for p in self._all_params():
            entry = self.state.get(p)
            if entry is not None:
                state[numbering[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                           for k, v in entry.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict() of an optimizer of the same type over params of
        the same shapes; hyperparameters come from it, as in torch.  Checks
        everything a later step would check before changing anything."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, not {type(state_dict).__name__}")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict has no {key!r}")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)):
            raise TypeError("state_dict['param_groups'] must be a list, not "
                            f"{type(saved_groups).__name__}")
        if not isinstance(saved_state, Mapping):
            raise TypeError("state_dict['state'] must be a dict, not "
                            f"{type(saved_state).__name__}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        numbering = {}
        group_of = {}
        new_groups = []
        for k, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            label = f"state_dict['param_groups'][{k}]"
            if not isinstance(saved, Mapping) or "params" not in saved:
                raise ValueError(f"{label} must be a dict with 'params'")
            if not isinstance(saved["params"], (list, tuple)):
                raise TypeError(f"{label}['params'] must be a list of param numbers")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
            for saved_index, p in zip(saved["params"], group["params"]):
                try:
                    hash(saved_index)
                except TypeError:
                    raise TypeError(f"{label}['params'] holds {saved_index!r}, not a param "
                                    "number") from None
                if saved_index in numbering:
                    raise ValueError(f"{label}['params'] numbers param {saved_index!r} twice")
                numbering[saved_index] = p
            new_group = {k: v for k, v in saved.items() if k != "params"}
            for name in _STORAGE_DEFAULTS:
                if name in self.defaults:               # (e.g. a torch state dict)
                    new_group.setdefault(name, self.defaults[name])
            for saved_index in saved["params"]:
                group_of[saved_index] = new_group
            missing = [name for name in self.defaults if name not in new_group]
            if missing:
                raise ValueError(f"{label} has no {missing[0]!r}")
            new_group["params"] = group["params"]
            self._check(new_group)
            new_groups.append(new_group)
        new_state = ParamState()
        for key, entry in saved_state.items():
            if key not in numbering:
                raise ValueError(f"state_dict has state for param {key}, which no group has")
            if not isinstance(entry, Mapping):
                raise TypeError(f"state[{key}] must be a dict, not {type(entry).__name__}")
            p = numbering[key]
            loaded = {}
            for name, value in entry.items():
                label = f"state[{key}][{name!r}]"
                if name in self._spec.slot_names:
                    if value is None:
                        if self._counts_steps:
                            raise TypeError(f"{label} is None; a state buffer is an array")
                        continue        # SGD: none yet (torch starts it from the grad)
                    loaded[name] = _aligned_copy(value, p, label,
                                                 self._spec.slot_names.index(name),
                                                 _state_dtype_of(p, group_of[key]))
                elif name == "compensation" and p.dtype.itemsize == 2:
                    loaded[name] = _aligned_copy(value, p, label, 3)
                elif name in self._spec.scalar_names:
                    loaded[name] = _scalar_copy(value, label)
                elif name == "step":
                    loaded[name] = _loaded_step(value, label)
                else:
                    raise ValueError(f"state[{key}] has unknown entry {name!r}; "
                                     f"{type(self).__name__} keeps {self._state_arrays}")
            if self._counts_steps and "step" not in loaded:
                raise ValueError(f"state[{key}] has no 'step' (a step would need it)")
            new_state[p] = loaded
        self.param_groups = new_groups
        self.state = new_state
        self._plan = None

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


_STORAGE_DEFAULTS = {"state_dtype": None, "rounding": "nearest", "seed": 0}


def _state_dtype_name(value):
    """state_dtype as kept in a group: None (the param's dtype) or
    "float32" (for 16-bit params)."""
    if value is None:
        return None
    try:
        name = np.dtype(value).name if not isinstance(value, str) else value
    except TypeError:
        name = str(value).replace("torch.", "")
    if name != "float32":
        raise ValueError(f"state_dtype must be None (the param's dtype) or float32, "
                         f"not {value!r}")
    return "float32"


def _check_storage(group):
    """The storage options of a group: state_dtype, rounding, seed."""
    if group.get("state_dtype") is not None and group["state_dtype"] != "float32":
        _state_dtype_name(group["state_dtype"])         # raises, naming it
    _core.rounding_code(group.get("rounding", "nearest"))
    _core.seed_value(group.get("seed", 0))


def _state_dtype_of(p, group):
    """The dtype of a param's state: float32 for a 16-bit param of a group
    with state_dtype float32, else the param's."""
    if group.get("state_dtype") == "float32" and p.dtype.itemsize == 2:
        return np.float32
    return p.dtype


def _check_disjoint(params):
    """No two params may be the same buffer or overlap in memory."""
    spans = []
    for i, p in enumerate(params):
        if p.nbytes:
            start = p.__array_interface__["data"][0]
            spans.append((start, start + p.nbytes, i))
    spans.sort()
    for (_, end_a, a), (start_b, _, b) in zip(spans, spans[1:]):
        if start_b < end_a:
            what = "is the same array as" if params[a] is params[b] else "overlaps in memory with"
            first, second = sorted((a, b))
            raise ValueError(f"params[{second}] {what} params[{first}]; "
                             "each param must be a distinct buffer")


def _loaded_step(value, label):
    """A step counter from a state dict (int, float, 0-d array or tensor) as
    an int >= 0."""
    step = _loaded_number(value, label, "a whole number").item()
    if not (0 <= step < 2**63 - 1 and float(step).is_integer()):
        raise ValueError(f"{label} must be a whole number >= 0 (below 2**63 - 1), got {step!r}")
    return int(step)


def _state_step(state, position):
    """A param's step counter (state["step"]): an int >= 0."""
    try:
        step = state["step"]
    except KeyError:
        raise ValueError(f"state[{position}] has no 'step' (the state of params[{position}] "
                         "was edited)") from None
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"state[{position}]['step'] must be an int, not "
                        f"{type(step).__name__}")
    if not 0 <= step < 2**63 - 1:
        raise ValueError(f"state[{position}]['step'] must be an int >= 0 below 2**63 - 1, "
                         f"got {step}")
    return int(step)


def _initial(init, group):
    """A declared initial value: a number, or the name of a hyperparameter."""
    return group[init] if isinstance(init, str) else init


def _scalar_copy(value, name):
    """Scalar state from a state dict (number, 0-d array or tensor) as a 0-d
    array: float64 stays float64, anything else becomes float32 (torch's
    default scalar dtype)."""
    array = _loaded_number(value, name, "a real number")
    dtype = np.float64 if array.dtype == np.float64 else np.float32
    return np.array(array, dtype=dtype)


def _loaded_number(value, label, what):
    """A number from a state dict (Python number, 0-d array or tensor) as a
    0-d array of a real dtype."""
    try:
        array = np.asarray(value)
    except Exception:
        raise TypeError(f"{label} must be {what}") from None
    if array.ndim != 0 or array.dtype.kind not in "fiu":
        raise TypeError(f"{label} must be {what}, got {value!r}")
    return array


def _class_docstring(decl):
    lines = [decl.summary, "", ".. math::"]
    lines += ["    " + line for line in decl.math.strip("\n").splitlines()]
    if decl.notes:
        lines += ["", decl.notes]
    lines += ["", "Hyperparameters (torch.optim's names and defaults):"]
    for h in decl.hyper:
        if not h.fixed:
            lines.append(f"    {h.name}={h.default!r}: {h.doc}.")
    state = (["step"] if decl.counts_steps else []) + [
        s.name + (f" (when {s.needs})" if s.needs else "") for s in decl.state] + [
        f"{s.name} (0-d array)" for s in decl.scalars]
    lines += ["", "State per param: " + ", ".join(state) + "."]
    lines += ["", "16-bit params (bfloat16 from ml_dtypes, float16) are computed in float32; "
              "gdcore's additions:",
              "    state_dtype=None: the state's dtype, the param's (torch's layout) or "
              "float32 (for 16-bit params; others keep their own).",
              "    rounding='nearest': how a 16-bit param is stored after its update: "
              "'nearest' (as torch), 'stochastic' (unbiased; random bits from (seed, the "
              "param's position, step, element index)) or 'kahan' (state['compensation'] "
              "keeps what rounding dropped).",
              "    seed=0: the stochastic rounding seed (kept in each param group, so in "
              "the state dict)."]
    return "\n".join(lines)


def _make_class(decl):
    """The NumPy optimizer class of a declaration, with torch's signature
    (minus torch's implementation selectors foreach, fused, capturable,
    differentiable)."""
    arguments = [h for h in decl.hyper if not h.fixed]
    signature = ", ".join(class_parameters(decl))
    values = ", ".join([f"{h.name}={h.name}" for h in arguments]
                       + [f"{h.name}={h.default!r}" for h in decl.hyper if h.fixed]
                       + [f"{name}={name}" for name, _, _ in STORAGE_OPTIONS])
    source = (f"def __init__({signature}):\n"
              f"    Optimizer.__init__(self, params, dict({values}))\n")
    scope = {"Optimizer": Optimizer}
    exec(compile(source, f"<gdcore.optim.{decl.name}>", "exec"), scope)
    init = scope["__init__"]
    init.__qualname__ = f"{decl.name}.__init__"
    spec = _core.SPECS[decl.name]
    return type(decl.name, (Optimizer,), {
        "__init__": init, "__doc__": _class_docstring(decl), "__module__": __name__,
        "_spec": spec, "_kind": decl.name, "_counts_steps": decl.counts_steps,
        "_state_arrays": spec.slot_names + spec.scalar_names})


for _decl in FAMILY:
    globals()[_decl.name] = _make_class(_decl)
del _decl
