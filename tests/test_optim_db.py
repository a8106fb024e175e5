"""torch's own optimizer test configurations (torch.testing._internal.
common_optimizers.optim_db) run against gdcore, for the eleven optimizers of
gdcore/family.py.

For every OptimizerInput that optim_db gives for the CPU, in float32 and
float64, three optimizers train the same params for NSTEPS steps on the same
fixed random grads (some steps leave one param without a grad, including the
first step, so params reach different step counts):

  - torch.optim.<Name>, torch's default implementation (the reference);
  - gdcore.<Name>, the NumPy class, on NumPy copies;
  - gdcore.torch.<Name>, on torch tensors.

Then every param and every piece of per-param state is compared element by
element with the reference: gdcore.torch's state tensors by name, dtype and
shape; the NumPy class's state arrays by name (``step`` exactly, the 0-d
float32 scalar state -- ASGD's eta and mu, NAdam's mu_product -- within
float32 tolerance).

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

DTYPES = {"float32": torch.float32, "float64": torch.float64}
NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}
TOLERANCES = {  # rtol, atol in units of max(1, max|want|)
    torch.float32: (1e-5, 8e-6),
    torch.float64: (1e-11, 5e-14),
}
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
    params = [np.ascontiguousarray(p.numpy().copy()) for p in params0]
    opt = getattr(gdcore, name)(_groups(layout, params, _to_float),
                                **{k: _to_float(v) for k, v in kwargs.items()})
    for step in grads:
        opt.step([None if g is None else g.numpy().copy() for g in step])
    return opt, params


# ------------------------------------------------------------- comparison
def _assert_close(got, want, dtype, what):
    got = np.asarray(got)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    rtol, atol = TOLERANCES[dtype]
    finite = want[np.isfinite(want)]
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol * scale,
                               err_msg=what)


def _compare_state_torch(ref_opt, ref_params, opt, params, what):
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
                _assert_close(g.numpy(), w.double().numpy(), w.dtype, label)


def _compare_state_numpy(ref_opt, ref_params, opt, params, what):
    for k, (p_ref, p) in enumerate(zip(ref_params, params)):
        want = ref_opt.state.get(p_ref, {})
        got = opt.state.get(p) or {}
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
            _assert_close(g, w.double().numpy(), w.dtype, label)


def _check(name, index, dtype_name, groups_variant):
    dtype = DTYPES[dtype_name]
    optim_input = _inputs(name, dtype)[index]
    kwargs = {k: v for k, v in optim_input.kwargs.items()
              if k not in IMPLEMENTATION_SELECTORS}
    reason = _cannot_express(name, optim_input, kwargs)
    if reason:
        pytest.skip(reason)
    layout = _layout(optim_input, groups_variant, name)
    params0, grads = _data(layout, dtype)

    ref_opt, ref_params = _run_torch(getattr(torch.optim, name), layout, params0, grads, kwargs)
    np_opt, np_params = _run_numpy(name, layout, params0, grads, kwargs)
    gt_opt, gt_params = _run_torch(getattr(gt, name), layout, params0, grads, kwargs)
    assert type(ref_opt) is getattr(torch.optim, name)

    for k, (r, n, t) in enumerate(zip(ref_params, np_params, gt_params)):
        want = r.detach().double().numpy()
        _assert_close(n, want, dtype, f"gdcore.{name} params[{k}]")
        _assert_close(t.detach().numpy(), want, dtype, f"gdcore.torch.{name} params[{k}]")
    _compare_state_torch(ref_opt, ref_params, gt_opt, gt_params, f"gdcore.torch.{name}")
    _compare_state_numpy(ref_opt, ref_params, np_opt, np_params, f"gdcore.{name}")


@pytest.mark.parametrize("name, index, dtype_name", CASES)
def test_optim_db_config(name, index, dtype_name):
    _check(name, index, dtype_name, groups_variant=False)


@pytest.mark.parametrize("name, index, dtype_name", CASES)
def test_optim_db_config_param_groups(name, index, dtype_name):
    _check(name, index, dtype_name, groups_variant=True)
