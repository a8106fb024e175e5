"""torch's own optimizer test configurations (torch.testing._internal.
common_optimizers.optim_db) run against gdcore, for the eleven optimizers of
gdcore/family.py.

For every OptimizerInput that optim_db gives for the CPU, in float32,
float64, bfloat16 and float16 (optim_db's inputs functions take the dtype:
for float16 they raise Adam's and AdamW's eps to 0.1), three optimizers
train the same params for NSTEPS steps on the same fixed random grads (some
steps leave one param without a grad, including the first step, so params
reach different step counts):

  - torch.optim.<Name>, torch's default implementation (the reference);
  - gdcore.<Name>, the NumPy class, on NumPy copies;
  - gdcore.torch.<Name>, on torch tensors.

Then every param and every piece of per-param state is compared element by
element with the reference: gdcore.torch's state tensors by name, dtype and
shape; the NumPy class's state arrays by name (``step`` exactly, the 0-d
float32 scalar state -- ASGD's eta and mu, NAdam's mu_product -- within
float32 tolerance).  NaN and inf must be where the reference has them.

bfloat16 and float16 params (the NumPy class gets ml_dtypes.bfloat16 and
np.float16 arrays, gdcore.torch the torch tensors; gdcore computes in float32
and rounds each result to the param's dtype once, keeping the state in that
dtype) are compared with two references, both torch's default
implementation (_check_16bit):

  - in the param's dtype, one step at a time from gdcore.torch's params and
    state (the NumPy class runs the same kernels): rtol torch.testing's
    default for the dtype (bfloat16 1.6e-2, float16 1e-3) and atol = rtol,
    in units of max(1, max|want|) -- FOR_LOOP_TOLERANCES.  That
    implementation rounds after every op; over the whole run its difference
    from a once-rounded one compounds to several ulps, about as far as its
    own float64 run is from it;
  - in float32 on the same 16-bit values, params and state stored in the
    param's dtype after every step (torch's fused kernels' storage), over
    the whole run, with torch.testing's default tolerances as they are
    (atol 1e-5, in units of max(1, max|want|)).

A float16 config where torch's default implementation itself gives inf/NaN
because eps (1e-8) rounds to 0 in float16 is compared until then and with
the float32 model, then skipped with the reason.

The selectors of torch implementations (foreach, fused, capturable,
differentiable) are dropped from the kwargs: gdcore has one implementation.
Tensor hyperparameters (Tensor lr, Tensor betas) go to gdcore.torch as they
are and to the NumPy class as floats.  What gdcore cannot express is skipped
with the reason (complex params are out of scope: gdcore's kernels are real).

optim_db's CPU inputs carry no param-group specs (their .params is None;
torch's tests pass the model's params).  So each config also runs with two
param groups, after the pattern of torch's param-group tests
(test_param_groups_weight_decay / test_param_groups_lr in test/optim/
test_optim.py): the config's kwargs as the constructor defaults, a "weight"
group inheriting them and a "bias" group overriding lr (and weight_decay,
where the optimizer has one).  An input that does give specs (a list of
tensors or of group dicts) is run with fresh params of the same shapes in the
same grouping, with the groups' own kwargs.
"""
import sys
import types
import unittest

import numpy as np
import pytest

from gdcore.family import BY_NAME, FAMILY

torch = pytest.importorskip("torch")
gt = pytest.importorskip("gdcore.torch")
import gdcore  # noqa: E402

try:                        # bfloat16 arrays for the NumPy class (gdcore's extra)
    import ml_dtypes
except ImportError:         # pragma: no cover - the bfloat16 cases skip
    ml_dtypes = None


def _import_optim_db():
    """torch.testing._internal.common_optimizers.optim_db.

    Its import chain (common_utils) imports ``expecttest``, a test-only
    dependency of torch that is not installed here; only its TestCase base
    class and ACCEPT flag are touched at import time, so a stand-in is put in
    sys.modules for the import and removed after.  common_utils also freezes
    torch.backends' global flags on import; that is undone so this module
    changes nothing for the other test files of the session."""
    stub = None
    if "expecttest" not in sys.modules:
        try:
            import expecttest  # noqa: F401
        except ImportError:
            stub = types.ModuleType("expecttest")
            stub.TestCase = unittest.TestCase
            stub.ACCEPT = False
            sys.modules["expecttest"] = stub
    try:
        # restores the flag as it was before the import on exit
        with torch.backends.__allow_nonbracketed_mutation():
            from torch.testing._internal.common_optimizers import optim_db
    finally:
        if stub is not None and sys.modules.get("expecttest") is stub:
            del sys.modules["expecttest"]
    return optim_db


OPTIM_DB = _import_optim_db()
NAMES = [decl.name for decl in FAMILY]
INFOS = {info.name: info for info in OPTIM_DB if info.name in NAMES}
assert sorted(INFOS) == sorted(NAMES), set(NAMES) - set(INFOS)

DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "bfloat16": torch.bfloat16, "float16": torch.float16}
NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64,
             torch.bfloat16: ml_dtypes.bfloat16 if ml_dtypes else None,
             torch.float16: np.float16}
TOLERANCES = {  # rtol, atol in units of max(1, max|want|)
    torch.float32: (1e-5, 8e-6),
    torch.float64: (1e-11, 5e-14),
    # 16-bit, against the float32 model (see _check_16bit): torch.testing's
    # default tolerances for the dtype (torch.testing._comparison.
    # default_tolerances), with which torch's own tests compare its fused
    # 16-bit kernels (one rounding per result, as gdcore) to its for-loop
    # implementation: test_fused_matches_forloop in test/optim/test_optim.py.
    # rtol is at least 2 ulps (bfloat16) or 1 ulp (float16) of the element:
    # these allow a result rounded the other way.
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float16: (1e-3, 1e-5),
}
# 16-bit, against torch's default implementation in the dtype, one step at a
# time (see _check_16bit): the same rtol, and atol = rtol (in units of
# max(1, max|want|), as above) instead of torch's 1e-5, which is under 1/100
# ulp of 1 in these dtypes.  The for-loop rounds its intermediates
# (grad + weight_decay * param, exp_avg, the denominator) at the scale of the
# operands, so where a result cancels to near 0 its error is an ulp of the
# operands, not of the result: about 2 ulps (bfloat16) or 1 ulp (float16) of
# 1 or of the array's largest value, whichever is larger.
FOR_LOOP_TOLERANCES = dict(TOLERANCES)
FOR_LOOP_TOLERANCES.update({torch.bfloat16: (1.6e-2, 1.6e-2), torch.float16: (1e-3, 1e-3)})
HALF = (torch.bfloat16, torch.float16)
IMPLEMENTATION_SELECTORS = ("foreach", "fused", "capturable", "differentiable")
SHAPES = [(5, 3), (3,), (2, 2, 2)]
NSTEPS = 10
# step -> index of the param left without a grad in that step
SKIPPED = {0: 2, 4: 1, 7: 0, 8: 2}
# step at which the first element of every grad is exactly 0 (Rprop's sign 0)
ZERO_STEP = 5


# ----------------------------------------------------------------- configs
def _inputs(name, dtype):
    info = INFOS[name]
    try:
        return info.optim_inputs_func(device="cpu", dtype=dtype)
    except TypeError:                       # an inputs function without dtype
        return info.optim_inputs_func(device="cpu")


def _cases():
    cases = []
    for name in NAMES:
        for dtype_name, dtype in DTYPES.items():
            seen = {}
            for index, optim_input in enumerate(_inputs(name, dtype)):
                desc = optim_input.desc or f"config{index}"
                seen[desc] = seen.get(desc, 0) + 1
                if seen[desc] > 1:
                    desc = f"{desc}#{seen[desc]}"
                cases.append(pytest.param(name, index, dtype_name,
                                          id=f"{name}-{desc}-{dtype_name}"))
    return cases


CASES = _cases()


def _is_complex(x):
    return torch.is_tensor(x) and x.is_complex()


def _cannot_express(name, optim_input, kwargs):
    """Why gdcore cannot run this config, or None."""
    specs = optim_input.params
    if specs is not None:
        flat = []
        for spec in specs:
            if isinstance(spec, dict):
                ps = spec["params"]
                flat += [ps] if torch.is_tensor(ps) else list(ps)
            else:
                flat.append(spec[1] if isinstance(spec, tuple) else spec)
        if any(_is_complex(p) for p in flat):
            return "complex params are out of scope (gdcore's kernels are real-valued)"
    unknown = sorted(set(kwargs) - set(BY_NAME[name].defaults()))
    if unknown:
        return f"gdcore.{name} has no hyperparameter(s) {unknown}"
    return None


def _numpy_of(t):
    """A NumPy copy of tensor t (bfloat16, which NumPy lacks, viewed through
    int16 as ml_dtypes.bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def _to_float(value):
    """A Tensor hyperparameter (or a tuple of them) as Python floats."""
    if torch.is_tensor(value):
        return float(value)
    if isinstance(value, tuple):
        return tuple(_to_float(v) for v in value)
    return value


# ------------------------------------------------------------------ setup
def _random(shape, dtype, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _layout(optim_input, groups_variant, name):
    """[(shapes, group overrides)]: the params, grouped, in order."""
    specs = optim_input.params
    if specs is not None:                    # torch's own specs: keep their structure
        out = []
        if all(isinstance(s, dict) for s in specs):
            for spec in specs:
                ps = spec["params"]
                ps = [ps] if torch.is_tensor(ps) else list(ps)
                out.append(([tuple(p.shape) for p in ps],
                            {k: v for k, v in spec.items() if k != "params"}))
        else:
            out.append(([tuple((s[1] if isinstance(s, tuple) else s).shape)
                         for s in specs], {}))
        return out
    if not groups_variant:
        return [(SHAPES, {})]
    # test_param_groups_weight_decay / _lr: a weight group inheriting the
    # constructor's kwargs and a bias group overriding some
    overrides = {"lr": 0.005}
    if "weight_decay" in BY_NAME[name].defaults():
        overrides["weight_decay"] = 0.0
    return [([SHAPES[0], SHAPES[2]], {}), ([SHAPES[1]], overrides)]


def _data(layout, dtype):
    gen = torch.Generator().manual_seed(1234)
    shapes = [s for group_shapes, _ in layout for s in group_shapes]
    params = [_random(s, dtype, gen) for s in shapes]
    grads = []
    for t in range(NSTEPS):
        step = []
        for k, s in enumerate(shapes):
            g = _random(s, dtype, gen)
            if t == ZERO_STEP and g.numel():
                g.view(-1)[0] = 0
            step.append(None if SKIPPED.get(t) == k else g)
        grads.append(step)
    return params, grads


def _groups(layout, params, convert=lambda v: v):
    groups, k = [], 0
    for shapes, overrides in layout:
        group = {"params": params[k:k + len(shapes)]}
        group.update({key: convert(v) for key, v in overrides.items()
                      if key not in IMPLEMENTATION_SELECTORS})
        groups.append(group)
        k += len(shapes)
    return groups


def _run_torch(cls, layout, params0, grads, kwargs):
    params = [torch.nn.Parameter(p.clone()) for p in params0]
    opt = cls(_groups(layout, params), **kwargs)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = None if g is None else g.clone()
        opt.step()
    return opt, params


def _run_numpy(name, layout, params0, grads, kwargs):
    params = [np.ascontiguousarray(_numpy_of(p)) for p in params0]
    opt = getattr(gdcore, name)(_groups(layout, params, _to_float),
                                **{k: _to_float(v) for k, v in kwargs.items()})
    for step in grads:
        opt.step([None if g is None else _numpy_of(g) for g in step])
    return opt, params


# ------------------------------------------------------------- comparison
def _assert_close(got, want, dtype, what, tolerances=TOLERANCES):
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    rtol, atol = tolerances[dtype]
    finite = want[np.isfinite(want)]
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol * scale,
                               err_msg=what)


def _compare_state_torch(ref_opt, ref_params, opt, params, what, tolerances=TOLERANCES):
    for k, (p_ref, p) in enumerate(zip(ref_params, params)):
        want, got = ref_opt.state.get(p_ref, {}), opt.state.get(p, {})
        assert set(got) == set(want), \
            f"{what} params[{k}] state keys: {sorted(got)} != torch's {sorted(want)}"
        for key, w in want.items():
            g = got[key]
            label = f"{what} params[{k}] state[{key!r}]"
            if not torch.is_tensor(w):
                assert g == w, f"{label}: {g!r} != {w!r}"
                continue
            assert torch.is_tensor(g), f"{label}: {type(g).__name__}, torch has a tensor"
            assert g.dtype == w.dtype and g.shape == w.shape, \
                f"{label}: {g.dtype} {tuple(g.shape)} != torch's {w.dtype} {tuple(w.shape)}"
            if key == "step":
                assert g.item() == w.item(), f"{label}: {g.item()} != {w.item()}"
            else:
                _assert_close(_numpy_of(g), w.double().numpy(), w.dtype, label, tolerances)


def _compare_state_numpy(ref_opt, ref_params, opt, params, what, tolerances=TOLERANCES):
    for k, (p_ref, p) in enumerate(zip(ref_params, params)):
        want = ref_opt.state.get(p_ref, {})
        got = opt.state.get(p) or {}
        if not got and "step" in want and float(want["step"]) == 0:
            # torch's Adagrad makes its state at construction, the NumPy
            # class at a param's first step (seen in _check_16bit's steps)
            continue
        assert set(got) == set(want), \
            f"{what} params[{k}] state keys: {sorted(got)} != torch's {sorted(want)}"
        for key, w in want.items():
            g = got[key]
            label = f"{what} params[{k}] state[{key!r}]"
            if key == "step":
                assert int(g) == w.item(), f"{label}: {g} != {w.item()}"
                continue
            g = np.asarray(g)
            assert g.shape == tuple(w.shape), f"{label}: shape {g.shape} != {tuple(w.shape)}"
            assert g.dtype == NP_DTYPES[w.dtype], f"{label}: dtype {g.dtype} != {w.dtype}"
            _assert_close(g, w.double().numpy(), w.dtype, label, tolerances)


def _compare(name, dtype, ref, numpy_run, torch_run, prefix="", tolerances=TOLERANCES):
    """gdcore's NumPy class and gdcore.torch against a reference run: each
    (optimizer, params), the reference's in torch's layout."""
    (ref_opt, ref_params), (np_opt, np_params), (gt_opt, gt_params) = ref, numpy_run, torch_run
    for k, (r, n, t) in enumerate(zip(ref_params, np_params, gt_params)):
        want = r.detach().double().numpy()
        _assert_close(n, want, dtype, f"{prefix}gdcore.{name} params[{k}]", tolerances)
        _assert_close(_numpy_of(t), want, dtype, f"{prefix}gdcore.torch.{name} params[{k}]",
                      tolerances)
    _compare_state_torch(ref_opt, ref_params, gt_opt, gt_params, f"{prefix}gdcore.torch.{name}",
                         tolerances)
    _compare_state_numpy(ref_opt, ref_params, np_opt, np_params, f"{prefix}gdcore.{name}",
                         tolerances)


def _stored(opt, p):
    """The state tensors of param p stored in the param's layout (not step,
    not the 0-d float32 scalars: ASGD's eta and mu, NAdam's mu_product)."""
    return {key: v for key, v in opt.state.get(p, {}).items()
            if torch.is_tensor(v) and key != "step" and v.shape == p.shape}


def _run_float32_model(cls, layout, params0, grads, kwargs, dtype):
    """torch's default implementation on the 16-bit values in float32, the
    params and their state stored in dtype (rounded to nearest even) after
    every step: the storage of torch's fused 16-bit kernels and of gdcore.
    State that torch creates with a value (Adagrad's sum, at construction;
    Rprop's step_size, full of lr, at a param's first step) is created in
    dtype as torch's 16-bit layout has it.  Returned in that layout (params
    and their state in dtype)."""
    params = [torch.nn.Parameter(p.float()) for p in params0]
    opt = cls(_groups(layout, params), **kwargs)
    assert type(opt) is cls
    if cls is torch.optim.Rprop:        # lr is only step_size's first value
        for group in opt.param_groups:
            group["lr"] = float(torch.tensor(float(group["lr"])).to(dtype))

    def store():
        with torch.no_grad():
            for p in params:
                for v in [p, *_stored(opt, p).values()]:
                    v.copy_(v.to(dtype))

    for step in grads:
        store()
        for p, g in zip(params, step):
            p.grad = None if g is None else g.float()
        opt.step()
    store()
    for p in params:
        opt.state[p].update({key: v.to(dtype) for key, v in _stored(opt, p).items()})
        p.data = p.data.to(dtype)
    return opt, params


def _torch_overflow(ref_opt, ref_params, dtype, step):
    """Why torch's step is no reference in this 16-bit dtype, or None.  The
    default implementation adds eps in the param's dtype; an eps that rounds
    to 0 there (1e-8 in float16, whose least subnormal is 2**-24) leaves a
    denominator of 0 where the state underflowed to 0, and the step gives
    inf/NaN.  optim_db raises eps to 0.1 for Adam/AdamW in float16 for this
    reason (optim_inputs_func_adam), not for the other optimizers.  gdcore
    computes in float32, where eps does not vanish (as do torch's fused
    kernels)."""
    tensors = [t for p in ref_params for t in [p.detach(), *_stored(ref_opt, p).values()]]
    if all(bool(torch.isfinite(t).all()) for t in tensors):
        return None
    vanishing = sorted({g["eps"] for g in ref_opt.param_groups
                        if g.get("eps", 0) > 0 and float(torch.tensor(g["eps"], dtype=dtype)) == 0})
    if not vanishing:
        return None                          # non-finite for another reason: compare
    return (f"torch's default implementation gives inf/NaN in {dtype} from step {step} on: "
            f"eps={vanishing[0]:g} rounds to 0 in {dtype}, so a state that underflowed to 0 "
            f"gives a denominator of 0 (optim_db raises eps for Adam/AdamW in float16 for this "
            f"reason, not for {type(ref_opt).__name__}); the steps before it and the float32 "
            f"model's whole run were compared")


def _check_16bit(name, dtype, layout, params0, grads, kwargs):
    """16-bit params, against two references built from torch's default
    implementation:

    - in the param's dtype, one step at a time: each step starts from
      gdcore.torch's params and state (which the NumPy class, running the
      same kernels, shares), with FOR_LOOP_TOLERANCES.  Not over the whole
      run: that implementation rounds after every op, gdcore once per result,
      and over NSTEPS steps the difference compounds (torch's own 16-bit run
      ends up as far from its float64 run as from gdcore's);
    - the float32 model (_run_float32_model), over the whole run, with
      torch.testing's default tolerances (TOLERANCES)."""
    cls = getattr(torch.optim, name)
    np_params = [np.ascontiguousarray(_numpy_of(p)) for p in params0]
    np_opt = getattr(gdcore, name)(_groups(layout, np_params, _to_float),
                                   **{k: _to_float(v) for k, v in kwargs.items()})
    gt_params = [torch.nn.Parameter(p.clone()) for p in params0]
    gt_opt = getattr(gt, name)(_groups(layout, gt_params), **kwargs)
    overflow = None
    for t, step in enumerate(grads):
        ref_params = []
        if overflow is None:
            ref_params = [torch.nn.Parameter(p.detach().clone()) for p in gt_params]
            ref_opt = cls(_groups(layout, ref_params), **kwargs)
            assert type(ref_opt) is cls
            for p, q in zip(gt_params, ref_params):
                if p in gt_opt.state:
                    ref_opt.state[q] = {key: v.clone() if torch.is_tensor(v) else v
                                        for key, v in gt_opt.state[p].items()}
        for params in (ref_params, gt_params):
            for p, g in zip(params, step):
                p.grad = None if g is None else g.clone()
        gt_opt.step()
        np_opt.step([None if g is None else _numpy_of(g) for g in step])
        if overflow is None:
            ref_opt.step()
            overflow = _torch_overflow(ref_opt, ref_params, dtype, t)
            if overflow is None:
                _compare(name, dtype, (ref_opt, ref_params), (np_opt, np_params),
                         (gt_opt, gt_params), f"step {t}: ", FOR_LOOP_TOLERANCES)
    model = _run_float32_model(cls, layout, params0, grads, kwargs, dtype)
    _compare(name, dtype, model, (np_opt, np_params), (gt_opt, gt_params), "float32 model: ")
    if overflow:
        pytest.skip(overflow)


def _check(name, index, dtype_name, groups_variant):
    dtype = DTYPES[dtype_name]
    if dtype == torch.bfloat16 and ml_dtypes is None:
        pytest.skip("bfloat16 arrays for the NumPy class need ml_dtypes")
    optim_input = _inputs(name, dtype)[index]
    kwargs = {k: v for k, v in optim_input.kwargs.items()
              if k not in IMPLEMENTATION_SELECTORS}
    reason = _cannot_express(name, optim_input, kwargs)
    if reason:
        pytest.skip(reason)
    layout = _layout(optim_input, groups_variant, name)
    params0, grads = _data(layout, dtype)
    if dtype in HALF:
        _check_16bit(name, dtype, layout, params0, grads, kwargs)
        return

    ref = _run_torch(getattr(torch.optim, name), layout, params0, grads, kwargs)
    numpy_run = _run_numpy(name, layout, params0, grads, kwargs)
    torch_run = _run_torch(getattr(gt, name), layout, params0, grads, kwargs)
    assert type(ref[0]) is getattr(torch.optim, name)
    _compare(name, dtype, ref, numpy_run, torch_run)


@pytest.mark.parametrize("name, index, dtype_name", CASES)
def test_optim_db_config(name, index, dtype_name):
    _check(name, index, dtype_name, groups_variant=False)


@pytest.mark.parametrize("name, index, dtype_name", CASES)
def test_optim_db_config_param_groups(name, index, dtype_name):
    _check(name, index, dtype_name, groups_variant=True)
